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
use crate::ops::alarms::{AlarmEvent, AlarmState, Severity};
use crate::ops::episodes::{self, Decision};
use crate::ops::health::{self, UplinkState};
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
    tasks_stalled,
    alarms_raised,
    alarms_cleared,
    config_reloads,
    config_reload_failures,
    status_write_failures,
    fleet_publish_failures,
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
        health::device_delivered(&self.reading.device.name);
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
        health::device_delivered(&self.reading.device.name);
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
        }
        health::uplink(UplinkState::Retrying {
            reason: self.reason.to_string(),
        });
        // One line per episode (plus a reminder every 10 minutes), not one per attempt.
        let decision = episodes::with(|e| e.failure("uplink", std::time::Instant::now()));
        let failures = match decision {
            Decision::Quiet => None,
            Decision::Log => Some(1),
            Decision::Remind { failures } => Some(failures),
        };
        if let Some(failures) = failures {
            if self.tls {
                tracing::error!(reason = %self.reason, retry_in_ms = self.after_ms, failures, "TLS handshake with FHIR server failed (check uplink.ca_file and the server certificate)");
            } else {
                tracing::warn!(reason = %self.reason, retry_in_ms = self.after_ms, failures, "upload failed, will retry");
            }
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
        health::mqtt_link(false);
        // One line per episode (plus a reminder every 10 minutes), not one per reconnect.
        match episodes::with(|e| e.failure("mqtt", std::time::Instant::now())) {
            Decision::Quiet => {}
            Decision::Log => {
                tracing::warn!(error = %self.error, retry_in_ms = self.retry_in_ms, "MQTT connection error")
            }
            Decision::Remind { failures } => {
                tracing::warn!(error = %self.error, retry_in_ms = self.retry_in_ms, failures, "MQTT connection error (still failing)")
            }
        }
    }
}

/// The MQTT ingest session is up (CONNACK).
pub struct MqttConnected {
    pub session_present: bool,
}
impl MqttConnected {
    pub fn emit(self) {
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
