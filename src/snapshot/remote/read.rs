//! Reading a bucket prefix: pointers, manifests, and snapshots fetched into memory.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use object_store::path::Path as Key;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

use super::{runtime, Bucket};
use crate::snapshot::manifest::{Manifest, MANIFEST_FILE};
use crate::snapshot::{Published, SnapshotError, TopicSet, LATEST_FILE};

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

/// The snapshot a pointer's text names (its first line).
pub(super) fn pointed_name(text: &[u8]) -> String {
    String::from_utf8_lossy(text)
        .lines()
        .next()
        .unwrap_or_default()
        .trim()
        .to_string()
}

async fn get_bytes(bucket: &Bucket, key: &Key) -> Result<bytes::Bytes, SnapshotError> {
    match bucket.store.get(key).await {
        Ok(got) => got
            .bytes()
            .await
            .map_err(|e| bucket.error("reading", key, e)),
        Err(e) => Err(bucket.error("reading", key, e)),
    }
}

/// The manifest of the snapshot `name` under `bucket` (its tables not fetched).
async fn manifest(bucket: &Bucket, name: &str) -> Result<Published, SnapshotError> {
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
    })
}

/// `snapshot`, the snapshot `name` under `bucket`, with its tables fetched into memory.
async fn with_tables(
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
    let listed = bucket
        .store
        .list_with_delimiter(Some(&parts.prefix))
        .await
        .map_err(|e| bucket.error("listing", &parts.prefix, e))?;
    let mut out = Vec::new();
    for folder in listed.common_prefixes {
        let Some(name) = folder.filename() else {
            continue;
        };
        let part = parts.child(name);
        match latest(&part).await {
            Ok(snapshot) => out.push(snapshot),
            Err(SnapshotError::None(_)) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

/// `snapshot` (found by [`latest`] or [`partition_pointers`] in `bucket`, its manifest
/// read) with its tables fetched into memory.
pub async fn fetch_tables(
    bucket: &Bucket,
    snapshot: &Published,
) -> Result<Published, SnapshotError> {
    let url = snapshot.path.to_string_lossy();
    let relative = url
        .strip_prefix(&format!("{}/", bucket.url.trim_end_matches('/')))
        .unwrap_or(&url);
    let (folder, name) = relative.rsplit_once('/').unwrap_or(("", relative));
    let folder = match folder {
        "" => bucket.clone(),
        f => bucket.child(f),
    };
    with_tables(&folder, name, snapshot.clone()).await
}

/// `set` (found by [`partition_pointers`] in `bucket`) with every snapshot's tables
/// fetched into memory.
pub async fn fetch_set(bucket: &Bucket, set: TopicSet) -> Result<TopicSet, SnapshotError> {
    let mut parts = Vec::new();
    for (p, s) in &set.parts {
        parts.push((*p, fetch_tables(bucket, s).await?));
    }
    Ok(TopicSet { parts, ..set })
}

/// The object `name` under `bucket`'s prefix; none when it is not there.
pub async fn get_file(bucket: &Bucket, name: &str) -> Result<Option<bytes::Bytes>, SnapshotError> {
    let key = bucket.key(name);
    match bucket.store.get(&key).await {
        Ok(got) => got
            .bytes()
            .await
            .map(Some)
            .map_err(|e| bucket.error("reading", &key, e)),
        Err(object_store::Error::NotFound { .. }) => Ok(None),
        Err(e) => Err(bucket.error("reading", &key, e)),
    }
}

/// The snapshot a bucket's `LATEST` points at, its manifest read (its tables not
/// fetched: see [`fetch_tables`]); [`SnapshotError::None`] when there is no pointer.
pub async fn latest(bucket: &Bucket) -> Result<Published, SnapshotError> {
    let Some(pointer) = get_file(bucket, LATEST_FILE).await? else {
        return Err(SnapshotError::None(PathBuf::from(&bucket.url)));
    };
    manifest(bucket, &pointed_name(&pointer)).await
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
