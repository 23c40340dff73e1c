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
//!
//! After each prune it compacts the store ([`crate::store::compact`]) when that is worth it:
//! see [`compact_if_worth_it`].

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::store::{Outbox, ResealCursor, StoreError};
use crate::telemetry;

/// How often the keyring file is checked for a rotation.
pub const POLL: Duration = Duration::from_secs(5);
/// Records re-sealed per call (one flush each).
pub const BATCH: usize = 256;
/// How often expired tombstones are pruned.
pub const PRUNE_EVERY: Duration = Duration::from_secs(3600);
/// Compaction ([`crate::store::compact`]) is considered after each prune: only with at most
/// this many readings pending (a gateway that has just emptied its backlog, not one holding an
/// outage's worth: the copy blocks the store's other calls while it runs)...
pub const COMPACT_MAX_PENDING: u64 = 5_000;
/// ...when the store takes at least this much disk...
pub const COMPACT_MIN_DISK: u64 = 8 << 20;
/// ...and more than this many times the bytes of its live entries (a fresh copy of a small
/// store can itself be above this: sled's files have a floor)...
pub const COMPACT_RATIO: u64 = 4;
/// ...and, after a compaction in this run, more than this many times the size it left.
pub const COMPACT_REGROWTH: u64 = 2;
/// Pause between re-sealing batches.
const PAUSE: Duration = Duration::from_millis(20);

/// Runs until shutdown.
pub async fn run(store: Arc<Outbox>, stop: CancellationToken) {
    let mut pass_due = true;
    // The open pruned already.
    let mut next_prune = tokio::time::Instant::now() + PRUNE_EVERY;
    // The size right after this run's last compaction.
    let mut last_compacted: Option<u64> = None;
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
            let s = Arc::clone(&store);
            let last = last_compacted;
            match tokio::task::spawn_blocking(move || {
                compact_if_worth_it(&s, COMPACT_MIN_DISK, last)
            })
            .await
            {
                Ok(Ok(Some(r))) => {
                    last_compacted = Some(r.disk_after);
                    telemetry::StoreCompacted {
                        entries: r.entries,
                        live_bytes: r.live_bytes,
                        disk_before: r.disk_before,
                        disk_after: r.disk_after,
                        millis: r.took.as_millis(),
                    }
                    .emit();
                }
                Ok(Ok(None)) => {}
                Ok(Err(e)) => telemetry::StoreCompactionFailed { error: &e }.emit(),
                Err(e) => telemetry::TaskFailed {
                    task: "store compaction",
                    error: &e,
                }
                .emit(),
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

/// Compacts the store if it is worth it (see [`COMPACT_MAX_PENDING`], [`COMPACT_MIN_DISK`]:
/// `min_disk` in the daemon, [`COMPACT_RATIO`], [`COMPACT_REGROWTH`]: `last` is the size the
/// last compaction left).
///
/// # Errors
///
/// As [`Outbox::compact`], and the store's size probes.
pub fn compact_if_worth_it(
    store: &Outbox,
    min_disk: u64,
    last: Option<u64>,
) -> Result<Option<crate::store::CompactReport>, StoreError> {
    if store.stats()?.pending > COMPACT_MAX_PENDING {
        return Ok(None);
    }
    let disk = store.disk_bytes()?;
    if disk < min_disk
        || last.is_some_and(|l| disk <= COMPACT_REGROWTH.saturating_mul(l))
        || disk <= COMPACT_RATIO.saturating_mul(store.live_bytes()?)
    {
        return Ok(None);
    }
    store.compact().map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Insert, OutboxOptions, StoreKey};

    fn id(n: u32) -> [u8; 32] {
        let mut i = [0x5A; 32];
        i[..4].copy_from_slice(&n.to_be_bytes());
        i
    }

    #[test]
    fn compaction_waits_for_a_small_backlog_and_bloated_files() {
        let dir = tempfile::tempdir().unwrap();
        let store = Outbox::open(
            &dir.path().join("outbox"),
            StoreKey::from_bytes([3; 32]),
            OutboxOptions::default(),
        )
        .unwrap();
        let value = "x".repeat(200);
        let n = COMPACT_MAX_PENDING as u32 + 1;
        for chunk in (0..n).collect::<Vec<_>>().chunks(500) {
            let got = store
                .insert_many(chunk.iter().map(|&i| (id(i), &value)))
                .unwrap();
            assert!(got.iter().all(|g| *g == Insert::Stored));
        }
        // Too many pending: not now, whatever the files.
        assert!(compact_if_worth_it(&store, 0, None).unwrap().is_none());
        let ids: Vec<[u8; 32]> = (0..n).map(id).collect();
        for c in ids.chunks(500) {
            store.ack(c).unwrap();
        }
        // Delivered, but the files are under the floor.
        let disk = store.disk_bytes().unwrap();
        assert!(compact_if_worth_it(&store, disk + 1, None)
            .unwrap()
            .is_none());
        // Nor while the files are within twice what the last compaction left.
        assert!(compact_if_worth_it(&store, 0, Some(disk / 2))
            .unwrap()
            .is_none());
        // Delivered and bloated: compacted, and then not again until the files grow back.
        let r = compact_if_worth_it(&store, 0, None)
            .unwrap()
            .expect("compacted");
        assert!(r.disk_after < r.disk_before);
        assert!(compact_if_worth_it(&store, 0, Some(r.disk_after))
            .unwrap()
            .is_none());
    }
}
