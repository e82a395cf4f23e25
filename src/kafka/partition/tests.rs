use super::*;

const DAY: i64 = MICROS_PER_DAY;
/// 2020-04-24T00:00:00Z
const T0: i64 = 18_376 * DAY;

fn event(id: &str, t_us: i64, order: u64, user: Option<u64>, price: &str) -> Vec<u8> {
    let t = chrono::DateTime::from_timestamp_micros(t_us)
        .unwrap()
        .to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true);
    let user = user.map_or(String::new(), |u| format!(r#","user_id":"{u}""#));
    format!(
        r#"{{"schema_version":1,"event_id":"{id}","event_time":"{t}","order_id":"{order}","product_id":"7","brand":"acme","price":"{price}"{user},"source_line":5}}"#
    )
    .into_bytes()
}

/// A partition that was told of input `aa`, of 100 lines.
fn announced(config: CoreConfig) -> PartitionState {
    let mut p = PartitionState::new(config);
    p.inputs.insert(0xaa, 100);
    p
}

fn config() -> CoreConfig {
    CoreConfig {
        keep_day_customers: true,
        ..CoreConfig::default()
    }
}

#[test]
fn a_valid_event_is_counted_and_its_redelivery_is_a_duplicate() {
    let mut p = announced(config());
    let e = event(
        "00000000000000aa-0-5",
        T0 + 3_600_000_000,
        1,
        Some(9),
        "10.50",
    );
    assert_eq!(p.apply(0, None, &e), Verdict::Counted);
    assert_eq!(p.apply(1, None, &e), Verdict::Duplicate);
    // The same line in another pass is another purchase.
    let again = event(
        "00000000000000aa-1-5",
        T0 + 3_600_000_000,
        1,
        Some(9),
        "10.50",
    );
    assert_eq!(p.apply(2, None, &again), Verdict::Counted);
    assert_eq!(p.next_offset, Some(3));
    // A message below the next offset is already in the state.
    assert_eq!(p.apply(1, None, &e), Verdict::AlreadyApplied);
    let c = p.counts();
    assert_eq!((c.records, c.accepted, c.duplicates), (3, 2, 1));
    assert!(c.rejected.is_empty());
    let day = p.core.days().next().unwrap().1.totals;
    assert_eq!((day.revenue_cents, day.items, day.orders), (2100, 2, 1));
}

#[test]
fn broken_messages_are_rejected_with_their_reason() {
    let mut p = announced(config());
    let cases: [(&[u8], &str); 6] = [
        (b"not json", INVALID_MESSAGE),
        (b"{}", INVALID_MESSAGE),
        (
            br#"{"schema_version":2,"anything":true}"#,
            UNSUPPORTED_VERSION,
        ),
        (br#"{"schema_version":"one"}"#, INVALID_MESSAGE),
        (&event("bad-id", T0, 1, None, "1.00"), INVALID_MESSAGE),
        (
            &event("00000000000000aa-0-6", T0, 1, None, "-1.00"),
            INVALID_MESSAGE,
        ),
    ];
    for (i, (payload, want)) in cases.iter().enumerate() {
        match p.apply(i as i64, None, payload) {
            Verdict::Rejected { reason, .. } => {
                assert_eq!(reason, *want, "{}", String::from_utf8_lossy(payload))
            }
            v => panic!("{v:?} for {}", String::from_utf8_lossy(payload)),
        }
    }
    let c = p.counts();
    assert_eq!(c.records, 6);
    assert_eq!(c.accepted, 0);
    assert_eq!(c.rejected[INVALID_MESSAGE], 5);
    assert_eq!(c.rejected[UNSUPPORTED_VERSION], 1);
    assert_eq!(p.core.days().count(), 0);
}

#[test]
fn end_of_input_makes_the_replayed_days_final_but_not_later_ones() {
    let mut p = announced(config());
    let e = event(
        "00000000000000aa-0-5",
        T0 + 5 * 3_600_000_000,
        1,
        Some(9),
        "1.00",
    );
    assert_eq!(p.apply(0, None, &e), Verdict::Counted);
    assert!(!p.core.is_final(18_376));
    let end = format!(r#"{{"last_event_time_us":{}}}"#, T0 + 5 * 3_600_000_000);
    assert_eq!(
        p.apply(1, Some(END_OF_INPUT.as_bytes()), end.as_bytes()),
        Verdict::Control
    );
    assert!(p.core.is_final(18_376));
    assert!(!p.core.is_final(18_377));
    // Control messages are not records.
    assert_eq!(p.counts().records, 1);
    // A late line of the closed day is dead-lettered with its line number.
    let late = event("00000000000000aa-0-9", T0 + 3_600_000_000, 2, None, "1.00");
    assert_eq!(
        p.apply(2, None, &late),
        Verdict::Rejected {
            reason: "late_event",
            line: Some(5),
            detail: None
        }
    );
    // An unknown control is an invalid message.
    assert!(matches!(
        p.apply(3, Some(b"reboot"), b"{}"),
        Verdict::Rejected {
            reason: INVALID_MESSAGE,
            ..
        }
    ));
}

#[test]
fn restored_counts_continue() {
    let mut p = announced(config());
    p.apply(0, None, b"junk");
    p.apply(1, None, &event("00000000000000aa-0-5", T0, 1, None, "1.00"));
    p.apply(2, None, &event("00000000000000aa-0-5", T0, 1, None, "1.00"));
    let counts = p.counts();
    let mut q = PartitionState::restore(
        config(),
        CoreState {
            accepted: 1,
            ..CoreState::default()
        },
        p.seen.clone(),
        &counts,
        p.next_offset,
    );
    q.inputs = p.inputs.clone();
    assert_eq!(q.counts(), counts);
    assert_eq!(
        q.apply(3, None, &event("00000000000000aa-0-5", T0, 1, None, "1.00")),
        Verdict::Duplicate
    );
    assert_eq!(q.counts().duplicates, 2);
}

#[test]
fn only_watermarks_make_days_final_and_a_partition_without_events_moves_too() {
    let mut p = announced(CoreConfig::default());
    // Its own events never move the watermark: another partition may still be behind.
    let e = event("00000000000000aa-0-5", T0 + 3 * DAY, 1, Some(9), "1.00");
    assert_eq!(p.apply(0, None, &e), Verdict::Counted);
    assert_eq!(p.core.watermark_us(), None);
    let early = event("00000000000000aa-0-6", T0, 2, Some(9), "2.00");
    assert_eq!(p.apply(1, None, &early), Verdict::Counted);
    // The replayer's watermark does, in this partition as in one without events.
    let mut empty = announced(CoreConfig::default());
    let w = format!(r#"{{"watermark_us":{}}}"#, T0 + DAY);
    for (q, offset) in [(&mut p, 2), (&mut empty, 0)] {
        assert_eq!(
            q.apply(offset, Some(WATERMARK.as_bytes()), w.as_bytes()),
            Verdict::Control
        );
        assert!(q.core.is_final(18_376) && !q.core.is_final(18_377));
    }
    // An event of the final day is late wherever it arrives.
    let late = event("00000000000000aa-0-7", T0 + 60_000_000, 3, Some(8), "3.00");
    assert!(matches!(
        empty.apply(1, None, &late),
        Verdict::Rejected {
            reason: "late_event",
            ..
        }
    ));
    // A watermark never goes back, and a malformed one is an invalid message.
    let back = format!(r#"{{"watermark_us":{}}}"#, T0);
    assert_eq!(
        p.apply(3, Some(WATERMARK.as_bytes()), back.as_bytes()),
        Verdict::Control
    );
    assert_eq!(p.core.watermark_us(), Some(T0 + DAY));
    assert!(matches!(
        p.apply(4, Some(WATERMARK.as_bytes()), b"{}"),
        Verdict::Rejected {
            reason: INVALID_MESSAGE,
            ..
        }
    ));
}

#[test]
fn only_lines_of_announced_inputs_count() {
    let mut p = PartitionState::new(config());
    let e = |id: &str| event(id, T0, 1, Some(9), "1.00");
    let rejected = |v: Verdict| {
        matches!(
            v,
            Verdict::Rejected {
                reason: INVALID_MESSAGE,
                ..
            }
        )
    };
    // No input announced yet: nothing counts, and no state is kept for it.
    assert!(rejected(p.apply(0, None, &e("00000000000000aa-0-5"))));
    let input = br#"{"source":"00000000000000aa","lines":7}"#;
    assert_eq!(p.apply(1, Some(INPUT.as_bytes()), input), Verdict::Control);
    assert_eq!(
        p.apply(2, None, &e("00000000000000aa-0-5")),
        Verdict::Counted
    );
    assert_eq!(
        p.apply(3, None, &e("00000000000000aa-0-7")),
        Verdict::Counted
    );
    // Lines the input does not have, and another input, are invalid messages.
    for (offset, id) in [
        (4, "00000000000000aa-0-8"),
        (5, "00000000000000aa-0-1"),
        (6, "00000000000000aa-0-18446744073709551615"),
        (7, "00000000000000bb-0-5"),
    ] {
        assert!(rejected(p.apply(offset, None, &e(id))), "{id}");
    }
    assert_eq!(p.seen.len(), 2);
    let c = p.counts();
    assert_eq!(
        (c.records, c.accepted, c.rejected[INVALID_MESSAGE]),
        (7, 2, 5)
    );
    // A malformed announcement is an invalid message too.
    assert!(rejected(p.apply(
        8,
        Some(INPUT.as_bytes()),
        br#"{"source":"xyz","lines":7}"#
    )));
}

#[test]
fn a_batch_decides_every_message_as_one_by_one_would() {
    let wm = |t: i64| format!(r#"{{"watermark_us":{t}}}"#).into_bytes();
    let input = br#"{"source":"00000000000000aa","lines":100}"#.to_vec();
    let e = |line: u64, t: i64, order: u64, price: &str| {
        event(
            &format!("00000000000000aa-0-{line}"),
            t,
            order,
            Some(line),
            price,
        )
    };
    let hour = 3_600_000_000;
    // Input announced, events of two days, a duplicate inside the batch, a watermark
    // making the first day final, then a late event of it, a broken message, and an
    // event below the next offset.
    type Message<'a> = (i64, Option<&'a [u8]>, Vec<u8>);
    let messages: Vec<Message> = vec![
        (0, Some(INPUT.as_bytes()), input),
        (1, None, e(2, T0 + hour, 1, "10.50")),
        (2, None, e(3, T0 + DAY + hour, 2, "3.25")),
        (3, None, e(2, T0 + hour, 1, "10.50")),
        (4, Some(WATERMARK.as_bytes()), wm(T0 + 10 * DAY)),
        (5, None, e(4, T0 + 2 * hour, 3, "7.00")),
        (6, None, b"{not json".to_vec()),
        (7, None, e(5, T0 + 11 * DAY, 4, "1.01")),
        (3, None, e(6, T0 + DAY + 2 * hour, 5, "9.99")),
    ];
    let config = CoreConfig {
        watermark_from_events: false,
        ..config()
    };
    let mut one = PartitionState::new(config);
    let singly: Vec<Verdict> = messages
        .iter()
        .map(|(o, c, p)| one.apply(*o, *c, p))
        .collect();
    let mut batch = PartitionState::new(config);
    let mut verdicts = Vec::new();
    batch.apply_batch(
        messages.iter().map(|(o, c, p)| (*o, *c, p.as_slice())),
        &mut verdicts,
    );
    assert_eq!(verdicts, singly);
    // What the messages are, independently of either path.
    assert_eq!(verdicts[3], Verdict::Duplicate);
    assert!(matches!(
        &verdicts[5],
        Verdict::Rejected {
            reason: "late_event",
            ..
        }
    ));
    assert!(matches!(&verdicts[6], Verdict::Rejected { reason, .. } if *reason == INVALID_MESSAGE));
    assert_eq!(verdicts[8], Verdict::AlreadyApplied);
    assert_eq!(batch.counts(), one.counts());
    assert_eq!(batch.core.state(), one.core.state());
    assert_eq!(batch.core.totals().revenue_cents, 1050 + 325 + 101);
    assert_eq!(batch.next_offset, Some(8));
}
