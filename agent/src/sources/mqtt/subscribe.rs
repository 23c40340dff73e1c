//! Subscribing every configured filter on a connection (pure bookkeeping).
//!
//! The filters go out in SUBSCRIBE packets of at most [`FILTERS_PER_SUBSCRIBE`] filters (the
//! smallest per-packet limit among common brokers: AWS IoT Core accepts 8), with at most
//! [`SUBSCRIBES_IN_FLIGHT`] packets awaiting their SUBACK. The second bound keeps packet ids
//! unique among outstanding packets (rumqttc numbers them 1..=inflight, 32 here, then wraps)
//! and keeps the request channel from filling with SUBSCRIBEs while acks wait behind them.
//!
//! A [`SubscribeRound`] is one connection's worth: created at CONNACK (the broker may have lost
//! the session, so every connection subscribes again), fed with the packet ids rumqttc assigned
//! (`Outgoing::Subscribe(pkid)`, in the order the packets were handed to it) and the SUBACKs.
//! When the last SUBACK is in, it reports how many filters were granted and which were refused.

use std::collections::{HashMap, VecDeque};

/// Filters per SUBSCRIBE packet.
pub const FILTERS_PER_SUBSCRIBE: usize = 8;

/// SUBSCRIBE packets awaiting a SUBACK at once. Must stay below the client's outgoing inflight
/// setting ([`super::CLIENT_INFLIGHT`]) so that packet ids do not repeat.
pub const SUBSCRIBES_IN_FLIGHT: usize = 8;

/// What a SUBACK did to the round.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubAckProgress {
    /// A packet id this round is not waiting for (an earlier connection's): ignored.
    Unknown,
    /// Recorded; more SUBACKs to come.
    Partial,
    /// The last SUBACK: every filter has an answer.
    Complete(Summary),
}

/// The outcome of a round.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub granted: usize,
    /// Indexes (into the subscription list) of the filters the broker refused.
    pub refused: Vec<usize>,
}

/// Subscribing every filter once on one connection (or, after a reload added devices, the
/// new filters on the running connection).
#[derive(Debug)]
pub struct SubscribeRound {
    /// The subscription-list indexes of each SUBSCRIBE packet.
    chunks: Vec<Vec<usize>>,
    /// Next chunk to hand to the client.
    next: usize,
    /// Chunks handed to the client whose packet id is not known yet, in order.
    handed: VecDeque<usize>,
    /// Packet id → chunk, for SUBSCRIBEs on the wire.
    on_wire: HashMap<u16, usize>,
    answered: usize,
    granted: usize,
    refused: Vec<usize>,
}

impl SubscribeRound {
    /// A round for `filters` filters (indexes `0..filters` of the subscription list).
    pub fn new(filters: usize) -> SubscribeRound {
        SubscribeRound::of((0..filters).collect())
    }

    /// A round for these indexes of the subscription list, in this order.
    pub fn of(indexes: Vec<usize>) -> SubscribeRound {
        let chunks = indexes
            .chunks(FILTERS_PER_SUBSCRIBE)
            .map(<[usize]>::to_vec)
            .collect();
        SubscribeRound {
            chunks,
            next: 0,
            handed: VecDeque::new(),
            on_wire: HashMap::new(),
            answered: 0,
            granted: 0,
            refused: Vec::new(),
        }
    }

    /// The filters of the next SUBSCRIBE to hand to the client, if the window allows one.
    pub fn next_chunk(&self) -> Option<&[usize]> {
        if self.handed.len() + self.on_wire.len() >= SUBSCRIBES_IN_FLIGHT {
            return None;
        }
        self.chunks.get(self.next).map(Vec::as_slice)
    }

    /// The chunk [`Self::next_chunk`] offered was handed to the client.
    pub fn handed(&mut self) {
        if self.next < self.chunks.len() {
            self.handed.push_back(self.next);
            self.next += 1;
        }
    }

    /// rumqttc sent a SUBSCRIBE with this packet id (they go out in the order handed).
    pub fn sent(&mut self, pkid: u16) {
        if let Some(chunk) = self.handed.pop_front() {
            self.on_wire.insert(pkid, chunk);
        }
    }

    /// A SUBACK: `granted[i]` for the i-th filter of that SUBSCRIBE. A missing return code
    /// counts as refused.
    pub fn acked(&mut self, pkid: u16, granted: &[bool]) -> SubAckProgress {
        let Some(chunk) = self.on_wire.remove(&pkid) else {
            return SubAckProgress::Unknown;
        };
        let Some(indexes) = self.chunks.get(chunk) else {
            return SubAckProgress::Unknown;
        };
        for (k, &index) in indexes.iter().enumerate() {
            if granted.get(k).copied().unwrap_or(false) {
                self.granted += 1;
            } else {
                self.refused.push(index);
            }
        }
        self.answered += 1;
        if self.is_complete() {
            SubAckProgress::Complete(Summary {
                granted: self.granted,
                refused: self.refused.clone(),
            })
        } else {
            SubAckProgress::Partial
        }
    }

    /// SUBSCRIBEs handed to the client whose packet id has not been seen yet: if the round is
    /// replaced now, that many `Outgoing::Subscribe` events still belong to it.
    pub fn handed_unsent(&self) -> usize {
        self.handed.len()
    }

    /// Every SUBSCRIBE of the round has its SUBACK.
    pub fn is_complete(&self) -> bool {
        self.answered == self.chunks.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Plays a well-behaved client and broker: hand, send with ids 1, 2, …, ack in order.
    fn run_round(filters: usize, refuse: impl Fn(usize) -> bool) -> (Summary, usize) {
        let mut r = SubscribeRound::new(filters);
        let mut pkid = 0u16;
        let mut wire: VecDeque<(u16, Vec<usize>)> = VecDeque::new();
        let mut packets = 0;
        let mut max_outstanding = 0;
        loop {
            while let Some(chunk) = r.next_chunk().map(<[usize]>::to_vec) {
                r.handed();
                pkid = pkid % 32 + 1;
                r.sent(pkid);
                wire.push_back((pkid, chunk));
                packets += 1;
                max_outstanding = max_outstanding.max(wire.len());
            }
            let Some((id, chunk)) = wire.pop_front() else {
                panic!("round stalled");
            };
            let codes: Vec<bool> = chunk.iter().map(|&i| !refuse(i)).collect();
            if let SubAckProgress::Complete(s) = r.acked(id, &codes) {
                assert!(max_outstanding <= SUBSCRIBES_IN_FLIGHT);
                return (s, packets);
            }
        }
    }

    #[test]
    fn a_thousand_filters_go_out_in_packets_of_eight_with_a_bounded_window() {
        let (s, packets) = run_round(1000, |_| false);
        assert_eq!(packets, 125);
        assert_eq!(s.granted, 1000);
        assert!(s.refused.is_empty());
    }

    #[test]
    fn refused_filters_are_reported_by_index() {
        let (s, _) = run_round(20, |i| i == 3 || i == 17);
        assert_eq!(s.granted, 18);
        assert_eq!(s.refused, vec![3, 17]);
    }

    #[test]
    fn a_single_filter_is_one_packet_and_a_short_suback_counts_as_refused() {
        let mut r = SubscribeRound::new(3);
        assert_eq!(r.next_chunk(), Some(&[0, 1, 2][..]));
        r.handed();
        assert_eq!(r.next_chunk(), None, "nothing left");
        r.sent(9);
        assert_eq!(
            r.acked(9, &[true]),
            SubAckProgress::Complete(Summary {
                granted: 1,
                refused: vec![1, 2]
            })
        );
    }

    #[test]
    fn a_suback_for_an_unknown_packet_id_is_ignored() {
        let mut r = SubscribeRound::new(1);
        r.handed();
        r.sent(4);
        assert_eq!(r.acked(5, &[true]), SubAckProgress::Unknown);
        assert!(!r.is_complete());
        assert!(matches!(r.acked(4, &[true]), SubAckProgress::Complete(_)));
        assert_eq!(r.acked(4, &[true]), SubAckProgress::Unknown, "not twice");
    }

    #[test]
    fn a_round_of_chosen_indexes_reports_refusals_by_those_indexes() {
        let mut r = SubscribeRound::of(vec![4, 9, 2]);
        assert_eq!(r.next_chunk(), Some(&[4, 9, 2][..]));
        r.handed();
        r.sent(1);
        assert_eq!(
            r.acked(1, &[true, false, true]),
            SubAckProgress::Complete(Summary {
                granted: 2,
                refused: vec![9]
            })
        );
        let r = SubscribeRound::of((0..20).collect());
        assert_eq!(r.chunks.len(), 3, "8 + 8 + 4");
    }

    #[test]
    fn no_filters_means_nothing_to_send() {
        let r = SubscribeRound::new(0);
        assert_eq!(r.next_chunk(), None);
        assert!(r.is_complete());
    }
}
