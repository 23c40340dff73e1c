//! vitalgate: the edge agent. See ARCHITECTURE.md for the map.
//!
//! Layers (dependencies point down): `sources` (MQTT, simulator; BLE and serial later) →
//! `pipeline` (attribution, ids) → `store` (encrypted outbox) → `uploader` + `uplink` (FHIR over
//! mTLS). `app` wires them; `cli` is the command line; `config` checks the file before anything
//! opens.
#![forbid(unsafe_code)]
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod app;
pub mod audit;
pub mod cli;
pub mod config;
pub mod consent;
pub mod consent_purge;
pub mod events;
pub mod export;
pub mod identity;
pub mod logging;
pub mod ops;
pub mod pipeline;
pub mod reading;
pub mod sources;
pub mod store;
pub mod store_upkeep;
pub mod supervisor;
pub mod telemetry;
pub mod tls;
pub mod uplink;
pub mod uploader;
