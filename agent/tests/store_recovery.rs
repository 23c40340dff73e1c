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
