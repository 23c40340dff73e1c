//! The uploader task: outbox → FHIR server, one Bundle at a time. A thin shell around
//! [`UploadScheduler`], which makes every decision (see its module doc for the table).
//!
//! ```text
//! loop:
//!   match scheduler.next(now):
//!     Wait(until) -> sleep until then (or shutdown)
//!     (first)     -> consent = ConsentSource::refresh()     (re-reads the clinic file if changed)
//!                    scheduler.retain(may_leave)            (held readings leave the queue,
//!                                                            stay pending, audited once)
//!     Fetch       -> batch = store.pending_where(size, may_leave)   size: uplink::batch, <= batch_size
//!                                                           (FIFO; corrupt records quarantined;
//!                                                            held readings skipped, not stalled on)
//!                    empty? wait for the pipeline's wake-up, a 30 s tick, or shutdown
//!                    scheduler.load(batch)
//!     Send(batch) -> build the Bundle (uplink::fhir)          mapping error -> Unmappable
//!                    send it (BundleSender), racing shutdown  shutdown -> return at once
//!                    classify the answer (uplink::outcome)    Accepted -> store.ack (the only way
//!                                                              a record leaves the outbox)
//!                    effect = scheduler.on_verdict(verdict, now)
//!                    carry the effect out: dead-letter a reading (never deleted), log a retry,
//!                    a pause (the alarm), a resume
//! ```
//!
//! One upload at a time per gateway (fhir-mapping.md §5.3). Conditional create makes a resend
//! of an already-committed Bundle harmless: the server answers `200 OK` for existing entries.
//! That is also why shutdown abandons an upload in flight instead of waiting for it: nothing is
//! acked before the answer, and the resend after a restart is idempotent.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::consent;
use crate::identity::ReadingId;
use crate::reading::Reading;
use crate::store::{Store, StoreError};
use crate::telemetry;
use crate::uplink::batch::{AdaptiveBatch, Exchanged};
use crate::uplink::client::{BundleSender, EncodedBody, SendError};
use crate::uplink::fhir::{self, GatewayInfo, MappingError};
use crate::uplink::metering::{DayLedger, Metering};
use crate::uplink::outcome::{self, Outcome, RetryReason};
use crate::uplink::scheduler::{Effect, Next, SchedulerConfig, UploadScheduler, Verdict};

/// How often the uploader looks at the outbox when nobody wakes it.
pub const IDLE_POLL: Duration = Duration::from_secs(30);

pub struct Uploader<S> {
    /// The outbox: the sled [`crate::store::Outbox`] in the daemon, any [`Store`] in tests.
    pub store: Arc<dyn Store>,
    pub sender: S,
    pub gateway: GatewayInfo,
    pub batch_size: usize,
    pub schedule: SchedulerConfig,
    pub wake: Arc<Notify>,
    /// Seeds the backoff jitter.
    pub seed: u64,
    /// Consent per patient ([`crate::consent`]); asked before every batch and every send.
    pub consent: ConsentSource,
    /// Upload windows and the daily byte budget (asked before every send), and the file that
    /// keeps the day's byte count across restarts (`None`: not kept).
    pub metering: Metering,
    pub ledger_file: Option<std::path::PathBuf>,
}

/// Acks of confirmed Bundles, written by a task of their own while the next Bundles are read,
/// built and sent: the outbox's `fdatasync` is off the upload's critical path, and acks that
/// queue up while one is written share the next one (group commit). At most [`ACKS_QUEUED`]
/// Bundles wait (then the uploader waits for the disk). Reads skip the readings being acked
/// ([`AckQueue::skip`]), so nothing confirmed is sent twice. An ack that fails leaves its
/// readings pending: they are resent, which conditional create makes harmless; so does a kill
/// before the queue is written.
struct AckQueue {
    state: Arc<Mutex<AckState>>,
    tx: Option<tokio::sync::mpsc::Sender<Vec<ReadingId>>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

/// Confirmed Bundles whose acks may wait for the disk at once.
const ACKS_QUEUED: usize = 8;

/// Readings whose ack is queued or being written, by id and by outbox sequence number (a read
/// passes over those by key, without opening them), and the sequence numbers of readings read
/// lately (so a confirmed reading's is known).
#[derive(Default)]
struct AckState {
    skip: Skip,
    seq_of: std::collections::HashMap<ReadingId, u64>,
}

/// What a read passes over.
#[derive(Clone, Default)]
struct Skip {
    ids: HashSet<ReadingId>,
    seqs: HashSet<u64>,
}

/// Most sequence numbers remembered for readings read but not confirmed (held, bisected,
/// dead-lettered); past it the memory starts again (a miss costs a record opened, not a
/// reading: the id is checked too).
const SEQS_REMEMBERED: usize = 65_536;

impl AckState {
    fn note_read(&mut self, records: impl IntoIterator<Item = (ReadingId, u64)>) {
        if self.seq_of.len() > SEQS_REMEMBERED {
            self.seq_of.clear();
        }
        self.seq_of.extend(records);
    }
}

fn lock(state: &Mutex<AckState>) -> std::sync::MutexGuard<'_, AckState> {
    state
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl AckQueue {
    fn new(store: Arc<dyn Store>) -> Self {
        let state: Arc<Mutex<AckState>> = Arc::default();
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<ReadingId>>(ACKS_QUEUED);
        let worker = Arc::clone(&state);
        let task = tokio::spawn(async move {
            while let Some(mut done) = rx.recv().await {
                while let Ok(more) = rx.try_recv() {
                    done.extend(more);
                }
                // By the sequence numbers they were read under, where known (the store then
                // does not open each record again); by id otherwise.
                let (mut read, mut unread) = (Vec::with_capacity(done.len()), Vec::new());
                {
                    let st = lock(&worker);
                    for id in &done {
                        match st.seq_of.get(id) {
                            Some(&seq) => read.push((*id.as_bytes(), seq)),
                            None => unread.push(*id.as_bytes()),
                        }
                    }
                }
                ack(Arc::clone(&store), read, unread).await;
                let mut st = lock(&worker);
                for id in &done {
                    st.skip.ids.remove(id);
                    if let Some(seq) = st.seq_of.remove(id) {
                        st.skip.seqs.remove(&seq);
                    }
                }
            }
        });
        Self {
            state,
            tx: Some(tx),
            task: Some(task),
        }
    }

    /// The readings whose ack is queued or being written.
    fn skip(&self) -> Skip {
        lock(&self.state).skip.clone()
    }

    /// Reports each of `accepted` (the server has it: in the order of the answers, before any
    /// later hold or pause is reported) and queues its ack (waits while [`ACKS_QUEUED`]
    /// Bundles are queued).
    async fn push(&mut self, accepted: Vec<outcome::Accepted>) {
        let mut ids = Vec::with_capacity(accepted.len());
        {
            let mut st = lock(&self.state);
            for a in &accepted {
                st.skip.ids.insert(a.reading_id);
                if let Some(seq) = st.seq_of.get(&a.reading_id).copied() {
                    st.skip.seqs.insert(seq);
                }
                ids.push(a.reading_id);
            }
        }
        for a in accepted {
            telemetry::UplinkAccepted {
                reading_id: &a.reading_id,
                created: a.is_created(),
                location: a.location.as_deref(),
            }
            .emit();
        }
        let Some(tx) = &self.tx else { return };
        if let Err(e) = tx.send(ids).await {
            tracing::error!(
                readings = e.0.len(),
                "ack task gone; the confirmed readings stay pending and will be resent"
            );
        }
    }

    /// Writes every queued ack, then stops the ack task.
    async fn close(&mut self) {
        self.tx = None;
        if let Some(task) = self.task.take() {
            if let Err(e) = task.await {
                tracing::error!(error = %e, "ack task failed");
            }
        }
    }
}

/// A batch read (and its Bundle built) by a read task. Read ahead, it is used only if the
/// Bundle in flight was confirmed and the next step is a fresh batch; dropped otherwise (its
/// readings simply stay pending). The consent filter is applied again before it is sent, as
/// for any batch; the Bundle built ahead is used only for exactly the readings then sent.
struct Ahead {
    batch: Vec<Reading>,
    held: Vec<(ReadingId, String, String)>,
    built: Option<Prepared>,
}

/// A Bundle built ahead, and its request body encoded ahead when the sender takes one
/// ([`BundleSender::encodes_ahead`]): serializing and compressing happen while the Bundle
/// before is in flight, not between its answer and the next request.
struct Prepared {
    built: fhir::BuiltBundle,
    body: Option<EncodedBody>,
}

/// Removes confirmed readings from the outbox (durably): `read` by the id and sequence number
/// of the record each was read from ([`Store::ack_read`]: a pair whose sequence number is no
/// longer its id's removes nothing, and the reading is resent), `unread` by id alone.
async fn ack(store: Arc<dyn Store>, read: Vec<([u8; 32], u64)>, unread: Vec<[u8; 32]>) {
    let acked = tokio::task::spawn_blocking(move || {
        let mut n = store.ack_read(&read)?;
        if !unread.is_empty() {
            n += store.ack(&unread)?;
        }
        Ok::<_, StoreError>(n)
    });
    match acked.await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => {
            // The server has them; a resend is harmless (conditional create).
            tracing::error!(error = %e, "server accepted the readings but the outbox could not record it; they will be resent");
        }
        Err(e) => tracing::error!(error = %e, "ack task failed"),
    }
}

/// How long a hold sleeps before it looks again (the clock may be set, the day may change).
const HOLD_RECHECK: Duration = Duration::from_secs(60);

/// The metering state of one run: the day's byte count and the hold being logged.
struct Meter {
    ledger: DayLedger,
    held: Option<&'static str>,
}

/// The gateway's local time: upload windows and the budget's day are the clinic's.
fn local_now() -> chrono::NaiveDateTime {
    // The edge: the uploader's task loop reads the clock.
    chrono::Local::now().naive_local()
}

impl Meter {
    /// The count recorded in `file` for today, or a fresh day (a missing or unreadable file
    /// starts from zero: a budget is a cost limit, no reading depends on it).
    fn load(file: Option<&std::path::Path>) -> Meter {
        let today = local_now().date();
        let recorded = file
            .and_then(|f| std::fs::read_to_string(f).ok())
            .and_then(|t| DayLedger::parse(&t).ok());
        Meter {
            ledger: recorded
                .unwrap_or(DayLedger {
                    day: today,
                    used: 0,
                })
                .for_day(today),
            held: None,
        }
    }

    /// Adds `bytes` sent now to the day's count and writes it (temporary file, then rename).
    fn record(&mut self, bytes: u64, file: Option<&std::path::Path>) {
        if bytes == 0 {
            return;
        }
        let mut ledger = self.ledger.for_day(local_now().date());
        ledger.used = ledger.used.saturating_add(bytes);
        self.ledger = ledger;
        let Some(file) = file else { return };
        let tmp = file.with_extension("tmp");
        let written =
            std::fs::write(&tmp, ledger.to_text()).and_then(|()| std::fs::rename(&tmp, file));
        if let Err(error) = written {
            telemetry::UplinkLedgerUnwritable {
                path: file,
                error: &error,
            }
            .emit();
        }
    }
}

/// Where the consent state comes from: the config's list and the clinic's file, re-read when
/// the file changes (modification time or size), so withdrawal needs no restart.
pub struct ConsentSource {
    configured: Vec<crate::reading::PatientRef>,
    file: Option<std::path::PathBuf>,
    seen: Option<(Option<std::time::SystemTime>, u64)>,
    state: consent::Consent,
    audited: std::collections::HashSet<crate::identity::ReadingId>,
}

impl ConsentSource {
    pub fn new(cfg: &crate::config::ConsentConfig) -> Self {
        let mut s = Self {
            configured: cfg.withdrawn.clone(),
            file: cfg.file.clone(),
            seen: None,
            state: consent::consent(&cfg.withdrawn, None),
            audited: Default::default(),
        };
        s.refresh();
        s
    }

    /// Re-reads the file if it changed (or could not be read before). The edge: file I/O.
    pub fn refresh(&mut self) -> &consent::Consent {
        let Some(path) = &self.file else {
            return &self.state;
        };
        let meta = std::fs::metadata(path)
            .ok()
            .map(|m| (m.modified().ok(), m.len()));
        if meta.is_some() && meta == self.seen {
            return &self.state;
        }
        let text = std::fs::read_to_string(path)
            .map_err(|e| consent::ConsentError::Unreadable(e.kind().to_string()));
        self.state = consent::consent(
            &self.configured,
            Some(text.as_deref().map_err(Clone::clone)),
        );
        self.seen = meta;
        if let consent::Consent::Unknown(e) = &self.state {
            telemetry::ConsentSourceError { error: e }.emit();
            self.seen = None;
        }
        &self.state
    }

    /// One audit event per held reading per process.
    fn audit(&mut self, held: &[(crate::identity::ReadingId, String, String)]) {
        for (id, short, device) in held {
            if self.audited.insert(*id) {
                telemetry::ConsentWithheld {
                    reading: short,
                    device,
                }
                .emit();
            }
        }
    }
}

fn held_entry(r: &Reading) -> (crate::identity::ReadingId, String, String) {
    (r.id, r.short_id(), r.device.name.clone())
}

/// What happened to one Bundle, as the log and the dead letters need it.
enum Exchange {
    Delivered,
    Unmappable(MappingError),
    NoAnswer(SendError),
    NotConfirmed(RetryReason),
    Refused,
    Rejected { status: u16, detail: String },
}

/// What one exchange tells the adaptive batch size.
fn exchanged(sent: usize, took: Duration, verdict: &Verdict, exchange: &Exchange) -> Exchanged {
    match (verdict, exchange) {
        (Verdict::Delivered, _) => Exchanged::Delivered { sent, took },
        (Verdict::TooLarge, _) => Exchanged::TooLarge { sent },
        (_, Exchange::NoAnswer(SendError::Timeout(_))) => Exchanged::TimedOut { sent },
        _ => Exchanged::Other,
    }
}

impl<S: BundleSender> Uploader<S> {
    /// Runs until shutdown. Returns at once when `shutdown` fires, also mid-upload (after
    /// writing the acks of the Bundles the server confirmed).
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut acks = AckQueue::new(Arc::clone(&self.store));
        self.rounds(&mut acks, &shutdown).await;
        acks.close().await;
    }

    async fn rounds(&mut self, acks: &mut AckQueue, shutdown: &CancellationToken) {
        let mut scheduler = UploadScheduler::new(self.schedule, self.seed, |r: &Reading| {
            r.id.as_bytes().to_vec()
        });
        // `batch_size` is the cap; the size read for each fresh batch adapts within it.
        let mut size = AdaptiveBatch::new(self.batch_size);
        let mut meter = Meter::load(self.ledger_file.as_deref());
        // Devices the server confirmed, referenced as `Device/<id>` instead of resent.
        let mut known = fhir::KnownDevices::default();
        // The next fresh batch, read and built while a Bundle is in flight, and the Bundle
        // built ahead for the batch then loaded from it.
        let mut ahead: Option<tokio::task::JoinHandle<Result<Ahead, StoreError>>> = None;
        // With the Device cache the Bundle was built against: a Bundle built ahead while the
        // previous one was out is used only if the cache did not change meanwhile (the answer
        // that taught it the Devices must not be followed by a Bundle sending them again).
        let mut prebuilt: Option<(Vec<ReadingId>, fhir::KnownDevices, Prepared)> = None;
        let mut ahead_known = fhir::KnownDevices::default();
        while !shutdown.is_cancelled() {
            // The watchdog: a beat per round; the waits (backoff, pause, an empty outbox) are
            // idle, the store and the HTTP request are work (bounded by uplink.timeout_secs).
            crate::ops::watchdog::beat();
            // Consent is asked again before every send: a withdrawal during a retry, a pause
            // or a bisection takes the patient's readings out of the queue before the next
            // request (nothing is out at this point).
            let state = self.consent.refresh();
            let held: Vec<_> = scheduler
                .retain(|r| state.may_leave(r))
                .iter()
                .map(held_entry)
                .collect();
            self.consent.audit(&held);
            match scheduler.next(Instant::now().into_std()) {
                Next::Wait { until } => {
                    let stop = crate::ops::watchdog::idle(async {
                        tokio::select! {
                            _ = tokio::time::sleep_until(Instant::from_std(until)) => false,
                            _ = shutdown.cancelled() => true,
                        }
                    })
                    .await;
                    if stop {
                        return;
                    }
                }
                Next::Fetch => {
                    let (mut batch, mut built) = match ahead.take() {
                        Some(task) => self.take_ahead(task).await,
                        None => (self.pending(size.size(), acks).await, None),
                    };
                    // Read ahead for a fast answer; the answer was slower: the size stayed.
                    if batch.len() > size.size() {
                        batch.truncate(size.size());
                        built = None;
                    }
                    batch.truncate(fhir::readings_that_fit(&batch));
                    prebuilt = built.map(|b| {
                        let ids = batch.iter().map(|r| r.id).collect();
                        (ids, std::mem::take(&mut ahead_known), b)
                    });
                    if batch.is_empty() {
                        // Nothing to send: a rotated client certificate is picked up now, not
                        // at the next upload (the status and the expiry alarm follow it).
                        self.sender.idle_tick();
                        let stop = crate::ops::watchdog::idle(async {
                            tokio::select! {
                                _ = self.wake.notified() => false,
                                _ = tokio::time::sleep(IDLE_POLL) => false,
                                _ = shutdown.cancelled() => true,
                            }
                        })
                        .await;
                        if stop {
                            return;
                        }
                    } else {
                        scheduler.load(batch);
                    }
                }
                Next::Send(batch) => {
                    if !self.metering.is_unlimited() {
                        let now = local_now();
                        let used = meter.ledger.for_day(now.date()).used;
                        if let Some(hold) = self.metering.hold(now, used) {
                            if meter.held != Some(hold.class()) {
                                meter.held = Some(hold.class());
                                telemetry::UplinkHeld { hold: &hold }.emit();
                            }
                            let wait = (hold.until() - now)
                                .to_std()
                                .unwrap_or(Duration::ZERO)
                                .clamp(Duration::from_secs(1), HOLD_RECHECK);
                            let stop = crate::ops::watchdog::idle(async {
                                tokio::select! {
                                    _ = tokio::time::sleep(wait) => false,
                                    _ = shutdown.cancelled() => true,
                                }
                            })
                            .await;
                            if stop {
                                return;
                            }
                            continue;
                        }
                        if meter.held.take().is_some() {
                            telemetry::UplinkHoldEnded.emit();
                        }
                    }
                    // The next fresh batch is read and built while this one is out (only when
                    // nothing else is queued: bisection halves and retries come first).
                    ahead = (scheduler.queued() == batch.len()).then(|| {
                        let n = size.if_delivered_fast(batch.len());
                        ahead_known = known.clone();
                        self.read_ahead(n, &batch, acks, &known)
                    });
                    let ids: Vec<ReadingId> = batch.iter().map(|r| r.id).collect();
                    let built = prebuilt.take().and_then(|(for_ids, built_with, b)| {
                        (for_ids == ids && built_with == known).then_some(b)
                    });
                    let sent_before = self.sender.body_bytes_sent();
                    let started = Instant::now();
                    let exchanged_now = self
                        .exchange(&batch, built, &mut known, acks, shutdown)
                        .await;
                    meter.record(
                        self.sender.body_bytes_sent().saturating_sub(sent_before),
                        self.ledger_file.as_deref(),
                    );
                    let Some((verdict, exchange)) = exchanged_now else {
                        return;
                    };
                    if verdict != Verdict::Delivered {
                        // Not a fresh batch next: the readings read ahead stay pending.
                        ahead = None;
                    }
                    let before = size.size();
                    let seen = exchanged(batch.len(), started.elapsed(), &verdict, &exchange);
                    let after = size.observe(seen);
                    if after != before {
                        tracing::debug!(
                            from = before,
                            to = after,
                            cap = size.cap(),
                            "uplink batch size adapted"
                        );
                    }
                    let effect = scheduler.on_verdict(verdict, Instant::now().into_std());
                    if matches!(seen, Exchanged::TimedOut { .. }) && after < batch.len() {
                        // The same readings go again, in Bundles of the new size.
                        scheduler.split_front(after);
                    }
                    self.carry_out(effect, &exchange).await;
                }
            }
        }
    }

    /// The next `n` pending readings that may leave, skipping those whose ack is being
    /// written.
    async fn pending(&mut self, n: usize, acks: &AckQueue) -> Vec<Reading> {
        let task = self.read_task(n, acks.skip(), acks, None);
        self.take_ahead(task).await.0
    }

    /// Starts reading the next batch (at most `n` readings that may leave, skipping `batch`,
    /// about to be sent, and the readings being acked) and building its Bundle with what is
    /// known of the Devices now.
    fn read_ahead(
        &mut self,
        n: usize,
        batch: &[Reading],
        acks: &AckQueue,
        known: &fhir::KnownDevices,
    ) -> tokio::task::JoinHandle<Result<Ahead, StoreError>> {
        let mut skip = acks.skip();
        skip.ids.extend(batch.iter().map(|r| r.id));
        self.read_task(n, skip, acks, Some(known.clone()))
    }

    /// Reads up to `n` pending readings that may leave, except `skip`, in a blocking task; with
    /// `known`, also builds their Bundle.
    fn read_task(
        &mut self,
        n: usize,
        skip: Skip,
        acks: &AckQueue,
        known: Option<fhir::KnownDevices>,
    ) -> tokio::task::JoinHandle<Result<Ahead, StoreError>> {
        let encode = self.sender.encodes_ahead();
        let store = Arc::clone(&self.store);
        let state = self.consent.refresh().clone();
        let gateway = self.gateway.clone();
        let noted = Arc::clone(&acks.state);
        tokio::task::spawn_blocking(move || {
            let mut held = Vec::new();
            let (records, _) = store.pending_readings(n, &skip.seqs, &mut |r| {
                if skip.ids.contains(&r.id) {
                    return false;
                }
                let ok = state.may_leave(r);
                if !ok {
                    held.push(held_entry(r));
                }
                ok
            })?;
            // The sequence number is what the ack goes by (`Store::ack_read`): only for a
            // record that holds the reading it is sealed for (anything else is acked by id, and
            // the store checks the record again).
            lock(&noted).note_read(
                records
                    .iter()
                    .filter(|p| p.id == *p.value.id.as_bytes())
                    .map(|p| (p.value.id, p.seq)),
            );
            let mut batch: Vec<Reading> = records.into_iter().map(|p| p.value).collect();
            let built = match known {
                Some(known) if !batch.is_empty() => {
                    batch.truncate(fhir::readings_that_fit(&batch));
                    fhir::build_bundle(&gateway, &batch, &known)
                        .ok()
                        .map(|built| Prepared {
                            // A body that does not encode here is encoded (and its error
                            // reported) when the Bundle is sent.
                            body: encode
                                .and_then(|gzip| EncodedBody::encode(&built.json, gzip).ok()),
                            built,
                        })
                }
                _ => None,
            };
            Ok(Ahead { batch, held, built })
        })
    }

    /// The batch (and Bundle) a read task made; an empty batch if the outbox could not be read.
    async fn take_ahead(
        &mut self,
        task: tokio::task::JoinHandle<Result<Ahead, StoreError>>,
    ) -> (Vec<Reading>, Option<Prepared>) {
        match task.await {
            Ok(Ok(a)) => {
                self.consent.audit(&a.held);
                (a.batch, a.built)
            }
            Ok(Err(e)) => {
                tracing::error!(error = %e, "cannot read the outbox");
                (Vec::new(), None)
            }
            Err(e) => {
                tracing::error!(error = %e, "outbox read task failed");
                (Vec::new(), None)
            }
        }
    }

    /// Builds, sends and classifies one Bundle; acks it if the server confirmed it. `None` if
    /// shutdown came first (the request is dropped, nothing is acked).
    ///
    /// `known`: the Devices to reference instead of resending; learnt from a commit, forgotten
    /// after anything else (a server that lost a Device rejects the reference). A reading-level
    /// refusal of a Bundle that referenced Devices is resent at once with their conditional
    /// creates, before it counts against any reading.
    async fn exchange(
        &self,
        batch: &[Reading],
        built: Option<Prepared>,
        known: &mut fhir::KnownDevices,
        acks: &mut AckQueue,
        shutdown: &CancellationToken,
    ) -> Option<(Verdict, Exchange)> {
        let mut result = self
            .exchange_with(batch, built, known, acks, shutdown)
            .await;
        if let Some((Verdict::Rejected { .. } | Verdict::EntriesFailed { .. }, _)) = &result {
            if !known.is_empty() {
                tracing::debug!(
                    devices = known.len(),
                    "uplink resends a refused Bundle with its Devices' conditional creates"
                );
                known.forget_all();
                result = self.exchange_with(batch, None, known, acks, shutdown).await;
            }
        }
        if let Some((verdict, _)) = &result {
            if !matches!(verdict, Verdict::Delivered | Verdict::Unmappable { .. })
                && !known.is_empty()
            {
                tracing::debug!(
                    devices = known.len(),
                    "uplink forgets the Devices it referenced; the next Bundle creates them again"
                );
                known.forget_all();
            }
        }
        result
    }

    async fn exchange_with(
        &self,
        batch: &[Reading],
        built: Option<Prepared>,
        known: &mut fhir::KnownDevices,
        acks: &mut AckQueue,
        shutdown: &CancellationToken,
    ) -> Option<(Verdict, Exchange)> {
        let (built, body) = match built.map_or_else(
            || fhir::build_bundle(&self.gateway, batch, known).map(|b| (b, None)),
            |p| Ok((p.built, p.body)),
        ) {
            Ok(v) => v,
            Err(e) => {
                let culprit = match e {
                    MappingError::IdentifierCollision => fhir::first_identifier_collision(batch),
                    _ => None,
                };
                return Some((Verdict::Unmappable { culprit }, Exchange::Unmappable(e)));
            }
        };
        let (json, entries, total) = (&built.json, &built.entries, built.entry_count);
        telemetry::BundleSent {
            json,
            entries: total,
            readings: batch,
        }
        .emit();
        let send = async {
            match body {
                Some(body) => self.sender.send_encoded(json, body).await,
                None => self.sender.send_json(json).await,
            }
        };
        let answer = tokio::select! {
            biased;
            _ = shutdown.cancelled() => return None,
            r = send => r,
        };
        let resp = match answer {
            Ok(r) => r,
            // No access token because the token endpoint refuses the credentials: server-wide,
            // like a 401 that persists after a token refresh (never a dead letter).
            Err(e) if e.pauses_uploads() => {
                return Some((Verdict::TokenRefused, Exchange::NoAnswer(e)))
            }
            Err(e) => return Some((Verdict::Retry { after: None }, Exchange::NoAnswer(e))),
        };
        // The edge: the wall clock, only to read a Retry-After HTTP-date.
        #[allow(clippy::disallowed_methods)]
        let now = chrono::Utc::now();
        let outcome = outcome::classify(
            resp.status,
            resp.retry_after.as_deref(),
            &resp.body,
            total,
            entries,
            now,
        );
        Some(match outcome {
            Outcome::Accepted(accepted) => {
                known.learn_from_response(&resp.body, &built.devices);
                acks.push(accepted).await;
                (Verdict::Delivered, Exchange::Delivered)
            }
            Outcome::EntriesFailed {
                suspects,
                status,
                detail,
            } => {
                let positions = batch
                    .iter()
                    .enumerate()
                    .filter(|(_, r)| suspects.contains(&r.id))
                    .map(|(i, _)| i)
                    .collect();
                (
                    Verdict::EntriesFailed {
                        suspects: positions,
                        status,
                    },
                    Exchange::Rejected { status, detail },
                )
            }
            Outcome::Retry { after, reason } => {
                (Verdict::Retry { after }, Exchange::NotConfirmed(reason))
            }
            Outcome::Reject {
                status,
                operation_outcome,
            } => (
                Verdict::Rejected { status },
                Exchange::Rejected {
                    status,
                    detail: operation_outcome.unwrap_or_else(|| "no OperationOutcome".into()),
                },
            ),
            Outcome::Split => (
                Verdict::TooLarge,
                Exchange::Rejected {
                    status: 413,
                    detail: "payload too large".into(),
                },
            ),
            Outcome::Refused { status } => (Verdict::Refused { status }, Exchange::Refused),
            // fhir-mapping.md §5.5: a "401 that persists after a token refresh" pauses. With
            // [uplink.oauth2] the client has already refreshed the token and resent once
            // (UplinkClient::send_bundle); without it the client certificate is the only
            // credential: pause either way.
            Outcome::Unauthorized => (Verdict::Refused { status: 401 }, Exchange::Refused),
        })
    }

    async fn carry_out(&self, effect: Option<Effect<Reading>>, exchange: &Exchange) {
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        match effect {
            None => {}
            Some(Effect::DeadLetter(reading)) => match exchange {
                Exchange::Rejected { status, detail } => {
                    let reason =
                        format!("FHIR server answered {status} to this reading alone: {detail}");
                    self.dead_letter(&reading, Some(*status), reason).await;
                }
                Exchange::Unmappable(e) => {
                    self.dead_letter(&reading, None, e.to_string()).await;
                }
                _ => tracing::error!(
                    "dead letter requested without a rejection; reading kept pending"
                ),
            },
            Some(Effect::RetryIn(delay)) => match exchange {
                Exchange::NoAnswer(error) => telemetry::UplinkSendFailed {
                    error,
                    retry_in_ms: ms(delay),
                }
                .emit(),
                Exchange::NotConfirmed(reason) => telemetry::UplinkRetry {
                    reason,
                    after_ms: ms(delay),
                }
                .emit(),
                _ => {}
            },
            Some(Effect::Paused {
                cause,
                next_probe_in,
            }) => telemetry::UplinkPaused {
                cause,
                next_probe_ms: ms(next_probe_in),
                error: match exchange {
                    Exchange::NoAnswer(e) => Some(e),
                    _ => None,
                },
            }
            .emit(),
            Some(Effect::StillPaused {
                next_probe_in,
                probes,
            }) => match exchange {
                // A probe that got no answer at all still says why (a TLS failure needs a
                // technician as much as the pause does). A refused token is what the pause's
                // alarm already said: not again.
                Exchange::NoAnswer(error) if !error.pauses_uploads() => {
                    telemetry::UplinkSendFailed {
                        error,
                        retry_in_ms: ms(next_probe_in),
                    }
                    .emit()
                }
                _ => telemetry::UplinkProbeFailed {
                    probes,
                    next_probe_ms: ms(next_probe_in),
                }
                .emit(),
            },
            Some(Effect::Resumed {
                cause,
                paused_for,
                probes,
            }) => telemetry::UplinkResumed {
                cause,
                paused_for_ms: ms(paused_for),
                probes,
            }
            .emit(),
        }
    }

    async fn dead_letter(&self, r: &Reading, status: Option<u16>, reason: String) {
        let store = Arc::clone(&self.store);
        let id = *r.id.as_bytes();
        let stored = reason.clone();
        match tokio::task::spawn_blocking(move || store.dead_letter(&id, &stored)).await {
            Ok(Ok(())) => telemetry::UplinkDeadLettered {
                reading_id: &r.id,
                status,
                reason: &reason,
            }
            .emit(),
            Ok(Err(e)) => {
                tracing::error!(error = %e, "cannot move a rejected reading to the dead letters; it stays pending")
            }
            Err(e) => tracing::error!(error = %e, "dead-letter task failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    //! The task around the scheduler, against a scripted server on a paused clock: timing is
    //! observed in virtual time, nothing really sleeps.
    use super::*;
    use crate::store::{NewRecord, Outbox, OutboxOptions, StoreKey};
    use crate::uplink::backoff::Backoff;
    use crate::uplink::client::RawResponse;
    use crate::uplink::fhir::tests::{bp, test_id};
    use crate::uplink::scheduler::REJECTION_STREAK_LIMIT;
    use serde_json::{json, Value};
    use std::future::Future;
    use std::sync::Mutex;

    const HOUR: Duration = Duration::from_secs(3600);

    #[derive(Clone, Copy, Debug)]
    enum Answer {
        /// An OperationOutcome with this status.
        Status(u16),
        /// This status with an empty body.
        Empty(u16),
        /// Commit (conditional create), answer 200 with a transaction-response.
        Commit,
        /// 200 in which the entry of the Observation whose identifier is this fails with 422;
        /// nothing committed (a transaction is all-or-nothing). Other Bundles: `Commit`.
        FailEntryOf(&'static str),
        /// `Commit`, after this long.
        Slow(Duration),
        /// 413 for a Bundle of more than this many Observations, else `Commit`.
        TooLargeAbove(usize),
        /// No answer in time (`SendError::Timeout`, after 10 s) for more than this many
        /// Observations, else `Commit`.
        TimeoutAbove(usize),
        /// No access token: the OAuth token endpoint refuses the credentials (nothing reaches
        /// the FHIR server; recorded as status 0).
        TokenRefused,
        /// No access token: the token endpoint cannot be reached (status 0).
        TokenUnreachable,
        /// `Commit`, then no answer (`SendError::Timeout`): the server has the Bundle, the
        /// gateway does not know it.
        CommitThenTimeout,
    }

    struct Server {
        script: Box<dyn Fn(Duration) -> Answer + Send + Sync>,
        start: Instant,
        requests: Mutex<Vec<(Duration, u16)>>,
        committed: Mutex<Vec<String>>,
        /// The number of Observations in every Bundle received, in order.
        sizes: Mutex<Vec<usize>>,
        /// The number of Device entries in every Bundle received, in order.
        devices: Mutex<Vec<usize>>,
        /// Answer Device entries with a `Device/<n>` location (a server the cache learns from).
        device_locations: bool,
        /// The Observation created for each identifier (the first commit's resource).
        resources: Mutex<std::collections::HashMap<String, Value>>,
        /// Test of the tests: commit every Observation again (no conditional create).
        no_dedup: bool,
        /// How often the uploader called [`BundleSender::idle_tick`].
        idle_ticks: std::sync::atomic::AtomicUsize,
    }

    #[derive(Clone)]
    struct Scripted(Arc<Server>);

    mod store_model;

    impl Scripted {
        fn new(script: impl Fn(Duration) -> Answer + Send + Sync + 'static) -> Scripted {
            Scripted(Arc::new(Server {
                script: Box::new(script),
                start: Instant::now(),
                requests: Mutex::new(Vec::new()),
                committed: Mutex::new(Vec::new()),
                sizes: Mutex::new(Vec::new()),
                devices: Mutex::new(Vec::new()),
                device_locations: false,
                resources: Mutex::new(std::collections::HashMap::new()),
                no_dedup: false,
                idle_ticks: std::sync::atomic::AtomicUsize::new(0),
            }))
        }
        /// As [`Scripted::new`], with Device entries answered with their location.
        fn with_device_locations(
            script: impl Fn(Duration) -> Answer + Send + Sync + 'static,
        ) -> Scripted {
            let mut s = Scripted::new(script);
            if let Some(server) = Arc::get_mut(&mut s.0) {
                server.device_locations = true;
            }
            s
        }
        fn devices(&self) -> Vec<usize> {
            self.0.devices.lock().unwrap().clone()
        }
        fn sizes(&self) -> Vec<usize> {
            self.0.sizes.lock().unwrap().clone()
        }
        fn requests(&self) -> Vec<(Duration, u16)> {
            self.0.requests.lock().unwrap().clone()
        }
        fn committed(&self) -> Vec<String> {
            self.0.committed.lock().unwrap().clone()
        }
    }

    fn observation_ids(bundle: &Value) -> Vec<(usize, String)> {
        bundle["entry"]
            .as_array()
            .unwrap()
            .iter()
            .enumerate()
            .filter(|(_, e)| e["request"]["url"] == "Observation")
            .map(|(i, e)| {
                let id = e["resource"]["identifier"][0]["value"].as_str().unwrap();
                (i, id.to_owned())
            })
            .collect()
    }

    fn outcome_body(status: u16) -> Vec<u8> {
        serde_json::to_vec(&json!({"resourceType": "OperationOutcome", "issue": [
            {"severity": "error", "code": "invalid", "diagnostics": format!("scripted {status}")}
        ]}))
        .unwrap()
    }

    impl Server {
        async fn answer(&self, bundle: &Value) -> Result<RawResponse, SendError> {
            let at = Instant::now() - self.start;
            let answer = (self.script)(at);
            let token_problem = match answer {
                Answer::TokenRefused => Some(crate::uplink::oauth::TokenProblem::Refused {
                    status: 400,
                    error: "invalid_client".into(),
                }),
                Answer::TokenUnreachable => Some(crate::uplink::oauth::TokenProblem::Unreachable(
                    Box::new(SendError::Refused {
                        host: "auth.example".into(),
                        port: 443,
                    }),
                )),
                _ => None,
            };
            if let Some(problem) = token_problem {
                self.requests.lock().unwrap().push((at, 0));
                return Err(SendError::Token(problem));
            }
            let n = observation_ids(bundle).len();
            self.sizes.lock().unwrap().push(n);
            let is_device = |i: usize| bundle["entry"][i]["request"]["url"] == "Device";
            let total_entries = bundle["entry"].as_array().map_or(0, Vec::len);
            self.devices
                .lock()
                .unwrap()
                .push((0..total_entries).filter(|i| is_device(*i)).count());
            let answer = match answer {
                Answer::TooLargeAbove(max) if n > max => Answer::Empty(413),
                Answer::TimeoutAbove(max) if n > max => {
                    tokio::time::sleep(Duration::from_secs(10)).await;
                    return Err(SendError::Timeout(Duration::from_secs(10)));
                }
                Answer::TooLargeAbove(_) | Answer::TimeoutAbove(_) => Answer::Commit,
                other => other,
            };
            let raw = |status, body| RawResponse {
                status,
                retry_after: None,
                body,
            };
            let total = bundle["entry"].as_array().unwrap().len();
            let obs = observation_ids(bundle);
            let response = match answer {
                Answer::Status(s) => raw(s, outcome_body(s)),
                Answer::Empty(s) => raw(s, Vec::new()),
                Answer::FailEntryOf(needle) if obs.iter().any(|(_, id)| id == needle) => {
                    let entries: Vec<Value> = (0..total)
                        .map(|i| {
                            if obs.iter().any(|(j, id)| *j == i && id == needle) {
                                json!({"response": {"status": "422 Unprocessable Entity",
                                    "outcome": {"resourceType": "OperationOutcome", "issue": [
                                        {"severity": "error", "diagnostics": "scripted entry failure"}]}}})
                            } else {
                                json!({"response": {"status": "201 Created"}})
                            }
                        })
                        .collect();
                    raw(200, transaction_response(entries))
                }
                Answer::Commit
                | Answer::FailEntryOf(_)
                | Answer::Slow(_)
                | Answer::TooLargeAbove(_)
                | Answer::TimeoutAbove(_)
                | Answer::TokenRefused
                | Answer::TokenUnreachable
                | Answer::CommitThenTimeout => {
                    if let Answer::Slow(d) = answer {
                        tokio::time::sleep(d).await;
                    }
                    let mut committed = self.committed.lock().unwrap();
                    let entries: Vec<Value> = (0..total)
                        .map(|i| match obs.iter().find(|(j, _)| *j == i) {
                            Some((_, id)) if committed.contains(id) && !self.no_dedup => {
                                json!({"response": {"status": "200 OK"}})
                            }
                            Some((_, id)) => {
                                committed.push(id.clone());
                                self.resources
                                    .lock()
                                    .unwrap()
                                    .entry(id.clone())
                                    .or_insert_with(|| bundle["entry"][i]["resource"].clone());
                                json!({"response": {"status": "201 Created", "location": format!("Observation/{id}/_history/1")}})
                            }
                            None if self.device_locations && is_device(i) => json!({"response": {
                                "status": "201 Created",
                                "location": format!("Device/d{i}/_history/1")
                            }}),
                            None => json!({"response": {"status": "200 OK"}}),
                        })
                        .collect();
                    if let Answer::CommitThenTimeout = answer {
                        self.requests.lock().unwrap().push((at, 0));
                        return Err(SendError::Timeout(Duration::from_secs(10)));
                    }
                    raw(200, transaction_response(entries))
                }
            };
            self.requests.lock().unwrap().push((at, response.status));
            Ok(response)
        }
    }

    fn transaction_response(entries: Vec<Value>) -> Vec<u8> {
        serde_json::to_vec(
            &json!({"resourceType": "Bundle", "type": "transaction-response", "entry": entries}),
        )
        .unwrap()
    }

    impl BundleSender for Scripted {
        fn send(
            &self,
            bundle: &Value,
        ) -> impl Future<Output = Result<RawResponse, SendError>> + Send {
            let server = Arc::clone(&self.0);
            let bundle = bundle.clone();
            async move { server.answer(&bundle).await }
        }

        fn idle_tick(&self) {
            self.0
                .idle_ticks
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    fn reading(n: i64) -> Reading {
        let mut r = bp();
        r.id = test_id(n);
        r.observation_identifier = format!("obs-{n}");
        r
    }

    fn outbox(dir: &tempfile::TempDir, readings: &[Reading]) -> Arc<Outbox> {
        let store = Outbox::open(
            &dir.path().join("outbox"),
            StoreKey::from_bytes([7; 32]),
            OutboxOptions::default(),
        )
        .unwrap();
        let records: Vec<NewRecord<'_, Reading>> =
            readings.iter().map(Reading::as_record).collect();
        store.insert_records(&records).unwrap();
        Arc::new(store)
    }

    fn uploader(store: &Arc<Outbox>, server: &Scripted, batch_size: usize) -> Uploader<Scripted> {
        uploader_over(Arc::<Outbox>::clone(store), server, batch_size)
    }

    /// The test uploader over any [`crate::store::Store`] (the model test runs it on
    /// `MemStore` too).
    fn uploader_over(
        store: Arc<dyn crate::store::Store>,
        server: &Scripted,
        batch_size: usize,
    ) -> Uploader<Scripted> {
        Uploader {
            store,
            sender: server.clone(),
            gateway: GatewayInfo::new("gw", "0"),
            batch_size,
            schedule: SchedulerConfig {
                retry: Backoff::new(Duration::from_millis(100), Duration::from_secs(5)),
                pause: Backoff::new(Duration::from_secs(10), Duration::from_secs(300)),
                rejection_streak_limit: REJECTION_STREAK_LIMIT,
            },
            wake: Arc::new(Notify::new()),
            seed: 1,
            consent: ConsentSource::new(&Default::default()),
            metering: Metering::default(),
            ledger_file: None,
        }
    }

    /// Log lines of this test (the runtime is single-threaded: every task logs on this thread).
    #[derive(Clone, Default)]
    struct Logs(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Logs {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Logs {
        type Writer = Logs;
        fn make_writer(&'a self) -> Logs {
            self.clone()
        }
    }
    impl Logs {
        fn capture() -> (Logs, tracing::subscriber::DefaultGuard) {
            let logs = Logs::default();
            let subscriber = tracing_subscriber::fmt()
                .with_writer(logs.clone())
                .with_max_level(tracing::Level::DEBUG)
                .with_ansi(false)
                .finish();
            (logs, tracing::subscriber::set_default(subscriber))
        }
        /// The value after the first `key` (e.g. `probes=`).
        fn field(&self, key: &str) -> Option<String> {
            let text = String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned();
            let rest = &text[text.find(key)? + key.len()..];
            Some(
                rest.chars()
                    .take_while(char::is_ascii_alphanumeric)
                    .collect(),
            )
        }
        fn count(&self, needle: &str) -> usize {
            String::from_utf8_lossy(&self.0.lock().unwrap())
                .matches(needle)
                .count()
        }
    }

    fn counts(store: &Outbox) -> (u64, u64) {
        let s = store.stats().unwrap();
        (s.pending, s.dead)
    }

    /// Runs an uploader (cap `cap`) over `n` readings against `server` until all are delivered
    /// (or an hour passed); returns the Observations per Bundle the server received.
    async fn drain(n: i64, cap: usize, server: &Scripted) -> (Vec<usize>, (u64, u64)) {
        let dir = tempfile::tempdir().unwrap();
        let store = outbox(&dir, &(0..n).map(reading).collect::<Vec<_>>());
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(uploader(&store, server, cap).run(shutdown.clone()));
        for _ in 0..3600 {
            if counts(&store).0 == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        shutdown.cancel();
        task.await.unwrap();
        let mut committed = server.committed();
        committed.sort();
        committed.dedup();
        assert_eq!(committed.len(), n as usize, "every reading exactly once");
        (server.sizes(), counts(&store))
    }

    /// fhir-mapping.md §5.4 with the read-ahead: the second Bundle is built while the first is
    /// out, before its answer teaches the Device cache; it is rebuilt, so no Bundle after the
    /// first carries the Devices again (it did on a slow machine: the aarch64 qemu CI run).
    #[tokio::test(start_paused = true)]
    async fn a_bundle_built_ahead_does_not_resend_devices_the_answer_before_it_confirmed() {
        let server = Scripted::with_device_locations(|_| Answer::Slow(Duration::from_secs(1)));
        let (sizes, left) = drain(100, 50, &server).await;
        assert_eq!(left, (0, 0));
        assert!(sizes.len() >= 3, "{sizes:?}");
        let devices = server.devices();
        assert!(
            devices[0] > 0,
            "the first Bundle creates the Devices: {devices:?}"
        );
        assert!(
            devices[1..].iter().all(|d| *d == 0),
            "then Observations only: {devices:?} (sizes {sizes:?})"
        );
    }

    /// A burst drained at the default cap: acks are written by their own task while the next
    /// Bundles are read and sent, yet no confirmed reading is ever sent a second time (the
    /// reads skip the readings whose ack is not written yet).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_burst_drains_with_acks_in_the_background_and_sends_each_reading_once() {
        let server = Scripted::new(|_| Answer::Commit);
        let (sizes, left) = drain(3_000, 50, &server).await;
        assert_eq!(left, (0, 0));
        assert_eq!(
            sizes.iter().sum::<usize>(),
            3_000,
            "no reading sent twice: {sizes:?}"
        );
    }

    /// Issue #12, rotation on an idle gateway: with nothing to send the uploader still gives
    /// the sender an idle tick at least every `IDLE_POLL` (the real client then looks for a
    /// rotated certificate), so a new certificate is in use within a minute, not at the next
    /// upload; a busy uploader is not idle.
    #[tokio::test(start_paused = true)]
    async fn an_idle_uploader_ticks_its_sender_every_idle_poll() {
        use std::sync::atomic::Ordering::Relaxed;
        let server = Scripted::new(|_| Answer::Commit);
        let dir = tempfile::tempdir().unwrap();
        let store = outbox(&dir, &[]);
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(uploader(&store, &server, 10).run(shutdown.clone()));
        tokio::time::sleep(Duration::from_secs(1)).await;
        let first = server.0.idle_ticks.load(Relaxed);
        assert!(first >= 1, "no tick when it found nothing to send");
        tokio::time::sleep(2 * IDLE_POLL).await;
        let later = server.0.idle_ticks.load(Relaxed);
        assert!(
            later >= first + 2,
            "{first} then {later} ticks over two idle polls"
        );
        shutdown.cancel();
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn the_batch_grows_while_the_server_is_fast_up_to_the_cap() {
        let server = Scripted::new(|_| Answer::Commit);
        let (sizes, left) = drain(200, 40, &server).await;
        assert_eq!(left, (0, 0));
        assert_eq!(&sizes[..4], &[10, 20, 40, 40], "{sizes:?}");
        assert!(
            sizes.iter().all(|s| *s <= 40),
            "never above the cap: {sizes:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_413_above_n_entries_shrinks_the_batch_below_the_limit_and_loses_nothing() {
        let server = Scripted::new(|_| Answer::TooLargeAbove(25));
        let (sizes, left) = drain(300, 40, &server).await;
        assert_eq!(left, (0, 0), "all delivered, no dead letter");
        let refused = sizes.iter().filter(|s| **s > 25).count();
        // 40 refused once (then bisected into 20 + 20); later batches stay at most 39 and
        // grow from 20: 39 refused once more; then the ceiling is 38... each refusal lowers
        // it by at least one, and the size after each is half of the refused batch.
        assert!(refused >= 1, "{sizes:?}");
        let last: Vec<usize> = sizes.iter().rev().take(5).copied().collect();
        assert!(
            last.iter().all(|s| *s <= 25),
            "settled under the limit: {sizes:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn timeouts_shrink_the_batch_until_bundles_fit_and_everything_is_delivered() {
        let server = Scripted::new(|_| Answer::TimeoutAbove(4));
        let (sizes, left) = drain(60, 40, &server).await;
        assert_eq!(left, (0, 0));
        // 10 times out; the same 10 are retried (the scheduler keeps the batch), the fresh
        // batches after it are smaller: 5, then 2 (each timeout halves it).
        // 10 times out: its readings go again as 5 + 5 (times out: 2 + 2 + 1), ...
        assert_eq!(&sizes[..4], &[10, 5, 2, 2], "{sizes:?}");
        // ... and the size grows again while fast, up to the point that times out (no ceiling
        // for timeouts: a slow moment is not a limit), never above the cap.
        assert!(sizes.iter().all(|s| *s <= 40), "{sizes:?}");
        let timed_out = sizes.iter().filter(|s| **s > 4).count();
        let delivered = sizes.len() - timed_out;
        assert!(
            timed_out * 2 <= delivered + 2,
            "mostly Bundles that fit: {sizes:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_413_on_a_single_reading_is_a_dead_letter_not_a_loop() {
        let server = Scripted::new(|_| Answer::TooLargeAbove(0));
        let dir = tempfile::tempdir().unwrap();
        let store = outbox(&dir, &(0..3).map(reading).collect::<Vec<_>>());
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(uploader(&store, &server, 40).run(shutdown.clone()));
        tokio::time::sleep(Duration::from_secs(600)).await;
        shutdown.cancel();
        task.await.unwrap();
        assert_eq!(
            counts(&store),
            (0, 3),
            "three dead letters, nothing pending"
        );
        // 3 -> 1 + 2 -> 1 + 1: five Bundles, no retry of a single reading.
        assert_eq!(server.sizes().len(), 5, "{:?}", server.sizes());
    }

    /// Conditional-create idempotency with real HTTPS: three gateways' uploaders (each with its
    /// own copy of the same 30 readings: one store cannot be opened twice) replay them at the
    /// same time to the devkit's mTLS FHIR server. Every Observation exists exactly once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_replays_of_the_same_readings_create_each_observation_once() {
        use crate::uplink::client::{UplinkClient, UplinkTls};
        use vitalgate_devkit::fhir_server::{FhirTestServer, ServerConfig};
        use vitalgate_devkit::pki::TestPki;

        let dir = tempfile::tempdir().unwrap();
        let pki = TestPki::generate(&dir.path().join("pki")).unwrap();
        let fhir = FhirTestServer::start(ServerConfig::for_pki(&pki))
            .await
            .unwrap();
        let readings: Vec<Reading> = (0..30).map(reading).collect();
        let shutdown = CancellationToken::new();
        let mut stores = Vec::new();
        let mut tasks = Vec::new();
        for (i, cap) in [5, 7, 30].into_iter().enumerate() {
            let sub = tempfile::tempdir_in(dir.path()).unwrap();
            let store = outbox(&sub, &readings);
            let client = UplinkClient::new(&UplinkTls {
                fhir_base: fhir.base_url().parse().unwrap(),
                pin_spki_sha256: Vec::new(),
                post_quantum: crate::tls::PostQuantum::default(),
                ca_file: pki.ca_cert.clone(),
                client_cert: pki.client_cert.clone(),
                client_key: pki.client_key.clone(),
                allow_insecure_http: false,
                timeout: Duration::from_secs(20),
            })
            .unwrap();
            let up = Uploader {
                store: Arc::<Outbox>::clone(&store),
                sender: client,
                gateway: GatewayInfo::new("gw", "0"),
                batch_size: cap,
                schedule: SchedulerConfig {
                    retry: Backoff::new(Duration::from_millis(50), Duration::from_millis(500)),
                    pause: Backoff::new(Duration::from_millis(50), Duration::from_millis(500)),
                    rejection_streak_limit: REJECTION_STREAK_LIMIT,
                },
                wake: Arc::new(Notify::new()),
                seed: i as u64,
                consent: ConsentSource::new(&Default::default()),
                metering: Metering::default(),
                ledger_file: None,
            };
            tasks.push(tokio::spawn(up.run(shutdown.clone())));
            stores.push((sub, store));
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        while stores.iter().any(|(_, s)| counts(s).0 > 0) && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        shutdown.cancel();
        for t in tasks {
            t.await.unwrap();
        }
        for (_, s) in &stores {
            assert_eq!(counts(s), (0, 0), "every copy delivered, no dead letter");
        }
        let mut ids = fhir.observation_identifiers();
        let total = ids.len();
        ids.sort();
        ids.dedup();
        assert_eq!(total, ids.len(), "no identifier twice: {total} stored");
        let expected: std::collections::HashSet<String> = readings
            .iter()
            .map(|r| r.observation_identifier.clone())
            .collect();
        let stored: std::collections::HashSet<String> = ids
            .iter()
            .filter_map(|i| i.split_once('|').map(|(_, v)| v.to_owned()))
            .filter(|v| expected.contains(v))
            .collect();
        assert_eq!(stored, expected, "each reading's Observation is there");
        assert_eq!(fhir.duplicate_creates(), 0);
        // Every gateway sent its whole copy: at least 6 + 5 + 2 Bundles (caps 5, 7, 30; the
        // adaptive size starts at 10).
        assert!(fhir.request_count() >= 13, "{}", fhir.request_count());
    }

    #[tokio::test(start_paused = true)]
    async fn a_403_for_an_hour_keeps_every_reading_pending_alarms_once_and_delivers_all_after() {
        let (logs, _guard) = Logs::capture();
        let dir = tempfile::tempdir().unwrap();
        let store = outbox(&dir, &(0..6).map(reading).collect::<Vec<_>>());
        let server = Scripted::new(|at| {
            if at < HOUR {
                Answer::Status(403)
            } else {
                Answer::Commit
            }
        });
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(uploader(&store, &server, 4).run(shutdown.clone()));

        tokio::time::sleep(HOUR - Duration::from_secs(1)).await;
        assert_eq!(counts(&store), (6, 0), "all pending, no dead letter");
        assert!(server.committed().is_empty());
        tokio::time::sleep(Duration::from_secs(400)).await;
        assert_eq!(counts(&store), (0, 0), "all delivered, no dead letter");
        let mut committed = server.committed();
        committed.sort();
        assert_eq!(
            committed,
            (0..6).map(|i| format!("obs-{i}")).collect::<Vec<_>>()
        );
        shutdown.cancel();
        task.await.unwrap();

        assert_eq!(
            logs.count("ALARM: the FHIR server refuses this gateway"),
            1,
            "one alarm per episode"
        );
        assert_eq!(logs.count("pause ended"), 1);
        let paused_for: u64 = logs
            .field("paused_for_secs=")
            .and_then(|v| v.parse().ok())
            .unwrap();
        assert!((3600..=3901).contains(&paused_for), "{paused_for}");
        assert_eq!(logs.count("dead letter"), 0);
        // The probes: 10 s, doubling (with jitter) up to the 300 s cap.
        let refused: Vec<Duration> = server
            .requests()
            .iter()
            .filter(|(_, s)| *s == 403)
            .map(|(t, _)| *t)
            .collect();
        let gaps: Vec<Duration> = refused.windows(2).map(|w| w[1] - w[0]).collect();
        assert!(
            gaps.iter().all(|g| *g <= Duration::from_secs(301)),
            "{gaps:?}"
        );
        assert!(
            gaps.iter().skip(5).all(|g| *g >= Duration::from_secs(150)),
            "{gaps:?}"
        );
        assert!((12..=30).contains(&refused.len()), "{}", refused.len());
        let first_ok = server.requests().iter().find(|(_, s)| *s == 200).unwrap().0;
        assert!(first_ok >= HOUR && first_ok <= HOUR + Duration::from_secs(301));
    }

    /// `[uplink.oauth2]`: an unreachable token endpoint is retried like the FHIR server (no
    /// alarm); one that refuses the credentials pauses uploads with its own alarm, once, keeps
    /// every reading pending (no dead letter), and the readings go once it grants tokens again.
    #[tokio::test(start_paused = true)]
    async fn a_refused_token_pauses_with_its_own_alarm_and_an_unreachable_endpoint_is_retried() {
        let (logs, _guard) = Logs::capture();
        let dir = tempfile::tempdir().unwrap();
        let store = outbox(&dir, &(0..4).map(reading).collect::<Vec<_>>());
        let minute = Duration::from_secs(60);
        let server = Scripted::new(move |at| {
            if at < minute {
                Answer::TokenUnreachable
            } else if at < 30 * minute {
                Answer::TokenRefused
            } else {
                Answer::Commit
            }
        });
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(uploader(&store, &server, 4).run(shutdown.clone()));

        tokio::time::sleep(minute - Duration::from_secs(1)).await;
        assert_eq!(counts(&store), (4, 0));
        assert_eq!(logs.count("ALARM"), 0, "unreachable: retried, no alarm");
        assert_eq!(logs.count("no OAuth access token for the FHIR server"), 1);
        // Retried with the transient backoff (100 ms doubling to 5 s): many attempts.
        assert!(server.requests().len() >= 10, "{}", server.requests().len());

        tokio::time::sleep(29 * minute).await;
        assert_eq!(counts(&store), (4, 0), "all pending, no dead letter");
        assert_eq!(
            logs.count("ALARM: the OAuth token endpoint refuses this gateway's credentials"),
            1,
            "one alarm per episode"
        );
        assert_eq!(logs.count("invalid_client"), 1, "the reason, in the alarm");
        tokio::time::sleep(Duration::from_secs(400)).await;
        assert_eq!(counts(&store), (0, 0), "all delivered");
        shutdown.cancel();
        task.await.unwrap();
        assert_eq!(logs.count("pause ended"), 1);
        assert_eq!(logs.count("dead letter"), 0);
        let mut committed = server.committed();
        committed.sort();
        assert_eq!(
            committed,
            (0..4).map(|i| format!("obs-{i}")).collect::<Vec<_>>()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_withdrawal_during_a_pause_takes_the_patients_queued_readings_out_before_the_next_probe(
    ) {
        let (logs, _guard) = Logs::capture();
        let dir = tempfile::tempdir().unwrap();
        let of = |n: i64, patient: &str| {
            let mut r = reading(n);
            r.patient = patient.parse().unwrap();
            r
        };
        // Interleaved, so every queued Bundle holds readings of both patients.
        let readings: Vec<Reading> = (0..6)
            .map(|n| of(n, if n % 2 == 0 { "Patient/a" } else { "Patient/b" }))
            .collect();
        let store = outbox(&dir, &readings);
        let file = dir.path().join("consent.txt");
        std::fs::write(&file, "# nobody withdrawn\n").unwrap();
        let server = Scripted::new(|at| {
            if at < Duration::from_secs(600) {
                Answer::Status(403)
            } else {
                Answer::Commit
            }
        });
        let mut up = uploader(&store, &server, 6);
        up.consent = ConsentSource::new(&crate::config::ConsentConfig {
            withdrawn: Vec::new(),
            file: Some(file.clone()),
            purge_after: None,
        });
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(up.run(shutdown.clone()));

        // The first Bundle (all six) was refused: the batch is queued, the uploader paused.
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(server.requests().len(), 1);
        std::fs::write(&file, "# clinic export\nPatient/a\n").unwrap();
        tokio::time::sleep(Duration::from_secs(1200)).await;
        shutdown.cancel();
        task.await.unwrap();

        let mut committed = server.committed();
        committed.sort();
        assert_eq!(
            committed,
            vec!["obs-1", "obs-3", "obs-5"],
            "only patient b left"
        );
        assert_eq!(counts(&store), (3, 0), "patient a's readings stay pending");
        assert_eq!(
            logs.count("AUDIT consent withdrawn"),
            3,
            "one audit event per held reading, however often it is skipped"
        );
        assert!(
            server.requests().len() >= 3,
            "probes were sent while paused"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn ten_single_rejections_in_a_row_turn_into_a_pause_without_more_dead_letters() {
        let (logs, _guard) = Logs::capture();
        let dir = tempfile::tempdir().unwrap();
        let store = outbox(&dir, &(0..12).map(reading).collect::<Vec<_>>());
        let server = Scripted::new(|at| {
            if at < 2 * HOUR {
                Answer::Status(422)
            } else {
                Answer::Commit
            }
        });
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(uploader(&store, &server, 12).run(shutdown.clone()));
        tokio::time::sleep(2 * HOUR - Duration::from_secs(1)).await;
        assert_eq!(counts(&store), (3, 9), "nine dead letters, then a pause");
        assert_eq!(logs.count("rejected every reading sent alone"), 1);
        tokio::time::sleep(Duration::from_secs(400)).await;
        assert_eq!(counts(&store), (0, 9));
        shutdown.cancel();
        task.await.unwrap();
        assert_eq!(logs.count("pause ended"), 1);
        let reasons: Vec<String> = store
            .dead_letters()
            .unwrap()
            .into_iter()
            .map(|d| d.reason)
            .collect();
        assert!(
            reasons
                .iter()
                .all(|r| r.contains("422") && r.contains("scripted 422")),
            "the OperationOutcome is kept: {reasons:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_200_with_one_failed_entry_dead_letters_exactly_that_reading_and_delivers_the_others()
    {
        let dir = tempfile::tempdir().unwrap();
        let store = outbox(&dir, &(0..5).map(reading).collect::<Vec<_>>());
        let server = Scripted::new(|_| Answer::FailEntryOf("obs-3"));
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(uploader(&store, &server, 5).run(shutdown.clone()));
        tokio::time::sleep(Duration::from_secs(60)).await;
        shutdown.cancel();
        task.await.unwrap();
        assert_eq!(counts(&store), (0, 1));
        let dead = store.dead_letters().unwrap();
        assert_eq!(dead[0].id, Some(*test_id(3).as_bytes()));
        assert!(dead[0].reason.contains("422"), "{}", dead[0].reason);
        assert!(
            dead[0].reason.contains("scripted entry failure"),
            "{}",
            dead[0].reason
        );
        let mut committed = server.committed();
        committed.sort();
        assert_eq!(committed, ["obs-0", "obs-1", "obs-2", "obs-4"]);
        // The first answer, the others resent alone, the suspect alone: no retry loop.
        assert_eq!(server.requests().len(), 3, "{:?}", server.requests());
    }

    #[tokio::test(start_paused = true)]
    async fn an_empty_202_or_204_does_not_ack() {
        let dir = tempfile::tempdir().unwrap();
        let store = outbox(&dir, &(0..3).map(reading).collect::<Vec<_>>());
        let minute = Duration::from_secs(60);
        let server = Scripted::new(move |at| {
            if at < minute {
                Answer::Empty(202)
            } else if at < 2 * minute {
                Answer::Empty(204)
            } else {
                Answer::Commit
            }
        });
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(uploader(&store, &server, 5).run(shutdown.clone()));
        tokio::time::sleep(2 * minute - Duration::from_secs(1)).await;
        assert_eq!(
            counts(&store),
            (3, 0),
            "nothing acked, nothing dead-lettered"
        );
        let statuses: Vec<u16> = server.requests().iter().map(|(_, s)| *s).collect();
        assert!(
            statuses.contains(&202) && statuses.contains(&204),
            "{statuses:?}"
        );
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert_eq!(counts(&store), (0, 0));
        shutdown.cancel();
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_during_a_slow_request_returns_at_once_and_acks_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = outbox(&dir, &(0..3).map(reading).collect::<Vec<_>>());
        let server = Scripted::new(|_| Answer::Slow(HOUR));
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(uploader(&store, &server, 5).run(shutdown.clone()));
        tokio::time::sleep(Duration::from_secs(1)).await;
        let asked = Instant::now();
        shutdown.cancel();
        task.await.unwrap();
        // Virtual time: had the task waited for the answer, the clock would have jumped an hour.
        assert!(
            asked.elapsed() < Duration::from_secs(1),
            "{:?}",
            asked.elapsed()
        );
        assert_eq!(counts(&store), (3, 0));
        assert!(server.committed().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn of_two_readings_under_one_identifier_the_later_is_dead_lettered_not_acked() {
        // The store refuses such a pair (invariant 4); this is the uploader's second line.
        let dir = tempfile::tempdir().unwrap();
        let first = reading(1);
        let mut later = reading(2);
        later.observation_identifier = first.observation_identifier.clone();
        later.components[0].value = device_drivers::Decimal::from_int(151);
        let third = reading(3);
        let store = Outbox::open(
            &dir.path().join("outbox"),
            StoreKey::from_bytes([7; 32]),
            OutboxOptions::default(),
        )
        .unwrap();
        store
            .insert_many([&first, &later, &third].map(|r| (*r.id.as_bytes(), r)))
            .unwrap();
        let store = Arc::new(store);
        let server = Scripted::new(|_| Answer::Commit);
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(uploader(&store, &server, 5).run(shutdown.clone()));
        tokio::time::sleep(Duration::from_secs(10)).await;
        shutdown.cancel();
        task.await.unwrap();
        assert_eq!(counts(&store), (0, 1));
        let dead = store.dead_letters().unwrap();
        assert_eq!(dead[0].id, Some(*later.id.as_bytes()));
        assert!(
            dead[0].reason.starts_with("identifier_collision"),
            "{}",
            dead[0].reason
        );
        assert_eq!(server.committed(), ["obs-1", "obs-3"]);
    }
}
