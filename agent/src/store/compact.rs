//! Compaction: the store copied into a fresh sled database, which then takes its place.
//!
//! sled 0.34 never gives space back: deleting a delivered reading appends to its log, and the
//! files of a store whose backlog was delivered are larger than with the backlog
//! (`BENCHMARKS.md`, "Footprint"). When the backlog is small and the files hold much more than
//! the store's live entries, [`super::Outbox::compact`] copies every entry into a new database
//! ([`super::outbox::SledOutbox::copy_into`]) and swaps the directories. Records are copied as
//! stored, sealed: their AAD names the tree and the key, which do not change.
//!
//! **Ids.** Sequence numbers and nonce counters come from sled's `generate_id`, which a fresh
//! database starts again at 0. The copy's `meta/id_base` is the next id of the store it was
//! copied from, and every id is `id_base + generate_id` ([`super::outbox::META_ID_BASE`]): ids
//! keep growing across compactions, so `pending` stays FIFO and no nonce repeats under a key.
//! A store that has an id base needs a build that reads it: store format 6.
//!
//! **Crash safety.** For the store `<dir>`, with its parent `P`:
//! 1. the copy is built in `P/<name>.compacting` and fsynced, files and directory;
//! 2. renamed to `P/<name>.compacted` (the copy is complete) and `P` fsynced;
//! 3. `<dir>` renamed to `P/<name>.precompact`; 4. `<name>.compacted` renamed to `<dir>`; `P`
//!    fsynced; 5. `<name>.precompact` removed.
//!
//! [`recover`] runs before every open and finishes or undoes an interrupted compaction: a
//! `.compacting` is removed (incomplete); a `.compacted` beside `<dir>` is removed (the swap had
//! not started: `<dir>` is whole); a `.compacted` without `<dir>` is moved into place (the
//! crash fell between steps 3 and 4); a `.precompact` beside `<dir>` is removed (the swap was
//! done); a `.precompact` without `<dir>` or `.compacted` is moved back.

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use super::keyring::KEYRING_FILE;
use super::outbox::MARKER_FILE;

/// Files of the store directory that are the store's own, not sled's, and are copied by a
/// compaction. Lock files are not: they are created where they are needed.
pub(crate) fn is_own_file(name: &OsStr) -> bool {
    name == OsStr::new(KEYRING_FILE) || name == OsStr::new(MARKER_FILE)
}

/// `P/<name><suffix>` for the store directory `P/<name>`.
pub(crate) fn sibling(dir: &Path, suffix: &str) -> PathBuf {
    let mut name = dir.file_name().unwrap_or_default().to_os_string();
    name.push(suffix);
    dir.with_file_name(name)
}

/// [`sibling`], for tests outside the crate.
#[doc(hidden)]
pub fn sibling_for_test(dir: &Path, suffix: &str) -> PathBuf {
    sibling(dir, suffix)
}

pub(crate) const BUILDING: &str = ".compacting";
pub(crate) const BUILT: &str = ".compacted";
pub(crate) const OLD: &str = ".precompact";

/// What [`recover`] found and did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Recovered {
    /// No compaction was interrupted.
    Nothing,
    /// An incomplete copy, or a complete one whose swap had not started, was removed.
    CopyDiscarded,
    /// The swap was finished: the compacted copy is the store.
    SwapFinished,
    /// The old store was moved back into place.
    SwapUndone,
    /// The old store, replaced by its compacted copy, was removed.
    OldRemoved,
}

/// Finishes or undoes an interrupted compaction of the store `dir` (module doc). Runs before
/// the store is opened; only the store's process calls it (the store's lock is not held yet,
/// but nothing else renames these directories).
///
/// # Errors
///
/// I/O errors, with the path.
pub fn recover(dir: &Path) -> Result<Recovered, (PathBuf, io::Error)> {
    let building = sibling(dir, BUILDING);
    let built = sibling(dir, BUILT);
    let old = sibling(dir, OLD);
    let mut did = Recovered::Nothing;
    if building.exists() {
        remove_dir(&building)?;
        did = Recovered::CopyDiscarded;
    }
    let has_dir = dir.exists();
    if built.exists() {
        if has_dir {
            remove_dir(&built)?;
            did = Recovered::CopyDiscarded;
        } else {
            rename(&built, dir)?;
            did = Recovered::SwapFinished;
        }
    } else if old.exists() && !has_dir {
        rename(&old, dir)?;
        return Ok(Recovered::SwapUndone);
    }
    if old.exists() {
        remove_dir(&old)?;
        if did == Recovered::Nothing {
            did = Recovered::OldRemoved;
        }
    }
    Ok(did)
}

/// Steps 2 to 5 of the module doc, for a complete, fsynced copy in `<dir>.compacting`.
///
/// # Errors
///
/// I/O errors, with the path; [`recover`] then finishes or undoes what was done.
pub(crate) fn swap(dir: &Path) -> Result<(), (PathBuf, io::Error)> {
    let building = sibling(dir, BUILDING);
    let built = sibling(dir, BUILT);
    let old = sibling(dir, OLD);
    rename(&building, &built)?;
    rename(dir, &old)?;
    rename(&built, dir)?;
    remove_dir(&old)
}

fn rename(from: &Path, to: &Path) -> Result<(), (PathBuf, io::Error)> {
    std::fs::rename(from, to).map_err(|e| (from.to_owned(), e))?;
    sync_dir(to.parent().unwrap_or(Path::new(".")))
}

/// Removes a copy (an incomplete or unused compaction) or the store a verified copy replaced.
/// The one wholesale delete under the data directory: never a store that is the only holder of
/// its records ([`super::Outbox::compact`] opens the fsynced copy and compares its counts
/// before the swap; [`recover`] removes the old store only once the copy is in place).
fn remove_dir(dir: &Path) -> Result<(), (PathBuf, io::Error)> {
    #[allow(clippy::disallowed_methods)]
    match std::fs::remove_dir_all(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err((dir.to_owned(), e)),
    }
    sync_dir(dir.parent().unwrap_or(Path::new(".")))
}

fn sync_dir(dir: &Path) -> Result<(), (PathBuf, io::Error)> {
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(|e| (dir.to_owned(), e))
}

/// fsyncs every file under `dir`, then every directory, `dir` last.
pub(crate) fn sync_tree(dir: &Path) -> Result<(), (PathBuf, io::Error)> {
    for entry in std::fs::read_dir(dir).map_err(|e| (dir.to_owned(), e))? {
        let entry = entry.map_err(|e| (dir.to_owned(), e))?;
        let path = entry.path();
        let kind = entry.file_type().map_err(|e| (path.clone(), e))?;
        if kind.is_dir() {
            sync_tree(&path)?;
        } else if kind.is_file() {
            File::open(&path)
                .and_then(|f| f.sync_all())
                .map_err(|e| (path.clone(), e))?;
        }
    }
    sync_dir(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store_with(dir: &Path, tag: &str) {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("tag"), tag).unwrap();
    }

    fn tag(dir: &Path) -> String {
        std::fs::read_to_string(dir.join("tag")).unwrap()
    }

    #[test]
    fn recover_finishes_or_undoes_every_interrupted_step() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("outbox");
        let (building, built, old) = (
            sibling(&dir, BUILDING),
            sibling(&dir, BUILT),
            sibling(&dir, OLD),
        );
        let leftovers = |want: &[&Path]| {
            for p in [&building, &built, &old] {
                assert_eq!(p.exists(), want.contains(&p.as_path()), "{}", p.display());
            }
        };
        // Nothing to do.
        store_with(&dir, "old");
        assert_eq!(recover(&dir).unwrap(), Recovered::Nothing);
        // Step 1 interrupted: a partial copy.
        store_with(&building, "partial");
        assert_eq!(recover(&dir).unwrap(), Recovered::CopyDiscarded);
        assert_eq!(tag(&dir), "old");
        leftovers(&[]);
        // After step 2: complete copy, swap not started.
        store_with(&built, "new");
        assert_eq!(recover(&dir).unwrap(), Recovered::CopyDiscarded);
        assert_eq!(tag(&dir), "old");
        leftovers(&[]);
        // After step 3: the store is moved aside, the copy not yet in place.
        std::fs::rename(&dir, &old).unwrap();
        store_with(&built, "new");
        assert_eq!(recover(&dir).unwrap(), Recovered::SwapFinished);
        assert_eq!(tag(&dir), "new");
        leftovers(&[]);
        // After step 4: the old store is left over.
        store_with(&old, "old");
        assert_eq!(recover(&dir).unwrap(), Recovered::OldRemoved);
        assert_eq!(tag(&dir), "new");
        leftovers(&[]);
        // Only the old store, moved aside (nothing else can lead here; it goes back).
        std::fs::rename(&dir, &old).unwrap();
        assert_eq!(recover(&dir).unwrap(), Recovered::SwapUndone);
        assert_eq!(tag(&dir), "new");
        leftovers(&[]);
    }

    #[test]
    fn a_swap_replaces_the_store_with_the_copy_and_leaves_nothing_behind() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("outbox");
        store_with(&dir, "old");
        store_with(&sibling(&dir, BUILDING), "new");
        swap(&dir).unwrap();
        assert_eq!(tag(&dir), "new");
        let names: Vec<_> = std::fs::read_dir(root.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![OsStr::new("outbox").to_os_string()]);
    }
}
