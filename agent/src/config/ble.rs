//! BLE configuration: the validated `[ble]` section and the BLE part of `[[devices]]`.
//!
//! ```toml
//! [ble]                          # optional; every key has a default
//! adapter = "hci0"
//! connect_timeout_secs = 20      # Connect + service discovery (btleplug waits 30 s otherwise)
//! operation_timeout_secs = 10    # every read, write, subscribe
//! watchdog_silence_secs = 300    # no adapter event for this long: refresh discovery, then power-cycle
//! reconnect_backoff_max_secs = 60
//!
//! [[devices]]
//! kind = "ble"
//! address = "00:09:1F:AA:BB:CC"  # identity address (public or random static), and/or:
//! serial = "5A0012345"           # Device Information identity (manufacturer, model, serial, system_id)
//! profile = "blood-pressure"     # or profiles = ["weight-scale", "body-composition"]
//! pair_if_bond_lost = true
//! ```

use std::fmt;
use std::time::Duration;

use crate::reading::DeviceClass;

/// A Bluetooth SIG health profile the transport speaks (decoders in `device_drivers::gatt`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum BleProfile {
    BloodPressure,
    WeightScale,
    BodyComposition,
    Thermometer,
    PulseOximeter,
    Glucose,
    HeartRate,
}

impl BleProfile {
    pub const ALL: [BleProfile; 7] = [
        Self::BloodPressure,
        Self::WeightScale,
        Self::BodyComposition,
        Self::Thermometer,
        Self::PulseOximeter,
        Self::Glucose,
        Self::HeartRate,
    ];

    /// The config spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BloodPressure => "blood-pressure",
            Self::WeightScale => "weight-scale",
            Self::BodyComposition => "body-composition",
            Self::Thermometer => "thermometer",
            Self::PulseOximeter => "pulse-oximeter",
            Self::Glucose => "glucose",
            Self::HeartRate => "heart-rate",
        }
    }

    pub fn from_name(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.as_str() == s)
    }

    /// The 16-bit UUID of the profile's service (gatt-profiles.md §2).
    pub fn service_uuid16(self) -> u16 {
        match self {
            Self::BloodPressure => 0x1810,
            Self::WeightScale => 0x181D,
            Self::BodyComposition => 0x181B,
            Self::Thermometer => 0x1809,
            Self::PulseOximeter => 0x1822,
            Self::Glucose => 0x1808,
            Self::HeartRate => 0x180D,
        }
    }

    /// Measurement characteristics to subscribe to (final values only: intermediate cuff
    /// pressure and intermediate temperature never become readings).
    pub fn measurement_characteristics(self) -> &'static [u16] {
        use device_drivers::gatt::uuid::*;
        match self {
            Self::BloodPressure => &[BLOOD_PRESSURE_MEASUREMENT],
            Self::WeightScale => &[WEIGHT_MEASUREMENT],
            Self::BodyComposition => &[BODY_COMPOSITION_MEASUREMENT],
            Self::Thermometer => &[TEMPERATURE_MEASUREMENT],
            Self::PulseOximeter => &[PLX_SPOT_CHECK, PLX_CONTINUOUS],
            Self::Glucose => &[GLUCOSE_MEASUREMENT],
            Self::HeartRate => &[HEART_RATE_MEASUREMENT],
        }
    }

    /// Profiles whose stored records are downloaded over RACP 0x2A52.
    pub fn racp(self) -> Option<device_drivers::gatt::racp::RacpProfile> {
        use device_drivers::gatt::racp::RacpProfile;
        match self {
            Self::Glucose => Some(RacpProfile::Glucose),
            Self::PulseOximeter => Some(RacpProfile::PulseOximeter),
            _ => None,
        }
    }

    pub fn device_class(self) -> DeviceClass {
        match self {
            Self::BloodPressure => DeviceClass::BloodPressureCuff,
            Self::WeightScale | Self::BodyComposition => DeviceClass::Scale,
            Self::Thermometer => DeviceClass::Thermometer,
            Self::PulseOximeter => DeviceClass::PulseOximeter,
            Self::Glucose => DeviceClass::GlucoseMeter,
            Self::HeartRate => DeviceClass::HeartRateSensor,
        }
    }
}

impl fmt::Display for BleProfile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Device Information Service identity: every value set must match what the device reports
/// (strings exactly, after trimming NUL padding; System ID as 16 hex digits).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DisIdentity {
    pub manufacturer: Option<String>,
    pub model: Option<String>,
    pub serial: Option<String>,
    /// EUI-64 as 16 upper-case hex digits (config accepts dashes or colons).
    pub system_id: Option<String>,
}

impl DisIdentity {
    pub fn is_empty(&self) -> bool {
        self.manufacturer.is_none()
            && self.model.is_none()
            && self.serial.is_none()
            && self.system_id.is_none()
    }
}

/// A configured BLE device (the `kind = "ble"` keys of `[[devices]]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BleDeviceConfig {
    /// Identity address, upper-case `AA:BB:CC:DD:EE:FF`. `None`: identified by DIS only.
    pub address: Option<String>,
    /// At least one; the first decides the device class.
    pub profiles: Vec<BleProfile>,
    pub identity: DisIdentity,
    /// Re-pair (BlueZ Device1.Pair, NoInputNoOutput) when the device refuses access for lack of a
    /// bond. Default false: a technician runs `vitalgate pair`.
    pub pair_if_bond_lost: bool,
    /// Write the device clock when it is off by at least this much. `None`: never write it.
    pub clock_set_threshold: Option<Duration>,
    /// Delete records on the device (RACP) after they are durable. Default false
    /// (gatt-profiles.md §8: only when an operator asked for it).
    pub delete_after_download: bool,
}

impl BleDeviceConfig {
    pub fn class(&self) -> DeviceClass {
        self.profiles
            .first()
            .map_or(DeviceClass::Generic, |p| p.device_class())
    }
}

/// The `[ble]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BleConfig {
    /// BlueZ adapter name (`hci0`).
    pub adapter: String,
    pub connect_timeout: Duration,
    pub operation_timeout: Duration,
    /// An adapter event stream silent this long is suspect (see the transport's watchdog).
    pub watchdog_silence: Duration,
    pub reconnect_backoff_max: Duration,
    /// A connected device that sends nothing for this long is disconnected (frees the radio).
    pub idle_disconnect: Duration,
}

impl Default for BleConfig {
    fn default() -> Self {
        Self {
            adapter: "hci0".into(),
            connect_timeout: Duration::from_secs(20),
            operation_timeout: Duration::from_secs(10),
            watchdog_silence: Duration::from_secs(300),
            reconnect_backoff_max: Duration::from_secs(60),
            idle_disconnect: Duration::from_secs(30),
        }
    }
}

/// `AA:BB:CC:DD:EE:FF` (hex, either case).
pub fn valid_address(a: &str) -> bool {
    let parts: Vec<&str> = a.split(':').collect();
    parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Canonical System ID: 16 upper-case hex digits, or `None` if `s` is not 8 octets of hex.
pub fn canonical_system_id(s: &str) -> Option<String> {
    let hex: String = s
        .chars()
        .filter(|c| !matches!(c, '-' | ':' | ' '))
        .map(|c| c.to_ascii_uppercase())
        .collect();
    (hex.len() == 16 && hex.bytes().all(|b| b.is_ascii_hexdigit())).then_some(hex)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profile_names_round_trip() {
        for p in BleProfile::ALL {
            assert_eq!(BleProfile::from_name(p.as_str()), Some(p));
        }
        assert_eq!(BleProfile::from_name("bp"), None);
    }

    #[test]
    fn system_ids_are_canonicalised() {
        assert_eq!(
            canonical_system_id("00-09-1f-ff-fe-80-12-34").as_deref(),
            Some("00091FFFFE801234")
        );
        assert_eq!(canonical_system_id("00:09:1F"), None);
        assert_eq!(canonical_system_id("zz091FFFFE801234"), None);
    }
}
