//! Checks of the `[ops]` and `[fleet]` sections (operations: live status, alarms, fleet
//! reporting). Kept apart from `validate.rs` so the device and uplink checks stay readable.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use super::raw::{RawFleet, RawOps};
use super::validate::Validator;
use super::{ConfigError, FleetConfig, MqttConfig, OpsConfig};

type R<T> = Result<T, ConfigError>;

impl Validator<'_> {
    /// `[ops]`; `names` are the configured device and simulator names.
    pub(super) fn ops(&self, raw: Option<RawOps>, names: &HashSet<String>) -> R<OpsConfig> {
        let d = OpsConfig::default();
        let Some(o) = raw else { return Ok(d) };
        let runtime_dir = match &o.runtime_dir {
            Some(s) => self.path_value(s, "ops.runtime_dir")?,
            None => d.runtime_dir,
        };
        let interval = self.int_in(
            &o.status_interval_secs,
            "ops.status_interval_secs",
            1..301,
            5,
        )?;
        let warn_days = self.int_in(
            &o.cert_expiry_warn_days,
            "ops.cert_expiry_warn_days",
            1..3651,
            30,
        )?;
        let mut silent = BTreeMap::new();
        if let Some(map) = &o.device_silent_after_secs {
            for (name, secs) in map.get_ref() {
                if !names.contains(name) {
                    return Err(self.err(
                        secs.span(),
                        format!("ops.device_silent_after_secs: \"{name}\" is not a configured device or simulator"),
                    ));
                }
                let v = self.int_in(
                    &Some(secs.clone()),
                    &format!("ops.device_silent_after_secs.{name}"),
                    10..(90 * 86_400 + 1),
                    0,
                )?;
                silent.insert(name.clone(), Duration::from_secs(v.unsigned_abs()));
            }
        }
        Ok(OpsConfig {
            runtime_dir_configured: o.runtime_dir.is_some(),
            runtime_dir,
            status_interval: Duration::from_secs(interval.unsigned_abs()),
            cert_expiry_warn: Duration::from_secs(warn_days.unsigned_abs() * 86_400),
            device_silent_after: silent,
        })
    }

    /// `[fleet]`: `[fleet.mqtt]` is checked exactly like `[mqtt]` (messages name
    /// `fleet.mqtt.*`); without it the fleet client reuses `[mqtt]` under its own client id.
    pub(super) fn fleet(
        &self,
        f: RawFleet,
        ingest: Option<&MqttConfig>,
        gateway_id: &str,
    ) -> R<FleetConfig> {
        let interval = self.int_in(
            &f.status_interval_secs,
            "fleet.status_interval_secs",
            10..86_401,
            900,
        )?;
        let mut mqtt = match f.mqtt {
            Some(m) => {
                let own_id = m.client_id.is_some();
                let mut c = self.mqtt(m, gateway_id).map_err(|mut e| {
                    e.message = fleet_message(&e.message);
                    e
                })?;
                if !own_id {
                    c.client_id = format!("vitalgate-{gateway_id}-fleet");
                }
                c
            }
            None => match ingest {
                Some(m) => {
                    let mut c = m.clone();
                    // Never the ingest session's id: the broker would drop one connection.
                    c.client_id = format!("{}-fleet", m.client_id);
                    c
                }
                None => {
                    return Err(ConfigError {
                        path: self.path.to_path_buf(),
                        position: None,
                        message: "fleet: needs a broker: add [fleet.mqtt] (broker = \"mqtts://...\") or an [mqtt] section".into(),
                    })
                }
            },
        };
        // The fleet client only publishes; a persistent session would only queue nothing.
        mqtt.clean_session = true;
        if mqtt.client_id.len() > 64 {
            return Err(ConfigError {
                path: self.path.to_path_buf(),
                position: None,
                message: format!(
                    "fleet: the fleet client id \"{}\" is longer than 64 characters; set fleet.mqtt.client_id",
                    mqtt.client_id
                ),
            });
        }
        Ok(FleetConfig {
            mqtt,
            status_interval: Duration::from_secs(interval.unsigned_abs()),
        })
    }
}

/// `mqtt.broker: ...` → `fleet.mqtt.broker: ...` (the `[mqtt]` checks name their own section).
fn fleet_message(m: &str) -> String {
    match m.strip_prefix("mqtt") {
        Some(rest) => format!("fleet.mqtt{}", rest.replace("mqtt.", "fleet.mqtt.")),
        None => m.replace("mqtt.", "fleet.mqtt."),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::super::Config;

    /// The minimal config (config's own tests) with one simulator.
    fn base() -> String {
        format!(
            "{}\n[[simulators]]\nname = \"sim\"\nkind = \"scale\"\npatient = \"Patient/1\"\n",
            super::super::tests::MINIMAL
        )
    }

    fn load(text: &str) -> Result<Config, super::ConfigError> {
        Config::from_str_at(text, Path::new("/etc/vitalgate/vitalgate.toml"))
    }

    #[test]
    fn ops_defaults_apply_without_the_section() {
        let c = load(&base()).unwrap();
        assert_eq!(c.ops, super::OpsConfig::default());
        assert!(c.fleet.is_none());
    }

    #[test]
    fn ops_values_are_checked_and_silence_thresholds_name_configured_devices() {
        let c = load(&format!(
            "{}\n[ops]\nruntime_dir = \"run\"\nstatus_interval_secs = 2\ndevice_silent_after_secs = {{ sim = 600 }}\n",
        base()))
        .unwrap();
        assert_eq!(c.ops.runtime_dir, Path::new("/etc/vitalgate/run"));
        assert_eq!(c.ops.status_interval.as_secs(), 2);
        assert_eq!(c.ops.device_silent_after["sim"].as_secs(), 600);
        let e = load(&format!(
            "{}\n[ops]\ndevice_silent_after_secs = {{ cuff = 600 }}\n",
            base()
        ))
        .unwrap_err();
        assert!(
            e.message.contains("\"cuff\" is not a configured device"),
            "{e}"
        );
        assert!(e.position.is_some());
        let e = load(&format!("{}\n[ops]\nstatus_interval_secs = 0\n", base())).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("/etc/vitalgate/vitalgate.toml:21:24: ops.status_interval_secs"),
            "{e}"
        );
    }

    #[test]
    fn fleet_reuses_the_ingest_broker_under_its_own_client_id_or_takes_its_own() {
        let with_mqtt = format!(
            "{}\n[mqtt]\nbroker = \"mqtt://127.0.0.1:1883\"\n\n[fleet]\n",
            base()
        );
        let c = load(&with_mqtt).unwrap();
        let f = c.fleet.unwrap();
        assert_eq!(f.mqtt.client_id, "vitalgate-gw-1-fleet");
        assert_eq!(f.status_interval.as_secs(), 900);
        assert!(f.mqtt.clean_session);

        let own = format!(
            "{}\n[fleet]\nstatus_interval_secs = 60\n[fleet.mqtt]\nbroker = \"mqtts://fleet.example.org\"\nca_file = \"tls/fleet-ca.crt\"\nclient_cert = \"tls/fleet.crt\"\nclient_key = \"tls/fleet.key\"\n",
        base());
        let f = load(&own).unwrap().fleet.unwrap();
        assert_eq!(
            (f.mqtt.host.as_str(), f.mqtt.port, f.mqtt.tls),
            ("fleet.example.org", 8883, true)
        );
        assert_eq!(
            f.mqtt.client_cert.as_deref(),
            Some(Path::new("/etc/vitalgate/tls/fleet.crt"))
        );
        assert_eq!(f.mqtt.client_id, "vitalgate-gw-1-fleet");

        let e = load(&own.replace("ca_file = \"tls/fleet-ca.crt\"\n", "")).unwrap_err();
        assert!(
            e.message
                .starts_with("fleet.mqtt: mqtts:// needs fleet.mqtt.ca_file"),
            "{e}"
        );
        let e = load(&format!("{}\n[fleet]\n", base())).unwrap_err();
        assert!(e.message.contains("needs a broker"), "{e}");
    }
}
