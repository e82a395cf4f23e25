//! Publishing a writer's snapshots to a bucket prefix: files under the writer's own
//! folder, then the conditional pointer put, then pruning.

use std::path::{Path, PathBuf};

use object_store::path::Path as Key;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, UpdateVersion};

use super::read::{fetch, pointed_name};
use super::{runtime, Bucket};
use crate::snapshot::manifest::{Manifest, MANIFEST_FILE};
use crate::snapshot::{parse_id, Published, SnapshotError, LATEST_FILE, PREFIX};

/// The id of a bucket's snapshot folder, `snap-<id>-<writer>`.
fn folder_id(name: &str) -> Option<u64> {
    let rest = name.strip_prefix(PREFIX)?;
    parse_id(&format!("{PREFIX}{}", rest.split('-').next()?))
}

/// The text of a bucket's `LATEST`: the snapshot's name, then the writer that published it.
fn pointer_text(name: &str, writer: &str) -> String {
    format!("{name}\nwriter {writer}\n")
}

/// Publishes a writer's local snapshots to a bucket prefix.
pub struct Publisher {
    bucket: Bucket,
    rt: &'static tokio::runtime::Runtime,
    /// This writer, as named in the pointers it publishes.
    writer: String,
    /// The ETag of the pointer this writer published last (or found at the start).
    pointer: Option<String>,
    /// The snapshot the pointer named when this writer opened the prefix.
    pointed: Option<String>,
    keep: usize,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Publisher({})", self.bucket.url)
    }
}

impl Publisher {
    /// Opens `bucket` for publishing, keeping the newest `keep` snapshots (at least 2: a
    /// reader that just followed the previous pointer finds its files).
    pub fn open(bucket: Bucket, keep: usize) -> Result<Self, SnapshotError> {
        let rt = runtime()?;
        let latest = bucket.key(LATEST_FILE);
        let read = rt.block_on(async {
            let got = bucket.store.get(&latest).await?;
            let e_tag = got.meta.e_tag.clone();
            Ok::<_, object_store::Error>((e_tag, got.bytes().await?))
        });
        let (pointer, pointed) = match read {
            Ok((e_tag, text)) => (e_tag, Some(pointed_name(&text))),
            Err(object_store::Error::NotFound { .. }) => (None, None),
            Err(e) => return Err(bucket.error("reading", &latest, e)),
        };
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let writer = format!("{:016x}", nanos ^ (u64::from(std::process::id()) << 40));
        Ok(Self {
            bucket,
            rt,
            writer,
            pointer,
            pointed,
            keep: keep.max(2),
        })
    }

    /// Whether `snapshot` (fetched by [`Publisher::fetch_newest_good`]) is an older one
    /// than the pointer named when this writer opened the prefix.
    pub fn older_than_pointed(&self, snapshot: &Published) -> bool {
        let name = snapshot.path.file_name().map(|n| n.to_string_lossy());
        matches!((name, &self.pointed), (Some(n), Some(p)) if n != p.as_str())
    }

    /// The newest snapshot for which `accept` succeeds, fetched into memory, with what it
    /// returned: the one the pointer named when this writer opened the prefix, then the
    /// older ones kept (a damaged one is skipped with a warning, as in a folder). None when
    /// the prefix had none; the newest one's error when none is accepted. Publishing after
    /// it stays conditional on the pointer found at the start.
    pub fn fetch_newest_good<T>(
        &self,
        mut accept: impl FnMut(&Published) -> Result<T, SnapshotError>,
    ) -> Result<Option<(Published, T)>, SnapshotError> {
        let Some(pointed) = &self.pointed else {
            return Ok(None);
        };
        let newest = folder_id(pointed).unwrap_or(u64::MAX);
        let mut names = vec![pointed.clone()];
        for (id, key) in self.ids()?.into_iter().rev() {
            if let (true, Some(name)) = (id < newest, key.filename()) {
                names.push(name.to_string());
            }
        }
        let mut first_error = None;
        for name in names {
            let found = self.rt.block_on(fetch(&self.bucket, &name));
            match found.and_then(|p| accept(&p).map(|t| (p, t))) {
                Ok(found) => return Ok(Some(found)),
                Err(e) => {
                    tracing::warn!(snapshot = %format!("{}/{name}", self.bucket.url), error = %e, "skipping snapshot");
                    first_error.get_or_insert(e);
                }
            }
        }
        Err(first_error.expect("the pointed snapshot was tried"))
    }

    /// The id after the highest snapshot under the prefix.
    pub fn next_id(&self) -> Result<u64, SnapshotError> {
        Ok(self.ids()?.last().map_or(1, |(id, _)| id + 1))
    }

    /// The snapshot folders under the prefix and their ids, ascending.
    fn ids(&self) -> Result<Vec<(u64, Key)>, SnapshotError> {
        let b = &self.bucket;
        let listed = self
            .rt
            .block_on(b.store.list_with_delimiter(Some(&b.prefix)))
            .map_err(|e| b.error("listing", &b.prefix, e))?;
        let mut ids: Vec<(u64, Key)> = listed
            .common_prefixes
            .into_iter()
            .filter_map(|p| Some((p.filename().and_then(folder_id)?, p)))
            .collect();
        ids.sort_unstable();
        Ok(ids)
    }

    /// Puts the local snapshot `local` (published as `name`) and `extra` files under the
    /// prefix, then replaces `LATEST` conditionally, then removes the snapshots beyond the
    /// newest `keep`. [`SnapshotError::Fenced`] when another writer published a pointer
    /// since this one's last.
    pub fn publish(
        &mut self,
        local: &Path,
        name: &str,
        manifest: &Manifest,
        extra: &[PathBuf],
    ) -> Result<(), SnapshotError> {
        let b = self.bucket.clone();
        // The folder is this writer's own: a writer fenced later never overwrote a file
        // of the snapshot another one published.
        let name = format!("{name}-{}", self.writer);
        let name = name.as_str();
        let put = |key: Key, bytes: Vec<u8>| {
            self.rt
                .block_on(b.store.put(&key, PutPayload::from(bytes)))
                .map(|_| ())
                .map_err(|e| b.error("writing", &key, e))
        };
        let read = |path: &Path| {
            std::fs::read(path).map_err(|source| SnapshotError::Io {
                what: "reading",
                path: path.to_path_buf(),
                source,
            })
        };
        for table in manifest.tables.values() {
            put(
                b.key(&format!("{name}/{}", table.file)),
                read(&local.join(&table.file))?,
            )?;
        }
        put(
            b.key(&format!("{name}/{MANIFEST_FILE}")),
            read(&local.join(MANIFEST_FILE))?,
        )?;
        for path in extra.iter().filter(|p| p.exists()) {
            let file = path.file_name().unwrap_or_default().to_string_lossy();
            put(b.key(&file), read(path)?)?;
        }
        self.replace_pointer(name)?;
        self.prune(manifest.id)
    }

    fn replace_pointer(&mut self, name: &str) -> Result<(), SnapshotError> {
        let b = &self.bucket;
        let key = b.key(LATEST_FILE);
        let text = pointer_text(name, &self.writer);
        let mine = format!("writer {}", self.writer);
        // Twice at most: once more when the pointer turns out to be this writer's own
        // earlier one, whose answer was lost (its ETag was never learnt).
        for _ in 0..2 {
            let mode = match &self.pointer {
                None => PutMode::Create,
                Some(e_tag) => PutMode::Update(UpdateVersion {
                    e_tag: Some(e_tag.clone()),
                    version: None,
                }),
            };
            let opts = PutOptions {
                mode,
                ..PutOptions::default()
            };
            let put = b
                .store
                .put_opts(&key, PutPayload::from(text.clone().into_bytes()), opts);
            let refused = match self.rt.block_on(put) {
                Ok(done) => {
                    self.pointer = done.e_tag;
                    return Ok(());
                }
                Err(
                    e @ (object_store::Error::Precondition { .. }
                    | object_store::Error::AlreadyExists { .. }),
                ) => e,
                Err(e) => return Err(b.error("publishing", &key, e)),
            };
            // This very put, landed with its answer lost; an earlier one of this writer
            // likewise; or another writer's pointer.
            let found = self.rt.block_on(async {
                let got = b.store.get(&key).await?;
                let e_tag = got.meta.e_tag.clone();
                Ok::<_, object_store::Error>((got.bytes().await?, e_tag))
            });
            let (bytes, e_tag) = found.map_err(|e| b.error("reading", &key, e))?;
            if bytes.as_ref() == text.as_bytes() {
                self.pointer = e_tag;
                return Ok(());
            }
            if !String::from_utf8_lossy(&bytes).lines().any(|l| l == mine) {
                return Err(SnapshotError::Fenced {
                    url: b.url.clone(),
                    detail: refused.to_string(),
                });
            }
            self.pointer = e_tag;
        }
        Err(SnapshotError::Fenced {
            url: b.url.clone(),
            detail: "the pointer changed twice under this writer's own".into(),
        })
    }

    /// Removes the snapshots `keep` or more ids older than `published` (the one this
    /// writer just published): the previous ones stay for readers that followed their
    /// pointer, and so do folders of other writers not older than that (never pointed
    /// at, as when a writer was fenced, they go once they are as old).
    fn prune(&self, published: u64) -> Result<(), SnapshotError> {
        let ids = self.ids()?;
        let b = &self.bucket;
        let keep = self.keep as u64;
        for (_, folder) in ids.iter().filter(|(id, _)| id + keep <= published) {
            let listed = self
                .rt
                .block_on(b.store.list_with_delimiter(Some(folder)))
                .map_err(|e| b.error("listing", folder, e))?;
            for object in listed.objects {
                self.rt
                    .block_on(b.store.delete(&object.location))
                    .map_err(|e| b.error("removing", &object.location, e))?;
            }
        }
        Ok(())
    }
}
