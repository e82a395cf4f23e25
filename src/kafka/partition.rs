//! One partition's state inside a processor: its aggregate core, the event ids it has
//! counted, its counts and the next offset to read. Pure and synchronous: every decision
//! (valid, duplicate, late) depends only on this partition's messages in offset order,
//! never on how partitions interleave, so a restart or a hand-over to another process
//! decides the same way.

use std::collections::BTreeMap;

use serde::Deserialize;
use storepulse_replay::wire::{WireEventRef, SCHEMA_VERSION};
use storepulse_replay::{PurchaseEvent, RejectReason};

use super::{EndOfInput, Input, Watermark, END_OF_INPUT, INPUT, WATERMARK};
use crate::aggregate::{
    day_of, Core, CoreConfig, CoreState, Outcome, Seen, SeenId, MICROS_PER_DAY,
};
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

/// A message decided but for its event, which is still to be recorded.
enum Step {
    Done(Verdict),
    Record(PurchaseEvent),
}

#[derive(Debug, Clone)]
pub struct PartitionState {
    pub core: Core,
    pub seen: Seen,
    /// First offset not applied yet; `None` before the first message (read from the start).
    pub next_offset: Option<i64>,
    /// The inputs the replayer announced: identity and line count.
    pub inputs: BTreeMap<u64, u64>,
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
        // A partition's days are merged with the other partitions' (their customers too),
        // and its watermark moves only with the replayer's: a day is final for the merged
        // tables once every partition passed it, and no partition can then take an event
        // of it, whatever share of the events it holds.
        let config = CoreConfig {
            keep_day_customers: true,
            watermark_from_events: false,
            ..config
        };
        Self {
            core: Core::restore(config, state),
            seen,
            next_offset,
            inputs: BTreeMap::new(),
            records: counts.records,
            duplicates: counts.duplicates,
            invalid: reason(INVALID_MESSAGE),
            unsupported: reason(UNSUPPORTED_VERSION),
        }
    }

    /// Applies the message at `offset`. `control` is the value of the control header,
    /// when the message has one.
    pub fn apply(&mut self, offset: i64, control: Option<&[u8]>, payload: &[u8]) -> Verdict {
        match self.decide(offset, control, payload) {
            Step::Done(v) => v,
            Step::Record(event) => {
                let outcome = self.core.record(&event);
                verdict(&event, outcome)
            }
        }
    }

    /// Applies messages in offset order, as [`PartitionState::apply`] one by one would,
    /// but records the events between control messages as one batch. `verdicts` gets one
    /// verdict per message.
    pub fn apply_batch<'a>(
        &mut self,
        messages: impl Iterator<Item = (i64, Option<&'a [u8]>, &'a [u8])>,
        verdicts: &mut Vec<Verdict>,
    ) {
        verdicts.clear();
        let mut events: Vec<PurchaseEvent> = Vec::new();
        let mut at: Vec<usize> = Vec::new();
        for (offset, control, payload) in messages {
            // A control message may move the watermark: what came before it is recorded
            // first.
            if control.is_some() && !events.is_empty() {
                self.record_pending(&mut events, &mut at, verdicts);
            }
            match self.decide(offset, control, payload) {
                Step::Done(v) => verdicts.push(v),
                Step::Record(e) => {
                    at.push(verdicts.len());
                    verdicts.push(Verdict::Counted);
                    events.push(e);
                }
            }
        }
        self.record_pending(&mut events, &mut at, verdicts);
    }

    fn record_pending(
        &mut self,
        events: &mut Vec<PurchaseEvent>,
        at: &mut Vec<usize>,
        verdicts: &mut [Verdict],
    ) {
        if events.is_empty() {
            return;
        }
        for late in self.core.record_batch(events) {
            verdicts[at[late]] = verdict(&events[late], Outcome::Late);
        }
        events.clear();
        at.clear();
    }

    /// Everything about a message but recording its event: the offset, control messages,
    /// decoding, validation and duplicates.
    fn decide(&mut self, offset: i64, control: Option<&[u8]>, payload: &[u8]) -> Step {
        if self.next_offset.is_some_and(|n| offset < n) {
            return Step::Done(Verdict::AlreadyApplied);
        }
        self.next_offset = Some(offset + 1);
        if let Some(kind) = control {
            return Step::Done(self.control(kind, payload));
        }
        self.records += 1;
        let wire: WireEventRef = match storepulse_replay::wire::decode(payload) {
            Ok(w) => w,
            Err(e) => return Step::Done(self.undecodable(payload, e)),
        };
        if wire.schema_version != SCHEMA_VERSION {
            return Step::Done(self.unsupported(wire.schema_version.to_string()));
        }
        let checked = wire.id().and_then(|id| {
            let core = &mut self.core;
            Ok((id.into(), wire.to_event_with(&mut |n| core.intern_name(n))?))
        });
        let (id, event): (SeenId, _) = match checked {
            Ok(x) => x,
            Err(e) => return Step::Done(self.invalid(e.to_string())),
        };
        // Only lines of announced inputs: no state is kept for lines that do not exist.
        match self.inputs.get(&id.source) {
            None => {
                return Step::Done(self.invalid(format!(
                    "event_id {}: no input {:016x} was announced on this partition",
                    wire.event_id, id.source
                )))
            }
            Some(&lines) if id.line < 2 || id.line > lines.min(Seen::MAX_LINE) => {
                return Step::Done(self.invalid(format!(
                    "event_id {}: the input has lines 2 to {lines}",
                    wire.event_id
                )))
            }
            Some(_) => {}
        }
        // A duplicate is dropped before anything else is decided, so a second replay of a
        // file changes no count, late ones included.
        if !self.seen.insert(id) {
            self.duplicates += 1;
            return Step::Done(Verdict::Duplicate);
        }
        Step::Record(event)
    }

    fn control(&mut self, kind: &[u8], payload: &[u8]) -> Verdict {
        enum Control {
            Watermark(i64),
            Input(u64, u64),
        }
        let control = match kind {
            k if k == END_OF_INPUT.as_bytes() => {
                serde_json::from_slice(payload).ok().map(|end: EndOfInput| {
                    // Every day up to the replay's last one is complete: make them final.
                    let day_end = (i64::from(day_of(end.last_event_time_us)) + 1) * MICROS_PER_DAY;
                    Control::Watermark(day_end.saturating_add(self.core.allowed_lateness_us()))
                })
            }
            k if k == WATERMARK.as_bytes() => serde_json::from_slice(payload)
                .ok()
                .map(|w: Watermark| Control::Watermark(w.watermark_us)),
            k if k == INPUT.as_bytes() => {
                serde_json::from_slice(payload).ok().and_then(|i: Input| {
                    let source = (i.source.len() == 16)
                        .then(|| u64::from_str_radix(&i.source, 16).ok())
                        .flatten()?;
                    Some(Control::Input(source, i.lines))
                })
            }
            _ => None,
        };
        match control {
            Some(Control::Watermark(to)) => {
                self.core.advance_watermark(to);
                Verdict::Control
            }
            Some(Control::Input(source, lines)) => {
                let known = self.inputs.entry(source).or_default();
                *known = (*known).max(lines);
                Verdict::Control
            }
            None => {
                self.records += 1;
                self.invalid(format!(
                    "unknown or malformed control message {:?}: {}",
                    String::from_utf8_lossy(kind),
                    String::from_utf8_lossy(payload)
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

/// The verdict of an event recorded.
fn verdict(event: &PurchaseEvent, outcome: Outcome) -> Verdict {
    match outcome {
        Outcome::Accepted => Verdict::Counted,
        Outcome::Late => Verdict::Rejected {
            reason: RejectReason::LateEvent.as_str(),
            line: Some(event.line),
            detail: None,
        },
    }
}

#[cfg(test)]
mod tests;
