//! Property tests of the streaming discipline: any byte stream never panics, never makes a
//! decoder hold more than its cap, gives the same events however it is chunked; valid frames
//! embedded in random garbage are all recovered, in order.

mod serial_support;

use std::path::Path;

use device_drivers::serial::{self, generic::DeviceConfig, Decoder, Event};
use proptest::prelude::*;
use serial_support::{input_bytes, vectors};

const GENERIC_TOML: &str = include_str!("../../config/devices/nonin-realtime-ascii.toml");

/// Every decoder under test: the built-ins plus the generic parser with a shipped device file.
fn decoders() -> Vec<(&'static str, Box<dyn Decoder>)> {
    let mut v: Vec<(&'static str, Box<dyn Decoder>)> = serial::BUILTIN_PROTOCOLS
        .iter()
        .map(|&p| (p, serial::builtin(p).expect("builtin")))
        .collect();
    let cfg = DeviceConfig::from_toml_str(GENERIC_TOML, Path::new("nonin.toml")).expect("config");
    v.push(("generic-line", cfg.decoder()));
    v
}

fn new_decoder(name: &str) -> Box<dyn Decoder> {
    if name == "generic-line" {
        DeviceConfig::from_toml_str(GENERIC_TOML, Path::new("nonin.toml"))
            .expect("config")
            .decoder()
    } else {
        serial::builtin(name).expect("builtin")
    }
}

/// Feeds `data` cut at the given sizes (cycled); checks the cap after every feed.
fn feed_chunked(d: &mut dyn Decoder, data: &[u8], sizes: &[usize]) -> Vec<Event> {
    let mut events = Vec::new();
    let mut rest = data;
    let mut i = 0;
    while !rest.is_empty() {
        let n = sizes
            .get(i % sizes.len().max(1))
            .copied()
            .unwrap_or(1)
            .clamp(1, rest.len());
        let (chunk, tail) = rest.split_at(n);
        events.extend(d.feed(chunk));
        let s = d.stats();
        assert!(
            s.buffered <= s.buffer_cap,
            "buffered {} > cap {}",
            s.buffered,
            s.buffer_cap
        );
        rest = tail;
        i += 1;
    }
    events
}

/// A valid unit of input per protocol (from the vectors) and the records it yields alone.
fn valid_units(protocol: &str) -> Vec<Vec<u8>> {
    let ids: &[&str] = match protocol {
        "nonin-df2" => &[
            "nonin-df2-packet-normal",
            "nonin-df2-packet-hr-above-127-smartpoint",
        ],
        "nonin-df7" => &[
            "nonin-df7-packet-normal-artifact",
            "nonin-df7-packet-low-battery-out-of-track",
        ],
        "nonin-df8" => &["nonin-df8-three-seconds", "nonin-df8-hr-200-artifact"],
        "nonin-df13" => &["nonin-df13-spot-check"],
        "masimo-ascii1" => &[
            "masimo-rad8-ascii1-normal",
            "masimo-radical7-docbox-example",
        ],
        "tanita-kv" => &["tanita-sc240-manual-sample", "tanita-hd351-lb-mode"],
        "philips-mib-rs232" => &["philips-mib-frame-escaped-payload"],
        "generic-line" => &["generic-nonin-ascii-normal", "generic-nonin-ascii-missing"],
        _ => &[],
    };
    let all = vectors();
    ids.iter()
        .map(|id| {
            let v = all.iter().find(|v| v["id"] == *id).expect("vector id");
            input_bytes(v, "input")
        })
        .collect()
}

fn records(events: &[Event]) -> Vec<serde_json::Value> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Record(r) => Some(serde_json::to_value(r).expect("json")),
            Event::Error(_) => None,
        })
        .collect()
}

fn is_subsequence(needle: &[serde_json::Value], hay: &[serde_json::Value]) -> bool {
    let mut it = hay.iter();
    needle.iter().all(|n| it.any(|h| h == n))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases_or(96)))]

    #[test]
    fn random_bytes_never_panic_stay_bounded_and_ignore_chunking(
        data in proptest::collection::vec(any::<u8>(), 0..3000),
        sizes in proptest::collection::vec(1usize..300, 1..8),
    ) {
        for (name, mut whole) in decoders() {
            let reference = whole.feed(&data);
            let s = whole.stats();
            prop_assert!(s.buffered <= s.buffer_cap, "{}", name);
            prop_assert_eq!(s.bytes_in, data.len() as u64);
            let mut chunked = new_decoder(name);
            let events = feed_chunked(chunked.as_mut(), &data, &sizes);
            prop_assert_eq!(&events, &reference, "{}", name);
            prop_assert_eq!(chunked.stats(), whole.stats(), "{}", name);
        }
    }

    #[test]
    fn text_like_noise_never_panics(
        data in proptest::collection::vec(
            prop_oneof![Just(b'\n'), Just(b'\r'), Just(b','), Just(b'='), Just(b'"'), Just(b' '),
                        Just(b'{'), Just(b'-'), Just(b'%'), b'0'..=b'9', b'A'..=b'Z'], 0..3000),
        sizes in proptest::collection::vec(1usize..64, 1..5),
    ) {
        for (name, _) in decoders() {
            let mut d = new_decoder(name);
            feed_chunked(d.as_mut(), &data, &sizes);
            let s = d.stats();
            prop_assert!(s.buffered <= s.buffer_cap, "{}", name);
        }
    }

    #[test]
    fn valid_frames_in_garbage_are_all_recovered(
        pieces in proptest::collection::vec(
            (proptest::collection::vec(any::<u8>(), 0..200), 0usize..8), 1..6),
        sizes in proptest::collection::vec(1usize..97, 1..6),
    ) {
        for (name, _) in decoders() {
            let units = valid_units(name);
            let text = matches!(name, "masimo-ascii1" | "tanita-kv" | "generic-line");
            let mut stream = Vec::new();
            let mut expected = Vec::new();
            for (garbage, pick) in &pieces {
                let unit = &units[pick % units.len()];
                // DF2/DF7 (normative algorithm of serial-protocols.md §1.2): a packet right after
                // garbage is lost when the garbage's tail and the packet's first bytes form a
                // valid SYNC frame (a false lock, ~1/500 boundaries; see nonin.rs "Known
                // limitation"). Garbage here cannot start a frame: no 0x01 start byte (DF2),
                // no status bit 7 (DF7). Every other decoder gets unrestricted garbage.
                let garbage: Vec<u8> = match name {
                    "nonin-df2" => garbage.iter().map(|&b| if b == 0x01 { 0x02 } else { b }).collect(),
                    "nonin-df7" => garbage.iter().map(|&b| b & 0x7F).collect(),
                    _ => garbage.clone(),
                };
                stream.extend_from_slice(&garbage);
                if text {
                    // Text protocols resynchronise at a line feed.
                    stream.extend_from_slice(b"\r\n");
                }
                stream.extend_from_slice(unit);
                let mut alone = new_decoder(name);
                expected.extend(records(&alone.feed(unit)));
            }
            let mut d = new_decoder(name);
            let got = records(&feed_chunked(d.as_mut(), &stream, &sizes));
            prop_assert!(
                is_subsequence(&expected, &got),
                "{}: expected {} records in order, got {}", name, expected.len(), got.len()
            );
        }
    }
}

#[test]
fn over_long_input_without_terminator_is_capped() {
    for (name, mut d) in decoders() {
        for _ in 0..100 {
            d.feed(&[b'7'; 1000]);
            let s = d.stats();
            assert!(s.buffered <= s.buffer_cap, "{name}");
        }
        let s = d.stats();
        assert!(s.bytes_discarded > 90_000, "{name}: {s:?}");
    }
}

/// Case count: `PROPTEST_CASES` when set (cross/test.sh lowers it under qemu), else the default.
fn cases_or(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}
