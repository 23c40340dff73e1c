//! The cost of auditing on the ingest path: what `AuditHandle::record` costs the caller (a
//! pipeline or uploader task: stamp the time, `try_send`), and how many entries a second the
//! writer thread seals, writes and syncs. Three `stored` entries' worth per reading is what an
//! uploaded reading costs (`stored`, its share of `sent`, `delivered`).
//!
//! Run: `cargo bench --profile dev -p vitalgate --bench audit_record` (a debug build: the
//! figures are pessimistic), or without `--profile dev` for the release profile. The log goes to
//! `VITALGATE_BENCH_DIR` if set, else Cargo's target tmp dir (a real disk: fdatasync counts).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use vitalgate::audit::{AuditEvent, AuditLog, AuditOptions, Id};
use vitalgate::identity::ReadingId;

fn event(n: u64) -> AuditEvent {
    let mut b = [0u8; 32];
    b[..8].copy_from_slice(&n.to_be_bytes());
    AuditEvent::Stored {
        reading: Id(ReadingId::from_bytes(b)),
        kind: "blood_pressure".into(),
        device: "hub-1".into(),
    }
}

fn main() {
    let base = std::env::var_os("VITALGATE_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_TARGET_TMPDIR")).to_owned());
    let dir = tempfile::tempdir_in(&base).expect("bench dir");
    let opts = AuditOptions {
        dir: dir.path().join("audit"),
        max_bytes: 64 << 20,
        segment_bytes: 4 << 20,
        retention: Duration::from_secs(90 * 86_400),
        ledger: Duration::from_secs(30 * 86_400),
    };
    println!("| burst of entries | caller ns/record (p50) | caller ns/record (max) | dropped (gap) | written entries/s (burst start to synced) |");
    println!("|---|---|---|---|---|");
    for n in [1_000u64, 3_000, 10_000] {
        let dropped_before = vitalgate::telemetry::COUNTERS
            .audit_entries_dropped
            .load(std::sync::atomic::Ordering::Relaxed);
        let log = AuditLog::open(opts.clone()).expect("open");
        let h = log.handle();
        let mut lat = Vec::with_capacity(n as usize);
        let start = Instant::now();
        for i in 0..n {
            let t = Instant::now();
            h.record(event(i));
            lat.push(t.elapsed().as_nanos());
        }
        let synced = h.sync(Duration::from_secs(60));
        let total = start.elapsed();
        lat.sort_unstable();
        let dropped = vitalgate::telemetry::COUNTERS
            .audit_entries_dropped
            .load(std::sync::atomic::Ordering::Relaxed)
            - dropped_before;
        println!(
            "| {n} | {} | {} | {dropped} | {:.0}{} |",
            lat[lat.len() / 2],
            lat[lat.len() - 1],
            (n - dropped) as f64 / total.as_secs_f64(),
            if synced { "" } else { " (sync timed out)" }
        );
        log.close(Duration::from_secs(10));
    }
}
