//! The text summaries people read at the end of `run`, `replay` and `process` (the JSON
//! ones are in `summary.rs`), with money, days and the peak memory (from `/proc`) as
//! they print them.

use std::fmt::Write as _;

use crate::aggregate::{day_of, rfm::segment_names};
use crate::ingest::DriverOutcome;
use crate::kafka::consume::{ProcessConfig, ProcessOutcome};
use crate::kafka::publish::{self, ReplayConfig, ReplayOutcome};
use crate::snapshot::manifest::{rfc3339, Counts};

/// The end-of-run report.
pub fn run(outcome: &DriverOutcome, wall_secs: f64) -> String {
    let m = &outcome.manifest;
    let Counts {
        records,
        accepted,
        pending,
        repaired,
        blank,
        rejected,
        ..
    } = &m.counts;
    let core = &outcome.core;
    let revenue = core.totals().revenue_cents;
    let mut s = String::new();
    let state = if outcome.complete {
        "complete"
    } else {
        "stopped early"
    };
    let _ = writeln!(s, "storepulse run: {state}; snapshot {} written", m.id);
    let _ = writeln!(s, "lines          {records:>12}  (+{blank} blank)");
    let _ = writeln!(
        s,
        "  accepted     {accepted:>12}  ({repaired} repaired column shifts)"
    );
    if *pending > 0 {
        let _ = writeln!(
            s,
            "  not applied  {pending:>12}  (stopped before they were replayed)"
        );
    }
    let total_rejected: u64 = rejected.values().sum();
    let _ = writeln!(
        s,
        "  rejected     {total_rejected:>12}  (kept in rejected.csv)"
    );
    for reason in storepulse_replay::RejectReason::ALL {
        if let Some(n) = rejected.get(reason.as_str()) {
            let _ = writeln!(s, "    {:<26} {n:>8}", reason.as_str());
        }
    }
    let days = core.days().count();
    let (first, last) = (
        core.days().next().map(|d| d.0),
        core.days().last().map(|d| d.0),
    );
    let day = |d: Option<i32>| d.map(day_string).unwrap_or_default();
    let _ = writeln!(
        s,
        "days           {days:>12}  ({} .. {})",
        day(first),
        day(last)
    );
    let _ = writeln!(s, "revenue        {:>12}", money(revenue));
    let _ = writeln!(s, "customers      {:>12}", m.customers);
    let mut segments: Vec<(u64, &str)> = segment_names()
        .into_iter()
        .map(|name| (m.segments.get(name).copied().unwrap_or(0), name))
        .collect();
    segments.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(b.1)));
    for (n, name) in segments {
        let _ = writeln!(s, "    {name:<26} {n:>8}");
    }
    let applied = accepted
        + rejected
            .get(storepulse_replay::RejectReason::LateEvent.as_str())
            .copied()
            .unwrap_or(0);
    // A resumed run's rate is of the events it applied itself.
    let applied = applied.saturating_sub(outcome.events_resumed);
    let _ = writeln!(
        s,
        "wall time      {wall_secs:>11.2}s  ({:.0} events/s)",
        applied as f64 / wall_secs.max(1e-9)
    );
    if !outcome.longest_pause.is_zero() {
        // No write time: the one snapshot beside the stream gave way to the last.
        let written = if outcome.longest_write.is_zero() {
            "given up for the last snapshot when the input ended".to_string()
        } else {
            format!(
                "written beside the stream in up to {:.3}s",
                outcome.longest_write.as_secs_f64()
            )
        };
        let _ = writeln!(
            s,
            "snapshot pause {:>11.3}s  (longest stop of the core to copy its state; {written})",
            outcome.longest_pause.as_secs_f64(),
        );
    }
    let _ = writeln!(
        s,
        "last snapshot  {:>11.3}s  ({:.1} MiB)",
        outcome.last_write.as_secs_f64(),
        m.bytes() as f64 / 1048576.0
    );
    let state = core.memory();
    let _ = writeln!(
        s,
        "state          {:>8.0} MiB  ({})",
        state.total() as f64 / 1048576.0,
        state.describe()
    );
    if let Some(kib) = peak_memory_kib() {
        let _ = writeln!(s, "peak memory    {:>10.0} MiB", kib as f64 / 1024.0);
    }
    s
}

/// The end-of-replay report.
pub fn replay(config: &ReplayConfig, o: &ReplayOutcome) -> String {
    let mut s = String::new();
    let state = match o.end {
        publish::End::Sent | publish::End::NoEvents => "complete",
        publish::End::Limited => "partial (--limit)",
        publish::End::Stopped => "stopped early",
        publish::End::Failed => "incomplete (deliveries failed)",
    };
    let wall = o.wall.as_secs_f64().max(1e-9);
    let _ = writeln!(
        s,
        "storepulse replay: {state}; {} -> {} ({} partitions), source {:016x}",
        config.feed.input.display(),
        config.topic,
        o.partitions,
        o.source
    );
    let _ = writeln!(
        s,
        "lines          {:>12}  (+{} blank)",
        o.read.records, o.read.blank
    );
    let _ = writeln!(
        s,
        "  accepted     {:>12}  ({} repaired column shifts)",
        o.read.accepted, o.read.repaired
    );
    let _ = writeln!(
        s,
        "  rejected     {:>12}  (dead letters on {})",
        o.read.rejected.total(),
        crate::kafka::dead_letter_topic(&config.topic)
    );
    for (reason, n) in o.read.rejected.iter() {
        let _ = writeln!(s, "    {:<26} {n:>8}", reason.as_str());
    }
    let _ = writeln!(
        s,
        "events sent    {:>12}  ({:.0} events/s over {:.2}s)",
        o.events_sent,
        o.events_sent as f64 / wall,
        wall
    );
    if let (Some(a), Some(b)) = (o.feed.first_event_us, o.feed.last_event_us) {
        let span = (b - a) as f64 / 1e6;
        let emit = o.feed.emit_wall.as_secs_f64().max(1e-9);
        let _ = writeln!(
            s,
            "event time     {} .. {}  ({:.0}x real time, {:.0} events/s while paced)",
            rfc3339(a),
            rfc3339(b),
            span / emit,
            o.events_sent as f64 / emit
        );
    }
    let _ = writeln!(
        s,
        "delivered      {:>12}  messages ({} failed)",
        o.delivered, o.failed
    );
    if let Some(w) = o.last_watermark_us {
        let _ = writeln!(
            s,
            "watermarks     {:>12}  (the last at {})",
            o.watermarks,
            rfc3339(w)
        );
    }
    let _ = writeln!(s, "end of input   {}", o.end.describe());
    s
}

/// The end-of-process report.
pub fn process(config: &ProcessConfig, o: &ProcessOutcome, wall: std::time::Duration) -> String {
    let mut s = String::new();
    let wall = wall.as_secs_f64().max(1e-9);
    let busy = match (o.first_message, o.last_message) {
        (Some(a), Some(b)) => (b - a).as_secs_f64().max(1e-9),
        _ => wall,
    };
    let _ = writeln!(
        s,
        "storepulse process: stopped after {wall:.2}s; {} messages in {busy:.2}s from first to last ({:.0}/s)",
        o.messages,
        o.messages as f64 / busy,
    );
    let _ = writeln!(
        s,
        "snapshots      {:>12}  (longest {:.3}s)",
        o.snapshots,
        o.longest_snapshot.as_secs_f64()
    );
    for (p, m) in &o.last {
        let c = &m.counts;
        let rejected: u64 = c.rejected.values().sum();
        let last_day = m
            .as_of_us
            .map(|t| day_string(day_of(t)))
            .unwrap_or_default();
        let offset = match &m.input {
            crate::snapshot::InputPosition::Kafka { next_offset, .. } => *next_offset,
            _ => 0,
        };
        let _ = writeln!(
            s,
            "  partition {p:>3}: next offset {offset:>9}, accepted {:>9}, duplicates {:>7}, rejected {:>6}, up to {last_day}",
            c.accepted, c.duplicates, rejected
        );
    }
    if !o.not_final.is_empty() {
        let _ = writeln!(
            s,
            "  partitions {:?}: no final snapshot (dead letters not delivered); the previous one stands",
            o.not_final
        );
    }
    // A bucket's URL, not the working folder that only staged its snapshots.
    let dir = match &config.remote {
        Some(bucket) => bucket.url.clone(),
        None => config.snapshot_dir.display().to_string(),
    };
    let _ = writeln!(s, "snapshots in {dir}/partitions/; the merged tables:");
    let _ = writeln!(
        s,
        "  storepulse query --snapshot-dir {dir} \"SELECT day, revenue, orders FROM daily_sales ORDER BY day DESC LIMIT 7\""
    );
    s
}

/// Cents as the wire's decimal text with thousands grouped, e.g. `1,234,567.89`.
pub fn money(cents: i64) -> String {
    let plain = storepulse_replay::wire::cents_to_decimal(cents);
    let (sign, digits) = plain.split_at(usize::from(cents < 0));
    let units = &digits[..digits.len() - 3];
    let mut grouped = String::from(sign);
    for (i, c) in units.chars().enumerate() {
        if i > 0 && (units.len() - i).is_multiple_of(3) {
            grouped.push(',');
        }
        grouped.push(c);
    }
    grouped + &digits[digits.len() - 3..]
}

/// The process's peak resident memory (VmHWM), where the system reports it.
pub fn peak_memory_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// A day number (days since 1970-01-01) as `YYYY-MM-DD`.
pub fn day_string(day: i32) -> String {
    chrono::DateTime::from_timestamp(i64::from(day) * 86_400, 0)
        .map(|t| t.format("%Y-%m-%d").to_string())
        .unwrap_or_else(|| day.to_string())
}
