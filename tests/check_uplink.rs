//! `vitalgate check-uplink` end to end with the real binary against the devkit's loopback mTLS
//! FHIR server: a healthy server (exit 0, the negotiated TLS parameters and both certificates'
//! expiry printed), a server without conditional create (exit 1 naming it), a server whose CA
//! the gateway does not trust (exit 1 with the TLS reason). Nothing is ever POSTed.

mod common;
mod harness;

use std::path::Path;

use harness::*;
use vitalgate_devkit::fhir_server::Capability;

/// `notAfter` of the first certificate of a PEM file, as `YYYY-MM-DD`, by x509-parser (a
/// reference independent of the agent's own DER walk).
fn expiry(pem: &Path) -> String {
    let bytes = std::fs::read(pem).unwrap();
    let der = rustls_pemfile::certs(&mut bytes.as_slice())
        .next()
        .unwrap()
        .unwrap();
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).unwrap();
    let ts = cert.validity().not_after.timestamp();
    chrono::DateTime::from_timestamp(ts, 0)
        .unwrap()
        .format("%Y-%m-%d")
        .to_string()
}

fn check_uplink(h: &Harness) -> (Option<i32>, String) {
    let out = h.vitalgate_output(&["check-uplink"]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
}

fn assert_nothing_posted(h: &Harness) {
    let requests = h.fhir.requests();
    assert!(
        requests.iter().all(|r| r.method != "POST"),
        "check-uplink must post nothing: {requests:#?}"
    );
    assert!(h.fhir.stored_observations().is_empty());
    assert!(h.fhir.stored_devices().is_empty());
}

/// The line starting with `mark name`.
fn line<'a>(out: &'a str, mark_name: &str) -> &'a str {
    out.lines()
        .find(|l| l.starts_with(mark_name))
        .unwrap_or_else(|| panic!("no line {mark_name:?}:\n{out}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_mtls_server_passes_with_tls_parameters_and_both_expiries_and_nothing_posted() {
    let h = Harness::new(Broker::None).await;
    let (code, out) = check_uplink(&h);
    assert_eq!(code, Some(0), "exit 0 when all is well:\n{out}");
    assert!(!out.contains('✗'), "{out}");

    // What the server itself says was negotiated (the check's own handshake is the first).
    let shook = h.fhir.handshakes();
    assert!(!shook.is_empty(), "the check handshook with the server");
    assert_eq!(shook[0].version, "TLSv1_3");
    assert_eq!(shook[0].kx_group, "X25519");
    let tls = line(&out, "✓ TLS");
    assert!(tls.contains("TLS 1.3"), "{tls}");
    assert!(tls.contains(&shook[0].cipher_suite), "{tls} vs {shook:?}");
    assert!(tls.contains("key exchange X25519"), "{tls}");

    let server = line(&out, "✓ server certificate 1");
    assert!(
        server.contains(&format!("valid until {}", expiry(&h.pki.server_cert))),
        "{server}"
    );
    assert!(server.contains("CN="), "subject and issuer shown: {server}");
    let client = line(&out, "✓ client certificate");
    assert!(
        client.contains(&format!("valid until {}", expiry(&h.pki.client_cert))),
        "{client}"
    );
    for item in [
        "✓ metadata",
        "✓ FHIR version",
        "✓ transaction",
        "✓ Observation",
        "✓ Device",
    ] {
        line(&out, item);
    }
    assert!(line(&out, "✓ FHIR version").contains("4.0.1"), "{out}");

    // It did fetch the CapabilityStatement, with the gateway's client certificate.
    let requests = h.fhir.requests();
    assert!(
        requests
            .iter()
            .any(|r| r.method == "GET" && r.path == "/fhir/r4/metadata" && r.status == 200),
        "{requests:#?}"
    );
    assert!(h
        .fhir
        .client_cert_subjects()
        .iter()
        .all(|s| s.contains("CN=")));
    assert_nothing_posted(&h);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_without_conditional_create_fails_naming_it_and_nothing_is_posted() {
    let h = Harness::new(Broker::None).await;
    h.fhir.set_capability(Capability::NoConditionalCreate);
    let (code, out) = check_uplink(&h);
    assert_eq!(code, Some(1), "exit 1:\n{out}");
    line(&out, "✓ TLS");
    line(&out, "✓ transaction");
    for ty in ["Observation", "Device"] {
        let at = out
            .find(&format!("✗ {ty}"))
            .unwrap_or_else(|| panic!("no ✗ {ty}:\n{out}"));
        let mut lines = out[at..].lines();
        let item = lines.next().unwrap();
        assert!(item.contains("no conditional create"), "{item}");
        let fix = lines.next().unwrap_or("");
        assert!(
            fix.contains("fix:") && fix.contains("conditional create"),
            "{fix}"
        );
    }
    assert!(out.contains("2 failed"), "{out}");
    assert_nothing_posted(&h);

    // doctor's uplink line is the same check.
    let doctor = h.vitalgate_output(&["doctor"]);
    let doctor = String::from_utf8_lossy(&doctor.stdout).into_owned();
    let uplink = line(&doctor, "✗ uplink ");
    assert!(uplink.contains("no conditional create"), "{doctor}");
    assert_nothing_posted(&h);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_from_an_unknown_ca_fails_with_the_tls_reason_and_nothing_is_sent() {
    let h = Harness::with_rogue_server(Broker::None).await;
    let (code, out) = check_uplink(&h);
    assert_eq!(code, Some(1), "exit 1:\n{out}");
    let at = out
        .find("✗ TLS")
        .unwrap_or_else(|| panic!("no ✗ TLS:\n{out}"));
    let mut lines = out[at..].lines();
    let tls = lines.next().unwrap();
    assert!(tls.contains("(unknown issuer)"), "{tls}");
    let fix = lines.next().unwrap_or("");
    assert!(
        fix.contains("fix:") && fix.contains("uplink.ca_file"),
        "{fix}"
    );
    // No HTTP request at all: the metadata is not fetched without a trusted server.
    assert!(!out.contains("metadata"), "{out}");
    assert!(h.fhir.requests().is_empty(), "{:#?}", h.fhir.requests());
    assert_nothing_posted(&h);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_the_server_does_not_trust_fails_naming_the_refusal() {
    let h = Harness::new(Broker::None).await;
    // The gateway presents a certificate from a CA the server does not know.
    let text = std::fs::read_to_string(&h.config).unwrap();
    let text = text
        .replace(
            &h.pki.client_cert.display().to_string(),
            &h.pki.rogue_client_cert.display().to_string(),
        )
        .replace(
            &h.pki.client_key.display().to_string(),
            &h.pki.rogue_client_key.display().to_string(),
        );
    std::fs::write(&h.config, text).unwrap();
    let (code, out) = check_uplink(&h);
    assert_eq!(code, Some(1), "exit 1:\n{out}");
    let at = out
        .find("✗ ")
        .unwrap_or_else(|| panic!("no ✗ line:\n{out}"));
    let mut lines = out[at..].lines();
    let failed = lines.next().unwrap();
    // TLS 1.3: the server's refusal arrives after the client's side of the handshake is done,
    // so the TLS line passes and the metadata request names the refusal (as the README says).
    line(&out, "✓ TLS");
    assert!(failed.starts_with("✗ metadata"), "{out}");
    assert!(
        failed.contains("refused the gateway's client certificate"),
        "{failed}"
    );
    assert!(
        lines.next().unwrap_or("").contains("uplink.client_cert"),
        "{out}"
    );
    assert!(!h.fhir.tls_failures().is_empty(), "the server refused it");
    assert_nothing_posted(&h);
}

/// The `pin-sha256` of the first certificate of a PEM file, computed independently of the
/// agent: x509-parser's SubjectPublicKeyInfo bytes, SHA-256 by ring, standard base64.
fn key_pin(pem: &Path) -> String {
    use base64::Engine as _;
    let bytes = std::fs::read(pem).unwrap();
    let der = rustls_pemfile::certs(&mut bytes.as_slice())
        .next()
        .unwrap()
        .unwrap();
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).unwrap();
    let spki = cert.tbs_certificate.subject_pki.raw;
    let digest = ring::digest::digest(&ring::digest::SHA256, spki);
    base64::engine::general_purpose::STANDARD.encode(digest.as_ref())
}

/// Adds `pin_spki_sha256 = [pins]` to the harness config's `[uplink]` section.
fn pin(h: &Harness, pins: &[&str]) {
    let text = std::fs::read_to_string(&h.config).unwrap();
    let list: Vec<String> = pins.iter().map(|p| format!("\"{p}\"")).collect();
    let text = text.replacen(
        "[uplink]\n",
        &format!("[uplink]\npin_spki_sha256 = [{}]\n", list.join(", ")),
        1,
    );
    std::fs::write(&h.config, text).unwrap();
}

/// A pin of another key (any 32 bytes that are not the server's key's hash).
const OTHER_PIN: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_uplink_prints_the_server_key_pin_and_passes_when_it_is_pinned() {
    let h = Harness::new(Broker::None).await;
    let server_pin = key_pin(&h.pki.server_cert);
    // Unpinned: the pin is printed so a technician can copy it into the config.
    let (code, out) = check_uplink(&h);
    assert_eq!(code, Some(0), "{out}");
    let server = line(&out, "✓ server certificate 1");
    assert!(
        server.contains(&format!("key pin-sha256 {server_pin}")),
        "{server} vs {server_pin}"
    );
    // Pinned (beside a backup pin of another key, as RFC 7469 recommends): still all well.
    pin(&h, &[OTHER_PIN, &server_pin]);
    let (code, out) = check_uplink(&h);
    assert_eq!(code, Some(0), "{out}");
    line(&out, "✓ TLS");
    assert_nothing_posted(&h);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_whose_key_is_not_pinned_is_refused_by_check_uplink_and_by_the_daemon_and_nothing_is_sent(
) {
    let h = Harness::new(Broker::embedded()).await;
    let server_pin = key_pin(&h.pki.server_cert);
    pin(&h, &[OTHER_PIN]);
    let (code, out) = check_uplink(&h);
    assert_eq!(code, Some(1), "exit 1:\n{out}");
    let tls = line(&out, "✗ TLS");
    assert!(tls.contains("not pinned"), "{tls}");
    assert!(
        tls.contains(&server_pin),
        "the server's pin is named: {tls}"
    );
    assert!(
        out.contains("uplink.pin_spki_sha256"),
        "the fix names the setting:\n{out}"
    );
    assert!(h.fhir.requests().is_empty(), "{:?}", h.fhir.requests());

    // The daemon: the chain is valid (the CA is trusted), the key is not pinned: nothing is
    // sent, the readings stay pending (never dead-lettered), the log names the class.
    let mut agent = h.spawn_agent();
    let points: Vec<String> = (0..3).map(|i| bp_point(i, 120 + i as i64, 80)).collect();
    h.publish(&points).await;
    h.wait_for_log(
        &agent,
        "reading stored",
        3,
        std::time::Duration::from_secs(30),
    );
    h.wait_for_log(
        &agent,
        "pin_spki_sha256",
        2,
        std::time::Duration::from_secs(30),
    );
    agent.terminate();
    assert!(h.fhir.requests().is_empty(), "{:?}", h.fhir.requests());
    assert!(h.fhir.stored_observations().is_empty());
    let status = h.vitalgate(&["status"]);
    assert!(status.contains("pending=3"), "{status}");
    assert!(status.contains("dead_letters=0"), "{status}");

    // The right pin: everything is delivered, once.
    let text = std::fs::read_to_string(&h.config).unwrap();
    std::fs::write(&h.config, text.replace(OTHER_PIN, &server_pin)).unwrap();
    let mut agent = h.spawn_agent();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while h.fhir.observation_identifiers().len() < 3 {
        assert!(std::time::Instant::now() < deadline, "{}", agent.stderr());
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    agent.terminate();
    assert_eq!(h.fhir.observation_identifiers().len(), 3);
    assert_eq!(h.fhir.duplicate_creates(), 0);
}
