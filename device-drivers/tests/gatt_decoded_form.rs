//! Section-0 behaviour on inputs that no vector shows.

mod support;

use device_drivers::gatt::device_info::SystemId;
use device_drivers::gatt::{decode_to_json, GattError};
use serde_json::{json, Value};
use support::{hex, match_expected};

fn j(ch: u16, h: &str) -> Value {
    decode_to_json(ch, &hex(h)).expect("supported")
}

fn check(ch: u16, h: &str, expected: Value) {
    let actual = j(ch, h);
    if let Err(e) = match_expected(&expected, &actual) {
        panic!("{ch:#06x} {h}: {e}\n actual: {actual}");
    }
}

#[test]
fn local_time_information_unknown_and_reserved_are_null() {
    check(
        0x2A0F,
        "fc04",
        json!({"time_zone_offset_minutes": -60, "dst_offset_minutes": 60}),
    );
    check(
        0x2A0F,
        "80ff",
        json!({"time_zone_offset_minutes": null, "dst_offset_minutes": null}),
    );
    check(
        0x2A0F,
        "3803",
        json!({"time_zone_offset_minutes": 840, "dst_offset_minutes": null}),
    );
    check(0x2A0F, "fc", json!({"error": "truncated"}));
}

#[test]
fn racp_edge_cases() {
    check(
        0x2A52,
        "0300",
        json!({"opcode": 3, "opcode_name": "abort_operation", "operator": 0, "operator_name": "null"}),
    );
    check(0x2A52, "0301", json!({"error": "invalid"}));
    check(0x2A52, "0701", json!({"error": "invalid"}));
    check(0x2A52, "00", json!({"error": "truncated"}));
    check(0x2A52, "0500", json!({"error": "truncated"}));
    check(0x2A52, "0103", json!({"error": "truncated"}));
    check(0x2A52, "010401010005", json!({"error": "truncated"}));
    check(
        0x2A52,
        "01040101000500",
        json!({"opcode": 1, "opcode_name": "report_stored_records", "operator": 4,
               "operator_name": "within_range_inclusive", "filter_type": 1,
               "filter_type_name": "sequence_number", "operand": [1, 5]}),
    );
    check(
        0x2A52,
        "010202e807010f072d00",
        json!({"opcode": 1, "opcode_name": "report_stored_records", "operator": 2,
               "operator_name": "less_than_or_equal", "filter_type": 2,
               "filter_type_name": "user_facing_time", "operand": ["2024-01-15T07:45:00"]}),
    );
    check(
        0x2A52,
        "0107aa",
        json!({"opcode": 1, "opcode_name": "report_stored_records", "operator": 7,
               "operator_name": "reserved", "trailing_octets": 1}),
    );
    // A device may echo an op code we do not know with "op code not supported".
    check(
        0x2A52,
        "06000902",
        json!({"opcode": 6, "opcode_name": "response_code", "request_opcode": 9,
               "request_opcode_name": "reserved", "response_code": 2,
               "response_code_name": "op_code_not_supported"}),
    );
}

#[test]
fn heart_rate_odd_octet_is_trailing() {
    check(
        0x2A37,
        "1048000401",
        json!({"heart_rate": 72, "sensor_contact": "not_supported", "rr_intervals": [1024],
               "rr_intervals_s": [1.0], "trailing_octets": 1}),
    );
}

#[test]
fn body_composition_unsuccessful_imperial_with_height() {
    check(
        0x2A9C,
        "0108ffff5802",
        json!({"unit_system": "imperial", "mass_unit": "lb", "height_unit": "in",
               "multiple_packet": false, "body_fat_percent": null,
               "measurement_unsuccessful": true, "height": 60.0}),
    );
    check(0x2A9C, "0008ffff", json!({"error": "truncated"}));
}

#[test]
fn icp_never_reports_diastolic_or_map() {
    let v = j(0x2A36, "01a500ff07ff07");
    assert!(v.get("diastolic").is_none() && v.get("map").is_none());
    assert_eq!(v["unit"], "kPa");
}

#[test]
fn date_time_out_of_range_fields_are_null_with_raw() {
    check(
        0x2A08,
        "e8070c1f183b00",
        json!({"timestamp": null, "timestamp_raw": [2024, 12, 31, 24, 59, 0]}),
    );
    check(
        0x2A08,
        "2d06010100000000",
        json!({"timestamp": null, "timestamp_raw": [1581, 1, 1, 0, 0, 0], "trailing_octets": 1}),
    );
    // BPM keeps its values when the clock is bad.
    check(
        0x2A35,
        "0278005000 5d00 e8070d01000000",
        json!({"systolic": 120.0, "diastolic": 80.0, "map": 93.0, "unit": "mmHg",
               "timestamp": null, "timestamp_raw": [2024, 13, 1, 0, 0, 0]}),
    );
}

#[test]
fn glucose_offset_beyond_range_gives_null_timestamp() {
    let v = j(0x2A18, "010100 0f27 0c 1f 17 3b 00 ff7f");
    assert_eq!(v["base_time"], "9999-12-31T23:59:00");
    assert!(v["timestamp"].is_null());
}

#[test]
fn strings_system_id_and_pnp() {
    check(0x2A24, "", json!({"value": ""}));
    check(0x2A26, "000000", json!({"value": ""}));
    check(
        0x2A50,
        "010d0001020300",
        json!({"vendor_id_source": 1, "vendor_id": 13, "product_id": 513, "product_version": 3}),
    );
    check(0x2A23, "debc9afeff5634", json!({"error": "truncated"}));
    let s = SystemId::decode(&hex("341280feff1f0900")).unwrap();
    assert_eq!(s.eui64(), "00-09-1F-FF-FE-80-12-34");
}

#[test]
fn error_kinds_are_the_section_0_strings() {
    assert_eq!(
        GattError::Truncated { needed: 7, got: 6 }.kind(),
        "truncated"
    );
    assert_eq!(GattError::Invalid("x").kind(), "invalid");
}

#[test]
fn crate_has_no_io_dependencies() {
    let manifest = include_str!("../Cargo.toml");
    let deps = manifest
        .split("[dependencies]")
        .nth(1)
        .and_then(|s| s.split("\n[").next())
        .unwrap_or("");
    for forbidden in ["tokio", "btleplug", "sled", "serialport", "chrono"] {
        assert!(!deps.contains(forbidden), "{forbidden} in [dependencies]");
    }
}
