//! vitalgate: the edge agent. See ARCHITECTURE.md for the map.
pub mod cli;
pub mod reading;
pub mod store;
