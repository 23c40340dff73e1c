//! The mTLS HTTP client: sends a Bundle, reports what came back. No decisions here.
//!
//! Built once at start-up; fails closed: a missing or empty CA file, a missing client key, or an
//! `http://` base without `allow_insecure_http` is an error before anything is sent. Trust comes
//! only from the configured CA (no system roots). Redirects are not followed (a redirect to
//! another host must not receive PHI) and proxy environment variables are ignored.

use std::path::PathBuf;
use std::time::Duration;

use super::outcome::MAX_BODY;
use crate::tls::{client_config, TlsSetupError};

#[derive(Debug, Clone)]
pub struct UplinkTls {
    pub fhir_base: url::Url,
    pub ca_file: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    pub allow_insecure_http: bool,
    pub timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum UplinkError {
    #[error("TLS setup: {0}")]
    Setup(#[from] TlsSetupError),
    #[error("fhir_base {0} is plaintext http:// and allow_insecure_http is not set")]
    Insecure(String),
    #[error("HTTP client setup: {0}")]
    Client(String),
    #[error("TLS handshake with the FHIR server failed: {0}")]
    Tls(String),
    #[error("cannot connect to the FHIR server: {0}")]
    Connect(String),
    #[error("FHIR server timed out")]
    Timeout,
    #[error("reading the FHIR server's response failed: {0}")]
    Body(String),
    #[error("request failed: {0}")]
    Request(String),
}

impl UplinkError {
    /// A TLS failure (unknown CA, bad certificate): logged loudly by the caller.
    pub fn is_tls(&self) -> bool {
        matches!(self, UplinkError::Tls(_))
    }
}

/// What the server answered.
#[derive(Debug, Clone)]
pub struct RawResponse {
    pub status: u16,
    pub retry_after: Option<String>,
    pub body: Vec<u8>,
}

pub struct UplinkClient {
    http: reqwest::Client,
    base: url::Url,
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

impl UplinkClient {
    pub fn new(cfg: &UplinkTls) -> Result<Self, UplinkError> {
        if cfg.fhir_base.scheme() != "https" && !cfg.allow_insecure_http {
            return Err(UplinkError::Insecure(cfg.fhir_base.to_string()));
        }
        let mut tls = client_config(&cfg.ca_file, Some((&cfg.client_cert, &cfg.client_key)))?;
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .https_only(!cfg.allow_insecure_http)
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .timeout(cfg.timeout)
            .connect_timeout(cfg.timeout.min(Duration::from_secs(15)))
            .user_agent(concat!("vitalgate/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| UplinkError::Client(error_chain(&e)))?;
        Ok(Self {
            http,
            base: cfg.fhir_base.clone(),
        })
    }

    /// POSTs a transaction Bundle to `[base]`.
    pub async fn send_bundle(
        &self,
        bundle: &serde_json::Value,
    ) -> Result<RawResponse, UplinkError> {
        let body = serde_json::to_vec(bundle).map_err(|e| UplinkError::Request(e.to_string()))?;
        let resp = self
            .http
            .post(self.base.clone())
            .header("Content-Type", "application/fhir+json")
            .header("Accept", "application/fhir+json")
            .body(body)
            .send()
            .await
            .map_err(classify_send_error)?;
        let status = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let mut resp = resp;
        let mut body = Vec::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| UplinkError::Body(error_chain(&e)))?
        {
            if body.len() + chunk.len() > MAX_BODY {
                return Err(UplinkError::Body("response larger than 8 MiB".into()));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(RawResponse {
            status,
            retry_after,
            body,
        })
    }
}

fn classify_send_error(e: reqwest::Error) -> UplinkError {
    let chain = error_chain(&e);
    if e.is_timeout() {
        return UplinkError::Timeout;
    }
    // rustls errors surface inside the connect error chain.
    let lower = chain.to_ascii_lowercase();
    if lower.contains("certificate")
        || lower.contains("unknownissuer")
        || lower.contains("handshake")
        || lower.contains("tls")
        || lower.contains("alert")
    {
        return UplinkError::Tls(chain);
    }
    if e.is_connect() {
        return UplinkError::Connect(chain);
    }
    UplinkError::Request(chain)
}
