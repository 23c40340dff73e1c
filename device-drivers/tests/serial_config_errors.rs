//! A bad generic-line device file gets an error naming the file, the line and column, and what
//! was expected (one test per class of mistake).

use std::path::Path;

use device_drivers::serial::generic::{DeviceConfig, DeviceConfigError};

const GOOD: &str = r#"[device]
id = "test-device"

[device.serial]
baud = 9600
data_bits = 8
parity = "none"
stop_bits = 1

[device.framing]
kind = "line"
max_line_bytes = 64

[[device.rule]]
name = "r"
regex = '^W=(?P<w>[0-9.]+) (?P<u>kg|lb)$'

[[device.rule.reading]]
capture = "w"
type = "body_weight"
parse = "decimal"
unit = "kg"
min = 0
max = 300
"#;

/// `GOOD` with the first occurrence of `from` replaced by `to`; returns the error.
fn error_for(from: &str, to: &str) -> DeviceConfigError {
    assert!(GOOD.contains(from), "{from}");
    let text = GOOD.replacen(from, to, 1);
    DeviceConfig::from_toml_str(&text, Path::new("config/devices/test.toml"))
        .expect_err("config should be rejected")
}

fn line_of(needle: &str, text: &str) -> usize {
    text.lines()
        .position(|l| l.contains(needle))
        .expect("needle")
        + 1
}

fn assert_names(e: &DeviceConfigError, line: usize, words: &[&str]) {
    let msg = e.to_string();
    assert!(
        msg.starts_with(&format!("config/devices/test.toml:{line}:")),
        "expected file and line {line}: {msg}"
    );
    assert_eq!(e.line, line, "{msg}");
    assert!(e.column >= 1, "{msg}");
    for w in words {
        assert!(msg.contains(w), "expected {w:?} in: {msg}");
    }
}

#[test]
fn the_base_file_is_valid() {
    let cfg = DeviceConfig::from_toml_str(GOOD, Path::new("t.toml")).unwrap();
    assert_eq!(cfg.id(), "test-device");
    assert_eq!(cfg.max_line_bytes(), 64);
}

#[test]
fn unknown_key_names_the_key_and_the_expected_ones() {
    let e = error_for("parse = \"decimal\"", "parse = \"decimal\"\nscael = 2");
    let text = GOOD.replacen("parse = \"decimal\"", "parse = \"decimal\"\nscael = 2", 1);
    assert_names(
        &e,
        line_of("scael", &text),
        &["unknown field `scael`", "expected one of", "scale"],
    );
}

#[test]
fn wrong_type_names_the_expected_type() {
    let e = error_for("baud = 9600", "baud = \"fast\"");
    assert_names(&e, line_of("baud", GOOD), &["invalid type", "u32"]);
}

#[test]
fn unknown_enum_value_lists_the_variants() {
    let e = error_for("parity = \"none\"", "parity = \"mark\"");
    assert_names(
        &e,
        line_of("parity", GOOD),
        &["mark", "none", "even", "odd"],
    );
}

#[test]
fn bad_regex_names_the_problem() {
    let e = error_for("(?P<u>kg|lb)$'", "(?P<u>kg|lb)$('");
    assert_names(
        &e,
        line_of("regex", GOOD),
        &["invalid regex", "unclosed group"],
    );
}

#[test]
fn look_around_is_refused_at_load() {
    let e = error_for("^W=(?P<w>", "^W=(?=x)(?P<w>");
    assert_names(
        &e,
        line_of("regex", GOOD),
        &["invalid regex", "look-around"],
    );
}

#[test]
fn capture_not_in_regex_lists_the_groups() {
    let e = error_for("capture = \"w\"", "capture = \"weight\"");
    assert_names(
        &e,
        line_of("capture = \"w\"", GOOD),
        &["`weight`", "expected one of: w, u"],
    );
}

#[test]
fn unknown_unit_is_rejected() {
    let e = error_for("unit = \"kg\"", "unit = \"kgs\"");
    assert_names(
        &e,
        line_of("unit = \"kg\"", GOOD),
        &["unknown UCUM unit `kgs`", "[lb_av]"],
    );
}

#[test]
fn min_greater_than_max_is_rejected() {
    let e = error_for("min = 0", "min = 400");
    assert_names(
        &e,
        line_of("min = 0", GOOD),
        &["`min` (400) is greater than `max` (300)"],
    );
}

#[test]
fn unknown_reading_type_lists_the_vocabulary() {
    let e = error_for("type = \"body_weight\"", "type = \"weight\"");
    assert_names(
        &e,
        line_of("type =", GOOD),
        &["unknown reading type `weight`", "body_weight"],
    );
}

#[test]
fn a_flag_name_must_be_a_known_status() {
    let flag = "max = 300\n\n[[device.rule.flag]]\ncapture = \"u\"\nname = \"sensor_error\"\n";
    let e = error_for("max = 300\n", flag);
    let text = GOOD.replacen("max = 300\n", flag, 1);
    assert_names(
        &e,
        line_of("sensor_error", &text),
        &[
            "`flag.name`: unknown status `sensor_error`",
            "expected one of",
            "sensor_off",
            "invalid_measurement_detected",
        ],
    );
    // The same rule with a known status loads.
    let ok = text.replace("sensor_error", "invalid_measurement_detected");
    assert!(DeviceConfig::from_toml_str(&ok, Path::new("t.toml")).is_ok());
}

#[test]
fn a_status_flags_value_must_be_a_known_status() {
    let gate = "regex = '^W=(?P<w>[0-9.]+) (?P<u>kg|lb)$'\nstatus_capture = \"u\"\nstatus_accept = [\"kg\"]\nstatus_flags = { lb = \"wobbly\" }";
    let e = error_for("regex = '^W=(?P<w>[0-9.]+) (?P<u>kg|lb)$'", gate);
    let text = GOOD.replacen("regex = '^W=(?P<w>[0-9.]+) (?P<u>kg|lb)$'", gate, 1);
    assert_names(
        &e,
        line_of("wobbly", &text),
        &["`status_flags`: unknown status `wobbly`", "unstable"],
    );
    let ok = text.replace("wobbly", "unstable");
    assert!(DeviceConfig::from_toml_str(&ok, Path::new("t.toml")).is_ok());
}

#[test]
fn missing_key_is_reported() {
    let e = error_for("data_bits = 8\n", "");
    assert!(e.to_string().contains("missing field `data_bits`"), "{e}");
    assert!(e.line >= 1, "{e}");
}

#[test]
fn impossible_port_settings_are_rejected() {
    let e = error_for("data_bits = 8", "data_bits = 9");
    assert_names(&e, line_of("data_bits", GOOD), &["expected 7 or 8"]);
    let e = error_for("max_line_bytes = 64", "max_line_bytes = 1000000");
    assert_names(&e, line_of("max_line_bytes", GOOD), &["1..=65536"]);
}

#[test]
fn toml_syntax_error_names_the_line() {
    let e = error_for("stop_bits = 1", "stop_bits = = 1");
    assert_names(&e, line_of("stop_bits", GOOD), &[]);
}

#[test]
fn reading_without_unit_is_rejected() {
    let e = error_for("unit = \"kg\"\n", "");
    assert!(e.to_string().contains("needs a `unit`"), "{e}");
}

#[test]
fn unit_capture_without_map_is_rejected() {
    let e = error_for("unit = \"kg\"", "unit_capture = \"u\"");
    assert!(e.to_string().contains("needs a `unit_map`"), "{e}");
}

#[test]
fn missing_file_names_the_file() {
    let e = DeviceConfig::from_file(Path::new("/nonexistent/dev.toml")).unwrap_err();
    assert!(
        e.to_string()
            .starts_with("/nonexistent/dev.toml: cannot read"),
        "{e}"
    );
}

#[test]
fn print_examples_of_messages() {
    // Not an assertion: `cargo test -- --nocapture` shows what a technician sees.
    for (from, to) in [
        ("capture = \"w\"", "capture = \"weight\""),
        ("unit = \"kg\"", "unit = \"kgs\""),
        ("(?P<u>kg|lb)$'", "(?P<u>kg|lb)$('"),
        ("baud = 9600", "baud = \"fast\""),
    ] {
        println!("{}", error_for(from, to));
    }
}

/// A technician decoding a capture does not know the port settings yet: `[device.serial]` is
/// optional, and a file without it uses 9600 8N1.
#[test]
fn a_device_file_without_port_settings_loads_with_the_default() {
    use device_drivers::serial::generic::DEFAULT_PORT_SETTINGS;
    use device_drivers::serial::{decode_all_to_json, PortSettings};
    let start = GOOD.find("[device.serial]").unwrap();
    let end = GOOD.find("[device.framing]").unwrap();
    let text = format!("{}{}", &GOOD[..start], &GOOD[end..]);
    assert!(!text.contains("baud"));
    let cfg = DeviceConfig::from_toml_str(&text, Path::new("t.toml")).unwrap();
    assert_eq!(cfg.declared_serial(), None);
    assert_eq!(cfg.serial(), DEFAULT_PORT_SETTINGS);
    assert_eq!(cfg.serial(), PortSettings::n81(9600));
    let out = decode_all_to_json(cfg.decoder().as_mut(), b"W=72.5 kg\r\n");
    assert_eq!(out["records"][0]["readings"][0]["value"], 72.5);

    let with = DeviceConfig::from_toml_str(GOOD, Path::new("t.toml")).unwrap();
    assert_eq!(with.declared_serial(), Some(PortSettings::n81(9600)));
    // A section that is present is still checked.
    let e = error_for("data_bits = 8", "data_bits = 9");
    assert!(e.to_string().contains("expected 7 or 8"), "{e}");
}

#[test]
fn cadence_defaults_to_per_measurement_and_the_shipped_oximeter_file_is_a_stream() {
    use device_drivers::serial::Cadence;
    let cfg = DeviceConfig::from_toml_str(GOOD, Path::new("t.toml")).unwrap();
    assert_eq!(cfg.cadence(), Cadence::PerMeasurement);
    let text = GOOD.replacen(
        "id = \"test-device\"",
        "id = \"t\"\ncadence = \"stream\"",
        1,
    );
    let cfg = DeviceConfig::from_toml_str(&text, Path::new("t.toml")).unwrap();
    assert_eq!(cfg.cadence(), Cadence::Stream);
    let e = error_for("id = \"test-device\"", "id = \"t\"\ncadence = \"often\"");
    assert!(e.to_string().contains("stream"), "{e}");
    let nonin = DeviceConfig::from_toml_str(
        include_str!("../../config/devices/nonin-realtime-ascii.toml"),
        Path::new("nonin-realtime-ascii.toml"),
    )
    .unwrap();
    assert_eq!(nonin.cadence(), Cadence::Stream);
}
