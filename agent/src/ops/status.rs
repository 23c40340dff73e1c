//! The live status snapshot: what `vitalgate status` shows while the daemon runs.
//!
//! # Why a snapshot file, not a socket
//!
//! The daemon writes `status.json` (and `dead-letters.json` when the dead letters change)
//! into its runtime directory, `/run/vitalgate/` (the unit's `RuntimeDirectory=`, a tmpfs),
//! every `ops.status_interval_secs` (5 s) and on every alarm or uplink state change: write a
//! temporary file, then `rename(2)` it over the old one, so a reader sees the old or the new
//! snapshot, never half of one. `vitalgate status` reads the file.
//!
//! - The daemon keeps its invariant of opening no listening socket, not even a local one: no
//!   request parser, no peer to authenticate, nothing a local process can make it do.
//! - Access is plain file permissions: the directory is `0750 vitalgate:vitalgate` and the
//!   files `0640`, so root and members of the `vitalgate` group read them, nobody else.
//! - A wedged daemon still has a readable status: its `written_at` stops moving, and
//!   `vitalgate status` says how old it is instead of hanging on a socket.
//! - The cost is bounded and measured (`cargo bench -p vitalgate --bench status_snapshot`).
//!
//! What it gives up: nothing is served on demand. Payloads of dead letters (PHI) are never
//! written here; `vitalgate dead-letters --show SEQ` reads the encrypted store and needs the
//! service stopped.
//!
//! # Contents (schema `vitalgate.status/1`)
//!
//! Counts (pending, dead letters, quarantined), per device its last reading and last
//! connection (or never), the uplink state with its reason, the client certificate's expiry,
//! disk use against the alarm thresholds, clock synchronisation, the liveness of each task,
//! the counters and the active alarms. Device names, times, counts and reasons only: no patient
//! identifier and no measured value.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::alarms::{Alarm, DISK_CRITICAL_PERCENT, DISK_WARN_PERCENT};
use super::health::UplinkState;
use super::probes::ClockState;
use super::watchdog::TaskLiveness;

pub const SCHEMA: &str = "vitalgate.status/1";
pub const STATUS_FILE: &str = "status.json";
pub const DEAD_LETTERS_FILE: &str = "dead-letters.json";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusSnapshot {
    pub schema: String,
    pub gateway: String,
    pub version: String,
    pub pid: u32,
    pub started_at: DateTime<Utc>,
    pub written_at: DateTime<Utc>,
    /// How often the daemon rewrites this file.
    pub interval_secs: u64,
    pub outbox: OutboxStatus,
    pub devices: Vec<DeviceStatus>,
    pub uplink: UplinkStatus,
    pub disk: Option<DiskStatus>,
    pub clock: ClockState,
    pub tasks: Vec<TaskLiveness>,
    pub counters: BTreeMap<String, u64>,
    pub alarms: Vec<Alarm>,
    /// The audit log's last synced entry ([`crate::audit::AuditHead`]): copied off the box by
    /// the fleet status message, checked later with `vitalgate audit verify --anchor`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit_head: Option<crate::audit::AuditHead>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboxStatus {
    pub pending: u64,
    pub dead_letters: u64,
    pub quarantined: u64,
    pub acked_tombstones: u64,
    /// Readings of withdrawn patients purged over the store's life (`consent.purge_after_days`).
    #[serde(default)]
    pub consent_purged: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceStatus {
    pub name: String,
    /// `mqtt`, `ble`, `serial` or `simulator`.
    pub kind: String,
    pub last_reading: Option<DateTime<Utc>>,
    pub last_connection: Option<DateTime<Utc>>,
    pub connected: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UplinkStatus {
    #[serde(flatten)]
    pub state: UplinkState,
    pub since: Option<DateTime<Utc>>,
    pub last_upload: Option<DateTime<Utc>>,
    pub client_certificate_expires: Option<DateTime<Utc>>,
    /// Why the expiry is unknown (unreadable certificate).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_certificate_error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DiskStatus {
    pub path: PathBuf,
    pub total_bytes: u64,
    pub available_bytes: u64,
    pub used_percent: f64,
    /// The outbox's files.
    pub outbox_bytes: u64,
    pub warn_percent: f64,
    pub critical_percent: f64,
}

impl DiskStatus {
    pub fn new(path: &Path, d: super::probes::DiskUsage, outbox_bytes: u64) -> DiskStatus {
        DiskStatus {
            path: path.to_path_buf(),
            total_bytes: d.total_bytes,
            available_bytes: d.available_bytes,
            used_percent: (d.used_percent * 10.0).round() / 10.0,
            outbox_bytes,
            warn_percent: DISK_WARN_PERCENT,
            critical_percent: DISK_CRITICAL_PERCENT,
        }
    }
}

/// The dead letters as the daemon exports them (no payloads).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetterExport {
    pub schema: String,
    pub written_at: DateTime<Utc>,
    pub dead_letters: Vec<DeadLetterLine>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetterLine {
    pub seq: u64,
    pub time: DateTime<Utc>,
    pub source: String,
    pub bytes: u64,
    pub truncated: bool,
    pub reason: String,
    /// The line `vitalgate dead-letters` prints for it.
    pub line: String,
}

impl DeadLetterLine {
    pub fn from_info(d: &crate::store::DeadLetterInfo) -> DeadLetterLine {
        DeadLetterLine {
            seq: d.seq,
            time: DateTime::<Utc>::from(d.time),
            source: d.source.clone(),
            bytes: d.size,
            truncated: d.truncated,
            reason: d.reason.clone(),
            line: d.to_string(),
        }
    }
}

/// Writes `value` as JSON to `dir/name`, atomically (temporary file + rename), mode 0640.
///
/// # Errors
///
/// The directory is missing or not writable.
pub fn write_atomic<T: Serialize>(dir: &Path, name: &str, value: &T) -> std::io::Result<()> {
    let bytes = serde_json::to_vec_pretty(value).map_err(std::io::Error::other)?;
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o640)
        .open(&tmp)?;
    f.write_all(&bytes)?;
    f.write_all(b"\n")?;
    drop(f);
    std::fs::rename(&tmp, dir.join(name))
}

/// Why a snapshot could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("no status snapshot at {0} (is the daemon running? is ops.runtime_dir right?)")]
    Missing(PathBuf),
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a status snapshot this version reads: {error}")]
    Format { path: PathBuf, error: String },
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, ReadError> {
    let bytes = std::fs::read(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => ReadError::Missing(path.to_path_buf()),
        _ => ReadError::Io {
            path: path.to_path_buf(),
            source: e,
        },
    })?;
    serde_json::from_slice(&bytes).map_err(|e| ReadError::Format {
        path: path.to_path_buf(),
        error: e.to_string(),
    })
}

/// Reads `dir/status.json`.
///
/// # Errors
///
/// [`ReadError`].
pub fn read_snapshot(dir: &Path) -> Result<StatusSnapshot, ReadError> {
    let s: StatusSnapshot = read_json(&dir.join(STATUS_FILE))?;
    if s.schema != SCHEMA {
        return Err(ReadError::Format {
            path: dir.join(STATUS_FILE),
            error: format!("schema {:?}, expected {SCHEMA:?}", s.schema),
        });
    }
    Ok(s)
}

/// Reads `dir/dead-letters.json`.
///
/// # Errors
///
/// [`ReadError`].
pub fn read_dead_letters(dir: &Path) -> Result<DeadLetterExport, ReadError> {
    read_json(&dir.join(DEAD_LETTERS_FILE))
}

impl StatusSnapshot {
    /// How old the snapshot is at `now`.
    pub fn age(&self, now: DateTime<Utc>) -> chrono::Duration {
        now - self.written_at
    }

    /// Written recently enough to come from a running daemon: within three intervals plus
    /// 10 s of slack (a loaded Pi, a slow SD card).
    pub fn is_fresh(&self, now: DateTime<Utc>) -> bool {
        let limit = i64::try_from(self.interval_secs.saturating_mul(3).saturating_add(10))
            .unwrap_or(i64::MAX);
        self.age(now) <= chrono::Duration::seconds(limit)
    }

    /// Fresh, and its process still exists (a daemon killed with SIGKILL leaves its last
    /// snapshot behind until systemd removes the runtime directory).
    pub fn is_live(&self, now: DateTime<Utc>) -> bool {
        let proc_mounted = Path::new("/proc/self").exists();
        self.is_fresh(now) && (!proc_mounted || Path::new(&format!("/proc/{}", self.pid)).exists())
    }

    /// The human form of `vitalgate status`.
    pub fn render(&self, now: DateTime<Utc>) -> String {
        let mut o = String::new();
        let up = short_duration(now - self.started_at);
        let age = self.age(now).num_seconds();
        let _ = writeln!(
            o,
            "vitalgate {} (version {}, pid {}, up {up}; status written {age} s ago)",
            self.gateway, self.version, self.pid
        );
        if !self.is_fresh(now) {
            let _ = writeln!(
                o,
                "WARNING: this status is {age} s old: the daemon is not updating it (stopped, or wedged: check `systemctl status vitalgate`)"
            );
        }
        let b = &self.outbox;
        let _ = writeln!(
            o,
            "outbox:  {} pending, {} dead letters, {} quarantined, {} purged (consent withdrawn)",
            b.pending, b.dead_letters, b.quarantined, b.consent_purged
        );
        let u = &self.uplink;
        let state = match &u.state {
            UplinkState::Idle => "idle (nothing sent since start)".to_string(),
            UplinkState::Ok => "ok".to_string(),
            UplinkState::Retrying { reason } => format!("retrying: {reason}"),
            UplinkState::Paused { reason } => format!("PAUSED: {reason}"),
            UplinkState::Held { reason } => format!("held: {reason}"),
        };
        let _ = writeln!(o, "uplink:  {state}; last upload {}", when(u.last_upload));
        match (&u.client_certificate_expires, &u.client_certificate_error) {
            (Some(t), _) => {
                let days = (*t - now).num_days();
                let _ = writeln!(
                    o,
                    "client certificate: expires {} ({days} days)",
                    t.format("%Y-%m-%d")
                );
            }
            (None, Some(e)) => {
                let _ = writeln!(o, "client certificate: unknown expiry ({e})");
            }
            (None, None) => {}
        }
        match &self.disk {
            Some(d) => {
                let _ = writeln!(
                    o,
                    "disk:    {} {:.1}% used ({} free; alarms at {:.0}%/{:.0}%); outbox {}",
                    d.path.display(),
                    d.used_percent,
                    bytes(d.available_bytes),
                    d.warn_percent,
                    d.critical_percent,
                    bytes(d.outbox_bytes)
                );
            }
            None => {
                let _ = writeln!(o, "disk:    unknown");
            }
        }
        let clock = match self.clock.synchronised {
            Some(true) => format!("synchronised ({})", self.clock.source),
            Some(false) => format!("NOT synchronised ({})", self.clock.source),
            None => "unknown (no timesyncd marker, timedatectl did not answer)".to_string(),
        };
        let _ = writeln!(o, "clock:   {clock}");
        let _ = writeln!(o, "devices:");
        if self.devices.is_empty() {
            let _ = writeln!(o, "  (none configured)");
        }
        for d in &self.devices {
            let link = match d.connected {
                Some(true) => ", connected",
                Some(false) => ", disconnected",
                None => "",
            };
            let _ = writeln!(
                o,
                "  {} ({}): last reading {}, last connection {}{link}",
                d.name,
                d.kind,
                when(d.last_reading),
                when(d.last_connection)
            );
        }
        let stalled: Vec<&str> = self
            .tasks
            .iter()
            .filter(|t| !t.live)
            .map(|t| t.task.as_str())
            .collect();
        if stalled.is_empty() {
            let _ = writeln!(o, "tasks:   {} live", self.tasks.len());
        } else {
            let _ = writeln!(o, "tasks:   STALLED: {}", stalled.join(", "));
        }
        if self.alarms.is_empty() {
            let _ = writeln!(o, "alarms:  none");
        } else {
            let _ = writeln!(o, "alarms:");
            for a in &self.alarms {
                let _ = writeln!(
                    o,
                    "  {:?} {} since {}: {}",
                    a.severity,
                    a.kind.as_str(),
                    a.since.format("%Y-%m-%dT%H:%M:%SZ"),
                    a.message
                );
            }
        }
        let counters: Vec<String> = self
            .counters
            .iter()
            .filter(|(_, v)| **v > 0)
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let _ = writeln!(o, "counters: {}", counters.join(" "));
        if let Some(h) = &self.audit_head {
            let _ = writeln!(o, "audit head: {}:{}", h.seq, h.hash);
        }
        o
    }
}

fn when(t: Option<DateTime<Utc>>) -> String {
    t.map_or_else(
        || "never".to_string(),
        |t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
    )
}

fn short_duration(d: chrono::Duration) -> String {
    let s = d.num_seconds().max(0);
    match s {
        0..=119 => format!("{s}s"),
        120..=7199 => format!("{}m", s / 60),
        7200..=172_799 => format!("{}h{}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d{}h", s / 86_400, (s % 86_400) / 3600),
    }
}

fn bytes(n: u64) -> String {
    const K: f64 = 1024.0;
    let f = n as f64;
    if f >= K * K * K {
        format!("{:.1} GiB", f / (K * K * K))
    } else if f >= K * K {
        format!("{:.1} MiB", f / (K * K))
    } else if f >= K {
        format!("{:.1} KiB", f / K)
    } else {
        format!("{n} B")
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn sample(now: DateTime<Utc>) -> StatusSnapshot {
        StatusSnapshot {
            schema: SCHEMA.into(),
            gateway: "gw-1".into(),
            version: "0.1.0".into(),
            pid: 42,
            started_at: now - chrono::Duration::hours(3),
            written_at: now - chrono::Duration::seconds(2),
            interval_secs: 5,
            outbox: OutboxStatus {
                pending: 3,
                dead_letters: 1,
                quarantined: 0,
                acked_tombstones: 9,
                consent_purged: 0,
            },
            devices: vec![
                DeviceStatus {
                    name: "hub-1".into(),
                    kind: "mqtt".into(),
                    last_reading: Some(now - chrono::Duration::minutes(1)),
                    last_connection: Some(now - chrono::Duration::hours(3)),
                    connected: Some(true),
                },
                DeviceStatus {
                    name: "cuff-3".into(),
                    kind: "ble".into(),
                    last_reading: None,
                    last_connection: None,
                    connected: None,
                },
            ],
            uplink: UplinkStatus {
                state: UplinkState::Retrying {
                    reason: "timeout".into(),
                },
                since: Some(now),
                last_upload: None,
                client_certificate_expires: Some(now + chrono::Duration::days(40)),
                client_certificate_error: None,
            },
            disk: None,
            clock: ClockState {
                synchronised: Some(true),
                source: "systemd-timesyncd".into(),
            },
            tasks: vec![],
            counters: BTreeMap::from([("readings_stored".to_string(), 4)]),
            alarms: vec![],
            audit_head: Some(crate::audit::AuditHead {
                seq: 41,
                hash: "ab".repeat(32),
            }),
        }
    }

    #[test]
    fn the_snapshot_round_trips_through_an_atomic_write_readable_by_the_group() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let now: DateTime<Utc> = "2026-05-01T12:00:00Z".parse().unwrap();
        let s = sample(now);
        write_atomic(dir.path(), STATUS_FILE, &s).unwrap();
        assert_eq!(read_snapshot(dir.path()).unwrap(), s);
        let mode = std::fs::metadata(dir.path().join(STATUS_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o640);
        assert!(!dir.path().join(".status.json.tmp").exists());
        let v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.path().join(STATUS_FILE)).unwrap()).unwrap();
        assert_eq!(v["uplink"]["state"], "retrying");
        assert_eq!(v["uplink"]["reason"], "timeout");
        assert!(matches!(
            read_snapshot(&dir.path().join("nope")),
            Err(ReadError::Missing(_))
        ));
    }

    #[test]
    fn the_human_form_shows_never_for_silent_devices_and_warns_when_stale() {
        let now: DateTime<Utc> = "2026-05-01T12:00:00Z".parse().unwrap();
        let s = sample(now);
        let text = s.render(now);
        assert!(
            text.contains("cuff-3 (ble): last reading never, last connection never"),
            "{text}"
        );
        assert!(
            text.contains("3 pending, 1 dead letters, 0 quarantined"),
            "{text}"
        );
        assert!(text.contains("retrying: timeout"), "{text}");
        assert!(
            text.contains("(40 days)") || text.contains("(39 days)"),
            "{text}"
        );
        assert!(!text.contains("WARNING"), "{text}");
        let later = now + chrono::Duration::seconds(60);
        assert!(!s.is_fresh(later));
        assert!(s.render(later).contains("WARNING: this status is 62 s old"));
    }
}
