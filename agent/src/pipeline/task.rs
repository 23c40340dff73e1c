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
//! Back-pressure ([`crate::store::pressure`]): after each batch, and every [`PRESSURE_TICK`],
//! the task compares the store's held bytes with `store.max_bytes`. From 80% it stops taking
//! requests (the `recv` branch of its `select!` is off): the channel fills, the sources stop
//! taking input, and nothing further is acknowledged upstream, so MQTT brokers and devices keep
//! the readings. The uplink keeps draining the store; below 70% the task takes requests again.
//! Nothing stored is dropped to make room.
//!
//! Nothing a source handed over is dropped: a record that cannot be attributed or has no valid
//! device time (`Rejection::keeps_record`), a payload that cannot be decoded, a reading too
//! large for the store and a reading whose identifier another reading holds are each kept as a
//! dead letter with its reason, for a technician. Records the device marks invalid or not for
//! upload (test data, control solution) are counted and acknowledged, not kept.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use device_drivers::Record;
use tokio::sync::{mpsc, oneshot, Notify};

use super::convert::{readings_from_record, CaptureClock};
use super::devices::DeviceContext;
use crate::reading::{Reading, Source};
use crate::store::pressure::{Level, Pressure};
use crate::store::{DeadReason, Insert, NewRecord, Store, StoreError};
use crate::telemetry::{self, GAUGES};

/// Requests drained per store transaction.
pub const MAX_BATCH: usize = 64;

/// How often the task looks at the store's held bytes between batches (and while paused, to
/// see whether the uplink has drained it).
pub const PRESSURE_TICK: Duration = Duration::from_millis(250);

/// The store's size on disk and the free space are measured every this many ticks (10 s).
const DISK_PROBE_TICKS: u32 = 40;

/// What a source tells the pipeline.
// Nearly every message is a `Record` (~300 bytes): boxing it would add an allocation per reading
// to save space only on the rare `Undecodable`, in a channel bounded to a few thousand entries.
#[allow(clippy::large_enum_variant)]
pub enum Ingest {
    /// A decoded record from a device.
    Record {
        device: Arc<DeviceContext>,
        record: Record,
        source: Source,
        clock: CaptureClock,
        received_at: DateTime<Utc>,
        /// A digest naming the upstream message, when the source may deliver it again after
        /// a restart (MQTT QoS 1): see [`delivery_digest`] and `store::NewRecord::delivery`.
        delivery: Option<[u8; 32]>,
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

/// The digest that names an MQTT message (topic and payload): the broker redelivers a message
/// it has no acknowledgement for, byte for byte, on the same topic.
pub fn delivery_digest(topic: &str, payload: &[u8]) -> [u8; 32] {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(b"vitalgate-mqtt-delivery-v1\0");
    ctx.update(&(topic.len() as u64).to_be_bytes());
    ctx.update(topic.as_bytes());
    ctx.update(payload);
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
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

/// The pipeline task. Ends when its input is closed (every sender dropped) and drained, or,
/// while paused by store pressure, as soon as its input is closed (what it holds then is not
/// acknowledged: the sources' upstream redelivers). It has no shutdown token of its own: the
/// app closes its input at shutdown, and aborts it after the grace period (answers not sent
/// mean "not acknowledged": the sources' upstream redelivers).
///
/// `max_bytes` is `store.max_bytes`: see the module doc on back-pressure.
pub async fn run(
    mut rx: mpsc::Receiver<Ingest>,
    store: Arc<dyn Store>,
    uplink_wake: Arc<Notify>,
    max_bytes: u64,
) {
    let mut pressure = Pressure::new(max_bytes);
    GAUGES.store_max_bytes.store(max_bytes, Ordering::Relaxed);
    // A store already over 80% at start (a restart during an outage) starts paused.
    check_pressure(&store, &mut pressure).await;
    probe_disk(&store).await;
    let mut tick = tokio::time::interval(PRESSURE_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut ticks: u32 = 0;
    let mut fault: Option<Fault> = None;
    loop {
        let takes = pressure.level().takes_readings() && fault.is_none();
        // The watchdog: a beat per batch and per tick; waiting for input is idle, the store
        // write is not.
        tokio::select! {
            msg = crate::ops::watchdog::idle(rx.recv()), if takes => {
                let Some(first) = msg else { break };
                crate::ops::watchdog::beat();
                let mut batch = vec![first];
                while batch.len() < MAX_BATCH {
                    match rx.try_recv() {
                        Ok(m) => batch.push(m),
                        Err(_) => break,
                    }
                }
                let done = process(batch, &store).await;
                if done.any_new {
                    uplink_wake.notify_one();
                }
                if let Some(e) = done.store_error.filter(StoreError::needs_reopen) {
                    telemetry::StoreFaulted { error: &e }.emit();
                    GAUGES.store_failed.store(1, Ordering::Relaxed);
                    fault = Some(Fault::new(tokio::time::Instant::now()));
                    continue;
                }
                check_pressure(&store, &mut pressure).await;
            }
            _ = tick.tick() => {
                crate::ops::watchdog::beat();
                ticks = ticks.wrapping_add(1);
                if let Some(f) = fault.as_mut() {
                    let now = tokio::time::Instant::now();
                    if now >= f.next_try && try_reopen(&store, f, now).await {
                        fault = None;
                        GAUGES.store_failed.store(0, Ordering::Relaxed);
                        probe_disk(&store).await;
                    }
                }
                if fault.is_none() {
                    if ticks % DISK_PROBE_TICKS == 0 {
                        probe_disk(&store).await;
                    }
                    check_pressure(&store, &mut pressure).await;
                }
                if !takes && rx.is_closed() {
                    break;
                }
            }
        }
    }
}

/// First wait before reopening a failed store; doubled after each failed attempt.
pub const REOPEN_BACKOFF_MIN: Duration = Duration::from_secs(1);
/// Longest wait between two reopen attempts.
pub const REOPEN_BACKOFF_MAX: Duration = Duration::from_secs(60);

/// A store fault episode: from a failed write to a reopen whose probe write succeeds.
struct Fault {
    since: tokio::time::Instant,
    next_try: tokio::time::Instant,
    backoff: Duration,
    attempts: u32,
}

impl Fault {
    fn new(now: tokio::time::Instant) -> Fault {
        Fault {
            since: now,
            next_try: now + REOPEN_BACKOFF_MIN,
            backoff: REOPEN_BACKOFF_MIN,
            attempts: 0,
        }
    }
}

/// Reopens the store and proves it writes. Returns whether the episode is over; otherwise
/// schedules the next attempt (exponential backoff, capped).
async fn try_reopen(store: &Arc<dyn Store>, f: &mut Fault, now: tokio::time::Instant) -> bool {
    f.attempts = f.attempts.saturating_add(1);
    // Work, not a wait: not wrapped in watchdog::idle (a hung reopen must show). It takes at
    // most the lock wait (5 s) plus a scan of the backlog, well inside the task's allowance.
    let store2 = Arc::clone(store);
    let result = tokio::task::spawn_blocking(move || {
        store2.reopen()?;
        store2.probe_write()
    })
    .await;
    let error = match result {
        Ok(Ok(())) => {
            telemetry::StoreRecovered {
                attempts: f.attempts,
                down_secs: now.duration_since(f.since).as_secs(),
            }
            .emit();
            return true;
        }
        Ok(Err(e)) => e,
        Err(e) => {
            telemetry::TaskFailed {
                task: "store reopen",
                error: &e,
            }
            .emit();
            f.next_try = now + f.backoff;
            return false;
        }
    };
    f.backoff = (f.backoff * 2).min(REOPEN_BACKOFF_MAX);
    f.next_try = now + f.backoff;
    telemetry::StoreReopenFailed {
        error: &error,
        attempt: f.attempts,
        next_try_secs: f.backoff.as_secs(),
    }
    .emit();
    false
}

/// Updates the held-bytes gauge and the pressure level. A change of level is decided on an
/// exact count, not on the running figure (which rare operations leave off by a few bytes).
async fn check_pressure(store: &Arc<dyn Store>, pressure: &mut Pressure) {
    let mut held = store.held_bytes();
    if pressure.next_level(held) != pressure.level() {
        let store2 = Arc::clone(store);
        match tokio::task::spawn_blocking(move || store2.recount_held_bytes()).await {
            Ok(Ok(exact)) => held = exact,
            Ok(Err(e)) => telemetry::StoreUsageProbeFailed { error: &e }.emit(),
            Err(e) => telemetry::TaskFailed {
                task: "store usage recount",
                error: &e,
            }
            .emit(),
        }
    }
    GAUGES.store_held_bytes.store(held, Ordering::Relaxed);
    if let Some((from, to)) = pressure.observe(held) {
        // One batch can jump from below 80% past 90%: both alarms are raised, in order.
        let steps: &[(Level, Level)] = if from == Level::Normal && to == Level::Critical {
            &[(Level::Normal, Level::High), (Level::High, Level::Critical)]
        } else {
            &[(from, to)]
        };
        for &(from, to) in steps {
            telemetry::StorePressureChanged {
                from,
                to,
                held_bytes: held,
                max_bytes: pressure.max_bytes(),
                percent: pressure.percent(held),
            }
            .emit();
        }
    }
}

/// Measures the store's size on disk and the free space (gauges only).
async fn probe_disk(store: &Arc<dyn Store>) {
    let store2 = Arc::clone(store);
    let probe = tokio::task::spawn_blocking(move || {
        Ok::<_, StoreError>((store2.disk_bytes()?, store2.disk_available_bytes()?))
    })
    .await;
    match probe {
        Ok(Ok((disk, available))) => {
            GAUGES.store_disk_bytes.store(disk, Ordering::Relaxed);
            GAUGES
                .disk_available_bytes
                .store(available, Ordering::Relaxed);
        }
        Ok(Err(e)) => telemetry::StoreUsageProbeFailed { error: &e }.emit(),
        Err(e) => telemetry::TaskFailed {
            task: "store disk probe",
            error: &e,
        }
        .emit(),
    }
}

/// What [`process`] did with a batch.
struct Processed {
    /// A new reading was stored (wake the uploader).
    any_new: bool,
    /// The store write failed (every request was answered `StoreFailed`).
    store_error: Option<StoreError>,
}

/// Converts, stores and answers one batch.
async fn process(batch: Vec<Ingest>, store: &Arc<dyn Store>) -> Processed {
    // Pure step: readings and raw dead letters.
    let mut readings: Vec<Reading> = Vec::new();
    let mut dead: Vec<RawDead> = Vec::new();
    // Per reading: the upstream delivery it was made from, with its place in the message.
    let mut deliveries: Vec<Option<String>> = Vec::new();
    let mut answers: Vec<(Option<oneshot::Sender<Outcome>>, Converted)> = Vec::new();
    for msg in batch {
        match msg {
            Ingest::Record {
                device,
                record,
                source,
                clock,
                received_at,
                delivery,
                done,
            } => match readings_from_record(&device, &record, &source, &clock, received_at) {
                Ok(rs) => {
                    let start = readings.len();
                    deliveries.extend(
                        (0..rs.len())
                            .map(|k| delivery.map(|d| format!("mqtt:{}:{k}", hex::encode(d)))),
                    );
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
            .zip(&deliveries)
            .map(|(r, d)| r.as_delivered_record(d.as_deref()))
            .collect();
        store2.insert_readings(&records)
    })
    .await;
    let mut store_error = None;
    let inserts = match result {
        Ok(Ok(v)) => Some(v),
        Ok(Err(e)) => {
            telemetry::StoreWriteFailed { error: &e }.emit();
            store_error = Some(e);
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
    Processed {
        any_new,
        store_error,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Attribution;
    use crate::reading::{DeviceClass, DeviceIdentifier};
    use crate::store::{Outbox, OutboxOptions, StoreKey};
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
            reported: Default::default(),
            upload_statistics: Vec::new(),
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
            delivery: None,
            done: Some(tx),
        };
        (msg, rx)
    }

    /// A BP record without flags or device time (dated with the receive time), distinct per `n`.
    fn plain_record(n: i64) -> Record {
        Record {
            readings: vec![
                device_drivers::Reading::new(
                    ReadingType::SystolicPressure,
                    Decimal::from_int(100 + n),
                    "mm[Hg]",
                ),
                device_drivers::Reading::new(
                    ReadingType::DiastolicPressure,
                    Decimal::from_int(60),
                    "mm[Hg]",
                ),
            ],
            ..Record::default()
        }
    }

    /// [`plain_record`] `n`, received `n` minutes after the others (so each has its own FHIR
    /// identifier).
    fn plain(n: i64) -> (Ingest, oneshot::Receiver<Outcome>) {
        let (mut msg, done) = ingest(plain_record(n));
        if let Ingest::Record { received_at, .. } = &mut msg {
            *received_at += chrono::Duration::minutes(n);
        }
        (msg, done)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn at_80_percent_the_pipeline_stops_answering_and_resumes_when_the_uplink_drains() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(
            Outbox::open(
                dir.path(),
                StoreKey::from_bytes([7; 32]),
                OutboxOptions::default(),
            )
            .unwrap(),
        );
        let max_bytes = 16 * 1024;
        let (tx, rx) = mpsc::channel(8);
        let task = tokio::spawn(run(
            rx,
            Arc::<Outbox>::clone(&store),
            Arc::new(Notify::new()),
            max_bytes,
        ));
        let patience = Duration::from_secs(30);

        // Fill to 80%, one record at a time: each is answered while the store is below.
        let mut n = 0;
        while store.held_bytes() * 100 < max_bytes * 80 {
            let (msg, done) = plain(n);
            tx.send(msg).await.unwrap();
            let outcome = tokio::time::timeout(patience, done).await.unwrap().unwrap();
            assert!(
                matches!(outcome, Outcome::Durable { stored: 1, .. }),
                "{outcome:?}"
            );
            n += 1;
            assert!(n < 1000, "the store never reached 80%");
        }
        let stored_before = store.stats().unwrap().pending;

        // Over 80%: the next record is taken by nobody, so nothing acknowledges it upstream.
        let (msg, mut done) = plain(n);
        tx.send(msg).await.unwrap();
        tokio::time::sleep(PRESSURE_TICK * 4).await;
        assert!(
            matches!(done.try_recv(), Err(oneshot::error::TryRecvError::Empty)),
            "answered while the store is over 80%"
        );
        assert_eq!(
            store.stats().unwrap().pending,
            stored_before,
            "nothing stored"
        );

        // The uplink delivers half of the backlog: still above 70%, still paused... then all.
        let pending = store.pending::<Reading>(usize::MAX).unwrap();
        let ids: Vec<[u8; 32]> = pending.iter().map(|r| r.id).collect();
        store.ack(&ids[..ids.len() / 8]).unwrap();
        tokio::time::sleep(PRESSURE_TICK * 4).await;
        assert!(
            matches!(done.try_recv(), Err(oneshot::error::TryRecvError::Empty)),
            "resumed above 70% (no hysteresis)"
        );
        store.ack(&ids).unwrap();
        let outcome = tokio::time::timeout(patience, done).await.unwrap().unwrap();
        assert!(
            matches!(outcome, Outcome::Durable { stored: 1, .. }),
            "{outcome:?}"
        );
        assert_eq!(
            store.stats().unwrap().pending,
            1,
            "the held record is stored once drained"
        );
        assert!(
            telemetry::COUNTERS
                .store_pressure_high
                .load(Ordering::Relaxed)
                >= 1
        );
        assert!(
            telemetry::COUNTERS
                .store_pressure_resumed
                .load(Ordering::Relaxed)
                >= 1
        );
        assert_eq!(
            store.held_bytes(),
            store.recount_held_bytes().unwrap(),
            "the running count of held bytes matches an exact count after inserts and acks"
        );

        drop(tx);
        tokio::time::timeout(patience, task).await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn a_paused_pipeline_ends_when_its_input_closes_without_answering() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(
            Outbox::open(
                dir.path(),
                StoreKey::from_bytes([7; 32]),
                OutboxOptions::default(),
            )
            .unwrap(),
        );
        let (tx, rx) = mpsc::channel(8);
        let task = tokio::spawn(run(
            rx,
            Arc::<Outbox>::clone(&store),
            Arc::new(Notify::new()),
            1,
        ));
        let (msg, done) = plain(1);
        tx.send(msg).await.unwrap();
        drop(tx);
        // Held bytes 0 of max 1 is not over 80%: this one is stored...
        let first = tokio::time::timeout(Duration::from_secs(30), done)
            .await
            .unwrap();
        assert!(matches!(first, Ok(Outcome::Durable { .. })), "{first:?}");
        tokio::time::timeout(Duration::from_secs(30), task)
            .await
            .unwrap()
            .unwrap();

        // ...and a restart over 80% starts paused: the request is never answered (not acked
        // upstream), the task ends once its input closes.
        let (tx, rx) = mpsc::channel(8);
        let task = tokio::spawn(run(
            rx,
            Arc::<Outbox>::clone(&store),
            Arc::new(Notify::new()),
            1,
        ));
        let (msg, done) = plain(2);
        tx.send(msg).await.unwrap();
        drop(tx);
        tokio::time::timeout(Duration::from_secs(30), task)
            .await
            .unwrap()
            .unwrap();
        assert!(
            done.await.is_err(),
            "no answer: the source does not acknowledge it"
        );
        assert_eq!(
            store.stats().unwrap().pending,
            1,
            "only the first record was stored"
        );
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
        let dyn_store: Arc<dyn Store> = store.clone();
        let new = process(vec![undated, invalid], &dyn_store).await.any_new;

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

    /// A redelivered MQTT message after the device was rebound to another patient (then a
    /// restart, or a crash before the acknowledgement reached the broker): the same delivery
    /// made into a reading with another identifier is a duplicate, kept once under the patient
    /// it first arrived under, also after the store is reopened. Another message, or the same
    /// payload on another topic, is a new reading.
    #[tokio::test]
    async fn a_redelivery_under_a_new_binding_is_a_duplicate_across_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let open = || {
            Arc::new(
                Outbox::open(
                    dir.path(),
                    StoreKey::from_bytes([7; 32]),
                    OutboxOptions::default(),
                )
                .unwrap(),
            )
        };
        let bound_to = |patient: &str| {
            let mut ctx = (*cuff()).clone();
            ctx.attribution = Attribution::Single(patient.parse().unwrap());
            Arc::new(ctx)
        };
        let message = |device: Arc<DeviceContext>, n: i64, topic: &str| {
            let (mut msg, done) = plain(n);
            if let Ingest::Record {
                device: d,
                delivery,
                ..
            } = &mut msg
            {
                *d = device;
                *delivery = Some(delivery_digest(topic, format!("payload {n}").as_bytes()));
            }
            (msg, done)
        };
        let store = open();
        let dyn_store: Arc<dyn Store> = store.clone();
        let (first, first_done) = message(bound_to("Patient/p1"), 1, "hub/1");
        assert!(process(vec![first], &dyn_store).await.any_new);
        assert_eq!(
            first_done.await.unwrap(),
            Outcome::Durable {
                stored: 1,
                duplicates: 0,
                dead_lettered: 0
            }
        );
        drop((dyn_store, store));

        let store = open();
        let dyn_store: Arc<dyn Store> = store.clone();
        let (again, again_done) = message(bound_to("Patient/p2"), 1, "hub/1");
        let (other_topic, other_done) = message(bound_to("Patient/p2"), 1, "hub/2");
        let (next, next_done) = message(bound_to("Patient/p2"), 2, "hub/1");
        process(vec![again, other_topic, next], &dyn_store).await;
        assert_eq!(
            again_done.await.unwrap(),
            Outcome::Durable {
                stored: 0,
                duplicates: 1,
                dead_lettered: 0
            },
            "the redelivery is the reading already kept"
        );
        for done in [other_done, next_done] {
            assert_eq!(
                done.await.unwrap(),
                Outcome::Durable {
                    stored: 1,
                    duplicates: 0,
                    dead_lettered: 0
                }
            );
        }
        let pending = store.pending::<Reading>(10).unwrap();
        let identifiers: Vec<String> = pending
            .iter()
            .map(|r| r.value.observation_identifier.clone())
            .collect();
        assert_eq!(pending.len(), 3, "{identifiers:?}");
        assert!(identifiers[0].contains("p1"), "{identifiers:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn after_a_store_io_fault_the_pipeline_takes_nothing_and_reopens_once_the_cause_clears() {
        use telemetry::COUNTERS;
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(
            Outbox::open(
                dir.path(),
                StoreKey::from_bytes([7; 32]),
                OutboxOptions::default(),
            )
            .unwrap(),
        );
        let (tx, rx) = mpsc::channel(8);
        let task = tokio::spawn(run(
            rx,
            Arc::<Outbox>::clone(&store),
            Arc::new(Notify::new()),
            u64::MAX / 2,
        ));
        let patience = Duration::from_secs(60);
        // The fault counters are process-wide: no other pipeline faults its store meanwhile.
        let _serial = crate::telemetry::STORE_FAULT_TESTS.lock().await;
        let faults_before = COUNTERS.store_faults.load(Ordering::Relaxed);
        let recoveries_before = COUNTERS.store_recoveries.load(Ordering::Relaxed);

        let (m1, d1) = plain(1);
        tx.send(m1).await.unwrap();
        let o1 = tokio::time::timeout(patience, d1).await.unwrap().unwrap();
        assert!(matches!(o1, Outcome::Durable { stored: 1, .. }), "{o1:?}");

        // The disk fills: the write fails, nothing is acknowledged.
        store.inject_io_fault(true);
        let (m2, d2) = plain(2);
        tx.send(m2).await.unwrap();
        let o2 = tokio::time::timeout(patience, d2).await.unwrap().unwrap();
        assert_eq!(o2, Outcome::StoreFailed);
        assert!(!o2.is_safe_to_ack());

        // While the cause lasts the pipeline takes nothing (no answer, no spin on a failing
        // store) and its reopen attempts fail.
        let (m3, mut d3) = plain(3);
        tx.send(m3).await.unwrap();
        tokio::time::sleep(Duration::from_secs(4)).await;
        assert!(
            matches!(d3.try_recv(), Err(oneshot::error::TryRecvError::Empty)),
            "no answer while the store is failed"
        );
        assert!(!store.is_open(), "the failed reopen left it closed");
        assert_eq!(
            COUNTERS.store_faults.load(Ordering::Relaxed) - faults_before,
            1,
            "one alarm for the episode"
        );

        // Space is back: the next reopen succeeds, the waiting reading is stored, and the
        // source's redelivery of the refused one too.
        store.inject_io_fault(false);
        let o3 = tokio::time::timeout(patience, d3).await.unwrap().unwrap();
        assert!(matches!(o3, Outcome::Durable { stored: 1, .. }), "{o3:?}");
        assert!(store.is_open());
        assert_eq!(
            COUNTERS.store_recoveries.load(Ordering::Relaxed) - recoveries_before,
            1
        );
        let (m2again, d2again) = plain(2);
        tx.send(m2again).await.unwrap();
        let o2 = tokio::time::timeout(patience, d2again)
            .await
            .unwrap()
            .unwrap();
        assert!(matches!(o2, Outcome::Durable { stored: 1, .. }), "{o2:?}");
        assert_eq!(
            store.stats().unwrap().pending,
            3,
            "three records, one reading each"
        );
        assert_eq!(
            COUNTERS.store_faults.load(Ordering::Relaxed) - faults_before,
            1
        );

        drop(tx);
        tokio::time::timeout(patience, task).await.unwrap().unwrap();
    }
}
