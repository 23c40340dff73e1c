//! Development tooling for vitalgate, used by the end-to-end tests, the demo and developers:
//!
//! - [`pki`]: a throw-away test PKI (CA, server and client certificates, plus a rogue CA),
//!   generated at run time so nothing secret is checked in;
//! - [`fhir_server`]: a loopback FHIR R4 server over mutual TLS that validates Bundles against the
//!   official R4 JSON schema, applies conditional-create transactions and records what it stored;
//! - [`schema`]: the R4 JSON schema, compiled once ([`fhir_schema_validator`],
//!   [`validate_resource`]), for the agent's tests too;
//! - [`https_client`]: a tiny HTTPS/1.1 client for tests;
//! - [`bench_serial`]: `bench-serial`, the CPU / RSS and Observations-per-day tables of
//!   BENCHMARKS.md;
//! - [`serial_sim`]: serial device simulators (Nonin DF7, Masimo ASCII 1) on real
//!   pseudo-terminals, with unplug and replug.
//!
//! Nothing here is meant for production.

#![forbid(unsafe_code)]

pub mod bench_serial;
pub mod demo;
pub mod fhir_server;
pub mod https_client;
pub mod man;
pub mod pki;
pub mod schema;
pub mod serial_sim;

pub use schema::{fhir_schema_validator, validate_resource};
