//! Shared helpers for tests that check the section-0 decoded form of gatt-profiles.md
//! (used by `gatt_vectors.rs`; the agent's CLI test can `#[path]`-include this file).
#![allow(dead_code)]

use serde_json::Value;

/// Section-0 matching rule: every key of `expected` must match; a key absent from `expected`
/// must be absent from `actual` (at every nesting level); numbers compare by value with a
/// relative tolerance of 1e-9 through `as_f64()` (never `serde_json::Number` equality, which
/// differs under the `arbitrary_precision` feature); everything else compares exactly.
///
/// # Errors
/// A message naming the JSON path of the first mismatch.
pub fn match_expected(expected: &Value, actual: &Value) -> Result<(), String> {
    match_at("$", expected, actual)
}

fn match_at(path: &str, expected: &Value, actual: &Value) -> Result<(), String> {
    match (expected, actual) {
        (Value::Object(e), Value::Object(a)) => {
            for (k, ev) in e {
                let p = format!("{path}.{k}");
                let av = a
                    .get(k)
                    .ok_or_else(|| format!("{p}: missing (expected {ev})"))?;
                match_at(&p, ev, av)?;
            }
            for (k, av) in a {
                if !e.contains_key(k) {
                    return Err(format!("{path}.{k}: unexpected key (value {av})"));
                }
            }
            Ok(())
        }
        (Value::Array(e), Value::Array(a)) => {
            if e.len() != a.len() {
                return Err(format!(
                    "{path}: expected {} elements, got {}",
                    e.len(),
                    a.len()
                ));
            }
            for (i, (ev, av)) in e.iter().zip(a).enumerate() {
                match_at(&format!("{path}[{i}]"), ev, av)?;
            }
            Ok(())
        }
        (Value::Number(e), Value::Number(a)) => {
            let (Some(e), Some(a)) = (e.as_f64(), a.as_f64()) else {
                return Err(format!("{path}: number not representable as f64"));
            };
            if numbers_match(e, a) {
                Ok(())
            } else {
                Err(format!("{path}: expected {e}, got {a}"))
            }
        }
        (e, a) if e == a => Ok(()),
        (e, a) => Err(format!("{path}: expected {e}, got {a}")),
    }
}

/// Relative tolerance 1e-9 (absolute 1e-12 around zero).
pub fn numbers_match(e: f64, a: f64) -> bool {
    if e == a {
        return true;
    }
    let scale = e.abs().max(a.abs());
    (e - a).abs() <= 1e-9 * scale || (e - a).abs() <= 1e-12
}

/// Parses a hex string (`"1e8a00"`, whitespace ignored).
pub fn hex(s: &str) -> Vec<u8> {
    let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    (0..s.len() / 2)
        .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).expect("hex"))
        .collect()
}

/// Parses `"0x2A35"`.
pub fn characteristic(s: &str) -> u16 {
    u16::from_str_radix(s.trim_start_matches("0x").trim_start_matches("0X"), 16)
        .expect("characteristic")
}

/// The vectors, embedded at compile time (tests never read /work/shared at run time).
pub const GATT_VECTORS: &str = include_str!("../../testdata/gatt-vectors.json");

pub fn vectors() -> Vec<Value> {
    match serde_json::from_str::<Value>(GATT_VECTORS).expect("vectors parse") {
        Value::Array(v) => v,
        other => panic!("vectors are not an array: {other}"),
    }
}
