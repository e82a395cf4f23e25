//! `--summary json`: the end-of-command summary of `run`, `replay` and `process` as one
//! JSON object (`schemas/summary.schema.json`), for tests and scripts; the text summary
//! is for people. Keys are stable snake_case, counts are JSON integers, money is a string
//! of exact decimals, durations are seconds.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use clap::Args;
use serde_json::{json, Value};
use storepulse_replay::{ReadStats, RejectReason};

use crate::ingest::DriverOutcome;
use crate::kafka::consume::ProcessOutcome;
use crate::kafka::publish::{End, ReplayOutcome};
use crate::snapshot::manifest::rfc3339;
use crate::snapshot::{Counts, InputPosition};

/// The version of the summary's keys; a key removed or changing meaning bumps it.
pub const VERSION: u32 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SummaryFormat {
    /// The text summary, for people.
    Text,
    /// One JSON object on stdout instead (`schemas/summary.schema.json`).
    Json,
}

/// `--summary` of `run`, `replay` and `process`.
#[derive(Debug, Args)]
pub struct SummaryArgs {
    /// The summary printed at the end: text, or one JSON object (keys in docs/operating.md).
    #[arg(
        long = "summary",
        env = "STOREPULSE_SUMMARY",
        value_enum,
        default_value = "text"
    )]
    pub format: SummaryFormat,
}

impl SummaryArgs {
    pub fn json(&self) -> bool {
        self.format == SummaryFormat::Json
    }
}

/// The object as one line and a newline.
pub fn line(v: &Value) -> String {
    let mut s = serde_json::to_string(v).expect("a summary serializes");
    s.push('\n');
    s
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

fn per_second(n: u64, wall: f64) -> f64 {
    if wall > 0.0 {
        n as f64 / wall
    } else {
        0.0
    }
}

/// Every reader reason with its count (0 included), then any other reason counted.
fn by_reason(counted: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    let mut all: BTreeMap<String, u64> = RejectReason::ALL
        .into_iter()
        .map(|r| (r.as_str().to_string(), 0))
        .collect();
    for (reason, n) in counted {
        *all.entry(reason.clone()).or_default() += n;
    }
    all
}

fn late(counted: &BTreeMap<String, u64>) -> u64 {
    counted
        .get(RejectReason::LateEvent.as_str())
        .copied()
        .unwrap_or(0)
}

fn counts(c: &Counts) -> Value {
    json!({
        "records": c.records,
        "blank": c.blank,
        "accepted": c.accepted,
        "repaired": c.repaired,
        "pending": c.pending,
        "duplicates": c.duplicates,
        "late": late(&c.rejected),
        "rejected": c.rejected.values().sum::<u64>(),
        "rejected_by_reason": by_reason(&c.rejected),
    })
}

/// `run`: the final snapshot's counts, what this process read, pace and snapshot.
pub fn run(outcome: &DriverOutcome, wall: Duration, dir: &Path) -> Value {
    let m = &outcome.manifest;
    let core = &outcome.core;
    let days: Vec<i32> = core.days().map(|d| d.0).collect();
    let day = |d: Option<&i32>| d.map(|&d| super::text::day_string(d));
    let (lines_read, events_applied) = match &m.input {
        InputPosition::File {
            lines_read,
            events_applied,
            ..
        } => (*lines_read, *events_applied),
        InputPosition::Kafka { .. } | InputPosition::View { .. } => (0, 0),
    };
    let applied = m.counts.accepted + late(&m.counts.rejected);
    let wall = secs(wall);
    json!({
        "summary_version": VERSION,
        "command": "run",
        "state": if outcome.complete { "complete" } else { "stopped_early" },
        "counts": counts(&m.counts),
        "records_read_this_run": outcome.records_read,
        "lines_read": lines_read,
        "events_applied": events_applied,
        "days": days.len(),
        "first_day": day(days.first()),
        "last_day": day(days.last()),
        "revenue": storepulse_replay::wire::cents_to_decimal(core.totals().revenue_cents),
        "customers": m.customers,
        "segments": m.segments,
        "elapsed_seconds": wall,
        "events_per_second": per_second(applied.saturating_sub(outcome.events_resumed), wall),
        "snapshot": {
            "id": m.id,
            "dir": dir.display().to_string(),
            "bytes": m.bytes(),
            "rejected_file": dir.join(crate::snapshot::rejected::REJECTED_FILE).display().to_string(),
        },
        "longest_snapshot_pause_seconds": secs(outcome.longest_pause),
        "longest_snapshot_write_seconds": secs(outcome.longest_write),
        "last_snapshot_seconds": secs(outcome.last_write),
        "state_bytes": core.memory().total(),
        "peak_memory_bytes": super::text::peak_memory_kib().map(|k| k * 1024),
    })
}

fn read_counts(r: &ReadStats) -> Value {
    let counted: BTreeMap<String, u64> = r
        .rejected
        .iter()
        .map(|(reason, n)| (reason.as_str().to_string(), n))
        .collect();
    json!({
        "records": r.records,
        "blank": r.blank,
        "accepted": r.accepted,
        "repaired": r.repaired,
        "rejected": r.rejected.total(),
        "rejected_by_reason": by_reason(&counted),
    })
}

/// `replay`: what was read, sent and delivered, and whether the end of input went out.
pub fn replay(input: &Path, topic: &str, o: &ReplayOutcome) -> Value {
    let (state, why_not) = match o.end {
        End::Sent => ("complete", None),
        End::NoEvents => ("complete", Some("no_events")),
        End::Limited => ("partial", Some("limit")),
        End::Stopped => ("stopped_early", Some("stopped")),
        End::Failed => ("incomplete", Some("delivery_failed")),
    };
    let wall = secs(o.wall);
    json!({
        "summary_version": VERSION,
        "command": "replay",
        "state": state,
        "input": input.display().to_string(),
        "source": format!("{:016x}", o.source),
        "topic": topic,
        "dead_letter_topic": crate::kafka::dead_letter_topic(topic),
        "partitions": o.partitions,
        "counts": read_counts(&o.read),
        "events_sent": o.events_sent,
        "dead_letters_sent": o.dead_letters_sent,
        "delivered": o.delivered,
        "failed": o.failed,
        "last_error": o.last_error,
        "watermarks": o.watermarks,
        "last_watermark": o.last_watermark_us.map(rfc3339),
        "first_event": o.feed.first_event_us.map(rfc3339),
        "last_event": o.feed.last_event_us.map(rfc3339),
        "end_of_input": { "sent": why_not.is_none(), "why_not": why_not },
        "elapsed_seconds": wall,
        "events_per_second": per_second(o.events_sent, wall),
    })
}

/// `process`: messages, snapshots, and each partition's last snapshot, with the counts
/// summed over them.
pub fn process(o: &ProcessOutcome, wall: Duration, dir: &Path) -> Value {
    let wall = secs(wall);
    let busy = match (o.first_message, o.last_message) {
        (Some(a), Some(b)) => secs(b - a),
        _ => wall,
    };
    let mut total = Counts::default();
    let mut partitions = Vec::new();
    for (p, m) in &o.last {
        let c = &m.counts;
        total.add(c);
        let (next_offset, end_of_input) = match &m.input {
            InputPosition::Kafka {
                next_offset,
                end_of_input,
                ..
            } => (*next_offset, *end_of_input),
            InputPosition::File { .. } | InputPosition::View { .. } => (0, false),
        };
        partitions.push(json!({
            "partition": p,
            "snapshot_id": m.id,
            "next_offset": next_offset,
            "end_of_input": end_of_input,
            "as_of": m.as_of,
            "counts": counts(c),
        }));
    }
    json!({
        "summary_version": VERSION,
        "command": "process",
        "messages": o.messages,
        "messages_per_second": per_second(o.messages, busy),
        "busy_seconds": busy,
        "elapsed_seconds": wall,
        "snapshots": o.snapshots,
        "longest_snapshot_seconds": secs(o.longest_snapshot),
        "snapshot_dir": dir.display().to_string(),
        "counts": counts(&total),
        "partitions": partitions,
        "not_final": o.not_final,
        "fenced": o.fenced,
    })
}

/// Writes `json` as `summary.json` in `dir` and, for a bucket, puts it there too.
pub fn keep(
    json: &Value,
    dir: &Path,
    remote: Option<&crate::snapshot::Bucket>,
) -> anyhow::Result<()> {
    use anyhow::Context;
    let summary = crate::snapshot::write_summary(dir, line(json).as_bytes())
        .context("writing the summary")?;
    if let Some(bucket) = remote {
        crate::snapshot::remote::put_file(bucket, &summary).context("publishing the summary")?;
    }
    Ok(())
}
