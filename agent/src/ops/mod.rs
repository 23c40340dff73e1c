//! Operations: what a field technician and a fleet team see of a running gateway.
//!
//! - [`health`]: live per-device and uplink state, written by telemetry events.
//! - [`alarms`]: which conditions need someone (pure: inputs and `now` in, changes out).
pub mod alarms;
pub mod cert;
pub mod check_uplink;
pub mod doctor;
pub mod episodes;
pub mod fleet;
pub mod health;
pub mod notify;
pub mod probes;
pub mod runner;
pub mod status;
pub mod watchdog;
