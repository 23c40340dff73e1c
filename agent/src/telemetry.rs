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

use std::fmt::Display;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use tokio::sync::broadcast;

use crate::events::AgentEvent;
use crate::identity::ReadingId;
use crate::reading::Reading;

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
    uplink_bundles_sent,
    uplink_accepted,
    uplink_retries,
    uplink_dead_lettered,
    uplink_tls_failures,
    mqtt_connection_errors,
    tasks_failed,
    ble_advertisements,
    ble_connects,
    ble_disconnects,
    ble_session_failures,
    ble_recoveries,
    ble_watchdog_actions,
    ble_identity_mismatches,
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
);

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
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
        tracing::info!(
            reading = %self.reading.short_id(),
            kind = self.reading.kind.as_str(),
            device = %self.reading.device.name,
            "reading stored"
        );
        notify(|| AgentEvent::Stored(Box::new(self.reading.clone())));
    }
}

pub struct ReadingDuplicate<'a> {
    pub reading: &'a Reading,
}
impl ReadingDuplicate<'_> {
    pub fn emit(self) {
        bump(&COUNTERS.readings_duplicate);
        tracing::info!(
            reading = %self.reading.short_id(),
            device = %self.reading.device.name,
            "duplicate reading ignored (already stored or uploaded)"
        );
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

// ---- uplink ----

/// A transaction Bundle goes out (debug level: one per upload attempt).
pub struct BundleSent<'a> {
    pub bundle: &'a serde_json::Value,
    pub entries: usize,
}
impl BundleSent<'_> {
    pub fn emit(self) {
        bump(&COUNTERS.uplink_bundles_sent);
        tracing::debug!(entries = self.entries, "sending transaction Bundle");
        notify(|| AgentEvent::BundleSent {
            bundle: self.bundle.clone(),
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
        tracing::info!(
            reading = %self.reading_id.short(),
            created = self.created,
            "reading accepted by FHIR server"
        );
        notify(|| AgentEvent::Accepted {
            reading_id: *self.reading_id,
            location: self.location.map(str::to_string),
            created: self.created,
        });
    }
}

pub struct UplinkRetry<'a> {
    pub reason: &'a str,
    pub after_ms: u64,
    pub tls: bool,
}
impl UplinkRetry<'_> {
    pub fn emit(self) {
        bump(&COUNTERS.uplink_retries);
        if self.tls {
            bump(&COUNTERS.uplink_tls_failures);
            tracing::error!(reason = %self.reason, retry_in_ms = self.after_ms, "TLS handshake with FHIR server failed (check uplink.ca_file and the server certificate)");
        } else {
            tracing::warn!(reason = %self.reason, retry_in_ms = self.after_ms, "upload failed, will retry");
        }
        notify(|| AgentEvent::UplinkRetry {
            reason: self.reason.to_string(),
            after_ms: self.after_ms,
        });
    }
}

pub struct UplinkDeadLettered<'a> {
    pub reading_id: &'a ReadingId,
    pub status: u16,
    pub reason: &'a str,
}
impl UplinkDeadLettered<'_> {
    pub fn emit(self) {
        bump(&COUNTERS.uplink_dead_lettered);
        bump(&COUNTERS.readings_dead_lettered);
        tracing::error!(
            reading = %self.reading_id.short(),
            status = self.status,
            "FHIR server rejected a reading; kept as dead letter, needs a technician"
        );
        notify(|| AgentEvent::DeadLettered {
            reading_id: *self.reading_id,
            reason: self.reason.to_string(),
        });
    }
}

// ---- sources ----

pub struct MqttConnectionError<'a> {
    pub error: &'a str,
    pub retry_in_ms: u64,
}
impl MqttConnectionError<'_> {
    pub fn emit(self) {
        bump(&COUNTERS.mqtt_connection_errors);
        tracing::warn!(error = %self.error, retry_in_ms = self.retry_in_ms, "MQTT connection error");
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

pub struct BleCursorSaveFailed<'a> {
    pub error: &'a dyn Display,
}
impl BleCursorSaveFailed<'_> {
    pub fn emit(self) {
        bump(&COUNTERS.ble_cursor_save_failures);
        tracing::error!(error = %self.error, "BLE high-water marks could not be saved (devices may resend; duplicates are still suppressed by content id)");
    }
}
