//! Start-up and supervision: the one place that sees every layer.
//!
//! Start-up reads as a checklist:
//!
//! 1. [`App::build`] — every file read and every check, **nothing spawned**: the device table,
//!    the uplink client (CA, client certificate and key), the MQTT options (password file, TLS
//!    files), then, last, the store key and the encrypted outbox. Any failure is a
//!    [`StartError`] a technician can act on (exit 1; a bad config file is exit 64 earlier).
//! 2. [`App::run`] — spawns the pipeline, the uploader and the sources (MQTT, one task per
//!    serial port, simulators), tells systemd it is ready, then supervises them until the one shutdown [`CancellationToken`] fires.
//!
//! Supervision: the pipeline, the uploader and every long-running source must live until
//! shutdown. If one ends or panics first, ingest is dead while systemd would still see the
//! daemon "active": the app logs one line naming the task, shuts everything down and
//! [`App::run`] returns [`RunError::TaskEnded`], which the CLI turns into a non-zero exit so
//! `Restart=on-failure` restarts the daemon. (A simulator with a `count` ends normally.)
//!
//! Shutdown: one token, fanned out. Sources stop taking input and end; the app drops its own
//! sender, so the pipeline's input closes once the sources are gone; the pipeline drains what
//! they handed over (each message is either durable or not acknowledged) and ends; the uploader
//! abandons an upload in flight at once (nothing is acknowledged before the server answered, and
//! the resend is idempotent), so no upload can hold shutdown past the grace period. After
//! [`SHUTDOWN_GRACE`] anything still running is aborted.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch, Notify};
use tokio_util::sync::CancellationToken;

use crate::audit::{self, AuditEvent, AuditLog};
use crate::config::{Config, MqttConfig, SerialDevice, SimulatorConfig};
use crate::ops::{
    self,
    notify::Notifier,
    runner::{OpsContext, OpsShared},
    watchdog::{self, Liveness, WatchdogSettings},
};
use crate::pipeline::{self, DeviceTable, Ingest};
use crate::sources::{self, mqtt::Subscription};
use crate::store::{open_or_quarantine, Outbox, OutboxOptions, QuarantinedStore, StoreKey};
use crate::supervisor::{self, Supervisor};
use crate::telemetry;
use crate::uplink::backoff::Backoff;
use crate::uplink::client::{UplinkClient, UplinkTls};
use crate::uplink::fhir::GatewayInfo;
use crate::uplink::scheduler::{SchedulerConfig, REJECTION_STREAK_LIMIT};
use crate::uploader::Uploader;

/// How long the pipeline gets to drain after shutdown is requested, and then how long the other
/// tasks get to end, before they are aborted.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Capacity of the sources → pipeline channel.
pub const INGEST_CHANNEL: usize = 256;

/// Why the agent could not start. Each is a configuration or environment problem that a
/// technician can fix; none carries PHI.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("store key: {0}")]
    Key(#[source] crate::store::KeyFileError),
    #[error("store: {0}")]
    Store(#[source] crate::store::StoreError),
    #[error("uplink: {0}")]
    Uplink(#[source] crate::uplink::client::UplinkError),
    #[error("{0}")]
    Mqtt(#[source] sources::mqtt::MqttSetupError),
    #[error("{0}")]
    Audit(#[source] crate::audit::AuditError),
    #[error("cannot create data directory {path}: {source}")]
    DataDir {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

/// Why a running agent stopped other than by request.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("task {task} ended while the agent was running ({why}); ingest cannot continue")]
    TaskEnded { task: String, why: String },
}

/// What a finished run reports.
#[derive(Debug, Clone, Default)]
pub struct RunSummary {
    pub pending_at_exit: u64,
    pub dead_letters: u64,
}

/// Opens the outbox described by `cfg` as it is (the CLI's store commands: a damaged store is
/// an error here, never moved).
///
/// # Errors
///
/// [`StartError::Key`], [`StartError::DataDir`], [`StartError::Store`].
pub fn open_store(cfg: &Config) -> Result<Outbox, StartError> {
    let (key, opts) = store_setup(cfg)?;
    Outbox::open(&store_dir(cfg), key, opts).map_err(StartError::Store)
}

/// Opens the outbox for the daemon: a store whose files are damaged is moved to
/// `<data_dir>/quarantine/store-<time>` and a fresh one started, with an alarm
/// ([`crate::store::guard`]).
///
/// # Errors
///
/// As [`open_store`], for every problem that is not damage (nothing is moved then).
pub fn open_store_guarded(cfg: &Config) -> Result<(Outbox, Option<QuarantinedStore>), StartError> {
    let (key, opts) = store_setup(cfg)?;
    // Edge: the quarantine folder's name is the one thing here that needs the clock.
    #[allow(clippy::disallowed_methods)]
    let now = chrono::Utc::now();
    open_or_quarantine(
        &store_dir(cfg),
        &cfg.gateway.data_dir.join("quarantine"),
        &key,
        &opts,
        now,
    )
    .map_err(StartError::Store)
}

/// The outbox directory: `<data_dir>/outbox`.
pub fn store_dir(cfg: &Config) -> std::path::PathBuf {
    cfg.gateway.data_dir.join("outbox")
}

fn store_setup(cfg: &Config) -> Result<(StoreKey, OutboxOptions), StartError> {
    let (key, _) = StoreKey::load_kek(&cfg.store.key_file).map_err(StartError::Key)?;
    std::fs::create_dir_all(&cfg.gateway.data_dir).map_err(|e| StartError::DataDir {
        path: cfg.gateway.data_dir.clone(),
        source: e,
    })?;
    let opts = OutboxOptions {
        cache_capacity: cfg.store.cache_capacity_bytes,
        tombstone_retention: cfg.store.acked_retention,
        cipher: cfg.store.cipher,
        ..OutboxOptions::default()
    };
    Ok((key, opts))
}

/// Everything [`App::build`] and a reload check and prepare from a config, except the store.
struct Prepared {
    devices: DeviceTable,
    client: UplinkClient,
    mqtt: Option<(MqttConfig, Vec<Subscription>)>,
}

/// Reads and checks every file the config names (TLS files, password files) and builds the
/// device table; opens nothing else. Shared by start-up and reload, so a reload accepts
/// exactly what a start would.
fn prepare(cfg: &Config) -> Result<Prepared, StartError> {
    let devices = DeviceTable::from_config(cfg);
    let client = UplinkClient::new(&UplinkTls::from_config(&cfg.uplink))
        .and_then(|c| c.with_oauth2(cfg.uplink.oauth2.as_ref()))
        .map_err(StartError::Uplink)?;
    let subs: Vec<Subscription> = devices
        .mqtt
        .iter()
        .map(|(filter, device)| Subscription {
            filter: filter.clone(),
            device: Arc::clone(device),
        })
        .collect();
    let mqtt = match (&cfg.mqtt, subs.is_empty()) {
        (Some(m), false) => {
            // Validate (and read the password and TLS files) now, not in the task.
            sources::mqtt::options(m).map_err(StartError::Mqtt)?;
            Some((m.clone(), subs))
        }
        _ => None,
    };
    if let Some(f) = &cfg.fleet {
        sources::mqtt::options(&f.mqtt).map_err(StartError::Mqtt)?;
    }
    Ok(Prepared {
        devices,
        client,
        mqtt,
    })
}

/// A checked, opened, not yet running agent.
pub struct App {
    cfg: Config,
    prepared: Prepared,
    ble: Option<sources::ble::BleSource>,
    store: Arc<Outbox>,
    /// The app's own sender: the pipeline's input stays open until shutdown even when every
    /// source has finished (a simulator with a `count`).
    ingest_tx: mpsc::Sender<Ingest>,
    ingest_rx: mpsc::Receiver<Ingest>,
    watchdog: WatchdogSettings,
    notifier: Option<Notifier>,
    /// The audit log; its handle is the process-wide sink from `build` to the end of `run`.
    audit: AuditLog,
}

impl App {
    /// Reads and checks everything; opens the store last; spawns nothing. Blocking (file reads,
    /// the store's open): call it before the runtime is busy, or from `spawn_blocking`.
    ///
    /// systemd's notification socket and watchdog come from the environment
    /// (`NOTIFY_SOCKET`, `WATCHDOG_USEC`); [`App::set_watchdog`] overrides them.
    ///
    /// # Errors
    ///
    /// A [`StartError`] naming the file or setting to fix.
    pub fn build(cfg: Config) -> Result<App, StartError> {
        let prepared = prepare(&cfg)?;
        // Opened just before the store, so that a store moved aside at open is audited.
        let audit = AuditLog::open(cfg.audit.options()).map_err(StartError::Audit)?;
        audit::install(audit.handle());
        audit::record(AuditEvent::AgentStarted {
            version: env!("CARGO_PKG_VERSION"),
        });
        let (store, _quarantined) = match open_store_guarded(&cfg) {
            Ok(v) => v,
            Err(e) => {
                audit::uninstall_if(&audit.handle());
                audit.close(Duration::from_secs(1));
                return Err(e);
            }
        };
        let store = Arc::new(store);
        let ble = if prepared.devices.ble.is_empty() {
            None
        } else {
            // The BLE high-water marks are sealed with the store key (see sources::ble::cursor).
            let key = match StoreKey::load_kek(&cfg.store.key_file) {
                Ok((k, _)) => k,
                Err(e) => {
                    audit::uninstall_if(&audit.handle());
                    return Err(StartError::Key(e));
                }
            };
            Some(sources::ble::BleSource::new(
                &cfg,
                &prepared.devices.ble,
                key,
            ))
        };
        let (ingest_tx, ingest_rx) = mpsc::channel(INGEST_CHANNEL);
        let notifier = Notifier::from_env();
        Ok(App {
            cfg,
            prepared,
            ble,
            store,
            ingest_tx,
            ingest_rx,
            watchdog: WatchdogSettings::from_env(notifier.clone()),
            notifier,
            audit,
        })
    }

    /// Where `READY=1`, `RELOADING=1`, `STOPPING=1` and `WATCHDOG=1` go, how often the
    /// liveness check runs and how long a task may stay silent (tests, embedders).
    pub fn set_watchdog(&mut self, settings: WatchdogSettings) {
        self.notifier = settings.notifier.clone();
        self.watchdog = settings;
    }

    /// The outbox (for embedders and tests).
    pub fn store(&self) -> &Arc<Outbox> {
        &self.store
    }

    /// A sender into the pipeline, as a source has (for embedders and tests).
    pub fn ingest_sender(&self) -> mpsc::Sender<Ingest> {
        self.ingest_tx.clone()
    }

    /// Gives up the app's own hold on the pipeline's input: once every source and every
    /// [`App::ingest_sender`] clone is gone, the input closes. Only tests do this, to see that
    /// the supervisor notices a pipeline whose input died.
    #[doc(hidden)]
    pub fn release_ingest_for_test(&mut self) {
        let (tx, _) = mpsc::channel(1);
        self.ingest_tx = tx;
    }

    /// Runs until `shutdown` is cancelled, or until a task the agent cannot run without ends.
    /// SIGHUP reloads the configuration (see [`Running::reload`]).
    ///
    /// # Errors
    ///
    /// [`RunError::TaskEnded`] if the pipeline, the uploader or a source ended or panicked
    /// before shutdown was requested (the agent has shut down cleanly by then).
    pub async fn run(self, shutdown: CancellationToken) -> Result<RunSummary, RunError> {
        let App {
            cfg,
            prepared,
            ble,
            store,
            ingest_tx,
            ingest_rx,
            watchdog,
            notifier,
            audit: audit_log,
        } = self;
        // Installed first: SIGHUP's default action would terminate the daemon.
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        // A file size limit (RLIMIT_FSIZE) must reach the store as an EFBIG write error, which
        // it handles like a full disk (hold ingest, reopen once writes succeed), not as the
        // kernel's default SIGXFSZ action, which kills the daemon mid-write. tokio's handler
        // replaces that default; the signal itself needs no action. Held for the whole run.
        let _xfsz =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::from_raw(libc::SIGXFSZ))
                .ok();
        if cfg.uplink.allow_insecure_http && cfg.uplink.fhir_base.scheme() == "http" {
            tracing::warn!("INSECURE: uplink.allow_insecure_http is set and fhir_base is http://; readings (PHI) travel unencrypted. Never use this outside a lab.");
        }
        for w in cfg.warnings() {
            tracing::warn!("config: {w}");
        }

        let liveness = Liveness::default();
        #[allow(clippy::disallowed_methods)] // the edge: the agent starts now
        let started_at = chrono::Utc::now();
        let ops = Arc::new(OpsShared::new(liveness.clone(), started_at));
        let wake = Arc::new(Notify::new());
        let mut pipeline_task = tokio::spawn(watchdog::monitored(
            liveness.heartbeat("pipeline", watchdog.max_silence),
            pipeline::run(
                ingest_rx,
                Arc::<Outbox>::clone(&store),
                Arc::clone(&wake),
                cfg.store.max_bytes,
            ),
        ));
        let mut running = Running {
            sup: Supervisor::new(shutdown.clone(), liveness.clone()),
            cfg,
            store: Arc::clone(&store),
            ingest_tx,
            wake,
            ops,
            watchdog: watchdog.clone(),
            sources: BTreeMap::new(),
            mqtt_bindings: None,
        };
        running.start_sources(prepared.mqtt, &prepared.devices);
        if let Some(src) = ble {
            // BLE runs btleplug on its own thread and runtime (sources::ble); the heartbeat is
            // handed to that thread and its loop beats it, so a wedged BLE loop stops the
            // WATCHDOG=1 pings (its own adapter watchdog recovers BlueZ and the adapter). A
            // change of BLE devices needs a restart (see `needs_restart`).
            let tx = running.ingest_tx.clone();
            let allowance = sources::ble::watchdog_allowance(&src.cfg, watchdog.max_silence);
            running.sup.spawn(
                "ble source",
                Some("ble"),
                true,
                Some(allowance),
                move |stop| {
                    Box::pin(async move {
                        if let Err(e) = sources::ble::run(src, tx, stop).await {
                            tracing::error!(error = %e, "BLE source stopped");
                        }
                    })
                },
            );
        }
        running.start_services(prepared.client);
        {
            let (l, w, stop) = (liveness.clone(), watchdog.clone(), shutdown.clone());
            running.sup.spawn("watchdog", None, true, None, move |_| {
                Box::pin(ops::watchdog::run(l, w, stop))
            });
        }

        let stats = store.stats().unwrap_or_default();
        tracing::info!(
            gateway = %running.cfg.gateway.id,
            pending = stats.pending,
            dead_letters = stats.dead,
            devices = running.cfg.devices.len(),
            simulators = running.cfg.simulators.len(),
            watchdog = notifier.is_some() && watchdog.notifier.is_some(),
            "vitalgate running"
        );
        notify(&notifier, "READY=1");

        // Supervise until shutdown is requested or a task the agent needs ends.
        let mut failure: Option<RunError> = None;
        let mut pipeline_done = false;
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                r = &mut pipeline_task => {
                    pipeline_done = true;
                    failure = Some(supervisor::task_ended("pipeline", r.err()));
                    break;
                }
                Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => {
                    notify(&notifier, "RELOADING=1");
                    let r = running.reload().await;
                    notify(&notifier, "READY=1");
                    if let Some(e) = r {
                        failure = Some(e);
                        break;
                    }
                }
                Some(r) = running.sup.join_next() => {
                    if let Some(e) = r {
                        failure = Some(e);
                        break;
                    }
                }
            }
        }
        if failure.is_some() {
            shutdown.cancel();
        }
        tracing::info!("shutting down");
        notify(&notifier, "STOPPING=1");

        // Sources end on `shutdown`; with the app's sender gone the pipeline's input closes
        // once they have, and the pipeline drains what they handed over.
        let Running { sup, ingest_tx, .. } = running;
        drop(ingest_tx);
        if !pipeline_done
            && tokio::time::timeout(SHUTDOWN_GRACE, &mut pipeline_task)
                .await
                .is_err()
        {
            tracing::warn!(
                "pipeline did not drain within the grace period; what it held is not acknowledged upstream and will be redelivered"
            );
            pipeline_task.abort();
        }
        sup.drain(SHUTDOWN_GRACE).await;

        let stats = store.stats().unwrap_or_default();
        let counters: Vec<String> = telemetry::COUNTERS
            .snapshot()
            .into_iter()
            .filter(|(_, v)| *v > 0)
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let gauges: Vec<String> = telemetry::GAUGES
            .snapshot()
            .into_iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        if let Some((n, p50, p99)) = telemetry::ble_latency_summary() {
            tracing::info!(
                records = n,
                p50_us = p50,
                p99_us = p99,
                "BLE notification-to-durable latency"
            );
        }
        tracing::info!(pending = stats.pending, dead_letters = stats.dead, counters = %counters.join(" "), gauges = %gauges.join(" "), "stopped");
        audit::record(AuditEvent::AgentStopped {});
        audit::uninstall_if(&audit_log.handle());
        audit_log.close(SHUTDOWN_GRACE);
        match failure {
            Some(e) => Err(e),
            None => Ok(RunSummary {
                pending_at_exit: stats.pending,
                dead_letters: stats.dead,
            }),
        }
    }
}

/// What a source task is started from; a reload restarts a source whose inputs changed.
#[derive(Debug, Clone, PartialEq)]
enum SourceInputs {
    /// The MQTT connection and every MQTT device (one connection serves them all).
    Mqtt {
        mqtt: MqttConfig,
        devices: Vec<crate::config::DeviceConfig>,
        gateway: (String, chrono::FixedOffset),
    },
    /// One serial device (one task per port).
    Serial {
        device: crate::config::DeviceConfig,
        serial: SerialDevice,
        gateway: (String, chrono::FixedOffset),
    },
    Simulator {
        sim: SimulatorConfig,
        gateway: String,
    },
}

/// Source key (`mqtt`, `simulator:<name>`) → its inputs, for a config.
fn source_inputs(cfg: &Config) -> BTreeMap<String, SourceInputs> {
    let mut out = BTreeMap::new();
    let mqtt_devices: Vec<_> = cfg
        .devices
        .iter()
        .filter(|d| matches!(d.kind, crate::config::DeviceKind::Mqtt { .. }))
        .cloned()
        .collect();
    if let (Some(m), false) = (&cfg.mqtt, mqtt_devices.is_empty()) {
        out.insert(
            "mqtt".to_string(),
            SourceInputs::Mqtt {
                mqtt: m.clone(),
                devices: mqtt_devices,
                gateway: (cfg.gateway.id.clone(), cfg.gateway.device_utc_offset),
            },
        );
    }
    for d in &cfg.devices {
        if let crate::config::DeviceKind::Serial(serial) = &d.kind {
            out.insert(
                format!("serial:{}", d.name),
                SourceInputs::Serial {
                    device: d.clone(),
                    serial: serial.clone(),
                    gateway: (cfg.gateway.id.clone(), cfg.gateway.device_utc_offset),
                },
            );
        }
    }
    for s in &cfg.simulators {
        out.insert(
            format!("simulator:{}", s.name),
            SourceInputs::Simulator {
                sim: s.clone(),
                gateway: cfg.gateway.id.clone(),
            },
        );
    }
    out
}

/// The running agent, for supervision and reload.
struct Running {
    sup: Supervisor,
    cfg: Config,
    store: Arc<Outbox>,
    ingest_tx: mpsc::Sender<Ingest>,
    wake: Arc<Notify>,
    ops: Arc<OpsShared>,
    watchdog: WatchdogSettings,
    /// The inputs each running source was started from.
    sources: BTreeMap<String, SourceInputs>,
    /// The running MQTT source's device table: a reload that changes only the MQTT devices
    /// hands it the new one (no reconnect, so the broker redelivers nothing).
    mqtt_bindings: Option<watch::Sender<Vec<Subscription>>>,
}

impl Running {
    /// Starts the sources of `self.cfg` whose key is not running yet.
    fn start_sources(
        &mut self,
        mqtt: Option<(MqttConfig, Vec<Subscription>)>,
        devices: &DeviceTable,
    ) {
        let wanted = source_inputs(&self.cfg);
        let running = self.sup.keys();
        let allowance = self.watchdog.max_silence;
        if let Some((m, subs)) = mqtt {
            if !running.iter().any(|k| k == "mqtt") {
                let tx = self.ingest_tx.clone();
                let (bindings, rx) = watch::channel(subs);
                self.mqtt_bindings = Some(bindings);
                self.sup.spawn(
                    "mqtt source",
                    Some("mqtt"),
                    true,
                    Some(allowance),
                    move |stop| {
                        Box::pin(async move {
                            if let Err(e) = sources::mqtt::run_rebindable(m, rx, tx, stop).await {
                                tracing::error!(error = %e, "MQTT source stopped");
                            }
                        })
                    },
                );
            }
        }
        for (serial, ctx) in &devices.serial {
            let key = format!("serial:{}", ctx.name);
            if running.contains(&key) {
                continue;
            }
            // A serial source runs until shutdown whatever the port does (absent, no
            // permission, unplugged): it retries, it never ends early.
            let (serial, ctx, tx) = (serial.clone(), Arc::clone(ctx), self.ingest_tx.clone());
            self.sup.spawn(
                &format!("serial source {}", ctx.name),
                Some(&key),
                true,
                Some(allowance),
                move |stop| Box::pin(sources::serial::run(serial, ctx, tx, stop)),
            );
        }
        for (s, ctx) in &devices.simulators {
            let key = format!("simulator:{}", s.name);
            if running.contains(&key) {
                continue;
            }
            // A simulator with a count ends by design; one without must run until shutdown.
            let (s, ctx, tx) = (s.clone(), Arc::clone(ctx), self.ingest_tx.clone());
            self.sup.spawn(
                &format!("simulator {}", s.name),
                Some(&key),
                s.count.is_none(),
                Some(allowance),
                move |stop| Box::pin(sources::simulator::run(s, ctx, tx, stop)),
            );
        }
        self.sources = wanted;
    }

    /// Starts the uploader, the ops task and the fleet publisher for `self.cfg`.
    fn start_services(&mut self, client: UplinkClient) {
        let cfg = &self.cfg;
        let uploader = Uploader {
            store: Arc::<Outbox>::clone(&self.store),
            sender: client,
            gateway: GatewayInfo::new(&cfg.gateway.id, env!("CARGO_PKG_VERSION"))
                .with_write_mode(cfg.uplink.write_mode),
            batch_size: cfg.uplink.batch_size,
            schedule: SchedulerConfig {
                retry: Backoff::new(cfg.uplink.backoff_initial, cfg.uplink.backoff_max),
                pause: Backoff::new(cfg.uplink.pause_initial, cfg.uplink.pause_max),
                rejection_streak_limit: REJECTION_STREAK_LIMIT,
            },
            wake: Arc::clone(&self.wake),
            seed: rand::random(),
            consent: crate::uploader::ConsentSource::new(&cfg.consent),
            metering: cfg.uplink.metering.clone(),
            // The day's byte count, beside the store: a restart must not hand out the
            // budget again.
            ledger_file: cfg
                .uplink
                .metering
                .daily_byte_budget
                .map(|_| cfg.gateway.data_dir.join("uplink-bytes-today")),
        };
        // An HTTP request is work, bounded by its timeout: the uploader may be silent that long.
        let allowance = self.watchdog.max_silence + cfg.uplink.timeout;
        self.sup.spawn(
            "uploader",
            Some("uploader"),
            true,
            Some(allowance),
            move |stop| Box::pin(uploader.run(stop)),
        );
        let (ctx, store, shared) = (
            OpsContext::from_config(cfg),
            Arc::clone(&self.store),
            Arc::clone(&self.ops),
        );
        self.sup.spawn("ops", Some("ops"), true, None, move |stop| {
            Box::pin(ops::runner::run(ctx, store, shared, stop))
        });
        let store = Arc::clone(&self.store);
        self.sup.spawn(
            "store upkeep",
            Some("store upkeep"),
            true,
            None,
            move |stop| Box::pin(crate::store_upkeep::run(store, stop)),
        );
        if let Some(purge_after) = cfg.consent.purge_after {
            let (store, consent) = (Arc::clone(&self.store), cfg.consent.clone());
            self.sup.spawn(
                "consent purge",
                Some("consent purge"),
                true,
                None,
                move |stop| Box::pin(crate::consent_purge::run(store, consent, purge_after, stop)),
            );
        }
        if let Some(f) = cfg.fleet.clone() {
            let gw = cfg.gateway.id.clone();
            let (snaps, alarms) = (self.ops.snapshots.subscribe(), self.ops.alarms.subscribe());
            self.sup
                .spawn("fleet", Some("fleet"), true, None, move |stop| {
                    Box::pin(ops::fleet::run(f, gw, snaps, alarms, stop))
                });
        }
    }

    /// SIGHUP: re-reads the config file and applies it without a restart.
    ///
    /// Checked exactly as at start-up ([`prepare`]: every TLS and password file is read)
    /// before anything changes; an invalid file, or a change that needs a restart (gateway id,
    /// data directory, store settings), keeps the running configuration and logs one line
    /// naming `file:line:col` or the key. Then: sources whose inputs changed stop and start
    /// again (MQTT: one reconnect with the same persistent session, so the broker redelivers
    /// anything not acknowledged; nothing is acknowledged that is not durable), sources removed
    /// stop, new ones start; the uploader restarts with the new uplink settings and certificate
    /// (an upload in flight is abandoned and resent: conditional create makes that harmless);
    /// the ops task and the fleet publisher restart with the new settings. The pipeline and the
    /// store are untouched. Returns a failure only if a task the agent needs failed meanwhile.
    async fn reload(&mut self) -> Option<RunError> {
        let path = self.cfg.path.clone();
        let new = match tokio::task::spawn_blocking(move || {
            let cfg = Config::load(&path).map_err(|e| e.to_string())?;
            let prepared = prepare(&cfg).map_err(|e| e.to_string())?;
            Ok::<_, String>((cfg, prepared))
        })
        .await
        {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => {
                telemetry::ConfigReloadRefused { error: &e }.emit();
                return None;
            }
            Err(e) => {
                telemetry::ConfigReloadRefused { error: &e }.emit();
                return None;
            }
        };
        let (cfg, prepared) = new;
        if let Some(key) = needs_restart(&self.cfg, &cfg) {
            let msg = format!(
                "{}: {key} changed; it takes effect only with a restart (systemctl restart vitalgate)",
                cfg.path.display()
            );
            telemetry::ConfigReloadRefused { error: &msg }.emit();
            return None;
        }
        let old_inputs = std::mem::take(&mut self.sources);
        let new_inputs = source_inputs(&cfg);
        let mut retire: Vec<String> = old_inputs
            .iter()
            .filter(|(k, v)| new_inputs.get(*k) != Some(v))
            .map(|(k, _)| k.clone())
            .collect();
        let (added, removed, changed) = (
            new_inputs
                .keys()
                .filter(|k| !old_inputs.contains_key(*k))
                .count(),
            old_inputs
                .keys()
                .filter(|k| !new_inputs.contains_key(*k))
                .count(),
            old_inputs
                .iter()
                .filter(|(k, v)| new_inputs.get(*k).is_some_and(|n| n != *v))
                .count(),
        );
        let device_changes = describe_device_changes(&self.cfg, &cfg);
        // Only the MQTT devices changed, not the connection: the running source takes the new
        // table in place. Restarting it would reconnect, and the broker would redeliver what
        // was stored but not yet acknowledged, to be filed under the new binding a second time.
        let rebind_mqtt = match (old_inputs.get("mqtt"), new_inputs.get("mqtt")) {
            (
                Some(old @ SourceInputs::Mqtt { mqtt: a, .. }),
                Some(new @ SourceInputs::Mqtt { mqtt: b, .. }),
            ) => a == b && old != new && self.mqtt_bindings.is_some(),
            _ => false,
        };
        if rebind_mqtt {
            retire.retain(|k| k != "mqtt");
        }
        retire.extend(["uploader", "ops", "fleet", "consent purge"].map(String::from));
        let failure = self.sup.retire(&retire, SHUTDOWN_GRACE).await;
        if let (true, Some(bindings), Some((_, subs))) =
            (rebind_mqtt, &self.mqtt_bindings, &prepared.mqtt)
        {
            bindings.send_replace(subs.clone());
        }
        self.cfg = cfg;
        self.start_sources(prepared.mqtt, &prepared.devices);
        self.start_services(prepared.client);
        let summary = format!(
            "sources +{added} -{removed} ~{changed}; {device_changes}; uplink, status and fleet settings applied"
        );
        telemetry::ConfigReloaded { summary: &summary }.emit();
        failure
    }
}

/// The first setting whose change a reload cannot apply (the store is open under it).
fn needs_restart(old: &Config, new: &Config) -> Option<&'static str> {
    if old.gateway.id != new.gateway.id {
        return Some("gateway.id");
    }
    if old.gateway.data_dir != new.gateway.data_dir {
        return Some("gateway.data_dir");
    }
    if old.store.key_file != new.store.key_file {
        return Some("store.key_file");
    }
    if old.store.cache_capacity_bytes != new.store.cache_capacity_bytes {
        return Some("store.cache_capacity_mib");
    }
    if old.store.acked_retention != new.store.acked_retention {
        return Some("store.acked_retention_days");
    }
    if old.store.max_bytes != new.store.max_bytes {
        return Some("store.max_bytes");
    }
    // The audit log is opened once, at start.
    if old.audit != new.audit {
        return Some("[audit]");
    }
    // The BLE source owns the adapter and its devices' sessions; it is started once.
    let ble = |c: &Config| -> Vec<crate::config::DeviceConfig> {
        c.devices
            .iter()
            .filter(|d| matches!(d.kind, crate::config::DeviceKind::Ble(..)))
            .cloned()
            .collect()
    };
    if ble(old) != ble(new) {
        return Some("the BLE devices");
    }
    if old.ble != new.ble {
        return Some("[ble]");
    }
    None
}

/// `devices added: a, b; removed: c; rebound: d` (names only).
fn describe_device_changes(old: &Config, new: &Config) -> String {
    let names = |c: &Config| -> Vec<String> { c.devices.iter().map(|d| d.name.clone()).collect() };
    let (o, n) = (names(old), names(new));
    let added: Vec<&String> = n.iter().filter(|x| !o.contains(x)).collect();
    let removed: Vec<&String> = o.iter().filter(|x| !n.contains(x)).collect();
    let changed: Vec<&String> = new
        .devices
        .iter()
        .filter(|d| old.device(&d.name).is_some_and(|od| od != *d))
        .map(|d| &d.name)
        .collect();
    let list = |v: &[&String]| -> String {
        if v.is_empty() {
            "none".into()
        } else {
            v.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
        }
    };
    format!(
        "devices added: {}; removed: {}; changed or rebound: {}",
        list(&added),
        list(&removed),
        list(&changed)
    )
}

fn notify(n: &Option<Notifier>, state: &str) {
    if let Some(n) = n {
        if let Err(e) = n.send(state) {
            tracing::warn!(error = %e, state, "sd_notify failed");
        }
    }
}

/// A future that completes on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
