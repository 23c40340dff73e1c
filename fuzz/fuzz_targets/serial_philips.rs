#![no_main]
//! Fuzzes the built-in serial decoder(s) ["philips-mib-rs232"]: no panic, bounded buffer,
//! chunking-independent output.

use device_drivers::serial;
use libfuzzer_sys::fuzz_target;

mod serial_common;

fuzz_target!(|data: &[u8]| {
    for name in ["philips-mib-rs232"] {
        let make = || serial::builtin(name).expect("built-in decoder");
        serial_common::check_decoder(make(), make(), data);
    }
});
