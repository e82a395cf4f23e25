//! The dead-letter file `<snapshot-dir>/rejected.csv`: every rejected line with its line
//! number and reason, the original bytes kept as they were (as one quoted CSV field).

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use storepulse_replay::Rejected;

pub const REJECTED_FILE: &str = "rejected.csv";

pub struct RejectedSink {
    path: PathBuf,
    out: BufWriter<File>,
}

impl RejectedSink {
    /// Starts a new dead-letter file in `dir` (a fresh run replaces the previous one).
    pub fn create(dir: &Path) -> io::Result<Self> {
        let path = dir.join(REJECTED_FILE);
        let file = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(&path)?;
        let mut out = BufWriter::with_capacity(1 << 16, file);
        out.write_all(b"line,reason,original_line\n")?;
        Ok(Self { path, out })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn write(&mut self, r: &Rejected) -> io::Result<()> {
        write!(self.out, "{},{},\"", r.line, r.reason)?;
        for part in r.text.split_inclusive(|&b| b == b'"') {
            self.out.write_all(part)?;
            if part.ends_with(b"\"") {
                self.out.write_all(b"\"")?;
            }
        }
        self.out.write_all(b"\"\n")
    }

    /// Makes everything written so far durable; called before a snapshot is published.
    pub fn sync(&mut self) -> io::Result<()> {
        self.out.flush()?;
        self.out.get_ref().sync_data()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use storepulse_replay::RejectReason;

    #[test]
    fn lines_are_kept_verbatim_in_one_quoted_field() {
        let dir = tempfile::tempdir().unwrap();
        let mut sink = RejectedSink::create(dir.path()).unwrap();
        sink.write(&Rejected {
            line: 7,
            reason: RejectReason::MalformedRow,
            text: b"a,\"b,c\xff".to_vec(),
        })
        .unwrap();
        sink.write(&Rejected {
            line: 9,
            reason: RejectReason::LateEvent,
            text: b"x,y".to_vec(),
        })
        .unwrap();
        sink.sync().unwrap();
        let got = std::fs::read(sink.path()).unwrap();
        assert_eq!(
            got,
            b"line,reason,original_line\n7,malformed_row,\"a,\"\"b,c\xff\"\n9,late_event,\"x,y\"\n"
        );
    }
}
