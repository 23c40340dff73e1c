//! 0x2A5E / 0x2A5F / 0x2A60: no panic; a conforming continuous measurement re-encodes exactly.
#![no_main]

use device_drivers::gatt::{decode_measurement, decode_to_json, plx::PlxContinuous};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for ch in [0x2A5Eu16, 0x2A5F, 0x2A60] {
        let _ = decode_to_json(ch, data);
        let _ = decode_measurement(ch, data, None);
    }
    if let Ok(m) = PlxContinuous::decode(data) {
        if m.trailing_octets == 0 && data.first().is_some_and(|f| f & 0xE0 == 0) {
            assert_eq!(
                m.encode().as_deref(),
                Some(data),
                "PLX continuous round trip"
            );
        }
    }
});
