use datafusion::arrow::util::pretty::pretty_format_batches;
use datafusion::prelude::{ParquetReadOptions, SessionContext};
use storepulse_replay::Sym;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::*;
use crate::aggregate::CoreConfig;
use storepulse_aggregate::testing::ev;
use tables::scope;

pub(crate) const JUNE1: i64 = 1_590_969_600_000_000;
pub(crate) const H: i64 = 3_600_000_000;

/// What a `run` snapshot records besides its state, for tests (other modules' too).
pub(crate) fn meta() -> SnapshotMeta {
    SnapshotMeta {
        input: InputPosition::File {
            path: "x.csv".into(),
            order: "event_time".into(),
            lines_read: 5,
            events_applied: 3,
            complete: false,
            rejected_bytes: 0,
        },
        counts: Counts::default(),
        config: WindowConfig {
            max_out_of_orderness_us: H,
            allowed_lateness_us: 0,
            min_event_time: "2000-01-01T00:00:00Z".into(),
        },
    }
}

fn sample_core() -> Core {
    let mut c = Core::new(CoreConfig::default());
    assert_eq!(c.intern_name("electronics.tablet"), Sym(0));
    c.record(&ev(JUNE1 + H, 1, Some(42), 16_201, Some(0), None));
    c.record(&ev(JUNE1 + H, 1, Some(42), 99, None, None));
    c.record(&ev(JUNE1 + 30 * H, 2, None, 1_000, Some(0), None));
    c
}

async fn sql(path: &std::path::Path, table: &str, query: &str) -> String {
    let ctx = SessionContext::new();
    ctx.register_parquet(table, path.to_str().unwrap(), ParquetReadOptions::default())
        .await
        .unwrap();
    let batches = ctx.sql(query).await.unwrap().collect().await.unwrap();
    pretty_format_batches(&batches).unwrap().to_string()
}

#[tokio::test]
async fn tables_read_back_with_exact_values() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = SnapshotStore::open(dir.path(), 3).unwrap();
    let core = sample_core();
    let m = store.write(&core, meta()).unwrap();
    assert_eq!(m.id, 1);
    assert_eq!(m.as_of.as_deref(), Some("2020-06-02T06:00:00Z"));
    assert_eq!(m.watermark.as_deref(), Some("2020-06-02T05:00:00Z"));
    assert_eq!(m.tables["daily_sales"].rows, 2);
    let snap = latest(dir.path()).unwrap();
    assert_eq!(snap.manifest, m);

    let daily = sql(
        &snap.table_path("daily_sales").unwrap(),
        "daily_sales",
        "SELECT day, revenue, items, orders, customers, is_final FROM daily_sales ORDER BY day",
    )
    .await;
    let want = [
        "+------------+---------+-------+--------+-----------+----------+",
        "| day        | revenue | items | orders | customers | is_final |",
        "+------------+---------+-------+--------+-----------+----------+",
        "| 2020-06-01 | 163.00  | 2     | 1      | 1         | true     |",
        "| 2020-06-02 | 10.00   | 1     | 1      | 0         | false    |",
        "+------------+---------+-------+--------+-----------+----------+",
    ];
    assert_eq!(daily, want.join("\n"));
    let rfm = sql(
        &snap.table_path("rfm").unwrap(),
        "rfm",
        "SELECT user_id, first_purchase, frequency, monetary, items, recency_days, rfm_cell, segment FROM rfm",
    )
    .await;
    assert!(rfm.contains("| 42      | 2020-06-01T01:00:00Z | 1         | 163.00   | 2     | 1            | 111      | Lost Customers |"), "{rfm}");
    let types = sql(
        &snap.table_path("rfm").unwrap(),
        "rfm",
        "SELECT arrow_typeof(monetary) AS m, arrow_typeof(user_id) AS u FROM rfm",
    )
    .await;
    assert!(
        types.contains("Decimal128(18, 2)") && types.contains("UInt64"),
        "{types}"
    );
    // The open day still carries its distinct orders, each with the category and brand
    // sets it is in, so a processor could resume.
    let open = sql(
        &snap.table_path("state_open_orders").unwrap(),
        "s",
        "SELECT day, order_id, category_codes, array_length(brands) AS brands, \
         brands[1] IS NULL AS unknown_brand FROM s ORDER BY day, order_id",
    )
    .await;
    let want = [
        "+------------+----------+----------------------+--------+---------------+",
        "| day        | order_id | category_codes       | brands | unknown_brand |",
        "+------------+----------+----------------------+--------+---------------+",
        "| 2020-06-02 | 2        | [electronics.tablet] | 1      | true          |",
        "+------------+----------+----------------------+--------+---------------+",
    ];
    assert_eq!(open, want.join("\n"));
}

#[test]
fn keeps_the_newest_snapshots_and_clears_unfinished_ones() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join(".tmp-snap-000009")).unwrap();
    let mut store = SnapshotStore::open(dir.path(), 2).unwrap();
    assert!(!dir.path().join(".tmp-snap-000009").exists());
    let core = sample_core();
    for _ in 0..4 {
        store.write(&core, meta()).unwrap();
    }
    let mut names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, vec![".lock", "LATEST", "snap-000003", "snap-000004"]);
    assert_eq!(latest(dir.path()).unwrap().manifest.id, 4);
    // One writer at a time: a second store on the folder is refused while this one lives.
    let err = SnapshotStore::open(dir.path(), 2).unwrap_err();
    assert!(matches!(err, SnapshotError::Locked(_)), "{err}");
    drop(store);
    // Reopening continues the numbering.
    let mut again = SnapshotStore::open(dir.path(), 2).unwrap();
    assert_eq!(again.write(&core, meta()).unwrap().id, 5);
}

#[test]
fn no_snapshot_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let err = latest(dir.path()).unwrap_err();
    assert!(err.to_string().contains("no snapshot"), "{err}");
}

/// Two snapshots of `sample_core()` in a fresh folder; returns the folder.
fn two_snapshots() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let mut store = SnapshotStore::open(dir.path(), 3).unwrap();
    for _ in 0..2 {
        store.write(&sample_core(), meta()).unwrap();
    }
    dir
}

fn snap_file(dir: &Path, id: u64, file: &str) -> PathBuf {
    dir.join(format!("snap-{id:06}")).join(file)
}

#[test]
fn a_damaged_parquet_file_is_an_error_naming_it_and_readers_fall_back() {
    let dir = two_snapshots();
    let broken = snap_file(dir.path(), 2, "daily_sales.parquet");
    std::fs::write(&broken, b"not parquet at all").unwrap();
    let newest = latest(dir.path()).unwrap();
    let err = load_state(&newest).unwrap_err();
    assert!(matches!(err, SnapshotError::Damaged { .. }), "{err}");
    assert!(err.to_string().contains("daily_sales.parquet"), "{err}");
    // Query and resume take the previous complete snapshot.
    assert_eq!(latest_complete(dir.path()).unwrap().manifest.id, 1);
    let (found, state) = newest_good(dir.path(), load_state).unwrap();
    assert_eq!(found.manifest.id, 1);
    assert_eq!(state.days.len(), 2);
    assert_eq!(state.customers.len(), 1);
}

#[test]
fn a_table_with_a_changed_schema_is_an_error_not_a_panic() {
    let dir = two_snapshots();
    // A readable Parquet file with the right name and other columns.
    let foreign = RecordBatch::try_from_iter([(
        "user_id",
        Arc::new(datafusion::arrow::array::StringArray::from(vec!["42"])) as _,
    )])
    .unwrap();
    for id in [1, 2] {
        write_parquet(
            &snap_file(dir.path(), id, "rfm.parquet"),
            tables::RFM,
            &foreign,
        )
        .unwrap();
    }
    let err = load_state(&latest(dir.path()).unwrap()).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("rfm.parquet") && text.contains("expected"),
        "{text}"
    );
    // No complete snapshot left: the newest one's error, not a panic.
    let err = latest_complete(dir.path()).unwrap_err();
    assert!(err.to_string().contains("snap-000002"), "{err}");
}

#[test]
fn a_snapshot_of_another_format_is_refused() {
    let dir = two_snapshots();
    let path = snap_file(dir.path(), 2, manifest::MANIFEST_FILE);
    let text = std::fs::read_to_string(&path).unwrap();
    let current = format!("\"format\": {}", manifest::FORMAT_VERSION);
    assert!(text.contains(&current), "{text}");
    std::fs::write(&path, text.replacen(&current, "\"format\": 99", 1)).unwrap();
    let err = latest(dir.path()).unwrap().verify().unwrap_err();
    assert!(err.to_string().contains("format 99"), "{err}");
    assert_eq!(latest_complete(dir.path()).unwrap().manifest.id, 1);
}

/// A core with an open day whose orders are in several categories and brands, one of
/// each unknown, and a customer on it.
fn core_with_open_groups() -> Core {
    let mut c = sample_core();
    let mut sym = |name| c.intern_name(name).0;
    let (tv, phone) = (sym("electronics.video.tv"), sym("phone"));
    let (brand, other) = (sym("samsung"), sym("lg"));
    let day2 = JUNE1 + 30 * H;
    c.record(&ev(day2, 3, Some(7), 500, Some(tv), Some(brand)));
    c.record(&ev(day2, 3, Some(7), 700, Some(phone), Some(other)));
    c.record(&ev(day2, 3, Some(7), 900, None, Some(brand)));
    c.record(&ev(day2, 4, Some(8), 100, Some(tv), None));
    c
}

/// Rewrites snapshot `id` of `dir` in the layout before `state_open_orders` (format 2, or
/// 3 for an incremental one: every distinct set a row of `state_open_sets`), from `state`,
/// the state it was written from (for an incremental one, what changed).
fn to_older_layout(dir: &Path, id: u64, state: &crate::aggregate::CoreState) {
    let mut rows: Vec<(i32, &str, Option<String>, u64)> = Vec::new();
    for d in &state.days {
        rows.extend(
            d.open_orders
                .iter()
                .map(|&o| (d.day, scope::ORDER, None, o)),
        );
        rows.extend(
            d.open_customers
                .iter()
                .map(|&c| (d.day, scope::CUSTOMER, None, c)),
        );
        for (scope, set) in [
            (scope::CATEGORY_ORDER, &d.open_category_orders),
            (scope::BRAND_ORDER, &d.open_brand_orders),
        ] {
            rows.extend(set.iter().map(|(k, o)| (d.day, scope, k.clone(), *o)));
        }
    }
    assert!(rows
        .iter()
        .any(|r| r.1 == scope::BRAND_ORDER && r.2.is_none()));
    use datafusion::arrow::array::{Date32Array, StringArray, UInt64Array};
    let batch = RecordBatch::try_new(
        tables::schema(tables::STATE_OPEN_SETS),
        vec![
            Arc::new(Date32Array::from_iter_values(rows.iter().map(|r| r.0))),
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.1))),
            Arc::new(StringArray::from_iter(rows.iter().map(|r| r.2.as_deref()))),
            Arc::new(UInt64Array::from_iter_values(rows.iter().map(|r| r.3))),
        ],
    )
    .unwrap();
    let sets = snap_file(dir, id, "state_open_sets.parquet");
    let bytes = write_parquet(&sets, tables::STATE_OPEN_SETS, &batch).unwrap();
    let orders = snap_file(dir, id, "state_open_orders.parquet");
    let manifest_path = snap_file(dir, id, manifest::MANIFEST_FILE);
    let mut m: Manifest = serde_json::from_slice(&std::fs::read(&manifest_path).unwrap()).unwrap();
    std::fs::remove_file(orders).unwrap();
    m.format = match m.chain {
        None => manifest::OLDER_FORMAT,
        Some(_) => manifest::OLDER_DELTA_FORMAT,
    };
    m.tables.remove(tables::STATE_OPEN_ORDERS);
    let entry = m.tables.get_mut(tables::STATE_OPEN_SETS).unwrap();
    (entry.rows, entry.bytes) = (rows.len() as u64, bytes);
    std::fs::write(&manifest_path, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
}

/// Snapshots of the layout before `state_open_orders` (format 2, every distinct set a row
/// of `state_open_sets`) are still read, to the same state; a snapshot of this format
/// without `state_open_orders` is damaged, not read as having no open orders.
#[test]
fn a_snapshot_of_the_older_layout_restores_the_same_state() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = SnapshotStore::open(dir.path(), 3).unwrap();
    let core = core_with_open_groups();
    let mut m = meta();
    m.counts.accepted = 7;
    store.write(&core, m).unwrap();
    let state = core.state();
    let restored =
        |s: &Published| Core::restore(CoreConfig::default(), load_state(s).unwrap()).state();
    assert_eq!(restored(&latest(dir.path()).unwrap()), state);
    assert_eq!(
        latest(dir.path()).unwrap().manifest.format,
        manifest::FORMAT_VERSION
    );

    // This format without the table: damaged.
    let orders = snap_file(dir.path(), 1, "state_open_orders.parquet");
    let aside = dir.path().join("aside");
    std::fs::copy(&orders, &aside).unwrap();
    std::fs::remove_file(&orders).unwrap();
    let err = load_state(&latest(dir.path()).unwrap()).unwrap_err();
    assert!(err.to_string().contains("state_open_orders"), "{err}");
    std::fs::rename(&aside, &orders).unwrap();

    to_older_layout(dir.path(), 1, &state);
    let older = latest(dir.path()).unwrap();
    assert_eq!(older.manifest.format, manifest::OLDER_FORMAT);
    older.verify().unwrap();
    assert_eq!(restored(&older), state);
}

/// A chain written by the build before (a format-2 base, format-3 incremental snapshots)
/// restores to the state its newest snapshot was taken from: a folder or bucket of the
/// previous build resumes as it is.
#[test]
fn a_chain_of_the_older_layout_restores_the_same_state() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = SnapshotStore::open(dir.path(), 5).unwrap().with_deltas(5);
    let mut core = core_with_open_groups();
    core.track_changes();
    let mark = core.mark();
    store.write_kind(&core, None, meta(), Kind::Whole).unwrap();
    core.settle(mark);
    let base = core.state();
    let (tv, acme) = (
        core.intern_name("electronics.video.tv"),
        core.intern_name("acme"),
    );
    let day2 = JUNE1 + 30 * H;
    let mut written = Vec::new();
    for order in [5, 6] {
        core.record(&ev(
            day2,
            order,
            Some(order + 20),
            300,
            Some(tv.0),
            Some(acme.0),
        ));
        core.record(&ev(day2, order, Some(order + 20), 40, None, None));
        let (part, mark) = core.changed();
        let m = store
            .write_kind(&part, None, meta(), Kind::Changes)
            .unwrap();
        core.settle(mark);
        written.push((m.id, part.state()));
    }
    // Compared without the counts (a snapshot takes them from its caller's meta).
    let uncounted = |mut s: crate::aggregate::CoreState| {
        (s.accepted, s.late) = (0, 0);
        s
    };
    let restored = |s: &Published| {
        uncounted(Core::restore(CoreConfig::default(), load_state(s).unwrap()).state())
    };
    assert_eq!(
        restored(&latest(dir.path()).unwrap()),
        uncounted(core.state())
    );

    to_older_layout(dir.path(), 1, &base);
    for (id, part) in &written {
        to_older_layout(dir.path(), *id, part);
    }
    let older = latest(dir.path()).unwrap();
    assert_eq!(older.manifest.format, manifest::OLDER_DELTA_FORMAT);
    assert_eq!(older.manifest.chain.map(|c| c.length), Some(2));
    older.verify().unwrap();
    assert_eq!(restored(&older), uncounted(core.state()));
}

#[test]
fn an_unknown_open_set_scope_is_damage_not_a_brand_order() {
    let dir = two_snapshots();
    let rows = RecordBatch::try_new(
        tables::schema(tables::STATE_OPEN_SETS),
        vec![
            Arc::new(datafusion::arrow::array::Date32Array::from(vec![18_415])),
            Arc::new(datafusion::arrow::array::StringArray::from(vec!["mystery"])),
            Arc::new(datafusion::arrow::array::StringArray::from(vec![
                None::<&str>,
            ])),
            Arc::new(datafusion::arrow::array::UInt64Array::from(vec![7])),
        ],
    )
    .unwrap();
    write_parquet(
        &snap_file(dir.path(), 2, "state_open_sets.parquet"),
        tables::STATE_OPEN_SETS,
        &rows,
    )
    .unwrap();
    let err = load_state(&latest(dir.path()).unwrap()).unwrap_err();
    assert!(err.to_string().contains("unknown scope `mystery`"), "{err}");
}

/// A snapshot beside the stream that is told to give up publishes nothing and leaves no
/// folder behind; the next snapshot takes its id and the pointer still names the last one.
#[test]
fn a_snapshot_given_up_publishes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = SnapshotStore::open(dir.path(), 3).unwrap();
    let core = sample_core();
    let go_on = AtomicBool::new(false);
    assert_eq!(
        store
            .write_beside(&core, None, meta(), (&go_on, Kind::Whole))
            .unwrap()
            .id,
        1
    );
    let give_up = AtomicBool::new(true);
    let err = store
        .write_beside(&core, None, meta(), (&give_up, Kind::Whole))
        .unwrap_err();
    assert!(matches!(err, SnapshotError::Superseded), "{err}");
    let mut names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, [".lock", "LATEST", "snap-000001"]);
    assert_eq!(latest(dir.path()).unwrap().manifest.id, 1);
    assert_eq!(store.write(&core, meta()).unwrap().id, 2);
    assert_eq!(latest(dir.path()).unwrap().manifest.id, 2);
}

/// A partition's counted events: a long run, scattered lines, a second pass, another input.
fn sample_seen() -> Seen {
    use crate::aggregate::SeenId;
    let mut seen = Seen::default();
    let mut put = |source, pass, line| assert!(seen.insert(SeenId { source, pass, line }));
    for line in 2..300_002 {
        put(11, 0, line);
    }
    for line in (2..1_000_000).step_by(7) {
        put(11, 1, line);
    }
    put(12, 0, Seen::MAX_LINE);
    seen
}

#[test]
fn counted_events_round_trip_through_a_snapshot() {
    use crate::aggregate::SeenId;
    let dir = tempfile::tempdir().unwrap();
    let mut store = SnapshotStore::open(dir.path(), 3).unwrap();
    let seen = sample_seen();
    store
        .write_with(&sample_core(), Some(&seen), meta())
        .unwrap();
    let back = load_with_seen(&latest_complete(dir.path()).unwrap())
        .unwrap()
        .1;
    assert_eq!(back.len(), seen.len());
    assert_eq!(back.len(), 300_000 + 142_857 + 1);
    let id = |source, pass, line| SeenId { source, pass, line };
    for (i, want) in [
        (id(11, 0, 2), true),
        (id(11, 0, 300_001), true),
        (id(11, 0, 300_002), false),
        (id(11, 1, 9), true),
        (id(11, 1, 10), false),
        (id(12, 0, Seen::MAX_LINE), true),
        (id(12, 0, 2), false),
        (id(11, 2, 2), false),
    ] {
        assert_eq!(back.contains(i), want, "{i:?}");
    }
    // One row per (source, pass); the run of 300,000 lines is a few runs, not 37 KB of bits.
    let batch = tables::state_seen(&seen).unwrap();
    assert_eq!(batch.num_rows(), 3);
    let bytes = std::fs::metadata(
        latest_complete(dir.path())
            .unwrap()
            .table_path(tables::STATE_SEEN)
            .unwrap(),
    )
    .unwrap()
    .len();
    assert!(bytes < 40_000, "state_seen.parquet is {bytes} bytes");
}

#[test]
fn a_damaged_bitmap_is_an_error_naming_the_table() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = SnapshotStore::open(dir.path(), 3).unwrap();
    store
        .write_with(&sample_core(), Some(&sample_seen()), meta())
        .unwrap();
    let rows = RecordBatch::try_new(
        tables::schema(tables::STATE_SEEN),
        vec![
            Arc::new(datafusion::arrow::array::UInt64Array::from(vec![1])),
            Arc::new(datafusion::arrow::array::UInt32Array::from(vec![0])),
            Arc::new(datafusion::arrow::array::BinaryArray::from(vec![
                &b"\x3a\x30\x00\x00 not a bitmap"[..],
            ])),
        ],
    )
    .unwrap();
    write_parquet(
        &snap_file(dir.path(), 1, "state_seen.parquet"),
        tables::STATE_SEEN,
        &rows,
    )
    .unwrap();
    let err = load_with_seen(&latest(dir.path()).unwrap()).unwrap_err();
    assert!(matches!(err, SnapshotError::Damaged { .. }), "{err}");
    assert!(err.to_string().contains("state_seen"), "{err}");
}

#[test]
fn a_snapshot_with_the_chunked_event_ids_of_before_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = SnapshotStore::open(dir.path(), 3).unwrap();
    store
        .write_with(&sample_core(), Some(&sample_seen()), meta())
        .unwrap();
    // The layout before roaring bitmaps: a row per 65,536-line chunk of bits.
    let old = RecordBatch::try_from_iter([
        (
            "source",
            Arc::new(datafusion::arrow::array::UInt64Array::from(vec![1])) as _,
        ),
        (
            "pass",
            Arc::new(datafusion::arrow::array::UInt32Array::from(vec![0])) as _,
        ),
        (
            "chunk",
            Arc::new(datafusion::arrow::array::UInt64Array::from(vec![0])) as _,
        ),
        (
            "bits",
            Arc::new(datafusion::arrow::array::BinaryArray::from(vec![
                &[0u8; 8192][..],
            ])) as _,
        ),
    ])
    .unwrap();
    write_parquet(
        &snap_file(dir.path(), 1, "state_seen.parquet"),
        tables::STATE_SEEN,
        &old,
    )
    .unwrap();
    let err = latest(dir.path()).unwrap().verify().unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("state_seen.parquet") && text.contains("chunk") && text.contains("bitmap"),
        "{text}"
    );
}

mod chains;

/// The counted pairs are written batch by batch, sorted, every pair once.
#[test]
fn the_counted_pairs_are_written_in_batches_sorted() {
    use datafusion::arrow::array::AsArray;
    use datafusion::arrow::datatypes::UInt64Type;
    let dir = tempfile::tempdir().unwrap();
    let core = core_with_open_groups();
    let batches = tables::state_customer_orders(&core, 2);
    let (_, file) =
        write_table_batches(dir.path(), tables::STATE_CUSTOMER_ORDERS, batches).unwrap();
    assert_eq!(file.rows, 3);
    let f = std::fs::File::open(dir.path().join(&file.file)).unwrap();
    let reader =
        datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(f)
            .unwrap()
            .build()
            .unwrap();
    let mut pairs = Vec::new();
    for b in reader {
        let b = b.unwrap();
        let (u, o) = (
            b.column(0).as_primitive::<UInt64Type>(),
            b.column(1).as_primitive::<UInt64Type>(),
        );
        pairs.extend((0..b.num_rows()).map(|i| (u.value(i), o.value(i))));
    }
    assert_eq!(pairs, vec![(7, 3), (8, 4), (42, 1)]);
}
