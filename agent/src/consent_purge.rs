//! The consent purge task (config `[consent] purge_after_days`; see [`crate::consent`]): a thin
//! shell. Every [`consent::purge_interval`] (and once at start) it re-reads the consent state
//! exactly as the uploader does ([`ConsentSource`]: the clinic file is re-read when it changed,
//! so a withdrawal needs no restart), asks the store to remove the pending readings for which
//! the pure [`consent::purge_due`] holds at `now` (at most [`PURGE_BATCH`] per sled
//! transaction, `Outbox::purge_pending_where`), and emits one audit event per purged reading
//! (`telemetry::ConsentPurged`: counter `consent_purged`, no patient identifier).
//!
//! The uploader never sends a withdrawn patient's reading (it asks consent before every
//! Bundle), so removing one it has queued is harmless: it is dropped from the queue unsent.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;

use crate::config::ConsentConfig;
use crate::consent;
use crate::reading::Reading;
use crate::store::{Outbox, PendingRecord};
use crate::telemetry;
use crate::uploader::ConsentSource;

/// Readings removed per sled transaction.
pub const PURGE_BATCH: usize = 256;

/// Runs until shutdown. `purge_after` is the configured purge age.
pub async fn run(
    store: Arc<Outbox>,
    cfg: ConsentConfig,
    purge_after: Duration,
    stop: CancellationToken,
) {
    let mut source = ConsentSource::new(&cfg);
    let interval = consent::purge_interval(purge_after);
    loop {
        round(&store, &mut source, purge_after).await;
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = stop.cancelled() => return,
        }
    }
}

/// One pass over the outbox, in batches until nothing more is due. Returns how many readings
/// were purged.
async fn round(store: &Arc<Outbox>, source: &mut ConsentSource, purge_after: Duration) -> usize {
    let state = source.refresh().clone();
    if state.withdrawn_count().unwrap_or(0) == 0 {
        // No withdrawal known (none, or the consent source is unusable): nothing is due.
        return 0;
    }
    let mut total = 0;
    loop {
        // The edge: the wall clock, compared with the store's reception times.
        let now = SystemTime::now();
        let (store, state) = (Arc::clone(store), state.clone());
        let batch = tokio::task::spawn_blocking(move || {
            store.purge_pending_where::<Reading>(PURGE_BATCH, |p: &PendingRecord<Reading>| {
                consent::purge_due(&state, purge_after, &p.value, p.enqueued_at, now)
            })
        })
        .await;
        let purged = match batch {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => {
                telemetry::ConsentPurgeFailed { error: &e }.emit();
                return total;
            }
            Err(e) => {
                telemetry::ConsentPurgeFailed { error: &e }.emit();
                return total;
            }
        };
        for p in &purged {
            let stored_days = now
                .duration_since(p.enqueued_at)
                .map_or(0, |d| d.as_secs() / 86_400);
            telemetry::ConsentPurged {
                reading: &p.value.short_id(),
                reading_id: &p.value.id,
                kind: p.value.kind.as_str(),
                device: &p.value.device.name,
                stored_days,
            }
            .emit();
        }
        total += purged.len();
        if purged.len() < PURGE_BATCH {
            return total;
        }
    }
}
