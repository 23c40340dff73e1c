//! Blood Pressure Measurement 0x2A35, Intermediate Cuff Pressure 0x2A36, BP Feature 0x2A49.
//!
//! Layout (SIG GATT XML `blood_pressure_measurement`, BLS 1.0 / GSS; gatt-profiles.md §4):
//!
//! | octets | field | present if |
//! |---|---|---|
//! | 1 | flags: bit0 unit (0 mmHg, 1 kPa), bit1 time stamp, bit2 pulse rate, bit3 user id, bit4 status, 5-7 RFU | always |
//! | 2+2+2 | systolic, diastolic, MAP (SFLOAT) | always |
//! | 7 | time stamp (Date Time) | bit1 |
//! | 2 | pulse rate (SFLOAT, /min) | bit2 |
//! | 1 | user id (0xFF unknown user) | bit3 |
//! | 2 | measurement status: bit0 body movement, bit1 cuff too loose, bit2 irregular pulse, bits 4..3 pulse-rate range, bit5 improper position | bit4 |
//!
//! 7..=19 octets. 0x2A36 has the same layout; its first SFLOAT is the current cuff pressure and
//! diastolic/MAP are unused (not reported). Cuff pressure is progress while inflating: it
//! never becomes a [`Record`]. 0x2A49 is a 16-bit feature mask (bits 0..5, rest RFU).
//!
//! Record mapping: mmHg → `mm[Hg]`, kPa → `kPa` (no conversion here), pulse → `/min`; status bits
//! become flags `body_movement`, `cuff_too_loose`, `irregular_pulse`, `improper_position`,
//! `pulse_rate_exceeds_upper_limit`, `pulse_rate_below_lower_limit`.

use serde::Serialize;

use super::datetime::Timestamp;
use super::reader::Reader;
use super::sfloat::Float11073;
use super::{new_record, push_value, set_time, set_trailing, set_user, uuid, GattError};
use crate::record::{ReadingType, Record};
use crate::Status;

/// Pressure unit of a BPM/ICP.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum PressureUnit {
    #[serde(rename = "mmHg")]
    MmHg,
    #[serde(rename = "kPa")]
    KPa,
}

impl PressureUnit {
    pub fn ucum(self) -> &'static str {
        match self {
            Self::MmHg => "mm[Hg]",
            Self::KPa => "kPa",
        }
    }
}

/// Pulse-rate range (status bits 4..3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PulseRateRange {
    InRange,
    ExceedsUpperLimit,
    BelowLowerLimit,
    Reserved,
}

/// Measurement Status (RFU bits 6-15 kept in `raw`, not serialised).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct BpStatus {
    #[serde(skip)]
    pub raw: u16,
    pub body_movement: bool,
    pub cuff_too_loose: bool,
    pub irregular_pulse: bool,
    pub pulse_rate_range: PulseRateRange,
    pub improper_position: bool,
}

impl BpStatus {
    pub fn from_raw(raw: u16) -> Self {
        Self {
            raw,
            body_movement: raw & 0x01 != 0,
            cuff_too_loose: raw & 0x02 != 0,
            irregular_pulse: raw & 0x04 != 0,
            pulse_rate_range: match (raw >> 3) & 0x3 {
                0 => PulseRateRange::InRange,
                1 => PulseRateRange::ExceedsUpperLimit,
                2 => PulseRateRange::BelowLowerLimit,
                _ => PulseRateRange::Reserved,
            },
            improper_position: raw & 0x20 != 0,
        }
    }

    fn add_flags(&self, rec: &mut Record) {
        let pairs = [
            (self.body_movement, Status::BodyMovement),
            (self.cuff_too_loose, Status::CuffTooLoose),
            (self.irregular_pulse, Status::IrregularPulse),
            (self.improper_position, Status::ImproperPosition),
        ];
        for (set, status) in pairs {
            if set {
                rec.add_flag(status);
            }
        }
        match self.pulse_rate_range {
            PulseRateRange::InRange => {}
            PulseRateRange::ExceedsUpperLimit => rec.add_flag(Status::PulseRateExceedsUpperLimit),
            PulseRateRange::BelowLowerLimit => rec.add_flag(Status::PulseRateBelowLowerLimit),
            PulseRateRange::Reserved => rec.add_flag(Status::PulseRateRangeReserved),
        }
    }
}

/// Blood Pressure Measurement 0x2A35.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BloodPressureMeasurement {
    pub systolic: Float11073,
    pub diastolic: Float11073,
    pub map: Float11073,
    pub unit: PressureUnit,
    #[serde(flatten)]
    pub timestamp: Option<Timestamp>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pulse_rate: Option<Float11073>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_id: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<BpStatus>,
    #[serde(skip_serializing_if = "super::is_zero")]
    pub trailing_octets: usize,
}

/// Intermediate Cuff Pressure 0x2A36 (never a measurement record).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct IntermediateCuffPressure {
    pub cuff_pressure: Float11073,
    pub unit: PressureUnit,
    #[serde(flatten)]
    pub timestamp: Option<Timestamp>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pulse_rate: Option<Float11073>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_id: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<BpStatus>,
    #[serde(skip_serializing_if = "super::is_zero")]
    pub trailing_octets: usize,
}

impl BloodPressureMeasurement {
    /// # Errors
    /// [`GattError::Truncated`] below 7 octets or below what the flags announce.
    pub fn decode(payload: &[u8]) -> Result<Self, GattError> {
        let mut r = Reader::new(payload);
        let flags = r.u8()?;
        let systolic = r.sfloat()?;
        let diastolic = r.sfloat()?;
        let map = r.sfloat()?;
        let timestamp = if flags & 0x02 != 0 {
            Some(Timestamp(r.date_time()?))
        } else {
            None
        };
        let pulse_rate = if flags & 0x04 != 0 {
            Some(r.sfloat()?)
        } else {
            None
        };
        let user_id = if flags & 0x08 != 0 {
            Some(r.u8()?)
        } else {
            None
        };
        let status = if flags & 0x10 != 0 {
            Some(BpStatus::from_raw(r.u16()?))
        } else {
            None
        };
        Ok(Self {
            systolic,
            diastolic,
            map,
            unit: if flags & 0x01 != 0 {
                PressureUnit::KPa
            } else {
                PressureUnit::MmHg
            },
            timestamp,
            pulse_rate,
            user_id,
            status,
            trailing_octets: r.remaining(),
        })
    }

    /// Encodes (emulated cuffs, round-trip tests). `None` if a value is not exactly
    /// representable as SFLOAT. Trailing octets are not reproduced.
    pub fn encode(&self) -> Option<Vec<u8>> {
        let mut flags = 0u8;
        if self.unit == PressureUnit::KPa {
            flags |= 0x01;
        }
        if self.timestamp.is_some() {
            flags |= 0x02;
        }
        if self.pulse_rate.is_some() {
            flags |= 0x04;
        }
        if self.user_id.is_some() {
            flags |= 0x08;
        }
        if self.status.is_some() {
            flags |= 0x10;
        }
        let mut out = vec![flags];
        for v in [self.systolic, self.diastolic, self.map] {
            out.extend_from_slice(&v.to_sfloat()?.to_le_bytes());
        }
        if let Some(Timestamp(dt)) = self.timestamp {
            out.extend_from_slice(&dt.to_bytes());
        }
        if let Some(p) = self.pulse_rate {
            out.extend_from_slice(&p.to_sfloat()?.to_le_bytes());
        }
        if let Some(u) = self.user_id {
            out.push(u);
        }
        if let Some(s) = self.status {
            out.extend_from_slice(&s.raw.to_le_bytes());
        }
        Some(out)
    }

    /// The canonical record (see the module doc for units and flags).
    pub fn to_record(&self) -> Record {
        let mut rec = new_record(uuid::BLOOD_PRESSURE_MEASUREMENT);
        let unit = self.unit.ucum();
        push_value(&mut rec, ReadingType::SystolicPressure, self.systolic, unit);
        push_value(
            &mut rec,
            ReadingType::DiastolicPressure,
            self.diastolic,
            unit,
        );
        push_value(&mut rec, ReadingType::MeanArterialPressure, self.map, unit);
        if let Some(p) = self.pulse_rate {
            push_value(&mut rec, ReadingType::PulseRate, p, "/min");
        }
        set_time(&mut rec, self.timestamp.map(|t| t.0));
        set_user(&mut rec, self.user_id);
        if let Some(s) = &self.status {
            s.add_flags(&mut rec);
        }
        set_trailing(&mut rec, self.trailing_octets);
        rec
    }

    /// The Beurer BM85 layout (gatt-profiles.md §11): a User ID octet follows the pulse rate
    /// even when flag bit3 is clear, and pulse rate and status are **big-endian**. Used only
    /// through [`super::quirks`] for a device whose model matched.
    ///
    /// # Errors
    /// [`GattError::Truncated`].
    pub fn decode_beurer_bm85(payload: &[u8]) -> Result<Self, GattError> {
        let mut r = Reader::new(payload);
        let flags = r.u8()?;
        let systolic = r.sfloat()?;
        let diastolic = r.sfloat()?;
        let map = r.sfloat()?;
        let timestamp = if flags & 0x02 != 0 {
            Some(Timestamp(r.date_time()?))
        } else {
            None
        };
        let pulse_rate = if flags & 0x04 != 0 {
            Some(Float11073::from_sfloat(r.u16_be()?))
        } else {
            None
        };
        let user_id = Some(r.u8()?);
        let status = if flags & 0x10 != 0 {
            Some(BpStatus::from_raw(r.u16_be()?))
        } else {
            None
        };
        Ok(Self {
            systolic,
            diastolic,
            map,
            unit: if flags & 0x01 != 0 {
                PressureUnit::KPa
            } else {
                PressureUnit::MmHg
            },
            timestamp,
            pulse_rate,
            user_id,
            status,
            trailing_octets: r.remaining(),
        })
    }
}

impl From<&BloodPressureMeasurement> for Record {
    fn from(m: &BloodPressureMeasurement) -> Self {
        m.to_record()
    }
}

impl IntermediateCuffPressure {
    /// # Errors
    /// [`GattError::Truncated`].
    pub fn decode(payload: &[u8]) -> Result<Self, GattError> {
        let m = BloodPressureMeasurement::decode(payload)?;
        Ok(Self {
            cuff_pressure: m.systolic,
            unit: m.unit,
            timestamp: m.timestamp,
            pulse_rate: m.pulse_rate,
            user_id: m.user_id,
            status: m.status,
            trailing_octets: m.trailing_octets,
        })
    }
}

/// Blood Pressure Feature 0x2A49.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BloodPressureFeature {
    pub raw: u16,
    pub body_movement_detection: bool,
    pub cuff_fit_detection: bool,
    pub irregular_pulse_detection: bool,
    pub pulse_rate_range_detection: bool,
    pub measurement_position_detection: bool,
    pub multiple_bonds: bool,
    #[serde(skip_serializing_if = "super::is_zero")]
    pub trailing_octets: usize,
}

impl BloodPressureFeature {
    /// # Errors
    /// [`GattError::Truncated`] below 2 octets.
    pub fn decode(payload: &[u8]) -> Result<Self, GattError> {
        let mut r = Reader::new(payload);
        let raw = r.u16()?;
        let bit = |n: u16| raw & (1 << n) != 0;
        Ok(Self {
            raw,
            body_movement_detection: bit(0),
            cuff_fit_detection: bit(1),
            irregular_pulse_detection: bit(2),
            pulse_rate_range_detection: bit(3),
            measurement_position_detection: bit(4),
            multiple_bonds: bit(5),
            trailing_octets: r.remaining(),
        })
    }
}

/// A helper for emulated peers: a BPM with just the three pressures.
pub fn simple_bpm(
    systolic: Float11073,
    diastolic: Float11073,
    map: Float11073,
) -> BloodPressureMeasurement {
    BloodPressureMeasurement {
        systolic,
        diastolic,
        map,
        unit: PressureUnit::MmHg,
        timestamp: None,
        pulse_rate: None,
        user_id: None,
        status: None,
        trailing_octets: 0,
    }
}
