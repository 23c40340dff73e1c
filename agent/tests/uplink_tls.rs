//! TLS done right: the negative matrix (each case a typed error, nothing sent), the negotiated
//! version and cipher, and the start-up refusals (bad CA file, client key open to others).
//! Asserted on the error variants, never on message text.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use vitalgate::tls::TlsSetupError;
use vitalgate::uplink::client::{
    BundleSender, SendError, TlsProblem, UplinkClient, UplinkError, UplinkTls,
};
use vitalgate_devkit::fhir_server::{FhirTestServer, ServerConfig};
use vitalgate_devkit::pki::TestPki;

struct Setup {
    dir: tempfile::TempDir,
    pki: TestPki,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::generate(&dir.path().join("pki")).unwrap();
    Setup { dir, pki }
}

impl Setup {
    fn tls(&self, base: &str) -> UplinkTls {
        UplinkTls {
            fhir_base: base.parse().unwrap(),
            pin_spki_sha256: Vec::new(),
            post_quantum: vitalgate::tls::PostQuantum::default(),
            ca_file: self.pki.ca_cert.clone(),
            client_cert: self.pki.client_cert.clone(),
            client_key: self.pki.client_key.clone(),
            allow_insecure_http: false,
            timeout: Duration::from_secs(10),
        }
    }

    fn client(&self, base: &str) -> UplinkClient {
        UplinkClient::new(&self.tls(base)).unwrap()
    }

    async fn server_with(&self, cert: &Path, key: &Path) -> FhirTestServer {
        FhirTestServer::start(ServerConfig {
            server_cert: cert.to_path_buf(),
            server_key: key.to_path_buf(),
            ..ServerConfig::for_pki(&self.pki)
        })
        .await
        .unwrap()
    }

    /// Sends to a devkit server presenting `cert`; the exchange must fail in TLS and the
    /// server must have answered no HTTP request.
    async fn refused_by_client(&self, cert: &Path, key: &Path) -> TlsProblem {
        let server = self.server_with(cert, key).await;
        let err = self
            .client(&server.base_url())
            .send(&bundle())
            .await
            .unwrap_err();
        assert_eq!(server.request_count(), 0, "nothing was sent");
        assert!(server.stored_observations().is_empty());
        match err {
            SendError::Tls(problem) => problem,
            other => panic!("not a TLS error: {other:?}"),
        }
    }
}

fn bundle() -> serde_json::Value {
    json!({"resourceType": "Bundle", "type": "transaction", "entry": []})
}

#[tokio::test]
async fn an_expired_server_certificate_is_refused() {
    let s = setup();
    let p = s
        .refused_by_client(&s.pki.expired_server_cert, &s.pki.expired_server_key)
        .await;
    assert_eq!(p, TlsProblem::Expired);
}

#[tokio::test]
async fn a_server_certificate_not_yet_valid_is_refused() {
    let s = setup();
    let p = s
        .refused_by_client(&s.pki.future_server_cert, &s.pki.future_server_key)
        .await;
    assert_eq!(p, TlsProblem::NotValidYet);
}

#[tokio::test]
async fn a_self_signed_server_certificate_is_refused_as_an_unknown_issuer() {
    let s = setup();
    let p = s
        .refused_by_client(
            &s.pki.self_signed_server_cert,
            &s.pki.self_signed_server_key,
        )
        .await;
    assert_eq!(p, TlsProblem::UnknownIssuer);
}

#[tokio::test]
async fn a_server_from_an_unknown_ca_is_refused() {
    let s = setup();
    let p = s
        .refused_by_client(&s.pki.rogue_server_cert, &s.pki.rogue_server_key)
        .await;
    assert_eq!(p, TlsProblem::UnknownIssuer);
}

#[tokio::test]
async fn a_server_certificate_for_another_host_name_is_refused() {
    let s = setup();
    let server = FhirTestServer::start(ServerConfig {
        listen: SocketAddr::from(([127, 0, 0, 2], 0)),
        ..ServerConfig::for_pki(&s.pki)
    })
    .await
    .unwrap();
    let base = format!("https://127.0.0.2:{}/fhir/r4", server.addr().port());
    let err = s.client(&base).send(&bundle()).await.unwrap_err();
    assert!(
        matches!(err, SendError::Tls(TlsProblem::WrongHostName)),
        "{err:?}"
    );
    assert_eq!(server.request_count(), 0);
}

/// A minimal TLS 1.0-only server: whatever the ClientHello offers, it answers a ServerHello
/// for TLS 1.0 (`0x0301`) with `TLS_RSA_WITH_AES_128_CBC_SHA`, as an old server would.
#[tokio::test]
async fn a_tls_1_0_only_server_is_refused() {
    let s = setup();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (mut sock, _) = listener.accept().await.unwrap();
        let mut buf = vec![0u8; 4096];
        let _ = sock.read(&mut buf).await;
        let mut hello = vec![0x03, 0x01]; // server_version TLS 1.0
        hello.extend([0x42; 32]); // random
        hello.push(0); // session id: empty
        hello.extend([0x00, 0x2f]); // TLS_RSA_WITH_AES_128_CBC_SHA
        hello.push(0); // compression: null
        let mut handshake = vec![0x02, 0, 0, hello.len() as u8];
        handshake.extend(&hello);
        let mut record = vec![0x16, 0x03, 0x01, 0, handshake.len() as u8];
        record.extend(&handshake);
        sock.write_all(&record).await.unwrap();
        // Read until the client closes; return everything after the ServerHello.
        let mut after = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), sock.read_to_end(&mut after)).await;
        after
    });
    let base = format!("https://localhost:{}/fhir", addr.port());
    let err = s.client(&base).send(&bundle()).await.unwrap_err();
    assert!(
        matches!(err, SendError::Tls(TlsProblem::ProtocolVersion)),
        "{err:?}"
    );
    let after = server.await.unwrap();
    // At most the client's alert (content type 21), never application data (23).
    assert!(after.first().is_none_or(|&t| t == 0x15), "{after:?}");
}

/// A plaintext HTTP endpoint behind an `https://` URL: it answers the ClientHello with an
/// HTTP 400, as web servers do. Refused as "not TLS"; no request was sent in clear.
#[tokio::test]
async fn a_plaintext_endpoint_is_refused_as_not_tls() {
    let s = setup();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (mut sock, _) = listener.accept().await.unwrap();
        let mut buf = vec![0u8; 4096];
        let n = sock.read(&mut buf).await.unwrap_or(0);
        let _ = sock
            .write_all(
                b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            )
            .await;
        buf.truncate(n);
        buf
    });
    let base = format!("https://localhost:{}/fhir", addr.port());
    let err = s.client(&base).send(&bundle()).await.unwrap_err();
    assert!(matches!(err, SendError::Tls(TlsProblem::NotTls)), "{err:?}");
    let first = server.await.unwrap();
    assert_eq!(
        first.first(),
        Some(&0x16),
        "the client only sent a TLS handshake"
    );
    assert!(!String::from_utf8_lossy(&first).contains("Bundle"));
}

#[tokio::test]
async fn a_plaintext_http_base_url_is_refused_at_start() {
    let s = setup();
    let err = UplinkClient::new(&s.tls("http://localhost:8080/fhir"))
        .err()
        .unwrap();
    assert!(matches!(err, UplinkError::Insecure(_)), "{err:?}");
}

/// The gateway's certificate is not trusted by the server (no usable client certificate):
/// the server's alert is classified, the request never reaches HTTP.
#[tokio::test]
async fn a_client_certificate_the_server_does_not_accept_is_refused() {
    let s = setup();
    let server = s.server_with(&s.pki.server_cert, &s.pki.server_key).await;
    let mut tls = s.tls(&server.base_url());
    tls.client_cert = s.pki.rogue_client_cert.clone();
    tls.client_key = s.pki.rogue_client_key.clone();
    let err = UplinkClient::new(&tls)
        .unwrap()
        .send(&bundle())
        .await
        .unwrap_err();
    assert!(
        matches!(err, SendError::Tls(TlsProblem::ClientCertificateRefused(_))),
        "{err:?}"
    );
    assert_eq!(server.request_count(), 0);
}

#[tokio::test]
async fn tls_1_3_with_chacha20_poly1305_is_negotiated_with_a_modern_server() {
    let s = setup();
    let server = s.server_with(&s.pki.server_cert, &s.pki.server_key).await;
    let resp = s.client(&server.base_url()).send(&bundle()).await.unwrap();
    assert_eq!(resp.status, 200);
    let hs = server.handshakes();
    assert_eq!(hs.len(), 1, "{hs:?}");
    assert_eq!(hs[0].version, "TLSv1_3");
    assert_eq!(hs[0].cipher_suite, "TLS13_CHACHA20_POLY1305_SHA256");
}

#[tokio::test]
async fn tls_1_2_is_allowed_and_chacha20_poly1305_is_chosen_there_too() {
    let s = setup();
    let server = FhirTestServer::start(ServerConfig {
        tls12_only: true,
        ..ServerConfig::for_pki(&s.pki)
    })
    .await
    .unwrap();
    let resp = s.client(&server.base_url()).send(&bundle()).await.unwrap();
    assert_eq!(resp.status, 200);
    let hs = server.handshakes();
    assert_eq!(hs[0].version, "TLSv1_2");
    assert_eq!(
        hs[0].cipher_suite,
        "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256"
    );
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

#[test]
fn a_ca_file_with_an_unparseable_entry_is_refused_at_start() {
    let s = setup();
    let good = std::fs::read_to_string(&s.pki.ca_cert).unwrap();
    let bad_pem = s.dir.path().join("bad-pem.crt");
    write(
        &bad_pem,
        &format!(
            "{good}-----BEGIN CERTIFICATE-----\n!!!! not base64 !!!!\n-----END CERTIFICATE-----\n"
        ),
    );
    let mut tls = s.tls("https://localhost:1/fhir");
    tls.ca_file = bad_pem.clone();
    let err = UplinkClient::new(&tls).err().unwrap();
    assert!(
        matches!(&err, UplinkError::Setup(TlsSetupError::BadPem { path, index: 2, .. }) if *path == bad_pem),
        "{err:?}"
    );

    // Valid base64 that is not a certificate: refused as a trust anchor, not skipped.
    let bad_der = s.dir.path().join("bad-der.crt");
    write(
        &bad_der,
        &format!(
            "{good}-----BEGIN CERTIFICATE-----\nAAECAwQFBgcICQ==\n-----END CERTIFICATE-----\n"
        ),
    );
    tls.ca_file = bad_der;
    let err = UplinkClient::new(&tls).err().unwrap();
    assert!(
        matches!(err, UplinkError::Setup(TlsSetupError::BadAnchor { .. })),
        "{err:?}"
    );
}

#[cfg(unix)]
#[test]
fn a_client_key_readable_by_group_or_others_is_refused_at_start() {
    use std::os::unix::fs::PermissionsExt;
    let s = setup();
    let tls = s.tls("https://localhost:1/fhir");
    assert!(UplinkClient::new(&tls).is_ok(), "0600 is accepted");
    for mode in [0o640, 0o604, 0o644] {
        std::fs::set_permissions(&s.pki.client_key, std::fs::Permissions::from_mode(mode)).unwrap();
        let err = UplinkClient::new(&tls).err().unwrap();
        assert!(
            matches!(err, UplinkError::Setup(TlsSetupError::KeyTooOpen { mode: m, .. }) if m == mode),
            "{mode:o}: {err:?}"
        );
    }
}
