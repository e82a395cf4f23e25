//! A real browser for tests: Debian's Chromium driven headless through ChromeDriver's
//! WebDriver HTTP API (packages `chromium` and `chromium-driver`, installed when missing,
//! as `.ci/run` does). ChromeDriver listens on a free loopback port and is stopped when
//! dropped.

use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

use super::http;
use super::spawn::{free_port, Server};
use super::wait::wait_until_ok;

pub fn ensure_installed() {
    let found = |bin: &str| std::path::Path::new(bin).exists();
    if found("/usr/bin/chromium") && found("/usr/bin/chromedriver") {
        return;
    }
    super::apt_install("chromium chromium-driver");
}

/// One WebDriver call with a JSON body; returns the JSON reply.
fn request(addr: &str, method: &str, path: &str, body: Option<&Value>) -> Value {
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let (_, _, reply) = http::request(
        addr,
        method,
        path,
        &[("Content-Type", "application/json")],
        &body,
    );
    serde_json::from_str(&reply).unwrap_or_else(|e| panic!("{method} {path}: {e}: {reply}"))
}

pub struct Browser {
    driver: Server,
    addr: String,
    session: String,
}

impl Browser {
    /// Starts ChromeDriver and a headless Chromium window of `width`×`height`.
    pub fn start(width: u32, height: u32) -> Browser {
        ensure_installed();
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let driver = Server::start(
            "chromedriver",
            Command::new("/usr/bin/chromedriver")
                .arg(format!("--port={port}"))
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
            &addr,
            Duration::from_secs(30),
        );
        // Owned from here on, so that a failure below still stops the driver.
        let mut browser = Browser {
            driver,
            addr: addr.clone(),
            session: String::new(),
        };
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", format!("--window-size={width},{height}")]
            },
            "goog:loggingPrefs": {"browser": "ALL"}
        }}});
        let reply = request(&addr, "POST", "/session", Some(&caps));
        browser.session = reply["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {reply}"))
            .to_string();
        browser
    }

    fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Value {
        let path = format!("/session/{}{path}", self.session);
        let reply = request(&self.addr, method, &path, body);
        assert!(
            reply["value"].get("error").is_none(),
            "{method} {path}: {reply}"
        );
        reply["value"].clone()
    }

    pub fn goto(&self, url: &str) {
        self.call("POST", "/url", Some(&json!({ "url": url })));
    }

    /// Runs `script` (a function body; `arguments` holds `args`) and returns its value.
    pub fn eval(&self, script: &str, args: Value) -> Value {
        self.call(
            "POST",
            "/execute/sync",
            Some(&json!({ "script": script, "args": args })),
        )
    }

    /// Waits (boundedly) until `script` returns something truthy; returns it.
    pub fn wait_for(&self, script: &str, limit: Duration) -> Value {
        wait_until_ok(limit, script, || {
            let v = self.eval(script, json!([]));
            if v.is_null() || v == json!(false) || v == json!("") || v == json!(0) {
                Err(v)
            } else {
                Ok(v)
            }
        })
    }

    /// The browser console's entries since the last call: (level, message).
    pub fn console(&self) -> Vec<(String, String)> {
        let v = self.call("POST", "/se/log", Some(&json!({"type": "browser"})));
        v.as_array()
            .into_iter()
            .flatten()
            .map(|e| {
                (
                    e["level"].as_str().unwrap_or_default().to_string(),
                    e["message"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect()
    }

    /// A PNG of the whole window.
    pub fn screenshot(&self) -> Vec<u8> {
        let v = self.call("GET", "/screenshot", None);
        use base64::Engine;
        base64::engine::general_purpose::STANDARD
            .decode(v.as_str().unwrap())
            .expect("a base64 screenshot")
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let path = format!("/session/{}", self.session);
            let _ = std::panic::catch_unwind(|| request(&self.addr, "DELETE", &path, None));
        }
        self.driver.stop();
    }
}
