//! Device clock handling: corrected measurement time and a time-quality label.
//!
//! Rules (fhir-mapping.md §4, gatt-profiles.md §3 and §11):
//! - Read the device's clock (Current Time 0x2A2B) at connect, together with the gateway's
//!   time at that moment. If it is off by **more than** the threshold (default 2 s) the
//!   measurement time is corrected by the same offset: `effective = raw + (gateway - device)`,
//!   label [`TimeQuality::CorrectedForSkew`]; the agent then adds the Coincident Timestamp
//!   Observation. Within the threshold: [`TimeQuality::DeviceTrusted`].
//! - No device clock reading (no CTS): the raw timestamp is used as sent,
//!   [`TimeQuality::DeviceUnverified`], unless it is before `min_valid_year` or in the future.
//! - No usable measurement timestamp, a never-set clock that cannot be corrected, a measurement
//!   later than the device's own clock at connect (clock reset between measurement and
//!   connect, e.g. battery change) or a result in the future: the gateway receive time is used,
//!   [`TimeQuality::Unknown`] with the reason. fhir-mapping.md §4: a stored record with no
//!   usable time is kept locally, not uploaded; a live reading may use the receive time.
//!
//! Never-set clocks are the common case: year 0 / month 0 ("not known") decode to no
//! timestamp at all; 2000-01-01 after a battery change and other far-past years are caught by
//! `min_valid_year` (default 2015). A never-set clock that is *running* and readable at connect
//! is still corrected (its offset is known); only the raw time goes into the FHIR identifier
//! (fhir-mapping.md §5). Times are plain integers (unix seconds); the device's zone offset is
//! an input, so this module needs no time library and reads no clock.

use serde::Serialize;

use crate::DeviceTime;

/// Configuration of the clock policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClockPolicy {
    /// A skew up to this many seconds is not corrected (fhir-mapping.md §4: 2 s).
    pub skew_threshold_s: i64,
    /// Device times before this year are "never set" (2000-01-01 after a battery change).
    pub min_valid_year: u16,
}

impl Default for ClockPolicy {
    fn default() -> Self {
        Self {
            skew_threshold_s: 2,
            min_valid_year: 2015,
        }
    }
}

/// What the agent knows when it receives a measurement.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClockInputs {
    /// The measurement's own timestamp (`None` if absent or invalid).
    pub measurement: Option<DeviceTime>,
    /// The device's Current Time read at connect (`None` if not readable).
    pub device_now: Option<DeviceTime>,
    /// Gateway UTC unix seconds when `device_now` was read.
    pub gateway_at_read_unix_s: i64,
    /// Gateway UTC unix seconds when the measurement arrived.
    pub receive_unix_s: i64,
    /// The zone configured for this device: local = UTC + offset (seconds).
    pub zone_offset_s: i32,
}

/// Why no device time could be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum UnknownReason {
    NoDeviceTimestamp,
    DeviceClockNeverSet,
    MeasurementAfterDeviceClock,
    InFuture,
}

/// How far the effective time can be trusted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "quality")]
pub enum TimeQuality {
    /// Device clock checked at connect and within the threshold: raw time used.
    DeviceTrusted,
    /// Device clock off by `offset_s` (gateway - device): raw + offset used.
    CorrectedForSkew { offset_s: i64 },
    /// Device clock could not be read: raw time used as sent.
    DeviceUnverified,
    /// No usable device time: gateway receive time used.
    Unknown { reason: UnknownReason },
}

/// The effective time of a measurement.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct CorrectedTime {
    /// UTC unix seconds.
    pub unix_s: i64,
    /// The same instant on the device's local wall clock (`None` outside 1582..=9999).
    pub local: Option<DeviceTime>,
    pub quality: TimeQuality,
}

/// `true` if a device time looks like a clock that was never set.
pub fn is_never_set(t: DeviceTime, policy: &ClockPolicy) -> bool {
    t.year < policy.min_valid_year
}

/// Computes the effective time of a measurement (see the module doc).
pub fn correct(inputs: &ClockInputs, policy: &ClockPolicy) -> CorrectedTime {
    let zone = i64::from(inputs.zone_offset_s);
    let unknown = |reason| {
        let unix_s = inputs.receive_unix_s;
        CorrectedTime {
            unix_s,
            local: DeviceTime::from_naive_unix_seconds(unix_s + zone),
            quality: TimeQuality::Unknown { reason },
        }
    };
    let Some(m) = inputs.measurement else {
        return unknown(UnknownReason::NoDeviceTimestamp);
    };
    let m_local = m.naive_unix_seconds();
    let threshold = policy.skew_threshold_s.max(0);
    let (local, quality) = match inputs.device_now {
        Some(d) => {
            let d_local = d.naive_unix_seconds();
            if m_local > d_local + threshold {
                return unknown(UnknownReason::MeasurementAfterDeviceClock);
            }
            let offset = inputs.gateway_at_read_unix_s + zone - d_local;
            if offset.abs() <= threshold {
                (m_local, TimeQuality::DeviceTrusted)
            } else {
                (
                    m_local + offset,
                    TimeQuality::CorrectedForSkew { offset_s: offset },
                )
            }
        }
        None => {
            if is_never_set(m, policy) {
                return unknown(UnknownReason::DeviceClockNeverSet);
            }
            (m_local, TimeQuality::DeviceUnverified)
        }
    };
    let unix_s = local - zone;
    if unix_s > inputs.receive_unix_s + threshold {
        return unknown(UnknownReason::InFuture);
    }
    let local_time = DeviceTime::from_naive_unix_seconds(local);
    if local_time.is_none_or(|t| is_never_set(t, policy)) {
        return unknown(UnknownReason::DeviceClockNeverSet);
    }
    CorrectedTime {
        unix_s,
        local: local_time,
        quality,
    }
}

/// Whether to write the device clock (gatt-profiles.md §3): its date is unknown, it looks
/// never set, or it is off by at least `threshold_s` from the gateway's local time.
pub fn needs_clock_set(
    device_now: Option<DeviceTime>,
    gateway_unix_s: i64,
    zone_offset_s: i32,
    threshold_s: i64,
    policy: &ClockPolicy,
) -> bool {
    match device_now {
        None => true,
        Some(d) if is_never_set(d, policy) => true,
        Some(d) => {
            let skew = gateway_unix_s + i64::from(zone_offset_s) - d.naive_unix_seconds();
            skew.abs() >= threshold_s
        }
    }
}

/// The gateway's local wall time for a device zone, to encode into Current Time.
pub fn gateway_local_time(gateway_unix_s: i64, zone_offset_s: i32) -> Option<DeviceTime> {
    DeviceTime::from_naive_unix_seconds(gateway_unix_s + i64::from(zone_offset_s))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(y: u16, mo: u8, d: u8, h: u8, mi: u8, s: u8) -> DeviceTime {
        DeviceTime::new(y, mo, d, h, mi, s).unwrap()
    }

    fn unix(dt: DeviceTime) -> i64 {
        dt.naive_unix_seconds()
    }

    #[test]
    fn small_skew_is_trusted_large_skew_corrected() {
        let gw = unix(t(2026, 3, 1, 10, 0, 0));
        let mut i = ClockInputs {
            measurement: Some(t(2026, 3, 1, 9, 0, 0)),
            device_now: Some(t(2026, 3, 1, 10, 0, 2)),
            gateway_at_read_unix_s: gw,
            receive_unix_s: gw,
            zone_offset_s: 0,
        };
        let p = ClockPolicy::default();
        assert_eq!(correct(&i, &p).quality, TimeQuality::DeviceTrusted);
        i.device_now = Some(t(2026, 3, 1, 10, 0, 3));
        let c = correct(&i, &p);
        assert_eq!(c.quality, TimeQuality::CorrectedForSkew { offset_s: -3 });
        assert_eq!(c.local, Some(t(2026, 3, 1, 8, 59, 57)));
    }

    #[test]
    fn never_set_running_clock_is_corrected_and_reset_clock_is_unknown() {
        let gw = unix(t(2026, 3, 1, 10, 0, 0)) - 3600;
        let p = ClockPolicy::default();
        // Battery changed, clock restarted at 2000-01-01 and ran for 1 h; reading 10 min ago.
        let i = ClockInputs {
            measurement: Some(t(2000, 1, 1, 0, 50, 0)),
            device_now: Some(t(2000, 1, 1, 1, 0, 0)),
            gateway_at_read_unix_s: gw,
            receive_unix_s: gw,
            zone_offset_s: 3600,
        };
        let c = correct(&i, &p);
        assert!(matches!(c.quality, TimeQuality::CorrectedForSkew { .. }));
        assert_eq!(c.local, Some(t(2026, 3, 1, 9, 50, 0)));
        // A reading taken before the reset carries a later device time than the clock now.
        let j = ClockInputs {
            measurement: Some(t(2025, 12, 1, 8, 0, 0)),
            ..i
        };
        assert_eq!(
            correct(&j, &p).quality,
            TimeQuality::Unknown {
                reason: UnknownReason::MeasurementAfterDeviceClock
            }
        );
        // Unreadable clock stuck in 2000: receive time.
        let k = ClockInputs {
            device_now: None,
            ..i
        };
        let c = correct(&k, &p);
        assert_eq!(c.unix_s, gw);
        assert_eq!(
            c.quality,
            TimeQuality::Unknown {
                reason: UnknownReason::DeviceClockNeverSet
            }
        );
    }

    #[test]
    fn no_timestamp_unreadable_clock_and_future_times() {
        let gw = unix(t(2026, 3, 1, 10, 0, 0));
        let p = ClockPolicy::default();
        let base = ClockInputs {
            measurement: None,
            device_now: None,
            gateway_at_read_unix_s: gw,
            receive_unix_s: gw + 5,
            zone_offset_s: -3600,
        };
        let c = correct(&base, &p);
        assert_eq!(c.unix_s, gw + 5);
        assert_eq!(
            c.quality,
            TimeQuality::Unknown {
                reason: UnknownReason::NoDeviceTimestamp
            }
        );
        assert_eq!(c.local, Some(t(2026, 3, 1, 9, 0, 5)));
        // No CTS: the raw local time is used, converted with the device's zone.
        let i = ClockInputs {
            measurement: Some(t(2026, 3, 1, 8, 30, 0)),
            ..base
        };
        let c = correct(&i, &p);
        assert_eq!(c.quality, TimeQuality::DeviceUnverified);
        assert_eq!(c.unix_s, unix(t(2026, 3, 1, 9, 30, 0)));
        // A raw time an hour ahead of the receive time is not believed.
        let f = ClockInputs {
            measurement: Some(t(2026, 3, 1, 10, 0, 0)),
            ..base
        };
        assert_eq!(
            correct(&f, &p).quality,
            TimeQuality::Unknown {
                reason: UnknownReason::InFuture
            }
        );
    }

    #[test]
    fn clock_set_decision() {
        let p = ClockPolicy::default();
        let gw = unix(t(2026, 3, 1, 10, 0, 0));
        assert!(needs_clock_set(None, gw, 0, 2, &p));
        assert!(needs_clock_set(Some(t(2000, 1, 1, 0, 0, 0)), gw, 0, 2, &p));
        assert!(!needs_clock_set(
            Some(t(2026, 3, 1, 10, 0, 1)),
            gw,
            0,
            2,
            &p
        ));
        assert!(needs_clock_set(Some(t(2026, 3, 1, 10, 0, 2)), gw, 0, 2, &p));
        // Omron: only when more than 10 min off.
        assert!(!needs_clock_set(
            Some(t(2026, 3, 1, 10, 5, 0)),
            gw,
            0,
            600,
            &p
        ));
        assert_eq!(gateway_local_time(gw, 3600), Some(t(2026, 3, 1, 11, 0, 0)));
    }
}
