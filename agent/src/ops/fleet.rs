//! Fleet reporting over MQTT: a retained health message and alarm events, per gateway.
//!
//! Topics (docs/fleet.md has the schemas and the broker ACLs):
//!
//! | topic                          | QoS | retained | what |
//! |--------------------------------|-----|----------|------|
//! | `vitalgate/<gateway-id>/status` | 1  | yes      | [`FleetStatus`] at connect, on change, every `fleet.status_interval_secs`; the last will (and a clean stop) sets `"state": "offline"` |
//! | `vitalgate/<gateway-id>/alarm`  | 1  | no       | [`FleetAlarm`]: one per alarm raised or cleared |
//!
//! "On change" means a change of what a fleet dashboard acts on: the uplink state, the set of
//! alarms and their severities, a device's connection, the clock, the dead-letter and
//! quarantine counts. The pending count changes every few seconds and only goes out with the
//! periodic message.
//!
//! The connection is its own rumqttc client (`<client id>-fleet`, clean session), with its own
//! certificate when `[fleet.mqtt]` names one. The event loop is polled at all times; messages
//! are handed to rumqttc with `try_publish`, never awaited inside the poll loop. Alarms raised
//! while the broker is unreachable wait in a bounded queue ([`ALARM_QUEUE`]); the oldest is
//! dropped (and counted) if it fills. No message carries PHI: device names, states, counts,
//! times and alarm texts only.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use rumqttc::{AsyncClient, Event, LastWill, Packet, QoS};
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;

use super::alarms::{Alarm, AlarmEvent};
use super::health::UplinkState;
use super::status::StatusSnapshot;
use crate::config::FleetConfig;
use crate::ops::episodes::{self, Decision};
use crate::telemetry;

pub const STATUS_SCHEMA: &str = "vitalgate.fleet.status/1";
pub const ALARM_SCHEMA: &str = "vitalgate.fleet.alarm/1";
/// Alarm events kept while the broker is unreachable.
pub const ALARM_QUEUE: usize = 64;

pub fn status_topic(gateway_id: &str) -> String {
    format!("vitalgate/{gateway_id}/status")
}

pub fn alarm_topic(gateway_id: &str) -> String {
    format!("vitalgate/{gateway_id}/alarm")
}

/// The retained health message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FleetStatus {
    pub schema: String,
    pub gateway: String,
    /// `online` or `offline`.
    pub state: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<FleetDetail>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FleetDetail {
    pub version: String,
    pub started_at: DateTime<Utc>,
    pub pending: u64,
    pub dead_letters: u64,
    pub quarantined: u64,
    pub uplink: UplinkState,
    pub last_upload: Option<DateTime<Utc>>,
    pub client_certificate_expires: Option<DateTime<Utc>>,
    pub clock_synchronised: Option<bool>,
    pub disk_used_percent: Option<f64>,
    pub devices: Vec<FleetDevice>,
    pub alarms: Vec<Alarm>,
    /// The audit log's head ([`crate::audit::AuditHead`]): the fleet keeps a copy of it off
    /// the box (the retained message, and whatever the fleet's backend stores), against which
    /// `vitalgate audit verify --anchor SEQ:HASH` checks the log later.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit_head: Option<crate::audit::AuditHead>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetDevice {
    pub name: String,
    pub kind: String,
    pub last_reading: Option<DateTime<Utc>>,
    pub connected: Option<bool>,
}

/// One alarm event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FleetAlarm {
    pub schema: String,
    pub gateway: String,
    pub time: DateTime<Utc>,
    #[serde(flatten)]
    pub event: AlarmEvent,
}

impl FleetStatus {
    pub fn online(s: &StatusSnapshot) -> FleetStatus {
        FleetStatus {
            schema: STATUS_SCHEMA.into(),
            gateway: s.gateway.clone(),
            state: "online".into(),
            time: Some(s.written_at),
            detail: Some(FleetDetail {
                version: s.version.clone(),
                started_at: s.started_at,
                pending: s.outbox.pending,
                dead_letters: s.outbox.dead_letters,
                quarantined: s.outbox.quarantined,
                uplink: s.uplink.state.clone(),
                last_upload: s.uplink.last_upload,
                client_certificate_expires: s.uplink.client_certificate_expires,
                clock_synchronised: s.clock.synchronised,
                disk_used_percent: s.disk.as_ref().map(|d| d.used_percent),
                devices: s
                    .devices
                    .iter()
                    .map(|d| FleetDevice {
                        name: d.name.clone(),
                        kind: d.kind.clone(),
                        last_reading: d.last_reading,
                        connected: d.connected,
                    })
                    .collect(),
                alarms: s.alarms.clone(),
                audit_head: s.audit_head.clone(),
            }),
        }
    }

    pub fn offline(gateway: &str, time: Option<DateTime<Utc>>) -> FleetStatus {
        FleetStatus {
            schema: STATUS_SCHEMA.into(),
            gateway: gateway.into(),
            state: "offline".into(),
            time,
            detail: None,
        }
    }
}

/// What "on change" compares: everything a dashboard acts on, not the pending count.
pub fn digest(s: &StatusSnapshot) -> String {
    let alarms: Vec<String> = s
        .alarms
        .iter()
        .map(|a| {
            format!(
                "{}:{:?}:{}",
                a.kind.as_str(),
                a.severity,
                a.device.as_deref().unwrap_or("")
            )
        })
        .collect();
    let devices: Vec<String> = s
        .devices
        .iter()
        .map(|d| format!("{}:{:?}:{}", d.name, d.connected, d.last_reading.is_some()))
        .collect();
    format!(
        "{}|{}|{}|{:?}|{}|{}",
        s.uplink.state.as_str(),
        alarms.join(","),
        devices.join(","),
        s.clock.synchronised,
        s.outbox.dead_letters,
        s.outbox.quarantined
    )
}

/// Runs the fleet publisher until `shutdown`; on a clean stop it publishes `offline` itself
/// (a last will is only sent when the connection is lost).
pub async fn run(
    cfg: FleetConfig,
    gateway_id: String,
    mut snapshots: watch::Receiver<Option<Arc<StatusSnapshot>>>,
    mut alarms: broadcast::Receiver<AlarmEvent>,
    shutdown: CancellationToken,
) {
    let status_topic = status_topic(&gateway_id);
    let alarm_topic = alarm_topic(&gateway_id);
    let mut opts = match crate::sources::mqtt::options(&cfg.mqtt) {
        Ok(o) => o,
        Err(e) => {
            // Checked at start-up and at reload; a file removed since then lands here.
            tracing::error!(error = %e, "fleet reporting disabled: cannot set up its MQTT connection");
            shutdown.cancelled().await;
            return;
        }
    };
    opts.set_manual_acks(false);
    let will = to_json(&FleetStatus::offline(&gateway_id, None));
    opts.set_last_will(LastWill::new(&status_topic, will, QoS::AtLeastOnce, true));
    let (client, mut eventloop) = AsyncClient::new(opts, 32);
    tracing::info!(host = %cfg.mqtt.host, port = cfg.mqtt.port, topic = %status_topic, "fleet reporting starting");

    let mut connected = false;
    let mut last_digest: Option<String> = None;
    let mut queue: VecDeque<AlarmEvent> = VecDeque::new();
    let mut tick = tokio::time::interval(cfg.status_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut backoff = Duration::from_millis(500);

    let publish_status = |client: &AsyncClient, s: &StatusSnapshot| {
        let body = to_json(&FleetStatus::online(s));
        if let Err(e) = client.try_publish(&status_topic, QoS::AtLeastOnce, true, body) {
            telemetry::FleetPublishFailed {
                topic: &status_topic,
                error: &e,
            }
            .emit();
        }
    };
    let flush_alarms = |client: &AsyncClient, queue: &mut VecDeque<AlarmEvent>| {
        while let Some(ev) = queue.pop_front() {
            #[allow(clippy::disallowed_methods)] // the edge: an alarm goes out now
            let msg = FleetAlarm {
                schema: ALARM_SCHEMA.into(),
                gateway: gateway_id.clone(),
                time: Utc::now(),
                event: ev.clone(),
            };
            if let Err(e) = client.try_publish(&alarm_topic, QoS::AtLeastOnce, false, to_json(&msg))
            {
                telemetry::FleetPublishFailed {
                    topic: &alarm_topic,
                    error: &e,
                }
                .emit();
                queue.push_front(ev);
                break;
            }
        }
    };

    loop {
        tokio::select! {
            ev = eventloop.poll() => match ev {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    connected = true;
                    backoff = Duration::from_millis(500);
                    if episodes::with(|e| e.success("fleet", std::time::Instant::now())).is_some() {
                        tracing::info!("fleet reporting connected again");
                    }
                    if let Some(s) = snapshots.borrow().clone() {
                        publish_status(&client, &s);
                        last_digest = Some(digest(&s));
                    }
                    flush_alarms(&client, &mut queue);
                }
                Ok(_) => {}
                Err(e) => {
                    connected = false;
                    if episodes::with(|ep| ep.failure("fleet", std::time::Instant::now())) == Decision::Log {
                        tracing::warn!(error = %e, "fleet broker connection error; alarms are queued");
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = shutdown.cancelled() => break,
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
            },
            r = snapshots.changed() => {
                if r.is_err() {
                    break;
                }
                let latest = snapshots.borrow_and_update().clone();
                if let (true, Some(s)) = (connected, latest) {
                    let d = digest(&s);
                    if last_digest.as_deref() != Some(d.as_str()) {
                        publish_status(&client, &s);
                        last_digest = Some(d);
                    }
                }
            }
            r = alarms.recv() => match r {
                Ok(ev) => {
                    if queue.len() >= ALARM_QUEUE {
                        queue.pop_front();
                        telemetry::FleetPublishFailed { topic: &alarm_topic, error: &"alarm queue full; oldest alarm event dropped" }.emit();
                    }
                    queue.push_back(ev);
                    if connected {
                        flush_alarms(&client, &mut queue);
                    }
                }
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    telemetry::FleetPublishFailed { topic: &alarm_topic, error: &format!("{n} alarm events missed") }.emit();
                }
                Err(broadcast::error::RecvError::Closed) => break,
            },
            _ = tick.tick() => {
                if let (true, Some(s)) = (connected, snapshots.borrow().clone()) {
                    publish_status(&client, &s);
                    last_digest = Some(digest(&s));
                }
            }
            _ = shutdown.cancelled() => break,
        }
    }
    if connected {
        #[allow(clippy::disallowed_methods)] // the edge
        let body = to_json(&FleetStatus::offline(&gateway_id, Some(Utc::now())));
        let _ = client.try_publish(&status_topic, QoS::AtLeastOnce, true, body);
        // Wait for the broker's PUBACK of `offline`, then DISCONNECT (which also cancels the
        // last will), and poll until the broker closes the connection: rumqttc reports an
        // outgoing packet before it is flushed, so stopping at the event could lose both.
        // Bounded: shutdown must stay fast.
        let drain = async {
            let mut disconnecting = false;
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::PubAck(_))) if !disconnecting => {
                        disconnecting = true;
                        let _ = client.try_disconnect();
                    }
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_millis(1500), drain).await;
    }
}

fn to_json<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::status::tests::sample;

    #[test]
    fn the_status_message_follows_the_schema_and_carries_no_patient_field() {
        let now: DateTime<Utc> = "2026-05-01T12:00:00Z".parse().unwrap();
        let s = sample(now);
        let v = serde_json::to_value(FleetStatus::online(&s)).unwrap();
        assert_eq!(v["schema"], STATUS_SCHEMA);
        assert_eq!(v["state"], "online");
        assert_eq!(v["detail"]["uplink"]["state"], "retrying");
        assert_eq!(v["detail"]["devices"][1]["name"], "cuff-3");
        let text = v.to_string();
        assert!(!text.contains("Patient") && !text.contains("MRN"), "{text}");
        let off = serde_json::to_value(FleetStatus::offline("gw-1", None)).unwrap();
        assert_eq!(
            off,
            serde_json::json!({"schema": STATUS_SCHEMA, "gateway": "gw-1", "state": "offline"})
        );
    }

    #[test]
    fn the_status_message_carries_the_audit_head_and_the_digest_ignores_it() {
        let now = chrono::DateTime::parse_from_rfc3339("2026-12-07T03:00:00Z")
            .unwrap()
            .with_timezone(&chrono::Utc);
        let mut s = crate::ops::status::tests::sample(now);
        let msg = serde_json::to_value(FleetStatus::online(&s)).unwrap();
        assert_eq!(msg["detail"]["audit_head"]["seq"], 41);
        assert_eq!(msg["detail"]["audit_head"]["hash"], "ab".repeat(32));
        let before = digest(&s);
        s.audit_head = Some(crate::audit::AuditHead {
            seq: 42,
            hash: "cd".repeat(32),
        });
        assert_eq!(digest(&s), before);
        s.audit_head = None;
        let msg = serde_json::to_value(FleetStatus::online(&s)).unwrap();
        assert!(msg["detail"].get("audit_head").is_none());
    }

    #[test]
    fn the_digest_ignores_the_pending_count_and_sees_alarms_and_uplink_changes() {
        let now: DateTime<Utc> = "2026-05-01T12:00:00Z".parse().unwrap();
        let a = sample(now);
        let mut b = a.clone();
        b.outbox.pending += 100;
        b.written_at = now;
        assert_eq!(digest(&a), digest(&b));
        b.uplink.state = UplinkState::Ok;
        assert_ne!(digest(&a), digest(&b));
        let mut c = a.clone();
        c.devices[0].connected = Some(false);
        assert_ne!(digest(&a), digest(&c));
    }
}
