//! The raw file form: structs that mirror the TOML file (`deny_unknown_fields`, spans kept for
//! `file:line:column` errors). Nothing here is checked beyond TOML types; see
//! [`super::validate`].

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub(super) gateway: RawGateway,
    pub(super) store: RawStore,
    pub(super) uplink: RawUplink,
    pub(super) mqtt: Option<RawMqtt>,
    pub(super) ble: Option<RawBle>,
    #[serde(default)]
    pub(super) devices: Vec<RawDevice>,
    #[serde(default)]
    pub(super) simulators: Vec<RawSimulator>,
    pub(super) ops: Option<RawOps>,
    pub(super) fleet: Option<RawFleet>,
    pub(super) consent: Option<RawConsent>,
    pub(super) audit: Option<RawAudit>,
    pub(super) export: Option<RawExport>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawExport {
    pub(super) recipient_public_key: Spanned<String>,
}

/// `[audit]`: the audit log's bounds and the ledger's window.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAudit {
    pub(super) max_bytes: Option<Spanned<i64>>,
    pub(super) segment_bytes: Option<Spanned<i64>>,
    pub(super) retention_days: Option<Spanned<i64>>,
    pub(super) ledger_days: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConsent {
    #[serde(default)]
    pub(super) withdrawn: Vec<Spanned<String>>,
    pub(super) file: Option<Spanned<String>>,
    pub(super) purge_after_days: Option<Spanned<i64>>,
    /// Test only (debug builds): the purge age in seconds, so an end-to-end test can age
    /// readings without waiting days. Refused by release builds.
    pub(super) purge_after_seconds_test_only: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawGateway {
    pub(super) id: Spanned<String>,
    pub(super) data_dir: Spanned<String>,
    pub(super) device_utc_offset: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawStore {
    pub(super) key_file: Spanned<String>,
    pub(super) cache_capacity_mib: Option<Spanned<i64>>,
    pub(super) acked_retention_days: Option<Spanned<i64>>,
    pub(super) max_bytes: Option<Spanned<i64>>,
    pub(super) cipher: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUplink {
    pub(super) fhir_base: Spanned<String>,
    pub(super) ca_file: Spanned<String>,
    pub(super) client_cert: Spanned<String>,
    pub(super) client_key: Spanned<String>,
    #[serde(default)]
    pub(super) allow_insecure_http: bool,
    pub(super) timeout_secs: Option<Spanned<i64>>,
    pub(super) batch_size: Option<Spanned<i64>>,
    pub(super) backoff_initial_ms: Option<Spanned<i64>>,
    pub(super) backoff_max_secs: Option<Spanned<i64>>,
    pub(super) pause_initial_secs: Option<Spanned<i64>>,
    pub(super) pause_max_secs: Option<Spanned<i64>>,
    pub(super) pin_spki_sha256: Option<Vec<Spanned<String>>>,
    pub(super) post_quantum: Option<Spanned<String>>,
    pub(super) upload_windows: Option<Vec<Spanned<String>>>,
    pub(super) daily_byte_budget: Option<Spanned<i64>>,
    pub(super) write_mode: Option<Spanned<String>>,
    /// `[uplink.oauth2]`.
    pub(super) oauth2: Option<RawOAuth2>,
}

/// `[uplink.oauth2]`: SMART Backend Services client credentials.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawOAuth2 {
    pub(super) token_url: Option<Spanned<String>>,
    pub(super) client_id: Spanned<String>,
    pub(super) key_file: Spanned<String>,
    pub(super) algorithm: Spanned<String>,
    pub(super) key_id: Option<Spanned<String>>,
    pub(super) scope: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMqtt {
    pub(super) broker: Spanned<String>,
    pub(super) client_id: Option<Spanned<String>>,
    pub(super) username: Option<Spanned<String>>,
    pub(super) password_file: Option<Spanned<String>>,
    pub(super) ca_file: Option<Spanned<String>>,
    pub(super) client_cert: Option<Spanned<String>>,
    pub(super) client_key: Option<Spanned<String>>,
    pub(super) keep_alive_secs: Option<Spanned<i64>>,
    pub(super) max_packet_bytes: Option<Spanned<i64>>,
    #[serde(default)]
    pub(super) clean_session: bool,
    #[serde(default)]
    pub(super) allow_plaintext: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDevice {
    pub(super) name: Spanned<String>,
    pub(super) kind: Spanned<String>,
    pub(super) topic: Option<Spanned<String>>,
    // kind = "mqtt" only:
    pub(super) upload_statistics: Option<Spanned<Vec<Spanned<String>>>>,
    pub(super) address: Option<Spanned<String>>,
    pub(super) profile: Option<Spanned<String>>,
    pub(super) port: Option<Spanned<String>>,
    pub(super) protocol: Option<Spanned<String>>,
    pub(super) patient: Option<Spanned<String>>,
    pub(super) patients: Option<Spanned<BTreeMap<String, Spanned<String>>>>,
    pub(super) utc_offset: Option<Spanned<String>>,
    // kind = "ble" only:
    pub(super) profiles: Option<Spanned<Vec<Spanned<String>>>>,
    pub(super) manufacturer: Option<Spanned<String>>,
    pub(super) model: Option<Spanned<String>>,
    pub(super) serial: Option<Spanned<String>>,
    pub(super) system_id: Option<Spanned<String>>,
    pub(super) pair_if_bond_lost: Option<Spanned<bool>>,
    pub(super) clock_set_threshold_secs: Option<Spanned<i64>>,
    pub(super) set_clock: Option<Spanned<bool>>,
    pub(super) delete_after_download: Option<Spanned<bool>>,
    // Serial devices only: port settings (default: the protocol's), the silence alarm and the
    // stream reduction.
    pub(super) baud: Option<Spanned<i64>>,
    pub(super) data_bits: Option<Spanned<i64>>,
    pub(super) parity: Option<Spanned<String>>,
    pub(super) stop_bits: Option<Spanned<i64>>,
    pub(super) flow_control: Option<Spanned<String>>,
    pub(super) silence_alarm_secs: Option<Spanned<i64>>,
    pub(super) reduction: Option<Spanned<RawReduction>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBle {
    pub(super) adapter: Option<Spanned<String>>,
    pub(super) connect_timeout_secs: Option<Spanned<i64>>,
    pub(super) operation_timeout_secs: Option<Spanned<i64>>,
    pub(super) watchdog_silence_secs: Option<Spanned<i64>>,
    pub(super) reconnect_backoff_max_secs: Option<Spanned<i64>>,
    pub(super) idle_disconnect_secs: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawReduction {
    pub(super) mode: Spanned<String>,
    pub(super) window_secs: Option<Spanned<i64>>,
    pub(super) repeat_secs: Option<Spanned<i64>>,
    pub(super) thresholds: Option<Spanned<BTreeMap<String, Spanned<device_drivers::Decimal>>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSimulator {
    pub(super) name: Spanned<String>,
    pub(super) kind: Spanned<String>,
    pub(super) patient: Spanned<String>,
    pub(super) interval_ms: Option<Spanned<i64>>,
    pub(super) count: Option<Spanned<i64>>,
    pub(super) seed: Option<Spanned<i64>>,
}

/// `[ops]`: live status, alarms.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawOps {
    pub(super) runtime_dir: Option<Spanned<String>>,
    pub(super) status_interval_secs: Option<Spanned<i64>>,
    pub(super) cert_expiry_warn_days: Option<Spanned<i64>>,
    pub(super) device_silent_after_secs: Option<Spanned<BTreeMap<String, Spanned<i64>>>>,
}

/// `[fleet]`: status and alarms over MQTT; `[fleet.mqtt]` its own connection.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFleet {
    pub(super) status_interval_secs: Option<Spanned<i64>>,
    pub(super) mqtt: Option<RawMqtt>,
}
