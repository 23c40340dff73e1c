//! Known non-conforming devices (gatt-profiles.md §11), keyed by Device Information.
//!
//! [`lookup`] takes the Manufacturer Name (0x2A29) and Model Number (0x2A24) strings and returns
//! the device's [`QuirkProfile`]. The profile changes decoding only where a device is known to
//! break the spec, and says how to set its clock:
//!
//! | profile | match | what differs |
//! |---|---|---|
//! | `beurer_bm85` | model contains `BM85` | BPM with flag bit6 set, a User ID octet although bit3 is clear, big-endian pulse and status (derdilla `ble_measurement_data_test.dart`). A spec decode gives pulse -256000 bpm. |
//! | `omron_bpm` | manufacturer `Omron`, or model `HEM-*`/`BLESmart_*` | CTS day of week 0; clock writable only on the first CTS notification and only when > 10 min off (blessed `isOmronBPM`); clock resets on battery change; replays stored readings |
//! | `and_medical` | manufacturer `A&D` | writes Date Time 0x2A08 in the measurement service (not CTS), 40/100 ms delay by firmware |
//! | `xiaomi_mibfs` | model `MIBFS` / `XMTZC05HM` | body composition is proprietary advertising data: a 0x2A9C payload is refused |
//! | `ascensia_contour` | manufacturer `Ascensia`/`Bayer` or model `Contour*` | proprietary clock characteristic |
//!
//! For the BM85 the quirk decoder is used only when the spec decode is non-conforming (an
//! impossible value, trailing octets or an RFU flag bit), so a fixed firmware keeps decoding
//! by the spec. Records decoded by a quirk carry the flag `quirk_<id>`. The BM85 sends MAP 0
//! (it computes none): the quirk decoder reports MAP as missing instead of 0 mmHg.

use std::fmt;

use super::blood_pressure::BloodPressureMeasurement;
use super::plausibility::check_possible;
use super::{uuid, GattError};
use crate::record::Record;
use crate::Status;

/// The id of a quirk profile (also the `<id>` of the record flag `quirk_<id>`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum QuirkId {
    /// The profile of a standard device (never in a flag).
    Standard,
    BeurerBm85,
    OmronBpm,
    AndMedical,
    XiaomiMibfs,
    AscensiaContour,
}

impl QuirkId {
    /// Every id.
    pub const ALL: [QuirkId; 6] = [
        Self::Standard,
        Self::BeurerBm85,
        Self::OmronBpm,
        Self::AndMedical,
        Self::XiaomiMibfs,
        Self::AscensiaContour,
    ];

    /// The snake_case id.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Standard => "standard",
            Self::BeurerBm85 => "beurer_bm85",
            Self::OmronBpm => "omron_bpm",
            Self::AndMedical => "and_medical",
            Self::XiaomiMibfs => "xiaomi_mibfs",
            Self::AscensiaContour => "ascensia_contour",
        }
    }

    /// Parses the snake_case id.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|q| q.as_str() == name)
    }
}

impl fmt::Display for QuirkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a device's clock is set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClockSetMethod {
    /// Write Current Time 0x2A2B when |skew| ≥ the threshold (fhir-mapping.md §4: 2 s).
    CurrentTime,
    /// Omron: only on the first CTS notification after connect, only when off by more than
    /// `min_skew_s`.
    CurrentTimeFirstNotificationOnly { min_skew_s: u32 },
    /// A&D: write Date Time 0x2A08 in the measurement service, before enabling indications;
    /// see [`and_write_delay_ms`].
    DateTimeInMeasurementService,
    /// Vendor-specific characteristic (not handled by this crate).
    Proprietary,
}

/// Which BPM layout a device sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BpmLayout {
    Standard,
    BeurerBm85,
}

/// What is known to be non-standard about one device family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QuirkProfile {
    pub id: QuirkId,
    pub bpm_layout: BpmLayout,
    pub clock: ClockSetMethod,
    /// Current Time day-of-week is unreliable (never validate it anyway).
    pub weekday_unreliable: bool,
    pub clock_resets_on_battery_change: bool,
    /// Re-sends stored readings on every connect: deduplicate.
    pub replays_stored_records: bool,
    /// Characteristics whose values from this device must not be decoded as standard.
    pub refuse: &'static [u16],
    /// Public source of the quirk.
    pub source: &'static str,
}

const STANDARD: QuirkProfile = QuirkProfile {
    id: QuirkId::Standard,
    bpm_layout: BpmLayout::Standard,
    clock: ClockSetMethod::CurrentTime,
    weekday_unreliable: false,
    clock_resets_on_battery_change: false,
    replays_stored_records: false,
    refuse: &[],
    source: "",
};

pub const BEURER_BM85: QuirkProfile = QuirkProfile {
    id: QuirkId::BeurerBm85,
    bpm_layout: BpmLayout::BeurerBm85,
    replays_stored_records: true,
    source: "derdilla/blood-pressure-monitor-fl ble_measurement_data_test.dart 'decodes beurer sample data'",
    ..STANDARD
};

pub const OMRON_BPM: QuirkProfile = QuirkProfile {
    id: QuirkId::OmronBpm,
    clock: ClockSetMethod::CurrentTimeFirstNotificationOnly { min_skew_s: 600 },
    weekday_unreliable: true,
    clock_resets_on_battery_change: true,
    replays_stored_records: true,
    source: "weliem/blessed-android BluetoothHandler isOmronBPM; eigger/hass-omron#67, README",
    ..STANDARD
};

pub const AND_MEDICAL: QuirkProfile = QuirkProfile {
    id: QuirkId::AndMedical,
    clock: ClockSetMethod::DateTimeInMeasurementService,
    source: "andengineering/AndroidSampleCode BleReceivedService.java",
    ..STANDARD
};

pub const XIAOMI_MIBFS: QuirkProfile = QuirkProfile {
    id: QuirkId::XiaomiMibfs,
    clock_resets_on_battery_change: true,
    refuse: &[uuid::BODY_COMPOSITION_MEASUREMENT],
    source: "lolouk44/hassio-addons#14; RobertWojtowicz/export2garmin#67",
    ..STANDARD
};

pub const ASCENSIA_CONTOUR: QuirkProfile = QuirkProfile {
    id: QuirkId::AscensiaContour,
    clock: ClockSetMethod::Proprietary,
    source: "weliem/blessed-android writeContourClock",
    ..STANDARD
};

/// Every profile, for documentation and tests.
pub const ALL: [&QuirkProfile; 5] = [
    &BEURER_BM85,
    &OMRON_BPM,
    &AND_MEDICAL,
    &XIAOMI_MIBFS,
    &ASCENSIA_CONTOUR,
];

fn norm(s: &str) -> String {
    s.chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '&')
        .map(|c| c.to_ascii_uppercase())
        .collect()
}

/// The quirk profile of a device, from its Device Information strings (`None` = standard).
pub fn lookup(manufacturer: Option<&str>, model: Option<&str>) -> Option<&'static QuirkProfile> {
    let man = manufacturer.map(norm).unwrap_or_default();
    let model = model.map(norm).unwrap_or_default();
    if model.contains("BM85") {
        return Some(&BEURER_BM85);
    }
    if model.contains("MIBFS") || model.contains("XMTZC05HM") {
        return Some(&XIAOMI_MIBFS);
    }
    if man.contains("OMRON") || model.starts_with("HEM") || model.starts_with("BLESMART") {
        return Some(&OMRON_BPM);
    }
    if man.starts_with("A&D") || man.starts_with("AANDD") {
        return Some(&AND_MEDICAL);
    }
    if man.contains("ASCENSIA") || man.contains("BAYER") || model.starts_with("CONTOUR") {
        return Some(&ASCENSIA_CONTOUR);
    }
    None
}

/// A&D post-time-write delay by firmware revision (A&D sample code): 40 ms for the listed
/// firmware, 100 ms otherwise.
pub fn and_write_delay_ms(firmware: &str) -> u32 {
    const FAST: [&str; 6] = [
        "BLP008_d016",
        "BLP008_d017",
        "HTP008_134",
        "CWSP008_108",
        "CWSP008_110",
        "WSP001_201",
    ];
    if FAST.contains(&firmware.trim()) {
        40
    } else {
        100
    }
}

impl QuirkProfile {
    /// The quirk decode of a payload, or `None` when the standard decoder applies.
    pub fn decode(&self, characteristic: u16, payload: &[u8]) -> Option<Result<Record, GattError>> {
        if self.refuse.contains(&characteristic) {
            return Some(Err(GattError::Invalid(
                "this device's payload for the characteristic is not standard",
            )));
        }
        if characteristic == uuid::BLOOD_PRESSURE_MEASUREMENT
            && self.bpm_layout == BpmLayout::BeurerBm85
        {
            let conforming = payload.first().is_some_and(|f| f & 0xE0 == 0)
                && BloodPressureMeasurement::decode(payload).is_ok_and(|m| {
                    m.trailing_octets == 0 && check_possible(&m.to_record()).is_ok()
                });
            if conforming {
                return None;
            }
            return Some(
                BloodPressureMeasurement::decode_beurer_bm85(payload).map(|mut m| {
                    // The BM85 sends MAP 0: it does not compute one. 0 mmHg is not a measurement.
                    if m.map.value().is_some_and(|v| v.mantissa == 0) {
                        m.map = super::Float11073::NaN;
                    }
                    let mut rec = m.to_record();
                    rec.add_flag(Status::Quirk(self.id));
                    rec
                }),
            );
        }
        None
    }
}
