//! The server's answer → what to do (pure). fhir-mapping.md §5.4-§5.5.
//!
//! | answer | outcome |
//! |---|---|
//! | 2xx, empty body | `Accepted` (committed, no locations) |
//! | 2xx, a `transaction-response` Bundle with one entry per request entry, each `response.status` starting `201`/`200` | `Accepted` |
//! | 2xx, anything else (garbage, wrong entry count, a failed entry) | `Retry`: never ack what was not confirmed |
//! | 408, 409, 429, 5xx, 3xx | `Retry` (with `Retry-After` when given) |
//! | 401 | `Unauthorized` |
//! | 413 | `Split` |
//! | 400, 403, 404, 405, 406, 412, 415, 422, other 4xx | `Reject` (bisect, then dead-letter) |

use std::time::Duration;

use serde_json::Value;

use super::fhir::EntryRef;

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
    pub reading_id: crate::identity::ReadingId,
    pub status: EntryStatus,
    pub location: Option<String>,
}

impl Accepted {
    pub fn is_created(&self) -> bool {
        self.status == EntryStatus::Created
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Accepted(Vec<Accepted>),
    Retry {
        after: Option<Duration>,
        reason: String,
    },
    Reject {
        status: u16,
        operation_outcome: Option<String>,
    },
    Split,
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
/// `entries`.
pub fn classify(
    status: u16,
    retry_after: Option<&str>,
    body: &[u8],
    total_entries: usize,
    entries: &[EntryRef],
) -> Outcome {
    // TODO(core-uplink branch): `now` becomes an argument.
    #[allow(clippy::disallowed_methods)]
    let after = retry_after.and_then(|v| parse_retry_after(v, chrono::Utc::now()));
    match status {
        200..=299 => classify_success(body, total_entries, entries),
        401 => Outcome::Unauthorized,
        413 => Outcome::Split,
        408 | 409 | 429 => Outcome::Retry {
            after,
            reason: format!("server answered {status}"),
        },
        400..=499 => Outcome::Reject {
            status,
            operation_outcome: operation_outcome_summary(body),
        },
        _ => Outcome::Retry {
            after,
            reason: format!("server answered {status}"),
        },
    }
}

fn classify_success(body: &[u8], total_entries: usize, entries: &[EntryRef]) -> Outcome {
    let retry = |reason: &str| Outcome::Retry {
        after: None,
        reason: reason.to_string(),
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
        return retry("response body too large");
    }
    let Ok(v) = serde_json::from_slice::<Value>(body) else {
        return retry("2xx response is not JSON");
    };
    if v.get("resourceType").and_then(Value::as_str) != Some("Bundle")
        || v.get("type").and_then(Value::as_str) != Some("transaction-response")
    {
        return retry("2xx response is not a transaction-response Bundle");
    }
    let Some(resp_entries) = v.get("entry").and_then(Value::as_array) else {
        return retry("transaction-response has no entries");
    };
    if resp_entries.len() != total_entries {
        return retry("transaction-response entry count differs from the request");
    }
    // Every entry (Devices included) must have succeeded for the transaction to count.
    for e in resp_entries {
        let st = e
            .get("response")
            .and_then(|r| r.get("status"))
            .and_then(Value::as_str)
            .unwrap_or("");
        if !(st.starts_with("201") || st.starts_with("200")) {
            return retry("an entry of the transaction-response did not succeed");
        }
    }
    let mut out = Vec::new();
    for er in entries {
        let Some(resp) = resp_entries
            .get(er.entry_index)
            .and_then(|e| e.get("response"))
        else {
            return retry("transaction-response lacks an entry");
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
        match classify(200, None, &body, 3, &refs()) {
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
        assert!(
            matches!(classify(200, None, b"", 3, &refs()), Outcome::Accepted(a) if a.len() == 3)
        );
    }

    #[test]
    fn a_failed_entry_or_garbage_is_never_acked() {
        let body = response(&["201 Created", "400 Bad Request", "201 Created"]);
        assert!(matches!(
            classify(200, None, &body, 3, &refs()),
            Outcome::Retry { .. }
        ));
        assert!(matches!(
            classify(200, None, b"<html>oops", 3, &refs()),
            Outcome::Retry { .. }
        ));
        assert!(matches!(
            classify(200, None, &response(&["201"]), 3, &refs()),
            Outcome::Retry { .. }
        ));
        assert!(matches!(
            classify(200, None, b"{\"resourceType\":\"Patient\"}", 3, &refs()),
            Outcome::Retry { .. }
        ));
    }

    #[test]
    fn status_classes() {
        for s in [408, 409, 429, 500, 502, 503, 504] {
            assert!(
                matches!(classify(s, None, b"", 3, &refs()), Outcome::Retry { .. }),
                "{s}"
            );
        }
        for s in [400, 403, 404, 405, 406, 412, 415, 422, 418] {
            assert!(
                matches!(classify(s, None, b"", 3, &refs()), Outcome::Reject { status, .. } if status == s),
                "{s}"
            );
        }
        assert_eq!(classify(413, None, b"", 3, &refs()), Outcome::Split);
        assert_eq!(classify(401, None, b"", 3, &refs()), Outcome::Unauthorized);
    }

    #[test]
    fn retry_after_seconds_and_dates() {
        match classify(429, Some("7"), b"", 3, &refs()) {
            Outcome::Retry { after, .. } => assert_eq!(after, Some(Duration::from_secs(7))),
            other => panic!("{other:?}"),
        }
        let now = chrono::DateTime::parse_from_rfc2822("Wed, 21 Oct 2015 07:28:00 GMT")
            .unwrap()
            .to_utc();
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:30 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(parse_retry_after("soon", now), None);
    }

    #[test]
    fn operation_outcome_is_summarised_on_reject() {
        let body = serde_json::to_vec(&json!({"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "invalid", "diagnostics": "Observation.status: bad code"}]})).unwrap();
        match classify(422, None, &body, 3, &refs()) {
            Outcome::Reject {
                operation_outcome: Some(s),
                ..
            } => assert!(s.contains("Observation.status"), "{s}"),
            other => panic!("{other:?}"),
        }
    }
}
