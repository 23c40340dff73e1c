//! The store's upkeep task: a thin shell over [`Outbox::reload_keyring`],
//! [`Outbox::reseal_batch`] (see [`crate::store::keyring`]) and [`Outbox::prune_tombstones`].
//!
//! Tombstones (ids of uploaded readings kept to recognise late redeliveries) and the index
//! entries quarantine leaves behind are pruned every [`PRUNE_EVERY`], not only at open: a
//! gateway that runs for months would otherwise keep every id it ever uploaded.
//!
//! Every [`POLL`] it re-reads the keyring file; when `vitalgate keys rotate` added a key, new
//! records are sealed with it from that moment, and records sealed with older keys are
//! re-sealed in the background, [`BATCH`] at a time with a pause between batches so ingest and
//! upload keep the disk. It also makes one pass at start, which finishes a pass a restart
//! interrupted and moves a format 4 store's records (legacy key) to a data key. A record
//! stays readable throughout: the old keys stay in the keyring.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::store::{Outbox, ResealCursor};
use crate::telemetry;

/// How often the keyring file is checked for a rotation.
pub const POLL: Duration = Duration::from_secs(5);
/// Records re-sealed per call (one flush each).
pub const BATCH: usize = 256;
/// How often expired tombstones are pruned.
pub const PRUNE_EVERY: Duration = Duration::from_secs(3600);
/// Pause between re-sealing batches.
const PAUSE: Duration = Duration::from_millis(20);

/// Runs until shutdown.
pub async fn run(store: Arc<Outbox>, stop: CancellationToken) {
    let mut pass_due = true;
    // The open pruned already.
    let mut next_prune = tokio::time::Instant::now() + PRUNE_EVERY;
    loop {
        if tokio::time::Instant::now() >= next_prune {
            next_prune += PRUNE_EVERY;
            let s = Arc::clone(&store);
            // The edge: the wall clock, compared with the tombstones' times.
            let pruned = tokio::task::spawn_blocking(move || {
                s.prune_tombstones(std::time::SystemTime::now())
            })
            .await;
            if let Ok(Ok(n)) = pruned {
                telemetry::StoreTombstonesPruned { count: n }.emit();
            }
        }
        let s = Arc::clone(&store);
        let previous = store.active_key_id();
        match tokio::task::spawn_blocking(move || s.reload_keyring()).await {
            Ok(Ok(Some(key_id))) => {
                telemetry::StoreKeyActivated { key_id, previous }.emit();
                pass_due = true;
            }
            Ok(Ok(None)) => {}
            Ok(Err(e)) if e.needs_reopen() => {}
            Ok(Err(e)) => telemetry::StoreKeyringReloadFailed { error: &e }.emit(),
            Err(_) => {}
        }
        if pass_due {
            pass_due = !reseal_pass(&store, &stop).await;
        }
        tokio::select! {
            _ = tokio::time::sleep(POLL) => {}
            _ = stop.cancelled() => return,
        }
    }
}

/// One pass over the store; `true` if it went to the end.
async fn reseal_pass(store: &Arc<Outbox>, stop: &CancellationToken) -> bool {
    let Some(key_id) = store.active_key_id() else {
        return false;
    };
    let mut cursor = Some(ResealCursor::default());
    let mut records = 0;
    while let Some(c) = cursor {
        let s = Arc::clone(store);
        match tokio::task::spawn_blocking(move || s.reseal_batch(c, BATCH)).await {
            Ok(Ok((n, next))) => {
                records += n;
                cursor = next;
            }
            // The store faulted (the pipeline handles that) or the task failed: try again at
            // the next poll.
            _ => {
                telemetry::StoreResealed { key_id, records }.emit();
                return false;
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(PAUSE) => {}
            _ = stop.cancelled() => return false,
        }
    }
    telemetry::StoreResealed { key_id, records }.emit();
    true
}
