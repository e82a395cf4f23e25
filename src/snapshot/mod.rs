//! Snapshots: the aggregate state written as Parquet tables plus a manifest, published
//! atomically. Files are written in `.tmp-snap-N/`, fsynced, the folder renamed to
//! `snap-N/`, then the `LATEST` pointer replaced by rename, so a reader never sees a
//! partial snapshot. This is the only module that writes pipeline files (`generate`
//! writes its own output), `summary.json` included.

mod beside;
mod find;
mod load;
pub mod manifest;
pub mod rejected;
pub mod remote;
mod summary;
pub mod tables;
pub mod view;
mod write;

#[cfg(test)]
use write::write_parquet;
use write::{replace_durable, sync_dir, write_durable, write_table, write_table_batches};

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::error::ArrowError;
use datafusion::parquet::errors::ParquetError;

use crate::aggregate::{Core, Seen};
pub use beside::{Beside, Settle, Written};
pub use find::{
    latest, latest_complete, latest_parts, newest_good, pointers, set_shape, SetShape, SnapshotSet,
    TopicSet,
};
pub use load::{load_merged, load_state, load_with_seen};
pub use manifest::{Counts, InputPosition, Manifest, TableFile, ViewPart, WindowConfig};
pub use rejected::RejectedSink;
pub use remote::{Bucket, Location, Publisher};
pub use summary::{write_summary, SUMMARY_FILE};

pub const LATEST_FILE: &str = "LATEST";
const PREFIX: &str = "snap-";
const TMP_PREFIX: &str = ".tmp-snap-";

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("building a snapshot table failed: {0}")]
    Arrow(#[from] ArrowError),
    #[error("writing Parquet failed: {0}")]
    Parquet(#[from] ParquetError),
    #[error("the manifest {path} is not valid: {source}")]
    Manifest {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("the snapshot {0} has no table {1}")]
    Incomplete(PathBuf, String),
    #[error("no snapshot in {0} yet: run `storepulse run` first (or pass --snapshot-dir)")]
    None(PathBuf),
    #[error("the snapshot {path} is damaged: {what}")]
    Damaged { path: PathBuf, what: String },
    #[error("another process holds {0} (a snapshot folder has one writer at a time)")]
    Locked(PathBuf),
    #[error(
        "{0} holds both a `run` snapshot (LATEST) and a Kafka topic's partitions (partitions/): \
         they cannot be merged; give `process` a --snapshot-dir of its own"
    )]
    Mixed(PathBuf),
    #[error(
        "the partition snapshots in {dir} have different {what} ({found}): they are not one \
         set and cannot be merged; keep one topic (and partition count) per --snapshot-dir"
    )]
    Inconsistent {
        dir: PathBuf,
        what: String,
        found: String,
    },
    #[error("{0}")]
    Config(String),
    #[error("{what} {url}: {source}")]
    Store {
        what: &'static str,
        url: String,
        source: Box<object_store::Error>,
    },
    #[error(
        "another writer published to {url} since this one did, so this one stops writing \
         there (it never replaces newer state): {detail}"
    )]
    Fenced { url: String, detail: String },
    /// A snapshot beside the stream was given up unpublished: a newer one replaces it.
    #[error("the snapshot was given up for a newer one")]
    Superseded,
    /// A snapshot being read was removed as its writer published newer ones: read the
    /// pointer again.
    #[error("{0} was replaced and removed while it was read")]
    Moved(String),
}

impl SnapshotError {
    /// Whether a store answered that an object is not there.
    pub fn is_not_found(&self) -> bool {
        matches!(self, SnapshotError::Store { source, .. }
            if matches!(**source, object_store::Error::NotFound { .. }))
    }
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> SnapshotError + 'a {
    move |source| SnapshotError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// What the caller knows about a snapshot beyond the core's state.
#[derive(Debug, Clone)]
pub struct SnapshotMeta {
    pub input: InputPosition,
    pub counts: Counts,
    pub config: WindowConfig,
}

/// A published snapshot found on disk (or fetched from a bucket).
#[derive(Debug, Clone)]
pub struct Published {
    pub path: PathBuf,
    pub manifest: Manifest,
    /// The table files by name, when fetched from a bucket into memory; else they are read
    /// from `path`.
    pub fetched: Option<std::sync::Arc<std::collections::BTreeMap<String, bytes::Bytes>>>,
    /// For an incremental snapshot fetched from a bucket: the snapshots of its chain before
    /// it, base first, fetched with it (see [`Published::chain`]).
    pub fetched_chain: Option<std::sync::Arc<[Published]>>,
}

/// A table file's bytes: from the disk, or fetched.
pub(crate) enum TableSource {
    File(File),
    Bytes(bytes::Bytes),
}

impl Published {
    /// Whether the snapshot's files are still there: its folder, for one on disk (a pruned
    /// one is gone); one in a bucket or in memory is taken to be.
    pub fn present(&self) -> bool {
        self.fetched.is_some()
            || self.path.to_string_lossy().starts_with("s3://")
            || self.path.is_dir()
    }

    /// Where table `table`'s bytes are, and its path for messages.
    pub(crate) fn table_source(
        &self,
        table: &str,
    ) -> Result<(PathBuf, TableSource), SnapshotError> {
        let entry = self
            .manifest
            .tables
            .get(table)
            .ok_or_else(|| SnapshotError::Incomplete(self.path.clone(), table.to_string()))?;
        let path = self.path.join(&entry.file);
        let source = match &self.fetched {
            Some(files) => TableSource::Bytes(
                files
                    .get(&entry.file)
                    .cloned()
                    .ok_or_else(|| SnapshotError::Incomplete(self.path.clone(), table.into()))?,
            ),
            None => TableSource::File(File::open(&path).map_err(io_err("opening", &path))?),
        };
        Ok((path, source))
    }

    pub fn table_path(&self, table: &str) -> Option<PathBuf> {
        self.manifest
            .tables
            .get(table)
            .map(|t| self.path.join(&t.file))
    }
}

/// Where `storepulse process` keeps one partition's snapshots, below its `--snapshot-dir`.
pub fn partition_dir(base: &Path, topic: &str, partition: i32) -> PathBuf {
    base.join(PARTITIONS_DIR)
        .join(format!("{topic}-{partition}"))
}

pub const PARTITIONS_DIR: &str = "partitions";

/// The merged view's folder below a `process` snapshot folder (see [`view`]).
pub const VIEW_DIR: &str = "merged";

pub fn view_dir(dir: &Path) -> PathBuf {
    dir.join(VIEW_DIR)
}
const LOCK_FILE: &str = ".lock";

/// Writes snapshots into one folder and keeps the newest `keep` of them. The folder is
/// locked (an exclusive `flock` on `.lock`) while the store is open, so two processes
/// never write one folder; the lock goes with the process, however it ends.
#[derive(Debug)]
pub struct SnapshotStore {
    dir: PathBuf,
    keep: usize,
    next_id: u64,
    _lock: File,
    /// Where each snapshot is published after the folder, if anywhere.
    remote: Option<Publisher>,
    /// Incremental snapshots between two whole ones at most (0: every snapshot whole).
    deltas: u32,
    /// The last snapshot this store published: what an incremental one follows.
    last: Option<Last>,
}

/// The last snapshot a store published.
#[derive(Debug, Clone, Copy)]
struct Last {
    id: u64,
    bytes: u64,
    chain: Option<manifest::Chain>,
}

/// Whether a snapshot holds the whole state or what changed since the store's last one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Whole,
    Changes,
}

impl SnapshotStore {
    /// Opens (creating) the folder, removes unfinished `.tmp-snap-*` leftovers and continues
    /// the numbering after the highest snapshot present.
    pub fn open(dir: &Path, keep: usize) -> Result<Self, SnapshotError> {
        Self::open_locked(dir, keep, false)
    }

    /// Like [`SnapshotStore::open`]; with `wait`, waits for another process's lock instead
    /// of refusing.
    fn open_locked(dir: &Path, keep: usize, wait: bool) -> Result<Self, SnapshotError> {
        fs::create_dir_all(dir).map_err(io_err("creating snapshot folder", dir))?;
        let lock_path = dir.join(LOCK_FILE);
        let lock = File::create(&lock_path).map_err(io_err("creating", &lock_path))?;
        if wait {
            lock.lock().map_err(io_err("locking", &lock_path))?;
        } else {
            match lock.try_lock() {
                Ok(()) => {}
                Err(fs::TryLockError::WouldBlock) => return Err(SnapshotError::Locked(dir.into())),
                Err(fs::TryLockError::Error(e)) => return Err(io_err("locking", &lock_path)(e)),
            }
        }
        let mut max_id = 0;
        for entry in fs::read_dir(dir).map_err(io_err("listing", dir))? {
            let entry = entry.map_err(io_err("listing", dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(TMP_PREFIX) {
                fs::remove_dir_all(entry.path()).map_err(io_err("removing", &entry.path()))?;
            } else if let Some(id) = parse_id(&name) {
                max_id = max_id.max(id);
            }
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            keep: keep.max(1),
            next_id: max_id + 1,
            _lock: lock,
            remote: None,
            deltas: 0,
            last: None,
        })
    }

    /// Lets this store write incremental snapshots: at most `every` between two whole ones,
    /// and a whole one as soon as the incremental ones since the last add up to half its
    /// bytes (restoring reads at most 1.5 times a whole snapshot's bytes; at 10x, up to
    /// the whole one's bytes made restoring 1.85 times as long, half of them 1.12 times).
    /// The first snapshot after the store opens is whole, and so is the next one after a
    /// snapshot the bucket did not take (a bucket's chain is one writer's snapshots that
    /// all landed there).
    pub fn with_deltas(mut self, every: u32) -> Self {
        self.deltas = every;
        self
    }

    /// Whether this store writes incremental snapshots at all.
    pub fn writes_deltas(&self) -> bool {
        self.deltas > 0
    }

    /// Whether the next snapshot may hold only what changed since this store's last one.
    pub fn takes_changes(&self) -> bool {
        let Some(last) = &self.last else {
            return false;
        };
        self.deltas > 0
            && last
                .chain
                .is_none_or(|c| c.length < self.deltas && c.bytes * 2 < c.base_bytes)
    }

    /// Publishes every snapshot to `remote` too, once it is published in the folder (see
    /// [`remote`]); the numbering continues after the highest there.
    pub fn with_remote(mut self, remote: Publisher) -> Result<Self, SnapshotError> {
        self.next_id = self.next_id.max(remote.next_id()?);
        self.remote = Some(remote);
        Ok(self)
    }

    /// A resumed run's rejected lines in the bucket go on from these pieces (see
    /// [`Publisher::continue_rejected`]).
    pub fn continue_rejected(&mut self, pieces: Vec<String>) {
        if let Some(remote) = &mut self.remote {
            remote.continue_rejected(pieces);
        }
    }

    /// The name this store's bucket writer publishes under, when it has one.
    pub fn remote_writer(&self) -> Option<&str> {
        self.remote.as_ref().map(Publisher::writer)
    }

    /// Writes and publishes one snapshot of `core`; returns its manifest.
    pub fn write(&mut self, core: &Core, meta: SnapshotMeta) -> Result<Manifest, SnapshotError> {
        self.write_with(core, None, meta)
    }

    /// Writes and publishes a snapshot of `core` of kind `kind`: for [`Kind::Changes`],
    /// `core` holds what changed since this store's last snapshot ([`Core::changed`]).
    pub fn write_kind(
        &mut self,
        core: &Core,
        seen: Option<&Seen>,
        meta: SnapshotMeta,
        kind: Kind,
    ) -> Result<Manifest, SnapshotError> {
        self.write_tables(core, seen, meta, Tables::All, kind)
    }

    /// Like [`SnapshotStore::write`], for a snapshot written beside a running stream: one
    /// table at a time, so it holds less memory and takes one core, not two. Once
    /// `give_up` is set it stops between tables, publishes nothing and returns
    /// [`SnapshotError::Superseded`].
    pub fn write_beside(
        &mut self,
        core: &Core,
        seen: Option<&Seen>,
        meta: SnapshotMeta,
        (give_up, kind): (&AtomicBool, Kind),
    ) -> Result<Manifest, SnapshotError> {
        let written = self.write_tables(core, seen, meta, Tables::Beside(give_up), kind);
        if matches!(written, Err(SnapshotError::Superseded)) {
            let _ = fs::remove_dir_all(self.tmp_dir(self.next_id));
        }
        written
    }

    /// Where snapshot `id` is written before it is published.
    fn tmp_dir(&self, id: u64) -> PathBuf {
        self.dir.join(format!("{TMP_PREFIX}{id:06}"))
    }

    /// Like [`SnapshotStore::write`], with the event ids a Kafka partition has counted.
    pub fn write_with(
        &mut self,
        core: &Core,
        seen: Option<&Seen>,
        meta: SnapshotMeta,
    ) -> Result<Manifest, SnapshotError> {
        self.write_tables(core, seen, meta, Tables::All, Kind::Whole)
    }

    /// Writes and publishes the query tables of `core` alone (no state to resume from):
    /// the merged view of a topic's partitions (see [`view`]).
    fn write_query_tables(
        &mut self,
        core: &Core,
        meta: SnapshotMeta,
    ) -> Result<Manifest, SnapshotError> {
        self.write_tables(core, None, meta, Tables::Query, Kind::Whole)
    }

    /// Writes and publishes one snapshot. Beside a stream the tables are written one after
    /// the other, checking `give_up` between them; else the two large ones are built and
    /// written on two threads.
    fn write_tables(
        &mut self,
        core: &Core,
        seen: Option<&Seen>,
        meta: SnapshotMeta,
        which: Tables<'_>,
        kind: Kind,
    ) -> Result<Manifest, SnapshotError> {
        let follows = match (kind, self.last) {
            (Kind::Whole, _) => None,
            (Kind::Changes, Some(last)) => Some(last),
            (Kind::Changes, None) => {
                return Err(SnapshotError::Config(
                    "an incremental snapshot needs a snapshot of this store before it".into(),
                ))
            }
        };
        let (give_up, state) = match which {
            Tables::All => (None, true),
            Tables::Beside(g) => (Some(g), true),
            Tables::Query => (None, false),
        };
        let parallel = give_up.is_none() && state;
        let go_on = || match give_up {
            Some(g) if g.load(Ordering::Relaxed) => Err(SnapshotError::Superseded),
            _ => Ok(()),
        };
        let started = std::time::Instant::now();
        let id = self.next_id;
        let name = format!("{PREFIX}{id:06}");
        let tmp = self.tmp_dir(id);
        fs::create_dir_all(&tmp).map_err(io_err("creating", &tmp))?;

        // The two large tables are the scored customers and the counted (customer, order)
        // pairs; the pairs go on a thread of their own when `parallel`, else last.
        let pairs = || {
            let batches = tables::state_customer_orders(core, 1 << 16);
            write_table_batches(&tmp, tables::STATE_CUSTOMER_ORDERS, batches)
        };
        let (customers, segments, files) = std::thread::scope(|s| {
            let writer = parallel.then(|| s.spawn(pairs));
            // Scores are global: an incremental snapshot's customers are not scored
            // among themselves (readers score the restored state).
            let scored = match follows {
                Some(_) => core.rfm_unscored(),
                None => core.rfm(),
            };
            go_on()?;
            let mut files = std::collections::BTreeMap::new();
            let mut add = |table: &str, batch: Result<RecordBatch, ArrowError>| {
                let (name, file) = write_table(&tmp, table, &batch?)?;
                files.insert(name, file);
                go_on()
            };
            let customers = scored.len() as u64;
            let segments: std::collections::BTreeMap<String, u64> = scored
                .segment_counts()
                .into_iter()
                .map(|(s, n)| (s.to_string(), n))
                .collect();
            // The scored columns become the table's arrays.
            let rfm_batch = tables::rfm(scored);
            add(tables::RFM, rfm_batch)?;
            add(tables::DAILY_SALES, tables::daily_sales(core))?;
            add(
                tables::DAILY_CATEGORY_SALES,
                tables::daily_group_sales(core, false),
            )?;
            add(
                tables::DAILY_BRAND_SALES,
                tables::daily_group_sales(core, true),
            )?;
            if state {
                add(tables::STATE_OPEN_SETS, tables::state_open_sets(core))?;
                add(tables::STATE_OPEN_ORDERS, tables::state_open_orders(core))?;
            }
            if let Some(seen) = seen {
                add(tables::STATE_SEEN, tables::state_seen(seen))?;
            }
            let pairs = match writer {
                Some(writer) => Some(writer.join().expect("the snapshot table writer panicked")),
                None => state.then(pairs),
            };
            if let Some(pairs) = pairs {
                let (name, file) = pairs?;
                files.insert(name, file);
            }
            Ok::<_, SnapshotError>((customers, segments, files))
        })?;
        let bytes: u64 = files.values().map(|t: &TableFile| t.bytes).sum();
        let chain = follows.map(|last| match last.chain {
            None => manifest::Chain {
                base: last.id,
                parent: last.id,
                length: 1,
                bytes,
                base_bytes: last.bytes,
            },
            Some(c) => manifest::Chain {
                parent: last.id,
                length: c.length + 1,
                bytes: c.bytes + bytes,
                ..c
            },
        });
        let manifest = Manifest {
            format: match chain {
                Some(_) => manifest::DELTA_FORMAT,
                None => manifest::FORMAT_VERSION,
            },
            id,
            created_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            as_of: core.max_event_us().map(manifest::rfc3339),
            watermark: core.watermark_us().map(|w| match w {
                i64::MAX => "end of input".to_string(),
                w => manifest::rfc3339(w),
            }),
            as_of_us: core.max_event_us(),
            watermark_us: core.watermark_us(),
            input: meta.input,
            counts: meta.counts,
            customers,
            segments,
            tables: files,
            config: meta.config,
            rejected_pieces: Vec::new(),
            chain,
        };
        let json = serde_json::to_vec_pretty(&manifest).expect("manifest serializes");
        write_durable(&tmp.join(manifest::MANIFEST_FILE), &json)?;
        sync_dir(&tmp)?;

        let dest = self.dir.join(&name);
        fs::rename(&tmp, &dest).map_err(io_err("publishing", &dest))?;
        sync_dir(&self.dir)?;
        replace_durable(&self.dir, LATEST_FILE, format!("{name}\n").as_bytes())?;
        self.next_id += 1;
        // The next snapshot follows this one only once it is wherever this store publishes
        // (a local prune that fails, or a bucket that does not take it, leave none to follow).
        self.last = None;
        self.prune()?;
        if let Some(remote) = &mut self.remote {
            let rejected_file = self.dir.join(rejected::REJECTED_FILE);
            let rejected = match &manifest.input {
                InputPosition::File { rejected_bytes, .. } if *rejected_bytes > 0 => {
                    Some((rejected_file.as_path(), *rejected_bytes))
                }
                _ => None,
            };
            remote.publish(&dest, &name, &manifest, rejected)?;
        }
        self.last = Some(Last { id, bytes, chain });
        tracing::debug!(
            snapshot = id,
            path = %dest.display(),
            bytes = manifest.bytes(),
            millis = started.elapsed().as_millis() as u64,
            "snapshot published"
        );
        Ok(manifest)
    }

    /// Removes all but the newest `keep` snapshots and the chains they need (an
    /// incremental snapshot needs its base and every snapshot between), and the newest
    /// whole snapshot before those: when a base is damaged, every snapshot of its chain is
    /// too, and readers fall back to that one.
    fn prune(&self) -> Result<(), SnapshotError> {
        let mut ids: Vec<u64> = fs::read_dir(&self.dir)
            .map_err(io_err("listing", &self.dir))?
            .filter_map(|e| {
                e.ok()
                    .and_then(|e| parse_id(&e.file_name().to_string_lossy()))
            })
            .collect();
        ids.sort_unstable();
        let excess = ids.len().saturating_sub(self.keep);
        let mut needed = ids.get(excess).copied().unwrap_or(0);
        let mut chained = false;
        for id in &ids[excess..] {
            let path = self.dir.join(format!("{PREFIX}{id:06}"));
            // A kept snapshot that cannot be read needs nothing (it is not restored from).
            if let Ok(kept) = find::open(&path) {
                if let Some(c) = kept.manifest.chain {
                    needed = needed.min(c.base);
                    chained = true;
                }
            }
        }
        // With chains kept, the newest whole snapshot before them stays too.
        let fallback = match chained {
            false => None,
            true => ids.iter().rev().filter(|id| **id < needed).find(|id| {
                let path = self.dir.join(format!("{PREFIX}{id:06}"));
                find::open(&path).is_ok_and(|p| p.manifest.chain.is_none())
            }),
        };
        let fallback = fallback.copied();
        for id in ids.iter().take_while(|id| **id < needed) {
            if Some(*id) == fallback {
                continue;
            }
            let path = self.dir.join(format!("{PREFIX}{id:06}"));
            fs::remove_dir_all(&path).map_err(io_err("removing", &path))?;
        }
        Ok(())
    }
}

/// Which tables a snapshot holds and how they are written.
enum Tables<'a> {
    /// Every table, the two large ones on two threads.
    All,
    /// Every table one after the other, beside a stream that may give it up.
    Beside(&'a AtomicBool),
    /// The query tables only (a merged view).
    Query,
}

fn parse_id(name: &str) -> Option<u64> {
    name.strip_prefix(PREFIX)?.parse().ok()
}

#[cfg(test)]
pub(crate) mod tests;
