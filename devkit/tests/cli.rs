//! The `vitalgate-devkit` binary: `pki`, `serve` (one line per accepted entry), `demo`.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use vitalgate_devkit::https_client;
use vitalgate_devkit::pki::TestPki;

const BIN: &str = env!("CARGO_BIN_EXE_vitalgate-devkit");

/// Kills the child when dropped, so a failing test leaves no server behind.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The README's first command, shortened to one measurement per simulated device: the real
/// agent pipeline, the encrypted store and the mTLS uplink, end to end.
#[test]
fn demo_runs_the_pipeline_end_to_end() {
    let out = bin_command()
        .args(["demo", "--count", "1"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout.matches("\nstored ").count(), 3, "{stdout}");
    assert_eq!(stdout.matches("\naccepted ").count(), 3, "{stdout}");
    assert!(stdout.contains("server created Observation/"), "{stdout}");
    assert!(stdout.contains("\"resourceType\": \"Bundle\""), "{stdout}");
    assert!(
        stdout.contains("Bundles failing FHIR R4 schema checks   : 0"),
        "{stdout}"
    );
}

#[test]
fn pki_then_serve_prints_one_line_per_entry() {
    let dir = tempfile::tempdir().unwrap();
    let pki_dir = dir.path().join("pki");
    let out = bin_command()
        .args(["pki", "--out"])
        .arg(&pki_dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let pki = TestPki::paths(&pki_dir, "vitalgate-test-gateway");
    assert!(pki.rogue_client_key.exists());

    let state_file = dir.path().join("state.json");
    let mut child = KillOnDrop(
        bin_command()
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--base",
                "/fhir/r4",
                "--pki",
            ])
            .arg(&pki_dir)
            .arg("--state-file")
            .arg(&state_file)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let (tx, lines) = mpsc::channel();
    let stdout = child.0.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if tx.send(line.unwrap()).is_err() {
                break;
            }
        }
    });
    let next = || {
        lines
            .recv_timeout(Duration::from_secs(30))
            .expect("a line from serve")
    };
    let banner = next();
    let port: u16 = banner
        .split("https://localhost:")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {banner:?}"));

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let client =
        https_client::client_config(&pki.ca_cert, Some((&pki.client_cert, &pki.client_key)))
            .unwrap();
    let response = runtime
        .block_on(https_client::post_fhir(
            client,
            ([127, 0, 0, 1], port).into(),
            "/fhir/r4",
            include_bytes!("../testdata/example-bundle.json"),
        ))
        .unwrap();
    assert_eq!(response.status, 200);
    let printed: Vec<String> = (0..4).map(|_| next()).collect();
    assert_eq!(
        printed,
        [
            "201 Created Device/1 created",
            "201 Created Device/2 created",
            "201 Created Observation/1 created",
            "201 Created Observation/2 created",
        ]
    );
    assert!(state_file.exists());
}

/// The devkit binary, through `VITALGATE_EXEC_WRAPPER` (qemu) when cross/test.sh sets it.
fn bin_command() -> Command {
    match std::env::var("VITALGATE_EXEC_WRAPPER") {
        Ok(w) if !w.trim().is_empty() => {
            let mut parts = w.split_whitespace();
            let mut c = Command::new(parts.next().unwrap_or_default());
            c.args(parts);
            c.arg(BIN);
            c
        }
        _ => Command::new(BIN),
    }
}
