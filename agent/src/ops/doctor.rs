//! `vitalgate doctor`: the one command a technician runs on site. Each check prints ✓ or ✗
//! (– when it does not apply) and, for ✗, the fix in one line; the exit status is non-zero if
//! anything is ✗.
//!
//! Run it as the service user (`sudo -u vitalgate vitalgate doctor`): the key file, the store
//! and the serial ports are then checked with exactly the access the daemon has. As root,
//! permission problems of the service user cannot show.
//!
//! | check | how |
//! |---|---|
//! | config | [`Config::load`], every check of `check-config` |
//! | store key | present, a regular file, mode 0600, 32 bytes ([`StoreKey::load`]) |
//! | store | opens with the key (or, while the daemon holds it, the daemon's fresh status snapshot) |
//! | disk | the data directory's filesystem below 90 % and 100 MiB free |
//! | clock | systemd-timesyncd's marker, else `timedatectl` (the kernel's NTP flag) |
//! | bluetooth | only with BLE devices: org.bluez on the system bus (`busctl`), an adapter, powered; BlueZ's version from `bluetoothctl --version` |
//! | serial ports | each configured port exists, is a character device, and this user may read and write it |
//! | MQTT broker(s) | an MQTT CONNECT/CONNACK with the configured credentials and TLS, under a client id of its own (`<client_id>-doctor`: never the daemon's session) |
//! | uplink certificate | readable, not expired |
//! | uplink | [`uplink_check`]: the checks of `vitalgate check-uplink` in one line (TLS handshake, server capabilities) |

use std::fmt::Write as _;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::probes;
use crate::config::{Config, DeviceKind, MqttConfig};

/// ✓, ✗ or – (does not apply).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mark {
    Pass,
    Fail,
    Skip,
}

impl Mark {
    pub fn symbol(self) -> &'static str {
        match self {
            Mark::Pass => "✓",
            Mark::Fail => "✗",
            Mark::Skip => "–",
        }
    }
}

/// One line of the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub name: String,
    pub mark: Mark,
    pub detail: String,
    /// What to do, for ✗.
    pub fix: Option<String>,
}

impl Check {
    pub(crate) fn pass(name: &str, detail: impl Into<String>) -> Check {
        Check {
            name: name.into(),
            mark: Mark::Pass,
            detail: detail.into(),
            fix: None,
        }
    }
    pub(crate) fn fail(name: &str, detail: impl Into<String>, fix: impl Into<String>) -> Check {
        Check {
            name: name.into(),
            mark: Mark::Fail,
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }
    fn skip(name: &str, detail: impl Into<String>) -> Check {
        Check {
            name: name.into(),
            mark: Mark::Skip,
            detail: detail.into(),
            fix: None,
        }
    }
}

/// Disk use from which `doctor` says ✗ (the critical alarm's threshold).
pub const DISK_FULL_PERCENT: f64 = super::alarms::DISK_CRITICAL_PERCENT;
/// Free space below which `doctor` says ✗ whatever the percentage.
pub const DISK_MIN_FREE: u64 = 100 * 1024 * 1024;
/// How long a network check may take.
pub const NET_TIMEOUT: Duration = Duration::from_secs(5);

/// Runs every check for the config at `path`.
pub async fn run(path: &Path) -> Vec<Check> {
    let mut out = Vec::new();
    let cfg = match Config::load(path) {
        Ok(c) => {
            out.push(Check::pass(
                "config",
                format!(
                    "{}: gateway {}, {} device(s), {} simulator(s)",
                    path.display(),
                    c.gateway.id,
                    c.devices.len(),
                    c.simulators.len()
                ),
            ));
            c
        }
        Err(e) => {
            out.push(Check::fail(
                "config",
                e.to_string(),
                "edit the file at the line and column shown (every key is documented in /etc/vitalgate/vitalgate.example.toml), then run doctor again",
            ));
            return out;
        }
    };
    let key_ok = {
        let c = key_check(&cfg.store.key_file);
        let ok = c.mark == Mark::Pass;
        out.push(c);
        ok
    };
    out.push(store_check(&cfg, key_ok));
    out.push(disk_check(&cfg.gateway.data_dir));
    out.push(clock_check(probes::clock_state().await));
    out.extend(bluetooth_check(&cfg).await);
    out.extend(serial_checks(&cfg, &Identity::current()));
    if let Some(m) = &cfg.mqtt {
        out.push(mqtt_check("MQTT broker", m).await);
    }
    if let Some(f) = &cfg.fleet {
        if cfg
            .mqtt
            .as_ref()
            .is_none_or(|m| m.host != f.mqtt.host || m.port != f.mqtt.port)
        {
            out.push(mqtt_check("fleet broker", &f.mqtt).await);
        }
    }
    out.push(cert_check(&cfg.uplink.client_cert, now()));
    out.push(uplink_check(&cfg).await);
    out
}

fn now() -> DateTime<Utc> {
    #[allow(clippy::disallowed_methods)] // the edge: a technician runs doctor now
    Utc::now()
}

/// The report as printed, and whether everything passed.
pub fn render(checks: &[Check]) -> (String, bool) {
    let mut o = String::new();
    let width = checks
        .iter()
        .map(|c| c.name.chars().count())
        .max()
        .unwrap_or(0);
    for c in checks {
        let pad = width.saturating_sub(c.name.chars().count());
        let _ = writeln!(
            o,
            "{} {}{}  {}",
            c.mark.symbol(),
            c.name,
            " ".repeat(pad),
            c.detail
        );
        if let Some(fix) = &c.fix {
            let _ = writeln!(o, "  {}  fix: {fix}", " ".repeat(width));
        }
    }
    let failed = checks.iter().filter(|c| c.mark == Mark::Fail).count();
    let passed = checks.iter().filter(|c| c.mark == Mark::Pass).count();
    let _ = writeln!(
        o,
        "{} check(s): {passed} ok, {failed} failed, {} not applicable",
        checks.len(),
        checks.len() - passed - failed
    );
    (o, failed == 0)
}

fn key_check(path: &Path) -> Check {
    match crate::store::StoreKey::load_kek(path) {
        Ok((_, from)) if from != path => Check::pass(
            "store key",
            format!("systemd credential {}: present", from.display()),
        ),
        Ok(_) => Check::pass(
            "store key",
            format!("{}: present, mode 0600, owned by this user", path.display()),
        ),
        Err(e) => {
            let fix = match std::fs::metadata(path) {
                Err(_) => "create it as the service user: sudo -u vitalgate vitalgate keys init --config <config> (or restore it from the provisioning backup: without it the outbox cannot be read)".to_string(),
                Ok(m) if m.mode() & 0o077 != 0 || m.uid() != rustix::process::geteuid().as_raw() => format!(
                    "chmod 600 {p} && chown vitalgate:vitalgate {p}",
                    p = path.display()
                ),
                Ok(_) => format!(
                    "{} must be readable by the service user and hold 32 bytes: restore it from the provisioning backup",
                    path.display()
                ),
            };
            Check::fail("store key", e.to_string(), fix)
        }
    }
}

fn store_check(cfg: &Config, key_ok: bool) -> Check {
    // A running daemon holds the store (sled is single-process): its fresh snapshot speaks.
    if let Ok(s) = super::status::read_snapshot(&cfg.ops.runtime_dir) {
        if s.is_live(now()) {
            return Check::pass(
                "store",
                format!(
                    "in use by the running daemon (pid {}): {} pending, {} dead letters, {} quarantined",
                    s.pid, s.outbox.pending, s.outbox.dead_letters, s.outbox.quarantined
                ),
            );
        }
    }
    if !key_ok {
        return Check::skip("store", "not checked without a valid store key");
    }
    match crate::app::open_store(cfg) {
        Ok(store) => match store.stats() {
            Ok(s) => Check::pass(
                "store",
                format!(
                    "{}: opens with the key; {} pending, {} dead letters, {} quarantined",
                    store.path().display(),
                    s.pending,
                    s.dead,
                    s.quarantined
                ),
            ),
            Err(e) => Check::fail(
                "store",
                e.to_string(),
                "the outbox cannot be read: keep a copy of the data directory and contact support; do not delete it",
            ),
        },
        Err(e) => {
            let text = e.to_string();
            let fix = if text.contains("could not acquire lock") {
                "another process holds the outbox: is `vitalgate run` active outside systemd? (under systemd, doctor reads its status snapshot instead)".to_string()
            } else if text.contains("another key") {
                "this key does not open this outbox: restore the key that created it (provisioning backup)".to_string()
            } else if text.contains("ermission denied") {
                format!(
                    "run doctor as the service user, and give it the data directory: chown -R vitalgate:vitalgate {}",
                    cfg.gateway.data_dir.display()
                )
            } else {
                "keep a copy of the data directory and contact support; do not delete it".to_string()
            };
            Check::fail("store", text, fix)
        }
    }
}

/// The nearest existing ancestor (the data directory may not exist before the first start).
fn existing(path: &Path) -> PathBuf {
    let mut p = path.to_path_buf();
    while !p.exists() {
        match p.parent() {
            Some(parent) => p = parent.to_path_buf(),
            None => break,
        }
    }
    p
}

fn disk_check(data_dir: &Path) -> Check {
    let at = existing(data_dir);
    match probes::disk_usage(&at) {
        Ok(d) => disk_verdict(&at, d),
        Err(e) => Check::fail(
            "disk",
            format!("{}: {e}", at.display()),
            "check that the data directory's filesystem is mounted",
        ),
    }
}

/// Pure: ✗ at [`DISK_FULL_PERCENT`] or below [`DISK_MIN_FREE`].
pub fn disk_verdict(at: &Path, d: probes::DiskUsage) -> Check {
    let detail = format!(
        "{}: {:.0}% used, {} MiB free",
        at.display(),
        d.used_percent,
        d.available_bytes / (1024 * 1024)
    );
    if d.used_percent >= DISK_FULL_PERCENT || d.available_bytes < DISK_MIN_FREE {
        Check::fail(
            "disk",
            detail,
            "free space on this filesystem (journal: journalctl --vacuum-size=100M; old logs, images); never delete the outbox",
        )
    } else {
        Check::pass("disk", detail)
    }
}

/// Pure: the clock verdict.
pub fn clock_check(c: probes::ClockState) -> Check {
    match c.synchronised {
        Some(true) => Check::pass("clock", format!("synchronised ({})", c.source)),
        Some(false) => Check::fail(
            "clock",
            format!("not synchronised ({})", c.source),
            "timedatectl set-ntp true, and make sure the gateway reaches an NTP server (UDP 123); readings are dated by this clock",
        ),
        None => Check::fail(
            "clock",
            "cannot tell (no systemd-timesyncd marker, timedatectl did not answer)",
            "enable a time service: timedatectl set-ntp true (systemd-timesyncd) or install chrony",
        ),
    }
}

async fn bluetooth_check(cfg: &Config) -> Vec<Check> {
    let ble = cfg
        .devices
        .iter()
        .filter(|d| matches!(d.kind, DeviceKind::Ble { .. }))
        .count();
    if ble == 0 {
        return vec![Check::skip("bluetooth", "no BLE devices configured")];
    }
    let objects = run_tool(
        "busctl",
        &[
            "--system",
            "--json=short",
            "call",
            "org.bluez",
            "/",
            "org.freedesktop.DBus.ObjectManager",
            "GetManagedObjects",
        ],
    )
    .await;
    let version = run_tool("bluetoothctl", &["--version"]).await.ok();
    vec![bluez_verdict(objects, version.as_deref())]
}

/// Pure: the verdict from `busctl ... GetManagedObjects` (JSON) and `bluetoothctl --version`.
pub fn bluez_verdict(objects: Result<String, String>, version: Option<&str>) -> Check {
    let version = version
        .and_then(|v| v.split_whitespace().last())
        .map_or("version unknown".to_string(), |v| format!("BlueZ {v}"));
    let json = match objects {
        Ok(j) => j,
        Err(e) => {
            return Check::fail(
                "bluetooth",
                format!("BlueZ is not reachable on the system bus: {e}"),
                "apt install bluez && systemctl enable --now bluetooth (the vitalgate user must be in group bluetooth)",
            )
        }
    };
    let v: serde_json::Value = serde_json::from_str(&json).unwrap_or(serde_json::Value::Null);
    let mut adapters: Vec<(String, bool)> = Vec::new();
    if let Some(objs) = v["data"].get(0).and_then(|d| d.as_object()) {
        for (path, ifaces) in objs {
            if let Some(a) = ifaces.get("org.bluez.Adapter1") {
                let powered = a["Powered"]["data"].as_bool().unwrap_or(false);
                adapters.push((path.clone(), powered));
            }
        }
    }
    match adapters.iter().find(|(_, p)| *p) {
        Some((path, _)) => Check::pass("bluetooth", format!("{version}, adapter {path} powered")),
        None if adapters.is_empty() => Check::fail(
            "bluetooth",
            format!("{version} runs, but there is no Bluetooth adapter"),
            "plug in or enable the adapter: rfkill unblock bluetooth; check `dmesg | grep -i bluetooth`",
        ),
        None => Check::fail(
            "bluetooth",
            format!("{version}, adapter {} is not powered", adapters[0].0),
            "bluetoothctl power on, and set AutoEnable=true in /etc/bluetooth/main.conf",
        ),
    }
}

/// Who is asking: the uid and every group of this process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub uid: u32,
    pub gids: Vec<u32>,
}

impl Identity {
    /// From `/proc/self/status` (`Uid:`, `Gid:`, `Groups:`): no libc call needed.
    pub fn current() -> Identity {
        let text = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        Identity::from_proc_status(&text)
    }

    pub fn from_proc_status(text: &str) -> Identity {
        let field = |name: &str| -> Vec<u32> {
            text.lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|rest| {
                    rest.split_whitespace()
                        .filter_map(|x| x.parse().ok())
                        .collect()
                })
                .unwrap_or_default()
        };
        let uid = field("Uid:").get(1).copied().unwrap_or(u32::MAX);
        let mut gids = field("Gid:")
            .get(1)
            .copied()
            .into_iter()
            .collect::<Vec<_>>();
        gids.extend(field("Groups:"));
        Identity { uid, gids }
    }
}

/// Pure: may `who` read and write a file with this owner and mode?
pub fn may_read_write(who: &Identity, file_uid: u32, file_gid: u32, mode: u32) -> bool {
    if who.uid == 0 {
        return true;
    }
    let bits = if who.uid == file_uid {
        (mode >> 6) & 0o7
    } else if who.gids.contains(&file_gid) {
        (mode >> 3) & 0o7
    } else {
        mode & 0o7
    };
    bits & 0o6 == 0o6
}

fn group_name(gid: u32) -> String {
    std::fs::read_to_string("/etc/group")
        .ok()
        .and_then(|t| {
            t.lines().find_map(|l| {
                let mut f = l.split(':');
                let name = f.next()?;
                let _ = f.next();
                (f.next()?.parse::<u32>().ok()? == gid).then(|| name.to_string())
            })
        })
        .unwrap_or_else(|| gid.to_string())
}

/// One check per configured serial port.
pub fn serial_checks(cfg: &Config, who: &Identity) -> Vec<Check> {
    let ports: Vec<(&str, std::path::Display<'_>, &std::path::Path)> = cfg
        .devices
        .iter()
        .filter_map(|d| match &d.kind {
            DeviceKind::Serial(s) => Some((d.name.as_str(), s.port.display(), s.port.as_path())),
            _ => None,
        })
        .collect();
    if ports.is_empty() {
        return vec![Check::skip("serial ports", "no serial devices configured")];
    }
    ports
        .into_iter()
        .map(|(device, port, path)| {
            let name = format!("serial {device}");
            match std::fs::metadata(path) {
                Err(e) => Check::fail(
                    &name,
                    format!("{port}: {e}"),
                    "plug the device (or its USB-serial adapter) in; name it by its stable path from `ls -l /dev/serial/by-id/`",
                ),
                Ok(m) if !m.file_type().is_char_device() => Check::fail(
                    &name,
                    format!("{port} is not a character device"),
                    "devices[].port must name the serial device node, e.g. /dev/serial/by-id/usb-FTDI_...-if00-port0",
                ),
                Ok(m) if !may_read_write(who, m.uid(), m.gid(), m.mode()) => Check::fail(
                    &name,
                    format!(
                        "{port}: group {} mode {:o}: uid {} may not read and write it",
                        group_name(m.gid()),
                        m.mode() & 0o777,
                        who.uid
                    ),
                    "the vitalgate user must be in the port's group (dialout: the package's sysusers.d adds it) and the udev rule must give that group rw (MODE=0660)",
                ),
                Ok(m) => Check::pass(
                    &name,
                    format!("{port}: present, group {}, read/write ok", group_name(m.gid())),
                ),
            }
        })
        .collect()
}

async fn mqtt_check(name: &str, m: &MqttConfig) -> Check {
    use rumqttc::{AsyncClient, Event, Packet};
    let mut m = m.clone();
    // Never the daemon's client id: the broker would drop the daemon's session.
    m.client_id = format!(
        "{}-doctor",
        m.client_id.chars().take(56).collect::<String>()
    );
    m.clean_session = true;
    let where_ = format!("{}:{}{}", m.host, m.port, if m.tls { " (TLS)" } else { "" });
    let opts = match crate::sources::mqtt::options(&m) {
        Ok(o) => o,
        Err(e) => {
            return Check::fail(
                name,
                e.to_string(),
                "fix the file named (mqtt.password_file, ca_file, client_cert, client_key)",
            )
        }
    };
    let (client, mut el) = AsyncClient::new(opts, 4);
    let attempt = async {
        loop {
            match el.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => return Ok(()),
                Ok(_) => {}
                Err(e) => return Err(e.to_string()),
            }
        }
    };
    let r = tokio::time::timeout(NET_TIMEOUT, attempt).await;
    let _ = client.try_disconnect();
    match r {
        Ok(Ok(())) => Check::pass(name, format!("{where_}: connected")),
        Ok(Err(e)) => Check::fail(
            name,
            format!("{where_}: {e}"),
            "check the broker runs and is reachable (systemctl status mosquitto), the host and port in the config, and the credentials / certificates it expects",
        ),
        Err(_) => Check::fail(
            name,
            format!("{where_}: no answer within {} s", NET_TIMEOUT.as_secs()),
            "check the network path to the broker (firewall, host, port)",
        ),
    }
}

/// Pure: the client certificate's verdict at `now`.
pub fn cert_verdict(
    path: &Path,
    not_after: Result<DateTime<Utc>, String>,
    now: DateTime<Utc>,
) -> Check {
    let name = "uplink certificate";
    match not_after {
        Ok(t) if t <= now => Check::fail(
            name,
            format!("{}: expired {}", path.display(), t.format("%Y-%m-%d")),
            "install the renewed client certificate and key, then systemctl reload vitalgate",
        ),
        Ok(t) => Check::pass(
            name,
            format!(
                "{}: valid until {} ({} days)",
                path.display(),
                t.format("%Y-%m-%d"),
                (t - now).num_days()
            ),
        ),
        Err(e) => Check::fail(
            name,
            format!("{}: {e}", path.display()),
            "uplink.client_cert must be the gateway's PEM certificate chain, readable by the service user",
        ),
    }
}

fn cert_check(path: &Path, now: DateTime<Utc>) -> Check {
    cert_verdict(
        path,
        super::cert::not_after_pem_file(path).map_err(|e| e.to_string()),
        now,
    )
}

/// The uplink: the checks of `check-uplink` ([`super::check_uplink::uplink_checks`]: a TLS
/// handshake with the uplink's own configuration, `GET [base]/metadata` through the daemon's
/// HTTP client, the CapabilityStatement's transaction and conditional create; with
/// `[uplink.oauth2]` a token request), as one line ([`super::check_uplink::summary`]). Posts
/// nothing to the FHIR server.
pub async fn uplink_check(cfg: &Config) -> Check {
    let mut u = crate::uplink::client::UplinkTls::from_config(&cfg.uplink);
    // doctor's own bound on every network check.
    u.timeout = u.timeout.min(NET_TIMEOUT);
    let mut checks = super::check_uplink::uplink_checks(&u, cfg.uplink.write_mode, now()).await;
    if let Some(o) = &cfg.uplink.oauth2 {
        checks.push(super::check_uplink::oauth_check(&u, o).await);
    }
    super::check_uplink::summary(&u.fhir_base, &checks)
}

async fn run_tool(program: &str, args: &[&str]) -> Result<String, String> {
    let out = tokio::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    match tokio::time::timeout(NET_TIMEOUT, out).await {
        Ok(Ok(o)) if o.status.success() => Ok(String::from_utf8_lossy(&o.stdout).into_owned()),
        Ok(Ok(o)) => Err(String::from_utf8_lossy(&o.stderr).trim().to_string()),
        Ok(Err(e)) => Err(format!("{program}: {e}")),
        Err(_) => Err(format!(
            "{program}: no answer within {} s",
            NET_TIMEOUT.as_secs()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_follows_owner_group_other_and_root() {
        let tech = Identity {
            uid: 1000,
            gids: vec![1000, 20],
        };
        assert!(may_read_write(&tech, 0, 20, 0o660), "group dialout rw");
        assert!(!may_read_write(&tech, 0, 5, 0o660), "another group");
        assert!(!may_read_write(&tech, 0, 20, 0o640), "group read-only");
        assert!(may_read_write(&tech, 1000, 5, 0o600), "owner");
        assert!(
            !may_read_write(&tech, 1000, 20, 0o060),
            "owner bits apply to the owner, not the group bits"
        );
        assert!(may_read_write(
            &Identity {
                uid: 0,
                gids: vec![]
            },
            5,
            5,
            0o000
        ));
    }

    #[test]
    fn identity_comes_from_proc_status() {
        let text =
            "Name:\tx\nUid:\t1000\t994\t994\t994\nGid:\t100\t994\t994\t994\nGroups:\t20 112 \n";
        assert_eq!(
            Identity::from_proc_status(text),
            Identity {
                uid: 994,
                gids: vec![994, 20, 112]
            }
        );
    }

    #[test]
    fn bluez_answers_become_verdicts() {
        let powered = r#"{"type":"a{oa{sa{sv}}}","data":[{"/org/bluez/hci0":{"org.bluez.Adapter1":{"Powered":{"type":"b","data":true}}}}]}"#;
        let c = bluez_verdict(Ok(powered.into()), Some("bluetoothctl: 5.66"));
        assert_eq!(c.mark, Mark::Pass, "{c:?}");
        assert!(
            c.detail.contains("BlueZ 5.66") && c.detail.contains("hci0"),
            "{c:?}"
        );
        let off = powered.replace("true", "false");
        let c = bluez_verdict(Ok(off), None);
        assert_eq!(c.mark, Mark::Fail);
        assert!(c.fix.unwrap().contains("power on"));
        let none =
            r#"{"type":"a{oa{sa{sv}}}","data":[{"/org/bluez":{"org.bluez.AgentManager1":{}}}]}"#;
        assert!(bluez_verdict(Ok(none.into()), None)
            .detail
            .contains("no Bluetooth adapter"));
        let c = bluez_verdict(Err("The name org.bluez was not provided".into()), None);
        assert!(c.fix.unwrap().contains("apt install bluez"));
    }

    #[test]
    fn disk_clock_and_certificate_verdicts() {
        let d = |pct: f64, free_mib: u64| probes::DiskUsage {
            total_bytes: 10 << 30,
            available_bytes: free_mib << 20,
            used_percent: pct,
        };
        assert_eq!(disk_verdict(Path::new("/"), d(50.0, 5000)).mark, Mark::Pass);
        assert_eq!(disk_verdict(Path::new("/"), d(90.0, 1000)).mark, Mark::Fail);
        assert_eq!(disk_verdict(Path::new("/"), d(10.0, 50)).mark, Mark::Fail);
        let c = |s: Option<bool>| probes::ClockState {
            synchronised: s,
            source: "timedatectl".into(),
        };
        assert_eq!(clock_check(c(Some(true))).mark, Mark::Pass);
        assert_eq!(clock_check(c(Some(false))).mark, Mark::Fail);
        assert_eq!(clock_check(c(None)).mark, Mark::Fail);
        let now: DateTime<Utc> = "2026-01-01T00:00:00Z".parse().unwrap();
        let p = Path::new("gw.crt");
        assert_eq!(
            cert_verdict(p, Ok(now + chrono::Duration::days(3)), now).mark,
            Mark::Pass
        );
        assert_eq!(cert_verdict(p, Ok(now), now).mark, Mark::Fail);
        assert_eq!(cert_verdict(p, Err("x".into()), now).mark, Mark::Fail);
    }

    #[test]
    fn the_report_marks_each_line_and_counts() {
        let checks = vec![
            Check::pass("config", "ok"),
            Check::fail("clock", "not synchronised", "timedatectl set-ntp true"),
            Check::skip("bluetooth", "no BLE devices configured"),
        ];
        let (text, ok) = render(&checks);
        assert!(!ok);
        assert!(text.contains("✓ config"), "{text}");
        assert!(text.contains("✗ clock "), "{text}");
        assert!(text.contains("fix: timedatectl set-ntp true"), "{text}");
        assert!(text.contains("– bluetooth"), "{text}");
        assert!(
            text.ends_with("3 check(s): 1 ok, 1 failed, 1 not applicable\n"),
            "{text}"
        );
    }
}
