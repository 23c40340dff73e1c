//! The official FHIR R4 JSON schema, compiled once, and helpers that turn its errors into
//! messages a person can act on.
//!
//! The schema is `testdata/fhir.schema.json`, a byte-identical copy of the file described in the
//! project's shared `fhir/SOURCE.md` (HL7's generated R4 schema, draft-06, 680 definitions). It is
//! embedded in the binary with `include_str!`, so nothing reads the file system at run time.
//!
//! It checks structure only: element names, primitive types and regexes, required-binding enums
//! (such as `Observation.status`). It does not check profiles, invariants, terminology or
//! references.
//!
//! # Why errors are re-validated per resource
//!
//! `Bundle.entry.resource` is a `oneOf` over all 146 resource types, so a mistake inside an entry
//! surfaces at Bundle level as "is not valid under any of the schemas listed in the 'oneOf'
//! keyword", together with a dump of the whole resource. [`validate_resource`] therefore
//! re-validates every `entry[i].resource` against `#/definitions/<resourceType>` and reports those
//! precise errors instead, with paths relative to the Bundle.
//!
//! # Which jsonschema, and `arbitrary_precision`
//!
//! jsonschema 0.33 needs minutes and tens of GB to compile this schema (upstream issue
//! Stranger6667/jsonschema#755); 0.60 compiles it in about 1 s in a debug build. The workspace
//! enables serde_json's `arbitrary_precision`, so jsonschema's matching `arbitrary-precision`
//! feature is on: numbers are compared exactly, not through `f64`. Validation still runs inside
//! `catch_unwind`, so a pathological input yields an error message, not a dead server task.
//!
//! Measured (debug build, 2-core machine): compiling the root validator ≈ 1 s, each per-type
//! validator ≈ 1 s (built only when a Bundle fails), validating the §6 example Bundle ≈ 8 ms the
//! first time and ≈ 0.5 ms after.

use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex, OnceLock};

use jsonschema::Validator;
use serde_json::Value;

/// The FHIR R4 JSON schema text (3.3 MB), embedded at compile time.
pub const FHIR_SCHEMA_JSON: &str = include_str!("../testdata/fhir.schema.json");

/// Longest message kept per error; jsonschema quotes whole instances in some messages.
const MAX_MESSAGE_CHARS: usize = 300;

/// The parsed schema document, parsed once.
pub fn fhir_schema() -> &'static Value {
    static SCHEMA: OnceLock<Value> = OnceLock::new();
    SCHEMA.get_or_init(|| {
        serde_json::from_str(FHIR_SCHEMA_JSON).expect("embedded FHIR schema is valid JSON")
    })
}

/// The validator for the whole schema (root `oneOf` dispatching on `resourceType`), built once
/// on first use and shared by every caller and every server.
///
/// # Panics
///
/// Only if the embedded schema does not compile, which a test in this crate rules out.
pub fn fhir_schema_validator() -> &'static Validator {
    static VALIDATOR: OnceLock<Validator> = OnceLock::new();
    VALIDATOR.get_or_init(|| build(fhir_schema().clone()).expect("embedded FHIR schema compiles"))
}

/// A validator for one resource type (`#/definitions/<resource_type>`), built on first use and
/// cached. `None` if the schema has no such resource type.
pub fn resource_validator(resource_type: &str) -> Option<Arc<Validator>> {
    static CACHE: OnceLock<Mutex<HashMap<String, Arc<Validator>>>> = OnceLock::new();
    if !is_resource_type(resource_type) {
        return None;
    }
    let cache = CACHE.get_or_init(Default::default);
    if let Some(v) = cache
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(resource_type)
    {
        return Some(v.clone());
    }
    // Built outside the lock: compiling can take a while and must not block other types.
    let mut schema = fhir_schema().clone();
    let obj = schema.as_object_mut()?;
    obj.remove("discriminator");
    obj.remove("oneOf");
    // allOf, not oneOf: allOf passes the inner errors through instead of one opaque error.
    obj.insert(
        "allOf".into(),
        serde_json::json!([{ "$ref": format!("#/definitions/{resource_type}") }]),
    );
    let validator = Arc::new(build(schema).ok()?);
    cache
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(resource_type.to_owned(), validator.clone());
    Some(validator)
}

/// True if `name` is one of the resource types the schema knows (its `discriminator.mapping`).
pub fn is_resource_type(name: &str) -> bool {
    fhir_schema()
        .pointer("/discriminator/mapping")
        .and_then(Value::as_object)
        .is_some_and(|m| m.contains_key(name))
}

/// Validates any FHIR resource (a Bundle included) against the R4 schema.
///
/// Returns one message per error, `"<JSON pointer>: <message>"` (the pointer is `(root)` for the
/// resource itself), empty if the resource is valid. Errors inside `Bundle.entry[i].resource` are
/// reported precisely (see the module docs).
pub fn validate_resource(value: &Value) -> Vec<String> {
    validate_paths(value)
        .into_iter()
        .map(|(path, msg)| {
            let path = if path.is_empty() { "(root)" } else { &path };
            format!("{path}: {msg}")
        })
        .collect()
}

/// Errors as (JSON pointer, message) pairs.
fn validate_paths(value: &Value) -> Vec<(String, String)> {
    let root_errors = errors_of(fhir_schema_validator(), value);
    if root_errors.is_empty() {
        return root_errors;
    }
    let Some(resource_type) = value.get("resourceType").and_then(Value::as_str) else {
        return vec![("/resourceType".into(), "missing or not a string".into())];
    };
    let Some(typed) = resource_validator(resource_type) else {
        return vec![(
            "/resourceType".into(),
            format!("unknown resource type {:?}", truncate(resource_type)),
        )];
    };
    let mut errors = errors_of(&typed, value);
    if resource_type == "Bundle" {
        // Replace the opaque oneOf errors on entry resources by precise ones.
        let entries = value.get("entry").and_then(Value::as_array);
        let mut precise = Vec::new();
        for (i, entry) in entries.into_iter().flatten().enumerate() {
            let prefix = format!("/entry/{i}/resource");
            let Some(resource) = entry.get("resource") else {
                continue;
            };
            if errors.iter().any(|(p, _)| *p == prefix) {
                errors.retain(|(p, _)| *p != prefix);
                precise.extend(
                    validate_paths(resource)
                        .into_iter()
                        .map(|(p, m)| (format!("{prefix}{p}"), m)),
                );
            }
        }
        errors.extend(precise);
    }
    if errors.is_empty() {
        // The typed validator and the root disagree (should not happen): keep the root's word.
        root_errors
    } else {
        errors
    }
}

fn build(schema: Value) -> Result<Validator, String> {
    jsonschema::draft6::options()
        .build(&schema)
        .map_err(|e| e.to_string())
}

fn errors_of(validator: &Validator, value: &Value) -> Vec<(String, String)> {
    let run = catch_unwind(AssertUnwindSafe(|| {
        validator
            .iter_errors(value)
            .map(|e| (e.instance_path().to_string(), truncate(&e.to_string())))
            .collect::<Vec<_>>()
    }));
    run.unwrap_or_else(|_| {
        vec![(
            String::new(),
            "the schema validator panicked on this input (number out of range?)".into(),
        )]
    })
}

fn truncate(s: &str) -> String {
    if s.chars().count() <= MAX_MESSAGE_CHARS {
        s.to_owned()
    } else {
        let mut t: String = s.chars().take(MAX_MESSAGE_CHARS).collect();
        t.push('…');
        t
    }
}
