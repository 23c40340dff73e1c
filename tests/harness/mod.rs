//! Test harness for the end-to-end tests: PKI, FHIR server, broker, agent process.
#![allow(dead_code)]

use std::io::Read;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use vitalgate_devkit::fhir_server::{FhirTestServer, ServerConfig};
use vitalgate_devkit::pki::TestPki;

pub const TOPIC: &str = "vitalgate/ingest/hub-1";
pub const PATIENT: &str = "urn:oid:2.16.840.1.113883.19.5|MRN-0001";

/// A free loopback port (bound then released; fine for tests on one machine).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

pub enum Broker {
    None,
    Embedded { port: u16 },
    Mosquitto(Mosquitto),
}

/// How to run mosquitto.
#[derive(Debug, Clone, Copy, Default)]
pub struct MosquittoOptions {
    /// Keep sessions and queued messages on disk, so a [`Mosquitto::restart`] keeps them.
    pub persistence: bool,
    /// Log everything (`log_type all`) to a file, read with [`Mosquitto::log`].
    pub log_all: bool,
    /// The broker's QoS 1 window per client (`max_inflight_messages`); `None`: mosquitto's
    /// default (20).
    pub inflight_window: Option<u16>,
}

/// A mosquitto process on a free port, with its config, data and log in a temp dir.
pub struct Mosquitto {
    pub port: u16,
    child: Option<Child>,
    bin: PathBuf,
    conf: PathBuf,
    log: Option<PathBuf>,
    _dir: tempfile::TempDir,
}

impl Mosquitto {
    /// Stops mosquitto with SIGTERM (it saves its persistence file on the way out) and starts
    /// it again on the same port with the same configuration.
    pub fn restart(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(child.id(), "TERM");
            let deadline = Instant::now() + Duration::from_secs(20);
            while child.try_wait().unwrap().is_none() {
                assert!(
                    Instant::now() < deadline,
                    "mosquitto did not stop on SIGTERM"
                );
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        self.child = Some(start_mosquitto(&self.bin, &self.conf, self.port));
    }

    /// Sends a signal (`"STOP"`, `"CONT"`) to the mosquitto process.
    pub fn signal(&self, sig: &str) {
        if let Some(child) = &self.child {
            signal(child.id(), sig);
        }
    }

    /// The broker's log so far (empty unless started with `log_all`).
    pub fn log(&self) -> String {
        match &self.log {
            Some(p) => std::fs::read_to_string(p).unwrap_or_default(),
            None => String::new(),
        }
    }
}

impl Broker {
    /// An in-process rumqttd broker on a free port.
    pub fn embedded() -> Broker {
        let port = free_port();
        let cfg = format!(
            r#"
id = 0
[router]
id = 0
max_connections = 100
max_outgoing_packet_count = 200
max_segment_size = 10485760
max_segment_count = 10

[v4.1]
name = "v4-1"
listen = "127.0.0.1:{port}"
next_connection_delay_ms = 1
    [v4.1.connections]
    connection_timeout_ms = 60000
    max_payload_size = 65536
    max_inflight_count = 100
    dynamic_filters = true
"#
        );
        let config: rumqttd::Config = toml::from_str(&cfg).expect("rumqttd config");
        std::thread::spawn(move || {
            let mut broker = rumqttd::Broker::new(config);
            let _ = broker.start();
        });
        wait_port(port);
        Broker::Embedded { port }
    }

    /// Debian's mosquitto on a free port, if installed. With VITALGATE_REQUIRE_MOSQUITTO=1 (CI)
    /// a missing mosquitto is a failure, not a skip.
    pub fn mosquitto() -> Option<Broker> {
        Self::mosquitto_with(MosquittoOptions::default())
    }

    /// Debian's mosquitto with `opts`, if installed (same rule as [`Broker::mosquitto`]).
    pub fn mosquitto_with(opts: MosquittoOptions) -> Option<Broker> {
        let bin = ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"]
            .into_iter()
            .map(PathBuf::from)
            .find(|p| p.exists());
        let Some(bin) = bin else {
            assert!(
                std::env::var("VITALGATE_REQUIRE_MOSQUITTO").is_err(),
                "VITALGATE_REQUIRE_MOSQUITTO is set but mosquitto is not installed"
            );
            return None;
        };
        let port = free_port();
        let dir = tempfile::tempdir().unwrap();
        let mut text = format!("listener {port} 127.0.0.1\nallow_anonymous true\n");
        // Started as root, mosquitto drops to user `mosquitto`, which cannot write our private
        // temp dir; `user root` keeps it as it is (the option is ignored when not root).
        use std::os::unix::fs::MetadataExt;
        if std::fs::metadata(dir.path()).map(|m| m.uid()).ok() == Some(0) {
            text.push_str("user root\n");
        }
        // mosquitto queues at most 1,000 QoS 1 messages per client beyond its inflight window
        // by default and silently drops the rest ("Outgoing messages are being dropped"),
        // while still acknowledging them to the publisher: a burst test would measure the
        // broker's queue limit, not the agent. No limit here.
        text.push_str("max_queued_messages 0\n");
        if let Some(w) = opts.inflight_window {
            text.push_str(&format!("max_inflight_messages {w}\n"));
        }
        if opts.persistence {
            text.push_str(&format!(
                "persistence true\npersistence_location {}/\n",
                dir.path().display()
            ));
        } else {
            text.push_str("persistence false\n");
        }
        let log = opts.log_all.then(|| dir.path().join("mosquitto.log"));
        if let Some(log) = &log {
            text.push_str(&format!("log_dest file {}\nlog_type all\n", log.display()));
        }
        let conf = dir.path().join("mosquitto.conf");
        std::fs::write(&conf, text).unwrap();
        let child = Some(start_mosquitto(&bin, &conf, port));
        Some(Broker::Mosquitto(Mosquitto {
            port,
            child,
            bin,
            conf,
            log,
            _dir: dir,
        }))
    }

    /// The mosquitto broker, if this is one.
    pub fn as_mosquitto(&mut self) -> Option<&mut Mosquitto> {
        match self {
            Broker::Mosquitto(m) => Some(m),
            _ => None,
        }
    }

    pub fn port(&self) -> Option<u16> {
        match self {
            Broker::None => None,
            Broker::Embedded { port } | Broker::Mosquitto(Mosquitto { port, .. }) => Some(*port),
        }
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn start_mosquitto(bin: &Path, conf: &Path, port: u16) -> Child {
    let child = Command::new(bin)
        .arg("-c")
        .arg(conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start mosquitto");
    wait_port(port);
    child
}

fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status();
}

fn wait_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "port {port} never opened");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// An `[[devices]] kind = "mqtt"` entry of the agent's configuration.
#[derive(Debug, Clone)]
pub struct MqttDevice {
    pub name: String,
    pub topic: String,
    pub patient: String,
}

impl MqttDevice {
    /// The harness's default device: [`TOPIC`] bound to [`PATIENT`].
    pub fn default_hub() -> MqttDevice {
        MqttDevice {
            name: "hub-1".into(),
            topic: TOPIC.into(),
            patient: PATIENT.into(),
        }
    }
}

pub struct Harness {
    pub dir: tempfile::TempDir,
    pub pki: TestPki,
    pub fhir: FhirTestServer,
    pub broker: Broker,
    pub config: PathBuf,
}

impl Harness {
    pub async fn new(broker: Broker) -> Harness {
        Self::build(broker, false, vec![MqttDevice::default_hub()], "").await
    }

    /// The FHIR server presents a certificate from a CA the agent does not trust.
    pub async fn with_rogue_server(broker: Broker) -> Harness {
        Self::build(broker, true, vec![MqttDevice::default_hub()], "").await
    }

    /// Like [`Harness::new`], with `extra` lines appended to the `[uplink]` section.
    pub async fn with_uplink_settings(broker: Broker, extra: &str) -> Harness {
        Self::build(broker, false, vec![MqttDevice::default_hub()], extra).await
    }

    /// An agent configured with these MQTT devices (instead of the one default hub).
    pub async fn with_mqtt_devices(broker: Broker, devices: Vec<MqttDevice>) -> Harness {
        Self::build(broker, false, devices, "").await
    }

    async fn build(
        broker: Broker,
        rogue: bool,
        devices: Vec<MqttDevice>,
        extra_uplink: &str,
    ) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let pki = TestPki::generate(&dir.path().join("pki")).unwrap();
        let mut server_cfg = ServerConfig::for_pki(&pki);
        if rogue {
            server_cfg.server_cert = pki.rogue_server_cert.clone();
            server_cfg.server_key = pki.rogue_server_key.clone();
        }
        let fhir = FhirTestServer::start(server_cfg)
            .await
            .expect("FHIR test server");
        let config = dir.path().join("vitalgate.toml");
        let mqtt = match broker.port() {
            Some(port) => {
                let mut m = format!(
                    "[mqtt]\nbroker = \"mqtt://127.0.0.1:{port}\"\nclient_id = \"{}\"\nkeep_alive_secs = 5\n",
                    agent_client_id(port)
                );
                for d in &devices {
                    m.push_str(&format!(
                        "\n[[devices]]\nname = \"{}\"\nkind = \"mqtt\"\ntopic = \"{}\"\npatient = \"{}\"\n",
                        d.name, d.topic, d.patient
                    ));
                }
                m
            }
            None => String::new(),
        };
        let text = format!(
            r#"[gateway]
id = "e2e-gw"
data_dir = "data"

[store]
key_file = "store.key"

[uplink]
fhir_base = "{base}"
ca_file = "{ca}"
client_cert = "{cert}"
client_key = "{key}"
timeout_secs = 5
batch_size = 4
backoff_initial_ms = 100
backoff_max_secs = 1
{extra_uplink}
{mqtt}"#,
            base = fhir.base_url(),
            ca = pki.ca_cert.display(),
            cert = pki.client_cert.display(),
            key = pki.client_key.display(),
        );
        std::fs::write(&config, text).unwrap();
        let h = Harness {
            dir,
            pki,
            fhir,
            broker,
            config,
        };
        let out = h.vitalgate_output(&["keys", "init"]);
        assert!(out.status.success(), "keys init: {out:?}");
        h
    }

    pub fn vitalgate_output(&self, args: &[&str]) -> Output {
        crate::common::vitalgate()
            .args(args)
            .arg("--config")
            .arg(&self.config)
            .output()
            .expect("run vitalgate")
    }

    /// Runs a vitalgate subcommand, asserts success, returns stdout.
    pub fn vitalgate(&self, args: &[&str]) -> String {
        let out = self.vitalgate_output(args);
        assert!(out.status.success(), "vitalgate {args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn spawn_agent(&self) -> Agent {
        self.spawn_agent_from(crate::common::vitalgate(), true)
    }

    /// Starts the agent and waits until it runs; with `wait_subscribed`, also until its MQTT
    /// subscriptions are acknowledged (the bench measures builds that never get there).
    pub fn spawn_agent_with(&self, wait_subscribed: bool) -> Agent {
        self.spawn_agent_from(crate::common::vitalgate(), wait_subscribed)
    }

    /// Spawns `vitalgate run` from `cmd` (e.g. the binary behind `setpriv`), waits until it is
    /// running (and, with `wait_subscribed`, until its MQTT subscriptions are acknowledged).
    pub fn spawn_agent_from(&self, cmd: Command, wait_subscribed: bool) -> Agent {
        self.spawn_agent_from_env(cmd, wait_subscribed, &[])
    }

    /// As [`Harness::spawn_agent`], with extra environment variables (e.g. `NOTIFY_SOCKET`).
    pub fn spawn_agent_env(&self, env: &[(&str, &str)]) -> Agent {
        self.spawn_agent_from_env(crate::common::vitalgate(), true, env)
    }

    /// As [`Harness::spawn_agent_from`], with extra environment variables.
    pub fn spawn_agent_from_env(
        &self,
        mut cmd: Command,
        wait_subscribed: bool,
        env: &[(&str, &str)],
    ) -> Agent {
        let log = self.dir.path().join(format!("agent-{}.log", free_port()));
        let file = std::fs::File::create(&log).unwrap();
        let child = cmd
            .arg("run")
            .arg("--config")
            .arg(&self.config)
            .env("VITALGATE_LOG", "info")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("spawn vitalgate run");
        let agent = Agent { child, log };
        // Ready when it says so (it logs after the store, uplink and sources are set up).
        self.wait_for_log(&agent, "vitalgate running", 1, Duration::from_secs(30));
        if wait_subscribed && self.broker.port().is_some() {
            // A message published before the first SUBSCRIBE reaches the broker is dropped
            // (MQTT semantics): wait until the agent's subscription is in place.
            self.wait_for_log(
                &agent,
                "MQTT subscriptions acknowledged",
                1,
                Duration::from_secs(30),
            );
        }
        agent
    }

    /// Publishes payloads to [`TOPIC`] with QoS 1 and waits for every PUBACK.
    pub async fn publish(&self, payloads: &[String]) {
        self.publish_to(TOPIC, payloads).await;
    }

    /// Publishes payloads to `topic` with QoS 1 and waits for every PUBACK.
    pub async fn publish_to(&self, topic: &str, payloads: &[String]) {
        let messages: Vec<(String, String)> = payloads
            .iter()
            .map(|p| (topic.to_string(), p.clone()))
            .collect();
        self.publish_messages(&messages).await;
    }

    /// Publishes `(topic, payload)` pairs with QoS 1 on one connection and waits for every
    /// PUBACK.
    pub async fn publish_messages(&self, messages: &[(String, String)]) {
        let port = self.broker.port().expect("a broker");
        // Every request fits the channel: nothing awaits the (not yet polled) event loop.
        let (client, mut el) = publisher(port, messages.len() + 8);
        for (topic, p) in messages {
            client
                .publish(topic, QoS::AtLeastOnce, false, p.clone().into_bytes())
                .await
                .unwrap();
        }
        await_pubacks(&mut el, messages.len(), Duration::from_secs(60)).await;
        let _ = client.disconnect().await;
        let _ = tokio::time::timeout(Duration::from_secs(1), el.poll()).await;
    }

    /// Every stored Observation validates against the FHIR R4 schema on its own too.
    /// The server holds exactly `n` Observations, no identifier twice, and no identity was
    /// created twice.
    pub fn assert_each_once(&self, n: usize) {
        let obs = self.fhir.observation_identifiers();
        let mut unique = obs.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(obs.len(), n, "{obs:#?}");
        assert_eq!(unique.len(), n, "no Observation twice");
        assert_eq!(self.fhir.duplicate_creates(), 0);
    }

    pub fn assert_all_observations_valid(&self) {
        for o in self.fhir.stored_observations() {
            let errors = vitalgate_devkit::validate_resource(&o);
            assert!(errors.is_empty(), "{errors:?}");
        }
    }

    /// As [`Harness::wait_for_observations`], the timeout scaled under emulation, and a timeout
    /// fails with the agent's log and its `status` (pending, dead letters): a slow agent and a
    /// lost reading look alike in a bare count.
    pub async fn wait_for_observations_of(&self, agent: &Agent, n: usize, timeout: Duration) {
        if let Err(have) = self
            .observations_by(n, Instant::now() + timeout * emulation_factor())
            .await
        {
            let status = self.vitalgate_output(&["status"]);
            panic!(
                "expected {n} observations on the server, have {have}\n--- status:\n{}{}\n--- agent log:\n{}",
                String::from_utf8_lossy(&status.stdout),
                String::from_utf8_lossy(&status.stderr),
                agent.stderr()
            );
        }
    }

    pub async fn wait_for_observations(&self, n: usize, timeout: Duration) {
        if let Err(have) = self.observations_by(n, Instant::now() + timeout).await {
            panic!("expected {n} observations on the server, have {have}");
        }
    }

    /// Polls until the server holds `n` observations (`Ok`) or `deadline` passes (`Err` with
    /// the count it had).
    async fn observations_by(&self, n: usize, deadline: Instant) -> Result<(), usize> {
        loop {
            let have = self.fhir.observation_identifiers().len();
            if have >= n {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(have);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until the agent's log contains `needle` at least `count` times, failing only when
    /// the count stops growing for `stall` (a stalled agent fails fast; a slow machine does not).
    /// Returns the count reached.
    pub fn wait_for_log_progress(
        &self,
        agent: &Agent,
        needle: &str,
        count: usize,
        stall: Duration,
    ) -> usize {
        // Under qemu everything is several times slower (a reconnect, a redelivery round).
        let stall = stall * emulation_factor();
        let mut last = 0;
        let mut last_change = Instant::now();
        loop {
            let have = agent.stderr().matches(needle).count();
            if have >= count {
                return have;
            }
            if have != last {
                last = have;
                last_change = Instant::now();
            }
            assert!(
                last_change.elapsed() < stall,
                "{needle:?}: stuck at {have} of {count} for {stall:?}; agent log tail:\n{}",
                tail(&agent.stderr(), 40)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Waits until the agent's log contains `needle` at least `count` times.
    pub fn wait_for_log(&self, agent: &Agent, needle: &str, count: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let log = agent.stderr();
            if log.matches(needle).count() >= count {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "waited for {count}x {needle:?} in the agent log:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// The MQTT client id the harness gives the agent for a broker on `port`.
pub fn agent_client_id(port: u16) -> String {
    format!("vg-e2e-{port}")
}

/// A client id no other publisher of this test process uses. (Ids drawn from `free_port()`
/// could repeat; a broker that sees one id twice drops the older session.)
/// A test publisher for the broker on `port`, built to survive a loaded machine (CI runs the
/// whole suite under qemu on two cores): a persistent session, so unacknowledged publishes
/// are resent after a reconnect, and network timeouts far above rumqttc's 5 s default.
pub fn publisher(port: u16, cap: usize) -> (AsyncClient, rumqttc::EventLoop) {
    let mut opts = MqttOptions::new(publisher_id(), "127.0.0.1", port);
    opts.set_keep_alive(Duration::from_secs(30));
    opts.set_clean_session(false);
    // Room for the 1 MiB poison-message test.
    opts.set_max_packet_size(16 * 1024, 4 * 1024 * 1024);
    let (client, mut el) = AsyncClient::new(opts, cap);
    let mut net = el.network_options();
    net.set_connection_timeout(30);
    el.set_network_options(net);
    (client, el)
}

/// Polls `el` until `n` PUBACKs arrived. A dropped connection is reconnected (the session
/// resends what was not acknowledged, so a reading may arrive twice, which the agent's
/// identity rule absorbs); more than five drops, or no acks by `within`, fail the test.
pub async fn await_pubacks(el: &mut rumqttc::EventLoop, n: usize, within: Duration) {
    let mut acked = 0;
    let mut drops = 0;
    let deadline = tokio::time::Instant::now() + within;
    while acked < n {
        match tokio::time::timeout_at(deadline, el.poll())
            .await
            .expect("PUBACKs in time")
        {
            Ok(Event::Incoming(Packet::PubAck(_))) => acked += 1,
            Ok(_) => {}
            Err(e) => {
                drops += 1;
                assert!(drops <= 5, "publisher connection failed {drops} times: {e}");
                eprintln!("publisher connection dropped ({e}); reconnecting");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

pub fn publisher_id() -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("e2e-pub-{}-{n}", std::process::id())
}

/// The last `n` lines of `s`.
pub fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A real `mosquitto_pub -l -q 1` process publishing one message per line as fast as it can.
pub struct MosquittoPub {
    child: Child,
    out: PathBuf,
    lines: usize,
}

impl MosquittoPub {
    /// Whether `mosquitto_pub` (Debian package mosquitto-clients, separate from the broker) can
    /// be run. Without it a test skips with one line; with VITALGATE_REQUIRE_MOSQUITTO=1 (CI)
    /// a missing client is a failure, as a missing broker is.
    pub fn available() -> bool {
        let found = Command::new("mosquitto_pub")
            .arg("--help")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok();
        if !found {
            assert!(
                std::env::var("VITALGATE_REQUIRE_MOSQUITTO").is_err(),
                "VITALGATE_REQUIRE_MOSQUITTO is set but mosquitto_pub (Debian package \
                 mosquitto-clients) is not installed"
            );
            eprintln!("SKIPPED: mosquitto_pub not found (install Debian's mosquitto-clients)");
        }
        found
    }

    /// Starts publishing `lines` (no newlines inside) to `topic` on the broker at `port`.
    /// `work` holds the input and output files.
    pub fn spawn(port: u16, topic: &str, lines: &[String], work: &Path) -> MosquittoPub {
        let id = publisher_id();
        let input = work.join(format!("{id}.in"));
        let out = work.join(format!("{id}.out"));
        let mut text = lines.join("\n");
        text.push('\n');
        std::fs::write(&input, text).unwrap();
        let child = Command::new("mosquitto_pub")
            .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-t", topic])
            .args(["-q", "1", "-l", "-d", "-i", &id])
            .stdin(std::fs::File::open(&input).unwrap())
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .expect("run mosquitto_pub (Debian package mosquitto-clients)");
        MosquittoPub {
            child,
            out,
            lines: lines.len(),
        }
    }

    /// How many messages the broker has confirmed so far (the process may still be running).
    pub fn confirmed_so_far(&self) -> usize {
        std::fs::read_to_string(&self.out)
            .unwrap_or_default()
            .matches("received PUBACK")
            .count()
    }

    /// Waits for the publisher to exit; returns, per line, whether the broker confirmed it
    /// (PUBACK, return code 0). `mosquitto_pub` numbers its messages 1, 2, … in line order, and
    /// exits 0 even when the broker went away mid-stream, so its `-d` output is the truth.
    pub fn wait(mut self) -> Vec<bool> {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let mut confirmed = vec![false; self.lines];
        let out = std::fs::read_to_string(&self.out).unwrap_or_default();
        for line in out.lines() {
            let Some(rest) = line.split("received PUBACK (Mid: ").nth(1) else {
                continue;
            };
            let Some((mid, rc)) = rest.split_once(", RC:") else {
                continue;
            };
            if rc.starts_with('0') {
                if let Some(slot) = mid
                    .parse::<usize>()
                    .ok()
                    .and_then(|m| m.checked_sub(1))
                    .and_then(|i| confirmed.get_mut(i))
                {
                    *slot = true;
                }
            }
        }
        confirmed
    }
}

impl Drop for MosquittoPub {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub struct Agent {
    child: Child,
    log: PathBuf,
}

impl Agent {
    /// `kill -9`: no shutdown path at all.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The agent's process id (signals: SIGHUP reload, SIGSTOP).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Has the process exited (on its own)?
    pub fn exited(&mut self) -> bool {
        !matches!(self.child.try_wait(), Ok(None))
    }

    pub fn stderr(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    /// SIGTERM, then wait (the daemon's normal stop path).
    pub fn terminate(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!("agent did not stop on SIGTERM:\n{}", self.stderr());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Agent {
    /// SIGTERM; returns how long the process took to exit and its exit status. Panics after 30 s.
    pub fn terminate_timed(&mut self) -> (Duration, std::process::ExitStatus) {
        let start = Instant::now();
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return (start.elapsed(), status);
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "agent did not stop on SIGTERM:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// Deadlines for behaviour (not speed) scale under an emulator (`VITALGATE_EXEC_WRAPPER`,
/// qemu-user in `cross/test.sh`), where everything runs several times slower.
pub fn emulation_factor() -> u32 {
    match std::env::var("VITALGATE_EXEC_WRAPPER") {
        Ok(w) if !w.trim().is_empty() => 5,
        _ => 1,
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn data_point(i: usize, schema: &str, version: &str, body: String) -> String {
    format!(
        r#"{{"header":{{"uuid":"00000000-0000-4000-8000-{i:012}","schema_id":{{"namespace":"omh","name":"{schema}","version":"{version}"}},"source_creation_date_time":"2026-11-01T08:{m:02}:00Z","modality":"sensed"}},"body":{body}}}"#,
        m = i % 60
    )
}

/// An IEEE 1752.1 blood-pressure data point, minute `i` of 2026-11-01 08:00Z.
pub fn bp_point(i: usize, sys: i64, dia: i64) -> String {
    data_point(
        i,
        "blood-pressure",
        "3.0",
        format!(
            r#"{{"systolic_blood_pressure":{{"value":{sys},"unit":"mmHg"}},"diastolic_blood_pressure":{{"value":{dia},"unit":"mmHg"}},"effective_time_frame":{{"date_time":"2026-11-01T08:{m:02}:00Z"}}}}"#,
            m = i % 60
        ),
    )
}

/// A body-weight data point in kg with two decimals (`centi` hundredths of a kilogram).
pub fn weight_point(i: usize, centi: i64) -> String {
    data_point(
        i,
        "body-weight",
        "2.0",
        format!(
            r#"{{"body_weight":{{"value":{}.{:02},"unit":"kg"}},"effective_time_frame":{{"date_time":"2026-11-01T09:{m:02}:00Z"}}}}"#,
            centi / 100,
            centi % 100,
            m = i % 60
        ),
    )
}

pub fn socket(addr: SocketAddr) -> String {
    addr.to_string()
}

pub fn path_str(p: &Path) -> String {
    p.display().to_string()
}

/// What a mosquitto log (`log_type all`) says about one client, connection by connection.
#[derive(Debug, Default)]
pub struct ClientTrace {
    pub connections: Vec<ConnectionTrace>,
    /// "Client … has exceeded timeout, disconnecting.": a missed keep-alive.
    pub keepalive_timeouts: usize,
}

/// One connection of a client: the PUBLISHes the broker sent it and the PUBACKs it sent back.
#[derive(Debug, Default)]
pub struct ConnectionTrace {
    /// (packet id, payload bytes) in sending order.
    pub published: Vec<(u16, usize)>,
    /// Packet ids acknowledged, in arrival order.
    pub acked: Vec<u16>,
}

impl ClientTrace {
    pub fn from_log(log: &str, client: &str) -> ClientTrace {
        let mut t = ClientTrace::default();
        let connected = format!(" as {client} (");
        let sending = format!("Sending PUBLISH to {client} (");
        let puback = format!("Received PUBACK from {client} (Mid: ");
        let timeout = format!("Client {client} has exceeded timeout");
        let mut open = false;
        for line in log.lines() {
            if line.contains("mosquitto version") && line.contains("starting") {
                open = false;
            } else if line.contains("New client connected") && line.contains(&connected) {
                t.connections.push(ConnectionTrace::default());
                open = true;
            } else if line.contains(&timeout) {
                t.keepalive_timeouts += 1;
            } else if let (true, Some(rest)) = (open, line.split(&sending).nth(1)) {
                // "(d0, q1, r0, m17, 'topic', ... (380 bytes))"
                let mid = rest
                    .split(", ")
                    .find_map(|f| f.strip_prefix('m'))
                    .and_then(|m| m.parse().ok());
                let bytes = rest
                    .rsplit(" (")
                    .next()
                    .and_then(|b| b.split(' ').next())
                    .and_then(|b| b.parse().ok());
                if let (Some(mid), Some(bytes), Some(c)) = (mid, bytes, t.connections.last_mut()) {
                    c.published.push((mid, bytes));
                }
            } else if let (true, Some(rest)) = (open, line.split(&puback).nth(1)) {
                let mid = rest.split(',').next().and_then(|m| m.parse().ok());
                if let (Some(mid), Some(c)) = (mid, t.connections.last_mut()) {
                    c.acked.push(mid);
                }
            }
        }
        t
    }

    pub fn acks(&self) -> usize {
        self.connections.iter().map(|c| c.acked.len()).sum()
    }

    pub fn publishes(&self) -> usize {
        self.connections.iter().map(|c| c.published.len()).sum()
    }
}

impl ConnectionTrace {
    /// MQTT 3.1.1 §4.6 seen from the broker: the PUBACKs of a connection acknowledge exactly
    /// the PUBLISHes it was sent, each once, in sending order, up to where the connection ended
    /// (those left unacknowledged are redelivered on the next one).
    pub fn acks_are_an_in_order_prefix(&self) -> bool {
        self.acked.len() <= self.published.len()
            && self
                .acked
                .iter()
                .zip(&self.published)
                .all(|(a, (p, _))| a == p)
    }
}
