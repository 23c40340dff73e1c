//! The BLE transport: BlueZ through btleplug, on its own thread and current-thread runtime.
//!
//! # Shape
//! ```text
//! run() ── std::thread "ble" ── current-thread tokio runtime ── supervise():
//!   loop {                                   (one iteration = one btleplug Manager "epoch")
//!     Manager::new, adapter by name (absent: wait, retry), power it on if off
//!     central.events(); start_scan(service UUIDs of the configured profiles)
//!     select! {
//!       advertisement of a configured address, idle, backoff over -> spawn session::run
//!       DeviceDisconnected(id)        -> that session's `disconnected` token
//!       StateUpdate(PoweredOff)       -> recover (power on)
//!       events stream ended           -> recover
//!       org.bluez owner changed       -> recover (BlueZ restarted)
//!       watchdog tick: no event for watchdog_silence -> restart discovery; still silent after
//!                      another period -> power-cycle the adapter (Powered off/on over D-Bus)
//!     }
//!     recover: stop sessions, drop streams and the Manager, one log line, a counter, backoff
//!   }
//! ```
//!
//! # Why a thread of its own
//! bluez-async spawns background tasks (the D-Bus connection, a `remove_match` per dropped
//! stream that `unwrap()`s) and a race in it was seen to panic such a task on the multi-thread
//! runtime. Here they live on a current-thread runtime that only this transport uses; tokio
//! contains a panicking task, and the thread boundary contains the rest (a panic that escapes
//! ends the `ble source` task and the daemon exits 70 for systemd to restart). The crate refuses
//! to build with `panic = "abort"`, which would turn any such panic into a dead daemon.
//!
//! # Layering
//! btleplug and dbus types stay inside this module; GATT parsing is `device_drivers::gatt`.
//! Records go to the pipeline as [`Ingest::Record`]; a high-water mark advances and RACP
//! deletes happen only after the pipeline answered durable.

#[cfg(not(panic = "unwind"))]
compile_error!(
    "vitalgate must be built with panic = \"unwind\": btleplug/bluez-async background tasks can \
     panic, and with panic = \"abort\" that would kill the daemon instead of one contained task"
);

pub mod bluez;
pub mod cursor;
pub mod error;
pub mod pair;
pub mod scan;
mod session;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use btleplug::api::{
    Central as _, CentralEvent, CentralState, Manager as _, Peripheral as _, ScanFilter,
};
use btleplug::platform::{Adapter, Manager, PeripheralId};
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::BleConfig;
use crate::ops::watchdog;
use crate::pipeline::{DeviceContext, Ingest, ReportedInfo};
use crate::store::StoreKey;
use crate::telemetry;
use bluez::Bus;
use error::BleError;
pub use session::{DeviceEntry, Shared};

/// Everything the transport needs, checked at start-up (`App::build`).
pub struct BleSource {
    pub cfg: BleConfig,
    pub devices: Vec<DeviceEntry>,
    pub data_dir: PathBuf,
    pub key: StoreKey,
}

impl BleSource {
    /// The configured BLE devices of the device table.
    pub fn new(
        cfg: &crate::config::Config,
        table: &[Arc<DeviceContext>],
        key: StoreKey,
    ) -> BleSource {
        let devices = cfg
            .devices
            .iter()
            .filter_map(|d| match &d.kind {
                crate::config::DeviceKind::Ble(b) => {
                    let base = table.iter().find(|c| c.name == d.name)?;
                    Some(DeviceEntry {
                        name: d.name.clone(),
                        cfg: b.clone(),
                        base: Arc::clone(base),
                    })
                }
                _ => None,
            })
            .collect();
        BleSource {
            cfg: cfg.ble.clone(),
            devices,
            data_dir: cfg.gateway.data_dir.clone(),
            key,
        }
    }
}

/// How long the BLE loop may go without a watchdog beat: the daemon's allowance plus the
/// longest single step between two beats (the wait for sessions to stop at an adapter recovery,
/// two operation timeouts, or one BlueZ D-Bus call).
pub fn watchdog_allowance(cfg: &BleConfig, max_silence: Duration) -> Duration {
    max_silence + (cfg.operation_timeout * 2).max(bluez::CALL_TIMEOUT)
}

/// Runs the transport on its own thread until `shutdown`. Returns early only if the thread
/// dies (a panic that escaped), which the app treats as a failed source.
///
/// Liveness: if called inside [`crate::ops::watchdog::monitored`], the heartbeat is handed to
/// the thread and the transport's loop beats it ([`watchdog_allowance`]); a wedged loop (a
/// blocking call on its thread, a step that never ends) stops the beats and so the daemon's
/// `WATCHDOG=1`. Sessions and probes are separate tasks and do not beat: each of their steps
/// has a timeout, and the loop that spawns them runs on regardless.
pub async fn run(
    src: BleSource,
    tx: mpsc::Sender<Ingest>,
    shutdown: CancellationToken,
) -> Result<(), String> {
    // Taken here, where the task-local is set; awaiting the thread below is deliberately not
    // `idle`: only the thread's own progress keeps this task live.
    let heartbeat = watchdog::current();
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    let spawned = std::thread::Builder::new()
        .name("ble".into())
        .spawn(move || {
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| format!("cannot start the BLE runtime: {e}"))?;
                let transport = supervise(src, tx, shutdown);
                match heartbeat {
                    Some(hb) => rt.block_on(watchdog::monitored(hb, transport)),
                    None => rt.block_on(transport),
                }
                Ok::<(), String>(())
            }));
            let _ = done_tx.send(match result {
                Ok(r) => r,
                Err(_) => Err("the BLE thread panicked".to_string()),
            });
        });
    if let Err(e) = spawned {
        return Err(format!("cannot start the BLE thread: {e}"));
    }
    done_rx
        .await
        .unwrap_or_else(|_| Err("the BLE thread ended".into()))
}

/// Per configured device: connection state and reconnect backoff.
struct Slot {
    session: Option<(CancellationToken, CancellationToken)>,
    peripheral: Option<PeripheralId>,
    failures: u32,
    not_before: Instant,
}

async fn supervise(src: BleSource, tx: mpsc::Sender<Ingest>, shutdown: CancellationToken) {
    // Never returns early on a bad file: the transport runs on without the marks (the
    // fallback is described at `CursorStore::load`).
    let (cursors, warning) = cursor::CursorStore::load(&src.data_dir, &src.key);
    if let Some(w) = warning {
        telemetry::BleCursorUnreadable { error: &w }.emit();
    }
    let cursors = Arc::new(Mutex::new(cursors));
    let devices: Vec<Arc<DeviceEntry>> = src.devices.into_iter().map(Arc::new).collect();
    let mut bind = Bindings::new(&devices);
    bind.seed_located(&devices, lock_cursors(&cursors).located());
    let mut slots: Vec<Slot> = devices
        .iter()
        .map(|_| Slot {
            session: None,
            peripheral: None,
            failures: 0,
            not_before: Instant::now(),
        })
        .collect();
    let services: Vec<uuid::Uuid> = {
        let mut v: Vec<u16> = devices
            .iter()
            .flat_map(|d| d.cfg.profiles.iter().map(|p| p.service_uuid16()))
            .collect();
        v.sort_unstable();
        v.dedup();
        v.into_iter()
            .map(btleplug::api::bleuuid::uuid_from_u16)
            .collect()
    };
    let cfg = src.cfg;
    let ntp = Arc::new(Mutex::new(None));
    let mut backoff = Duration::from_millis(500);
    tracing::info!(devices = devices.len(), adapter = %cfg.adapter, "BLE transport starting");

    while !shutdown.is_cancelled() {
        watchdog::beat();
        let bus = match Bus::connect() {
            Ok(b) => Arc::new(b),
            Err(e) => {
                telemetry::BleRecovery {
                    reason: "system bus unreachable",
                    action: "retry",
                    error: Some(&e),
                }
                .emit();
                if watchdog::idle(sleep_or_stop(backoff, &shutdown)).await {
                    break;
                }
                backoff = (backoff * 2).min(cfg.reconnect_backoff_max);
                continue;
            }
        };
        let shared = Arc::new(Shared {
            cfg: cfg.clone(),
            tx: tx.clone(),
            cursors: Arc::clone(&cursors),
            bus: Arc::clone(&bus),
            ntp: Arc::clone(&ntp),
        });
        let epoch = Epoch {
            shared,
            bus,
            devices: &devices,
            services: &services,
        };
        match epoch.run(&mut slots, &mut bind, &shutdown).await {
            EpochEnd::Shutdown => break,
            EpochEnd::Recover { reason, error } => {
                telemetry::BleRecovery {
                    reason,
                    action: "recreate the BLE manager",
                    error: error.as_ref().map(|e| e as &dyn std::fmt::Display),
                }
                .emit();
                if watchdog::idle(sleep_or_stop(backoff, &shutdown)).await {
                    break;
                }
                backoff = (backoff * 2).min(cfg.reconnect_backoff_max);
            }
            EpochEnd::Healthy => backoff = Duration::from_millis(500),
        }
    }
    tracing::info!("BLE transport stopped");
}

enum EpochEnd {
    Shutdown,
    /// Ended after working for a while (e.g. BlueZ restarted): retry at once.
    Healthy,
    Recover {
        reason: &'static str,
        error: Option<BleError>,
    },
}

struct Epoch<'a> {
    shared: Arc<Shared>,
    bus: Arc<Bus>,
    devices: &'a [Arc<DeviceEntry>],
    services: &'a [uuid::Uuid],
}

/// An advertiser probed and found to be none of ours is not probed again for this long (a
/// neighbour's cuff advertises after every measurement: one short connection per 10 minutes).
const NOT_OURS_FOR: Duration = Duration::from_secs(600);
/// A probe that failed (connect, timeout) is retried after this long.
const PROBE_RETRY: Duration = Duration::from_secs(30);

type Probes = JoinSet<(String, Result<ReportedInfo, BleError>)>;

/// Which advertiser is which configured device: the configured addresses, plus the addresses
/// learned by probing for devices configured by Device Information only (no `address`). Lives
/// across epochs (an adapter recovery does not forget a located device), and a located address
/// is persisted beside the cursors (`cursor::CursorStore::located`), so after a restart the
/// device is recognised by its address without probing. The session still checks Device
/// Information on every connection.
struct Bindings {
    by_address: HashMap<String, usize>,
    /// Devices configured without an address, located by probing advertisers.
    identity_only: Vec<usize>,
    /// Advertisers probed and found to be none of ours (or that failed): not before this.
    not_ours: HashMap<String, Instant>,
    /// At most one probe at a time.
    probing: bool,
}

impl Bindings {
    fn new(devices: &[Arc<DeviceEntry>]) -> Bindings {
        Bindings {
            by_address: devices
                .iter()
                .enumerate()
                .filter_map(|(i, d)| d.cfg.address.clone().map(|a| (a, i)))
                .collect(),
            identity_only: devices
                .iter()
                .enumerate()
                .filter(|(_, d)| d.cfg.address.is_none())
                .map(|(i, _)| i)
                .collect(),
            not_ours: HashMap::new(),
            probing: false,
        }
    }

    /// Addresses located by probes before a restart, for devices still configured by Device
    /// Information only; never one that is some configured device's own address.
    fn seed_located(
        &mut self,
        devices: &[Arc<DeviceEntry>],
        located: &std::collections::BTreeMap<String, String>,
    ) {
        for &i in &self.identity_only {
            let Some(address) = devices.get(i).and_then(|d| located.get(&d.name)) else {
                continue;
            };
            self.by_address.entry(address.clone()).or_insert(i);
        }
    }

    fn hold_off(&mut self, address: String, for_: Duration) {
        let now = Instant::now();
        if self.not_ours.len() > 10_000 {
            self.not_ours.retain(|_, until| *until > now);
        }
        self.not_ours.insert(address, now + for_);
    }
}

/// The one identity-only device whose configured Device Information matches what an advertiser
/// reported; `None` if none does, or if several would (an ambiguous config is never guessed).
fn identify(
    devices: &[Arc<DeviceEntry>],
    candidates: &[usize],
    reported: &ReportedInfo,
) -> Option<usize> {
    let mut found = candidates.iter().copied().filter(|&i| {
        devices
            .get(i)
            .is_some_and(|d| session::identifies(&d.cfg.identity, reported))
    });
    match (found.next(), found.next()) {
        (Some(i), None) => Some(i),
        _ => None,
    }
}

/// Watchdog stages of one silence episode.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Watchdog {
    Quiet,
    DiscoveryRestarted,
}

impl Epoch<'_> {
    async fn run(
        &self,
        slots: &mut [Slot],
        bind: &mut Bindings,
        shutdown: &CancellationToken,
    ) -> EpochEnd {
        let cfg = &self.shared.cfg;
        let op = cfg.operation_timeout;
        let adapter_name = cfg.adapter.as_str();
        let recover = |reason, error| EpochEnd::Recover { reason, error };

        // Watch BlueZ's bus name before anything else, so a restart in between is seen.
        let (_owner_match, mut owner_changes) = match self.bus.watch_bluez_owner().await {
            Ok(v) => v,
            Err(e) => return recover("cannot watch org.bluez", Some(e)),
        };
        watchdog::beat();
        let manager = match tokio::time::timeout(op, Manager::new()).await {
            Ok(Ok(m)) => m,
            Ok(Err(e)) => return recover("BlueZ unavailable", Some(BleError::btle("manager", e))),
            Err(_) => {
                return recover(
                    "BlueZ unavailable",
                    Some(BleError::Timeout {
                        op: "manager",
                        after: op,
                    }),
                )
            }
        };
        watchdog::beat();
        let adapter = match self.find_adapter(&manager).await {
            Ok(a) => a,
            Err(e) => return recover("adapter missing", Some(e)),
        };
        watchdog::beat();
        if let Some((false, _)) = self.bus.adapter_state(adapter_name).await {
            watchdog::beat();
            if let Err(e) = self.bus.set_powered(adapter_name, true).await {
                return recover("adapter powered off and cannot be powered on", Some(e));
            }
            telemetry::BleRecovery {
                reason: "adapter was powered off",
                action: "powered on",
                error: None,
            }
            .emit();
        }
        watchdog::beat();
        let mut events = match error::with_timeout("events", op, adapter.events()).await {
            Ok(ev) => ev,
            Err(e) => return recover("adapter event stream", Some(e)),
        };
        watchdog::beat();
        if let Err(e) = self.start_scan(&adapter).await {
            return recover("cannot start discovery", Some(e));
        }
        watchdog::beat();
        *session_ntp(&self.shared) = self.bus.ntp_synchronized().await;
        tracing::info!(adapter = adapter_name, "BLE scanning");

        let started = Instant::now();
        let mut sessions: JoinSet<(usize, Result<session::SessionEnd, BleError>)> = JoinSet::new();
        let mut probes: Probes = JoinSet::new();
        let mut last_event = Instant::now();
        let mut watchdog = Watchdog::Quiet;
        let mut tick = tokio::time::interval(
            (cfg.watchdog_silence / 4).clamp(Duration::from_millis(250), Duration::from_secs(15)),
        );
        let mut ntp_tick = tokio::time::interval(Duration::from_secs(60));
        // Beats while the loop waits for events; a handler that never returns stops them.
        let mut beat = tokio::time::interval(watchdog::IDLE_BEAT);
        let stop = shutdown.child_token();
        let end = loop {
            watchdog::beat();
            tokio::select! {
                _ = beat.tick() => {}
                _ = shutdown.cancelled() => break EpochEnd::Shutdown,
                ev = events.next() => {
                    let Some(ev) = ev else { break recover("adapter event stream ended", None) };
                    last_event = Instant::now();
                    if watchdog != Watchdog::Quiet {
                        telemetry::BleWatchdogRecovered { stage: watchdog_stage(watchdog) }.emit();
                        watchdog = Watchdog::Quiet;
                    }
                    match ev {
                        CentralEvent::StateUpdate(CentralState::PoweredOff) => {
                            break recover("adapter powered off", None);
                        }
                        CentralEvent::DeviceDisconnected(id) => {
                            if let Some(slot) = slots.iter_mut().find(|s| s.peripheral.as_ref() == Some(&id)) {
                                if let Some((disc, _)) = &slot.session {
                                    disc.cancel();
                                }
                            }
                        }
                        CentralEvent::DeviceDiscovered(id)
                        | CentralEvent::DeviceUpdated(id)
                        | CentralEvent::RssiUpdate { id, .. }
                        | CentralEvent::ManufacturerDataAdvertisement { id, .. }
                        | CentralEvent::ServiceDataAdvertisement { id, .. }
                        | CentralEvent::ServicesAdvertisement { id, .. } => {
                            telemetry::ble_advertisement();
                            self.on_advertisement(&adapter, id, slots, bind, &mut sessions, &mut probes, &stop).await;
                        }
                        _ => {}
                    }
                }
                owner = owner_changes.next() => {
                    let reason = match owner.as_deref() {
                        Some("") | None => "BlueZ stopped (org.bluez has no owner)",
                        Some(_) => "BlueZ restarted (org.bluez changed owner)",
                    };
                    break EpochEnd::Recover { reason, error: None };
                }
                Some(done) = sessions.join_next() => {
                    self.on_session_end(done, slots);
                }
                Some(done) = probes.join_next() => {
                    self.on_probe_end(done, slots, bind);
                }
                _ = tick.tick() => {
                    if self.bus.is_lost() {
                        break recover("system bus connection lost", None);
                    }
                    let busy = bind.probing || slots.iter().any(|s| s.session.is_some());
                    if busy || last_event.elapsed() < cfg.watchdog_silence {
                        continue;
                    }
                    match watchdog {
                        Watchdog::Quiet => {
                            telemetry::BleWatchdog { stage: "restart discovery", silent_s: last_event.elapsed().as_secs() }.emit();
                            let _ = error::with_timeout("stop scan", op, adapter.stop_scan()).await;
                            if let Err(e) = self.start_scan(&adapter).await {
                                break recover("cannot restart discovery", Some(e));
                            }
                            watchdog = Watchdog::DiscoveryRestarted;
                            last_event = Instant::now();
                        }
                        Watchdog::DiscoveryRestarted => {
                            telemetry::BleWatchdog { stage: "power-cycle adapter", silent_s: last_event.elapsed().as_secs() }.emit();
                            let _ = self.bus.set_powered(adapter_name, false).await;
                            watchdog::beat();
                            tokio::time::sleep(Duration::from_millis(200)).await;
                            let _ = self.bus.set_powered(adapter_name, true).await;
                            break recover("adapter silent (power-cycled)", None);
                        }
                    }
                }
                _ = ntp_tick.tick() => {
                    *session_ntp(&self.shared) = self.bus.ntp_synchronized().await;
                }
            }
        };
        // Stop sessions (each disconnects and saves its marks), then drop the streams. A probe
        // reads nothing that matters: it is abandoned.
        probes.abort_all();
        bind.probing = false;
        stop.cancel();
        let drain = async {
            while let Some(done) = sessions.join_next().await {
                self.on_session_end(done, slots);
            }
        };
        watchdog::beat();
        if tokio::time::timeout(cfg.operation_timeout * 2, drain)
            .await
            .is_err()
        {
            sessions.abort_all();
        }
        watchdog::beat();
        for s in slots.iter_mut() {
            s.session = None;
            s.peripheral = None;
        }
        let _ = tokio::time::timeout(op, adapter.stop_scan()).await;
        drop(events);
        match end {
            EpochEnd::Recover {
                reason,
                error: None,
            } if started.elapsed() > Duration::from_secs(30) => {
                telemetry::BleRecovery {
                    reason,
                    action: "recreate the BLE manager",
                    error: None,
                }
                .emit();
                EpochEnd::Healthy
            }
            other => other,
        }
    }

    async fn find_adapter(&self, manager: &Manager) -> Result<Adapter, BleError> {
        let op = self.shared.cfg.operation_timeout;
        let adapters = error::with_timeout("adapters", op, manager.adapters()).await?;
        for a in adapters {
            watchdog::beat();
            if let Ok(info) = error::with_timeout("adapter info", op, a.adapter_info()).await {
                if info.split_whitespace().next() == Some(self.shared.cfg.adapter.as_str()) {
                    return Ok(a);
                }
            }
        }
        Err(BleError::NoAdapter(self.shared.cfg.adapter.clone()))
    }

    async fn start_scan(&self, adapter: &Adapter) -> Result<(), BleError> {
        let filter = ScanFilter {
            services: self.services.to_vec(),
        };
        error::with_timeout(
            "start scan",
            self.shared.cfg.operation_timeout,
            adapter.start_scan(filter),
        )
        .await
    }

    #[allow(clippy::too_many_arguments)]
    async fn on_advertisement(
        &self,
        adapter: &Adapter,
        id: PeripheralId,
        slots: &mut [Slot],
        bind: &mut Bindings,
        sessions: &mut JoinSet<(usize, Result<session::SessionEnd, BleError>)>,
        probes: &mut Probes,
        stop: &CancellationToken,
    ) {
        let Some(address) = address_of(&id) else {
            return;
        };
        let Some(&i) = bind.by_address.get(&address) else {
            self.maybe_probe(adapter, id, address, bind, probes).await;
            return;
        };
        let Some(slot) = slots.get_mut(i) else { return };
        if slot.session.is_some() || Instant::now() < slot.not_before {
            return;
        }
        let Some(dev) = self.devices.get(i) else {
            return;
        };
        let peripheral = match error::with_timeout(
            "peripheral",
            self.shared.cfg.operation_timeout,
            adapter.peripheral(&id),
        )
        .await
        {
            Ok(p) => p,
            Err(_) => return,
        };
        let disconnected = CancellationToken::new();
        let session_stop = stop.child_token();
        slot.session = Some((disconnected.clone(), session_stop.clone()));
        slot.peripheral = Some(id);
        let fut = session::run(
            Arc::clone(&self.shared),
            Arc::clone(dev),
            peripheral,
            address,
            disconnected,
            session_stop,
        );
        sessions.spawn(async move { (i, fut.await) });
    }

    /// An advertiser that is none of the configured addresses: if devices configured by Device
    /// Information only are still to be located, and it advertises one of their services,
    /// connect to it just to read its Device Information (one probe at a time).
    async fn maybe_probe(
        &self,
        adapter: &Adapter,
        id: PeripheralId,
        address: String,
        bind: &mut Bindings,
        probes: &mut Probes,
    ) {
        if bind.identity_only.is_empty() || bind.probing {
            return;
        }
        if bind
            .not_ours
            .get(&address)
            .is_some_and(|until| Instant::now() < *until)
        {
            return;
        }
        let op = self.shared.cfg.operation_timeout;
        let Ok(peripheral) = error::with_timeout("peripheral", op, adapter.peripheral(&id)).await
        else {
            return;
        };
        let services: Vec<u16> =
            match error::with_timeout("properties", op, peripheral.properties()).await {
                Ok(Some(props)) => props.services.iter().filter_map(session::uuid16).collect(),
                _ => return,
            };
        if services.is_empty() {
            // Not known yet (an advertisement without its service list): look again later.
            return;
        }
        // Only for devices not located yet: a located one is known by its address.
        let wanted = bind.identity_only.iter().any(|&i| {
            !bind.by_address.values().any(|&j| j == i)
                && self.devices.get(i).is_some_and(|d| {
                    d.cfg
                        .profiles
                        .iter()
                        .any(|p| services.contains(&p.service_uuid16()))
                })
        });
        if !wanted {
            bind.hold_off(address, NOT_OURS_FOR);
            return;
        }
        bind.probing = true;
        let cfg = self.shared.cfg.clone();
        probes.spawn(async move {
            let r = session::probe(peripheral, &cfg).await;
            (address, r)
        });
    }

    fn on_probe_end(
        &self,
        done: Result<(String, Result<ReportedInfo, BleError>), tokio::task::JoinError>,
        slots: &mut [Slot],
        bind: &mut Bindings,
    ) {
        bind.probing = false;
        let (address, result) = match done {
            Ok(v) => v,
            Err(e) => {
                tracing::error!(error = %e, "BLE probe task failed");
                return;
            }
        };
        match result {
            Ok(reported) => match identify(self.devices, &bind.identity_only, &reported) {
                Some(i) => {
                    let name = self.devices.get(i).map_or("", |d| d.name.as_str());
                    telemetry::BleProbed {
                        address: &address,
                        device: Some(name),
                        error: None,
                    }
                    .emit();
                    // A device with a new (e.g. resolvable private) address: forget the old one.
                    bind.by_address.retain(|_, j| *j != i);
                    bind.by_address.insert(address.clone(), i);
                    self.save_located(name, &address);
                    if let Some(slot) = slots.get_mut(i) {
                        slot.not_before = Instant::now();
                    }
                }
                None => {
                    telemetry::BleProbed {
                        address: &address,
                        device: None,
                        error: None,
                    }
                    .emit();
                    bind.hold_off(address, NOT_OURS_FOR);
                }
            },
            Err(e) => {
                telemetry::BleProbed {
                    address: &address,
                    device: None,
                    error: Some(&e),
                }
                .emit();
                bind.hold_off(address, PROBE_RETRY);
            }
        }
    }

    /// Persists where a probe located a device (see [`Bindings`]); written off the event loop.
    fn save_located(&self, device: &str, address: &str) {
        let snapshot = {
            let mut store = lock_cursors(&self.shared.cursors);
            if !store.set_located(device, address) {
                return;
            }
            store.snapshot()
        };
        match snapshot {
            Ok((path, bytes)) => {
                tokio::task::spawn_blocking(move || {
                    if let Err(e) = cursor::write_atomic(&path, &bytes) {
                        telemetry::BleCursorSaveFailed { error: &e }.emit();
                    }
                });
            }
            Err(e) => telemetry::BleCursorSaveFailed { error: &e }.emit(),
        }
    }

    fn on_session_end(
        &self,
        done: Result<(usize, Result<session::SessionEnd, BleError>), tokio::task::JoinError>,
        slots: &mut [Slot],
    ) {
        let (i, result) = match done {
            Ok(v) => v,
            Err(e) => {
                // A panicking session is contained here; its device gets a backoff.
                tracing::error!(error = %e, "BLE session task failed");
                return;
            }
        };
        let Some(slot) = slots.get_mut(i) else { return };
        let Some(dev) = self.devices.get(i) else {
            return;
        };
        slot.session = None;
        slot.peripheral = None;
        let max = self.shared.cfg.reconnect_backoff_max;
        match result {
            Ok(end) => {
                slot.failures = 0;
                // A device we disconnected for idleness is left alone for a while even if it
                // keeps advertising (some do, all the time): nothing new is likely that soon.
                // One that dropped the link itself may have more to send.
                slot.not_before = Instant::now()
                    + match end {
                        session::SessionEnd::Idle => self.shared.cfg.idle_disconnect,
                        _ => Duration::from_millis(100),
                    };
                telemetry::BleDisconnected { device: &dev.name }.emit();
            }
            Err(e) => {
                slot.failures = slot.failures.saturating_add(1);
                let base =
                    Duration::from_millis(500) * 2u32.saturating_pow(slot.failures.min(10) - 1);
                let wait = match &e {
                    BleError::IdentityMismatch { .. } | BleError::AuthenticationRequired { .. } => {
                        max
                    }
                    _ => base.min(max),
                };
                slot.not_before = Instant::now() + wait;
                telemetry::BleSessionFailed {
                    device: &dev.name,
                    error: &e,
                    retry_in_ms: u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
                }
                .emit();
            }
        }
    }
}

fn watchdog_stage(w: Watchdog) -> &'static str {
    match w {
        Watchdog::Quiet => "quiet",
        Watchdog::DiscoveryRestarted => "discovery restarted",
    }
}

fn session_ntp(shared: &Shared) -> std::sync::MutexGuard<'_, Option<bool>> {
    shared
        .ntp
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// `hci0/dev_AA_BB_CC_DD_EE_FF` → `AA:BB:CC:DD:EE:FF`, without a D-Bus round trip.
pub fn address_of(id: &PeripheralId) -> Option<String> {
    let s = id.to_string();
    let dev = s.rsplit('/').next()?.strip_prefix("dev_")?;
    let a = dev.replace('_', ":").to_ascii_uppercase();
    (a.len() == 17).then_some(a)
}

/// Sleeps; returns `true` if shutdown came first.
async fn sleep_or_stop(d: Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => false,
        _ = shutdown.cancelled() => true,
    }
}

/// The cursor store's lock; a poisoned lock still holds valid cursors (they are replaced whole).
fn lock_cursors(m: &Mutex<cursor::CursorStore>) -> std::sync::MutexGuard<'_, cursor::CursorStore> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
