//! Spawning the binary under test, natively or through an emulator.
//!
//! `cross/test.sh` runs the test binaries under qemu-user; a binary they spawn must be run
//! through qemu too. It sets `VITALGATE_EXEC_WRAPPER` (e.g. `qemu-aarch64-static -L
//! /usr/aarch64-linux-gnu`), which is prefixed to the command here. Natively it is unset.
#![allow(dead_code)]

use std::path::Path;
use std::process::Command;

pub fn command(bin: impl AsRef<Path>) -> Command {
    command_after(&[], bin)
}

/// `prefix... [wrapper...] bin`: e.g. `setpriv --reuid=65534 ...` before the binary.
pub fn command_after(prefix: &[&str], bin: impl AsRef<Path>) -> Command {
    let wrapper = std::env::var("VITALGATE_EXEC_WRAPPER").unwrap_or_default();
    let mut parts: Vec<String> = prefix.iter().map(|s| s.to_string()).collect();
    parts.extend(wrapper.split_whitespace().map(str::to_string));
    let mut c = match parts.first() {
        Some(first) => Command::new(first),
        None => return Command::new(bin.as_ref()),
    };
    c.args(parts.iter().skip(1));
    c.arg(bin.as_ref());
    c
}

/// The `vitalgate` binary of this build, or the one `VITALGATE_BIN_UNDER_TEST` names (the MQTT
/// bench uses it to measure another build, e.g. an older commit, with the same harness).
pub fn vitalgate() -> Command {
    match std::env::var_os("VITALGATE_BIN_UNDER_TEST") {
        Some(bin) if !bin.is_empty() => command(bin),
        _ => command(env!("CARGO_BIN_EXE_vitalgate")),
    }
}
