//! What the Kafka tests share beyond the broker: the embedded run to compare with, the
//! flags of `replay` and `process` (both print `--summary json`), and their summaries.

use std::path::{Path, PathBuf};
use std::time::Duration;

pub use super::generate;
use super::kafka::Broker;
use super::spawn::Proc;
use super::wait::wait_until_ok;
use super::{ok, query_tables, run, summary};
use storepulse::snapshot::SnapshotSet;

pub const LIMIT: Duration = Duration::from_secs(180);

/// `query` over `got` gives `run`'s tables in `want`; when `got` is a topic's folder,
/// through the merged view the last processor published, which merges the partitions'
/// latest snapshots.
pub fn assert_same_tables(want: &Path, got: &Path) {
    use storepulse::snapshot::{self, view};
    if got.join(snapshot::PARTITIONS_DIR).is_dir() {
        let SnapshotSet::Topic(set) = snapshot::latest_parts(got).unwrap() else {
            panic!("{} holds no topic", got.display());
        };
        // Not behind at all: the merged view of every partition's newest snapshot.
        let (view, cut) = view::current(got, &set, Duration::ZERO)
            .expect("a merged view of the latest snapshots");
        assert!(cut.is_newest(), "{cut:?}");
        assert!(matches!(view::reading(got, view::MAX_BEHIND).unwrap(),
            view::Reading::View(v, _) if v.path == view.path));
    }
    let (a, b) = (query_tables(want), query_tables(got));
    for (i, name) in [
        "daily_sales",
        "daily_category_sales",
        "daily_brand_sales",
        "rfm",
    ]
    .iter()
    .enumerate()
    {
        assert!(a[i].lines().count() > 1, "{name} is empty");
        assert_eq!(a[i], b[i], "{name} differs from run");
    }
}

/// `replay` flags for `input` into `broker`, uncompressed (see the harness), with a JSON
/// summary.
pub fn replay_args<'a>(broker: &'a Broker, input: &'a Path, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "replay",
        "--input",
        input.to_str().unwrap(),
        "--brokers",
        &broker.addr,
        "--compression",
        "none",
        "--no-progress",
        "--summary",
        "json",
    ];
    args.extend_from_slice(extra);
    args
}

/// A replay to its end: its JSON summary.
pub fn replay(broker: &Broker, input: &Path, extra: &[&str]) -> serde_json::Value {
    summary(&ok(&replay_args(broker, input, extra)))
}

/// `process` flags with a JSON summary; a snapshot every 200 ms unless `extra` names
/// another interval.
pub fn process_args<'a>(broker: &'a Broker, dir: &'a Path, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "process",
        "--brokers",
        &broker.addr,
        "--snapshot-dir",
        dir.to_str().unwrap(),
        "--kafka-option",
        "compression.type=none",
        "--summary",
        "json",
    ];
    args.extend_from_slice(extra);
    if !extra.contains(&"--snapshot-interval") {
        args.extend(["--snapshot-interval", "200ms"]);
    }
    args
}

/// One test's files and broker: the input, the embedded `run`'s snapshots (`want`), the
/// folder for `process` (`got`), and a broker with `purchases` created.
pub struct Case {
    pub _tmp: tempfile::TempDir,
    pub input: PathBuf,
    pub want: PathBuf,
    pub got: PathBuf,
    pub broker: Broker,
}

impl Case {
    /// A generated file of `rows` lines.
    pub fn generated(rows: u64, seed: u64, partitions: i32) -> Case {
        let tmp = tempfile::tempdir().unwrap();
        let input = generate(tmp.path(), rows, seed);
        Case::with(tmp, input, partitions)
    }

    /// `tests/fixtures/split_orders.csv`: orders split across days and customers.
    pub fn split_orders(partitions: i32) -> Case {
        let input = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/split_orders.csv");
        Case::with(tempfile::tempdir().unwrap(), input, partitions)
    }

    pub fn with(tmp: tempfile::TempDir, input: PathBuf, partitions: i32) -> Case {
        let want = tmp.path().join("run");
        run(&input, &want, &[]);
        let broker = Broker::start();
        broker.create_topic("purchases", partitions);
        Case {
            input,
            want,
            got: tmp.path().join("process"),
            broker,
            _tmp: tmp,
        }
    }
}

/// Lines a replay or processor counted as accepted, from its JSON summary.
pub fn accepted_in(summary: &serde_json::Value) -> u64 {
    super::count(summary, "accepted")
}

/// A replay paced at `rate` events/s, in the background, so that kills land while events
/// flow. tansu 0.6 serves nothing from an offset inside a record batch: one message per
/// batch keeps every resume offset on a batch boundary.
pub fn paced_replay(broker: &Broker, input: &Path, rate: &str) -> Proc {
    let extra = ["--rate", rate, "--kafka-option", "batch.num.messages=1"];
    Proc::spawn("replay", &replay_args(broker, input, &extra))
}

pub fn accepted_total(run_dir: &Path) -> u64 {
    super::manifest(run_dir)["counts"]["accepted"]
        .as_u64()
        .unwrap()
}

/// Waits until the latest assignments of `a` and `b` are both non-empty.
pub fn wait_until_shared(a: &Proc, b: &Proc) {
    let last = |p: &Proc| {
        p.stderr()
            .lines()
            .rfind(|l| l.contains("assigned partitions"))
            .map(String::from)
            .unwrap_or_default()
    };
    wait_until_ok(LIMIT, "the partitions to be shared", || {
        let (la, lb) = (last(a), last(b));
        if la.is_empty() || lb.is_empty() || la.contains("[]") || lb.contains("[]") {
            Err(format!("{}\n{}", a.stderr(), b.stderr()))
        } else {
            Ok(())
        }
    });
}
