//! Where a bucket's credentials come from, against a real S3-protocol server on loopback
//! (s3s, linked into this test): a configuration that is plainly incomplete is refused
//! before any request, naming what is missing; temporary credentials from an EKS pod
//! identity agent and a cloud machine's metadata service (a server on loopback speaking
//! their protocols) are used.

mod common;
#[path = "common/s3.rs"]
mod s3;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::spawn::storepulse_command;

#[test]
fn a_bucket_without_its_variables_is_refused_naming_them() {
    let server = s3::Server::start("shop");
    let requests = Arc::new(AtomicUsize::new(0));
    let counted = requests.clone();
    server.faults.hook(move |_| {
        counted.fetch_add(1, Ordering::SeqCst);
        s3::Action::Pass
    });
    let url = server.url("x");
    let out = storepulse_command(&["query", "--snapshot-dir", &url, "SELECT 1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY; or"),
        "{err}"
    );
    // Half a source is refused too, naming the missing half.
    let mut cmd = storepulse_command(&["query", "--snapshot-dir", &url, "SELECT 1"]);
    for (k, v) in server.env() {
        if k != "AWS_SECRET_ACCESS_KEY" {
            cmd.env(k, v);
        }
    }
    let err = String::from_utf8_lossy(&cmd.output().unwrap().stderr).into_owned();
    assert!(
        err.contains("AWS_ACCESS_KEY_ID is set but AWS_SECRET_ACCESS_KEY is not"),
        "{err}"
    );

    let mut cmd = storepulse_command(&["query", "--snapshot-dir", &url, "SELECT 1"]);
    for (k, v) in server
        .env()
        .into_iter()
        .filter(|(k, _)| *k != "AWS_ALLOW_HTTP")
    {
        cmd.env(k, v);
    }
    let err = String::from_utf8_lossy(&cmd.output().unwrap().stderr).into_owned();
    assert!(err.contains("set AWS_ALLOW_HTTP=true"), "{err}");
    assert_eq!(
        requests.load(Ordering::SeqCst),
        0,
        "refused before any request"
    );

    // An empty prefix: no snapshot yet.
    let out = server
        .command(&["query", "--snapshot-dir", &url, "SELECT 1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no snapshot in s3://shop/x yet"), "{err}");
}

/// A credentials endpoint on loopback, as an EKS pod identity agent (`GET /creds`, its
/// token in `Authorization`) and a cloud machine's metadata service (IMDSv2: a session
/// token, the role's name, the role's credentials) serve them: temporary credentials with
/// the test server's keys. It stops after a minute; each request it got, as
/// `METHOD path token`.
fn credential_server() -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    listener.set_nonblocking(true).unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    std::thread::spawn(move || {
        let until = Instant::now() + Duration::from_secs(60);
        while Instant::now() < until {
            let Ok((mut sock, _)) = listener.accept() else {
                std::thread::sleep(Duration::from_millis(10));
                continue;
            };
            sock.set_nonblocking(false).unwrap();
            let mut reader = BufReader::new(sock.try_clone().unwrap());
            let mut head = String::new();
            reader.read_line(&mut head).unwrap();
            let mut token = String::new();
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap() == 0 || line.trim().is_empty() {
                    break;
                }
                let (name, value) = line.split_once(':').unwrap_or(("", ""));
                let name = name.to_ascii_lowercase();
                if name == "authorization" || name == "x-aws-ec2-metadata-token" {
                    token = value.trim().to_string();
                }
            }
            let mut words = head.split_whitespace();
            let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
            log.lock().unwrap().push(format!("{method} {path} {token}"));
            let expires = (chrono::Utc::now() + chrono::Duration::hours(1))
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
            let credentials = serde_json::json!({
                "Code": "Success",
                "AccessKeyId": s3::ACCESS_KEY,
                "SecretAccessKey": s3::SECRET_KEY,
                "Token": "session-token",
                "Expiration": expires,
            })
            .to_string();
            let body = match (method, path) {
                ("PUT", "/latest/api/token") => "imds-token".to_string(),
                ("GET", "/latest/meta-data/iam/security-credentials/") => "shop-role".into(),
                ("GET", "/latest/meta-data/iam/security-credentials/shop-role") => credentials,
                ("GET", "/creds") if token == "pod-token" => credentials,
                _ => String::new(),
            };
            let status = if body.is_empty() {
                "403 Forbidden"
            } else {
                "200 OK"
            };
            let _ = write!(
                sock,
                "HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    (addr, seen)
}

#[test]
fn credentials_come_from_a_pod_identity_agent_or_the_machines_metadata_service() {
    let server = s3::Server::start("shop");
    let tmp = tempfile::tempdir().unwrap();
    let input = common::generate(tmp.path(), 2_000, 5);
    let token = tmp.path().join("pod-token");
    std::fs::write(&token, "pod-token").unwrap();
    let (creds, seen) = credential_server();
    let run = |prefix: &str, vars: &[(&str, String)]| {
        let url = server.url(prefix);
        let args = [
            "run",
            "--input",
            input.to_str().unwrap(),
            "--max",
            "--no-progress",
        ];
        let mut cmd = storepulse_command(&[&args[..], &["--snapshot-dir", &url]].concat());
        for (k, v) in server.env() {
            if !k.starts_with("AWS_ACCESS_KEY") && !k.starts_with("AWS_SECRET") {
                cmd.env(k, v);
            }
        }
        let out = cmd.envs(vars.iter().cloned()).output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let (_, name) = s3::pointer(&server, prefix);
        assert!(name.starts_with("snap-"), "{prefix}: {name}");
    };
    run(
        "pod",
        &[
            (
                "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                format!("http://{creds}/creds"),
            ),
            (
                "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
                token.display().to_string(),
            ),
        ],
    );
    assert!(seen
        .lock()
        .unwrap()
        .contains(&"GET /creds pod-token".to_string()));
    run(
        "machine",
        &[
            ("STOREPULSE_S3_CREDENTIALS", "instance".into()),
            ("AWS_METADATA_ENDPOINT", format!("http://{creds}")),
        ],
    );
    let seen = seen.lock().unwrap().clone();
    for want in [
        "PUT /latest/api/token ",
        "GET /latest/meta-data/iam/security-credentials/ imds-token",
        "GET /latest/meta-data/iam/security-credentials/shop-role imds-token",
    ] {
        assert!(seen.contains(&want.to_string()), "{want}: {seen:?}");
    }
}
