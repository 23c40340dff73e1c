//! No link at all: readings to a USB stick and back (issue #11).
//!
//! ```text
//! gateway (no uplink)                               any vitalgate with a link, or a laptop
//!   vitalgate export --to /media/stick      ─stick─▶  vitalgate import-export FILE --key site.key
//!     pending readings (consent-filtered)               verify the WHOLE file, then post each
//!     → Bundles (uplink::fhir, the uploader's             Bundle through the normal uplink client
//!       mapping: same conditional creates)                (mTLS, gzip, retries, OAuth)
//!     → sealed to [export] recipient_public_key         writes FILE.receipt (what the server
//!     → marked "exported" in the store, still pending     committed)
//!   vitalgate export confirm FILE.receipt   ◀─stick─
//!     acks those readings (they leave pending as delivered)
//! ```
//!
//! Until confirmed, an exported reading stays pending: if the gateway gets a link first, the
//! uploader sends it as usual, and conditional create on the Observation identifier makes the
//! server keep one Observation whichever path arrives first (or both).
//!
//! # File format (version 1)
//!
//! All integers big-endian. The file is a 108-byte header, then chunks.
//!
//! | offset | len | field |
//! |---|---|---|
//! | 0 | 8 | magic `VGEXPORT` |
//! | 8 | 1 | format version, `1` |
//! | 9 | 3 | reserved, zero |
//! | 12 | 32 | the sender's ephemeral X25519 public key (fresh per file, ring) |
//! | 44 | 32 | the recipient's X25519 public key (`[export] recipient_public_key`) |
//! | 76 | 16 | file id (random) |
//! | 92 | 8 | time of export, ms since the Unix epoch |
//! | 100 | 4 | number of Bundle chunks |
//! | 104 | 4 | number of readings |
//!
//! Key: `shared = X25519(ephemeral, recipient)` (all-zero refused); `key = HKDF-SHA256(salt =
//! file id, IKM = shared, info = "vitalgate-export v1 X25519-HKDF-SHA256-ChaCha20Poly1305" ‖
//! ephemeral public key ‖ recipient public key)`, 32 bytes, ChaCha20-Poly1305.
//!
//! Chunk `i` (from 0): `flag` (1 byte: `1` for the last chunk, `0` otherwise) ‖ `len` (u32,
//! ciphertext length including the 16-byte tag, at most 16 MiB) ‖ ciphertext. Nonce = 4 zero
//! bytes ‖ `i` as u64 (never repeats under a per-file key); AAD = the 108 header bytes ‖ `flag`
//! ‖ `len`. Each chunk's plaintext is the raw DEFLATE (RFC 1951) of a postcard value,
//! inflating to at most 64 MiB. Chunk 0 is the manifest: `Manifest { gateway, software,
//! receipt_key }`. Chunks 1..=n are `BundleChunk { entries: [(entry index, [reading id])],
//! bundle: JSON bytes }`: one transaction Bundle each, as the uploader builds it, with which
//! readings its Observation entries carry.
//!
//! Opening checks, in order: magic, version, that the recipient key is ours (else
//! [`ExportError::WrongKey`]), then every chunk's tag in order (a changed header or chunk, a
//! reordered, duplicated or foreign chunk: [`ExportError::Authentication`] naming the chunk),
//! that the file ends with the final chunk and nothing after it ([`ExportError::Truncated`],
//! [`ExportError::TrailingData`]), and that the counts match the header. Only then is anything
//! returned: `import-export` posts nothing from a file that fails anywhere.
//!
//! # Receipt and confirmation
//!
//! See [`receipt`]: per committed reading a keyed tag under the file's random receipt key (in
//! the manifest, and sealed in the gateway's `exports` tree), MAC'd. `export confirm` finds
//! the file's record by id, verifies the MAC, and acks the pending readings whose tag is
//! listed. A receipt shows nothing about the readings and cannot be forged without the file.
//!
//! # Limits
//!
//! - `export` and `export confirm` open the store, which the daemon holds: stop the service
//!   first (a held store fails after the store's lock wait with "stop the service first").
//! - The whole file is read and decrypted in memory by `import-export` (about twice its size).
//! - A Bundle the server refuses is not bisected by `import-export`: its readings stay pending
//!   on the gateway, and the uploader (or a later export) deals with them.
//! - `import-export` needs a vitalgate config (its `[uplink]` section is used; `[gateway]` and
//!   `[store]` must be valid but no store is opened).

pub mod commands;
pub mod format;
pub mod keys;
pub mod plan;
pub mod receipt;

pub use format::ExportError;
pub use keys::{SiteKey, SiteKeyError};
