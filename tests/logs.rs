//! Logs on stderr: what `RUST_LOG` lets through, and `--log-format json`.

mod common;

use std::path::Path;

use common::spawn::storepulse_command;
use common::{manifest, said};

/// `run` over the golden input with `env` set (and nothing else); stdout and stderr.
fn run(dir: &Path, env: &[(&str, &str)], extra: &[&str]) -> (String, String) {
    let input = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/input.csv");
    let out = storepulse_command(&["run", "--input", input.to_str().unwrap(), "--snapshot-dir"])
        .arg(dir)
        .args(["--no-progress", "--metrics-addr", "127.0.0.1:0"])
        .args(extra)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    );
    assert!(out.status.success(), "{stderr}\n{stdout}");
    // The summary is output, not a log: there whatever the filter.
    assert!(said(&stdout, &["accepted", "10"]), "{stdout}");
    (stdout, stderr)
}

#[test]
fn progress_is_logged_at_info_by_default_and_rust_log_warn_hides_it() {
    let dir = tempfile::tempdir().unwrap();
    let (_, default) = run(dir.path(), &[], &[]);
    assert!(
        said(&default, &["INFO", "metrics on http://127.0.0.1:"]),
        "{default}"
    );
    assert!(!default.contains("DEBUG"), "{default}");
    assert!(
        !default.contains('\x1b'),
        "no colours off a terminal: {default:?}"
    );

    let dir = tempfile::tempdir().unwrap();
    let (_, quiet) = run(dir.path(), &[("RUST_LOG", "warn")], &[]);
    assert!(!quiet.contains("metrics on http://"), "{quiet}");
    assert!(!quiet.contains("INFO"), "{quiet}");
}

#[test]
fn rust_log_debug_for_storepulse_says_each_snapshot_published_with_its_id() {
    let dir = tempfile::tempdir().unwrap();
    let (_, log) = run(dir.path(), &[("RUST_LOG", "storepulse=debug")], &[]);
    let last = manifest(dir.path())["id"].as_u64().unwrap();
    let path = format!("snap-{last:06}");
    assert!(
        said(
            &log,
            &[
                "DEBUG",
                "snapshot published",
                &format!("snapshot={last} "),
                &path
            ]
        ),
        "{log}"
    );
    // Info lines stay: a target's level is a floor, not a choice of one level.
    assert!(said(&log, &["INFO", "metrics on http://"]), "{log}");

    // Another module at debug: the snapshot module stays at the default (info).
    let dir = tempfile::tempdir().unwrap();
    let (_, log) = run(dir.path(), &[("RUST_LOG", "storepulse::kafka=debug")], &[]);
    assert!(!log.contains("snapshot published"), "{log}");
}

#[test]
fn json_log_format_writes_one_object_per_line_with_the_fields() {
    let dir = tempfile::tempdir().unwrap();
    let (_, log) = run(
        dir.path(),
        &[("RUST_LOG", "storepulse=debug")],
        &["--log-format", "json"],
    );
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let metrics = lines
        .iter()
        .find(|l| {
            l["message"]
                .as_str()
                .unwrap_or("")
                .contains("metrics on http://")
        })
        .unwrap_or_else(|| panic!("{log}"));
    assert_eq!(metrics["level"], "INFO", "{metrics}");
    assert_eq!(metrics["command"], "run", "{metrics}");
    let last = manifest(dir.path())["id"].as_u64().unwrap();
    let published = lines
        .iter()
        .rfind(|l| l["message"] == "snapshot published")
        .unwrap_or_else(|| panic!("{log}"));
    assert_eq!(published["level"], "DEBUG", "{published}");
    assert_eq!(published["snapshot"], last, "{published}");
    assert_eq!(published["target"], "storepulse::snapshot", "{published}");
    assert!(published["millis"].is_u64(), "{published}");

    // The environment variable does the same.
    let dir = tempfile::tempdir().unwrap();
    let (_, log) = run(dir.path(), &[("STOREPULSE_LOG_FORMAT", "json")], &[]);
    assert!(!log.is_empty());
    for l in log.lines() {
        let v: serde_json::Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
        assert!(v["level"].is_string() && v["message"].is_string(), "{l}");
    }
}
