//! `vitalgate-devkit bench-serial`: what reading serial devices costs the agent, and how many
//! Observations a day each reduction mode makes.
//!
//! 1. **CPU and RSS.** The real `vitalgate run` binary is started three times against the
//!    loopback mTLS FHIR server, one after the other, in the same run: idle (no device), reading
//!    two PTY streams at the devices' own rates (a Nonin DF7 at 3 packets = 375 bytes a second, a
//!    Masimo ASCII 1 line a second), and reading two streams at the full rate of a 9,600-baud
//!    line (960 bytes a second each). CPU time (user + system, from `/proc/PID/stat`) is taken
//!    over the measured period after a warm-up; RSS is `VmRSS` at the end and `VmHWM` (peak).
//! 2. **Observations per day** under each reduction mode: a simulated day of each device
//!    (continuous wear, a random walk of SpO2 and pulse) through the agent's own
//!    [`vitalgate::pipeline::reduce::Reducer`]; every reduced record becomes two Observations
//!    (SpO2 and pulse rate; perfusion index and the other Masimo values are not mapped to FHIR
//!    yet).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::{TimeZone, Utc};
use device_drivers::serial::Event;
use vitalgate::pipeline::reduce::{Mode, Reducer};

use crate::fhir_server::{FhirTestServer, ServerConfig};
use crate::pki::TestPki;
use crate::serial_sim::{masimo_line, nonin_df7_packet, MasimoSample, NoninSample, SimLink};

/// Options of one bench run.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// The `vitalgate` binary to measure (a release build).
    pub agent: PathBuf,
    /// Measured seconds per scenario (after a 3 s warm-up).
    pub seconds: u64,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Load {
    Idle,
    DeviceRate,
    LineRate,
}

struct Row {
    name: &'static str,
    cpu_s: f64,
    seconds: f64,
    rss_kib: u64,
    hwm_kib: u64,
    bytes_in: u64,
}

/// Runs the bench and returns the two tables (Markdown).
///
/// # Errors
///
/// The agent could not be started or measured, or the PKI / FHIR server failed.
pub async fn run(opts: BenchOptions) -> anyhow::Result<String> {
    anyhow::ensure!(
        opts.agent.is_file(),
        "--agent {}: not a file (build it: cargo build --release -p vitalgate)",
        opts.agent.display()
    );
    let dir = tempfile::tempdir()?;
    let pki = TestPki::generate(&dir.path().join("pki"))?;
    let fhir = FhirTestServer::start(ServerConfig::for_pki(&pki)).await?;
    let mut rows = Vec::new();
    for (load, name) in [
        (Load::Idle, "idle agent (no device)"),
        (
            Load::DeviceRate,
            "2 streams at device rate (Nonin DF7 375 B/s + Masimo 1 line/s)",
        ),
        (
            Load::LineRate,
            "2 streams at full 9,600-baud line rate (2 x 960 B/s)",
        ),
    ] {
        let d = dir.path().join(format!("run-{}", rows.len()));
        std::fs::create_dir_all(&d)?;
        let row = tokio::task::block_in_place(|| measure(&opts, &pki, &fhir, &d, load, name))?;
        rows.push(row);
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| scenario | measured s | CPU s (user+sys) | CPU % of one core | bytes written to the PTYs | RSS MiB (end) | peak RSS MiB |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|");
    for r in &rows {
        let _ = writeln!(
            out,
            "| {} | {:.0} | {:.2} | {:.2} | {} | {:.1} | {:.1} |",
            r.name,
            r.seconds,
            r.cpu_s,
            100.0 * r.cpu_s / r.seconds,
            r.bytes_in,
            r.rss_kib as f64 / 1024.0,
            r.hwm_kib as f64 / 1024.0
        );
    }
    out.push('\n');
    out.push_str(&observations_per_day());
    Ok(out)
}

fn measure(
    opts: &BenchOptions,
    pki: &TestPki,
    fhir: &FhirTestServer,
    dir: &Path,
    load: Load,
    name: &'static str,
) -> anyhow::Result<Row> {
    let nonin_link = dir.join("usb-Nonin-if00");
    let masimo_link = dir.join("usb-Masimo-if00");
    let mut devices = String::new();
    let mut sims = Vec::new();
    let stop = Arc::new(AtomicBool::new(false));
    let bytes = Arc::new(std::sync::atomic::AtomicU64::new(0));
    if load != Load::Idle {
        for (link, protocol, patient) in [
            (&nonin_link, "nonin-df7", "Patient/bench-1"),
            (&masimo_link, "masimo-ascii1", "Patient/bench-2"),
        ] {
            let _ = write!(
                devices,
                "\n[[devices]]\nname = \"{protocol}\"\nkind = \"serial\"\nport = \"{}\"\nprotocol = \"{protocol}\"\npatient = \"{patient}\"\n",
                link.display()
            );
            let sim = SimLink::plug(link.as_path())?;
            let (stop, bytes) = (Arc::clone(&stop), Arc::clone(&bytes));
            let nonin = protocol == "nonin-df7";
            sims.push(std::thread::spawn(move || {
                stream(sim, nonin, load, &stop, &bytes)
            }));
        }
    }
    let config = dir.join("vitalgate.toml");
    std::fs::write(
        &config,
        format!(
            "[gateway]\nid = \"bench-gw\"\ndata_dir = \"data\"\n\n[store]\nkey_file = \"store.key\"\n\n[uplink]\nfhir_base = \"{}\"\nca_file = \"{}\"\nclient_cert = \"{}\"\nclient_key = \"{}\"\n{devices}",
            fhir.base_url(),
            pki.ca_cert.display(),
            pki.client_cert.display(),
            pki.client_key.display()
        ),
    )?;
    let status = Command::new(&opts.agent)
        .args(["keys", "init", "--config"])
        .arg(&config)
        .stdout(Stdio::null())
        .status()?;
    anyhow::ensure!(status.success(), "keys init failed");
    let mut child = Command::new(&opts.agent)
        .arg("run")
        .arg("--config")
        .arg(&config)
        .env("VITALGATE_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting the agent")?;
    let result = (|| {
        std::thread::sleep(Duration::from_secs(3));
        let pid = child.id();
        let (cpu0, t0, b0) = (
            cpu_seconds(pid)?,
            Instant::now(),
            bytes.load(Ordering::Relaxed),
        );
        std::thread::sleep(Duration::from_secs(opts.seconds));
        let (cpu1, t1, b1) = (
            cpu_seconds(pid)?,
            Instant::now(),
            bytes.load(Ordering::Relaxed),
        );
        let (rss, hwm) = memory_kib(pid)?;
        Ok(Row {
            name,
            cpu_s: cpu1 - cpu0,
            seconds: (t1 - t0).as_secs_f64(),
            rss_kib: rss,
            hwm_kib: hwm,
            bytes_in: b1 - b0,
        })
    })();
    stop.store(true, Ordering::SeqCst);
    for s in sims {
        let _ = s.join();
    }
    terminate(&mut child);
    result
}

/// Writes a device's stream until `stop`.
fn stream(
    mut sim: SimLink,
    nonin: bool,
    load: Load,
    stop: &AtomicBool,
    bytes: &std::sync::atomic::AtomicU64,
) {
    let start = Instant::now();
    let mut sent: u64 = 0;
    let mut n: u64 = 0;
    // Bytes a second: the device's own rate, or the 9,600-baud line's (8N1: 960 B/s).
    let (rate, period) = match (load, nonin) {
        (Load::LineRate, _) => (960.0, Duration::from_millis(50)),
        (_, true) => (375.0, Duration::from_millis(333)),
        (_, false) => (0.0, Duration::from_secs(1)),
    };
    let mut pending: Vec<u8> = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let spo2 = 94 + (n / 40 % 5) as u8;
        let msg = if nonin {
            nonin_df7_packet(
                NoninSample {
                    spo2,
                    hr: 70 + (n % 9) as u16,
                    status: 0,
                },
                (n & 0x3FFF) as u16,
            )
        } else {
            masimo_line(
                MasimoSample {
                    spo2: Some(spo2),
                    bpm: Some(70 + (n % 9) as u16),
                    pi_centi: Some(240 + (n % 30) as u16),
                    exc: 0x800,
                },
                n,
            )
            .into_bytes()
        };
        if rate == 0.0 {
            // One Masimo line a second.
            if let Ok(w) = sim.write_some(&msg) {
                bytes.fetch_add(w as u64, Ordering::Relaxed);
            }
            std::thread::sleep(period);
            continue;
        }
        pending.extend_from_slice(&msg);
        // Pace to `rate` bytes a second.
        loop {
            let due = (start.elapsed().as_secs_f64() * rate) as u64;
            if due > sent && !pending.is_empty() {
                let k = ((due - sent) as usize).min(pending.len());
                let w = sim.write_some(&pending[..k]).unwrap_or(0);
                pending.drain(..w.max(k));
                sent += k as u64;
                bytes.fetch_add(w as u64, Ordering::Relaxed);
            }
            if pending.is_empty() || stop.load(Ordering::Relaxed) {
                break;
            }
            std::thread::sleep(period);
        }
    }
}

fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("bad /proc/PID/stat")?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat(5); `rest` starts at field 3.
    let ticks: u64 =
        f.get(11).context("utime")?.parse::<u64>()? + f.get(12).context("stime")?.parse::<u64>()?;
    Ok(ticks as f64 / rustix::param::clock_ticks_per_second() as f64)
}

fn memory_kib(pid: u32) -> anyhow::Result<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    Ok((field("VmRSS:"), field("VmHWM:")))
}

fn terminate(child: &mut Child) {
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// The second table: reduced records (and Observations) per simulated day and device.
fn observations_per_day() -> String {
    let modes: Vec<(&str, Mode)> = vec![
        (
            "spot-check (default: 30 s median, every 15 min while worn)",
            Mode::DEFAULT_STREAMING,
        ),
        (
            "spot-check, once per application (repeat_secs = 0)",
            Mode::SpotCheck {
                window: Duration::from_secs(30),
                repeat: None,
            },
        ),
        (
            "interval, 60 s",
            Mode::Interval {
                every: Duration::from_secs(60),
            },
        ),
        (
            "interval, 300 s",
            Mode::Interval {
                every: Duration::from_secs(300),
            },
        ),
        (
            "on-change (default thresholds: SpO2 2 %, pulse 5 /min)",
            Mode::OnChange {
                thresholds: Default::default(),
            },
        ),
        ("all (research)", Mode::All),
    ];
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| reduction mode | Nonin DF7 (3 records/s): records/day | Observations/day | Masimo ASCII 1 (1 line/s): records/day | Observations/day |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|");
    for (name, mode) in modes {
        let nonin = day_through(mode.clone(), true);
        let masimo = day_through(mode, false);
        let _ = writeln!(
            out,
            "| {name} | {} | {} | {} | {} |",
            nonin.0, nonin.1, masimo.0, masimo.1
        );
    }
    out
}

/// One simulated day of continuous wear through a reducer: (reduced records, Observations).
/// The signal: SpO2 and pulse random walks (seeded), one change step a second.
fn day_through(mode: Mode, nonin: bool) -> (u64, u64) {
    let t0 = Utc
        .with_ymd_and_hms(2026, 11, 23, 0, 0, 0)
        .single()
        .unwrap_or_default();
    let mut reducer = Reducer::new(mode, t0);
    let mut decoder =
        device_drivers::serial::builtin(if nonin { "nonin-df7" } else { "masimo-ascii1" });
    let per_second: u64 = if nonin { 3 } else { 1 };
    let (mut spo2, mut hr): (i32, i32) = (96, 72);
    let mut rng: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % 100
    };
    let (mut records, mut observations) = (0u64, 0u64);
    for s in 0..86_400u64 {
        match next() {
            0..=9 => spo2 = (spo2 - 1).max(92),
            10..=19 => spo2 = (spo2 + 1).min(99),
            _ => {}
        }
        match next() {
            0..=29 => hr = (hr - 1).max(55),
            30..=59 => hr = (hr + 1).min(100),
            _ => {}
        }
        for k in 0..per_second {
            let at =
                t0 + chrono::TimeDelta::milliseconds((s * 1000 + k * 1000 / per_second) as i64);
            let bytes = if nonin {
                nonin_df7_packet(
                    NoninSample {
                        spo2: spo2 as u8,
                        hr: hr as u16,
                        status: 0,
                    },
                    (s & 0x3FFF) as u16,
                )
            } else {
                masimo_line(
                    MasimoSample {
                        spo2: Some(spo2 as u8),
                        bpm: Some(hr as u16),
                        pi_centi: Some(250),
                        exc: 0x800,
                    },
                    s,
                )
                .into_bytes()
            };
            let Some(d) = decoder.as_mut() else {
                return (0, 0);
            };
            for ev in d.feed(&bytes) {
                if let Event::Record(r) = ev {
                    for red in reducer.push(r, at).out {
                        records += 1;
                        observations += red
                            .record
                            .readings
                            .iter()
                            .filter(|r| {
                                matches!(
                                    r.kind,
                                    device_drivers::ReadingType::Spo2
                                        | device_drivers::ReadingType::PulseRate
                                )
                            })
                            .count() as u64;
                    }
                }
            }
        }
    }
    (records, observations)
}
