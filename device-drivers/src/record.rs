//! The driver-level canonical record.
//!
//! Every decoder in this crate (GATT characteristics, serial framers, the generic line parser,
//! Open mHealth) can express what it decoded as a [`Record`]: one message from one device, with
//! zero or more [`Reading`]s in UCUM units, the types the device explicitly reported as missing,
//! status flags that apply to every reading of the record, and the device's own clock when the
//! protocol carries one. Protocol-specific raw values go to `fields` for debugging and tests.
//!
//! The agent's pipeline turns a `Record` into its own `Reading`s by adding what a decoder cannot
//! know: which device (from config), which patient, the gateway receive time, a stable id.
//!
//! The JSON form of a `Record` is the `records[]` form of `testdata/serial-vectors.json`.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::{Decimal, Status};

/// What was measured. The vocabulary of serial-protocols.md §0 plus the GATT/OMH measurements.
/// The agent maps each to MDC/LOINC codes (fhir-mapping.md §1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReadingType {
    /// Non-invasive blood pressure, systolic.
    SystolicPressure,
    /// Non-invasive blood pressure, diastolic.
    DiastolicPressure,
    /// Non-invasive blood pressure, mean arterial pressure.
    MeanArterialPressure,
    /// Pulse rate from a BP cuff or an oximeter (the agent picks the MDC code by device kind).
    PulseRate,
    /// Heart rate from a heart-rate strap (ECG) or optical sensor.
    HeartRate,
    Spo2,
    PerfusionIndex,
    Spco,
    Spmet,
    Sphb,
    Pvi,
    BodyWeight,
    BodyHeight,
    Bmi,
    BodyFatPercentage,
    BodyTemperature,
    /// Blood glucose concentration (the specimen is in [`MeasurementContext::specimen`]).
    BloodGlucose,
    /// Respiratory rate (breaths per minute, UCUM `/min`).
    RespiratoryRate,
}

impl ReadingType {
    /// Every type, for config validation and documentation.
    pub const ALL: [ReadingType; 18] = [
        Self::SystolicPressure,
        Self::DiastolicPressure,
        Self::MeanArterialPressure,
        Self::PulseRate,
        Self::HeartRate,
        Self::Spo2,
        Self::PerfusionIndex,
        Self::Spco,
        Self::Spmet,
        Self::Sphb,
        Self::Pvi,
        Self::BodyWeight,
        Self::BodyHeight,
        Self::Bmi,
        Self::BodyFatPercentage,
        Self::BodyTemperature,
        Self::BloodGlucose,
        Self::RespiratoryRate,
    ];

    /// The snake_case name used in JSON and config files.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::SystolicPressure => "systolic_pressure",
            Self::DiastolicPressure => "diastolic_pressure",
            Self::MeanArterialPressure => "mean_arterial_pressure",
            Self::PulseRate => "pulse_rate",
            Self::HeartRate => "heart_rate",
            Self::Spo2 => "spo2",
            Self::PerfusionIndex => "perfusion_index",
            Self::Spco => "spco",
            Self::Spmet => "spmet",
            Self::Sphb => "sphb",
            Self::Pvi => "pvi",
            Self::BodyWeight => "body_weight",
            Self::BodyHeight => "body_height",
            Self::Bmi => "bmi",
            Self::BodyFatPercentage => "body_fat_percentage",
            Self::BodyTemperature => "body_temperature",
            Self::BloodGlucose => "blood_glucose",
            Self::RespiratoryRate => "respiratory_rate",
        }
    }

    /// Parses the snake_case name.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == name)
    }
}

impl fmt::Display for ReadingType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One measured value with its UCUM unit (`"mm[Hg]"`, `"kg"`, `"[lb_av]"`, `"Cel"`, `"%"`, `"/min"`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reading {
    #[serde(rename = "type")]
    pub kind: ReadingType,
    pub value: Decimal,
    pub unit: String,
}

impl Reading {
    pub fn new(kind: ReadingType, value: Decimal, unit: impl Into<String>) -> Self {
        Self {
            kind,
            value,
            unit: unit.into(),
        }
    }
}

/// A device's own wall-clock time, no zone (what the device's clock said).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeviceTime {
    pub year: u16,
    pub month: u8,
    pub day: u8,
    pub hour: u8,
    pub minute: u8,
    pub second: u8,
}

impl DeviceTime {
    /// A validated time: month 1..=12, a day that exists in that month (leap years included),
    /// hour < 24, minute < 60, second < 60, year 1582..=9999 (the GATT Date Time range).
    pub fn new(year: u16, month: u8, day: u8, hour: u8, minute: u8, second: u8) -> Option<Self> {
        let ok = (1582..=9999).contains(&year)
            && (1..=12).contains(&month)
            && day >= 1
            && day <= days_in_month(year, month)
            && hour < 24
            && minute < 60
            && second < 60;
        ok.then_some(Self {
            year,
            month,
            day,
            hour,
            minute,
            second,
        })
    }

    /// Seconds since 2000-01-01T00:00:00 on the device's own clock (negative before 2000).
    /// This is the timestamp encoding of the FHIR idempotency rule (fhir-mapping.md §5).
    pub fn seconds_since_2000(self) -> i64 {
        let days = days_from_civil(i64::from(self.year), self.month, self.day)
            - days_from_civil(2000, 1, 1);
        days * 86_400
            + i64::from(self.hour) * 3600
            + i64::from(self.minute) * 60
            + i64::from(self.second)
    }

    /// Seconds since 1970-01-01T00:00:00 *as if* the device clock were UTC.
    pub fn naive_unix_seconds(self) -> i64 {
        days_from_civil(i64::from(self.year), self.month, self.day) * 86_400
            + i64::from(self.hour) * 3600
            + i64::from(self.minute) * 60
            + i64::from(self.second)
    }

    /// The inverse of [`DeviceTime::naive_unix_seconds`] (`None` outside 1582..=9999).
    pub fn from_naive_unix_seconds(secs: i64) -> Option<Self> {
        let days = secs.div_euclid(86_400);
        let rem = secs.rem_euclid(86_400);
        let (y, m, d) = civil_from_days(days);
        let year = u16::try_from(y).ok()?;
        Self::new(
            year,
            m,
            d,
            u8::try_from(rem / 3600).ok()?,
            u8::try_from(rem % 3600 / 60).ok()?,
            u8::try_from(rem % 60).ok()?,
        )
    }
}

impl fmt::Display for DeviceTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
            self.year, self.month, self.day, self.hour, self.minute, self.second
        )
    }
}

impl Serialize for DeviceTime {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.collect_str(self)
        } else {
            (
                self.year,
                self.month,
                self.day,
                self.hour,
                self.minute,
                self.second,
            )
                .serialize(s)
        }
    }
}

impl<'de> Deserialize<'de> for DeviceTime {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        if d.is_human_readable() {
            let s = String::deserialize(d)?;
            parse_iso_local(&s).ok_or_else(|| D::Error::custom("expected YYYY-MM-DDTHH:MM:SS"))
        } else {
            let (y, mo, da, h, mi, se) = <(u16, u8, u8, u8, u8, u8)>::deserialize(d)?;
            DeviceTime::new(y, mo, da, h, mi, se).ok_or_else(|| D::Error::custom("invalid time"))
        }
    }
}

/// Parses `YYYY-MM-DDTHH:MM:SS` (no zone).
pub fn parse_iso_local(s: &str) -> Option<DeviceTime> {
    let b = s.as_bytes();
    if b.len() != 19 || b.get(4) != Some(&b'-') || b.get(7) != Some(&b'-') {
        return None;
    }
    if !matches!(b.get(10), Some(b'T') | Some(b' ')) || b.get(13) != Some(&b':') {
        return None;
    }
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<u16>().ok();
    DeviceTime::new(
        num(0..4)?,
        u8::try_from(num(5..7)?).ok()?,
        u8::try_from(num(8..10)?).ok()?,
        u8::try_from(num(11..13)?).ok()?,
        u8::try_from(num(14..16)?).ok()?,
        u8::try_from(num(17..19)?).ok()?,
    )
}

/// Days in a month of the proleptic Gregorian calendar (0 for a month outside 1..=12).
pub fn days_in_month(year: u16, month: u8) -> u8 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        2 => 28,
        _ => 0,
    }
}

/// Days since 1970-01-01 (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: u8, d: u8) -> i64 {
    let m = i64::from(m);
    let d = i64::from(d);
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, u8, u8) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u8;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// One decoded message from one device.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Values in decoder order.
    pub readings: Vec<Reading>,
    /// Types the device explicitly reported as "no value" (never zero).
    #[serde(default)]
    pub missing: Vec<ReadingType>,
    /// Sorted (by name), deduplicated device statuses; they apply to every reading of the record.
    #[serde(default)]
    pub flags: Vec<Status>,
    /// The device's clock at measurement, when the protocol carries one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_time: Option<DeviceTime>,
    /// Device serial number, when the protocol carries it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_id: Option<String>,
    /// Device model string, when the protocol carries it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_model: Option<String>,
    /// The device's user index (multi-user cuffs and scales), when the protocol carries it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_index: Option<u8>,
    /// Protocol-specific raw decoded values (for tests and debugging; may hold PHI, never log).
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub fields: serde_json::Map<String, serde_json::Value>,
    /// What the source said about the measurement beyond its values: period, statistic, site,
    /// specimen, meal, supplemental oxygen. Typed, because the uplink codes from it. Boxed: most
    /// records have none, and a `Record` travels inside enums (`serial::Event`, `racp::Action`).
    #[serde(default, skip_serializing_if = "MeasurementContext::is_boxed_empty")]
    pub context: Box<MeasurementContext>,
}

/// What a source said about a measurement beyond its values (all optional). No field is
/// skipped when serialising: the agent stores it with postcard, which is not self-describing.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct MeasurementContext {
    /// End of the effective period, on the same wall clock (and in the same zone) as
    /// [`Record::device_time`], which is then its start. `None`: a point in time.
    pub effective_end: Option<DeviceTime>,
    /// The source gave only a date (Open mHealth `date` + `part_of_day`): [`Record::device_time`]
    /// is that date at 00:00:00 and the time of day is not known.
    pub date_only: bool,
    /// An aggregate (Open mHealth `descriptive_statistic`: `average`, `maximum`, `count`...): the
    /// values are not one measurement.
    pub statistic: Option<String>,
    /// Where a temperature was taken.
    pub body_site: Option<BodySite>,
    /// What a glucose concentration was measured in.
    pub specimen: Option<Specimen>,
    /// Timing relative to a meal, in the source's own words (GATT 0x2A34 meal name, Open
    /// mHealth `temporal_relationship_to_meal`).
    pub meal: Option<String>,
    /// Supplemental oxygen flow during an SpO2 measurement, L/min (`0` = room air).
    pub supplemental_oxygen_l_min: Option<Decimal>,
    /// Values the device sent as an IEEE 11073 special value (NaN, NRes, +INF, -INF) instead of a
    /// number: the type is also in [`Record::missing`] and never in [`Record::readings`]. The
    /// uplink turns each into a `dataAbsentReason` (fhir-mapping.md §2), never into a number.
    pub absent: Vec<AbsentValue>,
}

/// A value a device reported as "no number", with why (FHIR R4 `data-absent-reason`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct AbsentValue {
    pub kind: ReadingType,
    /// The unit the device stated for it (the uplink needs it to pick a unit-specific code,
    /// e.g. glucose mg/dL or mmol/L).
    pub unit: String,
    pub reason: AbsentReason,
}

/// Why a value is absent, as the IEEE 11073 special values say it (fhir-mapping.md §2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AbsentReason {
    /// NaN `0x07FF` / `0x007FFFFF`.
    NotANumber,
    /// NRes `0x0800` / `0x00800000` (not at this resolution) and the reserved word `0x0801` /
    /// `0x00800001`: the device failed to give a value.
    Error,
    /// +INF `0x07FE` / `0x007FFFFE`: above the measuring range.
    PositiveInfinity,
    /// -INF `0x0802` / `0x00800002`: below the measuring range.
    NegativeInfinity,
}

impl AbsentReason {
    /// The code in `http://terminology.hl7.org/CodeSystem/data-absent-reason` (FHIR R4).
    pub fn code(self) -> &'static str {
        match self {
            Self::NotANumber => "not-a-number",
            Self::Error => "error",
            Self::PositiveInfinity => "positive-infinity",
            Self::NegativeInfinity => "negative-infinity",
        }
    }

    /// The code's display in the R4 code system.
    pub fn display(self) -> &'static str {
        match self {
            Self::NotANumber => "Not a Number (NaN)",
            Self::Error => "Error",
            Self::PositiveInfinity => "Positive Infinity (PINF)",
            Self::NegativeInfinity => "Negative Infinity (NINF)",
        }
    }
}

impl MeasurementContext {
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    #[allow(clippy::borrowed_box)] // serde's skip_serializing_if hands us `&Box<Self>`
    fn is_boxed_empty(b: &Box<Self>) -> bool {
        b.is_empty()
    }
}

/// Body temperature measurement site (GATT Temperature Type 0x2A1D and Open mHealth
/// `measurement_location`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BodySite {
    Axilla,
    /// GATT "body (general)": no specific site.
    Body,
    Ear,
    Finger,
    GastroIntestinalTract,
    Mouth,
    Rectum,
    Toe,
    Tympanum,
    Forehead,
    TemporalArtery,
    Wrist,
    Vagina,
}

impl BodySite {
    /// From the GATT Temperature Type code (1..=9); `None` for reserved codes.
    pub fn from_gatt(code: u8) -> Option<Self> {
        Some(match code {
            1 => Self::Axilla,
            2 => Self::Body,
            3 => Self::Ear,
            4 => Self::Finger,
            5 => Self::GastroIntestinalTract,
            6 => Self::Mouth,
            7 => Self::Rectum,
            8 => Self::Toe,
            9 => Self::Tympanum,
            _ => return None,
        })
    }
}

/// Glucose specimen (GATT Glucose Measurement type nibble, Open mHealth `specimen_source` /
/// `blood_specimen_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Specimen {
    CapillaryWholeBlood,
    CapillaryPlasma,
    VenousWholeBlood,
    VenousPlasma,
    ArterialWholeBlood,
    ArterialPlasma,
    /// Whole blood, site not stated (also Open mHealth "blood glucose" without a specimen).
    UndeterminedWholeBlood,
    UndeterminedPlasma,
    /// Serum (Open mHealth): LOINC codes serum and plasma together.
    Serum,
    InterstitialFluid,
    ControlSolution,
}

impl Specimen {
    /// From the GATT Glucose type nibble (1..=10); `None` for reserved codes.
    pub fn from_gatt(code: u8) -> Option<Self> {
        Some(match code {
            1 => Self::CapillaryWholeBlood,
            2 => Self::CapillaryPlasma,
            3 => Self::VenousWholeBlood,
            4 => Self::VenousPlasma,
            5 => Self::ArterialWholeBlood,
            6 => Self::ArterialPlasma,
            7 => Self::UndeterminedWholeBlood,
            8 => Self::UndeterminedPlasma,
            9 => Self::InterstitialFluid,
            10 => Self::ControlSolution,
            _ => return None,
        })
    }
}

impl Record {
    /// Adds a status, keeping `flags` sorted and deduplicated.
    pub fn add_flag(&mut self, flag: Status) {
        if let Err(pos) = self.flags.binary_search(&flag) {
            self.flags.insert(pos, flag);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_time_rejects_impossible_dates() {
        assert!(DeviceTime::new(2024, 2, 29, 0, 0, 0).is_some());
        assert!(DeviceTime::new(2023, 2, 29, 0, 0, 0).is_none());
        assert!(DeviceTime::new(2024, 13, 1, 0, 0, 0).is_none());
        assert!(DeviceTime::new(0, 1, 1, 0, 0, 0).is_none());
        assert!(DeviceTime::new(2024, 1, 1, 24, 0, 0).is_none());
    }

    #[test]
    fn seconds_since_2000_matches_the_fhir_mapping_example() {
        // fhir-mapping.md §6: 2025-03-14T08:15:30 -> 795255330
        let t = DeviceTime::new(2025, 3, 14, 8, 15, 30).unwrap();
        assert_eq!(t.seconds_since_2000(), 795_255_330);
        assert_eq!(
            DeviceTime::from_naive_unix_seconds(t.naive_unix_seconds()),
            Some(t)
        );
    }

    #[test]
    fn iso_round_trip() {
        let t = parse_iso_local("2026-11-01T08:00:00").unwrap();
        assert_eq!(t.to_string(), "2026-11-01T08:00:00");
    }

    #[test]
    fn flags_stay_sorted_and_unique() {
        let mut r = Record::default();
        r.add_flag(Status::SensorOff);
        r.add_flag(Status::Artifact);
        r.add_flag(Status::Implausible(ReadingType::Spo2));
        r.add_flag(Status::SensorOff);
        assert_eq!(
            r.flags,
            vec![
                Status::Artifact,
                Status::Implausible(ReadingType::Spo2),
                Status::SensorOff
            ]
        );
        let json = serde_json::to_string(&r.flags).unwrap();
        assert_eq!(json, r#"["artifact","implausible_spo2","sensor_off"]"#);
    }
}
