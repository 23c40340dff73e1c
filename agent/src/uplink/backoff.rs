//! Exponential backoff with jitter (pure; the random source is injected).
//!
//! Delay for attempt `n` (0-based): `d = min(max, initial × 2^n)`, then a uniformly random
//! value in `[d/2, d]` ("equal jitter": never a hot loop, never a thundering herd of gateways
//! retrying in step after an outage). A server's `Retry-After` is a floor, capped at one hour.

use std::time::Duration;

use rand::Rng;

/// The longest `Retry-After` honoured (a hostile or broken server must not park us for days).
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max: max.max(initial),
        }
    }

    /// The ceiling for attempt `n` before jitter.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX);
        self.initial.saturating_mul(factor).min(self.max)
    }

    /// The delay before retry number `attempt`, at least `floor` (a server's Retry-After).
    pub fn delay(&self, attempt: u32, floor: Option<Duration>, rng: &mut impl Rng) -> Duration {
        let d = self.ceiling(attempt);
        let half = d / 2;
        let span = (d - half).as_millis() as u64;
        let jittered = half + Duration::from_millis(rng.random_range(0..=span));
        match floor {
            Some(f) => jittered.max(f.min(MAX_RETRY_AFTER)),
            None => jittered,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn grows_exponentially_up_to_the_cap() {
        let b = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        assert_eq!(b.ceiling(0), Duration::from_millis(100));
        assert_eq!(b.ceiling(3), Duration::from_millis(800));
        assert_eq!(b.ceiling(10), Duration::from_secs(5));
        assert_eq!(b.ceiling(400), Duration::from_secs(5));
    }

    #[test]
    fn jitter_stays_within_half_and_full_ceiling() {
        let b = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let mut distinct = std::collections::HashSet::new();
        for attempt in 0..12 {
            for _ in 0..50 {
                let d = b.delay(attempt, None, &mut rng);
                assert!(
                    d >= b.ceiling(attempt) / 2 && d <= b.ceiling(attempt),
                    "{d:?}"
                );
                distinct.insert(d);
            }
        }
        assert!(distinct.len() > 50, "jitter actually varies");
    }

    #[test]
    fn retry_after_is_a_floor_but_capped() {
        let b = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        let mut rng = rand::rngs::StdRng::seed_from_u64(2);
        assert!(b.delay(0, Some(Duration::from_secs(30)), &mut rng) >= Duration::from_secs(30));
        assert_eq!(
            b.delay(0, Some(Duration::from_secs(86_400)), &mut rng),
            MAX_RETRY_AFTER
        );
    }
}
