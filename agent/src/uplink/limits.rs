//! Limits on what a FHIR server's answer may cost us (pure). A hostile or broken server must
//! cost bounded memory and never a panic.
//!
//! | limit | value | where |
//! |---|---|---|
//! | response body | [`MAX_BODY`] bytes (8 MiB); a larger `Content-Length` is refused before reading, a streamed body is stopped at the cap | `client` |
//! | JSON nesting | [`MAX_JSON_DEPTH`] (32) arrays/objects, checked by [`json_depth_exceeds`] *before* serde sees the bytes | `client` |
//! | serde_json recursion | 128 (serde_json's built-in limit: at most 127 levels parse; the `unbounded_depth` feature must stay off, `.ci/run` checks it) | `outcome` |
//! | redirects | none followed; a 3xx is a `SendError::Redirected` | `client` |
//! | time | `uplink.timeout_secs` for connect, for each read (idle) and for the whole exchange (a slow-loris answer ends there) | `client` |
//!
//! A transaction-response is at most about 10 levels deep (Bundle → entry → response →
//! outcome → issue → details → coding), so 32 leaves room for any honest server.

pub use super::outcome::MAX_BODY;

/// Deepest JSON nesting accepted in an answer.
pub const MAX_JSON_DEPTH: usize = 32;

/// True when `body` nests arrays/objects deeper than `limit`. A linear byte scan that knows
/// strings and escapes; it does not validate the JSON (serde does that afterwards, on a body
/// that is known to be shallow).
pub fn json_depth_exceeds(body: &[u8], limit: usize) -> bool {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for &b in body {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > limit {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nested(depth: usize) -> Vec<u8> {
        let mut v = "[".repeat(depth).into_bytes();
        v.extend("]".repeat(depth).into_bytes());
        v
    }

    #[test]
    fn nesting_up_to_the_limit_passes_and_one_more_is_refused() {
        assert!(!json_depth_exceeds(&nested(MAX_JSON_DEPTH), MAX_JSON_DEPTH));
        assert!(json_depth_exceeds(
            &nested(MAX_JSON_DEPTH + 1),
            MAX_JSON_DEPTH
        ));
        assert!(json_depth_exceeds(br#"{"a":{"b":{"c":[1]}}}"#, 3));
        assert!(!json_depth_exceeds(br#"{"a":{"b":{"c":1}}}"#, 3));
    }

    #[test]
    fn brackets_inside_strings_and_after_escaped_quotes_do_not_count() {
        let body = br#"{"diagnostics":"[[[[{{{{ \" [[[[ \\"}"#;
        assert!(!json_depth_exceeds(body, 1));
        let body = br#"{"a":"\\","b":[[1]]}"#; // the string ends after the escaped backslash
        assert!(json_depth_exceeds(body, 2));
    }

    #[test]
    fn a_real_transaction_response_is_well_within_the_limit() {
        let body = serde_json::json!({"resourceType": "Bundle", "type": "transaction-response",
            "entry": [{"response": {"status": "400 Bad Request", "outcome": {
                "resourceType": "OperationOutcome",
                "issue": [{"severity": "error", "code": "invalid",
                    "details": {"coding": [{"system": "urn:x", "code": "y"}]}}]}}}]});
        let bytes = serde_json::to_vec(&body).unwrap();
        assert!(!json_depth_exceeds(&bytes, 12));
        assert!(json_depth_exceeds(&bytes, 5));
    }

    /// The second line of defence, stated as a test: serde_json's recursion limit is 128
    /// (`remaining_depth: 128`, decremented before the check), so it parses at most 127
    /// levels and refuses deeper nesting with an error (no stack overflow), as long as nobody
    /// enables `unbounded_depth`.
    #[test]
    fn serde_json_itself_refuses_nesting_of_128_levels_and_more() {
        assert!(serde_json::from_slice::<serde_json::Value>(&nested(127)).is_ok());
        let err = serde_json::from_slice::<serde_json::Value>(&nested(128)).unwrap_err();
        assert!(err.to_string().contains("recursion limit"), "{err}");
        assert!(serde_json::from_slice::<serde_json::Value>(&nested(1_000_000)).is_err());
    }
}
