//! The dead-letter file `<snapshot-dir>/rejected.csv`: every rejected line with its line
//! number and reason, the original bytes kept as they were (as one quoted CSV field).

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Seek, Write};
use std::path::{Path, PathBuf};

use storepulse_replay::Rejected;

pub const REJECTED_FILE: &str = "rejected.csv";

pub struct RejectedSink {
    path: PathBuf,
    out: BufWriter<File>,
    /// Bytes written so far, header included.
    len: u64,
}

const HEADER: &[u8] = b"line,reason,original_line\n";

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
        out.write_all(HEADER)?;
        Ok(Self {
            path,
            out,
            len: HEADER.len() as u64,
        })
    }

    /// Continues the dead-letter file of a resumed run: cut back to the `len` bytes its
    /// snapshot covers (what came after was written past that snapshot and will be
    /// written again), then appended to.
    pub fn resume(dir: &Path, len: u64) -> io::Result<Self> {
        let path = dir.join(REJECTED_FILE);
        let file = OpenOptions::new().write(true).open(&path)?;
        let found = file.metadata()?.len();
        if found < len || len < HEADER.len() as u64 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{} has {found} bytes, the snapshot covers {len}: it was changed since",
                    path.display()
                ),
            ));
        }
        file.set_len(len)?;
        let mut out = BufWriter::with_capacity(1 << 16, file);
        out.seek(io::SeekFrom::End(0))?;
        Ok(Self { path, out, len })
    }

    /// Bytes written so far (all of them durable after [`RejectedSink::sync`]).
    pub fn bytes(&self) -> u64 {
        self.len
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn write(&mut self, r: &Rejected) -> io::Result<()> {
        let head = format!("{},{},\"", r.line, r.reason);
        self.out.write_all(head.as_bytes())?;
        let mut n = head.len() + 2;
        for part in r.text.split_inclusive(|&b| b == b'"') {
            self.out.write_all(part)?;
            n += part.len();
            if part.ends_with(b"\"") {
                self.out.write_all(b"\"")?;
                n += 1;
            }
        }
        self.len += n as u64;
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
