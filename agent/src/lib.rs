//! vitalgate: the edge agent. See ARCHITECTURE.md for the map.
pub mod cli;
pub mod config;
pub mod reading;
