use super::*;

#[test]
fn a_short_original_is_carried_whole_and_says_nothing_more() {
    let d = DeadLetter::new("malformed_row", "replay", b"a,b,\xffc");
    assert_eq!(d.original, "a,b,\u{fffd}c");
    assert_eq!((d.original_bytes, d.truncated), (None, false));
    let json = serde_json::to_string(&d).unwrap();
    assert!(
        !json.contains("original_bytes") && !json.contains("truncated"),
        "{json}"
    );
    // Records written before these fields existed still read.
    let old: DeadLetter = serde_json::from_str(
        r#"{"reason":"late_event","stage":"process","partition":1,"offset":9,"original":"x"}"#,
    )
    .unwrap();
    assert_eq!((old.original_bytes, old.truncated), (None, false));
    // Exactly the limit is not cut.
    let d = DeadLetter::new("r", "replay", &[b'x'; ORIGINAL_LIMIT]);
    assert_eq!((d.original.len(), d.truncated), (ORIGINAL_LIMIT, false));
}

#[test]
fn a_long_original_is_cut_to_its_first_64_kib_with_its_length() {
    let line = vec![b'x'; 3_000_000];
    let d = DeadLetter::new("malformed_row", "replay", &line);
    assert_eq!(d.original.len(), 65_536);
    assert_eq!((d.original_bytes, d.truncated), (Some(3_000_000), true));
    let json = serde_json::to_string(&d).unwrap();
    assert!(json.contains(r#""original_bytes":3000000,"truncated":true"#));
    assert_eq!(serde_json::from_str::<DeadLetter>(&json).unwrap(), d);
}

#[test]
fn the_cut_falls_on_a_character_boundary() {
    // A four-byte character that starts three bytes before the limit is left out whole,
    // not turned into U+FFFD.
    let mut line = vec![b'a'; ORIGINAL_LIMIT - 3];
    line.extend_from_slice("😀 and more".as_bytes());
    let d = DeadLetter::new("r", "replay", &line);
    assert_eq!(d.original.len(), ORIGINAL_LIMIT - 3);
    assert!(!d.original.contains('\u{fffd}'));
    assert_eq!(d.original_bytes, Some(line.len() as u64));
    // Three-byte characters: 21,845 of them fit.
    let euros = "€".repeat(30_000);
    let d = DeadLetter::new("r", "replay", euros.as_bytes());
    assert_eq!(d.original, "€".repeat(21_845));
    // Invalid bytes grow threefold as U+FFFD: the text is cut even though the original
    // is shorter than the limit.
    let d = DeadLetter::new("r", "process", &[0xff; 30_000]);
    assert_eq!(d.original, "\u{fffd}".repeat(21_845));
    assert_eq!((d.original_bytes, d.truncated), (Some(30_000), true));
}
