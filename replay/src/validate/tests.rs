use super::*;
use RejectReason::*;

fn validator() -> LineValidator {
    LineValidator::new(
        Header::parse(HEADER.as_bytes()).unwrap(),
        DEFAULT_MIN_EVENT_TIME_US,
    )
}

/// What the reader makes of a line, in a form that is easy to write down in a table.
#[derive(Debug, PartialEq, Eq)]
struct Seen {
    time: i64,
    order: u64,
    product: u64,
    category_id: Option<u64>,
    user: Option<u64>,
    cents: i64,
    code: Option<String>,
    brand: Option<String>,
    repaired: bool,
}

fn check(v: &LineValidator, line: &[u8]) -> Result<Seen, RejectReason> {
    let mut fields = Vec::new();
    v.validate(line, &mut fields).map(|l| Seen {
        time: l.event_time_us / 1_000_000,
        order: l.order_id,
        product: l.product_id,
        category_id: l.category_id,
        user: l.user_id,
        cents: l.price_cents,
        code: l.category_code.map(|c| c.into_owned()),
        brand: l.brand.map(|c| c.into_owned()),
        repaired: l.repaired,
    })
}

// One argument per column of the table below keeps each row on one readable line.
#[allow(clippy::too_many_arguments)]
fn seen(
    time: i64,
    order: u64,
    product: u64,
    category_id: Option<u64>,
    user: Option<u64>,
    cents: i64,
    code: Option<&str>,
    brand: Option<&str>,
    repaired: bool,
) -> Result<Seen, RejectReason> {
    Ok(Seen {
        time,
        order,
        product,
        category_id,
        user,
        cents,
        code: code.map(str::to_string),
        brand: brand.map(str::to_string),
        repaired,
    })
}

const T: i64 = 1_587_729_039; // 2020-04-24 11:50:39 UTC
const T2: i64 = 1_591_544_463; // 2020-06-07 15:41:03 UTC

#[test]
fn every_rule_and_reason() {
    let v = validator();
    #[rustfmt::skip]
    let cases: Vec<(&str, &[u8], Result<Seen, RejectReason>)> = vec![
        ("clean line with float-notation ids",
         b"2020-04-24 11:50:39 UTC,2294359932054536986,1515966223509089906,2.268105426648171e+18,electronics.tablet,samsung,162.01,1.515915625441994e+18",
         seen(T, 2294359932054536986, 1515966223509089906, Some(2268105426648171008), Some(1515915625441993984), 16201, Some("electronics.tablet"), Some("samsung"), false)),
        ("anonymous purchase, full integer ids",
         b"2020-04-24 11:50:39 UTC,2294359932054536986,1515966223509089906,2268105426648170900,electronics.tablet,samsung,162.01,",
         seen(T, 2294359932054536986, 1515966223509089906, Some(2268105426648170900), None, 16201, Some("electronics.tablet"), Some("samsung"), false)),
        ("shifted line with a customer is repaired",
         b"2020-06-07 15:41:03 UTC,2294359932054613606,1515966226466128044,,558.77,1515915626872621056,,",
         seen(T2, 2294359932054613606, 1515966226466128044, None, Some(1515915626872621056), 55877, None, None, true)),
        ("shifted line without a customer is repaired",
         b"2020-06-07 15:41:03 UTC,2294359932054613606,1515966226466128044,,558.77,,,",
         seen(T2, 2294359932054613606, 1515966226466128044, None, None, 55877, None, None, true)),
        ("shifted integer price is repaired",
         b"2020-06-07 15:41:03 UTC,1,2,,558,,,",
         seen(T2, 1, 2, None, None, 55800, None, None, true)),
        ("no category id but a code that is not a number: not shifted, no price",
         b"2020-06-07 15:41:03 UTC,1,2,,electronics.tablet,samsung,,",
         Err(MissingPrice)),
        ("no category id and a price present: not shifted",
         b"2020-06-07 15:41:03 UTC,1,2,,,samsung,5.00,",
         seen(T2, 1, 2, None, None, 500, None, Some("samsung"), false)),
        ("shifted line whose user id is unparseable",
         b"2020-06-07 15:41:03 UTC,1,2,,558.77,abc,,",
         Err(InvalidUserId)),
        ("empty code and brand are NULL",
         b"2020-04-24 11:50:39 UTC,1,2,3,,,0.00,4",
         seen(T, 1, 2, Some(3), Some(4), 0, None, None, false)),
        ("unparseable category id is only dropped",
         b"2020-04-24 11:50:39 UTC,1,2,n/a,x.y,b,1.00,",
         seen(T, 1, 2, None, None, 100, Some("x.y"), Some("b"), false)),
        ("time without UTC suffix",
         b"2020-04-24 11:50:39,1,2,3,x,b,1.00,",
         seen(T, 1, 2, Some(3), None, 100, Some("x"), Some("b"), false)),
        ("time as RFC 3339",
         b"2020-04-24T11:50:39Z,1,2,3,x,b,1.00,",
         seen(T, 1, 2, Some(3), None, 100, Some("x"), Some("b"), false)),
        ("quoted field containing a comma",
         b"2020-04-24 11:50:39 UTC,1,2,3,x,\"Smith, Sons & Co\",1.00,",
         seen(T, 1, 2, Some(3), None, 100, Some("x"), Some("Smith, Sons & Co"), false)),
        ("quoted field with a doubled quote",
         b"2020-04-24 11:50:39 UTC,1,2,3,x,\"the \"\"best\"\"\",1.00,",
         seen(T, 1, 2, Some(3), None, 100, Some("x"), Some("the \"best\""), false)),
        ("price rounded half away from zero",
         b"2020-04-24 11:50:39 UTC,1,2,3,x,b,2.675,",
         seen(T, 1, 2, Some(3), None, 268, Some("x"), Some("b"), false)),
        ("non-ASCII brand that is valid UTF-8",
         "2020-04-24 11:50:39 UTC,1,2,3,x,\u{0430}\u{0432}\u{0430},1.00,".as_bytes(),
         seen(T, 1, 2, Some(3), None, 100, Some("x"), Some("\u{0430}\u{0432}\u{0430}"), false)),
        ("invalid UTF-8",
         b"2020-04-24 11:50:39 UTC,1,2,3,x,b\xff\xfe,1.00,",
         Err(MalformedRow)),
        ("too few fields", b"2020-04-24 11:50:39 UTC,1,2,3,x,b,1.00", Err(MalformedRow)),
        ("too many fields", b"2020-04-24 11:50:39 UTC,1,2,3,x,b,1.00,,", Err(MalformedRow)),
        ("quote left open at end of line",
         b"2020-04-24 11:50:39 UTC,1,2,3,x,\"b,1.00,",
         Err(MalformedRow)),
        ("malformed wins over every other reason", b"garbage", Err(MalformedRow)),
        ("the 1970 placeholder is out of range",
         b"1970-01-01 00:33:40 UTC,1,2,3,x,b,1.00,",
         Err(EventTimeOutOfRange)),
        ("bad time", b"2020-02-30 10:00:00 UTC,1,2,3,x,b,1.00,", Err(InvalidEventTime)),
        ("empty time", b",1,2,3,x,b,1.00,", Err(InvalidEventTime)),
        ("time checked before order id", b"bad,,2,3,x,b,1.00,", Err(InvalidEventTime)),
        ("missing order id", b"2020-04-24 11:50:39 UTC,,2,3,x,b,1.00,", Err(InvalidOrderId)),
        ("bad order id", b"2020-04-24 11:50:39 UTC,12x,2,3,x,b,1.00,", Err(InvalidOrderId)),
        ("order id checked before product id", b"2020-04-24 11:50:39 UTC,,,3,x,b,,", Err(InvalidOrderId)),
        ("missing product id", b"2020-04-24 11:50:39 UTC,1,,3,x,b,1.00,", Err(InvalidProductId)),
        ("fractional product id", b"2020-04-24 11:50:39 UTC,1,2.5,3,x,b,1.00,", Err(InvalidProductId)),
        ("missing price", b"2020-04-24 11:50:39 UTC,1,2,3,x,b,,", Err(MissingPrice)),
        ("negative price", b"2020-04-24 11:50:39 UTC,1,2,3,x,b,-1.00,", Err(InvalidPrice)),
        ("exponent price", b"2020-04-24 11:50:39 UTC,1,2,3,x,b,1e3,", Err(InvalidPrice)),
        ("NaN price", b"2020-04-24 11:50:39 UTC,1,2,3,x,b,NaN,", Err(InvalidPrice)),
        ("price checked before user id", b"2020-04-24 11:50:39 UTC,1,2,3,x,b,oops,bad", Err(InvalidPrice)),
        ("bad user id", b"2020-04-24 11:50:39 UTC,1,2,3,x,b,1.00,user-7", Err(InvalidUserId)),
        ("negative user id", b"2020-04-24 11:50:39 UTC,1,2,3,x,b,1.00,-1.5e+18", Err(InvalidUserId)),
    ];
    for (name, line, want) in cases {
        assert_eq!(check(&v, line), want, "{name}");
    }
}

#[test]
fn min_event_time_is_configurable() {
    let header = Header::parse(HEADER.as_bytes()).unwrap();
    let strict = LineValidator::new(header, 1_590_000_000_000_000); // 2020-05-20
    let line = b"2020-04-24 11:50:39 UTC,1,2,3,x,b,1.00,";
    assert_eq!(check(&strict, line), Err(EventTimeOutOfRange));
    assert!(check(&validator(), line).is_ok());
}

#[test]
fn header_columns_found_by_name_in_any_order() {
    let h = Header::parse(
        b"\xEF\xBB\xBFuser_id,price,brand,category_code,category_id,product_id,order_id,event_time,extra\r",
    )
    .unwrap();
    assert_eq!(h.index, [7, 6, 5, 4, 3, 2, 1, 0]);
    assert_eq!(h.width, 9);
    let v = LineValidator::new(h, DEFAULT_MIN_EVENT_TIME_US);
    let got = check(&v, b"9,1.50,b,x,3,2,1,2020-04-24 11:50:39 UTC,whatever").unwrap();
    assert_eq!(
        got,
        seen(T, 1, 2, Some(3), Some(9), 150, Some("x"), Some("b"), false).unwrap()
    );
}

#[test]
fn header_errors_name_the_problem() {
    assert_eq!(Header::parse(b""), Err(HeaderError::Empty));
    assert_eq!(
        Header::parse(b"event_time,order_id,product_id,category_id,category_code,brand,price"),
        Err(HeaderError::MissingColumn("user_id"))
    );
    assert_eq!(
        Header::parse(format!("{HEADER},brand").as_bytes()),
        Err(HeaderError::DuplicateColumn("brand".into()))
    );
    assert_eq!(Header::parse(b"\xff,a"), Err(HeaderError::NotUtf8));
}

#[test]
fn blank_lines() {
    assert!(is_blank(b""));
    assert!(is_blank(b"  \r"));
    assert!(!is_blank(b",,,"));
}

#[test]
fn the_header_line_is_the_columns_joined() {
    assert_eq!(HEADER, COLUMNS.join(","));
}
