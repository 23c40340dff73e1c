//! The record codec (pure, no I/O): postcard bytes sealed with ChaCha20-Poly1305.
//!
//! ```text
//! sealed = version (1 byte, = 1) || nonce (12 bytes, random) || ciphertext || tag (16 bytes)
//! AAD    = version || record key          (the sled key the value is stored under)
//! ```
//!
//! Binding the record key as associated data means a value copied or swapped to another key,
//! or opened with another store's key, fails authentication instead of decoding as a different
//! reading. Random 96-bit nonces are safe at this volume: the birthday bound for a collision
//! is around 2^48 records per key, many orders of magnitude above a gateway's lifetime.
//! ChaCha20-Poly1305 rather than AES-GCM: the Raspberry Pi 4's Cortex-A72 has no AES
//! instructions, so software AES is slower and not constant-time.

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};

use super::keyfile::StoreKey;

pub const VERSION: u8 = 1;
const TAG_LEN: usize = 16;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    #[error("sealed record too short ({0} bytes)")]
    TooShort(usize),
    #[error("unknown record format version {0}")]
    Version(u8),
    #[error("record failed authentication (corrupt, truncated, moved, or another key)")]
    Authentication,
    #[error("no system randomness available")]
    Random,
}

/// A sealing/opening context for one store key.
pub struct Codec {
    key: LessSafeKey,
    rng: SystemRandom,
}

impl Codec {
    pub fn new(key: &StoreKey) -> Self {
        // CHACHA20_POLY1305 takes exactly 32 bytes, which `StoreKey` guarantees.
        let unbound = UnboundKey::new(&CHACHA20_POLY1305, key.bytes())
            .unwrap_or_else(|_| unreachable!("32-byte key for a 32-byte algorithm"));
        Self {
            key: LessSafeKey::new(unbound),
            rng: SystemRandom::new(),
        }
    }

    fn aad(record_key: &[u8]) -> Vec<u8> {
        let mut aad = Vec::with_capacity(1 + record_key.len());
        aad.push(VERSION);
        aad.extend_from_slice(record_key);
        aad
    }

    pub fn seal(&self, record_key: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, CodecError> {
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).map_err(|_| CodecError::Random)?;
        let mut buf = plaintext.to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(Self::aad(record_key)),
                &mut buf,
            )
            .map_err(|_| CodecError::Authentication)?;
        let mut out = Vec::with_capacity(1 + NONCE_LEN + buf.len());
        out.push(VERSION);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&buf);
        Ok(out)
    }

    pub fn open(&self, record_key: &[u8], sealed: &[u8]) -> Result<Vec<u8>, CodecError> {
        if sealed.len() < 1 + NONCE_LEN + TAG_LEN {
            return Err(CodecError::TooShort(sealed.len()));
        }
        let (version, rest) = sealed.split_at(1);
        if version != [VERSION] {
            return Err(CodecError::Version(version.first().copied().unwrap_or(0)));
        }
        let (nonce, ct) = rest.split_at(NONCE_LEN);
        let nonce: [u8; NONCE_LEN] = nonce
            .try_into()
            .map_err(|_| CodecError::TooShort(sealed.len()))?;
        let mut buf = ct.to_vec();
        let plain = self
            .key
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(Self::aad(record_key)),
                &mut buf,
            )
            .map_err(|_| CodecError::Authentication)?;
        Ok(plain.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn codec() -> Codec {
        Codec::new(&StoreKey::from_bytes([7; 32]))
    }

    #[test]
    fn round_trip() {
        let c = codec();
        let s = c.seal(b"k1", b"hello reading").unwrap();
        assert_eq!(c.open(b"k1", &s).unwrap(), b"hello reading");
        assert_ne!(
            &s[13..26],
            b"hello reading",
            "ciphertext is not the plaintext"
        );
    }

    #[test]
    fn every_single_bit_flip_is_detected() {
        let c = codec();
        let s = c.seal(b"k1", b"systolic 128 mmHg").unwrap();
        for i in 0..s.len() * 8 {
            let mut t = s.clone();
            t[i / 8] ^= 1 << (i % 8);
            assert!(c.open(b"k1", &t).is_err(), "flip of bit {i} not detected");
        }
    }

    #[test]
    fn a_record_moved_to_another_key_fails() {
        let c = codec();
        let s = c.seal(b"k1", b"x").unwrap();
        assert_eq!(c.open(b"k2", &s), Err(CodecError::Authentication));
    }

    #[test]
    fn another_store_key_fails() {
        let s = codec().seal(b"k1", b"x").unwrap();
        let other = Codec::new(&StoreKey::from_bytes([8; 32]));
        assert_eq!(other.open(b"k1", &s), Err(CodecError::Authentication));
    }

    #[test]
    fn truncation_fails() {
        let c = codec();
        let s = c.seal(b"k1", b"some bytes").unwrap();
        for n in 0..s.len() {
            assert!(
                c.open(b"k1", &s[..n]).is_err(),
                "truncation to {n} not detected"
            );
        }
    }

    #[test]
    fn nonces_differ() {
        let c = codec();
        assert_ne!(c.seal(b"k", b"x").unwrap(), c.seal(b"k", b"x").unwrap());
    }
}
