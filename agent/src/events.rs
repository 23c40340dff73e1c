//! In-process events for embedders (the devkit demo, tests), delivered by
//! [`crate::telemetry::observe`].
//!
//! Unlike log lines, events may carry PHI (a stored reading's values): they never leave the
//! process and are only built when a subscriber asked for them. Every event is sent by the
//! `emit()` of a telemetry struct, never directly. The daemon itself subscribes nothing.

use crate::identity::ReadingId;
use crate::reading::Reading;

#[derive(Debug, Clone)]
pub enum AgentEvent {
    /// A new reading is durable in the outbox.
    Stored(Box<Reading>),
    /// A reading already in the outbox (or already uploaded) arrived again.
    Duplicate { reading_id: ReadingId },
    /// A record produced no reading (reason carries no PHI).
    Rejected { device: String, reason: String },
    /// The server accepted a reading; `location` is the server's Observation location.
    Accepted {
        reading_id: ReadingId,
        location: Option<String>,
        created: bool,
    },
    /// A reading was kept as a dead letter (rejected by the server, identifier collision, too
    /// large); it needs a technician.
    DeadLettered {
        reading_id: ReadingId,
        reason: String,
    },
    /// A Bundle that was sent (for the demo's printout).
    BundleSent { bundle: serde_json::Value },
    /// An upload attempt failed and will be retried.
    UplinkRetry { reason: String, after_ms: u64 },
    /// Uploads paused: the server refuses the gateway (`status`), readings stay pending.
    UplinkPaused { status: u16 },
    /// The pause that began with `status` ended after `paused_for_ms`.
    UplinkResumed { status: u16, paused_for_ms: u64 },
}
