//! Adaptive batch size (pure): how many readings the uploader reads from the outbox for the
//! next Bundle.
//!
//! - It starts at [`INITIAL`] (or the cap, if smaller) and doubles after every full batch the
//!   server confirmed within [`FAST`], up to the configured cap (`uplink.batch_size`).
//! - A timeout halves it (a slow link or server gets smaller Bundles that fit in the timeout;
//!   the uploader also splits the timed-out batch to the new size before resending it).
//! - A 413 makes it half the refused batch and remembers the smallest refused size (the
//!   server's limit does not move): growth then approaches that size by halving the distance
//!   (a binary search for the server's limit) and never reaches it. The scheduler bisects the
//!   refused batch itself: this keeps the next fresh batches from hitting the limit again.
//! - A partial batch (the outbox had fewer readings) or a slow success is no evidence either way:
//!   the size stays.
//!
//! It never goes below 1 nor above the cap. A 413 on a single reading is the scheduler's business
//! (a dead letter with its reason), not a reason to loop.
use std::time::Duration;

/// The first batch size (before any evidence), if the cap allows it.
pub const INITIAL: usize = 10;

/// A confirmed exchange at most this long counts as fast (grows the batch).
pub const FAST: Duration = Duration::from_secs(2);

/// What happened to a batch of `sent` readings, as far as the size is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exchanged {
    /// Confirmed by the server after `took`.
    Delivered { sent: usize, took: Duration },
    /// No answer within the timeout.
    TimedOut { sent: usize },
    /// 413.
    TooLarge { sent: usize },
    /// Anything else (rejections, refusals, other network errors): no evidence about the size.
    Other,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdaptiveBatch {
    cap: usize,
    size: usize,
    /// The smallest batch (of more than one reading) refused with 413; `cap + 1` before any.
    refused: usize,
}

impl AdaptiveBatch {
    /// `cap`: the configured `uplink.batch_size` (at least 1).
    pub fn new(cap: usize) -> Self {
        let cap = cap.max(1);
        Self {
            cap,
            size: INITIAL.min(cap),
            refused: cap + 1,
        }
    }

    /// How many readings to read for the next fresh batch.
    pub fn size(&self) -> usize {
        self.size
    }

    pub fn cap(&self) -> usize {
        self.cap
    }

    /// The size the next fresh batch will have if a batch of `sent` readings is confirmed
    /// fast: what the uploader reads ahead while that batch is in flight.
    pub fn if_delivered_fast(&self, sent: usize) -> usize {
        let mut next = *self;
        next.observe(Exchanged::Delivered {
            sent,
            took: Duration::ZERO,
        })
    }

    /// Takes the outcome of one exchange into account; returns the new size.
    pub fn observe(&mut self, e: Exchanged) -> usize {
        self.size = match e {
            Exchanged::Delivered { sent, took } if sent >= self.size && took <= FAST => {
                let doubled = self.size.saturating_mul(2).min(self.cap);
                if self.refused > self.cap {
                    doubled
                } else {
                    // Halfway towards the smallest refused size, never reaching it.
                    doubled.min(self.size + (self.refused - self.size) / 2)
                }
            }
            Exchanged::Delivered { .. } | Exchanged::Other => self.size,
            Exchanged::TimedOut { sent } => (self.size.min(sent.max(1)) / 2).max(1),
            Exchanged::TooLarge { sent } => {
                // One reading too large is that reading's problem (a dead letter), not a limit.
                if sent > 1 {
                    self.refused = self.refused.min(sent);
                }
                (sent / 2).clamp(1, self.size).min(self.refused - 1)
            }
        };
        self.size
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const QUICK: Duration = Duration::from_millis(100);

    fn delivered(sent: usize) -> Exchanged {
        Exchanged::Delivered { sent, took: QUICK }
    }

    #[test]
    fn starts_at_the_initial_size_or_the_cap_whichever_is_smaller() {
        assert_eq!(AdaptiveBatch::new(50).size(), INITIAL);
        assert_eq!(AdaptiveBatch::new(4).size(), 4);
        assert_eq!(AdaptiveBatch::new(0).size(), 1, "a cap of 0 is read as 1");
    }

    #[test]
    fn grows_while_full_batches_are_confirmed_fast_and_stops_at_the_cap() {
        let mut b = AdaptiveBatch::new(50);
        let mut sizes = vec![b.size()];
        for _ in 0..5 {
            let n = b.size();
            sizes.push(b.observe(delivered(n)));
        }
        assert_eq!(sizes, vec![10, 20, 40, 50, 50, 50]);
    }

    #[test]
    fn a_slow_success_or_a_partial_batch_does_not_grow_it() {
        let mut b = AdaptiveBatch::new(50);
        b.observe(Exchanged::Delivered {
            sent: 10,
            took: FAST + Duration::from_millis(1),
        });
        assert_eq!(b.size(), 10, "slow");
        b.observe(delivered(3));
        assert_eq!(b.size(), 10, "the outbox had only 3");
        b.observe(Exchanged::Other);
        assert_eq!(b.size(), 10);
    }

    #[test]
    fn a_timeout_halves_it_down_to_one_and_never_to_zero() {
        let mut b = AdaptiveBatch::new(40);
        b.observe(delivered(10));
        b.observe(delivered(20));
        assert_eq!(b.size(), 40);
        let mut sizes = Vec::new();
        for _ in 0..8 {
            let n = b.size();
            sizes.push(b.observe(Exchanged::TimedOut { sent: n }));
        }
        assert_eq!(sizes, vec![20, 10, 5, 2, 1, 1, 1, 1]);
        // A timeout on a bisected half shrinks from that half, not from the larger size.
        let mut b = AdaptiveBatch::new(40);
        b.observe(delivered(10));
        assert_eq!(b.observe(Exchanged::TimedOut { sent: 6 }), 3);
    }

    #[test]
    fn a_413_halves_the_refused_batch_and_growth_stops_below_the_refused_size() {
        let mut b = AdaptiveBatch::new(50);
        b.observe(delivered(10));
        b.observe(delivered(20));
        assert_eq!(b.size(), 40);
        assert_eq!(b.observe(Exchanged::TooLarge { sent: 40 }), 20);
        // Halfway towards the refused size: a binary search for the server's limit (25 here).
        assert_eq!(b.observe(delivered(20)), 30);
        assert_eq!(b.observe(Exchanged::TooLarge { sent: 30 }), 15);
        assert_eq!(b.observe(delivered(15)), 22);
        assert_eq!(b.observe(delivered(22)), 26);
        assert_eq!(b.observe(Exchanged::TooLarge { sent: 26 }), 13);
        assert_eq!(b.observe(delivered(13)), 19);
        assert_eq!(b.observe(delivered(19)), 22);
        assert_eq!(b.observe(delivered(22)), 24);
        assert_eq!(b.observe(delivered(24)), 25);
        assert_eq!(b.observe(delivered(25)), 25, "settled just under the limit");
        // A 413 on a larger batch than the size (a queued one) never grows it.
        let mut b = AdaptiveBatch::new(50);
        assert_eq!(b.observe(Exchanged::TooLarge { sent: 50 }), 10);
    }

    #[test]
    fn a_413_on_one_reading_is_no_limit_for_the_others() {
        let mut b = AdaptiveBatch::new(50);
        assert_eq!(b.observe(Exchanged::TooLarge { sent: 1 }), 1);
        assert_eq!(b.observe(delivered(1)), 2);
        assert_eq!(b.observe(delivered(2)), 4);
        assert_eq!(b.observe(delivered(4)), 8);
        assert_eq!(b.observe(delivered(8)), 16);
        assert_eq!(b.observe(delivered(16)), 32);
        assert_eq!(b.observe(delivered(32)), 50);
    }
}
