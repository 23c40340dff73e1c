//! End to end, through the real MQTT path (broker → `vitalgate run` → devkit FHIR server): the
//! official Open mHealth test data, and consent withdrawal without a restart.

mod common;
mod harness;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use harness::*;
use serde_json::Value;

/// Every official test-data body of the nine supported schemas: (uuid, schema, version,
/// shouldPass?, body).
fn official() -> Vec<(String, String, String, bool, Value)> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../device-drivers/testdata/omh");
    let mut out = Vec::new();
    let mut files = Vec::new();
    for s in std::fs::read_dir(&root).unwrap() {
        for v in std::fs::read_dir(s.unwrap().path()).unwrap() {
            let v = v.unwrap().path();
            for (dir, pass) in [("shouldPass", true), ("shouldFail", false)] {
                if let Ok(rd) = std::fs::read_dir(v.join(dir)) {
                    for f in rd {
                        files.push((f.unwrap().path(), pass));
                    }
                }
            }
        }
    }
    files.sort();
    for (i, (path, pass)) in files.into_iter().enumerate() {
        let version = path.parent().unwrap().parent().unwrap();
        let schema = version.parent().unwrap();
        let body: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        out.push((
            format!("0f5e0000-0000-4000-8000-{i:012}"),
            schema.file_name().unwrap().to_string_lossy().into_owned(),
            version.file_name().unwrap().to_string_lossy().into_owned(),
            pass,
            body,
        ));
    }
    out
}

fn wrap(uuid: &str, schema: &str, version: &str, body: &Value) -> String {
    serde_json::json!({
        "header": {
            "uuid": uuid,
            "schema_id": {"namespace": "omh", "name": schema, "version": version},
            "source_creation_date_time": "2026-11-01T08:00:00Z",
            "modality": "sensed"
        },
        "body": body
    })
    .to_string()
}

/// What a clinic expects on the server for a body, or `None` if it must not be uploaded.
fn expected_upload(schema: &str, pass: bool, body: &Value) -> Option<String> {
    let etf = &body["effective_time_frame"];
    if !pass || body.get("descriptive_statistic").is_some() || etf.is_null() {
        return None;
    }
    let field = match schema {
        "blood-pressure" => "systolic_blood_pressure",
        s => return Some(body[s.replace('-', "_")]["value"].to_string()),
    };
    Some(body[field]["value"].to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_open_mhealth_test_data_every_valid_point_arrives_and_nothing_else_does() {
    let h = Harness::new(Broker::embedded()).await;
    let mut agent = h.spawn_agent();
    let data = official();
    let payloads: Vec<String> = data
        .iter()
        .map(|(u, s, v, _, b)| wrap(u, s, v, b))
        .collect();
    let expected: BTreeMap<&str, (String, &Value, &str)> = data
        .iter()
        .filter_map(|(u, s, _, p, b)| {
            expected_upload(s, *p, b).map(|v| (u.as_str(), (v, b, s.as_str())))
        })
        .collect();
    for chunk in payloads.chunks(40) {
        h.publish(chunk).await;
    }
    h.wait_for_observations(expected.len(), Duration::from_secs(120))
        .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    agent.terminate();

    let obs = h.fhir.stored_observations();
    assert_eq!(
        obs.len(),
        expected.len(),
        "one Observation per valid point reading"
    );
    for o in &obs {
        let ident = o["identifier"][0]["value"].as_str().unwrap();
        let (uuid, (value, body, schema)) = expected
            .iter()
            .find(|(u, _)| ident.starts_with(*u))
            .unwrap_or_else(|| panic!("uploaded something that must not be: {ident}"));
        let got = if *schema == "blood-pressure" {
            o["component"][0]["valueQuantity"]["value"].to_string()
        } else {
            o["valueQuantity"]["value"].to_string()
        };
        // Kelvin, metres... are converted; every official example uses a unit kept as is.
        assert_eq!(&got, value, "{uuid} {schema}");
        let ti = &body["effective_time_frame"]["time_interval"];
        if ti.is_null() {
            assert!(
                o["effectiveDateTime"].as_str().unwrap().len() > 10,
                "{uuid}"
            );
        } else if ti.get("date").is_some() {
            assert_eq!(o["effectiveDateTime"], ti["date"], "{uuid}: date precision");
        } else {
            assert!(
                o["effectivePeriod"]["end"].is_string(),
                "{uuid}: an interval is a period"
            );
            assert!(ident.contains(".."), "{ident}");
        }
        if body.get("supplemental_oxygen_flow_rate").is_some() {
            assert_eq!(o["component"][0]["code"]["coding"][0]["code"], "3151-8");
            assert_eq!(
                o["component"][0]["valueQuantity"]["value"].to_string(),
                "2.5"
            );
        }
    }
    assert_eq!(h.fhir.schema_failures(), Vec::<String>::new());
    h.assert_all_observations_valid();
    // Everything else is kept as a dead letter with its reason: schema-invalid bodies,
    // statistics, points without a time.
    let dead = h.vitalgate(&["dead-letters"]);
    let n_fail = data.iter().filter(|d| !d.3).count();
    assert_eq!(dead.lines().count(), data.len() - expected.len(), "{dead}");
    assert_eq!(dead.matches("schema_invalid").count(), n_fail, "{dead}");
    assert!(dead.contains("statistic"), "{dead}");
    let log = agent.stderr();
    assert!(!log.contains("Ifeltquitedizzy") && !log.contains("I felt quite dizzy"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consent_withdrawal_stops_pending_readings_without_a_restart() {
    let mut h = Harness::new(Broker::embedded()).await;
    let consent = h.dir.path().join("consent.txt");
    std::fs::write(&consent, "# clinic export: withdrawn patients\n").unwrap();
    let mut cfg = std::fs::read_to_string(&h.config).unwrap();
    cfg.push_str(&format!("\n[consent]\nfile = \"{}\"\n", consent.display()));
    std::fs::write(&h.config, cfg).unwrap();
    let mut agent = h.spawn_agent();

    // One reading goes through while consent stands.
    h.publish(&[bp_point(1, 120, 80)]).await;
    h.wait_for_observations(1, Duration::from_secs(60)).await;
    // The server committed it; the agent must also have read the answer before the server
    // goes down (under qemu the answer can be that slow: then the reading stays pending, is
    // held with the others, and the counts below are off by one).
    h.wait_for_log(
        &agent,
        "reading accepted by FHIR server",
        1,
        Duration::from_secs(30),
    );
    // Server down: the next readings stay pending; then the clinic withdraws consent.
    h.fhir.stop().await;
    h.publish(&[bp_point(2, 121, 81), weight_point(3, 7010)])
        .await;
    h.wait_for_log(&agent, "reading stored", 3, Duration::from_secs(30));
    std::fs::write(&consent, format!("{}\n", PATIENT)).unwrap();
    h.wait_for_log(
        &agent,
        "AUDIT consent withdrawn",
        2,
        Duration::from_secs(30),
    );
    // Server back: nothing pending for that patient leaves.
    h.fhir.restart().await.unwrap();
    h.publish(&[bp_point(4, 122, 82)]).await;
    h.wait_for_log(
        &agent,
        "AUDIT consent withdrawn",
        3,
        Duration::from_secs(30),
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(h.fhir.observation_identifiers().len(), 1);
    agent.terminate();
    let log = agent.stderr();
    assert!(!log.contains("MRN-0001"), "patient identifier in the log");
    let status = h.vitalgate(&["status"]);
    assert!(status.contains("pending=3"), "{status}");
    assert!(
        status.contains("withdrawn_patients=1 held_readings=3"),
        "{status}"
    );
    let _ = &mut h;
}

/// `[consent] purge_after_days` (here its test-only seconds): a withdrawn patient's held
/// readings are removed from the outbox once old enough, one audit event each, and nothing of
/// that patient reaches the FHIR server; another patient's readings still do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_withdrawn_patients_held_readings_are_purged_and_never_uploaded_while_others_are() {
    const OTHER_TOPIC: &str = "vitalgate/ingest/hub-2";
    const OTHER: &str = "Patient/other-1";
    let mut h = Harness::with_mqtt_devices(
        Broker::embedded(),
        vec![
            MqttDevice::default_hub(),
            MqttDevice {
                name: "hub-2".into(),
                topic: OTHER_TOPIC.into(),
                patient: OTHER.into(),
            },
        ],
    )
    .await;
    let mut cfg = std::fs::read_to_string(&h.config).unwrap();
    cfg.push_str(&format!(
        "\n[consent]\nwithdrawn = [\"{PATIENT}\"]\npurge_after_seconds_test_only = 3\n"
    ));
    std::fs::write(&h.config, cfg).unwrap();
    let mut agent = h.spawn_agent();

    h.publish(&[bp_point(1, 120, 80), weight_point(2, 7010)])
        .await;
    h.publish_to(OTHER_TOPIC, &[bp_point(3, 131, 85)]).await;
    h.wait_for_observations(1, Duration::from_secs(60)).await;
    h.wait_for_log(
        &agent,
        "AUDIT consent withdrawn: reading purged from the outbox",
        2,
        Duration::from_secs(60),
    );
    // Purged, not merely late: give the uploader time to send anything that was left.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let obs = h.fhir.stored_observations();
    assert_eq!(obs.len(), 1, "{obs:#?}");
    assert_eq!(obs[0]["subject"]["reference"], OTHER);
    assert!(
        !serde_json::to_string(&h.fhir.store())
            .unwrap()
            .contains("MRN-0001"),
        "something of the withdrawn patient reached the server"
    );
    agent.terminate();
    let log = agent.stderr();
    assert_eq!(
        log.matches("AUDIT consent withdrawn: reading purged from the outbox")
            .count(),
        2,
        "one audit event per reading"
    );
    assert!(!log.contains("MRN-0001"), "patient identifier in the log");
    let status = h.vitalgate(&["status"]);
    assert!(status.contains("pending=0"), "{status}");
    assert!(
        status.contains("withdrawn_patients=1 held_readings=0 purged_readings=2"),
        "{status}"
    );
    let _ = &mut h;
}

/// Issue #8: a `descriptive_statistic` is uploaded only where a configured mapping says so
/// (`upload_statistics` on the hub), and then over its `effectivePeriod` with the statistic
/// stated in `method`; every other statistic of the official test data is held as a dead
/// letter `statistic`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_statistics_a_hub_is_configured_for_are_uploaded_each_over_its_period() {
    let h = Harness::new(Broker::embedded()).await;
    let cfg = std::fs::read_to_string(&h.config).unwrap();
    let cfg = cfg.replacen(
        "kind = \"mqtt\"\n",
        "kind = \"mqtt\"\nupload_statistics = [\"minimum\"]\n",
        1,
    );
    std::fs::write(&h.config, cfg).unwrap();
    let mut agent = h.spawn_agent();
    let stats: Vec<_> = official()
        .into_iter()
        .filter(|d| d.3 && d.4.get("descriptive_statistic").is_some())
        .collect();
    let minimum: Vec<_> = stats
        .iter()
        .filter(|d| d.4["descriptive_statistic"] == "minimum")
        .collect();
    assert!(
        minimum.len() >= 10 && minimum.len() < stats.len(),
        "{}",
        stats.len()
    );
    let payloads: Vec<String> = stats
        .iter()
        .map(|(u, s, v, _, b)| wrap(u, s, v, b))
        .collect();
    h.publish(&payloads).await;
    h.wait_for_observations(minimum.len(), Duration::from_secs(120))
        .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    agent.terminate();

    let obs = h.fhir.stored_observations();
    assert_eq!(obs.len(), minimum.len(), "only the configured statistic");
    let instant = |v: &Value| chrono::DateTime::parse_from_rfc3339(v.as_str().unwrap()).unwrap();
    for (uuid, schema, version, _, body) in &minimum {
        let o = obs
            .iter()
            .find(|o| {
                o["identifier"][0]["value"]
                    .as_str()
                    .is_some_and(|i| i.starts_with(uuid.as_str()))
            })
            .unwrap_or_else(|| panic!("{schema} {version}: not uploaded"));
        assert!(o.get("effectiveDateTime").is_none(), "{o:#}");
        let ti = &body["effective_time_frame"]["time_interval"];
        assert_eq!(
            instant(&o["effectivePeriod"]["start"]),
            instant(&ti["start_date_time"]),
            "{schema} {version}"
        );
        if ti.get("end_date_time").is_some() {
            assert_eq!(
                instant(&o["effectivePeriod"]["end"]),
                instant(&ti["end_date_time"]),
                "{schema} {version}"
            );
        }
        assert_eq!(
            o["method"]["coding"][0]["system"],
            "http://terminology.hl7.org/CodeSystem/observation-statistics"
        );
        assert_eq!(o["method"]["coding"][0]["code"], "minimum");
    }
    assert_eq!(h.fhir.schema_failures(), Vec::<String>::new());
    h.assert_all_observations_valid();
    let dead = h.vitalgate(&["dead-letters"]);
    assert_eq!(
        dead.lines()
            .filter(|l| l.contains("reason=statistic"))
            .count(),
        stats.len() - minimum.len(),
        "{dead}"
    );
}
