//! Weight Measurement 0x2A9D and Weight Scale Feature 0x2A9E.
//!
//! Layout (SIG GATT XML `weight_measurement`, WSS 1.0 §3.2.1; gatt-profiles.md §5):
//!
//! | octets | field | present if |
//! |---|---|---|
//! | 1 | flags: bit0 units (0 SI, 1 imperial), bit1 time stamp, bit2 user id, bit3 BMI + height, 4-7 RFU | always |
//! | 2 | weight u16: SI × 0.005 kg, imperial × 0.01 lb; 0xFFFF = measurement unsuccessful | always |
//! | 7 | time stamp | bit1 |
//! | 1 | user id (0xFF unknown) | bit2 |
//! | 2+2 | BMI u16 × 0.1; height u16 SI × 0.001 m, imperial × 0.1 in | bit3 |
//!
//! The weight resolution is fixed by the XML; the 0x2A9E resolution codes describe precision
//! only and never rescale a value (SpeziBluetooth's mistake, gatt-profiles.md §12).
//! 0x2A9E (u32): bit0 time stamp, bit1 multiple users, bit2 BMI, bits 3-6 weight resolution
//! code, bits 7-9 height resolution code.
//!
//! Record mapping: weight `kg` / `[lb_av]` (unsuccessful → `missing` + flag
//! `measurement_unsuccessful`), BMI `kg/m2`, height converted exactly m → `cm` (exponent
//! shift) or `[in_i]`.

use serde::Serialize;

use super::datetime::Timestamp;
use super::reader::Reader;
use super::{new_record, push_decimal, set_time, set_trailing, set_user, uuid, GattError};
use crate::record::{ReadingType, Record};
use crate::{Decimal, Status};

/// Mass unit of WSS/BCS.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MassUnit {
    Kg,
    Lb,
}

/// Height unit of WSS/BCS.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HeightUnit {
    M,
    In,
}

impl MassUnit {
    pub(crate) fn from_imperial(imperial: bool) -> Self {
        if imperial {
            Self::Lb
        } else {
            Self::Kg
        }
    }

    /// Weight/mass field scale: 0.005 kg or 0.01 lb.
    pub(crate) fn scale(self, raw: u16) -> Decimal {
        match self {
            Self::Kg => Decimal::new(i64::from(raw) * 5, -3),
            Self::Lb => Decimal::new(i64::from(raw), -2),
        }
    }

    pub(crate) fn unscale(self, d: Decimal) -> Option<u16> {
        let (m, e) = match self {
            Self::Kg => (d.mantissa, i32::from(d.exponent) + 3),
            Self::Lb => (d.mantissa, i32::from(d.exponent) + 2),
        };
        let units = scale_int(m, e)?;
        let units = match self {
            Self::Kg => (units % 5 == 0).then_some(units / 5)?,
            Self::Lb => units,
        };
        u16::try_from(units).ok()
    }

    pub fn ucum(self) -> &'static str {
        match self {
            Self::Kg => "kg",
            Self::Lb => "[lb_av]",
        }
    }
}

impl HeightUnit {
    pub(crate) fn from_imperial(imperial: bool) -> Self {
        if imperial {
            Self::In
        } else {
            Self::M
        }
    }

    pub(crate) fn scale(self, raw: u16) -> Decimal {
        match self {
            Self::M => Decimal::new(i64::from(raw), -3),
            Self::In => Decimal::new(i64::from(raw), -1),
        }
    }

    pub(crate) fn unscale(self, d: Decimal) -> Option<u16> {
        let e = match self {
            Self::M => i32::from(d.exponent) + 3,
            Self::In => i32::from(d.exponent) + 1,
        };
        u16::try_from(scale_int(d.mantissa, e)?).ok()
    }

    /// Reading for the record: metres become centimetres exactly (FHIR bodyheight uses cm).
    pub(crate) fn reading(self, d: Decimal) -> (Decimal, &'static str) {
        match self {
            Self::M => (Decimal::new(d.mantissa, d.exponent.saturating_add(2)), "cm"),
            Self::In => (d, "[in_i]"),
        }
    }
}

/// `m × 10^e` as an integer, `None` if not an integer or overflow.
fn scale_int(m: i64, e: i32) -> Option<i64> {
    if e >= 0 {
        m.checked_mul(10i64.checked_pow(u32::try_from(e).ok()?)?)
    } else {
        let div = 10i64.checked_pow(u32::try_from(-e).ok()?)?;
        (m % div == 0).then_some(m / div)
    }
}

/// Weight Measurement 0x2A9D.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct WeightMeasurement {
    pub unit: MassUnit,
    /// `None` (null) when the scale reported 0xFFFF "measurement unsuccessful".
    pub weight: Option<Decimal>,
    pub measurement_unsuccessful: bool,
    #[serde(flatten)]
    pub timestamp: Option<Timestamp>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_id: Option<u8>,
    #[serde(flatten)]
    pub bmi_height: Option<BmiHeight>,
    #[serde(skip_serializing_if = "super::is_zero")]
    pub trailing_octets: usize,
}

/// BMI and height (flag bit3).
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct BmiHeight {
    pub bmi: Decimal,
    pub height: Decimal,
    pub height_unit: HeightUnit,
}

impl WeightMeasurement {
    /// # Errors
    /// [`GattError::Truncated`].
    pub fn decode(payload: &[u8]) -> Result<Self, GattError> {
        let mut r = Reader::new(payload);
        let flags = r.u8()?;
        let imperial = flags & 0x01 != 0;
        let unit = MassUnit::from_imperial(imperial);
        let raw = r.u16()?;
        let timestamp = if flags & 0x02 != 0 {
            Some(Timestamp(r.date_time()?))
        } else {
            None
        };
        let user_id = if flags & 0x04 != 0 {
            Some(r.u8()?)
        } else {
            None
        };
        let bmi_height = if flags & 0x08 != 0 {
            let bmi = Decimal::new(i64::from(r.u16()?), -1);
            let hu = HeightUnit::from_imperial(imperial);
            Some(BmiHeight {
                bmi,
                height: hu.scale(r.u16()?),
                height_unit: hu,
            })
        } else {
            None
        };
        Ok(Self {
            unit,
            weight: (raw != 0xFFFF).then(|| unit.scale(raw)),
            measurement_unsuccessful: raw == 0xFFFF,
            timestamp,
            user_id,
            bmi_height,
            trailing_octets: r.remaining(),
        })
    }

    /// Encodes (emulated scales). `None` if a value is not on the field's resolution grid.
    pub fn encode(&self) -> Option<Vec<u8>> {
        let mut flags = 0u8;
        if self.unit == MassUnit::Lb {
            flags |= 0x01;
        }
        if self.timestamp.is_some() {
            flags |= 0x02;
        }
        if self.user_id.is_some() {
            flags |= 0x04;
        }
        if self.bmi_height.is_some() {
            flags |= 0x08;
        }
        let mut out = vec![flags];
        let raw = match self.weight {
            None => 0xFFFF,
            Some(w) => {
                let raw = self.unit.unscale(w)?;
                if raw == 0xFFFF {
                    return None;
                }
                raw
            }
        };
        out.extend_from_slice(&raw.to_le_bytes());
        if let Some(Timestamp(dt)) = self.timestamp {
            out.extend_from_slice(&dt.to_bytes());
        }
        if let Some(u) = self.user_id {
            out.push(u);
        }
        if let Some(b) = self.bmi_height {
            let bmi =
                u16::try_from(scale_int(b.bmi.mantissa, i32::from(b.bmi.exponent) + 1)?).ok()?;
            out.extend_from_slice(&bmi.to_le_bytes());
            out.extend_from_slice(&b.height_unit.unscale(b.height)?.to_le_bytes());
        }
        Some(out)
    }

    /// The canonical record (see the module doc).
    pub fn to_record(&self) -> Record {
        let mut rec = new_record(uuid::WEIGHT_MEASUREMENT);
        match self.weight {
            Some(w) => push_decimal(&mut rec, ReadingType::BodyWeight, w, self.unit.ucum()),
            None => {
                rec.missing.push(ReadingType::BodyWeight);
                rec.add_flag(Status::MeasurementUnsuccessful);
            }
        }
        if let Some(b) = self.bmi_height {
            push_decimal(&mut rec, ReadingType::Bmi, b.bmi, "kg/m2");
            let (h, unit) = b.height_unit.reading(b.height);
            push_decimal(&mut rec, ReadingType::BodyHeight, h, unit);
        }
        set_time(&mut rec, self.timestamp.map(|t| t.0));
        set_user(&mut rec, self.user_id);
        set_trailing(&mut rec, self.trailing_octets);
        rec
    }
}

impl From<&WeightMeasurement> for Record {
    fn from(m: &WeightMeasurement) -> Self {
        m.to_record()
    }
}

/// Weight Scale Feature 0x2A9E.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct WeightScaleFeature {
    pub raw: u32,
    pub timestamp_supported: bool,
    pub multiple_users_supported: bool,
    pub bmi_supported: bool,
    pub weight_resolution_code: u8,
    /// `None` (null) = not specified (code 0) or a reserved code (8-15).
    pub weight_resolution_kg: Option<Decimal>,
    pub weight_resolution_lb: Option<Decimal>,
    pub height_resolution_code: u8,
    pub height_resolution_m: Option<Decimal>,
    pub height_resolution_in: Option<Decimal>,
    #[serde(skip_serializing_if = "super::is_zero")]
    pub trailing_octets: usize,
}

impl WeightScaleFeature {
    /// # Errors
    /// [`GattError::Truncated`] below 4 octets.
    pub fn decode(payload: &[u8]) -> Result<Self, GattError> {
        let mut r = Reader::new(payload);
        let raw = r.u32()?;
        let wcode = ((raw >> 3) & 0xF) as u8;
        let hcode = ((raw >> 7) & 0x7) as u8;
        let d = Decimal::new;
        let (wkg, wlb) = match wcode {
            1 => (Some(d(5, -1)), Some(d(1, 0))),
            2 => (Some(d(2, -1)), Some(d(5, -1))),
            3 => (Some(d(1, -1)), Some(d(2, -1))),
            4 => (Some(d(5, -2)), Some(d(1, -1))),
            5 => (Some(d(2, -2)), Some(d(5, -2))),
            6 => (Some(d(1, -2)), Some(d(2, -2))),
            7 => (Some(d(5, -3)), Some(d(1, -2))),
            _ => (None, None),
        };
        let (hm, hin) = match hcode {
            1 => (Some(d(1, -2)), Some(d(1, 0))),
            2 => (Some(d(5, -3)), Some(d(5, -1))),
            3 => (Some(d(1, -3)), Some(d(1, -1))),
            _ => (None, None),
        };
        Ok(Self {
            raw,
            timestamp_supported: raw & 1 != 0,
            multiple_users_supported: raw & 2 != 0,
            bmi_supported: raw & 4 != 0,
            weight_resolution_code: wcode,
            weight_resolution_kg: wkg,
            weight_resolution_lb: wlb,
            height_resolution_code: hcode,
            height_resolution_m: hm,
            height_resolution_in: hin,
            trailing_octets: r.remaining(),
        })
    }
}
