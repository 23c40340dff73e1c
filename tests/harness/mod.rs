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
    Embedded {
        port: u16,
    },
    Mosquitto {
        port: u16,
        child: Child,
        _dir: tempfile::TempDir,
    },
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
        let bin = ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"]
            .into_iter()
            .find(|p| Path::new(p).exists());
        let Some(bin) = bin else {
            assert!(
                std::env::var("VITALGATE_REQUIRE_MOSQUITTO").is_err(),
                "VITALGATE_REQUIRE_MOSQUITTO is set but mosquitto is not installed"
            );
            return None;
        };
        let port = free_port();
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!("listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"),
        )
        .unwrap();
        let child = Command::new(bin)
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start mosquitto");
        wait_port(port);
        Some(Broker::Mosquitto {
            port,
            child,
            _dir: dir,
        })
    }

    pub fn port(&self) -> Option<u16> {
        match self {
            Broker::None => None,
            Broker::Embedded { port } | Broker::Mosquitto { port, .. } => Some(*port),
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Broker::Mosquitto { child, .. } = self {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn wait_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "port {port} never opened");
        std::thread::sleep(Duration::from_millis(20));
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
        Self::build(broker, false).await
    }

    /// The FHIR server presents a certificate from a CA the agent does not trust.
    pub async fn with_rogue_server(broker: Broker) -> Harness {
        Self::build(broker, true).await
    }

    async fn build(broker: Broker, rogue: bool) -> Harness {
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
            Some(port) => format!(
                "[mqtt]\nbroker = \"mqtt://127.0.0.1:{port}\"\nclient_id = \"vg-e2e-{port}\"\nkeep_alive_secs = 5\n\n[[devices]]\nname = \"hub-1\"\nkind = \"mqtt\"\ntopic = \"{TOPIC}\"\npatient = \"{PATIENT}\"\n"
            ),
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
        self.spawn_agent_env(&[])
    }

    /// As [`Harness::spawn_agent`], with extra environment variables (e.g. `NOTIFY_SOCKET`).
    pub fn spawn_agent_env(&self, env: &[(&str, &str)]) -> Agent {
        let log = self.dir.path().join(format!("agent-{}.log", free_port()));
        let file = std::fs::File::create(&log).unwrap();
        let child = crate::common::vitalgate()
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
        if self.broker.port().is_some() {
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

    /// Publishes payloads with QoS 1 and waits for every PUBACK.
    pub async fn publish(&self, payloads: &[String]) {
        let port = self.broker.port().expect("a broker");
        let mut opts = MqttOptions::new(format!("e2e-pub-{}", free_port()), "127.0.0.1", port);
        opts.set_keep_alive(Duration::from_secs(5));
        let (client, mut el) = AsyncClient::new(opts, 64);
        for p in payloads {
            client
                .publish(TOPIC, QoS::AtLeastOnce, false, p.clone().into_bytes())
                .await
                .unwrap();
        }
        let mut acked = 0;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while acked < payloads.len() {
            let ev = tokio::time::timeout_at(deadline, el.poll())
                .await
                .expect("PUBACKs in time")
                .expect("publisher connection");
            if let Event::Incoming(Packet::PubAck(_)) = ev {
                acked += 1;
            }
        }
        let _ = client.disconnect().await;
        let _ = tokio::time::timeout(Duration::from_secs(1), el.poll()).await;
    }

    /// Every stored Observation validates against the FHIR R4 schema on its own too.
    pub fn assert_all_observations_valid(&self) {
        for o in self.fhir.stored_observations() {
            let errors = vitalgate_devkit::validate_resource(&o);
            assert!(errors.is_empty(), "{errors:?}");
        }
    }

    pub async fn wait_for_observations(&self, n: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let have = self.fhir.observation_identifiers().len();
            if have >= n {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "expected {n} observations on the server, have {have}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
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

pub struct Agent {
    child: Child,
    log: PathBuf,
}

impl Agent {
    /// The agent's process id (signals: SIGHUP reload, SIGSTOP).
    pub fn pid(&self) -> u32 {
        self.child.id()
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
