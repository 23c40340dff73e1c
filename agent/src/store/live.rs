//! [`Outbox`]: the store the daemon shares between its tasks, reopenable in place.
//!
//! After an I/O error (a full disk, EIO from a failing SD card) sled keeps returning that error
//! from every call until the database is reopened. [`Outbox::reopen`] drops the open
//! [`SledOutbox`] and opens the same directory again, with the same key and options, while every
//! other task keeps its `Arc<Outbox>`. Calls made while it is closed fail with
//! [`StoreError::Unavailable`]; calls already running on the old database finish on it (it is
//! dropped, and its lock released, when the last of them returns; the reopen waits for the lock
//! up to [`OutboxOptions::lock_wait`]).
//!
//! Every other method forwards to [`SledOutbox`]: see there and [`crate::store`].

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard};
use std::time::{Instant, SystemTime};

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::keyfile::StoreKey;
use super::outbox::{
    DeadLetterInfo, Insert, NewRecord, OutboxOptions, PendingRecord, Requeue, RequeueSummary,
    SledOutbox, Stats,
};
use super::wait_for_lock;
use super::StoreError;

/// The encrypted outbox (see the module doc and [`crate::store`]).
pub struct Outbox {
    dir: PathBuf,
    key: StoreKey,
    opts: OutboxOptions,
    core: Mutex<Option<Arc<SledOutbox>>>,
    /// Held shared by every call on the database, exclusively by [`Outbox::compact`] and
    /// [`Outbox::reopen`]: a call waits for a compaction instead of failing.
    gate: RwLock<()>,
    /// [`Outbox::held_bytes`] while closed: the last figure of the closed database.
    held_when_closed: AtomicU64,
    #[cfg(test)]
    fault: fault::Fault,
}

/// The open database for the duration of one call ([`Outbox::core`]).
struct Core<'a> {
    _gate: RwLockReadGuard<'a, ()>,
    db: Arc<SledOutbox>,
}

impl std::ops::Deref for Core<'_> {
    type Target = SledOutbox;
    fn deref(&self) -> &SledOutbox {
        &self.db
    }
}

/// What [`Outbox::compact`] did.
#[derive(Clone, Copy, Debug)]
pub struct CompactReport {
    /// Entries copied (every tree: records, index, tombstones, meta).
    pub entries: u64,
    /// Bytes of their keys and values.
    pub live_bytes: u64,
    /// The store's size on disk before and after (allocated blocks).
    pub disk_before: u64,
    pub disk_after: u64,
    pub took: std::time::Duration,
}

fn io((path, source): (PathBuf, std::io::Error)) -> StoreError {
    StoreError::Io { path, source }
}

impl Outbox {
    /// Opens (or creates) the store in `dir`: see [`SledOutbox::open`].
    ///
    /// # Errors
    ///
    /// As [`SledOutbox::open`].
    pub fn open(dir: &Path, key: StoreKey, opts: OutboxOptions) -> Result<Outbox, StoreError> {
        let core = SledOutbox::open(dir, key.clone(), opts.clone())?;
        Ok(Outbox {
            dir: dir.to_owned(),
            key,
            opts,
            core: Mutex::new(Some(Arc::new(core))),
            gate: RwLock::new(()),
            held_when_closed: AtomicU64::new(0),
            #[cfg(test)]
            fault: fault::Fault::default(),
        })
    }

    /// Closes the open database and opens the directory again (sled panics on open are caught).
    /// On error the store stays closed (calls fail with [`StoreError::Unavailable`]) and the
    /// caller tries again later. Records are never moved or deleted here: a store that is damaged
    /// on reopen stays closed, and the next start quarantines it
    /// ([`super::guard::open_or_quarantine`]).
    ///
    /// # Errors
    ///
    /// As [`SledOutbox::open`], and [`StoreError::Panicked`].
    ///
    /// The slot's lock is held only to take the old database out and to put the new one in:
    /// closing a sled database after an I/O error can take long (its drop flushes and fsyncs,
    /// and panics when that fails), and every other task asks the slot for the store (for
    /// example [`Outbox::held_bytes`] on the runtime's threads). The old database is closed on
    /// a thread of its own, its panic caught; the open waits for its lock as usual.
    pub fn reopen(&self) -> Result<(), StoreError> {
        let _gate = self.gate.write().unwrap_or_else(PoisonError::into_inner);
        self.reopen_locked()
    }

    fn reopen_locked(&self) -> Result<(), StoreError> {
        let old = self.slot().take();
        self.close(old);
        #[cfg(test)]
        self.fault.on_reopen(&self.dir)?;
        let (key, opts) = (self.key.clone(), self.opts.clone());
        let core = catch_unwind(AssertUnwindSafe(|| SledOutbox::open(&self.dir, key, opts)))
            .unwrap_or_else(|_| {
                Err(StoreError::Panicked {
                    path: self.dir.clone(),
                })
            })?;
        *self.slot() = Some(Arc::new(core));
        Ok(())
    }

    /// Closes a database taken out of the slot, on a thread of its own (see [`Outbox::reopen`]),
    /// waiting at most the lock wait.
    fn close(&self, old: Option<Arc<SledOutbox>>) {
        if let Some(old) = old {
            self.held_when_closed
                .store(old.held_bytes(), Ordering::Relaxed);
            let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
            let closer = std::thread::Builder::new()
                .name("store-close".into())
                .spawn(move || {
                    let _ = catch_unwind(AssertUnwindSafe(move || drop(old)));
                    let _ = done_tx.send(());
                });
            if closer.is_ok() {
                // Then the open's own lock wait applies.
                let _ = done_rx.recv_timeout(self.opts.lock_wait);
            }
        }
    }

    /// Compacts the store (see [`super::compact`]): copies it into a fresh database and swaps
    /// the directories, then opens the copy. Every other call waits meanwhile (none fails); a
    /// compaction of a small backlog and a month of tombstones takes well under a second.
    ///
    /// # Errors
    ///
    /// [`StoreError::Unavailable`] if the store is closed; an error of the copy (the store is
    /// left as it was, open, and the partial copy removed); an error of the swap or of opening
    /// the copy (the store is then closed, and the next [`Outbox::reopen`], like the pipeline's
    /// fault recovery, finishes or undoes the swap: [`super::compact::recover`]).
    pub fn compact(&self) -> Result<CompactReport, StoreError> {
        let _gate = self.gate.write().unwrap_or_else(PoisonError::into_inner);
        let started = Instant::now();
        let core = self.slot().clone().ok_or_else(|| StoreError::Unavailable {
            path: self.dir.clone(),
        })?;
        #[cfg(test)]
        self.fault.on_call(&self.dir)?;
        let before = core.disk_bytes()?;
        let building = super::compact::sibling(&self.dir, super::compact::BUILDING);
        super::compact::recover(&self.dir).map_err(io)?;
        // `keys rotate` writes the keyring under this lock: not while it is being copied.
        let _keyring_lock = super::keyring::lock_exclusive(&self.dir)?;
        let copy = match core.copy_into(&building) {
            Ok(copy) => copy,
            Err(e) => {
                let _ = super::compact::recover(&self.dir);
                return Err(e);
            }
        };
        // The copy is opened as the store will be, and must hold what the store holds, before
        // the store is replaced.
        let counts = |s: &Stats| (s.pending, s.dead, s.quarantined);
        let want = core.stats()?;
        let checked = catch_unwind(AssertUnwindSafe(|| {
            SledOutbox::open(&building, self.key.clone(), self.opts.clone())
                .and_then(|copy| copy.stats())
        }))
        .unwrap_or_else(|_| {
            Err(StoreError::Panicked {
                path: building.clone(),
            })
        });
        match checked {
            Ok(got) if counts(&got) == counts(&want) => {}
            Ok(got) => {
                let _ = super::compact::recover(&self.dir);
                return Err(StoreError::CopyMismatch {
                    path: building,
                    want: counts(&want),
                    got: counts(&got),
                });
            }
            Err(e) => {
                let _ = super::compact::recover(&self.dir);
                return Err(e);
            }
        }
        wait_for_lock(&building.join("db"), self.opts.lock_wait)?;
        drop(core);
        self.close(self.slot().take());
        super::compact::swap(&self.dir).map_err(io)?;
        self.reopen_locked()?;
        let after = self.core_unguarded()?;
        Ok(CompactReport {
            entries: copy.entries,
            live_bytes: copy.bytes,
            disk_before: before,
            disk_after: after.disk_bytes()?,
            took: started.elapsed(),
        })
    }

    /// Is a database open (false after a failed [`Outbox::reopen`])?
    pub fn is_open(&self) -> bool {
        self.slot().is_some()
    }

    fn slot(&self) -> MutexGuard<'_, Option<Arc<SledOutbox>>> {
        self.core.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The open database, for one call: holds the gate (shared) until the call returns.
    fn core(&self) -> Result<Core<'_>, StoreError> {
        let gate = self.gate.read().unwrap_or_else(PoisonError::into_inner);
        let db = self.core_unguarded()?;
        Ok(Core { _gate: gate, db })
    }

    fn core_unguarded(&self) -> Result<Arc<SledOutbox>, StoreError> {
        let core = self.slot().clone().ok_or_else(|| StoreError::Unavailable {
            path: self.dir.clone(),
        })?;
        #[cfg(test)]
        self.fault.on_call(&self.dir)?;
        Ok(core)
    }

    /// See [`SledOutbox::probe_write`].
    ///
    /// # Errors
    ///
    /// As [`SledOutbox::probe_write`], and [`StoreError::Unavailable`].
    pub fn probe_write(&self) -> Result<(), StoreError> {
        self.core()?.probe_write()
    }

    /// See [`SledOutbox::insert`].
    ///
    /// # Errors
    ///
    /// As [`SledOutbox::insert`], and [`StoreError::Unavailable`].
    pub fn insert<T: Serialize>(&self, id: [u8; 32], value: &T) -> Result<Insert, StoreError> {
        self.core()?.insert(id, value)
    }

    /// See [`SledOutbox::insert_many`].
    ///
    /// # Errors
    ///
    /// As [`SledOutbox::insert_many`], and [`StoreError::Unavailable`].
    pub fn insert_many<'a, T, I>(&self, items: I) -> Result<Vec<Insert>, StoreError>
    where
        T: Serialize + 'a,
        I: IntoIterator<Item = ([u8; 32], &'a T)>,
    {
        self.core()?.insert_many(items)
    }

    /// See [`SledOutbox::insert_records`].
    ///
    /// # Errors
    ///
    /// As [`SledOutbox::insert_records`], and [`StoreError::Unavailable`].
    pub fn insert_records<T: Serialize>(
        &self,
        records: &[NewRecord<'_, T>],
    ) -> Result<Vec<Insert>, StoreError> {
        self.core()?.insert_records(records)
    }

    /// See [`SledOutbox::pending`].
    ///
    /// # Errors
    ///
    /// As [`SledOutbox::pending`], and [`StoreError::Unavailable`].
    pub fn pending<T: DeserializeOwned>(
        &self,
        limit: usize,
    ) -> Result<Vec<PendingRecord<T>>, StoreError> {
        self.core()?.pending(limit)
    }

    /// See [`SledOutbox::pending_where`].
    ///
    /// # Errors
    ///
    /// As [`SledOutbox::pending_where`], and [`StoreError::Unavailable`].
    pub fn pending_where<T: DeserializeOwned>(
        &self,
        limit: usize,
        keep: impl FnMut(&T) -> bool,
    ) -> Result<(Vec<PendingRecord<T>>, usize), StoreError> {
        self.core()?.pending_where(limit, keep)
    }

    /// See [`SledOutbox::pending_where_skipping`].
    ///
    /// # Errors
    ///
    /// As [`SledOutbox::pending_where_skipping`], and [`StoreError::Unavailable`].
    pub fn pending_where_skipping<T: DeserializeOwned>(
        &self,
        limit: usize,
        skip: &std::collections::HashSet<u64>,
        keep: impl FnMut(&T) -> bool,
    ) -> Result<(Vec<PendingRecord<T>>, usize), StoreError> {
        self.core()?.pending_where_skipping(limit, skip, keep)
    }

    /// See [`SledOutbox::purge_pending_where`].
    ///
    /// # Errors
    ///
    /// As [`SledOutbox::purge_pending_where`], and [`StoreError::Unavailable`].
    pub fn purge_pending_where<T: DeserializeOwned>(
        &self,
        limit: usize,
        purge: impl FnMut(&PendingRecord<T>) -> bool,
    ) -> Result<Vec<PendingRecord<T>>, StoreError> {
        self.core()?.purge_pending_where(limit, purge)
    }

    /// See [`SledOutbox::ack`].
    ///
    /// # Errors
    ///
    /// As [`SledOutbox::ack`], and [`StoreError::Unavailable`].
    pub fn ack(&self, ids: &[[u8; 32]]) -> Result<usize, StoreError> {
        self.core()?.ack(ids)
    }

    /// See [`SledOutbox::ack_read`].
    ///
    /// # Errors
    ///
    /// As [`SledOutbox::ack_read`], and [`StoreError::Unavailable`].
    pub fn ack_read(&self, read: &[([u8; 32], u64)]) -> Result<usize, StoreError> {
        self.core()?.ack_read(read)
    }

    /// See [`SledOutbox::record_export`].
    ///
    /// # Errors
    ///
    /// As [`SledOutbox::record_export`], and [`StoreError::Unavailable`].
    pub fn record_export(
        &self,
        file_id: &[u8; 16],
        record: &[u8],
        ids: &[[u8; 32]],
        now: SystemTime,
    ) -> Result<usize, StoreError> {
        self.core()?.record_export(file_id, record, ids, now)
    }

    /// See [`SledOutbox::export_record`].
    ///
    /// # Errors
    ///
    /// As [`SledOutbox::export_record`], and [`StoreError::Unavailable`].
    pub fn export_record(&self, file_id: &[u8; 16]) -> Result<Option<Vec<u8>>, StoreError> {
        self.core()?.export_record(file_id)
    }

    /// See [`SledOutbox::exported_pending`].
    ///
    /// # Errors
    ///
    /// As [`SledOutbox::exported_pending`], and [`StoreError::Unavailable`].
    pub fn exported_pending(
        &self,
    ) -> Result<std::collections::BTreeMap<[u8; 16], u64>, StoreError> {
        self.core()?.exported_pending()
    }

    /// See [`SledOutbox::exported_in`].
    ///
    /// # Errors
    ///
    /// As [`SledOutbox::exported_in`], and [`StoreError::Unavailable`].
    pub fn exported_in(&self, id: &[u8; 32]) -> Result<Option<[u8; 16]>, StoreError> {
        self.core()?.exported_in(id)
    }

    /// See [`SledOutbox::dead_letter`].
    ///
    /// # Errors
    ///
    /// As [`SledOutbox::dead_letter`], and [`StoreError::Unavailable`].
    pub fn dead_letter(&self, id: &[u8; 32], reason: &str) -> Result<(), StoreError> {
        self.core()?.dead_letter(id, reason)
    }

    /// See [`SledOutbox::put_dead_letter_raw`].
    ///
    /// # Errors
    ///
    /// As [`SledOutbox::put_dead_letter_raw`], and [`StoreError::Unavailable`].
    pub fn put_dead_letter_raw(
        &self,
        source: &str,
        payload: &[u8],
        reason: &str,
    ) -> Result<u64, StoreError> {
        self.core()?.put_dead_letter_raw(source, payload, reason)
    }

    /// See [`SledOutbox::dead_letters`].
    ///
    /// # Errors
    ///
    /// As [`SledOutbox::dead_letters`], and [`StoreError::Unavailable`].
    pub fn dead_letters(&self) -> Result<Vec<DeadLetterInfo>, StoreError> {
        self.core()?.dead_letters()
    }

    /// See [`SledOutbox::dead_letter_payload`].
    ///
    /// # Errors
    ///
    /// As [`SledOutbox::dead_letter_payload`], and [`StoreError::Unavailable`].
    pub fn dead_letter_payload(&self, seq: u64) -> Result<Vec<u8>, StoreError> {
        self.core()?.dead_letter_payload(seq)
    }

    /// See [`SledOutbox::requeue_dead_letter`].
    ///
    /// # Errors
    ///
    /// As [`SledOutbox::requeue_dead_letter`], and [`StoreError::Unavailable`].
    pub fn requeue_dead_letter<T: DeserializeOwned>(
        &self,
        seq: u64,
        identity_of: impl Fn(&T) -> Option<String>,
    ) -> Result<Requeue, StoreError> {
        self.core()?.requeue_dead_letter(seq, identity_of)
    }

    /// See [`SledOutbox::requeue_all_dead_letters`].
    ///
    /// # Errors
    ///
    /// As [`SledOutbox::requeue_all_dead_letters`], and [`StoreError::Unavailable`].
    pub fn requeue_all_dead_letters<T: DeserializeOwned>(
        &self,
        identity_of: impl Fn(&T) -> Option<String>,
    ) -> Result<RequeueSummary, StoreError> {
        self.core()?.requeue_all_dead_letters(identity_of)
    }

    /// See [`SledOutbox::prune_tombstones`].
    ///
    /// # Errors
    ///
    /// As [`SledOutbox::prune_tombstones`], and [`StoreError::Unavailable`].
    pub fn prune_tombstones(&self, now: SystemTime) -> Result<usize, StoreError> {
        self.core()?.prune_tombstones(now)
    }

    /// See [`SledOutbox::stats`].
    ///
    /// # Errors
    ///
    /// As [`SledOutbox::stats`], and [`StoreError::Unavailable`].
    pub fn stats(&self) -> Result<Stats, StoreError> {
        self.core()?.stats()
    }

    /// The store directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// See [`SledOutbox::held_bytes`]; while closed, the last figure of the closed database.
    pub fn held_bytes(&self) -> u64 {
        match self.slot().as_ref() {
            Some(core) => core.held_bytes(),
            None => self.held_when_closed.load(Ordering::Relaxed),
        }
    }

    /// See [`SledOutbox::recount_held_bytes`].
    ///
    /// # Errors
    ///
    /// As [`SledOutbox::recount_held_bytes`], and [`StoreError::Unavailable`].
    pub fn recount_held_bytes(&self) -> Result<u64, StoreError> {
        self.core()?.recount_held_bytes()
    }

    /// See [`SledOutbox::disk_bytes`].
    ///
    /// # Errors
    ///
    /// As [`SledOutbox::disk_bytes`], and [`StoreError::Unavailable`].
    pub fn disk_bytes(&self) -> Result<u64, StoreError> {
        self.core()?.disk_bytes()
    }

    /// See [`SledOutbox::live_bytes`].
    ///
    /// # Errors
    ///
    /// As [`SledOutbox::live_bytes`], and [`StoreError::Unavailable`].
    pub fn live_bytes(&self) -> Result<u64, StoreError> {
        self.core()?.live_bytes()
    }

    /// See [`SledOutbox::disk_available_bytes`].
    ///
    /// # Errors
    ///
    /// As [`SledOutbox::disk_available_bytes`], and [`StoreError::Unavailable`].
    pub fn disk_available_bytes(&self) -> Result<u64, StoreError> {
        self.core()?.disk_available_bytes()
    }

    pub(super) fn foreign_keys(
        &self,
        dir: &Path,
        meta: &sled::Tree,
    ) -> Result<super::codec::KeySet, StoreError> {
        self.core()?.foreign_keys(dir, meta)
    }

    /// See [`SledOutbox::reload_keyring`].
    ///
    /// # Errors
    ///
    /// As [`SledOutbox::reload_keyring`], and [`StoreError::Unavailable`].
    pub fn reload_keyring(&self) -> Result<Option<u32>, StoreError> {
        self.core()?.reload_keyring()
    }

    /// See [`SledOutbox::active_key_id`]; `None` while closed.
    pub fn active_key_id(&self) -> Option<u32> {
        self.slot().as_ref().map(|c| c.active_key_id())
    }

    /// See [`SledOutbox::key_usage`].
    ///
    /// # Errors
    ///
    /// As [`SledOutbox::key_usage`], and [`StoreError::Unavailable`].
    pub fn key_usage(&self) -> Result<std::collections::BTreeMap<u32, u64>, StoreError> {
        self.core()?.key_usage()
    }

    /// See [`SledOutbox::reseal_batch`].
    ///
    /// # Errors
    ///
    /// As [`SledOutbox::reseal_batch`], and [`StoreError::Unavailable`].
    pub fn reseal_batch(
        &self,
        from: super::ResealCursor,
        limit: usize,
    ) -> Result<(usize, Option<super::ResealCursor>), StoreError> {
        self.core()?.reseal_batch(from, limit)
    }

    pub(super) fn key_check_opens(&self, sealed: &[u8]) -> bool {
        self.core().is_ok_and(|c| c.key_check_opens(sealed))
    }

    /// Test only: makes the store fail like sled after an I/O error (see [`fault`]).
    #[cfg(test)]
    pub(crate) fn inject_io_fault(&self, cause_present: bool) {
        self.fault.set_cause(cause_present);
    }
}

/// Test-only fault injection behind the store's narrow interface. While the cause is present
/// (a full disk), every call fails with an I/O error, and the store stays failed after the cause
/// clears until it is reopened, as sled does (its global error state); a reopen fails while the
/// cause is present.
#[cfg(test)]
mod fault {
    use std::path::Path;
    use std::sync::atomic::{AtomicBool, Ordering};

    use crate::store::StoreError;

    #[derive(Default)]
    pub(super) struct Fault {
        cause: AtomicBool,
        failed: AtomicBool,
    }

    fn enospc(dir: &Path) -> StoreError {
        StoreError::Io {
            path: dir.join("db"),
            source: std::io::Error::other("injected: No space left on device"),
        }
    }

    impl Fault {
        pub(super) fn set_cause(&self, present: bool) {
            self.cause.store(present, Ordering::SeqCst);
        }

        pub(super) fn on_call(&self, dir: &Path) -> Result<(), StoreError> {
            if self.cause.load(Ordering::SeqCst) {
                self.failed.store(true, Ordering::SeqCst);
            }
            if self.failed.load(Ordering::SeqCst) {
                return Err(enospc(dir));
            }
            Ok(())
        }

        pub(super) fn on_reopen(&self, dir: &Path) -> Result<(), StoreError> {
            if self.cause.load(Ordering::SeqCst) {
                return Err(enospc(dir));
            }
            self.failed.store(false, Ordering::SeqCst);
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reopen_closes_sled_opens_it_again_and_keeps_every_record() {
        let dir = tempfile::tempdir().unwrap();
        let store = Outbox::open(
            dir.path(),
            StoreKey::from_bytes([3; 32]),
            OutboxOptions::default(),
        )
        .unwrap();
        for n in 0..3u8 {
            assert_eq!(
                store.insert([n; 32], &format!("r{n}")).unwrap(),
                Insert::Stored
            );
        }
        let held = store.held_bytes();
        assert!(held > 0);

        store.reopen().unwrap();
        assert!(store.is_open());
        assert_eq!(store.held_bytes(), held, "recounted at reopen");
        let pending: Vec<PendingRecord<String>> = store.pending(10).unwrap();
        assert_eq!(pending.len(), 3);
        // Still deduplicates what it held, and writes new records.
        assert_eq!(
            store.insert([1; 32], &"r1".to_string()).unwrap(),
            Insert::Duplicate
        );
        assert_eq!(
            store.insert([9; 32], &"r9".to_string()).unwrap(),
            Insert::Stored
        );
        store.probe_write().unwrap();
        // A second reopen right away also finds sled's lock released (or waits for it).
        store.reopen().unwrap();
        assert_eq!(store.stats().unwrap().pending, 4);
    }

    #[test]
    fn a_failed_reopen_leaves_the_store_closed_with_typed_errors_and_a_later_reopen_restores_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = Outbox::open(
            dir.path(),
            StoreKey::from_bytes([3; 32]),
            OutboxOptions::default(),
        )
        .unwrap();
        store.insert([1; 32], &"r1".to_string()).unwrap();
        let held = store.held_bytes();
        store.inject_io_fault(true);
        assert!(matches!(
            store.insert([2; 32], &"r2".to_string()),
            Err(StoreError::Io { .. })
        ));
        assert!(store.reopen().is_err(), "cause still present");
        assert!(!store.is_open());
        store.inject_io_fault(false);
        assert!(
            matches!(store.stats(), Err(StoreError::Unavailable { .. })),
            "closed until reopened"
        );
        assert_eq!(store.held_bytes(), held, "last figure while closed");
        store.reopen().unwrap();
        assert_eq!(store.stats().unwrap().pending, 1);
        assert_eq!(
            store.insert([2; 32], &"r2".to_string()).unwrap(),
            Insert::Stored
        );
    }

    mod model {
        //! Model-based test: random sequences of insert, ack, dead-letter, reopen and an I/O
        //! fault (with the reopen that ends it) against a plain model of the outbox. After every
        //! step the store's pending ids are exactly the model's, in order of insertion.
        use std::collections::{BTreeSet, HashSet};

        use proptest::prelude::*;

        use super::*;

        #[derive(Debug, Clone)]
        enum Op {
            Insert(u8),
            InsertMany(Vec<u8>),
            Ack(Vec<u8>),
            DeadLetter(u8),
            Reopen,
            /// The disk fails, one insert is tried and refused, the cause clears, the store is
            /// reopened.
            FaultedInsert(u8),
        }

        fn op() -> impl Strategy<Value = Op> {
            let id = 0u8..12;
            prop_oneof![
                4 => id.clone().prop_map(Op::Insert),
                2 => proptest::collection::vec(id.clone(), 1..5).prop_map(Op::InsertMany),
                3 => proptest::collection::vec(id.clone(), 1..4).prop_map(Op::Ack),
                1 => id.clone().prop_map(Op::DeadLetter),
                1 => Just(Op::Reopen),
                1 => id.prop_map(Op::FaultedInsert),
            ]
        }

        #[derive(Default)]
        struct Model {
            /// Pending ids in insertion order.
            pending: Vec<u8>,
            /// Acked or dead-lettered: refused as duplicates.
            tombstoned: HashSet<u8>,
            dead: usize,
        }

        impl Model {
            fn insert(&mut self, n: u8) -> Insert {
                if self.pending.contains(&n) || self.tombstoned.contains(&n) {
                    Insert::Duplicate
                } else {
                    self.pending.push(n);
                    Insert::Stored
                }
            }
        }

        fn id(n: u8) -> [u8; 32] {
            let mut id = [0xA5; 32];
            id[0] = n;
            id
        }

        fn value(n: u8) -> String {
            format!("reading {n}")
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]
            #[test]
            fn the_outbox_agrees_with_its_model_across_reopens_and_io_faults(
                ops in proptest::collection::vec(op(), 1..25)
            ) {
                let dir = tempfile::tempdir().unwrap();
                let store = Outbox::open(
                    dir.path(),
                    StoreKey::from_bytes([5; 32]),
                    OutboxOptions::default(),
                )
                .unwrap();
                let mut m = Model::default();
                for op in ops {
                    match op {
                        Op::Insert(n) => {
                            prop_assert_eq!(store.insert(id(n), &value(n)).unwrap(), m.insert(n));
                        }
                        Op::InsertMany(ns) => {
                            let values: Vec<String> = ns.iter().map(|&n| value(n)).collect();
                            let got = store
                                .insert_many(ns.iter().zip(&values).map(|(&n, v)| (id(n), v)))
                                .unwrap();
                            let want: Vec<Insert> = ns.iter().map(|&n| m.insert(n)).collect();
                            prop_assert_eq!(got, want);
                        }
                        Op::Ack(ns) => {
                            let ids: Vec<[u8; 32]> = ns.iter().map(|&n| id(n)).collect();
                            let unique: BTreeSet<u8> = ns.iter().copied().collect();
                            // Only a pending id is acked (and then refused as a duplicate).
                            let acked: Vec<u8> =
                                unique.into_iter().filter(|n| m.pending.contains(n)).collect();
                            prop_assert_eq!(store.ack(&ids).unwrap(), acked.len());
                            m.pending.retain(|n| !acked.contains(n));
                            m.tombstoned.extend(acked);
                        }
                        Op::DeadLetter(n) => {
                            let got = store.dead_letter(&id(n), "model test");
                            if m.pending.contains(&n) {
                                prop_assert!(got.is_ok(), "{:?}", got);
                                m.pending.retain(|&p| p != n);
                                m.tombstoned.insert(n);
                                m.dead += 1;
                            } else {
                                prop_assert!(matches!(got, Err(StoreError::NotPending)), "{:?}", got);
                            }
                        }
                        Op::Reopen => store.reopen().unwrap(),
                        Op::FaultedInsert(n) => {
                            store.inject_io_fault(true);
                            prop_assert!(store.insert(id(n), &value(n)).is_err());
                            prop_assert!(store.reopen().is_err());
                            store.inject_io_fault(false);
                            store.reopen().unwrap();
                        }
                    }
                    let pending: Vec<PendingRecord<String>> = store.pending(1000).unwrap();
                    let got: Vec<u8> = pending.iter().map(|r| r.id[0]).collect();
                    prop_assert_eq!(&got, &m.pending);
                    for r in &pending {
                        prop_assert_eq!(&r.value, &value(r.id[0]));
                    }
                    let stats = store.stats().unwrap();
                    prop_assert_eq!(stats.pending, m.pending.len() as u64);
                    prop_assert_eq!(stats.dead, m.dead as u64);
                }
            }
        }
    }
}
