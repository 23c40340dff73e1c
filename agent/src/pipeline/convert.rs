//! The pure step: one driver [`Record`] → zero or more canonical [`Reading`]s.
//!
//! It attributes the record to a patient (single patient, or by the device's user index), picks
//! the observation kind per value (a BP cuff's pulse is not an oximeter's), fixes the effective
//! time and its quality, and computes the two identities that never change afterwards (see
//! [`crate::identity`]). No I/O, no clock: the reception time is an argument.

use chrono::{DateTime, FixedOffset, TimeZone, Utc};
use device_drivers::{ReadingType, Record, Status, StatusClass};

use super::devices::DeviceContext;
use crate::config::Attribution;
use crate::identity::{self, IdTimestamp, ReadingId};
use crate::reading::{
    CoincidentTimestamp, DeviceClass, Reading, ReadingKind, Source, TimeQuality, Timing,
};
use crate::uplink::fhir;

/// What the source knows about the device's clock beyond the record's wall-clock time.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CaptureClock {
    /// The offset the device reported with its time, minutes east of UTC.
    pub utc_offset_minutes: Option<i16>,
    /// Fractional-second digits of the device time, as the device sent them.
    pub fraction: Option<String>,
    /// BLE: the device's own clock as read at connect, so the pipeline can correct measured skew
    /// (fhir-mapping.md §4; `device_drivers::gatt::clock`). `None`: not a BLE reading.
    pub device_clock: Option<Box<DeviceClockReading>>,
    /// Whether the gateway's clock was synchronised (NTP) when the reading arrived; `None`: the
    /// source did not check.
    pub gateway_clock_synchronized: Option<bool>,
}

/// The device's clock read at connect, and the gateway's (UTC) time at that moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceClockReading {
    /// `None`: the device has no readable clock (no Current Time service).
    pub device_now: Option<device_drivers::DeviceTime>,
    pub gateway_at_read: DateTime<Utc>,
}

/// Why a record produced no reading. Carries no PHI.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("record carries user index {0:?}, which is not mapped to a patient")]
    Unattributed(Option<u8>),
    #[error("record has no value that maps to a FHIR observation")]
    NothingToUpload,
    /// A status whose class is `Invalid` or `NotForUpload` (see [`unreliable_status`]).
    #[error("record is flagged {0}: not a valid patient measurement")]
    Unreliable(Status),
    /// The record may only be dated by the device and the device gave no time we may use: the
    /// device says its clock is wrong ([`StatusClass::ClockUnreliable`]), or the device stored
    /// the record and sent it later ([`StatusClass::FromMemory`]) and its time is missing or not
    /// used for this device. Uploading it with the gateway's reception time would misdate a
    /// measurement (fhir-mapping.md §4: "No usable time → do not upload; keep it locally"), so
    /// it is held as a dead letter and reported. Carries the status that demanded a device time.
    #[error("record is flagged {0} and has no valid device time: held, not dated with the reception time")]
    NoValidDeviceTime(Status),
    /// An aggregate (average, maximum, count...) over a period: not a measurement. Kept as a
    /// dead letter `statistic`, never uploaded as a reading.
    #[error("statistic: the values are a descriptive statistic ({0}), not a measurement")]
    Statistic(String),
    /// A data point from a hub without any time frame: there is no time to upload it at.
    #[error("no effective time: the source gave no time for this measurement")]
    NoEffectiveTime,
}

impl Rejection {
    /// Is the record a real measurement that must be kept (as a dead letter) rather than only
    /// counted? An unattributed reading is, and so is one without a valid device time; a record
    /// with nothing to upload or flagged invalid by its own device is not (a streaming oximeter
    /// sends several such records a second).
    pub fn keeps_record(&self) -> bool {
        match self {
            Rejection::Unattributed(_)
            | Rejection::NoValidDeviceTime(_)
            | Rejection::Statistic(_)
            | Rejection::NoEffectiveTime => true,
            Rejection::NothingToUpload | Rejection::Unreliable(_) => false,
        }
    }
}

/// The first status that keeps the record from becoming readings: the value is not a valid
/// measurement ([`StatusClass::Invalid`]: sensor off, artifact, invalid measurement...) or not
/// patient data ([`StatusClass::NotForUpload`]: test / demonstration data, control solution).
/// The classes are decided in `device_drivers::status`; every other class passes for now.
pub fn unreliable_status(record: &Record) -> Option<Status> {
    record.flags.iter().copied().find(|s| match s.class() {
        StatusClass::Invalid | StatusClass::NotForUpload => true,
        StatusClass::Interpretation(_)
        | StatusClass::BpMeasurementStatus(_)
        | StatusClass::ClockUnreliable
        | StatusClass::FromMemory
        | StatusClass::Informational => false,
    })
}

/// The first status of the given class, if any.
fn first_of_class(record: &Record, class: StatusClass) -> Option<Status> {
    record.flags.iter().copied().find(|s| s.class() == class)
}

/// The values of one Observation-to-be.
struct Group {
    kind: ReadingKind,
    values: Vec<device_drivers::Reading>,
    absent: Vec<device_drivers::AbsentValue>,
}

/// The Observation kind a value belongs to, on this class of device; `None` for a type with no
/// sourced standard code (SpCO, SpMet, SpHb, PVI; README "Limits"): never uploaded under a
/// wrong code, and the record itself is not kept for it either.
fn kind_of(t: ReadingType, class: DeviceClass) -> Option<ReadingKind> {
    Some(match t {
        ReadingType::SystolicPressure
        | ReadingType::DiastolicPressure
        | ReadingType::MeanArterialPressure => ReadingKind::BloodPressure,
        ReadingType::PulseRate => match class {
            DeviceClass::BloodPressureCuff => ReadingKind::PulseRateCuff,
            DeviceClass::PulseOximeter => ReadingKind::PulseRateOximeter,
            _ => ReadingKind::HeartRate,
        },
        ReadingType::HeartRate => ReadingKind::HeartRate,
        ReadingType::Spo2 => ReadingKind::OxygenSaturation,
        ReadingType::BodyWeight => ReadingKind::BodyWeight,
        ReadingType::BodyHeight => ReadingKind::BodyHeight,
        ReadingType::Bmi => ReadingKind::Bmi,
        ReadingType::BodyTemperature => ReadingKind::BodyTemperature,
        ReadingType::BloodGlucose => ReadingKind::BloodGlucose,
        ReadingType::RespiratoryRate => ReadingKind::RespiratoryRate,
        ReadingType::PerfusionIndex => ReadingKind::PerfusionIndex,
        ReadingType::BodyFatPercentage => ReadingKind::BodyFatPercentage,
        ReadingType::Spco | ReadingType::Spmet | ReadingType::Sphb | ReadingType::Pvi => {
            return None
        }
    })
}

/// Turns one driver record into canonical readings. Pure.
///
/// # Errors
/// In this order: a record flagged [`StatusClass::Invalid`] or [`StatusClass::NotForUpload`] is
/// [`Rejection::Unreliable`]; one flagged [`StatusClass::ClockUnreliable`] is
/// [`Rejection::NoValidDeviceTime`]; then [`Rejection::Unattributed`]; a
/// [`StatusClass::FromMemory`] record that would be dated with the reception time (no device
/// time, or a device whose clock is provenance only) is [`Rejection::NoValidDeviceTime`]; a
/// record with no value that maps to an Observation is [`Rejection::NothingToUpload`].
pub fn readings_from_record(
    device: &DeviceContext,
    record: &Record,
    source: &Source,
    clock: &CaptureClock,
    received_at: DateTime<Utc>,
) -> Result<Vec<Reading>, Rejection> {
    let utc_offset_minutes = clock.utc_offset_minutes;
    if let Some(status) = unreliable_status(record) {
        return Err(Rejection::Unreliable(status));
    }
    // The device says its clock (and so the record's time, present or not) is wrong.
    if let Some(status) = first_of_class(record, StatusClass::ClockUnreliable) {
        return Err(Rejection::NoValidDeviceTime(status));
    }
    // A statistic is uploaded only where a configured mapping states it in the resource and
    // gives its period: the serial stream reduction's window median, and an Open mHealth
    // `descriptive_statistic` that the hub's `upload_statistics` names and that covers a time
    // interval (`effectivePeriod`; never an instant or a date). Any other is held as a dead
    // letter `statistic` (issue #8).
    let window_seconds = reduced_window(record, source);
    if let (Some(stat), None) = (&record.context.statistic, window_seconds) {
        let configured = matches!(source, Source::Mqtt { .. })
            && device.upload_statistics.iter().any(|s| s == stat)
            && fhir::statistic_code(stat).is_some()
            && record.device_time.is_some()
            && record.context.effective_end.is_some()
            && !record.context.date_only;
        if !configured {
            return Err(Rejection::Statistic(stat.clone()));
        }
    }
    if record.device_time.is_none() && matches!(source, Source::Mqtt { .. }) {
        return Err(Rejection::NoEffectiveTime);
    }
    let patient = match &device.attribution {
        Attribution::Single(p) => p.clone(),
        Attribution::PerUser(map) => record
            .user_index
            .and_then(|u| map.get(&u))
            .cloned()
            .ok_or(Rejection::Unattributed(record.user_index))?,
    };

    // Effective time and its quality.
    let offset = utc_offset_minutes
        .and_then(|m| FixedOffset::east_opt(i32::from(m) * 60))
        .unwrap_or(device.utc_offset);
    let device_effective = record.device_time.and_then(|t| {
        offset
            .timestamp_opt(
                t.naive_unix_seconds() - i64::from(offset.local_minus_utc()),
                0,
            )
            .single()
    });
    let (effective, time_quality) = match (&clock.device_clock, device_effective) {
        (Some(dc), _) => ble_effective_time(
            record,
            dc,
            clock.gateway_clock_synchronized,
            offset,
            received_at,
        ),
        (None, Some(e)) if !device.clock_is_provenance_only => (e, TimeQuality::DeviceTrusted),
        _ => (
            received_at.with_timezone(&chrono::Offset::fix(&Utc)),
            TimeQuality::GatewayReceiveTime,
        ),
    };
    // The reception time dates live readings only; a stored one would be misdated.
    if time_quality == TimeQuality::GatewayReceiveTime {
        if let Some(status) = first_of_class(record, StatusClass::FromMemory) {
            return Err(Rejection::NoValidDeviceTime(status));
        }
    }
    // A reduced window: its reception time is the window's end; the Observation covers the
    // whole window (a median of many values is not a measurement at the window's end).
    let (effective, window_start) = match window_seconds {
        Some(secs) => {
            let start = received_at - chrono::Duration::seconds(secs);
            (start.with_timezone(&chrono::Offset::fix(&Utc)), Some(start))
        }
        None => (effective, None),
    };
    // Period or date: only from the device's own time (never stretched onto a receive time).
    let (timing, duration_seconds) = match (time_quality, &record.context) {
        _ if window_seconds.is_some() => (
            Timing::Period {
                end: received_at.with_timezone(&chrono::Offset::fix(&Utc)),
            },
            window_seconds,
        ),
        (TimeQuality::DeviceTrusted, c) if c.date_only => (Timing::Date, Some(86_400)),
        (TimeQuality::DeviceTrusted, c) => match (c.effective_end, record.device_time) {
            (Some(end), Some(start)) => {
                let secs = end.naive_unix_seconds() - start.naive_unix_seconds();
                let end = effective + chrono::Duration::seconds(secs);
                (Timing::Period { end }, Some(secs))
            }
            _ => (Timing::Instant, None),
        },
        _ => (Timing::Instant, None),
    };
    // A statistic goes up only over its period: never as an instant.
    if let (Some(stat), Timing::Instant | Timing::Date) = (&record.context.statistic, timing) {
        return Err(Rejection::Statistic(stat.clone()));
    }

    // Group the values into observations: the numbers, and the values the device sent as a
    // special value (NaN, NRes, +/-INF), which become `dataAbsentReason` in the uplink.
    let mut groups: Vec<Group> = Vec::new();
    fn group(groups: &mut Vec<Group>, kind: ReadingKind) -> &mut Group {
        let i = match groups.iter().position(|g| g.kind == kind) {
            Some(i) => i,
            None => {
                groups.push(Group {
                    kind,
                    values: Vec::new(),
                    absent: Vec::new(),
                });
                groups.len() - 1
            }
        };
        &mut groups[i]
    }
    for r in &record.readings {
        if let Some(kind) = kind_of(r.kind, device.class) {
            group(&mut groups, kind).values.push(r.clone());
        }
    }
    for a in &record.context.absent {
        if let Some(kind) = kind_of(a.kind, device.class) {
            group(&mut groups, kind).absent.push(a.clone());
        }
    }
    // A BP panel needs both systolic and diastolic (each a number or an absent value).
    groups.retain(|g| {
        let has = |t: ReadingType| {
            g.values.iter().any(|c| c.kind == t) || g.absent.iter().any(|a| a.kind == t)
        };
        g.kind != ReadingKind::BloodPressure
            || (has(ReadingType::SystolicPressure) && has(ReadingType::DiastolicPressure))
    });
    if groups.is_empty() {
        return Err(Rejection::NothingToUpload);
    }

    let info = device.info(record);
    // fhir-mapping.md §5.1: an Open mHealth data point is identified by its header.uuid, not
    // by the hub that relayed it.
    let device_part = match source {
        Source::Mqtt { source_id, .. } => source_id.as_str(),
        _ => device.identifier.id_component(),
    };
    let timestamp = match record.device_time {
        Some(t) => IdTimestamp::Device {
            seconds_since_2000: t.seconds_since_2000(),
            fraction: clock.fraction.clone(),
            utc_offset_minutes: clock.utc_offset_minutes,
        },
        // §5.1 period form: the window's start and its duration.
        None => IdTimestamp::Gateway(window_start.unwrap_or(received_at)),
    };
    Ok(groups
        .into_iter()
        .map(
            |Group {
                 kind,
                 values: components,
                 absent,
             }| {
                let observation_identifier = identity::observation_identifier_for_period(
                    device_part,
                    &patient,
                    fhir::mdc_code(kind, &record.context),
                    &timestamp,
                    duration_seconds,
                );
                // An absent value is content too (a NaN and a +INF are different readings); a
                // reading without one hashes exactly as before.
                let absent_names: Vec<String> = absent
                    .iter()
                    .map(|a| format!("absent:{}:{}", a.kind.as_str(), a.reason.code()))
                    .collect();
                let id = ReadingId::of_content(
                    &observation_identifier,
                    &components,
                    // The status names, the strings of before `Status`: content ids are unchanged.
                    record
                        .flags
                        .iter()
                        .map(|s| s.as_str())
                        .chain(absent_names.iter().map(String::as_str)),
                );
                let mut context = (*record.context).clone();
                context.absent = absent;
                Reading {
                    id,
                    observation_identifier,
                    kind,
                    components,
                    device: info.clone(),
                    patient: patient.clone(),
                    device_time: record.device_time,
                    effective,
                    time_quality,
                    received_at,
                    flags: record.flags.clone(),
                    source: source.clone(),
                    timing,
                    context,
                }
            },
        )
        .collect())
}
/// The window length of a record the serial stream reduction made (a median over a window,
/// [`super::reduce`]), in seconds; `None` for any other record (a device's own record, an Open
/// mHealth data point: their statistics are never uploaded).
fn reduced_window(record: &Record, source: &Source) -> Option<i64> {
    if !matches!(source, Source::Serial { .. })
        || record.context.statistic.as_deref() != Some(super::reduce::WINDOW_STATISTIC)
        || record.device_time.is_some()
    {
        return None;
    }
    let mode = record.fields.get("reduction")?.as_str()?;
    if !matches!(mode, "spot-check" | "interval") {
        return None;
    }
    let secs = record.fields.get("window_seconds")?.as_u64()?;
    i64::try_from(secs).ok().filter(|s| *s > 0)
}

/// Effective time of a BLE record: skew-corrected against the device clock read at connect
/// (`device_drivers::gatt::clock::correct`), unless the gateway's own clock is not synchronised,
/// in which case nothing is corrected and the reading says so.
fn ble_effective_time(
    record: &Record,
    dc: &DeviceClockReading,
    gateway_synchronized: Option<bool>,
    offset: FixedOffset,
    received_at: DateTime<Utc>,
) -> (DateTime<FixedOffset>, TimeQuality) {
    use device_drivers::gatt::clock::{self, ClockInputs, ClockPolicy};
    let at = |unix_s: i64| {
        offset
            .timestamp_opt(unix_s, 0)
            .single()
            .unwrap_or_else(|| received_at.with_timezone(&offset))
    };
    let zone = offset.local_minus_utc();
    if gateway_synchronized == Some(false) {
        let policy = ClockPolicy::default();
        let raw = record
            .device_time
            .filter(|t| !clock::is_never_set(*t, &policy))
            .map(|t| t.naive_unix_seconds() - i64::from(zone));
        let unix_s = raw.unwrap_or(received_at.timestamp());
        return (at(unix_s), TimeQuality::GatewayClockUnsynchronized);
    }
    let corrected = clock::correct(
        &ClockInputs {
            measurement: record.device_time,
            device_now: dc.device_now,
            gateway_at_read_unix_s: dc.gateway_at_read.timestamp(),
            receive_unix_s: received_at.timestamp(),
            zone_offset_s: zone,
        },
        &ClockPolicy::default(),
    );
    let quality = match corrected.quality {
        clock::TimeQuality::DeviceTrusted => TimeQuality::DeviceTrusted,
        // The clock read the correction used travels with the reading: the uplink adds the
        // Coincident Timestamp Observation from it (fhir-mapping.md §4).
        clock::TimeQuality::CorrectedForSkew { .. } => match dc.device_now.and_then(|d| {
            offset
                .timestamp_opt(d.naive_unix_seconds() - i64::from(zone), 0)
                .single()
        }) {
            Some(device_time) => TimeQuality::Corrected(CoincidentTimestamp {
                gateway_time: dc.gateway_at_read,
                device_time,
            }),
            // `correct` corrects only against a device clock it read; kept total all the same.
            None => TimeQuality::CorrectedForSkew,
        },
        clock::TimeQuality::DeviceUnverified => TimeQuality::DeviceUnverified,
        clock::TimeQuality::Unknown { .. } => TimeQuality::GatewayReceiveTime,
    };
    (at(corrected.unix_s), quality)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reading::{DeviceIdentifier, PatientRef};
    use device_drivers::{Decimal, DeviceTime};
    use std::collections::BTreeMap;

    fn cuff() -> DeviceContext {
        DeviceContext {
            name: "cuff".into(),
            class: DeviceClass::BloodPressureCuff,
            identifier: DeviceIdentifier::Bluetooth("00091FAABBCC".into()),
            attribution: Attribution::Single("Patient/p1".parse().unwrap()),
            utc_offset: FixedOffset::east_opt(3600).unwrap(),
            clock_is_provenance_only: false,
            reported: Default::default(),
            upload_statistics: Vec::new(),
        }
    }

    fn bp_record() -> Record {
        Record {
            readings: vec![
                device_drivers::Reading::new(
                    ReadingType::SystolicPressure,
                    Decimal::from_int(128),
                    "mm[Hg]",
                ),
                device_drivers::Reading::new(
                    ReadingType::DiastolicPressure,
                    Decimal::from_int(82),
                    "mm[Hg]",
                ),
                device_drivers::Reading::new(
                    ReadingType::MeanArterialPressure,
                    Decimal::from_int(97),
                    "mm[Hg]",
                ),
                device_drivers::Reading::new(ReadingType::PulseRate, Decimal::from_int(60), "/min"),
            ],
            device_time: DeviceTime::new(2025, 3, 14, 8, 15, 30),
            ..Record::default()
        }
    }

    fn mqtt_src(uuid: &str) -> Source {
        Source::Mqtt {
            topic: "hub/1".into(),
            source_id: uuid.into(),
        }
    }

    #[test]
    fn a_data_point_is_identified_by_its_uuid_not_by_the_hub() {
        let hub = DeviceContext {
            class: DeviceClass::Generic,
            identifier: DeviceIdentifier::Local("gw/hub".into()),
            ..cuff()
        };
        let mut rec = bp_record();
        rec.readings.truncate(2);
        let clock = CaptureClock {
            utc_offset_minutes: Some(-300),
            fraction: Some("250".into()),
            ..CaptureClock::default()
        };
        let now = t0();
        let a = readings_from_record(&hub, &rec, &mqtt_src("uuid-a"), &clock, now).unwrap();
        let b = readings_from_record(&hub, &rec, &mqtt_src("uuid-b"), &clock, now).unwrap();
        assert_eq!(
            a[0].observation_identifier,
            "uuid-a-p1-150020-795255330.250-300"
        );
        // Two data points with the same time and values on one topic do not share an identity.
        assert_ne!(a[0].observation_identifier, b[0].observation_identifier);
        assert_ne!(a[0].id, b[0].id);
        assert!(!a[0].observation_identifier.contains("gw/hub"));
    }

    /// A fixed reception time: these tests never read the clock.
    fn t0() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 23, 10, 0, 0).unwrap()
    }

    fn src() -> Source {
        Source::Ble {
            address: "00:09:1F:AA:BB:CC".into(),
        }
    }

    #[test]
    fn a_cuff_record_becomes_a_bp_panel_and_a_cuff_pulse() {
        let now = t0();
        let rs = readings_from_record(&cuff(), &bp_record(), &src(), &CaptureClock::default(), now)
            .unwrap();
        assert_eq!(rs.len(), 2);
        assert_eq!(rs[0].kind, ReadingKind::BloodPressure);
        assert_eq!(rs[0].components.len(), 3);
        assert_eq!(rs[1].kind, ReadingKind::PulseRateCuff);
        assert_eq!(rs[0].effective.to_rfc3339(), "2025-03-14T08:15:30+01:00");
        assert_eq!(rs[0].time_quality, TimeQuality::DeviceTrusted);
        assert!(
            rs[0].observation_identifier.ends_with("-150020-795255330"),
            "{}",
            rs[0].observation_identifier
        );
        assert_ne!(rs[0].id, rs[1].id);
    }

    #[test]
    fn special_values_become_absent_values_and_never_a_number_on_the_wire() {
        use device_drivers::AbsentReason;
        // GATT 0x2A35: systolic 120, diastolic NaN, MAP NRes, pulse +INF, 2024-03-05 14:30.
        let decode = |pulse: [u8; 2]| {
            let mut p = vec![
                0x06, 0x78, 0x00, 0xff, 0x07, 0x00, 0x08, 0xe8, 0x07, 0x03, 0x05, 0x0e, 0x1e, 0x00,
            ];
            p.extend(pulse);
            device_drivers::gatt::decode_measurement(0x2A35, &p, None)
                .unwrap()
                .unwrap()
        };
        let rec = decode([0xfe, 0x07]);
        let rs =
            readings_from_record(&cuff(), &rec, &src(), &CaptureClock::default(), t0()).unwrap();
        assert_eq!(rs.len(), 2, "a panel and the cuff's pulse");
        let (bp, pulse) = (&rs[0], &rs[1]);
        assert_eq!(bp.kind, ReadingKind::BloodPressure);
        assert_eq!(bp.components.len(), 1);
        let reasons = |r: &Reading| -> Vec<(ReadingType, AbsentReason)> {
            r.context
                .absent
                .iter()
                .map(|a| (a.kind, a.reason))
                .collect()
        };
        assert_eq!(
            reasons(bp),
            vec![
                (ReadingType::DiastolicPressure, AbsentReason::NotANumber),
                (ReadingType::MeanArterialPressure, AbsentReason::Error),
            ]
        );
        assert_eq!(pulse.kind, ReadingKind::PulseRateCuff);
        assert!(pulse.components.is_empty());
        assert_eq!(
            reasons(pulse),
            vec![(ReadingType::PulseRate, AbsentReason::PositiveInfinity)]
        );

        let bundle = fhir::build_transaction_bundle(&fhir::GatewayInfo::new("gw", "0"), &rs)
            .unwrap()
            .0;
        assert!(vitalgate_devkit::validate_resource(&bundle).is_empty());
        let obs: Vec<&serde_json::Value> = bundle["entry"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| &e["resource"])
            .filter(|r| r["resourceType"] == "Observation")
            .collect();
        let panel = obs
            .iter()
            .find(|o| o["code"]["coding"][0]["code"] == "150020")
            .unwrap();
        let comps = panel["component"].as_array().unwrap();
        assert_eq!(comps.len(), 3);
        assert_eq!(comps[0]["valueQuantity"]["value"], 120);
        for (c, code) in comps[1..].iter().zip(["not-a-number", "error"]) {
            assert!(c.get("valueQuantity").is_none(), "{c}");
            assert_eq!(c["dataAbsentReason"]["coding"][0]["code"], code);
            assert_eq!(
                c["dataAbsentReason"]["coding"][0]["system"],
                "http://terminology.hl7.org/CodeSystem/data-absent-reason"
            );
        }
        let pr = obs
            .iter()
            .find(|o| o["code"]["coding"][0]["code"] == "149546")
            .unwrap();
        assert!(pr.get("valueQuantity").is_none());
        assert_eq!(
            pr["dataAbsentReason"]["coding"][0]["code"],
            "positive-infinity"
        );
        // The special words' mantissas never appear as numbers.
        let text = bundle.to_string();
        for n in ["2047", "2046", "-2048", "-2046"] {
            assert!(!text.contains(&format!(":{n}")), "{n} in {text}");
        }

        // A NaN pulse is a different reading from a +INF pulse (same identifier, other content).
        let nan = readings_from_record(
            &cuff(),
            &decode([0xff, 0x07]),
            &src(),
            &CaptureClock::default(),
            t0(),
        )
        .unwrap();
        assert_eq!(nan[1].observation_identifier, pulse.observation_identifier);
        assert_ne!(nan[1].id, pulse.id);
        assert_eq!(nan[0].id, bp.id);
    }

    #[test]
    fn the_same_reading_delivered_twice_has_the_same_id() {
        let a = readings_from_record(
            &cuff(),
            &bp_record(),
            &src(),
            &CaptureClock::default(),
            t0(),
        )
        .unwrap();
        let later = t0() + chrono::Duration::seconds(90);
        let b = readings_from_record(
            &cuff(),
            &bp_record(),
            &src(),
            &CaptureClock::default(),
            later,
        )
        .unwrap();
        assert_eq!(a[0].id, b[0].id);
        assert_eq!(a[0].observation_identifier, b[0].observation_identifier);
    }

    #[test]
    fn a_different_value_gives_a_different_id() {
        let mut r2 = bp_record();
        r2.readings[0].value = Decimal::from_int(129);
        let a = readings_from_record(
            &cuff(),
            &bp_record(),
            &src(),
            &CaptureClock::default(),
            t0(),
        )
        .unwrap();
        let b = readings_from_record(&cuff(), &r2, &src(), &CaptureClock::default(), t0()).unwrap();
        assert_ne!(a[0].id, b[0].id);
    }

    #[test]
    fn multi_user_devices_attribute_by_user_index_and_refuse_unknown_users() {
        let mut dev = cuff();
        let mut map = BTreeMap::new();
        map.insert(1u8, "Patient/one".parse::<PatientRef>().unwrap());
        dev.attribution = Attribution::PerUser(map);
        let mut rec = bp_record();
        rec.user_index = Some(1);
        let rs = readings_from_record(&dev, &rec, &src(), &CaptureClock::default(), t0()).unwrap();
        assert_eq!(rs[0].patient, "Patient/one".parse().unwrap());
        rec.user_index = Some(2);
        assert_eq!(
            readings_from_record(&dev, &rec, &src(), &CaptureClock::default(), t0()),
            Err(Rejection::Unattributed(Some(2)))
        );
        rec.user_index = None;
        assert!(readings_from_record(&dev, &rec, &src(), &CaptureClock::default(), t0()).is_err());
    }

    #[test]
    fn no_device_time_uses_the_gateway_receive_time() {
        let mut rec = bp_record();
        rec.device_time = None;
        let now = Utc.with_ymd_and_hms(2026, 11, 23, 10, 0, 0).unwrap();
        let rs =
            readings_from_record(&cuff(), &rec, &src(), &CaptureClock::default(), now).unwrap();
        assert_eq!(rs[0].time_quality, TimeQuality::GatewayReceiveTime);
        assert_eq!(rs[0].effective.to_rfc3339(), "2026-11-23T10:00:00+00:00");
        assert!(
            rs[0].observation_identifier.contains("-G"),
            "{}",
            rs[0].observation_identifier
        );
    }

    fn ble_clock(device_now: Option<DeviceTime>, synced: Option<bool>) -> CaptureClock {
        CaptureClock {
            device_clock: Some(Box::new(DeviceClockReading {
                device_now,
                gateway_at_read: t0(),
            })),
            gateway_clock_synchronized: synced,
            ..CaptureClock::default()
        }
    }

    #[test]
    fn a_ble_reading_is_corrected_by_the_skew_measured_at_connect_and_keeps_its_raw_identifier() {
        // The cuff's clock read 2026-11-23 09:00:00 local (+01:00) when the gateway's was
        // 10:00:00Z: it is 2 h behind. Its reading at 08:15:30 device time happened at 10:15:30 local.
        let dev_now = DeviceTime::new(2026, 11, 23, 9, 0, 0);
        let mut rec = bp_record();
        rec.device_time = DeviceTime::new(2026, 11, 23, 8, 15, 30);
        let later = t0() + chrono::Duration::seconds(600);
        let rs = readings_from_record(
            &cuff(),
            &rec,
            &src(),
            &ble_clock(dev_now, Some(true)),
            later,
        )
        .unwrap();
        // The clock read travels with the reading, for the Coincident Timestamp Observation.
        let cts = rs[0]
            .time_quality
            .coincident_timestamp()
            .expect("a corrected reading carries its clock read");
        assert_eq!(cts.gateway_time, t0());
        assert_eq!(cts.device_time.to_rfc3339(), "2026-11-23T09:00:00+01:00");
        assert!(rs
            .iter()
            .all(|r| r.time_quality == TimeQuality::Corrected(*cts)));
        assert_eq!(rs[0].effective.to_rfc3339(), "2026-11-23T10:15:30+01:00");
        let raw = DeviceTime::new(2026, 11, 23, 8, 15, 30)
            .unwrap()
            .seconds_since_2000();
        assert!(rs[0]
            .observation_identifier
            .ends_with(&format!("-150020-{raw}")));
        // Within the threshold: trusted as is.
        let in_sync = DeviceTime::new(2026, 11, 23, 11, 0, 1);
        let rs = readings_from_record(
            &cuff(),
            &rec,
            &src(),
            &ble_clock(in_sync, Some(true)),
            later,
        )
        .unwrap();
        assert_eq!(rs[0].time_quality, TimeQuality::DeviceTrusted);
        assert_eq!(rs[0].effective.to_rfc3339(), "2026-11-23T08:15:30+01:00");
        // No clock to read: as sent, and said so.
        let rs =
            readings_from_record(&cuff(), &rec, &src(), &ble_clock(None, None), later).unwrap();
        assert_eq!(rs[0].time_quality, TimeQuality::DeviceUnverified);
    }

    #[test]
    fn an_unsynchronised_gateway_clock_is_never_used_to_correct_and_is_labelled() {
        let mut rec = bp_record();
        rec.device_time = DeviceTime::new(2026, 11, 23, 8, 15, 30);
        let c = ble_clock(DeviceTime::new(2026, 11, 23, 9, 0, 0), Some(false));
        let rs = readings_from_record(&cuff(), &rec, &src(), &c, t0()).unwrap();
        assert_eq!(rs[0].time_quality, TimeQuality::GatewayClockUnsynchronized);
        assert_eq!(rs[0].effective.to_rfc3339(), "2026-11-23T08:15:30+01:00");
    }

    #[test]
    fn sensor_alarm_records_are_not_uploaded() {
        let mut rec = bp_record();
        rec.add_flag(Status::SensorAlarm);
        assert_eq!(
            readings_from_record(&cuff(), &rec, &src(), &CaptureClock::default(), t0()),
            Err(Rejection::Unreliable(Status::SensorAlarm))
        );
    }

    /// The statuses that used to reach the FHIR server as `final` Observations because the
    /// pipeline compared strings the drivers did not produce.
    #[test]
    fn each_invalid_or_test_data_status_stops_the_record() {
        for name in [
            "data_for_testing",
            "invalid_measurement_detected",
            "sensor_disconnected",
            "sensor_malfunction",
            "result_higher_than_device_can_process",
            "measurement_unsuccessful",
            "defective_sensor",
            "out_of_track",
            "artifact",
        ] {
            let status: Status = name.parse().unwrap();
            let mut rec = bp_record();
            rec.add_flag(status);
            assert_eq!(
                readings_from_record(&cuff(), &rec, &src(), &CaptureClock::default(), t0()),
                Err(Rejection::Unreliable(status)),
                "{name}"
            );
        }
    }

    #[test]
    fn the_blocking_status_is_found_among_informational_ones() {
        let mut rec = bp_record();
        rec.add_flag(Status::LowBattery);
        rec.add_flag(Status::IrregularPulse);
        rec.add_flag(Status::ControlSolution);
        assert_eq!(
            readings_from_record(&cuff(), &rec, &src(), &CaptureClock::default(), t0()),
            Err(Rejection::Unreliable(Status::ControlSolution))
        );
    }

    #[test]
    fn an_informational_status_does_not_stop_the_record() {
        let mut rec = bp_record();
        rec.add_flag(Status::LowBattery);
        let rs =
            readings_from_record(&cuff(), &rec, &src(), &CaptureClock::default(), t0()).unwrap();
        assert_eq!(rs.len(), 2);
        assert!(rs.iter().all(|r| r.flags == vec![Status::LowBattery]));
    }

    #[test]
    fn statuses_enter_the_content_id_by_their_names() {
        let mut rec = bp_record();
        rec.add_flag(Status::LowBattery);
        rec.add_flag(Status::Implausible(ReadingType::PulseRate));
        let rs =
            readings_from_record(&cuff(), &rec, &src(), &CaptureClock::default(), t0()).unwrap();
        let expected = ReadingId::of_content(
            &rs[0].observation_identifier,
            &rs[0].components,
            ["implausible_pulse_rate", "low_battery"],
        );
        assert_eq!(rs[0].id, expected);
    }

    /// A PLX spot-check from a device whose clock is not set: the decoder drops the time (it is
    /// not a time) and the record must not take the gateway's reception time instead.
    #[test]
    fn a_clock_not_set_record_is_held_not_dated_with_the_reception_time() {
        let mut rec = bp_record();
        rec.device_time = None;
        rec.add_flag(Status::DeviceClockNotSet);
        let rej = readings_from_record(&cuff(), &rec, &src(), &CaptureClock::default(), t0())
            .unwrap_err();
        assert_eq!(rej, Rejection::NoValidDeviceTime(Status::DeviceClockNotSet));
        assert!(
            rej.keeps_record(),
            "held as a dead letter, not only counted"
        );
    }

    /// A clock the device itself calls wrong is not used either, even when it gave a time.
    #[test]
    fn every_clock_unreliable_status_holds_the_record_even_with_a_device_time() {
        for status in [
            Status::DeviceClockNotSet,
            Status::DeviceTimeInvalid,
            Status::TimeFault,
        ] {
            let mut rec = bp_record();
            assert!(rec.device_time.is_some());
            rec.add_flag(status);
            assert_eq!(
                readings_from_record(&cuff(), &rec, &src(), &CaptureClock::default(), t0()),
                Err(Rejection::NoValidDeviceTime(status)),
                "{status}"
            );
        }
    }

    #[test]
    fn a_from_memory_record_without_a_device_time_is_held() {
        for status in [Status::FromMemory, Status::DataFromMeasurementStorage] {
            let mut rec = bp_record();
            rec.device_time = None;
            rec.add_flag(status);
            let rej = readings_from_record(&cuff(), &rec, &src(), &CaptureClock::default(), t0())
                .unwrap_err();
            assert_eq!(rej, Rejection::NoValidDeviceTime(status), "{status}");
            assert!(rej.keeps_record());
        }
    }

    fn oximeter_stream_record(spo2: i64) -> Record {
        Record {
            readings: vec![
                device_drivers::Reading::new(ReadingType::Spo2, Decimal::from_int(spo2), "%"),
                device_drivers::Reading::new(ReadingType::PulseRate, Decimal::from_int(70), "/min"),
            ],
            ..Record::default()
        }
    }

    /// The spot-check window median of a streaming oximeter, made by the real reducer.
    fn spot_check_median() -> (Record, DateTime<Utc>) {
        let mode = crate::pipeline::reduce::Mode::SpotCheck {
            window: std::time::Duration::from_secs(30),
            repeat: None,
        };
        let start = t0();
        let mut reducer = crate::pipeline::reduce::Reducer::new(mode, start);
        let mut out = Vec::new();
        for (i, v) in [97, 95, 96, 98, 96, 97].into_iter().enumerate() {
            let at = start + chrono::Duration::seconds(i64::try_from(i).unwrap() * 5);
            out.extend(reducer.push(oximeter_stream_record(v), at).out);
        }
        out.extend(reducer.tick(start + chrono::Duration::seconds(31)).out);
        assert_eq!(out.len(), 1, "one window closed");
        let r = out.pop().unwrap();
        (r.record, r.at)
    }

    fn serial_src() -> Source {
        Source::Serial {
            port: "/dev/ttyUSB0".into(),
        }
    }

    /// Issue #8: a median over a window is a statistic, never a spot reading at the window's
    /// end: it covers the window (`effectivePeriod`, §5.1 `..<duration>` identifier) and the
    /// Observation states the statistic in `method`.
    #[test]
    fn a_serial_window_median_is_uploaded_over_its_window_and_says_it_is_a_median() {
        let mut oximeter = cuff();
        oximeter.class = DeviceClass::PulseOximeter;
        oximeter.clock_is_provenance_only = true;
        let (rec, end) = spot_check_median();
        assert_eq!(rec.context.statistic.as_deref(), Some("median"));
        let rs = readings_from_record(
            &oximeter,
            &rec,
            &serial_src(),
            &CaptureClock::default(),
            end,
        )
        .unwrap();
        assert_eq!(rs.len(), 2);
        for r in &rs {
            assert_eq!(r.effective.to_rfc3339(), "2026-11-23T10:00:00+00:00");
            assert_eq!(
                r.timing,
                Timing::Period {
                    end: Utc
                        .with_ymd_and_hms(2026, 11, 23, 10, 0, 30)
                        .unwrap()
                        .fixed_offset()
                }
            );
            assert!(
                r.observation_identifier.ends_with("-G848743200..30"),
                "{}",
                r.observation_identifier
            );
            let obs = crate::uplink::fhir::observation(r, "Device/d", "Device/g").unwrap();
            assert!(obs.get("effectiveDateTime").is_none(), "{obs:#}");
            assert_eq!(obs["effectivePeriod"]["start"], "2026-11-23T10:00:00Z");
            assert_eq!(obs["effectivePeriod"]["end"], "2026-11-23T10:00:30Z");
            let method = obs["method"]["text"].as_str().unwrap();
            assert!(method.starts_with("median of the values"), "{method}");
        }
        let spo2 = rs
            .iter()
            .find(|r| r.kind == ReadingKind::OxygenSaturation)
            .unwrap();
        // The lower median of 95 96 96 97 97 98: a value the device reported.
        assert_eq!(spo2.components[0].value, Decimal::from_int(96));
    }

    /// Only the reducer's window median passes as a statistic: the same record from another
    /// source, or a statistic the reducer did not make, is held as a dead letter `statistic`.
    #[test]
    fn any_other_statistic_is_held_never_uploaded() {
        let mut oximeter = cuff();
        oximeter.class = DeviceClass::PulseOximeter;
        let (rec, end) = spot_check_median();
        let clock = CaptureClock::default();
        let held = Err(Rejection::Statistic("median".into()));
        assert_eq!(
            readings_from_record(&oximeter, &rec, &src(), &clock, end),
            held
        );
        let mut no_window = rec.clone();
        no_window.fields.remove("window_seconds");
        assert_eq!(
            readings_from_record(&oximeter, &no_window, &serial_src(), &clock, end),
            held
        );
        let mut average = rec.clone();
        average.context.statistic = Some("average".into());
        assert_eq!(
            readings_from_record(&oximeter, &average, &serial_src(), &clock, end),
            Err(Rejection::Statistic("average".into()))
        );
        assert!(Rejection::Statistic("average".into()).keeps_record());
        // A plain live record from the same stream stays a spot reading at its reception time.
        let rs = readings_from_record(
            &oximeter,
            &oximeter_stream_record(97),
            &serial_src(),
            &clock,
            end,
        )
        .unwrap();
        assert_eq!(rs[0].timing, Timing::Instant);
        let obs = crate::uplink::fhir::observation(&rs[0], "Device/d", "Device/g").unwrap();
        assert!(obs.get("method").is_none());
    }

    /// Issue #8: an Open mHealth `descriptive_statistic` is uploaded only where the hub's
    /// `upload_statistics` names it and it covers an interval: then over `effectivePeriod`, its
    /// `method` coded with the R4 StatisticsCode. Otherwise (not configured, or an instant) it is
    /// held as a dead letter `statistic`. The datum is the official body-weight 2.0
    /// `with-descriptive-statistic` test body.
    #[test]
    fn a_configured_omh_statistic_over_an_interval_is_uploaded_over_its_period_and_no_other() {
        let point = |time_frame: &str, stat: &str| {
            let v = serde_json::json!({
                "header": {
                    "uuid": "9f1c0000-0000-4000-8000-000000000001",
                    "schema_id": {"namespace": "omh", "name": "body-weight", "version": "2.0"},
                    "source_creation_date_time": "2020-03-05T10:41:00-08:00",
                    "modality": "sensed"
                },
                "body": {
                    "body_weight": {"value": 49.5, "unit": "kg"},
                    "effective_time_frame": serde_json::from_str::<serde_json::Value>(time_frame).unwrap(),
                    "descriptive_statistic": stat
                }
            });
            let dp = device_drivers::omh::parse_value(&v).unwrap();
            let clock = CaptureClock {
                utc_offset_minutes: dp.utc_offset_minutes,
                fraction: dp.time_fraction,
                ..CaptureClock::default()
            };
            (dp.record, clock)
        };
        let interval = r#"{"time_interval": {"start_date_time": "2020-02-05T09:45:00-08:00", "end_date_time": "2020-03-05T10:40:00-08:00"}}"#;
        let mut hub = DeviceContext {
            class: DeviceClass::Generic,
            identifier: DeviceIdentifier::Local("gw/hub".into()),
            ..cuff()
        };
        let src = mqtt_src("9f1c0000-0000-4000-8000-000000000001");
        let (rec, clock) = point(interval, "minimum");
        // Default: held.
        assert_eq!(
            readings_from_record(&hub, &rec, &src, &clock, t0()),
            Err(Rejection::Statistic("minimum".into()))
        );
        hub.upload_statistics = vec!["minimum".into()];
        let rs = readings_from_record(&hub, &rec, &src, &clock, t0()).unwrap();
        assert_eq!(rs.len(), 1);
        assert_eq!(rs[0].kind, ReadingKind::BodyWeight);
        assert_eq!(rs[0].effective.to_rfc3339(), "2020-02-05T09:45:00-08:00");
        match rs[0].timing {
            Timing::Period { end } => assert_eq!(end.to_rfc3339(), "2020-03-05T10:40:00-08:00"),
            other => panic!("{other:?}"),
        }
        assert!(
            rs[0].observation_identifier.contains(".."),
            "{}",
            rs[0].observation_identifier
        );
        let obs = crate::uplink::fhir::observation(&rs[0], "Device/d", "Device/g").unwrap();
        assert_eq!(obs["effectivePeriod"]["end"], "2020-03-05T10:40:00-08:00");
        assert!(obs.get("effectiveDateTime").is_none());
        assert_eq!(
            obs["method"]["coding"][0]["system"],
            crate::uplink::fhir::OBSERVATION_STATISTICS
        );
        assert_eq!(obs["method"]["coding"][0]["code"], "minimum");
        assert_eq!(obs["valueQuantity"]["value"].to_string(), "49.5");
        // Another statistic of the same hub: held.
        let (avg, clock_avg) = point(interval, "average");
        assert_eq!(
            readings_from_record(&hub, &avg, &src, &clock_avg, t0()),
            Err(Rejection::Statistic("average".into()))
        );
        // The configured statistic at an instant: never an instant, held.
        let (instant, clock_i) = point(r#"{"date_time": "2020-03-05T10:40:00-08:00"}"#, "minimum");
        assert_eq!(
            readings_from_record(&hub, &instant, &src, &clock_i, t0()),
            Err(Rejection::Statistic("minimum".into()))
        );
        // The same record from a serial port or a BLE device: held (hubs only).
        assert_eq!(
            readings_from_record(&hub, &rec, &serial_src(), &clock, t0()),
            Err(Rejection::Statistic("minimum".into()))
        );
    }

    /// Serial devices' clocks are provenance only (the reception time dates their live
    /// readings): a stored record from one would be dated with the reception time, so it is held.
    #[test]
    fn a_from_memory_record_whose_device_clock_is_not_used_is_held() {
        let mut oximeter = cuff();
        oximeter.clock_is_provenance_only = true;
        let mut rec = bp_record();
        rec.add_flag(Status::FromMemory);
        assert_eq!(
            readings_from_record(&oximeter, &rec, &src(), &CaptureClock::default(), t0()),
            Err(Rejection::NoValidDeviceTime(Status::FromMemory))
        );
        // The same record live (no from-memory status) takes the reception time.
        rec.flags.clear();
        let rs =
            readings_from_record(&oximeter, &rec, &src(), &CaptureClock::default(), t0()).unwrap();
        assert_eq!(rs[0].time_quality, TimeQuality::GatewayReceiveTime);
    }

    #[test]
    fn a_from_memory_record_with_its_device_time_passes_dated_by_the_device() {
        let mut rec = bp_record();
        rec.add_flag(Status::DataFromMeasurementStorage);
        let rs =
            readings_from_record(&cuff(), &rec, &src(), &CaptureClock::default(), t0()).unwrap();
        assert_eq!(rs[0].time_quality, TimeQuality::DeviceTrusted);
        assert_eq!(rs[0].effective.to_rfc3339(), "2025-03-14T08:15:30+01:00");
        assert_eq!(rs[0].flags, vec![Status::DataFromMeasurementStorage]);
    }

    /// Invalid data is dropped (counted) before the time is looked at: test data from memory
    /// without a time is not kept as a dead letter.
    #[test]
    fn an_invalid_status_wins_over_a_missing_device_time() {
        let mut rec = bp_record();
        rec.device_time = None;
        rec.add_flag(Status::FromMemory);
        rec.add_flag(Status::DataForTesting);
        let rej = readings_from_record(&cuff(), &rec, &src(), &CaptureClock::default(), t0())
            .unwrap_err();
        assert_eq!(rej, Rejection::Unreliable(Status::DataForTesting));
        assert!(!rej.keeps_record());
    }

    #[test]
    fn only_unattributed_and_undated_records_are_kept() {
        assert!(Rejection::Unattributed(Some(3)).keeps_record());
        assert!(Rejection::NoValidDeviceTime(Status::TimeFault).keeps_record());
        assert!(!Rejection::Unreliable(Status::Artifact).keeps_record());
        assert!(!Rejection::NothingToUpload.keeps_record());
    }

    #[test]
    fn a_lone_systolic_is_not_a_panel() {
        let mut rec = bp_record();
        rec.readings
            .retain(|r| r.kind == ReadingType::SystolicPressure);
        assert_eq!(
            readings_from_record(&cuff(), &rec, &src(), &CaptureClock::default(), t0()),
            Err(Rejection::NothingToUpload)
        );
    }
}
