//! Device Information Service strings (0x2A24..0x2A29), System ID 0x2A23, PnP ID 0x2A50.
//!
//! Layouts (SIG GATT XML; DIS 1.1; gatt-profiles.md §10):
//! - strings (Model Number 0x2A24, Serial Number 0x2A25, Firmware 0x2A26, Hardware 0x2A27,
//!   Software 0x2A28, Manufacturer Name 0x2A29): `utf8s`, no terminator. Trailing `0x00`
//!   padding is stripped; invalid UTF-8 is [`GattError::Invalid`] (identifiers are never
//!   guessed). An empty string decodes as `""`.
//! - **System ID** (8): manufacturer identifier u40 then OUI u24, LSO first. Opaque identifier,
//!   not a MAC address.
//! - **PnP ID** (7): vendor id source u8, vendor id u16, product id u16, product version u16
//!   (not in the section-0 key table; keys are our snake_case of the SIG names).
//!
//! Identity for FHIR `Device` is manufacturer + model + serial (or System ID), never the BLE
//! address alone. The model string also selects the [`super::quirks`] profile.

use serde::Serialize;

use super::reader::Reader;
use super::GattError;

/// A Device Information string.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DeviceInfoString {
    pub value: String,
}

impl DeviceInfoString {
    /// # Errors
    /// [`GattError::Invalid`] for invalid UTF-8.
    pub fn decode(payload: &[u8]) -> Result<Self, GattError> {
        let end = payload.iter().rposition(|b| *b != 0).map_or(0, |i| i + 1);
        let bytes = payload.get(..end).unwrap_or_default();
        let value = std::str::from_utf8(bytes)
            .map_err(|_| GattError::Invalid("string is not valid UTF-8"))?;
        Ok(Self {
            value: value.to_owned(),
        })
    }
}

/// System ID 0x2A23.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SystemId {
    pub manufacturer_identifier: u64,
    pub oui: u32,
    #[serde(skip_serializing_if = "super::is_zero")]
    pub trailing_octets: usize,
}

impl SystemId {
    /// # Errors
    /// [`GattError::Truncated`] below 8 octets.
    pub fn decode(payload: &[u8]) -> Result<Self, GattError> {
        let mut r = Reader::new(payload);
        let b = r.take(5)?;
        let mut m = [0u8; 8];
        m[..5].copy_from_slice(b);
        let oui = r.u24()?;
        Ok(Self {
            manufacturer_identifier: u64::from_le_bytes(m),
            oui,
            trailing_octets: r.remaining(),
        })
    }

    /// The EUI-64 form used by FHIR (`00-09-1F-FF-FE-80-12-34`): OUI octets (MSO first), then
    /// the manufacturer identifier (MSO first).
    pub fn eui64(&self) -> String {
        let o = self.oui.to_be_bytes();
        let m = self.manufacturer_identifier.to_be_bytes();
        [o[1], o[2], o[3], m[3], m[4], m[5], m[6], m[7]]
            .iter()
            .map(|b| format!("{b:02X}"))
            .collect::<Vec<_>>()
            .join("-")
    }
}

/// PnP ID 0x2A50.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PnpId {
    pub vendor_id_source: u8,
    pub vendor_id: u16,
    pub product_id: u16,
    pub product_version: u16,
    #[serde(skip_serializing_if = "super::is_zero")]
    pub trailing_octets: usize,
}

impl PnpId {
    /// # Errors
    /// [`GattError::Truncated`] below 7 octets.
    pub fn decode(payload: &[u8]) -> Result<Self, GattError> {
        let mut r = Reader::new(payload);
        Ok(Self {
            vendor_id_source: r.u8()?,
            vendor_id: r.u16()?,
            product_id: r.u16()?,
            product_version: r.u16()?,
            trailing_octets: r.remaining(),
        })
    }
}
