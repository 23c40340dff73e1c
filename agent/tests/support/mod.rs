//! Shared by the uplink tests: a throw-away PKI and the devkit loopback mTLS FHIR server, and
//! an uplink client configured for them.

use std::time::Duration;

use vitalgate::uplink::client::{UplinkClient, UplinkTls};
use vitalgate_devkit::fhir_server::{FhirTestServer, ServerConfig};
use vitalgate_devkit::pki::TestPki;

pub struct Setup {
    _dir: tempfile::TempDir,
    pub pki: TestPki,
    pub fhir: FhirTestServer,
}

/// A test timeout scaled for user-mode emulation: under qemu (`cross/test.sh`, which sets
/// `VITALGATE_EXEC_WRAPPER`) a TLS handshake on a loaded 2-core machine can take seconds, so
/// deadlines meant as "never this slow" are 5x longer there. Natively: `d` itself.
#[allow(dead_code)] // each test file uses what it needs of this module
pub fn patience(d: Duration) -> Duration {
    match std::env::var("VITALGATE_EXEC_WRAPPER") {
        Ok(w) if !w.trim().is_empty() => d * 5,
        _ => d,
    }
}

pub async fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::generate(&dir.path().join("pki")).unwrap();
    let fhir = FhirTestServer::start(ServerConfig::for_pki(&pki))
        .await
        .unwrap();
    Setup {
        _dir: dir,
        pki,
        fhir,
    }
}

impl Setup {
    /// A client of this server with the test PKI's client certificate.
    pub fn client_with_timeout(&self, timeout: Duration) -> UplinkClient {
        UplinkClient::new(&UplinkTls {
            fhir_base: self.fhir.base_url().parse().unwrap(),
            pin_spki_sha256: Vec::new(),
            post_quantum: vitalgate::tls::PostQuantum::default(),
            ca_file: self.pki.ca_cert.clone(),
            client_cert: self.pki.client_cert.clone(),
            client_key: self.pki.client_key.clone(),
            allow_insecure_http: false,
            timeout,
        })
        .unwrap()
    }
}
