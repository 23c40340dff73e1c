//! Telemetry events as types: one struct per notable condition; `emit()` writes one structured
//! log line and bumps one counter. The structs hold no patient fields and no values, which keeps
//! PHI out of the logs by construction (STYLE.md, practice 5).

use std::sync::atomic::{AtomicU64, Ordering};

use crate::pipeline::Rejection;
use crate::reading::Reading;

/// Process-wide counters (read by `Counters::snapshot`, printed at shutdown).
#[derive(Debug, Default)]
pub struct Counters {
    pub readings_stored: AtomicU64,
    pub readings_duplicate: AtomicU64,
    pub records_rejected: AtomicU64,
    pub payloads_undecodable: AtomicU64,
    pub store_write_failures: AtomicU64,
    pub uplink_accepted: AtomicU64,
    pub uplink_retries: AtomicU64,
    pub uplink_dead_lettered: AtomicU64,
    pub uplink_tls_failures: AtomicU64,
    pub mqtt_connection_errors: AtomicU64,
}

pub static COUNTERS: Counters = Counters {
    readings_stored: AtomicU64::new(0),
    readings_duplicate: AtomicU64::new(0),
    records_rejected: AtomicU64::new(0),
    payloads_undecodable: AtomicU64::new(0),
    store_write_failures: AtomicU64::new(0),
    uplink_accepted: AtomicU64::new(0),
    uplink_retries: AtomicU64::new(0),
    uplink_dead_lettered: AtomicU64::new(0),
    uplink_tls_failures: AtomicU64::new(0),
    mqtt_connection_errors: AtomicU64::new(0),
};

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

impl Counters {
    /// `name=value` pairs for a log line or a status command.
    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        vec![
            ("readings_stored", g(&self.readings_stored)),
            ("readings_duplicate", g(&self.readings_duplicate)),
            ("records_rejected", g(&self.records_rejected)),
            ("payloads_undecodable", g(&self.payloads_undecodable)),
            ("store_write_failures", g(&self.store_write_failures)),
            ("uplink_accepted", g(&self.uplink_accepted)),
            ("uplink_retries", g(&self.uplink_retries)),
            ("uplink_dead_lettered", g(&self.uplink_dead_lettered)),
            ("uplink_tls_failures", g(&self.uplink_tls_failures)),
            ("mqtt_connection_errors", g(&self.mqtt_connection_errors)),
        ]
    }
}

pub struct ReadingStored<'a> {
    pub reading: &'a Reading,
}
impl ReadingStored<'_> {
    pub fn emit(self) {
        bump(&COUNTERS.readings_stored);
        tracing::info!(
            reading = self.reading.short_id(),
            kind = self.reading.kind.as_str(),
            device = %self.reading.device.name,
            "reading stored"
        );
    }
}

pub struct ReadingDuplicate<'a> {
    pub reading: &'a Reading,
}
impl ReadingDuplicate<'_> {
    pub fn emit(self) {
        bump(&COUNTERS.readings_duplicate);
        tracing::info!(
            reading = self.reading.short_id(),
            device = %self.reading.device.name,
            "duplicate reading ignored (already stored or uploaded)"
        );
    }
}

pub struct RecordRejected<'a> {
    pub device: &'a str,
    pub reason: &'a Rejection,
}
impl RecordRejected<'_> {
    pub fn emit(self) {
        bump(&COUNTERS.records_rejected);
        tracing::warn!(device = %self.device, reason = %self.reason, "record not turned into readings");
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

pub struct UplinkAccepted<'a> {
    pub reading_id: &'a str,
    pub created: bool,
}
impl UplinkAccepted<'_> {
    pub fn emit(self) {
        bump(&COUNTERS.uplink_accepted);
        tracing::info!(
            reading = self.reading_id.get(..12).unwrap_or(self.reading_id),
            created = self.created,
            "reading accepted by FHIR server"
        );
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
    }
}

pub struct UplinkDeadLettered<'a> {
    pub reading_id: &'a str,
    pub status: u16,
}
impl UplinkDeadLettered<'_> {
    pub fn emit(self) {
        bump(&COUNTERS.uplink_dead_lettered);
        tracing::error!(
            reading = self.reading_id.get(..12).unwrap_or(self.reading_id),
            status = self.status,
            "FHIR server rejected a reading; kept as dead letter, needs a technician"
        );
    }
}

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
