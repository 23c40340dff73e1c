//! Stream reduction (pure): a continuous device's records in, the few readings worth keeping out.
//!
//! A Nonin in data format 2 or 7 sends 3 records a second and a Masimo in ASCII 1 one line a
//! second: uploaded as they come, one oximeter would make 86,400 to 259,200 records (each two or
//! more Observations) a day per patient, which no clinician reads and which would wear out the
//! gateway's SD card. A [`Reducer`] sits between a streaming source's decoder and the pipeline;
//! it takes records and `now`, and returns reduced records and counts. No I/O, no clock.
//!
//! | mode | what comes out | when |
//! |---|---|---|
//! | [`Mode::SpotCheck`] (default for streaming oximeters) | the median of each type over `window` | a window opens at the first valid record (a probe put on a finger), closes `window` later; then again every `repeat` while the signal stays valid, or at the next application |
//! | [`Mode::Interval`] | the median of each type over each `every`-long window | windows aligned on the clock (`…:00`, `…:15`…); the first, partial window after start is dropped |
//! | [`Mode::OnChange`] | the record itself | when a value moved by at least its threshold since the last record sent, and the first valid record of each application |
//! | [`Mode::All`] | every valid record (research) | as it comes |
//!
//! Rules common to every mode:
//! - **Status gating**: a record whose status keeps it from being a measurement (sensor off,
//!   artifact, out of track, no sensor...: [`unreliable_status`], i.e. `Status::class()` is
//!   `Invalid` or `NotForUpload`) is never a sample and never leaves the reducer; neither is a
//!   record with no value. Both are counted.
//! - **A window's median** is taken per reading type over the window's valid records. It needs
//!   [`MIN_SAMPLES`] values of that type and at least half of the window's records valid
//!   (a probe falling off halfway makes no spot check); otherwise the window is counted as
//!   insufficient and nothing is sent. For an even count the *lower* middle value is taken, so the
//!   median is a value the device reported, at its resolution. The reduced record carries the
//!   union of the samples' (non-blocking) statuses, so a window with a questionable sample is
//!   questionable, and the device serial of the last sample. It carries no device time: its
//!   time is the window's end, on the gateway clock. It is a statistic, not a spot reading: it
//!   carries the statistic [`WINDOW_STATISTIC`] and its window (`fields`: `reduction`,
//!   `window_seconds`, `samples`), and the pipeline uploads it with the window as
//!   `effectivePeriod` and the statistic in `Observation.method` (see `convert::reduced_window`).
//! - **Identity**: a reduced record's time is the end of its window (spot check, interval) or
//!   the reception time of the record (on change, all), made strictly increasing per device (a
//!   read that delivers two Nonin packets gives them the same reception time). The pipeline
//!   derives the FHIR identifier from it (`device-patient-type-G<time>`). A window is closed
//!   once; a restart never reopens it: spot checks start at the first valid record after start,
//!   and the interval window in progress at start is dropped. So a restart or a `kill -9` in
//!   the middle of a window cannot produce a second Observation for a window that was already
//!   sent; what a crash loses is the window in progress (and a reduced record the store had not
//!   yet made durable).
//! - A record stored by the device and sent later, or one whose device says its clock is wrong
//!   ([`StatusClass::FromMemory`], [`StatusClass::ClockUnreliable`]), is not a sample of *now*:
//!   it is passed on as it is, unreduced, for the pipeline to date or hold (it does not belong
//!   in a window of live values).
//! - A signal is *lost* after [`SIGNAL_GAP`] without a valid record; the next valid record is a
//!   new application (spot check: a new window; on change: sent whatever its value).

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, TimeZone, Utc};
use device_drivers::{Decimal, Reading, ReadingType, Record, Status, StatusClass};

use super::convert::unreliable_status;

/// The statistic a reduced window carries (`MeasurementContext::statistic`; Open mHealth's
/// `descriptive_statistic` name for it).
pub const WINDOW_STATISTIC: &str = "median";

/// A window's median of a type needs at least this many values of it.
pub const MIN_SAMPLES: usize = 3;

/// Without a valid record for this long, the signal is lost (a probe taken off a finger).
pub const SIGNAL_GAP: Duration = Duration::from_secs(10);

/// How a device's stream is reduced. Built by the config (`[devices.reduction]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// The median over `window`, started by the first valid record; repeated every `repeat`
    /// (from the previous start) while the signal stays valid (`None`: once per application).
    SpotCheck {
        window: Duration,
        repeat: Option<Duration>,
    },
    /// The median over each clock-aligned window of length `every`.
    Interval { every: Duration },
    /// A record when a value moved by at least its threshold (absolute, in the reading's unit)
    /// since the last one sent. Types without a threshold use [`default_threshold`].
    OnChange {
        thresholds: BTreeMap<ReadingType, Decimal>,
    },
    /// Every valid record.
    All,
}

impl Mode {
    /// The default for a streaming oximeter: a 30 s spot-check median, repeated every 15 min
    /// while the probe stays on.
    pub const DEFAULT_STREAMING: Mode = Mode::SpotCheck {
        window: Duration::from_secs(30),
        repeat: Some(Duration::from_secs(900)),
    };

    /// The config name of the mode.
    pub fn name(&self) -> &'static str {
        match self {
            Mode::SpotCheck { .. } => "spot-check",
            Mode::Interval { .. } => "interval",
            Mode::OnChange { .. } => "on-change",
            Mode::All => "all",
        }
    }
}

/// The change that makes [`Mode::OnChange`] send a record, for types the config does not name:
/// about the resolution a clinician reads (2 % SpO2, 5 /min pulse); 1 unit otherwise.
pub fn default_threshold(kind: ReadingType) -> Decimal {
    match kind {
        ReadingType::Spo2 => Decimal::from_int(2),
        ReadingType::PulseRate | ReadingType::HeartRate => Decimal::from_int(5),
        ReadingType::PerfusionIndex | ReadingType::Spco | ReadingType::Sphb => Decimal::new(5, -1),
        ReadingType::Spmet => Decimal::new(2, -1),
        ReadingType::BodyWeight => Decimal::new(1, -1),
        _ => Decimal::from_int(1),
    }
}

/// What one call did, for the caller's counters. Every record pushed is counted once in
/// `records_in` and once in exactly one of `invalid_status`, `no_value`, `passed`, `reduced`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub records_in: u64,
    /// Not a measurement by its own status (sensor off, artifact...): never sent.
    pub invalid_status: u64,
    /// No value at all (every type reported missing).
    pub no_value: u64,
    /// Sent on as they are (all, on change).
    pub passed: u64,
    /// Valid records folded into a median or skipped as unchanged: the stream reduced away.
    pub reduced: u64,
    /// Reduced records produced by closing windows.
    pub windows_sent: u64,
    /// Windows closed without enough valid samples.
    pub windows_insufficient: u64,
    /// Windows dropped because they were not complete (the one in progress at start for
    /// interval mode; the one in progress at shutdown).
    pub windows_partial: u64,
}

impl Counts {
    pub fn add(&mut self, o: Counts) {
        self.records_in += o.records_in;
        self.invalid_status += o.invalid_status;
        self.no_value += o.no_value;
        self.passed += o.passed;
        self.reduced += o.reduced;
        self.windows_sent += o.windows_sent;
        self.windows_insufficient += o.windows_insufficient;
        self.windows_partial += o.windows_partial;
    }
}

/// A record to send to the pipeline, with the time that identifies it.
#[derive(Debug, Clone, PartialEq)]
pub struct Reduced {
    pub record: Record,
    /// The reading's time: its window's end, or its reception. Strictly increasing per reducer.
    pub at: DateTime<Utc>,
}

/// The result of [`Reducer::push`] or [`Reducer::tick`].
#[derive(Debug, Default)]
pub struct Step {
    pub out: Vec<Reduced>,
    pub counts: Counts,
}

/// One device's reducer.
#[derive(Debug)]
pub struct Reducer {
    mode: Mode,
    /// When the reducer started: interval windows that began earlier are partial.
    started_at: DateTime<Utc>,
    last_valid: Option<DateTime<Utc>>,
    last_sent_at: Option<DateTime<Utc>>,
    state: State,
}

#[derive(Debug)]
enum State {
    /// Spot check: waiting for a valid record.
    Idle,
    /// Spot check: a window is open.
    Collecting {
        start: DateTime<Utc>,
        window: Window,
    },
    /// Spot check: a window was closed; the next starts at `next` (or at the next application).
    Done {
        next: Option<DateTime<Utc>>,
    },
    /// Interval: the window with index `index` (start = index × every).
    Interval {
        index: i64,
        window: Window,
    },
    /// On change: the last value sent per type (cleared when the signal is lost).
    OnChange {
        last: BTreeMap<ReadingType, Decimal>,
    },
    All,
}

impl Reducer {
    /// A reducer started at `now`.
    pub fn new(mode: Mode, now: DateTime<Utc>) -> Self {
        let state = match &mode {
            Mode::SpotCheck { .. } => State::Idle,
            Mode::Interval { every } => State::Interval {
                index: window_index(now, *every),
                window: Window::default(),
            },
            Mode::OnChange { .. } => State::OnChange {
                last: BTreeMap::new(),
            },
            Mode::All => State::All,
        };
        Self {
            mode,
            started_at: now,
            last_valid: None,
            last_sent_at: None,
            state,
        }
    }

    pub fn mode(&self) -> &Mode {
        &self.mode
    }

    /// Takes one decoded record received at `at`. Windows that `at` closes are closed first.
    pub fn push(&mut self, record: Record, at: DateTime<Utc>) -> Step {
        let mut step = self.tick(at);
        step.counts.records_in += 1;
        let valid = unreliable_status(&record).is_none() && !record.readings.is_empty();
        if !valid {
            if unreliable_status(&record).is_some() {
                step.counts.invalid_status += 1;
            } else {
                step.counts.no_value += 1;
            }
            // An invalid record still counts against the valid share of an open window.
            match &mut self.state {
                State::Collecting { window, .. } | State::Interval { window, .. } => {
                    window.total += 1;
                }
                _ => {}
            }
            return step;
        }
        if record.flags.iter().any(|s| {
            matches!(
                s.class(),
                StatusClass::FromMemory | StatusClass::ClockUnreliable
            )
        }) {
            let at = self.next_time(at);
            step.out.push(Reduced { record, at });
            step.counts.passed += 1;
            return step;
        }
        let new_application = self
            .last_valid
            .is_none_or(|t| at.signed_duration_since(t) >= delta(SIGNAL_GAP));
        self.last_valid = Some(at);
        match (&self.mode, &mut self.state) {
            (Mode::SpotCheck { .. }, state) => {
                let open = match state {
                    State::Idle => true,
                    State::Done { next } => new_application || next.is_some_and(|n| at >= n),
                    _ => false,
                };
                if open {
                    *state = State::Collecting {
                        start: at,
                        window: Window::default(),
                    };
                }
                if let State::Collecting { window, .. } = state {
                    window.add(&record);
                }
                step.counts.reduced += 1;
            }
            (Mode::Interval { .. }, State::Interval { window, .. }) => {
                window.add(&record);
                step.counts.reduced += 1;
            }
            (Mode::OnChange { thresholds }, State::OnChange { last }) => {
                if new_application {
                    last.clear();
                }
                let changed = last.is_empty()
                    || record.readings.iter().any(|r| match last.get(&r.kind) {
                        None => true,
                        Some(prev) => {
                            let th = thresholds
                                .get(&r.kind)
                                .copied()
                                .unwrap_or_else(|| default_threshold(r.kind));
                            abs_diff_at_least(r.value, *prev, th)
                        }
                    });
                if changed {
                    for r in &record.readings {
                        last.insert(r.kind, r.value);
                    }
                    let at = self.next_time(at);
                    step.out.push(Reduced { record, at });
                    step.counts.passed += 1;
                } else {
                    step.counts.reduced += 1;
                }
            }
            (Mode::All, _) => {
                let at = self.next_time(at);
                step.out.push(Reduced { record, at });
                step.counts.passed += 1;
            }
            // The state always matches the mode (set together in `new`).
            _ => step.counts.reduced += 1,
        }
        step
    }

    /// Closes the windows that ended at or before `now`.
    pub fn tick(&mut self, now: DateTime<Utc>) -> Step {
        let mut step = Step::default();
        match (&self.mode, &mut self.state) {
            (
                Mode::SpotCheck {
                    window: len,
                    repeat,
                },
                state,
            ) => {
                if let State::Collecting { start, window } = state {
                    let end = *start + delta(*len);
                    if now >= end {
                        let window = std::mem::take(window);
                        let next = repeat.map(|r| *start + delta(r));
                        *state = State::Done { next };
                        self.close(window, end, len.as_secs(), &mut step);
                    }
                }
            }
            (Mode::Interval { every }, State::Interval { index, window }) => {
                let current = window_index(now, *every);
                if current > *index {
                    let start = index_time(*index, *every);
                    let end = index_time(*index + 1, *every);
                    let window = std::mem::take(window);
                    *index = current;
                    if start < self.started_at {
                        if window.total > 0 {
                            step.counts.windows_partial += 1;
                        }
                    } else {
                        self.close(window, end, every.as_secs(), &mut step);
                    }
                }
            }
            _ => {}
        }
        step
    }

    /// When [`Reducer::tick`] next has something to do (a window's end), if anything.
    pub fn next_deadline(&self) -> Option<DateTime<Utc>> {
        match (&self.mode, &self.state) {
            (Mode::SpotCheck { window, .. }, State::Collecting { start, .. }) => {
                Some(*start + delta(*window))
            }
            (Mode::Interval { every }, State::Interval { index, .. }) => {
                Some(index_time(*index + 1, *every))
            }
            _ => None,
        }
    }

    /// Shutdown: the window in progress is dropped (a median of part of a window would be
    /// labelled as a whole one). Returns what was dropped.
    pub fn finish(&mut self) -> Counts {
        let mut c = Counts::default();
        match &mut self.state {
            State::Collecting { window, .. } | State::Interval { window, .. }
                if window.total > 0 =>
            {
                c.windows_partial += 1;
                *window = Window::default();
            }
            _ => {}
        }
        if matches!(self.state, State::Collecting { .. }) {
            self.state = State::Idle;
        }
        c
    }

    fn close(&mut self, window: Window, end: DateTime<Utc>, seconds: u64, step: &mut Step) {
        match window.median_record(self.mode.name(), seconds) {
            Some(record) => {
                let at = self.next_time(end);
                step.out.push(Reduced { record, at });
                step.counts.windows_sent += 1;
            }
            None if window.total > 0 => step.counts.windows_insufficient += 1,
            None => {}
        }
    }

    /// `at`, or 1 ms after the last time sent if that is not later (strictly increasing times
    /// keep two records of one read, or a clock stepped back, from sharing an identifier).
    fn next_time(&mut self, at: DateTime<Utc>) -> DateTime<Utc> {
        let t = match self.last_sent_at {
            Some(last) if at <= last => last + TimeDelta::milliseconds(1),
            _ => at,
        };
        self.last_sent_at = Some(t);
        t
    }
}

/// The samples of one window.
#[derive(Debug, Default)]
struct Window {
    /// Every record that arrived in the window (valid or not).
    total: u64,
    valid: u64,
    /// Values per type, with the unit of the first value (values in another unit are skipped:
    /// a median across units would be meaningless).
    values: Vec<(ReadingType, String, Vec<Decimal>)>,
    flags: Vec<Status>,
    device_id: Option<String>,
    device_model: Option<String>,
    user_index: Option<u8>,
}

impl Window {
    fn add(&mut self, r: &Record) {
        self.total += 1;
        self.valid += 1;
        for reading in &r.readings {
            match self.values.iter_mut().find(|(k, _, _)| *k == reading.kind) {
                Some((_, unit, v)) if *unit == reading.unit => v.push(reading.value),
                Some(_) => {}
                None => self
                    .values
                    .push((reading.kind, reading.unit.clone(), vec![reading.value])),
            }
        }
        for f in &r.flags {
            if let Err(pos) = self.flags.binary_search(f) {
                self.flags.insert(pos, *f);
            }
        }
        if r.device_id.is_some() {
            self.device_id.clone_from(&r.device_id);
        }
        if r.device_model.is_some() {
            self.device_model.clone_from(&r.device_model);
        }
        if r.user_index.is_some() {
            self.user_index = r.user_index;
        }
    }

    fn median_record(&self, mode: &str, seconds: u64) -> Option<Record> {
        if self.valid == 0 || self.valid * 2 < self.total {
            return None;
        }
        let readings: Vec<Reading> = self
            .values
            .iter()
            .filter(|(_, _, v)| v.len() >= MIN_SAMPLES)
            .filter_map(|(k, unit, v)| lower_median(v).map(|m| Reading::new(*k, m, unit.clone())))
            .collect();
        if readings.is_empty() {
            return None;
        }
        let mut fields = serde_json::Map::new();
        fields.insert("reduction".into(), mode.into());
        fields.insert("window_seconds".into(), seconds.into());
        fields.insert("samples".into(), self.valid.into());
        Some(Record {
            readings,
            missing: Vec::new(),
            flags: self.flags.clone(),
            device_time: None,
            device_id: self.device_id.clone(),
            device_model: self.device_model.clone(),
            user_index: self.user_index,
            fields,
            // A median over a window is a statistic, not one measurement: the pipeline uploads
            // it with the window as `effectivePeriod` and the statistic stated in the resource
            // (`Observation.method`), never as a spot reading at the window's end (issue #8).
            context: Box::new(device_drivers::MeasurementContext {
                statistic: Some(WINDOW_STATISTIC.into()),
                ..Default::default()
            }),
        })
    }
}

/// The lower median (a value of the set).
fn lower_median(values: &[Decimal]) -> Option<Decimal> {
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.cmp_value(*b));
    v.get((v.len().checked_sub(1)?) / 2).copied()
}

/// `|a - b| >= threshold`, exactly.
fn abs_diff_at_least(a: Decimal, b: Decimal, threshold: Decimal) -> bool {
    let neg_b = Decimal::new(b.mantissa.saturating_neg(), b.exponent);
    match a.checked_add(neg_b) {
        Some(d) => {
            let abs = Decimal::new(d.mantissa.saturating_abs(), d.exponent);
            abs.cmp_value(threshold) != std::cmp::Ordering::Less
        }
        None => true,
    }
}

fn delta(d: Duration) -> TimeDelta {
    TimeDelta::from_std(d).unwrap_or(TimeDelta::MAX)
}

fn every_ms(every: Duration) -> i64 {
    i64::try_from(every.as_millis()).unwrap_or(i64::MAX).max(1)
}

/// The index of the clock-aligned window holding `t`.
fn window_index(t: DateTime<Utc>, every: Duration) -> i64 {
    t.timestamp_millis().div_euclid(every_ms(every))
}

fn index_time(index: i64, every: Duration) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(index.saturating_mul(every_ms(every)))
        .single()
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(ms: i64) -> DateTime<Utc> {
        // 2026-11-23T10:00:00Z + ms: a fixed clock, aligned on every window length used here.
        Utc.timestamp_millis_opt(1_795_428_000_000 + ms).unwrap()
    }

    fn ox(spo2: i64, pr: i64) -> Record {
        Record {
            readings: vec![
                Reading::new(ReadingType::Spo2, Decimal::from_int(spo2), "%"),
                Reading::new(ReadingType::PulseRate, Decimal::from_int(pr), "/min"),
            ],
            device_id: Some("SN1".into()),
            ..Record::default()
        }
    }

    fn flagged(mut r: Record, s: Status) -> Record {
        r.add_flag(s);
        r
    }

    fn value(r: &Record, k: ReadingType) -> i64 {
        let v = r.readings.iter().find(|x| x.kind == k).unwrap().value;
        assert_eq!(v.exponent, 0);
        v.mantissa
    }

    fn spot(window_s: u64, repeat_s: Option<u64>) -> Mode {
        Mode::SpotCheck {
            window: Duration::from_secs(window_s),
            repeat: repeat_s.map(Duration::from_secs),
        }
    }

    /// Feeds one record per `period_ms` from `from_ms` (exclusive of `to_ms`), ticking between.
    fn feed(
        red: &mut Reducer,
        from_ms: i64,
        to_ms: i64,
        period_ms: i64,
        mut rec: impl FnMut(i64) -> Record,
    ) -> (Vec<Reduced>, Counts) {
        let mut out = Vec::new();
        let mut counts = Counts::default();
        let mut ms = from_ms;
        while ms < to_ms {
            let s = red.push(rec(ms), t(ms));
            out.extend(s.out);
            counts.add(s.counts);
            ms += period_ms;
        }
        let s = red.tick(t(to_ms));
        out.extend(s.out);
        counts.add(s.counts);
        (out, counts)
    }

    #[test]
    fn a_spot_check_is_the_median_of_its_window_timed_at_the_window_end() {
        let mut red = Reducer::new(spot(30, None), t(0));
        // 3 packets a second for 40 s; SpO2 cycles 95,96,97,98,99; one spike of 70 ignored.
        let (out, c) = feed(&mut red, 5_000, 45_000, 333, |ms| {
            let i = ms / 333;
            if i == 20 {
                ox(70, 250)
            } else {
                ox(95 + i % 5, 60 + i % 3)
            }
        });
        assert_eq!(out.len(), 1, "{out:?}");
        let r = &out[0];
        assert_eq!(
            r.at,
            t(35_000),
            "window opened by the first record at 5 s, 30 s long"
        );
        assert_eq!(value(&r.record, ReadingType::Spo2), 97);
        assert_eq!(value(&r.record, ReadingType::PulseRate), 61);
        assert_eq!(r.record.device_time, None);
        assert_eq!(r.record.device_id.as_deref(), Some("SN1"));
        assert_eq!(r.record.fields["reduction"], "spot-check");
        assert_eq!(c.windows_sent, 1);
        assert_eq!(
            c.records_in, c.reduced,
            "every record was folded or waited out"
        );
    }

    #[test]
    fn a_spot_check_waits_for_a_valid_signal_and_ignores_invalid_records() {
        let mut red = Reducer::new(spot(10, None), t(0));
        // Sensor off for 20 s, then valid for 15 s.
        let (out, c) = feed(&mut red, 0, 35_000, 1000, |ms| {
            if ms < 20_000 {
                flagged(ox(98, 70), Status::SensorAlarm)
            } else {
                ox(98, 70)
            }
        });
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].at, t(30_000));
        assert_eq!(c.invalid_status, 20);
        assert_eq!(c.records_in, 35);
    }

    #[test]
    fn a_probe_falling_off_halfway_makes_no_spot_check() {
        let mut red = Reducer::new(spot(10, None), t(0));
        let (out, c) = feed(&mut red, 0, 12_000, 500, |ms| {
            if ms < 3_000 {
                ox(97, 80)
            } else {
                flagged(ox(97, 80), Status::SensorOff)
            }
        });
        assert!(out.is_empty(), "{out:?}");
        assert_eq!(c.windows_insufficient, 1);
    }

    #[test]
    fn spot_checks_repeat_while_the_probe_stays_on_and_restart_at_a_new_application() {
        // 10 s windows, repeated every 60 s.
        let mut red = Reducer::new(spot(10, Some(60)), t(0));
        let (out, _) = feed(&mut red, 0, 150_000, 1000, |_| ox(96, 72));
        let times: Vec<_> = out.iter().map(|r| r.at).collect();
        assert_eq!(times, vec![t(10_000), t(70_000), t(130_000)]);

        // Without repeat: one per application; taking the probe off for > SIGNAL_GAP re-arms.
        let mut red = Reducer::new(spot(10, None), t(0));
        let (out, _) = feed(&mut red, 0, 200_000, 1000, |ms| {
            if (60_000..80_000).contains(&ms) {
                Record::default() // probe off: the device reports nothing
            } else {
                ox(96, 72)
            }
        });
        let times: Vec<_> = out.iter().map(|r| r.at).collect();
        assert_eq!(times, vec![t(10_000), t(90_000)]);
    }

    #[test]
    fn interval_windows_are_clock_aligned_and_the_partial_first_one_is_dropped() {
        let mut red = Reducer::new(
            Mode::Interval {
                every: Duration::from_secs(60),
            },
            t(25_000),
        );
        let (out, c) = feed(&mut red, 25_000, 180_000, 1000, |ms| {
            ox(90 + (ms / 1000) % 7, 70)
        });
        let times: Vec<_> = out.iter().map(|r| r.at).collect();
        assert_eq!(times, vec![t(120_000), t(180_000)]);
        assert_eq!(c.windows_partial, 1);
        assert_eq!(value(&out[0].record, ReadingType::Spo2), 93);
    }

    #[test]
    fn a_restart_mid_window_never_resends_a_window_sent_before_it() {
        // Before the crash: the 60 s window ending at 120 s was sent.
        let mode = Mode::Interval {
            every: Duration::from_secs(60),
        };
        let mut before = Reducer::new(mode.clone(), t(0));
        let (sent, _) = feed(&mut before, 0, 130_000, 1000, |_| ox(97, 70));
        assert_eq!(
            sent.iter().map(|r| r.at).collect::<Vec<_>>(),
            vec![t(60_000), t(120_000)]
        );
        // kill -9 at 130 s, restart at 132 s with different values: the window in progress
        // (120..180 s) is partial and dropped; nothing reuses an earlier window's time.
        let mut after = Reducer::new(mode, t(132_000));
        let (resent, _) = feed(&mut after, 132_000, 250_000, 1000, |_| ox(93, 88));
        let times: Vec<_> = resent.iter().map(|r| r.at).collect();
        assert_eq!(times, vec![t(240_000)]);
        assert!(times.iter().all(|t2| sent.iter().all(|s| s.at != *t2)));

        // Spot check: the restarted reducer opens its window at the first record after start.
        let mut after = Reducer::new(spot(30, None), t(132_000));
        let (resent, _) = feed(&mut after, 132_000, 170_000, 1000, |_| ox(93, 88));
        assert_eq!(resent.len(), 1);
        assert_eq!(resent[0].at, t(162_000));
    }

    #[test]
    fn on_change_sends_the_first_record_and_then_only_changes_beyond_the_threshold() {
        let mut th = BTreeMap::new();
        th.insert(ReadingType::Spo2, Decimal::from_int(3));
        let mut red = Reducer::new(Mode::OnChange { thresholds: th }, t(0));
        let spo2 = [97, 97, 96, 95, 94, 94, 99, 99];
        let mut sent = Vec::new();
        for (i, s) in spo2.iter().enumerate() {
            let step = red.push(ox(*s, 70), t(i as i64 * 1000));
            sent.extend(
                step.out
                    .into_iter()
                    .map(|r| value(&r.record, ReadingType::Spo2)),
            );
        }
        // 97 (first), 94 (|94-97| >= 3), 99 (|99-94| >= 3). Pulse never moved by 5.
        assert_eq!(sent, vec![97, 94, 99]);
    }

    #[test]
    fn on_change_resends_after_the_signal_was_lost() {
        let mut red = Reducer::new(
            Mode::OnChange {
                thresholds: BTreeMap::new(),
            },
            t(0),
        );
        assert_eq!(red.push(ox(97, 70), t(0)).out.len(), 1);
        assert_eq!(red.push(ox(97, 70), t(1000)).out.len(), 0);
        assert_eq!(red.push(ox(97, 70), t(1000 + 11_000)).out.len(), 1);
    }

    #[test]
    fn all_mode_passes_valid_records_with_strictly_increasing_times() {
        let mut red = Reducer::new(Mode::All, t(0));
        let a = red.push(ox(97, 70), t(500));
        let b = red.push(ox(98, 70), t(500)); // same read
        let c = red.push(flagged(ox(98, 70), Status::Artifact), t(500));
        let d = red.push(Record::default(), t(600));
        assert_eq!(a.out[0].at, t(500));
        assert_eq!(b.out[0].at, t(501));
        assert!(c.out.is_empty() && c.counts.invalid_status == 1);
        assert!(d.out.is_empty() && d.counts.no_value == 1);
    }

    #[test]
    fn the_median_keeps_the_device_resolution_and_questionable_statuses() {
        let mut red = Reducer::new(spot(10, None), t(0));
        let (out, _) = feed(&mut red, 0, 11_000, 1000, |ms| {
            let mut r = Record {
                readings: vec![Reading::new(
                    ReadingType::PerfusionIndex,
                    Decimal::new(250 + ms / 1000, -2),
                    "%",
                )],
                ..Record::default()
            };
            if ms == 4000 {
                r.add_flag(Status::LowSignalIq);
            }
            r
        });
        let r = &out[0].record;
        // 10 values 2.50..2.59: the lower median is 2.54, two decimals as the device sent.
        assert_eq!(r.readings[0].value, Decimal::new(254, -2));
        assert_eq!(r.flags, vec![Status::LowSignalIq]);
    }

    #[test]
    fn a_stored_record_is_passed_on_not_folded_into_a_live_window() {
        let mut red = Reducer::new(spot(10, None), t(0));
        red.push(ox(97, 70), t(0));
        let s = red.push(flagged(ox(80, 50), Status::FromMemory), t(1000));
        assert_eq!(s.out.len(), 1);
        assert_eq!(s.out[0].record.flags, vec![Status::FromMemory]);
        assert_eq!(s.counts.passed, 1);
        let (out, _) = feed(&mut red, 2000, 11_000, 1000, |_| ox(97, 70));
        assert_eq!(value(&out[0].record, ReadingType::Spo2), 97);
    }

    #[test]
    fn shutdown_drops_the_window_in_progress_and_counts_it() {
        let mut red = Reducer::new(spot(30, None), t(0));
        let (out, _) = feed(&mut red, 0, 10_000, 1000, |_| ox(97, 70));
        assert!(out.is_empty());
        assert_eq!(red.finish().windows_partial, 1);
        assert_eq!(red.next_deadline(), None);
    }

    #[test]
    fn next_deadline_is_the_open_window_end() {
        let mut red = Reducer::new(spot(30, None), t(0));
        assert_eq!(red.next_deadline(), None);
        red.push(ox(97, 70), t(1234));
        assert_eq!(red.next_deadline(), Some(t(31_234)));
        let red = Reducer::new(
            Mode::Interval {
                every: Duration::from_secs(60),
            },
            t(1234),
        );
        assert_eq!(red.next_deadline(), Some(t(60_000)));
    }

    #[test]
    fn a_window_needs_min_samples_of_a_type() {
        let mut red = Reducer::new(spot(10, None), t(0));
        // Only 2 records in the window (a device that went silent right after).
        red.push(ox(97, 70), t(0));
        red.push(ox(97, 70), t(1000));
        let s = red.tick(t(10_000));
        assert!(s.out.is_empty());
        assert_eq!(s.counts.windows_insufficient, 1);
    }
}
