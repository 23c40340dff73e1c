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

    /// Waits for `n` Observations; on timeout shows the agent log and the emulator's events.
    async fn wait_obs(&self, agent: &BleAgent, n: usize, secs: u64) {
        let deadline =
            std::time::Instant::now() + Duration::from_secs(secs) * harness::emulation_factor();
        while self.h.fhir.observation_identifiers().len() < n {
            if std::time::Instant::now() > deadline {
                let ev: Vec<String> = self.emu.events().iter().map(|e| e.to_string()).collect();
                panic!(
                    "expected {n} observations, have {}\n--- agent log ---\n{}\n--- emulator events (last 60) ---\n{}",
                    self.h.fhir.observation_identifiers().len(),
                    agent.stderr(),
                    ev.iter().rev().take(60).rev().cloned().collect::<Vec<_>>().join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn observations(&self) -> Vec<Value> {
        self.h.fhir.stored_observations()
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

fn code(o: &Value) -> String {
    o["code"]["coding"][0]["code"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

fn subject(o: &Value) -> String {
    o["subject"]["reference"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

const CUFF: &str = "00:09:1F:00:00:01";
const TWO_YEARS: i64 = 2 * 365 * 86_400;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cuff_with_three_stored_records_and_a_clock_two_years_off_is_corrected_set_and_not_reingested(
) {
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
    // 3 BP panels + 3 cuff pulses.
    t.wait_obs(&agent, 6, 60).await;
    // The clock was read first, then set to the gateway's time, after the records.
    let set = t
        .emu
        .wait_event(|e| e["ev"] == "clock_set", Duration::from_secs(30));
    assert!(set["offset_s"].as_f64().unwrap().abs() < 5.0, "{set}");
    let obs = t.observations();
    for o in &obs {
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
    assert_eq!(t.observations().len(), 6);
    t.assert_clean();
    agent.terminate();
    let log = agent.stderr();
    assert!(log.contains("ble_records_already_ingested=3"), "{log}");
    assert!(!log.contains("MRN-0001"), "patient identifier in the log");
}
