//! End-to-end tests of the uploader's outcome rules (fhir-mapping.md §5.5): the real `vitalgate`
//! binary, an embedded MQTT broker and the devkit FHIR server with fault injection.
//!
//! Server-wide refusals (403 and friends) pause uploads and keep every reading pending; a
//! reading-level refusal dead-letters exactly the reading the server refused, which a technician
//! can requeue.

mod common;
mod harness;

use std::time::{Duration, Instant};

use harness::*;
use vitalgate_devkit::fhir_server::Mode;

/// The pause schedule of these tests: probes from 1 s, capped at 5 s (the default cap is 300 s).
const FAST_PAUSE: &str = "";

/// The acceptance scenario of the issue: the server answers 403 to every request for a minute
/// while readings keep arriving. Before: every reading was dead-lettered. Now: none is; uploads
/// pause (one alarm), probe on the capped schedule, and everything arrives exactly once when the
/// fault clears.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_minute_of_403_dead_letters_nothing_and_everything_arrives_once_afterwards() {
    let h = Harness::with_uplink_settings(Broker::embedded(), FAST_PAUSE).await;
    h.fhir.set_mode(Mode::Fail {
        status: 403,
        retry_after: None,
    });
    let fault_start = Instant::now();
    let mut agent = h.spawn_agent();

    // Readings arrive throughout the minute: 4 now, 4 after 20 s, 4 after 40 s.
    let mut published = 0;
    for wave in 0..3 {
        let points: Vec<String> = (0..4)
            .map(|k| {
                let i = wave * 4 + k;
                bp_point(i, 110 + i as i64, 70)
            })
            .collect();
        h.publish(&points).await;
        published += points.len();
        h.wait_for_log(&agent, "reading stored", published, Duration::from_secs(30));
        let wave_end = fault_start + Duration::from_secs(20 * (wave as u64 + 1));
        tokio::time::sleep(wave_end.saturating_duration_since(Instant::now())).await;
    }
    assert!(fault_start.elapsed() >= Duration::from_secs(60));
    let refused = h.fhir.requests().iter().filter(|r| r.status == 403).count();
    // The capped schedule: with a 5 s cap (equal jitter: 2.5-5 s), a minute holds at least 9
    // probes and, with the 1-2-4 s ramp, never more than about 25.
    assert!(
        (9..=30).contains(&refused),
        "{refused} requests during the 403 minute"
    );
    assert_eq!(h.fhir.observation_identifiers().len(), 0);

    // The fault clears: everything arrives, exactly once.
    h.fhir.set_mode(Mode::Normal);
    h.wait_for_observations(published, Duration::from_secs(60))
        .await;
    h.wait_for_log(&agent, "uploads resumed", 1, Duration::from_secs(10));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    agent.terminate();

    let log = agent.stderr();
    assert_eq!(
        log.matches("uploads paused").count(),
        1,
        "one alarm per episode:\n{log}"
    );
    assert!(log.contains("status=403"), "{log}");
    assert_eq!(log.matches("uploads resumed").count(), 1, "{log}");
    assert_eq!(
        log.matches("FHIR server rejected a reading").count(),
        0,
        "{log}"
    );
    let dead = h.vitalgate(&["dead-letters"]);
    assert_eq!(dead.lines().count(), 0, "no dead letters: {dead}");
    let status = h.vitalgate(&["status"]);
    assert!(status.contains("pending=0"), "{status}");
    assert!(status.contains("dead_letters=0"), "{status}");
    let obs = h.fhir.observation_identifiers();
    let mut unique = obs.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(obs.len(), published, "{obs:#?}");
    assert_eq!(unique.len(), published, "no Observation twice");
    assert_eq!(h.fhir.duplicate_creates(), 0);
    h.assert_all_observations_valid();
}
