//! Physiological plausibility ranges and physical-impossibility limits.
//!
//! Two checks run on every record [`super::decode_measurement_with`] produces:
//!
//! 1. **Impossible** (fixed, not configurable): a value no body and no conforming device can
//!    produce means the payload was not decoded as the device meant it (the Beurer BM85's pulse
//!    of -256000 bpm, gatt-profiles.md §11). The record is rejected with
//!    [`GattError::ImpossibleValue`], never stored. Limits, in the canonical unit: any
//!    negative value except temperature; SpO2, perfusion index and body fat above 100 %;
//!    pressures above 1000 mmHg; pulse and heart rate above 1000 /min; weight above 1000 kg;
//!    height above 400 cm; BMI above 1000 kg/m2; temperature below absolute zero or above
//!    100 °C; glucose above 10 000 mg/dL (555 mmol/L).
//! 2. **Implausible** (configurable [`PlausibilityRanges`]): the value is kept but the record
//!    gets the flag [`Status::Implausible`] (`implausible_<reading type>`, e.g.
//!    `implausible_systolic_pressure`; class `questionable`) so the pipeline does not store it as
//!    normal. Defaults (inclusive, canonical units):
//!
//! | reading | default range | unit |
//! |---|---|---|
//! | systolic | 50 - 300 | mmHg |
//! | diastolic | 20 - 200 | mmHg |
//! | mean arterial | 30 - 250 | mmHg |
//! | pulse rate, heart rate | 20 - 300 | /min |
//! | SpO2 | 50 - 100 | % |
//! | perfusion index | 0 - 20 | % |
//! | body weight | 0.5 - 500 | kg |
//! | body height | 30 - 280 | cm |
//! | BMI | 5 - 100 | kg/m2 |
//! | body fat | 1 - 75 | % |
//! | body temperature | 25 - 45 | °C |
//! | blood glucose | 10 - 1000 | mg/dL |
//!
//! Units are converted to the canonical unit only for the comparison (f64, lossy is fine
//! here): kPa × 7.50062, lb × 0.45359237, in × 2.54, °F → °C, mmol/L × 18.016.
//! Config: `[plausibility]` with any subset of the keys above as `{ min = .., max = .. }`;
//! unknown keys are rejected.

use serde::{Deserialize, Serialize};

use super::GattError;
use crate::record::{Reading, ReadingType, Record};
use crate::Status;

/// An inclusive range in a reading's canonical unit.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Range {
    pub min: f64,
    pub max: f64,
}

impl Range {
    pub const fn new(min: f64, max: f64) -> Self {
        Self { min, max }
    }

    pub fn contains(&self, v: f64) -> bool {
        v >= self.min && v <= self.max
    }
}

/// Per-measurement plausibility ranges (see the module doc for defaults).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PlausibilityRanges {
    pub systolic_mmhg: Range,
    pub diastolic_mmhg: Range,
    pub mean_arterial_mmhg: Range,
    pub pulse_rate_per_min: Range,
    pub heart_rate_per_min: Range,
    pub spo2_percent: Range,
    pub perfusion_index_percent: Range,
    pub body_weight_kg: Range,
    pub body_height_cm: Range,
    pub bmi_kg_m2: Range,
    pub body_fat_percent: Range,
    pub body_temperature_cel: Range,
    pub blood_glucose_mg_dl: Range,
}

impl Default for PlausibilityRanges {
    fn default() -> Self {
        Self {
            systolic_mmhg: Range::new(50.0, 300.0),
            diastolic_mmhg: Range::new(20.0, 200.0),
            mean_arterial_mmhg: Range::new(30.0, 250.0),
            pulse_rate_per_min: Range::new(20.0, 300.0),
            heart_rate_per_min: Range::new(20.0, 300.0),
            spo2_percent: Range::new(50.0, 100.0),
            perfusion_index_percent: Range::new(0.0, 20.0),
            body_weight_kg: Range::new(0.5, 500.0),
            body_height_cm: Range::new(30.0, 280.0),
            bmi_kg_m2: Range::new(5.0, 100.0),
            body_fat_percent: Range::new(1.0, 75.0),
            body_temperature_cel: Range::new(25.0, 45.0),
            blood_glucose_mg_dl: Range::new(10.0, 1000.0),
        }
    }
}

impl PlausibilityRanges {
    /// The range for a reading type (`None` for types without a GATT source here).
    pub fn range(&self, kind: ReadingType) -> Option<Range> {
        use ReadingType::*;
        Some(match kind {
            SystolicPressure => self.systolic_mmhg,
            DiastolicPressure => self.diastolic_mmhg,
            MeanArterialPressure => self.mean_arterial_mmhg,
            PulseRate => self.pulse_rate_per_min,
            HeartRate => self.heart_rate_per_min,
            Spo2 => self.spo2_percent,
            PerfusionIndex => self.perfusion_index_percent,
            BodyWeight => self.body_weight_kg,
            BodyHeight => self.body_height_cm,
            Bmi => self.bmi_kg_m2,
            BodyFatPercentage => self.body_fat_percent,
            BodyTemperature => self.body_temperature_cel,
            BloodGlucose => self.blood_glucose_mg_dl,
            _ => return None,
        })
    }

    /// Adds [`Status::Implausible`] for every reading outside its range.
    pub fn flag(&self, rec: &mut Record) {
        let mut flags = Vec::new();
        for r in &rec.readings {
            if let (Some(range), Some(v)) = (self.range(r.kind), canonical_value(r)) {
                if !range.contains(v) {
                    flags.push(Status::Implausible(r.kind));
                }
            }
        }
        for f in flags {
            rec.add_flag(f);
        }
    }
}

/// The reading's value in the canonical unit of its type (`None` for an unknown unit).
pub fn canonical_value(r: &Reading) -> Option<f64> {
    let v = r.value.to_f64();
    Some(match r.unit.as_str() {
        "mm[Hg]" | "kg" | "cm" | "Cel" | "%" | "/min" | "kg/m2" | "mg/dL" => v,
        "kPa" => v * 7.500_62,
        "[lb_av]" => v * 0.453_592_37,
        "[in_i]" => v * 2.54,
        "[degF]" => (v - 32.0) * 5.0 / 9.0,
        "mmol/L" => v * 18.016,
        "m" => v * 100.0,
        _ => return None,
    })
}

/// Fails with [`GattError::ImpossibleValue`] if any reading is physically impossible.
///
/// # Errors
/// See above.
pub fn check_possible(rec: &Record) -> Result<(), GattError> {
    for r in &rec.readings {
        let Some(v) = canonical_value(r) else {
            continue;
        };
        use ReadingType::*;
        let ok = match r.kind {
            BodyTemperature => (-273.15..=100.0).contains(&v),
            Spo2 | PerfusionIndex | BodyFatPercentage => (0.0..=100.0).contains(&v),
            SystolicPressure | DiastolicPressure | MeanArterialPressure => {
                (0.0..=1000.0).contains(&v)
            }
            PulseRate | HeartRate | RespiratoryRate => (0.0..=1000.0).contains(&v),
            BodyWeight => (0.0..=1000.0).contains(&v),
            BodyHeight => (0.0..=400.0).contains(&v),
            Bmi => (0.0..=1000.0).contains(&v),
            BloodGlucose => (0.0..=10_000.0).contains(&v),
            _ => v >= 0.0,
        };
        if !ok {
            return Err(GattError::ImpossibleValue { reading: r.kind });
        }
    }
    Ok(())
}
