//! MQTT ingest, measured end to end: the real `vitalgate` binary, Debian's mosquitto, a real
//! `mosquitto_pub -l -q 1`, the uplink down (so every reading stays in the outbox and the agent
//! log counts what was stored).
//!
//! Run: `cargo bench -p vitalgate --bench mqtt_ingest` (or `--profile dev` for a quick,
//! unoptimised run). `VITALGATE_BIN_UNDER_TEST=/path/to/vitalgate` measures another build
//! (e.g. an older commit built in a scratch directory) with the same harness; the
//! `MQTT_BENCH_BASELINE_BIN=/path/to/old/vitalgate` runs every scenario against that build first,
//! in the same run, and adds a ratio column; the
//! `MQTT_BENCH_BURSTS` variable (comma-separated, default `2000,20000`) picks the burst sizes.
//!
//! Scenarios:
//! - `burst N`: N readings published as fast as `mosquitto_pub` can; stored = readings the agent
//!   stored (counted until everything is stored, or nothing more is for 15 s: a stall);
//!   readings/s = stored / (time of the last store - start of the publish).
//! - `1000 topics`: 1,000 MQTT devices, one reading published on each (after giving the agent
//!   10 s to subscribe); stored = readings delivered to the store.
//!
//! - ingest to durable through the real MQTT path (issue #11's store table): readings published
//!   one at a time every 20 ms, then in groups of 16 every 40 ms (an MQTT inflight window);
//!   latency = the time the agent logged "reading stored" (after the group commit's fdatasync,
//!   when it sends its PUBACK) minus the time the bench handed the reading to its MQTT client,
//!   both on this machine's wall clock; readings are matched in order (one topic, QoS 1, FIFO).
//!   `MQTT_BENCH_LATENCY_N` (default 1,000) readings per variant.
//!
//! Numbers depend on the machine (fsync latency above all); compare rows within one run.

#[path = "../../tests/common/mod.rs"]
mod common;
#[path = "../../tests/harness/mod.rs"]
mod harness;
mod mqtt_path;

use std::time::{Duration, Instant};

use harness::*;

struct Row {
    scenario: String,
    published: usize,
    stored: usize,
    seconds: f64,
}

use mqtt_path::{latency, settle, Latency};

async fn burst(n: usize) -> Option<Row> {
    let broker = Broker::mosquitto()?;
    let mut h = Harness::new(broker).await;
    h.fhir.stop().await;
    let agent = h.spawn_agent();
    let port = h.broker.port()?;
    let lines: Vec<String> = (0..n)
        .map(|i| bp_point(i, 100 + (i % 80) as i64, 60 + (i % 30) as i64))
        .collect();
    let start = Instant::now();
    let publisher = MosquittoPub::spawn(port, TOPIC, &lines, h.dir.path());
    let (stored, at) = settle(&agent, start, n, Duration::from_secs(15));
    let confirmed = publisher.wait().iter().filter(|&&c| c).count();
    Some(Row {
        scenario: format!("burst {n}"),
        published: confirmed,
        stored,
        seconds: at.as_secs_f64(),
    })
}

async fn topics() -> Option<Row> {
    let broker = Broker::mosquitto()?;
    let devices: Vec<MqttDevice> = (0..1000)
        .map(|i| MqttDevice {
            name: format!("dev-{i:04}"),
            topic: format!("clinic/room-{i:04}/omh"),
            patient: format!("urn:oid:2.16.840.1.113883.19.5|MRN-{i:04}"),
        })
        .collect();
    let mut h = Harness::with_mqtt_devices(broker, devices.clone()).await;
    h.fhir.stop().await;
    let agent = h.spawn_agent_with(false);
    // Give it time to subscribe (a build that deadlocks never does).
    let until = Instant::now() + Duration::from_secs(10);
    while !agent.stderr().contains("MQTT subscriptions acknowledged") && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(500));
    let messages: Vec<(String, String)> = devices
        .iter()
        .enumerate()
        .map(|(i, d)| (d.topic.clone(), bp_point(i, 120, 80)))
        .collect();
    let start = Instant::now();
    h.publish_messages(&messages).await;
    let (stored, at) = settle(&agent, start, messages.len(), Duration::from_secs(10));
    Some(Row {
        scenario: "1000 topics".into(),
        published: messages.len(),
        stored,
        seconds: at.as_secs_f64(),
    })
}

/// Every scenario, against the build `VITALGATE_BIN_UNDER_TEST` names (unset: this build).
fn run_all(rt: &tokio::runtime::Runtime, bursts: &[usize]) -> Vec<Row> {
    let mut rows = Vec::new();
    for &n in bursts {
        rows.extend(rt.block_on(burst(n)));
    }
    rows.extend(rt.block_on(topics()));
    rows
}

fn rate(r: &Row) -> f64 {
    if r.seconds > 0.0 {
        r.stored as f64 / r.seconds
    } else {
        0.0
    }
}

fn main() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let build = std::env::var("VITALGATE_BIN_UNDER_TEST")
        .unwrap_or_else(|_| format!("this build ({})", env!("CARGO_BIN_EXE_vitalgate")));
    let bursts: Vec<usize> = std::env::var("MQTT_BENCH_BURSTS")
        .unwrap_or_else(|_| "2000,20000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    // The baseline (e.g. the pre-issue build) runs first, in the same run and on the same broker
    // binary, so the ratios compare like with like.
    let baseline = std::env::var("MQTT_BENCH_BASELINE_BIN").ok();
    let mut base_rows = Vec::new();
    if let Some(bin) = &baseline {
        let under_test = std::env::var_os("VITALGATE_BIN_UNDER_TEST");
        std::env::set_var("VITALGATE_BIN_UNDER_TEST", bin);
        base_rows = run_all(&rt, &bursts);
        match under_test {
            Some(v) => std::env::set_var("VITALGATE_BIN_UNDER_TEST", v),
            None => std::env::remove_var("VITALGATE_BIN_UNDER_TEST"),
        }
    }
    let rows = run_all(&rt, &bursts);
    let latency_n: usize = std::env::var("MQTT_BENCH_LATENCY_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let lat: Vec<Latency> = [(1, 20), (16, 40)]
        .into_iter()
        .filter_map(|(g, ms)| rt.block_on(latency(g, Duration::from_millis(ms), latency_n)))
        .collect();
    if rows.is_empty() {
        println!("mosquitto is not installed: nothing measured");
        return;
    }
    println!("agent: {build}");
    if let Some(bin) = &baseline {
        println!("baseline: {bin}");
    }
    println!(
        "| {:<8} | {:<12} | {:>9} | {:>7} | {:>8} | {:>11} | {:>18} |",
        "build", "scenario", "published", "stored", "seconds", "readings/s", "stored vs baseline"
    );
    println!(
        "|{:-<10}|{:-<14}|{:->11}|{:->9}|{:->10}|{:->13}|{:->20}|",
        "", "", "", "", "", "", ""
    );
    for r in &base_rows {
        println!(
            "| {:<8} | {:<12} | {:>9} | {:>7} | {:>8.2} | {:>11.0} | {:>18} |",
            "baseline",
            r.scenario,
            r.published,
            r.stored,
            r.seconds,
            rate(r),
            "1.00x"
        );
    }
    for r in &rows {
        let vs = match base_rows.iter().find(|b| b.scenario == r.scenario) {
            Some(b) if b.stored > 0 => format!("{:.2}x", r.stored as f64 / b.stored as f64),
            Some(_) => "baseline stored 0".to_string(),
            None => "-".to_string(),
        };
        println!(
            "| {:<8} | {:<12} | {:>9} | {:>7} | {:>8.2} | {:>11.0} | {:>18} |",
            "this",
            r.scenario,
            r.published,
            r.stored,
            r.seconds,
            rate(r),
            vs
        );
    }
    println!();
    println!("ingest to durable through the real MQTT path (this build; latency = publish to \"reading stored\")");
    println!(
        "| {:<40} | {:>7} | {:>10} | {:>7} | {:>7} | {:>7} |",
        "variant", "stored", "readings/s", "p50 ms", "p99 ms", "max ms"
    );
    println!(
        "|{:-<42}|{:->9}|{:->12}|{:->9}|{:->9}|{:->9}|",
        "", "", "", "", "", ""
    );
    for l in &lat {
        println!(
            "| {:<40} | {:>7} | {:>10.0} | {:>7.2} | {:>7.2} | {:>7.2} |",
            l.variant, l.stored, l.per_sec, l.p50_ms, l.p99_ms, l.max_ms
        );
    }
}
