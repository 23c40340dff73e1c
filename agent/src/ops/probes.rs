//! Facts about the machine the status, the alarms and `doctor` need: disk use, clock
//! synchronisation, the outbox's size on disk. I/O at the edge; the decisions on what they
//! mean live in [`super::alarms`] and [`super::doctor`].

use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Disk use of the filesystem holding a directory.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct DiskUsage {
    pub total_bytes: u64,
    pub available_bytes: u64,
    /// As `df` counts it: `used / (used + available)` with `used = total - free`, so blocks
    /// reserved for root count neither as used nor as available.
    pub used_percent: f64,
}

/// statvfs(2) of `path`'s filesystem.
///
/// # Errors
///
/// The path does not exist or statvfs fails.
pub fn disk_usage(path: &Path) -> std::io::Result<DiskUsage> {
    let total = fs2::total_space(path)?;
    let free = fs2::free_space(path)?;
    let available = fs2::available_space(path)?;
    Ok(DiskUsage {
        total_bytes: total,
        available_bytes: available,
        used_percent: used_percent(total, free, available),
    })
}

/// Pure: the percentage used, as `df` shows it (statvfs: `total` = f_blocks, `free` = f_bfree,
/// `available` = f_bavail, in bytes). Root's reserved blocks (free but not available) are left
/// out of both sides, so a filesystem an unprivileged writer has filled reads 100 %.
pub fn used_percent(total: u64, free: u64, available: u64) -> f64 {
    let used = total.saturating_sub(free);
    let base = used.saturating_add(available);
    if base == 0 {
        return 100.0;
    }
    (used as f64 * 100.0 / base as f64).clamp(0.0, 100.0)
}

/// Bytes of the regular files under `dir` (two levels: sled's files and `blobs/`).
pub fn dir_size(dir: &Path) -> u64 {
    fn walk(dir: &Path, depth: u8) -> u64 {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return 0;
        };
        entries
            .flatten()
            .map(|e| match e.metadata() {
                Ok(m) if m.is_file() => m.len(),
                Ok(m) if m.is_dir() && depth > 0 => walk(&e.path(), depth - 1),
                _ => 0,
            })
            .sum()
    }
    walk(dir, 1)
}

/// Whether the system clock is synchronised, and who says so.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClockState {
    /// `None`: no source could tell.
    pub synchronised: Option<bool>,
    /// `systemd-timesyncd`, `timedatectl` (the kernel's NTP state, whoever sets it: chrony,
    /// ntpd, timesyncd), or `unknown`.
    pub source: String,
}

/// systemd-timesyncd touches this file once it has synchronised the clock.
pub const TIMESYNCD_MARKER: &str = "/run/systemd/timesync/synchronized";

/// How long `timedatectl` may take before the answer is "unknown".
pub const TIMEDATECTL_TIMEOUT: Duration = Duration::from_secs(3);

/// Asks timesyncd's marker file, then `timedatectl show -p NTPSynchronized` (which reports
/// the kernel's synchronisation flag, as `adjtimex(2)` does, through systemd-timedated).
pub async fn clock_state() -> ClockState {
    if Path::new(TIMESYNCD_MARKER).exists() {
        return ClockState {
            synchronised: Some(true),
            source: "systemd-timesyncd".into(),
        };
    }
    let run = tokio::process::Command::new("timedatectl")
        .args(["show", "--property=NTPSynchronized", "--value"])
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    match tokio::time::timeout(TIMEDATECTL_TIMEOUT, run).await {
        Ok(Ok(out)) if out.status.success() => ClockState {
            synchronised: parse_ntp_synchronized(&String::from_utf8_lossy(&out.stdout)),
            source: "timedatectl".into(),
        },
        _ => ClockState {
            synchronised: None,
            source: "unknown".into(),
        },
    }
}

/// `yes` / `no` from `timedatectl show --property=NTPSynchronized --value`.
pub fn parse_ntp_synchronized(stdout: &str) -> Option<bool> {
    match stdout.trim() {
        "yes" => Some(true),
        "no" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_used_as_df_counts_it() {
        // No reserved blocks: used / total.
        assert_eq!(used_percent(1000, 250, 250), 75.0);
        assert_eq!(used_percent(1000, 1000, 1000), 0.0);
        // 5 % reserved for root: 700 used, 250 available to us -> 73.7 %, not 75 %.
        assert!((used_percent(1000, 300, 250) - 73.68).abs() < 0.01);
        // Everything but the reserve used: full for the agent.
        assert_eq!(used_percent(1000, 50, 0), 100.0);
        assert_eq!(used_percent(0, 0, 0), 100.0);
    }

    #[test]
    fn timedatectl_answers() {
        assert_eq!(parse_ntp_synchronized("yes\n"), Some(true));
        assert_eq!(parse_ntp_synchronized("no\n"), Some(false));
        assert_eq!(parse_ntp_synchronized(""), None);
    }

    #[test]
    fn disk_usage_of_a_real_directory_and_dir_size_count_files() {
        let dir = tempfile::tempdir().unwrap();
        let d = disk_usage(dir.path()).unwrap();
        assert!(d.total_bytes > 0 && d.available_bytes <= d.total_bytes);
        std::fs::write(dir.path().join("a"), [0u8; 100]).unwrap();
        std::fs::create_dir(dir.path().join("blobs")).unwrap();
        std::fs::write(dir.path().join("blobs/b"), [0u8; 23]).unwrap();
        assert_eq!(dir_size(dir.path()), 123);
        assert!(disk_usage(&dir.path().join("missing")).is_err());
    }
}
