//! Upload windows and a daily byte budget for metered links (pure: no clock, no I/O).
//!
//! `uplink.upload_windows = ["22:00-06:00", ...]` (the gateway's local time; a window may run
//! past midnight) and `uplink.daily_byte_budget` (request body bytes on the wire per local
//! day). Outside every window, or with the day's budget spent, the uploader sends nothing and
//! waits: readings stay in the outbox, never dropped, and go at the next window or day. The
//! budget is checked before each Bundle, so a day may end at most one Bundle over it (a Bundle
//! is at most `batch_size` readings: a few KiB gzip-compressed). Probes of a pause count too:
//! every byte on a metered link costs the same.
//!
//! [`DayLedger`] is the day's count, kept in a small file beside the store so a restart does
//! not hand out the budget again.

use chrono::{Duration, NaiveDate, NaiveDateTime, NaiveTime, Timelike};

/// One daily window, `[start, end)` in minutes after local midnight; `end <= start` wraps past
/// midnight ("22:00-06:00"). "00:00-24:00" is the whole day.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UploadWindow {
    start: u32,
    end: u32,
}

impl UploadWindow {
    /// Parses `HH:MM-HH:MM` (24-hour; the end may be `24:00`).
    ///
    /// # Errors
    ///
    /// What is wrong with `text`, for a `file:line:col` message.
    pub fn parse(text: &str) -> Result<Self, String> {
        let (a, b) = text
            .split_once('-')
            .ok_or_else(|| format!("{text:?}: expected HH:MM-HH:MM, e.g. \"22:00-06:00\""))?;
        let start = minutes(a.trim(), false)?;
        let end = minutes(b.trim(), true)?;
        if start == end {
            return Err(format!(
                "{text:?}: an empty window (use \"00:00-24:00\" for the whole day)"
            ));
        }
        Ok(UploadWindow { start, end })
    }

    fn contains(&self, minute: u32) -> bool {
        if self.start < self.end {
            (self.start..self.end).contains(&minute)
        } else {
            minute >= self.start || minute < self.end
        }
    }
}

fn minutes(hhmm: &str, end: bool) -> Result<u32, String> {
    let bad = || format!("{hhmm:?} is not a time HH:MM");
    let (h, m) = hhmm.split_once(':').ok_or_else(bad)?;
    if h.len() != 2 || m.len() != 2 {
        return Err(bad());
    }
    let h: u32 = h.parse().map_err(|_| bad())?;
    let m: u32 = m.parse().map_err(|_| bad())?;
    match (h, m) {
        (24, 0) if end => Ok(24 * 60),
        (0..=23, 0..=59) => Ok(h * 60 + m),
        _ => Err(bad()),
    }
}

/// Why the uploader holds back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hold {
    /// Outside every upload window; the next one opens at `until` (local time).
    OutsideWindow { until: NaiveDateTime },
    /// The day's budget is spent (`used` of `budget` bytes); a new day begins at `until`.
    BudgetSpent {
        used: u64,
        budget: u64,
        until: NaiveDateTime,
    },
}

impl Hold {
    pub fn until(&self) -> NaiveDateTime {
        match self {
            Hold::OutsideWindow { until } | Hold::BudgetSpent { until, .. } => *until,
        }
    }

    /// A short stable name, for logs, counters and the status file.
    pub fn class(&self) -> &'static str {
        match self {
            Hold::OutsideWindow { .. } => "outside_upload_window",
            Hold::BudgetSpent { .. } => "daily_byte_budget_spent",
        }
    }
}

/// The configured limits. Empty windows and no budget: always open.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Metering {
    pub windows: Vec<UploadWindow>,
    pub daily_byte_budget: Option<u64>,
}

impl Metering {
    pub fn is_unlimited(&self) -> bool {
        self.windows.is_empty() && self.daily_byte_budget.is_none()
    }

    /// `None`: a Bundle may go now. `used_today`: body bytes sent on `now`'s local day.
    pub fn hold(&self, now: NaiveDateTime, used_today: u64) -> Option<Hold> {
        if let Some(budget) = self.daily_byte_budget {
            if used_today >= budget {
                return Some(Hold::BudgetSpent {
                    used: used_today,
                    budget,
                    until: next_midnight(now),
                });
            }
        }
        if self.windows.is_empty() {
            return None;
        }
        let minute = now.hour() * 60 + now.minute();
        if self.windows.iter().any(|w| w.contains(minute)) {
            return None;
        }
        // The next start, today or tomorrow (every window starts within 24 h).
        let midnight = now.date().and_time(NaiveTime::MIN);
        let until = self
            .windows
            .iter()
            .map(|w| {
                let today = midnight + Duration::minutes(i64::from(w.start));
                if today > now {
                    today
                } else {
                    today + Duration::days(1)
                }
            })
            .min()
            .unwrap_or(now);
        Some(Hold::OutsideWindow { until })
    }
}

fn next_midnight(now: NaiveDateTime) -> NaiveDateTime {
    (now.date() + Duration::days(1)).and_time(NaiveTime::MIN)
}

/// Body bytes sent on one local day.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DayLedger {
    pub day: NaiveDate,
    pub used: u64,
}

impl DayLedger {
    /// The count for `today`: what was recorded if it is today's, else a fresh day.
    pub fn for_day(self, today: NaiveDate) -> DayLedger {
        if self.day == today {
            self
        } else {
            DayLedger {
                day: today,
                used: 0,
            }
        }
    }

    /// The file's text: `YYYY-MM-DD <bytes>\n`.
    pub fn to_text(self) -> String {
        format!("{} {}\n", self.day.format("%Y-%m-%d"), self.used)
    }

    /// Parses [`DayLedger::to_text`].
    ///
    /// # Errors
    ///
    /// The text is not `YYYY-MM-DD <bytes>`.
    pub fn parse(text: &str) -> Result<DayLedger, String> {
        let mut parts = text.split_whitespace();
        let (Some(day), Some(used), None) = (parts.next(), parts.next(), parts.next()) else {
            return Err("expected \"YYYY-MM-DD BYTES\"".into());
        };
        let day = NaiveDate::parse_from_str(day, "%Y-%m-%d").map_err(|e| format!("date: {e}"))?;
        let used = used.parse().map_err(|e| format!("byte count: {e}"))?;
        Ok(DayLedger { day, used })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> NaiveDateTime {
        NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M").unwrap()
    }

    #[test]
    fn windows_parse_and_refuse_what_is_not_a_window() {
        assert_eq!(
            UploadWindow::parse("22:00-06:00"),
            Ok(UploadWindow {
                start: 1320,
                end: 360
            })
        );
        assert_eq!(
            UploadWindow::parse(" 00:00 - 24:00 "),
            Ok(UploadWindow {
                start: 0,
                end: 1440
            })
        );
        for bad in [
            "22:00",
            "2200-0600",
            "24:00-01:00",
            "10:60-11:00",
            "9:00-10:00",
            "10:00-10:00",
            "ab:cd-10:00",
            "",
        ] {
            assert!(UploadWindow::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn no_limits_never_hold() {
        let m = Metering::default();
        assert!(m.is_unlimited());
        assert_eq!(m.hold(at("2026-12-06 12:00"), u64::MAX), None);
    }

    #[test]
    fn a_window_past_midnight_opens_at_its_start_and_closes_at_its_end() {
        let m = Metering {
            windows: vec![UploadWindow::parse("22:00-06:00").unwrap()],
            daily_byte_budget: None,
        };
        assert_eq!(m.hold(at("2026-12-06 23:30"), 0), None);
        assert_eq!(m.hold(at("2026-12-07 05:59"), 0), None);
        assert_eq!(m.hold(at("2026-12-06 22:00"), 0), None);
        assert_eq!(
            m.hold(at("2026-12-07 06:00"), 0),
            Some(Hold::OutsideWindow {
                until: at("2026-12-07 22:00")
            })
        );
        assert_eq!(
            m.hold(at("2026-12-06 21:59"), 0).map(|h| h.until()),
            Some(at("2026-12-06 22:00"))
        );
    }

    #[test]
    fn the_next_window_is_the_nearest_start_today_or_tomorrow() {
        let m = Metering {
            windows: vec![
                UploadWindow::parse("12:00-13:00").unwrap(),
                UploadWindow::parse("02:00-03:00").unwrap(),
            ],
            daily_byte_budget: None,
        };
        assert_eq!(
            m.hold(at("2026-12-06 10:00"), 0).map(|h| h.until()),
            Some(at("2026-12-06 12:00"))
        );
        assert_eq!(
            m.hold(at("2026-12-06 14:00"), 0).map(|h| h.until()),
            Some(at("2026-12-07 02:00"))
        );
        assert_eq!(m.hold(at("2026-12-06 12:59"), 0), None);
    }

    #[test]
    fn a_spent_budget_holds_until_midnight_even_inside_a_window() {
        let m = Metering {
            windows: vec![UploadWindow::parse("00:00-24:00").unwrap()],
            daily_byte_budget: Some(1000),
        };
        assert_eq!(m.hold(at("2026-12-06 10:00"), 999), None);
        assert_eq!(
            m.hold(at("2026-12-06 10:00"), 1000),
            Some(Hold::BudgetSpent {
                used: 1000,
                budget: 1000,
                until: at("2026-12-07 00:00")
            })
        );
    }

    #[test]
    fn the_ledger_rolls_over_at_a_new_day_and_round_trips_its_file() {
        let d = |s| NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap();
        let l = DayLedger {
            day: d("2026-12-06"),
            used: 4096,
        };
        assert_eq!(l.for_day(d("2026-12-06")).used, 4096);
        assert_eq!(l.for_day(d("2026-12-07")).used, 0);
        assert_eq!(DayLedger::parse(&l.to_text()), Ok(l));
        for bad in [
            "",
            "2026-12-06",
            "2026-13-01 5",
            "2026-12-06 -5",
            "2026-12-06 5 6",
        ] {
            assert!(DayLedger::parse(bad).is_err(), "{bad:?}");
        }
    }
}
