#![no_main]
//! Fuzzes the built-in serial decoder(s) ["nonin-df2", "nonin-df7", "nonin-df8", "nonin-df13"]: no panic, bounded buffer,
//! chunking-independent output.

use device_drivers::serial;
use libfuzzer_sys::fuzz_target;

mod serial_common;

fuzz_target!(|data: &[u8]| {
    for name in ["nonin-df2", "nonin-df7", "nonin-df8", "nonin-df13"] {
        let make = || serial::builtin(name).expect("built-in decoder");
        serial_common::check_decoder(make(), make(), data);
    }
});
