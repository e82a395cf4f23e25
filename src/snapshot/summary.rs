//! `summary.json` beside the snapshots: the machine-readable summary of the last `run` or
//! `process` that ended in the folder, replaced atomically (written to a temporary name,
//! fsynced, renamed) so a reader sees the previous summary or the new one, never a part.
//! A run killed before its end leaves the previous run's summary in place.

use std::fs;
use std::path::{Path, PathBuf};

use super::{io_err, replace_durable, SnapshotError};

pub const SUMMARY_FILE: &str = "summary.json";

/// Replaces `<dir>/summary.json` with `json`; returns its path.
pub fn write_summary(dir: &Path, json: &[u8]) -> Result<PathBuf, SnapshotError> {
    fs::create_dir_all(dir).map_err(io_err("creating", dir))?;
    replace_durable(dir, SUMMARY_FILE, json)
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_summary_replaces_the_previous_one_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        super::write_summary(dir.path(), b"{\"a\":1}\n").unwrap();
        let path = super::write_summary(dir.path(), b"{\"a\":2}\n").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"{\"a\":2}\n");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, ["summary.json"]);
    }
}
