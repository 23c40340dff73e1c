//! Store pressure: when the outbox is close to its bound, stop taking readings (pure policy).
//!
//! The bound (`store.max_bytes`) is on the bytes of records the outbox **holds** — pending
//! readings, dead letters and quarantined records with their keys and index entries — as
//! counted by [`super::Outbox::held_bytes`]. Tombstones and identity entries are not in it:
//! they are about 110 bytes per reading and leave after the tombstone retention, whatever the
//! uplink does, so they cannot grow without bound the way a backlog can (they are in the
//! on-disk size, which is reported beside it).
//!
//! | held bytes, of `max_bytes` | level      | the pipeline                                     |
//! |----------------------------|------------|--------------------------------------------------|
//! | below 80%                  | `Normal`   | takes readings                                   |
//! | 80% or more                | `High`     | stops taking readings: sources are not acknowledged, brokers and devices keep them (alarm) |
//! | 90% or more                | `Critical` | as `High`, second alarm                          |
//! | back below 70%             | `Normal`   | takes readings again (hysteresis: no flapping at 80%) |
//!
//! Nothing stored is ever dropped to make room: the only way down is the uplink delivering.
//! The pipeline may still store what it had already taken when it crossed 80% (at most one
//! batch), so the bound is exceeded by at most one batch of readings.

/// Percent of `max_bytes` at which the pipeline stops taking readings.
pub const HIGH_PERCENT: u64 = 80;
/// Percent of `max_bytes` of the second alarm.
pub const CRITICAL_PERCENT: u64 = 90;
/// Percent of `max_bytes` below which a paused pipeline takes readings again.
pub const RESUME_PERCENT: u64 = 70;

/// How full the store is, as the pipeline acts on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Normal,
    High,
    Critical,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Normal => "normal",
            Level::High => "high",
            Level::Critical => "critical",
        }
    }

    /// Does the pipeline take readings at this level?
    pub fn takes_readings(self) -> bool {
        self == Level::Normal
    }
}

/// The level as a state machine with hysteresis. Feed it the held bytes; it says when the level
/// changes.
#[derive(Clone, Debug)]
pub struct Pressure {
    max_bytes: u64,
    level: Level,
}

impl Pressure {
    pub fn new(max_bytes: u64) -> Pressure {
        Pressure {
            max_bytes: max_bytes.max(1),
            level: Level::Normal,
        }
    }

    pub fn level(&self) -> Level {
        self.level
    }

    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    /// The level `held` bytes would lead to from the current level, without changing it.
    pub fn next_level(&self, held: u64) -> Level {
        // In u128: `held * 100` cannot overflow.
        let at_least =
            |p: u64| u128::from(held) * 100 >= u128::from(self.max_bytes) * u128::from(p);
        if at_least(CRITICAL_PERCENT) {
            Level::Critical
        } else if at_least(HIGH_PERCENT) {
            Level::High
        } else if self.level != Level::Normal && at_least(RESUME_PERCENT) {
            // Between 70% and 80% after a pause: stay paused (the second alarm is cleared).
            Level::High
        } else {
            Level::Normal
        }
    }

    /// Applies `held`; returns `Some((from, to))` when the level changed.
    pub fn observe(&mut self, held: u64) -> Option<(Level, Level)> {
        let next = self.next_level(held);
        if next == self.level {
            return None;
        }
        let from = std::mem::replace(&mut self.level, next);
        Some((from, next))
    }

    /// Per cent of `max_bytes`, for logs (rounded down).
    pub fn percent(&self, held: u64) -> u64 {
        let pct = u128::from(held) * 100 / u128::from(self.max_bytes);
        u64::try_from(pct).unwrap_or(u64::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_at_80_alarms_again_at_90_and_resumes_only_below_70() {
        let mut p = Pressure::new(1000);
        assert_eq!(p.observe(799), None);
        assert_eq!(p.observe(800), Some((Level::Normal, Level::High)));
        assert!(!p.level().takes_readings());
        assert_eq!(p.observe(900), Some((Level::High, Level::Critical)));
        assert_eq!(p.observe(850), Some((Level::Critical, Level::High)));
        // Hysteresis: 79% and 70% keep it paused.
        assert_eq!(p.observe(790), None);
        assert_eq!(p.observe(700), None);
        assert_eq!(p.observe(699), Some((Level::High, Level::Normal)));
        assert!(p.level().takes_readings());
        // From Normal, 75% is Normal.
        assert_eq!(p.observe(750), None);
    }

    #[test]
    fn a_jump_from_normal_straight_past_90_is_critical() {
        let mut p = Pressure::new(1000);
        assert_eq!(p.observe(950), Some((Level::Normal, Level::Critical)));
        assert_eq!(p.observe(10), Some((Level::Critical, Level::Normal)));
    }

    #[test]
    fn huge_values_do_not_overflow() {
        let mut p = Pressure::new(u64::MAX);
        assert_eq!(p.observe(u64::MAX), Some((Level::Normal, Level::Critical)));
        assert_eq!(p.percent(u64::MAX), 100);
        assert_eq!(p.percent(u64::MAX / 2), 49);
        let p = Pressure::new(10);
        assert_eq!(p.percent(u64::MAX), u64::MAX, "saturates, never a panic");
    }
}
