//! The outbox against its invariants: restarts, duplicates, FIFO, ack, dead letters,
//! on-disk corruption, and a model-based property test.

use std::collections::BTreeMap;
use std::path::Path;

use proptest::prelude::*;
use vitalgate::store::{Insert, Outbox, OutboxOptions, StoreKey};

fn key() -> StoreKey {
    StoreKey::from_bytes([42; 32])
}

fn open(dir: &Path) -> Outbox {
    Outbox::open(dir, key(), OutboxOptions::default()).unwrap()
}

fn id(n: u8) -> [u8; 32] {
    [n; 32]
}

fn pending_values(o: &Outbox) -> Vec<String> {
    o.pending::<String>(10_000)
        .unwrap()
        .into_iter()
        .map(|r| r.value)
        .collect()
}

#[test]
fn readings_survive_a_restart() {
    let d = tempfile::tempdir().unwrap();
    {
        let o = open(d.path());
        o.insert(id(1), &"a".to_string()).unwrap();
        o.insert(id(2), &"b".to_string()).unwrap();
    }
    let o = open(d.path());
    assert_eq!(pending_values(&o), vec!["a", "b"]);
}

#[test]
fn the_same_id_is_stored_once_even_after_upload() {
    let d = tempfile::tempdir().unwrap();
    let o = open(d.path());
    assert_eq!(o.insert(id(1), &"a".to_string()).unwrap(), Insert::Stored);
    assert_eq!(
        o.insert(id(1), &"a".to_string()).unwrap(),
        Insert::Duplicate
    );
    o.ack(&[id(1)]).unwrap();
    assert_eq!(
        o.insert(id(1), &"a".to_string()).unwrap(),
        Insert::Duplicate
    );
    drop(o);
    let o = open(d.path());
    assert_eq!(
        o.insert(id(1), &"a".to_string()).unwrap(),
        Insert::Duplicate,
        "tombstones survive restarts"
    );
    assert!(pending_values(&o).is_empty());
}

#[test]
fn a_batch_with_an_internal_duplicate_stores_it_once() {
    let d = tempfile::tempdir().unwrap();
    let o = open(d.path());
    let r = o
        .insert_many(&[
            (id(1), "a".to_string()),
            (id(1), "a".to_string()),
            (id(2), "b".to_string()),
        ])
        .unwrap();
    assert_eq!(r, vec![Insert::Stored, Insert::Duplicate, Insert::Stored]);
    assert_eq!(pending_values(&o), vec!["a", "b"]);
}

#[test]
fn pending_is_fifo_and_ack_removes() {
    let d = tempfile::tempdir().unwrap();
    let o = open(d.path());
    for i in 0..20u8 {
        o.insert(id(i), &format!("r{i}")).unwrap();
    }
    let first: Vec<_> = o.pending::<String>(5).unwrap();
    assert_eq!(
        first.iter().map(|r| r.value.as_str()).collect::<Vec<_>>(),
        ["r0", "r1", "r2", "r3", "r4"]
    );
    o.ack(&first.iter().map(|r| r.id).collect::<Vec<_>>())
        .unwrap();
    assert_eq!(o.pending::<String>(1).unwrap()[0].value, "r5");
    assert_eq!(o.stats().pending, 15);
}

#[test]
fn a_dead_lettered_reading_keeps_its_data() {
    let d = tempfile::tempdir().unwrap();
    let o = open(d.path());
    o.insert(id(9), &"rejected reading".to_string()).unwrap();
    o.dead_letter(id(9), "FHIR server answered 422").unwrap();
    assert!(pending_values(&o).is_empty());
    let list = o.dead_letters().unwrap();
    assert_eq!(list.len(), 1);
    assert!(list[0].reason.contains("422"));
    let payload = o.dead_letter_payload(list[0].seq).unwrap();
    let (rid, value): ([u8; 32], String) = postcard::from_bytes(&payload).unwrap();
    assert_eq!((rid, value.as_str()), (id(9), "rejected reading"));
}

#[test]
fn raw_dead_letters_are_sealed_and_listed() {
    let d = tempfile::tempdir().unwrap();
    let o = open(d.path());
    o.put_dead_letter_raw("mqtt:hub-1", b"MRN-0001 secret payload", "not valid JSON")
        .unwrap();
    let list = o.dead_letters().unwrap();
    assert_eq!(list[0].size, 23);
    assert_eq!(list[0].source, "mqtt:hub-1");
    drop(o);
    // The payload is not on disk in clear.
    for entry in walk(d.path()) {
        let bytes = std::fs::read(&entry).unwrap();
        assert!(
            !bytes.windows(8).any(|w| w == b"MRN-0001"),
            "plaintext PHI in {entry:?}"
        );
    }
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn a_corrupt_record_is_quarantined_and_the_others_are_delivered() {
    let d = tempfile::tempdir().unwrap();
    let o = open(d.path());
    for i in 0..5u8 {
        o.insert(id(i), &format!("r{i}")).unwrap();
    }
    // Flip a byte of the third record directly in sled (bypassing the codec).
    let tree = o.raw_pending_tree();
    let (k, v) = tree.iter().nth(2).unwrap().unwrap();
    let mut bad = v.to_vec();
    let last = bad.len() - 1;
    bad[last] ^= 0x01;
    tree.insert(k, bad).unwrap();
    assert_eq!(pending_values(&o), vec!["r0", "r1", "r3", "r4"]);
    let s = o.stats();
    assert_eq!((s.pending, s.quarantined, s.corrupt_records), (4, 1, 1));
    // The reading can be delivered again (its index entry was released).
    assert_eq!(o.insert(id(2), &"r2".to_string()).unwrap(), Insert::Stored);
}

#[test]
fn another_key_cannot_read_the_outbox_and_nothing_is_deleted() {
    let d = tempfile::tempdir().unwrap();
    open(d.path()).insert(id(1), &"a".to_string()).unwrap();
    let o = Outbox::open(
        d.path(),
        StoreKey::from_bytes([1; 32]),
        OutboxOptions::default(),
    )
    .unwrap();
    assert!(o.pending::<String>(10).unwrap().is_empty());
    assert_eq!(o.stats().quarantined, 1, "kept, not deleted");
}

#[derive(Debug, Clone)]
enum Op {
    Insert(u8),
    Ack(u8),
    Dead(u8),
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u8..12).prop_map(Op::Insert),
        2 => (0u8..12).prop_map(Op::Ack),
        1 => (0u8..12).prop_map(Op::Dead),
        1 => Just(Op::Reopen),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// The outbox behaves like a simple model: an ordered list of pending ids plus a set of
    /// seen ids, across any sequence of inserts, acks, dead letters and restarts.
    #[test]
    fn outbox_matches_its_model(ops in proptest::collection::vec(op(), 1..40)) {
        let d = tempfile::tempdir().unwrap();
        let mut o = open(d.path());
        let mut pending: BTreeMap<u64, u8> = BTreeMap::new();
        let mut seen = std::collections::HashSet::new();
        let mut dead = 0u64;
        let mut clock = 0u64;
        for op in ops {
            match op {
                Op::Insert(n) => {
                    let r = o.insert(id(n), &format!("v{n}")).unwrap();
                    if seen.insert(n) {
                        prop_assert_eq!(r, Insert::Stored);
                        clock += 1;
                        pending.insert(clock, n);
                    } else {
                        prop_assert_eq!(r, Insert::Duplicate);
                    }
                }
                Op::Ack(n) => {
                    o.ack(&[id(n)]).unwrap();
                    pending.retain(|_, v| *v != n);
                    seen.insert(n);
                }
                Op::Dead(n) => {
                    let r = o.dead_letter(id(n), "test");
                    if pending.values().any(|v| *v == n) {
                        prop_assert!(r.is_ok());
                        pending.retain(|_, v| *v != n);
                        dead += 1;
                    } else {
                        prop_assert!(r.is_err());
                    }
                }
                Op::Reopen => {
                    drop(o);
                    o = open(d.path());
                }
            }
            let got: Vec<String> = pending_values(&o);
            let want: Vec<String> = pending.values().map(|n| format!("v{n}")).collect();
            prop_assert_eq!(got, want);
            prop_assert_eq!(o.stats().dead, dead);
        }
    }
}
