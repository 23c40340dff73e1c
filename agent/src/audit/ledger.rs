//! The delivery ledger: where a reading is, read from the audit entries alone (pure: entries
//! in, answers out). `vitalgate ledger READING-ID` reads the segment files and asks this.
//!
//! | last entries for the reading                         | state          |
//! |------------------------------------------------------|----------------|
//! | `stored`                                             | pending        |
//! | `sent`, nothing after it yet                         | in flight      |
//! | `sent`, then the attempt ended without a confirmation (`send_failed`, `not_confirmed`, `refused`, `token_refused`, the next Bundle's `sent`, `agent_started`, `agent_stopped`) | pending (the last failure named) |
//! | `delivered`                                          | delivered (server resource id, version, time) |
//! | `dead_lettered`                                      | dead-lettered (reason code, status) |
//! | `purged`                                             | purged (reason) |
//! | only `duplicate`                                     | duplicate (of a reading stored before the kept entries) |
//!
//! "The attempt ended" relies on the uploader's rule of one upload at a time per gateway
//! (fhir-mapping.md §5.3): any answer, or the next Bundle, ends the previous Bundle's flight.
//! A Bundle recorded in several `sent` entries (more than [`super::SENT_IDS_PER_ENTRY`]
//! readings) carries `"continued":true` on the later ones.

use serde::Serialize;
use serde_json::Value;

/// What the ledger says about one reading.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum State {
    Pending {
        #[serde(skip_serializing_if = "Option::is_none")]
        last_failure: Option<String>,
    },
    InFlight,
    /// Written to an export file (`vitalgate export`): still pending until the receipt is
    /// confirmed (or the uploader delivers it).
    Exported {
        file: String,
    },
    Delivered {
        #[serde(skip_serializing_if = "Option::is_none")]
        resource: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        version: Option<String>,
        created: bool,
    },
    DeadLettered {
        reason: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        status: Option<u64>,
    },
    Purged {
        reason: String,
    },
    Duplicate,
}

impl State {
    /// One line for a technician.
    pub fn describe(&self) -> String {
        match self {
            State::Pending { last_failure: None } => "pending (stored, not yet sent)".into(),
            State::Pending {
                last_failure: Some(f),
            } => format!("pending (sent, not confirmed: {f}; it will be sent again)"),
            State::InFlight => "in flight (sent, no answer yet)".into(),
            State::Exported { file } => format!(
                "exported to {file}, awaiting confirmation (still pending: `vitalgate export confirm` with the receipt, or the uploader, delivers it)"
            ),
            State::Delivered {
                resource,
                version,
                created,
            } => format!(
                "delivered: {}{}{}",
                resource.as_deref().unwrap_or("(the server gave no location)"),
                version.as_deref().map_or(String::new(), |v| format!(" version {v}")),
                if *created { " (created)" } else { " (already on the server)" }
            ),
            State::DeadLettered { reason, status } => match status {
                Some(s) => format!("dead-lettered: {reason} (HTTP {s}); see `vitalgate dead-letters`"),
                None => format!("dead-lettered: {reason}; see `vitalgate dead-letters`"),
            },
            State::Purged { reason } => format!("purged from the outbox: {reason}"),
            State::Duplicate => {
                "duplicate: received again and not stored (the original was stored before the oldest kept audit entry)".into()
            }
        }
    }
}

/// The ledger's answer for one reading.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Answer {
    /// The full 64-hex content id.
    pub reading: String,
    #[serde(flatten)]
    pub state: State,
    /// The time of the entry that decided the state.
    pub since: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stored_at: Option<String>,
    /// How many Bundles carried it.
    pub sent: u32,
    /// `seq` of the last entry about it.
    pub last_seq: u64,
}

/// A query: a full 64-hex id, or a prefix of at least 12 hex digits (the logs' short id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query(String);

impl Query {
    /// # Errors
    ///
    /// A message when `s` is not 12 to 64 hex digits.
    pub fn parse(s: &str) -> Result<Query, String> {
        let s = s.trim().to_ascii_lowercase();
        if (12..=64).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_hexdigit()) {
            Ok(Query(s))
        } else {
            Err(format!(
                "expected a reading id: 64 hex digits, or the 12-digit short id of the logs (got {} characters)",
                s.chars().count()
            ))
        }
    }

    fn matches(&self, id: &str) -> bool {
        id.len() == 64 && id.starts_with(&self.0)
    }
}

type Tracks = std::collections::HashMap<String, Answer>;

fn upsert<'t>(
    tracks: &'t mut Tracks,
    order: &mut Vec<String>,
    id: &str,
    seq: u64,
    time: &str,
) -> &'t mut Answer {
    let a = tracks.entry(id.to_string()).or_insert_with(|| {
        order.push(id.to_string());
        Answer {
            reading: id.to_string(),
            state: State::Duplicate,
            since: time.to_string(),
            stored_at: None,
            sent: 0,
            last_seq: seq,
        }
    });
    a.last_seq = seq;
    a
}

/// The attempt of the last Bundle ended without a confirmation: its readings still in flight
/// are pending again.
fn end_flight(why: &str, time: &str, flight: &mut Vec<String>, tracks: &mut Tracks) {
    for id in flight.drain(..) {
        if let Some(a) = tracks.get_mut(&id) {
            if a.state == State::InFlight {
                a.state = State::Pending {
                    last_failure: Some(why.to_string()),
                };
                a.since = time.to_string();
            }
        }
    }
}

/// Whether a line can matter to `query`: it names a matching reading, or it is an event that
/// ends a Bundle's flight. A cheap byte test before parsing, so that `vitalgate ledger` parses
/// a fraction of a 64 MiB log.
pub fn may_matter(query: &Query, line: &[u8]) -> bool {
    const FLIGHT: [&[u8]; 7] = [
        b"\"event\":\"sent\"",
        b"\"event\":\"send_failed\"",
        b"\"event\":\"not_confirmed\"",
        b"\"event\":\"refused\"",
        b"\"event\":\"token_refused\"",
        b"\"event\":\"agent_started\"",
        b"\"event\":\"agent_stopped\"",
    ];
    let has = |needle: &[u8]| line.windows(needle.len()).any(|w| w == needle);
    has(query.0.as_bytes()) || FLIGHT.iter().any(|f| has(f))
}

/// Answers `query` from entries in log order. Every matching reading, in the order first seen.
pub fn answer<V: std::borrow::Borrow<Value>>(
    query: &Query,
    entries: impl IntoIterator<Item = V>,
) -> Vec<Answer> {
    let mut order: Vec<String> = Vec::new();
    let mut tracks = Tracks::new();
    // Readings of the last Bundle sent (that match), while its attempt has not ended.
    let mut flight: Vec<String> = Vec::new();
    for e in entries {
        let e: &Value = e.borrow();
        let (Some(event), Some(seq)) = (e["event"].as_str(), e["seq"].as_u64()) else {
            continue;
        };
        let time = e["time"].as_str().unwrap_or("");
        match event {
            "sent" => {
                if !e["continued"].as_bool().unwrap_or(false) {
                    end_flight(
                        "the next Bundle went out first",
                        time,
                        &mut flight,
                        &mut tracks,
                    );
                }
                for id in e["readings"].as_array().into_iter().flatten() {
                    let Some(id) = id.as_str().filter(|i| query.matches(i)) else {
                        continue;
                    };
                    let a = upsert(&mut tracks, &mut order, id, seq, time);
                    a.sent += 1;
                    if !matches!(a.state, State::Delivered { .. }) {
                        a.state = State::InFlight;
                        a.since = time.to_string();
                    }
                    flight.push(id.to_string());
                }
            }
            "exported" => {
                for id in e["readings"].as_array().into_iter().flatten() {
                    let Some(id) = id.as_str().filter(|i| query.matches(i)) else {
                        continue;
                    };
                    let a = upsert(&mut tracks, &mut order, id, seq, time);
                    if !matches!(a.state, State::Delivered { .. }) {
                        a.state = State::Exported {
                            file: e["destination"].as_str().unwrap_or("?").to_string(),
                        };
                        a.since = time.to_string();
                    }
                }
            }
            "send_failed" | "not_confirmed" | "refused" | "token_refused" | "agent_started"
            | "agent_stopped" => {
                let why = match event {
                    "send_failed" => format!("no answer ({})", e["class"].as_str().unwrap_or("?")),
                    "not_confirmed" => format!("server answered {}", e["status"]),
                    "refused" => format!(
                        "the server refuses the gateway ({}), uploads paused",
                        e["cause"].as_str().unwrap_or("?")
                    ),
                    "token_refused" => "no OAuth token".into(),
                    _ => "the agent restarted".into(),
                };
                end_flight(&why, time, &mut flight, &mut tracks);
            }
            _ => {
                let Some(id) = e["reading"].as_str().filter(|i| query.matches(i)) else {
                    continue;
                };
                let state = match event {
                    "stored" => Some(State::Pending { last_failure: None }),
                    "delivered" => Some(State::Delivered {
                        resource: e["resource"].as_str().map(str::to_string),
                        version: e["version"].as_str().map(str::to_string),
                        created: e["created"].as_bool().unwrap_or(false),
                    }),
                    "dead_lettered" => Some(State::DeadLettered {
                        reason: e["reason"].as_str().unwrap_or("unknown").to_string(),
                        status: e["status"].as_u64(),
                    }),
                    "purged" => Some(State::Purged {
                        reason: e["reason"].as_str().unwrap_or("unknown").to_string(),
                    }),
                    // `duplicate` and events that only mention a reading keep its state.
                    _ => None,
                };
                let a = upsert(&mut tracks, &mut order, id, seq, time);
                if event == "stored" {
                    a.stored_at = Some(time.to_string());
                }
                if let Some(s) = state {
                    a.state = s;
                    a.since = time.to_string();
                }
            }
        }
    }
    order
        .into_iter()
        .filter_map(|id| tracks.remove(&id))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const A: &str = "aaaaaaaaaaaa1111111111111111111111111111111111111111111111111111";
    const B: &str = "bbbbbbbbbbbb2222222222222222222222222222222222222222222222222222";

    fn log(events: Vec<Value>) -> Vec<Value> {
        events
            .into_iter()
            .enumerate()
            .map(|(i, mut e)| {
                e["seq"] = json!(i);
                e["time"] = json!(format!("2026-12-06T00:00:{i:02}.000Z"));
                e
            })
            .collect()
    }

    fn ask(q: &str, l: &[Value]) -> Vec<Answer> {
        answer(&Query::parse(q).unwrap(), l)
    }

    #[test]
    fn stored_sent_delivered_is_delivered_with_the_server_id() {
        let l = log(vec![
            json!({"event":"stored","reading":A,"kind":"bp","device":"hub"}),
            json!({"event":"stored","reading":B,"kind":"bp","device":"hub"}),
            json!({"event":"sent","readings":[A]}),
            json!({"event":"delivered","reading":A,"created":true,"resource":"Observation/7","version":"1"}),
        ]);
        let a = ask(A, &l);
        assert_eq!(a.len(), 1);
        assert_eq!(
            a[0].state,
            State::Delivered {
                resource: Some("Observation/7".into()),
                version: Some("1".into()),
                created: true
            }
        );
        assert_eq!(a[0].since, "2026-12-06T00:00:03.000Z");
        assert_eq!(a[0].stored_at.as_deref(), Some("2026-12-06T00:00:00.000Z"));
        assert_eq!(
            ask(&B[..12], &l)[0].state,
            State::Pending { last_failure: None }
        );
    }

    #[test]
    fn sent_without_an_answer_is_in_flight_and_a_failure_makes_it_pending_again() {
        let mut l = log(vec![
            json!({"event":"stored","reading":A}),
            json!({"event":"sent","readings":[A, B]}),
        ]);
        assert_eq!(ask(A, &l)[0].state, State::InFlight);
        l.push(json!({"event":"send_failed","class":"tls","seq":9,"time":"t"}));
        assert!(
            matches!(&ask(A, &l)[0].state, State::Pending { last_failure: Some(f) } if f.contains("tls"))
        );
        // A Bundle in several entries stays one flight.
        let l = log(vec![
            json!({"event":"sent","readings":[A]}),
            json!({"event":"sent","readings":[B],"continued":true}),
        ]);
        assert_eq!(ask(A, &l)[0].state, State::InFlight);
        assert_eq!(ask(B, &l)[0].state, State::InFlight);
    }

    #[test]
    fn an_exported_reading_is_exported_until_delivered() {
        let l = log(vec![
            json!({"event":"stored","reading":A}),
            json!({"event":"exported","readings":[A],"destination":"f.vgexport"}),
        ]);
        let a = ask(A, &l);
        assert_eq!(
            a[0].state,
            State::Exported {
                file: "f.vgexport".into()
            }
        );
        assert!(a[0].state.describe().contains("f.vgexport"));
        let mut l = l;
        l.extend(log(vec![
            json!({"event":"sent","readings":[A]}),
            json!({"event":"delivered","reading":A,"created":false,"resource":"Observation/9"}),
        ]));
        // Renumber seqs as one log.
        for (i, e) in l.iter_mut().enumerate() {
            e["seq"] = json!(i);
        }
        assert!(matches!(ask(A, &l)[0].state, State::Delivered { .. }));
    }

    #[test]
    fn dead_letters_duplicates_and_unknown_ids() {
        let l = log(vec![
            json!({"event":"dead_lettered","reading":A,"reason":"rejected","status":422}),
            json!({"event":"duplicate","reading":B}),
        ]);
        assert_eq!(
            ask(A, &l)[0].state,
            State::DeadLettered {
                reason: "rejected".into(),
                status: Some(422)
            }
        );
        assert_eq!(ask(B, &l)[0].state, State::Duplicate);
        assert!(ask("cccccccccccc", &l).is_empty());
        assert!(Query::parse("abc").is_err());
        assert!(Query::parse("MRN-0001").is_err());
    }

    #[test]
    fn the_prefilter_keeps_the_lines_that_name_the_reading_or_end_a_flight() {
        let q = Query::parse(&A[..12]).unwrap();
        let line = |v: Value| serde_json::to_vec(&v).unwrap();
        assert!(may_matter(&q, &line(json!({"event":"stored","reading":A}))));
        assert!(may_matter(
            &q,
            &line(json!({"event":"sent","readings":[B]}))
        ));
        assert!(may_matter(
            &q,
            &line(json!({"event":"send_failed","class":"tls"}))
        ));
        assert!(!may_matter(
            &q,
            &line(json!({"event":"stored","reading":B}))
        ));
        assert!(!may_matter(
            &q,
            &line(json!({"event":"delivered","reading":B}))
        ));
        // Filtering first gives the same answer as reading everything.
        let l = log(vec![
            json!({"event":"stored","reading":A}),
            json!({"event":"stored","reading":B}),
            json!({"event":"sent","readings":[A, B]}),
            json!({"event":"delivered","reading":B,"created":true}),
            json!({"event":"sent","readings":[B]}),
        ]);
        let filtered: Vec<Value> = l
            .iter()
            .filter(|e| may_matter(&q, &serde_json::to_vec(e).unwrap()))
            .cloned()
            .collect();
        assert_eq!(answer(&q, &filtered), answer(&q, &l));
        assert!(matches!(answer(&q, &l)[0].state, State::Pending { .. }));
    }

    #[test]
    fn a_short_id_names_every_reading_it_prefixes() {
        let a2 = format!("{}{}", &A[..12], "3".repeat(52));
        let l = log(vec![
            json!({"event":"stored","reading":A}),
            json!({"event":"stored","reading":a2}),
        ]);
        assert_eq!(ask(&A[..12], &l).len(), 2);
        assert_eq!(ask(A, &l).len(), 1);
    }
}
