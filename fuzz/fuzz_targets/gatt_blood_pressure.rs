//! 0x2A35 / 0x2A36 / 0x2A49: no panic; a conforming BPM re-encodes to its own bytes; the
//! BM85 quirk path never panics.
#![no_main]

use device_drivers::gatt::{blood_pressure::BloodPressureMeasurement, decode_measurement, quirks};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for ch in [0x2A35u16, 0x2A36, 0x2A49] {
        let _ = device_drivers::gatt::decode_to_json(ch, data);
        let _ = decode_measurement(ch, data, None);
    }
    let _ = decode_measurement(0x2A35, data, Some(&quirks::BEURER_BM85));
    if let Ok(m) = BloodPressureMeasurement::decode(data) {
        if m.trailing_octets == 0 && data.first().is_some_and(|f| f & 0xE0 == 0) {
            assert_eq!(m.encode().as_deref(), Some(data), "BPM round trip");
        }
    }
});
