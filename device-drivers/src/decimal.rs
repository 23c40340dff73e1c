//! Exact decimal numbers: `mantissa × 10^exponent`.
//!
//! IEEE 11073 SFLOAT/FLOAT values, serial-protocol numbers and FHIR `valueQuantity.value` are all
//! decimals. Storing them as `f64` would turn `36.50` into `36.5` and `0.1 + 0.2` into noise; a
//! clinical record keeps the precision the device reported. `Decimal` keeps the mantissa and the
//! exponent exactly as decoded and only converts to `f64` when a caller asks (plausibility
//! ranges, JSON output for humans).
//!
//! Serialisation: in human-readable formats (JSON, TOML) a `Decimal` is written as a number (its
//! `f64` value) and read from a number or a decimal string; in binary formats (postcard) it is the
//! exact `(mantissa, exponent)` pair.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An exact decimal number `mantissa × 10^exponent`.
///
/// Equality is structural (`1.0` with exponent -1 is not `==` to `1` with exponent 0): use
/// [`Decimal::cmp_value`] or [`Decimal::to_f64`] to compare values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Decimal {
    pub mantissa: i64,
    pub exponent: i16,
}

/// Why a string is not a decimal number.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a decimal number: {reason}")]
pub struct ParseDecimalError {
    pub reason: &'static str,
}

impl Decimal {
    pub const fn new(mantissa: i64, exponent: i16) -> Self {
        Self { mantissa, exponent }
    }

    /// An integer value (exponent 0).
    pub const fn from_int(v: i64) -> Self {
        Self::new(v, 0)
    }

    /// The nearest `f64`. Lossy: for display, ranges and tolerance comparisons only.
    pub fn to_f64(self) -> f64 {
        // Parsing the exact decimal string gives the correctly rounded f64 (10^-1 is not exact).
        self.to_string()
            .parse::<f64>()
            .unwrap_or(self.mantissa as f64 * 10f64.powi(i32::from(self.exponent)))
    }

    /// Compares two decimals by value (`1.0 == 1.00 == 1`).
    pub fn cmp_value(self, other: Self) -> std::cmp::Ordering {
        // Bring both to the smaller exponent in i128; exponents are small in practice, and when
        // the scaling would overflow fall back to f64 (values that large are never clinical).
        let e = self.exponent.min(other.exponent);
        match (scale_to(self, e), scale_to(other, e)) {
            (Some(a), Some(b)) => a.cmp(&b),
            _ => self
                .to_f64()
                .partial_cmp(&other.to_f64())
                .unwrap_or(std::cmp::Ordering::Equal),
        }
    }

    /// `self × other`, exact (`None` on overflow).
    pub fn checked_mul(self, other: Self) -> Option<Self> {
        Some(Self::new(
            self.mantissa.checked_mul(other.mantissa)?,
            self.exponent.checked_add(other.exponent)?,
        ))
    }

    /// `self + other`, exact (`None` on overflow).
    pub fn checked_add(self, other: Self) -> Option<Self> {
        let e = self.exponent.min(other.exponent);
        let a = i64::try_from(scale_to(self, e)?).ok()?;
        let b = i64::try_from(scale_to(other, e)?).ok()?;
        Some(Self::new(a.checked_add(b)?, e))
    }

    /// Rounds half away from zero to `digits` fractional digits (e.g. kPa→mmHg to 0.1).
    pub fn round_to(self, digits: i16) -> Self {
        let target = -digits;
        if self.exponent >= target {
            return self;
        }
        let drop = u32::try_from(i32::from(target) - i32::from(self.exponent)).unwrap_or(u32::MAX);
        let Some(div) = 10i128.checked_pow(drop) else {
            return Self::new(0, target);
        };
        let m = i128::from(self.mantissa);
        let q = m / div;
        let r = m % div;
        let q = if r.abs() * 2 >= div {
            q + m.signum()
        } else {
            q
        };
        Self::new(i64::try_from(q).unwrap_or(0), target)
    }

    /// The value as an integer, if it is a whole number that fits (`120.0` → 120, `1.5` → None).
    pub fn to_integer(self) -> Option<i64> {
        let n = self.normalized();
        if n.exponent >= 0 {
            i64::try_from(scale_to(n, 0)?).ok()
        } else {
            None
        }
    }

    /// Removes trailing zeros of the mantissa (`72.450` → `72.45`), keeping the value.
    pub fn normalized(self) -> Self {
        let mut d = self;
        while d.mantissa != 0 && d.mantissa % 10 == 0 && d.exponent < i16::MAX {
            d.mantissa /= 10;
            d.exponent += 1;
        }
        d
    }
}

fn scale_to(d: Decimal, e: i16) -> Option<i128> {
    let diff = u32::try_from(i32::from(d.exponent) - i32::from(e)).ok()?;
    i128::from(d.mantissa).checked_mul(10i128.checked_pow(diff)?)
}

impl fmt::Display for Decimal {
    /// Plain decimal notation with exactly `-exponent` fractional digits: `36.50`, `120`, `0.0056`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let neg = self.mantissa < 0;
        let digits = self.mantissa.unsigned_abs().to_string();
        let sign = if neg { "-" } else { "" };
        if self.exponent >= 0 {
            let zeros = "0".repeat(usize::try_from(self.exponent).unwrap_or(0));
            if self.mantissa == 0 {
                return write!(f, "0");
            }
            return write!(f, "{sign}{digits}{zeros}");
        }
        let frac = usize::try_from(-i32::from(self.exponent)).unwrap_or(0);
        if digits.len() > frac {
            let (int, fr) = digits.split_at(digits.len() - frac);
            write!(f, "{sign}{int}.{fr}")
        } else {
            let pad = "0".repeat(frac - digits.len());
            write!(f, "{sign}0.{pad}{digits}")
        }
    }
}

impl FromStr for Decimal {
    type Err = ParseDecimalError;

    /// Parses `72.45`, `-0.5`, `+001234.5`, `120`, `1.5e3`, `1E-2` exactly.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let (body, exp) = match s.find(['e', 'E']) {
            Some(i) => {
                let (b, e) = s.split_at(i);
                let e = e.get(1..).unwrap_or("");
                let e: i16 = e.parse().map_err(|_| ParseDecimalError {
                    reason: "bad exponent",
                })?;
                (b, e)
            }
            None => (s, 0),
        };
        let (neg, body) = match body.as_bytes().first() {
            Some(b'-') => (true, body.get(1..).unwrap_or("")),
            Some(b'+') => (false, body.get(1..).unwrap_or("")),
            _ => (false, body),
        };
        let (int, frac) = match body.split_once('.') {
            Some((i, f)) => (i, f),
            None => (body, ""),
        };
        if int.is_empty() && frac.is_empty() {
            return Err(ParseDecimalError {
                reason: "no digits",
            });
        }
        if !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit()) {
            return Err(ParseDecimalError {
                reason: "unexpected character",
            });
        }
        let mut mantissa: i64 = 0;
        for b in int.bytes().chain(frac.bytes()) {
            mantissa = mantissa
                .checked_mul(10)
                .and_then(|m| m.checked_add(i64::from(b - b'0')))
                .ok_or(ParseDecimalError {
                    reason: "too many digits",
                })?;
        }
        let frac_len = i16::try_from(frac.len()).map_err(|_| ParseDecimalError {
            reason: "too many digits",
        })?;
        let exponent = exp.checked_sub(frac_len).ok_or(ParseDecimalError {
            reason: "exponent out of range",
        })?;
        Ok(Self::new(if neg { -mantissa } else { mantissa }, exponent))
    }
}

impl Serialize for Decimal {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.serialize_f64(self.to_f64())
        } else {
            (self.mantissa, self.exponent).serialize(s)
        }
    }
}

impl<'de> Deserialize<'de> for Decimal {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            #[derive(Deserialize)]
            #[serde(untagged)]
            enum Human {
                Int(i64),
                Float(f64),
                Text(String),
            }
            match Human::deserialize(d)? {
                Human::Int(i) => Ok(Decimal::from_int(i)),
                // `{}` on f64 prints the shortest string that round-trips: 0.1 -> "0.1".
                Human::Float(f) => format!("{f}").parse().map_err(serde::de::Error::custom),
                Human::Text(t) => t.parse().map_err(serde::de::Error::custom),
            }
        } else {
            let (mantissa, exponent) = <(i64, i16)>::deserialize(d)?;
            Ok(Decimal::new(mantissa, exponent))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_keeps_the_devices_precision() {
        assert_eq!(Decimal::new(3650, -2).to_string(), "36.50");
        assert_eq!(Decimal::new(56, -4).to_string(), "0.0056");
        assert_eq!(Decimal::new(-511, -1).to_string(), "-51.1");
        assert_eq!(Decimal::new(12, 2).to_string(), "1200");
        assert_eq!(Decimal::new(0, -1).to_string(), "0.0");
    }

    #[test]
    fn parse_is_exact() {
        assert_eq!("72.45".parse::<Decimal>(), Ok(Decimal::new(7245, -2)));
        assert_eq!("+001234.5".parse::<Decimal>(), Ok(Decimal::new(12345, -1)));
        assert_eq!("1.5e3".parse::<Decimal>(), Ok(Decimal::new(15, 2)));
        assert!("1.2.3".parse::<Decimal>().is_err());
        assert!("".parse::<Decimal>().is_err());
        assert!("99999999999999999999".parse::<Decimal>().is_err());
    }

    #[test]
    fn value_comparison_ignores_representation() {
        use std::cmp::Ordering;
        assert_eq!(
            Decimal::new(100, 0).cmp_value(Decimal::new(1000, -1)),
            Ordering::Equal
        );
        assert_eq!(
            Decimal::new(189, -1).cmp_value(Decimal::new(19, 0)),
            Ordering::Less
        );
    }

    #[test]
    fn rounding_is_half_away_from_zero() {
        assert_eq!(Decimal::new(12345, -3).round_to(1), Decimal::new(123, -1));
        assert_eq!(Decimal::new(12350, -3).round_to(1), Decimal::new(124, -1));
        assert_eq!(Decimal::new(-12350, -3).round_to(1), Decimal::new(-124, -1));
    }

    #[test]
    fn f64_conversion_is_correctly_rounded() {
        assert_eq!(Decimal::new(189, -1).to_f64(), 18.9);
        assert_eq!(Decimal::new(7235, -2).to_f64(), 72.35);
    }
}
