//! 0x2A1C / 0x2A1D / 0x2A1E and IEEE 11073 FLOAT/SFLOAT: no panic, exact re-encoding.
#![no_main]

use device_drivers::gatt::sfloat::{encode_sfloat_rounded, Float11073};
use device_drivers::gatt::{
    decode_measurement, decode_to_json, thermometer::TemperatureMeasurement,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for ch in [0x2A1Cu16, 0x2A1D, 0x2A1E] {
        let _ = decode_to_json(ch, data);
        let _ = decode_measurement(ch, data, None);
    }
    if let Ok(m) = TemperatureMeasurement::decode(data) {
        if m.trailing_octets == 0 && data.first().is_some_and(|f| f & 0xF8 == 0) {
            assert_eq!(m.encode().as_deref(), Some(data), "TM round trip");
        }
    }
    if let Some(b) = data.get(..4) {
        let w = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        let v = Float11073::from_float(w);
        assert_eq!(v.to_float(), Some(w));
        if let Some(d) = v.value() {
            if let Some(s) = encode_sfloat_rounded(d) {
                assert!(!Float11073::from_sfloat(s).is_special());
            }
        }
    }
});
