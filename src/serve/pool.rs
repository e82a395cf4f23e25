//! The page server's worker processes (`worker.rs`): started from this binary with
//! `RLIMIT_AS` (the hard memory limit that also covers what scalar functions allocate: an
//! allocation beyond it fails and the worker dies, alone), a lower CPU priority (nice 10:
//! the pipeline and `/healthz` come first), no core dumps, a temporary folder of its own,
//! and death with the page server (`PR_SET_PDEATHSIG`).
//!
//! A pool has a fixed number of workers, each answering one request at a time; a request
//! waits briefly for a free one or is refused. A worker that runs past its time limit is
//! killed, which stops its CPU work at once; so is a worker whose client went away, and
//! one that grew large (it is replaced by a fresh one on the next request).

use std::collections::VecDeque;
use std::io::Read;
use std::os::fd::OwnedFd;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe;
use tokio::sync::Semaphore;

use super::worker::{Request, Role};
use super::PageConfig;

/// An answer of a worker: its status, the snapshot it answered from, its JSON body.
pub(crate) struct Answer {
    pub status: u16,
    pub version: String,
    pub body: Vec<u8>,
}

/// Why a request got no answer from a worker.
#[derive(Debug)]
pub(crate) enum Failure {
    /// Every worker stayed busy for the wait.
    Busy,
    /// The time limit passed; the worker was killed.
    Timeout(Duration),
    /// The worker ran out of its address space and died.
    Memory(u64),
    /// The worker died otherwise; what it said last.
    Crashed(String),
    /// The answer was larger than allowed; the worker was killed.
    TooLarge(usize),
    /// No worker could be started.
    Spawn(String),
}

pub(crate) struct Pool {
    role: Role,
    exe: PathBuf,
    dir: PathBuf,
    memory_limit: u64,
    spill_limit: u64,
    max_behind: Duration,
    permits: Arc<Semaphore>,
    idle: Mutex<Vec<Worker>>,
    started: AtomicU64,
}

/// A worker is let go after an answer once its resident memory passes this share of its
/// limit, so that idle workers do not keep a large query's memory.
const RETIRE_SHARE: u64 = 4;

/// The temporary folder of a worker: `storepulse-worker-<page server pid>-<role>-<n>`.
const TMP_PREFIX: &str = "storepulse-worker-";

/// Removes the temporary folders of this process's workers (it is ending: they die with
/// it).
pub fn remove_own_folders() {
    let prefix = format!("{TMP_PREFIX}{}-", std::process::id());
    if let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) {
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with(&prefix) {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
}

/// Removes the temporary folders of workers whose page server is gone (it was killed, or
/// ended while they ran: its workers died with it and left them).
pub(crate) fn remove_stale_folders() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let pid = name
            .strip_prefix(TMP_PREFIX)
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok());
        if let Some(pid) = pid {
            if !Path::new(&format!("/proc/{pid}")).exists() {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
}

impl Pool {
    pub fn new(exe: &Path, dir: &Path, config: &PageConfig, role: Role) -> Self {
        let size = match role {
            Role::Page => 1,
            Role::Sql => config.sql_workers.max(1),
        };
        Pool {
            role,
            exe: exe.to_path_buf(),
            dir: dir.to_path_buf(),
            memory_limit: config.memory_limit,
            spill_limit: match role {
                Role::Page => 0,
                Role::Sql => config.spill_limit,
            },
            max_behind: config.max_behind,
            permits: Arc::new(Semaphore::new(size)),
            idle: Mutex::new(Vec::new()),
            started: AtomicU64::new(0),
        }
    }

    /// Sends `request` to a free worker (waiting at most `wait` for one) and returns its
    /// answer if it comes within `limit` and `max_body` bytes.
    pub async fn call(
        &self,
        request: &Request,
        wait: Duration,
        limit: Duration,
        max_body: usize,
    ) -> Result<Answer, Failure> {
        let _permit = match tokio::time::timeout(wait, self.permits.clone().acquire_owned()).await {
            Ok(Ok(p)) => p,
            _ => return Err(Failure::Busy),
        };
        let idle = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let mut worker = match idle {
            Some(w) => w,
            None => self.spawn().map_err(|e| Failure::Spawn(e.to_string()))?,
        };
        let line = serde_json::to_string(request).expect("requests serialize");
        match tokio::time::timeout(limit, worker.exchange(&line, max_body)).await {
            Ok(Ok(answer)) => {
                if worker.resident_bytes() < self.memory_limit / RETIRE_SHARE {
                    self.idle
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(worker);
                }
                Ok(answer)
            }
            Ok(Err(Exchange::TooLarge(n))) => Err(Failure::TooLarge(n)),
            Ok(Err(Exchange::Closed)) => Err(worker.death(self.memory_limit).await),
            Err(_) => Err(Failure::Timeout(limit)),
        }
    }

    fn spawn(&self) -> std::io::Result<Worker> {
        let n = self.started.fetch_add(1, Ordering::SeqCst);
        crate::metrics::events::PageWorkerStarted.emit();
        let tmp = std::env::temp_dir().join(format!(
            "{TMP_PREFIX}{}-{:?}-{n}",
            std::process::id(),
            self.role
        ));
        std::fs::create_dir_all(&tmp)?;
        let limit = self.memory_limit;
        let mut cmd = Command::new(&self.exe);
        cmd.arg("serve-worker")
            .arg("--snapshot-dir")
            .arg(&self.dir)
            .arg("--memory-pool")
            .arg((limit / 2).to_string())
            .arg("--spill-limit")
            .arg(self.spill_limit.to_string())
            .arg("--max-behind-ms")
            .arg(self.max_behind.as_millis().to_string())
            .arg("--role")
            .arg(match self.role {
                Role::Page => "page",
                Role::Sql => "sql",
            })
            // Few allocator arenas: each reserves 64 MiB of address space.
            .env("MALLOC_ARENA_MAX", "2")
            .env("RUST_BACKTRACE", "0")
            // Its stderr is kept (the last 4 KiB) to say why it stopped: no library's
            // debug lines there, whatever the page server's own filter.
            .env("RUST_LOG", "warn")
            .env("TMPDIR", &tmp)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // SAFETY: only async-signal-safe system calls between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                let rlimit = |resource, bytes| {
                    let l = libc::rlimit {
                        rlim_cur: bytes,
                        rlim_max: bytes,
                    };
                    match libc::setrlimit(resource, &l) {
                        0 => Ok(()),
                        _ => Err(std::io::Error::last_os_error()),
                    }
                };
                rlimit(libc::RLIMIT_AS, limit)?;
                rlimit(libc::RLIMIT_CORE, 0)?;
                libc::setpriority(libc::PRIO_PROCESS, 0, 10);
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&tmp);
                return Err(e);
            }
        };
        let stdin = OwnedFd::from(child.stdin.take().expect("piped"));
        let stdout = OwnedFd::from(child.stdout.take().expect("piped"));
        let mut stderr = child.stderr.take().expect("piped");
        let said = Arc::new(Mutex::new(VecDeque::new()));
        let tail = said.clone();
        let reader = std::thread::Builder::new()
            .name("storepulse-worker-err".into())
            .spawn(move || {
                let mut buf = [0u8; 1024];
                while let Ok(n @ 1..) = stderr.read(&mut buf) {
                    let mut t = tail.lock().unwrap_or_else(|p| p.into_inner());
                    t.extend(&buf[..n]);
                    let excess = t.len().saturating_sub(4096);
                    t.drain(..excess);
                }
            })?;
        Ok(Worker {
            pid: child.id(),
            child: Some(child),
            tx: pipe::Sender::from_owned_fd(stdin)?,
            rx: pipe::Receiver::from_owned_fd(stdout)?,
            said,
            reader: Some(reader),
            tmp,
        })
    }
}

enum Exchange {
    /// The worker closed its end: it died.
    Closed,
    TooLarge(usize),
}

struct Worker {
    pid: u32,
    child: Option<Child>,
    tx: pipe::Sender,
    rx: pipe::Receiver,
    /// The end of what the worker wrote on stderr.
    said: Arc<Mutex<VecDeque<u8>>>,
    reader: Option<std::thread::JoinHandle<()>>,
    tmp: PathBuf,
}

impl Worker {
    async fn exchange(&mut self, line: &str, max_body: usize) -> Result<Answer, Exchange> {
        let closed = |_| Exchange::Closed;
        self.tx.write_all(line.as_bytes()).await.map_err(closed)?;
        self.tx.write_all(b"\n").await.map_err(closed)?;
        let mut head = [0u8; 8];
        self.rx.read_exact(&mut head).await.map_err(closed)?;
        let status = u16::from_be_bytes([head[0], head[1]]);
        let version_len = u16::from_be_bytes([head[2], head[3]]) as usize;
        let body_len = u32::from_be_bytes([head[4], head[5], head[6], head[7]]) as usize;
        if body_len > max_body {
            return Err(Exchange::TooLarge(body_len));
        }
        let mut version = vec![0u8; version_len];
        self.rx.read_exact(&mut version).await.map_err(closed)?;
        let mut body = vec![0u8; body_len];
        self.rx.read_exact(&mut body).await.map_err(closed)?;
        Ok(Answer {
            status,
            version: String::from_utf8_lossy(&version).into_owned(),
            body,
        })
    }

    /// Resident memory, from `/proc` (0 when it cannot be read).
    fn resident_bytes(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/statm", self.pid))
            .ok()
            .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
            .map_or(0, |pages| pages * 4096)
    }

    /// Why the worker died, once it has.
    async fn death(mut self, memory_limit: u64) -> Failure {
        let child = self.child.take();
        let reader = self.reader.take();
        let said = self.said.clone();
        let status = tokio::task::spawn_blocking(move || {
            let status = child.map(|mut c| c.wait());
            if let Some(r) = reader {
                let _ = r.join();
            }
            status
        })
        .await;
        let said = {
            let t = said.lock().unwrap_or_else(|p| p.into_inner());
            String::from_utf8_lossy(&t.iter().copied().collect::<Vec<u8>>()).into_owned()
        };
        let signal = match status {
            Ok(Some(Ok(s))) => s.signal(),
            _ => None,
        };
        if said.contains("memory allocation of") || signal == Some(libc::SIGKILL) {
            return Failure::Memory(memory_limit);
        }
        let last = said.lines().rev().find(|l| !l.trim().is_empty());
        Failure::Crashed(match (last, signal) {
            (Some(l), _) => l.trim().to_string(),
            (None, Some(s)) => format!("killed by signal {s}"),
            (None, None) => "it exited".into(),
        })
    }
}

impl Drop for Worker {
    /// A worker let go in the middle of a request (time limit, client gone, answer too
    /// large) or retired is killed: its work stops now. It is reaped on a thread.
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let reader = self.reader.take();
            let tmp = self.tmp.clone();
            let _ = std::thread::Builder::new()
                .name("storepulse-reap".into())
                .spawn(move || {
                    let _ = child.wait();
                    if let Some(r) = reader {
                        let _ = r.join();
                    }
                    let _ = std::fs::remove_dir_all(tmp);
                });
        } else {
            let _ = std::fs::remove_dir_all(&self.tmp);
        }
    }
}
