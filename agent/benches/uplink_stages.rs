//! Where the uploader's CPU goes per Bundle (issue #12): the stages of one drained Bundle,
//! timed one by one on one thread, no server and no network.
//!
//! Run: `UPLINK_STAGES_N=20000 cargo bench -p vitalgate --bench uplink_stages`. A fresh outbox
//! holds `UPLINK_STAGES_N` BP readings (default 10,000, the `uplink_drain` fixture); they are
//! drained in Bundles of the default size (48 readings after the first), each through:
//! - read: `pending_where_skipping` (sled scan, unseal, postcard decode of envelope and reading);
//! - build: `fhir::build_bundle` with the Devices known (as every Bundle after the first): it
//!   writes the Bundle as JSON bytes, the request body (before 2026-12-07 it built a
//!   `serde_json::Value`, serialized in a stage of its own);
//! - drop: freeing the built Bundle;
//! - gzip: the body at the client's level;
//! - classify: a 48-entry `transaction-response` answer read by `outcome::classify`;
//! - ack: `Outbox::ack_read` of the Bundle's readings by the sequence numbers read, as the
//!   uploader acks (its `fdatasync` included; before 2026-12-07 13:00 UTC, `Outbox::ack` by
//!   id, which opened each record again).
//!
//! Reports the mean wall time per Bundle of each stage and its share (the ack's includes its
//! wait for the disk), then body bytes and time per gzip level. Compare within one run only.
#![allow(clippy::disallowed_methods)]

mod common;
use common::readings;

use std::collections::HashSet;
use std::io::Write;
use std::time::{Duration, Instant};

use vitalgate::reading::Reading;
use vitalgate::store::{NewRecord, Outbox, OutboxOptions, StoreKey};
use vitalgate::uplink::fhir::{build_bundle, readings_that_fit, GatewayInfo, KnownDevices};
use vitalgate::uplink::outcome::{classify, Outcome};

/// The answer a server gives a committed Bundle of `entries` Observation creates.
fn answer(entries: usize, first_id: usize) -> Vec<u8> {
    let entry: Vec<serde_json::Value> = (0..entries)
        .map(|i| {
            serde_json::json!({"response": {
                "status": "201 Created",
                "location": format!("Observation/{}/_history/1", first_id + i),
                "etag": "W/\"1\"",
            }})
        })
        .collect();
    serde_json::to_vec(&serde_json::json!({
        "resourceType": "Bundle",
        "type": "transaction-response",
        "entry": entry,
    }))
    .expect("json")
}

/// Runs `f`, adding its wall time to `into`. (Per-stage CPU time is not measured here: the
/// kernel charges a thread's CPU time at its next context switch, which for every stage but
/// the ack's `fdatasync` is later. Use `perf` for CPU; the stages but the ack do no I/O.)
fn timed<T>(into: &mut Duration, f: impl FnOnce() -> T) -> T {
    let t = Instant::now();
    let out = f();
    *into += t.elapsed();
    out
}

#[derive(Default)]
struct Stages {
    read: Duration,
    build: Duration,
    drop: Duration,
    gzip: Duration,
    classify: Duration,
    ack: Duration,
    bundles: u32,
    readings: usize,
    plain_bytes: usize,
    gzip_bytes: usize,
}

fn main() {
    let n: u64 = std::env::var("UPLINK_STAGES_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let readings = readings(n);
    let dir = tempfile::tempdir().expect("tmp");
    let store = Outbox::open(
        &dir.path().join("outbox"),
        StoreKey::from_bytes([7; 32]),
        OutboxOptions::default(),
    )
    .expect("outbox");
    for chunk in readings.chunks(500) {
        let recs: Vec<NewRecord<'_, Reading>> = chunk.iter().map(Reading::as_record).collect();
        store.insert_records(&recs).expect("insert");
    }
    let gateway = GatewayInfo::new("gw", "0");
    let per_bundle = readings_that_fit(&readings[..readings.len().min(50)]);
    // The Devices as the first Bundle's answer teaches them.
    let first =
        build_bundle(&gateway, &readings[..per_bundle], &KnownDevices::default()).expect("bundle");
    let mut known = KnownDevices::default();
    let devices_answer: Vec<serde_json::Value> = (0..first.entries.len() + first.devices.len())
        .map(|i| serde_json::json!({"response": {"status": "201 Created", "location": format!("Device/{i}/_history/1")}}))
        .collect();
    let body = serde_json::to_vec(&serde_json::json!({"entry": devices_answer})).expect("json");
    assert_eq!(known.learn_from_response(&body, &first.devices), 2);

    let mut s = Stages::default();
    let skip = HashSet::new();
    // The first bodies, to compare gzip levels on afterwards.
    let mut bodies: Vec<Vec<u8>> = Vec::new();
    loop {
        let (records, _) = timed(&mut s.read, || {
            store
                .pending_where_skipping::<Reading>(per_bundle, &skip, |_| true)
                .expect("read")
        });
        if records.is_empty() {
            break;
        }
        let read: Vec<([u8; 32], u64)> = records.iter().map(|p| (p.id, p.seq)).collect();
        let batch: Vec<Reading> = records.into_iter().map(|p| p.value).collect();
        let built = timed(&mut s.build, || {
            build_bundle(&gateway, &batch, &known).expect("bundle")
        });
        let plain = built.json.clone();
        let gz = timed(&mut s.gzip, || {
            let mut enc = flate2::write::GzEncoder::new(
                Vec::with_capacity(plain.len() / 4),
                flate2::Compression::default(),
            );
            enc.write_all(&plain).expect("gzip");
            enc.finish().expect("gzip")
        });
        let total = built.entry_count;
        let resp = answer(total, s.readings);
        let outcome = timed(&mut s.classify, || {
            classify(200, None, &resp, total, &built.entries, chrono::Utc::now())
        });
        let Outcome::Accepted(accepted) = outcome else {
            panic!("not accepted")
        };
        assert_eq!(accepted.len(), batch.len());
        timed(&mut s.drop, || drop(built));
        let acked = timed(&mut s.ack, || store.ack_read(&read).expect("ack"));
        assert_eq!(acked, batch.len());
        s.bundles += 1;
        s.readings += batch.len();
        s.plain_bytes += plain.len();
        s.gzip_bytes += gz.len();
        if bodies.len() < 50 {
            bodies.push(plain);
        }
    }
    assert_eq!(s.readings, readings.len());
    let total = s.read + s.build + s.drop + s.gzip + s.classify + s.ack;
    println!(
        "uplink stages: {} readings in {} Bundles of up to {per_bundle}; {:.0} JSON bytes, \
         {:.1} gzip bytes per reading (bodies only)",
        s.readings,
        s.bundles,
        s.plain_bytes as f64 / s.readings as f64,
        s.gzip_bytes as f64 / s.readings as f64,
    );
    println!(
        "| {:<42} | {:>13} | {:>6} |",
        "stage", "µs per Bundle", "share"
    );
    println!("|{:-<44}|{:->15}|{:->8}|", "", "", "");
    let row = |name: &str, d: Duration| {
        println!(
            "| {:<42} | {:>13.0} | {:>5.1}% |",
            name,
            d.as_secs_f64() * 1e6 / f64::from(s.bundles),
            100.0 * d.as_secs_f64() / total.as_secs_f64()
        );
    };
    row("read (sled scan, unseal, decode)", s.read);
    row("build Bundle (its JSON)", s.build);
    row("drop the built Bundle", s.drop);
    row("gzip (level 6)", s.gzip);
    row("classify answer", s.classify);
    row("ack (sled transaction, fdatasync)", s.ack);
    row("total", total);

    // The gzip level: body bytes per reading and time per Bundle, on the first bodies.
    let readings_in = per_bundle * bodies.len();
    println!("| gzip level | body bytes/reading | µs per Bundle |");
    println!("|-----------:|-------------------:|--------------:|");
    for level in [1, 2, 3, 4, 5, 6, 9] {
        let t = Instant::now();
        let bytes: usize = bodies
            .iter()
            .map(|b| {
                let mut enc = flate2::write::GzEncoder::new(
                    Vec::with_capacity(b.len() / 4),
                    flate2::Compression::new(level),
                );
                enc.write_all(b).expect("gzip");
                enc.finish().expect("gzip").len()
            })
            .sum();
        println!(
            "| {level:>10} | {:>18.1} | {:>13.0} |",
            bytes as f64 / readings_in as f64,
            t.elapsed().as_secs_f64() * 1e6 / bodies.len() as f64
        );
    }
}
