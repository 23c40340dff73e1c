//! Every class of failed exchange with the FHIR server, against a real loopback peer, asserted
//! on the class (the `SendError` variant), never on message text.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::json;
use vitalgate::uplink::client::{BundleSender, SendError, TlsProblem, UplinkClient, UplinkTls};
use vitalgate_devkit::fhir_server::{FhirTestServer, Mode, ServerConfig};
use vitalgate_devkit::pki::TestPki;

struct Setup {
    _dir: tempfile::TempDir,
    pki: TestPki,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::generate(&dir.path().join("pki")).unwrap();
    Setup { _dir: dir, pki }
}

impl Setup {
    fn client(&self, base: &str, timeout: Duration) -> UplinkClient {
        self.client_with(base, timeout, false)
    }

    fn client_with(&self, base: &str, timeout: Duration, rogue_identity: bool) -> UplinkClient {
        let (cert, key) = if rogue_identity {
            (&self.pki.rogue_client_cert, &self.pki.rogue_client_key)
        } else {
            (&self.pki.client_cert, &self.pki.client_key)
        };
        UplinkClient::new(&UplinkTls {
            fhir_base: base.parse().unwrap(),
            pin_spki_sha256: Vec::new(),
            post_quantum: vitalgate::tls::PostQuantum::default(),
            ca_file: self.pki.ca_cert.clone(),
            client_cert: cert.clone(),
            client_key: key.clone(),
            allow_insecure_http: false,
            timeout,
        })
        .unwrap()
    }
}

fn bundle() -> serde_json::Value {
    json!({"resourceType": "Bundle", "type": "transaction", "entry": []})
}

const TIMEOUT: Duration = Duration::from_secs(10);

#[tokio::test]
async fn an_unresolvable_host_name_is_a_dns_error() {
    let s = setup();
    let client = s.client("https://vitalgate-test.invalid/fhir", TIMEOUT);
    let err = client.send(&bundle()).await.unwrap_err();
    assert!(
        matches!(&err, SendError::Dns { host } if host == "vitalgate-test.invalid"),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_closed_port_is_connection_refused() {
    let s = setup();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let client = s.client(&format!("https://127.0.0.1:{port}/fhir"), TIMEOUT);
    let err = client.send(&bundle()).await.unwrap_err();
    assert!(
        matches!(&err, SendError::Refused { port: p, .. } if *p == port),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_peer_that_accepts_and_closes_is_a_closed_connection_not_tls() {
    let s = setup();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            drop(sock);
        }
    });
    let client = s.client(&format!("https://localhost:{}/fhir", addr.port()), TIMEOUT);
    let err = client.send(&bundle()).await.unwrap_err();
    assert!(matches!(err, SendError::Closed), "{err:?}");
}

#[tokio::test]
async fn a_peer_that_never_answers_is_a_timeout() {
    let s = setup();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((sock, _)) = listener.accept().await {
            open.push(sock); // never read, never answer, never close
        }
    });
    let timeout = Duration::from_millis(500);
    let client = s.client(&format!("https://localhost:{}/fhir", addr.port()), timeout);
    let err = client.send(&bundle()).await.unwrap_err();
    assert!(
        matches!(err, SendError::Timeout(t) if t == timeout),
        "{err:?}"
    );
    held.abort();
}

async fn server(s: &Setup, rogue_cert: bool, listen: SocketAddr) -> FhirTestServer {
    let mut cfg = ServerConfig::for_pki(&s.pki);
    cfg.listen = listen;
    if rogue_cert {
        cfg.server_cert = s.pki.rogue_server_cert.clone();
        cfg.server_key = s.pki.rogue_server_key.clone();
    }
    FhirTestServer::start(cfg).await.unwrap()
}

fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

#[tokio::test]
async fn a_server_certificate_from_another_ca_is_tls_unknown_issuer() {
    let s = setup();
    let fhir = server(&s, true, loopback()).await;
    let err = s
        .client(&fhir.base_url(), TIMEOUT)
        .send(&bundle())
        .await
        .unwrap_err();
    assert!(
        matches!(err, SendError::Tls(TlsProblem::UnknownIssuer)),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_server_certificate_for_another_name_is_tls_wrong_host_name() {
    let s = setup();
    // The server certificate names localhost, 127.0.0.1 and ::1; 127.0.0.2 is loopback too.
    let fhir = server(&s, false, SocketAddr::from(([127, 0, 0, 2], 0))).await;
    let base = format!("https://127.0.0.2:{}/fhir/r4", fhir.addr().port());
    let err = s.client(&base, TIMEOUT).send(&bundle()).await.unwrap_err();
    assert!(
        matches!(err, SendError::Tls(TlsProblem::WrongHostName)),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_client_certificate_the_server_does_not_trust_is_tls_client_certificate_refused() {
    let s = setup();
    let fhir = server(&s, false, loopback()).await;
    let err = s
        .client_with(&fhir.base_url(), TIMEOUT, true)
        .send(&bundle())
        .await
        .unwrap_err();
    assert!(
        matches!(err, SendError::Tls(TlsProblem::ClientCertificateRefused(_))),
        "{err:?}"
    );
}

#[tokio::test]
async fn an_http_status_is_an_answer_not_a_send_error() {
    let s = setup();
    let fhir = server(&s, false, loopback()).await;
    fhir.set_mode(Mode::Fail {
        status: 403,
        retry_after: None,
    });
    let resp = s
        .client(&fhir.base_url(), TIMEOUT)
        .send(&bundle())
        .await
        .unwrap();
    assert_eq!(resp.status, 403);
}

#[tokio::test]
async fn a_server_that_hangs_up_after_the_request_is_a_closed_connection() {
    let s = setup();
    let fhir = server(&s, false, loopback()).await;
    fhir.set_mode(Mode::HangUpAfterCommit);
    let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [{
        "fullUrl": "urn:uuid:6f1c2a3e-0b7d-4c55-9a51-2f8e3c1d7a01",
        "resource": {"resourceType": "Device", "identifier": [{"system": "urn:x", "value": "d1"}]},
        "request": {"method": "POST", "url": "Device", "ifNoneExist": "identifier=urn:x|d1"}
    }]});
    let err = s
        .client(&fhir.base_url(), TIMEOUT)
        .send(&bundle)
        .await
        .unwrap_err();
    assert!(matches!(err, SendError::Closed), "{err:?}");
    assert_eq!(fhir.request_count(), 1, "the request reached the server");
}
