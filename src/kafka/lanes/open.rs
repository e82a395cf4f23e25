//! Opening a partition a processor takes: its snapshot folder locked (waiting boundedly for
//! another writer), its state loaded from the newest snapshot that loads (with its chain;
//! from a bucket, after claiming the partition), and change tracking for incremental
//! snapshots.

use std::time::{Duration, Instant};

use super::{Part, Partitions};
use crate::kafka::observe::Progress;
use crate::kafka::partition::PartitionState;
use crate::kafka::processor::ProcessError;
use crate::snapshot::{
    self, load_with_seen, partition_dir, Beside, InputPosition, Publisher, SnapshotError,
    SnapshotStore,
};

impl Partitions {
    /// Opens partition `p`'s store and state; whether the state came from an older snapshot
    /// than a bucket's pointer names.
    pub(super) fn open_part(&self, p: i32) -> Result<(Part, Beside, bool), ProcessError> {
        let c = &self.config;
        let dir = partition_dir(&c.snapshot_dir, &c.topic, p);
        // Another process on this machine may still be publishing its last snapshot of
        // this partition, or this one's writer of a partition it lost may still be trying
        // its store: wait for the lock, boundedly (past the store's own retry budget).
        let deadline =
            Instant::now() + snapshot::remote::STORE_RETRY_TIME + Duration::from_secs(30);
        let store = loop {
            match SnapshotStore::open(&dir, c.keep_snapshots) {
                Err(SnapshotError::Locked(_)) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                other => break other?,
            }
        };
        let load = load_with_seen;
        let mut stale = false;
        let (store, found) = match &c.remote {
            // From the bucket: the partition is claimed first (its pointer replaced by one
            // naming the same snapshot with this processor and the next epoch), so the
            // processor that owned it before (paused past its session, cut off) is refused
            // from now on; then the snapshot the claimed pointer names (or the newest older
            // one that loads) is fetched into memory.
            Some(bucket) => {
                let name = format!("{}/{}-{p}", snapshot::PARTITIONS_DIR, c.topic);
                let publisher = Publisher::claim(bucket.child(&name), c.keep_snapshots)?;
                let found = match publisher.fetch_newest_good(load) {
                    Ok(Some(found)) => Ok(found),
                    Ok(None) => Err(SnapshotError::None(dir.clone())),
                    Err(e) => Err(e),
                };
                stale = found
                    .as_ref()
                    .is_ok_and(|(p, _)| publisher.older_than_pointed(p));
                (
                    store.with_remote(publisher)?.with_deltas(c.incremental),
                    found,
                )
            }
            // The newest snapshot that loads (an incremental one with its chain); damaged
            // ones are skipped (the older one's offset is where reading resumes, so nothing
            // is lost).
            None => (
                store.with_deltas(c.incremental),
                snapshot::newest_good(&dir, load),
            ),
        };
        let (state, at_end) = match found {
            Ok((published, (state, seen))) => {
                let InputPosition::Kafka {
                    topic,
                    partition,
                    next_offset,
                    end_of_input,
                    inputs,
                    ..
                } = &published.manifest.input
                else {
                    return Err(ProcessError::Foreign(published.path));
                };
                if *topic != c.topic || *partition != p {
                    return Err(ProcessError::Foreign(published.path));
                }
                tracing::info!(
                    partition = p,
                    snapshot = published.manifest.id,
                    chain = published.manifest.chain.map_or(0, |c| c.length),
                    next_offset,
                    "resuming from a snapshot"
                );
                let mut state = PartitionState::restore(
                    c.core,
                    state,
                    seen,
                    &published.manifest.counts,
                    Some(*next_offset),
                );
                for (source, &lines) in inputs {
                    let Ok(source) = u64::from_str_radix(source, 16) else {
                        return Err(ProcessError::Foreign(published.path));
                    };
                    state.inputs.insert(source, lines);
                }
                (state, *end_of_input)
            }
            Err(SnapshotError::None(_)) => (PartitionState::new(c.core), false),
            Err(e) => return Err(e.into()),
        };
        let mut part = Part {
            progress: Progress::new(&state),
            state,
            at_end,
            eof: false,
        };
        if c.incremental > 0 {
            part.state.core.track_changes();
            part.state.seen.track_changes();
        }
        Ok((part, Beside::new(store), stale))
    }
}
