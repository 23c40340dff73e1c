//! Guarded open, quarantine of a damaged store, salvage, and the store lock (issue #11). In one
//! process, on the library; `tests/store_e2e.rs` does the same through the real binary.
// These write sled's files directly, to damage them on purpose.
#![allow(clippy::disallowed_methods)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{TimeZone, Utc};
use serde::{Deserialize, Serialize};
use vitalgate::store::{
    open_or_quarantine, salvage, Outbox, OutboxOptions, StoreError, StoreKey, MARKER_FILE,
};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Sample {
    n: u32,
    note: String,
}

fn sample(n: u32) -> Sample {
    Sample {
        n,
        note: format!("systolic {n} mmHg for patient 4711"),
    }
}

fn id(n: u32) -> [u8; 32] {
    let mut id = [0u8; 32];
    id[..4].copy_from_slice(&n.to_be_bytes());
    id
}

fn key() -> StoreKey {
    StoreKey::from_bytes([0x42; 32])
}

fn opts() -> OutboxOptions {
    OutboxOptions::default()
}

fn pending_ns(outbox: &Outbox) -> Vec<u32> {
    outbox
        .pending::<Sample>(usize::MAX)
        .unwrap()
        .into_iter()
        .map(|r| r.value.n)
        .collect()
}

/// A data dir holding an outbox with `n` pending readings and one dead letter; returns
/// (data dir, outbox dir).
fn filled(n: u32) -> (tempfile::TempDir, PathBuf) {
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().join("outbox");
    let outbox = Outbox::open(&dir, key(), opts()).unwrap();
    for i in 0..n {
        assert_eq!(
            outbox.insert(id(i), &sample(i)).unwrap(),
            vitalgate::store::Insert::Stored
        );
    }
    outbox
        .put_dead_letter_raw("mqtt:hub-1", b"not json", "undecodable")
        .unwrap();
    drop(outbox);
    (data, dir)
}

fn now() -> chrono::DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 12, 5, 22, 0, 0).unwrap()
}

fn quarantine_root(data: &Path) -> PathBuf {
    data.join("quarantine")
}

#[test]
fn a_store_whose_sled_conf_is_damaged_is_moved_aside_and_salvage_recovers_every_record() {
    let (data, dir) = filled(50);
    std::fs::write(dir.join("conf"), b"scribbled over by a bad SD card").unwrap();

    let (fresh, quarantined) =
        open_or_quarantine(&dir, &quarantine_root(data.path()), &key(), &opts(), now()).unwrap();
    let q = quarantined.expect("the damaged store is quarantined");
    assert_eq!(
        q.path,
        quarantine_root(data.path()).join("store-20261205T220000Z")
    );
    assert!(q.cause.contains("corrupted"), "{}", q.cause);
    assert!(q.path.join("db").exists(), "moved, not deleted");
    assert_eq!(fresh.stats().unwrap().pending, 0, "a fresh store");

    let report = salvage::<Sample>(&fresh, &q.path, |_| None).unwrap();
    assert_eq!(report.pending_recovered, 50, "{report:?}");
    assert_eq!(report.dead_recovered, 1, "{report:?}");
    assert_eq!(report.unreadable, 0, "{report:?}");
    assert!(report.conf_rebuilt);
    assert_eq!(pending_ns(&fresh), (0..50).collect::<Vec<_>>(), "in order");
    let dead = fresh.dead_letters().unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].reason, "salvaged: undecodable");
    assert_eq!(fresh.dead_letter_payload(dead[0].seq).unwrap(), b"not json");

    // Salvaging again stores nothing twice; the quarantined copy is unchanged.
    let again = salvage::<Sample>(&fresh, &q.path, |_| None).unwrap();
    assert_eq!(again.pending_recovered, 0, "{again:?}");
    assert_eq!(again.pending_duplicates, 50, "{again:?}");
    assert_eq!(fresh.stats().unwrap().pending, 50);
    assert_eq!(
        std::fs::read(q.path.join("conf")).unwrap(),
        b"scribbled over by a bad SD card"
    );
}

#[test]
fn a_store_sled_opens_empty_is_detected_as_lost_and_moved_aside() {
    let (data, dir) = filled(10);
    assert!(dir.join(MARKER_FILE).exists());
    // sled opens a data file cut to nothing as a new, empty database, without an error.
    std::fs::OpenOptions::new()
        .write(true)
        .open(dir.join("db"))
        .unwrap()
        .set_len(0)
        .unwrap();
    assert!(matches!(
        Outbox::open(&dir, key(), opts()),
        Err(StoreError::Lost { .. })
    ));
    let (fresh, quarantined) =
        open_or_quarantine(&dir, &quarantine_root(data.path()), &key(), &opts(), now()).unwrap();
    let q = quarantined.expect("quarantined");
    assert!(q.cause.contains("lost its records"), "{}", q.cause);
    assert_eq!(fresh.stats().unwrap().pending, 0);
    // Nothing authenticates in an empty file: salvage says so instead of inventing records.
    let report = salvage::<Sample>(&fresh, &q.path, |_| None).unwrap();
    assert_eq!(report.pending_recovered, 0, "{report:?}");
    // The fresh store is itself a normal store: reopening it does not quarantine it.
    drop(fresh);
    let (_, again) =
        open_or_quarantine(&dir, &quarantine_root(data.path()), &key(), &opts(), now()).unwrap();
    assert!(again.is_none());
}

#[test]
fn a_wrong_key_a_newer_format_or_a_lock_is_refused_and_nothing_is_moved() {
    let (data, dir) = filled(3);
    let other = StoreKey::from_bytes([0x43; 32]);
    let r = open_or_quarantine(&dir, &quarantine_root(data.path()), &other, &opts(), now());
    assert!(
        matches!(r, Err(StoreError::WrongKey { .. })),
        "{:?}",
        r.err()
    );

    let held = Outbox::open(&dir, key(), opts()).unwrap();
    let quick = OutboxOptions {
        lock_wait: Duration::from_millis(200),
        ..opts()
    };
    let r = open_or_quarantine(&dir, &quarantine_root(data.path()), &key(), &quick, now());
    match r {
        Err(e @ StoreError::Locked { .. }) => {
            assert!(e.to_string().contains("another vitalgate process"), "{e}")
        }
        other => panic!("expected Locked, got {:?}", other.err()),
    }
    drop(held);
    assert!(
        !quarantine_root(data.path()).exists(),
        "nothing was quarantined"
    );
    assert_eq!(
        pending_ns(&Outbox::open(&dir, key(), opts()).unwrap()),
        vec![0, 1, 2]
    );
}

#[test]
fn a_reopen_waits_for_a_lock_released_meanwhile() {
    let (_data, dir) = filled(2);
    let held = Outbox::open(&dir, key(), opts()).unwrap();
    let releaser = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        drop(held);
    });
    // Default lock_wait (5 s): the reopen waits for the other handle instead of failing.
    let outbox = Outbox::open(&dir, key(), opts()).unwrap();
    releaser.join().unwrap();
    assert_eq!(pending_ns(&outbox), vec![0, 1]);
}

#[test]
fn salvage_under_another_key_is_refused() {
    let (data, dir) = filled(3);
    std::fs::write(dir.join("conf"), b"scribbled over by a bad SD card").unwrap();
    let (_fresh, q) =
        open_or_quarantine(&dir, &quarantine_root(data.path()), &key(), &opts(), now()).unwrap();
    let q = q.unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let other = Outbox::open(elsewhere.path(), StoreKey::from_bytes([9; 32]), opts()).unwrap();
    assert!(matches!(
        salvage::<Sample>(&other, &q.path, |_| None),
        Err(StoreError::WrongKey { .. })
    ));
    assert_eq!(other.stats().unwrap().pending, 0);
}

/// Issue #11, corruption at scale: 1,000 sealed records with one bit flipped each (a different
/// bit position each time, over the whole record: version byte, nonce, ciphertext, tag), 100
/// pairs of records with their values swapped, and 500 records left alone. Every damaged record
/// is detected and quarantined byte for byte (counted), and exactly the 500 intact ones are
/// returned, in order, and can be acknowledged.
#[test]
fn every_flipped_bit_and_every_swapped_pair_is_quarantined_and_the_rest_delivered() {
    use vitalgate::store::{TREE_PENDING, TREE_QUARANTINE};
    use vitalgate::telemetry::COUNTERS;
    const FLIPPED: u32 = 1000;
    const SWAPPED_PAIRS: u32 = 100;
    const INTACT: u32 = 500;
    let total = FLIPPED + 2 * SWAPPED_PAIRS + INTACT;
    let dir = tempfile::tempdir().unwrap();
    {
        let outbox = Outbox::open(dir.path(), key(), opts()).unwrap();
        let values: Vec<Sample> = (0..total).map(sample).collect();
        for chunk in (0..total).collect::<Vec<_>>().chunks(100) {
            outbox
                .insert_many(chunk.iter().map(|&i| (id(i), &values[i as usize])))
                .unwrap();
        }
    }
    // Records in seq order: [0, FLIPPED) flipped, then pairs swapped, then intact.
    let mut originals = Vec::new();
    {
        let db = sled_open_after_close(dir.path());
        let tree = db.open_tree(TREE_PENDING).unwrap();
        let entries: Vec<(sled::IVec, sled::IVec)> = tree.iter().map(Result::unwrap).collect();
        assert_eq!(entries.len(), total as usize);
        for (i, (k, v)) in entries.iter().enumerate().take(FLIPPED as usize) {
            let mut bad = v.to_vec();
            let bit = (i * 7919) % (bad.len() * 8);
            bad[bit / 8] ^= 1 << (bit % 8);
            tree.insert(k, bad.clone()).unwrap();
            originals.push((k.to_vec(), bad));
        }
        for p in 0..SWAPPED_PAIRS as usize {
            let a = FLIPPED as usize + 2 * p;
            let (ka, va) = &entries[a];
            let (kb, vb) = &entries[a + 1];
            tree.insert(ka, vb.clone()).unwrap();
            tree.insert(kb, va.clone()).unwrap();
            originals.push((ka.to_vec(), vb.to_vec()));
            originals.push((kb.to_vec(), va.to_vec()));
        }
        db.flush().unwrap();
    }
    let before = COUNTERS
        .store_records_quarantined
        .load(std::sync::atomic::Ordering::Relaxed);
    let outbox = Outbox::open(dir.path(), key(), opts()).unwrap();
    let delivered = outbox.pending::<Sample>(usize::MAX).unwrap();
    let first_intact = FLIPPED + 2 * SWAPPED_PAIRS;
    assert_eq!(
        delivered.iter().map(|r| r.value.n).collect::<Vec<_>>(),
        (first_intact..total).collect::<Vec<_>>(),
        "exactly the intact records, in order"
    );
    let damaged = u64::from(FLIPPED + 2 * SWAPPED_PAIRS);
    let stats = outbox.stats().unwrap();
    assert_eq!(stats.quarantined, damaged, "100% detected");
    assert_eq!(stats.corrupt_records, damaged);
    let after = COUNTERS
        .store_records_quarantined
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(after - before >= damaged, "one counted event per record");
    // The rest flows: acknowledged (uploaded), nothing is pending and nothing was lost.
    let ids: Vec<[u8; 32]> = delivered.iter().map(|r| r.id).collect();
    assert_eq!(outbox.ack(&ids).unwrap(), INTACT as usize);
    assert_eq!(outbox.stats().unwrap().pending, 0);
    drop(outbox);
    // Quarantine holds every damaged record byte for byte, under tree name, 0x00, its key.
    let db = sled_open_after_close(dir.path());
    let q = db.open_tree(TREE_QUARANTINE).unwrap();
    for (k, v) in &originals {
        let mut qkey = b"pending\0".to_vec();
        qkey.extend_from_slice(k);
        assert_eq!(q.get(&qkey).unwrap().as_deref(), Some(&v[..]));
    }
}

/// `sled::open` of a store an `Outbox` just closed: sled's I/O threads release the file lock a
/// little after the `Db` is dropped (seen on a loaded machine and under qemu), so wait for it
/// with the store's own lock wait first.
fn sled_open_after_close(path: &std::path::Path) -> sled::Db {
    vitalgate::store::wait_for_lock(&path.join("db"), std::time::Duration::from_secs(10))
        .expect("sled's lock released");
    sled::open(path).expect("sled::open")
}
