//! The canonical reading: the one type every layer of the agent shares.
//!
//! A [`Reading`] is one clinical observation-to-be (one FHIR `Observation`): a blood-pressure
//! panel (systolic, diastolic, mean), a body weight, a pulse rate... It carries everything the
//! uplink needs without looking anything up again: the values in UCUM units, the device's identity,
//! the patient it is attributed to, the device's raw timestamp and the gateway receive time, status
//! flags, where it came from, and two identities computed once at capture and never recomputed:
//!
//! - [`Reading::id`]: a SHA-256 over the reading's content (not over its arrival), so the same
//!   reading delivered twice (MQTT redelivery, a cuff replaying stored records) has the same id
//!   and the store keeps it once;
//! - [`Reading::observation_identifier`]: the FHIR identifier value of fhir-mapping.md §5.1, used
//!   for the server-side conditional create.
//!
//! Readings are PHI. `Debug` is implemented by hand and prints no patient or value.

use std::fmt;

use chrono::{DateTime, FixedOffset, Utc};
use device_drivers::{Decimal, DeviceTime, ReadingType, Status};
use serde::{Deserialize, Serialize};

use crate::identity::ReadingId;

/// What one Observation measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReadingKind {
    /// Panel with systolic, diastolic and (optional) mean components, in mm[Hg].
    BloodPressure,
    /// Pulse rate measured by a BP cuff.
    PulseRateCuff,
    /// Pulse rate measured by a pulse oximeter.
    PulseRateOximeter,
    /// Heart rate from a heart-rate strap or a hub that does not say how it was measured.
    HeartRate,
    OxygenSaturation,
    BodyWeight,
    BodyHeight,
    Bmi,
    BodyTemperature,
    BloodGlucose,
    RespiratoryRate,
    /// Pulse oximeter perfusion index (PLX pulse amplitude index, Masimo PI).
    PerfusionIndex,
    BodyFatPercentage,
}

impl ReadingKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BloodPressure => "blood_pressure",
            Self::PulseRateCuff => "pulse_rate_cuff",
            Self::PulseRateOximeter => "pulse_rate_oximeter",
            Self::HeartRate => "heart_rate",
            Self::OxygenSaturation => "oxygen_saturation",
            Self::BodyWeight => "body_weight",
            Self::BodyHeight => "body_height",
            Self::Bmi => "bmi",
            Self::BodyTemperature => "body_temperature",
            Self::BloodGlucose => "blood_glucose",
            Self::RespiratoryRate => "respiratory_rate",
            Self::PerfusionIndex => "perfusion_index",
            Self::BodyFatPercentage => "body_fat_percentage",
        }
    }
}

/// The class of a device (drives the FHIR Device `specialization` and some MDC codes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceClass {
    BloodPressureCuff,
    Scale,
    Thermometer,
    PulseOximeter,
    GlucoseMeter,
    HeartRateSensor,
    /// A hub or multi-parameter source (MQTT ingest): the measuring device is not known.
    Generic,
}

/// How a device is identified (fhir-mapping.md §3, §5.1).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceIdentifier {
    /// IEEE EUI-64 system id, 16 upper-case hex digits without dashes.
    Eui64(String),
    /// Bluetooth identity address, 12 upper-case hex digits without separators.
    Bluetooth(String),
    /// A gateway-local identity: `<gateway id>/<configured device name>` (MQTT hubs, serial ports
    /// without a serial number, simulators).
    Local(String),
}

impl DeviceIdentifier {
    /// The `<device>` part of the observation identifier (§5.1).
    pub fn id_component(&self) -> &str {
        match self {
            Self::Eui64(v) | Self::Bluetooth(v) | Self::Local(v) => v,
        }
    }
}

/// The device that produced a reading.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct DeviceInfo {
    /// The configured name (`[[devices]] name`): not PHI, safe to log.
    pub name: String,
    pub class: DeviceClass,
    pub identifier: DeviceIdentifier,
    pub manufacturer: Option<String>,
    pub model: Option<String>,
    pub serial: Option<String>,
    pub firmware: Option<String>,
    /// IEEE EUI-64 system id as the device reported it (16 upper-case hex digits), when it did
    /// (GATT System ID 0x2A23). Added for the PHD Device; the BLE transport fills it.
    pub system_id: Option<String>,
    /// Bluetooth identity address, 12 upper-case hex digits.
    pub bluetooth_address: Option<String>,
    pub hardware: Option<String>,
    pub software: Option<String>,
}

/// The patient a reading is attributed to.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PatientRef {
    /// A provisioned FHIR logical id: `Patient/<id>`.
    Literal { id: String },
    /// A business identifier `system|value`, resolved by the server (`Patient?identifier=...`).
    Identifier { system: String, value: String },
}

impl fmt::Debug for PatientRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PatientRef(<redacted>)")
    }
}

/// Why a patient reference string is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatientRefError {
    #[error("expected \"Patient/<id>\" or \"<system>|<value>\"")]
    Shape,
    #[error("the logical id after \"Patient/\" must be 1-64 characters of A-Z a-z 0-9 - .")]
    BadId,
    #[error(
        "the identifier system must be an absolute URI (e.g. \"urn:oid:...\" or \"https://...\")"
    )]
    BadSystem,
    #[error("the identifier value must not be empty or contain '|' or whitespace at its ends")]
    BadValue,
}

impl std::str::FromStr for PatientRef {
    type Err = PatientRefError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(id) = s.strip_prefix("Patient/") {
            let ok = !id.is_empty()
                && id.len() <= 64
                && id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
            return if ok {
                Ok(Self::Literal { id: id.to_string() })
            } else {
                Err(PatientRefError::BadId)
            };
        }
        let (system, value) = s.split_once('|').ok_or(PatientRefError::Shape)?;
        let scheme_ok = system.split_once(':').is_some_and(|(scheme, rest)| {
            !scheme.is_empty()
                && scheme
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
                && !rest.is_empty()
        });
        if !scheme_ok || system.chars().any(char::is_whitespace) {
            return Err(PatientRefError::BadSystem);
        }
        if value.is_empty() || value.contains('|') || value.trim() != value {
            return Err(PatientRefError::BadValue);
        }
        Ok(Self::Identifier {
            system: system.to_string(),
            value: value.to_string(),
        })
    }
}

impl PatientRef {
    /// The `<patient>` part of the observation identifier (§5.1): `<value>-<system>` or the id.
    pub fn id_component(&self) -> String {
        match self {
            Self::Literal { id } => id.clone(),
            Self::Identifier { system, value } => format!("{value}-{system}"),
        }
    }
}

/// The shape of the effective time (FHIR `effective[x]`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Timing {
    /// A point in time: `effectiveDateTime` = [`Reading::effective`].
    Instant,
    /// A period from [`Reading::effective`] to `end` (the source gave an interval or a duration):
    /// `effectivePeriod`.
    Period { end: DateTime<FixedOffset> },
    /// Only the date is known (Open mHealth `date` + `part_of_day`): `effectiveDateTime` with
    /// date precision.
    Date,
}

/// How trustworthy the effective time is (gatt clock helpers decide this for BLE devices).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimeQuality {
    /// The device's clock was used as is.
    DeviceTrusted,
    /// The device's clock was off and the gateway corrected it, in a reading stored before store
    /// format 4 (which did not keep the clock read): uploaded corrected, without a Coincident
    /// Timestamp Observation. This build writes [`TimeQuality::Corrected`] instead.
    CorrectedForSkew,
    /// The device sent no usable time; the gateway receive time is used (live readings only).
    GatewayReceiveTime,
    /// The device's clock could not be read at connect (no Current Time service): its timestamp
    /// is used as sent.
    DeviceUnverified,
    /// The gateway's own clock was not synchronised (no NTP since boot; a Pi has no RTC): no
    /// correction was made and the effective time may be wrong. Never silently misdated.
    GatewayClockUnsynchronized,
    /// The device's clock was off by more than 2 s and the gateway corrected it
    /// (fhir-mapping.md §4): `effective` = raw + (gateway - device) at the clock read, which
    /// travels with the reading so the uplink can add the PHD Coincident Timestamp Observation.
    ///
    /// Store format 4. Appended as the last variant on purpose: postcard encodes a variant by
    /// its index, so every record of a format 3 store still decodes unchanged.
    Corrected(CoincidentTimestamp),
}

impl TimeQuality {
    /// The clock read a corrected reading was corrected against, if the reading carries it.
    pub fn coincident_timestamp(&self) -> Option<&CoincidentTimestamp> {
        match self {
            Self::Corrected(cts) => Some(cts),
            _ => None,
        }
    }
}

/// The PHD Coincident Timestamp: the device's clock and the gateway's at one instant (the clock
/// read at connect, BLE Current Time). One per connection; every reading corrected against it
/// carries a copy. Not PHI (a clock reading of a device, no patient, no value).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct CoincidentTimestamp {
    /// The gateway's (NTP-synchronised) time when the device's clock was read.
    pub gateway_time: DateTime<Utc>,
    /// What the device's clock said at that instant, with the device's UTC offset.
    pub device_time: DateTime<FixedOffset>,
}

/// Where a reading entered the gateway.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// MQTT ingest; `source_id` is the data point's `header.uuid` / `header.id`.
    Mqtt {
        topic: String,
        source_id: String,
    },
    Simulator {
        name: String,
    },
    Ble {
        address: String,
    },
    Serial {
        port: String,
    },
}

/// One measured component (e.g. systolic) with its UCUM unit.
pub type Component = device_drivers::Reading;

/// The canonical reading. See the module docs.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct Reading {
    /// Content-derived id, the store's dedup key ([`crate::identity`]).
    pub id: ReadingId,
    /// FHIR Observation identifier value (fhir-mapping.md §5.1), fixed at capture.
    pub observation_identifier: String,
    pub kind: ReadingKind,
    /// The values: one for simple measurements, several components for a panel.
    pub components: Vec<Component>,
    pub device: DeviceInfo,
    pub patient: PatientRef,
    /// The device's raw clock reading, if it sent one.
    pub device_time: Option<DeviceTime>,
    /// When the measurement happened, with an offset (FHIR `effectiveDateTime`).
    pub effective: DateTime<FixedOffset>,
    pub time_quality: TimeQuality,
    /// When the gateway received it.
    pub received_at: DateTime<Utc>,
    /// Sorted device statuses (e.g. `irregular_pulse`, `low_battery`). Stored by name (postcard
    /// string), so the encoding is the one of the former `Vec<String>`.
    pub flags: Vec<Status>,
    pub source: Source,
    /// Instant, period or date (see [`Timing`]).
    pub timing: Timing,
    /// What the source said beyond the values (site, specimen, meal, supplemental oxygen).
    pub context: device_drivers::MeasurementContext,
}

impl fmt::Debug for Reading {
    /// Prints ids, kind and device name only: no values, no patient (PHI).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reading")
            .field("id", &self.id)
            .field("kind", &self.kind)
            .field("device", &self.device.name)
            .finish_non_exhaustive()
    }
}

impl Reading {
    /// Short id for logs (first 12 hex digits of the content id; not PHI).
    pub fn short_id(&self) -> String {
        self.id.short()
    }

    /// The first component of a given type, if any.
    pub fn component(&self, kind: ReadingType) -> Option<&Component> {
        self.components.iter().find(|c| c.kind == kind)
    }

    /// This reading as a store record: keyed by its content id, with its Observation
    /// identifier as the identity the store checks for collisions.
    pub fn as_record(&self) -> crate::store::NewRecord<'_, Reading> {
        self.as_delivered_record(None)
    }

    /// [`Reading::as_record`], naming the upstream delivery it was made from (an MQTT message
    /// and the reading's place in it): see `store::NewRecord::delivery`.
    pub fn as_delivered_record<'a>(
        &'a self,
        delivery: Option<&'a str>,
    ) -> crate::store::NewRecord<'a, Reading> {
        crate::store::NewRecord {
            id: *self.id.as_bytes(),
            identity: Some(self.observation_identifier.as_str()),
            delivery,
            value: self,
        }
    }
}

/// A builder-free helper for tests and the simulator: a decimal from an f64 with `digits`
/// fractional digits.
pub fn decimal(value: f64, digits: i16) -> Decimal {
    let scaled = (value * 10f64.powi(i32::from(digits))).round() as i64;
    Decimal::new(scaled, -digits)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reading_survives_the_store_encoding() {
        // postcard is not self-describing: internally tagged enums would fail to decode.
        let r = crate::uplink::fhir::tests::bp();
        let bytes = postcard::to_stdvec(&r).unwrap();
        let back: Reading = postcard::from_bytes(&bytes).unwrap();
        assert!(back == r);
        let mut s = r.clone();
        s.source = Source::Mqtt {
            topic: "t".into(),
            source_id: "u".into(),
        };
        s.patient = PatientRef::Literal { id: "p".into() };
        s.device.identifier = DeviceIdentifier::Local("gw/x".into());
        let back: Reading = postcard::from_bytes(&postcard::to_stdvec(&s).unwrap()).unwrap();
        assert!(back == s);
    }

    /// The postcard bytes of a corrected BP reading as the format 3 build stored it
    /// (`store/testdata/reading-format-3.postcard`, written by that build): format 4 only
    /// appended [`TimeQuality::Corrected`], so old records decode as they were.
    #[test]
    fn a_reading_stored_by_format_3_decodes_unchanged() {
        let bytes = include_bytes!("store/testdata/reading-format-3.postcard");
        let back: Reading = postcard::from_bytes(bytes).unwrap();
        let mut expected = crate::uplink::fhir::tests::bp();
        expected.time_quality = TimeQuality::CorrectedForSkew;
        assert!(back == expected, "{back:?}");
        assert_eq!(back.time_quality, TimeQuality::CorrectedForSkew);
        assert_eq!(back.time_quality.coincident_timestamp(), None);
        // And a format 4 corrected reading round-trips with its clock read.
        let mut r = expected;
        r.time_quality = TimeQuality::Corrected(CoincidentTimestamp {
            gateway_time: "2026-11-23T08:00:00Z".parse().unwrap(),
            device_time: "2024-11-23T09:00:05+01:00".parse().unwrap(),
        });
        let back: Reading = postcard::from_bytes(&postcard::to_stdvec(&r).unwrap()).unwrap();
        assert!(back == r);
    }

    #[test]
    fn statuses_are_stored_as_the_strings_they_replaced() {
        // `Reading::flags` was `Vec<String>`: the postcard bytes of the statuses are the same.
        let statuses = vec![
            Status::IrregularPulse,
            Status::Implausible(ReadingType::PulseRate),
        ];
        let names = vec![
            "irregular_pulse".to_string(),
            "implausible_pulse_rate".into(),
        ];
        let bytes = postcard::to_stdvec(&statuses).unwrap();
        assert_eq!(bytes, postcard::to_stdvec(&names).unwrap());
        assert_eq!(
            postcard::from_bytes::<Vec<Status>>(&bytes).unwrap(),
            statuses
        );
        // A name outside the vocabulary does not decode.
        let unknown = postcard::to_stdvec(&vec!["sensor_error".to_string()]).unwrap();
        assert!(postcard::from_bytes::<Vec<Status>>(&unknown).is_err());
    }

    #[test]
    fn patient_references() {
        assert_eq!(
            "Patient/abc-1".parse::<PatientRef>(),
            Ok(PatientRef::Literal { id: "abc-1".into() })
        );
        assert!("urn:oid:2.16.840.1.113883.19.5|MRN-0001"
            .parse::<PatientRef>()
            .is_ok());
        assert_eq!(
            "MRN-0001".parse::<PatientRef>(),
            Err(PatientRefError::Shape)
        );
        assert_eq!(
            "Patient/".parse::<PatientRef>(),
            Err(PatientRefError::BadId)
        );
        assert_eq!(
            "mrn|x".parse::<PatientRef>(),
            Err(PatientRefError::BadSystem)
        );
        assert_eq!(
            "urn:x| y".parse::<PatientRef>(),
            Err(PatientRefError::BadValue)
        );
    }

    #[test]
    fn debug_output_has_no_phi() {
        let r = crate::uplink::fhir::tests::bp();
        let d = format!("{r:?} {:?}", r.patient);
        assert!(!d.contains("RPM-000123") && !d.contains("128"), "{d}");
    }
}
