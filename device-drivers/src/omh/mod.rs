//! Open mHealth / IEEE 1752.1 data points, as other hubs publish them on MQTT.
//!
//! A data point is `{"header": {...}, "body": {...}}`. Two header forms are in use and both are
//! accepted:
//!
//! - **IEEE 1752.1** (Open mHealth 2.x schemas): `header.uuid`, `header.schema_id`
//!   `{namespace, name, version}`, `header.source_creation_date_time`, `header.modality`.
//! - **Open mHealth 1.x**: `header.id`, `header.schema_id`, `header.creation_date_time`,
//!   `header.acquisition_provenance {source_name, modality, source_creation_date_time}`.
//!
//! # Validation first
//!
//! The body is validated against the **official JSON schema of the version the header names**
//! ([`schema`]: the openmhealth/schemas files, embedded, no network or file access) before
//! anything is read from it. A body the schema rejects is [`OmhError::SchemaInvalid`]: nothing of
//! it becomes a reading. A version we do not ship is [`OmhError::UnknownSchema`].
//!
//! # Supported schemas (namespace `omh`, every published version)
//!
//! | schema | versions | body fields | units accepted (→ UCUM) |
//! |---|---|---|---|
//! | `blood-pressure` | 1.0 2.0 3.0 3.1 4.0 | `systolic_blood_pressure`, `diastolic_blood_pressure` | `mmHg`→`mm[Hg]` |
//! | `body-weight` | 1.0 2.0 3.0 | `body_weight` | `kg`, `g`, `lb`→`[lb_av]`, `oz`→`[oz_av]` |
//! | `heart-rate` | 1.0 1.1 2.0 | `heart_rate` | `beats/min`→`/min` |
//! | `body-temperature` | 1.0 2.0 3.0 4.0 | `body_temperature`, `measurement_location` | `C`→`Cel`, `F`→`[degF]`, `K`→`Cel` (exact −273.15) |
//! | `oxygen-saturation` | 1.0 2.0 | `oxygen_saturation`, `supplemental_oxygen_flow_rate` (L/min) | `%` |
//! | `blood-glucose` | 1.0 2.0 3.0 4.0 | `blood_glucose`, `specimen_source` / `blood_specimen_type`, `temporal_relationship_to_meal` | `mg/dL`, `mmol/L` |
//! | `body-height` | 1.0 2.0 | `body_height` | `cm`, `m`/`mm`→`cm` (exact), `in`→`[in_i]`, `ft`→`[in_i]` (×12) |
//! | `body-mass-index` | 1.0 2.0 3.0 | `body_mass_index` | `kg/m2`, `kg/m^2` → `kg/m2` |
//! | `respiratory-rate` | 1.0 2.0 | `respiratory_rate` | `breaths/min`→`/min` |
//!
//! Units the schema allows but FHIR's vital-signs profiles do not take (a body weight in
//! `Metric Ton`, a height in `km`) are [`OmhError::BadUnit`]. A glucose specimen that is not
//! blood or interstitial fluid (`tears`, `sweat`, `urine`, `saliva`, `breath`) is
//! [`OmhError::UnsupportedSpecimen`].
//!
//! # Time
//!
//! `effective_time_frame.date_time` is a point in time. A `time_interval` (start + end, start or
//! end + duration) becomes [`Record::device_time`] = start and
//! [`MeasurementContext::effective_end`] = end, both on the start's wall clock and offset; it is
//! never reduced to an instant. `date` + `part_of_day` keeps date precision
//! ([`MeasurementContext::date_only`]). Durations in `Mo` and `yr` are calendar months and years;
//! durations below a second or not a whole number of seconds are [`OmhError::BadTime`]. A data
//! point without a time frame (the 1.x schemas allow it) is parsed with `device_time = None`; the
//! agent then keeps it locally and does not upload it.
//!
//! # Statistics
//!
//! `descriptive_statistic` (average, maximum, count...) is carried in
//! [`MeasurementContext::statistic`]. It is not a measurement: the agent holds it as a dead
//! letter unless configured otherwise.
//!
//! Values are parsed from the JSON number's text into an exact [`Decimal`] (`72.40` stays
//! `72.40` when the caller's serde_json keeps number text).
//!
//! Errors never contain payload content (it is PHI): only the kind and, for a schema or field,
//! its name or JSON pointer.

pub mod schema;

use serde_json::Value;

use crate::record::{
    days_in_month, DeviceTime, MeasurementContext, Reading, ReadingType, Record, Specimen,
};
use crate::{BodySite, Decimal};

/// A decoded data point.
#[derive(Debug, Clone, PartialEq)]
pub struct DataPoint {
    /// The source's id for this data point (`header.uuid` or `header.id`).
    pub source_id: String,
    /// `namespace:name:version`, e.g. `omh:blood-pressure:3.0`.
    pub schema: String,
    pub record: Record,
    /// The offset of the effective time, in minutes east of UTC (`Z` = 0). `None` for a date.
    pub utc_offset_minutes: Option<i16>,
    /// `sensed` / `self-reported`, when the header says.
    pub modality: Option<String>,
    /// The fractional-second digits of the effective time, exactly as sent (`"250"`), if any:
    /// part of the reading's identity at the source's own resolution.
    pub time_fraction: Option<String>,
}

/// Why a payload is not an acceptable data point. Carries no payload content.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OmhError {
    #[error("payload is not valid JSON")]
    NotJson,
    #[error("payload is not a data point object with header and body")]
    NotDataPoint,
    #[error("header has no id (header.uuid / header.id)")]
    MissingId,
    #[error("header has no schema_id")]
    MissingSchema,
    #[error("unsupported schema {0}")]
    UnknownSchema(String),
    /// The body does not conform to the official schema of its version.
    #[error("schema_invalid: body does not conform to {schema} at {pointer} ({keyword})")]
    SchemaInvalid {
        schema: String,
        /// JSON pointer into the body (field names and indexes only, never values).
        pointer: String,
        /// The JSON Schema keyword that failed (`enum`, `required`, `format`...).
        keyword: String,
    },
    #[error("body field {0} is missing or malformed")]
    BadField(&'static str),
    #[error("unit of {field} is not supported")]
    BadUnit { field: &'static str },
    #[error("glucose specimen {0} has no supported code")]
    UnsupportedSpecimen(String),
    #[error(
        "effective time is missing or not RFC 3339 with an offset, or its interval is not usable"
    )]
    BadTime,
}

/// Parses one MQTT payload.
///
/// # Errors
/// See [`OmhError`]; a body that fails its schema is [`OmhError::SchemaInvalid`].
pub fn parse(payload: &[u8]) -> Result<DataPoint, OmhError> {
    let v: Value = serde_json::from_slice(payload).map_err(|_| OmhError::NotJson)?;
    parse_value(&v)
}

/// Parses an already-decoded JSON value.
///
/// # Errors
/// As [`parse`].
pub fn parse_value(v: &Value) -> Result<DataPoint, OmhError> {
    let header = v.get("header").filter(|h| h.is_object());
    let body = v.get("body").filter(|b| b.is_object());
    let (Some(header), Some(body)) = (header, body) else {
        return Err(OmhError::NotDataPoint);
    };
    let source_id = header
        .get("uuid")
        .or_else(|| header.get("id"))
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty() && s.len() <= 128)
        .ok_or(OmhError::MissingId)?
        .to_string();
    let schema_id = header.get("schema_id").ok_or(OmhError::MissingSchema)?;
    let namespace = schema_id
        .get("namespace")
        .and_then(Value::as_str)
        .ok_or(OmhError::MissingSchema)?;
    let name = schema_id
        .get("name")
        .and_then(Value::as_str)
        .ok_or(OmhError::MissingSchema)?;
    let version = schema_id
        .get("version")
        .and_then(|v| match v {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        })
        .unwrap_or_default();
    let schema_name = format!("{namespace}:{name}:{version}");
    if namespace != "omh" {
        return Err(OmhError::UnknownSchema(safe_name(&schema_name)));
    }
    // Validation before anything else.
    schema::validate(name, &version, body).map_err(|e| match e {
        schema::SchemaError::Unknown => OmhError::UnknownSchema(safe_name(&schema_name)),
        schema::SchemaError::Invalid { pointer, keyword } => OmhError::SchemaInvalid {
            schema: safe_name(&schema_name),
            pointer,
            keyword,
        },
    })?;
    let modality = header
        .get("modality")
        .or_else(|| {
            header
                .get("acquisition_provenance")
                .and_then(|p| p.get("modality"))
        })
        .and_then(Value::as_str)
        .map(str::to_string);

    let mut record = Record::default();
    let mut ctx = MeasurementContext::default();
    match name {
        "blood-pressure" => {
            let (sys, su) = quantity(body, "systolic_blood_pressure")?;
            let (dia, du) = quantity(body, "diastolic_blood_pressure")?;
            let unit = pressure_unit(&su, "systolic_blood_pressure")?;
            if pressure_unit(&du, "diastolic_blood_pressure")? != unit {
                return Err(OmhError::BadUnit {
                    field: "diastolic_blood_pressure",
                });
            }
            record
                .readings
                .push(Reading::new(ReadingType::SystolicPressure, sys, unit));
            record
                .readings
                .push(Reading::new(ReadingType::DiastolicPressure, dia, unit));
        }
        "body-weight" => {
            let (w, u) = quantity(body, "body_weight")?;
            let unit = match u.as_str() {
                "kg" => "kg",
                "g" => "g",
                "lb" => "[lb_av]",
                "oz" => "[oz_av]",
                _ => {
                    return Err(OmhError::BadUnit {
                        field: "body_weight",
                    })
                }
            };
            record
                .readings
                .push(Reading::new(ReadingType::BodyWeight, w, unit));
        }
        "heart-rate" => {
            let (hr, u) = quantity(body, "heart_rate")?;
            if u != "beats/min" {
                return Err(OmhError::BadUnit {
                    field: "heart_rate",
                });
            }
            record
                .readings
                .push(Reading::new(ReadingType::HeartRate, hr, "/min"));
        }
        "body-temperature" => {
            let (t, u) = quantity(body, "body_temperature")?;
            let (value, unit) = match u.as_str() {
                "C" => (t, "Cel"),
                "F" => (t, "[degF]"),
                "K" => (
                    t.checked_add(Decimal::new(-27315, -2))
                        .ok_or(OmhError::BadField("body_temperature"))?,
                    "Cel",
                ),
                _ => {
                    return Err(OmhError::BadUnit {
                        field: "body_temperature",
                    })
                }
            };
            record
                .readings
                .push(Reading::new(ReadingType::BodyTemperature, value, unit));
            ctx.body_site = match body.get("measurement_location").and_then(Value::as_str) {
                None => None,
                Some("axillary") => Some(BodySite::Axilla),
                Some("finger") => Some(BodySite::Finger),
                Some("forehead") => Some(BodySite::Forehead),
                Some("oral") => Some(BodySite::Mouth),
                Some("rectal") => Some(BodySite::Rectum),
                Some("temporal artery") => Some(BodySite::TemporalArtery),
                Some("toe") => Some(BodySite::Toe),
                Some("tympanic") => Some(BodySite::Tympanum),
                Some("wrist") => Some(BodySite::Wrist),
                Some("vagina") => Some(BodySite::Vagina),
                Some(_) => return Err(OmhError::BadField("measurement_location")),
            };
        }
        "oxygen-saturation" => {
            let (s, u) = quantity(body, "oxygen_saturation")?;
            if u != "%" {
                return Err(OmhError::BadUnit {
                    field: "oxygen_saturation",
                });
            }
            record
                .readings
                .push(Reading::new(ReadingType::Spo2, s, "%"));
            if body.get("supplemental_oxygen_flow_rate").is_some() {
                let (flow, fu) = quantity(body, "supplemental_oxygen_flow_rate")?;
                if fu != "L/min" {
                    return Err(OmhError::BadUnit {
                        field: "supplemental_oxygen_flow_rate",
                    });
                }
                ctx.supplemental_oxygen_l_min = Some(flow);
            }
        }
        "blood-glucose" => {
            let (g, u) = quantity(body, "blood_glucose")?;
            let unit = match u.as_str() {
                "mg/dL" => "mg/dL",
                "mmol/L" => "mmol/L",
                _ => {
                    return Err(OmhError::BadUnit {
                        field: "blood_glucose",
                    })
                }
            };
            record
                .readings
                .push(Reading::new(ReadingType::BloodGlucose, g, unit));
            let source = body
                .get("specimen_source")
                .or_else(|| body.get("blood_specimen_type"))
                .and_then(Value::as_str);
            // The schema is *blood* glucose: without a specimen it is blood, site not stated.
            ctx.specimen = Some(match source {
                None | Some("whole blood") => Specimen::UndeterminedWholeBlood,
                Some("capillary blood") => Specimen::CapillaryWholeBlood,
                Some("plasma") => Specimen::UndeterminedPlasma,
                Some("serum") => Specimen::Serum,
                Some("interstitial fluid") => Specimen::InterstitialFluid,
                Some(other) => return Err(OmhError::UnsupportedSpecimen(safe_name(other))),
            });
            ctx.meal = body
                .get("temporal_relationship_to_meal")
                .and_then(Value::as_str)
                .map(str::to_string);
        }
        "body-height" => {
            let (h, u) = quantity(body, "body_height")?;
            let (value, unit) = match u.as_str() {
                "cm" => (h, "cm"),
                "m" => (shift(h, 2), "cm"),
                "mm" => (shift(h, -1), "cm"),
                "in" => (h, "[in_i]"),
                "ft" => (
                    h.checked_mul(Decimal::from_int(12))
                        .ok_or(OmhError::BadField("body_height"))?,
                    "[in_i]",
                ),
                _ => {
                    return Err(OmhError::BadUnit {
                        field: "body_height",
                    })
                }
            };
            record
                .readings
                .push(Reading::new(ReadingType::BodyHeight, value, unit));
        }
        "body-mass-index" => {
            let (b, u) = quantity(body, "body_mass_index")?;
            if !matches!(u.as_str(), "kg/m2" | "kg/m^2") {
                return Err(OmhError::BadUnit {
                    field: "body_mass_index",
                });
            }
            record
                .readings
                .push(Reading::new(ReadingType::Bmi, b, "kg/m2"));
        }
        "respiratory-rate" => {
            let (r, u) = quantity(body, "respiratory_rate")?;
            if u != "breaths/min" {
                return Err(OmhError::BadUnit {
                    field: "respiratory_rate",
                });
            }
            record
                .readings
                .push(Reading::new(ReadingType::RespiratoryRate, r, "/min"));
        }
        _ => return Err(OmhError::UnknownSchema(safe_name(&schema_name))),
    }
    ctx.statistic = body
        .get("descriptive_statistic")
        .and_then(Value::as_str)
        .map(safe_name);

    let mut utc_offset_minutes = None;
    let mut time_fraction = None;
    if let Some(etf) = body.get("effective_time_frame") {
        match time_frame(etf) {
            Ok(frame) => {
                record.device_time = Some(frame.start);
                utc_offset_minutes = frame.offset;
                time_fraction = frame.fraction;
                ctx.effective_end = frame.end;
                ctx.date_only = frame.date_only;
            }
            // A statistic is never uploaded; its (schema-valid) interval may still be unusable
            // (the official body-temperature 4.0 example ends before it starts). Keep it with
            // no time rather than refuse it as a bad time: it is held as a statistic.
            Err(_) if ctx.statistic.is_some() => {}
            Err(e) => return Err(e),
        }
    }
    record.context = Box::new(ctx);
    Ok(DataPoint {
        source_id,
        schema: safe_name(&schema_name),
        record,
        utc_offset_minutes,
        modality,
        time_fraction,
    })
}

/// A parsed `effective_time_frame`.
struct Frame {
    start: DeviceTime,
    fraction: Option<String>,
    offset: Option<i16>,
    end: Option<DeviceTime>,
    date_only: bool,
}

fn time_frame(etf: &Value) -> Result<Frame, OmhError> {
    if let Some(dt) = etf.get("date_time").and_then(Value::as_str) {
        let (start, fraction, offset) = parse_rfc3339_with_fraction(dt).ok_or(OmhError::BadTime)?;
        return Ok(Frame {
            start,
            fraction,
            offset: Some(offset),
            end: None,
            date_only: false,
        });
    }
    let ti = etf.get("time_interval").ok_or(OmhError::BadTime)?;
    if let Some(date) = ti.get("date").and_then(Value::as_str) {
        let start =
            crate::record::parse_iso_local(&format!("{date}T00:00:00")).ok_or(OmhError::BadTime)?;
        return Ok(Frame {
            start,
            fraction: None,
            offset: None,
            end: None,
            date_only: true,
        });
    }
    let at = |k: &str| -> Result<Option<(DeviceTime, Option<String>, i16)>, OmhError> {
        match ti.get(k) {
            None => Ok(None),
            Some(v) => v
                .as_str()
                .and_then(parse_rfc3339_with_fraction)
                .map(Some)
                .ok_or(OmhError::BadTime),
        }
    };
    let start = at("start_date_time")?;
    let end = at("end_date_time")?;
    let duration = match ti.get("duration") {
        None => None,
        Some(d) => Some(duration(d)?),
    };
    // Every instant as (naive seconds on its own wall clock - offset) = UTC seconds.
    let utc =
        |t: &(DeviceTime, Option<String>, i16)| t.0.naive_unix_seconds() - i64::from(t.2) * 60;
    let (start, end_utc) = match (start, end, duration) {
        (Some(s), Some(e), _) => {
            let e = utc(&e);
            (s, e)
        }
        (Some(s), None, Some(d)) => {
            let e =
                d.add_to(s.0).ok_or(OmhError::BadTime)?.naive_unix_seconds() - i64::from(s.2) * 60;
            (s, e)
        }
        (None, Some(e), Some(d)) => {
            let st = d.subtract_from(e.0).ok_or(OmhError::BadTime)?;
            let e_utc = utc(&e);
            ((st, None, e.2), e_utc)
        }
        _ => return Err(OmhError::BadTime),
    };
    let start_utc = utc(&start);
    if end_utc < start_utc {
        return Err(OmhError::BadTime);
    }
    let end_local = DeviceTime::from_naive_unix_seconds(end_utc + i64::from(start.2) * 60)
        .ok_or(OmhError::BadTime)?;
    Ok(Frame {
        start: start.0,
        fraction: start.1,
        offset: Some(start.2),
        end: Some(end_local),
        date_only: false,
    })
}

/// A duration: whole seconds, or calendar months.
enum Duration {
    Seconds(i64),
    Months(i64),
}

impl Duration {
    fn add_to(&self, t: DeviceTime) -> Option<DeviceTime> {
        match self {
            Duration::Seconds(s) => DeviceTime::from_naive_unix_seconds(t.naive_unix_seconds() + s),
            Duration::Months(m) => add_months(t, *m),
        }
    }

    fn subtract_from(&self, t: DeviceTime) -> Option<DeviceTime> {
        match self {
            Duration::Seconds(s) => DeviceTime::from_naive_unix_seconds(t.naive_unix_seconds() - s),
            Duration::Months(m) => add_months(t, -m),
        }
    }
}

fn add_months(t: DeviceTime, months: i64) -> Option<DeviceTime> {
    let total = i64::from(t.year) * 12 + i64::from(t.month) - 1 + months;
    let year = u16::try_from(total.div_euclid(12)).ok()?;
    let month = u8::try_from(total.rem_euclid(12) + 1).ok()?;
    let day = t.day.min(days_in_month(year, month));
    DeviceTime::new(year, month, day, t.hour, t.minute, t.second)
}

fn duration(d: &Value) -> Result<Duration, OmhError> {
    let value = match d.get("value") {
        Some(Value::Number(n)) => n
            .to_string()
            .parse::<Decimal>()
            .map_err(|_| OmhError::BadTime)?,
        _ => return Err(OmhError::BadTime),
    };
    let unit = d
        .get("unit")
        .and_then(Value::as_str)
        .ok_or(OmhError::BadTime)?;
    let whole = |factor: i64| -> Result<i64, OmhError> {
        let v = value
            .checked_mul(Decimal::from_int(factor))
            .ok_or(OmhError::BadTime)?;
        v.to_integer().ok_or(OmhError::BadTime)
    };
    let d = match unit {
        "sec" => Duration::Seconds(whole(1)?),
        "min" => Duration::Seconds(whole(60)?),
        "h" => Duration::Seconds(whole(3600)?),
        "d" => Duration::Seconds(whole(86_400)?),
        "wk" => Duration::Seconds(whole(604_800)?),
        "Mo" => Duration::Months(whole(1)?),
        "yr" => Duration::Months(whole(12)?),
        _ => return Err(OmhError::BadTime),
    };
    match d {
        Duration::Seconds(s) | Duration::Months(s) if s < 0 => Err(OmhError::BadTime),
        d => Ok(d),
    }
}

/// `d × 10^n` exactly (exponent shift).
fn shift(d: Decimal, n: i16) -> Decimal {
    Decimal::new(d.mantissa, d.exponent.saturating_add(n))
}

/// Schema names come from the payload; keep only a short, printable form for errors/logs.
fn safe_name(s: &str) -> String {
    s.chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, ':' | '-' | '.' | '_' | ' '))
        .take(64)
        .collect()
}

fn quantity(body: &Value, field: &'static str) -> Result<(Decimal, String), OmhError> {
    let q = body.get(field).ok_or(OmhError::BadField(field))?;
    let value = match q.get("value") {
        Some(Value::Number(n)) => n
            .to_string()
            .parse::<Decimal>()
            .map_err(|_| OmhError::BadField(field))?,
        _ => return Err(OmhError::BadField(field)),
    };
    let unit = q
        .get("unit")
        .and_then(Value::as_str)
        .ok_or(OmhError::BadUnit { field })?;
    Ok((value, unit.to_string()))
}

fn pressure_unit(u: &str, field: &'static str) -> Result<&'static str, OmhError> {
    match u {
        "mmHg" => Ok("mm[Hg]"),
        _ => Err(OmhError::BadUnit { field }),
    }
}

/// Parses RFC 3339 `YYYY-MM-DDTHH:MM:SS[.frac](Z|±HH:MM)` into wall-clock time and offset
/// (minutes), dropping fractional seconds (see [`parse_rfc3339_with_fraction`]).
pub fn parse_rfc3339(s: &str) -> Option<(DeviceTime, i16)> {
    parse_rfc3339_with_fraction(s).map(|(t, _, o)| (t, o))
}

/// Parses RFC 3339 into wall-clock time (whole seconds), the fractional-second digits exactly
/// as written (at most 9), and the offset in minutes east of UTC.
pub fn parse_rfc3339_with_fraction(s: &str) -> Option<(DeviceTime, Option<String>, i16)> {
    let base = s.get(..19)?;
    let time = crate::record::parse_iso_local(base)?;
    let mut rest = s.get(19..)?;
    let mut fraction = None;
    if let Some(r) = rest.strip_prefix('.') {
        let digits = r.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 || digits > 9 {
            return None;
        }
        fraction = Some(r.get(..digits)?.to_string());
        rest = r.get(digits..)?;
    }
    let offset = match rest {
        "Z" | "z" => 0,
        _ => {
            let sign = match rest.as_bytes().first()? {
                b'+' => 1i16,
                b'-' => -1i16,
                _ => return None,
            };
            let hh: i16 = rest.get(1..3)?.parse().ok()?;
            if rest.get(3..4)? != ":" || rest.len() != 6 {
                return None;
            }
            let mm: i16 = rest.get(4..6)?.parse().ok()?;
            if hh > 23 || mm > 59 {
                return None;
            }
            sign * (hh * 60 + mm)
        }
    };
    Some((time, fraction, offset))
}

#[cfg(test)]
mod tests {
    use super::*;

    const BP_1752: &str = r#"{"header":{"uuid":"5f1c0a4e-0000-4000-8000-000000000001","schema_id":{"namespace":"omh","name":"blood-pressure","version":"3.0"},"source_creation_date_time":"2026-11-01T08:00:00Z","modality":"sensed"},"body":{"systolic_blood_pressure":{"value":121,"unit":"mmHg"},"diastolic_blood_pressure":{"value":79,"unit":"mmHg"},"effective_time_frame":{"date_time":"2026-11-01T08:00:00Z"}}}"#;

    #[test]
    fn parses_the_issue_blood_pressure_example() {
        let dp = parse(BP_1752.as_bytes()).unwrap();
        assert_eq!(dp.source_id, "5f1c0a4e-0000-4000-8000-000000000001");
        assert_eq!(dp.schema, "omh:blood-pressure:3.0");
        assert_eq!(dp.record.readings.len(), 2);
        assert_eq!(dp.record.readings[0].kind, ReadingType::SystolicPressure);
        assert_eq!(dp.record.readings[0].value, Decimal::from_int(121));
        assert_eq!(dp.record.readings[0].unit, "mm[Hg]");
        assert_eq!(
            dp.record.device_time.unwrap().to_string(),
            "2026-11-01T08:00:00"
        );
        assert_eq!(dp.utc_offset_minutes, Some(0));
        assert_eq!(dp.modality.as_deref(), Some("sensed"));
    }

    #[test]
    fn parses_omh_1x_header_and_weight_in_pounds() {
        let p = r#"{"header":{"id":"abc","creation_date_time":"2026-11-01T08:00:00Z","schema_id":{"namespace":"omh","name":"body-weight","version":"1.0"},"acquisition_provenance":{"source_name":"x","modality":"sensed"}},"body":{"body_weight":{"value":160.5,"unit":"lb"},"effective_time_frame":{"date_time":"2026-11-01T09:30:00+01:00"}}}"#;
        let dp = parse(p.as_bytes()).unwrap();
        assert_eq!(dp.source_id, "abc");
        assert_eq!(dp.record.readings[0].unit, "[lb_av]");
        assert_eq!(dp.record.readings[0].value, Decimal::new(1605, -1));
        assert_eq!(dp.utc_offset_minutes, Some(60));
        assert_eq!(dp.modality.as_deref(), Some("sensed"));
    }

    #[test]
    fn kelvin_is_converted_exactly() {
        let p = r#"{"header":{"uuid":"t","schema_id":{"namespace":"omh","name":"body-temperature","version":"2.0"}},"body":{"body_temperature":{"value":310.15,"unit":"K"},"effective_time_frame":{"date_time":"2026-11-01T08:00:00-05:00"}}}"#;
        let dp = parse(p.as_bytes()).unwrap();
        assert_eq!(dp.record.readings[0].value.to_string(), "37.00");
        assert_eq!(dp.utc_offset_minutes, Some(-300));
    }

    #[test]
    fn rejects_what_it_cannot_use_without_echoing_content() {
        assert_eq!(parse(b"not json"), Err(OmhError::NotJson));
        assert_eq!(parse(b"[1,2]"), Err(OmhError::NotDataPoint));
        let unknown = BP_1752.replace("blood-pressure", "step-count");
        assert!(matches!(
            parse(unknown.as_bytes()),
            Err(OmhError::UnknownSchema(_))
        ));
        // What the official schema refuses is refused before anything is read: by pointer and
        // keyword, never by value.
        let bad_unit = BP_1752.replace("\"mmHg\"}", "\"psi\"}");
        let e = parse(bad_unit.as_bytes()).unwrap_err();
        assert!(matches!(e, OmhError::SchemaInvalid { .. }), "{e:?}");
        assert!(!e.to_string().contains("psi"), "{e}");
        let no_zone = BP_1752.replace("08:00:00Z\"}}", "08:00:00\"}}");
        assert!(matches!(
            parse(no_zone.as_bytes()),
            Err(OmhError::SchemaInvalid { .. })
        ));
        let string_value = BP_1752.replace("\"value\":121", "\"value\":\"121\"");
        assert!(matches!(
            parse(string_value.as_bytes()),
            Err(OmhError::SchemaInvalid { .. })
        ));
        let bad_version = BP_1752.replace("\"3.0\"", "\"3.7\"");
        assert!(matches!(
            parse(bad_version.as_bytes()),
            Err(OmhError::UnknownSchema(_))
        ));
    }

    fn point(name: &str, version: &str, body: &str) -> Result<DataPoint, OmhError> {
        parse(
            format!(
                r#"{{"header":{{"uuid":"u","schema_id":{{"namespace":"omh","name":"{name}","version":"{version}"}}}},"body":{body}}}"#
            )
            .as_bytes(),
        )
    }

    #[test]
    fn an_interval_is_a_period_on_the_start_clock_never_an_instant() {
        let dp = point(
            "body-weight",
            "2.0",
            r#"{"body_weight":{"value":70.5,"unit":"kg"},"effective_time_frame":{"time_interval":{"start_date_time":"2020-02-05T09:45:00-08:00","end_date_time":"2020-03-05T19:40:00Z"}}}"#,
        )
        .unwrap();
        assert_eq!(
            dp.record.device_time.unwrap().to_string(),
            "2020-02-05T09:45:00"
        );
        assert_eq!(dp.utc_offset_minutes, Some(-480));
        // 19:40Z is 11:40 at -08:00.
        assert_eq!(
            dp.record.context.effective_end.unwrap().to_string(),
            "2020-03-05T11:40:00"
        );
    }

    #[test]
    fn durations_in_months_are_calendar_months_and_end_plus_duration_works() {
        let dp = point(
            "body-weight",
            "2.0",
            r#"{"body_weight":{"value":70,"unit":"kg"},"effective_time_frame":{"time_interval":{"start_date_time":"2020-01-31T08:00:00Z","duration":{"value":4,"unit":"Mo"}}}}"#,
        )
        .unwrap();
        assert_eq!(
            dp.record.context.effective_end.unwrap().to_string(),
            "2020-05-31T08:00:00"
        );
        let dp = point(
            "heart-rate",
            "1.0",
            r#"{"heart_rate":{"value":60,"unit":"beats/min"},"effective_time_frame":{"time_interval":{"end_date_time":"2020-01-01T01:00:00Z","duration":{"value":1.5,"unit":"h"}}}}"#,
        )
        .unwrap();
        assert_eq!(
            dp.record.device_time.unwrap().to_string(),
            "2019-12-31T23:30:00"
        );
        let sub_second = point(
            "heart-rate",
            "1.0",
            r#"{"heart_rate":{"value":60,"unit":"beats/min"},"effective_time_frame":{"time_interval":{"end_date_time":"2020-01-01T01:00:00Z","duration":{"value":5,"unit":"ms"}}}}"#,
        );
        assert_eq!(sub_second, Err(OmhError::BadTime));
    }

    #[test]
    fn a_date_with_part_of_day_keeps_date_precision() {
        let dp = point(
            "blood-pressure",
            "1.0",
            r#"{"systolic_blood_pressure":{"value":160,"unit":"mmHg"},"diastolic_blood_pressure":{"value":60,"unit":"mmHg"},"effective_time_frame":{"time_interval":{"date":"2013-02-05","part_of_day":"evening"}}}"#,
        )
        .unwrap();
        assert!(dp.record.context.date_only);
        assert_eq!(dp.utc_offset_minutes, None);
        assert_eq!(
            dp.record.device_time.unwrap().to_string(),
            "2013-02-05T00:00:00"
        );
    }

    #[test]
    fn supplemental_oxygen_statistic_specimen_meal_and_site_are_kept_typed() {
        let dp = point(
            "oxygen-saturation",
            "2.0",
            r#"{"oxygen_saturation":{"value":95,"unit":"%"},"effective_time_frame":{"date_time":"2013-02-05T07:25:00Z"},"supplemental_oxygen_flow_rate":{"value":2.5,"unit":"L/min"}}"#,
        )
        .unwrap();
        assert_eq!(
            dp.record.context.supplemental_oxygen_l_min,
            Some(Decimal::new(25, -1))
        );
        let dp = point(
            "blood-glucose",
            "3.0",
            r#"{"blood_glucose":{"unit":"mmol/L","value":5.40},"effective_time_frame":{"date_time":"2013-02-05T07:25:00Z"},"specimen_source":"capillary blood","temporal_relationship_to_meal":"fasting","descriptive_statistic":"average"}"#,
        )
        .unwrap();
        let c = &dp.record.context;
        assert_eq!(c.specimen, Some(Specimen::CapillaryWholeBlood));
        assert_eq!(c.meal.as_deref(), Some("fasting"));
        assert_eq!(c.statistic.as_deref(), Some("average"));
        assert_eq!(dp.record.readings[0].value.to_string(), "5.40");
        let dp = point(
            "body-temperature",
            "3.0",
            r#"{"body_temperature":{"value":37.2,"unit":"C"},"effective_time_frame":{"date_time":"2013-02-05T07:25:00Z"},"measurement_location":"tympanic"}"#,
        )
        .unwrap();
        assert_eq!(dp.record.context.body_site, Some(BodySite::Tympanum));
        let tears = point(
            "blood-glucose",
            "4.0",
            r#"{"blood_glucose":{"unit":"mg/dL","value":95},"effective_time_frame":{"date_time":"2013-02-05T07:25:00Z"},"specimen_source":"tears"}"#,
        );
        assert!(matches!(tears, Err(OmhError::UnsupportedSpecimen(_))));
    }

    #[test]
    fn rfc3339_variants() {
        assert_eq!(parse_rfc3339("2026-11-01T08:00:00.123Z").unwrap().1, 0);
        assert_eq!(
            parse_rfc3339_with_fraction("2026-11-01T08:00:00.120-05:00")
                .unwrap()
                .1
                .as_deref(),
            Some("120")
        );
        assert!(parse_rfc3339("2026-11-01T08:00:00.1234567890Z").is_none());
        assert_eq!(parse_rfc3339("2026-11-01T08:00:00+05:30").unwrap().1, 330);
        assert!(parse_rfc3339("2026-11-01T08:00:00").is_none());
        assert!(parse_rfc3339("2026-02-30T08:00:00Z").is_none());
        assert!(parse_rfc3339("2026-11-01T08:00:00+5:30").is_none());
    }
}
