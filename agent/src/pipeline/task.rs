//! The pipeline task: drains up to [`MAX_BATCH`] requests at a time, converts them (pure, in
//! [`super::convert`]), makes the whole batch durable with one store transaction and one
//! flush + fsync, then answers each request. A source acknowledges upstream (MQTT PUBACK) only
//! on [`Outcome::Durable`] or [`Outcome::Rejected`].
//!
//! ```text
//! sources ──Ingest──▶ [bounded channel] ──▶ task ──insert_records──▶ store (fsync)
//!    ▲                                        │
//!    └────────── done (durable / rejected) ◀──┘   then: wake the uploader
//! ```
//!
//! Nothing a source handed over is dropped: a record that cannot be attributed or has no valid
//! device time (`Rejection::keeps_record`), a payload that cannot be decoded, a reading too
//! large for the store and a reading whose identifier another reading holds are each kept as a
//! dead letter with its reason, for a technician. Records the device marks invalid or not for
//! upload (test data, control solution) are counted and acknowledged, not kept.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use device_drivers::Record;
use tokio::sync::{mpsc, oneshot, Notify};

use super::convert::{readings_from_record, CaptureClock};
use super::devices::DeviceContext;
use crate::reading::{Reading, Source};
use crate::store::{DeadReason, Insert, NewRecord, Outbox, StoreError};
use crate::telemetry;

/// Requests drained per store transaction.
pub const MAX_BATCH: usize = 64;

/// What a source tells the pipeline.
pub enum Ingest {
    /// A decoded record from a device.
    Record {
        device: Arc<DeviceContext>,
        record: Record,
        source: Source,
        clock: CaptureClock,
        received_at: DateTime<Utc>,
        done: Option<oneshot::Sender<Outcome>>,
    },
    /// A payload that could not be decoded: kept as a dead letter, then acknowledged upstream.
    Undecodable {
        source_label: String,
        payload: Vec<u8>,
        reason: String,
        done: Option<oneshot::Sender<Outcome>>,
    },
}

/// The pipeline's answer to a source. `Durable` and `Rejected` both mean "safe to ack".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Every reading of the record is kept: new in the outbox, already known, or (collision,
    /// too large) as a dead letter.
    Durable {
        stored: usize,
        duplicates: usize,
        dead_lettered: usize,
    },
    /// The record produced no reading; it is kept as a dead letter when that loses data.
    Rejected(String),
    /// The store failed: do NOT acknowledge upstream (the source will redeliver).
    StoreFailed,
}

impl Outcome {
    /// May the source acknowledge the message upstream?
    pub fn is_safe_to_ack(&self) -> bool {
        !matches!(self, Outcome::StoreFailed)
    }
}

/// A raw dead letter: label, payload, reason.
type RawDead = (String, Vec<u8>, String);

/// One request of a batch after the pure step.
enum Converted {
    /// Indexes of its readings in the batch's reading list.
    Readings(Vec<usize>),
    Rejected(String),
}

/// The pipeline task. Ends when its input is closed (every sender dropped) and drained. It has
/// no shutdown token of its own: the app closes its input at shutdown, and aborts it after the
/// grace period (answers not sent mean "not acknowledged": the sources' upstream redelivers).
pub async fn run(mut rx: mpsc::Receiver<Ingest>, store: Arc<Outbox>, uplink_wake: Arc<Notify>) {
    // The watchdog: a beat per batch; waiting for input is idle, the store write is not.
    while let Some(first) = crate::ops::watchdog::idle(rx.recv()).await {
        crate::ops::watchdog::beat();
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(m) => batch.push(m),
                Err(_) => break,
            }
        }
        if process(batch, &store).await {
            uplink_wake.notify_one();
        }
    }
}

/// Converts, stores and answers one batch. Returns whether a new reading was stored.
async fn process(batch: Vec<Ingest>, store: &Arc<Outbox>) -> bool {
    // Pure step: readings and raw dead letters.
    let mut readings: Vec<Reading> = Vec::new();
    let mut dead: Vec<RawDead> = Vec::new();
    let mut answers: Vec<(Option<oneshot::Sender<Outcome>>, Converted)> = Vec::new();
    for msg in batch {
        match msg {
            Ingest::Record {
                device,
                record,
                source,
                clock,
                received_at,
                done,
            } => match readings_from_record(&device, &record, &source, &clock, received_at) {
                Ok(rs) => {
                    let start = readings.len();
                    readings.extend(rs);
                    answers.push((done, Converted::Readings((start..readings.len()).collect())));
                }
                Err(rej) => {
                    telemetry::RecordRejected {
                        device: &device.name,
                        reason: &rej,
                    }
                    .emit();
                    if rej.keeps_record() {
                        // A real measurement we may not upload yet: keep it for the technician,
                        // as JSON (the decoded form `vitalgate decode` prints), readable with
                        // `dead-letters --show`. Postcard bytes of a `Record` cannot be decoded
                        // by anything: `Record` skips empty fields and holds JSON values.
                        let payload = serde_json::to_vec(&record).unwrap_or_default();
                        dead.push((format!("device:{}", device.name), payload, rej.to_string()));
                    }
                    answers.push((done, Converted::Rejected(rej.to_string())));
                }
            },
            Ingest::Undecodable {
                source_label,
                payload,
                reason,
                done,
            } => {
                dead.push((source_label, payload, reason.clone()));
                answers.push((done, Converted::Rejected(reason)));
            }
        }
    }

    // I/O step: one durable write for the whole batch.
    let store2 = Arc::clone(store);
    let readings = Arc::new(readings);
    let readings2 = Arc::clone(&readings);
    let result = tokio::task::spawn_blocking(move || -> Result<Vec<Insert>, StoreError> {
        for (label, payload, reason) in &dead {
            store2.put_dead_letter_raw(label, payload, reason)?;
        }
        let records: Vec<NewRecord<'_, Reading>> = readings2
            .iter()
            .map(|r| NewRecord {
                id: *r.id.as_bytes(),
                identity: Some(r.observation_identifier.as_str()),
                value: r,
            })
            .collect();
        store2.insert_records(&records)
    })
    .await;
    let inserts = match result {
        Ok(Ok(v)) => Some(v),
        Ok(Err(e)) => {
            telemetry::StoreWriteFailed { error: &e }.emit();
            None
        }
        Err(e) => {
            telemetry::TaskFailed {
                task: "pipeline store write",
                error: &e,
            }
            .emit();
            None
        }
    };

    let mut any_new = false;
    for (done, converted) in answers {
        let outcome = match (&inserts, converted) {
            (None, _) => Outcome::StoreFailed,
            (Some(_), Converted::Rejected(reason)) => Outcome::Rejected(reason),
            (Some(ins), Converted::Readings(idx)) => {
                let (mut stored, mut duplicates, mut dead_lettered) = (0, 0, 0);
                for i in idx {
                    let (Some(kind), Some(reading)) = (ins.get(i), readings.get(i)) else {
                        continue;
                    };
                    match kind {
                        Insert::Stored => {
                            stored += 1;
                            any_new = true;
                            telemetry::ReadingStored { reading }.emit();
                        }
                        Insert::Duplicate => {
                            duplicates += 1;
                            telemetry::ReadingDuplicate { reading }.emit();
                        }
                        Insert::DeadLettered { seq, reason } => {
                            dead_lettered += 1;
                            match reason {
                                DeadReason::IdentifierCollision => telemetry::IdentifierCollision {
                                    reading,
                                    dead_seq: *seq,
                                }
                                .emit(),
                                DeadReason::TooLarge => telemetry::ReadingTooLarge {
                                    reading,
                                    dead_seq: *seq,
                                }
                                .emit(),
                            }
                        }
                    }
                }
                Outcome::Durable {
                    stored,
                    duplicates,
                    dead_lettered,
                }
            }
        };
        if let Some(done) = done {
            let _ = done.send(outcome);
        }
    }
    any_new
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Attribution;
    use crate::reading::{DeviceClass, DeviceIdentifier};
    use crate::store::{OutboxOptions, StoreKey};
    use chrono::{FixedOffset, TimeZone};
    use device_drivers::{Decimal, ReadingType, Status};

    fn cuff() -> Arc<DeviceContext> {
        Arc::new(DeviceContext {
            name: "cuff".into(),
            class: DeviceClass::BloodPressureCuff,
            identifier: DeviceIdentifier::Bluetooth("00091FAABBCC".into()),
            attribution: Attribution::Single("Patient/p1".parse().unwrap()),
            utc_offset: FixedOffset::east_opt(3600).unwrap(),
            clock_is_provenance_only: false,
        })
    }

    /// A BP record without a device time, carrying `status`.
    fn record(status: Status) -> Record {
        let mut rec = Record {
            readings: vec![
                device_drivers::Reading::new(
                    ReadingType::SystolicPressure,
                    Decimal::from_int(128),
                    "mm[Hg]",
                ),
                device_drivers::Reading::new(
                    ReadingType::DiastolicPressure,
                    Decimal::from_int(82),
                    "mm[Hg]",
                ),
            ],
            ..Record::default()
        };
        rec.add_flag(status);
        rec
    }

    fn ingest(rec: Record) -> (Ingest, oneshot::Receiver<Outcome>) {
        let (tx, rx) = oneshot::channel();
        let msg = Ingest::Record {
            device: cuff(),
            record: rec,
            source: Source::Ble {
                address: "00:09:1F:AA:BB:CC".into(),
            },
            clock: CaptureClock::default(),
            received_at: Utc.with_ymd_and_hms(2026, 11, 23, 10, 0, 0).unwrap(),
            done: Some(tx),
        };
        (msg, rx)
    }

    #[tokio::test]
    async fn a_stored_record_without_device_time_is_held_as_a_dead_letter_and_invalid_data_is_not()
    {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(
            Outbox::open(
                dir.path(),
                StoreKey::from_bytes([7; 32]),
                OutboxOptions::default(),
            )
            .unwrap(),
        );
        let (undated, undated_done) = ingest(record(Status::FromMemory));
        let (invalid, invalid_done) = ingest(record(Status::Artifact));
        let new = process(vec![undated, invalid], &store).await;

        assert!(!new, "no reading stored");
        let undated_outcome = undated_done.await.unwrap();
        assert!(
            matches!(&undated_outcome, Outcome::Rejected(r) if r.contains("no valid device time")),
            "{undated_outcome:?}"
        );
        assert!(undated_outcome.is_safe_to_ack(), "held durably, so acked");
        assert!(matches!(invalid_done.await.unwrap(), Outcome::Rejected(_)));

        let dead = store.dead_letters().unwrap();
        assert_eq!(dead.len(), 1, "only the undated record is kept: {dead:?}");
        assert_eq!(dead[0].source, "device:cuff");
        assert!(dead[0].reason.contains("from_memory"), "{}", dead[0].reason);
        // The held payload is the record itself, as its decoded JSON, for a technician.
        let payload = store.dead_letter_payload(dead[0].seq).unwrap();
        let back: serde_json::Value = serde_json::from_slice(&payload).unwrap();
        assert_eq!(back["flags"], serde_json::json!(["from_memory"]));
        assert_eq!(back["readings"][0]["type"], "systolic_pressure");
        assert_eq!(back["readings"][1]["value"].as_f64(), Some(82.0));
    }
}
