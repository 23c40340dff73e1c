//! Drain an outbox backlog to the devkit's loopback mTLS FHIR server (issue #12).
//!
//! Run: `cargo bench -p vitalgate --bench uplink_drain` (or `--profile dev` for a quick,
//! unoptimised run). `UPLINK_DRAIN_N` readings (default 2,000) are stored in a fresh outbox and
//! drained by the real `Uploader` (store, adaptive batch, Bundle building, mTLS client, acks) to
//! a fresh server, once per row:
//! - vitalgate, gzip bodies, cap `uplink.batch_size` = 20 (the default) and 40 (the maximum);
//! - vitalgate, plain bodies (the server answers 415 to gzip; the client falls back at once);
//! - a reference client: the same readings as Bundles of 20 built before the clock starts, sent
//!   back to back by the same mTLS client (gzip), no store, no scheduler, no acks: the ceiling
//!   of this server and transport;
//! - the naive baseline in the same run: one reading per request (cap 1), plain bodies.
//!
//! readings/s (wall clock, until the outbox is empty) and bytes per reading: everything the
//! server read from the TCP connections (TLS handshakes, records, HTTP headers and bodies)
//! divided by the readings. Compare rows within one run only: the machine is shared.
#![allow(clippy::disallowed_methods)]

mod common;
use common::{bp, device};

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use vitalgate::pipeline::{readings_from_record, CaptureClock};
use vitalgate::reading::{Reading, Source};
use vitalgate::store::{NewRecord, Outbox, OutboxOptions, StoreKey};
use vitalgate::uplink::backoff::Backoff;
use vitalgate::uplink::client::BundleSender;
use vitalgate::uplink::client::{UplinkClient, UplinkTls};
use vitalgate::uplink::fhir::{build_transaction_bundle, GatewayInfo};
use vitalgate::uplink::scheduler::{SchedulerConfig, REJECTION_STREAK_LIMIT};
use vitalgate::uploader::{ConsentSource, Uploader};
use vitalgate_devkit::fhir_server::{FhirTestServer, ServerConfig};
use vitalgate_devkit::pki::TestPki;

fn readings(count: u64) -> Vec<Reading> {
    let dev = device();
    (0..count)
        .flat_map(|n| {
            let (record, at) = bp(n);
            readings_from_record(
                &dev,
                &record,
                &Source::Ble {
                    address: "00:09:1F:AA:BB:CC".into(),
                },
                &CaptureClock::default(),
                at,
            )
            .expect("reading")
        })
        .collect()
}

struct Row {
    name: &'static str,
    per_sec: f64,
    bytes_per_reading: f64,
    requests: usize,
}

async fn drain(name: &'static str, readings: &[Reading], cap: usize, gzip: bool) -> Row {
    let dir = tempfile::tempdir().expect("tmp");
    let pki = TestPki::generate(&dir.path().join("pki")).expect("pki");
    let fhir = FhirTestServer::start(ServerConfig::for_pki(&pki))
        .await
        .expect("server");
    fhir.set_refuse_gzip(!gzip);
    let store = Arc::new(
        Outbox::open(
            &dir.path().join("outbox"),
            StoreKey::from_bytes([7; 32]),
            OutboxOptions::default(),
        )
        .expect("outbox"),
    );
    for chunk in readings.chunks(500) {
        let recs: Vec<NewRecord<'_, Reading>> = chunk.iter().map(Reading::as_record).collect();
        store.insert_records(&recs).expect("insert");
    }
    let client = UplinkClient::new(&UplinkTls {
        fhir_base: fhir.base_url().parse().expect("url"),
        pin_spki_sha256: Vec::new(),
        post_quantum: vitalgate::tls::PostQuantum::default(),
        ca_file: pki.ca_cert.clone(),
        client_cert: pki.client_cert.clone(),
        client_key: pki.client_key.clone(),
        allow_insecure_http: false,
        timeout: Duration::from_secs(30),
    })
    .expect("client");
    let uploader = Uploader {
        store: Arc::clone(&store),
        sender: client,
        gateway: GatewayInfo::new("gw", "0"),
        batch_size: cap,
        schedule: SchedulerConfig {
            retry: Backoff::new(Duration::from_millis(50), Duration::from_secs(1)),
            pause: Backoff::new(Duration::from_millis(50), Duration::from_secs(1)),
            rejection_streak_limit: REJECTION_STREAK_LIMIT,
        },
        wake: Arc::new(Notify::new()),
        seed: 1,
        consent: ConsentSource::new(&Default::default()),
        metering: Default::default(),
        ledger_file: None,
    };
    let shutdown = CancellationToken::new();
    let start = Instant::now();
    let task = tokio::spawn(uploader.run(shutdown.clone()));
    loop {
        let s = store.stats().expect("stats");
        assert_eq!(s.dead, 0, "{name}: dead letters");
        if s.pending == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let elapsed = start.elapsed();
    shutdown.cancel();
    task.await.expect("uploader");
    let n = readings.len();
    assert_eq!(
        fhir.stored_observations().len(),
        n,
        "{name}: one Observation each"
    );
    Row {
        name,
        per_sec: n as f64 / elapsed.as_secs_f64(),
        bytes_per_reading: fhir.wire_bytes_in() as f64 / n as f64,
        requests: fhir.request_count(),
    }
}

/// The reference: the same readings as Bundles of `cap`, built before the clock starts, sent
/// one after the other by the same mTLS client (gzip): no store, no scheduler, no acks.
async fn reference(name: &'static str, readings: &[Reading], cap: usize) -> Row {
    let dir = tempfile::tempdir().expect("tmp");
    let pki = TestPki::generate(&dir.path().join("pki")).expect("pki");
    let fhir = FhirTestServer::start(ServerConfig::for_pki(&pki))
        .await
        .expect("server");
    let client = UplinkClient::new(&UplinkTls {
        fhir_base: fhir.base_url().parse().expect("url"),
        pin_spki_sha256: Vec::new(),
        post_quantum: vitalgate::tls::PostQuantum::default(),
        ca_file: pki.ca_cert.clone(),
        client_cert: pki.client_cert.clone(),
        client_key: pki.client_key.clone(),
        allow_insecure_http: false,
        timeout: Duration::from_secs(30),
    })
    .expect("client");
    let gateway = GatewayInfo::new("gw", "0");
    let bundles: Vec<serde_json::Value> = readings
        .chunks(cap)
        .map(|c| build_transaction_bundle(&gateway, c).expect("bundle").0)
        .collect();
    let start = Instant::now();
    for b in &bundles {
        let r = client.send(b).await.expect("send");
        assert_eq!(r.status, 200, "{name}");
    }
    let elapsed = start.elapsed();
    let n = readings.len();
    assert_eq!(
        fhir.stored_observations().len(),
        n,
        "{name}: one Observation each"
    );
    Row {
        name,
        per_sec: n as f64 / elapsed.as_secs_f64(),
        bytes_per_reading: fhir.wire_bytes_in() as f64 / n as f64,
        requests: fhir.request_count(),
    }
}

fn main() {
    let n: u64 = std::env::var("UPLINK_DRAIN_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let readings = readings(n);
    let rows = rt.block_on(async {
        vec![
            drain("vitalgate gzip, cap 20", &readings, 20, true).await,
            drain("vitalgate gzip, cap 40", &readings, 40, true).await,
            drain("vitalgate plain, cap 20", &readings, 20, false).await,
            reference("reference: prebuilt Bundles of 20", &readings, 20).await,
            drain("naive: 1 reading/request, plain", &readings, 1, false).await,
        ]
    });
    let naive = rows.last().map_or(1.0, |r| r.per_sec);
    let reference = rows
        .iter()
        .find(|r| r.name.starts_with("reference"))
        .map_or(1.0, |r| r.per_sec);
    println!(
        "uplink drain: {} readings (BP panels) to the loopback mTLS server",
        readings.len()
    );
    println!(
        "| {:<34} | {:>10} | {:>8} | {:>6} | {:>14} | {:>8} |",
        "client", "readings/s", "x naive", "% ref", "bytes/reading", "requests"
    );
    println!(
        "|{:-<36}|{:->12}|{:->10}|{:->8}|{:->16}|{:->10}|",
        "", "", "", "", "", ""
    );
    for r in &rows {
        println!(
            "| {:<34} | {:>10.0} | {:>8.2} | {:>6.0} | {:>14.0} | {:>8} |",
            r.name,
            r.per_sec,
            r.per_sec / naive,
            100.0 * r.per_sec / reference,
            r.bytes_per_reading,
            r.requests
        );
    }
}
