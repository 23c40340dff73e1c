//! The mTLS HTTP client: sends a Bundle, reports what came back. No decisions here.
//!
//! Built at start-up; fails closed: a missing or empty CA file, a missing client key, or an
//! `http://` base without `allow_insecure_http` is an error before anything is sent. Trust comes
//! only from the configured CA (no system roots). Redirects are not followed (a redirect to
//! another host must not receive PHI) and proxy environment variables are ignored.
//!
//! A failed exchange is a [`SendError`], classified by the *types* in the error's `source()`
//! chain (never by its text): reqwest's own predicates, `rustls::Error` (and its certificate
//! errors and alerts), `hyper::Error`, `std::io::ErrorKind`. Each class has its own message and
//! a fix hint ([`SendError::hint`]) that names the setting or the place to look.
//!
//! Certificate rotation: before each exchange the client compares the metadata (size, mtime,
//! ctime, inode) of `uplink.client_cert` and `uplink.client_key` with what it last saw, a pair
//! of `stat` calls. When they changed it builds a new HTTP client from the files; a pair that
//! does not load (half-written, key not matching the certificate, key readable by others)
//! keeps the client in use, is logged once and counted, and is tried again at the next change.
//!
//! The uploader talks to the server through the [`BundleSender`] trait, so its tests can script
//! the answers; [`UplinkClient`] is the real implementation.

use std::future::Future;
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError, RwLock};
use std::time::{Duration, SystemTime};

use super::limits::{json_depth_exceeds, MAX_BODY, MAX_JSON_DEPTH};
use crate::telemetry::{
    UplinkBodySent, UplinkClientCertInUse, UplinkClientCertReloadFailed, UplinkGzipRefused,
};
use crate::tls::{client_config_for, PostQuantum, TlsSetupError};

#[derive(Debug, Clone)]
pub struct UplinkTls {
    pub fhir_base: url::Url,
    /// `uplink.pin_spki_sha256`: empty = no pinning (the CA bundle alone decides).
    pub pin_spki_sha256: Vec<crate::tls::pin::SpkiPin>,
    /// `uplink.post_quantum`: the key exchange groups offered (default: the hybrid
    /// X25519MLKEM768 first, classical groups after it).
    pub post_quantum: PostQuantum,
    pub ca_file: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    pub allow_insecure_http: bool,
    pub timeout: Duration,
}

impl UplinkTls {
    /// The settings of `[uplink]`: what the daemon and `check-uplink` both connect with.
    pub fn from_config(u: &crate::config::UplinkConfig) -> UplinkTls {
        UplinkTls {
            fhir_base: u.fhir_base.clone(),
            pin_spki_sha256: u.pin_spki_sha256.clone(),
            post_quantum: u.post_quantum,
            ca_file: u.ca_file.clone(),
            client_cert: u.client_cert.clone(),
            client_key: u.client_key.clone(),
            allow_insecure_http: u.allow_insecure_http,
            timeout: u.timeout,
        }
    }
}

/// The client cannot be built (start-up).
#[derive(Debug, thiserror::Error)]
pub enum UplinkError {
    #[error("TLS setup: {0}")]
    Setup(#[from] TlsSetupError),
    #[error("fhir_base {0} is plaintext http:// and allow_insecure_http is not set")]
    Insecure(String),
    #[error("HTTP client setup: {0}")]
    Client(String),
    #[error("OAuth setup: {0}")]
    OAuth(#[from] super::oauth::OAuthSetupError),
}

/// Why an exchange with the FHIR server produced no HTTP answer. No PHI: host names, statuses,
/// TLS reasons.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The host name in `fhir_base` does not resolve.
    #[error("cannot resolve the FHIR server's host name {host}")]
    Dns { host: String },
    /// Nothing listens at the address (TCP RST).
    #[error("the FHIR server refused the connection ({host}:{port})")]
    Refused { host: String, port: u16 },
    /// The TLS handshake failed, or the server's TLS alert ended the connection.
    #[error("TLS with the FHIR server failed: {0}")]
    Tls(#[from] TlsProblem),
    /// No answer within `uplink.timeout_secs` (connect, handshake or response).
    #[error("the FHIR server did not answer within {0:?}")]
    Timeout(Duration),
    /// The connection was closed (or reset) before a complete answer arrived.
    #[error("the connection closed before the FHIR server answered")]
    Closed,
    /// Any other failure to connect (no route to host, network down...).
    #[error("cannot connect to the FHIR server: {0}")]
    Connect(String),
    /// The answer is larger than [`MAX_BODY`] (announced by `Content-Length`, or found while
    /// streaming it: reading stops at the cap).
    #[error("the FHIR server's answer is larger than {MAX_BODY} bytes")]
    ResponseTooLarge,
    /// The answer's JSON nests deeper than [`MAX_JSON_DEPTH`]; it was not parsed.
    #[error("the FHIR server's answer nests JSON deeper than {MAX_JSON_DEPTH} levels")]
    ResponseTooDeep,
    /// The server answered with a redirect (3xx). Redirects are never followed: PHI must not
    /// go to a URL the configuration does not name.
    #[error("the FHIR server answered with a redirect (HTTP {status}), which is never followed")]
    Redirected { status: u16 },
    /// No access token for the FHIR server (`[uplink.oauth2]`): the token endpoint refused the
    /// gateway's credentials, gave an unusable answer, or could not be reached. Nothing was
    /// sent to the FHIR server.
    #[error("{0}")]
    Token(#[from] super::oauth::TokenProblem),
    /// Anything else (the error chain, for the log).
    #[error("request to the FHIR server failed: {0}")]
    Other(String),
}

/// What went wrong in TLS, from `rustls::Error`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TlsProblem {
    #[error("the server's certificate is not issued by the CA in uplink.ca_file (unknown issuer)")]
    UnknownIssuer,
    #[error("the server's certificate has expired")]
    Expired,
    #[error("the server's certificate is not valid yet")]
    NotValidYet,
    #[error("the server's certificate is not valid for the host name in uplink.fhir_base")]
    WrongHostName,
    #[error("the server's certificate was rejected: {0}")]
    BadCertificate(String),
    /// The server's alert says it does not accept our client certificate.
    #[error("the server refused the gateway's client certificate (TLS alert {0})")]
    ClientCertificateRefused(String),
    /// The server speaks only TLS versions we refuse (1.1 or older).
    #[error("the server offers only TLS versions older than 1.2")]
    ProtocolVersion,
    /// The peer's bytes are not TLS records: a plaintext endpoint (e.g. `http://` behind an
    /// `https://` URL), or not a TLS server at all.
    #[error("the server did not answer in TLS (a plaintext endpoint?)")]
    NotTls,
    /// `uplink.pin_spki_sha256` is set and no certificate of the server's (otherwise valid)
    /// chain has a pinned key; the server's own key pin is given.
    #[error("the server's key is not pinned in uplink.pin_spki_sha256 (its pin-sha256 is {0})")]
    PinMismatch(String),
    /// `uplink.post_quantum = "require"` and the handshake failed where a server without
    /// X25519MLKEM768 fails it (no common group, or no TLS 1.3); the reason is given.
    #[error("the server did not agree to the post-quantum key exchange X25519MLKEM768, which uplink.post_quantum = \"require\" demands ({0})")]
    PostQuantumRequired(String),
    #[error("the server sent TLS alert {0}")]
    Alert(String),
    #[error("{0}")]
    Other(String),
}

impl SendError {
    /// A TLS problem read under `uplink.post_quantum` ([`TlsProblem::under_policy`]); any other
    /// error unchanged.
    #[must_use]
    pub fn under_policy(self, pq: PostQuantum) -> SendError {
        match self {
            SendError::Tls(p) => SendError::Tls(p.under_policy(pq)),
            other => other,
        }
    }

    /// A short stable name of the class, for logs and counters.
    pub fn class(&self) -> &'static str {
        match self {
            SendError::Dns { .. } => "dns",
            SendError::Refused { .. } => "connection_refused",
            SendError::Tls(_) => "tls",
            SendError::Timeout(_) => "timeout",
            SendError::Closed => "connection_closed",
            SendError::Connect(_) => "connect",
            SendError::ResponseTooLarge => "response_too_large",
            SendError::ResponseTooDeep => "response_too_deep",
            SendError::Redirected { .. } => "redirected",
            SendError::Token(p) => p.class(),
            SendError::Other(_) => "other",
        }
    }

    /// Whether this failure pauses uploads server-wide (a technician must act) instead of
    /// being retried: the OAuth token endpoint refused the credentials or answered nonsense.
    pub fn pauses_uploads(&self) -> bool {
        matches!(self, SendError::Token(p) if p.pauses_uploads())
    }

    /// Where a technician should look.
    pub fn hint(&self) -> &'static str {
        match self {
            SendError::Dns { .. } => {
                "check the host name in uplink.fhir_base and the gateway's DNS settings"
            }
            SendError::Refused { .. } => {
                "nothing listens there: check the port in uplink.fhir_base and that the FHIR server is running"
            }
            SendError::Tls(p) => p.hint(),
            SendError::Timeout(_) => {
                "check the network path to the server (firewall, proxy); raise uplink.timeout_secs if the server is just slow"
            }
            SendError::Closed => {
                "the server or something in between (proxy, load balancer) dropped the connection: check its logs; the Bundle is resent safely"
            }
            SendError::Connect(_) => "check the gateway's network (link, route, firewall)",
            SendError::ResponseTooLarge => "check that uplink.fhir_base points at a FHIR server",
            SendError::ResponseTooDeep => {
                "the server's answer is not a plausible FHIR response: check uplink.fhir_base and the server (or a proxy in between)"
            }
            SendError::Redirected { .. } => {
                "set uplink.fhir_base to the final URL of the FHIR base (scheme, host, path); redirects are not followed"
            }
            SendError::Token(p) => p.hint(),
            SendError::Other(_) => "see the error for details",
        }
    }
}

impl TlsProblem {
    /// Where a technician should look.
    pub fn hint(&self) -> &'static str {
        match self {
            TlsProblem::UnknownIssuer => {
                "the server's certificate is not from uplink.ca_file: put the CA that issued it there (get it from the FHIR server's operators), or check that uplink.fhir_base names the right server"
            }
            TlsProblem::Expired => {
                "renew the server's certificate; if it is in date, check the gateway's clock (NTP)"
            }
            TlsProblem::NotValidYet => "check the gateway's clock (NTP)",
            TlsProblem::WrongHostName => {
                "use in uplink.fhir_base the host name the server's certificate names"
            }
            TlsProblem::BadCertificate(_) => "check the server's certificate chain",
            TlsProblem::PinMismatch(_) => {
                "the server presented a key that is not pinned: if its operators changed the key on purpose, add its pin-sha256 (vitalgate check-uplink prints it) to uplink.pin_spki_sha256; otherwise something is intercepting the connection"
            }
            TlsProblem::ClientCertificateRefused(_) => {
                "check uplink.client_cert and uplink.client_key, and that the server trusts their CA"
            }
            TlsProblem::ProtocolVersion => {
                "the server must offer TLS 1.2 or 1.3; TLS 1.0/1.1 are refused (have the server upgraded)"
            }
            TlsProblem::NotTls => {
                "check the port and scheme in uplink.fhir_base: this endpoint does not speak TLS"
            }
            TlsProblem::PostQuantumRequired(_) => {
                "the server does not offer X25519MLKEM768 (or not over TLS 1.3): have its operators enable it, or set uplink.post_quantum = \"prefer\" to accept classical X25519 from servers without it; readings stay pending until then"
            }
            TlsProblem::Alert(_) | TlsProblem::Other(_) => {
                "check the server's TLS setup (protocol versions, cipher suites) and uplink.ca_file"
            }
        }
    }

    /// `self` as seen under the `uplink.post_quantum` policy `pq`: with `require`, a refusal
    /// of the kind a server without X25519MLKEM768 gives (handshake_failure or
    /// insufficient_security alert, no common group, no TLS 1.3) is
    /// [`TlsProblem::PostQuantumRequired`]. Otherwise unchanged.
    #[must_use]
    pub fn under_policy(self, pq: PostQuantum) -> TlsProblem {
        if pq != PostQuantum::Require {
            return self;
        }
        // The alert names as `from_rustls` writes them (the alert's Debug form).
        let refusal = |a: &str| {
            [
                rustls::AlertDescription::HandshakeFailure,
                rustls::AlertDescription::InsufficientSecurity,
            ]
            .iter()
            .any(|d| format!("{d:?}") == a)
        };
        match self {
            TlsProblem::Alert(a) if refusal(&a) => {
                TlsProblem::PostQuantumRequired(format!("TLS alert {a}"))
            }
            TlsProblem::ProtocolVersion => {
                TlsProblem::PostQuantumRequired("the server does not speak TLS 1.3".into())
            }
            other => other,
        }
    }

    /// Classifies a rustls error.
    pub fn from_rustls(e: &rustls::Error) -> TlsProblem {
        use rustls::{AlertDescription as A, CertificateError as C};
        match e {
            rustls::Error::InvalidCertificate(c) => match c {
                C::UnknownIssuer => TlsProblem::UnknownIssuer,
                C::Expired | C::ExpiredContext { .. } => TlsProblem::Expired,
                C::NotValidYet | C::NotValidYetContext { .. } => TlsProblem::NotValidYet,
                C::NotValidForName | C::NotValidForNameContext { .. } => TlsProblem::WrongHostName,
                C::Other(other) => match other.0.downcast_ref::<crate::tls::pin::PinMismatch>() {
                    Some(m) => TlsProblem::PinMismatch(m.server_pin.clone()),
                    None => TlsProblem::BadCertificate(format!("{other:?}")),
                },
                other => TlsProblem::BadCertificate(format!("{other:?}")),
            },
            rustls::Error::AlertReceived(a) => match a {
                A::BadCertificate
                | A::UnknownCA
                | A::CertificateRequired
                | A::CertificateUnknown
                | A::CertificateExpired
                | A::CertificateRevoked
                | A::UnsupportedCertificate
                | A::AccessDenied => TlsProblem::ClientCertificateRefused(format!("{a:?}")),
                A::ProtocolVersion => TlsProblem::ProtocolVersion,
                other => TlsProblem::Alert(format!("{other:?}")),
            },
            rustls::Error::PeerIncompatible(
                rustls::PeerIncompatible::ServerDoesNotSupportTls12Or13
                | rustls::PeerIncompatible::ServerTlsVersionIsDisabledByOurConfig,
            ) => TlsProblem::ProtocolVersion,
            rustls::Error::InvalidMessage(
                rustls::InvalidMessage::InvalidContentType
                | rustls::InvalidMessage::UnknownProtocolVersion,
            ) => TlsProblem::NotTls,
            other => TlsProblem::Other(other.to_string()),
        }
    }
}

/// What the server answered.
#[derive(Debug, Clone)]
pub struct RawResponse {
    pub status: u16,
    pub retry_after: Option<String>,
    pub body: Vec<u8>,
}

/// Sends one transaction Bundle and reports the answer. The uploader's only way to the server.
pub trait BundleSender: Send + Sync {
    /// POSTs `bundle` to the FHIR base.
    ///
    /// # Errors
    ///
    /// A [`SendError`] when no complete HTTP answer arrived.
    fn send(
        &self,
        bundle: &serde_json::Value,
    ) -> impl Future<Output = Result<RawResponse, SendError>> + Send;

    /// POSTs the Bundle whose JSON is `json` (the uploader writes its Bundles as bytes,
    /// `fhir::BuiltBundle::json`). The default reads `json` into a value and calls
    /// [`Self::send`]; a sender that puts bytes on the wire sends them as they are.
    ///
    /// # Errors
    ///
    /// A [`SendError`] when no complete HTTP answer arrived ([`SendError::Other`] if `json` is
    /// not JSON).
    fn send_json(
        &self,
        json: &[u8],
    ) -> impl Future<Output = Result<RawResponse, SendError>> + Send {
        let bundle = serde_json::from_slice::<serde_json::Value>(json);
        async move {
            match bundle {
                Ok(bundle) => self.send(&bundle).await,
                Err(e) => Err(SendError::Other(format!("Bundle is not JSON: {e}"))),
            }
        }
    }

    /// Whether this sender takes bodies encoded ahead ([`EncodedBody`], with gzip if
    /// `Some(true)`); `None` (the default): it encodes the Bundle itself when it sends it.
    fn encodes_ahead(&self) -> Option<bool> {
        None
    }

    /// [`Self::send_json`] with `body`, `json` encoded ahead by [`EncodedBody::encode`] (the
    /// same bytes `send_json` would put on the wire). The default ignores `body`.
    fn send_encoded(
        &self,
        json: &[u8],
        body: EncodedBody,
    ) -> impl Future<Output = Result<RawResponse, SendError>> + Send {
        drop(body);
        self.send_json(json)
    }

    /// Request body bytes put on the wire so far (for `uplink.daily_byte_budget`).
    fn body_bytes_sent(&self) -> u64 {
        0
    }

    /// Called each time the uploader finds nothing to send, then at least every
    /// [`crate::uploader::IDLE_POLL`] while it idles: the real client looks for a rotated client
    /// certificate here, so an idle gateway puts it in use (and reports its expiry) within that
    /// time instead of at its next upload. The default does nothing.
    fn idle_tick(&self) {}
}

/// The real [`BundleSender`]: reqwest on rustls/ring, mutual TLS.
///
/// Bodies are sent `Content-Encoding: gzip` (a Bundle of similar Observations shrinks about
/// tenfold) until the server answers 415 to one: then that Bundle is resent plain at once and
/// every later one goes plain too (remembered for the life of the client).
pub struct UplinkClient {
    /// The client built from the certificate and key files as [`Self::files`] last saw them
    /// load; replaced (never torn down mid-request: a request holds its own handle) on rotation.
    http: RwLock<reqwest::Client>,
    cfg: UplinkTls,
    /// What the certificate and key files looked like at the last check.
    files: Mutex<Option<FileStamps>>,
    base: url::Url,
    timeout: Duration,
    gzip: AtomicBool,
    body_bytes_sent: AtomicU64,
    /// `[uplink.oauth2]`: each Bundle carries `Authorization: Bearer <token>` from here.
    oauth: Option<super::oauth::TokenSource>,
}

/// The rustls client configuration the uplink uses: [`client_config`] with the client
/// certificate, ALPN `http/1.1`. `check-uplink` handshakes with exactly this.
///
/// # Errors
///
/// [`UplinkError::Setup`] naming the file.
pub fn tls_config(cfg: &UplinkTls) -> Result<rustls::ClientConfig, UplinkError> {
    let mut tls = client_config_for(
        &cfg.ca_file,
        Some((&cfg.client_cert, &cfg.client_key)),
        cfg.post_quantum,
    )?;
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    if !cfg.pin_spki_sha256.is_empty() {
        let roots = crate::tls::root_store(&cfg.ca_file)?;
        crate::tls::pin::pin_server_keys(&mut tls, roots, &cfg.pin_spki_sha256)
            .map_err(TlsSetupError::from)?;
    }
    Ok(tls)
}

/// Times the client certificate in use was replaced by a rotated one (process-wide). The
/// certificate-expiry check re-reads the certificate when this changes.
static CLIENT_CERT_ROTATIONS: AtomicU64 = AtomicU64::new(0);

/// How many times an [`UplinkClient`] has put a rotated client certificate in use.
pub fn client_cert_rotations() -> u64 {
    CLIENT_CERT_ROTATIONS.load(Ordering::Relaxed)
}

/// The metadata of one file that changes when the file is rewritten, replaced by a rename, or
/// has its mode changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FileStamp {
    len: u64,
    modified: Option<SystemTime>,
    #[cfg(unix)]
    ctime: (i64, i64),
    #[cfg(unix)]
    inode: (u64, u64),
}

impl FileStamp {
    /// `None` when the file cannot be stat'ed (e.g. between an unlink and a rename).
    pub(crate) fn of(path: &std::path::Path) -> Option<FileStamp> {
        let m = std::fs::metadata(path).ok()?;
        #[cfg(unix)]
        use std::os::unix::fs::MetadataExt as _;
        Some(FileStamp {
            len: m.len(),
            modified: m.modified().ok(),
            #[cfg(unix)]
            ctime: (m.ctime(), m.ctime_nsec()),
            #[cfg(unix)]
            inode: (m.dev(), m.ino()),
        })
    }
}

/// The certificate's and the key's stamps.
type FileStamps = (Option<FileStamp>, Option<FileStamp>);

fn stamps(cfg: &UplinkTls) -> FileStamps {
    (
        FileStamp::of(&cfg.client_cert),
        FileStamp::of(&cfg.client_key),
    )
}

/// The `notAfter` of the first certificate in `cfg.client_cert`, for the log line (best effort).
fn cert_not_after(cfg: &UplinkTls) -> Option<chrono::DateTime<chrono::Utc>> {
    let chain = crate::tls::load_certs(&cfg.client_cert).ok()?;
    crate::ops::cert::not_after_der(chain.first()?.as_ref()).ok()
}

/// The HTTP client for `cfg` (reads the CA, certificate and key files).
fn build_http(cfg: &UplinkTls) -> Result<reqwest::Client, UplinkError> {
    let tls = tls_config(cfg)?;
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .https_only(!cfg.allow_insecure_http)
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        // Total deadline (ends a slow-loris answer), idle deadline per read, connect deadline.
        .timeout(cfg.timeout)
        .read_timeout(cfg.timeout)
        .connect_timeout(cfg.timeout.min(Duration::from_secs(15)))
        .user_agent(concat!("vitalgate/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| UplinkError::Client(error_chain(&e)))
}

impl UplinkClient {
    /// Builds the client (reads the CA, certificate and key files).
    ///
    /// # Errors
    ///
    /// [`UplinkError`] naming the file or setting.
    pub fn new(cfg: &UplinkTls) -> Result<Self, UplinkError> {
        if cfg.fhir_base.scheme() != "https" && !cfg.allow_insecure_http {
            return Err(UplinkError::Insecure(cfg.fhir_base.to_string()));
        }
        // Stat before reading: a change made while the files are read is seen at the next check.
        let seen = stamps(cfg);
        let http = build_http(cfg)?;
        Ok(Self {
            http: RwLock::new(http),
            cfg: cfg.clone(),
            files: Mutex::new(Some(seen)),
            base: cfg.fhir_base.clone(),
            timeout: cfg.timeout,
            gzip: AtomicBool::new(true),
            body_bytes_sent: AtomicU64::new(0),
            oauth: None,
        })
    }

    /// With `[uplink.oauth2]`: loads the assertion key; every Bundle then carries a bearer
    /// token (fetched through this client's own TLS configuration, cached until shortly before
    /// it expires). `None`: the client certificate alone authenticates.
    ///
    /// # Errors
    ///
    /// [`UplinkError::OAuth`] naming the key file; [`UplinkError::Insecure`] for an
    /// `http://` token URL without `allow_insecure_http`.
    pub fn with_oauth2(
        mut self,
        cfg: Option<&super::oauth::OAuth2Config>,
    ) -> Result<Self, UplinkError> {
        let Some(cfg) = cfg else {
            self.oauth = None;
            return Ok(self);
        };
        if let Some(url) = &cfg.token_url {
            if url.scheme() != "https" && !self.cfg.allow_insecure_http {
                return Err(UplinkError::Insecure(url.to_string()));
            }
        }
        // A discovered endpoint is held to this client's rule too.
        let mut cfg = cfg.clone();
        cfg.allow_insecure_http &= self.cfg.allow_insecure_http;
        self.oauth = Some(super::oauth::TokenSource::new(&cfg)?);
        Ok(self)
    }

    /// Fetches a new access token now, bypassing the cache, and posts nothing to the FHIR
    /// server (`check-uplink`). Returns the token's lifetime.
    ///
    /// # Errors
    ///
    /// [`SendError::Token`]; `Ok(None)` when OAuth is not configured.
    pub async fn check_token(&self) -> Result<Option<Duration>, SendError> {
        let Some(oauth) = &self.oauth else {
            return Ok(None);
        };
        let grant = oauth.fetch(&self.http(), self.timeout).await?;
        Ok(Some(grant.lifetime))
    }

    /// Where token requests go (`check-uplink`): the token endpoint when known, else the SMART
    /// configuration it is to be read from; and whether it is (to be) discovered rather than
    /// configured. `None` without `[uplink.oauth2]`.
    pub fn oauth_endpoint(&self) -> Option<(url::Url, bool)> {
        self.oauth
            .as_ref()
            .map(|o| (o.endpoint_or_discovery(), o.discovers()))
    }

    /// The HTTP client in use (a cheap handle).
    fn http(&self) -> reqwest::Client {
        self.http
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Rotation: when `uplink.client_cert` or `uplink.client_key` changed since the last check
    /// (two `stat` calls), builds a new HTTP client from them and puts it in use; later
    /// exchanges handshake with the new certificate. A pair that does not load keeps the client
    /// in use, is logged once and counted ([`UplinkClientCertReloadFailed`]), and is tried again
    /// when the files change again (a half-written file completed, a key's mode fixed). Returns
    /// whether a new certificate was put in use.
    pub fn reload_if_changed(&self) -> bool {
        let now = stamps(&self.cfg);
        {
            let mut seen = self.files.lock().unwrap_or_else(PoisonError::into_inner);
            if seen.as_ref() == Some(&now) {
                return false;
            }
            *seen = Some(now);
        }
        match build_http(&self.cfg) {
            Ok(http) => {
                *self.http.write().unwrap_or_else(PoisonError::into_inner) = http;
                CLIENT_CERT_ROTATIONS.fetch_add(1, Ordering::Relaxed);
                UplinkClientCertInUse {
                    path: &self.cfg.client_cert,
                    not_after: cert_not_after(&self.cfg),
                }
                .emit();
                true
            }
            Err(error) => {
                UplinkClientCertReloadFailed { error: &error }.emit();
                false
            }
        }
    }

    /// [`classify_reqwest_error`], a TLS problem read under `uplink.post_quantum`
    /// ([`TlsProblem::under_policy`]).
    fn classify(&self, e: &reqwest::Error) -> SendError {
        classify_reqwest_error(e, &self.base, self.timeout).under_policy(self.cfg.post_quantum)
    }

    /// Turns gzip request bodies on (the default) or off.
    #[must_use]
    pub fn with_gzip(self, gzip: bool) -> Self {
        self.gzip.store(gzip, Ordering::Relaxed);
        self
    }

    /// Whether the next body goes gzip-compressed.
    pub fn sends_gzip(&self) -> bool {
        self.gzip.load(Ordering::Relaxed)
    }

    /// Request body bytes put on the wire so far (after compression).
    pub fn body_bytes_sent(&self) -> u64 {
        self.body_bytes_sent.load(Ordering::Relaxed)
    }

    /// POSTs a transaction Bundle to `[base]`, gzip-compressed unless the server refused that.
    ///
    /// With `[uplink.oauth2]` the request carries a bearer token. A 401 answer invalidates it:
    /// a new token is fetched and the Bundle is sent once more; a second 401 is returned as it
    /// is (the uploader pauses). No token from the endpoint is [`SendError::Token`], and
    /// nothing goes to the FHIR server.
    ///
    /// # Errors
    ///
    /// A classified [`SendError`].
    pub async fn send_bundle(&self, bundle: &serde_json::Value) -> Result<RawResponse, SendError> {
        let plain = serde_json::to_vec(bundle).map_err(|e| SendError::Other(e.to_string()))?;
        self.send_body(&plain, EncodedBody::default()).await
    }

    /// [`Self::send_bundle`] with the Bundle already serialized (`plain`, its JSON) and perhaps
    /// compressed too (`body`, [`EncodedBody::encode`]): the uploader writes and compresses the
    /// next Bundle while the one before is in flight.
    ///
    /// # Errors
    ///
    /// A classified [`SendError`].
    pub async fn send_body(
        &self,
        plain: &[u8],
        body: EncodedBody,
    ) -> Result<RawResponse, SendError> {
        self.reload_if_changed();
        let EncodedBody { mut gzipped } = body;
        let Some(oauth) = &self.oauth else {
            return self.send_plain_or_gzip(plain, gzipped, None).await;
        };
        let token = oauth.token(&self.http(), self.timeout).await?;
        let resp = self
            .send_plain_or_gzip(plain, gzipped.clone(), Some(&token))
            .await?;
        if resp.status != 401 {
            return Ok(resp);
        }
        // The token was revoked or expired early: one new token, one resend (a resend is
        // harmless: conditional create).
        oauth.invalidate();
        let token = oauth.token(&self.http(), self.timeout).await?;
        self.send_plain_or_gzip(plain, gzipped.take(), Some(&token))
            .await
    }

    /// The Bundle gzip-compressed (`gzipped`, if given, is `plain` compressed already) unless
    /// the server refused that (then plain, at once).
    async fn send_plain_or_gzip(
        &self,
        plain: &[u8],
        gzipped: Option<Vec<u8>>,
        bearer: Option<&str>,
    ) -> Result<RawResponse, SendError> {
        if self.sends_gzip() {
            let body = match gzipped {
                Some(body) => body,
                None => gzip(plain)?,
            };
            let resp = self.post(body, plain.len(), true, bearer).await?;
            if resp.status != 415 {
                return Ok(resp);
            }
            // The server does not take gzip: remember, and resend this Bundle plain now
            // (a 415 otherwise pauses uploads server-wide).
            if self.gzip.swap(false, Ordering::Relaxed) {
                UplinkGzipRefused.emit();
            }
        }
        self.post(plain.to_vec(), plain.len(), false, bearer).await
    }

    async fn post(
        &self,
        body: Vec<u8>,
        plain_bytes: usize,
        gzip: bool,
        bearer: Option<&str>,
    ) -> Result<RawResponse, SendError> {
        let classify = |e: reqwest::Error| self.classify(&e);
        let bytes = body.len();
        let mut request = self
            .http()
            .post(self.base.clone())
            .header("Content-Type", "application/fhir+json")
            .header("Accept", "application/fhir+json");
        if gzip {
            request = request.header("Content-Encoding", "gzip");
        }
        if let Some(token) = bearer {
            let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))
                .map_err(|_| {
                    SendError::Token(super::oauth::TokenProblem::BadAnswer(
                        "access_token is not a valid header value".into(),
                    ))
                })?;
            value.set_sensitive(true);
            request = request.header(reqwest::header::AUTHORIZATION, value);
        }
        self.body_bytes_sent
            .fetch_add(bytes as u64, Ordering::Relaxed);
        UplinkBodySent {
            bytes,
            plain_bytes,
            gzip,
        }
        .emit();
        let resp = request.body(body).send().await.map_err(classify)?;
        self.read_response(resp).await
    }

    /// `GET [base]/metadata` (the server's CapabilityStatement), with the limits of every
    /// exchange: no redirects, the body cap, the JSON depth limit, the timeouts. Sends nothing
    /// but the request line and headers (`check-uplink`, `doctor`).
    ///
    /// # Errors
    ///
    /// A classified [`SendError`].
    pub async fn get_metadata(&self) -> Result<RawResponse, SendError> {
        let classify = |e: reqwest::Error| self.classify(&e);
        let url = self.metadata_url();
        let resp = self
            .http()
            .get(url)
            .header("Accept", "application/fhir+json")
            .send()
            .await
            .map_err(classify)?;
        self.read_response(resp).await
    }

    /// `[base]/metadata`.
    pub fn metadata_url(&self) -> String {
        format!("{}/metadata", self.base.as_str().trim_end_matches('/'))
    }

    /// The answer's status, `Retry-After` and body, within [`MAX_BODY`] and
    /// [`MAX_JSON_DEPTH`]; a redirect is an error.
    async fn read_response(&self, mut resp: reqwest::Response) -> Result<RawResponse, SendError> {
        let classify = |e: reqwest::Error| self.classify(&e);
        let status = resp.status().as_u16();
        if resp.status().is_redirection() {
            return Err(SendError::Redirected { status });
        }
        if resp.content_length().is_some_and(|n| n > MAX_BODY as u64) {
            return Err(SendError::ResponseTooLarge);
        }
        let retry_after = resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(classify)? {
            if body.len() + chunk.len() > MAX_BODY {
                return Err(SendError::ResponseTooLarge);
            }
            body.extend_from_slice(&chunk);
        }
        if json_depth_exceeds(&body, MAX_JSON_DEPTH) {
            return Err(SendError::ResponseTooDeep);
        }
        Ok(RawResponse {
            status,
            retry_after,
            body,
        })
    }
}

impl BundleSender for UplinkClient {
    fn send(
        &self,
        bundle: &serde_json::Value,
    ) -> impl Future<Output = Result<RawResponse, SendError>> + Send {
        self.send_bundle(bundle)
    }

    fn send_json(
        &self,
        json: &[u8],
    ) -> impl Future<Output = Result<RawResponse, SendError>> + Send {
        self.send_body(json, EncodedBody::default())
    }

    fn encodes_ahead(&self) -> Option<bool> {
        Some(self.sends_gzip())
    }

    fn send_encoded(
        &self,
        json: &[u8],
        body: EncodedBody,
    ) -> impl Future<Output = Result<RawResponse, SendError>> + Send {
        self.send_body(json, body)
    }

    fn body_bytes_sent(&self) -> u64 {
        UplinkClient::body_bytes_sent(self)
    }

    fn idle_tick(&self) {
        self.reload_if_changed();
    }
}

/// A Bundle's request body, encoded before it is sent: for a server that takes gzip, its JSON
/// compressed (pure CPU work, done off the request's critical path). The JSON itself is the
/// Bundle's own (`fhir::BuiltBundle::json`), sent beside it.
#[derive(Default)]
pub struct EncodedBody {
    gzipped: Option<Vec<u8>>,
}

impl EncodedBody {
    /// The body for the Bundle whose JSON is `plain`: compressed with `gzip`, nothing to do
    /// ahead without.
    ///
    /// # Errors
    ///
    /// [`SendError::Other`] when it does not compress.
    pub fn encode(plain: &[u8], gzip: bool) -> Result<Self, SendError> {
        let gzipped = if gzip { Some(self::gzip(plain)?) } else { None };
        Ok(Self { gzipped })
    }
}

/// gzip at the default level (6): on a Pi-class CPU a 50-reading Bundle takes about a
/// millisecond, far below the network round trip it saves.
fn gzip(plain: &[u8]) -> Result<Vec<u8>, SendError> {
    let mut enc = flate2::write::GzEncoder::new(
        Vec::with_capacity(plain.len() / 4),
        flate2::Compression::default(),
    );
    enc.write_all(plain)
        .and_then(|()| enc.finish())
        .map_err(|e| SendError::Other(format!("gzip: {e}")))
}

/// Classifies a reqwest error by the types in its `source()` chain. `base` gives the host and
/// port for the message; `timeout` is the configured request timeout.
pub fn classify_reqwest_error(e: &reqwest::Error, base: &url::Url, timeout: Duration) -> SendError {
    let host = base.host_str().unwrap_or("").to_owned();
    let port = base.port_or_known_default().unwrap_or(0);
    // TLS first: a certificate problem may also look like a failed connect.
    if let Some(tls) = causes(e).find_map(|c| c.downcast_ref::<rustls::Error>()) {
        return SendError::Tls(TlsProblem::from_rustls(tls));
    }
    if e.is_dns() {
        return SendError::Dns { host };
    }
    if e.is_timeout() {
        return SendError::Timeout(timeout);
    }
    for cause in causes(e) {
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind as K;
            match io.kind() {
                K::ConnectionRefused => return SendError::Refused { host, port },
                K::ConnectionReset
                | K::ConnectionAborted
                | K::BrokenPipe
                | K::UnexpectedEof
                | K::NotConnected => return SendError::Closed,
                K::TimedOut => return SendError::Timeout(timeout),
                _ => {}
            }
        }
        if let Some(h) = cause.downcast_ref::<hyper::Error>() {
            if h.is_incomplete_message() || h.is_closed() || h.is_canceled() {
                return SendError::Closed;
            }
        }
    }
    if e.is_connect() {
        return SendError::Connect(error_chain(e));
    }
    SendError::Other(error_chain(e))
}

/// Every error in the `source()` chain of `e`, `e` first. An `io::Error` wrapping another error
/// (as tokio-rustls wraps `rustls::Error`) is followed into the wrapped error too: std's
/// `io::Error::source` skips it.
pub fn causes<'a>(
    e: &'a (dyn std::error::Error + 'static),
) -> impl Iterator<Item = &'a (dyn std::error::Error + 'static)> {
    let mut stack: Vec<&'a (dyn std::error::Error + 'static)> = vec![e];
    std::iter::from_fn(move || {
        let cur = stack.pop()?;
        if let Some(next) = cur.source() {
            stack.push(next);
        }
        if let Some(inner) = cur
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::get_ref)
        {
            let inner: &(dyn std::error::Error + 'static) = inner;
            // `source()` of an io::Error is the wrapped error's source; visit the wrapped
            // error itself first.
            stack.push(inner);
        }
        Some(cur)
    })
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A body encoded ahead is what `send_bundle` would have put on the wire: gzip of exactly
    /// the Bundle's JSON bytes.
    #[test]
    fn a_body_encoded_ahead_is_the_bundle_s_own_json_and_its_gzip() {
        use std::io::Read;
        let bundle = serde_json::json!({
            "resourceType": "Bundle",
            "type": "transaction",
            "entry": [{"resource": {"resourceType": "Observation", "valueQuantity": {"value": 36.50}}}],
        });
        let plain = serde_json::to_vec(&bundle).unwrap();
        let body = EncodedBody::encode(&plain, true).unwrap();
        let mut unzipped = Vec::new();
        flate2::read::GzDecoder::new(body.gzipped.as_deref().unwrap())
            .read_to_end(&mut unzipped)
            .unwrap();
        assert_eq!(unzipped, plain);
        let body = EncodedBody::encode(&plain, false).unwrap();
        assert_eq!(body.gzipped, None);
    }

    #[test]
    fn rustls_certificate_errors_map_to_their_own_problem() {
        use rustls::{AlertDescription as A, CertificateError as C, Error as E};
        let cases = [
            (
                E::InvalidCertificate(C::UnknownIssuer),
                TlsProblem::UnknownIssuer,
            ),
            (E::InvalidCertificate(C::Expired), TlsProblem::Expired),
            (
                E::InvalidCertificate(C::NotValidYet),
                TlsProblem::NotValidYet,
            ),
            (
                E::InvalidCertificate(C::NotValidForName),
                TlsProblem::WrongHostName,
            ),
            (
                E::AlertReceived(A::UnknownCA),
                TlsProblem::ClientCertificateRefused("UnknownCA".into()),
            ),
            (
                E::AlertReceived(A::CertificateRequired),
                TlsProblem::ClientCertificateRefused("CertificateRequired".into()),
            ),
            (
                E::AlertReceived(A::HandshakeFailure),
                TlsProblem::Alert("HandshakeFailure".into()),
            ),
            (
                E::AlertReceived(A::ProtocolVersion),
                TlsProblem::ProtocolVersion,
            ),
            (
                E::PeerIncompatible(rustls::PeerIncompatible::ServerDoesNotSupportTls12Or13),
                TlsProblem::ProtocolVersion,
            ),
            (
                E::InvalidMessage(rustls::InvalidMessage::InvalidContentType),
                TlsProblem::NotTls,
            ),
        ];
        for (err, want) in cases {
            assert_eq!(TlsProblem::from_rustls(&err), want, "{err:?}");
        }
        assert!(matches!(
            TlsProblem::from_rustls(&E::InvalidCertificate(C::Revoked)),
            TlsProblem::BadCertificate(_)
        ));
    }

    #[test]
    fn a_refused_handshake_is_post_quantum_required_only_under_require() {
        use rustls::{AlertDescription as A, Error as E};
        let failure = TlsProblem::from_rustls(&E::AlertReceived(A::HandshakeFailure));
        assert_eq!(
            failure.clone().under_policy(PostQuantum::Prefer),
            TlsProblem::Alert("HandshakeFailure".into())
        );
        assert_eq!(
            failure.clone().under_policy(PostQuantum::Off),
            TlsProblem::Alert("HandshakeFailure".into())
        );
        let required = failure.under_policy(PostQuantum::Require);
        assert!(
            matches!(required, TlsProblem::PostQuantumRequired(_)),
            "{required:?}"
        );
        assert!(required.hint().contains("uplink.post_quantum"));
        assert!(matches!(
            TlsProblem::ProtocolVersion.under_policy(PostQuantum::Require),
            TlsProblem::PostQuantumRequired(_)
        ));
        // A certificate problem stays what it is.
        assert_eq!(
            TlsProblem::UnknownIssuer.under_policy(PostQuantum::Require),
            TlsProblem::UnknownIssuer
        );
    }

    /// Rotation without a server: each kind of bad new pair keeps the client in use and is
    /// not retried while the files stay as they are; a good pair is then put in use.
    #[test]
    fn a_changed_pair_that_does_not_load_is_refused_until_a_good_pair_arrives() {
        use std::os::unix::fs::PermissionsExt as _;
        use vitalgate_devkit::pki::TestPki;

        let dir = tempfile::tempdir().unwrap();
        let pki = TestPki::generate(dir.path()).unwrap();
        let client = UplinkClient::new(&UplinkTls {
            fhir_base: "https://127.0.0.1:9/fhir".parse().unwrap(),
            pin_spki_sha256: Vec::new(),
            post_quantum: PostQuantum::default(),
            ca_file: pki.ca_cert.clone(),
            client_cert: pki.client_cert.clone(),
            client_key: pki.client_key.clone(),
            allow_insecure_http: false,
            timeout: Duration::from_secs(5),
        })
        .unwrap();
        let failures = || {
            crate::telemetry::COUNTERS
                .uplink_client_cert_reload_failures
                .load(Ordering::Relaxed)
        };
        let put = |dest: &std::path::Path, from: &std::path::Path, mode: u32| {
            let tmp = dest.with_extension("tmp");
            std::fs::copy(from, &tmp).unwrap();
            std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode)).unwrap();
            std::fs::rename(&tmp, dest).unwrap();
        };
        assert!(!client.reload_if_changed(), "nothing changed");

        // The renewed key readable by others: refused.
        let before = failures();
        put(&pki.client_key, &pki.next_client_key, 0o644);
        assert!(!client.reload_if_changed());
        assert!(failures() > before);
        // Unchanged files are not tried (nor logged) again.
        let before = failures();
        assert!(!client.reload_if_changed());
        assert_eq!(failures(), before);

        // The key made private, but the certificate is still the old one: keys do not match.
        std::fs::set_permissions(&pki.client_key, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(!client.reload_if_changed());
        assert!(failures() > before);

        // The matching certificate arrives: the new pair is in use.
        let rotations = client_cert_rotations();
        put(&pki.client_cert, &pki.next_client_cert, 0o644);
        assert!(client.reload_if_changed());
        assert!(client_cert_rotations() > rotations);
        assert!(!client.reload_if_changed(), "in use, nothing to do");
    }

    #[test]
    fn causes_follow_an_io_error_into_the_rustls_error_it_wraps() {
        let io = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
        );
        let found = causes(&io).find_map(|c| c.downcast_ref::<rustls::Error>());
        assert!(found.is_some());
    }

    #[test]
    fn every_class_has_its_own_message_and_hint() {
        let errors = [
            SendError::Dns { host: "h".into() },
            SendError::Refused {
                host: "h".into(),
                port: 1,
            },
            SendError::Tls(TlsProblem::UnknownIssuer),
            SendError::Timeout(Duration::from_secs(1)),
            SendError::Closed,
            SendError::Connect("x".into()),
            SendError::ResponseTooLarge,
            SendError::ResponseTooDeep,
            SendError::Redirected { status: 307 },
        ];
        let hints: std::collections::HashSet<_> = errors.iter().map(SendError::hint).collect();
        let classes: std::collections::HashSet<_> = errors.iter().map(SendError::class).collect();
        assert_eq!(hints.len(), errors.len());
        assert_eq!(classes.len(), errors.len());
        assert!(!SendError::Closed.to_string().contains("TLS"));
    }
}
