//! The encrypted outbox.
//!
//! # On-disk format
//!
//! A sled 0.34.7 database in `<data_dir>/outbox/` with these trees:
//!
//! | tree | key | value |
//! |---|---|---|
//! | `pending` | `seq` (u64 big-endian, from `generate_id`: FIFO order) | sealed `postcard((id: [u8; 32], reading))` |
//! | `index` | `id` (32 bytes, the reading's content id) | `seq` of its pending record |
//! | `acked` | `id` | u64 BE unix seconds when uploaded (or dead-lettered), then `0`/`1` (acked/dead) |
//! | `dead` | `seq` | sealed `postcard(DeadLetter)`: time, source, reason, id, payload |
//! | `quarantine` | `<tree>/<seq>` | the raw sealed bytes of a record that failed to open |
//! | `meta` | `format` | `1` |
//!
//! Sealing ([`codec`]): ChaCha20-Poly1305 with a random nonce; the associated data is the
//! tree name and the sled key, so a value moved to another key fails to open.
//!
//! # Invariants
//!
//! - A record is in `pending` iff its id is in `index` (both change in one sled transaction).
//! - A call that returns `Ok` after writing has flushed sled **and fsynced sled's data file**
//!   (`<dir>/db`): sled 0.34's `flush` writes but does not fsync on Linux (sled issues #1452,
//!   #1351). Callers acknowledge upstream only after such a call.
//! - Nothing is ever deleted except by [`Outbox::ack`] (the server has it) and tombstone pruning
//!   (ids only, after `acked_retention`). Rejected readings go to `dead`; records that fail to
//!   open go to `quarantine` with their raw bytes.
//! - Every id stays recognisable as "seen" for `acked_retention` after upload, so a late
//!   redelivery of the same reading is a [`Insert::Duplicate`], not a second upload.

pub mod codec;
pub mod keyfile;

use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sled::transaction::{ConflictableTransactionError, TransactionError, Transactional};

pub use codec::{Codec, CodecError};
pub use keyfile::{KeyFileError, StoreKey};

/// Format version written to `meta/format`.
pub const FORMAT: u8 = 1;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("sled: {0}")]
    Sled(#[from] sled::Error),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("record codec: {0}")]
    Codec(#[from] CodecError),
    #[error("record encoding: {0}")]
    Encode(#[from] postcard::Error),
    #[error("no pending record with that id")]
    NotFound,
    #[error("store format {found} is not supported (expected {FORMAT})")]
    Format { found: u8 },
}

impl From<TransactionError<StoreError>> for StoreError {
    fn from(e: TransactionError<StoreError>) -> Self {
        match e {
            TransactionError::Abort(e) => e,
            TransactionError::Storage(e) => StoreError::Sled(e),
        }
    }
}

#[derive(Debug, Clone)]
pub struct OutboxOptions {
    pub cache_capacity_bytes: u64,
    pub acked_retention: Duration,
}

impl Default for OutboxOptions {
    fn default() -> Self {
        Self {
            cache_capacity_bytes: 16 * 1024 * 1024,
            acked_retention: Duration::from_secs(30 * 86_400),
        }
    }
}

/// The result of inserting one reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Insert {
    Stored,
    /// Already pending, or uploaded/dead-lettered within the retention window.
    Duplicate,
}

/// A pending record, as read back.
#[derive(Debug, Clone)]
pub struct PendingRecord<T> {
    pub seq: u64,
    pub id: [u8; 32],
    pub value: T,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    pub pending: u64,
    pub dead: u64,
    pub quarantined: u64,
    pub acked_tombstones: u64,
    pub inserted: u64,
    pub duplicates: u64,
    pub corrupt_records: u64,
}

#[derive(Serialize, Deserialize)]
struct DeadLetter {
    time: u64,
    source: String,
    reason: String,
    id: Option<[u8; 32]>,
    payload: Vec<u8>,
}

/// A dead letter as listed for a technician (no payload).
#[derive(Debug, Clone)]
pub struct DeadLetterInfo {
    pub seq: u64,
    pub time: u64,
    pub source: String,
    pub reason: String,
    pub size: usize,
}

impl fmt::Display for DeadLetterInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let when = chrono::DateTime::from_timestamp(i64::try_from(self.time).unwrap_or(0), 0)
            .map(|t| t.to_rfc3339())
            .unwrap_or_default();
        write!(
            f,
            "seq={} time={} source={} bytes={} reason={}",
            self.seq, when, self.source, self.size, self.reason
        )
    }
}

/// The outbox. Blocking calls: use from `spawn_blocking` in async code.
pub struct Outbox {
    db: sled::Db,
    pending: sled::Tree,
    index: sled::Tree,
    acked: sled::Tree,
    dead: sled::Tree,
    quarantine: sled::Tree,
    codec: Codec,
    data_file: Mutex<File>,
    data_path: PathBuf,
    retention: Duration,
    inserted: AtomicU64,
    duplicates: AtomicU64,
    corrupt: AtomicU64,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn aad(tree: &[u8], key: &[u8]) -> Vec<u8> {
    let mut v = tree.to_vec();
    v.push(b'/');
    v.extend_from_slice(key);
    v
}

type TxResult<T> = Result<T, ConflictableTransactionError<StoreError>>;

impl Outbox {
    /// Opens (or creates) the outbox in `dir`.
    pub fn open(dir: &Path, key: StoreKey, opts: OutboxOptions) -> Result<Self, StoreError> {
        let created = !dir.exists();
        let config = sled::Config::new()
            .path(dir)
            .cache_capacity(opts.cache_capacity_bytes)
            // LowSpace: less write amplification and disk use, which SD cards prefer.
            .mode(sled::Mode::LowSpace)
            // No background flusher: every write path flushes and fsyncs explicitly.
            .flush_every_ms(None);
        // sled's I/O threads may hold the file lock for a moment after a previous handle in
        // this process was dropped; another process holding it is a real error after 3 s.
        let deadline = std::time::Instant::now() + Duration::from_secs(3);
        let db = loop {
            match config.open() {
                Ok(db) => break db,
                Err(sled::Error::Io(e))
                    if e.to_string().contains("could not acquire lock")
                        && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => return Err(e.into()),
            }
        };
        if created {
            if let Some(parent) = dir.parent() {
                sync_dir(parent)?;
            }
        }
        let meta = db.open_tree("meta")?;
        match meta.get("format")? {
            Some(v) if v.as_ref() != [FORMAT] => {
                return Err(StoreError::Format {
                    found: v.first().copied().unwrap_or(0),
                })
            }
            Some(_) => {}
            None => {
                meta.insert("format", &[FORMAT])?;
            }
        }
        let data_path = dir.join("db");
        let data_file = File::open(&data_path).map_err(|e| StoreError::Io {
            path: data_path.clone(),
            source: e,
        })?;
        let outbox = Self {
            pending: db.open_tree("pending")?,
            index: db.open_tree("index")?,
            acked: db.open_tree("acked")?,
            dead: db.open_tree("dead")?,
            quarantine: db.open_tree("quarantine")?,
            db,
            codec: Codec::new(&key),
            data_file: Mutex::new(data_file),
            data_path,
            retention: opts.acked_retention,
            inserted: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            corrupt: AtomicU64::new(0),
        };
        outbox.prune_tombstones()?;
        outbox.sync()?;
        Ok(outbox)
    }

    /// Flush sled, then fsync its data file: only then is a write durable.
    pub fn sync(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        let f = self
            .data_file
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f.sync_data().map_err(|e| StoreError::Io {
            path: self.data_path.clone(),
            source: e,
        })
    }

    /// Inserts one reading and makes it durable.
    pub fn insert<T: Serialize>(&self, id: [u8; 32], value: &T) -> Result<Insert, StoreError> {
        let v = self.insert_many(&[(id, value)])?;
        Ok(v.first().copied().unwrap_or(Insert::Duplicate))
    }

    /// Inserts a batch with one transaction and one flush + fsync. Results are in input order.
    pub fn insert_many<T: Serialize>(
        &self,
        items: &[([u8; 32], T)],
    ) -> Result<Vec<Insert>, StoreError> {
        if items.is_empty() {
            return Ok(Vec::new());
        }
        // Seal outside the transaction (it may be retried on conflict).
        let mut prepared = Vec::with_capacity(items.len());
        for (id, value) in items {
            let seq = self.db.generate_id()?.to_be_bytes();
            let plain = postcard::to_stdvec(&(id, value))?;
            let sealed = self.codec.seal(&aad(b"pending", &seq), &plain)?;
            prepared.push((*id, seq, sealed));
        }
        let results = (&self.pending, &self.index, &self.acked).transaction(
            |(pending, index, acked)| -> TxResult<Vec<Insert>> {
                let mut out = Vec::with_capacity(prepared.len());
                for (id, seq, sealed) in &prepared {
                    if index.get(id)?.is_some() || acked.get(id)?.is_some() {
                        out.push(Insert::Duplicate);
                        continue;
                    }
                    pending.insert(&seq[..], sealed.as_slice())?;
                    index.insert(&id[..], &seq[..])?;
                    out.push(Insert::Stored);
                }
                Ok(out)
            },
        )?;
        self.sync()?;
        for r in &results {
            match r {
                Insert::Stored => self.inserted.fetch_add(1, Ordering::Relaxed),
                Insert::Duplicate => self.duplicates.fetch_add(1, Ordering::Relaxed),
            };
        }
        Ok(results)
    }

    /// Up to `limit` pending records in FIFO order. Records that fail to open or decode are
    /// moved to `quarantine` (raw bytes kept), counted, and skipped.
    pub fn pending<T: DeserializeOwned>(
        &self,
        limit: usize,
    ) -> Result<Vec<PendingRecord<T>>, StoreError> {
        let mut out = Vec::new();
        let mut bad = Vec::new();
        for entry in self.pending.iter() {
            if out.len() >= limit {
                break;
            }
            let (k, v) = entry?;
            let decoded = self
                .codec
                .open(&aad(b"pending", &k), &v)
                .map_err(StoreError::from)
                .and_then(|plain| {
                    postcard::from_bytes::<([u8; 32], T)>(&plain).map_err(StoreError::from)
                });
            match (decoded, <[u8; 8]>::try_from(k.as_ref())) {
                (Ok((id, value)), Ok(seq)) => out.push(PendingRecord {
                    seq: u64::from_be_bytes(seq),
                    id,
                    value,
                }),
                (Err(e), _) => bad.push((k, v, e.to_string())),
                (_, Err(_)) => bad.push((k, v, "malformed key".into())),
            }
        }
        for (k, v, why) in bad {
            self.quarantine_record(&k, &v, &why)?;
        }
        Ok(out)
    }

    fn quarantine_record(&self, key: &[u8], value: &[u8], why: &str) -> Result<(), StoreError> {
        let seq = <[u8; 8]>::try_from(key)
            .map(u64::from_be_bytes)
            .unwrap_or(0);
        tracing::warn!(seq, reason = %why, "outbox record cannot be opened; moved to quarantine (raw bytes kept)");
        self.corrupt.fetch_add(1, Ordering::Relaxed);
        let qkey = aad(b"pending", key);
        // The index entry pointing at this record (its id is unknown now) must go, or a
        // redelivery of the same reading would be refused as a duplicate and never uploaded.
        let stale: Vec<sled::IVec> = self
            .index
            .iter()
            .filter_map(Result::ok)
            .filter(|(_, v)| v.as_ref() == key)
            .map(|(k, _)| k)
            .collect();
        (&self.pending, &self.index, &self.quarantine).transaction(
            |(p, i, q)| -> TxResult<()> {
                q.insert(qkey.as_slice(), value)?;
                p.remove(key)?;
                for k in &stale {
                    i.remove(k)?;
                }
                Ok(())
            },
        )?;
        self.sync()
    }

    /// The server has these readings: remove them, keep their ids as tombstones. Durable.
    pub fn ack(&self, ids: &[[u8; 32]]) -> Result<(), StoreError> {
        let now = now_secs().to_be_bytes();
        (&self.pending, &self.index, &self.acked).transaction(|(p, i, a)| -> TxResult<()> {
            for id in ids {
                if let Some(seq) = i.remove(&id[..])? {
                    p.remove(seq)?;
                }
                let mut v = now.to_vec();
                v.push(0);
                a.insert(&id[..], v)?;
            }
            Ok(())
        })?;
        self.sync()
    }

    /// Moves a pending reading to the dead letters with the reason. Never deletes data.
    pub fn dead_letter(&self, id: [u8; 32], reason: &str) -> Result<(), StoreError> {
        let seq = self.index.get(id)?.ok_or(StoreError::NotFound)?;
        let sealed = self.pending.get(&seq)?.ok_or(StoreError::NotFound)?;
        let plain = self.codec.open(&aad(b"pending", &seq), &sealed)?;
        let dseq = self.db.generate_id()?.to_be_bytes();
        let letter = DeadLetter {
            time: now_secs(),
            source: "uplink".into(),
            reason: reason.into(),
            id: Some(id),
            payload: plain,
        };
        let dsealed = self
            .codec
            .seal(&aad(b"dead", &dseq), &postcard::to_stdvec(&letter)?)?;
        let mut tomb = now_secs().to_be_bytes().to_vec();
        tomb.push(1);
        (&self.pending, &self.index, &self.acked, &self.dead).transaction(
            |(p, i, a, d)| -> TxResult<()> {
                d.insert(&dseq[..], dsealed.as_slice())?;
                p.remove(&seq)?;
                i.remove(&id[..])?;
                a.insert(&id[..], tomb.as_slice())?;
                Ok(())
            },
        )?;
        self.sync()
    }

    /// Keeps a payload that could not be decoded (sealed: it may hold PHI). Durable.
    pub fn put_dead_letter_raw(
        &self,
        source: &str,
        payload: &[u8],
        reason: &str,
    ) -> Result<(), StoreError> {
        let dseq = self.db.generate_id()?.to_be_bytes();
        let letter = DeadLetter {
            time: now_secs(),
            source: source.into(),
            reason: reason.into(),
            id: None,
            payload: payload.to_vec(),
        };
        let sealed = self
            .codec
            .seal(&aad(b"dead", &dseq), &postcard::to_stdvec(&letter)?)?;
        self.dead.insert(dseq, sealed)?;
        self.sync()
    }

    fn open_dead(&self, k: &[u8], v: &[u8]) -> Result<DeadLetter, StoreError> {
        let plain = self.codec.open(&aad(b"dead", k), v)?;
        Ok(postcard::from_bytes(&plain)?)
    }

    /// Lists dead letters (no payloads).
    pub fn dead_letters(&self) -> Result<Vec<DeadLetterInfo>, StoreError> {
        let mut out = Vec::new();
        for entry in self.dead.iter() {
            let (k, v) = entry?;
            let seq = <[u8; 8]>::try_from(k.as_ref())
                .map(u64::from_be_bytes)
                .unwrap_or(0);
            match self.open_dead(&k, &v) {
                Ok(d) => out.push(DeadLetterInfo {
                    seq,
                    time: d.time,
                    source: d.source,
                    reason: d.reason,
                    size: d.payload.len(),
                }),
                Err(e) => out.push(DeadLetterInfo {
                    seq,
                    time: 0,
                    source: "?".into(),
                    reason: format!("cannot open dead letter: {e}"),
                    size: v.len(),
                }),
            }
        }
        Ok(out)
    }

    /// The payload of one dead letter (PHI: for a technician who asks).
    pub fn dead_letter_payload(&self, seq: u64) -> Result<Vec<u8>, StoreError> {
        let k = seq.to_be_bytes();
        let v = self.dead.get(k)?.ok_or(StoreError::NotFound)?;
        Ok(self.open_dead(&k, &v)?.payload)
    }

    /// Removes tombstones older than the retention window. Returns how many went.
    pub fn prune_tombstones(&self) -> Result<usize, StoreError> {
        let cutoff = now_secs().saturating_sub(self.retention.as_secs());
        let mut n = 0;
        for entry in self.acked.iter() {
            let (k, v) = entry?;
            let t = v
                .get(..8)
                .and_then(|b| <[u8; 8]>::try_from(b).ok())
                .map_or(0, u64::from_be_bytes);
            if t < cutoff {
                self.acked.remove(k)?;
                n += 1;
            }
        }
        Ok(n)
    }

    pub fn stats(&self) -> Stats {
        Stats {
            pending: self.pending.len() as u64,
            dead: self.dead.len() as u64,
            quarantined: self.quarantine.len() as u64,
            acked_tombstones: self.acked.len() as u64,
            inserted: self.inserted.load(Ordering::Relaxed),
            duplicates: self.duplicates.load(Ordering::Relaxed),
            corrupt_records: self.corrupt.load(Ordering::Relaxed),
        }
    }

    /// Raw access for tests that simulate on-disk corruption.
    #[doc(hidden)]
    pub fn raw_pending_tree(&self) -> &sled::Tree {
        &self.pending
    }
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StoreError::Io {
            path: dir.to_path_buf(),
            source: e,
        })
}
