//! The rejected lines of `run`'s snapshots in a bucket, as pieces of one growing file:
//! `rejected/<from>-<to>-<writer>.csv` holds its bytes `from..to`, and a manifest lists
//! the pieces that cover its bytes `0..rejected_bytes` in order.
//!
//! Each publish uploads one piece: the lines rejected since the last one, merged with the
//! trailing pieces it is not much smaller than (a binary counter: a piece is merged into a
//! later one while it is less than twice as big), so a manifest lists a logarithmic number
//! of pieces and each byte is uploaded a logarithmic number of times over a run, never the
//! whole file at every snapshot. Pieces no kept snapshot lists are removed when the
//! snapshots are pruned ([`removable`]).

use std::collections::HashSet;
use std::ops::Range;

use super::publisher::REJECTED_DIR;

/// The bytes `from..to` a piece covers, from its name.
pub fn range(piece: &str) -> Option<Range<u64>> {
    let name = piece.rsplit('/').next()?;
    let mut parts = name.split('-');
    let from = parts.next()?.parse().ok()?;
    let to = parts.next()?.parse().ok()?;
    Some(from..to)
}

/// The writer of a piece, from its name.
fn writer(piece: &str) -> Option<&str> {
    let name = piece.rsplit('/').next()?;
    name.splitn(3, '-').nth(2)?.strip_suffix(".csv")
}

/// The bytes the pieces cover: the end of the last one.
pub fn covered(pieces: &[String]) -> u64 {
    pieces.last().and_then(|p| range(p)).map_or(0, |r| r.end)
}

/// The name of `writer`'s piece of bytes `range`.
pub fn name(range: &Range<u64>, writer: &str) -> String {
    format!(
        "{REJECTED_DIR}/{:012}-{:012}-{writer}.csv",
        range.start, range.end
    )
}

/// The pieces of a snapshot covering bytes `0..upto`, after `pieces` covering less: the
/// new lines as one piece, merged with the trailing pieces it is not much smaller than.
/// Returns the list and the one piece to upload (its name and bytes), none when `upto`
/// adds nothing.
pub fn next(
    pieces: &[String],
    upto: u64,
    writer: &str,
) -> (Vec<String>, Option<(String, Range<u64>)>) {
    let mut list = pieces.to_vec();
    let from = covered(&list);
    if upto <= from {
        return (list, None);
    }
    let mut new = from..upto;
    while let Some(last) = list.last().and_then(|p| range(p)) {
        if last.end - last.start >= 2 * (new.end - new.start) {
            break;
        }
        list.pop();
        new.start = last.start;
    }
    let piece = name(&new, writer);
    list.push(piece.clone());
    (list, Some((piece, new)))
}

/// The pieces of `listed` that can go: listed by no kept snapshot (`needed`), and either
/// this writer's own or ending at or before `floor` (the bytes every kept snapshot covers):
/// another writer's piece past it may belong to a snapshot being published now.
pub fn removable(
    listed: &[String],
    needed: &HashSet<String>,
    own: &str,
    floor: u64,
) -> Vec<String> {
    listed
        .iter()
        .filter(|p| !needed.contains(*p))
        .filter(|p| writer(p) == Some(own) || range(p).is_some_and(|r| r.end <= floor))
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sizes(list: &[String]) -> Vec<u64> {
        list.iter()
            .map(|p| range(p).map(|r| r.end - r.start).unwrap())
            .collect()
    }

    #[test]
    fn each_publish_uploads_one_piece_and_the_list_stays_logarithmic() {
        let (mut list, mut uploaded, mut upto) = (Vec::new(), 0u64, 0u64);
        for i in 0..1000u64 {
            upto += 100;
            let (next_list, piece) = next(&list, upto, "w");
            let (piece, bytes) = piece.expect("new lines, one piece");
            assert_eq!(next_list.last(), Some(&piece));
            assert_eq!(range(&piece), Some(bytes.clone()));
            uploaded += bytes.end - bytes.start;
            // Contiguous from 0 to `upto`.
            let mut at = 0;
            for p in &next_list {
                let r = range(p).unwrap();
                assert_eq!(r.start, at, "{next_list:?}");
                at = r.end;
            }
            assert_eq!(at, upto);
            assert!(next_list.len() <= 12, "{i}: {:?}", sizes(&next_list));
            list = next_list;
        }
        // Each byte uploaded about log2(1000) times at most, not 1000/2 on average.
        assert!(uploaded <= 100_000 * 11, "{uploaded}");
        assert_eq!(next(&list, upto, "w"), (list.clone(), None));
    }

    #[test]
    fn a_piece_is_merged_into_a_later_one_while_less_than_twice_as_big() {
        let list = vec![name(&(0..400), "a"), name(&(400..500), "a")];
        // 100 more bytes: the 100-byte piece merges (100 < 200), the 400-byte one stays.
        let (got, piece) = next(&list, 600, "b");
        assert_eq!(got, vec![name(&(0..400), "a"), name(&(400..600), "b")]);
        assert_eq!(piece, Some((name(&(400..600), "b"), 400..600)));
        // 300 more: both merge into one.
        let (got, _) = next(&list, 800, "b");
        assert_eq!(got, vec![name(&(0..800), "b")]);
        assert_eq!(writer(&got[0]), Some("b"));
    }

    #[test]
    fn only_unlisted_pieces_of_this_writer_or_before_the_floor_are_removed() {
        let p = |r: Range<u64>, w: &str| name(&r, w);
        let listed = vec![
            p(0..100, "a"),   // another writer's, before the floor, unlisted: goes
            p(0..300, "b"),   // listed
            p(100..300, "b"), // own, unlisted (merged since): goes
            p(300..350, "b"), // own, failed publish: goes
            p(300..400, "c"), // another writer's past the floor: stays
        ];
        let needed: HashSet<String> = [p(0..300, "b")].into_iter().collect();
        assert_eq!(
            removable(&listed, &needed, "b", 300),
            vec![p(0..100, "a"), p(100..300, "b"), p(300..350, "b")]
        );
    }
}
