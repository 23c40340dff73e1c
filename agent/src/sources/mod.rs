//! Sources: where readings enter the gateway. Each source owns its link (a broker connection,
//! a timer, later a BLE connection or a serial port), decodes with `device-drivers`, and sends
//! [`crate::pipeline::Ingest`] messages on the bounded pipeline channel.
pub mod ble;
pub mod mqtt;
pub mod simulator;
