//! Telemetry: the one route for notable conditions (STYLE.md, practice 5).
//!
//! Each condition is a struct; its `emit()` writes one structured log line, bumps one counter
//! and, where an embedder asked for it, tells the in-process observer ([`observe`]). Callers
//! never log a condition another way, so the log, the counters and the observer cannot drift.
//!
//! The structs hold no patient fields and no values, which keeps PHI out of the logs by
//! construction; a [`Reading`] passed to an event is used for its short id, kind and device
//! name only (the observer, in-process, receives the reading itself: see
//! [`crate::events`]).
//!
//! Counters are process-wide atomics, readable at any time with [`Counters::snapshot`].
//!
//! Custody and security events also go to the audit log ([`crate::audit`]) from their
//! `emit()`, when the daemon installed one: `audit::record_with` builds the entry only then.

use std::fmt::Display;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use tokio::sync::broadcast;

use crate::audit::{self, AuditEvent, Id};
use crate::events::AgentEvent;
use crate::identity::ReadingId;
use crate::ops::alarms::{AlarmEvent, AlarmState, Severity};
use crate::ops::episodes::{self, Decision};
use crate::ops::health::{self, UplinkState};
use crate::reading::Reading;
use crate::uplink::client::SendError;
use crate::uplink::outcome::RetryReason;
use crate::uplink::scheduler::PauseCause;

macro_rules! counters {
    ($($name:ident),* $(,)?) => {
        /// Process-wide counters, one per telemetry event kind.
        #[derive(Debug)]
        pub struct Counters {
            $(pub $name: AtomicU64,)*
        }

        /// The counters.
        pub static COUNTERS: Counters = Counters {
            $($name: AtomicU64::new(0),)*
        };

        impl Counters {
            /// `(name, value)` pairs, in declaration order.
            pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
                vec![$((stringify!($name), self.$name.load(Ordering::Relaxed)),)*]
            }
        }
    };
}

/// Tests that make the pipeline fault its store, or count such faults, hold this: the
/// counters are process-wide and lib tests run in parallel threads of one process.
#[cfg(test)]
pub(crate) static STORE_FAULT_TESTS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

counters!(
    readings_stored,
    readings_duplicate,
    readings_dead_lettered,
    identifier_collisions,
    records_rejected,
    payloads_undecodable,
    store_write_failures,
    store_records_quarantined,
    store_index_mismatches,
    store_unfinished_snapshots_removed,
    store_pressure_high,
    store_pressure_critical,
    store_pressure_resumed,
    store_usage_probe_failures,
    store_quarantined_on_open,
    store_faults,
    store_reopen_failures,
    store_recoveries,
    store_key_rotations,
    store_records_resealed,
    store_tombstones_pruned,
    store_compactions,
    store_compaction_failures,
    log_lines_suppressed,
    store_keyring_reload_failures,
    uplink_bundles_sent,
    uplink_accepted,
    uplink_retries,
    uplink_send_failures,
    uplink_dead_lettered,
    uplink_tls_failures,
    uplink_pauses,
    uplink_probes_failed,
    uplink_resumes,
    uplink_body_bytes_sent,
    uplink_gzip_refused,
    uplink_holds,
    uplink_ledger_write_failures,
    uplink_client_cert_rotations,
    uplink_client_cert_reload_failures,
    uplink_tokens_fetched,
    uplink_tokens_refused,
    uplink_oauth_key_rotations,
    uplink_oauth_key_reload_failures,
    uplink_token_endpoint_discoveries,
    mqtt_connects,
    mqtt_connection_errors,
    mqtt_subscriptions_refused,
    mqtt_acks_sent,
    mqtt_acks_dropped,
    mqtt_not_durable_reconnects,
    mqtt_window_overruns,
    mqtt_qos0_dropped,
    mqtt_payloads_oversized,
    serial_port_opens,
    serial_port_open_failures,
    serial_port_losses,
    serial_silence_alarms,
    serial_bytes_read,
    serial_bytes_discarded,
    serial_decode_errors,
    serial_records_decoded,
    serial_records_invalid_status,
    serial_records_no_value,
    serial_records_reduced_away,
    serial_readings_reduced_out,
    serial_windows_insufficient,
    serial_windows_partial,
    serial_store_refusals,
    serial_readings_dropped,
    tasks_failed,
    tasks_stalled,
    alarms_raised,
    alarms_cleared,
    config_reloads,
    config_reload_failures,
    status_write_failures,
    fleet_publish_failures,
    consent_withheld,
    consent_source_errors,
    consent_purged,
    consent_purge_failures,
    ble_advertisements,
    ble_connects,
    ble_disconnects,
    ble_session_failures,
    ble_recoveries,
    ble_watchdog_actions,
    ble_identity_mismatches,
    ble_probes,
    ble_devices_identified,
    ble_bond_required,
    ble_pairings,
    ble_clock_sets,
    ble_clock_set_failures,
    ble_clock_went_back,
    ble_records_already_ingested,
    ble_records_not_durable,
    ble_racp_downloads,
    ble_racp_failures,
    ble_racp_deletes,
    ble_gateway_clock_unsynchronized,
    ble_cursor_save_failures,
    ble_cursor_unreadable,
    audit_entries_dropped,
    audit_write_failures,
    audit_recoveries,
    audit_retention_short,
);

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// For events that report a number of things (acks dropped, subscriptions refused).
fn bump_by(c: &AtomicU64, n: usize) {
    c.fetch_add(n as u64, Ordering::Relaxed);
}

/// Process-wide gauges: the latest value of something measured, not a count of events.
#[derive(Debug)]
pub struct Gauges {
    /// [`crate::store::Outbox::held_bytes`]: what `store.max_bytes` bounds.
    pub store_held_bytes: AtomicU64,
    /// `store.max_bytes`.
    pub store_max_bytes: AtomicU64,
    /// [`crate::store::Outbox::disk_bytes`]: the store directory on disk.
    pub store_disk_bytes: AtomicU64,
    /// Free space on the store's filesystem, for this process.
    pub disk_available_bytes: AtomicU64,
    /// 1 while the store is failed (an I/O error, reopen pending), else 0.
    pub store_failed: AtomicU64,
}

/// The gauges.
pub static GAUGES: Gauges = Gauges {
    store_held_bytes: AtomicU64::new(0),
    store_max_bytes: AtomicU64::new(0),
    store_disk_bytes: AtomicU64::new(0),
    disk_available_bytes: AtomicU64::new(0),
    store_failed: AtomicU64::new(0),
};

impl Gauges {
    /// `(name, value)` pairs.
    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        vec![
            ("store_failed", self.store_failed.load(Ordering::Relaxed)),
            (
                "store_held_bytes",
                self.store_held_bytes.load(Ordering::Relaxed),
            ),
            (
                "store_max_bytes",
                self.store_max_bytes.load(Ordering::Relaxed),
            ),
            (
                "store_disk_bytes",
                self.store_disk_bytes.load(Ordering::Relaxed),
            ),
            (
                "disk_available_bytes",
                self.disk_available_bytes.load(Ordering::Relaxed),
            ),
        ]
    }
}

fn add(c: &AtomicU64, n: u64) {
    if n > 0 {
        c.fetch_add(n, Ordering::Relaxed);
    }
}

// ---- the in-process observer (embedders: the devkit demo, tests) ----

static OBSERVER: Mutex<Option<broadcast::Sender<AgentEvent>>> = Mutex::new(None);

/// Subscribes to [`AgentEvent`]s of this process. Events may carry PHI: they never leave the
/// process. The daemon itself never calls this, so by default no event is even built.
pub fn observe() -> broadcast::Receiver<AgentEvent> {
    let mut slot = OBSERVER.lock().unwrap_or_else(PoisonError::into_inner);
    match slot.as_ref() {
        Some(tx) => tx.subscribe(),
        None => {
            let (tx, rx) = broadcast::channel(4096);
            *slot = Some(tx);
            rx
        }
    }
}

/// Builds and sends an event only if someone observes.
fn notify(make: impl FnOnce() -> AgentEvent) {
    let slot = OBSERVER.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(tx) = slot.as_ref() {
        if tx.receiver_count() > 0 {
            let _ = tx.send(make());
        }
    }
}

// ---- pipeline ----

pub struct ReadingStored<'a> {
    pub reading: &'a Reading,
}
impl ReadingStored<'_> {
    pub fn emit(self) {
        bump(&COUNTERS.readings_stored);
        health::device_delivered(&self.reading.device.name);
        tracing::info!(
            reading = %self.reading.short_id(),
            kind = self.reading.kind.as_str(),
            device = %self.reading.device.name,
            "reading stored"
        );
        audit::record_with(|| AuditEvent::Stored {
            reading: Id(self.reading.id),
            kind: self.reading.kind.as_str().to_string(),
            device: self.reading.device.name.to_string(),
        });
        notify(|| AgentEvent::Stored(Box::new(self.reading.clone())));
    }
}

/// Audit: a pending reading is held back because its patient's consent is withdrawn (once per
/// reading per process). No patient identifier: the reading's short id only.
pub struct ConsentWithheld<'a> {
    /// The reading's short id.
    pub reading: &'a str,
    pub device: &'a str,
}
impl ConsentWithheld<'_> {
    pub fn emit(self) {
        bump(&COUNTERS.consent_withheld);
        tracing::warn!(
            reading = %self.reading,
            device = %self.device,
            "AUDIT consent withdrawn: reading held, not uploaded"
        );
    }
}

/// Audit: a held reading of a withdrawn patient was purged from the outbox (config
/// `consent.purge_after_days`): one event per reading. No patient identifier, no value: the
/// reading's short id, its kind, its device and how long it had been stored.
pub struct ConsentPurged<'a> {
    /// The reading's short id.
    pub reading: &'a str,
    /// Its full id, for the audit log.
    pub reading_id: &'a ReadingId,
    pub kind: &'a str,
    pub device: &'a str,
    pub stored_days: u64,
}
impl ConsentPurged<'_> {
    pub fn emit(self) {
        bump(&COUNTERS.consent_purged);
        tracing::warn!(
            reading = %self.reading,
            kind = %self.kind,
            device = %self.device,
            stored_days = self.stored_days,
            "AUDIT consent withdrawn: reading purged from the outbox"
        );
        audit::record_with(|| AuditEvent::Purged {
            reading: Id(*self.reading_id),
            reason: "consent_withdrawn",
            stored_days: self.stored_days,
        });
    }
}

/// The consent purge could not read or change the outbox (it tries again next round).
pub struct ConsentPurgeFailed<'a> {
    pub error: &'a dyn std::fmt::Display,
}
impl ConsentPurgeFailed<'_> {
    pub fn emit(self) {
        bump(&COUNTERS.consent_purge_failures);
        tracing::error!(error = %self.error, "consent purge failed; retrying next round");
    }
}

/// The consent file is missing, unreadable or malformed: nothing is uploaded (fail closed).
pub struct ConsentSourceError<'a> {
    pub error: &'a crate::consent::ConsentError,
}
impl ConsentSourceError<'_> {
    pub fn emit(self) {
        bump(&COUNTERS.consent_source_errors);
        tracing::error!(error = %self.error, "consent file unusable: uploads paused until it is fixed");
    }
}

pub struct ReadingDuplicate<'a> {
    pub reading: &'a Reading,
}
impl ReadingDuplicate<'_> {
    pub fn emit(self) {
        bump(&COUNTERS.readings_duplicate);
        health::device_delivered(&self.reading.device.name);
        tracing::info!(
            reading = %self.reading.short_id(),
            device = %self.reading.device.name,
            "duplicate reading ignored (already stored or uploaded)"
        );
        audit::record_with(|| AuditEvent::Duplicate {
            reading: Id(self.reading.id),
        });
        notify(|| AgentEvent::Duplicate {
            reading_id: self.reading.id,
        });
    }
}

/// Two readings with one FHIR identifier and different content: the later one is a dead
/// letter. An alarm condition: the server would have merged them.
pub struct IdentifierCollision<'a> {
    pub reading: &'a Reading,
    pub dead_seq: u64,
}
impl IdentifierCollision<'_> {
    pub fn emit(self) {
        bump(&COUNTERS.identifier_collisions);
        bump(&COUNTERS.readings_dead_lettered);
        tracing::error!(
            alarm = "identifier_collision",
            reading = %self.reading.short_id(),
            kind = self.reading.kind.as_str(),
            device = %self.reading.device.name,
            dead_seq = self.dead_seq,
            "ALARM: another reading already holds this reading's FHIR identifier; kept as dead letter (identifier_collision), not uploaded"
        );
        audit::record_with(|| AuditEvent::DeadLettered {
            reading: Id(self.reading.id),
            reason: "identifier_collision",
            status: None,
        });
        notify(|| AgentEvent::DeadLettered {
            reading_id: self.reading.id,
            reason: "identifier_collision".into(),
        });
    }
}

/// A reading too large for the store's record format, kept (truncated) as a dead letter.
pub struct ReadingTooLarge<'a> {
    pub reading: &'a Reading,
    pub dead_seq: u64,
}
impl ReadingTooLarge<'_> {
    pub fn emit(self) {
        bump(&COUNTERS.readings_dead_lettered);
        tracing::error!(
            reading = %self.reading.short_id(),
            device = %self.reading.device.name,
            dead_seq = self.dead_seq,
            "reading too large for the store; kept as dead letter (record_too_large)"
        );
        audit::record_with(|| AuditEvent::DeadLettered {
            reading: Id(self.reading.id),
            reason: "record_too_large",
            status: None,
        });
        notify(|| AgentEvent::DeadLettered {
            reading_id: self.reading.id,
            reason: "record_too_large".into(),
        });
    }
}

pub struct RecordRejected<'a> {
    pub device: &'a str,
    pub reason: &'a dyn Display,
}
impl RecordRejected<'_> {
    pub fn emit(self) {
        bump(&COUNTERS.records_rejected);
        health::device_delivered(self.device);
        tracing::warn!(device = %self.device, reason = %self.reason, "record not turned into readings");
        notify(|| AgentEvent::Rejected {
            device: self.device.to_string(),
            reason: self.reason.to_string(),
        });
    }
}

/// A payload that is not a data point we understand. Logged without its content.
pub struct PayloadUndecodable<'a> {
    pub source: &'a str,
    pub reason: &'a str,
    pub bytes: usize,
}
impl PayloadUndecodable<'_> {
    pub fn emit(self) {
        bump(&COUNTERS.payloads_undecodable);
        tracing::warn!(source = %self.source, reason = %self.reason, bytes = self.bytes, "undecodable payload kept as dead letter");
    }
}

pub struct StoreWriteFailed<'a> {
    pub error: &'a crate::store::StoreError,
}
impl StoreWriteFailed<'_> {
    pub fn emit(self) {
        bump(&COUNTERS.store_write_failures);
        tracing::error!(error = %self.error, "store write failed; nothing acknowledged upstream");
    }
}

// ---- store ----

/// The store failed a write (an I/O error: full disk, failing card): ALARM, once per episode.
/// The pipeline stops taking readings (nothing is acknowledged upstream) and reopens the store
/// with a backoff until a probe write succeeds.
pub struct StoreFaulted<'a> {
    pub error: &'a crate::store::StoreError,
}
impl StoreFaulted<'_> {
    pub fn emit(self) {
        bump(&COUNTERS.store_faults);
        tracing::error!(error = %self.error, "ALARM store failed; not taking readings from sources (they keep them); reopening the store with a backoff until it writes again");
    }
}

/// One failed attempt to reopen the store during a fault episode (debug log only: the episode
/// has its one alarm line).
pub struct StoreReopenFailed<'a> {
    pub error: &'a crate::store::StoreError,
    pub attempt: u32,
    pub next_try_secs: u64,
}
impl StoreReopenFailed<'_> {
    pub fn emit(self) {
        bump(&COUNTERS.store_reopen_failures);
        tracing::debug!(error = %self.error, attempt = self.attempt, next_try_secs = self.next_try_secs, "store reopen failed");
    }
}

/// The store seals new records with another data key (`vitalgate keys rotate` took effect).
pub struct StoreKeyActivated {
    pub key_id: u32,
    pub previous: Option<u32>,
}
impl StoreKeyActivated {
    pub fn emit(self) {
        bump(&COUNTERS.store_key_rotations);
        audit::record_with(|| AuditEvent::KeyRotated {
            key_file: crate::store::keyring::KEYRING_FILE.to_string(),
            old_key_id: self.previous.map(|id| format!("data key {id}")),
            new_key_id: Some(format!("data key {}", self.key_id)),
        });
        tracing::info!(
            key_id = self.key_id,
            "store data key rotated: new records are sealed with it; re-sealing older records in the background"
        );
    }
}

/// A repeated line of a noisy dependency was dropped ([`crate::logging`]); counted only (a log
/// line here would loop).
pub struct LogLineSuppressed;
impl LogLineSuppressed {
    pub fn emit(self) {
        bump(&COUNTERS.log_lines_suppressed);
    }
}

/// Expired tombstones were pruned (debug only; the counter says how many over the run).
pub struct StoreTombstonesPruned {
    pub count: usize,
}
impl StoreTombstonesPruned {
    pub fn emit(self) {
        bump_by(&COUNTERS.store_tombstones_pruned, self.count);
        tracing::debug!(count = self.count, "store tombstones pruned");
    }
}

/// The store was compacted (copied into a fresh database that took its place).
pub struct StoreCompacted {
    pub entries: u64,
    pub live_bytes: u64,
    pub disk_before: u64,
    pub disk_after: u64,
    pub millis: u128,
}
impl StoreCompacted {
    pub fn emit(self) {
        bump(&COUNTERS.store_compactions);
        audit::record_with(|| AuditEvent::Compacted {
            entries: self.entries,
            disk_before: self.disk_before,
            disk_after: self.disk_after,
        });
        tracing::info!(
            entries = self.entries,
            live_bytes = self.live_bytes,
            disk_before = self.disk_before,
            disk_after = self.disk_after,
            millis = self.millis as u64,
            "store compacted"
        );
    }
}

/// A compaction failed; the store is as it was (or closed, and the pipeline's fault recovery
/// reopens it, finishing or undoing the swap).
pub struct StoreCompactionFailed<'a> {
    pub error: &'a dyn std::error::Error,
}
impl StoreCompactionFailed<'_> {
    pub fn emit(self) {
        bump(&COUNTERS.store_compaction_failures);
        tracing::warn!(error = %self.error, "store compaction failed");
    }
}

/// A re-sealing pass ended: `records` records now sealed with the active key `key_id`.
pub struct StoreResealed {
    pub key_id: u32,
    pub records: usize,
}
impl StoreResealed {
    pub fn emit(self) {
        bump_by(&COUNTERS.store_records_resealed, self.records);
        if self.records > 0 {
            tracing::info!(
                key_id = self.key_id,
                records = self.records,
                "store records re-sealed with the active data key"
            );
        }
    }
}

/// The keyring file changed but could not be used (damaged, written under another store key,
/// dropping a key in use); the keys in use stay.
pub struct StoreKeyringReloadFailed<'a> {
    pub error: &'a crate::store::StoreError,
}
impl StoreKeyringReloadFailed<'_> {
    pub fn emit(self) {
        bump(&COUNTERS.store_keyring_reload_failures);
        tracing::warn!(error = %self.error, "store keyring not reloaded; the keys in use stay");
    }
}

/// The store was reopened and wrote again: the fault episode is over.
pub struct StoreRecovered {
    pub attempts: u32,
    pub down_secs: u64,
}
impl StoreRecovered {
    pub fn emit(self) {
        bump(&COUNTERS.store_recoveries);
        tracing::warn!(
            attempts = self.attempts,
            down_secs = self.down_secs,
            "store reopened and writing again; taking readings again"
        );
    }
}

/// A record that does not open or decode was moved to `quarantine`.
pub struct RecordQuarantined {
    pub tree: &'static str,
    pub seq: Option<u64>,
    pub size: usize,
    pub reason: &'static str,
}
impl RecordQuarantined {
    pub fn emit(self) {
        bump(&COUNTERS.store_records_quarantined);
        tracing::warn!(
            tree = self.tree,
            seq = self.seq,
            size = self.size,
            reason = self.reason,
            "corrupt store record moved to quarantine; raw bytes kept"
        );
        audit::record_with(|| AuditEvent::Quarantined {
            tree: self.tree,
            seq: self.seq,
            reason: self.reason,
        });
    }
}

/// An `index` entry points at a pending record that holds another id.
pub struct IndexMismatch {
    pub seq: u64,
}
impl IndexMismatch {
    pub fn emit(self) {
        bump(&COUNTERS.store_index_mismatches);
        tracing::warn!(
            seq = self.seq,
            "store index entry points at a record with another id; record left pending"
        );
    }
}

/// The store's open removed snapshot files sled left unfinished
/// (`store::outbox::remove_unfinished_snapshots`).
pub struct UnfinishedSnapshotRemoved<'a> {
    pub store: &'a std::path::Path,
    pub files: usize,
}
impl UnfinishedSnapshotRemoved<'_> {
    pub fn emit(self) {
        bump(&COUNTERS.store_unfinished_snapshots_removed);
        tracing::warn!(
            store = %self.store.display(),
            files = self.files,
            "removed an unfinished sled snapshot (a snapshot write had failed or was cut short); \
             sled reads its log instead, nothing is lost"
        );
    }
}

/// The store's pressure level changed (see [`crate::store::pressure`]): the 80% and 90%
/// alarms, and the all-clear below 70%.
pub struct StorePressureChanged {
    pub from: crate::store::pressure::Level,
    pub to: crate::store::pressure::Level,
    pub held_bytes: u64,
    pub max_bytes: u64,
    pub percent: u64,
}
impl StorePressureChanged {
    pub fn emit(self) {
        use crate::store::pressure::Level;
        let (from, to) = (self.from.as_str(), self.to.as_str());
        let (held, max, pct) = (self.held_bytes, self.max_bytes, self.percent);
        match self.to {
            Level::Critical => {
                bump(&COUNTERS.store_pressure_critical);
                tracing::error!(from, to, held_bytes = held, max_bytes = max, percent = pct, "ALARM store pressure critical: store at 90% or more of store.max_bytes; not taking readings from sources (they keep them) until the uplink drains it");
            }
            Level::High if self.from == Level::Normal => {
                bump(&COUNTERS.store_pressure_high);
                tracing::warn!(from, to, held_bytes = held, max_bytes = max, percent = pct, "ALARM store pressure high: store at 80% or more of store.max_bytes; not taking readings from sources (they keep them) until the uplink drains it below 70%");
            }
            Level::High => {
                tracing::warn!(
                    from,
                    to,
                    held_bytes = held,
                    max_bytes = max,
                    percent = pct,
                    "store pressure back to high (below 90%); still not taking readings"
                );
            }
            Level::Normal => {
                bump(&COUNTERS.store_pressure_resumed);
                tracing::info!(
                    from,
                    to,
                    held_bytes = held,
                    max_bytes = max,
                    percent = pct,
                    "store pressure normal: taking readings again"
                );
            }
        }
    }
}

/// The store's files were damaged on open: the directory was moved to quarantine and a fresh
/// store started. The readings in it are not lost: `vitalgate store salvage PATH` recovers
/// every record that still authenticates.
pub struct StoreQuarantinedOnOpen<'a> {
    pub path: &'a std::path::Path,
    pub cause: &'a str,
}
impl StoreQuarantinedOnOpen<'_> {
    pub fn emit(self) {
        bump(&COUNTERS.store_quarantined_on_open);
        tracing::error!(
            quarantined = %self.path.display(),
            cause = self.cause,
            "ALARM store damaged: moved aside (not deleted) and started with an empty store; recover its readings with `vitalgate store salvage {}`",
            self.path.display()
        );
        audit::record_with(|| AuditEvent::StoreQuarantined {
            path: self.path.display().to_string(),
            cause: self.cause.to_string(),
        });
    }
}

/// Measuring the store's size on disk or the free space failed (the gauges keep their last
/// value; back-pressure does not depend on them).
pub struct StoreUsageProbeFailed<'a> {
    pub error: &'a crate::store::StoreError,
}
impl StoreUsageProbeFailed<'_> {
    pub fn emit(self) {
        bump(&COUNTERS.store_usage_probe_failures);
        tracing::warn!(error = %self.error, "could not measure the store's disk usage");
    }
}

// ---- uplink ----

/// A transaction Bundle goes out (debug level: one per upload attempt).
pub struct BundleSent<'a> {
    /// The Bundle's JSON (read into a value only for an observer).
    pub json: &'a [u8],
    pub entries: usize,
    /// The readings it carries (the audit log's `sent`: the ledger's "in flight").
    pub readings: &'a [Reading],
}
impl BundleSent<'_> {
    pub fn emit(self) {
        bump(&COUNTERS.uplink_bundles_sent);
        audit::record_sent(self.readings.iter().map(|r| &r.id));
        tracing::debug!(entries = self.entries, "sending transaction Bundle");
        notify(|| AgentEvent::BundleSent {
            bundle: serde_json::from_slice(self.json).unwrap_or(serde_json::Value::Null),
        });
    }
}

pub struct UplinkAccepted<'a> {
    pub reading_id: &'a ReadingId,
    pub created: bool,
    pub location: Option<&'a str>,
}
impl UplinkAccepted<'_> {
    pub fn emit(self) {
        bump(&COUNTERS.uplink_accepted);
        health::uplink(UplinkState::Ok);
        if let Some(end) = episodes::with(|e| e.success("uplink", std::time::Instant::now())) {
            if end.failures > 1 {
                tracing::info!(
                    failures = end.failures,
                    lasted_s = end.lasted.as_secs(),
                    "uploads work again"
                );
            }
        }
        tracing::info!(
            reading = %self.reading_id.short(),
            created = self.created,
            "reading accepted by FHIR server"
        );
        audit::record_with(|| {
            let (resource, version) = self.location.map_or((None, None), audit::split_location);
            AuditEvent::Delivered {
                reading: Id(*self.reading_id),
                created: self.created,
                resource,
                version,
            }
        });
        notify(|| AgentEvent::Accepted {
            reading_id: *self.reading_id,
            location: self.location.map(str::to_string),
            created: self.created,
        });
    }
}

/// The server answered, but not with a confirmation (a transient status such as 503, or a 2xx
/// that confirms nothing); the same readings go again after `after_ms`.
pub struct UplinkRetry<'a> {
    pub reason: &'a RetryReason,
    pub after_ms: u64,
}
impl UplinkRetry<'_> {
    pub fn emit(self) {
        bump(&COUNTERS.uplink_retries);
        health::uplink(UplinkState::Retrying {
            reason: self.reason.to_string(),
        });
        // One line per episode (plus a reminder every 10 minutes), not one per attempt.
        if let Some(failures) = uplink_episode("not_confirmed") {
            tracing::warn!(reason = %self.reason, retry_in_ms = self.after_ms, failures, "upload not confirmed, will retry");
        }
        audit::record_with(|| AuditEvent::NotConfirmed {
            status: match self.reason {
                RetryReason::Status(s) | RetryReason::Unconfirmed { status: s, .. } => *s,
            },
        });
        notify(|| AgentEvent::UplinkRetry {
            reason: self.reason.to_string(),
            after_ms: self.after_ms,
        });
    }
}

/// A request body went out: `bytes` on the wire (after compression), `gzip` or plain.
pub struct UplinkBodySent {
    pub bytes: usize,
    pub plain_bytes: usize,
    pub gzip: bool,
}
impl UplinkBodySent {
    pub fn emit(self) {
        bump_by(&COUNTERS.uplink_body_bytes_sent, self.bytes);
        tracing::debug!(
            bytes = self.bytes,
            plain_bytes = self.plain_bytes,
            gzip = self.gzip,
            "request body sent"
        );
    }
}

/// The server answered 415 to a gzip-compressed body: bodies go plain from now on (until the
/// daemon restarts).
/// Uploads wait for an upload window or the next day's byte budget (metered links). Emitted
/// once when a hold begins (or its reason changes); [`UplinkHoldEnded`] when Bundles go again.
pub struct UplinkHeld<'a> {
    pub hold: &'a crate::uplink::metering::Hold,
}
impl UplinkHeld<'_> {
    pub fn emit(self) {
        use crate::uplink::metering::Hold;
        bump(&COUNTERS.uplink_holds);
        let until = self.hold.until().format("%Y-%m-%d %H:%M").to_string();
        let reason = match self.hold {
            Hold::OutsideWindow { .. } => {
                format!("outside uplink.upload_windows until {until} (local time)")
            }
            Hold::BudgetSpent { used, budget, .. } => format!(
                "uplink.daily_byte_budget spent ({used} of {budget} bytes) until {until} (local time)"
            ),
        };
        tracing::info!(class = self.hold.class(), until = %until, "uploads held: {reason}; every reading stays pending");
        health::uplink(UplinkState::Held { reason });
    }
}

/// A hold ([`UplinkHeld`]) ended: Bundles go again.
pub struct UplinkHoldEnded;
impl UplinkHoldEnded {
    pub fn emit(self) {
        tracing::info!("uploads resume (upload window open, byte budget left)");
    }
}

/// The day's byte count could not be written beside the store: a restart today would count
/// the day from zero again (the budget could be exceeded once; no reading is affected).
pub struct UplinkLedgerUnwritable<'a> {
    pub path: &'a std::path::Path,
    pub error: &'a std::io::Error,
}
impl UplinkLedgerUnwritable<'_> {
    pub fn emit(self) {
        bump(&COUNTERS.uplink_ledger_write_failures);
        tracing::warn!(path = %self.path.display(), error = %self.error, "cannot record the day's upload bytes; after a restart today the byte budget would start again from zero");
    }
}

pub struct UplinkGzipRefused;
impl UplinkGzipRefused {
    pub fn emit(self) {
        bump(&COUNTERS.uplink_gzip_refused);
        tracing::warn!(
            hint = "the FHIR server does not accept Content-Encoding: gzip; enabling it saves most of the bytes on metered links",
            "the FHIR server refused a gzip-compressed body (415): sending plain bodies from now on"
        );
    }
}

/// A changed client certificate and key loaded: the uplink handshakes with them from now on.
pub struct UplinkClientCertInUse<'a> {
    pub path: &'a std::path::Path,
    pub not_after: Option<chrono::DateTime<chrono::Utc>>,
}
impl UplinkClientCertInUse<'_> {
    pub fn emit(self) {
        bump(&COUNTERS.uplink_client_cert_rotations);
        let not_after = self
            .not_after
            .map_or_else(|| "unknown".to_string(), |t| t.to_rfc3339());
        tracing::info!(
            path = %self.path.display(),
            %not_after,
            "new uplink client certificate in use"
        );
    }
}

/// The changed client certificate or key does not load: the one in use stays. No PHI (paths
/// and the TLS setup reason).
pub struct UplinkClientCertReloadFailed<'a> {
    pub error: &'a crate::uplink::client::UplinkError,
}
impl UplinkClientCertReloadFailed<'_> {
    pub fn emit(self) {
        bump(&COUNTERS.uplink_client_cert_reload_failures);
        tracing::warn!(
            error = %self.error,
            hint = "install the certificate and its key together (write to a temporary file, chmod 600 the key, rename over); it is tried again when the files change",
            "the changed uplink client certificate or key does not load: keeping the certificate in use"
        );
    }
}

/// A changed `uplink.oauth2.key_file` loaded: it signs the client assertions from now on.
pub struct UplinkOAuthKeyInUse<'a> {
    pub path: &'a std::path::Path,
}
impl UplinkOAuthKeyInUse<'_> {
    pub fn emit(self) {
        bump(&COUNTERS.uplink_oauth_key_rotations);
        tracing::info!(path = %self.path.display(), "new OAuth client key in use");
    }
}

/// The changed OAuth key file does not load: the key in use stays. No secret (the path and
/// why the key was refused).
pub struct UplinkOAuthKeyReloadFailed<'a> {
    pub error: &'a crate::uplink::oauth::OAuthSetupError,
}
impl UplinkOAuthKeyReloadFailed<'_> {
    pub fn emit(self) {
        bump(&COUNTERS.uplink_oauth_key_reload_failures);
        tracing::warn!(
            error = %self.error,
            hint = "write the new key to a temporary file, chmod 600, rename it over key_file; register its public key with the authorization server first; it is tried again when the file changes",
            "the changed OAuth client key does not load: keeping the key in use"
        );
    }
}

/// The OAuth token endpoint was read from the FHIR server's `.well-known/smart-configuration`
/// (no `uplink.oauth2.token_url`). Its lists that do not name what the gateway uses are
/// warnings: the token endpoint has the last word. No secret, no PHI (a URL).
pub struct UplinkTokenEndpointDiscovered<'a> {
    pub endpoint: &'a url::Url,
    pub doubts: &'a [String],
}
impl UplinkTokenEndpointDiscovered<'_> {
    pub fn emit(self) {
        bump(&COUNTERS.uplink_token_endpoint_discoveries);
        tracing::info!(
            endpoint = %self.endpoint,
            "OAuth token endpoint discovered from the FHIR server's SMART configuration"
        );
        for doubt in self.doubts {
            tracing::warn!(
                endpoint = %self.endpoint,
                doubt = %doubt,
                hint = "the gateway signs a private_key_jwt client assertion (uplink.oauth2.algorithm) for the client_credentials grant; if the token endpoint refuses it, check the server's SMART Backend Services support",
                "the FHIR server's SMART configuration may not support what the gateway uses"
            );
        }
    }
}

/// An OAuth access token was obtained (`[uplink.oauth2]`). Never the token itself.
pub struct UplinkTokenFetched {
    pub lifetime_secs: u64,
}
impl UplinkTokenFetched {
    pub fn emit(self) {
        bump(&COUNTERS.uplink_tokens_fetched);
        tracing::debug!(
            lifetime_secs = self.lifetime_secs,
            "OAuth access token obtained"
        );
    }
}

/// The OAuth token endpoint gave no token (refused, unusable answer, unreachable). Debug level:
/// the uploader logs the failure once per episode (a pause alarm or a retry line) with its
/// hint. No secrets: statuses and OAuth error codes.
pub struct UplinkTokenRefused<'a> {
    pub problem: &'a crate::uplink::oauth::TokenProblem,
}
impl UplinkTokenRefused<'_> {
    pub fn emit(self) {
        bump(&COUNTERS.uplink_tokens_refused);
        audit::record_with(|| AuditEvent::TokenRefused {
            class: self.problem.class(),
        });
        tracing::debug!(
            class = self.problem.class(),
            problem = %self.problem,
            "no OAuth access token"
        );
    }
}

/// No HTTP answer at all. One log line per class of failure, each with its fix hint; TLS
/// failures are errors (they do not heal by themselves), the others warnings.
pub struct UplinkSendFailed<'a> {
    pub error: &'a SendError,
    pub retry_in_ms: u64,
}
impl UplinkSendFailed<'_> {
    pub fn emit(self) {
        bump(&COUNTERS.uplink_send_failures);
        let (e, hint, retry_in_ms) = (self.error, self.error.hint(), self.retry_in_ms);
        let class = e.class();
        audit::record_with(|| AuditEvent::SendFailed {
            class,
            detail: match e {
                SendError::Tls(problem) => Some(problem.to_string()),
                _ => None,
            },
        });
        health::uplink(UplinkState::Retrying {
            reason: class.to_string(),
        });
        // One line per episode (plus a reminder every 10 minutes, with the count), not one per
        // attempt.
        let failures = uplink_episode(class);
        if let Some(n) = failures.filter(|n| *n > 1) {
            tracing::warn!(class, failures = n, retry_in_ms, "uploads still failing");
        }
        if matches!(e, SendError::Tls(_)) {
            bump(&COUNTERS.uplink_tls_failures);
        }
        match e {
            _ if failures.is_none() => {}
            SendError::Tls(problem) => {
                tracing::error!(class, %problem, hint, retry_in_ms, "TLS with the FHIR server failed");
            }
            SendError::Dns { host } => {
                tracing::warn!(class, %host, hint, retry_in_ms, "cannot resolve the FHIR server's host name");
            }
            SendError::Refused { host, port } => {
                tracing::warn!(class, %host, port, hint, retry_in_ms, "the FHIR server refused the connection");
            }
            SendError::Timeout(limit) => {
                tracing::warn!(
                    class,
                    timeout_ms = limit.as_millis() as u64,
                    hint,
                    retry_in_ms,
                    "the FHIR server did not answer in time"
                );
            }
            SendError::Closed => {
                tracing::warn!(
                    class,
                    hint,
                    retry_in_ms,
                    "the connection closed before the FHIR server answered"
                );
            }
            SendError::Connect(error) => {
                tracing::warn!(class, %error, hint, retry_in_ms, "cannot connect to the FHIR server");
            }
            SendError::Token(problem) => {
                tracing::warn!(class, %problem, hint, retry_in_ms, "no OAuth access token for the FHIR server");
            }
            SendError::ResponseTooLarge
            | SendError::ResponseTooDeep
            | SendError::Redirected { .. }
            | SendError::Other(_) => {
                tracing::warn!(class, error = %e, hint, retry_in_ms, "request to the FHIR server failed");
            }
        }
        notify(|| AgentEvent::UplinkRetry {
            reason: e.to_string(),
            after_ms: retry_in_ms,
        });
    }
}

/// The uplink's failure episode: `Some(failures)` when this failure is to be logged (the first
/// of an episode: 1; a reminder or a new cause: the count so far), `None` when it stays quiet.
fn uplink_episode(cause: &'static str) -> Option<u64> {
    match episodes::with(|e| e.failure_because("uplink", cause, std::time::Instant::now())) {
        Decision::Quiet => None,
        Decision::Log => Some(1),
        Decision::Remind { failures } => Some(failures),
    }
}

/// Uploads are paused: the server refuses the gateway as a whole (401, 403, 404, 405, 406,
/// 415), or rejected `REJECTION_STREAK_LIMIT` readings in a row, each alone. The alarm of a
/// pause episode: emitted once when it begins; [`UplinkResumed`] when it ends.
pub struct UplinkPaused<'a> {
    pub cause: PauseCause,
    pub next_probe_ms: u64,
    /// The failure that started the episode when there was no HTTP answer (a refused token).
    pub error: Option<&'a SendError>,
}
impl UplinkPaused<'_> {
    pub fn emit(self) {
        bump(&COUNTERS.uplink_pauses);
        let not_discovered = matches!(
            self.error,
            Some(SendError::Token(
                crate::uplink::oauth::TokenProblem::NotDiscovered(_)
            ))
        );
        audit::record_with(|| AuditEvent::Refused {
            status: Some(self.cause.status()),
            cause: match self.cause {
                PauseCause::Refused { .. } => "server_refused",
                PauseCause::RejectionStreak { .. } => "rejection_streak",
                PauseCause::TokenRefused => "token_refused",
            },
        });
        health::uplink(UplinkState::Paused {
            reason: match self.cause {
                PauseCause::Refused { status } => {
                    format!("the server refuses this gateway (HTTP {status})")
                }
                PauseCause::RejectionStreak { rejections, .. } => {
                    format!("the server rejected {rejections} readings in a row, each alone")
                }
                PauseCause::TokenRefused if not_discovered => {
                    "no OAuth token endpoint: the FHIR server's SMART configuration names none"
                        .to_string()
                }
                PauseCause::TokenRefused => {
                    "the OAuth token endpoint refuses this gateway's credentials".to_string()
                }
            },
        });
        let next_probe_in_ms = self.next_probe_ms;
        match self.cause {
            PauseCause::Refused { status } => {
                let hint = refusal_hint(status);
                tracing::error!(alarm = "uplink_paused", status, hint, next_probe_in_ms, "ALARM: the FHIR server refuses this gateway; uploads paused, every reading kept pending");
            }
            PauseCause::RejectionStreak {
                rejections,
                last_status,
            } => {
                tracing::error!(alarm = "uplink_paused", status = last_status, rejections, hint = "the server's validation rejects every reading: check its profiles and terminology, and the dead letters (`vitalgate dead-letters`; requeue them once fixed)", next_probe_in_ms, "ALARM: the FHIR server rejected every reading sent alone; taken as server-wide: uploads paused, no more dead letters");
            }
            PauseCause::TokenRefused => {
                let problem = self.error.map_or_else(String::new, ToString::to_string);
                let hint = self.error.map_or(
                    "check [uplink.oauth2] against the gateway's registration on the authorization server",
                    SendError::hint,
                );
                if not_discovered {
                    tracing::error!(alarm = "uplink_paused", %problem, hint, next_probe_in_ms, "ALARM: no OAuth token endpoint (uplink.oauth2.token_url is not set and the FHIR server's SMART configuration names none); uploads paused, every reading kept pending");
                } else {
                    tracing::error!(alarm = "uplink_paused", %problem, hint, next_probe_in_ms, "ALARM: the OAuth token endpoint refuses this gateway's credentials; uploads paused, every reading kept pending");
                }
            }
        }
        notify(|| AgentEvent::UplinkPaused {
            status: self.cause.status(),
        });
    }
}

fn refusal_hint(status: u16) -> &'static str {
    match status {
        401 => "the server does not accept the gateway's credentials: check uplink.client_cert and the server's access policy for this gateway (with [uplink.oauth2]: a fresh token was refused too; check uplink.oauth2.scope and that the server trusts the authorization server)",
        403 => "the gateway is not authorised on the server: check the server's access policy for this gateway's certificate",
        404 => "no FHIR endpoint at uplink.fhir_base: check the base URL (transactions go to [base] itself)",
        405 => "the server does not accept POST at uplink.fhir_base: check the base URL",
        406 | 415 => "the server does not accept application/fhir+json at uplink.fhir_base: check the URL and the server's FHIR version",
        _ => "check uplink.fhir_base and the gateway's authorisation on the server",
    }
}

/// A probe during a pause was refused again (debug level: the episode already raised its
/// alarm).
pub struct UplinkProbeFailed {
    pub probes: u32,
    pub next_probe_ms: u64,
}
impl UplinkProbeFailed {
    pub fn emit(self) {
        bump(&COUNTERS.uplink_probes_failed);
        audit::record_with(|| AuditEvent::Refused {
            status: None,
            cause: "probe_refused",
        });
        tracing::debug!(
            probes = self.probes,
            next_probe_in_ms = self.next_probe_ms,
            "uploads still paused"
        );
    }
}

/// A pause episode ended: a Bundle was delivered again.
pub struct UplinkResumed {
    pub cause: PauseCause,
    pub paused_for_ms: u64,
    pub probes: u32,
}
impl UplinkResumed {
    pub fn emit(self) {
        bump(&COUNTERS.uplink_resumes);
        health::uplink(UplinkState::Ok);
        tracing::warn!(
            alarm_cleared = "uplink_paused",
            status = self.cause.status(),
            paused_for_secs = self.paused_for_ms / 1000,
            probes = self.probes,
            "FHIR server accepts uploads again; pause ended"
        );
        notify(|| AgentEvent::UplinkResumed {
            status: self.cause.status(),
            paused_for_ms: self.paused_for_ms,
        });
    }
}

/// A reading rejected alone (by the server, or because it cannot be mapped to FHIR) was moved
/// to the dead letters. The reason (an OperationOutcome summary, which may quote values) is kept
/// in the sealed dead letter and given to the observer, never logged.
pub struct UplinkDeadLettered<'a> {
    pub reading_id: &'a ReadingId,
    /// The HTTP status, `None` when the reading could not be mapped (nothing was sent).
    pub status: Option<u16>,
    pub reason: &'a str,
}
impl UplinkDeadLettered<'_> {
    pub fn emit(self) {
        bump(&COUNTERS.uplink_dead_lettered);
        bump(&COUNTERS.readings_dead_lettered);
        // The reason text (an OperationOutcome summary) may quote values: a code only.
        audit::record_with(|| AuditEvent::DeadLettered {
            reading: Id(*self.reading_id),
            reason: if self.status.is_some() {
                "rejected"
            } else {
                "unmappable"
            },
            status: self.status,
        });
        match self.status {
            Some(status) => tracing::error!(
                reading = %self.reading_id.short(),
                status,
                "FHIR server rejected a reading sent alone; kept as dead letter, needs a technician"
            ),
            None => tracing::error!(
                reading = %self.reading_id.short(),
                "reading cannot be mapped to FHIR; kept as dead letter, needs a technician"
            ),
        }
        notify(|| AgentEvent::DeadLettered {
            reading_id: *self.reading_id,
            reason: self.reason.to_string(),
        });
    }
}

// ---- sources ----

/// A broker connection is up (CONNACK accepted).
pub struct MqttConnected {
    pub session_present: bool,
}
impl MqttConnected {
    pub fn emit(self) {
        bump(&COUNTERS.mqtt_connects);
        health::mqtt_link(true);
        match episodes::with(|e| e.success("mqtt", std::time::Instant::now())) {
            Some(end) if end.failures > 1 => tracing::info!(
                session_present = self.session_present,
                failures = end.failures,
                lasted_s = end.lasted.as_secs(),
                "MQTT connected"
            ),
            _ => tracing::info!(session_present = self.session_present, "MQTT connected"),
        }
    }
}

/// The connection failed or dropped; the source reconnects after `retry_in_ms`.
pub struct MqttConnectionError<'a> {
    pub error: &'a dyn Display,
    pub retry_in_ms: u64,
    /// What a technician can do, when the error type says so.
    pub hint: Option<&'static str>,
}
impl MqttConnectionError<'_> {
    pub fn emit(self) {
        bump(&COUNTERS.mqtt_connection_errors);
        health::mqtt_link(false);
        // One line per episode (plus a reminder every 10 minutes), not one per reconnect.
        let failures = match episodes::with(|e| e.failure("mqtt", std::time::Instant::now())) {
            Decision::Quiet => return,
            Decision::Log => 1,
            Decision::Remind { failures } => failures,
        };
        match self.hint {
            Some(hint) => {
                tracing::error!(error = %self.error, retry_in_ms = self.retry_in_ms, failures, hint, "MQTT connection error")
            }
            None => {
                tracing::warn!(error = %self.error, retry_in_ms = self.retry_in_ms, failures, "MQTT connection error")
            }
        }
    }
}

/// A device transport's link came up or went down (BLE connection, serial port).
pub struct DeviceLink<'a> {
    pub device: &'a str,
    pub up: bool,
    pub reason: Option<&'a dyn Display>,
}
impl DeviceLink<'_> {
    pub fn emit(self) {
        health::device_link(self.device, self.up);
        match (self.up, self.reason) {
            (true, _) => tracing::info!(device = %self.device, "device connected"),
            (false, Some(r)) => {
                tracing::warn!(device = %self.device, reason = %r, "device disconnected")
            }
            (false, None) => tracing::info!(device = %self.device, "device disconnected"),
        }
    }
}

/// Every SUBACK of a connection's subscription round is in. Refused filters (broker ACLs) are
/// named by device (config names, never topics or patients) and counted.
pub struct MqttSubscriptionsAcknowledged<'a> {
    pub granted: usize,
    pub refused: &'a [&'a str],
}
impl MqttSubscriptionsAcknowledged<'_> {
    pub fn emit(self) {
        bump_by(&COUNTERS.mqtt_subscriptions_refused, self.refused.len());
        if self.refused.is_empty() {
            tracing::info!(
                granted = self.granted,
                refused = 0,
                "MQTT subscriptions acknowledged"
            );
        } else {
            const NAMED: usize = 10;
            let mut devices = self.refused[..self.refused.len().min(NAMED)].join(",");
            if self.refused.len() > NAMED {
                devices.push_str(",...");
            }
            tracing::error!(
                granted = self.granted,
                refused = self.refused.len(),
                devices = %devices,
                "MQTT subscriptions acknowledged, but the broker REFUSED some: their devices receive nothing (check the broker's ACLs)"
            );
        }
    }
}

/// A reload changed the MQTT devices and the running source took the new table in place (no
/// reconnect, so nothing is redelivered). Counts only: no topics, no patients.
pub struct MqttRebound {
    pub topics: usize,
    pub new_filters: usize,
}
impl MqttRebound {
    pub fn emit(self) {
        tracing::info!(
            topics = self.topics,
            new_filters = self.new_filters,
            "MQTT devices rebound in place (no reconnect)"
        );
    }
}

/// A PUBACK was written to the broker connection (debug level: one per message).
pub struct MqttAckSent {
    pub pkid: u16,
}
impl MqttAckSent {
    pub fn emit(self) {
        bump(&COUNTERS.mqtt_acks_sent);
        tracing::debug!(pkid = self.pkid, "MQTT PUBACK sent");
    }
}

/// A connection ended with acknowledgements still owed on it. Its packet ids mean nothing on
/// the next connection, so they are dropped; the broker redelivers those messages, which the
/// pipeline recognises as duplicates and the source acknowledges on the new connection.
pub struct MqttAcksDropped {
    pub count: usize,
}
impl MqttAcksDropped {
    pub fn emit(self) {
        bump_by(&COUNTERS.mqtt_acks_dropped, self.count);
        tracing::info!(
            count = self.count,
            "MQTT connection lost with acknowledgements owed; the broker redelivers those messages"
        );
    }
}

/// The pipeline could not make a message durable: nothing from it on is acknowledged, and the
/// source reconnects so that the broker redelivers.
pub struct MqttNotDurable {
    pub retry_in_ms: u64,
}
impl MqttNotDurable {
    pub fn emit(self) {
        bump(&COUNTERS.mqtt_not_durable_reconnects);
        tracing::error!(
            retry_in_ms = self.retry_in_ms,
            "reading not durable; MQTT message left unacknowledged, reconnecting for redelivery"
        );
    }
}

/// The broker sent more unacknowledged messages than the source holds: it ignores its inflight
/// window (mosquitto 2.0.11 was seen sending 1,700 to one client, max_inflight_messages 20).
/// The source takes nothing more on this connection; once what it took is durable and
/// acknowledged it reconnects and the broker redelivers the rest. Nothing is lost, nothing is
/// buffered without bound.
pub struct MqttWindowOverrun {
    pub held: usize,
    pub held_bytes: usize,
    /// Messages of the connection not yet acknowledged.
    pub owed: usize,
}
impl MqttWindowOverrun {
    pub fn emit(self) {
        bump(&COUNTERS.mqtt_window_overruns);
        tracing::warn!(
            held = self.held,
            held_bytes = self.held_bytes,
            owed = self.owed,
            "MQTT broker exceeded its inflight window; taking no more until what it sent is durable, then reconnecting for the rest"
        );
    }
}

/// A QoS 0 message arrived while the source's queue to the pipeline was full. QoS 0 is "at most
/// once" (the broker itself drops such messages under load): it is dropped, counted, logged.
pub struct MqttQos0Dropped {
    pub bytes: usize,
}
impl MqttQos0Dropped {
    pub fn emit(self) {
        bump(&COUNTERS.mqtt_qos0_dropped);
        tracing::warn!(
            bytes = self.bytes,
            "QoS 0 MQTT message dropped: ingest queue full (publish with QoS 1 to be sure of delivery)"
        );
    }
}

/// A payload larger than any data point: kept as a dead letter without being decoded.
pub struct MqttPayloadOversized<'a> {
    pub device: &'a str,
    pub bytes: usize,
    pub limit: usize,
}
impl MqttPayloadOversized<'_> {
    pub fn emit(self) {
        bump(&COUNTERS.mqtt_payloads_oversized);
        tracing::warn!(
            device = %self.device,
            bytes = self.bytes,
            limit = self.limit,
            "oversized MQTT payload kept as dead letter (not decoded)"
        );
    }
}

// ---- serial transport ----
//
// Serial events carry the device name and the port path (neither is PHI), never bytes, lines or
// values. Conditions that repeat while they last (a port that stays absent, a store that keeps
// refusing) are logged once per episode: the caller says whether this is the episode's first.

/// A serial port was opened (first time, or after it was lost).
pub struct SerialPortOpened<'a> {
    pub device: &'a str,
    pub port: &'a std::path::Path,
    pub settings: &'a dyn Display,
    /// Time since the port was lost or first tried, when this ends an episode of failures.
    pub after: Option<std::time::Duration>,
}
impl SerialPortOpened<'_> {
    pub fn emit(self) {
        bump(&COUNTERS.serial_port_opens);
        health::device_link(self.device, true);
        match self.after {
            None => {
                tracing::info!(device = %self.device, port = %self.port.display(), settings = %self.settings, "serial port opened")
            }
            Some(d) => {
                tracing::info!(device = %self.device, port = %self.port.display(), settings = %self.settings, unavailable_ms = d.as_millis() as u64, "serial port opened again")
            }
        }
    }
}

/// An attempt to open a serial port failed. Logged at warn (error for a permission problem,
/// with the fix) on the first failure of an episode, at debug after that.
pub struct SerialOpenFailed<'a> {
    pub device: &'a str,
    pub port: &'a std::path::Path,
    pub reason: &'a dyn Display,
    /// Permission denied: the message names the fix.
    pub permission: bool,
    pub first: bool,
    pub retry_in: std::time::Duration,
}
impl SerialOpenFailed<'_> {
    pub fn emit(self) {
        bump(&COUNTERS.serial_port_open_failures);
        let retry_in_ms = self.retry_in.as_millis() as u64;
        match (self.first, self.permission) {
            (true, true) => {
                tracing::error!(device = %self.device, port = %self.port.display(), "{}; retrying until it can", self.reason)
            }
            (true, false) => {
                tracing::warn!(device = %self.device, port = %self.port.display(), reason = %self.reason, retry_in_ms, "serial port cannot be opened; retrying (logged once until it opens)")
            }
            (false, _) => {
                tracing::debug!(device = %self.device, port = %self.port.display(), reason = %self.reason, retry_in_ms, "serial port still cannot be opened")
            }
        }
    }
}

/// An open port stopped working (unplugged, hung up, I/O error): it is closed and reopened.
pub struct SerialPortLost<'a> {
    pub device: &'a str,
    pub port: &'a std::path::Path,
    pub reason: &'a dyn Display,
}
impl SerialPortLost<'_> {
    pub fn emit(self) {
        bump(&COUNTERS.serial_port_losses);
        health::device_link(self.device, false);
        tracing::warn!(device = %self.device, port = %self.port.display(), reason = %self.reason, "serial port lost (unplugged?); reopening with backoff");
    }
}

/// No record from a device for its `silence_alarm_secs`: an alarm (once per silence).
pub struct SerialDeviceSilent<'a> {
    pub device: &'a str,
    pub port: &'a std::path::Path,
    pub silent_for: std::time::Duration,
    pub port_open: bool,
    /// Bytes and decode errors during the silence: bytes without records point at wrong port
    /// settings or protocol, no bytes at a device that is off, unplugged or not sending.
    pub bytes: u64,
    pub decode_errors: u64,
}
impl SerialDeviceSilent<'_> {
    pub fn emit(self) {
        bump(&COUNTERS.serial_silence_alarms);
        let hint = if !self.port_open {
            "the port is not open (see the lines above)"
        } else if self.bytes > 0 {
            "bytes arrive but decode to nothing: check baud, parity, data bits and the protocol (vitalgate decode on a capture)"
        } else {
            "no bytes at all: is the device on, connected, and set to send (e.g. Masimo serial mode ASCII 1)?"
        };
        tracing::error!(
            alarm = "serial_device_silent",
            device = %self.device,
            port = %self.port.display(),
            silent_s = self.silent_for.as_secs(),
            bytes = self.bytes,
            decode_errors = self.decode_errors,
            "ALARM: no data from serial device; {hint}"
        );
    }
}

/// Records arrive again after a silence alarm.
pub struct SerialDataResumed<'a> {
    pub device: &'a str,
    pub silent_for: std::time::Duration,
}
impl SerialDataResumed<'_> {
    pub fn emit(self) {
        tracing::info!(device = %self.device, silent_s = self.silent_for.as_secs(), "serial device sends data again");
    }
}

/// What one read brought (trace level; the counters add up).
pub struct SerialBytesDecoded<'a> {
    pub device: &'a str,
    pub bytes: u64,
    pub discarded: u64,
    pub records: u64,
    pub decode_errors: u64,
}
impl SerialBytesDecoded<'_> {
    pub fn emit(self) {
        add(&COUNTERS.serial_bytes_read, self.bytes);
        add(&COUNTERS.serial_bytes_discarded, self.discarded);
        add(&COUNTERS.serial_records_decoded, self.records);
        add(&COUNTERS.serial_decode_errors, self.decode_errors);
        if self.decode_errors > 0 {
            tracing::debug!(device = %self.device, bytes = self.bytes, decode_errors = self.decode_errors, "serial bytes rejected by the decoder");
        }
        tracing::trace!(device = %self.device, bytes = self.bytes, records = self.records, "serial read");
    }
}

/// What the stream reduction did with a batch of records (trace level; the counters add up).
/// Plain numbers: telemetry does not know the pipeline's types.
pub struct StreamReduced<'a> {
    pub device: &'a str,
    pub invalid_status: u64,
    pub no_value: u64,
    pub reduced_away: u64,
    pub out: u64,
    pub windows_insufficient: u64,
    pub windows_partial: u64,
}
impl StreamReduced<'_> {
    pub fn emit(self) {
        add(&COUNTERS.serial_records_invalid_status, self.invalid_status);
        add(&COUNTERS.serial_records_no_value, self.no_value);
        add(&COUNTERS.serial_records_reduced_away, self.reduced_away);
        add(&COUNTERS.serial_readings_reduced_out, self.out);
        add(
            &COUNTERS.serial_windows_insufficient,
            self.windows_insufficient,
        );
        add(&COUNTERS.serial_windows_partial, self.windows_partial);
        if self.windows_insufficient > 0 {
            tracing::debug!(device = %self.device, "a reduction window had too few valid samples; nothing sent for it");
        }
        tracing::trace!(device = %self.device, out = self.out, "stream reduced");
    }
}

/// The store did not take a reduced reading (full, failing): it is held in memory and retried.
pub struct SerialStoreRefused<'a> {
    pub device: &'a str,
    pub held: usize,
    pub first: bool,
    pub retry_in: std::time::Duration,
}
impl SerialStoreRefused<'_> {
    pub fn emit(self) {
        bump(&COUNTERS.serial_store_refusals);
        let retry_in_ms = self.retry_in.as_millis() as u64;
        if self.first {
            tracing::error!(device = %self.device, held = self.held, retry_in_ms, "store refuses writes: reduced readings are held in memory (bounded) and retried; the raw stream is never buffered");
        } else {
            tracing::debug!(device = %self.device, held = self.held, retry_in_ms, "store still refuses writes");
        }
    }
}

/// The in-memory buffer of reduced readings was full: the oldest were dropped, counted.
pub struct SerialReadingsDropped<'a> {
    pub device: &'a str,
    pub dropped: u64,
    pub first: bool,
}
impl SerialReadingsDropped<'_> {
    pub fn emit(self) {
        add(&COUNTERS.serial_readings_dropped, self.dropped);
        if self.first {
            tracing::error!(device = %self.device, dropped = self.dropped, "reduced-reading buffer full while the store refuses writes: oldest readings dropped (counted in serial_readings_dropped)");
        }
    }
}

// ---- supervision ----

/// A task the daemon cannot run without ended or panicked.
pub struct TaskFailed<'a> {
    pub task: &'a str,
    pub error: &'a dyn Display,
}
impl TaskFailed<'_> {
    pub fn emit(self) {
        bump(&COUNTERS.tasks_failed);
        tracing::error!(task = %self.task, error = %self.error, "task failed");
    }
}

/// A monitored task stopped making progress: the watchdog stops pinging systemd.
pub struct TaskStalled<'a> {
    pub task: &'a str,
    pub silent_ms: u64,
    /// Whether systemd's watchdog is armed (it will restart the agent).
    pub watchdog: bool,
}
impl TaskStalled<'_> {
    pub fn emit(self) {
        bump(&COUNTERS.tasks_stalled);
        if self.watchdog {
            tracing::error!(task = %self.task, silent_ms = self.silent_ms, "task makes no progress; watchdog pings stopped, systemd will restart the agent");
        } else {
            tracing::error!(task = %self.task, silent_ms = self.silent_ms, "task makes no progress (no systemd watchdog armed)");
        }
    }
}

/// A stalled task makes progress again.
pub struct TaskRecovered<'a> {
    pub task: &'a str,
}
impl TaskRecovered<'_> {
    pub fn emit(self) {
        tracing::warn!(task = %self.task, "task makes progress again; watchdog pings resume");
    }
}

// ---- operations ----

/// An alarm was raised or cleared: one journal line with `ALARM=<kind>` as a field.
pub struct AlarmChanged<'a> {
    pub event: &'a AlarmEvent,
}
impl AlarmChanged<'_> {
    pub fn emit(self) {
        let a = &self.event.alarm;
        let device = a.device.as_deref().unwrap_or("");
        match (self.event.state, a.severity) {
            (AlarmState::Raised, Severity::Critical) => {
                bump(&COUNTERS.alarms_raised);
                tracing::error!(
                    alarm = a.kind.as_str(),
                    severity = "critical",
                    device,
                    "ALARM: {}",
                    a.message
                );
            }
            (AlarmState::Raised, Severity::Warning) => {
                bump(&COUNTERS.alarms_raised);
                tracing::warn!(
                    alarm = a.kind.as_str(),
                    severity = "warning",
                    device,
                    "ALARM: {}",
                    a.message
                );
            }
            (AlarmState::Cleared, _) => {
                bump(&COUNTERS.alarms_cleared);
                tracing::info!(
                    alarm = a.kind.as_str(),
                    device,
                    "alarm cleared: {}",
                    a.message
                );
            }
        }
        health::notify_change();
    }
}

/// The configuration was re-read (SIGHUP) and applied.
pub struct ConfigReloaded<'a> {
    pub summary: &'a str,
}
impl ConfigReloaded<'_> {
    pub fn emit(self) {
        bump(&COUNTERS.config_reloads);
        audit::record_with(|| AuditEvent::ConfigReloaded {
            changes: self.summary.to_string(),
        });
        tracing::info!(changes = %self.summary, "configuration reloaded");
    }
}

/// A reload was refused; the running configuration stays. One line, with file:line:col.
pub struct ConfigReloadRefused<'a> {
    pub error: &'a dyn Display,
}
impl ConfigReloadRefused<'_> {
    pub fn emit(self) {
        bump(&COUNTERS.config_reload_failures);
        tracing::error!("reload refused, running configuration kept: {}", self.error);
    }
}

/// The status snapshot could not be written (the first failure of an episode is logged).
pub struct StatusWriteFailed<'a> {
    pub path: &'a std::path::Path,
    pub error: &'a dyn Display,
}
impl StatusWriteFailed<'_> {
    pub fn emit(self) {
        bump(&COUNTERS.status_write_failures);
        if episodes::with(|e| e.failure("status", std::time::Instant::now())) == Decision::Log {
            tracing::warn!(path = %self.path.display(), error = %self.error, "cannot write the status snapshot; `vitalgate status` will not see this daemon");
        }
    }
}

/// A fleet status or alarm could not be published.
pub struct FleetPublishFailed<'a> {
    pub topic: &'a str,
    pub error: &'a dyn Display,
}
impl FleetPublishFailed<'_> {
    pub fn emit(self) {
        bump(&COUNTERS.fleet_publish_failures);
        if episodes::with(|e| e.failure("fleet", std::time::Instant::now())) == Decision::Log {
            tracing::warn!(topic = %self.topic, error = %self.error, "fleet publish failed");
        }
    }
}

// ---- BLE transport ----

/// One advertisement handled by the BLE transport (counted, never logged).
pub fn ble_advertisement() {
    bump(&COUNTERS.ble_advertisements);
}

/// Notification-to-durable latencies of BLE records, microseconds (for the bench; bounded).
static BLE_LATENCY_US: Mutex<Vec<u32>> = Mutex::new(Vec::new());
const BLE_LATENCY_CAP: usize = 100_000;

/// Records how long a BLE record took from its notification to the pipeline's answer.
pub fn ble_durable_latency(d: std::time::Duration) {
    let us = u32::try_from(d.as_micros()).unwrap_or(u32::MAX);
    let mut v = BLE_LATENCY_US
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    if v.len() < BLE_LATENCY_CAP {
        v.push(us);
    }
}

/// `(count, p50_us, p99_us)` of the BLE notification-to-durable latencies so far.
pub fn ble_latency_summary() -> Option<(usize, u32, u32)> {
    let mut v = BLE_LATENCY_US
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    if v.is_empty() {
        return None;
    }
    v.sort_unstable();
    let at = |q: usize| {
        v.get((v.len() * q / 100).min(v.len() - 1))
            .copied()
            .unwrap_or(0)
    };
    Some((v.len(), at(50), at(99)))
}

pub struct BleConnected<'a> {
    pub device: &'a str,
}
impl BleConnected<'_> {
    pub fn emit(self) {
        bump(&COUNTERS.ble_connects);
        tracing::info!(device = %self.device, "BLE device connected");
    }
}

pub struct BleDisconnected<'a> {
    pub device: &'a str,
}
impl BleDisconnected<'_> {
    pub fn emit(self) {
        bump(&COUNTERS.ble_disconnects);
        tracing::info!(device = %self.device, "BLE device disconnected");
    }
}

pub struct BleSessionFailed<'a> {
    pub device: &'a str,
    pub error: &'a dyn Display,
    pub retry_in_ms: u64,
}
impl BleSessionFailed<'_> {
    pub fn emit(self) {
        bump(&COUNTERS.ble_session_failures);
        tracing::warn!(device = %self.device, error = %self.error, retry_in_ms = self.retry_in_ms, "BLE session failed; will reconnect when the device advertises");
    }
}

/// One recovery episode of the adapter / BlueZ (one log line per episode).
pub struct BleRecovery<'a> {
    pub reason: &'a str,
    pub action: &'a str,
    pub error: Option<&'a dyn Display>,
}
impl BleRecovery<'_> {
    pub fn emit(self) {
        bump(&COUNTERS.ble_recoveries);
        match self.error {
            Some(e) => {
                tracing::warn!(reason = %self.reason, action = %self.action, error = %e, "BLE recovery")
            }
            None => tracing::warn!(reason = %self.reason, action = %self.action, "BLE recovery"),
        }
    }
}

pub struct BleWatchdog<'a> {
    pub stage: &'a str,
    pub silent_s: u64,
}
impl BleWatchdog<'_> {
    pub fn emit(self) {
        bump(&COUNTERS.ble_watchdog_actions);
        tracing::warn!(action = %self.stage, silent_s = self.silent_s, "BLE watchdog: adapter event stream silent");
    }
}

pub struct BleWatchdogRecovered<'a> {
    pub stage: &'a str,
}
impl BleWatchdogRecovered<'_> {
    pub fn emit(self) {
        tracing::info!(after = %self.stage, "BLE watchdog: adapter events flow again");
    }
}

pub struct BleIdentityMismatch<'a> {
    pub device: &'a str,
    pub field: &'a str,
}
impl BleIdentityMismatch<'_> {
    pub fn emit(self) {
        bump(&COUNTERS.ble_identity_mismatches);
        tracing::error!(device = %self.device, field = %self.field, "BLE device at the configured address reports another identity; no readings taken from it");
    }
}

/// An advertiser was connected to only to read its Device Information, because devices
/// configured by Device Information (no `address`) are still unlocated.
pub struct BleProbed<'a> {
    pub address: &'a str,
    /// The configured device it turned out to be, if any.
    pub device: Option<&'a str>,
    pub error: Option<&'a dyn Display>,
}
impl BleProbed<'_> {
    pub fn emit(self) {
        bump(&COUNTERS.ble_probes);
        match (self.device, self.error) {
            (Some(device), _) => {
                bump(&COUNTERS.ble_devices_identified);
                tracing::info!(device = %device, address = %self.address, "BLE device identified by its Device Information");
            }
            (None, Some(error)) => {
                tracing::debug!(address = %self.address, error = %error, "BLE advertiser could not be identified");
            }
            (None, None) => {
                tracing::debug!(address = %self.address, "BLE advertiser is not a configured device");
            }
        }
    }
}

pub struct BleBondRequired<'a> {
    pub device: &'a str,
    pub error: &'a dyn Display,
}
impl BleBondRequired<'_> {
    pub fn emit(self) {
        bump(&COUNTERS.ble_bond_required);
        tracing::error!(device = %self.device, error = %self.error, "BLE device requires pairing: run `vitalgate pair <address>` (or set pair_if_bond_lost)");
    }
}

pub struct BlePaired<'a> {
    pub device: &'a str,
}
impl BlePaired<'_> {
    pub fn emit(self) {
        bump(&COUNTERS.ble_pairings);
        tracing::info!(device = %self.device, "BLE device re-paired (bond was lost)");
    }
}

pub struct BleClockSet<'a> {
    pub device: &'a str,
    pub skew_s: Option<i64>,
}
impl BleClockSet<'_> {
    pub fn emit(self) {
        bump(&COUNTERS.ble_clock_sets);
        tracing::info!(device = %self.device, skew_s = ?self.skew_s, "BLE device clock set");
    }
}

pub struct BleClockSetFailed<'a> {
    pub device: &'a str,
    pub error: &'a dyn Display,
}
impl BleClockSetFailed<'_> {
    pub fn emit(self) {
        bump(&COUNTERS.ble_clock_set_failures);
        tracing::warn!(device = %self.device, error = %self.error, "BLE device clock could not be set");
    }
}

pub struct BleClockWentBack<'a> {
    pub device: &'a str,
}
impl BleClockWentBack<'_> {
    pub fn emit(self) {
        bump(&COUNTERS.ble_clock_went_back);
        tracing::warn!(device = %self.device, "BLE device clock is earlier than its last stored reading; time high-water mark cleared");
    }
}

pub struct BleAlreadyIngested<'a> {
    pub device: &'a str,
}
impl BleAlreadyIngested<'_> {
    pub fn emit(self) {
        bump(&COUNTERS.ble_records_already_ingested);
        tracing::debug!(device = %self.device, "BLE record at or below the high-water mark skipped");
    }
}

pub struct BleNotDurable<'a> {
    pub device: &'a str,
}
impl BleNotDurable<'_> {
    pub fn emit(self) {
        bump(&COUNTERS.ble_records_not_durable);
        tracing::error!(device = %self.device, "BLE record not durable; not acknowledged (the device keeps it)");
    }
}

pub struct BleRacpComplete<'a> {
    pub device: &'a str,
    pub received: u32,
}
impl BleRacpComplete<'_> {
    pub fn emit(self) {
        bump(&COUNTERS.ble_racp_downloads);
        tracing::info!(device = %self.device, received = self.received, "BLE stored-record download complete");
    }
}

pub struct BleRacpFailed<'a> {
    pub device: &'a str,
    pub reason: &'a str,
}
impl BleRacpFailed<'_> {
    pub fn emit(self) {
        bump(&COUNTERS.ble_racp_failures);
        tracing::warn!(device = %self.device, reason = %self.reason, "BLE stored-record download incomplete; resumes from the last durable record");
    }
}

pub struct BleRacpDeleted<'a> {
    pub device: &'a str,
    pub records: u32,
}
impl BleRacpDeleted<'_> {
    pub fn emit(self) {
        bump(&COUNTERS.ble_racp_deletes);
        tracing::info!(device = %self.device, records = self.records, "BLE stored records deleted on the device after they were durable");
    }
}

pub struct BleGatewayClockUnsynchronized<'a> {
    pub device: &'a str,
}
impl BleGatewayClockUnsynchronized<'_> {
    pub fn emit(self) {
        if COUNTERS
            .ble_gateway_clock_unsynchronized
            .fetch_add(1, Ordering::Relaxed)
            == 0
        {
            tracing::warn!(device = %self.device, "gateway clock is not NTP-synchronised: BLE readings are marked gateway_clock_unsynchronized and device clocks are not corrected or set");
        }
    }
}

/// The BLE high-water mark file could not be read or opened at start: the transport runs on
/// without the marks (see `sources::ble::cursor::CursorStore::load` for what that does).
pub struct BleCursorUnreadable<'a> {
    pub error: &'a dyn Display,
}
impl BleCursorUnreadable<'_> {
    pub fn emit(self) {
        bump(&COUNTERS.ble_cursor_unreadable);
        tracing::error!(error = %self.error, "BLE high-water marks unreadable; moved aside, starting without them: devices' stored records are downloaded again in full and those already durable are dropped as duplicates (nothing skipped, nothing deleted before it is durable)");
    }
}

pub struct BleCursorSaveFailed<'a> {
    pub error: &'a dyn Display,
}
impl BleCursorSaveFailed<'_> {
    pub fn emit(self) {
        bump(&COUNTERS.ble_cursor_save_failures);
        tracing::error!(error = %self.error, "BLE high-water marks could not be saved (devices may resend; duplicates are still suppressed by content id)");
    }
}

// ---- the audit log itself ----

/// An audit event could not be handed to the audit writer (its channel full): counted, and
/// the writer records a `gap` entry with the number lost. One warning per process.
pub struct AuditEntryDropped {
    /// The first drop since the last `gap` entry.
    pub first: bool,
}
impl AuditEntryDropped {
    pub fn emit(self) {
        let before = COUNTERS
            .audit_entries_dropped
            .fetch_add(1, Ordering::Relaxed);
        if self.first && before == 0 {
            tracing::warn!("audit writer behind: audit entries dropped (counted in audit_entries_dropped; a `gap` entry records how many)");
        }
    }
}

/// The audit log could not be written or synced (full disk, failing card). The entries lost
/// are counted in the next `gap` entry; the writer reopens its file before the next entry.
pub struct AuditWriteFailed<'a> {
    pub error: &'a crate::audit::AuditError,
}
impl AuditWriteFailed<'_> {
    pub fn emit(self) {
        bump(&COUNTERS.audit_write_failures);
        if episodes::with(|e| e.failure("audit", std::time::Instant::now())) == Decision::Log {
            tracing::error!(error = %self.error, "audit log write failed; entries lost are recorded as a gap once it writes again");
        }
    }
}

/// At open, the audit writer cut a torn last line (a power loss while it was written).
pub struct AuditRecovered<'a> {
    pub segment: &'a str,
    pub truncated_bytes: u64,
}
impl AuditRecovered<'_> {
    pub fn emit(self) {
        bump(&COUNTERS.audit_recoveries);
        tracing::warn!(
            segment = %self.segment,
            truncated_bytes = self.truncated_bytes,
            "audit log: torn last line cut (power loss while writing); recorded in the log"
        );
    }
}

/// `[audit] max_bytes` forced the deletion of a segment younger than `ledger_days`: the ledger
/// cannot answer that far back.
pub struct AuditRetentionShort<'a> {
    pub segment: &'a str,
    pub max_bytes: u64,
    pub ledger_days: u64,
}
impl AuditRetentionShort<'_> {
    pub fn emit(self) {
        bump(&COUNTERS.audit_retention_short);
        tracing::warn!(
            segment = %self.segment,
            max_bytes = self.max_bytes,
            ledger_days = self.ledger_days,
            "audit.max_bytes is too small for audit.ledger_days: a segment younger than ledger_days was deleted; raise audit.max_bytes"
        );
    }
}
