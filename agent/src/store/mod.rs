//! The encrypted outbox: readings wait here, sealed, until the FHIR server has them.
//!
//! # On-disk format (store format version 6)
//!
//! History: 6 adds `meta/id_base`, added to every sled id of the store: a compacted store is a
//! fresh sled database ([`compact`]) whose ids would otherwise start again at 0 (a format 5
//! build would reuse sequence numbers and nonces there, so it must refuse the store); and
//! sealed record version 3 for `pending` and `dead`, which binds each record to its reading
//! (and so to the reading's device and patient: [`codec::SEALED_VERSION_V3`]). A format 5
//! store opens as format 6; its version 2 records still open, and the upkeep task re-seals
//! them bound. 5 seals records with data keys from the store's keyring (envelope encryption,
//! [`keyring`]; sealed record version 2, [`codec::KeySet`]); a format 3 or 4 store opens, gets
//! a keyring, and the daemon re-seals its version 1 records in the background
//! ([`crate::store_upkeep`]); records are readable throughout. 3 added `Reading::timing`,
//! `Reading::context` and the PHD device fields; 4 added the variant `TimeQuality::Corrected`
//! (the device clock read a corrected reading was corrected against, for the PHD Coincident
//! Timestamp Observation). 4 only appended an enum variant, and
//! postcard encodes a variant by its index, so every format 3 record is a valid format 4 record:
//! a format 3 store is opened and its format record rewritten to 4 (`upgraded` in the log), its
//! records untouched; an older build then refuses the store ([`StoreError::UnsupportedFormat`])
//! rather than quarantining records it cannot decode. Other versions are refused.
//!
//! A store is one directory (mode 0700) holding a sled 0.34.7 database (`<dir>/db` is the data
//! file, `<dir>/conf` sled's parameters, `<dir>/snap.*` its snapshots, `<dir>/blobs/` values too
//! large for a log segment), the keyring `keyring` (the data keys, wrapped by the store key:
//! [`keyring`]) and our marker file `vitalgate-store` ([`MARKER_FILE`], written after the
//! store's first open: a store that has it but no format record has lost its records).
//! Inside sled, these trees:
//!
//! | tree         | key                           | value                                        |
//! |--------------|-------------------------------|----------------------------------------------|
//! | `meta`       | `format`                      | `[6]`: the store format version              |
//! | `meta`       | `id_base`                     | u64 big-endian, added to every sled id (absent = 0): set by a compaction ([`compact`]) |
//! | `meta`       | `key_check`                   | sealed constant (version 1, legacy key): proves the store key is the right one |
//! | `meta`       | `keyring`                     | a copy of the `keyring` file, used if the file is lost or damaged |
//! | `meta`       | `purged`                      | pending records purged over the store's life (consent purge), u64 big-endian; absent = 0 |
//! | `pending`    | seq: u64 big-endian           | sealed postcard `PendingEnvelope { id, enqueued_at_ms, payload }`, `payload` = postcard of the caller's `T` |
//! | `index`      | `index_key(id)`: 32 bytes     | seq: u64 big-endian, the `pending` entry holding `id` |
//! | `acked`      | `index_key(id)`: 32 bytes     | time of ack / dead-lettering, ms since Unix epoch, u64 big-endian |
//! | `dead`       | seq: u64 big-endian           | sealed postcard `DeadEnvelope { time_ms, source, reason, id, original_len, payload_sha256, truncated, payload }` |
//! | `quarantine` | tree name, `0x00`, original key | the original value, byte for byte, never opened |
//! | `idents`     | `index_key(sha256("identity\0" ‖ identity))` | `index_key(id)` ‖ time of insert, ms, u64 big-endian: which record holds an upstream identity (FHIR Observation identifier) |
//! | `exports`    | export file id: 16 bytes      | sealed postcard `ExportRecord` ([`crate::export`]): the file's receipt key, time, counts, name |
//! | `exported`   | `index_key(id)`: 32 bytes     | export file id (16 bytes) ‖ time of export, ms, u64 big-endian: the pending reading went into that file and awaits confirmation |
//!
//! `exports` and `exported` were added without a format bump: they are new trees, an older build
//! never opens them (it ignores them), and no existing record changed. An `exported` mark is
//! advisory: it is read only together with `index` (a mark whose reading is no longer pending
//! means nothing), an ack removes it, and a reading stays pending until it is acked.
//!
//! "Sealed" is the [`codec`] format version 2: version byte, the data key's id, a 12-byte
//! nonce (a sled id of this store, never repeated, and 4 salt bytes), ciphertext and tag of the
//! data key's AEAD (ChaCha20-Poly1305 by default, AES-256-GCM with `store.cipher`), with AAD =
//! version byte ‖ key id ‖ tree name ‖ `0x00` ‖ sled key. `pending` and `dead` records are
//! version 3: the same plus a 16-byte **binding** after the key id, in the header and in the
//! AAD: the first 16 bytes of the reading id's `index_key` (zeros for a raw dead letter). The
//! reading id hashes the FHIR identifier (device, patient, type, time) and the values, so a
//! record bound to one reading cannot be relabelled to another, and a record whose content is
//! not the reading it is bound to is quarantined ("binding does not match its reading").
//! Records of format 4 and older are
//! version 1 (random nonce, ChaCha20-Poly1305 under a key derived from the store key: key id
//! 0) until re-sealed. `index_key` is
//! HMAC-SHA256 of the reading id under a key derived from the store key (reading ids are
//! content hashes of low-entropy data and are not written in clear). Sequence numbers come from
//! sled's `generate_id`, which is monotonic across restarts, so key order is arrival order and
//! `pending` is FIFO. (Every id is `meta/id_base` + sled's id: see [`compact`].)
//!
//! # Invariants
//!
//! 1. **Every record is authenticated.** Nothing read from `pending` or `dead` is used unless it
//!    opens under its own key; a record that does not is moved, unchanged, to `quarantine`
//!    (a warn log with tree, seq, size and reason only, and a counter). Nothing is ever deleted because it
//!    could not be read.
//! 2. **`index` ↔ `pending`.** `pending[seq]` holds the id whose `index_key` is `k` exactly
//!    when `index[k] = seq`; the two change only together, in one sled transaction. Two
//!    exceptions. Quarantine moves a record out in O(1) and leaves its index entry (the
//!    record's id cannot be read to find it). An ack writes, in this order, the tombstone, the
//!    record's removal and the index entry's removal (three batches, not a transaction: the ack
//!    stage takes 16 % less time), so a crash between them leaves the index entry.
//!    An entry whose `pending[seq]` is gone is *stale*, counts as absent everywhere, and is
//!    removed by `prune_tombstones` (at open and hourly). An ack of a record that has no index
//!    entry at all opens the record and compares its id.
//!    Before an ack or a dead-letter acts on `index[k]`, the record at `seq` is opened and its
//!    id compared, so a corrupted index entry cannot remove the wrong reading.
//! 3. **Dedup.** An id is a duplicate while it is in `index` with its record (pending) or in
//!    `acked` (uploaded or dead-lettered less than the tombstone retention ago, default 30
//!    days). A redelivered copy of a quarantined reading is stored again.
//! 4. **One record per identity.** A new record whose upstream identity is already held by a
//!    record with another id (same FHIR identifier, different content) is never stored as
//!    pending: it goes to `dead` with reason `identifier_collision` (and its id becomes a
//!    tombstone), so the server never merges two readings into one Observation. `idents`
//!    entries are pruned with tombstones, never while their record is pending.
//!
//!    **Dead letters are recoverable, never silently lost.** A dead letter leaves `dead` only
//!    through [`Outbox::requeue_dead_letter`], which in one transaction puts the reading back in
//!    `pending` and `index` under its original id, removes its tombstone from `acked` and makes
//!    it the holder of its identity in `idents` again. Raw payloads (no reading id), identifier
//!    collisions, truncated records, and readings whose identity another record holds now are
//!    refused (a collision requeued would be acked as "already exists" under the other
//!    reading's Observation).
//! 5. **Durable before Ok.** Every method that changes `pending`, `index`, `acked` or `dead`
//!    (except `prune_tombstones`, whose loss is harmless) returns `Ok` only after `Db::flush`
//!    **and** our own `fdatasync` of `<dir>/db` (sled 0.34's flush uses `sync_file_range` on
//!    Linux, which neither flushes the drive's write cache nor file-size metadata: sled issues
//!    #1452, #1351) and an fsync of any new file under `blobs/` (sled does not fsync blob files
//!    at all). This holds for [`Insert::Duplicate`] too: the earlier copy may have been written
//!    by another thread that has not synced yet.
//! 6. **Bounded records.** An encoded payload is at most [`MAX_PAYLOAD_LEN`] bytes, so records
//!    stay inline in sled's log segments instead of becoming blob files (see 5).
//! 7. **One record is refused alone.** A record too large for the format is kept as a dead
//!    letter (its first bytes, length and SHA-256); the rest of its batch is stored.
//! 8. **No PHI outside sealed values.** Keys are sequence numbers and keyed hashes; errors and
//!    logs carry tree names, sequence numbers and sizes, never content.
//!
//! # Durability: what is and is not shown here
//!
//! An `Ok` from a mutating method means: sled's flush returned, then `fdatasync` of `<dir>/db`
//! returned, then `fsync` of any new blob file and of `blobs/` returned. On a filesystem and
//! device that honour flush requests, the change survives a crash or power loss.
//!
//! The tests show that records survive dropping and reopening the store (same process), that
//! corrupt, truncated, swapped and foreign-key records are quarantined without loss, and that
//! the store agrees with a simple model across random operation sequences. They cannot show
//! survival of a power cut: that depends on the SD card honouring flush requests, which many
//! consumer cards do not (they acknowledge a flush while data is still in their volatile cache,
//! and can corrupt older blocks during wear levelling). Nor is sled 0.34's own crash recovery
//! tested here. If sled panics or reports corruption on open, or opens a store that had records
//! as an empty one, [`Outbox::open`] fails and the daemon ([`guard::open_or_quarantine`]) moves
//! the directory to quarantine, starts an empty store and raises an alarm; `vitalgate store
//! salvage` recovers what still authenticates.
//!
//! # Layering: the [`Store`] trait
//!
//! The pipeline task and the uploader see the outbox only through [`Store`] (`Arc<dyn Store>`):
//! insert readings (dedup, identity collisions), raw dead letters, pending reads (FIFO,
//! skipping sequence numbers, with a predicate), ack, dead-letter, counts, held bytes and the
//! reopen/probe hooks of fault recovery. [`Outbox`] implements it by delegation; the daemon
//! (`app.rs`) passes the sled `Outbox`. [`MemStore`] implements it in memory for model tests,
//! with the same semantics through the trait, which a conformance test checks against the
//! sled store op by op. Admin operations (export, salvage, keys and re-sealing, dead-letter
//! payloads and requeue, consent purge, tombstone pruning, ops status) stay on [`Outbox`]:
//! they run on the sled store only and would widen the trait without a second user.
//!
//! # I/O errors at run time
//!
//! After an I/O error (a full disk, EIO) sled returns that error from every call until the
//! database is reopened. [`Outbox`] is therefore a reopenable handle over the sled store
//! ([`live`]): the pipeline task, on a failed write ([`StoreError::needs_reopen`]), raises one
//! alarm, stops taking readings (sources acknowledge nothing and keep the data), and calls
//! [`Outbox::reopen`] + [`Outbox::probe_write`] with an exponential backoff (1 s to 60 s) until
//! the store writes again. Not yet shown with a real fault: the tests inject one behind
//! [`Outbox`] (see `live::fault`).
//!
//! # Bound
//!
//! [`Outbox::held_bytes`] is what `store.max_bytes` bounds; [`pressure`] is the policy the
//! pipeline applies to it (stop taking readings at 80%, resume below 70%).

mod backend;
pub mod codec;
pub mod compact;
pub mod guard;
pub mod keyfile;
pub mod keyring;
mod live;
mod mem;
mod outbox;
pub mod pressure;

pub use backend::Store;
pub use codec::{CodecError, RecordCipher};
pub use guard::{open_or_quarantine, salvage, QuarantinedStore, SalvageReport};
pub use keyfile::{KeyFileError, StoreKey};
pub use live::{CompactReport, Outbox};
pub use mem::MemStore;
pub use outbox::{
    wait_for_lock, CopyReport, DeadLetterInfo, DeadReason, Insert, NewRecord, NotRequeueable,
    OutboxOptions, PendingRecord, Requeue, RequeueSummary, ResealCursor, Stats, MARKER_FILE,
    MAX_PAYLOAD_LEN, TREE_ACKED, TREE_DEAD, TREE_EXPORTED, TREE_EXPORTS, TREE_IDENTS, TREE_INDEX,
    TREE_META, TREE_PENDING, TREE_QUARANTINE,
};

use std::path::PathBuf;

/// The store format version written to `meta/format`.
pub const FORMAT_VERSION: u8 = 6;

/// The older formats this build opens and upgrades in place (module docs, "History").
pub const UPGRADABLE_FORMATS: [u8; 3] = [3, 4, 5];

/// Everything that can go wrong in the store. Carries paths, tree names, sequence numbers and
/// sizes; never record content.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("sled error: {0}")]
    Sled(#[from] sled::Error),
    #[error("I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Codec(#[from] CodecError),
    #[error("postcard encoding failed: {0}")]
    Encode(postcard::Error),
    #[error(transparent)]
    KeyFile(#[from] KeyFileError),
    #[error("store {path} was written with another key (the key-check record does not open); refusing to use it")]
    WrongKey { path: PathBuf },
    #[error(
        "store {path} has format version {found:?}, this build reads versions 3 to {FORMAT_VERSION}"
    )]
    UnsupportedFormat { path: PathBuf, found: Option<u8> },
    #[error("encoded record is {len} bytes, more than the {max} a record may have")]
    TooLarge { len: usize, max: usize },
    #[error("no pending record with this id")]
    NotPending,
    #[error("no dead letter with seq {seq}")]
    NoSuchDeadLetter { seq: u64 },
    #[error("dead letter {seq} cannot be requeued: {}", why.explain())]
    NotRequeueable { seq: u64, why: NotRequeueable },
    #[error("record {tree}/{seq} failed to decode: {reason}")]
    Corrupt {
        tree: &'static str,
        seq: u64,
        reason: &'static str,
    },
    #[error(
        "store {path} is locked by another process (another vitalgate process holds the store?)"
    )]
    Locked { path: PathBuf },
    #[error("store {path} lost its records: sled opens it as an empty database, but it held a vitalgate store")]
    Lost { path: PathBuf },
    #[error(transparent)]
    Keyring(#[from] keyring::KeyringError),
    #[error("store {path} is missing: the store seals records with data keys, and without the keyring (and with its copy in the store gone) they cannot be opened")]
    KeyringLost { path: PathBuf },
    #[error("keyring {path} dropped or replaced data key {id}, which records in the store may be sealed with; keeping the keys in use")]
    KeyringDropsKey { path: PathBuf, id: u32 },
    #[error("compacted copy {path} does not hold what the store holds (pending, dead, quarantined: {want:?} in the store, {got:?} in the copy); the store is kept and the copy removed")]
    CopyMismatch {
        path: PathBuf,
        want: (u64, u64, u64),
        got: (u64, u64, u64),
    },
    #[error("sled panicked while opening store {path}")]
    Panicked { path: PathBuf },
    #[error("store {path} is closed after an I/O error and not reopened yet")]
    Unavailable { path: PathBuf },
}

impl StoreError {
    /// Is this a failure of the store itself (sled or file I/O: a full disk, a failing card, a
    /// closed store), after which sled must be reopened, rather than a problem of one record?
    pub fn needs_reopen(&self) -> bool {
        matches!(
            self,
            StoreError::Sled(_)
                | StoreError::Io { .. }
                | StoreError::Unavailable { .. }
                | StoreError::Panicked { .. }
        )
    }

    /// Does this error on open mean the store's files are damaged (so the store is moved to
    /// quarantine and a fresh one started), rather than a problem to fix and retry (a lock, a
    /// wrong key, a newer format, permissions, a full disk)?
    pub fn is_damage(&self) -> bool {
        matches!(
            self,
            StoreError::Sled(sled::Error::Corruption { .. } | sled::Error::ReportableBug(_))
                | StoreError::Lost { .. }
                | StoreError::Panicked { .. }
                // sled holds data but no format record: the meta tree was lost.
                | StoreError::UnsupportedFormat { found: None, .. }
                // The key check passed (it runs first), yet the keyring and its copy are gone or
                // fail to authenticate: the store's files are damaged.
                | StoreError::KeyringLost { .. }
                | StoreError::Keyring(
                    keyring::KeyringError::Authentication { .. }
                        | keyring::KeyringError::Malformed { .. }
                        | keyring::KeyringError::Unwrap { .. }
                        | keyring::KeyringError::NoActiveKey { .. }
                )
        )
    }
}

impl From<sled::transaction::TransactionError<StoreError>> for StoreError {
    fn from(e: sled::transaction::TransactionError<StoreError>) -> Self {
        match e {
            sled::transaction::TransactionError::Abort(e) => e,
            sled::transaction::TransactionError::Storage(e) => StoreError::Sled(e),
        }
    }
}
