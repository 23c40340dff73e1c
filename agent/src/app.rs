//! Start-up and supervision: the one place that sees every layer.
//!
//! Start-up reads as a checklist:
//!
//! 1. [`App::build`] — every file read and every check, **nothing spawned**: the device table,
//!    the uplink client (CA, client certificate and key), the MQTT options (password file, TLS
//!    files), then, last, the store key and the encrypted outbox. Any failure is a
//!    [`StartError`] a technician can act on (exit 1; a bad config file is exit 64 earlier).
//! 2. [`App::run`] — spawns the pipeline, the uploader and the sources (MQTT, one task per
//!    serial port, simulators), tells systemd it is
//!    ready, then supervises them until the one shutdown [`CancellationToken`] fires.
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

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, Notify};
use tokio::task::{JoinError, JoinSet};
use tokio_util::sync::CancellationToken;

use crate::config::{Config, MqttConfig};
use crate::pipeline::{self, DeviceTable, Ingest};
use crate::sources::{self, mqtt::Subscription};
use crate::store::{open_or_quarantine, Outbox, OutboxOptions, QuarantinedStore, StoreKey};
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
    TaskEnded { task: &'static str, why: String },
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
    let key = StoreKey::load(&cfg.store.key_file).map_err(StartError::Key)?;
    std::fs::create_dir_all(&cfg.gateway.data_dir).map_err(|e| StartError::DataDir {
        path: cfg.gateway.data_dir.clone(),
        source: e,
    })?;
    let opts = OutboxOptions {
        cache_capacity: cfg.store.cache_capacity_bytes,
        tombstone_retention: cfg.store.acked_retention,
        ..OutboxOptions::default()
    };
    Ok((key, opts))
}

type TaskFuture = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'static>>;

/// A checked, opened, not yet running agent.
pub struct App {
    cfg: Config,
    devices: DeviceTable,
    client: UplinkClient,
    mqtt: Option<(MqttConfig, Vec<Subscription>)>,
    ble: Option<sources::ble::BleSource>,
    store: Arc<Outbox>,
    /// The app's own sender: the pipeline's input stays open until shutdown even when every
    /// source has finished (a simulator with a `count`).
    ingest_tx: mpsc::Sender<Ingest>,
    ingest_rx: mpsc::Receiver<Ingest>,
}

impl App {
    /// Reads and checks everything; opens the store last; spawns nothing. Blocking (file reads,
    /// the store's open): call it before the runtime is busy, or from `spawn_blocking`.
    ///
    /// # Errors
    ///
    /// A [`StartError`] naming the file or setting to fix.
    pub fn build(cfg: Config) -> Result<App, StartError> {
        let devices = DeviceTable::from_config(&cfg);
        let client = UplinkClient::new(&UplinkTls {
            fhir_base: cfg.uplink.fhir_base.clone(),
            ca_file: cfg.uplink.ca_file.clone(),
            client_cert: cfg.uplink.client_cert.clone(),
            client_key: cfg.uplink.client_key.clone(),
            allow_insecure_http: cfg.uplink.allow_insecure_http,
            timeout: cfg.uplink.timeout,
        })
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
        let (store, _quarantined) = open_store_guarded(&cfg)?;
        let store = Arc::new(store);
        let ble = if devices.ble.is_empty() {
            None
        } else {
            // The BLE high-water marks are sealed with the store key (see sources::ble::cursor).
            let key = StoreKey::load(&cfg.store.key_file).map_err(StartError::Key)?;
            Some(sources::ble::BleSource::new(&cfg, &devices.ble, key))
        };
        let (ingest_tx, ingest_rx) = mpsc::channel(INGEST_CHANNEL);
        Ok(App {
            cfg,
            devices,
            client,
            mqtt,
            ble,
            store,
            ingest_tx,
            ingest_rx,
        })
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
    ///
    /// # Errors
    ///
    /// [`RunError::TaskEnded`] if the pipeline, the uploader or a source ended or panicked
    /// before shutdown was requested (the agent has shut down cleanly by then).
    pub async fn run(self, shutdown: CancellationToken) -> Result<RunSummary, RunError> {
        let App {
            cfg,
            devices,
            client,
            mqtt,
            ble,
            store,
            ingest_tx,
            ingest_rx,
        } = self;
        if cfg.uplink.allow_insecure_http && cfg.uplink.fhir_base.scheme() == "http" {
            tracing::warn!("INSECURE: uplink.allow_insecure_http is set and fhir_base is http://; readings (PHI) travel unencrypted. Never use this outside a lab.");
        }
        for w in cfg.warnings() {
            tracing::warn!("config: {w}");
        }

        let wake = Arc::new(Notify::new());
        let mut tasks: JoinSet<()> = JoinSet::new();
        let mut names = std::collections::HashMap::new();
        let mut spawn = |name: &'static str, critical: bool, fut: TaskFuture| {
            let h = tasks.spawn(fut);
            names.insert(h.id(), (name, critical));
        };
        let pipeline_task = tokio::spawn(pipeline::run(
            ingest_rx,
            Arc::clone(&store),
            Arc::clone(&wake),
            cfg.store.max_bytes,
        ));
        let uploader = Uploader {
            store: Arc::clone(&store),
            sender: client,
            gateway: GatewayInfo::new(&cfg.gateway.id, env!("CARGO_PKG_VERSION")),
            batch_size: cfg.uplink.batch_size,
            schedule: SchedulerConfig {
                retry: Backoff::new(cfg.uplink.backoff_initial, cfg.uplink.backoff_max),
                pause: Backoff::new(cfg.uplink.pause_initial, cfg.uplink.pause_max),
                rejection_streak_limit: REJECTION_STREAK_LIMIT,
            },
            wake: Arc::clone(&wake),
            seed: rand::random(),
            consent: crate::uploader::ConsentSource::new(&cfg.consent),
        };
        spawn("uploader", true, Box::pin(uploader.run(shutdown.clone())));
        if let Some((m, subs)) = mqtt {
            let (tx, stop) = (ingest_tx.clone(), shutdown.clone());
            spawn(
                "mqtt source",
                true,
                Box::pin(async move {
                    if let Err(e) = sources::mqtt::run(m, subs, tx, stop).await {
                        tracing::error!(error = %e, "MQTT source stopped");
                    }
                }),
            );
        }
        if let Some(src) = ble {
            let (tx, stop) = (ingest_tx.clone(), shutdown.clone());
            spawn(
                "ble source",
                true,
                Box::pin(async move {
                    if let Err(e) = sources::ble::run(src, tx, stop).await {
                        tracing::error!(error = %e, "BLE source stopped");
                    }
                }),
            );
        }
        for (serial, ctx) in &devices.serial {
            // A serial source runs until shutdown whatever the port does (absent, no
            // permission, unplugged): it retries, it never ends early.
            spawn(
                "serial source",
                true,
                Box::pin(sources::serial::run(
                    serial.clone(),
                    Arc::clone(ctx),
                    ingest_tx.clone(),
                    shutdown.clone(),
                )),
            );
        }
        for (s, ctx) in &devices.simulators {
            // A simulator with a count ends by design; one without must run until shutdown.
            spawn(
                "simulator",
                s.count.is_none(),
                Box::pin(sources::simulator::run(
                    s.clone(),
                    Arc::clone(ctx),
                    ingest_tx.clone(),
                    shutdown.clone(),
                )),
            );
        }

        let stats = store.stats().unwrap_or_default();
        tracing::info!(
            gateway = %cfg.gateway.id,
            pending = stats.pending,
            dead_letters = stats.dead,
            devices = cfg.devices.len(),
            simulators = cfg.simulators.len(),
            "vitalgate running"
        );
        notify_ready();

        // Supervise until shutdown is requested or a task the agent needs ends.
        let mut failure: Option<RunError> = None;
        let mut pipeline_task = pipeline_task;
        let mut pipeline_done = false;
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                r = &mut pipeline_task => {
                    pipeline_done = true;
                    failure = Some(task_ended("pipeline", r.err()));
                    break;
                }
                Some(r) = tasks.join_next_with_id() => {
                    let (id, err) = match r {
                        Ok((id, ())) => (id, None),
                        Err(e) => (e.id(), Some(e)),
                    };
                    let (name, critical) = names.get(&id).copied().unwrap_or(("task", true));
                    // A task ending because shutdown was requested meanwhile is the normal path.
                    if shutdown.is_cancelled() && err.is_none() {
                        break;
                    }
                    if critical || err.is_some() {
                        failure = Some(task_ended(name, err));
                        break;
                    }
                }
            }
        }
        if failure.is_some() {
            shutdown.cancel();
        }
        tracing::info!("shutting down");
        notify_stopping();

        // Sources end on `shutdown`; with the app's sender gone the pipeline's input closes
        // once they have, and the pipeline drains what they handed over.
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
        let rest = async { while tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(SHUTDOWN_GRACE, rest).await.is_err() {
            tracing::warn!("some tasks did not stop within the grace period; aborted");
            tasks.abort_all();
        }

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
        match failure {
            Some(e) => Err(e),
            None => Ok(RunSummary {
                pending_at_exit: stats.pending,
                dead_letters: stats.dead,
            }),
        }
    }
}

/// Logs the one line that names a task that ended too early, and the error for `run`.
fn task_ended(task: &'static str, err: Option<JoinError>) -> RunError {
    let why = match &err {
        Some(e) if e.is_panic() => "panicked".to_string(),
        Some(e) => e.to_string(),
        None => "returned".to_string(),
    };
    telemetry::TaskFailed { task, error: &why }.emit();
    RunError::TaskEnded { task, why }
}

fn notify_ready() {
    // Only meaningful under systemd (NOTIFY_SOCKET set); harmless elsewhere.
    if std::env::var_os("NOTIFY_SOCKET").is_some() {
        if let Err(e) = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]) {
            tracing::warn!(error = %e, "sd_notify READY failed");
        }
    }
}

fn notify_stopping() {
    if std::env::var_os("NOTIFY_SOCKET").is_some() {
        let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
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
