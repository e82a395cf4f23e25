//! `run --tables`: the tables follow the run's snapshots. A thread publishes the newest
//! snapshot's tables when the driver says one was published, at most once per
//! `--tables-interval`; snapshots published while it works or waits are coalesced into one
//! publish of the newest. When the run ends, the thread publishes once more (the last
//! snapshot, if not done yet) and reports that one.

use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::thread::JoinHandle;
use std::time::Instant;

use super::{publish, result_of, Lake, LakeError, Published};
use crate::query::QueryError;
use crate::snapshot::remote::{self, Location};
use crate::snapshot::tables::QUERY_TABLES;
use crate::snapshot::view::MAX_BEHIND;
use crate::snapshot::SnapshotError;

/// The thread that publishes the tables of a run's snapshots.
pub struct Follower {
    tx: Option<Sender<()>>,
    thread: Option<JoinHandle<Result<Published, LakeError>>>,
}

/// A handle the driver keeps: says that a snapshot was published.
#[derive(Clone)]
pub struct Notify(Sender<()>);

impl Notify {
    pub fn published(&self) {
        let _ = self.0.send(());
    }
}

impl Follower {
    /// Starts the thread for the snapshots at `at`, keeping the tables by `policy`.
    pub fn start(at: Location, policy: super::Policy) -> Result<(Follower, Notify), LakeError> {
        let lake = Lake::at(&at)?.with_policy(policy);
        let (tx, rx) = channel();
        let thread = std::thread::Builder::new()
            .name("storepulse-tables".into())
            .spawn(move || follow(&lake, &at, rx))
            .expect("spawn the tables' thread");
        Ok((
            Follower {
                tx: Some(tx.clone()),
                thread: Some(thread),
            },
            Notify(tx),
        ))
    }

    /// Waits for the last publish (every [`Notify`] must be dropped first) and returns it.
    pub fn finish(mut self) -> Result<Published, LakeError> {
        drop(self.tx.take());
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(done)) => done,
            Some(Err(_)) => Err(LakeError::Location(
                "the tables' thread".into(),
                "panicked".into(),
            )),
            None => Ok(Published::default()),
        }
    }
}

fn follow(lake: &Lake, at: &Location, rx: Receiver<()>) -> Result<Published, LakeError> {
    let mut last: Option<Instant> = None;
    while rx.recv().is_ok() {
        // Not within the interval of the last publish: wait (the run's end cuts it short).
        if let Some(due) = last.map(|t| t + lake.policy.every) {
            loop {
                let left = due.saturating_duration_since(Instant::now());
                match rx.recv_timeout(left) {
                    Ok(()) => continue,
                    Err(RecvTimeoutError::Timeout) => break,
                    Err(RecvTimeoutError::Disconnected) => return publish_last(lake, at),
                }
            }
        }
        while rx.try_recv().is_ok() {}
        last = Some(Instant::now());
        match publish_latest(lake, at) {
            Ok(p) => tracing::debug!(?p, "tables published"),
            Err(e) => {
                tracing::warn!(error = %e, "the tables were not published; tried again at the next snapshot")
            }
        }
    }
    publish_last(lake, at)
}

/// [`publish_latest`] for the last result: a rival publisher (another processor of the
/// topic publishing the same merged view) may commit between this one's read and its
/// commit, which Delta refuses as a conflict; tried again (at most `TRIES` times), the
/// tables are read again and what the rival committed is skipped.
pub fn publish_last(lake: &Lake, at: &Location) -> Result<Published, LakeError> {
    const TRIES: u32 = 5;
    let mut tried = 1;
    loop {
        match publish_latest(lake, at) {
            Err(e) if tried < TRIES && is_conflict(&e) => {
                tracing::info!(error = %e, "a rival committed first; publishing the last result again");
                tried += 1;
            }
            done => return done,
        }
    }
}

/// Whether `e` is Delta refusing a commit because another landed first.
fn is_conflict(e: &LakeError) -> bool {
    use deltalake::kernel::transaction::TransactionError;
    matches!(e, LakeError::Delta { source, .. } if matches!(
        source.as_ref(),
        deltalake::DeltaTableError::Transaction {
            source: TransactionError::CommitConflict(_) | TransactionError::VersionAlreadyExists(_)
        }
    ))
}

/// Publishes the tables of the newest snapshot at `at` (a `run`'s snapshots, or a topic's
/// merged views: `<dir>/merged/`); nothing when there is none yet.
pub fn publish_latest(lake: &Lake, at: &Location) -> Result<Published, LakeError> {
    let read = |message: String| LakeError::Read {
        table: "snapshot".into(),
        message,
    };
    remote::block_on(async {
        let session = match crate::query::Session::open_at(at, MAX_BEHIND).await {
            Ok(s) => s,
            Err(QueryError::Snapshot(SnapshotError::None(_))) => return Ok(Published::default()),
            Err(e) => return Err(read(e.to_string())),
        };
        let seq = session
            .parts
            .iter()
            .map(|p| p.manifest.id)
            .max()
            .unwrap_or(0);
        // Every table holds this result already (a rival publisher, a retry): nothing is
        // read.
        let mut held = Vec::new();
        for name in QUERY_TABLES {
            match lake.open(name).await? {
                Some(t) if result_of(&t, name).await? >= i64::try_from(seq).ok() => {
                    held.push(name.to_string())
                }
                _ => break,
            }
        }
        if held.len() == QUERY_TABLES.len() {
            return Ok(Published {
                skipped: held,
                result: seq,
                ..Published::default()
            });
        }
        let mut tables = Vec::new();
        for name in QUERY_TABLES {
            let (_, batches) = session
                .sql(&format!("SELECT * FROM {name}"))
                .await
                .map_err(|e| read(e.to_string()))?;
            tables.push((name, batches));
        }
        publish(lake, seq, tables).await
    })
    .map_err(|e| read(e.to_string()))?
}
