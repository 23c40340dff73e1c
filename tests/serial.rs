//! Serial devices end to end, on real pseudo-terminals: the real `vitalgate` binary opens the
//! slave side of a PTY with tokio-serial, exactly as it opens a USB-serial adapter, while a
//! simulator (`vitalgate_devkit::serial_sim`) writes a device's bytes into the master side.
//! Readings go through the reduction, the encrypted store and the mTLS uplink to the devkit
//! FHIR server, which validates every Bundle against the R4 schema. No mock of tokio-serial.
//!
//! Time is compressed where the protocol allows it: Nonin packets come at their real rate (3 a
//! second); Masimo lines come 4 a second instead of 1 (the decoder does not care), and the
//! spot-check windows are 2 s instead of 30 s.

mod common;
mod harness;

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use harness::*;
use serde_json::Value;
use vitalgate_devkit::serial_sim::{
    garbage, masimo_line, nonin_df7_packet, MasimoSample, NoninSample, SimLink,
};

const SPO2: &str = "150456";
const PULSE: &str = "149530";

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Nonin,
    Masimo,
}

/// A simulated device writing into a PTY from its own thread, until stopped.
struct Sim {
    link: Arc<Mutex<SimLink>>,
    spo2: Arc<AtomicU8>,
    /// While set, the device sends nothing (silent, port still open).
    paused: Arc<AtomicBool>,
    /// While set, the device sends "sensor alarm" / "sensor off" records.
    sensor_off: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Sim {
    fn start(kind: Kind, link: &Path, spo2: u8) -> Sim {
        let link = Arc::new(Mutex::new(SimLink::plug(link).expect("pty")));
        let spo2 = Arc::new(AtomicU8::new(spo2));
        let paused = Arc::new(AtomicBool::new(false));
        let sensor_off = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (link, spo2, paused, sensor_off, stop) = (
                Arc::clone(&link),
                Arc::clone(&spo2),
                Arc::clone(&paused),
                Arc::clone(&sensor_off),
                Arc::clone(&stop),
            );
            std::thread::spawn(move || {
                let mut n: u64 = 0;
                // A stream that starts mid-frame / mid-line: the tail of a message first.
                let first = match kind {
                    Kind::Nonin => nonin_df7_packet(
                        NoninSample {
                            spo2: 99,
                            hr: 99,
                            status: 0,
                        },
                        0,
                    )[63..]
                        .to_vec(),
                    Kind::Masimo => b"=098% BPM=097 PI=03.60% EXC=000800\r\n".to_vec(),
                };
                let _ = link.lock().unwrap().write_some(&first);
                while !stop.load(Ordering::SeqCst) {
                    n += 1;
                    if !paused.load(Ordering::SeqCst) {
                        let s = spo2.load(Ordering::SeqCst);
                        let off = sensor_off.load(Ordering::SeqCst);
                        let bytes = match kind {
                            Kind::Nonin => nonin_df7_packet(
                                NoninSample {
                                    spo2: s,
                                    hr: 60 + u16::from(s % 7),
                                    status: if off { 0x08 } else { 0 },
                                },
                                (n & 0x3FFF) as u16,
                            ),
                            Kind::Masimo => masimo_line(
                                MasimoSample {
                                    spo2: (!off).then_some(s),
                                    bpm: (!off).then_some(70 + u16::from(s % 5)),
                                    pi_centi: (!off).then_some(250),
                                    exc: if off { 0x820 } else { 0x800 },
                                },
                                36_000 + n,
                            )
                            .into_bytes(),
                        };
                        let _ = link.lock().unwrap().write_some(&bytes);
                    }
                    std::thread::sleep(match kind {
                        Kind::Nonin => Duration::from_millis(333),
                        Kind::Masimo => Duration::from_millis(250),
                    });
                }
            })
        };
        Sim {
            link,
            spo2,
            paused,
            sensor_off,
            stop,
            thread: Some(thread),
        }
    }

    fn set_spo2(&self, v: u8) {
        self.spo2.store(v, Ordering::SeqCst);
    }

    fn slave_path(&self) -> PathBuf {
        let mut l = self.link.lock().unwrap();
        l.port().expect("plugged").slave_path().to_path_buf()
    }

    fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        self.stop();
    }
}

fn serial_device(name: &str, port: &Path, protocol: &str, patient: &str, extra: &str) -> String {
    format!(
        "\n[[devices]]\nname = \"{name}\"\nkind = \"serial\"\nport = \"{}\"\nprotocol = \"{protocol}\"\npatient = \"{patient}\"\n{extra}\n",
        port.display()
    )
}

/// Spot checks of 2 s, every 3 s while the signal stays valid.
const FAST_SPOT_CHECK: &str =
    "[devices.reduction]\nmode = \"spot-check\"\nwindow_secs = 2\nrepeat_secs = 3\n";

fn append_config(h: &Harness, text: &str) {
    let mut cfg = std::fs::read_to_string(&h.config).unwrap();
    cfg.push_str(text);
    std::fs::write(&h.config, cfg).unwrap();
}

fn scaled(secs: u64) -> Duration {
    Duration::from_secs(secs) * emulation_factor()
}

fn has_code(o: &Value, code: &str) -> bool {
    o["code"]["coding"]
        .as_array()
        .is_some_and(|c| c.iter().any(|x| x["code"] == code))
}

fn value(o: &Value) -> f64 {
    o["valueQuantity"]["value"].as_f64().unwrap_or(f64::NAN)
}

fn subject(o: &Value) -> String {
    o["subject"]["reference"].as_str().unwrap_or("").to_string()
}

/// Observations of `code` for `patient`, in creation order.
fn observations(h: &Harness, patient: &str, code: &str) -> Vec<Value> {
    h.fhir
        .stored_observations()
        .into_iter()
        .filter(|o| has_code(o, code) && subject(o) == patient)
        .collect()
}

/// Waits until an SpO2 Observation with `v` exists for `patient`.
fn wait_for_spo2(h: &Harness, agent: &Agent, patient: &str, v: f64, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        if observations(h, patient, SPO2).iter().any(|o| value(o) == v) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no SpO2 {v} for {patient}; have {:?}\n{}",
            observations(h, patient, SPO2)
                .iter()
                .map(value)
                .collect::<Vec<_>>(),
            agent.stderr()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The log without terminal colour codes.
fn plain(log: &str) -> String {
    let mut out = String::with_capacity(log.len());
    let mut chars = log.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The counters of the agent's "stopped" line.
fn counters(log: &str) -> BTreeMap<String, u64> {
    let log = plain(log);
    let line = log
        .lines()
        .rev()
        .find(|l| l.contains("stopped") && l.contains("counters="))
        .unwrap_or_else(|| panic!("no stopped line:\n{log}"));
    let tail = &line[line.find("counters=").unwrap() + "counters=".len()..];
    tail.trim_matches('"')
        .split_whitespace()
        .filter_map(|kv| {
            let (k, v) = kv.trim_matches('"').split_once('=')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

/// Waits until every reading this agent stored, and every one it found pending at start, was
/// accepted by the server, and nothing new was stored for 3 s.
fn wait_until_uploaded(agent: &Agent, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    let mut last_stored = usize::MAX;
    let mut quiet_since = Instant::now();
    loop {
        let log = plain(&agent.stderr());
        let pending_at_start: usize = log
            .lines()
            .find(|l| l.contains("vitalgate running"))
            .and_then(|l| l.split("pending=").nth(1))
            .and_then(|t| t.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        let stored = log.matches("reading stored").count();
        let accepted = log.matches("reading accepted by FHIR server").count();
        if stored != last_stored {
            last_stored = stored;
            quiet_since = Instant::now();
        }
        if accepted >= stored + pending_at_start && quiet_since.elapsed() > Duration::from_secs(3) {
            return;
        }
        assert!(Instant::now() < deadline, "uploads did not finish:\n{log}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn stop_agent(agent: &mut Agent) -> (String, BTreeMap<String, u64>) {
    let (_, status) = agent.terminate_timed();
    let log = agent.stderr();
    assert_eq!(status.code(), Some(0), "{log}");
    let c = counters(&log);
    (log, c)
}

fn assert_no_phi(log: &str, patients: &[&str]) {
    for p in patients {
        let id = p.trim_start_matches("Patient/");
        assert!(!log.contains(id), "patient identifier {id} in the log");
    }
}

/// `vitalgate check-config` accepts a `/dev/ttyUSB0`-style port but warns, naming the fix.
#[test]
fn check_config_warns_about_a_port_named_in_plug_in_order() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let h = rt.block_on(Harness::new(Broker::None));
    append_config(
        &h,
        &serial_device(
            "ox",
            Path::new("/dev/ttyUSB0"),
            "nonin-df7",
            "Patient/pt-0459",
            "",
        ),
    );
    let out = h.vitalgate_output(&["check-config"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("warning"), "{err}");
    assert!(err.contains("/dev/serial/by-id"), "{err}");
}

/// The tests that need pseudo-terminals with termios. `cross/test.sh` skips them (`--skip
/// on_pty`): qemu-user 7.2 does not implement the TCGETS2/TCSETS2 ioctls that serialport uses
/// to set the line (ENOSYS); they run natively in `.ci/run`.
mod on_pty {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_nonin_stream_that_starts_mid_frame_gives_one_spot_check_median() {
        let h = Harness::new(Broker::None).await;
        let link = h.dir.path().join("usb-Nonin_Xpod-if00");
        let mut sim = Sim::start(Kind::Nonin, &link, 96);
        append_config(
            &h,
            &serial_device(
                "xpod",
                &link,
                "nonin-df7",
                "Patient/pt-mid-0452",
                "[devices.reduction]\nmode = \"spot-check\"\nwindow_secs = 2\nrepeat_secs = 0\n",
            ),
        );
        let mut agent = h.spawn_agent();
        wait_for_spo2(&h, &agent, "Patient/pt-mid-0452", 96.0, scaled(30));
        // Once per application: no second spot check while the probe stays on.
        std::thread::sleep(Duration::from_secs(3));
        sim.stop();
        let (log, c) = stop_agent(&mut agent);
        let spo2 = observations(&h, "Patient/pt-mid-0452", SPO2);
        let pulse = observations(&h, "Patient/pt-mid-0452", PULSE);
        assert_eq!(spo2.len(), 1, "{spo2:#?}");
        assert_eq!(pulse.len(), 1, "{pulse:#?}");
        assert_eq!(value(&pulse[0]), 60.0 + f64::from(96 % 7));
        assert!(c["serial_records_decoded"] >= 6, "{c:?}");
        assert!(c["serial_records_reduced_away"] >= 6, "{c:?}");
        assert!(log.contains("serial port opened"), "{log}");
        h.assert_all_observations_valid();
        assert_eq!(h.fhir.schema_failures(), Vec::<String>::new());
        assert_no_phi(&log, &["Patient/pt-mid-0452"]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_mebibyte_of_garbage_in_the_middle_of_a_stream_is_discarded_and_the_stream_resumes() {
        let h = Harness::new(Broker::None).await;
        let link = h.dir.path().join("usb-Nonin_WristOx-if00");
        let mut sim = Sim::start(Kind::Nonin, &link, 97);
        append_config(
            &h,
            &serial_device(
                "wristox",
                &link,
                "nonin-df7",
                "Patient/pt-junk-0453",
                FAST_SPOT_CHECK,
            ),
        );
        let mut agent = h.spawn_agent();
        wait_for_spo2(&h, &agent, "Patient/pt-junk-0453", 97.0, scaled(30));

        // 1 MiB of random bytes in the middle of the stream (the simulator pauses meanwhile),
        // written as fast as the agent takes it.
        sim.paused.store(true, Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(400));
        let junk = garbage(1 << 20, 0x5eed);
        {
            let mut l = sim.link.lock().unwrap();
            l.port()
                .unwrap()
                .write_all_within(&junk, scaled(120))
                .expect("the agent reads the garbage");
        }
        sim.set_spo2(93);
        sim.paused.store(false, Ordering::SeqCst);
        wait_for_spo2(&h, &agent, "Patient/pt-junk-0453", 93.0, scaled(30));
        sim.stop();
        let (log, c) = stop_agent(&mut agent);

        let values: HashSet<u64> = observations(&h, "Patient/pt-junk-0453", SPO2)
            .iter()
            .map(|o| value(o) as u64)
            .collect();
        assert!(
            values.is_subset(&[97, 93].into_iter().collect()),
            "garbage must not become a reading: {values:?}"
        );
        assert!(c["serial_bytes_read"] > 1 << 20, "{c:?}");
        assert!(c["serial_bytes_discarded"] > 1_000_000, "{c:?}");
        assert!(c["serial_decode_errors"] > 0, "{c:?}");
        assert_eq!(
            c.get("serial_port_losses"),
            None,
            "garbage is not an unplug: {c:?}"
        );
        h.assert_all_observations_valid();
        assert_no_phi(&log, &["Patient/pt-junk-0453"]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn unplug_and_replug_under_the_same_name_is_logged_once_and_reading_resumes() {
        let h = Harness::new(Broker::None).await;
        let link = h.dir.path().join("usb-Masimo_Rad-8-if00-port0");
        let sim = Sim::start(Kind::Masimo, &link, 98);
        append_config(
            &h,
            &serial_device(
                "rad8",
                &link,
                "masimo-ascii1",
                "Patient/pt-plug-0454",
                FAST_SPOT_CHECK,
            ),
        );
        let mut agent = h.spawn_agent();
        wait_for_spo2(&h, &agent, "Patient/pt-plug-0454", 98.0, scaled(30));

        // Unplug: the PTY closes (reads fail) and the by-id name disappears for a few seconds,
        // long enough for several reopen attempts.
        sim.link.lock().unwrap().unplug();
        h.wait_for_log(&agent, "serial port lost", 1, scaled(10));
        std::thread::sleep(Duration::from_secs(4));
        assert!(!link.exists());
        sim.set_spo2(94);
        sim.link.lock().unwrap().replug().unwrap();
        h.wait_for_log(&agent, "serial port opened again", 1, scaled(15));
        wait_for_spo2(&h, &agent, "Patient/pt-plug-0454", 94.0, scaled(30));
        let (log, c) = stop_agent(&mut agent);
        drop(sim);

        // One episode: one line when lost, one when the first reopen failed, one when back.
        assert_eq!(log.matches("serial port lost").count(), 1, "{log}");
        assert_eq!(
            log.matches("serial port cannot be opened").count(),
            1,
            "not a line per retry:\n{log}"
        );
        assert_eq!(log.matches("serial port opened again").count(), 1, "{log}");
        assert_eq!(c["serial_port_losses"], 1, "{c:?}");
        assert!(
            c["serial_port_open_failures"] >= 2,
            "several retries: {c:?}"
        );
        assert_eq!(c["serial_port_opens"], 2, "{c:?}");
        h.assert_all_observations_valid();
        assert_no_phi(&log, &["Patient/pt-plug-0454"]);
    }

    /// Tests run as root here, and root opens any device node. So the agent runs as `nobody`
    /// (setpriv) and the PTY slave keeps its devpts mode (0620, group tty): the open fails with a
    /// real EACCES. Granting access (chown to that user) lets the running agent open it. Not root:
    /// the slave (ours) is chmod 000, then 600.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_port_without_permission_gets_one_message_naming_the_fix_and_opens_once_granted() {
        use std::os::unix::fs::PermissionsExt;
        let h = Harness::new(Broker::None).await;
        let link = h.dir.path().join("usb-Nonin_OEM_III-if00");
        let sim = Sim::start(Kind::Nonin, &link, 95);
        append_config(
            &h,
            &serial_device(
                "oem3",
                &link,
                "nonin-df7",
                "Patient/pt-perm-0451",
                FAST_SPOT_CHECK,
            ),
        );
        let slave = sim.slave_path();
        let root = rustix::process::geteuid().is_root();
        const NOBODY: u32 = 65_534;
        let cmd = if root {
            // Everything the agent reads or writes belongs to `nobody`; the port does not.
            chown_tree(h.dir.path(), NOBODY);
            common::command_after(
                &[
                    "setpriv",
                    "--reuid=65534",
                    "--regid=65534",
                    "--clear-groups",
                    "--",
                ],
                env!("CARGO_BIN_EXE_vitalgate"),
            )
        } else {
            std::fs::set_permissions(&slave, std::fs::Permissions::from_mode(0o000)).unwrap();
            common::vitalgate()
        };
        let mut agent = h.spawn_agent_from(cmd, true);
        h.wait_for_log(&agent, "permission denied", 1, scaled(15));
        // Retries continue quietly: still one message after several attempts.
        std::thread::sleep(Duration::from_secs(3));
        let log = agent.stderr();
        assert_eq!(log.matches("permission denied").count(), 1, "{log}");
        assert!(log.contains("dialout"), "{log}");
        // The fix depends on who owns the node: a group with access to join, or (devpts owned by
        // root, as in some containers) a udev rule.
        let gid = std::os::unix::fs::MetadataExt::gid(&std::fs::metadata(&slave).unwrap());
        let mode = std::os::unix::fs::MetadataExt::mode(&std::fs::metadata(&slave).unwrap());
        if root && gid != 0 && mode & 0o060 == 0o060 {
            assert!(log.contains("usermod -aG"), "{log}");
        } else if root {
            assert!(log.contains("udev rule"), "{log}");
        }
        assert!(observations(&h, "Patient/pt-perm-0451", SPO2).is_empty());

        // The technician fixes it; the agent, still running, opens the port.
        if root {
            std::os::unix::fs::chown(&slave, Some(NOBODY), None).unwrap();
        } else {
            std::fs::set_permissions(&slave, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        h.wait_for_log(&agent, "serial port opened again", 1, scaled(15));
        wait_for_spo2(&h, &agent, "Patient/pt-perm-0451", 95.0, scaled(30));
        let (log, _) = stop_agent(&mut agent);
        drop(sim);
        assert_no_phi(&log, &["Patient/pt-perm-0451"]);
    }

    fn chown_tree(dir: &Path, uid: u32) {
        std::os::unix::fs::chown(dir, Some(uid), Some(uid)).unwrap();
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() && !p.is_symlink() {
                chown_tree(&p, uid);
            } else if !p.is_symlink() {
                std::os::unix::fs::chown(&p, Some(uid), Some(uid)).unwrap();
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_device_that_goes_silent_raises_one_alarm_and_resuming_clears_it() {
        let h = Harness::new(Broker::None).await;
        let link = h.dir.path().join("usb-Masimo_Radical-7-if00");
        let sim = Sim::start(Kind::Masimo, &link, 97);
        append_config(
            &h,
            &serial_device(
                "radical7",
                &link,
                "masimo-ascii1",
                "Patient/pt-quiet-0455",
                &format!("silence_alarm_secs = 2\n{FAST_SPOT_CHECK}"),
            ),
        );
        let mut agent = h.spawn_agent();
        wait_for_spo2(&h, &agent, "Patient/pt-quiet-0455", 97.0, scaled(30));
        sim.paused.store(true, Ordering::SeqCst);
        h.wait_for_log(&agent, "ALARM: no data from serial device", 1, scaled(15));
        std::thread::sleep(Duration::from_secs(3));
        sim.paused.store(false, Ordering::SeqCst);
        h.wait_for_log(&agent, "serial device sends data again", 1, scaled(15));
        let (log, c) = stop_agent(&mut agent);
        drop(sim);
        assert_eq!(
            log.matches("ALARM: no data from serial device").count(),
            1,
            "once per silence:\n{log}"
        );
        assert!(
            log.contains("no bytes at all"),
            "the hint says what to check: {log}"
        );
        assert_eq!(c["serial_silence_alarms"], 1, "{c:?}");
        assert_eq!(
            c.get("serial_port_losses"),
            None,
            "silent is not unplugged: {c:?}"
        );
    }

    /// Sensor-off, artifact and similar statuses are never uploaded, through `Status::class()`.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn records_with_a_sensor_problem_are_never_uploaded() {
        let h = Harness::new(Broker::None).await;
        let link = h.dir.path().join("usb-Masimo_Rad-8-sensor-off");
        let sim = Sim::start(Kind::Masimo, &link, 91);
        sim.sensor_off.store(true, Ordering::SeqCst);
        append_config(
            &h,
            &serial_device(
                "rad8-off",
                &link,
                "masimo-ascii1",
                "Patient/pt-off-0456",
                "[devices.reduction]\nmode = \"all\"\n",
            ),
        );
        let mut agent = h.spawn_agent();
        h.wait_for_log(&agent, "serial port opened", 1, scaled(15));
        std::thread::sleep(Duration::from_secs(3));
        sim.sensor_off.store(false, Ordering::SeqCst);
        wait_for_spo2(&h, &agent, "Patient/pt-off-0456", 91.0, scaled(30));
        drop(sim);
        let (_, c) = stop_agent(&mut agent);
        let n = |k: &str| c.get(k).copied().unwrap_or(0);
        // EXC "sensor off" lines carry no values and the sensor_off status: gated by status.
        assert!(n("serial_records_invalid_status") >= 8, "{c:?}");
        for o in h.fhir.stored_observations() {
            assert_eq!(o["status"], "final");
        }
    }

    /// The end-to-end scenario: a Nonin (DF7) and a Masimo, each on its own PTY and bound
    /// to its own patient, give reduced Observations that are schema-valid, attributed right and
    /// never duplicated, including across a `kill -9` of the agent in the middle of a window.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_oximeters_give_reduced_valid_observations_without_duplicates_across_kill_9() {
        let h = Harness::new(Broker::None).await;
        let nonin_link = h.dir.path().join("usb-Nonin_9560-if00");
        let masimo_link = h.dir.path().join("usb-Masimo_Rad-8-if00");
        let nonin = Sim::start(Kind::Nonin, &nonin_link, 97);
        let masimo = Sim::start(Kind::Masimo, &masimo_link, 95);
        let (pa, pb) = ("Patient/pt-nonin-0457", "Patient/pt-masimo-0458");
        append_config(
            &h,
            &(serial_device("nonin-9560", &nonin_link, "nonin-df7", pa, FAST_SPOT_CHECK)
                + &serial_device(
                    "masimo-rad8",
                    &masimo_link,
                    "masimo-ascii1",
                    pb,
                    FAST_SPOT_CHECK,
                )),
        );

        // Phase 1.
        let mut agent = h.spawn_agent();
        for (p, v) in [(pa, 97.0), (pb, 95.0)] {
            wait_for_spo2(&h, &agent, p, v, scaled(30));
        }
        // kill -9 in the middle of a Nonin window: windows open every 3 s and last 2 s, so 2 s
        // after a window was stored the next one is half full.
        let nonin_stored = |a: &Agent| {
            plain(&a.stderr())
                .lines()
                .filter(|l| l.contains("reading stored") && l.contains("device=nonin-9560"))
                .count()
        };
        let n = nonin_stored(&agent);
        let deadline = Instant::now() + scaled(20);
        while nonin_stored(&agent) == n {
            assert!(Instant::now() < deadline, "{}", agent.stderr());
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_secs(2));
        agent.kill9();
        let before: HashSet<String> = h.fhir.observation_identifiers().into_iter().collect();

        // Phase 2: new values, so each phase's windows are recognisable.
        nonin.set_spo2(92);
        masimo.set_spo2(99);
        let mut agent = h.spawn_agent();
        for (p, v) in [(pa, 92.0), (pb, 99.0)] {
            wait_for_spo2(&h, &agent, p, v, scaled(30));
        }
        std::thread::sleep(Duration::from_secs(4));
        // Stop the devices without unplugging them, let the last windows close and upload.
        let (mut nonin, mut masimo) = (nonin, masimo);
        nonin.stop();
        masimo.stop();
        wait_until_uploaded(&agent, scaled(30));
        let (log, c) = stop_agent(&mut agent);
        drop((nonin, masimo));

        let obs = h.fhir.stored_observations();
        let ids = h.fhir.observation_identifiers();
        let unique: HashSet<&String> = ids.iter().collect();
        assert_eq!(
            unique.len(),
            ids.len(),
            "an identifier stored twice: {ids:#?}"
        );
        assert_eq!(h.fhir.duplicate_creates(), 0);
        assert!(before.len() >= 4, "phase 1 uploaded: {before:?}");
        assert_eq!(h.fhir.schema_failures(), Vec::<String>::new());
        h.assert_all_observations_valid();

        for (p, phase1, phase2) in [(pa, 97.0, 92.0), (pb, 95.0, 99.0)] {
            for code in [SPO2, PULSE] {
                let mine = observations(&h, p, code);
                assert!(mine.len() >= 4, "{p} {code}: {}", mine.len());
                // A window's median is a statistic over its window, never a spot reading
                // (issue #8): effectivePeriod of the window (2 s) and the statistic in method.
                // Windows never overlap, also across the kill (the window in progress then is
                // lost, never sent twice).
                let at = |o: &Value, k: &str| {
                    chrono::DateTime::parse_from_rfc3339(
                        o["effectivePeriod"][k]
                            .as_str()
                            .unwrap_or_else(|| panic!("{o:#}")),
                    )
                    .unwrap()
                };
                let mut t: Vec<_> = mine
                    .iter()
                    .map(|o| {
                        assert!(o.get("effectiveDateTime").is_none(), "{o:#}");
                        assert!(
                            o["method"]["text"]
                                .as_str()
                                .is_some_and(|m| m.starts_with("median of")),
                            "{o:#}"
                        );
                        (at(o, "start"), at(o, "end"))
                    })
                    .collect();
                t.sort();
                for (start, end) in &t {
                    assert_eq!(*end - *start, chrono::TimeDelta::seconds(2), "{p} {code}");
                }
                for w in t.windows(2) {
                    assert!(
                        w[1].0 >= w[0].1,
                        "{p} {code}: windows {:?} and {:?} overlap",
                        w[0],
                        w[1]
                    );
                }
            }
            let values: HashSet<u64> = observations(&h, p, SPO2)
                .iter()
                .map(|o| value(o) as u64)
                .collect();
            assert!(
                values.is_subset(&[phase1 as u64, phase2 as u64].into_iter().collect()),
                "{p}: {values:?}"
            );
        }
        // Nothing attributed to the wrong patient.
        assert!(obs.iter().all(|o| subject(o) == pa || subject(o) == pb));
        // Nothing was refused by the store (no identifier collision across the restart).
        let dead = h.vitalgate(&["dead-letters"]);
        assert!(dead.trim().is_empty(), "{dead}");
        let status = h.vitalgate(&["status"]);
        assert!(status.contains("pending=0"), "{status}");
        assert!(
            c["serial_records_reduced_away"] > c["serial_readings_reduced_out"] * 5,
            "{c:?}"
        );
        assert_no_phi(&log, &[pa, pb]);
    }
}
