//! The edges of export: `vitalgate export --to DIR`, `export keygen`, `export confirm` and
//! `import-export`. File and store I/O, the clock, the terminal and the uplink live here; the
//! format, the Bundle plan and the receipt are pure ([`super::format`], [`super::plan`],
//! [`super::receipt`]).

use std::collections::BTreeSet;
use std::fs::{File, OpenOptions};
use std::io::{IsTerminal, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};

use super::format::{self, BundleChunk, Manifest};
use super::keys::{format_public_key, SiteKey};
use super::receipt::{self, Receipt};
use crate::cli::{EXIT_CONFIG, EXIT_EXPORT_AUTH};
use crate::config::Config;
use crate::identity::ReadingId;
use crate::reading::Reading;
use crate::uplink::backoff::Backoff;
use crate::uplink::client::{UplinkClient, UplinkTls};
use crate::uplink::fhir::{EntryRef, GatewayInfo};
use crate::uplink::outcome::{self, EntryStatus, Outcome};

/// What the gateway keeps (sealed, `exports` tree) about an export file.
#[derive(Debug, Serialize, Deserialize)]
struct ExportRecord {
    receipt_key: [u8; 32],
    created_ms: u64,
    readings: u32,
    bundles: u32,
    file_name: String,
}

/// Suffix of export files; the receipt is the file's path with [`RECEIPT_SUFFIX`] appended.
pub const FILE_SUFFIX: &str = ".vgexport";
pub const RECEIPT_SUFFIX: &str = ".receipt";
/// Attempts per Bundle in `import-export` for answers that say "try again".
const IMPORT_ATTEMPTS: u32 = 5;

fn load_config(path: &Path) -> Result<Config, ExitCode> {
    Config::load(path).map_err(|e| {
        eprintln!("vitalgate: configuration error: {e}");
        ExitCode::from(EXIT_CONFIG)
    })
}

fn now() -> SystemTime {
    #[allow(clippy::disallowed_methods)] // the edge: the command runs now
    SystemTime::now()
}

fn ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A progress line on stderr when it is a terminal; nothing otherwise (the summary says it).
struct Progress {
    what: &'static str,
    total: usize,
    tty: bool,
    drawn: Option<std::time::Instant>,
}

impl Progress {
    fn new(what: &'static str, total: usize) -> Self {
        Progress {
            what,
            total,
            tty: std::io::stderr().is_terminal(),
            drawn: None,
        }
    }

    fn set(&mut self, done: usize) {
        if !self.tty {
            return;
        }
        if done < self.total
            && self
                .drawn
                .is_some_and(|t| t.elapsed() < Duration::from_millis(100))
        {
            return;
        }
        self.drawn = Some(std::time::Instant::now());
        let width = 30;
        let filled = (done * width).checked_div(self.total).unwrap_or(width);
        let bar: String = "#".repeat(filled) + &"-".repeat(width - filled.min(width));
        eprint!("\r{} [{bar}] {done}/{}", self.what, self.total);
        if done >= self.total {
            eprintln!();
        }
    }
}

/// `vitalgate export --to DIR`.
pub fn export(config: &Path, to: &Path) -> ExitCode {
    let cfg = match load_config(config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let Some(export_cfg) = &cfg.export else {
        eprintln!(
            "vitalgate: configuration error: {}: export needs an [export] section with recipient_public_key (the receiving site's key: `vitalgate export keygen` prints it)",
            config.display()
        );
        return ExitCode::from(EXIT_CONFIG);
    };
    if !to.is_dir() {
        eprintln!(
            "vitalgate export: --to {}: not a directory (mount the stick first)",
            to.display()
        );
        return ExitCode::from(EXIT_CONFIG);
    }
    let store = match crate::app::open_store(&cfg) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("vitalgate export: {e}{}", crate::cli::in_use_hint(&e));
            return ExitCode::FAILURE;
        }
    };
    let state = crate::uploader::ConsentSource::new(&cfg.consent)
        .refresh()
        .clone();
    let (records, held) = match store.pending_where::<Reading>(usize::MAX, |r| state.may_leave(r)) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("vitalgate export: {e}");
            return ExitCode::FAILURE;
        }
    };
    if records.is_empty() {
        println!("nothing to export: no pending reading may leave ({held} held back for consent)");
        return ExitCode::SUCCESS;
    }
    let readings: Vec<Reading> = records.into_iter().map(|r| r.value).collect();
    let gateway = GatewayInfo::new(&cfg.gateway.id, env!("CARGO_PKG_VERSION"))
        .with_write_mode(cfg.uplink.write_mode);
    let started = std::time::Instant::now();
    let mut bar = Progress::new("export", readings.len());
    let plan = super::plan::plan(&gateway, &readings, cfg.uplink.batch_size, |n| bar.set(n));
    if plan.chunks.is_empty() {
        println!("nothing to export: {} pending reading(s) cannot be mapped; the uploader dead-letters them with the reason", plan.left_out);
        return ExitCode::FAILURE;
    }
    let rng = SystemRandom::new();
    let mut file_id = [0u8; 16];
    let mut receipt_key = [0u8; 32];
    if rng
        .fill(&mut file_id)
        .and_then(|()| rng.fill(&mut receipt_key))
        .is_err()
    {
        eprintln!("vitalgate export: the system random number generator failed");
        return ExitCode::FAILURE;
    }
    let created = now();
    let manifest = Manifest {
        gateway: cfg.gateway.id.clone(),
        software: env!("CARGO_PKG_VERSION").into(),
        receipt_key,
    };
    let bytes = match format::seal_file(
        &export_cfg.recipient,
        file_id,
        ms(created),
        &manifest,
        &plan.chunks,
        &rng,
    ) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("vitalgate export: {e}");
            return ExitCode::FAILURE;
        }
    };
    let stamp = chrono::DateTime::<chrono::Utc>::from(created).format("%Y%m%dT%H%M%SZ");
    let name = format!(
        "vitalgate-{}-{stamp}-{}{FILE_SUFFIX}",
        cfg.gateway.id,
        hex::encode(&file_id[..4])
    );
    let path = to.join(&name);
    if let Err(e) = write_new_file(&path, &bytes) {
        eprintln!(
            "vitalgate export: cannot write {}: {e}; nothing was marked exported",
            path.display()
        );
        return ExitCode::FAILURE;
    }
    let ids: Vec<[u8; 32]> = plan
        .chunks
        .iter()
        .flat_map(|c| c.reading_ids().copied().collect::<Vec<_>>())
        .collect();
    let record = ExportRecord {
        receipt_key,
        created_ms: ms(created),
        readings: u32::try_from(ids.len()).unwrap_or(u32::MAX),
        bundles: u32::try_from(plan.chunks.len()).unwrap_or(u32::MAX),
        file_name: name.clone(),
    };
    let marked = match postcard::to_stdvec(&record)
        .map_err(|e| e.to_string())
        .and_then(|r| {
            store
                .record_export(&file_id, &r, &ids, created)
                .map_err(|e| e.to_string())
        }) {
        Ok(n) => n,
        Err(e) => {
            // Without the record a receipt for this file could never be confirmed: remove it.
            let _ = std::fs::remove_file(&path);
            eprintln!("vitalgate export: the store could not record the export ({e}); the file was removed, nothing is marked");
            return ExitCode::FAILURE;
        }
    };
    crate::cli::audit_once(
        &cfg,
        crate::audit::AuditEvent::Exported {
            readings: ids
                .iter()
                .map(|id| crate::audit::Id(crate::identity::ReadingId::from_bytes(*id)))
                .collect(),
            destination: name.clone(),
        },
    );
    println!(
        "exported {} reading(s) in {} Bundle(s) to {} ({} bytes, {:.1} s); they stay pending, marked exported ({marked}), until `vitalgate export confirm` with the receipt{}{}",
        ids.len(),
        plan.chunks.len(),
        path.display(),
        bytes.len(),
        started.elapsed().as_secs_f64(),
        if held > 0 { format!("; {held} held back for consent") } else { String::new() },
        if plan.left_out > 0 { format!("; {} left out (cannot be mapped: the uploader handles them)", plan.left_out) } else { String::new() },
    );
    ExitCode::SUCCESS
}

/// Writes `bytes` to a new file at `path` (never replacing one): a temporary name, fsync,
/// rename, fsync of the directory. Mode 0600 (the content is encrypted, the name is not a
/// secret, but nobody else needs it).
fn write_new_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if path.exists() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::AlreadyExists,
            "file exists",
        ));
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default()
    ));
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// `vitalgate export keygen --out FILE`.
pub fn keygen(out: &Path) -> ExitCode {
    match SiteKey::generate(out) {
        Ok(key) => {
            println!(
                "created site key {} (mode 0600). Keep it at the receiving site, never on a gateway; without it export files cannot be opened.",
                out.display()
            );
            println!("Put this line in the gateways' [export] section:");
            println!(
                "recipient_public_key = \"{}\"",
                format_public_key(&key.public())
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("vitalgate export keygen: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `vitalgate export confirm RECEIPT`: acks the readings the receipt says the server committed.
pub fn confirm(config: &Path, receipt_path: &Path) -> ExitCode {
    let cfg = match load_config(config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let text = match std::fs::read_to_string(receipt_path) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("vitalgate export confirm: {}: {e}", receipt_path.display());
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let (receipt, mac) = match Receipt::parse(&text) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("vitalgate export confirm: {}: {e}", receipt_path.display());
            return ExitCode::from(EXIT_EXPORT_AUTH);
        }
    };
    let store = match crate::app::open_store(&cfg) {
        Ok(s) => s,
        Err(e) => {
            eprintln!(
                "vitalgate export confirm: {e}{}",
                crate::cli::in_use_hint(&e)
            );
            return ExitCode::FAILURE;
        }
    };
    let record: ExportRecord = match store.export_record(&receipt.file_id) {
        Ok(Some(raw)) => match postcard::from_bytes(&raw) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("vitalgate export confirm: the store's record of this export does not decode: {e}");
                return ExitCode::FAILURE;
            }
        },
        Ok(None) => {
            eprintln!(
                "vitalgate export confirm: this gateway wrote no export file with id {} (a receipt of another gateway?)",
                hex::encode(receipt.file_id)
            );
            return ExitCode::FAILURE;
        }
        Err(e) => {
            eprintln!("vitalgate export confirm: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) = receipt.verify(&mac, &record.receipt_key) {
        eprintln!(
            "vitalgate export confirm: {}: {e}; nothing acked",
            receipt_path.display()
        );
        return ExitCode::from(EXIT_EXPORT_AUTH);
    }
    let pending = match store.pending::<Reading>(usize::MAX) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("vitalgate export confirm: {e}");
            return ExitCode::FAILURE;
        }
    };
    let ids: Vec<[u8; 32]> = pending
        .iter()
        .map(|r| r.id)
        .filter(|id| {
            receipt
                .delivered
                .contains(&receipt::tag(&record.receipt_key, id))
        })
        .collect();
    match store.ack(&ids) {
        Ok(n) => {
            println!(
                "export {} ({}): {n} reading(s) confirmed delivered and removed from the outbox; {} of the receipt's {} were no longer pending (uploaded meanwhile, or confirmed before)",
                hex::encode(receipt.file_id),
                record.file_name,
                receipt.delivered.len().saturating_sub(n),
                receipt.delivered.len()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("vitalgate export confirm: {e} (nothing or part acked; safe to repeat)");
            ExitCode::FAILURE
        }
    }
}

/// Per-file counts of `import-export`, in readings.
#[derive(Debug, Default)]
struct Counts {
    sent: usize,
    created: usize,
    existed: usize,
    confirmed_unknown: usize,
    refused: usize,
    not_sent: usize,
}

/// `vitalgate import-export FILE --key SITE_KEY`.
pub fn import(config: &Path, file: &Path, key: &Path, receipt_out: Option<&Path>) -> ExitCode {
    let cfg = match load_config(config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let site = match SiteKey::load(key) {
        Ok(k) => k,
        Err(e) => {
            eprintln!("vitalgate import-export: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let bytes = match std::fs::read(file) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("vitalgate import-export: {}: {e}", file.display());
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    // The whole file is verified before anything is posted.
    let opened = match format::open_file(&bytes, &site) {
        Ok(o) => o,
        Err(e) => {
            eprintln!(
                "vitalgate import-export: {}: {e}; nothing was posted",
                file.display()
            );
            return ExitCode::from(EXIT_EXPORT_AUTH);
        }
    };
    let client = match UplinkClient::new(&UplinkTls::from_config(&cfg.uplink))
        .and_then(|c| c.with_oauth2(cfg.uplink.oauth2.as_ref()))
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("vitalgate import-export: uplink: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("vitalgate: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let receipt_path = receipt_out.map_or_else(|| receipt_path_for(file), Path::to_path_buf);
    let mut receipt = previous_receipt(
        &receipt_path,
        &opened.header.file_id,
        &opened.manifest.receipt_key,
    );
    let backoff = Backoff::new(cfg.uplink.backoff_initial, cfg.uplink.backoff_max);
    let mut counts = Counts::default();
    let mut bar = Progress::new("import", opened.bundles.len());
    let mut stop: Option<String> = None;
    for (i, chunk) in opened.bundles.iter().enumerate() {
        let n = chunk.reading_ids().count();
        if stop.is_some() {
            counts.not_sent += n;
            continue;
        }
        match rt.block_on(post_one(&client, chunk, &backoff)) {
            Posted::Accepted(accepted) => {
                counts.sent += n;
                for a in accepted {
                    match a.status {
                        EntryStatus::Created => counts.created += 1,
                        EntryStatus::Existing => counts.existed += 1,
                        EntryStatus::Unknown => counts.confirmed_unknown += 1,
                    }
                    receipt.delivered.insert(receipt::tag(
                        &opened.manifest.receipt_key,
                        a.reading_id.as_bytes(),
                    ));
                }
            }
            Posted::Refused(status) => {
                counts.sent += n;
                counts.refused += n;
                eprintln!("vitalgate import-export: Bundle {} of {}: the server refused it ({status}); its readings stay pending on the gateway (the uploader isolates and dead-letters a bad reading)", i + 1, opened.bundles.len());
            }
            Posted::Stop(why) => {
                counts.not_sent += n;
                stop = Some(why);
            }
        }
        bar.set(i + 1);
    }
    if let Err(e) = write_receipt(&receipt_path, &receipt.encode(&opened.manifest.receipt_key)) {
        eprintln!(
            "vitalgate import-export: cannot write the receipt {}: {e}",
            receipt_path.display()
        );
    } else {
        println!("receipt: {} ({} reading(s) confirmed; take it back to the gateway: vitalgate export confirm {})", receipt_path.display(), receipt.delivered.len(), receipt_path.display());
    }
    println!(
        "{}: gateway {} exported {} reading(s) in {} Bundle(s): sent={} created={} already_existed={} confirmed_without_detail={} refused={} not_sent={}",
        file.display(),
        opened.manifest.gateway,
        opened.header.readings,
        opened.header.bundles,
        counts.sent,
        counts.created,
        counts.existed,
        counts.confirmed_unknown,
        counts.refused,
        counts.not_sent
    );
    if let Some(why) = stop {
        eprintln!("vitalgate import-export: stopped: {why}; run it again later (safe to repeat)");
    }
    if counts.refused == 0 && counts.not_sent == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

enum Posted {
    Accepted(Vec<outcome::Accepted>),
    /// A reading-level refusal (400, 412, 422, failed entries, 413): this Bundle only.
    Refused(String),
    /// Server-wide (401, 403, 404, 405, 406, 415, no token) or still failing after
    /// [`IMPORT_ATTEMPTS`]: stop, the rest is not sent.
    Stop(String),
}

async fn post_one(client: &UplinkClient, chunk: &BundleChunk, backoff: &Backoff) -> Posted {
    let bundle: serde_json::Value = match serde_json::from_slice(&chunk.bundle) {
        Ok(v) => v,
        Err(e) => return Posted::Refused(format!("Bundle does not parse: {e}")),
    };
    let total = bundle["entry"].as_array().map_or(0, Vec::len);
    let entries: Vec<EntryRef> = chunk
        .entries
        .iter()
        .map(|(i, ids)| EntryRef {
            entry_index: *i as usize,
            reading_ids: ids.iter().map(|b| ReadingId::from_bytes(*b)).collect(),
        })
        .collect();
    let mut rng = rand::rng();
    let mut last = String::new();
    for attempt in 0..IMPORT_ATTEMPTS {
        let mut floor = None;
        match client.send_bundle(&bundle).await {
            Err(e) if e.pauses_uploads() => {
                return Posted::Stop(format!("the token endpoint refuses: {e}"))
            }
            Err(e) => last = format!("no answer: {e}"),
            Ok(resp) => {
                #[allow(clippy::disallowed_methods)] // the edge: to read a Retry-After date
                let now = chrono::Utc::now();
                match outcome::classify(resp.status, resp.retry_after.as_deref(), &resp.body, total, &entries, now) {
                    Outcome::Accepted(a) => return Posted::Accepted(a),
                    Outcome::Retry { after, reason } => {
                        floor = after;
                        last = format!("not confirmed: {reason:?}");
                    }
                    Outcome::EntriesFailed { status, .. } => {
                        return Posted::Refused(format!("entries failed, HTTP {status}"))
                    }
                    Outcome::Reject { status, .. } => return Posted::Refused(format!("HTTP {status}")),
                    Outcome::Split => return Posted::Refused("HTTP 413, too large".into()),
                    Outcome::Refused { status } => {
                        return Posted::Stop(format!("the server refuses the gateway's uploads (HTTP {status}: not authorised, or wrong base URL)"))
                    }
                    Outcome::Unauthorized => return Posted::Stop("HTTP 401 (not authorised)".into()),
                }
            }
        }
        if attempt + 1 < IMPORT_ATTEMPTS {
            tokio::time::sleep(backoff.delay(attempt, floor, &mut rng)).await;
        }
    }
    Posted::Stop(format!("{last} after {IMPORT_ATTEMPTS} attempts"))
}

/// `<file>.receipt`.
pub fn receipt_path_for(file: &Path) -> PathBuf {
    let mut s = file.as_os_str().to_owned();
    s.push(RECEIPT_SUFFIX);
    PathBuf::from(s)
}

/// A receipt already written for this file by an earlier import (kept: what it confirmed stays
/// confirmed); empty when there is none or it does not verify.
fn previous_receipt(path: &Path, file_id: &[u8; 16], key: &[u8; 32]) -> Receipt {
    let fresh = Receipt {
        file_id: *file_id,
        delivered: BTreeSet::new(),
    };
    let Ok(text) = std::fs::read_to_string(path) else {
        return fresh;
    };
    match Receipt::parse(&text) {
        Ok((r, mac)) if r.file_id == *file_id && r.verify(&mac, key).is_ok() => r,
        _ => fresh,
    }
}

fn write_receipt(path: &Path, text: &str) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default()
    ));
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .open(&tmp)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    File::open(dir)?.sync_all()
}
