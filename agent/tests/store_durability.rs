//! The outbox across restarts, duplicates, acks, dead letters and on-disk corruption, plus a
//! model-based property test. Restarts here are drop-and-reopen in one process; real power loss
//! is out of reach of a test (see the `vitalgate::store` module doc).
// These exercise sled directly (raw writes, as a baseline or to corrupt files on purpose).
#![allow(clippy::disallowed_methods)]

use std::collections::HashSet;
use std::path::Path;
use std::time::{Duration, SystemTime};

use proptest::prelude::*;
use serde::{Deserialize, Serialize};
use vitalgate::store::{
    DeadReason, Insert, NewRecord, NotRequeueable, Outbox, OutboxOptions, Requeue, StoreError,
    StoreKey, MAX_PAYLOAD_LEN, TREE_DEAD, TREE_INDEX, TREE_PENDING, TREE_QUARANTINE,
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

fn id(n: u8) -> [u8; 32] {
    [n; 32]
}

fn key() -> StoreKey {
    StoreKey::from_bytes([0x42; 32])
}

fn open(dir: &Path) -> Outbox {
    Outbox::open(dir, key(), OutboxOptions::default()).unwrap()
}

fn pending_ns(outbox: &Outbox) -> Vec<u32> {
    outbox
        .pending::<Sample>(usize::MAX)
        .unwrap()
        .into_iter()
        .map(|r| r.value.n)
        .collect()
}

#[test]
fn records_survive_drop_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("outbox");
    {
        let outbox = open(&store);
        assert_eq!(outbox.insert(id(1), &sample(1)).unwrap(), Insert::Stored);
        assert_eq!(outbox.insert(id(2), &sample(2)).unwrap(), Insert::Stored);
    }
    let outbox = open(&store);
    let pending = outbox.pending::<Sample>(10).unwrap();
    assert_eq!(pending.len(), 2);
    assert_eq!(pending[0].id, id(1));
    assert_eq!(pending[0].value, sample(1));
    assert_eq!(pending[1].value, sample(2));
    assert_eq!(outbox.stats().unwrap().pending, 2);
}

#[test]
fn store_directory_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("outbox");
    drop(open(&store));
    let mode = std::fs::metadata(&store).unwrap().permissions().mode();
    assert_eq!(mode & 0o077, 0, "mode {mode:o}");
}

#[test]
fn same_id_is_a_duplicate_while_pending_after_ack_and_after_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let outbox = open(dir.path());
    assert_eq!(outbox.insert(id(1), &sample(1)).unwrap(), Insert::Stored);
    assert_eq!(outbox.insert(id(1), &sample(1)).unwrap(), Insert::Duplicate);
    assert_eq!(outbox.ack(&[id(1)]).unwrap(), 1);
    assert_eq!(outbox.insert(id(1), &sample(1)).unwrap(), Insert::Duplicate);
    drop(outbox);
    let outbox = open(dir.path());
    assert_eq!(outbox.insert(id(1), &sample(1)).unwrap(), Insert::Duplicate);
    assert!(pending_ns(&outbox).is_empty());
    let stats = outbox.stats().unwrap();
    assert_eq!(stats.acked_tombstones, 1);
    assert_eq!(stats.duplicates, 1);
}

#[test]
fn tombstones_expire_after_the_retention() {
    let dir = tempfile::tempdir().unwrap();
    let opts = OutboxOptions {
        tombstone_retention: Duration::from_secs(3600),
        ..OutboxOptions::default()
    };
    let outbox = Outbox::open(dir.path(), key(), opts).unwrap();
    outbox.insert(id(1), &sample(1)).unwrap();
    outbox.ack(&[id(1)]).unwrap();
    assert_eq!(outbox.prune_tombstones(SystemTime::now()).unwrap(), 0);
    let later = SystemTime::now() + Duration::from_secs(3601);
    assert_eq!(outbox.prune_tombstones(later).unwrap(), 1);
    assert_eq!(outbox.stats().unwrap().acked_tombstones, 0);
    assert_eq!(outbox.insert(id(1), &sample(1)).unwrap(), Insert::Stored);
}

/// Pruning applies its removals in chunks (one sled batch of 100,000 removals took ~520 MiB:
/// store_throughput bench, footprint section). Across several chunk boundaries every expired
/// tombstone and identity goes, and nothing of the records still pending does.
#[test]
fn pruning_more_tombstones_than_one_chunk_removes_every_expired_one_and_keeps_the_pending() {
    let dir = tempfile::tempdir().unwrap();
    let opts = OutboxOptions {
        tombstone_retention: Duration::from_secs(3600),
        ..OutboxOptions::default()
    };
    let outbox = Outbox::open(dir.path(), key(), opts).unwrap();
    let wide_id = |n: u32| {
        let mut id = [0u8; 32];
        id[..4].copy_from_slice(&n.to_be_bytes());
        id
    };
    let (total, kept) = (2_600u32, 100u32);
    let samples: Vec<Sample> = (0..total).map(sample).collect();
    let identities: Vec<String> = (0..total).map(|n| format!("urn:test|{n}")).collect();
    for chunk in (0..total).collect::<Vec<_>>().chunks(500) {
        let recs: Vec<NewRecord<'_, Sample>> = chunk
            .iter()
            .map(|&n| NewRecord {
                id: wide_id(n),
                identity: Some(identities[n as usize].as_str()),
                delivery: None,
                value: &samples[n as usize],
            })
            .collect();
        outbox.insert_records(&recs).unwrap();
    }
    let acked: Vec<[u8; 32]> = (kept..total).map(wide_id).collect();
    assert_eq!(outbox.ack(&acked).unwrap(), (total - kept) as usize);
    let later = SystemTime::now() + Duration::from_secs(3601);
    assert_eq!(
        outbox.prune_tombstones(later).unwrap(),
        (total - kept) as usize
    );
    let stats = outbox.stats().unwrap();
    assert_eq!(stats.acked_tombstones, 0);
    assert_eq!(stats.pending, u64::from(kept));
    assert_eq!(outbox.prune_tombstones(later).unwrap(), 0, "nothing left");
    // The pending records are untouched and still refuse a duplicate; a pruned id is new again.
    let pending: Vec<u32> = outbox
        .pending::<Sample>(kept as usize + 1)
        .unwrap()
        .iter()
        .map(|r| r.value.n)
        .collect();
    assert_eq!(pending, (0..kept).collect::<Vec<_>>());
    assert_eq!(
        outbox.insert(wide_id(0), &sample(0)).unwrap(),
        Insert::Duplicate
    );
    assert_eq!(
        outbox
            .insert(wide_id(total - 1), &sample(total - 1))
            .unwrap(),
        Insert::Stored
    );
}

#[test]
fn pending_is_fifo_across_restarts_and_respects_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    // Ids in decreasing order, so key order of ids differs from arrival order.
    for round in 0..3u32 {
        let outbox = open(dir.path());
        for k in 0..4u32 {
            let n = round * 4 + k;
            outbox.insert(id(200 - n as u8), &sample(n)).unwrap();
        }
    }
    let outbox = open(dir.path());
    assert_eq!(pending_ns(&outbox), (0..12).collect::<Vec<_>>());
    let first: Vec<u32> = outbox
        .pending::<Sample>(5)
        .unwrap()
        .into_iter()
        .map(|r| r.value.n)
        .collect();
    assert_eq!(first, vec![0, 1, 2, 3, 4]);
    assert!(outbox.pending::<Sample>(0).unwrap().is_empty());
}

#[test]
fn insert_many_reports_one_outcome_per_item() {
    let dir = tempfile::tempdir().unwrap();
    let outbox = open(dir.path());
    outbox.insert(id(1), &sample(1)).unwrap();
    let (s1, s2, s3) = (sample(1), sample(2), sample(3));
    let outcomes = outbox
        .insert_many([(id(1), &s1), (id(2), &s2), (id(2), &s2), (id(3), &s3)])
        .unwrap();
    assert_eq!(
        outcomes,
        vec![
            Insert::Duplicate,
            Insert::Stored,
            Insert::Duplicate,
            Insert::Stored
        ]
    );
    assert_eq!(pending_ns(&outbox), vec![1, 2, 3]);
}

#[test]
fn ack_removes_only_the_given_records_durably() {
    let dir = tempfile::tempdir().unwrap();
    {
        let outbox = open(dir.path());
        for n in 1..=4 {
            outbox.insert(id(n), &sample(u32::from(n))).unwrap();
        }
        // id 9 is unknown, id 2 is repeated: both ignored.
        assert_eq!(outbox.ack(&[id(2), id(4), id(9), id(2)]).unwrap(), 2);
        assert_eq!(outbox.ack(&[id(2)]).unwrap(), 0);
    }
    let outbox = open(dir.path());
    assert_eq!(pending_ns(&outbox), vec![1, 3]);
    // An unknown id acked earlier left no tombstone: it can still be stored.
    assert_eq!(outbox.insert(id(9), &sample(9)).unwrap(), Insert::Stored);
}

#[test]
fn dead_letter_keeps_the_data_and_blocks_redelivery() {
    let dir = tempfile::tempdir().unwrap();
    let outbox = open(dir.path());
    outbox.insert(id(1), &sample(1)).unwrap();
    outbox.insert(id(2), &sample(2)).unwrap();
    outbox
        .dead_letter(&id(1), "HTTP 422: invalid code")
        .unwrap();
    assert!(matches!(
        outbox.dead_letter(&id(1), "again"),
        Err(StoreError::NotPending)
    ));
    assert_eq!(pending_ns(&outbox), vec![2]);
    assert_eq!(outbox.insert(id(1), &sample(1)).unwrap(), Insert::Duplicate);
    drop(outbox);

    let outbox = open(dir.path());
    let dead = outbox.dead_letters().unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].source, "outbox");
    assert_eq!(dead[0].reason, "HTTP 422: invalid code");
    assert_eq!(dead[0].id, Some(id(1)));
    assert!(!dead[0].truncated);
    let payload = outbox.dead_letter_payload(dead[0].seq).unwrap();
    assert_eq!(dead[0].size, payload.len() as u64);
    assert_eq!(postcard::from_bytes::<Sample>(&payload).unwrap(), sample(1));
    assert_eq!(outbox.stats().unwrap().dead, 1);
}

#[test]
fn raw_dead_letters_are_kept_listed_without_content_and_truncated_when_huge() {
    let dir = tempfile::tempdir().unwrap();
    let outbox = open(dir.path());
    let junk = b"{\"patient\":\"4711\", not json";
    let seq = outbox
        .put_dead_letter_raw("mqtt:vitals/+", junk, "not JSON")
        .unwrap();
    let huge = vec![b'x'; MAX_PAYLOAD_LEN + 100];
    outbox
        .put_dead_letter_raw("mqtt:vitals/+", &huge, "unknown schema")
        .unwrap();
    drop(outbox);

    let outbox = open(dir.path());
    let dead = outbox.dead_letters().unwrap();
    assert_eq!(dead.len(), 2);
    assert_eq!(dead[0].seq, seq);
    assert_eq!(
        (dead[0].source.as_str(), dead[0].reason.as_str()),
        ("mqtt:vitals/+", "not JSON")
    );
    assert_eq!(
        (dead[0].size, dead[0].truncated, dead[0].id),
        (junk.len() as u64, false, None)
    );
    assert_eq!(outbox.dead_letter_payload(seq).unwrap(), junk);
    assert_eq!((dead[1].size, dead[1].truncated), (huge.len() as u64, true));
    assert_eq!(
        outbox.dead_letter_payload(dead[1].seq).unwrap().len(),
        MAX_PAYLOAD_LEN
    );
    assert!(matches!(
        outbox.dead_letter_payload(12345678),
        Err(StoreError::NoSuchDeadLetter { seq: 12345678 })
    ));
}

#[test]
fn plaintext_never_reaches_the_disk() {
    let dir = tempfile::tempdir().unwrap();
    {
        let outbox = open(dir.path());
        outbox.insert(id(1), &sample(1)).unwrap();
        outbox
            .put_dead_letter_raw("mqtt", b"patient 4711 raw junk", "not JSON")
            .unwrap();
    }
    for entry in walk(dir.path()) {
        let bytes = std::fs::read(&entry).unwrap();
        for needle in [&b"patient 4711"[..], &[1u8; 32][..]] {
            assert!(
                !bytes.windows(needle.len()).any(|w| w == needle),
                "{} holds plaintext",
                entry.display()
            );
        }
    }
}

#[test]
fn a_too_large_record_is_dead_lettered_alone_and_the_rest_of_its_batch_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let outbox = open(dir.path());
    let big = Sample {
        n: 0,
        note: "x".repeat(MAX_PAYLOAD_LEN),
    };
    let batch = [(id(1), &sample(1)), (id(2), &big), (id(3), &sample(3))];
    let out = outbox.insert_many(batch).unwrap();
    assert_eq!(out[0], Insert::Stored);
    assert!(matches!(
        out[1],
        Insert::DeadLettered {
            reason: DeadReason::TooLarge,
            ..
        }
    ));
    assert_eq!(out[2], Insert::Stored);
    assert_eq!(pending_ns(&outbox), vec![1, 3]);
    let dead = outbox.dead_letters().unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].reason, "record_too_large");
    assert_eq!(dead[0].id, Some(id(2)));
    assert!(dead[0].truncated);
    // Redelivered: recognised, not dead-lettered twice.
    assert_eq!(outbox.insert(id(2), &big).unwrap(), Insert::Duplicate);
    assert_eq!(outbox.dead_letters().unwrap().len(), 1);
}

// ---- requeueing dead letters ----

/// The identity a `Sample` is stored under in these tests.
fn identity_of(s: &Sample) -> Option<String> {
    Some(format!("ident-{}", s.n))
}

fn insert_identified(outbox: &Outbox, n: u8, value: &Sample) -> Insert {
    let ident = identity_of(value).unwrap();
    outbox
        .insert_records(&[with_identity(n, &ident, value)])
        .unwrap()[0]
}

fn dead_seq_of(outbox: &Outbox, n: u8) -> u64 {
    outbox
        .dead_letters()
        .unwrap()
        .into_iter()
        .find(|d| d.id == Some(id(n)))
        .unwrap()
        .seq
}

/// Tombstones and identities forgotten: a redelivery is stored again.
fn forget_tombstones(dir: &Path) -> Outbox {
    let opts = OutboxOptions {
        tombstone_retention: Duration::from_secs(1),
        ..OutboxOptions::default()
    };
    let outbox = Outbox::open(dir, key(), opts).unwrap();
    outbox
        .prune_tombstones(SystemTime::now() + Duration::from_secs(5))
        .unwrap();
    outbox
}

#[test]
fn a_requeued_dead_letter_is_pending_again_under_its_id_durably() {
    let dir = tempfile::tempdir().unwrap();
    {
        let outbox = open(dir.path());
        insert_identified(&outbox, 1, &sample(1));
        insert_identified(&outbox, 2, &sample(2));
        outbox
            .dead_letter(&id(1), "HTTP 422: invalid code")
            .unwrap();
        assert_eq!(outbox.insert(id(1), &sample(1)).unwrap(), Insert::Duplicate);
        let seq = dead_seq_of(&outbox, 1);
        assert!(matches!(
            outbox.requeue_dead_letter(seq, identity_of).unwrap(),
            Requeue::Requeued { .. }
        ));
    }
    // Durable on Ok: after a reopen it is pending (behind 2), with its id, and no dead letter.
    let outbox = open(dir.path());
    assert_eq!(pending_ns(&outbox), vec![2, 1]);
    let ids: Vec<[u8; 32]> = outbox
        .pending::<Sample>(10)
        .unwrap()
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(ids, vec![id(2), id(1)]);
    assert_eq!(outbox.stats().unwrap().dead, 0);
    // Pending means: a redelivery is a duplicate, and an ack removes it.
    assert_eq!(outbox.insert(id(1), &sample(1)).unwrap(), Insert::Duplicate);
    assert_eq!(outbox.ack(&[id(1)]).unwrap(), 1);
    assert_eq!(pending_ns(&outbox), vec![2]);
}

#[test]
fn requeueing_twice_or_after_a_redelivery_stores_the_reading_once() {
    let dir = tempfile::tempdir().unwrap();
    let outbox = open(dir.path());
    insert_identified(&outbox, 1, &sample(1));
    outbox.dead_letter(&id(1), "HTTP 400").unwrap();
    let first = dead_seq_of(&outbox, 1);
    drop(outbox);
    // The tombstone expires and the reading is redelivered: pending again, dead-lettered again.
    let outbox = forget_tombstones(dir.path());
    assert_eq!(insert_identified(&outbox, 1, &sample(1)), Insert::Stored);
    outbox.dead_letter(&id(1), "HTTP 400").unwrap();
    assert_eq!(
        outbox.dead_letters().unwrap().len(),
        2,
        "two dead letters, one reading"
    );

    let summary = outbox.requeue_all_dead_letters(identity_of).unwrap();
    assert_eq!(summary.requeued, vec![first]);
    assert_eq!(summary.already_pending.len(), 1);
    assert!(summary.skipped.is_empty());
    assert_eq!(pending_ns(&outbox), vec![1], "stored once");
    assert_eq!(outbox.stats().unwrap().dead, 0);
    // The same seq again: it is gone.
    assert!(matches!(
        outbox.requeue_dead_letter(first, identity_of),
        Err(StoreError::NoSuchDeadLetter { .. })
    ));

    // Redelivered before its requeue: the requeue finds it pending and keeps one copy.
    outbox.dead_letter(&id(1), "HTTP 400").unwrap();
    drop(outbox);
    let outbox = forget_tombstones(dir.path());
    assert_eq!(insert_identified(&outbox, 1, &sample(1)), Insert::Stored);
    let seq = dead_seq_of(&outbox, 1);
    assert_eq!(
        outbox.requeue_dead_letter(seq, identity_of).unwrap(),
        Requeue::AlreadyPending
    );
    assert_eq!(pending_ns(&outbox), vec![1]);
    assert_eq!(outbox.stats().unwrap().dead, 0);
}

#[test]
fn a_requeued_reading_holds_its_identity_again() {
    let dir = tempfile::tempdir().unwrap();
    let outbox = open(dir.path());
    insert_identified(&outbox, 1, &sample(7));
    outbox.dead_letter(&id(1), "HTTP 422").unwrap();
    let seq = dead_seq_of(&outbox, 1);
    drop(outbox);
    // Identities expire with tombstones; the requeue restores it.
    let outbox = forget_tombstones(dir.path());
    outbox.requeue_dead_letter(seq, identity_of).unwrap();
    let other = Sample {
        n: 7,
        note: "other content, same identity".into(),
    };
    assert!(matches!(
        insert_identified(&outbox, 2, &other),
        Insert::DeadLettered {
            reason: DeadReason::IdentifierCollision,
            ..
        }
    ));
    assert_eq!(pending_ns(&outbox), vec![7]);
}

#[test]
fn a_dead_letter_whose_identity_was_taken_meanwhile_is_not_requeued() {
    let dir = tempfile::tempdir().unwrap();
    let outbox = open(dir.path());
    insert_identified(&outbox, 1, &sample(7));
    outbox.dead_letter(&id(1), "HTTP 422").unwrap();
    let seq = dead_seq_of(&outbox, 1);
    drop(outbox);
    let outbox = forget_tombstones(dir.path());
    let other = Sample {
        n: 7,
        note: "other content, same identity".into(),
    };
    assert_eq!(insert_identified(&outbox, 2, &other), Insert::Stored);
    assert!(matches!(
        outbox.requeue_dead_letter(seq, identity_of),
        Err(StoreError::NotRequeueable {
            why: NotRequeueable::IdentityTaken,
            ..
        })
    ));
    assert_eq!(outbox.stats().unwrap().dead, 1, "kept");
    assert_eq!(pending_ns(&outbox), vec![7]);
}

#[test]
fn raw_payloads_collisions_and_truncated_records_are_not_requeued() {
    let dir = tempfile::tempdir().unwrap();
    let outbox = open(dir.path());
    let raw = outbox
        .put_dead_letter_raw("mqtt:t/1", b"not json", "not valid JSON")
        .unwrap();
    insert_identified(&outbox, 1, &sample(1));
    let collision = Sample {
        n: 1,
        note: "same identity, other content".into(),
    };
    let Insert::DeadLettered { seq: collided, .. } = insert_identified(&outbox, 2, &collision)
    else {
        panic!("expected a collision")
    };
    let big = Sample {
        n: 3,
        note: "x".repeat(MAX_PAYLOAD_LEN + 10),
    };
    let Insert::DeadLettered { seq: too_large, .. } = outbox.insert(id(3), &big).unwrap() else {
        panic!("expected a dead letter")
    };
    insert_identified(&outbox, 4, &sample(4));
    outbox.dead_letter(&id(4), "HTTP 400").unwrap();
    let rejected = dead_seq_of(&outbox, 4);

    let why = |seq| match outbox.requeue_dead_letter(seq, identity_of) {
        Err(StoreError::NotRequeueable { why, .. }) => why,
        other => panic!("{other:?}"),
    };
    assert_eq!(why(raw), NotRequeueable::Raw);
    assert_eq!(why(collided), NotRequeueable::IdentifierCollision);
    assert_eq!(why(too_large), NotRequeueable::TooLarge);
    assert_eq!(outbox.stats().unwrap().dead, 4, "nothing moved");

    let summary = outbox.requeue_all_dead_letters(identity_of).unwrap();
    assert_eq!(summary.requeued, vec![rejected]);
    let mut skipped = summary.skipped.clone();
    skipped.sort_by_key(|(seq, _)| *seq);
    let mut want = vec![
        (raw, NotRequeueable::Raw),
        (collided, NotRequeueable::IdentifierCollision),
        (too_large, NotRequeueable::TooLarge),
    ];
    want.sort_by_key(|(seq, _)| *seq);
    assert_eq!(skipped, want);
    assert_eq!(pending_ns(&outbox), vec![1, 4]);
    assert_eq!(outbox.stats().unwrap().dead, 3);
}

#[test]
fn a_payload_of_another_type_is_not_requeued() {
    let dir = tempfile::tempdir().unwrap();
    let outbox = open(dir.path());
    outbox.insert(id(1), &sample(1)).unwrap();
    outbox.dead_letter(&id(1), "HTTP 400").unwrap();
    let seq = dead_seq_of(&outbox, 1);
    let r = outbox.requeue_dead_letter::<([u8; 32], [u8; 32])>(seq, |_| None);
    assert!(matches!(
        r,
        Err(StoreError::NotRequeueable {
            why: NotRequeueable::Undecodable,
            ..
        })
    ));
}

fn with_identity<'a>(n: u8, identity: &'a str, value: &'a Sample) -> NewRecord<'a, Sample> {
    NewRecord {
        id: id(n),
        identity: Some(identity),
        delivery: None,
        value,
    }
}

#[test]
fn a_second_reading_under_the_same_identity_is_kept_as_a_collision_dead_letter() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("outbox");
    let (a, b) = (sample(120), sample(140));
    {
        let outbox = open(&store);
        let out = outbox
            .insert_records(&[with_identity(1, "dev-p-150020-1", &a)])
            .unwrap();
        assert_eq!(out, vec![Insert::Stored]);
        // Same identity, other content: never stored as pending, never dropped.
        let out = outbox
            .insert_records(&[
                with_identity(2, "dev-p-150020-1", &b),
                with_identity(3, "dev-p-150020-2", &b),
            ])
            .unwrap();
        assert!(matches!(
            out[0],
            Insert::DeadLettered {
                reason: DeadReason::IdentifierCollision,
                ..
            }
        ));
        assert_eq!(out[1], Insert::Stored);
        // The same reading again is a duplicate, not a collision.
        let out = outbox
            .insert_records(&[with_identity(1, "dev-p-150020-1", &a)])
            .unwrap();
        assert_eq!(out, vec![Insert::Duplicate]);
        assert_eq!(pending_ns(&outbox), vec![120, 140]);
        // The identity outlives the upload: a later colliding reading is still caught.
        outbox.ack(&[id(1)]).unwrap();
    }
    let outbox = open(&store);
    let out = outbox
        .insert_records(&[with_identity(4, "dev-p-150020-1", &sample(99))])
        .unwrap();
    assert!(matches!(out[0], Insert::DeadLettered { .. }));
    let dead = outbox.dead_letters().unwrap();
    assert_eq!(dead.len(), 2);
    assert!(dead.iter().all(|d| d.reason == "identifier_collision"));
    let kept: Sample =
        postcard::from_bytes(&outbox.dead_letter_payload(dead[0].seq).unwrap()).unwrap();
    assert_eq!(kept, b);
}

#[test]
fn two_colliding_readings_in_one_batch_keep_the_first_pending() {
    let dir = tempfile::tempdir().unwrap();
    let outbox = open(dir.path());
    let (a, b) = (sample(1), sample(2));
    let out = outbox
        .insert_records(&[with_identity(1, "x", &a), with_identity(2, "x", &b)])
        .unwrap();
    assert_eq!(out[0], Insert::Stored);
    assert!(matches!(out[1], Insert::DeadLettered { .. }));
    assert_eq!(pending_ns(&outbox), vec![1]);
}

#[test]
fn identities_are_not_written_in_clear() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("outbox");
    {
        let outbox = open(&store);
        let canary = "CANARY-MRN-998877-150020-1";
        outbox
            .insert_records(&[with_identity(1, canary, &sample(1))])
            .unwrap();
    }
    for entry in walk(&store) {
        let bytes = std::fs::read(&entry).unwrap();
        assert!(
            !bytes.windows(12).any(|w| w == b"CANARY-MRN-9"),
            "{} holds the identity in clear",
            entry.display()
        );
    }
}

#[test]
fn a_store_is_refused_with_another_key() {
    let dir = tempfile::tempdir().unwrap();
    let outbox = open(dir.path());
    outbox.insert(id(1), &sample(1)).unwrap();
    drop(outbox);
    let other = StoreKey::from_bytes([0x43; 32]);
    assert!(matches!(
        Outbox::open(dir.path(), other, OutboxOptions::default()),
        Err(StoreError::WrongKey { .. })
    ));
    // Nothing was quarantined or lost by the failed attempt.
    let outbox = open(dir.path());
    assert_eq!(pending_ns(&outbox), vec![1]);
    assert_eq!(outbox.stats().unwrap().quarantined, 0);
}

/// Rewrites the `n`th value of `pending` with `f`, through sled and without the codec.
fn corrupt_pending(dir: &Path, n: usize, f: impl Fn(&mut Vec<u8>)) -> (Vec<u8>, Vec<u8>) {
    let db = sled_open_after_close(dir);
    let tree = db.open_tree(TREE_PENDING).unwrap();
    let (k, v) = tree.iter().nth(n).unwrap().unwrap();
    let mut bad = v.to_vec();
    f(&mut bad);
    tree.insert(&k, bad.clone()).unwrap();
    db.flush().unwrap();
    (k.to_vec(), bad)
}

fn quarantined(dir: &Path) -> Vec<(Vec<u8>, Vec<u8>)> {
    let db = sled_open_after_close(dir);
    let tree = db.open_tree(TREE_QUARANTINE).unwrap();
    tree.iter()
        .map(|kv| {
            let (k, v) = kv.unwrap();
            (k.to_vec(), v.to_vec())
        })
        .collect()
}

/// Damages a stored value in place.
type Corruption = fn(&mut Vec<u8>);

#[test]
fn a_corrupt_record_is_quarantined_and_the_others_are_returned() {
    let corruptions: [(&str, Corruption); 4] = [
        ("bit flip", |v| {
            let mid = v.len() / 2;
            v[mid] ^= 0x10;
        }),
        ("truncated", |v| v.truncate(v.len() - 5)),
        ("garbage", |v| *v = b"garbage".to_vec()),
        ("empty", |v| v.clear()),
    ];
    for (what, corrupt) in corruptions {
        let dir = tempfile::tempdir().unwrap();
        {
            let outbox = open(dir.path());
            for n in 1..=3 {
                outbox.insert(id(n), &sample(u32::from(n))).unwrap();
            }
        }
        let (key, bad) = corrupt_pending(dir.path(), 1, corrupt);
        {
            let outbox = open(dir.path());
            assert_eq!(pending_ns(&outbox), vec![1, 3], "{what}");
            let stats = outbox.stats().unwrap();
            assert_eq!((stats.quarantined, stats.corrupt_records), (1, 1), "{what}");
            assert_eq!(stats.pending, 2, "{what}");
            // Acking the corrupt record's id does nothing (its index entry is gone).
            assert_eq!(outbox.ack(&[id(2)]).unwrap(), 0, "{what}");
            // Asking again quarantines nothing more.
            assert_eq!(pending_ns(&outbox), vec![1, 3], "{what}");
            assert_eq!(outbox.stats().unwrap().corrupt_records, 1, "{what}");
        }
        // The raw bytes are kept, under tree name, 0x00, original key.
        let mut qkey = b"pending\0".to_vec();
        qkey.extend_from_slice(&key);
        assert_eq!(quarantined(dir.path()), vec![(qkey, bad)], "{what}");
        // Quarantine left the lost reading's index entry (O(1): its id cannot be read to find
        // it); the prune at the next open removed it.
        drop(open(dir.path()));
        let index_len = sled_open_after_close(dir.path())
            .open_tree("index")
            .unwrap()
            .len();
        assert_eq!(index_len, 2, "{what}: the stale index entry was pruned");
        // A redelivery of the lost reading is stored again.
        let outbox = open(dir.path());
        assert_eq!(
            outbox.insert(id(2), &sample(2)).unwrap(),
            Insert::Stored,
            "{what}"
        );
        assert_eq!(pending_ns(&outbox), vec![1, 3, 2], "{what}");
    }
}

#[test]
fn a_record_moved_to_another_key_is_quarantined() {
    let dir = tempfile::tempdir().unwrap();
    {
        let outbox = open(dir.path());
        outbox.insert(id(1), &sample(1)).unwrap();
        outbox.insert(id(2), &sample(2)).unwrap();
    }
    {
        let db = sled_open_after_close(dir.path());
        let tree = db.open_tree(TREE_PENDING).unwrap();
        let entries: Vec<_> = tree.iter().map(Result::unwrap).collect();
        // Swap the two values.
        tree.insert(&entries[0].0, entries[1].1.clone()).unwrap();
        tree.insert(&entries[1].0, entries[0].1.clone()).unwrap();
        db.flush().unwrap();
    }
    let outbox = open(dir.path());
    assert!(pending_ns(&outbox).is_empty());
    assert_eq!(outbox.stats().unwrap().quarantined, 2);
}

#[test]
fn a_record_of_another_type_is_quarantined_not_returned() {
    let dir = tempfile::tempdir().unwrap();
    let outbox = open(dir.path());
    outbox.insert(id(1), &"not a sample".to_owned()).unwrap();
    outbox.insert(id(2), &sample(2)).unwrap();
    assert_eq!(pending_ns(&outbox), vec![2]);
    assert_eq!(outbox.stats().unwrap().quarantined, 1);
}

#[test]
fn a_corrupt_dead_letter_is_quarantined_and_the_others_listed() {
    let dir = tempfile::tempdir().unwrap();
    {
        let outbox = open(dir.path());
        for n in 0..3u8 {
            outbox
                .put_dead_letter_raw("mqtt", &[n; 10], "not JSON")
                .unwrap();
        }
    }
    {
        let db = sled_open_after_close(dir.path());
        let tree = db.open_tree(TREE_DEAD).unwrap();
        let (k, v) = tree.iter().next().unwrap().unwrap();
        let mut bad = v.to_vec();
        bad[20] ^= 1;
        tree.insert(k, bad).unwrap();
        db.flush().unwrap();
    }
    let outbox = open(dir.path());
    let dead = outbox.dead_letters().unwrap();
    assert_eq!(dead.len(), 2);
    assert_eq!(outbox.dead_letter_payload(dead[0].seq).unwrap(), [1u8; 10]);
    let stats = outbox.stats().unwrap();
    assert_eq!((stats.dead, stats.quarantined), (2, 1));
}

#[test]
fn a_corrupt_index_entry_cannot_remove_the_wrong_reading() {
    let dir = tempfile::tempdir().unwrap();
    {
        let outbox = open(dir.path());
        outbox.insert(id(1), &sample(1)).unwrap();
        outbox.insert(id(2), &sample(2)).unwrap();
    }
    {
        // Point both index entries at the first record.
        let db = sled_open_after_close(dir.path());
        let index = db.open_tree(TREE_INDEX).unwrap();
        let first_seq = db
            .open_tree(TREE_PENDING)
            .unwrap()
            .first()
            .unwrap()
            .unwrap()
            .0;
        let keys: Vec<_> = index.iter().keys().map(Result::unwrap).collect();
        for k in keys {
            index.insert(k, first_seq.clone()).unwrap();
        }
        db.flush().unwrap();
    }
    let outbox = open(dir.path());
    // id 2's entry now points at id 1's record: acking id 2 must not remove it.
    assert_eq!(outbox.ack(&[id(2)]).unwrap(), 0);
    assert!(matches!(
        outbox.dead_letter(&id(2), "rejected"),
        Err(StoreError::Corrupt { .. })
    ));
    assert_eq!(pending_ns(&outbox), vec![1, 2]);
    assert_eq!(outbox.ack(&[id(1)]).unwrap(), 1);
    assert_eq!(pending_ns(&outbox), vec![2]);
}

#[test]
fn a_sled_directory_that_is_not_an_outbox_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = sled_open_after_close(dir.path());
        db.open_tree(TREE_PENDING)
            .unwrap()
            .insert(b"x", b"y")
            .unwrap();
        db.flush().unwrap();
    }
    assert!(matches!(
        Outbox::open(dir.path(), key(), OutboxOptions::default()),
        Err(StoreError::UnsupportedFormat { found: None, .. })
    ));
}

#[test]
fn concurrent_inserts_from_several_threads_are_all_kept_once() {
    let dir = tempfile::tempdir().unwrap();
    let outbox = std::sync::Arc::new(open(dir.path()));
    let threads: Vec<_> = (0..4u8)
        .map(|t| {
            let outbox = outbox.clone();
            std::thread::spawn(move || {
                // Every thread inserts ids 0..20; each id must be stored exactly once overall.
                (0..20u8)
                    .filter(|n| {
                        outbox
                            .insert(id(*n), &sample(u32::from(*n) + 100 * u32::from(t)))
                            .unwrap()
                            == Insert::Stored
                    })
                    .count()
            })
        })
        .collect();
    let stored: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
    assert_eq!(stored, 20);
    let pending = outbox.pending::<Sample>(usize::MAX).unwrap();
    let ids: HashSet<u8> = pending.iter().map(|r| r.id[0]).collect();
    assert_eq!((pending.len(), ids.len()), (20, 20));
    assert_eq!(outbox.stats().unwrap().duplicates, 60);
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

// ---- model-based test ----

#[derive(Clone, Debug)]
enum Op {
    Insert(u8, u32),
    InsertMany(Vec<(u8, u32)>),
    Ack(Vec<u8>),
    DeadLetter(u8),
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    let id = 0u8..6;
    prop_oneof![
        4 => (id.clone(), any::<u32>()).prop_map(|(i, v)| Op::Insert(i, v)),
        2 => prop::collection::vec((id.clone(), any::<u32>()), 0..5).prop_map(Op::InsertMany),
        3 => prop::collection::vec(id.clone(), 0..4).prop_map(Op::Ack),
        1 => id.prop_map(Op::DeadLetter),
        1 => Just(Op::Reopen),
    ]
}

#[derive(Default)]
struct Model {
    pending: Vec<(u8, u32)>,
    tombstones: HashSet<u8>,
    dead: usize,
}

impl Model {
    fn insert(&mut self, i: u8, v: u32) -> Insert {
        if self.tombstones.contains(&i) || self.pending.iter().any(|(p, _)| *p == i) {
            Insert::Duplicate
        } else {
            self.pending.push((i, v));
            Insert::Stored
        }
    }
    fn remove(&mut self, i: u8) -> bool {
        let before = self.pending.len();
        self.pending.retain(|(p, _)| *p != i);
        let removed = self.pending.len() != before;
        if removed {
            self.tombstones.insert(i);
        }
        removed
    }
}

fn check(outbox: &Outbox, model: &Model) -> Result<(), TestCaseError> {
    let got: Vec<(u8, u32)> = outbox
        .pending::<u32>(usize::MAX)
        .unwrap()
        .into_iter()
        .map(|r| (r.id[0], r.value))
        .collect();
    prop_assert_eq!(&got, &model.pending);
    let stats = outbox.stats().unwrap();
    prop_assert_eq!(stats.pending as usize, model.pending.len());
    prop_assert_eq!(stats.dead as usize, model.dead);
    prop_assert_eq!(stats.acked_tombstones as usize, model.tombstones.len());
    prop_assert_eq!(stats.quarantined, 0);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases_or(24)))]

    #[test]
    fn outbox_matches_a_simple_model(ops in prop::collection::vec(op(), 1..25)) {
        let dir = tempfile::tempdir().unwrap();
        let mut outbox = open(dir.path());
        let mut model = Model::default();
        for op in ops {
            match op {
                Op::Insert(i, v) => {
                    prop_assert_eq!(outbox.insert(id(i), &v).unwrap(), model.insert(i, v));
                }
                Op::InsertMany(items) => {
                    let got = outbox
                        .insert_many(items.iter().map(|(i, v)| (id(*i), v)))
                        .unwrap();
                    let want: Vec<Insert> =
                        items.iter().map(|(i, v)| model.insert(*i, *v)).collect();
                    prop_assert_eq!(got, want);
                }
                Op::Ack(ids) => {
                    let want = ids.iter().filter(|i| model.remove(**i)).count();
                    let ids: Vec<[u8; 32]> = ids.iter().map(|i| id(*i)).collect();
                    prop_assert_eq!(outbox.ack(&ids).unwrap(), want);
                }
                Op::DeadLetter(i) => {
                    let got = outbox.dead_letter(&id(i), "rejected");
                    if model.remove(i) {
                        model.dead += 1;
                        prop_assert!(got.is_ok(), "{:?}", got);
                    } else {
                        prop_assert!(matches!(got, Err(StoreError::NotPending)), "{:?}", got);
                    }
                }
                Op::Reopen => {
                    drop(outbox);
                    outbox = open(dir.path());
                }
            }
            check(&outbox, &model)?;
        }
    }
}

/// Case count: `PROPTEST_CASES` when set (cross/test.sh lowers it under qemu), else the default.
fn cases_or(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `sled::open` of a store an `Outbox` just closed: sled's I/O threads release the file lock a
/// little after the `Db` is dropped (seen on a loaded machine and under qemu), so wait for it
/// with the store's own lock wait first.
fn sled_open_after_close(path: &std::path::Path) -> sled::Db {
    vitalgate::store::wait_for_lock(&path.join("db"), std::time::Duration::from_secs(10))
        .expect("sled's lock released");
    sled::open(path).expect("sled::open")
}

/// Store format 4 only appended `TimeQuality::Corrected` (and 5 changed the sealing, not the
/// payload): a format 3 store (here: a reading as the format 3 build encoded it,
/// `store/testdata/reading-format-3.postcard`, under a format record of 3) opens, its format
/// record becomes 6 (5 and 6 changed the sealing and the ids, not the payload), its reading
/// reads as before. Other versions
/// are refused, never quarantined.
#[test]
fn a_format_3_store_is_upgraded_in_place_and_its_readings_still_read() {
    use vitalgate::reading::{Reading, TimeQuality};
    let fixture: &[u8] = include_bytes!("../src/store/testdata/reading-format-3.postcard");
    let old: Reading = postcard::from_bytes(fixture).unwrap();
    assert_eq!(old.time_quality, TimeQuality::CorrectedForSkew);
    // The bytes the outbox stores for it are the format 3 bytes.
    assert_eq!(postcard::to_stdvec(&old).unwrap(), fixture);
    let dir = tempfile::tempdir().unwrap();
    {
        let o = open(dir.path());
        assert_eq!(o.insert(*old.id.as_bytes(), &old).unwrap(), Insert::Stored);
    }
    let set_format = |v: u8| {
        let db = sled_open_after_close(dir.path());
        db.open_tree("meta")
            .unwrap()
            .insert("format", &[v])
            .unwrap();
        db.flush().unwrap();
    };
    let format = || {
        let db = sled_open_after_close(dir.path());
        let v = db
            .open_tree("meta")
            .unwrap()
            .get("format")
            .unwrap()
            .unwrap();
        v.to_vec()
    };
    set_format(3);
    {
        let o = open(dir.path());
        let p = o.pending::<Reading>(10).unwrap();
        assert_eq!(p.len(), 1);
        assert!(p[0].value == old);
    }
    assert_eq!(format(), vec![vitalgate::store::FORMAT_VERSION]);
    assert_eq!(vitalgate::store::FORMAT_VERSION, 6);
    for other in [2u8, 7] {
        set_format(other);
        let Err(err) = Outbox::open(dir.path(), key(), OutboxOptions::default()) else {
            panic!("format {other} opened");
        };
        assert!(
            matches!(err, StoreError::UnsupportedFormat { found: Some(v), .. } if v == other),
            "{err}"
        );
    }
}

/// The consent purge's store half: records a predicate selects leave `pending` durably, in one
/// transaction per call (at most `limit`), become tombstones (a redelivery is a duplicate) and
/// are counted persistently; the others stay, in order.
#[test]
fn purge_removes_only_the_selected_pending_records_durably_and_counts_them() {
    let dir = tempfile::tempdir().unwrap();
    {
        let o = open(dir.path());
        for n in 1..=6u8 {
            assert_eq!(
                o.insert(id(n), &sample(u32::from(n))).unwrap(),
                Insert::Stored
            );
        }
        assert_eq!(o.stats().unwrap().purged, 0);
        // The predicate sees the record (value, id, reception time).
        let before = o.held_bytes();
        let purged = o
            .purge_pending_where::<Sample>(2, |r| {
                assert!(r.enqueued_at <= SystemTime::now());
                r.value.n % 2 == 0
            })
            .unwrap();
        assert_eq!(
            purged.iter().map(|r| r.value.n).collect::<Vec<_>>(),
            vec![2, 4],
            "oldest first, at most the limit"
        );
        assert!(o.held_bytes() < before);
        assert_eq!(pending_ns(&o), vec![1, 3, 5, 6]);
        assert_eq!(o.stats().unwrap().purged, 2);
        // A purged reading delivered again is not stored again.
        assert_eq!(o.insert(id(2), &sample(2)).unwrap(), Insert::Duplicate);
        // Nothing selected: nothing removed, the count unchanged.
        assert!(o
            .purge_pending_where::<Sample>(10, |_| false)
            .unwrap()
            .is_empty());
        assert_eq!(o.stats().unwrap().purged, 2);
    }
    let o = open(dir.path());
    assert_eq!(pending_ns(&o), vec![1, 3, 5, 6]);
    assert_eq!(o.stats().unwrap().purged, 2, "the count survives a restart");
    let purged = o
        .purge_pending_where::<Sample>(10, |r| r.value.n == 6)
        .unwrap();
    assert_eq!(purged.len(), 1);
    assert_eq!(o.stats().unwrap().purged, 3);
    assert_eq!(pending_ns(&o), vec![1, 3, 5]);
}

/// The uploader's read while acks are being written: records whose sequence number is in the
/// skip set are passed over (without being opened), the limit counts only what is returned,
/// and the predicate still filters the rest.
#[test]
fn a_read_skipping_sequence_numbers_returns_the_next_records_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let o = open(dir.path());
    for n in 1..=6u8 {
        o.insert(id(n), &sample(u32::from(n))).unwrap();
    }
    let all = o.pending::<Sample>(10).unwrap();
    let skip: std::collections::HashSet<u64> = all[..2].iter().map(|r| r.seq).collect();
    let (got, refused) = o
        .pending_where_skipping::<Sample>(2, &skip, |s| s.n != 4)
        .unwrap();
    assert_eq!(
        got.iter().map(|r| r.value.n).collect::<Vec<_>>(),
        vec![3, 5]
    );
    assert_eq!(refused, 1, "only the predicate's refusals are counted");
    let (got, _) = o
        .pending_where_skipping::<Sample>(10, &std::collections::HashSet::new(), |_| true)
        .unwrap();
    assert_eq!(got.len(), 6, "an empty skip set skips nothing");
}

/// Compaction (`vitalgate::store::compact`): a store whose backlog was delivered is copied into
/// a fresh database that takes its place. Every entry survives (pending in order, dead letters,
/// tombstones still refusing redeliveries), the files shrink, and ids keep growing: records
/// written after the compaction come after the old ones and never reuse a nonce under the key.
#[test]
fn compaction_keeps_every_entry_shrinks_the_files_and_ids_keep_growing() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("outbox");
    let nid = |n: u32| {
        let mut i = [0u8; 32];
        i[..4].copy_from_slice(&n.to_be_bytes());
        i[4] = 0xC0;
        i
    };
    let o = open(&dir);
    for chunk in (0..4000u32).collect::<Vec<_>>().chunks(64) {
        let values: Vec<Sample> = chunk.iter().map(|&n| sample(n)).collect();
        let got = o
            .insert_many(chunk.iter().zip(&values).map(|(&n, v)| (nid(n), v)))
            .unwrap();
        assert!(got.iter().all(|g| *g == Insert::Stored));
    }
    // Deliver all but the last 20; dead-letter one of those.
    let delivered: Vec<[u8; 32]> = (0..3980).map(nid).collect();
    for c in delivered.chunks(256) {
        assert_eq!(o.ack(c).unwrap(), c.len());
    }
    o.dead_letter(&nid(3990), "test: refused").unwrap();
    let before = o.stats().unwrap();
    let pending_before: Vec<(u32, [u8; 32])> = o
        .pending::<Sample>(usize::MAX)
        .unwrap()
        .into_iter()
        .map(|r| (r.value.n, r.id))
        .collect();
    assert_eq!(pending_before.len(), 19);
    let live_before = o.live_bytes().unwrap();
    let disk_before = o.disk_bytes().unwrap();

    let report = o.compact().unwrap();
    assert_eq!(report.disk_before, disk_before);
    let after = o.stats().unwrap();
    assert_eq!(
        (
            after.pending,
            after.dead,
            after.acked_tombstones,
            after.quarantined
        ),
        (
            before.pending,
            before.dead,
            before.acked_tombstones,
            before.quarantined
        )
    );
    let pending_after: Vec<(u32, [u8; 32])> = o
        .pending::<Sample>(usize::MAX)
        .unwrap()
        .into_iter()
        .map(|r| (r.value.n, r.id))
        .collect();
    assert_eq!(pending_after, pending_before);
    assert_eq!(o.dead_letters().unwrap().len(), 1);
    // Tombstones still refuse redeliveries; the dead letter's id too.
    assert_eq!(o.insert(nid(7), &sample(7)).unwrap(), Insert::Duplicate);
    assert_eq!(
        o.insert(nid(3990), &sample(3990)).unwrap(),
        Insert::Duplicate
    );
    // Live entries unchanged but for the id base (one meta entry).
    let live_after = o.live_bytes().unwrap();
    assert!(
        live_after >= live_before && live_after <= live_before + 32,
        "{live_before} -> {live_after}"
    );
    assert!(
        report.disk_after * 2 < report.disk_before,
        "disk {} -> {} (live {live_after})",
        report.disk_before,
        report.disk_after
    );
    assert_eq!(o.disk_bytes().unwrap(), report.disk_after);
    // Nothing left beside the store.
    let names: Vec<String> = std::fs::read_dir(root.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, vec!["outbox".to_string()]);

    // New records after the compaction, and after a reopen of the compacted store, come last.
    for n in 5000..5010u32 {
        assert_eq!(o.insert(nid(n), &sample(n)).unwrap(), Insert::Stored);
    }
    drop(o);
    let o = open(&dir);
    for n in 5010..5020u32 {
        assert_eq!(o.insert(nid(n), &sample(n)).unwrap(), Insert::Stored);
    }
    let order: Vec<u32> = pending_ns(&o);
    let mut want: Vec<u32> = pending_before.iter().map(|p| p.0).collect();
    want.extend(5000..5020);
    assert_eq!(order, want);
    drop(o);

    // Raw: sequence numbers grow in arrival order, and no two pending records share a nonce.
    let db = sled_open_after_close(&dir);
    let mut nonces = HashSet::new();
    let mut seqs = Vec::new();
    for kv in db.open_tree(TREE_PENDING).unwrap().iter() {
        let (k, v) = kv.unwrap();
        seqs.push(u64::from_be_bytes(k.as_ref().try_into().unwrap()));
        assert_eq!(v[0], 3, "sealed record version 3");
        // version (1) | key id (4) | binding (16) | nonce (12)
        let mut key_and_nonce = v[1..5].to_vec();
        key_and_nonce.extend_from_slice(&v[21..33]);
        assert!(nonces.insert(key_and_nonce), "nonce reused");
    }
    assert_eq!(seqs.len(), 39);
    assert!(seqs.windows(2).all(|w| w[0] < w[1]));
}

/// Calls made while a compaction runs wait for it and then succeed: none fails, none is lost.
#[test]
fn writes_during_a_compaction_wait_and_all_land() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("outbox");
    let o = std::sync::Arc::new(open(&dir));
    let nid = |n: u32| {
        let mut i = [0u8; 32];
        i[..4].copy_from_slice(&n.to_be_bytes());
        i[4] = 0xD0;
        i
    };
    for n in 0..2000u32 {
        o.insert(nid(n), &sample(n)).unwrap();
    }
    let all: Vec<[u8; 32]> = (0..2000).map(nid).collect();
    for c in all.chunks(256) {
        o.ack(c).unwrap();
    }
    let writer = {
        let o = std::sync::Arc::clone(&o);
        std::thread::spawn(move || {
            for n in 10_000..10_300u32 {
                assert_eq!(o.insert(nid(n), &sample(n)).unwrap(), Insert::Stored);
            }
        })
    };
    for _ in 0..3 {
        o.compact().unwrap();
    }
    writer.join().unwrap();
    assert_eq!(pending_ns(&o), (10_000..10_300).collect::<Vec<_>>());
}

/// A compaction interrupted after the old store was moved aside (the crash between the two
/// renames) is finished at the next open: the compacted copy is the store.
#[test]
fn an_interrupted_swap_is_finished_at_the_next_open() {
    use vitalgate::store::compact;
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("outbox");
    {
        let o = open(&dir);
        o.insert(id(1), &sample(1)).unwrap();
        o.insert(id(2), &sample(2)).unwrap();
        o.ack(&[id(1)]).unwrap();
    }
    // Build the copy as a compaction would, then "crash" between the renames.
    let built = compact::sibling_for_test(&dir, ".compacted");
    let old = compact::sibling_for_test(&dir, ".precompact");
    {
        let o = open(&dir);
        o.compact().unwrap();
    }
    copy_dir_all(&dir, &built);
    std::fs::rename(&dir, &old).unwrap();
    let o = open(&dir);
    assert_eq!(pending_ns(&o), vec![2]);
    assert_eq!(o.insert(id(1), &sample(1)).unwrap(), Insert::Duplicate);
    assert!(!built.exists() && !old.exists());
}

fn copy_dir_all(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir_all(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).unwrap();
        }
    }
}
