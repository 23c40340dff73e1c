//! The cost of one live status snapshot, as the ops task pays it every
//! `ops.status_interval_secs` (5 s): count the outbox (`Outbox::stats`, O(n) in sled), build
//! the snapshot (health, counters, statvfs, the outbox's size, alarms), serialise it and write
//! it atomically (temporary file + rename). Prints a table per outbox size.
//!
//! Run: `cargo bench -p vitalgate --bench status_snapshot`. The files go to
//! `VITALGATE_BENCH_DIR` if set (on a gateway: /run/vitalgate is a tmpfs), else /dev/shm, else
//! Cargo's target tmp dir.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use vitalgate::ops::probes::ClockState;
use vitalgate::ops::runner::{self, OpsContext, OpsShared};
use vitalgate::ops::status::{self, STATUS_FILE};
use vitalgate::ops::watchdog::Liveness;
use vitalgate::store::{Outbox, OutboxOptions, StoreKey};

const ROUNDS: u32 = 50;

fn id(n: u64) -> [u8; 32] {
    let mut id = [0u8; 32];
    id[..8].copy_from_slice(&n.to_be_bytes());
    id
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6 / f64::from(ROUNDS)
}

fn main() {
    let base = std::env::var_os("VITALGATE_BENCH_DIR")
        .map(PathBuf::from)
        .or_else(|| {
            Path::new("/dev/shm")
                .is_dir()
                .then(|| PathBuf::from("/dev/shm"))
        })
        .unwrap_or_else(|| Path::new(env!("CARGO_TARGET_TMPDIR")).to_owned());
    let store_dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("store dir");
    let run_dir = tempfile::tempdir_in(&base).expect("runtime dir");
    let outbox = Arc::new(
        Outbox::open(
            &store_dir.path().join("outbox"),
            StoreKey::from_bytes([7; 32]),
            OutboxOptions::default(),
        )
        .expect("open"),
    );
    let ctx = OpsContext {
        gateway_id: "bench-gw".into(),
        devices: (0..8).map(|i| (format!("device-{i}"), "ble")).collect(),
        ops: vitalgate::config::OpsConfig::default(),
        data_dir: store_dir.path().to_path_buf(),
        client_cert: PathBuf::from("/nonexistent"),
    };
    #[allow(clippy::disallowed_methods)] // a bench: the clock is the edge
    let now = chrono::Utc::now();
    let shared = OpsShared::new(Liveness::default(), now);
    let clock = ClockState {
        synchronised: Some(true),
        source: "bench".into(),
    };
    let cert = Err("bench".to_string());
    let payload = vec![0x5a_u8; 400];

    println!(
        "status snapshot cost per write ({ROUNDS} rounds each; files in {})",
        base.display()
    );
    println!(
        "{:>10} | {:>14} | {:>14} | {:>14} | {:>14} | {:>8}",
        "pending", "stats µs", "build µs", "write µs", "total µs", "bytes"
    );
    let mut have = 0u64;
    for target in [0u64, 1_000, 20_000] {
        while have < target {
            let end = (have + 500).min(target);
            outbox
                .insert_many((have..end).map(|n| (id(n), &payload)))
                .expect("insert");
            have = end;
        }
        let (mut t_stats, mut t_build, mut t_write) =
            (Duration::ZERO, Duration::ZERO, Duration::ZERO);
        let mut bytes = 0;
        for _ in 0..ROUNDS {
            let t = Instant::now();
            let stats = outbox.stats().expect("stats");
            t_stats += t.elapsed();
            let t = Instant::now();
            let snap = runner::build(&ctx, &shared, stats, &clock, &cert, None, now);
            t_build += t.elapsed();
            let t = Instant::now();
            status::write_atomic(run_dir.path(), STATUS_FILE, &snap).expect("write");
            t_write += t.elapsed();
            bytes = std::fs::metadata(run_dir.path().join(STATUS_FILE)).map_or(0, |m| m.len());
        }
        println!(
            "{:>10} | {:>14.1} | {:>14.1} | {:>14.1} | {:>14.1} | {:>8}",
            target,
            micros(t_stats),
            micros(t_build),
            micros(t_write),
            micros(t_stats + t_build + t_write),
            bytes
        );
    }
}
