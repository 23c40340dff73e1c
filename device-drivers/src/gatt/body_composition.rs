//! Body Composition Measurement 0x2A9C.
//!
//! Layout (SIG GATT XML `body_composition_measurement`, BCS 1.0; gatt-profiles.md §5):
//! flags **u16** (bit0 units 0 SI / 1 imperial, bit1 time stamp, bit2 user id, bit3 basal
//! metabolism, bit4 muscle %, bit5 muscle mass, bit6 fat-free mass, bit7 soft lean mass, bit8
//! body water mass, bit9 impedance, bit10 weight, bit11 height, bit12 multiple packet, 13-15
//! RFU), body fat % u16 × 0.1 (0xFFFF = measurement unsuccessful), then in flag order: time
//! stamp (7), user id (1), basal metabolism u16 kJ, muscle % u16 × 0.1, muscle / fat-free /
//! soft lean / body water masses u16 (0.005 kg or 0.01 lb), impedance u16 × 0.1 Ω, weight u16
//! (mass resolution), height u16 (0.001 m or 0.1 in). Minimum 4 octets.
//!
//! A full record exceeds one ATT payload, so devices split it (bit12): the record carries the
//! flag `multiple_packet` and the agent merges packets by (user, timestamp).
//! Record mapping: body fat `%` (unsuccessful → missing + `measurement_unsuccessful`), weight
//! `kg`/`[lb_av]`, height `cm`/`[in_i]`; the other quantities stay in `fields`.

use serde::Serialize;

use super::datetime::Timestamp;
use super::reader::Reader;
use super::weight::{HeightUnit, MassUnit};
use super::{new_record, push_decimal, set_time, set_trailing, set_user, uuid, GattError};
use crate::record::{ReadingType, Record};
use crate::{Decimal, Status};

/// Unit system of a BCS measurement.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum UnitSystem {
    #[serde(rename = "SI")]
    Si,
    #[serde(rename = "imperial")]
    Imperial,
}

/// Body Composition Measurement 0x2A9C.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BodyCompositionMeasurement {
    pub unit_system: UnitSystem,
    pub mass_unit: MassUnit,
    pub height_unit: HeightUnit,
    pub multiple_packet: bool,
    /// `None` (null) when unsuccessful (0xFFFF).
    pub body_fat_percent: Option<Decimal>,
    pub measurement_unsuccessful: bool,
    #[serde(flatten)]
    pub timestamp: Option<Timestamp>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_id: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub basal_metabolism_kj: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub muscle_percent: Option<Decimal>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub muscle_mass: Option<Decimal>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fat_free_mass: Option<Decimal>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub soft_lean_mass: Option<Decimal>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body_water_mass: Option<Decimal>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub impedance_ohm: Option<Decimal>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weight: Option<Decimal>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub height: Option<Decimal>,
    #[serde(skip)]
    pub flags: u16,
    #[serde(skip_serializing_if = "super::is_zero")]
    pub trailing_octets: usize,
}

impl BodyCompositionMeasurement {
    /// # Errors
    /// [`GattError::Truncated`].
    pub fn decode(payload: &[u8]) -> Result<Self, GattError> {
        let mut r = Reader::new(payload);
        let flags = r.u16()?;
        let bit = |n: u16| flags & (1 << n) != 0;
        let imperial = bit(0);
        let mu = MassUnit::from_imperial(imperial);
        let hu = HeightUnit::from_imperial(imperial);
        let fat = r.u16()?;
        let timestamp = if bit(1) {
            Some(Timestamp(r.date_time()?))
        } else {
            None
        };
        let user_id = if bit(2) { Some(r.u8()?) } else { None };
        let basal = if bit(3) { Some(r.u16()?) } else { None };
        let tenth = |v: u16| Decimal::new(i64::from(v), -1);
        let muscle_percent = if bit(4) { Some(tenth(r.u16()?)) } else { None };
        let mass = |r: &mut Reader<'_>, n: u16| -> Result<Option<Decimal>, GattError> {
            Ok(if bit(n) {
                Some(mu.scale(r.u16()?))
            } else {
                None
            })
        };
        let muscle_mass = mass(&mut r, 5)?;
        let fat_free_mass = mass(&mut r, 6)?;
        let soft_lean_mass = mass(&mut r, 7)?;
        let body_water_mass = mass(&mut r, 8)?;
        let impedance_ohm = if bit(9) { Some(tenth(r.u16()?)) } else { None };
        let weight = mass(&mut r, 10)?;
        let height = if bit(11) {
            Some(hu.scale(r.u16()?))
        } else {
            None
        };
        Ok(Self {
            unit_system: if imperial {
                UnitSystem::Imperial
            } else {
                UnitSystem::Si
            },
            mass_unit: mu,
            height_unit: hu,
            multiple_packet: bit(12),
            body_fat_percent: (fat != 0xFFFF).then(|| tenth(fat)),
            measurement_unsuccessful: fat == 0xFFFF,
            timestamp,
            user_id,
            basal_metabolism_kj: basal,
            muscle_percent,
            muscle_mass,
            fat_free_mass,
            soft_lean_mass,
            body_water_mass,
            impedance_ohm,
            weight,
            height,
            flags,
            trailing_octets: r.remaining(),
        })
    }

    /// The canonical record (see the module doc).
    pub fn to_record(&self) -> Record {
        let mut rec = new_record(uuid::BODY_COMPOSITION_MEASUREMENT);
        match self.body_fat_percent {
            Some(f) => push_decimal(&mut rec, ReadingType::BodyFatPercentage, f, "%"),
            None => {
                rec.missing.push(ReadingType::BodyFatPercentage);
                rec.add_flag(Status::MeasurementUnsuccessful);
            }
        }
        if let Some(w) = self.weight {
            push_decimal(&mut rec, ReadingType::BodyWeight, w, self.mass_unit.ucum());
        }
        if let Some(h) = self.height {
            let (h, unit) = self.height_unit.reading(h);
            push_decimal(&mut rec, ReadingType::BodyHeight, h, unit);
        }
        if self.multiple_packet {
            rec.add_flag(Status::MultiplePacket);
        }
        let extra = [
            ("muscle_percent", self.muscle_percent),
            ("muscle_mass", self.muscle_mass),
            ("fat_free_mass", self.fat_free_mass),
            ("soft_lean_mass", self.soft_lean_mass),
            ("body_water_mass", self.body_water_mass),
            ("impedance_ohm", self.impedance_ohm),
        ];
        for (k, v) in extra {
            if let Some(v) = v {
                rec.fields
                    .insert(k.into(), serde_json::Value::String(v.to_string()));
            }
        }
        if let Some(b) = self.basal_metabolism_kj {
            rec.fields
                .insert("basal_metabolism_kj".into(), serde_json::json!(b));
        }
        set_time(&mut rec, self.timestamp.map(|t| t.0));
        set_user(&mut rec, self.user_id);
        set_trailing(&mut rec, self.trailing_octets);
        rec
    }
}

impl From<&BodyCompositionMeasurement> for Record {
    fn from(m: &BodyCompositionMeasurement) -> Self {
        m.to_record()
    }
}
