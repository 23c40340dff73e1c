//! Issue #11, "No link at all": `vitalgate export` to a directory (the USB stick),
//! `import-export` into the devkit FHIR server, `export confirm` with the receipt, and the
//! normal uploader afterwards. Runs the real binary.
//!
//! Run alone: `cargo test -p vitalgate --test export`.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use vitalgate_devkit::fhir_server::{FhirTestServer, Mode, ServerConfig};
use vitalgate_devkit::pki::TestPki;

/// The patient of every simulated reading: must never appear in clear in an export file.
const CANARY_PATIENT: &str = "CANARY-7731";
const EXIT_EXPORT_AUTH: i32 = 65;

struct Site {
    dir: tempfile::TempDir,
    fhir: FhirTestServer,
    /// With simulators (readings come in), and without (the uploader alone).
    ingest: PathBuf,
    plain: PathBuf,
    stick: PathBuf,
    site_key: PathBuf,
}

fn vitalgate(args: &[&str]) -> Output {
    common::vitalgate()
        .args(args)
        .output()
        .expect("run vitalgate")
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

impl Site {
    async fn new() -> Site {
        let dir = tempfile::tempdir().unwrap();
        let pki = TestPki::generate(&dir.path().join("pki")).unwrap();
        let fhir = FhirTestServer::start(ServerConfig::for_pki(&pki))
            .await
            .expect("FHIR test server");
        let site_key = dir.path().join("site.key");
        let out = vitalgate(&["export", "keygen", "--out", s(&site_key)]);
        assert!(out.status.success(), "{}", text(&out));
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        let line = stdout
            .lines()
            .find(|l| l.starts_with("recipient_public_key = "))
            .expect("keygen prints the config line")
            .to_string();
        let base = format!(
            r#"[gateway]
id = "export-gw"
data_dir = "{data}"

[store]
key_file = "{key}"

[uplink]
fhir_base = "{base}"
ca_file = "{ca}"
client_cert = "{cert}"
client_key = "{ckey}"
timeout_secs = {timeout}
batch_size = 4
backoff_initial_ms = 100
backoff_max_secs = 1

[export]
{line}
"#,
            // Under qemu (cross/test.sh) a loaded 2-core machine answers several times slower.
            timeout = match std::env::var("VITALGATE_EXEC_WRAPPER") {
                Ok(w) if !w.trim().is_empty() => 25,
                _ => 5,
            },
            data = s(&dir.path().join("data")),
            key = s(&dir.path().join("store.key")),
            base = fhir.base_url(),
            ca = s(&pki.ca_cert),
            cert = s(&pki.client_cert),
            ckey = s(&pki.client_key),
        );
        let plain = dir.path().join("plain.toml");
        std::fs::write(&plain, &base).unwrap();
        let ingest = dir.path().join("ingest.toml");
        std::fs::write(
            &ingest,
            format!(
                r#"{base}
[[simulators]]
name = "sim-scale"
kind = "scale"
patient = "Patient/{CANARY_PATIENT}"
interval_ms = 1000
count = 3

[[simulators]]
name = "sim-cuff"
kind = "blood-pressure"
patient = "Patient/{CANARY_PATIENT}"
interval_ms = 1000
count = 2
"#
            ),
        )
        .unwrap();
        let out = vitalgate(&["keys", "init", "--config", s(&plain)]);
        assert!(out.status.success(), "{}", text(&out));
        let stick = dir.path().join("stick");
        std::fs::create_dir(&stick).unwrap();
        Site {
            dir,
            fhir,
            ingest,
            plain,
            stick,
            site_key,
        }
    }

    fn spawn(&self, config: &Path, log: &str) -> (Child, PathBuf) {
        let log = self.dir.path().join(log);
        let child = common::vitalgate()
            .args(["run", "--config", s(config)])
            .env("VITALGATE_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("spawn vitalgate run");
        (child, log)
    }

    /// Runs the agent with the simulators while the FHIR server is down, until every simulated
    /// reading is stored; returns how many were stored. While it runs, `export` must refuse
    /// the held store with a clear message instead of hanging.
    async fn ingest_offline(&mut self, check_lock: bool) -> usize {
        self.fhir.stop().await;
        let (mut child, log) = self.spawn(&self.ingest.clone(), "ingest.log");
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut stored;
        let mut last_change = Instant::now();
        let mut last = 0;
        loop {
            stored = std::fs::read_to_string(&log)
                .unwrap_or_default()
                .matches("reading stored")
                .count();
            if stored != last {
                last = stored;
                last_change = Instant::now();
            }
            // 3 weights and 2 BP records (a BP record gives more than one reading), one a
            // second: quiet for 2.5 s means the simulators are done.
            if stored >= 5 && last_change.elapsed() > Duration::from_millis(2500) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "stored {stored}:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        if check_lock {
            let out = vitalgate(&["export", "--to", s(&self.stick), "--config", s(&self.plain)]);
            assert!(
                !out.status.success(),
                "export with the daemon running: {}",
                text(&out)
            );
            assert!(
                String::from_utf8_lossy(&out.stderr).contains("stop the service first"),
                "{}",
                text(&out)
            );
        }
        terminate(&mut child);
        self.fhir.restart().await.unwrap();
        stored
    }

    fn export(&self) -> PathBuf {
        let before: Vec<PathBuf> = export_files(&self.stick);
        let out = vitalgate(&["export", "--to", s(&self.stick), "--config", s(&self.plain)]);
        assert!(out.status.success(), "{}", text(&out));
        let after = export_files(&self.stick);
        let new: Vec<PathBuf> = after.into_iter().filter(|p| !before.contains(p)).collect();
        assert_eq!(new.len(), 1, "one new export file: {new:?}\n{}", text(&out));
        assert!(
            !text(&out).contains(CANARY_PATIENT),
            "PHI in export's output"
        );
        // Nothing else on the stick: no temporary file left in clear.
        for entry in std::fs::read_dir(&self.stick).unwrap() {
            let name = entry.unwrap().file_name().to_string_lossy().to_string();
            assert!(
                name.ends_with(".vgexport") || name.ends_with(".vgexport.receipt"),
                "unexpected file on the stick: {name}"
            );
        }
        new[0].clone()
    }

    fn import(&self, file: &Path, key: &Path) -> Output {
        vitalgate(&[
            "import-export",
            s(file),
            "--key",
            s(key),
            "--config",
            s(&self.plain),
        ])
    }

    fn pending(&self) -> (u64, String) {
        let out = vitalgate(&["status", "--config", s(&self.plain)]);
        assert!(out.status.success(), "{}", text(&out));
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        let n = stdout
            .split_whitespace()
            .find_map(|w| w.strip_prefix("pending="))
            .and_then(|v| v.parse().ok())
            .expect("status prints pending=");
        (n, stdout)
    }

    fn posts(&self) -> usize {
        self.fhir
            .state()
            .requests()
            .iter()
            .filter(|r| r.method == "POST")
            .count()
    }

    fn assert_each_observation_once(&self, n: usize) {
        let ids = self.fhir.state().observation_identifiers();
        let unique: std::collections::BTreeSet<&String> = ids.iter().collect();
        assert_eq!(ids.len(), n, "observations on the server: {ids:?}");
        assert_eq!(unique.len(), n, "an identifier twice: {ids:?}");
        assert_eq!(self.fhir.state().duplicate_creates(), 0);
    }
}

fn export_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(".vgexport"))
        .collect();
    v.sort();
    v
}

fn terminate(child: &mut Child) {
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().ok().flatten().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("agent did not stop on SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Round trip: stored offline → exported → imported (each reading once; a second import
/// creates nothing) → `export confirm` empties the outbox. A second batch is exported and
/// imported but not confirmed: the normal uploader then sends it again and the server still
/// has each reading once, and its later receipt confirms nothing new.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exported_readings_arrive_once_by_import_and_by_the_uploader_and_confirm_empties_the_outbox(
) {
    let mut site = Site::new().await;
    let first = site.ingest_offline(true).await;
    assert_eq!(
        site.posts(),
        0,
        "nothing reached the server while it was down"
    );
    let file = site.export();
    let (pending, status) = site.pending();
    assert_eq!(pending as usize, first, "exported readings stay pending");
    assert!(
        status.contains(&format!("exported_awaiting_confirmation={first}")),
        "{status}"
    );

    let out = site.import(&file, &site.site_key);
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(stdout.contains(&format!("created={first} ")), "{stdout}");
    assert!(
        !text(&out).contains(CANARY_PATIENT),
        "PHI in import's output"
    );
    site.assert_each_observation_once(first);
    assert!(site.fhir.state().schema_failures().is_empty());

    // PHI canary: neither the patient nor any value the server now holds is in the file.
    let bytes = std::fs::read(&file).unwrap();
    assert!(!contains(&bytes, CANARY_PATIENT.as_bytes()));
    for marker in ["Observation", "valueQuantity", "mm[Hg]", "Patient/"] {
        assert!(!contains(&bytes, marker.as_bytes()), "{marker} in clear");
    }
    for obs in site.fhir.state().stored_observations() {
        if let Some(v) = obs.pointer("/valueQuantity/value") {
            let needle = format!("\"value\":{v}");
            assert!(!contains(&bytes, needle.as_bytes()), "{needle} in clear");
        }
    }
    let receipt = PathBuf::from(format!("{}.receipt", file.display()));
    let receipt_text = std::fs::read_to_string(&receipt).unwrap();
    assert!(!receipt_text.contains(CANARY_PATIENT));

    // The same file again: everything already there, nothing new.
    let out = site.import(&file, &site.site_key);
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(stdout.contains("created=0 "), "{stdout}");
    assert!(
        stdout.contains(&format!("already_existed={first} ")),
        "{stdout}"
    );
    site.assert_each_observation_once(first);

    let out = vitalgate(&["export", "confirm", s(&receipt), "--config", s(&site.plain)]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&format!("{first} reading(s) confirmed")),
        "{}",
        text(&out)
    );
    assert_eq!(site.pending().0, 0, "confirmed readings left the outbox");

    // Second batch: exported and imported, not confirmed; then the uploader runs.
    let second = site.ingest_offline(false).await;
    let file2 = site.export();
    let out = site.import(&file2, &site.site_key);
    assert!(out.status.success(), "{}", text(&out));
    site.assert_each_observation_once(first + second);
    let posts_before = site.posts();
    let (mut agent, log) = site.spawn(&site.plain.clone(), "uploader.log");
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut quiet_since = Instant::now();
    let mut seen = posts_before;
    loop {
        let now_posts = site.posts();
        if now_posts != seen {
            seen = now_posts;
            quiet_since = Instant::now();
        }
        // The uploader sent its Bundles (batch_size 4) and then went quiet.
        if seen > posts_before && quiet_since.elapsed() > Duration::from_secs(2) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the uploader sent nothing:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    terminate(&mut agent);
    site.assert_each_observation_once(first + second);
    assert_eq!(
        site.pending().0,
        0,
        "the uploader acked the exported readings"
    );
    let receipt2 = PathBuf::from(format!("{}.receipt", file2.display()));
    let out = vitalgate(&[
        "export",
        "confirm",
        s(&receipt2),
        "--config",
        s(&site.plain),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("0 reading(s) confirmed"),
        "{}",
        text(&out)
    );
}

/// A wrong site key, and every kind of damage to the file: a typed error, exit 65, and not one
/// request reaches the server. A receipt changed by hand is refused by `export confirm`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_key_or_a_damaged_file_posts_nothing() {
    let mut site = Site::new().await;
    let n = site.ingest_offline(false).await;
    let file = site.export();
    let bytes = std::fs::read(&file).unwrap();
    let posts = site.posts();

    let other = site.dir.path().join("other.key");
    let out = vitalgate(&["export", "keygen", "--out", s(&other)]);
    assert!(out.status.success(), "{}", text(&out));
    let out = site.import(&file, &other);
    assert_eq!(out.status.code(), Some(EXIT_EXPORT_AUTH), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not to this site key"),
        "{}",
        text(&out)
    );
    assert_eq!(site.posts(), posts);

    // Chunk boundaries: header 108 bytes, then flag + u32 length + ciphertext.
    let mut offsets = Vec::new();
    let mut at = 108;
    while at < bytes.len() {
        offsets.push(at);
        let len = u32::from_be_bytes(bytes[at + 1..at + 5].try_into().unwrap()) as usize;
        at += 5 + len;
    }
    assert!(offsets.len() >= 3, "manifest and at least two Bundles");
    let last = *offsets.last().unwrap();
    let flip = |i: usize| {
        let mut b = bytes.clone();
        b[i] ^= 0x20;
        b
    };
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "header byte (file id)",
            flip(80),
            "chunk 0 does not authenticate",
        ),
        (
            "last Bundle byte",
            flip(last + 5 + 7),
            "does not authenticate",
        ),
        (
            "truncated mid-chunk",
            bytes[..bytes.len() - 9].to_vec(),
            "truncated",
        ),
        ("last chunk dropped", bytes[..last].to_vec(), "truncated"),
    ];
    for (what, damaged, expect) in cases {
        let path = site.stick.join("damaged.vgexport");
        std::fs::write(&path, &damaged).unwrap();
        let out = site.import(&path, &site.site_key);
        assert_eq!(
            out.status.code(),
            Some(EXIT_EXPORT_AUTH),
            "{what}: {}",
            text(&out)
        );
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(expect),
            "{what}: {}",
            text(&out)
        );
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("nothing was posted"),
            "{what}"
        );
        assert_eq!(site.posts(), posts, "{what}: a request reached the server");
        assert!(
            !PathBuf::from(format!("{}.receipt", path.display())).exists(),
            "{what}: a receipt"
        );
    }
    assert_eq!(site.fhir.state().observation_count(), 0);

    // The intact file still imports; a receipt edited to claim more is refused.
    let out = site.import(&file, &site.site_key);
    assert!(out.status.success(), "{}", text(&out));
    site.assert_each_observation_once(n);
    let receipt = PathBuf::from(format!("{}.receipt", file.display()));
    let forged = std::fs::read_to_string(&receipt).unwrap().replacen(
        "\"delivered\":[",
        "\"delivered\":[\"00000000000000000000000000000000\",",
        1,
    );
    let forged_path = site.dir.path().join("forged.receipt");
    std::fs::write(&forged_path, forged).unwrap();
    let out = vitalgate(&[
        "export",
        "confirm",
        s(&forged_path),
        "--config",
        s(&site.plain),
    ]);
    assert_eq!(out.status.code(), Some(EXIT_EXPORT_AUTH), "{}", text(&out));
    assert_eq!(
        site.pending().0 as usize,
        n,
        "nothing acked by a forged receipt"
    );
}

/// A Bundle the server refuses: `import-export` exits 1 and counts it, the receipt lists only
/// what was committed, `export confirm` acks only that; the refused readings stay pending, and
/// importing the same file again once the server takes them delivers and confirms the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_bundle_is_counted_and_only_committed_readings_are_confirmed() {
    let mut site = Site::new().await;
    let n = site.ingest_offline(false).await;
    let file = site.export();
    site.fhir.state().queue_modes([Mode::Fail {
        status: 422,
        retry_after: None,
    }]);
    let out = site.import(&file, &site.site_key);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let count = |key: &str| -> usize {
        stdout
            .split_whitespace()
            .find_map(|w| w.strip_prefix(key))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{key} in {stdout}"))
    };
    let refused = count("refused=");
    assert!(
        refused > 0 && refused < n,
        "refused {refused} of {n}: {stdout}"
    );
    // Committed is created or already_existed: under emulation a slow first answer can time
    // out and the retry finds the Bundle committed (the conditional create's 200).
    assert_eq!(
        count("created=") + count("already_existed=") + count("confirmed_without_detail="),
        n - refused,
        "{stdout}"
    );
    site.assert_each_observation_once(n - refused);

    let receipt = PathBuf::from(format!("{}.receipt", file.display()));
    let confirm = || vitalgate(&["export", "confirm", s(&receipt), "--config", s(&site.plain)]);
    let out = confirm();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        site.pending().0 as usize,
        refused,
        "only committed readings acked"
    );

    let out = site.import(&file, &site.site_key);
    assert!(out.status.success(), "{}", text(&out));
    site.assert_each_observation_once(n);
    let out = confirm();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(site.pending().0, 0);
}
