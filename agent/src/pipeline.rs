//! The pipeline: driver records in, canonical readings durable in the outbox out.
//!
//! ```text
//! sources ──Ingest──▶ [bounded channel] ──▶ pipeline task ──insert_many──▶ store (fsync)
//!    ▲                                           │
//!    └────────── done (durable / rejected) ◀─────┘   then: notify uplink, emit events
//! ```
//!
//! The pure part ([`readings_from_record`]) turns one driver [`Record`] into zero or more
//! [`Reading`]s: it attributes the record to a patient (single patient, or by the device's user
//! index), picks the observation kind per value (a BP cuff's pulse is not an oximeter's), fixes
//! the effective time and its quality, and computes the two identities that never change
//! afterwards: the FHIR observation identifier (fhir-mapping.md §5.1) and the content id.
//!
//! The task part drains up to [`MAX_BATCH`] requests at a time and makes them durable with one
//! flush + fsync, then answers each request (the MQTT source acks the broker only then).
//! A record the pipeline cannot attribute (an unmapped user index, user 255) is never dropped:
//! it goes to the store's dead letters with its reason, for the technician.

use std::sync::Arc;

use chrono::{DateTime, FixedOffset, TimeZone, Utc};
use device_drivers::{ReadingType, Record};
use tokio::sync::{broadcast, mpsc, oneshot, Notify};
use tokio_util::sync::CancellationToken;

use crate::config::{Attribution, DeviceConfig, DeviceKind, SimulatorConfig, SimulatorKind};
use crate::events::AgentEvent;
use crate::reading::{
    DeviceClass, DeviceIdentifier, DeviceInfo, Reading, ReadingKind, Source, TimeQuality,
};
use crate::store::{Insert, Outbox};
use crate::telemetry;
use crate::uplink::fhir;

/// Requests drained per store transaction.
pub const MAX_BATCH: usize = 64;

/// What a source knows about a device, resolved once from config.
#[derive(Debug, Clone)]
pub struct DeviceContext {
    pub name: String,
    pub class: DeviceClass,
    pub identifier: DeviceIdentifier,
    pub attribution: Attribution,
    /// Zone of the device's wall clock when the protocol does not carry one.
    pub utc_offset: FixedOffset,
    /// Serial protocols: the device clock is provenance only, the gateway time is used.
    pub clock_is_provenance_only: bool,
}

impl DeviceContext {
    pub fn from_device(gateway_id: &str, default_offset: FixedOffset, d: &DeviceConfig) -> Self {
        let (class, identifier, provenance_only) = match &d.kind {
            DeviceKind::Mqtt { .. } => (
                DeviceClass::Generic,
                DeviceIdentifier::Local(format!("{gateway_id}/{}", d.name)),
                false,
            ),
            DeviceKind::Ble { address, profile } => (
                match profile.as_str() {
                    "blood-pressure" => DeviceClass::BloodPressureCuff,
                    "weight-scale" | "body-composition" => DeviceClass::Scale,
                    "thermometer" => DeviceClass::Thermometer,
                    "pulse-oximeter" => DeviceClass::PulseOximeter,
                    "glucose" => DeviceClass::GlucoseMeter,
                    _ => DeviceClass::HeartRateSensor,
                },
                DeviceIdentifier::Bluetooth(address.replace(':', "").to_ascii_uppercase()),
                false,
            ),
            DeviceKind::Serial { protocol, .. } => (
                if protocol.starts_with("tanita") {
                    DeviceClass::Scale
                } else if protocol.starts_with("nonin") || protocol.starts_with("masimo") {
                    DeviceClass::PulseOximeter
                } else {
                    DeviceClass::Generic
                },
                DeviceIdentifier::Local(format!("{gateway_id}/{}", d.name)),
                true,
            ),
        };
        Self {
            name: d.name.clone(),
            class,
            identifier,
            attribution: d.attribution.clone(),
            utc_offset: d.utc_offset.unwrap_or(default_offset),
            clock_is_provenance_only: provenance_only,
        }
    }

    pub fn from_simulator(gateway_id: &str, s: &SimulatorConfig) -> Self {
        Self {
            name: s.name.clone(),
            class: match s.kind {
                SimulatorKind::BloodPressure => DeviceClass::BloodPressureCuff,
                SimulatorKind::Scale => DeviceClass::Scale,
            },
            identifier: DeviceIdentifier::Local(format!("{gateway_id}/{}", s.name)),
            attribution: Attribution::Single(s.patient.clone()),
            utc_offset: chrono::Offset::fix(&Utc),
            clock_is_provenance_only: false,
        }
    }

    fn info(&self, record: &Record) -> DeviceInfo {
        let (manufacturer, model) = match self.class {
            _ if record.device_model.is_some() => (None, record.device_model.clone()),
            _ => (None, None),
        };
        DeviceInfo {
            name: self.name.clone(),
            class: self.class,
            identifier: self.identifier.clone(),
            manufacturer,
            model,
            serial: record.device_id.clone(),
            firmware: None,
        }
    }
}

/// Why a record produced no reading. Carries no PHI.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("record carries user index {0:?}, which is not mapped to a patient")]
    Unattributed(Option<u8>),
    #[error("record has no value that maps to a FHIR observation")]
    NothingToUpload,
    #[error("record is flagged {0}: values are not trustworthy")]
    Unreliable(String),
}

/// Flags that mean "do not turn this into an observation" (serial-protocols.md §1.2 policy).
const UNRELIABLE_FLAGS: &[&str] = &[
    "sensor_alarm",
    "sensor_disconnect",
    "sensor_off",
    "no_sensor",
    "no_measurement",
    "test_data",
    "control_solution",
];

/// Turns one driver record into canonical readings. Pure.
pub fn readings_from_record(
    device: &DeviceContext,
    record: &Record,
    source: &Source,
    utc_offset_minutes: Option<i16>,
    received_at: DateTime<Utc>,
) -> Result<Vec<Reading>, Rejection> {
    if let Some(f) = record
        .flags
        .iter()
        .find(|f| UNRELIABLE_FLAGS.contains(&f.as_str()))
    {
        return Err(Rejection::Unreliable(f.clone()));
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
    let (effective, time_quality) = match device_effective {
        Some(e) if !device.clock_is_provenance_only => (e, TimeQuality::DeviceTrusted),
        _ => (
            received_at.with_timezone(&chrono::Offset::fix(&Utc)),
            TimeQuality::GatewayReceiveTime,
        ),
    };

    // Group the values into observations.
    let mut groups: Vec<(ReadingKind, Vec<device_drivers::Reading>)> = Vec::new();
    let mut push = |kind: ReadingKind, r: &device_drivers::Reading| match groups
        .iter_mut()
        .find(|(k, _)| *k == kind)
    {
        Some((_, v)) => v.push(r.clone()),
        None => groups.push((kind, vec![r.clone()])),
    };
    for r in &record.readings {
        let kind = match r.kind {
            ReadingType::SystolicPressure
            | ReadingType::DiastolicPressure
            | ReadingType::MeanArterialPressure => ReadingKind::BloodPressure,
            ReadingType::PulseRate => match device.class {
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
            // No FHIR mapping in fhir-mapping.md yet (PI, SpCO, SpMet, SpHb, PVI, body fat):
            // counted by the caller, kept out of the outbox.
            _ => continue,
        };
        push(kind, r);
    }
    // A BP panel needs both systolic and diastolic.
    groups.retain(|(k, v)| {
        *k != ReadingKind::BloodPressure
            || (v.iter().any(|c| c.kind == ReadingType::SystolicPressure)
                && v.iter().any(|c| c.kind == ReadingType::DiastolicPressure))
    });
    if groups.is_empty() {
        return Err(Rejection::NothingToUpload);
    }

    let info = device.info(record);
    Ok(groups
        .into_iter()
        .map(|(kind, components)| {
            let observation_identifier = fhir::observation_identifier(
                &device.identifier,
                &patient,
                fhir::mdc_code(kind),
                record.device_time,
                received_at,
            );
            let id = content_id(&observation_identifier, &components, &record.flags);
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
            }
        })
        .collect())
}

/// The content id: SHA-256 over the observation identifier, the values and the flags.
/// Arrival time is deliberately not part of it, so a redelivered reading has the same id.
pub fn content_id(
    observation_identifier: &str,
    components: &[device_drivers::Reading],
    flags: &[String],
) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(b"vitalgate-reading-v1\0");
    ctx.update(observation_identifier.as_bytes());
    for c in components {
        ctx.update(b"\0");
        ctx.update(c.kind.as_str().as_bytes());
        ctx.update(b"=");
        ctx.update(c.value.to_string().as_bytes());
        ctx.update(b" ");
        ctx.update(c.unit.as_bytes());
    }
    for f in flags {
        ctx.update(b"\0#");
        ctx.update(f.as_bytes());
    }
    hex::encode(ctx.finish().as_ref())
}

/// The 32-byte store key of a reading id.
pub fn id_bytes(id: &str) -> [u8; 32] {
    let mut out = [0u8; 32];
    if let Ok(v) = hex::decode(id) {
        if v.len() == 32 {
            out.copy_from_slice(&v);
            return out;
        }
    }
    // Not a hex SHA-256 (never produced by this crate): hash it so the key stays 32 bytes.
    out.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, id.as_bytes()).as_ref());
    out
}

// ---------------------------------------------------------------------------------------------
// The task.

/// What a source tells the pipeline.
pub enum Ingest {
    /// A decoded record from a device.
    Record {
        device: Arc<DeviceContext>,
        record: Record,
        source: Source,
        utc_offset_minutes: Option<i16>,
        received_at: DateTime<Utc>,
        done: Option<oneshot::Sender<Outcome>>,
    },
    /// A payload that could not be decoded: kept as a dead letter, then acknowledged upstream.
    Undecodable {
        source_label: String,
        payload: Vec<u8>,
        reason: String,
        done: Option<oneshot::Sender<Outcome>>,
    },
}

/// The pipeline's answer to a source. `Durable` and `Rejected` both mean "safe to ack".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Every reading of the record is in the outbox (new or already there).
    Durable { stored: usize, duplicates: usize },
    /// The record produced no reading; it is kept as a dead letter when that loses data.
    Rejected(String),
    /// The store failed: do NOT acknowledge upstream (the source will redeliver).
    StoreFailed,
}

/// A source's reply channel and, per request, the indexes of its readings in the batch (or why
/// it produced none).
type Answer = (Option<oneshot::Sender<Outcome>>, Result<Vec<usize>, String>);

/// The pipeline task. Ends when every sender is dropped or `shutdown` fires.
pub async fn run(
    mut rx: mpsc::Receiver<Ingest>,
    store: Arc<Outbox>,
    uplink_wake: Arc<Notify>,
    events: Option<broadcast::Sender<AgentEvent>>,
    shutdown: CancellationToken,
) {
    let emit = |e: AgentEvent| {
        if let Some(tx) = &events {
            let _ = tx.send(e);
        }
    };
    loop {
        let first = tokio::select! {
            m = rx.recv() => match m { Some(m) => m, None => break },
            _ = shutdown.cancelled() => break,
        };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(m) => batch.push(m),
                Err(_) => break,
            }
        }

        // Pure step: build readings / dead letters.
        let mut items: Vec<([u8; 32], Reading)> = Vec::new();
        let mut dead: Vec<(String, Vec<u8>, String)> = Vec::new();
        let mut answers: Vec<Answer> = Vec::new();
        for msg in batch {
            match msg {
                Ingest::Record {
                    device,
                    record,
                    source,
                    utc_offset_minutes,
                    received_at,
                    done,
                } => match readings_from_record(
                    &device,
                    &record,
                    &source,
                    utc_offset_minutes,
                    received_at,
                ) {
                    Ok(readings) => {
                        let start = items.len();
                        for r in readings {
                            items.push((id_bytes(&r.id), r));
                        }
                        answers.push((done, Ok((start..items.len()).collect())));
                    }
                    Err(rej) => {
                        telemetry::RecordRejected {
                            device: &device.name,
                            reason: &rej,
                        }
                        .emit();
                        emit(AgentEvent::Rejected {
                            device: device.name.clone(),
                            reason: rej.to_string(),
                        });
                        if matches!(rej, Rejection::Unattributed(_)) {
                            // Keep the data for the technician: it is a real measurement.
                            let payload = postcard::to_stdvec(&record).unwrap_or_default();
                            dead.push((
                                format!("device:{}", device.name),
                                payload,
                                rej.to_string(),
                            ));
                        }
                        answers.push((done, Err(rej.to_string())));
                    }
                },
                Ingest::Undecodable {
                    source_label,
                    payload,
                    reason,
                    done,
                } => {
                    dead.push((source_label, payload, reason.clone()));
                    answers.push((done, Err(reason)));
                }
            }
        }

        // I/O step: one durable write for the whole batch.
        let store2 = Arc::clone(&store);
        let to_store: Vec<([u8; 32], Reading)> = items.clone();
        let result = tokio::task::spawn_blocking(
            move || -> Result<Vec<Insert>, crate::store::StoreError> {
                for (label, payload, reason) in &dead {
                    store2.put_dead_letter_raw(label, payload, reason)?;
                }
                store2.insert_many(to_store.iter().map(|(id, r)| (*id, r)))
            },
        )
        .await;
        let inserts = match result {
            Ok(Ok(v)) => Some(v),
            Ok(Err(e)) => {
                telemetry::StoreWriteFailed { error: &e }.emit();
                None
            }
            Err(e) => {
                tracing::error!(error = %e, "store task failed");
                None
            }
        };

        let mut any_new = false;
        for (done, res) in answers {
            let outcome = match (&inserts, res) {
                (None, _) => Outcome::StoreFailed,
                (Some(_), Err(reason)) => Outcome::Rejected(reason),
                (Some(ins), Ok(idx)) => {
                    let mut stored = 0;
                    let mut duplicates = 0;
                    for i in idx {
                        let (Some(kind), Some((_, reading))) = (ins.get(i), items.get(i)) else {
                            continue;
                        };
                        match kind {
                            Insert::Stored => {
                                stored += 1;
                                any_new = true;
                                telemetry::ReadingStored { reading }.emit();
                                emit(AgentEvent::Stored(Box::new(reading.clone())));
                            }
                            Insert::Duplicate => {
                                duplicates += 1;
                                telemetry::ReadingDuplicate { reading }.emit();
                                emit(AgentEvent::Duplicate {
                                    reading_id: reading.id.clone(),
                                });
                            }
                        }
                    }
                    Outcome::Durable { stored, duplicates }
                }
            };
            if let Some(done) = done {
                let _ = done.send(outcome);
            }
        }
        if any_new {
            uplink_wake.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reading::PatientRef;
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

    fn src() -> Source {
        Source::Ble {
            address: "00:09:1F:AA:BB:CC".into(),
        }
    }

    #[test]
    fn a_cuff_record_becomes_a_bp_panel_and_a_cuff_pulse() {
        let now = Utc::now();
        let rs = readings_from_record(&cuff(), &bp_record(), &src(), None, now).unwrap();
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
    fn the_same_reading_delivered_twice_has_the_same_id() {
        let a = readings_from_record(&cuff(), &bp_record(), &src(), None, Utc::now()).unwrap();
        let later = Utc::now() + chrono::Duration::seconds(90);
        let b = readings_from_record(&cuff(), &bp_record(), &src(), None, later).unwrap();
        assert_eq!(a[0].id, b[0].id);
        assert_eq!(a[0].observation_identifier, b[0].observation_identifier);
    }

    #[test]
    fn a_different_value_gives_a_different_id() {
        let mut r2 = bp_record();
        r2.readings[0].value = Decimal::from_int(129);
        let a = readings_from_record(&cuff(), &bp_record(), &src(), None, Utc::now()).unwrap();
        let b = readings_from_record(&cuff(), &r2, &src(), None, Utc::now()).unwrap();
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
        let rs = readings_from_record(&dev, &rec, &src(), None, Utc::now()).unwrap();
        assert_eq!(rs[0].patient, "Patient/one".parse().unwrap());
        rec.user_index = Some(2);
        assert_eq!(
            readings_from_record(&dev, &rec, &src(), None, Utc::now()),
            Err(Rejection::Unattributed(Some(2)))
        );
        rec.user_index = None;
        assert!(readings_from_record(&dev, &rec, &src(), None, Utc::now()).is_err());
    }

    #[test]
    fn no_device_time_uses_the_gateway_receive_time() {
        let mut rec = bp_record();
        rec.device_time = None;
        let now = Utc.with_ymd_and_hms(2026, 11, 23, 10, 0, 0).unwrap();
        let rs = readings_from_record(&cuff(), &rec, &src(), None, now).unwrap();
        assert_eq!(rs[0].time_quality, TimeQuality::GatewayReceiveTime);
        assert_eq!(rs[0].effective.to_rfc3339(), "2026-11-23T10:00:00+00:00");
        assert!(
            rs[0].observation_identifier.contains("-G"),
            "{}",
            rs[0].observation_identifier
        );
    }

    #[test]
    fn sensor_alarm_records_are_not_uploaded() {
        let mut rec = bp_record();
        rec.add_flag("sensor_alarm");
        assert!(matches!(
            readings_from_record(&cuff(), &rec, &src(), None, Utc::now()),
            Err(Rejection::Unreliable(_))
        ));
    }

    #[test]
    fn a_lone_systolic_is_not_a_panel() {
        let mut rec = bp_record();
        rec.readings
            .retain(|r| r.kind == ReadingType::SystolicPressure);
        assert_eq!(
            readings_from_record(&cuff(), &rec, &src(), None, Utc::now()),
            Err(Rejection::NothingToUpload)
        );
    }
}
