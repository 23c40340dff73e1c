//! BLE end-to-end tests: the real `vitalgate` binary (unmodified btleplug / bluez-async code)
//! against a fake BlueZ on a private D-Bus system bus (`devkit/bluez-emu/bluez_emu.py`), with
//! the devkit's mTLS FHIR server checking every Bundle against the R4 schema.
//!
//! Each test starts its own dbus-daemon, emulator, FHIR server and agent; deadlines are
//! generous and only bound waiting (never assert speed).

mod bleemu;
mod common;
mod harness;

use std::time::Duration;

use bleemu::*;
use chrono::{DateTime, FixedOffset};
use harness::*;
use serde_json::{json, Value};

const BLE_SETTINGS: &str = "[ble]\nconnect_timeout_secs = 5\noperation_timeout_secs = 5\nwatchdog_silence_secs = 60\nreconnect_backoff_max_secs = 2\nidle_disconnect_secs = 2\n";

struct BleTest {
    h: Harness,
    emu: Emulator,
    bus: Bus,
}

impl BleTest {
    async fn new(scenario: Value, devices: &str) -> BleTest {
        Self::with_settings(scenario, BLE_SETTINGS, devices).await
    }

    async fn with_settings(scenario: Value, settings: &str, devices: &str) -> BleTest {
        let bus = Bus::start();
        let emu = Emulator::start(&bus, &scenario);
        let h = Harness::new(Broker::None).await;
        let mut text = std::fs::read_to_string(&h.config).unwrap();
        text.push('\n');
        text.push_str(settings);
        text.push('\n');
        text.push_str(devices);
        std::fs::write(&h.config, text).unwrap();
        BleTest { h, emu, bus }
    }

    fn agent(&self) -> BleAgent {
        BleAgent::spawn(&self.h.config, &self.bus, self.h.dir.path())
    }

    /// Waits for `n` measurement Observations; on timeout shows the agent log and the
    /// emulator's events.
    async fn wait_obs(&self, agent: &BleAgent, n: usize, secs: u64) {
        let deadline =
            std::time::Instant::now() + Duration::from_secs(secs) * harness::emulation_factor();
        while self.observations().len() < n {
            if std::time::Instant::now() > deadline {
                let ev: Vec<String> = self.emu.events().iter().map(|e| e.to_string()).collect();
                panic!(
                    "expected {n} observations, have {}\n--- agent log ---\n{}\n--- emulator events (last 60) ---\n{}",
                    self.observations().len(),
                    agent.stderr(),
                    ev.iter().rev().take(60).rev().cloned().collect::<Vec<_>>().join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The measurement Observations (PHD identifier system): not the Coincident Timestamp
    /// Observations, which a device clock found more than 2 s off adds (on a loaded machine a
    /// slow clock read alone can do that; `coincident_timestamps` has them).
    fn observations(&self) -> Vec<Value> {
        self.h
            .fhir
            .stored_observations()
            .into_iter()
            .filter(|o| o["identifier"][0]["system"] != CTS_SYSTEM)
            .collect()
    }

    fn coincident_timestamps(&self) -> Vec<Value> {
        self.h
            .fhir
            .stored_observations()
            .into_iter()
            .filter(|o| o["identifier"][0]["system"] == CTS_SYSTEM)
            .collect()
    }

    /// Every Observation valid, none twice.
    fn assert_clean(&self) {
        assert_eq!(self.h.fhir.schema_failures(), Vec::<String>::new());
        self.h.assert_all_observations_valid();
        let mut ids = self.h.fhir.observation_identifiers();
        let n = ids.len();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), n, "an Observation was stored twice");
    }
}

fn device(name: &str, address: &str, profile: &str, binding: &str) -> String {
    format!("[[devices]]\nname = \"{name}\"\nkind = \"ble\"\naddress = \"{address}\"\nprofile = \"{profile}\"\n{binding}\n")
}

fn patient(p: &str) -> String {
    format!("patient = \"{p}\"")
}

fn effective(o: &Value) -> DateTime<FixedOffset> {
    DateTime::parse_from_rfc3339(o["effectiveDateTime"].as_str().expect("effectiveDateTime"))
        .unwrap()
}

fn subject(o: &Value) -> String {
    o["subject"]["reference"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

const CUFF: &str = "00:09:1F:00:00:01";
const CTS_SYSTEM: &str = "urn:vitalgate:phd-cts";
const TWO_YEARS: i64 = 2 * 365 * 86_400;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cuff_with_three_stored_records_and_a_clock_two_years_off_is_corrected_set_and_not_reingested(
) {
    if !emulator_available("a_cuff_with_three_stored_records_and_a_clock_two_years_off_is_corrected_set_and_not_reingested") {
        return;
    }
    let real = Dt::now_utc();
    let dev_now = real.plus(-TWO_YEARS);
    // Oldest first, as cuffs replay their memory.
    let stored: Vec<String> = (1..=3)
        .rev()
        .map(|k| {
            bp(
                120 + k as i16,
                80,
                93,
                60 + k as i16,
                dev_now.plus(-3600 * k),
                None,
            )
        })
        .collect();
    let t = BleTest::new(
        json!({"devices": [{
            "address": CUFF, "profile": "blood-pressure", "advertise_ms": 300,
            "clock_offset_s": -TWO_YEARS, "stored": stored,
            "dis": {"manufacturer": "Example Medical", "model": "BP-100", "serial": "5A0012345",
                    "system_id": "debc9afeff563412", "firmware": "1.2.0"}
        }]}),
        &device("cuff", CUFF, "blood-pressure", &patient(PATIENT)),
    )
    .await;
    let mut agent = t.agent();
    // 3 BP panels + 3 cuff pulses (and, in the same Bundles, the connection's Coincident
    // Timestamp Observation).
    t.wait_obs(&agent, 6, 60).await;
    // The clock was read first, then set to the gateway's time, after the records.
    let set = t
        .emu
        .wait_event(|e| e["ev"] == "clock_set", Duration::from_secs(30));
    assert!(set["offset_s"].as_f64().unwrap().abs() < 5.0, "{set}");
    let (cts, obs) = (t.coincident_timestamps(), t.observations());
    assert_eq!((cts.len(), obs.len()), (1, 6), "{cts:#?}");
    // The cuff's clock and the gateway's at the clock read (PHD IG coincident timestamp):
    // two years apart, subject the cuff, device the gateway, code MDC_ATTR_TIME_ABS.
    let c = &cts[0];
    assert_eq!(c["code"]["coding"][0]["code"], "67975");
    let at = |k: &str| {
        DateTime::parse_from_rfc3339(c[k].as_str().unwrap_or_else(|| panic!("{k}: {c:#}")))
            .unwrap()
            .timestamp()
    };
    let gateway_at_read = at("effectiveDateTime");
    assert!((gateway_at_read - real.unix).abs() < 60, "{c:#}");
    assert!(
        (gateway_at_read - at("valueDateTime") - TWO_YEARS).abs() < 30,
        "{c:#}"
    );
    let cts_value = c["identifier"][0]["value"].as_str().unwrap();
    assert!(
        cts_value.starts_with("e2e-gw-123456FFFE9ABCDE-"),
        "{cts_value}"
    );
    let devices = t.h.fhir.stored_devices();
    let by_ref = |r: &Value| {
        let id = r["reference"]
            .as_str()
            .unwrap()
            .trim_start_matches("Device/");
        devices
            .iter()
            .find(|d| d["id"] == id)
            .unwrap_or_else(|| panic!("{r} not a stored Device"))
            .clone()
    };
    assert_eq!(
        by_ref(&c["subject"])["meta"]["profile"][0],
        "http://hl7.org/fhir/uv/phd/StructureDefinition/PhdDevice"
    );
    assert_eq!(
        by_ref(&c["device"])["meta"]["profile"][0],
        "http://hl7.org/fhir/uv/phd/StructureDefinition/PhgDevice"
    );
    let cts_ref = format!("Observation/{}", c["id"].as_str().unwrap());
    for o in &obs {
        // Every corrected measurement references it.
        let ext = o["extension"].as_array().unwrap();
        assert!(
            ext.iter().any(|x| x["url"]
                == "http://hl7.org/fhir/uv/phd/StructureDefinition/CoincidentTimeStampReference"
                && x["valueReference"]["reference"] == cts_ref.as_str()),
            "{o:#}"
        );
        // Raw device time is two years back; the effective time is corrected to the real one.
        let ident = o["identifier"][0]["value"].as_str().unwrap();
        assert!(
            ident.starts_with("123456FFFE9ABCDE-"),
            "identifier from the System ID: {ident}"
        );
        let eff = effective(o).timestamp();
        let hours_ago = (real.unix - eff + 1800) / 3600;
        assert!(
            (1..=3).contains(&hours_ago),
            "effective {} vs now {}",
            o["effectiveDateTime"],
            real.rfc3339()
        );
        let k = hours_ago;
        assert!(
            (real.unix - 3600 * k - eff).abs() < 30,
            "corrected time off: {}",
            o["effectiveDateTime"]
        );
    }
    // Next connection: the cuff resends its whole memory; nothing new reaches the server.
    t.emu
        .wait_count(|e| e["ev"] == "connected", 2, Duration::from_secs(30));
    t.emu
        .wait_count(|e| e["ev"] == "disconnected", 2, Duration::from_secs(30));
    tokio::time::sleep(Duration::from_secs(2)).await;
    // The second connection found the clock set: nothing new, no second CTS.
    assert_eq!(t.observations().len(), 6);
    assert_eq!(t.coincident_timestamps().len(), 1);
    t.assert_clean();
    // Let no connection be cut by the stop: the cuff stops advertising, and the agent is
    // stopped only once every connection it made has ended (under qemu a third one may be
    // under way here; stopped mid-replay, it would have skipped fewer than 3 records).
    t.emu
        .cmd(json!({"cmd": "stop_advertising", "address": CUFF}));
    // Quiet means no connection open for 2 s (an advertisement seen just before the stop may
    // still bring one).
    let deadline =
        std::time::Instant::now() + Duration::from_secs(30) * harness::emulation_factor();
    let mut quiet_since = None;
    loop {
        let open =
            t.emu.count(|e| e["ev"] == "connected") > t.emu.count(|e| e["ev"] == "disconnected");
        let now = std::time::Instant::now();
        match (open, quiet_since) {
            (true, _) => quiet_since = None,
            (false, None) => quiet_since = Some(now),
            (false, Some(at)) if now - at >= Duration::from_secs(2) => break,
            (false, Some(_)) => {}
        }
        assert!(now < deadline, "a connection never ended");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    agent.terminate();
    let log = agent.stderr();
    // Every reconnection resent the 3 records and each was skipped by the mark (on a slow
    // machine, e.g. under qemu, the cuff may be connected more than twice before the stop).
    // A session that failed part-way (a step's timeout on a loaded machine) skips fewer.
    let connects = counter(&log, "ble_connects");
    let failed = counter(&log, "ble_session_failures");
    let skipped = counter(&log, "ble_records_already_ingested");
    assert!(connects >= 2, "{log}");
    assert!(
        skipped <= 3 * (connects - 1) && skipped >= 3 * (connects - 1).saturating_sub(failed),
        "{skipped} skipped over {connects} connections, {failed} failed: {log}"
    );
    assert!(
        skipped >= 3,
        "the second connection's replay was not skipped: {log}"
    );
    assert!(!log.contains("MRN-0001"), "patient identifier in the log");
}

/// A counter's value in the agent's stop line (`name=N`; 0 when absent).
fn counter(log: &str, name: &str) -> u64 {
    let key = format!("{name}=");
    [format!(" {key}"), format!("counters={key}")]
        .iter()
        .filter_map(|k| log.rfind(k.as_str()).map(|at| at + k.len()))
        .max()
        .and_then(|at| {
            log[at..]
                .split(|c: char| !c.is_ascii_digit())
                .next()
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(0)
}

const SCALE: &str = "00:09:1F:00:00:02";
const THERMO: &str = "00:09:1F:00:00:03";
const METER: &str = "00:09:1F:00:00:04";

fn dis(serial: &str) -> Value {
    json!({"manufacturer": "Example Medical", "model": "EM-1", "serial": serial, "firmware": "1.0"})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scale_attributes_two_users_to_their_patients_and_holds_the_unmapped_third() {
    if !emulator_available(
        "a_scale_attributes_two_users_to_their_patients_and_holds_the_unmapped_third",
    ) {
        return;
    }
    let now = Dt::now_utc();
    let stored = vec![
        weight(72_350, now.plus(-300), 1),
        weight(58_100, now.plus(-200), 2),
        weight(90_000, now.plus(-100), 3),
    ];
    let t = BleTest::new(
        json!({"devices": [{"address": SCALE, "profile": "weight-scale", "advertise_ms": 300,
                            "stored": stored, "dis": dis("SC-1")}]}),
        &device(
            "scale",
            SCALE,
            "weight-scale",
            "patients = { 1 = \"Patient/alice\", 2 = \"Patient/bob\" }",
        ),
    )
    .await;
    let mut agent = t.agent();
    t.wait_obs(&agent, 2, 60).await;
    agent.wait_log(
        "record not turned into readings",
        1,
        Duration::from_secs(20),
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let obs = t.observations();
    assert_eq!(obs.len(), 2, "the third user's weight must not be uploaded");
    let mut who: Vec<(String, String)> = obs
        .iter()
        .map(|o| (subject(o), o["valueQuantity"]["value"].to_string()))
        .collect();
    who.sort();
    assert_eq!(
        who,
        vec![
            ("Patient/alice".to_string(), "72.350".to_string()),
            ("Patient/bob".to_string(), "58.100".to_string())
        ]
    );
    t.assert_clean();
    agent.terminate();
    // The unmapped user's reading is held for a technician, reported, never uploaded.
    let status = t.h.vitalgate(&["status"]);
    assert!(status.contains("dead_letters=1"), "{status}");
    let dead = t.h.vitalgate(&["dead-letters"]);
    assert!(dead.contains("not mapped"), "{dead}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thermometer_whose_first_connect_fails_is_retried_and_delivers() {
    if !emulator_available("a_thermometer_whose_first_connect_fails_is_retried_and_delivers") {
        return;
    }
    let now = Dt::now_utc();
    let t = BleTest::new(
        json!({"devices": [{"address": THERMO, "profile": "thermometer", "advertise_ms": 300,
                            "connect_failures": 1, "stored": [temperature(3760, now.plus(-60))],
                            "dis": dis("TH-1")}]}),
        &device("thermo", THERMO, "thermometer", &patient(PATIENT)),
    )
    .await;
    let mut agent = t.agent();
    t.wait_obs(&agent, 1, 60).await;
    assert_eq!(t.emu.count(|e| e["ev"] == "connect_failed"), 1);
    let o = &t.observations()[0];
    assert_eq!(o["valueQuantity"]["value"].to_string(), "37.60");
    assert!(agent.stderr().contains("BLE session failed"));
    t.assert_clean();
    agent.terminate();
}

/// A scale configured by its Device Information only (serial number, no address), beside a
/// neighbour's scale of the same model advertising the same service. The agent probes both
/// (connect, read Device Information, disconnect), binds the configured one, and takes readings
/// from it only: the neighbour's stored weight never reaches the server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_configured_by_serial_number_only_is_found_among_lookalikes_and_only_it_delivers()
{
    if !emulator_available(
        "a_device_configured_by_serial_number_only_is_found_among_lookalikes_and_only_it_delivers",
    ) {
        return;
    }
    const NEIGHBOUR: &str = "00:09:1F:00:00:09";
    let now = Dt::now_utc();
    let t = BleTest::new(
        json!({"devices": [
            {"address": NEIGHBOUR, "profile": "weight-scale", "advertise_ms": 300,
             "stored": [weight(99_900, now.plus(-120), 1)], "dis": dis("SC-OTHER")},
            {"address": SCALE, "profile": "weight-scale", "advertise_ms": 300,
             "stored": [weight(70_250, now.plus(-60), 1)], "dis": dis("SC-9")}
        ]}),
        "[[devices]]\nname = \"scale\"\nkind = \"ble\"\nprofile = \"weight-scale\"\nserial = \"SC-9\"\npatient = \"Patient/alice\"\n",
    )
    .await;
    let mut agent = t.agent();
    t.wait_obs(&agent, 1, 60).await;
    agent.wait_log(
        "identified by its Device Information",
        1,
        Duration::from_secs(20),
    );
    // Let the neighbour advertise on: it must stay unbound and undelivered.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let obs = t.observations();
    assert_eq!(obs.len(), 1, "only the configured scale delivers");
    assert_eq!(obs[0]["valueQuantity"]["value"].to_string(), "70.250");
    assert_eq!(subject(&obs[0]), "Patient/alice");
    // The neighbour was connected to at most once (probed, then held off), never subscribed.
    let neighbour_connects = t
        .emu
        .count(|e| e["ev"] == "connect_request" && e["address"] == NEIGHBOUR);
    assert!(
        neighbour_connects <= 1,
        "neighbour probed {neighbour_connects} times"
    );
    t.assert_clean();
    agent.terminate();
    let log = agent.stderr();
    assert!(log.contains("ble_devices_identified=1"), "{log}");
    assert!(!log.contains("ble_identity_mismatches"), "{log}");

    // Restart: the located address was persisted, so the scale is recognised by its address
    // (no probe, the neighbour is not connected to again) and its next measurement delivers.
    let neighbour_before = t
        .emu
        .count(|e| e["ev"] == "connect_request" && e["address"] == NEIGHBOUR);
    let mut agent = t.agent();
    t.emu
        .cmd(json!({"cmd": "measure", "address": SCALE, "store": true,
                     "payload": weight(71_000, Dt::now_utc().plus(-5), 1)}));
    t.wait_obs(&agent, 2, 60).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let obs = t.observations();
    assert_eq!(
        obs.len(),
        2,
        "the new measurement once, the old one not again"
    );
    assert!(obs.iter().all(|o| subject(o) == "Patient/alice"));
    assert_eq!(
        t.emu
            .count(|e| e["ev"] == "connect_request" && e["address"] == NEIGHBOUR),
        neighbour_before,
        "the neighbour was probed again after the restart"
    );
    t.assert_clean();
    agent.terminate();
    let log = agent.stderr();
    assert!(
        !log.contains("identified by its Device Information"),
        "probed again after the restart: {log}"
    );
}

/// 500 stored glucose records; the meter drops the link after 200. The download resumes from
/// the last durable sequence number, nothing is lost or uploaded twice, and the meter is told
/// to delete only after every record is durable: the agent is killed (SIGKILL) the moment the
/// delete arrives, and every reading must still reach the server after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_glucose_download_interrupted_midway_resumes_loses_nothing_and_deletes_only_durable_records(
) {
    if !emulator_available("a_glucose_download_interrupted_midway_resumes_loses_nothing_and_deletes_only_durable_records") {
        return;
    }
    let now = Dt::now_utc();
    let records: Vec<Value> = (1..=500u16)
        .map(|seq| {
            json!([
                seq,
                glucose(
                    seq,
                    now.plus(-60 * (501 - i64::from(seq))),
                    80 + (seq % 50) as i16
                )
            ])
        })
        .collect();
    let t = BleTest::new(
        json!({"devices": [{"address": METER, "profile": "glucose", "advertise_ms": 300,
                            "racp_records": records, "disconnect_after_records": 200,
                            "record_interval_ms": 1, "dis": dis("GL-1")}]}),
        &(device("meter", METER, "glucose", &patient(PATIENT)) + "delete_after_download = true\n"),
    )
    .await;
    let mut agent = t.agent();
    let del = t
        .emu
        .wait_event(|e| e["ev"] == "racp_delete", Duration::from_secs(120));
    agent.kill(); // at the worst moment: whatever was acknowledged must be durable
    let reports: Vec<Value> = t
        .emu
        .events()
        .into_iter()
        .filter(|e| e["ev"] == "racp_report")
        .collect();
    assert!(reports.len() >= 2, "{reports:?}");
    assert_eq!(
        reports[0]["start"],
        Value::Null,
        "first download asks for all records"
    );
    let resumed = reports.last().unwrap()["start"].as_u64().unwrap();
    assert!(
        resumed > 1 && resumed <= 201,
        "resumed from the last durable record + 1: {resumed}"
    );
    assert_eq!(del["first"].as_u64(), Some(resumed));
    assert_eq!(del["last"].as_u64(), Some(500));
    let agent = t.agent();
    t.wait_obs(&agent, 500, 180).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(t.observations().len(), 500);
    t.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_that_needs_pairing_is_paired_by_the_technician_and_re_paired_when_the_bond_is_lost(
) {
    if !emulator_available("a_device_that_needs_pairing_is_paired_by_the_technician_and_re_paired_when_the_bond_is_lost") {
        return;
    }
    let now = Dt::now_utc();
    let t = BleTest::new(
        json!({"devices": [{"address": CUFF, "profile": "blood-pressure", "advertise_ms": 300,
                            "requires_bond": true, "pairing": "just_works",
                            "stored": [bp(131, 85, 100, 70, now.plus(-120), None)], "dis": dis("BP-9")}]}),
        &(device("cuff", CUFF, "blood-pressure", &patient(PATIENT)) + "pair_if_bond_lost = true\n"),
    )
    .await;
    // The technician's one-time step.
    let out = common::vitalgate()
        .args(["pair", CUFF, "--seconds", "20"])
        .env("DBUS_SYSTEM_BUS_ADDRESS", &t.bus.address)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(
        stdout.contains("[[devices]]")
            && stdout.contains(CUFF)
            && stdout.contains("blood-pressure"),
        "{stdout}"
    );
    t.emu.wait_event(
        |e| e["ev"] == "trusted" && e["value"] == true,
        Duration::from_secs(5),
    );
    let mut agent = t.agent();
    t.wait_obs(&agent, 2, 60).await;
    // The bond is lost (cuff reset); the daemon re-pairs by itself and the next reading arrives.
    t.emu
        .wait_count(|e| e["ev"] == "disconnected", 1, Duration::from_secs(30));
    t.emu.cmd(json!({"cmd": "forget_bond", "address": CUFF}));
    t.emu
        .cmd(json!({"cmd": "measure", "address": CUFF, "store": true,
                     "payload": bp(128, 82, 97, 66, Dt::now_utc(), None)}));
    t.wait_obs(&agent, 4, 60).await;
    assert_eq!(t.emu.count(|e| e["ev"] == "paired"), 2);
    assert!(agent.stderr().contains("re-paired"));
    t.assert_clean();
    agent.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_disconnects_in_the_middle_of_notifications_lose_and_duplicate_nothing() {
    if !emulator_available(
        "a_hundred_disconnects_in_the_middle_of_notifications_lose_and_duplicate_nothing",
    ) {
        return;
    }
    let t = BleTest::new(
        json!({"devices": [{"address": CUFF, "profile": "blood-pressure", "advertise_ms": 50,
                            "stored_interval_ms": 2, "dis": dis("BP-2")}]}),
        &device("cuff", CUFF, "blood-pressure", &patient(PATIENT)),
    )
    .await;
    let mut agent = t.agent();
    let start = Dt::now_utc().plus(-3600);
    for i in 0..100i64 {
        let n = t.emu.count(|e| e["ev"] == "subscribed");
        t.emu.wait_count(
            |e| e["ev"] == "subscribed",
            n.max(1),
            Duration::from_secs(30),
        );
        // A new reading (kept in the cuff's memory until confirmed), then the link drops
        // while it and the replayed ones are in flight.
        t.emu.cmd(json!({"cmd": "measure", "address": CUFF, "store": true,
                         "payload": bp(110 + (i % 40) as i16, 70, 85, 60, start.plus(i * 10), None)}));
        t.emu.cmd(json!({"cmd": "disconnect", "address": CUFF}));
        t.emu
            .wait_count(|e| e["ev"] == "subscribed", n + 1, Duration::from_secs(30));
    }
    t.wait_obs(&agent, 200, 120).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(t.observations().len(), 200);
    t.assert_clean();
    agent.terminate();
    assert!(t.emu.count(|e| e["ev"] == "disconnected") >= 100);
}

/// A cuff that measures: stored, then advertised, then delivered.
fn measure(t: &BleTest, address: &str, i: i64) {
    t.emu.cmd(json!({"cmd": "measure", "address": address, "store": true,
                     "payload": bp(115 + i as i16, 75, 88, 62, Dt::now_utc().plus(-600 + i), None)}));
}

/// The high-water mark file unreadable at start (a directory in its place), then garbage: the
/// transport keeps running (it used to return, and the daemon exited 70). One log line and a
/// counter each time; it runs without marks: the cuff's whole memory is handed over again and
/// the store's identity rule drops what is already durable, so nothing is skipped and nothing
/// reaches the server twice. Each time a good file is written again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_or_garbage_cursor_file_does_not_stop_the_transport_and_skips_or_duplicates_nothing(
) {
    if !emulator_available("an_unreadable_or_garbage_cursor_file_does_not_stop_the_transport_and_skips_or_duplicates_nothing") {
        return;
    }
    let now = Dt::now_utc();
    let t = BleTest::new(
        json!({"devices": [{"address": CUFF, "profile": "blood-pressure", "advertise_ms": 300,
               "dis": dis("BP-11"),
               "stored": [bp(131, 81, 97, 66, now.plus(-7200), None),
                          bp(132, 82, 98, 67, now.plus(-3600), None)]}]}),
        &device("cuff", CUFF, "blood-pressure", &patient(PATIENT)),
    )
    .await;
    let marks = t.h.dir.path().join("data").join("ble-cursors.sealed");
    // A first run leaves good marks (2 BP panels + 2 pulses).
    let mut agent = t.agent();
    t.wait_obs(&agent, 4, 60).await;
    t.emu
        .wait_count(|e| e["ev"] == "disconnected", 1, Duration::from_secs(30));
    agent.wait_log("BLE device disconnected", 1, Duration::from_secs(30));
    assert!(agent.terminate().success());
    assert!(marks.is_file(), "the first run saved its marks");

    type Breakage = (&'static str, fn(&std::path::Path));
    let breakages: [Breakage; 2] = [
        ("unreadable", |p| {
            std::fs::remove_file(p).unwrap();
            std::fs::create_dir(p).unwrap();
        }),
        ("garbage", |p| {
            std::fs::write(p, b"\x00garbage, not a sealed file").unwrap()
        }),
    ];
    for (round, (what, break_it)) in breakages.into_iter().enumerate() {
        break_it(&marks);
        let mut agent = t.agent();
        let i = round as i64 + 1;
        measure(&t, CUFF, i);
        let want = 4 + 2 * (round + 1);
        t.wait_obs(&agent, want, 60).await;
        // The whole memory was resent and handed over again: let that connection end.
        agent.wait_log("BLE device disconnected", 1, Duration::from_secs(30));
        tokio::time::sleep(Duration::from_secs(1)).await;
        let status = agent.terminate();
        let log = agent.stderr();
        assert!(
            status.success(),
            "{what}: the daemon ran on: {status}\n{log}"
        );
        assert_eq!(
            log.matches("BLE high-water marks unreadable").count(),
            1,
            "{what}: one log line\n{log}"
        );
        assert!(
            log.contains("ble_cursor_unreadable=1"),
            "{what}: counter\n{log}"
        );
        // Nothing skipped: the stored records were handed over again, and dropped as
        // duplicates (there are 2 + round of them on the cuff, the new one included).
        assert!(
            log.contains("readings_duplicate="),
            "{what}: duplicates dropped\n{log}"
        );
        assert!(
            !log.contains("ble_records_already_ingested"),
            "{what}: no marks\n{log}"
        );
        assert_eq!(t.observations().len(), want, "{what}");
        t.assert_clean();
        assert!(
            marks.is_file(),
            "{what}: a good file was written in its place"
        );
    }
}

/// A glucose meter's marks lost (the file unreadable at start): the next download asks for
/// every stored record again instead of those after the lost mark (nothing skipped), the ones
/// already stored are dropped as duplicates (nothing reaches the server twice), nothing is
/// deleted on the meter (delete_after_download is off: the fallback never deletes on its own),
/// and the mark is re-established, so the download after that resumes after the last record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_glucose_meter_whose_marks_are_unreadable_is_downloaded_in_full_without_duplicates() {
    if !emulator_available(
        "a_glucose_meter_whose_marks_are_unreadable_is_downloaded_in_full_without_duplicates",
    ) {
        return;
    }
    let now = Dt::now_utc();
    let records: Vec<Value> = (1..=5u16)
        .map(|seq| {
            json!([
                seq,
                glucose(seq, now.plus(-600 * (6 - i64::from(seq))), 90 + seq as i16)
            ])
        })
        .collect();
    let t = BleTest::new(
        json!({"devices": [{"address": METER, "profile": "glucose", "advertise_ms": 300,
                            "racp_records": records, "dis": dis("GL-2")}]}),
        &device("meter", METER, "glucose", &patient(PATIENT)),
    )
    .await;
    let report = |e: &Value| e["ev"] == "racp_report";
    let mut agent = t.agent();
    t.wait_obs(&agent, 5, 60).await;
    agent.wait_log("BLE device disconnected", 1, Duration::from_secs(30));
    assert!(agent.terminate().success());
    assert_eq!(
        t.emu.wait_event(report, Duration::from_secs(5))["start"],
        Value::Null
    );

    let marks = t.h.dir.path().join("data").join("ble-cursors.sealed");
    std::fs::remove_file(&marks).unwrap();
    std::fs::create_dir(&marks).unwrap();
    let from = t.emu.len();
    let mut agent = t.agent();
    let first = t
        .emu
        .wait_event_after(from, report, Duration::from_secs(60));
    assert_eq!(
        first["start"],
        Value::Null,
        "no mark: every record is asked for"
    );
    assert_eq!(first["count"].as_u64(), Some(5));
    // The session after the next connection resumes after the re-established mark.
    let from = t.emu.len();
    let next = t
        .emu
        .wait_event_after(from, report, Duration::from_secs(60));
    assert_eq!(
        next["start"].as_u64(),
        Some(6),
        "the mark was saved again: {next}"
    );
    assert!(agent.terminate().success());
    let log = agent.stderr();
    assert!(log.contains("ble_cursor_unreadable=1"), "{log}");
    assert!(log.contains("readings_duplicate=5"), "{log}");
    assert_eq!(t.observations().len(), 5);
    assert_eq!(t.emu.count(|e| e["ev"] == "racp_delete"), 0);
    t.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bluez_restarting_is_survived() {
    if !emulator_available("bluez_restarting_is_survived") {
        return;
    }
    let t = BleTest::new(
        json!({"devices": [{"address": CUFF, "profile": "blood-pressure", "advertise_ms": 200, "dis": dis("BP-3")}]}),
        &device("cuff", CUFF, "blood-pressure", &patient(PATIENT)),
    )
    .await;
    let mut agent = t.agent();
    measure(&t, CUFF, 1);
    t.wait_obs(&agent, 2, 60).await;
    let scans = t.emu.count(|e| e["ev"] == "discovery" && e["on"] == true);
    t.emu.cmd(json!({"cmd": "restart_bluez", "down_ms": 500}));
    t.emu.wait_event(
        |e| e["ev"] == "bluez_up" && e["unique"] != json!(":1.1"),
        Duration::from_secs(10),
    );
    // The agent notices the new owner of org.bluez, starts over, and scans again.
    t.emu.wait_count(
        |e| e["ev"] == "discovery" && e["on"] == true,
        scans + 1,
        Duration::from_secs(60),
    );
    measure(&t, CUFF, 2);
    t.wait_obs(&agent, 4, 60).await;
    assert!(
        agent.stderr().contains("BlueZ"),
        "one recovery line naming BlueZ"
    );
    t.assert_clean();
    let status = agent.terminate();
    assert!(
        status.success(),
        "the daemon kept running and stopped cleanly: {status}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_adapter_that_powers_off_is_powered_on_again_and_scanning_resumes() {
    if !emulator_available("an_adapter_that_powers_off_is_powered_on_again_and_scanning_resumes") {
        return;
    }
    let t = BleTest::new(
        json!({"devices": [{"address": CUFF, "profile": "blood-pressure", "advertise_ms": 200, "dis": dis("BP-4")}]}),
        &device("cuff", CUFF, "blood-pressure", &patient(PATIENT)),
    )
    .await;
    let mut agent = t.agent();
    let scans = t.emu.count(|e| e["ev"] == "discovery" && e["on"] == true);
    t.emu.cmd(json!({"cmd": "power", "on": false}));
    // The agent powers the adapter back on over D-Bus and restarts discovery.
    t.emu.wait_event(
        |e| e["ev"] == "powered" && e["on"] == true,
        Duration::from_secs(30),
    );
    t.emu.wait_count(
        |e| e["ev"] == "discovery" && e["on"] == true,
        scans + 1,
        Duration::from_secs(30),
    );
    measure(&t, CUFF, 1);
    t.wait_obs(&agent, 2, 60).await;
    let log = agent.stderr();
    assert!(log.contains("adapter powered off"), "{log}");
    t.assert_clean();
    agent.terminate();
    assert!(agent.stderr().contains("ble_recoveries="));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_that_never_answers_connect_is_timed_out_disconnected_and_does_not_block_others() {
    if !emulator_available(
        "a_device_that_never_answers_connect_is_timed_out_disconnected_and_does_not_block_others",
    ) {
        return;
    }
    let now = Dt::now_utc();
    let t = BleTest::new(
        json!({"devices": [
            {"address": CUFF, "profile": "blood-pressure", "advertise_ms": 200, "connect_hang": true,
             "stored": [bp(140, 90, 107, 75, now.plus(-60), None)], "dis": dis("BP-5")},
            {"address": THERMO, "profile": "thermometer", "advertise_ms": 200,
             "stored": [temperature(3712, now.plus(-30))], "dis": dis("TH-5")}
        ]}),
        &(device("cuff", CUFF, "blood-pressure", &patient(PATIENT))
            + &device("thermo", THERMO, "thermometer", &patient(PATIENT))),
    )
    .await;
    let mut agent = t.agent();
    // The thermometer delivers while the cuff hangs.
    t.wait_obs(&agent, 1, 60).await;
    // The hung connect times out (connect_timeout_secs = 5) and is followed by a Disconnect.
    t.emu.wait_event(
        |e| e["ev"] == "disconnect_request" && e["address"] == CUFF,
        Duration::from_secs(30),
    );
    agent.wait_log("connect timed out", 1, Duration::from_secs(10));
    // Once the cuff answers, its reading arrives too.
    t.emu
        .cmd(json!({"cmd": "set", "address": CUFF, "values": {"connect_hang": false}}));
    t.wait_obs(&agent, 3, 60).await;
    t.assert_clean();
    agent.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_two_thousand_advertising_devices_only_the_three_configured_are_connected() {
    if !emulator_available(
        "of_two_thousand_advertising_devices_only_the_three_configured_are_connected",
    ) {
        return;
    }
    let now = Dt::now_utc();
    let mut devices = vec![
        json!({"address": CUFF, "profile": "blood-pressure", "advertise_ms": 1000,
               "stored": [bp(122, 78, 92, 64, now.plus(-90), None)], "dis": dis("BP-6")}),
        json!({"address": SCALE, "profile": "weight-scale", "advertise_ms": 1000,
               "stored": [weight(80_000, now.plus(-80), 1)], "dis": dis("SC-6")}),
        json!({"address": THERMO, "profile": "thermometer", "advertise_ms": 1000,
               "stored": [temperature(3650, now.plus(-70))], "dis": dis("TH-6")}),
    ];
    for i in 0..1997u32 {
        // Mostly phones, beacons and watches; every tenth a neighbour's health device.
        let uuid = match i % 10 {
            0 => "1810",
            1 => "181d",
            2 => "fe9f",
            3 => "180f",
            _ => "fd6f",
        };
        devices.push(json!({"address": format!("02:00:00:{:02X}:{:02X}:{:02X}", i >> 16, (i >> 8) & 0xFF, i & 0xFF),
                            "uuids": [uuid], "advertise_ms": 4000, "address_type": "random"}));
    }
    let t = BleTest::new(
        json!({"devices": devices}),
        &(device("cuff", CUFF, "blood-pressure", &patient(PATIENT))
            + &device(
                "scale",
                SCALE,
                "weight-scale",
                "patients = { 1 = \"Patient/alice\" }",
            )
            + &device("thermo", THERMO, "thermometer", &patient(PATIENT))),
    )
    .await;
    let mut agent = t.agent();
    // BP panel + pulse, weight, temperature.
    t.wait_obs(&agent, 4, 120).await;
    let connected: std::collections::BTreeSet<String> = t
        .emu
        .events()
        .iter()
        .filter(|e| e["ev"] == "connect_request")
        .map(|e| e["address"].as_str().unwrap().to_string())
        .collect();
    let expected: std::collections::BTreeSet<String> = [CUFF, SCALE, THERMO]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(
        connected, expected,
        "only configured devices are connected to"
    );
    t.assert_clean();
    agent.terminate();
    let adverts: u64 = agent
        .stderr()
        .split_whitespace()
        .find_map(|w| {
            w.strip_prefix("ble_advertisements=")
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(0);
    assert!(adverts > 100, "the agent saw the crowd: {adverts}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_adapter_whose_event_stream_goes_silent_is_recovered_by_the_watchdog() {
    if !emulator_available("an_adapter_whose_event_stream_goes_silent_is_recovered_by_the_watchdog")
    {
        return;
    }
    let t = BleTest::with_settings(
        json!({"devices": [
            {"address": CUFF, "profile": "blood-pressure", "advertise_ms": 200, "dis": dis("BP-7")},
            {"address": "02:00:00:00:00:01", "uuids": ["1810"], "advertise_ms": 100}
        ]}),
        &BLE_SETTINGS.replace("watchdog_silence_secs = 60", "watchdog_silence_secs = 2"),
        &device("cuff", CUFF, "blood-pressure", &patient(PATIENT)),
    )
    .await;
    let mut agent = t.agent();
    let scans = t.emu.count(|e| e["ev"] == "discovery" && e["on"] == true);
    // Discovering stays true but no report arrives any more: no error anywhere.
    t.emu.cmd(json!({"cmd": "stall"}));
    t.emu.wait_count(
        |e| e["ev"] == "discovery" && e["on"] == true,
        scans + 1,
        Duration::from_secs(30),
    );
    agent.wait_log("BLE watchdog", 1, Duration::from_secs(5));
    measure(&t, CUFF, 1);
    t.wait_obs(&agent, 2, 60).await;
    t.assert_clean();
    agent.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readings_taken_while_the_gateway_clock_is_unsynchronised_are_not_corrected_and_the_clock_is_not_set(
) {
    if !emulator_available("readings_taken_while_the_gateway_clock_is_unsynchronised_are_not_corrected_and_the_clock_is_not_set") {
        return;
    }
    let now = Dt::now_utc();
    let t = BleTest::new(
        json!({"ntp_synchronized": false, "devices": [{"address": CUFF, "profile": "blood-pressure",
               "advertise_ms": 300, "clock_offset_s": -TWO_YEARS, "dis": dis("BP-8"),
               "stored": [bp(125, 80, 95, 61, now.plus(-TWO_YEARS - 600), None)]}]}),
        &device("cuff", CUFF, "blood-pressure", &patient(PATIENT)),
    )
    .await;
    let mut agent = t.agent();
    t.wait_obs(&agent, 2, 60).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    // Not silently "corrected" with a clock nobody vouches for: the device time as sent.
    for o in t.observations() {
        let eff = effective(&o).timestamp();
        assert!(
            (eff - (now.unix - TWO_YEARS - 600)).abs() < 5,
            "{}",
            o["effectiveDateTime"]
        );
    }
    assert_eq!(t.emu.count(|e| e["ev"] == "clock_set"), 0);
    // Nothing was corrected, so no Coincident Timestamp Observation claims a correction.
    assert!(t.coincident_timestamps().is_empty());
    assert!(agent.stderr().contains("not NTP-synchronised"));
    t.assert_clean();
    agent.terminate();
}

#[test]
fn scan_lists_health_devices_marks_configured_ones_and_prints_snippets() {
    if !emulator_available("scan_lists_health_devices_marks_configured_ones_and_prints_snippets") {
        return;
    }
    let bus = Bus::start();
    let emu = Emulator::start(
        &bus,
        &json!({"devices": [
            {"address": CUFF, "profile": "blood-pressure", "advertise_ms": 100, "name": "BP-100"},
            {"address": SCALE, "profile": "weight-scale", "advertise_ms": 100, "name": "Scale X"},
            {"address": "02:00:00:00:00:09", "uuids": ["fd6f"], "advertise_ms": 100, "name": "phone"}
        ]}),
    );
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("v.toml");
    std::fs::write(
        &cfg,
        format!("[gateway]\nid = \"g\"\ndata_dir = \"d\"\n[store]\nkey_file = \"k\"\n[uplink]\nfhir_base = \"https://f.example/r4\"\nca_file = \"a\"\nclient_cert = \"b\"\nclient_key = \"c\"\n{}", device("cuff", CUFF, "blood-pressure", &patient(PATIENT))),
    )
    .unwrap();
    let out = common::vitalgate()
        .args(["scan", "--seconds", "2", "--config"])
        .arg(&cfg)
        .env("DBUS_SYSTEM_BUS_ADDRESS", &bus.address)
        .output()
        .unwrap();
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    let line = |a: &str| {
        s.lines()
            .find(|l| l.starts_with(a))
            .unwrap_or_default()
            .to_string()
    };
    assert!(
        line(CUFF).contains("blood-pressure") && line(CUFF).ends_with("cuff"),
        "{s}"
    );
    assert!(
        line(SCALE).contains("weight-scale") && line(SCALE).ends_with("no"),
        "{s}"
    );
    assert!(line("02:00:00:00:00:09").contains(" - "), "{s}");
    assert!(
        s.contains(&format!(
            "address = \"{SCALE}\"\nprofile = \"weight-scale\""
        )),
        "{s}"
    );
    assert!(
        !s.contains(&format!("address = \"{CUFF}\"")),
        "no snippet for a configured device: {s}"
    );
    drop(emu);
}

/// A scale configured by its serial number only (no address) beside a lookalike neighbour:
/// the advertisement carries no Device Information, so `scan` connects briefly to each, reads
/// it, disconnects, and marks the configured one (no snippet for it); the neighbour stays
/// unconfigured with a snippet. A device configured by address is still marked without a probe.
#[test]
fn scan_marks_a_device_configured_by_device_information_only_after_reading_it() {
    if !emulator_available(
        "scan_marks_a_device_configured_by_device_information_only_after_reading_it",
    ) {
        return;
    }
    const NEIGHBOUR: &str = "00:09:1F:00:00:09";
    let bus = Bus::start();
    let emu = Emulator::start(
        &bus,
        &json!({"devices": [
            {"address": CUFF, "profile": "blood-pressure", "advertise_ms": 100, "name": "BP-100",
             "dis": dis("BP-1")},
            {"address": SCALE, "profile": "weight-scale", "advertise_ms": 100, "name": "Scale X",
             "dis": dis("SC-9")},
            {"address": NEIGHBOUR, "profile": "weight-scale", "advertise_ms": 100,
             "name": "Scale X", "dis": dis("SC-OTHER")}
        ]}),
    );
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("v.toml");
    std::fs::write(
        &cfg,
        format!("[gateway]\nid = \"g\"\ndata_dir = \"d\"\n[store]\nkey_file = \"k\"\n[uplink]\nfhir_base = \"https://f.example/r4\"\nca_file = \"a\"\nclient_cert = \"b\"\nclient_key = \"c\"\n{BLE_SETTINGS}\n{}\n[[devices]]\nname = \"scale\"\nkind = \"ble\"\nprofile = \"weight-scale\"\nserial = \"SC-9\"\npatient = \"Patient/alice\"\n",
            device("cuff", CUFF, "blood-pressure", &patient(PATIENT))),
    )
    .unwrap();
    let out = common::vitalgate()
        .args(["scan", "--seconds", "2", "--config"])
        .arg(&cfg)
        .env("DBUS_SYSTEM_BUS_ADDRESS", &bus.address)
        .output()
        .unwrap();
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    let line = |a: &str| {
        s.lines()
            .find(|l| l.starts_with(a))
            .unwrap_or_default()
            .to_string()
    };
    assert!(line(CUFF).ends_with("cuff"), "{s}");
    assert!(
        line(SCALE).ends_with("scale (Device Information)"),
        "{s}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(line(NEIGHBOUR).ends_with("no"), "{s}");
    assert!(
        !s.contains(&format!("address = \"{SCALE}\"")),
        "no snippet for a configured device: {s}"
    );
    assert!(s.contains(&format!("address = \"{NEIGHBOUR}\"")), "{s}");
    // Probed: connected and disconnected again; the address-configured cuff was not probed.
    for a in [SCALE, NEIGHBOUR] {
        assert_eq!(
            emu.count(|e| e["ev"] == "connect_request" && e["address"] == a),
            1,
            "{a}"
        );
    }
    assert_eq!(
        emu.count(|e| e["ev"] == "connect_request" && e["address"] == CUFF),
        0
    );
    emu.wait_count(|e| e["ev"] == "disconnected", 2, Duration::from_secs(10));
    assert!(emu.events().iter().all(|e| e["ev"] != "subscribed"));
}

/// The BLE transport under the liveness watchdog (WatchdogSec=2s; the BLE loop's allowance is
/// that plus one BlueZ D-Bus call, 10 s). While BLE runs and delivers, the pings go on past
/// that allowance: the BLE thread's beats reach the daemon's heartbeat. With the BLE thread
/// wedged in a blocking read (a FIFO in place of the high-water mark file: the read waits for a
/// writer, as a read from a hung disk would), the pings stop and the stalled task named is the
/// BLE source, while the rest of the agent runs on; once the read returns, they resume.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wedged_ble_loop_stops_the_watchdog_pings_and_a_running_one_keeps_them_going() {
    if !emulator_available(
        "a_wedged_ble_loop_stops_the_watchdog_pings_and_a_running_one_keeps_them_going",
    ) {
        return;
    }
    let t = BleTest::new(
        json!({"devices": [{"address": CUFF, "profile": "blood-pressure", "advertise_ms": 300,
                            "dis": dis("BP-12")}]}),
        &device("cuff", CUFF, "blood-pressure", &patient(PATIENT)),
    )
    .await;
    let f = harness::emulation_factor();
    let notify = NotifySocket::bind(t.h.dir.path());
    let socket = notify.path.display().to_string();
    let watchdog_usec = (2_000_000 * u64::from(f)).to_string();
    let env = [
        ("NOTIFY_SOCKET", socket.as_str()),
        ("WATCHDOG_USEC", watchdog_usec.as_str()),
    ];
    // The BLE loop's allowance: WatchdogSec plus one D-Bus call (10 s).
    let allowance = Duration::from_secs(2) * f + Duration::from_secs(10);

    let mut agent = BleAgent::spawn_env(&t.h.config, &t.bus, t.h.dir.path(), &env);
    notify.wait_for("READY=1", Duration::from_secs(30));
    agent.wait_log("BLE scanning", 1, Duration::from_secs(30));
    measure(&t, CUFF, 1);
    t.wait_obs(&agent, 2, 60).await;
    let _ = notify.collect(allowance);
    let later = notify.collect(Duration::from_secs(3) * f);
    assert!(
        later.iter().any(|d| d == "WATCHDOG=1"),
        "a running BLE loop keeps the pings going past its allowance: {later:?}\n{}",
        agent.stderr()
    );
    assert!(agent.terminate().success());

    // Wedge the BLE thread: it blocks opening the mark file for reading.
    let marks = t.h.dir.path().join("data").join("ble-cursors.sealed");
    let _ = std::fs::remove_file(&marks);
    let made = std::process::Command::new("mkfifo")
        .arg(&marks)
        .status()
        .unwrap();
    assert!(made.success());
    let mut agent = BleAgent::spawn_env(&t.h.config, &t.bus, t.h.dir.path(), &env);
    notify.wait_for("READY=1", Duration::from_secs(30));
    let _ = notify.collect(allowance + Duration::from_secs(2) * f);
    let silent = notify.collect(Duration::from_secs(3) * f);
    assert!(
        silent.is_empty(),
        "a wedged BLE loop must stop the pings: {silent:?}\n{}",
        agent.stderr()
    );
    let log = agent.stderr();
    assert!(
        log.contains("task makes no progress") && log.contains("ble source"),
        "{log}"
    );
    assert!(!log.contains("BLE scanning"), "{log}");

    // Unwedge: a writer opens the FIFO and closes it; the read returns (empty, so the file is
    // moved aside as unreadable), the transport starts and the pings resume.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&marks)
        .unwrap();
    agent.wait_log("BLE scanning", 1, Duration::from_secs(30));
    notify.wait_for("WATCHDOG=1", Duration::from_secs(10));
    measure(&t, CUFF, 2);
    t.wait_obs(&agent, 4, 60).await;
    t.assert_clean();
    assert!(agent.terminate().success());
}
