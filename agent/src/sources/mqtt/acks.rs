//! Acknowledgement sequencing (pure): which PUBACK may go out next, on which connection.
//!
//! Rules (MQTT 3.1.1 §4.6 and the acknowledgement rule in ARCHITECTURE.md):
//!
//! 1. PUBACKs go out in the order the PUBLISHes arrived on the connection.
//! 2. A message is acknowledged only after the pipeline answered that it is safe
//!    ([`Verdict::Ack`]: durable, a duplicate, a dead letter, a rejected record).
//! 3. A message the pipeline could not make durable ([`Verdict::Withhold`]) is never
//!    acknowledged, and neither is anything behind it (rule 1). The caller reconnects so the
//!    broker redelivers them.
//! 4. Packet ids belong to one connection. After a disconnect the broker may hand the same id to
//!    another message, so every acknowledgement still owed on the old connection is dropped
//!    ([`AckSequencer::disconnected`]); the broker redelivers those messages, the pipeline
//!    recognises them as duplicates, and they are acknowledged on the new connection. A late
//!    answer for a message of an old connection is ignored ([`Answered::Stale`]).
//!
//! The sequencer never sends anything: [`AckSequencer::next`] says what may be sent,
//! [`AckSequencer::pop`] records that it was handed to the client. Each connection is an
//! *epoch*; a [`Ticket`] names a message by epoch and arrival number.

use std::collections::VecDeque;

/// Names one received message: the connection epoch and its arrival number in that epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket {
    epoch: u64,
    seq: u64,
}

/// The pipeline's answer, reduced to what the acknowledgement depends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Safe to acknowledge (`Outcome::is_safe_to_ack`).
    Ack,
    /// Not durable (or no answer will ever come): never acknowledge; redelivery is needed.
    Withhold,
}

/// What [`AckSequencer::answered`] did with an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answered {
    /// Recorded; the message belongs to the current connection.
    Recorded,
    /// The message arrived on an earlier connection (or is unknown): nothing to acknowledge.
    Stale,
}

/// What may happen next, for the oldest message still owed an acknowledgement.
#[derive(Debug, PartialEq, Eq)]
pub enum Next<'a, T> {
    /// Nothing is owed.
    Idle,
    /// Acknowledge this one now (then call [`AckSequencer::pop`]).
    Ack(&'a T),
    /// The oldest message has no answer yet; everything behind it waits too.
    Wait,
    /// The oldest message must not be acknowledged: only a new connection (redelivery) helps.
    Withheld,
}

/// Arrival-ordered acknowledgements for one broker connection after another.
#[derive(Debug)]
pub struct AckSequencer<T> {
    epoch: u64,
    connected: bool,
    /// Arrival number of `queue.front()`.
    front_seq: u64,
    /// Messages of the current epoch still owed an acknowledgement, in arrival order.
    queue: VecDeque<(T, Option<Verdict>)>,
}

impl<T> Default for AckSequencer<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> AckSequencer<T> {
    /// Not connected; nothing owed.
    pub fn new() -> Self {
        Self {
            epoch: 0,
            connected: false,
            front_seq: 0,
            queue: VecDeque::new(),
        }
    }

    /// A new connection begins (a new epoch). Returns how many acknowledgements of the
    /// previous connection were dropped (normally 0: [`Self::disconnected`] dropped them).
    pub fn connected(&mut self) -> usize {
        let dropped = self.disconnected();
        self.connected = true;
        dropped
    }

    /// The connection ended. Every acknowledgement still owed on it is dropped (its packet ids
    /// mean nothing on the next connection); returns how many.
    pub fn disconnected(&mut self) -> usize {
        let dropped = self.queue.len();
        self.queue.clear();
        self.epoch += 1;
        self.front_seq = 0;
        self.connected = false;
        dropped
    }

    pub fn is_connected(&self) -> bool {
        self.connected
    }

    /// A message that needs an acknowledgement arrived. `None` if no connection is current (a
    /// message cannot arrive then; the caller must not acknowledge it).
    pub fn received(&mut self, item: T) -> Option<Ticket> {
        if !self.connected {
            return None;
        }
        let seq = self.front_seq + self.queue.len() as u64;
        self.queue.push_back((item, None));
        Some(Ticket {
            epoch: self.epoch,
            seq,
        })
    }

    /// The pipeline answered for `ticket`.
    pub fn answered(&mut self, ticket: Ticket, verdict: Verdict) -> Answered {
        if ticket.epoch != self.epoch || ticket.seq < self.front_seq {
            return Answered::Stale;
        }
        let Ok(i) = usize::try_from(ticket.seq - self.front_seq) else {
            return Answered::Stale;
        };
        match self.queue.get_mut(i) {
            Some((_, slot)) => {
                // An answer is final; a second one (which the pipeline never sends) is ignored.
                slot.get_or_insert(verdict);
                Answered::Recorded
            }
            None => Answered::Stale,
        }
    }

    /// What may happen next.
    pub fn next(&self) -> Next<'_, T> {
        match self.queue.front() {
            None => Next::Idle,
            Some((_, None)) => Next::Wait,
            Some((item, Some(Verdict::Ack))) => Next::Ack(item),
            Some((_, Some(Verdict::Withhold))) => Next::Withheld,
        }
    }

    /// The acknowledgement [`Self::next`] offered was handed to the client: forget the message.
    /// Returns it, or `None` if the oldest message was not ready to acknowledge.
    pub fn pop(&mut self) -> Option<T> {
        match self.queue.front() {
            Some((_, Some(Verdict::Ack))) => {
                self.front_seq += 1;
                self.queue.pop_front().map(|(item, _)| item)
            }
            _ => None,
        }
    }

    /// Messages of the current connection still owed an acknowledgement.
    pub fn owed(&self) -> usize {
        self.queue.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Acknowledges everything that may go out now; returns the packet ids.
    fn drain(s: &mut AckSequencer<u16>) -> Vec<u16> {
        let mut out = Vec::new();
        while let Next::Ack(&p) = s.next() {
            out.push(p);
            s.pop();
        }
        out
    }

    #[test]
    fn acks_go_out_in_arrival_order_whatever_order_the_answers_come_in() {
        let mut s = AckSequencer::new();
        s.connected();
        let t: Vec<Ticket> = [7, 8, 9].map(|p| s.received(p).unwrap()).to_vec();
        assert_eq!(s.answered(t[2], Verdict::Ack), Answered::Recorded);
        assert_eq!(s.answered(t[1], Verdict::Ack), Answered::Recorded);
        assert_eq!(s.next(), Next::Wait, "8 and 9 wait for 7");
        assert!(drain(&mut s).is_empty());
        s.answered(t[0], Verdict::Ack);
        assert_eq!(drain(&mut s), vec![7, 8, 9]);
        assert_eq!(s.next(), Next::Idle);
    }

    #[test]
    fn nothing_is_acked_before_its_answer() {
        let mut s = AckSequencer::new();
        s.connected();
        let a = s.received(1).unwrap();
        assert_eq!(s.next(), Next::Wait);
        assert_eq!(s.pop(), None, "pop without a ready ack does nothing");
        s.answered(a, Verdict::Ack);
        assert_eq!(s.next(), Next::Ack(&1));
    }

    #[test]
    fn a_withheld_message_blocks_itself_and_everything_behind_it() {
        let mut s = AckSequencer::new();
        s.connected();
        let t: Vec<Ticket> = [1, 2, 3].map(|p| s.received(p).unwrap()).to_vec();
        s.answered(t[0], Verdict::Ack);
        s.answered(t[1], Verdict::Withhold);
        s.answered(t[2], Verdict::Ack);
        assert_eq!(drain(&mut s), vec![1]);
        assert_eq!(s.next(), Next::Withheld);
        assert_eq!(s.pop(), None);
        assert_eq!(s.owed(), 2);
    }

    #[test]
    fn a_reconnect_drops_the_acks_owed_on_the_old_connection_and_ignores_their_late_answers() {
        let mut s = AckSequencer::new();
        s.connected();
        let old = s.received(1).unwrap();
        let old2 = s.received(2).unwrap();
        assert_eq!(s.disconnected(), 2);
        assert_eq!(s.received(3), None, "nothing arrives while disconnected");
        assert_eq!(s.connected(), 0);
        // The broker reassigned packet id 1 to another message on the new connection.
        let new = s.received(1).unwrap();
        assert_ne!(old, new);
        assert_eq!(s.answered(old, Verdict::Ack), Answered::Stale);
        assert_eq!(s.answered(old2, Verdict::Ack), Answered::Stale);
        assert_eq!(s.next(), Next::Wait, "the new message has no answer yet");
        s.answered(new, Verdict::Ack);
        assert_eq!(drain(&mut s), vec![1]);
    }

    #[test]
    fn connecting_twice_without_a_disconnect_still_starts_a_new_epoch() {
        let mut s = AckSequencer::new();
        s.connected();
        let t = s.received(5).unwrap();
        assert_eq!(s.connected(), 1);
        assert_eq!(s.answered(t, Verdict::Ack), Answered::Stale);
        assert_eq!(s.next(), Next::Idle);
    }

    #[test]
    fn answers_after_acks_are_matched_to_the_right_message() {
        // The front moves as acks go out; tickets keep pointing at their own message.
        let mut s = AckSequencer::new();
        s.connected();
        let a = s.received(1).unwrap();
        s.answered(a, Verdict::Ack);
        assert_eq!(drain(&mut s), vec![1]);
        let b = s.received(2).unwrap();
        let c = s.received(3).unwrap();
        assert_eq!(
            s.answered(a, Verdict::Withhold),
            Answered::Stale,
            "already acked"
        );
        s.answered(c, Verdict::Withhold);
        s.answered(b, Verdict::Ack);
        assert_eq!(drain(&mut s), vec![2]);
        assert_eq!(s.next(), Next::Withheld);
    }

    #[derive(Debug, Clone)]
    enum Step {
        Receive,
        /// Answer the n-th (mod pending) unanswered ticket.
        Answer(usize, bool),
        Ack,
        Reconnect,
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            4 => Just(Step::Receive),
            4 => (any::<usize>(), prop::bool::weighted(0.9)).prop_map(|(i, ok)| Step::Answer(i, ok)),
            3 => Just(Step::Ack),
            1 => Just(Step::Reconnect),
        ]
    }

    proptest! {
        /// Whatever the interleaving of arrivals, answers (in any order, some negative) and
        /// reconnects: on each connection the acks sent are a prefix, in arrival order, of the
        /// messages received on that connection, each at most once, each answered `Ack`, and a
        /// message answered `Withhold` is never acked, nor is anything after it.
        #[test]
        fn acks_per_connection_are_an_in_order_prefix_of_safe_messages(
            steps in prop::collection::vec(step(), 0..200)
        ) {
            let mut s: AckSequencer<(u64, u16)> = AckSequencer::new();
            let mut conn = 0u64;
            s.connected();
            let mut received: Vec<Vec<(u16, Option<Verdict>)>> = vec![Vec::new()];
            let mut acked: Vec<Vec<u16>> = vec![Vec::new()];
            let mut unanswered: Vec<(u64, usize, Ticket)> = Vec::new();
            let mut next_pkid = 1u16;
            for st in steps {
                match st {
                    Step::Receive => {
                        let t = s.received((conn, next_pkid)).unwrap();
                        received[conn as usize].push((next_pkid, None));
                        unanswered.push((conn, received[conn as usize].len() - 1, t));
                        next_pkid = next_pkid.wrapping_add(1).max(1);
                    }
                    Step::Answer(i, ok) if !unanswered.is_empty() => {
                        let (c, idx, t) = unanswered.remove(i % unanswered.len());
                        let v = if ok { Verdict::Ack } else { Verdict::Withhold };
                        let r = s.answered(t, v);
                        prop_assert_eq!(r == Answered::Recorded, c == conn, "stale iff old connection");
                        received[c as usize][idx].1 = Some(v);
                    }
                    Step::Answer(..) => {}
                    Step::Ack => {
                        if let Next::Ack(&(c, p)) = s.next() {
                            prop_assert_eq!(c, conn, "an ack for another connection's message");
                            acked[conn as usize].push(p);
                            s.pop();
                        }
                    }
                    Step::Reconnect => {
                        s.disconnected();
                        s.connected();
                        conn += 1;
                        received.push(Vec::new());
                        acked.push(Vec::new());
                    }
                }
            }
            for (c, acks) in acked.iter().enumerate() {
                prop_assert!(acks.len() <= received[c].len());
                let mut blocked = false;
                for (i, (pkid, verdict)) in received[c].iter().enumerate() {
                    if i < acks.len() {
                        prop_assert!(!blocked);
                        prop_assert_eq!(acks[i], *pkid, "arrival order, each once");
                        prop_assert_eq!(*verdict, Some(Verdict::Ack), "acked only when safe");
                    }
                    if *verdict != Some(Verdict::Ack) {
                        blocked = true;
                    }
                }
            }
        }
    }
}
