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
//! Nothing a source handed over is dropped: a record that cannot be attributed, a payload that
//! cannot be decoded, a reading too large for the store and a reading whose identifier another
//! reading holds are each kept as a dead letter with its reason, for a technician.

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
    while let Some(first) = rx.recv().await {
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
                        // A real measurement we may not upload yet: keep it for the technician.
                        let payload = postcard::to_stdvec(&record).unwrap_or_default();
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
