//! A loopback FHIR R4 test server over mutual TLS: it requires a client certificate from a given
//! CA, validates every Bundle against the official R4 JSON schema, applies transaction semantics
//! with conditional create (see [`transaction`]), and records what it stored for tests.
//!
//! ```no_run
//! # async fn f() -> anyhow::Result<()> {
//! use vitalgate_devkit::{fhir_server::{FhirTestServer, Mode, ServerConfig}, pki::TestPki};
//! let dir = tempfile::tempdir()?;
//! let pki = TestPki::generate(dir.path())?;
//! let mut server = FhirTestServer::start(ServerConfig::for_pki(&pki)).await?;
//! // ... point the agent at server.base_url() ...
//! server.set_mode(Mode::Fail { status: 503, retry_after: Some(1) });
//! server.stop().await;               // connections refused from now on
//! server.restart().await?;           // same port, same stored state
//! assert_eq!(server.duplicate_creates(), 0);
//! # Ok(()) }
//! ```
//!
//! # HTTP interface
//!
//! `POST /token` is an OAuth token endpoint once [`ServerState::enable_oauth`] turned it on (see
//! [`oauth`]; it can also require a bearer token on `POST [base]`), and `GET
//! [base]/.well-known/smart-configuration` names it.
//!
//! `GET [base]/metadata` answers an R4 CapabilityStatement ([`capability_statement`]): transaction,
//! and create with conditional create of Observation and Device, unless
//! [`ServerState::set_capability`] chose a deficient one. It ignores the fault-injection mode.
//!
//! Otherwise only `POST [base]` (exactly the base path, a trailing `/` tolerated) with
//! `Content-Type: application/fhir+json` (parameters such as `charset` allowed) and a body of at
//! most [`MAX_BODY_BYTES`]. Anything else: 404 (other path), 405 (other method), 415 (other
//! content type), 413 (body too large), 400 (not JSON, schema errors, transaction rule broken),
//! each with an OperationOutcome. A success is `200` with a `transaction-response` Bundle.
//!
//! # State and restarts
//!
//! The stored resources and the records live in a [`ServerState`] (an `Arc<Mutex<..>>`) that
//! outlives the listener: [`FhirTestServer::stop`] closes the listener and every open connection,
//! [`FhirTestServer::restart`] binds the same address again (with `SO_REUSEADDR`, so `TIME_WAIT`
//! does not block it) and serves the same state. With [`ServerConfig::state_file`] the store is
//! also loaded from, and written to, a JSON file after each committed transaction.

pub mod oauth;
pub mod transaction;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::Context;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::Serialize;
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{broadcast, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::TlsAcceptor;

use crate::pki::TestPki;
pub use oauth::{OAuthConfig, TokenRequest};
use transaction::{EntryOutcome, Rejection, Store};

/// Largest request body accepted (a 50-entry Bundle is well under 1 MiB).
pub const MAX_BODY_BYTES: usize = 8 * 1024 * 1024;

/// Longest a TLS handshake may take before the connection is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Where and how to serve.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Address to bind; port 0 picks a free one (see [`FhirTestServer::addr`]).
    pub listen: SocketAddr,
    /// FHIR base path, e.g. `/fhir/r4`; the agent posts transactions to exactly this path.
    pub base_path: String,
    /// CA that client certificates must chain to.
    pub client_ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    /// If set: the store is loaded from this JSON file at start (if it exists) and rewritten
    /// after every committed transaction.
    pub state_file: Option<PathBuf>,
    /// Serve TLS 1.2 only (default: 1.3 and 1.2, 1.3 preferred).
    pub tls12_only: bool,
    /// Ask for (and require) a client certificate. `false`: a server that never asks for one.
    pub ask_client_cert: bool,
    /// The crypto provider (cipher suites, key exchange groups) to serve with. `None`: ring's
    /// default provider (X25519, P-256, P-384). Tests pass e.g. an aws-lc-rs provider with
    /// X25519MLKEM768, or ring with X25519 alone ([`ring_provider_with_groups`]).
    pub provider: Option<Arc<rustls::crypto::CryptoProvider>>,
}

/// ring's default provider offering only `groups` (e.g. `[X25519]`: a server without
/// post-quantum key exchange that also refuses P-256 and P-384).
pub fn ring_provider_with_groups(
    groups: &[&'static dyn rustls::crypto::SupportedKxGroup],
) -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::CryptoProvider {
        kx_groups: groups.to_vec(),
        ..rustls::crypto::ring::default_provider()
    })
}

impl ServerConfig {
    /// `127.0.0.1:0`, base `/fhir/r4`, the PKI's CA as client CA and its server certificate.
    pub fn for_pki(pki: &TestPki) -> ServerConfig {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            base_path: "/fhir/r4".into(),
            client_ca: pki.ca_cert.clone(),
            server_cert: pki.server_cert.clone(),
            server_key: pki.server_key.clone(),
            state_file: None,
            tls12_only: false,
            ask_client_cert: true,
            provider: None,
        }
    }
}

/// What one accepted TLS handshake negotiated, as rustls names it (e.g. `TLSv1_3`,
/// `TLS13_CHACHA20_POLY1305_SHA256`, `X25519`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handshake {
    pub version: String,
    pub cipher_suite: String,
    pub kx_group: String,
    /// Whether this server sent a HelloRetryRequest (the client's first key share was for a
    /// group it does not take).
    pub hello_retry: bool,
}

/// What `GET [base]/metadata` says the server can do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Capability {
    /// What this server does: transaction; create, conditional create and update as create
    /// (PUT to a new id) of Observation and Device.
    #[default]
    Full,
    /// A server without conditional create (`conditionalCreate: false` on every resource):
    /// one on which a resent Bundle would duplicate readings.
    NoConditionalCreate,
}

/// The R4 CapabilityStatement served at `[base]/metadata` (`base_url`: the absolute FHIR base
/// for `implementation.url`). Valid against the R4 JSON schema except `fhirVersion` "4.0.1": the
/// schema's enum stops at "4.0.0"; R4 servers announce 4.0.1 (the technical correction).
pub fn capability_statement(capability: Capability, base_url: &str) -> Value {
    let conditional = capability == Capability::Full;
    let resource = |ty: &str| {
        json!({
            "type": ty,
            "interaction": [{"code": "create"}, {"code": "update"}],
            "conditionalCreate": conditional,
            "updateCreate": true,
        })
    };
    json!({
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": "2026-01-01",
        "kind": "instance",
        "software": {
            "name": "vitalgate-devkit FHIR test server",
            "version": env!("CARGO_PKG_VERSION"),
        },
        "implementation": {
            "description": "loopback mTLS FHIR R4 test server",
            "url": base_url,
        },
        "fhirVersion": "4.0.1",
        "format": ["application/fhir+json"],
        "rest": [{
            "mode": "server",
            "resource": [resource("Observation"), resource("Device")],
            "interaction": [{"code": "transaction"}],
        }],
    })
}

/// Fault injection. The mode applies to every `POST [base]` until changed (or, with
/// [`ServerState::set_mode_for`], for a number of them). Other paths and methods do not use it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Mode {
    /// Validate, apply, answer with a `transaction-response` Bundle.
    #[default]
    Normal,
    /// Answer `status` with an OperationOutcome (and `Retry-After: <secs>` if given) before
    /// looking at the body; nothing is stored.
    Fail {
        status: u16,
        retry_after: Option<u32>,
    },
    /// A broken server: `200` with a `transaction-response` in which entry `n` (clamped to the
    /// last) has status `400 Bad Request`. Nothing is stored; the other entries report what would
    /// have happened. The agent must not take this as success.
    FailEntry(usize),
    /// A server that refuses one reading inside a transaction: a Bundle holding an Observation
    /// whose identifier value contains this text is answered `200` with a
    /// `transaction-response` in which that entry has status `422 Unprocessable Entity` and an
    /// OperationOutcome; nothing is stored (the other entries report what would have
    /// happened). Bundles without such an Observation are handled as [`Mode::Normal`].
    FailObservation(String),
    /// Commit, then answer `200` with an empty body (like a `Prefer: return=minimal` server).
    /// fhir-mapping.md §5.4: an empty 200 also means committed.
    Empty200,
    /// Commit, then answer `200` with a body that is not JSON (a mangling proxy). The agent
    /// cannot know it was committed; a retry must then get `200 OK` entries, not duplicates.
    Garbage200,
    /// Commit, then close the connection without any answer (a response lost in transit).
    HangUpAfterCommit,
    /// Commit, then wait this long before the normal `transaction-response` (a slow server, or
    /// a slow network back): widens the window in which the server has committed and the
    /// client has not yet heard it, so a crash test can land a kill inside it.
    DelayAfterCommit(Duration),
    /// A slow-loris answer: `200` headers at once, then one body byte every `byte_every`,
    /// never finishing (until the client goes away). Nothing is stored.
    SlowLoris { byte_every: Duration },
    /// A `200` whose body is `bytes` bytes of spaces, generated chunk by chunk as the client
    /// reads (the server never holds more than one 64 KiB static chunk). With `declare_length`
    /// the `Content-Length` header announces the size; without it the body is chunked. Nothing
    /// is stored. [`ServerState::body_bytes_sent`] counts what actually went out.
    HugeBody { bytes: u64, declare_length: bool },
    /// A `200` whose body is JSON nested `depth` arrays deep (`[[[...]]]`). Nothing is stored.
    DeepJson { depth: usize },
    /// A redirect loop: `307 Temporary Redirect` with `Location` pointing at the same URL,
    /// every time. Nothing is stored.
    RedirectLoop,
}

/// One HTTP request the server answered (or hung up on).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RequestRecord {
    pub method: String,
    pub path: String,
    pub content_type: Option<String>,
    /// The `Prefer` header, if any (the agent should send none by default).
    pub prefer: Option<String>,
    /// Status answered; `0` for [`Mode::HangUpAfterCommit`].
    pub status: u16,
    /// Number of Bundle entries, if the body was a Bundle.
    pub entries: usize,
    /// The `Content-Encoding` header, if any (`gzip` from the agent by default).
    pub content_encoding: Option<String>,
    /// Request body bytes as received (before any decoding).
    pub body_bytes: usize,
}

/// Sent on [`ServerState::subscribe`] for every entry of a committed transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryEvent {
    pub outcome: EntryOutcome,
}

#[derive(Debug, Default)]
struct Inner {
    store: Store,
    mode: Mode,
    /// Requests left before `mode` reverts to [`Mode::Normal`]; `None` = until changed.
    mode_remaining: Option<usize>,
    /// Modes for the next POSTs, one each, before `mode` applies again.
    mode_queue: std::collections::VecDeque<Mode>,
    requests: Vec<RequestRecord>,
    schema_failures: Vec<String>,
    client_subjects: Vec<String>,
    client_certificates: Vec<Vec<u8>>,
    handshakes: Vec<Handshake>,
    tls_failures: Vec<String>,
    state_file: Option<PathBuf>,
    /// Body bytes of [`Mode::HugeBody`] / [`Mode::SlowLoris`] answers handed to the connection.
    body_bytes_sent: u64,
    /// Refuse `Content-Encoding: gzip` bodies with 415 (a server without compression support).
    refuse_gzip: bool,
    /// What `GET [base]/metadata` announces.
    capability: Capability,
    /// Bytes read from / written to client TCP connections (TLS records, HTTP, everything).
    wire_bytes_in: u64,
    wire_bytes_out: u64,
    /// The OAuth token endpoint and the bearer check ([`oauth`]).
    oauth: oauth::OAuthState,
}

/// Everything the server stores and records, shared by all its connections and kept across
/// [`FhirTestServer::stop`] / [`FhirTestServer::restart`]. Cheap to clone (an `Arc`).
#[derive(Debug, Clone)]
pub struct ServerState {
    inner: Arc<Mutex<Inner>>,
    events: broadcast::Sender<EntryEvent>,
}

impl Default for ServerState {
    fn default() -> Self {
        ServerState {
            inner: Arc::default(),
            events: broadcast::channel(1024).0,
        }
    }
}

impl ServerState {
    /// A state loaded from `state_file` if it exists, written back to it after each commit.
    ///
    /// # Errors
    ///
    /// The file exists but cannot be read or parsed.
    pub fn with_state_file(state_file: Option<PathBuf>) -> anyhow::Result<ServerState> {
        let state = ServerState::default();
        if let Some(path) = &state_file {
            if path.exists() {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading {}", path.display()))?;
                let mut store: Store = serde_json::from_str(&text)
                    .with_context(|| format!("parsing {}", path.display()))?;
                store.reindex();
                state.lock().store = store;
            }
        }
        state.lock().state_file = state_file;
        Ok(state)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves plain data behind: keep serving it.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sets the fault-injection mode until changed.
    pub fn set_mode(&self, mode: Mode) {
        let mut inner = self.lock();
        inner.mode = mode;
        inner.mode_remaining = None;
    }

    /// Uses `mode` for the next `requests` POSTs to the base path, then [`Mode::Normal`] again.
    pub fn set_mode_for(&self, mode: Mode, requests: usize) {
        let mut inner = self.lock();
        inner.mode = mode;
        inner.mode_remaining = Some(requests);
    }

    /// The next POSTs to the base path get these modes, one each, in order; then the mode set
    /// with [`ServerState::set_mode`] applies again.
    pub fn queue_modes(&self, modes: impl IntoIterator<Item = Mode>) {
        self.lock().mode_queue.extend(modes);
    }

    /// Queued modes ([`ServerState::queue_modes`]) not yet taken by a request.
    pub fn queued_modes(&self) -> usize {
        self.lock().mode_queue.len()
    }

    /// The current mode.
    pub fn mode(&self) -> Mode {
        self.lock().mode.clone()
    }

    /// Stored resources of one type, as stored (ids assigned, references rewritten).
    pub fn stored(&self, resource_type: &str) -> Vec<Value> {
        self.lock().store.of_type(resource_type).to_vec()
    }

    /// Stored Observations, in creation order.
    pub fn stored_observations(&self) -> Vec<Value> {
        self.stored("Observation")
    }

    /// How many Observations are stored (cheap: no copy).
    pub fn observation_count(&self) -> usize {
        self.lock().store.of_type("Observation").len()
    }

    /// Stored Devices, in creation order.
    pub fn stored_devices(&self) -> Vec<Value> {
        self.stored("Device")
    }

    /// `system|value` of every identifier of every stored Observation, in creation order.
    pub fn observation_identifiers(&self) -> Vec<String> {
        self.stored_observations()
            .iter()
            .flat_map(transaction::identifiers)
            .map(|(s, v)| format!("{s}|{v}"))
            .collect()
    }

    /// A copy of the whole store.
    pub fn store(&self) -> Store {
        self.lock().store.clone()
    }

    /// Number of HTTP requests answered (every method and path, every outcome).
    pub fn request_count(&self) -> usize {
        self.lock().requests.len()
    }

    /// Every HTTP request answered, in order.
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.lock().requests.clone()
    }

    /// Schema errors of every refused Bundle, flattened, in order.
    pub fn schema_failures(&self) -> Vec<String> {
        self.lock().schema_failures.clone()
    }

    /// Identities stored more than once; 0 by construction (conditional create).
    pub fn duplicate_creates(&self) -> usize {
        self.lock().store.duplicate_creates()
    }

    /// Subject DN of the client certificate of every accepted TLS connection, in order.
    pub fn client_cert_subjects(&self) -> Vec<String> {
        self.lock().client_subjects.clone()
    }

    /// The DER of the client (leaf) certificate of every accepted TLS connection, in order
    /// (empty when none was presented): tells two certificates of the same subject apart.
    pub fn client_certificates(&self) -> Vec<Vec<u8>> {
        self.lock().client_certificates.clone()
    }

    /// What every accepted TLS handshake negotiated, in order.
    pub fn handshakes(&self) -> Vec<Handshake> {
        self.lock().handshakes.clone()
    }

    /// Every refused TLS handshake (no certificate, wrong CA, ...), as rustls explains it.
    pub fn tls_failures(&self) -> Vec<String> {
        self.lock().tls_failures.clone()
    }

    /// Body bytes of streamed fault answers ([`Mode::HugeBody`], [`Mode::SlowLoris`]) handed
    /// to the connections so far: how much a client read before it gave up.
    pub fn body_bytes_sent(&self) -> u64 {
        self.lock().body_bytes_sent
    }

    /// What `GET [base]/metadata` announces from now on ([`Capability::Full`] by default).
    pub fn set_capability(&self, capability: Capability) {
        self.lock().capability = capability;
    }

    /// `true`: answer `415` to every `Content-Encoding: gzip` body (like a server without
    /// compression support); `false` (the default): decode it.
    pub fn set_refuse_gzip(&self, refuse: bool) {
        self.lock().refuse_gzip = refuse;
    }

    /// Bytes read from client TCP connections so far: TLS handshakes, HTTP headers and bodies,
    /// everything on the wire towards the server.
    pub fn wire_bytes_in(&self) -> u64 {
        self.lock().wire_bytes_in
    }

    /// Bytes written to client TCP connections so far.
    pub fn wire_bytes_out(&self) -> u64 {
        self.lock().wire_bytes_out
    }

    /// Conditional references seen in committed Bundles (e.g. `Patient?identifier=...`).
    pub fn conditional_references(&self) -> Vec<String> {
        self.lock().store.conditional_references.clone()
    }

    /// One [`EntryEvent`] per entry of every committed transaction, from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<EntryEvent> {
        self.events.subscribe()
    }

    /// Deletes every stored resource of one type (a server that lost them); ids are never
    /// given twice. Returns how many were removed.
    pub fn remove_all(&self, resource_type: &str) -> usize {
        self.lock().store.remove_all(resource_type)
    }

    /// Empties the store and the records (not the mode).
    pub fn clear(&self) {
        let mut inner = self.lock();
        inner.store = Store::default();
        inner.requests.clear();
        inner.schema_failures.clear();
        inner.client_subjects.clear();
        inner.client_certificates.clear();
        inner.handshakes.clear();
        inner.tls_failures.clear();
        inner.body_bytes_sent = 0;
        inner.wire_bytes_in = 0;
        inner.wire_bytes_out = 0;
    }

    /// Takes the mode for one request, counting down a [`ServerState::set_mode_for`].
    fn take_mode(&self) -> Mode {
        let mut inner = self.lock();
        if let Some(mode) = inner.mode_queue.pop_front() {
            return mode;
        }
        let mode = inner.mode.clone();
        if let Some(n) = inner.mode_remaining.as_mut() {
            *n = n.saturating_sub(1);
            if *n == 0 {
                inner.mode = Mode::Normal;
                inner.mode_remaining = None;
            }
        }
        mode
    }
}

/// The server: a [`ServerState`] plus, while running, a listener task. Derefs to its
/// [`ServerState`], so `server.stored_observations()` works.
#[derive(Debug)]
pub struct FhirTestServer {
    config: ServerConfig,
    state: ServerState,
    tls: Arc<rustls::ServerConfig>,
    addr: SocketAddr,
    running: Option<Running>,
}

#[derive(Debug)]
struct Running {
    shutdown: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl std::ops::Deref for FhirTestServer {
    type Target = ServerState;
    fn deref(&self) -> &ServerState {
        &self.state
    }
}

impl FhirTestServer {
    /// Loads the certificates, binds `config.listen` and starts serving. The listener is bound
    /// when this returns: clients may connect at once.
    ///
    /// # Errors
    ///
    /// Unreadable or invalid certificates/keys, an unreadable state file, or the bind failed.
    pub async fn start(config: ServerConfig) -> anyhow::Result<FhirTestServer> {
        let state = ServerState::with_state_file(config.state_file.clone())?;
        Self::start_with_state(config, state).await
    }

    /// Like [`FhirTestServer::start`], serving an existing state (e.g. one taken from a server
    /// that was dropped).
    ///
    /// # Errors
    ///
    /// As [`FhirTestServer::start`].
    pub async fn start_with_state(
        config: ServerConfig,
        state: ServerState,
    ) -> anyhow::Result<FhirTestServer> {
        let tls = Arc::new(tls_config_with(&config)?);
        let mut server = FhirTestServer {
            addr: config.listen,
            config,
            state,
            tls,
            running: None,
        };
        server.start_on(server.config.listen).await?;
        Ok(server)
    }

    /// The bound address (the real port, also after a start on port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `https://localhost:<port><base>`: the FHIR base URL to give the agent.
    pub fn base_url(&self) -> String {
        format!(
            "https://localhost:{}{}",
            self.addr.port(),
            self.config.base_path
        )
    }

    /// `https://localhost:<port>/token`: the OAuth token endpoint (once
    /// [`ServerState::enable_oauth`] turned it on).
    pub fn token_url(&self) -> String {
        format!(
            "https://localhost:{}{}",
            self.addr.port(),
            oauth::TOKEN_PATH
        )
    }

    /// The shared state (also reachable through `Deref`).
    pub fn state(&self) -> &ServerState {
        &self.state
    }

    /// True between a start and a [`FhirTestServer::stop`].
    pub fn is_running(&self) -> bool {
        self.running.is_some()
    }

    /// Stops accepting, closes every open connection and releases the port. When this returns,
    /// a connect to [`FhirTestServer::addr`] is refused. The state is kept.
    pub async fn stop(&mut self) {
        if let Some(running) = self.running.take() {
            let _ = running.shutdown.send(true);
            let _ = running.task.await;
        }
    }

    /// Starts again on the address it had (the same port), with the same state.
    ///
    /// # Errors
    ///
    /// The bind failed (e.g. another process took the port meanwhile).
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.start_on(self.addr).await
    }

    /// Starts serving on `addr` (stopping first if running), with the same state.
    ///
    /// # Errors
    ///
    /// The bind failed.
    pub async fn start_on(&mut self, addr: SocketAddr) -> anyhow::Result<()> {
        self.stop().await;
        let listener = bind(addr).with_context(|| format!("binding {addr}"))?;
        self.addr = listener.local_addr()?;
        let (shutdown, shutdown_rx) = watch::channel(false);
        let ctx = Ctx {
            state: self.state.clone(),
            base_path: Arc::from(self.config.base_path.trim_end_matches('/')),
        };
        let task = tokio::spawn(accept_loop(
            listener,
            TlsAcceptor::from(self.tls.clone()),
            ctx,
            shutdown_rx,
        ));
        self.running = Some(Running { shutdown, task });
        tracing::debug!(addr = %self.addr, "FHIR test server listening");
        Ok(())
    }
}

impl Drop for FhirTestServer {
    fn drop(&mut self) {
        if let Some(running) = self.running.take() {
            let _ = running.shutdown.send(true);
            // Aborting drops the connection JoinSet, which aborts every connection.
            running.task.abort();
        }
    }
}

/// Builds the rustls server config: ring provider, client certificates required and verified
/// against `client_ca`, ALPN h2 and http/1.1.
///
/// # Errors
///
/// A file is unreadable, holds no certificate/key, or the key does not fit the certificate.
pub fn tls_config(
    client_ca: &Path,
    server_cert: &Path,
    server_key: &Path,
) -> anyhow::Result<rustls::ServerConfig> {
    tls_config_with(&ServerConfig {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        base_path: String::new(),
        client_ca: client_ca.to_path_buf(),
        server_cert: server_cert.to_path_buf(),
        server_key: server_key.to_path_buf(),
        state_file: None,
        tls12_only: false,
        ask_client_cert: true,
        provider: None,
    })
}

/// The rustls server config of `config` (its certificates, versions and client auth).
///
/// # Errors
///
/// As [`tls_config`].
pub fn tls_config_with(config: &ServerConfig) -> anyhow::Result<rustls::ServerConfig> {
    let provider = config
        .provider
        .clone()
        .unwrap_or_else(|| Arc::new(rustls::crypto::ring::default_provider()));
    let mut roots = rustls::RootCertStore::empty();
    for cert in load_certs(&config.client_ca)? {
        roots.add(cert).context("adding the client CA")?;
    }
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone());
    let builder = if config.tls12_only {
        builder.with_protocol_versions(&[&rustls::version::TLS12])?
    } else {
        builder.with_safe_default_protocol_versions()?
    };
    let builder = if config.ask_client_cert {
        let verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .context("building the client certificate verifier")?;
        builder.with_client_cert_verifier(verifier)
    } else {
        builder.with_no_client_auth()
    };
    let mut config = builder
        .with_single_cert(
            load_certs(&config.server_cert)?,
            load_key(&config.server_key)?,
        )
        .context("server certificate and key")?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// Reads every certificate of a PEM file.
///
/// # Errors
///
/// Unreadable file, bad PEM, or no certificate in it.
pub fn load_certs(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let pem = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let certs = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("parsing {}", path.display()))?;
    anyhow::ensure!(!certs.is_empty(), "no certificate in {}", path.display());
    Ok(certs)
}

/// Reads the first private key of a PEM file.
///
/// # Errors
///
/// Unreadable file, bad PEM, or no key in it.
pub fn load_key(path: &Path) -> anyhow::Result<PrivateKeyDer<'static>> {
    let pem = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    rustls_pemfile::private_key(&mut pem.as_slice())
        .with_context(|| format!("parsing {}", path.display()))?
        .with_context(|| format!("no private key in {}", path.display()))
}

// ---------------------------------------------------------------------------------------------
// I/O below: listener, connections, the request handler.

#[derive(Clone)]
struct Ctx {
    state: ServerState,
    base_path: Arc<str>,
}

/// Binds with `SO_REUSEADDR` so a restart on the same port is not blocked by `TIME_WAIT`.
fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(128)
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    ctx: Ctx,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            _ = shutdown.changed() => break,
            accepted = listener.accept() => match accepted {
                Ok((tcp, _peer)) => {
                    connections.spawn(serve_connection(tcp, acceptor.clone(), ctx.clone()));
                }
                Err(error) => {
                    tracing::warn!(%error, "accept failed");
                    // E.g. out of file descriptors: do not spin.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    drop(listener);
    connections.shutdown().await;
}

async fn serve_connection(tcp: TcpStream, acceptor: TlsAcceptor, ctx: Ctx) {
    let tcp = Counting {
        inner: tcp,
        state: ctx.state.clone(),
    };
    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(error)) => {
            tracing::debug!(%error, "TLS handshake refused");
            ctx.state.lock().tls_failures.push(error.to_string());
            return;
        }
        Err(_) => {
            ctx.state
                .lock()
                .tls_failures
                .push("handshake timed out".into());
            return;
        }
    };
    let leaf = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|certs| certs.first());
    let subject = leaf.map(|cert| subject_of(cert)).unwrap_or_default();
    let leaf_der = leaf.map(|cert| cert.as_ref().to_vec()).unwrap_or_default();
    let conn = tls.get_ref().1;
    let handshake = Handshake {
        version: conn
            .protocol_version()
            .map(|v| format!("{v:?}"))
            .unwrap_or_default(),
        cipher_suite: conn
            .negotiated_cipher_suite()
            .map(|s| format!("{:?}", s.suite()))
            .unwrap_or_default(),
        kx_group: conn
            .negotiated_key_exchange_group()
            .map(|g| format!("{:?}", g.name()))
            .unwrap_or_default(),
        hello_retry: conn.handshake_kind()
            == Some(rustls::HandshakeKind::FullWithHelloRetryRequest),
    };
    {
        let mut inner = ctx.state.lock();
        inner.client_subjects.push(subject);
        inner.client_certificates.push(leaf_der);
        inner.handshakes.push(handshake);
    }

    let service = hyper::service::service_fn(move |req| handle(ctx.clone(), req));
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    if let Err(error) = builder.serve_connection(TokioIo::new(tls), service).await {
        tracing::debug!(%error, "connection ended with an error");
    }
}

/// A TCP stream that adds what passes through it to [`ServerState::wire_bytes_in`] /
/// [`ServerState::wire_bytes_out`].
struct Counting {
    inner: TcpStream,
    state: ServerState,
}

impl tokio::io::AsyncRead for Counting {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let poll = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            self.state.lock().wire_bytes_in += n as u64;
        }
        poll
    }
}

impl tokio::io::AsyncWrite for Counting {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let poll = std::pin::Pin::new(&mut self.inner).poll_write(cx, buf);
        if let std::task::Poll::Ready(Ok(n)) = poll {
            self.state.lock().wire_bytes_out += n as u64;
        }
        poll
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Subject DN of a DER certificate, e.g. `CN=vitalgate-test-gateway, O=...`.
fn subject_of(cert: &CertificateDer<'_>) -> String {
    match x509_parser::parse_x509_certificate(cert.as_ref()) {
        Ok((_, parsed)) => parsed.subject().to_string(),
        Err(_) => "<unparsable certificate>".into(),
    }
}

/// Returned by the service to make hyper drop the connection without answering.
#[derive(Debug)]
struct HangUp;

impl std::fmt::Display for HangUp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("hung up on purpose (Mode::HangUpAfterCommit)")
    }
}

impl std::error::Error for HangUp {}

type Resp = Response<BoxBody<Bytes, std::convert::Infallible>>;

async fn handle(ctx: Ctx, req: Request<Incoming>) -> Result<Resp, HangUp> {
    let header = |name| {
        req.headers()
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
            .map(str::to_owned)
    };
    let record = RequestRecord {
        method: req.method().to_string(),
        path: req.uri().path().to_owned(),
        content_type: header(CONTENT_TYPE),
        prefer: header(hyper::header::HeaderName::from_static("prefer")),
        status: 0,
        entries: 0,
        content_encoding: header(hyper::header::CONTENT_ENCODING),
        body_bytes: 0,
    };
    let mut recording = Recording {
        state: ctx.state.clone(),
        record,
        mode_taken: false,
        finished: false,
    };
    let result = respond(&ctx, req, &mut recording).await;
    recording.record.status = result.as_ref().map_or(0, |r| r.status().as_u16());
    recording.finished = true;
    drop(recording);
    result
}

/// The record of one request, pushed when the request ends: answered, hung up on, or abandoned
/// by the client (its future dropped) after it took a mode. A client that gives up while the
/// server validates and commits (a timeout under emulation) used up a queued mode, so the
/// request is recorded (status `0`: no answer) and a test counting answers sees it. A request
/// abandoned before its body was read took nothing and stays unrecorded.
struct Recording {
    state: ServerState,
    record: RequestRecord,
    mode_taken: bool,
    finished: bool,
}

impl Drop for Recording {
    fn drop(&mut self) {
        if self.finished || self.mode_taken {
            self.state.lock().requests.push(self.record.clone());
        }
    }
}

async fn respond(
    ctx: &Ctx,
    req: Request<Incoming>,
    recording: &mut Recording,
) -> Result<Resp, HangUp> {
    let path = req.uri().path();
    if path == oauth::TOKEN_PATH {
        return Ok(oauth::token_endpoint(&ctx.state, req).await);
    }
    if path == format!("{}{}", ctx.base_path, oauth::SMART_CONFIGURATION_PATH) {
        return Ok(oauth::smart_configuration(&ctx.state, &req));
    }
    if path.trim_end_matches('/') == format!("{}/metadata", ctx.base_path) {
        if req.method() != Method::GET {
            let mut resp = outcome(
                405,
                "not-supported",
                &["only GET [base]/metadata is supported".into()],
            );
            resp.headers_mut()
                .insert("allow", HeaderValue::from_static("GET"));
            return Ok(resp);
        }
        let capability = ctx.state.lock().capability;
        let host = req
            .headers()
            .get(hyper::header::HOST)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("localhost");
        let base_url = format!("https://{host}{}", ctx.base_path);
        return Ok(fhir_json(200, &capability_statement(capability, &base_url)));
    }
    if path.trim_end_matches('/') != &*ctx.base_path {
        return Ok(outcome(
            404,
            "not-found",
            &[format!(
                "no such endpoint: {path}; transactions go to POST {}",
                ctx.base_path
            )],
        ));
    }
    if req.method() != Method::POST {
        let mut resp = outcome(
            405,
            "not-supported",
            &["only POST [base] (transaction) is supported".into()],
        );
        resp.headers_mut()
            .insert("allow", HeaderValue::from_static("POST"));
        return Ok(resp);
    }
    if let Some(resp) = oauth::check_bearer(&ctx.state, &req) {
        return Ok(resp);
    }
    // The body is read before a mode is taken: an upload the client abandons mid-body (its
    // timeout, under emulation) is never recorded, so it must not use up a queued mode either.
    let body = match Limited::new(req.into_body(), MAX_BODY_BYTES)
        .collect()
        .await
    {
        Ok(body) => body.to_bytes(),
        Err(error) => {
            return Ok(if error.is::<http_body_util::LengthLimitError>() {
                outcome(
                    413,
                    "too-costly",
                    &[format!("body larger than {MAX_BODY_BYTES} bytes")],
                )
            } else {
                outcome(
                    400,
                    "invalid",
                    &[format!("reading the body failed: {error}")],
                )
            });
        }
    };
    let mode = ctx.state.take_mode();
    recording.mode_taken = true;
    let record = &mut recording.record;
    if let Mode::Fail {
        status,
        retry_after,
    } = mode
    {
        let code = match status {
            429 => "throttled",
            500..=599 => "transient",
            _ => "exception",
        };
        let mut resp = outcome(status, code, &[format!("injected failure: HTTP {status}")]);
        if let Some(secs) = retry_after {
            resp.headers_mut()
                .insert("retry-after", HeaderValue::from(secs));
        }
        return Ok(resp);
    }
    if let Some(resp) = hostile_answer(ctx, &mode, record) {
        return Ok(resp);
    }
    let content_type = record.content_type.as_deref().unwrap_or("");
    let media_type = content_type.split(';').next().unwrap_or("").trim();
    if !media_type.eq_ignore_ascii_case("application/fhir+json") {
        return Ok(outcome(
            415,
            "not-supported",
            &[format!(
                "Content-Type must be application/fhir+json, got {content_type:?}"
            )],
        ));
    }
    record.body_bytes = body.len();
    let body = match record.content_encoding.as_deref().map(str::trim) {
        None | Some("") | Some("identity") => body,
        Some(enc) if enc.eq_ignore_ascii_case("gzip") && !ctx.state.lock().refuse_gzip => {
            match gunzip(&body) {
                Ok(Some(plain)) => Bytes::from(plain),
                Ok(None) => {
                    return Ok(outcome(
                        413,
                        "too-costly",
                        &[format!("decoded body larger than {MAX_BODY_BYTES} bytes")],
                    ))
                }
                Err(error) => {
                    return Ok(outcome(
                        400,
                        "invalid",
                        &[format!("the gzip body does not decode: {error}")],
                    ))
                }
            }
        }
        Some(enc) => {
            return Ok(outcome(
                415,
                "not-supported",
                &[format!("Content-Encoding {enc:?} is not supported")],
            ))
        }
    };
    let bundle: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(error) => {
            return Ok(outcome(
                400,
                "structure",
                &[format!("body is not JSON: {error}")],
            ))
        }
    };
    record.entries = bundle
        .get("entry")
        .and_then(Value::as_array)
        .map_or(0, Vec::len);
    if bundle.get("resourceType").and_then(Value::as_str) != Some("Bundle") {
        return Ok(outcome(
            400,
            "invalid",
            &["expected a Bundle resource".into()],
        ));
    }

    // Schema validation off the async threads: a Bundle takes milliseconds to tens of them.
    let (bundle, errors) = tokio::task::spawn_blocking(move || {
        let errors = crate::schema::validate_resource(&bundle);
        (bundle, errors)
    })
    .await
    .unwrap_or_else(|_| {
        (
            Value::Null,
            vec!["(root): schema validation panicked".into()],
        )
    });
    if !errors.is_empty() {
        ctx.state
            .lock()
            .schema_failures
            .extend(errors.iter().cloned());
        return Ok(outcome(400, "structure", &errors));
    }

    let (outcomes, snapshot) = {
        let mut inner = ctx.state.lock();
        let plan = match transaction::plan_transaction(&inner.store, &bundle) {
            Ok(plan) => plan,
            Err(Rejection {
                status,
                code,
                issues,
            }) => return Ok(outcome(status, code, &issues)),
        };
        let outcomes = plan.outcomes.clone();
        if let Mode::FailEntry(n) = mode {
            let mut entries: Vec<Value> =
                outcomes.iter().map(EntryOutcome::response_entry).collect();
            if let Some(last) = entries.len().checked_sub(1) {
                entries[n.min(last)] = json!({"response": {
                    "status": "400 Bad Request",
                    "outcome": outcome_json("invalid", &["injected entry failure (Mode::FailEntry)".into()]),
                }});
            }
            return Ok(fhir_json(200, &response_bundle(entries)));
        }
        if let Mode::FailObservation(needle) = &mode {
            let hit = bundle["entry"].as_array().and_then(|entries| {
                entries.iter().position(|e| {
                    e["resource"]["resourceType"] == "Observation"
                        && transaction::identifiers(&e["resource"])
                            .iter()
                            .any(|(_, v)| v.contains(needle.as_str()))
                })
            });
            if let Some(i) = hit {
                let mut entries: Vec<Value> =
                    outcomes.iter().map(EntryOutcome::response_entry).collect();
                if let Some(slot) = entries.get_mut(i) {
                    *slot = json!({"response": {
                        "status": "422 Unprocessable Entity",
                        "outcome": outcome_json("processing", &["injected failure of this Observation (Mode::FailObservation)".into()]),
                    }});
                }
                return Ok(fhir_json(200, &response_bundle(entries)));
            }
        }
        inner.store.commit(plan);
        let snapshot = inner
            .state_file
            .clone()
            .map(|path| (path, serde_json::to_vec_pretty(&inner.store)));
        (outcomes, snapshot)
    };
    if let Some((path, Ok(bytes))) = snapshot {
        if let Err(error) = write_atomically(&path, &bytes) {
            tracing::warn!(%error, path = %path.display(), "writing the state file failed");
        }
    }
    for outcome in &outcomes {
        let _ = ctx.state.events.send(EntryEvent {
            outcome: outcome.clone(),
        });
    }

    match mode {
        Mode::Empty200 => Ok(Response::builder()
            .status(200)
            .body(full(Bytes::new()))
            .expect("static response")),
        Mode::Garbage200 => Ok(Response::builder()
            .status(200)
            .header(CONTENT_TYPE, "application/fhir+json")
            .body(full(Bytes::from_static(
                b"<html>502 Bad Gateway</html> this is not JSON",
            )))
            .expect("static response")),
        Mode::HangUpAfterCommit => Err(HangUp),
        Mode::DelayAfterCommit(delay) => {
            tokio::time::sleep(delay).await;
            Ok(fhir_json(
                200,
                &response_bundle(outcomes.iter().map(EntryOutcome::response_entry).collect()),
            ))
        }
        _ => Ok(fhir_json(
            200,
            &response_bundle(outcomes.iter().map(EntryOutcome::response_entry).collect()),
        )),
    }
}

/// Decodes a gzip body; `None` when it decodes to more than [`MAX_BODY_BYTES`] (a gzip bomb
/// costs at most that much).
fn gunzip(body: &[u8]) -> std::io::Result<Option<Vec<u8>>> {
    use std::io::Read;
    let mut plain = Vec::new();
    flate2::read::GzDecoder::new(body)
        .take(MAX_BODY_BYTES as u64 + 1)
        .read_to_end(&mut plain)?;
    Ok((plain.len() <= MAX_BODY_BYTES).then_some(plain))
}

fn response_bundle(entries: Vec<Value>) -> Value {
    json!({
        "resourceType": "Bundle",
        "id": uuid::Uuid::new_v4().to_string(),
        "type": "transaction-response",
        "entry": entries,
    })
}

fn outcome_json(code: &str, issues: &[String]) -> Value {
    json!({
        "resourceType": "OperationOutcome",
        "issue": issues.iter().map(|d| json!({"severity": "error", "code": code, "diagnostics": d})).collect::<Vec<_>>(),
    })
}

fn outcome(status: u16, code: &str, issues: &[String]) -> Resp {
    fhir_json(status, &outcome_json(code, issues))
}

fn fhir_json(status: u16, body: &Value) -> Resp {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    Response::builder()
        .status(status)
        .header(CONTENT_TYPE, "application/fhir+json; charset=utf-8")
        .body(full(Bytes::from(body.to_string())))
        .expect("valid response parts")
}

fn full(bytes: Bytes) -> BoxBody<Bytes, std::convert::Infallible> {
    Full::new(bytes).boxed()
}

/// The answers of the hostile modes, given before the body is read; `None` for other modes.
fn hostile_answer(ctx: &Ctx, mode: &Mode, record: &RequestRecord) -> Option<Resp> {
    let builder = Response::builder()
        .status(200)
        .header(CONTENT_TYPE, "application/fhir+json");
    let resp = match *mode {
        Mode::SlowLoris { byte_every } => builder.body(
            Generated {
                state: ctx.state.clone(),
                remaining: u64::MAX,
                chunk: 1,
                every: Some(byte_every),
                sleep: None,
            }
            .boxed(),
        ),
        Mode::HugeBody {
            bytes,
            declare_length,
        } => {
            let builder = if declare_length {
                builder.header(hyper::header::CONTENT_LENGTH, bytes)
            } else {
                builder
            };
            builder.body(
                Generated {
                    state: ctx.state.clone(),
                    remaining: bytes,
                    chunk: SPACES.len(),
                    every: None,
                    sleep: None,
                }
                .boxed(),
            )
        }
        Mode::DeepJson { depth } => {
            let mut body = "[".repeat(depth);
            body.push_str(&"]".repeat(depth));
            builder.body(full(Bytes::from(body)))
        }
        Mode::RedirectLoop => Response::builder()
            .status(307)
            .header(hyper::header::LOCATION, record.path.as_str())
            .body(full(Bytes::new())),
        _ => return None,
    };
    Some(resp.expect("valid response parts"))
}

/// 64 KiB of spaces: every chunk of a generated body is a slice of this static buffer.
static SPACES: [u8; 64 * 1024] = [b' '; 64 * 1024];

/// A response body produced as it is read: `remaining` bytes in chunks of `chunk`, one chunk
/// per `every` if set. Holds no buffer of its own, so a 1 GiB body costs the server nothing.
struct Generated {
    state: ServerState,
    remaining: u64,
    chunk: usize,
    every: Option<Duration>,
    sleep: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

impl hyper::body::Body for Generated {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        use std::task::Poll;
        if self.remaining == 0 {
            return Poll::Ready(None);
        }
        if let Some(every) = self.every {
            let sleep = self
                .sleep
                .get_or_insert_with(|| Box::pin(tokio::time::sleep(every)));
            if std::future::Future::poll(sleep.as_mut(), cx).is_pending() {
                return Poll::Pending;
            }
            self.sleep = None;
        }
        let n = self
            .chunk
            .min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
        self.remaining -= n as u64;
        self.state.lock().body_bytes_sent += n as u64;
        let data = Bytes::from_static(&SPACES[..n]);
        Poll::Ready(Some(Ok(hyper::body::Frame::data(data))))
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }
}

fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(tmp, path)
}
