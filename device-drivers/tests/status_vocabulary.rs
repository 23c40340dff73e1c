//! The device-status vocabulary is the one the decoders spoke as strings before `Status`
//! existed: every old string parses to one variant and serialises back unchanged, the decoders
//! put the same strings in the same bit order into a record's JSON, and the classes the agent
//! relies on hold.

use device_drivers::gatt::decode_measurement;
use device_drivers::serial::{self, generic::DeviceConfig};
use device_drivers::{ReadingType, Record, Status, StatusClass};
use std::collections::BTreeSet;
use std::path::Path;

/// Every flag string a decoder or a shipped device file emitted before `Status` (collected from
/// the `add_flag` calls and bit-name tables of the previous code), grouped by source.
const LEGACY: &[&str] = &[
    // gatt/mod.rs helpers
    "device_time_invalid",
    "unknown_user",
    "trailing_octets",
    // blood pressure status
    "body_movement",
    "cuff_too_loose",
    "irregular_pulse",
    "improper_position",
    "pulse_rate_exceeds_upper_limit",
    "pulse_rate_below_lower_limit",
    "pulse_rate_range_reserved",
    // weight, body composition
    "measurement_unsuccessful",
    "multiple_packet",
    // PLX
    "device_clock_not_set",
    "measurement_ongoing",
    "early_estimated_data",
    "validated_data",
    "fully_qualified_data",
    "data_from_measurement_storage",
    "data_for_demonstration",
    "data_for_testing",
    "calibration_ongoing",
    "measurement_unavailable",
    "questionable_measurement_detected",
    "invalid_measurement_detected",
    "extended_display_update_ongoing",
    "equipment_malfunction_detected",
    "signal_processing_irregularity_detected",
    "inadequate_signal_detected",
    "poor_signal_detected",
    "low_perfusion_detected",
    "erratic_signal_detected",
    "nonpulsatile_signal_detected",
    "questionable_pulse_detected",
    "signal_analysis_ongoing",
    "sensor_interference_detected",
    "sensor_unconnected_to_user",
    "unknown_sensor_connected",
    "sensor_displaced",
    "sensor_malfunctioning",
    "sensor_disconnected",
    // glucose
    "control_solution",
    "context_follows",
    "device_battery_low",
    "sensor_malfunction",
    "sample_size_insufficient",
    "strip_insertion_error",
    "strip_type_incorrect",
    "result_higher_than_device_can_process",
    "result_lower_than_device_can_process",
    "sensor_temperature_too_high",
    "sensor_temperature_too_low",
    "sensor_read_interrupted",
    "general_device_fault",
    "time_fault",
    // heart rate
    "sensor_contact_not_detected",
    // Nonin
    "sensor_disconnect",
    "artifact",
    "out_of_track",
    "sensor_alarm",
    "low_perfusion",
    "marginal_perfusion",
    "smartpoint",
    "low_battery",
    "no_measurement",
    "from_memory",
    // Masimo
    "no_sensor",
    "defective_sensor",
    "pulse_search",
    "interference",
    "sensor_off",
    "ambient_light",
    "unrecognized_sensor",
    "low_signal_iq",
    "masimo_set",
    "exc_other",
    // config/devices/*.toml and the generic vectors
    "unstable",
    "overload",
    "count_mode",
    "spo2_fast",
    "event_marker",
];

#[test]
fn every_legacy_string_parses_and_serialises_back_unchanged() {
    for s in LEGACY {
        let st: Status = s.parse().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(st.to_string(), *s);
        assert_eq!(serde_json::to_value(st).unwrap(), serde_json::json!(s));
    }
    // Computed names: every reading type and quirk id.
    for t in ReadingType::ALL {
        let s = format!("implausible_{}", t.as_str());
        assert_eq!(s.parse::<Status>(), Ok(Status::Implausible(t)));
    }
    assert_eq!(
        "quirk_beurer_bm85".parse::<Status>().map(|s| s.to_string()),
        Ok("quirk_beurer_bm85".to_string())
    );
}

#[test]
fn there_is_exactly_one_fixed_variant_per_legacy_string() {
    let legacy: BTreeSet<&str> = LEGACY.iter().copied().collect();
    assert_eq!(legacy.len(), LEGACY.len(), "LEGACY has a duplicate");
    let fixed: BTreeSet<String> = Status::FIXED.iter().map(Status::to_string).collect();
    let legacy: BTreeSet<String> = legacy.into_iter().map(String::from).collect();
    assert_eq!(fixed, legacy);
}

#[test]
fn a_record_with_flags_round_trips_through_json_byte_for_byte() {
    let json = r#"{"readings":[],"missing":[],"flags":["artifact","implausible_spo2","low_battery","quirk_beurer_bm85","sensor_off"]}"#;
    let r: Record = serde_json::from_str(json).unwrap();
    assert_eq!(r.flags.len(), 5);
    assert_eq!(serde_json::to_string(&r).unwrap(), json);
    let bad = r#"{"readings":[],"flags":["sensor_error"]}"#;
    let e = serde_json::from_str::<Record>(bad).unwrap_err();
    assert!(
        e.to_string().contains("unknown status `sensor_error`"),
        "{e}"
    );
}

fn gatt_flags(characteristic: u16, hex: &str) -> Vec<String> {
    let bytes: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect();
    let rec = decode_measurement(characteristic, &bytes, None)
        .unwrap()
        .unwrap();
    flag_strings(&rec)
}

fn flag_strings(rec: &Record) -> Vec<String> {
    serde_json::to_value(rec).unwrap()["flags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect()
}

fn sorted(names: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    v.sort();
    v
}

/// `names[i]` is the old name of bit `i` (`""` = RFU).
fn expect_bit(names: &[&str], bit: usize) -> Vec<String> {
    names
        .get(bit)
        .filter(|n| !n.is_empty())
        .map(|n| vec![n.to_string()])
        .unwrap_or_default()
}

#[test]
fn plx_status_bits_keep_their_names_and_positions() {
    let mut ms_names = vec![""; 5];
    ms_names.extend_from_slice(&LEGACY[13..24]);
    let ds_names = &LEGACY[24..40];
    for bit in 0..16 {
        // Spot-check 97 % / 72 bpm with only this measurement status bit set.
        let ms = (1u16 << bit).to_le_bytes();
        let hex = format!("0261004800{:02x}{:02x}", ms[0], ms[1]);
        assert_eq!(
            gatt_flags(0x2A5E, &hex),
            expect_bit(&ms_names, bit),
            "{bit}"
        );
    }
    for bit in 0..24 {
        let ds = (1u32 << bit).to_le_bytes();
        let hex = format!("0461004800{:02x}{:02x}{:02x}", ds[0], ds[1], ds[2]);
        assert_eq!(gatt_flags(0x2A5E, &hex), expect_bit(ds_names, bit), "{bit}");
    }
    assert_eq!(
        gatt_flags(0x2A5E, "1061004800"),
        sorted(&["device_clock_not_set"])
    );
}

#[test]
fn glucose_annunciation_bits_keep_their_names_and_positions() {
    let names = &LEGACY[42..54];
    for bit in 0..16 {
        // 95 mg/dL (SFLOAT 95e-5 kg/L), capillary whole blood / finger, one annunciation bit.
        let st = (1u16 << bit).to_le_bytes();
        let hex = format!("0a0100e80701010000005fb011{:02x}{:02x}", st[0], st[1]);
        assert_eq!(gatt_flags(0x2A18, &hex), expect_bit(names, bit), "{bit}");
    }
    // Control solution (type 10), context follows.
    assert_eq!(
        gatt_flags(0x2A18, "120100e80701010000005fb01a"),
        sorted(&["context_follows", "control_solution"])
    );
}

#[test]
fn blood_pressure_status_bits_keep_their_names() {
    // 120/80/93 mmHg, status bits 0, 1, 2, 5.
    assert_eq!(
        gatt_flags(0x2A35, "10780050005d002700"),
        sorted(&LEGACY[3..7])
    );
    for (status, name) in [
        ("0800", "pulse_rate_exceeds_upper_limit"),
        ("1000", "pulse_rate_below_lower_limit"),
        ("1800", "pulse_rate_range_reserved"),
    ] {
        let hex = format!("10780050005d00{status}");
        assert_eq!(gatt_flags(0x2A35, &hex), sorted(&[name]), "{status}");
    }
}

#[test]
fn scale_and_heart_rate_statuses_keep_their_names() {
    // Body composition: multiple packet (flag bit 12), body fat 0xFFFF = unsuccessful.
    assert_eq!(
        gatt_flags(0x2A9C, "0010ffff"),
        sorted(&["measurement_unsuccessful", "multiple_packet"])
    );
    // Heart rate 72, contact not detected, one trailing octet.
    assert_eq!(
        gatt_flags(0x2A37, "044800"),
        sorted(&["sensor_contact_not_detected", "trailing_octets"])
    );
}

fn serial_flags(protocol: &str, bytes: &[u8]) -> Vec<String> {
    let mut d = serial::builtin(protocol).unwrap();
    let out = serial::decode_all_to_json(d.as_mut(), bytes);
    assert_eq!(out["errors"], serde_json::json!([]), "{out}");
    out["records"][0]["flags"]
        .as_array()
        .unwrap_or_else(|| panic!("no record: {out}"))
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect()
}

#[test]
fn nonin_status_bits_keep_their_names() {
    // DF8: OOT, LPRF, MPRF, ARTF; HR-D 72; SpO2-D 97; STAT2 SPA, SNSA, LOW BAT.
    assert_eq!(
        serial_flags("nonin-df8", &[0xBC, 0x48, 0x61, 0x29]),
        sorted(&[
            "out_of_track",
            "low_perfusion",
            "marginal_perfusion",
            "artifact",
            "smartpoint",
            "sensor_alarm",
            "low_battery"
        ])
    );
    // DF13: SPA + NOMS, MEM + LOW BAT.
    let data = [
        0x20, 0x24, 0x01, 0x01, 0x00, 0x00, 0x00, 0x00, 0x03, 0x11, 0x00, 0x48, 0x00, 0x61,
    ];
    let chk = data.iter().fold(0u8, |a, b| a.wrapping_add(*b));
    let mut packet = vec![0x00, 0x02, 0x00, 0x0D, 0x00, 0x0E];
    packet.extend_from_slice(&data);
    packet.extend_from_slice(&[chk, 0x03]);
    assert_eq!(
        serial_flags("nonin-df13", &packet),
        sorted(&["smartpoint", "no_measurement", "from_memory", "low_battery"])
    );
    // DF2: one packet with SNSD set in every status byte.
    let mut float = [0u8; 25];
    float[1] = 0x48; // HR LSB
    float[2] = 0x61; // SpO2
    float[8] = 0x61; // SpO2-D
    float[20] = 0x48; // HR-D LSB
    let mut stream = Vec::new();
    for (i, f) in float.iter().enumerate() {
        let status = 0x80 | 0x40 | u8::from(i == 0);
        let frame = [0x01, status, 0x00, *f];
        let chk = frame.iter().fold(0u8, |a, b| a.wrapping_add(*b));
        stream.extend_from_slice(&frame);
        stream.push(chk);
    }
    assert_eq!(
        serial_flags("nonin-df2", &stream),
        sorted(&["sensor_disconnect"])
    );
}

#[test]
fn masimo_exception_bits_keep_their_names_and_positions() {
    let names = [
        "no_sensor",
        "defective_sensor",
        "low_perfusion",
        "pulse_search",
        "interference",
        "sensor_off",
        "ambient_light",
        "unrecognized_sensor",
        "exc_other",
        "exc_other",
        "low_signal_iq",
        "masimo_set",
        "exc_other",
    ];
    for (bit, name) in names.iter().enumerate() {
        let line = format!(
            "02/22/16 22:47:45 SPO2=098% BPM=097 EXC={:06X}\r\n",
            1u32 << bit
        );
        assert_eq!(
            serial_flags("masimo-ascii1", line.as_bytes()),
            sorted(&[name]),
            "{bit}"
        );
    }
}

#[test]
fn generic_device_files_emit_their_status_names() {
    let cfg = DeviceConfig::from_toml_str(
        include_str!("../../config/devices/and-standard-format.toml"),
        Path::new("and.toml"),
    )
    .unwrap();
    let out = serial::decode_all_to_json(
        cfg.decoder().as_mut(),
        b"US,+001231.0  g\r\nOL,+999999.9  g\r\nQT,+000012.0 PC\r\n",
    );
    assert_eq!(
        out["records"],
        serde_json::json!([
            {"fields": {"rule": "weight"}, "flags": ["unstable"], "missing": [], "readings": []},
            {"fields": {"rule": "weight"}, "flags": ["overload"], "missing": [], "readings": []},
            {"fields": {"rule": "weight"}, "flags": ["count_mode"], "missing": [], "readings": []},
        ])
    );
}

#[test]
fn the_issue_list_is_blocked_and_informational_flags_are_not() {
    for s in [
        "invalid_measurement_detected",
        "sensor_disconnected",
        "sensor_malfunction",
        "result_higher_than_device_can_process",
        "measurement_unsuccessful",
        "defective_sensor",
        "out_of_track",
        "artifact",
    ] {
        assert_eq!(
            s.parse::<Status>().unwrap().class(),
            StatusClass::Invalid,
            "{s}"
        );
    }
    assert_eq!(Status::DataForTesting.class(), StatusClass::NotForUpload);
    assert_eq!(Status::LowBattery.class(), StatusClass::Informational);
}
