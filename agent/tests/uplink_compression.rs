//! Request bodies go `Content-Encoding: gzip`; a server that answers 415 gets the same Bundle
//! plain at once and every later one plain; the bytes on the wire are counted.

use std::time::Duration;

use serde_json::{json, Value};
use vitalgate::uplink::client::{BundleSender, UplinkClient};

mod support;
use support::{patience, setup, Setup};

impl Setup {
    fn client(&self) -> UplinkClient {
        self.client_with_timeout(patience(Duration::from_secs(10)))
    }
}

/// A transaction of `n` conditional creates of Devices, `first` the first serial number.
fn bundle(first: usize, n: usize) -> Value {
    let entries: Vec<Value> = (first..first + n)
        .map(|i| {
            json!({
                "fullUrl": format!("urn:uuid:6f1c2a3e-0b7d-4c55-9a51-{i:012}"),
                "resource": {"resourceType": "Device",
                    "identifier": [{"system": "urn:vitalgate:test-device", "value": format!("serial-{i}")}],
                    "manufacturer": "Example Medical", "modelNumber": "BP-5000"},
                "request": {"method": "POST", "url": "Device",
                    "ifNoneExist": format!("identifier=urn:vitalgate:test-device|serial-{i}")}
            })
        })
        .collect();
    json!({"resourceType": "Bundle", "type": "transaction", "entry": entries})
}

#[tokio::test]
async fn bodies_are_gzip_compressed_and_counted() {
    let s = setup().await;
    let client = s.client();
    let b = bundle(0, 50);
    let plain = serde_json::to_vec(&b).unwrap().len();
    let resp = client.send(&b).await.unwrap();
    assert_eq!(resp.status, 200);
    assert_eq!(s.fhir.stored_devices().len(), 50);
    let req = &s.fhir.requests()[0];
    assert_eq!(req.content_encoding.as_deref(), Some("gzip"));
    assert!(req.body_bytes * 4 < plain, "{} of {plain}", req.body_bytes);
    assert_eq!(client.body_bytes_sent(), req.body_bytes as u64);
    eprintln!(
        "50 Device entries: {plain} bytes plain, {} gzip",
        req.body_bytes
    );
}

#[tokio::test]
async fn a_415_to_gzip_resends_plain_at_once_and_remembers() {
    let s = setup().await;
    s.fhir.set_refuse_gzip(true);
    let client = s.client();
    let resp = client.send(&bundle(0, 3)).await.unwrap();
    assert_eq!(resp.status, 200, "the plain resend was accepted");
    assert!(!client.sends_gzip());
    let resp = client.send(&bundle(3, 3)).await.unwrap();
    assert_eq!(resp.status, 200);
    let seen: Vec<(u16, Option<String>)> = s
        .fhir
        .requests()
        .into_iter()
        .map(|r| (r.status, r.content_encoding))
        .collect();
    assert_eq!(
        seen,
        vec![(415, Some("gzip".into())), (200, None), (200, None)],
        "one refused gzip body, then plain only"
    );
    assert_eq!(s.fhir.stored_devices().len(), 6);
    let total: u64 = s.fhir.requests().iter().map(|r| r.body_bytes as u64).sum();
    assert_eq!(
        client.body_bytes_sent(),
        total,
        "every body counted, the refused one too"
    );
}

#[tokio::test]
async fn gzip_can_be_turned_off() {
    let s = setup().await;
    let client = s.client().with_gzip(false);
    assert_eq!(client.send(&bundle(0, 2)).await.unwrap().status, 200);
    assert_eq!(s.fhir.requests()[0].content_encoding, None);
}
