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
/// are then answered 500, as when an answer is lost after the write.
#[derive(Default)]
pub struct Faults {
    pub before: AtomicUsize,
    pub after_pointer: AtomicUsize,
    /// Requests answered with a fault so far.
    pub injected: AtomicUsize,
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
        Box::pin(async move {
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
            let resp = hyper::service::Service::call(&inner, req).await?;
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
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        rt.spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
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
        vec![
            ("AWS_ENDPOINT_URL", format!("http://{}", self.addr)),
            ("AWS_ALLOW_HTTP", "true".into()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY.into()),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY.into()),
        ]
    }

    /// `storepulse` with `args` in an environment of only `PATH` and the variables that
    /// point it at this server (as the tests' `storepulse_command`; the benches use it too).
    pub fn command(&self, args: &[&str]) -> std::process::Command {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_storepulse"));
        cmd.args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(self.env());
        cmd
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
