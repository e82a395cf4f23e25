//! A seeded nemesis against processors on "separate machines": each with a working folder
//! of its own and its own connection to one bucket (an S3-protocol server linked into this
//! test, reached through a TCP proxy per processor that the nemesis cuts), one broker
//! (tansu), while a file is replayed. A schedule drawn from the seed kills and restarts
//! processors, pauses them, takes their partitions over while they are paused (the old
//! owner is refused at its next publish and stops), cuts their connection to the store,
//! makes the store fail, lose answers or cut them off mid-body, and pauses the broker. After it: the tables read
//! from the bucket equal `run` on the same file, no partition stalled (every partition's
//! latest snapshot covers its end of input), and every dead letter is in the dead-letter
//! topic.
//!
//! Processors take their partitions by `--assign` (two halves): tansu 0.6's group
//! coordinator never reassigns after a member's session expires, so a group-mode schedule
//! would test the broker. Two seeds run in the suite; more with
//! `NEMESIS_SEEDS=1..40 cargo test --release --test nemesis -- --ignored`.

mod common;
#[path = "common/proxy.rs"]
mod proxy;
#[path = "common/s3.rs"]
mod s3;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::kafka::serial;
use common::kafka_cases::{accepted_in, replay_args, Case, LIMIT};
use common::spawn::Proc;
use rand::{Rng, SeedableRng};

/// One processor's place: its partitions, its machine (working folder, store proxy), and
/// the process running there now.
struct Member {
    name: String,
    assign: &'static str,
    home: tempfile::TempDir,
    store: proxy::Proxy,
    now: Option<Proc>,
    /// Processes that were taken over and must stop, fenced.
    replaced: Vec<Proc>,
    starts: u32,
}

impl Member {
    fn start(&mut self, c: &Case, url: &str) {
        self.starts += 1;
        let name = format!("{} (start {})", self.name, self.starts);
        let args = [
            "process",
            "--brokers",
            &c.broker.addr,
            "--snapshot-dir",
            url,
            "--kafka-option",
            "compression.type=none",
            "--snapshot-interval",
            "100ms",
            "--view-interval",
            "1s",
            "--assign",
            self.assign,
            "--stop-at-end",
            "--summary",
            "json",
        ];
        let mut cmd = s3::command_for(&self.store.addr, &args);
        // A new working folder per start: a machine that lost its disk, as it were.
        let tmp = self.home.path().join(format!("start-{}", self.starts));
        std::fs::create_dir_all(&tmp).unwrap();
        cmd.env("TMPDIR", &tmp);
        self.now = Some(Proc::start(&name, &mut cmd));
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Fault {
    Kill,
    Pause,
    Takeover,
    CutStore,
    StoreErrors,
    LostAnswer,
    CutAnswers,
    PauseBroker,
}

const FAULTS: [Fault; 8] = [
    Fault::Kill,
    Fault::Pause,
    Fault::Takeover,
    Fault::CutStore,
    Fault::StoreErrors,
    Fault::LostAnswer,
    Fault::CutAnswers,
    Fault::PauseBroker,
];

/// The manifests the partitions' pointers name in the bucket.
fn partition_manifests(server: &s3::Server, prefix: &str) -> BTreeMap<String, serde_json::Value> {
    let parts = server.file(&format!("{prefix}/partitions"));
    let mut out = BTreeMap::new();
    for dir in std::fs::read_dir(parts).into_iter().flatten().flatten() {
        let Ok(pointer) = std::fs::read_to_string(dir.path().join("LATEST")) else {
            continue;
        };
        let name = pointer.lines().next().unwrap_or_default();
        if let Ok(text) = std::fs::read_to_string(dir.path().join(name).join("manifest.json")) {
            let key = dir.file_name().to_string_lossy().into_owned();
            out.insert(key, serde_json::from_str(&text).unwrap());
        }
    }
    out
}

/// Runs one seed's schedule; returns the faults injected by kind.
fn nemesis(seed: u64) -> BTreeMap<Fault, u32> {
    let server = s3::Server::start("shop");
    let c = Case::generated(12_000, 100 + seed, 4);
    let url = server.url("nemesis");
    let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
    let target = server.addr.to_string();
    let mut members: Vec<Member> = [("a", "0,1"), ("b", "2,3")]
        .into_iter()
        .map(|(name, assign)| Member {
            name: format!("processor {name}"),
            assign,
            home: tempfile::tempdir().unwrap(),
            store: proxy::Proxy::start(&target),
            now: None,
            replaced: Vec::new(),
            starts: 0,
        })
        .collect();
    for m in &mut members {
        m.start(&c, &url);
    }
    let replay = |c: &Case| {
        Proc::spawn(
            "replay",
            &replay_args(
                &c.broker,
                &c.input,
                &["--rate", "1500", "--kafka-option", "batch.num.messages=1"],
            ),
        )
    };
    let mut replayer = replay(&c);
    let mut injected: BTreeMap<Fault, u32> = BTreeMap::new();
    let pause = |rng: &mut rand::rngs::SmallRng, lo: u64, hi: u64| {
        std::thread::sleep(Duration::from_millis(rng.random_range(lo..hi)));
    };
    for _ in 0..8 {
        pause(&mut rng, 200, 900);
        let fault = FAULTS[rng.random_range(0..FAULTS.len())];
        let m = &mut members[rng.random_range(0..2)];
        *injected.entry(fault).or_default() += 1;
        match fault {
            Fault::Kill => {
                m.now.take().unwrap().kill9();
                m.start(&c, &url);
            }
            Fault::Pause => {
                let p = m.now.as_ref().unwrap();
                p.signal(libc::SIGSTOP);
                pause(&mut rng, 300, 2_000);
                p.signal(libc::SIGCONT);
            }
            Fault::Takeover => {
                let old = m.now.take().unwrap();
                old.signal(libc::SIGSTOP);
                m.start(&c, &url);
                m.now.as_ref().unwrap().wait_stderr("assigned", LIMIT);
                old.signal(libc::SIGCONT);
                m.replaced.push(old);
            }
            Fault::CutStore => {
                m.store.cut();
                pause(&mut rng, 500, 3_000);
                m.store.restore();
            }
            Fault::StoreErrors => {
                let left = Arc::new(AtomicUsize::new(rng.random_range(3..10)));
                server.faults.hook(move |_| {
                    match left
                        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                    {
                        Ok(_) => s3::Action::Fail(503),
                        Err(_) => s3::Action::Pass,
                    }
                });
            }
            Fault::LostAnswer => {
                let left = Arc::new(AtomicUsize::new(rng.random_range(1..4)));
                server.faults.hook(move |r| {
                    if !r.is_put("/LATEST") {
                        return s3::Action::Pass;
                    }
                    match left
                        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                    {
                        Ok(_) => s3::Action::FailAfter(500),
                        Err(_) => s3::Action::Pass,
                    }
                });
            }
            Fault::CutAnswers => {
                let left = Arc::new(AtomicUsize::new(rng.random_range(1..6)));
                server.faults.hook(move |r| {
                    if r.method != http::Method::GET {
                        return s3::Action::Pass;
                    }
                    match left
                        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                    {
                        Ok(_) => s3::Action::CutBody,
                        Err(_) => s3::Action::Pass,
                    }
                });
            }
            Fault::PauseBroker => {
                c.broker.pause();
                pause(&mut rng, 300, 2_000);
                c.broker.resume();
            }
        }
    }
    server.faults.clear_hook();
    // The replay may fail loudly under faults; it is idempotent, so it is run again whole.
    let mut replays = 1;
    let summary = loop {
        let (status, out, err) = replayer.wait_exit(LIMIT);
        if status.success() {
            break common::summary(&out);
        }
        assert!(replays < 3, "the replay failed {replays} times:\n{err}");
        eprintln!("seed {seed}: the replay failed; replaying again:\n{err}");
        replays += 1;
        replayer = replay(&c);
    };
    for mut m in members {
        // Every process of a member ends well or stops fenced: a statically assigned
        // processor claimed over (a taken-over one that claimed again when it came back,
        // say) stops, as documented. A member none of whose processes ended well is
        // restarted once, as a supervisor would, and that one must end well.
        let mut ended_well = false;
        for p in m.replaced.drain(..).chain(m.now.take()) {
            let (status, out, err) = p.wait_exit(LIMIT);
            if status.success() {
                assert_eq!(common::summary(&out)["fenced"], serde_json::json!([]));
                ended_well = true;
            } else {
                assert!(
                    err.contains("another processor claimed this partition"),
                    "seed {seed}: a process of {} failed otherwise:\n{err}",
                    m.name
                );
            }
        }
        if !ended_well {
            eprintln!("seed {seed}: {} stopped fenced; restarted", m.name);
            m.start(&c, &url);
            m.now.take().unwrap().wait_ok(LIMIT);
        }
    }
    // No partition stalled: each one's latest snapshot covers its end of input.
    let manifests = partition_manifests(&server, "nemesis");
    assert_eq!(manifests.len(), 4, "seed {seed}: {manifests:?}");
    for (p, m) in &manifests {
        assert_eq!(
            m["input"]["end_of_input"], true,
            "seed {seed}: {p} stalled: {m}"
        );
    }
    // What the tables were read from, for a failure's message.
    let mut read_from: Vec<String> = manifests
        .iter()
        .map(|(p, m)| {
            format!(
                "{p}: snapshot {} watermark {} end_of_input {}",
                m["id"], m["watermark"], m["input"]["end_of_input"]
            )
        })
        .collect();
    let view = std::fs::read_to_string(server.file("nemesis/merged/LATEST")).unwrap_or_default();
    read_from.push(format!("merged view pointer: {view:?}"));
    let accepted: u64 = manifests
        .values()
        .map(|m| m["counts"]["accepted"].as_u64().unwrap())
        .sum();
    assert_eq!(accepted, accepted_in(&summary), "seed {seed}");
    for sql in [
        "SELECT * FROM daily_sales ORDER BY day",
        "SELECT * FROM daily_category_sales ORDER BY day, category_code NULLS FIRST",
        "SELECT * FROM daily_brand_sales ORDER BY day, brand NULLS FIRST",
        "SELECT * FROM rfm ORDER BY user_id",
    ] {
        let out = server
            .command(&["query", "--format", "csv", "--snapshot-dir", &url, sql])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            String::from_utf8(out.stdout).unwrap(),
            common::query_csv(&c.want, sql),
            "seed {seed}: {sql}, read from {read_from:#?}, query said: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Every rejected line is in the dead-letter topic, once per replay.
    let rejected = rejected_lines(&c.want);
    let mut letters: BTreeMap<u64, u32> = BTreeMap::new();
    for v in c.broker.read_all("purchases.rejected") {
        let d: serde_json::Value = serde_json::from_slice(&v).unwrap();
        *letters.entry(d["line"].as_u64().unwrap()).or_default() += 1;
    }
    assert_eq!(
        letters.keys().copied().collect::<BTreeSet<u64>>(),
        rejected,
        "seed {seed}"
    );
    assert!(
        letters.values().all(|&n| n as usize <= replays),
        "seed {seed}: a dead letter sent more than once per replay"
    );
    injected
}

/// The line numbers of the rejected lines in `run`'s `rejected.csv`.
fn rejected_lines(dir: &Path) -> BTreeSet<u64> {
    let text = std::fs::read(dir.join("rejected.csv")).unwrap();
    text.split(|&b| b == b'\n')
        .skip(1)
        .filter_map(|l| {
            std::str::from_utf8(l.split(|&b| b == b',').next()?)
                .ok()?
                .parse()
                .ok()
        })
        .collect()
}

fn seeds(default: &str) -> Vec<u64> {
    let spec = std::env::var("NEMESIS_SEEDS").unwrap_or_else(|_| default.to_string());
    match spec.split_once("..") {
        Some((a, b)) => (a.parse().unwrap()..b.parse().unwrap()).collect(),
        None => spec.split(',').map(|s| s.trim().parse().unwrap()).collect(),
    }
}

fn run_seeds(seeds: Vec<u64>) {
    let _serial = serial();
    let mut total: BTreeMap<Fault, u32> = BTreeMap::new();
    for &seed in &seeds {
        for (k, n) in nemesis(seed) {
            *total.entry(k).or_default() += n;
        }
    }
    eprintln!(
        "nemesis: {} seeds, faults injected {total:?}, all exact",
        seeds.len()
    );
}

#[test]
fn a_seeded_nemesis_leaves_the_tables_equal_to_run() {
    run_seeds(seeds("1,2"));
}

#[test]
#[ignore = "many seeds: NEMESIS_SEEDS=1..40 cargo test --test nemesis -- --ignored"]
fn nemesis_many_seeds() {
    run_seeds(seeds("1..20"));
}
