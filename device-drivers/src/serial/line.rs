//! The line framer shared by the text protocols (Masimo, Tanita, generic line parser).
//!
//! Lines end with LF; one trailing CR is stripped; empty lines are skipped silently. A line whose
//! content (without CR LF) exceeds `max_line_bytes` is reported once as `line_too_long`, and every
//! byte up to and including its LF is discarded (counted in `bytes_discarded`): the framer
//! resynchronises at the next LF. The framer never holds more than `max_line_bytes + 1` bytes
//! (content plus a CR not yet known to be the terminator's). The error's byte count is
//! `max_line_bytes + 1` ("more than the cap"), so that it does not depend on the chunking.

use super::{Decoder, ErrorKind, Event, Out, Stats};
use crate::Record;

/// A decoder for the "one record per text line" protocols (Masimo, Tanita): the shared framer
/// and counters around a pure per-line parser.
#[derive(Debug)]
pub struct LineDecoder {
    lines: LineFramer,
    out: Out,
    parse: fn(&[u8]) -> Result<Record, ErrorKind>,
}

impl LineDecoder {
    pub fn new(max_line_bytes: usize, parse: fn(&[u8]) -> Result<Record, ErrorKind>) -> Self {
        let lines = LineFramer::new(max_line_bytes);
        let out = Out::new(lines.cap());
        Self { lines, out, parse }
    }
}

impl Decoder for LineDecoder {
    fn feed(&mut self, bytes: &[u8]) -> Vec<Event> {
        self.out.stats.bytes_in += bytes.len() as u64;
        let parse = self.parse;
        self.lines
            .feed(bytes, &mut self.out, |line, out| match parse(line) {
                Ok(r) => {
                    out.frame_ok();
                    out.record(r);
                }
                Err(kind) => out.error(kind, line.len()),
            });
        self.out.take()
    }

    fn stats(&self) -> Stats {
        let mut s = self.out.stats.clone();
        s.buffered = self.lines.buffered();
        s
    }
}

/// Splits a byte stream into bounded lines.
#[derive(Debug, Clone)]
pub struct LineFramer {
    buf: Vec<u8>,
    max: usize,
    /// Inside an over-long line: drop everything up to the next LF.
    skipping: bool,
}

impl LineFramer {
    /// A framer that accepts lines of at most `max_line_bytes` (CR LF excluded).
    pub fn new(max_line_bytes: usize) -> Self {
        Self {
            buf: Vec::new(),
            max: max_line_bytes,
            skipping: false,
        }
    }

    /// The most bytes this framer ever buffers.
    pub fn cap(&self) -> usize {
        self.max.saturating_add(1)
    }

    /// Bytes currently buffered (an incomplete line).
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Feeds bytes; calls `on_line` for every complete non-empty line (without CR LF).
    /// Over-long lines are reported on `out` as `line_too_long`.
    pub(crate) fn feed(
        &mut self,
        mut bytes: &[u8],
        out: &mut Out,
        mut on_line: impl FnMut(&[u8], &mut Out),
    ) {
        while !bytes.is_empty() {
            let lf = bytes.iter().position(|&b| b == b'\n');
            if self.skipping {
                match lf {
                    Some(i) => {
                        out.discard(i + 1);
                        bytes = bytes.get(i + 1..).unwrap_or(&[]);
                        self.skipping = false;
                    }
                    None => {
                        out.discard(bytes.len());
                        return;
                    }
                }
                continue;
            }
            match lf {
                Some(i) => {
                    let part = bytes.get(..i).unwrap_or(&[]);
                    bytes = bytes.get(i + 1..).unwrap_or(&[]);
                    if self.buf.is_empty() {
                        self.finish_line(part, out, &mut on_line);
                    } else if self.buf.len() + part.len() > self.cap() {
                        let n = self.buf.len() + part.len();
                        out.error(ErrorKind::LineTooLong, self.max + 1);
                        out.discard(n + 1);
                        self.buf.clear();
                    } else {
                        let mut line = std::mem::take(&mut self.buf);
                        line.extend_from_slice(part);
                        self.finish_line(&line, out, &mut on_line);
                        // Keep the allocation for the next line.
                        line.clear();
                        self.buf = line;
                    }
                }
                None => {
                    if self.buf.len() + bytes.len() > self.cap() {
                        let n = self.buf.len() + bytes.len();
                        out.error(ErrorKind::LineTooLong, self.max + 1);
                        out.discard(n);
                        self.buf.clear();
                        self.skipping = true;
                    } else {
                        self.buf.extend_from_slice(bytes);
                    }
                    return;
                }
            }
        }
    }

    fn finish_line(&self, line: &[u8], out: &mut Out, on_line: &mut impl FnMut(&[u8], &mut Out)) {
        let raw_len = line.len();
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            return;
        }
        if line.len() > self.max {
            out.error(ErrorKind::LineTooLong, self.max + 1);
            out.discard(raw_len + 1);
            return;
        }
        on_line(line, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::serial::Event;

    fn lines(max: usize, chunks: &[&[u8]]) -> (Vec<String>, Vec<Event>, u64) {
        let mut f = LineFramer::new(max);
        let mut out = Out::new(f.cap());
        let mut got = Vec::new();
        for c in chunks {
            f.feed(c, &mut out, |l, _| {
                got.push(String::from_utf8_lossy(l).into_owned())
            });
            assert!(f.buffered() <= f.cap());
        }
        (got, out.take(), out.stats.bytes_discarded)
    }

    #[test]
    fn strips_one_cr_and_skips_empty_lines() {
        let (got, ev, d) = lines(10, &[b"ab\r\n\r\n\ncd\r", b"\r\nx"]);
        assert_eq!(got, vec!["ab", "cd\r"]);
        assert!(ev.is_empty());
        assert_eq!(d, 0);
    }

    #[test]
    fn over_long_line_is_reported_once_and_resyncs() {
        let (got, ev, d) = lines(4, &[b"abcdefgh", b"ijk\nok\n"]);
        assert_eq!(got, vec!["ok"]);
        assert_eq!(ev.len(), 1);
        assert_eq!(d, 12);
    }
}
