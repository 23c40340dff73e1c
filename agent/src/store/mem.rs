//! [`MemStore`]: the [`Store`] in memory, for model tests of the pipeline task and the
//! uploader (thousands of cases a second, where the sled store manages a few dozen).
//!
//! Same semantics as the sled store through the trait (FIFO by sequence number; dedup by id
//! while pending or tombstoned; one record per upstream identity, a second id under a held
//! identity kept as an `identifier_collision` dead letter; a record whose postcard encoding
//! exceeds [`MAX_PAYLOAD_LEN`] kept as a truncated `record_too_large` dead letter; `ack`
//! counts the ids that were pending; `dead_letter` of an id not pending is
//! [`StoreError::NotPending`]; counters since open reset by a reopen), checked by the
//! conformance test below against [`super::Outbox`] on the same operation sequences.
//!
//! What it does not model: encryption, quarantine (nothing is ever corrupt here), the
//! durability bound (`durable_upto`: every write is durable at once), tombstone expiry, and
//! the exact byte figures ([`Store::held_bytes`] is an estimate of the same shape: the
//! records' encoded sizes plus a fixed overhead each).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::SystemTime;

use crate::reading::Reading;

use super::backend::Store;
use super::{
    DeadLetterInfo, DeadReason, Insert, NewRecord, PendingRecord, Stats, StoreError,
    MAX_PAYLOAD_LEN,
};

/// Bytes counted per pending record beyond its encoded reading (sequence number, index entry).
const PENDING_OVERHEAD: u64 = 8 + 32 + 8;
/// Bytes counted per dead letter beyond its payload.
const DEAD_OVERHEAD: u64 = 8 + 64;

/// The outbox in memory (see the module doc).
pub struct MemStore {
    state: Mutex<State>,
}

#[derive(Clone, Default)]
struct Durable {
    /// The last sequence number given out (pending and dead letters share the sequence).
    seq: u64,
    pending: BTreeMap<u64, PendingRecord<Reading>>,
    /// Reading id → pending sequence number.
    index: HashMap<[u8; 32], u64>,
    /// Acked or dead-lettered ids: a redelivery is a duplicate.
    tombstones: HashSet<[u8; 32]>,
    /// Upstream identity → the id of the record that holds it (kept after an ack, as the sled
    /// store keeps it until tombstones expire).
    idents: HashMap<String, [u8; 32]>,
    /// Upstream delivery → the id of the record made from it (NewRecord::delivery).
    deliveries: HashMap<String, [u8; 32]>,
    dead: BTreeMap<u64, DeadLetterInfo>,
    purged: u64,
}

#[derive(Default)]
struct State {
    data: Durable,
    open: bool,
    inserts: u64,
    duplicates: u64,
    /// The injected fault's cause (a full disk) is present.
    cause: bool,
    /// A call failed since the last reopen: every call fails until a reopen.
    failed: bool,
}

fn unavailable() -> StoreError {
    StoreError::Unavailable {
        path: PathBuf::from("<memory>"),
    }
}

fn enospc() -> StoreError {
    StoreError::Io {
        path: PathBuf::from("<memory>/db"),
        source: std::io::Error::other("injected: No space left on device"),
    }
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref());
    out
}

fn truncate_str(s: &str, max: usize) -> String {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

fn encoded_len(r: &Reading) -> Result<Vec<u8>, StoreError> {
    postcard::to_stdvec(r).map_err(StoreError::Encode)
}

impl Default for MemStore {
    fn default() -> Self {
        MemStore::new()
    }
}

impl MemStore {
    /// An empty, open store.
    pub fn new() -> MemStore {
        MemStore {
            state: Mutex::new(State {
                open: true,
                ..State::default()
            }),
        }
    }

    /// What a process restart finds: a new store holding this one's records (pending, dead
    /// letters, tombstones, identities, the sequence), with fresh counters and no fault.
    pub fn restarted(&self) -> MemStore {
        let data = self.lock().data.clone();
        MemStore {
            state: Mutex::new(State {
                data,
                open: true,
                ..State::default()
            }),
        }
    }

    /// The disk fails (`true`) or its cause clears (`false`): while the cause is present every
    /// call fails with an I/O error, the store stays failed until reopened after it clears, and
    /// a reopen fails while it is present (as the sled store behind `Outbox` after an I/O error).
    pub fn set_io_fault(&self, cause_present: bool) {
        self.lock().cause = cause_present;
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The state, if a call may proceed (open, no fault): as `Outbox::core`.
    fn usable(&self) -> Result<MutexGuard<'_, State>, StoreError> {
        let mut st = self.lock();
        if !st.open {
            return Err(unavailable());
        }
        if st.cause {
            st.failed = true;
        }
        if st.failed {
            return Err(enospc());
        }
        Ok(st)
    }
}

impl Durable {
    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    fn held(&self) -> u64 {
        let pending: u64 = self
            .pending
            .values()
            .map(|p| encoded_len(&p.value).map_or(0, |v| v.len() as u64) + PENDING_OVERHEAD)
            .sum();
        let dead: u64 = self
            .dead
            .values()
            .map(|d| d.size.min(MAX_PAYLOAD_LEN as u64) + DEAD_OVERHEAD)
            .sum();
        pending + dead
    }

    fn put_dead(&mut self, info: DeadLetterInfo) -> u64 {
        let seq = info.seq;
        self.dead.insert(seq, info);
        seq
    }
}

impl Store for MemStore {
    fn insert_readings(
        &self,
        records: &[NewRecord<'_, Reading>],
    ) -> Result<Vec<Insert>, StoreError> {
        let mut st = self.usable()?;
        // All or nothing: encode first (the only step that can fail), then apply.
        let encoded = records
            .iter()
            .map(|r| encoded_len(r.value))
            .collect::<Result<Vec<_>, _>>()?;
        let now = SystemTime::now();
        let mut data = st.data.clone();
        let mut outcomes = Vec::with_capacity(records.len());
        for (r, payload) in records.iter().zip(&encoded) {
            if data.index.contains_key(&r.id) || data.tombstones.contains(&r.id) {
                outcomes.push(Insert::Duplicate);
                continue;
            }
            // The same upstream delivery made into another reading (NewRecord::delivery).
            if r.delivery
                .and_then(|d| data.deliveries.get(d))
                .is_some_and(|holder| *holder != r.id)
            {
                outcomes.push(Insert::Duplicate);
                continue;
            }
            if let Some(d) = r.delivery {
                data.deliveries.insert(d.to_owned(), r.id);
            }
            let too_large = payload.len() > MAX_PAYLOAD_LEN;
            let collides = r
                .identity
                .and_then(|i| data.idents.get(i))
                .is_some_and(|holder| *holder != r.id);
            let dead_reason = if too_large {
                Some(DeadReason::TooLarge)
            } else if collides {
                Some(DeadReason::IdentifierCollision)
            } else {
                None
            };
            let seq = data.next_seq();
            match dead_reason {
                Some(reason) => {
                    data.put_dead(DeadLetterInfo {
                        seq,
                        time: now,
                        source: "pipeline".to_owned(),
                        reason: reason.as_str().to_owned(),
                        id: Some(r.id),
                        size: payload.len() as u64,
                        sha256: sha256(payload),
                        truncated: too_large,
                    });
                    data.tombstones.insert(r.id);
                    outcomes.push(Insert::DeadLettered { seq, reason });
                }
                None => {
                    data.pending.insert(
                        seq,
                        PendingRecord {
                            seq,
                            id: r.id,
                            enqueued_at: now,
                            value: r.value.clone(),
                        },
                    );
                    data.index.insert(r.id, seq);
                    if let Some(identity) = r.identity {
                        data.idents.insert(identity.to_owned(), r.id);
                    }
                    outcomes.push(Insert::Stored);
                }
            }
        }
        st.data = data;
        let count = |want: fn(&Insert) -> bool| outcomes.iter().filter(|o| want(o)).count();
        st.inserts += count(|o| *o == Insert::Stored) as u64;
        st.duplicates += count(|o| *o == Insert::Duplicate) as u64;
        Ok(outcomes)
    }

    fn put_dead_letter_raw(
        &self,
        source: &str,
        payload: &[u8],
        reason: &str,
    ) -> Result<u64, StoreError> {
        let mut st = self.usable()?;
        let seq = st.data.next_seq();
        Ok(st.data.put_dead(DeadLetterInfo {
            seq,
            time: SystemTime::now(),
            source: truncate_str(source, 256),
            reason: truncate_str(reason, 1024),
            id: None,
            size: payload.len() as u64,
            sha256: sha256(payload),
            truncated: payload.len() > MAX_PAYLOAD_LEN,
        }))
    }

    fn pending_readings(
        &self,
        limit: usize,
        skip: &HashSet<u64>,
        keep: &mut dyn FnMut(&Reading) -> bool,
    ) -> Result<(Vec<PendingRecord<Reading>>, usize), StoreError> {
        // A snapshot, so `keep` runs without the lock (it may be slow, or call back).
        let records: Vec<PendingRecord<Reading>> = {
            let st = self.usable()?;
            if limit == 0 {
                return Ok((Vec::new(), 0));
            }
            st.data
                .pending
                .values()
                .filter(|p| !skip.contains(&p.seq))
                .cloned()
                .collect()
        };
        let (mut out, mut refused) = (Vec::new(), 0);
        for record in records {
            if !keep(&record.value) {
                refused += 1;
                continue;
            }
            out.push(record);
            if out.len() >= limit {
                break;
            }
        }
        Ok((out, refused))
    }

    fn ack(&self, ids: &[[u8; 32]]) -> Result<usize, StoreError> {
        let mut st = self.usable()?;
        let mut removed = 0;
        for id in ids {
            if let Some(seq) = st.data.index.remove(id) {
                st.data.pending.remove(&seq);
                st.data.tombstones.insert(*id);
                removed += 1;
            }
        }
        Ok(removed)
    }

    fn ack_read(&self, read: &[([u8; 32], u64)]) -> Result<usize, StoreError> {
        let mut st = self.usable()?;
        let mut removed = 0;
        for (id, seq) in read {
            if st.data.index.get(id) == Some(seq) {
                st.data.index.remove(id);
                st.data.pending.remove(seq);
                st.data.tombstones.insert(*id);
                removed += 1;
            }
        }
        Ok(removed)
    }

    fn dead_letter(&self, id: &[u8; 32], reason: &str) -> Result<(), StoreError> {
        let mut st = self.usable()?;
        let Some(&seq) = st.data.index.get(id) else {
            return Err(StoreError::NotPending);
        };
        let Some(record) = st.data.pending.get(&seq) else {
            return Err(StoreError::NotPending);
        };
        let payload = encoded_len(&record.value)?;
        let dead_seq = st.data.next_seq();
        st.data.pending.remove(&seq);
        st.data.index.remove(id);
        st.data.tombstones.insert(*id);
        st.data.put_dead(DeadLetterInfo {
            seq: dead_seq,
            time: SystemTime::now(),
            source: "outbox".to_owned(),
            reason: reason.to_owned(),
            id: Some(*id),
            size: payload.len() as u64,
            sha256: sha256(&payload),
            truncated: false,
        });
        Ok(())
    }

    fn dead_letters(&self) -> Result<Vec<DeadLetterInfo>, StoreError> {
        Ok(self.usable()?.data.dead.values().cloned().collect())
    }

    fn stats(&self) -> Result<Stats, StoreError> {
        let st = self.usable()?;
        Ok(Stats {
            pending: st.data.pending.len() as u64,
            dead: st.data.dead.len() as u64,
            quarantined: 0,
            acked_tombstones: st.data.tombstones.len() as u64,
            inserts: st.inserts,
            duplicates: st.duplicates,
            corrupt_records: 0,
            purged: st.data.purged,
        })
    }

    fn held_bytes(&self) -> u64 {
        self.lock().data.held()
    }

    fn recount_held_bytes(&self) -> Result<u64, StoreError> {
        Ok(self.usable()?.data.held())
    }

    fn disk_bytes(&self) -> Result<u64, StoreError> {
        Ok(self.usable()?.data.held())
    }

    fn disk_available_bytes(&self) -> Result<u64, StoreError> {
        self.usable().map(|_| u64::MAX / 2)
    }

    fn reopen(&self) -> Result<(), StoreError> {
        let mut st = self.lock();
        st.open = false;
        if st.cause {
            return Err(enospc());
        }
        st.failed = false;
        st.open = true;
        st.inserts = 0;
        st.duplicates = 0;
        Ok(())
    }

    fn probe_write(&self) -> Result<(), StoreError> {
        self.usable().map(|_| ())
    }

    fn is_open(&self) -> bool {
        self.lock().open
    }

    #[cfg(test)]
    fn inject_io_fault(&self, cause_present: bool) {
        self.set_io_fault(cause_present);
    }
}

#[cfg(test)]
mod tests {
    //! Conformance: the same random operation sequences against the sled [`super::super::Outbox`]
    //! (a real directory) and [`MemStore`]; every answer and, after every step, the pending
    //! readings, the counts and the dead letters must be the same. Sequence numbers are not
    //! compared (sled's come from `generate_id`), only their order.
    use super::*;
    use crate::store::{Outbox, OutboxOptions, StoreKey};
    use crate::uplink::fhir::tests::{bp, test_id};
    use proptest::prelude::*;
    use std::sync::Arc;

    #[derive(Debug, Clone, Copy)]
    enum Ident {
        /// `obs-<n>`: its own identifier.
        Own,
        /// `obs-<k>`: another reading's identifier (a collision while `k` holds it).
        Of(u8),
        /// An identifier so long the record is too large for the format.
        Huge,
    }

    #[derive(Debug, Clone)]
    enum Op {
        /// Readings by id and identifier, each with an upstream delivery `d<k>` or none (a
        /// delivery held by another id makes a duplicate).
        Insert(Vec<(u8, Ident, Option<u8>)>),
        /// Read with this limit, passing over the records at these positions (of the full
        /// pending list), keeping ids not divisible by `refuse_mod` (0: keep all).
        Pending {
            limit: usize,
            skip: Vec<usize>,
            refuse_mod: u8,
        },
        Ack(Vec<u8>),
        /// `ack_read` of readings by id, each with its own pending record's sequence number
        /// (`None`) or that of the pending record at a position (`Some`: often another
        /// reading's, which must ack nothing).
        AckRead(Vec<(u8, Option<usize>)>),
        DeadLetter(u8),
        Raw(usize),
        Reopen,
        /// The disk fails: one insert is refused, a reopen fails, the cause clears, a reopen.
        Fault(u8),
    }

    fn op() -> impl Strategy<Value = Op> {
        let id = 0u8..10;
        let ident = prop_oneof![
            6 => Just(Ident::Own),
            2 => (0u8..10).prop_map(Ident::Of),
            1 => Just(Ident::Huge),
        ];
        prop_oneof![
            5 => proptest::collection::vec(
                (id.clone(), ident, proptest::option::of(0u8..4)),
                1..5
            )
            .prop_map(Op::Insert),
            2 => (0usize..6, proptest::collection::vec(0usize..6, 0..3), 0u8..4)
                .prop_map(|(limit, skip, refuse_mod)| Op::Pending { limit, skip, refuse_mod }),
            3 => proptest::collection::vec(id.clone(), 1..4).prop_map(Op::Ack),
            3 => proptest::collection::vec((id.clone(), proptest::option::of(0usize..6)), 1..4)
                .prop_map(Op::AckRead),
            2 => id.clone().prop_map(Op::DeadLetter),
            1 => prop_oneof![Just(10usize), Just(MAX_PAYLOAD_LEN + 1)].prop_map(Op::Raw),
            1 => Just(Op::Reopen),
            1 => id.prop_map(Op::Fault),
        ]
    }

    fn reading(n: u8, ident: Ident) -> Reading {
        let mut r = bp();
        // Distinct content for a distinct id: an `Of` reading is another reading.
        let content = match ident {
            Ident::Own => i64::from(n),
            Ident::Of(k) => 1000 + i64::from(n) * 16 + i64::from(k),
            Ident::Huge => 5000 + i64::from(n),
        };
        r.id = test_id(content);
        r.observation_identifier = match ident {
            Ident::Own => format!("obs-{n}"),
            Ident::Of(k) => format!("obs-{k}"),
            Ident::Huge => format!("obs-{n}-{}", "x".repeat(MAX_PAYLOAD_LEN)),
        };
        r
    }

    /// What is compared of a result: the value, or the kind of error.
    fn kind<T>(r: &Result<T, StoreError>) -> Result<(), &'static str> {
        match r {
            Ok(_) => Ok(()),
            Err(StoreError::NotPending) => Err("not pending"),
            Err(StoreError::Unavailable { .. }) => Err("unavailable"),
            Err(e) if e.needs_reopen() => Err("store failure"),
            Err(_) => Err("other"),
        }
    }

    fn normal(outcomes: Vec<Insert>) -> Vec<Insert> {
        outcomes
            .into_iter()
            .map(|o| match o {
                Insert::DeadLettered { reason, .. } => Insert::DeadLettered { seq: 0, reason },
                o => o,
            })
            .collect()
    }

    /// A dead letter as compared: source, reason, id, size, SHA-256, truncated.
    type DeadView = (String, String, Option<[u8; 32]>, u64, [u8; 32], bool);

    /// Everything observable through the trait, sequence numbers aside.
    #[derive(Debug, PartialEq)]
    struct View {
        pending: Vec<([u8; 32], String)>,
        stats: Stats,
        dead: Vec<DeadView>,
        holds_nothing: bool,
    }

    fn view(s: &dyn Store) -> View {
        let (pending, refused) = s
            .pending_readings(usize::MAX, &HashSet::new(), &mut |_| true)
            .unwrap();
        assert_eq!(refused, 0);
        let mut dead = s.dead_letters().unwrap();
        dead.sort_by_key(|d| d.seq);
        let stats = s.stats().unwrap();
        View {
            pending: pending
                .into_iter()
                .map(|p| (p.id, p.value.observation_identifier))
                .collect(),
            holds_nothing: s.recount_held_bytes().unwrap() == 0,
            stats,
            dead: dead
                .into_iter()
                .map(|d| (d.source, d.reason, d.id, d.size, d.sha256, d.truncated))
                .collect(),
        }
    }

    /// Runs `op` on `s`; returns its answer in a comparable form.
    fn apply(s: &dyn Store, op: &Op) -> String {
        match op {
            Op::Insert(items) => {
                let readings: Vec<Reading> = items.iter().map(|&(n, i, _)| reading(n, i)).collect();
                let deliveries: Vec<Option<String>> = items
                    .iter()
                    .map(|&(_, _, d)| d.map(|k| format!("d{k}")))
                    .collect();
                let records: Vec<NewRecord<'_, Reading>> = readings
                    .iter()
                    .zip(&deliveries)
                    .map(|(r, d)| r.as_delivered_record(d.as_deref()))
                    .collect();
                format!("{:?}", s.insert_readings(&records).map(normal))
            }
            Op::Pending {
                limit,
                skip,
                refuse_mod,
            } => {
                let (all, _) = s
                    .pending_readings(usize::MAX, &HashSet::new(), &mut |_| true)
                    .unwrap();
                let skip: HashSet<u64> = skip
                    .iter()
                    .filter_map(|&i| all.get(i).map(|p| p.seq))
                    .collect();
                let mut keep =
                    |r: &Reading| *refuse_mod == 0 || r.id.as_bytes()[31] % refuse_mod != 0;
                let got = s
                    .pending_readings(*limit, &skip, &mut keep)
                    .map(|(rs, refused)| {
                        (rs.into_iter().map(|p| p.id).collect::<Vec<_>>(), refused)
                    });
                format!("{got:?}")
            }
            Op::Ack(ns) => {
                let ids: Vec<[u8; 32]> = ns
                    .iter()
                    .map(|&n| *reading(n, Ident::Own).id.as_bytes())
                    .collect();
                let r = s.ack(&ids);
                format!("{:?} {:?}", kind(&r), r.ok())
            }
            Op::AckRead(picks) => {
                let (all, _) = s
                    .pending_readings(usize::MAX, &HashSet::new(), &mut |_| true)
                    .unwrap();
                let read: Vec<([u8; 32], u64)> = picks
                    .iter()
                    .map(|&(n, at)| {
                        let id = *reading(n, Ident::Own).id.as_bytes();
                        let seq = match at {
                            None => all.iter().find(|p| p.id == id).map(|p| p.seq),
                            Some(i) => all.get(i).map(|p| p.seq),
                        };
                        // A sequence number no record has: acks nothing.
                        (id, seq.unwrap_or(u64::MAX))
                    })
                    .collect();
                let r = s.ack_read(&read);
                format!("{:?} {:?}", kind(&r), r.ok())
            }
            Op::DeadLetter(n) => {
                let r = s.dead_letter(reading(*n, Ident::Own).id.as_bytes(), "conformance");
                format!("{:?}", kind(&r))
            }
            Op::Raw(len) => {
                let r = s.put_dead_letter_raw("mqtt:test", &vec![7u8; *len], "unknown schema");
                format!("{:?}", kind(&r))
            }
            Op::Reopen => format!("{:?}", kind(&s.reopen())),
            Op::Fault(n) => {
                s.inject_io_fault(true);
                let r = reading(*n, Ident::Own);
                let insert = s.insert_readings(&[r.as_record()]);
                let reopen = s.reopen();
                let closed = (s.is_open(), kind(&s.stats()));
                s.inject_io_fault(false);
                let after = kind(&s.stats());
                let reopened = kind(&s.reopen());
                format!(
                    "{:?} {:?} {closed:?} {after:?} {reopened:?} {}",
                    kind(&insert),
                    kind(&reopen),
                    s.probe_write().is_ok()
                )
            }
        }
    }

    fn sled(dir: &tempfile::TempDir) -> Arc<dyn Store> {
        Arc::new(
            Outbox::open(
                dir.path(),
                StoreKey::from_bytes([4; 32]),
                OutboxOptions::default(),
            )
            .unwrap(),
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            // PROPTEST_CASES when set (cross/test.sh lowers it under qemu).
            cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(40),
            ..ProptestConfig::default()
        })]
        /// MemStore cannot drift from the sled store's semantics: same answers, same state.
        #[test]
        fn conformance_memstore_answers_as_the_sled_outbox_does(
            ops in proptest::collection::vec(op(), 1..30)
        ) {
            let dir = tempfile::tempdir().unwrap();
            let disk = sled(&dir);
            let mem: Arc<dyn Store> = Arc::new(MemStore::new());
            for (step, op) in ops.iter().enumerate() {
                let want = apply(&*disk, op);
                let got = apply(&*mem, op);
                prop_assert_eq!(&got, &want, "step {} {:?}", step, op);
                prop_assert_eq!(view(&*mem), view(&*disk), "after step {} {:?}", step, op);
            }
        }
    }

    /// A restart of the memory store keeps what a restart of the sled store keeps.
    #[test]
    fn a_restarted_memstore_holds_the_records_and_refuses_their_redelivery() {
        let mem = MemStore::new();
        let a = reading(1, Ident::Own);
        let b = reading(2, Ident::Own);
        let collide = reading(3, Ident::Of(1));
        assert_eq!(
            mem.insert_readings(&[a.as_record(), b.as_record()])
                .unwrap(),
            [Insert::Stored, Insert::Stored]
        );
        assert_eq!(mem.ack(&[*a.id.as_bytes()]).unwrap(), 1);
        let again = mem.restarted();
        let outcomes = normal(
            again
                .insert_readings(&[a.as_record(), b.as_record(), collide.as_record()])
                .unwrap(),
        );
        assert_eq!(
            outcomes,
            [
                Insert::Duplicate,
                Insert::Duplicate,
                Insert::DeadLettered {
                    seq: 0,
                    reason: DeadReason::IdentifierCollision
                }
            ]
        );
        let stats = again.stats().unwrap();
        assert_eq!(
            (stats.pending, stats.dead, stats.inserts, stats.duplicates),
            (1, 1, 0, 2)
        );
    }
}
