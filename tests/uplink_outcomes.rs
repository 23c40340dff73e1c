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
/// The schedule itself (exponential, jittered, capped) is the same code as in production.
const FAST_PAUSE: &str = "pause_initial_secs = 1\npause_max_secs = 5";

/// The acceptance scenario of the issue: the server answers 403 to every request for a minute
/// while readings keep arriving. Before (commit ab40551): every reading was bisected down to
/// itself and dead-lettered. Now: none is; uploads pause (one alarm), probe on the capped
/// schedule, and everything arrives exactly once when the fault clears.
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
    eprintln!("403 answers during the minute: {refused}");
    // The capped schedule: with a 5 s cap (equal jitter: 2.5-5 s per probe after the 1-2-4 s
    // ramp), a minute holds at least 9 probes and never more than about 25.
    assert!(
        (9..=30).contains(&refused),
        "{refused} requests during the 403 minute"
    );
    assert_eq!(h.fhir.observation_identifiers().len(), 0);
    assert_eq!(
        agent.stderr().matches("dead letter").count(),
        0,
        "nothing dead-lettered during the fault"
    );

    // The fault clears: everything arrives, exactly once.
    h.fhir.set_mode(Mode::Normal);
    h.wait_for_observations(published, Duration::from_secs(60))
        .await;
    h.wait_for_log(&agent, "pause ended", 1, Duration::from_secs(10));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    agent.terminate();

    let log = agent.stderr();
    assert_eq!(
        log.matches("ALARM: the FHIR server refuses this gateway")
            .count(),
        1,
        "one alarm per episode:\n{log}"
    );
    assert!(log.contains("status=403"), "{log}");
    assert_eq!(log.matches("pause ended").count(), 1, "{log}");
    let paused_for: u64 = log
        .split("paused_for_secs=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no duration in the resume line:\n{log}"));
    assert!(
        (50..=75).contains(&paused_for),
        "it lasted about a minute, not {paused_for} s"
    );
    assert_eq!(log.matches("dead letter").count(), 0, "{log}");
    let dead = h.vitalgate(&["dead-letters"]);
    assert_eq!(dead.lines().count(), 0, "no dead letters: {dead}");
    let status = h.vitalgate(&["status"]);
    assert!(status.contains("pending=0"), "{status}");
    assert!(status.contains("dead_letters=0"), "{status}");
    h.assert_each_once(published);
    h.assert_all_observations_valid();
    assert!(!log.contains("MRN-0001"), "patient identifier leaked");
}

/// The `seq=` of every line of `vitalgate dead-letters` whose text contains `needle`.
fn dead_seqs(list: &str, needle: &str) -> Vec<String> {
    list.lines()
        .filter(|l| l.contains(needle))
        .filter_map(|l| l.split_whitespace().next()?.strip_prefix("seq="))
        .map(str::to_owned)
        .collect()
}

/// A server that refuses one reading inside a 200 (a per-entry 422): exactly that reading is
/// dead-lettered with the server's OperationOutcome, the others arrive; once the server is
/// fixed, `vitalgate dead-letters requeue --all` puts it back under its original identifier and
/// it arrives once. A raw payload (never a reading) is refused by `requeue SEQ` and skipped by
/// `--all`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reading_refused_inside_a_200_is_dead_lettered_alone_and_can_be_requeued() {
    let h = Harness::new(Broker::embedded()).await;
    // bp_point(2)'s identifier is built from its data point's header.uuid.
    h.fhir.set_mode(Mode::FailObservation(
        "00000000-0000-4000-8000-000000000002".into(),
    ));
    let mut agent = h.spawn_agent();
    let points: Vec<String> = (0..4).map(|i| bp_point(i, 120 + i as i64, 80)).collect();
    h.publish(&points).await;
    h.publish(&["not a data point".to_string()]).await;
    h.wait_for_observations(3, Duration::from_secs(60)).await;
    h.wait_for_log(
        &agent,
        "FHIR server rejected a reading sent alone",
        1,
        Duration::from_secs(30),
    );
    agent.terminate();
    let log = agent.stderr();
    // No pause alarm (other alarms may be up: the test PKI's certificate expires within the
    // warning window, the build machine's disk may be 80 % full).
    assert_eq!(log.matches("uplink_paused").count(), 0, "no pause: {log}");
    assert_eq!(log.matches("uploads paused").count(), 0, "no pause: {log}");
    let obs = h.fhir.observation_identifiers();
    assert_eq!(obs.len(), 3, "{obs:#?}");
    assert!(!obs.iter().any(|o| o.contains("000000000002")), "{obs:#?}");

    let list = h.vitalgate(&["dead-letters"]);
    assert_eq!(list.lines().count(), 2, "{list}");
    let rejected = dead_seqs(&list, "source=outbox");
    assert_eq!(rejected.len(), 1, "{list}");
    assert!(list.contains("422"), "the status is kept: {list}");
    assert!(
        list.contains("Mode::FailObservation"),
        "the OperationOutcome is kept: {list}"
    );
    let raw = dead_seqs(&list, "not valid JSON");
    assert_eq!(raw.len(), 1, "{list}");

    // A raw payload is not a reading: refused, non-zero, and it stays.
    let out = h.vitalgate_output(&["dead-letters", "requeue", &raw[0]]);
    assert!(!out.status.success(), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("never a reading"), "{err}");

    // The server is fixed; a technician requeues. Twice: the second finds nothing to do.
    h.fhir.set_mode(Mode::Normal);
    let first = h.vitalgate(&["dead-letters", "requeue", "--all"]);
    assert!(first.contains("requeued 1,"), "{first}");
    assert!(first.contains("1 raw payloads"), "{first}");
    let second = h.vitalgate(&["dead-letters", "requeue", "--all"]);
    assert!(second.contains("requeued 0,"), "{second}");
    let status = h.vitalgate(&["status"]);
    assert!(status.contains("pending=1"), "{status}");
    assert!(
        status.contains("dead_letters=1"),
        "only the raw one: {status}"
    );
    // A redelivery of the requeued reading is a duplicate, not a second record.
    let mut agent = h.spawn_agent();
    h.publish(&points[2..3]).await;
    h.wait_for_observations(4, Duration::from_secs(60)).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    agent.terminate();
    let obs = h.fhir.observation_identifiers();
    let mut unique = obs.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(obs.len(), 4, "{obs:#?}");
    assert_eq!(unique.len(), 4);
    assert_eq!(h.fhir.duplicate_creates(), 0);
    let status = h.vitalgate(&["status"]);
    assert!(status.contains("pending=0"), "{status}");
    h.assert_all_observations_valid();
}

/// `uplink.daily_byte_budget` on a metered link: Bundles go until the day's body bytes reach
/// the budget (at most one Bundle over it), then the uploader holds: nothing more is sent, the
/// rest stays pending, `status` says why. The day's count survives a restart. A raised budget
/// (SIGHUP) lets everything go, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spent_daily_byte_budget_holds_uploads_across_a_restart_and_loses_nothing() {
    let h = Harness::with_uplink_settings(
        Broker::embedded(),
        &format!("daily_byte_budget = 1024\n{LIVE_STATUS}"),
    )
    .await;
    let mut agent = h.spawn_agent();
    let points: Vec<String> = (0..20).map(|i| bp_point(i, 100 + i as i64, 70)).collect();
    h.publish(&points).await;
    h.wait_for_log(&agent, "reading stored", 20, Duration::from_secs(60));
    h.wait_for_log(&agent, "uploads held", 1, Duration::from_secs(60));
    tokio::time::sleep(Duration::from_secs(3)).await;
    let requests = h.fhir.requests();
    let bodies: Vec<usize> = requests.iter().map(|r| r.body_bytes).collect();
    let total: usize = bodies.iter().sum();
    let before_last: usize = total - bodies.last().copied().unwrap_or(0);
    assert!(
        total >= 1024,
        "held before the budget was spent: {bodies:?}"
    );
    assert!(
        before_last < 1024,
        "a Bundle went after the budget was spent: {bodies:?}"
    );
    let delivered = h.fhir.observation_identifiers().len();
    assert!((1..20).contains(&delivered), "{delivered}");
    let status = h.vitalgate(&["status"]);
    assert!(
        status.contains(&format!("{} pending, 0 dead letters", 20 - delivered)),
        "{status}"
    );
    assert!(
        status.contains("held: uplink.daily_byte_budget spent"),
        "{status}"
    );
    let log = agent.stderr();
    assert!(log.contains("daily_byte_budget_spent"), "{log}");
    agent.terminate();

    // A restart on the same day does not hand the budget out again.
    let sent = h.fhir.request_count();
    let mut agent = h.spawn_agent();
    h.wait_for_log(&agent, "uploads held", 1, Duration::from_secs(60));
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(h.fhir.request_count(), sent, "{:?}", h.fhir.requests());

    // A larger budget, by reload: everything goes, each reading once.
    let text = std::fs::read_to_string(&h.config).unwrap();
    std::fs::write(
        &h.config,
        text.replace("daily_byte_budget = 1024", "daily_byte_budget = 100000000"),
    )
    .unwrap();
    nix_hup(agent.pid());
    let deadline = Instant::now() + Duration::from_secs(60);
    while h.fhir.observation_identifiers().len() < 20 {
        assert!(Instant::now() < deadline, "{}", agent.stderr());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    agent.terminate();
    let obs = h.fhir.observation_identifiers();
    assert_eq!(obs.len(), 20);
    assert_eq!(h.fhir.duplicate_creates(), 0);
}

/// `uplink.upload_windows`: outside every window nothing is sent (not even a first Bundle),
/// readings stay pending and `status` names the next window; when a window includes now
/// (reload), they go, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outside_the_upload_windows_nothing_is_sent_until_a_window_opens() {
    // The agent runs in UTC here, so the window two hours from now is computed in UTC.
    // The test reads the wall clock to place a window the agent will find closed.
    #[allow(clippy::disallowed_methods)]
    let now = chrono::Utc::now();
    let from = (now + chrono::Duration::hours(2))
        .format("%H:%M")
        .to_string();
    let to = (now + chrono::Duration::hours(3))
        .format("%H:%M")
        .to_string();
    let window = format!("upload_windows = [\"{from}-{to}\"]");
    let h = Harness::with_uplink_settings(Broker::embedded(), &format!("{window}\n{LIVE_STATUS}"))
        .await;
    let mut agent = h.spawn_agent_env(&[("TZ", "UTC")]);
    let points: Vec<String> = (0..3).map(|i| bp_point(i, 130 + i as i64, 85)).collect();
    h.publish(&points).await;
    h.wait_for_log(&agent, "reading stored", 3, Duration::from_secs(60));
    h.wait_for_log(&agent, "uploads held", 1, Duration::from_secs(60));
    let log = agent.stderr();
    assert!(log.contains("outside_upload_window"), "{log}");
    assert!(log.contains(&format!("{from} (local time)")), "{log}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(h.fhir.request_count(), 0, "{:?}", h.fhir.requests());
    let status = h.vitalgate(&["status"]);
    assert!(status.contains("3 pending, 0 dead letters"), "{status}");
    assert!(
        status.contains("held: outside uplink.upload_windows"),
        "{status}"
    );

    let text = std::fs::read_to_string(&h.config).unwrap();
    std::fs::write(
        &h.config,
        text.replace(&window, "upload_windows = [\"00:00-24:00\"]"),
    )
    .unwrap();
    nix_hup(agent.pid());
    let deadline = Instant::now() + Duration::from_secs(60);
    while h.fhir.observation_identifiers().len() < 3 {
        assert!(Instant::now() < deadline, "{}", agent.stderr());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    agent.terminate();
    assert_eq!(h.fhir.observation_identifiers().len(), 3);
    assert_eq!(h.fhir.duplicate_creates(), 0);
}

/// A live status snapshot every second (the `[ops]` table closes the harness's `[uplink]`).
const LIVE_STATUS: &str = "\n[ops]\nruntime_dir = \"run\"\nstatus_interval_secs = 1\n";

fn nix_hup(pid: u32) {
    let ok = std::process::Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -HUP {pid}");
}

/// fhir-mapping.md §5.4: Devices the server confirmed are referenced as `Device/<id>`
/// afterwards, not sent again in every Bundle (the gateway and hub Device entries were most of a
/// small Bundle's bytes). A server that lost them (an administrator purged its Devices) refuses
/// the next Bundle for its unresolvable references: the agent forgets what it knew and sends the
/// conditional creates again; nothing is dead-lettered, every reading arrives once, and every
/// stored Observation references a Device the server holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirmed_devices_are_referenced_not_resent_and_a_server_that_lost_them_costs_nothing() {
    use vitalgate_devkit::fhir_server as devkit;
    let h = Harness::new(Broker::embedded()).await;
    let mut agent = h.spawn_agent();
    let posts = |h: &Harness| {
        h.fhir
            .requests()
            .into_iter()
            .filter(|r| r.method == "POST")
            .collect::<Vec<_>>()
    };
    let entries = |posts: &[devkit::RequestRecord]| -> usize {
        posts
            .iter()
            .filter(|r| r.status == 200)
            .map(|r| r.entries)
            .sum()
    };
    // Bundles of at most 4 (batch_size = 4); the first carries the gateway and hub Devices,
    // the others only Observations (however the readings were cut into Bundles).
    h.publish(&(0..4).map(|i| bp_point(i, 120, 80)).collect::<Vec<_>>())
        .await;
    h.wait_for_observations(4, Duration::from_secs(60)).await;
    h.publish(&(4..8).map(|i| bp_point(i, 121, 80)).collect::<Vec<_>>())
        .await;
    h.wait_for_observations(8, Duration::from_secs(60)).await;
    assert_eq!(h.fhir.stored_devices().len(), 2, "no Device created twice");
    // The test server records a request once it has answered it, a moment after the
    // Observations are stored (seen under qemu): wait for the record of the last Bundle.
    let deadline = std::time::Instant::now() + Duration::from_secs(10) * emulation_factor();
    while entries(&posts(&h)) < 2 + 8 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let before = posts(&h);
    assert!(before.iter().all(|r| r.status == 200), "{before:?}");
    assert!(before.len() >= 2, "{before:?}");
    assert_eq!(
        entries(&before),
        2 + 8,
        "the two Devices once, then Observations only: {before:?}"
    );

    // The server loses its Devices: the next Bundle's references no longer resolve; it is
    // sent again at once with the Devices (no bisection, no dead letter).
    assert_eq!(h.fhir.remove_all("Device"), 2);
    h.publish(&(8..12).map(|i| bp_point(i, 122, 80)).collect::<Vec<_>>())
        .await;
    h.wait_for_observations(12, Duration::from_secs(60)).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    agent.terminate();
    let log = agent.stderr();
    let after: Vec<_> = posts(&h).split_off(before.len());
    assert_eq!(after[0].status, 400, "unresolvable references: {after:?}");
    assert_eq!(after[1].status, 200, "{after:?}");
    assert_eq!(after[1].entries, after[0].entries + 2, "{after:?}");
    assert!(after[1..].iter().all(|r| r.status == 200), "{after:?}");
    assert_eq!(entries(&after), 2 + 4, "{after:?}");
    assert_eq!(log.matches("dead letter").count(), 0, "{log}");
    h.assert_each_once(12);
    let status = h.vitalgate(&["status"]);
    assert!(status.contains("dead_letters=0"), "{status}");
    // Every Observation references Devices the server holds (the two re-created ones for the
    // last four).
    let devices: Vec<String> = h
        .fhir
        .stored_devices()
        .iter()
        .map(|d| format!("Device/{}", d["id"].as_str().unwrap_or_default()))
        .collect();
    assert_eq!(devices.len(), 2, "{devices:?}");
    let last_four = h.fhir.stored_observations().split_off(8);
    for obs in last_four {
        let device = obs["device"]["reference"].as_str().unwrap_or_default();
        let gateway = obs["extension"][0]["valueReference"]["reference"]
            .as_str()
            .unwrap_or_default();
        assert!(devices.iter().any(|d| d == device), "{obs}");
        assert!(devices.iter().any(|d| d == gateway), "{obs}");
    }
    h.assert_all_observations_valid();
}
