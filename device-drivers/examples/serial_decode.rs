//! `vitalgate decode` in miniature, for trying the serial decoders before the agent CLI exists:
//!
//! ```text
//! cargo run -p device-drivers --example serial_decode -- --protocol NAME (--hex HEX | --file PATH)
//! ```
//!
//! `NAME` is a built-in protocol or the path of a generic-line device file (`*.toml`). Prints one
//! JSON object in the vectors' `expected` form. Malformed input is output (exit 0); bad
//! arguments or a bad device file exit 64 with a one-line reason.

use std::path::Path;
use std::process::ExitCode;

use device_drivers::serial::{self, generic::DeviceConfig};

fn usage(msg: &str) -> ExitCode {
    eprintln!("error: {msg}");
    eprintln!("usage: serial_decode --protocol NAME|DEVICE.toml (--hex HEX | --file PATH)");
    eprintln!(
        "built-in protocols: {}",
        serial::BUILTIN_PROTOCOLS.join(", ")
    );
    ExitCode::from(64)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (mut protocol, mut hex, mut file) = (None, None, None);
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let slot = match a.as_str() {
            "--protocol" => &mut protocol,
            "--hex" => &mut hex,
            "--file" => &mut file,
            other => return usage(&format!("unknown argument {other}")),
        };
        match it.next() {
            Some(v) => *slot = Some(v.clone()),
            None => return usage(&format!("{a} needs a value")),
        }
    }
    let Some(protocol) = protocol else {
        return usage("--protocol is required");
    };
    let bytes = match (hex, file) {
        (Some(h), None) => {
            let h: String = h.chars().filter(|c| !c.is_whitespace()).collect();
            if h.len() % 2 != 0 || !h.bytes().all(|b| b.is_ascii_hexdigit()) {
                return usage("--hex expects an even number of hex digits");
            }
            (0..h.len() / 2)
                .filter_map(|i| u8::from_str_radix(h.get(2 * i..2 * i + 2)?, 16).ok())
                .collect()
        }
        (None, Some(f)) => match std::fs::read(&f) {
            Ok(b) => b,
            Err(e) => return usage(&format!("cannot read {f}: {e}")),
        },
        _ => return usage("give exactly one of --hex or --file"),
    };
    let mut decoder = if let Some(d) = serial::builtin(&protocol) {
        d
    } else if protocol.ends_with(".toml") || Path::new(&protocol).exists() {
        match DeviceConfig::from_file(Path::new(&protocol)) {
            Ok(cfg) => cfg.decoder(),
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(64);
            }
        }
    } else {
        return usage(&format!("unknown protocol {protocol}"));
    };
    let json = serial::decode_all_to_json(decoder.as_mut(), &bytes);
    println!("{json}");
    ExitCode::SUCCESS
}
