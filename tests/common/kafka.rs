//! A real Kafka-protocol broker for tests: `tansu` with in-memory storage on a free
//! loopback port, stopped when dropped. Installed with `cargo install` when missing (CI
//! installs it up front in `.ci/run`).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use super::spawn::{free_addr, Server};
use super::wait::{wait_until, Deadline};

/// Kafka tests run one at a time: each starts a broker and several processes, and two
/// cores do not carry more without timing out.
pub fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

/// The broker's version the tests are written against (its gaps are listed in docs/kafka.md).
const TANSU: &str = "0.6.0";

fn tansu_binary() -> PathBuf {
    let home = std::env::var("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(std::env::var("HOME").unwrap()).join(".cargo"));
    let installed = home.join("bin").join("tansu");
    if installed.exists() {
        return installed;
    }
    eprintln!("installing the tansu broker (cargo install tansu --version {TANSU} --features dynostore --locked)");
    let status = Command::new("cargo")
        .args([
            "install",
            "tansu",
            "--version",
            TANSU,
            "--features",
            "dynostore",
            "--locked",
        ])
        .status()
        .expect("run cargo install");
    assert!(status.success(), "cargo install tansu failed");
    installed
}

pub struct Broker {
    server: Server,
    pub addr: String,
    _dir: tempfile::TempDir,
}

impl Broker {
    /// Starts a broker and waits until it accepts connections.
    pub fn start() -> Broker {
        Broker::start_on(&free_addr())
    }

    /// Starts a broker on `addr` (see [`super::spawn::free_addr`]) and waits until it accepts connections.
    pub fn start_on(addr: &str) -> Broker {
        let bin = tansu_binary();
        let addr = addr.to_string();
        let url = format!("tcp://{addr}");
        // tansu reads a `.env` in its working directory: give it an empty one.
        let dir = tempfile::tempdir().unwrap();
        let log = std::fs::File::create(dir.path().join("tansu.log")).unwrap();
        let server = Server::start(
            "tansu",
            Command::new(bin)
                .args([
                    "broker",
                    "--storage-engine",
                    "memory://tansu/",
                    "--listener-url",
                    &url,
                    "--advertised-listener-url",
                    &url,
                ])
                .current_dir(dir.path())
                .env("RUST_LOG", "warn")
                .stdout(Stdio::null())
                .stderr(log),
            &addr,
            Duration::from_secs(30),
        );
        Broker {
            server,
            addr,
            _dir: dir,
        }
    }

    /// Stops the broker (its in-memory data goes with it).
    pub fn stop(&mut self) {
        self.server.stop();
    }

    /// SIGSTOP: the broker keeps its connections and data but answers nothing.
    pub fn pause(&self) {
        unsafe {
            libc::kill(self.server.id() as i32, libc::SIGSTOP);
        }
    }

    /// SIGCONT after [`Broker::pause`].
    pub fn resume(&self) {
        unsafe {
            libc::kill(self.server.id() as i32, libc::SIGCONT);
        }
    }

    /// Produces one message with a header (a control message, or an event with a key)
    /// to one partition.
    pub fn produce_to(
        &self,
        topic: &str,
        partition: i32,
        key: Option<&[u8]>,
        header: Option<(&str, &str)>,
        payload: &[u8],
    ) {
        use rdkafka::message::{Header, OwnedHeaders};
        let p: BaseProducer = ClientConfig::new()
            .set("bootstrap.servers", &self.addr)
            .set("compression.type", "none")
            .create()
            .unwrap();
        let mut r = BaseRecord::<[u8], [u8]>::to(topic)
            .partition(partition)
            .payload(payload);
        if let Some(k) = key {
            r = r.key(k);
        }
        if let Some((key, value)) = header {
            r = r.headers(OwnedHeaders::new().insert(Header {
                key,
                value: Some(value),
            }));
        }
        p.send(r).map_err(|(e, _)| e).unwrap();
        p.flush(Duration::from_secs(30)).unwrap();
    }

    pub fn create_topic(&self, topic: &str, partitions: i32) {
        storepulse::kafka::Connection {
            brokers: self.addr.clone(),
            options: Vec::new(),
        }
        .ensure_topics(&[topic], partitions)
        .unwrap();
    }

    /// Produces raw messages to one partition (for malformed-message tests).
    pub fn produce(&self, topic: &str, partition: i32, payloads: &[&[u8]]) {
        let p: BaseProducer = ClientConfig::new()
            .set("bootstrap.servers", &self.addr)
            .set("compression.type", "none")
            .create()
            .unwrap();
        for payload in payloads {
            p.send(
                BaseRecord::<[u8], [u8]>::to(topic)
                    .partition(partition)
                    .payload(payload),
            )
            .map_err(|(e, _)| e)
            .unwrap();
        }
        p.flush(Duration::from_secs(30)).unwrap();
    }

    pub fn delete_topic(&self, topic: &str) {
        use rdkafka::admin::{AdminClient, AdminOptions};
        let admin: AdminClient<rdkafka::client::DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", &self.addr)
            .create()
            .unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let results = rt
            .block_on(admin.delete_topics(&[topic], &AdminOptions::new()))
            .unwrap();
        for r in results {
            r.map_err(|(t, e)| format!("deleting {t}: {e}")).unwrap();
        }
    }

    /// Messages in `topic` so far, over all partitions, from the brokers' log ends (exact
    /// when every batch holds one message: see `paced_replay`).
    pub fn messages_in(&self, topic: &str) -> i64 {
        let c: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.addr)
            .create()
            .unwrap();
        let Ok(md) = c.fetch_metadata(Some(topic), Duration::from_secs(10)) else {
            return 0;
        };
        let partitions = md
            .topics()
            .first()
            .map_or(0, |t| t.partitions().len() as i32);
        (0..partitions)
            .filter_map(|p| c.fetch_watermarks(topic, p, Duration::from_secs(10)).ok())
            .map(|(lo, hi)| hi - lo)
            .sum()
    }

    /// Every message of `topic` (all partitions), read with a plain consumer: the
    /// values in partition then offset order.
    pub fn read_all(&self, topic: &str) -> Vec<Vec<u8>> {
        self.read_messages(topic)
            .into_iter()
            .map(|m| m.value)
            .collect()
    }

    /// Every message of `topic` (all partitions) with its key, partition and headers, in
    /// partition then offset order.
    pub fn read_messages(&self, topic: &str) -> Vec<Msg> {
        let c: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.addr)
            .set("group.id", "test-reader")
            .set("enable.auto.commit", "false")
            .create()
            .unwrap();
        let md = c
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .unwrap();
        let partitions = md.topics()[0].partitions().len() as i32;
        let mut out = Vec::new();
        for p in 0..partitions {
            // tansu 0.6 reports a high watermark that can stop short of the last
            // batch's records: read until the partition has been quiet for a while.
            let (low, _high) = c
                .fetch_watermarks(topic, p, Duration::from_secs(10))
                .unwrap();
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition_offset(topic, p, Offset::Offset(low))
                .unwrap();
            c.assign(&tpl).unwrap();
            let deadline = Deadline::after(Duration::from_secs(60));
            let mut quiet_since = Instant::now();
            while quiet_since.elapsed() < Duration::from_millis(1500) {
                deadline.check(format_args!("{topic}/{p} to be read"));
                if let Some(m) = c.poll(Duration::from_millis(100)) {
                    out.push(Msg::of(&m.unwrap()));
                    quiet_since = Instant::now();
                }
            }
        }
        out
    }
}

/// One message as a plain consumer read it.
#[derive(Debug, Clone)]
pub struct Msg {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub value: Vec<u8>,
    /// The message timestamp in milliseconds (the event time, for an event).
    pub timestamp_ms: Option<i64>,
    /// The value of its `storepulse-control` header: a control message, not an event.
    pub control: Option<String>,
}

impl Msg {
    pub fn of(m: &rdkafka::message::BorrowedMessage<'_>) -> Msg {
        use rdkafka::message::Headers;
        let control = m.headers().and_then(|h| {
            h.iter()
                .find(|h| h.key == storepulse::kafka::CONTROL_HEADER)
                .map(|h| String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned())
        });
        Msg {
            partition: m.partition(),
            offset: m.offset(),
            key: m.key().map(<[u8]>::to_vec),
            value: m.payload().unwrap_or_default().to_vec(),
            timestamp_ms: m.timestamp().to_millis(),
            control,
        }
    }
}

/// The partitions' latest manifests under a `process` snapshot folder.
pub fn partition_manifests(dir: &Path) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir.join("partitions")) else {
        return out;
    };
    for e in entries.flatten() {
        let latest = e.path().join("LATEST");
        let Ok(name) = std::fs::read_to_string(&latest) else {
            continue;
        };
        let text = std::fs::read_to_string(e.path().join(name.trim()).join("manifest.json"));
        if let Ok(text) = text {
            out.push(serde_json::from_str(&text).unwrap());
        }
    }
    out
}

/// Waits (boundedly) until `pred` holds over the partitions' manifests.
pub fn wait_for(
    dir: &Path,
    limit: Duration,
    what: &str,
    pred: impl Fn(&[serde_json::Value]) -> bool,
) {
    wait_until(limit, what, || pred(&partition_manifests(dir)));
}

/// Sum of a count over the partitions' manifests.
pub fn total(manifests: &[serde_json::Value], field: &str) -> u64 {
    manifests
        .iter()
        .map(|m| m["counts"][field].as_u64().unwrap_or(0))
        .sum()
}
