//! The MQTT source task: rumqttc's event loop, polled at all times (see the module docs).

use std::collections::VecDeque;
use std::time::Duration;

use chrono::Utc;
use rumqttc::{
    AsyncClient, ConnectionError, Event, EventLoop, Outgoing, Packet, Publish, QoS, StateError,
    SubscribeFilter, SubscribeReasonCode,
};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::acks::{AckSequencer, Answered, Next, Ticket, Verdict};
use super::router::Router;
use super::subscribe::{SubAckProgress, SubscribeRound};
use super::{
    options, MqttSetupError, Subscription, ACK_GRACE, MAX_HELD, MAX_HELD_BYTES, MAX_PAYLOAD,
    REQUEST_CAPACITY, SHUTDOWN_BUDGET,
};
use crate::config::MqttConfig;
use crate::pipeline::{CaptureClock, Ingest, Outcome};
use crate::reading::Source;
use crate::telemetry;
use crate::uplink::backoff::Backoff;

/// Reconnect delays: 0.5 s doubling to 30 s, with jitter (a fleet of gateways must not
/// reconnect in step after a broker restart).
const RECONNECT: Backoff = Backoff {
    initial: Duration::from_millis(500),
    max: Duration::from_secs(30),
};

/// Runs the MQTT source until `shutdown`. Reconnects with backoff on every connection problem;
/// returns early only if the options cannot be built (checked already by `App::build`).
///
/// # Errors
///
/// [`MqttSetupError`] when the password or TLS files cannot be read.
pub async fn run(
    cfg: MqttConfig,
    subs: Vec<Subscription>,
    tx: mpsc::Sender<Ingest>,
    shutdown: CancellationToken,
) -> Result<(), MqttSetupError> {
    let (_keep, bindings) = watch::channel(subs);
    run_rebindable(cfg, bindings, tx, shutdown).await
}

/// [`run`], with the subscriptions taken from `bindings`: a new value (a reload that adds,
/// removes or rebinds MQTT devices without touching the connection settings) is applied on the
/// running connection. Messages from then on are routed by the new table; new filters are
/// subscribed at once. There is no reconnect, so the broker redelivers nothing: a message
/// already taken keeps the binding it arrived under and is acknowledged as usual (a reconnect
/// would redeliver whatever was stored but not yet acknowledged, and the new binding would
/// file it under another patient, a second time).
///
/// # Errors
///
/// [`MqttSetupError`] when the password or TLS files cannot be read.
pub async fn run_rebindable(
    cfg: MqttConfig,
    mut bindings: watch::Receiver<Vec<Subscription>>,
    tx: mpsc::Sender<Ingest>,
    shutdown: CancellationToken,
) -> Result<(), MqttSetupError> {
    let subs = bindings.borrow_and_update().clone();
    // A dropped sender (no reload will come) ends the watch, not the source.
    let mut rebindable = true;
    let opts = options(&cfg)?;
    let (client, mut eventloop) = AsyncClient::new(opts, REQUEST_CAPACITY);
    tracing::info!(host = %cfg.host, port = cfg.port, tls = cfg.tls, topics = subs.len(), "MQTT source starting");
    let mut s = Session {
        router: Router::new(subs),
        client,
        held: Held {
            tx,
            queue: VecDeque::new(),
            bytes: 0,
            closed: false,
        },
        answers: Answers {
            waiting: VecDeque::new(),
        },
        acks: AckSequencer::new(),
        acks_in_channel: 0,
        round: None,
        stale_subscribes: 0,
        overrun: false,
        store_failed: false,
        reconnects: 0,
        not_durable_streak: 0,
        closing: None,
    };

    // When disconnected: the instant of the next connection attempt.
    let mut reconnect_at: Option<Instant> = None;
    // The watchdog: each turn of the loops below is progress (their branches never await
    // work); this tick makes a turn at least every second while nothing happens, so only a
    // wedged branch stops the beats.
    let mut beat = tokio::time::interval(crate::ops::watchdog::IDLE_BEAT);
    beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        crate::ops::watchdog::beat();
        s.flush_requests();
        if s.closing_done() {
            break;
        }

        if let Some(at) = reconnect_at {
            // Backing off: no connection, so nothing to poll; keep feeding the pipeline.
            tokio::select! {
                _ = tokio::time::sleep_until(at) => reconnect_at = None,
                _ = beat.tick() => {}
                r = bindings.changed(), if rebindable => match r {
                    Ok(()) => s.rebind(bindings.borrow_and_update().clone()),
                    Err(_) => rebindable = false,
                },
                r = s.held.feed(), if s.held.has_work() => s.held.fed(r),
                _ = shutdown.cancelled() => break,
            }
            continue;
        }

        // One poll future, kept alive across the side work below: a rumqttc poll cancelled
        // half-way can lose a request it had taken from the channel, so it is only ever
        // dropped when the connection is being thrown away (forced reconnect, shutdown).
        let step = {
            let poll = eventloop.poll();
            tokio::pin!(poll);
            loop {
                crate::ops::watchdog::beat();
                // While closing: first the end of the answers' grace, then the hard deadline.
                let timer = s.closing.as_ref().map(|c| {
                    if c.disconnect_queued {
                        c.deadline
                    } else {
                        c.answers_until.min(c.deadline)
                    }
                });
                tokio::select! {
                    ev = &mut poll => break Step::Event(ev),
                    r = s.held.feed(), if s.held.has_work() => s.held.fed(r),
                    a = s.answers.next(), if s.answers.has_work() => {
                        s.answered(a);
                        s.flush_requests();
                        if let Some(why) = s.must_reconnect() {
                            break Step::Reconnect(why);
                        }
                    }
                    _ = shutdown.cancelled(), if s.closing.is_none() => {
                        if !s.acks.is_connected() {
                            // Not connected (connecting): nothing to acknowledge or close.
                            break Step::Stop;
                        }
                        s.start_closing();
                    }
                    // Past the grace, flush_requests below queues the DISCONNECT; past the
                    // deadline, closing_done() ends the task.
                    _ = sleep_until_opt(timer), if timer.is_some() => {}
                    _ = beat.tick() => {}
                    r = bindings.changed(), if rebindable => match r {
                        Ok(()) => s.rebind(bindings.borrow_and_update().clone()),
                        Err(_) => rebindable = false,
                    },
                }
                s.flush_requests();
                if s.closing_done() {
                    break Step::Stop;
                }
            }
        };

        match step {
            Step::Stop => break,
            Step::Reconnect(why) => {
                // Throw the connection away: rumqttc's clean() drops the socket and the PUBACKs
                // still in its channel; the broker redelivers everything unacknowledged.
                eventloop.clean();
                forget_connection(&mut eventloop);
                let delay = s.connection_lost(why);
                reconnect_at = Some(Instant::now() + delay);
            }
            Step::Event(Ok(event)) => {
                s.on_event(event);
                s.flush_requests();
                if let Some(why) = s.must_reconnect() {
                    eventloop.clean();
                    forget_connection(&mut eventloop);
                    let delay = s.connection_lost(why);
                    reconnect_at = Some(Instant::now() + delay);
                }
            }
            Step::Event(Err(e)) => {
                // rumqttc has dropped the connection (and cleaned its state, if it had one).
                forget_connection(&mut eventloop);
                if s.closing.is_some() {
                    break;
                }
                let delay = s.connection_lost(Lost::Error(&e));
                reconnect_at = Some(Instant::now() + delay);
            }
        }
    }
    tracing::info!(
        acks_owed = s.acks.owed(),
        "MQTT source stopped (anything not acknowledged is redelivered by the broker)"
    );
    Ok(())
}

enum Step {
    Event(Result<Event, ConnectionError>),
    Reconnect(Lost<'static>),
    Stop,
}

/// Why a connection is being given up.
enum Lost<'a> {
    Error(&'a ConnectionError),
    NotDurable,
    WindowOverrun,
}

/// Drops what rumqttc would otherwise carry from a dead connection into the next one: incoming
/// packets read but not yet returned (they would come back after the next CONNACK, and their
/// packet ids mean nothing there) and unsent requests (SUBSCRIBE, DISCONNECT; every connection
/// subscribes afresh and we publish nothing).
fn forget_connection(eventloop: &mut EventLoop) {
    eventloop.state.events.clear();
    eventloop.pending.clear();
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

struct Session {
    router: Router,
    client: AsyncClient,
    held: Held,
    answers: Answers,
    /// The ack owed for each QoS 1 message of the current connection. The `Publish` kept is
    /// only its header (packet id, QoS): topic and payload are taken out when it arrives.
    acks: AckSequencer<Publish>,
    /// PUBACKs handed to rumqttc's channel and not yet seen written (`Outgoing::PubAck`).
    acks_in_channel: usize,
    /// This connection's subscriptions (None until CONNACK).
    round: Option<SubscribeRound>,
    /// SUBSCRIBEs of a round a rebind replaced, handed to rumqttc but not yet seen written:
    /// their `Outgoing::Subscribe` events are not the current round's.
    stale_subscribes: usize,
    /// A QoS 1 message arrived with no room to hold it (the broker ignores its window): from
    /// it on, nothing more is taken on this connection.
    overrun: bool,
    /// The pipeline did not make a message of this connection durable.
    store_failed: bool,
    /// Consecutive connection attempts without a CONNACK (the backoff exponent).
    reconnects: u32,
    /// Consecutive reconnects forced by a store failure with no ack sent in between (keeps a
    /// failing disk from a reconnect loop at the initial delay).
    not_durable_streak: u32,
    closing: Option<Closing>,
}

/// Shutdown in progress.
struct Closing {
    /// Stop waiting for the pipeline's answers.
    answers_until: Instant,
    /// Return, whatever the broker does.
    deadline: Instant,
    disconnect_queued: bool,
    /// The DISCONNECT was written (every PUBACK queued before it too).
    disconnected: bool,
}

impl Session {
    fn on_event(&mut self, event: Event) {
        match event {
            Event::Incoming(Packet::ConnAck(ack)) => {
                let dropped = self.acks.connected();
                debug_assert_eq!(dropped, 0, "disconnected() ran first");
                self.acks_in_channel = 0;
                if self.not_durable_streak == 0 {
                    self.reconnects = 0;
                }
                self.round = Some(SubscribeRound::new(self.router.subscriptions().len()));
                telemetry::MqttConnected {
                    session_present: ack.session_present,
                }
                .emit();
            }
            Event::Incoming(Packet::Publish(p)) => self.on_publish(p),
            Event::Incoming(Packet::SubAck(ack)) => {
                let granted: Vec<bool> = ack
                    .return_codes
                    .iter()
                    .map(|c| matches!(c, SubscribeReasonCode::Success(_)))
                    .collect();
                let Some(round) = self.round.as_mut() else {
                    return;
                };
                if let SubAckProgress::Complete(summary) = round.acked(ack.pkid, &granted) {
                    let subs = self.router.subscriptions();
                    let refused: Vec<&str> = summary
                        .refused
                        .iter()
                        .filter_map(|&i| subs.get(i).map(|s| s.device.name.as_str()))
                        .collect();
                    telemetry::MqttSubscriptionsAcknowledged {
                        granted: summary.granted,
                        refused: &refused,
                    }
                    .emit();
                }
            }
            Event::Outgoing(Outgoing::Subscribe(pkid)) => {
                if self.stale_subscribes > 0 {
                    self.stale_subscribes -= 1;
                } else if let Some(round) = self.round.as_mut() {
                    round.sent(pkid);
                }
            }
            // A QoS 2 message's acknowledgement is its PUBREC (we subscribe with QoS 1, so a
            // broker should never send QoS 2; counted the same way if one does).
            Event::Outgoing(Outgoing::PubAck(pkid) | Outgoing::PubRec(pkid)) => {
                self.acks_in_channel = self.acks_in_channel.saturating_sub(1);
                self.not_durable_streak = 0;
                telemetry::MqttAckSent { pkid }.emit();
            }
            Event::Outgoing(Outgoing::Disconnect) => {
                if let Some(c) = self.closing.as_mut() {
                    c.disconnected = true;
                }
            }
            _ => {}
        }
    }

    /// A reload changed the MQTT devices (not the connection): route by the new table from now
    /// on and subscribe the filters it adds on this connection. A filter it drops stays
    /// subscribed at the broker until the session ends (as after a restart with a persistent
    /// session); what arrives on it is kept as a dead letter ("matches no configured device").
    fn rebind(&mut self, subs: Vec<Subscription>) {
        let old: std::collections::HashSet<&str> = self
            .router
            .subscriptions()
            .iter()
            .map(|s| s.filter.as_str())
            .collect();
        let added: Vec<usize> = subs
            .iter()
            .enumerate()
            .filter(|(_, s)| !old.contains(s.filter.as_str()))
            .map(|(i, _)| i)
            .collect();
        let round_complete = self.round.as_ref().is_none_or(SubscribeRound::is_complete);
        let new_filters = added.len();
        self.router = Router::new(subs);
        if self.round.is_some() && self.closing.is_none() {
            self.stale_subscribes += self.round.as_ref().map_or(0, SubscribeRound::handed_unsent);
            self.round = Some(if round_complete {
                SubscribeRound::of(added)
            } else {
                // The connection's own round was under way, with indexes into the old table:
                // subscribe the whole new table (SUBACKs of the old round are ignored).
                SubscribeRound::new(self.router.subscriptions().len())
            });
        }
        telemetry::MqttRebound {
            topics: self.router.subscriptions().len(),
            new_filters,
        }
        .emit();
        self.flush_requests();
    }

    /// A PUBLISH: route it, decode it, hold it for the pipeline, owe it an ack (QoS 1).
    fn on_publish(&mut self, mut p: Publish) {
        if self.closing.is_some() || self.held.closed {
            // Not taken: not acknowledged, so the broker delivers it again next time.
            return;
        }
        let payload = std::mem::take(&mut p.payload);
        let topic = std::mem::take(&mut p.topic);
        if p.qos == QoS::AtMostOnce && !self.held.has_room(payload.len()) {
            telemetry::MqttQos0Dropped {
                bytes: payload.len(),
            }
            .emit();
            return;
        }
        if p.qos != QoS::AtMostOnce && (self.overrun || !self.held.has_room(payload.len())) {
            // Over the bound: the broker sends beyond its inflight window. Do not take this
            // message, nor any after it on this connection (none of them could be acknowledged
            // before this one): they are withheld, and once everything before them is durable
            // and acknowledged the source reconnects and the broker redelivers them.
            if !self.overrun {
                self.overrun = true;
                telemetry::MqttWindowOverrun {
                    held: self.held.queue.len(),
                    held_bytes: self.held.bytes,
                    owed: self.acks.owed(),
                }
                .emit();
            }
            if let Some(ticket) = self.acks.received(p) {
                self.acks.answered(ticket, Verdict::Withhold);
            }
            return;
        }
        let done = match p.qos {
            QoS::AtMostOnce => None,
            QoS::AtLeastOnce | QoS::ExactlyOnce => {
                let Some(ticket) = self.acks.received(p) else {
                    return;
                };
                let (done, answer) = oneshot::channel();
                self.answers.waiting.push_back((ticket, answer));
                Some(done)
            }
        };
        let msg = ingest(&self.router, &topic, &payload, done);
        self.held.push(msg);
    }

    /// Records the pipeline's answer for the oldest waiting message, and any further answers
    /// already there.
    fn answered(&mut self, first: (Ticket, Verdict)) {
        let mut next = Some(first);
        while let Some((ticket, verdict)) = next {
            if self.acks.answered(ticket, verdict) == Answered::Recorded
                && verdict == Verdict::Withhold
            {
                self.store_failed = true;
            }
            next = self.answers.try_next();
        }
    }

    /// Hands every PUBACK that may go out, then the next SUBSCRIBEs, to rumqttc without ever
    /// waiting: what does not fit goes after the next event (each request rumqttc takes from
    /// its channel completes a poll).
    fn flush_requests(&mut self) {
        if !self.acks.is_connected() {
            return;
        }
        while let Next::Ack(p) = self.acks.next() {
            if self.client.try_ack(p).is_err() {
                break;
            }
            self.acks.pop();
            self.acks_in_channel += 1;
        }
        if let Some(c) = self.closing.as_mut() {
            let nothing_more = !matches!(self.acks.next(), Next::Ack(_) | Next::Wait)
                || Instant::now() >= c.answers_until;
            if nothing_more && !c.disconnect_queued && self.client.try_disconnect().is_ok() {
                c.disconnect_queued = true;
            }
            return;
        }
        let Some(round) = self.round.as_mut() else {
            return;
        };
        let subs = self.router.subscriptions();
        while let Some(chunk) = round.next_chunk() {
            let filters: Vec<SubscribeFilter> = chunk
                .iter()
                .filter_map(|&i| subs.get(i))
                .map(|s| SubscribeFilter::new(s.filter.clone(), QoS::AtLeastOnce))
                .collect();
            if self.client.try_subscribe_many(filters).is_err() {
                break;
            }
            round.handed();
        }
    }

    /// Should the connection be dropped so that the broker redelivers?
    fn must_reconnect(&mut self) -> Option<Lost<'static>> {
        if self.closing.is_some() {
            return None;
        }
        // Withheld at the head: nothing more can be acknowledged on this connection. Wait
        // until the acks before it are written, so they are not redelivered needlessly.
        if self.acks.next() == Next::Withheld && self.acks_in_channel == 0 {
            return Some(if self.store_failed {
                Lost::NotDurable
            } else {
                Lost::WindowOverrun
            });
        }
        None
    }

    /// The connection is gone (or being dropped): forget what was owed on it, count, log, and
    /// say how long to wait before the next attempt.
    fn connection_lost(&mut self, why: Lost<'_>) -> Duration {
        // Owed on the connection, plus handed to rumqttc's channel but not seen written: its
        // clean() throws those PUBACKs away (their packet ids mean nothing on the next one).
        let dropped = self.acks.disconnected() + self.acks_in_channel;
        self.answers.waiting.clear();
        self.acks_in_channel = 0;
        self.round = None;
        self.stale_subscribes = 0;
        self.overrun = false;
        self.store_failed = false;
        let delay = match why {
            Lost::NotDurable => {
                self.not_durable_streak += 1;
                RECONNECT.delay(self.not_durable_streak - 1, None, &mut rand::rng())
            }
            // Everything taken is durable and acknowledged: come back for the rest at once.
            Lost::WindowOverrun => Duration::ZERO,
            Lost::Error(_) => {
                self.reconnects = self.reconnects.saturating_add(1);
                RECONNECT.delay(self.reconnects - 1, None, &mut rand::rng())
            }
        };
        let retry_in_ms = delay.as_millis() as u64;
        match why {
            Lost::Error(e) => telemetry::MqttConnectionError {
                error: e,
                retry_in_ms,
                hint: hint(e),
            }
            .emit(),
            Lost::NotDurable => telemetry::MqttNotDurable { retry_in_ms }.emit(),
            // Logged when it began (MqttWindowOverrun); the withheld messages are counted below.
            Lost::WindowOverrun => {}
        }
        if dropped > 0 {
            telemetry::MqttAcksDropped { count: dropped }.emit();
        }
        delay
    }

    /// Shutdown requested while connected: take no new PUBLISH, give back what was not handed
    /// to the pipeline (its answer never comes, so no ack waits for it), and let the answers
    /// for what the pipeline holds arrive for a short while.
    fn start_closing(&mut self) {
        let now = Instant::now();
        self.held.drop_all();
        self.closing = Some(Closing {
            answers_until: now + ACK_GRACE,
            deadline: now + SHUTDOWN_BUDGET,
            disconnect_queued: false,
            disconnected: false,
        });
    }

    fn closing_done(&self) -> bool {
        self.closing
            .as_ref()
            .is_some_and(|c| c.disconnected || Instant::now() >= c.deadline)
    }
}

/// A hint for a technician, by error type.
fn hint(e: &ConnectionError) -> Option<&'static str> {
    match e {
        ConnectionError::MqttState(StateError::Deserialization(
            rumqttc::mqttbytes::Error::PayloadSizeLimitExceeded(_),
        )) => Some(
            "the broker sent a packet larger than mqtt.max_packet_bytes; it redelivers it first on every reconnect: raise mqtt.max_packet_bytes, or remove the message at the broker and set its message_size_limit",
        ),
        ConnectionError::ConnectionRefused(_) => {
            Some("the broker refused the connection: check mqtt.client_id, username and password")
        }
        _ => None,
    }
}

/// Raw payload bytes a held message carries to the store (a decoded record is small).
fn raw_bytes(msg: &Ingest) -> usize {
    match msg {
        Ingest::Undecodable { payload, .. } => payload.len(),
        Ingest::Record { .. } => 0,
    }
}

/// Messages taken from the broker, waiting for room in the pipeline channel (bounded by
/// [`MAX_HELD`] and [`MAX_HELD_BYTES`]).
struct Held {
    tx: mpsc::Sender<Ingest>,
    queue: VecDeque<(Ingest, usize)>,
    bytes: usize,
    /// The pipeline is gone (shutdown is coming): nothing more is taken.
    closed: bool,
}

impl Held {
    fn has_work(&self) -> bool {
        !self.queue.is_empty() && !self.closed
    }

    fn has_room(&self, bytes: usize) -> bool {
        self.queue.is_empty()
            || (self.queue.len() < MAX_HELD && self.bytes.saturating_add(bytes) <= MAX_HELD_BYTES)
    }

    /// Hands `msg` to the pipeline now if nothing is queued before it and there is room.
    fn push(&mut self, msg: Ingest) {
        let bytes = raw_bytes(&msg);
        if self.queue.is_empty() {
            match self.tx.try_send(msg) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(msg)) => {
                    self.queue.push_back((msg, bytes));
                    self.bytes += bytes;
                }
                Err(mpsc::error::TrySendError::Closed(_)) => self.closed = true,
            }
        } else {
            self.queue.push_back((msg, bytes));
            self.bytes += bytes;
        }
    }

    /// Waits for room in the pipeline channel, then hands over the oldest held messages.
    async fn feed(&mut self) -> Result<(), ()> {
        let permit = self.tx.reserve().await.map_err(|_| ())?;
        if let Some((msg, bytes)) = self.queue.pop_front() {
            self.bytes -= bytes;
            permit.send(msg);
        }
        while let Some((msg, bytes)) = self.queue.pop_front() {
            match self.tx.try_send(msg) {
                Ok(()) => self.bytes -= bytes,
                Err(e) => {
                    self.queue.push_front((e.into_inner(), bytes));
                    break;
                }
            }
        }
        Ok(())
    }

    fn fed(&mut self, r: Result<(), ()>) {
        if r.is_err() {
            self.closed = true;
            self.drop_all();
        }
    }

    /// Gives up every held message: none is acknowledged (their answers never come).
    fn drop_all(&mut self) {
        self.queue.clear();
        self.bytes = 0;
    }
}

/// The pipeline's answers still awaited, in arrival order.
struct Answers {
    waiting: VecDeque<(Ticket, oneshot::Receiver<Outcome>)>,
}

impl Answers {
    fn has_work(&self) -> bool {
        !self.waiting.is_empty()
    }

    /// Waits for the oldest answer. Acks go out in arrival order, so the oldest is the only one
    /// worth waiting for; the pipeline answers in order anyway. Cancel-safe (the receiver stays
    /// queued until its answer is in).
    async fn next(&mut self) -> (Ticket, Verdict) {
        let Some((ticket, answer)) = self.waiting.front_mut() else {
            return std::future::pending().await;
        };
        let ticket = *ticket;
        let verdict = verdict(answer.await);
        self.waiting.pop_front();
        (ticket, verdict)
    }

    /// The oldest answer if it is already in.
    fn try_next(&mut self) -> Option<(Ticket, Verdict)> {
        let (ticket, answer) = self.waiting.front_mut()?;
        let verdict = match answer.try_recv() {
            Err(oneshot::error::TryRecvError::Empty) => return None,
            Ok(outcome) => verdict(Ok(outcome)),
            Err(oneshot::error::TryRecvError::Closed) => Verdict::Withhold,
        };
        let ticket = *ticket;
        self.waiting.pop_front();
        Some((ticket, verdict))
    }
}

/// No answer at all (the pipeline dropped the request) is no permission to acknowledge.
fn verdict(answer: Result<Outcome, oneshot::error::RecvError>) -> Verdict {
    match answer {
        Ok(outcome) if outcome.is_safe_to_ack() => Verdict::Ack,
        _ => Verdict::Withhold,
    }
}

/// Routes and decodes one payload into a pipeline request.
fn ingest(
    router: &Router,
    topic: &str,
    payload: &[u8],
    done: Option<oneshot::Sender<Outcome>>,
) -> Ingest {
    // The edge: a message arrives now.
    #[allow(clippy::disallowed_methods)]
    let received_at = Utc::now();
    let Some(sub) = router.route(topic) else {
        // Subscribed filters overlap nothing we know: keep it anyway, do not lose data.
        let reason = "topic matches no configured device";
        telemetry::PayloadUndecodable {
            source: "mqtt",
            reason,
            bytes: payload.len(),
        }
        .emit();
        return Ingest::Undecodable {
            source_label: format!("mqtt:{topic}"),
            payload: payload.to_vec(),
            reason: reason.into(),
            done,
        };
    };
    if payload.len() > MAX_PAYLOAD {
        telemetry::MqttPayloadOversized {
            device: &sub.device.name,
            bytes: payload.len(),
            limit: MAX_PAYLOAD,
        }
        .emit();
        return Ingest::Undecodable {
            source_label: format!("mqtt:{}", sub.device.name),
            reason: format!(
                "oversized: {} bytes, more than the {MAX_PAYLOAD}-byte limit for a data point; not decoded",
                payload.len()
            ),
            payload: payload.to_vec(),
            done,
        };
    }
    match device_drivers::omh::parse(payload) {
        Ok(dp) => Ingest::Record {
            device: std::sync::Arc::clone(&sub.device),
            record: dp.record,
            source: Source::Mqtt {
                topic: topic.to_string(),
                source_id: dp.source_id,
            },
            clock: CaptureClock {
                utc_offset_minutes: dp.utc_offset_minutes,
                fraction: dp.time_fraction,
                ..CaptureClock::default()
            },
            received_at,
            delivery: Some(crate::pipeline::delivery_digest(topic, payload)),
            done,
        },
        Err(e) => {
            let reason = e.to_string();
            telemetry::PayloadUndecodable {
                source: &sub.device.name,
                reason: &reason,
                bytes: payload.len(),
            }
            .emit();
            Ingest::Undecodable {
                source_label: format!("mqtt:{}", sub.device.name),
                payload: payload.to_vec(),
                reason,
                done,
            }
        }
    }
}
