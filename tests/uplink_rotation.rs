//! End-to-end tests of client certificate rotation (issue #12): the real `vitalgate` binary, an
//! embedded MQTT broker and the devkit's mTLS FHIR server, which records the client certificate
//! of every handshake.
//!
//! An operator's tooling replaces the certificate and key files by atomic renames while the
//! agent runs. The uploader notices before its next upload and handshakes with the new pair; a
//! pair that does not load keeps the certificate in use, and uploads go on.

mod common;
mod harness;

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::time::Duration;

use harness::*;

/// The DER of the first certificate in a PEM file.
fn der_of(pem_file: &Path) -> Vec<u8> {
    let pem = std::fs::read(pem_file).unwrap();
    let first = rustls_pemfile::certs(&mut pem.as_slice())
        .next()
        .expect("a certificate")
        .unwrap();
    first.as_ref().to_vec()
}

/// Puts `content` at `dest` as rotation tooling would: a temporary file in the same directory
/// with the final mode, then `rename(2)` over the old file.
fn replace_atomically(dest: &Path, content: &[u8], mode: u32) {
    let tmp = dest.with_extension("rotating.tmp");
    std::fs::write(&tmp, content).unwrap();
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode)).unwrap();
    std::fs::rename(&tmp, dest).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_client_certificate_is_used_for_the_next_upload_without_a_restart() {
    let h = Harness::new(Broker::embedded()).await;
    let cert_a = der_of(&h.pki.client_cert);
    let cert_b = der_of(&h.pki.next_client_cert);
    assert_ne!(
        cert_a, cert_b,
        "the test PKI issues two distinct client certificates"
    );
    let mut agent = h.spawn_agent();

    h.publish(&[bp_point(0, 121, 81)]).await;
    h.wait_for_observations(1, Duration::from_secs(60)).await;
    let before = h.fhir.client_certificates();
    assert!(!before.is_empty());
    assert!(before.iter().all(|c| *c == cert_a), "only cert A so far");

    // Renewal: key first, then certificate, each by an atomic rename.
    replace_atomically(
        &h.pki.client_key,
        &std::fs::read(&h.pki.next_client_key).unwrap(),
        0o600,
    );
    replace_atomically(
        &h.pki.client_cert,
        &std::fs::read(&h.pki.next_client_cert).unwrap(),
        0o644,
    );

    h.publish(&[bp_point(1, 122, 82)]).await;
    h.wait_for_observations(2, Duration::from_secs(60)).await;
    h.wait_for_log(
        &agent,
        "new uplink client certificate in use",
        1,
        Duration::from_secs(10),
    );
    let after = h.fhir.client_certificates();
    assert!(after.len() > before.len(), "a new handshake after rotation");
    assert_eq!(
        after.last().unwrap(),
        &cert_b,
        "the later handshake presents cert B"
    );
    // Once cert B was presented, cert A never is again. (Between the snapshot `before` and
    // the rotation, a reconnection with cert A is possible under emulation: an answer slower
    // than the client's timeout makes it resend the first Bundle.)
    let first_b = after.iter().position(|c| *c == cert_b).unwrap();
    assert!(
        after[first_b..].iter().all(|c| *c == cert_b),
        "cert A is not presented after the rotation"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    agent.terminate();

    assert_eq!(h.fhir.observation_identifiers().len(), 2);
    assert_eq!(h.fhir.duplicate_creates(), 0, "each reading arrived once");
    let log = agent.stderr();
    let line = log
        .lines()
        .find(|l| l.contains("new uplink client certificate in use"))
        .unwrap();
    assert!(
        line.contains("not_after=20"),
        "the line names the expiry: {line}"
    );
    assert!(
        !log.contains("keeping the certificate in use"),
        "the new pair loaded at the first try:\n{log}"
    );
}

/// An idle gateway (nothing to send) puts a rotated certificate in use within the uploader's
/// idle poll (30 s), without an upload: the log names the new expiry (status and the expiry
/// alarm follow it) and the server saw no new handshake.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_gateway_puts_a_rotated_certificate_in_use_within_its_idle_poll() {
    let h = Harness::new(Broker::embedded()).await;
    let mut agent = h.spawn_agent();
    h.publish(&[bp_point(0, 121, 81)]).await;
    h.wait_for_observations(1, Duration::from_secs(60)).await;
    let handshakes = h.fhir.client_certificates().len();

    replace_atomically(
        &h.pki.client_key,
        &std::fs::read(&h.pki.next_client_key).unwrap(),
        0o600,
    );
    replace_atomically(
        &h.pki.client_cert,
        &std::fs::read(&h.pki.next_client_cert).unwrap(),
        0o644,
    );
    let started = std::time::Instant::now();
    h.wait_for_log(
        &agent,
        "new uplink client certificate in use",
        1,
        vitalgate::uploader::IDLE_POLL + Duration::from_secs(15) * emulation_factor(),
    );
    eprintln!("picked up after {:?} idle", started.elapsed());
    assert_eq!(
        h.fhir.client_certificates().len(),
        handshakes,
        "picked up without a connection to the server"
    );
    agent.terminate();
    assert_eq!(h.fhir.observation_identifiers().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_new_key_keeps_the_old_certificate_and_uploads_go_on() {
    let h = Harness::new(Broker::embedded()).await;
    let cert_a = der_of(&h.pki.client_cert);
    let mut agent = h.spawn_agent();

    h.publish(&[bp_point(0, 121, 81)]).await;
    h.wait_for_observations(1, Duration::from_secs(60)).await;

    // A half-written key file: the PEM armour and no complete key.
    let good = std::fs::read_to_string(&h.pki.next_client_key).unwrap();
    replace_atomically(&h.pki.client_key, &good.as_bytes()[..40], 0o600);

    h.publish(&[bp_point(1, 122, 82)]).await;
    h.wait_for_observations(2, Duration::from_secs(60)).await;
    h.wait_for_log(
        &agent,
        "keeping the certificate in use",
        1,
        Duration::from_secs(10),
    );
    // Another upload with the files unchanged: no new attempt, no new line.
    h.publish(&[bp_point(2, 123, 83)]).await;
    h.wait_for_observations(3, Duration::from_secs(60)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    agent.terminate();

    let certs = h.fhir.client_certificates();
    assert!(!certs.is_empty());
    assert!(
        certs.iter().all(|c| *c == cert_a),
        "only cert A was presented"
    );
    assert_eq!(h.fhir.observation_identifiers().len(), 3);
    assert_eq!(h.fhir.duplicate_creates(), 0);
    let log = agent.stderr();
    assert_eq!(
        log.matches("keeping the certificate in use").count(),
        1,
        "one line for one broken pair:\n{log}"
    );
    assert!(
        !log.contains("new uplink client certificate in use"),
        "{log}"
    );
    let line = log
        .lines()
        .find(|l| l.contains("keeping the certificate in use"))
        .unwrap();
    assert!(line.contains("test-client.key"), "names the file: {line}");
}
