//! # device-drivers: what medical devices say, decoded without I/O
//!
//! This crate turns the bytes (or text) a medical device emits into typed values. It is
//! *sans-IO*: inputs are `&[u8]` / `&str` and, where time matters, an explicit `now`; outputs are
//! values or typed errors. It never opens a port, never sleeps, never logs and never depends on
//! an async runtime (no tokio, btleplug, tokio-serial or sled; `cargo tree -p device-drivers`
//! proves it). Callers (the agent's transports) own the I/O, the logging and the counters.
//!
//! Modules:
//! - [`decimal`]: exact decimal numbers (`mantissa × 10^exponent`), so that a device's `36.50 °C`
//!   is never rounded through a binary float on its way to FHIR.
//! - [`record`]: the driver-level canonical record every decoder produces (readings with UCUM units,
//!   missing values, flags, device time, device identity). The agent wraps it into its `Reading`.
//! - [`status`]: the device-status vocabulary ([`Status`]) every decoder emits in `Record::flags`,
//!   and what each status means for the reading ([`StatusClass`]), so the agent matches types,
//!   never strings.
//! - [`gatt`]: Bluetooth SIG GATT health profiles (IEEE 11073 SFLOAT/FLOAT, BP, weight, body
//!   composition, thermometer, PLX, glucose + RACP, heart rate, time, device information).
//! - [`serial`]: serial framers (Nonin, Masimo, Tanita, Philips MIB) and the configurable line parser.
//! - [`omh`]: Open mHealth / IEEE 1752.1 data points as published on MQTT by other hubs.
#![forbid(unsafe_code)]
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod decimal;
pub mod gatt;
pub mod omh;
pub mod record;
pub mod serial;
pub mod status;

pub use decimal::Decimal;
pub use record::{
    AbsentReason, AbsentValue, BodySite, DeviceTime, MeasurementContext, Reading, ReadingType,
    Record, Specimen,
};
pub use status::{BpStatusBit, MeasurementStatus, Status, StatusClass, UnknownStatus};
