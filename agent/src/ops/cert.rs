//! The expiry date (`notAfter`) of an X.509 certificate, for the status, the
//! `certificate_expiring` alarm and `doctor`.
//!
//! A small DER walk rather than an X.509 crate: we need one field at a fixed place
//! (`Certificate → tbsCertificate → validity → notAfter`, RFC 5280 §4.1), and a full parser
//! (x509-parser with nom and asn1-rs) would cost about as much binary size as everything
//! else this issue adds, on a 6 MB budget. The walk checks every length against the buffer
//! and returns a typed error on anything unexpected; the tests compare it with x509-parser on
//! certificates on both sides of the UTCTime/GeneralizedTime boundary (2050).

use std::path::Path;

use chrono::{DateTime, NaiveDate, Utc};

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum CertError {
    #[error("cannot read {0}")]
    Read(String),
    #[error("no PEM certificate in the file")]
    NoCertificate,
    #[error("not a DER certificate ({0})")]
    Malformed(&'static str),
}

/// `notAfter` of the first certificate of a PEM file (the leaf of a chain).
///
/// # Errors
///
/// [`CertError`]: unreadable file, no certificate, malformed DER.
pub fn not_after_pem_file(path: &Path) -> Result<DateTime<Utc>, CertError> {
    let bytes =
        std::fs::read(path).map_err(|e| CertError::Read(format!("{}: {e}", path.display())))?;
    let mut reader = std::io::BufReader::new(&bytes[..]);
    let first = rustls_pemfile::certs(&mut reader)
        .next()
        .ok_or(CertError::NoCertificate)?
        .map_err(|_| CertError::NoCertificate)?;
    not_after_der(first.as_ref())
}

/// `notAfter` of a DER certificate.
///
/// # Errors
///
/// [`CertError::Malformed`] naming what was not as expected.
pub fn not_after_der(der: &[u8]) -> Result<DateTime<Utc>, CertError> {
    let f = tbs_fields(der)?;
    let (_, _, after_not_before) = tlv(f.validity)?;
    let (tag, value, _) = tlv(after_not_before)?;
    parse_time(tag, value)
}

/// What `check-uplink` prints for one certificate of the server's chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertSummary {
    /// The subject's common attributes, e.g. `CN=fhir.example, O=Hospital` (RFC 4514 order
    /// reversed as x509-parser and OpenSSL print it: as they appear in the certificate).
    pub subject: String,
    pub issuer: String,
    pub not_after: DateTime<Utc>,
}

/// Subject, issuer and `notAfter` of a DER certificate. Names show CN, O, OU, C, L, ST (other
/// attributes are left out).
///
/// # Errors
///
/// [`CertError::Malformed`] naming what was not as expected.
pub fn summary_der(der: &[u8]) -> Result<CertSummary, CertError> {
    let f = tbs_fields(der)?;
    Ok(CertSummary {
        subject: name_string(f.subject)?,
        issuer: name_string(f.issuer)?,
        not_after: not_after_der(der)?,
    })
}

/// The contents of the tbsCertificate fields `check-uplink` reads.
struct TbsFields<'a> {
    issuer: &'a [u8],
    validity: &'a [u8],
    subject: &'a [u8],
}

fn tbs_fields(der: &[u8]) -> Result<TbsFields<'_>, CertError> {
    let (tag, cert, _) = tlv(der)?;
    expect(tag, 0x30, "Certificate is not a SEQUENCE")?;
    let (tag, tbs, _) = tlv(cert)?;
    expect(tag, 0x30, "tbsCertificate is not a SEQUENCE")?;
    let mut rest = tbs;
    // [0] EXPLICIT version, optional.
    let (tag, _, after) = tlv(rest)?;
    if tag == 0xA0 {
        rest = after;
    }
    // serialNumber, signature.
    for (want, what) in [
        (0x02, "serialNumber is not an INTEGER"),
        (0x30, "signature is not a SEQUENCE"),
    ] {
        let (tag, _, after) = tlv(rest)?;
        expect(tag, want, what)?;
        rest = after;
    }
    let (tag, issuer, rest) = tlv(rest)?;
    expect(tag, 0x30, "issuer is not a SEQUENCE")?;
    let (tag, validity, rest) = tlv(rest)?;
    expect(tag, 0x30, "validity is not a SEQUENCE")?;
    let (tag, subject, _) = tlv(rest)?;
    expect(tag, 0x30, "subject is not a SEQUENCE")?;
    Ok(TbsFields {
        issuer,
        validity,
        subject,
    })
}

/// An X.501 Name (the contents of its RDNSequence) as `CN=.., O=..`.
fn name_string(mut rdns: &[u8]) -> Result<String, CertError> {
    let mut parts = Vec::new();
    while !rdns.is_empty() {
        let (tag, set, after) = tlv(rdns)?;
        expect(tag, 0x31, "a name's RDN is not a SET")?;
        rdns = after;
        let mut atvs = set;
        while !atvs.is_empty() {
            let (tag, atv, after) = tlv(atvs)?;
            expect(tag, 0x30, "an attribute of a name is not a SEQUENCE")?;
            atvs = after;
            let (tag, oid, value) = tlv(atv)?;
            expect(tag, 0x06, "an attribute type is not an OID")?;
            let (_, value, _) = tlv(value)?;
            let label = match oid {
                [0x55, 0x04, 0x03] => "CN",
                [0x55, 0x04, 0x0A] => "O",
                [0x55, 0x04, 0x0B] => "OU",
                [0x55, 0x04, 0x06] => "C",
                [0x55, 0x04, 0x07] => "L",
                [0x55, 0x04, 0x08] => "ST",
                _ => continue,
            };
            parts.push(format!("{label}={}", String::from_utf8_lossy(value)));
        }
    }
    Ok(parts.join(", "))
}

fn expect(tag: u8, want: u8, what: &'static str) -> Result<(), CertError> {
    if tag == want {
        Ok(())
    } else {
        Err(CertError::Malformed(what))
    }
}

/// One DER element: (tag, contents, the bytes after it).
fn tlv(buf: &[u8]) -> Result<(u8, &[u8], &[u8]), CertError> {
    let short = CertError::Malformed("truncated");
    let (&tag, rest) = buf.split_first().ok_or(short.clone())?;
    let (&first, rest) = rest.split_first().ok_or(short.clone())?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 {
            return Err(CertError::Malformed("unsupported length form"));
        }
        let bytes = rest.get(..n).ok_or(short.clone())?;
        let len = bytes
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, rest.get(n..).ok_or(short.clone())?)
    };
    let contents = rest.get(..len).ok_or(short.clone())?;
    let after = rest.get(len..).ok_or(short)?;
    Ok((tag, contents, after))
}

/// UTCTime (`YYMMDDHHMMSSZ`, RFC 5280: 50-99 → 19xx) or GeneralizedTime (`YYYYMMDDHHMMSSZ`).
fn parse_time(tag: u8, value: &[u8]) -> Result<DateTime<Utc>, CertError> {
    let s = std::str::from_utf8(value).map_err(|_| CertError::Malformed("time is not ASCII"))?;
    let bad = || CertError::Malformed("time is not YYMMDDHHMMSSZ / YYYYMMDDHHMMSSZ");
    let digits = s.strip_suffix('Z').ok_or_else(bad)?;
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let num = |r: std::ops::Range<usize>| -> Result<u32, CertError> {
        digits.get(r).and_then(|d| d.parse().ok()).ok_or_else(bad)
    };
    let (year, rest) = match (tag, digits.len()) {
        (0x17, 12) => {
            let yy = num(0..2)?;
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, 2)
        }
        (0x18, 14) => (num(0..4)?, 4),
        (0x17 | 0x18, _) => return Err(bad()),
        _ => return Err(CertError::Malformed("notAfter is not a time")),
    };
    let field = |i: usize| num(rest + 2 * i..rest + 2 * i + 2);
    let (month, day, h, m, sec) = (field(0)?, field(1)?, field(2)?, field(3)?, field(4)?);
    let date = NaiveDate::from_ymd_opt(i32::try_from(year).map_err(|_| bad())?, month, day)
        .and_then(|d| d.and_hms_opt(h, m, sec))
        .ok_or_else(bad)?;
    Ok(date.and_utc())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert_until(year: i32) -> Vec<u8> {
        let mut params = rcgen::CertificateParams::new(vec!["gw.example".into()]).unwrap();
        params.not_after = rcgen::date_time_ymd(year, 3, 4);
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn not_after_matches_x509_parser_on_both_sides_of_2050() {
        for year in [2027, 2049, 2050, 2100] {
            let der = cert_until(year);
            let ours = not_after_der(&der).unwrap();
            let (_, theirs) = x509_parser::parse_x509_certificate(&der).unwrap();
            let theirs = theirs.validity().not_after.timestamp();
            assert_eq!(ours.timestamp(), theirs, "{year}");
            assert_eq!(ours.format("%Y-%m-%d").to_string(), format!("{year}-03-04"));
        }
    }

    #[test]
    fn subject_and_issuer_match_x509_parser() {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca.distinguished_name = rcgen::DistinguishedName::new();
        ca.distinguished_name
            .push(rcgen::DnType::CommonName, "Clinic Test CA");
        ca.distinguished_name
            .push(rcgen::DnType::OrganizationName, "Clinic");
        let issuer = rcgen::Issuer::from_params(&ca, &ca_key);
        let mut leaf = rcgen::CertificateParams::new(vec!["fhir.example".into()]).unwrap();
        leaf.distinguished_name = rcgen::DistinguishedName::new();
        leaf.distinguished_name
            .push(rcgen::DnType::CommonName, "fhir.example");
        leaf.not_after = rcgen::date_time_ymd(2031, 5, 6);
        let key = rcgen::KeyPair::generate().unwrap();
        let der = leaf.signed_by(&key, &issuer).unwrap().der().to_vec();
        let s = summary_der(&der).unwrap();
        let (_, theirs) = x509_parser::parse_x509_certificate(&der).unwrap();
        assert_eq!(s.subject, theirs.subject().to_string());
        assert_eq!(s.issuer, theirs.issuer().to_string());
        assert_eq!(s.subject, "CN=fhir.example");
        assert_eq!(s.issuer, "CN=Clinic Test CA, O=Clinic");
        assert_eq!(s.not_after.format("%Y-%m-%d").to_string(), "2031-05-06");
        for n in 0..der.len() {
            let _ = summary_der(&der[..n]);
        }
    }

    #[test]
    fn every_truncation_and_garbage_is_an_error_not_a_panic() {
        let der = cert_until(2030);
        for n in 0..der.len() {
            let _ = not_after_der(&der[..n]);
        }
        assert!(not_after_der(&der[..40]).is_err());
        assert!(not_after_der(b"\x30\x84\xff\xff\xff\xff").is_err());
        assert_eq!(
            not_after_der(b"\x02\x01\x00"),
            Err(CertError::Malformed("Certificate is not a SEQUENCE"))
        );
    }

    #[test]
    fn the_leaf_of_a_pem_file_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.pem");
        let pem = pem_of(&cert_until(2031));
        std::fs::write(&p, format!("{pem}{}", pem_of(&cert_until(2040)))).unwrap();
        assert_eq!(
            not_after_pem_file(&p).unwrap().format("%Y").to_string(),
            "2031"
        );
        std::fs::write(&p, "not a certificate").unwrap();
        assert_eq!(not_after_pem_file(&p), Err(CertError::NoCertificate));
    }

    fn pem_of(der: &[u8]) -> String {
        use std::fmt::Write;
        let b64 = base64_encode(der);
        let mut s = String::from("-----BEGIN CERTIFICATE-----\n");
        for chunk in b64.as_bytes().chunks(64) {
            let _ = writeln!(s, "{}", std::str::from_utf8(chunk).unwrap());
        }
        s.push_str("-----END CERTIFICATE-----\n");
        s
    }

    fn base64_encode(data: &[u8]) -> String {
        const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut out = String::new();
        for c in data.chunks(3) {
            let b = [c[0], *c.get(1).unwrap_or(&0), *c.get(2).unwrap_or(&0)];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            for i in 0..4 {
                if i <= c.len() {
                    out.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
                } else {
                    out.push('=');
                }
            }
        }
        out
    }
}
