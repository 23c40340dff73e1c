//! In-process events for embedders (the devkit demo, tests).
//!
//! Unlike log lines, events may carry PHI (a stored reading's values): they never leave the
//! process and are only delivered to a subscriber that asked for them
//! (`app::run(.., Some(sender))`). The daemon itself subscribes nothing.

use crate::reading::Reading;

#[derive(Debug, Clone)]
pub enum AgentEvent {
    /// A new reading is durable in the outbox.
    Stored(Box<Reading>),
    /// A reading already in the outbox (or already uploaded) arrived again.
    Duplicate { reading_id: String },
    /// A record produced no reading (reason carries no PHI).
    Rejected { device: String, reason: String },
    /// The server accepted a reading; `location` is the server's Observation location.
    Accepted {
        reading_id: String,
        location: Option<String>,
        created: bool,
    },
    /// The server rejected a reading for good; it was moved to the dead letters.
    DeadLettered { reading_id: String, reason: String },
    /// A Bundle that was sent (for the demo's printout).
    BundleSent { bundle: serde_json::Value },
    /// An upload attempt failed and will be retried.
    UplinkRetry { reason: String, after_ms: u64 },
}
