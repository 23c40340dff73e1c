//! Decoding throughput of the serial decoders (`cargo bench -p device-drivers --bench
//! serial_throughput`). No framework: plain `Instant`, one warm-up run, then the median of
//! several runs. Inputs are the public vectors' valid messages repeated to ~4 MiB (plus random
//! bytes for the hunting worst case), fed in 4 KiB reads as a serial transport would.
//!
//! Baselines, measured in the same run over the same buffers: a byte-sum loop (the cost of
//! touching every byte once) and a newline count (the cost of the line framer's LF scan).

use std::hint::black_box;
use std::path::Path;
use std::time::{Duration, Instant};

use device_drivers::serial::{self, generic::DeviceConfig, Decoder, Event};

/// Creates a fresh decoder for one run.
type MakeDecoder = Box<dyn Fn() -> Box<dyn Decoder>>;

const TARGET_BYTES: usize = 4 << 20;
const READ_SIZE: usize = 4096;
const RUNS: usize = 7;

fn vector_input(id: &str) -> Vec<u8> {
    let doc: serde_json::Value =
        serde_json::from_str(include_str!("../testdata/serial-vectors.json")).unwrap_or_default();
    let v = doc["vectors"]
        .as_array()
        .and_then(|a| a.iter().find(|v| v["id"] == id))
        .cloned()
        .unwrap_or_default();
    let s = v["input"].as_str().unwrap_or_default();
    if v["input_encoding"] == "hex" {
        (0..s.len() / 2)
            .filter_map(|i| s.get(2 * i..2 * i + 2))
            .filter_map(|h| u8::from_str_radix(h, 16).ok())
            .collect()
    } else {
        s.chars()
            .filter_map(|c| u8::try_from(u32::from(c)).ok())
            .collect()
    }
}

fn repeat_to_target(units: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::with_capacity(TARGET_BYTES + 4096);
    let mut i = 0;
    while out.len() < TARGET_BYTES && !units.is_empty() {
        out.extend_from_slice(&units[i % units.len()]);
        i += 1;
    }
    out
}

fn random_bytes(n: usize) -> Vec<u8> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn time_runs(mut f: impl FnMut() -> u64) -> (Duration, u64) {
    let check = f(); // warm-up
    let runs = (0..RUNS)
        .map(|_| {
            let t = Instant::now();
            black_box(f());
            t.elapsed()
        })
        .collect();
    (median(runs), check)
}

fn decode(make: &dyn Fn() -> Box<dyn Decoder>, data: &[u8]) -> u64 {
    let mut d = make();
    let mut records = 0u64;
    for chunk in data.chunks(READ_SIZE) {
        for e in d.feed(black_box(chunk)) {
            if matches!(e, Event::Record(_)) {
                records += 1;
            }
        }
    }
    records
}

fn mb_per_s(bytes: usize, t: Duration) -> f64 {
    bytes as f64 / (1024.0 * 1024.0) / t.as_secs_f64().max(1e-12)
}

fn main() {
    let generic = |toml: &'static str| -> MakeDecoder {
        let cfg = DeviceConfig::from_toml_str(toml, Path::new("bench.toml"));
        Box::new(move || match &cfg {
            Ok(c) => c.decoder(),
            Err(_) => serial::builtin("masimo-ascii1").unwrap_or_else(|| unreachable!()),
        })
    };
    let builtin = |name: &'static str| -> MakeDecoder {
        Box::new(move || serial::builtin(name).unwrap_or_else(|| unreachable!()))
    };
    let nonin_ascii = include_str!("../../config/devices/nonin-realtime-ascii.toml");
    let and_scale = include_str!("../../config/devices/and-standard-format.toml");
    let tanita_generic = include_str!("../../config/devices/tanita-kv-generic.toml");

    let cases: Vec<(&str, MakeDecoder, Vec<u8>)> = vec![
        (
            "nonin-df2",
            builtin("nonin-df2"),
            repeat_to_target(&[
                vector_input("nonin-df2-packet-normal"),
                vector_input("nonin-df2-packet-hr-above-127-smartpoint"),
            ]),
        ),
        (
            "nonin-df7",
            builtin("nonin-df7"),
            repeat_to_target(&[
                vector_input("nonin-df7-packet-normal-artifact"),
                vector_input("nonin-df7-packet-low-battery-out-of-track"),
            ]),
        ),
        (
            "nonin-df7 (random bytes)",
            builtin("nonin-df7"),
            random_bytes(TARGET_BYTES),
        ),
        (
            "nonin-df8",
            builtin("nonin-df8"),
            repeat_to_target(&[vector_input("nonin-df8-three-seconds")]),
        ),
        (
            "nonin-df13",
            builtin("nonin-df13"),
            repeat_to_target(&[vector_input("nonin-df13-spot-check")]),
        ),
        (
            "masimo-ascii1",
            builtin("masimo-ascii1"),
            repeat_to_target(&[
                vector_input("masimo-rad8-ascii1-normal"),
                vector_input("masimo-radical7-docbox-example"),
            ]),
        ),
        (
            "masimo-ascii1 (random bytes)",
            builtin("masimo-ascii1"),
            random_bytes(TARGET_BYTES),
        ),
        (
            "tanita-kv",
            builtin("tanita-kv"),
            repeat_to_target(&[
                vector_input("tanita-sc240-manual-sample"),
                vector_input("tanita-mc780-capture"),
            ]),
        ),
        (
            "philips-mib-rs232",
            builtin("philips-mib-rs232"),
            repeat_to_target(&[vector_input("philips-mib-frame-escaped-payload")]),
        ),
        (
            "philips-mib-rs232 (random bytes)",
            builtin("philips-mib-rs232"),
            random_bytes(TARGET_BYTES),
        ),
        (
            "generic: nonin-realtime-ascii",
            generic(nonin_ascii),
            repeat_to_target(&[
                vector_input("generic-nonin-ascii-normal"),
                vector_input("generic-nonin-ascii-missing"),
            ]),
        ),
        (
            "generic: and-standard-format",
            generic(and_scale),
            repeat_to_target(&[
                vector_input("generic-and-stable-grams"),
                vector_input("generic-and-unstable"),
            ]),
        ),
        (
            "generic: tanita-kv-generic",
            generic(tanita_generic),
            repeat_to_target(&[
                vector_input("tanita-sc240-manual-sample"),
                vector_input("tanita-hd351-lb-mode"),
            ]),
        ),
    ];

    println!(
        "{:<34} {:>8} {:>10} {:>9} {:>12} {:>12}",
        "decoder", "input MB", "MB/s", "records", "vs byte-sum", "vs LF-scan"
    );
    for (name, make, data) in &cases {
        let (t_sum, _) = time_runs(|| {
            data.iter()
                .fold(0u64, |a, &b| a.wrapping_add(u64::from(black_box(b))))
        });
        let (t_lf, _) = time_runs(|| {
            black_box(data.as_slice())
                .iter()
                .filter(|&&b| b == b'\n')
                .count() as u64
        });
        let (t, records) = time_runs(|| decode(make.as_ref(), data));
        let mbs = mb_per_s(data.len(), t);
        println!(
            "{:<34} {:>8.2} {:>10.1} {:>9} {:>11.3}x {:>11.3}x",
            name,
            data.len() as f64 / (1024.0 * 1024.0),
            mbs,
            records,
            mbs / mb_per_s(data.len(), t_sum),
            mbs / mb_per_s(data.len(), t_lf),
        );
    }
    println!("(ratio = decoder MB/s / baseline MB/s over the same buffer; median of {RUNS} runs after a warm-up; {READ_SIZE}-byte reads)");
}
