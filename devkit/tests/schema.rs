//! The embedded FHIR R4 schema: it compiles, accepts the §6 example, and explains errors precisely.

use std::time::Instant;

use serde_json::{json, Value};
use vitalgate_devkit::schema::{fhir_schema_validator, is_resource_type, FHIR_SCHEMA_JSON};
use vitalgate_devkit::validate_resource;

fn example() -> Value {
    serde_json::from_str(include_str!("../testdata/example-bundle.json")).unwrap()
}

#[test]
fn embedded_schema_compiles_and_accepts_the_example_bundle() {
    assert_eq!(
        FHIR_SCHEMA_JSON.len(),
        3_365_955,
        "byte-identical copy of the shared schema"
    );
    let t = Instant::now();
    let validator = fhir_schema_validator();
    let compiled = t.elapsed();
    let bundle = example();
    let t = Instant::now();
    let valid = validator.is_valid(&bundle);
    let first = t.elapsed();
    let t = Instant::now();
    let errors = validate_resource(&bundle);
    let second = t.elapsed();
    eprintln!("schema compile: {compiled:?}; first Bundle validation: {first:?}; next: {second:?}");
    assert!(valid);
    assert!(errors.is_empty(), "{errors:?}");
}

#[test]
fn invalid_status_inside_an_entry_is_reported_precisely() {
    let mut bundle = example();
    bundle["entry"][3]["resource"]["status"] = json!("done");
    let errors = validate_resource(&bundle);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].starts_with("/entry/3/resource/status: \"done\" is not one of"),
        "{}",
        errors[0]
    );
}

#[test]
fn unknown_elements_and_resource_types_are_errors() {
    let mut observation = example()["entry"][3]["resource"].clone();
    observation["valueQuantityy"] = json!({});
    let errors = validate_resource(&observation);
    assert!(!errors.is_empty());
    assert!(
        errors.iter().any(|e| e.contains("valueQuantityy")),
        "{errors:?}"
    );

    let errors = validate_resource(&json!({"resourceType": "Gizmo"}));
    assert_eq!(errors, ["/resourceType: unknown resource type \"Gizmo\""]);
    assert!(is_resource_type("Observation") && !is_resource_type("Gizmo"));
}
