//! The uploader task: outbox → FHIR server, one Bundle at a time.
//!
//! ```text
//! loop:
//!   batch = store.pending(batch_size)            (FIFO; corrupt records are quarantined by the store)
//!   empty?  wait for the pipeline's wake-up, a 30 s tick, or shutdown
//!   send batch as a transaction Bundle           (uplink::fhir builds it; uplink::client sends it)
//!   classify the answer                          (uplink::outcome, pure)
//!     Accepted  -> store.ack(ids)                (the only way a record leaves the outbox)
//!     Retry     -> same batch after backoff with jitter (Retry-After as a floor)
//!     Reject    -> bisect until the bad reading is alone, then dead-letter it (never deleted)
//!     Split     -> 413: halve the batch
//! ```
//!
//! One upload at a time per gateway (fhir-mapping.md §5.3). Conditional create makes a resend
//! of an already-committed Bundle harmless: the server answers `200 OK` for existing entries.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::reading::Reading;
use crate::store::Outbox;
use crate::telemetry;
use crate::uplink::backoff::Backoff;
use crate::uplink::client::UplinkClient;
use crate::uplink::fhir::{self, GatewayInfo};
use crate::uplink::outcome::{self, Outcome};

/// How often the uploader looks at the outbox when nobody wakes it.
pub const IDLE_POLL: Duration = Duration::from_secs(30);

pub struct Uploader {
    pub store: Arc<Outbox>,
    pub client: UplinkClient,
    pub gateway: GatewayInfo,
    pub batch_size: usize,
    pub backoff: Backoff,
    pub wake: Arc<Notify>,
}

impl Uploader {
    async fn pending(&self) -> Vec<Reading> {
        let store = Arc::clone(&self.store);
        let n = self.batch_size;
        match tokio::task::spawn_blocking(move || store.pending::<Reading>(n)).await {
            Ok(Ok(v)) => v.into_iter().map(|p| p.value).collect(),
            Ok(Err(e)) => {
                tracing::error!(error = %e, "cannot read the outbox");
                Vec::new()
            }
            Err(e) => {
                tracing::error!(error = %e, "outbox read task failed");
                Vec::new()
            }
        }
    }

    /// Runs until shutdown.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut attempt: u32 = 0;
        loop {
            // The watchdog: a beat per round; the waits below are idle, the store and the
            // HTTP request are not (the request is bounded by uplink.timeout_secs).
            crate::ops::watchdog::beat();
            if shutdown.is_cancelled() {
                break;
            }
            let mut batch = self.pending().await;
            batch.truncate(fhir::readings_that_fit(&batch));
            if batch.is_empty() {
                let stop = crate::ops::watchdog::idle(async {
                    tokio::select! {
                        _ = self.wake.notified() => false,
                        _ = tokio::time::sleep(IDLE_POLL) => false,
                        _ = shutdown.cancelled() => true,
                    }
                })
                .await;
                if stop {
                    break;
                }
                continue;
            }
            let mut work: VecDeque<Vec<Reading>> = VecDeque::from([batch]);
            while let Some(b) = work.pop_front() {
                match self.send(&b).await {
                    Step::Done => attempt = 0,
                    Step::Retry { reason, after, tls } => {
                        let wait = self.backoff.delay(attempt, after, &mut rand::rng());
                        attempt = attempt.saturating_add(1);
                        telemetry::UplinkRetry {
                            reason: &reason,
                            after_ms: wait.as_millis() as u64,
                            tls,
                        }
                        .emit();
                        let stop = crate::ops::watchdog::idle(async {
                            tokio::select! {
                                _ = tokio::time::sleep(wait) => false,
                                _ = shutdown.cancelled() => true,
                            }
                        })
                        .await;
                        if stop {
                            return;
                        }
                        // Re-read the outbox: the batch may have grown, order is kept.
                        work.clear();
                    }
                    Step::Bisect { status, detail } => {
                        attempt = 0;
                        if b.len() <= 1 {
                            for r in &b {
                                self.dead_letter(r, status, &detail).await;
                            }
                        } else {
                            let mut left = b;
                            let right = left.split_off(left.len() / 2);
                            work.push_front(right);
                            work.push_front(left);
                        }
                    }
                }
            }
        }
    }

    async fn dead_letter(&self, r: &Reading, status: u16, detail: &str) {
        let store = Arc::clone(&self.store);
        let id = *r.id.as_bytes();
        let reason = format!("FHIR server answered {status}: {detail}");
        let reason2 = reason.clone();
        let res = tokio::task::spawn_blocking(move || store.dead_letter(&id, &reason2)).await;
        match res {
            Ok(Ok(())) => {
                telemetry::UplinkDeadLettered {
                    reading_id: &r.id,
                    status,
                    reason: &reason,
                }
                .emit();
            }
            Ok(Err(e)) => {
                tracing::error!(error = %e, "cannot move a rejected reading to the dead letters; it stays pending")
            }
            Err(e) => tracing::error!(error = %e, "dead-letter task failed"),
        }
    }

    async fn send(&self, batch: &[Reading]) -> Step {
        let (bundle, entries) = match fhir::build_transaction_bundle(&self.gateway, batch) {
            Ok(v) => v,
            Err(e) => {
                // A reading we cannot map is a bug or a corrupt record: isolate it.
                return Step::Bisect {
                    status: 0,
                    detail: format!("cannot map to FHIR: {e}"),
                };
            }
        };
        telemetry::BundleSent {
            bundle: &bundle,
            entries: bundle["entry"].as_array().map_or(0, Vec::len),
        }
        .emit();
        let resp = match self.client.send_bundle(&bundle).await {
            Ok(r) => r,
            Err(e) => {
                return Step::Retry {
                    tls: e.is_tls(),
                    reason: e.to_string(),
                    after: None,
                }
            }
        };
        let total = bundle["entry"].as_array().map_or(0, Vec::len);
        match outcome::classify(
            resp.status,
            resp.retry_after.as_deref(),
            &resp.body,
            total,
            &entries,
        ) {
            Outcome::Accepted(accepted) => {
                let ids: Vec<[u8; 32]> =
                    accepted.iter().map(|a| *a.reading_id.as_bytes()).collect();
                let store = Arc::clone(&self.store);
                match tokio::task::spawn_blocking(move || store.ack(&ids)).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => {
                        // The server has them; a resend is harmless (conditional create).
                        tracing::error!(error = %e, "server accepted the readings but the outbox could not record it; they will be resent");
                    }
                    Err(e) => tracing::error!(error = %e, "ack task failed"),
                }
                for a in accepted {
                    let created = a.is_created();
                    telemetry::UplinkAccepted {
                        reading_id: &a.reading_id,
                        created,
                        location: a.location.as_deref(),
                    }
                    .emit();
                }
                Step::Done
            }
            Outcome::Retry { after, reason } => Step::Retry {
                reason,
                after,
                tls: false,
            },
            Outcome::Unauthorized => Step::Retry {
                reason: "server answered 401 Unauthorized (check the client certificate)".into(),
                after: None,
                tls: false,
            },
            Outcome::Split => Step::Bisect {
                status: 413,
                detail: "payload too large".into(),
            },
            Outcome::Reject {
                status,
                operation_outcome,
            } => Step::Bisect {
                status,
                detail: operation_outcome.unwrap_or_else(|| "no OperationOutcome".into()),
            },
        }
    }
}

enum Step {
    Done,
    Retry {
        reason: String,
        after: Option<Duration>,
        tls: bool,
    },
    Bisect {
        status: u16,
        detail: String,
    },
}
