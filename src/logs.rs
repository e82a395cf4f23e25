//! Logs: the one `tracing` subscriber (installed by the binary before a command runs,
//! writing to stderr, filtered by `RUST_LOG`) and [`Repeats`], which says a recurring
//! problem once in a while with how often it came in between.
//!
//! Logs are diagnostics; what a command reports (summaries, query results) is its output
//! on stdout and does not go through here. This module must not know what is logged.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use tracing_subscriber::filter::{EnvFilter, LevelFilter};

/// What is logged when `RUST_LOG` is unset or empty: storepulse's progress, and warnings
/// of the libraries (librdkafka's lines have the target `rdkafka`).
/// (`storepulse` also names the `storepulse_replay` crate: a target matches by prefix.)
pub const DEFAULT_FILTER: &str = "warn,storepulse=info";

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    /// One line per event: level, message, then the fields as `name=value`.
    #[default]
    Text,
    /// One JSON object per line: timestamp, level, target, message and the fields.
    Json,
}

/// Installs the subscriber for this process (a second call changes nothing). The filter
/// comes from `RUST_LOG` (see [`filter_directives`]); colours only on a terminal.
pub fn init(format: Format) {
    let directives = filter_directives(std::env::var("RUST_LOG").ok().as_deref());
    let filter = EnvFilter::builder()
        .with_default_directive(LevelFilter::WARN.into())
        .parse_lossy(directives);
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // `set_global_default` rather than `try_init`: a dependency (deltalake's kernel) turns
    // on tracing-subscriber's `tracing-log`, with which `try_init` would also route every
    // dependency's `log` records into this output.
    let installed = match format {
        Format::Text => tracing::subscriber::set_global_default(
            builder
                .compact()
                .without_time()
                .with_target(false)
                .with_ansi(std::io::stderr().is_terminal())
                .finish(),
        ),
        Format::Json => tracing::subscriber::set_global_default(
            builder
                .json()
                .flatten_event(true)
                .with_current_span(false)
                .with_span_list(false)
                .finish(),
        ),
    };
    // Already installed (a test calling in twice): the first one stays.
    drop(installed);
}

/// The filter for a `RUST_LOG` value. Unset or empty: [`DEFAULT_FILTER`]. A value that
/// names targets only (`storepulse=debug`) keeps warnings of everything else; a value
/// with a bare level (`warn`, `debug,rdkafka=info`) is taken as it is.
pub fn filter_directives(rust_log: Option<&str>) -> String {
    match rust_log.map(str::trim).filter(|s| !s.is_empty()) {
        None => DEFAULT_FILTER.to_string(),
        Some(s)
            if s.split(',')
                .any(|d| d.trim().parse::<LevelFilter>().is_ok()) =>
        {
            s.into()
        }
        Some(s) => format!("warn,{s}"),
    }
}

/// A recurring problem said once, then again only when its text changes or `every` after
/// it was last said; each time it is said, with how many occurrences went unsaid since the
/// previous line (so a log reader sees the rate, not only that it happened).
#[derive(Debug)]
pub struct Repeats {
    every: Duration,
    last: Option<(String, Instant)>,
    unsaid: u64,
}

impl Repeats {
    pub fn new(every: Duration) -> Repeats {
        Repeats {
            every,
            last: None,
            unsaid: 0,
        }
    }

    /// An occurrence of `text` at `now`: `Some(unsaid)` when it is to be said, with the
    /// number of occurrences not said since the previous line; `None` to stay quiet.
    pub fn check(&mut self, text: &str, now: Instant) -> Option<u64> {
        let quiet = self
            .last
            .as_ref()
            .is_some_and(|(t, at)| t == text && now.saturating_duration_since(*at) < self.every);
        if quiet {
            self.unsaid += 1;
            return None;
        }
        let unsaid = std::mem::take(&mut self.unsaid);
        self.last = Some((text.to_string(), now));
        Some(unsaid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repeat_is_said_once_per_interval_with_the_count_of_unsaid_ones() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut r = Repeats::new(s(10));
        assert_eq!(r.check("down", t0), Some(0));
        for i in 1..10 {
            assert_eq!(r.check("down", t0 + s(i)), None, "second {i}");
        }
        assert_eq!(r.check("down", t0 + s(10)), Some(9));
        assert_eq!(r.check("down", t0 + s(11)), None);
        // Another text is news at once; the count covers every line not said.
        assert_eq!(r.check("refused", t0 + s(12)), Some(1));
        assert_eq!(r.check("refused", t0 + s(13)), None);
        assert_eq!(r.check("down", t0 + s(14)), Some(1));
    }

    #[test]
    fn rust_log_naming_targets_only_keeps_the_warnings_of_the_rest() {
        assert_eq!(filter_directives(None), DEFAULT_FILTER);
        assert_eq!(filter_directives(Some("  ")), DEFAULT_FILTER);
        assert_eq!(
            filter_directives(Some("storepulse=debug")),
            "warn,storepulse=debug"
        );
        assert_eq!(
            filter_directives(Some("storepulse::kafka=debug,rdkafka=info")),
            "warn,storepulse::kafka=debug,rdkafka=info"
        );
        assert_eq!(filter_directives(Some("warn")), "warn");
        assert_eq!(
            filter_directives(Some("storepulse=debug,error")),
            "storepulse=debug,error"
        );
    }
}
