//! Segment files: names, listing, reading (for the writer at open and for the CLI, which only
//! reads files and so works while the daemon runs), and the retention decision (pure).

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// `audit-<first seq, 20 digits>.jsonl`.
pub fn segment_name(first_seq: u64) -> String {
    format!("audit-{first_seq:020}.jsonl")
}

/// The first seq a segment's name says, if it is a segment's name.
pub fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("audit-")?.strip_suffix(".jsonl")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// One segment on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    pub name: String,
    pub path: PathBuf,
    pub first_seq: u64,
    pub bytes: u64,
    pub modified: Option<SystemTime>,
}

/// The segments in `dir`, oldest first. A missing directory is no segments.
///
/// # Errors
///
/// The directory cannot be read.
pub fn list(dir: &Path) -> std::io::Result<Vec<Segment>> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for entry in rd {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(first_seq) = parse_segment_name(&name) else {
            continue;
        };
        let meta = entry.metadata()?;
        out.push(Segment {
            name,
            path: entry.path(),
            first_seq,
            bytes: meta.len(),
            modified: meta.modified().ok(),
        });
    }
    out.sort_by_key(|s| s.first_seq);
    Ok(out)
}

/// Every segment's name and bytes, oldest first (for [`super::chain::verify`] and the ledger).
///
/// # Errors
///
/// A directory or file that cannot be read.
pub fn read_all(dir: &Path) -> std::io::Result<Vec<(String, Vec<u8>)>> {
    let mut out = Vec::new();
    for s in list(dir)? {
        match std::fs::read(&s.path) {
            Ok(b) => out.push((s.name, b)),
            // Deleted by the daemon's retention between the listing and the read.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

/// Why retention deletes a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// The log is over `max_bytes`.
    Bytes,
    /// The segment's last write is older than `retention_days`.
    Age,
}

impl Cut {
    pub fn as_str(self) -> &'static str {
        match self {
            Cut::Bytes => "max_bytes",
            Cut::Age => "retention_days",
        }
    }
}

/// Which segments to delete (indexes into `segments`, oldest first): the oldest while the
/// total is over `max_bytes` or their age (`(bytes, age)`, the age of the last write) is over
/// `max_age`. The last segment (being written) is never deleted. Pure.
pub fn retention_plan(
    segments: &[(u64, Duration)],
    max_bytes: u64,
    max_age: Duration,
) -> Vec<(usize, Cut)> {
    let mut total: u64 = segments.iter().map(|s| s.0).sum();
    let mut out = Vec::new();
    for (i, (bytes, age)) in segments.iter().enumerate() {
        if i + 1 >= segments.len() {
            break;
        }
        let cut = if total > max_bytes {
            Cut::Bytes
        } else if *age > max_age {
            Cut::Age
        } else {
            break;
        };
        out.push((i, cut));
        total = total.saturating_sub(*bytes);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(86_400);

    #[test]
    fn segment_names_round_trip_and_strangers_are_ignored() {
        assert_eq!(parse_segment_name(&segment_name(42)), Some(42));
        assert_eq!(parse_segment_name("audit-42.jsonl"), None);
        assert_eq!(parse_segment_name("audit-0000000000000000004x.jsonl"), None);
        assert_eq!(parse_segment_name("notes.txt"), None);
    }

    #[test]
    fn retention_deletes_the_oldest_segments_beyond_max_bytes() {
        let segs = [(100, DAY), (100, DAY), (100, DAY), (100, Duration::ZERO)];
        assert_eq!(
            retention_plan(&segs, 250, 90 * DAY),
            vec![(0, Cut::Bytes), (1, Cut::Bytes)]
        );
        assert_eq!(retention_plan(&segs, 400, 90 * DAY), vec![]);
    }

    #[test]
    fn retention_deletes_segments_older_than_the_age_bound_but_never_the_last() {
        let segs = [
            (10, 100 * DAY),
            (10, 95 * DAY),
            (10, 10 * DAY),
            (10, 200 * DAY),
        ];
        assert_eq!(
            retention_plan(&segs, 1 << 20, 90 * DAY),
            vec![(0, Cut::Age), (1, Cut::Age)]
        );
        assert_eq!(retention_plan(&[(1 << 30, 999 * DAY)], 10, DAY), vec![]);
    }
}
