//! The command line. `main.rs` only calls [`main`].
//!
//! Exit codes: 0 success; 64 bad configuration or bad device file (one-line reason on stderr);
//! 2 bad arguments (clap's convention); 1 a runtime failure at start (store, key, TLS files);
//! 65 an export file or receipt that does not authenticate (`import-export`, `export confirm`);
//! 70 a task the daemon needs (pipeline, uploader, a source) ended or panicked while running.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::config::{Config, DEFAULT_PATH};

pub const EXIT_CONFIG: u8 = 64;
/// An export file or receipt that does not authenticate: wrong key, tampered, truncated
/// (sysexits EX_DATAERR). Nothing was posted or acked.
pub const EXIT_EXPORT_AUTH: u8 = 65;
pub const EXIT_USAGE: u8 = 2;
/// A task the daemon needs ended while running (sysexits EX_SOFTWARE): systemd restarts it.
pub const EXIT_SOFTWARE: u8 = 70;

#[derive(Parser, Debug)]
#[command(
    name = "vitalgate",
    version,
    about = "Medical-device edge agent: devices -> encrypted outbox -> FHIR R4 over mutual TLS"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Debug, Clone)]
struct ConfigArg {
    /// Path of the configuration file.
    #[arg(long, short = 'c', value_name = "PATH", default_value = DEFAULT_PATH, global = true)]
    config: PathBuf,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the agent until SIGTERM/SIGINT.
    Run(ConfigArg),
    /// Check a configuration file; exit 0 if it is valid, 64 with the reason otherwise.
    CheckConfig(ConfigArg),
    /// Manage the store encryption key.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Decode a captured payload: a GATT characteristic value or a serial byte stream.
    Decode(DecodeArgs),
    /// Show what the gateway is doing. While the daemon runs: its live status snapshot
    /// (devices, uplink, certificate, disk, clock, alarms, counters); otherwise the outbox.
    Status {
        #[command(flatten)]
        config: ConfigArg,
        /// Print the snapshot as JSON (schema vitalgate.status/1).
        #[arg(long)]
        json: bool,
    },
    /// Check this gateway on site: config, store key, store, disk, clock, Bluetooth, serial
    /// ports, MQTT broker, uplink. ✓/✗ per check with the fix; exit 1 if anything is ✗. Run it
    /// as the service user: sudo -u vitalgate vitalgate doctor
    Doctor(ConfigArg),
    /// Check the uplink to the FHIR server as the daemon connects to it, posting nothing: the
    /// TLS version, cipher and key-exchange group, the server's certificate chain and expiry,
    /// the client certificate's expiry, and whether the server's CapabilityStatement
    /// (GET [base]/metadata) supports FHIR R4, transaction, and create with conditional create
    /// of Observation and Device. ✓/✗ per item with the fix; exit 0 only when all pass, 1
    /// otherwise, 64 for a bad configuration.
    CheckUplink(ConfigArg),
    /// List nearby Bluetooth devices, their health services and whether they are configured;
    /// print a `[[devices]]` snippet for each health device.
    Scan {
        /// How long to scan.
        #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=300))]
        seconds: u64,
        /// BlueZ adapter.
        #[arg(long, default_value = "hci0")]
        adapter: String,
        /// Config file, to mark configured devices (optional).
        #[arg(long, short = 'c', value_name = "PATH")]
        config: Option<PathBuf>,
    },
    /// Pair (bond) a Bluetooth device once, mark it trusted, print a config snippet.
    Pair {
        /// The device's address, AA:BB:CC:DD:EE:FF.
        address: String,
        /// The passkey for devices that show or print one (6 digits).
        #[arg(long, value_parser = clap::value_parser!(u32).range(0..=999_999))]
        passkey: Option<u32>,
        /// BlueZ adapter.
        #[arg(long, default_value = "hci0")]
        adapter: String,
        /// How long to wait for the device to advertise.
        #[arg(long, default_value_t = 30)]
        seconds: u64,
    },
    /// List dead letters, print one payload (PHI: only when a technician asks), or requeue them.
    DeadLetters {
        #[command(flatten)]
        config: ConfigArg,
        /// Print the payload of this dead letter (its sequence number) to stdout.
        #[arg(long, value_name = "SEQ")]
        show: Option<u64>,
        #[command(subcommand)]
        command: Option<DeadLettersCommand>,
    },
    /// No link: write every pending reading, encrypted to the receiving site's key
    /// (`[export] recipient_public_key`), to a file in DIR (a USB stick). The readings stay
    /// pending until `export confirm` with the receipt `import-export` wrote. Stop the daemon
    /// first.
    #[command(args_conflicts_with_subcommands = true)]
    Export {
        #[command(flatten)]
        config: ConfigArg,
        /// The directory to write the export file to.
        #[arg(long, value_name = "DIR")]
        to: Option<PathBuf>,
        #[command(subcommand)]
        command: Option<ExportCommand>,
    },
    /// Upload an export file through the normal uplink (`[uplink]` of --config), after
    /// verifying all of it; writes FILE.receipt. Exit 0 all delivered, 1 some refused or not
    /// sent, 64 bad config/usage, 65 the file does not authenticate (nothing posted).
    ImportExport {
        #[command(flatten)]
        config: ConfigArg,
        /// The export file.
        #[arg(value_name = "FILE")]
        file: PathBuf,
        /// The receiving site's private key file (`vitalgate export keygen`).
        #[arg(long, value_name = "SITE_KEY_FILE")]
        key: PathBuf,
        /// Where to write the receipt (default: FILE.receipt).
        #[arg(long, value_name = "PATH")]
        receipt: Option<PathBuf>,
    },
    /// Store maintenance.
    Store {
        #[command(subcommand)]
        command: StoreCommand,
    },
    /// The audit log (`<data_dir>/audit`): hash-chained custody and security events.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Where a reading is: pending, in flight, delivered (server id, version, time),
    /// dead-lettered or purged (why), duplicate, or unknown. Reads the audit log only, so it
    /// works while the daemon runs. Exit 0 if the reading is known, 1 if not.
    Ledger {
        /// The reading's id: 64 hex digits, or the 12-digit short id the logs print.
        #[arg(value_name = "READING-ID")]
        reading: String,
        #[command(flatten)]
        config: ConfigArg,
        /// Print the answer as JSON (schema vitalgate.ledger/1).
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
enum AuditCommand {
    /// Check the audit log's hash chain. Exit 0 if it is intact (a torn last line from a
    /// power loss is reported, not an error), 1 naming the first broken entry (segment, seq,
    /// why), 64 for a bad configuration. Reads the files only: safe while the daemon runs.
    Verify {
        #[command(flatten)]
        config: ConfigArg,
        /// A head published earlier (`audit_head` of `vitalgate status --json` or of the fleet
        /// status message: `SEQ:HASH`): the log must still hold that entry with that hash
        /// (exit 1 if it holds another, or ends before it). Repeatable.
        #[arg(long, value_name = "SEQ:HASH", value_parser = parse_anchor)]
        anchor: Vec<(u64, [u8; 32])>,
    },
}

#[derive(Subcommand, Debug)]
enum StoreCommand {
    /// Compact the outbox now: copy it into a fresh database that takes its place (sled's
    /// files do not shrink as readings are delivered). Prints the size before and after. The
    /// daemon does this by itself after its hourly prune when at most 5,000 readings are
    /// pending and the files take over 4x the live entries; stop the daemon first.
    Compact(ConfigArg),
    /// Recover the readings of a quarantined store (`<data_dir>/quarantine/store-*`, moved
    /// aside because its files were damaged) into the live outbox: every record that still
    /// authenticates under the store key, through the normal insert path (safe to repeat).
    /// The quarantined store is not changed. Stop the daemon first.
    Salvage {
        #[command(flatten)]
        config: ConfigArg,
        /// The quarantined store directory.
        #[arg(value_name = "PATH")]
        path: PathBuf,
    },
}

#[derive(Subcommand, Debug)]
enum ExportCommand {
    /// Create the receiving site's key pair: writes the private key file (mode 0600, never
    /// overwrites) and prints the `recipient_public_key` line for the gateways' config.
    Keygen {
        /// Where to write the private key file (mode 0600; must not exist yet).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Ack the readings an `import-export` receipt says the server committed (stop the daemon
    /// first). Safe to repeat.
    Confirm {
        /// The receipt (FILE.receipt beside the export file).
        #[arg(value_name = "RECEIPT")]
        receipt: PathBuf,
    },
}

#[derive(Subcommand, Debug)]
enum DeadLettersCommand {
    /// Put readings back into the outbox under their original identifiers, to be uploaded
    /// again (stop the daemon first). Safe to repeat: a reading is stored and created once.
    #[command(group(clap::ArgGroup::new("which").required(true).args(["seq", "all"])))]
    Requeue {
        /// The dead letter's sequence number (as listed by `vitalgate dead-letters`).
        #[arg(value_name = "SEQ")]
        seq: Option<u64>,
        /// Every dead letter that holds a reading; the others are skipped and counted.
        #[arg(long)]
        all: bool,
    },
}

#[derive(Subcommand, Debug)]
enum KeysCommand {
    /// Create the store key file named by `store.key_file` (mode 0600; never overwrites).
    /// It is the key-encryption key: it wraps the store's data keys (the keyring).
    Init(ConfigArg),
    /// Start sealing new records with a new data key (algorithm `store.cipher`). A running
    /// daemon picks it up within seconds and re-seals older records in the background; every
    /// record stays readable throughout. Works while the daemon runs.
    Rotate(ConfigArg),
    /// Where the store key comes from, the data keys (id, algorithm, created, active) and,
    /// with the daemon stopped, how many records each key seals.
    Status(ConfigArg),
}

#[derive(Args, Debug)]
#[command(group(clap::ArgGroup::new("what").required(true).args(["characteristic", "protocol"])))]
#[command(group(clap::ArgGroup::new("input").required(true).args(["hex", "file"])))]
struct DecodeArgs {
    /// GATT characteristic UUID, 16-bit (e.g. 0x2A35).
    #[arg(long, value_name = "UUID")]
    characteristic: Option<String>,
    /// Serial protocol name (e.g. nonin-df7) or the path of a generic-line device file.
    #[arg(long, value_name = "NAME|PATH")]
    protocol: Option<String>,
    /// The payload as hex (spaces and colons allowed).
    #[arg(long, value_name = "HEX")]
    hex: Option<String>,
    /// The payload from a file (raw bytes, e.g. a serial capture).
    #[arg(long, value_name = "PATH", conflicts_with = "hex")]
    file: Option<PathBuf>,
}

/// The clap definition of the command line (the man pages are generated from it:
/// `vitalgate-devkit man`).
pub fn command() -> clap::Command {
    <Cli as clap::CommandFactory>::command()
}

/// Runs the CLI and returns the process exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run(c) => run(&c.config),
        Command::CheckConfig(c) => match Config::load(&c.config) {
            Ok(cfg) => {
                for w in cfg.warnings() {
                    eprintln!("vitalgate: warning: {w}");
                }
                println!(
                    "{}: OK (gateway {}, {} device(s), {} simulator(s))",
                    c.config.display(),
                    cfg.gateway.id,
                    cfg.devices.len(),
                    cfg.simulators.len()
                );
                ExitCode::SUCCESS
            }
            Err(e) => config_error(&e),
        },
        Command::Keys {
            command: KeysCommand::Init(c),
        } => keys_init(&c.config),
        Command::Keys {
            command: KeysCommand::Rotate(c),
        } => keys_rotate(&c.config),
        Command::Keys {
            command: KeysCommand::Status(c),
        } => keys_status(&c.config),
        Command::Decode(d) => decode(d),
        Command::Status { config, json } => status(&config.config, json),
        Command::Doctor(c) => doctor(&c.config),
        Command::CheckUplink(c) => check_uplink(&c.config),
        Command::Scan {
            seconds,
            adapter,
            config,
        } => scan(seconds, &adapter, config.as_deref()),
        Command::Pair {
            address,
            passkey,
            adapter,
            seconds,
        } => pair(&address, passkey, &adapter, seconds),
        Command::DeadLetters {
            config,
            show,
            command: None,
        } => dead_letters(&config.config, show),
        Command::DeadLetters {
            config,
            command: Some(DeadLettersCommand::Requeue { seq, all }),
            ..
        } => requeue(&config.config, if all { None } else { seq }),
        Command::Store {
            command: StoreCommand::Salvage { config, path },
        } => salvage(&config.config, &path),
        Command::Store {
            command: StoreCommand::Compact(config),
        } => store_compact(&config.config),
        Command::Audit {
            command: AuditCommand::Verify { config, anchor },
        } => audit_verify(&config.config, &anchor),
        Command::Ledger {
            reading,
            config,
            json,
        } => ledger(&config.config, &reading, json),
        Command::Export {
            config,
            to,
            command,
        } => match (command, to) {
            (Some(ExportCommand::Keygen { out }), _) => crate::export::commands::keygen(&out),
            (Some(ExportCommand::Confirm { receipt }), _) => {
                crate::export::commands::confirm(&config.config, &receipt)
            }
            (None, Some(to)) => crate::export::commands::export(&config.config, &to),
            (None, None) => {
                eprintln!("vitalgate export: --to DIR, `keygen --out FILE` or `confirm RECEIPT` is required");
                ExitCode::from(EXIT_CONFIG)
            }
        },
        Command::ImportExport {
            config,
            file,
            key,
            receipt,
        } => crate::export::commands::import(&config.config, &file, &key, receipt.as_deref()),
    }
}

fn config_error(e: &dyn std::fmt::Display) -> ExitCode {
    eprintln!("vitalgate: configuration error: {e}");
    ExitCode::from(EXIT_CONFIG)
}

fn init_tracing() {
    crate::logging::init();
}

fn run(path: &Path) -> ExitCode {
    init_tracing();
    let cfg = match Config::load(path) {
        Ok(c) => c,
        Err(e) => return config_error(&e),
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("vitalgate: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async {
        // Start-up checklist: every file and check, the store last; nothing runs yet.
        let app = match crate::app::App::build(cfg) {
            Ok(app) => app,
            Err(e) => {
                tracing::error!(error = %e, "vitalgate cannot start");
                eprintln!("vitalgate: cannot start: {e}");
                return ExitCode::FAILURE;
            }
        };
        let shutdown = CancellationToken::new();
        let signal = {
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                crate::app::shutdown_signal().await;
                shutdown.cancel();
            })
        };
        let result = app.run(shutdown).await;
        signal.abort();
        match result {
            Ok(_) => ExitCode::SUCCESS,
            Err(e) => {
                // systemd restarts the daemon (Restart=on-failure).
                eprintln!("vitalgate: {e}");
                ExitCode::from(EXIT_SOFTWARE)
            }
        }
    })
}

fn keys_init(path: &Path) -> ExitCode {
    let cfg = match Config::load(path) {
        Ok(c) => c,
        Err(e) => return config_error(&e),
    };
    match crate::store::StoreKey::init(&cfg.store.key_file) {
        Ok(()) => {
            println!(
                "created store key {} (mode 0600). Keep it with the gateway: without it the outbox cannot be read.",
                cfg.store.key_file.display()
            );
            audit_once(
                &cfg,
                crate::audit::AuditEvent::KeyCreated {
                    key_file: cfg.store.key_file.display().to_string(),
                },
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("vitalgate: keys init: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The store key and the store's keyring, for `keys rotate` and `keys status`. A store that
/// has no keyring yet (new, or written by a format 4 build) gets one by being opened once.
fn load_keyring(
    cfg: &Config,
) -> Result<
    (
        crate::store::StoreKey,
        PathBuf,
        crate::store::keyring::Keyring,
    ),
    String,
> {
    use crate::store::keyring::Keyring;
    let (kek, from) =
        crate::store::StoreKey::load_kek(&cfg.store.key_file).map_err(|e| e.to_string())?;
    let dir = crate::app::store_dir(cfg);
    if let Some(ring) = Keyring::load(&dir, &kek).map_err(|e| e.to_string())? {
        return Ok((kek, from, ring));
    }
    // Opening the store creates its keyring (or restores it from the store's copy).
    drop(crate::app::open_store(cfg).map_err(|e| e.to_string())?);
    match Keyring::load(&dir, &kek).map_err(|e| e.to_string())? {
        Some(ring) => Ok((kek, from, ring)),
        None => Err(format!("store {} has no keyring", dir.display())),
    }
}

fn keys_rotate(path: &Path) -> ExitCode {
    let cfg = match Config::load(path) {
        Ok(c) => c,
        Err(e) => return config_error(&e),
    };
    let (kek, _, _) = match load_keyring(&cfg) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("vitalgate: keys rotate: {e}");
            return ExitCode::FAILURE;
        }
    };
    let dir = crate::app::store_dir(&cfg);
    // Read, add, write under an exclusive lock: two rotations at once must not both add "the
    // next" id with different keys (records sealed with the first would be lost).
    let _lock = match crate::store::keyring::lock_exclusive(&dir) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("vitalgate: keys rotate: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut ring = match crate::store::keyring::Keyring::load(&dir, &kek) {
        Ok(Some(r)) => r,
        Ok(None) => {
            eprintln!(
                "vitalgate: keys rotate: store {} has no keyring",
                dir.display()
            );
            return ExitCode::FAILURE;
        }
        Err(e) => {
            eprintln!("vitalgate: keys rotate: {e}");
            return ExitCode::FAILURE;
        }
    };
    let now_ms = u64::try_from(now().timestamp_millis()).unwrap_or(0);
    let previous = ring.active;
    let saved = ring
        .rotate(&kek, cfg.store.cipher, now_ms)
        .and_then(|id| ring.save(&dir, &kek).map(|()| id));
    match saved {
        Ok(id) => {
            // With the daemon running the log is its to write: it records the rotation when it
            // picks the key up (telemetry::StoreKeyActivated).
            audit_once_unless_daemon(
                &cfg,
                crate::audit::AuditEvent::KeyRotated {
                    key_file: dir
                        .join(crate::store::keyring::KEYRING_FILE)
                        .display()
                        .to_string(),
                    old_key_id: Some(format!("data key {previous}")),
                    new_key_id: Some(format!("data key {id}")),
                },
            );
            println!(
                "data key {id} ({}) is now the active store key. A running daemon seals new records with it within {} s and re-seals older ones in the background; every record stays readable throughout.",
                cfg.store.cipher.as_str(),
                crate::store_upkeep::POLL.as_secs()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("vitalgate: keys rotate: {e}");
            ExitCode::FAILURE
        }
    }
}

fn keys_status(path: &Path) -> ExitCode {
    let cfg = match Config::load(path) {
        Ok(c) => c,
        Err(e) => return config_error(&e),
    };
    let (_, from, ring) = match load_keyring(&cfg) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("vitalgate: keys status: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("store key (key-encryption key): {}", from.display());
    let usage = match crate::app::open_store(&cfg) {
        Ok(store) => store.key_usage().ok(),
        Err(_) => None,
    };
    println!(
        "keyring: {}",
        crate::app::store_dir(&cfg)
            .join(crate::store::keyring::KEYRING_FILE)
            .display()
    );
    for k in &ring.keys {
        let created =
            chrono::DateTime::from_timestamp_millis(i64::try_from(k.created_ms).unwrap_or(0))
                .map(|t| t.to_rfc3339())
                .unwrap_or_default();
        let records = usage
            .as_ref()
            .map(|u| format!(", {} records", u.get(&k.id).copied().unwrap_or(0)))
            .unwrap_or_default();
        println!(
            "  data key {} {} created {created}{}{records}",
            k.id,
            k.alg.as_str(),
            if k.id == ring.active { " ACTIVE" } else { "" }
        );
    }
    match usage {
        Some(u) => {
            if let Some(n) = u.get(&0) {
                println!("  legacy key (store format 4): {n} records, re-sealed by the daemon");
            }
        }
        None => println!(
            "  records per key: not shown while the daemon holds the store (it re-seals older records to the active key in the background)"
        ),
    }
    ExitCode::SUCCESS
}

/// Records one event from a CLI command (no daemon sink here): opens the audit log, writes,
/// syncs. When the daemon holds the log, says so on stderr (the event is not recorded).
pub fn audit_once(cfg: &Config, event: crate::audit::AuditEvent) {
    // Files this command creates belong to whoever runs it: run as another user than the data
    // directory's owner (root, where the service user owns it), it would leave the daemon an
    // audit log it cannot append to. Not recorded then, and said so.
    if !runs_as_owner_of(&cfg.gateway.data_dir) {
        eprintln!(
            "vitalgate: warning: not recorded in the audit log: run this command as the owner of {} (the service user: sudo -u vitalgate ...)",
            cfg.gateway.data_dir.display()
        );
        return;
    }
    match crate::audit::AuditLog::open(cfg.audit.options()) {
        Ok(log) => {
            log.handle().record(event);
            log.close(std::time::Duration::from_secs(5));
        }
        Err(e) => eprintln!("vitalgate: warning: not recorded in the audit log: {e}"),
    }
}

/// As [`audit_once`], silent when the daemon holds the log (it records the event itself).
fn audit_once_unless_daemon(cfg: &Config, event: crate::audit::AuditEvent) {
    if !runs_as_owner_of(&cfg.gateway.data_dir) {
        return audit_once(cfg, event);
    }
    match crate::audit::AuditLog::open(cfg.audit.options()) {
        Ok(log) => {
            log.handle().record(event);
            log.close(std::time::Duration::from_secs(5));
        }
        Err(crate::audit::AuditError::Locked { .. }) => {}
        Err(e) => eprintln!("vitalgate: warning: not recorded in the audit log: {e}"),
    }
}

/// Whether this process's user owns `dir` (true when `dir` does not exist yet: it creates it).
fn runs_as_owner_of(dir: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    // /proc/self belongs to the process's effective user (no unsafe geteuid call needed).
    match (std::fs::metadata(dir), std::fs::metadata("/proc/self")) {
        (Ok(d), Ok(me)) => d.uid() == me.uid(),
        _ => true,
    }
}

/// Reads every segment; a segment that grows or rolls over while it is read (the daemon
/// runs) can make one reading inconsistent, so a failed verification is read and checked once
/// more.
/// `SEQ:HASH` (64 hex digits).
fn parse_anchor(text: &str) -> Result<(u64, [u8; 32]), String> {
    let (seq, hash) = text
        .split_once(':')
        .ok_or("expected SEQ:HASH, e.g. 1234:9f86d0...")?;
    let seq = seq.parse().map_err(|_| format!("bad seq {seq:?}"))?;
    let mut h = [0u8; 32];
    hex::decode_to_slice(hash, &mut h).map_err(|_| "HASH must be 64 hex digits".to_string())?;
    Ok((seq, h))
}

fn audit_verify(path: &Path, anchors: &[(u64, [u8; 32])]) -> ExitCode {
    let cfg = match Config::load(path) {
        Ok(c) => c,
        Err(e) => return config_error(&e),
    };
    let dir = &cfg.audit.dir;
    let mut attempt = 0;
    loop {
        attempt += 1;
        let segs = match crate::audit::files::read_all(dir) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("vitalgate audit verify: cannot read {}: {e}", dir.display());
                return ExitCode::FAILURE;
            }
        };
        if segs.is_empty() {
            eprintln!(
                "vitalgate audit verify: no audit log in {} (nothing recorded yet)",
                dir.display()
            );
            return ExitCode::FAILURE;
        }
        match crate::audit::chain::verify_anchored(
            segs.iter().map(|(n, b)| (n.as_str(), b.as_slice())),
            anchors,
        ) {
            Ok(r) => {
                let (first, last) = (r.first_seq.unwrap_or(0), r.last_seq.unwrap_or(0));
                println!(
                    "audit log intact: {} entries (seq {first}..{last}) in {} segment(s) under {}",
                    r.entries,
                    r.segments,
                    dir.display()
                );
                if let Some((seq, prev)) = r.anchor {
                    println!(
                        "anchor: verified from seq {seq}; older entries were deleted by retention, and the chain starts from that entry's \"prev\" {} (taken as given)",
                        hex::encode(prev)
                    );
                }
                if let Some(t) = &r.torn_tail {
                    println!(
                        "torn tail: the last {} byte(s) of {} are an incomplete line (a power loss or a write in progress): not part of the chain; the agent cuts them at its next start",
                        t.bytes, t.segment
                    );
                }
                if let Some(h) = r.last_hash {
                    println!("head: seq {last} hash {}", hex::encode(h));
                }
                use crate::audit::chain::AnchorCheck;
                for ((seq, hash), check) in &r.anchors {
                    let what = match check {
                        AnchorCheck::Matches => "matches: the log holds this entry unchanged",
                        AnchorCheck::Differs => "BROKEN: the log holds another entry at this seq (rewritten after the anchor was published)",
                        AnchorCheck::Missing => "BROKEN: the log ends before this seq (entries removed after the anchor was published)",
                        AnchorCheck::BeforeRetention => "older than the log's first entry (deleted by retention): not checked",
                    };
                    println!("anchor {seq}:{}: {what}", hex::encode(hash));
                }
                if r.anchors.iter().any(|(_, c)| c.is_failure()) {
                    return ExitCode::FAILURE;
                }
                return ExitCode::SUCCESS;
            }
            Err(e) if attempt >= 2 => {
                println!("audit log BROKEN: {e}");
                return ExitCode::FAILURE;
            }
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(300)),
        }
    }
}

fn ledger(path: &Path, reading: &str, json: bool) -> ExitCode {
    use crate::audit::ledger;
    let cfg = match Config::load(path) {
        Ok(c) => c,
        Err(e) => return config_error(&e),
    };
    let query = match ledger::Query::parse(reading) {
        Ok(q) => q,
        Err(e) => {
            eprintln!("vitalgate ledger: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let segs = match crate::audit::files::list(&cfg.audit.dir) {
        Ok(s) => s,
        Err(e) => {
            eprintln!(
                "vitalgate ledger: cannot read {}: {e}",
                cfg.audit.dir.display()
            );
            return ExitCode::FAILURE;
        }
    };
    // One segment in memory at a time, and only the lines that can matter parsed. Unreadable
    // lines (a torn tail, damage) are skipped: `audit verify` is the integrity check. A
    // segment deleted by the daemon's retention meanwhile reads as empty.
    let mut since: Option<String> = None;
    let entries = segs.iter().flat_map(|seg| {
        let bytes = std::fs::read(&seg.path).unwrap_or_default();
        if since.is_none() {
            since = bytes
                .split(|&c| c == b'\n')
                .find_map(|l| serde_json::from_slice::<serde_json::Value>(l).ok())
                .and_then(|e| e["time"].as_str().map(str::to_string));
        }
        bytes
            .split(|&c| c == b'\n')
            .filter(|l| ledger::may_matter(&query, l))
            .filter_map(|l| serde_json::from_slice::<serde_json::Value>(l).ok())
            .collect::<Vec<_>>()
    });
    let answers = ledger::answer(&query, entries);
    let ledger_days = cfg.audit.ledger.as_secs() / 86_400;
    let cutoff = now() - chrono::Duration::days(i64::try_from(ledger_days).unwrap_or(30));
    let old = |t: &str| {
        chrono::DateTime::parse_from_rfc3339(t)
            .is_ok_and(|t| t.with_timezone(&chrono::Utc) < cutoff)
    };
    if json {
        let v = serde_json::json!({
            "schema": "vitalgate.ledger/1",
            "query": reading,
            "ledger_days": ledger_days,
            "log_since": since,
            "readings": answers,
        });
        println!("{v}");
    } else if answers.is_empty() {
        println!(
            "{reading}: unknown: no audit entry names this reading (the audit log holds entries since {}; the ledger answers for {ledger_days} days after upload)",
            since.as_deref().unwrap_or("(empty log)")
        );
    } else {
        for a in &answers {
            let mut line = format!("{}: {} (since {}", a.reading, a.state.describe(), a.since);
            if let Some(s) = &a.stored_at {
                line.push_str(&format!("; stored {s}"));
            }
            if a.sent > 0 {
                line.push_str(&format!("; sent in {} Bundle(s)", a.sent));
            }
            line.push(')');
            if old(&a.since) {
                line.push_str(&format!(
                    " [older than audit.ledger_days = {ledger_days}: later entries may be gone]"
                ));
            }
            println!("{line}");
        }
    }
    if answers.is_empty() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn now() -> chrono::DateTime<chrono::Utc> {
    #[allow(clippy::disallowed_methods)] // the edge: the command runs now
    chrono::Utc::now()
}

/// The daemon's snapshot, if it is fresh (the daemon runs and writes it).
fn live_snapshot(cfg: &Config) -> Option<crate::ops::status::StatusSnapshot> {
    crate::ops::status::read_snapshot(&cfg.ops.runtime_dir)
        .ok()
        .filter(|s| s.is_live(now()))
}

fn status(path: &Path, json: bool) -> ExitCode {
    let cfg = match Config::load(path) {
        Ok(c) => c,
        Err(e) => return config_error(&e),
    };
    if let Some(s) = live_snapshot(&cfg) {
        if json {
            println!("{}", serde_json::to_string_pretty(&s).unwrap_or_default());
        } else {
            print!("{}", s.render(now()));
        }
        return ExitCode::SUCCESS;
    }
    // No fresh snapshot: the daemon is not running (or wedged: then the store is locked).
    match crate::app::open_store(&cfg) {
        Ok(store) => {
            let s = match store.stats() {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("vitalgate status: {e}");
                    return ExitCode::FAILURE;
                }
            };
            // Consent: how many patients are withdrawn, how many pending readings are held.
            let mut src = crate::uploader::ConsentSource::new(&cfg.consent);
            let state = src.refresh().clone();
            let held = match store
                .pending_where::<crate::reading::Reading>(usize::MAX, |r| !state.may_leave(r))
            {
                Ok((v, _)) => v.len(),
                Err(e) => {
                    eprintln!("vitalgate status: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let withdrawn = state.withdrawn_count();
            // Exported to a file (`vitalgate export`), still pending until confirmed.
            let exported: u64 = match store.exported_pending() {
                Ok(m) => m.values().sum(),
                Err(e) => {
                    eprintln!("vitalgate status: {e}");
                    return ExitCode::FAILURE;
                }
            };
            if json {
                let v = serde_json::json!({
                    "schema": "vitalgate.status.offline/1",
                    "gateway": cfg.gateway.id,
                    "daemon": "not running",
                    "outbox": {
                        "pending": s.pending,
                        "dead_letters": s.dead,
                        "quarantined": s.quarantined,
                        "acked_tombstones": s.acked_tombstones,
                        "exported_awaiting_confirmation": exported,
                    },
                    "consent": {
                        "withdrawn_patients": withdrawn,
                        "known": withdrawn.is_some(),
                        "held_readings": held,
                        "purged_readings": s.purged,
                        "purge_after_days": cfg.consent.purge_after.map(|d| d.as_secs() / 86_400),
                    },
                });
                println!("{v}");
            } else {
                println!(
                    "pending={} dead_letters={} quarantined={} acked_tombstones={}",
                    s.pending, s.dead, s.quarantined, s.acked_tombstones
                );
                println!(
                    "exported_awaiting_confirmation={exported} (of the pending: written to an export file, not confirmed yet; `vitalgate export confirm RECEIPT`)"
                );
                let purge = match cfg.consent.purge_after {
                    Some(d) if d.as_secs() % 86_400 == 0 => {
                        format!("purged after {} days", d.as_secs() / 86_400)
                    }
                    Some(d) => format!("purged after {} s (test setting)", d.as_secs()),
                    None => "kept (no purge_after_days)".to_string(),
                };
                let purged = s.purged;
                match withdrawn {
                    Some(n) => println!(
                        "consent: withdrawn_patients={n} held_readings={held} purged_readings={purged} ({purge})"
                    ),
                    None => println!(
                        "consent: UNKNOWN (consent file unusable: uploads paused) held_readings={held} purged_readings={purged}"
                    ),
                }
                println!("(the daemon is not running: this is the outbox only)");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            // Locked by a daemon whose snapshot is stale or missing: show what there is.
            if let Ok(s) = crate::ops::status::read_snapshot(&cfg.ops.runtime_dir) {
                if json {
                    println!("{}", serde_json::to_string_pretty(&s).unwrap_or_default());
                } else {
                    print!("{}", s.render(now()));
                }
            } else {
                eprintln!("vitalgate: status: {e}{}", in_use_hint(&e));
            }
            ExitCode::FAILURE
        }
    }
}

fn doctor(path: &Path) -> ExitCode {
    let Some(rt) = local_runtime() else {
        return ExitCode::FAILURE;
    };
    let who = crate::ops::doctor::Identity::current();
    println!("vitalgate doctor: {} (as uid {})", path.display(), who.uid);
    if who.uid == 0 {
        println!("  (as root every file is accessible: run `sudo -u vitalgate vitalgate doctor` to check what the service can reach)");
    }
    let checks = rt.block_on(crate::ops::doctor::run(path));
    report(&checks)
}

fn check_uplink(path: &Path) -> ExitCode {
    let cfg = match Config::load(path) {
        Ok(c) => c,
        Err(e) => return config_error(&e),
    };
    let Some(rt) = local_runtime() else {
        return ExitCode::FAILURE;
    };
    #[allow(clippy::disallowed_methods)] // the edge: a technician checks the uplink now
    let now = chrono::Utc::now();
    println!(
        "vitalgate check-uplink: {} -> {} (nothing is posted)",
        path.display(),
        cfg.uplink.fhir_base
    );
    let checks = rt.block_on(crate::ops::check_uplink::run(&cfg, now));
    report(&checks)
}

/// Prints ✓/✗ checks (doctor, check-uplink); success only when none failed.
fn report(checks: &[crate::ops::doctor::Check]) -> ExitCode {
    let (text, ok) = crate::ops::doctor::render(checks);
    print!("{text}");
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn store_compact(path: &Path) -> ExitCode {
    let cfg = match Config::load(path) {
        Ok(c) => c,
        Err(e) => return config_error(&e),
    };
    let store = match open_store_for(&cfg, "store compact") {
        Ok(s) => s,
        Err(code) => return code,
    };
    match store.compact() {
        Ok(r) => {
            audit_once(
                &cfg,
                crate::audit::AuditEvent::Compacted {
                    entries: r.entries,
                    disk_before: r.disk_before,
                    disk_after: r.disk_after,
                },
            );
            println!(
                "compacted {}: {} entries ({} bytes), on disk {} -> {} bytes, {} ms",
                store.path().display(),
                r.entries,
                r.live_bytes,
                r.disk_before,
                r.disk_after,
                r.took.as_millis()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("vitalgate: store compact: {e}");
            ExitCode::FAILURE
        }
    }
}

fn salvage(path: &Path, from: &Path) -> ExitCode {
    let cfg = match Config::load(path) {
        Ok(c) => c,
        Err(e) => return config_error(&e),
    };
    let store = match open_store_for(&cfg, "store salvage") {
        Ok(s) => s,
        Err(code) => return code,
    };
    // The identity a reading is stored under (as the pipeline stores it).
    let identity = |r: &crate::reading::Reading| Some(r.observation_identifier.clone());
    match crate::store::salvage(&store, from, identity) {
        Ok(r) => {
            audit_once(
                &cfg,
                crate::audit::AuditEvent::Salvaged {
                    from: from.display().to_string(),
                    pending_recovered: r.pending_recovered,
                    dead_letters_recovered: r.dead_recovered,
                    unreadable: r.unreadable,
                },
            );
            println!(
                "salvaged from {}: pending recovered={} already_known={} dead_lettered={} dead_letters recovered={} unreadable={} (left in place) quarantined_there={}{}",
                from.display(),
                r.pending_recovered,
                r.pending_duplicates,
                r.pending_dead_lettered,
                r.dead_recovered,
                r.unreadable,
                r.already_quarantined,
                if r.conf_rebuilt { " (sled's conf file was rebuilt on the working copy)" } else { "" }
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("vitalgate: store salvage: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Opens the outbox for `command`; on failure prints `vitalgate: <command>: <error>` (with
/// the in-use hint) and gives the exit code.
fn open_store_for(cfg: &Config, command: &str) -> Result<crate::store::Outbox, ExitCode> {
    crate::app::open_store(cfg).map_err(|e| {
        eprintln!("vitalgate: {command}: {e}{}", in_use_hint(&e));
        ExitCode::FAILURE
    })
}

/// The outbox is single-process (sled): say so when a running daemon holds it.
pub(crate) fn in_use_hint(e: &crate::app::StartError) -> &'static str {
    if matches!(
        e,
        crate::app::StartError::Store(crate::store::StoreError::Locked { .. })
    ) || e.to_string().contains("could not acquire lock")
    {
        " (the outbox is in use: is `vitalgate run` active? stop the service first)"
    } else {
        ""
    }
}

fn dead_letters(path: &Path, show: Option<u64>) -> ExitCode {
    let cfg = match Config::load(path) {
        Ok(c) => c,
        Err(e) => return config_error(&e),
    };
    if live_snapshot(&cfg).is_some() {
        // The daemon holds the store; it exports the list (never the payloads).
        if show.is_some() {
            eprintln!("vitalgate: dead-letters --show: the daemon is running. A payload is PHI and leaves the encrypted store only with the service stopped: systemctl stop vitalgate, then run this again.");
            return ExitCode::FAILURE;
        }
        return match crate::ops::status::read_dead_letters(&cfg.ops.runtime_dir) {
            Ok(export) => {
                for d in export.dead_letters {
                    println!("{}", d.line);
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("vitalgate: dead-letters: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let store = match open_store_for(&cfg, "dead-letters") {
        Ok(s) => s,
        Err(code) => return code,
    };
    let result = match show {
        Some(seq) => store.dead_letter_payload(seq).map(|bytes| {
            let _ = std::io::stdout().write_all(&bytes);
        }),
        None => store.dead_letters().map(|list| {
            for d in list {
                println!("{d}");
            }
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vitalgate: dead-letters: {e}");
            ExitCode::FAILURE
        }
    }
}

/// A current-thread runtime for the one-shot commands (doctor, check-uplink, and the BLE
/// commands, whose btleplug tasks stay on this thread).
fn local_runtime() -> Option<tokio::runtime::Runtime> {
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => Some(rt),
        Err(e) => {
            eprintln!("vitalgate: cannot start the async runtime: {e}");
            None
        }
    }
}

fn scan(seconds: u64, adapter: &str, config: Option<&Path>) -> ExitCode {
    use crate::sources::ble::scan::Configured;
    // Without a config: the defaults of `[ble]` (timeouts), and nothing is configured.
    let (mut ble, configured) = match config.map(Config::load) {
        Some(Ok(cfg)) => (cfg.ble.clone(), Configured::from_config(&cfg)),
        Some(Err(e)) => return config_error(&e),
        None => (crate::config::BleConfig::default(), Configured::default()),
    };
    ble.adapter = adapter.to_string();
    let Some(rt) = local_runtime() else {
        return ExitCode::FAILURE;
    };
    match rt.block_on(crate::sources::ble::scan::scan(&ble, seconds, &configured)) {
        Ok(seen) => {
            print!("{}", crate::sources::ble::scan::table(&seen));
            for d in &seen {
                if d.configured.is_none() {
                    if let Some(snippet) = crate::sources::ble::scan::snippet(d) {
                        println!("\n{snippet}");
                    }
                }
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("vitalgate scan: {e} (is bluetoothd running, and may this user use it? see README \"Bluetooth devices\")");
            ExitCode::FAILURE
        }
    }
}

fn pair(address: &str, passkey: Option<u32>, adapter: &str, seconds: u64) -> ExitCode {
    if !crate::config::ble::valid_address(address) {
        eprintln!("vitalgate pair: expected an address like 00:09:1F:AA:BB:CC, found {address:?}");
        return ExitCode::from(EXIT_USAGE);
    }
    let Some(rt) = local_runtime() else {
        return ExitCode::FAILURE;
    };
    let wait = std::time::Duration::from_secs(seconds);
    match rt.block_on(crate::sources::ble::pair::pair(
        adapter, address, passkey, wait,
    )) {
        Ok(p) => {
            println!(
                "paired and trusted {}. Add to the config:\n\n{}",
                p.address,
                crate::sources::ble::pair::snippet(&p)
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("vitalgate pair: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `dead-letters requeue SEQ` (`seq`) or `--all` (`None`).
fn requeue(path: &Path, seq: Option<u64>) -> ExitCode {
    use crate::store::{NotRequeueable, Requeue, StoreError};
    let cfg = match Config::load(path) {
        Ok(c) => c,
        Err(e) => return config_error(&e),
    };
    let store = match open_store_for(&cfg, "dead-letters requeue") {
        Ok(s) => s,
        Err(code) => return code,
    };
    // The identity a reading is stored under (as the pipeline stores it).
    let identity = |r: &crate::reading::Reading| Some(r.observation_identifier.clone());
    match seq {
        Some(seq) => match store.requeue_dead_letter(seq, identity) {
            Ok(Requeue::Requeued { .. }) => {
                audit_once(
                    &cfg,
                    crate::audit::AuditEvent::Requeued {
                        dead_seqs: vec![seq],
                    },
                );
                println!("dead letter {seq}: requeued; the reading is pending again and is uploaded when the agent runs");
                ExitCode::SUCCESS
            }
            Ok(Requeue::AlreadyPending) => {
                println!("dead letter {seq}: the reading was already pending; dead letter removed");
                ExitCode::SUCCESS
            }
            Err(e @ StoreError::NotRequeueable { .. }) => {
                eprintln!("vitalgate: dead-letters requeue: {e}; it stays a dead letter");
                ExitCode::FAILURE
            }
            Err(e) => {
                eprintln!("vitalgate: dead-letters requeue: {e}");
                ExitCode::FAILURE
            }
        },
        None => match store.requeue_all_dead_letters(identity) {
            Ok(summary) => {
                if !summary.requeued.is_empty() {
                    audit_once(
                        &cfg,
                        crate::audit::AuditEvent::Requeued {
                            dead_seqs: summary.requeued.clone(),
                        },
                    );
                }
                let skipped = |why| summary.skipped.iter().filter(|(_, w)| *w == why).count();
                println!(
                    "requeued {}, already pending {}, skipped {} ({} raw payloads that are not readings, {} identifier collisions, {} truncated, {} undecodable, {} identifiers taken meanwhile)",
                    summary.requeued.len(),
                    summary.already_pending.len(),
                    summary.skipped.len(),
                    skipped(NotRequeueable::Raw),
                    skipped(NotRequeueable::IdentifierCollision),
                    skipped(NotRequeueable::TooLarge),
                    skipped(NotRequeueable::Undecodable),
                    skipped(NotRequeueable::IdentityTaken),
                );
                for (seq, why) in &summary.skipped {
                    println!("skipped seq={seq}: {}", why.explain());
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("vitalgate: dead-letters requeue --all: {e} (what was requeued before stays requeued)");
                ExitCode::FAILURE
            }
        },
    }
}

/// Parses hex with optional whitespace, colons and a `0x` prefix.
pub fn parse_hex(s: &str) -> Result<Vec<u8>, String> {
    let cleaned: String = s
        .trim()
        .trim_start_matches("0x")
        .chars()
        .filter(|c| !c.is_whitespace() && *c != ':' && *c != '-')
        .collect();
    hex::decode(&cleaned).map_err(|e| format!("--hex: not hex ({e})"))
}

fn parse_uuid16(s: &str) -> Result<u16, String> {
    let t = s.trim();
    let t = t
        .strip_prefix("0x")
        .or_else(|| t.strip_prefix("0X"))
        .unwrap_or(t);
    // Also accept the full 128-bit SIG form 0000xxxx-0000-1000-8000-00805f9b34fb.
    let t = match t.len() {
        36 if t
            .to_ascii_lowercase()
            .ends_with("-0000-1000-8000-00805f9b34fb") =>
        {
            t.get(4..8).unwrap_or("")
        }
        _ => t,
    };
    u16::from_str_radix(t, 16)
        .map_err(|_| format!("--characteristic: expected a 16-bit UUID like 0x2A35, found {s:?}"))
}

fn decode(d: DecodeArgs) -> ExitCode {
    let usage = |msg: String| {
        eprintln!("vitalgate decode: {msg}");
        ExitCode::from(EXIT_USAGE)
    };
    let bytes = match (&d.hex, &d.file) {
        (Some(h), _) => match parse_hex(h) {
            Ok(b) => b,
            Err(e) => return usage(e),
        },
        (None, Some(f)) => match std::fs::read(f) {
            Ok(b) => b,
            Err(e) => return usage(format!("--file {}: {e}", f.display())),
        },
        (None, None) => return usage("--hex or --file is required".into()),
    };
    let json = if let Some(c) = &d.characteristic {
        let uuid = match parse_uuid16(c) {
            Ok(u) => u,
            Err(e) => return usage(e),
        };
        match device_drivers::gatt::decode_to_json(uuid, &bytes) {
            Some(v) => v,
            None => return usage(format!("characteristic 0x{uuid:04X} is not supported")),
        }
    } else if let Some(p) = &d.protocol {
        match decode_serial(p, &bytes) {
            Ok(v) => v,
            Err(code) => return code,
        }
    } else {
        return usage("--characteristic or --protocol is required".into());
    };
    println!("{json}");
    ExitCode::SUCCESS
}

/// `--protocol NAME|PATH`: a built-in serial protocol or a generic-line device file.
fn decode_serial(protocol: &str, bytes: &[u8]) -> Result<serde_json::Value, ExitCode> {
    use device_drivers::serial;
    let mut decoder = match serial::builtin(protocol) {
        Some(d) => d,
        None => {
            let path = Path::new(protocol);
            if !path.is_file() {
                eprintln!(
                    "vitalgate decode: --protocol {protocol:?} is neither a built-in protocol ({}) nor a device file",
                    serial::BUILTIN_PROTOCOLS.join(", ")
                );
                return Err(ExitCode::from(EXIT_USAGE));
            }
            let text = std::fs::read_to_string(path).map_err(|e| {
                eprintln!("vitalgate decode: --protocol {}: {e}", path.display());
                ExitCode::from(EXIT_USAGE)
            })?;
            match serial::generic::DeviceConfig::from_toml_str(&text, path) {
                Ok(cfg) => cfg.decoder(),
                Err(e) => return Err(config_error(&e)),
            }
        }
    };
    Ok(serial::decode_all_to_json(decoder.as_mut(), bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_and_uuid_parsing() {
        assert_eq!(parse_hex("1e 8a:00").unwrap(), vec![0x1e, 0x8a, 0x00]);
        assert!(parse_hex("1g").is_err());
        assert_eq!(parse_uuid16("0x2A35").unwrap(), 0x2a35);
        assert_eq!(parse_uuid16("2a35").unwrap(), 0x2a35);
        assert_eq!(
            parse_uuid16("00002a35-0000-1000-8000-00805f9b34fb").unwrap(),
            0x2a35
        );
        assert!(parse_uuid16("0x12345").is_err());
    }

    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
