//! Bluetooth SIG GATT health profiles (issue #3 fills this in).

/// Decodes one characteristic value into the section-0 JSON form of gatt-profiles.md.
/// Malformed payloads give `{"error": "truncated" | "invalid"}`; `None` means the
/// characteristic is not supported by this crate.
pub fn decode_to_json(_characteristic: u16, _payload: &[u8]) -> Option<serde_json::Value> {
    None
}
