//! Bounded waits: every test that waits for a state polls it here, with a limit, and fails
//! naming what it waited for (and what it last saw) once the limit is passed.

use std::fmt::Display;
use std::time::{Duration, Instant};

/// How long a wait sleeps between two looks at the state.
pub const POLL: Duration = Duration::from_millis(50);

/// Polls `done` every [`POLL`] until it holds; panics after `limit`, naming `what`.
pub fn wait_until(limit: Duration, what: impl Display, mut done: impl FnMut() -> bool) {
    wait_until_ok(limit, what, || if done() { Ok(()) } else { Err("") });
}

/// Polls `poll` every [`POLL`] until it gives `Ok`, and returns that value; panics after
/// `limit`, naming `what` and the last `Err` (what the state was when time ran out).
pub fn wait_until_ok<T, E: Display>(
    limit: Duration,
    what: impl Display,
    mut poll: impl FnMut() -> Result<T, E>,
) -> T {
    let deadline = Deadline::after(limit);
    loop {
        let last = match poll() {
            Ok(v) => return v,
            Err(last) => last.to_string(),
        };
        if deadline.passed() {
            let last = if last.is_empty() {
                String::new()
            } else {
                format!("; last seen:\n{last}")
            };
            panic!("timed out after {limit:?} waiting for {what}{last}");
        }
        std::thread::sleep(POLL);
    }
}

/// A limit for loops that wait on something that blocks by itself (a consumer's poll),
/// where a sleep between looks would distort what they measure.
pub struct Deadline {
    at: Instant,
    limit: Duration,
}

impl Deadline {
    pub fn after(limit: Duration) -> Deadline {
        Deadline {
            at: Instant::now() + limit,
            limit,
        }
    }

    pub fn passed(&self) -> bool {
        Instant::now() >= self.at
    }

    /// Panics, naming `what`, once the limit is passed.
    pub fn check(&self, what: impl Display) {
        assert!(
            !self.passed(),
            "timed out after {:?} waiting for {what}",
            self.limit
        );
    }
}
