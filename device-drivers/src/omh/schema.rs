//! The official Open mHealth JSON schemas, embedded, and validation of a body against the schema
//! of its version.
//!
//! The files under `device-drivers/omh-schemas/omh/` are byte-identical copies from the
//! openmhealth/schemas repository (commit `36078a89e5e5efeba8dfc590a81cc42fd140c815`, Apache 2.0;
//! see `omh-schemas/README.md`): the 28 data-point schemas of the nine supported measures and
//! every schema they reference. They are compiled into the binary (`include_str!`); validation
//! never touches the network or the file system: references resolve through [`Embedded`], and an
//! unknown reference is an error, not a download.
//!
//! # Departure: IEEE 1752.1 references
//!
//! Since 2024 the newest versions (`blood-pressure-4.0`, `body-weight-3.0`, `blood-glucose-4.0`,
//! `body-temperature-4.0`, `body-height-2.0`, `body-mass-index-3.0`) reference IEEE 1752.1
//! schemas by URI (`https://w3id.org/ieee/ieee-1752-schema/time-frame-1.0.json`, ...). Those
//! files are not in the openmhealth/schemas repository (IEEE publishes them elsewhere, which this
//! build cannot reach). Each omh schema they replace says it is "deprecated in favour of the IEEE
//! 1752.1 schema of the same name", so [`Embedded`] resolves an IEEE reference to the omh schema
//! of the same name (`time-frame`, `unit-value`, `length-unit-value`, `temperature-unit-value`,
//! `descriptive-statistic`, `body-posture`). One difference is known and built in: the IEEE time
//! interval has no `date` + `part_of_day` form (the official `shouldFail` data of
//! `blood-pressure-4.0` and `body-height-2.0` say so), so `time-frame` and `time-interval`
//! resolve to two small schemas we wrote for this (`omh-schemas/ieee-substitutes/`): the omh ones
//! without that form. The official test data of every version passes and fails as its folder
//! says (see the tests), which is the evidence this substitution holds.
//!
//! # Formats
//!
//! `format` is asserted (`date-time` must be RFC 3339), as the upstream test-data validator
//! does (`FORMAT_CHECKER`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use jsonschema::{Retrieve, Uri, Validator};
use serde_json::Value;

mod table {
    include!("table.rs");
}

/// The base URI of the omh namespace (the validator's and upstream's).
pub const OMH_BASE: &str = "https://w3id.org/openmhealth/schemas/omh/";
/// The base URI of IEEE 1752.1 schemas.
pub const IEEE_BASE: &str = "https://w3id.org/ieee/ieee-1752-schema/";
/// The openmhealth/schemas commit the embedded files come from.
pub const SOURCE_COMMIT: &str = "36078a89e5e5efeba8dfc590a81cc42fd140c815";

/// IEEE 1752.1 schema name → the omh schema it superseded (see the module docs).
const IEEE_SUBSTITUTES: &[(&str, &str)] = &[
    ("body-posture", "body-posture-1.x.json"),
    ("descriptive-statistic", "descriptive-statistic-1.x.json"),
    ("length-unit-value", "length-unit-value-1.x.json"),
    ("temperature-unit-value", "temperature-unit-value-1.x.json"),
    ("time-frame", "ieee-substitutes/time-frame-1.0.json"),
    ("time-interval", "ieee-substitutes/time-interval-1.0.json"),
    ("unit-value", "unit-value-1.x.json"),
];

/// Our two written substitutes (see the module docs and `omh-schemas/README.md`).
const SUBSTITUTE_FILES: &[(&str, &str)] = &[
    (
        "ieee-substitutes/time-frame-1.0.json",
        include_str!("../../omh-schemas/ieee-substitutes/time-frame-1.0.json"),
    ),
    (
        "ieee-substitutes/time-interval-1.0.json",
        include_str!("../../omh-schemas/ieee-substitutes/time-interval-1.0.json"),
    ),
];

/// Why a body is not acceptable to its schema.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SchemaError {
    /// No embedded schema for this name and version.
    Unknown,
    /// The first error: JSON pointer into the body and the failing keyword. No values.
    Invalid { pointer: String, keyword: String },
}

/// Every `(name, version)` this build validates.
pub fn supported() -> impl Iterator<Item = (&'static str, &'static str)> {
    table::ROOTS.iter().map(|(n, v, _)| (*n, *v))
}

/// Validates `body` against the embedded schema `omh:<name>:<version>`.
///
/// # Errors
/// [`SchemaError::Unknown`] for a schema this build does not ship, [`SchemaError::Invalid`]
/// with the first violation otherwise.
pub fn validate(name: &str, version: &str, body: &Value) -> Result<(), SchemaError> {
    let validator = validator(name, version).ok_or(SchemaError::Unknown)?;
    let first = validator
        .iter_errors(body)
        .next()
        .map(|e| SchemaError::Invalid {
            pointer: e.instance_path().to_string(),
            keyword: keyword_of(&e.schema_path().to_string()),
        });
    first.map_or(Ok(()), Err)
}

/// The last keyword of a schema path (`/properties/unit/enum` → `enum`).
fn keyword_of(schema_path: &str) -> String {
    schema_path
        .rsplit('/')
        .find(|s| !s.is_empty() && s.parse::<usize>().is_err())
        .unwrap_or("schema")
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '$')
        .take(32)
        .collect()
}

/// The compiled validator of a root schema, built on first use and cached.
fn validator(name: &str, version: &str) -> Option<Arc<Validator>> {
    static CACHE: OnceLock<Mutex<HashMap<&'static str, Arc<Validator>>>> = OnceLock::new();
    let (_, _, file) = table::ROOTS
        .iter()
        .find(|(n, v, _)| *n == name && *v == version)?;
    let cache = CACHE.get_or_init(Default::default);
    if let Some(v) = cache.lock().unwrap_or_else(|e| e.into_inner()).get(file) {
        return Some(Arc::clone(v));
    }
    let schema: Value = serde_json::from_str(file_text(file)?).ok()?;
    let v = Arc::new(
        jsonschema::options()
            .with_base_uri(format!("{OMH_BASE}{file}"))
            .with_retriever(Embedded)
            .should_validate_formats(true)
            .build(&schema)
            .ok()?,
    );
    cache
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(file, Arc::clone(&v));
    Some(v)
}

/// The text of an embedded file, following the upstream `.x.json` symlinks.
fn file_text(file: &str) -> Option<&'static str> {
    let target = table::ALIASES
        .iter()
        .find(|(a, _)| *a == file)
        .map_or(file, |(_, t)| *t);
    table::FILES
        .iter()
        .chain(SUBSTITUTE_FILES)
        .find(|(f, _)| *f == target)
        .map(|(_, t)| *t)
}

/// Resolves references to the embedded files only (no network, no file system).
pub struct Embedded;

/// An unknown reference (never fetched).
#[derive(Debug, thiserror::Error)]
#[error("schema {0} is not embedded")]
struct NotEmbedded(String);

impl Retrieve for Embedded {
    fn retrieve(
        &self,
        uri: &Uri<String>,
    ) -> Result<Value, Box<dyn std::error::Error + Send + Sync>> {
        let s = uri.as_str();
        let file = if let Some(f) = s.strip_prefix(OMH_BASE) {
            f.to_string()
        } else if let Some(f) = s.strip_prefix(IEEE_BASE) {
            // `<name>-1.0.json` → the omh schema it superseded; a relative reference made from
            // inside a substitute (`date-time-1.x.json`) is an omh file name.
            IEEE_SUBSTITUTES
                .iter()
                .find(|(n, _)| f.strip_prefix(n).is_some_and(|r| r.starts_with("-1.")))
                .map_or_else(|| f.to_string(), |(_, sub)| (*sub).to_string())
        } else {
            return Err(Box::new(NotEmbedded(s.chars().take(120).collect())));
        };
        let text = file_text(&file).ok_or_else(|| NotEmbedded(file.clone()))?;
        Ok(serde_json::from_str(text)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_root_schema_compiles_without_the_network() {
        for (name, version) in supported() {
            assert!(
                validator(name, version).is_some(),
                "omh:{name}:{version} does not compile"
            );
        }
        assert_eq!(supported().count(), 28);
    }

    #[test]
    fn an_unknown_version_is_unknown_not_valid() {
        assert_eq!(
            validate("blood-pressure", "9.0", &serde_json::json!({})),
            Err(SchemaError::Unknown)
        );
    }
}
