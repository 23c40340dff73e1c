//! `vitalgate decode` through the real binary, over every public vector: the GATT vectors
//! (gatt-profiles.md section-0 form) and the serial vectors (the vectors' `expected` form).
//! The matching rules are the same code the library tests use.
//! The matching rules are the same code the library tests use.

mod common;
#[path = "../device-drivers/tests/support/mod.rs"]
mod gatt_support;
#[path = "../device-drivers/tests/serial_support/mod.rs"]
mod serial_support;

use serde_json::Value;

fn vitalgate(args: &[&str]) -> std::process::Output {
    common::vitalgate()
        .args(args)
        .output()
        .expect("run vitalgate")
}

fn json_stdout(out: &std::process::Output) -> Value {
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        text.trim_end().lines().count(),
        1,
        "exactly one JSON line: {text}"
    );
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

#[test]
fn every_gatt_vector_decodes_through_the_cli() {
    let doc: Value =
        serde_json::from_str(include_str!("../device-drivers/testdata/gatt-vectors.json")).unwrap();
    let vectors = doc
        .as_array()
        .or_else(|| doc["vectors"].as_array())
        .unwrap();
    assert_eq!(vectors.len(), 75);
    let mut failures = Vec::new();
    for v in vectors {
        let id = v["id"].as_str().unwrap();
        let out = vitalgate(&[
            "decode",
            "--characteristic",
            v["characteristic"].as_str().unwrap(),
            "--hex",
            v["hex"].as_str().unwrap(),
        ]);
        let actual = json_stdout(&out);
        if let Err(e) = gatt_support::match_expected(&v["expected"], &actual) {
            failures.push(format!("{id}: {e}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn every_serial_vector_decodes_through_the_cli() {
    let doc: Value = serde_json::from_str(include_str!(
        "../device-drivers/testdata/serial-vectors.json"
    ))
    .unwrap();
    let vectors = doc["vectors"].as_array().unwrap();
    assert_eq!(vectors.len(), 35);
    let dir = tempfile::tempdir().unwrap();
    let mut failures = Vec::new();
    for v in vectors {
        let id = v["id"].as_str().unwrap();
        let input = v["input"].as_str().unwrap();
        let bytes: Vec<u8> = if v["input_encoding"].as_str() == Some("hex") {
            hex::decode(input).unwrap()
        } else {
            input.chars().map(|c| c as u32 as u8).collect()
        };
        let file = dir.path().join(format!("{id}.bin"));
        std::fs::write(&file, &bytes).unwrap();
        let protocol = match v.get("config_toml").and_then(Value::as_str) {
            Some(toml) => {
                let p = dir.path().join(format!("{id}.toml"));
                std::fs::write(&p, toml).unwrap();
                p.display().to_string()
            }
            None => v["protocol"].as_str().unwrap().to_string(),
        };
        let out = vitalgate(&[
            "decode",
            "--protocol",
            &protocol,
            "--file",
            file.to_str().unwrap(),
        ]);
        let actual = json_stdout(&out);
        if let Err(e) = serial_support::match_expected(&v["expected"], &actual) {
            failures.push(format!("{id}: {e}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn malformed_gatt_payloads_are_output_not_errors() {
    let out = vitalgate(&["decode", "--characteristic", "0x2A35", "--hex", "1e8a"]);
    let v = json_stdout(&out);
    assert_eq!(v["error"], "truncated");
}

#[test]
fn malformed_serial_input_is_output_not_an_error() {
    let out = vitalgate(&["decode", "--protocol", "nonin-df2", "--hex", "ff00ff00"]);
    let v = json_stdout(&out);
    assert_eq!(v["records"], serde_json::json!([]));
}

#[test]
fn a_bad_device_file_exits_64_naming_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("dev.toml");
    std::fs::write(&p, "[device]\nid = \"x\"\ncolour = 1\n").unwrap();
    let out = vitalgate(&["decode", "--protocol", p.to_str().unwrap(), "--hex", "00"]);
    assert_eq!(out.status.code(), Some(64), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("dev.toml:3"), "{err}");
}

/// A technician with a capture and no port settings yet: a device file without
/// `[device.serial]` decodes.
#[test]
fn a_device_file_without_port_settings_decodes_a_capture() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("dev.toml");
    std::fs::write(
        &p,
        "[device]\nid = \"x\"\n[device.framing]\nkind = \"line\"\n[[device.rule]]\nname = \"r\"\nregex = 'SPO2=(?P<s>[0-9]+)'\n[[device.rule.reading]]\ncapture = \"s\"\ntype = \"spo2\"\nunit = \"%\"\n",
    )
    .unwrap();
    let cap = dir.path().join("capture.bin");
    std::fs::write(&cap, b"SPO2=97\r\n").unwrap();
    let out = vitalgate(&[
        "decode",
        "--protocol",
        p.to_str().unwrap(),
        "--file",
        cap.to_str().unwrap(),
    ]);
    let v = json_stdout(&out);
    assert_eq!(v["records"][0]["readings"][0]["value"], 97.0);
}

#[test]
fn bad_arguments_exit_non_zero() {
    for args in [
        vec!["decode", "--protocol", "nonin-df2", "--hex", "zz"],
        vec!["decode", "--characteristic", "0x2A35", "--hex", "zz"],
        vec!["decode", "--characteristic", "0xFFFF", "--hex", "00"],
        vec!["decode", "--characteristic", "0x12345", "--hex", "00"],
        vec!["decode", "--protocol", "no-such-protocol", "--hex", "00"],
        vec!["decode", "--hex", "00"],
    ] {
        let out = vitalgate(&args);
        assert!(!out.status.success(), "{args:?} should fail: {out:?}");
        assert!(out.stdout.is_empty(), "{args:?} printed to stdout");
    }
}
