//! Bluetooth SIG GATT health profiles: decoders, encoders, the RACP download state machine and
//! the clock, quirk and plausibility policies that sit between a decoded value and a stored
//! [`Record`].
//!
//! Reference: `gatt-profiles.md` (vitalgate shared docs), which follows the SIG GATT XML
//! characteristic definitions / GATT Specification Supplement and IEEE 11073-20601. Section 0
//! of that document fixes the decoded JSON form; every decoded struct here serialises to
//! exactly those keys (optional keys appear only when the field is present, octets after the
//! last announced field are reported as `trailing_octets`).
//!
//! # Entry points
//! - [`decode`]: typed decode of one characteristic value ([`Decoded`]).
//! - [`decode_to_json`]: the section-0 JSON form (`vitalgate decode --characteristic` prints it).
//! - [`decode_measurement`] / [`decode_measurement_with`]: what the BLE transport calls for an
//!   indication or notification: decode, apply the device's [`quirks::QuirkProfile`], reject
//!   impossible values, flag implausible ones ([`plausibility`]), return a canonical [`Record`].
//!   Intermediate values (cuff pressure 0x2A36, intermediate temperature 0x2A1E) and
//!   non-measurement characteristics give `Ok(None)`: they never become records.
//! - [`racp`]: Record Access Control Point codec and the sans-IO stored-record download.
//! - [`clock`]: device-clock correction and the time-quality label (fhir-mapping.md §4).
//! - [`cccd`]: Client Characteristic Configuration values.
//!
//! # Modules and profile layouts
//! Each module's doc gives the wire layout and its spec reference: [`sfloat`] (IEEE 11073
//! SFLOAT/FLOAT), [`datetime`] (0x2A08, 0x2A2B, 0x2A0F), [`blood_pressure`] (0x2A35, 0x2A36,
//! 0x2A49), [`weight`] (0x2A9D, 0x2A9E), [`body_composition`] (0x2A9C), [`thermometer`] (0x2A1C,
//! 0x2A1D, 0x2A1E), [`plx`] (0x2A5E, 0x2A5F, 0x2A60), [`glucose`] (0x2A18, 0x2A34), [`racp`]
//! (0x2A52), [`heart_rate`] (0x2A37), [`device_info`] (0x2A23, 0x2A24..0x2A29, 0x2A50).
//!
//! # Departures from gatt-profiles.md and choices where it is silent
//! The decoded form follows section 0 for all 75 vectors; nothing in it departs. Where the
//! document is silent we chose, and say so in the module concerned:
//! - [`racp`]: unknown *operators* and *filter types* decode as `"reserved"` (section 0's
//!   enumeration rule); only unknown op codes and a non-Null operator on abort/responses are
//!   `invalid`. A response echoing an unknown request op code is valid (`"reserved"`).
//! - [`datetime`]: Local Time Information reserved codes (zone outside -48..=56, DST not in
//!   {0,2,4,8}) are `null` like "unknown".
//! - [`thermometer`]: Temperature Type names without a vector are our snake_case of the SIG
//!   names (`body` for "body (general)", `gastro_intestinal_tract`, ...).
//! - [`device_info`]: PnP ID 0x2A50 keys are not in the section-0 table (our snake_case).
//! - [`quirks`]: the Beurer BM85 quirk decoder reports its MAP of 0 as missing (the device
//!   computes none); the document only describes pulse, user id and status.
//! - [`clock`]: besides the three labels of the issue (trusted / corrected / unknown) there is
//!   `DeviceUnverified` for a device whose clock cannot be read at connect (no CTS): its
//!   timestamp is used as sent unless it looks never-set or lies in the future.
//! - Records: SI heights become `cm` (exact exponent shift) because FHIR `bodyheight` uses
//!   cm / `[in_i]` (fhir-mapping.md §1); the decoded JSON keeps metres as sent.

pub mod blood_pressure;
pub mod body_composition;
pub mod cccd;
pub mod clock;
pub mod datetime;
pub mod device_info;
pub mod glucose;
pub mod heart_rate;
pub mod plausibility;
pub mod plx;
pub mod quirks;
pub mod racp;
pub mod sfloat;
pub mod thermometer;
pub mod weight;

mod reader;

use serde::Serialize;

use crate::record::{ReadingType, Record};
use crate::{Decimal, Reading, Status};

pub use sfloat::Float11073;

/// 16-bit UUIDs of the characteristics this crate knows.
pub mod uuid {
    pub const DATE_TIME: u16 = 0x2A08;
    pub const LOCAL_TIME_INFORMATION: u16 = 0x2A0F;
    pub const GLUCOSE_MEASUREMENT: u16 = 0x2A18;
    pub const TEMPERATURE_MEASUREMENT: u16 = 0x2A1C;
    pub const TEMPERATURE_TYPE: u16 = 0x2A1D;
    pub const INTERMEDIATE_TEMPERATURE: u16 = 0x2A1E;
    pub const SYSTEM_ID: u16 = 0x2A23;
    pub const MODEL_NUMBER: u16 = 0x2A24;
    pub const SERIAL_NUMBER: u16 = 0x2A25;
    pub const FIRMWARE_REVISION: u16 = 0x2A26;
    pub const HARDWARE_REVISION: u16 = 0x2A27;
    pub const SOFTWARE_REVISION: u16 = 0x2A28;
    pub const MANUFACTURER_NAME: u16 = 0x2A29;
    pub const CURRENT_TIME: u16 = 0x2A2B;
    pub const GLUCOSE_MEASUREMENT_CONTEXT: u16 = 0x2A34;
    pub const BLOOD_PRESSURE_MEASUREMENT: u16 = 0x2A35;
    pub const INTERMEDIATE_CUFF_PRESSURE: u16 = 0x2A36;
    pub const HEART_RATE_MEASUREMENT: u16 = 0x2A37;
    pub const BLOOD_PRESSURE_FEATURE: u16 = 0x2A49;
    pub const PNP_ID: u16 = 0x2A50;
    pub const RECORD_ACCESS_CONTROL_POINT: u16 = 0x2A52;
    pub const PLX_SPOT_CHECK: u16 = 0x2A5E;
    pub const PLX_CONTINUOUS: u16 = 0x2A5F;
    pub const PLX_FEATURES: u16 = 0x2A60;
    pub const BODY_COMPOSITION_MEASUREMENT: u16 = 0x2A9C;
    pub const WEIGHT_MEASUREMENT: u16 = 0x2A9D;
    pub const WEIGHT_SCALE_FEATURE: u16 = 0x2A9E;
    /// Client Characteristic Configuration descriptor.
    pub const CCCD: u16 = 0x2902;
}

/// Every characteristic [`decode`] accepts (for tests, fuzzing and the CLI's help text).
pub const SUPPORTED_CHARACTERISTICS: [u16; 27] = [
    uuid::DATE_TIME,
    uuid::LOCAL_TIME_INFORMATION,
    uuid::GLUCOSE_MEASUREMENT,
    uuid::TEMPERATURE_MEASUREMENT,
    uuid::TEMPERATURE_TYPE,
    uuid::INTERMEDIATE_TEMPERATURE,
    uuid::SYSTEM_ID,
    uuid::MODEL_NUMBER,
    uuid::SERIAL_NUMBER,
    uuid::FIRMWARE_REVISION,
    uuid::HARDWARE_REVISION,
    uuid::SOFTWARE_REVISION,
    uuid::MANUFACTURER_NAME,
    uuid::CURRENT_TIME,
    uuid::GLUCOSE_MEASUREMENT_CONTEXT,
    uuid::BLOOD_PRESSURE_MEASUREMENT,
    uuid::INTERMEDIATE_CUFF_PRESSURE,
    uuid::HEART_RATE_MEASUREMENT,
    uuid::BLOOD_PRESSURE_FEATURE,
    uuid::PNP_ID,
    uuid::RECORD_ACCESS_CONTROL_POINT,
    uuid::PLX_SPOT_CHECK,
    uuid::PLX_CONTINUOUS,
    uuid::PLX_FEATURES,
    uuid::BODY_COMPOSITION_MEASUREMENT,
    uuid::WEIGHT_MEASUREMENT,
    uuid::WEIGHT_SCALE_FEATURE,
];

/// Why a characteristic value could not be decoded or stored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GattError {
    /// Shorter than the minimum or than the fields its flags announce.
    #[error("truncated: the announced layout needs {needed} octets, got {got}")]
    Truncated { needed: usize, got: usize },
    /// Structurally invalid (unknown RACP op code, non-Null operator on a response, bad UTF-8).
    #[error("invalid: {0}")]
    Invalid(&'static str),
    /// This crate has no decoder for the characteristic.
    #[error("characteristic {0:#06x} is not supported")]
    Unsupported(u16),
    /// A spec-conforming decode produced a value that cannot be physical (e.g. the Beurer BM85
    /// pulse of -256000 bpm): the payload is non-conforming and no quirk decoder applies.
    #[error("impossible {reading} value: non-conforming payload (suspected vendor quirk)")]
    ImpossibleValue { reading: ReadingType },
}

impl GattError {
    /// The section-0 error kind: `"truncated"`, `"invalid"`, `"unsupported"`, `"impossible"`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Truncated { .. } => "truncated",
            Self::Invalid(_) => "invalid",
            Self::Unsupported(_) => "unsupported",
            Self::ImpossibleValue { .. } => "impossible",
        }
    }
}

/// One decoded characteristic value. Serialises (untagged) to the section-0 JSON object.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Decoded {
    BloodPressure(blood_pressure::BloodPressureMeasurement),
    IntermediateCuffPressure(blood_pressure::IntermediateCuffPressure),
    BloodPressureFeature(blood_pressure::BloodPressureFeature),
    Weight(weight::WeightMeasurement),
    WeightScaleFeature(weight::WeightScaleFeature),
    BodyComposition(body_composition::BodyCompositionMeasurement),
    Temperature(thermometer::TemperatureMeasurement),
    IntermediateTemperature(thermometer::TemperatureMeasurement),
    TemperatureType(thermometer::TemperatureTypeCharacteristic),
    PlxSpotCheck(plx::PlxSpotCheck),
    PlxContinuous(plx::PlxContinuous),
    PlxFeatures(plx::PlxFeatures),
    Glucose(glucose::GlucoseMeasurement),
    GlucoseContext(glucose::GlucoseContext),
    Racp(racp::RacpMessage),
    HeartRate(heart_rate::HeartRateMeasurement),
    DateTime(datetime::DateTimeCharacteristic),
    CurrentTime(datetime::CurrentTime),
    LocalTimeInformation(datetime::LocalTimeInformation),
    SystemId(device_info::SystemId),
    Text(device_info::DeviceInfoString),
    PnpId(device_info::PnpId),
}

/// Decodes one characteristic value per gatt-profiles.md (no quirks, no plausibility).
///
/// # Errors
/// [`GattError::Truncated`], [`GattError::Invalid`], or [`GattError::Unsupported`] for a
/// characteristic this crate does not decode.
pub fn decode(characteristic: u16, payload: &[u8]) -> Result<Decoded, GattError> {
    use uuid::*;
    Ok(match characteristic {
        BLOOD_PRESSURE_MEASUREMENT => {
            Decoded::BloodPressure(blood_pressure::BloodPressureMeasurement::decode(payload)?)
        }
        INTERMEDIATE_CUFF_PRESSURE => Decoded::IntermediateCuffPressure(
            blood_pressure::IntermediateCuffPressure::decode(payload)?,
        ),
        BLOOD_PRESSURE_FEATURE => {
            Decoded::BloodPressureFeature(blood_pressure::BloodPressureFeature::decode(payload)?)
        }
        WEIGHT_MEASUREMENT => Decoded::Weight(weight::WeightMeasurement::decode(payload)?),
        WEIGHT_SCALE_FEATURE => {
            Decoded::WeightScaleFeature(weight::WeightScaleFeature::decode(payload)?)
        }
        BODY_COMPOSITION_MEASUREMENT => Decoded::BodyComposition(
            body_composition::BodyCompositionMeasurement::decode(payload)?,
        ),
        TEMPERATURE_MEASUREMENT => {
            Decoded::Temperature(thermometer::TemperatureMeasurement::decode(payload)?)
        }
        INTERMEDIATE_TEMPERATURE => {
            Decoded::IntermediateTemperature(thermometer::TemperatureMeasurement::decode(payload)?)
        }
        TEMPERATURE_TYPE => {
            Decoded::TemperatureType(thermometer::TemperatureTypeCharacteristic::decode(payload)?)
        }
        PLX_SPOT_CHECK => Decoded::PlxSpotCheck(plx::PlxSpotCheck::decode(payload)?),
        PLX_CONTINUOUS => Decoded::PlxContinuous(plx::PlxContinuous::decode(payload)?),
        PLX_FEATURES => Decoded::PlxFeatures(plx::PlxFeatures::decode(payload)?),
        GLUCOSE_MEASUREMENT => Decoded::Glucose(glucose::GlucoseMeasurement::decode(payload)?),
        GLUCOSE_MEASUREMENT_CONTEXT => {
            Decoded::GlucoseContext(glucose::GlucoseContext::decode(payload)?)
        }
        RECORD_ACCESS_CONTROL_POINT => Decoded::Racp(racp::RacpMessage::decode(payload)?),
        HEART_RATE_MEASUREMENT => {
            Decoded::HeartRate(heart_rate::HeartRateMeasurement::decode(payload)?)
        }
        DATE_TIME => Decoded::DateTime(datetime::DateTimeCharacteristic::decode(payload)?),
        CURRENT_TIME => Decoded::CurrentTime(datetime::CurrentTime::decode(payload)?),
        LOCAL_TIME_INFORMATION => {
            Decoded::LocalTimeInformation(datetime::LocalTimeInformation::decode(payload)?)
        }
        SYSTEM_ID => Decoded::SystemId(device_info::SystemId::decode(payload)?),
        MODEL_NUMBER | SERIAL_NUMBER | FIRMWARE_REVISION | HARDWARE_REVISION
        | SOFTWARE_REVISION | MANUFACTURER_NAME => {
            Decoded::Text(device_info::DeviceInfoString::decode(payload)?)
        }
        PNP_ID => Decoded::PnpId(device_info::PnpId::decode(payload)?),
        other => return Err(GattError::Unsupported(other)),
    })
}

/// Decodes one characteristic value into the section-0 JSON form of gatt-profiles.md.
/// Malformed payloads give `{"error": "truncated" | "invalid"}`; `None` means the
/// characteristic is not supported by this crate.
pub fn decode_to_json(characteristic: u16, payload: &[u8]) -> Option<serde_json::Value> {
    match decode(characteristic, payload) {
        Ok(d) => Some(
            serde_json::to_value(&d).unwrap_or_else(|_| serde_json::json!({ "error": "invalid" })),
        ),
        Err(GattError::Unsupported(_)) => None,
        Err(e) => Some(serde_json::json!({ "error": e.kind() })),
    }
}

/// Decodes a measurement into a canonical [`Record`] with the default plausibility ranges.
/// See [`decode_measurement_with`].
///
/// # Errors
/// As [`decode_measurement_with`].
pub fn decode_measurement(
    characteristic: u16,
    payload: &[u8],
    quirks: Option<&quirks::QuirkProfile>,
) -> Result<Option<Record>, GattError> {
    decode_measurement_with(
        characteristic,
        payload,
        quirks,
        &plausibility::PlausibilityRanges::default(),
    )
}

/// What the BLE transport calls for every measurement indication/notification.
///
/// 1. If the device's quirk profile has a decoder for this characteristic, it is used instead
///    of the spec decoder (e.g. the Beurer BM85 blood-pressure layout).
/// 2. The spec decode is converted to a [`Record`] (UCUM units, special values in `missing`,
///    status bits as flags, user 0xFF as `None` + `unknown_user`).
/// 3. A value that cannot be physical ([`plausibility::check_possible`]) rejects the whole
///    payload with [`GattError::ImpossibleValue`]: it is never stored.
/// 4. Values outside `ranges` are kept but flagged `implausible_<type>`.
///
/// Returns `Ok(None)` for characteristics that are not measurements (features, time, device
/// information, RACP, glucose context) and for intermediate values (0x2A36, 0x2A1E).
///
/// # Errors
/// [`GattError::Truncated`] / [`GattError::Invalid`] for malformed payloads,
/// [`GattError::ImpossibleValue`] for non-conforming payloads, [`GattError::Unsupported`].
pub fn decode_measurement_with(
    characteristic: u16,
    payload: &[u8],
    quirks: Option<&quirks::QuirkProfile>,
    ranges: &plausibility::PlausibilityRanges,
) -> Result<Option<Record>, GattError> {
    let record = match quirks.and_then(|q| q.decode(characteristic, payload)) {
        Some(quirk_result) => Some(quirk_result?),
        None => match decode(characteristic, payload)? {
            Decoded::BloodPressure(m) => Some(m.to_record()),
            Decoded::Weight(m) => Some(m.to_record()),
            Decoded::BodyComposition(m) => Some(m.to_record()),
            Decoded::Temperature(m) => Some(m.to_record()),
            Decoded::PlxSpotCheck(m) => Some(m.to_record()),
            Decoded::PlxContinuous(m) => Some(m.to_record()),
            Decoded::Glucose(m) => Some(m.to_record()),
            Decoded::HeartRate(m) => Some(m.to_record()),
            _ => None,
        },
    };
    let Some(mut record) = record else {
        return Ok(None);
    };
    plausibility::check_possible(&record)?;
    ranges.flag(&mut record);
    Ok(Some(record))
}

// ---- helpers shared by the profile modules ----

pub(crate) fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// A new record tagged with its characteristic.
pub(crate) fn new_record(characteristic: u16) -> Record {
    let mut r = Record::default();
    r.fields.insert(
        "characteristic".into(),
        serde_json::Value::String(format!("0x{characteristic:04X}")),
    );
    r
}

/// Pushes a reading, or records the type as missing for a special value (never a number).
pub(crate) fn push_value(rec: &mut Record, kind: ReadingType, v: Float11073, unit: &str) {
    match v {
        Float11073::Value(d) => rec.readings.push(Reading::new(kind, d, unit)),
        special => {
            if !rec.missing.contains(&kind) {
                rec.missing.push(kind);
            }
            let reason = special.absent_reason();
            if let Some(reason) =
                reason.filter(|_| !rec.context.absent.iter().any(|a| a.kind == kind))
            {
                rec.context.absent.push(crate::record::AbsentValue {
                    kind,
                    unit: unit.into(),
                    reason,
                });
            }
            if let Some(name) = special.special_name() {
                rec.fields.insert(
                    format!("{}_special", kind.as_str()),
                    serde_json::Value::String(name.into()),
                );
            }
        }
    }
}

pub(crate) fn push_decimal(rec: &mut Record, kind: ReadingType, d: Decimal, unit: &str) {
    rec.readings.push(Reading::new(kind, d, unit));
}

/// Sets `device_time` from a Date Time field; an unknown/invalid one is flagged
/// `device_time_invalid` and kept raw in `fields.timestamp_raw`.
pub(crate) fn set_time(rec: &mut Record, dt: Option<datetime::DateTime>) {
    if let Some(dt) = dt {
        match dt.device_time() {
            Some(t) => rec.device_time = Some(t),
            None => {
                rec.add_flag(Status::DeviceTimeInvalid);
                rec.fields
                    .insert("timestamp_raw".into(), serde_json::json!(dt.raw()));
            }
        }
    }
}

/// User ID 0xFF is "unknown user": never a patient slot.
pub(crate) fn set_user(rec: &mut Record, user: Option<u8>) {
    match user {
        Some(0xFF) => rec.add_flag(Status::UnknownUser),
        Some(u) => rec.user_index = Some(u),
        None => {}
    }
}

pub(crate) fn set_trailing(rec: &mut Record, n: usize) {
    if n > 0 {
        rec.add_flag(Status::TrailingOctets);
        rec.fields
            .insert("trailing_octets".into(), serde_json::json!(n));
    }
}

/// `{"raw": n, "flags": [...]}` bit sets: device statuses (PLX status, glucose annunciation,
/// `T` = [`Status`]) or feature names (`T` = `&str`). Both serialise the names as strings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BitFlags<T = &'static str> {
    pub raw: u32,
    pub flags: Vec<T>,
}

impl<T: Copy> BitFlags<T> {
    /// The set bits that have a name (`names[i]` for bit `i`; `None` = RFU, skipped).
    pub(crate) fn new(raw: u32, names: &[Option<T>]) -> Self {
        let flags = names
            .iter()
            .enumerate()
            .filter(|(i, _)| raw & (1u32 << i) != 0)
            .filter_map(|(_, n)| *n)
            .collect();
        Self { raw, flags }
    }

    pub fn contains(&self, name: T) -> bool
    where
        T: PartialEq,
    {
        self.flags.contains(&name)
    }
}
