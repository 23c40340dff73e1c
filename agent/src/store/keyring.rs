//! The store's data keys, wrapped by the key-encryption key (envelope encryption).
//!
//! # Keys
//!
//! - The **key-encryption key** (KEK) is the 32-byte [`StoreKey`]. It is taken, in this order,
//!   from the systemd credential `vitalgate-store-key` (`$CREDENTIALS_DIRECTORY`, set by
//!   `LoadCredentialEncrypted=`: sealed to the TPM2 where the board has one, else to the host
//!   key in `/var/lib/systemd/credential.secret`) or from `store.key_file` (see
//!   [`StoreKey::load_kek`]). It never seals a reading. It wraps the data keys, authenticates
//!   this keyring, and (through HKDF, unchanged since store format 4) keys the index MAC, the
//!   key-check record and the records sealed before format 5 (key id 0, "legacy").
//! - **Data keys** are 32 random bytes each, one per rotation, with their algorithm
//!   (ChaCha20-Poly1305 by default, AES-256-GCM selectable). The active one seals every new
//!   record; the others only open records not yet re-sealed. Ids start at 1 and only grow.
//!
//! # File format (`<store>/keyring`, mode 0600, version 1)
//!
//! ```text
//! "VGKR" | 0x01 | postcard(Body) | HMAC-SHA256(mac_key, "VGKR" | 0x01 | postcard(Body))
//! Body = { active: u32, keys: [ { id: u32, alg: u8, created_ms: u64, wrapped: bytes } ] }
//! wrapped = nonce (12 random bytes) | ChaCha20-Poly1305(wrap_key, data key) | tag
//!           AAD = "vitalgate-dek" | id (u32 BE) | alg
//! wrap_key = HKDF-SHA256(KEK, salt "vitalgate-store", info "vitalgate-store/keyring-wrap/v1")
//! mac_key  = HKDF-SHA256(KEK, salt "vitalgate-store", info "vitalgate-store/keyring-mac/v1")
//! ```
//!
//! The MAC covers the active pointer and the list, so nobody without the KEK can add a key,
//! drop one or point `active` at an old one. Wrapping nonces are random: a keyring wraps a
//! handful of keys in its life, so a repeat is out of reach (2^-96 per pair).
//!
//! The file is written only by `vitalgate keys rotate` (under an exclusive lock on
//! `keyring.lock`, so two rotations cannot both add "the next" id) and by the store's open
//! (write to `keyring.tmp`, fsync, rename, fsync the directory), so a crash leaves the old or
//! the new keyring, never half of one. A keyring that does not hold every key of the one in use
//! unchanged is refused by the daemon (and, at open, replaced by the store's copy). The daemon reads it at open and polls it for changes,
//! so `vitalgate keys rotate` takes effect while the daemon runs. The store also keeps a copy
//! in its `meta` tree (`keyring`), used if the file is lost or damaged.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};
use ring::hkdf;
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};

use super::keyfile::StoreKey;

/// The keyring's file name inside the store directory.
pub const KEYRING_FILE: &str = "keyring";

const MAGIC: &[u8; 4] = b"VGKR";
const VERSION: u8 = 1;
const MAC_LEN: usize = 32;
const DATA_KEY_LEN: usize = 32;
const HKDF_SALT: &[u8] = b"vitalgate-store";
const WRAP_INFO: &[u8] = b"vitalgate-store/keyring-wrap/v1";
const MAC_INFO: &[u8] = b"vitalgate-store/keyring-mac/v1";
/// A keyring file larger than this is not one of ours (about 1,000 rotations).
const MAX_FILE_LEN: u64 = 64 * 1024;

/// The AEAD a data key is used with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Alg {
    /// The default: fast without AES instructions (a Raspberry Pi 4 has none).
    ChaCha20Poly1305,
    /// For sites whose policy asks for AES.
    Aes256Gcm,
}

impl Alg {
    /// The config spelling: `chacha20-poly1305` or `aes-256-gcm`.
    pub fn as_str(self) -> &'static str {
        match self {
            Alg::ChaCha20Poly1305 => "chacha20-poly1305",
            Alg::Aes256Gcm => "aes-256-gcm",
        }
    }

    /// Parses the config spelling.
    pub fn parse(s: &str) -> Option<Alg> {
        match s {
            "chacha20-poly1305" => Some(Alg::ChaCha20Poly1305),
            "aes-256-gcm" => Some(Alg::Aes256Gcm),
            _ => None,
        }
    }

    fn byte(self) -> u8 {
        match self {
            Alg::ChaCha20Poly1305 => 1,
            Alg::Aes256Gcm => 2,
        }
    }

    pub(crate) fn ring(self) -> &'static aead::Algorithm {
        match self {
            Alg::ChaCha20Poly1305 => &CHACHA20_POLY1305,
            Alg::Aes256Gcm => &aead::AES_256_GCM,
        }
    }
}

/// One data key as stored: wrapped under the KEK.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WrappedKey {
    pub id: u32,
    pub alg: Alg,
    pub created_ms: u64,
    wrapped: Vec<u8>,
}

/// One data key, unwrapped. `Debug` prints no key material.
pub struct DataKey {
    pub id: u32,
    pub alg: Alg,
    pub(crate) key: LessSafeKey,
}

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DataKey({}, {})", self.id, self.alg.as_str())
    }
}

/// The keyring: which data keys exist and which one seals new records.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Keyring {
    pub active: u32,
    pub keys: Vec<WrappedKey>,
}

/// Why a keyring could not be read, written or used. Never carries key material.
#[derive(Debug, thiserror::Error)]
pub enum KeyringError {
    #[error("keyring {path} is not a vitalgate keyring ({why})")]
    Malformed { path: PathBuf, why: &'static str },
    #[error("keyring {path} does not authenticate under the store key: it was damaged, or the store key is not the one this store was created with")]
    Authentication { path: PathBuf },
    #[error("keyring {path}: data key {id} does not unwrap under the store key")]
    Unwrap { path: PathBuf, id: u32 },
    #[error("keyring {path}: its active key {id} is not in it")]
    NoActiveKey { path: PathBuf, id: u32 },
    #[error("I/O error on keyring {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("the system random number generator failed")]
    Rng,
}

struct KekKeys {
    wrap: LessSafeKey,
    mac: hmac::Key,
}

fn kek_keys(kek: &StoreKey) -> Result<KekKeys, KeyringError> {
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, HKDF_SALT).extract(kek.as_bytes());
    let wrap: UnboundKey = prk
        .expand(&[WRAP_INFO], &CHACHA20_POLY1305)
        .map_err(|_| KeyringError::Rng)?
        .into();
    let mac: hmac::Key = prk
        .expand(&[MAC_INFO], hmac::HMAC_SHA256)
        .map_err(|_| KeyringError::Rng)?
        .into();
    Ok(KekKeys {
        wrap: LessSafeKey::new(wrap),
        mac,
    })
}

fn wrap_aad(id: u32, alg: Alg) -> Vec<u8> {
    let mut aad = b"vitalgate-dek".to_vec();
    aad.extend_from_slice(&id.to_be_bytes());
    aad.push(alg.byte());
    aad
}

impl Keyring {
    /// A keyring with one fresh data key (id 1) of `alg`, active.
    ///
    /// # Errors
    ///
    /// [`KeyringError::Rng`].
    pub fn new(kek: &StoreKey, alg: Alg, now_ms: u64) -> Result<Keyring, KeyringError> {
        let mut ring = Keyring {
            active: 0,
            keys: Vec::new(),
        };
        ring.rotate(kek, alg, now_ms)?;
        Ok(ring)
    }

    /// Adds a fresh data key of `alg` and makes it the active one; returns its id.
    ///
    /// # Errors
    ///
    /// [`KeyringError::Rng`].
    pub fn rotate(&mut self, kek: &StoreKey, alg: Alg, now_ms: u64) -> Result<u32, KeyringError> {
        let rng = SystemRandom::new();
        let mut key = [0u8; DATA_KEY_LEN];
        rng.fill(&mut key).map_err(|_| KeyringError::Rng)?;
        let id = self.keys.iter().map(|k| k.id).max().unwrap_or(0) + 1;
        let mut nonce = [0u8; NONCE_LEN];
        rng.fill(&mut nonce).map_err(|_| KeyringError::Rng)?;
        let keys = kek_keys(kek)?;
        let mut body = key.to_vec();
        keys.wrap
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(wrap_aad(id, alg)),
                &mut body,
            )
            .map_err(|_| KeyringError::Rng)?;
        let mut wrapped = nonce.to_vec();
        wrapped.extend_from_slice(&body);
        self.keys.push(WrappedKey {
            id,
            alg,
            created_ms: now_ms,
            wrapped,
        });
        self.active = id;
        Ok(id)
    }

    /// The first key of `other` that this keyring does not hold unchanged (same id, algorithm
    /// and wrapped bytes), if any: a keyring that dropped or replaced a key records may name
    /// must not replace the one in use.
    pub fn missing_from(&self, other: &Keyring) -> Option<u32> {
        other
            .keys
            .iter()
            .find(|k| !self.keys.contains(k))
            .map(|k| k.id)
    }

    /// Unwraps every data key. `path` is only for error messages.
    ///
    /// # Errors
    ///
    /// [`KeyringError::Unwrap`] (wrong KEK or a damaged entry), [`KeyringError::NoActiveKey`].
    pub fn unwrap_all(&self, kek: &StoreKey, path: &Path) -> Result<Vec<DataKey>, KeyringError> {
        let keys = kek_keys(kek)?;
        let mut out = Vec::with_capacity(self.keys.len());
        for w in &self.keys {
            let err = || KeyringError::Unwrap {
                path: path.to_owned(),
                id: w.id,
            };
            let (nonce, body) = w.wrapped.split_at_checked(NONCE_LEN).ok_or_else(err)?;
            let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| err())?;
            let mut buf = body.to_vec();
            let plain = keys
                .wrap
                .open_in_place(nonce, Aad::from(wrap_aad(w.id, w.alg)), &mut buf)
                .map_err(|_| err())?;
            let unbound = UnboundKey::new(w.alg.ring(), plain).map_err(|_| err())?;
            out.push(DataKey {
                id: w.id,
                alg: w.alg,
                key: LessSafeKey::new(unbound),
            });
        }
        if !out.iter().any(|k| k.id == self.active) {
            return Err(KeyringError::NoActiveKey {
                path: path.to_owned(),
                id: self.active,
            });
        }
        Ok(out)
    }

    /// The authenticated file bytes.
    ///
    /// # Errors
    ///
    /// [`KeyringError::Rng`] if key derivation fails (it does not for these lengths).
    pub fn encode(&self, kek: &StoreKey) -> Result<Vec<u8>, KeyringError> {
        let mut out = MAGIC.to_vec();
        out.push(VERSION);
        let body = postcard::to_stdvec(self).map_err(|_| KeyringError::Rng)?;
        out.extend_from_slice(&body);
        let tag = hmac::sign(&kek_keys(kek)?.mac, &out);
        out.extend_from_slice(tag.as_ref());
        Ok(out)
    }

    /// Parses and authenticates file bytes. `path` is only for error messages.
    ///
    /// # Errors
    ///
    /// [`KeyringError::Malformed`], [`KeyringError::Authentication`].
    pub fn decode(bytes: &[u8], kek: &StoreKey, path: &Path) -> Result<Keyring, KeyringError> {
        let malformed = |why| KeyringError::Malformed {
            path: path.to_owned(),
            why,
        };
        if bytes.len() < MAGIC.len() + 1 + MAC_LEN {
            return Err(malformed("too short"));
        }
        if &bytes[..MAGIC.len()] != MAGIC {
            return Err(malformed("bad magic"));
        }
        if bytes[MAGIC.len()] != VERSION {
            return Err(malformed("unknown version"));
        }
        let (signed, tag) = bytes.split_at(bytes.len() - MAC_LEN);
        hmac::verify(&kek_keys(kek)?.mac, signed, tag).map_err(|_| {
            KeyringError::Authentication {
                path: path.to_owned(),
            }
        })?;
        let (ring, rest): (Keyring, _) = postcard::take_from_bytes(&signed[MAGIC.len() + 1..])
            .map_err(|_| malformed("body does not decode"))?;
        if !rest.is_empty() {
            return Err(malformed("trailing bytes"));
        }
        Ok(ring)
    }

    /// Reads and authenticates `<dir>/keyring`; `Ok(None)` if there is none.
    ///
    /// # Errors
    ///
    /// As [`Keyring::decode`], and [`KeyringError::Io`].
    pub fn load(dir: &Path, kek: &StoreKey) -> Result<Option<Keyring>, KeyringError> {
        let path = dir.join(KEYRING_FILE);
        let io_err = |source| KeyringError::Io {
            path: path.clone(),
            source,
        };
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(e)),
        };
        let mut bytes = Vec::new();
        file.take(MAX_FILE_LEN + 1)
            .read_to_end(&mut bytes)
            .map_err(io_err)?;
        if bytes.len() as u64 > MAX_FILE_LEN {
            return Err(KeyringError::Malformed {
                path,
                why: "too large",
            });
        }
        Keyring::decode(&bytes, kek, &path).map(Some)
    }

    /// Writes `<dir>/keyring` atomically (temp file, fsync, rename, fsync of `dir`), mode 0600.
    ///
    /// # Errors
    ///
    /// [`KeyringError::Io`].
    pub fn save(&self, dir: &Path, kek: &StoreKey) -> Result<(), KeyringError> {
        let bytes = self.encode(kek)?;
        write_atomic(dir, &bytes)
    }
}

/// Writes keyring bytes to `<dir>/keyring` atomically.
pub(crate) fn write_atomic(dir: &Path, bytes: &[u8]) -> Result<(), KeyringError> {
    let path = dir.join(KEYRING_FILE);
    let tmp = dir.join("keyring.tmp");
    let io_err = |p: &Path| {
        let p = p.to_owned();
        move |source| KeyringError::Io { path: p, source }
    };
    let _ = std::fs::remove_file(&tmp);
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io_err(&tmp))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(io_err(&tmp))?;
    drop(f);
    std::fs::rename(&tmp, &path).map_err(io_err(&path))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

/// The lock a change of the keyring file is made under (`<dir>/keyring.lock`, `flock`
/// exclusive, released when the file is dropped): `vitalgate keys rotate` reads, adds and writes
/// under it, and a compaction copies the keyring under it ([`super::compact`]). Blocks until
/// the lock is free.
///
/// # Errors
///
/// [`super::StoreError::Io`] if the lock file cannot be created or locked.
pub fn lock_exclusive(dir: &Path) -> Result<std::fs::File, super::StoreError> {
    let path = dir.join(LOCK_FILE);
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&path)
        .and_then(|f| fs2::FileExt::lock_exclusive(&f).map(|()| f))
        .map_err(|source| super::StoreError::Io { path, source })
}

/// See [`lock_exclusive`].
pub const LOCK_FILE: &str = "keyring.lock";

#[cfg(test)]
mod tests {
    use super::*;

    fn kek(b: u8) -> StoreKey {
        StoreKey::from_bytes([b; 32])
    }

    #[test]
    fn a_keyring_round_trips_through_its_file_and_rotation_adds_an_active_key() {
        let dir = tempfile::tempdir().unwrap();
        assert!(Keyring::load(dir.path(), &kek(1)).unwrap().is_none());
        let mut ring = Keyring::new(&kek(1), Alg::ChaCha20Poly1305, 1).unwrap();
        ring.save(dir.path(), &kek(1)).unwrap();
        let loaded = Keyring::load(dir.path(), &kek(1)).unwrap().unwrap();
        assert_eq!(loaded, ring);
        assert_eq!(loaded.active, 1);
        let id = ring.rotate(&kek(1), Alg::Aes256Gcm, 2).unwrap();
        assert_eq!(id, 2);
        ring.save(dir.path(), &kek(1)).unwrap();
        let loaded = Keyring::load(dir.path(), &kek(1)).unwrap().unwrap();
        let keys = loaded.unwrap_all(&kek(1), dir.path()).unwrap();
        assert_eq!(keys.len(), 2);
        assert_eq!(loaded.active, 2);
        assert_eq!(keys[1].alg, Alg::Aes256Gcm);
        let mode = std::fs::metadata(dir.path().join(KEYRING_FILE))
            .unwrap()
            .permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o600
        );
    }

    #[test]
    fn another_kek_or_any_flipped_bit_is_refused() {
        let ring = Keyring::new(&kek(1), Alg::ChaCha20Poly1305, 1).unwrap();
        let bytes = ring.encode(&kek(1)).unwrap();
        let p = Path::new("k");
        assert!(matches!(
            Keyring::decode(&bytes, &kek(2), p),
            Err(KeyringError::Authentication { .. })
        ));
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x10;
            assert!(Keyring::decode(&bad, &kek(1), p).is_err(), "byte {i}");
        }
        for len in 0..bytes.len() {
            assert!(Keyring::decode(&bytes[..len], &kek(1), p).is_err());
        }
    }

    #[test]
    fn a_wrapped_key_does_not_unwrap_under_another_id_or_kek() {
        let mut ring = Keyring::new(&kek(1), Alg::ChaCha20Poly1305, 1).unwrap();
        assert!(ring.unwrap_all(&kek(2), Path::new("k")).is_err());
        ring.keys[0].id = 7;
        ring.active = 7;
        assert!(matches!(
            ring.unwrap_all(&kek(1), Path::new("k")),
            Err(KeyringError::Unwrap { id: 7, .. })
        ));
    }

    #[test]
    fn data_keys_are_random_and_not_in_the_file() {
        let a = Keyring::new(&kek(1), Alg::ChaCha20Poly1305, 1).unwrap();
        let b = Keyring::new(&kek(1), Alg::ChaCha20Poly1305, 1).unwrap();
        assert_ne!(a.keys[0].wrapped, b.keys[0].wrapped);
        assert!(a.keys[0].wrapped.len() == NONCE_LEN + DATA_KEY_LEN + 16);
    }
}
