//! Test support for the serial decoders: the vectors' matcher and input helpers.
//!
//! Conventions (testdata/serial-vectors.json `conventions`): records are compared by the keys the
//! expected record lists; `fields` asserts only the keys it lists; `device_id: null` (or any
//! listed key with `null` outside `fields`) asserts absence; numbers are compared through
//! `as_f64()` with tolerance 1e-9, never through `serde_json::Number` equality (the workspace
//! may enable serde_json `arbitrary_precision`, under which `97` and `97.0` differ).
#![allow(dead_code)]

use serde_json::Value;

const TOLERANCE: f64 = 1e-9;

/// Compares a decoder's output (`decode_all_to_json` form) with a vector's `expected`.
pub fn match_expected(expected: &Value, actual: &Value) -> Result<(), String> {
    let exp = expected.as_object().ok_or("expected is not an object")?;
    let act = actual.as_object().ok_or("actual is not an object")?;
    let records = act
        .get("records")
        .and_then(Value::as_array)
        .ok_or("actual has no records array")?;
    let errors = act
        .get("errors")
        .and_then(Value::as_array)
        .ok_or("actual has no errors array")?;

    if let Some(kind) = exp.get("error") {
        // Single malformed message: nothing emitted, exactly that one error.
        if !records.is_empty() {
            return Err(format!("expected no record, got {}", records.len()));
        }
        if errors.len() != 1 || errors.first() != Some(kind) {
            return Err(format!("expected errors [{kind}], got {errors:?}"));
        }
        return Ok(());
    }

    let exp_records = exp
        .get("records")
        .and_then(Value::as_array)
        .ok_or("expected has no records")?;
    if exp_records.len() != records.len() {
        return Err(format!(
            "expected {} records, got {}: {actual}",
            exp_records.len(),
            records.len()
        ));
    }
    for (i, (e, a)) in exp_records.iter().zip(records).enumerate() {
        match_record(e, a).map_err(|m| format!("record {i}: {m}"))?;
    }
    if let Some(exp_errors) = exp.get("errors") {
        if exp_errors != &Value::Array(errors.clone()) {
            return Err(format!("errors: expected {exp_errors}, got {errors:?}"));
        }
    }
    for counter in ["bytes_discarded", "frames_ok"] {
        if let Some(e) = exp.get(counter) {
            let a = act.get(counter).ok_or(format!("actual has no {counter}"))?;
            match_value(e, a).map_err(|m| format!("{counter}: {m}"))?;
        }
    }
    Ok(())
}

fn match_record(e: &Value, a: &Value) -> Result<(), String> {
    let e = e.as_object().ok_or("expected record is not an object")?;
    let a = a.as_object().ok_or("actual record is not an object")?;
    for (key, ev) in e {
        let av = a.get(key);
        if key == "fields" {
            let ef = ev.as_object().ok_or("expected fields is not an object")?;
            let af = av
                .and_then(Value::as_object)
                .ok_or("actual record has no fields")?;
            for (fk, fv) in ef {
                let got = af.get(fk).ok_or(format!("fields.{fk} absent"))?;
                match_value(fv, got).map_err(|m| format!("fields.{fk}: {m}"))?;
            }
            continue;
        }
        match (ev, av) {
            (Value::Null, None | Some(Value::Null)) => {}
            (Value::Null, Some(v)) => return Err(format!("{key}: expected absent, got {v}")),
            (_, None) => return Err(format!("{key}: absent")),
            (_, Some(v)) => match_value(ev, v).map_err(|m| format!("{key}: {m}"))?,
        }
    }
    Ok(())
}

/// Structural equality with numbers compared as f64 within the tolerance.
pub fn match_value(e: &Value, a: &Value) -> Result<(), String> {
    match (e, a) {
        (Value::Number(x), Value::Number(y)) => {
            let (x, y) = (
                x.as_f64().ok_or("expected number not representable")?,
                y.as_f64().ok_or("actual number not representable")?,
            );
            if (x - y).abs() <= TOLERANCE {
                Ok(())
            } else {
                Err(format!("expected {x}, got {y}"))
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            if x.len() != y.len() {
                return Err(format!("expected {} items, got {}: {a}", x.len(), y.len()));
            }
            for (i, (p, q)) in x.iter().zip(y).enumerate() {
                match_value(p, q).map_err(|m| format!("[{i}]: {m}"))?;
            }
            Ok(())
        }
        (Value::Object(x), Value::Object(y)) => {
            if x.len() != y.len() {
                return Err(format!("expected {e}, got {a}"));
            }
            for (k, v) in x {
                let w = y.get(k).ok_or(format!("{k} absent"))?;
                match_value(v, w).map_err(|m| format!("{k}: {m}"))?;
            }
            Ok(())
        }
        _ if e == a => Ok(()),
        _ => Err(format!("expected {e}, got {a}")),
    }
}

/// The vector's input as bytes (`text` = latin-1 characters, `hex` = byte stream).
pub fn input_bytes(v: &Value, key: &str) -> Vec<u8> {
    let s = v[key].as_str().unwrap_or_default();
    decode_input(v, s)
}

pub fn decode_input(v: &Value, s: &str) -> Vec<u8> {
    if v.get("input_encoding").and_then(Value::as_str) == Some("hex") {
        (0..s.len() / 2)
            .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).expect("hex"))
            .collect()
    } else {
        s.chars()
            .map(|c| u8::try_from(u32::from(c)).expect("latin-1"))
            .collect()
    }
}

/// The vectors shipped with the crate.
pub fn vectors() -> Vec<Value> {
    let doc: Value = serde_json::from_str(include_str!("../../testdata/serial-vectors.json"))
        .expect("vectors parse");
    doc["vectors"].as_array().expect("vectors array").clone()
}

#[cfg(test)]
mod self_tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn matcher_compares_numbers_by_value() {
        assert!(match_value(&json!(97), &json!(97.0)).is_ok());
        assert!(match_value(&json!(3.6), &json!(3.6000000000001)).is_ok());
        assert!(match_value(&json!(3.6), &json!(3.7)).is_err());
    }
}
