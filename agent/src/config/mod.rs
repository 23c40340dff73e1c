//! Configuration: TOML in, types that cannot be wrong out.
//!
//! The file (default `/etc/vitalgate/vitalgate.toml`) is parsed into `Raw*` structs that mirror
//! it (`deny_unknown_fields`, spans kept), then checked into [`Config`]. Every error names the
//! file, line and column and says what was expected:
//!
//! ```text
//! /etc/vitalgate/vitalgate.toml:12:11: devices[0].patient: expected "Patient/<id>" or "<system>|<value>"
//! ```
//!
//! Layout: [`raw`] mirrors the file; [`validate`] turns it into the types below, with every
//! check; this module holds the validated types and the loading entry points.
//!
//! All checks happen here, before any device, socket or store is opened. Relative paths in the
//! file are resolved against the directory of the config file. `config/vitalgate.example.toml`
//! documents every key.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::FixedOffset;
use device_drivers::serial::{self, generic, Cadence, Decoder, PortSettings};

use crate::pipeline::reduce;
use crate::reading::PatientRef;

pub mod ble;
mod ops;
mod raw;
mod validate;

pub use ble::{BleConfig, BleDeviceConfig, BleProfile, DisIdentity};
pub use validate::{filters_overlap, parse_utc_offset, BLE_PROFILES};

/// The default config path.
pub const DEFAULT_PATH: &str = "/etc/vitalgate/vitalgate.toml";

/// A config error with its position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub path: PathBuf,
    /// 1-based line and column, when the error has a position in the file.
    pub position: Option<(usize, usize)>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.position {
            Some((line, col)) => write!(
                f,
                "{}:{}:{}: {}",
                self.path.display(),
                line,
                col,
                self.message
            ),
            None => write!(f, "{}: {}", self.path.display(), self.message),
        }
    }
}

impl std::error::Error for ConfigError {}

/// Converts a byte offset into a 1-based (line, column) pair (column counts characters).
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or("");
    let line = before.bytes().filter(|&b| b == b'\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let col = before.get(line_start..).map_or(0, |s| s.chars().count()) + 1;
    (line, col)
}

// ---------------------------------------------------------------------------------------------
// The validated configuration.

#[derive(Debug, Clone)]
pub struct Config {
    /// The file this was loaded from.
    pub path: PathBuf,
    pub gateway: GatewayConfig,
    pub store: StoreConfig,
    pub uplink: UplinkConfig,
    pub mqtt: Option<MqttConfig>,
    /// The `[ble]` section (defaults when absent).
    pub ble: BleConfig,
    pub devices: Vec<DeviceConfig>,
    pub simulators: Vec<SimulatorConfig>,
    /// `[ops]`: the live status snapshot and alarms (defaults when the section is absent).
    pub ops: OpsConfig,
    /// `[fleet]`: status and alarms published over MQTT (off when the section is absent).
    pub fleet: Option<FleetConfig>,
    pub consent: ConsentConfig,
    /// `[audit]`: the audit log (defaults when the section is absent).
    pub audit: AuditConfig,
    /// `[export]`: the receiving site of `vitalgate export` files (absent: export is off).
    pub export: Option<ExportConfig>,
}

/// `[export]`: export files are encrypted to this X25519 public key (the receiving site's; its
/// private key never needs to be on the gateway). See [`crate::export`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportConfig {
    pub recipient: [u8; 32],
}

/// `[audit]`: the hash-chained audit log under `<data_dir>/audit` and the delivery ledger
/// read from it (see [`crate::audit`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditConfig {
    /// `<data_dir>/audit`.
    pub dir: PathBuf,
    /// Bound on all segments together; the oldest are deleted beyond it.
    pub max_bytes: u64,
    /// A segment is closed once it would pass this.
    pub segment_bytes: u64,
    /// Segments whose last entry is older are deleted.
    pub retention: Duration,
    /// How long after upload `vitalgate ledger` must answer (`retention` covers it).
    pub ledger: Duration,
}

impl AuditConfig {
    /// The writer's options.
    pub fn options(&self) -> crate::audit::AuditOptions {
        crate::audit::AuditOptions {
            dir: self.dir.clone(),
            max_bytes: self.max_bytes,
            segment_bytes: self.segment_bytes,
            retention: self.retention,
            ledger: self.ledger,
        }
    }
}

/// Default `audit.max_bytes`: 64 MiB. An uploaded reading costs about 3 entries (`stored`,
/// its share of `sent`, `delivered`: ~700 B), so about 90,000 readings: 30 days of a clinic
/// uploading 3,000 readings a day.
pub const DEFAULT_AUDIT_MAX_BYTES: i64 = 64 * 1024 * 1024;
/// Default `audit.segment_bytes`: 4 MiB.
pub const DEFAULT_AUDIT_SEGMENT_BYTES: i64 = 4 * 1024 * 1024;
/// Smallest `audit.segment_bytes` (tests use small segments): room for a few entries.
pub const MIN_AUDIT_SEGMENT_BYTES: i64 = 1024;
/// Default `audit.retention_days`.
pub const DEFAULT_AUDIT_RETENTION_DAYS: i64 = 90;
/// Default `audit.ledger_days`.
pub const DEFAULT_AUDIT_LEDGER_DAYS: i64 = 30;

/// The default directory of the live status snapshot (the unit's `RuntimeDirectory=`).
pub const DEFAULT_RUNTIME_DIR: &str = "/run/vitalgate";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpsConfig {
    /// Where `status.json` and `dead-letters.json` are written.
    pub runtime_dir: PathBuf,
    /// `ops.runtime_dir` was set: the daemon creates it. The default (`/run/vitalgate`) is
    /// created by systemd (`RuntimeDirectory=`); without it (a development run) no snapshot
    /// is written.
    pub runtime_dir_configured: bool,
    /// How often the snapshot is rewritten.
    pub status_interval: Duration,
    /// Alarm when the uplink's client certificate expires within this.
    pub cert_expiry_warn: Duration,
    /// Alarm when a named device (or simulator) sends nothing for this long.
    pub device_silent_after: BTreeMap<String, Duration>,
}

impl Default for OpsConfig {
    fn default() -> Self {
        OpsConfig {
            runtime_dir: PathBuf::from(DEFAULT_RUNTIME_DIR),
            runtime_dir_configured: false,
            status_interval: Duration::from_secs(5),
            cert_expiry_warn: Duration::from_secs(30 * 86_400),
            device_silent_after: BTreeMap::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct FleetConfig {
    /// The fleet connection: `[fleet.mqtt]`, or the `[mqtt]` section's broker and credentials
    /// with the client id `<mqtt.client_id>-fleet`.
    pub mqtt: MqttConfig,
    /// The retained status is republished at least this often.
    pub status_interval: Duration,
}

/// `[consent]`: patients whose consent is withdrawn (see [`crate::consent`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ConsentConfig {
    pub withdrawn: Vec<PatientRef>,
    /// A clinic-written file of withdrawn patients, re-read on change.
    pub file: Option<PathBuf>,
    /// `purge_after_days`: held readings of a withdrawn patient stored this long ago are
    /// removed from the outbox ([`crate::consent::purge_due`]). `None`: kept for ever.
    pub purge_after: Option<std::time::Duration>,
}

#[derive(Debug, Clone)]
pub struct GatewayConfig {
    pub id: String,
    pub data_dir: PathBuf,
    /// The zone offset of device clocks that do not report one (BLE/serial wall clocks).
    pub device_utc_offset: FixedOffset,
}

#[derive(Debug, Clone)]
pub struct StoreConfig {
    pub key_file: PathBuf,
    pub cache_capacity_bytes: u64,
    pub acked_retention: Duration,
    /// Bound on the bytes of records the outbox holds (pending, dead letters, quarantine; see
    /// [`crate::store::pressure`]). At 80% the pipeline stops taking readings from sources
    /// (they are not acknowledged, so brokers and devices keep them) until the uplink drains it
    /// below 70%; at 90% a second alarm. Default [`DEFAULT_STORE_MAX_BYTES`].
    pub max_bytes: u64,
    /// The algorithm of data keys made from now on (`vitalgate keys rotate`, a new store):
    /// `store.cipher`, default ChaCha20-Poly1305 (a Raspberry Pi 4 has no AES instructions).
    pub cipher: crate::store::keyring::Alg,
}

/// Default `store.max_bytes`: 1 GiB of held records, sized for a 16 GB SD card. The card has
/// about 14.9 GiB usable; the OS, journal and updates take 3–4 GiB; sled's own files are 2–10x
/// the live data (space amplification reported for sled 0.34, and our `LowSpace` mode is at the
/// low end), so 1 GiB held is 2–10 GiB on disk, which still fits. 1 GiB is about 1.5 million
/// sealed readings (~700 B each with their index entry): months of a busy clinic offline.
pub const DEFAULT_STORE_MAX_BYTES: i64 = 1024 * 1024 * 1024;

/// Smallest `store.max_bytes` accepted: room for a few records (tests use small bounds).
pub const MIN_STORE_BYTES: i64 = 16 * 1024;

/// Smallest `uplink.daily_byte_budget` accepted: about one gzip-compressed Bundle of a few
/// readings. (The budget is checked before each Bundle, so any budget lets one Bundle a day go.)
pub const MIN_DAILY_BYTE_BUDGET: i64 = 1024;

#[derive(Debug, Clone, PartialEq)]
pub struct UplinkConfig {
    pub fhir_base: url::Url,
    pub ca_file: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    pub allow_insecure_http: bool,
    pub timeout: Duration,
    /// Most readings per transaction Bundle (the adaptive size stays within it). A batch is
    /// cut where its entries, Device entries included, would pass 50.
    pub batch_size: usize,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// While the server refuses the gateway (401, 403, 404, 405, 406, 415), probes start this
    /// far apart and double up to `pause_max` (at most 300 s).
    pub pause_initial: Duration,
    pub pause_max: Duration,
    /// `pin_spki_sha256`: SHA-256 pins of server keys (RFC 7469 `pin-sha256`); empty = none.
    pub pin_spki_sha256: Vec<crate::tls::pin::SpkiPin>,
    /// `post_quantum`: `prefer` (default), `require` or `off` (see [`crate::tls::PostQuantum`]).
    pub post_quantum: crate::tls::PostQuantum,
    /// `upload_windows` and `daily_byte_budget` (metered links); default: no limits.
    pub metering: crate::uplink::metering::Metering,
    /// `write_mode`: `conditional-create` (default) or `put`.
    pub write_mode: crate::uplink::fhir::WriteMode,
    /// `[uplink.oauth2]`: bearer tokens from a SMART Backend Services token endpoint, on top of
    /// the client certificate; `None`: the client certificate alone.
    pub oauth2: Option<crate::uplink::oauth::OAuth2Config>,
}

/// The largest MQTT packet: the remaining length is at most 268,435,455 bytes (MQTT 3.1.1 §2.2.3).
pub const MQTT_MAX_PACKET_BYTES: usize = 268_435_455;

/// The smallest `mqtt.max_packet_bytes` accepted: a 64 KiB payload (the largest data point the
/// source decodes) with the longest topic MQTT allows still fits.
pub const MQTT_MIN_PACKET_BYTES: usize = 131_072;

#[derive(Debug, Clone, PartialEq)]
pub struct MqttConfig {
    pub host: String,
    pub port: u16,
    pub tls: bool,
    pub client_id: String,
    pub username: Option<String>,
    pub password_file: Option<PathBuf>,
    pub ca_file: Option<PathBuf>,
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    pub keep_alive: Duration,
    /// `false` (default): the broker keeps QoS 1 messages for us while the agent is down.
    pub clean_session: bool,
    /// Largest packet read from the broker (default [`MQTT_MAX_PACKET_BYTES`], all MQTT allows).
    pub max_packet_bytes: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DeviceConfig {
    pub name: String,
    pub kind: DeviceKind,
    pub attribution: Attribution,
    /// Overrides `gateway.device_utc_offset` for this device's clock.
    pub utc_offset: Option<FixedOffset>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceKind {
    /// A hub publishing Open mHealth data points on `topic`.
    Mqtt {
        topic: String,
        /// `upload_statistics`: the Open mHealth `descriptive_statistic`s this hub's data points
        /// may carry and still be uploaded (with `effectivePeriod` and `method` stating the
        /// statistic). Empty (default): every statistic is held as a dead letter `statistic`.
        upload_statistics: Vec<String>,
    },
    /// A BLE device.
    Ble(BleDeviceConfig),
    /// A serial device (RS-232, USB-serial, Bluetooth SPP `/dev/rfcommN`).
    Serial(SerialDevice),
}

/// A serial device's port, protocol, port settings, silence alarm and stream reduction, all
/// resolved at load (the device file read and checked, the defaults applied).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SerialDevice {
    /// The port path as configured (preferably `/dev/serial/by-id/...`): opened, and re-opened
    /// after an unplug, by this name.
    pub port: PathBuf,
    pub protocol: SerialProtocol,
    /// The protocol's documented settings (or the device file's), with the config's overrides.
    pub settings: PortSettings,
    /// No record for this long raises an alarm (`None`: off, the default for devices that send
    /// one record per measurement).
    pub silence_alarm: Option<Duration>,
    pub reduction: reduce::Mode,
}

/// What decodes a serial device's bytes.
#[derive(Debug, Clone)]
pub enum SerialProtocol {
    /// A built-in decoder (`device_drivers::serial::BUILTIN_PROTOCOLS`).
    Builtin(&'static str),
    /// A generic-line device file, read and checked at load.
    DeviceFile {
        path: PathBuf,
        config: generic::DeviceConfig,
    },
}

impl PartialEq for SerialProtocol {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::Builtin(a), Self::Builtin(b)) => a == b,
            (Self::DeviceFile { path: a, .. }, Self::DeviceFile { path: b, .. }) => a == b,
            _ => false,
        }
    }
}
impl Eq for SerialProtocol {}

impl SerialProtocol {
    /// A fresh decoder (one per opened port: a replug starts from a clean state). `None` only
    /// for a built-in name `device_drivers` does not know, which the config refuses at load.
    pub fn decoder(&self) -> Option<Box<dyn Decoder>> {
        match self {
            Self::Builtin(name) => serial::builtin(name),
            Self::DeviceFile { config, .. } => Some(config.decoder()),
        }
    }

    /// The built-in name, or the device file's `device.id`.
    pub fn name(&self) -> &str {
        match self {
            Self::Builtin(name) => name,
            Self::DeviceFile { config, .. } => config.id(),
        }
    }

    pub fn cadence(&self) -> Cadence {
        match self {
            Self::Builtin(name) => serial::builtin_cadence(name).unwrap_or(Cadence::Stream),
            Self::DeviceFile { config, .. } => config.cadence(),
        }
    }
}

/// Which patient a device's readings belong to.
#[derive(Clone, PartialEq, Eq)]
pub enum Attribution {
    /// One patient for every reading.
    Single(PatientRef),
    /// Multi-user devices: the device's user index → patient. Readings from an unmapped user
    /// (or user 255, "unknown") are not attributed and are kept as dead letters.
    PerUser(BTreeMap<u8, PatientRef>),
}

impl fmt::Debug for Attribution {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Single(_) => f.write_str("Single(<redacted>)"),
            Self::PerUser(m) => write!(f, "PerUser({} users, <redacted>)", m.len()),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct SimulatorConfig {
    pub name: String,
    pub kind: SimulatorKind,
    pub patient: PatientRef,
    pub interval: Duration,
    /// Stop after this many readings (`None`: run until shutdown).
    pub count: Option<u64>,
    pub seed: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SimulatorKind {
    BloodPressure,
    Scale,
}

// ---------------------------------------------------------------------------------------------
// Loading.

impl Config {
    /// Reads and checks a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            path: path.to_path_buf(),
            position: None,
            message: format!("cannot read config file: {e}"),
        })?;
        Self::from_str_at(&text, path)
    }

    /// Parses config text as if it were the file at `path` (tests, and `check-config`).
    pub fn from_str_at(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let raw: raw::RawConfig = toml::from_str(text).map_err(|e| ConfigError {
            path: path.to_path_buf(),
            position: e.span().map(|s| line_col(text, s.start)),
            message: e.message().trim().to_string(),
        })?;
        let v = validate::Validator {
            text,
            path,
            base: path.parent().unwrap_or(Path::new(".")).to_path_buf(),
        };
        v.config(raw)
    }

    /// The device config by name.
    pub fn device(&self, name: &str) -> Option<&DeviceConfig> {
        self.devices.iter().find(|d| d.name == name)
    }

    /// Valid but risky settings, one line each, for `check-config` and the start-up log.
    pub fn warnings(&self) -> Vec<String> {
        let mut w = Vec::new();
        for (i, d) in self.devices.iter().enumerate() {
            let DeviceKind::Serial(s) = &d.kind else {
                continue;
            };
            if is_enumeration_order_name(&s.port) {
                w.push(format!(
                    "devices[{i}] ({}): port {} is numbered in plug-in order and may name another device after a reboot or replug; use its /dev/serial/by-id/... link (or a udev rule, see config/udev/)",
                    d.name,
                    s.port.display()
                ));
            }
        }
        w
    }
}

/// `/dev/ttyUSB0`, `/dev/ttyACM1`: names the kernel hands out in the order devices appear.
pub fn is_enumeration_order_name(port: &Path) -> bool {
    let Some(name) = port.to_str().and_then(|p| p.strip_prefix("/dev/")) else {
        return false;
    };
    ["ttyUSB", "ttyACM"].iter().any(|prefix| {
        name.strip_prefix(prefix)
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::validate::valid_topic_filter;
    use super::*;

    pub(crate) const MINIMAL: &str = r#"
[gateway]
id = "gw-1"
data_dir = "data"

[store]
key_file = "store.key"

[uplink]
fhir_base = "https://fhir.example.org/r4"
ca_file = "tls/ca.crt"
client_cert = "tls/gw.crt"
client_key = "tls/gw.key"
"#;

    fn load(text: &str) -> Result<Config, ConfigError> {
        Config::from_str_at(text, Path::new("/etc/vitalgate/test.toml"))
    }

    #[test]
    fn minimal_config_loads_with_defaults_and_relative_paths() {
        let c = load(MINIMAL).unwrap();
        assert_eq!(c.gateway.id, "gw-1");
        assert_eq!(c.gateway.data_dir, PathBuf::from("/etc/vitalgate/data"));
        assert_eq!(c.store.cache_capacity_bytes, 16 * 1024 * 1024);
        assert_eq!(c.uplink.batch_size, 50);
        assert!(c.mqtt.is_none());
    }

    #[test]
    fn store_max_bytes_defaults_to_1_gib_and_refuses_a_bound_too_small_for_a_record() {
        let c = load(MINIMAL).unwrap();
        assert_eq!(c.store.max_bytes, 1024 * 1024 * 1024);
        let c = load(&MINIMAL.replace("[store]\n", "[store]\nmax_bytes = 20000\n")).unwrap();
        assert_eq!(c.store.max_bytes, 20_000);
        let e = load(&MINIMAL.replace("[store]\n", "[store]\nmax_bytes = 100\n")).unwrap_err();
        assert!(e.to_string().contains("store.max_bytes"), "{e}");
    }

    #[test]
    fn consent_purge_after_days_is_optional_bounded_and_the_seconds_are_test_only() {
        assert_eq!(load(MINIMAL).unwrap().consent.purge_after, None);
        let with = |extra: &str| load(&format!("{MINIMAL}\n[consent]\n{extra}\n"));
        let c = with("purge_after_days = 30").unwrap();
        assert_eq!(
            c.consent.purge_after,
            Some(std::time::Duration::from_secs(30 * 86_400))
        );
        for bad in ["purge_after_days = 0", "purge_after_days = 3651"] {
            let e = with(bad).unwrap_err();
            assert!(e.to_string().contains("consent.purge_after_days"), "{e}");
            assert!(e.position.is_some(), "{e}");
        }
        // Debug builds (the tests) accept the test-only seconds; never both.
        let c = with("purge_after_seconds_test_only = 3").unwrap();
        assert_eq!(
            c.consent.purge_after,
            Some(std::time::Duration::from_secs(3))
        );
        let e = with("purge_after_days = 1\npurge_after_seconds_test_only = 3").unwrap_err();
        assert!(e.to_string().contains("not both"), "{e}");
    }

    #[test]
    fn audit_defaults_and_a_ledger_window_longer_than_the_retention_is_refused_at_its_line() {
        let c = load(MINIMAL).unwrap();
        assert_eq!(c.audit.dir, PathBuf::from("/etc/vitalgate/data/audit"));
        assert_eq!(c.audit.max_bytes, 64 * 1024 * 1024);
        assert_eq!(c.audit.segment_bytes, 4 * 1024 * 1024);
        assert_eq!(c.audit.ledger, std::time::Duration::from_secs(30 * 86_400));
        assert_eq!(
            c.audit.retention,
            std::time::Duration::from_secs(90 * 86_400)
        );
        let with = |extra: &str| load(&format!("{MINIMAL}\n[audit]\n{extra}\n"));
        let c = with("ledger_days = 60\nretention_days = 60").unwrap();
        assert_eq!(c.audit.ledger, std::time::Duration::from_secs(60 * 86_400));
        let e = with("retention_days = 20\nledger_days = 45").unwrap_err();
        assert!(e.to_string().contains("audit.ledger_days"), "{e}");
        assert!(e.to_string().contains("retention_days = 20"), "{e}");
        // [audit] is line 15 of the file; ledger_days on line 17, its value at column 15.
        assert!(
            e.to_string().starts_with("/etc/vitalgate/test.toml:17:15:"),
            "{e}"
        );
        let e = with("segment_bytes = 1048576\nmax_bytes = 1048576").unwrap_err();
        assert!(e.to_string().contains("twice audit.segment_bytes"), "{e}");
        assert!(with("segment_bytes = 100").is_err());
        assert!(with("ledger_days = 0").is_err());
        assert!(with("colour = 1")
            .unwrap_err()
            .to_string()
            .contains("unknown field"));
    }

    #[test]
    fn export_recipient_key_is_checked_and_a_bad_one_names_its_position() {
        assert_eq!(load(MINIMAL).unwrap().export, None);
        let key = crate::export::SiteKey::from_bytes([5; 32]).public();
        let line = crate::export::keys::format_public_key(&key);
        let with = |v: &str| {
            load(&format!(
                "{MINIMAL}\n[export]\nrecipient_public_key = \"{v}\"\n"
            ))
        };
        assert_eq!(with(&line).unwrap().export.unwrap().recipient, key);
        for bad in ["", "AAAA", "not base64!", &line[..40]] {
            let e = with(bad).unwrap_err();
            assert!(e.to_string().contains("export.recipient_public_key"), "{e}");
            assert!(e.position.is_some(), "{e}");
        }
        let e = load(&format!("{MINIMAL}\n[export]\n")).unwrap_err();
        assert!(e.to_string().contains("recipient_public_key"), "{e}");
    }

    #[test]
    fn unknown_key_names_line_and_column() {
        let text = MINIMAL.replace("[store]\n", "[store]\ncolour = 3\n");
        let e = load(&text).unwrap_err();
        assert_eq!(e.position.map(|p| p.0), Some(7), "{e}");
        assert!(e.to_string().contains("unknown field `colour`"), "{e}");
        assert!(
            e.to_string().starts_with("/etc/vitalgate/test.toml:7:"),
            "{e}"
        );
    }

    #[test]
    fn wrong_type_names_line() {
        let text = MINIMAL.replace("[uplink]\n", "[uplink]\ntimeout_secs = \"ten\"\n");
        let e = load(&text).unwrap_err();
        assert_eq!(e.position.map(|p| p.0), Some(10), "{e}");
        assert!(e.message.contains("invalid type"), "{e}");
    }

    #[test]
    fn bad_patient_reference_names_line() {
        let text = format!(
            "{MINIMAL}\n[mqtt]\nbroker = \"mqtt://127.0.0.1:1883\"\n\n[[devices]]\nname = \"hub\"\nkind = \"mqtt\"\ntopic = \"t/1\"\npatient = \"MRN-0001\"\n"
        );
        let e = load(&text).unwrap_err();
        assert_eq!(e.position, Some((22, 11)), "{e}");
        assert!(e.message.contains("devices[0].patient"), "{e}");
    }

    #[test]
    fn the_pause_schedule_defaults_to_10_s_up_to_5_min_and_is_capped_at_5_min() {
        let c = load(MINIMAL).unwrap();
        assert_eq!(c.uplink.pause_initial, Duration::from_secs(10));
        assert_eq!(c.uplink.pause_max, Duration::from_secs(300));
        let with = |extra: &str| MINIMAL.replace("[uplink]\n", &format!("[uplink]\n{extra}\n"));
        // A cap below the default start pulls the start down with it.
        let c = load(&with("pause_max_secs = 5")).unwrap();
        assert_eq!(c.uplink.pause_initial, Duration::from_secs(5));
        assert_eq!(c.uplink.pause_max, Duration::from_secs(5));
        let e = load(&with("pause_max_secs = 301")).unwrap_err();
        assert_eq!(e.position.map(|p| p.0), Some(10), "{e}");
        assert!(e.message.contains("uplink.pause_max_secs"), "{e}");
        assert!(e.message.contains("1 to 300"), "{e}");
        let e = load(&with("pause_initial_secs = 60\npause_max_secs = 30")).unwrap_err();
        assert_eq!(e.position.map(|p| p.0), Some(10), "{e}");
        assert!(e.message.contains("more than uplink.pause_max_secs"), "{e}");
        assert!(load(&with("pause_initial_secs = 0")).is_err());
    }

    #[test]
    fn spki_pins_are_optional_and_a_bad_one_names_its_line_and_column() {
        assert!(load(MINIMAL).unwrap().uplink.pin_spki_sha256.is_empty());
        let with = |extra: &str| MINIMAL.replace("[uplink]\n", &format!("[uplink]\n{extra}\n"));
        let good = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
        let c = load(&with(&format!("pin_spki_sha256 = [\"{good}\"]"))).unwrap();
        let expected: Vec<u8> = (0u8..32).collect();
        assert_eq!(
            c.uplink.pin_spki_sha256,
            vec![<[u8; 32]>::try_from(expected).unwrap()]
        );
        let e = load(&with(&format!(
            "pin_spki_sha256 = [\"{good}\", \"c2hvcnQ=\"]"
        )))
        .unwrap_err();
        assert_eq!(e.position, Some((10, 68)), "{e}");
        assert!(e.message.contains("uplink.pin_spki_sha256"), "{e}");
        assert!(e.message.contains("5 bytes"), "{e}");
    }

    #[test]
    fn post_quantum_defaults_to_prefer_and_a_bad_value_names_its_line_and_column() {
        use crate::tls::PostQuantum;
        assert_eq!(
            load(MINIMAL).unwrap().uplink.post_quantum,
            PostQuantum::Prefer
        );
        let with = |extra: &str| MINIMAL.replace("[uplink]\n", &format!("[uplink]\n{extra}\n"));
        for (value, want) in [
            ("prefer", PostQuantum::Prefer),
            ("require", PostQuantum::Require),
            ("off", PostQuantum::Off),
        ] {
            let c = load(&with(&format!("post_quantum = \"{value}\""))).unwrap();
            assert_eq!(c.uplink.post_quantum, want);
        }
        let e = load(&with("post_quantum = \"always\"")).unwrap_err();
        assert_eq!(e.position, Some((10, 16)), "{e}");
        assert!(e.message.contains("uplink.post_quantum"), "{e}");
        assert!(e.message.contains("\"require\""), "{e}");
        let e = load(&with("post_quantum = true")).unwrap_err();
        assert_eq!(e.position.map(|p| p.0), Some(10), "{e}");
    }

    #[test]
    fn upload_windows_and_the_byte_budget_are_typed_and_name_line_and_column() {
        use crate::uplink::metering::UploadWindow;
        assert!(load(MINIMAL).unwrap().uplink.metering.is_unlimited());
        let with = |extra: &str| MINIMAL.replace("[uplink]\n", &format!("[uplink]\n{extra}\n"));
        let c = load(&with(
            "upload_windows = [\"22:00-06:00\"]\ndaily_byte_budget = 5000000",
        ))
        .unwrap();
        assert_eq!(
            c.uplink.metering.windows,
            vec![UploadWindow::parse("22:00-06:00").unwrap()]
        );
        assert_eq!(c.uplink.metering.daily_byte_budget, Some(5_000_000));
        let e = load(&with("upload_windows = [\"22:00-06:00\", \"25:00-01:00\"]")).unwrap_err();
        assert_eq!(e.position, Some((10, 34)), "{e}");
        assert!(e.message.contains("uplink.upload_windows"), "{e}");
        let e = load(&with("daily_byte_budget = 100")).unwrap_err();
        assert_eq!(e.position, Some((10, 21)), "{e}");
        assert!(e.message.contains("1024"), "{e}");
    }

    #[test]
    fn write_mode_is_typed_and_names_line_and_column() {
        use crate::uplink::fhir::WriteMode;
        assert_eq!(
            load(MINIMAL).unwrap().uplink.write_mode,
            WriteMode::ConditionalCreate
        );
        let with = |extra: &str| MINIMAL.replace("[uplink]\n", &format!("[uplink]\n{extra}\n"));
        assert_eq!(
            load(&with("write_mode = \"put\""))
                .unwrap()
                .uplink
                .write_mode,
            WriteMode::Put
        );
        let e = load(&with("write_mode = \"PUT\"")).unwrap_err();
        assert_eq!(e.position, Some((10, 14)), "{e}");
        assert!(
            e.message.contains("\"conditional-create\" or \"put\""),
            "{e}"
        );
    }

    #[test]
    fn oauth2_is_optional_typed_defaults_its_scope_and_names_line_and_column() {
        use crate::uplink::oauth::JwsAlgorithm;
        assert!(load(MINIMAL).unwrap().uplink.oauth2.is_none());
        let with = |lines: &str| {
            load(&format!(
                "{MINIMAL}\n[uplink.oauth2]\ntoken_url = \"https://auth.example/token\"\nclient_id = \"gw-1\"\nkey_file = \"oauth.key\"\n{lines}\n"
            ))
        };
        let o = with("algorithm = \"ES384\"")
            .unwrap()
            .uplink
            .oauth2
            .unwrap();
        assert_eq!(
            o.token_url.as_ref().map(url::Url::as_str),
            Some("https://auth.example/token")
        );
        assert_eq!(o.client_id, "gw-1");
        assert_eq!(o.key_file, PathBuf::from("/etc/vitalgate/oauth.key"));
        assert_eq!(o.algorithm, JwsAlgorithm::Es384);
        assert_eq!(o.key_id, None);
        assert_eq!(o.scope, "system/Observation.c system/Device.c");
        let o = with("algorithm = \"RS384\"\nkey_id = \"k1\"\nscope = \"system/*.cruds\"")
            .unwrap()
            .uplink
            .oauth2
            .unwrap();
        assert_eq!(o.algorithm, JwsAlgorithm::Rs384);
        assert_eq!(o.key_id.as_deref(), Some("k1"));
        assert_eq!(o.scope, "system/*.cruds");
        // MINIMAL ends on line 13; the table starts on line 15, the extra lines on 19.
        let e = with("algorithm = \"HS256\"").unwrap_err();
        assert_eq!(e.position, Some((19, 13)), "{e}");
        assert!(e.message.contains("uplink.oauth2.algorithm"), "{e}");
        assert!(e.message.contains("\"ES384\" or \"RS384\""), "{e}");
        let e = with("algorithm = \"ES384\"\nscope = \"\"").unwrap_err();
        assert_eq!(e.position, Some((20, 9)), "{e}");
        assert!(e.message.contains("uplink.oauth2.scope"), "{e}");
        let e = with("algorithm = \"ES384\"\ncolour = 1").unwrap_err();
        assert!(e.to_string().contains("unknown field `colour`"), "{e}");
        assert_eq!(e.position.map(|p| p.0), Some(20), "{e}");
        // Missing algorithm: the table is named.
        let e = with("").unwrap_err();
        assert!(e.message.contains("algorithm"), "{e}");
        assert!(e.position.is_some(), "{e}");
        // Plaintext token URL: refused unless the lab switch is set.
        let text = format!(
            "{MINIMAL}\n[uplink.oauth2]\ntoken_url = \"http://auth.example/token\"\nclient_id = \"gw-1\"\nkey_file = \"k\"\nalgorithm = \"ES384\"\n"
        );
        let e = load(&text).unwrap_err();
        assert_eq!(e.position, Some((16, 13)), "{e}");
        assert!(e.message.contains("uplink.oauth2.token_url"), "{e}");
        assert!(e.message.contains("plaintext"), "{e}");
        let text = text.replace("[uplink]\n", "[uplink]\nallow_insecure_http = true\n");
        assert!(load(&text).is_ok());
        // No token_url: discovered from [base]/.well-known/smart-configuration.
        let o = load(&format!(
            "{MINIMAL}\n[uplink.oauth2]\nclient_id = \"gw-1\"\nkey_file = \"k\"\nalgorithm = \"ES384\"\n"
        ))
        .unwrap()
        .uplink
        .oauth2
        .unwrap();
        assert_eq!(o.token_url, None);
        let base = load(MINIMAL).unwrap().uplink.fhir_base;
        assert_eq!(
            o.discovery_url.as_str(),
            format!(
                "{}/.well-known/smart-configuration",
                base.as_str().trim_end_matches('/')
            )
        );
        assert!(!o.allow_insecure_http);
    }

    #[test]
    fn plaintext_http_is_refused_unless_allowed() {
        let text = MINIMAL.replace("https://fhir", "http://fhir");
        assert!(load(&text).unwrap_err().message.contains("plaintext"));
        let text = text.replace("[uplink]\n", "[uplink]\nallow_insecure_http = true\n");
        assert!(load(&text).is_ok());
    }

    #[test]
    fn multi_user_device_map() {
        let text = format!(
            "{MINIMAL}\n[[devices]]\nname = \"cuff\"\nkind = \"ble\"\naddress = \"00:09:1f:aa:bb:cc\"\nprofile = \"blood-pressure\"\npatients = {{ 1 = \"urn:oid:2.16.840.1.113883.19.5|MRN-0001\", 2 = \"Patient/abc\" }}\n"
        );
        let c = load(&text).unwrap();
        match &c.devices[0].attribution {
            Attribution::PerUser(m) => assert_eq!(m.len(), 2),
            other => panic!("{other:?}"),
        }
        match &c.devices[0].kind {
            DeviceKind::Ble(b) => {
                assert_eq!(b.address.as_deref(), Some("00:09:1F:AA:BB:CC"));
                assert_eq!(b.profiles, vec![BleProfile::BloodPressure]);
                assert!(!b.pair_if_bond_lost && !b.delete_after_download);
                assert_eq!(b.clock_set_threshold, Some(Duration::from_secs(2)));
            }
            other => panic!("{other:?}"),
        }
        let bad = text.replace("2 = ", "255 = ");
        assert!(load(&bad).unwrap_err().message.contains("255"));
    }

    fn ble_device(extra: &str) -> String {
        format!("{MINIMAL}\n[[devices]]\nname = \"scale\"\nkind = \"ble\"\npatient = \"Patient/a\"\n{extra}")
    }

    #[test]
    fn ble_keys_are_typed_and_their_errors_name_line_and_column() {
        let c = load(&ble_device(
            "profiles = [\"weight-scale\", \"body-composition\"]\nserial = \"SC-1\"\nsystem_id = \"00-09-1f-ff-fe-80-12-34\"\npair_if_bond_lost = true\nset_clock = false\ndelete_after_download = true\n",
        ))
        .unwrap();
        let DeviceKind::Ble(b) = &c.devices[0].kind else {
            panic!()
        };
        assert_eq!(b.address, None);
        assert_eq!(
            b.profiles,
            vec![BleProfile::WeightScale, BleProfile::BodyComposition]
        );
        assert_eq!(b.identity.system_id.as_deref(), Some("00091FFFFE801234"));
        assert!(b.pair_if_bond_lost && b.delete_after_download);
        assert_eq!(b.clock_set_threshold, None);
        assert_eq!(c.ble, BleConfig::default());

        let e = load(&ble_device(
            "profile = \"bp\"\naddress = \"00:09:1F:AA:BB:CC\"\n",
        ))
        .unwrap_err();
        assert_eq!(e.position, Some((19, 11)), "{e}");
        assert!(
            e.message
                .contains("devices[0].profile: expected one of blood-pressure"),
            "{e}"
        );
        let e = load(&ble_device("profile = \"glucose\"\n")).unwrap_err();
        assert!(e.message.contains("needs `address`"), "{e}");
        let e = load(&ble_device("profile = \"glucose\"\nsystem_id = \"12\"\n")).unwrap_err();
        assert_eq!(e.position, Some((20, 13)), "{e}");
        let e = load(&ble_device("profile = \"glucose\"\naddress = \"00:09:1F:AA:BB:CC\"\nclock_set_threshold_secs = 0\n")).unwrap_err();
        assert!(e.message.contains("clock_set_threshold_secs"), "{e}");
        let mqtt = format!("{MINIMAL}\n[mqtt]\nbroker = \"mqtt://127.0.0.1\"\n[[devices]]\nname = \"h\"\nkind = \"mqtt\"\ntopic = \"t\"\npatient = \"Patient/a\"\nserial = \"x\"\n");
        assert!(load(&mqtt)
            .unwrap_err()
            .message
            .contains("devices[0].serial: not a key of kind \"mqtt\""));
        let e = load(&format!("{MINIMAL}\n[ble]\nadapter = \"usb0\"\n")).unwrap_err();
        assert_eq!(e.position, Some((16, 11)), "{e}");
        let c = load(&format!(
            "{MINIMAL}\n[ble]\nadapter = \"hci1\"\nwatchdog_silence_secs = 5\n"
        ))
        .unwrap();
        assert_eq!(c.ble.adapter, "hci1");
        assert_eq!(c.ble.watchdog_silence, Duration::from_secs(5));
    }

    #[test]
    fn an_mqtt_hub_may_name_the_statistics_it_uploads_and_nothing_else_may() {
        let hub = |extra: &str| {
            load(&format!("{MINIMAL}\n[mqtt]\nbroker = \"mqtt://127.0.0.1\"\n[[devices]]\nname = \"h\"\nkind = \"mqtt\"\ntopic = \"t\"\npatient = \"Patient/a\"\n{extra}\n"))
        };
        let stats = |c: &Config| match &c.devices[0].kind {
            DeviceKind::Mqtt {
                upload_statistics, ..
            } => upload_statistics.clone(),
            _ => panic!("not mqtt"),
        };
        assert!(stats(&hub("").unwrap()).is_empty(), "default: none");
        let c = hub("upload_statistics = [\"average\", \"standard deviation\"]").unwrap();
        assert_eq!(stats(&c), vec!["average", "standard deviation"]);
        // Not in the measurement's unit, or not a statistic: refused where it is written.
        for bad in ["count", "variance", "mean"] {
            let e = hub(&format!("upload_statistics = [\"minimum\", \"{bad}\"]")).unwrap_err();
            assert!(e.message.contains("devices[0].upload_statistics[1]"), "{e}");
            assert_eq!(e.position.map(|p| p.0), Some(22), "{e}");
        }
        let e = load(&ble_device(
            "profile = \"glucose\"\naddress = \"00:09:1F:AA:BB:CC\"\nupload_statistics = [\"average\"]\n",
        ))
        .unwrap_err();
        assert!(e.message.contains("upload_statistics: not a key"), "{e}");
    }

    #[test]
    fn mqtt_max_packet_bytes_defaults_to_what_mqtt_allows_and_refuses_too_small() {
        let base = format!("{MINIMAL}\n[mqtt]\nbroker = \"mqtt://127.0.0.1:1883\"\n");
        let c = load(&base).unwrap();
        assert_eq!(c.mqtt.unwrap().max_packet_bytes, MQTT_MAX_PACKET_BYTES);
        let c = load(&format!("{base}max_packet_bytes = 1048576\n")).unwrap();
        assert_eq!(c.mqtt.unwrap().max_packet_bytes, 1 << 20);
        for bad in ["65536", "268435456"] {
            let e = load(&format!("{base}max_packet_bytes = {bad}\n")).unwrap_err();
            assert!(e.message.contains("mqtt.max_packet_bytes"), "{e}");
            assert!(e.position.is_some(), "{e}");
        }
    }

    #[test]
    fn mqtt_device_without_mqtt_section_is_an_error() {
        let text = format!("{MINIMAL}\n[[devices]]\nname = \"hub\"\nkind = \"mqtt\"\ntopic = \"a/b\"\npatient = \"Patient/1\"\n");
        let e = load(&text).unwrap_err();
        assert!(e.message.contains("[mqtt]"), "{e}");
    }

    fn mqtt_devices(devs: &[(&str, &str, &str)]) -> String {
        let mut s = format!("{MINIMAL}\n[mqtt]\nbroker = \"mqtt://127.0.0.1:1883\"\n");
        for (name, topic, patient) in devs {
            s.push_str(&format!(
                "\n[[devices]]\nname = \"{name}\"\nkind = \"mqtt\"\ntopic = \"{topic}\"\npatient = \"{patient}\"\n"
            ));
        }
        s
    }

    #[test]
    fn overlapping_topic_filters_for_different_patients_are_refused_naming_both_positions() {
        let text = mqtt_devices(&[
            ("hub", "hub/#", "Patient/alice"),
            ("bp", "hub/alice/bp", "Patient/bob"),
        ]);
        let e = load(&text).unwrap_err();
        let s = e.to_string();
        // The second filter's position, then the first one's (`topic = ` is 8 characters).
        let line_of = |needle: &str| text.lines().position(|l| l.contains(needle)).unwrap() + 1;
        let (first, second) = (line_of("\"hub/#\""), line_of("\"hub/alice/bp\""));
        let at = |line: usize| format!("/etc/vitalgate/test.toml:{line}:9");
        assert!(
            s.starts_with(&format!("{}: devices[1].topic", at(second))),
            "{s}"
        );
        assert!(s.contains(&at(first)), "{s}");
        assert!(s.contains("hub/#") && s.contains("hub/alice/bp"), "{s}");
    }

    #[test]
    fn disjoint_filters_and_same_patient_overlaps_are_accepted() {
        let ok = mqtt_devices(&[
            ("a", "hub/alice/+", "Patient/alice"),
            ("b", "hub/bob/+", "Patient/bob"),
            ("c", "hub/bob/#", "Patient/bob"),
        ]);
        assert!(load(&ok).is_ok());
        let same_topic = mqtt_devices(&[("a", "t/1", "Patient/x"), ("b", "t/1", "Patient/x")]);
        assert!(load(&same_topic).is_err());
    }

    #[test]
    fn filter_overlap_rules() {
        assert!(filters_overlap("hub/#", "hub/alice/bp"));
        assert!(filters_overlap("hub/#", "hub"));
        assert!(filters_overlap("hub/+/bp", "hub/alice/+"));
        assert!(filters_overlap("#", "x/y"));
        assert!(!filters_overlap("hub/+/bp", "hub/alice/wt"));
        assert!(!filters_overlap("hub/a", "hub/a/b"));
        assert!(!filters_overlap("a/+", "a"));
    }

    #[test]
    fn plaintext_mqtt_credentials_to_a_remote_host_are_refused_unless_allowed() {
        let remote = format!(
            "{MINIMAL}\n[mqtt]\nbroker = \"mqtt://broker.clinic.example:1883\"\nusername = \"gw\"\n"
        );
        let e = load(&remote).unwrap_err();
        assert!(e.message.contains("plaintext"), "{e}");
        assert_eq!(e.position.map(|p| p.0), Some(16), "{e}");
        assert!(load(&remote.replace("username", "allow_plaintext = true\nusername")).is_ok());
        assert!(load(&remote.replace("mqtt://broker.clinic.example", "mqtt://127.0.0.1")).is_ok());
        assert!(load(&remote.replace("mqtt://broker.clinic.example", "mqtt://[::1]")).is_ok());
        // No credentials: nothing secret travels (the readings themselves are the hub's choice).
        assert!(load(&remote.replace("username = \"gw\"\n", "")).is_ok());
    }

    fn serial_device(extra: &str) -> String {
        format!(
            "{MINIMAL}\n[[devices]]\nname = \"ox\"\nkind = \"serial\"\nport = \"/dev/serial/by-id/usb-FTDI_FT232R-if00-port0\"\nprotocol = \"nonin-df7\"\npatient = \"Patient/p1\"\n{extra}"
        )
    }

    fn serial_of(c: &Config) -> &SerialDevice {
        match &c.devices[0].kind {
            DeviceKind::Serial(s) => s,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_streaming_serial_device_defaults_to_its_port_settings_a_spot_check_and_a_silence_alarm() {
        let c = load(&serial_device("")).unwrap();
        let s = serial_of(&c);
        assert_eq!(s.settings, PortSettings::n81(9600));
        assert_eq!(s.protocol, SerialProtocol::Builtin("nonin-df7"));
        assert_eq!(s.reduction, reduce::Mode::DEFAULT_STREAMING);
        assert_eq!(s.silence_alarm, Some(Duration::from_secs(60)));
        assert!(c.warnings().is_empty(), "{:?}", c.warnings());
    }

    #[test]
    fn a_per_measurement_device_keeps_every_record_and_has_no_silence_alarm() {
        let c = load(&serial_device("").replace("nonin-df7", "tanita-kv")).unwrap();
        let s = serial_of(&c);
        assert_eq!(s.reduction, reduce::Mode::All);
        assert_eq!(s.silence_alarm, None);
    }

    #[test]
    fn port_settings_and_reduction_can_be_overridden() {
        let c = load(&serial_device(
            "baud = 19200\ndata_bits = 7\nparity = \"even\"\nstop_bits = 2\nflow_control = \"rtscts\"\nsilence_alarm_secs = 0\n[devices.reduction]\nmode = \"on-change\"\nthresholds = { spo2 = 3, perfusion_index = 0.2 }\n",
        ))
        .unwrap();
        let s = serial_of(&c);
        assert_eq!(
            s.settings,
            PortSettings {
                baud: 19200,
                data_bits: 7,
                parity: serial::Parity::Even,
                stop_bits: 2,
                flow_control: serial::FlowControl::Rtscts,
            }
        );
        assert_eq!(s.silence_alarm, None);
        let reduce::Mode::OnChange { thresholds } = &s.reduction else {
            panic!("{:?}", s.reduction);
        };
        assert_eq!(
            thresholds[&device_drivers::ReadingType::PerfusionIndex],
            device_drivers::Decimal::new(2, -1)
        );
        let c = load(&serial_device(
            "[devices.reduction]\nmode = \"interval\"\nwindow_secs = 300\n",
        ))
        .unwrap();
        assert_eq!(
            serial_of(&c).reduction,
            reduce::Mode::Interval {
                every: Duration::from_secs(300)
            }
        );
        let c = load(&serial_device(
            "[devices.reduction]\nmode = \"spot-check\"\nwindow_secs = 20\nrepeat_secs = 0\n",
        ))
        .unwrap();
        assert_eq!(
            serial_of(&c).reduction,
            reduce::Mode::SpotCheck {
                window: Duration::from_secs(20),
                repeat: None
            }
        );
    }

    #[test]
    fn bad_serial_settings_name_the_line() {
        for (extra, words) in [
            ("data_bits = 9\n", "expected 7 or 8"),
            ("parity = \"mark\"\n", "\"none\", \"even\" or \"odd\""),
            ("[devices.reduction]\nmode = \"sometimes\"\n", "spot-check"),
            (
                "[devices.reduction]\nmode = \"spot-check\"\nwindow_secs = 60\nrepeat_secs = 30\n",
                "at least window_secs",
            ),
            (
                "[devices.reduction]\nmode = \"interval\"\nthresholds = { spo2 = 2 }\n",
                "not a key of mode",
            ),
            (
                "[devices.reduction]\nmode = \"on-change\"\nthresholds = { oxygen = 2 }\n",
                "unknown reading type",
            ),
            (
                "[devices.reduction]\nmode = \"on-change\"\nthresholds = { spo2 = 0 }\n",
                "positive",
            ),
        ] {
            let text = serial_device(extra);
            let e = load(&text).unwrap_err();
            assert!(e.message.contains(words), "{extra}: {e}");
            let first = extra.lines().last().unwrap();
            let line = text.lines().position(|l| l == first).unwrap() + 1;
            assert_eq!(e.position.map(|p| p.0), Some(line), "{extra}: {e}");
        }
        let e = load(&serial_device("").replace("/dev/serial", "dev/serial")).unwrap_err();
        assert!(e.message.contains("absolute"), "{e}");
        let e = load(&serial_device("").replace("nonin-df7", "nonin-df99")).unwrap_err();
        assert!(e.message.contains("nonin-df2"), "{e}");
    }

    #[test]
    fn serial_keys_on_another_kind_are_refused() {
        let text = format!(
            "{MINIMAL}\n[mqtt]\nbroker = \"mqtt://127.0.0.1:1883\"\n\n[[devices]]\nname = \"hub\"\nkind = \"mqtt\"\ntopic = \"t/1\"\npatient = \"Patient/1\"\nbaud = 9600\n"
        );
        let e = load(&text).unwrap_err();
        assert!(e.message.contains("devices[0].baud: not a key"), "{e}");
    }

    #[test]
    fn two_devices_on_one_port_are_refused() {
        let text = serial_device("").replace("[[devices]]", "[[devices]]\n")
            + &serial_device("")[MINIMAL.len()..].replace("\"ox\"", "\"ox2\"");
        let e = load(&text).unwrap_err();
        assert!(e.message.contains("one port is one device"), "{e}");
    }

    #[test]
    fn enumeration_order_port_names_are_a_warning_not_an_error() {
        let c = load(&serial_device("").replace(
            "/dev/serial/by-id/usb-FTDI_FT232R-if00-port0",
            "/dev/ttyUSB0",
        ))
        .unwrap();
        let w = c.warnings();
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].contains("/dev/serial/by-id"), "{w:?}");
        assert!(is_enumeration_order_name(Path::new("/dev/ttyACM12")));
        assert!(!is_enumeration_order_name(Path::new("/dev/ttyAMA0")));
        assert!(!is_enumeration_order_name(Path::new("/dev/rfcomm0")));
        assert!(!is_enumeration_order_name(Path::new("/dev/ttyUSB")));
    }

    #[test]
    fn a_device_file_protocol_is_read_at_load_and_its_errors_name_its_own_line() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("ox.toml");
        std::fs::write(
            &good,
            "[device]\nid = \"ascii-ox\"\ncadence = \"stream\"\n[device.serial]\nbaud = 4800\ndata_bits = 8\nparity = \"none\"\nstop_bits = 2\n[device.framing]\nkind = \"line\"\n[[device.rule]]\nname = \"r\"\nregex = 'SPO2=(?P<s>[0-9]+)'\n[[device.rule.reading]]\ncapture = \"s\"\ntype = \"spo2\"\nunit = \"%\"\n",
        )
        .unwrap();
        let cfg_path = dir.path().join("vitalgate.toml");
        let text = serial_device("baud = 2400\n").replace("nonin-df7", "ox.toml");
        let c = Config::from_str_at(&text, &cfg_path).unwrap();
        let s = serial_of(&c);
        assert_eq!(s.protocol.name(), "ascii-ox");
        assert_eq!(s.settings.stop_bits, 2, "from the device file");
        assert_eq!(
            s.settings.baud, 2400,
            "the config overrides the device file"
        );
        assert_eq!(s.reduction, reduce::Mode::DEFAULT_STREAMING);
        std::fs::write(&good, "[device]\nid = \"x\"\ncolour = 1\n").unwrap();
        let e = Config::from_str_at(&text, &cfg_path).unwrap_err();
        assert_eq!(e.path, good);
        assert_eq!(e.position.map(|p| p.0), Some(3), "{e}");
        let e = Config::from_str_at(&text.replace("ox.toml", "nope.toml"), &cfg_path).unwrap_err();
        assert_eq!(e.path, cfg_path);
        assert!(e.message.contains("nope.toml is neither"), "{e}");
    }

    #[test]
    fn line_col_counts_characters() {
        assert_eq!(line_col("a\nbc\nd", 3), (2, 2));
        assert_eq!(line_col("é\nx", 3), (2, 1));
    }

    #[test]
    fn utc_offsets() {
        assert_eq!(parse_utc_offset("+01:00").unwrap().local_minus_utc(), 3600);
        assert_eq!(
            parse_utc_offset("-05:30").unwrap().local_minus_utc(),
            -19800
        );
        assert!(parse_utc_offset("01:00").is_none());
        assert!(parse_utc_offset("+25:00").is_none());
    }

    #[test]
    fn topic_filters() {
        assert!(valid_topic_filter("a/+/c"));
        assert!(valid_topic_filter("a/#"));
        assert!(!valid_topic_filter("a/#/c"));
        assert!(!valid_topic_filter("a/b+"));
    }
}

#[cfg(test)]
mod example_tests {
    use super::*;

    #[test]
    fn the_shipped_example_config_is_valid() {
        let text = include_str!("../../../config/vitalgate.example.toml");
        let c = Config::from_str_at(text, Path::new("/etc/vitalgate/vitalgate.toml"))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.devices.len(), 3);
        assert!(c.mqtt.is_some());
        assert_eq!(c.ops.device_silent_after.len(), 2);
        assert!(c.fleet.is_none(), "the fleet section is commented out");
    }

    #[test]
    fn the_example_audit_section_uncommented_is_valid_and_states_the_defaults() {
        let text = include_str!("../../../config/vitalgate.example.toml");
        let keys = [
            "[audit]",
            "max_bytes",
            "segment_bytes",
            "retention_days",
            "ledger_days",
        ];
        let mut in_audit = false;
        let mut out = String::new();
        for line in text.lines() {
            if line.starts_with("# [audit]") {
                in_audit = true;
            } else if in_audit && !line.starts_with('#') {
                in_audit = false;
            }
            match line.strip_prefix("# ") {
                Some(rest) if in_audit && keys.iter().any(|k| rest.starts_with(k)) => {
                    out.push_str(rest);
                }
                _ => out.push_str(line),
            }
            out.push('\n');
        }
        assert!(
            out.contains("\n[audit]\n"),
            "the example has an [audit] section"
        );
        let c = Config::from_str_at(&out, Path::new("/etc/vitalgate/vitalgate.toml"))
            .unwrap_or_else(|e| panic!("{e}"));
        let defaults = Config::from_str_at(text, Path::new("/etc/vitalgate/vitalgate.toml"))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.audit, defaults.audit, "the example states the defaults");
    }
}
