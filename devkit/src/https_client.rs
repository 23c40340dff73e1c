//! A deliberately tiny HTTPS/1.1 client for tests and smoke checks: one request per connection
//! (`Connection: close`), raw HTTP/1.1 over tokio-rustls, ring provider. It exists so the devkit
//! can exercise the test server without pulling in reqwest; the agent has its own real client.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use rustls::pki_types::ServerName;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::fhir_server::{load_certs, load_key};

/// How long one request may take, connect to last byte.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// A client TLS config trusting `ca` only, presenting `identity` (certificate, key) if given.
///
/// # Errors
///
/// Unreadable or invalid PEM files.
pub fn client_config(
    ca: &Path,
    identity: Option<(&Path, &Path)>,
) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in load_certs(ca)? {
        roots.add(cert)?;
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots);
    let config = match identity {
        Some((cert, key)) => builder.with_client_auth_cert(load_certs(cert)?, load_key(key)?)?,
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// A response: status, headers (names lower-cased) and body.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// The first header of that (case-insensitive) name.
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body parsed as JSON.
    ///
    /// # Errors
    ///
    /// The body is not JSON.
    pub fn json(&self) -> anyhow::Result<Value> {
        serde_json::from_slice(&self.body).context("response body is not JSON")
    }
}

/// Sends one request to `addr` (TLS server name `localhost`) and reads the whole response.
///
/// # Errors
///
/// Connect, TLS (e.g. the server refused the client certificate: with TLS 1.3 that shows up
/// when reading the response), timeout, or an unparsable response.
pub async fn request(
    config: Arc<rustls::ClientConfig>,
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> anyhow::Result<HttpResponse> {
    tokio::time::timeout(REQUEST_TIMEOUT, async {
        let tcp = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        let mut tls = TlsConnector::from(config)
            .connect(ServerName::try_from("localhost")?, tcp)
            .await
            .context("TLS handshake")?;
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: localhost:{}\r\nContent-Length: {}\r\nConnection: close\r\n",
            addr.port(),
            body.len()
        );
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        tls.write_all(head.as_bytes()).await.context("sending")?;
        tls.write_all(body).await.context("sending")?;
        tls.flush().await.context("sending")?;
        let mut raw = Vec::new();
        let read = tls.read_to_end(&mut raw).await;
        match (read, parse_response(&raw)) {
            (_, Ok(Some(response))) => Ok(response),
            (Err(error), _) => Err(anyhow::Error::new(error).context("reading the response")),
            (Ok(_), Ok(None)) => bail!("connection closed before a complete response"),
            (Ok(_), Err(error)) => Err(error),
        }
    })
    .await
    .context("request timed out")?
}

/// `POST` with `Content-Type: application/fhir+json`.
///
/// # Errors
///
/// As [`request`].
pub async fn post_fhir(
    config: Arc<rustls::ClientConfig>,
    addr: SocketAddr,
    path: &str,
    body: &[u8],
) -> anyhow::Result<HttpResponse> {
    request(
        config,
        addr,
        "POST",
        path,
        &[("Content-Type", "application/fhir+json")],
        body,
    )
    .await
}

/// Parses a complete HTTP/1.1 response; `Ok(None)` if `raw` is not complete yet.
fn parse_response(raw: &[u8]) -> anyhow::Result<Option<HttpResponse>> {
    let Some(head_end) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Ok(None);
    };
    let head = std::str::from_utf8(&raw[..head_end]).context("response head is not UTF-8")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("bad status line {status_line:?}"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let rest = &raw[head_end + 4..];
    let mut response = HttpResponse {
        status,
        headers,
        body: Vec::new(),
    };
    if response
        .header("transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
    {
        let Some(body) = dechunk(rest)? else {
            return Ok(None);
        };
        response.body = body;
    } else if let Some(len) = response.header("content-length") {
        let len: usize = len.parse().context("bad Content-Length")?;
        if rest.len() < len {
            return Ok(None);
        }
        response.body = rest[..len].to_vec();
    } else {
        response.body = rest.to_vec();
    }
    Ok(Some(response))
}

fn dechunk(mut data: &[u8]) -> anyhow::Result<Option<Vec<u8>>> {
    let mut body = Vec::new();
    loop {
        let Some(line_end) = data.windows(2).position(|w| w == b"\r\n") else {
            return Ok(None);
        };
        let size_text = std::str::from_utf8(&data[..line_end])?;
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .context("bad chunk size")?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Ok(Some(body));
        }
        if data.len() < size + 2 {
            return Ok(None);
        }
        body.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_content_length_and_chunked_responses() {
        let r = parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-A: b\r\n\r\n{}")
            .unwrap()
            .unwrap();
        assert_eq!(
            (r.status, r.body.as_slice(), r.header("x-a")),
            (200, &b"{}"[..], Some("b"))
        );
        let r = parse_response(b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n1\r\nc\r\n0\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(r.body, b"abc");
        assert!(
            parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n{}")
                .unwrap()
                .is_none()
        );
    }
}
