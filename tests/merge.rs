//! Partitions merge exactly: a stream split by order id over several cores (as Kafka
//! partitions are), each snapshotted to its own folder, reads back through `query` as
//! the same four tables as one core fed everything.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{feed, query_csv, query_tables, storepulse};
use storepulse::aggregate::{Core, CoreConfig};
use storepulse::replay::{read_all, sort_by_event_time, ReaderConfig};
use storepulse::snapshot::view::{self, Reading};
use storepulse::snapshot::{
    partition_dir, Counts, InputPosition, SnapshotMeta, SnapshotStore, WindowConfig,
};

fn meta(core: &Core, input: InputPosition) -> SnapshotMeta {
    SnapshotMeta {
        input,
        counts: Counts {
            accepted: core.accepted(),
            ..Counts::default()
        },
        config: WindowConfig {
            max_out_of_orderness_us: 3_600_000_000,
            allowed_lateness_us: 0,
            min_event_time: "2000-01-01T00:00:00Z".into(),
        },
    }
}

/// Publishes `core` as the snapshot of partition `p` of `topic` (of `partitions`).
fn write_partition(dir: &Path, topic: &str, p: i32, partitions: i32, core: &Core) {
    let position = InputPosition::Kafka {
        topic: topic.into(),
        partition: p,
        partitions,
        next_offset: core.accepted() as i64,
        end_of_input: true,
        inputs: Default::default(),
    };
    SnapshotStore::open(&partition_dir(dir, topic, p), 1)
        .unwrap()
        .write(core, meta(core, position))
        .unwrap();
}

/// A finished core of a generated file's events whose order id is `p` modulo `n`.
fn finished_part(p: u64, n: u64) -> Core {
    let mut data = Vec::new();
    storepulse::generate::generate(&mut data, 3_000, 5).unwrap();
    let all = read_all(data.as_slice(), &ReaderConfig::default()).unwrap();
    let mut events = all.events;
    sort_by_event_time(&mut events);
    let mut core = Core::new(CoreConfig {
        keep_day_customers: true,
        ..CoreConfig::default()
    });
    feed(
        &mut core,
        &all.dict,
        events.into_iter().filter(|e| e.order_id % n == p),
    );
    core.finish();
    core
}

/// Splits by order id over `n` partitions; `finish` decides whether the days end final.
fn split_equals_whole(n: u64, finish: bool) {
    let mut data = Vec::new();
    storepulse::generate::generate(&mut data, 15_000, 9).unwrap();
    let all = read_all(data.as_slice(), &ReaderConfig::default()).unwrap();
    let mut events = all.events;
    sort_by_event_time(&mut events);

    let whole_dir = tempfile::tempdir().unwrap();
    let mut whole = Core::new(CoreConfig::default());
    feed(&mut whole, &all.dict, events.iter().copied());
    if finish {
        whole.finish();
    }
    let file = InputPosition::File {
        path: "generated".into(),
        order: "event_time".into(),
        lines_read: 0,
        events_applied: 0,
        complete: finish,
        rejected_bytes: 0,
    };
    SnapshotStore::open(whole_dir.path(), 1)
        .unwrap()
        .write(&whole, meta(&whole, file))
        .unwrap();

    let parts_dir = tempfile::tempdir().unwrap();
    let config = CoreConfig {
        keep_day_customers: true,
        ..CoreConfig::default()
    };
    let mut cores: Vec<Core> = (0..n).map(|_| Core::new(config)).collect();
    for (p, core) in cores.iter_mut().enumerate() {
        let mine = events
            .iter()
            .copied()
            .filter(|e| e.order_id % n == p as u64);
        feed(core, &all.dict, mine);
    }
    for (p, core) in cores.iter_mut().enumerate() {
        if finish {
            core.finish();
        }
        write_partition(parts_dir.path(), "purchases", p as i32, n as i32, core);
    }
    let (a, b) = (
        query_tables(whole_dir.path()),
        query_tables(parts_dir.path()),
    );
    for (x, y) in a.iter().zip(&b) {
        assert!(x.lines().count() > 10);
        assert_eq!(x, y);
    }
    // The merged view is read instead of the partitions, with the same tables.
    let parts = parts_dir.path();
    assert!(matches!(
        view::reading(parts, view::MAX_BEHIND).unwrap(),
        Reading::Merge(_)
    ));
    let published = view::publish(parts, false)
        .unwrap()
        .expect("a complete set");
    let Reading::View(read, cut) = view::reading(parts, Duration::ZERO).unwrap() else {
        panic!("the view is not read");
    };
    assert!(cut.is_newest(), "{cut:?}");
    assert_eq!(read.manifest, published);
    assert_eq!(published.tables.len(), 4, "the query tables alone");
    assert_eq!(published.counts.accepted, whole.accepted());
    for (x, y) in a.iter().zip(&query_tables(parts)) {
        assert_eq!(x, y);
    }
}

#[test]
fn four_partitions_merge_to_the_whole() {
    split_equals_whole(4, true);
}

#[test]
fn merged_days_are_final_only_where_every_partition_passed_them() {
    // Without the end of input the last day stays open in the whole and in the merge
    // (the slowest partition's watermark decides).
    split_equals_whole(3, false);
}

#[test]
fn a_partition_behind_keeps_the_days_it_has_not_passed_open_in_the_merge() {
    const DAY_US: i64 = 86_400_000_000;
    let mut data = Vec::new();
    storepulse::generate::generate(&mut data, 8_000, 13).unwrap();
    let all = read_all(data.as_slice(), &ReaderConfig::default()).unwrap();
    let mut events = all.events;
    sort_by_event_time(&mut events);
    // Partition 1 holds its events before a midnight three quarters through the file;
    // partition 0 holds every one of its own. Neither reached the end of input.
    let at = events[events.len() * 3 / 4].event_time_us;
    let cut = at - at.rem_euclid(DAY_US);
    let dir = tempfile::tempdir().unwrap();
    for p in 0..2u64 {
        let mut core = Core::new(CoreConfig {
            keep_day_customers: true,
            ..CoreConfig::default()
        });
        let mine = events
            .iter()
            .copied()
            .filter(|e| e.order_id % 2 == p && (p == 0 || e.event_time_us < cut));
        feed(&mut core, &all.dict, mine);
        write_partition(dir.path(), "purchases", p as i32, 2, &core);
    }
    let day = |us: i64| {
        chrono::DateTime::from_timestamp_micros(us)
            .unwrap()
            .format("%Y-%m-%d")
            .to_string()
    };
    let rows = query_csv(
        dir.path(),
        "SELECT CAST(day AS VARCHAR) AS day, is_final FROM daily_sales ORDER BY day",
    );
    let days: Vec<(String, bool)> = rows
        .lines()
        .skip(1)
        .map(|l| {
            let (d, f) = l.split_once(',').unwrap();
            (d.to_string(), f == "true")
        })
        .collect();
    // Partition 0 alone passed the days from the cut to near the end: the merge keeps
    // them open (the slowest watermark decides), and the days before it are final.
    let (before, after): (Vec<_>, Vec<_>) = days.iter().partition(|(d, _)| *d < day(cut - DAY_US));
    assert!(after.len() >= 10, "{days:?}");
    assert!(after.iter().all(|(_, f)| !f), "{days:?}");
    assert!(
        before.len() >= 10 && before.iter().all(|(_, f)| *f),
        "{days:?}"
    );
    let partition0 = partition_dir(dir.path(), "purchases", 0);
    let latest = std::fs::read_to_string(partition0.join("LATEST")).unwrap();
    let manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(partition0.join(latest.trim()).join("manifest.json")).unwrap(),
    )
    .unwrap();
    let own = manifest["watermark_us"].as_i64().unwrap();
    assert!(
        own > cut + 10 * DAY_US,
        "partition 0 alone passed ten more days: {manifest}"
    );
}

#[test]
fn a_partition_without_a_snapshot_keeps_every_day_of_the_merge_open() {
    let dir = tempfile::tempdir().unwrap();
    for p in 0..2 {
        write_partition(dir.path(), "purchases", p, 3, &finished_part(p as u64, 3));
    }
    let sql = "SELECT COUNT(*) AS days, SUM(CASE WHEN is_final THEN 1 ELSE 0 END) AS final \
               FROM daily_sales";
    let out = storepulse(&[
        "query",
        "--snapshot-dir",
        dir.path().to_str().unwrap(),
        "--format",
        "csv",
        sql,
    ]);
    assert!(out.status.success());
    let csv = String::from_utf8(out.stdout).unwrap();
    let row: Vec<u64> = csv
        .lines()
        .nth(1)
        .unwrap()
        .split(',')
        .map(|v| v.parse().unwrap())
        .collect();
    assert!(row[0] > 10, "{csv}");
    assert_eq!(
        row[1], 0,
        "no day is final while partition 2 has no snapshot: {csv}"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        common::said(
            &err,
            &[
                "have no snapshot yet",
                "partitions=[2]",
                "topic=purchases",
                "of=3"
            ]
        ),
        "{err}"
    );
    // Once it has one, the days are final.
    write_partition(dir.path(), "purchases", 2, 3, &finished_part(2, 3));
    let csv = query_csv(dir.path(), sql);
    let row: Vec<u64> = csv
        .lines()
        .nth(1)
        .unwrap()
        .split(',')
        .map(|v| v.parse().unwrap())
        .collect();
    assert_eq!(row[0], row[1], "{csv}");
}

#[test]
fn snapshots_that_are_not_one_set_are_refused_with_the_difference_named() {
    let refused = |dir: &Path, want: &[&str]| {
        let out = storepulse(&["query", "--snapshot-dir", dir.to_str().unwrap(), "SELECT 1"]);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        for w in want {
            assert!(err.contains(w), "`{w}` not in: {err}");
        }
    };
    // Two partition counts.
    let counts = tempfile::tempdir().unwrap();
    write_partition(counts.path(), "purchases", 0, 2, &finished_part(0, 2));
    write_partition(counts.path(), "purchases", 1, 3, &finished_part(1, 3));
    refused(
        counts.path(),
        &[
            "different partition counts",
            "purchases-0: 2",
            "purchases-1: 3",
        ],
    );
    // Two topics.
    let topics = tempfile::tempdir().unwrap();
    write_partition(topics.path(), "purchases", 0, 1, &finished_part(0, 1));
    write_partition(topics.path(), "orders", 0, 1, &finished_part(0, 1));
    refused(
        topics.path(),
        &[
            "different topics",
            "orders-0: orders",
            "purchases-0: purchases",
        ],
    );
    // A run's snapshot beside a topic's partitions.
    let mixed = tempfile::tempdir().unwrap();
    write_partition(mixed.path(), "purchases", 0, 1, &finished_part(0, 1));
    let core = finished_part(0, 1);
    let file = InputPosition::File {
        path: "generated".into(),
        order: "event_time".into(),
        lines_read: 0,
        events_applied: 0,
        complete: true,
        rejected_bytes: 0,
    };
    SnapshotStore::open(mixed.path(), 1)
        .unwrap()
        .write(&core, meta(&core, file))
        .unwrap();
    refused(mixed.path(), &["both a `run` snapshot", "partitions/"]);
}

#[test]
fn a_merged_view_covers_a_complete_set_and_is_read_naming_the_cut_it_merges() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let sql = "SELECT SUM(orders) AS orders FROM daily_sales";
    write_partition(d, "purchases", 0, 2, &finished_part(0, 2));
    assert_eq!(
        view::publish(d, false).unwrap(),
        None,
        "partition 1 is missing"
    );
    write_partition(d, "purchases", 1, 2, &finished_part(1, 2));
    let first = view::publish(d, false).unwrap().expect("a complete set");
    let InputPosition::View {
        topic,
        partitions,
        parts,
    } = &first.input
    else {
        panic!("{:?}", first.input);
    };
    assert_eq!((topic.as_str(), *partitions), ("purchases", 2));
    let ids: Vec<(i32, u64)> = parts.iter().map(|v| (v.partition, v.snapshot)).collect();
    assert_eq!(ids, [(0, 1), (1, 1)]);
    assert_eq!(view::publish(d, false).unwrap(), None, "already merged");
    let orders = query_csv(d, sql);
    let read_view = |d: &Path, max_behind: Duration| match view::reading(d, max_behind).unwrap() {
        Reading::View(_, cut) => Some(cut),
        _ => None,
    };
    assert!(read_view(d, Duration::ZERO).is_some_and(|c| c.is_newest()));

    // A newer snapshot of partition 0 (other numbers: every order of the file), written
    // at least 50 ms later: readers keep the view and name its cut, partition 0 one
    // snapshot behind; its numbers are the cut's. Allowed less than the gap behind, or
    // `--max-behind 0s`, they merge the newest snapshots.
    std::thread::sleep(Duration::from_millis(50));
    write_partition(d, "purchases", 0, 2, &finished_part(0, 1));
    let cut = read_view(d, view::MAX_BEHIND).expect("the view, behind");
    assert_eq!(cut.view, first.id);
    let at = |p: &view::CutPart| (p.partition, p.snapshot, p.newest);
    assert_eq!(at(&cut.parts[0]), (0, 1, 2));
    assert_eq!((at(&cut.parts[1]), cut.parts[1].behind_ms), ((1, 1, 1), 0));
    let gap = cut.behind();
    assert!(
        gap >= Duration::from_millis(50) && gap < Duration::from_secs(60),
        "{gap:?}"
    );
    assert!(read_view(d, Duration::ZERO).is_none());
    assert!(read_view(d, Duration::from_millis(10)).is_none());
    let out = storepulse(&[
        "query",
        "--snapshot-dir",
        d.to_str().unwrap(),
        "--format",
        "csv",
        sql,
    ]);
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        orders,
        "the cut's numbers"
    );
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains(&format!(
            "read merged view {} of purchases: partition 0 at snapshot 1 of 2 (",
            first.id
        )) && said.contains(" s behind); the other partitions at their newest"),
        "{said}"
    );
    let fresh = |d: &Path, max: &str| {
        let args = [
            "query",
            "--snapshot-dir",
            d.to_str().unwrap(),
            "--format",
            "csv",
        ];
        common::ok(&[&args[..], &["--max-behind", max, sql]].concat())
    };
    let newer = fresh(d, "0s");
    assert_ne!(newer, orders);
    assert_eq!(
        fresh(d, "10ms"),
        newer,
        "further behind than allowed: merged"
    );
    let second = view::publish(d, false).unwrap().expect("a newer set");
    assert!(matches!(&second.input, InputPosition::View { parts, .. } if parts[0].snapshot == 2));
    assert!(read_view(d, Duration::ZERO).is_some_and(|c| c.is_newest()));
    assert_eq!(query_csv(d, sql), newer);

    // A folder emptied and filled again up to the same snapshot ids, with other numbers:
    // the view merges other snapshots and is not read.
    std::fs::remove_dir_all(d.join(storepulse::snapshot::PARTITIONS_DIR)).unwrap();
    write_partition(d, "purchases", 0, 2, &finished_part(0, 2));
    write_partition(d, "purchases", 0, 2, &finished_part(0, 2));
    write_partition(d, "purchases", 1, 2, &finished_part(1, 2));
    assert!(read_view(d, view::MAX_BEHIND).is_none());
    assert_eq!(query_csv(d, sql), orders);
}

/// Orders in the overview of the page at `addr` (the sum of its daily orders).
fn page_orders(addr: &str) -> u64 {
    let (status, _, body) = common::http::get(addr, "/api/overview");
    assert_eq!(status, 200, "{body}");
    let o: serde_json::Value = serde_json::from_str(&body).unwrap();
    o["daily"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            d["orders"]
                .as_str()
                .map_or_else(|| d["orders"].as_u64().unwrap(), |s| s.parse().unwrap())
        })
        .sum()
}

#[test]
fn the_page_reads_a_view_behind_the_partitions_and_names_its_cut() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let sql = "SELECT SUM(orders) AS orders FROM daily_sales";
    write_partition(d, "purchases", 0, 2, &finished_part(0, 2));
    write_partition(d, "purchases", 1, 2, &finished_part(1, 2));
    let view = view::publish(d, false).unwrap().expect("a complete set");
    std::thread::sleep(Duration::from_millis(50));
    write_partition(d, "purchases", 0, 2, &finished_part(0, 1));
    let number = |csv: String| -> u64 { csv.lines().nth(1).unwrap().parse().unwrap() };
    let cut_orders = number(query_csv(d, sql));
    let newest_orders = number(common::ok(&[
        "query",
        "--snapshot-dir",
        d.to_str().unwrap(),
        "--format",
        "csv",
        "--max-behind",
        "0s",
        sql,
    ]));
    assert_ne!(cut_orders, newest_orders);

    let serve = |extra: &[&str]| {
        let addr = format!("127.0.0.1:{}", common::spawn::free_port());
        let mut args = vec![
            "serve",
            "--snapshot-dir",
            d.to_str().unwrap(),
            "--http-addr",
            &addr,
        ];
        args.extend_from_slice(extra);
        let proc = common::spawn::Proc::serving("serve", &args, &addr, Duration::from_secs(60));
        (addr.clone(), proc)
    };
    let (addr, _page) = serve(&[]);
    common::wait::wait_until(Duration::from_secs(60), "a snapshot served", || {
        common::http::get(&addr, "/api/snapshot").0 == 200
    });
    let (_, _, body) = common::http::get(&addr, "/api/snapshot");
    let s: serde_json::Value = serde_json::from_str(&body).unwrap();
    let cut = &s["cut"];
    assert_eq!(cut["view"], view.id.to_string(), "{s}");
    assert_eq!(cut["newest"], false);
    assert!(cut["behind_ms"].as_u64().unwrap() >= 50, "{cut}");
    let p0 = &cut["parts"][0];
    assert_eq!(
        (&p0["partition"], &p0["snapshot"], &p0["newest"]),
        (&0.into(), &"1".into(), &"2".into())
    );
    assert_eq!(
        page_orders(&addr),
        cut_orders,
        "the page answers the cut's numbers"
    );

    // The page says so: how far behind, and on hovering, which snapshots.
    let b = common::browser::Browser::start(1280, 900);
    b.goto(&format!("http://{addr}/"));
    b.wait_for(
        "const c = document.querySelector('#cut'); return c && !c.hidden && c.textContent;",
        Duration::from_secs(30),
    );
    let shown = b.eval(
        "const c = document.querySelector('#cut'); return [c.textContent, c.title];",
        serde_json::json!([]),
    );
    assert!(shown[0].as_str().unwrap().ends_with(" s behind"), "{shown}");
    assert!(
        shown[1]
            .as_str()
            .unwrap()
            .contains("partition 0 at snapshot 1 of 2"),
        "{shown}"
    );

    // Told to read nothing behind, the page merges the newest snapshots.
    let (addr, _page) = serve(&["--max-behind", "0s"]);
    common::wait::wait_until(Duration::from_secs(60), "a snapshot served", || {
        common::http::get(&addr, "/api/snapshot").0 == 200
    });
    let (_, _, body) = common::http::get(&addr, "/api/snapshot");
    assert!(body.contains("\"cut\":null"), "{body}");
    assert_eq!(page_orders(&addr), newest_orders);
}
