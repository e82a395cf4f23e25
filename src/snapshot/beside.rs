//! Snapshots written beside a running stream, for every driver: the stream stops only to
//! copy its state; scoring, encoding and writing run on a thread of their own, one
//! snapshot at a time per store. `run`'s driver and each partition of `process` use it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::{Kind, Manifest, SnapshotError, SnapshotMeta, SnapshotStore};
use crate::aggregate::{Core, Mark, Seen};

/// The store is with the writer thread until its snapshot is collected.
const COLLECT_FIRST: &str = "the snapshot being written is collected (Beside::finished) first";

type Job = JoinHandle<(SnapshotStore, Result<Manifest, SnapshotError>, Duration)>;

/// A snapshot published by [`Beside`], and how long writing it took.
#[derive(Debug)]
pub struct Written {
    pub manifest: Manifest,
    pub took: Duration,
    /// Where its copy of a lane's state was taken, for a lane that tracks its changes.
    pub settle: Option<Settle>,
}

/// Where a snapshot's copy of a lane's state was taken: once the snapshot is published,
/// the lane forgets the changes it held ([`Core::settle`], [`Seen::settle`]).
#[derive(Debug, Clone)]
pub struct Settle {
    pub core: Mark,
    /// The event ids new since the last snapshot published, as the copy held them.
    pub seen: Option<Seen>,
}

/// A snapshot store with at most one snapshot being written beside the stream.
pub struct Beside {
    /// `None` while a snapshot is being written (the writer thread holds it).
    store: Option<SnapshotStore>,
    writing: Option<(Job, Arc<AtomicBool>, Option<Settle>)>,
    /// The store writes incremental snapshots ([`SnapshotStore::with_deltas`]).
    incremental: bool,
}

impl Beside {
    pub fn new(store: SnapshotStore) -> Self {
        Self {
            incremental: store.writes_deltas(),
            store: Some(store),
            writing: None,
        }
    }

    /// Whether the store writes incremental snapshots at all: a lane that does not track
    /// its changes yet starts at its first whole snapshot.
    pub fn incremental(&self) -> bool {
        self.incremental
    }

    /// Whether a snapshot was started and not collected yet ([`Beside::finished`]), done
    /// or not: the store is with its writer until then.
    pub fn pending(&self) -> bool {
        self.writing.is_some()
    }

    /// Whether a snapshot is being written and not done yet.
    pub fn busy(&self) -> bool {
        self.writing
            .as_ref()
            .is_some_and(|(job, _, _)| !job.is_finished())
    }

    /// Whether the next snapshot may hold only what changed since the store's last one
    /// (see [`SnapshotStore::with_deltas`]); false while one is being written.
    pub fn takes_changes(&self) -> bool {
        self.store
            .as_ref()
            .is_some_and(SnapshotStore::takes_changes)
    }

    /// The snapshot that was being written, once it is done; with `wait`, waiting for it.
    /// `None` when none was being written, it is still being written (without `wait`), or
    /// it was superseded.
    pub fn finished(&mut self, wait: bool) -> Result<Option<Written>, SnapshotError> {
        if !wait && self.busy() {
            return Ok(None);
        }
        let Some((job, _, settle)) = self.writing.take() else {
            return Ok(None);
        };
        let (store, result, took) = job.join().expect("the snapshot writer panicked");
        self.store = Some(store);
        match result {
            Err(SnapshotError::Superseded) => Ok(None),
            result => Ok(Some(Written {
                manifest: result?,
                took,
                settle,
            })),
        }
    }

    /// Starts writing a copy of the state beside the stream (for [`Kind::Changes`], of what
    /// changed). The one written before must have been collected with [`Beside::finished`].
    pub fn start(
        &mut self,
        (core, seen): (Core, Option<Seen>),
        meta: SnapshotMeta,
        kind: Kind,
        settle: Option<Settle>,
    ) -> Result<(), SnapshotError> {
        let mut store = self.store.take().expect(COLLECT_FIRST);
        let give_up = Arc::new(AtomicBool::new(false));
        let flag = give_up.clone();
        let job = std::thread::Builder::new()
            .name("storepulse-snapshot".into())
            .spawn(move || {
                let t = Instant::now();
                let result = store.write_beside(&core, seen.as_ref(), meta, (&flag, kind));
                (store, result, t.elapsed())
            })
            .map_err(|source| SnapshotError::Io {
                what: "starting the snapshot writer for",
                path: std::path::PathBuf::new(),
                source,
            })?;
        self.writing = Some((job, give_up, settle));
        Ok(())
    }

    /// Tells the snapshot being written to stop and publish nothing: a newer one replaces
    /// it.
    pub fn supersede(&self) {
        if let Some((_, give_up, _)) = &self.writing {
            give_up.store(true, Ordering::Relaxed);
        }
    }

    /// Writes and publishes a snapshot now, on this thread. The one written beside the
    /// stream must have been collected with [`Beside::finished`].
    pub fn write_now(
        &mut self,
        (core, seen): (&Core, Option<&Seen>),
        meta: SnapshotMeta,
        kind: Kind,
        settle: Option<Settle>,
    ) -> Result<Written, SnapshotError> {
        let t = Instant::now();
        let store = self.store.as_mut().expect(COLLECT_FIRST);
        let manifest = store.write_kind(core, seen, meta, kind)?;
        Ok(Written {
            manifest,
            took: t.elapsed(),
            settle,
        })
    }
}
