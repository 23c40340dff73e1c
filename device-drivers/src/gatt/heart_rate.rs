//! Heart Rate Measurement 0x2A37.
//!
//! Layout (SIG GATT XML `heart_rate_measurement`, HRS 1.0; gatt-profiles.md §9): flags (bit0
//! value format 0 u8 / 1 u16, bits 2..1 sensor contact: 0/1 not supported, 2 not detected,
//! 3 detected, bit3 energy expended, bit4 RR intervals, 5-7 RFU), heart rate (u8 or u16 /min),
//! [energy expended u16 kJ], [RR intervals u16 in 1/1024 s, oldest first, as many as fit].
//! With bit4 set at least one RR interval must be present (else truncated); an odd leftover
//! octet is reported as `trailing_octets`.
//!
//! Record mapping: `heart_rate` `/min`; contact "not detected" adds the flag
//! `sensor_contact_not_detected`; RR intervals and energy stay in `fields`.

use serde::Serialize;

use super::reader::Reader;
use super::{new_record, push_decimal, set_trailing, uuid, GattError};
use crate::record::{ReadingType, Record};
use crate::{Decimal, Status};

/// Sensor contact status.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SensorContact {
    NotSupported,
    NotDetected,
    Detected,
}

/// Heart Rate Measurement 0x2A37.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct HeartRateMeasurement {
    pub heart_rate: u16,
    pub sensor_contact: SensorContact,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub energy_expended_kj: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rr_intervals: Option<Vec<u16>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rr_intervals_s: Option<Vec<f64>>,
    #[serde(skip)]
    pub uint16_format: bool,
    #[serde(skip_serializing_if = "super::is_zero")]
    pub trailing_octets: usize,
}

impl HeartRateMeasurement {
    /// # Errors
    /// [`GattError::Truncated`].
    pub fn decode(payload: &[u8]) -> Result<Self, GattError> {
        let mut r = Reader::new(payload);
        let flags = r.u8()?;
        let uint16_format = flags & 0x01 != 0;
        let heart_rate = if uint16_format {
            r.u16()?
        } else {
            u16::from(r.u8()?)
        };
        let energy_expended_kj = if flags & 0x08 != 0 {
            Some(r.u16()?)
        } else {
            None
        };
        let rr_intervals = if flags & 0x10 != 0 {
            let mut v = vec![r.u16()?];
            while r.remaining() >= 2 {
                v.push(r.u16()?);
            }
            Some(v)
        } else {
            None
        };
        Ok(Self {
            heart_rate,
            sensor_contact: match (flags >> 1) & 0x3 {
                2 => SensorContact::NotDetected,
                3 => SensorContact::Detected,
                _ => SensorContact::NotSupported,
            },
            energy_expended_kj,
            rr_intervals_s: rr_intervals
                .as_ref()
                .map(|v| v.iter().map(|x| f64::from(*x) / 1024.0).collect()),
            rr_intervals,
            uint16_format,
            trailing_octets: r.remaining(),
        })
    }

    /// Encodes (emulated straps). Uses the u16 format when `uint16_format` is set or the rate
    /// exceeds 255.
    pub fn encode(&self) -> Vec<u8> {
        let wide = self.uint16_format || self.heart_rate > 255;
        let mut flags = u8::from(wide);
        flags |= match self.sensor_contact {
            SensorContact::NotSupported => 0,
            SensorContact::NotDetected => 0x04,
            SensorContact::Detected => 0x06,
        };
        if self.energy_expended_kj.is_some() {
            flags |= 0x08;
        }
        let rr = self.rr_intervals.as_ref().filter(|v| !v.is_empty());
        if rr.is_some() {
            flags |= 0x10;
        }
        let mut out = vec![flags];
        if wide {
            out.extend_from_slice(&self.heart_rate.to_le_bytes());
        } else {
            out.push(self.heart_rate as u8);
        }
        if let Some(e) = self.energy_expended_kj {
            out.extend_from_slice(&e.to_le_bytes());
        }
        for x in rr.into_iter().flatten() {
            out.extend_from_slice(&x.to_le_bytes());
        }
        out
    }

    /// The canonical record (see the module doc).
    pub fn to_record(&self) -> Record {
        let mut rec = new_record(uuid::HEART_RATE_MEASUREMENT);
        push_decimal(
            &mut rec,
            ReadingType::HeartRate,
            Decimal::from_int(i64::from(self.heart_rate)),
            "/min",
        );
        if self.sensor_contact == SensorContact::NotDetected {
            rec.add_flag(Status::SensorContactNotDetected);
        }
        if let Some(e) = self.energy_expended_kj {
            rec.fields
                .insert("energy_expended_kj".into(), serde_json::json!(e));
        }
        if let Some(rr) = &self.rr_intervals {
            rec.fields
                .insert("rr_intervals_1024".into(), serde_json::json!(rr));
        }
        set_trailing(&mut rec, self.trailing_octets);
        rec
    }
}

impl From<&HeartRateMeasurement> for Record {
    fn from(m: &HeartRateMeasurement) -> Self {
        m.to_record()
    }
}
