//! Pacing: when each event is due, for N× real time, a fixed rate, or as fast as possible.
//! Pure arithmetic on an elapsed duration passed in; the caller owns the clock and sleeps.

use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Pace {
    /// As fast as possible.
    Max,
    /// Event time runs this many times faster than wall time.
    Speed(f64),
    /// This many events per second of wall time.
    Rate(f64),
}

/// Schedules events relative to the start of the replay.
#[derive(Debug, Clone)]
pub struct Pacer {
    pace: Pace,
    first_event_us: Option<i64>,
    emitted: u64,
}

impl Pacer {
    pub fn new(pace: Pace) -> Self {
        Self {
            pace,
            first_event_us: None,
            emitted: 0,
        }
    }

    /// Wall time after the start at which the next event, of this event time, is due.
    /// `None` means now. Call once per event, in emission order.
    pub fn due(&mut self, event_time_us: i64) -> Option<Duration> {
        let n = self.emitted;
        self.emitted += 1;
        match self.pace {
            Pace::Max => None,
            Pace::Rate(rate) => Some(Duration::from_secs_f64(n as f64 / rate)),
            Pace::Speed(speed) => {
                let first = *self.first_event_us.get_or_insert(event_time_us);
                // An event earlier than the first (file order) is due at once.
                let ahead_us = (event_time_us - first).max(0) as f64;
                Some(Duration::from_secs_f64(ahead_us / 1e6 / speed))
            }
        }
    }

    /// How long to wait before emitting an event due at `due`, `elapsed` after the start.
    pub fn wait(due: Duration, elapsed: Duration) -> Option<Duration> {
        due.checked_sub(elapsed).filter(|w| !w.is_zero())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_never_waits() {
        let mut p = Pacer::new(Pace::Max);
        assert_eq!(p.due(0), None);
        assert_eq!(p.due(1_000_000_000), None);
    }

    #[test]
    fn rate_spaces_events_evenly() {
        let mut p = Pacer::new(Pace::Rate(4.0));
        let due: Vec<_> = (0..5).map(|_| p.due(0).unwrap().as_millis()).collect();
        assert_eq!(due, vec![0, 250, 500, 750, 1000]);
    }

    #[test]
    fn speed_scales_event_time() {
        let mut p = Pacer::new(Pace::Speed(3600.0));
        let t0 = 1_587_729_039_000_000;
        assert_eq!(p.due(t0), Some(Duration::ZERO));
        // One hour of event time is one second at 3600x.
        assert_eq!(p.due(t0 + 3_600_000_000), Some(Duration::from_secs(1)));
        // Out-of-order events earlier than the first are due at once.
        assert_eq!(p.due(t0 - 5_000_000), Some(Duration::ZERO));
    }

    #[test]
    fn wait_is_what_remains() {
        let s = Duration::from_secs;
        assert_eq!(Pacer::wait(s(3), s(1)), Some(s(2)));
        assert_eq!(Pacer::wait(s(1), s(3)), None);
        assert_eq!(Pacer::wait(s(2), s(2)), None);
    }
}
