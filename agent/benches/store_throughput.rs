//! Outbox insert throughput: one durable insert at a time vs batches vs sled without fsync.
//!
//! Run: `cargo bench -p vitalgate --bench store_throughput` (or `--profile dev` for a quick,
//! unoptimised run). The store lives under `VITALGATE_BENCH_DIR` if set (point it at the SD
//! card to measure the card), else under Cargo's target tmp dir. Numbers depend entirely on the
//! device's fsync latency; compare rows within one run only.
// These exercise sled directly (raw writes, as a baseline or to corrupt files on purpose).
#![allow(clippy::disallowed_methods)]

use std::path::Path;
use std::time::Instant;

use serde::Serialize;
use vitalgate::store::{Outbox, OutboxOptions, StoreKey};

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

fn main() {
    let base = std::env::var_os("VITALGATE_BENCH_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_TARGET_TMPDIR")).to_owned());
    std::fs::create_dir_all(&base).expect("bench dir");
    let tmp = tempfile::tempdir_in(&base).expect("temp dir");
    let key = || StoreKey::from_bytes([7; 32]);

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
}
