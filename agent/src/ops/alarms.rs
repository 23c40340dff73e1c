//! Alarms: which conditions a technician or the fleet team must act on, decided by a pure
//! function of what the agent observes and `now`.
//!
//! | kind                   | raised when                                        | severity            | cleared when |
//! |------------------------|----------------------------------------------------|---------------------|--------------|
//! | `disk`                 | the data directory's filesystem is ≥ 80 % used      | warning; ≥ 90 % critical | below 78 % (88 % for critical → warning) |
//! | `uplink_paused`        | the FHIR server refuses the gateway as a whole      | critical            | uploads resume |
//! | `certificate_expiring` | the uplink client certificate expires within `ops.cert_expiry_warn_days` | warning; expired: critical | a renewed certificate is loaded (reload, or rotation of the files) |
//! | `device_silent`        | a device listed in `ops.device_silent_after_secs` (or a serial device's `silence_alarm_secs`) delivered nothing for that long | warning | it delivers again |
//! | `store_failed`         | the store failed a write (I/O error) and is not reopened yet; no readings are taken | critical | the store is reopened and writes |
//! | `quarantine`           | the outbox holds quarantined (corrupt) records; again on each new one | critical | the quarantine is empty |
//! | `clock_unsynchronised` | the system clock is known not to be synchronised    | warning             | it is (unknown raises nothing) |
//! | `identifier_collision` | a reading was dead-lettered because another holds its identifier; again on each new one | critical | no such dead letter is left |
//!
//! An alarm is identified by its kind and, for `device_silent`, the device name. Each change
//! is an [`AlarmEvent`]: `raised` (new, more or less severe, or a repeat of a counting alarm)
//! or `cleared`. No alarm carries PHI: kinds, device names, percentages, dates and counts.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::health::UplinkState;

/// Disk use that raises a warning, and a critical alarm (percent of the filesystem).
pub const DISK_WARN_PERCENT: f64 = 80.0;
pub const DISK_CRITICAL_PERCENT: f64 = 90.0;
/// Hysteresis: an alarm clears this far below its threshold, so it does not flap.
pub const DISK_HYSTERESIS_PERCENT: f64 = 2.0;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlarmKind {
    Disk,
    UplinkPaused,
    CertificateExpiring,
    DeviceSilent,
    Quarantine,
    ClockUnsynchronised,
    IdentifierCollision,
    StoreFailed,
}

impl AlarmKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AlarmKind::Disk => "disk",
            AlarmKind::UplinkPaused => "uplink_paused",
            AlarmKind::CertificateExpiring => "certificate_expiring",
            AlarmKind::DeviceSilent => "device_silent",
            AlarmKind::Quarantine => "quarantine",
            AlarmKind::ClockUnsynchronised => "clock_unsynchronised",
            AlarmKind::IdentifierCollision => "identifier_collision",
            AlarmKind::StoreFailed => "store_failed",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Warning,
    Critical,
}

/// An active alarm.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alarm {
    pub kind: AlarmKind,
    pub severity: Severity,
    /// The device, for `device_silent`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// When this alarm (at this severity) was raised.
    pub since: DateTime<Utc>,
    /// One line for a human: what and how much (no PHI).
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlarmState {
    Raised,
    Cleared,
}

/// A change, as published on `vitalgate/<gateway-id>/alarm` and logged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlarmEvent {
    pub state: AlarmState,
    #[serde(flatten)]
    pub alarm: Alarm,
}

/// A device watched for silence.
#[derive(Debug, Clone)]
pub struct Watched<'a> {
    pub name: &'a str,
    pub silent_after: Duration,
    /// Its last record, or `None` if it never delivered one.
    pub last_reading: Option<DateTime<Utc>>,
    /// Since when it is watched (agent start, or the reload that added it): a device that never
    /// delivered is silent from here.
    pub watched_since: DateTime<Utc>,
}

/// What the alarms are decided from.
#[derive(Debug, Clone)]
pub struct Inputs<'a> {
    pub disk_used_percent: Option<f64>,
    pub uplink: &'a UplinkState,
    pub cert_not_after: Option<DateTime<Utc>>,
    pub cert_warn: Duration,
    pub devices: Vec<Watched<'a>>,
    /// Records in the outbox's quarantine.
    pub quarantined: u64,
    /// Identifier collisions since start (the telemetry counter).
    pub collisions_seen: u64,
    /// Dead letters with reason `identifier_collision` now, when known.
    pub collision_dead_letters: Option<u64>,
    /// `Some(false)`: known not synchronised; `None`: cannot tell.
    pub clock_synchronised: Option<bool>,
    /// The store failed a write and is not reopened yet (the pipeline's gauge).
    pub store_failed: bool,
}

type Key = (AlarmKind, Option<String>);

/// The active alarms and what counting alarms have already reported.
#[derive(Debug, Clone, Default)]
pub struct AlarmBook {
    active: BTreeMap<Key, Alarm>,
    quarantined_reported: u64,
    collisions_reported: u64,
}

impl AlarmBook {
    /// The active alarms, most severe first.
    pub fn active(&self) -> Vec<Alarm> {
        let mut v: Vec<Alarm> = self.active.values().cloned().collect();
        v.sort_by(|a, b| b.severity.cmp(&a.severity).then(a.kind.cmp(&b.kind)));
        v
    }

    /// Decides every alarm from `inputs` at `now`; returns the changes, in a stable order.
    pub fn evaluate(&mut self, inputs: &Inputs<'_>, now: DateTime<Utc>) -> Vec<AlarmEvent> {
        let mut wanted: BTreeMap<Key, (Severity, String)> = BTreeMap::new();
        let mut repeat: Vec<Key> = Vec::new();

        if let Some(p) = inputs.disk_used_percent {
            let current = self.severity_of(&(AlarmKind::Disk, None));
            let h = DISK_HYSTERESIS_PERCENT;
            let sev = if p >= DISK_CRITICAL_PERCENT
                || (current == Some(Severity::Critical) && p >= DISK_CRITICAL_PERCENT - h)
            {
                Some(Severity::Critical)
            } else if p >= DISK_WARN_PERCENT || (current.is_some() && p >= DISK_WARN_PERCENT - h) {
                Some(Severity::Warning)
            } else {
                None
            };
            if let Some(sev) = sev {
                wanted.insert(
                    (AlarmKind::Disk, None),
                    (sev, format!("data directory filesystem {p:.0}% used")),
                );
            }
        }

        if let UplinkState::Paused { reason } = inputs.uplink {
            wanted.insert(
                (AlarmKind::UplinkPaused, None),
                (Severity::Critical, format!("uploads paused: {reason}")),
            );
        }

        if let Some(end) = inputs.cert_not_after {
            let warn =
                chrono::Duration::from_std(inputs.cert_warn).unwrap_or(chrono::Duration::MAX);
            if end <= now {
                wanted.insert(
                    (AlarmKind::CertificateExpiring, None),
                    (
                        Severity::Critical,
                        format!(
                            "uplink client certificate expired {}",
                            end.format("%Y-%m-%d")
                        ),
                    ),
                );
            } else if end - now <= warn {
                let days = (end - now).num_days();
                wanted.insert(
                    (AlarmKind::CertificateExpiring, None),
                    (
                        Severity::Warning,
                        format!(
                            "uplink client certificate expires {} ({days} days)",
                            end.format("%Y-%m-%d")
                        ),
                    ),
                );
            }
        }

        for d in &inputs.devices {
            let from = d
                .last_reading
                .unwrap_or(d.watched_since)
                .max(d.watched_since);
            let limit = chrono::Duration::from_std(d.silent_after).unwrap_or(chrono::Duration::MAX);
            if now - from >= limit {
                let msg = match d.last_reading {
                    Some(t) => format!(
                        "no reading from {} since {}",
                        d.name,
                        t.format("%Y-%m-%dT%H:%M:%SZ")
                    ),
                    None => format!(
                        "no reading from {} since {} (never)",
                        d.name,
                        d.watched_since.format("%Y-%m-%dT%H:%M:%SZ")
                    ),
                };
                wanted.insert(
                    (AlarmKind::DeviceSilent, Some(d.name.to_string())),
                    (Severity::Warning, msg),
                );
            }
        }

        if inputs.store_failed {
            wanted.insert(
                (AlarmKind::StoreFailed, None),
                (
                    Severity::Critical,
                    "the store failed a write (I/O error); no readings are taken until it is reopened".to_string(),
                ),
            );
        }

        if inputs.quarantined > 0 {
            let key = (AlarmKind::Quarantine, None);
            wanted.insert(
                key.clone(),
                (
                    Severity::Critical,
                    format!(
                        "{} corrupt outbox record(s) in quarantine",
                        inputs.quarantined
                    ),
                ),
            );
            if inputs.quarantined > self.quarantined_reported && self.active.contains_key(&key) {
                repeat.push(key);
            }
        }
        self.quarantined_reported = inputs.quarantined;

        let collisions_active = match inputs.collision_dead_letters {
            Some(n) => n > 0,
            None => inputs.collisions_seen > 0,
        };
        if collisions_active || inputs.collisions_seen > self.collisions_reported {
            let key = (AlarmKind::IdentifierCollision, None);
            let n = inputs
                .collision_dead_letters
                .unwrap_or(inputs.collisions_seen)
                .max(1);
            wanted.insert(
                key.clone(),
                (
                    Severity::Critical,
                    format!("{n} reading(s) kept as dead letters: another reading holds their FHIR identifier"),
                ),
            );
            if inputs.collisions_seen > self.collisions_reported && self.active.contains_key(&key) {
                repeat.push(key);
            }
        }
        self.collisions_reported = inputs.collisions_seen;

        if inputs.clock_synchronised == Some(false) {
            wanted.insert(
                (AlarmKind::ClockUnsynchronised, None),
                (
                    Severity::Warning,
                    "system clock not synchronised (NTP)".to_string(),
                ),
            );
        }

        let mut events = Vec::new();
        let gone: Vec<Key> = self
            .active
            .keys()
            .filter(|k| !wanted.contains_key(*k))
            .cloned()
            .collect();
        for k in gone {
            if let Some(a) = self.active.remove(&k) {
                events.push(AlarmEvent {
                    state: AlarmState::Cleared,
                    alarm: a,
                });
            }
        }
        for (key, (severity, message)) in wanted {
            let new = match self.active.get_mut(&key) {
                None => true,
                Some(a) if a.severity != severity || repeat.contains(&key) => true,
                Some(a) => {
                    // Same alarm: keep `since`, refresh the numbers in the message.
                    a.message = message.clone();
                    false
                }
            };
            if new {
                let alarm = Alarm {
                    kind: key.0,
                    severity,
                    device: key.1.clone(),
                    since: now,
                    message,
                };
                self.active.insert(key, alarm.clone());
                events.push(AlarmEvent {
                    state: AlarmState::Raised,
                    alarm,
                });
            }
        }
        events
    }

    fn severity_of(&self, key: &Key) -> Option<Severity> {
        self.active.get(key).map(|a| a.severity)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    fn calm(uplink: &UplinkState) -> Inputs<'_> {
        Inputs {
            disk_used_percent: Some(40.0),
            uplink,
            cert_not_after: Some(t("2030-01-01T00:00:00Z")),
            cert_warn: Duration::from_secs(30 * 86_400),
            devices: Vec::new(),
            quarantined: 0,
            collisions_seen: 0,
            collision_dead_letters: None,
            clock_synchronised: Some(true),
            store_failed: false,
        }
    }

    fn kinds(ev: &[AlarmEvent]) -> Vec<(AlarmState, AlarmKind, Severity)> {
        ev.iter()
            .map(|e| (e.state, e.alarm.kind, e.alarm.severity))
            .collect()
    }

    #[test]
    fn a_healthy_gateway_raises_nothing() {
        let ok = UplinkState::Ok;
        let mut b = AlarmBook::default();
        assert!(b.evaluate(&calm(&ok), t("2026-01-01T00:00:00Z")).is_empty());
        assert!(b.active().is_empty());
    }

    #[test]
    fn disk_alarms_escalate_at_80_and_90_percent_and_clear_with_hysteresis() {
        let ok = UplinkState::Ok;
        let now = t("2026-01-01T00:00:00Z");
        let mut b = AlarmBook::default();
        let mut i = calm(&ok);
        let mut at = |p: f64, b: &mut AlarmBook| {
            i.disk_used_percent = Some(p);
            kinds(&b.evaluate(&i, now))
        };
        use AlarmState::*;
        assert_eq!(at(79.9, &mut b), vec![]);
        assert_eq!(
            at(80.0, &mut b),
            vec![(Raised, AlarmKind::Disk, Severity::Warning)]
        );
        assert_eq!(at(85.0, &mut b), vec![], "same alarm, not raised again");
        assert_eq!(
            at(91.0, &mut b),
            vec![(Raised, AlarmKind::Disk, Severity::Critical)]
        );
        assert_eq!(at(89.0, &mut b), vec![], "hysteresis keeps it critical");
        assert_eq!(
            at(87.0, &mut b),
            vec![(Raised, AlarmKind::Disk, Severity::Warning)]
        );
        assert_eq!(at(79.0, &mut b), vec![], "hysteresis keeps the warning");
        assert_eq!(
            at(77.0, &mut b),
            vec![(Cleared, AlarmKind::Disk, Severity::Warning)]
        );
    }

    #[test]
    fn uplink_pause_raises_and_resuming_clears() {
        let paused = UplinkState::Paused {
            reason: "server answered 403".into(),
        };
        let now = t("2026-01-01T00:00:00Z");
        let mut b = AlarmBook::default();
        let ev = b.evaluate(&calm(&paused), now);
        assert_eq!(ev.len(), 1);
        assert_eq!(ev[0].alarm.kind, AlarmKind::UplinkPaused);
        assert!(ev[0].alarm.message.contains("403"));
        let ok = UplinkState::Ok;
        let ev = b.evaluate(&calm(&ok), now);
        assert_eq!(
            kinds(&ev),
            vec![(
                AlarmState::Cleared,
                AlarmKind::UplinkPaused,
                Severity::Critical
            )]
        );
    }

    #[test]
    fn certificate_warns_within_the_window_and_is_critical_once_expired() {
        let ok = UplinkState::Ok;
        let mut b = AlarmBook::default();
        let mut i = calm(&ok);
        i.cert_not_after = Some(t("2026-02-01T00:00:00Z"));
        assert!(b.evaluate(&i, t("2025-12-01T00:00:00Z")).is_empty());
        let ev = b.evaluate(&i, t("2026-01-10T00:00:00Z"));
        assert_eq!(
            kinds(&ev),
            vec![(
                AlarmState::Raised,
                AlarmKind::CertificateExpiring,
                Severity::Warning
            )]
        );
        assert!(
            ev[0].alarm.message.contains("22 days"),
            "{}",
            ev[0].alarm.message
        );
        let ev = b.evaluate(&i, t("2026-02-01T00:00:01Z"));
        assert_eq!(ev[0].alarm.severity, Severity::Critical);
        i.cert_not_after = Some(t("2027-02-01T00:00:00Z"));
        let ev = b.evaluate(&i, t("2026-02-01T00:00:02Z"));
        assert_eq!(ev[0].state, AlarmState::Cleared);
    }

    #[test]
    fn a_device_is_silent_after_its_threshold_counted_from_its_last_reading_or_from_watching() {
        let ok = UplinkState::Ok;
        let start = t("2026-01-01T00:00:00Z");
        let mut b = AlarmBook::default();
        let mut i = calm(&ok);
        i.devices = vec![Watched {
            name: "cuff-3",
            silent_after: Duration::from_secs(600),
            last_reading: None,
            watched_since: start,
        }];
        assert!(b.evaluate(&i, t("2026-01-01T00:09:59Z")).is_empty());
        let ev = b.evaluate(&i, t("2026-01-01T00:10:00Z"));
        assert_eq!(ev.len(), 1);
        assert_eq!(ev[0].alarm.device.as_deref(), Some("cuff-3"));
        assert!(ev[0].alarm.message.contains("never"));
        i.devices[0].last_reading = Some(t("2026-01-01T00:11:00Z"));
        let ev = b.evaluate(&i, t("2026-01-01T00:12:00Z"));
        assert_eq!(ev[0].state, AlarmState::Cleared);
        assert!(b.evaluate(&i, t("2026-01-01T00:20:59Z")).is_empty());
        assert_eq!(b.evaluate(&i, t("2026-01-01T00:21:00Z")).len(), 1);
    }

    #[test]
    fn a_failed_store_raises_a_critical_alarm_once_and_clears_when_it_writes_again() {
        let ok = UplinkState::Ok;
        let now = t("2026-01-01T00:00:00Z");
        let mut b = AlarmBook::default();
        let mut i = calm(&ok);
        i.store_failed = true;
        let ev = b.evaluate(&i, now);
        assert_eq!(ev.len(), 1, "{ev:?}");
        assert_eq!(ev[0].state, AlarmState::Raised);
        assert_eq!(ev[0].alarm.kind, AlarmKind::StoreFailed);
        assert_eq!(ev[0].alarm.severity, Severity::Critical);
        assert!(b.evaluate(&i, now).is_empty(), "raised once per episode");
        i.store_failed = false;
        let ev = b.evaluate(&i, now);
        assert_eq!(ev.len(), 1);
        assert_eq!(ev[0].state, AlarmState::Cleared);
    }

    #[test]
    fn counting_alarms_are_raised_again_on_each_new_record_and_clear_when_none_is_left() {
        let ok = UplinkState::Ok;
        let now = t("2026-01-01T00:00:00Z");
        let mut b = AlarmBook::default();
        let mut i = calm(&ok);
        i.quarantined = 1;
        i.collisions_seen = 1;
        i.collision_dead_letters = Some(1);
        assert_eq!(b.evaluate(&i, now).len(), 2);
        assert!(b.evaluate(&i, now).is_empty(), "nothing new");
        i.quarantined = 2;
        i.collisions_seen = 2;
        i.collision_dead_letters = Some(2);
        let ev = b.evaluate(&i, now);
        assert_eq!(ev.len(), 2, "{ev:?}");
        assert!(ev.iter().all(|e| e.state == AlarmState::Raised));
        i.quarantined = 0;
        i.collision_dead_letters = Some(0);
        let ev = b.evaluate(&i, now);
        assert_eq!(ev.len(), 2);
        assert!(ev.iter().all(|e| e.state == AlarmState::Cleared));
    }

    #[test]
    fn an_unknown_clock_raises_nothing_and_a_known_unsynchronised_one_does() {
        let ok = UplinkState::Ok;
        let now = t("2026-01-01T00:00:00Z");
        let mut b = AlarmBook::default();
        let mut i = calm(&ok);
        i.clock_synchronised = None;
        assert!(b.evaluate(&i, now).is_empty());
        i.clock_synchronised = Some(false);
        assert_eq!(
            b.evaluate(&i, now)[0].alarm.kind,
            AlarmKind::ClockUnsynchronised
        );
    }

    #[test]
    fn alarm_events_serialise_flat_with_snake_case_names() {
        let e = AlarmEvent {
            state: AlarmState::Raised,
            alarm: Alarm {
                kind: AlarmKind::DeviceSilent,
                severity: Severity::Warning,
                device: Some("cuff-3".into()),
                since: t("2026-01-01T00:00:00Z"),
                message: "m".into(),
            },
        };
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(v["state"], "raised");
        assert_eq!(v["kind"], "device_silent");
        assert_eq!(v["severity"], "warning");
        assert_eq!(v["device"], "cuff-3");
        assert_eq!(v["since"], "2026-01-01T00:00:00Z");
    }
}
