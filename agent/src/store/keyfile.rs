//! The store key file: 32 random bytes, hex-encoded on one line, mode 0600.
//!
//! `StoreKey::init` creates it atomically (`create_new`, mode 0600 from the first byte, fsync of
//! the file and its directory) and never overwrites an existing file: overwriting would make the
//! existing outbox unreadable. `StoreKey::load` refuses a file that group or others can read.

use std::fmt;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use ring::rand::SecureRandom;

/// The 32-byte outbox key. `Debug` does not print it.
#[derive(Clone)]
pub struct StoreKey([u8; 32]);

impl fmt::Debug for StoreKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("StoreKey(<secret>)")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("{path} does not exist; create it with `vitalgate keys init --config <file>`")]
    Missing { path: PathBuf },
    #[error("{path} already exists; refusing to overwrite it (the outbox encrypted with it would become unreadable)")]
    Exists { path: PathBuf },
    #[error("{path} has mode {mode:04o}: group or others can read it; run `chmod 600 {path}`")]
    TooOpen { path: PathBuf, mode: u32 },
    #[error("{path} is not a store key (expected 64 hex digits on one line)")]
    Malformed { path: PathBuf },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("no system randomness available")]
    Random,
}

impl StoreKey {
    /// A key from raw bytes (tests, benchmarks).
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// A fresh random key (not written anywhere).
    pub fn generate() -> Result<Self, KeyFileError> {
        let mut k = [0u8; 32];
        ring::rand::SystemRandom::new()
            .fill(&mut k)
            .map_err(|_| KeyFileError::Random)?;
        Ok(Self(k))
    }

    pub(crate) fn bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Creates the key file (mode 0600). Never overwrites.
    pub fn init(path: &Path) -> Result<(), KeyFileError> {
        let io = |e: std::io::Error| KeyFileError::Io {
            path: path.to_path_buf(),
            source: e,
        };
        let key = Self::generate()?;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| {
                if e.kind() == std::io::ErrorKind::AlreadyExists {
                    KeyFileError::Exists {
                        path: path.to_path_buf(),
                    }
                } else {
                    io(e)
                }
            })?;
        f.write_all(format!("{}\n", hex::encode(key.0)).as_bytes())
            .map_err(io)?;
        f.sync_all().map_err(io)?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(io)?;
        }
        Ok(())
    }

    /// Loads the key file, refusing one readable by group or others.
    pub fn load(path: &Path) -> Result<Self, KeyFileError> {
        let meta = std::fs::metadata(path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                KeyFileError::Missing {
                    path: path.to_path_buf(),
                }
            } else {
                KeyFileError::Io {
                    path: path.to_path_buf(),
                    source: e,
                }
            }
        })?;
        let mode = meta.mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(KeyFileError::TooOpen {
                path: path.to_path_buf(),
                mode,
            });
        }
        let text = std::fs::read_to_string(path).map_err(|e| KeyFileError::Io {
            path: path.to_path_buf(),
            source: e,
        })?;
        let malformed = || KeyFileError::Malformed {
            path: path.to_path_buf(),
        };
        let bytes = hex::decode(text.trim()).map_err(|_| malformed())?;
        let key: [u8; 32] = bytes.try_into().map_err(|_| malformed())?;
        Ok(Self(key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn init_creates_0600_and_load_reads_it_back() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("k");
        StoreKey::init(&p).unwrap();
        assert_eq!(std::fs::metadata(&p).unwrap().mode() & 0o777, 0o600);
        StoreKey::load(&p).unwrap();
    }

    #[test]
    fn init_never_overwrites() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("k");
        StoreKey::init(&p).unwrap();
        let before = std::fs::read(&p).unwrap();
        assert!(matches!(
            StoreKey::init(&p),
            Err(KeyFileError::Exists { .. })
        ));
        assert_eq!(std::fs::read(&p).unwrap(), before);
    }

    #[test]
    fn load_refuses_a_key_others_can_read() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("k");
        StoreKey::init(&p).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o640)).unwrap();
        let e = StoreKey::load(&p).unwrap_err();
        assert!(
            matches!(e, KeyFileError::TooOpen { mode: 0o640, .. }),
            "{e}"
        );
        assert!(e.to_string().contains("chmod 600"));
    }

    #[test]
    fn load_refuses_missing_and_malformed_files() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("k");
        assert!(matches!(
            StoreKey::load(&p),
            Err(KeyFileError::Missing { .. })
        ));
        std::fs::write(&p, "abcd\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(matches!(
            StoreKey::load(&p),
            Err(KeyFileError::Malformed { .. })
        ));
    }

    #[test]
    fn debug_does_not_print_the_key() {
        let k = StoreKey::from_bytes([0xAB; 32]);
        assert!(!format!("{k:?}").contains("ab"));
    }
}
