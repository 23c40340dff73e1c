//! IEEE 11073-20601 SFLOAT (16-bit) and FLOAT (32-bit) medical floats.
//!
//! Layout (IEEE 11073-20601 Annex F; gatt-profiles.md §1), little-endian on air:
//! - **SFLOAT** `u16`: bits 15..12 exponent (4-bit two's complement, -8..=7), bits 11..0 mantissa
//!   (12-bit two's complement, -2048..=2047). Value = mantissa × 10^exponent.
//! - **FLOAT** `u32`: bits 31..24 exponent (`i8`), bits 23..0 mantissa (24-bit two's complement).
//! - Special values are whole-word patterns with exponent 0, checked *before* splitting the word:
//!   NaN `0x07FF`/`0x007FFFFF`, NRes `0x0800`/`0x00800000`, +INF `0x07FE`/`0x007FFFFE`,
//!   -INF `0x0802`/`0x00800002`, Reserved `0x0801`/`0x00800001`. Any other word is a number, so
//!   `0xF7FF` is 204.7, not NaN.
//!
//! Values are kept as exact [`Decimal`]s (mantissa and exponent as sent): `0xF0BD` is `18.9`
//! with exponent -1, never an `f32`. The encoders are for emulated peers and round-trip tests:
//! [`Float11073::to_sfloat`] is exact (or `None`), [`encode_sfloat_rounded`] picks an exponent so
//! the mantissa fits ±2045 (rounding half away from zero, like Nordic's `MutableData`).

use serde::{Serialize, Serializer};

use crate::Decimal;

/// A decoded IEEE 11073 SFLOAT or FLOAT: a number or one of the five special values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Float11073 {
    /// A finite number, exactly `mantissa × 10^exponent` as sent.
    Value(Decimal),
    /// Not a Number (`0x07FF` / `0x007FFFFF`): the device has no valid value.
    NaN,
    /// Not at this resolution (`0x0800` / `0x00800000`).
    NRes,
    /// Positive infinity (`0x07FE` / `0x007FFFFE`): above the measuring range.
    PositiveInfinity,
    /// Negative infinity (`0x0802` / `0x00800002`): below the measuring range.
    NegativeInfinity,
    /// Reserved for future use (`0x0801` / `0x00800001`).
    Reserved,
}

/// SFLOAT special words.
pub mod sfloat_special {
    pub const NAN: u16 = 0x07FF;
    pub const NRES: u16 = 0x0800;
    pub const POSITIVE_INFINITY: u16 = 0x07FE;
    pub const NEGATIVE_INFINITY: u16 = 0x0802;
    pub const RESERVED: u16 = 0x0801;
}

/// FLOAT special words.
pub mod float_special {
    pub const NAN: u32 = 0x007F_FFFF;
    pub const NRES: u32 = 0x0080_0000;
    pub const POSITIVE_INFINITY: u32 = 0x007F_FFFE;
    pub const NEGATIVE_INFINITY: u32 = 0x0080_0002;
    pub const RESERVED: u32 = 0x0080_0001;
}

/// Largest mantissa magnitude an SFLOAT encoder may emit (keeps clear of the special words).
pub const SFLOAT_MAX_MANTISSA: i64 = 2045;
/// Largest mantissa magnitude a FLOAT encoder may emit.
pub const FLOAT_MAX_MANTISSA: i64 = 8_388_605;

impl Float11073 {
    /// Decodes an SFLOAT word (already assembled from its two little-endian octets).
    pub fn from_sfloat(word: u16) -> Self {
        use sfloat_special::*;
        match word {
            NAN => Self::NaN,
            NRES => Self::NRes,
            POSITIVE_INFINITY => Self::PositiveInfinity,
            NEGATIVE_INFINITY => Self::NegativeInfinity,
            RESERVED => Self::Reserved,
            _ => {
                // Sign-extend the 4-bit exponent and the 12-bit mantissa by shifting.
                let exponent = (word as i16) >> 12;
                let mantissa = ((word << 4) as i16) >> 4;
                Self::Value(Decimal::new(i64::from(mantissa), exponent))
            }
        }
    }

    /// Decodes a FLOAT word (already assembled from its four little-endian octets).
    pub fn from_float(word: u32) -> Self {
        use float_special::*;
        match word {
            NAN => Self::NaN,
            NRES => Self::NRes,
            POSITIVE_INFINITY => Self::PositiveInfinity,
            NEGATIVE_INFINITY => Self::NegativeInfinity,
            RESERVED => Self::Reserved,
            _ => {
                let exponent = i16::from((word >> 24) as u8 as i8);
                let mantissa = ((word << 8) as i32) >> 8;
                Self::Value(Decimal::new(i64::from(mantissa), exponent))
            }
        }
    }

    /// The number, or `None` for a special value.
    pub fn value(self) -> Option<Decimal> {
        match self {
            Self::Value(d) => Some(d),
            _ => None,
        }
    }

    /// `true` for NaN, NRes, ±INF and Reserved.
    pub fn is_special(self) -> bool {
        self.value().is_none()
    }

    /// Why there is no number (fhir-mapping.md §2: NaN -> not-a-number, NRes and Reserved ->
    /// error, +INF / -INF -> positive- / negative-infinity); `None` for a number.
    pub fn absent_reason(self) -> Option<crate::record::AbsentReason> {
        use crate::record::AbsentReason as A;
        match self {
            Self::Value(_) => None,
            Self::NaN => Some(A::NotANumber),
            Self::NRes | Self::Reserved => Some(A::Error),
            Self::PositiveInfinity => Some(A::PositiveInfinity),
            Self::NegativeInfinity => Some(A::NegativeInfinity),
        }
    }

    /// The section-0 JSON string of a special value (`"NaN"`, `"NRes"`, `"+INF"`, `"-INF"`,
    /// `"Reserved"`); `None` for a number.
    pub fn special_name(self) -> Option<&'static str> {
        match self {
            Self::Value(_) => None,
            Self::NaN => Some("NaN"),
            Self::NRes => Some("NRes"),
            Self::PositiveInfinity => Some("+INF"),
            Self::NegativeInfinity => Some("-INF"),
            Self::Reserved => Some("Reserved"),
        }
    }

    /// Encodes exactly as an SFLOAT word, or `None` when the value cannot be represented
    /// without rounding or only as a word that means a special value (e.g. 2047 × 10^0).
    /// A decoded word re-encodes to itself (see [`encode_sfloat_rounded`] for the lossy encoder).
    pub fn to_sfloat(self) -> Option<u16> {
        use sfloat_special::*;
        match self {
            Self::NaN => Some(NAN),
            Self::NRes => Some(NRES),
            Self::PositiveInfinity => Some(POSITIVE_INFINITY),
            Self::NegativeInfinity => Some(NEGATIVE_INFINITY),
            Self::Reserved => Some(RESERVED),
            Self::Value(d) => {
                let (m, e) = fit_exact(d, -2048, 2047, -8, 7)?;
                let w = pack_sfloat(m, e);
                (Self::from_sfloat(w) == self).then_some(w)
            }
        }
    }

    /// Encodes exactly as a FLOAT word, or `None` when not representable without rounding.
    pub fn to_float(self) -> Option<u32> {
        use float_special::*;
        match self {
            Self::NaN => Some(NAN),
            Self::NRes => Some(NRES),
            Self::PositiveInfinity => Some(POSITIVE_INFINITY),
            Self::NegativeInfinity => Some(NEGATIVE_INFINITY),
            Self::Reserved => Some(RESERVED),
            Self::Value(d) => {
                let (m, e) = fit_exact(d, -0x80_0000, 0x7F_FFFF, -128, 127)?;
                let w = pack_float(m, e);
                (Self::from_float(w) == self).then_some(w)
            }
        }
    }
}

/// Encodes a decimal as SFLOAT, dropping precision (round half away from zero) until the
/// mantissa fits ±2045. `None` when the magnitude is too large (exponent would exceed 7).
/// Example: 123.45 → `0xF4D3` (123.5), as Nordic's `setValue_SFLOAT_roundUp`.
pub fn encode_sfloat_rounded(d: Decimal) -> Option<u16> {
    let (m, e) = fit_rounded(d, SFLOAT_MAX_MANTISSA, -8, 7)?;
    Some(pack_sfloat(m, e))
}

/// Encodes a decimal as FLOAT, rounding until the mantissa fits ±8388605.
pub fn encode_float_rounded(d: Decimal) -> Option<u32> {
    let (m, e) = fit_rounded(d, FLOAT_MAX_MANTISSA, -128, 127)?;
    Some(pack_float(m, e))
}

fn pack_sfloat(m: i64, e: i64) -> u16 {
    (((e as u16) & 0xF) << 12) | ((m as u16) & 0x0FFF)
}

fn pack_float(m: i64, e: i64) -> u32 {
    (((e as u32) & 0xFF) << 24) | ((m as u32) & 0x00FF_FFFF)
}

/// Finds (mantissa, exponent) with |mantissa| <= max and exponent in range, same value.
/// A word that would collide with a special value is rejected by the caller's re-decode check.
fn fit_exact(d: Decimal, lo: i64, hi: i64, emin: i64, emax: i64) -> Option<(i64, i64)> {
    let mut m = d.mantissa;
    let mut e = i64::from(d.exponent);
    if m == 0 {
        return Some((0, e.clamp(emin, emax)));
    }
    // Drop trailing zeros while the mantissa is out of range or the exponent too small.
    while (m < lo || m > hi || e < emin) && m % 10 == 0 {
        m /= 10;
        e += 1;
    }
    // Scale the mantissa up while the exponent is too large.
    while e > emax {
        m = m.checked_mul(10)?;
        e -= 1;
    }
    (m >= lo && m <= hi && e >= emin).then_some((m, e))
}

fn fit_rounded(d: Decimal, max: i64, emin: i64, emax: i64) -> Option<(i64, i64)> {
    let m0 = i128::from(d.mantissa);
    let e0 = i64::from(d.exponent);
    let max = i128::from(max);
    // Round once, by the smallest number of dropped digits that fits (no double rounding:
    // 682445 -> 682e3, not 683e3).
    let mut m = m0;
    let mut e = e0;
    let mut k: u32 = 0;
    while m != 0 && (m.abs() > max || e < emin) {
        k += 1;
        let div = 10i128.checked_pow(k)?;
        let q = m0 / div;
        let r = m0 % div;
        m = if r.abs() * 2 >= div {
            q + m0.signum()
        } else {
            q
        };
        e = e0 + i64::from(k);
    }
    if m == 0 {
        return Some((0, e.clamp(emin, emax)));
    }
    while e > emax {
        m = m.checked_mul(10)?;
        e -= 1;
    }
    if m.abs() > max {
        return None;
    }
    Some((i64::try_from(m).ok()?, e))
}

impl Serialize for Float11073 {
    /// A number (the decimal's value) or the special value's string, as section 0 requires.
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Value(d) => d.serialize(s),
            other => s.serialize_str(other.special_name().unwrap_or("Reserved")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sf(b: [u8; 2]) -> Float11073 {
        Float11073::from_sfloat(u16::from_le_bytes(b))
    }

    #[test]
    fn worked_examples_of_section_1() {
        assert_eq!(sf([0x78, 0x00]), Float11073::Value(Decimal::new(120, 0)));
        assert_eq!(sf([0xbd, 0xf0]), Float11073::Value(Decimal::new(189, -1)));
        assert_eq!(sf([0x01, 0xfe]), Float11073::Value(Decimal::new(-511, -1)));
        assert_eq!(sf([0xff, 0xf7]), Float11073::Value(Decimal::new(2047, -1)));
        assert_eq!(sf([0x78, 0x80]), Float11073::Value(Decimal::new(120, -8)));
        assert_eq!(sf([0xff, 0x07]), Float11073::NaN);
        let f = |b: [u8; 4]| Float11073::from_float(u32::from_le_bytes(b));
        assert_eq!(
            f([0xb0, 0x0e, 0x00, 0xfe]),
            Float11073::Value(Decimal::new(3760, -2))
        );
        assert_eq!(
            f([0xff, 0x02, 0xfd, 0x04]),
            Float11073::Value(Decimal::new(-195_841, 4))
        );
        assert_eq!(f([0x01, 0x00, 0x80, 0x00]), Float11073::Reserved);
    }

    #[test]
    fn rounded_encoder_matches_nordic() {
        assert_eq!(encode_sfloat_rounded(Decimal::new(12345, -2)), Some(0xF4D3));
        assert_eq!(encode_sfloat_rounded(Decimal::new(2047, 0)), Some(0x10CD));
        // Rounded once, not digit by digit (found by the property test): 682445 -> 682e3.
        assert_eq!(
            Float11073::from_sfloat(encode_sfloat_rounded(Decimal::new(682_445, 0)).unwrap()),
            Float11073::Value(Decimal::new(682, 3))
        );
    }
}
