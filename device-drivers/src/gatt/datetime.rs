//! Date Time 0x2A08, Current Time 0x2A2B, Local Time Information 0x2A0F.
//!
//! Layouts (SIG GATT XML `date_time`, `current_time`, `local_time_information`; GSS;
//! gatt-profiles.md §3), little-endian:
//! - **Date Time** (7): year u16 (1582..=9999, 0 = not known), month u8 (0 = not known), day u8
//!   (0 = not known), hours, minutes, seconds. Device local wall clock, no zone.
//! - **Current Time** (10): Date Time, day of week u8 (0 unknown, 1 Monday..7 Sunday), fractions256
//!   u8, adjust reason u8 (bit0 manual, bit1 external reference, bit2 time zone, bit3 DST).
//! - **Local Time Information** (2): time zone i8 in 15-minute steps (-48..=56, -128 unknown),
//!   DST offset u8 (0, 2 = +0.5 h, 4 = +1 h, 8 = +2 h, 255 unknown).
//!
//! Policy (section 0): an unknown or impossible date never fails a decode. `timestamp` becomes
//! `null` and `timestamp_raw` carries the six raw fields. The day of week is never validated
//! (Omron sends 0, some test suites pair dates with the wrong weekday).

use serde::ser::SerializeMap;
use serde::{Serialize, Serializer};

use super::reader::Reader;
use super::GattError;
use crate::DeviceTime;

/// The seven raw fields of a GATT Date Time, exactly as received (possibly invalid).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DateTime {
    pub year: u16,
    pub month: u8,
    pub day: u8,
    pub hours: u8,
    pub minutes: u8,
    pub seconds: u8,
}

impl DateTime {
    pub fn from_bytes(b: [u8; 7]) -> Self {
        let [y0, y1, month, day, hours, minutes, seconds] = b;
        Self {
            year: u16::from_le_bytes([y0, y1]),
            month,
            day,
            hours,
            minutes,
            seconds,
        }
    }

    pub fn to_bytes(self) -> [u8; 7] {
        let [y0, y1] = self.year.to_le_bytes();
        [
            y0,
            y1,
            self.month,
            self.day,
            self.hours,
            self.minutes,
            self.seconds,
        ]
    }

    pub fn from_device_time(t: DeviceTime) -> Self {
        Self {
            year: t.year,
            month: t.month,
            day: t.day,
            hours: t.hour,
            minutes: t.minute,
            seconds: t.second,
        }
    }

    /// The validated time, or `None` if any field is "not known" (0) or out of range.
    pub fn device_time(self) -> Option<DeviceTime> {
        DeviceTime::new(
            self.year,
            self.month,
            self.day,
            self.hours,
            self.minutes,
            self.seconds,
        )
    }

    /// `[y, mo, d, h, mi, s]` for `timestamp_raw`.
    pub fn raw(self) -> [u16; 6] {
        [
            self.year,
            u16::from(self.month),
            u16::from(self.day),
            u16::from(self.hours),
            u16::from(self.minutes),
            u16::from(self.seconds),
        ]
    }

    fn serialize_into<M: SerializeMap>(
        self,
        map: &mut M,
        key: &'static str,
        raw_key: &'static str,
    ) -> Result<(), M::Error> {
        match self.device_time() {
            Some(t) => map.serialize_entry(key, &t),
            None => {
                map.serialize_entry(key, &())?;
                map.serialize_entry(raw_key, &self.raw())
            }
        }
    }
}

/// A Date Time field serialised (flattened) as `timestamp` [+ `timestamp_raw`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timestamp(pub DateTime);

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(None)?;
        self.0
            .serialize_into(&mut map, "timestamp", "timestamp_raw")?;
        map.end()
    }
}

/// A Date Time field serialised (flattened) as `base_time` [+ `base_time_raw`] (glucose).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BaseTime(pub DateTime);

impl Serialize for BaseTime {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(None)?;
        self.0
            .serialize_into(&mut map, "base_time", "base_time_raw")?;
        map.end()
    }
}

/// Date Time 0x2A08.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DateTimeCharacteristic {
    #[serde(flatten)]
    pub timestamp: Timestamp,
    #[serde(skip_serializing_if = "super::is_zero")]
    pub trailing_octets: usize,
}

impl DateTimeCharacteristic {
    /// # Errors
    /// [`GattError::Truncated`] below 7 octets.
    pub fn decode(payload: &[u8]) -> Result<Self, GattError> {
        let mut r = Reader::new(payload);
        let dt = r.date_time()?;
        Ok(Self {
            timestamp: Timestamp(dt),
            trailing_octets: r.remaining(),
        })
    }

    /// Encodes a Date Time value (A&D devices take their clock this way, gatt-profiles.md §11).
    pub fn encode(t: DeviceTime) -> [u8; 7] {
        DateTime::from_device_time(t).to_bytes()
    }
}

/// Adjust Reason of Current Time (bits 4-7 RFU, kept in `raw` only).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize)]
pub struct AdjustReason {
    #[serde(skip)]
    pub raw: u8,
    pub manual_time_update: bool,
    pub external_reference_time_update: bool,
    pub change_of_time_zone: bool,
    pub change_of_dst: bool,
}

impl AdjustReason {
    pub fn from_raw(raw: u8) -> Self {
        Self {
            raw,
            manual_time_update: raw & 1 != 0,
            external_reference_time_update: raw & 2 != 0,
            change_of_time_zone: raw & 4 != 0,
            change_of_dst: raw & 8 != 0,
        }
    }

    /// "Manual time update": what a gateway sets when it writes the clock.
    pub const MANUAL: Self = Self {
        raw: 1,
        manual_time_update: true,
        external_reference_time_update: false,
        change_of_time_zone: false,
        change_of_dst: false,
    };
}

/// Current Time 0x2A2B.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CurrentTime {
    #[serde(flatten)]
    pub timestamp: Timestamp,
    /// 0 unknown, 1 Monday .. 7 Sunday (never validated against the date).
    pub day_of_week: u8,
    pub fractions256: u8,
    pub adjust_reason: AdjustReason,
    #[serde(skip_serializing_if = "super::is_zero")]
    pub trailing_octets: usize,
}

impl CurrentTime {
    /// # Errors
    /// [`GattError::Truncated`] below 10 octets.
    pub fn decode(payload: &[u8]) -> Result<Self, GattError> {
        let mut r = Reader::new(payload);
        let dt = r.date_time()?;
        let day_of_week = r.u8()?;
        let fractions256 = r.u8()?;
        let adjust_reason = AdjustReason::from_raw(r.u8()?);
        Ok(Self {
            timestamp: Timestamp(dt),
            day_of_week,
            fractions256,
            adjust_reason,
            trailing_octets: r.remaining(),
        })
    }

    /// Encodes the 10-octet value (what the agent writes to set a device clock).
    pub fn encode(&self) -> [u8; 10] {
        let d = self.timestamp.0.to_bytes();
        [
            d[0],
            d[1],
            d[2],
            d[3],
            d[4],
            d[5],
            d[6],
            self.day_of_week,
            self.fractions256,
            self.adjust_reason.raw,
        ]
    }
}

/// Builds the Current Time value that sets a device clock to `local` (the device's local wall
/// time), computing the day of week from the date, fractions 0, adjust reason "manual".
pub fn encode_current_time(local: DeviceTime, adjust_reason: AdjustReason) -> [u8; 10] {
    CurrentTime {
        timestamp: Timestamp(DateTime::from_device_time(local)),
        day_of_week: day_of_week(local),
        fractions256: 0,
        adjust_reason,
        trailing_octets: 0,
    }
    .encode()
}

/// ISO day of week of a date: 1 Monday .. 7 Sunday.
pub fn day_of_week(t: DeviceTime) -> u8 {
    // 1970-01-01 was a Thursday (4).
    let days = t.naive_unix_seconds().div_euclid(86_400);
    (((days + 3).rem_euclid(7)) + 1) as u8
}

/// Local Time Information 0x2A0F.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LocalTimeInformation {
    /// Zone offset from UTC in minutes; `None` (null) for -128 "unknown" or out of -48..=56.
    pub time_zone_offset_minutes: Option<i16>,
    /// DST offset in minutes; `None` (null) for 255 "unknown" or a reserved code.
    pub dst_offset_minutes: Option<i16>,
    #[serde(skip)]
    pub raw_time_zone: i8,
    #[serde(skip)]
    pub raw_dst: u8,
    #[serde(skip_serializing_if = "super::is_zero")]
    pub trailing_octets: usize,
}

impl LocalTimeInformation {
    /// # Errors
    /// [`GattError::Truncated`] below 2 octets.
    pub fn decode(payload: &[u8]) -> Result<Self, GattError> {
        let mut r = Reader::new(payload);
        let tz = r.i8()?;
        let dst = r.u8()?;
        Ok(Self {
            time_zone_offset_minutes: (-48..=56).contains(&tz).then(|| i16::from(tz) * 15),
            dst_offset_minutes: match dst {
                0 => Some(0),
                2 => Some(30),
                4 => Some(60),
                8 => Some(120),
                _ => None,
            },
            raw_time_zone: tz,
            raw_dst: dst,
            trailing_octets: r.remaining(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn day_of_week_is_iso() {
        // 2026-05-12 is a Tuesday (ble-scale-sync#168).
        let t = DeviceTime::new(2026, 5, 12, 18, 53, 43).unwrap();
        assert_eq!(day_of_week(t), 2);
        let bytes = encode_current_time(t, AdjustReason::MANUAL);
        assert_eq!(bytes, [0xea, 0x07, 5, 12, 18, 0x35, 0x2b, 2, 0, 1]);
    }
}
