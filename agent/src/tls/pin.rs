//! Optional SPKI pinning for the uplink (`uplink.pin_spki_sha256`).
//!
//! A pin is the base64 SHA-256 of a certificate's DER `SubjectPublicKeyInfo`: the `pin-sha256`
//! form of RFC 7469 §2.4, which `openssl x509 -pubkey -noout | openssl pkey -pubin -outform der
//! | openssl dgst -sha256 -binary | base64` prints and `vitalgate check-uplink` shows for every
//! certificate the server sends. A pin survives certificate renewals that keep the key.
//!
//! Pinning narrows the CA bundle, it never replaces it: the chain, its dates and the host name
//! are verified first by webpki exactly as without pins; then at least one certificate of the
//! chain the server sent (its own or an intermediate, as in RFC 7469) must have a pinned key. A
//! mismatch is a TLS certificate error ([`PinMismatch`]), so no request is sent, and the uploader
//! treats it like any other refused handshake: readings stay pending, retried with backoff.

use std::sync::Arc;

use base64::Engine as _;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, OtherError, SignatureScheme};

/// The SHA-256 of one `SubjectPublicKeyInfo`.
pub type SpkiPin = [u8; 32];

/// Parses a `pin-sha256` value: standard base64 (padding optional) of exactly 32 bytes.
pub fn parse_pin(text: &str) -> Result<SpkiPin, String> {
    let t = text.trim();
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(t)
        .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(t))
        .map_err(|e| format!("not base64 ({e})"))?;
    <SpkiPin>::try_from(bytes.as_slice()).map_err(|_| {
        format!(
            "{} bytes; a SHA-256 pin is 32 bytes (44 base64 characters)",
            bytes.len()
        )
    })
}

/// The pin of one certificate, or `None` if it does not parse as X.509.
pub fn spki_pin(cert: &CertificateDer<'_>) -> Option<SpkiPin> {
    let parsed = webpki::EndEntityCert::try_from(cert).ok()?;
    let spki = parsed.subject_public_key_info();
    let digest = ring::digest::digest(&ring::digest::SHA256, spki.as_ref());
    <SpkiPin>::try_from(digest.as_ref()).ok()
}

/// A pin as configured and printed: standard base64 with padding.
pub fn pin_to_string(pin: &SpkiPin) -> String {
    base64::engine::general_purpose::STANDARD.encode(pin)
}

/// No certificate of the server's chain has a pinned key.
#[derive(Debug, thiserror::Error)]
#[error("no certificate the server sent has a public key pinned in uplink.pin_spki_sha256 (server key pin-sha256 {server_pin})")]
pub struct PinMismatch {
    /// The pin of the server's own certificate, for the technician comparing pins.
    pub server_pin: String,
}

/// webpki's verification, then the pin check.
#[derive(Debug)]
pub struct PinnedVerifier {
    inner: Arc<WebPkiServerVerifier>,
    pins: Vec<SpkiPin>,
}

impl PinnedVerifier {
    pub fn new(inner: Arc<WebPkiServerVerifier>, pins: Vec<SpkiPin>) -> Self {
        PinnedVerifier { inner, pins }
    }

    fn check_pins(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
    ) -> Result<(), rustls::Error> {
        let matches = std::iter::once(end_entity)
            .chain(intermediates)
            .filter_map(spki_pin)
            .any(|pin| self.pins.contains(&pin));
        if matches {
            return Ok(());
        }
        let server_pin = spki_pin(end_entity).map_or_else(|| "?".into(), |p| pin_to_string(&p));
        Err(rustls::Error::InvalidCertificate(CertificateError::Other(
            OtherError(Arc::new(PinMismatch { server_pin })),
        )))
    }
}

impl ServerCertVerifier for PinnedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verified = self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )?;
        self.check_pins(end_entity, intermediates)?;
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Replaces `config`'s server verifier with webpki over `roots` plus the pin check. With no pins
/// the config is left as it is.
///
/// # Errors
///
/// The verifier cannot be built from `roots` (an empty store).
pub fn pin_server_keys(
    config: &mut rustls::ClientConfig,
    roots: rustls::RootCertStore,
    pins: &[SpkiPin],
) -> Result<(), rustls::Error> {
    if pins.is_empty() {
        return Ok(());
    }
    let inner = WebPkiServerVerifier::builder_with_provider(
        Arc::new(roots),
        Arc::clone(config.crypto_provider()),
    )
    .build()
    .map_err(|e| rustls::Error::General(format!("server verifier: {e}")))?;
    config
        .dangerous()
        .set_certificate_verifier(Arc::new(PinnedVerifier::new(inner, pins.to_vec())));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_parse_with_and_without_padding_and_refuse_other_lengths() {
        let pin = [7u8; 32];
        let text = pin_to_string(&pin);
        assert_eq!(text.len(), 44);
        assert_eq!(parse_pin(&text), Ok(pin));
        assert_eq!(parse_pin(text.trim_end_matches('=')), Ok(pin));
        assert!(parse_pin("not base64!").unwrap_err().contains("not base64"));
        let short = base64::engine::general_purpose::STANDARD.encode([1u8; 20]);
        assert!(parse_pin(&short).unwrap_err().contains("20 bytes"));
    }

    #[test]
    fn garbage_is_not_a_certificate() {
        assert_eq!(
            spki_pin(&CertificateDer::from(vec![0x30, 0x03, 1, 2, 3])),
            None
        );
    }
}
