//! Operations, end to end with the real binary (and one in-process test of the watchdog):
//! the live status while ingesting, reload without restart, the watchdog, the fleet status
//! and alarms over MQTT with a last will, the ACL isolation of the docs, and `doctor` on a
//! healthy and on a broken set-up.

mod common;
mod harness;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use harness::*;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::Value;

// ---------------------------------------------------------------------------------------------
// helpers

fn append_config(h: &Harness, text: &str) {
    let mut s = std::fs::read_to_string(&h.config).unwrap();
    s.push_str(text);
    std::fs::write(&h.config, s).unwrap();
}

fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -{sig} {pid}");
}

/// Waits until a reload has rebound the MQTT devices in place and the broker has answered the
/// new filters' SUBSCRIBE: the second SUBACK round of the connection.
fn wait_for_rebind_in_place(h: &Harness, agent: &Agent, suback_wait: Duration) {
    h.wait_for_log(
        agent,
        "MQTT devices rebound in place",
        1,
        Duration::from_secs(30),
    );
    h.wait_for_log(agent, "MQTT subscriptions acknowledged", 2, suback_wait);
}

fn status_json(h: &Harness) -> Value {
    serde_json::from_str(&h.vitalgate(&["status", "--json"])).unwrap()
}

async fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout * emulation_factor();
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Publishes with QoS 1 to `topic`, `pace` apart, and waits for every PUBACK.
async fn publish_to(port: u16, topic: &str, payloads: Vec<String>, pace: Duration) {
    let mut opts = MqttOptions::new(format!("ops-pub-{}", free_port()), "127.0.0.1", port);
    // As harness::publisher: robust to a loaded machine.
    opts.set_keep_alive(Duration::from_secs(30));
    opts.set_clean_session(false);
    let (client, mut el) = AsyncClient::new(opts, 256);
    let mut net = el.network_options();
    net.set_connection_timeout(30);
    el.set_network_options(net);
    let n = payloads.len();
    let topic = topic.to_string();
    let sender = tokio::spawn({
        let client = client.clone();
        async move {
            for p in payloads {
                client
                    .publish(&topic, QoS::AtLeastOnce, false, p.into_bytes())
                    .await
                    .unwrap();
                tokio::time::sleep(pace).await;
            }
        }
    });
    await_pubacks(&mut el, n, Duration::from_secs(60)).await;
    sender.await.unwrap();
    let _ = client.disconnect().await;
    let _ = tokio::time::timeout(Duration::from_secs(1), el.poll()).await;
}

fn observations_for(h: &Harness, mrn: &str) -> usize {
    h.fhir
        .stored_observations()
        .iter()
        .filter(|o| o["subject"].to_string().contains(mrn))
        .count()
}

// ---------------------------------------------------------------------------------------------
// live status

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_status_and_dead_letters_while_the_daemon_ingests_without_phi() {
    let h = Harness::new(Broker::embedded()).await;
    append_config(
        &h,
        "\n[ops]\nruntime_dir = \"run\"\nstatus_interval_secs = 1\n",
    );
    let mut agent = h.spawn_agent();
    let readings: Vec<String> = (0..5).map(|i| bp_point(i, 120 + i as i64, 80)).collect();
    h.publish(&readings).await;
    h.publish(&["this is not json".to_string()]).await;
    h.wait_for_observations(5, Duration::from_secs(60)).await;

    // While it runs: the snapshot, not the store (which the daemon holds).
    let mut v = Value::Null;
    wait_until(
        "a status showing the uploads",
        Duration::from_secs(30),
        || {
            v = status_json(&h);
            // `uplink_accepted` counts a reading when the server's answer arrives; its ack is
            // written just after (a pipelined ack task), so a snapshot can show it accepted and
            // still pending for a moment (seen under qemu). Wait for both.
            v["counters"]["uplink_accepted"].as_u64() >= Some(5)
                && v["outbox"]["pending"] == 0
                && v["outbox"]["dead_letters"] == 1
                && v["uplink"]["state"] == "ok"
        },
    )
    .await;
    assert_eq!(v["schema"], "vitalgate.status/1");
    assert_eq!(v["pid"].as_u64(), Some(u64::from(agent.pid())));
    assert_eq!(v["gateway"], "e2e-gw");
    assert_eq!(v["outbox"]["pending"], 0);
    let dev = &v["devices"][0];
    assert_eq!(
        (dev["name"].as_str(), dev["kind"].as_str()),
        (Some("hub-1"), Some("mqtt"))
    );
    assert!(dev["last_reading"].is_string(), "{dev}");
    assert!(dev["last_connection"].is_string(), "{dev}");
    assert_eq!(dev["connected"], true);
    assert!(v["uplink"]["last_upload"].is_string());
    assert!(v["uplink"]["client_certificate_expires"].is_string());
    assert!(v["disk"]["used_percent"].as_f64().unwrap() > 0.0);
    assert!(v["disk"]["outbox_bytes"].as_u64().unwrap() > 0);
    assert!(v["clock"]["source"].is_string());
    assert!(v["counters"]["readings_stored"].as_u64() >= Some(5));
    assert!(
        v["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t["live"] == true),
        "{}",
        v["tasks"]
    );
    // The test PKI's client certificate lives 30 days: within the default 30-day warning.
    assert!(
        v["alarms"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["kind"] == "certificate_expiring"),
        "{}",
        v["alarms"]
    );

    let text = h.vitalgate(&["status"]);
    assert!(text.contains("hub-1 (mqtt): last reading 20"), "{text}");
    assert!(text.contains("uplink:  ok"), "{text}");
    assert!(text.contains("0 pending, 1 dead letters"), "{text}");
    for out in [&text, &v.to_string()] {
        assert!(
            !out.contains("MRN") && !out.contains("Patient/"),
            "PHI in status: {out}"
        );
    }

    // Read-only commands while the daemon runs.
    let list = h.vitalgate(&["dead-letters"]);
    assert_eq!(list.lines().count(), 1, "{list}");
    assert!(list.contains("not valid JSON"), "{list}");
    let show = h.vitalgate_output(&["dead-letters", "--show", "1"]);
    assert!(!show.status.success());
    assert!(String::from_utf8_lossy(&show.stderr).contains("the daemon is running"));
    let doctor = h.vitalgate_output(&["doctor"]);
    let doctor = String::from_utf8_lossy(&doctor.stdout).into_owned();
    assert!(
        doctor.contains("✓ store") && doctor.contains("in use by the running daemon"),
        "{doctor}"
    );

    agent.terminate();
    let after = h.vitalgate(&["status"]);
    assert!(
        after.contains("pending=0") && after.contains("not running"),
        "{after}"
    );
}

// ---------------------------------------------------------------------------------------------
// reload

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_adds_and_rebinds_devices_losing_no_reading_and_a_broken_file_keeps_the_old_config()
{
    let h = Harness::new(Broker::embedded()).await;
    let mut agent = h.spawn_agent();
    let port = h.broker.port().unwrap();
    let original = std::fs::read_to_string(&h.config).unwrap();

    // A steady stream on hub-1 while the configuration changes under it.
    let stream: Vec<String> = (0..40).map(|i| bp_point(i, 100 + i as i64, 70)).collect();
    let publisher = tokio::spawn(publish_to(port, TOPIC, stream, Duration::from_millis(50)));
    tokio::time::sleep(Duration::from_millis(600)).await;

    // hub-1 rebound to another patient, hub-2 added on its own topic.
    let reloaded = format!(
        "{}\n[[devices]]\nname = \"hub-2\"\nkind = \"mqtt\"\ntopic = \"vitalgate/ingest/hub-2\"\npatient = \"urn:oid:2.16.840.1.113883.19.5|MRN-0003\"\n",
        original.replace("MRN-0001", "MRN-0002")
    );
    std::fs::write(&h.config, &reloaded).unwrap();
    signal(agent.pid(), "HUP");
    h.wait_for_log(&agent, "configuration reloaded", 1, Duration::from_secs(30));
    // hub-1 is rebound in place, on the running connection (no reconnect, so nothing is
    // redelivered), and hub-2's new filter is subscribed on it: a second SUBACK round.
    wait_for_rebind_in_place(&h, &agent, Duration::from_secs(30));
    assert_eq!(
        agent.stderr().matches("MQTT connected").count(),
        1,
        "no reconnect on a rebind:\n{}",
        agent.stderr()
    );
    publisher.await.unwrap();
    publish_to(
        port,
        "vitalgate/ingest/hub-2",
        vec![weight_point(41, 7105)],
        Duration::ZERO,
    )
    .await;
    publish_to(port, TOPIC, vec![bp_point(42, 133, 83)], Duration::ZERO).await;

    h.wait_for_observations_of(&agent, 42, Duration::from_secs(90))
        .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let ids = h.fhir.observation_identifiers();
    let mut unique = ids.clone();
    unique.sort();
    unique.dedup();
    if (ids.len(), unique.len()) != (42, 42) {
        let mut seen: Vec<String> = h
            .fhir
            .stored_observations()
            .iter()
            .map(|o| format!("{} {}", o["effectiveDateTime"], o["subject"]["reference"]))
            .collect();
        seen.sort();
        panic!(
            "every reading once, none lost: {} stored, {} identifiers\n{}\n--- agent log:\n{}",
            ids.len(),
            unique.len(),
            seen.join("\n"),
            agent.stderr()
        );
    }
    assert_eq!(observations_for(&h, "MRN-0003"), 1, "hub-2 was added");
    assert!(observations_for(&h, "MRN-0002") >= 1, "hub-1 was rebound");
    assert!(
        observations_for(&h, "MRN-0001") >= 1,
        "readings before the reload kept their patient"
    );
    let log = agent.stderr();
    let line = log
        .lines()
        .find(|l| l.contains("configuration reloaded"))
        .unwrap();
    assert!(
        line.contains("devices added: hub-2") && line.contains("rebound: hub-1"),
        "{line}"
    );

    // A broken file: refused with file:line:col, the running configuration stays.
    let broken = format!("{reloaded}\n[ops]\nstatus_interval_secs = \"soon\"\n");
    std::fs::write(&h.config, &broken).unwrap();
    let bad_line = broken
        .lines()
        .position(|l| l.starts_with("status_interval_secs"))
        .unwrap()
        + 1;
    signal(agent.pid(), "HUP");
    h.wait_for_log(&agent, "reload refused", 1, Duration::from_secs(30));
    let log = agent.stderr();
    let refused: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("reload refused"))
        .collect();
    assert_eq!(refused.len(), 1, "one line: {refused:?}");
    let at = format!("{}:{bad_line}:24:", h.config.display());
    assert!(refused[0].contains(&at), "expected {at} in {}", refused[0]);
    publish_to(
        port,
        "vitalgate/ingest/hub-2",
        vec![weight_point(43, 7110)],
        Duration::ZERO,
    )
    .await;
    h.wait_for_observations(43, Duration::from_secs(60)).await;
    assert_eq!(
        observations_for(&h, "MRN-0003"),
        2,
        "the old (reloaded) config still runs"
    );
    agent.terminate();
}

/// `n` distinct body-weight readings: second `i` of 2026-11-02, a weight that varies with it.
fn distinct_weights(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            data_point(
                i,
                "body-weight",
                "2.0",
                format!(
                    r#"{{"body_weight":{{"value":{}.{:02},"unit":"kg"}},"effective_time_frame":{{"date_time":"2026-11-02T{:02}:{:02}:{:02}Z"}}}}"#,
                    60 + i % 40,
                    i % 100,
                    i / 3600,
                    i / 60 % 60,
                    i % 60
                ),
            )
        })
        .collect()
}

/// Stored Observations: (total, distinct effective times).
fn stored_times(h: &Harness) -> (usize, usize) {
    let mut times: Vec<String> = h
        .fhir
        .stored_observations()
        .iter()
        .map(|o| o["effectiveDateTime"].to_string())
        .collect();
    times.sort();
    let total = times.len();
    times.dedup();
    (total, times.len())
}

/// A burst on one hub while a reload rebinds it to another patient: every reading is filed
/// exactly once, under the patient bound when it arrived (the old one before the reload, the
/// new one after), never under both. The source takes the new table in place; a reconnect
/// would have the broker redeliver what was stored but not yet acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_during_a_rebind_files_each_reading_once() {
    let Some(broker) = Broker::mosquitto() else {
        return;
    };
    let h = Harness::new(broker).await;
    let mut agent = h.spawn_agent();
    let port = h.broker.port().unwrap();
    // 2,000 natively; fewer under qemu, where the agent runs at a fifth of the speed or less.
    let n = 2000 / emulation_factor() as usize;
    let burst = distinct_weights(n);
    let publisher = tokio::spawn(publish_to(port, TOPIC, burst, Duration::ZERO));
    // Rebind while the burst is being taken in: after a tenth is stored.
    h.wait_for_log(&agent, "reading stored", n / 10, Duration::from_secs(60));
    let original = std::fs::read_to_string(&h.config).unwrap();
    std::fs::write(&h.config, original.replace("MRN-0001", "MRN-0002")).unwrap();
    signal(agent.pid(), "HUP");
    h.wait_for_log(&agent, "configuration reloaded", 1, Duration::from_secs(30));
    publisher.await.unwrap();
    // One more after the reload: it must go to the new patient.
    publish_to(port, TOPIC, vec![weight_point(9999, 7777)], Duration::ZERO).await;

    h.wait_for_observations_of(&agent, n + 1, Duration::from_secs(180))
        .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let stored = h.fhir.stored_observations();
    assert_eq!(
        stored_times(&h),
        (n + 1, n + 1),
        "each reading exactly once (stored, distinct times)\n--- agent log:\n{}",
        agent.stderr()
    );
    let (old, new) = (
        observations_for(&h, "MRN-0001"),
        observations_for(&h, "MRN-0002"),
    );
    assert_eq!(old + new, n + 1);
    assert!(
        old >= n / 10,
        "readings before the reload kept their patient ({old})"
    );
    assert!(new >= 1, "the rebinding took effect ({new})");
    assert!(
        stored.iter().any(|o| o["effectiveDateTime"]
            .as_str()
            .is_some_and(|t| t.starts_with("2026-11-01T09:"))
            && o["subject"].to_string().contains("MRN-0002")),
        "the reading sent after the reload is the new patient's"
    );
    // The rebinding happened in place: one connection for the whole run.
    assert_eq!(
        agent.stderr().matches("MQTT connected").count(),
        1,
        "{}",
        agent.stderr()
    );
    agent.terminate();
}

/// Scale: a reload that adds 300 MQTT devices (a ward's worth of beds, each its own topic and
/// patient) subscribes all 300 filters on the running connection, in SUBSCRIBE packets of 8
/// with a bounded window, and one reading on each topic is filed under its own patient.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_adding_300_devices_subscribes_them_on_the_running_connection() {
    let Some(broker) = Broker::mosquitto() else {
        return;
    };
    let h = Harness::new(broker).await;
    let mut agent = h.spawn_agent();
    let beds = 300;
    let added: String = (0..beds)
        .map(|i| {
            format!(
                "\n[[devices]]\nname = \"bed-{i}\"\nkind = \"mqtt\"\ntopic = \"clinic/bed-{i}/omh\"\npatient = \"urn:oid:2.16.840.1.113883.19.5|MRN-B{i:03}\"\n"
            )
        })
        .collect();
    append_config(&h, &added);
    signal(agent.pid(), "HUP");
    wait_for_rebind_in_place(&h, &agent, Duration::from_secs(60));
    let log = agent.stderr();
    let round = log
        .lines()
        .filter(|l| l.contains("MQTT subscriptions acknowledged"))
        .nth(1)
        .unwrap();
    assert!(round.contains(&format!("granted={beds}")), "{round}");
    assert_eq!(
        log.matches("MQTT connected").count(),
        1,
        "no reconnect:\n{log}"
    );

    let messages: Vec<(String, String)> = (0..beds)
        .map(|i| {
            (
                format!("clinic/bed-{i}/omh"),
                weight_point(i, 6000 + i as i64),
            )
        })
        .collect();
    h.publish_messages(&messages).await;
    h.wait_for_observations_of(&agent, beds, Duration::from_secs(120))
        .await;
    for i in [0, 1, 150, beds - 1] {
        assert_eq!(observations_for(&h, &format!("MRN-B{i:03}")), 1, "bed {i}");
    }
    let subjects: std::collections::HashSet<String> = h
        .fhir
        .stored_observations()
        .iter()
        .map(|o| o["subject"].to_string())
        .collect();
    assert_eq!(subjects.len(), beds, "one patient per bed");
    agent.terminate();
}

/// kill -9 in the middle of a burst, the device rebound to the other patient, restarted:
/// four times, two of them while the agent reloads the new file (SIGHUP just before the kill). Whatever was stored but not yet acknowledged at a kill is redelivered by the
/// broker after the restart, made into a reading of the other patient (another identifier);
/// the store recognises the delivery (topic and payload digest) and keeps it once, under the
/// patient it first arrived under. Every reading is filed exactly once and none is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_a_burst_then_a_rebind_files_each_reading_once() {
    let Some(broker) = Broker::mosquitto() else {
        return;
    };
    let h = Harness::new(broker).await;
    let port = h.broker.port().unwrap();
    let n = 4000 / emulation_factor() as usize;
    let mut agent = h.spawn_agent();
    let publisher = tokio::spawn(publish_to(port, TOPIC, distinct_weights(n), Duration::ZERO));
    let mut logs = String::new();
    for cycle in 0..4 {
        // Killed once it has stored some of the burst, while the broker still sends.
        h.wait_for_log(&agent, "reading stored", n / 12, Duration::from_secs(120));
        let (from, to) = if cycle % 2 == 0 {
            ("MRN-0001", "MRN-0002")
        } else {
            ("MRN-0002", "MRN-0001")
        };
        let now = std::fs::read_to_string(&h.config).unwrap();
        assert!(now.contains(from));
        std::fs::write(&h.config, now.replace(from, to)).unwrap();
        if cycle % 2 == 1 {
            // Every other time the kill lands while the agent reloads the new file.
            signal(agent.pid(), "HUP");
            tokio::time::sleep(Duration::from_millis(5 * cycle as u64)).await;
        }
        agent.kill9();
        logs.push_str(&agent.stderr());
        agent = h.spawn_agent();
    }
    publisher.await.unwrap();
    h.wait_for_observations_of(&agent, n, Duration::from_secs(240))
        .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    logs.push_str(&agent.stderr());
    let (total, distinct) = stored_times(&h);
    assert_eq!(
        (total, distinct),
        (n, n),
        "each reading exactly once: {total} stored, {distinct} distinct\n--- agent logs:\n{}",
        tail(&logs, 60)
    );
    let (a, b) = (
        observations_for(&h, "MRN-0001"),
        observations_for(&h, "MRN-0002"),
    );
    assert_eq!(a + b, n);
    assert!(a > 0 && b > 0, "both bindings were used: {a} / {b}");
    agent.terminate();
}

// ---------------------------------------------------------------------------------------------
// watchdog

/// Receives sd_notify datagrams on a socket of the test.
struct NotifySocket {
    sock: std::os::unix::net::UnixDatagram,
    path: PathBuf,
}

impl NotifySocket {
    fn bind(dir: &Path) -> NotifySocket {
        let path = dir.join(format!("notify-{}.sock", free_port()));
        let sock = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        NotifySocket { sock, path }
    }

    /// Datagrams received within `window`.
    fn collect(&self, window: Duration) -> Vec<String> {
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

    /// Waits for `want`; returns what came before it.
    fn wait_for(&self, want: &str, timeout: Duration) -> Vec<String> {
        let end = Instant::now() + timeout * emulation_factor();
        let mut seen = Vec::new();
        while Instant::now() < end {
            for d in self.collect(Duration::from_millis(200)) {
                if d == want {
                    return seen;
                }
                seen.push(d);
            }
        }
        panic!("no {want:?} within {timeout:?}; got {seen:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_pings_the_watchdog_while_live_announces_reloads_and_a_wedged_one_is_restarted()
{
    let h = Harness::new(Broker::embedded()).await;
    let notify = NotifySocket::bind(h.dir.path());
    let socket = notify.path.display().to_string();
    let watchdog_usec = (2_000_000 * u64::from(emulation_factor())).to_string();
    let env = [
        ("NOTIFY_SOCKET", socket.as_str()),
        ("WATCHDOG_USEC", watchdog_usec.as_str()),
    ];
    let mut agent = h.spawn_agent_env(&env);
    notify.wait_for("READY=1", Duration::from_secs(30));
    let pings = notify.collect(Duration::from_secs(4) * emulation_factor());
    assert!(
        pings.iter().filter(|d| *d == "WATCHDOG=1").count() >= 3,
        "WatchdogSec=2s: a ping per second while live: {pings:?}"
    );

    signal(agent.pid(), "HUP");
    let before = notify.wait_for("READY=1", Duration::from_secs(30));
    assert!(before.contains(&"RELOADING=1".to_string()), "{before:?}");

    // Wedge the whole process, as a hung daemon looks to systemd: the pings stop.
    signal(agent.pid(), "STOP");
    let _ = notify.collect(Duration::from_millis(300));
    let silent = notify.collect(Duration::from_secs(4) * emulation_factor());
    assert!(silent.is_empty(), "a stopped agent sent {silent:?}");
    // A reading arrives meanwhile: the broker takes it, the wedged agent cannot ack it.
    h.publish(&[bp_point(7, 127, 77)]).await;
    // What systemd then does: kill it (SIGABRT, then SIGKILL) and start it again.
    signal(agent.pid(), "KILL");
    agent.terminate();
    let mut agent = h.spawn_agent_env(&env);
    notify.wait_for("READY=1", Duration::from_secs(30));
    h.wait_for_observations(1, Duration::from_secs(60)).await;
    assert!(notify
        .collect(Duration::from_secs(3) * emulation_factor())
        .contains(&"WATCHDOG=1".to_string()));
    agent.terminate();
}

/// The liveness check, not a timer: one task wedged (the pipeline, waiting for a store write
/// that cannot run) stops the pings while the rest of the agent, the watchdog task included,
/// runs on; they resume when it makes progress again.
#[test]
fn a_wedged_pipeline_stops_the_watchdog_pings_and_they_resume_when_it_recovers() {
    use tokio_util::sync::CancellationToken;
    use vitalgate::ops::notify::Notifier;
    use vitalgate::ops::watchdog::WatchdogSettings;

    let dir = tempfile::tempdir().unwrap();
    let pki = vitalgate_devkit::pki::TestPki::generate(&dir.path().join("pki")).unwrap();
    let path = dir.path().join("vitalgate.toml");
    std::fs::write(
        &path,
        format!(
            r#"[gateway]
id = "wd-gw"
data_dir = "data"
[store]
key_file = "store.key"
[uplink]
fhir_base = "https://127.0.0.1:9/fhir"
ca_file = "{ca}"
client_cert = "{cert}"
client_key = "{key}"
[[simulators]]
name = "sim"
kind = "scale"
patient = "Patient/p1"
interval_ms = 1000
"#,
            ca = pki.ca_cert.display(),
            cert = pki.client_cert.display(),
            key = pki.client_key.display(),
        ),
    )
    .unwrap();
    let cfg = vitalgate::config::Config::load(&path).unwrap();
    vitalgate::store::StoreKey::init(&cfg.store.key_file).unwrap();
    let notify = NotifySocket::bind(dir.path());
    let mut app = vitalgate::app::App::build(cfg).unwrap();
    app.set_watchdog(WatchdogSettings {
        notifier: Some(Notifier::at(notify.path.clone())),
        check_every: Duration::from_millis(200),
        max_silence: Duration::from_millis(1500) * emulation_factor(),
    });
    // One blocking thread: the store's work runs there (spawn_blocking).
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(1)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let shutdown = CancellationToken::new();
        let run = tokio::spawn(app.run(shutdown.clone()));
        notify.wait_for("READY=1", Duration::from_secs(30));
        let pings = notify.collect(Duration::from_secs(2) * emulation_factor());
        assert!(
            pings.iter().filter(|d| *d == "WATCHDOG=1").count() >= 3,
            "{pings:?}"
        );

        // Wedge: the only blocking thread is taken; the simulator keeps producing, so the
        // pipeline's next store write waits forever.
        let (release, wait) = std::sync::mpsc::channel::<()>();
        let blocker = tokio::task::spawn_blocking(move || {
            let _ = wait.recv();
        });
        let stalled_before = vitalgate::telemetry::COUNTERS
            .tasks_stalled
            .load(std::sync::atomic::Ordering::Relaxed);
        // The allowance (1.5 s) and a reading (1 s) pass; after that, silence.
        let _ = notify.collect(Duration::from_secs(4) * emulation_factor());
        let silent = notify.collect(Duration::from_secs(3) * emulation_factor());
        assert!(
            silent.is_empty(),
            "a wedged pipeline must stop the pings: {silent:?}"
        );
        assert!(
            vitalgate::telemetry::COUNTERS
                .tasks_stalled
                .load(std::sync::atomic::Ordering::Relaxed)
                > stalled_before
        );
        assert!(
            !run.is_finished(),
            "the agent itself runs on (systemd will restart it)"
        );

        release.send(()).unwrap();
        blocker.await.unwrap();
        notify.wait_for("WATCHDOG=1", Duration::from_secs(10));
        shutdown.cancel();
        let summary = tokio::time::timeout(Duration::from_secs(30), run)
            .await
            .unwrap()
            .unwrap()
            .expect("clean stop");
        assert!(
            summary.pending_at_exit >= 1,
            "the simulator's readings were stored"
        );
    });
}

// ---------------------------------------------------------------------------------------------
// fleet: mosquitto with the ACL from the docs

struct AuthBroker {
    port: u16,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Drop for AuthBroker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Debian's mosquitto with passwords and `docs/fleet/mosquitto.acl`; `None` (skip) when it is
/// not installed, unless CI requires it.
fn auth_broker(users: &[&str]) -> Option<AuthBroker> {
    let bin = ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"]
        .into_iter()
        .find(|p| Path::new(p).exists());
    let Some(bin) = bin else {
        assert!(
            std::env::var("VITALGATE_REQUIRE_MOSQUITTO").is_err(),
            "VITALGATE_REQUIRE_MOSQUITTO is set but mosquitto is not installed"
        );
        eprintln!("mosquitto not installed: the fleet tests run in .ci/run");
        return None;
    };
    let dir = tempfile::tempdir().unwrap();
    let passwd = dir.path().join("passwd");
    for (i, u) in users.iter().enumerate() {
        let mut c = Command::new("mosquitto_passwd");
        if i == 0 {
            c.arg("-c");
        }
        let ok = c
            .args(["-b"])
            .arg(&passwd)
            .arg(u)
            .arg(format!("pw-{u}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap()
            .success();
        assert!(ok, "mosquitto_passwd for {u}");
    }
    let acl = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/fleet/mosquitto.acl");
    let port = free_port();
    let conf = dir.path().join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!(
            "listener {port} 127.0.0.1\nallow_anonymous false\npassword_file {}\nacl_file {}\npersistence false\n",
            passwd.display(),
            acl.display()
        ),
    )
    .unwrap();
    let child = Command::new(bin)
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "mosquitto did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    Some(AuthBroker {
        port,
        child,
        _dir: dir,
    })
}

/// (topic, payload) of every message a client received.
type Received = std::sync::Arc<std::sync::Mutex<Vec<(String, Vec<u8>)>>>;

/// A client of the auth broker that records every message it receives.
struct Client {
    client: AsyncClient,
    got: Received,
    suback: std::sync::Arc<std::sync::Mutex<Vec<rumqttc::SubscribeReasonCode>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Client {
    async fn connect(port: u16, user: &str) -> Client {
        let mut o = MqttOptions::new(format!("{user}-{}", free_port()), "127.0.0.1", port);
        o.set_credentials(user, format!("pw-{user}"));
        o.set_keep_alive(Duration::from_secs(5));
        let (client, mut el) = AsyncClient::new(o, 64);
        let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let suback = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (g, s) = (got.clone(), suback.clone());
        let (tx, rx) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            let mut tx = Some(tx);
            while let Ok(ev) = el.poll().await {
                match ev {
                    Event::Incoming(Packet::ConnAck(_)) => {
                        if let Some(t) = tx.take() {
                            let _ = t.send(());
                        }
                    }
                    Event::Incoming(Packet::Publish(p)) => g
                        .lock()
                        .unwrap()
                        .push((p.topic.clone(), p.payload.to_vec())),
                    Event::Incoming(Packet::SubAck(a)) => s.lock().unwrap().extend(a.return_codes),
                    _ => {}
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(10), rx)
            .await
            .expect("CONNACK")
            .expect("connected");
        Client {
            client,
            got,
            suback,
            task,
        }
    }

    fn messages(&self, topic: &str) -> Vec<Value> {
        self.got
            .lock()
            .unwrap()
            .iter()
            .filter(|(t, _)| t == topic)
            .map(|(_, p)| {
                serde_json::from_slice(p)
                    .unwrap_or(Value::String(String::from_utf8_lossy(p).into()))
            })
            .collect()
    }

    fn all_payloads(&self) -> String {
        self.got
            .lock()
            .unwrap()
            .iter()
            .map(|(_, p)| String::from_utf8_lossy(p).into_owned())
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_documented_acl_a_gateway_can_neither_read_nor_write_another_gateways_topics() {
    let Some(b) = auth_broker(&["gw-a", "gw-b", "fleet-monitor"]) else {
        return;
    };
    let monitor = Client::connect(b.port, "fleet-monitor").await;
    monitor
        .client
        .subscribe("vitalgate/+/status", QoS::AtLeastOnce)
        .await
        .unwrap();
    monitor
        .client
        .subscribe("vitalgate/+/alarm", QoS::AtLeastOnce)
        .await
        .unwrap();
    let a = Client::connect(b.port, "gw-a").await;
    let gb = Client::connect(b.port, "gw-b").await;
    a.client
        .subscribe("vitalgate/gw-b/#", QoS::AtLeastOnce)
        .await
        .unwrap();
    wait_until("SUBACKs", Duration::from_secs(10), || {
        monitor.suback.lock().unwrap().len() == 2 && !a.suback.lock().unwrap().is_empty()
    })
    .await;

    // gw-a forges gw-b's status, then publishes its own: messages of one client on one
    // connection arrive in order, so once its own is in, the forged one would have been too.
    a.client
        .publish("vitalgate/gw-b/status", QoS::AtLeastOnce, true, "forged")
        .await
        .unwrap();
    a.client
        .publish("vitalgate/gw-b/alarm", QoS::AtLeastOnce, false, "forged")
        .await
        .unwrap();
    a.client
        .publish("vitalgate/gw-a/status", QoS::AtLeastOnce, true, "a-own")
        .await
        .unwrap();
    wait_until("gw-a's own status", Duration::from_secs(10), || {
        !monitor.messages("vitalgate/gw-a/status").is_empty()
    })
    .await;
    assert!(
        monitor.messages("vitalgate/gw-b/status").is_empty(),
        "gw-a wrote gw-b's status"
    );
    assert!(
        monitor.messages("vitalgate/gw-b/alarm").is_empty(),
        "gw-a wrote gw-b's alarm"
    );

    // gw-b's own messages reach the monitor, never gw-a.
    gb.client
        .publish("vitalgate/gw-b/status", QoS::AtLeastOnce, true, "b-own")
        .await
        .unwrap();
    gb.client
        .publish("vitalgate/gw-b/alarm", QoS::AtLeastOnce, false, "b-alarm")
        .await
        .unwrap();
    wait_until(
        "gw-b's messages at the monitor",
        Duration::from_secs(10),
        || monitor.messages("vitalgate/gw-b/alarm").len() == 1,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(
        a.all_payloads().is_empty(),
        "gw-a read gw-b's topics: {}",
        a.all_payloads()
    );
    // A gateway cannot read its own status topic either (write-only): nothing leaks back.
    assert_eq!(
        monitor.messages("vitalgate/gw-b/status"),
        vec![Value::String("b-own".into())]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_status_is_retained_republished_on_change_and_periodically_with_a_last_will_and_alarms(
) {
    let Some(b) = auth_broker(&["e2e-gw", "fleet-monitor"]) else {
        return;
    };
    let mut h = Harness::new(Broker::embedded()).await;
    std::fs::write(h.dir.path().join("fleet.password"), "pw-e2e-gw\n").unwrap();
    append_config(
        &h,
        &format!(
            "\n[fleet]\nstatus_interval_secs = 10\n[fleet.mqtt]\nbroker = \"mqtt://127.0.0.1:{}\"\nusername = \"e2e-gw\"\npassword_file = \"fleet.password\"\nkeep_alive_secs = 5\n",
            b.port
        ),
    );
    let status = "vitalgate/e2e-gw/status";
    let alarm = "vitalgate/e2e-gw/alarm";
    let mut agent = h.spawn_agent();
    h.wait_for_log(
        &agent,
        "fleet reporting starting",
        1,
        Duration::from_secs(30),
    );

    // A monitor that connects later still gets the retained status.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let monitor = Client::connect(b.port, "fleet-monitor").await;
    monitor
        .client
        .subscribe(status, QoS::AtLeastOnce)
        .await
        .unwrap();
    monitor
        .client
        .subscribe(alarm, QoS::AtLeastOnce)
        .await
        .unwrap();
    wait_until(
        "the retained online status",
        Duration::from_secs(20),
        || {
            monitor
                .messages(status)
                .iter()
                .any(|m| m["state"] == "online")
        },
    )
    .await;
    let first = monitor.messages(status).last().cloned().unwrap();
    assert_eq!(first["schema"], "vitalgate.fleet.status/1");
    assert_eq!(first["gateway"], "e2e-gw");
    assert_eq!(first["detail"]["devices"][0]["name"], "hub-1");

    // Alarms: the test certificate expires within the 30-day warning.
    h.publish(&[bp_point(1, 121, 79)]).await;
    h.wait_for_observations(1, Duration::from_secs(60)).await;
    wait_until(
        "a certificate_expiring alarm",
        Duration::from_secs(20),
        || {
            monitor.messages(alarm).iter().any(|m| {
                m["kind"] == "certificate_expiring"
                    && m["state"] == "raised"
                    && m["schema"] == "vitalgate.fleet.alarm/1"
            }) || monitor.messages(status).iter().any(|m| {
                m["detail"]["alarms"]
                    .as_array()
                    .is_some_and(|a| a.iter().any(|x| x["kind"] == "certificate_expiring"))
            })
        },
    )
    .await;

    // On change: the server goes away, uploads fail, the status says so at once.
    h.fhir.stop().await;
    h.publish(&[bp_point(2, 122, 78)]).await;
    wait_until(
        "a status with the uplink retrying",
        Duration::from_secs(20),
        || {
            monitor
                .messages(status)
                .iter()
                .any(|m| m["detail"]["uplink"]["state"] == "retrying")
        },
    )
    .await;
    // Periodically, with nothing changing: another one within the 10 s interval (plus slack).
    let n = monitor.messages(status).len();
    wait_until("a periodic status", Duration::from_secs(20), || {
        monitor.messages(status).len() > n
    })
    .await;

    // The last will: the broker announces a gateway that vanished.
    signal(agent.pid(), "KILL");
    agent.terminate();
    wait_until("the last will", Duration::from_secs(20), || {
        monitor
            .messages(status)
            .last()
            .is_some_and(|m| m["state"] == "offline")
    })
    .await;
    let late = Client::connect(b.port, "fleet-monitor").await;
    late.client
        .subscribe(status, QoS::AtLeastOnce)
        .await
        .unwrap();
    wait_until(
        "the retained offline status",
        Duration::from_secs(10),
        || {
            late.messages(status)
                .last()
                .is_some_and(|m| m["state"] == "offline")
        },
    )
    .await;

    // A clean stop says offline too (a last will is only for lost connections).
    h.fhir.restart().await.unwrap();
    let mut agent = h.spawn_agent();
    wait_until("online again", Duration::from_secs(30), || {
        monitor
            .messages(status)
            .last()
            .is_some_and(|m| m["state"] == "online")
    })
    .await;
    agent.terminate();
    wait_until(
        "offline after a clean stop",
        Duration::from_secs(20),
        || {
            monitor
                .messages(status)
                .last()
                .is_some_and(|m| m["state"] == "offline" && m["time"].is_string())
        },
    )
    .await;
    let everything = monitor.all_payloads();
    assert!(
        !everything.contains("MRN") && !everything.contains("Patient/"),
        "PHI on the fleet topics"
    );
}

// ---------------------------------------------------------------------------------------------
// doctor

/// A private system bus with a fake org.bluez (tests/ops_data/fake_bluez.py).
struct FakeBluez {
    address: String,
    bus: Child,
    bluez: Child,
    _dir: tempfile::TempDir,
}

impl FakeBluez {
    fn start(mode: &str) -> FakeBluez {
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("bus.conf");
        std::fs::write(
            &conf,
            format!(
                r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN" "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig><type>system</type><listen>unix:dir={}</listen><auth>EXTERNAL</auth>
<policy context="default"><allow user="*"/><allow own="*"/>
<allow send_type="method_call"/><allow send_type="method_return"/><allow send_type="error"/><allow send_type="signal"/>
<allow receive_type="method_call"/><allow receive_type="method_return"/><allow receive_type="error"/><allow receive_type="signal"/>
</policy></busconfig>"#,
                dir.path().display()
            ),
        )
        .unwrap();
        let mut bus = Command::new("dbus-daemon")
            .arg(format!("--config-file={}", conf.display()))
            .args(["--print-address", "--nofork"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("dbus-daemon");
        let mut address = String::new();
        BufReader::new(bus.stdout.take().unwrap())
            .read_line(&mut address)
            .unwrap();
        let address = address.trim().to_string();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/ops_data/fake_bluez.py");
        let python = if Path::new("/usr/bin/python3").exists() {
            "/usr/bin/python3"
        } else {
            "python3"
        };
        let mut bluez = Command::new(python)
            .arg(script)
            .arg(mode)
            .env("DBUS_SYSTEM_BUS_ADDRESS", &address)
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 with python3-dbus and python3-gi");
        let mut ready = String::new();
        BufReader::new(bluez.stdout.take().unwrap())
            .read_line(&mut ready)
            .unwrap();
        assert_eq!(ready.trim(), "ready");
        FakeBluez {
            address,
            bus,
            bluez,
            _dir: dir,
        }
    }
}

impl Drop for FakeBluez {
    fn drop(&mut self) {
        for c in [&mut self.bluez, &mut self.bus] {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A pseudo-terminal pair (socat); the first link plays the serial port.
struct Pty {
    link: PathBuf,
    child: Child,
}

impl Pty {
    fn open(dir: &Path) -> Pty {
        let link = dir.join("ttyV0");
        let child = Command::new("socat")
            .arg(format!("pty,raw,echo=0,link={}", link.display()))
            .arg(format!(
                "pty,raw,echo=0,link={}",
                dir.join("ttyV1").display()
            ))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("socat");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !link.exists() {
            assert!(Instant::now() < deadline, "socat made no pty");
            std::thread::sleep(Duration::from_millis(20));
        }
        Pty { link, child }
    }
}

impl Drop for Pty {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Fake `timedatectl` and `bluetoothctl` first on PATH (timedated and BlueZ do not run here).
fn fake_tools(dir: &Path, ntp_synchronized: &str) -> String {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    for (name, body) in [
        (
            "timedatectl",
            format!("#!/bin/sh\necho {ntp_synchronized}\n"),
        ),
        (
            "bluetoothctl",
            "#!/bin/sh\necho 'bluetoothctl: 5.66'\n".to_string(),
        ),
    ] {
        let p = bin.join(name);
        std::fs::write(&p, body).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    )
}

fn doctor(h: &Harness, env: &[(&str, &str)]) -> (bool, String) {
    let out = common::vitalgate()
        .args(["doctor", "--config"])
        .arg(&h.config)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

fn devices_for_doctor(port: &str) -> String {
    format!(
        "\n[[devices]]\nname = \"spo2\"\nkind = \"serial\"\nport = \"{port}\"\nprotocol = \"nonin-df7\"\npatient = \"Patient/7\"\n\n[[devices]]\nname = \"cuff\"\nkind = \"ble\"\naddress = \"00:09:1F:AA:BB:CC\"\nprofile = \"blood-pressure\"\npatient = \"Patient/8\"\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_passes_every_check_on_a_healthy_gateway() {
    let h = Harness::new(Broker::embedded()).await;
    let pty = Pty::open(h.dir.path());
    append_config(&h, &devices_for_doctor(&pty.link.display().to_string()));
    let bluez = FakeBluez::start("powered");
    let path = fake_tools(h.dir.path(), "yes");
    let (ok, out) = doctor(
        &h,
        &[("DBUS_SYSTEM_BUS_ADDRESS", &bluez.address), ("PATH", &path)],
    );
    // The disk check reads the real filesystem the test's data directory is on. On a build
    // machine that is itself nearly full (90 % is the doctor's limit) it rightly fails: then
    // only its consistency with `df` is checked, and the rest must still pass.
    let roomy = host_disk_is_roomy(h.dir.path());
    if !roomy {
        eprintln!("the build machine's disk is nearly full: ✓ disk not expected\n{out}");
        assert!(out.contains("✗ disk") || out.contains("✓ disk"), "{out}");
    }
    for line in [
        "✓ config",
        "✓ store key",
        "✓ store",
        "✓ clock",
        "✓ bluetooth",
        "✓ serial spo2",
        "✓ MQTT broker",
        "✓ uplink certificate",
        "✓ uplink ",
    ] {
        assert!(out.contains(line), "missing {line:?}:\n{out}");
    }
    assert!(
        out.contains("BlueZ 5.66, adapter /org/bluez/hci0 powered"),
        "{out}"
    );
    assert!(out.contains("TLS with the client certificate ok"), "{out}");
    if roomy {
        assert!(out.contains("✓ disk"), "{out}");
        assert!(!out.contains('✗'), "{out}");
        assert!(ok, "exit 0 when everything passes:\n{out}");
    } else {
        assert_eq!(
            out.matches('✗').count(),
            usize::from(out.contains("✗ disk"))
        );
        assert_eq!(
            ok,
            !out.contains('✗'),
            "exit status follows the checks:\n{out}"
        );
    }
}

/// Is the filesystem holding `dir` clearly below the doctor's disk limits (85 % used and
/// 1 GiB free, against its 90 % and 100 MiB), by `df`?
fn host_disk_is_roomy(dir: &Path) -> bool {
    let out = Command::new("df").arg("-Pk").arg(dir).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let fields: Vec<&str> = text
        .lines()
        .nth(1)
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    let num = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
    match (num(2), num(3)) {
        (Some(used), Some(avail)) if used + avail > 0 => {
            used * 100 / (used + avail) < 85 && avail > 1024 * 1024
        }
        _ => false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_names_every_broken_thing_with_its_fix_and_exits_non_zero() {
    let h = Harness::with_rogue_server(Broker::None).await;
    let dead_port = free_port();
    append_config(
        &h,
        &format!(
            "\n[mqtt]\nbroker = \"mqtt://127.0.0.1:{dead_port}\"\n{}",
            devices_for_doctor(&h.dir.path().join("ttyUSB9").display().to_string())
        ),
    );
    // A store key others can read.
    let key = h.dir.path().join("store.key");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let bluez = FakeBluez::start("unpowered");
    let path = fake_tools(h.dir.path(), "no");
    let (ok, out) = doctor(
        &h,
        &[("DBUS_SYSTEM_BUS_ADDRESS", &bluez.address), ("PATH", &path)],
    );
    assert!(!ok, "exit non-zero:\n{out}");
    for (check, fix) in [
        ("✗ store key", "chmod 600"),
        ("✗ clock", "timedatectl set-ntp true"),
        ("✗ bluetooth", "power on"),
        ("✗ serial spo2", "plug the device"),
        ("✗ MQTT broker", "check the broker runs"),
        ("✗ uplink ", "not from uplink.ca_file"),
    ] {
        let at = out
            .find(check)
            .unwrap_or_else(|| panic!("missing {check:?}:\n{out}"));
        let next = out[at..].lines().nth(1).unwrap_or("");
        assert!(
            next.contains("fix:") && next.contains(fix),
            "{check}: expected a fix with {fix:?}, got {next:?}\n{out}"
        );
    }
    assert!(out.contains("✓ config"), "{out}");
}
