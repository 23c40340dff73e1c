//! Per-device high-water marks: what was already made durable, so a device that resends its
//! whole memory on every connection is not re-ingested.
//!
//! # Where and why
//! One file, `<data_dir>/ble-cursors.sealed`, written atomically (temp file, `fsync`, `rename`,
//! `fsync` of the directory) and sealed with the store key (the outbox's ChaCha20-Poly1305
//! record format, AAD `ble-cursors/v1`). Not a tree in the outbox: the outbox's format and
//! invariants belong to the store, and a cursor is not a reading. Sealed because the last
//! measurement time of a patient's device is a date about a person (PHI).
//!
//! # What a cursor holds, and the rules that keep it safe
//! - `last_sequence` (RACP devices, glucose): the highest sequence number such that every record
//!   of the download up to it is durable. The next download asks for `>= last_sequence + 1`.
//! - `last_time` per user index (devices without sequence numbers: BP cuffs, scales,
//!   thermometers): the latest device timestamp of a session that ended cleanly (the device was
//!   quiet before the link closed) with every record durable. Such a device had sent its whole
//!   memory, so a record at or before the mark is one already made durable, and is skipped.
//!   A session cut short never moves the mark: arrival order alone proves nothing (a live
//!   measurement can overtake a replay and the link can drop in between; a test with 100
//!   disconnects in the middle of notifications found exactly that).
//! - Cleared when the device's clock is (or is set) earlier than the mark: after a battery
//!   change or a clock correction backwards, new readings would otherwise look old. The store's
//!   content id still deduplicates whatever is resent.
//! - `system_id`: the EUI-64 the device reported once, so the FHIR identifier stays the same on a
//!   connection where Device Information could not be read.
//!
//! - `located` (beside the cursors): for a device configured by Device Information only (no
//!   `address`), the address a probe found it at, so a restart does not probe again (one
//!   connection to each health advertiser of that service) before the device is recognised. The
//!   session still checks Device Information on every connection: a stale binding is never
//!   trusted for attribution.
//!
//! Losing the file loses nothing but efficiency: the store deduplicates by content id and the
//! server by identifier (conditional create).

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use device_drivers::DeviceTime;
use serde::{Deserialize, Serialize};

use crate::store::codec::RecordCipher;
use crate::store::StoreKey;

const FILE: &str = "ble-cursors.sealed";
/// Format 2: cursors and located addresses. Format 1 (cursors only) is still read.
const AAD: &[u8] = b"ble-cursors/v2";
const AAD_V1: &[u8] = b"ble-cursors/v1";

/// What the file holds (format 2).
#[derive(Debug, Default, Serialize, Deserialize)]
struct Sealed {
    devices: BTreeMap<String, DeviceCursor>,
    /// Device name -> the address a Device Information probe located it at.
    located: BTreeMap<String, String>,
}
/// Key used for records without a user index.
pub const NO_USER: u8 = 255;

#[derive(Debug, thiserror::Error)]
pub enum CursorError {
    #[error("ble cursor file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("ble cursor file {path}: cannot be opened with the store key ({reason})")]
    Sealed { path: PathBuf, reason: String },
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceCursor {
    pub last_sequence: Option<u16>,
    pub last_time: BTreeMap<u8, DeviceTime>,
    pub system_id: Option<String>,
}

impl DeviceCursor {
    /// Was a record with this user and time already made durable?
    pub fn already_durable(&self, user: Option<u8>, t: DeviceTime) -> bool {
        self.last_time
            .get(&user.unwrap_or(NO_USER))
            .is_some_and(|hwm| t <= *hwm)
    }

    /// The latest mark of any user.
    pub fn latest_time(&self) -> Option<DeviceTime> {
        self.last_time.values().max().copied()
    }

    /// Drops the time marks if the device clock reads earlier than any of them. Returns whether
    /// it did.
    pub fn clock_went_back(&mut self, device_now: DeviceTime) -> bool {
        if self.latest_time().is_some_and(|l| device_now < l) {
            self.last_time.clear();
            return true;
        }
        false
    }
}

/// Every device's cursor, loaded once, saved atomically after changes.
pub struct CursorStore {
    path: PathBuf,
    /// `None` only if the store key cannot be turned into a cipher: the marks then live in
    /// memory for this run and every save reports [`CursorError::Sealed`].
    cipher: Option<RecordCipher>,
    devices: BTreeMap<String, DeviceCursor>,
    located: BTreeMap<String, String>,
}

impl CursorStore {
    /// Loads `<data_dir>/ble-cursors.sealed` (empty if absent). Never fails: the BLE transport
    /// must keep running whatever this file is (a source that returns makes the daemon exit).
    ///
    /// A file that cannot be read (an I/O error: permissions, a directory or a device node in
    /// its place, a failing disk) or does not open with this key (garbage, truncated, another
    /// key) is moved aside (`.unreadable` / `.corrupt`, kept for inspection) and the returned
    /// store starts empty, with the problem as the second value for the caller to report once.
    ///
    /// # What starting empty does (the fallback is safe, only less efficient)
    /// - No `last_sequence`: a RACP device is asked for *all* its stored records, not those
    ///   after the mark. Nothing is skipped. Records the store already holds are dropped by the
    ///   pipeline's identity rule (the reading id: answered `Outcome::Durable` with
    ///   `duplicates`, which counts as durable), and any that slip through (pruned from the
    ///   store's index after upload) are idempotent upstream (conditional create by
    ///   identifier). The download completes normally.
    /// - RACP deletion stays what it always is: only the range of *this* download, only once
    ///   every record of it is durable (already-stored duplicates count as durable). A record
    ///   never downloaded is never deleted; nothing is deleted twice on our behalf.
    /// - No `last_time`: devices without sequence numbers (cuffs, scales) have their whole
    ///   memory handed to the pipeline again; duplicates are dropped the same way.
    /// - No `system_id`: the identifier comes from the configured System ID or what the device
    ///   reports on this connection (it is remembered again at once).
    /// - No `located` address: a device configured by Device Information only is probed again.
    pub fn load(data_dir: &Path, key: &StoreKey) -> (CursorStore, Option<CursorError>) {
        let path = data_dir.join(FILE);
        let (cipher, cipher_err) = match RecordCipher::new(key) {
            Ok(c) => (Some(c), None),
            Err(e) => (
                None,
                Some(CursorError::Sealed {
                    path: path.clone(),
                    reason: e.to_string(),
                }),
            ),
        };
        let mut store = CursorStore {
            path: path.clone(),
            cipher,
            devices: BTreeMap::new(),
            located: BTreeMap::new(),
        };
        let Some(cipher) = &store.cipher else {
            return (store, cipher_err);
        };
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return (store, None),
            Err(e) => {
                // Moved aside so the next save can write a good file in its place; if even
                // that fails, every save reports it (and the marks live in memory).
                let _ = std::fs::rename(&path, path.with_extension("sealed.unreadable"));
                return (store, Some(CursorError::Io { path, source: e }));
            }
        };
        let opened = match cipher.open(AAD, &bytes) {
            Ok(plain) => postcard::from_bytes::<Sealed>(&plain).map_err(|e| e.to_string()),
            // Format 1 (before located addresses): the cursors alone.
            Err(v2) => cipher
                .open(AAD_V1, &bytes)
                .map_err(|_| v2.to_string())
                .and_then(|plain| {
                    postcard::from_bytes(&plain)
                        .map(|devices| Sealed {
                            devices,
                            located: BTreeMap::new(),
                        })
                        .map_err(|e| e.to_string())
                }),
        };
        match opened {
            Ok(sealed) => {
                store.devices = sealed.devices;
                store.located = sealed.located;
                (store, None)
            }
            Err(reason) => {
                let _ = std::fs::rename(&path, path.with_extension("sealed.corrupt"));
                (store, Some(CursorError::Sealed { path, reason }))
            }
        }
    }

    pub fn get(&self, device: &str) -> DeviceCursor {
        self.devices.get(device).cloned().unwrap_or_default()
    }

    /// Replaces a device's cursor; returns whether it changed.
    pub fn set(&mut self, device: &str, c: DeviceCursor) -> bool {
        if self.devices.get(device) == Some(&c) {
            return false;
        }
        self.devices.insert(device.to_string(), c);
        true
    }

    /// Where a probe last located each device configured by Device Information only.
    pub fn located(&self) -> &BTreeMap<String, String> {
        &self.located
    }

    /// Records where a probe located `device`; returns whether it changed.
    pub fn set_located(&mut self, device: &str, address: &str) -> bool {
        if self.located.get(device).map(String::as_str) == Some(address) {
            return false;
        }
        self.located.insert(device.to_string(), address.to_string());
        true
    }

    /// The sealed bytes and the path, to write outside any lock.
    pub fn snapshot(&self) -> Result<(PathBuf, Vec<u8>), CursorError> {
        let sealed = SealedRef {
            devices: &self.devices,
            located: &self.located,
        };
        let plain = postcard::to_stdvec(&sealed).map_err(|e| CursorError::Sealed {
            path: self.path.clone(),
            reason: e.to_string(),
        })?;
        let cipher = self.cipher.as_ref().ok_or_else(|| CursorError::Sealed {
            path: self.path.clone(),
            reason: "no cipher for the store key".to_string(),
        })?;
        let sealed = cipher.seal(AAD, &plain).map_err(|e| CursorError::Sealed {
            path: self.path.clone(),
            reason: e.to_string(),
        })?;
        Ok((self.path.clone(), sealed))
    }
}

/// [`Sealed`] by reference, for writing.
#[derive(Serialize)]
struct SealedRef<'a> {
    devices: &'a BTreeMap<String, DeviceCursor>,
    located: &'a BTreeMap<String, String>,
}

/// Writers of the one file take turns (sessions of several devices and the prober save
/// concurrently; they share the temp file's name).
static WRITING: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Writes `bytes` to `path` atomically and durably: temp file, fsync, rename, fsync directory.
///
/// # Errors
/// [`CursorError::Io`].
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), CursorError> {
    let _turn = WRITING
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let io = |source| CursorError::Io {
        path: path.to_path_buf(),
        source,
    };
    let tmp = path.with_extension("sealed.tmp");
    {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(&tmp)
            .map_err(io)?;
        f.write_all(bytes).map_err(io)?;
        f.sync_all().map_err(io)?;
    }
    std::fs::rename(&tmp, path).map_err(io)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(h: u8) -> DeviceTime {
        DeviceTime::new(2026, 3, 1, h, 0, 0).unwrap()
    }

    #[test]
    fn cursors_survive_a_reload_and_do_not_open_with_another_key() {
        let dir = tempfile::tempdir().unwrap();
        let key = StoreKey::from_bytes([7; 32]);
        let (mut s, err) = CursorStore::load(dir.path(), &key);
        assert!(err.is_none());
        let mut c = DeviceCursor {
            last_sequence: Some(42),
            ..Default::default()
        };
        c.last_time.insert(1, t(8));
        assert!(s.set("cuff", c.clone()));
        assert!(!s.set("cuff", c.clone()));
        let (path, bytes) = s.snapshot().unwrap();
        write_atomic(&path, &bytes).unwrap();
        let (again, _) = CursorStore::load(dir.path(), &key);
        assert_eq!(again.get("cuff"), c);
        // No plaintext on disk.
        let raw = std::fs::read(&path).unwrap();
        assert!(!raw.windows(4).any(|w| w == b"cuff"));
        let (other, err) = CursorStore::load(dir.path(), &StoreKey::from_bytes([8; 32]));
        assert!(err.is_some());
        assert_eq!(other.get("cuff"), DeviceCursor::default());
    }

    #[test]
    fn located_addresses_survive_a_reload_and_a_format_1_file_still_opens() {
        let dir = tempfile::tempdir().unwrap();
        let key = StoreKey::from_bytes([7; 32]);
        let (mut s, _) = CursorStore::load(dir.path(), &key);
        assert!(s.set_located("cuff", "00:09:1F:00:00:07"));
        assert!(!s.set_located("cuff", "00:09:1F:00:00:07"));
        let (path, bytes) = s.snapshot().unwrap();
        write_atomic(&path, &bytes).unwrap();
        let (again, err) = CursorStore::load(dir.path(), &key);
        assert!(err.is_none());
        assert_eq!(
            again.located().get("cuff").map(String::as_str),
            Some("00:09:1F:00:00:07")
        );

        // A file written before located addresses existed (format 1: the cursors alone).
        let c = DeviceCursor {
            last_sequence: Some(9),
            ..Default::default()
        };
        let v1: BTreeMap<String, DeviceCursor> = [("meter".to_string(), c.clone())].into();
        let cipher = RecordCipher::new(&key).unwrap();
        let sealed = cipher
            .seal(AAD_V1, &postcard::to_stdvec(&v1).unwrap())
            .unwrap();
        std::fs::write(&path, sealed).unwrap();
        let (old, err) = CursorStore::load(dir.path(), &key);
        assert!(err.is_none(), "{err:?}");
        assert_eq!(old.get("meter"), c);
        assert!(old.located().is_empty());
    }

    #[test]
    fn an_unreadable_or_garbage_file_is_moved_aside_and_the_store_starts_empty_and_saves_again() {
        let dir = tempfile::tempdir().unwrap();
        let key = StoreKey::from_bytes([7; 32]);
        let path = dir.path().join(FILE);
        // Unreadable: a directory where the file should be (EISDIR; as root, permissions
        // would not stop a read).
        std::fs::create_dir(&path).unwrap();
        let (mut s, err) = CursorStore::load(dir.path(), &key);
        assert!(matches!(err, Some(CursorError::Io { .. })), "{err:?}");
        assert_eq!(s.get("cuff"), DeviceCursor::default());
        assert!(dir.path().join("ble-cursors.sealed.unreadable").is_dir());
        // The next save writes a good file in its place.
        s.set(
            "cuff",
            DeviceCursor {
                last_sequence: Some(3),
                ..Default::default()
            },
        );
        let (p, bytes) = s.snapshot().unwrap();
        write_atomic(&p, &bytes).unwrap();
        let (again, err) = CursorStore::load(dir.path(), &key);
        assert!(err.is_none(), "{err:?}");
        assert_eq!(again.get("cuff").last_sequence, Some(3));

        // Garbage: moved aside as corrupt, empty store.
        std::fs::write(&path, b"not a sealed file at all").unwrap();
        let (s, err) = CursorStore::load(dir.path(), &key);
        assert!(matches!(err, Some(CursorError::Sealed { .. })), "{err:?}");
        assert_eq!(s.get("cuff"), DeviceCursor::default());
        assert!(dir.path().join("ble-cursors.sealed.corrupt").is_file());
        assert!(!path.exists());
    }

    #[test]
    fn a_time_mark_skips_only_records_at_or_before_it_and_a_clock_going_back_clears_it() {
        let mut c = DeviceCursor::default();
        c.last_time.insert(1, t(8));
        assert!(c.already_durable(Some(1), t(8)));
        assert!(c.already_durable(Some(1), t(7)));
        assert!(!c.already_durable(Some(1), t(9)));
        assert!(!c.already_durable(Some(2), t(7)), "marks are per user");
        assert!(!c.clock_went_back(t(10)));
        assert!(c.clock_went_back(t(7)));
        assert!(!c.already_durable(Some(1), t(7)));
    }
}
