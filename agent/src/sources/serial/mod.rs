//! The serial source: one task per port. It opens the port (tokio-serial), feeds the bytes to the
//! device's decoder, reduces the stream ([`crate::pipeline::reduce`]) and hands the reduced
//! records to the pipeline. The raw stream never reaches the pipeline or the store.
//!
//! ```text
//! loop (one select!, every branch cancel-safe):
//!   shutdown                      -> hand over what is held, drop the open window, return
//!   port open && read(buf)        -> decode -> reduce -> queue of reduced records (bounded)
//!                   error / EOF   -> "port lost" (once), close, reopen with backoff
//!   port closed && reopen timer   -> open: ok -> "opened again" | error -> log once per episode
//!   every second                  -> close reduction windows that ended; silence alarm
//!   nothing in flight && queue    -> send the oldest reduced record to the pipeline
//!   in flight answered            -> durable or rejected: drop it | store failed: hold, retry
//! ```
//!
//! Properties:
//! - **The port reader never waits for the store.** Reading is a branch of the same `select!`
//!   as handing over, and it is always enabled: a slow or failing store delays hand-over only.
//!   At 9600 baud the kernel's 4 KiB tty buffer holds about 4 s of data; the work per read
//!   (decode + reduce) is microseconds. A kernel overrun would show as decode errors
//!   (checksum, sync), which are counted.
//! - **Back-pressure.** A stream cannot be paused, so when the store refuses writes only the
//!   *reduced* records are held, in a queue of at most [`MAX_HELD`]; when it is full the oldest
//!   is dropped and counted (`serial_readings_dropped`), with one error line per episode.
//! - **Unplug and replug.** A read error or end of file closes the port; it is reopened by its
//!   configured path (a `/dev/serial/by-id/` link comes back with the device) with a backoff of
//!   [`REOPEN_INITIAL`] doubling to [`REOPEN_MAX`]. One warning when the port is lost, one when
//!   an open fails (an error naming the fix for a permission problem), one info line when it
//!   opens again: never a line per retry at info level. Each open starts a fresh decoder.
//! - **Silence.** No decoded record for the device's `silence_alarm_secs` raises one alarm line
//!   (with a hint: port closed, bytes that do not decode, or no bytes) and a counter; the next
//!   record logs that data resumed.
//! - **Supervision.** The task returns only at shutdown: a missing port, a permission problem
//!   or a store failure is retried, never a reason to end (a source that ends makes the agent
//!   exit 70).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use device_drivers::serial::{Decoder, Event};
use tokio::io::AsyncReadExt;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::SerialDevice;
use crate::pipeline::reduce::{Counts, Reduced, Reducer};
use crate::pipeline::{CaptureClock, DeviceContext, Ingest, Outcome};
use crate::reading::Source;
use crate::telemetry;
use crate::uplink::backoff::Backoff;

pub mod port;

/// Bytes per read. More than a second of data at 9600 baud.
pub const READ_BUF: usize = 4096;
/// Reduced records held while the store refuses writes.
pub const MAX_HELD: usize = 1024;
/// First delay before reopening a lost port; doubles up to [`REOPEN_MAX`].
pub const REOPEN_INITIAL: Duration = Duration::from_millis(250);
pub const REOPEN_MAX: Duration = Duration::from_secs(5);
/// Retry of a reduced record the store refused.
const STORE_RETRY_INITIAL: Duration = Duration::from_millis(500);
const STORE_RETRY_MAX: Duration = Duration::from_secs(30);
/// How often reduction windows and the silence alarm are checked.
const TICK: Duration = Duration::from_secs(1);
/// At shutdown, how long to wait for the pipeline to take each held record.
const HANDOVER_AT_SHUTDOWN: Duration = Duration::from_secs(1);

/// Reads one serial device until `shutdown`.
pub async fn run(
    cfg: SerialDevice,
    device: Arc<DeviceContext>,
    tx: mpsc::Sender<Ingest>,
    shutdown: CancellationToken,
) {
    #[allow(clippy::disallowed_methods)] // the edge: the reducer starts now
    let started = Utc::now();
    let mut task = SerialTask {
        reducer: Reducer::new(cfg.reduction.clone(), started),
        device,
        tx,
        held: VecDeque::new(),
        in_flight: None,
        store_retry_at: None,
        store_failures: 0,
        dropped_episode: false,
        silence: Silence::new(Instant::now()),
        cfg,
    };
    task.run(shutdown).await;
}

struct SerialTask {
    cfg: SerialDevice,
    device: Arc<DeviceContext>,
    tx: mpsc::Sender<Ingest>,
    reducer: Reducer,
    /// Reduced records not yet durable, oldest first. The front one may be in flight.
    held: VecDeque<Reduced>,
    in_flight: Option<oneshot::Receiver<Outcome>>,
    /// While the store refuses writes: when to try again.
    store_retry_at: Option<Instant>,
    store_failures: u32,
    dropped_episode: bool,
    silence: Silence,
}

/// The port's state between reads.
enum PortState {
    Open {
        stream: tokio_serial::SerialStream,
        decoder: Box<dyn Decoder>,
    },
    Closed {
        reopen_at: Instant,
        attempt: u32,
        /// When the current episode of unavailability began (`None`: never opened yet).
        since: Option<Instant>,
        /// Whether this episode's open failure was logged (once per episode).
        reported: bool,
    },
}

/// What happened to the port.
enum PortEvent {
    Read(Result<usize, port::Lost>),
    ReopenDue,
}

impl SerialTask {
    async fn run(&mut self, shutdown: CancellationToken) {
        let name = self.device.name.clone();
        let reopen = Backoff::new(REOPEN_INITIAL, REOPEN_MAX);
        let mut port = PortState::Closed {
            reopen_at: Instant::now(),
            attempt: 0,
            since: None,
            reported: false,
        };
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut buf = vec![0u8; READ_BUF];
        // A permit borrows its sender: reserve on a local clone, not on `self`.
        let tx = self.tx.clone();
        tracing::info!(device = %name, port = %self.cfg.port.display(), protocol = self.cfg.protocol.name(), reduction = self.cfg.reduction.name(), "serial source started");
        loop {
            // The watchdog: every turn of this loop is progress; the tick below makes one at
            // least every TICK while nothing happens, so only a wedged branch stops the beats.
            crate::ops::watchdog::beat();
            let can_send = self.in_flight.is_none()
                && !self.held.is_empty()
                && self.store_retry_at.is_none_or(|t| t <= Instant::now());
            let retry_at = self.store_retry_at;
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                ev = port_event(&mut port, &mut buf) => match ev {
                    PortEvent::Read(Ok(n)) => self.on_bytes(&mut port, buf.get(..n).unwrap_or(&[])),
                    PortEvent::Read(Err(lost)) => {
                        telemetry::SerialPortLost { device: &name, port: &self.cfg.port, reason: &lost }.emit();
                        port = PortState::Closed {
                            reopen_at: Instant::now() + REOPEN_INITIAL,
                            attempt: 1,
                            since: Some(Instant::now()),
                            reported: false,
                        };
                    }
                    PortEvent::ReopenDue => {
                        if let PortState::Closed { attempt, since, reported, .. } = port {
                            port = self.open(attempt, since, reported, &reopen);
                        }
                    }
                },
                _ = tick.tick() => self.on_tick(matches!(port, PortState::Open { .. })),
                permit = tx.reserve(), if can_send => {
                    if let (Ok(permit), Some(r)) = (permit, self.held.front()) {
                        let (done, rx) = oneshot::channel();
                        permit.send(self.ingest(r.clone(), Some(done)));
                        self.in_flight = Some(rx);
                    }
                    // A closed channel means the pipeline is gone: the app is shutting down.
                }
                outcome = answer(&mut self.in_flight) => self.on_outcome(outcome),
                _ = sleep_until_opt(retry_at), if retry_at.is_some() && !can_send => {
                    self.store_retry_at = None;
                }
            }
        }
        self.shutdown().await;
    }

    /// Decodes, reduces and queues what one read brought.
    fn on_bytes(&mut self, port: &mut PortState, bytes: &[u8]) {
        let PortState::Open { decoder, .. } = port else {
            return;
        };
        #[allow(clippy::disallowed_methods)] // the edge: these bytes arrived now
        let now = Utc::now();
        let before = decoder.stats();
        let events = decoder.feed(bytes);
        let after = decoder.stats();
        let mut records = 0u64;
        let mut errors = 0u64;
        let mut counts = Counts::default();
        for ev in events {
            match ev {
                Event::Record(record) => {
                    records += 1;
                    let step = self.reducer.push(record, now);
                    counts.add(step.counts);
                    self.hold(step.out);
                }
                Event::Error(_) => errors += 1,
            }
        }
        telemetry::SerialBytesDecoded {
            device: &self.device.name,
            bytes: bytes.len() as u64,
            discarded: after.bytes_discarded.saturating_sub(before.bytes_discarded),
            records,
            decode_errors: errors,
        }
        .emit();
        self.silence.bytes(bytes.len() as u64, errors);
        if records > 0 {
            if let Some(silent_for) = self.silence.record(Instant::now()) {
                telemetry::SerialDataResumed {
                    device: &self.device.name,
                    silent_for,
                }
                .emit();
            }
        }
        self.report(&counts);
    }

    fn on_tick(&mut self, port_open: bool) {
        #[allow(clippy::disallowed_methods)] // the edge: windows close on the wall clock
        let now = Utc::now();
        let step = self.reducer.tick(now);
        self.report(&step.counts);
        self.hold(step.out);
        if let Some(limit) = self.cfg.silence_alarm {
            if let Some(alarm) = self.silence.check(Instant::now(), limit) {
                telemetry::SerialDeviceSilent {
                    device: &self.device.name,
                    port: &self.cfg.port,
                    silent_for: alarm.silent_for,
                    port_open,
                    bytes: alarm.bytes,
                    decode_errors: alarm.decode_errors,
                }
                .emit();
            }
        }
    }

    fn open(
        &mut self,
        attempt: u32,
        since: Option<Instant>,
        reported: bool,
        reopen: &Backoff,
    ) -> PortState {
        match port::open(&self.cfg.port, &self.cfg.settings) {
            Ok(stream) => {
                let Some(decoder) = self.cfg.protocol.decoder() else {
                    // Unreachable with a checked config (built-in names are checked at load);
                    // keep the task alive rather than end the agent.
                    tracing::error!(device = %self.device.name, protocol = self.cfg.protocol.name(), "no decoder for this protocol");
                    return PortState::Closed {
                        reopen_at: Instant::now() + REOPEN_MAX,
                        attempt,
                        since,
                        reported: true,
                    };
                };
                telemetry::SerialPortOpened {
                    device: &self.device.name,
                    port: &self.cfg.port,
                    settings: &self.cfg.settings,
                    after: since.map(|s| s.elapsed()),
                }
                .emit();
                PortState::Open { stream, decoder }
            }
            Err(e) => {
                let delay = reopen.ceiling(attempt);
                // The first failure of an episode is logged; the retries are not (debug).
                telemetry::SerialOpenFailed {
                    device: &self.device.name,
                    port: &self.cfg.port,
                    reason: &e,
                    permission: e.is_permission(),
                    first: !reported,
                    retry_in: delay,
                }
                .emit();
                PortState::Closed {
                    reopen_at: Instant::now() + delay,
                    attempt: attempt.saturating_add(1),
                    since: since.or(Some(Instant::now())),
                    reported: true,
                }
            }
        }
    }

    /// Queues reduced records, dropping the oldest beyond [`MAX_HELD`] (never the one in flight).
    fn hold(&mut self, out: Vec<Reduced>) {
        let mut dropped = 0u64;
        for r in out {
            if self.held.len() >= MAX_HELD {
                let victim = if self.in_flight.is_some() { 1 } else { 0 };
                if self.held.remove(victim).is_some() {
                    dropped += 1;
                }
            }
            self.held.push_back(r);
        }
        if dropped > 0 {
            telemetry::SerialReadingsDropped {
                device: &self.device.name,
                dropped,
                first: !self.dropped_episode,
            }
            .emit();
            self.dropped_episode = true;
        }
    }

    fn on_outcome(&mut self, outcome: Option<Outcome>) {
        self.in_flight = None;
        match outcome {
            Some(o) if o.is_safe_to_ack() => {
                self.held.pop_front();
                self.store_failures = 0;
                self.store_retry_at = None;
                if self.held.len() < MAX_HELD / 2 {
                    self.dropped_episode = false;
                }
            }
            // StoreFailed, or the pipeline dropped the answer (aborted at shutdown): keep it.
            _ => {
                let delay =
                    Backoff::new(STORE_RETRY_INITIAL, STORE_RETRY_MAX).ceiling(self.store_failures);
                telemetry::SerialStoreRefused {
                    device: &self.device.name,
                    held: self.held.len(),
                    first: self.store_failures == 0,
                    retry_in: delay,
                }
                .emit();
                self.store_failures = self.store_failures.saturating_add(1);
                self.store_retry_at = Some(Instant::now() + delay);
            }
        }
    }

    fn ingest(&self, r: Reduced, done: Option<oneshot::Sender<Outcome>>) -> Ingest {
        Ingest::Record {
            device: Arc::clone(&self.device),
            record: r.record,
            source: Source::Serial {
                port: self.cfg.port.display().to_string(),
            },
            clock: CaptureClock::default(),
            received_at: r.at,
            delivery: None,
            done,
        }
    }

    fn report(&self, c: &Counts) {
        if *c == Counts::default() {
            return;
        }
        telemetry::StreamReduced {
            device: &self.device.name,
            invalid_status: c.invalid_status,
            no_value: c.no_value,
            reduced_away: c.reduced,
            out: c.passed + c.windows_sent,
            windows_insufficient: c.windows_insufficient,
            windows_partial: c.windows_partial,
        }
        .emit();
    }

    /// Hands what is held to the pipeline (it drains what it receives before it stops) and
    /// drops the window in progress, counted.
    async fn shutdown(&mut self) {
        #[allow(clippy::disallowed_methods)] // the edge: windows that ended by now are complete
        let now = Utc::now();
        let step = self.reducer.tick(now);
        self.report(&step.counts);
        self.hold(step.out);
        let partial = self.reducer.finish();
        self.report(&partial);
        // The record in flight is with the pipeline already.
        if self.in_flight.take().is_some() {
            self.held.pop_front();
        }
        while let Some(r) = self.held.pop_front() {
            let msg = self.ingest(r, None);
            match tokio::time::timeout(HANDOVER_AT_SHUTDOWN, self.tx.send(msg)).await {
                Ok(Ok(())) => {}
                _ => {
                    let lost = self.held.len() as u64 + 1;
                    telemetry::SerialReadingsDropped {
                        device: &self.device.name,
                        dropped: lost,
                        first: true,
                    }
                    .emit();
                    break;
                }
            }
        }
        tracing::info!(device = %self.device.name, "serial source stopped");
    }
}

/// An open port's next read (cancel-safe), or a closed port's next open attempt being due.
async fn port_event(port: &mut PortState, buf: &mut [u8]) -> PortEvent {
    match port {
        PortState::Open { stream, .. } => PortEvent::Read(match stream.read(buf).await {
            Ok(0) => Err(port::Lost::EndOfFile),
            Ok(n) => Ok(n),
            Err(e) => Err(port::Lost::Io(e)),
        }),
        PortState::Closed { reopen_at, .. } => {
            tokio::time::sleep_until(*reopen_at).await;
            PortEvent::ReopenDue
        }
    }
}

/// The pipeline's answer to the record in flight; pending when nothing is in flight.
async fn answer(in_flight: &mut Option<oneshot::Receiver<Outcome>>) -> Option<Outcome> {
    match in_flight {
        Some(rx) => rx.await.ok(),
        None => std::future::pending().await,
    }
}

async fn sleep_until_opt(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// The silence alarm's state (pure: instants are arguments).
#[derive(Debug)]
struct Silence {
    last_record: Instant,
    alarmed: bool,
    bytes: u64,
    decode_errors: u64,
}

struct SilenceAlarm {
    silent_for: Duration,
    bytes: u64,
    decode_errors: u64,
}

impl Silence {
    fn new(now: Instant) -> Self {
        Self {
            last_record: now,
            alarmed: false,
            bytes: 0,
            decode_errors: 0,
        }
    }

    fn bytes(&mut self, n: u64, errors: u64) {
        self.bytes += n;
        self.decode_errors += errors;
    }

    /// A record arrived. Returns how long the device was silent if an alarm was raised.
    fn record(&mut self, now: Instant) -> Option<Duration> {
        let was = self.alarmed.then(|| now.duration_since(self.last_record));
        self.last_record = now;
        self.alarmed = false;
        self.bytes = 0;
        self.decode_errors = 0;
        was
    }

    /// The alarm, once per silence.
    fn check(&mut self, now: Instant, limit: Duration) -> Option<SilenceAlarm> {
        let silent_for = now.duration_since(self.last_record);
        if self.alarmed || silent_for < limit {
            return None;
        }
        self.alarmed = true;
        Some(SilenceAlarm {
            silent_for,
            bytes: self.bytes,
            decode_errors: self.decode_errors,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_silence_alarm_fires_once_per_silence_and_clears_on_data() {
        let t0 = Instant::now();
        let mut s = Silence::new(t0);
        let limit = Duration::from_secs(60);
        assert!(s.check(t0 + Duration::from_secs(59), limit).is_none());
        s.bytes(100, 3);
        let a = s.check(t0 + Duration::from_secs(61), limit).unwrap();
        assert_eq!((a.bytes, a.decode_errors), (100, 3));
        assert!(
            s.check(t0 + Duration::from_secs(120), limit).is_none(),
            "once"
        );
        assert_eq!(
            s.record(t0 + Duration::from_secs(130)),
            Some(Duration::from_secs(130))
        );
        assert!(s.check(t0 + Duration::from_secs(150), limit).is_none());
        assert!(s.check(t0 + Duration::from_secs(191), limit).is_some());
        assert_eq!(
            s.record(t0 + Duration::from_secs(200)),
            Some(Duration::from_secs(70))
        );
        assert_eq!(s.record(t0 + Duration::from_secs(201)), None);
    }
}
