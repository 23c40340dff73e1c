//! Serial device protocols: incremental framers from raw port bytes to [`Record`]s.
//!
//! Every protocol is a [`Decoder`]: the transport feeds whatever `read()` returned and gets back
//! [`Event`]s (a decoded record, or a typed error). Decoders are pure (no I/O, no clock, no
//! logging) and their output does not depend on how the stream is chunked: feeding a capture
//! whole, in arbitrary pieces or one byte at a time yields the same events (the test suite checks
//! all three for every public vector of `testdata/serial-vectors.json`).
//!
//! Streaming discipline, shared by all decoders (serial-protocols.md §0):
//! - **bounded memory**: each decoder keeps at most [`Stats::buffer_cap`] bytes of pending input,
//!   whatever it is fed (the cap is documented per decoder and checked by property tests);
//! - **resynchronisation**: after garbage or a bad frame the decoder hunts for the next frame start
//!   (binary protocols) or the next line feed (text protocols);
//! - **accounting**: bytes skipped outside accepted frames are counted in
//!   [`Stats::bytes_discarded`]; bytes still pending (an incomplete frame) are not;
//! - **no PHI in errors**: a [`DecodeError`] carries its kind and a byte count, never line
//!   content.
//!
//! | protocol | module | cap on pending bytes |
//! | --- | --- | --- |
//! | `nonin-df2`, `nonin-df7` | [`nonin`] | 5 (one frame) + 25 frames of packet state |
//! | `nonin-df8` | [`nonin`] | 4 |
//! | `nonin-df13` | [`nonin`] | 6 + 256 + 2 (LEN above 256 is `bad_length`) |
//! | `masimo-ascii1` | [`masimo`] | 512 per line |
//! | `tanita-kv` | [`tanita`] | 2048 per line |
//! | `philips-mib-rs232` | [`philips`] | 8192 unescaped bytes per frame |
//! | `generic-line` | [`generic`] | `max_line_bytes` (at most 65536) |

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;

use crate::Record;

pub mod generic;
pub mod line;
pub mod masimo;
pub mod nonin;
pub mod philips;
pub mod tanita;

/// An incremental decoder for one serial port.
pub trait Decoder: Send {
    /// Feeds the bytes of one `read()`; returns the records and errors they completed, in stream
    /// order. Never panics, whatever the bytes.
    fn feed(&mut self, bytes: &[u8]) -> Vec<Event>;

    /// Counters since the decoder was created, and the current buffer occupancy.
    fn stats(&self) -> Stats;
}

/// What a [`Decoder`] produced.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    Record(Record),
    Error(DecodeError),
}

/// The error kinds of serial-protocols.md §0. Serialises to the snake_case names of the vectors.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// Checksum / FCS / CS of an otherwise complete message does not match.
    ChecksumMismatch,
    /// A start byte, sync bit or bit-7 framing rule is violated while locked.
    BadSync,
    /// A declared length is impossible (e.g. DF13 LEN < 14 or above the cap).
    BadLength,
    /// A packet start (SYNC) arrived before the previous packet was complete.
    PacketIncomplete,
    /// A frame without SYNC where a packet must start.
    SyncMissing,
    /// A text line does not follow the protocol's grammar.
    MalformedLine,
    /// A field could not be parsed (bad digits, impossible date, unknown unit).
    MalformedField,
    /// A value outside the device's documented range (rejected, never clamped).
    OutOfRange,
    /// A text line longer than the decoder's cap; the decoder resyncs at the next line feed.
    LineTooLong,
    /// A message that must carry a checksum does not.
    MissingChecksum,
    /// Generic parser: no rule's regex matched the whole line.
    NoRuleMatched,
    /// Philips MIB: the sender aborted the frame (`7D C1`).
    FrameAborted,
    /// A frame ended before its header (or a new frame started inside it).
    Truncated,
    /// A frame header carries an unexpected protocol id.
    BadHeader,
    /// The declared length does not match where the frame ended.
    LengthMismatch,
    /// A binary frame longer than the decoder's cap.
    FrameTooLong,
}

impl ErrorKind {
    /// Every kind, in declaration order.
    pub const ALL: [ErrorKind; 16] = [
        Self::ChecksumMismatch,
        Self::BadSync,
        Self::BadLength,
        Self::PacketIncomplete,
        Self::SyncMissing,
        Self::MalformedLine,
        Self::MalformedField,
        Self::OutOfRange,
        Self::LineTooLong,
        Self::MissingChecksum,
        Self::NoRuleMatched,
        Self::FrameAborted,
        Self::Truncated,
        Self::BadHeader,
        Self::LengthMismatch,
        Self::FrameTooLong,
    ];

    /// The snake_case name used in the vectors and in metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ChecksumMismatch => "checksum_mismatch",
            Self::BadSync => "bad_sync",
            Self::BadLength => "bad_length",
            Self::PacketIncomplete => "packet_incomplete",
            Self::SyncMissing => "sync_missing",
            Self::MalformedLine => "malformed_line",
            Self::MalformedField => "malformed_field",
            Self::OutOfRange => "out_of_range",
            Self::LineTooLong => "line_too_long",
            Self::MissingChecksum => "missing_checksum",
            Self::NoRuleMatched => "no_rule_matched",
            Self::FrameAborted => "frame_aborted",
            Self::Truncated => "truncated",
            Self::BadHeader => "bad_header",
            Self::LengthMismatch => "length_mismatch",
            Self::FrameTooLong => "frame_too_long",
        }
    }

    /// Parses the snake_case name.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == name)
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One rejected message. Carries no content from the stream (PHI): kind and size only.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{kind} ({bytes} bytes)")]
pub struct DecodeError {
    pub kind: ErrorKind,
    /// Size of the rejected frame or line, in bytes (0 when not meaningful).
    pub bytes: usize,
}

/// Counters of one decoder.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Stats {
    /// Bytes fed so far.
    pub bytes_in: u64,
    /// Bytes skipped outside accepted frames (hunting, rejected frames, over-long lines).
    pub bytes_discarded: u64,
    /// Frames (or lines) that passed every check.
    pub frames_ok: u64,
    /// Records emitted.
    pub records: u64,
    /// Errors emitted, per kind.
    pub errors: BTreeMap<ErrorKind, u64>,
    /// Bytes currently held by the decoder (an incomplete frame or line).
    pub buffered: usize,
    /// The most bytes the decoder will ever hold ([`Stats::buffered`] never exceeds it).
    pub buffer_cap: usize,
}

impl Stats {
    /// How many errors of `kind` were emitted.
    pub fn error_count(&self, kind: ErrorKind) -> u64 {
        self.errors.get(&kind).copied().unwrap_or(0)
    }
}

/// Transport settings of a serial port (used by the transport, not by the decoders).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct PortSettings {
    pub baud: u32,
    pub data_bits: u8,
    pub parity: Parity,
    pub stop_bits: u8,
    pub flow_control: FlowControl,
}

impl PortSettings {
    /// 8 data bits, no parity, 1 stop bit, no flow control.
    pub const fn n81(baud: u32) -> Self {
        Self {
            baud,
            data_bits: 8,
            parity: Parity::None,
            stop_bits: 1,
            flow_control: FlowControl::None,
        }
    }
}

impl fmt::Display for PortSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = match self.parity {
            Parity::None => 'N',
            Parity::Even => 'E',
            Parity::Odd => 'O',
        };
        write!(
            f,
            "{} {}{}{} flow={:?}",
            self.baud, self.data_bits, p, self.stop_bits, self.flow_control
        )
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Parity {
    None,
    Even,
    Odd,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FlowControl {
    None,
    Rtscts,
    Xonxoff,
}

/// The built-in protocol names accepted by [`builtin`].
pub const BUILTIN_PROTOCOLS: &[&str] = &[
    "nonin-df2",
    "nonin-df7",
    "nonin-df8",
    "nonin-df13",
    "masimo-ascii1",
    "tanita-kv",
    "philips-mib-rs232",
];

/// A fresh decoder for a built-in protocol, `None` for an unknown name.
pub fn builtin(name: &str) -> Option<Box<dyn Decoder>> {
    Some(match name {
        "nonin-df2" => Box::new(nonin::PacketDecoder::df2()),
        "nonin-df7" => Box::new(nonin::PacketDecoder::df7()),
        "nonin-df8" => Box::new(nonin::Df8Decoder::new()),
        "nonin-df13" => Box::new(nonin::Df13Decoder::new()),
        "masimo-ascii1" => Box::new(masimo::MasimoDecoder::new()),
        "tanita-kv" => Box::new(tanita::TanitaDecoder::new()),
        "philips-mib-rs232" => Box::new(philips::MibDecoder::new()),
        _ => return None,
    })
}

/// The documented port settings of a built-in protocol (serial-protocols.md §1–§4). Models
/// differ (older Tanita scales, Rad-97): the port config may override them.
pub fn builtin_port_settings(name: &str) -> Option<PortSettings> {
    Some(match name {
        "nonin-df2" | "nonin-df7" | "nonin-df8" | "nonin-df13" => PortSettings::n81(9600),
        "masimo-ascii1" => PortSettings::n81(9600),
        "tanita-kv" => PortSettings::n81(9600),
        "philips-mib-rs232" => PortSettings::n81(115_200),
        _ => return None,
    })
}

/// How a device sends its records. It decides nothing in the decoders; the agent picks its
/// default stream reduction from it (a stream is reduced, a measurement is kept whole).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Cadence {
    /// Records keep coming while a sensor is on (Nonin DF2/DF7 3 a second, DF8 and Masimo
    /// ASCII 1 one a second).
    Stream,
    /// One record per measurement (a spot check, a weighing).
    PerMeasurement,
}

/// The cadence of a built-in protocol (serial-protocols.md §1–§4).
pub fn builtin_cadence(name: &str) -> Option<Cadence> {
    Some(match name {
        "nonin-df2" | "nonin-df7" | "nonin-df8" | "masimo-ascii1" => Cadence::Stream,
        "nonin-df13" | "tanita-kv" | "philips-mib-rs232" => Cadence::PerMeasurement,
        _ => return None,
    })
}

/// Feeds `bytes` whole and returns the vectors' `expected` form:
/// `{"records": [...], "errors": [kind...], "bytes_discarded": n, "frames_ok": n}`.
///
/// The single-error shorthand of the vectors (`{"error": KIND}`) is the same outcome as
/// `{"records": [], "errors": [KIND]}`; this function always uses the long form so that the
/// counters are visible too. Pending bytes (an incomplete final frame) are left in the decoder.
pub fn decode_all_to_json(decoder: &mut dyn Decoder, bytes: &[u8]) -> serde_json::Value {
    let events = decoder.feed(bytes);
    events_to_json(&events, &decoder.stats())
}

/// The `expected` form of already collected events (see [`decode_all_to_json`]).
pub fn events_to_json(events: &[Event], stats: &Stats) -> serde_json::Value {
    let mut records = Vec::new();
    let mut errors = Vec::new();
    for e in events {
        match e {
            Event::Record(r) => {
                records.push(serde_json::to_value(r).unwrap_or(serde_json::Value::Null))
            }
            Event::Error(err) => errors.push(serde_json::Value::from(err.kind.as_str())),
        }
    }
    serde_json::json!({
        "records": records,
        "errors": errors,
        "bytes_discarded": stats.bytes_discarded,
        "frames_ok": stats.frames_ok,
    })
}

/// Shared bookkeeping for the decoders: events of the current `feed` plus the counters.
#[derive(Debug, Default)]
pub(crate) struct Out {
    pub events: Vec<Event>,
    pub stats: Stats,
}

impl Out {
    pub(crate) fn new(buffer_cap: usize) -> Self {
        Self {
            events: Vec::new(),
            stats: Stats {
                buffer_cap,
                ..Stats::default()
            },
        }
    }

    pub(crate) fn record(&mut self, r: Record) {
        self.stats.records += 1;
        self.events.push(Event::Record(r));
    }

    pub(crate) fn error(&mut self, kind: ErrorKind, bytes: usize) {
        *self.stats.errors.entry(kind).or_insert(0) += 1;
        self.events.push(Event::Error(DecodeError { kind, bytes }));
    }

    pub(crate) fn discard(&mut self, n: usize) {
        self.stats.bytes_discarded += n as u64;
    }

    pub(crate) fn frame_ok(&mut self) {
        self.stats.frames_ok += 1;
    }

    pub(crate) fn take(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.events)
    }
}
