use super::*;
use crate::reject::RejectReason;

use crate::validate::HEADER;

fn input(lines: &[&str], eol: &str) -> Vec<u8> {
    let mut s = String::new();
    for l in lines {
        s.push_str(l);
        s.push_str(eol);
    }
    s.into_bytes()
}

fn small_blocks() -> ReaderConfig {
    ReaderConfig {
        block_bytes: 4096,
        ..ReaderConfig::default()
    }
}

#[test]
fn lines_are_numbered_from_the_header_and_blank_lines_skipped() {
    let data = input(
        &[
            HEADER,
            "2020-04-24 11:50:39 UTC,1,2,3,electronics.tablet,samsung,1.00,",
            "",
            "1970-01-01 00:33:40 UTC,1,2,3,x,b,1.00,",
            "  ",
            "2020-04-24 11:50:40 UTC,5,6,,7.25,,,",
        ],
        "\r\n",
    );
    let all = read_all(data.as_slice(), &ReaderConfig::default()).unwrap();
    assert_eq!(all.lines, 6);
    assert_eq!(all.stats.records, 3);
    assert_eq!(all.stats.blank, 2);
    assert_eq!(all.stats.accepted, 2);
    assert_eq!(all.stats.repaired, 1);
    assert_eq!(all.stats.rejected.get(RejectReason::EventTimeOutOfRange), 1);
    let lines: Vec<u64> = all.events.iter().map(|e| e.line).collect();
    assert_eq!(lines, vec![2, 6]);
    assert_eq!(all.rejects.len(), 1);
    assert_eq!(all.rejects[0].line, 4);
    assert_eq!(
        all.rejects[0].text,
        b"1970-01-01 00:33:40 UTC,1,2,3,x,b,1.00,"
    );
    // Offsets point at the first byte of each line.
    let e = &all.events[1];
    let at = &data[e.offset as usize..];
    assert!(at.starts_with(b"2020-04-24 11:50:40 UTC,5,6"));
    assert_eq!(
        all.dict.name(all.events[0].category.unwrap()),
        "electronics.tablet"
    );
}

#[test]
fn bom_header_and_last_line_without_newline() {
    let mut data = b"\xEF\xBB\xBF".to_vec();
    data.extend(input(&[HEADER], "\n"));
    data.extend(b"2020-04-24 11:50:39 UTC,1,2,3,x,b,1.00,9");
    let all = read_all(data.as_slice(), &ReaderConfig::default()).unwrap();
    assert_eq!(all.stats.accepted, 1);
    assert_eq!(all.events[0].user_id, Some(9));
    assert_eq!(all.events[0].line, 2);
}

#[test]
fn one_bad_quote_does_not_swallow_the_next_lines() {
    let data = input(
        &[
            HEADER,
            "2020-04-24 11:50:39 UTC,1,2,3,x,\"b,1.00,",
            "2020-04-24 11:50:39 UTC,2,2,3,x,b\",1.00,",
            "2020-04-24 11:50:39 UTC,3,2,3,x,b,1.00,",
        ],
        "\n",
    );
    let all = read_all(data.as_slice(), &ReaderConfig::default()).unwrap();
    assert_eq!(all.stats.rejected.get(RejectReason::MalformedRow), 2);
    assert_eq!(all.events.len(), 1);
    assert_eq!(all.events[0].order_id, 3);
    assert_eq!(all.events[0].line, 4);
}

#[test]
fn header_only_and_empty_inputs() {
    let all = read_all(HEADER.as_bytes(), &ReaderConfig::default()).unwrap();
    assert_eq!(all.stats, ReadStats::default());
    let err = read_all(&b""[..], &ReaderConfig::default()).err().unwrap();
    assert!(matches!(err, ReadError::Header(HeaderError::Empty)));
}

/// Block size and thread count must not change any result.
#[test]
fn blocks_give_the_same_result_as_one_read() {
    let mut lines = vec![HEADER.to_string()];
    for i in 0..3000u64 {
        let brand = ["samsung", "apple", "", "tefal"][(i % 4) as usize];
        let line = match i % 7 {
            0 => format!(
                "2020-05-{:02} 10:00:00 UTC,{i},{},,{}.{:02},{},,",
                1 + i % 28,
                i * 3,
                i % 500,
                i % 100,
                if i % 2 == 0 {
                    format!("{}", 1000 + i)
                } else {
                    String::new()
                }
            ),
            1 => "1970-01-01 00:33:40 UTC,1,2,3,x,b,1.00,".to_string(),
            2 => String::new(),
            _ => format!(
                "2020-06-{:02} 11:{:02}:00 UTC,{i},{},7,cat.{},{brand},{}.50,{}",
                1 + i % 30,
                i % 60,
                i * 5,
                i % 9,
                i % 300,
                i % 11
            ),
        };
        lines.push(line);
    }
    let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
    let data = input(&refs, "\n");
    let one = read_all(
        data.as_slice(),
        &ReaderConfig {
            block_bytes: 64 << 20,
            ..ReaderConfig::default()
        },
    )
    .unwrap();
    let many = read_all(data.as_slice(), &small_blocks()).unwrap();
    assert_eq!(one.stats, many.stats);
    assert_eq!(
        one.stats.records,
        one.stats.accepted + one.stats.rejected.total()
    );
    assert_eq!(one.stats.records + one.stats.blank, 3000);
    assert_eq!(one.events.len(), many.events.len());
    for (a, b) in one.events.iter().zip(&many.events) {
        assert_eq!(
            (a.line, a.offset, a.order_id, a.price_cents),
            (b.line, b.offset, b.order_id, b.price_cents)
        );
        assert_eq!(
            a.category.map(|s| one.dict.name(s)),
            b.category.map(|s| many.dict.name(s))
        );
        assert_eq!(
            a.brand.map(|s| one.dict.name(s)),
            b.brand.map(|s| many.dict.name(s))
        );
    }
    assert_eq!(one.rejects, many.rejects);
    assert_eq!(one.stats.repaired, 429);
}

#[test]
fn a_line_longer_than_a_block_is_read_whole() {
    let long_brand = "x".repeat(10_000);
    let line = format!("2020-04-24 11:50:39 UTC,1,2,3,x,{long_brand},1.00,");
    let data = input(
        &[HEADER, &line, "2020-04-24 11:50:39 UTC,2,2,3,x,b,1.00,"],
        "\n",
    );
    let all = read_all(data.as_slice(), &small_blocks()).unwrap();
    assert_eq!(all.stats.accepted, 2);
    assert_eq!(all.dict.name(all.events[0].brand.unwrap()).len(), 10_000);
    assert_eq!(all.events[1].line, 3);
}

#[test]
fn sorting_orders_by_time_then_line() {
    let data = input(
        &[
            HEADER,
            "2020-04-24 11:50:39 UTC,1,2,3,x,b,1.00,",
            "2020-04-24 11:00:00 UTC,2,2,3,x,b,1.00,",
            "2020-04-24 11:50:39 UTC,3,2,3,x,b,1.00,",
        ],
        "\n",
    );
    let mut all = read_all(data.as_slice(), &ReaderConfig::default()).unwrap();
    sort_by_event_time(&mut all.events);
    let orders: Vec<u64> = all.events.iter().map(|e| e.order_id).collect();
    assert_eq!(orders, vec![2, 1, 3]);
}
