//! Spawning the binary under test, natively or through an emulator.
//!
//! `cross/test.sh` runs the test binaries under qemu-user; a binary they spawn must be run
//! through qemu too. It sets `VITALGATE_EXEC_WRAPPER` (e.g. `qemu-aarch64-static -L
//! /usr/aarch64-linux-gnu`), which is prefixed to the command here. Natively it is unset.
#![allow(dead_code)]

use std::path::Path;
use std::process::Command;

pub fn command(bin: impl AsRef<Path>) -> Command {
    match std::env::var("VITALGATE_EXEC_WRAPPER") {
        Ok(w) if !w.trim().is_empty() => {
            let mut parts = w.split_whitespace();
            let mut c = Command::new(parts.next().unwrap_or_default());
            c.args(parts);
            c.arg(bin.as_ref());
            c
        }
        _ => Command::new(bin.as_ref()),
    }
}

/// The `vitalgate` binary of this build, or the one `VITALGATE_BIN_UNDER_TEST` names (the MQTT
/// bench uses it to measure another build, e.g. an older commit, with the same harness).
pub fn vitalgate() -> Command {
    match std::env::var_os("VITALGATE_BIN_UNDER_TEST") {
        Some(bin) if !bin.is_empty() => command(bin),
        _ => command(env!("CARGO_BIN_EXE_vitalgate")),
    }
}
