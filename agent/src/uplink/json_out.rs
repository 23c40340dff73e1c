//! A compact JSON writer for the request bodies the uplink builds ([`super::fhir`]): values are
//! written straight into one byte buffer, with no `serde_json::Value` tree in between (building,
//! serializing and dropping that tree was about 1.9 ms of CPU per 48-reading Bundle,
//! BENCHMARKS.md "Uplink drain").
//!
//! The bytes are those `serde_json::to_vec` gives for the same `Value`, provided the caller
//! writes each object's keys in the order serde_json's sorted maps (no `preserve_order`) would:
//! byte order of the key. Strings are escaped as serde_json escapes them: `"` and `\`, the
//! short forms `\b \f \n \r \t`, every other control character below U+0020 as `\u00xx` (lower
//! case hex), nothing else (`/`, DEL and non-ASCII go as they are, in UTF-8). The writer does
//! not check the key order: `fhir`'s property test compares every Bundle with the `Value` path.

use std::fmt;

/// Appends JSON to a byte buffer; commas are placed by the writer.
pub(crate) struct JsonOut {
    buf: Vec<u8>,
    /// A value was completed at this level: the next key or element needs a comma first.
    comma: bool,
}

impl JsonOut {
    pub(crate) fn with_capacity(capacity: usize) -> Self {
        Self {
            buf: Vec::with_capacity(capacity),
            comma: false,
        }
    }

    pub(crate) fn into_bytes(self) -> Vec<u8> {
        self.buf
    }

    fn separate(&mut self) {
        if self.comma {
            self.buf.push(b',');
        }
    }

    pub(crate) fn begin_object(&mut self) {
        self.separate();
        self.buf.push(b'{');
        self.comma = false;
    }

    pub(crate) fn end_object(&mut self) {
        self.buf.push(b'}');
        self.comma = true;
    }

    pub(crate) fn begin_array(&mut self) {
        self.separate();
        self.buf.push(b'[');
        self.comma = false;
    }

    pub(crate) fn end_array(&mut self) {
        self.buf.push(b']');
        self.comma = true;
    }

    /// An object key; its value comes next.
    pub(crate) fn key(&mut self, key: &str) {
        self.separate();
        self.buf.push(b'"');
        escape_into(&mut self.buf, key);
        self.buf.extend_from_slice(b"\":");
        self.comma = false;
    }

    pub(crate) fn string(&mut self, s: &str) {
        self.separate();
        self.buf.push(b'"');
        escape_into(&mut self.buf, s);
        self.buf.push(b'"');
        self.comma = true;
    }

    /// A string formatted in place (`format_args!`), escaped as [`Self::string`] would escape
    /// the whole (escaping goes character by character, so piece by piece is the same).
    pub(crate) fn string_fmt(&mut self, args: fmt::Arguments<'_>) {
        self.separate();
        self.buf.push(b'"');
        // `Escaping` never fails; an error could only come from a `Display` impl of the
        // arguments, and ours (str, integers) have none.
        let _ = fmt::Write::write_fmt(&mut Escaping(&mut self.buf), args);
        self.buf.push(b'"');
        self.comma = true;
    }

    /// A number already in JSON form (a `serde_json::Number`'s text).
    pub(crate) fn number_text(&mut self, text: &str) {
        self.separate();
        self.buf.extend_from_slice(text.as_bytes());
        self.comma = true;
    }

    pub(crate) fn bool(&mut self, b: bool) {
        self.separate();
        self.buf
            .extend_from_slice(if b { b"true" as &[u8] } else { b"false" });
        self.comma = true;
    }

    pub(crate) fn null(&mut self) {
        self.separate();
        self.buf.extend_from_slice(b"null");
        self.comma = true;
    }

    /// `"key":"value"`.
    pub(crate) fn field(&mut self, key: &str, value: &str) {
        self.key(key);
        self.string(value);
    }

    /// `"key":"<formatted>"`.
    pub(crate) fn field_fmt(&mut self, key: &str, args: fmt::Arguments<'_>) {
        self.key(key);
        self.string_fmt(args);
    }
}

/// `fmt::Write` into the buffer, escaping as a JSON string's contents.
struct Escaping<'a>(&'a mut Vec<u8>);

impl fmt::Write for Escaping<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        escape_into(self.0, s);
        Ok(())
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// The contents of a JSON string for `s` (no quotes), escaped as serde_json does.
fn escape_into(buf: &mut Vec<u8>, s: &str) {
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let short: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            0x08 => b"\\b",
            0x0c => b"\\f",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x00..=0x1f => b"",
            _ => continue,
        };
        // Only ASCII bytes are escaped, so `start..i` never splits a UTF-8 sequence.
        buf.extend_from_slice(bytes.get(start..i).unwrap_or_default());
        if short.is_empty() {
            buf.extend_from_slice(b"\\u00");
            buf.push(HEX[usize::from(b >> 4)]);
            buf.push(HEX[usize::from(b & 0xf)]);
        } else {
            buf.extend_from_slice(short);
        }
        start = i + 1;
    }
    buf.extend_from_slice(bytes.get(start..).unwrap_or_default());
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::{json, Value};

    fn string_bytes(s: &str) -> Vec<u8> {
        let mut w = JsonOut::with_capacity(0);
        w.string(s);
        w.into_bytes()
    }

    #[test]
    fn every_ascii_character_is_escaped_as_serde_json_escapes_it() {
        for c in (0u8..=0x7f).map(char::from) {
            let s = format!("a{c}b{c}");
            assert_eq!(
                string_bytes(&s),
                serde_json::to_vec(&s).unwrap(),
                "U+{:04X}",
                u32::from(c)
            );
        }
    }

    #[test]
    fn nesting_and_commas_match_serde_json() {
        let mut w = JsonOut::with_capacity(0);
        w.begin_object();
        w.key("a");
        w.begin_array();
        w.begin_object();
        w.end_object();
        w.begin_array();
        w.end_array();
        w.number_text("1.50");
        w.bool(true);
        w.bool(false);
        w.null();
        w.string_fmt(format_args!("x{}\"{}", 7, "é\n"));
        w.end_array();
        w.field("b", "c");
        w.field_fmt("d", format_args!("{}|{}", "s", "\u{1}"));
        w.end_object();
        let v = json!({
            "a": [{}, [], serde_json::from_str::<Value>("1.50").unwrap(), true, false, null, "x7\"é\n"],
            "b": "c",
            "d": "s|\u{1}",
        });
        assert_eq!(w.into_bytes(), serde_json::to_vec(&v).unwrap());
    }

    proptest! {
        #[test]
        fn any_string_is_escaped_as_serde_json_escapes_it(s in any::<String>()) {
            prop_assert_eq!(string_bytes(&s), serde_json::to_vec(&s).unwrap());
            let mut w = JsonOut::with_capacity(0);
            w.begin_object();
            w.key(&s);
            w.string_fmt(format_args!("{s}{s}"));
            w.end_object();
            let mut m = serde_json::Map::new();
            m.insert(s.clone(), Value::String(format!("{s}{s}")));
            prop_assert_eq!(w.into_bytes(), serde_json::to_vec(&Value::Object(m)).unwrap());
        }
    }
}
