//! Tanita scales and body-composition analysers: key/value CSV lines (`tanita-kv`,
//! serial-protocols.md §3.1).
//!
//! `{0,16,~0,1,~1,1,~2,1,MO,"SC-240",SN,"00000002",...,Wk,82.7,...,CS,FD\r\n`: comma-separated
//! `key,value` pairs after the `{`; strings in double quotes (commas inside quotes are data);
//! `0,16` and `~n,1` are control pairs and ignored. The last pair is `CS,XX`: two hex digits =
//! the sum of every byte from `{` through the comma before `CS`, mod 256.
//!
//! Readings, in this fixed order: weight (`Wk` kg, `Wp` \[lb_av\], `Wg` g), height (`Hm` cm),
//! BMI (`MI` kg/m2), body fat (`FW` %). `MO` → `device_model`, `SN` → `device_id` (`ID` is a
//! patient/record number, PHI, and stays in `fields`). Every other key goes to `fields` as a
//! string, unquoted.
//!
//! Errors: no leading `{`, an unbalanced quote or an odd number of tokens → `malformed_line`;
//! no `CS` pair → `missing_checksum`; `CS` not last → `malformed_line`; wrong sum →
//! `checksum_mismatch`; a reading that is not a decimal → `malformed_field`; outside its range
//! (weight 0–700 kg / 0–1550 lb / 0–50000 g, height 0–300 cm, BMI 0–200, fat 0–100 %) →
//! `out_of_range`. Lines are capped at 2048 bytes.
//!
//! Departure (tolerance): one third-party sample ends with `}` after the checksum; the decoder
//! accepts a single trailing `}` (the manuals show none; no vector covers it).

use super::line::LineDecoder;
use super::ErrorKind;
use crate::{Decimal, Reading, ReadingType, Record};

/// Longest accepted line (CR LF excluded). The MC-780 sends ~1.3 kB.
pub const MAX_LINE_BYTES: usize = 2048;

/// `tanita-kv` decoder: [`LineDecoder`] around this module's pure line parser.
pub struct TanitaDecoder;

impl TanitaDecoder {
    #[allow(clippy::new_ret_no_self)]
    pub fn new() -> LineDecoder {
        LineDecoder::new(MAX_LINE_BYTES, parse_line)
    }
}

/// Splits `line` (after the `{`) at commas outside quotes: `(byte offset in line, token)`.
fn tokens(line: &[u8]) -> Result<Vec<(usize, &[u8])>, ErrorKind> {
    let mut out = Vec::new();
    let mut start = 1;
    let mut in_quote = false;
    for (i, &b) in line.iter().enumerate().skip(1) {
        match b {
            b'"' => in_quote = !in_quote,
            b',' if !in_quote => {
                out.push((start, line.get(start..i).unwrap_or(&[])));
                start = i + 1;
            }
            _ => {}
        }
    }
    if in_quote {
        return Err(ErrorKind::MalformedLine);
    }
    out.push((start, line.get(start..).unwrap_or(&[])));
    Ok(out)
}

fn unquote(v: &str) -> &str {
    v.strip_prefix('"')
        .and_then(|s| s.strip_suffix('"'))
        .unwrap_or(v)
}

fn parse_line(line: &[u8]) -> Result<Record, ErrorKind> {
    if line.first() != Some(&b'{') {
        return Err(ErrorKind::MalformedLine);
    }
    let toks = tokens(line)?;
    if toks.len() % 2 != 0 {
        return Err(ErrorKind::MalformedLine);
    }
    let pairs: Vec<_> = toks.chunks_exact(2).collect();
    let cs_pos = pairs
        .iter()
        .position(|p| p.first().map(|t| t.1) == Some(b"CS"));
    let Some(cs_pos) = cs_pos else {
        return Err(ErrorKind::MissingChecksum);
    };
    if cs_pos + 1 != pairs.len() {
        return Err(ErrorKind::MalformedLine);
    }
    let (cs_key_at, cs_value) = match pairs.get(cs_pos) {
        Some([(at, _), (_, v)]) => (*at, *v),
        _ => return Err(ErrorKind::MalformedLine),
    };
    let cs_value = cs_value.strip_suffix(b"}").unwrap_or(cs_value);
    let cs_text = std::str::from_utf8(cs_value).map_err(|_| ErrorKind::MalformedField)?;
    if cs_text.len() != 2 {
        return Err(ErrorKind::MalformedField);
    }
    let expected = u8::from_str_radix(cs_text, 16).map_err(|_| ErrorKind::MalformedField)?;
    let covered = line.get(..cs_key_at).unwrap_or(&[]);
    let sum = covered.iter().fold(0u8, |a, &b| a.wrapping_add(b));
    if sum != expected {
        return Err(ErrorKind::ChecksumMismatch);
    }

    let mut r = Record::default();
    let (mut weight, mut height, mut bmi, mut fat) = (None, None, None, None);
    for pair in pairs.get(..cs_pos).unwrap_or(&[]) {
        let [(_, k), (_, v)] = pair else { continue };
        let key = std::str::from_utf8(k).map_err(|_| ErrorKind::MalformedLine)?;
        let value = std::str::from_utf8(v).map_err(|_| ErrorKind::MalformedField)?;
        if key == "0" || key.starts_with('~') {
            continue; // control data for expansion
        }
        let value = unquote(value);
        match key {
            "MO" => r.device_model = Some(value.to_string()),
            "SN" => r.device_id = Some(value.to_string()),
            "Wk" => weight = Some(reading(ReadingType::BodyWeight, value, "kg", 700)?),
            "Wp" => weight = Some(reading(ReadingType::BodyWeight, value, "[lb_av]", 1550)?),
            "Wg" => weight = Some(reading(ReadingType::BodyWeight, value, "g", 50_000)?),
            "Hm" => height = Some(reading(ReadingType::BodyHeight, value, "cm", 300)?),
            "MI" => bmi = Some(reading(ReadingType::Bmi, value, "kg/m2", 200)?),
            "FW" => fat = Some(reading(ReadingType::BodyFatPercentage, value, "%", 100)?),
            _ => {
                r.fields.insert(key.to_string(), value.into());
            }
        }
    }
    r.readings
        .extend([weight, height, bmi, fat].into_iter().flatten());
    Ok(r)
}

fn reading(t: ReadingType, v: &str, unit: &str, max: i64) -> Result<Reading, ErrorKind> {
    let plain = !v.is_empty()
        && v.len() <= 12
        && v.bytes()
            .all(|b| b.is_ascii_digit() || b == b'.' || b == b'-');
    if !plain {
        return Err(ErrorKind::MalformedField);
    }
    let d: Decimal = v.parse().map_err(|_| ErrorKind::MalformedField)?;
    if d.mantissa < 0 || d.cmp_value(Decimal::from_int(max)).is_gt() {
        return Err(ErrorKind::OutOfRange);
    }
    Ok(Reading::new(t, d, unit))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_cs_pair_is_missing_checksum() {
        assert_eq!(
            parse_line(b"{0,16,MO,\"X\",Wk,70.0"),
            Err(ErrorKind::MissingChecksum)
        );
    }

    #[test]
    fn quoted_commas_are_data() {
        let t = tokens(b"{MO,\"A,B\",CS,00").unwrap();
        assert_eq!(t.len(), 4);
        assert_eq!(t[1].1, b"\"A,B\"");
    }

    #[test]
    fn trailing_brace_after_checksum_is_tolerated() {
        let r = parse_line(b"{0,16,~0,1,MO,\"HD-351BT\",Wp,160.4,CS,D9}").unwrap();
        assert_eq!(r.readings.len(), 1);
    }
}
