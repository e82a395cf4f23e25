//! A real Prometheus for tests: Debian's `prometheus` package (installed when missing, as
//! `.ci/run` does), started on a free loopback port with a given scrape config and stopped
//! when dropped; its HTTP API through the tests' HTTP client.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use super::http::get;
use super::spawn::{free_addr, Server};
use super::wait::wait_until_ok;

/// Installs Debian's `prometheus` package when `promtool` or `prometheus` is missing.
pub fn ensure_installed() {
    let found = |bin: &str| {
        Command::new(bin)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if found("promtool") && found("prometheus") {
        return;
    }
    super::apt_install("prometheus");
}

/// Runs `promtool` with `args` and `stdin`; returns (success, everything it printed).
pub fn promtool(args: &[&str], stdin: &str) -> (bool, String) {
    ensure_installed();
    let mut child = Command::new("promtool")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus; .ci/run installs it)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let said =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), said)
}

/// Percent-encodes a query-string value.
pub fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

pub struct Prometheus {
    _server: Server,
    pub addr: String,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    /// Starts Prometheus with `config` (YAML text) on a free loopback port and waits until
    /// it is ready.
    pub fn start(config: &str) -> Prometheus {
        ensure_installed();
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("prometheus.yml");
        std::fs::write(&file, config).unwrap();
        let addr = free_addr();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let server = Server::start(
            "prometheus",
            Command::new("prometheus")
                .arg(format!("--config.file={}", file.display()))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.path().join("data").display()
                ))
                .arg(format!("--web.listen-address={addr}"))
                .stdout(Stdio::null())
                .stderr(log),
            &addr,
            Duration::from_secs(60),
        );
        let p = Prometheus {
            _server: server,
            addr,
            _dir: dir,
        };
        wait_until_ok(Duration::from_secs(60), "prometheus to be ready", || {
            if get(&p.addr, "/-/ready").0 == 200 {
                Ok(())
            } else {
                Err(p.log())
            }
        });
        p
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// An instant query through the HTTP API; returns the `result` array (panics on an
    /// API error, with the expression).
    pub fn query(&self, expr: &str) -> Vec<serde_json::Value> {
        let (status, _, body) = get(&self.addr, &format!("/api/v1/query?query={}", encode(expr)));
        let v: serde_json::Value =
            serde_json::from_str(&body).unwrap_or_else(|e| panic!("{expr}: {e}: {body}"));
        assert_eq!(status, 200, "{expr}: {body}");
        assert_eq!(v["status"], "success", "{expr}: {body}");
        v["data"]["result"].as_array().cloned().unwrap_or_default()
    }

    /// The single value of a query that yields one series.
    pub fn value(&self, expr: &str) -> Option<f64> {
        let r = self.query(expr);
        let v = r.first()?["value"][1].as_str()?.parse().ok();
        assert!(r.len() <= 1, "{expr} gave {} series", r.len());
        v
    }
}

/// Every PromQL expression of every panel of a Grafana dashboard, with the panel's title.
pub fn dashboard_exprs(path: &Path) -> Vec<(String, String)> {
    let d: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut out = Vec::new();
    fn walk(panels: &serde_json::Value, out: &mut Vec<(String, String)>) {
        for p in panels.as_array().into_iter().flatten() {
            let title = p["title"].as_str().unwrap_or_default().to_string();
            for t in p["targets"].as_array().into_iter().flatten() {
                // Grafana's `$__rate_interval` is at least four scrape intervals (5 s).
                let expr = t["expr"]
                    .as_str()
                    .unwrap()
                    .replace("$__rate_interval", "1m");
                out.push((title.clone(), expr));
            }
            walk(&p["panels"], out);
        }
    }
    walk(&d["panels"], &mut out);
    out
}
