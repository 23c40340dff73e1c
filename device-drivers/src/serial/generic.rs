//! The configurable line parser (`generic-line`, serial-protocols.md §5).
//!
//! A field technician describes a text-line device in a TOML file (schema v1 of §5.1; every key
//! is documented in `docs/serial-devices.md`) and vitalgate decodes it with no new code:
//!
//! 1. the stream is cut into LF-terminated lines (one trailing CR stripped, empty lines skipped,
//!    longer than `max_line_bytes` → `line_too_long`, resync at the next LF);
//! 2. a line matching any `ignore` regex (search semantics) is skipped silently;
//! 3. rules are tried in order; the first whose regex matches the **whole** line wins (the
//!    pattern is compiled as `^(?:PATTERN)$`); none → `no_rule_matched`;
//! 4. the winning rule: checksum (if any) → status gating (if any) → readings → flags. Any error
//!    rejects the whole line (no partial records).
//!
//! Safety: the `regex` crate matches in linear time (no catastrophic backtracking; look-around
//! and back-references are refused at load), each compiled regex is capped at 256 KiB
//! (`RegexBuilder::size_limit`), and lines are bounded before matching. The decoder holds at most
//! `max_line_bytes + 1` bytes (`max_line_bytes` ≤ 65536).
//!
//! Config errors ([`DeviceConfigError`]) name the file, the line and column, and what was
//! expected, for syntax errors (from `toml`) and for semantic checks alike (bad regex, capture
//! not in the regex, unknown reading type, unknown unit, unknown status in `flag.name` or
//! `status_flags`, `min > max`, ...). Flag names are [`Status`] names: the device file picks a
//! status, the code decides what it means clinically (`crate::status`).
//!
//! Choices where §5.1 is silent:
//! - `parse` defaults to `decimal`; `scale` to 1 and `offset` to 0; `min`/`max` apply to the value
//!   after scale and offset.
//! - `checksum.exclude_suffix` is removed from the covered bytes only when the bytes before the
//!   capture end with it; the checksum capture is read as hex (1–2 digits).
//! - A status value outside `status_accept` yields a record with the mapped flag (or no flag if
//!   unmapped) and no readings; readings of such a line are not parsed at all (OL placeholders).
//! - Records carry `fields.rule` = the name of the rule that matched.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use regex::bytes::{Regex, RegexBuilder};
use serde::Deserialize;
use serde_spanned::Spanned;

use super::line::LineFramer;
use super::{Cadence, Decoder, ErrorKind, Event, FlowControl, Out, Parity, PortSettings, Stats};
use crate::{Decimal, Reading, ReadingType, Record, Status};

/// Default `max_line_bytes`.
pub const DEFAULT_MAX_LINE_BYTES: usize = 256;
/// Largest accepted `max_line_bytes`.
pub const MAX_LINE_BYTES_LIMIT: usize = 65_536;
/// Compiled-size limit of one regex.
pub const REGEX_SIZE_LIMIT: usize = 256 * 1024;

/// UCUM units accepted in device files (extend when a device needs another one).
pub const KNOWN_UNITS: &[&str] = &[
    "%",
    "/min",
    "{beats}/min",
    "{breaths}/min",
    "kg",
    "g",
    "mg",
    "[lb_av]",
    "[oz_av]",
    "cm",
    "m",
    "mm",
    "[in_i]",
    "kg/m2",
    "g/dL",
    "mg/dL",
    "mmol/L",
    "mm[Hg]",
    "kPa",
    "Cel",
    "[degF]",
    "L",
    "mL",
    "L/min",
    "s",
    "ms",
    "Ohm",
    "kcal",
    "kJ",
    "1",
];

/// A device file that cannot be used. `Display`: `PATH:LINE:COLUMN: MESSAGE`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.render())]
pub struct DeviceConfigError {
    pub path: PathBuf,
    /// 1-based line of the offending key or value (0 when the error has no position).
    pub line: usize,
    /// 1-based column, in characters (0 when the error has no position).
    pub column: usize,
    /// What is wrong and what was expected.
    pub message: String,
}

impl DeviceConfigError {
    fn render(&self) -> String {
        if self.line == 0 {
            format!("{}: {}", self.path.display(), self.message)
        } else {
            format!(
                "{}:{}:{}: {}",
                self.path.display(),
                self.line,
                self.column,
                self.message
            )
        }
    }

    fn at(path: &Path, text: &str, span: Option<Range<usize>>, message: String) -> Self {
        let (line, column) = match span {
            Some(r) => line_col(text, r.start),
            None => (0, 0),
        };
        Self {
            path: path.to_path_buf(),
            line,
            column,
            message,
        }
    }
}

/// 1-based line and column (in characters) of byte `offset` in `text`.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = text.get(..offset).unwrap_or("");
    let line = before.bytes().filter(|&b| b == b'\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before.get(line_start..).unwrap_or("").chars().count() + 1;
    (line, column)
}

// ---------------------------------------------------------------------------------------------
// The file as written (serde), with spans for the semantic checks.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileDoc {
    device: DeviceDoc,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeviceDoc {
    id: Spanned<String>,
    #[serde(default)]
    description: String,
    /// Optional: `stream` for a device that keeps sending while a sensor is on (the agent
    /// reduces it), `per-measurement` (default) for one line per measurement.
    cadence: Option<Cadence>,
    /// Optional: a technician decoding a capture may not know the port settings yet.
    serial: Option<SerialDoc>,
    framing: FramingDoc,
    #[serde(default, rename = "rule")]
    rules: Vec<RuleDoc>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SerialDoc {
    baud: Spanned<u32>,
    data_bits: Spanned<u8>,
    parity: Parity,
    stop_bits: Spanned<u8>,
    #[serde(default = "no_flow_control")]
    flow_control: FlowControl,
}

fn no_flow_control() -> FlowControl {
    FlowControl::None
}

#[derive(Deserialize)]
#[serde(rename_all = "snake_case")]
enum FramingKind {
    Line,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FramingDoc {
    #[allow(dead_code)] // only "line" exists in v1; serde rejects anything else
    kind: FramingKind,
    max_line_bytes: Option<Spanned<usize>>,
    #[serde(default)]
    ignore: Vec<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleDoc {
    name: String,
    regex: Spanned<String>,
    #[serde(default)]
    missing: Vec<String>,
    status_capture: Option<Spanned<String>>,
    status_accept: Option<Spanned<Vec<String>>>,
    status_flags: Option<Spanned<BTreeMap<String, Spanned<String>>>>,
    checksum: Option<ChecksumDoc>,
    #[serde(default, rename = "reading")]
    readings: Vec<ReadingDoc>,
    #[serde(default, rename = "flag")]
    flags: Vec<FlagDoc>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
enum ChecksumAlgorithm {
    Sum8,
    Xor8,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ChecksumDoc {
    algorithm: ChecksumAlgorithm,
    capture: Spanned<String>,
    #[serde(default)]
    exclude_suffix: String,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
enum ParseKind {
    Int,
    #[default]
    Decimal,
    Hex,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReadingDoc {
    capture: Spanned<String>,
    #[serde(rename = "type")]
    kind: Spanned<String>,
    #[serde(default)]
    parse: ParseKind,
    scale: Option<Decimal>,
    offset: Option<Decimal>,
    unit: Option<Spanned<String>>,
    unit_capture: Option<Spanned<String>>,
    unit_map: Option<BTreeMap<String, Spanned<String>>>,
    min: Option<Spanned<Decimal>>,
    max: Option<Spanned<Decimal>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FlagDoc {
    capture: Spanned<String>,
    name: Spanned<String>,
}

// ---------------------------------------------------------------------------------------------
// The validated, compiled form.

#[derive(Debug)]
struct Compiled {
    id: String,
    description: String,
    cadence: Cadence,
    /// `[device.serial]` as written, if the file has one.
    serial: Option<PortSettings>,
    max_line_bytes: usize,
    ignore: Vec<Regex>,
    rules: Vec<Rule>,
}

#[derive(Debug)]
struct Rule {
    name: String,
    regex: Regex,
    missing: Vec<String>,
    status: Option<StatusGate>,
    checksum: Option<ChecksumRule>,
    readings: Vec<ReadingRule>,
    flags: Vec<(String, Status)>,
}

#[derive(Debug)]
struct StatusGate {
    capture: String,
    accept: Vec<String>,
    flags: BTreeMap<String, Status>,
}

#[derive(Debug)]
struct ChecksumRule {
    algorithm: ChecksumAlgorithm,
    capture: String,
    exclude_suffix: Vec<u8>,
}

#[derive(Debug)]
enum UnitSource {
    Fixed(String),
    Capture {
        capture: String,
        map: BTreeMap<String, String>,
    },
}

#[derive(Debug)]
struct ReadingRule {
    capture: String,
    kind: ReadingType,
    parse: ParseKind,
    scale: Decimal,
    offset: Decimal,
    unit: UnitSource,
    min: Option<Decimal>,
    max: Option<Decimal>,
}

/// A validated device file, ready to create decoders (cheap to clone: shared).
#[derive(Clone, Debug)]
pub struct DeviceConfig {
    inner: Arc<Compiled>,
}

impl DeviceConfig {
    /// Parses and validates a device file. `path` is used in error messages only.
    ///
    /// # Errors
    /// A [`DeviceConfigError`] naming the line and column of the first problem: TOML syntax,
    /// unknown key, wrong type, missing key, bad regex, capture not in the regex, unknown
    /// reading type or unit, `min > max`, `max_line_bytes` outside 1..=65536, no rule.
    pub fn from_toml_str(text: &str, path: &Path) -> Result<Self, DeviceConfigError> {
        let doc: FileDoc = toml::from_str(text).map_err(|e| {
            DeviceConfigError::at(path, text, e.span(), e.message().trim().to_string())
        })?;
        let compiled = compile(doc.device)
            .map_err(|(span, msg)| DeviceConfigError::at(path, text, span, msg))?;
        Ok(Self {
            inner: Arc::new(compiled),
        })
    }

    /// Reads and validates a device file.
    ///
    /// # Errors
    /// As [`DeviceConfig::from_toml_str`], or the file cannot be read.
    pub fn from_file(path: &Path) -> Result<Self, DeviceConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| DeviceConfigError {
            path: path.to_path_buf(),
            line: 0,
            column: 0,
            message: format!("cannot read the device file: {e}"),
        })?;
        Self::from_toml_str(&text, path)
    }

    /// A fresh decoder for one port.
    pub fn decoder(&self) -> Box<dyn Decoder> {
        Box::new(GenericDecoder::new(self.clone()))
    }

    /// The port settings of `[device.serial]`, or [`DEFAULT_PORT_SETTINGS`] when the file has
    /// none (the section is optional: decoding a capture needs no port settings).
    pub fn serial(&self) -> PortSettings {
        self.inner.serial.unwrap_or(DEFAULT_PORT_SETTINGS)
    }

    /// `[device.serial]` exactly as the file gives it (`None`: the file has no such section).
    pub fn declared_serial(&self) -> Option<PortSettings> {
        self.inner.serial
    }

    /// `device.cadence` (default `per-measurement`).
    pub fn cadence(&self) -> Cadence {
        self.inner.cadence
    }

    /// Every reading type a rule of the file can produce, in file order, without repeats.
    pub fn reading_types(&self) -> Vec<ReadingType> {
        let mut out = Vec::new();
        for t in self
            .inner
            .rules
            .iter()
            .flat_map(|r| r.readings.iter().map(|x| x.kind))
        {
            if !out.contains(&t) {
                out.push(t);
            }
        }
        out
    }

    /// `device.id`.
    pub fn id(&self) -> &str {
        &self.inner.id
    }

    /// `device.description`.
    pub fn description(&self) -> &str {
        &self.inner.description
    }

    /// The line cap in force.
    pub fn max_line_bytes(&self) -> usize {
        self.inner.max_line_bytes
    }
}

type CompileError = (Option<Range<usize>>, String);

/// The port settings of a device file without `[device.serial]`: 9600 baud 8N1, no flow
/// control, the most common setting of the devices in docs/serial-devices.md.
pub const DEFAULT_PORT_SETTINGS: PortSettings = PortSettings::n81(9600);

fn compile_serial(s: &SerialDoc) -> Result<PortSettings, CompileError> {
    if *s.baud.get_ref() == 0 {
        return err(
            s.baud.span(),
            "`baud` must be a positive bit rate (e.g. 9600)",
        );
    }
    if !matches!(*s.data_bits.get_ref(), 7 | 8) {
        return err(s.data_bits.span(), "`data_bits`: expected 7 or 8");
    }
    if !matches!(*s.stop_bits.get_ref(), 1 | 2) {
        return err(s.stop_bits.span(), "`stop_bits`: expected 1 or 2");
    }
    Ok(PortSettings {
        baud: *s.baud.get_ref(),
        data_bits: *s.data_bits.get_ref(),
        parity: s.parity,
        stop_bits: *s.stop_bits.get_ref(),
        flow_control: s.flow_control,
    })
}

fn err<T>(span: Range<usize>, msg: impl Into<String>) -> Result<T, CompileError> {
    Err((Some(span), msg.into()))
}

fn build_regex(pattern: &str, whole_line: bool) -> Result<Regex, String> {
    let p = if whole_line {
        format!("^(?:{pattern})$")
    } else {
        pattern.to_string()
    };
    RegexBuilder::new(&p)
        .size_limit(REGEX_SIZE_LIMIT)
        .build()
        .map_err(|e| {
            // regex's syntax errors are multi-line (pattern, caret, reason): keep the reason.
            let text = e.to_string();
            let reason = text
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("")
                .trim()
                .trim_start_matches("error: ")
                .to_string();
            format!(
                "invalid regex: {reason} (Rust `regex` syntax, no look-around or back-references)"
            )
        })
}

fn check_capture(
    regex: &Regex,
    capture: &Spanned<String>,
    key: &str,
) -> Result<String, CompileError> {
    let name = capture.get_ref();
    if regex.capture_names().flatten().any(|n| n == name) {
        return Ok(name.clone());
    }
    let groups: Vec<&str> = regex.capture_names().flatten().collect();
    err(
        capture.span(),
        format!(
            "`{key}`: capture `{name}` is not a named group of the rule's regex (expected one of: {})",
            if groups.is_empty() {
                "none: add (?P<name>...) groups".to_string()
            } else {
                groups.join(", ")
            }
        ),
    )
}

fn check_unit(unit: &Spanned<String>, key: &str) -> Result<String, CompileError> {
    let u = unit.get_ref();
    if KNOWN_UNITS.contains(&u.as_str()) {
        return Ok(u.clone());
    }
    err(
        unit.span(),
        format!(
            "`{key}`: unknown UCUM unit `{u}` (expected one of: {})",
            KNOWN_UNITS.join(" ")
        ),
    )
}

/// A flag name must be a known [`Status`] (see `crate::status` for why there is no free-form
/// vendor flag): each status's clinical class is decided in code, not by the device file.
fn check_status(name: &Spanned<String>, key: &str) -> Result<Status, CompileError> {
    let n = name.get_ref();
    n.parse().or_else(|_| {
        let known: Vec<String> = Status::FIXED.iter().map(Status::to_string).collect();
        err(
            name.span(),
            format!(
                "`{key}`: unknown status `{n}`; a device file can only use statuses vitalgate \
                 knows, each with a decided clinical meaning (expected one of: {})",
                known.join(", ")
            ),
        )
    })
}

fn compile(d: DeviceDoc) -> Result<Compiled, CompileError> {
    if d.id.get_ref().trim().is_empty() {
        return err(d.id.span(), "`id` must not be empty");
    }
    let serial = match &d.serial {
        None => None,
        Some(s) => Some(compile_serial(s)?),
    };
    let max_line_bytes = match &d.framing.max_line_bytes {
        None => DEFAULT_MAX_LINE_BYTES,
        Some(m) => {
            let v = *m.get_ref();
            if !(1..=MAX_LINE_BYTES_LIMIT).contains(&v) {
                return err(
                    m.span(),
                    format!("`max_line_bytes`: expected 1..={MAX_LINE_BYTES_LIMIT}"),
                );
            }
            v
        }
    };
    let mut ignore = Vec::new();
    for pat in &d.framing.ignore {
        ignore.push(build_regex(pat.get_ref(), false).map_err(|m| (Some(pat.span()), m))?);
    }
    if d.rules.is_empty() {
        return err(
            d.id.span(),
            "the device has no rule: expected at least one [[device.rule]]",
        );
    }
    let mut rules = Vec::new();
    for r in d.rules {
        rules.push(compile_rule(r)?);
    }
    Ok(Compiled {
        id: d.id.into_inner(),
        description: d.description,
        cadence: d.cadence.unwrap_or(Cadence::PerMeasurement),
        serial,
        max_line_bytes,
        ignore,
        rules,
    })
}

fn compile_rule(r: RuleDoc) -> Result<Rule, CompileError> {
    let regex = build_regex(r.regex.get_ref(), true).map_err(|m| (Some(r.regex.span()), m))?;

    let status = match &r.status_capture {
        Some(cap) => {
            let capture = check_capture(&regex, cap, "status_capture")?;
            let accept = match &r.status_accept {
                Some(a) if !a.get_ref().is_empty() => a.get_ref().clone(),
                _ => {
                    return err(
                        cap.span(),
                        "`status_capture` needs a non-empty `status_accept` list",
                    )
                }
            };
            let mut flags = BTreeMap::new();
            for (value, name) in r.status_flags.iter().flat_map(|f| f.get_ref()) {
                flags.insert(value.clone(), check_status(name, "status_flags")?);
            }
            Some(StatusGate {
                capture,
                accept,
                flags,
            })
        }
        None => {
            if let Some(a) = &r.status_accept {
                return err(a.span(), "`status_accept` needs `status_capture`");
            }
            if let Some(f) = &r.status_flags {
                return err(f.span(), "`status_flags` needs `status_capture`");
            }
            None
        }
    };

    let checksum = match &r.checksum {
        Some(c) => Some(ChecksumRule {
            algorithm: c.algorithm,
            capture: check_capture(&regex, &c.capture, "checksum.capture")?,
            exclude_suffix: c.exclude_suffix.as_bytes().to_vec(),
        }),
        None => None,
    };

    let mut readings = Vec::new();
    for rd in &r.readings {
        let capture = check_capture(&regex, &rd.capture, "reading.capture")?;
        let kind = ReadingType::from_name(rd.kind.get_ref()).ok_or_else(|| {
            let names: Vec<&str> = ReadingType::ALL.iter().map(|t| t.as_str()).collect();
            (
                Some(rd.kind.span()),
                format!(
                    "`type`: unknown reading type `{}` (expected one of: {})",
                    rd.kind.get_ref(),
                    names.join(", ")
                ),
            )
        })?;
        let unit = match (&rd.unit, &rd.unit_capture) {
            (Some(u), None) => {
                if rd.unit_map.is_some() {
                    return err(u.span(), "`unit_map` is only used with `unit_capture`");
                }
                UnitSource::Fixed(check_unit(u, "unit")?)
            }
            (None, Some(c)) => {
                let capture = check_capture(&regex, c, "unit_capture")?;
                let Some(m) = &rd.unit_map else {
                    return err(c.span(), "`unit_capture` needs a `unit_map` table");
                };
                let mut map = BTreeMap::new();
                for (k, v) in m {
                    map.insert(k.clone(), check_unit(v, "unit_map")?);
                }
                UnitSource::Capture { capture, map }
            }
            (Some(u), Some(_)) => {
                return err(u.span(), "use either `unit` or `unit_capture`, not both")
            }
            (None, None) => {
                return err(
                    rd.capture.span(),
                    "the reading needs a `unit` (UCUM) or a `unit_capture` with a `unit_map`",
                )
            }
        };
        if let (Some(min), Some(max)) = (&rd.min, &rd.max) {
            if min.get_ref().cmp_value(*max.get_ref()).is_gt() {
                return err(
                    min.span(),
                    format!(
                        "`min` ({}) is greater than `max` ({})",
                        min.get_ref(),
                        max.get_ref()
                    ),
                );
            }
        }
        readings.push(ReadingRule {
            capture,
            kind,
            parse: rd.parse,
            scale: rd.scale.unwrap_or(Decimal::from_int(1)),
            offset: rd.offset.unwrap_or(Decimal::from_int(0)),
            unit,
            min: rd.min.as_ref().map(|m| *m.get_ref()),
            max: rd.max.as_ref().map(|m| *m.get_ref()),
        });
    }

    let mut flags = Vec::new();
    for f in &r.flags {
        let capture = check_capture(&regex, &f.capture, "flag.capture")?;
        flags.push((capture, check_status(&f.name, "flag.name")?));
    }

    Ok(Rule {
        name: r.name,
        regex,
        missing: r.missing,
        status,
        checksum,
        readings,
        flags,
    })
}

// ---------------------------------------------------------------------------------------------
// The decoder.

/// The decoder of a [`DeviceConfig`].
#[derive(Debug)]
pub struct GenericDecoder {
    config: DeviceConfig,
    lines: LineFramer,
    out: Out,
}

impl GenericDecoder {
    pub fn new(config: DeviceConfig) -> Self {
        let lines = LineFramer::new(config.inner.max_line_bytes);
        let out = Out::new(lines.cap());
        Self { config, lines, out }
    }
}

impl Decoder for GenericDecoder {
    fn feed(&mut self, bytes: &[u8]) -> Vec<Event> {
        self.out.stats.bytes_in += bytes.len() as u64;
        let cfg = &self.config.inner;
        self.lines.feed(bytes, &mut self.out, |line, out| {
            if cfg.ignore.iter().any(|re| re.is_match(line)) {
                return;
            }
            match decode_line(cfg, line) {
                Ok(r) => {
                    out.frame_ok();
                    out.record(r);
                }
                Err(kind) => out.error(kind, line.len()),
            }
        });
        self.out.take()
    }

    fn stats(&self) -> Stats {
        let mut s = self.out.stats.clone();
        s.buffered = self.lines.buffered();
        s
    }
}

fn decode_line(cfg: &Compiled, line: &[u8]) -> Result<Record, ErrorKind> {
    for rule in &cfg.rules {
        if let Some(caps) = rule.regex.captures(line) {
            return apply_rule(rule, line, &caps);
        }
    }
    Err(ErrorKind::NoRuleMatched)
}

fn text_of<'a>(
    caps: &regex::bytes::Captures<'a>,
    name: &str,
) -> Result<Option<&'a str>, ErrorKind> {
    match caps.name(name) {
        None => Ok(None),
        Some(m) => std::str::from_utf8(m.as_bytes())
            .map(|s| Some(s.trim()))
            .map_err(|_| ErrorKind::MalformedField),
    }
}

fn apply_rule(
    rule: &Rule,
    line: &[u8],
    caps: &regex::bytes::Captures<'_>,
) -> Result<Record, ErrorKind> {
    if let Some(cs) = &rule.checksum {
        let m = caps.name(&cs.capture).ok_or(ErrorKind::MissingChecksum)?;
        let text = std::str::from_utf8(m.as_bytes())
            .map_err(|_| ErrorKind::MalformedField)?
            .trim();
        if text.is_empty() || text.len() > 2 {
            return Err(ErrorKind::MalformedField);
        }
        let expected = u8::from_str_radix(text, 16).map_err(|_| ErrorKind::MalformedField)?;
        let before = line.get(..m.start()).unwrap_or(&[]);
        let covered = before
            .strip_suffix(cs.exclude_suffix.as_slice())
            .unwrap_or(before);
        let got = match cs.algorithm {
            ChecksumAlgorithm::Sum8 => covered.iter().fold(0u8, |a, &b| a.wrapping_add(b)),
            ChecksumAlgorithm::Xor8 => covered.iter().fold(0u8, |a, &b| a ^ b),
        };
        if got != expected {
            return Err(ErrorKind::ChecksumMismatch);
        }
    }

    let mut r = Record::default();
    r.fields.insert("rule".into(), rule.name.clone().into());

    if let Some(gate) = &rule.status {
        let status = text_of(caps, &gate.capture)?;
        let accepted = status.is_some_and(|s| gate.accept.iter().any(|a| a == s));
        if !accepted {
            if let Some(flag) = status.and_then(|s| gate.flags.get(s)) {
                r.add_flag(*flag);
            }
            return Ok(r);
        }
    }

    for rd in &rule.readings {
        let Some(text) = text_of(caps, &rd.capture)? else {
            continue; // optional field not present
        };
        if rule.missing.iter().any(|m| m == text) {
            if !r.missing.contains(&rd.kind) {
                r.missing.push(rd.kind);
            }
            continue;
        }
        let parsed = parse_value(text, rd.parse).ok_or(ErrorKind::MalformedField)?;
        let value = parsed
            .checked_mul(rd.scale)
            .and_then(|v| v.checked_add(rd.offset))
            .ok_or(ErrorKind::MalformedField)?;
        if rd.min.is_some_and(|m| value.cmp_value(m).is_lt())
            || rd.max.is_some_and(|m| value.cmp_value(m).is_gt())
        {
            return Err(ErrorKind::OutOfRange);
        }
        let unit = match &rd.unit {
            UnitSource::Fixed(u) => u.clone(),
            UnitSource::Capture { capture, map } => {
                let u = text_of(caps, capture)?.ok_or(ErrorKind::MalformedField)?;
                map.get(u).cloned().ok_or(ErrorKind::MalformedField)?
            }
        };
        r.readings.push(Reading::new(rd.kind, value, unit));
    }

    for (capture, flag) in &rule.flags {
        if caps.name(capture).is_some() {
            r.add_flag(*flag);
        }
    }
    Ok(r)
}

/// Parses a capture: spaces removed, leading `+` allowed.
fn parse_value(text: &str, parse: ParseKind) -> Option<Decimal> {
    let s: String = text.chars().filter(|c| *c != ' ').collect();
    if s.is_empty() || s.len() > 40 {
        return None;
    }
    match parse {
        ParseKind::Int => {
            let body = s.strip_prefix(['+', '-']).unwrap_or(&s);
            if body.is_empty() || !body.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            let v: i64 = s.strip_prefix('+').unwrap_or(&s).parse().ok()?;
            Some(Decimal::from_int(v))
        }
        ParseKind::Decimal => s.parse().ok(),
        ParseKind::Hex => {
            let body = s
                .strip_prefix("0x")
                .or_else(|| s.strip_prefix("0X"))
                .unwrap_or(&s);
            if body.is_empty() || body.len() > 15 || !body.bytes().all(|b| b.is_ascii_hexdigit()) {
                return None;
            }
            i64::from_str_radix(body, 16).ok().map(Decimal::from_int)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_col_counts_characters() {
        let t = "ab\ncdé\nfg";
        assert_eq!(line_col(t, 0), (1, 1));
        assert_eq!(line_col(t, 3), (2, 1));
        assert_eq!(line_col(t, 8), (3, 1));
        assert_eq!(line_col(t, 7), (2, 4));
    }

    #[test]
    fn values_parse_exactly() {
        assert_eq!(
            parse_value("+001234.5", ParseKind::Decimal),
            Some(Decimal::new(12345, -1))
        );
        assert_eq!(
            parse_value(" 0 72", ParseKind::Int),
            Some(Decimal::from_int(72))
        );
        assert_eq!(
            parse_value("+072", ParseKind::Int),
            Some(Decimal::from_int(72))
        );
        assert_eq!(
            parse_value("1F", ParseKind::Hex),
            Some(Decimal::from_int(31))
        );
        assert_eq!(parse_value("7.2", ParseKind::Int), None);
        assert_eq!(parse_value("---", ParseKind::Decimal), None);
    }
}
