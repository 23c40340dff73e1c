//! Reading identity: the two names a reading has, computed once at capture (in the pipeline) and
//! never recomputed.
//!
//! - [`ReadingId`]: the store's dedup key, a SHA-256 over the reading's *content* (its FHIR
//!   identifier, its values and its device status), not over its arrival. The same reading
//!   delivered twice (MQTT redelivery, a cuff replaying its memory) has the same id and is kept
//!   once.
//! - The FHIR Observation identifier ([`observation_identifier`]), fhir-mapping.md §5.1:
//!
//!   ```text
//!   <device>-<patient>-<type>-<timestamp>[<+N|-N>][..<duration s>]   (sha256-<hex> if longer than 128)
//!   ```
//!
//!   `<device>`: the PHD EUI-64 (16 hex digits), else the Bluetooth address (12 hex digits), else
//!   a gateway-local name; for an Open mHealth / IEEE 1752.1 data point, its `header.uuid` (the
//!   data point's identity by definition, so two readings a hub sends on one topic never share
//!   an identifier). `<patient>`: `<identifier value>-<identifier system>` or the logical id.
//!   `<type>`: the MDC code in decimal. `<timestamp>`: the **raw device** time as seconds since
//!   2000-01-01T00:00:00 on the device's own clock, at the device's own resolution (a source
//!   with sub-second time keeps its digits: `690897390.567`), followed by the offset the device
//!   reported, in minutes east of UTC (`+60`, `-300`, `+0` for `Z`); without a device time, `G`
//!   and the gateway's reception time (UTC, milliseconds when non-zero). The offset is in
//!   minutes because that is the resolution every source we read reports it in (RFC 3339
//!   offsets; GATT Local Time Information is 15-minute steps).
//!
//! Two readings with one identifier and different content are a *collision*: the store keeps
//! the later one as a dead letter (`identifier_collision`), never merging or dropping either
//! (see [`crate::store`]).

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::reading::PatientRef;

/// Identifiers longer than this are replaced by `sha256-<hex>` (fhir-mapping.md §5.1).
pub const MAX_IDENTIFIER_CHARS: usize = 128;

/// Seconds from the Unix epoch to 2000-01-01T00:00:00Z.
const EPOCH_2000: i64 = 946_684_800;

/// A reading's content id (SHA-256), the store's dedup key. Not PHI by itself, but derived from
/// it: logs show only [`ReadingId::short`].
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ReadingId([u8; 32]);

impl ReadingId {
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The first 12 hex digits, for log lines.
    pub fn short(&self) -> String {
        hex::encode(self.0.get(..6).unwrap_or(&self.0))
    }

    /// Parses 64 hex digits.
    pub fn from_hex(s: &str) -> Option<Self> {
        let v = hex::decode(s).ok()?;
        <[u8; 32]>::try_from(v.as_slice()).ok().map(Self)
    }

    /// The content id of a reading: SHA-256 over its observation identifier, its values (type,
    /// exact decimal, unit) and its status, in order. Arrival time is deliberately not part of it.
    pub fn of_content<'a>(
        observation_identifier: &str,
        components: &[device_drivers::Reading],
        statuses: impl IntoIterator<Item = &'a str>,
    ) -> Self {
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
        for s in statuses {
            ctx.update(b"\0#");
            ctx.update(s.as_bytes());
        }
        let mut out = [0u8; 32];
        out.copy_from_slice(ctx.finish().as_ref());
        Self(out)
    }
}

impl fmt::Display for ReadingId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for ReadingId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ReadingId({})", self.short())
    }
}

/// The `<timestamp>` part of the observation identifier.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IdTimestamp {
    /// The device's own clock.
    Device {
        /// Whole seconds since 2000-01-01T00:00:00 on the device's clock (wall clock, no zone).
        seconds_since_2000: i64,
        /// Fractional-second digits exactly as the device sent them (`"567"`), if any.
        fraction: Option<String>,
        /// The offset the device reported with its time, minutes east of UTC.
        utc_offset_minutes: Option<i16>,
    },
    /// No device time: the gateway's reception time.
    Gateway(DateTime<Utc>),
}

impl fmt::Display for IdTimestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IdTimestamp::Device {
                seconds_since_2000,
                fraction,
                utc_offset_minutes,
            } => {
                write!(f, "{seconds_since_2000}")?;
                if let Some(frac) = fraction.as_deref().filter(|d| !d.is_empty()) {
                    write!(f, ".{frac}")?;
                }
                if let Some(off) = utc_offset_minutes {
                    write!(
                        f,
                        "{}{}",
                        if *off < 0 { '-' } else { '+' },
                        off.unsigned_abs()
                    )?;
                }
                Ok(())
            }
            IdTimestamp::Gateway(t) => {
                let secs = t.timestamp() - EPOCH_2000;
                match t.timestamp_subsec_millis() {
                    0 => write!(f, "G{secs}"),
                    ms => write!(f, "G{secs}.{ms:03}"),
                }
            }
        }
    }
}

/// The FHIR Observation identifier value (see the module docs).
pub fn observation_identifier(
    device: &str,
    patient: &PatientRef,
    mdc_code: u32,
    timestamp: &IdTimestamp,
) -> String {
    observation_identifier_for_period(device, patient, mdc_code, timestamp, None)
}

/// The identifier of a reading with an `effectivePeriod`: §5.1's `<timestamp>..<duration>`
/// form, the duration in whole seconds (`795255330..86400`). `None`: a point in time, the same
/// value as [`observation_identifier`].
pub fn observation_identifier_for_period(
    device: &str,
    patient: &PatientRef,
    mdc_code: u32,
    timestamp: &IdTimestamp,
    duration_seconds: Option<i64>,
) -> String {
    let period = duration_seconds.map_or(String::new(), |d| format!("..{d}"));
    let value = format!(
        "{device}-{}-{mdc_code}-{timestamp}{period}",
        patient.id_component()
    );
    if value.chars().count() > MAX_IDENTIFIER_CHARS {
        let digest = ring::digest::digest(&ring::digest::SHA256, value.as_bytes());
        format!("sha256-{}", hex::encode(digest.as_ref()))
    } else {
        value
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use device_drivers::{Decimal, ReadingType};

    fn patient() -> PatientRef {
        "https://rpm.example.org/fhir/sid/patient-mrn|RPM-000123"
            .parse()
            .unwrap()
    }

    fn device_ts(secs: i64) -> IdTimestamp {
        IdTimestamp::Device {
            seconds_since_2000: secs,
            fraction: None,
            utc_offset_minutes: None,
        }
    }

    #[test]
    fn reproduces_the_mapping_sheet_example() {
        assert_eq!(
            observation_identifier("00091FFFFE801234", &patient(), 150020, &device_ts(795255330)),
            "00091FFFFE801234-RPM-000123-https://rpm.example.org/fhir/sid/patient-mrn-150020-795255330"
        );
    }

    #[test]
    fn keeps_the_device_resolution_and_its_offset() {
        let ts = IdTimestamp::Device {
            seconds_since_2000: 690897390,
            fraction: Some("567".into()),
            utc_offset_minutes: Some(-300),
        };
        assert_eq!(ts.to_string(), "690897390.567-300");
        let utc = IdTimestamp::Device {
            seconds_since_2000: 1,
            fraction: Some("50".into()),
            utc_offset_minutes: Some(0),
        };
        assert_eq!(utc.to_string(), "1.50+0");
        // Different sub-second times are different identifiers.
        let a = IdTimestamp::Device {
            seconds_since_2000: 1,
            fraction: Some("1".into()),
            utc_offset_minutes: None,
        };
        assert_ne!(
            observation_identifier("d", &patient(), 1, &a),
            observation_identifier("d", &patient(), 1, &device_ts(1))
        );
    }

    #[test]
    fn gateway_time_is_prefixed_with_g_and_keeps_milliseconds() {
        let t = Utc.with_ymd_and_hms(2026, 11, 23, 10, 0, 0).unwrap();
        assert_eq!(IdTimestamp::Gateway(t).to_string(), "G848743200");
        let t = t + chrono::Duration::milliseconds(7);
        assert_eq!(IdTimestamp::Gateway(t).to_string(), "G848743200.007");
    }

    #[test]
    fn a_period_appends_its_duration_in_seconds() {
        assert_eq!(
            observation_identifier_for_period(
                "d",
                &patient(),
                188736,
                &device_ts(795255330),
                Some(86400)
            ),
            format!("d-{}-188736-795255330..86400", patient().id_component())
        );
        assert_eq!(
            observation_identifier_for_period("d", &patient(), 1, &device_ts(1), None),
            observation_identifier("d", &patient(), 1, &device_ts(1))
        );
    }

    #[test]
    fn long_identifiers_are_hashed() {
        let long = "x".repeat(200);
        let id = observation_identifier(&long, &patient(), 1, &device_ts(1));
        assert!(id.starts_with("sha256-") && id.len() == 7 + 64, "{id}");
    }

    #[test]
    fn content_id_ignores_nothing_that_matters() {
        let c = |v: i64| {
            vec![device_drivers::Reading::new(
                ReadingType::BodyWeight,
                Decimal::from_int(v),
                "kg",
            )]
        };
        let a = ReadingId::of_content("i", &c(70), ["x"]);
        assert_eq!(a, ReadingId::of_content("i", &c(70), ["x"]));
        assert_ne!(a, ReadingId::of_content("i", &c(71), ["x"]));
        assert_ne!(a, ReadingId::of_content("j", &c(70), ["x"]));
        assert_ne!(a, ReadingId::of_content("i", &c(70), ["y"]));
        assert_eq!(ReadingId::from_hex(&a.to_string()), Some(a));
        assert_eq!(a.short().len(), 12);
    }
}
