//! The pipeline: driver records in, canonical readings durable in the outbox out.
//!
//! One file per job:
//! - [`devices`]: config → the runtime device table ([`DeviceContext`], [`DeviceTable`]);
//! - [`convert`] (pure): one driver record → readings (attribution, observation kind, effective
//!   time, identities from [`crate::identity`]);
//! - [`reduce`] (pure): stream reduction for continuous devices (spot check, interval, on
//!   change, all), run by streaming sources before anything reaches the pipeline task;
//! - [`task`]: the task that batches requests into one durable store write and answers the
//!   sources ([`Ingest`], [`Outcome`]).

pub mod convert;
pub mod devices;
pub mod reduce;
pub mod task;

pub use convert::{readings_from_record, CaptureClock, DeviceClockReading, Rejection};
pub use devices::{DeviceContext, DeviceTable, ReportedInfo};
pub use task::{delivery_digest, run, Ingest, Outcome, MAX_BATCH};
