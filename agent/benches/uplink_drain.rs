//! Drain an outbox backlog to the devkit's loopback mTLS FHIR server (issue #12).
//!
//! Run: `UPLINK_DRAIN_N=100000 cargo bench -p vitalgate --bench uplink_drain` (or `--profile
//! dev` for a quick, unoptimised run). `UPLINK_DRAIN_N` readings (default 2,000) are stored in a
//! fresh outbox and drained by the real `Uploader` (store, adaptive batch, Bundle building,
//! Device cache, mTLS client, acks) to a fresh server, once per row:
//! - vitalgate, gzip bodies, cap `uplink.batch_size` = 50 (the default) and 20;
//! - vitalgate, plain bodies (the server answers 415 to gzip; the client falls back at once);
//! - two reference clients: the same Bundles the uploader sends at the default cap (as many
//!   readings as fit in 50 entries, the Devices referenced by the ids the first Bundle's answer
//!   gave), all built before the clock starts and sent back to back: as gzip bodies encoded
//!   beforehand, by a bare reqwest client on the uplink's TLS configuration (the server's own
//!   ceiling, the `% ref` baseline), and as JSON values by the uplink client (which serializes
//!   and compresses each as it sends). No store, no scheduler, no acks. Their first Bundle
//!   (which creates the Devices) is sent before the clock starts;
//! - the naive baseline in the same run: one reading per request (cap 1), plain bodies, on the
//!   first `UPLINK_DRAIN_NAIVE_N` readings (default 5,000: its rate is steady, and 100,000 would
//!   take a quarter of an hour).
//!
//! `UPLINK_DRAIN_RTT_MS=<ms>`: every row reaches its server through a TCP relay in this process
//! that holds each chunk half that long in each direction (a link with that round-trip time;
//! TLS passes through it untouched). Unset: straight to the server on loopback.
//!
//! readings/s (wall clock, until the outbox is empty) and bytes per reading: everything the
//! server read from the TCP connections (TLS handshakes, records, HTTP headers and bodies)
//! divided by the readings. Compare rows within one run only: the machine is shared.
#![allow(clippy::disallowed_methods)]

mod common;
use common::readings;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use vitalgate::reading::Reading;
use vitalgate::store::{NewRecord, Outbox, OutboxOptions, StoreKey};
use vitalgate::uplink::backoff::Backoff;
use vitalgate::uplink::client::BundleSender;
use vitalgate::uplink::client::{tls_config, UplinkClient, UplinkTls};
use vitalgate::uplink::fhir::{build_bundle, readings_that_fit, GatewayInfo, KnownDevices};
use vitalgate::uplink::scheduler::{SchedulerConfig, REJECTION_STREAK_LIMIT};
use vitalgate::uploader::{ConsentSource, Uploader};
use vitalgate_devkit::fhir_server::{FhirTestServer, ServerConfig};
use vitalgate_devkit::pki::TestPki;

/// `UPLINK_DRAIN_PIN=1` (and at least 2 CPUs): the server runs on a runtime of its own, its
/// threads pinned to CPU 1, the clients, the outbox and everything else on CPU 0, as with a
/// server on another machine. Unset, all share every CPU.
///
/// Decided once, before any thread is pinned: `available_parallelism` follows the calling
/// thread's affinity, so asked after `main` pinned itself to CPU 0 it says 1, and (until this
/// was fixed) the server then started on the clients' runtime, on CPU 0 with them.
fn pinned() -> bool {
    static PINNED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *PINNED.get_or_init(|| {
        std::env::var("UPLINK_DRAIN_PIN").is_ok_and(|v| v == "1")
            && std::thread::available_parallelism().map_or(1, |n| n.get()) >= 2
    })
}

/// Pins the calling thread to `cpu` with util-linux's `taskset` (the workspace forbids the
/// `unsafe` a direct `sched_setaffinity` needs). Threads it starts later inherit the mask.
fn pin_current_thread(cpu: usize) {
    let link = std::fs::read_link("/proc/thread-self").expect("/proc/thread-self");
    let tid = link
        .file_name()
        .and_then(|t| t.to_str())
        .expect("thread id")
        .to_owned();
    let ok = std::process::Command::new("taskset")
        .args(["-p", "-c", &cpu.to_string(), &tid])
        .stdout(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "taskset could not pin thread {tid} to CPU {cpu}");
}

static SERVER_RT: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();

async fn start_server(config: ServerConfig) -> FhirTestServer {
    if !pinned() {
        return FhirTestServer::start(config).await.expect("server");
    }
    let rt = SERVER_RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .on_thread_start(|| pin_current_thread(1))
            .build()
            .expect("server runtime")
    });
    rt.spawn(async move { FhirTestServer::start(config).await.expect("server") })
        .await
        .expect("server task")
}

/// The round-trip time `UPLINK_DRAIN_RTT_MS` asks for, if any.
fn rtt() -> Option<Duration> {
    std::env::var("UPLINK_DRAIN_RTT_MS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|&ms| ms > 0)
        .map(Duration::from_millis)
}

/// The base URL the clients use: the server's own, or with `UPLINK_DRAIN_RTT_MS` that of a
/// relay in front of it that delays each direction by half the round-trip time.
async fn base_url(fhir: &FhirTestServer) -> String {
    let Some(rtt) = rtt() else {
        return fhir.base_url();
    };
    let server = fhir.addr();
    let listener = tokio::net::TcpListener::bind((server.ip(), 0))
        .await
        .expect("relay");
    let port = listener.local_addr().expect("relay").port();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(upstream) = tokio::net::TcpStream::connect(server).await else {
                continue;
            };
            let _ = (client.set_nodelay(true), upstream.set_nodelay(true));
            let (cr, cw) = client.into_split();
            let (ur, uw) = upstream.into_split();
            tokio::spawn(delayed_pipe(cr, uw, rtt / 2));
            tokio::spawn(delayed_pipe(ur, cw, rtt / 2));
        }
    });
    fhir.base_url()
        .replacen(&format!(":{}", server.port()), &format!(":{port}"), 1)
}

/// Copies `from` to `to`, each chunk written `delay` after it was read (in order).
async fn delayed_pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    delay: Duration,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(tokio::time::Instant, Vec<u8>)>();
    let writer = tokio::spawn(async move {
        while let Some((at, chunk)) = rx.recv().await {
            tokio::time::sleep_until(at).await;
            if to.write_all(&chunk).await.is_err() {
                break;
            }
        }
        let _ = to.shutdown().await;
    });
    let mut buf = vec![0u8; 64 * 1024];
    while let Ok(n) = from.read(&mut buf).await {
        if n == 0
            || tx
                .send((tokio::time::Instant::now() + delay, buf[..n].to_vec()))
                .is_err()
        {
            break;
        }
    }
    drop(tx);
    let _ = writer.await;
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
    let fhir = start_server(ServerConfig::for_pki(&pki)).await;
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
        fhir_base: base_url(&fhir).await.parse().expect("url"),
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
        store: Arc::<Outbox>::clone(&store),
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
    let n = readings.len();
    // Until the server holds every reading (a cheap count: the outbox's own count walks the
    // whole tree, which would steal a core from the uploader), then until the outbox is empty.
    while fhir.observation_count() < n {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    loop {
        let s = store.stats().expect("stats");
        assert_eq!(s.dead, 0, "{name}: dead letters");
        if s.pending == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let elapsed = start.elapsed();
    shutdown.cancel();
    task.await.expect("uploader");
    assert_eq!(fhir.observation_count(), n, "{name}: one Observation each");
    Row {
        name,
        per_sec: n as f64 / elapsed.as_secs_f64(),
        bytes_per_reading: fhir.wire_bytes_in() as f64 / n as f64,
        requests: fhir.request_count(),
    }
}

/// The reference clients: the uploader's Bundles at cap 50, built before the clock starts and
/// sent one after the other, no store, no scheduler, no acks. `raw`: as gzip bodies encoded
/// before the clock starts, by a bare reqwest client on the uplink's TLS configuration (the
/// server's own ceiling); otherwise as JSON values by the uplink client (which serializes and
/// compresses each as it sends). The first Bundle (which creates the Devices) goes before the
/// clock starts; its answer gives the Devices' ids.
async fn reference(name: &'static str, readings: &[Reading], raw: bool) -> Row {
    let dir = tempfile::tempdir().expect("tmp");
    let pki = TestPki::generate(&dir.path().join("pki")).expect("pki");
    let fhir = start_server(ServerConfig::for_pki(&pki)).await;
    let base = base_url(&fhir).await;
    let tls = UplinkTls {
        fhir_base: base.parse().expect("url"),
        pin_spki_sha256: Vec::new(),
        post_quantum: vitalgate::tls::PostQuantum::default(),
        ca_file: pki.ca_cert.clone(),
        client_cert: pki.client_cert.clone(),
        client_key: pki.client_key.clone(),
        allow_insecure_http: false,
        timeout: Duration::from_secs(30),
    };
    let client = UplinkClient::new(&tls).expect("client");
    let gateway = GatewayInfo::new("gw", "0");
    // As many readings as the uploader puts in one Bundle at cap 50 (Device entries counted).
    let per_bundle = readings_that_fit(&readings[..readings.len().min(50)]);
    let chunks: Vec<&[Reading]> = readings.chunks(per_bundle).collect();
    let mut known = KnownDevices::default();
    let first = build_bundle(&gateway, chunks[0], &known).expect("bundle");
    let r = client.send_json(&first.json).await.expect("send");
    assert_eq!(r.status, 200, "{name}");
    assert_eq!(known.learn_from_response(&r.body, &first.devices), 2);
    let bundles = chunks[1..]
        .iter()
        .map(|c| build_bundle(&gateway, c, &known).expect("bundle").json);
    let bytes_before;
    let start;
    if raw {
        let bodies: Vec<Vec<u8>> = bundles
            .map(|b| {
                use std::io::Write;
                let mut enc =
                    flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
                enc.write_all(&b).expect("gzip");
                enc.finish().expect("gzip")
            })
            .collect();
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(tls_config(&tls).expect("tls"))
            .build()
            .expect("http");
        bytes_before = fhir.wire_bytes_in();
        start = Instant::now();
        for body in bodies {
            let resp = http
                .post(&base)
                .header("Content-Type", "application/fhir+json")
                .header("Accept", "application/fhir+json")
                .header("Content-Encoding", "gzip")
                .body(body)
                .send()
                .await
                .expect("send");
            assert_eq!(resp.status().as_u16(), 200, "{name}");
            resp.bytes().await.expect("answer");
        }
    } else {
        // As values: the uplink client serializes each as it sends it.
        let bundles: Vec<serde_json::Value> = bundles
            .map(|json| serde_json::from_slice(&json).expect("json"))
            .collect();
        bytes_before = fhir.wire_bytes_in();
        start = Instant::now();
        for b in &bundles {
            let r = client.send(b).await.expect("send");
            assert_eq!(r.status, 200, "{name}");
        }
    }
    let elapsed = start.elapsed();
    assert_eq!(
        fhir.observation_count(),
        readings.len(),
        "{name}: one Observation each"
    );
    let n = readings.len() - chunks[0].len();
    Row {
        name,
        per_sec: n as f64 / elapsed.as_secs_f64(),
        bytes_per_reading: (fhir.wire_bytes_in() - bytes_before) as f64 / n as f64,
        requests: fhir.request_count(),
    }
}

fn main() {
    let n: u64 = std::env::var("UPLINK_DRAIN_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000);
    let pin = pinned();
    if pin {
        pin_current_thread(0);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .on_thread_start(move || {
            if pin {
                pin_current_thread(0);
            }
        })
        .build()
        .expect("runtime");
    let naive_n: usize = std::env::var("UPLINK_DRAIN_NAIVE_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5_000);
    let readings = readings(n);
    let naive_readings = &readings[..readings.len().min(naive_n)];
    // `UPLINK_DRAIN_ONLY=default`: the gzip reference and the default row alone (for a
    // profile of the uploader); the table then has no naive row.
    let only_default = std::env::var("UPLINK_DRAIN_ONLY").is_ok_and(|v| v == "default");
    let rows = rt.block_on(async {
        let mut rows =
            vec![reference("reference: same Bundles, gzip bytes", &readings, true).await];
        if only_default {
            rows.push(drain("vitalgate gzip, cap 50 (default)", &readings, 50, true).await);
            return rows;
        }
        rows.extend([
            reference("reference: same Bundles, JSON values", &readings, false).await,
            drain("vitalgate gzip, cap 50 (default)", &readings, 50, true).await,
            drain("vitalgate gzip, cap 20", &readings, 20, true).await,
            drain("vitalgate plain, cap 50", &readings, 50, false).await,
            drain("naive: 1 reading/request, plain", naive_readings, 1, false).await,
        ]);
        rows
    });
    let naive = rows
        .iter()
        .find(|r| r.name.starts_with("naive"))
        .map_or(f64::NAN, |r| r.per_sec);
    let reference = rows
        .iter()
        .find(|r| r.name.starts_with("reference"))
        .map_or(1.0, |r| r.per_sec);
    println!(
        "uplink drain: {} readings (BP panels) to the loopback mTLS server, in this process \
         (naive row: the first {}); {}",
        readings.len(),
        naive_readings.len(),
        if pin {
            "server threads on CPU 1, clients and outbox on CPU 0"
        } else {
            "server and clients share the CPUs"
        }
    );
    if let Some(rtt) = rtt() {
        println!(
            "through a relay with a round-trip time of {} ms",
            rtt.as_millis()
        );
    }
    println!(
        "| {:<36} | {:>10} | {:>8} | {:>6} | {:>14} | {:>8} |",
        "client", "readings/s", "x naive", "% ref", "bytes/reading", "requests"
    );
    println!(
        "|{:-<38}|{:->12}|{:->10}|{:->8}|{:->16}|{:->10}|",
        "", "", "", "", "", ""
    );
    for r in &rows {
        println!(
            "| {:<36} | {:>10.0} | {:>8.2} | {:>6.0} | {:>14.0} | {:>8} |",
            r.name,
            r.per_sec,
            r.per_sec / naive,
            100.0 * r.per_sec / reference,
            r.bytes_per_reading,
            r.requests
        );
    }
}
