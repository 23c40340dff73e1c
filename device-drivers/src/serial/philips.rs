//! Philips IntelliVue MIB/RS232 data export: the framing layer only (`philips-mib-rs232`,
//! serial-protocols.md §4.1).
//!
//! `C0 | escaped(11 01 LEN_hi LEN_lo | user data | FCS_lo FCS_hi) | C1`, where `C0`/`C1`/`7D`
//! inside the frame are sent as `7D (byte ^ 0x20)`; FCS = CRC-16/X-25 over header + user data
//! (unescaped), least-significant byte first; `7D C1` aborts the frame. Everything between BOF
//! and EOF is un-escaped, header and FCS included.
//!
//! Each accepted frame becomes a record with no readings and
//! `fields: {protocol_id, msg_type, length, user_data}` (`user_data` in lowercase hex, the key the
//! vectors use). Decoding the ROSE/CMIP data layer is a later issue.
//!
//! Errors: `7D C1` → `frame_aborted`; a `C0` inside a frame → `truncated` for the partial frame
//! (a new frame starts; a repeated `C0` with nothing between is skipped silently); fewer than 6
//! unescaped bytes → `truncated`; protocol id ≠ 0x11 →
//! `bad_header`; LEN not matching the frame → `length_mismatch`; FCS → `checksum_mismatch`;
//! more than 8192 unescaped bytes → `frame_too_long` (then hunt for the next `C0`).
//! Bytes outside frames and bytes of rejected frames count as discarded.

use serde_json::json;

use super::{Decoder, ErrorKind, Event, Out, Stats};
use crate::Record;

const BOF: u8 = 0xC0;
const EOF: u8 = 0xC1;
const ESC: u8 = 0x7D;
/// Data export protocol id.
pub const PROTOCOL_ID: u8 = 0x11;
/// Largest accepted frame (unescaped header + user data + FCS).
pub const MAX_FRAME_BYTES: usize = 8192;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Hunting,
    InFrame,
    Escaped,
}

/// `philips-mib-rs232` framing decoder.
#[derive(Debug)]
pub struct MibDecoder {
    state: State,
    frame: Vec<u8>,
    /// Raw (escaped) bytes of the current frame, BOF included, for discard accounting.
    raw_len: usize,
    out: Out,
}

impl Default for MibDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl MibDecoder {
    pub fn new() -> Self {
        Self {
            state: State::Hunting,
            frame: Vec::new(),
            raw_len: 0,
            out: Out::new(MAX_FRAME_BYTES),
        }
    }

    fn reject(&mut self, kind: ErrorKind, raw: usize) {
        self.out.error(kind, raw);
        self.out.discard(raw);
        self.frame.clear();
        self.raw_len = 0;
    }

    fn push(&mut self, b: u8) {
        if self.frame.len() >= MAX_FRAME_BYTES {
            let raw = self.raw_len;
            self.reject(ErrorKind::FrameTooLong, raw);
            self.state = State::Hunting;
        } else {
            self.frame.push(b);
            self.state = State::InFrame;
        }
    }

    fn end_frame(&mut self) {
        let raw = self.raw_len;
        match frame_record(&self.frame) {
            Ok(r) => {
                self.out.frame_ok();
                self.out.record(r);
                self.frame.clear();
                self.raw_len = 0;
            }
            Err(kind) => self.reject(kind, raw),
        }
        self.state = State::Hunting;
    }
}

impl Decoder for MibDecoder {
    fn feed(&mut self, bytes: &[u8]) -> Vec<Event> {
        self.out.stats.bytes_in += bytes.len() as u64;
        for &b in bytes {
            match self.state {
                State::Hunting => {
                    if b == BOF {
                        self.frame.clear();
                        self.raw_len = 1;
                        self.state = State::InFrame;
                    } else {
                        self.out.discard(1);
                    }
                }
                State::InFrame => {
                    self.raw_len += 1;
                    match b {
                        BOF => {
                            // A new frame starts before the previous one ended. A lone BOF
                            // (`C0 C0`) is just skipped; a partial frame is `truncated`.
                            let raw = self.raw_len - 1;
                            if self.frame.is_empty() && raw <= 1 {
                                self.out.discard(raw);
                            } else {
                                self.reject(ErrorKind::Truncated, raw);
                            }
                            self.raw_len = 1;
                        }
                        EOF => self.end_frame(),
                        ESC => self.state = State::Escaped,
                        _ => self.push(b),
                    }
                }
                State::Escaped => {
                    self.raw_len += 1;
                    match b {
                        EOF => {
                            let raw = self.raw_len;
                            self.reject(ErrorKind::FrameAborted, raw);
                            self.state = State::Hunting;
                        }
                        BOF => {
                            let raw = self.raw_len - 1;
                            self.reject(ErrorKind::Truncated, raw);
                            self.raw_len = 1;
                            self.state = State::InFrame;
                        }
                        _ => self.push(b ^ 0x20),
                    }
                }
            }
        }
        self.out.take()
    }

    fn stats(&self) -> Stats {
        let mut s = self.out.stats.clone();
        s.buffered = self.frame.len();
        s
    }
}

fn frame_record(frame: &[u8]) -> Result<Record, ErrorKind> {
    let (body, fcs) = match frame.len().checked_sub(2) {
        Some(n) if n >= 4 => frame.split_at(n),
        _ => return Err(ErrorKind::Truncated),
    };
    let (header, user) = body.split_at(4);
    let [protocol_id, msg_type, len_hi, len_lo] = [header[0], header[1], header[2], header[3]];
    if protocol_id != PROTOCOL_ID {
        return Err(ErrorKind::BadHeader);
    }
    let length = usize::from(u16::from_be_bytes([len_hi, len_lo]));
    if length != user.len() {
        return Err(ErrorKind::LengthMismatch);
    }
    let got = u16::from_le_bytes([fcs[0], fcs[1]]);
    if crc16_x25(body) != got {
        return Err(ErrorKind::ChecksumMismatch);
    }
    let mut r = Record::default();
    r.fields.insert("protocol_id".into(), json!(protocol_id));
    r.fields.insert("msg_type".into(), json!(msg_type));
    r.fields.insert("length".into(), json!(length));
    r.fields.insert("user_data".into(), json!(hex_lower(user)));
    Ok(r)
}

fn hex_lower(b: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(b.len() * 2);
    for &x in b {
        s.push(char::from(HEX[usize::from(x >> 4)]));
        s.push(char::from(HEX[usize::from(x & 0x0F)]));
    }
    s
}

const fn crc_table() -> [u16; 256] {
    let mut t = [0u16; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u16;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                (c >> 1) ^ 0x8408
            } else {
                c >> 1
            };
            k += 1;
        }
        t[i] = c;
        i += 1;
    }
    t
}

static CRC_TABLE: [u16; 256] = crc_table();

/// CRC-16/X-25 (RFC 1662 FCS-16): init 0xFFFF, reflected poly 0x8408, final ones' complement.
pub fn crc16_x25(data: &[u8]) -> u16 {
    let mut crc: u16 = 0xFFFF;
    for &b in data {
        crc = (crc >> 8) ^ CRC_TABLE[usize::from((crc ^ u16::from(b)) & 0xFF)];
    }
    !crc
}

/// Builds a frame around `user_data` (for tests, benchmarks and fuzz seeds).
pub fn encode_frame(msg_type: u8, user_data: &[u8]) -> Option<Vec<u8>> {
    let len = u16::try_from(user_data.len()).ok()?;
    let mut body = vec![PROTOCOL_ID, msg_type];
    body.extend_from_slice(&len.to_be_bytes());
    body.extend_from_slice(user_data);
    let fcs = crc16_x25(&body);
    body.extend_from_slice(&fcs.to_le_bytes());
    let mut out = vec![BOF];
    for b in body {
        if matches!(b, BOF | EOF | ESC) {
            out.extend_from_slice(&[ESC, b ^ 0x20]);
        } else {
            out.push(b);
        }
    }
    out.push(EOF);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc_check_value() {
        assert_eq!(crc16_x25(b"123456789"), 0x906E);
    }

    #[test]
    fn encoded_frames_round_trip_even_with_escaped_fcs() {
        for n in 0..300u16 {
            let payload: Vec<u8> = (0..n).map(|i| (i * 7 + n) as u8).collect();
            let frame = encode_frame(1, &payload).unwrap();
            let mut d = MibDecoder::new();
            let ev = d.feed(&frame);
            assert_eq!(ev.len(), 1, "n={n}");
            assert!(matches!(ev[0], Event::Record(_)));
        }
    }
}
