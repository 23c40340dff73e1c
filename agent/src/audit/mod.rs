//! The audit log (issue #11, HIPAA audit controls): a hash-chained, append-only record of
//! custody and security events, and the delivery ledger read from it.
//!
//! # What is recorded
//!
//! One [`AuditEvent`] per custody step of a reading — `stored`, `duplicate`, `sent` (one entry
//! per transaction Bundle, listing its readings), `delivered` (the server's resource id and
//! version from `response.location`), `dead_lettered`, `purged` (consent) — and per security
//! or store event: `key_created`, `key_rotated`, `config_reloaded`, `send_failed` (TLS and
//! every other failure with no HTTP answer, by class), `refused` (401/403... from the server),
//! `token_refused`, `quarantined` (a corrupt record), `store_quarantined`, plus the log's own
//! `agent_started`, `agent_stopped`, `gap`, `recovered` and `retention_deleted`.
//!
//! Entries hold **ids, never PHI**: a reading is named by its full 64-hex content id
//! ([`ReadingId`]), never by a patient identifier, a measured value or its FHIR Observation
//! identifier (which embeds the patient's MRN). Reasons are codes (`identifier_collision`,
//! HTTP statuses, error classes), never an OperationOutcome's text (which may quote values).
//!
//! # Format, chain and files
//!
//! JSON lines in segment files `<data_dir>/audit/audit-<first seq, 20 digits>.jsonl`; each
//! line is `{"seq":..,"time":"<RFC 3339 UTC>",["prev":..,]"event":"<snake_case>",<fields>,
//! "hash":"<64 hex>"}` with `hash = SHA-256(previous hash ‖ the line without its hash field)`.
//! The pure part ([`chain`]: sealing, verification over bytes; [`ledger`]: the ledger's
//! reading of entries) does no I/O; [`writer`] is the thin file shell.
//!
//! # Writing without slowing ingest
//!
//! [`record`] never blocks: it stamps the time and `try_send`s the event on a bounded channel
//! ([`CHANNEL`] entries) to one writer thread, which writes through a `BufWriter` and makes
//! the file durable (flush + `fdatasync`) in groups: every [`SYNC_EVERY`] or [`SYNC_ENTRIES`]
//! entries, at rollover and at shutdown ([`AuditLog::close`]). When the channel is full the
//! event is counted (`audit_entries_dropped`) and the writer's next entry is a `gap` entry
//! saying how many were lost: never blocked for ever, never lost silently.
//!
//! What a power loss can cost: the entries not yet synced, those of the last [`SYNC_EVERY`]
//! (at most [`SYNC_ENTRIES`]). A last line cut in the middle is a *torn tail*: `vitalgate audit verify`
//! reports it apart from a broken chain, and the writer cuts it off at its next start and
//! records a `recovered` entry saying how many bytes it removed.
//!
//! # Retention
//!
//! `[audit] max_bytes` bounds the whole log (default 64 MiB) and `retention_days` its age;
//! beyond either, the oldest segments are deleted whole (a `retention_deleted` entry says
//! which), never the one being written. Verification then starts at the first kept entry's
//! `prev` and says so. `ledger_days` (default 30) is how long the ledger must be able to
//! answer; the config refuses a `retention_days` shorter than it, and a deletion forced by
//! `max_bytes` of a segment younger than `ledger_days` raises a warning
//! (`audit_retention_short`).
//!
//! # What the chain proves, and what it does not
//!
//! The order and integrity of the entries against accidental damage and against editing a
//! line, dropping or reordering lines in the middle, or removing, replacing or reordering a
//! middle segment. It does **not** detect: someone with root on the gateway rewriting the
//! whole chain from some entry on; entries cut from the **end** of the newest segment (the
//! shorter chain is still valid; a torn line is reported, whole lines are not); the oldest
//! segments deleted (indistinguishable from retention, except that retention records a
//! `retention_deleted` entry in a later segment); the whole directory deleted. Those are only
//! detected if the chain's head hash is shipped off the box (not done yet).
//!
//! # Process-wide sink
//!
//! [`crate::app::App::build`] opens the [`AuditLog`] and [`install`]s its handle; telemetry
//! `emit()`s then call [`record_with`] (the event is built only when a sink is installed), so
//! the log, counters and audit entries come from one route. Tests and CLI commands without a
//! sink are unaffected. A unit test that wants entries opens its own [`AuditLog`] and records
//! through its [`AuditHandle`], not the global. Other modules (export, key rotation) call
//! [`record`] (the daemon) or `cli::audit_once` (a CLI command, daemon stopped) with a
//! variant: [`AuditEvent::Exported`] (`vitalgate export`) and [`AuditEvent::KeyRotated`]
//! (`vitalgate keys rotate`, or the daemon when it picks the new key up); add a variant for a new kind and, if it names readings, teach it to
//! [`ledger`]. One process writes the log at a time (`<dir>/.lock`): a CLI command run while
//! the daemon runs gets [`AuditError::Locked`] and says the event was not recorded.

use std::sync::{Arc, PoisonError, RwLock};

use serde::Serialize;

use crate::identity::ReadingId;

pub mod chain;
pub mod files;
pub mod ledger;
pub mod writer;

pub use writer::{AuditError, AuditHandle, AuditLog, AuditOptions};

/// Capacity of the channel to the writer thread.
pub const CHANNEL: usize = 4096;
/// The writer makes the file durable at least this often while entries come in.
pub const SYNC_EVERY: std::time::Duration = std::time::Duration::from_millis(200);
/// ... or after this many entries, whichever comes first.
pub const SYNC_ENTRIES: usize = 256;
/// Most reading ids in one `sent` entry (a Bundle with more is recorded in several entries).
pub const SENT_IDS_PER_ENTRY: usize = 64;

/// A reading's full content id, written as 64 hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Id(pub ReadingId);

impl Serialize for Id {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

impl From<&ReadingId> for Id {
    fn from(id: &ReadingId) -> Self {
        Id(*id)
    }
}

/// One audit event. Every field is an id, a code or a count: never PHI (see the module doc).
/// Add a variant for a new kind of event; its snake_case name is the `event` field.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum AuditEvent {
    /// The daemon started (the audit log was opened by `App::build`).
    AgentStarted { version: &'static str },
    /// The daemon stopped in order (uploads in flight were abandoned).
    AgentStopped {},
    /// A reading was received and stored as pending (durable).
    Stored {
        reading: Id,
        kind: String,
        device: String,
    },
    /// A reading received again and not stored (already stored or uploaded).
    Duplicate { reading: Id },
    /// A reading kept as a dead letter, not to be uploaded: `reason` is a code
    /// (`identifier_collision`, `record_too_large`, `rejected`, `unmappable`).
    DeadLettered {
        reading: Id,
        reason: &'static str,
        #[serde(skip_serializing_if = "Option::is_none")]
        status: Option<u16>,
    },
    /// A transaction Bundle went out with these readings (the ledger's "in flight"). A Bundle
    /// of more than [`SENT_IDS_PER_ENTRY`] readings takes several entries, the later ones
    /// `continued`.
    Sent {
        readings: Vec<Id>,
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        continued: bool,
    },
    /// The server confirmed a reading: `resource` (`Observation/123`) and `version` from its
    /// `response.location`, when it gave one.
    Delivered {
        reading: Id,
        created: bool,
        #[serde(skip_serializing_if = "Option::is_none")]
        resource: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        version: Option<String>,
    },
    /// No HTTP answer (`class`: `tls`, `dns`, `connection_refused`, `timeout`...); for TLS,
    /// `detail` says what failed (certificate problems, no PHI).
    SendFailed {
        class: &'static str,
        #[serde(skip_serializing_if = "Option::is_none")]
        detail: Option<String>,
    },
    /// The server answered without confirming the readings (a transient status); resent.
    NotConfirmed { status: u16 },
    /// The server refuses the gateway (401, 403, 404, ... or a rejection streak): uploads
    /// paused, or a probe during the pause refused again.
    Refused {
        #[serde(skip_serializing_if = "Option::is_none")]
        status: Option<u16>,
        cause: &'static str,
    },
    /// The OAuth token endpoint gave no token (`class`, no secret).
    TokenRefused { class: &'static str },
    /// A corrupt store record was moved to the quarantine tree.
    Quarantined {
        tree: &'static str,
        #[serde(skip_serializing_if = "Option::is_none")]
        seq: Option<u64>,
        reason: &'static str,
    },
    /// The store's files were damaged at open: moved aside to `path`.
    StoreQuarantined { path: String, cause: String },
    /// `vitalgate store salvage` recovered records of the quarantined store at `from` into the
    /// live one (counts; the recovered readings are pending again under their ids).
    Salvaged {
        from: String,
        pending_recovered: u64,
        dead_letters_recovered: u64,
        unreadable: u64,
    },
    /// The store was compacted: copied into a fresh database that took its place (every entry
    /// kept; `entries` copied, the size on disk before and after).
    Compacted {
        entries: u64,
        disk_before: u64,
        disk_after: u64,
    },
    /// A reading deleted from the outbox without upload (`reason`: `consent_withdrawn`).
    Purged {
        reading: Id,
        reason: &'static str,
        stored_days: u64,
    },
    /// Dead letters (by their dead-letter seq) put back into the outbox by
    /// `vitalgate dead-letters requeue`: their readings are pending again.
    Requeued { dead_seqs: Vec<u64> },
    /// Readings exported from the gateway (`destination`: a path or a code, no PHI).
    Exported {
        readings: Vec<Id>,
        destination: String,
    },
    /// The store key was created.
    KeyCreated { key_file: String },
    /// The store key was rotated (`key_id`s are fingerprints or labels, never key bytes).
    KeyRotated {
        key_file: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        old_key_id: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        new_key_id: Option<String>,
    },
    /// The configuration was reloaded (SIGHUP) and applied.
    ConfigReloaded { changes: String },
    /// `lost` events were not recorded (the channel to the writer was full, or writing failed).
    Gap { lost: u64 },
    /// The writer repaired its file at open: cut a torn last line of `truncated_bytes`, or
    /// started a new segment after an unreadable last entry.
    Recovered {
        segment: String,
        reason: &'static str,
        truncated_bytes: u64,
    },
    /// Retention deleted a whole segment (entries `first_seq`..=`last_seq`).
    RetentionDeleted {
        segment: String,
        first_seq: u64,
        last_seq: u64,
        why: &'static str,
    },
}

// ---- the chain's head, published off the box ----

/// The last entry of the audit log that is on disk (written and fsynced): its `seq` and hash.
/// The daemon puts it in its status snapshot and in the fleet's retained status message, so a
/// copy lives off the box; `vitalgate audit verify --anchor SEQ:HASH` then proves the log still
/// holds that entry unchanged: a log rewritten or cut back after the head left the box fails,
/// even if its own chain is consistent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct AuditHead {
    pub seq: u64,
    /// SHA-256, 64 hex digits.
    pub hash: String,
}

static HEAD: RwLock<Option<AuditHead>> = RwLock::new(None);

/// The head the writer last synced, if an audit log is open in this process.
pub fn head() -> Option<AuditHead> {
    HEAD.read().unwrap_or_else(PoisonError::into_inner).clone()
}

pub(crate) fn publish_head(seq: u64, hash: &[u8; 32]) {
    *HEAD.write().unwrap_or_else(PoisonError::into_inner) = Some(AuditHead {
        seq,
        hash: hex::encode(hash),
    });
}

// ---- the process-wide sink ----

static SINK: RwLock<Option<AuditHandle>> = RwLock::new(None);

/// Makes `handle` the process-wide sink (replacing any other).
pub fn install(handle: AuditHandle) {
    *SINK.write().unwrap_or_else(PoisonError::into_inner) = Some(handle);
}

/// Removes the process-wide sink, if any; returns it.
pub fn uninstall() -> Option<AuditHandle> {
    SINK.write().unwrap_or_else(PoisonError::into_inner).take()
}

/// Removes the process-wide sink only if it is `handle` (an app that ends does not remove
/// another app's sink: tests build several in one process).
pub fn uninstall_if(handle: &AuditHandle) {
    let mut sink = SINK.write().unwrap_or_else(PoisonError::into_inner);
    if sink.as_ref().is_some_and(|h| h.same(handle)) {
        *sink = None;
    }
}

/// Whether a process-wide sink is installed.
pub fn installed() -> bool {
    SINK.read()
        .unwrap_or_else(PoisonError::into_inner)
        .is_some()
}

/// Records `event` in the process-wide audit log, if one is installed. Never blocks.
pub fn record(event: AuditEvent) {
    record_with(|| event);
}

/// Builds and records an event only when a sink is installed. Never blocks.
pub fn record_with(make: impl FnOnce() -> AuditEvent) {
    let sink = SINK.read().unwrap_or_else(PoisonError::into_inner);
    if let Some(h) = sink.as_ref() {
        h.record(make());
    }
}

/// Records a Bundle's readings as `sent` entries of at most [`SENT_IDS_PER_ENTRY`] ids.
pub fn record_sent<'a>(ids: impl IntoIterator<Item = &'a ReadingId>) {
    if !installed() {
        return;
    }
    let ids: Vec<Id> = ids.into_iter().map(Id::from).collect();
    for (i, chunk) in ids.chunks(SENT_IDS_PER_ENTRY).enumerate() {
        record(AuditEvent::Sent {
            readings: chunk.to_vec(),
            continued: i > 0,
        });
    }
}

/// Splits a FHIR `response.location` (`Observation/123/_history/2`, possibly absolute) into
/// the resource (`Observation/123`) and its version (`2`).
pub fn split_location(location: &str) -> (Option<String>, Option<String>) {
    let path = location.split(['?', '#']).next().unwrap_or("");
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    let hist = parts.iter().rposition(|p| *p == "_history");
    let (res, version) = match hist {
        Some(h) if h >= 2 => (
            parts.get(h - 2..h),
            parts.get(h + 1).map(|v| (*v).to_string()),
        ),
        Some(_) => (None, None),
        None if parts.len() >= 2 => (parts.get(parts.len() - 2..), None),
        _ => (None, None),
    };
    (res.map(|r| r.join("/")), version)
}

/// Shared by the writer and the handles: events lost since the last `gap` entry.
pub(crate) type Dropped = Arc<std::sync::atomic::AtomicU64>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_location_splits_into_resource_and_version() {
        assert_eq!(
            split_location("Observation/123/_history/1"),
            (Some("Observation/123".into()), Some("1".into()))
        );
        assert_eq!(
            split_location("https://fhir.example/r4/Observation/abc/_history/7"),
            (Some("Observation/abc".into()), Some("7".into()))
        );
        assert_eq!(
            split_location("Observation/9"),
            (Some("Observation/9".into()), None)
        );
        assert_eq!(split_location(""), (None, None));
        assert_eq!(split_location("_history/1"), (None, None));
    }

    #[test]
    fn events_serialise_with_a_snake_case_kind_and_full_ids() {
        let id = ReadingId::from_bytes([0xab; 32]);
        let v = serde_json::to_value(AuditEvent::Delivered {
            reading: Id(id),
            created: true,
            resource: Some("Observation/1".into()),
            version: Some("1".into()),
        })
        .unwrap();
        assert_eq!(v["event"], "delivered");
        assert_eq!(v["reading"], "ab".repeat(32));
        let v = serde_json::to_value(AuditEvent::AgentStopped {}).unwrap();
        assert_eq!(v["event"], "agent_stopped");
    }
}
