//! The receiving site's X25519 key pair: the private key file (`vitalgate export keygen`) and
//! the public key string of `[export] recipient_public_key`.
//!
//! # Formats
//!
//! - Public key: the 32 bytes of the X25519 public key (RFC 7748 u-coordinate) in standard
//!   base64 with padding, 44 characters (`recipient_public_key = "…"`).
//! - Private key file: one line, the 32 private key bytes as 64 lower-case hex digits, then `\n`
//!   (the store key file's format, [`crate::store::keyfile`]). Created with mode 0600 and
//!   `O_EXCL` (never overwritten); refused when group or others may access it.
//!
//! ring cannot load a static X25519 private key (its agreement keys are ephemeral), so the
//! receiving side uses `x25519-dalek`'s `StaticSecret`. The gateway only encrypts, with ring,
//! and never needs this file.

use std::io::{self, Read};
use std::path::{Path, PathBuf};

use base64::Engine as _;
use ring::rand::{SecureRandom, SystemRandom};

/// The site's private key. `Debug` prints nothing of it; the secret is zeroized on drop
/// (x25519-dalek's `zeroize` feature).
pub struct SiteKey {
    secret: x25519_dalek::StaticSecret,
}

impl std::fmt::Debug for SiteKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SiteKey(public {})", format_public_key(&self.public()))
    }
}

/// Why a site key file could not be created or loaded. Paths and modes, never key material.
#[derive(Debug, thiserror::Error)]
pub enum SiteKeyError {
    #[error("site key file {path} already exists; refusing to overwrite it (files exported to its public key could no longer be opened)")]
    AlreadyExists { path: PathBuf },
    #[error("site key file {path} does not exist")]
    NotFound { path: PathBuf },
    #[error("site key file {path} has mode {mode:04o}, which lets group or others access it; run `chmod 600 {path}`")]
    TooOpen { path: PathBuf, mode: u32 },
    #[error("site key file {path} is owned by uid {owner}, not by the user running this command (uid {euid}); run `chown <user> {path}`")]
    WrongOwner {
        path: PathBuf,
        owner: u32,
        euid: u32,
    },
    #[error("site key file {path} is not a regular file")]
    NotRegularFile { path: PathBuf },
    #[error("site key file {path} is malformed (expected 64 hex digits and a newline)")]
    BadFormat { path: PathBuf },
    #[error("I/O error on site key file {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("the system random number generator failed")]
    Rng,
}

impl SiteKey {
    /// A key from its 32 private bytes (tests, and [`SiteKey::load`]).
    pub fn from_bytes(bytes: [u8; 32]) -> SiteKey {
        SiteKey {
            secret: x25519_dalek::StaticSecret::from(bytes),
        }
    }

    /// The public key that goes into `[export] recipient_public_key`.
    pub fn public(&self) -> [u8; 32] {
        x25519_dalek::PublicKey::from(&self.secret).to_bytes()
    }

    /// X25519 with `peer`; `None` when the result is all zeros (a low-order peer key: no
    /// secret is agreed, RFC 7748 §6.1).
    pub fn agree(&self, peer: &[u8; 32]) -> Option<[u8; 32]> {
        let shared = self
            .secret
            .diffie_hellman(&x25519_dalek::PublicKey::from(*peer));
        shared.was_contributory().then(|| *shared.as_bytes())
    }

    /// Creates a new key file at `path` (mode 0600, never overwriting) and returns the key.
    ///
    /// # Errors
    ///
    /// [`SiteKeyError::AlreadyExists`], [`SiteKeyError::Io`] (the partial file is removed),
    /// [`SiteKeyError::Rng`].
    pub fn generate(path: &Path) -> Result<SiteKey, SiteKeyError> {
        let mut bytes = [0u8; 32];
        SystemRandom::new()
            .fill(&mut bytes)
            .map_err(|_| SiteKeyError::Rng)?;
        let key = SiteKey::from_bytes(bytes);
        let mut text = hex::encode(bytes);
        text.push('\n');
        bytes.fill(0);
        crate::store::keyfile::create_private(path, text.as_bytes()).map_err(
            |source| match source.kind() {
                io::ErrorKind::AlreadyExists => SiteKeyError::AlreadyExists {
                    path: path.to_owned(),
                },
                _ => SiteKeyError::Io {
                    path: path.to_owned(),
                    source,
                },
            },
        )?;
        Ok(key)
    }

    /// Loads the key file at `path`, refusing one that group or others can access.
    ///
    /// # Errors
    ///
    /// [`SiteKeyError::NotFound`], [`SiteKeyError::TooOpen`], [`SiteKeyError::BadFormat`],
    /// [`SiteKeyError::Io`].
    pub fn load(path: &Path) -> Result<SiteKey, SiteKeyError> {
        let io_err = |source| SiteKeyError::Io {
            path: path.to_owned(),
            source,
        };
        use crate::store::keyfile::{open_private, Refusal};
        let file = open_private(path).map_err(|refusal| match refusal {
            Refusal::NotFound => SiteKeyError::NotFound {
                path: path.to_owned(),
            },
            Refusal::NotRegularFile => SiteKeyError::NotRegularFile {
                path: path.to_owned(),
            },
            Refusal::WrongOwner { owner, euid } => SiteKeyError::WrongOwner {
                path: path.to_owned(),
                owner,
                euid,
            },
            Refusal::TooOpen { mode } => SiteKeyError::TooOpen {
                path: path.to_owned(),
                mode,
            },
            Refusal::Io(source) => io_err(source),
        })?;
        let mut text = Vec::with_capacity(66);
        file.take(66).read_to_end(&mut text).map_err(io_err)?;
        let bad = || SiteKeyError::BadFormat {
            path: path.to_owned(),
        };
        let body = text.strip_suffix(b"\n").unwrap_or(&text);
        if body.len() != 64 {
            return Err(bad());
        }
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(body, &mut bytes).map_err(|_| bad())?;
        text.fill(0);
        Ok(SiteKey::from_bytes(bytes))
    }
}

/// `recipient_public_key`'s text form: standard base64 of the 32 bytes.
pub fn format_public_key(key: &[u8; 32]) -> String {
    base64::engine::general_purpose::STANDARD.encode(key)
}

/// Parses `recipient_public_key`.
///
/// # Errors
///
/// A reason for the config error (not base64, not 32 bytes, all zeros).
pub fn parse_public_key(s: &str) -> Result<[u8; 32], String> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(s.trim())
        .map_err(|e| {
            format!("not base64 ({e}); expected the line `vitalgate export keygen` printed")
        })?;
    let key: [u8; 32] = bytes.as_slice().try_into().map_err(|_| {
        format!(
            "{} bytes, an X25519 public key has 32 (44 base64 characters)",
            bytes.len()
        )
    })?;
    if key == [0; 32] {
        return Err("all zeros is not a public key".into());
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn a_generated_key_file_is_0600_loads_back_and_is_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("site.key");
        let key = SiteKey::generate(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(SiteKey::load(&path).unwrap().public(), key.public());
        assert!(matches!(
            SiteKey::generate(&path),
            Err(SiteKeyError::AlreadyExists { .. })
        ));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            SiteKey::load(&path),
            Err(SiteKeyError::TooOpen { .. })
        ));
    }

    /// The store key's rules (`keyfile::open_private`): a directory, or a file another user
    /// owns, is refused.
    #[test]
    fn a_site_key_that_is_not_a_file_or_belongs_to_another_user_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            SiteKey::load(dir.path()),
            Err(SiteKeyError::NotRegularFile { .. })
        ));
        let path = dir.path().join("site.key");
        SiteKey::generate(&path).unwrap();
        if rustix::process::geteuid().as_raw() == 0 {
            std::os::unix::fs::chown(&path, Some(4242), None).unwrap();
            let err = SiteKey::load(&path).unwrap_err();
            assert!(
                matches!(err, SiteKeyError::WrongOwner { owner: 4242, .. }),
                "{err}"
            );
        } else {
            SiteKey::load(&path).unwrap();
        }
    }

    #[test]
    fn public_keys_round_trip_and_bad_ones_are_refused() {
        let key = SiteKey::from_bytes([7; 32]);
        let text = format_public_key(&key.public());
        assert_eq!(text.len(), 44);
        assert_eq!(parse_public_key(&text).unwrap(), key.public());
        assert!(parse_public_key("not base64!").is_err());
        assert!(parse_public_key("AAAA").is_err());
        assert!(parse_public_key(&format_public_key(&[0; 32])).is_err());
    }
}
