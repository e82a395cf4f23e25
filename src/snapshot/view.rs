//! The merged view of a Kafka topic's partitions. `process` keeps one snapshot folder per
//! partition; reading them means loading every partition, merging and scoring (seconds and
//! most of a gigabyte at a few million customers). A processor publishes the merge once, in
//! `<dir>/merged/`, as a snapshot of the four query tables, so `query` and `serve` read it
//! as cheaply as a `run` snapshot.
//!
//! A view records which snapshot of each partition it merges (id and time written): its
//! *cut*. While processors stream, partitions publish more often than views, so readers
//! use the newest view when its cut is at most `--max-behind` behind every partition's
//! newest snapshot, and name that cut ([`Cut`]): its numbers are exact for the snapshots it
//! names. A view further behind, one naming snapshots that are not older ones of the
//! partitions read (a folder emptied and filled again), or `--max-behind 0s` make readers
//! merge the newest snapshots instead. A processor writes a view at most once per
//! `--view-interval` beside its stream, and one at its end, waiting for another process
//! that writes one; the last processor of a group to end writes the final view, so a
//! finished topic is read through a view that is not behind.

use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::find::latest;
use super::remote::{self, Bucket, Location, Publisher};
use super::{
    latest_parts, load_merged, Counts, InputPosition, Manifest, Published, SnapshotError,
    SnapshotMeta, SnapshotSet, SnapshotStore, TopicSet, ViewPart,
};

pub use super::{view_dir, VIEW_DIR};

/// How many views a folder keeps: a reader still loading the previous one finds it.
const KEEP: usize = 3;

/// A set merged again when a partition published while the view was written (or pruned
/// a snapshot while it was fetched), at most.
const CATCH_UP: usize = 5;

/// By partition, the id of its snapshot in `set`.
fn ids(set: &TopicSet) -> Vec<ViewPart> {
    let mut ids: Vec<ViewPart> = set
        .parts
        .iter()
        .map(|(p, s)| ViewPart {
            partition: *p,
            snapshot: s.manifest.id,
            created_at: s.manifest.created_at.clone(),
        })
        .collect();
    ids.sort_unstable_by_key(|v| v.partition);
    ids
}

/// Readers' default `--max-behind`: ten views at the default view interval.
pub const MAX_BEHIND: Duration = Duration::from_secs(600);

/// Where a view's snapshot of one partition stands against that partition's newest.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CutPart {
    pub partition: i32,
    /// The partition's snapshot the view merges.
    pub snapshot: u64,
    /// The partition's newest snapshot.
    pub newest: u64,
    /// How much later the newest was written than the one merged (0 when it is the one).
    pub behind_ms: u64,
}

/// The snapshots a view merges, against the newest of each partition.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Cut {
    /// The view's id.
    pub view: u64,
    pub topic: String,
    pub parts: Vec<CutPart>,
}

impl Cut {
    /// Whether the view merges every partition's newest snapshot.
    pub fn is_newest(&self) -> bool {
        self.parts.iter().all(|p| p.snapshot == p.newest)
    }

    /// How far the cut is behind: the most any partition's newest snapshot is later.
    pub fn behind(&self) -> Duration {
        Duration::from_millis(self.parts.iter().map(|p| p.behind_ms).max().unwrap_or(0))
    }

    /// One line naming the cut, for people: which partitions are behind and by how much.
    pub fn describe(&self) -> String {
        let behind: Vec<String> = self
            .parts
            .iter()
            .filter(|p| p.snapshot != p.newest)
            .map(|p| {
                format!(
                    "partition {} at snapshot {} of {} ({:.1} s behind)",
                    p.partition,
                    p.snapshot,
                    p.newest,
                    p.behind_ms as f64 / 1000.0
                )
            })
            .collect();
        if behind.is_empty() {
            return format!(
                "merged view {} of {}: every partition's newest snapshot",
                self.view, self.topic
            );
        }
        format!(
            "merged view {} of {}: {}; the other partitions at their newest",
            self.view,
            self.topic,
            behind.join(", ")
        )
    }
}

/// Milliseconds since the epoch of a manifest's `created_at`.
fn written_ms(created_at: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(created_at)
        .ok()
        .map(|t| t.timestamp_millis())
}

/// The cut of `view` against `set`: none when the view is of another topic or partition
/// count, or names a snapshot that is not the newest of its partition or an older one
/// (a later id, the same id written at another time, or one written after the newest).
pub fn cut_of(view: &Published, set: &TopicSet) -> Option<Cut> {
    let InputPosition::View {
        topic,
        partitions,
        parts,
    } = &view.manifest.input
    else {
        return None;
    };
    if *topic != set.topic || *partitions != set.partitions || !set.missing().is_empty() {
        return None;
    }
    let newest = ids(set);
    if parts.len() != newest.len() {
        return None;
    }
    let mut cut = Vec::with_capacity(parts.len());
    for (had, now) in parts.iter().zip(&newest) {
        if had.partition != now.partition || had.snapshot > now.snapshot {
            return None;
        }
        let behind_ms = if had.snapshot == now.snapshot {
            if had.created_at != now.created_at {
                return None;
            }
            0
        } else {
            let gap = written_ms(&now.created_at)? - written_ms(&had.created_at)?;
            if gap < 0 {
                return None;
            }
            (gap as u64).max(1)
        };
        cut.push(CutPart {
            partition: had.partition,
            snapshot: had.snapshot,
            newest: now.snapshot,
            behind_ms,
        });
    }
    Some(Cut {
        view: view.manifest.id,
        topic: topic.clone(),
        parts: cut,
    })
}

/// The cut of `view` against `set` when readers may use it: not further behind than
/// `max_behind` (zero: only a view of every partition's newest snapshot).
fn usable(view: &Published, set: &TopicSet, max_behind: Duration) -> Option<Cut> {
    cut_of(view, set).filter(|c| c.is_newest() || c.behind() <= max_behind)
}

/// The newest view in `dir` with its cut when readers may use it (see [`usable`]),
/// verified (format, tables).
pub fn current(dir: &Path, set: &TopicSet, max_behind: Duration) -> Option<(Published, Cut)> {
    let view = latest(&view_dir(dir)).ok()?;
    let cut = usable(&view, set, max_behind)?;
    match view.verify() {
        Ok(()) => Some((view, cut)),
        Err(e) => {
            tracing::warn!(error = %e, "the merged view is not readable; merging the partitions");
            None
        }
    }
}

/// Whether `view` merges exactly the snapshots of `set`.
fn is_current(view: &Published, set: &TopicSet) -> bool {
    cut_of(view, set).is_some_and(|c| c.is_newest())
}

/// Publishes the merged view of the partition snapshots in `dir` when every partition has
/// one and the newest view does not merge exactly these. Returns the view written, if
/// any: none when the set is incomplete or already merged, or when (without `wait`)
/// another process is writing a view.
pub fn publish(dir: &Path, wait: bool) -> Result<Option<Manifest>, SnapshotError> {
    let mut store = match SnapshotStore::open_locked(&view_dir(dir), KEEP, wait) {
        Ok(store) => store,
        Err(SnapshotError::Locked(_)) => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut written = None;
    for _ in 0..CATCH_UP {
        let SnapshotSet::Topic(set) = latest_parts(dir)? else {
            return Ok(written);
        };
        if !set.missing().is_empty() {
            return Ok(written);
        }
        if latest(&view_dir(dir)).is_ok_and(|v| is_current(&v, &set)) {
            return Ok(written);
        }
        written = Some(write_view(&mut store, &set)?);
    }
    Ok(written)
}

/// Merges the snapshots of `set` (their tables loaded) and publishes the view in `store`.
fn write_view(store: &mut SnapshotStore, set: &TopicSet) -> Result<Manifest, SnapshotError> {
    let started = Instant::now();
    let core = load_merged(set)?;
    let mut counts = Counts::default();
    for (_, part) in &set.parts {
        counts.add(&part.manifest.counts);
    }
    let meta = SnapshotMeta {
        input: InputPosition::View {
            topic: set.topic.clone(),
            partitions: set.partitions,
            parts: ids(set),
        },
        counts,
        config: set.parts[0].1.manifest.config.clone(),
    };
    let manifest = store.write_query_tables(&core, meta)?;
    tracing::info!(
        view = manifest.id,
        customers = manifest.customers,
        millis = started.elapsed().as_millis() as u64,
        "merged view published"
    );
    Ok(manifest)
}

/// The partitions' latest snapshots in a bucket prefix (manifests only) and the newest
/// view there (manifest only), if any. Errors when the partitions are not one topic's.
pub async fn bucket_set(
    bucket: &Bucket,
) -> Result<Option<(TopicSet, Option<Published>)>, SnapshotError> {
    let parts = remote::partition_pointers(bucket).await?;
    if parts.is_empty() {
        return Ok(None);
    }
    let set = TopicSet::of(Path::new(&bucket.url), parts)?;
    let views = bucket.child(VIEW_DIR);
    let view = match remote::latest(&views).await {
        Ok(view) => Some(view),
        Err(SnapshotError::None(_)) => None,
        Err(e) => return Err(e),
    };
    Ok(Some((set, view)))
}

/// Publishes the merged view of the partition snapshots in a bucket prefix when every
/// partition has one and the view there does not merge exactly these: the snapshots are
/// fetched into memory, merged, staged in `work` and published under `<prefix>/merged/`.
/// Two processors that publish one at once: the conditional pointer put makes one win,
/// the other looks again.
pub fn publish_to_bucket(bucket: &Bucket, work: &Path) -> Result<Option<Manifest>, SnapshotError> {
    let mut written = None;
    for _ in 0..CATCH_UP {
        // The view's pointer is read before the set it merges: a view of a newer set
        // published meanwhile makes this one's put refused, so an older view never
        // replaces a newer one.
        let publisher = Publisher::open(bucket.child(VIEW_DIR), KEEP)?;
        let Some((set, newest)) = remote::block_on(bucket_set(bucket))?? else {
            return Ok(written);
        };
        if !set.missing().is_empty() || newest.is_some_and(|v| is_current(&v, &set)) {
            tracing::debug!(missing = ?set.missing(), "no view to publish");
            return Ok(written);
        }
        // A snapshot pruned while it was fetched: the set is read again.
        let set = match remote::block_on(remote::fetch_set(bucket, set))? {
            Err(SnapshotError::Moved(_)) => continue,
            fetched => fetched?,
        };
        let mut store = SnapshotStore::open_locked(&view_dir(work), KEEP, true)?;
        store = store.with_remote(publisher)?;
        match write_view(&mut store, &set) {
            Ok(m) => written = Some(m),
            Err(SnapshotError::Fenced { .. }) => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(written)
}

/// A processor's view writer: one view at a time on a thread of its own, at most once per
/// interval, and a last one at the end.
pub struct Periodic {
    dir: PathBuf,
    /// The bucket views go to (staged in `dir`), if not `dir`.
    bucket: Option<Bucket>,
    every: Duration,
    last: Option<Instant>,
    job: Option<JoinHandle<Result<Option<Manifest>, SnapshotError>>>,
    /// Views this processor published.
    pub published: u64,
    /// Run on the view's thread after each view this processor writes while streaming
    /// (publishing the Delta tables of `process --tables`).
    after: Option<AfterView>,
}

/// What runs after a view is written, on the view's thread.
pub type AfterView = std::sync::Arc<dyn Fn() + Send + Sync>;

impl Periodic {
    /// A writer of views of `dir` (or of `bucket`, staged in `dir`), at most once per
    /// `every`.
    pub fn new(dir: &Path, bucket: Option<Bucket>, every: Duration) -> Self {
        Self {
            dir: dir.to_path_buf(),
            bucket,
            every,
            last: None,
            job: None,
            published: 0,
            after: None,
        }
    }

    /// Runs `after` on the view's thread after each view written while streaming.
    pub fn with_after(mut self, after: AfterView) -> Self {
        self.after = Some(after);
        self
    }

    /// After a partition's snapshot is published: starts a view when one is due and none
    /// is being written.
    pub fn poke(&mut self) {
        if self.job.as_ref().is_some_and(|j| !j.is_finished()) {
            return;
        }
        self.collect();
        if self.last.is_some_and(|t| t.elapsed() < self.every) {
            return;
        }
        self.last = Some(Instant::now());
        let (dir, bucket, after) = (self.dir.clone(), self.bucket.clone(), self.after.clone());
        let job = std::thread::Builder::new()
            .name("storepulse-view".into())
            .spawn(move || {
                let written = match bucket {
                    Some(b) => publish_to_bucket(&b, &dir),
                    None => publish(&dir, false),
                };
                if let (Ok(Some(_)), Some(after)) = (&written, after) {
                    after();
                }
                written
            });
        match job {
            Ok(job) => self.job = Some(job),
            Err(e) => tracing::warn!(error = %e, "could not start the merged view's writer"),
        }
    }

    fn collect(&mut self) {
        let Some(job) = self.job.take() else { return };
        match job.join() {
            Ok(Ok(Some(_))) => self.published += 1,
            Ok(Ok(None)) => {}
            Ok(Err(e)) => tracing::warn!(
                error = %e,
                "the merged view was not published; queries merge the partitions meanwhile"
            ),
            Err(_) => tracing::warn!("the merged view's writer panicked"),
        }
    }

    /// At the end, once this processor's last snapshots are published: waits for the view
    /// being written, then publishes the view of the latest set (waiting for another
    /// process that writes one). Returns the views this processor published.
    pub fn finish(mut self) -> Result<u64, SnapshotError> {
        self.collect();
        let published = match &self.bucket {
            Some(b) => publish_to_bucket(b, &self.dir)?,
            None => publish(&self.dir, true)?,
        };
        if published.is_some() {
            self.published += 1;
        }
        Ok(self.published)
    }
}

/// What `query` and `serve` read in a snapshot folder.
#[derive(Debug, Clone)]
pub enum Reading {
    /// A `run` snapshot's query tables.
    Files(Box<Published>),
    /// A topic's merged view, and the cut it merges.
    View(Box<Published>, Cut),
    /// A topic's partitions, to be merged (no merged view is usable).
    Merge(TopicSet),
}

impl Reading {
    /// The snapshots read.
    pub fn snapshots(&self) -> Vec<Published> {
        match self {
            Reading::Files(p) | Reading::View(p, _) => vec![(**p).clone()],
            Reading::Merge(t) => t.parts.iter().map(|(_, p)| p.clone()).collect(),
        }
    }

    /// The cut read, when it is a view's.
    pub fn cut(&self) -> Option<&Cut> {
        match self {
            Reading::View(_, cut) => Some(cut),
            _ => None,
        }
    }
}

/// What to read in `dir`: the latest `run` snapshot; for a topic, its newest merged view
/// when its cut is at most `max_behind` behind the partitions' newest snapshots, else
/// those snapshots to merge.
pub fn reading(dir: &Path, max_behind: Duration) -> Result<Reading, SnapshotError> {
    match latest_parts(dir)? {
        SnapshotSet::Run(p) => Ok(Reading::Files(p)),
        SnapshotSet::Topic(set) => Ok(match current(dir, &set, max_behind) {
            Some((view, cut)) => Reading::View(Box::new(view), cut),
            None => Reading::Merge(set),
        }),
    }
}

/// [`reading`] of a folder or a bucket prefix, for async callers (the page).
pub async fn reading_at(at: &Location, max_behind: Duration) -> Result<Reading, SnapshotError> {
    let bucket = match at {
        Location::Dir(d) => {
            let d = d.clone();
            return tokio::task::spawn_blocking(move || reading(&d, max_behind))
                .await
                .unwrap_or_else(|e| Err(SnapshotError::Config(e.to_string())));
        }
        Location::Bucket(b) => b,
    };
    match remote::latest_run(bucket).await {
        Ok(latest) => return Ok(Reading::Files(Box::new(latest))),
        Err(SnapshotError::None(_)) => {}
        Err(e) => return Err(e),
    }
    match bucket_set(bucket).await? {
        Some((set, view)) => Ok(match usable_view(&set, view, max_behind) {
            Some((view, cut)) => Reading::View(Box::new(view), cut),
            None => Reading::Merge(set),
        }),
        None => Err(SnapshotError::None(PathBuf::from(&bucket.url))),
    }
}

/// `view` (a bucket's newest, manifest only) with its cut when readers may use it.
pub fn usable_view(
    set: &TopicSet,
    view: Option<Published>,
    max_behind: Duration,
) -> Option<(Published, Cut)> {
    view.and_then(|v| usable(&v, set, max_behind).map(|c| (v, c)))
}

/// [`super::pointers`] of a folder or a bucket prefix, for async callers (the page): it
/// changes whenever a snapshot or a view is published.
pub async fn pointers_at(at: &Location) -> String {
    match at {
        Location::Bucket(b) => remote::pointers(b).await,
        Location::Dir(d) => {
            let d = d.clone();
            tokio::task::spawn_blocking(move || super::pointers(&d))
                .await
                .unwrap_or_default()
        }
    }
}
