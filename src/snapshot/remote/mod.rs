//! Snapshots in object storage over the S3 protocol: a `--snapshot-dir` of the form
//! `s3://bucket/prefix` (S3, MinIO, Ceph, R2, ...), configured from the standard
//! environment (`AWS_ENDPOINT_URL`, `AWS_REGION`, `AWS_ALLOW_HTTP`) and credentials from
//! one of the sources [`Credentials`] names.
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

//!
//! `publisher.rs` writes (the conditional pointer, pruning), `read.rs` reads (pointers,
//! manifests, tables fetched into memory).

mod pieces;
mod publisher;
mod read;

pub use publisher::{Publisher, REJECTED_DIR};
pub use read::{
    check_run_prefix, fetch, fetch_good, fetch_set, fetch_tables, get_file, latest, latest_run,
    partition_pointers, pointers, put_file, rejected_lines, set_shape, Pointer,
};

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use object_store::aws::{AmazonS3Builder, S3ConditionalPut};
use object_store::client::{
    HttpClient, HttpConnector, HttpError, HttpRequest, HttpResponse, HttpService, ReqwestConnector,
};
use object_store::path::Path as Key;
use object_store::{BackoffConfig, ClientOptions, ObjectStore, RetryConfig};

use super::SnapshotError;

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

    /// `s3://bucket/<key>`, as DataFusion reads it through the registered store: the key
    /// percent-encoded, so that the URL decodes to exactly the key (a prefix with `#`,
    /// `?`, `%`, `[`... would otherwise name another object, or none).
    pub fn object_url(&self, key: &Key) -> String {
        let encoded: String = key
            .as_ref()
            .bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'/' => {
                    char::from(b).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect();
        format!("s3://{}/{encoded}", self.bucket)
    }

    fn error(&self, what: &'static str, key: &Key, source: object_store::Error) -> SnapshotError {
        SnapshotError::Store {
            what,
            url: format!("s3://{}/{key}", self.bucket),
            source: Box::new(source),
        }
    }
}

/// Retries of transient store errors (5xx, timeouts, throttling, refused connections):
/// for up to a minute, however many tries that takes, with backoff from 100 ms to 5 s, so a
/// store that is away for less than that delays a snapshot and stops nothing.
/// `STOREPULSE_STORE_RETRIES` caps the tries (tests that make the store fail on purpose).
fn retry() -> RetryConfig {
    let retries = std::env::var("STOREPULSE_STORE_RETRIES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(usize::MAX);
    RetryConfig {
        backoff: BackoffConfig {
            init_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            base: 2.0,
        },
        max_retries: retries,
        retry_timeout: STORE_RETRY_TIME,
    }
}

/// How long a store request is retried before it fails.
pub const STORE_RETRY_TIME: Duration = Duration::from_secs(60);

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

/// Where the store's credentials come from: the sources object_store's S3 client knows,
/// found from the standard variables in its order. Instance credentials (the cloud
/// machine's role, from its metadata service) are used only when named
/// (`STOREPULSE_S3_CREDENTIALS=instance`): elsewhere an unconfigured process would wait on
/// a metadata service that is not there instead of saying what is missing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credentials {
    /// `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY` (and `AWS_SESSION_TOKEN`).
    Static,
    /// `AWS_WEB_IDENTITY_TOKEN_FILE` and `AWS_ROLE_ARN` (Kubernetes service accounts).
    WebIdentity,
    /// `AWS_CONTAINER_CREDENTIALS_RELATIVE_URI` (ECS tasks), or
    /// `AWS_CONTAINER_CREDENTIALS_FULL_URI` with `AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE`
    /// (EKS pod identity).
    Container,
    /// The machine's metadata service (`AWS_METADATA_ENDPOINT` to name another).
    Instance,
}

impl Credentials {
    fn name(self) -> &'static str {
        match self {
            Credentials::Static => "static",
            Credentials::WebIdentity => "web-identity",
            Credentials::Container => "container",
            Credentials::Instance => "instance",
        }
    }
}

const CREDENTIAL_SOURCES: &str = "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY; or \
    AWS_WEB_IDENTITY_TOKEN_FILE and AWS_ROLE_ARN; or AWS_CONTAINER_CREDENTIALS_RELATIVE_URI; \
    or AWS_CONTAINER_CREDENTIALS_FULL_URI and AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE; or \
    STOREPULSE_S3_CREDENTIALS=instance on a cloud machine with a role (and AWS_ENDPOINT_URL \
    for a store other than AWS)";

/// The credential source the variables (`var`) configure, or what is missing, before any
/// request. `STOREPULSE_S3_CREDENTIALS` (static, web-identity, container, instance) insists
/// on one source.
pub fn credentials(var: &dyn Fn(&str) -> Option<String>) -> Result<Credentials, String> {
    let pair = |a: &str, b: &str| -> Result<bool, String> {
        match (var(a), var(b)) {
            (Some(_), Some(_)) => Ok(true),
            (None, None) => Ok(false),
            (Some(_), None) => Err(format!("{a} is set but {b} is not")),
            (None, Some(_)) => Err(format!("{b} is set but {a} is not")),
        }
    };
    let file = |k: &str| -> Result<(), String> {
        let path = var(k).unwrap_or_default();
        match std::fs::File::open(&path) {
            Ok(_) => Ok(()),
            Err(e) => Err(format!("{k}={path} cannot be read: {e}")),
        }
    };
    let chosen = var("STOREPULSE_S3_CREDENTIALS");
    let found = if pair("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")? {
        Credentials::Static
    } else if pair("AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ROLE_ARN")? {
        file("AWS_WEB_IDENTITY_TOKEN_FILE")?;
        Credentials::WebIdentity
    } else if var("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI").is_some() {
        Credentials::Container
    } else if pair(
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
    )? {
        file("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE")?;
        Credentials::Container
    } else if chosen.as_deref() == Some("instance") {
        Credentials::Instance
    } else {
        return Err(format!("no credentials: {CREDENTIAL_SOURCES}"));
    };
    match chosen {
        Some(c) if c != found.name() => Err(format!(
            "STOREPULSE_S3_CREDENTIALS={c}, but the variables set are for {} credentials \
             (the sources: static, web-identity, container, instance)",
            found.name()
        )),
        _ => Ok(found),
    }
}

/// The store of `bucket` from the standard environment, refusing up front what would
/// only fail at the first request (or go to the cloud's instance metadata service).
fn store_from_env(bucket: &str) -> Result<Arc<dyn ObjectStore>, SnapshotError> {
    let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let source =
        credentials(&var).map_err(|e| SnapshotError::Config(format!("s3://{bucket}: {e}")))?;
    tracing::debug!(bucket, credentials = source.name(), "object store");
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

/// Runs `future` on the store's runtime, from a thread that is not in a runtime.
pub fn block_on<F: std::future::Future>(future: F) -> Result<F::Output, SnapshotError> {
    Ok(runtime()?.block_on(future))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_found_from_one_complete_source_or_refused_naming_what_is_missing() {
        let token = tempfile::NamedTempFile::new().unwrap();
        let token = token.path().to_str().unwrap().to_string();
        let ok = Ok;
        type Case<'a> = (Vec<(&'a str, &'a str)>, Result<Credentials, &'a str>);
        let cases: Vec<Case> = vec![
            (
                vec![("AWS_ACCESS_KEY_ID", "k"), ("AWS_SECRET_ACCESS_KEY", "s")],
                ok(Credentials::Static),
            ),
            (
                vec![("AWS_ACCESS_KEY_ID", "k")],
                Err("AWS_ACCESS_KEY_ID is set but AWS_SECRET_ACCESS_KEY is not"),
            ),
            (
                vec![("AWS_SECRET_ACCESS_KEY", "s"), ("AWS_ROLE_ARN", "r")],
                Err("AWS_SECRET_ACCESS_KEY is set but AWS_ACCESS_KEY_ID is not"),
            ),
            (
                vec![
                    ("AWS_WEB_IDENTITY_TOKEN_FILE", &token),
                    ("AWS_ROLE_ARN", "r"),
                ],
                ok(Credentials::WebIdentity),
            ),
            (
                vec![("AWS_ROLE_ARN", "r")],
                Err("AWS_ROLE_ARN is set but AWS_WEB_IDENTITY_TOKEN_FILE is not"),
            ),
            (
                vec![
                    ("AWS_WEB_IDENTITY_TOKEN_FILE", "/no/such/token"),
                    ("AWS_ROLE_ARN", "r"),
                ],
                Err("AWS_WEB_IDENTITY_TOKEN_FILE=/no/such/token cannot be read"),
            ),
            (
                vec![(
                    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
                    "/v2/credentials/x",
                )],
                ok(Credentials::Container),
            ),
            (
                vec![
                    ("AWS_CONTAINER_CREDENTIALS_FULL_URI", "http://127.0.0.1:1/c"),
                    ("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", &token),
                ],
                ok(Credentials::Container),
            ),
            (
                vec![("AWS_CONTAINER_CREDENTIALS_FULL_URI", "http://127.0.0.1:1/c")],
                Err("AWS_CONTAINER_CREDENTIALS_FULL_URI is set but \
                     AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE is not"),
            ),
            (vec![], Err("no credentials: set AWS_ACCESS_KEY_ID and")),
            (vec![("AWS_SESSION_TOKEN", "t")], Err("no credentials")),
            (
                vec![("STOREPULSE_S3_CREDENTIALS", "instance")],
                ok(Credentials::Instance),
            ),
            (
                vec![
                    ("STOREPULSE_S3_CREDENTIALS", "instance"),
                    ("AWS_ACCESS_KEY_ID", "k"),
                    ("AWS_SECRET_ACCESS_KEY", "s"),
                ],
                Err("STOREPULSE_S3_CREDENTIALS=instance, but the variables set are for static"),
            ),
            (
                vec![
                    ("STOREPULSE_S3_CREDENTIALS", "static"),
                    ("AWS_ACCESS_KEY_ID", "k"),
                    ("AWS_SECRET_ACCESS_KEY", "s"),
                ],
                ok(Credentials::Static),
            ),
        ];
        for (vars, want) in cases {
            let var = |k: &str| {
                vars.iter()
                    .find(|(name, _)| *name == k)
                    .map(|(_, v)| v.to_string())
            };
            let got = credentials(&var);
            match (&got, want) {
                (Ok(g), Ok(w)) => assert_eq!(*g, w, "{vars:?}"),
                (Err(g), Err(w)) => assert!(g.starts_with(w), "{vars:?}: {g}"),
                _ => panic!("{vars:?}: got {got:?}, want {want:?}"),
            }
        }
    }
}
