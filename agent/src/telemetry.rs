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
);

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
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
