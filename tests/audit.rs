//! The audit log and the delivery ledger under the real binary (issue #11, "Auditable"): a real
//! broker, the devkit FHIR server, `vitalgate audit verify` and `vitalgate ledger`.
//!
//! Run alone: `cargo test -p vitalgate --test audit`.

mod common;
mod harness;

use std::path::Path;
use std::time::{Duration, Instant};

use harness::*;

/// A patient identifier and values that appear nowhere else, to grep for.
const CANARY_PATIENT: &str = "urn:oid:2.16.840.1.113883.19.5|MRN-CANARY-93817";
const CANARY_MRN: &str = "MRN-CANARY-93817";

fn audit_dir(h: &Harness) -> std::path::PathBuf {
    h.dir.path().join("data").join("audit")
}

/// Every segment's text, oldest first.
fn audit_text(h: &Harness) -> String {
    let mut names: Vec<_> = std::fs::read_dir(audit_dir(h))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
        .collect();
    names.sort();
    names
        .iter()
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect()
}

fn entries(h: &Harness) -> Vec<serde_json::Value> {
    // A line the daemon is still writing may be torn; `audit verify` checks the whole chain.
    audit_text(h)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// `text` with every run of 12 or more lowercase hex digits (hashes, content ids) replaced by
/// `#`.
fn without_hex_runs(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut run = String::new();
    for c in text.chars().chain(std::iter::once(' ')) {
        if c.is_ascii_digit() || ('a'..='f').contains(&c) {
            run.push(c);
            continue;
        }
        if run.len() >= 12 {
            out.push('#');
        } else {
            out.push_str(&run);
        }
        run.clear();
        out.push(c);
    }
    out.pop();
    out
}

/// Waits until the audit log holds an entry of this kind (a line being written is tolerated).
fn wait_for_audit_event(h: &Harness, kind: &str, within: Duration) {
    let needle = format!("\"event\":\"{kind}\"");
    let deadline = Instant::now() + within;
    while !audit_text(h).contains(&needle) {
        assert!(
            Instant::now() < deadline,
            "no {kind} entry within {within:?}:\n{}",
            audit_text(h)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn add_section(config: &Path, text: &str) {
    let mut c = std::fs::read_to_string(config).unwrap();
    c.push_str(text);
    std::fs::write(config, c).unwrap();
}

/// `vitalgate ledger ID` until its answer contains `want` (the writer syncs every 200 ms).
fn ledger_until(h: &Harness, id: &str, want: &str, within: Duration) -> String {
    let deadline = Instant::now() + within;
    loop {
        let out = h.vitalgate_output(&["ledger", id]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if text.contains(want) {
            assert!(out.status.success(), "{out:?}");
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "ledger {id}: wanted {want:?}, got {out:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Issue #11: readings of a distinctive patient go through the real pipeline; the audit log
/// names them by content id only (no patient id, no value, no Observation identifier), and
/// the ledger says where each is: delivered with the server's resource id and version, or
/// pending. The chain verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_log_holds_no_phi_and_the_ledger_says_delivered_or_pending() {
    let mut h = Harness::with_mqtt_devices(
        Broker::embedded(),
        vec![MqttDevice {
            name: "hub-1".into(),
            topic: TOPIC.into(),
            patient: CANARY_PATIENT.into(),
        }],
    )
    .await;
    // Small segments: the run rolls over, and the chain must span the segments.
    add_section(
        &h.config,
        "\n[audit]\nsegment_bytes = 1024\nmax_bytes = 1048576\n",
    );
    let mut agent = h.spawn_agent();

    // 73.19 kg and 82.64 kg: values whose decimal text cannot appear in hex or in a timestamp
    // (their digits alone can: see below).
    h.publish(&[weight_point(1, 7319), weight_point(2, 8264)])
        .await;
    h.wait_for_observations(2, Duration::from_secs(60)).await;
    let server_ids: Vec<String> = h
        .fhir
        .stored_observations()
        .iter()
        .map(|o| o["id"].as_str().unwrap().to_string())
        .collect();
    let identifiers = h.fhir.observation_identifiers();
    assert_eq!(identifiers.len(), 2);

    // The ledger answers while the daemon runs (files only; the daemon holds the store).
    let stored: Vec<String> = {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let s: Vec<String> = entries(&h)
                .iter()
                .filter(|e| e["event"] == "stored")
                .map(|e| e["reading"].as_str().unwrap().to_string())
                .collect();
            if s.len() >= 2 || Instant::now() > deadline {
                break s;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    assert_eq!(stored.len(), 2, "{}", audit_text(&h));
    for id in &stored {
        assert_eq!(id.len(), 64, "full content id: {id}");
        let answer = ledger_until(&h, id, "delivered: Observation/", Duration::from_secs(10));
        assert!(
            server_ids
                .iter()
                .any(|s| answer.contains(&format!("delivered: Observation/{s} version 1"))),
            "the server's id and version: {answer} (server ids {server_ids:?})"
        );
    }
    // The 12-digit short id of the logs works too, and --json.
    let short = &stored[0][..12];
    let out = h.vitalgate(&["ledger", short, "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["readings"][0]["reading"], stored[0].as_str());
    assert_eq!(v["readings"][0]["state"], "delivered");
    assert!(v["readings"][0]["resource"]
        .as_str()
        .unwrap()
        .starts_with("Observation/"));

    // Server down: the next reading is stored and stays pending.
    h.fhir.stop().await;
    h.publish(&[weight_point(3, 9157)]).await;
    h.wait_for_log(&agent, "reading stored", 3, Duration::from_secs(30));
    // The upload of the third reading must have failed (and been audited) before the stop:
    // a stop while the request is still in flight legitimately leaves no send_failed entry.
    wait_for_audit_event(
        &h,
        "send_failed",
        Duration::from_secs(30) * emulation_factor(),
    );
    agent.terminate();

    let all = entries(&h);
    let third = all
        .iter()
        .filter(|e| e["event"] == "stored")
        .map(|e| e["reading"].as_str().unwrap().to_string())
        .find(|id| !stored.contains(id))
        .expect("a third stored entry");
    let answer = h.vitalgate(&["ledger", &third]);
    assert!(answer.contains(": pending"), "{answer}");
    let out = h.vitalgate_output(&["ledger", "0123456789ab"]);
    assert_eq!(out.status.code(), Some(1), "unknown id: {out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("unknown"));

    // The PHI canary: none of it in any audit file.
    let text = audit_text(&h);
    assert!(!text.contains(CANARY_MRN), "patient id in the audit log");
    assert!(
        !text.contains("2.16.840.1.113883.19.5"),
        "patient system in the audit log"
    );
    for value in ["73.19", "82.64", "91.57"] {
        assert!(!text.contains(value), "value {value} in the audit log");
    }
    // The values' digits alone can occur inside a hash or a content id (about one run in 50
    // had "9157" in one): look for them outside the hex strings.
    let outside_hex = without_hex_runs(&text);
    for value in ["7319", "8264", "9157"] {
        assert!(
            !outside_hex.contains(value),
            "value {value} in the audit log, outside its hashes and ids"
        );
    }
    for ident in &identifiers {
        assert!(
            !text.contains(ident.as_str()),
            "Observation identifier {ident} in the audit log"
        );
    }
    // What the log does hold: the custody trail.
    for kind in [
        "key_created",
        "agent_started",
        "stored",
        "sent",
        "delivered",
        "send_failed",
        "agent_stopped",
    ] {
        assert!(
            all.iter().any(|e| e["event"] == kind),
            "no {kind} entry:\n{text}"
        );
    }
    let segments = std::fs::read_dir(audit_dir(&h))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "jsonl")
        })
        .count();
    assert!(segments >= 2, "1 KiB segments roll over ({segments})");
    let out = h.vitalgate_output(&["audit", "verify"]);
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("audit log intact"));
    assert!(!agent.stderr().contains(CANARY_MRN));
}

/// `vitalgate audit verify` on a tampered file: exit 1 naming the segment and the entry; a
/// torn last line is reported as such (exit 0); a bad config is exit 64.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_verify_names_the_tampered_entry_and_reports_a_torn_tail_apart() {
    let h = Harness::new(Broker::embedded()).await;
    let mut agent = h.spawn_agent();
    agent.terminate();
    let out = h.vitalgate_output(&["audit", "verify"]);
    assert!(out.status.success(), "{out:?}");

    let seg = audit_dir(&h).join("audit-00000000000000000000.jsonl");
    let original = std::fs::read_to_string(&seg).unwrap();
    assert!(original.lines().count() >= 3, "{original}");

    // A power loss mid-line.
    std::fs::write(&seg, format!("{original}{{\"seq\":99,\"ti")).unwrap();
    let out = h.vitalgate_output(&["audit", "verify"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(stdout.contains("torn tail"), "{stdout}");

    // One byte of entry 1 changed (the agent's version string).
    let line1 = original.lines().nth(1).unwrap();
    assert!(line1.contains("\"seq\":1,"), "{line1}");
    let forged = line1.replacen("agent_started", "agent_startee", 1);
    std::fs::write(&seg, original.replacen(line1, &forged, 1)).unwrap();
    let out = h.vitalgate_output(&["audit", "verify"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        stdout.contains("audit-00000000000000000000.jsonl seq 1:"),
        "names the segment and the entry: {stdout}"
    );
    assert!(stdout.contains("BROKEN"), "{stdout}");

    let out = common::vitalgate()
        .args(["audit", "verify", "--config"])
        .arg(h.dir.path().join("missing.toml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64), "{out:?}");
}

/// A TLS failure is a security event: the audit log records it by class with the rustls
/// reason (no PHI), and the ledger says the reading is pending after a failed attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_failure_is_audited_and_the_reading_stays_pending() {
    let h = Harness::with_rogue_server(Broker::embedded()).await;
    let mut agent = h.spawn_agent();
    h.publish(&[bp_point(1, 118, 76)]).await;
    h.wait_for_log(
        &agent,
        "TLS with the FHIR server failed",
        1,
        Duration::from_secs(30),
    );
    agent.terminate();
    let all = entries(&h);
    let tls = all
        .iter()
        .find(|e| e["event"] == "send_failed" && e["class"] == "tls")
        .unwrap_or_else(|| panic!("no TLS entry:\n{}", audit_text(&h)));
    assert!(
        tls["detail"].as_str().unwrap().contains("unknown issuer"),
        "{tls}"
    );
    let id = all
        .iter()
        .find(|e| e["event"] == "stored")
        .and_then(|e| e["reading"].as_str())
        .unwrap()
        .to_string();
    let answer = h.vitalgate(&["ledger", &id[..12]]);
    assert!(
        answer.contains(": pending (sent, not confirmed"),
        "{answer}"
    );
    assert!(!audit_text(&h).contains("MRN-0001"));
}

/// Retention under the real binary: with a tiny `max_bytes` the oldest segments are deleted
/// (each deletion recorded), and `audit verify` still passes, saying it starts at an anchor.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_deletes_the_oldest_segments_and_verify_starts_at_the_anchor() {
    let h = Harness::new(Broker::embedded()).await;
    add_section(
        &h.config,
        "\n[audit]\nsegment_bytes = 1024\nmax_bytes = 2048\n",
    );
    let mut agent = h.spawn_agent();
    let points: Vec<String> = (0..8).map(|i| weight_point(i, 7000 + i as i64)).collect();
    h.publish(&points).await;
    h.wait_for_observations(8, Duration::from_secs(60)).await;
    agent.terminate();

    let total: u64 = std::fs::read_dir(audit_dir(&h))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum();
    // The bound is checked at each rollover: at most one segment (and one entry) over it.
    assert!(total <= 2048 + 1024 + 4096, "{total} bytes kept");
    let all = entries(&h);
    assert_ne!(all[0]["seq"], 0, "the oldest entries were deleted");
    assert!(
        all.iter().any(|e| e["event"] == "retention_deleted"),
        "{}",
        audit_text(&h)
    );
    let out = h.vitalgate_output(&["audit", "verify"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(stdout.contains("audit log intact"), "{stdout}");
    assert!(stdout.contains("anchor: verified from seq"), "{stdout}");
}

/// The audit head leaves the box (status snapshot, fleet message): `audit verify --anchor`
/// against a head taken while the daemon ran passes on the untouched log and fails on a log cut
/// back to before it, which its own chain no longer shows (a clean cut is a consistent chain).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_published_audit_head_catches_a_log_cut_back_after_it() {
    let h = Harness::new(Broker::embedded()).await;
    // The live status snapshot (`vitalgate status` while the daemon runs).
    add_section(
        &h.config,
        "\n[ops]\nruntime_dir = \"run\"\nstatus_interval_secs = 1\n",
    );
    let mut agent = h.spawn_agent();
    let deadline = Instant::now() + Duration::from_secs(30) * emulation_factor();
    let head = loop {
        let out = h.vitalgate_output(&["status", "--json"]);
        if out.status.success() {
            let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            if let Some(head) = s.get("audit_head").filter(|v| !v.is_null()) {
                break head.clone();
            }
        }
        assert!(
            Instant::now() < deadline,
            "no audit_head in the status: {out:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    agent.terminate();
    let anchor = format!(
        "{}:{}",
        head["seq"].as_u64().unwrap(),
        head["hash"].as_str().unwrap()
    );
    let out = h.vitalgate_output(&["audit", "verify", "--anchor", &anchor]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(stdout.contains("matches"), "{stdout}");

    // Cut the log back to the entries before the head: a consistent, shorter chain.
    let seg = audit_dir(&h).join("audit-00000000000000000000.jsonl");
    let text = std::fs::read_to_string(&seg).unwrap();
    let seq = head["seq"].as_u64().unwrap();
    let kept: String = text
        .lines()
        .take_while(|l| !l.contains(&format!("\"seq\":{seq},")))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&seg, kept).unwrap();
    let out = h.vitalgate_output(&["audit", "verify"]);
    assert!(out.status.success(), "alone, the cut log verifies: {out:?}");
    let out = h.vitalgate_output(&["audit", "verify", "--anchor", &anchor]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        stdout.contains("BROKEN: the log ends before this seq"),
        "{stdout}"
    );
    let out = h.vitalgate_output(&["audit", "verify", "--anchor", "12:zz"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "a malformed anchor is a usage error: {out:?}"
    );
}

#[test]
fn hex_runs_are_masked_and_short_numbers_kept() {
    assert_eq!(
        without_hex_runs("h 0123456789abcdef9157 v 9157 t 2026-12-07T18:31:44.047Z"),
        "h # v 9157 t 2026-12-07T18:31:44.047Z"
    );
    assert_eq!(without_hex_runs("cafe 9157"), "cafe 9157");
}
