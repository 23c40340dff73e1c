//! Every public vector of testdata/serial-vectors.json through the library API: whole, in the
//! vector's chunks (plus fixed chunk sizes, since the public vectors give none), and one byte at a
//! time. Output must match `expected` and must not depend on the chunking.

mod serial_support;

use std::path::Path;

use device_drivers::serial::{self, generic::DeviceConfig, Decoder, Event};
use serde_json::Value;
use serial_support::{decode_input, input_bytes, match_expected, vectors};

fn decoder_for(v: &Value) -> Box<dyn Decoder> {
    let protocol = v["protocol"].as_str().expect("protocol");
    if protocol == "generic-line" {
        let toml = v["config_toml"].as_str().expect("config_toml");
        DeviceConfig::from_toml_str(toml, Path::new("vector.toml"))
            .unwrap_or_else(|e| panic!("{}: {e}", v["id"]))
            .decoder()
    } else {
        serial::builtin(protocol).unwrap_or_else(|| panic!("no decoder for {protocol}"))
    }
}

fn run_chunks(v: &Value, chunks: &[Vec<u8>]) -> (Value, Vec<Event>) {
    let mut d = decoder_for(v);
    let mut events = Vec::new();
    for c in chunks {
        events.extend(d.feed(c));
        let s = d.stats();
        assert!(s.buffered <= s.buffer_cap, "{}: buffer over cap", v["id"]);
    }
    (serial::events_to_json(&events, &d.stats()), events)
}

fn check(v: &Value, mode: &str, chunks: &[Vec<u8>], reference: &[Event]) {
    let (json, events) = run_chunks(v, chunks);
    if let Err(m) = match_expected(&v["expected"], &json) {
        panic!("vector {} ({mode}): {m}\nactual: {json}", v["id"]);
    }
    assert_eq!(
        events, reference,
        "vector {} ({mode}): chunking changed the output",
        v["id"]
    );
}

#[test]
fn every_vector_whole_chunked_and_byte_by_byte() {
    let all = vectors();
    assert_eq!(all.len(), 35);
    for v in &all {
        let input = input_bytes(v, "input");
        let mut d = decoder_for(v);
        let json = serial::decode_all_to_json(d.as_mut(), &input);
        if let Err(m) = match_expected(&v["expected"], &json) {
            panic!("vector {} (whole): {m}\nactual: {json}", v["id"]);
        }
        let (_, reference) = run_chunks(v, std::slice::from_ref(&input));

        if let Some(chunks) = v.get("chunks").and_then(Value::as_array) {
            let chunks: Vec<Vec<u8>> = chunks
                .iter()
                .map(|c| decode_input(v, c.as_str().expect("chunk")))
                .collect();
            assert_eq!(chunks.concat(), input, "{}: chunks != input", v["id"]);
            check(v, "vector chunks", &chunks, &reference);
        }
        for size in [2, 3, 7, 64] {
            let chunks: Vec<Vec<u8>> = input.chunks(size).map(<[u8]>::to_vec).collect();
            check(v, &format!("chunks of {size}"), &chunks, &reference);
        }
        let bytes: Vec<Vec<u8>> = input.iter().map(|&b| vec![b]).collect();
        check(v, "byte by byte", &bytes, &reference);
    }
}

#[test]
fn every_vector_protocol_is_known() {
    for v in vectors() {
        let p = v["protocol"].as_str().unwrap();
        assert!(
            p == "generic-line" || serial::BUILTIN_PROTOCOLS.contains(&p),
            "{p}"
        );
        if p != "generic-line" {
            assert!(serial::builtin_port_settings(p).is_some());
        }
    }
    assert!(serial::builtin("nonin-df99").is_none());
}

/// The shipped device files decode the generic vectors exactly like the vectors' own configs.
#[test]
fn shipped_device_files_decode_the_generic_vectors() {
    let nonin = DeviceConfig::from_toml_str(
        include_str!("../../config/devices/nonin-realtime-ascii.toml"),
        Path::new("config/devices/nonin-realtime-ascii.toml"),
    )
    .unwrap();
    let and = DeviceConfig::from_toml_str(
        include_str!("../../config/devices/and-standard-format.toml"),
        Path::new("config/devices/and-standard-format.toml"),
    )
    .unwrap();
    assert_eq!(nonin.serial().baud, 9600);
    assert_eq!(and.serial().data_bits, 7);
    for v in vectors() {
        let id = v["id"].as_str().unwrap();
        let cfg = if id.starts_with("generic-nonin") {
            &nonin
        } else if id.starts_with("generic-and") {
            &and
        } else {
            continue;
        };
        let json = serial::decode_all_to_json(cfg.decoder().as_mut(), &input_bytes(&v, "input"));
        match_expected(&v["expected"], &json).unwrap_or_else(|m| panic!("{id}: {m}"));
    }
}

/// The Tanita example device file reproduces the built-in decoder's weight and checksum rule.
#[test]
fn tanita_generic_device_file_checks_the_checksum() {
    let cfg = DeviceConfig::from_toml_str(
        include_str!("../../config/devices/tanita-kv-generic.toml"),
        Path::new("config/devices/tanita-kv-generic.toml"),
    )
    .unwrap();
    for v in vectors() {
        if v["protocol"] != "tanita-kv" {
            continue;
        }
        let input = input_bytes(&v, "input");
        let generic = serial::decode_all_to_json(cfg.decoder().as_mut(), &input);
        let builtin =
            serial::decode_all_to_json(serial::builtin("tanita-kv").unwrap().as_mut(), &input);
        assert_eq!(generic["errors"], builtin["errors"], "{}", v["id"]);
        let g = generic["records"].as_array().unwrap();
        let b = builtin["records"].as_array().unwrap();
        assert_eq!(g.len(), b.len(), "{}", v["id"]);
        for (g, b) in g.iter().zip(b) {
            // The weight is the first reading of the built-in decoder.
            assert_eq!(g["readings"][0], b["readings"][0], "{}", v["id"]);
        }
    }
}

#[test]
fn generic_worked_example_tables_of_the_spec() {
    let nonin = DeviceConfig::from_toml_str(
        include_str!("../../config/devices/nonin-realtime-ascii.toml"),
        Path::new("nonin.toml"),
    )
    .unwrap();
    let out = serial::decode_all_to_json(
        nonin.decoder().as_mut(),
        b"NONIN FORMAT 1\r\nSPO2=095 HR=088 F\r\nSPO2=105 HR=072\r\nSPO2=096 HR=070*\r\n",
    );
    assert_eq!(out["records"][0]["flags"], serde_json::json!(["spo2_fast"]));
    assert_eq!(out["errors"], serde_json::json!(["out_of_range"]));
    assert_eq!(
        out["records"][1]["flags"],
        serde_json::json!(["event_marker"])
    );

    let and = DeviceConfig::from_toml_str(
        include_str!("../../config/devices/and-standard-format.toml"),
        Path::new("and.toml"),
    )
    .unwrap();
    let out = serial::decode_all_to_json(
        and.decoder().as_mut(),
        b"ST,+00072.45 kg\r\nST,+00?72.45 kg\r\nST,+000012.0 PC\r\n",
    );
    match_expected(
        &serde_json::json!({"records": [{"readings": [{"type": "body_weight", "value": 72.45, "unit": "kg"}]}],
                            "errors": ["no_rule_matched", "malformed_field"]}),
        &out,
    )
    .unwrap();
}
