//! Serial device simulators on real pseudo-terminals, for the serial tests and the bench.
//!
//! A [`PtyPort`] is a pseudo-terminal pair (`openpt`, `grantpt`, `unlockpt`): the simulator
//! writes a device's bytes into the master side, and the agent opens the slave side
//! (`/dev/pts/N`) with tokio-serial exactly as it opens a USB-serial adapter. The slave is put in
//! raw mode before anyone opens it, so bytes written before the agent configures the port are not
//! translated or echoed. A [`SimLink`] adds a stable symlink name in front of it, like
//! `/dev/serial/by-id/...`: unplugging closes the pseudo-terminal (the agent's reads fail) and
//! removes the link; replugging makes a new one under the same name.
//!
//! The byte generators ([`nonin_df7_packet`], [`masimo_line`]) follow serial-protocols.md §1.2
//! and §2.2 and are checked against the `device-drivers` decoders in the tests below.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rustix::pty::{grantpt, openpt, ptsname, unlockpt, OpenptFlags};
use rustix::termios::{tcgetattr, tcsetattr, OptionalActions};

/// One pseudo-terminal: the master (written by the simulator) and the slave's path.
pub struct PtyPort {
    master: File,
    slave: PathBuf,
}

impl PtyPort {
    /// A new pseudo-terminal whose slave is in raw mode, and whose master does not block: a
    /// device keeps transmitting whether or not anyone listens, so bytes that do not fit in
    /// the terminal's buffer (nobody reading) are dropped, as on a real line.
    ///
    /// # Errors
    ///
    /// The `openpt` / `grantpt` / `unlockpt` / `ptsname` / `tcsetattr` errors.
    pub fn open() -> io::Result<PtyPort> {
        let master: OwnedFd =
            openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC)?;
        grantpt(&master)?;
        unlockpt(&master)?;
        let name = ptsname(&master, Vec::new())?;
        let slave = PathBuf::from(name.to_string_lossy().into_owned());
        {
            let s = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(rustix::fs::OFlags::NOCTTY.bits() as i32)
                .open(&slave)?;
            let mut t = tcgetattr(&s)?;
            t.make_raw();
            tcsetattr(&s, OptionalActions::Now, &t)?;
        }
        rustix::fs::fcntl_setfl(&master, rustix::fs::OFlags::NONBLOCK)?;
        Ok(PtyPort {
            master: File::from(master),
            slave,
        })
    }

    /// The slave's path (`/dev/pts/N`): what the agent opens.
    pub fn slave_path(&self) -> &Path {
        &self.slave
    }

    /// Writes what the terminal takes; returns how many bytes it took (the rest is "lost on
    /// the line": nobody is reading and the buffer is full).
    ///
    /// # Errors
    ///
    /// I/O errors other than "would block".
    pub fn write_some(&mut self, mut bytes: &[u8]) -> io::Result<usize> {
        let mut written = 0;
        while !bytes.is_empty() {
            // A partial write is the point here (a non-blocking line that takes what fits);
            // the loop carries on with the rest.
            #[allow(clippy::disallowed_methods)]
            let r = self.master.write(bytes);
            match r {
                Ok(0) => break,
                Ok(n) => {
                    written += n;
                    bytes = bytes.get(n..).unwrap_or(&[]);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // EIO: no slave open at the moment (between an agent's runs). Dropped.
                Err(e) if e.raw_os_error() == Some(5) => break,
                Err(e) => return Err(e),
            }
        }
        Ok(written)
    }

    /// Writes all of `bytes`, waiting (up to `timeout`) while the terminal's buffer is full.
    ///
    /// # Errors
    ///
    /// I/O errors, or `TimedOut` if the reader did not take the bytes in time.
    pub fn write_all_within(
        &mut self,
        mut bytes: &[u8],
        timeout: std::time::Duration,
    ) -> io::Result<()> {
        let deadline = std::time::Instant::now() + timeout;
        while !bytes.is_empty() {
            let n = self.write_some(bytes)?;
            bytes = bytes.get(n..).unwrap_or(&[]);
            if !bytes.is_empty() {
                if std::time::Instant::now() > deadline {
                    return Err(io::Error::new(io::ErrorKind::TimedOut, "reader too slow"));
                }
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
        }
        Ok(())
    }
}

/// A simulated device behind a stable name (a symlink, like `/dev/serial/by-id/...`).
pub struct SimLink {
    link: PathBuf,
    port: Option<PtyPort>,
}

impl SimLink {
    /// Plugs a device in: a new pseudo-terminal, linked as `link`.
    ///
    /// # Errors
    ///
    /// From [`PtyPort::open`] or the symlink.
    pub fn plug(link: impl Into<PathBuf>) -> io::Result<SimLink> {
        let mut s = SimLink {
            link: link.into(),
            port: None,
        };
        s.replug()?;
        Ok(s)
    }

    /// The stable name the agent is configured with.
    pub fn link(&self) -> &Path {
        &self.link
    }

    /// The current pseudo-terminal, if plugged in.
    pub fn port(&mut self) -> Option<&mut PtyPort> {
        self.port.as_mut()
    }

    /// Unplugs: the pseudo-terminal closes (the agent's reads fail with EIO) and the name
    /// disappears.
    pub fn unplug(&mut self) {
        self.port = None;
        let _ = std::fs::remove_file(&self.link);
    }

    /// Plugs back in: a new pseudo-terminal under the same name.
    ///
    /// # Errors
    ///
    /// From [`PtyPort::open`] or the symlink.
    pub fn replug(&mut self) -> io::Result<()> {
        self.unplug();
        let port = PtyPort::open()?;
        std::os::unix::fs::symlink(port.slave_path(), &self.link)?;
        self.port = Some(port);
        Ok(())
    }

    /// Writes what the line takes (see [`PtyPort::write_some`]); 0 while unplugged.
    ///
    /// # Errors
    ///
    /// I/O errors other than a full buffer.
    pub fn write_some(&mut self, bytes: &[u8]) -> io::Result<usize> {
        match self.port.as_mut() {
            Some(p) => p.write_some(bytes),
            None => Ok(0),
        }
    }
}

impl Drop for SimLink {
    fn drop(&mut self) {
        self.unplug();
    }
}

/// What a simulated Nonin packet says.
#[derive(Debug, Clone, Copy)]
pub struct NoninSample {
    pub spo2: u8,
    pub hr: u16,
    /// Status bits OR-ed into every frame (bit 3 SNSA sensor alarm, bit 5 artifact, ...).
    pub status: u8,
}

/// One Nonin data format 7 packet (25 frames of 5 bytes, 1/3 s of data): status, 16-bit pleth,
/// the float byte of the frame's schedule slot, checksum. SpO2 and HR go to every slot the
/// decoder may read (recording, display, extended), missing values are 127 / 511.
pub fn nonin_df7_packet(s: NoninSample, timer: u16) -> Vec<u8> {
    let hr_msb = ((s.hr >> 7) & 0x03) as u8;
    let hr_lsb = (s.hr & 0x7F) as u8;
    let spo2 = s.spo2 & 0x7F;
    let mut out = Vec::with_capacity(125);
    for frame in 1..=25u16 {
        let float: u8 = match frame {
            1 | 14 | 20 | 22 => hr_msb,
            2 | 15 | 21 | 23 => hr_lsb,
            3 | 9 | 10 | 11 | 16 | 17 => spo2,
            4 => 0x30,
            6 => ((timer >> 7) & 0x7F) as u8,
            7 => (timer & 0x7F) as u8,
            _ => 0,
        };
        let mut status = 0x80 | (s.status & 0x7E);
        if frame == 1 {
            status |= 0x01;
        }
        // Green perfusion on the first frames of each pulse.
        if frame <= 12 {
            status |= 0x02;
        }
        let pleth: u16 = 20_000 + (frame * 1_500);
        let [pm, pl] = pleth.to_be_bytes();
        let chk = status.wrapping_add(pm).wrapping_add(pl).wrapping_add(float);
        out.extend_from_slice(&[status, pm, pl, float, chk]);
    }
    out
}

/// What a simulated Masimo ASCII 1 line says (`None`: the dashes of "no value").
#[derive(Debug, Clone, Copy)]
pub struct MasimoSample {
    pub spo2: Option<u8>,
    pub bpm: Option<u16>,
    /// Perfusion index in hundredths of a percent (360 = 3.60 %).
    pub pi_centi: Option<u16>,
    /// The EXC exception bits (0x800 = normal SET mode, 0x020 sensor off, 0x001 no sensor...).
    pub exc: u32,
}

/// One Masimo Rad-8 ASCII 1 line (serial-protocols.md §2.2), CR LF terminated. `secs` is the
/// device clock, seconds since 2026-01-01T00:00:00.
pub fn masimo_line(s: MasimoSample, secs: u64) -> String {
    let day = secs / 86_400;
    let (h, m, sec) = ((secs / 3600) % 24, (secs / 60) % 60, secs % 60);
    let spo2 = s.spo2.map_or("---".to_string(), |v| format!("{v:03}"));
    let bpm = s.bpm.map_or("---".to_string(), |v| format!("{v:03}"));
    let pi = s.pi_centi.map_or("--.--".to_string(), |v| {
        format!("{:02}.{:02}", v / 100, v % 100)
    });
    format!(
        "01/{:02}/26 {h:02}:{m:02}:{sec:02} SN=0000056661 SPO2={spo2}% BPM={bpm} PI={pi}% SPCO=--.-% SPMET=--.-% DESAT=-- PIDELTA=+-- ALARM=0000 EXC={:06X}\r\n",
        (day % 28) + 1,
        s.exc
    )
}

/// A reproducible pseudo-random byte stream (xorshift64*), for garbage injection.
pub fn garbage(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.max(1);
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        let v = x.wrapping_mul(0x2545_F491_4F6C_DD1D);
        for b in v.to_le_bytes() {
            if out.len() < len {
                out.push(b);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use device_drivers::serial::{self, Event};
    use device_drivers::{Decimal, ReadingType, Status};

    fn value(r: &device_drivers::Record, k: ReadingType) -> Option<Decimal> {
        r.readings.iter().find(|x| x.kind == k).map(|x| x.value)
    }

    #[test]
    fn the_nonin_generator_decodes_with_the_df7_decoder() {
        let mut d = serial::builtin("nonin-df7").unwrap();
        let mut bytes = vec![0x42, 0x17]; // mid-frame start
        bytes.extend(nonin_df7_packet(
            NoninSample {
                spo2: 97,
                hr: 141,
                status: 0,
            },
            1,
        ));
        bytes.extend(nonin_df7_packet(
            NoninSample {
                spo2: 95,
                hr: 62,
                status: 0x08,
            },
            2,
        ));
        let recs: Vec<_> = d
            .feed(&bytes)
            .into_iter()
            .filter_map(|e| match e {
                Event::Record(r) => Some(r),
                Event::Error(_) => None,
            })
            .collect();
        assert_eq!(recs.len(), 2);
        assert_eq!(
            value(&recs[0], ReadingType::Spo2),
            Some(Decimal::from_int(97))
        );
        assert_eq!(
            value(&recs[0], ReadingType::PulseRate),
            Some(Decimal::from_int(141))
        );
        assert!(recs[0].flags.is_empty(), "{:?}", recs[0].flags);
        assert!(recs[1].flags.contains(&Status::SensorAlarm));
    }

    #[test]
    fn the_masimo_generator_decodes_with_the_ascii1_decoder() {
        let mut d = serial::builtin("masimo-ascii1").unwrap();
        let line = masimo_line(
            MasimoSample {
                spo2: Some(98),
                bpm: Some(97),
                pi_centi: Some(360),
                exc: 0x800,
            },
            3_600 * 10 + 61,
        );
        let off = masimo_line(
            MasimoSample {
                spo2: None,
                bpm: None,
                pi_centi: None,
                exc: 0x821,
            },
            3_600 * 10 + 62,
        );
        let ev = d.feed(format!("{line}{off}").as_bytes());
        let recs: Vec<_> = ev
            .into_iter()
            .map(|e| match e {
                Event::Record(r) => r,
                Event::Error(e) => panic!("{e}"),
            })
            .collect();
        assert_eq!(
            value(&recs[0], ReadingType::Spo2),
            Some(Decimal::from_int(98))
        );
        assert_eq!(
            value(&recs[0], ReadingType::PerfusionIndex),
            Some(Decimal::new(360, -2))
        );
        assert_eq!(recs[0].flags, vec![Status::MasimoSet]);
        assert!(recs[1].readings.is_empty());
        assert!(recs[1].flags.contains(&Status::SensorOff));
    }

    /// Needs termios on a PTY: skipped under qemu-user (see tests/serial.rs, `on_pty`).
    mod on_pty {
        use super::*;

        #[test]
        fn a_pty_carries_bytes_to_its_slave_unchanged() {
            use std::io::Read;
            let mut p = PtyPort::open().unwrap();
            let mut slave = File::open(p.slave_path()).unwrap();
            let bytes: Vec<u8> = (0..=255u8).collect(); // CR, LF, XON, XOFF, ^C: all raw
            p.write_all_within(&bytes, std::time::Duration::from_secs(5))
                .unwrap();
            let mut got = vec![0u8; 256];
            slave.read_exact(&mut got).unwrap();
            assert_eq!(got, bytes);
        }
    }

    #[test]
    fn garbage_is_reproducible() {
        assert_eq!(garbage(100, 7), garbage(100, 7));
        assert_ne!(garbage(100, 7), garbage(100, 8));
        assert_eq!(garbage(1 << 20, 1).len(), 1 << 20);
    }
}
