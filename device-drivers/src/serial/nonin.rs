//! Nonin pulse oximeters: serial data formats 2, 7, 8 and 13 (serial-protocols.md §1).
//!
//! - [`PacketDecoder`] (`nonin-df2`, `nonin-df7`): 5-byte frames, 25 frames per packet, one
//!   record per complete packet. Stream algorithm of §1.2 (hunt for a valid SYNC frame, then
//!   validate every frame; `bad_sync` / `checksum_mismatch` drop the packet, discard one byte and
//!   hunt). Memory: a 5-byte window plus at most 25 frames of packet state.
//! - [`Df8Decoder`] (`nonin-df8`): 4-byte frames once per second, no checksum; framing is the bit-7
//!   pattern only, so values are range-checked. Memory: a 4-byte window.
//! - [`Df13Decoder`] (`nonin-df13`): SmartPoint spot-check packets with a length and a checksum.
//!   Memory: at most 6 + 256 + 2 bytes (a LEN above 256 is rejected as `bad_length`).
//!
//! Reading policy (the vectors'): `spo2` = SpO2-D, `pulse_rate` = HR-D; 127 / 511 are "missing".
//!
//! Flags (DF2/DF7): the union over the 25 status bytes of bit 6 `sensor_disconnect` (SNSD on the
//! OEM III / Xpod; reserved and always 0 on the 9560), bit 5 `artifact`, bit 4 `out_of_track`,
//! bit 3 `sensor_alarm`, plus STAT2 `smartpoint` / `low_battery`. Perfusion (bits 2/1) is not a
//! flag: the last indication of the packet goes to `fields.perfusion` (green/yellow/red/null).
//! DF8 byte-1 bit 6 (reserved on the 9560, "sensor disconnected" on other models) is ignored,
//! as §1.3 asks (only bits documented for the 9560 become flags).
//!
//! Known limitation of the normative DF2/DF7 algorithm (kept because the vectors' counters encode
//! it): when garbage (e.g. the port opened mid-stream) ends so that its last bytes plus the first
//! byte(s) of a real packet form a valid SYNC frame (bit 7 + checksum + SYNC, roughly 1 in 500
//! garbage→packet boundaries), the decoder locks on that false frame, consumes the real start
//! byte, fails on the next window and hunts on; that one packet (1/3 s of data) is lost and the
//! next one decodes. Re-scanning the bytes of a failed lock would avoid it but changes
//! `bytes_discarded`/`frames_ok` for the public vectors (`nonin-df2-pufferfish-checksum-error`).
//!
//! Departure from serial-protocols.md: §1.2 asks for a range check only for DF8 (no checksum).
//! Following §0 ("a value outside the device's range is rejected"), DF2/DF7/DF13 apply the same
//! check (SpO2 ≤ 100, HR ≤ 321 unless missing) and report the packet as `out_of_range`.
//! Choices where §1 is silent: a DF13 packet whose byte after CHK is not ETX `03` is
//! `length_mismatch` (LEN does not match where the packet ends); LEN < 14 or > 256 is
//! `bad_length`; after any DF13 error one byte is discarded and the hunt restarts inside the
//! rejected bytes (so a packet hidden behind a false header is still found). A DF2/DF7 frame that
//! fails the sync rule (`sync_missing`) is not counted in `frames_ok`.

use serde_json::{json, Map, Value};

use super::{Decoder, ErrorKind, Event, Out, Stats};
use crate::{Decimal, DeviceTime, Reading, ReadingType, Record, Status};

const HR_MISSING: u16 = 511;
const SPO2_MISSING: u8 = 127;
const HR_MAX: u16 = 321;
const SPO2_MAX: u8 = 100;

/// Frames per DF2/DF7 packet.
pub const FRAMES_PER_PACKET: usize = 25;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Format {
    Df2,
    Df7,
}

/// `nonin-df2` / `nonin-df7` decoder.
#[derive(Debug)]
pub struct PacketDecoder {
    format: Format,
    win: [u8; 5],
    win_len: usize,
    locked: bool,
    packet: Vec<[u8; 5]>,
    out: Out,
}

impl PacketDecoder {
    pub fn df2() -> Self {
        Self::new(Format::Df2)
    }

    pub fn df7() -> Self {
        Self::new(Format::Df7)
    }

    fn new(format: Format) -> Self {
        Self {
            format,
            win: [0; 5],
            win_len: 0,
            locked: false,
            packet: Vec::with_capacity(FRAMES_PER_PACKET),
            out: Out::new(5),
        }
    }

    fn shift_one(&mut self) {
        self.win.copy_within(1.., 0);
        self.win_len = self.win_len.saturating_sub(1);
        self.out.discard(1);
    }

    fn lose_lock(&mut self, kind: ErrorKind) {
        self.out.error(kind, 5);
        self.packet.clear();
        self.locked = false;
        self.shift_one();
    }

    fn step(&mut self) {
        let f = self.win;
        let (framing_ok, status) = match self.format {
            Format::Df2 => (f[0] == 0x01 && f[1] & 0x80 != 0, f[1]),
            Format::Df7 => (f[0] & 0x80 != 0, f[0]),
        };
        let sum = f[..4].iter().fold(0u8, |a, &b| a.wrapping_add(b));
        let checksum_ok = sum == f[4];
        let sync = status & 0x01 != 0;
        if !self.locked {
            if framing_ok && checksum_ok && sync {
                self.locked = true;
            } else {
                self.shift_one();
                return;
            }
        }
        if !framing_ok {
            return self.lose_lock(ErrorKind::BadSync);
        }
        if !checksum_ok {
            return self.lose_lock(ErrorKind::ChecksumMismatch);
        }
        if sync {
            if !self.packet.is_empty() {
                self.out
                    .error(ErrorKind::PacketIncomplete, self.packet.len() * 5);
                self.packet.clear();
            }
        } else if self.packet.is_empty() {
            return self.lose_lock(ErrorKind::SyncMissing);
        }
        self.out.frame_ok();
        self.packet.push(f);
        self.win_len = 0;
        if self.packet.len() == FRAMES_PER_PACKET {
            match packet_record(self.format, &self.packet) {
                Ok(r) => self.out.record(r),
                Err(kind) => self.out.error(kind, FRAMES_PER_PACKET * 5),
            }
            self.packet.clear();
        }
    }
}

impl Decoder for PacketDecoder {
    fn feed(&mut self, bytes: &[u8]) -> Vec<Event> {
        self.out.stats.bytes_in += bytes.len() as u64;
        for &b in bytes {
            if let Some(slot) = self.win.get_mut(self.win_len) {
                *slot = b;
                self.win_len += 1;
            }
            if self.win_len == 5 {
                self.step();
            }
        }
        self.out.take()
    }

    fn stats(&self) -> Stats {
        let mut s = self.out.stats.clone();
        s.buffered = self.win_len;
        s
    }
}

fn hr9(msb: u8, lsb: u8) -> u16 {
    (u16::from(msb & 0x03) << 7) | u16::from(lsb & 0x7F)
}

fn add_spo2_hr(r: &mut Record, spo2: u8, hr: u16) -> Result<(), ErrorKind> {
    if spo2 != SPO2_MISSING && spo2 > SPO2_MAX {
        return Err(ErrorKind::OutOfRange);
    }
    if hr != HR_MISSING && hr > HR_MAX {
        return Err(ErrorKind::OutOfRange);
    }
    if spo2 == SPO2_MISSING {
        r.missing.push(ReadingType::Spo2);
    } else {
        r.readings.push(Reading::new(
            ReadingType::Spo2,
            Decimal::from_int(i64::from(spo2)),
            "%",
        ));
    }
    if hr == HR_MISSING {
        r.missing.push(ReadingType::PulseRate);
    } else {
        r.readings.push(Reading::new(
            ReadingType::PulseRate,
            Decimal::from_int(i64::from(hr)),
            "/min",
        ));
    }
    Ok(())
}

fn packet_record(format: Format, packet: &[[u8; 5]]) -> Result<Record, ErrorKind> {
    let status = |f: &[u8; 5]| match format {
        Format::Df2 => f[1],
        Format::Df7 => f[0],
    };
    // FLOAT byte of frame n (1-based), 0 if absent (never: the packet has 25 frames).
    let fl = |n: usize| packet.get(n - 1).map(|f| f[3]).unwrap_or(0);
    let hr = hr9(fl(1), fl(2));
    let spo2 = fl(3) & 0x7F;
    let srev = fl(4);
    let tmr = (u16::from(fl(6) & 0x7F) << 7) | u16::from(fl(7) & 0x7F);
    let stat2 = fl(8) & 0x7F;
    let spo2_d = fl(9) & 0x7F;
    let spo2_fast = fl(10) & 0x7F;
    let spo2_bb = fl(11) & 0x7F;
    let e_hr = hr9(fl(14), fl(15));
    let e_spo2 = fl(16) & 0x7F;
    let e_spo2_d = fl(17) & 0x7F;
    let hr_d = hr9(fl(20), fl(21));
    let e_hr_d = hr9(fl(22), fl(23));

    let mut r = Record::default();
    add_spo2_hr(&mut r, spo2_d, hr_d)?;

    let mut perfusion = Value::Null;
    let mut pleth = Vec::with_capacity(FRAMES_PER_PACKET);
    for f in packet {
        let s = status(f);
        for (bit, flag) in [
            (0x40, Status::SensorDisconnect),
            (0x20, Status::Artifact),
            (0x10, Status::OutOfTrack),
            (0x08, Status::SensorAlarm),
        ] {
            if s & bit != 0 {
                r.add_flag(flag);
            }
        }
        match (s & 0x04 != 0, s & 0x02 != 0) {
            (false, true) => perfusion = json!("green"),
            (true, true) => perfusion = json!("yellow"),
            (true, false) => perfusion = json!("red"),
            (false, false) => {}
        }
        pleth.push(match format {
            Format::Df2 => u16::from(f[2]),
            Format::Df7 => u16::from_be_bytes([f[1], f[2]]),
        });
    }
    if stat2 & 0x20 != 0 {
        r.add_flag(Status::Smartpoint);
    }
    if stat2 & 0x01 != 0 {
        r.add_flag(Status::LowBattery);
    }
    let mut m = Map::new();
    m.insert("hr".into(), json!(hr));
    m.insert("spo2".into(), json!(spo2));
    m.insert("srev".into(), json!(srev));
    m.insert("tmr".into(), json!(tmr));
    m.insert("stat2".into(), json!(stat2));
    m.insert("spo2_d".into(), json!(spo2_d));
    m.insert("spo2_fast".into(), json!(spo2_fast));
    m.insert("spo2_bb".into(), json!(spo2_bb));
    m.insert("e_hr".into(), json!(e_hr));
    m.insert("e_spo2".into(), json!(e_spo2));
    m.insert("e_spo2_d".into(), json!(e_spo2_d));
    m.insert("hr_d".into(), json!(hr_d));
    m.insert("e_hr_d".into(), json!(e_hr_d));
    m.insert("pleth".into(), json!(pleth));
    m.insert("perfusion".into(), perfusion);
    r.fields = m;
    Ok(r)
}

/// `nonin-df8` decoder: `STATUS HR-D SPO2-D STAT2`, bit 7 set only in the first byte.
#[derive(Debug)]
pub struct Df8Decoder {
    win: [u8; 4],
    win_len: usize,
    locked: bool,
    out: Out,
}

impl Default for Df8Decoder {
    fn default() -> Self {
        Self::new()
    }
}

impl Df8Decoder {
    pub fn new() -> Self {
        Self {
            win: [0; 4],
            win_len: 0,
            locked: false,
            out: Out::new(4),
        }
    }

    fn step(&mut self) {
        let f = self.win;
        let framing_ok = f[0] & 0x80 != 0 && f[1..].iter().all(|b| b & 0x80 == 0);
        if !framing_ok {
            if self.locked {
                self.out.error(ErrorKind::BadSync, 4);
                self.locked = false;
            }
            self.win.copy_within(1.., 0);
            self.win_len = 3;
            self.out.discard(1);
            return;
        }
        self.locked = true;
        self.win_len = 0;
        match df8_record(f) {
            Ok(r) => {
                self.out.frame_ok();
                self.out.record(r);
            }
            Err(kind) => self.out.error(kind, 4),
        }
    }
}

fn df8_record(f: [u8; 4]) -> Result<Record, ErrorKind> {
    let [status, hr_lsb, spo2, status2] = f;
    let hr = hr9(status, hr_lsb);
    let spo2 = spo2 & 0x7F;
    let mut r = Record::default();
    add_spo2_hr(&mut r, spo2, hr)?;
    for (bit, flag) in [
        (0x20, Status::OutOfTrack),
        (0x10, Status::LowPerfusion),
        (0x08, Status::MarginalPerfusion),
        (0x04, Status::Artifact),
    ] {
        if status & bit != 0 {
            r.add_flag(flag);
        }
    }
    for (bit, flag) in [
        (0x20, Status::Smartpoint),
        (0x08, Status::SensorAlarm),
        (0x01, Status::LowBattery),
    ] {
        if status2 & bit != 0 {
            r.add_flag(flag);
        }
    }
    r.fields.insert("hr_d".into(), json!(hr));
    r.fields.insert("spo2_d".into(), json!(spo2));
    r.fields.insert("status".into(), json!(status));
    r.fields.insert("status2".into(), json!(status2));
    Ok(r)
}

impl Decoder for Df8Decoder {
    fn feed(&mut self, bytes: &[u8]) -> Vec<Event> {
        self.out.stats.bytes_in += bytes.len() as u64;
        for &b in bytes {
            if let Some(slot) = self.win.get_mut(self.win_len) {
                *slot = b;
                self.win_len += 1;
            }
            if self.win_len == 4 {
                self.step();
            }
        }
        self.out.take()
    }

    fn stats(&self) -> Stats {
        let mut s = self.out.stats.clone();
        s.buffered = self.win_len;
        s
    }
}

/// DF13 packet start: `00 02 00 0D`.
const DF13_MAGIC: [u8; 4] = [0x00, 0x02, 0x00, 0x0D];
/// Smallest DF13 data section.
const DF13_MIN_LEN: usize = 14;
/// Largest DF13 data section accepted ("expandable"; the 9560 sends 14).
pub const DF13_MAX_LEN: usize = 256;

/// `nonin-df13` decoder (SmartPoint spot checks, the 9560 default).
#[derive(Debug)]
pub struct Df13Decoder {
    buf: Vec<u8>,
    out: Out,
}

impl Default for Df13Decoder {
    fn default() -> Self {
        Self::new()
    }
}

impl Df13Decoder {
    pub fn new() -> Self {
        Self {
            buf: Vec::new(),
            out: Out::new(6 + DF13_MAX_LEN + 2),
        }
    }

    /// Consumes what it can from `buf`, leaving an incomplete packet (or magic prefix).
    fn drain(&mut self) {
        let mut pos = 0;
        loop {
            let rest = self.buf.get(pos..).unwrap_or(&[]);
            // Hunt: skip to the first position where the magic could start.
            let skip = match rest.iter().position(|&b| b == 0x00) {
                Some(i) => i,
                None => rest.len(),
            };
            if skip > 0 {
                self.out.discard(skip);
                pos += skip;
                continue;
            }
            let rest = self.buf.get(pos..).unwrap_or(&[]);
            if rest.is_empty() {
                break;
            }
            let n = rest.len().min(4);
            if rest.get(..n) != DF13_MAGIC.get(..n) {
                self.out.discard(1);
                pos += 1;
                continue;
            }
            if rest.len() < 6 {
                break;
            }
            let len = usize::from(u16::from_be_bytes([rest[4], rest[5]]));
            if !(DF13_MIN_LEN..=DF13_MAX_LEN).contains(&len) {
                self.out.error(ErrorKind::BadLength, 6);
                self.out.discard(1);
                pos += 1;
                continue;
            }
            let total = 6 + len + 2;
            let Some(frame) = rest.get(..total) else {
                break;
            };
            let data = frame.get(6..6 + len).unwrap_or(&[]);
            let chk = frame.get(6 + len).copied().unwrap_or(0);
            let etx = frame.get(7 + len).copied().unwrap_or(0);
            let sum = data.iter().fold(0u8, |a, &b| a.wrapping_add(b));
            let result = if etx != 0x03 {
                Err(ErrorKind::LengthMismatch)
            } else if sum != chk {
                Err(ErrorKind::ChecksumMismatch)
            } else {
                df13_record(data)
            };
            match result {
                Ok(r) => {
                    self.out.frame_ok();
                    self.out.record(r);
                    pos += total;
                }
                Err(kind) => {
                    self.out.error(kind, total);
                    // Resync inside the rejected packet: it may hide the next packet's start.
                    self.out.discard(1);
                    pos += 1;
                }
            }
        }
        self.buf.drain(..pos.min(self.buf.len()));
    }
}

fn bcd(b: u8) -> Option<u8> {
    let (hi, lo) = (b >> 4, b & 0x0F);
    (hi < 10 && lo < 10).then_some(hi * 10 + lo)
}

fn df13_record(data: &[u8]) -> Result<Record, ErrorKind> {
    let d = |i: usize| data.get(i).copied().ok_or(ErrorKind::BadLength);
    let bcd_at = |i: usize| d(i).and_then(|b| bcd(b).ok_or(ErrorKind::MalformedField));
    let year = u16::from(bcd_at(0)?) * 100 + u16::from(bcd_at(1)?);
    let time = DeviceTime::new(
        year,
        bcd_at(2)?,
        bcd_at(3)?,
        bcd_at(4)?,
        bcd_at(5)?,
        bcd_at(6)?,
    )
    .ok_or(ErrorKind::MalformedField)?;
    let (st_msb, st_lsb) = (d(8)?, d(9)?);
    let hr = (u16::from(d(10)? & 0x01) << 8) | u16::from(d(11)?);
    let spo2 = d(13)? & 0x7F;
    let mut r = Record::default();
    add_spo2_hr(&mut r, spo2, hr)?;
    for (byte, bit, flag) in [
        (st_msb, 0x02, Status::Smartpoint),
        (st_msb, 0x01, Status::NoMeasurement),
        (st_lsb, 0x10, Status::FromMemory),
        (st_lsb, 0x01, Status::LowBattery),
    ] {
        if byte & bit != 0 {
            r.add_flag(flag);
        }
    }
    r.device_time = Some(time);
    r.fields
        .insert("status".into(), json!(u16::from_be_bytes([st_msb, st_lsb])));
    r.fields.insert("hr".into(), json!(hr));
    r.fields.insert("spo2".into(), json!(spo2));
    r.fields.insert("data_length".into(), json!(data.len()));
    Ok(r)
}

impl Decoder for Df13Decoder {
    fn feed(&mut self, bytes: &[u8]) -> Vec<Event> {
        self.out.stats.bytes_in += bytes.len() as u64;
        // Append in pieces no larger than one packet so the buffer stays bounded.
        for piece in bytes.chunks(6 + DF13_MAX_LEN + 2) {
            self.buf.extend_from_slice(piece);
            self.drain();
        }
        self.out.take()
    }

    fn stats(&self) -> Stats {
        let mut s = self.out.stats.clone();
        s.buffered = self.buf.len();
        s
    }
}
