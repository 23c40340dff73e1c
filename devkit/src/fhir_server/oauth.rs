//! An OAuth 2.0 token endpoint for the test server (SMART Backend Services): `POST /token`
//! with the client credentials grant and a `private_key_jwt` client assertion.
//!
//! Off until [`ServerState::enable_oauth`]. Then the endpoint checks the form
//! (`grant_type=client_credentials`, the jwt-bearer assertion type, a scope), the JWS header
//! (`alg` ES384 or RS384, `typ` JWT), the signature with the public keys it was given (ring), and
//! the claims: `iss` = `sub` = the client id, `aud` = the token URL the request was sent to
//! (`https://<Host>/token`), `exp` in the future and at most 5 minutes away, `jti` never seen
//! before. A good request gets an opaque bearer token (`expires_in` as configured); anything else
//! `400 {"error":"invalid_client"}` with the reason in `error_description`. Every request is
//! recorded ([`ServerState::token_requests`]) with its decoded header and claims.
//!
//! With `require_bearer`, `POST [base]` needs `Authorization: Bearer <a token issued here, not
//! expired, not revoked>` and is answered `401` with `WWW-Authenticate: Bearer` otherwise.
//! `GET [base]/metadata` stays open (as on SMART servers).

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use base64::Engine as _;
use http_body_util::{BodyExt, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Method, Request, Response};
use serde_json::{json, Value};

use super::{full, outcome, Resp, ServerState};

/// Where the token endpoint listens (outside the FHIR base).
pub const TOKEN_PATH: &str = "/token";

/// What the token endpoint accepts and issues.
#[derive(Debug, Clone)]
pub struct OAuthConfig {
    /// The client id assertions must name as `iss` and `sub`.
    pub client_id: String,
    /// Public keys a client assertion may be signed with: `("ES384", uncompressed P-384 point)`
    /// or `("RS384", DER RSAPublicKey)`, as ring's `public_key()` gives them.
    pub keys: Vec<(String, Vec<u8>)>,
    /// `expires_in` of the tokens issued, in seconds.
    pub expires_in: u64,
    /// `POST [base]` requires a valid bearer token.
    pub require_bearer: bool,
}

/// One request to the token endpoint.
#[derive(Debug, Clone)]
pub struct TokenRequest {
    /// A token was issued.
    pub accepted: bool,
    /// Why not (empty when accepted).
    pub reason: String,
    /// The form fields, except `client_assertion`.
    pub form: Vec<(String, String)>,
    /// The assertion's decoded JWS header and claims (`Null` when they did not decode).
    pub header: Value,
    pub claims: Value,
}

#[derive(Debug, Default)]
pub(super) struct OAuthState {
    config: Option<OAuthConfig>,
    refuse: bool,
    issued: HashMap<String, Instant>,
    jtis: HashSet<String>,
    requests: Vec<TokenRequest>,
    bearer_refusals: usize,
    /// `None`: the standard SMART configuration; `Some((status, body))`: this answer instead.
    smart_configuration: Option<(u16, String)>,
    smart_configuration_requests: usize,
}

/// Where the SMART configuration is served, below the FHIR base.
pub const SMART_CONFIGURATION_PATH: &str = "/.well-known/smart-configuration";

impl ServerState {
    /// Turns the token endpoint on (and, with `require_bearer`, the bearer check).
    pub fn enable_oauth(&self, config: OAuthConfig) {
        self.lock().oauth.config = Some(config);
    }

    /// `expires_in` of the tokens issued from now on.
    pub fn set_token_lifetime(&self, secs: u64) {
        if let Some(c) = self.lock().oauth.config.as_mut() {
            c.expires_in = secs;
        }
    }

    /// `true`: every token request is answered `400 {"error":"invalid_client"}` (the
    /// registration was withdrawn); `false`: requests are judged again.
    pub fn set_token_refusal(&self, refuse: bool) {
        self.lock().oauth.refuse = refuse;
    }

    /// Every token issued so far is revoked: `POST [base]` answers 401 to it.
    pub fn revoke_tokens(&self) {
        self.lock().oauth.issued.clear();
    }

    /// Every request to the token endpoint, in order.
    pub fn token_requests(&self) -> Vec<TokenRequest> {
        self.lock().oauth.requests.clone()
    }

    /// Tokens issued (accepted token requests).
    pub fn tokens_issued(&self) -> usize {
        self.lock()
            .oauth
            .requests
            .iter()
            .filter(|r| r.accepted)
            .count()
    }

    /// `None`: `GET [base]/.well-known/smart-configuration` answers the standard document
    /// (SMART App Launch 2.x: `token_endpoint` = this server's `/token`, `private_key_jwt`,
    /// ES384 and RS384, `client_credentials`); `Some((status, body))`: that answer instead (a
    /// broken or hostile configuration).
    pub fn set_smart_configuration(&self, answer: Option<(u16, String)>) {
        self.lock().oauth.smart_configuration = answer;
    }

    /// Requests for the SMART configuration so far.
    pub fn smart_configuration_requests(&self) -> usize {
        self.lock().oauth.smart_configuration_requests
    }

    /// `POST [base]` requests answered 401 for want of a valid bearer token.
    pub fn bearer_refusals(&self) -> usize {
        self.lock().oauth.bearer_refusals
    }
}

/// With `require_bearer`: the 401 for a `POST [base]` without a valid token, else `None`.
pub(super) fn check_bearer(state: &ServerState, req: &Request<Incoming>) -> Option<Resp> {
    let mut inner = state.lock();
    let oauth = &mut inner.oauth;
    if !oauth.config.as_ref().is_some_and(|c| c.require_bearer) {
        return None;
    }
    let token = req
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.split_once(' ')
                .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        })
        .map(|(_, t)| t.trim().to_owned());
    let now = Instant::now();
    let valid = token
        .as_ref()
        .and_then(|t| oauth.issued.get(t))
        .is_some_and(|expiry| now < *expiry);
    if valid {
        return None;
    }
    oauth.bearer_refusals += 1;
    let mut resp = outcome(
        401,
        "login",
        &["a valid bearer token is required (Authorization: Bearer)".into()],
    );
    resp.headers_mut().insert(
        hyper::header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer error=\"invalid_token\""),
    );
    Some(resp)
}

fn token_json(status: u16, body: &Value) -> Resp {
    Response::builder()
        .status(status)
        .header(CONTENT_TYPE, "application/json")
        .header("cache-control", "no-store")
        .body(full(Bytes::from(body.to_string())))
        .expect("valid response parts")
}

/// `POST /token`.
/// `GET [base]/.well-known/smart-configuration` (404 until OAuth is enabled).
pub(super) fn smart_configuration(state: &ServerState, req: &Request<Incoming>) -> Resp {
    let mut inner = state.lock();
    let oauth = &mut inner.oauth;
    if oauth.config.is_none() {
        return outcome(
            404,
            "not-found",
            &["no SMART configuration on this server".into()],
        );
    }
    if req.method() != Method::GET {
        return token_json(405, &json!({"error": "invalid_request"}));
    }
    oauth.smart_configuration_requests += 1;
    if let Some((status, body)) = &oauth.smart_configuration {
        let mut resp = Response::new(full(Bytes::from(body.clone())));
        *resp.status_mut() = hyper::StatusCode::from_u16(*status).unwrap_or_default();
        resp.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        return resp;
    }
    let host = req
        .headers()
        .get(hyper::header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("localhost");
    token_json(
        200,
        &json!({
            "token_endpoint": format!("https://{host}{TOKEN_PATH}"),
            "token_endpoint_auth_methods_supported": ["private_key_jwt"],
            "token_endpoint_auth_signing_alg_values_supported": ["ES384", "RS384"],
            "grant_types_supported": ["client_credentials"],
            "scopes_supported": ["system/Observation.c", "system/Device.c"],
            "capabilities": ["client-confidential-asymmetric"]
        }),
    )
}

pub(super) async fn token_endpoint(state: &ServerState, req: Request<Incoming>) -> Resp {
    if state.lock().oauth.config.is_none() {
        return outcome(
            404,
            "not-found",
            &["no token endpoint on this server".into()],
        );
    }
    if req.method() != Method::POST {
        return token_json(405, &json!({"error": "invalid_request"}));
    }
    let host = req
        .headers()
        .get(hyper::header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("localhost")
        .to_owned();
    let audience = format!("https://{host}{TOKEN_PATH}");
    let body = match Limited::new(req.into_body(), 64 * 1024).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return token_json(400, &json!({"error": "invalid_request"})),
    };
    let form: Vec<(String, String)> = url::form_urlencoded::parse(&body).into_owned().collect();
    let field = |k: &str| form.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    let assertion = field("client_assertion").unwrap_or("").to_owned();
    let (header, claims) = decode(&assertion).unwrap_or((Value::Null, Value::Null));
    let mut inner = state.lock();
    let oauth = &mut inner.oauth;
    let Some(config) = oauth.config.clone() else {
        return token_json(500, &json!({"error": "server_error"}));
    };
    let verdict = if oauth.refuse {
        Err("the client registration was withdrawn (set_token_refusal)".to_string())
    } else {
        judge(
            &config,
            &form,
            &assertion,
            &header,
            &claims,
            &audience,
            &oauth.jtis,
        )
    };
    oauth.requests.push(TokenRequest {
        accepted: verdict.is_ok(),
        reason: verdict.clone().err().unwrap_or_default(),
        form: form
            .iter()
            .filter(|(k, _)| k != "client_assertion")
            .cloned()
            .collect(),
        header,
        claims: claims.clone(),
    });
    if let Some(jti) = claims["jti"].as_str() {
        oauth.jtis.insert(jti.to_owned());
    }
    match verdict {
        Ok(()) => {
            let token = uuid::Uuid::new_v4().simple().to_string();
            oauth.issued.insert(
                token.clone(),
                Instant::now() + Duration::from_secs(config.expires_in),
            );
            token_json(
                200,
                &json!({
                    "access_token": token,
                    "token_type": "bearer",
                    "expires_in": config.expires_in,
                    "scope": field("scope").unwrap_or(""),
                }),
            )
        }
        Err(reason) => token_json(
            400,
            &json!({"error": "invalid_client", "error_description": reason}),
        ),
    }
}

fn b64(part: &str) -> Option<Vec<u8>> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part)
        .ok()
}

/// The header and claims of a compact JWS (signature not checked).
fn decode(jwt: &str) -> Option<(Value, Value)> {
    let mut parts = jwt.split('.');
    let header = serde_json::from_slice(&b64(parts.next()?)?).ok()?;
    let claims = serde_json::from_slice(&b64(parts.next()?)?).ok()?;
    Some((header, claims))
}

fn judge(
    config: &OAuthConfig,
    form: &[(String, String)],
    assertion: &str,
    header: &Value,
    claims: &Value,
    audience: &str,
    jtis: &HashSet<String>,
) -> Result<(), String> {
    let field = |k: &str| form.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    if field("grant_type") != Some("client_credentials") {
        return Err("grant_type must be client_credentials".into());
    }
    if field("client_assertion_type")
        != Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
    {
        return Err("client_assertion_type must be jwt-bearer".into());
    }
    if field("scope").is_none_or(str::is_empty) {
        return Err("no scope".into());
    }
    let parts: Vec<&str> = assertion.split('.').collect();
    if parts.len() != 3 || header.is_null() || claims.is_null() {
        return Err("client_assertion is not a compact JWS".into());
    }
    if assertion.contains('=') {
        return Err("base64url must not be padded".into());
    }
    if header["typ"] != "JWT" {
        return Err("header typ must be JWT".into());
    }
    let alg = header["alg"].as_str().unwrap_or("");
    let verification: &dyn ring::signature::VerificationAlgorithm = match alg {
        "ES384" => &ring::signature::ECDSA_P384_SHA384_FIXED,
        "RS384" => &ring::signature::RSA_PKCS1_2048_8192_SHA384,
        other => return Err(format!("alg {other:?} is not ES384 or RS384")),
    };
    let signature = b64(parts[2]).ok_or("the signature is not base64url")?;
    let message = format!("{}.{}", parts[0], parts[1]);
    let verified = config
        .keys
        .iter()
        .filter(|(a, _)| a == alg)
        .any(|(_, key)| {
            ring::signature::UnparsedPublicKey::new(verification, key)
                .verify(message.as_bytes(), &signature)
                .is_ok()
        });
    if !verified {
        return Err("the signature does not verify with the registered keys".into());
    }
    if claims["iss"] != config.client_id.as_str() || claims["sub"] != config.client_id.as_str() {
        return Err("iss and sub must be the client id".into());
    }
    if claims["aud"] != audience {
        return Err(format!("aud must be {audience}"));
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let exp = claims["exp"].as_i64().ok_or("no exp")?;
    if exp <= now {
        return Err("the assertion has expired".into());
    }
    if exp > now + 300 + 5 {
        return Err("exp is more than five minutes away".into());
    }
    let jti = claims["jti"].as_str().unwrap_or("");
    if jti.is_empty() {
        return Err("no jti".into());
    }
    if jtis.contains(jti) {
        return Err("jti already used (a replayed assertion)".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::signature::{EcdsaKeyPair, ECDSA_P384_SHA384_FIXED_SIGNING};
    use vitalgate::uplink::oauth::{
        client_assertion, token_request_body, AssertionKey, JwsAlgorithm,
    };

    const AUD: &str = "https://localhost:1/token";

    fn key() -> AssertionKey {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P384_SHA384_FIXED_SIGNING, &rng).unwrap();
        AssertionKey::from_pkcs8(JwsAlgorithm::Es384, pkcs8.as_ref()).unwrap()
    }

    fn now() -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64
    }

    /// The verdict on a request carrying `assertion`, for a server that registered `registered`.
    fn verdict(
        registered: &AssertionKey,
        assertion: &str,
        jtis: &HashSet<String>,
    ) -> Result<(), String> {
        let config = OAuthConfig {
            client_id: "gw".into(),
            keys: vec![("ES384".into(), registered.public_key())],
            expires_in: 60,
            require_bearer: true,
        };
        let body = token_request_body("system/Observation.c", assertion);
        let form: Vec<(String, String)> = url::form_urlencoded::parse(body.as_bytes())
            .into_owned()
            .collect();
        let (header, claims) = decode(assertion).unwrap_or((Value::Null, Value::Null));
        judge(&config, &form, assertion, &header, &claims, AUD, jtis)
    }

    #[test]
    fn the_token_endpoint_checks_the_signature_and_every_claim() {
        let rng = ring::rand::SystemRandom::new();
        let k = key();
        let none = HashSet::new();
        let sign = |key: &AssertionKey, client: &str, aud: &str, at: i64, jti: &str| {
            client_assertion(key, None, client, aud, at, jti, &rng).unwrap()
        };
        assert_eq!(
            verdict(&k, &sign(&k, "gw", AUD, now(), "j1"), &none),
            Ok(())
        );
        // Signed by another key.
        let e = verdict(&k, &sign(&key(), "gw", AUD, now(), "j1"), &none).unwrap_err();
        assert!(e.contains("signature"), "{e}");
        // Another client, another audience.
        let e = verdict(&k, &sign(&k, "other", AUD, now(), "j1"), &none).unwrap_err();
        assert!(e.contains("iss and sub"), "{e}");
        let e = verdict(
            &k,
            &sign(&k, "gw", "https://elsewhere/token", now(), "j1"),
            &none,
        )
        .unwrap_err();
        assert!(e.contains("aud"), "{e}");
        // Expired (signed 10 minutes ago), or valid for too long (signed in the future).
        let e = verdict(&k, &sign(&k, "gw", AUD, now() - 600, "j1"), &none).unwrap_err();
        assert!(e.contains("expired"), "{e}");
        let e = verdict(&k, &sign(&k, "gw", AUD, now() + 600, "j1"), &none).unwrap_err();
        assert!(e.contains("five minutes"), "{e}");
        // Replayed.
        let seen: HashSet<String> = ["j1".to_string()].into();
        let e = verdict(&k, &sign(&k, "gw", AUD, now(), "j1"), &seen).unwrap_err();
        assert!(e.contains("jti"), "{e}");
        // A tampered payload.
        let good = sign(&k, "gw", AUD, now(), "j2");
        let parts: Vec<&str> = good.split('.').collect();
        let other = sign(&k, "gw", AUD, now(), "j3");
        let forged = format!(
            "{}.{}.{}",
            parts[0],
            other.split('.').nth(1).unwrap(),
            parts[2]
        );
        assert!(verdict(&k, &forged, &none).is_err());
        assert!(verdict(&k, "not-a-jwt", &none).is_err());
    }
}
