//! Python readers of the Delta tables (`deltalake`, Polars, pyarrow and pandas from PyPI,
//! pinned in `tests/py/requirements.txt`) in a virtual environment under `target/py/`: `.ci/run` creates it, and a test
//! creates it when it is missing (Debian's `python3-venv` installed first if need be).
//! Included with `#[path]` by the tests that need it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// What the environment holds, pinned: `tests/py/requirements.txt` (`.ci/run` installs
/// the same file).
fn requirements() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/py/requirements.txt")
}

fn ready(python: &Path) -> bool {
    python.exists()
        && Command::new(python)
            .args(["-c", "import deltalake, polars, pyarrow, pandas"])
            .status()
            .is_ok_and(|s| s.success())
}

/// The environment's interpreter, created on first use.
pub fn python() -> PathBuf {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON
        .get_or_init(|| {
            let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/py");
            let python = venv.join("bin/python");
            if ready(&python) {
                return python;
            }
            let has_venv = Command::new("python3")
                .args(["-c", "import venv, ensurepip"])
                .status()
                .is_ok_and(|s| s.success());
            if !has_venv {
                crate::common::apt_install("python3 python3-venv");
            }
            let made = Command::new("python3")
                .arg("-m")
                .arg("venv")
                .arg(&venv)
                .status()
                .expect("python3");
            assert!(made.success(), "python3 -m venv {}", venv.display());
            let pip = Command::new(venv.join("bin/pip"))
                .args(["install", "-q", "-r"])
                .arg(requirements())
                .status()
                .expect("pip");
            assert!(pip.success(), "pip install -r {}", requirements().display());
            assert!(ready(&python), "{} lacks the readers", python.display());
            python
        })
        .clone()
}

/// `tests/py/<name>` run with `args` and `env`: its standard output's lines. A run its
/// native code aborted (a signal, not an error it reported) is tried once more; a failure
/// fails the test with its standard error.
pub fn script(name: &str, args: &[String], env: &[(&str, String)]) -> Vec<String> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/py")
        .join(name);
    let run = || {
        Command::new(python())
            .arg(&script)
            .args(args)
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .output()
            .expect("python")
    };
    let mut out = run();
    if out.status.code().is_none() {
        out = run();
    }
    assert!(
        out.status.success(),
        "{name} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

/// `tests/py/read_delta.py` with `reader` (`deltalake` or `polars`) over the table at `url`:
/// its rows as lines of text, sorted.
pub fn read_delta(
    reader: &str,
    url: &str,
    columns: &[&str],
    extra: &[&str],
    env: &[(&str, String)],
) -> Vec<String> {
    let args: Vec<String> = [reader, url]
        .iter()
        .chain(columns)
        .chain(extra)
        .map(|a| a.to_string())
        .collect();
    let mut lines = script("read_delta.py", &args, env);
    lines.sort();
    lines
}
