//! The export file format (pure: bytes in, bytes out; randomness is passed in). The format is
//! specified in the [`crate::export`] module doc; this file is its only implementation.

use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305};
use ring::agreement::{self, EphemeralPrivateKey, UnparsedPublicKey, X25519};
use ring::hkdf;
use ring::rand::SecureRandom;
use serde::{Deserialize, Serialize};

use super::keys::{format_public_key, SiteKey};

/// The first 8 bytes of every export file.
pub const MAGIC: &[u8; 8] = b"VGEXPORT";
/// The format version this build writes and reads.
pub const VERSION: u8 = 1;
/// Length of the header (the AAD of every chunk).
pub const HEADER_LEN: usize = 108;
/// Chunk framing: flag byte and a u32 big-endian ciphertext length.
pub const CHUNK_PREFIX_LEN: usize = 5;
/// ChaCha20-Poly1305 tag length.
pub const TAG_LEN: usize = 16;
/// Largest ciphertext of one chunk (a Bundle of 50 entries is well under 1 MiB).
pub const MAX_CHUNK_LEN: usize = 16 * 1024 * 1024;
/// Flag byte of the last chunk; every other chunk has [`FLAG_MORE`].
pub const FLAG_FINAL: u8 = 1;
pub const FLAG_MORE: u8 = 0;
/// HKDF `info` prefix; both public keys follow it.
const HKDF_INFO: &[u8] = b"vitalgate-export v1 X25519-HKDF-SHA256-ChaCha20Poly1305";

/// The authenticated, unencrypted header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub ephemeral: [u8; 32],
    pub recipient: [u8; 32],
    pub file_id: [u8; 16],
    /// Time of export, ms since the Unix epoch.
    pub created_ms: u64,
    pub bundles: u32,
    pub readings: u32,
}

/// Chunk 0: what the importer needs besides the Bundles.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub gateway: String,
    pub software: String,
    /// Keys the receipt ([`super::receipt`]); also kept, sealed, in the gateway's store.
    pub receipt_key: [u8; 32],
}

/// Chunks 1..=n: one transaction Bundle and which readings its Observation entries carry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundleChunk {
    /// `(entry index in the Bundle, reading ids)` per Observation entry (`fhir::EntryRef`).
    pub entries: Vec<(u32, Vec<[u8; 32]>)>,
    /// The Bundle, as the JSON bytes the uploader would serialise.
    pub bundle: Vec<u8>,
}

impl BundleChunk {
    /// Distinct reading ids the chunk carries.
    pub fn reading_ids(&self) -> impl Iterator<Item = &[u8; 32]> {
        self.entries.iter().flat_map(|(_, ids)| ids.iter())
    }
}

/// An export file, opened and fully verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opened {
    pub header: Header,
    pub manifest: Manifest,
    pub bundles: Vec<BundleChunk>,
}

/// Why an export file could not be written or opened. Offsets, counts and key fingerprints;
/// never content.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ExportError {
    #[error("not a vitalgate export file (bad magic)")]
    NotAnExportFile,
    #[error("export file format version {found}, this build reads version {VERSION}")]
    UnsupportedVersion { found: u8 },
    #[error("export file is encrypted to public key {file_for}, not to this site key ({ours})")]
    WrongKey { file_for: String, ours: String },
    #[error("export file chunk {chunk} does not authenticate (tampered, reordered, duplicated or not for this key); nothing from this file is used")]
    Authentication { chunk: u64 },
    #[error("export file is truncated at byte {offset} (its last chunk is missing)")]
    Truncated { offset: usize },
    #[error("export file has {extra} bytes after its last chunk")]
    TrailingData { extra: usize },
    #[error("export file chunk {chunk} claims {len} bytes, more than {MAX_CHUNK_LEN}")]
    ChunkTooLarge { chunk: u64, len: usize },
    #[error("export file holds {found} bundles / {found_readings} readings, its header says {expected} / {expected_readings}")]
    CountMismatch {
        expected: u32,
        found: u64,
        expected_readings: u32,
        found_readings: u64,
    },
    #[error("export file chunk {chunk} authenticates but does not decode: {reason}")]
    Malformed { chunk: u64, reason: String },
    #[error("the key agreement produced no secret (a low-order public key)")]
    LowOrderKey,
    #[error("cryptographic failure: {0}")]
    Crypto(&'static str),
    #[error("encoding failed: {0}")]
    Encode(String),
}

impl ExportError {
    /// Is this the file failing authentication (wrong key or tampering), rather than a failure
    /// to write one? `import-export` exits with its own code for these.
    pub fn is_authentication(&self) -> bool {
        !matches!(self, ExportError::Crypto(_) | ExportError::Encode(_))
    }
}

impl Header {
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        h[0..8].copy_from_slice(MAGIC);
        h[8] = VERSION;
        // 9..12: reserved, zero.
        h[12..44].copy_from_slice(&self.ephemeral);
        h[44..76].copy_from_slice(&self.recipient);
        h[76..92].copy_from_slice(&self.file_id);
        h[92..100].copy_from_slice(&self.created_ms.to_be_bytes());
        h[100..104].copy_from_slice(&self.bundles.to_be_bytes());
        h[104..108].copy_from_slice(&self.readings.to_be_bytes());
        h
    }

    /// Parses the header. Nothing in it is trusted until chunk 0 authenticates (it is the
    /// AAD of every chunk).
    ///
    /// # Errors
    ///
    /// [`ExportError::NotAnExportFile`], [`ExportError::UnsupportedVersion`],
    /// [`ExportError::Truncated`].
    pub fn parse(bytes: &[u8]) -> Result<Header, ExportError> {
        if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
            return Err(ExportError::NotAnExportFile);
        }
        let h = bytes.get(..HEADER_LEN).ok_or(ExportError::Truncated {
            offset: bytes.len(),
        })?;
        if h[8] != VERSION {
            return Err(ExportError::UnsupportedVersion { found: h[8] });
        }
        let arr = |r: std::ops::Range<usize>| h.get(r).unwrap_or_default();
        let mut header = Header {
            ephemeral: [0; 32],
            recipient: [0; 32],
            file_id: [0; 16],
            created_ms: 0,
            bundles: 0,
            readings: 0,
        };
        header.ephemeral.copy_from_slice(arr(12..44));
        header.recipient.copy_from_slice(arr(44..76));
        header.file_id.copy_from_slice(arr(76..92));
        let mut b8 = [0u8; 8];
        b8.copy_from_slice(arr(92..100));
        header.created_ms = u64::from_be_bytes(b8);
        let mut b4 = [0u8; 4];
        b4.copy_from_slice(arr(100..104));
        header.bundles = u32::from_be_bytes(b4);
        b4.copy_from_slice(arr(104..108));
        header.readings = u32::from_be_bytes(b4);
        // Bytes 9..12 are reserved: not read here; the AEAD covers them (they are AAD).
        Ok(header)
    }
}

/// Writes an export file for `recipient`: header, the manifest, one chunk per Bundle. The
/// ephemeral X25519 key is ring's and lives only inside this call.
///
/// # Errors
///
/// [`ExportError::Crypto`] (RNG, a low-order recipient key), [`ExportError::Encode`].
pub fn seal_file(
    recipient: &[u8; 32],
    file_id: [u8; 16],
    created_ms: u64,
    manifest: &Manifest,
    bundles: &[BundleChunk],
    rng: &dyn SecureRandom,
) -> Result<Vec<u8>, ExportError> {
    let private = EphemeralPrivateKey::generate(&X25519, rng)
        .map_err(|_| ExportError::Crypto("X25519 key generation failed"))?;
    let public = private
        .compute_public_key()
        .map_err(|_| ExportError::Crypto("X25519 public key"))?;
    let mut ephemeral = [0u8; 32];
    ephemeral.copy_from_slice(public.as_ref());
    let readings: u64 = bundles.iter().map(|b| b.reading_ids().count() as u64).sum();
    let header = Header {
        ephemeral,
        recipient: *recipient,
        file_id,
        created_ms,
        bundles: u32::try_from(bundles.len())
            .map_err(|_| ExportError::Encode("too many bundles".into()))?,
        readings: u32::try_from(readings)
            .map_err(|_| ExportError::Encode("too many readings".into()))?,
    };
    let key = agreement::agree_ephemeral(
        private,
        &UnparsedPublicKey::new(&X25519, recipient),
        |shared| derive_key(shared, &header),
    )
    .map_err(|_| ExportError::LowOrderKey)??;
    let header_bytes = header.encode();
    let mut out = Vec::from(header_bytes);
    let mut plaintexts = Vec::with_capacity(bundles.len() + 1);
    plaintexts.push(deflate(
        &postcard::to_stdvec(manifest).map_err(|e| ExportError::Encode(e.to_string()))?,
    )?);
    for b in bundles {
        plaintexts.push(deflate(
            &postcard::to_stdvec(b).map_err(|e| ExportError::Encode(e.to_string()))?,
        )?);
    }
    let last = plaintexts.len() - 1;
    for (i, mut plain) in plaintexts.into_iter().enumerate() {
        let flag = if i == last { FLAG_FINAL } else { FLAG_MORE };
        let len = plain.len() + TAG_LEN;
        if len > MAX_CHUNK_LEN {
            return Err(ExportError::Encode(format!(
                "chunk {i} is {len} bytes, more than {MAX_CHUNK_LEN}"
            )));
        }
        let len32 = u32::try_from(len).map_err(|_| ExportError::Encode("chunk length".into()))?;
        let aad = chunk_aad(&header_bytes, flag, len32);
        key.seal_in_place_append_tag(nonce(i as u64), Aad::from(&aad[..]), &mut plain)
            .map_err(|_| ExportError::Crypto("seal"))?;
        out.push(flag);
        out.extend_from_slice(&len32.to_be_bytes());
        out.extend_from_slice(&plain);
    }
    Ok(out)
}

/// Opens and verifies a whole export file: every chunk must authenticate, in order, up to a
/// final chunk at the file's end, and the counts must match the header, before anything is
/// returned. Nothing of a file that fails is returned.
///
/// # Errors
///
/// Every [`ExportError`] that [`ExportError::is_authentication`].
pub fn open_file(bytes: &[u8], key: &SiteKey) -> Result<Opened, ExportError> {
    let header = Header::parse(bytes)?;
    let ours = key.public();
    if header.recipient != ours {
        return Err(ExportError::WrongKey {
            file_for: format_public_key(&header.recipient),
            ours: format_public_key(&ours),
        });
    }
    let shared = key
        .agree(&header.ephemeral)
        .ok_or(ExportError::LowOrderKey)?;
    let aead_key = derive_key(&shared, &header)?;
    // The AAD is the header exactly as it is in the file: a change to any of its bytes, the
    // reserved ones included (the parser does not read them), fails chunk 0.
    let header_bytes = bytes.get(..HEADER_LEN).unwrap_or_default();
    let mut plaintexts = Vec::new();
    let mut at = HEADER_LEN;
    let mut chunk: u64 = 0;
    loop {
        let prefix = bytes
            .get(at..at + CHUNK_PREFIX_LEN)
            .ok_or(ExportError::Truncated {
                offset: bytes.len(),
            })?;
        let flag = prefix[0];
        let mut l4 = [0u8; 4];
        l4.copy_from_slice(&prefix[1..5]);
        let len32 = u32::from_be_bytes(l4);
        let len = len32 as usize;
        if len > MAX_CHUNK_LEN {
            return Err(ExportError::ChunkTooLarge { chunk, len });
        }
        if len < TAG_LEN || (flag != FLAG_FINAL && flag != FLAG_MORE) {
            return Err(ExportError::Authentication { chunk });
        }
        let start = at + CHUNK_PREFIX_LEN;
        let sealed = bytes
            .get(start..start + len)
            .ok_or(ExportError::Truncated {
                offset: bytes.len(),
            })?;
        let mut buf = sealed.to_vec();
        let aad = chunk_aad(header_bytes, flag, len32);
        let plain_len = aead_key
            .open_in_place(nonce(chunk), Aad::from(&aad[..]), &mut buf)
            .map_err(|_| ExportError::Authentication { chunk })?
            .len();
        buf.truncate(plain_len);
        plaintexts.push(buf);
        at = start + len;
        chunk += 1;
        if flag == FLAG_FINAL {
            break;
        }
    }
    if at != bytes.len() {
        return Err(ExportError::TrailingData {
            extra: bytes.len() - at,
        });
    }
    let mut chunks = plaintexts.into_iter();
    let manifest: Manifest = chunks
        .next()
        .ok_or(ExportError::Malformed {
            chunk: 0,
            reason: "no manifest".into(),
        })
        .and_then(|p| {
            postcard::from_bytes(&inflate(&p, 0)?).map_err(|e| ExportError::Malformed {
                chunk: 0,
                reason: e.to_string(),
            })
        })?;
    let mut bundles = Vec::new();
    for (i, p) in chunks.enumerate() {
        let plain = inflate(&p, i as u64 + 1)?;
        let b: BundleChunk = postcard::from_bytes(&plain).map_err(|e| ExportError::Malformed {
            chunk: i as u64 + 1,
            reason: e.to_string(),
        })?;
        bundles.push(b);
    }
    let readings: u64 = bundles.iter().map(|b| b.reading_ids().count() as u64).sum();
    if bundles.len() as u64 != u64::from(header.bundles) || readings != u64::from(header.readings) {
        return Err(ExportError::CountMismatch {
            expected: header.bundles,
            found: bundles.len() as u64,
            expected_readings: header.readings,
            found_readings: readings,
        });
    }
    Ok(Opened {
        header,
        manifest,
        bundles,
    })
}

/// HKDF-SHA256(salt = file id, IKM = X25519 shared secret, info = format ‖ ephemeral public
/// key ‖ recipient public key) → the file's ChaCha20-Poly1305 key.
fn derive_key(shared: &[u8], header: &Header) -> Result<LessSafeKey, ExportError> {
    let salt = hkdf::Salt::new(hkdf::HKDF_SHA256, &header.file_id);
    let prk = salt.extract(shared);
    let info = [HKDF_INFO, &header.ephemeral[..], &header.recipient[..]];
    let okm = prk
        .expand(&info, &CHACHA20_POLY1305)
        .map_err(|_| ExportError::Crypto("HKDF expand"))?;
    Ok(LessSafeKey::new(UnboundKey::from(okm)))
}

/// Largest plaintext a chunk may inflate to (a Bundle of 50 entries is well under 1 MiB).
pub const MAX_PLAIN_LEN: u64 = 64 * 1024 * 1024;

/// Raw DEFLATE (RFC 1951) of a chunk's postcard bytes: Bundles of similar Observations shrink
/// about tenfold. Compressed before sealing.
fn deflate(plain: &[u8]) -> Result<Vec<u8>, ExportError> {
    use std::io::Write as _;
    let mut enc = flate2::write::DeflateEncoder::new(
        Vec::with_capacity(plain.len() / 4),
        flate2::Compression::default(),
    );
    enc.write_all(plain)
        .and_then(|()| enc.finish())
        .map_err(|e| ExportError::Encode(format!("deflate: {e}")))
}

/// Inflates an authenticated chunk, at most [`MAX_PLAIN_LEN`] bytes.
fn inflate(compressed: &[u8], chunk: u64) -> Result<Vec<u8>, ExportError> {
    use std::io::Read as _;
    let mut out = Vec::with_capacity(compressed.len() * 4);
    flate2::read::DeflateDecoder::new(compressed)
        .take(MAX_PLAIN_LEN + 1)
        .read_to_end(&mut out)
        .map_err(|e| ExportError::Malformed {
            chunk,
            reason: format!("inflate: {e}"),
        })?;
    if out.len() as u64 > MAX_PLAIN_LEN {
        return Err(ExportError::Malformed {
            chunk,
            reason: format!("inflates to more than {MAX_PLAIN_LEN} bytes"),
        });
    }
    Ok(out)
}

/// Nonce of chunk `i`: four zero bytes, then `i` as u64 big-endian. Unique under the per-file
/// key (a fresh ephemeral key and file id per file).
fn nonce(i: u64) -> Nonce {
    let mut n = [0u8; aead::NONCE_LEN];
    n[4..].copy_from_slice(&i.to_be_bytes());
    Nonce::assume_unique_for_key(n)
}

/// AAD of a chunk: the header as written ‖ the chunk's flag ‖ its length (u32 BE).
fn chunk_aad(header: &[u8], flag: u8, len: u32) -> Vec<u8> {
    let mut aad = Vec::with_capacity(header.len() + CHUNK_PREFIX_LEN);
    aad.extend_from_slice(header);
    aad.push(flag);
    aad.extend_from_slice(&len.to_be_bytes());
    aad
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::rand::SystemRandom;

    fn site() -> SiteKey {
        SiteKey::from_bytes([42; 32])
    }

    fn manifest() -> Manifest {
        Manifest {
            gateway: "gw-1".into(),
            software: "0.1.0".into(),
            receipt_key: [5; 32],
        }
    }

    fn bundles(n: usize) -> Vec<BundleChunk> {
        (0..n)
            .map(|i| BundleChunk {
                entries: vec![(1, vec![[i as u8; 32]]), (2, vec![[i as u8 + 100; 32]])],
                bundle: format!(r#"{{"resourceType":"Bundle","type":"transaction","n":{i},"patient":"CANARY-PATIENT-0042"}}"#)
                    .into_bytes(),
            })
            .collect()
    }

    fn sealed(n: usize) -> Vec<u8> {
        seal_file(
            &site().public(),
            [9; 16],
            1_700_000_000_000,
            &manifest(),
            &bundles(n),
            &SystemRandom::new(),
        )
        .unwrap()
    }

    /// Byte offsets of each chunk's prefix.
    fn chunk_offsets(file: &[u8]) -> Vec<usize> {
        let mut at = HEADER_LEN;
        let mut out = Vec::new();
        while at < file.len() {
            out.push(at);
            let len = u32::from_be_bytes(file[at + 1..at + 5].try_into().unwrap()) as usize;
            at += CHUNK_PREFIX_LEN + len;
        }
        out
    }

    #[test]
    fn a_sealed_file_opens_to_what_was_sealed() {
        let file = sealed(3);
        let opened = open_file(&file, &site()).unwrap();
        assert_eq!(opened.manifest, manifest());
        assert_eq!(opened.bundles, bundles(3));
        assert_eq!(opened.header.bundles, 3);
        assert_eq!(opened.header.readings, 6);
        assert_eq!(opened.header.file_id, [9; 16]);
        assert_eq!(chunk_offsets(&file).len(), 4);
    }

    #[test]
    fn nothing_of_the_content_is_in_clear() {
        let file = sealed(2);
        let text = String::from_utf8_lossy(&file);
        assert!(!text.contains("CANARY-PATIENT-0042"));
        assert!(!text.contains("Bundle"));
    }

    #[test]
    fn another_site_key_is_a_wrong_key_error() {
        let file = sealed(1);
        let err = open_file(&file, &SiteKey::from_bytes([43; 32])).unwrap_err();
        assert!(matches!(err, ExportError::WrongKey { .. }), "{err:?}");
        assert!(err.is_authentication());
    }

    #[test]
    fn a_file_whose_recipient_field_names_our_key_but_was_sealed_for_another_fails_to_authenticate()
    {
        let other = SiteKey::from_bytes([43; 32]);
        let mut file = seal_file(
            &other.public(),
            [1; 16],
            0,
            &manifest(),
            &bundles(1),
            &SystemRandom::new(),
        )
        .unwrap();
        file[44..76].copy_from_slice(&site().public());
        assert_eq!(
            open_file(&file, &site()).unwrap_err(),
            ExportError::Authentication { chunk: 0 }
        );
    }

    #[test]
    fn every_flipped_bit_of_header_or_chunk_is_an_error() {
        let file = sealed(2);
        // Every byte, one bit each (the file is small): never Ok, never a panic.
        for i in 0..file.len() {
            let mut bad = file.clone();
            bad[i] ^= 0x01;
            match open_file(&bad, &site()) {
                Ok(_) => panic!("byte {i} flipped, and the file still opens"),
                Err(err) => assert!(err.is_authentication(), "byte {i}: {err:?}"),
            }
        }
        // A flip in a later chunk names that chunk.
        let offsets = chunk_offsets(&file);
        let mut bad = file.clone();
        bad[offsets[2] + CHUNK_PREFIX_LEN + 3] ^= 0x80;
        assert_eq!(
            open_file(&bad, &site()).unwrap_err(),
            ExportError::Authentication { chunk: 2 }
        );
        // A flip in the header fails chunk 0 (the header is every chunk's AAD).
        let mut bad = file.clone();
        bad[80] ^= 0x04; // the file id
        assert_eq!(
            open_file(&bad, &site()).unwrap_err(),
            ExportError::Authentication { chunk: 0 }
        );
    }

    #[test]
    fn every_truncation_is_an_error() {
        let file = sealed(2);
        for len in 0..file.len() {
            let err = open_file(&file[..len], &site()).unwrap_err();
            assert!(err.is_authentication(), "len {len}: {err:?}");
        }
    }

    #[test]
    fn dropping_the_last_chunk_is_truncation() {
        let file = sealed(3);
        let offsets = chunk_offsets(&file);
        let cut = &file[..*offsets.last().unwrap()];
        assert_eq!(
            open_file(cut, &site()).unwrap_err(),
            ExportError::Truncated { offset: cut.len() }
        );
    }

    #[test]
    fn reordered_or_duplicated_chunks_do_not_authenticate() {
        let file = sealed(3);
        let o = chunk_offsets(&file);
        let chunk = |i: usize| -> &[u8] { &file[o[i]..*o.get(i + 1).unwrap_or(&file.len())] };
        // Swap chunks 1 and 2.
        let mut swapped = file[..HEADER_LEN].to_vec();
        for i in [0, 2, 1, 3] {
            swapped.extend_from_slice(chunk(i));
        }
        assert_eq!(
            open_file(&swapped, &site()).unwrap_err(),
            ExportError::Authentication { chunk: 1 }
        );
        // Chunk 1 twice.
        let mut dup = file[..HEADER_LEN].to_vec();
        for i in [0, 1, 1, 2, 3] {
            dup.extend_from_slice(chunk(i));
        }
        assert_eq!(
            open_file(&dup, &site()).unwrap_err(),
            ExportError::Authentication { chunk: 2 }
        );
        // Garbage after the final chunk.
        let mut trailing = file.clone();
        trailing.extend_from_slice(b"x");
        assert_eq!(
            open_file(&trailing, &site()).unwrap_err(),
            ExportError::TrailingData { extra: 1 }
        );
    }

    #[test]
    fn two_exports_of_the_same_bundles_share_no_ciphertext() {
        let a = sealed(1);
        let b = sealed(1);
        assert_ne!(a[12..44], b[12..44], "ephemeral keys differ");
        assert_ne!(a[HEADER_LEN..], b[HEADER_LEN..]);
    }
}
