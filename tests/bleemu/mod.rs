//! BLE test support: a private D-Bus system bus, the fake BlueZ (`devkit/bluez-emu`), an agent
//! process pointed at that bus, and GATT payload encoders for the scenarios.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// The Python the emulator needs (Debian's, with python3-dbus and python3-gi).
pub fn python() -> &'static str {
    if Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3"
    } else {
        "python3"
    }
}

pub fn emulator_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../devkit/bluez-emu/bluez_emu.py")
}

/// The Debian packages the emulator needs at run time.
pub const EMULATOR_PACKAGES: &str = "dbus-daemon python3-dbus python3-gi";

/// Whether the emulator can run here (a `dbus-daemon`, and a python3 that imports `dbus` and
/// `gi`). When it cannot: under `VITALGATE_REQUIRE_BLE_EMU=1` (`.ci/run` sets it) this fails the
/// test, naming the packages; otherwise it prints one loud line and returns false, and the caller
/// returns early (skipped, like the mosquitto variants).
pub fn emulator_available(what: &str) -> bool {
    let quiet = |c: &mut Command| {
        c.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    };
    let daemon = quiet(Command::new("dbus-daemon").arg("--version"));
    let py = quiet(Command::new(python()).args([
        "-c",
        "import dbus, dbus.service, dbus.mainloop.glib; from gi.repository import GLib",
    ]));
    if daemon && py {
        return true;
    }
    let missing = format!(
        "BLE emulator unavailable (dbus-daemon: {}, python3 with dbus+gi: {}); install: apt-get install {EMULATOR_PACKAGES}",
        if daemon { "ok" } else { "MISSING" },
        if py { "ok" } else { "MISSING" },
    );
    assert!(
        std::env::var_os("VITALGATE_REQUIRE_BLE_EMU").is_none(),
        "{missing} (VITALGATE_REQUIRE_BLE_EMU is set)"
    );
    // Straight to the process's stderr: libtest captures eprintln!, this line must show.
    let _ = writeln!(
        std::io::stderr(),
        "*** {what}: SKIPPED: {missing}; .ci/run runs it (VITALGATE_REQUIRE_BLE_EMU=1) ***"
    );
    false
}

/// A private `dbus-daemon` (system-bus flavour) in a temp dir.
pub struct Bus {
    pub dir: tempfile::TempDir,
    pub address: String,
    child: Child,
}

impl Bus {
    pub fn start() -> Bus {
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("bus.conf");
        std::fs::write(
            &conf,
            format!(
                r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:dir={}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_type="method_call"/>
    <allow send_type="signal"/>
    <allow send_type="method_return"/>
    <allow send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="signal"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
    <allow eavesdrop="true"/>
  </policy>
  <limit name="max_match_rules_per_connection">100000</limit>
</busconfig>
"#,
                dir.path().display()
            ),
        )
        .unwrap();
        let mut child = Command::new("dbus-daemon")
            .arg(format!("--config-file={}", conf.display()))
            .arg("--print-address")
            .arg("--nofork")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("dbus-daemon (Debian package dbus-daemon) must be installed");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let address = line.trim().to_string();
        assert!(
            address.starts_with("unix:"),
            "dbus-daemon address {address:?}"
        );
        Bus {
            dir,
            address,
            child,
        }
    }
}

impl Drop for Bus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

type Events = Arc<(Mutex<Vec<Value>>, Condvar)>;

/// The fake BlueZ, driven by JSON lines.
pub struct Emulator {
    child: Child,
    stdin: Mutex<ChildStdin>,
    events: Events,
    next_id: Mutex<u64>,
    pub scenario_file: PathBuf,
}

impl Emulator {
    pub fn start(bus: &Bus, scenario: &Value) -> Emulator {
        let scenario_file = bus.dir.path().join(format!("scenario-{}.json", now_ns()));
        std::fs::write(&scenario_file, serde_json::to_vec(scenario).unwrap()).unwrap();
        let mut child = Command::new(python())
            .arg(emulator_script())
            .arg(&scenario_file)
            .env("DBUS_SYSTEM_BUS_ADDRESS", &bus.address)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the BlueZ emulator (python3 with python3-dbus and python3-gi)");
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let events: Events = Arc::new((Mutex::new(Vec::new()), Condvar::new()));
        let ev2 = Arc::clone(&events);
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    let (m, c) = &*ev2;
                    m.lock().unwrap().push(v);
                    c.notify_all();
                }
            }
        });
        let emu = Emulator {
            child,
            stdin: Mutex::new(stdin),
            events,
            next_id: Mutex::new(0),
            scenario_file,
        };
        emu.wait_event(|e| e["ev"] == "ready", Duration::from_secs(20));
        emu
    }

    /// Sends a command and waits for its acknowledgement (or its answer event).
    pub fn cmd(&self, mut c: Value) -> Value {
        let id = {
            let mut n = self.next_id.lock().unwrap();
            *n += 1;
            *n
        };
        c["id"] = json!(id);
        let is_stats = c["cmd"] == "stats";
        let start = self.events.0.lock().unwrap().len();
        {
            let mut s = self.stdin.lock().unwrap();
            writeln!(s, "{c}").unwrap();
            s.flush().unwrap();
        }
        self.wait_event_after(
            start,
            |e| {
                (e["ev"] == "ack" && e["id"] == json!(id))
                    || (is_stats && e["ev"] == "stats")
                    || e["ev"] == "error"
            },
            Duration::from_secs(20),
        )
    }

    pub fn events(&self) -> Vec<Value> {
        self.events.0.lock().unwrap().clone()
    }

    pub fn count(&self, pred: impl Fn(&Value) -> bool) -> usize {
        self.events
            .0
            .lock()
            .unwrap()
            .iter()
            .filter(|e| pred(e))
            .count()
    }

    pub fn wait_event(&self, pred: impl Fn(&Value) -> bool, timeout: Duration) -> Value {
        self.wait_event_after(0, pred, timeout)
    }

    /// Waits for an event at index ≥ `start` matching `pred`.
    pub fn wait_event_after(
        &self,
        start: usize,
        pred: impl Fn(&Value) -> bool,
        timeout: Duration,
    ) -> Value {
        let timeout = timeout * crate::harness::emulation_factor();
        let deadline = Instant::now() + timeout;
        let (m, c) = &*self.events;
        let mut g = m.lock().unwrap();
        loop {
            if let Some(e) = g.iter().skip(start).find(|e| pred(e)) {
                return e.clone();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "emulator event not seen within {timeout:?}; events: {:#?}",
                g.iter().rev().take(30).collect::<Vec<_>>()
            );
            g = c.wait_timeout(g, left).unwrap().0;
        }
    }

    /// Waits until at least `n` events match.
    pub fn wait_count(&self, pred: impl Fn(&Value) -> bool, n: usize, timeout: Duration) {
        let timeout = timeout * crate::harness::emulation_factor();
        let deadline = Instant::now() + timeout;
        let (m, c) = &*self.events;
        let mut g = m.lock().unwrap();
        loop {
            let have = g.iter().filter(|e| pred(e)).count();
            if have >= n {
                return;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "wanted {n} matching emulator events within {timeout:?}, have {have}"
            );
            g = c.wait_timeout(g, left).unwrap().0;
        }
    }

    /// Waits until at least `n` events match and returns the `n`-th.
    pub fn wait_count_event(
        &self,
        pred: impl Fn(&Value) -> bool,
        n: usize,
        timeout: Duration,
    ) -> Value {
        self.wait_count(&pred, n, timeout);
        let g = self.events.0.lock().unwrap();
        g.iter()
            .filter(|e| pred(e))
            .nth(n - 1)
            .cloned()
            .unwrap_or(Value::Null)
    }

    pub fn len(&self) -> usize {
        self.events.0.lock().unwrap().len()
    }

    pub fn stats(&self, client: Option<&str>) -> Value {
        let mut c = json!({"cmd": "stats"});
        if let Some(cl) = client {
            c["client"] = json!(cl);
        }
        self.cmd(c)
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An agent process on the private bus.
pub struct BleAgent {
    pub child: Child,
    pub log: PathBuf,
}

impl BleAgent {
    pub fn spawn(config: &Path, bus: &Bus, log_dir: &Path) -> BleAgent {
        let a = Self::spawn_env(config, bus, log_dir, &[]);
        a.wait_log("BLE scanning", 1, Duration::from_secs(30));
        a
    }

    /// Starts the agent with extra environment variables; does not wait for anything.
    pub fn spawn_env(config: &Path, bus: &Bus, log_dir: &Path, env: &[(&str, &str)]) -> BleAgent {
        let log = log_dir.join(format!("agent-{}.log", now_ns()));
        let file = std::fs::File::create(&log).unwrap();
        let child = crate::common::vitalgate()
            .arg("run")
            .arg("--config")
            .arg(config)
            .env("VITALGATE_LOG", "info")
            .env("DBUS_SYSTEM_BUS_ADDRESS", &bus.address)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("spawn vitalgate run");
        BleAgent { child, log }
    }

    pub fn stderr(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    pub fn wait_log(&self, needle: &str, count: usize, timeout: Duration) {
        let timeout = timeout * crate::harness::emulation_factor();
        let deadline = Instant::now() + timeout;
        loop {
            let log = self.stderr();
            if log.matches(needle).count() >= count {
                return;
            }
            if let Ok(Some(st)) = self.child_status() {
                panic!("agent exited ({st}) while waiting for {needle:?}:\n{log}");
            }
            assert!(
                Instant::now() < deadline,
                "waited {timeout:?} for {count}x {needle:?} in the agent log:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn child_status(&self) -> std::io::Result<Option<std::process::ExitStatus>> {
        // try_wait needs &mut; peek through /proc instead.
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id()));
        match stat {
            Ok(s) if s.contains(") Z ") => Ok(Some(std::process::ExitStatus::default())),
            _ => Ok(None),
        }
    }

    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                return st;
            }
            assert!(
                Instant::now() < deadline,
                "agent did not stop on SIGTERM:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for BleAgent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn now_ns() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

// ---- GATT payload encoders (the device side) ----

/// A device wall-clock time.
#[derive(Clone, Copy, Debug)]
pub struct Dt {
    pub unix: i64,
}

impl Dt {
    pub fn now_utc() -> Dt {
        Dt {
            unix: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs() as i64,
        }
    }
    pub fn plus(self, s: i64) -> Dt {
        Dt {
            unix: self.unix + s,
        }
    }
    pub fn bytes(self) -> [u8; 7] {
        let days = self.unix.div_euclid(86_400);
        let rem = self.unix.rem_euclid(86_400);
        let (y, m, d) = civil(days);
        let yb = (y as u16).to_le_bytes();
        [
            yb[0],
            yb[1],
            m,
            d,
            (rem / 3600) as u8,
            (rem % 3600 / 60) as u8,
            (rem % 60) as u8,
        ]
    }
    /// RFC 3339 in UTC, seconds precision.
    pub fn rfc3339(self) -> String {
        let b = self.bytes();
        format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
            u16::from_le_bytes([b[0], b[1]]),
            b[2],
            b[3],
            b[4],
            b[5],
            b[6]
        )
    }
}

fn civil(z: i64) -> (i64, u8, u8) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u8;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn sfloat_int(v: i16) -> [u8; 2] {
    ((v as u16) & 0x0FFF).to_le_bytes()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Blood Pressure Measurement 0x2A35: mmHg, timestamp, pulse, optional user.
pub fn bp(sys: i16, dia: i16, map: i16, pulse: i16, t: Dt, user: Option<u8>) -> String {
    let mut flags = 0x02 | 0x04;
    if user.is_some() {
        flags |= 0x08;
    }
    let mut v = vec![flags];
    v.extend(sfloat_int(sys));
    v.extend(sfloat_int(dia));
    v.extend(sfloat_int(map));
    v.extend(t.bytes());
    v.extend(sfloat_int(pulse));
    if let Some(u) = user {
        v.push(u);
    }
    hex(&v)
}

/// Weight Measurement 0x2A9D, SI, timestamp and user: `weight_g` grams (multiple of 5).
pub fn weight(weight_g: u32, t: Dt, user: u8) -> String {
    let mut v = vec![0x02 | 0x04];
    v.extend(((weight_g / 5) as u16).to_le_bytes());
    v.extend(t.bytes());
    v.push(user);
    hex(&v)
}

/// Temperature Measurement 0x2A1C, Celsius, timestamp: `centi` hundredths of a degree.
pub fn temperature(centi: i32, t: Dt) -> String {
    let mut v = vec![0x02];
    let m = (centi as u32) & 0x00FF_FFFF;
    v.extend(&m.to_le_bytes()[..3]);
    v.push(0xFE); // exponent -2
    v.extend(t.bytes());
    hex(&v)
}

/// Glucose Measurement 0x2A18: sequence number, base time, concentration in mg/dL (as kg/L),
/// capillary whole blood, finger.
pub fn glucose(seq: u16, t: Dt, mg_dl: i16) -> String {
    let mut v = vec![0x02];
    v.extend(seq.to_le_bytes());
    v.extend(t.bytes());
    // mg/dL = kg/L x 100000: mantissa mg/dL, exponent -5.
    let w = ((0xBu16) << 12) | ((mg_dl as u16) & 0x0FFF);
    v.extend(w.to_le_bytes());
    v.push(0x11);
    hex(&v)
}

/// Receives the agent's sd_notify datagrams (`READY=1`, `WATCHDOG=1`...) on a socket of the test.
pub struct NotifySocket {
    sock: std::os::unix::net::UnixDatagram,
    pub path: PathBuf,
}

impl NotifySocket {
    pub fn bind(dir: &Path) -> NotifySocket {
        let path = dir.join(format!("notify-{}.sock", now_ns()));
        let sock = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        NotifySocket { sock, path }
    }

    /// Datagrams received within `window`.
    pub fn collect(&self, window: Duration) -> Vec<String> {
        let end = Instant::now() + window;
        let mut out = Vec::new();
        let mut buf = [0u8; 512];
        while let Some(left) = end.checked_duration_since(Instant::now()) {
            self.sock
                .set_read_timeout(Some(left.max(Duration::from_millis(1))))
                .unwrap();
            match self.sock.recv(&mut buf) {
                Ok(n) => out.push(String::from_utf8_lossy(&buf[..n]).into_owned()),
                Err(_) => break,
            }
        }
        out
    }

    /// Waits for `want` (the deadline scaled for emulation).
    pub fn wait_for(&self, want: &str, timeout: Duration) {
        let end = Instant::now() + timeout * crate::harness::emulation_factor();
        let mut seen = Vec::new();
        while Instant::now() < end {
            for d in self.collect(Duration::from_millis(200)) {
                if d == want {
                    return;
                }
                seen.push(d);
            }
        }
        panic!("no {want:?} within {timeout:?}; got {seen:?}");
    }
}
