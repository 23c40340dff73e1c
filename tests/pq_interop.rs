//! Post-quantum key exchange (issue #12): the agent's X25519MLKEM768 (ring's X25519 plus
//! RustCrypto's ML-KEM-768, `vitalgate::tls::pq`) against independent servers, through the
//! uplink's real client and the devkit's loopback mTLS FHIR server:
//!
//! | agent `uplink.post_quantum` | server | expected |
//! |---|---|---|
//! | prefer | rustls on aws-lc-rs, X25519MLKEM768 + X25519 | X25519MLKEM768, Bundle delivered |
//! | require | same | X25519MLKEM768, Bundle delivered |
//! | off | same | X25519 (the hybrid is not offered) |
//! | prefer | ring, X25519 only | X25519 without HelloRetryRequest, delivered |
//! | prefer | ring, P-256 only | HelloRetryRequest, secp256r1, delivered |
//! | require | ring, X25519 only | `TlsProblem::PostQuantumRequired`, nothing sent, and the bytes still pending |
//! | off | ring (default groups) | X25519 |
//!
//! plus the ClientHello's bytes against the draft's layout, and `check-uplink`'s report of the
//! negotiated group. aws-lc-rs is a dev-dependency on x86_64 only (its C build is not worth it
//! under the qemu cross tests); the ring-server cases run on every target. A handshake with
//! aws-lc-rs that completes proves the shares and the secret's layout: with ML-KEM and X25519
//! in the wrong order the two sides' keys differ and Finished fails.
// check-uplink takes `now`; a test reads the real clock (the certificates are dated from it).
#![allow(clippy::disallowed_methods)]

use std::sync::Arc;
use std::time::Duration;

use vitalgate::tls::{pq, PostQuantum};
use vitalgate::uplink::client::{BundleSender, SendError, TlsProblem, UplinkClient, UplinkTls};
use vitalgate_devkit::fhir_server::{ring_provider_with_groups, FhirTestServer, ServerConfig};
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
    fn tls(&self, base: &str, post_quantum: PostQuantum) -> UplinkTls {
        UplinkTls {
            fhir_base: base.parse().unwrap(),
            pin_spki_sha256: Vec::new(),
            post_quantum,
            ca_file: self.pki.ca_cert.clone(),
            client_cert: self.pki.client_cert.clone(),
            client_key: self.pki.client_key.clone(),
            allow_insecure_http: false,
            // Under qemu (cross/test.sh) a handshake on a loaded machine can take seconds.
            timeout: if std::env::var_os("VITALGATE_EXEC_WRAPPER").is_some_and(|w| !w.is_empty()) {
                Duration::from_secs(50)
            } else {
                Duration::from_secs(10)
            },
        }
    }

    async fn server(
        &self,
        provider: Option<Arc<rustls::crypto::CryptoProvider>>,
    ) -> FhirTestServer {
        FhirTestServer::start(ServerConfig {
            provider,
            ..ServerConfig::for_pki(&self.pki)
        })
        .await
        .unwrap()
    }

    /// Sends the example Bundle with `post_quantum`; the server must have stored its
    /// Observations. Returns (negotiated group, HelloRetryRequest sent) as the server saw them.
    async fn delivered(
        &self,
        server: &FhirTestServer,
        post_quantum: PostQuantum,
    ) -> (String, bool) {
        let client = UplinkClient::new(&self.tls(&server.base_url(), post_quantum)).unwrap();
        let resp = client.send(&example_bundle()).await.unwrap();
        assert_eq!(resp.status, 200, "{}", String::from_utf8_lossy(&resp.body));
        assert!(
            !server.stored_observations().is_empty(),
            "the Bundle was stored"
        );
        let hs = server.handshakes();
        assert_eq!(hs.len(), 1, "{hs:?}");
        assert_eq!(hs[0].version, "TLSv1_3");
        (hs[0].kx_group.clone(), hs[0].hello_retry)
    }
}

fn example_bundle() -> serde_json::Value {
    serde_json::from_str(include_str!("../devkit/testdata/example-bundle.json")).unwrap()
}

/// A ring server that takes only X25519: no post-quantum group.
fn x25519_only() -> Option<Arc<rustls::crypto::CryptoProvider>> {
    Some(ring_provider_with_groups(&[
        rustls::crypto::ring::kx_group::X25519,
    ]))
}

#[tokio::test]
async fn prefer_against_an_x25519_only_server_falls_back_to_x25519_in_one_round_trip() {
    let s = setup();
    let server = s.server(x25519_only()).await;
    let (group, hrr) = s.delivered(&server, PostQuantum::Prefer).await;
    assert_eq!(group, "X25519");
    assert!(
        !hrr,
        "the X25519 share went with the hybrid one: no HelloRetryRequest"
    );
}

#[tokio::test]
async fn prefer_against_a_p256_only_server_falls_back_after_a_hello_retry_request() {
    let s = setup();
    let server = s
        .server(Some(ring_provider_with_groups(&[
            rustls::crypto::ring::kx_group::SECP256R1,
        ])))
        .await;
    let (group, hrr) = s.delivered(&server, PostQuantum::Prefer).await;
    assert_eq!(group, "secp256r1");
    assert!(hrr, "no share for P-256 was sent: the server asks for one");
}

#[tokio::test]
async fn require_against_an_x25519_only_server_is_a_typed_refusal_and_nothing_is_sent() {
    let s = setup();
    let server = s.server(x25519_only()).await;
    let client = UplinkClient::new(&s.tls(&server.base_url(), PostQuantum::Require)).unwrap();
    let err = client.send(&example_bundle()).await.unwrap_err();
    match &err {
        SendError::Tls(TlsProblem::PostQuantumRequired(_)) => {}
        other => panic!("not PostQuantumRequired: {other:?}"),
    }
    assert!(err.hint().contains("uplink.post_quantum"), "{}", err.hint());
    assert_eq!(
        server.request_count(),
        0,
        "no HTTP request reached the server"
    );
    assert!(server.stored_observations().is_empty());
    assert!(server.handshakes().is_empty(), "no handshake completed");
    assert!(
        !server.tls_failures().is_empty(),
        "the server saw a refused handshake"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_uplink_under_require_names_the_missing_group_and_the_setting() {
    use vitalgate::ops::doctor::Mark;
    let s = setup();
    let server = s.server(x25519_only()).await;
    let checks = vitalgate::ops::check_uplink::uplink_checks(
        &s.tls(&server.base_url(), PostQuantum::Require),
        vitalgate::uplink::fhir::WriteMode::ConditionalCreate,
        chrono::Utc::now(),
    )
    .await;
    let tls = checks.iter().find(|c| c.name == "TLS").unwrap();
    assert_eq!(tls.mark, Mark::Fail, "{tls:?}");
    assert!(tls.detail.contains("X25519MLKEM768"), "{}", tls.detail);
    assert!(
        tls.fix
            .as_deref()
            .unwrap_or("")
            .contains("uplink.post_quantum"),
        "{tls:?}"
    );
    assert_eq!(server.request_count(), 0);
}

#[tokio::test]
async fn off_against_the_default_ring_server_is_x25519() {
    let s = setup();
    let server = s.server(None).await;
    let (group, hrr) = s.delivered(&server, PostQuantum::Off).await;
    assert_eq!(group, "X25519");
    assert!(!hrr);
}

/// The ClientHello the uplink's rustls config writes first, as bytes.
fn client_hello(post_quantum: PostQuantum) -> Vec<u8> {
    let s = setup();
    let tls =
        vitalgate::uplink::client::tls_config(&s.tls("https://localhost:1/fhir", post_quantum))
            .unwrap();
    let mut conn = rustls::ClientConnection::new(
        Arc::new(tls),
        rustls::pki_types::ServerName::try_from("localhost").unwrap(),
    )
    .unwrap();
    let mut out = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut out).unwrap();
    }
    out
}

/// (extension type, body) of each extension of a ClientHello record.
fn extensions(record: &[u8]) -> Vec<(u16, Vec<u8>)> {
    let be16 = |b: &[u8], at: usize| usize::from(u16::from_be_bytes([b[at], b[at + 1]]));
    assert_eq!(record[0], 22, "a handshake record");
    let hs = &record[5..];
    assert_eq!(hs[0], 1, "ClientHello");
    let mut at = 4 + 2 + 32; // handshake header, legacy_version, random
    at += 1 + usize::from(hs[at]); // legacy_session_id
    at += 2 + be16(hs, at); // cipher_suites
    at += 1 + usize::from(hs[at]); // legacy_compression_methods
    let end = at + 2 + be16(hs, at);
    at += 2;
    let mut out = Vec::new();
    while at < end {
        let ty = u16::try_from(be16(hs, at)).unwrap();
        let len = be16(hs, at + 2);
        out.push((ty, hs[at + 4..at + 4 + len].to_vec()));
        at += 4 + len;
    }
    out
}

/// (group, share) of each key_share entry (extension 51).
fn key_shares(record: &[u8]) -> Vec<(u16, Vec<u8>)> {
    let (_, body) = extensions(record)
        .into_iter()
        .find(|(ty, _)| *ty == 51)
        .expect("a key_share extension");
    let mut at = 2;
    let mut out = Vec::new();
    while at < body.len() {
        let group = u16::from_be_bytes([body[at], body[at + 1]]);
        let len = usize::from(u16::from_be_bytes([body[at + 2], body[at + 3]]));
        out.push((group, body[at + 4..at + 4 + len].to_vec()));
        at += 4 + len;
    }
    out
}

/// The supported_groups list (extension 10).
fn supported_groups(record: &[u8]) -> Vec<u16> {
    let (_, body) = extensions(record)
        .into_iter()
        .find(|(ty, _)| *ty == 10)
        .expect("a supported_groups extension");
    body[2..]
        .chunks(2)
        .map(|c| u16::from_be_bytes([c[0], c[1]]))
        .collect()
}

#[test]
fn the_client_hello_key_shares_follow_the_draft_layout() {
    const HYBRID: u16 = 0x11EC;
    const X25519: u16 = 0x001D;
    let prefer = client_hello(PostQuantum::Prefer);
    assert_eq!(supported_groups(&prefer), [HYBRID, X25519, 0x0017, 0x0018]);
    let shares = key_shares(&prefer);
    assert_eq!(shares.len(), 2, "hybrid, then X25519");
    assert_eq!(shares[0].0, HYBRID);
    assert_eq!(shares[0].1.len(), pq::CLIENT_SHARE_LEN);
    assert_eq!(shares[0].1.len(), 1184 + 32);
    assert_eq!(shares[1].0, X25519);
    assert_eq!(shares[1].1.len(), 32);
    assert_eq!(
        shares[0].1[1184..],
        shares[1].1[..],
        "ML-KEM encapsulation key first, then the X25519 key (the same one sent alone)"
    );

    let require = client_hello(PostQuantum::Require);
    assert_eq!(supported_groups(&require), [HYBRID]);
    let shares = key_shares(&require);
    assert_eq!(shares.len(), 1);
    assert_eq!((shares[0].0, shares[0].1.len()), (HYBRID, 1216));

    let off = client_hello(PostQuantum::Off);
    assert_eq!(supported_groups(&off), [X25519, 0x0017, 0x0018]);
    let shares = key_shares(&off);
    assert_eq!(shares.len(), 1);
    assert_eq!((shares[0].0, shares[0].1.len()), (X25519, 32));
    assert!(
        prefer.len() > off.len() + 1216,
        "{} vs {}",
        prefer.len(),
        off.len()
    );
}

/// Against rustls' own X25519MLKEM768 on aws-lc-rs (x86_64: the dev-dependency is there only).
#[cfg(target_arch = "x86_64")]
mod aws_lc {
    use super::*;

    /// A server on aws-lc-rs preferring X25519MLKEM768, X25519 next.
    fn hybrid_server_provider() -> Option<Arc<rustls::crypto::CryptoProvider>> {
        use rustls::crypto::aws_lc_rs;
        Some(Arc::new(rustls::crypto::CryptoProvider {
            kx_groups: vec![
                aws_lc_rs::kx_group::X25519MLKEM768,
                aws_lc_rs::kx_group::X25519,
            ],
            ..aws_lc_rs::default_provider()
        }))
    }

    #[tokio::test]
    async fn prefer_against_an_aws_lc_hybrid_server_negotiates_x25519mlkem768() {
        let s = setup();
        let server = s.server(hybrid_server_provider()).await;
        let (group, hrr) = s.delivered(&server, PostQuantum::Prefer).await;
        assert_eq!(group, "X25519MLKEM768");
        assert!(!hrr);
    }

    #[tokio::test]
    async fn require_against_an_aws_lc_hybrid_server_negotiates_x25519mlkem768() {
        let s = setup();
        let server = s.server(hybrid_server_provider()).await;
        let (group, hrr) = s.delivered(&server, PostQuantum::Require).await;
        assert_eq!(group, "X25519MLKEM768");
        assert!(!hrr);
    }

    #[tokio::test]
    async fn off_against_an_aws_lc_hybrid_server_is_x25519() {
        let s = setup();
        let server = s.server(hybrid_server_provider()).await;
        let (group, hrr) = s.delivered(&server, PostQuantum::Off).await;
        assert_eq!(group, "X25519");
        assert!(!hrr);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn check_uplink_reports_the_negotiated_hybrid_group() {
        use vitalgate::ops::doctor::Mark;
        let s = setup();
        let server = s.server(hybrid_server_provider()).await;
        let checks = vitalgate::ops::check_uplink::uplink_checks(
            &s.tls(&server.base_url(), PostQuantum::Prefer),
            vitalgate::uplink::fhir::WriteMode::ConditionalCreate,
            chrono::Utc::now(),
        )
        .await;
        let tls = checks.iter().find(|c| c.name == "TLS").unwrap();
        assert_eq!(tls.mark, Mark::Pass, "{tls:?}");
        assert!(
            tls.detail.contains("key exchange X25519MLKEM768"),
            "{}",
            tls.detail
        );
        assert!(server.requests().iter().all(|r| r.method != "POST"));
    }
}
