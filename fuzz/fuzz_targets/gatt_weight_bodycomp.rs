//! 0x2A9D / 0x2A9E / 0x2A9C: no panic; a conforming weight measurement re-encodes exactly.
#![no_main]

use device_drivers::gatt::{decode_measurement, decode_to_json, quirks, weight::WeightMeasurement};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for ch in [0x2A9Du16, 0x2A9E, 0x2A9C] {
        let _ = decode_to_json(ch, data);
        let _ = decode_measurement(ch, data, None);
    }
    let _ = decode_measurement(0x2A9C, data, Some(&quirks::XIAOMI_MIBFS));
    if let Ok(m) = WeightMeasurement::decode(data) {
        if m.trailing_octets == 0 && data.first().is_some_and(|f| f & 0xF0 == 0) {
            assert_eq!(m.encode().as_deref(), Some(data), "WM round trip");
        }
    }
});
