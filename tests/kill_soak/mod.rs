//! Issue #11's crash test, shared by the test (`tests/store_kill.rs`, a CI-sized count) and the
//! soak bench (`agent/benches/store_kill.rs`, 200 kills by default, prints a table).
//!
//! The real binary ingests MQTT readings from Debian's mosquitto (the agent's session is
//! persistent: the broker keeps what the agent has not acknowledged) and uploads them to the
//! devkit's FHIR server, which commits each transaction and then holds its answer for a while
//! ([`Mode::DelayAfterCommit`]): the window in which the server has the readings and the agent
//! has not yet deleted them. A publisher sends readings in random chunks at random intervals
//! in the background; meanwhile the agent is started and SIGKILLed over and over: after a
//! random time, or (every third kill) aimed at that window (killed a random fraction of the
//! delay after the server reports a commit). Then the agent runs undisturbed until the server
//! has everything. Every acknowledged reading (the broker gave the publisher a PUBACK) must be
//! on the server exactly once.
#![allow(dead_code)]

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rumqttc::QoS;
use tokio::sync::broadcast;
use vitalgate_devkit::fhir_server::{EntryEvent, Mode};

use crate::harness::*;

/// What one run saw. `lost` and `duplicates` must be 0.
#[derive(Debug, Clone)]
pub struct KillReport {
    pub seed: u64,
    pub kills: usize,
    /// Kills aimed at a commit the server had just reported (before its answer went out).
    pub aimed_at_commit: usize,
    /// Readings published; every one was acknowledged by the broker (PUBACK), or the run fails.
    pub acknowledged: usize,
    /// Distinct Observation identifiers on the server.
    pub on_server: usize,
    /// Acknowledged readings missing on the server (`acknowledged - on_server`, at least 0).
    pub lost: usize,
    /// Observations beyond one per acknowledged reading: stored twice under one identifier, or
    /// under an identifier of their own.
    pub duplicates: usize,
    /// Entries the server answered `200 OK` (already committed): readings the agent sent
    /// again after a kill between the server's commit and its local delete.
    pub resent_after_commit: usize,
    pub schema_failures: usize,
    /// "ALARM store damaged" (a store quarantined on open) over all the agent's runs.
    pub store_damaged: usize,
    /// Panics over all the agent's runs.
    pub panics: usize,
    /// `vitalgate status` after the final run (`pending=0 dead_letters=0` expected).
    pub final_status: String,
    pub wall: Duration,
}

impl KillReport {
    /// Everything the issue asks for held.
    pub fn clean(&self) -> bool {
        self.lost == 0
            && self.duplicates == 0
            && self.schema_failures == 0
            && self.store_damaged == 0
            && self.panics == 0
            && self.final_status.contains("pending=0")
            && self.final_status.contains("dead_letters=0")
    }
}

/// `VITALGATE_KILL_SEED` if set, else a fresh seed (printed by [`run`], to replay a failure).
pub fn seed() -> u64 {
    match std::env::var("VITALGATE_KILL_SEED") {
        Ok(s) => s.trim().parse().expect("VITALGATE_KILL_SEED: a u64"),
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(7),
    }
}

/// Distinct readings: their own uuid, time and values.
fn reading(i: usize) -> String {
    bp_point(i, 100 + (i % 80) as i64, 60 + (i % 30) as i64)
}

/// Waits for the next commit the server reports; false after `within` without one.
async fn next_commit(rx: &mut broadcast::Receiver<EntryEvent>, within: Duration) -> bool {
    // Forget commits that happened before now.
    while let Ok(_) | Err(broadcast::error::TryRecvError::Lagged(_)) = rx.try_recv() {}
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Ok(_)) => return true,
            Ok(Err(broadcast::error::RecvError::Lagged(_))) => continue,
            Ok(Err(broadcast::error::RecvError::Closed)) | Err(_) => return false,
        }
    }
}

/// Runs the scenario with `kills` SIGKILLs, `readings_per_kill` readings published per kill,
/// randomness from `seed`. `None` when mosquitto is not installed (and CI does not require it).
pub async fn run(kills: usize, readings_per_kill: usize, seed: u64) -> Option<KillReport> {
    eprintln!("kill test: seed {seed} (replay: VITALGATE_KILL_SEED={seed}), {kills} kills");
    let broker = Broker::mosquitto_with(MosquittoOptions {
        persistence: false,
        log_all: false,
        inflight_window: None,
    })?;
    let started = Instant::now();
    let f = emulation_factor();
    let h = Harness::new(broker).await;
    let port = h.broker.port().expect("a broker port");
    let n = kills * readings_per_kill;
    let mut rng = StdRng::seed_from_u64(seed);
    // The server holds each answer this long after committing: the window to kill in.
    let delay = Duration::from_millis(300) * f;
    h.fhir.state().set_mode(Mode::DelayAfterCommit(delay));

    // Entries answered `200 OK`: committed before, sent again.
    let resent = Arc::new(AtomicUsize::new(0));
    let mut all_commits = h.fhir.state().subscribe();
    let counter = resent.clone();
    let watcher = tokio::spawn(async move {
        loop {
            match all_commits.recv().await {
                Ok(e) if !e.outcome.created && e.outcome.resource_type == "Observation" => {
                    counter.fetch_add(1, Ordering::Relaxed);
                }
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    });
    let mut commits = h.fhir.state().subscribe();

    // The agent's first run subscribes; from then on the broker keeps the agent's session
    // (and its messages) across kills. Nothing is published before that subscription.
    let mut first = Some(h.spawn_agent());

    // The publisher: random chunks at random intervals, spread over about half a second per
    // kill; its own event loop collects the broker's PUBACKs.
    let (client, mut el) = publisher(port, 64);
    let acks = tokio::spawn(async move {
        await_pubacks(&mut el, n, Duration::from_secs(600) * f).await;
        el
    });
    let mut pub_rng = StdRng::seed_from_u64(seed.wrapping_add(1));
    let pace_ms = 450 * u64::from(f);
    let publish = tokio::spawn(async move {
        let mut i = 0;
        while i < n {
            let chunk = pub_rng.random_range(1..=8).min(n - i);
            for j in i..i + chunk {
                client
                    .publish(TOPIC, QoS::AtLeastOnce, false, reading(j))
                    .await
                    .expect("publish request");
            }
            i += chunk;
            let pause = pub_rng.random_range(0..pace_ms);
            tokio::time::sleep(Duration::from_millis(pause)).await;
        }
        client
    });

    let mut logs = Vec::with_capacity(kills + 1);
    let mut aimed = 0;
    for k in 0..kills {
        let mut agent = match first.take() {
            Some(a) => a,
            None => h.spawn_agent(),
        };
        if k % 3 == 2 && next_commit(&mut commits, Duration::from_secs(3) * f).await {
            // Committed on the server, the answer not sent yet: the agent has not deleted.
            aimed += 1;
            let ms = rng.random_range(0..delay.as_millis() as u64 / 2);
            tokio::time::sleep(Duration::from_millis(ms)).await;
        } else {
            let ms = rng.random_range(0..700 * u64::from(f));
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        agent.kill9();
        logs.push(agent.stderr());
    }

    // Every reading published and acknowledged by the broker.
    let client = publish.await.expect("publisher task");
    let _el = acks
        .await
        .expect("every reading acknowledged by the broker");

    // The last run: undisturbed until the server has every reading (or stops gaining any).
    h.fhir.state().set_mode(Mode::Normal);
    let mut agent = h.spawn_agent();
    let stall = Duration::from_secs(30) * f;
    let mut last = (0, Instant::now());
    loop {
        let have = h.fhir.observation_identifiers().len();
        if have >= n {
            break;
        }
        if have != last.0 {
            last = (have, Instant::now());
        }
        if last.1.elapsed() > stall {
            eprintln!("kill test: the server stopped at {have} of {n} Observations");
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Room for a late resend to show up as a duplicate.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    agent.terminate();
    logs.push(agent.stderr());
    drop(client);
    watcher.abort();
    let final_status = String::from_utf8_lossy(&h.vitalgate_output(&["status"]).stdout)
        .trim()
        .to_string();

    let ids = h.fhir.observation_identifiers();
    let unique: HashSet<&String> = ids.iter().collect();
    let report = KillReport {
        seed,
        kills,
        aimed_at_commit: aimed,
        acknowledged: n,
        on_server: unique.len(),
        lost: n.saturating_sub(unique.len()),
        duplicates: (ids.len() - unique.len()) + unique.len().saturating_sub(n),
        resent_after_commit: resent.load(Ordering::Relaxed),
        schema_failures: h.fhir.schema_failures().len(),
        store_damaged: logs
            .iter()
            .map(|l| l.matches("ALARM store damaged").count())
            .sum(),
        panics: logs.iter().map(|l| l.matches("panicked").count()).sum(),
        final_status,
        wall: started.elapsed(),
    };
    if !report.clean() {
        eprintln!(
            "kill test failed (seed {seed}): {report:?}\nlast agent log tail:\n{}",
            tail(logs.last().map(String::as_str).unwrap_or(""), 40)
        );
    }
    Some(report)
}
