//! Record sealing: pure functions over bytes, no file or database access.
//!
//! # Sealed record format (version 1)
//!
//! ```text
//! +---------+-----------------+------------------------------+
//! | version | nonce           | ciphertext || Poly1305 tag   |
//! | 1 byte  | 12 bytes random | len(plaintext) + 16 bytes    |
//! +---------+-----------------+------------------------------+
//! AEAD = ChaCha20-Poly1305, key = HKDF-SHA256(master, "vitalgate-store/record-aead/v1")
//! AAD  = version || record_key
//! ```
//!
//! The record key is where the record lives in the store (tree name, `0x00`, sled key), so a
//! record copied to another key or tree, two records swapped, a record from another store (other
//! key), a truncated record and any flipped bit all fail [`RecordCipher::open`] with
//! [`CodecError::Authentication`]. There is no way to tell these cases apart, by design.
//!
//! ChaCha20-Poly1305 rather than AES-GCM: the Raspberry Pi 4's Cortex-A72 has no AES
//! instructions, where ChaCha20 is fast in plain NEON code.
//!
//! Nonces are 96 random bits from the OS RNG. The collision bound for random nonces is about
//! 2^-32 after 2^32 records under one key; a gateway writes perhaps 10^6 records a year, so the
//! margin is many orders of magnitude. (A counter nonce would need its own durable state, which
//! is a worse risk than this.)
//!
//! # Index keys
//!
//! Reading ids are SHA-256 digests of the reading's content. Reading content has low entropy (a
//! patient id, a time, a few values), so a plain id on disk could be confirmed by guessing. The
//! plaintext `index` and `acked` trees therefore use [`RecordCipher::index_key`], an
//! HMAC-SHA256 of the id under a second key derived from the master key.

use ring::aead::{self, Aad, LessSafeKey, Nonce, CHACHA20_POLY1305, NONCE_LEN};
use ring::hkdf;
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};

use super::keyfile::StoreKey;

/// The one sealed-record version this code writes and reads.
pub const SEALED_VERSION: u8 = 1;

/// Bytes a sealed record adds to its plaintext: version, nonce, tag.
pub const SEAL_OVERHEAD: usize = 1 + NONCE_LEN + TAG_LEN;

const TAG_LEN: usize = 16;
const HEADER_LEN: usize = 1 + NONCE_LEN;
const HKDF_SALT: &[u8] = b"vitalgate-store";
const AEAD_INFO: &[u8] = b"vitalgate-store/record-aead/v1";
const INDEX_INFO: &[u8] = b"vitalgate-store/index-mac/v1";

/// Why a sealed record could not be opened. None of the variants carry record content.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    #[error("sealed record too short: {len} bytes, at least {SEAL_OVERHEAD} needed")]
    TooShort { len: usize },
    #[error(
        "sealed record has unknown version {found} (this build reads version {SEALED_VERSION})"
    )]
    UnknownVersion { found: u8 },
    /// Bit flip, truncation, wrong key, or record moved to another key: indistinguishable.
    #[error("sealed record failed authentication (corrupted, truncated, moved, or sealed with another key)")]
    Authentication,
    /// A version 2 record names a data key the keyring does not hold.
    #[error("sealed record names data key {id}, which the keyring does not hold")]
    UnknownKey { id: u32 },
    #[error("the system random number generator failed")]
    Rng,
    #[error("key derivation failed")]
    KeyDerivation,
}

/// The keys derived from a [`StoreKey`], ready to seal and open records.
pub struct RecordCipher {
    aead: LessSafeKey,
    index: hmac::Key,
    rng: SystemRandom,
}

impl RecordCipher {
    /// Derives the record and index keys from the master key.
    ///
    /// # Errors
    ///
    /// [`CodecError::KeyDerivation`] only if ring rejects the fixed output lengths, which it
    /// does not for these algorithms; kept as an error rather than a panic.
    pub fn new(key: &StoreKey) -> Result<RecordCipher, CodecError> {
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, HKDF_SALT).extract(key.as_bytes());
        let aead_info = [AEAD_INFO];
        let unbound: aead::UnboundKey = prk
            .expand(&aead_info, &CHACHA20_POLY1305)
            .map_err(|_| CodecError::KeyDerivation)?
            .into();
        let index_info = [INDEX_INFO];
        let index: hmac::Key = prk
            .expand(&index_info, hmac::HMAC_SHA256)
            .map_err(|_| CodecError::KeyDerivation)?
            .into();
        Ok(RecordCipher {
            aead: LessSafeKey::new(unbound),
            index,
            rng: SystemRandom::new(),
        })
    }

    /// Seals `plaintext` for storage under `record_key`, with a fresh random nonce.
    ///
    /// # Errors
    ///
    /// [`CodecError::Rng`] if the OS RNG fails.
    pub fn seal(&self, record_key: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, CodecError> {
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).map_err(|_| CodecError::Rng)?;
        Ok(self.seal_with_nonce(nonce, record_key, plaintext))
    }

    /// Opens a record sealed by [`RecordCipher::seal`] under the same `record_key`.
    ///
    /// # Errors
    ///
    /// [`CodecError::TooShort`], [`CodecError::UnknownVersion`], [`CodecError::Authentication`].
    pub fn open(&self, record_key: &[u8], sealed: &[u8]) -> Result<Vec<u8>, CodecError> {
        if sealed.len() < SEAL_OVERHEAD {
            return Err(CodecError::TooShort { len: sealed.len() });
        }
        let Some((&version, rest)) = sealed.split_first() else {
            return Err(CodecError::TooShort { len: 0 });
        };
        if version != SEALED_VERSION {
            return Err(CodecError::UnknownVersion { found: version });
        }
        let Some((nonce, body)) = rest.split_at_checked(NONCE_LEN) else {
            return Err(CodecError::TooShort { len: sealed.len() });
        };
        let nonce =
            Nonce::try_assume_unique_for_key(nonce).map_err(|_| CodecError::Authentication)?;
        let mut buf = body.to_vec();
        let plaintext_len = self
            .aead
            .open_in_place(nonce, Aad::from(aad(record_key)), &mut buf)
            .map_err(|_| CodecError::Authentication)?
            .len();
        buf.truncate(plaintext_len);
        Ok(buf)
    }

    /// The keyed hash under which a reading id is stored in the plaintext trees.
    pub fn index_key(&self, id: &[u8; 32]) -> [u8; 32] {
        let tag = hmac::sign(&self.index, id);
        let mut out = [0u8; 32];
        out.copy_from_slice(tag.as_ref());
        out
    }

    fn seal_with_nonce(
        &self,
        nonce: [u8; NONCE_LEN],
        record_key: &[u8],
        plaintext: &[u8],
    ) -> Vec<u8> {
        let mut out = Vec::with_capacity(plaintext.len() + SEAL_OVERHEAD);
        out.push(SEALED_VERSION);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(plaintext);
        let tag = self.aead.seal_in_place_separate_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad(record_key)),
            &mut out[HEADER_LEN..],
        );
        match tag {
            Ok(tag) => out.extend_from_slice(tag.as_ref()),
            // ring fails sealing only for inputs over ~256 GiB (ChaCha20 counter limit), which
            // cannot reach here: record sizes are capped far below. Return a record that will
            // never authenticate rather than panic.
            Err(_) => out.truncate(HEADER_LEN),
        }
        out
    }
}

/// Sealed record version 2 (store format 5): the data key's id and a counter nonce.
///
/// ```text
/// +---------+---------------+-------------------------------+------------------------------+
/// | 0x02    | key id u32 BE | nonce: counter u64 BE | salt  | ciphertext || tag            |
/// | 1 byte  | 4 bytes       | 8 bytes               | 4     | len(plaintext) + 16 bytes    |
/// +---------+---------------+-------------------------------+------------------------------+
/// AEAD = the data key's algorithm (ChaCha20-Poly1305 or AES-256-GCM), key = the data key
/// AAD  = 0x02 || key id || record_key
/// ```
///
/// **Nonces never repeat under one key**: the counter is a sled `generate_id` of the store the
/// record is sealed in, which is unique and grows across restarts (sled persists it ahead of
/// use and, on recovery, skips past anything it may have handed out); data keys belong to one
/// store (a fresh store makes its own keyring). The 4 random salt bytes only matter if a
/// store's directory is copied and both copies write under the same key.
pub const SEALED_VERSION_V2: u8 = 2;

const V2_HEADER_LEN: usize = 1 + 4 + NONCE_LEN;

/// Bytes a version-2 sealed record adds to its plaintext.
pub const SEAL_OVERHEAD_V2: usize = V2_HEADER_LEN + TAG_LEN;

/// Sealed record version 3 (store format 6): version 2 plus the record's **binding**, a 16-byte
/// tag of the reading it holds, in the header and in the AAD.
///
/// ```text
/// +---------+---------------+------------+-------------------------------+------------------+
/// | 0x03    | key id u32 BE | binding    | nonce: counter u64 BE | salt  | ciphertext || tag|
/// | 1 byte  | 4 bytes       | 16 bytes   | 8 bytes               | 4     | len + 16 bytes   |
/// +---------+---------------+------------+-------------------------------+------------------+
/// AAD  = 0x03 || key id || binding || record_key
/// ```
///
/// The store's `pending` and `dead` records are version 3, with binding = the first 16 bytes of
/// the reading id's index key (HMAC-SHA256 under the store's index key; all zeros for a raw
/// dead letter, which has no reading id). The reading id is a SHA-256 over the FHIR identifier
/// (`<device>-<patient>-<type>-<time>`) and the values, so the binding ties the sealed record to
/// its device and its patient: a record given another binding fails to open, and one whose
/// content is not the reading its binding names (which only a holder of the keys could seal)
/// is quarantined by the outbox after decoding. The binding is readable without the data key,
/// like the index key it is cut from (the `index` tree holds those in clear).
pub const SEALED_VERSION_V3: u8 = 3;

/// Length of a record's binding.
pub const BINDING_LEN: usize = 16;

const V3_HEADER_LEN: usize = 1 + 4 + BINDING_LEN + NONCE_LEN;

/// Bytes a version-3 sealed record adds to its plaintext.
pub const SEAL_OVERHEAD_V3: usize = V3_HEADER_LEN + TAG_LEN;

/// The keys a store seals and opens records with: its data keys (version 2 records) and the
/// legacy cipher derived from the store key (version 1 records, the index MAC).
pub struct KeySet {
    legacy: RecordCipher,
    keys: Vec<super::keyring::DataKey>,
    active: usize,
    salt: [u8; 4],
}

impl KeySet {
    /// `keys` must hold the key with id `active` (checked by the keyring's unwrap).
    ///
    /// # Errors
    ///
    /// [`CodecError::KeyDerivation`] if `active` is missing, [`CodecError::Rng`].
    pub fn new(
        master: &StoreKey,
        keys: Vec<super::keyring::DataKey>,
        active: u32,
    ) -> Result<KeySet, CodecError> {
        let active = keys
            .iter()
            .position(|k| k.id == active)
            .ok_or(CodecError::KeyDerivation)?;
        let mut salt = [0u8; 4];
        SystemRandom::new()
            .fill(&mut salt)
            .map_err(|_| CodecError::Rng)?;
        Ok(KeySet {
            legacy: RecordCipher::new(master)?,
            keys,
            active,
            salt,
        })
    }

    /// The id of the key new records are sealed with.
    pub fn active_id(&self) -> u32 {
        self.keys[self.active].id
    }

    /// The ids of the data keys this set holds.
    pub fn ids(&self) -> Vec<u32> {
        self.keys.iter().map(|k| k.id).collect()
    }

    /// The legacy cipher (version 1 records, the key check, the index MAC).
    pub fn legacy(&self) -> &RecordCipher {
        &self.legacy
    }

    /// The keyed hash under which a reading id is stored in the plaintext trees.
    pub fn index_key(&self, id: &[u8; 32]) -> [u8; 32] {
        self.legacy.index_key(id)
    }

    /// Which key a sealed record names: `Some(0)` for a version 1 record, `None` if it is too
    /// short or of an unknown version to say.
    pub fn key_id_of(sealed: &[u8]) -> Option<u32> {
        match *sealed.first()? {
            SEALED_VERSION => Some(0),
            SEALED_VERSION_V2 | SEALED_VERSION_V3 => sealed
                .get(1..5)
                .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]])),
            _ => None,
        }
    }

    /// The binding a version 3 record names in its header (`None` for other versions or a
    /// record too short to say). Authenticated only once the record opens.
    pub fn binding_of(sealed: &[u8]) -> Option<[u8; BINDING_LEN]> {
        if sealed.first() != Some(&SEALED_VERSION_V3) {
            return None;
        }
        sealed.get(5..5 + BINDING_LEN)?.try_into().ok()
    }

    /// The binding of a reading id: the first [`BINDING_LEN`] bytes of its index key.
    pub fn binding(&self, id: &[u8; 32]) -> [u8; BINDING_LEN] {
        let mut b = [0u8; BINDING_LEN];
        b.copy_from_slice(&self.index_key(id)[..BINDING_LEN]);
        b
    }

    /// Seals `plaintext` as a version 3 record bound to `binding`, under the active key for
    /// `record_key`; `counter` as for [`KeySet::seal`].
    pub fn seal_bound(
        &self,
        record_key: &[u8],
        binding: &[u8; BINDING_LEN],
        plaintext: &[u8],
        counter: u64,
    ) -> Vec<u8> {
        self.seal_keyed(SEALED_VERSION_V3, binding, record_key, plaintext, counter)
    }

    /// Version 2 (`bound` empty) and version 3 records: `version | key id | bound | nonce |
    /// ciphertext | tag`, AAD = everything before the nonce ‖ `record_key`.
    fn seal_keyed(
        &self,
        version: u8,
        bound: &[u8],
        record_key: &[u8],
        plaintext: &[u8],
        counter: u64,
    ) -> Vec<u8> {
        let key = &self.keys[self.active];
        let nonce = self.nonce(counter);
        let mut out = Vec::with_capacity(5 + bound.len() + NONCE_LEN + plaintext.len() + TAG_LEN);
        out.push(version);
        out.extend_from_slice(&key.id.to_be_bytes());
        out.extend_from_slice(bound);
        let aad = keyed_aad(&out, record_key);
        out.extend_from_slice(&nonce);
        let header = out.len();
        out.extend_from_slice(plaintext);
        let tag = key.key.seal_in_place_separate_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad),
            &mut out[header..],
        );
        match tag {
            Ok(tag) => out.extend_from_slice(tag.as_ref()),
            // As in `RecordCipher::seal_with_nonce`: unreachable for capped record sizes; a
            // record that never authenticates rather than a panic.
            Err(_) => out.truncate(header),
        }
        out
    }

    /// Opens a version 2 or 3 record whose header (with its nonce last) is `header` bytes.
    fn open_keyed(
        &self,
        record_key: &[u8],
        sealed: &[u8],
        header: usize,
    ) -> Result<Vec<u8>, CodecError> {
        if sealed.len() < header + TAG_LEN {
            return Err(CodecError::TooShort { len: sealed.len() });
        }
        let id = u32::from_be_bytes([sealed[1], sealed[2], sealed[3], sealed[4]]);
        let key = self
            .keys
            .iter()
            .find(|k| k.id == id)
            .ok_or(CodecError::UnknownKey { id })?;
        let nonce = Nonce::try_assume_unique_for_key(&sealed[header - NONCE_LEN..header])
            .map_err(|_| CodecError::Authentication)?;
        let aad = keyed_aad(&sealed[..header - NONCE_LEN], record_key);
        let mut buf = sealed[header..].to_vec();
        let len = key
            .key
            .open_in_place(nonce, Aad::from(aad), &mut buf)
            .map_err(|_| CodecError::Authentication)?
            .len();
        buf.truncate(len);
        Ok(buf)
    }

    fn nonce(&self, counter: u64) -> [u8; NONCE_LEN] {
        let mut nonce = [0u8; NONCE_LEN];
        nonce[..8].copy_from_slice(&counter.to_be_bytes());
        nonce[8..].copy_from_slice(&self.salt);
        nonce
    }

    /// Seals `plaintext` under the active key for `record_key`; `counter` must be unique in
    /// the store (a sled `generate_id`): it is the nonce.
    pub fn seal(&self, record_key: &[u8], plaintext: &[u8], counter: u64) -> Vec<u8> {
        self.seal_keyed(SEALED_VERSION_V2, &[], record_key, plaintext, counter)
    }

    /// Opens a version 1 or version 2 record sealed for `record_key`.
    ///
    /// # Errors
    ///
    /// [`CodecError::TooShort`], [`CodecError::UnknownVersion`], [`CodecError::UnknownKey`],
    /// [`CodecError::Authentication`].
    pub fn open(&self, record_key: &[u8], sealed: &[u8]) -> Result<Vec<u8>, CodecError> {
        match sealed.first() {
            None => Err(CodecError::TooShort { len: 0 }),
            Some(&SEALED_VERSION) => self.legacy.open(record_key, sealed),
            Some(&SEALED_VERSION_V2) => self.open_keyed(record_key, sealed, V2_HEADER_LEN),
            Some(&SEALED_VERSION_V3) => self.open_keyed(record_key, sealed, V3_HEADER_LEN),
            Some(&found) => Err(CodecError::UnknownVersion { found }),
        }
    }
}

/// The AAD of a version 2 or 3 record: its header up to the nonce (version, key id, binding)
/// ‖ `record_key`.
fn keyed_aad(head: &[u8], record_key: &[u8]) -> Vec<u8> {
    let mut aad = Vec::with_capacity(head.len() + record_key.len());
    aad.extend_from_slice(head);
    aad.extend_from_slice(record_key);
    aad
}

fn aad(record_key: &[u8]) -> Vec<u8> {
    let mut aad = Vec::with_capacity(1 + record_key.len());
    aad.push(SEALED_VERSION);
    aad.extend_from_slice(record_key);
    aad
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cipher(byte: u8) -> RecordCipher {
        RecordCipher::new(&StoreKey::from_bytes([byte; 32])).unwrap()
    }

    const KEY: &[u8] = b"pending\0\0\0\0\0\0\0\0\x2a";
    const PLAINTEXT: &[u8] = b"a reading, postcard-encoded";

    #[test]
    fn round_trip() {
        let c = cipher(1);
        let sealed = c.seal(KEY, PLAINTEXT).unwrap();
        assert_eq!(sealed.len(), PLAINTEXT.len() + SEAL_OVERHEAD);
        assert_eq!(sealed[0], SEALED_VERSION);
        assert_eq!(c.open(KEY, &sealed).unwrap(), PLAINTEXT);
        let empty = c.seal(KEY, b"").unwrap();
        assert_eq!(c.open(KEY, &empty).unwrap(), b"");
    }

    #[test]
    fn same_plaintext_seals_differently_each_time() {
        let c = cipher(1);
        assert_ne!(
            c.seal(KEY, PLAINTEXT).unwrap(),
            c.seal(KEY, PLAINTEXT).unwrap()
        );
    }

    #[test]
    fn plaintext_does_not_appear_in_the_sealed_record() {
        let c = cipher(1);
        let sealed = c.seal(KEY, PLAINTEXT).unwrap();
        assert!(!sealed
            .windows(8)
            .any(|w| PLAINTEXT.windows(8).any(|p| p == w)));
    }

    #[test]
    fn flipping_any_single_bit_fails_to_open() {
        let c = cipher(1);
        let sealed = c.seal(KEY, PLAINTEXT).unwrap();
        for byte in 0..sealed.len() {
            for bit in 0..8 {
                let mut bad = sealed.clone();
                bad[byte] ^= 1 << bit;
                let err = c.open(KEY, &bad).unwrap_err();
                if byte == 0 {
                    assert!(matches!(err, CodecError::UnknownVersion { .. }), "{err:?}");
                } else {
                    assert_eq!(err, CodecError::Authentication, "byte {byte} bit {bit}");
                }
            }
        }
    }

    #[test]
    fn other_record_key_fails_to_open() {
        let c = cipher(1);
        let sealed = c.seal(KEY, PLAINTEXT).unwrap();
        for other in [
            &b"pending\0\0\0\0\0\0\0\0\x2b"[..],
            b"dead\0\0\0\0\0\0\0\0\0\x2a",
            b"",
        ] {
            assert_eq!(c.open(other, &sealed), Err(CodecError::Authentication));
        }
    }

    #[test]
    fn swapped_records_fail_to_open() {
        let c = cipher(1);
        let (k1, k2) = (b"pending\0\x01", b"pending\0\x02");
        let (r1, r2) = (c.seal(k1, b"one").unwrap(), c.seal(k2, b"two").unwrap());
        assert_eq!(c.open(k1, &r2), Err(CodecError::Authentication));
        assert_eq!(c.open(k2, &r1), Err(CodecError::Authentication));
    }

    #[test]
    fn wrong_key_fails_to_open() {
        let sealed = cipher(1).seal(KEY, PLAINTEXT).unwrap();
        assert_eq!(
            cipher(2).open(KEY, &sealed),
            Err(CodecError::Authentication)
        );
    }

    #[test]
    fn every_truncation_fails_to_open() {
        let c = cipher(1);
        let sealed = c.seal(KEY, PLAINTEXT).unwrap();
        for len in 0..sealed.len() {
            let err = c.open(KEY, &sealed[..len]).unwrap_err();
            if len < SEAL_OVERHEAD {
                assert_eq!(err, CodecError::TooShort { len });
            } else {
                assert_eq!(err, CodecError::Authentication, "len {len}");
            }
        }
        let mut longer = sealed.clone();
        longer.push(0);
        assert_eq!(c.open(KEY, &longer), Err(CodecError::Authentication));
    }

    #[test]
    fn index_key_is_keyed_and_deterministic() {
        let id = [7u8; 32];
        assert_eq!(cipher(1).index_key(&id), cipher(1).index_key(&id));
        assert_ne!(cipher(1).index_key(&id), cipher(2).index_key(&id));
        assert_ne!(cipher(1).index_key(&id), id);
        assert_ne!(cipher(1).index_key(&id), cipher(1).index_key(&[8u8; 32]));
    }

    fn keyset(master: u8, ring: &crate::store::keyring::Keyring) -> KeySet {
        let kek = StoreKey::from_bytes([master; 32]);
        let keys = ring.unwrap_all(&kek, std::path::Path::new("k")).unwrap();
        KeySet::new(&kek, keys, ring.active).unwrap()
    }

    #[test]
    fn v2_records_name_their_key_and_old_keys_keep_opening_after_rotation() {
        use crate::store::keyring::{Alg, Keyring};
        let kek = StoreKey::from_bytes([3; 32]);
        let mut ring = Keyring::new(&kek, Alg::ChaCha20Poly1305, 0).unwrap();
        let one = keyset(3, &ring);
        let v1 = one.legacy().seal(KEY, PLAINTEXT).unwrap();
        let a = one.seal(KEY, PLAINTEXT, 1);
        assert_eq!(KeySet::key_id_of(&a), Some(1));
        assert_eq!(KeySet::key_id_of(&v1), Some(0));
        assert_eq!(a.len(), PLAINTEXT.len() + SEAL_OVERHEAD_V2);
        ring.rotate(&kek, Alg::Aes256Gcm, 1).unwrap();
        let two = keyset(3, &ring);
        let b = two.seal(KEY, PLAINTEXT, 2);
        assert_eq!(KeySet::key_id_of(&b), Some(2));
        for sealed in [&v1, &a, &b] {
            assert_eq!(two.open(KEY, sealed).unwrap(), PLAINTEXT);
        }
        // The old set does not hold key 2.
        assert_eq!(one.open(KEY, &b), Err(CodecError::UnknownKey { id: 2 }));
    }

    #[test]
    fn v2_records_moved_relabelled_or_flipped_fail_to_open() {
        use crate::store::keyring::{Alg, Keyring};
        let kek = StoreKey::from_bytes([3; 32]);
        let mut ring = Keyring::new(&kek, Alg::ChaCha20Poly1305, 0).unwrap();
        ring.rotate(&kek, Alg::ChaCha20Poly1305, 1).unwrap();
        let set = keyset(3, &ring);
        let sealed = set.seal(KEY, PLAINTEXT, 9);
        assert_eq!(
            set.open(b"pending\0other", &sealed),
            Err(CodecError::Authentication)
        );
        // Claiming another key id (key 1 exists too) fails.
        let mut relabelled = sealed.clone();
        relabelled[4] = 1;
        assert_eq!(set.open(KEY, &relabelled), Err(CodecError::Authentication));
        for byte in 1..sealed.len() {
            let mut bad = sealed.clone();
            bad[byte] ^= 0x01;
            assert!(set.open(KEY, &bad).is_err(), "byte {byte}");
        }
        for len in 0..sealed.len() {
            assert!(set.open(KEY, &sealed[..len]).is_err(), "len {len}");
        }
    }

    #[test]
    fn v3_records_bind_their_reading_and_fail_to_open_rebound_moved_or_flipped() {
        use crate::store::keyring::{Alg, Keyring};
        let kek = StoreKey::from_bytes([3; 32]);
        let ring = Keyring::new(&kek, Alg::ChaCha20Poly1305, 0).unwrap();
        let set = keyset(3, &ring);
        let (a, b) = (set.binding(&[1; 32]), set.binding(&[2; 32]));
        assert_ne!(a, b);
        assert_eq!(a[..], set.index_key(&[1; 32])[..BINDING_LEN]);
        let sealed = set.seal_bound(KEY, &a, PLAINTEXT, 11);
        assert_eq!(sealed.len(), PLAINTEXT.len() + SEAL_OVERHEAD_V3);
        assert_eq!(KeySet::binding_of(&sealed), Some(a));
        assert_eq!(KeySet::key_id_of(&sealed), Some(ring.active));
        assert_eq!(set.open(KEY, &sealed).unwrap(), PLAINTEXT);
        // Bound to another reading (another device or patient): does not open.
        let mut rebound = sealed.clone();
        rebound[5..5 + BINDING_LEN].copy_from_slice(&b);
        assert_eq!(set.open(KEY, &rebound), Err(CodecError::Authentication));
        // Moved to another key of the store: does not open.
        assert_eq!(
            set.open(b"pending\0other", &sealed),
            Err(CodecError::Authentication)
        );
        for byte in 1..sealed.len() {
            let mut bad = sealed.clone();
            bad[byte] ^= 0x01;
            assert!(set.open(KEY, &bad).is_err(), "byte {byte}");
        }
        for len in 0..sealed.len() {
            assert!(set.open(KEY, &sealed[..len]).is_err(), "len {len}");
        }
        // Not a v3 record: no binding.
        assert_eq!(KeySet::binding_of(&set.seal(KEY, PLAINTEXT, 12)), None);
    }

    #[test]
    fn v2_nonces_are_the_counter_so_distinct_counters_never_share_a_nonce() {
        use crate::store::keyring::{Alg, Keyring};
        let kek = StoreKey::from_bytes([3; 32]);
        let ring = Keyring::new(&kek, Alg::ChaCha20Poly1305, 0).unwrap();
        let set = keyset(3, &ring);
        let mut seen = std::collections::HashSet::new();
        for counter in 0..10_000u64 {
            let sealed = set.seal(KEY, PLAINTEXT, counter);
            assert_eq!(&sealed[5..13], &counter.to_be_bytes());
            assert!(seen.insert(sealed[5..17].to_vec()), "nonce repeated");
        }
    }
}
