//! Supervision: a daemon whose ingest is dead must not stay "active". If the pipeline, the
//! uploader or a source ends before shutdown was requested, `App::run` shuts down and returns
//! `RunError::TaskEnded` naming the task (the CLI exits 70 and systemd restarts it).

use std::path::Path;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use vitalgate::app::{App, RunError};
use vitalgate::config::Config;
use vitalgate_devkit::pki::TestPki;

fn config(dir: &Path, extra: &str) -> Config {
    let pki = TestPki::generate(&dir.join("pki")).unwrap();
    let text = format!(
        r#"[gateway]
id = "sup-gw"
data_dir = "data"

[store]
key_file = "store.key"

[uplink]
fhir_base = "https://127.0.0.1:9/fhir"
ca_file = "{ca}"
client_cert = "{cert}"
client_key = "{key}"
{extra}"#,
        ca = pki.ca_cert.display(),
        cert = pki.client_cert.display(),
        key = pki.client_key.display(),
    );
    let path = dir.join("vitalgate.toml");
    std::fs::write(&path, text).unwrap();
    let cfg = Config::load(&path).unwrap();
    vitalgate::store::StoreKey::init(&cfg.store.key_file).unwrap();
    cfg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipeline_whose_input_dies_stops_the_agent_with_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut app = App::build(config(dir.path(), "")).unwrap();
    // No source is configured; without the app's own hold the pipeline's input closes at once.
    app.release_ingest_for_test();
    let shutdown = CancellationToken::new();
    let result = tokio::time::timeout(Duration::from_secs(30), app.run(shutdown.clone()))
        .await
        .expect("run returns on its own: nobody requested shutdown");
    match result {
        Err(RunError::TaskEnded { task, .. }) => assert_eq!(task, "pipeline"),
        other => panic!("expected the pipeline to be reported, got {other:?}"),
    }
    assert!(shutdown.is_cancelled(), "the other tasks were told to stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_whose_finite_simulator_finished_keeps_running_until_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let sim = r#"
[[simulators]]
name = "sim"
kind = "scale"
patient = "Patient/p1"
interval_ms = 1000
count = 1
"#;
    let app = App::build(config(dir.path(), sim)).unwrap();
    let store = std::sync::Arc::clone(app.store());
    let shutdown = CancellationToken::new();
    let run = tokio::spawn(app.run(shutdown.clone()));
    // The simulator produces its one reading and ends; the agent must stay up.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while store.stats().unwrap().pending < 1 {
        assert!(tokio::time::Instant::now() < deadline, "no reading stored");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!run.is_finished(), "a finished simulator is not a failure");
    shutdown.cancel();
    let summary = tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .unwrap()
        .unwrap()
        .expect("a requested shutdown is a clean exit");
    assert_eq!(summary.pending_at_exit, 1);
}
