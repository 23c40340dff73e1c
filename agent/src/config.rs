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
//! All checks happen here, before any device, socket or store is opened. Relative paths in the
//! file are resolved against the directory of the config file. `config/vitalgate.example.toml`
//! documents every key.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::FixedOffset;
use serde::Deserialize;
use toml::Spanned;

use crate::reading::PatientRef;

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
    pub devices: Vec<DeviceConfig>,
    pub simulators: Vec<SimulatorConfig>,
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
}

#[derive(Debug, Clone)]
pub struct UplinkConfig {
    pub fhir_base: url::Url,
    pub ca_file: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    pub allow_insecure_http: bool,
    pub timeout: Duration,
    /// Readings per transaction Bundle (Device entries come on top; at most 50 entries total).
    pub batch_size: usize,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
}

#[derive(Debug, Clone)]
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
}

#[derive(Debug, Clone)]
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
    Mqtt { topic: String },
    /// A BLE device (transport in a later release).
    Ble { address: String, profile: String },
    /// A serial device (transport in a later release).
    Serial { port: String, protocol: String },
}

/// Which patient a device's readings belong to.
#[derive(Clone)]
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

#[derive(Debug, Clone)]
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
// The raw file form.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    gateway: RawGateway,
    store: RawStore,
    uplink: RawUplink,
    mqtt: Option<RawMqtt>,
    #[serde(default)]
    devices: Vec<RawDevice>,
    #[serde(default)]
    simulators: Vec<RawSimulator>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGateway {
    id: Spanned<String>,
    data_dir: Spanned<String>,
    device_utc_offset: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStore {
    key_file: Spanned<String>,
    cache_capacity_mib: Option<Spanned<i64>>,
    acked_retention_days: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUplink {
    fhir_base: Spanned<String>,
    ca_file: Spanned<String>,
    client_cert: Spanned<String>,
    client_key: Spanned<String>,
    #[serde(default)]
    allow_insecure_http: bool,
    timeout_secs: Option<Spanned<i64>>,
    batch_size: Option<Spanned<i64>>,
    backoff_initial_ms: Option<Spanned<i64>>,
    backoff_max_secs: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMqtt {
    broker: Spanned<String>,
    client_id: Option<Spanned<String>>,
    username: Option<Spanned<String>>,
    password_file: Option<Spanned<String>>,
    ca_file: Option<Spanned<String>>,
    client_cert: Option<Spanned<String>>,
    client_key: Option<Spanned<String>>,
    keep_alive_secs: Option<Spanned<i64>>,
    #[serde(default)]
    clean_session: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDevice {
    name: Spanned<String>,
    kind: Spanned<String>,
    topic: Option<Spanned<String>>,
    address: Option<Spanned<String>>,
    profile: Option<Spanned<String>>,
    port: Option<Spanned<String>>,
    protocol: Option<Spanned<String>>,
    patient: Option<Spanned<String>>,
    patients: Option<Spanned<BTreeMap<String, Spanned<String>>>>,
    utc_offset: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSimulator {
    name: Spanned<String>,
    kind: Spanned<String>,
    patient: Spanned<String>,
    interval_ms: Option<Spanned<i64>>,
    count: Option<Spanned<i64>>,
    seed: Option<Spanned<i64>>,
}

/// BLE profiles the config accepts (the GATT decoders in device-drivers).
pub const BLE_PROFILES: &[&str] = &[
    "blood-pressure",
    "weight-scale",
    "body-composition",
    "thermometer",
    "pulse-oximeter",
    "glucose",
    "heart-rate",
];

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
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError {
            path: path.to_path_buf(),
            position: e.span().map(|s| line_col(text, s.start)),
            message: e.message().trim().to_string(),
        })?;
        let v = Validator {
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
}

struct Validator<'a> {
    text: &'a str,
    path: &'a Path,
    base: PathBuf,
}

type R<T> = Result<T, ConfigError>;

impl Validator<'_> {
    fn err(&self, span: Range<usize>, message: impl Into<String>) -> ConfigError {
        ConfigError {
            path: self.path.to_path_buf(),
            position: Some(line_col(self.text, span.start)),
            message: message.into(),
        }
    }

    fn path_value(&self, s: &Spanned<String>, key: &str) -> R<PathBuf> {
        let v = s.get_ref();
        if v.trim().is_empty() {
            return Err(self.err(s.span(), format!("{key}: expected a file path, found \"\"")));
        }
        let p = PathBuf::from(v);
        Ok(if p.is_absolute() {
            p
        } else {
            self.base.join(p)
        })
    }

    fn int_in(
        &self,
        s: &Option<Spanned<i64>>,
        key: &str,
        range: Range<i64>,
        default: i64,
    ) -> R<i64> {
        match s {
            None => Ok(default),
            Some(v) if range.contains(v.get_ref()) => Ok(*v.get_ref()),
            Some(v) => Err(self.err(
                v.span(),
                format!(
                    "{key}: expected an integer from {} to {}, found {}",
                    range.start,
                    range.end - 1,
                    v.get_ref()
                ),
            )),
        }
    }

    fn offset(&self, s: &Spanned<String>, key: &str) -> R<FixedOffset> {
        parse_utc_offset(s.get_ref()).ok_or_else(|| {
            self.err(
                s.span(),
                format!("{key}: expected a UTC offset like \"+01:00\", \"-05:30\" or \"Z\""),
            )
        })
    }

    fn patient(&self, s: &Spanned<String>, key: &str) -> R<PatientRef> {
        s.get_ref()
            .parse::<PatientRef>()
            .map_err(|e| self.err(s.span(), format!("{key}: {e}")))
    }

    fn config(&self, raw: RawConfig) -> R<Config> {
        let gateway = self.gateway(raw.gateway)?;
        let store = self.store(raw.store)?;
        let uplink = self.uplink(raw.uplink)?;
        let mqtt = raw.mqtt.map(|m| self.mqtt(m, &gateway.id)).transpose()?;
        let mut devices = Vec::new();
        let mut names = HashSet::new();
        let mut topics = HashSet::new();
        let mut mqtt_device_span = None;
        for (i, d) in raw.devices.into_iter().enumerate() {
            let name_span = d.name.span();
            let kind_span = d.kind.span();
            let dev = self.device(i, d)?;
            if !names.insert(dev.name.clone()) {
                return Err(self.err(
                    name_span,
                    format!(
                        "devices[{i}].name: \"{}\" is used by another device or simulator",
                        dev.name
                    ),
                ));
            }
            if let DeviceKind::Mqtt { topic } = &dev.kind {
                mqtt_device_span.get_or_insert(kind_span.clone());
                if !topics.insert(topic.clone()) {
                    return Err(self.err(
                        kind_span,
                        format!("devices[{i}].topic: topic \"{topic}\" is used by another device"),
                    ));
                }
            }
            devices.push(dev);
        }
        if let (Some(span), None) = (mqtt_device_span, &mqtt) {
            return Err(self.err(
                span,
                "an MQTT device needs an [mqtt] section with at least `broker`",
            ));
        }
        let mut simulators = Vec::new();
        for (i, s) in raw.simulators.into_iter().enumerate() {
            let name_span = s.name.span();
            let sim = self.simulator(i, s)?;
            if !names.insert(sim.name.clone()) {
                return Err(self.err(
                    name_span,
                    format!(
                        "simulators[{i}].name: \"{}\" is used by another device or simulator",
                        sim.name
                    ),
                ));
            }
            simulators.push(sim);
        }
        Ok(Config {
            path: self.path.to_path_buf(),
            gateway,
            store,
            uplink,
            mqtt,
            devices,
            simulators,
        })
    }

    fn gateway(&self, g: RawGateway) -> R<GatewayConfig> {
        let id = g.id.get_ref();
        let ok = !id.is_empty()
            && id.len() <= 64
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        if !ok {
            return Err(self.err(
                g.id.span(),
                "gateway.id: expected 1-64 characters of A-Z a-z 0-9 - _ .",
            ));
        }
        Ok(GatewayConfig {
            id: id.clone(),
            data_dir: self.path_value(&g.data_dir, "gateway.data_dir")?,
            device_utc_offset: match &g.device_utc_offset {
                Some(s) => self.offset(s, "gateway.device_utc_offset")?,
                None => chrono::Offset::fix(&chrono::Utc),
            },
        })
    }

    fn store(&self, s: RawStore) -> R<StoreConfig> {
        let mib = self.int_in(
            &s.cache_capacity_mib,
            "store.cache_capacity_mib",
            1..1025,
            16,
        )?;
        let days = self.int_in(
            &s.acked_retention_days,
            "store.acked_retention_days",
            1..3651,
            30,
        )?;
        Ok(StoreConfig {
            key_file: self.path_value(&s.key_file, "store.key_file")?,
            cache_capacity_bytes: u64::try_from(mib).unwrap_or(16) * 1024 * 1024,
            acked_retention: Duration::from_secs(u64::try_from(days).unwrap_or(30) * 86_400),
        })
    }

    fn uplink(&self, u: RawUplink) -> R<UplinkConfig> {
        let base = url::Url::parse(u.fhir_base.get_ref()).map_err(|e| {
            self.err(
                u.fhir_base.span(),
                format!("uplink.fhir_base: expected an absolute https:// URL ({e})"),
            )
        })?;
        match base.scheme() {
            "https" => {}
            "http" if u.allow_insecure_http => {}
            "http" => {
                return Err(self.err(
                    u.fhir_base.span(),
                    "uplink.fhir_base: plaintext http:// is refused; use https:// (or set allow_insecure_http = true for a lab setup)",
                ))
            }
            other => {
                return Err(self.err(
                    u.fhir_base.span(),
                    format!("uplink.fhir_base: expected an https:// URL, found scheme \"{other}\""),
                ))
            }
        }
        if base.host_str().is_none() || base.query().is_some() || base.fragment().is_some() {
            return Err(self.err(
                u.fhir_base.span(),
                "uplink.fhir_base: expected a base URL with a host and no query or fragment",
            ));
        }
        let timeout = self.int_in(&u.timeout_secs, "uplink.timeout_secs", 1..601, 30)?;
        let batch = self.int_in(&u.batch_size, "uplink.batch_size", 1..41, 20)?;
        let initial = self.int_in(
            &u.backoff_initial_ms,
            "uplink.backoff_initial_ms",
            10..600_001,
            1000,
        )?;
        let max = self.int_in(
            &u.backoff_max_secs,
            "uplink.backoff_max_secs",
            1..86_401,
            300,
        )?;
        Ok(UplinkConfig {
            fhir_base: base,
            ca_file: self.path_value(&u.ca_file, "uplink.ca_file")?,
            client_cert: self.path_value(&u.client_cert, "uplink.client_cert")?,
            client_key: self.path_value(&u.client_key, "uplink.client_key")?,
            allow_insecure_http: u.allow_insecure_http,
            timeout: Duration::from_secs(timeout.unsigned_abs()),
            batch_size: usize::try_from(batch).unwrap_or(20),
            backoff_initial: Duration::from_millis(initial.unsigned_abs()),
            backoff_max: Duration::from_secs(max.unsigned_abs()),
        })
    }

    fn mqtt(&self, m: RawMqtt, gateway_id: &str) -> R<MqttConfig> {
        let url = url::Url::parse(m.broker.get_ref()).map_err(|e| {
            self.err(
                m.broker.span(),
                format!("mqtt.broker: expected mqtt://host:port or mqtts://host:port ({e})"),
            )
        })?;
        let tls = match url.scheme() {
            "mqtt" | "tcp" => false,
            "mqtts" | "ssl" => true,
            other => {
                return Err(self.err(
                    m.broker.span(),
                    format!("mqtt.broker: expected scheme mqtt:// or mqtts://, found \"{other}\""),
                ))
            }
        };
        let Some(host) = url.host_str().map(str::to_string) else {
            return Err(self.err(m.broker.span(), "mqtt.broker: expected a host"));
        };
        if url.path() != "" && url.path() != "/" {
            return Err(self.err(m.broker.span(), "mqtt.broker: expected no path"));
        }
        let port = url.port().unwrap_or(if tls { 8883 } else { 1883 });
        let client_id = match &m.client_id {
            Some(c) => {
                let v = c.get_ref();
                if v.is_empty() || v.len() > 64 || !v.is_ascii() {
                    return Err(
                        self.err(c.span(), "mqtt.client_id: expected 1-64 ASCII characters")
                    );
                }
                v.clone()
            }
            None => format!("vitalgate-{gateway_id}"),
        };
        let opt_path = |s: &Option<Spanned<String>>, key: &str| -> R<Option<PathBuf>> {
            s.as_ref().map(|s| self.path_value(s, key)).transpose()
        };
        let ca_file = opt_path(&m.ca_file, "mqtt.ca_file")?;
        let client_cert = opt_path(&m.client_cert, "mqtt.client_cert")?;
        let client_key = opt_path(&m.client_key, "mqtt.client_key")?;
        if !tls {
            if let Some(s) = m
                .ca_file
                .as_ref()
                .or(m.client_cert.as_ref())
                .or(m.client_key.as_ref())
            {
                return Err(self.err(
                    s.span(),
                    "mqtt: TLS files are set but the broker URL is mqtt://; use mqtts://",
                ));
            }
        } else if ca_file.is_none() {
            return Err(self.err(m.broker.span(), "mqtt: mqtts:// needs mqtt.ca_file"));
        }
        if client_cert.is_some() != client_key.is_some() {
            let s = m
                .client_cert
                .as_ref()
                .or(m.client_key.as_ref())
                .map(Spanned::span);
            return Err(self.err(
                s.unwrap_or(m.broker.span()),
                "mqtt: client_cert and client_key go together",
            ));
        }
        if m.password_file.is_some() && m.username.is_none() {
            let s = m
                .password_file
                .as_ref()
                .map(Spanned::span)
                .unwrap_or(m.broker.span());
            return Err(self.err(s, "mqtt.password_file needs mqtt.username"));
        }
        let keep_alive = self.int_in(&m.keep_alive_secs, "mqtt.keep_alive_secs", 5..3601, 30)?;
        Ok(MqttConfig {
            host,
            port,
            tls,
            client_id,
            username: m.username.map(|u| u.into_inner()),
            password_file: opt_path(&m.password_file, "mqtt.password_file")?,
            ca_file,
            client_cert,
            client_key,
            keep_alive: Duration::from_secs(keep_alive.unsigned_abs()),
            clean_session: m.clean_session,
        })
    }

    fn name(&self, s: &Spanned<String>, key: &str) -> R<String> {
        let v = s.get_ref();
        let ok = !v.is_empty()
            && v.len() <= 64
            && v.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        if ok {
            Ok(v.clone())
        } else {
            Err(self.err(
                s.span(),
                format!("{key}: expected 1-64 characters of A-Z a-z 0-9 - _ ."),
            ))
        }
    }

    fn device(&self, i: usize, d: RawDevice) -> R<DeviceConfig> {
        let key = |k: &str| format!("devices[{i}].{k}");
        let name = self.name(&d.name, &key("name"))?;
        let require = |v: &Option<Spanned<String>>, k: &str| -> R<String> {
            v.as_ref().map(|s| s.get_ref().clone()).ok_or_else(|| {
                self.err(
                    d.kind.span(),
                    format!("{}: required for kind \"{}\"", key(k), d.kind.get_ref()),
                )
            })
        };
        let forbid = |v: &Option<Spanned<String>>, k: &str| -> R<()> {
            match v {
                Some(s) => Err(self.err(
                    s.span(),
                    format!("{}: not a key of kind \"{}\"", key(k), d.kind.get_ref()),
                )),
                None => Ok(()),
            }
        };
        let kind = match d.kind.get_ref().as_str() {
            "mqtt" => {
                forbid(&d.address, "address")?;
                forbid(&d.profile, "profile")?;
                forbid(&d.port, "port")?;
                forbid(&d.protocol, "protocol")?;
                let topic = require(&d.topic, "topic")?;
                if let Some(s) = &d.topic {
                    if !valid_topic_filter(&topic) {
                        return Err(self.err(
                            s.span(),
                            format!("{}: expected an MQTT topic filter ('+' and '#' only as whole levels, '#' last)", key("topic")),
                        ));
                    }
                }
                DeviceKind::Mqtt { topic }
            }
            "ble" => {
                forbid(&d.topic, "topic")?;
                forbid(&d.port, "port")?;
                forbid(&d.protocol, "protocol")?;
                let address = require(&d.address, "address")?;
                if let Some(s) = &d.address {
                    if !valid_bt_address(&address) {
                        return Err(self.err(
                            s.span(),
                            format!(
                                "{}: expected a Bluetooth address like \"00:09:1F:AA:BB:CC\"",
                                key("address")
                            ),
                        ));
                    }
                }
                let profile = require(&d.profile, "profile")?;
                if let Some(s) = &d.profile {
                    if !BLE_PROFILES.contains(&profile.as_str()) {
                        return Err(self.err(
                            s.span(),
                            format!(
                                "{}: expected one of {}",
                                key("profile"),
                                BLE_PROFILES.join(", ")
                            ),
                        ));
                    }
                }
                DeviceKind::Ble {
                    address: address.to_ascii_uppercase(),
                    profile,
                }
            }
            "serial" => {
                forbid(&d.topic, "topic")?;
                forbid(&d.address, "address")?;
                forbid(&d.profile, "profile")?;
                DeviceKind::Serial {
                    port: require(&d.port, "port")?,
                    protocol: require(&d.protocol, "protocol")?,
                }
            }
            other => {
                return Err(self.err(
                    d.kind.span(),
                    format!(
                        "{}: expected \"mqtt\", \"ble\" or \"serial\", found \"{other}\"",
                        key("kind")
                    ),
                ))
            }
        };
        let attribution = match (&d.patient, &d.patients) {
            (Some(p), None) => Attribution::Single(self.patient(p, &key("patient"))?),
            (None, Some(map)) => {
                let mut users = BTreeMap::new();
                for (k, v) in map.get_ref() {
                    let user: u8 = match k.parse::<u8>() {
                        Ok(u) if u != 255 => u,
                        _ => {
                            return Err(self.err(
                                v.span(),
                                format!("{}: expected user indexes 0-254 as keys, found \"{k}\" (255 means \"unknown user\")", key("patients")),
                            ))
                        }
                    };
                    users.insert(user, self.patient(v, &format!("{}.{k}", key("patients")))?);
                }
                if users.is_empty() {
                    return Err(self.err(
                        map.span(),
                        format!("{}: expected at least one user", key("patients")),
                    ));
                }
                Attribution::PerUser(users)
            }
            (Some(p), Some(_)) => {
                return Err(self.err(
                    p.span(),
                    format!(
                        "{}: set either `patient` or `patients`, not both",
                        key("patient")
                    ),
                ))
            }
            (None, None) => {
                return Err(self.err(
                    d.name.span(),
                    format!(
                    "{}: expected `patient = \"Patient/<id>\"` or a `patients` map by user index",
                    key("patient")
                ),
                ))
            }
        };
        Ok(DeviceConfig {
            name,
            kind,
            attribution,
            utc_offset: d
                .utc_offset
                .as_ref()
                .map(|s| self.offset(s, &key("utc_offset")))
                .transpose()?,
        })
    }

    fn simulator(&self, i: usize, s: RawSimulator) -> R<SimulatorConfig> {
        let key = |k: &str| format!("simulators[{i}].{k}");
        let kind = match s.kind.get_ref().as_str() {
            "blood-pressure" => SimulatorKind::BloodPressure,
            "scale" => SimulatorKind::Scale,
            other => {
                return Err(self.err(
                    s.kind.span(),
                    format!(
                        "{}: expected \"blood-pressure\" or \"scale\", found \"{other}\"",
                        key("kind")
                    ),
                ))
            }
        };
        let interval = self.int_in(&s.interval_ms, &key("interval_ms"), 1000..86_400_001, 5000)?;
        let count = match &s.count {
            None => None,
            Some(_) => Some(
                self.int_in(&s.count, &key("count"), 1..i64::MAX, 1)?
                    .unsigned_abs(),
            ),
        };
        Ok(SimulatorConfig {
            name: self.name(&s.name, &key("name"))?,
            kind,
            patient: self.patient(&s.patient, &key("patient"))?,
            interval: Duration::from_millis(interval.unsigned_abs()),
            count,
            seed: s.seed.map_or(1, |v| v.get_ref().unsigned_abs()),
        })
    }
}

/// Parses `Z`, `+HH:MM`, `-HH:MM`.
pub fn parse_utc_offset(s: &str) -> Option<FixedOffset> {
    if s == "Z" || s == "UTC" {
        return Some(chrono::Offset::fix(&chrono::Utc));
    }
    let sign = match s.as_bytes().first()? {
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    if s.len() != 6 || s.get(3..4)? != ":" {
        return None;
    }
    let h: i32 = s.get(1..3)?.parse().ok()?;
    let m: i32 = s.get(4..6)?.parse().ok()?;
    if h > 14 || m > 59 {
        return None;
    }
    FixedOffset::east_opt(sign * (h * 3600 + m * 60))
}

fn valid_topic_filter(t: &str) -> bool {
    if t.is_empty() || t.len() > 1024 || t.contains('\0') {
        return false;
    }
    let levels: Vec<&str> = t.split('/').collect();
    let last = levels.len() - 1;
    levels.iter().enumerate().all(|(i, l)| match *l {
        "#" => i == last,
        "+" => true,
        l => !l.contains('#') && !l.contains('+'),
    })
}

fn valid_bt_address(a: &str) -> bool {
    let parts: Vec<&str> = a.split(':').collect();
    parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()))
}

#[cfg(test)]
mod tests {
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
        assert_eq!(c.uplink.batch_size, 20);
        assert!(c.mqtt.is_none());
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
        assert_eq!(
            c.devices[0].kind,
            DeviceKind::Ble {
                address: "00:09:1F:AA:BB:CC".into(),
                profile: "blood-pressure".into()
            }
        );
        let bad = text.replace("2 = ", "255 = ");
        assert!(load(&bad).unwrap_err().message.contains("255"));
    }

    #[test]
    fn mqtt_device_without_mqtt_section_is_an_error() {
        let text = format!("{MINIMAL}\n[[devices]]\nname = \"hub\"\nkind = \"mqtt\"\ntopic = \"a/b\"\npatient = \"Patient/1\"\n");
        let e = load(&text).unwrap_err();
        assert!(e.message.contains("[mqtt]"), "{e}");
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
        let text = include_str!("../../config/vitalgate.example.toml");
        let c = Config::from_str_at(text, Path::new("/etc/vitalgate/vitalgate.toml"))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.devices.len(), 3);
        assert!(c.mqtt.is_some());
    }
}
