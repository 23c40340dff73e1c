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
//! Supported schemas (namespace `omh`, any version whose body carries the fields used):
//!
//! | schema | body fields | units accepted (→ UCUM) |
//! |---|---|---|
//! | `blood-pressure` | `systolic_blood_pressure`, `diastolic_blood_pressure` | `mmHg`→`mm[Hg]`, `kPa` |
//! | `body-weight` | `body_weight` | `kg`, `g`, `lb`→`[lb_av]`, `oz`→`[oz_av]` |
//! | `heart-rate` | `heart_rate` | `beats/min`, `bpm`, `/min` → `/min` |
//! | `body-temperature` | `body_temperature` | `C`/`Cel`→`Cel`, `F`→`[degF]`, `K`→`Cel` (exact −273.15) |
//! | `oxygen-saturation` | `oxygen_saturation` | `%` |
//!
//! The measurement time is `body.effective_time_frame.date_time`, or the start of
//! `body.effective_time_frame.time_interval`; RFC 3339 with an offset. The decoded [`Record`]
//! carries it as the device's wall-clock time plus [`DataPoint::utc_offset_minutes`].
//!
//! Values are parsed from the JSON number's text into an exact [`Decimal`] (`72.40` stays
//! `72.40` when the caller's serde_json keeps number text).
//!
//! Errors never contain payload content (it is PHI): only the kind and, for a schema or field,
//! its name.

use serde_json::Value;

use crate::record::{DeviceTime, Reading, ReadingType, Record};
use crate::Decimal;

/// A decoded data point.
#[derive(Debug, Clone, PartialEq)]
pub struct DataPoint {
    /// The source's id for this data point (`header.uuid` or `header.id`).
    pub source_id: String,
    /// `namespace:name:version`, e.g. `omh:blood-pressure:3.0`.
    pub schema: String,
    pub record: Record,
    /// The offset of the effective time, in minutes east of UTC (`Z` = 0).
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
    #[error("body field {0} is missing or malformed")]
    BadField(&'static str),
    #[error("unit of {field} is not supported")]
    BadUnit { field: &'static str },
    #[error("effective time is missing or not RFC 3339 with an offset")]
    BadTime,
}

/// Parses one MQTT payload.
pub fn parse(payload: &[u8]) -> Result<DataPoint, OmhError> {
    let v: Value = serde_json::from_slice(payload).map_err(|_| OmhError::NotJson)?;
    parse_value(&v)
}

/// Parses an already-decoded JSON value.
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
    let schema = format!("{namespace}:{name}:{version}");
    if namespace != "omh" {
        return Err(OmhError::UnknownSchema(safe_name(&schema)));
    }
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
                "lb" | "lbs" | "[lb_av]" => "[lb_av]",
                "oz" | "[oz_av]" => "[oz_av]",
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
            if !matches!(u.as_str(), "beats/min" | "bpm" | "/min") {
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
                "C" | "Cel" | "°C" => (t, "Cel"),
                "F" | "[degF]" | "°F" => (t, "[degF]"),
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
            if let Some(loc) = body.get("measurement_location").and_then(Value::as_str) {
                record
                    .fields
                    .insert("measurement_location".into(), Value::String(loc.into()));
            }
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
        }
        _ => return Err(OmhError::UnknownSchema(safe_name(&schema))),
    }

    let (time, time_fraction, offset) = effective_time(body)?;
    record.device_time = Some(time);
    Ok(DataPoint {
        source_id,
        schema,
        record,
        utc_offset_minutes: Some(offset),
        modality,
        time_fraction,
    })
}

/// Schema names come from the payload; keep only a short, printable form for errors/logs.
fn safe_name(s: &str) -> String {
    s.chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, ':' | '-' | '.' | '_'))
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
        "mmHg" | "mm[Hg]" => Ok("mm[Hg]"),
        "kPa" => Ok("kPa"),
        _ => Err(OmhError::BadUnit { field }),
    }
}

fn effective_time(body: &Value) -> Result<(DeviceTime, Option<String>, i16), OmhError> {
    let etf = body.get("effective_time_frame").ok_or(OmhError::BadTime)?;
    let text = etf
        .get("date_time")
        .or_else(|| {
            etf.get("time_interval").and_then(|ti| {
                ti.get("start_date_time")
                    .or_else(|| ti.get("end_date_time"))
            })
        })
        .and_then(Value::as_str)
        .ok_or(OmhError::BadTime)?;
    parse_rfc3339_with_fraction(text).ok_or(OmhError::BadTime)
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
        let bad_unit = BP_1752.replace("\"mmHg\"}", "\"psi\"}");
        assert!(matches!(
            parse(bad_unit.as_bytes()),
            Err(OmhError::BadUnit { .. })
        ));
        let no_zone = BP_1752.replace("08:00:00Z\"}}", "08:00:00\"}}");
        assert_eq!(parse(no_zone.as_bytes()), Err(OmhError::BadTime));
        let string_value = BP_1752.replace("\"value\":121", "\"value\":\"121\"");
        assert_eq!(
            parse(string_value.as_bytes()),
            Err(OmhError::BadField("systolic_blood_pressure"))
        );
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
