//! The live health of this process: when each device last delivered and connected, and what
//! state the uplink is in. Written only by telemetry events' `emit()` (the one route), read by
//! the status snapshot, the alarms and the fleet publisher.
//!
//! Process-wide, like the telemetry counters: the sources and the uploader need no handle to
//! it, and an embedder running the pipeline in-process gets it for free. It holds device
//! names and reasons, never a patient field or a value.
//!
//! [`changed`] wakes whoever publishes "on change": it fires when the uplink state class or a
//! connection state changes, not for every reading (that would be every few seconds).

use std::collections::BTreeMap;
use std::sync::{Mutex, PoisonError};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

/// What the uplink is doing, as a technician needs to see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum UplinkState {
    /// Nothing sent yet since the agent started.
    Idle,
    /// The last upload was confirmed.
    Ok,
    /// Uploads fail and are retried with backoff; `reason` is the last failure's class.
    Retrying { reason: String },
    /// The server refuses the gateway as a whole; uploads wait for a probe to succeed.
    Paused { reason: String },
    /// Uploads wait by the gateway's own choice: outside `uplink.upload_windows`, or the
    /// day's `uplink.daily_byte_budget` spent. Readings stay pending.
    Held { reason: String },
}

impl UplinkState {
    /// `ok`, `retrying`, ...: for logs and the fleet digest.
    pub fn as_str(&self) -> &'static str {
        match self {
            UplinkState::Idle => "idle",
            UplinkState::Ok => "ok",
            UplinkState::Retrying { .. } => "retrying",
            UplinkState::Paused { .. } => "paused",
            UplinkState::Held { .. } => "held",
        }
    }
}

/// One device's activity.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceActivity {
    /// The last record it delivered (stored, duplicate or rejected).
    pub last_reading: Option<SystemTime>,
    /// The last time its link (BLE connection, serial port, MQTT broker session) came up.
    pub last_connection: Option<SystemTime>,
    /// Whether the link is up now (`None`: the transport does not say).
    pub connected: Option<bool>,
}

/// A copy of the health state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    pub devices: BTreeMap<String, DeviceActivity>,
    /// The MQTT ingest session (shared by every MQTT device).
    pub mqtt: DeviceActivity,
    pub uplink: UplinkState,
    pub uplink_since: Option<SystemTime>,
    pub last_upload: Option<SystemTime>,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            devices: BTreeMap::new(),
            mqtt: DeviceActivity::default(),
            uplink: UplinkState::Idle,
            uplink_since: None,
            last_upload: None,
        }
    }
}

static HEALTH: Mutex<Option<Health>> = Mutex::new(None);
static CHANGED: Notify = Notify::const_new();

fn with<R>(f: impl FnOnce(&mut Health) -> R) -> R {
    let mut slot = HEALTH.lock().unwrap_or_else(PoisonError::into_inner);
    f(slot.get_or_insert_with(Health::default))
}

/// A copy of the current state.
pub fn snapshot() -> Health {
    with(|h| h.clone())
}

/// Completes when the uplink state class or a connection state changed since the call.
pub async fn changed() {
    CHANGED.notified().await;
}

fn now() -> SystemTime {
    // The edge: telemetry records when things happen.
    SystemTime::now()
}

/// A device delivered a record.
pub fn device_delivered(device: &str) {
    let t = now();
    with(|h| {
        h.devices
            .entry(device.to_string())
            .or_default()
            .last_reading = Some(t)
    });
}

/// A device's link came up (`true`) or went down.
pub fn device_link(device: &str, up: bool) {
    let t = now();
    let changed = with(|h| {
        let d = h.devices.entry(device.to_string()).or_default();
        if up {
            d.last_connection = Some(t);
        }
        let changed = d.connected != Some(up);
        d.connected = Some(up);
        changed
    });
    if changed {
        CHANGED.notify_waiters();
    }
}

/// The MQTT ingest session came up or went down.
pub fn mqtt_link(up: bool) {
    let t = now();
    let changed = with(|h| {
        if up {
            h.mqtt.last_connection = Some(t);
        }
        let changed = h.mqtt.connected != Some(up);
        h.mqtt.connected = Some(up);
        changed
    });
    if changed {
        CHANGED.notify_waiters();
    }
}

/// Sets the uplink state; notifies on a change of class (ok → retrying), not of reason.
pub fn uplink(state: UplinkState) {
    let t = now();
    let changed = with(|h| {
        if state == UplinkState::Ok {
            h.last_upload = Some(t);
        }
        let class_changed = h.uplink.as_str() != state.as_str();
        if class_changed {
            h.uplink_since = Some(t);
        }
        h.uplink = state;
        class_changed
    });
    if changed {
        CHANGED.notify_waiters();
    }
}

/// Wakes the publishers (an alarm was raised or cleared).
pub fn notify_change() {
    CHANGED.notify_waiters();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uplink_state_class_changes_are_dated_and_reasons_are_kept() {
        uplink(UplinkState::Ok);
        let a = snapshot();
        assert_eq!(a.uplink, UplinkState::Ok);
        assert!(a.last_upload.is_some());
        uplink(UplinkState::Retrying {
            reason: "timeout".into(),
        });
        let b = snapshot();
        assert_eq!(b.uplink.as_str(), "retrying");
        assert!(b.uplink_since >= a.uplink_since);
        device_delivered("dev-health-test");
        device_link("dev-health-test", true);
        let d = &snapshot().devices["dev-health-test"];
        assert!(d.last_reading.is_some() && d.last_connection.is_some());
        assert_eq!(d.connected, Some(true));
    }
}
