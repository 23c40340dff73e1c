//! rustls client configuration from PEM files, on the ring provider only.
//!
//! Fails closed: a missing or empty CA file, a CA file with any entry that does not parse (an
//! unparseable PEM section or a certificate webpki refuses: never silently skipped), a client
//! certificate without a key, a key that does not parse, or a private key file readable by
//! group or others (`mode & 0o077 != 0`, like the store key) is an error naming the file.
//! Built once at start-up.
//!
//! Protocol and cipher policy ([`crypto_provider`]): TLS 1.3 preferred, TLS 1.2 allowed, nothing
//! older; ChaCha20-Poly1305 first in the cipher order of each version, because a Raspberry Pi 4
//! (Cortex-A72 without the ARMv8 crypto extensions) has no AES instructions and runs ChaCha20
//! several times faster than software AES-GCM. A server with AES hardware still gets AES-GCM if
//! it prefers it (servers pick from our list).
//!
//! Key exchange ([`PostQuantum`], `uplink.post_quantum`): by default the uplink offers the
//! hybrid post-quantum group X25519MLKEM768 ([`pq`]: ring's X25519 plus RustCrypto's ML-KEM-768)
//! first, with a second X25519 key share in the same ClientHello for servers without it; the
//! classical groups follow. `require` offers only the hybrid (TLS 1.3 only); `off` offers
//! ring's classical groups. The MQTT client ([`client_config`]) keeps ring's classical groups.

pub mod pin;
pub mod pq;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};

#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: no PEM certificate found")]
    NoCertificate { path: PathBuf },
    #[error("{path}: no PEM private key found")]
    NoKey { path: PathBuf },
    #[error("{path}: certificate rejected as trust anchor: {reason}")]
    BadAnchor { path: PathBuf, reason: String },
    #[error("{path}: PEM entry {index} does not parse: {reason}")]
    BadPem {
        path: PathBuf,
        index: usize,
        reason: String,
    },
    #[error("{path} is readable by group or others (mode {mode:o}): run `chmod 600 {path}`")]
    KeyTooOpen { path: PathBuf, mode: u32 },
    #[error("TLS configuration rejected: {0}")]
    Rustls(#[from] rustls::Error),
}

fn read(path: &Path) -> Result<Vec<u8>, TlsSetupError> {
    std::fs::read(path).map_err(|e| TlsSetupError::Read {
        path: path.to_path_buf(),
        source: e,
    })
}

/// `uplink.post_quantum`: whether the uplink's TLS key exchange is the hybrid post-quantum
/// X25519MLKEM768 ([`pq`]).
///
/// Default [`PostQuantum::Prefer`]: the readings are PHI with a long shelf life, and traffic
/// recorded today could be decrypted once a large quantum computer breaks X25519 ("harvest now,
/// decrypt later"); the hybrid stays as strong as X25519 alone if ML-KEM were ever broken. A
/// server without it still works (it takes the X25519 share sent alongside, no extra round
/// trip). The cost, measured (BENCHMARKS.md, "Post-quantum key exchange"): about 1.2 KB more
/// ClientHello and about 1.6x the handshake time (x86_64), once per connection (the
/// HTTP client reuses an open connection for the next Bundle).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PostQuantum {
    /// Offer X25519MLKEM768 first (key share sent), then X25519 (key share sent too), P-256,
    /// P-384. A server without the hybrid picks X25519 (or asks for a group by
    /// HelloRetryRequest).
    #[default]
    Prefer,
    /// Offer only X25519MLKEM768, and so TLS 1.3 only: a server without it fails the handshake
    /// ([`crate::uplink::client::TlsProblem::PostQuantumRequired`]); nothing is sent.
    Require,
    /// ring's classical groups only (X25519, P-256, P-384).
    Off,
}

impl PostQuantum {
    /// The config spelling: `prefer`, `require` or `off`.
    pub fn as_str(self) -> &'static str {
        match self {
            PostQuantum::Prefer => "prefer",
            PostQuantum::Require => "require",
            PostQuantum::Off => "off",
        }
    }

    /// From the config spelling.
    pub fn parse(s: &str) -> Option<PostQuantum> {
        [PostQuantum::Prefer, PostQuantum::Require, PostQuantum::Off]
            .into_iter()
            .find(|p| p.as_str() == s)
    }

    /// The key exchange groups offered, most preferred first (rustls sends a key share for the
    /// first, and for X25519 too when the first is the hybrid).
    pub fn kx_groups(self) -> Vec<&'static dyn rustls::crypto::SupportedKxGroup> {
        let classical = rustls::crypto::ring::default_provider().kx_groups;
        match self {
            PostQuantum::Prefer => std::iter::once(pq::X25519MLKEM768)
                .chain(classical)
                .collect(),
            PostQuantum::Require => vec![pq::X25519MLKEM768],
            PostQuantum::Off => classical,
        }
    }

    /// The protocol versions offered: [`PROTOCOL_VERSIONS`], or TLS 1.3 alone for `require`
    /// (the hybrid exists only in TLS 1.3).
    pub fn protocol_versions(self) -> &'static [&'static rustls::SupportedProtocolVersion] {
        match self {
            PostQuantum::Require => TLS13_ONLY,
            PostQuantum::Prefer | PostQuantum::Off => PROTOCOL_VERSIONS,
        }
    }
}

/// [`crypto_provider`] with the key exchange groups of `pq`.
pub fn crypto_provider_for(pq: PostQuantum) -> rustls::crypto::CryptoProvider {
    rustls::crypto::CryptoProvider {
        kx_groups: pq.kx_groups(),
        ..crypto_provider()
    }
}

/// The ring provider with the cipher suites ordered ChaCha20-Poly1305 first (TLS 1.3 suites
/// before TLS 1.2 ones, as ring lists them). Key exchange groups as ring lists them (X25519
/// first); see [`crypto_provider_for`] for the uplink's.
pub fn crypto_provider() -> rustls::crypto::CryptoProvider {
    let mut provider = rustls::crypto::ring::default_provider();
    // A stable sort: within each version, ChaCha20 first, the rest in ring's order.
    provider.cipher_suites.sort_by_key(|suite| {
        let tls13 = matches!(suite, rustls::SupportedCipherSuite::Tls13(_));
        let chacha = format!("{:?}", suite.suite()).contains("CHACHA20");
        (!tls13, !chacha)
    });
    provider
}

/// TLS 1.3 alone (`uplink.post_quantum = "require"`).
static TLS13_ONLY: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];

/// The protocol versions offered, most preferred first.
pub static PROTOCOL_VERSIONS: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

/// Certificates of a PEM file (at least one). Every PEM entry must parse.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsSetupError> {
    let pem = read(path)?;
    let certs = rustls_pemfile::certs(&mut pem.as_slice())
        .enumerate()
        .map(|(index, cert)| {
            cert.map_err(|e| TlsSetupError::BadPem {
                path: path.to_path_buf(),
                index: index + 1,
                reason: e.to_string(),
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    if certs.is_empty() {
        return Err(TlsSetupError::NoCertificate {
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

/// The first private key of a PEM file, which only its owner may read.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsSetupError> {
    check_private(path)?;
    let pem = read(path)?;
    rustls_pemfile::private_key(&mut pem.as_slice())
        .ok()
        .flatten()
        .ok_or_else(|| TlsSetupError::NoKey {
            path: path.to_path_buf(),
        })
}

/// Refuses a key file that group or others may read (on Unix).
fn check_private(path: &Path) -> Result<(), TlsSetupError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(path).map_err(|e| TlsSetupError::Read {
            path: path.to_path_buf(),
            source: e,
        })?;
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(TlsSetupError::KeyTooOpen {
                path: path.to_path_buf(),
                mode,
            });
        }
    }
    Ok(())
}

/// A root store with exactly the certificates of `ca_file`.
pub fn root_store(ca_file: &Path) -> Result<rustls::RootCertStore, TlsSetupError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in load_certs(ca_file)? {
        roots.add(cert).map_err(|e| TlsSetupError::BadAnchor {
            path: ca_file.to_path_buf(),
            reason: e.to_string(),
        })?;
    }
    Ok(roots)
}

/// A client config trusting only `ca_file`, with an optional client certificate and key, and
/// ring's classical key exchange groups (the MQTT client's).
pub fn client_config(
    ca_file: &Path,
    client: Option<(&Path, &Path)>,
) -> Result<rustls::ClientConfig, TlsSetupError> {
    client_config_for(ca_file, client, PostQuantum::Off)
}

/// [`client_config`] with the key exchange groups and versions of `pq` (the uplink's).
pub fn client_config_for(
    ca_file: &Path,
    client: Option<(&Path, &Path)>,
    pq: PostQuantum,
) -> Result<rustls::ClientConfig, TlsSetupError> {
    let roots = root_store(ca_file)?;
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(crypto_provider_for(pq)))
        .with_protocol_versions(pq.protocol_versions())?
        .with_root_certificates(roots);
    Ok(match client {
        Some((cert, key)) => {
            let chain = load_certs(cert)?;
            let key = load_key(key)?;
            builder.with_client_auth_cert(chain, key)?
        }
        None => builder.with_no_client_auth(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chacha20_poly1305_comes_first_for_each_version_and_tls13_before_tls12() {
        let names: Vec<String> = crypto_provider()
            .cipher_suites
            .iter()
            .map(|s| format!("{:?}", s.suite()))
            .collect();
        assert_eq!(names[0], "TLS13_CHACHA20_POLY1305_SHA256", "{names:?}");
        let first12 = names.iter().position(|n| !n.starts_with("TLS13")).unwrap();
        assert!(names[first12].contains("CHACHA20"), "{names:?}");
        assert!(names[..first12].iter().all(|n| n.starts_with("TLS13")));
        assert!(names[first12..].iter().all(|n| !n.starts_with("TLS13")));
        assert_eq!(
            names.len(),
            rustls::crypto::ring::default_provider().cipher_suites.len(),
            "no suite lost"
        );
    }

    #[test]
    fn tls13_is_preferred_and_tls12_allowed() {
        assert_eq!(
            PROTOCOL_VERSIONS[0].version,
            rustls::ProtocolVersion::TLSv1_3
        );
        assert_eq!(
            PROTOCOL_VERSIONS[1].version,
            rustls::ProtocolVersion::TLSv1_2
        );
        assert_eq!(PROTOCOL_VERSIONS.len(), 2);
    }

    #[test]
    fn post_quantum_modes_order_the_groups_hybrid_first_and_keep_the_ciphers() {
        let names = |pq: PostQuantum| -> Vec<String> {
            crypto_provider_for(pq)
                .kx_groups
                .iter()
                .map(|g| format!("{:?}", g.name()))
                .collect()
        };
        assert_eq!(PostQuantum::default(), PostQuantum::Prefer);
        assert_eq!(
            names(PostQuantum::Prefer),
            ["X25519MLKEM768", "X25519", "secp256r1", "secp384r1"]
        );
        assert_eq!(names(PostQuantum::Require), ["X25519MLKEM768"]);
        assert_eq!(
            names(PostQuantum::Off),
            ["X25519", "secp256r1", "secp384r1"]
        );
        for pq in [PostQuantum::Prefer, PostQuantum::Require, PostQuantum::Off] {
            assert_eq!(PostQuantum::parse(pq.as_str()), Some(pq));
            let p = crypto_provider_for(pq);
            assert_eq!(
                format!("{:?}", p.cipher_suites[0].suite()),
                "TLS13_CHACHA20_POLY1305_SHA256"
            );
        }
        assert_eq!(PostQuantum::parse("yes"), None);
        assert_eq!(
            PostQuantum::Require.protocol_versions()[0].version,
            rustls::ProtocolVersion::TLSv1_3
        );
        assert_eq!(PostQuantum::Require.protocol_versions().len(), 1);
        assert_eq!(PostQuantum::Prefer.protocol_versions().len(), 2);
    }
}
