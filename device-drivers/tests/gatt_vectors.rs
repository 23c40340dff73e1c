//! Every vector of `testdata/gatt-vectors.json` through `decode_to_json` (section-0 matching),
//! plus negative checks of the matcher itself.

mod support;

use std::collections::BTreeMap;

use device_drivers::gatt::decode_to_json;
use serde_json::json;
use support::{characteristic, hex, match_expected, vectors};

#[test]
fn every_vector_decodes_to_its_expected_form() {
    let mut failures = Vec::new();
    let mut per_char: BTreeMap<String, usize> = BTreeMap::new();
    let all = vectors();
    assert_eq!(all.len(), 75, "vector file changed");
    for v in &all {
        let id = v["id"].as_str().expect("id");
        let ch = v["characteristic"].as_str().expect("characteristic");
        let payload = hex(v["hex"].as_str().expect("hex"));
        let Some(actual) = decode_to_json(characteristic(ch), &payload) else {
            failures.push(format!("{id}: characteristic {ch} not supported"));
            continue;
        };
        if let Err(e) = match_expected(&v["expected"], &actual) {
            failures.push(format!("{id}: {e}\n    actual: {actual}"));
        }
        *per_char
            .entry(ch.to_uppercase().replace("0X", "0x"))
            .or_default() += 1;
    }
    for (ch, n) in &per_char {
        println!("vectors {ch}: {n}");
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn matcher_rejects_extra_keys_and_wrong_numbers() {
    let e = json!({"a": 1.0, "b": {"c": true}});
    assert!(match_expected(&e, &json!({"a": 1, "b": {"c": true}})).is_ok());
    assert!(match_expected(&e, &json!({"a": 1.0000001, "b": {"c": true}})).is_err());
    assert!(match_expected(&e, &json!({"a": 1, "b": {"c": true}, "x": null})).is_err());
    assert!(match_expected(&e, &json!({"a": 1, "b": {"c": true, "raw": 3}})).is_err());
    assert!(match_expected(&e, &json!({"b": {"c": true}})).is_err());
    assert!(match_expected(&json!({"v": "NaN"}), &json!({"v": 2047})).is_err());
}

#[test]
fn unsupported_characteristic_is_none() {
    assert_eq!(decode_to_json(0x1234, &[0, 1]), None);
    assert_eq!(decode_to_json(0x2902, &[1, 0]), None);
}
