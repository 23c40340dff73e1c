//! 0x2A08 / 0x2A2B / 0x2A0F / Device Information / CCCD: no panic; Current Time re-encodes.
#![no_main]

use device_drivers::gatt::{datetime::CurrentTime, decode_to_json, SUPPORTED_CHARACTERISTICS};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for ch in [
        0x2A08u16, 0x2A2B, 0x2A0F, 0x2A23, 0x2A24, 0x2A25, 0x2A29, 0x2A50,
    ] {
        let _ = decode_to_json(ch, data);
    }
    // The first octet picks any supported characteristic for the rest.
    if let [i, rest @ ..] = data {
        let ch = SUPPORTED_CHARACTERISTICS[usize::from(*i) % SUPPORTED_CHARACTERISTICS.len()];
        assert!(decode_to_json(ch, rest).is_some());
    }
    if data.len() == 10 {
        if let Ok(ct) = CurrentTime::decode(data) {
            assert_eq!(&ct.encode()[..], data);
        }
    }
    let _ = device_drivers::gatt::cccd::Cccd::decode(data);
});
