//! `run --resume`: a run stopped part way (SIGTERM, final snapshot) and resumed from its
//! snapshot ends with exactly the tables, counts and `rejected.csv` of an uninterrupted
//! run, in both replay orders.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{manifest, ok, query_tables, run, storepulse, wait_for_manifest};

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
        let child = Command::new(env!("CARGO_BIN_EXE_storepulse"))
            .args(["run", "--no-progress", "--order", order, "--rate", "1000"])
            .args(["--snapshot-interval", "50ms", "--input", input_arg])
            .arg("--snapshot-dir")
            .arg(&cut)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        wait_for_manifest(&cut, Duration::from_secs(60), |m| {
            m["counts"]["accepted"].as_u64().unwrap_or(0) >= 1000
        });
        // SAFETY: signalling the child we started, by its id.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stopped = manifest(&cut);
        assert_eq!(stopped["input"]["complete"], false, "{order}: {stopped}");
        let applied = stopped["input"]["events_applied"].as_u64().unwrap();
        assert!(
            (1000..3000).contains(&applied),
            "{order}: {applied} applied"
        );

        let summary = run(&input, &cut, &["--order", order, "--resume"]);
        assert!(summary.contains("complete"), "{summary}");
        let (a, b) = (manifest(&whole), manifest(&cut));
        assert_eq!(b["input"]["complete"], true);
        assert_eq!(a["counts"], b["counts"], "{order}: counts");
        assert_eq!(query_tables(&whole), query_tables(&cut), "{order}: tables");
        assert_eq!(rejected(&whole), rejected(&cut), "{order}: rejected.csv");
    }
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
