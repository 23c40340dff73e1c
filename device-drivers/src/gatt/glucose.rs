//! Glucose Measurement 0x2A18 and Glucose Measurement Context 0x2A34.
//!
//! Layouts (SIG GATT XML `glucose_measurement`, `glucose_measurement_context`, GLS 1.0;
//! gatt-profiles.md §8):
//! - **Measurement** (10..=17): flags (bit0 time offset, bit1 concentration + type/sample
//!   location, bit2 units 0 kg/L / 1 mol/L, bit3 sensor status annunciation, bit4 context
//!   follows, 5-7 RFU), sequence number u16, base time (Date Time 7), [time offset i16 minutes],
//!   [concentration SFLOAT + type (low nibble) / sample location (high nibble)], [sensor status
//!   annunciation u16, bits 0..11 named, 12-15 RFU].
//!   `timestamp` = base time + offset, `null` when the base time is unknown or the sum leaves
//!   the Date Time range.
//! - **Context**: flags (bit0 carbohydrate, bit1 meal, bit2 tester/health, bit3 exercise, bit4
//!   medication, bit5 medication unit 0 kg / 1 L, bit6 HbA1c, bit7 extended flags), sequence
//!   number u16, [extended flags u8], [carbohydrate id u8 + SFLOAT kg], [meal u8], [tester
//!   (low nibble) / health (high nibble)], [exercise duration u16 s + intensity u8 %],
//!   [medication id u8 + SFLOAT kg or L], [HbA1c SFLOAT %].
//!
//! Record mapping (measurement only; context is joined by the agent on the sequence number):
//! kg/L → `mg/dL` (× 100 000, exact exponent shift), mol/L → `mmol/L` (× 1000). Sample type and
//! location go to `fields`; control solution (type 10 or location 4) adds the flag
//! `control_solution` (never upload); sensor-status bits become the [`Status`] of the same name.

use serde::Serialize;

use super::datetime::{BaseTime, DateTime};
use super::reader::Reader;
use super::sfloat::Float11073;
use super::{new_record, push_value, set_trailing, uuid, BitFlags, GattError};
use crate::record::{ReadingType, Record};
use crate::{Decimal, DeviceTime, Status};

/// Sensor Status Annunciation bits (bits 12-15 RFU).
pub const SENSOR_STATUS: [Option<Status>; 12] = [
    Some(Status::DeviceBatteryLow),
    Some(Status::SensorMalfunction),
    Some(Status::SampleSizeInsufficient),
    Some(Status::StripInsertionError),
    Some(Status::StripTypeIncorrect),
    Some(Status::ResultHigherThanDeviceCanProcess),
    Some(Status::ResultLowerThanDeviceCanProcess),
    Some(Status::SensorTemperatureTooHigh),
    Some(Status::SensorTemperatureTooLow),
    Some(Status::SensorReadInterrupted),
    Some(Status::GeneralDeviceFault),
    Some(Status::TimeFault),
];

pub fn type_name(code: u8) -> &'static str {
    match code {
        1 => "capillary_whole_blood",
        2 => "capillary_plasma",
        3 => "venous_whole_blood",
        4 => "venous_plasma",
        5 => "arterial_whole_blood",
        6 => "arterial_plasma",
        7 => "undetermined_whole_blood",
        8 => "undetermined_plasma",
        9 => "interstitial_fluid",
        10 => "control_solution",
        _ => "reserved",
    }
}

pub fn sample_location_name(code: u8) -> &'static str {
    match code {
        1 => "finger",
        2 => "alternate_site_test",
        3 => "earlobe",
        4 => "control_solution",
        15 => "not_available",
        _ => "reserved",
    }
}

/// Concentration unit (SI base units, as sent).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum GlucoseUnit {
    #[serde(rename = "kg/L")]
    KgPerL,
    #[serde(rename = "mol/L")]
    MolPerL,
}

/// Concentration with its sample type and location (flag bit1).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Concentration {
    pub concentration: Float11073,
    pub unit: GlucoseUnit,
    #[serde(rename = "type")]
    pub sample_type: u8,
    pub type_name: &'static str,
    pub sample_location: u8,
    pub sample_location_name: &'static str,
}

/// Glucose Measurement 0x2A18.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct GlucoseMeasurement {
    pub sequence_number: u16,
    #[serde(flatten)]
    pub base_time: BaseTime,
    /// Base time + offset; `None` (null) when the base time is unknown.
    pub timestamp: Option<DeviceTime>,
    pub context_follows: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub time_offset_minutes: Option<i16>,
    #[serde(flatten)]
    pub concentration: Option<Concentration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sensor_status: Option<BitFlags<Status>>,
    #[serde(skip_serializing_if = "super::is_zero")]
    pub trailing_octets: usize,
}

impl GlucoseMeasurement {
    /// # Errors
    /// [`GattError::Truncated`].
    pub fn decode(payload: &[u8]) -> Result<Self, GattError> {
        let mut r = Reader::new(payload);
        let flags = r.u8()?;
        let sequence_number = r.u16()?;
        let base = r.date_time()?;
        let time_offset_minutes = if flags & 0x01 != 0 {
            Some(r.i16()?)
        } else {
            None
        };
        let concentration = if flags & 0x02 != 0 {
            let concentration = r.sfloat()?;
            let ts = r.u8()?;
            Some(Concentration {
                concentration,
                unit: if flags & 0x04 != 0 {
                    GlucoseUnit::MolPerL
                } else {
                    GlucoseUnit::KgPerL
                },
                sample_type: ts & 0x0F,
                type_name: type_name(ts & 0x0F),
                sample_location: ts >> 4,
                sample_location_name: sample_location_name(ts >> 4),
            })
        } else {
            None
        };
        let sensor_status = if flags & 0x08 != 0 {
            Some(BitFlags::new(u32::from(r.u16()?), &SENSOR_STATUS))
        } else {
            None
        };
        Ok(Self {
            sequence_number,
            base_time: BaseTime(base),
            timestamp: effective_time(base, time_offset_minutes),
            context_follows: flags & 0x10 != 0,
            time_offset_minutes,
            concentration,
            sensor_status,
            trailing_octets: r.remaining(),
        })
    }

    /// Encodes (emulated meters). `None` if the concentration is not exactly an SFLOAT.
    pub fn encode(&self) -> Option<Vec<u8>> {
        let mut flags = 0u8;
        if self.time_offset_minutes.is_some() {
            flags |= 0x01;
        }
        if let Some(c) = &self.concentration {
            flags |= 0x02;
            if c.unit == GlucoseUnit::MolPerL {
                flags |= 0x04;
            }
        }
        if self.sensor_status.is_some() {
            flags |= 0x08;
        }
        if self.context_follows {
            flags |= 0x10;
        }
        let mut out = vec![flags];
        out.extend_from_slice(&self.sequence_number.to_le_bytes());
        out.extend_from_slice(&self.base_time.0.to_bytes());
        if let Some(o) = self.time_offset_minutes {
            out.extend_from_slice(&o.to_le_bytes());
        }
        if let Some(c) = &self.concentration {
            out.extend_from_slice(&c.concentration.to_sfloat()?.to_le_bytes());
            if c.sample_type > 0x0F || c.sample_location > 0x0F {
                return None;
            }
            out.push(c.sample_type | (c.sample_location << 4));
        }
        if let Some(s) = &self.sensor_status {
            out.extend_from_slice(&u16::try_from(s.raw).ok()?.to_le_bytes());
        }
        Some(out)
    }

    /// The canonical record (see the module doc).
    pub fn to_record(&self) -> Record {
        let mut rec = new_record(uuid::GLUCOSE_MEASUREMENT);
        rec.fields.insert(
            "sequence_number".into(),
            serde_json::json!(self.sequence_number),
        );
        if let Some(c) = &self.concentration {
            let (v, unit) = match (c.concentration, c.unit) {
                (Float11073::Value(d), GlucoseUnit::KgPerL) => {
                    (Float11073::Value(shift(d, 5)), "mg/dL")
                }
                (Float11073::Value(d), GlucoseUnit::MolPerL) => {
                    (Float11073::Value(shift(d, 3)), "mmol/L")
                }
                (special, GlucoseUnit::KgPerL) => (special, "mg/dL"),
                (special, GlucoseUnit::MolPerL) => (special, "mmol/L"),
            };
            push_value(&mut rec, ReadingType::BloodGlucose, v, unit);
            rec.fields
                .insert("sample_type".into(), serde_json::json!(c.type_name));
            rec.context.specimen = crate::record::Specimen::from_gatt(c.sample_type);
            rec.fields.insert(
                "sample_location".into(),
                serde_json::json!(c.sample_location_name),
            );
            if c.sample_type == 10 || c.sample_location == 4 {
                rec.add_flag(Status::ControlSolution);
            }
        }
        match (self.base_time.0.device_time(), self.timestamp) {
            (Some(_), Some(t)) => rec.device_time = Some(t),
            _ => {
                rec.add_flag(Status::DeviceTimeInvalid);
                rec.fields.insert(
                    "base_time_raw".into(),
                    serde_json::json!(self.base_time.0.raw()),
                );
            }
        }
        if let Some(s) = &self.sensor_status {
            for f in &s.flags {
                rec.add_flag(*f);
            }
        }
        if self.context_follows {
            rec.add_flag(Status::ContextFollows);
        }
        set_trailing(&mut rec, self.trailing_octets);
        rec
    }
}

/// Joins a Glucose Measurement Context (0x2A34) to the record of the measurement with the same
/// sequence number: the meal relation goes to [`crate::record::MeasurementContext::meal`].
/// Returns `false` (and changes nothing) when the sequence numbers differ.
pub fn apply_context(rec: &mut Record, ctx: &GlucoseContext) -> bool {
    let seq = rec.fields.get("sequence_number").and_then(|v| v.as_u64());
    if seq != Some(u64::from(ctx.sequence_number)) {
        return false;
    }
    if let Some(m) = ctx
        .meal
        .as_ref()
        .filter(|m| meal_name(m.meal) != "reserved")
    {
        rec.context.meal = Some(m.meal_name.to_string());
    }
    true
}

impl From<&GlucoseMeasurement> for Record {
    fn from(m: &GlucoseMeasurement) -> Self {
        m.to_record()
    }
}

/// `d × 10^n` exactly (exponent shift).
fn shift(d: Decimal, n: i16) -> Decimal {
    Decimal::new(d.mantissa, d.exponent.saturating_add(n))
}

fn effective_time(base: DateTime, offset: Option<i16>) -> Option<DeviceTime> {
    let t = base.device_time()?;
    let secs = t.naive_unix_seconds() + i64::from(offset.unwrap_or(0)) * 60;
    DeviceTime::from_naive_unix_seconds(secs)
}

pub fn carbohydrate_name(code: u8) -> &'static str {
    match code {
        1 => "breakfast",
        2 => "lunch",
        3 => "dinner",
        4 => "snack",
        5 => "drink",
        6 => "supper",
        7 => "brunch",
        _ => "reserved",
    }
}

pub fn meal_name(code: u8) -> &'static str {
    match code {
        1 => "preprandial",
        2 => "postprandial",
        3 => "fasting",
        4 => "casual",
        5 => "bedtime",
        _ => "reserved",
    }
}

pub fn tester_name(code: u8) -> &'static str {
    match code {
        1 => "self",
        2 => "health_care_professional",
        3 => "lab_test",
        15 => "not_available",
        _ => "reserved",
    }
}

pub fn health_name(code: u8) -> &'static str {
    match code {
        1 => "minor_health_issues",
        2 => "major_health_issues",
        3 => "during_menses",
        4 => "under_stress",
        5 => "no_health_issues",
        15 => "not_available",
        _ => "reserved",
    }
}

pub fn medication_name(code: u8) -> &'static str {
    match code {
        1 => "rapid_acting_insulin",
        2 => "short_acting_insulin",
        3 => "intermediate_acting_insulin",
        4 => "long_acting_insulin",
        5 => "pre_mixed_insulin",
        _ => "reserved",
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Carbohydrate {
    pub carbohydrate_id: u8,
    pub carbohydrate_name: &'static str,
    pub carbohydrate_kg: Float11073,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Meal {
    pub meal: u8,
    pub meal_name: &'static str,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TesterHealth {
    pub tester: u8,
    pub tester_name: &'static str,
    pub health: u8,
    pub health_name: &'static str,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Exercise {
    /// Seconds; 0xFFFF = overrun.
    pub exercise_duration_s: u16,
    pub exercise_intensity_percent: u8,
}

/// Medication unit (flag bit5).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum MedicationUnit {
    #[serde(rename = "kg")]
    Kg,
    #[serde(rename = "L")]
    L,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Medication {
    pub medication_id: u8,
    pub medication_name: &'static str,
    pub medication: Float11073,
    pub medication_unit: MedicationUnit,
}

/// Glucose Measurement Context 0x2A34.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct GlucoseContext {
    pub sequence_number: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub extended_flags: Option<u8>,
    #[serde(flatten)]
    pub carbohydrate: Option<Carbohydrate>,
    #[serde(flatten)]
    pub meal: Option<Meal>,
    #[serde(flatten)]
    pub tester_health: Option<TesterHealth>,
    #[serde(flatten)]
    pub exercise: Option<Exercise>,
    #[serde(flatten)]
    pub medication: Option<Medication>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hba1c_percent: Option<Float11073>,
    #[serde(skip_serializing_if = "super::is_zero")]
    pub trailing_octets: usize,
}

impl GlucoseContext {
    /// # Errors
    /// [`GattError::Truncated`].
    pub fn decode(payload: &[u8]) -> Result<Self, GattError> {
        let mut r = Reader::new(payload);
        let flags = r.u8()?;
        let sequence_number = r.u16()?;
        let extended_flags = if flags & 0x80 != 0 {
            Some(r.u8()?)
        } else {
            None
        };
        let carbohydrate = if flags & 0x01 != 0 {
            let id = r.u8()?;
            Some(Carbohydrate {
                carbohydrate_id: id,
                carbohydrate_name: carbohydrate_name(id),
                carbohydrate_kg: r.sfloat()?,
            })
        } else {
            None
        };
        let meal = if flags & 0x02 != 0 {
            let m = r.u8()?;
            Some(Meal {
                meal: m,
                meal_name: meal_name(m),
            })
        } else {
            None
        };
        let tester_health = if flags & 0x04 != 0 {
            let b = r.u8()?;
            Some(TesterHealth {
                tester: b & 0x0F,
                tester_name: tester_name(b & 0x0F),
                health: b >> 4,
                health_name: health_name(b >> 4),
            })
        } else {
            None
        };
        let exercise = if flags & 0x08 != 0 {
            Some(Exercise {
                exercise_duration_s: r.u16()?,
                exercise_intensity_percent: r.u8()?,
            })
        } else {
            None
        };
        let medication = if flags & 0x10 != 0 {
            let id = r.u8()?;
            Some(Medication {
                medication_id: id,
                medication_name: medication_name(id),
                medication: r.sfloat()?,
                medication_unit: if flags & 0x20 != 0 {
                    MedicationUnit::L
                } else {
                    MedicationUnit::Kg
                },
            })
        } else {
            None
        };
        let hba1c_percent = if flags & 0x40 != 0 {
            Some(r.sfloat()?)
        } else {
            None
        };
        Ok(Self {
            sequence_number,
            extended_flags,
            carbohydrate,
            meal,
            tester_health,
            exercise,
            medication,
            hba1c_percent,
            trailing_octets: r.remaining(),
        })
    }
}
