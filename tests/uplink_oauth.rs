//! End-to-end: `[uplink.oauth2]` (SMART Backend Services) against the devkit server's token
//! endpoint, with the FHIR endpoint requiring `Authorization: Bearer`. The real daemon, mutual
//! TLS throughout; the server verifies every client assertion's signature and claims.

mod common;
mod harness;

use std::os::unix::fs::PermissionsExt as _;
use std::time::{Duration, Instant};

use base64::Engine as _;
use harness::*;
use ring::signature::KeyPair as _;
use vitalgate_devkit::fhir_server::{Mode, OAuthConfig};

const CLIENT_ID: &str = "e2e-gw-client";

fn pem(der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    format!(
        "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
        lines.join("\n")
    )
}

/// Writes the gateway's assertion key (ES384: generated now with ring; RS384: the committed
/// test key), adds `[uplink.oauth2]` to the agent's config and turns the server's token
/// endpoint and bearer check on with the key's public half.
fn enable_oauth(h: &Harness, alg: &str, expires_in: u64) {
    enable_oauth_with(h, alg, expires_in, true);
}

/// [`enable_oauth`]; without `token_url` when `!configured` (discovered from the FHIR server's
/// `.well-known/smart-configuration`).
fn enable_oauth_with(h: &Harness, alg: &str, expires_in: u64, configured: bool) {
    let key_file = h.dir.path().join("oauth.key");
    let public = match alg {
        "ES384" => {
            let rng = ring::rand::SystemRandom::new();
            let alg = &ring::signature::ECDSA_P384_SHA384_FIXED_SIGNING;
            let pkcs8 = ring::signature::EcdsaKeyPair::generate_pkcs8(alg, &rng).unwrap();
            std::fs::write(&key_file, pem(pkcs8.as_ref())).unwrap();
            ring::signature::EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng)
                .unwrap()
                .public_key()
                .as_ref()
                .to_vec()
        }
        "RS384" => {
            let src = concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../tests/data/oauth/rsa-test-key.pem"
            );
            let text = std::fs::read(src).unwrap();
            std::fs::write(&key_file, &text).unwrap();
            let Some(rustls::pki_types::PrivateKeyDer::Pkcs8(der)) =
                rustls_pemfile::private_key(&mut text.as_slice()).unwrap()
            else {
                panic!("PKCS#8 test key expected")
            };
            ring::signature::RsaKeyPair::from_pkcs8(der.secret_pkcs8_der())
                .unwrap()
                .public_key()
                .as_ref()
                .to_vec()
        }
        other => panic!("{other}"),
    };
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut config = std::fs::read_to_string(&h.config).unwrap();
    config.push_str(&format!(
        "\n[uplink.oauth2]\n{}client_id = \"{CLIENT_ID}\"\nkey_file = \"{}\"\nalgorithm = \"{alg}\"\nkey_id = \"e2e-key-1\"\n",
        if configured {
            format!("token_url = \"{}\"\n", h.fhir.token_url())
        } else {
            String::new()
        },
        key_file.display()
    ));
    std::fs::write(&h.config, config).unwrap();
    h.fhir.enable_oauth(OAuthConfig {
        client_id: CLIENT_ID.into(),
        keys: vec![(alg.to_string(), public)],
        expires_in,
        require_bearer: true,
    });
}

fn fhir_posts(h: &Harness) -> usize {
    h.fhir
        .requests()
        .iter()
        .filter(|r| r.method == "POST" && r.path.starts_with("/fhir"))
        .count()
}

/// Every token request the server saw was accepted, and its assertion carried what SMART
/// Backend Services requires (the server verified the signature; the claims are checked here
/// once more).
fn assert_assertions_valid(h: &Harness, alg: &str) {
    let requests = h.fhir.token_requests();
    assert!(!requests.is_empty());
    let mut jtis = std::collections::HashSet::new();
    for r in &requests {
        assert!(r.accepted, "token request refused: {}", r.reason);
        assert_eq!(r.header["alg"], alg);
        assert_eq!(r.header["typ"], "JWT");
        assert_eq!(r.header["kid"], "e2e-key-1");
        assert_eq!(r.claims["iss"], CLIENT_ID);
        assert_eq!(r.claims["sub"], CLIENT_ID);
        assert_eq!(r.claims["aud"], h.fhir.token_url().as_str());
        let (iat, exp) = (
            r.claims["iat"].as_i64().unwrap(),
            r.claims["exp"].as_i64().unwrap(),
        );
        assert!(exp > iat && exp - iat <= 300, "{}", r.claims);
        assert!(jtis.insert(r.claims["jti"].as_str().unwrap().to_owned()));
        let form: std::collections::HashMap<_, _> = r.form.iter().cloned().collect();
        assert_eq!(form["grant_type"], "client_credentials");
        assert_eq!(form["scope"], "system/Observation.c system/Device.c");
    }
}

async fn wait_delivered(h: &Harness, agent: &Agent, n: usize, within: Duration) {
    let deadline = Instant::now() + within;
    while h.fhir.observation_identifiers().len() < n {
        assert!(
            Instant::now() < deadline,
            "{} of {n} delivered; requests {:?}\n{}",
            h.fhir.observation_identifiers().len(),
            h.fhir.requests(),
            tail(&agent.stderr(), 40)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn assert_no_secret_logged(log: &str) {
    // Every JWS (the client assertion) starts with base64url of `{"`.
    assert!(!log.contains("eyJ"), "a JWT reached the log:\n{log}");
    assert!(!log.contains("Bearer "), "a bearer token reached the log");
    assert!(!log.contains("MRN-0001"), "patient identifier leaked");
}

/// ES384: twelve readings in at least three Bundles (batch_size 4), all with one token; the
/// FHIR endpoint refuses any request without it, so delivery proves the header.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn es384_readings_are_delivered_with_one_token_reused_across_bundles() {
    let h = Harness::new(Broker::embedded()).await;
    enable_oauth(&h, "ES384", 3600);
    let mut agent = h.spawn_agent();
    let points: Vec<String> = (0..12).map(|i| bp_point(i, 120 + i as i64, 80)).collect();
    h.publish(&points).await;
    wait_delivered(&h, &agent, 12, Duration::from_secs(60)).await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    agent.terminate();
    assert!(fhir_posts(&h) >= 3, "{:?}", h.fhir.requests());
    assert_eq!(h.fhir.tokens_issued(), 1, "one token for every Bundle");
    assert_eq!(h.fhir.bearer_refusals(), 0);
    assert_assertions_valid(&h, "ES384");
    h.assert_each_once(12);
    assert_no_secret_logged(&agent.stderr());
    let status = h.vitalgate(&["status"]);
    assert!(status.contains("pending=0"), "{status}");
    assert!(status.contains("dead_letters=0"), "{status}");
}

/// RS384 with the committed test key; a token that expires is replaced before it is used (no
/// 401), and a revoked one costs one 401, one new token and one resend: each reading once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rs384_tokens_are_renewed_before_expiry_and_a_revoked_one_is_refreshed_once() {
    let h = Harness::new(Broker::embedded()).await;
    enable_oauth(&h, "RS384", 6);
    let mut agent = h.spawn_agent();
    h.publish(&(0..4).map(|i| bp_point(i, 120, 80)).collect::<Vec<_>>())
        .await;
    wait_delivered(&h, &agent, 4, Duration::from_secs(60)).await;
    assert_eq!(h.fhir.tokens_issued(), 1);
    // The token lives 6 s; the agent replaces it 0.6 s before that. The next ones live long.
    tokio::time::sleep(Duration::from_millis(6500)).await;
    h.fhir.set_token_lifetime(3600);
    h.publish(&(4..8).map(|i| bp_point(i, 121, 81)).collect::<Vec<_>>())
        .await;
    wait_delivered(&h, &agent, 8, Duration::from_secs(60)).await;
    assert_eq!(h.fhir.tokens_issued(), 2, "renewed after expiry");
    assert_eq!(h.fhir.bearer_refusals(), 0, "never sent an expired token");
    // Revoked server-side: 401, one refresh, one resend.
    h.fhir.revoke_tokens();
    h.publish(&(8..12).map(|i| bp_point(i, 122, 82)).collect::<Vec<_>>())
        .await;
    wait_delivered(&h, &agent, 12, Duration::from_secs(60)).await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    agent.terminate();
    assert_eq!(h.fhir.bearer_refusals(), 1, "{:?}", h.fhir.requests());
    assert_eq!(h.fhir.tokens_issued(), 3);
    assert_assertions_valid(&h, "RS384");
    h.assert_each_once(12);
    let log = agent.stderr();
    assert!(
        !log.contains("uploads paused"),
        "a refreshed token is no pause:\n{log}"
    );
    assert!(log.contains("uplink_tokens_fetched=3"), "{log}");
    assert_no_secret_logged(&log);
    let status = h.vitalgate(&["status"]);
    assert!(status.contains("pending=0"), "{status}");
    assert!(status.contains("dead_letters=0"), "{status}");
}

/// The token endpoint refuses the gateway (`400 invalid_client`): check-uplink fails naming it,
/// uploads pause with one alarm, nothing reaches the FHIR endpoint, no reading is
/// dead-lettered; once the registration is back, everything is delivered once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusing_token_endpoint_pauses_uploads_keeps_readings_and_they_go_once_it_is_fixed() {
    let h = Harness::with_uplink_settings(
        Broker::embedded(),
        "pause_initial_secs = 1\npause_max_secs = 2",
    )
    .await;
    enable_oauth(&h, "ES384", 3600);
    h.fhir.set_token_refusal(true);

    let check = h.vitalgate_output(&["check-uplink"]);
    let text = String::from_utf8_lossy(&check.stdout);
    assert!(!check.status.success(), "{text}");
    let line = text
        .lines()
        .find(|l| l.contains("OAuth token"))
        .unwrap_or_else(|| panic!("no OAuth token line:\n{text}"));
    assert!(
        line.contains("✗") && line.contains("invalid_client"),
        "{text}"
    );
    assert!(
        text.contains("uplink.oauth2.token_url, client_id, key_file"),
        "the fix: {text}"
    );
    // doctor's one uplink line names the same refusal.
    let doctor = h.vitalgate_output(&["doctor"]);
    let text = String::from_utf8_lossy(&doctor.stdout);
    let line = text
        .lines()
        .find(|l| l.contains(" uplink ") && !l.contains("certificate"))
        .unwrap_or_else(|| panic!("no uplink line:\n{text}"));
    assert!(
        line.contains("✗") && line.contains("OAuth token") && line.contains("invalid_client"),
        "{text}"
    );

    let mut agent = h.spawn_agent();
    h.publish(&(0..4).map(|i| bp_point(i, 125, 85)).collect::<Vec<_>>())
        .await;
    h.wait_for_log(
        &agent,
        "ALARM: the OAuth token endpoint refuses",
        1,
        Duration::from_secs(30),
    );
    // Several probes go to the token endpoint meanwhile (1 s, then 2 s apart).
    let deadline = Instant::now() + Duration::from_secs(30);
    while h.fhir.token_requests().len() < 4 {
        assert!(Instant::now() < deadline, "{:?}", h.fhir.token_requests());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(fhir_posts(&h), 0, "nothing sent without a token");
    assert!(h.fhir.observation_identifiers().is_empty());

    h.fhir.set_token_refusal(false);
    wait_delivered(&h, &agent, 4, Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    agent.terminate();
    let log = agent.stderr();
    assert_eq!(
        log.matches("ALARM: the OAuth token endpoint refuses")
            .count(),
        1,
        "one alarm per episode:\n{log}"
    );
    assert!(log.contains("invalid_client"), "{log}");
    assert_eq!(log.matches("pause ended").count(), 1, "{log}");
    assert!(!log.contains("dead letter"), "{log}");
    assert_no_secret_logged(&log);
    h.assert_each_once(4);
    let status = h.vitalgate(&["status"]);
    assert!(status.contains("pending=0"), "{status}");
    assert!(status.contains("dead_letters=0"), "{status}");

    // With the registration back, check-uplink passes and still posts nothing.
    let posts = fhir_posts(&h);
    let check = h.vitalgate_output(&["check-uplink"]);
    let text = String::from_utf8_lossy(&check.stdout);
    assert!(check.status.success(), "{text}");
    assert!(text.contains("bearer token granted"), "{text}");
    assert_eq!(fhir_posts(&h), posts);
}

/// A FHIR server that answers 401 even to a fresh token: one refresh and one resend, then the
/// second 401 pauses uploads (one alarm, readings pending, no dead letter); delivered once the
/// server accepts the gateway again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_401_that_persists_after_one_refresh_pauses_uploads_and_dead_letters_nothing() {
    let h = Harness::with_uplink_settings(
        Broker::embedded(),
        "pause_initial_secs = 5\npause_max_secs = 5",
    )
    .await;
    enable_oauth(&h, "ES384", 3600);
    h.fhir.set_mode(Mode::Fail {
        status: 401,
        retry_after: None,
    });
    let mut agent = h.spawn_agent();
    h.publish(&(0..4).map(|i| bp_point(i, 126, 86)).collect::<Vec<_>>())
        .await;
    h.wait_for_log(
        &agent,
        "ALARM: the FHIR server refuses this gateway",
        1,
        Duration::from_secs(30),
    );
    // The first exchange, before the alarm (the first probe comes 5 s later): a token, the
    // Bundle, one new token, the Bundle once more.
    let seen: Vec<(bool, u16)> = h
        .fhir
        .requests()
        .iter()
        .map(|r| (r.path == "/token", r.status))
        .collect();
    assert_eq!(
        seen,
        [(true, 200), (false, 401), (true, 200), (false, 401)],
        "{:?}",
        h.fhir.requests()
    );
    h.fhir.set_mode(Mode::Normal);
    wait_delivered(&h, &agent, 4, Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    agent.terminate();
    let log = agent.stderr();
    assert_eq!(
        log.matches("ALARM: the FHIR server refuses this gateway")
            .count(),
        1,
        "{log}"
    );
    assert!(log.contains("status=401"), "{log}");
    assert!(!log.contains("dead letter"), "{log}");
    assert_no_secret_logged(&log);
    assert_assertions_valid(&h, "ES384");
    h.assert_each_once(4);
    let status = h.vitalgate(&["status"]);
    assert!(status.contains("pending=0"), "{status}");
    assert!(status.contains("dead_letters=0"), "{status}");
}

/// A gateway configured with the wrong client id: the server refuses its assertions, uploads
/// pause (one alarm, readings pending); the technician fixes `uplink.oauth2.client_id` and
/// reloads with SIGHUP: the new key and id are used and every reading goes, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_client_id_pauses_and_a_sighup_with_the_fixed_config_delivers() {
    let h = Harness::with_uplink_settings(
        Broker::embedded(),
        "pause_initial_secs = 1\npause_max_secs = 2",
    )
    .await;
    enable_oauth(&h, "ES384", 3600);
    let good = std::fs::read_to_string(&h.config).unwrap();
    let wrong = good.replace(
        &format!("client_id = \"{CLIENT_ID}\""),
        "client_id = \"not-registered\"",
    );
    assert_ne!(good, wrong);
    std::fs::write(&h.config, wrong).unwrap();
    let mut agent = h.spawn_agent();
    h.publish(&(0..4).map(|i| bp_point(i, 127, 87)).collect::<Vec<_>>())
        .await;
    h.wait_for_log(
        &agent,
        "ALARM: the OAuth token endpoint refuses",
        1,
        Duration::from_secs(30),
    );
    let refused = h.fhir.token_requests();
    assert!(refused.iter().all(|r| !r.accepted), "{refused:?}");
    assert!(refused[0].reason.contains("iss and sub"), "{refused:?}");
    assert_eq!(fhir_posts(&h), 0);

    std::fs::write(&h.config, good).unwrap();
    let status = std::process::Command::new("kill")
        .args(["-HUP", &agent.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    h.wait_for_log(&agent, "configuration reloaded", 1, Duration::from_secs(30));
    wait_delivered(&h, &agent, 4, Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    agent.terminate();
    let log = agent.stderr();
    assert_eq!(
        log.matches("ALARM: the OAuth token endpoint refuses")
            .count(),
        1,
        "{log}"
    );
    assert!(!log.contains("dead letter"), "{log}");
    assert_no_secret_logged(&log);
    h.assert_each_once(4);
    let last = h.fhir.token_requests().pop().unwrap();
    assert!(last.accepted, "{}", last.reason);
    let status = h.vitalgate(&["status"]);
    assert!(status.contains("pending=0"), "{status}");
    assert!(status.contains("dead_letters=0"), "{status}");
}

/// No `token_url`: the token endpoint is read from the FHIR server's
/// `.well-known/smart-configuration`. While the server publishes none (404), check-uplink fails
/// naming the fix, uploads pause with one alarm and nothing is sent or dead-lettered; once it is
/// published, everything is delivered once with tokens from the endpoint it names (the
/// assertions' `aud`), and a token renewed after a 401 comes from the endpoint already known.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_token_url_the_endpoint_is_discovered_and_a_missing_configuration_pauses() {
    let h = Harness::with_uplink_settings(
        Broker::embedded(),
        "pause_initial_secs = 1\npause_max_secs = 2",
    )
    .await;
    enable_oauth_with(&h, "ES384", 3600, false);
    h.fhir
        .set_smart_configuration(Some((404, r#"{"resourceType":"OperationOutcome"}"#.into())));

    let check = h.vitalgate_output(&["check-uplink"]);
    let text = String::from_utf8_lossy(&check.stdout);
    assert!(!check.status.success(), "{text}");
    let line = text
        .lines()
        .find(|l| l.contains("OAuth token"))
        .unwrap_or_else(|| panic!("no OAuth token line:\n{text}"));
    assert!(
        line.contains("✗") && line.contains("smart-configuration") && line.contains("HTTP 404"),
        "{text}"
    );
    assert!(
        text.contains("set uplink.oauth2.token_url"),
        "the fix: {text}"
    );

    let mut agent = h.spawn_agent();
    h.publish(&(0..4).map(|i| bp_point(i, 125, 85)).collect::<Vec<_>>())
        .await;
    h.wait_for_log(
        &agent,
        "ALARM: no OAuth token endpoint",
        1,
        Duration::from_secs(30),
    );
    // The probes read the configuration again (1 s, then 2 s apart).
    let deadline = Instant::now() + Duration::from_secs(30);
    while h.fhir.smart_configuration_requests() < 4 {
        assert!(Instant::now() < deadline, "{:?}", h.fhir.requests());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        h.fhir.token_requests().is_empty(),
        "no endpoint, no token request"
    );
    assert_eq!(fhir_posts(&h), 0, "nothing sent without a token");

    h.fhir.set_smart_configuration(None);
    wait_delivered(&h, &agent, 4, Duration::from_secs(30)).await;
    // A revoked token: the 401 makes the gateway ask for a new one, from the endpoint it
    // already knows (no second read of the configuration).
    let reads = h.fhir.smart_configuration_requests();
    assert_eq!(h.fhir.tokens_issued(), 1);
    h.fhir.revoke_tokens();
    h.publish(&(4..12).map(|i| bp_point(i, 125, 85)).collect::<Vec<_>>())
        .await;
    wait_delivered(&h, &agent, 12, Duration::from_secs(30)).await;
    assert!(fhir_posts(&h) >= 3, "several Bundles");
    assert_eq!(
        h.fhir.tokens_issued(),
        2,
        "one token, then one after the 401"
    );
    assert_eq!(
        h.fhir.smart_configuration_requests(),
        reads,
        "the discovered endpoint is kept"
    );
    assert_assertions_valid(&h, "ES384");
    tokio::time::sleep(Duration::from_millis(500)).await;
    agent.terminate();
    let log = agent.stderr();
    assert_eq!(
        log.matches("ALARM: no OAuth token endpoint").count(),
        1,
        "one alarm per episode:\n{log}"
    );
    assert!(
        log.contains("OAuth token endpoint discovered from the FHIR server's SMART configuration"),
        "{log}"
    );
    assert!(!log.contains("dead letter"), "{log}");
    assert_no_secret_logged(&log);
    h.assert_each_once(12);

    let check = h.vitalgate_output(&["check-uplink"]);
    let text = String::from_utf8_lossy(&check.stdout);
    assert!(check.status.success(), "{text}");
    assert!(
        text.contains(&format!(
            "{} (discovered from the FHIR server's .well-known/smart-configuration): bearer token granted",
            h.fhir.token_url()
        )),
        "{text}"
    );
}
