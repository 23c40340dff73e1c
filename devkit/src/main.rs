//! `vitalgate-devkit`: throw-away test PKI, loopback mTLS FHIR test server, and (later) the demo.
//!
//! Each subcommand is one function below; the `demo` subcommand is a stub until the agent
//! pipeline is merged (then: `mod demo;` and call `demo::run` from `main`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use vitalgate_devkit::fhir_server::{Capability, FhirTestServer, ServerConfig};
use vitalgate_devkit::pki::{TestPki, DEFAULT_GATEWAY_ID};

#[derive(Debug, Parser)]
#[command(
    name = "vitalgate-devkit",
    version,
    about = "vitalgate development tools (TEST ONLY)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Generate a throw-away test PKI (CA, server, client, rogue CA) into DIR.
    Pki {
        /// Output directory (created if missing; existing files are overwritten).
        #[arg(long)]
        out: PathBuf,
        /// CN of the client certificates.
        #[arg(long, default_value = DEFAULT_GATEWAY_ID)]
        gateway_id: String,
    },
    /// Run the loopback FHIR R4 test server (mutual TLS) in the foreground until Ctrl-C.
    Serve {
        /// Directory made by `vitalgate-devkit pki`.
        #[arg(long)]
        pki: PathBuf,
        #[arg(long, default_value = "127.0.0.1:8443")]
        listen: SocketAddr,
        /// FHIR base path; the agent POSTs transaction Bundles to exactly this path.
        #[arg(long, default_value = "/fhir/r4")]
        base: String,
        /// JSON file the store is loaded from and written to after each transaction.
        #[arg(long)]
        state_file: Option<PathBuf>,
        /// Announce no conditional create in GET [base]/metadata (to see `vitalgate
        /// check-uplink` refuse such a server).
        #[arg(long)]
        no_conditional_create: bool,
    },
    /// Run the agent's main job end to end on loopback: test PKI, mTLS FHIR receiver,
    /// simulated BP cuff and scale, encrypted store, the real pipeline.
    Demo {
        /// Measurements per simulated device.
        #[arg(long, default_value_t = 3)]
        count: u64,
        /// Milliseconds between measurements (at least 1000).
        #[arg(long, default_value_t = 1000)]
        interval_ms: u64,
        /// Keep the working directory (PKI, config, encrypted store) for inspection.
        #[arg(long)]
        keep: bool,
    },
    /// Write the `vitalgate` man pages (vitalgate.1 and vitalgate-<subcommand>.1), generated
    /// from the agent's command-line definition, into DIR (the .deb build uses this).
    Man {
        #[arg(long)]
        out: PathBuf,
    },
    /// Measure the agent reading two serial streams on PTYs (CPU, RSS) beside an idle agent,
    /// and count Observations per day under each reduction mode. Prints Markdown tables.
    BenchSerial {
        /// The vitalgate binary to measure (default: `vitalgate` next to this program).
        #[arg(long)]
        agent: Option<PathBuf>,
        /// Measured seconds per scenario (after a 3 s warm-up).
        #[arg(long, default_value_t = 60)]
        seconds: u64,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Pki { out, gateway_id } => pki(&out, &gateway_id),
        Command::Serve {
            pki,
            listen,
            base,
            state_file,
            no_conditional_create,
        } => serve(pki, listen, base, state_file, no_conditional_create),
        Command::Demo {
            count,
            interval_ms,
            keep,
        } => demo(vitalgate_devkit::demo::DemoOptions {
            count,
            interval_ms,
            keep,
        }),
        Command::Man { out } => vitalgate_devkit::man::write_all(&out).map(|files| {
            for f in files {
                println!("{}", f.display());
            }
        }),
        Command::BenchSerial { agent, seconds } => bench_serial(agent, seconds),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("vitalgate-devkit: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn demo(opts: vitalgate_devkit::demo::DemoOptions) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(vitalgate_devkit::demo::run(opts))
}

fn bench_serial(agent: Option<PathBuf>, seconds: u64) -> anyhow::Result<()> {
    let agent = match agent {
        Some(a) => a,
        None => std::env::current_exe()?
            .parent()
            .context("no directory for this program")?
            .join("vitalgate"),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let tables = rt.block_on(vitalgate_devkit::bench_serial::run(
        vitalgate_devkit::bench_serial::BenchOptions { agent, seconds },
    ))?;
    println!("{tables}");
    Ok(())
}

fn pki(out: &std::path::Path, gateway_id: &str) -> anyhow::Result<()> {
    let pki = TestPki::generate_for_gateway(out, gateway_id)?;
    println!("THROW-AWAY TEST PKI written to {}", pki.dir.display());
    for (what, path) in [
        ("CA", &pki.ca_cert),
        ("server cert", &pki.server_cert),
        ("server key", &pki.server_key),
        ("client cert", &pki.client_cert),
        ("client key", &pki.client_key),
        ("rogue CA", &pki.rogue_ca_cert),
    ] {
        println!("  {what:<12} {}", path.display());
    }
    Ok(())
}

fn serve(
    pki_dir: PathBuf,
    listen: SocketAddr,
    base: String,
    state_file: Option<PathBuf>,
    no_conditional_create: bool,
) -> anyhow::Result<()> {
    anyhow::ensure!(base.starts_with('/'), "--base must start with '/'");
    let pki = TestPki::paths(&pki_dir, DEFAULT_GATEWAY_ID);
    let config = ServerConfig {
        listen,
        base_path: base,
        state_file,
        ..ServerConfig::for_pki(&pki)
    };
    let runtime = tokio::runtime::Runtime::new().context("starting tokio")?;
    runtime.block_on(async move {
        let mut server = FhirTestServer::start(config).await?;
        if no_conditional_create {
            server.set_capability(Capability::NoConditionalCreate);
        }
        let mut events = server.subscribe();
        println!(
            "FHIR test server on {} (client certificates from {} required); Ctrl-C stops",
            server.base_url(),
            pki.ca_cert.display()
        );
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => break,
                event = events.recv() => match event {
                    Ok(event) => {
                        let o = event.outcome;
                        // Type, id and what happened: never values (they may be PHI).
                        println!(
                            "{} {}/{} {}",
                            o.status(),
                            o.resource_type,
                            o.id,
                            if o.created { "created" } else { "existing" }
                        );
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        println!("({n} entries not shown: output too slow)");
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                },
            }
        }
        server.stop().await;
        println!(
            "stopped: {} requests, {} observations, {} devices stored",
            server.request_count(),
            server.stored_observations().len(),
            server.stored_devices().len()
        );
        anyhow::Ok(())
    })
}
