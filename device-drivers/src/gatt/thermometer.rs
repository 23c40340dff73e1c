//! Temperature Measurement 0x2A1C, Temperature Type 0x2A1D, Intermediate Temperature 0x2A1E.
//!
//! Layout (SIG GATT XML `temperature_measurement`, HTS 1.0; gatt-profiles.md §6): flags (bit0
//! 0 Celsius / 1 Fahrenheit, bit1 time stamp, bit2 temperature type, 3-7 RFU), temperature
//! **FLOAT** (4), [time stamp 7], [temperature type 1]. 5..=13 octets.
//! Temperature Type (u8): 1 armpit, 2 body (general), 3 ear, 4 finger, 5 gastro-intestinal
//! tract, 6 mouth, 7 rectum, 8 toe, 9 tympanum; 0 and 10-255 reserved (named `"reserved"`).
//! 0x2A1E has the 0x2A1C layout but is not a final reading: it never becomes a record.
//!
//! Record mapping: `Cel` / `[degF]` (no conversion), type kept in `fields.temperature_type`.
//! Departure note: gatt-profiles.md names only `ear`, `finger`, `mouth` through vectors; the
//! other names are our snake_case of the SIG names (`body` for "body (general)").

use serde::Serialize;

use super::datetime::Timestamp;
use super::reader::Reader;
use super::sfloat::Float11073;
use super::{new_record, push_value, set_time, set_trailing, uuid, GattError};
use crate::record::{ReadingType, Record};

/// Temperature unit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TemperatureUnit {
    Celsius,
    Fahrenheit,
}

/// The snake_case name of a Temperature Type code.
pub fn temperature_type_name(code: u8) -> &'static str {
    match code {
        1 => "armpit",
        2 => "body",
        3 => "ear",
        4 => "finger",
        5 => "gastro_intestinal_tract",
        6 => "mouth",
        7 => "rectum",
        8 => "toe",
        9 => "tympanum",
        _ => "reserved",
    }
}

/// Temperature Type (in a measurement or as characteristic 0x2A1D).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TemperatureType {
    pub temperature_type: u8,
    pub temperature_type_name: &'static str,
}

impl TemperatureType {
    pub fn new(code: u8) -> Self {
        Self {
            temperature_type: code,
            temperature_type_name: temperature_type_name(code),
        }
    }
}

/// Temperature Type characteristic 0x2A1D.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TemperatureTypeCharacteristic {
    #[serde(flatten)]
    pub temperature_type: TemperatureType,
    #[serde(skip_serializing_if = "super::is_zero")]
    pub trailing_octets: usize,
}

impl TemperatureTypeCharacteristic {
    /// # Errors
    /// [`GattError::Truncated`] when empty.
    pub fn decode(payload: &[u8]) -> Result<Self, GattError> {
        let mut r = Reader::new(payload);
        Ok(Self {
            temperature_type: TemperatureType::new(r.u8()?),
            trailing_octets: r.remaining(),
        })
    }
}

/// Temperature Measurement 0x2A1C (and Intermediate Temperature 0x2A1E).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TemperatureMeasurement {
    pub temperature: Float11073,
    pub unit: TemperatureUnit,
    #[serde(flatten)]
    pub timestamp: Option<Timestamp>,
    #[serde(flatten)]
    pub temperature_type: Option<TemperatureType>,
    #[serde(skip_serializing_if = "super::is_zero")]
    pub trailing_octets: usize,
}

impl TemperatureMeasurement {
    /// # Errors
    /// [`GattError::Truncated`].
    pub fn decode(payload: &[u8]) -> Result<Self, GattError> {
        let mut r = Reader::new(payload);
        let flags = r.u8()?;
        let temperature = r.float()?;
        let timestamp = if flags & 0x02 != 0 {
            Some(Timestamp(r.date_time()?))
        } else {
            None
        };
        let temperature_type = if flags & 0x04 != 0 {
            Some(TemperatureType::new(r.u8()?))
        } else {
            None
        };
        Ok(Self {
            temperature,
            unit: if flags & 0x01 != 0 {
                TemperatureUnit::Fahrenheit
            } else {
                TemperatureUnit::Celsius
            },
            timestamp,
            temperature_type,
            trailing_octets: r.remaining(),
        })
    }

    /// Encodes (emulated thermometers). `None` if the value is not exactly a FLOAT.
    pub fn encode(&self) -> Option<Vec<u8>> {
        let mut flags = 0u8;
        if self.unit == TemperatureUnit::Fahrenheit {
            flags |= 1;
        }
        if self.timestamp.is_some() {
            flags |= 2;
        }
        if self.temperature_type.is_some() {
            flags |= 4;
        }
        let mut out = vec![flags];
        out.extend_from_slice(&self.temperature.to_float()?.to_le_bytes());
        if let Some(Timestamp(dt)) = self.timestamp {
            out.extend_from_slice(&dt.to_bytes());
        }
        if let Some(t) = &self.temperature_type {
            out.push(t.temperature_type);
        }
        Some(out)
    }

    /// The canonical record (see the module doc).
    pub fn to_record(&self) -> Record {
        let mut rec = new_record(uuid::TEMPERATURE_MEASUREMENT);
        let unit = match self.unit {
            TemperatureUnit::Celsius => "Cel",
            TemperatureUnit::Fahrenheit => "[degF]",
        };
        push_value(
            &mut rec,
            ReadingType::BodyTemperature,
            self.temperature,
            unit,
        );
        if let Some(t) = &self.temperature_type {
            rec.fields.insert(
                "temperature_type".into(),
                serde_json::Value::String(t.temperature_type_name.into()),
            );
            rec.context.body_site = crate::record::BodySite::from_gatt(t.temperature_type);
        }
        set_time(&mut rec, self.timestamp.map(|t| t.0));
        set_trailing(&mut rec, self.trailing_octets);
        rec
    }
}

impl From<&TemperatureMeasurement> for Record {
    fn from(m: &TemperatureMeasurement) -> Self {
        m.to_record()
    }
}
