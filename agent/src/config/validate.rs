//! Raw file form → validated [`Config`]. Every check lives here and runs before anything is
//! opened; every error names `file:line:column` and what was expected.

use std::collections::{BTreeMap, HashSet};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::FixedOffset;
use toml::Spanned;

use device_drivers::serial::{generic, Cadence};

use super::raw::*;
use super::*;
use crate::reading::PatientRef;

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

pub(super) struct Validator<'a> {
    pub(super) text: &'a str,
    pub(super) path: &'a Path,
    pub(super) base: PathBuf,
}

type R<T> = Result<T, ConfigError>;

impl Validator<'_> {
    pub(super) fn err(&self, span: Range<usize>, message: impl Into<String>) -> ConfigError {
        ConfigError {
            path: self.path.to_path_buf(),
            position: Some(line_col(self.text, span.start)),
            message: message.into(),
        }
    }

    pub(super) fn path_value(&self, s: &Spanned<String>, key: &str) -> R<PathBuf> {
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

    pub(super) fn int_in(
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

    pub(super) fn config(&self, raw: RawConfig) -> R<Config> {
        let gateway = self.gateway(raw.gateway)?;
        let store = self.store(raw.store)?;
        let uplink = self.uplink(raw.uplink)?;
        let mqtt = raw.mqtt.map(|m| self.mqtt(m, &gateway.id)).transpose()?;
        let ble = match &raw.ble {
            Some(b) => self.ble(b)?,
            None => BleConfig::default(),
        };
        let mut devices = Vec::new();
        let mut names = HashSet::new();
        // (topic filter, index, span of `topic`) of every MQTT device, for the overlap check.
        let mut filters: Vec<(String, usize, Range<usize>)> = Vec::new();
        let mut mqtt_device_span = None;
        for (i, d) in raw.devices.into_iter().enumerate() {
            let name_span = d.name.span();
            let kind_span = d.kind.span();
            let topic_span = d.topic.as_ref().map_or(kind_span.clone(), Spanned::span);
            let port_span = d.port.as_ref().map_or(kind_span.clone(), Spanned::span);
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
            if let DeviceKind::Mqtt { topic, .. } = &dev.kind {
                mqtt_device_span.get_or_insert(kind_span.clone());
                filters.push((topic.clone(), i, topic_span));
            }
            if let DeviceKind::Serial(s) = &dev.kind {
                let other = devices.iter().position(
                    |o: &DeviceConfig| matches!(&o.kind, DeviceKind::Serial(p) if p.port == s.port),
                );
                if let Some(j) = other {
                    return Err(self.err(
                        port_span,
                        format!(
                            "devices[{i}].port: {} is also the port of devices[{j}]; one port is one device",
                            s.port.display()
                        ),
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
        self.check_topic_overlaps(&filters, &devices)?;
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
        let ops = self.ops(raw.ops, &names)?;
        let fleet = raw
            .fleet
            .map(|f| self.fleet(f, mqtt.as_ref(), &gateway.id))
            .transpose()?;
        let mut consent = super::ConsentConfig::default();
        if let Some(c) = raw.consent {
            for (i, w) in c.withdrawn.iter().enumerate() {
                let p = w
                    .get_ref()
                    .parse::<PatientRef>()
                    .map_err(|e| self.err(w.span(), format!("consent.withdrawn[{i}]: {e}")))?;
                consent.withdrawn.push(p);
            }
            if let Some(f) = &c.file {
                consent.file = Some(self.path_value(f, "consent.file")?);
            }
            consent.purge_after = self.purge_after(&c)?;
        }
        let audit = self.audit(raw.audit.as_ref(), &gateway.data_dir)?;
        let export = match raw.export {
            Some(e) => {
                let key = &e.recipient_public_key;
                let recipient =
                    crate::export::keys::parse_public_key(key.get_ref()).map_err(|why| {
                        self.err(key.span(), format!("export.recipient_public_key: {why}"))
                    })?;
                Some(super::ExportConfig { recipient })
            }
            None => None,
        };
        Ok(Config {
            path: self.path.to_path_buf(),
            audit,
            gateway,
            store,
            uplink,
            mqtt,
            ble,
            devices,
            simulators,
            ops,
            fleet,
            consent,
            export,
        })
    }

    /// Two MQTT devices whose topic filters can match the same topic would make attribution
    /// depend on the order of the file: refused unless both bind the same patient(s).
    fn check_topic_overlaps(
        &self,
        filters: &[(String, usize, Range<usize>)],
        devices: &[DeviceConfig],
    ) -> R<()> {
        for (n, (fa, ia, sa)) in filters.iter().enumerate() {
            for (fb, ib, sb) in filters.iter().skip(n + 1) {
                if !filters_overlap(fa, fb) {
                    continue;
                }
                let same_binding = match (devices.get(*ia), devices.get(*ib)) {
                    (Some(a), Some(b)) => a.attribution == b.attribution,
                    _ => false,
                };
                if fa == fb || !same_binding {
                    let (la, ca) = line_col(self.text, sa.start);
                    return Err(self.err(
                        sb.clone(),
                        format!(
                            "devices[{ib}].topic: topic filter \"{fb}\" overlaps \"{fa}\" of devices[{ia}] at {}:{la}:{ca}; a reading on a topic both match could go to the wrong patient (make the filters disjoint)",
                            self.path.display()
                        ),
                    ));
                }
            }
        }
        Ok(())
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

    /// `consent.purge_after_days` (1 to 3650), or the test-only seconds of debug builds.
    fn purge_after(&self, c: &RawConsent) -> R<Option<Duration>> {
        let days = match &c.purge_after_days {
            Some(_) => {
                Some(self.int_in(&c.purge_after_days, "consent.purge_after_days", 1..3651, 1)?)
            }
            None => None,
        };
        let Some(secs) = &c.purge_after_seconds_test_only else {
            return Ok(days.map(|d| Duration::from_secs(u64::try_from(d).unwrap_or(1) * 86_400)));
        };
        if !cfg!(debug_assertions) {
            return Err(self.err(
                secs.span(),
                "consent.purge_after_seconds_test_only: a test-only setting, refused by release builds (use purge_after_days)",
            ));
        }
        if days.is_some() {
            return Err(self.err(
                secs.span(),
                "consent.purge_after_seconds_test_only: set either this or purge_after_days, not both",
            ));
        }
        let s = self.int_in(
            &c.purge_after_seconds_test_only,
            "consent.purge_after_seconds_test_only",
            1..86_401,
            1,
        )?;
        Ok(Some(Duration::from_secs(u64::try_from(s).unwrap_or(1))))
    }

    /// `[audit]`: bounds checked against each other (a segment fits twice in `max_bytes`; the
    /// retention covers the ledger's window).
    fn audit(&self, a: Option<&RawAudit>, data_dir: &Path) -> R<AuditConfig> {
        let none = RawAudit {
            max_bytes: None,
            segment_bytes: None,
            retention_days: None,
            ledger_days: None,
        };
        let a = a.unwrap_or(&none);
        let segment = self.int_in(
            &a.segment_bytes,
            "audit.segment_bytes",
            MIN_AUDIT_SEGMENT_BYTES..(1 << 30) + 1,
            DEFAULT_AUDIT_SEGMENT_BYTES,
        )?;
        let max = self.int_in(
            &a.max_bytes,
            "audit.max_bytes",
            2 * MIN_AUDIT_SEGMENT_BYTES..i64::MAX,
            DEFAULT_AUDIT_MAX_BYTES.max(2 * segment),
        )?;
        if max < 2 * segment {
            let span = a
                .max_bytes
                .as_ref()
                .or(a.segment_bytes.as_ref())
                .map_or(0..0, Spanned::span);
            return Err(self.err(
                span,
                format!("audit.max_bytes: expected at least twice audit.segment_bytes ({}), found {max}", 2 * segment),
            ));
        }
        let retention = self.int_in(
            &a.retention_days,
            "audit.retention_days",
            1..3651,
            DEFAULT_AUDIT_RETENTION_DAYS,
        )?;
        let ledger = self.int_in(
            &a.ledger_days,
            "audit.ledger_days",
            1..3651,
            DEFAULT_AUDIT_LEDGER_DAYS,
        )?;
        if ledger > retention {
            let span = a
                .ledger_days
                .as_ref()
                .or(a.retention_days.as_ref())
                .map_or(0..0, Spanned::span);
            return Err(self.err(
                span,
                format!("audit.ledger_days: {ledger} days is longer than the audit log keeps entries (audit.retention_days = {retention}); raise retention_days or lower ledger_days"),
            ));
        }
        let days = |d: i64| Duration::from_secs(u64::try_from(d).unwrap_or(1) * 86_400);
        Ok(AuditConfig {
            dir: data_dir.join("audit"),
            max_bytes: u64::try_from(max).unwrap_or(DEFAULT_AUDIT_MAX_BYTES as u64),
            segment_bytes: u64::try_from(segment).unwrap_or(DEFAULT_AUDIT_SEGMENT_BYTES as u64),
            retention: days(retention),
            ledger: days(ledger),
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
        let max_bytes = self.int_in(
            &s.max_bytes,
            "store.max_bytes",
            MIN_STORE_BYTES..i64::MAX,
            DEFAULT_STORE_MAX_BYTES,
        )?;
        let cipher = match &s.cipher {
            None => crate::store::keyring::Alg::ChaCha20Poly1305,
            Some(v) => crate::store::keyring::Alg::parse(v.get_ref()).ok_or_else(|| {
                self.err(
                    v.span(),
                    format!(
                        "store.cipher: expected \"chacha20-poly1305\" or \"aes-256-gcm\", found {:?}",
                        v.get_ref()
                    ),
                )
            })?,
        };
        Ok(StoreConfig {
            cipher,
            key_file: self.path_value(&s.key_file, "store.key_file")?,
            cache_capacity_bytes: u64::try_from(mib).unwrap_or(16) * 1024 * 1024,
            acked_retention: Duration::from_secs(u64::try_from(days).unwrap_or(30) * 86_400),
            max_bytes: u64::try_from(max_bytes).unwrap_or(DEFAULT_STORE_MAX_BYTES as u64),
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
        let batch = self.int_in(&u.batch_size, "uplink.batch_size", 1..51, 50)?;
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
        let pause_max = self.int_in(&u.pause_max_secs, "uplink.pause_max_secs", 1..301, 300)?;
        // Unset, the first probe waits 10 s, or the cap if that is shorter.
        let pause_initial = self.int_in(
            &u.pause_initial_secs,
            "uplink.pause_initial_secs",
            1..301,
            10.min(pause_max),
        )?;
        if let Some(initial) = &u.pause_initial_secs {
            if pause_initial > pause_max {
                return Err(self.err(
                    initial.span(),
                    format!("uplink.pause_initial_secs: {pause_initial} is more than uplink.pause_max_secs ({pause_max})"),
                ));
            }
        }
        let mut pins = Vec::new();
        for pin in u.pin_spki_sha256.iter().flatten() {
            let parsed = crate::tls::pin::parse_pin(pin.get_ref()).map_err(|e| {
                self.err(
                    pin.span(),
                    format!(
                        "uplink.pin_spki_sha256: {:?} is not a pin-sha256 value: {e}",
                        pin.get_ref()
                    ),
                )
            })?;
            pins.push(parsed);
        }
        let post_quantum = match &u.post_quantum {
            None => crate::tls::PostQuantum::default(),
            Some(v) => crate::tls::PostQuantum::parse(v.get_ref()).ok_or_else(|| {
                self.err(
                    v.span(),
                    format!(
                        "uplink.post_quantum: expected \"prefer\", \"require\" or \"off\", found {:?}",
                        v.get_ref()
                    ),
                )
            })?,
        };
        let mut windows = Vec::new();
        for w in u.upload_windows.iter().flatten() {
            windows.push(
                crate::uplink::metering::UploadWindow::parse(w.get_ref())
                    .map_err(|e| self.err(w.span(), format!("uplink.upload_windows: {e}")))?,
            );
        }
        let daily_byte_budget = match &u.daily_byte_budget {
            None => None,
            Some(_) => Some(
                self.int_in(
                    &u.daily_byte_budget,
                    "uplink.daily_byte_budget",
                    MIN_DAILY_BYTE_BUDGET..i64::MAX,
                    0,
                )?
                .unsigned_abs(),
            ),
        };
        let write_mode = match u.write_mode.as_ref().map(|m| (m, m.get_ref().as_str())) {
            None | Some((_, "conditional-create")) => crate::uplink::fhir::WriteMode::ConditionalCreate,
            Some((_, "put")) => crate::uplink::fhir::WriteMode::Put,
            Some((m, other)) => {
                return Err(self.err(
                    m.span(),
                    format!("uplink.write_mode: expected \"conditional-create\" or \"put\", found {other:?}"),
                ))
            }
        };
        let oauth2 = match &u.oauth2 {
            None => None,
            Some(o) => Some(self.oauth2(o, &base, u.allow_insecure_http)?),
        };
        Ok(UplinkConfig {
            fhir_base: base,
            write_mode,
            oauth2,
            metering: crate::uplink::metering::Metering {
                windows,
                daily_byte_budget,
            },
            pin_spki_sha256: pins,
            post_quantum,
            ca_file: self.path_value(&u.ca_file, "uplink.ca_file")?,
            client_cert: self.path_value(&u.client_cert, "uplink.client_cert")?,
            client_key: self.path_value(&u.client_key, "uplink.client_key")?,
            allow_insecure_http: u.allow_insecure_http,
            timeout: Duration::from_secs(timeout.unsigned_abs()),
            batch_size: usize::try_from(batch).unwrap_or(50),
            backoff_initial: Duration::from_millis(initial.unsigned_abs()),
            backoff_max: Duration::from_secs(max.unsigned_abs()),
            pause_initial: Duration::from_secs(pause_initial.unsigned_abs()),
            pause_max: Duration::from_secs(pause_max.unsigned_abs()),
        })
    }

    /// `[uplink.oauth2]`.
    fn oauth2(
        &self,
        o: &RawOAuth2,
        fhir_base: &url::Url,
        allow_insecure_http: bool,
    ) -> R<crate::uplink::oauth::OAuth2Config> {
        use crate::uplink::oauth::{JwsAlgorithm, OAuth2Config, DEFAULT_SCOPE};
        let token_url = match &o.token_url {
            None => None,
            Some(t) => {
                let key = "uplink.oauth2.token_url";
                let url = url::Url::parse(t.get_ref()).map_err(|e| {
                    self.err(
                        t.span(),
                        format!("{key}: expected an absolute https:// URL ({e})"),
                    )
                })?;
                if let Err(why) = crate::uplink::oauth::check_endpoint(&url, allow_insecure_http) {
                    return Err(self.err(t.span(), format!("{key}: {why}")));
                }
                Some(url)
            }
        };
        let text = |s: &Spanned<String>, key: &str| -> R<String> {
            let v = s.get_ref().trim();
            if v.is_empty() || v.chars().any(char::is_control) {
                return Err(self.err(
                    s.span(),
                    format!("{key}: expected a non-empty value without control characters"),
                ));
            }
            Ok(v.to_owned())
        };
        let client_id = text(&o.client_id, "uplink.oauth2.client_id")?;
        let algorithm = JwsAlgorithm::parse(o.algorithm.get_ref()).ok_or_else(|| {
            self.err(
                o.algorithm.span(),
                format!(
                    "uplink.oauth2.algorithm: expected \"ES384\" or \"RS384\", found {:?}",
                    o.algorithm.get_ref()
                ),
            )
        })?;
        let key_id = match &o.key_id {
            None => None,
            Some(k) => Some(text(k, "uplink.oauth2.key_id")?),
        };
        let scope = match &o.scope {
            None => DEFAULT_SCOPE.to_owned(),
            Some(s) => text(s, "uplink.oauth2.scope")?,
        };
        Ok(OAuth2Config {
            token_url,
            discovery_url: crate::uplink::oauth::smart_configuration_url(fhir_base),
            allow_insecure_http,
            client_id,
            key_file: self.path_value(&o.key_file, "uplink.oauth2.key_file")?,
            algorithm,
            key_id,
            scope,
        })
    }

    pub(super) fn mqtt(&self, m: RawMqtt, gateway_id: &str) -> R<MqttConfig> {
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
        if !tls && m.username.is_some() && !m.allow_plaintext && !is_loopback_host(&host) {
            return Err(self.err(
                m.broker.span(),
                format!("mqtt.broker: credentials would travel in plaintext to {host}; use mqtts:// (or set mqtt.allow_plaintext = true for a trusted network)"),
            ));
        }
        let keep_alive = self.int_in(&m.keep_alive_secs, "mqtt.keep_alive_secs", 5..3601, 30)?;
        let max_packet = self.int_in(
            &m.max_packet_bytes,
            "mqtt.max_packet_bytes",
            MQTT_MIN_PACKET_BYTES as i64..MQTT_MAX_PACKET_BYTES as i64 + 1,
            MQTT_MAX_PACKET_BYTES as i64,
        )?;
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
            max_packet_bytes: usize::try_from(max_packet).unwrap_or(MQTT_MAX_PACKET_BYTES),
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
        let serial_only: [(&str, Option<Range<usize>>); 7] = [
            ("baud", d.baud.as_ref().map(Spanned::span)),
            ("data_bits", d.data_bits.as_ref().map(Spanned::span)),
            ("parity", d.parity.as_ref().map(Spanned::span)),
            ("stop_bits", d.stop_bits.as_ref().map(Spanned::span)),
            ("flow_control", d.flow_control.as_ref().map(Spanned::span)),
            (
                "silence_alarm_secs",
                d.silence_alarm_secs.as_ref().map(Spanned::span),
            ),
            ("reduction", d.reduction.as_ref().map(Spanned::span)),
        ];
        if d.kind.get_ref() != "serial" {
            if let Some((k, Some(span))) = serial_only.iter().find(|(_, s)| s.is_some()) {
                return Err(self.err(
                    span.clone(),
                    format!("{}: not a key of kind \"{}\"", key(k), d.kind.get_ref()),
                ));
            }
        }
        let kind = match d.kind.get_ref().as_str() {
            "mqtt" => {
                self.forbid_ble_keys(i, &d)?;
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
                let mut upload_statistics = Vec::new();
                for (j, s) in d
                    .upload_statistics
                    .iter()
                    .flat_map(|v| v.get_ref())
                    .enumerate()
                {
                    if crate::uplink::fhir::statistic_code(s.get_ref()).is_none() {
                        return Err(self.err(
                            s.span(),
                            format!(
                                "{}: \"{}\" cannot be uploaded; expected an Open mHealth descriptive_statistic in the measurement's own unit: average, maximum, minimum, median, standard deviation, sum, 20th percentile, 80th percentile, lower quartile, upper quartile, quartile deviation, 1st quintile .. 4th quintile (count and variance are not in that unit)",
                                key(&format!("upload_statistics[{j}]")),
                                s.get_ref()
                            ),
                        ));
                    }
                    upload_statistics.push(s.get_ref().clone());
                }
                DeviceKind::Mqtt {
                    topic,
                    upload_statistics,
                }
            }
            "ble" | "serial" if d.upload_statistics.is_some() => {
                let span = d
                    .upload_statistics
                    .as_ref()
                    .map(Spanned::span)
                    .unwrap_or_default();
                return Err(self.err(
                    span,
                    format!(
                        "{}: not a key of kind \"{}\" (Open mHealth hubs only)",
                        key("upload_statistics"),
                        d.kind.get_ref()
                    ),
                ));
            }
            "ble" => {
                forbid(&d.topic, "topic")?;
                forbid(&d.port, "port")?;
                forbid(&d.protocol, "protocol")?;
                DeviceKind::Ble(self.ble_device(i, &d)?)
            }
            "serial" => {
                self.forbid_ble_keys(i, &d)?;
                forbid(&d.topic, "topic")?;
                forbid(&d.address, "address")?;
                forbid(&d.profile, "profile")?;
                require(&d.port, "port")?;
                require(&d.protocol, "protocol")?;
                DeviceKind::Serial(self.serial_device(i, &d)?)
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

    fn ble(&self, b: &RawBle) -> R<BleConfig> {
        let d = BleConfig::default();
        let secs = |v: &Option<Spanned<i64>>, key: &str, range: Range<i64>, def: Duration| {
            self.int_in(v, key, range, i64::try_from(def.as_secs()).unwrap_or(1))
                .map(|n| Duration::from_secs(n.unsigned_abs()))
        };
        let adapter = match &b.adapter {
            Some(a) => {
                let v = a.get_ref();
                let ok = v.len() > 3
                    && v.len() <= 8
                    && v.starts_with("hci")
                    && v.bytes().skip(3).all(|c| c.is_ascii_digit());
                if !ok {
                    return Err(self.err(
                        a.span(),
                        "ble.adapter: expected a BlueZ adapter name like \"hci0\"",
                    ));
                }
                v.clone()
            }
            None => d.adapter.clone(),
        };
        Ok(BleConfig {
            adapter,
            connect_timeout: secs(
                &b.connect_timeout_secs,
                "ble.connect_timeout_secs",
                1..121,
                d.connect_timeout,
            )?,
            operation_timeout: secs(
                &b.operation_timeout_secs,
                "ble.operation_timeout_secs",
                1..121,
                d.operation_timeout,
            )?,
            watchdog_silence: secs(
                &b.watchdog_silence_secs,
                "ble.watchdog_silence_secs",
                1..86_401,
                d.watchdog_silence,
            )?,
            reconnect_backoff_max: secs(
                &b.reconnect_backoff_max_secs,
                "ble.reconnect_backoff_max_secs",
                1..3601,
                d.reconnect_backoff_max,
            )?,
            idle_disconnect: secs(
                &b.idle_disconnect_secs,
                "ble.idle_disconnect_secs",
                1..86_401,
                d.idle_disconnect,
            )?,
        })
    }

    /// Keys that only mean something for `kind = "ble"`.
    fn forbid_ble_keys(&self, i: usize, d: &RawDevice) -> R<()> {
        let kind = d.kind.get_ref();
        let spans: [(&str, Option<Range<usize>>); 9] = [
            ("profiles", d.profiles.as_ref().map(Spanned::span)),
            ("manufacturer", d.manufacturer.as_ref().map(Spanned::span)),
            ("model", d.model.as_ref().map(Spanned::span)),
            ("serial", d.serial.as_ref().map(Spanned::span)),
            ("system_id", d.system_id.as_ref().map(Spanned::span)),
            (
                "pair_if_bond_lost",
                d.pair_if_bond_lost.as_ref().map(Spanned::span),
            ),
            (
                "clock_set_threshold_secs",
                d.clock_set_threshold_secs.as_ref().map(Spanned::span),
            ),
            ("set_clock", d.set_clock.as_ref().map(Spanned::span)),
            (
                "delete_after_download",
                d.delete_after_download.as_ref().map(Spanned::span),
            ),
        ];
        for (k, span) in spans {
            if let Some(span) = span {
                return Err(self.err(
                    span,
                    format!("devices[{i}].{k}: not a key of kind \"{kind}\""),
                ));
            }
        }
        Ok(())
    }

    fn ble_device(&self, i: usize, d: &RawDevice) -> R<BleDeviceConfig> {
        let key = |k: &str| format!("devices[{i}].{k}");
        let address = match &d.address {
            Some(s) if valid_bt_address(s.get_ref()) => Some(s.get_ref().to_ascii_uppercase()),
            Some(s) => {
                return Err(self.err(
                    s.span(),
                    format!(
                        "{}: expected a Bluetooth address like \"00:09:1F:AA:BB:CC\"",
                        key("address")
                    ),
                ))
            }
            None => None,
        };
        let profile_err = |span: Range<usize>, k: &str| {
            self.err(
                span,
                format!("{}: expected one of {}", key(k), BLE_PROFILES.join(", ")),
            )
        };
        let profiles = match (&d.profile, &d.profiles) {
            (Some(p), None) => vec![BleProfile::from_name(p.get_ref())
                .ok_or_else(|| profile_err(p.span(), "profile"))?],
            (None, Some(list)) => {
                let mut out = Vec::new();
                for p in list.get_ref() {
                    let prof = BleProfile::from_name(p.get_ref())
                        .ok_or_else(|| profile_err(p.span(), "profiles"))?;
                    if !out.contains(&prof) {
                        out.push(prof);
                    }
                }
                if out.is_empty() {
                    return Err(self.err(
                        list.span(),
                        format!("{}: expected at least one profile", key("profiles")),
                    ));
                }
                out
            }
            (Some(p), Some(_)) => {
                return Err(self.err(
                    p.span(),
                    format!(
                        "{}: set either `profile` or `profiles`, not both",
                        key("profile")
                    ),
                ))
            }
            (None, None) => {
                return Err(self.err(
                    d.kind.span(),
                    format!("{}: required for kind \"ble\"", key("profile")),
                ))
            }
        };
        let text = |v: &Option<Spanned<String>>, k: &str| -> R<Option<String>> {
            match v {
                Some(s) if s.get_ref().trim().is_empty() || s.get_ref().len() > 64 => Err(self.err(
                    s.span(),
                    format!("{}: expected 1-64 characters (what the device reports in Device Information)", key(k)),
                )),
                Some(s) => Ok(Some(s.get_ref().clone())),
                None => Ok(None),
            }
        };
        let system_id = match &d.system_id {
            Some(s) => Some(ble::canonical_system_id(s.get_ref()).ok_or_else(|| {
                self.err(
                    s.span(),
                    format!(
                        "{}: expected 8 octets of hex like \"00-09-1F-FF-FE-80-12-34\"",
                        key("system_id")
                    ),
                )
            })?),
            None => None,
        };
        let identity = DisIdentity {
            manufacturer: text(&d.manufacturer, "manufacturer")?,
            model: text(&d.model, "model")?,
            serial: text(&d.serial, "serial")?,
            system_id,
        };
        if address.is_none() && identity.serial.is_none() && identity.system_id.is_none() {
            return Err(self.err(
                d.name.span(),
                format!("{}: a BLE device needs `address`, or a Device Information identity with `serial` or `system_id`", key("address")),
            ));
        }
        let threshold = self.int_in(
            &d.clock_set_threshold_secs,
            &key("clock_set_threshold_secs"),
            1..86_401,
            2,
        )?;
        let set_clock = d.set_clock.as_ref().is_none_or(|b| *b.get_ref());
        Ok(BleDeviceConfig {
            address,
            profiles,
            identity,
            pair_if_bond_lost: d.pair_if_bond_lost.as_ref().is_some_and(|b| *b.get_ref()),
            clock_set_threshold: set_clock.then(|| Duration::from_secs(threshold.unsigned_abs())),
            delete_after_download: d
                .delete_after_download
                .as_ref()
                .is_some_and(|b| *b.get_ref()),
        })
    }

    /// A serial device: the port, the protocol (a built-in name or a device file, read and
    /// checked now), the port settings (protocol defaults, then the config's overrides), the
    /// silence alarm and the stream reduction (defaults from the protocol's cadence).
    fn serial_device(&self, i: usize, d: &RawDevice) -> R<SerialDevice> {
        use device_drivers::serial::{FlowControl, Parity};
        let key = |k: &str| format!("devices[{i}].{k}");
        let (Some(port_s), Some(proto_s)) = (&d.port, &d.protocol) else {
            return Err(self.err(d.kind.span(), format!("{}: required", key("port"))));
        };
        let port = PathBuf::from(port_s.get_ref());
        if !port.is_absolute() {
            return Err(self.err(
                port_s.span(),
                format!(
                    "{}: expected an absolute device path such as /dev/serial/by-id/usb-FTDI_...-if00-port0",
                    key("port")
                ),
            ));
        }
        let protocol = self.serial_protocol(i, proto_s)?;
        let mut settings = match &protocol {
            SerialProtocol::Builtin(name) => device_drivers::serial::builtin_port_settings(name)
                .unwrap_or(device_drivers::serial::generic::DEFAULT_PORT_SETTINGS),
            SerialProtocol::DeviceFile { config, .. } => config.serial(),
        };
        if d.baud.is_some() {
            let baud = self.int_in(&d.baud, &key("baud"), 50..4_000_001, 9600)?;
            settings.baud = u32::try_from(baud).unwrap_or(9600);
        }
        if let Some(v) = &d.data_bits {
            settings.data_bits = match v.get_ref() {
                7 => 7,
                8 => 8,
                _ => {
                    return Err(self.err(v.span(), format!("{}: expected 7 or 8", key("data_bits"))))
                }
            };
        }
        if let Some(v) = &d.stop_bits {
            settings.stop_bits = match v.get_ref() {
                1 => 1,
                2 => 2,
                _ => {
                    return Err(self.err(v.span(), format!("{}: expected 1 or 2", key("stop_bits"))))
                }
            };
        }
        if let Some(v) = &d.parity {
            settings.parity = match v.get_ref().as_str() {
                "none" => Parity::None,
                "even" => Parity::Even,
                "odd" => Parity::Odd,
                other => {
                    return Err(self.err(
                        v.span(),
                        format!(
                            "{}: expected \"none\", \"even\" or \"odd\", found \"{other}\"",
                            key("parity")
                        ),
                    ))
                }
            };
        }
        if let Some(v) = &d.flow_control {
            settings.flow_control = match v.get_ref().as_str() {
                "none" => FlowControl::None,
                "rtscts" => FlowControl::Rtscts,
                "xonxoff" => FlowControl::Xonxoff,
                other => {
                    return Err(self.err(
                        v.span(),
                        format!(
                            "{}: expected \"none\", \"rtscts\" or \"xonxoff\", found \"{other}\"",
                            key("flow_control")
                        ),
                    ))
                }
            };
        }
        let stream = protocol.cadence() == Cadence::Stream;
        let silence = self.int_in(
            &d.silence_alarm_secs,
            &key("silence_alarm_secs"),
            0..86_401,
            if stream { 60 } else { 0 },
        )?;
        let silence_alarm = (silence > 0).then(|| Duration::from_secs(silence.unsigned_abs()));
        let reduction = match &d.reduction {
            None if stream => reduce::Mode::DEFAULT_STREAMING,
            None => reduce::Mode::All,
            Some(r) => self.reduction(&key("reduction"), r.get_ref())?,
        };
        Ok(SerialDevice {
            port,
            protocol,
            settings,
            silence_alarm,
            reduction,
        })
    }

    /// A built-in protocol name, else the path of a generic-line device file (relative to the
    /// config file), read and checked now; its errors name its own file, line and column.
    fn serial_protocol(&self, i: usize, s: &Spanned<String>) -> R<SerialProtocol> {
        let name = s.get_ref();
        if let Some(b) = device_drivers::serial::BUILTIN_PROTOCOLS
            .iter()
            .find(|b| **b == name.as_str())
        {
            return Ok(SerialProtocol::Builtin(b));
        }
        let path = self.path_value(s, &format!("devices[{i}].protocol"))?;
        if !path.is_file() {
            return Err(self.err(
                s.span(),
                format!(
                    "devices[{i}].protocol: expected a built-in protocol ({}) or the path of a device file; {} is neither",
                    device_drivers::serial::BUILTIN_PROTOCOLS.join(", "),
                    path.display()
                ),
            ));
        }
        let config = generic::DeviceConfig::from_file(&path).map_err(|e| ConfigError {
            path: e.path.clone(),
            position: (e.line > 0).then_some((e.line, e.column)),
            message: e.message.clone(),
        })?;
        Ok(SerialProtocol::DeviceFile { path, config })
    }

    fn reduction(&self, key: &str, r: &RawReduction) -> R<reduce::Mode> {
        let not_for = |span: Range<usize>, k: &str, mode: &str| {
            self.err(span, format!("{key}.{k}: not a key of mode \"{mode}\""))
        };
        let mode = r.mode.get_ref().as_str();
        let thresholds_span = r.thresholds.as_ref().map(Spanned::span);
        let window_span = r.window_secs.as_ref().map(Spanned::span);
        let repeat_span = r.repeat_secs.as_ref().map(Spanned::span);
        match mode {
            "spot-check" => {
                if let Some(sp) = thresholds_span {
                    return Err(not_for(sp, "thresholds", mode));
                }
                let window = self.int_in(&r.window_secs, &format!("{key}.window_secs"), 1..3601, 30)?;
                let repeat = self.int_in(&r.repeat_secs, &format!("{key}.repeat_secs"), 0..86_401, 900)?;
                if repeat != 0 && repeat < window {
                    return Err(self.err(
                        repeat_span.unwrap_or(r.mode.span()),
                        format!("{key}.repeat_secs: expected 0 (once per application) or at least window_secs ({window})"),
                    ));
                }
                Ok(reduce::Mode::SpotCheck {
                    window: Duration::from_secs(window.unsigned_abs()),
                    repeat: (repeat > 0).then(|| Duration::from_secs(repeat.unsigned_abs())),
                })
            }
            "interval" => {
                if let Some(sp) = thresholds_span {
                    return Err(not_for(sp, "thresholds", mode));
                }
                if let Some(sp) = repeat_span {
                    return Err(not_for(sp, "repeat_secs", mode));
                }
                let every = self.int_in(&r.window_secs, &format!("{key}.window_secs"), 1..86_401, 60)?;
                Ok(reduce::Mode::Interval {
                    every: Duration::from_secs(every.unsigned_abs()),
                })
            }
            "on-change" => {
                if let Some(sp) = window_span {
                    return Err(not_for(sp, "window_secs", mode));
                }
                if let Some(sp) = repeat_span {
                    return Err(not_for(sp, "repeat_secs", mode));
                }
                let mut thresholds = BTreeMap::new();
                if let Some(t) = &r.thresholds {
                    for (name, v) in t.get_ref() {
                        let Some(kind) = device_drivers::ReadingType::from_name(name) else {
                            let names: Vec<&str> = device_drivers::ReadingType::ALL
                                .iter()
                                .map(|t| t.as_str())
                                .collect();
                            return Err(self.err(
                                v.span(),
                                format!("{key}.thresholds: unknown reading type \"{name}\" (expected one of: {})", names.join(", ")),
                            ));
                        };
                        if v.get_ref().mantissa <= 0 {
                            return Err(self.err(
                                v.span(),
                                format!("{key}.thresholds.{name}: expected a positive change"),
                            ));
                        }
                        thresholds.insert(kind, *v.get_ref());
                    }
                }
                Ok(reduce::Mode::OnChange { thresholds })
            }
            "all" => {
                if let Some(sp) = thresholds_span.or(window_span).or(repeat_span) {
                    return Err(self.err(sp, format!("{key}: mode \"all\" takes no other key")));
                }
                Ok(reduce::Mode::All)
            }
            other => Err(self.err(
                r.mode.span(),
                format!("{key}.mode: expected \"spot-check\", \"interval\", \"on-change\" or \"all\", found \"{other}\""),
            )),
        }
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

/// Does the broker host name a loopback address (`localhost`, `127.0.0.0/8`, `::1`)?
fn is_loopback_host(host: &str) -> bool {
    let h = host.trim_start_matches('[').trim_end_matches(']');
    h.eq_ignore_ascii_case("localhost")
        || h.parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Can some topic match both MQTT topic filters? (`+` one level, `#` this level and every level
/// below, including none: `a/#` matches `a`.) Topics starting with `$` are not considered.
pub fn filters_overlap(a: &str, b: &str) -> bool {
    let mut x = a.split('/');
    let mut y = b.split('/');
    loop {
        match (x.next(), y.next()) {
            (Some("#"), _) | (_, Some("#")) => return true,
            (None, None) => return true,
            (Some(_), None) | (None, Some(_)) => return false,
            (Some("+"), Some(_)) | (Some(_), Some("+")) => {}
            (Some(p), Some(q)) if p == q => {}
            _ => return false,
        }
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

pub(super) fn valid_topic_filter(t: &str) -> bool {
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

pub(super) fn valid_bt_address(a: &str) -> bool {
    let parts: Vec<&str> = a.split(':').collect();
    parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()))
}
