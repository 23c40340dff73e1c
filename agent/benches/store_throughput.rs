//! Outbox throughput and ingest-to-durable latency (issue #11).
//!
//! Run: `cargo bench -p vitalgate --bench store_throughput` (or `--profile dev` for a quick,
//! unoptimised run). The store lives under `VITALGATE_BENCH_DIR` if set (point it at the SD
//! card to measure the card), else under Cargo's target tmp dir. Numbers depend entirely on the
//! device's fsync latency; compare rows within one run only.
//!
//! Two tables:
//! 1. Ingest to durable, per reading, from `P` concurrent producers (an MQTT broker's inflight
//!    window, several devices): through the real pipeline task (**group commit**: what is
//!    waiting shares one transaction, one flush and one `fdatasync`) against the baseline of
//!    one `insert` (one flush + `fdatasync`) per reading from the same producers. readings/s
//!    and p50/p99 latency from hand-over to the durable answer.
//! 2. Through the store API, batches of `B` readings, per durable batch: the sled outbox
//!    against SQLite (WAL, `synchronous=FULL`) doing the same work: the same sealed records,
//!    a keyed index entry per reading, the duplicate check, one transaction per batch.
//! 3. Raw insert rates: one record per durable insert, batches, and sled without our fsync.
//! 4. Footprint of a backlog (`VITALGATE_BENCH_BACKLOG` readings, default 100,000, ingested in
//!    durable batches of 64): bytes on disk per reading with the backlog pending, after all of
//!    it is delivered (acked: removed, tombstones kept), and after the tombstones expire and
//!    the store is reopened; next to the sealed record size (the `pending` value, read back
//!    raw); and the process's RSS with the backlog (this section runs first, in a fresh
//!    process, so the figure is the store's, not the other sections' leftovers).
// These exercise sled directly (raw writes, as a baseline or to corrupt files on purpose).
#![allow(clippy::disallowed_methods)]

#[path = "common/mod.rs"]
mod fixtures;
use fixtures::{bp, device, readings};
// The real MQTT path (mosquitto + the vitalgate binary): the test harness, shared with
// the mqtt_ingest bench.
#[path = "../../tests/common/mod.rs"]
mod common;
#[path = "../../tests/harness/mod.rs"]
mod harness;
mod mqtt_path;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::{mpsc, oneshot, Notify};
use vitalgate::pipeline::{readings_from_record, CaptureClock, Ingest, Outcome};
use vitalgate::reading::{Reading, Source};
use vitalgate::store::{NewRecord, Outbox, OutboxOptions, RecordCipher, StoreKey};

#[derive(Serialize)]
struct Sample {
    n: u64,
    patient: String,
    device: String,
    value: String,
    unit: String,
    time: String,
}

fn sample(n: u64) -> Sample {
    Sample {
        n,
        patient: "Patient/7f9c2a1e-0b7d-4c55-9a0e-1f2d3c4b5a69".into(),
        device: "eui64:0012A3FFFE4B5C6D".into(),
        value: format!("{}.{}", 100 + n % 60, n % 10),
        unit: "mm[Hg]".into(),
        time: "2025-03-14T09:26:53+01:00".into(),
    }
}

fn id(n: u64) -> [u8; 32] {
    let mut id = [0u8; 32];
    id[..8].copy_from_slice(&n.to_be_bytes());
    id
}

fn rate(count: u64, start: Instant) -> f64 {
    count as f64 / start.elapsed().as_secs_f64()
}

struct Run {
    per_sec: f64,
    p50: Duration,
    p99: Duration,
    sealed_bytes: u64,
}

fn summarise(count: u64, elapsed: Duration, mut lat: Vec<Duration>, sealed_bytes: u64) -> Run {
    lat.sort();
    let pct = |p: usize| {
        lat.get((lat.len() * p / 100).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    Run {
        per_sec: count as f64 / elapsed.as_secs_f64(),
        p50: pct(50),
        p99: pct(99),
        sealed_bytes,
    }
}

/// `producers` tasks each hand `per_producer` readings to the real pipeline task, one at a
/// time, waiting for each durable answer.
fn pipeline_run(dir: &Path, producers: u64, per_producer: u64) -> Run {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let store = Arc::new(
            Outbox::open(dir, StoreKey::from_bytes([7; 32]), OutboxOptions::default())
                .expect("open"),
        );
        let (tx, rx) = mpsc::channel(256);
        let task = tokio::spawn(vitalgate::pipeline::run(
            rx,
            Arc::<Outbox>::clone(&store),
            Arc::new(Notify::new()),
            u64::MAX,
        ));
        let dev = device();
        let start = Instant::now();
        let mut handles = Vec::new();
        for p in 0..producers {
            let (tx, dev) = (tx.clone(), Arc::clone(&dev));
            handles.push(tokio::spawn(async move {
                let mut lat = Vec::with_capacity(per_producer as usize);
                for i in 0..per_producer {
                    let (record, received_at) = bp(p * per_producer + i);
                    let (done, answer) = oneshot::channel();
                    let t = Instant::now();
                    tx.send(Ingest::Record {
                        device: Arc::clone(&dev),
                        record,
                        source: Source::Ble {
                            address: "00:09:1F:AA:BB:CC".into(),
                        },
                        clock: CaptureClock::default(),
                        received_at,
                        delivery: None,
                        done: Some(done),
                    })
                    .await
                    .expect("pipeline");
                    let outcome = answer.await.expect("answer");
                    assert!(
                        matches!(outcome, Outcome::Durable { stored: 1, .. }),
                        "{outcome:?}"
                    );
                    lat.push(t.elapsed());
                }
                lat
            }));
        }
        let mut lat = Vec::new();
        for h in handles {
            lat.extend(h.await.expect("producer"));
        }
        let elapsed = start.elapsed();
        drop(tx);
        task.await.expect("pipeline task");
        let sealed = store.recount_held_bytes().expect("recount");
        summarise(producers * per_producer, elapsed, lat, sealed)
    })
}

/// The same readings and producers, each reading its own `insert_records` (one flush and one
/// `fdatasync` per reading): no group commit.
fn per_reading_run(dir: &Path, producers: u64, per_producer: u64) -> Run {
    let store = Arc::new(
        Outbox::open(dir, StoreKey::from_bytes([7; 32]), OutboxOptions::default()).expect("open"),
    );
    let dev = device();
    let start = Instant::now();
    let handles: Vec<_> = (0..producers)
        .map(|p| {
            let (store, dev) = (Arc::clone(&store), Arc::clone(&dev));
            std::thread::spawn(move || {
                let mut lat = Vec::with_capacity(per_producer as usize);
                for i in 0..per_producer {
                    let (record, received_at) = bp(p * per_producer + i);
                    let t = Instant::now();
                    let readings: Vec<Reading> = readings_from_record(
                        &dev,
                        &record,
                        &Source::Ble {
                            address: "00:09:1F:AA:BB:CC".into(),
                        },
                        &CaptureClock::default(),
                        received_at,
                    )
                    .expect("reading");
                    let recs: Vec<NewRecord<'_, Reading>> =
                        readings.iter().map(Reading::as_record).collect();
                    store.insert_records(&recs).expect("insert");
                    lat.push(t.elapsed());
                }
                lat
            })
        })
        .collect();
    let mut lat = Vec::new();
    for h in handles {
        lat.extend(h.join().expect("producer"));
    }
    let elapsed = start.elapsed();
    let sealed = store.recount_held_bytes().expect("recount");
    summarise(producers * per_producer, elapsed, lat, sealed)
}

/// `readings` in batches of `batch`, each batch one durable `insert_records`.
fn outbox_batches(dir: &Path, readings: &[Reading], batch: usize) -> Run {
    let store =
        Outbox::open(dir, StoreKey::from_bytes([7; 32]), OutboxOptions::default()).expect("open");
    let mut lat = Vec::new();
    let start = Instant::now();
    for chunk in readings.chunks(batch) {
        let t = Instant::now();
        let recs: Vec<NewRecord<'_, Reading>> = chunk.iter().map(Reading::as_record).collect();
        store.insert_records(&recs).expect("insert");
        lat.push(t.elapsed());
    }
    let elapsed = start.elapsed();
    let held = store.recount_held_bytes().expect("recount");
    summarise(readings.len() as u64, elapsed, lat, held)
}

/// The same batches into SQLite, WAL, synchronous=FULL: per reading, the sealed envelope (same
/// codec, same sizes) into `pending`, its keyed index entry into `idx` (a duplicate is skipped),
/// its identity into `idents`; one transaction per batch.
fn sqlite_batches(path: &Path, readings: &[Reading], batch: usize) -> Run {
    #[derive(Serialize)]
    struct Envelope<'a> {
        id: [u8; 32],
        enqueued_at_ms: u64,
        payload: &'a [u8],
    }
    let cipher = RecordCipher::new(&StoreKey::from_bytes([7; 32])).expect("cipher");
    let mut db = rusqlite::Connection::open(path).expect("sqlite");
    db.execute_batch(
        "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;
         CREATE TABLE pending (seq INTEGER PRIMARY KEY, value BLOB NOT NULL);
         CREATE TABLE idx (mac BLOB PRIMARY KEY, seq INTEGER NOT NULL) WITHOUT ROWID;
         CREATE TABLE idents (k BLOB PRIMARY KEY, v BLOB NOT NULL) WITHOUT ROWID;",
    )
    .expect("schema");
    let mut seq: i64 = 0;
    let mut lat = Vec::new();
    let start = Instant::now();
    for chunk in readings.chunks(batch) {
        let t = Instant::now();
        let tx = db.transaction().expect("begin");
        for r in chunk {
            seq += 1;
            let payload = postcard::to_stdvec(r).expect("encode");
            let plain = postcard::to_stdvec(&Envelope {
                id: *r.id.as_bytes(),
                enqueued_at_ms: 0,
                payload: &payload,
            })
            .expect("encode");
            let mut aad = b"pending\0".to_vec();
            aad.extend_from_slice(&seq.to_be_bytes());
            let sealed = cipher.seal(&aad, &plain).expect("seal");
            let mac = cipher.index_key(r.id.as_bytes());
            let fresh = tx
                .execute(
                    "INSERT OR IGNORE INTO idx (mac, seq) VALUES (?1, ?2)",
                    rusqlite::params![&mac[..], seq],
                )
                .expect("idx");
            if fresh == 1 {
                tx.execute(
                    "INSERT INTO pending (seq, value) VALUES (?1, ?2)",
                    rusqlite::params![seq, sealed],
                )
                .expect("pending");
                let ident = cipher.index_key(&[0x55; 32]);
                tx.execute(
                    "INSERT OR REPLACE INTO idents (k, v) VALUES (?1, ?2)",
                    rusqlite::params![&ident[..], &mac[..]],
                )
                .expect("idents");
            }
        }
        tx.commit().expect("commit");
        lat.push(t.elapsed());
    }
    let elapsed = start.elapsed();
    let held: i64 = db
        .query_row(
            "SELECT SUM(LENGTH(value)) + COUNT(*) * 48 FROM pending",
            [],
            |row| row.get(0),
        )
        .expect("size");
    summarise(readings.len() as u64, elapsed, lat, held as u64)
}

/// `VmRSS` and `VmHWM` of this process, in KiB.
fn rss_kib() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

struct FootprintRow {
    state: &'static str,
    pending: u64,
    held: u64,
    disk: u64,
    rss_kib: u64,
}

/// Section 4: `n` readings into a fresh outbox at `dir` (durable batches of 64), then
/// delivered. Returns the rows and the mean sealed record size (bytes of a `pending` value).
fn footprint(dir: &Path, n: u64) -> (Vec<FootprintRow>, f64, u64) {
    let key = || StoreKey::from_bytes([7; 32]);
    let (rss_before, _) = rss_kib();
    let mut rows = Vec::new();
    let store = Outbox::open(dir, key(), OutboxOptions::default()).expect("open");
    let dev = device();
    let source = Source::Ble {
        address: "00:09:1F:AA:BB:CC".into(),
    };
    let mut next = 0u64;
    while next < n {
        let end = (next + 64).min(n);
        let batch: Vec<Reading> = (next..end)
            .flat_map(|i| {
                let (record, at) = bp(i);
                readings_from_record(&dev, &record, &source, &CaptureClock::default(), at)
                    .expect("reading")
            })
            .collect();
        let recs: Vec<NewRecord<'_, Reading>> = batch.iter().map(Reading::as_record).collect();
        store.insert_records(&recs).expect("insert");
        next = end;
    }
    let stats = store.stats().expect("stats");
    rows.push(FootprintRow {
        state: "backlog pending (store open)",
        pending: stats.pending,
        held: store.recount_held_bytes().expect("recount"),
        disk: store.disk_bytes().expect("disk"),
        rss_kib: rss_kib().0,
    });
    drop(store);

    // The sealed records as stored: the `pending` tree's values, read back raw.
    let (mut sealed_total, mut sealed_count) = (0u64, 0u64);
    let deadline = Instant::now() + Duration::from_secs(10);
    let raw = loop {
        match sled::Config::new().path(dir).open() {
            Ok(db) => break db,
            // sled's threads keep the lock a moment after the drop.
            Err(_) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => panic!("raw open: {e}"),
        }
    };
    for item in raw
        .open_tree(vitalgate::store::TREE_PENDING)
        .expect("pending tree")
        .iter()
    {
        let (_, v) = item.expect("pending value");
        sealed_total += v.len() as u64;
        sealed_count += 1;
    }
    drop(raw);

    // A restart with the backlog: open and count it (what the agent does at start).
    let store = Outbox::open(dir, key(), OutboxOptions::default()).expect("reopen");
    let stats = store.stats().expect("stats");
    rows.push(FootprintRow {
        state: "backlog pending, after reopen + stats",
        pending: stats.pending,
        held: store.held_bytes(),
        disk: store.disk_bytes().expect("disk"),
        rss_kib: rss_kib().0,
    });

    // The backlog compacted (the daemon does not: it compacts at most 5,000 pending readings,
    // the copy blocks the store meanwhile); shows what sled's files hold against the records.
    let report = store.compact().expect("compact backlog");
    eprintln!(
        "footprint: compacting the backlog copied {} entries ({} B) in {:.0} ms",
        report.entries,
        report.live_bytes,
        report.took.as_secs_f64() * 1000.0
    );
    rows.push(FootprintRow {
        state: "backlog pending, compacted (bench only)",
        pending: store.stats().expect("stats").pending,
        held: store.recount_held_bytes().expect("recount"),
        disk: store.disk_bytes().expect("disk"),
        rss_kib: rss_kib().0,
    });

    // Delivery: read and ack in the uploader's way, until nothing is pending.
    loop {
        let page: Vec<vitalgate::store::PendingRecord<Reading>> =
            store.pending(256).expect("pending");
        if page.is_empty() {
            break;
        }
        let ids: Vec<[u8; 32]> = page.iter().map(|p| p.id).collect();
        store.ack(&ids).expect("ack");
    }
    let stats = store.stats().expect("stats");
    rows.push(FootprintRow {
        state: "all delivered (acked; tombstones kept)",
        pending: stats.pending,
        held: store.recount_held_bytes().expect("recount"),
        disk: store.disk_bytes().expect("disk"),
        rss_kib: rss_kib().0,
    });
    // Compaction (what the upkeep task does after its hourly prune once the backlog is small).
    let report = store.compact().expect("compact");
    eprintln!(
        "footprint: compaction copied {} entries ({} B) in {:.0} ms",
        report.entries,
        report.live_bytes,
        report.took.as_secs_f64() * 1000.0
    );
    let stats = store.stats().expect("stats");
    rows.push(FootprintRow {
        state: "delivered, tombstones kept, compacted",
        pending: stats.pending,
        held: store.recount_held_bytes().expect("recount"),
        disk: store.disk_bytes().expect("disk"),
        rss_kib: rss_kib().0,
    });
    let later = std::time::SystemTime::now()
        + OutboxOptions::default().tombstone_retention
        + Duration::from_secs(24 * 3600);
    let pruned = store.prune_tombstones(later).expect("prune");
    let stats = store.stats().expect("stats");
    rows.push(FootprintRow {
        state: "delivered, tombstones expired and pruned",
        pending: stats.pending,
        held: store.recount_held_bytes().expect("recount"),
        disk: store.disk_bytes().expect("disk"),
        rss_kib: rss_kib().0,
    });
    store.compact().expect("compact");
    let stats = store.stats().expect("stats");
    rows.push(FootprintRow {
        state: "delivered, pruned, compacted",
        pending: stats.pending,
        held: store.recount_held_bytes().expect("recount"),
        disk: store.disk_bytes().expect("disk"),
        rss_kib: rss_kib().0,
    });
    assert_eq!(pruned as u64, n, "every tombstone pruned");
    drop(store);
    let store = Outbox::open(dir, key(), OutboxOptions::default()).expect("reopen");
    let stats = store.stats().expect("stats");
    rows.push(FootprintRow {
        state: "delivered and pruned, reopened",
        pending: stats.pending,
        held: store.recount_held_bytes().expect("recount"),
        disk: store.disk_bytes().expect("disk"),
        rss_kib: rss_kib().0,
    });
    let sealed = sealed_total as f64 / sealed_count.max(1) as f64;
    eprintln!("footprint: peak RSS (VmHWM) {} KiB", rss_kib().1);
    (rows, sealed, rss_before)
}

fn main() {
    let base = std::env::var_os("VITALGATE_BENCH_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_TARGET_TMPDIR")).to_owned());
    std::fs::create_dir_all(&base).expect("bench dir");
    let tmp = tempfile::tempdir_in(&base).expect("temp dir");
    let key = || StoreKey::from_bytes([7; 32]);

    // Section 4 first: RSS is only meaningful before the other sections' allocations.
    let backlog: u64 = std::env::var("VITALGATE_BENCH_BACKLOG")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let started = Instant::now();
    let (rows, sealed, rss_before) = footprint(&tmp.path().join("footprint"), backlog);
    let footprint_secs = started.elapsed().as_secs_f64();

    const SINGLE: u64 = 200;
    const BATCHED: u64 = 2000;
    const BATCH: u64 = 50;
    const RAW: u64 = 2000;

    let outbox =
        Outbox::open(&tmp.path().join("single"), key(), OutboxOptions::default()).expect("open");
    let start = Instant::now();
    for n in 0..SINGLE {
        outbox.insert(id(n), &sample(n)).expect("insert");
    }
    let single = rate(SINGLE, start);
    drop(outbox);

    let outbox =
        Outbox::open(&tmp.path().join("batched"), key(), OutboxOptions::default()).expect("open");
    let samples: Vec<Sample> = (0..BATCHED).map(sample).collect();
    let start = Instant::now();
    for chunk in (0..BATCHED).collect::<Vec<_>>().chunks(BATCH as usize) {
        outbox
            .insert_many(chunk.iter().map(|n| (id(*n), &samples[*n as usize])))
            .expect("insert_many");
    }
    let batched = rate(BATCHED, start);
    drop(outbox);

    // Baselines: plain sled, values of the same size as a sealed record, no fsync of our own.
    let value = vec![0x5a_u8; postcard::to_stdvec(&sample(0)).expect("encode").len() + 80];
    let db = sled::Config::new()
        .path(tmp.path().join("raw"))
        .cache_capacity(16 * 1024 * 1024)
        .open()
        .expect("sled");
    let start = Instant::now();
    for n in 0..RAW {
        db.insert(n.to_be_bytes(), value.as_slice())
            .expect("insert");
    }
    let raw = rate(RAW, start);
    let start = Instant::now();
    for n in RAW..RAW + SINGLE {
        db.insert(n.to_be_bytes(), value.as_slice())
            .expect("insert");
        db.flush().expect("flush");
    }
    let raw_flush = rate(SINGLE, start);

    println!("store dir: {}", base.display());
    println!();
    println!(
        "ingest to durable (readings, sealed, fdatasync'd; latency = hand-over to durable answer)"
    );
    println!(
        "{:<48} {:>9} {:>11} {:>9} {:>9} {:>12}",
        "variant", "producers", "readings/s", "p50 ms", "p99 ms", "held B/rdg"
    );
    let total: u64 = std::env::var("VITALGATE_BENCH_READINGS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    for producers in [1u64, 16] {
        let per = (total / producers).max(1);
        let rows = [
            (
                "pipeline task, group commit",
                pipeline_run(
                    &tmp.path().join(format!("group-{producers}")),
                    producers,
                    per,
                ),
            ),
            (
                "one insert (flush + fdatasync) per reading",
                per_reading_run(
                    &tmp.path().join(format!("single-{producers}")),
                    producers,
                    per,
                ),
            ),
        ];
        for (name, r) in rows {
            println!(
                "{:<48} {:>9} {:>11.0} {:>9.2} {:>9.2} {:>12}",
                name,
                producers,
                r.per_sec,
                r.p50.as_secs_f64() * 1e3,
                r.p99.as_secs_f64() * 1e3,
                r.sealed_bytes / (producers * per)
            );
        }
    }
    // The same, through the real MQTT path: mosquitto, the vitalgate binary (this build), its
    // MQTT source, pipeline and store; latency = publish to the agent's "reading stored" line.
    // "producers" here is the MQTT client's group: 1 reading every 20 ms, 16 every 40 ms (an
    // inflight window), and a burst of all of them at once (readings/s = stored / time to the
    // last store; paced rows are bounded by their pace).
    let mqtt_n = (total as usize).min(2000);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    for (group, pace_ms) in [(1usize, 20u64), (16, 40), (mqtt_n, 0)] {
        match rt.block_on(mqtt_path::latency(
            group,
            Duration::from_millis(pace_ms),
            mqtt_n,
        )) {
            Some(l) => println!(
                "{:<48} {:>9} {:>11.0} {:>9.2} {:>9.2} {:>12}",
                l.variant, group, l.per_sec, l.p50_ms, l.p99_ms, "-"
            ),
            None => println!(
                "{:<48} mosquitto is not installed: not measured",
                "MQTT path"
            ),
        }
    }
    println!();
    println!(
        "store API, batches of B readings, one durable transaction per batch (latency per batch)"
    );
    println!(
        "{:<48} {:>9} {:>11} {:>9} {:>9} {:>12}",
        "variant", "B", "readings/s", "p50 ms", "p99 ms", "held B/rdg"
    );
    let all = readings(total);
    for batch in [1usize, 16, 64] {
        let n = all.len() as u64;
        let rows = [
            (
                "sled outbox (flush + fdatasync)",
                outbox_batches(&tmp.path().join(format!("api-{batch}")), &all, batch),
            ),
            (
                "SQLite WAL synchronous=FULL (rusqlite)",
                sqlite_batches(&tmp.path().join(format!("sqlite-{batch}.db")), &all, batch),
            ),
        ];
        for (name, r) in rows {
            println!(
                "{:<48} {:>9} {:>11.0} {:>9.2} {:>9.2} {:>12}",
                name,
                batch,
                r.per_sec,
                r.p50.as_secs_f64() * 1e3,
                r.p99.as_secs_f64() * 1e3,
                r.sealed_bytes / n
            );
        }
    }
    println!();
    println!("{:<58} {:>10}", "variant", "records/s");
    println!(
        "{:<58} {:>10.0}",
        "Outbox::insert (flush + fdatasync per record)", single
    );
    println!(
        "{:<58} {:>10.0}",
        format!("Outbox::insert_many, batches of {BATCH} (one fdatasync/batch)"),
        batched
    );
    println!(
        "{:<58} {:>10.0}",
        "sled insert + flush per record (no fdatasync)", raw_flush
    );
    println!("{:<58} {:>10.0}", "sled insert, no flush (baseline)", raw);
    println!();
    println!(
        "footprint of a backlog of {backlog} readings (durable batches of 64; {footprint_secs:.1} s); \
         sealed record (pending value) {sealed:.0} B; RSS before opening the store {} KiB",
        rss_before
    );
    println!(
        "{:<42} {:>8} {:>11} {:>12} {:>12} {:>13} {:>9}",
        "state", "pending", "held B", "disk B", "disk B/rdg", "disk/sealed", "RSS MiB"
    );
    for r in rows {
        let per = r.disk as f64 / backlog.max(1) as f64;
        println!(
            "{:<42} {:>8} {:>11} {:>12} {:>12.0} {:>12.2}x {:>9.1}",
            r.state,
            r.pending,
            r.held,
            r.disk,
            per,
            per / sealed,
            r.rss_kib as f64 / 1024.0
        );
    }
}
