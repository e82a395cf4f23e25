//! Publishing a writer's snapshots to a bucket prefix, as one small protocol:
//!
//! 1. **Claim** (a writer that takes the prefix over: `run`, a processor taking a
//!    partition): the pointer is replaced, conditionally on the one just read, by one that
//!    names the same snapshot with this writer and the next epoch. Every older writer's
//!    pointer put is conditional on the pointer it knew, so from then on it is refused: a
//!    zombie is fenced by the new owner, never the new owner by the zombie (Kafka's
//!    producer epochs, KIP-98). A merged view's writer only opens the prefix: its put is
//!    conditional on the pointer it read before it read what it merges.
//! 2. **Stage**: the snapshot's files go under the writer's own folder
//!    `snap-<N>-<writer>/`, the manifest last, and the dead-letter lines rejected since the
//!    last published snapshot as one piece `rejected/<from>-<to>-<writer>.csv` that the
//!    manifest lists with the earlier pieces (`pieces.rs`: merged with the trailing ones
//!    it is not much smaller than; a fenced writer's pieces are listed by no published
//!    manifest).
//! 3. **Commit**: the pointer is replaced conditionally on the ETag this writer last knew.
//!    Whatever the answer (refused, an error, none), the pointer is read back before
//!    deciding: published when it names this snapshot, fenced when it is another writer's,
//!    else the store's error.
//! 4. **Prune**: the folders named by this writer's last `keep` pointers (the claimed one
//!    included) stay with, for an incremental snapshot, every folder of its chain (its
//!    writer's, from its base on) and the newest whole snapshot older than those, and so
//!    does any folder of another writer not older than those; then
//!    the rejected-line pieces no kept snapshot lists go ([`pieces::removable`]). A failed
//!    prune is said, and the publish stays done.

use std::collections::{HashMap, VecDeque};
use std::io::Read;
use std::path::Path;

use object_store::path::Path as Key;
use object_store::{
    ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, UpdateVersion, WriteMultipart,
};

use super::pieces;
use super::read::{fetch, get_whole, Pointer};
use super::{runtime, Bucket};
use crate::snapshot::manifest::{Manifest, MANIFEST_FILE};
use crate::snapshot::{parse_id, Published, SnapshotError, LATEST_FILE, PREFIX};

mod prune;
use prune::Link;

/// The folder of a bucket's rejected-line pieces, below the prefix.
pub const REJECTED_DIR: &str = "rejected";

/// Attempts at a claim while other writers keep changing the pointer.
const CLAIM_TRIES: usize = 8;

/// The id of a bucket's snapshot folder, `snap-<id>-<writer>`.
pub(super) fn folder_id(name: &str) -> Option<u64> {
    let rest = name.strip_prefix(PREFIX)?;
    parse_id(&format!("{PREFIX}{}", rest.split('-').next()?))
}

/// The writer of a bucket's snapshot folder, `snap-<id>-<writer>`.
pub(super) fn folder_writer(name: &str) -> Option<&str> {
    name.strip_prefix(PREFIX)?.split_once('-').map(|(_, w)| w)
}

/// The bucket folder of `writer`'s snapshot `id`, `snap-<id>-<writer>` (a chain's links
/// are its writer's).
pub(super) fn folder_name(id: u64, writer: &str) -> String {
    format!("{PREFIX}{id:06}-{writer}")
}

/// 128 random bits, as hex: a writer's name, unique across machines and containers.
fn new_writer() -> String {
    let mut bits = [0u8; 16];
    let random = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bits));
    if random.is_err() {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        bits = (nanos ^ (u128::from(std::process::id()) << 64)).to_le_bytes();
    }
    bits.iter().map(|b| format!("{b:02x}")).collect()
}

/// What a conditional pointer put came to, the pointer read back when it was not a plain
/// success.
enum Put {
    /// The pointer is this one; its ETag.
    Landed(String),
    /// Another writer's pointer is there.
    Other(Pointer, Option<String>),
    /// This writer's own earlier pointer is there (an answer lost, its ETag never learnt).
    Own(Pointer, Option<String>, object_store::Error),
    /// Nothing could be read back, or nothing is there: the put's own error.
    Failed(object_store::Error),
    /// The store answers without ETags: no put can be made conditional.
    NoETag,
}

impl Publisher {
    /// What a store that gives no ETags is told.
    fn no_e_tag(&self) -> SnapshotError {
        SnapshotError::Config(format!(
            "{}: the store answers without ETags, so its pointer cannot be replaced \
             conditionally; publishing to a bucket needs a store with conditional puts \
             (If-Match and If-None-Match: AWS S3, MinIO, Ceph RGW, Cloudflare R2, ...)",
            self.bucket.url
        ))
    }
}

/// Publishes a writer's local snapshots to a bucket prefix.
pub struct Publisher {
    bucket: Bucket,
    rt: &'static tokio::runtime::Runtime,
    /// This writer, as named in the pointers and folders it publishes.
    writer: String,
    /// The epoch this writer's pointers carry.
    epoch: u64,
    /// The ETag of the pointer this writer published last (or found, or claimed).
    e_tag: Option<String>,
    /// The pointer found when this writer opened the prefix (or claimed it).
    found: Option<Pointer>,
    /// The snapshots this writer's pointers named, oldest first (the claimed one first).
    history: VecDeque<String>,
    /// The rejected-line pieces the latest published manifest lists.
    pieces: Vec<String>,
    /// The pieces the manifests of history folders list, as far as known.
    pieces_of: HashMap<String, Vec<String>>,
    /// What the folders a prune keeps are (whole, incremental, unreadable), as far as known.
    link_of: HashMap<String, Link>,
    keep: usize,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Publisher({} as {})", self.bucket.url, self.writer)
    }
}

impl Publisher {
    /// Opens `bucket` for publishing, keeping the snapshots the newest `keep` pointers
    /// named (at least 2: a reader that just followed the previous pointer finds its
    /// files). Its first publish is conditional on the pointer found now.
    pub fn open(bucket: Bucket, keep: usize) -> Result<Self, SnapshotError> {
        let mut p = Self::read(bucket, keep)?;
        p.seed_history()?;
        Ok(p)
    }

    /// A writer of `bucket` that read its pointer, its history not seeded yet.
    fn read(bucket: Bucket, keep: usize) -> Result<Self, SnapshotError> {
        let rt = runtime()?;
        let mut p = Self {
            bucket,
            rt,
            writer: new_writer(),
            epoch: 0,
            e_tag: None,
            found: None,
            history: VecDeque::new(),
            pieces: Vec::new(),
            pieces_of: HashMap::new(),
            link_of: HashMap::new(),
            keep: keep.max(2),
        };
        if let Some((found, e_tag)) = p.read_pointer()? {
            p.take(found, e_tag);
        }
        Ok(p)
    }

    /// Opens `bucket` and claims it (see the module's notes): from now on a writer that
    /// opened it before is refused, and this one continues from the snapshot the claimed
    /// pointer names.
    pub fn claim(bucket: Bucket, keep: usize) -> Result<Self, SnapshotError> {
        let mut p = Self::read(bucket, keep)?;
        let mut last_error = None;
        for _ in 0..CLAIM_TRIES {
            let name = p.found.as_ref().map(|f| f.name.clone()).unwrap_or_default();
            let text = Pointer::text(&name, &p.writer, p.epoch + 1);
            match p.put_pointer(&text) {
                Put::Landed(e_tag) => {
                    p.e_tag = Some(e_tag);
                    p.epoch += 1;
                    p.seed_history()?;
                    return Ok(p);
                }
                // Another writer published or claimed since the pointer was read: claim
                // what it published.
                Put::Other(found, e_tag) | Put::Own(found, e_tag, _) => p.take(found, e_tag),
                Put::Failed(e) => last_error = Some(e),
                Put::NoETag => return Err(p.no_e_tag()),
            }
        }
        Err(match last_error {
            Some(e) => p.bucket.error("claiming", &p.bucket.key(LATEST_FILE), e),
            None => SnapshotError::Fenced {
                url: p.bucket.url.clone(),
                detail: "other writers kept replacing the pointer while this one claimed it".into(),
            },
        })
    }

    /// Takes `found` as the pointer this writer knows and continues from (its history is
    /// seeded from it once the writer has opened or claimed the prefix).
    fn take(&mut self, found: Pointer, e_tag: Option<String>) {
        self.epoch = found.epoch;
        self.e_tag = e_tag;
        self.found = Some(found);
    }

    /// The folders this writer keeps as its history when it starts: the pointed snapshot
    /// and the newest older ones, `keep` in all, so that its first prunes keep as many
    /// snapshots as its later ones (and a partition taken over still has older snapshots
    /// to fall back to).
    fn seed_history(&mut self) -> Result<(), SnapshotError> {
        self.history.clear();
        let Some(pointed) = self.pointed().map(str::to_string) else {
            return Ok(());
        };
        let top = folder_id(&pointed).unwrap_or(u64::MAX);
        let older: Vec<String> = self
            .ids()?
            .into_iter()
            .filter(|(id, _)| *id < top)
            .filter_map(|(_, k)| k.filename().map(str::to_string))
            .collect();
        let skip = older.len().saturating_sub(self.keep - 1);
        self.history.extend(older.into_iter().skip(skip));
        self.history.push_back(pointed);
        Ok(())
    }

    /// The rejected-line pieces a resumed writer's manifests go on from (those of the
    /// snapshot it resumed; a fresh run starts with none).
    pub fn continue_rejected(&mut self, pieces: Vec<String>) {
        self.pieces = pieces;
    }

    /// This writer's name, as its pointers and folders carry it.
    pub fn writer(&self) -> &str {
        &self.writer
    }

    /// The snapshot the pointer named when this writer opened or claimed the prefix.
    fn pointed(&self) -> Option<&str> {
        self.found
            .as_ref()
            .map(|f| f.name.as_str())
            .filter(|n| !n.is_empty())
    }

    /// Whether `snapshot` (fetched by [`Publisher::fetch_newest_good`]) is an older one
    /// than the pointer named when this writer opened the prefix.
    pub fn older_than_pointed(&self, snapshot: &Published) -> bool {
        let name = snapshot.path.file_name().map(|n| n.to_string_lossy());
        matches!((name, self.pointed()), (Some(n), Some(p)) if n != p)
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
        let Some(pointed) = self.pointed() else {
            return Ok(None);
        };
        let newest = folder_id(pointed).unwrap_or(u64::MAX);
        let mut names = vec![pointed.to_string()];
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

    /// Stages the local snapshot `local` (published there as `name`) under this writer's
    /// own folder, with the rejected lines of `rejected` (the file and the bytes of it the
    /// snapshot covers) not yet in a piece, then commits the pointer and prunes.
    /// [`SnapshotError::Fenced`] when another writer published or claimed the prefix since
    /// this one's last pointer.
    pub fn publish(
        &mut self,
        local: &Path,
        name: &str,
        manifest: &Manifest,
        rejected: Option<(&Path, u64)>,
    ) -> Result<(), SnapshotError> {
        let b = self.bucket.clone();
        // The folder is this writer's own: a writer fenced later never overwrote a file
        // of the snapshot another one published.
        let folder = format!("{name}-{}", self.writer);
        let put = |key: Key, bytes: Vec<u8>| {
            self.rt
                .block_on(b.store.put(&key, PutPayload::from(bytes)))
                .map(|_| ())
                .map_err(|e| b.error("writing", &key, e))
        };
        for table in manifest.tables.values() {
            let key = b.key(&format!("{folder}/{}", table.file));
            self.upload(&key, &local.join(&table.file))?;
        }
        let mut pieces = self.pieces.clone();
        if let Some((path, upto)) = rejected {
            let (list, new) = pieces::next(&pieces, upto, &self.writer);
            if let Some((piece, bytes)) = new {
                put(b.key(&piece), read(path, Some(bytes))?)?;
            }
            pieces = list;
        }
        let staged = Manifest {
            rejected_pieces: pieces.clone(),
            ..manifest.clone()
        };
        let json = serde_json::to_vec_pretty(&staged).expect("manifest serializes");
        put(b.key(&format!("{folder}/{MANIFEST_FILE}")), json)?;
        self.commit(&folder)?;
        self.pieces_of.insert(folder.clone(), pieces.clone());
        let link = manifest.chain.map_or(Link::Whole, Link::Chain);
        self.link_of.insert(folder.clone(), link);
        self.pieces = pieces;
        self.history.push_back(folder);
        while self.history.len() > self.keep {
            if let Some(gone) = self.history.pop_front() {
                self.pieces_of.remove(&gone);
            }
        }
        if let Err(e) = self.prune() {
            tracing::warn!(error = %e, "older snapshots could not be removed; the next publish tries again");
        }
        Ok(())
    }

    /// Puts the file `path` as `key`: at once when it is small, else in parts streamed
    /// from the disk ([`PART_BYTES`] each, four at a time), so neither the whole file is
    /// held in memory nor one request has to carry it within the client's timeout.
    fn upload(&self, key: &Key, path: &Path) -> Result<(), SnapshotError> {
        let b = &self.bucket;
        let io = |source| SnapshotError::Io {
            what: "reading",
            path: path.to_path_buf(),
            source,
        };
        let size = std::fs::metadata(path).map_err(io)?.len();
        let part = PART_BYTES;
        if size <= part as u64 {
            let bytes = read(path, None)?;
            return self
                .rt
                .block_on(b.store.put(key, PutPayload::from(bytes)))
                .map(|_| ())
                .map_err(|e| b.error("writing", key, e));
        }
        let store_error = |e| b.error("writing", key, e);
        self.rt.block_on(async {
            let upload = b.store.put_multipart(key).await.map_err(store_error)?;
            let mut parts = WriteMultipart::new_with_chunk_size(upload, part);
            let mut file = std::fs::File::open(path).map_err(io)?;
            let mut buf = vec![0; part];
            let sent = loop {
                let n = match read_up_to(&mut file, &mut buf) {
                    Ok(0) => break Ok(()),
                    Ok(n) => n,
                    Err(e) => break Err(io(e)),
                };
                if let Err(e) = parts.wait_for_capacity(4).await {
                    break Err(store_error(e));
                }
                parts.write(&buf[..n]);
            };
            match sent {
                Ok(()) => parts.finish().await.map(|_| ()).map_err(store_error),
                Err(e) => {
                    let _ = parts.abort().await;
                    Err(e)
                }
            }
        })
    }

    /// Replaces the pointer with one naming `folder`, conditionally on the one this writer
    /// knows; whatever the answer, decided on the pointer read back.
    fn commit(&mut self, folder: &str) -> Result<(), SnapshotError> {
        let key = self.bucket.key(LATEST_FILE);
        let text = Pointer::text(folder, &self.writer, self.epoch);
        // Twice at most: once more when the pointer turns out to be this writer's own
        // earlier one, whose answer was lost (its ETag was never learnt).
        for _ in 0..2 {
            match self.put_pointer(&text) {
                Put::Landed(e_tag) => {
                    self.e_tag = Some(e_tag);
                    return Ok(());
                }
                Put::Other(found, _) => {
                    return Err(SnapshotError::Fenced {
                        url: self.bucket.url.clone(),
                        detail: format!(
                            "the pointer names {} of writer {} (epoch {})",
                            if found.name.is_empty() {
                                "no snapshot"
                            } else {
                                &found.name
                            },
                            found.writer.as_deref().unwrap_or("unknown"),
                            found.epoch
                        ),
                    })
                }
                Put::Own(found, e_tag, e) => {
                    // An earlier publish of this writer landed with its answer lost: its
                    // folder is a pointer's, kept like the others.
                    if !found.name.is_empty() && !self.history.contains(&found.name) {
                        self.history.push_back(found.name);
                    }
                    self.e_tag = e_tag;
                    if !refused(&e) {
                        return Err(self.bucket.error("publishing", &key, e));
                    }
                }
                Put::Failed(e) => return Err(self.bucket.error("publishing", &key, e)),
                Put::NoETag => return Err(self.no_e_tag()),
            }
        }
        Err(SnapshotError::Fenced {
            url: self.bucket.url.clone(),
            detail: "the pointer changed twice under this writer's own".into(),
        })
    }

    /// Puts `text` as the pointer, conditionally on the ETag this writer knows (or on
    /// there being none); a put that did not plainly succeed is decided by reading the
    /// pointer back.
    fn put_pointer(&self, text: &str) -> Put {
        let b = &self.bucket;
        let mode = match &self.e_tag {
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
        let key = b.key(LATEST_FILE);
        let put = b
            .store
            .put_opts(&key, PutPayload::from(text.to_string().into_bytes()), opts);
        let error = match self.rt.block_on(put) {
            Ok(object_store::PutResult {
                e_tag: Some(e_tag), ..
            }) => return Put::Landed(e_tag),
            // Landed, without an ETag: the one read back, if the store gives any.
            Ok(_) => object_store::Error::Generic {
                store: "S3",
                source: "the pointer put was answered without an ETag".into(),
            },
            Err(e) => e,
        };
        // This very put, landed with its answer lost; an earlier one of this writer
        // likewise; another writer's pointer; or a store that failed.
        match self.read_pointer() {
            Ok(Some((_, None))) => Put::NoETag,
            Ok(Some((found, Some(e_tag)))) if found.raw == text => Put::Landed(e_tag),
            Ok(Some((found, e_tag))) if found.writer.as_deref() == Some(&self.writer) => {
                Put::Own(found, e_tag, error)
            }
            Ok(Some((found, e_tag))) => Put::Other(found, e_tag),
            Ok(None) | Err(_) => Put::Failed(error),
        }
    }

    /// The pointer and its ETag; none when there is no pointer.
    fn read_pointer(&self) -> Result<Option<(Pointer, Option<String>)>, SnapshotError> {
        let b = &self.bucket;
        let key = b.key(LATEST_FILE);
        match self.rt.block_on(get_whole(b, &key)) {
            Ok((bytes, e_tag)) => Ok(Some((Pointer::parse(&bytes), e_tag))),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(b.error("reading", &key, e)),
        }
    }
}

/// A conditional put refused (the pointer is not the one this writer knew).
fn refused(e: &object_store::Error) -> bool {
    matches!(
        e,
        object_store::Error::Precondition { .. } | object_store::Error::AlreadyExists { .. }
    )
}

/// The size past which a file is uploaded in parts, and of each part: 16 MiB (S3 needs at
/// least 5 MiB for every part but the last).
const PART_BYTES: usize = 16 << 20;

/// Fills `buf` from `file` as far as it goes; the bytes read (0 at the end).
fn read_up_to(file: &mut std::fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// The bytes of `path`, or of `range` of them.
fn read(path: &Path, range: Option<std::ops::Range<u64>>) -> Result<Vec<u8>, SnapshotError> {
    let io = |source| SnapshotError::Io {
        what: "reading",
        path: path.to_path_buf(),
        source,
    };
    let Some(range) = range else {
        return std::fs::read(path).map_err(io);
    };
    let mut file = std::fs::File::open(path).map_err(io)?;
    std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(range.start)).map_err(io)?;
    let mut bytes = vec![0; (range.end - range.start) as usize];
    file.read_exact(&mut bytes).map_err(io)?;
    Ok(bytes)
}
