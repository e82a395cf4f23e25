//! `storepulse run`: validates the flags into a [`RunConfig`], runs the embedded pipeline
//! and prints the summary.

use std::io::IsTerminal;
use std::time::Instant;

use anyhow::{bail, Context};
use storepulse_replay::{Pace, ReaderConfig};

use super::{OrderArg, PaceArgs, RunArgs, WindowArgs};
use crate::aggregate::{rfm::segment_names, CoreConfig};
use crate::ingest::embedded::{self, Order, RunConfig};
use crate::ingest::DriverOutcome;
use crate::snapshot::manifest::Counts;

/// The pace `--speed`, `--rate` or `--max` asks for.
pub fn pace(args: &PaceArgs) -> anyhow::Result<Pace> {
    Ok(match (args.speed, args.rate) {
        (Some(s), _) if !(s.is_finite() && s > 0.0) => bail!("--speed must be a positive number"),
        (_, Some(r)) if !(r.is_finite() && r > 0.0) => bail!("--rate must be a positive number"),
        (Some(s), _) => Pace::Speed(s),
        (_, Some(r)) => Pace::Rate(r),
        _ => Pace::Max,
    })
}

pub fn reader(args: &PaceArgs) -> anyhow::Result<ReaderConfig> {
    let min = chrono::DateTime::parse_from_rfc3339(&args.min_event_time)
        .with_context(|| format!("--min-event-time `{}` is not RFC 3339", args.min_event_time))?;
    Ok(ReaderConfig {
        min_event_time_us: min.timestamp_micros(),
        ..ReaderConfig::default()
    })
}

pub fn order(args: &PaceArgs) -> Order {
    match args.order {
        OrderArg::EventTime => Order::EventTime,
        OrderArg::File => Order::File,
    }
}

pub fn core(args: &WindowArgs) -> CoreConfig {
    let us = |d: std::time::Duration| i64::try_from(d.as_micros()).unwrap_or(i64::MAX);
    CoreConfig {
        max_out_of_orderness_us: us(args.max_out_of_orderness),
        allowed_lateness_us: us(args.allowed_lateness),
        ..CoreConfig::default()
    }
}

pub fn config(args: &RunArgs) -> anyhow::Result<RunConfig> {
    Ok(RunConfig {
        input: args.input.clone(),
        snapshot_dir: args.snapshots.snapshot_dir.clone(),
        snapshot_interval: args.window.snapshot_interval(),
        keep_snapshots: args.snapshots.keep_snapshots as usize,
        pace: pace(&args.pace)?,
        order: order(&args.pace),
        reader: reader(&args.pace)?,
        core: core(&args.window),
        progress: !args.no_progress && std::io::stderr().is_terminal(),
        resume: args.resume,
        memory_limit: args.pace.memory_limit,
    })
}

pub fn run(args: RunArgs) -> anyhow::Result<()> {
    let config = config(&args)?;
    let health = crate::metrics::health::get();
    health.configure(crate::metrics::health::HealthConfig {
        stall_timeout: stall(args.stall_timeout),
        broker_timeout: std::time::Duration::MAX,
        needs_partitions: false,
    });
    // The input is waiting until the run ends: the driver snapshots every interval even
    // when nothing is due, so a healthy run reports progress at least that often.
    health.input_waiting(true);
    if config.resume {
        crate::metrics::events::RunResumed.emit();
    }
    let _metrics = serve_metrics("run", args.metrics_addr);
    let _page = args.page.start("run", &args.snapshots.snapshot_dir);
    let shutdown = crate::shutdown::install();
    let start = Instant::now();
    crate::metrics::set_ready(true);
    let outcome = embedded::run(&config, shutdown)?;
    let wall = start.elapsed();
    let json = super::summary::run(&outcome, wall, &config.snapshot_dir);
    crate::snapshot::write_summary(&config.snapshot_dir, super::summary::line(&json).as_bytes())
        .context("writing the summary")?;
    if args.summary.json() {
        print!("{}", super::summary::line(&json));
        return Ok(());
    }
    print!("{}", summary(&outcome, wall.as_secs_f64()));
    let dir = config.snapshot_dir.display();
    println!("snapshots in {dir}/ (rejected lines in {dir}/rejected.csv); try:");
    let flag = if config.snapshot_dir == std::path::Path::new("snapshots") {
        String::new()
    } else {
        format!("--snapshot-dir {dir} ")
    };
    println!("  storepulse query {flag}\"SELECT segment, COUNT(*) AS customers FROM rfm GROUP BY segment ORDER BY customers DESC\"");
    Ok(())
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

/// The end-of-run report.
pub fn summary(outcome: &DriverOutcome, wall_secs: f64) -> String {
    use std::fmt::Write;
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

/// `--stall-timeout`: 0 means never.
pub fn stall(d: std::time::Duration) -> std::time::Duration {
    if d.is_zero() {
        std::time::Duration::MAX
    } else {
        d
    }
}

/// Starts the metrics endpoint; a busy address is a warning, not a failure.
pub fn serve_metrics(command: &str, addr: std::net::SocketAddr) -> Option<std::net::SocketAddr> {
    let what = ("metrics", "/metrics", "metrics endpoint");
    crate::http::start_logged(command, what, addr, crate::metrics::serve)
}
