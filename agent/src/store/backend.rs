//! [`Store`]: the narrow interface the pipeline task and the uploader use, so the choice of
//! sled stays replaceable and both tasks can run, unchanged, over the in-memory
//! [`super::MemStore`] in model tests.
//!
//! The trait covers what those two tasks need and nothing more: insert readings (with the
//! dedup and identity-collision outcomes), keep a raw payload as a dead letter, read pending
//! readings (FIFO, passing over sequence numbers, with a predicate), ack, dead-letter, counts,
//! held bytes, and the fault recovery hooks (reopen, probe write). It is object safe
//! (`Arc<dyn Store>`) and specialised to the agent's [`Reading`] payload (the generic,
//! `T: Serialize` methods of [`Outbox`] are not object safe).
//!
//! Administrative operations stay on [`Outbox`] alone: export marks and records, salvage,
//! keyring reload and re-sealing, dead-letter listing of payloads and requeue, the consent
//! purge, tombstone pruning and the ops status. They run on the sled store only (the CLI and
//! the daemon's upkeep tasks), and putting them behind the trait would widen it without a
//! second implementation that needs them.
//!
//! Every implementation keeps the semantics of [`crate::store`]'s invariants 2 to 5 as seen
//! through this interface; `mem::tests::conformance` runs the same operation sequences against
//! both implementations and compares every answer.

use std::collections::HashSet;

use crate::reading::Reading;

use super::{DeadLetterInfo, Insert, NewRecord, Outbox, PendingRecord, Stats, StoreError};

/// The outbox as the pipeline task and the uploader see it. See [`crate::store`] for the
/// invariants every implementation keeps, and [`Outbox`] for the meaning of each method.
pub trait Store: Send + Sync {
    /// Stores a batch durably, all or nothing: one outcome per record, in order
    /// ([`Outbox::insert_records`]). An id pending or tombstoned is a [`Insert::Duplicate`];
    /// a record whose identity another id holds is kept as an `identifier_collision` dead
    /// letter; a record too large as a `record_too_large` dead letter.
    ///
    /// # Errors
    ///
    /// A store failure; nothing of the batch is stored and nothing may be acknowledged.
    fn insert_readings(
        &self,
        records: &[NewRecord<'_, Reading>],
    ) -> Result<Vec<Insert>, StoreError>;

    /// Keeps a payload that never became a reading as a dead letter
    /// ([`Outbox::put_dead_letter_raw`]); returns its dead-letter sequence number.
    ///
    /// # Errors
    ///
    /// A store failure.
    fn put_dead_letter_raw(
        &self,
        source: &str,
        payload: &[u8],
        reason: &str,
    ) -> Result<u64, StoreError>;

    /// Up to `limit` durable pending readings that `keep` accepts, oldest first, passing over
    /// the sequence numbers in `skip` without opening them; and how many `keep` refused
    /// ([`Outbox::pending_where_skipping`]).
    ///
    /// # Errors
    ///
    /// A store failure.
    fn pending_readings(
        &self,
        limit: usize,
        skip: &HashSet<u64>,
        keep: &mut dyn FnMut(&Reading) -> bool,
    ) -> Result<(Vec<PendingRecord<Reading>>, usize), StoreError>;

    /// Removes the pending readings among `ids` (the server has them), tombstones their ids,
    /// and returns how many were pending ([`Outbox::ack`]). Durable on `Ok`.
    ///
    /// # Errors
    ///
    /// A store failure; the readings may still be pending.
    fn ack(&self, ids: &[[u8; 32]]) -> Result<usize, StoreError>;

    /// [`Store::ack`] of readings just read: each `(id, seq)` is a [`PendingRecord`]'s `id`
    /// and `seq`, and the record is not opened again ([`Outbox::ack_read`]). A pair removes
    /// its record only if `id`'s index entry still names `seq`: a stale or wrong `seq` removes
    /// nothing. Returns how many were removed. Durable on `Ok`.
    ///
    /// # Errors
    ///
    /// A store failure; the readings may still be pending.
    fn ack_read(&self, read: &[([u8; 32], u64)]) -> Result<usize, StoreError>;

    /// Moves the pending reading `id` to the dead letters with `reason`
    /// ([`Outbox::dead_letter`]). Durable on `Ok`.
    ///
    /// # Errors
    ///
    /// [`StoreError::NotPending`] if `id` is not pending; a store failure.
    fn dead_letter(&self, id: &[u8; 32], reason: &str) -> Result<(), StoreError>;

    /// The dead letters, without payloads ([`Outbox::dead_letters`]).
    ///
    /// # Errors
    ///
    /// A store failure.
    fn dead_letters(&self) -> Result<Vec<DeadLetterInfo>, StoreError>;

    /// Counts ([`Outbox::stats`]).
    ///
    /// # Errors
    ///
    /// A store failure.
    fn stats(&self) -> Result<Stats, StoreError>;

    /// Bytes held, what `store.max_bytes` bounds ([`Outbox::held_bytes`]); cheap.
    fn held_bytes(&self) -> u64;

    /// [`Store::held_bytes`], counted exactly ([`Outbox::recount_held_bytes`]).
    ///
    /// # Errors
    ///
    /// A store failure.
    fn recount_held_bytes(&self) -> Result<u64, StoreError>;

    /// Bytes the store takes on disk ([`Outbox::disk_bytes`]).
    ///
    /// # Errors
    ///
    /// A store failure.
    fn disk_bytes(&self) -> Result<u64, StoreError>;

    /// Space left on the store's filesystem ([`Outbox::disk_available_bytes`]).
    ///
    /// # Errors
    ///
    /// A store failure.
    fn disk_available_bytes(&self) -> Result<u64, StoreError>;

    /// Closes and opens the store again after an I/O error ([`Outbox::reopen`]).
    ///
    /// # Errors
    ///
    /// The store stays closed ([`StoreError::Unavailable`]) until a later reopen succeeds.
    fn reopen(&self) -> Result<(), StoreError>;

    /// Proves the store writes durably again ([`Outbox::probe_write`]).
    ///
    /// # Errors
    ///
    /// A store failure.
    fn probe_write(&self) -> Result<(), StoreError>;

    /// Is the store open (false after a failed [`Store::reopen`])?
    fn is_open(&self) -> bool;

    /// Test only: the disk fails (`true`) or its cause clears (`false`). While the cause is
    /// present every call fails with an I/O error; the store stays failed after the cause
    /// clears until it is reopened, and a reopen fails while the cause is present (sled's
    /// behaviour after an I/O error).
    #[cfg(test)]
    fn inject_io_fault(&self, cause_present: bool);
}

impl Store for Outbox {
    fn insert_readings(
        &self,
        records: &[NewRecord<'_, Reading>],
    ) -> Result<Vec<Insert>, StoreError> {
        Outbox::insert_records(self, records)
    }

    fn put_dead_letter_raw(
        &self,
        source: &str,
        payload: &[u8],
        reason: &str,
    ) -> Result<u64, StoreError> {
        Outbox::put_dead_letter_raw(self, source, payload, reason)
    }

    fn pending_readings(
        &self,
        limit: usize,
        skip: &HashSet<u64>,
        keep: &mut dyn FnMut(&Reading) -> bool,
    ) -> Result<(Vec<PendingRecord<Reading>>, usize), StoreError> {
        Outbox::pending_where_skipping::<Reading>(self, limit, skip, keep)
    }

    fn ack(&self, ids: &[[u8; 32]]) -> Result<usize, StoreError> {
        Outbox::ack(self, ids)
    }

    fn ack_read(&self, read: &[([u8; 32], u64)]) -> Result<usize, StoreError> {
        Outbox::ack_read(self, read)
    }

    fn dead_letter(&self, id: &[u8; 32], reason: &str) -> Result<(), StoreError> {
        Outbox::dead_letter(self, id, reason)
    }

    fn dead_letters(&self) -> Result<Vec<DeadLetterInfo>, StoreError> {
        Outbox::dead_letters(self)
    }

    fn stats(&self) -> Result<Stats, StoreError> {
        Outbox::stats(self)
    }

    fn held_bytes(&self) -> u64 {
        Outbox::held_bytes(self)
    }

    fn recount_held_bytes(&self) -> Result<u64, StoreError> {
        Outbox::recount_held_bytes(self)
    }

    fn disk_bytes(&self) -> Result<u64, StoreError> {
        Outbox::disk_bytes(self)
    }

    fn disk_available_bytes(&self) -> Result<u64, StoreError> {
        Outbox::disk_available_bytes(self)
    }

    fn reopen(&self) -> Result<(), StoreError> {
        Outbox::reopen(self)
    }

    fn probe_write(&self) -> Result<(), StoreError> {
        Outbox::probe_write(self)
    }

    fn is_open(&self) -> bool {
        Outbox::is_open(self)
    }

    #[cfg(test)]
    fn inject_io_fault(&self, cause_present: bool) {
        Outbox::inject_io_fault(self, cause_present);
    }
}
