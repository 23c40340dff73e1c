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
//! # Why `boon`
//!
//! The `jsonschema` crate (0.33) expands this schema's recursive `$ref`s eagerly: compiling it
//! took minutes and over 9 GB of memory here. `boon` compiles it lazily in about two seconds and
//! validates a Bundle in a few milliseconds; it supports draft-06 and keeps instance locations
//! for every error. Validation is wrapped in `catch_unwind`, so a hostile input yields an error
//! message, not a dead server task.

use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::OnceLock;

use boon::{Compiler, Draft, SchemaIndex, Schemas};
use serde_json::Value;

/// The FHIR R4 JSON schema text (3.3 MB), embedded at compile time.
pub const FHIR_SCHEMA_JSON: &str = include_str!("../testdata/fhir.schema.json");

/// The schema's `id`.
const SCHEMA_ID: &str = "http://hl7.org/fhir/json-schema/4.0";

/// Longest message kept per error.
const MAX_MESSAGE_CHARS: usize = 300;

/// The parsed schema document, parsed once.
pub fn fhir_schema() -> &'static Value {
    static SCHEMA: OnceLock<Value> = OnceLock::new();
    SCHEMA.get_or_init(|| {
        serde_json::from_str(FHIR_SCHEMA_JSON).expect("embedded FHIR schema is valid JSON")
    })
}

/// The compiled schema: the root (dispatch on `resourceType`) plus one entry point per
/// resource type (all compiled up front; they share their sub-schemas).
pub struct FhirValidator {
    schemas: Schemas,
    index: HashMap<String, SchemaIndex>,
}

impl FhirValidator {
    fn new() -> Result<Self, String> {
        let mut compiler = Compiler::new();
        compiler.set_default_draft(Draft::V6);
        compiler
            .add_resource(SCHEMA_ID, fhir_schema().clone())
            .map_err(|e| e.to_string())?;
        let mut schemas = Schemas::new();
        let mut index = HashMap::new();
        let root = compiler
            .compile(SCHEMA_ID, &mut schemas)
            .map_err(|e| e.to_string())?;
        index.insert(String::new(), root);
        let types: Vec<String> = fhir_schema()
            .pointer("/discriminator/mapping")
            .and_then(Value::as_object)
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default();
        for t in types {
            let loc = format!("{SCHEMA_ID}#/definitions/{t}");
            let i = compiler
                .compile(&loc, &mut schemas)
                .map_err(|e| e.to_string())?;
            index.insert(t, i);
        }
        Ok(Self { schemas, index })
    }

    /// Errors of `value` against the root schema (`None`) or one resource type.
    fn errors(&self, value: &Value, resource_type: Option<&str>) -> Option<Vec<(String, String)>> {
        let idx = *self.index.get(resource_type.unwrap_or(""))?;
        let run = catch_unwind(AssertUnwindSafe(|| match self.schemas.validate(value, idx) {
            Ok(()) => Vec::new(),
            Err(e) => leaf_errors(&e.detailed_output()),
        }));
        Some(run.unwrap_or_else(|_| {
            vec![(String::new(), "the schema validator panicked on this input".into())]
        }))
    }

    /// True if `value` is valid against the whole schema.
    pub fn is_valid(&self, value: &Value) -> bool {
        self.errors(value, None).is_some_and(|e| e.is_empty())
    }
}

/// Flattens boon's detailed output into (instance location, message) leaves.
fn leaf_errors(unit: &boon::OutputUnit) -> Vec<(String, String)> {
    let mut out = Vec::new();
    collect(unit, &mut out);
    out
}

fn collect(unit: &boon::OutputUnit, out: &mut Vec<(String, String)>) {
    match &unit.error {
        boon::OutputError::Branch(children) if !children.is_empty() => {
            for c in children {
                collect(c, out);
            }
        }
        boon::OutputError::Branch(_) => {}
        boon::OutputError::Leaf(kind) => {
            out.push((unit.instance_location.to_string(), truncate(&kind.to_string())));
        }
    }
}

/// The validator for the whole schema, built once on first use and shared.
///
/// # Panics
///
/// Only if the embedded schema does not compile, which a test in this crate rules out.
pub fn fhir_schema_validator() -> &'static FhirValidator {
    static VALIDATOR: OnceLock<FhirValidator> = OnceLock::new();
    VALIDATOR.get_or_init(|| FhirValidator::new().expect("embedded FHIR schema compiles"))
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
    let v = fhir_schema_validator();
    let root_errors = v.errors(value, None).unwrap_or_default();
    if root_errors.is_empty() {
        return root_errors;
    }
    let Some(resource_type) = value.get("resourceType").and_then(Value::as_str) else {
        return vec![("/resourceType".into(), "missing or not a string".into())];
    };
    if !is_resource_type(resource_type) {
        return vec![(
            "/resourceType".into(),
            format!("unknown resource type {:?}", truncate(resource_type)),
        )];
    }
    let mut errors = v.errors(value, Some(resource_type)).unwrap_or_default();
    if resource_type == "Bundle" {
        // Replace the opaque oneOf errors on entry resources by precise ones.
        let entries = value.get("entry").and_then(Value::as_array);
        let mut precise = Vec::new();
        for (i, entry) in entries.into_iter().flatten().enumerate() {
            let prefix = format!("/entry/{i}/resource");
            let Some(resource) = entry.get("resource") else {
                continue;
            };
            if errors.iter().any(|(p, _)| p.starts_with(&prefix)) {
                errors.retain(|(p, _)| !p.starts_with(&prefix));
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

fn truncate(s: &str) -> String {
    if s.chars().count() <= MAX_MESSAGE_CHARS {
        s.to_owned()
    } else {
        let mut t: String = s.chars().take(MAX_MESSAGE_CHARS).collect();
        t.push('…');
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mapping_sheet_example_is_valid_and_a_bad_status_is_not() {
        let bundle: Value =
            serde_json::from_str(include_str!("../testdata/example-bundle.json")).unwrap();
        assert_eq!(validate_resource(&bundle), Vec::<String>::new());
        let bad = serde_json::to_string(&bundle)
            .unwrap()
            .replacen("\"final\"", "\"done\"", 1);
        let bad: Value = serde_json::from_str(&bad).unwrap();
        let errors = validate_resource(&bad);
        assert!(!errors.is_empty());
        assert!(errors.iter().any(|e| e.contains("/status")), "{errors:?}");
    }
}
