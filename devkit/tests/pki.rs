//! The throw-away test PKI: the files, their modes, and what the certificates say.

use std::path::Path;

use vitalgate_devkit::pki::{TestPki, DEFAULT_GATEWAY_ID, README_TEXT};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::*;

fn pem_der(path: &Path) -> Vec<u8> {
    let pem = std::fs::read(path).unwrap();
    let mut reader = pem.as_slice();
    let der = rustls_pemfile::certs(&mut reader).next().unwrap().unwrap();
    der.to_vec()
}

struct Cert {
    subject: String,
    issuer: String,
    is_ca: bool,
    server_auth: bool,
    client_auth: bool,
    sans: Vec<String>,
    p256: bool,
}

fn inspect(path: &Path) -> Cert {
    let der = pem_der(path);
    let (_, cert) = parse_x509_certificate(&der).unwrap();
    let eku = cert.extended_key_usage().unwrap().map(|e| e.value.clone());
    let sans = cert
        .subject_alternative_name()
        .unwrap()
        .map(|s| {
            s.value
                .general_names
                .iter()
                .map(|n| match n {
                    GeneralName::DNSName(d) => d.to_string(),
                    GeneralName::IPAddress(ip) => format!("ip:{}", ip.len()),
                    other => format!("{other:?}"),
                })
                .collect()
        })
        .unwrap_or_default();
    Cert {
        subject: cert.subject().to_string(),
        issuer: cert.issuer().to_string(),
        is_ca: cert.is_ca(),
        server_auth: eku.as_ref().is_some_and(|e| e.server_auth),
        client_auth: eku.as_ref().is_some_and(|e| e.client_auth),
        sans,
        p256: cert
            .public_key()
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok())
            == Some(x509_parser::oid_registry::OID_EC_P256),
    }
}

#[test]
fn generates_two_unrelated_cas_with_server_and_client_leaves() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::generate(dir.path()).unwrap();
    assert_eq!(
        std::fs::read_to_string(dir.path().join("README.txt")).unwrap(),
        README_TEXT
    );
    assert!(README_TEXT.starts_with("THROW-AWAY TEST PKI, NEVER USE IN PRODUCTION"));

    let ca = inspect(&pki.ca_cert);
    let rogue_ca = inspect(&pki.rogue_ca_cert);
    assert!(ca.is_ca && rogue_ca.is_ca && ca.p256);
    assert_eq!(ca.subject, ca.issuer);
    assert_ne!(ca.subject, rogue_ca.subject);

    for (leaf, issuer) in [(&pki.server_cert, &ca), (&pki.rogue_server_cert, &rogue_ca)] {
        let server = inspect(leaf);
        assert_eq!(server.issuer, issuer.subject);
        assert!(server.server_auth && !server.client_auth && !server.is_ca && server.p256);
        // localhost, and two IP addresses: 127.0.0.1 (4 bytes) and ::1 (16 bytes).
        assert_eq!(server.sans, ["localhost", "ip:4", "ip:16"]);
    }
    for (leaf, issuer) in [
        (&pki.client_cert, &ca),
        (&pki.next_client_cert, &ca),
        (&pki.rogue_client_cert, &rogue_ca),
    ] {
        let client = inspect(leaf);
        assert_eq!(client.issuer, issuer.subject);
        assert!(client.client_auth && !client.server_auth && !client.is_ca && client.p256);
        assert!(client.subject.contains(&format!("CN={DEFAULT_GATEWAY_ID}")));
    }
    // The renewed client certificate: same CA and subject, a certificate (and key) of its own.
    assert_ne!(pem_der(&pki.client_cert), pem_der(&pki.next_client_cert));
    assert_ne!(
        std::fs::read(&pki.client_key).unwrap(),
        std::fs::read(&pki.next_client_key).unwrap()
    );
}

#[test]
fn keys_are_private_and_names_say_test() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::generate_for_gateway(dir.path(), "gw-0042").unwrap();
    assert!(inspect(&pki.client_cert).subject.contains("CN=gw-0042"));
    for key in [
        &pki.server_key,
        &pki.client_key,
        &pki.next_client_key,
        &pki.rogue_server_key,
        &pki.rogue_client_key,
    ] {
        let text = std::fs::read_to_string(key).unwrap();
        assert!(text.starts_with("-----BEGIN PRIVATE KEY-----"), "{key:?}");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(key).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{key:?}");
        }
    }
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        assert!(name == "README.txt" || name.starts_with("test-"), "{name}");
    }
    // Regenerating over an existing directory works and keeps keys private.
    TestPki::generate(dir.path()).unwrap();
}
