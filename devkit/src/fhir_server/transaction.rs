//! Transaction semantics of the test server, with no I/O: a [`Store`] of resources, a planner that
//! turns a transaction Bundle into a [`Plan`] (or a [`Rejection`]) without touching the store, and
//! [`Store::commit`], which applies a plan. Planning first and committing after is what makes the
//! transaction all-or-nothing.
//!
//! Rules (a strict reading of fhir-mapping.md §5, lenient where a real server would need data the
//! test server does not have):
//! - `Bundle.type` must be `transaction`; at most [`MAX_ENTRIES`] entries (more is a 400, not a
//!   413: the limit is the agent's own rule, and a 413 would make the agent split instead of
//!   surfacing the bug).
//! - Every entry is either a conditional create or an update as create:
//!   - `request.method = POST`, `request.url = <resourceType>`, with
//!     `request.ifNoneExist = identifier=<system>|<value>` (percent-decoded; `+` stays a plus,
//!     because identifier values carry `+N` TZ offsets), and that identifier must be one of the
//!     resource's own identifiers (the agent's default, `uplink.write_mode = "conditional-create"`);
//!   - `request.method = PUT`, `request.url = <resourceType>/<id>` with a valid FHIR id
//!     (`[A-Za-z0-9\-\.]{1,64}`) equal to the resource's own `id`, and no `ifNoneExist`
//!     (`uplink.write_mode = "put"`).
//!
//!   Two entries with the same identity (identifier, or type and id), or two with the same
//!   `fullUrl`, are a 400.
//! - Conditional create: a stored resource of that type with that identifier → `200 OK` and its
//!   location, nothing written; none → a new id `<n>` (per type, from 1), `201 Created`,
//!   location `<Type>/<n>/_history/1`; several → `412` (cannot happen here by construction).
//! - Update as create (`PUT <Type>/<id>`): no stored resource with that id → created with that id,
//!   `201 Created`; one → replaced by the new content with the next version, `200 OK`, location
//!   `<Type>/<id>/_history/<version>`. Either way exactly one resource holds that id.
//! - References in created resources: `urn:uuid:` → the `fullUrl` of an entry of this Bundle,
//!   rewritten to its `<Type>/<id>` (unknown one → 400). Conditional references
//!   (`Device?identifier=<system>|<value>`) are recorded; if exactly one stored or
//!   just-created resource matches they are rewritten to `<Type>/<id>` like a real server would,
//!   otherwise kept as they are (the test server has no Patients, and accepts them as a lenient
//!   server would). A literal reference to a Device or Observation the store does not hold
//!   (`Device/7`) is a 400, as on a server that enforces referential integrity; to another
//!   type the store holds but an id it does not, it is accepted and recorded as unresolved.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// Types this server holds and checks literal references to (`Device/7` must exist).
const MANAGED_TYPES: [&str; 2] = ["Device", "Observation"];

/// Most entries accepted in one Bundle (fhir-mapping.md §5.3).
pub const MAX_ENTRIES: usize = 50;

/// Everything the server stored. Serializable: it is also the `--state-file` format.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Store {
    /// Resource type → resources in creation order, as stored (with `id` and `meta.versionId`).
    pub resources: BTreeMap<String, Vec<Value>>,
    /// Every conditional reference seen in a committed Bundle, as sent.
    pub conditional_references: Vec<String>,
    /// Literal references to ids the store did not have when committed.
    pub unresolved_references: Vec<String>,
    /// Resources removed per type ([`Store::remove_all`]): new ids continue after them, so an
    /// id is never given twice.
    #[serde(default)]
    pub removed: BTreeMap<String, usize>,
    /// `(type, system, value)` → ids: conditional-create lookups in O(1), so the server's
    /// ceiling does not fall as it fills (a linear scan made a 100,000-reading drain
    /// quadratic). Derived from `resources`: not serialized, rebuilt by [`Store::reindex`].
    #[serde(skip)]
    index: IdentifierIndex,
}

/// What happened to one entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryOutcome {
    pub resource_type: String,
    pub id: String,
    /// True: created now (`201 Created`); false: already there (`200 OK`; found by a
    /// conditional create, or updated by a PUT).
    pub created: bool,
    /// The resource's version after this entry (1 for a create; an update adds one).
    #[serde(default = "first_version")]
    pub version: u32,
}

fn first_version() -> u32 {
    1
}

impl EntryOutcome {
    /// `response.status` for this entry.
    pub fn status(&self) -> &'static str {
        if self.created {
            "201 Created"
        } else {
            "200 OK"
        }
    }

    /// `response.location` for this entry.
    pub fn location(&self) -> String {
        format!(
            "{}/{}/_history/{}",
            self.resource_type, self.id, self.version
        )
    }

    /// The `Bundle.entry` of a `transaction-response` for this outcome.
    pub fn response_entry(&self) -> Value {
        json!({
            "response": {
                "status": self.status(),
                "location": self.location(),
                "etag": format!("W/\"{}\"", self.version),
            }
        })
    }
}

/// A transaction that may be committed: the outcomes in entry order and what to write.
#[derive(Debug, Clone)]
pub struct Plan {
    pub outcomes: Vec<EntryOutcome>,
    new_resources: Vec<(String, Value)>,
    /// Stored resources a PUT replaces: type and the new content (with its `id`).
    replacements: Vec<(String, Value)>,
    conditional_references: Vec<String>,
    unresolved_references: Vec<String>,
}

/// Why a Bundle was refused: an HTTP status, an OperationOutcome issue type and the messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub status: u16,
    /// FHIR `IssueType` code (`invalid`, `multiple-matches`, ...).
    pub code: &'static str,
    pub issues: Vec<String>,
}

impl Rejection {
    fn invalid(message: impl Into<String>) -> Rejection {
        Rejection {
            status: 400,
            code: "invalid",
            issues: vec![message.into()],
        }
    }
}

impl Store {
    /// Deletes every resource of one type, as an administrator's purge would; their ids are
    /// not given again. Returns how many were removed.
    pub fn remove_all(&mut self, resource_type: &str) -> usize {
        let n = self.resources.remove(resource_type).map_or(0, |v| v.len());
        *self.removed.entry(resource_type.to_owned()).or_insert(0) += n;
        self.index.retain(|(t, _, _), _| t != resource_type);
        n
    }

    /// Rebuilds the identifier index from `resources` (after loading a state file).
    pub fn reindex(&mut self) {
        let mut index = HashMap::new();
        for (t, rs) in &self.resources {
            for r in rs {
                index_resource(&mut index, t, r);
            }
        }
        self.index = index;
    }

    /// Applies a plan made against this very store (the caller holds the lock between
    /// [`plan_transaction`] and this).
    pub fn commit(&mut self, plan: Plan) {
        for (resource_type, resource) in plan.new_resources {
            index_resource(&mut self.index, &resource_type, &resource);
            self.resources
                .entry(resource_type)
                .or_default()
                .push(resource);
        }
        for (resource_type, resource) in plan.replacements {
            let id = resource.get("id").cloned();
            if let Some(slot) = self
                .resources
                .get_mut(&resource_type)
                .and_then(|rs| rs.iter_mut().find(|r| r.get("id") == id.as_ref()))
            {
                unindex_resource(&mut self.index, &resource_type, slot);
                index_resource(&mut self.index, &resource_type, &resource);
                *slot = resource;
            }
        }
        self.conditional_references
            .extend(plan.conditional_references);
        self.unresolved_references
            .extend(plan.unresolved_references);
    }

    /// Resources of one type, in creation order.
    pub fn of_type(&self, resource_type: &str) -> &[Value] {
        self.resources
            .get(resource_type)
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    /// The stored resource of `resource_type` with this `id`.
    fn by_id(&self, resource_type: &str, id: &str) -> Option<&Value> {
        self.of_type(resource_type)
            .iter()
            .find(|r| r.get("id").and_then(Value::as_str) == Some(id))
    }

    /// Ids of stored resources of `resource_type` carrying identifier `system|value`.
    fn find(&self, resource_type: &str, system: &str, value: &str) -> Vec<String> {
        self.index
            .get(&(
                resource_type.to_owned(),
                system.to_owned(),
                value.to_owned(),
            ))
            .cloned()
            .unwrap_or_default()
    }

    /// Number of `(type, system|value)` identities held by more than one stored resource.
    /// Zero by construction; tests assert it to prove it.
    pub fn duplicate_creates(&self) -> usize {
        let mut seen: HashMap<(String, String, String), usize> = HashMap::new();
        for (resource_type, resources) in &self.resources {
            for r in resources {
                for (system, value) in identifiers(r) {
                    *seen
                        .entry((resource_type.clone(), system, value))
                        .or_default() += 1;
                }
            }
        }
        seen.values().filter(|&&n| n > 1).count()
    }
}

/// `(system, value)` of every identifier of a resource that has both.
type IdentifierIndex = HashMap<(String, String, String), Vec<String>>;

/// Adds `resource`'s identifiers to `index`, pointing at its id.
fn index_resource(index: &mut IdentifierIndex, resource_type: &str, resource: &Value) {
    let Some(id) = resource.get("id").and_then(Value::as_str) else {
        return;
    };
    for (system, value) in identifiers(resource) {
        let ids = index
            .entry((resource_type.to_owned(), system, value))
            .or_default();
        if !ids.iter().any(|i| i == id) {
            ids.push(id.to_owned());
        }
    }
}

/// Removes `resource`'s identifiers from `index`.
fn unindex_resource(index: &mut IdentifierIndex, resource_type: &str, resource: &Value) {
    let Some(id) = resource.get("id").and_then(Value::as_str) else {
        return;
    };
    for (system, value) in identifiers(resource) {
        let key = (resource_type.to_owned(), system, value);
        if let Some(ids) = index.get_mut(&key) {
            ids.retain(|i| i != id);
            if ids.is_empty() {
                index.remove(&key);
            }
        }
    }
}

pub fn identifiers(resource: &Value) -> Vec<(String, String)> {
    resource
        .get("identifier")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|i| {
            Some((
                i.get("system")?.as_str()?.to_owned(),
                i.get("value")?.as_str()?.to_owned(),
            ))
        })
        .collect()
}

fn has_identifier(resource: &Value, system: &str, value: &str) -> bool {
    identifiers(resource)
        .iter()
        .any(|(s, v)| s == system && v == value)
}

/// Parses `identifier=<system>|<value>` (percent-decoded, `+` kept). `None` if it has another
/// form (other search parameters, several parameters, no system).
pub fn parse_identifier_query(query: &str) -> Option<(String, String)> {
    let rest = query.strip_prefix("identifier=")?;
    if rest.contains('&') {
        return None;
    }
    let decoded = percent_decode(rest)?;
    let (system, value) = decoded.split_once('|')?;
    if system.is_empty() || value.is_empty() {
        return None;
    }
    Some((system.to_owned(), value.to_owned()))
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Plans a transaction against `store` without changing it.
///
/// # Errors
///
/// A [`Rejection`] naming every rule the Bundle breaks (see the module docs); the first
/// broken entry stops the check of reference rewriting.
pub fn plan_transaction(store: &Store, bundle: &Value) -> Result<Plan, Rejection> {
    if bundle.get("resourceType").and_then(Value::as_str) != Some("Bundle") {
        return Err(Rejection::invalid("expected a Bundle"));
    }
    let bundle_type = bundle.get("type").and_then(Value::as_str).unwrap_or("");
    if bundle_type != "transaction" {
        return Err(Rejection::invalid(format!(
            "Bundle.type must be \"transaction\", got {bundle_type:?}"
        )));
    }
    let entries: &[Value] = bundle
        .get("entry")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    if entries.len() > MAX_ENTRIES {
        return Err(Rejection::invalid(format!(
            "Bundle has {} entries; this server accepts at most {MAX_ENTRIES} (fhir-mapping.md §5.3)",
            entries.len()
        )));
    }

    // Pass 1: check every entry, decide created/existing and assign ids.
    let mut issues = Vec::new();
    let mut outcomes = Vec::with_capacity(entries.len());
    let mut identities = HashSet::new();
    let mut full_urls: HashMap<String, String> = HashMap::new();
    let mut next_id: HashMap<String, usize> = HashMap::new();
    let mut just_created: Vec<(String, String, String, String)> = Vec::new(); // type, system, value, id
    let mut puts: Vec<usize> = Vec::new(); // entries written by PUT
    for (i, entry) in entries.iter().enumerate() {
        match check_entry(i, entry) {
            Err(msg) => issues.push(msg),
            Ok((resource_type, Write::Put { id })) => {
                if !identities.insert((resource_type.clone(), String::new(), id.clone())) {
                    issues.push(format!(
                        "entry[{i}]: a second PUT of {resource_type}/{id} in the same Bundle"
                    ));
                    continue;
                }
                let version = match store.by_id(&resource_type, &id) {
                    None => 1,
                    Some(stored) => {
                        stored["meta"]["versionId"]
                            .as_str()
                            .and_then(|v| v.parse::<u32>().ok())
                            .unwrap_or(1)
                            + 1
                    }
                };
                let outcome = EntryOutcome {
                    resource_type,
                    id,
                    created: version == 1,
                    version,
                };
                register_full_url(i, entry, &outcome, &mut full_urls, &mut issues);
                puts.push(i);
                outcomes.push(outcome);
            }
            Ok((resource_type, Write::Conditional { system, value })) => {
                if !identities.insert((resource_type.clone(), system.clone(), value.clone())) {
                    issues.push(format!(
                        "entry[{i}]: a second {resource_type} with identifier {system}|{value} in the same Bundle"
                    ));
                    continue;
                }
                let found = store.find(&resource_type, &system, &value);
                let outcome = match found.as_slice() {
                    [] => {
                        let n = next_id.entry(resource_type.clone()).or_insert_with(|| {
                            store.of_type(&resource_type).len()
                                + store.removed.get(&resource_type).copied().unwrap_or(0)
                                + 1
                        });
                        let id = n.to_string();
                        *n += 1;
                        just_created.push((
                            resource_type.clone(),
                            system,
                            value,
                            id.clone(),
                        ));
                        EntryOutcome {
                            resource_type,
                            id,
                            created: true,
                            version: 1,
                        }
                    }
                    [id] => EntryOutcome {
                        resource_type,
                        id: id.clone(),
                        created: false,
                        version: 1,
                    },
                    _ => {
                        return Err(Rejection {
                            status: 412,
                            code: "multiple-matches",
                            issues: vec![format!(
                                "entry[{i}]: {} stored {resource_type} resources match the ifNoneExist criteria",
                                found.len()
                            )],
                        })
                    }
                };
                register_full_url(i, entry, &outcome, &mut full_urls, &mut issues);
                outcomes.push(outcome);
            }
        }
    }
    if !issues.is_empty() {
        return Err(Rejection {
            status: 400,
            code: "invalid",
            issues,
        });
    }

    // Pass 2: rewrite references in the resources to create.
    let mut plan = Plan {
        outcomes,
        new_resources: Vec::new(),
        replacements: Vec::new(),
        conditional_references: Vec::new(),
        unresolved_references: Vec::new(),
    };
    let resolver = Resolver {
        store,
        full_urls: &full_urls,
        just_created: &just_created,
    };
    for (i, (entry, outcome)) in entries.iter().zip(&plan.outcomes).enumerate() {
        let put = puts.contains(&i);
        if !outcome.created && !put {
            continue;
        }
        let mut resource = entry.get("resource").cloned().unwrap_or(Value::Null);
        let mut refs = RefLog::default();
        resolver.rewrite(&mut resource, &mut refs);
        for bad in refs.bad {
            issues.push(format!("entry[{i}]: unresolvable reference {bad}"));
        }
        plan.conditional_references.extend(refs.conditional);
        plan.unresolved_references.extend(refs.unresolved);
        if let Some(obj) = resource.as_object_mut() {
            obj.insert("id".into(), Value::String(outcome.id.clone()));
            let meta = obj.entry("meta").or_insert_with(|| json!({}));
            if let Some(meta) = meta.as_object_mut() {
                meta.insert("versionId".into(), json!(outcome.version.to_string()));
            }
        }
        if outcome.created {
            plan.new_resources
                .push((outcome.resource_type.clone(), resource));
        } else {
            plan.replacements
                .push((outcome.resource_type.clone(), resource));
        }
    }
    if !issues.is_empty() {
        return Err(Rejection {
            status: 400,
            code: "invalid",
            issues,
        });
    }
    Ok(plan)
}

/// Maps the entry's `fullUrl` (if any) to where its resource ends up, `<Type>/<id>`, for the
/// references of the other entries; a `fullUrl` used twice is an issue.
fn register_full_url(
    i: usize,
    entry: &Value,
    outcome: &EntryOutcome,
    full_urls: &mut HashMap<String, String>,
    issues: &mut Vec<String>,
) {
    if let Some(full_url) = entry.get("fullUrl").and_then(Value::as_str) {
        let target = format!("{}/{}", outcome.resource_type, outcome.id);
        if full_urls.insert(full_url.to_owned(), target).is_some() {
            issues.push(format!("entry[{i}]: fullUrl {full_url} used twice"));
        }
    }
}

/// How an entry writes its resource.
enum Write {
    /// `POST` with `ifNoneExist = identifier=<system>|<value>`.
    Conditional { system: String, value: String },
    /// `PUT <Type>/<id>`.
    Put { id: String },
}

/// A FHIR R4 id: `[A-Za-z0-9\-\.]{1,64}`.
fn is_fhir_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

/// Checks one entry's shape; returns its type and how it writes (its identity).
fn check_entry(i: usize, entry: &Value) -> Result<(String, Write), String> {
    let resource = entry
        .get("resource")
        .ok_or_else(|| format!("entry[{i}]: no resource"))?;
    let resource_type = resource
        .get("resourceType")
        .and_then(Value::as_str)
        .ok_or_else(|| format!("entry[{i}]: resource has no resourceType"))?;
    let request = entry
        .get("request")
        .ok_or_else(|| format!("entry[{i}]: no request"))?;
    let method = request.get("method").and_then(Value::as_str).unwrap_or("");
    let url = request.get("url").and_then(Value::as_str).unwrap_or("");
    if let Some(full_url) = entry.get("fullUrl") {
        if full_url.as_str().is_none_or(str::is_empty) {
            return Err(format!("entry[{i}]: fullUrl is not a non-empty string"));
        }
    }
    if method == "PUT" {
        let id = url
            .strip_prefix(resource_type)
            .and_then(|rest| rest.strip_prefix('/'))
            .ok_or_else(|| {
                format!(
                    "entry[{i}]: PUT request.url {url:?} is not {resource_type}/<id> (update as create)"
                )
            })?;
        if !is_fhir_id(id) {
            return Err(format!(
                "entry[{i}]: PUT request.url {url:?}: {id:?} is not a FHIR id ([A-Za-z0-9-.]{{1,64}})"
            ));
        }
        if resource.get("id").and_then(Value::as_str) != Some(id) {
            return Err(format!(
                "entry[{i}]: PUT {url}: the resource's id is not {id:?} (it must match the URL)"
            ));
        }
        if request.get("ifNoneExist").is_some() {
            return Err(format!(
                "entry[{i}]: PUT with request.ifNoneExist (only a POST is a conditional create)"
            ));
        }
        return Ok((resource_type.to_owned(), Write::Put { id: id.to_owned() }));
    }
    if method != "POST" {
        return Err(format!(
            "entry[{i}]: request.method {method:?} not supported; only POST (conditional create) or PUT (update as create)"
        ));
    }
    if url != resource_type {
        return Err(format!(
            "entry[{i}]: request.url {url:?} does not match resourceType {resource_type:?}"
        ));
    }
    let if_none_exist = request
        .get("ifNoneExist")
        .and_then(Value::as_str)
        .ok_or_else(|| {
            format!("entry[{i}]: POST without request.ifNoneExist (conditional create required)")
        })?;
    let (system, value) = parse_identifier_query(if_none_exist).ok_or_else(|| {
        format!("entry[{i}]: ifNoneExist {if_none_exist:?} is not identifier=<system>|<value>")
    })?;
    if !has_identifier(resource, &system, &value) {
        return Err(format!(
            "entry[{i}]: ifNoneExist identifier {system}|{value} is not an identifier of the resource"
        ));
    }
    Ok((
        resource_type.to_owned(),
        Write::Conditional { system, value },
    ))
}

struct Resolver<'a> {
    store: &'a Store,
    full_urls: &'a HashMap<String, String>,
    just_created: &'a [(String, String, String, String)],
}

#[derive(Default)]
struct RefLog {
    conditional: Vec<String>,
    unresolved: Vec<String>,
    bad: Vec<String>,
}

impl Resolver<'_> {
    /// Rewrites every `reference` string found anywhere in `value`.
    fn rewrite(&self, value: &mut Value, log: &mut RefLog) {
        match value {
            Value::Object(map) => {
                for (key, child) in map.iter_mut() {
                    if key == "reference" {
                        if let Value::String(reference) = child {
                            if let Some(new) = self.resolve(reference, log) {
                                *reference = new;
                            }
                            continue;
                        }
                    }
                    self.rewrite(child, log);
                }
            }
            Value::Array(items) => items.iter_mut().for_each(|v| self.rewrite(v, log)),
            _ => {}
        }
    }

    /// The rewritten reference, or `None` to keep it.
    fn resolve(&self, reference: &str, log: &mut RefLog) -> Option<String> {
        if reference.starts_with("urn:uuid:") || reference.starts_with("urn:oid:") {
            let target = self.full_urls.get(reference).cloned();
            if target.is_none() {
                log.bad.push(reference.to_owned());
            }
            return target;
        }
        if let Some((resource_type, query)) = reference.split_once('?') {
            log.conditional.push(reference.to_owned());
            let (system, value) = parse_identifier_query(query)?;
            let mut ids = self.store.find(resource_type, &system, &value);
            ids.extend(
                self.just_created
                    .iter()
                    .filter(|(t, s, v, _)| t == resource_type && *s == system && *v == value)
                    .map(|(_, _, _, id)| id.clone()),
            );
            return match ids.as_slice() {
                [id] => Some(format!("{resource_type}/{id}")),
                _ => None,
            };
        }
        if let Some((resource_type, id)) = reference.split_once('/') {
            let known_type = self.store.resources.contains_key(resource_type)
                || self.just_created.iter().any(|(t, ..)| t == resource_type);
            let known_id = self
                .store
                .of_type(resource_type)
                .iter()
                .any(|r| r.get("id").and_then(Value::as_str) == Some(id))
                || self
                    .just_created
                    .iter()
                    .any(|(t, _, _, i)| t == resource_type && i == id);
            if MANAGED_TYPES.contains(&resource_type) && !known_id {
                // Like a server that enforces referential integrity (HAPI's default): a
                // reference to a Device or Observation it does not hold refuses the Bundle.
                log.bad.push(reference.to_owned());
            } else if known_type && !known_id && !id.contains('/') {
                log.unresolved.push(reference.to_owned());
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example() -> Value {
        serde_json::from_str(include_str!("../../testdata/example-bundle.json")).unwrap()
    }

    #[test]
    fn example_bundle_creates_four_then_finds_four() {
        let mut store = Store::default();
        let plan = plan_transaction(&store, &example()).unwrap();
        assert!(plan.outcomes.iter().all(|o| o.created));
        store.commit(plan);
        assert_eq!(store.of_type("Device").len(), 2);
        assert_eq!(store.of_type("Observation").len(), 2);
        let again = plan_transaction(&store, &example()).unwrap();
        assert!(again.outcomes.iter().all(|o| !o.created));
        assert_eq!(again.outcomes[2].location(), "Observation/1/_history/1");
        store.commit(again);
        assert_eq!(store.of_type("Observation").len(), 2);
        assert_eq!(store.duplicate_creates(), 0);
    }

    #[test]
    fn urn_uuid_references_become_assigned_ids() {
        let mut store = Store::default();
        store.commit(plan_transaction(&store, &example()).unwrap());
        let bp = &store.of_type("Observation")[0];
        assert_eq!(bp["device"]["reference"], "Device/2");
        assert_eq!(
            bp["extension"][0]["valueReference"]["reference"],
            "Device/1"
        );
        assert_eq!(bp["id"], "1");
        assert_eq!(bp["meta"]["versionId"], "1");
        // Patient is unknown to the server: kept as sent, and recorded.
        assert_eq!(
            bp["subject"]["reference"],
            "Patient?identifier=https://rpm.example.org/fhir/sid/patient-mrn|RPM-000123"
        );
        assert!(store
            .conditional_references
            .iter()
            .any(|r| r.starts_with("Device?identifier=")));
    }

    #[test]
    fn conditional_reference_to_a_stored_device_is_resolved() {
        let mut store = Store::default();
        // Upload the scale Device first, then the weight Observation refers to it conditionally.
        let scale = json!({
            "resourceType": "Device",
            "identifier": [{"system": "urn:oid:1.2.840.10004.1.1.1.0.0.1.0.0.1.2680", "value": "00-09-1F-FF-FE-80-56-78"}]
        });
        let first = json!({"resourceType": "Bundle", "type": "transaction", "entry": [{
            "resource": scale,
            "request": {"method": "POST", "url": "Device",
                "ifNoneExist": "identifier=urn:oid:1.2.840.10004.1.1.1.0.0.1.0.0.1.2680%7C00-09-1F-FF-FE-80-56-78"}
        }]});
        store.commit(plan_transaction(&store, &first).unwrap());
        store.commit(plan_transaction(&store, &example()).unwrap());
        let weight = &store.of_type("Observation")[1];
        assert_eq!(weight["device"]["reference"], "Device/1");
    }

    #[test]
    fn entry_rules_are_enforced() {
        let store = Store::default();
        type Mutation = Box<dyn Fn(&mut Value)>;
        let cases: Vec<(&str, Mutation)> = vec![
            (
                "no request",
                Box::new(|b| {
                    b["entry"][0].as_object_mut().unwrap().remove("request");
                }),
            ),
            (
                "ifNoneExist",
                Box::new(|b| {
                    b["entry"][0]["request"]
                        .as_object_mut()
                        .unwrap()
                        .remove("ifNoneExist");
                }),
            ),
            (
                "only POST",
                Box::new(|b| b["entry"][0]["request"]["method"] = json!("PATCH")),
            ),
            (
                "is not Device/<id>",
                Box::new(|b| b["entry"][0]["request"]["method"] = json!("PUT")),
            ),
            (
                "is not a FHIR id",
                Box::new(|b| {
                    b["entry"][0]["request"] = json!({"method": "PUT", "url": "Device/a_b"});
                    b["entry"][0]["resource"]["id"] = json!("a_b");
                }),
            ),
            (
                "must match the URL",
                Box::new(|b| {
                    b["entry"][0]["request"] = json!({"method": "PUT", "url": "Device/ab"});
                    b["entry"][0]["resource"]["id"] = json!("ac");
                }),
            ),
            (
                "PUT with request.ifNoneExist",
                Box::new(|b| {
                    b["entry"][0]["request"]["method"] = json!("PUT");
                    b["entry"][0]["request"]["url"] = json!("Device/ab");
                    b["entry"][0]["resource"]["id"] = json!("ab");
                }),
            ),
            (
                "does not match resourceType",
                Box::new(|b| b["entry"][0]["request"]["url"] = json!("Device/_search")),
            ),
            (
                "not an identifier of the resource",
                Box::new(|b| {
                    b["entry"][0]["request"]["ifNoneExist"] = json!("identifier=urn:x|y");
                }),
            ),
            (
                "not identifier=",
                Box::new(|b| {
                    b["entry"][0]["request"]["ifNoneExist"] =
                        json!("identifier=DC-A6-32-FF-FE-4A-7B-01");
                }),
            ),
            (
                "same Bundle",
                Box::new(|b| {
                    let e = b["entry"][0].clone();
                    b["entry"].as_array_mut().unwrap().push(e);
                }),
            ),
            (
                "must be \"transaction\"",
                Box::new(|b| b["type"] = json!("batch")),
            ),
            (
                "at most 50",
                Box::new(|b| {
                    let e = b["entry"][3].clone();
                    b["entry"] = Value::Array(vec![e; 51]);
                }),
            ),
            (
                "unresolvable reference",
                Box::new(|b| {
                    b["entry"][2]["resource"]["device"]["reference"] =
                        json!("urn:uuid:00000000-0000-4000-8000-000000000000");
                }),
            ),
        ];
        for (expect, mutate) in cases {
            let mut b = example();
            mutate(&mut b);
            let err = plan_transaction(&store, &b).expect_err(expect);
            assert_eq!(err.status, 400, "{expect}");
            assert!(
                err.issues.iter().any(|m| m.contains(expect)),
                "{expect}: {:?}",
                err.issues
            );
        }
    }

    /// The example Bundle written as the agent's `write_mode = "put"` writes it.
    fn example_as_put() -> Value {
        let mut b = example();
        for (n, e) in b["entry"].as_array_mut().unwrap().iter_mut().enumerate() {
            let ty = e["resource"]["resourceType"].as_str().unwrap().to_owned();
            let id = format!("id-{n}");
            e["resource"]["id"] = json!(id);
            e["request"] = json!({"method": "PUT", "url": format!("{ty}/{id}")});
        }
        b
    }

    #[test]
    fn put_creates_at_the_given_id_then_updates_in_place() {
        let mut store = Store::default();
        let plan = plan_transaction(&store, &example_as_put()).unwrap();
        assert!(plan.outcomes.iter().all(|o| o.created && o.version == 1));
        store.commit(plan);
        assert_eq!(store.of_type("Observation").len(), 2);
        let bp = &store.of_type("Observation")[0];
        assert_eq!(bp["id"], "id-2");
        // urn:uuid references resolve to the PUT ids.
        assert_eq!(bp["device"]["reference"], "Device/id-1");
        // A resend (the server committed, the answer was lost) updates, creates nothing.
        let again = plan_transaction(&store, &example_as_put()).unwrap();
        assert!(again.outcomes.iter().all(|o| !o.created && o.version == 2));
        assert_eq!(again.outcomes[2].status(), "200 OK");
        assert_eq!(again.outcomes[2].location(), "Observation/id-2/_history/2");
        store.commit(again);
        assert_eq!(store.of_type("Observation").len(), 2);
        assert_eq!(store.of_type("Observation")[0]["meta"]["versionId"], "2");
        assert_eq!(store.duplicate_creates(), 0);
        // Two PUTs of one id in one Bundle are refused.
        let mut twice = example_as_put();
        let e = twice["entry"][3].clone();
        twice["entry"].as_array_mut().unwrap().push(e);
        let err = plan_transaction(&store, &twice).unwrap_err();
        assert!(
            err.issues.iter().any(|m| m.contains("a second PUT")),
            "{err:?}"
        );
    }

    #[test]
    fn fhir_ids() {
        assert!(is_fhir_id("a-B.9"));
        assert!(is_fhir_id(&"f".repeat(64)));
        assert!(!is_fhir_id(&"f".repeat(65)));
        assert!(!is_fhir_id(""));
        assert!(!is_fhir_id("a/b"));
    }

    #[test]
    fn identifier_query_parsing() {
        assert_eq!(
            parse_identifier_query("identifier=http://x/y%7Cab+1"),
            Some(("http://x/y".into(), "ab+1".into()))
        );
        assert_eq!(parse_identifier_query("identifier=abc"), None);
        assert_eq!(parse_identifier_query("identifier=a|b&x=1"), None);
        assert_eq!(parse_identifier_query("code=a|b"), None);
        assert_eq!(parse_identifier_query("identifier=a|b%zz"), None);
    }
}
