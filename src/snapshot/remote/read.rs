//! Reading a bucket prefix: pointers, manifests, and snapshots fetched into memory.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use object_store::path::Path as Key;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

use super::{runtime, Bucket};
use crate::snapshot::manifest::{Manifest, MANIFEST_FILE};
use crate::snapshot::{Published, SetShape, SnapshotError, TopicSet, LATEST_FILE};

/// Puts one file (the run's `summary.json`) under `bucket`'s prefix.
pub fn put_file(bucket: &Bucket, path: &Path) -> Result<(), SnapshotError> {
    let key = bucket.key(&path.file_name().unwrap_or_default().to_string_lossy());
    let bytes = std::fs::read(path).map_err(|source| SnapshotError::Io {
        what: "reading",
        path: path.to_path_buf(),
        source,
    })?;
    runtime()?
        .block_on(bucket.store.put(&key, PutPayload::from(bytes)))
        .map(|_| ())
        .map_err(|e| bucket.error("writing", &key, e))
}

/// The snapshot a pointer's text names (its first line; empty for a pointer that only
/// claims the prefix).
pub(super) fn pointed_name(text: &[u8]) -> String {
    Pointer::parse(text).name
}

/// A bucket's `LATEST`: the snapshot it names (empty when a writer claimed the prefix
/// before publishing one), then `writer <id>` and `epoch <n>` lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pointer {
    pub name: String,
    pub writer: Option<String>,
    pub epoch: u64,
    /// The text as read.
    pub raw: String,
}

impl Pointer {
    pub fn parse(text: &[u8]) -> Pointer {
        let raw = String::from_utf8_lossy(text).into_owned();
        let mut lines = raw.lines();
        let name = lines.next().unwrap_or_default().trim().to_string();
        let (mut writer, mut epoch) = (None, 0);
        for line in lines {
            if let Some(w) = line.strip_prefix("writer ") {
                writer = Some(w.trim().to_string());
            } else if let Some(e) = line.strip_prefix("epoch ") {
                epoch = e.trim().parse().unwrap_or(0);
            }
        }
        Pointer {
            name,
            writer,
            epoch,
            raw,
        }
    }

    /// The text of a pointer naming `name`, published by `writer` in `epoch`.
    pub fn text(name: &str, writer: &str, epoch: u64) -> String {
        format!("{name}\nwriter {writer}\nepoch {epoch}\n")
    }
}

async fn get_bytes(bucket: &Bucket, key: &Key) -> Result<bytes::Bytes, SnapshotError> {
    get_whole(bucket, key)
        .await
        .map(|(bytes, _)| bytes)
        .map_err(|e| bucket.error("reading", key, e))
}

/// The object `key` whole, and its ETag. The store's client retries a request that fails,
/// but not an answer cut off while its body is read (a connection dropped mid-answer):
/// that is retried here, within the same time budget ([`super::STORE_RETRY_TIME`]).
pub(super) async fn get_whole(
    bucket: &Bucket,
    key: &Key,
) -> Result<(bytes::Bytes, Option<String>), object_store::Error> {
    let started = std::time::Instant::now();
    let mut wait = std::time::Duration::from_millis(100);
    loop {
        let got = bucket.store.get(key).await?;
        let e_tag = got.meta.e_tag.clone();
        match got.bytes().await {
            Ok(bytes) => return Ok((bytes, e_tag)),
            Err(e) if started.elapsed() + wait < super::STORE_RETRY_TIME => {
                crate::metrics::events::StoreError.emit();
                tracing::debug!(key = %key, error = %e, "an answer was cut off; reading again");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(std::time::Duration::from_secs(5));
            }
            Err(e) => return Err(e),
        }
    }
}

/// The manifest of the snapshot `name` under `bucket` (its tables not fetched).
pub(super) async fn manifest(bucket: &Bucket, name: &str) -> Result<Published, SnapshotError> {
    let key = bucket.key(&format!("{name}/{MANIFEST_FILE}"));
    let bytes = get_bytes(bucket, &key).await?;
    let manifest: Manifest =
        serde_json::from_slice(&bytes).map_err(|source| SnapshotError::Manifest {
            path: PathBuf::from(bucket.object_url(&key)),
            source,
        })?;
    Ok(Published {
        path: PathBuf::from(format!("{}/{name}", bucket.url)),
        manifest,
        fetched: None,
        fetched_chain: None,
    })
}

/// The rejected lines a snapshot of `bucket` covers (its manifest's pieces, in order):
/// the content of the writer's `rejected.csv` up to that snapshot.
pub async fn rejected_lines(
    bucket: &Bucket,
    manifest: &Manifest,
) -> Result<Vec<u8>, SnapshotError> {
    let mut out = Vec::new();
    for piece in &manifest.rejected_pieces {
        out.extend_from_slice(&get_bytes(bucket, &bucket.key(piece)).await?);
    }
    Ok(out)
}

/// `snapshot`, the snapshot `name` under `bucket`, with its tables fetched into memory;
/// for an incremental one, every snapshot of its chain too (`snap-<parent>-<writer>`: a
/// chain is one writer's, whose first snapshot is whole). A link missing is the store's
/// not-found error (pruned while it was read, or gone); one that is not the snapshot its
/// child follows is [`SnapshotError::Damaged`].
async fn with_tables(
    bucket: &Bucket,
    name: &str,
    snapshot: Published,
) -> Result<Published, SnapshotError> {
    let mut snapshot = tables_of(bucket, name, snapshot).await?;
    let Some(mut link) = snapshot.manifest.chain else {
        return Ok(snapshot);
    };
    let damaged = |what: String| SnapshotError::Damaged {
        path: snapshot.path.clone(),
        what,
    };
    let writer = super::publisher::folder_writer(name)
        .ok_or_else(|| damaged("an incremental snapshot outside a writer's folder".into()))?;
    let mut links = Vec::new();
    loop {
        let parent_name = super::publisher::folder_name(link.parent, writer);
        let parent = manifest(bucket, &parent_name).await?;
        let parent = tables_of(bucket, &parent_name, parent).await?;
        parent.follows(&link).map_err(damaged)?;
        let next = parent.manifest.chain;
        links.push(parent);
        match next {
            Some(next) => link = next,
            None => break,
        }
    }
    links.reverse();
    snapshot.fetched_chain = Some(links.into());
    Ok(snapshot)
}

/// `snapshot`, the snapshot `name` under `bucket`, with its own tables fetched.
async fn tables_of(
    bucket: &Bucket,
    name: &str,
    mut snapshot: Published,
) -> Result<Published, SnapshotError> {
    let mut files = BTreeMap::new();
    for table in snapshot.manifest.tables.values() {
        let key = bucket.key(&format!("{name}/{}", table.file));
        files.insert(table.file.clone(), get_bytes(bucket, &key).await?);
    }
    snapshot.fetched = Some(Arc::new(files));
    Ok(snapshot)
}

/// The snapshot `name` under `bucket`, manifest and tables fetched into memory.
pub async fn fetch(bucket: &Bucket, name: &str) -> Result<Published, SnapshotError> {
    with_tables(bucket, name, manifest(bucket, name).await?).await
}

/// The latest snapshot of each partition below `<bucket>/partitions/`: its manifest only
/// (`fetched` is none: see [`fetch_tables`]).
pub async fn partition_pointers(bucket: &Bucket) -> Result<Vec<Published>, SnapshotError> {
    let parts = bucket.child(crate::snapshot::PARTITIONS_DIR);
    let mut out = Vec::new();
    for name in partition_folders(bucket).await? {
        let part = parts.child(&name);
        match latest(&part).await {
            Ok(snapshot) => out.push(snapshot),
            Err(SnapshotError::None(_)) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

/// The names of the partition folders below `<bucket>/partitions/` (one listing).
async fn partition_folders(bucket: &Bucket) -> Result<Vec<String>, SnapshotError> {
    let parts = bucket.child(crate::snapshot::PARTITIONS_DIR);
    let listed = bucket
        .store
        .list_with_delimiter(Some(&parts.prefix))
        .await
        .map_err(|e| bucket.error("listing", &parts.prefix, e))?;
    Ok(listed
        .common_prefixes
        .iter()
        .filter_map(|p| p.filename().map(str::to_string))
        .collect())
}

/// The folder of `snapshot` (found in `bucket`) and its name there.
fn locate(bucket: &Bucket, snapshot: &Published) -> (Bucket, String) {
    let url = snapshot.path.to_string_lossy();
    let relative = url
        .strip_prefix(&format!("{}/", bucket.url.trim_end_matches('/')))
        .unwrap_or(&url);
    let (folder, name) = relative.rsplit_once('/').unwrap_or(("", relative));
    let folder = match folder {
        "" => bucket.clone(),
        f => bucket.child(f),
    };
    (folder, name.to_string())
}

/// `snapshot` (found by [`latest`] or [`partition_pointers`] in `bucket`, its manifest
/// read) with its tables fetched into memory.
pub async fn fetch_tables(
    bucket: &Bucket,
    snapshot: &Published,
) -> Result<Published, SnapshotError> {
    let (folder, name) = locate(bucket, snapshot);
    with_tables(&folder, &name, snapshot.clone()).await
}

/// `snapshot` with its tables fetched and verified ([`Published::verify`]); when it is
/// damaged, the newest older snapshot kept in its folder that is whole, with a warning, as
/// a reader of a folder falls back ([`crate::snapshot::latest_complete`]).
pub async fn fetch_good(bucket: &Bucket, snapshot: &Published) -> Result<Published, SnapshotError> {
    let whole = |p: Published| p.verify().map(|()| p);
    let first = match fetch_tables(bucket, snapshot).await.and_then(whole) {
        Ok(p) => return Ok(p),
        Err(e) => e,
    };
    let (folder, name) = locate(bucket, snapshot);
    // A file gone while the pointer moved on: pruned by its writer, not damaged.
    if first.is_not_found() {
        let pointer = get_file(&folder, LATEST_FILE).await?;
        if pointer.is_some_and(|p| pointed_name(&p) != name) {
            return Err(SnapshotError::Moved(snapshot.path.display().to_string()));
        }
    }
    tracing::warn!(snapshot = %snapshot.path.display(), error = %first, "skipping snapshot");
    let newest = super::publisher::folder_id(&name).unwrap_or(u64::MAX);
    let listed = bucket
        .store
        .list_with_delimiter(Some(&folder.prefix))
        .await
        .map_err(|e| bucket.error("listing", &folder.prefix, e))?;
    let mut older: Vec<(u64, String)> = listed
        .common_prefixes
        .iter()
        .filter_map(|p| {
            let name = p.filename()?;
            let id = super::publisher::folder_id(name)?;
            (id < newest).then(|| (id, name.to_string()))
        })
        .collect();
    older.sort_unstable_by(|a, b| b.cmp(a));
    for (_, name) in older {
        match fetch(&folder, &name).await.and_then(whole) {
            Ok(p) => return Ok(p),
            Err(e) => {
                tracing::warn!(snapshot = %format!("{}/{name}", folder.url), error = %e, "skipping snapshot")
            }
        }
    }
    Err(first)
}

/// `set` (found by [`partition_pointers`] in `bucket`) with every snapshot's tables
/// fetched into memory; a damaged one is replaced by the newest older one that is whole
/// ([`fetch_good`]), one removed while it was fetched by the one its partition's pointer
/// names now (any snapshot of each partition makes an exact cut: they are independent).
pub async fn fetch_set(bucket: &Bucket, set: TopicSet) -> Result<TopicSet, SnapshotError> {
    let mut parts = Vec::new();
    for (p, s) in &set.parts {
        let mut snapshot = s.clone();
        let mut tries = 0;
        let fetched = loop {
            match fetch_good(bucket, &snapshot).await {
                Err(SnapshotError::Moved(_)) if tries < MOVED_TRIES => {
                    tries += 1;
                    let (folder, _) = locate(bucket, &snapshot);
                    snapshot = latest(&folder).await?;
                }
                done => break done?,
            }
        };
        parts.push((*p, fetched));
    }
    Ok(TopicSet { parts, ..set })
}

/// How many times a set is read again when a snapshot of it was removed while it was
/// fetched (its writer published newer ones and pruned it).
const MOVED_TRIES: usize = 5;

/// The object `name` under `bucket`'s prefix; none when it is not there.
pub async fn get_file(bucket: &Bucket, name: &str) -> Result<Option<bytes::Bytes>, SnapshotError> {
    let key = bucket.key(name);
    match get_whole(bucket, &key).await {
        Ok((bytes, _)) => Ok(Some(bytes)),
        Err(object_store::Error::NotFound { .. }) => Ok(None),
        Err(e) => Err(bucket.error("reading", &key, e)),
    }
}

/// The snapshot a bucket's `LATEST` points at, its manifest read (its tables not
/// fetched: see [`fetch_tables`]); [`SnapshotError::None`] when there is no pointer.
pub async fn latest(bucket: &Bucket) -> Result<Published, SnapshotError> {
    let name = match get_file(bucket, LATEST_FILE).await? {
        Some(pointer) => pointed_name(&pointer),
        None => String::new(),
    };
    if name.is_empty() {
        return Err(SnapshotError::None(PathBuf::from(&bucket.url)));
    }
    manifest(bucket, &name).await
}

/// The `LATEST` pointers of a bucket prefix (a run's, every partition's, the merged
/// view's) as one string; empty when there is none or the store cannot be read.
pub async fn pointers(bucket: &Bucket) -> String {
    let text = |b: Bucket| async move {
        get_bytes(&b, &b.key(LATEST_FILE))
            .await
            .map(|t| pointed_name(&t))
            .unwrap_or_default()
    };
    let mut v = text(bucket.clone()).await;
    let parts = bucket.child(crate::snapshot::PARTITIONS_DIR);
    if let Ok(listed) = bucket.store.list_with_delimiter(Some(&parts.prefix)).await {
        let mut names: Vec<String> = listed
            .common_prefixes
            .iter()
            .filter_map(|p| p.filename().map(str::to_string))
            .collect();
        names.sort();
        for name in names {
            let t = text(parts.child(&name)).await;
            if !t.is_empty() {
                v.push_str(&format!("|{name}:{t}"));
            }
        }
    }
    let view = text(bucket.child(crate::snapshot::VIEW_DIR)).await;
    if !view.is_empty() {
        v.push_str(&format!("|merged:{view}"));
    }
    v
}

/// The shape of the partition snapshots in `bucket` (none when it has none), as
/// [`crate::snapshot::set_shape`] of a folder: refused when they are not one set, or
/// when the prefix also holds a `run`'s pointer.
pub async fn set_shape(bucket: &Bucket) -> Result<Option<SetShape>, SnapshotError> {
    if get_file(bucket, LATEST_FILE).await?.is_some() {
        return Err(SnapshotError::Mixed(PathBuf::from(&bucket.url)));
    }
    let parts = partition_pointers(bucket).await?;
    if parts.is_empty() {
        return Ok(None);
    }
    let set = TopicSet::of(Path::new(&bucket.url), parts)?;
    Ok(Some(SetShape {
        topic: set.topic,
        partitions: set.partitions,
    }))
}

/// Refuses a prefix for `run` when it holds a topic's partitions.
pub fn check_run_prefix(bucket: &Bucket) -> Result<(), SnapshotError> {
    runtime()?.block_on(refuse_partitions(bucket))
}

/// [`SnapshotError::Mixed`] when `bucket` holds a topic's partitions.
async fn refuse_partitions(bucket: &Bucket) -> Result<(), SnapshotError> {
    if partition_folders(bucket).await?.is_empty() {
        return Ok(());
    }
    Err(SnapshotError::Mixed(PathBuf::from(&bucket.url)))
}

/// The latest `run` snapshot of `bucket` ([`latest`]), refused when the prefix also holds
/// a topic's partitions (one set per prefix, as in a folder).
pub async fn latest_run(bucket: &Bucket) -> Result<Published, SnapshotError> {
    let latest = latest(bucket).await?;
    refuse_partitions(bucket).await?;
    Ok(latest)
}
