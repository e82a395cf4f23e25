use super::*;

fn id(source: u64, pass: u32, line: u64) -> SeenId {
    SeenId { source, pass, line }
}

/// The real log's lines after the header: 2 to 2,633,522.
const LOG_LINES: u64 = 2_633_521;

#[test]
fn a_second_insert_of_the_same_id_is_a_duplicate() {
    let mut s = Seen::default();
    assert!(s.insert(id(1, 0, 2)));
    assert!(!s.insert(id(1, 0, 2)));
    // Another pass, another input, a line in another container: all new.
    assert!(s.insert(id(1, 1, 2)));
    assert!(s.insert(id(2, 0, 2)));
    assert!(s.insert(id(1, 0, 2 + 65_536)));
    assert!(s.contains(id(1, 0, 2 + 65_536)) && !s.contains(id(1, 0, 3)));
    assert!(!s.contains(id(3, 0, 2)));
    assert_eq!(s.len(), 4);
}

#[test]
fn consecutive_lines_of_the_real_log_take_a_few_kilobytes() {
    let mut s = Seen::default();
    for line in 2..2 + LOG_LINES {
        assert!(s.insert(id(9, 0, line)));
    }
    assert_eq!(s.len(), LOG_LINES);
    // One run per 65,536-line container (41 of them): the chunked bit set this replaced
    // took 8 KiB a container, 330 KB.
    let bytes = s.memory_bytes();
    assert!(bytes < 4096, "{bytes} bytes");
    assert!(s.contains(id(9, 0, 2)) && s.contains(id(9, 0, LOG_LINES + 1)));
    assert!(!s.contains(id(9, 0, 1)) && !s.contains(id(9, 0, LOG_LINES + 2)));
}

#[test]
fn lines_out_of_order_still_end_as_runs() {
    // Event-time order is not file order: insert each block of 10,000 lines backwards.
    let mut s = Seen::default();
    let lines = 2..2 + 1_000_000u64;
    for block in lines.clone().step_by(10_000) {
        for line in (block..(block + 10_000).min(lines.end)).rev() {
            assert!(s.insert(id(1, 2, line)));
        }
    }
    assert_eq!(s.len(), 1_000_000);
    let bytes = s.memory_bytes();
    assert!(bytes < 4096, "{bytes} bytes");
}

#[test]
fn a_partitions_share_costs_about_a_bit_per_line_of_the_input() {
    // Four partitions by order: each gets about a quarter of the lines, at random.
    let mut parts = vec![Seen::default(); 4];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for line in 2..2 + LOG_LINES {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        assert!(parts[(x % 4) as usize].insert(id(5, 0, line)));
    }
    let total: u64 = parts.iter().map(Seen::len).sum();
    assert_eq!(total, LOG_LINES);
    for p in &parts {
        // 41 plain bitmaps of 8 KiB (a bit per line of the input) and their bookkeeping.
        let bytes = p.memory_bytes();
        assert!((330_000..340_000).contains(&bytes), "{bytes} bytes");
    }
}

#[test]
fn a_hostile_line_is_neither_kept_nor_allocated_for() {
    let mut s = Seen::default();
    let empty = s.memory_bytes();
    for line in [Seen::MAX_LINE + 1, 1 << 40, u64::MAX] {
        assert!(!s.insert(id(1, 0, line)), "{line}");
        assert!(!s.contains(id(1, 0, line)), "{line}");
    }
    // A range of hostile lines, 65,536 apart: the chunked set took 8 KiB for each.
    for k in 0..10_000u64 {
        assert!(!s.insert(id(1, 0, (1 << 40) + (k << 16))));
    }
    assert!(s.is_empty());
    assert_eq!(s.memory_bytes(), empty);
    // Beside a real set, the same: it neither grows nor changes.
    assert!(s.insert(id(1, 0, 2)));
    let one = s.memory_bytes();
    assert!(!s.insert(id(1, 0, u64::MAX)) && !s.insert(id(1, 0, 1 << 40)));
    assert_eq!((s.memory_bytes(), s.len()), (one, 1));
    // The highest line that fits is kept like any other.
    assert!(s.insert(id(1, 0, Seen::MAX_LINE)));
    assert!(s.contains(id(1, 0, Seen::MAX_LINE)));
}

#[test]
fn sets_round_trip() {
    let mut s = Seen::default();
    let lines = [2, 63, 64, 65_535, 65_536, 1_000_000, Seen::MAX_LINE];
    for line in lines {
        s.insert(id(7, 3, line));
    }
    for line in 100..50_000 {
        s.insert(id(7, 4, line));
    }
    let sets = s.sets();
    assert_eq!(
        sets.iter().map(|s| s.0).collect::<Vec<_>>(),
        vec![(7, 3), (7, 4)]
    );
    // A run of 49,900 lines serializes as one run.
    assert!(sets[1].1.len() < 64, "{} bytes", sets[1].1.len());
    let mut back = Seen::default();
    for (k, bytes) in &sets {
        back.restore(*k, bytes).unwrap();
    }
    assert_eq!(back.len(), s.len());
    for line in lines {
        assert!(!back.insert(id(7, 3, line)), "{line}");
    }
    assert!(!back.insert(id(7, 4, 100)) && !back.insert(id(7, 4, 49_999)));
    assert!(back.insert(id(7, 3, 3)) && back.insert(id(7, 4, 50_000)));
    assert!(back.restore((0, 0), &[1, 2, 3]).is_err());
}

/// What changed since a published snapshot, restored over it, is every line: the lines
/// of a copy given up are still new at the next one, and a settled copy's are not.
#[test]
fn changed_lines_restored_over_the_last_published_give_every_line() {
    let id = |line| SeenId {
        source: 7,
        pass: 1,
        line,
    };
    let mut s = Seen::default();
    s.track_changes();
    (0..100).for_each(|l| assert!(s.insert(id(l))));
    let published = s.changed();
    assert_eq!(published.len(), 100);
    s.settle(&published);
    assert!(s.changed().is_empty());
    (100..150).for_each(|l| assert!(s.insert(id(l))));
    let given_up = s.changed();
    assert_eq!(given_up.len(), 50);
    assert!(!s.insert(id(120)), "a line seen stays seen");
    (150..160).for_each(|l| assert!(s.insert(id(l))));
    let next = s.changed();
    assert_eq!(next.len(), 60);
    // The base and the next copy together are every line.
    let mut restored = Seen::default();
    for (k, bytes) in published.sets().into_iter().chain(next.sets()) {
        restored.restore(k, &bytes).unwrap();
    }
    assert_eq!(restored.len(), s.len());
    assert!((0..160).all(|l| restored.contains(id(l))));
    s.settle(&next);
    assert!(s.changed().is_empty());
}
