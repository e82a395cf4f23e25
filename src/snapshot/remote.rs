//! Snapshots in object storage over the S3 protocol: a `--snapshot-dir` of the form
//! `s3://bucket/prefix` (S3, MinIO, Ceph, R2, ...), configured from the standard
//! environment (`AWS_ENDPOINT_URL`, `AWS_REGION`, `AWS_ACCESS_KEY_ID`,
//! `AWS_SECRET_ACCESS_KEY`, `AWS_ALLOW_HTTP`).
//!
//! A snapshot is written and published in a local folder first, as always; then its files
//! are put under `<prefix>/snap-<N>-<writer>/` (a folder no other writer uses), the
//! manifest last, and the bucket's `LATEST` pointer is
//! replaced by a **conditional put**: If-None-Match for the first pointer, If-Match on the
//! ETag of the pointer this writer published last for the next ones. A reader that follows
//! `LATEST` never sees a part of a snapshot, and a second writer of one prefix is refused
//! (it never overwrites the other's newer pointer). A lost answer to a pointer put that
//! did land (the store's retry then finds the condition false) is told apart by reading
//! the pointer back: it names this writer.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use object_store::aws::{AmazonS3Builder, S3ConditionalPut};
use object_store::client::{
    HttpClient, HttpConnector, HttpError, HttpRequest, HttpResponse, HttpService, ReqwestConnector,
};
use object_store::path::Path as Key;
use object_store::ClientOptions;
use object_store::{
    BackoffConfig, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, RetryConfig,
    UpdateVersion,
};

use super::manifest::{Manifest, MANIFEST_FILE};
use super::{parse_id, Published, SnapshotError, LATEST_FILE, PREFIX};

/// The id of a bucket's snapshot folder, `snap-<id>-<writer>`.
fn folder_id(name: &str) -> Option<u64> {
    let rest = name.strip_prefix(PREFIX)?;
    parse_id(&format!("{PREFIX}{}", rest.split('-').next()?))
}

/// Where snapshots live: a local folder, or a prefix of a bucket.
#[derive(Debug, Clone)]
pub enum Location {
    Dir(PathBuf),
    Bucket(Bucket),
}

impl Location {
    /// A plain path, or `s3://bucket/prefix` (the store built from the environment).
    pub fn parse(text: &Path) -> Result<Location, SnapshotError> {
        let s = text.to_string_lossy();
        let Some(rest) = s.strip_prefix("s3://") else {
            if let Some((scheme, _)) = s.split_once("://") {
                return Err(SnapshotError::Config(format!(
                    "{s}: `{scheme}://` is not a snapshot location (a path, or s3://bucket/prefix)"
                )));
            }
            return Ok(Location::Dir(text.to_path_buf()));
        };
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(SnapshotError::Config(format!("{s}: no bucket name")));
        }
        Ok(Location::Bucket(Bucket {
            url: format!("s3://{bucket}/{}", prefix.trim_matches('/')),
            bucket: bucket.to_string(),
            prefix: Key::from(prefix.trim_matches('/')),
            store: store_from_env(bucket)?,
        }))
    }
}

/// A prefix of a bucket, with the store that reaches it.
#[derive(Clone)]
pub struct Bucket {
    /// `s3://bucket/prefix`, for messages.
    pub url: String,
    pub bucket: String,
    pub prefix: Key,
    pub store: Arc<dyn ObjectStore>,
}

impl std::fmt::Debug for Bucket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.url)
    }
}

impl Bucket {
    /// The key of `name` below the prefix (`name` may hold `/`).
    pub fn key(&self, name: &str) -> Key {
        name.split('/')
            .fold(self.prefix.clone(), |k, part| k.clone().join(part))
    }

    /// The local folder a process writes its snapshots in before publishing them here:
    /// its own, under `TMPDIR`, removed when it ends well.
    pub fn work_dir(&self) -> PathBuf {
        let name: String = self
            .url
            .trim_start_matches("s3://")
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect();
        std::env::temp_dir().join(format!("storepulse-{name}-{}", std::process::id()))
    }

    /// The prefix `sub` below this one.
    pub fn child(&self, sub: &str) -> Bucket {
        Bucket {
            url: format!("{}/{sub}", self.url.trim_end_matches('/')),
            prefix: self.key(sub),
            ..self.clone()
        }
    }

    /// `s3://bucket/<key>`, as DataFusion reads it through the registered store.
    pub fn object_url(&self, key: &Key) -> String {
        format!("s3://{}/{key}", self.bucket)
    }

    fn error(&self, what: &'static str, key: &Key, source: object_store::Error) -> SnapshotError {
        SnapshotError::Store {
            what,
            url: self.object_url(key),
            source: Box::new(source),
        }
    }
}

/// Retries of transient store errors (5xx, timeouts, throttling): up to 6 (or
/// `STOREPULSE_STORE_RETRIES`) over at most a minute, with exponential backoff from 100 ms.
fn retry() -> RetryConfig {
    let retries = std::env::var("STOREPULSE_STORE_RETRIES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(6);
    RetryConfig {
        backoff: BackoffConfig {
            init_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(10),
            base: 2.0,
        },
        max_retries: retries,
        retry_timeout: Duration::from_secs(60),
    }
}

/// The store's HTTP client, counting the answers that make it retry (5xx, 429) and the
/// requests that got none, in `storepulse_store_errors_total`.
#[derive(Debug)]
struct Counting;

#[derive(Debug)]
struct CountingClient(HttpClient);

#[async_trait::async_trait]
impl HttpService for CountingClient {
    async fn call(&self, req: HttpRequest) -> Result<HttpResponse, HttpError> {
        let answer = self.0.execute(req).await;
        let transient = match &answer {
            Ok(r) => r.status().is_server_error() || r.status().as_u16() == 429,
            Err(_) => true,
        };
        if transient {
            crate::metrics::events::StoreError.emit();
        }
        answer
    }
}

impl HttpConnector for Counting {
    fn connect(&self, options: &ClientOptions) -> object_store::Result<HttpClient> {
        let inner = ReqwestConnector::default().connect(options)?;
        Ok(HttpClient::new(CountingClient(inner)))
    }
}

/// The store of `bucket` from the standard environment, refusing up front what would
/// only fail at the first request (or go to the cloud's instance metadata service).
fn store_from_env(bucket: &str) -> Result<Arc<dyn ObjectStore>, SnapshotError> {
    let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    for key in ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"] {
        if var(key).is_none() {
            return Err(SnapshotError::Config(format!(
                "s3://{bucket}: {key} is not set (set AWS_ACCESS_KEY_ID and \
                 AWS_SECRET_ACCESS_KEY, and AWS_ENDPOINT_URL for a store other than AWS)"
            )));
        }
    }
    let endpoint = var("AWS_ENDPOINT_URL").or_else(|| var("AWS_ENDPOINT"));
    if let Some(e) = &endpoint {
        let allowed = var("AWS_ALLOW_HTTP").is_some_and(|v| v.eq_ignore_ascii_case("true"));
        if e.starts_with("http://") && !allowed {
            return Err(SnapshotError::Config(format!(
                "AWS_ENDPOINT_URL={e} is plain HTTP: set AWS_ALLOW_HTTP=true for a local \
                 endpoint"
            )));
        }
    }
    let mut builder = AmazonS3Builder::from_env()
        .with_http_connector(Counting)
        .with_bucket_name(bucket)
        .with_conditional_put(S3ConditionalPut::ETagMatch)
        .with_retry(retry());
    if let Some(e) = endpoint {
        builder = builder.with_endpoint(e);
    }
    if var("AWS_REGION").is_none() && var("AWS_DEFAULT_REGION").is_none() {
        builder = builder.with_region("us-east-1");
    }
    let store = builder
        .build()
        .map_err(|e| SnapshotError::Config(format!("s3://{bucket}: {e}")))?;
    Ok(Arc::new(store))
}

/// The runtime of the store's calls from the synchronous snapshot writers: one for the
/// process, whose worker keeps driving the connections the store's client pools (a pooled
/// connection of a runtime no longer driven would hang its next request until a timeout).
fn runtime() -> Result<&'static tokio::runtime::Runtime, SnapshotError> {
    static RUNTIME: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    if let Some(rt) = RUNTIME.get() {
        return Ok(rt);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("storepulse-store")
        .enable_all()
        .build()
        .map_err(|source| SnapshotError::Io {
            what: "starting the object store client for",
            path: PathBuf::new(),
            source,
        })?;
    Ok(RUNTIME.get_or_init(|| rt))
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

    /// The snapshot the pointer named when this writer opened the prefix.
    pub fn pointed(&self) -> Option<&str> {
        self.pointed.as_deref()
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
        self.prune()
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

    /// Removes all but the newest `keep` snapshots under the prefix.
    fn prune(&self) -> Result<(), SnapshotError> {
        let ids = self.ids()?;
        let b = &self.bucket;
        for (_, folder) in &ids[..ids.len().saturating_sub(self.keep)] {
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
fn pointed_name(text: &[u8]) -> String {
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

/// The snapshot `name` under `bucket`, manifest and tables fetched into memory.
pub async fn fetch(bucket: &Bucket, name: &str) -> Result<Published, SnapshotError> {
    let manifest_key = bucket.key(&format!("{name}/{MANIFEST_FILE}"));
    let bytes = get_bytes(bucket, &manifest_key).await?;
    let manifest: Manifest =
        serde_json::from_slice(&bytes).map_err(|source| SnapshotError::Manifest {
            path: PathBuf::from(bucket.object_url(&manifest_key)),
            source,
        })?;
    let mut files = BTreeMap::new();
    for table in manifest.tables.values() {
        let key = bucket.key(&format!("{name}/{}", table.file));
        files.insert(table.file.clone(), get_bytes(bucket, &key).await?);
    }
    Ok(Published {
        path: PathBuf::from(format!("{}/{name}", bucket.url)),
        manifest,
        fetched: Some(Arc::new(files)),
    })
}

/// The latest snapshot of each partition below `<bucket>/partitions/`: its manifest only
/// (`fetched` is none: see [`fetch_tables`]).
pub async fn partition_pointers(bucket: &Bucket) -> Result<Vec<Published>, SnapshotError> {
    let parts = bucket.child(super::PARTITIONS_DIR);
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
            Ok((pointed, manifest)) => out.push(Published {
                path: PathBuf::from(format!("{}/{pointed}", part.url)),
                manifest,
                fetched: None,
            }),
            Err(SnapshotError::None(_)) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

/// `snapshot` (found by [`partition_pointers`] in `bucket`) with its tables fetched.
pub async fn fetch_tables(
    bucket: &Bucket,
    snapshot: &Published,
) -> Result<Published, SnapshotError> {
    let url = snapshot.path.to_string_lossy();
    let relative = url
        .strip_prefix(&format!("{}/", bucket.url.trim_end_matches('/')))
        .unwrap_or(&url);
    let (folder, name) = relative.rsplit_once('/').unwrap_or(("", relative));
    fetch(&bucket.child(folder), name).await
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

/// Runs `future` on the store's runtime, from a thread that is not in a runtime.
pub fn block_on<F: std::future::Future>(future: F) -> Result<F::Output, SnapshotError> {
    Ok(runtime()?.block_on(future))
}

/// The snapshot a bucket's `LATEST` points at: its name and manifest.
pub async fn latest(bucket: &Bucket) -> Result<(String, Manifest), SnapshotError> {
    let key = bucket.key(LATEST_FILE);
    let get = |key: Key| async move {
        match bucket.store.get(&key).await {
            Ok(got) => got
                .bytes()
                .await
                .map_err(|e| bucket.error("reading", &key, e)),
            Err(object_store::Error::NotFound { .. }) => {
                Err(SnapshotError::None(PathBuf::from(&bucket.url)))
            }
            Err(e) => Err(bucket.error("reading", &key, e)),
        }
    };
    let name = pointed_name(&get(key).await?);
    let manifest_key = bucket.key(&format!("{name}/{MANIFEST_FILE}"));
    let bytes = get(manifest_key.clone()).await?;
    let manifest = serde_json::from_slice(&bytes).map_err(|source| SnapshotError::Manifest {
        path: PathBuf::from(bucket.object_url(&manifest_key)),
        source,
    })?;
    Ok((name, manifest))
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
    let parts = bucket.child(super::PARTITIONS_DIR);
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
    let view = text(bucket.child(super::view::VIEW_DIR)).await;
    if !view.is_empty() {
        v.push_str(&format!("|merged:{view}"));
    }
    v
}
