//! An S3-protocol server (s3s over s3s-fs, a bucket being a folder) on a loopback port,
//! inside the test process, on a runtime of its own; it stops when dropped.
//!
//! s3s-fs checks If-Match / If-None-Match and then writes, without a lock, so two
//! conditional puts to one key could both pass. The server runs every mutating request
//! (PUT, POST, DELETE) one at a time, which makes check and write one step, as S3 does,
//! and can fail some of them on purpose ([`Faults`]).

#![allow(dead_code)]

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use object_store::aws::{AmazonS3Builder, S3ConditionalPut};
use s3s::auth::SimpleAuth;
use s3s::service::{S3Service, S3ServiceBuilder};
use storepulse::snapshot::Bucket;
use tokio::sync::Mutex;

pub const ACCESS_KEY: &str = "storepulse-test-key";
pub const SECRET_KEY: &str = "storepulse-test-secret";

#[derive(Clone)]
struct Serialized {
    inner: S3Service,
    lock: Arc<Mutex<()>>,
    faults: Arc<Faults>,
}

/// Faults of mutating requests, set by a test: the next `before` ones are answered 503
/// without reaching the store; the next `after_pointer` puts of a `LATEST` take effect and
/// are then answered 500, as when an answer is lost after the write. A [`Hook`] decides
/// the fate of chosen requests of any kind.
#[derive(Default)]
pub struct Faults {
    pub before: AtomicUsize,
    pub after_pointer: AtomicUsize,
    /// Requests answered with a fault so far.
    pub injected: AtomicUsize,
    hook: std::sync::Mutex<Option<Hook>>,
}

/// A request as a [`Hook`] sees it: its method and its key in the bucket.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: http::Method,
    pub key: String,
    /// The query string (`partNumber=1&uploadId=...` for a part of a multipart upload).
    pub query: String,
}

impl Request {
    pub fn is_put(&self, key_end: &str) -> bool {
        self.method == http::Method::PUT && self.key.ends_with(key_end)
    }

    /// A DELETE, or a bulk delete (`POST ?delete`, as the S3 client removes objects).
    pub fn is_delete(&self) -> bool {
        self.method == http::Method::DELETE
            || (self.method == http::Method::POST && self.query.starts_with("delete"))
    }
}

/// What happens to a request.
pub enum Action {
    Pass,
    /// Answered with this status without reaching the store.
    Fail(u16),
    /// Carried out, then answered with this status (its answer lost).
    FailAfter(u16),
    /// Held until the gate gets a permit, then carried out.
    Hold(Arc<tokio::sync::Semaphore>),
    /// Carried out, and its answer cut off halfway through the body (the connection
    /// closes before the length the answer announced).
    CutBody,
    /// Carried out, and answered without its `ETag` header (a store without them).
    NoETag,
}

/// Decides each request's [`Action`], in the order they arrive.
pub type Hook = Box<dyn FnMut(&Request) -> Action + Send>;

impl Faults {
    /// Every request goes through `hook` from now on.
    pub fn hook(&self, hook: impl FnMut(&Request) -> Action + Send + 'static) {
        *self.hook.lock().unwrap() = Some(Box::new(hook));
    }

    pub fn clear_hook(&self) {
        *self.hook.lock().unwrap() = None;
    }

    fn action(&self, req: &Request) -> Action {
        match self.hook.lock().unwrap().as_mut() {
            Some(hook) => hook(req),
            None => Action::Pass,
        }
    }
}

/// A gate for [`Action::Hold`]: closed until [`open`] adds a permit.
pub fn gate() -> Arc<tokio::sync::Semaphore> {
    Arc::new(tokio::sync::Semaphore::new(0))
}

/// Lets one request held at `gate` through.
pub fn open(gate: &tokio::sync::Semaphore) {
    gate.add_permits(1);
}

fn take(n: &AtomicUsize) -> bool {
    n.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |v| v.checked_sub(1))
        .is_ok()
}

fn error_response(status: u16, code: &str) -> s3s::HttpResponse {
    let body =
        format!("<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>{code}</Code></Error>");
    let mut r = http::Response::new(s3s::Body::from(body));
    *r.status_mut() = http::StatusCode::from_u16(status).unwrap();
    r
}

/// A body that yields its bytes, then fails: the connection drops mid-answer.
struct CutOff(Option<bytes::Bytes>);

impl hyper::body::Body for CutOff {
    type Data = bytes::Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<bytes::Bytes>, std::io::Error>>> {
        std::task::Poll::Ready(Some(match self.0.take() {
            Some(b) => Ok(hyper::body::Frame::data(b)),
            None => Err(std::io::Error::other("cut off")),
        }))
    }
}

/// The S3 error code of a status a fault answers with.
fn code(status: u16) -> &'static str {
    match status {
        403 => "AccessDenied",
        404 => "NoSuchKey",
        412 => "PreconditionFailed",
        503 => "SlowDown",
        _ => "InternalError",
    }
}

type BoxFut = Pin<Box<dyn Future<Output = Result<s3s::HttpResponse, s3s::HttpError>> + Send>>;

impl hyper::service::Service<http::Request<Incoming>> for Serialized {
    type Response = s3s::HttpResponse;
    type Error = s3s::HttpError;
    type Future = BoxFut;

    fn call(&self, req: http::Request<Incoming>) -> Self::Future {
        let mutating = !req.method().is_safe();
        let pointer = req.method() == http::Method::PUT && req.uri().path().ends_with("/LATEST");
        let inner = self.inner.clone();
        let lock = self.lock.clone();
        let faults = self.faults.clone();
        let seen = Request {
            method: req.method().clone(),
            key: req.uri().path().trim_start_matches('/').to_string(),
            query: req.uri().query().unwrap_or_default().to_string(),
        };
        let action = faults.action(&seen);
        Box::pin(async move {
            let mut cut = false;
            let mut no_e_tag = false;
            let after = match action {
                Action::Pass => None,
                Action::NoETag => {
                    no_e_tag = true;
                    None
                }
                Action::CutBody => {
                    cut = true;
                    None
                }
                Action::Fail(status) => {
                    faults.injected.fetch_add(1, Ordering::SeqCst);
                    let _ = http_body_util::BodyExt::collect(req.into_body()).await;
                    return Ok(error_response(status, code(status)));
                }
                Action::FailAfter(status) => Some(status),
                // Held before the lock: other requests go on meanwhile.
                Action::Hold(gate) => {
                    let _ = gate.acquire().await.map(|p| p.forget());
                    None
                }
            };
            let _guard = if mutating {
                Some(lock.lock().await)
            } else {
                None
            };
            if mutating && take(&faults.before) {
                faults.injected.fetch_add(1, Ordering::SeqCst);
                // The body is read first: answering early closes the connection under the
                // client.
                let _ = http_body_util::BodyExt::collect(req.into_body()).await;
                return Ok(error_response(503, "SlowDown"));
            }
            let mut resp = hyper::service::Service::call(&inner, req).await?;
            if no_e_tag {
                resp.headers_mut().remove(http::header::ETAG);
            }
            if let Some(status) = after {
                faults.injected.fetch_add(1, Ordering::SeqCst);
                return Ok(error_response(status, code(status)));
            }
            if cut {
                faults.injected.fetch_add(1, Ordering::SeqCst);
                // The length announced stays the whole's; half is sent, then the
                // connection is dropped.
                let (parts, body) = resp.into_parts();
                let bytes = http_body_util::BodyExt::collect(body)
                    .await
                    .map(|b| b.to_bytes())
                    .unwrap_or_default();
                let half = bytes.slice(..bytes.len() / 2);
                let body = s3s::Body::http_body(CutOff(Some(half)));
                return Ok(http::Response::from_parts(parts, body));
            }
            if pointer && resp.status().is_success() && take(&faults.after_pointer) {
                faults.injected.fetch_add(1, Ordering::SeqCst);
                return Ok(error_response(500, "InternalError"));
            }
            Ok(resp)
        })
    }
}

pub struct Server {
    pub addr: SocketAddr,
    /// The server's root: `<root>/<bucket>/<key>`.
    pub root: tempfile::TempDir,
    pub bucket: String,
    pub faults: Arc<Faults>,
    rt: Option<tokio::runtime::Runtime>,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

impl Server {
    /// Starts the server on 127.0.0.1:0 with one (empty) bucket.
    pub fn start(bucket: &str) -> Server {
        Server::start_on(bucket, "127.0.0.1:0")
    }

    /// Starts the server on `addr` with one (empty) bucket.
    pub fn start_on(bucket: &str, addr: &str) -> Server {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join(bucket)).unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let fs = s3s_fs::FileSystem::new(root.path()).unwrap();
        let mut b = S3ServiceBuilder::new(fs);
        b.set_auth(SimpleAuth::from_single(ACCESS_KEY, SECRET_KEY));
        let faults = Arc::new(Faults::default());
        let svc = Serialized {
            inner: b.build(),
            lock: Arc::new(Mutex::new(())),
            faults: faults.clone(),
        };
        let listener = rt.block_on(tokio::net::TcpListener::bind(addr)).unwrap();
        let addr = listener.local_addr().unwrap();
        rt.spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                // An answer goes out in several writes (head, body): without this, Nagle's
                // algorithm holds the last one for the client's delayed ACK, about 40 ms a
                // request, which a real S3 endpoint does not add.
                let _ = sock.set_nodelay(true);
                let svc = svc.clone();
                tokio::spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(sock), svc)
                        .await;
                });
            }
        });
        Server {
            addr,
            root,
            bucket: bucket.to_string(),
            faults,
            rt: Some(rt),
        }
    }

    /// The standard variables that point `storepulse` at this server.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        env_for(&self.addr.to_string())
    }

    /// `storepulse` with `args` in an environment of only `PATH` and the variables that
    /// point it at this server (as the tests' `storepulse_command`; the benches use it too).
    pub fn command(&self, args: &[&str]) -> std::process::Command {
        command_for(&self.addr.to_string(), args)
    }

    /// `storepulse` with `args` against this server, insisting on success: its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.command(args).output().unwrap();
        assert!(
            out.status.success(),
            "storepulse {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// `s3://<bucket>/<prefix>`.
    pub fn url(&self, prefix: &str) -> String {
        format!("s3://{}/{prefix}", self.bucket)
    }

    /// Where the server keeps the object `key` of its bucket.
    pub fn file(&self, key: &str) -> PathBuf {
        self.root.path().join(&self.bucket).join(key)
    }

    /// A prefix of the bucket, with a store built as `storepulse` builds it from the
    /// variables (given here directly: tests do not change their own environment).
    pub fn prefix(&self, prefix: &str) -> Bucket {
        let store = AmazonS3Builder::new()
            .with_bucket_name(&self.bucket)
            .with_endpoint(format!("http://{}", self.addr))
            .with_allow_http(true)
            .with_region("us-east-1")
            .with_access_key_id(ACCESS_KEY)
            .with_secret_access_key(SECRET_KEY)
            .with_conditional_put(S3ConditionalPut::ETagMatch)
            // Two quick retries: a test that makes requests fail does not wait minutes.
            .with_retry(object_store::RetryConfig {
                backoff: object_store::BackoffConfig {
                    init_backoff: std::time::Duration::from_millis(10),
                    max_backoff: std::time::Duration::from_millis(50),
                    base: 2.0,
                },
                max_retries: 2,
                retry_timeout: std::time::Duration::from_secs(5),
            })
            .build()
            .unwrap();
        Bucket {
            url: self.url(prefix),
            bucket: self.bucket.clone(),
            prefix: object_store::path::Path::from(prefix),
            store: Arc::new(store),
        }
    }
}

/// The standard variables that point `storepulse` at a server on `addr`.
pub fn env_for(addr: &str) -> Vec<(&'static str, String)> {
    vec![
        ("AWS_ENDPOINT_URL", format!("http://{addr}")),
        ("AWS_ALLOW_HTTP", "true".into()),
        ("AWS_REGION", "us-east-1".into()),
        ("AWS_ACCESS_KEY_ID", ACCESS_KEY.into()),
        ("AWS_SECRET_ACCESS_KEY", SECRET_KEY.into()),
    ]
}

/// `storepulse` with `args` in an environment of only `PATH` and the variables that point
/// it at a server on `addr` (which may not be listening yet). `STOREPULSE_BIN` names
/// another binary (the benches, run with a release build).
pub fn command_for(addr: &str, args: &[&str]) -> std::process::Command {
    let bin = std::env::var("STOREPULSE_BIN").unwrap_or(env!("CARGO_BIN_EXE_storepulse").into());
    let mut cmd = std::process::Command::new(bin);
    cmd.args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env_for(addr));
    cmd
}

/// The objects below `dir` (a folder of the server's root), as relative paths, sorted.
pub fn objects(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p.strip_prefix(dir).unwrap().display().to_string());
            }
        }
    }
    out.sort();
    out
}

/// The text of `prefix`'s pointer in the server's folder, and the snapshot it names.
pub fn pointer(server: &Server, prefix: &str) -> (String, String) {
    let text = std::fs::read_to_string(server.file(&format!("{prefix}/LATEST"))).unwrap();
    let name = text.lines().next().unwrap_or_default().to_string();
    (text, name)
}

/// The rejected lines the pointed snapshot of `prefix` covers: the pieces its manifest
/// lists, read from the server's folder and put together.
pub fn rejected_of(server: &Server, prefix: &str) -> Vec<u8> {
    let (_, name) = pointer(server, prefix);
    let manifest = server.file(&format!("{prefix}/{name}/manifest.json"));
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(manifest).unwrap()).unwrap();
    let mut out = Vec::new();
    for piece in manifest["rejected_pieces"].as_array().into_iter().flatten() {
        let piece = server.file(&format!("{prefix}/{}", piece.as_str().unwrap()));
        out.extend(std::fs::read(piece).unwrap());
    }
    out
}
