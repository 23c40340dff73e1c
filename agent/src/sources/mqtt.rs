//! MQTT ingest: Open mHealth data points from other hubs, QoS 1, acknowledged only when durable.
//!
//! One rumqttc connection subscribes every configured `[[devices]] kind = "mqtt"` topic with
//! QoS 1. Manual acks are on: for each PUBLISH the source sends an [`Ingest`] to the pipeline and
//! queues `(publish, answer)` for the acker task, which awaits the answers *in arrival order*
//! (MQTT 3.1.1 §4.6: PUBACKs in the order PUBLISHes were received) and sends the PUBACK only when
//! the pipeline says the reading is durable (or was kept as a dead letter). If the store fails,
//! nothing is acked and the connection is dropped, so the broker redelivers.
//!
//! `clean_session = false` (the default) makes the broker keep QoS 1 messages for this client id
//! while the agent is stopped.
//!
//! Payloads are never logged; an undecodable one is counted, logged by size and reason, stored
//! sealed in the dead letters, and acked (otherwise the broker would redeliver it forever).

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, Publish, QoS, Transport};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::config::MqttConfig;
use crate::pipeline::{CaptureClock, DeviceContext, Ingest, Outcome};
use crate::reading::Source;
use crate::telemetry;

/// Largest payload accepted from the broker (a data point is a few hundred bytes).
pub const MAX_PAYLOAD: usize = 64 * 1024;

/// Why the MQTT source could not start.
#[derive(Debug, thiserror::Error)]
pub enum MqttSetupError {
    #[error("mqtt: cannot read {path}: {source}")]
    Read {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("mqtt: TLS setup failed: {0}")]
    Tls(String),
}

/// A subscription: topic filter → device.
#[derive(Debug, Clone)]
pub struct Subscription {
    pub filter: String,
    pub device: Arc<DeviceContext>,
}

/// Does an MQTT topic match a filter (`+` one level, `#` the rest)?
pub fn topic_matches(filter: &str, topic: &str) -> bool {
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Builds the rumqttc options (validated values only; rumqttc asserts on some setters).
pub fn options(cfg: &MqttConfig) -> Result<MqttOptions, MqttSetupError> {
    let mut o = MqttOptions::new(cfg.client_id.clone(), cfg.host.clone(), cfg.port);
    o.set_keep_alive(cfg.keep_alive);
    o.set_clean_session(cfg.clean_session);
    o.set_manual_acks(true);
    o.set_inflight(32);
    o.set_max_packet_size(MAX_PAYLOAD + 1024, 16 * 1024);
    if let Some(user) = &cfg.username {
        let password = match &cfg.password_file {
            Some(p) => std::fs::read_to_string(p)
                .map_err(|e| MqttSetupError::Read {
                    path: p.clone(),
                    source: e,
                })?
                .trim_end_matches(['\r', '\n'])
                .to_string(),
            None => String::new(),
        };
        o.set_credentials(user.clone(), password);
    }
    if cfg.tls {
        let ca = cfg
            .ca_file
            .as_deref()
            .ok_or_else(|| MqttSetupError::Tls("mqtts:// needs ca_file".into()))?;
        let client = match (&cfg.client_cert, &cfg.client_key) {
            (Some(c), Some(k)) => Some((c.as_path(), k.as_path())),
            _ => None,
        };
        let config = crate::tls::client_config(ca, client)
            .map_err(|e| MqttSetupError::Tls(e.to_string()))?;
        o.set_transport(Transport::tls_with_config(
            rumqttc::TlsConfiguration::Rustls(Arc::new(config)),
        ));
    }
    Ok(o)
}

/// Runs the MQTT source until shutdown. Reconnects with backoff; never returns early on errors.
pub async fn run(
    cfg: MqttConfig,
    subs: Vec<Subscription>,
    tx: mpsc::Sender<Ingest>,
    shutdown: CancellationToken,
) -> Result<(), MqttSetupError> {
    let opts = options(&cfg)?;
    let (client, mut eventloop) = AsyncClient::new(opts, 64);
    let (ack_tx, ack_rx) = mpsc::channel::<(Publish, oneshot::Receiver<Outcome>)>(256);
    let acker = tokio::spawn(acker(client.clone(), ack_rx, shutdown.clone()));
    tracing::info!(host = %cfg.host, port = cfg.port, tls = cfg.tls, topics = subs.len(), "MQTT source starting");

    let mut backoff = Duration::from_millis(500);
    loop {
        // The watchdog: polling the event loop is the idle wait (it returns at least once per
        // keep-alive); handling an event is work.
        crate::ops::watchdog::beat();
        let event = crate::ops::watchdog::idle(async {
            tokio::select! {
                e = eventloop.poll() => Some(e),
                _ = shutdown.cancelled() => None,
            }
        })
        .await;
        let Some(event) = event else { break };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                backoff = Duration::from_millis(500);
                telemetry::MqttConnected {
                    session_present: ack.session_present,
                }
                .emit();
                // Always (re)subscribe: cheap, and correct if the broker lost the session.
                for s in &subs {
                    if let Err(e) = client.subscribe(s.filter.clone(), QoS::AtLeastOnce).await {
                        tracing::error!(error = %e, "MQTT subscribe request failed");
                    }
                }
            }
            Ok(Event::Incoming(Packet::SubAck(ack))) => {
                let refused = ack
                    .return_codes
                    .iter()
                    .filter(|c| matches!(c, rumqttc::SubscribeReasonCode::Failure))
                    .count();
                if refused > 0 {
                    tracing::error!(
                        refused,
                        "MQTT broker refused a subscription (check its ACLs)"
                    );
                } else {
                    tracing::info!("MQTT subscriptions acknowledged");
                }
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                if !handle_publish(p, &subs, &tx, &ack_tx).await {
                    break;
                }
            }
            Ok(_) => {}
            Err(e) => {
                telemetry::MqttConnectionError {
                    error: &e.to_string(),
                    retry_in_ms: backoff.as_millis() as u64,
                }
                .emit();
                let stop = crate::ops::watchdog::idle(async {
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => false,
                        _ = shutdown.cancelled() => true,
                    }
                })
                .await;
                if stop {
                    break;
                }
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    }
    drop(ack_tx);
    let _ = acker.await;
    let _ = client.try_disconnect();
    Ok(())
}

/// Returns false when the pipeline is gone (shutdown).
async fn handle_publish(
    p: Publish,
    subs: &[Subscription],
    tx: &mpsc::Sender<Ingest>,
    ack_tx: &mpsc::Sender<(Publish, oneshot::Receiver<Outcome>)>,
) -> bool {
    let (done_tx, done_rx) = oneshot::channel();
    // The edge: a message arrives now.
    #[allow(clippy::disallowed_methods)]
    let received_at = Utc::now();
    let device = subs.iter().find(|s| topic_matches(&s.filter, &p.topic));
    let msg = match device {
        None => {
            // Subscribed filters overlap nothing we know: keep it anyway, do not lose data.
            telemetry::PayloadUndecodable {
                source: "mqtt",
                reason: "topic matches no configured device",
                bytes: p.payload.len(),
            }
            .emit();
            Ingest::Undecodable {
                source_label: format!("mqtt:{}", p.topic),
                payload: p.payload.to_vec(),
                reason: "topic matches no configured device".into(),
                done: Some(done_tx),
            }
        }
        Some(sub) => match device_drivers::omh::parse(&p.payload) {
            Ok(dp) => Ingest::Record {
                device: Arc::clone(&sub.device),
                record: dp.record,
                source: Source::Mqtt {
                    topic: p.topic.clone(),
                    source_id: dp.source_id,
                },
                clock: CaptureClock {
                    utc_offset_minutes: dp.utc_offset_minutes,
                    fraction: dp.time_fraction,
                },
                received_at,
                done: Some(done_tx),
            },
            Err(e) => {
                let reason = e.to_string();
                telemetry::PayloadUndecodable {
                    source: &sub.device.name,
                    reason: &reason,
                    bytes: p.payload.len(),
                }
                .emit();
                Ingest::Undecodable {
                    source_label: format!("mqtt:{}", sub.device.name),
                    payload: p.payload.to_vec(),
                    reason,
                    done: Some(done_tx),
                }
            }
        },
    };
    if tx.send(msg).await.is_err() {
        return false;
    }
    ack_tx.send((p, done_rx)).await.is_ok()
}

/// Sends PUBACKs in arrival order, each only after the pipeline's answer.
async fn acker(
    client: AsyncClient,
    mut rx: mpsc::Receiver<(Publish, oneshot::Receiver<Outcome>)>,
    shutdown: CancellationToken,
) {
    while let Some((publish, answer)) = rx.recv().await {
        match answer.await {
            Ok(Outcome::Durable { .. }) | Ok(Outcome::Rejected(_)) => {
                if let Err(e) = client.ack(&publish).await {
                    tracing::warn!(error = %e, "MQTT ack could not be queued");
                }
            }
            Ok(Outcome::StoreFailed) | Err(_) => {
                // Not durable: do not ack. Disconnect so the broker redelivers on reconnect.
                tracing::error!(
                    "reading not durable; MQTT message left unacknowledged for redelivery"
                );
                let _ = client.try_disconnect();
                if shutdown.is_cancelled() {
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_filter_matching() {
        assert!(topic_matches("a/b", "a/b"));
        assert!(!topic_matches("a/b", "a/b/c"));
        assert!(topic_matches("a/+/c", "a/x/c"));
        assert!(!topic_matches("a/+/c", "a/x/y"));
        assert!(topic_matches("a/#", "a/x/y"));
        assert!(topic_matches("#", "anything/at/all"));
        assert!(!topic_matches("a/b/c", "a/b"));
    }
}
