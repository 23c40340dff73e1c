//! The audit log's entry format and hash chain: pure (bytes in, bytes or a verdict out; no I/O,
//! no clock).
//!
//! One entry is one JSON line:
//!
//! ```text
//! {"seq":7,"time":"2026-12-06T23:40:01.123Z","event":"delivered","reading":"<64 hex>",...,"hash":"<64 hex>"}
//! ```
//!
//! Its **canonical bytes** are the line without its trailing `,"hash":"<64 hex>"` (the closing
//! `}` kept): exactly what was written, so verification never re-serialises anything. Its hash
//! is `SHA-256(prev ‖ canonical)`, where `prev` is the 32 bytes of the previous entry's hash
//! ([`GENESIS`], all zeros, before the very first entry). The first entry of every segment
//! carries `"prev":"<64 hex>"` (the previous segment's last hash): a segment can be checked on
//! its own from that anchor, and when retention has deleted the older segments, the first kept
//! entry's `prev` is where verification starts (it says so: [`VerifyReport::anchor`]).
//!
//! `seq` increases by one from entry to entry, across segments. What a verification catches,
//! and how it names it ([`ChainError`]): a changed byte (the entry's hash no longer matches),
//! a deleted line, two lines swapped (the next entry's hash or `seq` does not follow), an
//! unparsable line, a segment whose `prev` is not the previous segment's last hash. A last line
//! without its newline is a **torn tail** (a power loss while writing), reported apart
//! ([`VerifyReport::torn_tail`]): the entries before it verify, and the writer cuts it off at
//! its next start.

use ring::digest;

/// The `prev` of the very first entry.
pub const GENESIS: [u8; 32] = [0; 32];

/// The suffix every line ends with, before the 64 hex digits.
const HASH_KEY: &[u8] = b",\"hash\":\"";

/// `SHA-256(prev ‖ canonical)`.
pub fn entry_hash(prev: &[u8; 32], canonical: &[u8]) -> [u8; 32] {
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(prev);
    ctx.update(canonical);
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// Seals `canonical` (a JSON object's bytes, `{...}`) into one line (with its `\n`), and
/// returns the line and its hash.
///
/// # Errors
///
/// [`ChainError::NotAnObject`] if `canonical` does not end with `}`.
pub fn seal(prev: &[u8; 32], canonical: &[u8]) -> Result<(Vec<u8>, [u8; 32]), ChainError> {
    let Some((b'}', body)) = canonical.split_last() else {
        return Err(ChainError::NotAnObject);
    };
    let hash = entry_hash(prev, canonical);
    let mut line = Vec::with_capacity(canonical.len() + HASH_KEY.len() + 68);
    line.extend_from_slice(body);
    line.extend_from_slice(HASH_KEY);
    line.extend_from_slice(hex::encode(hash).as_bytes());
    line.extend_from_slice(b"\"}\n");
    Ok((line, hash))
}

/// One line taken apart (without its newline).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opened {
    pub seq: u64,
    /// The `prev` field, present on the first entry of a segment.
    pub prev: Option<[u8; 32]>,
    pub hash: [u8; 32],
    /// The canonical bytes (what the hash covers after `prev`).
    pub canonical: Vec<u8>,
}

/// Splits a line (no newline) into its canonical bytes and stated hash, and reads `seq` and
/// `prev`.
///
/// # Errors
///
/// [`ChainError::Malformed`] with what is wrong.
pub fn open_line(line: &[u8]) -> Result<Opened, &'static str> {
    // ...,"hash":"<64 hex>"}
    let tail_len = HASH_KEY.len() + 64 + 2;
    if line.len() < tail_len + 2 {
        return Err("line too short for an entry");
    }
    let split = line.len() - tail_len;
    let (body, tail) = line.split_at(split);
    let (key, rest) = tail.split_at(HASH_KEY.len());
    if key != HASH_KEY || !rest.ends_with(b"\"}") {
        return Err("no \"hash\" field at the end of the line");
    }
    let hex_part = rest.get(..64).ok_or("hash field too short")?;
    let mut hash = [0u8; 32];
    hex::decode_to_slice(hex_part, &mut hash).map_err(|_| "hash is not 64 hex digits")?;
    let mut canonical = Vec::with_capacity(body.len() + 1);
    canonical.extend_from_slice(body);
    canonical.push(b'}');
    let v: serde_json::Value =
        serde_json::from_slice(&canonical).map_err(|_| "not a JSON object")?;
    let seq = v
        .get("seq")
        .and_then(serde_json::Value::as_u64)
        .ok_or("no numeric \"seq\"")?;
    let prev = match v.get("prev") {
        None => None,
        Some(p) => {
            let s = p.as_str().ok_or("\"prev\" is not a string")?;
            let mut b = [0u8; 32];
            hex::decode_to_slice(s, &mut b).map_err(|_| "\"prev\" is not 64 hex digits")?;
            Some(b)
        }
    };
    Ok(Opened {
        seq,
        prev,
        hash,
        canonical,
    })
}

/// Why a chain does not verify. Names the segment (file name) and the first entry that breaks
/// it (its `seq`, or its line number when the line is unreadable).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    #[error("internal: canonical bytes are not a JSON object")]
    NotAnObject,
    #[error("{segment} line {line}: unreadable entry ({why})")]
    Malformed {
        segment: String,
        line: usize,
        why: &'static str,
    },
    #[error("{segment} seq {seq}: hash does not match its content and the previous entry's hash (the entry, or one before it, was changed, removed or moved)")]
    HashMismatch { segment: String, seq: u64 },
    #[error("{segment} seq {seq}: expected seq {expected} (an entry is missing or out of order)")]
    SeqGap {
        segment: String,
        seq: u64,
        expected: u64,
    },
    #[error("{segment} seq {seq}: first entry of the segment does not carry \"prev\"")]
    NoAnchor { segment: String, seq: u64 },
    #[error("{segment} seq {seq}: \"prev\" is not the previous segment's last hash (a segment was removed, replaced or reordered)")]
    SegmentLink { segment: String, seq: u64 },
    #[error(
        "{segment} seq {seq}: \"prev\" inside a segment (only a segment's first entry carries one)"
    )]
    StrayAnchor { segment: String, seq: u64 },
    #[error("{segment}: a segment other than the last does not end with a complete line")]
    TornMiddle { segment: String },
}

impl ChainError {
    /// The `seq` of the entry named, when it has one.
    pub fn seq(&self) -> Option<u64> {
        match self {
            ChainError::HashMismatch { seq, .. }
            | ChainError::SeqGap { seq, .. }
            | ChainError::NoAnchor { seq, .. }
            | ChainError::SegmentLink { seq, .. }
            | ChainError::StrayAnchor { seq, .. } => Some(*seq),
            _ => None,
        }
    }
}

/// A torn last line: `bytes` after the last newline of the last segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TornTail {
    pub segment: String,
    pub bytes: usize,
}

/// What a successful verification saw.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct VerifyReport {
    pub segments: usize,
    pub entries: u64,
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
    pub last_hash: Option<[u8; 32]>,
    /// `(seq, prev)` of the first entry when the chain does not start at seq 0 from
    /// [`GENESIS`]: older segments were deleted by retention; the chain is verified from here.
    pub anchor: Option<(u64, [u8; 32])>,
    pub torn_tail: Option<TornTail>,
    /// The anchors given to [`verify_anchored`], each with what the log holds at its `seq`.
    pub anchors: Vec<(Head, AnchorCheck)>,
}

/// What the log holds at an anchor's `seq` (a head published off the box earlier).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnchorCheck {
    /// The entry is there, with that hash.
    Matches,
    /// The entry is there with another hash: the log was rewritten after the anchor was taken.
    Differs,
    /// The log ends before that entry: entries were removed after the anchor was taken.
    Missing,
    /// Older than the log's first entry: deleted by retention, cannot be checked.
    BeforeRetention,
}

impl AnchorCheck {
    /// Whether this anchor proves the log was changed.
    pub fn is_failure(self) -> bool {
        matches!(self, AnchorCheck::Differs | AnchorCheck::Missing)
    }
}

/// Verifies segments given in order (oldest first) as `(name, bytes)`.
///
/// # Errors
///
/// The first [`ChainError`] met.
pub fn verify<'a>(
    segments: impl IntoIterator<Item = (&'a str, &'a [u8])>,
) -> Result<VerifyReport, ChainError> {
    verify_anchored(segments, &[])
}

/// As [`verify`], and checks each anchor (`(seq, hash)` of an entry, published off the box
/// earlier: [`crate::audit::AuditHead`]) against the entry the log holds at that `seq`
/// ([`VerifyReport::anchors`]). A consistent chain can still fail an anchor: a log rewritten
/// or cut back from some entry on, its hashes recomputed.
///
/// # Errors
///
/// The first [`ChainError`] met.
pub fn verify_anchored<'a>(
    segments: impl IntoIterator<Item = (&'a str, &'a [u8])>,
    anchors: &[Head],
) -> Result<VerifyReport, ChainError> {
    let mut found: Vec<Option<[u8; 32]>> = vec![None; anchors.len()];
    let segments: Vec<(&str, &[u8])> = segments.into_iter().collect();
    let mut report = VerifyReport {
        segments: segments.len(),
        ..VerifyReport::default()
    };
    let mut prev: Option<[u8; 32]> = None;
    let mut next_seq: Option<u64> = None;
    let last_index = segments.len().saturating_sub(1);
    for (i, (name, bytes)) in segments.iter().enumerate() {
        let segment = (*name).to_string();
        let (complete, torn) = match bytes.iter().rposition(|&b| b == b'\n') {
            Some(p) => bytes.split_at(p + 1),
            None => (&bytes[..0], *bytes),
        };
        if !torn.is_empty() {
            if i != last_index {
                return Err(ChainError::TornMiddle { segment });
            }
            report.torn_tail = Some(TornTail {
                segment: segment.clone(),
                bytes: torn.len(),
            });
        }
        let mut first_in_segment = true;
        let body = complete.strip_suffix(b"\n").unwrap_or(complete);
        let lines = body.split(|&b| b == b'\n').filter(|_| !complete.is_empty());
        for (n, line) in lines.enumerate() {
            let e = open_line(line).map_err(|why| ChainError::Malformed {
                segment: segment.clone(),
                line: n + 1,
                why,
            })?;
            if let Some(expected) = next_seq {
                if e.seq != expected {
                    return Err(ChainError::SeqGap {
                        segment,
                        seq: e.seq,
                        expected,
                    });
                }
            }
            let link = match (first_in_segment, e.prev, prev) {
                (true, None, _) => {
                    return Err(ChainError::NoAnchor {
                        segment,
                        seq: e.seq,
                    })
                }
                (true, Some(p), None) => {
                    // The first entry we have: the genesis, or an anchor left by retention.
                    if !(e.seq == 0 && p == GENESIS) {
                        report.anchor = Some((e.seq, p));
                    }
                    p
                }
                (true, Some(p), Some(last)) => {
                    if p != last {
                        return Err(ChainError::SegmentLink {
                            segment,
                            seq: e.seq,
                        });
                    }
                    p
                }
                (false, Some(_), _) => {
                    return Err(ChainError::StrayAnchor {
                        segment,
                        seq: e.seq,
                    })
                }
                (false, None, Some(last)) => last,
                (false, None, None) => {
                    return Err(ChainError::NoAnchor {
                        segment,
                        seq: e.seq,
                    })
                }
            };
            if entry_hash(&link, &e.canonical) != e.hash {
                return Err(ChainError::HashMismatch {
                    segment,
                    seq: e.seq,
                });
            }
            for (slot, (seq, _)) in found.iter_mut().zip(anchors) {
                if *seq == e.seq {
                    *slot = Some(e.hash);
                }
            }
            first_in_segment = false;
            report.entries += 1;
            report.first_seq.get_or_insert(e.seq);
            report.last_seq = Some(e.seq);
            report.last_hash = Some(e.hash);
            prev = Some(e.hash);
            next_seq = Some(e.seq.saturating_add(1));
        }
    }
    report.anchors = anchors
        .iter()
        .zip(found)
        .map(|(&(seq, hash), got)| {
            let check = match got {
                Some(h) if h == hash => AnchorCheck::Matches,
                Some(_) => AnchorCheck::Differs,
                None if report.first_seq.is_some_and(|first| seq < first) => {
                    AnchorCheck::BeforeRetention
                }
                None => AnchorCheck::Missing,
            };
            ((seq, hash), check)
        })
        .collect();
    Ok(report)
}

/// `(seq, hash)` of a chain's head.
pub type Head = (u64, [u8; 32]);

/// The last complete entry of a segment's bytes, for the writer at open: `(seq, hash)` of the
/// last line, and how many bytes of torn tail follow it.
///
/// # Errors
///
/// The reason when the last complete line is unreadable.
pub fn last_entry(bytes: &[u8]) -> Result<(Option<Head>, usize), &'static str> {
    let (complete, torn) = match bytes.iter().rposition(|&b| b == b'\n') {
        Some(p) => bytes.split_at(p + 1),
        None => (&bytes[..0], bytes),
    };
    let body = complete.strip_suffix(b"\n").unwrap_or(complete);
    if body.is_empty() {
        return Ok((None, torn.len()));
    }
    let start = body.iter().rposition(|&b| b == b'\n').map_or(0, |p| p + 1);
    let line = body.get(start..).unwrap_or(body);
    let e = open_line(line)?;
    Ok((Some((e.seq, e.hash)), torn.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A chain of `n` entries in segments of `per` entries, built as the writer does.
    fn chain(n: u64, per: u64) -> Vec<(String, Vec<u8>)> {
        let mut segs: Vec<(String, Vec<u8>)> = Vec::new();
        let mut prev = GENESIS;
        for seq in 0..n {
            let first = seq % per == 0;
            if first {
                segs.push((format!("audit-{seq:020}.jsonl"), Vec::new()));
            }
            let canonical = if first {
                format!(
                    "{{\"seq\":{seq},\"time\":\"2026-12-06T00:00:00Z\",\"prev\":\"{}\",\"event\":\"stored\",\"reading\":\"{:064x}\"}}",
                    hex::encode(prev),
                    seq
                )
            } else {
                format!(
                    "{{\"seq\":{seq},\"time\":\"2026-12-06T00:00:00Z\",\"event\":\"stored\",\"reading\":\"{:064x}\"}}",
                    seq
                )
            };
            let (line, h) = seal(&prev, canonical.as_bytes()).unwrap();
            segs.last_mut().unwrap().1.extend_from_slice(&line);
            prev = h;
        }
        segs
    }

    fn run(segs: &[(String, Vec<u8>)]) -> Result<VerifyReport, ChainError> {
        verify(segs.iter().map(|(n, b)| (n.as_str(), b.as_slice())))
    }

    fn lines(b: &[u8]) -> Vec<Vec<u8>> {
        b.split_inclusive(|&c| c == b'\n')
            .map(<[u8]>::to_vec)
            .collect()
    }

    /// A head published off the box catches what the chain alone cannot: a log rewritten from
    /// some entry on, or cut back, with its hashes recomputed (the chain is consistent again).
    #[test]
    fn anchors_catch_a_log_rewritten_or_cut_back_after_they_were_taken() {
        let segs = chain(30, 10);
        let head = run(&segs).unwrap();
        let anchor = (head.last_seq.unwrap(), head.last_hash.unwrap());
        let anchored = |segs: &[(String, Vec<u8>)], anchors: &[Head]| {
            verify_anchored(
                segs.iter().map(|(n, b)| (n.as_str(), b.as_slice())),
                anchors,
            )
            .unwrap()
            .anchors
        };
        assert_eq!(
            anchored(&segs, &[anchor]),
            vec![(anchor, AnchorCheck::Matches)]
        );
        // More entries since: still matches.
        let later = chain(45, 10);
        assert_eq!(
            anchored(&later, &[anchor]),
            vec![(anchor, AnchorCheck::Matches)]
        );
        // Cut back to 25 entries (a clean chain, verifies alone): the anchor's entry is missing.
        let mut cut = chain(25, 10);
        assert!(run(&cut).is_ok());
        assert_eq!(
            anchored(&cut, &[anchor]),
            vec![(anchor, AnchorCheck::Missing)]
        );
        // Rewritten: another entry 29 (other content, hashes recomputed): differs.
        let mut prev = run(&cut).unwrap().last_hash.unwrap();
        for seq in 25..30u64 {
            let canonical = format!(
                "{{\"seq\":{seq},\"time\":\"2026-12-06T00:00:00Z\",\"event\":\"agent_stopped\"}}"
            );
            let (line, h) = seal(&prev, canonical.as_bytes()).unwrap();
            cut.last_mut().unwrap().1.extend_from_slice(&line);
            prev = h;
        }
        assert!(run(&cut).is_ok(), "the rewritten chain is consistent");
        assert_eq!(
            anchored(&cut, &[anchor]),
            vec![(anchor, AnchorCheck::Differs)]
        );
        assert!(AnchorCheck::Differs.is_failure() && AnchorCheck::Missing.is_failure());
        // Older than the first kept segment: cannot be checked, not a failure.
        let kept = &later[1..];
        let old = (3, [0u8; 32]);
        assert_eq!(
            anchored(kept, &[old]),
            vec![(old, AnchorCheck::BeforeRetention)]
        );
        assert!(!AnchorCheck::BeforeRetention.is_failure());
    }

    #[test]
    fn an_untouched_chain_verifies_from_genesis() {
        let segs = chain(10, 100);
        let r = run(&segs).unwrap();
        assert_eq!(r.entries, 10);
        assert_eq!((r.first_seq, r.last_seq), (Some(0), Some(9)));
        assert_eq!(r.anchor, None);
        assert_eq!(r.torn_tail, None);
    }

    #[test]
    fn flipping_one_byte_names_that_entry() {
        let mut segs = chain(10, 100);
        let text = String::from_utf8(segs[0].1.clone()).unwrap();
        // Change a digit inside entry 4's reading id.
        let at = text.find("\"seq\":4,").unwrap()
            + text[text.find("\"seq\":4,").unwrap()..]
                .find("\"reading\":\"")
                .unwrap()
            + 12;
        segs[0].1[at] ^= 0x01;
        let e = run(&segs).unwrap_err();
        assert_eq!(e.seq(), Some(4), "{e}");
        assert!(matches!(e, ChainError::HashMismatch { .. }), "{e}");
        assert!(
            e.to_string()
                .contains("audit-00000000000000000000.jsonl seq 4"),
            "{e}"
        );
    }

    #[test]
    fn flipping_a_byte_of_a_hash_is_detected() {
        let mut segs = chain(5, 100);
        let l = lines(&segs[0].1);
        let pos: usize = l[..2].iter().map(Vec::len).sum::<usize>() + l[2].len() - 5;
        segs[0].1[pos] = if segs[0].1[pos] == b'a' { b'b' } else { b'a' };
        let e = run(&segs).unwrap_err();
        assert_eq!(e.seq(), Some(2), "{e}");
    }

    #[test]
    fn deleting_a_line_names_the_entry_after_the_gap() {
        let mut segs = chain(10, 100);
        let mut l = lines(&segs[0].1);
        l.remove(6);
        segs[0].1 = l.concat();
        let e = run(&segs).unwrap_err();
        assert_eq!(e.seq(), Some(7), "{e}");
    }

    #[test]
    fn deleting_a_line_and_renumbering_is_still_caught_by_the_hash() {
        // An editor who removes entry 6 and fixes the numbering cannot fix the hashes.
        let segs = chain(10, 100);
        let l = lines(&segs[0].1);
        let mut forged = Vec::new();
        for (i, line) in l.iter().enumerate() {
            if i == 6 {
                continue;
            }
            let s = String::from_utf8(line.clone()).unwrap();
            let s = if i > 6 {
                s.replacen(&format!("\"seq\":{i},"), &format!("\"seq\":{},", i - 1), 1)
            } else {
                s
            };
            forged.extend_from_slice(s.as_bytes());
        }
        let e = run(&[(segs[0].0.clone(), forged)]).unwrap_err();
        assert!(matches!(e, ChainError::HashMismatch { seq: 6, .. }), "{e}");
    }

    #[test]
    fn swapping_two_lines_is_detected_at_the_first_of_them() {
        let mut segs = chain(10, 100);
        let mut l = lines(&segs[0].1);
        l.swap(3, 4);
        segs[0].1 = l.concat();
        let e = run(&segs).unwrap_err();
        // Line 4 now holds seq 4 where seq 3 was expected.
        assert!(
            matches!(
                e,
                ChainError::SeqGap {
                    seq: 4,
                    expected: 3,
                    ..
                }
            ),
            "{e}"
        );
    }

    #[test]
    fn a_torn_tail_is_reported_apart_and_the_rest_verifies() {
        let mut segs = chain(6, 100);
        let l = lines(&segs[0].1);
        let keep: usize = l[..5].iter().map(Vec::len).sum();
        segs[0].1.truncate(keep + 20);
        let r = run(&segs).unwrap();
        assert_eq!(r.last_seq, Some(4));
        assert_eq!(
            r.torn_tail,
            Some(TornTail {
                segment: segs[0].0.clone(),
                bytes: 20
            })
        );
        assert_eq!(last_entry(&segs[0].1).unwrap().1, 20);
        assert_eq!(last_entry(&segs[0].1).unwrap().0.map(|x| x.0), Some(4));
    }

    #[test]
    fn a_torn_line_in_an_earlier_segment_is_a_broken_chain() {
        let mut segs = chain(10, 5);
        let len = segs[0].1.len();
        segs[0].1.truncate(len - 3);
        let e = run(&segs).unwrap_err();
        assert!(matches!(e, ChainError::TornMiddle { .. }), "{e}");
    }

    #[test]
    fn segments_chain_across_rollover() {
        let segs = chain(23, 5);
        assert_eq!(segs.len(), 5);
        let r = run(&segs).unwrap();
        assert_eq!((r.entries, r.segments, r.anchor), (23, 5, None));
    }

    #[test]
    fn a_missing_middle_segment_breaks_the_link() {
        let mut segs = chain(23, 5);
        segs.remove(2);
        let e = run(&segs).unwrap_err();
        assert!(matches!(e, ChainError::SeqGap { seq: 15, .. }), "{e}");
    }

    #[test]
    fn a_replaced_segment_breaks_the_link_even_with_matching_numbers() {
        let segs = chain(15, 5);
        let mut forged = segs.clone();
        // Segment 1 rewritten: one entry's time changed and the whole segment re-sealed from
        // its own `prev`, so it verifies alone; the link to segment 2 then breaks.
        let l = lines(&forged[1].1);
        let mut prev = {
            let o = open_line(l[0].strip_suffix(b"\n").unwrap()).unwrap();
            o.prev.unwrap()
        };
        let mut resealed = Vec::new();
        for (i, line) in l.iter().enumerate() {
            let o = open_line(line.strip_suffix(b"\n").unwrap()).unwrap();
            let mut c = String::from_utf8(o.canonical).unwrap();
            if i == 1 {
                c = c.replace("2026-12-06T00:00:00Z", "2026-12-06T00:00:01Z");
            }
            let (nl, h) = seal(&prev, c.as_bytes()).unwrap();
            resealed.extend_from_slice(&nl);
            prev = h;
        }
        forged[1].1 = resealed;
        let e = run(&forged).unwrap_err();
        assert!(matches!(e, ChainError::SegmentLink { seq: 10, .. }), "{e}");
    }

    #[test]
    fn after_retention_the_first_kept_entry_is_the_anchor() {
        let mut segs = chain(23, 5);
        segs.drain(..2);
        let r = run(&segs).unwrap();
        assert_eq!(r.first_seq, Some(10));
        let (seq, _) = r.anchor.unwrap();
        assert_eq!(seq, 10);
    }

    #[test]
    fn garbage_lines_are_typed_errors_not_panics() {
        for junk in [
            &b"\n"[..],
            b"{}\n",
            b"not json at all\n",
            b"{\"seq\":1,\"hash\":\"zz\"}\n",
            b"\xff\xfe\xfd,\"hash\":\"0000000000000000000000000000000000000000000000000000000000000000\"}\n",
        ] {
            let e = run(&[("s".into(), junk.to_vec())]).unwrap_err();
            assert!(matches!(e, ChainError::Malformed { line: 1, .. }), "{e}");
        }
        assert!(last_entry(b"garbage\n").is_err());
        assert_eq!(last_entry(b"").unwrap(), (None, 0));
    }
}
