//! Rate limiting of repeated errors: one log line per episode plus a count.
//!
//! An episode of a kind of failure (the broker unreachable, uploads failing) starts with its
//! first failure, which is logged in full. Further failures of the same kind are counted, not
//! logged, except for one reminder line every [`REMINDER_EVERY`] with the count so far. The
//! success that ends the episode logs one line with the total. Counters still count every
//! failure. A failure with another cause than the last one logged (uploads: DNS fixed, now TLS
//! fails) is logged at once, with the count. Pure: `now` is an argument.

use std::collections::HashMap;
#[cfg(not(test))]
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// A still-failing episode is mentioned this often.
pub const REMINDER_EVERY: Duration = Duration::from_secs(600);

/// What to do with one failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// The first failure of an episode: log it.
    Log,
    /// A reminder: log it with the number of failures since the episode began.
    Remind { failures: u64 },
    /// Counted, not logged.
    Quiet,
}

/// The end of an episode: how many failures it had and how long it lasted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EpisodeEnd {
    pub failures: u64,
    pub lasted: Duration,
}

#[derive(Debug, Clone, Copy)]
struct Episode {
    failures: u64,
    started: Instant,
    last_line: Instant,
    /// The cause of the last failure logged.
    cause: &'static str,
}

/// Episodes by kind.
#[derive(Debug, Default)]
pub struct Episodes {
    open: HashMap<&'static str, Episode>,
}

impl Episodes {
    pub fn failure(&mut self, kind: &'static str, now: Instant) -> Decision {
        self.failure_because(kind, "", now)
    }

    /// A failure of `kind` with a `cause` (a class such as `dns` or `tls`): as
    /// [`Episodes::failure`], and a change of cause within the episode is logged at once.
    pub fn failure_because(
        &mut self,
        kind: &'static str,
        cause: &'static str,
        now: Instant,
    ) -> Decision {
        match self.open.get_mut(kind) {
            None => {
                self.open.insert(
                    kind,
                    Episode {
                        failures: 1,
                        started: now,
                        last_line: now,
                        cause,
                    },
                );
                Decision::Log
            }
            Some(e) => {
                e.failures += 1;
                if e.cause != cause || now.saturating_duration_since(e.last_line) >= REMINDER_EVERY
                {
                    e.last_line = now;
                    e.cause = cause;
                    Decision::Remind {
                        failures: e.failures,
                    }
                } else {
                    Decision::Quiet
                }
            }
        }
    }

    /// A success of `kind`: closes its episode, if one was open.
    pub fn success(&mut self, kind: &'static str, now: Instant) -> Option<EpisodeEnd> {
        self.open.remove(kind).map(|e| EpisodeEnd {
            failures: e.failures,
            lasted: now.saturating_duration_since(e.started),
        })
    }
}

#[cfg(not(test))]
static EPISODES: Mutex<Option<Episodes>> = Mutex::new(None);

/// The process-wide episodes (telemetry's).
#[cfg(not(test))]
pub fn with<R>(f: impl FnOnce(&mut Episodes) -> R) -> R {
    let mut g = EPISODES.lock().unwrap_or_else(PoisonError::into_inner);
    f(g.get_or_insert_with(Episodes::default))
}

// The agent's unit tests run in parallel threads of one process, and each captures its own log
// lines (a thread-default subscriber). With one process-wide state, a test's failure or success
// changed what a test on another thread logged ("a new cause": a second line; under qemu, where
// the tests overlap more, an OAuth test saw 5 lines where its episode had 1). In unit tests each
// thread has its own episodes, as it has its own log.
#[cfg(test)]
thread_local! {
    static EPISODES: std::cell::RefCell<Episodes> = std::cell::RefCell::new(Episodes::default());
}

/// The episodes of this test thread (the process-wide ones outside unit tests).
#[cfg(test)]
pub fn with<R>(f: impl FnOnce(&mut Episodes) -> R) -> R {
    EPISODES.with(|e| f(&mut e.borrow_mut()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_hour_of_failures_is_one_line_five_reminders_and_one_recovery() {
        let mut e = Episodes::default();
        let t0 = Instant::now();
        let mut lines = 0;
        let mut reminders = Vec::new();
        for i in 0..120u64 {
            // One failure every 30 s for an hour.
            match e.failure("mqtt", t0 + Duration::from_secs(30 * i)) {
                Decision::Log => lines += 1,
                Decision::Remind { failures } => reminders.push(failures),
                Decision::Quiet => {}
            }
        }
        assert_eq!(lines, 1);
        assert_eq!(reminders, vec![21, 41, 61, 81, 101]);
        let end = e.success("mqtt", t0 + Duration::from_secs(3600)).unwrap();
        assert_eq!(end.failures, 120);
        assert_eq!(end.lasted, Duration::from_secs(3600));
        assert_eq!(e.success("mqtt", t0), None, "no episode open any more");
        assert_eq!(
            e.failure("mqtt", t0 + Duration::from_secs(4000)),
            Decision::Log
        );
    }

    #[test]
    fn a_new_cause_within_an_episode_is_logged_at_once_then_quiet_again() {
        let mut e = Episodes::default();
        let t = Instant::now();
        assert_eq!(e.failure_because("uplink", "dns", t), Decision::Log);
        assert_eq!(e.failure_because("uplink", "dns", t), Decision::Quiet);
        assert_eq!(
            e.failure_because("uplink", "tls", t),
            Decision::Remind { failures: 3 }
        );
        assert_eq!(e.failure_because("uplink", "tls", t), Decision::Quiet);
        assert_eq!(e.success("uplink", t).map(|x| x.failures), Some(4));
    }

    #[test]
    fn kinds_are_separate_episodes() {
        let mut e = Episodes::default();
        let t = Instant::now();
        assert_eq!(e.failure("a", t), Decision::Log);
        assert_eq!(e.failure("b", t), Decision::Log);
        assert_eq!(e.failure("a", t), Decision::Quiet);
    }
}
