//! The store's 32-byte master key and the file it lives in.
//!
//! # File format
//!
//! One line: the 32 key bytes as 64 lower-case hex digits, then `\n` (65 bytes). Text rather than
//! raw bytes so a technician can check with `wc -c` and `stat` that the file is whole without
//! printing the key, and so a backup tool or editor cannot silently mangle it. [`StoreKey::load`]
//! also accepts upper-case digits and a missing final newline, nothing else (no spaces, no `\r`).
//!
//! # Invariants
//!
//! - [`StoreKey::init`] never overwrites: it creates the file with `O_CREAT|O_EXCL` and mode 0600
//!   in one step (no window where the key is readable by others), fsyncs the file and its parent
//!   directory, and removes the file again if writing fails half-way.
//! - [`StoreKey::load`] refuses a file with any group or other permission bit set
//!   (`mode & 0o077 != 0`), like ssh does for private keys. The check runs on the opened file
//!   descriptor, not on the path, so the file checked is the file read.
//! - [`StoreKey::load`] also refuses a file not owned by the user the agent runs as.
//! - Neither the key nor any part of the file content appears in `Debug` output or in errors.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use ring::rand::{SecureRandom, SystemRandom};

/// The systemd credential the store key is taken from when present (see
/// [`StoreKey::load_kek`]).
pub const CREDENTIAL_NAME: &str = "vitalgate-store-key";

/// Length of the key in bytes.
pub const KEY_LEN: usize = 32;

/// Length of a well-formed key file: 64 hex digits and a newline.
const FILE_LEN: usize = 2 * KEY_LEN + 1;

/// The store's master key. `Debug` prints `StoreKey(<redacted>)`.
///
/// The outbox derives its record-encryption key and its index-hashing key from this one with
/// HKDF (see [`crate::store::codec`]), so the master key itself never encrypts anything.
#[derive(Clone)]
pub struct StoreKey([u8; KEY_LEN]);

/// Why a key file could not be created or loaded. Carries paths and modes, never key material.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("key file {path} already exists; refusing to overwrite it (a new key would make the existing store unreadable)")]
    AlreadyExists { path: PathBuf },
    #[error("key file {path} does not exist; create it with `vitalgate keys init`")]
    NotFound { path: PathBuf },
    #[error("key file {path} has mode {mode:04o}, which lets group or others access it; run `chmod 600 {path}` (and check who could have copied it)")]
    TooOpen { path: PathBuf, mode: u32 },
    #[error("key file {path} is owned by uid {owner}, not by the user the agent runs as (uid {euid}); run `chown <service user> {path}`")]
    WrongOwner {
        path: PathBuf,
        owner: u32,
        euid: u32,
    },
    #[error("key file {path} is not a regular file")]
    NotRegularFile { path: PathBuf },
    #[error("key file {path} is malformed: {reason} (expected 64 hex digits and a newline, {FILE_LEN} bytes)")]
    BadFormat { path: PathBuf, reason: &'static str },
    #[error("I/O error on key file {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("the system random number generator failed")]
    Rng,
}

impl StoreKey {
    /// Creates a new key file at `path` with mode 0600 holding 32 random bytes.
    ///
    /// # Errors
    ///
    /// [`KeyFileError::AlreadyExists`] if anything exists at `path` (it is left untouched);
    /// [`KeyFileError::Io`] if the parent directory is missing or not writable, or a write or
    /// fsync fails (the partial file is removed); [`KeyFileError::Rng`] if the OS RNG fails.
    pub fn init(path: &Path) -> Result<(), KeyFileError> {
        let mut bytes = [0u8; KEY_LEN];
        SystemRandom::new()
            .fill(&mut bytes)
            .map_err(|_| KeyFileError::Rng)?;
        let mut text = hex::encode(bytes);
        text.push('\n');
        create_private(path, text.as_bytes()).map_err(|source| match source.kind() {
            io::ErrorKind::AlreadyExists => KeyFileError::AlreadyExists {
                path: path.to_owned(),
            },
            _ => KeyFileError::Io {
                path: path.to_owned(),
                source,
            },
        })?;
        sync_parent_dir(path)
    }

    /// Loads the key from `path`, refusing a file that group or others can access.
    ///
    /// # Errors
    ///
    /// [`KeyFileError::NotFound`], [`KeyFileError::TooOpen`] (names the mode and the `chmod`
    /// that fixes it), [`KeyFileError::NotRegularFile`], [`KeyFileError::BadFormat`] (wrong
    /// length or not hex), [`KeyFileError::Io`].
    pub fn load(path: &Path) -> Result<StoreKey, KeyFileError> {
        let io_err = |source| KeyFileError::Io {
            path: path.to_owned(),
            source,
        };
        let file = open_private(path).map_err(|refusal| match refusal {
            Refusal::NotFound => KeyFileError::NotFound {
                path: path.to_owned(),
            },
            Refusal::NotRegularFile => KeyFileError::NotRegularFile {
                path: path.to_owned(),
            },
            Refusal::WrongOwner { owner, euid } => KeyFileError::WrongOwner {
                path: path.to_owned(),
                owner,
                euid,
            },
            Refusal::TooOpen { mode } => KeyFileError::TooOpen {
                path: path.to_owned(),
                mode,
            },
            Refusal::Io(source) => io_err(source),
        })?;
        // Read at most one byte more than a valid file so a huge file cannot exhaust memory.
        let mut text = Vec::with_capacity(FILE_LEN + 1);
        file.take(FILE_LEN as u64 + 1)
            .read_to_end(&mut text)
            .map_err(io_err)?;
        Self::parse(&text).map_err(|reason| KeyFileError::BadFormat {
            path: path.to_owned(),
            reason,
        })
    }

    /// Loads the store key (the key-encryption key of [`crate::store::keyring`]) from where it
    /// is kept, in this order: the systemd credential [`CREDENTIAL_NAME`] in
    /// `$CREDENTIALS_DIRECTORY` (set by `LoadCredentialEncrypted=`: decrypted by systemd into
    /// a private in-memory directory, sealed to the TPM2 where the board has one, else to the
    /// host key), else `key_file`. Both have the key file's format and checks. Returns where it
    /// came from, for logs and `vitalgate keys status`.
    ///
    /// # Errors
    ///
    /// As [`StoreKey::load`] for the path it chose.
    pub fn load_kek(key_file: &Path) -> Result<(StoreKey, PathBuf), KeyFileError> {
        if let Some(dir) = std::env::var_os("CREDENTIALS_DIRECTORY") {
            let cred = Path::new(&dir).join(CREDENTIAL_NAME);
            if cred.exists() {
                return StoreKey::load(&cred).map(|k| (k, cred));
            }
        }
        StoreKey::load(key_file).map(|k| (k, key_file.to_owned()))
    }

    /// Wraps raw key bytes (tests, tools that manage keys themselves).
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> StoreKey {
        StoreKey(bytes)
    }

    pub(crate) fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    fn parse(text: &[u8]) -> Result<StoreKey, &'static str> {
        let digits = text.strip_suffix(b"\n").unwrap_or(text);
        if digits.len() != 2 * KEY_LEN {
            return Err("wrong length");
        }
        let mut bytes = [0u8; KEY_LEN];
        hex::decode_to_slice(digits, &mut bytes).map_err(|_| "not hexadecimal")?;
        Ok(StoreKey(bytes))
    }
}

impl fmt::Debug for StoreKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("StoreKey(<redacted>)")
    }
}

/// Why [`open_private`] refused a key file.
#[derive(Debug)]
pub(crate) enum Refusal {
    NotFound,
    NotRegularFile,
    WrongOwner { owner: u32, euid: u32 },
    TooOpen { mode: u32 },
    Io(io::Error),
}

/// Opens a private key file for reading: it must be a regular file, owned by the user the
/// agent runs as, and neither group nor others may access it. Shared by the store key and the
/// export site key.
///
/// # Errors
///
/// The [`Refusal`].
pub(crate) fn open_private(path: &Path) -> Result<File, Refusal> {
    let file = File::open(path).map_err(|source| match source.kind() {
        io::ErrorKind::NotFound => Refusal::NotFound,
        _ => Refusal::Io(source),
    })?;
    let meta = file.metadata().map_err(Refusal::Io)?;
    if !meta.is_file() {
        return Err(Refusal::NotRegularFile);
    }
    let owner = std::os::unix::fs::MetadataExt::uid(&meta);
    let euid = rustix::process::geteuid().as_raw();
    if owner != euid {
        return Err(Refusal::WrongOwner { owner, euid });
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(Refusal::TooOpen { mode });
    }
    Ok(file)
}

/// Creates `path` with mode 0600 in one step (`O_CREAT|O_EXCL`: never overwrites, never
/// readable by others), writes `content` and fsyncs it; a file left half-written is removed.
/// Shared by the store key and the export site key files (same format and rules).
///
/// # Errors
///
/// The `io::Error` of the open (kind `AlreadyExists` if anything is at `path`), the write or
/// the fsync.
pub(crate) fn create_private(path: &Path, content: &[u8]) -> io::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    let written = file.write_all(content).and_then(|()| file.sync_all());
    if let Err(e) = written {
        drop(file);
        // Best effort: a half-written key file must not be mistaken for a key later.
        let _ = std::fs::remove_file(path);
        return Err(e);
    }
    Ok(())
}

/// Makes the directory entry of a just-created file durable.
fn sync_parent_dir(path: &Path) -> Result<(), KeyFileError> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    File::open(parent)
        .and_then(|dir| dir.sync_all())
        .map_err(|source| KeyFileError::Io {
            path: parent.to_owned(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn write_with_mode(path: &Path, content: &[u8], mode: u32) {
        fs::write(path, content).unwrap();
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn init_creates_a_0600_file_that_loads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.key");
        StoreKey::init(&path).unwrap();
        let meta = fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(meta.len(), FILE_LEN as u64);
        StoreKey::load(&path).unwrap();
    }

    #[test]
    fn init_makes_a_different_key_each_time() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        StoreKey::init(&a).unwrap();
        StoreKey::init(&b).unwrap();
        assert_ne!(
            StoreKey::load(&a).unwrap().as_bytes(),
            StoreKey::load(&b).unwrap().as_bytes()
        );
    }

    #[test]
    fn init_refuses_to_overwrite_an_existing_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.key");
        StoreKey::init(&path).unwrap();
        let before = fs::read(&path).unwrap();
        let err = StoreKey::init(&path).unwrap_err();
        assert!(matches!(err, KeyFileError::AlreadyExists { .. }), "{err:?}");
        assert_eq!(fs::read(&path).unwrap(), before);
    }

    #[test]
    fn load_refuses_a_group_or_world_readable_file_and_says_how_to_fix_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.key");
        StoreKey::init(&path).unwrap();
        for mode in [0o644, 0o640, 0o604, 0o660, 0o601] {
            fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
            let err = StoreKey::load(&path).unwrap_err();
            assert!(
                matches!(err, KeyFileError::TooOpen { mode: m, .. } if m == mode),
                "{err:?}"
            );
            let msg = err.to_string();
            assert!(msg.contains(&format!("{mode:04o}")), "{msg}");
            assert!(msg.contains("chmod 600"), "{msg}");
            assert!(msg.contains(&path.display().to_string()), "{msg}");
        }
        fs::set_permissions(&path, fs::Permissions::from_mode(0o400)).unwrap();
        StoreKey::load(&path).unwrap();
    }

    #[test]
    fn load_refuses_wrong_length_and_non_hex() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.key");
        let good = "ab".repeat(KEY_LEN);
        let cases: [(Vec<u8>, &str); 5] = [
            (good.as_bytes()[..62].to_vec(), "wrong length"),
            (format!("{good}00\n").into_bytes(), "wrong length"),
            (format!("{good}\n\n").into_bytes(), "wrong length"),
            (Vec::new(), "wrong length"),
            (
                format!("{}zz\n", &good[..62]).into_bytes(),
                "not hexadecimal",
            ),
        ];
        for (content, want) in cases {
            write_with_mode(&path, &content, 0o600);
            match StoreKey::load(&path) {
                Err(KeyFileError::BadFormat { reason, .. }) => assert_eq!(reason, want),
                other => panic!("{content:?}: {other:?}"),
            }
        }
        write_with_mode(&path, good.as_bytes(), 0o600);
        StoreKey::load(&path).unwrap();
        write_with_mode(&path, good.to_uppercase().as_bytes(), 0o600);
        StoreKey::load(&path).unwrap();
    }

    #[test]
    fn load_of_a_missing_file_is_not_found() {
        let dir = tempfile::tempdir().unwrap();
        let err = StoreKey::load(&dir.path().join("nope")).unwrap_err();
        assert!(matches!(err, KeyFileError::NotFound { .. }), "{err:?}");
    }

    #[test]
    fn load_of_a_directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("d");
        fs::create_dir(&sub).unwrap();
        fs::set_permissions(&sub, fs::Permissions::from_mode(0o700)).unwrap();
        let err = StoreKey::load(&sub).unwrap_err();
        assert!(
            matches!(err, KeyFileError::NotRegularFile { .. }),
            "{err:?}"
        );
    }

    #[test]
    fn debug_and_errors_do_not_show_the_key() {
        let key = StoreKey::from_bytes([0xab; KEY_LEN]);
        let shown = format!("{key:?}");
        assert_eq!(shown, "StoreKey(<redacted>)");
        assert!(!shown.contains("abab"));
    }

    #[test]
    fn a_key_file_owned_by_another_user_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.key");
        StoreKey::init(&path).unwrap();
        let euid = rustix::process::geteuid().as_raw();
        // Only root can give a file away; elsewhere the check is shown by the owner matching.
        if euid == 0 {
            std::os::unix::fs::chown(&path, Some(4242), None).unwrap();
            let err = StoreKey::load(&path).unwrap_err();
            assert!(
                matches!(err, KeyFileError::WrongOwner { owner: 4242, .. }),
                "{err}"
            );
        } else {
            StoreKey::load(&path).unwrap();
        }
    }
}
