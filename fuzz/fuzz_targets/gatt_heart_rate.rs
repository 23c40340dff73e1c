//! 0x2A37: no panic; a conforming measurement re-encodes exactly.
#![no_main]

use device_drivers::gatt::{decode_measurement, decode_to_json, heart_rate::HeartRateMeasurement};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = decode_to_json(0x2A37, data);
    let _ = decode_measurement(0x2A37, data, None);
    if let Ok(m) = HeartRateMeasurement::decode(data) {
        let canonical_contact = data.first().is_some_and(|f| (f >> 1) & 3 != 1);
        if m.trailing_octets == 0
            && canonical_contact
            && data.first().is_some_and(|f| f & 0xE0 == 0)
        {
            assert_eq!(m.encode(), data, "HRM round trip");
        }
    }
});
