//! The server's answer → what it means (pure). fhir-mapping.md §5.4-§5.5.
//!
//! | answer | outcome |
//! |---|---|
//! | **200**, empty body | `Accepted` (committed, no locations) |
//! | **200**, a `transaction-response` Bundle with one entry per request entry, each `response.status` starting `201`/`200` | `Accepted` |
//! | **200**, a `transaction-response` Bundle with the right entry count in which some entries failed | `EntriesFailed`: the readings of the failed entries are suspects (all readings when a Device or the gateway entry failed); nothing is acked |
//! | 200 with anything else (garbage, wrong entry count); any other 2xx (an empty `202` or `204` confirms nothing) | `Retry` (unconfirmed): never ack what was not confirmed |
//! | 408, 409, 429, 5xx, 1xx, 3xx | `Retry` (with `Retry-After` as a floor when given) |
//! | 401 | `Unauthorized` (with `[uplink.oauth2]` the client has already refreshed the token and resent once; the uploader pauses) |
//! | 403, 404, 405, 406, 415 | `Refused`: server-wide (not authorised, wrong base URL, method or media type); pause, never dead-letter |
//! | 413 | `Split` |
//! | 400, 412, 422, any other 4xx | `Reject`: reading-level; bisect, dead-letter a reading rejected alone |
//!
//! A transaction is all-or-nothing (FHIR R4 `http.html#transaction`), so a 200 that reports a
//! failed entry committed nothing we can trust: none of its readings is acked, the suspects are
//! isolated and the others resent in a Bundle of their own.
//!
//! Time enters as an argument (`now`, for a `Retry-After` HTTP-date); nothing here reads a clock.

use std::time::Duration;

use serde_json::Value;

use super::fhir::EntryRef;
use crate::identity::ReadingId;

/// Largest response body parsed (a transaction-response for 50 entries is a few KiB).
pub const MAX_BODY: usize = 8 * 1024 * 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryStatus {
    Created,
    Existing,
    /// Empty 200: committed, but the server did not say how.
    Unknown,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    pub reading_id: ReadingId,
    pub status: EntryStatus,
    pub location: Option<String>,
}

impl Accepted {
    pub fn is_created(&self) -> bool {
        self.status == EntryStatus::Created
    }
}

/// Why an answer is retried as it is. No PHI: statuses and fixed texts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RetryReason {
    /// A transient status (408, 409, 429, 5xx) or one that says nothing about the readings
    /// (1xx, 3xx: redirects are never followed).
    Status(u16),
    /// A 2xx that does not confirm the entries (an empty 202/204, garbage, a wrong entry
    /// count): the readings may or may not be on the server; a resend is idempotent.
    Unconfirmed { status: u16, why: &'static str },
}

impl std::fmt::Display for RetryReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RetryReason::Status(s) => write!(f, "server answered {s}"),
            RetryReason::Unconfirmed { status, why } => {
                write!(
                    f,
                    "server answered {status} without confirming the entries: {why}"
                )
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Committed: every reading of the Bundle is on the server.
    Accepted(Vec<Accepted>),
    /// A 200 `transaction-response` reporting failed entries. `suspects` are the readings
    /// whose entries failed (every reading of the Bundle when a Device or the gateway entry
    /// failed); `detail` summarises the first failure (status and OperationOutcome).
    EntriesFailed {
        suspects: Vec<ReadingId>,
        status: u16,
        detail: String,
    },
    /// Transient, or not confirmed: send the same entries again after a backoff.
    Retry {
        after: Option<Duration>,
        reason: RetryReason,
    },
    /// Reading-level refusal of the Bundle: bisect.
    Reject {
        status: u16,
        operation_outcome: Option<String>,
    },
    /// 413: split the Bundle.
    Split,
    /// Server-wide refusal (403, 404, 405, 406, 415): pause, keep every reading pending.
    Refused { status: u16 },
    /// 401.
    Unauthorized,
}

/// Parses `Retry-After`: delta-seconds or an HTTP-date (relative to `now`).
pub fn parse_retry_after(v: &str, now: chrono::DateTime<chrono::Utc>) -> Option<Duration> {
    let v = v.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = chrono::DateTime::parse_from_rfc2822(v).ok()?;
    let delta = when.with_timezone(&chrono::Utc) - now;
    Some(delta.to_std().unwrap_or(Duration::ZERO))
}

/// A short, single-line summary of an OperationOutcome (diagnostics/details), if the body is one.
pub fn operation_outcome_summary(body: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(body.get(..MAX_BODY.min(body.len()))?).ok()?;
    outcome_value_summary(&v)
}

fn outcome_value_summary(v: &Value) -> Option<String> {
    if v.get("resourceType")?.as_str()? != "OperationOutcome" {
        return None;
    }
    let parts: Vec<String> = v
        .get("issue")?
        .as_array()?
        .iter()
        .map(|i| {
            let sev = i.get("severity").and_then(Value::as_str).unwrap_or("?");
            let text = i
                .get("diagnostics")
                .and_then(Value::as_str)
                .or_else(|| i.get("details")?.get("text")?.as_str())
                .unwrap_or("");
            format!("{sev}: {text}")
        })
        .collect();
    let s: String = parts
        .join("; ")
        .chars()
        .filter(|c| !c.is_control())
        .take(500)
        .collect();
    Some(s)
}

/// Classifies an answer to a Bundle of `total_entries` entries whose observation entries are
/// `entries`. `now` is the wall-clock time the answer arrived (for a `Retry-After` date).
pub fn classify(
    status: u16,
    retry_after: Option<&str>,
    body: &[u8],
    total_entries: usize,
    entries: &[EntryRef],
    now: chrono::DateTime<chrono::Utc>,
) -> Outcome {
    let after = retry_after.and_then(|v| parse_retry_after(v, now));
    match status {
        200 => classify_200(body, total_entries, entries),
        201..=299 => Outcome::Retry {
            after,
            reason: RetryReason::Unconfirmed {
                status,
                why:
                    "only 200 with a transaction-response (or an empty 200) confirms a transaction",
            },
        },
        401 => Outcome::Unauthorized,
        403 | 404 | 405 | 406 | 415 => Outcome::Refused { status },
        413 => Outcome::Split,
        408 | 409 | 429 => Outcome::Retry {
            after,
            reason: RetryReason::Status(status),
        },
        400..=499 => Outcome::Reject {
            status,
            operation_outcome: operation_outcome_summary(body),
        },
        _ => Outcome::Retry {
            after,
            reason: RetryReason::Status(status),
        },
    }
}

fn classify_200(body: &[u8], total_entries: usize, entries: &[EntryRef]) -> Outcome {
    let unconfirmed = |why: &'static str| Outcome::Retry {
        after: None,
        reason: RetryReason::Unconfirmed { status: 200, why },
    };
    if body.iter().all(u8::is_ascii_whitespace) {
        return Outcome::Accepted(
            entries
                .iter()
                .flat_map(|e| e.reading_ids.iter())
                .map(|id| Accepted {
                    reading_id: *id,
                    status: EntryStatus::Unknown,
                    location: None,
                })
                .collect(),
        );
    }
    if body.len() > MAX_BODY {
        return unconfirmed("response body too large");
    }
    let Ok(v) = serde_json::from_slice::<Value>(body) else {
        return unconfirmed("the body is not JSON");
    };
    if v.get("resourceType").and_then(Value::as_str) != Some("Bundle")
        || v.get("type").and_then(Value::as_str) != Some("transaction-response")
    {
        return unconfirmed("the body is not a transaction-response Bundle");
    }
    let Some(resp_entries) = v.get("entry").and_then(Value::as_array) else {
        return unconfirmed("the transaction-response has no entries");
    };
    if resp_entries.len() != total_entries {
        return unconfirmed("the transaction-response entry count differs from the request");
    }
    let entry_status = |e: &Value| -> String {
        e.get("response")
            .and_then(|r| r.get("status"))
            .and_then(Value::as_str)
            .unwrap_or("")
            .trim()
            .to_owned()
    };
    let succeeded = |st: &str| st.starts_with("201") || st.starts_with("200");
    // Every entry (Devices included) must have succeeded for the transaction to count.
    let failed: Vec<usize> = resp_entries
        .iter()
        .enumerate()
        .filter(|(_, e)| !succeeded(&entry_status(e)))
        .map(|(i, _)| i)
        .collect();
    if let Some(&first) = failed.first() {
        return entries_failed(resp_entries, &failed, first, entries, &entry_status);
    }
    let mut out = Vec::new();
    for er in entries {
        let Some(resp) = resp_entries
            .get(er.entry_index)
            .and_then(|e| e.get("response"))
        else {
            return unconfirmed("the transaction-response lacks an entry");
        };
        let st = resp.get("status").and_then(Value::as_str).unwrap_or("");
        let status = if st.starts_with("201") {
            EntryStatus::Created
        } else {
            EntryStatus::Existing
        };
        let location = resp
            .get("location")
            .and_then(Value::as_str)
            .map(|s| s.chars().take(256).collect::<String>());
        for id in &er.reading_ids {
            out.push(Accepted {
                reading_id: *id,
                status: status.clone(),
                location: location.clone(),
            });
        }
    }
    Outcome::Accepted(out)
}

/// The suspects of a 200 with failed entries: the readings of failed Observation entries, or
/// every reading when another entry (a Device, the gateway) failed, since any of them may be
/// the cause.
fn entries_failed(
    resp_entries: &[Value],
    failed: &[usize],
    first: usize,
    entries: &[EntryRef],
    entry_status: &dyn Fn(&Value) -> String,
) -> Outcome {
    let observation_entry = |i: usize| entries.iter().find(|e| e.entry_index == i);
    let suspects: Vec<ReadingId> = if failed.iter().all(|&i| observation_entry(i).is_some()) {
        failed
            .iter()
            .filter_map(|&i| observation_entry(i))
            .flat_map(|e| e.reading_ids.iter().copied())
            .collect()
    } else {
        entries
            .iter()
            .flat_map(|e| e.reading_ids.iter().copied())
            .collect()
    };
    let first_entry = resp_entries.get(first);
    let status_text = first_entry.map(entry_status).unwrap_or_default();
    let status = status_text
        .split_whitespace()
        .next()
        .and_then(|s| s.parse::<u16>().ok())
        .unwrap_or(0);
    let outcome = first_entry
        .and_then(|e| e.get("response")?.get("outcome"))
        .and_then(outcome_value_summary);
    let status_text: String = status_text
        .chars()
        .filter(|c| !c.is_control())
        .take(64)
        .collect();
    let detail = format!(
        "{} of {} entries failed; entry {first}: {}{}",
        failed.len(),
        resp_entries.len(),
        if status_text.is_empty() {
            "no status"
        } else {
            &status_text
        },
        outcome.map(|o| format!(" ({o})")).unwrap_or_default()
    );
    Outcome::EntriesFailed {
        suspects,
        status,
        detail,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::uplink::fhir::tests::test_id;
    use serde_json::json;

    fn refs() -> Vec<EntryRef> {
        vec![
            EntryRef {
                entry_index: 1,
                reading_ids: vec![test_id(1)],
            },
            EntryRef {
                entry_index: 2,
                reading_ids: vec![test_id(2), test_id(3)],
            },
        ]
    }

    fn now() -> chrono::DateTime<chrono::Utc> {
        chrono::DateTime::parse_from_rfc2822("Wed, 21 Oct 2015 07:28:00 GMT")
            .unwrap()
            .to_utc()
    }

    fn classify(status: u16, retry_after: Option<&str>, body: &[u8], total: usize) -> Outcome {
        super::classify(status, retry_after, body, total, &refs(), now())
    }

    fn response(statuses: &[&str]) -> Vec<u8> {
        let entries: Vec<_> = statuses
            .iter()
            .enumerate()
            .map(|(i, s)| json!({"response": {"status": s, "location": format!("Observation/{i}/_history/1")}}))
            .collect();
        serde_json::to_vec(
            &json!({"resourceType": "Bundle", "type": "transaction-response", "entry": entries}),
        )
        .unwrap()
    }

    #[test]
    fn all_entries_created_or_existing_is_accepted() {
        let body = response(&["200 OK", "201 Created", "200 OK"]);
        match classify(200, None, &body, 3) {
            Outcome::Accepted(a) => {
                assert_eq!(a.len(), 3);
                assert_eq!(a[0].status, EntryStatus::Created);
                assert_eq!(a[0].location.as_deref(), Some("Observation/1/_history/1"));
                assert_eq!(a[1].status, EntryStatus::Existing);
                assert_eq!(a[2].reading_id, test_id(3));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_empty_200_means_committed() {
        assert!(matches!(classify(200, None, b"", 3), Outcome::Accepted(a) if a.len() == 3));
        assert!(matches!(classify(200, None, b" \n", 3), Outcome::Accepted(a) if a.len() == 3));
    }

    #[test]
    fn an_empty_202_or_204_or_any_other_2xx_confirms_nothing() {
        for s in [201, 202, 204, 206, 299] {
            assert!(
                matches!(
                    classify(s, None, b"", 3),
                    Outcome::Retry {
                        reason: RetryReason::Unconfirmed { status, .. },
                        ..
                    } if status == s
                ),
                "{s}"
            );
        }
        // Even a well-formed transaction-response under 201 is not the answer §5.4 names.
        let body = response(&["201 Created", "201 Created", "201 Created"]);
        assert!(matches!(
            classify(201, None, &body, 3),
            Outcome::Retry { .. }
        ));
    }

    #[test]
    fn a_failed_observation_entry_makes_its_readings_the_suspects() {
        let body = response(&["201 Created", "201 Created", "422 Unprocessable Entity"]);
        match classify(200, None, &body, 3) {
            Outcome::EntriesFailed {
                suspects,
                status,
                detail,
            } => {
                assert_eq!(suspects, vec![test_id(2), test_id(3)]);
                assert_eq!(status, 422);
                assert!(detail.contains("1 of 3 entries failed"), "{detail}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_failed_device_entry_makes_every_reading_a_suspect() {
        let body = response(&["400 Bad Request", "201 Created", "201 Created"]);
        match classify(200, None, &body, 3) {
            Outcome::EntriesFailed { suspects, .. } => {
                assert_eq!(suspects, vec![test_id(1), test_id(2), test_id(3)])
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_entry_outcome_is_summarised_in_the_detail() {
        let body = serde_json::to_vec(&json!({"resourceType": "Bundle", "type": "transaction-response", "entry": [
            {"response": {"status": "200 OK"}},
            {"response": {"status": "400 Bad Request", "outcome": {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "diagnostics": "bad unit"}]}}},
            {"response": {"status": "200 OK"}},
        ]}))
        .unwrap();
        match classify(200, None, &body, 3) {
            Outcome::EntriesFailed {
                suspects, detail, ..
            } => {
                assert_eq!(suspects, vec![test_id(1)]);
                assert!(detail.contains("error: bad unit"), "{detail}");
                assert!(detail.contains("400 Bad Request"), "{detail}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn garbage_or_a_wrong_entry_count_is_never_acked() {
        for body in [
            b"<html>oops".to_vec(),
            response(&["201"]),
            b"{\"resourceType\":\"Patient\"}".to_vec(),
        ] {
            assert!(
                matches!(
                    classify(200, None, &body, 3),
                    Outcome::Retry {
                        reason: RetryReason::Unconfirmed { status: 200, .. },
                        ..
                    }
                ),
                "{}",
                String::from_utf8_lossy(&body)
            );
        }
    }

    #[test]
    fn status_classes() {
        for s in [408, 409, 429, 500, 501, 502, 503, 504, 599, 301, 308] {
            assert_eq!(
                classify(s, None, b"", 3),
                Outcome::Retry {
                    after: None,
                    reason: RetryReason::Status(s)
                },
                "{s}"
            );
        }
        for s in [403, 404, 405, 406, 415] {
            assert_eq!(
                classify(s, None, b"", 3),
                Outcome::Refused { status: s },
                "{s}"
            );
        }
        for s in [400, 402, 410, 412, 418, 422, 451] {
            assert!(
                matches!(classify(s, None, b"", 3), Outcome::Reject { status, .. } if status == s),
                "{s}"
            );
        }
        assert_eq!(classify(413, None, b"", 3), Outcome::Split);
        assert_eq!(classify(401, None, b"", 3), Outcome::Unauthorized);
    }

    #[test]
    fn retry_after_seconds_and_dates_relative_to_the_given_now() {
        match classify(429, Some("7"), b"", 3) {
            Outcome::Retry { after, .. } => assert_eq!(after, Some(Duration::from_secs(7))),
            other => panic!("{other:?}"),
        }
        match classify(503, Some("Wed, 21 Oct 2015 07:28:30 GMT"), b"", 3) {
            Outcome::Retry { after, .. } => assert_eq!(after, Some(Duration::from_secs(30))),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:27:00 GMT", now()),
            Some(Duration::ZERO),
            "a date in the past means now"
        );
        assert_eq!(parse_retry_after("soon", now()), None);
    }

    #[test]
    fn operation_outcome_is_summarised_on_reject() {
        let body = serde_json::to_vec(&json!({"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "invalid", "diagnostics": "Observation.status: bad code"}]})).unwrap();
        match classify(422, None, &body, 3) {
            Outcome::Reject {
                operation_outcome: Some(s),
                ..
            } => assert!(s.contains("Observation.status"), "{s}"),
            other => panic!("{other:?}"),
        }
    }
}
