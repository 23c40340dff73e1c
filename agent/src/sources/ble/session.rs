//! One connection to one device, from `Connect` to disconnect:
//!
//! ```text
//! connect (timeout; disconnect on failure) -> discover services -> read Device Information
//!   -> check identity -> open the notification stream -> read Current Time (skew)
//!   -> subscribe measurement characteristics (re-pair once if the bond is gone and allowed)
//!   -> [RACP: report records >= last durable + 1]
//!   -> loop: notification -> decode (device-drivers) -> skip if at/below the high-water mark
//!            -> Ingest::Record -> answer Durable -> advance the mark
//!      RACP complete + every record durable -> (configured) delete exactly that range
//!      quiet for SETTLE and clock off by >= threshold -> write the clock (after the download)
//!      idle / device disconnect / shutdown -> end
//! ```
//!
//! Notifications are filtered by characteristic: BlueZ signals every read value too.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use btleplug::api::{CharPropFlags, Characteristic, Peripheral as _, WriteType};
use btleplug::platform::Peripheral;
use chrono::{DateTime, Utc};
use device_drivers::gatt::{self, clock, racp, uuid};
use device_drivers::{DeviceTime, Record};
use futures::StreamExt;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::bluez::{self, Bus};
use super::cursor::{self, CursorStore, DeviceCursor, NO_USER};
use super::error::{with_timeout, BleError};
use crate::config::{BleConfig, BleDeviceConfig, DisIdentity};
use crate::pipeline::{
    CaptureClock, DeviceClockReading, DeviceContext, Ingest, Outcome, ReportedInfo,
};
use crate::reading::{DeviceIdentifier, Source};
use crate::telemetry;

/// Quiet time after the last notification before the clock is written (records first).
const SETTLE: Duration = Duration::from_millis(1500);
/// Inactivity timeout of a RACP download.
const RACP_TIMEOUT_MS: u64 = 10_000;
/// Persist the cursor at least every this many durable records during a download.
const CURSOR_EVERY: u32 = 50;

/// What every session shares.
pub struct Shared {
    pub cfg: BleConfig,
    pub tx: mpsc::Sender<Ingest>,
    pub cursors: Arc<Mutex<CursorStore>>,
    pub bus: Arc<Bus>,
    /// Gateway clock NTP state, refreshed by the main loop (`None`: unknown).
    pub ntp: Arc<Mutex<Option<bool>>>,
}

/// A configured device.
pub struct DeviceEntry {
    pub name: String,
    pub cfg: BleDeviceConfig,
    pub base: Arc<DeviceContext>,
}

/// How a session ended without error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionEnd {
    /// We disconnected an idle device.
    Idle,
    /// The device (or the link) disconnected.
    DeviceDisconnected,
    /// Shutdown or adapter recovery.
    Stopped,
}

/// One record handed to the pipeline, waiting for its answer.
struct Pending {
    answer: oneshot::Receiver<Outcome>,
    sent_at: Instant,
    sequence: Option<u16>,
    /// (user key, device time) to advance the time mark to once durable, if allowed.
    time_mark: Option<(u8, DeviceTime)>,
    racp: bool,
}

struct Download {
    dl: racp::Download,
    racp_char: Characteristic,
    completed: Option<racp::CompletedDownload>,
    durable: u32,
    not_durable: bool,
    delete_sent: Option<racp::DeleteAllowed>,
}

/// Runs one session. Returns when the device disconnects, goes idle, `stop` fires, or an
/// operation fails; always leaves the device disconnected.
///
/// # Errors
/// The [`BleError`] that ended the session (connect failures, timeouts, identity mismatch...).
pub async fn run(
    shared: Arc<Shared>,
    dev: Arc<DeviceEntry>,
    peripheral: Peripheral,
    address: String,
    disconnected: CancellationToken,
    stop: CancellationToken,
) -> Result<SessionEnd, BleError> {
    let cfg = &shared.cfg;
    let connected = with_timeout("connect", cfg.connect_timeout, peripheral.connect()).await;
    if let Err(e) = connected {
        // btleplug's connect can leave the device connected after a timeout: always disconnect.
        let _ = with_timeout("disconnect", cfg.operation_timeout, peripheral.disconnect()).await;
        return Err(e);
    }
    telemetry::BleConnected { device: &dev.name }.emit();
    let mut s = Session::new(&shared, &dev, &peripheral, address);
    let result = tokio::select! {
        r = s.drive(&disconnected) => r,
        _ = stop.cancelled() => Ok(SessionEnd::Stopped),
    };
    // A clean end: we disconnected an idle device, or it hung up after being quiet for a
    // while: it had sent everything it meant to send.
    let clean = match &result {
        Ok(SessionEnd::Idle) => true,
        Ok(SessionEnd::DeviceDisconnected) => s.last_activity.elapsed() >= SETTLE,
        _ => false,
    };
    s.finish(clean).await;
    if !disconnected.is_cancelled() {
        let _ = with_timeout("disconnect", cfg.operation_timeout, peripheral.disconnect()).await;
    }
    result
}

struct Session<'a> {
    shared: &'a Shared,
    dev: &'a DeviceEntry,
    p: &'a Peripheral,
    address: String,
    chars: HashMap<u16, Characteristic>,
    ctx: Arc<DeviceContext>,
    quirks: Option<&'static gatt::quirks::QuirkProfile>,
    clock: DeviceClockReading,
    clock_written: bool,
    cursor: DeviceCursor,
    /// The time marks as they were when the session started: what earlier sessions made
    /// durable. Records are skipped against these only.
    start_marks: DeviceCursor,
    /// Per user: the latest time made durable this session (committed at the end).
    session_marks: HashMap<u8, DeviceTime>,
    cursor_dirty: bool,
    cursor_saved_at: u32,
    pending: VecDeque<Pending>,
    /// Every record handed over this session was answered durable (or safely rejected).
    all_durable: bool,
    download: Option<Download>,
    last_activity: Instant,
    durable_total: u32,
}

impl<'a> Session<'a> {
    fn new(shared: &'a Shared, dev: &'a DeviceEntry, p: &'a Peripheral, address: String) -> Self {
        let cursor = lock(&shared.cursors).get(&dev.name);
        Session {
            shared,
            dev,
            p,
            address,
            chars: HashMap::new(),
            ctx: Arc::clone(&dev.base),
            quirks: None,
            clock: DeviceClockReading {
                device_now: None,
                gateway_at_read: now(),
            },
            clock_written: false,
            start_marks: cursor.clone(),
            session_marks: HashMap::new(),
            cursor,
            cursor_dirty: false,
            cursor_saved_at: 0,
            pending: VecDeque::new(),
            all_durable: true,
            download: None,
            last_activity: Instant::now(),
            durable_total: 0,
        }
    }

    async fn drive(&mut self, disconnected: &CancellationToken) -> Result<SessionEnd, BleError> {
        let op = self.shared.cfg.operation_timeout;
        with_timeout("discover services", op, self.p.discover_services()).await?;
        self.chars = characteristics_by_uuid16(self.p);
        self.read_device_information().await?;
        // Open the stream before enabling anything, so nothing indicated is missed.
        let mut notes = with_timeout("notifications", op, self.p.notifications()).await?;
        self.read_clock().await;
        self.subscribe_all().await?;
        self.start_download().await?;

        loop {
            let deadline = self.next_deadline();
            tokio::select! {
                _ = disconnected.cancelled() => return Ok(SessionEnd::DeviceDisconnected),
                n = notes.next() => match n {
                    None => return Err(BleError::Disconnected),
                    Some(v) => {
                        let Some(short) = uuid16(&v.uuid) else { continue };
                        self.on_notification(short, v.value).await?;
                    }
                },
                r = front(&mut self.pending) => self.on_answer(r).await?,
                _ = tokio::time::sleep_until(deadline.into()) => {
                    if self.on_deadline().await? {
                        return Ok(SessionEnd::Idle);
                    }
                }
            }
        }
    }

    /// Called once the session ends, whatever the reason: waits (bounded) for the answers of
    /// records already handed over, so the marks reflect what is durable, then saves them.
    async fn finish(&mut self, clean: bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while let Some(p) = self.pending.front_mut() {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, &mut p.answer).await {
                Ok(r) => {
                    let _ = self.on_answer(r).await;
                }
                Err(_) => {
                    self.all_durable = false;
                    break;
                }
            }
        }
        // Time marks advance only after a clean end with every record durable: the device
        // then sent its whole memory this session, so nothing at or before the newest time
        // it sent is still unseen. Arrival order proves nothing (a live measurement can
        // overtake a replay, and the link can drop in between), so a session cut short never
        // moves the marks; the store's content id deduplicates its replays instead.
        let marks = std::mem::take(&mut self.session_marks);
        if clean && self.all_durable {
            for (user, t) in marks {
                let e = self.cursor.last_time.entry(user).or_insert(t);
                if t >= *e {
                    *e = t;
                    self.cursor_dirty = true;
                }
            }
        }
        self.save_cursor().await;
    }

    // ---- connect-time steps ----

    async fn read_device_information(&mut self) -> Result<(), BleError> {
        let r = read_reported(self.p, &self.chars, self.shared.cfg.operation_timeout).await;
        // Configured identity must match what the device says (a wrong device at this
        // address must never deliver readings to this patient).
        if let Some(field) = identity_mismatch(&self.dev.cfg.identity, &r) {
            telemetry::BleIdentityMismatch {
                device: &self.dev.name,
                field,
            }
            .emit();
            return Err(BleError::IdentityMismatch { field });
        }
        self.quirks = gatt::quirks::lookup(r.manufacturer.as_deref(), r.model.as_deref());
        // A stable identity: the System ID once seen is remembered (§5.1 identifier).
        if let Some(sysid) = &r.system_id {
            if self.cursor.system_id.as_ref() != Some(sysid) {
                self.cursor.system_id = Some(sysid.clone());
                self.cursor_dirty = true;
            }
        }
        let mut ctx = (*self.dev.base).clone();
        if let Some(sysid) = self
            .dev
            .cfg
            .identity
            .system_id
            .clone()
            .or(self.cursor.system_id.clone())
        {
            ctx.identifier = DeviceIdentifier::Eui64(sysid);
        }
        ctx.reported = r;
        self.ctx = Arc::new(ctx);
        Ok(())
    }

    async fn read_clock(&mut self) {
        let gateway_at_read = now();
        let device_now = match self.read(uuid::CURRENT_TIME).await {
            Some(b) => gatt::datetime::CurrentTime::decode(&b)
                .ok()
                .and_then(|ct| ct.timestamp.0.device_time()),
            None => None,
        };
        self.clock = DeviceClockReading {
            device_now,
            gateway_at_read,
        };
        if let Some(d) = device_now {
            if self.cursor.clock_went_back(d) {
                self.start_marks.last_time.clear();
                self.cursor_dirty = true;
                telemetry::BleClockWentBack {
                    device: &self.dev.name,
                }
                .emit();
            }
        }
    }

    async fn subscribe_all(&mut self) -> Result<(), BleError> {
        let mut wanted: Vec<u16> = Vec::new();
        for p in &self.dev.cfg.profiles {
            wanted.extend_from_slice(p.measurement_characteristics());
        }
        for u in wanted {
            let Some(c) = self.chars.get(&u).cloned() else {
                continue;
            };
            if !c
                .properties
                .intersects(CharPropFlags::NOTIFY | CharPropFlags::INDICATE)
            {
                continue;
            }
            self.subscribe(&c).await?;
        }
        Ok(())
    }

    /// Subscribes; if the device refuses for lack of a bond and the config allows, pairs once
    /// and retries.
    async fn subscribe(&self, c: &Characteristic) -> Result<(), BleError> {
        let op = self.shared.cfg.operation_timeout;
        match with_timeout("subscribe", op, self.p.subscribe(c)).await {
            Err(BleError::AuthenticationRequired { .. }) if self.dev.cfg.pair_if_bond_lost => {
                let path = bluez::device_path(&self.shared.cfg.adapter, &self.address);
                match self
                    .shared
                    .bus
                    .pair(&path, None, Duration::from_secs(30))
                    .await
                {
                    Ok(()) => telemetry::BlePaired {
                        device: &self.dev.name,
                    }
                    .emit(),
                    Err(e) => {
                        telemetry::BleBondRequired {
                            device: &self.dev.name,
                            error: &e,
                        }
                        .emit();
                        return Err(e);
                    }
                }
                with_timeout("subscribe", op, self.p.subscribe(c)).await
            }
            Err(e @ BleError::AuthenticationRequired { .. }) => {
                telemetry::BleBondRequired {
                    device: &self.dev.name,
                    error: &e,
                }
                .emit();
                Err(e)
            }
            other => other,
        }
    }

    async fn start_download(&mut self) -> Result<(), BleError> {
        let Some(profile) = self.dev.cfg.profiles.iter().find_map(|p| p.racp()) else {
            return Ok(());
        };
        let Some(racp_char) = self.chars.get(&uuid::RECORD_ACCESS_CONTROL_POINT).cloned() else {
            return Ok(());
        };
        self.subscribe(&racp_char).await?;
        let filter = match (profile, self.cursor.last_sequence) {
            (racp::RacpProfile::Glucose, Some(s)) if s < u16::MAX => {
                racp::DownloadFilter::FromSequence(s + 1)
            }
            _ => racp::DownloadFilter::All,
        };
        let mut dl = racp::Download::new(profile, filter, RACP_TIMEOUT_MS);
        let action = dl.start(self.ms());
        self.download = Some(Download {
            dl,
            racp_char,
            completed: None,
            durable: 0,
            not_durable: false,
            delete_sent: None,
        });
        self.act(action).await
    }

    // ---- events ----

    async fn on_notification(&mut self, short: u16, value: Vec<u8>) -> Result<(), BleError> {
        self.last_activity = Instant::now();
        let now_ms = self.ms();
        if short == uuid::RECORD_ACCESS_CONTROL_POINT {
            let Some(d) = self.download.as_mut() else {
                return Ok(());
            };
            if let Some(del) = &d.delete_sent {
                if racp::DeleteAllowed::is_success(&value) {
                    telemetry::BleRacpDeleted {
                        device: &self.dev.name,
                        records: d.durable,
                    }
                    .emit();
                    let _ = del;
                }
                return Ok(());
            }
            let action = d.dl.on_racp(now_ms, &value);
            return self.act(action).await;
        }
        let subscribed = self
            .dev
            .cfg
            .profiles
            .iter()
            .any(|p| p.measurement_characteristics().contains(&short));
        if !subscribed {
            return Ok(()); // a read's echo or an unrelated characteristic
        }
        if let Some(d) = self.download.as_mut() {
            if d.completed.is_none()
                && !d.dl.is_finished()
                && Some(short)
                    == self
                        .dev
                        .cfg
                        .profiles
                        .iter()
                        .find_map(|p| p.racp())
                        .map(|r| r.measurement_characteristic())
            {
                match d.dl.on_measurement(now_ms, &value) {
                    Ok(action) => return self.act(action).await,
                    Err(e) => {
                        self.undecodable(short, value, &e).await?;
                        return Ok(());
                    }
                }
            }
        }
        let ranges = gatt::plausibility::PlausibilityRanges::default();
        match gatt::decode_measurement_with(short, &value, self.quirks, &ranges) {
            Ok(Some(record)) => self.ingest(record, None, false).await,
            Ok(None) => Ok(()),
            Err(e) => self.undecodable(short, value, &e).await,
        }
    }

    async fn act(&mut self, action: racp::Action) -> Result<(), BleError> {
        let op = self.shared.cfg.operation_timeout;
        match action {
            racp::Action::Write(bytes) => {
                let Some(d) = self.download.as_ref() else {
                    return Ok(());
                };
                let c = d.racp_char.clone();
                with_timeout(
                    "racp write",
                    op,
                    self.p.write(&c, &bytes, WriteType::WithResponse),
                )
                .await
            }
            racp::Action::Store(stored) => {
                // A RACP record was stored by the device: without a usable time the pipeline
                // holds it rather than date it with the reception time.
                let mut record = stored.record;
                record.add_flag(device_drivers::Status::FromMemory);
                self.ingest(record, stored.sequence_number, true).await
            }
            racp::Action::Wait => Ok(()),
            racp::Action::Complete(done) => {
                if let Some(d) = self.download.as_mut() {
                    telemetry::BleRacpComplete {
                        device: &self.dev.name,
                        received: done.records_received(),
                    }
                    .emit();
                    d.completed = Some(done);
                }
                self.maybe_delete().await
            }
            racp::Action::Aborted => {
                telemetry::BleRacpFailed {
                    device: &self.dev.name,
                    reason: "aborted (timeout)",
                }
                .emit();
                Ok(())
            }
            racp::Action::Failed(f) => {
                telemetry::BleRacpFailed {
                    device: &self.dev.name,
                    reason: &f.to_string(),
                }
                .emit();
                Ok(())
            }
        }
    }

    /// Deletes the downloaded range once every record of it is durable (and only if
    /// configured). `DeleteAllowed` can only be had from a completed download and the count of
    /// durable records (device-drivers `racp`).
    async fn maybe_delete(&mut self) -> Result<(), BleError> {
        if !self.dev.cfg.delete_after_download || !self.pending.iter().all(|p| !p.racp) {
            return Ok(());
        }
        let Some(d) = self.download.as_mut() else {
            return Ok(());
        };
        if d.delete_sent.is_some() || d.not_durable {
            return Ok(());
        }
        let Some(done) = d.completed.take() else {
            return Ok(());
        };
        if done.records_received() == 0 {
            return Ok(());
        }
        match done.records_durable(d.durable) {
            Ok(allowed) => {
                let req = allowed.request();
                let c = d.racp_char.clone();
                d.delete_sent = Some(allowed);
                let op = self.shared.cfg.operation_timeout;
                with_timeout(
                    "racp delete",
                    op,
                    self.p.write(&c, &req, WriteType::WithResponse),
                )
                .await
            }
            Err(refused) => {
                telemetry::BleRacpFailed {
                    device: &self.dev.name,
                    reason: &format!("delete refused: {refused}"),
                }
                .emit();
                Ok(())
            }
        }
    }

    async fn undecodable(
        &mut self,
        short: u16,
        value: Vec<u8>,
        e: &gatt::GattError,
    ) -> Result<(), BleError> {
        let reason = format!("characteristic 0x{short:04X}: {e}");
        telemetry::PayloadUndecodable {
            source: &self.dev.name,
            reason: &reason,
            bytes: value.len(),
        }
        .emit();
        let (done, answer) = oneshot::channel();
        let msg = Ingest::Undecodable {
            source_label: format!("ble:{}", self.dev.name),
            payload: value,
            reason,
            done: Some(done),
        };
        self.shared
            .tx
            .send(msg)
            .await
            .map_err(|_| BleError::PipelineClosed)?;
        self.pending.push_back(Pending {
            answer,
            sent_at: Instant::now(),
            sequence: None,
            time_mark: None,
            racp: false,
        });
        Ok(())
    }

    async fn ingest(
        &mut self,
        record: Record,
        sequence: Option<u16>,
        racp: bool,
    ) -> Result<(), BleError> {
        let user = record.user_index.unwrap_or(NO_USER);
        let mut time_mark = None;
        if sequence.is_none() {
            if let Some(t) = record.device_time {
                if self.start_marks.already_durable(record.user_index, t) {
                    telemetry::BleAlreadyIngested {
                        device: &self.dev.name,
                    }
                    .emit();
                    return Ok(());
                }
                time_mark = Some((user, t));
            }
        }
        let synced = *lock(&self.shared.ntp);
        if synced == Some(false) {
            telemetry::BleGatewayClockUnsynchronized {
                device: &self.dev.name,
            }
            .emit();
        }
        let (done, answer) = oneshot::channel();
        let msg = Ingest::Record {
            device: Arc::clone(&self.ctx),
            record,
            source: Source::Ble {
                address: self.address.clone(),
            },
            clock: CaptureClock {
                device_clock: Some(Box::new(self.clock)),
                gateway_clock_synchronized: synced,
                ..CaptureClock::default()
            },
            received_at: now(),
            delivery: None,
            done: Some(done),
        };
        self.shared
            .tx
            .send(msg)
            .await
            .map_err(|_| BleError::PipelineClosed)?;
        self.pending.push_back(Pending {
            answer,
            sent_at: Instant::now(),
            sequence,
            time_mark,
            racp,
        });
        Ok(())
    }

    async fn on_answer(
        &mut self,
        r: Result<Outcome, oneshot::error::RecvError>,
    ) -> Result<(), BleError> {
        let Some(p) = self.pending.pop_front() else {
            return Ok(());
        };
        let safe = matches!(&r, Ok(o) if o.is_safe_to_ack());
        telemetry::ble_durable_latency(p.sent_at.elapsed());
        if safe {
            self.durable_total += 1;
            if let Some(seq) = p.sequence {
                let frozen = self.download.as_ref().is_some_and(|d| d.not_durable);
                if !frozen && self.cursor.last_sequence.is_none_or(|l| seq > l) {
                    self.cursor.last_sequence = Some(seq);
                    self.cursor_dirty = true;
                }
            }
            if let Some((user, t)) = p.time_mark {
                let e = self.session_marks.entry(user).or_insert(t);
                if t > *e {
                    *e = t;
                }
            }
            if p.racp {
                if let Some(d) = self.download.as_mut() {
                    d.durable += 1;
                }
            }
        } else {
            self.all_durable = false;
            // Not durable: never advance past it, never delete; the device resends it.
            if p.racp {
                if let Some(d) = self.download.as_mut() {
                    d.not_durable = true;
                }
            }
            telemetry::BleNotDurable {
                device: &self.dev.name,
            }
            .emit();
        }
        if self.cursor_dirty
            && self.durable_total.saturating_sub(self.cursor_saved_at) >= CURSOR_EVERY
        {
            self.save_cursor().await;
        }
        if p.racp {
            self.maybe_delete().await?;
        }
        Ok(())
    }

    /// Returns `true` when the session should end (idle).
    async fn on_deadline(&mut self) -> Result<bool, BleError> {
        let now_ms = self.ms();
        if let Some(d) = self.download.as_mut() {
            if d.dl.deadline().is_some_and(|dl| now_ms >= dl) {
                let action = d.dl.on_timeout(now_ms);
                self.act(action).await?;
                return Ok(false);
            }
        }
        let quiet = self.last_activity.elapsed();
        let downloading = self.download.as_ref().is_some_and(|d| !d.dl.is_finished());
        if !self.clock_written && quiet >= SETTLE && !downloading && self.pending.is_empty() {
            self.clock_written = true;
            self.save_cursor().await;
            self.set_clock().await;
        }
        Ok(quiet >= self.shared.cfg.idle_disconnect && self.pending.is_empty() && !downloading)
    }

    fn next_deadline(&self) -> Instant {
        let mut t = self.last_activity + self.shared.cfg.idle_disconnect;
        if !self.clock_written {
            t = t.min(self.last_activity + SETTLE);
        }
        if let Some(dl) = self.download.as_ref().and_then(|d| d.dl.deadline()) {
            let at = self.epoch() + Duration::from_millis(dl);
            t = t.min(at);
        }
        t.max(Instant::now() + Duration::from_millis(10))
    }

    /// Writes the device clock when it is off by at least the threshold (gatt-profiles.md §3),
    /// after the stored records are in (fhir-mapping.md §4). Not when the gateway's own clock
    /// is not synchronised: it would spread a wrong time.
    async fn set_clock(&mut self) {
        let Some(threshold) = self.dev.cfg.clock_set_threshold else {
            return;
        };
        if *lock(&self.shared.ntp) == Some(false) {
            return;
        }
        use gatt::quirks::ClockSetMethod;
        let method = self.quirks.map_or(ClockSetMethod::CurrentTime, |q| q.clock);
        let (char_uuid, min_skew) = match method {
            ClockSetMethod::CurrentTime => (uuid::CURRENT_TIME, 0),
            ClockSetMethod::CurrentTimeFirstNotificationOnly { min_skew_s } => {
                (uuid::CURRENT_TIME, i64::from(min_skew_s))
            }
            ClockSetMethod::DateTimeInMeasurementService => (uuid::DATE_TIME, 0),
            ClockSetMethod::Proprietary => return,
        };
        let Some(c) = self.chars.get(&char_uuid).cloned() else {
            return;
        };
        if !c.properties.contains(CharPropFlags::WRITE) {
            return;
        }
        let zone = self.ctx.utc_offset.local_minus_utc();
        let gateway = now();
        let threshold_s = i64::try_from(threshold.as_secs())
            .unwrap_or(i64::MAX)
            .max(min_skew);
        // The skew measured at connect, carried to now.
        let device_now = self.clock.device_now.map(|d| {
            let elapsed = (gateway - self.clock.gateway_at_read).num_seconds();
            DeviceTime::from_naive_unix_seconds(d.naive_unix_seconds() + elapsed).unwrap_or(d)
        });
        let policy = clock::ClockPolicy::default();
        if !clock::needs_clock_set(device_now, gateway.timestamp(), zone, threshold_s, &policy) {
            return;
        }
        let Some(local) = clock::gateway_local_time(gateway.timestamp(), zone) else {
            return;
        };
        let bytes: Vec<u8> = if char_uuid == uuid::CURRENT_TIME {
            gatt::datetime::encode_current_time(local, gatt::datetime::AdjustReason::MANUAL)
                .to_vec()
        } else {
            gatt::datetime::DateTimeCharacteristic::encode(local).to_vec()
        };
        let op = self.shared.cfg.operation_timeout;
        match with_timeout(
            "write clock",
            op,
            self.p.write(&c, &bytes, WriteType::WithResponse),
        )
        .await
        {
            Ok(()) => {
                let skew = device_now
                    .map(|d| gateway.timestamp() + i64::from(zone) - d.naive_unix_seconds());
                telemetry::BleClockSet {
                    device: &self.dev.name,
                    skew_s: skew,
                }
                .emit();
                // Records from now on are on the new clock.
                self.clock = DeviceClockReading {
                    device_now: Some(local),
                    gateway_at_read: gateway,
                };
                if self.cursor.clock_went_back(local) {
                    self.start_marks.last_time.clear();
                    self.session_marks.clear();
                    self.cursor_dirty = true;
                    self.save_cursor().await;
                }
            }
            Err(e) => telemetry::BleClockSetFailed {
                device: &self.dev.name,
                error: &e,
            }
            .emit(),
        }
    }

    // ---- helpers ----

    async fn read(&self, u: u16) -> Option<Vec<u8>> {
        let c = self.chars.get(&u)?;
        if !c.properties.contains(CharPropFlags::READ) {
            return None;
        }
        with_timeout("read", self.shared.cfg.operation_timeout, self.p.read(c))
            .await
            .ok()
    }

    async fn save_cursor(&mut self) {
        if !self.cursor_dirty {
            return;
        }
        self.cursor_dirty = false;
        self.cursor_saved_at = self.durable_total;
        let snapshot = {
            let mut store = lock(&self.shared.cursors);
            store.set(&self.dev.name, self.cursor.clone());
            store.snapshot()
        };
        let result = match snapshot {
            Ok((path, bytes)) => {
                tokio::task::spawn_blocking(move || cursor::write_atomic(&path, &bytes))
                    .await
                    .unwrap_or_else(|e| {
                        Err(cursor::CursorError::Io {
                            path: std::path::PathBuf::new(),
                            source: std::io::Error::other(e.to_string()),
                        })
                    })
            }
            Err(e) => Err(e),
        };
        if let Err(e) = result {
            telemetry::BleCursorSaveFailed { error: &e }.emit();
        }
    }

    fn epoch(&self) -> Instant {
        EPOCH.with(|e| *e)
    }

    fn ms(&self) -> u64 {
        u64::try_from(self.epoch().elapsed().as_millis()).unwrap_or(u64::MAX)
    }
}

thread_local! {
    /// The monotonic zero of RACP deadlines (the BLE runtime is one thread).
    static EPOCH: Instant = Instant::now();
}

/// The characteristics of a discovered peripheral, by 16-bit UUID (first of each).
fn characteristics_by_uuid16(p: &Peripheral) -> HashMap<u16, Characteristic> {
    let mut chars = HashMap::new();
    for c in p.characteristics() {
        if let Some(short) = uuid16(&c.uuid) {
            chars.entry(short).or_insert(c);
        }
    }
    chars
}

/// Reads the Device Information service (0x180A) of a connected, discovered peripheral:
/// whatever it has, each read bounded by `op`; what it lacks stays `None`.
async fn read_reported(
    p: &Peripheral,
    chars: &HashMap<u16, Characteristic>,
    op: Duration,
) -> ReportedInfo {
    use gatt::device_info::{DeviceInfoString, SystemId};
    let read = |u: u16| async move {
        let c = chars.get(&u)?;
        if !c.properties.contains(CharPropFlags::READ) {
            return None;
        }
        with_timeout("read", op, p.read(c)).await.ok()
    };
    let text =
        |b: Option<Vec<u8>>| b.and_then(|b| DeviceInfoString::decode(&b).ok().map(|s| s.value));
    let mut r = ReportedInfo {
        manufacturer: text(read(uuid::MANUFACTURER_NAME).await),
        model: text(read(uuid::MODEL_NUMBER).await),
        serial: text(read(uuid::SERIAL_NUMBER).await),
        firmware: text(read(uuid::FIRMWARE_REVISION).await),
        hardware: text(read(uuid::HARDWARE_REVISION).await),
        software: text(read(uuid::SOFTWARE_REVISION).await),
        system_id: None,
    };
    if let Some(b) = read(uuid::SYSTEM_ID).await {
        r.system_id = SystemId::decode(&b)
            .ok()
            .and_then(|s| crate::config::ble::canonical_system_id(&s.eui64()));
    }
    r
}

/// The first configured Device Information field the device reports otherwise (or not at
/// all); `None` when every configured field matches. Pure.
pub fn identity_mismatch(want: &DisIdentity, got: &ReportedInfo) -> Option<&'static str> {
    [
        ("manufacturer", &want.manufacturer, &got.manufacturer),
        ("model", &want.model, &got.model),
        ("serial", &want.serial, &got.serial),
        ("system_id", &want.system_id, &got.system_id),
    ]
    .into_iter()
    .find_map(|(field, w, g)| match w {
        Some(w) if g.as_deref() != Some(w.as_str()) => Some(field),
        _ => None,
    })
}

/// Whether a device that reported `got` is the one configured with `want`: at least one field
/// configured, and every configured field reported equal. Pure.
pub fn identifies(want: &DisIdentity, got: &ReportedInfo) -> bool {
    !want.is_empty() && identity_mismatch(want, got).is_none()
}

/// Identifies an advertiser that may be a device configured by Device Information only (no
/// `address`): connect (bounded; always disconnected afterwards), discover, read Device
/// Information, disconnect. Nothing is subscribed, written or ingested.
///
/// # Errors
/// Connect, discovery or timeout failures.
pub async fn probe(p: Peripheral, cfg: &BleConfig) -> Result<ReportedInfo, BleError> {
    let op = cfg.operation_timeout;
    let result = async {
        with_timeout("connect", cfg.connect_timeout, p.connect()).await?;
        with_timeout("discover services", op, p.discover_services()).await?;
        let chars = characteristics_by_uuid16(&p);
        Ok(read_reported(&p, &chars, op).await)
    }
    .await;
    let _ = with_timeout("disconnect", op, p.disconnect()).await;
    result
}

/// Awaits the oldest pending answer (never completes when there is none).
async fn front(q: &mut VecDeque<Pending>) -> Result<Outcome, oneshot::error::RecvError> {
    match q.front_mut() {
        Some(p) => (&mut p.answer).await,
        None => std::future::pending().await,
    }
}

/// The 16-bit form of a SIG base UUID.
pub fn uuid16(u: &::uuid::Uuid) -> Option<u16> {
    let b = u.as_bytes();
    let base = ::uuid::Uuid::from_u128(0x0000_0000_0000_1000_8000_0080_5f9b_34fb);
    let bb = base.as_bytes();
    (b[0] == 0 && b[1] == 0 && b[4..] == bb[4..]).then(|| u16::from_be_bytes([b[2], b[3]]))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The transport is an edge: it reads the clock.
#[allow(clippy::disallowed_methods)]
fn now() -> DateTime<Utc> {
    Utc::now()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_matches_only_when_every_configured_field_is_reported_equal() {
        let got = ReportedInfo {
            manufacturer: Some("Example Medical".into()),
            serial: Some("SC-9".into()),
            system_id: Some("00091FFFFE801234".into()),
            ..ReportedInfo::default()
        };
        let want = |serial: Option<&str>, model: Option<&str>| DisIdentity {
            serial: serial.map(Into::into),
            model: model.map(Into::into),
            ..DisIdentity::default()
        };
        assert_eq!(identity_mismatch(&want(Some("SC-9"), None), &got), None);
        assert_eq!(
            identity_mismatch(&want(Some("SC-8"), None), &got),
            Some("serial")
        );
        // A configured field the device does not report at all is a mismatch, not a pass.
        assert_eq!(
            identity_mismatch(&want(Some("SC-9"), Some("EM-1")), &got),
            Some("model")
        );
        assert_eq!(identity_mismatch(&DisIdentity::default(), &got), None);
    }
}
