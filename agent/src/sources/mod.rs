//! Sources: where readings enter the gateway. Each source owns its link (a broker connection,
//! a timer, a serial port, later a BLE connection), decodes with `device-drivers`, and sends
//! [`crate::pipeline::Ingest`] messages on the bounded pipeline channel.
pub mod ble;
pub mod mqtt;
pub mod serial;
pub mod simulator;
