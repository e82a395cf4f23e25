//! `run --resume`: a run stopped part way (SIGTERM, final snapshot) and resumed from its
//! snapshot ends with exactly the tables, counts and `rejected.csv` of an uninterrupted
//! run, in both replay orders; so does a run killed (SIGKILL) after a periodic snapshot,
//! whose dead-letter file had grown past what that snapshot covers.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{manifest, ok, query_csv, query_tables, run, run_json, storepulse, wait_for_manifest};

fn rejected(dir: &Path) -> Vec<u8> {
    std::fs::read(dir.join("rejected.csv")).unwrap()
}

#[test]
fn a_stopped_run_resumes_exactly_with_its_dead_letters() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("input.csv");
    let input_arg = input.to_str().unwrap();
    ok(&[
        "generate", "--rows", "4000", "--seed", "31", "--out", input_arg,
    ]);
    for order in ["event-time", "file"] {
        let whole = tmp.path().join(format!("whole-{order}"));
        run(&input, &whole, &["--order", order]);

        let cut = tmp.path().join(format!("cut-{order}"));
        // Stopped a quarter in, with 7.5 s of input ahead at 400 lines/s: a snapshot held
        // back for seconds on a loaded machine lets the feed catch up (the same stop in
        // tests/metrics.rs, with 4 s ahead, once read the whole file first in CI).
        let child = common::spawn_run(
            &input,
            &cut,
            &[
                "--order",
                order,
                "--rate",
                "400",
                "--snapshot-interval",
                "50ms",
            ],
        );
        wait_for_manifest(&cut, Duration::from_secs(60), |m| {
            m["counts"]["accepted"].as_u64().unwrap_or(0) >= 1000
        });
        child.terminate(Duration::from_secs(60));
        let stopped = manifest(&cut);
        assert_eq!(stopped["input"]["complete"], false, "{order}: {stopped}");
        let applied = stopped["input"]["events_applied"].as_u64().unwrap();
        assert!(
            (1000..3500).contains(&applied),
            "{order}: {applied} applied"
        );

        let summary = run_json(&input, &cut, &["--order", order, "--resume"]);
        assert_eq!(summary["state"], "complete", "{summary}");
        let (a, b) = (manifest(&whole), manifest(&cut));
        assert_eq!(b["input"]["complete"], true);
        assert_eq!(a["counts"], b["counts"], "{order}: counts");
        assert_eq!(query_tables(&whole), query_tables(&cut), "{order}: tables");
        assert_eq!(rejected(&whole), rejected(&cut), "{order}: rejected.csv");
    }
}

/// A generated file of two reader blocks (8 MiB each) whose lines are in time order
/// and then interleaved, the later half with the earlier: in file order every line of the
/// earlier half is a late event, so dead letters are written all along the stream.
fn late_half(dir: &Path) -> std::path::PathBuf {
    let generated = dir.join("generated.csv");
    ok(&[
        "generate",
        "--rows",
        "100000",
        "--seed",
        "37",
        "--out",
        generated.to_str().unwrap(),
    ]);
    let bytes = std::fs::read(&generated).unwrap();
    let mut lines: Vec<&[u8]> = bytes
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .collect();
    let header = lines.remove(0);
    // Event time leads each line, in a format that sorts as text.
    lines.sort_unstable();
    let (early, late) = lines.split_at(lines.len() / 2);
    let mut out = header.to_vec();
    out.push(b'\n');
    for (i, l) in late.iter().enumerate() {
        for line in std::iter::once(l).chain(early.get(i)) {
            out.extend_from_slice(line);
            out.push(b'\n');
        }
    }
    assert!(out.len() > 9 << 20, "{} bytes: one reader block", out.len());
    let input = dir.join("input.csv");
    std::fs::write(&input, out).unwrap();
    input
}

#[test]
fn a_killed_run_resumes_from_its_snapshot_and_cuts_its_dead_letters_back() {
    let tmp = tempfile::tempdir().unwrap();
    let input = late_half(tmp.path());
    let whole = tmp.path().join("whole");
    let all = run_json(&input, &whole, &["--order", "file"]);
    let total = common::count(&all, "records");
    assert!(common::count(&all, "late") > 10_000, "{all}");

    // Killed once a periodic snapshot exists and the dead-letter file holds more than it
    // covers; a kill that lands just as a newer snapshot covers them all is tried again.
    let mut attempt = 0;
    let (cut, snap) = loop {
        attempt += 1;
        assert!(attempt <= 5, "never killed past a snapshot's dead letters");
        let cut = tmp.path().join(format!("cut-{attempt}"));
        let child = common::spawn_run(
            &input,
            &cut,
            &[
                "--order",
                "file",
                "--rate",
                "20000",
                "--snapshot-interval",
                "500ms",
                "--metrics-addr",
                "127.0.0.1:0",
            ],
        );
        let rejected_len = || std::fs::metadata(cut.join("rejected.csv")).map_or(0, |m| m.len());
        wait_for_manifest(&cut, Duration::from_secs(60), |m| {
            m["counts"]["accepted"].as_u64().unwrap_or(0) > 0
                && rejected_len() > m["input"]["rejected_bytes"].as_u64().unwrap_or(u64::MAX)
        });
        child.kill9();
        let snap = manifest(&cut);
        let covered = snap["input"]["rejected_bytes"].as_u64().unwrap();
        if rejected_len() > covered {
            break (cut, snap);
        }
    };
    assert_eq!(snap["input"]["complete"], false, "{snap}");
    let covered = snap["counts"]["records"].as_u64().unwrap();
    assert!(
        covered > 0 && covered < total,
        "the snapshot covers {covered} of {total} lines: the kill came too late"
    );

    let resumed = run_json(&input, &cut, &["--order", "file", "--resume"]);
    assert_eq!(resumed["state"], "complete", "{resumed}");
    assert_eq!(
        resumed["records_read_this_run"],
        total - covered,
        "the resumed run reads only the lines after its snapshot: {resumed}"
    );
    assert_eq!(manifest(&whole)["counts"], manifest(&cut)["counts"]);
    assert_eq!(all["counts"], resumed["counts"]);
    assert_eq!(query_tables(&whole), query_tables(&cut), "tables");
    assert!(
        rejected(&whole) == rejected(&cut),
        "rejected.csv differs from the uninterrupted run's ({} and {} bytes)",
        rejected(&whole).len(),
        rejected(&cut).len()
    );
}

#[test]
fn resume_refuses_another_input_order_or_a_finished_run() {
    let tmp = tempfile::tempdir().unwrap();
    let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/input.csv");
    let dir = tmp.path().join("snaps");
    let dir_arg = dir.to_str().unwrap();
    let resume = |extra: &[&str]| {
        let mut args = vec![
            "run",
            "--no-progress",
            "--resume",
            "--snapshot-dir",
            dir_arg,
        ];
        args.extend_from_slice(extra);
        let out = storepulse(&args);
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = resume(&["--input", golden.to_str().unwrap()]);
    assert!(
        err.contains("no snapshot") && err.contains("to resume from"),
        "{err}"
    );
    run(&golden, &dir, &[]);
    let err = resume(&["--input", golden.to_str().unwrap()]);
    assert!(err.contains("nothing to resume"), "{err}");
    let err = resume(&["--input", golden.to_str().unwrap(), "--order", "file"]);
    assert!(err.contains("event_time order, not"), "{err}");
    let err = resume(&[
        "--input",
        golden.to_str().unwrap(),
        "--allowed-lateness",
        "1h",
    ]);
    assert!(err.contains("other window flags"), "{err}");
}

/// The manifests of every snapshot kept in `dir`, oldest first.
fn all_manifests(dir: &Path) -> Vec<serde_json::Value> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| Some(e.ok()?.file_name().to_string_lossy().into_owned()))
        .filter(|n| n.starts_with("snap-"))
        .collect();
    names.sort();
    names
        .iter()
        .map(|n| {
            let text = std::fs::read_to_string(dir.join(n).join("manifest.json")).unwrap();
            serde_json::from_str(&text).unwrap()
        })
        .collect()
}

/// A run's periodic snapshots after its first are incremental (they hold what changed)
/// and its last is whole; killed while its newest snapshot is incremental, `query` reads
/// that snapshot's chain restored and scored, and `--resume` ends exactly as an
/// uninterrupted run. With `--incremental-snapshots 0` every snapshot is whole.
#[test]
fn a_run_killed_on_an_incremental_snapshot_is_read_and_resumed_through_its_chain() {
    let tmp = tempfile::tempdir().unwrap();
    let input = common::generate(tmp.path(), 20_000, 41);
    let whole = tmp.path().join("whole");
    let all = run_json(&input, &whole, &[]);
    let paced = |dir: &Path, rate: &str, extra: &[&str]| {
        let mut args = vec![
            "--rate",
            rate,
            "--snapshot-interval",
            "100ms",
            "--keep-snapshots",
            "1000",
            "--metrics-addr",
            "127.0.0.1:0",
        ];
        args.extend_from_slice(extra);
        common::spawn_run(&input, dir, &args)
    };

    // Uninterrupted: incremental snapshots between whole ones, the last one whole. Paced
    // over 4 s (40 intervals): a loaded machine can hold a snapshot back for seconds.
    for (name, incremental) in [("chains", "15"), ("wholes", "0")] {
        let dir = tmp.path().join(name);
        paced(&dir, "5000", &["--incremental-snapshots", incremental])
            .wait_ok(Duration::from_secs(120));
        let manifests = all_manifests(&dir);
        let chained = manifests.iter().filter(|m| !m["chain"].is_null()).count();
        assert!(
            manifests.len() >= 4,
            "{name}: {} snapshots",
            manifests.len()
        );
        match incremental {
            "0" => assert_eq!(chained, 0, "{name}"),
            _ => assert!(
                chained * 2 >= manifests.len(),
                "{name}: {chained} incremental of {}",
                manifests.len()
            ),
        }
        let last = manifest(&dir);
        assert!(
            last["chain"].is_null(),
            "{name}: the last snapshot is whole: {last}"
        );
        assert_eq!(last["format"], 4, "{name}");
        assert_eq!(last["counts"], manifest(&whole)["counts"], "{name}");
        assert_eq!(query_tables(&dir), query_tables(&whole), "{name}: tables");
    }

    // Killed once the newest snapshot is the second of a chain.
    let cut = tmp.path().join("cut");
    let child = paced(&cut, "4000", &[]);
    wait_for_manifest(&cut, Duration::from_secs(60), |m| {
        m["chain"]["length"].as_u64().unwrap_or(0) >= 2
    });
    child.kill9();
    let snap = manifest(&cut);
    assert_eq!(snap["input"]["complete"], false, "{snap}");
    assert_eq!(snap["format"], 5, "{snap}");
    // Read restored: every customer the snapshot covers is scored. The incremental
    // snapshot's own `rfm` holds only the customers who bought since the one before,
    // unscored.
    let scored = query_csv(
        &cut,
        "SELECT COUNT(*) AS n FROM rfm WHERE r_score BETWEEN 1 AND 5 AND segment <> ''",
    );
    let customers = query_csv(&cut, "SELECT COUNT(*) AS n FROM rfm");
    assert_eq!(scored, customers);
    let n: u64 = customers.lines().nth(1).unwrap().parse().unwrap();
    let own = snap["tables"]["rfm"]["rows"].as_u64().unwrap();
    assert!(
        n > own,
        "{n} customers restored, {own} in the snapshot's own table"
    );
    let events: u64 = query_csv(&cut, "SELECT SUM(orders) AS n FROM daily_sales")
        .lines()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let all_orders: u64 = query_csv(&whole, "SELECT SUM(orders) AS n FROM daily_sales")
        .lines()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        events > 0 && events < all_orders,
        "{events} of {all_orders} orders"
    );

    let resumed = run_json(&input, &cut, &["--resume"]);
    assert_eq!(resumed["state"], "complete", "{resumed}");
    assert_eq!(all["counts"], resumed["counts"]);
    assert!(manifest(&cut)["chain"].is_null());
    // Its rate is of the events it applied itself, not those restored.
    let own = resumed["events_applied"].as_u64().unwrap()
        - snap["input"]["events_applied"].as_u64().unwrap();
    let rate = resumed["events_per_second"].as_f64().unwrap();
    let elapsed = resumed["elapsed_seconds"].as_f64().unwrap();
    assert!(
        (rate * elapsed - own as f64).abs() <= own as f64 * 0.01 + 1.0,
        "{rate}/s over {elapsed} s, {own} events applied by the resumed run"
    );
    assert_eq!(query_tables(&whole), query_tables(&cut), "tables");
    assert_eq!(rejected(&whole), rejected(&cut), "rejected.csv");
}
