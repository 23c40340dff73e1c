//! Wiring: the one place that sees every layer. Loads the key and the store, builds the uplink
//! client, starts the pipeline, the uploader and the sources, tells systemd it is ready, and owns
//! the single shutdown path (one `CancellationToken` fanned out, a `TaskTracker`, a grace period).
//!
//! The daemon (`vitalgate run`) and the devkit demo both call [`run`]; the demo only passes an
//! event subscriber and a loopback config.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{broadcast, mpsc, Notify};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Config, DeviceKind};
use crate::events::AgentEvent;
use crate::pipeline::{self, DeviceContext};
use crate::sources::{self, mqtt::Subscription};
use crate::store::{Outbox, OutboxOptions, StoreKey};
use crate::uplink::backoff::Backoff;
use crate::uplink::client::{UplinkClient, UplinkTls};
use crate::uplink::fhir::GatewayInfo;
use crate::uploader::Uploader;

/// How long tasks get to finish after shutdown is requested.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

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

/// What a finished run reports.
#[derive(Debug, Clone, Default)]
pub struct RunSummary {
    pub pending_at_exit: u64,
    pub dead_letters: u64,
}

/// Opens the outbox described by `cfg` (used by `run` and by the CLI's store commands).
pub fn open_store(cfg: &Config) -> Result<Outbox, StartError> {
    let key = StoreKey::load(&cfg.store.key_file).map_err(StartError::Key)?;
    std::fs::create_dir_all(&cfg.gateway.data_dir).map_err(|e| StartError::DataDir {
        path: cfg.gateway.data_dir.clone(),
        source: e,
    })?;
    Outbox::open(
        &cfg.gateway.data_dir.join("outbox"),
        key,
        OutboxOptions {
            cache_capacity: cfg.store.cache_capacity_bytes,
            tombstone_retention: cfg.store.acked_retention,
        },
    )
    .map_err(StartError::Store)
}

/// Runs the agent until `shutdown` is cancelled.
pub async fn run(
    cfg: Config,
    shutdown: CancellationToken,
    events: Option<broadcast::Sender<AgentEvent>>,
) -> Result<RunSummary, StartError> {
    // Everything that can fail because of config or files fails here, before any task starts.
    let cfg2 = cfg.clone();
    let store = match tokio::task::spawn_blocking(move || open_store(&cfg2)).await {
        Ok(r) => Arc::new(r?),
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    };
    let client = UplinkClient::new(&UplinkTls {
        fhir_base: cfg.uplink.fhir_base.clone(),
        ca_file: cfg.uplink.ca_file.clone(),
        client_cert: cfg.uplink.client_cert.clone(),
        client_key: cfg.uplink.client_key.clone(),
        allow_insecure_http: cfg.uplink.allow_insecure_http,
        timeout: cfg.uplink.timeout,
    })
    .map_err(StartError::Uplink)?;
    if cfg.uplink.allow_insecure_http && cfg.uplink.fhir_base.scheme() == "http" {
        tracing::warn!("INSECURE: uplink.allow_insecure_http is set and fhir_base is http://; readings (PHI) travel unencrypted. Never use this outside a lab.");
    }
    let gw = &cfg.gateway;
    let mut subs = Vec::new();
    let mut devices = HashMap::new();
    for d in &cfg.devices {
        let ctx = Arc::new(DeviceContext::from_device(&gw.id, gw.device_utc_offset, d));
        devices.insert(d.name.clone(), Arc::clone(&ctx));
        match &d.kind {
            DeviceKind::Mqtt { topic } => subs.push(Subscription {
                filter: topic.clone(),
                device: ctx,
            }),
            DeviceKind::Ble { .. } => {
                tracing::warn!(device = %d.name, "BLE transport is not available in this version; device ignored")
            }
            DeviceKind::Serial { .. } => {
                tracing::warn!(device = %d.name, "serial transport is not available in this version; device ignored")
            }
        }
    }
    let mqtt_opts = match (&cfg.mqtt, subs.is_empty()) {
        (Some(m), false) => {
            // Validate (and read the password file) now, not in the task.
            sources::mqtt::options(m).map_err(StartError::Mqtt)?;
            Some(m.clone())
        }
        _ => None,
    };

    let tracker = TaskTracker::new();
    let (tx, rx) = mpsc::channel(256);
    let wake = Arc::new(Notify::new());
    // The pipeline stops when every source has dropped its sender, so nothing accepted by a
    // source is left unprocessed; sources stop on `shutdown`.
    let pipeline_stop = CancellationToken::new();
    let pipeline_task = tracker.spawn(pipeline::run(
        rx,
        Arc::clone(&store),
        Arc::clone(&wake),
        events.clone(),
        pipeline_stop.clone(),
    ));
    let uploader = Uploader {
        store: Arc::clone(&store),
        client,
        gateway: GatewayInfo::new(&gw.id, env!("CARGO_PKG_VERSION")),
        batch_size: cfg.uplink.batch_size,
        backoff: Backoff::new(cfg.uplink.backoff_initial, cfg.uplink.backoff_max),
        wake: Arc::clone(&wake),
        events: events.clone(),
    };
    tracker.spawn(uploader.run(shutdown.clone()));
    if let Some(m) = mqtt_opts {
        let (tx, shutdown) = (tx.clone(), shutdown.clone());
        tracker.spawn(async move {
            if let Err(e) = sources::mqtt::run(m, subs, tx, shutdown).await {
                tracing::error!(error = %e, "MQTT source stopped");
            }
        });
    }
    for s in &cfg.simulators {
        let ctx = Arc::new(DeviceContext::from_simulator(&gw.id, s));
        tracker.spawn(sources::simulator::run(
            s.clone(),
            ctx,
            tx.clone(),
            shutdown.clone(),
        ));
    }
    drop(tx);
    tracker.close();

    let stats = store.stats().unwrap_or_default();
    tracing::info!(
        gateway = %gw.id,
        pending = stats.pending,
        dead_letters = stats.dead,
        devices = cfg.devices.len(),
        simulators = cfg.simulators.len(),
        "vitalgate running"
    );
    notify_ready();

    shutdown.cancelled().await;
    tracing::info!("shutting down");
    notify_stopping();
    // Sources end on `shutdown`; the pipeline drains what they sent, then ends.
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, pipeline_task).await;
    if drained.is_err() {
        tracing::warn!("pipeline did not drain within the grace period");
    }
    pipeline_stop.cancel();
    if tokio::time::timeout(SHUTDOWN_GRACE, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!("some tasks did not stop within the grace period");
    }
    let stats = store.stats().unwrap_or_default();
    let counters: Vec<String> = crate::telemetry::COUNTERS
        .snapshot()
        .into_iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    tracing::info!(pending = stats.pending, dead_letters = stats.dead, counters = %counters.join(" "), "stopped");
    Ok(RunSummary {
        pending_at_exit: stats.pending,
        dead_letters: stats.dead,
    })
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
    #[cfg(unix)]
    {
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
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
