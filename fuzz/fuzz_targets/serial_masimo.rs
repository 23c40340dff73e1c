#![no_main]
//! Fuzzes the built-in serial decoder(s) ["masimo-ascii1"]: no panic, bounded buffer,
//! chunking-independent output.

use device_drivers::serial;
use libfuzzer_sys::fuzz_target;

mod serial_common;

fuzz_target!(|data: &[u8]| {
    for name in ["masimo-ascii1"] {
        let make = || serial::builtin(name).expect("built-in decoder");
        serial_common::check_decoder(make(), make(), data);
    }
});
