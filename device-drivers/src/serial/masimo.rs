//! Masimo Rad-8 / Radical-5/7 "ASCII 1" serial output (`masimo-ascii1`, serial-protocols.md §2).
//!
//! One line per second: `MM/DD/YY HH:MM:SS` then space-separated `KEY=VALUE` tokens, parsed by
//! key name (never by position; unknown keys are ignored). One trailing `%` is a unit suffix.
//! A value made only of `-`, `+`, `.` with at least one `-` is the missing marker. `EXC` bits
//! become flags; `ALARM` is kept raw in `fields` (its bits are not public); `SN` is the device id.
//!
//! Errors: a line without the leading timestamp or with a token lacking `=` → `malformed_line`;
//! an impossible date or unparsable value → `malformed_field`; a value outside its range →
//! `out_of_range`. The whole line is rejected on any error. Lines are capped at 512 bytes.

use serde_json::{json, Value};

use super::line::LineDecoder;
use super::ErrorKind;
use crate::{Decimal, DeviceTime, Reading, ReadingType, Record, Status};

/// Longest accepted line (CR LF excluded).
pub const MAX_LINE_BYTES: usize = 512;

/// `masimo-ascii1` decoder: [`LineDecoder`] around this module's pure line parser.
pub struct MasimoDecoder;

impl MasimoDecoder {
    #[allow(clippy::new_ret_no_self)]
    pub fn new() -> LineDecoder {
        LineDecoder::new(MAX_LINE_BYTES, parse_line)
    }
}

/// How a key's value is read.
#[derive(Clone, Copy)]
enum Kind {
    /// Unsigned integer reading.
    Int(ReadingType, &'static str, i64),
    /// Unsigned decimal reading.
    Dec(ReadingType, &'static str, i64),
}

fn reading_key(key: &str) -> Option<Kind> {
    use ReadingType as T;
    Some(match key {
        "SPO2" => Kind::Int(T::Spo2, "%", 100),
        "BPM" => Kind::Int(T::PulseRate, "/min", 400),
        "PI" => Kind::Dec(T::PerfusionIndex, "%", 100),
        "SPCO" => Kind::Dec(T::Spco, "%", 100),
        "SPMET" => Kind::Dec(T::Spmet, "%", 100),
        "SPHB" => Kind::Dec(T::Sphb, "g/dL", 40),
        "PVI" => Kind::Int(T::Pvi, "%", 100),
        _ => return None,
    })
}

/// `---`, `--.-`, `+--`, ...: only `-+.` with at least one `-`.
fn is_missing(v: &str) -> bool {
    v.contains('-') && v.bytes().all(|b| matches!(b, b'-' | b'+' | b'.'))
}

fn digits(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

fn two(b: &[u8], at: usize) -> Option<u8> {
    let (x, y) = (*b.get(at)?, *b.get(at + 1)?);
    (x.is_ascii_digit() && y.is_ascii_digit()).then(|| (x - b'0') * 10 + (y - b'0'))
}

fn parse_timestamp(b: &[u8]) -> Result<DeviceTime, ErrorKind> {
    // "MM/DD/YY HH:MM:SS"
    let seps = [(2, b'/'), (5, b'/'), (8, b' '), (11, b':'), (14, b':')];
    if b.len() < 17 || seps.iter().any(|&(i, c)| b.get(i) != Some(&c)) {
        return Err(ErrorKind::MalformedLine);
    }
    let f = |i| two(b, i).ok_or(ErrorKind::MalformedLine);
    let (mo, d, y, h, mi, s) = (f(0)?, f(3)?, f(6)?, f(9)?, f(12)?, f(15)?);
    DeviceTime::new(2000 + u16::from(y), mo, d, h, mi, s).ok_or(ErrorKind::MalformedField)
}

fn parse_line(line: &[u8]) -> Result<Record, ErrorKind> {
    let text = std::str::from_utf8(line).map_err(|_| ErrorKind::MalformedLine)?;
    let time = parse_timestamp(line)?;
    let rest = text.get(17..).ok_or(ErrorKind::MalformedLine)?;
    if !rest.is_empty() && !rest.starts_with(' ') {
        return Err(ErrorKind::MalformedLine);
    }
    let mut r = Record {
        device_time: Some(time),
        ..Record::default()
    };
    let mut tokens = 0;
    for token in rest.split(' ').filter(|t| !t.is_empty()) {
        let (key, raw) = token.split_once('=').ok_or(ErrorKind::MalformedLine)?;
        tokens += 1;
        let value = raw.strip_suffix('%').unwrap_or(raw);
        if let Some(kind) = reading_key(key) {
            let (t, unit, max, parsed) = match kind {
                Kind::Int(t, unit, max) => (t, unit, max, parse_int(value)),
                Kind::Dec(t, unit, max) => (t, unit, max, parse_dec(value)),
            };
            match parsed? {
                None => {
                    if !r.missing.contains(&t) {
                        r.missing.push(t);
                    }
                }
                Some(v) => {
                    if v.cmp_value(Decimal::from_int(max)).is_gt() {
                        return Err(ErrorKind::OutOfRange);
                    }
                    r.readings.push(Reading::new(t, v, unit));
                }
            }
            continue;
        }
        match key {
            "SN" => {
                if value.is_empty() {
                    return Err(ErrorKind::MalformedField);
                }
                // A dashed serial ("----------") is "no serial", not an id.
                if !is_missing(value) {
                    r.device_id = Some(value.to_string());
                }
            }
            "DESAT" => {
                let v = parse_int(value)?.map(|d| json!(d.mantissa));
                r.fields.insert("desat".into(), v.unwrap_or(Value::Null));
            }
            "PIDELTA" => {
                let v = parse_signed(value)?;
                r.fields
                    .insert("pidelta".into(), v.map_or(Value::Null, |d| json!(d)));
            }
            "ALARM" => {
                r.fields.insert("alarm".into(), json!(parse_hex(value)?));
            }
            "EXC" => {
                let exc = parse_hex(value)?;
                r.fields.insert("exc".into(), json!(exc));
                add_exc_flags(&mut r, exc);
            }
            "EXC1" => {
                r.fields.insert("exc1".into(), json!(parse_hex(value)?));
            }
            _ => {}
        }
    }
    if tokens == 0 {
        return Err(ErrorKind::MalformedLine);
    }
    Ok(r)
}

fn parse_int(v: &str) -> Result<Option<Decimal>, ErrorKind> {
    if is_missing(v) {
        return Ok(None);
    }
    if !digits(v) || v.len() > 9 {
        return Err(ErrorKind::MalformedField);
    }
    let n: i64 = v.parse().map_err(|_| ErrorKind::MalformedField)?;
    Ok(Some(Decimal::from_int(n)))
}

fn parse_dec(v: &str) -> Result<Option<Decimal>, ErrorKind> {
    if is_missing(v) {
        return Ok(None);
    }
    let ok = v.bytes().all(|b| b.is_ascii_digit() || b == b'.') && v.bytes().any(|b| b != b'.');
    if !ok || v.len() > 12 {
        return Err(ErrorKind::MalformedField);
    }
    v.parse::<Decimal>()
        .map(Some)
        .map_err(|_| ErrorKind::MalformedField)
}

fn parse_signed(v: &str) -> Result<Option<i64>, ErrorKind> {
    if is_missing(v) {
        return Ok(None);
    }
    let body = v.strip_prefix(['+', '-']).unwrap_or(v);
    if !digits(body) || body.len() > 9 {
        return Err(ErrorKind::MalformedField);
    }
    v.parse::<i64>()
        .map(Some)
        .map_err(|_| ErrorKind::MalformedField)
}

fn parse_hex(v: &str) -> Result<u64, ErrorKind> {
    if v.is_empty() || v.len() > 16 || !v.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ErrorKind::MalformedField);
    }
    u64::from_str_radix(v, 16).map_err(|_| ErrorKind::MalformedField)
}

/// Exception bits of the Rad-8 manual (§2.3).
const EXC_FLAGS: [(u64, Status); 10] = [
    (0x001, Status::NoSensor),
    (0x002, Status::DefectiveSensor),
    (0x004, Status::LowPerfusion),
    (0x008, Status::PulseSearch),
    (0x010, Status::Interference),
    (0x020, Status::SensorOff),
    (0x040, Status::AmbientLight),
    (0x080, Status::UnrecognizedSensor),
    (0x400, Status::LowSignalIq),
    (0x800, Status::MasimoSet),
];

fn add_exc_flags(r: &mut Record, exc: u64) {
    let mut known = 0;
    for (bit, flag) in EXC_FLAGS {
        known |= bit;
        if exc & bit != 0 {
            r.add_flag(flag);
        }
    }
    if exc & !known != 0 {
        r.add_flag(Status::ExcOther);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_markers() {
        for m in ["---", "--.-", "--.--", "--", "+--", "----------"] {
            assert!(is_missing(m), "{m}");
        }
        for m in ["", "+", ".", "098", "-02"] {
            assert!(!is_missing(m), "{m}");
        }
    }

    #[test]
    fn impossible_date_is_a_malformed_field() {
        let line = b"13/22/16 22:47:45 SPO2=098%";
        assert_eq!(parse_line(line), Err(ErrorKind::MalformedField));
    }

    #[test]
    fn spo2_above_100_is_rejected() {
        let line = b"02/22/16 22:47:45 SPO2=101% BPM=097";
        assert_eq!(parse_line(line), Err(ErrorKind::OutOfRange));
    }

    #[test]
    fn dashed_serial_is_no_device_id() {
        let r = parse_line(b"02/22/16 22:47:45 SN=---------- SPO2=098%").unwrap();
        assert_eq!(r.device_id, None);
    }

    #[test]
    fn unknown_exc_bits_become_exc_other() {
        let r = parse_line(b"02/22/16 22:47:45 EXC=001900").unwrap();
        assert_eq!(r.flags, vec![Status::ExcOther, Status::MasimoSet]);
    }
}
