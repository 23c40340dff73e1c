//! Guarded open and salvage: a store sled cannot open is moved aside, never deleted.
//!
//! sled 0.34.7 has been reported to panic or return `Corruption` when opening files left by a
//! hard stop (sled #1533), and it opens a truncated or overwritten data file as an empty or
//! shorter database without an error. [`open_or_quarantine`] handles what can be seen:
//!
//! | on open                                              | then                                   |
//! |------------------------------------------------------|----------------------------------------|
//! | sled panics, `Corruption`, `ReportableBug`            | quarantine, fresh store, alarm         |
//! | sled opens it empty but our marker file says it held a store ([`StoreError::Lost`]) | quarantine, fresh store, alarm |
//! | data but no format record                            | quarantine, fresh store, alarm         |
//! | locked (another process), wrong key, newer format, I/O error (permissions, disk full) | refuse to start: nothing is moved |
//!
//! "Quarantine" is a rename of the store directory to
//! `<quarantine root>/store-<UTC time>` (the root is `<data_dir>/quarantine`): same
//! filesystem, atomic, nothing copied or deleted. [`salvage`] (`vitalgate store salvage PATH`)
//! later reads a quarantined store — on a copy, so the quarantined files stay as they were —
//! and puts every record that still authenticates under the live store's key back through the
//! normal insert path (identifiers dedupe, so salvaging twice, or salvaging readings the
//! sources redelivered meanwhile, stores each reading once).
//!
//! Not detected: a data file cut or overwritten past its first records opens as a shorter
//! database (sled stops its recovery at the first bad log entry) and the records after that
//! point are gone without an error. Detecting that needs a durable high-water mark kept outside
//! sled (issue #11, open).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::outbox::{NewRecord, OutboxOptions, SledOutbox, TREE_DEAD, TREE_META, TREE_PENDING};
use super::Outbox;
use super::{Insert, StoreError, StoreKey};
use crate::telemetry;

/// A store moved aside by [`open_or_quarantine`].
#[derive(Debug, Clone)]
pub struct QuarantinedStore {
    /// Where the damaged store now is.
    pub path: PathBuf,
    /// Why (the open error; no content).
    pub cause: String,
}

/// Opens the store in `dir`; if its files are damaged ([`StoreError::is_damage`], or sled
/// panics), moves `dir` to `quarantine_root/store-<now>`, raises the alarm and opens a fresh
/// store in `dir`.
///
/// # Errors
///
/// Any open error that is not damage (nothing is moved then); an error moving the directory;
/// an error opening the fresh store.
pub fn open_or_quarantine(
    dir: &Path,
    quarantine_root: &Path,
    key: &StoreKey,
    opts: &OutboxOptions,
    now: DateTime<Utc>,
) -> Result<(Outbox, Option<QuarantinedStore>), StoreError> {
    let cause = match guarded_open(dir, key, opts) {
        Ok(outbox) => return Ok((outbox, None)),
        Err(e) if e.is_damage() => e.to_string(),
        Err(e) => return Err(e),
    };
    let path = move_aside(dir, quarantine_root, now)?;
    telemetry::StoreQuarantinedOnOpen {
        path: &path,
        cause: &cause,
    }
    .emit();
    let outbox = Outbox::open(dir, key.clone(), opts.clone())?;
    Ok((outbox, Some(QuarantinedStore { path, cause })))
}

/// What [`salvage`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SalvageReport {
    /// Pending readings stored again in the live store.
    pub pending_recovered: u64,
    /// Pending readings the live store already had (pending or delivered).
    pub pending_duplicates: u64,
    /// Readings kept as dead letters by the live store's insert (identifier collision, size).
    pub pending_dead_lettered: u64,
    /// Dead letters copied into the live store's dead letters.
    pub dead_recovered: u64,
    /// Records that do not authenticate under the live key, or do not decode: left in the
    /// quarantined store (never deleted).
    pub unreadable: u64,
    /// Records the quarantined store had itself quarantined (left where they are).
    pub already_quarantined: u64,
    /// sled could open the quarantined store only after its `conf` file was rebuilt.
    pub conf_rebuilt: bool,
}

/// Reads the quarantined store at `from` (on a copy) and puts every record that authenticates
/// under `live`'s key back into `live`: pending readings through the normal insert path (`T`
/// is the reading type, `identity_of` its upstream identity, as the pipeline stores it), dead
/// letters as dead letters with reason `salvaged: <reason>`. `from` is not changed.
///
/// # Errors
///
/// [`StoreError::WrongKey`] if `from` was sealed under another key; [`StoreError::Io`] copying
/// it; a sled error if sled cannot open even a copy with a rebuilt `conf`; errors of the live
/// store's inserts (what was inserted before stays).
pub fn salvage<T: Serialize + DeserializeOwned>(
    live: &Outbox,
    from: &Path,
    identity_of: impl Fn(&T) -> Option<String>,
) -> Result<SalvageReport, StoreError> {
    let name = from
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut work = from.with_file_name(format!(".salvage-{name}"));
    let mut n = 1;
    while work.exists() {
        // Left by an interrupted salvage: not ours to remove.
        work = from.with_file_name(format!(".salvage-{name}-{n}"));
        n += 1;
    }
    copy_dir(from, &work)?;
    let result = salvage_copy(live, &work, identity_of);
    // The working copy this call made, and only it; the quarantined store stays as it was.
    #[allow(clippy::disallowed_methods)]
    let _ = std::fs::remove_dir_all(&work);
    result
}

fn salvage_copy<T: Serialize + DeserializeOwned>(
    live: &Outbox,
    work: &Path,
    identity_of: impl Fn(&T) -> Option<String>,
) -> Result<SalvageReport, StoreError> {
    let mut report = SalvageReport::default();
    let db = match raw_open(work) {
        Ok(db) => db,
        Err(e) if e.is_damage() => {
            // sled checks its `conf` file (segment size, version) on open; a damaged one is
            // rebuilt from the same settings when it is missing.
            let conf = work.join("conf");
            if conf.exists() {
                std::fs::remove_file(&conf).map_err(io_err(&conf))?;
            }
            report.conf_rebuilt = true;
            raw_open(work)?
        }
        Err(e) => return Err(e),
    };
    let meta = db.open_tree(TREE_META)?;
    match meta.get(b"key_check")? {
        Some(sealed) if live.key_check_opens(&sealed) => {}
        Some(_) => {
            return Err(StoreError::WrongKey {
                path: work.to_owned(),
            })
        }
        // No key check left (meta lost): each record still proves its key by authenticating.
        None => {}
    }
    let keys = live.foreign_keys(work, &meta)?;
    for item in db.open_tree(TREE_PENDING)?.iter() {
        let (key, raw) = item?;
        let value =
            SledOutbox::open_foreign_pending(&keys, &key, &raw).and_then(|(id, payload)| {
                postcard::from_bytes::<T>(&payload)
                    .map(|v| (id, v))
                    .map_err(|_| "payload does not decode")
            });
        let Ok((id, value)) = value else {
            report.unreadable += 1;
            continue;
        };
        let identity = identity_of(&value);
        let outcome = live.insert_records(&[NewRecord {
            id,
            identity: identity.as_deref(),
            delivery: None,
            value: &value,
        }])?;
        match outcome.first() {
            Some(Insert::Stored) => report.pending_recovered += 1,
            Some(Insert::Duplicate) | None => report.pending_duplicates += 1,
            Some(Insert::DeadLettered { .. }) => report.pending_dead_lettered += 1,
        }
    }
    for item in db.open_tree(TREE_DEAD)?.iter() {
        let (key, raw) = item?;
        match SledOutbox::open_foreign_dead(&keys, &key, &raw) {
            Ok((source, reason, payload)) => {
                live.put_dead_letter_raw(&source, &payload, &format!("salvaged: {reason}"))?;
                report.dead_recovered += 1;
            }
            Err(_) => report.unreadable += 1,
        }
    }
    report.already_quarantined = db.open_tree(super::TREE_QUARANTINE)?.len() as u64;
    drop(db);
    Ok(report)
}

/// [`Outbox::open`] with a sled panic turned into [`StoreError::Panicked`].
fn guarded_open(dir: &Path, key: &StoreKey, opts: &OutboxOptions) -> Result<Outbox, StoreError> {
    let (key, opts) = (key.clone(), opts.clone());
    catch_unwind(AssertUnwindSafe(|| Outbox::open(dir, key, opts))).unwrap_or_else(|_| {
        Err(StoreError::Panicked {
            path: dir.to_owned(),
        })
    })
}

/// Opens a sled database as it is (no format check, nothing written), panics caught.
fn raw_open(dir: &Path) -> Result<sled::Db, StoreError> {
    // A working copy: an unfinished snapshot would make sled refuse it
    // ([`super::outbox::remove_unfinished_snapshots`]).
    super::outbox::remove_unfinished_snapshots(dir)?;
    catch_unwind(AssertUnwindSafe(|| {
        sled::Config::new()
            .path(dir)
            .cache_capacity(16 * 1024 * 1024)
            .open()
    }))
    .map_err(|_| StoreError::Panicked {
        path: dir.to_owned(),
    })?
    .map_err(StoreError::Sled)
}

/// Renames `dir` to `root/store-<now>` (with `-N` if taken) and makes the rename durable.
fn move_aside(dir: &Path, root: &Path, now: DateTime<Utc>) -> Result<PathBuf, StoreError> {
    std::fs::create_dir_all(root).map_err(io_err(root))?;
    let stamp = now.format("%Y%m%dT%H%M%SZ").to_string();
    let mut target = root.join(format!("store-{stamp}"));
    let mut n = 1;
    while target.exists() {
        target = root.join(format!("store-{stamp}-{n}"));
        n += 1;
    }
    std::fs::rename(dir, &target).map_err(io_err(dir))?;
    for d in [Some(root), dir.parent()].into_iter().flatten() {
        std::fs::File::open(d)
            .and_then(|f| f.sync_all())
            .map_err(io_err(d))?;
    }
    Ok(target)
}

fn copy_dir(from: &Path, to: &Path) -> Result<(), StoreError> {
    std::fs::create_dir_all(to).map_err(io_err(to))?;
    for entry in std::fs::read_dir(from).map_err(io_err(from))? {
        let entry = entry.map_err(io_err(from))?;
        let path = entry.path();
        let dest = to.join(entry.file_name());
        if entry.file_type().map_err(io_err(&path))?.is_dir() {
            copy_dir(&path, &dest)?;
        } else {
            std::fs::copy(&path, &dest).map_err(io_err(&path))?;
        }
    }
    Ok(())
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError {
    let path = path.to_owned();
    move |source| StoreError::Io { path, source }
}
