//! Hostile or broken FHIR servers cost bounded memory and never a panic: each fault of the
//! devkit loopback mTLS server is met with its own typed `SendError`, asserted on the variant.
//! No test asserts speed; deadlines here only keep a broken build from hanging.

use std::time::Duration;

use serde_json::json;
use vitalgate::uplink::client::{BundleSender, SendError, UplinkClient};
use vitalgate::uplink::limits::MAX_BODY;
use vitalgate_devkit::fhir_server::Mode;

const GIB: u64 = 1 << 30;

mod support;
use support::{patience, setup, Setup};

impl Setup {
    fn client(&self, timeout: Duration) -> UplinkClient {
        self.client_with_timeout(timeout)
    }

    async fn send(
        &self,
        timeout: Duration,
    ) -> Result<vitalgate::uplink::client::RawResponse, SendError> {
        // A generous outer deadline: the test must end even if the client never does.
        tokio::time::timeout(
            patience(Duration::from_secs(120)),
            self.client(timeout).send(&bundle()),
        )
        .await
        .expect("the client gave up by itself")
    }
}

fn bundle() -> serde_json::Value {
    json!({"resourceType": "Bundle", "type": "transaction", "entry": [{
        "fullUrl": "urn:uuid:6f1c2a3e-0b7d-4c55-9a51-2f8e3c1d7a01",
        "resource": {"resourceType": "Device", "identifier": [{"system": "urn:x", "value": "d1"}]},
        "request": {"method": "POST", "url": "Device", "ifNoneExist": "identifier=urn:x|d1"}
    }]})
}

/// Peak resident set size of this test process (`VmHWM`), in bytes.
fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    kb * 1024
}

#[tokio::test]
async fn a_slow_loris_answer_ends_at_the_configured_timeout() {
    let s = setup().await;
    s.fhir.set_mode(Mode::SlowLoris {
        byte_every: Duration::from_millis(50),
    });
    // Scaled under qemu, where the handshake alone can take a second: the trickle must start.
    let timeout = patience(Duration::from_secs(1));
    let err = s.send(timeout).await.unwrap_err();
    assert!(
        matches!(err, SendError::Timeout(t) if t == timeout),
        "{err:?}"
    );
    // The trickle did start: the deadline is a total one, not just per read.
    assert!(s.fhir.body_bytes_sent() > 0);
    assert_eq!(s.fhir.stored_observations().len(), 0);
}

#[tokio::test]
async fn a_chunked_1_gib_body_is_stopped_at_the_cap_not_downloaded() {
    let s = setup().await;
    s.fhir.set_mode(Mode::HugeBody {
        bytes: GIB,
        declare_length: false,
    });
    let err = s.send(Duration::from_secs(60)).await.unwrap_err();
    assert!(matches!(err, SendError::ResponseTooLarge), "{err:?}");
    // Give the server a moment to notice the client went away, then look at what it sent:
    // the cap plus what the socket buffers held, far from 1 GiB.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let sent = s.fhir.body_bytes_sent();
    assert!(
        sent >= MAX_BODY as u64,
        "the client read up to the cap: {sent}"
    );
    assert!(sent < 64 << 20, "the server sent {sent} bytes");
    // Neither side held the body: the whole test process stays far below 1 GiB.
    let rss = peak_rss();
    assert!(rss < 256 << 20, "peak RSS {rss} bytes");
}

#[tokio::test]
async fn a_1_gib_content_length_is_refused_before_reading_the_body() {
    let s = setup().await;
    s.fhir.set_mode(Mode::HugeBody {
        bytes: GIB,
        declare_length: true,
    });
    let err = s.send(Duration::from_secs(60)).await.unwrap_err();
    assert!(matches!(err, SendError::ResponseTooLarge), "{err:?}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let sent = s.fhir.body_bytes_sent();
    assert!(
        sent < MAX_BODY as u64,
        "the body was not read: {sent} bytes went out"
    );
}

#[tokio::test]
async fn deeply_nested_json_is_refused_before_serde_without_a_stack_overflow() {
    let s = setup().await;
    for depth in [33, 129, 1_000_000] {
        s.fhir.set_mode(Mode::DeepJson { depth });
        let err = s.send(Duration::from_secs(30)).await.unwrap_err();
        assert!(
            matches!(err, SendError::ResponseTooDeep),
            "depth {depth}: {err:?}"
        );
    }
}

#[tokio::test]
async fn a_redirect_loop_is_not_followed_and_is_its_own_error() {
    let s = setup().await;
    s.fhir.set_mode(Mode::RedirectLoop);
    let err = s.send(patience(Duration::from_secs(10))).await.unwrap_err();
    assert!(
        matches!(err, SendError::Redirected { status: 307 }),
        "{err:?}"
    );
    assert_eq!(
        s.fhir.request_count(),
        1,
        "exactly one request, no redirect followed"
    );
    assert_eq!(err.class(), "redirected");
}

#[tokio::test]
async fn a_per_entry_4xx_inside_a_200_is_an_answer_for_the_outcome_rules() {
    let s = setup().await;
    s.fhir.set_mode(Mode::FailEntry(0));
    let resp = s.send(patience(Duration::from_secs(10))).await.unwrap();
    assert_eq!(resp.status, 200);
    let body: serde_json::Value = serde_json::from_slice(&resp.body).unwrap();
    assert_eq!(body["entry"][0]["response"]["status"], "400 Bad Request");
    assert_eq!(s.fhir.stored_devices().len(), 0, "nothing committed");
}
