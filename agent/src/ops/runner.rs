//! The ops task: every `ops.status_interval_secs` (and at once on an uplink or connection
//! change) it gathers what the agent knows, decides the alarms, and writes the status
//! snapshot; it hands the snapshot and the alarm changes to the fleet publisher.
//!
//! ```text
//! loop (interval, or health::changed()):
//!   outbox counts (store.stats)  ─┐   dead letters changed? → dead-letters.json
//!   disk (statvfs), outbox size   ├─▶ AlarmBook::evaluate(inputs, now) ─▶ AlarmChanged.emit() + fleet
//!   clock (every 60 s)            │                                      (journal line, counter)
//!   certificate (every 10 min)    │
//!   health, counters, liveness   ─┘─▶ StatusSnapshot ─▶ status.json (atomic) + fleet
//! ```
//!
//! State that must survive a reload (the active alarms, since when each device is watched)
//! lives in [`OpsShared`], owned by the app.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;

use super::alarms::{self, AlarmBook, AlarmEvent};
use super::health;
use super::probes::{self, ClockState};
use super::status::{
    self, DeadLetterExport, DeadLetterLine, DeviceStatus, DiskStatus, OutboxStatus, StatusSnapshot,
    UplinkStatus,
};
use super::watchdog::Liveness;
use crate::config::{Config, DeviceKind, OpsConfig};
use crate::store::Outbox;
use crate::telemetry;

/// How often the clock state is asked (it may start a `timedatectl`).
pub const CLOCK_EVERY: Duration = Duration::from_secs(60);
/// How often the client certificate is re-read (a renewed one is also picked up by reload, and
/// at once when the uplink puts a rotated one in use).
pub const CERT_EVERY: Duration = Duration::from_secs(600);

/// What the ops task needs from the configuration.
#[derive(Debug, Clone)]
pub struct OpsContext {
    pub gateway_id: String,
    /// (name, kind) of every device and simulator.
    pub devices: Vec<(String, &'static str)>,
    pub ops: OpsConfig,
    pub data_dir: PathBuf,
    pub client_cert: PathBuf,
}

impl OpsContext {
    pub fn from_config(cfg: &Config) -> OpsContext {
        let mut devices: Vec<(String, &'static str)> = cfg
            .devices
            .iter()
            .map(|d| {
                let kind = match d.kind {
                    DeviceKind::Mqtt { .. } => "mqtt",
                    DeviceKind::Ble { .. } => "ble",
                    DeviceKind::Serial { .. } => "serial",
                };
                (d.name.clone(), kind)
            })
            .collect();
        devices.extend(cfg.simulators.iter().map(|s| (s.name.clone(), "simulator")));
        // A serial device's own `silence_alarm_secs` watches it here too (the fleet alarm and
        // the status), unless `ops.device_silent_after_secs` names it.
        let mut ops = cfg.ops.clone();
        for d in &cfg.devices {
            if let DeviceKind::Serial(s) = &d.kind {
                if let Some(after) = s.silence_alarm {
                    ops.device_silent_after
                        .entry(d.name.clone())
                        .or_insert(after);
                }
            }
        }
        OpsContext {
            gateway_id: cfg.gateway.id.clone(),
            devices,
            ops,
            data_dir: cfg.gateway.data_dir.clone(),
            client_cert: cfg.uplink.client_cert.clone(),
        }
    }
}

/// Ops state owned by the app across reloads.
pub struct OpsShared {
    pub started_at: DateTime<Utc>,
    pub liveness: Liveness,
    book: Mutex<AlarmBook>,
    watched_since: Mutex<BTreeMap<String, DateTime<Utc>>>,
    /// The latest snapshot, for the fleet publisher.
    pub snapshots: watch::Sender<Option<Arc<StatusSnapshot>>>,
    /// Alarm changes, for the fleet publisher.
    pub alarms: broadcast::Sender<AlarmEvent>,
}

impl OpsShared {
    pub fn new(liveness: Liveness, started_at: DateTime<Utc>) -> OpsShared {
        OpsShared {
            started_at,
            liveness,
            book: Mutex::new(AlarmBook::default()),
            watched_since: Mutex::new(BTreeMap::new()),
            snapshots: watch::channel(None).0,
            alarms: broadcast::channel(64).0,
        }
    }

    /// The active alarms.
    pub fn active_alarms(&self) -> Vec<alarms::Alarm> {
        self.book
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .active()
    }
}

struct Cached<T> {
    value: T,
    at: Option<Instant>,
}

/// Runs until `shutdown`.
pub async fn run(
    ctx: OpsContext,
    store: Arc<Outbox>,
    shared: Arc<OpsShared>,
    shutdown: CancellationToken,
) {
    {
        // Devices added by this (re)start are watched from now.
        #[allow(clippy::disallowed_methods)] // the edge: the ops task reads the clock
        let now = Utc::now();
        let mut w = shared
            .watched_since
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        w.retain(|name, _| ctx.devices.iter().any(|(n, _)| n == name));
        for (name, _) in &ctx.devices {
            w.entry(name.clone()).or_insert(now);
        }
    }
    if ctx.ops.runtime_dir_configured {
        if let Err(e) = std::fs::create_dir_all(&ctx.ops.runtime_dir) {
            telemetry::StatusWriteFailed {
                path: &ctx.ops.runtime_dir,
                error: &e,
            }
            .emit();
        }
    }
    // Without systemd's RuntimeDirectory= (a development run) and no ops.runtime_dir, there
    // is nowhere to write: alarms and fleet reporting still work.
    let write_files = ctx.ops.runtime_dir.is_dir();
    if !write_files {
        tracing::info!(dir = %ctx.ops.runtime_dir.display(), "no runtime directory: no status snapshot (set ops.runtime_dir, or run under systemd)");
    }
    let mut clock = Cached {
        value: ClockState {
            synchronised: None,
            source: "unknown".into(),
        },
        at: None,
    };
    let mut cert: Cached<Result<DateTime<Utc>, String>> = Cached {
        value: Err("not read yet".into()),
        at: None,
    };
    let mut cert_rotations = crate::uplink::client::client_cert_rotations();
    let mut dead_seen: Option<u64> = None;
    let mut collision_dead_letters: Option<u64> = None;
    loop {
        if clock.at.is_none_or(|t| t.elapsed() >= CLOCK_EVERY) {
            clock = Cached {
                value: probes::clock_state().await,
                at: Some(Instant::now()),
            };
        }
        // A rotated client certificate the uplink put in use is read at once, so the expiry
        // alarm follows it (and clears when the renewed certificate is in date).
        let rotations = crate::uplink::client::client_cert_rotations();
        if cert.at.is_none_or(|t| t.elapsed() >= CERT_EVERY) || rotations != cert_rotations {
            cert_rotations = rotations;
            cert = Cached {
                value: super::cert::not_after_pem_file(&ctx.client_cert).map_err(|e| e.to_string()),
                at: Some(Instant::now()),
            };
        }
        let st = Arc::clone(&store);
        let stats = tokio::task::spawn_blocking(move || st.stats())
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default();
        if write_files && dead_seen != Some(stats.dead) {
            let st = Arc::clone(&store);
            if let Ok(Ok(list)) = tokio::task::spawn_blocking(move || st.dead_letters()).await {
                collision_dead_letters = Some(
                    list.iter()
                        .filter(|d| d.reason.contains("identifier_collision"))
                        .count() as u64,
                );
                #[allow(clippy::disallowed_methods)] // the edge
                let export = DeadLetterExport {
                    schema: "vitalgate.dead-letters/1".into(),
                    written_at: Utc::now(),
                    dead_letters: list.iter().map(DeadLetterLine::from_info).collect(),
                };
                match status::write_atomic(&ctx.ops.runtime_dir, status::DEAD_LETTERS_FILE, &export)
                {
                    Ok(()) => dead_seen = Some(stats.dead),
                    Err(e) => telemetry::StatusWriteFailed {
                        path: &ctx.ops.runtime_dir,
                        error: &e,
                    }
                    .emit(),
                }
            }
        }

        #[allow(clippy::disallowed_methods)] // the edge: the ops task reads the clock
        let now = Utc::now();
        let snapshot = build(
            &ctx,
            &shared,
            stats,
            &clock.value,
            &cert.value,
            collision_dead_letters,
            now,
        );
        if write_files {
            if let Err(e) =
                status::write_atomic(&ctx.ops.runtime_dir, status::STATUS_FILE, &snapshot)
            {
                telemetry::StatusWriteFailed {
                    path: &ctx.ops.runtime_dir,
                    error: &e,
                }
                .emit();
            }
        }
        shared.snapshots.send_replace(Some(Arc::new(snapshot)));

        let stop = tokio::select! {
            _ = tokio::time::sleep(ctx.ops.status_interval) => false,
            // Debounced: a burst of changes makes one snapshot.
            _ = health::changed() => {
                tokio::time::sleep(Duration::from_millis(100)).await;
                false
            }
            _ = shutdown.cancelled() => true,
        };
        if stop {
            // A stopped daemon has no live status (under systemd the runtime directory goes
            // too); `vitalgate status` then reads the outbox.
            if write_files {
                let _ = std::fs::remove_file(ctx.ops.runtime_dir.join(status::STATUS_FILE));
            }
            return;
        }
    }
}

/// Decides the alarms (emitting their changes) and builds the snapshot: one round of the ops
/// task without the store read and the file write (public for the `status_snapshot` bench).
pub fn build(
    ctx: &OpsContext,
    shared: &OpsShared,
    stats: crate::store::Stats,
    clock: &ClockState,
    cert: &Result<DateTime<Utc>, String>,
    collision_dead_letters: Option<u64>,
    now: DateTime<Utc>,
) -> StatusSnapshot {
    let h = health::snapshot();
    let disk = probes::disk_usage(&ctx.data_dir).ok().map(|d| {
        let outbox = ctx.data_dir.join("outbox");
        DiskStatus::new(&ctx.data_dir, d, probes::dir_size(&outbox))
    });
    let counters: BTreeMap<String, u64> = telemetry::COUNTERS
        .snapshot()
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    let devices: Vec<DeviceStatus> = ctx
        .devices
        .iter()
        .map(|(name, kind)| {
            let a = h.devices.get(name).cloned().unwrap_or_default();
            let (last_connection, connected) = if *kind == "mqtt" {
                (h.mqtt.last_connection, h.mqtt.connected)
            } else {
                (a.last_connection, a.connected)
            };
            DeviceStatus {
                name: name.clone(),
                kind: (*kind).to_string(),
                last_reading: a.last_reading.map(DateTime::<Utc>::from),
                last_connection: last_connection.map(DateTime::<Utc>::from),
                connected,
            }
        })
        .collect();

    let events = {
        let watched = shared
            .watched_since
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let watch: Vec<alarms::Watched<'_>> = ctx
            .ops
            .device_silent_after
            .iter()
            .map(|(name, after)| alarms::Watched {
                name,
                silent_after: *after,
                last_reading: devices
                    .iter()
                    .find(|d| &d.name == name)
                    .and_then(|d| d.last_reading),
                watched_since: watched.get(name).copied().unwrap_or(shared.started_at),
            })
            .collect();
        let inputs = alarms::Inputs {
            disk_used_percent: disk.as_ref().map(|d| d.used_percent),
            uplink: &h.uplink,
            cert_not_after: cert.as_ref().ok().copied(),
            cert_warn: ctx.ops.cert_expiry_warn,
            devices: watch,
            quarantined: stats.quarantined,
            collisions_seen: counters.get("identifier_collisions").copied().unwrap_or(0),
            collision_dead_letters,
            clock_synchronised: clock.synchronised,
            store_failed: telemetry::GAUGES
                .store_failed
                .load(std::sync::atomic::Ordering::Relaxed)
                != 0,
        };
        shared
            .book
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .evaluate(&inputs, now)
    };
    for e in &events {
        telemetry::AlarmChanged { event: e }.emit();
        let _ = shared.alarms.send(e.clone());
    }

    StatusSnapshot {
        audit_head: crate::audit::head(),
        schema: status::SCHEMA.into(),
        gateway: ctx.gateway_id.clone(),
        version: env!("CARGO_PKG_VERSION").into(),
        pid: std::process::id(),
        started_at: shared.started_at,
        written_at: now,
        interval_secs: ctx.ops.status_interval.as_secs(),
        outbox: OutboxStatus {
            pending: stats.pending,
            dead_letters: stats.dead,
            quarantined: stats.quarantined,
            acked_tombstones: stats.acked_tombstones,
            consent_purged: stats.purged,
        },
        devices,
        uplink: UplinkStatus {
            state: h.uplink.clone(),
            since: h.uplink_since.map(DateTime::<Utc>::from),
            last_upload: h.last_upload.map(DateTime::<Utc>::from),
            client_certificate_expires: cert.as_ref().ok().copied(),
            client_certificate_error: cert.as_ref().err().cloned(),
        },
        disk,
        clock: clock.clone(),
        tasks: shared.liveness.check(Instant::now()),
        counters,
        alarms: shared.active_alarms(),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use super::OpsContext;
    use crate::config::Config;

    /// The minimal config (config's own tests) with one serial oximeter.
    fn base() -> String {
        format!(
            "{}[[devices]]\nname = \"ox\"\nkind = \"serial\"\nport = \"/dev/serial/by-id/usb-FTDI_FT232R-if00-port0\"\nprotocol = \"nonin-df7\"\npatient = \"Patient/p1\"\n",
            crate::config::tests::MINIMAL
        )
    }

    fn silent_after(text: &str) -> Option<Duration> {
        let cfg = Config::from_str_at(text, Path::new("/etc/vitalgate/t.toml")).unwrap();
        OpsContext::from_config(&cfg)
            .ops
            .device_silent_after
            .get("ox")
            .copied()
    }

    #[test]
    fn a_serial_devices_silence_alarm_watches_it_unless_ops_names_it() {
        // A streaming oximeter has a 60 s silence alarm by default: the ops alarm book (status,
        // fleet alarm) watches it with the same allowance.
        assert_eq!(silent_after(&base()), Some(Duration::from_secs(60)));
        // Switched off on the device: not watched.
        let off = base().replace(
            "patient = \"Patient/p1\"",
            "patient = \"Patient/p1\"\nsilence_alarm_secs = 0",
        );
        assert_eq!(silent_after(&off), None);
        // Named in [ops]: that value wins.
        let ops = format!(
            "{}\n[ops]\ndevice_silent_after_secs = {{ \"ox\" = 900 }}\n",
            base()
        );
        assert_eq!(silent_after(&ops), Some(Duration::from_secs(900)));
    }
}
