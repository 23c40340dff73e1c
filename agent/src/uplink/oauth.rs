//! Optional OAuth 2.0 for FHIR servers that want an access token in addition to (or instead
//! of) the client certificate: SMART Backend Services (client credentials grant with a
//! `private_key_jwt` client assertion, signed ES384 or RS384 with ring).
//!
//! Pure parts, unit-tested: the client assertion ([`client_assertion`]: header `alg`, `typ`
//! `JWT`, `kid`; claims `iss` = `sub` = client id, `aud` = token URL, `exp` at most
//! [`ASSERTION_LIFETIME`] ahead, `iat`, a random unique `jti`; base64url without padding), the
//! token request body ([`token_request_body`]), the token endpoint's answer
//! ([`parse_token_response`]) and the cache decision ([`refresh_margin`], [`CachedToken`]:
//! `now` is an argument).
//!
//! The token endpoint is `token_url` when configured; otherwise it is discovered from the FHIR
//! server's `[base]/.well-known/smart-configuration` (SMART App Launch 2.x, which Backend
//! Services uses: its `token_endpoint`), parsed by [`parse_smart_configuration`]. A discovered
//! endpoint is kept until a token request to it fails for a reason other than a busy server;
//! then the configuration is read again.
//!
//! The I/O part, [`TokenSource`], POSTs the form to the token endpoint through the uplink's own HTTP
//! client (the same rustls configuration: mutual TLS still applies; no redirects; timeouts), with
//! a body cap of [`MAX_TOKEN_ANSWER`]. The token is kept until `min(10 % of its lifetime, 60 s)`
//! before it expires. Neither the token nor the assertion is ever logged: [`TokenProblem`] holds
//! statuses, OAuth error codes and short reasons only.

use std::path::Path;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use base64::Engine as _;
use ring::rand::SecureRandom;
use ring::signature::{self, EcdsaKeyPair, KeyPair as _, RsaKeyPair};

use super::client::{classify_reqwest_error, FileStamp, SendError};
use crate::telemetry::{
    UplinkOAuthKeyInUse, UplinkOAuthKeyReloadFailed, UplinkTokenEndpointDiscovered,
    UplinkTokenFetched, UplinkTokenRefused,
};

/// The client assertion is valid this long (SMART: "no more than five minutes in the future";
/// a minute less leaves room for a server clock behind the gateway's).
pub const ASSERTION_LIFETIME: Duration = Duration::from_secs(240);

/// The longest token endpoint answer read (a token response is a few hundred bytes).
pub const MAX_TOKEN_ANSWER: usize = 64 * 1024;

/// Lifetime assumed when the token endpoint gives no `expires_in` (SMART recommends 300 s).
pub const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(300);

/// `uplink.oauth2.scope` unless set: SMART v2 scopes for what the uploader creates.
pub const DEFAULT_SCOPE: &str = "system/Observation.c system/Device.c";

/// Whether `url` may be a token endpoint: https (http only with `allow_insecure_http`), a host,
/// no fragment. The reason, for the configuration error or the discovery problem, otherwise.
///
/// # Errors
///
/// Why not, in one sentence.
pub fn check_endpoint(url: &url::Url, allow_insecure_http: bool) -> Result<(), String> {
    match url.scheme() {
        "https" => {}
        "http" if allow_insecure_http => {}
        "http" => return Err("plaintext http:// is refused (the client assertion and the token would travel in clear); use https:// (or set uplink.allow_insecure_http = true for a lab setup)".into()),
        other => return Err(format!("expected an https:// URL, found scheme \"{other}\"")),
    }
    if url.host_str().is_none() || url.fragment().is_some() || url.cannot_be_a_base() {
        return Err("expected a URL with a host and no fragment".into());
    }
    Ok(())
}

/// `[base]/.well-known/smart-configuration` (SMART App Launch 2.x §2.1: relative to the FHIR
/// base URL, whether or not it ends with `/`).
pub fn smart_configuration_url(fhir_base: &url::Url) -> url::Url {
    let mut url = fhir_base.clone();
    url.set_query(None);
    url.set_fragment(None);
    let path = format!(
        "{}/.well-known/smart-configuration",
        fhir_base.path().trim_end_matches('/')
    );
    url.set_path(&path);
    url
}

/// What the SMART configuration says of the token endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Discovered {
    pub token_endpoint: url::Url,
    /// Lists the server publishes that do not name what the gateway uses (`private_key_jwt`,
    /// `client_credentials`, the assertion's algorithm): worth a warning, not a refusal (the
    /// token endpoint has the last word).
    pub doubts: Vec<String>,
}

/// Reads the FHIR server's answer to `GET [base]/.well-known/smart-configuration`.
///
/// # Errors
///
/// [`TokenProblem::Unavailable`] for 408, 429 and 5xx (retried);
/// [`TokenProblem::NotDiscovered`] for any other non-200, a body that is not a JSON object, or
/// a `token_endpoint` that is missing, not a URL, or not acceptable ([`check_endpoint`]).
pub fn parse_smart_configuration(
    status: u16,
    body: &[u8],
    algorithm: JwsAlgorithm,
    allow_insecure_http: bool,
) -> Result<Discovered, TokenProblem> {
    if status == 408 || status == 429 || (500..600).contains(&status) {
        return Err(TokenProblem::Unavailable { status });
    }
    if status != 200 {
        return Err(TokenProblem::NotDiscovered(format!(
            "HTTP {status} (the server publishes no SMART configuration)"
        )));
    }
    let doc: serde_json::Value = serde_json::from_slice(body)
        .map_err(|_| TokenProblem::NotDiscovered("the answer is not JSON".into()))?;
    let Some(doc) = doc.as_object() else {
        return Err(TokenProblem::NotDiscovered(
            "the answer is not a JSON object".into(),
        ));
    };
    let endpoint = doc
        .get("token_endpoint")
        .and_then(serde_json::Value::as_str)
        .ok_or_else(|| TokenProblem::NotDiscovered("it has no token_endpoint".into()))?;
    let token_endpoint = url::Url::parse(endpoint).map_err(|_| {
        TokenProblem::NotDiscovered("its token_endpoint is not an absolute URL".into())
    })?;
    check_endpoint(&token_endpoint, allow_insecure_http)
        .map_err(|why| TokenProblem::NotDiscovered(format!("its token_endpoint: {why}")))?;
    let mut doubts = Vec::new();
    let mut lists = |key: &str, want: &str| {
        if let Some(list) = doc.get(key).and_then(serde_json::Value::as_array) {
            if !list.iter().any(|v| v.as_str() == Some(want)) {
                doubts.push(format!("{key} does not list {want}"));
            }
        }
    };
    lists("token_endpoint_auth_methods_supported", "private_key_jwt");
    lists("grant_types_supported", "client_credentials");
    lists(
        "token_endpoint_auth_signing_alg_values_supported",
        algorithm.name(),
    );
    Ok(Discovered {
        token_endpoint,
        doubts,
    })
}

/// The JWS algorithm of the client assertion (`uplink.oauth2.algorithm`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JwsAlgorithm {
    /// ECDSA P-384 with SHA-384, the fixed-length (r || s) signature JWS requires.
    Es384,
    /// RSASSA-PKCS1-v1_5 with SHA-384.
    Rs384,
}

impl JwsAlgorithm {
    /// `ES384` or `RS384`, as in the JWS header.
    pub fn name(self) -> &'static str {
        match self {
            JwsAlgorithm::Es384 => "ES384",
            JwsAlgorithm::Rs384 => "RS384",
        }
    }

    /// From the config value (exact, upper case as JWS spells it).
    pub fn parse(s: &str) -> Option<JwsAlgorithm> {
        match s {
            "ES384" => Some(JwsAlgorithm::Es384),
            "RS384" => Some(JwsAlgorithm::Rs384),
            _ => None,
        }
    }
}

/// The longest `.well-known/smart-configuration` read (real ones are 1 to 4 KiB).
pub const MAX_SMART_CONFIGURATION: usize = 64 * 1024;

/// `[uplink.oauth2]`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OAuth2Config {
    /// The token endpoint (https, or http with `uplink.allow_insecure_http`); `None`: discovered
    /// from [`OAuth2Config::discovery_url`].
    pub token_url: Option<url::Url>,
    /// `[uplink.fhir_base]/.well-known/smart-configuration`.
    pub discovery_url: url::Url,
    /// `uplink.allow_insecure_http`: a discovered `http://` endpoint is refused without it.
    pub allow_insecure_http: bool,
    pub client_id: String,
    /// PEM private key (PKCS#8; an RSA key may also be PKCS#1), mode 0600.
    pub key_file: std::path::PathBuf,
    pub algorithm: JwsAlgorithm,
    /// The JWT header's `kid`, when the server's registration names keys.
    pub key_id: Option<String>,
    pub scope: String,
}

/// The key that signs client assertions.
pub enum AssertionKey {
    Es384(EcdsaKeyPair),
    Rs384(RsaKeyPair),
}

impl std::fmt::Debug for AssertionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AssertionKey::Es384(_) => "AssertionKey::Es384(..)",
            AssertionKey::Rs384(_) => "AssertionKey::Rs384(..)",
        })
    }
}

/// The OAuth key cannot be used (start-up, reload, `check-uplink`).
#[derive(Debug, thiserror::Error)]
pub enum OAuthSetupError {
    #[error("uplink.oauth2.key_file: {0}")]
    Key(#[from] crate::tls::TlsSetupError),
    #[error("uplink.oauth2.key_file {path}: not a {alg} private key ({reason})")]
    WrongKey {
        path: std::path::PathBuf,
        alg: &'static str,
        reason: String,
    },
}

impl AssertionKey {
    /// Reads the PEM key at `path` (refused when group or others may read it, like the client
    /// key) for `alg`.
    ///
    /// # Errors
    ///
    /// [`OAuthSetupError`] naming the file.
    pub fn load(path: &Path, alg: JwsAlgorithm) -> Result<AssertionKey, OAuthSetupError> {
        use rustls::pki_types::PrivateKeyDer;
        let key = crate::tls::load_key(path)?;
        let wrong = |reason: String| OAuthSetupError::WrongKey {
            path: path.to_path_buf(),
            alg: alg.name(),
            reason,
        };
        match (alg, &key) {
            (_, PrivateKeyDer::Pkcs8(der)) => {
                AssertionKey::from_pkcs8(alg, der.secret_pkcs8_der()).map_err(wrong)
            }
            (JwsAlgorithm::Rs384, PrivateKeyDer::Pkcs1(der)) => {
                RsaKeyPair::from_der(der.secret_pkcs1_der())
                    .map(AssertionKey::Rs384)
                    .map_err(|e| wrong(e.to_string()))
            }
            _ => Err(wrong(
                "expected a PKCS#8 PEM key (BEGIN PRIVATE KEY); convert it with `openssl pkcs8 -topk8 -nocrypt`".into(),
            )),
        }
    }

    /// From PKCS#8 DER.
    ///
    /// # Errors
    ///
    /// Why ring refused the key (wrong type or curve, too short an RSA key...).
    pub fn from_pkcs8(alg: JwsAlgorithm, der: &[u8]) -> Result<AssertionKey, String> {
        match alg {
            JwsAlgorithm::Es384 => EcdsaKeyPair::from_pkcs8(
                &signature::ECDSA_P384_SHA384_FIXED_SIGNING,
                der,
                &ring::rand::SystemRandom::new(),
            )
            .map(AssertionKey::Es384)
            .map_err(|e| e.to_string()),
            JwsAlgorithm::Rs384 => RsaKeyPair::from_pkcs8(der)
                .map(AssertionKey::Rs384)
                .map_err(|e| e.to_string()),
        }
    }

    pub fn algorithm(&self) -> JwsAlgorithm {
        match self {
            AssertionKey::Es384(_) => JwsAlgorithm::Es384,
            AssertionKey::Rs384(_) => JwsAlgorithm::Rs384,
        }
    }

    /// The public key as ring verifies it (an uncompressed P-384 point, or a DER RSAPublicKey).
    pub fn public_key(&self) -> Vec<u8> {
        match self {
            AssertionKey::Es384(k) => k.public_key().as_ref().to_vec(),
            AssertionKey::Rs384(k) => k.public_key().as_ref().to_vec(),
        }
    }

    fn sign(&self, rng: &dyn SecureRandom, message: &[u8]) -> Result<Vec<u8>, TokenProblem> {
        match self {
            AssertionKey::Es384(k) => k
                .sign(rng, message)
                .map(|s| s.as_ref().to_vec())
                .map_err(|_| TokenProblem::Signing),
            AssertionKey::Rs384(k) => {
                let mut sig = vec![0; k.public().modulus_len()];
                k.sign(&signature::RSA_PKCS1_SHA384, rng, message, &mut sig)
                    .map_err(|_| TokenProblem::Signing)?;
                Ok(sig)
            }
        }
    }
}

fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A fresh `jti`: 128 random bits, hex.
///
/// # Errors
///
/// [`TokenProblem::Signing`] if the system's random source fails.
pub fn new_jti(rng: &dyn SecureRandom) -> Result<String, TokenProblem> {
    let mut bytes = [0u8; 16];
    rng.fill(&mut bytes).map_err(|_| TokenProblem::Signing)?;
    Ok(hex::encode(bytes))
}

/// The signed client assertion (a compact JWS) of SMART Backend Services, at `now_unix`
/// (seconds since the epoch).
///
/// # Errors
///
/// [`TokenProblem::Signing`] if ring cannot sign (its random source failed).
pub fn client_assertion(
    key: &AssertionKey,
    key_id: Option<&str>,
    client_id: &str,
    token_url: &str,
    now_unix: i64,
    jti: &str,
    rng: &dyn SecureRandom,
) -> Result<String, TokenProblem> {
    let mut header = serde_json::json!({"alg": key.algorithm().name(), "typ": "JWT"});
    if let Some(kid) = key_id {
        header["kid"] = kid.into();
    }
    let exp = now_unix.saturating_add(ASSERTION_LIFETIME.as_secs() as i64);
    let claims = serde_json::json!({
        "iss": client_id,
        "sub": client_id,
        "aud": token_url,
        "exp": exp,
        "iat": now_unix,
        "jti": jti,
    });
    let signing_input = format!(
        "{}.{}",
        b64url(header.to_string().as_bytes()),
        b64url(claims.to_string().as_bytes())
    );
    let sig = key.sign(rng, signing_input.as_bytes())?;
    Ok(format!("{signing_input}.{}", b64url(&sig)))
}

/// The form body of the client credentials request (`application/x-www-form-urlencoded`).
pub fn token_request_body(scope: &str, assertion: &str) -> String {
    url::form_urlencoded::Serializer::new(String::new())
        .append_pair("grant_type", "client_credentials")
        .append_pair("scope", scope)
        .append_pair(
            "client_assertion_type",
            "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        )
        .append_pair("client_assertion", assertion)
        .finish()
}

/// An access token as the endpoint granted it. `Debug` hides the token.
#[derive(Clone, PartialEq, Eq)]
pub struct TokenGrant {
    pub access_token: String,
    pub lifetime: Duration,
}

impl std::fmt::Debug for TokenGrant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenGrant")
            .field("access_token", &"<redacted>")
            .field("lifetime", &self.lifetime)
            .finish()
    }
}

/// Why no token was obtained. No secrets: statuses, OAuth error codes, short reasons.
#[derive(Debug, thiserror::Error)]
pub enum TokenProblem {
    /// The endpoint refused the request (400/401 with an OAuth error such as `invalid_client`,
    /// or another 4xx): the credentials or the registration are wrong. Pauses uploads.
    #[error("the OAuth token endpoint refused the gateway's credentials (HTTP {status}{})", if error.is_empty() { String::new() } else { format!(", {error}") })]
    Refused { status: u16, error: String },
    /// 408, 429 or 5xx: the endpoint is temporarily unavailable. Retried.
    #[error("the OAuth token endpoint is unavailable (HTTP {status})")]
    Unavailable { status: u16 },
    /// A 200 that is not a usable bearer token response. Pauses uploads.
    #[error("the OAuth token endpoint's answer is not a usable bearer token: {0}")]
    BadAnswer(String),
    /// No answer from the token endpoint (DNS, TLS, timeout...). Retried.
    #[error("the OAuth token endpoint could not be reached: {0}")]
    Unreachable(Box<SendError>),
    /// ring could not sign the assertion (its random source failed). Retried.
    #[error("the client assertion could not be signed")]
    Signing,
    /// No `uplink.oauth2.token_url`, and the FHIR server's `.well-known/smart-configuration`
    /// names no usable token endpoint. Pauses uploads.
    #[error("no OAuth token endpoint: the FHIR server's .well-known/smart-configuration gives none: {0}")]
    NotDiscovered(String),
}

impl TokenProblem {
    /// Whether this pauses uploads (a technician must act) rather than being retried.
    pub fn pauses_uploads(&self) -> bool {
        matches!(
            self,
            TokenProblem::Refused { .. }
                | TokenProblem::BadAnswer(_)
                | TokenProblem::NotDiscovered(_)
        )
    }

    pub fn class(&self) -> &'static str {
        match self {
            TokenProblem::Refused { .. } => "token_refused",
            TokenProblem::Unavailable { .. } => "token_unavailable",
            TokenProblem::BadAnswer(_) => "token_bad_answer",
            TokenProblem::Unreachable(_) => "token_unreachable",
            TokenProblem::Signing => "token_signing",
            TokenProblem::NotDiscovered(_) => "token_not_discovered",
        }
    }

    pub fn hint(&self) -> &'static str {
        match self {
            TokenProblem::Refused { .. } => {
                "check uplink.oauth2.token_url, client_id, key_file, algorithm and key_id against the gateway's registration on the authorization server (it must hold this key's public key), uplink.oauth2.scope, and the gateway's clock (NTP): the assertion is valid for 4 minutes"
            }
            TokenProblem::Unavailable { .. } => {
                "the authorization server is overloaded or down: it is retried; check with its operators if it lasts"
            }
            TokenProblem::BadAnswer(_) => {
                "check that uplink.oauth2.token_url is the server's token endpoint (SMART configuration's token_endpoint)"
            }
            TokenProblem::Unreachable(_) => {
                "check the host and port in uplink.oauth2.token_url and the network path to the authorization server (DNS, firewall); TLS to it uses uplink.ca_file and the client certificate too; it is retried"
            }
            TokenProblem::Signing => "the system's random source failed: check the gateway",
            TokenProblem::NotDiscovered(_) => {
                "set uplink.oauth2.token_url to the authorization server's token endpoint, or check that uplink.fhir_base is the FHIR server's base URL (its .well-known/smart-configuration names the token endpoint)"
            }
        }
    }
}

/// Reads the token endpoint's answer (`status`, `body`).
///
/// # Errors
///
/// A [`TokenProblem`] when it grants no usable bearer token.
pub fn parse_token_response(status: u16, body: &[u8]) -> Result<TokenGrant, TokenProblem> {
    let json: Option<serde_json::Value> = serde_json::from_slice(body).ok();
    match status {
        200 => {}
        408 | 429 | 500..=599 => return Err(TokenProblem::Unavailable { status }),
        _ => {
            let error = json
                .as_ref()
                .and_then(|j| j["error"].as_str())
                .map(|e| e.chars().take(64).collect())
                .unwrap_or_default();
            return Err(TokenProblem::Refused { status, error });
        }
    }
    let json = json.ok_or_else(|| TokenProblem::BadAnswer("not JSON".into()))?;
    let token = json["access_token"]
        .as_str()
        .ok_or_else(|| TokenProblem::BadAnswer("no access_token".into()))?;
    // RFC 6750 b64token: it goes into an HTTP header as is.
    let header_safe = !token.is_empty()
        && token.len() <= 8192
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~+/=".contains(&b));
    if !header_safe {
        return Err(TokenProblem::BadAnswer(
            "access_token is not a bearer token (RFC 6750 characters)".into(),
        ));
    }
    match json["token_type"].as_str() {
        Some(t) if t.eq_ignore_ascii_case("bearer") => {}
        Some(_) => return Err(TokenProblem::BadAnswer("token_type is not bearer".into())),
        None => return Err(TokenProblem::BadAnswer("no token_type".into())),
    }
    let lifetime = match &json["expires_in"] {
        serde_json::Value::Null => DEFAULT_TOKEN_LIFETIME,
        v => match v
            .as_u64()
            .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
        {
            Some(secs) if secs > 0 => Duration::from_secs(secs.min(86_400)),
            _ => {
                return Err(TokenProblem::BadAnswer(
                    "expires_in is not a positive number of seconds".into(),
                ))
            }
        },
    };
    Ok(TokenGrant {
        access_token: token.to_owned(),
        lifetime,
    })
}

/// How long before it expires a token is replaced: 10 % of its lifetime, at most 60 s.
pub fn refresh_margin(lifetime: Duration) -> Duration {
    (lifetime / 10).min(Duration::from_secs(60))
}

/// A token in the cache: usable until `refresh_at`.
#[derive(Clone)]
pub struct CachedToken {
    access_token: String,
    refresh_at: Instant,
}

impl CachedToken {
    /// `grant`, requested at `requested_at` (its lifetime counts from the request, not the
    /// answer: the conservative end).
    pub fn new(grant: TokenGrant, requested_at: Instant) -> CachedToken {
        let keep = grant
            .lifetime
            .saturating_sub(refresh_margin(grant.lifetime));
        CachedToken {
            access_token: grant.access_token,
            refresh_at: requested_at + keep,
        }
    }

    /// The token, if it may still be used at `now`.
    pub fn usable_at(&self, now: Instant) -> Option<&str> {
        (now < self.refresh_at).then_some(self.access_token.as_str())
    }
}

/// Where the uplink gets its access tokens: the configuration, the signing key and the cache.
pub struct TokenSource {
    cfg: OAuth2Config,
    /// The endpoint read from the SMART configuration (without `token_url`), until it fails.
    discovered: Mutex<Option<url::Url>>,
    key: Mutex<LoadedKey>,
    rng: ring::rand::SystemRandom,
    cached: Mutex<Option<CachedToken>>,
}

/// The signing key in use and the stamp of the file it was last looked at in.
struct LoadedKey {
    stamp: Option<FileStamp>,
    key: std::sync::Arc<AssertionKey>,
}

impl std::fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSource")
            .field(
                "token_url",
                &self.cfg.token_url.as_ref().map(url::Url::as_str),
            )
            .field("client_id", &self.cfg.client_id)
            .finish_non_exhaustive()
    }
}

impl TokenSource {
    /// Loads the key of `cfg`.
    ///
    /// # Errors
    ///
    /// [`OAuthSetupError`] naming the key file.
    pub fn new(cfg: &OAuth2Config) -> Result<TokenSource, OAuthSetupError> {
        let stamp = FileStamp::of(&cfg.key_file);
        let key = AssertionKey::load(&cfg.key_file, cfg.algorithm)?;
        Ok(TokenSource {
            cfg: cfg.clone(),
            discovered: Mutex::new(None),
            key: Mutex::new(LoadedKey {
                stamp,
                key: std::sync::Arc::new(key),
            }),
            rng: ring::rand::SystemRandom::new(),
            cached: Mutex::new(None),
        })
    }

    /// The token endpoint as known now: the configured one, or the one discovered so far.
    pub fn known_endpoint(&self) -> Option<url::Url> {
        self.cfg.token_url.clone().or_else(|| {
            self.discovered
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone()
        })
    }

    /// No `token_url`: the endpoint comes from the SMART configuration.
    pub fn discovers(&self) -> bool {
        self.cfg.token_url.is_none()
    }

    /// Where a failure to get a token is to be looked for: the endpoint, or the SMART
    /// configuration when no endpoint is known yet.
    pub fn endpoint_or_discovery(&self) -> url::Url {
        self.known_endpoint()
            .unwrap_or_else(|| self.cfg.discovery_url.clone())
    }

    /// The token endpoint: `token_url`, or the one the FHIR server's SMART configuration names
    /// (read now when none is known).
    ///
    /// # Errors
    ///
    /// A [`TokenProblem`] from the discovery.
    pub async fn endpoint(
        &self,
        http: &reqwest::Client,
        timeout: Duration,
    ) -> Result<url::Url, TokenProblem> {
        if let Some(url) = self.known_endpoint() {
            return Ok(url);
        }
        let found = self.discover(http, timeout).await?;
        UplinkTokenEndpointDiscovered {
            endpoint: &found.token_endpoint,
            doubts: &found.doubts,
        }
        .emit();
        *self
            .discovered
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(found.token_endpoint.clone());
        Ok(found.token_endpoint)
    }

    /// `GET [base]/.well-known/smart-configuration` through the uplink's client (mutual TLS,
    /// no redirects, the body capped at [`MAX_SMART_CONFIGURATION`]).
    async fn discover(
        &self,
        http: &reqwest::Client,
        timeout: Duration,
    ) -> Result<Discovered, TokenProblem> {
        let url = &self.cfg.discovery_url;
        let unreachable = |e: SendError| TokenProblem::Unreachable(Box::new(e));
        let classify = |e: reqwest::Error| unreachable(classify_reqwest_error(&e, url, timeout));
        let resp = http
            .get(url.clone())
            .header("Accept", "application/json")
            .send()
            .await
            .map_err(classify)?;
        let status = resp.status().as_u16();
        if resp.status().is_redirection() {
            return Err(TokenProblem::NotDiscovered(format!(
                "HTTP {status} redirect (not followed)"
            )));
        }
        let body = read_capped(resp, MAX_SMART_CONFIGURATION, classify)
            .await?
            .ok_or_else(|| TokenProblem::NotDiscovered("the answer is too large".into()))?;
        parse_smart_configuration(
            status,
            &body,
            self.cfg.algorithm,
            self.cfg.allow_insecure_http,
        )
    }

    /// The key that signs the next assertion. Key rotation without a restart, as for the
    /// client certificate: when `key_file` changed since it was last looked at (size, times,
    /// inode: one `stat` per token request), the new key is loaded and used from now on; a file
    /// that does not load (half-written, wrong type, readable by others) keeps the key in use,
    /// is logged once and counted, and is tried again when it changes again. A cached token
    /// stays valid: the new key signs the next request.
    pub fn current_key(&self) -> std::sync::Arc<AssertionKey> {
        let now = FileStamp::of(&self.cfg.key_file);
        let mut loaded = self.key.lock().unwrap_or_else(PoisonError::into_inner);
        if loaded.stamp != now {
            loaded.stamp = now;
            match AssertionKey::load(&self.cfg.key_file, self.cfg.algorithm) {
                Ok(key) => {
                    loaded.key = std::sync::Arc::new(key);
                    UplinkOAuthKeyInUse {
                        path: &self.cfg.key_file,
                    }
                    .emit();
                }
                Err(error) => UplinkOAuthKeyReloadFailed { error: &error }.emit(),
            }
        }
        std::sync::Arc::clone(&loaded.key)
    }

    /// Forgets the cached token (the FHIR server answered 401 to it).
    pub fn invalidate(&self) {
        *self.cached.lock().unwrap_or_else(PoisonError::into_inner) = None;
    }

    /// The cached token if still usable, else a new one from the endpoint.
    ///
    /// # Errors
    ///
    /// [`SendError::Token`].
    pub async fn token(
        &self,
        http: &reqwest::Client,
        timeout: Duration,
    ) -> Result<String, SendError> {
        let now = Instant::now();
        if let Some(t) = self
            .cached
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .and_then(|c| c.usable_at(now))
        {
            return Ok(t.to_owned());
        }
        let grant = match self.fetch(http, timeout).await {
            Ok(g) => g,
            Err(problem) => {
                UplinkTokenRefused { problem: &problem }.emit();
                return Err(SendError::Token(problem));
            }
        };
        UplinkTokenFetched {
            lifetime_secs: grant.lifetime.as_secs(),
        }
        .emit();
        let cached = CachedToken::new(grant, now);
        let token = cached.access_token.clone();
        *self.cached.lock().unwrap_or_else(PoisonError::into_inner) = Some(cached);
        Ok(token)
    }

    /// One token request (no cache). Without `token_url`, a failure other than a busy
    /// endpoint forgets the discovered endpoint: the next request reads the SMART
    /// configuration again (the server may have moved it).
    ///
    /// # Errors
    ///
    /// A [`TokenProblem`].
    pub async fn fetch(
        &self,
        http: &reqwest::Client,
        timeout: Duration,
    ) -> Result<TokenGrant, TokenProblem> {
        let url = self.endpoint(http, timeout).await?;
        let result = self.fetch_from(http, timeout, &url).await;
        if self.cfg.token_url.is_none()
            && matches!(
                result,
                Err(TokenProblem::Refused { .. }
                    | TokenProblem::BadAnswer(_)
                    | TokenProblem::Unreachable(_))
            )
        {
            *self
                .discovered
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = None;
        }
        result
    }

    async fn fetch_from(
        &self,
        http: &reqwest::Client,
        timeout: Duration,
        url: &url::Url,
    ) -> Result<TokenGrant, TokenProblem> {
        // The edge: the assertion's `iat`/`exp` are wall-clock times.
        #[allow(clippy::disallowed_methods)]
        let now = chrono::Utc::now().timestamp();
        let jti = new_jti(&self.rng)?;
        let assertion = client_assertion(
            &self.current_key(),
            self.cfg.key_id.as_deref(),
            &self.cfg.client_id,
            url.as_str(),
            now,
            &jti,
            &self.rng,
        )?;
        let unreachable = |e: SendError| TokenProblem::Unreachable(Box::new(e));
        let classify = |e: reqwest::Error| unreachable(classify_reqwest_error(&e, url, timeout));
        let resp = http
            .post(url.clone())
            .header("Content-Type", "application/x-www-form-urlencoded")
            .header("Accept", "application/json")
            .body(token_request_body(&self.cfg.scope, &assertion))
            .send()
            .await
            .map_err(classify)?;
        let status = resp.status().as_u16();
        if resp.status().is_redirection() {
            // Never followed (the assertion must not go elsewhere): a wrong token_url.
            return Err(TokenProblem::BadAnswer(format!(
                "HTTP {status} redirect (not followed)"
            )));
        }
        let body = read_capped(resp, MAX_TOKEN_ANSWER, classify)
            .await?
            .ok_or_else(|| TokenProblem::BadAnswer("answer too large".into()))?;
        parse_token_response(status, &body)
    }
}

/// The body of `resp`, or `None` past `cap` bytes (announced or read).
async fn read_capped(
    mut resp: reqwest::Response,
    cap: usize,
    classify: impl Fn(reqwest::Error) -> TokenProblem,
) -> Result<Option<Vec<u8>>, TokenProblem> {
    if resp.content_length().is_some_and(|n| n > cap as u64) {
        return Ok(None);
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(&classify)? {
        if body.len() + chunk.len() > cap {
            return Ok(None);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Some(body))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn es384() -> AssertionKey {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P384_SHA384_FIXED_SIGNING, &rng)
            .unwrap();
        AssertionKey::from_pkcs8(JwsAlgorithm::Es384, pkcs8.as_ref()).unwrap()
    }

    fn rs384() -> AssertionKey {
        let pem = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/data/oauth/rsa-test-key.pem"
        ))
        .unwrap();
        let key = rustls_pemfile::private_key(&mut pem.as_slice())
            .unwrap()
            .unwrap();
        let rustls::pki_types::PrivateKeyDer::Pkcs8(der) = key else {
            panic!("PKCS#8 expected")
        };
        AssertionKey::from_pkcs8(JwsAlgorithm::Rs384, der.secret_pkcs8_der()).unwrap()
    }

    fn decode(part: &str) -> Vec<u8> {
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(part)
            .unwrap()
    }

    /// Splits a compact JWS, checks its signature with ring's verification and returns the
    /// header and the claims.
    fn verify(jwt: &str, key: &AssertionKey) -> (Value, Value) {
        let parts: Vec<&str> = jwt.split('.').collect();
        assert_eq!(parts.len(), 3, "{jwt}");
        assert!(!jwt.contains('='), "no padding");
        let alg: &dyn signature::VerificationAlgorithm = match key.algorithm() {
            JwsAlgorithm::Es384 => &signature::ECDSA_P384_SHA384_FIXED,
            JwsAlgorithm::Rs384 => &signature::RSA_PKCS1_2048_8192_SHA384,
        };
        let message = format!("{}.{}", parts[0], parts[1]);
        signature::UnparsedPublicKey::new(alg, key.public_key())
            .verify(message.as_bytes(), &decode(parts[2]))
            .expect("the signature verifies with the public key");
        (
            serde_json::from_slice(&decode(parts[0])).unwrap(),
            serde_json::from_slice(&decode(parts[1])).unwrap(),
        )
    }

    #[test]
    fn es384_and_rs384_assertions_verify_and_carry_the_smart_claims() {
        let rng = ring::rand::SystemRandom::new();
        for (key, kid) in [(es384(), Some("gw-key-1")), (rs384(), None)] {
            let url = "https://auth.example/token";
            let jwt = client_assertion(&key, kid, "gw-7", url, 1_700_000_000, "j-1", &rng).unwrap();
            let (header, claims) = verify(&jwt, &key);
            assert_eq!(header["alg"], key.algorithm().name());
            assert_eq!(header["typ"], "JWT");
            match kid {
                Some(k) => assert_eq!(header["kid"], k),
                None => assert!(header.get("kid").is_none()),
            }
            assert_eq!(claims["iss"], "gw-7");
            assert_eq!(claims["sub"], "gw-7");
            assert_eq!(claims["aud"], url);
            assert_eq!(claims["jti"], "j-1");
            assert_eq!(claims["iat"].as_i64(), Some(1_700_000_000));
            let exp = claims["exp"].as_i64().unwrap();
            assert!(exp > 1_700_000_000 && exp <= 1_700_000_300, "{exp}");
        }
        // ES384 signatures are the fixed 96-byte r||s, not DER.
        let key = es384();
        let jwt = client_assertion(&key, None, "c", "https://a/t", 0, "j", &rng).unwrap();
        assert_eq!(decode(jwt.rsplit('.').next().unwrap()).len(), 96);
        // A tampered claim no longer verifies.
        let mut parts: Vec<String> = jwt.split('.').map(str::to_owned).collect();
        parts[1] = b64url(br#"{"iss":"other"}"#);
        let message = format!("{}.{}", parts[0], parts[1]);
        assert!(signature::UnparsedPublicKey::new(
            &signature::ECDSA_P384_SHA384_FIXED,
            key.public_key()
        )
        .verify(message.as_bytes(), &decode(&parts[2]))
        .is_err());
    }

    #[test]
    fn jtis_are_random_and_unique() {
        let rng = ring::rand::SystemRandom::new();
        let ids: std::collections::HashSet<String> =
            (0..1000).map(|_| new_jti(&rng).unwrap()).collect();
        assert_eq!(ids.len(), 1000);
        assert!(ids.iter().all(|j| j.len() == 32));
    }

    #[test]
    fn the_request_body_is_the_client_credentials_form() {
        let body = token_request_body("system/Observation.c system/Device.c", "a.b.c");
        let pairs: Vec<(String, String)> = url::form_urlencoded::parse(body.as_bytes())
            .into_owned()
            .collect();
        assert_eq!(
            pairs,
            [
                ("grant_type", "client_credentials"),
                ("scope", "system/Observation.c system/Device.c"),
                (
                    "client_assertion_type",
                    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
                ),
                ("client_assertion", "a.b.c"),
            ]
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
        );
    }

    #[test]
    fn the_smart_configuration_is_found_below_the_fhir_base_with_or_without_a_slash() {
        for (base, want) in [
            (
                "https://fhir.example/r4",
                "https://fhir.example/r4/.well-known/smart-configuration",
            ),
            (
                "https://fhir.example/r4/",
                "https://fhir.example/r4/.well-known/smart-configuration",
            ),
            (
                "https://fhir.example",
                "https://fhir.example/.well-known/smart-configuration",
            ),
            (
                "https://fhir.example:8443/a/b/",
                "https://fhir.example:8443/a/b/.well-known/smart-configuration",
            ),
        ] {
            let base: url::Url = base.parse().unwrap();
            assert_eq!(smart_configuration_url(&base).as_str(), want);
        }
    }

    #[test]
    fn a_smart_configuration_gives_its_token_endpoint_or_a_typed_problem() {
        let es = JwsAlgorithm::Es384;
        let good = br#"{"token_endpoint":"https://auth.example/t","token_endpoint_auth_methods_supported":["private_key_jwt"],"token_endpoint_auth_signing_alg_values_supported":["ES384","RS384"],"grant_types_supported":["client_credentials"],"capabilities":["client-confidential-asymmetric"]}"#;
        let d = parse_smart_configuration(200, good, es, false).unwrap();
        assert_eq!(d.token_endpoint.as_str(), "https://auth.example/t");
        assert!(d.doubts.is_empty(), "{:?}", d.doubts);
        // Lists that leave out what the gateway uses: doubts, not a refusal.
        let odd = br#"{"token_endpoint":"https://auth.example/t","token_endpoint_auth_methods_supported":["client_secret_basic"],"token_endpoint_auth_signing_alg_values_supported":["RS384"],"grant_types_supported":["authorization_code"]}"#;
        let d = parse_smart_configuration(200, odd, es, false).unwrap();
        assert_eq!(d.doubts.len(), 3, "{:?}", d.doubts);
        assert!(d.doubts.iter().any(|x| x.contains("ES384")));
        assert!(
            parse_smart_configuration(200, odd, JwsAlgorithm::Rs384, false)
                .unwrap()
                .doubts
                .iter()
                .all(|x| !x.contains("RS384"))
        );
        // Lists absent: nothing to doubt.
        let bare = br#"{"token_endpoint":"https://auth.example/t"}"#;
        assert!(parse_smart_configuration(200, bare, es, false)
            .unwrap()
            .doubts
            .is_empty());

        let not_discovered =
            |status: u16, body: &[u8], insecure: bool| match parse_smart_configuration(
                status, body, es, insecure,
            ) {
                Err(p @ TokenProblem::NotDiscovered(_)) => {
                    assert!(p.pauses_uploads());
                    assert_eq!(p.class(), "token_not_discovered");
                    assert!(p.hint().contains("uplink.oauth2.token_url"));
                    p.to_string()
                }
                other => panic!("{status} {:?}: {other:?}", String::from_utf8_lossy(body)),
            };
        assert!(not_discovered(404, b"{}", false).contains("HTTP 404"));
        assert!(not_discovered(401, good, false).contains("HTTP 401"));
        assert!(not_discovered(200, b"<html>", false).contains("not JSON"));
        assert!(not_discovered(200, b"[1]", false).contains("not a JSON object"));
        assert!(not_discovered(200, b"{}", false).contains("no token_endpoint"));
        assert!(
            not_discovered(200, br#"{"token_endpoint":7}"#, false).contains("no token_endpoint")
        );
        assert!(not_discovered(200, br#"{"token_endpoint":"/token"}"#, false).contains("absolute"));
        let plain = br#"{"token_endpoint":"http://auth.example/t"}"#;
        assert!(not_discovered(200, plain, false).contains("plaintext"));
        assert!(parse_smart_configuration(200, plain, es, true).is_ok());
        assert!(
            not_discovered(200, br#"{"token_endpoint":"ftp://auth.example/t"}"#, false)
                .contains("ftp")
        );
        assert!(not_discovered(
            200,
            br#"{"token_endpoint":"https://auth.example/t#x"}"#,
            false
        )
        .contains("fragment"));
        // Deep JSON is refused by serde_json's recursion limit, not a stack overflow.
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert!(not_discovered(200, deep.as_bytes(), false).contains("not JSON"));
        // A busy server is retried, not paused.
        for status in [408, 429, 500, 503] {
            match parse_smart_configuration(status, good, es, false) {
                Err(p @ TokenProblem::Unavailable { .. }) => assert!(!p.pauses_uploads()),
                other => panic!("{status}: {other:?}"),
            }
        }
    }

    #[test]
    fn token_answers_are_parsed_strictly() {
        let ok = parse_token_response(
            200,
            br#"{"access_token":"abc-123","token_type":"Bearer","expires_in":300,"scope":"x"}"#,
        )
        .unwrap();
        assert_eq!(ok.access_token, "abc-123");
        assert_eq!(ok.lifetime, Duration::from_secs(300));
        assert!(!format!("{ok:?}").contains("abc-123"), "Debug hides it");
        let no_expiry =
            parse_token_response(200, br#"{"access_token":"t","token_type":"bearer"}"#).unwrap();
        assert_eq!(no_expiry.lifetime, DEFAULT_TOKEN_LIFETIME);

        let refused = parse_token_response(
            400,
            br#"{"error":"invalid_client","error_description":"bad sig"}"#,
        )
        .unwrap_err();
        assert!(
            matches!(&refused, TokenProblem::Refused { status: 400, error } if error == "invalid_client"),
            "{refused:?}"
        );
        assert!(refused.pauses_uploads());
        assert!(refused.to_string().contains("invalid_client"));
        let down = parse_token_response(503, b"").unwrap_err();
        assert!(matches!(down, TokenProblem::Unavailable { status: 503 }));
        assert!(!down.pauses_uploads());
        // No answer at all: retried like the FHIR server, never a pause.
        let unreachable = SendError::Token(TokenProblem::Unreachable(Box::new(SendError::Dns {
            host: "auth.example".into(),
        })));
        assert!(!unreachable.pauses_uploads());
        assert_eq!(unreachable.class(), "token_unreachable");
        assert!(unreachable.hint().contains("uplink.oauth2.token_url"));
        assert!(SendError::Token(refused).pauses_uploads());
        for bad in [
            &b"<html>"[..],
            br#"{"token_type":"bearer"}"#,
            br#"{"access_token":"t","token_type":"mac"}"#,
            br#"{"access_token":"t"}"#,
            br#"{"access_token":"a b\r\nX-Evil: 1","token_type":"bearer"}"#,
            br#"{"access_token":"t","token_type":"bearer","expires_in":0}"#,
            br#"{"access_token":"t","token_type":"bearer","expires_in":-5}"#,
        ] {
            let e = parse_token_response(200, bad).unwrap_err();
            assert!(matches!(e, TokenProblem::BadAnswer(_)), "{e:?}");
            assert!(e.pauses_uploads());
        }
    }

    #[test]
    fn a_token_is_replaced_ten_percent_or_at_most_a_minute_before_it_expires() {
        assert_eq!(
            refresh_margin(Duration::from_secs(300)),
            Duration::from_secs(30)
        );
        assert_eq!(
            refresh_margin(Duration::from_secs(3600)),
            Duration::from_secs(60)
        );
        assert_eq!(
            refresh_margin(Duration::from_secs(5)),
            Duration::from_millis(500)
        );
        let t0 = Instant::now();
        let grant = |secs| TokenGrant {
            access_token: "t".into(),
            lifetime: Duration::from_secs(secs),
        };
        let c = CachedToken::new(grant(300), t0);
        assert_eq!(c.usable_at(t0), Some("t"));
        assert_eq!(c.usable_at(t0 + Duration::from_secs(269)), Some("t"));
        assert_eq!(c.usable_at(t0 + Duration::from_secs(270)), None);
        let c = CachedToken::new(grant(3600), t0);
        assert!(c.usable_at(t0 + Duration::from_secs(3539)).is_some());
        assert!(c.usable_at(t0 + Duration::from_secs(3540)).is_none());
    }

    #[test]
    fn a_key_of_the_wrong_type_or_mode_is_refused_naming_the_file() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P384_SHA384_FIXED_SIGNING, &rng)
            .unwrap();
        let pem = format!(
            "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
            base64::engine::general_purpose::STANDARD.encode(pkcs8.as_ref())
        );
        let path = dir.path().join("oauth.key");
        std::fs::write(&path, pem).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = AssertionKey::load(&path, JwsAlgorithm::Es384).unwrap_err();
        assert!(e.to_string().contains("chmod 600"), "{e}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(AssertionKey::load(&path, JwsAlgorithm::Es384).is_ok());
        let e = AssertionKey::load(&path, JwsAlgorithm::Rs384).unwrap_err();
        assert!(e.to_string().contains("not a RS384 private key"), "{e}");
        assert!(e.to_string().contains("oauth.key"), "{e}");
    }

    /// A fresh ES384 key as a PKCS#8 PEM, and its public key.
    fn es384_pem() -> (String, Vec<u8>) {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P384_SHA384_FIXED_SIGNING, &rng)
            .unwrap();
        let public = AssertionKey::from_pkcs8(JwsAlgorithm::Es384, pkcs8.as_ref())
            .unwrap()
            .public_key();
        let b64 = base64::engine::general_purpose::STANDARD.encode(pkcs8.as_ref());
        let lines: Vec<&str> = b64
            .as_bytes()
            .chunks(64)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect();
        let pem = format!(
            "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
            lines.join("\n")
        );
        (pem, public)
    }

    /// Key rotation without a restart: a new key file signs the next assertion; a file that
    /// does not load (garbage, readable by others) keeps the key in use, is counted once per
    /// change, and the key file is tried again when it changes again.
    #[test]
    fn a_rotated_key_file_signs_the_next_assertion_and_a_broken_one_keeps_the_key() {
        use std::os::unix::fs::PermissionsExt as _;
        use std::sync::atomic::Ordering::Relaxed;
        let counters = &crate::telemetry::COUNTERS;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("oauth.pem");
        let put = |content: &str, mode: u32| {
            let tmp = dir.path().join("oauth.pem.tmp");
            std::fs::write(&tmp, content).unwrap();
            std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode)).unwrap();
            std::fs::rename(&tmp, &path).unwrap();
        };
        let (pem_a, pub_a) = es384_pem();
        let (pem_b, pub_b) = es384_pem();
        put(&pem_a, 0o600);
        let source = TokenSource::new(&OAuth2Config {
            token_url: Some("https://auth.example/token".parse().unwrap()),
            discovery_url: "https://fhir.example/.well-known/smart-configuration"
                .parse()
                .unwrap(),
            allow_insecure_http: false,
            client_id: "gw-1".into(),
            key_file: path.clone(),
            algorithm: JwsAlgorithm::Es384,
            key_id: None,
            scope: DEFAULT_SCOPE.into(),
        })
        .unwrap();
        let rotations = || counters.uplink_oauth_key_rotations.load(Relaxed);
        let failures = || counters.uplink_oauth_key_reload_failures.load(Relaxed);
        let (r0, f0) = (rotations(), failures());
        assert_eq!(source.current_key().public_key(), pub_a);
        assert_eq!(rotations(), r0, "nothing changed");

        put(&pem_b, 0o600);
        assert_eq!(source.current_key().public_key(), pub_b, "the new key");
        assert_eq!(rotations(), r0 + 1);

        put(
            "-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n",
            0o600,
        );
        assert_eq!(source.current_key().public_key(), pub_b, "garbage: kept");
        assert_eq!(source.current_key().public_key(), pub_b);
        assert_eq!(failures(), f0 + 1, "once per change");

        put(&pem_a, 0o644);
        assert_eq!(
            source.current_key().public_key(),
            pub_b,
            "readable by others: kept"
        );
        assert_eq!(failures(), f0 + 2);

        put(&pem_a, 0o600);
        assert_eq!(source.current_key().public_key(), pub_a, "fixed: in use");
        assert_eq!(rotations(), r0 + 2);
    }
}
