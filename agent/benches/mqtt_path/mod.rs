//! Ingest to durable through the real MQTT path, shared by the `mqtt_ingest` and
//! `store_throughput` benches: the real `vitalgate` binary, Debian's mosquitto, the uplink down.
//! Latency = the time the agent logged "reading stored" (after the group commit's fdatasync,
//! when it sends its PUBACK) minus the time the bench handed the reading to its MQTT client,
//! both on this machine's wall clock; readings are matched in order (one topic, QoS 1, FIFO).
#![allow(dead_code)] // each bench uses the part it needs

use std::time::{Duration, Instant};

use crate::harness::*;

/// Counts "reading stored" until `target`, or until the count has not moved for `stall`.
/// Returns (count, time of the last change since `start`).
pub fn settle(agent: &Agent, start: Instant, target: usize, stall: Duration) -> (usize, Duration) {
    let mut last = 0;
    let mut last_change = start.elapsed();
    loop {
        let have = agent.stderr().matches("reading stored").count();
        if have != last {
            last = have;
            last_change = start.elapsed();
        }
        if have >= target || start.elapsed() > last_change + stall {
            return (have, last_change);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Ingest-to-durable latency through the real MQTT path (module doc).
pub struct Latency {
    pub variant: String,
    pub stored: usize,
    pub per_sec: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

pub async fn latency(group: usize, pace: Duration, n: usize) -> Option<Latency> {
    let broker = Broker::mosquitto()?;
    let mut h = Harness::new(broker).await;
    h.fhir.stop().await;
    let agent = h.spawn_agent();
    let until = Instant::now() + Duration::from_secs(10);
    while !agent.stderr().contains("MQTT subscriptions acknowledged") && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(50));
    }
    let port = h.broker.port()?;
    let (client, mut el) = publisher(port, n + 8);
    let poller = tokio::spawn(async move {
        await_pubacks(&mut el, n, Duration::from_secs(120)).await;
    });
    let mut sent = Vec::with_capacity(n);
    let start = Instant::now();
    let mut i = 0;
    while i < n {
        for _ in 0..group.min(n - i) {
            let line = bp_point(i, 100 + (i % 80) as i64, 60 + (i % 30) as i64);
            // The edge: the wall clock the agent's log lines are stamped with.
            #[allow(clippy::disallowed_methods)]
            sent.push(chrono::Utc::now());
            client
                .publish(TOPIC, rumqttc::QoS::AtLeastOnce, false, line.into_bytes())
                .await
                .ok()?;
            i += 1;
        }
        tokio::time::sleep(pace).await;
    }
    let _ = poller.await;
    let (stored, at) = settle(&agent, start, n, Duration::from_secs(15));
    let stamps: Vec<chrono::DateTime<chrono::FixedOffset>> = agent
        .stderr()
        .lines()
        .filter(|l| l.contains("reading stored"))
        .filter_map(|l| chrono::DateTime::parse_from_rfc3339(l.split_whitespace().next()?).ok())
        .collect();
    let mut ms: Vec<f64> = stamps
        .iter()
        .zip(&sent)
        .map(|(done, start)| {
            (done.with_timezone(&chrono::Utc) - *start)
                .num_microseconds()
                .unwrap_or(0) as f64
                / 1e3
        })
        .collect();
    ms.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| {
        ms.get(((ms.len() as f64 * p) as usize).min(ms.len().saturating_sub(1)))
            .copied()
            .unwrap_or(f64::NAN)
    };
    Some(Latency {
        variant: if group == 1 {
            format!("MQTT path, 1 reading every {} ms", pace.as_millis())
        } else if group >= n {
            format!("MQTT path, burst of {n}")
        } else {
            format!("MQTT path, {group} readings every {} ms", pace.as_millis())
        },
        stored,
        per_sec: stored as f64 / at.as_secs_f64().max(1e-9),
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
        max_ms: ms.last().copied().unwrap_or(f64::NAN),
    })
}
