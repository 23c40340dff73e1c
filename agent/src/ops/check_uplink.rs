//! `vitalgate check-uplink`: connects to the FHIR server exactly as the daemon would, posts
//! nothing, and says whether uploads can work. A technician runs it after installing a gateway.
//!
//! | check | how |
//! |---|---|
//! | TLS | a handshake with the uplink's own rustls configuration ([`crate::uplink::client::tls_config`]: CA bundle, client certificate, ring provider, versions and cipher order): version, cipher suite, key-exchange group |
//! | server certificate N | each certificate the server presented: subject, issuer, `notAfter` ([`super::cert::summary_der`]) |
//! | client certificate | `notAfter` of `uplink.client_cert` ([`super::cert::not_after_pem_file`]) |
//! | metadata | `GET [base]/metadata` through the daemon's own HTTP client ([`UplinkClient::get_metadata`]: no redirects, body cap, JSON depth limit, timeouts) |
//! | FHIR version | the CapabilityStatement's `fhirVersion` is 4.0.x (R4) |
//! | transaction | a `rest` entry with mode `server` lists the `transaction` interaction |
//! | Observation, Device | the resources we send: interaction `create` and `conditionalCreate: true` (the uploader's idempotency rests on conditional create) |
//! | OAuth token | with `[uplink.oauth2]` only: a token request to `token_url` (or the endpoint the FHIR server's `.well-known/smart-configuration` names) with a fresh signed client assertion, through the uplink's own HTTP client ([`UplinkClient::check_token`]); the token is not used, nothing is posted to the FHIR server |
//!
//! A TLS refusal is a typed [`SendError`] ([`TlsProblem`] from the `rustls::Error`), printed with
//! its fix. The report uses `doctor`'s ✓/✗ lines; exit 0 only when nothing is ✗. `doctor`'s
//! uplink line is [`summary`] of the same checks.

use std::io::ErrorKind;
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use rustls::pki_types::ServerName;
use serde_json::Value;

use super::doctor::{Check, Mark};
use crate::config::Config;
use crate::uplink::client::{tls_config, SendError, TlsProblem, UplinkClient, UplinkTls};
use crate::uplink::fhir::WriteMode;

/// The resources the uploader sends in its transaction Bundles (conditional create each).
pub const RESOURCES_SENT: [&str; 2] = ["Observation", "Device"];

/// What the TLS handshake negotiated and what the server presented.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsReport {
    /// `TLS 1.3` or `TLS 1.2`.
    pub version: String,
    /// As rustls names it, e.g. `TLS13_CHACHA20_POLY1305_SHA256`.
    pub cipher_suite: String,
    /// As rustls names it, e.g. `X25519`.
    pub kx_group: String,
    /// The server's chain, leaf first.
    pub chain: Vec<Result<super::cert::CertSummary, super::cert::CertError>>,
    /// The `pin-sha256` of each certificate of `chain` (for `uplink.pin_spki_sha256`).
    pub pins: Vec<Option<String>>,
}

/// Why the handshake could not even start.
fn setup_error(e: &crate::uplink::client::UplinkError) -> Check {
    Check {
        name: "TLS".into(),
        mark: Mark::Fail,
        detail: e.to_string(),
        fix: Some(
            match e {
                crate::uplink::client::UplinkError::Insecure(_) => {
                    "use an https:// uplink.fhir_base: PHI must not travel in plaintext"
                }
                _ => "uplink.ca_file, client_cert and client_key must be readable PEM files (the key mode 0600)",
            }
            .into(),
        ),
    }
}

/// One TLS handshake with `cfg.fhir_base`'s host and port using `tls` (blocking: run it in
/// `spawn_blocking`). Nothing is written after the handshake but `close_notify`.
///
/// # Errors
///
/// A [`SendError`] classified as the uploader classifies its own: DNS, refused, timeout,
/// closed, TLS (a [`TlsProblem`]).
pub fn handshake(
    tls: Arc<rustls::ClientConfig>,
    base: &url::Url,
    timeout: Duration,
) -> Result<TlsReport, SendError> {
    let host = base.host_str().unwrap_or("").to_owned();
    let port = base.port_or_known_default().unwrap_or(443);
    let name: ServerName<'static> = match base.host() {
        Some(url::Host::Domain(d)) => {
            ServerName::try_from(d.to_owned()).map_err(|_| SendError::Dns { host: host.clone() })?
        }
        Some(url::Host::Ipv4(ip)) => ServerName::from(std::net::IpAddr::V4(ip)),
        Some(url::Host::Ipv6(ip)) => ServerName::from(std::net::IpAddr::V6(ip)),
        None => return Err(SendError::Dns { host }),
    };
    let addrs: Vec<_> = match base.host() {
        Some(url::Host::Domain(d)) => (d, port)
            .to_socket_addrs()
            .map_err(|_| SendError::Dns { host: host.clone() })?
            .collect(),
        Some(url::Host::Ipv4(ip)) => vec![(ip, port).into()],
        Some(url::Host::Ipv6(ip)) => vec![(ip, port).into()],
        None => Vec::new(),
    };
    let mut last = SendError::Dns { host: host.clone() };
    let mut tcp = None;
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, timeout) {
            Ok(s) => {
                tcp = Some(s);
                break;
            }
            Err(e) => last = io_error(&e, &host, port, timeout),
        }
    }
    let mut tcp = tcp.ok_or(last)?;
    let io = |e: std::io::Error| io_error(&e, &host, port, timeout);
    tcp.set_read_timeout(Some(timeout)).map_err(io)?;
    tcp.set_write_timeout(Some(timeout)).map_err(io)?;
    let mut conn = rustls::ClientConnection::new(tls, name)
        .map_err(|e| SendError::Tls(TlsProblem::from_rustls(&e)))?;
    while conn.is_handshaking() {
        conn.complete_io(&mut tcp).map_err(io)?;
    }
    let version = match conn.protocol_version() {
        Some(rustls::ProtocolVersion::TLSv1_3) => "TLS 1.3".to_string(),
        Some(rustls::ProtocolVersion::TLSv1_2) => "TLS 1.2".to_string(),
        Some(other) => format!("{other:?}"),
        None => "unknown".to_string(),
    };
    let report = TlsReport {
        version,
        cipher_suite: conn
            .negotiated_cipher_suite()
            .map_or_else(|| "unknown".into(), |s| format!("{:?}", s.suite())),
        kx_group: conn
            .negotiated_key_exchange_group()
            .map_or_else(|| "unknown".into(), |g| format!("{:?}", g.name())),
        chain: conn
            .peer_certificates()
            .unwrap_or_default()
            .iter()
            .map(|c| super::cert::summary_der(c.as_ref()))
            .collect(),
        pins: conn
            .peer_certificates()
            .unwrap_or_default()
            .iter()
            .map(|c| crate::tls::pin::spki_pin(c).map(|p| crate::tls::pin::pin_to_string(&p)))
            .collect(),
    };
    conn.send_close_notify();
    let _ = conn.complete_io(&mut tcp);
    Ok(report)
}

/// An I/O error of the handshake, classified by kind (and the `rustls::Error` inside it).
fn io_error(e: &std::io::Error, host: &str, port: u16, timeout: Duration) -> SendError {
    if let Some(tls) = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        return SendError::Tls(TlsProblem::from_rustls(tls));
    }
    match e.kind() {
        ErrorKind::ConnectionRefused => SendError::Refused {
            host: host.to_owned(),
            port,
        },
        ErrorKind::TimedOut | ErrorKind::WouldBlock => SendError::Timeout(timeout),
        ErrorKind::ConnectionReset
        | ErrorKind::ConnectionAborted
        | ErrorKind::BrokenPipe
        | ErrorKind::UnexpectedEof
        | ErrorKind::NotConnected => SendError::Closed,
        _ => SendError::Connect(e.to_string()),
    }
}

/// A failed exchange as a ✗ line with its fix.
fn send_failure(name: &str, base: &url::Url, e: &SendError) -> Check {
    Check {
        name: name.into(),
        mark: Mark::Fail,
        detail: format!("{base}: {e}"),
        fix: Some(e.hint().into()),
    }
}

/// Pure: the TLS lines (the handshake and one per server certificate) at `now`.
pub fn tls_checks(base: &url::Url, r: &TlsReport, now: DateTime<Utc>) -> Vec<Check> {
    let mut out = vec![Check {
        name: "TLS".into(),
        mark: Mark::Pass,
        detail: format!(
            "{base}: {}, cipher {}, key exchange {}; server certificate verified against uplink.ca_file",
            r.version, r.cipher_suite, r.kx_group
        ),
        fix: None,
    }];
    for (i, c) in r.chain.iter().enumerate() {
        let name = format!("server certificate {}", i + 1);
        let pin = match r.pins.get(i) {
            Some(Some(pin)) => format!("; key pin-sha256 {pin}"),
            _ => String::new(),
        };
        out.push(match c {
            Ok(s) if s.not_after <= now => Check {
                name,
                mark: Mark::Fail,
                detail: format!(
                    "{} (issued by {}): expired {}{pin}",
                    s.subject,
                    s.issuer,
                    s.not_after.format("%Y-%m-%d")
                ),
                fix: Some(
                    "the server's operators must renew it; if it is in date, check the gateway's clock (NTP)"
                        .into(),
                ),
            },
            Ok(s) => Check {
                name,
                mark: Mark::Pass,
                detail: format!(
                    "{} (issued by {}): valid until {} ({} days){pin}",
                    s.subject,
                    s.issuer,
                    s.not_after.format("%Y-%m-%d"),
                    (s.not_after - now).num_days()
                ),
                fix: None,
            },
            // rustls verified it; we only cannot print it.
            Err(e) => Check {
                name,
                mark: Mark::Pass,
                detail: format!("verified, but its fields cannot be shown: {e}{pin}"),
                fix: None,
            },
        });
    }
    out
}

/// Pure: the verdicts on a `GET [base]/metadata` answer (status and body), for the way entries
/// are written (`uplink.write_mode`).
pub fn capability_checks(status: u16, body: &[u8], write_mode: WriteMode) -> Vec<Check> {
    let name = "metadata";
    if status != 200 {
        return vec![Check {
            name: name.into(),
            mark: Mark::Fail,
            detail: format!("GET [base]/metadata answered HTTP {status}"),
            fix: Some(
                "uplink.fhir_base must be the FHIR base URL (where [base]/metadata answers the CapabilityStatement); ask the server's operators"
                    .into(),
            ),
        }];
    }
    let cs: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => {
            return vec![Check {
                name: name.into(),
                mark: Mark::Fail,
                detail: format!("the answer is not JSON: {e}"),
                fix: Some("uplink.fhir_base must point at a FHIR server (JSON)".into()),
            }]
        }
    };
    if cs["resourceType"] != "CapabilityStatement" {
        return vec![Check {
            name: name.into(),
            mark: Mark::Fail,
            detail: format!(
                "the answer is a {}, not a CapabilityStatement",
                cs["resourceType"]
                    .as_str()
                    .unwrap_or("JSON value without resourceType")
            ),
            fix: Some("uplink.fhir_base must be the FHIR base URL".into()),
        }];
    }
    let software = [&cs["software"]["name"], &cs["software"]["version"]]
        .iter()
        .filter_map(|v| v.as_str())
        .collect::<Vec<_>>()
        .join(" ");
    let mut out = vec![Check {
        name: name.into(),
        mark: Mark::Pass,
        detail: format!(
            "CapabilityStatement{}",
            if software.is_empty() {
                String::new()
            } else {
                format!(" of {software}")
            }
        ),
        fix: None,
    }];
    let version = cs["fhirVersion"].as_str().unwrap_or("");
    out.push(if version.starts_with("4.0.") {
        Check::pass("FHIR version", format!("{version} (R4)"))
    } else {
        Check::fail(
            "FHIR version",
            format!(
                "fhirVersion {}: vitalgate sends FHIR R4 (4.0.x)",
                if version.is_empty() {
                    "missing"
                } else {
                    version
                }
            ),
            "point uplink.fhir_base at the server's R4 endpoint",
        )
    });
    let server = cs["rest"]
        .as_array()
        .and_then(|r| r.iter().find(|r| r["mode"] == "server"));
    let Some(server) = server else {
        out.push(Check::fail(
            "transaction",
            "the CapabilityStatement has no rest entry with mode server",
            "uplink.fhir_base must be a FHIR server's REST base",
        ));
        return out;
    };
    let has = |interactions: &Value, code: &str| {
        interactions
            .as_array()
            .is_some_and(|a| a.iter().any(|i| i["code"] == code))
    };
    out.push(if has(&server["interaction"], "transaction") {
        Check::pass("transaction", "supported (POST [base] with a transaction Bundle)")
    } else {
        Check::fail(
            "transaction",
            "the server does not list the transaction interaction",
            "vitalgate uploads transaction Bundles: the server must support them (ask its operators to enable transactions)",
        )
    });
    for ty in RESOURCES_SENT {
        let res = server["resource"]
            .as_array()
            .and_then(|a| a.iter().find(|r| r["type"] == ty));
        out.push(match res {
            None => Check::fail(
                ty,
                format!("{ty} is not among the server's resources"),
                format!("the server must accept {ty} resources: ask its operators"),
            ),
            Some(r) if !has(&r["interaction"], "create") => Check::fail(
                ty,
                format!("the server does not allow create on {ty}"),
                format!("the server must allow create on {ty}: ask its operators"),
            ),
            Some(r) if write_mode == WriteMode::Put && !has(&r["interaction"], "update") => Check::fail(
                ty,
                format!("the server does not allow update on {ty} (uplink.write_mode = \"put\" writes with PUT)"),
                format!("enable update as create for {ty} on the server, or set uplink.write_mode = \"conditional-create\""),
            ),
            Some(r) if write_mode == WriteMode::Put && r["updateCreate"] != true => Check::fail(
                ty,
                format!("update ok, but no update as create on {ty} (updateCreate is not true)"),
                format!("enable update as create (PUT to a new id) for {ty} on the server, or set uplink.write_mode = \"conditional-create\""),
            ),
            Some(_) if write_mode == WriteMode::Put => {
                Check::pass(ty, "create and update as create (uplink.write_mode = \"put\")")
            }
            Some(r) if r["conditionalCreate"] != true => Check::fail(
                ty,
                format!("create ok, but no conditional create on {ty} (conditionalCreate is not true)"),
                format!("enable conditional create (If-None-Exist) for {ty} on the server: without it a resent Bundle duplicates readings; or, if it allows update as create, set uplink.write_mode = \"put\""),
            ),
            Some(_) => Check::pass(ty, "create and conditional create"),
        });
    }
    out
}

/// The uplink checks: TLS (handshake and server chain) then the CapabilityStatement. Without a
/// handshake the metadata is not fetched. Posts nothing.
pub async fn uplink_checks(u: &UplinkTls, write_mode: WriteMode, now: DateTime<Utc>) -> Vec<Check> {
    let client = match UplinkClient::new(u) {
        Ok(c) => c,
        Err(e) => return vec![setup_error(&e)],
    };
    let tls = match tls_config(u) {
        Ok(t) => Arc::new(t),
        Err(e) => return vec![setup_error(&e)],
    };
    let mut out = Vec::new();
    if u.fhir_base.scheme() == "https" {
        let base = u.fhir_base.clone();
        let timeout = u.timeout;
        let pq = u.post_quantum;
        let shook = tokio::task::spawn_blocking(move || {
            handshake(tls, &base, timeout).map_err(|e| e.under_policy(pq))
        })
        .await;
        match shook {
            Ok(Ok(report)) => out.extend(tls_checks(&u.fhir_base, &report, now)),
            Ok(Err(e)) => {
                out.push(send_failure("TLS", &u.fhir_base, &e));
                return out;
            }
            Err(e) => {
                out.push(Check::fail(
                    "TLS",
                    e.to_string(),
                    "report this: the check itself failed",
                ));
                return out;
            }
        }
    } else {
        out.push(Check::fail(
            "TLS",
            format!("{}: plaintext http:// (allow_insecure_http)", u.fhir_base),
            "use an https:// fhir_base: PHI must not travel in plaintext",
        ));
    }
    match client.get_metadata().await {
        Ok(resp) => out.extend(capability_checks(resp.status, &resp.body, write_mode)),
        Err(e) => out.push(send_failure("metadata", &u.fhir_base, &e)),
    }
    out
}

/// Every `check-uplink` line for `cfg`: the uplink checks and the client certificate's expiry.
pub async fn run(cfg: &Config, now: DateTime<Utc>) -> Vec<Check> {
    let u = UplinkTls::from_config(&cfg.uplink);
    let mut out = uplink_checks(&u, cfg.uplink.write_mode, now).await;
    let mut cert = super::doctor::cert_verdict(
        &u.client_cert,
        super::cert::not_after_pem_file(&u.client_cert).map_err(|e| e.to_string()),
        now,
    );
    cert.name = "client certificate".into();
    // After the TLS lines (the handshake used it), before the metadata.
    let at = out
        .iter()
        .position(|c| !c.name.starts_with("TLS") && !c.name.starts_with("server certificate"))
        .unwrap_or(out.len());
    out.insert(at, cert);
    if let Some(o) = &cfg.uplink.oauth2 {
        out.insert(at + 1, oauth_check(&u, o).await);
    }
    out
}

/// The `OAuth token` line: asks the token endpoint (`o.token_url`, or the one the FHIR server's
/// `.well-known/smart-configuration` names) for a token exactly as the uploader would (the same
/// TLS configuration, a fresh signed assertion). Posts nothing to the FHIR server.
pub async fn oauth_check(u: &UplinkTls, o: &crate::uplink::oauth::OAuth2Config) -> Check {
    const NAME: &str = "OAuth token";
    let client = match UplinkClient::new(u).and_then(|c| c.with_oauth2(Some(o))) {
        Ok(c) => c,
        Err(e) => {
            return Check::fail(
                NAME,
                e.to_string(),
                "uplink.oauth2.key_file must be a PEM private key (PKCS#8, mode 0600) of the type uplink.oauth2.algorithm names, and token_url https://",
            )
        }
    };
    let result = client.check_token().await;
    let (endpoint, discovered) = client
        .oauth_endpoint()
        .unwrap_or_else(|| (o.discovery_url.clone(), true));
    let from = if discovered {
        " (discovered from the FHIR server's .well-known/smart-configuration)"
    } else {
        ""
    };
    match result {
        Ok(Some(lifetime)) => Check::pass(
            NAME,
            format!(
                "{endpoint}{from}: bearer token granted for {} s (client_id {}, {} assertion, scope \"{}\")",
                lifetime.as_secs(),
                o.client_id,
                o.algorithm.name(),
                o.scope
            ),
        ),
        Ok(None) => Check::fail(
            NAME,
            "not configured",
            "report this: the check itself failed",
        ),
        Err(e) => send_failure(NAME, &endpoint, &e),
    }
}

/// Pure: `doctor`'s one uplink line from the uplink checks: ✓ with the negotiated parameters
/// when all pass, else the first ✗ with its fix.
pub fn summary(base: &url::Url, checks: &[Check]) -> Check {
    if let Some(bad) = checks.iter().find(|c| c.mark == Mark::Fail) {
        return Check {
            name: "uplink".into(),
            mark: Mark::Fail,
            detail: format!("{}: {}", bad.name, bad.detail),
            fix: bad.fix.clone(),
        };
    }
    let tls = checks
        .iter()
        .find(|c| c.name == "TLS")
        .map_or(String::new(), |c| {
            c.detail
                .split_once(": ")
                .map_or(c.detail.clone(), |(_, d)| d.to_string())
        });
    let tls = tls.split(';').next().unwrap_or("").to_string();
    let oauth = if checks.iter().any(|c| c.name == "OAuth token") {
        "; OAuth token granted"
    } else {
        ""
    };
    Check {
        name: "uplink".into(),
        mark: Mark::Pass,
        detail: format!(
            "{base}: TLS with the client certificate ok ({tls}); metadata: R4, transaction, conditional create for {}{oauth} (details: vitalgate check-uplink)",
            RESOURCES_SENT.join(", ")
        ),
        fix: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn statement() -> Value {
        json!({
            "resourceType": "CapabilityStatement",
            "status": "active",
            "kind": "instance",
            "fhirVersion": "4.0.1",
            "software": {"name": "Test", "version": "1"},
            "rest": [{
                "mode": "server",
                "interaction": [{"code": "transaction"}],
                "resource": [
                    {"type": "Observation", "interaction": [{"code": "create"}], "conditionalCreate": true},
                    {"type": "Device", "interaction": [{"code": "create"}, {"code": "read"}], "conditionalCreate": true}
                ]
            }]
        })
    }

    fn verdicts(v: &Value) -> Vec<(String, Mark)> {
        capability_checks(200, v.to_string().as_bytes(), WriteMode::ConditionalCreate)
            .into_iter()
            .map(|c| (c.name, c.mark))
            .collect()
    }

    fn failed(v: &Value) -> Vec<String> {
        verdicts(v)
            .into_iter()
            .filter(|(_, m)| *m == Mark::Fail)
            .map(|(n, _)| n)
            .collect()
    }

    #[test]
    fn a_complete_r4_statement_passes_every_item() {
        let v = verdicts(&statement());
        let names: Vec<&str> = v.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "metadata",
                "FHIR version",
                "transaction",
                "Observation",
                "Device"
            ]
        );
        assert!(v.iter().all(|(_, m)| *m == Mark::Pass), "{v:?}");
    }

    #[test]
    fn put_mode_needs_update_as_create_not_conditional_create() {
        let put = |v: &Value| -> Vec<String> {
            capability_checks(200, v.to_string().as_bytes(), WriteMode::Put)
                .into_iter()
                .filter(|c| c.mark == Mark::Fail)
                .map(|c| c.detail)
                .collect()
        };
        // The statement above has conditional create but no update: fine for the default, not
        // for PUT.
        let fails = put(&statement());
        assert_eq!(fails.len(), 2, "{fails:?}");
        assert!(
            fails[0].contains("does not allow update on Observation"),
            "{fails:?}"
        );
        let mut s = statement();
        for r in s["rest"][0]["resource"].as_array_mut().unwrap() {
            r["interaction"] = json!([{"code": "create"}, {"code": "update"}]);
            r["conditionalCreate"] = json!(false);
        }
        let fails = put(&s);
        assert!(
            fails.len() == 2 && fails[1].contains("no update as create on Device"),
            "{fails:?}"
        );
        for r in s["rest"][0]["resource"].as_array_mut().unwrap() {
            r["updateCreate"] = json!(true);
        }
        assert!(put(&s).is_empty());
        // ... and the same statement fails the default mode, whose fix names PUT.
        let c = capability_checks(200, s.to_string().as_bytes(), WriteMode::ConditionalCreate);
        let device = c.iter().find(|c| c.name == "Device").unwrap();
        assert_eq!(device.mark, Mark::Fail);
        assert!(device
            .fix
            .as_deref()
            .unwrap()
            .contains("write_mode = \"put\""));
    }

    #[test]
    fn each_missing_capability_fails_its_own_item_with_a_fix() {
        let mut s = statement();
        s["fhirVersion"] = json!("3.0.2");
        assert_eq!(failed(&s), ["FHIR version"]);

        let mut s = statement();
        s["rest"][0]["interaction"] = json!([{"code": "batch"}]);
        assert_eq!(failed(&s), ["transaction"]);

        let mut s = statement();
        s["rest"][0]["resource"][1]
            .as_object_mut()
            .unwrap()
            .remove("conditionalCreate");
        assert_eq!(failed(&s), ["Device"]);
        let c = capability_checks(200, s.to_string().as_bytes(), WriteMode::ConditionalCreate);
        let device = c.iter().find(|c| c.name == "Device").unwrap();
        assert!(
            device.detail.contains("no conditional create"),
            "{device:?}"
        );
        assert!(device.fix.as_deref().unwrap().contains("If-None-Exist"));

        let mut s = statement();
        s["rest"][0]["resource"][0]["interaction"] = json!([{"code": "read"}]);
        assert_eq!(failed(&s), ["Observation"]);

        let mut s = statement();
        s["rest"][0]["resource"] = json!([]);
        assert_eq!(failed(&s), ["Observation", "Device"]);

        let mut s = statement();
        s["rest"][0]["mode"] = json!("client");
        assert_eq!(failed(&s), ["transaction"]);
    }

    #[test]
    fn a_non_statement_answer_is_one_failed_metadata_item() {
        for (status, body) in [
            (404, b"{}".as_slice()),
            (200, b"<html>".as_slice()),
            (200, br#"{"resourceType":"OperationOutcome"}"#.as_slice()),
        ] {
            let c = capability_checks(status, body, WriteMode::ConditionalCreate);
            assert_eq!(c.len(), 1, "{c:?}");
            assert_eq!(c[0].name, "metadata");
            assert_eq!(c[0].mark, Mark::Fail);
            assert!(c[0].fix.is_some());
        }
    }

    #[test]
    fn doctor_summary_is_the_first_failure_or_the_negotiated_parameters() {
        let base: url::Url = "https://fhir.example/r4".parse().unwrap();
        let now: DateTime<Utc> = "2026-01-01T00:00:00Z".parse().unwrap();
        let report = TlsReport {
            version: "TLS 1.3".into(),
            cipher_suite: "TLS13_CHACHA20_POLY1305_SHA256".into(),
            kx_group: "X25519".into(),
            chain: vec![Ok(crate::ops::cert::CertSummary {
                subject: "CN=fhir.example".into(),
                issuer: "CN=CA".into(),
                not_after: now + chrono::Duration::days(30),
            })],
            pins: vec![Some("pin=".into())],
        };
        let mut checks = tls_checks(&base, &report, now);
        assert!(checks[1]
            .detail
            .contains("valid until 2026-01-31 (30 days); key pin-sha256 pin="));
        checks.extend(capability_checks(
            200,
            statement().to_string().as_bytes(),
            WriteMode::ConditionalCreate,
        ));
        let s = summary(&base, &checks);
        assert_eq!(s.mark, Mark::Pass);
        assert!(
            s.detail
                .contains("TLS 1.3, cipher TLS13_CHACHA20_POLY1305_SHA256, key exchange X25519"),
            "{s:?}"
        );
        let mut bad = statement();
        bad["rest"][0]["resource"][0]["conditionalCreate"] = json!(false);
        checks.truncate(2);
        checks.extend(capability_checks(
            200,
            bad.to_string().as_bytes(),
            WriteMode::ConditionalCreate,
        ));
        let s = summary(&base, &checks);
        assert_eq!(s.mark, Mark::Fail);
        assert!(s.detail.starts_with("Observation: "), "{s:?}");

        let expired = tls_checks(&base, &report, now + chrono::Duration::days(31));
        assert_eq!(expired[1].mark, Mark::Fail);
    }

    #[test]
    fn handshake_io_errors_are_classified_by_type() {
        let e = std::io::Error::new(
            ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
        );
        assert!(matches!(
            io_error(&e, "h", 1, Duration::from_secs(1)),
            SendError::Tls(TlsProblem::UnknownIssuer)
        ));
        let e = std::io::Error::from(ErrorKind::ConnectionRefused);
        assert!(matches!(
            io_error(&e, "h", 1, Duration::from_secs(1)),
            SendError::Refused { .. }
        ));
        let e = std::io::Error::from(ErrorKind::WouldBlock);
        assert!(matches!(
            io_error(&e, "h", 1, Duration::from_secs(1)),
            SendError::Timeout(_)
        ));
    }
}
