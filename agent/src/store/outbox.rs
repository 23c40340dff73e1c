//! The outbox proper: sled trees, transactions and the flush-and-fsync that makes an `Ok` mean
//! durable. The record format and its invariants are documented in [`crate::store`].
//!
//! All methods are blocking; call them from `tokio::task::spawn_blocking`. An `Outbox` is
//! `Send + Sync` and may be shared (`Arc`) between threads.

use std::collections::{HashMap, HashSet};
use std::fs::{DirBuilder, File};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ring::digest;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sled::transaction::{abort, ConflictableTransactionResult, TransactionResult};
use sled::Transactional;

use super::codec::{KeySet, RecordCipher, BINDING_LEN};
use super::keyfile::StoreKey;
use super::keyring::{Alg, Keyring, KEYRING_FILE};
use super::{StoreError, FORMAT_VERSION, UPGRADABLE_FORMATS};
use crate::telemetry;

/// Largest encoded payload (postcard of `T`, or a raw dead-letter payload) stored in one record.
///
/// Keeps every sled leaf node (sled 0.34 splits leaves above 16 entries; ~30 at most during
/// merges) under the 128 KiB at which sled moves a node out of its log into a blob file, which
/// sled never fsyncs (we do, see invariant 5, but would rather not depend on it). A reading
/// encodes to well under 1 KiB. Raw dead-letter payloads above this are truncated, keeping
/// their length and SHA-256.
pub const MAX_PAYLOAD_LEN: usize = 4 * 1024;

/// Tree names (part of the on-disk format, see [`crate::store`]).
pub const TREE_META: &str = "meta";
pub const TREE_PENDING: &str = "pending";
pub const TREE_INDEX: &str = "index";
pub const TREE_ACKED: &str = "acked";
pub const TREE_DEAD: &str = "dead";
pub const TREE_QUARANTINE: &str = "quarantine";
pub const TREE_IDENTS: &str = "idents";
/// Pending readings written to an export file (`vitalgate export`), awaiting confirmation.
pub const TREE_EXPORTED: &str = "exported";
/// One sealed record per export file: what `vitalgate export confirm` needs to check a receipt.
pub const TREE_EXPORTS: &str = "exports";

const META_FORMAT: &[u8] = b"format";
/// How many pending records were purged over the store's life: u64 big-endian.
const META_PURGED: &[u8] = b"purged";
const META_KEY_CHECK: &[u8] = b"key_check";
/// Written by [`SledOutbox::probe_write`]; holds the time of the last probe, nothing else.
const META_PROBE: &[u8] = b"write_probe";
const KEY_CHECK_PLAINTEXT: &[u8] = b"vitalgate-store key check v1";
/// A copy of `<dir>/keyring` (see [`super::keyring`]), used if the file is lost or damaged.
const META_KEYRING: &[u8] = b"keyring";
/// Added to every sled id of this database (u64 big-endian; absent = 0). A compacted store is
/// a fresh sled database whose own ids start again at 0: its base is the next id of the store
/// it was copied from, so sequence numbers and nonces keep growing ([`super::compact`]).
pub(crate) const META_ID_BASE: &[u8] = b"id_base";

/// Tuning for [`Outbox::open`].
#[derive(Clone, Debug)]
pub struct OutboxOptions {
    /// sled page cache size in bytes. Default 16 MiB: the outbox is read sequentially and
    /// rarely, and the gateway has little RAM to spare (sled's default is 1 GiB).
    pub cache_capacity: u64,
    /// How long an acked or dead-lettered id keeps being recognised as a duplicate. Must exceed
    /// the longest time an upstream (MQTT broker session, device memory) may redeliver a reading
    /// it already delivered. Default 30 days.
    pub tombstone_retention: Duration,
    /// How long [`Outbox::open`] waits for the store's lock (sled's `flock` on `<dir>/db`)
    /// before giving up with [`StoreError::Locked`]. sled's background threads keep the file,
    /// and its lock, a moment after a `Db` is dropped, so a reopen right after a drop can find it
    /// locked. Default 5 s.
    pub lock_wait: Duration,
    /// The algorithm of the data key a new store's keyring starts with. Default
    /// ChaCha20-Poly1305.
    pub cipher: Alg,
}

impl Default for OutboxOptions {
    fn default() -> Self {
        OutboxOptions {
            cache_capacity: 16 * 1024 * 1024,
            tombstone_retention: Duration::from_secs(30 * 24 * 3600),
            lock_wait: Duration::from_secs(5),
            cipher: Alg::ChaCha20Poly1305,
        }
    }
}

/// What [`Outbox::insert`] did. Every outcome is durable: acknowledge upstream in each case.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Insert {
    Stored,
    /// The id is pending, or was acked or dead-lettered within the tombstone retention.
    Duplicate,
    /// Kept, but as a dead letter (`seq` in the dead-letter tree), never uploaded: see
    /// [`DeadReason`]. Its id became a tombstone, so a redelivery is a [`Insert::Duplicate`].
    DeadLettered {
        seq: u64,
        reason: DeadReason,
    },
}

/// Why [`Outbox::insert_records`] kept a record as a dead letter instead of pending.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeadReason {
    /// Another record with a different id (different content) already holds the same identity
    /// (FHIR Observation identifier): uploading both would make the server merge them.
    IdentifierCollision,
    /// The record encodes to more than [`MAX_PAYLOAD_LEN`]; its first bytes, length and SHA-256
    /// are kept.
    TooLarge,
}

impl DeadReason {
    /// The reason code written into the dead letter (and shown by `vitalgate dead-letters`).
    pub fn as_str(self) -> &'static str {
        match self {
            DeadReason::IdentifierCollision => "identifier_collision",
            DeadReason::TooLarge => "record_too_large",
        }
    }
}

/// What [`Outbox::requeue_dead_letter`] did. Either way the dead letter is gone and the reading
/// is pending exactly once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Requeue {
    /// Pending again under its original id (at the back of the FIFO, as pending seq `seq`).
    Requeued { seq: u64 },
    /// The reading was already pending (redelivered meanwhile, or a second dead letter of the
    /// same reading): nothing stored twice.
    AlreadyPending,
}

/// Why a dead letter cannot go back to the outbox as it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NotRequeueable {
    /// A payload that never became a reading (undecodable, unknown schema): it has no reading
    /// id and nothing to upload.
    Raw,
    /// Kept because another reading holds its FHIR identifier: requeued, it would be acked as
    /// "already exists" under the other reading's Observation and vanish.
    IdentifierCollision,
    /// Only the first bytes were kept (the record was too large for the format).
    TooLarge,
    /// The payload does not decode as a reading of this build.
    Undecodable,
    /// Meanwhile another reading took its FHIR identifier: a collision now.
    IdentityTaken,
}

impl NotRequeueable {
    /// One line for a technician.
    pub fn explain(self) -> &'static str {
        match self {
            NotRequeueable::Raw => {
                "it is a payload that was never a reading (no reading id); `--show` prints it"
            }
            NotRequeueable::IdentifierCollision => {
                "another reading holds its FHIR identifier (identifier_collision): requeued, the server would take it for the other reading and it would be lost; resolve the collision at the source"
            }
            NotRequeueable::TooLarge => {
                "only its first bytes were kept (record_too_large)"
            }
            NotRequeueable::Undecodable => "its payload is not a reading this version can read",
            NotRequeueable::IdentityTaken => {
                "another pending or uploaded reading now holds its FHIR identifier"
            }
        }
    }
}

/// What [`Outbox::requeue_all_dead_letters`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RequeueSummary {
    /// Dead-letter seqs whose reading is pending again.
    pub requeued: Vec<u64>,
    /// Dead-letter seqs removed because their reading was already pending.
    pub already_pending: Vec<u64>,
    /// Dead letters left where they are, and why.
    pub skipped: Vec<(u64, NotRequeueable)>,
}

/// One record for [`Outbox::insert_records`].
#[derive(Clone, Copy, Debug)]
pub struct NewRecord<'a, T> {
    /// Content id: the dedup key.
    pub id: [u8; 32],
    /// The identity the record will have upstream (the FHIR Observation identifier), if any:
    /// two records with one identity and different ids are a collision.
    pub identity: Option<&'a str>,
    /// The upstream delivery the record came from, if the source can be redelivered (an MQTT
    /// message: its topic and payload digest and the reading's place in it). A record with
    /// another id from a delivery already kept is that delivery again, made into a different
    /// reading because the configuration changed in between (a device rebound to another
    /// patient, then a restart or a crash before the broker had the acknowledgement): it is a
    /// [`Insert::Duplicate`], kept once, under the binding it first arrived under.
    pub delivery: Option<&'a str>,
    pub value: &'a T,
}

/// One record waiting for upload, in FIFO order.
#[derive(Clone, Debug, PartialEq)]
pub struct PendingRecord<T> {
    pub seq: u64,
    pub id: [u8; 32],
    pub enqueued_at: SystemTime,
    pub value: T,
}

/// A dead letter as listed for a technician: everything but the payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeadLetterInfo {
    pub seq: u64,
    pub time: SystemTime,
    /// `"outbox"` for a record the server rejected, else the label given to
    /// [`Outbox::put_dead_letter_raw`] (e.g. the MQTT topic filter).
    pub source: String,
    pub reason: String,
    /// The reading id, for a record that came from `pending`.
    pub id: Option<[u8; 32]>,
    /// Size of the payload as received.
    pub size: u64,
    /// SHA-256 of the payload as received (lets a technician match a truncated record).
    pub sha256: [u8; 32],
    /// The payload was longer than [`MAX_PAYLOAD_LEN`] and only its first bytes were kept.
    pub truncated: bool,
}

impl std::fmt::Display for DeadLetterInfo {
    /// One line for `vitalgate dead-letters`: no payload, no PHI beyond the reason text.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let secs = self
            .time
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let when = chrono::DateTime::from_timestamp(i64::try_from(secs).unwrap_or(0), 0)
            .map(|t| t.to_rfc3339())
            .unwrap_or_default();
        write!(
            f,
            "seq={} time={} source={} bytes={}{} reason={}",
            self.seq,
            when,
            self.source,
            self.size,
            if self.truncated { " (truncated)" } else { "" },
            self.reason
        )
    }
}

/// Counts for metrics and `vitalgate status`. Tree sizes are counted on call (O(n)).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub pending: u64,
    pub dead: u64,
    pub quarantined: u64,
    pub acked_tombstones: u64,
    /// Since open: records stored, duplicates refused, records quarantined.
    pub inserts: u64,
    pub duplicates: u64,
    pub corrupt_records: u64,
    /// Pending records removed by [`SledOutbox::purge_pending_where`] over the store's life
    /// (persistent, `meta/purged`).
    pub purged: u64,
}

/// The encrypted outbox on one open sled database. See [`crate::store`] for the format and
/// invariants. The daemon uses it through [`super::Outbox`], which can reopen it after an I/O
/// error (sled stays in its error state until reopened).
pub struct SledOutbox {
    dir: PathBuf,
    db: sled::Db,
    /// Our own handle on `<dir>/db`, for `fdatasync` after sled's flush.
    db_file: File,
    meta: sled::Tree,
    pending: sled::Tree,
    index: sled::Tree,
    acked: sled::Tree,
    dead: sled::Tree,
    quarantine: sled::Tree,
    idents: sled::Tree,
    /// The store key (the KEK): reloads of the keyring unwrap with it.
    kek: StoreKey,
    /// The data keys and the legacy cipher; replaced when the keyring changes.
    keys: RwLock<Arc<KeySet>>,
    exported: sled::Tree,
    exports: sled::Tree,
    opts: OutboxOptions,
    /// Blob files already fsynced, with the length synced (a blob may be mid-write).
    synced_blobs: Mutex<HashMap<std::ffi::OsString, u64>>,
    inserts: AtomicU64,
    duplicates: AtomicU64,
    corrupt_records: AtomicU64,
    /// Bytes of records held (see [`Outbox::held_bytes`]): counted exactly at open and by
    /// [`Outbox::recount_held_bytes`], kept up to date in between by the hot paths.
    held: AtomicU64,
    /// The highest pending sequence number whose record is in the tree (written, not
    /// necessarily durable yet).
    written_upto: AtomicU64,
    /// Every pending record up to this sequence number is durable: reads
    /// ([`Outbox::pending_where`]) return none above it. After a failed flush sled still shows
    /// the records it could not make durable; without this bound the uploader could read them
    /// during the fault and send readings whose source was never acknowledged. Sequence numbers
    /// grow (sled's `generate_id`, across restarts too), and the store has one writer at a time
    /// (the pipeline's group commit; requeue runs with the daemon stopped), so "written before
    /// the flush started" covers every record up to the mark.
    durable_upto: AtomicU64,
    /// `meta/id_base`: added to every sled id ([`SledOutbox::next_id`]).
    id_base: u64,
    /// Test only: the next flushes fail, as a full disk's would.
    #[cfg(test)]
    fail_flush: std::sync::atomic::AtomicBool,
}

/// sled cache of a compaction's copy.
const COPY_CACHE: u64 = 2 << 20;

/// What [`SledOutbox::copy_into`] copied.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CopyReport {
    /// Entries copied, every tree.
    pub entries: u64,
    /// Bytes of their keys and values.
    pub bytes: u64,
    /// Bytes the copy takes on disk (allocated blocks).
    pub disk_bytes: u64,
}

#[derive(Serialize, Deserialize)]
struct PendingEnvelope {
    id: [u8; 32],
    enqueued_at_ms: u64,
    payload: Vec<u8>,
}

#[derive(Serialize, Deserialize)]
struct DeadEnvelope {
    time_ms: u64,
    source: String,
    reason: String,
    id: Option<[u8; 32]>,
    original_len: u64,
    payload_sha256: [u8; 32],
    truncated: bool,
    payload: Vec<u8>,
}

impl SledOutbox {
    /// Opens (or creates) the store in `dir`, checks the key and format, and prunes expired
    /// tombstones.
    ///
    /// sled runs in `Mode::LowSpace`: the outbox grows during an outage and shrinks after it,
    /// and on a small SD card giving that space back matters more than write throughput, which
    /// at a few readings a minute is bounded by fsync, not by sled.
    ///
    /// # Errors
    ///
    /// [`StoreError::WrongKey`] if the store was created with another key;
    /// [`StoreError::UnsupportedFormat`] for another format version or a non-empty directory
    /// without one; [`StoreError::Sled`] / [`StoreError::Io`] if sled cannot open its files (it
    /// also refuses a store another process has open).
    pub fn open(dir: &Path, key: StoreKey, opts: OutboxOptions) -> Result<SledOutbox, StoreError> {
        let io_err = |path: &Path| {
            let path = path.to_owned();
            move |source| StoreError::Io { path, source }
        };
        let recovered = super::compact::recover(dir)
            .map_err(|(path, source)| StoreError::Io { path, source })?;
        if recovered != super::compact::Recovered::Nothing {
            tracing::warn!(
                store = %dir.display(),
                ?recovered,
                "store compaction had been interrupted; completed or undone"
            );
        }
        let created = !dir.exists();
        if created {
            DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(io_err(dir))?;
        }
        wait_for_lock(&dir.join("db"), opts.lock_wait)?;
        let files = remove_unfinished_snapshots(dir)?;
        if files > 0 {
            telemetry::UnfinishedSnapshotRemoved { store: dir, files }.emit();
        }
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(opts.cache_capacity)
            .mode(sled::Mode::LowSpace)
            .open()?;
        let db_path = dir.join("db");
        let db_file = File::open(&db_path).map_err(io_err(&db_path))?;
        let meta = db.open_tree(TREE_META)?;
        let id_base = match meta.get(META_ID_BASE)? {
            None => 0,
            Some(v) => <[u8; 8]>::try_from(v.as_ref())
                .map(u64::from_be_bytes)
                .map_err(|_| StoreError::Lost {
                    path: dir.to_owned(),
                })?,
        };
        let keys = open_keyring(dir, &key, &meta, opts.cipher)?;
        let outbox = SledOutbox {
            dir: dir.to_owned(),
            meta,
            pending: db.open_tree(TREE_PENDING)?,
            index: db.open_tree(TREE_INDEX)?,
            acked: db.open_tree(TREE_ACKED)?,
            dead: db.open_tree(TREE_DEAD)?,
            quarantine: db.open_tree(TREE_QUARANTINE)?,
            idents: db.open_tree(TREE_IDENTS)?,
            exported: db.open_tree(TREE_EXPORTED)?,
            exports: db.open_tree(TREE_EXPORTS)?,
            db,
            db_file,
            kek: key,
            keys: RwLock::new(Arc::new(keys)),
            opts,
            synced_blobs: Mutex::new(HashMap::new()),
            inserts: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            corrupt_records: AtomicU64::new(0),
            held: AtomicU64::new(0),
            written_upto: AtomicU64::new(0),
            durable_upto: AtomicU64::new(0),
            id_base,
            #[cfg(test)]
            fail_flush: std::sync::atomic::AtomicBool::new(false),
        };
        // What is on disk at open is what sled recovered: durable. sled's ids grow across
        // restarts, so a fresh one is above every stored record and below every new one.
        // (Not `pending.last()`: sled's reverse iteration cost the aarch64 binary a megabyte.)
        let mark = outbox.next_id()?;
        outbox.written_upto.store(mark, Ordering::Release);
        outbox.durable_upto.store(mark, Ordering::Release);
        outbox.check_or_init_meta()?;
        let marker = dir.join(MARKER_FILE);
        if !marker.exists() {
            std::fs::write(&marker, MARKER_TEXT)
                .and_then(|()| File::open(&marker)?.sync_all())
                .map_err(io_err(&marker))?;
        }
        // The directory entries of sled's files (and of the directory itself, if new).
        for d in [Some(dir), created.then(|| dir.parent()).flatten()]
            .into_iter()
            .flatten()
        {
            let d = if d.as_os_str().is_empty() {
                Path::new(".")
            } else {
                d
            };
            File::open(d)
                .and_then(|f| f.sync_all())
                .map_err(io_err(d))?;
        }
        let pruned = outbox.prune_tombstones(SystemTime::now())?;
        outbox.recount_held_bytes()?;
        let stats = outbox.stats()?;
        tracing::info!(
            store = %outbox.dir.display(),
            pending = stats.pending,
            dead = stats.dead,
            quarantined = stats.quarantined,
            tombstones = stats.acked_tombstones,
            pruned,
            "outbox opened"
        );
        Ok(outbox)
    }

    /// Stores `value` under `id` unless the id is already known. On `Ok` the record is durable.
    ///
    /// # Errors
    ///
    /// As [`Outbox::insert_records`].
    pub fn insert<T: Serialize>(&self, id: [u8; 32], value: &T) -> Result<Insert, StoreError> {
        let outcomes = self.insert_many([(id, value)])?;
        Ok(outcomes.first().copied().unwrap_or(Insert::Duplicate))
    }

    /// [`Outbox::insert_records`] for records without an upstream identity.
    ///
    /// # Errors
    ///
    /// As [`Outbox::insert_records`].
    pub fn insert_many<'a, T, I>(&self, items: I) -> Result<Vec<Insert>, StoreError>
    where
        T: Serialize + 'a,
        I: IntoIterator<Item = ([u8; 32], &'a T)>,
    {
        let records: Vec<NewRecord<'a, T>> = items
            .into_iter()
            .map(|(id, value)| NewRecord {
                id,
                identity: None,
                delivery: None,
                value,
            })
            .collect();
        self.insert_records(&records)
    }

    /// Stores a batch with one transaction and one flush+fsync. Returns one outcome per item, in
    /// order; an id repeated within the batch is a [`Insert::Duplicate`] after its first use.
    ///
    /// A record is never refused alone: one that is too large, or whose identity another record
    /// already holds, is kept as a dead letter ([`Insert::DeadLettered`]) and the others of the
    /// batch are stored.
    ///
    /// # Errors
    ///
    /// [`StoreError::Encode`], [`StoreError::Codec`], [`StoreError::Sled`], [`StoreError::Io`].
    /// The batch is all-or-nothing; on error nothing may be acknowledged upstream (a retry is
    /// safe).
    pub fn insert_records<T: Serialize>(
        &self,
        records: &[NewRecord<'_, T>],
    ) -> Result<Vec<Insert>, StoreError> {
        let now = now_ms(SystemTime::now());
        // Items that need a dead-letter record (too large; collisions found by a first pass).
        let mut dead_for: HashMap<usize, DeadReason> = HashMap::new();
        let mut encoded = Vec::with_capacity(records.len());
        for (i, r) in records.iter().enumerate() {
            let payload = postcard::to_stdvec(r.value).map_err(StoreError::Encode)?;
            if payload.len() > MAX_PAYLOAD_LEN {
                dead_for.insert(i, DeadReason::TooLarge);
            }
            encoded.push(payload);
        }
        // A round aborts at the first collision it meets, which the next round keeps as a dead
        // letter: a batch with k collisions takes k + 1 rounds (it was capped at 3, so a batch
        // holding three collisions failed whole, as `Corrupt`, every time it was delivered).
        for _round in 0..=records.len() {
            let mut prepared = Vec::with_capacity(records.len());
            for (i, (r, payload)) in records.iter().zip(&encoded).enumerate() {
                let mac = self.keys().index_key(&r.id);
                let ident = r.identity.map(|s| self.identity_key(s));
                let delivery = r.delivery.map(|s| self.delivery_key(s));
                let sealed = match dead_for.get(&i) {
                    Some(reason) => {
                        let seq = self.next_id()?;
                        let kept = payload.get(..MAX_PAYLOAD_LEN).unwrap_or(payload);
                        let sealed = self.seal_dead(
                            seq,
                            DeadEnvelope {
                                time_ms: now,
                                source: "pipeline".to_owned(),
                                reason: reason.as_str().to_owned(),
                                id: Some(r.id),
                                original_len: payload.len() as u64,
                                payload_sha256: sha256(payload),
                                truncated: payload.len() > kept.len(),
                                payload: kept.to_vec(),
                            },
                        )?;
                        Prepared::Dead(seq, *reason, sealed)
                    }
                    None => {
                        let seq = self.next_id()?;
                        let plain = postcard::to_stdvec(&PendingEnvelope {
                            id: r.id,
                            enqueued_at_ms: now,
                            payload: payload.clone(),
                        })
                        .map_err(StoreError::Encode)?;
                        let sealed = self.seal_bound(
                            &record_key(TREE_PENDING, &seq.to_be_bytes()),
                            Some(&r.id),
                            &plain,
                        )?;
                        Prepared::Pending(seq, sealed)
                    }
                };
                prepared.push((mac, ident, delivery, sealed));
            }
            let tomb = now.to_be_bytes();
            let result: TransactionResult<Vec<Insert>, NeedsDeadLetter> = (
                &self.pending,
                &self.index,
                &self.acked,
                &self.dead,
                &self.idents,
            )
                .transaction(|(pending, index, acked, dead, idents)| {
                    let mut outcomes = Vec::with_capacity(prepared.len());
                    for (i, (mac, ident, delivery, item)) in prepared.iter().enumerate() {
                        // An index entry whose record is gone was left by a quarantine
                        // (invariant 2): the id is not pending, a new copy is stored.
                        let held = match index.get(mac)? {
                            Some(seq) => pending.get(&seq)?.is_some(),
                            None => false,
                        };
                        if held || acked.get(mac)?.is_some() {
                            outcomes.push(Insert::Duplicate);
                            continue;
                        }
                        // The same delivery, made into another reading (see NewRecord). The
                        // delivery is recorded here for every record kept (an abort below
                        // discards it with the rest); a transactional insert returns what it
                        // replaced, which saves a separate read of the tree.
                        if let Some(k) = delivery {
                            let mut v = mac.to_vec();
                            v.extend_from_slice(&tomb);
                            if let Some(first) = idents.insert(&k[..], v)? {
                                if first.get(..32) != Some(&mac[..]) {
                                    idents.insert(&k[..], first)?;
                                    outcomes.push(Insert::Duplicate);
                                    continue;
                                }
                            }
                        }
                        let collides = match ident {
                            Some(k) => idents
                                .get(k)?
                                .is_some_and(|v| v.get(..32) != Some(&mac[..])),
                            None => false,
                        };
                        match item {
                            Prepared::Dead(seq, reason, sealed) => {
                                dead.insert(&seq.to_be_bytes()[..], &sealed[..])?;
                                acked.insert(&mac[..], &tomb[..])?;
                                outcomes.push(Insert::DeadLettered {
                                    seq: *seq,
                                    reason: *reason,
                                });
                            }
                            Prepared::Pending(..) if collides => {
                                return abort(NeedsDeadLetter(i));
                            }
                            Prepared::Pending(seq, sealed) => {
                                let seq = seq.to_be_bytes();
                                pending.insert(&seq[..], &sealed[..])?;
                                index.insert(&mac[..], &seq[..])?;
                                if let Some(k) = ident {
                                    let mut v = mac.to_vec();
                                    v.extend_from_slice(&tomb);
                                    idents.insert(&k[..], v)?;
                                }
                                outcomes.push(Insert::Stored);
                            }
                        }
                    }
                    Ok(outcomes)
                });
            match result {
                Ok(outcomes) => {
                    let written = prepared
                        .iter()
                        .zip(&outcomes)
                        .filter_map(|((_, _, _, item), outcome)| match (item, outcome) {
                            (Prepared::Pending(seq, _), Insert::Stored) => Some(*seq),
                            _ => None,
                        })
                        .max();
                    if let Some(seq) = written {
                        self.written_upto.fetch_max(seq, Ordering::AcqRel);
                    }
                    // Also for duplicates: the first copy may belong to a thread that has not
                    // synced yet.
                    self.make_durable()?;
                    let added: usize = prepared
                        .iter()
                        .zip(&outcomes)
                        .map(|((_, _, _, item), outcome)| match (item, outcome) {
                            (Prepared::Pending(_, sealed), Insert::Stored) => {
                                sealed.len() + PENDING_OVERHEAD
                            }
                            (Prepared::Dead(_, _, sealed), Insert::DeadLettered { .. }) => {
                                sealed.len() + DEAD_OVERHEAD
                            }
                            _ => 0,
                        })
                        .sum();
                    self.held.fetch_add(added as u64, Ordering::Relaxed);
                    let count = |f: fn(&Insert) -> bool| outcomes.iter().filter(|o| f(o)).count();
                    self.inserts
                        .fetch_add(count(|o| *o == Insert::Stored) as u64, Ordering::Relaxed);
                    self.duplicates
                        .fetch_add(count(|o| *o == Insert::Duplicate) as u64, Ordering::Relaxed);
                    return Ok(outcomes);
                }
                Err(sled::transaction::TransactionError::Abort(NeedsDeadLetter(i))) => {
                    dead_for.insert(i, DeadReason::IdentifierCollision);
                }
                Err(sled::transaction::TransactionError::Storage(e)) => {
                    return Err(StoreError::Sled(e))
                }
            }
        }
        // Each round that aborts adds a collision not seen before, so len + 1 rounds always
        // settle: unreachable. Report it rather than loop.
        Err(StoreError::Corrupt {
            tree: TREE_IDENTS,
            seq: 0,
            reason: "identity collisions did not settle",
        })
    }

    /// Up to `limit` pending records, oldest first. Records that do not open or decode are
    /// moved to `quarantine` (see [`crate::store`], invariant 1) and skipped.
    ///
    /// # Errors
    ///
    /// [`StoreError::Sled`] / [`StoreError::Io`] only; a bad record is never an error here.
    pub fn pending<T: DeserializeOwned>(
        &self,
        limit: usize,
    ) -> Result<Vec<PendingRecord<T>>, StoreError> {
        let mut out = Vec::new();
        if limit == 0 {
            return Ok(out);
        }
        let durable = self.durable_upto.load(Ordering::Acquire);
        for item in self.pending.range(..=durable.to_be_bytes()) {
            let (key, raw) = item?;
            match self.decode_pending::<T>(&key, &raw) {
                Ok(record) => {
                    out.push(record);
                    if out.len() >= limit {
                        break;
                    }
                }
                Err(reason) => self.quarantine_record(TREE_PENDING, &key, &raw, reason)?,
            }
        }
        Ok(out)
    }

    /// Like [`Outbox::pending`], but only records `keep` accepts count towards `limit` and are
    /// returned (the uploader skips readings held back for consent without stalling behind
    /// them). Also returns how many pending records `keep` refused.
    pub fn pending_where<T: DeserializeOwned>(
        &self,
        limit: usize,
        keep: impl FnMut(&T) -> bool,
    ) -> Result<(Vec<PendingRecord<T>>, usize), StoreError> {
        self.pending_where_skipping(limit, &HashSet::new(), keep)
    }

    /// [`Outbox::pending_where`], passing over the records whose sequence number is in `skip`
    /// without opening them (the uploader's readings whose ack is being written: opening each
    /// only to refuse it cost more than the upload itself).
    ///
    /// # Errors
    ///
    /// As [`Outbox::pending_where`].
    pub fn pending_where_skipping<T: DeserializeOwned>(
        &self,
        limit: usize,
        skip: &HashSet<u64>,
        mut keep: impl FnMut(&T) -> bool,
    ) -> Result<(Vec<PendingRecord<T>>, usize), StoreError> {
        // Room for a batch at once: a record is large, and growing the vector step by step
        // moved the records read so far several times per batch.
        let mut out = Vec::with_capacity(limit.min(64));
        let mut refused = 0;
        if limit == 0 {
            return Ok((out, refused));
        }
        let durable = self.durable_upto.load(Ordering::Acquire);
        for item in self.pending.range(..=durable.to_be_bytes()) {
            let (key, raw) = item?;
            if !skip.is_empty() && parse_seq(&key).is_some_and(|seq| skip.contains(&seq)) {
                continue;
            }
            match self.decode_pending::<T>(&key, &raw) {
                Ok(record) => {
                    if !keep(&record.value) {
                        refused += 1;
                        continue;
                    }
                    out.push(record);
                    if out.len() >= limit {
                        break;
                    }
                }
                Err(reason) => self.quarantine_record(TREE_PENDING, &key, &raw, reason)?,
            }
        }
        Ok((out, refused))
    }

    /// Removes, for good, up to `limit` pending records that `purge` selects (oldest first), in
    /// one sled transaction, and returns them. Each id becomes a tombstone (a redelivery within
    /// the tombstone retention is a duplicate, not stored again) and the store's persistent
    /// purge count (`meta/purged`, [`Stats::purged`]) grows by the number removed, in the same
    /// transaction. Used for the consent purge (`crate::consent::purge_due`): the caller decides,
    /// the store only removes. Records that do not open are quarantined, as everywhere.
    ///
    /// A record whose index entry changed between the scan and the transaction (acked or
    /// dead-lettered meanwhile) is left alone. On `Ok` the removal is durable.
    ///
    /// # Errors
    ///
    /// [`StoreError::Sled`] / [`StoreError::Io`]; then nothing was removed.
    pub fn purge_pending_where<T: DeserializeOwned>(
        &self,
        limit: usize,
        mut purge: impl FnMut(&PendingRecord<T>) -> bool,
    ) -> Result<Vec<PendingRecord<T>>, StoreError> {
        let mut chosen = Vec::new();
        if limit == 0 {
            return Ok(chosen);
        }
        let mut sizes = HashMap::new();
        for item in self.pending.iter() {
            let (key, raw) = item?;
            match self.decode_pending::<T>(&key, &raw) {
                Ok(record) => {
                    if purge(&record) {
                        sizes.insert(record.seq, raw.len() + PENDING_OVERHEAD);
                        chosen.push(record);
                        if chosen.len() >= limit {
                            break;
                        }
                    }
                }
                Err(reason) => self.quarantine_record(TREE_PENDING, &key, &raw, reason)?,
            }
        }
        if chosen.is_empty() {
            return Ok(chosen);
        }
        let plan: Vec<([u8; 32], u64)> = chosen
            .iter()
            .map(|r| (self.keys().index_key(&r.id), r.seq))
            .collect();
        let now = now_ms(SystemTime::now()).to_be_bytes();
        let result: TransactionResult<Vec<(u64, usize)>, StoreError> =
            (&self.pending, &self.index, &self.acked, &self.meta).transaction(
                |(pending, index, acked, meta)| {
                    let removed = retire(pending, index, acked, &plan, &now)?;
                    let before = meta
                        .get(META_PURGED)?
                        .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
                        .map_or(0, u64::from_be_bytes);
                    let after = before.saturating_add(removed.len() as u64);
                    meta.insert(META_PURGED, &after.to_be_bytes()[..])?;
                    Ok(removed)
                },
            );
        let removed: Vec<u64> = result?.into_iter().map(|(seq, _)| seq).collect();
        self.make_durable()?;
        let freed: usize = removed.iter().filter_map(|seq| sizes.get(seq)).sum();
        self.release_held(freed as u64);
        chosen.retain(|r| removed.contains(&r.seq));
        Ok(chosen)
    }

    /// Removes uploaded records (server 2xx and per-entry success) and remembers their ids as
    /// tombstones. Ids that are not pending (already acked, or unknown) are ignored. Returns how
    /// many records were removed; on `Ok` the removal is durable.
    ///
    /// # Errors
    ///
    /// [`StoreError::Sled`] / [`StoreError::Io`]; then the records may still be pending and
    /// will be uploaded again (the server's conditional create makes that harmless).
    pub fn ack(&self, ids: &[[u8; 32]]) -> Result<usize, StoreError> {
        let mut plan = Vec::with_capacity(ids.len());
        for id in ids {
            let mac = self.keys().index_key(id);
            if let Some(seq) = self.verified_seq(id, &mac)? {
                plan.push((*id, mac, seq));
            }
        }
        self.retire_planned(&plan)
    }

    /// [`SledOutbox::ack`] for records the caller has just read: each `(id, seq)` is a
    /// reading's id and the sequence number of the record it was read from
    /// ([`PendingRecord::id`], [`PendingRecord::seq`]), so the record is not opened and
    /// checked a second time. Inside the transaction the id's index entry must still name
    /// `seq`, as for every ack: sequence numbers are never reused and an index entry only ever
    /// names its own id's record, so a stale or wrong `seq` (the record acked, dead-lettered or
    /// requeued since, or another reading's) removes nothing and the reading stays pending.
    /// Returns how many records were removed; on `Ok` the removal is durable.
    ///
    /// # Errors
    ///
    /// As [`SledOutbox::ack`].
    pub fn ack_read(&self, read: &[([u8; 32], u64)]) -> Result<usize, StoreError> {
        let keys = self.keys();
        let plan: Vec<([u8; 32], [u8; 32], u64)> = read
            .iter()
            .map(|(id, seq)| (*id, keys.index_key(id), *seq))
            .collect();
        self.retire_planned(&plan)
    }

    /// Retires the planned `(id, index key, seq)` records of confirmed readings, drops their
    /// export marks, makes it durable and releases their bytes.
    ///
    /// Not one sled transaction (the consent purge's [`retire`] is): three batches, in an
    /// order that keeps every state in between, and every state a crash can leave, safe. The
    /// ack stage takes 16 % less time than with the three-tree transaction (BENCHMARKS.md,
    /// uplink drain, round of 2026-12-07 21:40-22:47).
    /// 1. Which records are still their reading's: the id's index entry names `seq`. With no
    ///    index entry at all, the record at `seq` is opened and its id compared (a record
    ///    without an index entry would otherwise be sent, confirmed and kept forever).
    /// 2. The tombstones (`acked`), first: from then on the id is a duplicate whatever follows.
    /// 3. The records (`pending`). A crash before this resends them: conditional create.
    /// 4. The index entries, last, each only if it still names `seq` (compare and swap). A
    ///    crash before this leaves a stale entry (its record gone), which counts as absent
    ///    everywhere and is pruned (invariant 2).
    ///
    /// Other writers are sled transactions, serializable against these writes; at every point
    /// an id being acked is in `index` or in `acked`, so an insert finds it a duplicate.
    fn retire_planned(&self, plan: &[([u8; 32], [u8; 32], u64)]) -> Result<usize, StoreError> {
        if plan.is_empty() {
            return Ok(0);
        }
        let now = now_ms(SystemTime::now()).to_be_bytes();
        let mut live = Vec::with_capacity(plan.len());
        for (id, mac, seq) in plan {
            let key = seq.to_be_bytes();
            let still = match self.index.get(&mac[..])? {
                Some(entry) => entry.as_ref() == &key[..],
                None => self.pending.get(key)?.is_some_and(|raw| {
                    self.open_pending_envelope(*seq, &raw)
                        .is_ok_and(|e| e.id == *id)
                }),
            };
            if still {
                live.push((*mac, *seq));
            }
        }
        let mut removed = Vec::with_capacity(live.len());
        let mut index_entries_removed = 0usize;
        if !live.is_empty() {
            let mut tombstones = sled::Batch::default();
            for (mac, _) in &live {
                tombstones.insert(&mac[..], &now[..]);
            }
            self.acked.apply_batch(tombstones)?;
            for (_, seq) in &live {
                if let Some(raw) = self.pending.remove(seq.to_be_bytes())? {
                    removed.push((*seq, raw.len()));
                }
            }
            for (mac, seq) in &live {
                // Err(CompareAndSwapError): the entry names another record, or is gone.
                if self
                    .index
                    .compare_and_swap(&mac[..], Some(&seq.to_be_bytes()[..]), None::<&[u8]>)?
                    .is_ok()
                {
                    index_entries_removed += 1;
                }
            }
        }
        // Export marks of the readings that left (advisory: a mark whose reading is not pending
        // is ignored everywhere, so losing this removal in a crash is harmless).
        // Only those of the readings removed: a wrong `seq` leaves its reading and its mark.
        if !self.exported.is_empty() {
            let gone: HashSet<u64> = removed.iter().map(|&(seq, _)| seq).collect();
            for (mac, seq) in &live {
                if gone.contains(seq) {
                    self.exported.remove(&mac[..])?;
                }
            }
        }
        self.make_durable()?;
        // What left: each record (its key and value) and each index entry, counted apart, so
        // a record without an index entry, or a stale entry without its record, is exact too.
        let freed: usize = removed.iter().map(|(_, len)| len + 8).sum::<usize>()
            + index_entries_removed * INDEX_ENTRY_LEN;
        self.release_held(freed as u64);
        Ok(removed.len())
    }

    /// Records an export file: its sealed `record` (under `exports/<file_id>`) and, for each
    /// reading id in `ids` that is pending, a mark `exported/<index_key(id)>` = file id ‖ time of
    /// export (ms, u64 big-endian), replacing an earlier mark. Readings stay pending. On `Ok`
    /// the change is durable.
    ///
    /// # Errors
    ///
    /// [`StoreError::Sled`] / [`StoreError::Io`] / [`StoreError::Codec`].
    pub fn record_export(
        &self,
        file_id: &[u8; 16],
        record: &[u8],
        ids: &[[u8; 32]],
        now: SystemTime,
    ) -> Result<usize, StoreError> {
        let sealed = self.seal(&record_key(TREE_EXPORTS, file_id), record)?;
        let mut value = Vec::with_capacity(24);
        value.extend_from_slice(file_id);
        value.extend_from_slice(&now_ms(now).to_be_bytes());
        let macs: Vec<[u8; 32]> = ids.iter().map(|id| self.keys().index_key(id)).collect();
        let result: TransactionResult<usize, StoreError> =
            (&self.exports, &self.exported, &self.index).transaction(
                |(exports, exported, index)| {
                    exports.insert(&file_id[..], sealed.as_slice())?;
                    let mut marked = 0;
                    for mac in &macs {
                        if index.get(&mac[..])?.is_some() {
                            exported.insert(&mac[..], value.as_slice())?;
                            marked += 1;
                        }
                    }
                    Ok(marked)
                },
            );
        let marked = result?;
        self.make_durable()?;
        Ok(marked)
    }

    /// The sealed record of export file `file_id`, opened ([`SledOutbox::record_export`]).
    ///
    /// # Errors
    ///
    /// [`StoreError::Sled`]; [`StoreError::Codec`] if it does not open under this store's key.
    pub fn export_record(&self, file_id: &[u8; 16]) -> Result<Option<Vec<u8>>, StoreError> {
        let Some(raw) = self.exports.get(&file_id[..])? else {
            return Ok(None);
        };
        Ok(Some(
            self.keys().open(&record_key(TREE_EXPORTS, file_id), &raw)?,
        ))
    }

    /// Pending readings marked exported (awaiting confirmation), per export file id. Marks of
    /// readings no longer pending are not counted.
    ///
    /// # Errors
    ///
    /// [`StoreError::Sled`].
    pub fn exported_pending(
        &self,
    ) -> Result<std::collections::BTreeMap<[u8; 16], u64>, StoreError> {
        let mut out = std::collections::BTreeMap::new();
        for item in self.exported.iter() {
            let (mac, value) = item?;
            let Some(file) = value.get(..16).and_then(|f| <[u8; 16]>::try_from(f).ok()) else {
                continue;
            };
            if self.index.get(&mac)?.is_some() {
                *out.entry(file).or_insert(0) += 1;
            }
        }
        Ok(out)
    }

    /// The export file a pending reading was last written to, if any.
    ///
    /// # Errors
    ///
    /// [`StoreError::Sled`].
    pub fn exported_in(&self, id: &[u8; 32]) -> Result<Option<[u8; 16]>, StoreError> {
        let mac = self.keys().index_key(id);
        if self.index.get(mac)?.is_none() {
            return Ok(None);
        }
        Ok(self
            .exported
            .get(mac)?
            .and_then(|v| v.get(..16).and_then(|f| <[u8; 16]>::try_from(f).ok())))
    }

    /// Moves the pending record `id` to the dead-letter tree with `reason` (the server rejected
    /// it). The data is kept; the id becomes a tombstone so a redelivery is not stored again.
    ///
    /// # Errors
    ///
    /// [`StoreError::NotPending`] if `id` is not pending; [`StoreError::Corrupt`] if its record
    /// does not open (it stays where it is, and the next [`Outbox::pending`] quarantines it).
    pub fn dead_letter(&self, id: &[u8; 32], reason: &str) -> Result<(), StoreError> {
        let mac = self.keys().index_key(id);
        let Some(seq) = self.index_seq(&mac)? else {
            return Err(StoreError::NotPending);
        };
        let raw = self
            .pending
            .get(seq.to_be_bytes())?
            .ok_or(StoreError::NotPending)?;
        let envelope =
            self.open_pending_envelope(seq, &raw)
                .map_err(|reason| StoreError::Corrupt {
                    tree: TREE_PENDING,
                    seq,
                    reason,
                })?;
        if envelope.id != *id {
            self.corrupt_records.fetch_add(1, Ordering::Relaxed);
            telemetry::IndexMismatch { seq }.emit();
            return Err(StoreError::Corrupt {
                tree: TREE_INDEX,
                seq,
                reason: "index entry points at a record with another id",
            });
        }
        let now = SystemTime::now();
        let dead_seq = self.next_id()?;
        let sealed = self.seal_dead(
            dead_seq,
            DeadEnvelope {
                time_ms: now_ms(now),
                source: "outbox".to_owned(),
                reason: reason.to_owned(),
                id: Some(*id),
                original_len: envelope.payload.len() as u64,
                payload_sha256: sha256(&envelope.payload),
                truncated: false,
                payload: envelope.payload,
            },
        )?;
        let seq_key = seq.to_be_bytes();
        let dead_key = dead_seq.to_be_bytes();
        let tomb = now_ms(now).to_be_bytes();
        let result: TransactionResult<(), StoreError> =
            (&self.pending, &self.index, &self.acked, &self.dead).transaction(
                |(pending, index, acked, dead)| -> ConflictableTransactionResult<(), StoreError> {
                    if index.get(mac)?.as_deref() != Some(&seq_key[..]) {
                        return abort(StoreError::NotPending);
                    }
                    pending.remove(&seq_key[..])?;
                    index.remove(&mac[..])?;
                    acked.insert(&mac[..], &tomb[..])?;
                    dead.insert(&dead_key[..], &sealed[..])?;
                    Ok(())
                },
            );
        result?;
        self.make_durable()?;
        tracing::warn!(seq, dead_seq, "reading moved to dead letters");
        Ok(())
    }

    /// Keeps a payload that could not be turned into a reading (not JSON, unknown schema) for a
    /// technician, sealed like any record (it may contain PHI). Durable on `Ok`. A payload
    /// longer than [`MAX_PAYLOAD_LEN`] keeps its first bytes, its length and its SHA-256.
    ///
    /// # Errors
    ///
    /// [`StoreError::Sled`], [`StoreError::Io`], [`StoreError::Encode`], [`StoreError::Codec`].
    pub fn put_dead_letter_raw(
        &self,
        source: &str,
        payload: &[u8],
        reason: &str,
    ) -> Result<u64, StoreError> {
        let truncated = payload.len() > MAX_PAYLOAD_LEN;
        let kept = payload.get(..MAX_PAYLOAD_LEN).unwrap_or(payload);
        let seq = self.next_id()?;
        let sealed = self.seal_dead(
            seq,
            DeadEnvelope {
                time_ms: now_ms(SystemTime::now()),
                source: truncate_str(source, 256),
                reason: truncate_str(reason, 1024),
                id: None,
                original_len: payload.len() as u64,
                payload_sha256: sha256(payload),
                truncated,
                payload: kept.to_vec(),
            },
        )?;
        let size = sealed.len() + DEAD_OVERHEAD;
        self.dead.insert(seq.to_be_bytes(), sealed)?;
        self.make_durable()?;
        self.held.fetch_add(size as u64, Ordering::Relaxed);
        tracing::warn!(
            seq,
            size = payload.len(),
            truncated,
            "payload kept as dead letter"
        );
        Ok(seq)
    }

    /// Lists dead letters without their payloads. Records that do not open are quarantined.
    ///
    /// # Errors
    ///
    /// [`StoreError::Sled`] / [`StoreError::Io`].
    pub fn dead_letters(&self) -> Result<Vec<DeadLetterInfo>, StoreError> {
        let mut out = Vec::new();
        for item in self.dead.iter() {
            let (key, raw) = item?;
            match self.open_dead(&key, &raw) {
                Ok((seq, d)) => out.push(DeadLetterInfo {
                    seq,
                    time: from_ms(d.time_ms),
                    source: d.source,
                    reason: d.reason,
                    id: d.id,
                    size: d.original_len,
                    sha256: d.payload_sha256,
                    truncated: d.truncated,
                }),
                Err(reason) => self.quarantine_record(TREE_DEAD, &key, &raw, reason)?,
            }
        }
        Ok(out)
    }

    /// The payload of dead letter `seq`, for a technician who asked for it: the raw bytes for a
    /// [`Outbox::put_dead_letter_raw`] record, the postcard encoding of `T` for a rejected
    /// reading.
    ///
    /// # Errors
    ///
    /// [`StoreError::NoSuchDeadLetter`]; [`StoreError::Corrupt`] if it does not open.
    pub fn dead_letter_payload(&self, seq: u64) -> Result<Vec<u8>, StoreError> {
        let key = seq.to_be_bytes();
        let raw = self
            .dead
            .get(key)?
            .ok_or(StoreError::NoSuchDeadLetter { seq })?;
        self.open_dead(&key, &raw)
            .map(|(_, d)| d.payload)
            .map_err(|reason| StoreError::Corrupt {
                tree: TREE_DEAD,
                seq,
                reason,
            })
    }

    /// Puts the reading of dead letter `seq` back into the outbox under its original id: the
    /// dead letter is removed, the id's tombstone too (so it is pending, not a duplicate), and
    /// its upstream identity (from `identity_of`, as at insert) is held by it again. All in one
    /// transaction; durable on `Ok`.
    ///
    /// Idempotent through the id: a reading that is already pending (redelivered, or requeued
    /// from another dead letter) is not stored twice ([`Requeue::AlreadyPending`]), and the
    /// server's conditional create stops a second Observation of one that was uploaded.
    ///
    /// # Errors
    ///
    /// [`StoreError::NoSuchDeadLetter`]; [`StoreError::NotRequeueable`] for a raw payload, an
    /// identifier collision, a truncated record, a payload that is not a `T`, or an identity
    /// another reading holds now; [`StoreError::Corrupt`] if the dead letter does not open;
    /// [`StoreError::Sled`] / [`StoreError::Io`].
    pub fn requeue_dead_letter<T: DeserializeOwned>(
        &self,
        seq: u64,
        identity_of: impl Fn(&T) -> Option<String>,
    ) -> Result<Requeue, StoreError> {
        let key = seq.to_be_bytes();
        let raw = self
            .dead
            .get(key)?
            .ok_or(StoreError::NoSuchDeadLetter { seq })?;
        let (_, d) = self
            .open_dead(&key, &raw)
            .map_err(|reason| StoreError::Corrupt {
                tree: TREE_DEAD,
                seq,
                reason,
            })?;
        let refuse = |why| Err(StoreError::NotRequeueable { seq, why });
        let Some(id) = d.id else {
            return refuse(NotRequeueable::Raw);
        };
        if d.reason
            .starts_with(DeadReason::IdentifierCollision.as_str())
        {
            return refuse(NotRequeueable::IdentifierCollision);
        }
        if d.truncated || d.payload.len() > MAX_PAYLOAD_LEN {
            return refuse(NotRequeueable::TooLarge);
        }
        let Ok(value) = postcard::from_bytes::<T>(&d.payload) else {
            return refuse(NotRequeueable::Undecodable);
        };
        let mac = self.keys().index_key(&id);
        let ident = identity_of(&value).map(|s| self.identity_key(&s));
        let now = now_ms(SystemTime::now());
        let new_seq = self.next_id()?;
        let plain = postcard::to_stdvec(&PendingEnvelope {
            id,
            enqueued_at_ms: now,
            payload: d.payload,
        })
        .map_err(StoreError::Encode)?;
        let sealed = self.seal_bound(
            &record_key(TREE_PENDING, &new_seq.to_be_bytes()),
            Some(&id),
            &plain,
        )?;
        let result: TransactionResult<Requeue, StoreError> = (
            &self.pending,
            &self.index,
            &self.acked,
            &self.dead,
            &self.idents,
        )
            .transaction(|(pending, index, acked, dead, idents)| {
                if dead.get(key)?.as_deref() != Some(&raw[..]) {
                    return abort(StoreError::NoSuchDeadLetter { seq });
                }
                let held = match index.get(mac)? {
                    Some(seq) => pending.get(&seq)?.is_some(),
                    None => false,
                };
                if held {
                    dead.remove(&key[..])?;
                    return Ok(Requeue::AlreadyPending);
                }
                if let Some(k) = &ident {
                    if idents
                        .get(k)?
                        .is_some_and(|v| v.get(..32) != Some(&mac[..]))
                    {
                        return abort(StoreError::NotRequeueable {
                            seq,
                            why: NotRequeueable::IdentityTaken,
                        });
                    }
                    let mut v = mac.to_vec();
                    v.extend_from_slice(&now.to_be_bytes());
                    idents.insert(&k[..], v)?;
                }
                let new_key = new_seq.to_be_bytes();
                pending.insert(&new_key[..], &sealed[..])?;
                index.insert(&mac[..], &new_key[..])?;
                acked.remove(&mac[..])?;
                dead.remove(&key[..])?;
                Ok(Requeue::Requeued { seq: new_seq })
            });
        let outcome = result?;
        if let Requeue::Requeued { seq } = outcome {
            self.written_upto.fetch_max(seq, Ordering::AcqRel);
        }
        self.make_durable()?;
        tracing::info!(dead_seq = seq, ?outcome, "dead letter requeued");
        Ok(outcome)
    }

    /// [`Outbox::requeue_dead_letter`] for every dead letter; those that cannot be requeued
    /// stay, listed in [`RequeueSummary::skipped`]. Each requeue is durable when it is counted.
    ///
    /// # Errors
    ///
    /// The first error other than [`StoreError::NotRequeueable`] (what was requeued before it
    /// stays requeued).
    pub fn requeue_all_dead_letters<T: DeserializeOwned>(
        &self,
        identity_of: impl Fn(&T) -> Option<String>,
    ) -> Result<RequeueSummary, StoreError> {
        let mut summary = RequeueSummary::default();
        for d in self.dead_letters()? {
            match self.requeue_dead_letter::<T>(d.seq, &identity_of) {
                Ok(Requeue::Requeued { .. }) => summary.requeued.push(d.seq),
                Ok(Requeue::AlreadyPending) => summary.already_pending.push(d.seq),
                Err(StoreError::NotRequeueable { why, .. }) => summary.skipped.push((d.seq, why)),
                Err(e) => return Err(e),
            }
        }
        Ok(summary)
    }

    /// Forgets tombstones older than the retention at `now`. Called by [`Outbox::open`]; call
    /// it daily. Returns how many were removed. Not fsynced: a lost prune is redone next time.
    ///
    /// # Errors
    ///
    /// [`StoreError::Sled`].
    pub fn prune_tombstones(&self, now: SystemTime) -> Result<usize, StoreError> {
        // Removals are applied in chunks: one sled batch of 100,000 removals took ~520 MiB of
        // memory (store_throughput bench, footprint section). Pruning need not be atomic.
        const PRUNE_CHUNK: usize = 1024;
        let now = now_ms(now);
        let retention =
            u64::try_from(self.opts.tombstone_retention.as_millis()).unwrap_or(u64::MAX);
        let mut batch = sled::Batch::default();
        let mut count = 0;
        for item in self.acked.iter() {
            let (key, value) = item?;
            // A malformed time (bit flip) counts as old: a tombstone only prevents duplicates,
            // which the server's conditional create also prevents.
            let at = <[u8; 8]>::try_from(&value[..]).map_or(0, u64::from_be_bytes);
            if now.saturating_sub(at) > retention {
                batch.remove(key);
                count += 1;
                if count % PRUNE_CHUNK == 0 {
                    self.acked.apply_batch(std::mem::take(&mut batch))?;
                }
            }
        }
        // Index entries whose record was quarantined (invariant 2): removed only if unchanged,
        // so an insert that reused the id meanwhile keeps its entry.
        for item in self.index.iter() {
            let (key, seq) = item?;
            if !self.pending.contains_key(&seq)? {
                let _ = self
                    .index
                    .compare_and_swap(&key, Some(&seq), None::<&[u8]>)?;
            }
        }
        // Identities live as long as tombstones do: a late redelivery must still be recognised,
        // and a pending record's identity is never forgotten.
        let mut ident_batch = sled::Batch::default();
        let mut idents_removed = 0;
        for item in self.idents.iter() {
            let (key, value) = item?;
            let at = value
                .get(32..40)
                .and_then(|b| <[u8; 8]>::try_from(b).ok())
                .map_or(0, u64::from_be_bytes);
            let pending = match value.get(..32) {
                Some(mac) => self.index.contains_key(mac)?,
                None => false,
            };
            if !pending && now.saturating_sub(at) > retention {
                ident_batch.remove(key);
                idents_removed += 1;
                if idents_removed % PRUNE_CHUNK == 0 {
                    self.idents.apply_batch(std::mem::take(&mut ident_batch))?;
                }
            }
        }
        if idents_removed > 0 {
            self.idents.apply_batch(ident_batch)?;
        }
        if count > 0 || idents_removed > 0 {
            self.acked.apply_batch(batch)?;
            // Not made durable on purpose: a lost prune is redone next time.
            #[allow(clippy::disallowed_methods)]
            self.db.flush()?;
        }
        Ok(count)
    }

    /// Current counts. Tree sizes are counted by iteration.
    ///
    /// # Errors
    ///
    /// [`StoreError::Sled`].
    pub fn stats(&self) -> Result<Stats, StoreError> {
        Ok(Stats {
            pending: self.pending.len() as u64,
            dead: self.dead.len() as u64,
            quarantined: self.quarantine.len() as u64,
            acked_tombstones: self.acked.len() as u64,
            inserts: self.inserts.load(Ordering::Relaxed),
            duplicates: self.duplicates.load(Ordering::Relaxed),
            corrupt_records: self.corrupt_records.load(Ordering::Relaxed),
            purged: self
                .meta
                .get(META_PURGED)?
                .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
                .map_or(0, u64::from_be_bytes),
        })
    }

    /// Bytes of records the store holds: keys and sealed values of `pending`, `dead` and
    /// `quarantine`, plus the `index` entry of each pending record — what `store.max_bytes`
    /// bounds ([`super::pressure`]). Tombstones (`acked`) and identities (`idents`) are not
    /// counted: they leave after the retention on their own. Cheap (an atomic): exact after
    /// [`Outbox::open`] and [`Outbox::recount_held_bytes`]; in between, inserts, acks and raw
    /// dead letters keep it current, and the rarer moves (dead-lettering a pending record,
    /// requeue, quarantine) are off by a few bytes each until the next recount.
    pub fn held_bytes(&self) -> u64 {
        self.held.load(Ordering::Relaxed)
    }

    /// Counts [`Outbox::held_bytes`] exactly by walking the trees (O(records): call it when a
    /// decision depends on it, not per reading) and returns it.
    ///
    /// # Errors
    ///
    /// [`StoreError::Sled`].
    pub fn recount_held_bytes(&self) -> Result<u64, StoreError> {
        let mut total = 0u64;
        for tree in [&self.pending, &self.index, &self.dead, &self.quarantine] {
            for item in tree.iter() {
                let (k, v) = item?;
                total += (k.len() + v.len()) as u64;
            }
        }
        self.held.store(total, Ordering::Relaxed);
        Ok(total)
    }
    /// The next id of this store: sled's `generate_id` plus the store's id base. Sequence
    /// numbers and nonce counters come from here: unique and growing for the store's life,
    /// across restarts and compactions ([`super::compact`]).
    fn next_id(&self) -> Result<u64, StoreError> {
        let id = self.db.generate_id()?;
        self.id_base.checked_add(id).ok_or_else(|| StoreError::Io {
            path: self.dir.join("db"),
            source: std::io::Error::other("store id space exhausted"),
        })
    }

    /// Bytes of every key and value in every tree: what a compacted copy holds. Scans the
    /// whole store (tombstones included); meant for the upkeep task's hourly check.
    ///
    /// # Errors
    ///
    /// [`StoreError::Sled`].
    pub fn live_bytes(&self) -> Result<u64, StoreError> {
        let mut total = 0u64;
        for name in self.db.tree_names() {
            let tree = self.db.open_tree(&name)?;
            for kv in tree.iter() {
                let (k, v) = kv?;
                total += (k.len() + v.len()) as u64;
            }
        }
        Ok(total)
    }

    /// Copies the store, byte for byte, into a new sled database in `dest` (created, mode
    /// 0700; must not exist): every tree and entry as stored (records stay sealed, their AAD
    /// names tree and key, both unchanged), `meta/id_base` set so the copy's ids continue
    /// above every id this store gave out, and the store's own files (the keyring, the
    /// marker). Everything in `dest` is fsynced, and `dest` itself, before this returns.
    ///
    /// The caller makes sure nothing writes to this store meanwhile ([`super::Outbox::compact`]
    /// holds its gate); this store is left as it was.
    ///
    /// # Errors
    ///
    /// [`StoreError::Sled`] / [`StoreError::Io`]; `dest` may then hold a partial copy (the
    /// caller removes it: [`super::compact`]).
    pub fn copy_into(&self, dest: &Path) -> Result<CopyReport, StoreError> {
        let io_err = |path: &Path| {
            let path = path.to_owned();
            move |source| StoreError::Io { path, source }
        };
        self.make_durable()?;
        DirBuilder::new()
            .mode(0o700)
            .create(dest)
            .map_err(io_err(dest))?;
        let mut report = CopyReport::default();
        {
            // A small cache: the copy is written once, in key order, and read by no one.
            let copy = sled::Config::new()
                .path(dest)
                .cache_capacity(self.opts.cache_capacity.min(COPY_CACHE))
                .mode(sled::Mode::LowSpace)
                .open()?;
            let mut batches = 0u64;
            for name in self.db.tree_names() {
                let from = self.db.open_tree(&name)?;
                let to = copy.open_tree(&name)?;
                let mut batch = sled::Batch::default();
                let mut in_batch = 0usize;
                for kv in from.iter() {
                    let (k, v) = kv?;
                    report.entries += 1;
                    report.bytes += (k.len() + v.len()) as u64;
                    batch.insert(k, v);
                    in_batch += 1;
                    if in_batch == 1024 {
                        to.apply_batch(std::mem::take(&mut batch))?;
                        in_batch = 0;
                        // Bounds what the copy holds in memory (sled keeps written pages
                        // until they are flushed).
                        batches += 1;
                        if batches % 16 == 0 {
                            #[allow(clippy::disallowed_methods)]
                            copy.flush()?;
                        }
                    }
                }
                to.apply_batch(batch)?;
            }
            // Taken after the copy: above every id this store has given out (sequence numbers,
            // nonce counters), so the copy's own ids (from 0) plus it never meet one.
            let base = self.next_id()?;
            copy.open_tree(TREE_META)?
                .insert(META_ID_BASE, &base.to_be_bytes()[..])?;
            // The one other place sled's flush is allowed: every file is fsynced below.
            #[allow(clippy::disallowed_methods)]
            copy.flush()?;
        }
        // sled's threads may hold the copy a moment after the drop: wait for its lock.
        wait_for_lock(&dest.join("db"), self.opts.lock_wait)?;
        for entry in std::fs::read_dir(&self.dir).map_err(io_err(&self.dir))? {
            let entry = entry.map_err(io_err(&self.dir))?;
            let name = entry.file_name();
            if !super::compact::is_own_file(&name) {
                continue;
            }
            let to = dest.join(&name);
            std::fs::copy(entry.path(), &to).map_err(io_err(&to))?;
        }
        super::compact::sync_tree(dest)
            .map_err(|(path, source)| StoreError::Io { path, source })?;
        report.disk_bytes =
            dir_disk_bytes(dest).map_err(|(path, source)| StoreError::Io { path, source })?;
        Ok(report)
    }

    /// Bytes the store directory takes on disk (allocated blocks of every file under it: sled's
    /// data file, snapshots, blobs), which is [`Outbox::held_bytes`] times sled's space
    /// amplification plus tombstones. Walks the directory (a handful of files).
    ///
    /// # Errors
    ///
    /// [`StoreError::Io`].
    pub fn disk_bytes(&self) -> Result<u64, StoreError> {
        dir_disk_bytes(&self.dir).map_err(|(path, source)| StoreError::Io { path, source })
    }

    /// Space available to this process on the store's filesystem (`statvfs` `f_bavail`).
    ///
    /// # Errors
    ///
    /// [`StoreError::Io`].
    pub fn disk_available_bytes(&self) -> Result<u64, StoreError> {
        fs2::available_space(&self.dir).map_err(|source| StoreError::Io {
            path: self.dir.clone(),
            source,
        })
    }

    /// For salvage ([`super::guard`]): opens a `pending` record of another store sealed under
    /// this store's key; returns its reading id and payload.
    pub(super) fn open_foreign_pending(
        keys: &KeySet,
        key: &[u8],
        raw: &[u8],
    ) -> Result<([u8; 32], Vec<u8>), &'static str> {
        let seq = parse_seq(key).ok_or("key is not a sequence number")?;
        let envelope = open_pending_with(keys, seq, raw)?;
        Ok((envelope.id, envelope.payload))
    }

    /// For salvage: the keys of another store sealed under this store's key: its keyring file,
    /// else its store's copy; with neither, only its version 1 (legacy) records can open.
    pub(super) fn foreign_keys(&self, dir: &Path, meta: &sled::Tree) -> Result<KeySet, StoreError> {
        let path = dir.join(KEYRING_FILE);
        let ring = match Keyring::load(dir, &self.kek) {
            Ok(Some(ring)) => Some(ring),
            _ => match meta.get(META_KEYRING)? {
                Some(bytes) => Keyring::decode(&bytes, &self.kek, &path).ok(),
                None => None,
            },
        };
        let ring = match ring {
            Some(ring) => ring,
            None => Keyring::new(&self.kek, Alg::ChaCha20Poly1305, 0)?,
        };
        let keys = ring.unwrap_all(&self.kek, &path)?;
        Ok(KeySet::new(&self.kek, keys, ring.active)?)
    }

    /// For salvage: opens a `dead` record of another store; returns source, reason, payload.
    pub(super) fn open_foreign_dead(
        keys: &KeySet,
        key: &[u8],
        raw: &[u8],
    ) -> Result<(String, String, Vec<u8>), &'static str> {
        let seq = parse_seq(key).ok_or("key is not a sequence number")?;
        let d = open_dead_with(keys, seq, raw)?;
        Ok((d.source, d.reason, d.payload))
    }

    /// For salvage: does another store's `meta/key_check` open under this store's key?
    pub(super) fn key_check_opens(&self, sealed: &[u8]) -> bool {
        self.keys()
            .legacy()
            .open(&record_key(TREE_META, META_KEY_CHECK), sealed)
            .is_ok_and(|p| p == KEY_CHECK_PLAINTEXT)
    }

    /// The current keys (a cheap `Arc` clone; a reload swaps them).
    fn keys(&self) -> Arc<KeySet> {
        Arc::clone(&self.keys.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Seals under the active data key, with a fresh sled id as the nonce counter.
    fn seal(&self, record_key: &[u8], plain: &[u8]) -> Result<Vec<u8>, StoreError> {
        let counter = self.next_id()?;
        Ok(self.keys().seal(record_key, plain, counter))
    }

    /// Seals a `pending` or `dead` record (sealed record version 3, [`KeySet::seal_bound`])
    /// bound to the reading `id` (a raw dead letter has none: the zero binding).
    fn seal_bound(
        &self,
        record_key: &[u8],
        id: Option<&[u8; 32]>,
        plain: &[u8],
    ) -> Result<Vec<u8>, StoreError> {
        let counter = self.next_id()?;
        let keys = self.keys();
        Ok(keys.seal_bound(record_key, &binding_for(&keys, id), plain, counter))
    }

    /// Reads the keyring file again; if it changed (a `vitalgate keys rotate`), seals new
    /// records with its active key from now on and updates the store's copy of it. Returns the
    /// new active key's id, or `None` if nothing changed.
    ///
    /// # Errors
    ///
    /// [`StoreError::Keyring`] (the file is unreadable, damaged, or does not hold the keys
    /// this store's records name); the keys in use stay as they were.
    pub fn reload_keyring(&self) -> Result<Option<u32>, StoreError> {
        let Some(ring) = Keyring::load(&self.dir, &self.kek)? else {
            return Ok(None);
        };
        let path = self.dir.join(KEYRING_FILE);
        // The keyring in use: the store's copy, kept equal to it at open and at every reload.
        let current = match self.meta.get(META_KEYRING)? {
            Some(bytes) => Keyring::decode(&bytes, &self.kek, &path)?,
            None => return Err(StoreError::KeyringLost { path }),
        };
        if ring == current {
            return Ok(None);
        }
        // A keyring that dropped or replaced a key some record may name would make that record
        // unreadable: refuse it.
        if let Some(id) = ring.missing_from(&current) {
            return Err(StoreError::KeyringDropsKey { path, id });
        }
        let keys = ring.unwrap_all(&self.kek, &self.dir.join(KEYRING_FILE))?;
        let set = KeySet::new(&self.kek, keys, ring.active)?;
        self.meta.insert(META_KEYRING, ring.encode(&self.kek)?)?;
        self.make_durable()?;
        *self.keys.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(set);
        Ok(Some(ring.active))
    }

    /// The id of the data key new records are sealed with.
    pub fn active_key_id(&self) -> u32 {
        self.keys().active_id()
    }

    /// Records in `pending` and `dead` per key id they are sealed with (0 = the legacy key of
    /// store format 4 and older). O(n): for `vitalgate keys status`.
    ///
    /// # Errors
    ///
    /// [`StoreError::Sled`].
    pub fn key_usage(&self) -> Result<std::collections::BTreeMap<u32, u64>, StoreError> {
        let mut out = std::collections::BTreeMap::new();
        for tree in [&self.pending, &self.dead] {
            for item in tree.iter() {
                let (_, v) = item?;
                if let Some(id) = KeySet::key_id_of(&v) {
                    *out.entry(id).or_insert(0) += 1;
                }
            }
        }
        Ok(out)
    }

    /// Re-seals up to `limit` records of `pending` and then `dead` that are sealed with a key
    /// other than the active one, starting after `from`; durable before it returns. A record
    /// that changed meanwhile (acked, dead-lettered) is left alone (compare-and-swap); one that
    /// does not open is left for the read path to quarantine. Pass the returned cursor back in
    /// until it is `None`.
    ///
    /// # Errors
    ///
    /// [`StoreError::Sled`] / [`StoreError::Io`].
    pub fn reseal_batch(
        &self,
        from: ResealCursor,
        limit: usize,
    ) -> Result<(usize, Option<ResealCursor>), StoreError> {
        let keys = self.keys();
        let active = keys.active_id();
        let mut done = 0usize;
        let mut cursor = from;
        loop {
            let (tree, tree_name) = if cursor.dead {
                (&self.dead, TREE_DEAD)
            } else {
                (&self.pending, TREE_PENDING)
            };
            let start = cursor.after.map_or(0, |s| s.saturating_add(1));
            let mut last = None;
            let mut scanned = 0usize;
            for item in tree.range(start.to_be_bytes()..) {
                let (k, v) = item?;
                let Some(seq) = parse_seq(&k) else { continue };
                last = Some(seq);
                scanned += 1;
                // Under an older key, or not bound to its reading yet (store format 5 and
                // older): sealed again, bound.
                if KeySet::key_id_of(&v).is_some_and(|id| id != active)
                    || KeySet::binding_of(&v).is_none()
                {
                    let rk = record_key(tree_name, &k);
                    let opened = if cursor.dead {
                        open_dead_with(&keys, seq, &v).and_then(|d| {
                            postcard::to_stdvec(&d)
                                .map(|plain| (d.id, plain))
                                .map_err(|_| "envelope does not encode")
                        })
                    } else {
                        open_pending_with(&keys, seq, &v).and_then(|e| {
                            postcard::to_stdvec(&e)
                                .map(|plain| (Some(e.id), plain))
                                .map_err(|_| "envelope does not encode")
                        })
                    };
                    if let Ok((id, plain)) = opened {
                        let counter = self.next_id()?;
                        let binding = binding_for(&keys, id.as_ref());
                        let sealed = keys.seal_bound(&rk, &binding, &plain, counter);
                        let grew = sealed.len() as u64;
                        let shrank = v.len() as u64;
                        if tree.compare_and_swap(&k, Some(&v), Some(sealed))?.is_ok() {
                            done += 1;
                            self.held.fetch_add(grew, Ordering::Relaxed);
                            self.release_held(shrank);
                        }
                    }
                }
                if done >= limit || scanned >= limit.saturating_mul(8) {
                    break;
                }
            }
            match last {
                Some(seq) if done >= limit || scanned >= limit.saturating_mul(8) => {
                    cursor.after = Some(seq);
                    self.make_durable()?;
                    return Ok((done, Some(cursor)));
                }
                _ if !cursor.dead => {
                    cursor = ResealCursor {
                        dead: true,
                        after: None,
                    };
                }
                _ => {
                    self.make_durable()?;
                    return Ok((done, None));
                }
            }
        }
    }

    fn release_held(&self, bytes: u64) {
        // Saturating: an estimate must never wrap to "full".
        let _ = self
            .held
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |h| {
                Some(h.saturating_sub(bytes))
            });
    }

    // ---- helpers ----

    fn check_or_init_meta(&self) -> Result<(), StoreError> {
        let check_key = record_key(TREE_META, META_KEY_CHECK);
        match self.meta.get(META_FORMAT)? {
            Some(v)
                if v.as_ref() == [FORMAT_VERSION]
                    || UPGRADABLE_FORMATS.iter().any(|f| v.as_ref() == [*f]) =>
            {
                let sealed = self.meta.get(META_KEY_CHECK)?;
                let ok = sealed
                    .and_then(|s| self.keys().legacy().open(&check_key, &s).ok())
                    .is_some_and(|p| p == KEY_CHECK_PLAINTEXT);
                if !ok {
                    return Err(StoreError::WrongKey {
                        path: self.dir.clone(),
                    });
                }
                if v.as_ref() != [FORMAT_VERSION] {
                    // Format 3 and 4 records are format 5 records (see `crate::store`): only the
                    // format record changes, so an older build refuses the store from now on
                    // instead of quarantining the records it cannot read.
                    self.meta.insert(META_FORMAT, &[FORMAT_VERSION][..])?;
                    self.make_durable()?;
                    tracing::info!(
                        store = %self.dir.display(),
                        from = v.first().copied().unwrap_or_default(),
                        to = FORMAT_VERSION,
                        "store format upgraded"
                    );
                }
                Ok(())
            }
            Some(v) => Err(StoreError::UnsupportedFormat {
                path: self.dir.clone(),
                found: v.first().copied(),
            }),
            None if self.dir.join(MARKER_FILE).exists() => {
                // The store existed (we wrote the marker after its first open) and sled now
                // shows no format record: sled lost its records (a truncated or overwritten
                // data file opens as an empty database).
                Err(StoreError::Lost {
                    path: self.dir.clone(),
                })
            }
            None => {
                let empty = [
                    &self.pending,
                    &self.index,
                    &self.acked,
                    &self.dead,
                    &self.quarantine,
                ]
                .iter()
                .all(|t| t.is_empty());
                if !empty {
                    return Err(StoreError::UnsupportedFormat {
                        path: self.dir.clone(),
                        found: None,
                    });
                }
                let sealed = self.keys().legacy().seal(&check_key, KEY_CHECK_PLAINTEXT)?;
                let mut batch = sled::Batch::default();
                batch.insert(META_KEY_CHECK, sealed);
                batch.insert(META_FORMAT, &[FORMAT_VERSION][..]);
                self.meta.apply_batch(batch)?;
                self.make_durable()
            }
        }
    }

    /// Writes a small record to the meta tree and makes it durable: proves the store can write
    /// again after an I/O error (used before the pipeline takes readings again).
    ///
    /// # Errors
    ///
    /// [`StoreError::Sled`] / [`StoreError::Io`].
    pub fn probe_write(&self) -> Result<(), StoreError> {
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        self.meta.insert(META_PROBE, &now_ms.to_be_bytes())?;
        self.make_durable()
    }

    /// sled flush, then fdatasync of the data file and fsync of new blob files (module doc,
    /// invariant 5).
    fn make_durable(&self) -> Result<(), StoreError> {
        // Read before the flush: every record written by now is covered by it.
        let written = self.written_upto.load(Ordering::Acquire);
        #[cfg(test)]
        if self.fail_flush.load(Ordering::Relaxed) {
            return Err(StoreError::Io {
                path: self.dir.join("db"),
                source: std::io::Error::other("injected: flush failed"),
            });
        }
        // The one place sled's flush is allowed: followed by our own fdatasync.
        #[allow(clippy::disallowed_methods)]
        self.db.flush()?;
        self.db_file.sync_data().map_err(|source| StoreError::Io {
            path: self.dir.join("db"),
            source,
        })?;
        self.sync_new_blobs()?;
        self.durable_upto.fetch_max(written, Ordering::AcqRel);
        Ok(())
    }

    fn sync_new_blobs(&self) -> Result<(), StoreError> {
        let blobs = self.dir.join("blobs");
        let io_err = |path: &Path| {
            let path = path.to_owned();
            move |source| StoreError::Io { path, source }
        };
        let entries = match std::fs::read_dir(&blobs) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io_err(&blobs)(e)),
        };
        let mut synced = self
            .synced_blobs
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut seen = HashMap::new();
        let mut any_new = false;
        for entry in entries {
            let entry = entry.map_err(io_err(&blobs))?;
            let path = entry.path();
            let len = match entry.metadata() {
                Ok(m) => m.len(),
                // sled garbage-collected it meanwhile
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err(&path)(e)),
            };
            let name = entry.file_name();
            if synced.get(&name) != Some(&len) {
                match File::open(&path).and_then(|f| f.sync_all()) {
                    Ok(()) => any_new = true,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(io_err(&path)(e)),
                }
            }
            seen.insert(name, len);
        }
        if any_new {
            File::open(&blobs)
                .and_then(|d| d.sync_all())
                .map_err(io_err(&blobs))?;
        }
        *synced = seen;
        Ok(())
    }

    /// The `idents` key of an upstream identity: a keyed hash, like `index` keys (identities
    /// contain patient identifiers and are never written in clear).
    fn identity_key(&self, identity: &str) -> [u8; 32] {
        self.idents_key(b"identity\0", identity)
    }

    /// The `idents` key of an upstream delivery (a keyed hash, apart from identities).
    fn delivery_key(&self, delivery: &str) -> [u8; 32] {
        self.idents_key(b"delivery\0", delivery)
    }

    /// A keyed hash of `domain` ‖ `name`, like `index` keys.
    fn idents_key(&self, domain: &[u8], name: &str) -> [u8; 32] {
        let mut pre = Vec::with_capacity(domain.len() + name.len());
        pre.extend_from_slice(domain);
        pre.extend_from_slice(name.as_bytes());
        self.keys().index_key(&sha256(&pre))
    }

    fn index_seq(&self, mac: &[u8; 32]) -> Result<Option<u64>, StoreError> {
        Ok(self.index.get(mac)?.and_then(|v| parse_seq(&v)))
    }

    /// The seq of `id`'s pending record, after checking that the record there is `id`'s.
    fn verified_seq(&self, id: &[u8; 32], mac: &[u8; 32]) -> Result<Option<u64>, StoreError> {
        let Some(seq) = self.index_seq(mac)? else {
            return Ok(None);
        };
        let Some(raw) = self.pending.get(seq.to_be_bytes())? else {
            return Ok(None);
        };
        match self.open_pending_envelope(seq, &raw) {
            Ok(envelope) if envelope.id == *id => Ok(Some(seq)),
            Ok(_) => {
                self.corrupt_records.fetch_add(1, Ordering::Relaxed);
                telemetry::IndexMismatch { seq }.emit();
                Ok(None)
            }
            // Left in place: the next `pending` call quarantines it with a log line.
            Err(_) => Ok(None),
        }
    }

    fn open_pending_envelope(&self, seq: u64, raw: &[u8]) -> Result<PendingEnvelope, &'static str> {
        open_pending_with(&self.keys(), seq, raw)
    }

    fn decode_pending<T: DeserializeOwned>(
        &self,
        key: &[u8],
        raw: &[u8],
    ) -> Result<PendingRecord<T>, &'static str> {
        let seq = parse_seq(key).ok_or("key is not a sequence number")?;
        let envelope = self.open_pending_envelope(seq, raw)?;
        let value = postcard::from_bytes(&envelope.payload)
            .map_err(|_| "payload does not decode as the requested type")?;
        Ok(PendingRecord {
            seq,
            id: envelope.id,
            enqueued_at: from_ms(envelope.enqueued_at_ms),
            value,
        })
    }

    fn seal_dead(&self, seq: u64, envelope: DeadEnvelope) -> Result<Vec<u8>, StoreError> {
        let plain = postcard::to_stdvec(&envelope).map_err(StoreError::Encode)?;
        self.seal_bound(
            &record_key(TREE_DEAD, &seq.to_be_bytes()),
            envelope.id.as_ref(),
            &plain,
        )
    }

    fn open_dead(&self, key: &[u8], raw: &[u8]) -> Result<(u64, DeadEnvelope), &'static str> {
        let seq = parse_seq(key).ok_or("key is not a sequence number")?;
        Ok((seq, open_dead_with(&self.keys(), seq, raw)?))
    }

    /// Moves `tree[key]` (still equal to `raw`) to `quarantine`, byte for byte, and drops index
    /// entries that point at it (so a redelivered copy of the reading is stored again).
    fn quarantine_record(
        &self,
        tree_name: &'static str,
        key: &[u8],
        raw: &[u8],
        reason: &'static str,
    ) -> Result<(), StoreError> {
        let tree = if tree_name == TREE_DEAD {
            &self.dead
        } else {
            &self.pending
        };
        // O(1): the index entry pointing at the record (if any: its id cannot be read) stays;
        // an entry whose record is gone counts as absent, and `prune_tombstones` removes it.
        let qkey = record_key(tree_name, key);
        let result: TransactionResult<bool, StoreError> =
            (tree, &self.quarantine).transaction(|(src, quarantine)| {
                if src.get(key)?.as_deref() != Some(raw) {
                    return Ok(false); // changed meanwhile (acked, or already moved)
                }
                src.remove(key)?;
                quarantine.insert(&qkey[..], raw)?;
                Ok(true)
            });
        if result? {
            self.make_durable()?;
            self.corrupt_records.fetch_add(1, Ordering::Relaxed);
            telemetry::RecordQuarantined {
                tree: tree_name,
                seq: parse_seq(key),
                size: raw.len(),
                reason,
            }
            .emit();
        }
        Ok(())
    }
}

/// A record prepared for [`Outbox::insert_records`]: sealed for `pending`, or for `dead`.
enum Prepared {
    Pending(u64, Vec<u8>),
    Dead(u64, DeadReason, Vec<u8>),
}

/// Transaction abort: item `.0` collides and needs a sealed dead letter first.
#[derive(Debug)]
struct NeedsDeadLetter(usize);

/// A file of ours in the store directory (sled ignores it), written after the store's first
/// successful open: a store that has it but no format record lost its records.
pub const MARKER_FILE: &str = "vitalgate-store";
const MARKER_TEXT: &str =
    "vitalgate outbox: sled database and sealed records; see `vitalgate status`\n";

/// Where [`SledOutbox::reseal_batch`] goes on from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ResealCursor {
    /// In `dead` (after `pending`).
    pub dead: bool,
    /// The last sequence number looked at.
    pub after: Option<u64>,
}

/// Loads the store's keyring, from `<dir>/keyring` or else the store's copy (rewriting the
/// file from it), or creates one for a store that never had one (format 4 and older, or new).
/// Checks the store key against the key-check record first, so a wrong key says so.
fn open_keyring(
    dir: &Path,
    kek: &StoreKey,
    meta: &sled::Tree,
    alg: Alg,
) -> Result<KeySet, StoreError> {
    let legacy = RecordCipher::new(kek)?;
    if let Some(sealed) = meta.get(META_KEY_CHECK)? {
        let check_key = record_key(TREE_META, META_KEY_CHECK);
        if !legacy
            .open(&check_key, &sealed)
            .is_ok_and(|p| p == KEY_CHECK_PLAINTEXT)
        {
            return Err(StoreError::WrongKey {
                path: dir.to_owned(),
            });
        }
    }
    let path = dir.join(KEYRING_FILE);
    let copy = meta.get(META_KEYRING)?;
    let from_copy = copy
        .as_deref()
        .map(|bytes| Keyring::decode(bytes, kek, &path));
    let ring = match Keyring::load(dir, kek) {
        // The file must hold every key of the store's copy unchanged (it may add some: a
        // rotation while the store was closed); otherwise the copy is the keyring in use.
        Ok(Some(ring)) if matches!(&from_copy, Some(Ok(c)) if ring.missing_from(c).is_some()) => {
            let bytes = copy.as_deref().unwrap_or_default();
            super::keyring::write_atomic(dir, bytes)?;
            tracing::warn!(
                store = %dir.display(),
                "keyring file dropped or replaced a data key the store uses: restored from the store's copy"
            );
            Keyring::decode(bytes, kek, &path)?
        }
        Ok(Some(ring)) => ring,
        Ok(None) | Err(_) if copy.is_some() => {
            let bytes = copy.as_deref().unwrap_or_default();
            let ring = Keyring::decode(bytes, kek, &path)?;
            super::keyring::write_atomic(dir, bytes)?;
            tracing::warn!(
                store = %dir.display(),
                "keyring file missing or damaged: restored from the store's copy"
            );
            ring
        }
        Ok(None) => {
            let format = meta.get(META_FORMAT)?.and_then(|v| v.first().copied());
            if format == Some(FORMAT_VERSION) {
                // Format 5 stores seal with data keys: without the keyring their records are
                // unreadable, and a new keyring would not change that.
                return Err(StoreError::KeyringLost { path });
            }
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            let ring = Keyring::new(kek, alg, now)?;
            ring.save(dir, kek)?;
            tracing::info!(
                store = %dir.display(),
                cipher = alg.as_str(),
                "store keyring created (data key 1, wrapped by the store key)"
            );
            ring
        }
        Err(e) => return Err(e.into()),
    };
    let encoded = ring.encode(kek)?;
    if copy.as_deref() != Some(encoded.as_slice()) {
        meta.insert(META_KEYRING, encoded)?;
    }
    let keys = ring.unwrap_all(kek, &path)?;
    Ok(KeySet::new(kek, keys, ring.active)?)
}

/// Removes the snapshot files sled 0.34 left unfinished (`snap.<lsn>.generating`) in the
/// database directory `dir`; returns how many. sled writes a snapshot to that name, fsyncs it
/// and renames it, so such a file is a write that failed or was cut short (a full disk, a crash).
/// sled's open does not skip it: it sorts the `snap.` files and reads the last, which is the
/// unfinished one, and refuses the whole database as corrupt. The snapshot is only a shortcut
/// for recovery (without it sled reads its log from the start, as for a store that never wrote
/// one), so removing the unfinished file loses nothing. Seen after a full disk under load
/// (`examples/full_disk_soak.rs`): every reopen failed with "Read corrupted data", and the next
/// start would have quarantined a store whose records were all intact.
///
/// # Errors
///
/// [`StoreError::Io`] if the directory cannot be listed or a file cannot be removed.
pub(crate) fn remove_unfinished_snapshots(dir: &Path) -> Result<usize, StoreError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(source) => {
            return Err(StoreError::Io {
                path: dir.to_owned(),
                source,
            })
        }
    };
    let mut removed = 0;
    for entry in entries {
        let entry = entry.map_err(|source| StoreError::Io {
            path: dir.to_owned(),
            source,
        })?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("snap.") && name.ends_with(".generating") {
            let path = entry.path();
            match std::fs::remove_file(&path) {
                Ok(()) => removed += 1,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => return Err(StoreError::Io { path, source }),
            }
        }
    }
    Ok(removed)
}

/// Waits until nobody holds the `flock` sled takes on `db` (or `wait` passed). A missing file is
/// fine (a new store). The lock is released again at once: sled takes it itself. Public for
/// tools and tests that open a store's sled files directly, right after an `Outbox` closed.
pub fn wait_for_lock(db: &Path, wait: Duration) -> Result<(), StoreError> {
    use fs2::FileExt;
    let file = match File::open(db) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(StoreError::Io {
                path: db.to_owned(),
                source,
            })
        }
    };
    let deadline = std::time::Instant::now() + wait;
    loop {
        match file.try_lock_exclusive() {
            Ok(()) => {
                let _ = FileExt::unlock(&file);
                return Ok(());
            }
            Err(e) if e.kind() == fs2::lock_contended_error().kind() => {
                if std::time::Instant::now() >= deadline {
                    return Err(StoreError::Locked {
                        path: db.parent().unwrap_or(db).to_owned(),
                    });
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(source) => {
                return Err(StoreError::Io {
                    path: db.to_owned(),
                    source,
                })
            }
        }
    }
}

/// Held bytes of a pending record besides its sealed value: its 8-byte key and its `index`
/// entry (32-byte key, 8-byte seq).
const PENDING_OVERHEAD: usize = 8 + INDEX_ENTRY_LEN;
/// Held bytes of an `index` entry: its 32-byte key and 8-byte seq.
const INDEX_ENTRY_LEN: usize = 32 + 8;
/// Held bytes of a dead letter besides its sealed value: its 8-byte key.
const DEAD_OVERHEAD: usize = 8;

/// Allocated bytes of every file under `dir`, recursively.
fn dir_disk_bytes(dir: &Path) -> Result<u64, (PathBuf, std::io::Error)> {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    let entries = std::fs::read_dir(dir).map_err(|e| (dir.to_owned(), e))?;
    for entry in entries {
        let entry = entry.map_err(|e| (dir.to_owned(), e))?;
        let path = entry.path();
        let meta = match entry.metadata() {
            Ok(m) => m,
            // sled removed it meanwhile (an old snapshot, a collected blob)
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err((path, e)),
        };
        if meta.is_dir() {
            total += dir_disk_bytes(&path)?;
        } else {
            // st_blocks is in 512-byte units whatever the filesystem's block size.
            total += meta.blocks() * 512;
        }
    }
    Ok(total)
}

/// The binding a `pending` or `dead` record is sealed with ([`KeySet::seal_bound`]).
fn binding_for(keys: &KeySet, id: Option<&[u8; 32]>) -> [u8; BINDING_LEN] {
    id.map_or([0; BINDING_LEN], |id| keys.binding(id))
}

/// Opens a `pending` record and checks that a version 3 record holds the reading its binding
/// names.
fn open_pending_with(keys: &KeySet, seq: u64, raw: &[u8]) -> Result<PendingEnvelope, &'static str> {
    let plain = keys
        .open(&record_key(TREE_PENDING, &seq.to_be_bytes()), raw)
        .map_err(|_| "does not authenticate")?;
    let envelope: PendingEnvelope =
        postcard::from_bytes(&plain).map_err(|_| "envelope does not decode")?;
    match KeySet::binding_of(raw) {
        Some(b) if b != keys.binding(&envelope.id) => Err("binding does not match its reading"),
        _ => Ok(envelope),
    }
}

/// As [`open_pending_with`], for a `dead` record.
fn open_dead_with(keys: &KeySet, seq: u64, raw: &[u8]) -> Result<DeadEnvelope, &'static str> {
    let plain = keys
        .open(&record_key(TREE_DEAD, &seq.to_be_bytes()), raw)
        .map_err(|_| "does not authenticate")?;
    let d: DeadEnvelope = postcard::from_bytes(&plain).map_err(|_| "envelope does not decode")?;
    match KeySet::binding_of(raw) {
        Some(b) if b != binding_for(keys, d.id.as_ref()) => {
            Err("binding does not match its reading")
        }
        _ => Ok(d),
    }
}

/// The key a record is sealed under: tree name, `0x00`, sled key (module doc of [`crate::store`]).
fn record_key(tree: &str, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(tree.len() + 1 + key.len());
    k.extend_from_slice(tree.as_bytes());
    k.push(0);
    k.extend_from_slice(key);
    k
}

fn parse_seq(bytes: &[u8]) -> Option<u64> {
    <[u8; 8]>::try_from(bytes).ok().map(u64::from_be_bytes)
}

fn now_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn from_ms(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest::digest(&digest::SHA256, bytes).as_ref());
    out
}

/// Inside a transaction: removes each planned `(index key, seq)` record that is still the
/// pending one for its id (its index entry names `seq`), and leaves its tombstone (`acked`, at
/// `now`). Returns the sequence numbers removed, each with the size of the sealed record it
/// removed. The consent purge's, inside its transaction (acks retire in ordered batches:
/// `SledOutbox::retire_planned`).
fn retire(
    pending: &sled::transaction::TransactionalTree,
    index: &sled::transaction::TransactionalTree,
    acked: &sled::transaction::TransactionalTree,
    plan: &[([u8; 32], u64)],
    now: &[u8; 8],
) -> ConflictableTransactionResult<Vec<(u64, usize)>, StoreError> {
    let mut removed = Vec::with_capacity(plan.len());
    for (mac, seq) in plan {
        let key = seq.to_be_bytes();
        if index.get(mac)?.as_deref() == Some(&key[..]) {
            let len = pending.remove(&key[..])?.map_or(0, |raw| raw.len());
            index.remove(&mac[..])?;
            acked.insert(&mac[..], &now[..])?;
            removed.push((*seq, len));
        }
    }
    Ok(removed)
}

fn truncate_str(s: &str, max: usize) -> String {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> StoreKey {
        StoreKey::from_bytes([9; 32])
    }

    /// Found by the full-disk soak (`examples/full_disk_soak.rs`): sled 0.34 leaves
    /// `snap.<lsn>.generating` behind when a snapshot write fails (a full disk), and its open
    /// then refuses the whole database ("Read corrupted data"), so every reopen failed and the
    /// next start would have quarantined a store whose records were intact. The open removes
    /// such files (an empty one, as ENOSPC leaves it, and a cut-short one) and keeps everything.
    #[test]
    fn an_unfinished_snapshot_left_by_a_failed_write_does_not_make_the_store_unopenable() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = SledOutbox::open(dir.path(), key(), OutboxOptions::default()).unwrap();
            for n in 0..20u8 {
                assert_eq!(
                    store.insert([n; 32], &u32::from(n)).unwrap(),
                    Insert::Stored
                );
            }
            store.ack(&[[3; 32]]).unwrap();
        }
        let before = crate::telemetry::COUNTERS
            .store_unfinished_snapshots_removed
            .load(Ordering::Relaxed);
        let empty = dir.path().join("snap.00000000004FFDE8.generating");
        let cut = dir.path().join("snap.0000000000FFFFFF.generating");
        std::fs::write(&empty, b"").unwrap();
        std::fs::write(&cut, [0x5a; 100]).unwrap();
        // What sled itself does with them (why the open removes them first).
        {
            let raw = sled::Config::new().path(dir.path()).open();
            assert!(
                matches!(raw, Err(sled::Error::Corruption { .. })),
                "sled 0.34 no longer refuses an unfinished snapshot: {:?}",
                raw.map(|_| ())
            );
        }
        let store = SledOutbox::open(dir.path(), key(), OutboxOptions::default()).unwrap();
        assert!(!empty.exists() && !cut.exists());
        let mut pending: Vec<u32> = store
            .pending::<u32>(usize::MAX)
            .unwrap()
            .into_iter()
            .map(|r| r.value)
            .collect();
        pending.sort_unstable();
        assert_eq!(pending, (0..20).filter(|n| *n != 3).collect::<Vec<u32>>());
        assert_eq!(store.insert([3; 32], &3u32).unwrap(), Insert::Duplicate);
        let after = crate::telemetry::COUNTERS
            .store_unfinished_snapshots_removed
            .load(Ordering::Relaxed);
        assert!(after > before, "the removal is counted");
    }

    /// Found by the MemStore conformance test: a batch with three identifier collisions
    /// failed whole (`Corrupt`, "did not settle") on every delivery. Each collision is a dead
    /// letter, the rest of the batch is stored.
    #[test]
    fn a_batch_with_many_identifier_collisions_keeps_each_as_a_dead_letter() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledOutbox::open(dir.path(), key(), OutboxOptions::default()).unwrap();
        let held: Vec<NewRecord<'_, &str>> = (0..5u8)
            .map(|n| NewRecord {
                id: [n; 32],
                identity: Some(["obs-0", "obs-1", "obs-2", "obs-3", "obs-4"][n as usize]),
                delivery: None,
                value: &"first",
            })
            .collect();
        assert!(store
            .insert_records(&held)
            .unwrap()
            .iter()
            .all(|o| *o == Insert::Stored));
        // Five other readings under the same five identifiers, and one new one.
        let mut batch: Vec<NewRecord<'_, &str>> = held
            .iter()
            .map(|r| NewRecord {
                id: [r.id[0] + 100; 32],
                identity: r.identity,
                delivery: None,
                value: &"second",
            })
            .collect();
        batch.push(NewRecord {
            id: [200; 32],
            identity: Some("obs-new"),
            delivery: None,
            value: &"new",
        });
        let outcomes = store.insert_records(&batch).unwrap();
        let collisions = outcomes
            .iter()
            .filter(|o| {
                matches!(
                    o,
                    Insert::DeadLettered {
                        reason: DeadReason::IdentifierCollision,
                        ..
                    }
                )
            })
            .count();
        assert_eq!(collisions, 5, "{outcomes:?}");
        assert_eq!(outcomes[5], Insert::Stored);
        let stats = store.stats().unwrap();
        assert_eq!((stats.pending, stats.dead), (6, 5));
    }

    /// Export marks: readings stay pending; the marks count only pending readings; an ack
    /// removes them; the export record opens only under the store's key and its own file id.
    #[test]
    fn exported_readings_stay_pending_until_acked_and_their_marks_go_with_the_ack() {
        let dir = tempfile::tempdir().unwrap();
        let store =
            SledOutbox::open(&dir.path().join("s"), key(), OutboxOptions::default()).unwrap();
        let ids: Vec<[u8; 32]> = (1..=3u8).map(|i| [i; 32]).collect();
        for id in &ids {
            assert_eq!(
                store.insert(*id, &u32::from(id[0])).unwrap(),
                Insert::Stored
            );
        }
        let file = [7u8; 16];
        let unknown = [99u8; 32];
        let mut marked_ids = ids.clone();
        marked_ids.push(unknown);
        let marked = store
            .record_export(&file, b"receipt key etc", &marked_ids, SystemTime::now())
            .unwrap();
        assert_eq!(marked, 3, "an id that is not pending is not marked");
        assert_eq!(store.stats().unwrap().pending, 3);
        assert_eq!(store.exported_pending().unwrap().get(&file), Some(&3));
        assert_eq!(store.exported_in(&ids[0]).unwrap(), Some(file));
        assert_eq!(
            store.export_record(&file).unwrap().unwrap(),
            b"receipt key etc"
        );
        assert_eq!(store.export_record(&[8; 16]).unwrap(), None);
        assert_eq!(store.ack(&ids[..2]).unwrap(), 2);
        assert_eq!(store.exported_pending().unwrap().get(&file), Some(&1));
        assert_eq!(store.exported_in(&ids[0]).unwrap(), None);
        assert_eq!(
            store.exported.len(),
            1,
            "the acked readings' marks are gone"
        );
        // A second export of the remaining reading moves its mark.
        store
            .record_export(&[8; 16], b"second", &ids[2..], SystemTime::now())
            .unwrap();
        assert_eq!(store.exported_in(&ids[2]).unwrap(), Some([8; 16]));
        assert_eq!(store.exported_pending().unwrap().len(), 1);
    }

    /// `ack_read` trusts the sequence number only as far as the index entry inside the
    /// transaction confirms it: another reading's, a stale one (the reading dead-lettered and
    /// requeued under a new one) or one no record has ack nothing, leave every reading
    /// pending with its export mark and its bytes; the right one acks exactly its reading.
    #[test]
    fn ack_read_with_a_wrong_sequence_number_acks_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store =
            SledOutbox::open(&dir.path().join("s"), key(), OutboxOptions::default()).unwrap();
        for n in 1..=3u8 {
            assert_eq!(
                store.insert([n; 32], &u32::from(n)).unwrap(),
                Insert::Stored
            );
        }
        store
            .record_export(&[7; 16], b"receipt", &[[1; 32], [2; 32]], SystemTime::now())
            .unwrap();
        let read = store.pending::<u32>(10).unwrap();
        let seq: HashMap<[u8; 32], u64> = read.iter().map(|r| (r.id, r.seq)).collect();
        let (a, b, c) = ([1u8; 32], [2u8; 32], [3u8; 32]);
        let held = store.held_bytes();

        // Another reading's sequence number, one past the last, one no record ever had.
        let wrong = [(a, seq[&b]), (b, seq[&c]), (c, seq[&c] + 1), (a, u64::MAX)];
        assert_eq!(store.ack_read(&wrong).unwrap(), 0);
        assert_eq!(store.pending::<u32>(10).unwrap().len(), 3);
        assert_eq!(store.held_bytes(), held);
        assert_eq!(store.exported_in(&a).unwrap(), Some([7; 16]));
        assert_eq!(store.exported_in(&b).unwrap(), Some([7; 16]));
        assert_eq!(store.insert(a, &1u32).unwrap(), Insert::Duplicate);

        // A stale one: `b` dead-lettered and requeued is pending under a new sequence number.
        store.dead_letter(&b, "test").unwrap();
        let dead = store.dead_letters().unwrap();
        assert_eq!(dead.len(), 1);
        store
            .requeue_dead_letter::<u32>(dead[0].seq, |_| None)
            .unwrap();
        let b_now = store
            .pending::<u32>(10)
            .unwrap()
            .into_iter()
            .find(|r| r.id == b)
            .unwrap()
            .seq;
        assert_ne!(b_now, seq[&b]);
        assert_eq!(store.ack_read(&[(b, seq[&b])]).unwrap(), 0);
        assert_eq!(store.pending::<u32>(10).unwrap().len(), 3);

        // The right ones ack exactly their readings, once, durably counted and tombstoned,
        // and release exactly their bytes.
        store.recount_held_bytes().unwrap();
        assert_eq!(store.ack_read(&[(a, seq[&a]), (b, b_now)]).unwrap(), 2);
        let counted = store.held_bytes();
        assert_eq!(counted, store.recount_held_bytes().unwrap());
        assert_eq!(store.ack_read(&[(a, seq[&a])]).unwrap(), 0, "already acked");
        let left: Vec<u32> = store
            .pending::<u32>(10)
            .unwrap()
            .into_iter()
            .map(|r| r.value)
            .collect();
        assert_eq!(left, vec![3]);
        assert_eq!(store.exported_in(&a).unwrap(), None);
        assert_eq!(store.insert(a, &1u32).unwrap(), Insert::Duplicate);
        assert_eq!(store.insert(b, &2u32).unwrap(), Insert::Duplicate);
        drop(store);
        let store = reopen(&dir.path().join("s"));
        assert_eq!(store.pending::<u32>(10).unwrap().len(), 1, "durable");
    }

    /// An ack is three ordered batches, not a transaction: every state it can stop in (a
    /// crash, an I/O error) keeps the reading either pending or a duplicate, and a later ack,
    /// prune or reopen finishes it. Also the state no prefix of those writes gives (a record
    /// whose index entry is gone, no tombstone): its ack opens it and removes it, and only with
    /// its own id.
    #[test]
    fn every_state_an_ack_can_stop_in_keeps_the_reading_pending_or_a_duplicate() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        let store = SledOutbox::open(&path, key(), OutboxOptions::default()).unwrap();
        let ids: Vec<[u8; 32]> = (1..=4u8).map(|n| [n; 32]).collect();
        for (n, id) in ids.iter().enumerate() {
            assert_eq!(store.insert(*id, &(n as u32)).unwrap(), Insert::Stored);
        }
        let seq: HashMap<[u8; 32], u64> = store
            .pending::<u32>(10)
            .unwrap()
            .iter()
            .map(|r| (r.id, r.seq))
            .collect();
        let keys = store.keys();
        let mac = |id: &[u8; 32]| keys.index_key(id);
        let now = now_ms(SystemTime::now()).to_be_bytes();
        let (a, b, c, d) = (ids[0], ids[1], ids[2], ids[3]);
        // a: stopped after the tombstone.
        store.acked.insert(&mac(&a)[..], &now[..]).unwrap();
        // b: stopped after the record's removal (stale index entry).
        store.acked.insert(&mac(&b)[..], &now[..]).unwrap();
        store.pending.remove(seq[&b].to_be_bytes()).unwrap();
        // c: no prefix: the index entry gone, the record and no tombstone left.
        store.index.remove(&mac(&c)[..]).unwrap();
        store.make_durable().unwrap();
        drop(store);

        let store = reopen(&path);
        assert_eq!(
            pending_ids(&store),
            vec![a, c, d],
            "a is resent, b is gone, c is resent"
        );
        for id in [a, b] {
            assert_eq!(store.insert(id, &0u32).unwrap(), Insert::Duplicate);
        }
        // c's ack with another reading's id removes nothing; with its own, c goes.
        assert_eq!(store.ack_read(&[(d, seq[&c])]).unwrap(), 0);
        assert_eq!(store.ack_read(&[(c, seq[&c])]).unwrap(), 1);
        // a's resend is acked; b's stale entry acks nothing and goes.
        assert_eq!(store.ack_read(&[(a, seq[&a]), (b, seq[&b])]).unwrap(), 1);
        assert!(store.index.get(&mac(&b)[..]).unwrap().is_none());
        for id in [a, b, c] {
            assert_eq!(store.insert(id, &0u32).unwrap(), Insert::Duplicate);
        }
        assert_eq!(pending_ids(&store), vec![d]);
        assert_eq!(store.stats().unwrap().pending, 1);
        // The bytes released are those that left, in these states too.
        assert_eq!(store.held_bytes(), store.recount_held_bytes().unwrap());
        drop(store);
        assert_eq!(
            reopen(&path).pending::<u32>(10).unwrap().len(),
            1,
            "durable"
        );
    }

    /// A flush that fails leaves the batch in sled's memory: it must not be readable as
    /// pending, or the uploader would send readings whose source was never acknowledged.
    /// Once a later flush succeeds (the source's redelivery, a retry), they are.
    #[test]
    fn records_a_failed_flush_left_in_memory_are_not_pending_until_a_flush_succeeds() {
        let dir = tempfile::tempdir().unwrap();
        let o = SledOutbox::open(dir.path(), key(), OutboxOptions::default()).unwrap();
        o.insert([1; 32], &1u32).unwrap();
        o.fail_flush.store(true, Ordering::Relaxed);
        assert!(o.insert([2; 32], &2u32).is_err());
        let read = |o: &SledOutbox| -> Vec<u32> {
            let (v, _) = o.pending_where::<u32>(10, |_| true).unwrap();
            assert_eq!(
                o.pending::<u32>(10).unwrap().len(),
                v.len(),
                "pending and pending_where agree"
            );
            v.into_iter().map(|r| r.value).collect()
        };
        assert_eq!(read(&o), vec![1], "the unflushed record is not pending");
        o.fail_flush.store(false, Ordering::Relaxed);
        // The source redelivers: a duplicate of the record in memory, and this flush succeeds.
        assert_eq!(o.insert([2; 32], &2u32).unwrap(), Insert::Duplicate);
        assert_eq!(read(&o), vec![1, 2]);
        drop(o);
        let o = SledOutbox::open(dir.path(), key(), OutboxOptions::default()).unwrap();
        assert_eq!(read(&o), vec![1, 2], "and after a reopen");
        o.insert([3; 32], &3u32).unwrap();
        assert_eq!(
            read(&o),
            vec![1, 2, 3],
            "new records after a reopen are read"
        );
    }

    fn reopen(dir: &Path) -> SledOutbox {
        wait_for_lock(&dir.join("db"), Duration::from_secs(10)).unwrap();
        SledOutbox::open(dir, key(), OutboxOptions::default()).unwrap()
    }

    /// The ids of the pending records, oldest first.
    fn pending_ids(o: &SledOutbox) -> Vec<[u8; 32]> {
        o.pending::<u32>(10_000)
            .unwrap()
            .iter()
            .map(|r| r.id)
            .collect()
    }

    fn values(o: &SledOutbox) -> Vec<u32> {
        let mut v: Vec<u32> = o
            .pending::<u32>(10_000)
            .unwrap()
            .into_iter()
            .map(|r| r.value)
            .collect();
        v.sort_unstable();
        v
    }

    fn reseal_all(o: &SledOutbox) -> usize {
        let (mut total, mut cursor) = (0, Some(ResealCursor::default()));
        while let Some(c) = cursor {
            let (n, next) = o.reseal_batch(c, 7).unwrap();
            total += n;
            cursor = next;
        }
        total
    }

    /// What `vitalgate keys rotate` does to the file.
    fn rotate_file(dir: &Path, alg: Alg) -> u32 {
        let mut ring = Keyring::load(dir, &key()).unwrap().unwrap();
        let id = ring.rotate(&key(), alg, 1).unwrap();
        ring.save(dir, &key()).unwrap();
        id
    }

    #[test]
    fn rotation_seals_new_records_with_the_new_key_at_once_and_reseals_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let o = SledOutbox::open(dir.path(), key(), OutboxOptions::default()).unwrap();
        for n in 0..5u32 {
            o.insert([n as u8; 32], &n).unwrap();
        }
        o.dead_letter(&[0; 32], "test").unwrap();
        assert_eq!(o.key_usage().unwrap(), [(1, 5)].into());
        assert_eq!(o.reload_keyring().unwrap(), None, "nothing changed");
        assert_eq!(rotate_file(dir.path(), Alg::Aes256Gcm), 2);
        assert_eq!(o.reload_keyring().unwrap(), Some(2));
        for n in 5..10u32 {
            o.insert([n as u8; 32], &n).unwrap();
        }
        assert_eq!(o.key_usage().unwrap(), [(1, 5), (2, 5)].into());
        assert_eq!(
            values(&o),
            (1..10).collect::<Vec<_>>(),
            "every record reads"
        );
        assert_eq!(reseal_all(&o), 5);
        assert_eq!(o.key_usage().unwrap(), [(2, 10)].into());
        assert_eq!(values(&o), (1..10).collect::<Vec<_>>());
        assert_eq!(o.dead_letters().unwrap().len(), 1, "the dead letter reads");
        assert_eq!(o.ack(&[[3; 32]]).unwrap(), 1, "acks find resealed records");
        drop(o);
        let o = reopen(dir.path());
        assert_eq!(o.active_key_id(), 2);
        assert_eq!(values(&o), vec![1, 2, 4, 5, 6, 7, 8, 9]);
        assert_eq!(o.corrupt_records.load(Ordering::Relaxed), 0);
    }

    /// Sealed record version 3: a pending record holding another reading than the one its
    /// binding names (only a holder of the keys could seal it: a writer's bug, a record spliced
    /// from a key-holding tool) is quarantined with its reason, and the others flow.
    #[test]
    fn a_record_whose_reading_is_not_the_one_it_is_bound_to_is_quarantined() {
        let dir = tempfile::tempdir().unwrap();
        let o = reopen(dir.path());
        let ids: Vec<[u8; 32]> = (0..3u32).map(|n| sha256(&n.to_be_bytes())).collect();
        for (n, id) in ids.iter().enumerate() {
            o.insert(*id, &(n as u32)).unwrap();
        }
        let records: Vec<(sled::IVec, sled::IVec)> =
            o.pending.iter().map(|kv| kv.unwrap()).collect();
        for (_, v) in &records {
            assert_eq!(v[0], super::super::codec::SEALED_VERSION_V3);
        }
        // Reading 1's record, sealed again bound to reading 0.
        let (k, v) = &records[1];
        let rk = record_key(TREE_PENDING, k);
        let keys = o.keys();
        let plain = keys.open(&rk, v).unwrap();
        let forged = keys.seal_bound(&rk, &keys.binding(&ids[0]), &plain, o.next_id().unwrap());
        assert!(keys.open(&rk, &forged).is_ok(), "it authenticates");
        o.pending.insert(k, forged).unwrap();
        assert_eq!(values(&o), vec![0, 2]);
        assert_eq!(o.corrupt_records.load(Ordering::Relaxed), 1);
        assert_eq!(o.stats().unwrap().quarantined, 1);
        // Binding a record to its reading cannot be skipped by relabelling the header either.
        let (k, v) = &records[2];
        let mut rebound = v.to_vec();
        rebound[5..21].copy_from_slice(&keys.binding(&ids[0]));
        o.pending.insert(k, rebound).unwrap();
        assert_eq!(values(&o), vec![0]);
        assert_eq!(o.corrupt_records.load(Ordering::Relaxed), 2);
    }

    /// A store format 5 record (version 2: not bound) opens as before and is re-sealed bound.
    #[test]
    fn unbound_records_are_resealed_bound_to_their_reading() {
        let dir = tempfile::tempdir().unwrap();
        let o = reopen(dir.path());
        for n in 0..20u32 {
            o.insert(sha256(&n.to_be_bytes()), &n).unwrap();
        }
        o.dead_letter(&sha256(&3u32.to_be_bytes()), "x").unwrap();
        let keys = o.keys();
        for tree in [&o.pending, &o.dead] {
            for kv in tree.iter() {
                let (k, v) = kv.unwrap();
                let name = if std::ptr::eq(tree, &o.pending) {
                    TREE_PENDING
                } else {
                    TREE_DEAD
                };
                let rk = record_key(name, &k);
                let plain = keys.open(&rk, &v).unwrap();
                tree.insert(&k, keys.seal(&rk, &plain, o.next_id().unwrap()))
                    .unwrap();
            }
        }
        assert_eq!(values(&o).len(), 19, "version 2 records read");
        assert_eq!(reseal_all(&o), 20);
        for tree in [&o.pending, &o.dead] {
            for kv in tree.iter() {
                let (_, v) = kv.unwrap();
                assert!(KeySet::binding_of(&v).is_some());
            }
        }
        assert_eq!(values(&o).len(), 19);
        assert_eq!(o.dead_letters().unwrap().len(), 1);
        assert_eq!(o.corrupt_records.load(Ordering::Relaxed), 0);
        assert_eq!(reseal_all(&o), 0, "nothing left to re-seal");
    }

    #[test]
    fn nonces_never_repeat_under_one_key_across_writes_reopens_and_reseals() {
        let dir = tempfile::tempdir().unwrap();
        let mut n = 0u32;
        for round in 0..3 {
            let o = reopen(dir.path());
            for _ in 0..300 {
                o.insert(sha256(&n.to_be_bytes()), &n).unwrap();
                n += 1;
            }
            if round == 1 {
                rotate_file(dir.path(), Alg::ChaCha20Poly1305);
                o.reload_keyring().unwrap();
                reseal_all(&o);
            }
            // Dead letters are sealed too.
            o.dead_letter(&sha256(&(n - 1).to_be_bytes()), "x").unwrap();
        }
        let o = reopen(dir.path());
        let mut seen = std::collections::HashSet::new();
        let mut count = 0;
        for tree in [&o.pending, &o.dead] {
            for item in tree.iter() {
                let (_, v) = item.unwrap();
                assert_eq!(v[0], super::super::codec::SEALED_VERSION_V3);
                // key id (1..5) and nonce (after the 16-byte binding: 21..33)
                let mut key_and_nonce = v[1..5].to_vec();
                key_and_nonce.extend_from_slice(&v[21..33]);
                assert!(seen.insert(key_and_nonce), "a nonce repeated under one key");
                count += 1;
            }
        }
        assert_eq!(count, 900);
    }

    /// A store written by a format 4 build: version 1 records under the key derived from the
    /// store key, no keyring. It opens, gets a keyring, reads, and is re-sealed.
    #[test]
    fn a_format_4_store_gets_a_keyring_and_its_records_are_resealed_under_a_data_key() {
        let dir = tempfile::tempdir().unwrap();
        {
            let o = SledOutbox::open(dir.path(), key(), OutboxOptions::default()).unwrap();
            for n in 0..20u32 {
                o.insert([n as u8; 32], &n).unwrap();
            }
            // Rewrite as the format 4 build did.
            let legacy = RecordCipher::new(&key()).unwrap();
            let keys = o.keys();
            for item in o.pending.iter() {
                let (k, v) = item.unwrap();
                let rk = record_key(TREE_PENDING, &k);
                let plain = keys.open(&rk, &v).unwrap();
                o.pending
                    .insert(&k, legacy.seal(&rk, &plain).unwrap())
                    .unwrap();
            }
            o.meta.remove(META_KEYRING).unwrap();
            o.meta.insert(META_FORMAT, &[4u8][..]).unwrap();
            o.make_durable().unwrap();
        }
        std::fs::remove_file(dir.path().join(KEYRING_FILE)).unwrap();
        let o = reopen(dir.path());
        assert!(dir.path().join(KEYRING_FILE).exists(), "a keyring was made");
        assert_eq!(
            o.meta.get(META_FORMAT).unwrap().unwrap().as_ref(),
            [FORMAT_VERSION]
        );
        assert_eq!(o.key_usage().unwrap(), [(0, 20)].into());
        assert_eq!(values(&o), (0..20).collect::<Vec<_>>());
        assert_eq!(reseal_all(&o), 20);
        assert_eq!(o.key_usage().unwrap(), [(1, 20)].into());
        assert_eq!(values(&o), (0..20).collect::<Vec<_>>());
    }

    #[test]
    fn a_lost_keyring_file_comes_back_from_the_store_copy_and_losing_both_is_damage() {
        let dir = tempfile::tempdir().unwrap();
        {
            let o = SledOutbox::open(dir.path(), key(), OutboxOptions::default()).unwrap();
            o.insert([1; 32], &1u32).unwrap();
            rotate_file(dir.path(), Alg::ChaCha20Poly1305);
            o.reload_keyring().unwrap();
            o.insert([2; 32], &2u32).unwrap();
        }
        let file = dir.path().join(KEYRING_FILE);
        let good = std::fs::read(&file).unwrap();
        // Damaged, then missing: both restored from the copy, every record reads.
        let mut bad = good.clone();
        bad[10] ^= 1;
        std::fs::write(&file, &bad).unwrap();
        assert_eq!(values(&reopen(dir.path())), vec![1, 2]);
        assert_eq!(std::fs::read(&file).unwrap(), good);
        std::fs::remove_file(&file).unwrap();
        assert_eq!(values(&reopen(dir.path())), vec![1, 2]);
        assert_eq!(std::fs::read(&file).unwrap(), good);
        // Both gone: refused as damage (the daemon quarantines the store), not replaced by a
        // new keyring under which nothing would open.
        {
            let o = reopen(dir.path());
            o.meta.remove(META_KEYRING).unwrap();
            o.make_durable().unwrap();
        }
        std::fs::remove_file(&file).unwrap();
        wait_for_lock(&dir.path().join("db"), Duration::from_secs(10)).unwrap();
        let err = SledOutbox::open(dir.path(), key(), OutboxOptions::default())
            .err()
            .unwrap();
        assert!(matches!(err, StoreError::KeyringLost { .. }), "{err}");
        assert!(err.is_damage());
        assert!(!file.exists(), "no new keyring was written");
    }

    #[test]
    fn a_keyring_that_drops_a_key_in_use_or_is_forged_is_refused_and_the_old_keys_stay() {
        let dir = tempfile::tempdir().unwrap();
        let o = SledOutbox::open(dir.path(), key(), OutboxOptions::default()).unwrap();
        o.insert([1; 32], &1u32).unwrap();
        let mut ring = Keyring::load(dir.path(), &key()).unwrap().unwrap();
        ring.rotate(&key(), Alg::ChaCha20Poly1305, 1).unwrap();
        ring.keys.remove(0);
        ring.save(dir.path(), &key()).unwrap();
        let err = o.reload_keyring().unwrap_err();
        assert!(
            matches!(err, StoreError::KeyringDropsKey { id: 1, .. }),
            "{err}"
        );
        // Written under another store key: does not authenticate.
        let other = StoreKey::from_bytes([1; 32]);
        Keyring::new(&other, Alg::ChaCha20Poly1305, 1)
            .unwrap()
            .save(dir.path(), &other)
            .unwrap();
        assert!(o.reload_keyring().is_err());
        assert_eq!(o.active_key_id(), 1);
        o.insert([2; 32], &2u32).unwrap();
        assert_eq!(values(&o), vec![1, 2]);
    }

    #[test]
    fn a_keyring_that_replaces_a_key_in_use_is_refused_and_at_open_the_store_copy_wins() {
        let dir = tempfile::tempdir().unwrap();
        {
            let o = SledOutbox::open(dir.path(), key(), OutboxOptions::default()).unwrap();
            o.insert([1; 32], &1u32).unwrap();
            assert_eq!(rotate_file(dir.path(), Alg::ChaCha20Poly1305), 2);
            assert_eq!(o.reload_keyring().unwrap(), Some(2));
            o.insert([2; 32], &2u32).unwrap();
            // Another key 2 (two rotations racing without the lock would do this).
            let mut ring = Keyring::load(dir.path(), &key()).unwrap().unwrap();
            ring.keys.retain(|k| k.id != 2);
            assert_eq!(ring.rotate(&key(), Alg::ChaCha20Poly1305, 2).unwrap(), 2);
            ring.save(dir.path(), &key()).unwrap();
            let err = o.reload_keyring().unwrap_err();
            assert!(
                matches!(err, StoreError::KeyringDropsKey { id: 2, .. }),
                "{err}"
            );
            o.insert([3; 32], &3u32).unwrap();
            assert_eq!(values(&o), vec![1, 2, 3]);
        }
        // At open the file does not hold the store's key 2: the store's copy is used and
        // written back; every record opens.
        let o = reopen(dir.path());
        assert_eq!(values(&o), vec![1, 2, 3]);
        assert_eq!(o.corrupt_records.load(Ordering::Relaxed), 0);
        let file = Keyring::load(dir.path(), &key()).unwrap().unwrap();
        let copy = Keyring::decode(
            &o.meta.get(META_KEYRING).unwrap().unwrap(),
            &key(),
            Path::new("k"),
        )
        .unwrap();
        assert_eq!(file, copy);
    }
}
