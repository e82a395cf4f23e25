//! `run --resume`: where a run continues from its latest complete snapshot. The snapshot
//! must be of the same input, order and window flags; the core is restored from it, the
//! dead-letter file is cut back to what it covers, and the replay skips what it applied.

use storepulse_replay::{ReadStats, RejectReason};

use super::{RunConfig, RunError};
use crate::aggregate::Core;
use crate::snapshot::{self, InputPosition, Published, RejectedSink, SnapshotError, WindowConfig};
use storepulse_replay::feed::Skip;

pub struct ResumePoint {
    pub core: Core,
    pub sink: RejectedSink,
    pub skip: Skip,
    /// The reader's counts over the lines already read.
    pub read: ReadStats,
    /// In a bucket: the pieces of rejected lines the snapshot covers, which the next
    /// snapshots' manifests continue.
    pub rejected_pieces: Vec<String>,
}

pub fn point(config: &RunConfig, window: &WindowConfig) -> Result<ResumePoint, RunError> {
    let dir = &config.snapshot_dir;
    let found = match &config.remote {
        Some(bucket) => from_bucket(bucket, dir),
        None => snapshot::newest_good(dir, snapshot::load_state),
    };
    let (published, state) = match found {
        Ok(found) => found,
        Err(SnapshotError::None(_)) => {
            let at = config
                .remote
                .as_ref()
                .map_or_else(|| dir.display().to_string(), |b| b.url.clone());
            return Err(RunError::Resume(format!(
                "no snapshot in {at} to resume from"
            )));
        }
        Err(e) => return Err(e.into()),
    };
    let (lines_read, events_applied, rejected_bytes) = position(config, window, &published)?;
    let read = read_stats(&published, events_applied)?;
    let sink = RejectedSink::resume(dir, rejected_bytes).map_err(RunError::Rejected)?;
    Ok(ResumePoint {
        core: Core::restore(config.core, state),
        sink,
        skip: Skip {
            lines: lines_read,
            events: events_applied,
        },
        read,
        rejected_pieces: published.manifest.rejected_pieces.clone(),
    })
}

/// The snapshot a bucket's pointer names, fetched into memory, with its state; the
/// rejected lines it covers (the pieces its manifest lists) are written to `rejected.csv`
/// in the local folder `dir`, and continued there.
fn from_bucket(
    bucket: &snapshot::Bucket,
    dir: &std::path::Path,
) -> Result<(Published, crate::aggregate::CoreState), SnapshotError> {
    use snapshot::remote;
    let latest = remote::block_on(remote::latest(bucket))??;
    let published = remote::block_on(remote::fetch_tables(bucket, &latest))??;
    let state = snapshot::load_state(&published)?;
    let rejected = remote::block_on(remote::rejected_lines(bucket, &published.manifest))??;
    let path = dir.join(snapshot::rejected::REJECTED_FILE);
    std::fs::write(&path, rejected).map_err(|source| SnapshotError::Io {
        what: "writing",
        path,
        source,
    })?;
    Ok((published, state))
}

/// Lines read, events applied and dead-letter bytes of a snapshot this run may continue.
fn position(
    config: &RunConfig,
    window: &WindowConfig,
    p: &Published,
) -> Result<(u64, u64, u64), RunError> {
    let refuse = |why: String| Err(RunError::Resume(format!("{}: {why}", p.path.display())));
    let InputPosition::File {
        path,
        order,
        lines_read,
        events_applied,
        complete,
        rejected_bytes,
    } = &p.manifest.input
    else {
        return refuse("it is a Kafka partition's snapshot".into());
    };
    let input = config.input.display().to_string();
    if *path != input || order != config.order.as_str() {
        return refuse(format!(
            "it covers {path} in {order} order, not {input} in {} order",
            config.order.as_str()
        ));
    }
    if p.manifest.config != *window {
        return refuse(format!(
            "it was taken with other window flags ({:?}); resume with the same ones",
            p.manifest.config
        ));
    }
    if *complete {
        return refuse("it already covers the whole input; nothing to resume".into());
    }
    Ok((*lines_read, *events_applied, *rejected_bytes))
}

/// The reader's counts as the snapshot recorded them (late events are the core's).
fn read_stats(p: &Published, events_applied: u64) -> Result<ReadStats, RunError> {
    let c = &p.manifest.counts;
    let mut read = ReadStats {
        records: c.records,
        accepted: c.pending + events_applied,
        repaired: c.repaired,
        blank: c.blank,
        ..ReadStats::default()
    };
    for (name, &n) in &c.rejected {
        match RejectReason::from_name(name) {
            Some(RejectReason::LateEvent) => {}
            Some(reason) => read.rejected.add(reason, n),
            None => {
                return Err(RunError::Snapshot(SnapshotError::Damaged {
                    path: p.path.clone(),
                    what: format!("unknown reject reason `{name}` in the manifest"),
                }))
            }
        }
    }
    Ok(read)
}
