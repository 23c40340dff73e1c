//! Cost of the post-quantum key exchange (issue #12): a full mutual-TLS 1.3 handshake with the
//! uplink's own rustls client configuration (`uplink::client::tls_config`) for each
//! `uplink.post_quantum` mode, against a rustls server on aws-lc-rs offering X25519MLKEM768
//! and X25519 (so `prefer` and `require` negotiate the hybrid, `off` X25519).
//!
//! Run: `cargo bench -p vitalgate --bench pq_handshake` (x86_64: the aws-lc-rs server is an
//! x86_64 dev-dependency). Both ends run in this process over in-memory buffers (no sockets),
//! rounds interleaved across modes; the table gives the median handshake (client and server
//! CPU time together), the ClientHello's bytes on the wire (TLS record included), the
//! negotiated group, and each ratio against `off` measured in the same run. Compare rows
//! within one run only: the machine is shared. `PQ_HANDSHAKE_ROUNDS` (default 300).
#![allow(clippy::disallowed_methods)]

#[cfg(not(target_arch = "x86_64"))]
fn main() {
    println!("pq_handshake: needs the aws-lc-rs reference server, a dev-dependency on x86_64 only");
}

#[cfg(target_arch = "x86_64")]
fn main() {
    bench::run();
}

#[cfg(target_arch = "x86_64")]
mod bench {
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use rustls::pki_types::ServerName;
    use vitalgate::tls::PostQuantum;
    use vitalgate::uplink::client::{tls_config, UplinkTls};
    use vitalgate_devkit::fhir_server::{tls_config_with, ServerConfig};
    use vitalgate_devkit::pki::TestPki;

    const MODES: [PostQuantum; 3] = [PostQuantum::Off, PostQuantum::Prefer, PostQuantum::Require];

    /// Moves every pending TLS byte from `from` to `to`; the bytes moved.
    fn pump(from: &mut rustls::Connection, to: &mut rustls::Connection) -> usize {
        let mut buf = Vec::new();
        while from.wants_write() {
            from.write_tls(&mut buf).expect("write_tls");
        }
        let n = buf.len();
        let mut rd = buf.as_slice();
        while !rd.is_empty() {
            to.read_tls(&mut rd).expect("read_tls");
            to.process_new_packets().expect("handshake");
        }
        n
    }

    /// One handshake: (time, ClientHello bytes, negotiated group).
    fn handshake(
        client: &Arc<rustls::ClientConfig>,
        server: &Arc<rustls::ServerConfig>,
    ) -> (Duration, usize, String) {
        let start = Instant::now();
        let mut c = rustls::Connection::Client(
            rustls::ClientConnection::new(
                client.clone(),
                ServerName::try_from("localhost").expect("name"),
            )
            .expect("client"),
        );
        let mut s = rustls::Connection::Server(
            rustls::ServerConnection::new(server.clone()).expect("server"),
        );
        let hello = pump(&mut c, &mut s);
        while c.is_handshaking() || s.is_handshaking() {
            pump(&mut s, &mut c);
            pump(&mut c, &mut s);
        }
        let took = start.elapsed();
        let group = c
            .negotiated_key_exchange_group()
            .map(|g| format!("{:?}", g.name()))
            .unwrap_or_default();
        (took, hello, group)
    }

    /// The client's own key-exchange work for one handshake (what the gateway's CPU pays):
    /// `start` (key generation, the share) plus `complete` with the server's share, the server's
    /// half (aws-lc-rs) done outside the clock.
    fn client_kx(
        ours: &'static dyn rustls::crypto::SupportedKxGroup,
        server: &'static dyn rustls::crypto::SupportedKxGroup,
    ) -> Duration {
        let t = Instant::now();
        let kx = ours.start().expect("start");
        let mut took = t.elapsed();
        let done = server
            .start_and_complete(kx.pub_key())
            .expect("server side");
        let t = Instant::now();
        kx.complete(&done.pub_key).expect("complete");
        took += t.elapsed();
        took
    }

    fn median(mut v: Vec<Duration>) -> Duration {
        v.sort();
        v[v.len() / 2]
    }

    pub fn run() {
        let rounds: usize = std::env::var("PQ_HANDSHAKE_ROUNDS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(300);
        let dir = tempfile::tempdir().expect("tmp");
        let pki = TestPki::generate(&dir.path().join("pki")).expect("pki");
        let server = {
            use rustls::crypto::aws_lc_rs;
            let provider = Arc::new(rustls::crypto::CryptoProvider {
                kx_groups: vec![
                    aws_lc_rs::kx_group::X25519MLKEM768,
                    aws_lc_rs::kx_group::X25519,
                ],
                ..aws_lc_rs::default_provider()
            });
            let mut cfg = tls_config_with(&ServerConfig {
                provider: Some(provider),
                ..ServerConfig::for_pki(&pki)
            })
            .expect("server config");
            // No tickets: every round is a full handshake.
            cfg.send_tls13_tickets = 0;
            Arc::new(cfg)
        };
        let clients: Vec<Arc<rustls::ClientConfig>> = MODES
            .iter()
            .map(|&post_quantum| {
                let mut cfg = tls_config(&UplinkTls {
                    fhir_base: "https://localhost/fhir".parse().expect("url"),
                    pin_spki_sha256: Vec::new(),
                    post_quantum,
                    ca_file: pki.ca_cert.clone(),
                    client_cert: pki.client_cert.clone(),
                    client_key: pki.client_key.clone(),
                    allow_insecure_http: false,
                    timeout: Duration::from_secs(10),
                })
                .expect("client config");
                cfg.resumption = rustls::client::Resumption::disabled();
                Arc::new(cfg)
            })
            .collect();
        // Warm-up, then interleaved rounds.
        for c in &clients {
            for _ in 0..10 {
                handshake(c, &server);
            }
        }
        let mut times = vec![Vec::with_capacity(rounds); MODES.len()];
        let mut hello = vec![0; MODES.len()];
        let mut groups = vec![String::new(); MODES.len()];
        for _ in 0..rounds {
            for (i, c) in clients.iter().enumerate() {
                let (t, h, g) = handshake(c, &server);
                times[i].push(t);
                hello[i] = h;
                groups[i] = g;
            }
        }
        let medians: Vec<Duration> = times.into_iter().map(median).collect();
        let kx_pairs: [(
            &str,
            &'static dyn rustls::crypto::SupportedKxGroup,
            &'static dyn rustls::crypto::SupportedKxGroup,
        ); 2] = [
            (
                "X25519 (ring)",
                rustls::crypto::ring::kx_group::X25519,
                rustls::crypto::aws_lc_rs::kx_group::X25519,
            ),
            (
                "X25519MLKEM768 (ring + ml-kem)",
                vitalgate::tls::pq::X25519MLKEM768,
                rustls::crypto::aws_lc_rs::kx_group::X25519MLKEM768,
            ),
        ];
        let kx_medians: Vec<Duration> = kx_pairs
            .iter()
            .map(|(_, ours, theirs)| {
                median((0..rounds).map(|_| client_kx(*ours, *theirs)).collect())
            })
            .collect();
        let base = medians[0].as_secs_f64();
        println!(
            "pq_handshake: {rounds} rounds, mutual TLS 1.3, rustls/aws-lc-rs server (X25519MLKEM768, X25519)"
        );
        println!("| uplink.post_quantum | negotiated | ClientHello bytes | handshake (median) | vs off |");
        println!("|---|---|---:|---:|---:|");
        for (i, mode) in MODES.iter().enumerate() {
            println!(
                "| {} | {} | {} | {:.0} µs | {:.2}x |",
                mode.as_str(),
                groups[i],
                hello[i],
                medians[i].as_secs_f64() * 1e6,
                medians[i].as_secs_f64() / base
            );
        }
        println!();
        println!("| client key exchange alone (start + complete) | median | vs X25519 |");
        println!("|---|---:|---:|");
        for (i, (name, _, _)) in kx_pairs.iter().enumerate() {
            println!(
                "| {name} | {:.0} µs | {:.2}x |",
                kx_medians[i].as_secs_f64() * 1e6,
                kx_medians[i].as_secs_f64() / kx_medians[0].as_secs_f64()
            );
        }
    }
}
