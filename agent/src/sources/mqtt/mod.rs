//! MQTT ingest: Open mHealth data points from other hubs, QoS 1, acknowledged only when durable.
//!
//! One rumqttc connection subscribes every configured `[[devices]] kind = "mqtt"` topic filter
//! with QoS 1 and manual acks. `clean_session = false` (the default) makes the broker keep QoS 1
//! messages for this client id while the agent is stopped or disconnected.
//!
//! # The task
//!
//! One task ([`run`], in `session.rs`) owns rumqttc's event loop and **polls it at all times**:
//! keep-alive pings, SUBACKs, PUBACKs and new PUBLISHes all need the poll, so nothing in that
//! task ever awaits something that needs the poll to make progress (STYLE.md, "Lessons"). The
//! same task does, around one long-lived `poll()` future that is never cancelled while
//! connected:
//!
//! ```text
//! loop select {
//!   event = eventloop.poll()       PUBLISH -> route, decode, hold; SUBACK; CONNACK; error
//!   pipeline has room              hand the oldest held message over (bounded mpsc)
//!   pipeline answered the oldest   AckSequencer: in order, only when safe -> try_ack
//!   shutdown                       stop taking PUBLISHes, ack what was answered, DISCONNECT
//! }
//! requests to rumqttc (PUBACK, SUBSCRIBE, DISCONNECT) only with try_ (never blocks); one that
//! does not fit waits in our own bookkeeping and goes after the next event frees room
//! ```
//!
//! # Back-pressure and bounds
//!
//! Back-pressure is the broker's inflight window: a message is acknowledged only once durable,
//! so a QoS 1 broker has at most its window (mosquitto: `max_inflight_messages`, 20) of
//! unacknowledged messages out to us and sends the next only after a PUBACK. The messages we
//! hold between the poll and the pipeline channel are bounded explicitly by [`MAX_HELD`]
//! messages and [`MAX_HELD_BYTES`] of raw payload.
//!
//! Brokers do not always honour their window (mosquitto 2.0.11 sent one client 1,700
//! unacknowledged messages of a burst, and resends everything unacknowledged at once after a
//! reconnect). When a QoS 1 message arrives over the bound, the source does not take it nor
//! anything after it on that connection (none of them could be acknowledged before it):
//! they are withheld, the broker keeps them, the held messages drain into the pipeline and are
//! acknowledged, and then the source reconnects at once and the broker redelivers the rest.
//! Each such cycle makes at least [`MAX_HELD`] messages durable; memory stays bounded; nothing
//! is lost with a persistent session (with `clean_session = true` the broker discards
//! unacknowledged messages at every disconnect anyway). QoS 0 messages (which a hub may send
//! despite our QoS 1 subscription) have no window and no redelivery: over the bound they are
//! dropped, counted and logged, as the broker itself would under load.
//!
//! # Acknowledgements
//!
//! [`acks::AckSequencer`] (pure) enforces MQTT 3.1.1 §4.6 and the acknowledgement rule: PUBACKs
//! in arrival order, each only after `Outcome::is_safe_to_ack`, never for a message of an
//! earlier connection (packet ids are per connection; the broker may reuse one). When the
//! connection drops, what is owed on it is dropped and counted; the broker redelivers, the
//! pipeline answers `Durable { duplicates }`, and the ack goes out on the new connection. On
//! `StoreFailed` nothing from that message on is acknowledged: once the acks before it are on
//! the wire, the source drops the connection and reconnects with backoff, so the broker
//! redelivers.
//!
//! rumqttc keeps two things across a reconnect that must not survive it here: incoming packets
//! it had read but not yet returned (`state.events`; returned after the next CONNACK they would
//! be acknowledged with stale packet ids) and requests it had not sent (`pending`, e.g. a
//! SUBSCRIBE or a DISCONNECT). The source publishes nothing, so both are cleared whenever a
//! connection ends.
//!
//! # Subscriptions, poison messages, shutdown
//!
//! Every connection subscribes every filter again ([`subscribe::SubscribeRound`]: packets of 8
//! filters, 8 in flight), because the broker may have lost the session; refused filters are
//! logged with counts. The incoming packet limit is `mqtt.max_packet_bytes` (default: MQTT's
//! maximum), so a broker cannot send a packet we cannot read; a payload over [`MAX_PAYLOAD`] is
//! not decoded but kept as a dead letter on its own (logged by size and reason only) and
//! acknowledged, so the messages behind it flow. On shutdown the source takes no new PUBLISH,
//! lets the pipeline answer what it already holds for up to [`ACK_GRACE`], sends those acks and
//! a DISCONNECT, and returns within [`SHUTDOWN_BUDGET`] whatever the broker does. It never
//! returns early on a connection problem: it reconnects with backoff.
//!
//! # Reload and redelivery
//!
//! A reload that changes only the MQTT devices (added, removed, rebound) hands the running task
//! the new table ([`run_rebindable`]): no reconnect, so nothing is redelivered; new filters are
//! subscribed on the running connection. A removed filter stays subscribed at the broker (as
//! after a restart with a persistent session); what arrives on it is a dead letter. A restart
//! or a crash still leaves the broker to redeliver whatever was stored but not acknowledged;
//! each message carries [`crate::pipeline::delivery_digest`] of its topic and payload, and the
//! store keeps one reading per delivery, so a redelivery after a rebind is a duplicate, not the
//! same reading under the new patient.
//!
//! Payloads are never logged; an undecodable one is counted, logged by size and reason, stored
//! sealed in the dead letters, and acked (otherwise the broker would redeliver it forever).

use std::sync::Arc;
use std::time::Duration;

use rumqttc::{MqttOptions, Transport};

use crate::config::MqttConfig;
use crate::pipeline::DeviceContext;

pub mod acks;
pub mod router;
mod session;
pub mod subscribe;

pub use router::{topic_matches, Router};
pub use session::{run, run_rebindable};

/// Largest payload decoded (a data point is a few hundred bytes). A larger one is kept as a
/// dead letter without being decoded.
pub const MAX_PAYLOAD: usize = 64 * 1024;

/// Messages held between the event loop and the pipeline channel, at most. A broker that
/// honours its inflight window (mosquitto's `max_inflight_messages` is 20, EMQX 32) never gets
/// near it; one that does not (mosquitto 2.0.11 was seen sending 1,700 unacknowledged messages
/// to one client in a burst) fills it, and then the rest waits at the broker (module docs).
/// A decoded data point held is about 1 KiB, so this bounds the queue near 4 MiB.
pub const MAX_HELD: usize = 4096;

/// Raw payload bytes held (undecodable and oversized payloads travel whole to the store), at
/// most; a single message is always taken when nothing else is held.
pub const MAX_HELD_BYTES: usize = 8 * 1024 * 1024;

/// How long, after shutdown is requested, the pipeline's answers for messages it already holds
/// are awaited so their PUBACKs go out (the rest are redelivered after the restart).
pub const ACK_GRACE: Duration = Duration::from_millis(500);

/// The source returns at the latest this long after shutdown is requested, whatever the broker
/// does (a clean DISCONNECT if the broker takes it in time, else the connection is dropped).
pub const SHUTDOWN_BUDGET: Duration = Duration::from_millis(900);

/// rumqttc's outgoing inflight setting. We publish nothing; it also numbers our SUBSCRIBE
/// packets (ids 1..=32, then wrap), which [`subscribe::SUBSCRIBES_IN_FLIGHT`] stays below.
pub const CLIENT_INFLIGHT: u16 = 32;

/// Requests (PUBACK, SUBSCRIBE, DISCONNECT) rumqttc's channel holds; more wait in our own
/// bookkeeping.
pub const REQUEST_CAPACITY: usize = 64;

/// Our largest outgoing packet: a SUBSCRIBE of 8 filters (MQTT caps a filter at 64 KiB).
const MAX_OUTGOING_PACKET: usize = 1024 * 1024;

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

/// Builds the rumqttc options (validated values only; rumqttc asserts on some setters).
pub fn options(cfg: &MqttConfig) -> Result<MqttOptions, MqttSetupError> {
    let mut o = MqttOptions::new(cfg.client_id.clone(), cfg.host.clone(), cfg.port);
    o.set_keep_alive(cfg.keep_alive);
    o.set_clean_session(cfg.clean_session);
    o.set_manual_acks(true);
    o.set_inflight(CLIENT_INFLIGHT);
    // Incoming: whatever the configured limit allows (by default all MQTT allows, so no packet
    // a broker may send is a connection error). Outgoing: our SUBSCRIBEs.
    o.set_max_packet_size(cfg.max_packet_bytes, MAX_OUTGOING_PACKET);
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
