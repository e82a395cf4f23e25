//! One partition's state inside a processor: its aggregate core, the event ids it has
//! counted, its counts and the next offset to read. Pure and synchronous: every decision
//! (valid, duplicate, late) depends only on this partition's messages in offset order,
//! never on how partitions interleave, so a restart or a hand-over to another process
//! decides the same way.

use std::collections::BTreeMap;

use serde::Deserialize;
use storepulse_replay::wire::{WireEvent, SCHEMA_VERSION};
use storepulse_replay::RejectReason;

use super::{EndOfInput, END_OF_INPUT};
use crate::aggregate::{day_of, Core, CoreConfig, CoreState, Outcome, Seen, MICROS_PER_DAY};
use crate::snapshot::Counts;

/// A message that is not a purchase event of the schema (not JSON, a field missing or
/// invalid, an unknown field).
pub const INVALID_MESSAGE: &str = "invalid_message";
/// A purchase event of a `schema_version` this build does not read.
pub const UNSUPPORTED_VERSION: &str = "unsupported_version";

/// What became of one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Counted in the aggregates.
    Counted,
    /// Its event id was counted before: dropped, counted as a duplicate.
    Duplicate,
    /// Dead-lettered with this reason (`late_event`, `invalid_message`,
    /// `unsupported_version`).
    Rejected {
        reason: &'static str,
        line: Option<u64>,
        detail: Option<String>,
    },
    /// A control message, applied.
    Control,
    /// Below the next offset: already covered by the state (a broker that serves whole
    /// batches from before the requested offset). Ignored, not counted.
    AlreadyApplied,
}

#[derive(Debug, Clone)]
pub struct PartitionState {
    pub core: Core,
    pub seen: Seen,
    /// First offset not applied yet; `None` before the first message (read from the start).
    pub next_offset: Option<i64>,
    records: u64,
    duplicates: u64,
    invalid: u64,
    unsupported: u64,
}

#[derive(Deserialize)]
struct VersionOnly {
    schema_version: Option<serde_json::Value>,
}

impl PartitionState {
    pub fn new(config: CoreConfig) -> Self {
        Self::restore(
            config,
            CoreState::default(),
            Seen::default(),
            &Counts::default(),
            None,
        )
    }

    /// A partition that continues from a snapshot's state, ids, counts and offset.
    pub fn restore(
        config: CoreConfig,
        state: CoreState,
        seen: Seen,
        counts: &Counts,
        next_offset: Option<i64>,
    ) -> Self {
        let reason = |r: &str| counts.rejected.get(r).copied().unwrap_or(0);
        Self {
            core: Core::restore(config, state),
            seen,
            next_offset,
            records: counts.records,
            duplicates: counts.duplicates,
            invalid: reason(INVALID_MESSAGE),
            unsupported: reason(UNSUPPORTED_VERSION),
        }
    }

    /// Applies the message at `offset`. `control` is the value of the control header,
    /// when the message has one.
    pub fn apply(&mut self, offset: i64, control: Option<&[u8]>, payload: &[u8]) -> Verdict {
        if self.next_offset.is_some_and(|n| offset < n) {
            return Verdict::AlreadyApplied;
        }
        self.next_offset = Some(offset + 1);
        if let Some(kind) = control {
            return self.control(kind, payload);
        }
        self.records += 1;
        let wire: WireEvent = match serde_json::from_slice(payload) {
            Ok(w) => w,
            Err(e) => return self.undecodable(payload, e),
        };
        if wire.schema_version != SCHEMA_VERSION {
            return self.unsupported(wire.schema_version.to_string());
        }
        let checked = wire.id().and_then(|id| {
            let core = &mut self.core;
            Ok((id.into(), wire.to_event_with(&mut |n| core.intern_name(n))?))
        });
        let (id, event) = match checked {
            Ok(x) => x,
            Err(e) => return self.invalid(e.to_string()),
        };
        // A duplicate is dropped before anything else is decided, so a second replay of a
        // file changes no count, late ones included.
        if self.seen.contains(id) {
            self.duplicates += 1;
            return Verdict::Duplicate;
        }
        self.seen.insert(id);
        match self.core.record(&event) {
            Outcome::Accepted => Verdict::Counted,
            Outcome::Late => Verdict::Rejected {
                reason: RejectReason::LateEvent.as_str(),
                line: Some(event.line),
                detail: None,
            },
        }
    }

    fn control(&mut self, kind: &[u8], payload: &[u8]) -> Verdict {
        let end: Option<EndOfInput> = (kind == END_OF_INPUT.as_bytes())
            .then(|| serde_json::from_slice(payload).ok())
            .flatten();
        match end {
            Some(end) => {
                // Every day up to the replay's last one is complete: make them final here.
                let day_end = (i64::from(day_of(end.last_event_time_us)) + 1) * MICROS_PER_DAY;
                let lateness = self.core.allowed_lateness_us();
                self.core
                    .advance_watermark(day_end.saturating_add(lateness));
                Verdict::Control
            }
            None => {
                self.records += 1;
                self.invalid(format!(
                    "unknown control message {:?}",
                    String::from_utf8_lossy(kind)
                ))
            }
        }
    }

    fn undecodable(&mut self, payload: &[u8], e: serde_json::Error) -> Verdict {
        // A well-formed message of another version is told apart from a broken one.
        if let Ok(VersionOnly {
            schema_version: Some(v),
        }) = serde_json::from_slice(payload)
        {
            if v.as_u64().is_some_and(|v| v != u64::from(SCHEMA_VERSION)) {
                return self.unsupported(v.to_string());
            }
        }
        self.invalid(e.to_string())
    }

    fn unsupported(&mut self, version: String) -> Verdict {
        self.unsupported += 1;
        Verdict::Rejected {
            reason: UNSUPPORTED_VERSION,
            line: None,
            detail: Some(format!("schema_version {version}")),
        }
    }

    fn invalid(&mut self, detail: String) -> Verdict {
        self.invalid += 1;
        Verdict::Rejected {
            reason: INVALID_MESSAGE,
            line: None,
            detail: Some(detail),
        }
    }

    /// `records = accepted + duplicates + sum(rejected)`; control messages are apart.
    pub fn counts(&self) -> Counts {
        let mut rejected = BTreeMap::new();
        for (reason, n) in [
            (RejectReason::LateEvent.as_str(), self.core.late()),
            (INVALID_MESSAGE, self.invalid),
            (UNSUPPORTED_VERSION, self.unsupported),
        ] {
            if n > 0 {
                rejected.insert(reason.to_string(), n);
            }
        }
        Counts {
            records: self.records,
            accepted: self.core.accepted(),
            duplicates: self.duplicates,
            rejected,
            ..Counts::default()
        }
    }
}

#[cfg(test)]
mod tests;
