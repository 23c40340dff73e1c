//! The uploader task: outbox → FHIR server, one Bundle at a time. A thin shell around
//! [`UploadScheduler`], which makes every decision (see its module doc for the table).
//!
//! ```text
//! loop:
//!   match scheduler.next(now):
//!     Wait(until) -> sleep until then (or shutdown)
//!     Fetch       -> batch = store.pending(batch_size)      (FIFO; corrupt records quarantined)
//!                    empty? wait for the pipeline's wake-up, a 30 s tick, or shutdown
//!                    scheduler.load(batch)
//!     Send(batch) -> build the Bundle (uplink::fhir)          mapping error -> Unmappable
//!                    send it (BundleSender), racing shutdown  shutdown -> return at once
//!                    classify the answer (uplink::outcome)    Accepted -> store.ack (the only way
//!                                                              a record leaves the outbox)
//!                    effect = scheduler.on_verdict(verdict, now)
//!                    carry the effect out: dead-letter a reading (never deleted), log a retry,
//!                    a pause (the alarm), a resume
//! ```
//!
//! One upload at a time per gateway (fhir-mapping.md §5.3). Conditional create makes a resend
//! of an already-committed Bundle harmless: the server answers `200 OK` for existing entries.
//! That is also why shutdown abandons an upload in flight instead of waiting for it: nothing is
//! acked before the answer, and the resend after a restart is idempotent.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::reading::Reading;
use crate::store::Outbox;
use crate::telemetry;
use crate::uplink::client::{BundleSender, SendError};
use crate::uplink::fhir::{self, GatewayInfo, MappingError};
use crate::uplink::outcome::{self, Outcome, RetryReason};
use crate::uplink::scheduler::{Effect, Next, SchedulerConfig, UploadScheduler, Verdict};

/// How often the uploader looks at the outbox when nobody wakes it.
pub const IDLE_POLL: Duration = Duration::from_secs(30);

pub struct Uploader<S> {
    pub store: Arc<Outbox>,
    pub sender: S,
    pub gateway: GatewayInfo,
    pub batch_size: usize,
    pub schedule: SchedulerConfig,
    pub wake: Arc<Notify>,
    /// Seeds the backoff jitter.
    pub seed: u64,
}

/// What happened to one Bundle, as the log and the dead letters need it.
enum Exchange {
    Delivered,
    Unmappable(MappingError),
    NoAnswer(SendError),
    NotConfirmed(RetryReason),
    Refused,
    Rejected { status: u16, detail: String },
}

impl<S: BundleSender> Uploader<S> {
    /// Runs until shutdown. Returns at once when `shutdown` fires, also mid-upload.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut scheduler = UploadScheduler::new(self.schedule, self.seed, |r: &Reading| {
            r.id.as_bytes().to_vec()
        });
        while !shutdown.is_cancelled() {
            match scheduler.next(Instant::now().into_std()) {
                Next::Wait { until } => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(Instant::from_std(until)) => {}
                        _ = shutdown.cancelled() => return,
                    }
                }
                Next::Fetch => {
                    let mut batch = self.pending().await;
                    batch.truncate(fhir::readings_that_fit(&batch));
                    if batch.is_empty() {
                        tokio::select! {
                            _ = self.wake.notified() => {}
                            _ = tokio::time::sleep(IDLE_POLL) => {}
                            _ = shutdown.cancelled() => return,
                        }
                    } else {
                        scheduler.load(batch);
                    }
                }
                Next::Send(batch) => {
                    let Some((verdict, exchange)) = self.exchange(&batch, &shutdown).await else {
                        return;
                    };
                    let effect = scheduler.on_verdict(verdict, Instant::now().into_std());
                    self.carry_out(effect, &exchange).await;
                }
            }
        }
    }

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

    /// Builds, sends and classifies one Bundle; acks it if the server confirmed it. `None` if
    /// shutdown came first (the request is dropped, nothing is acked).
    async fn exchange(
        &self,
        batch: &[Reading],
        shutdown: &CancellationToken,
    ) -> Option<(Verdict, Exchange)> {
        let (bundle, entries) = match fhir::build_transaction_bundle(&self.gateway, batch) {
            Ok(v) => v,
            Err(e) => return Some((Verdict::Unmappable, Exchange::Unmappable(e))),
        };
        let total = bundle["entry"].as_array().map_or(0, Vec::len);
        telemetry::BundleSent {
            bundle: &bundle,
            entries: total,
        }
        .emit();
        let answer = tokio::select! {
            biased;
            _ = shutdown.cancelled() => return None,
            r = self.sender.send(&bundle) => r,
        };
        let resp = match answer {
            Ok(r) => r,
            Err(e) => return Some((Verdict::Retry { after: None }, Exchange::NoAnswer(e))),
        };
        // The edge: the wall clock, only to read a Retry-After HTTP-date.
        #[allow(clippy::disallowed_methods)]
        let now = chrono::Utc::now();
        let outcome = outcome::classify(
            resp.status,
            resp.retry_after.as_deref(),
            &resp.body,
            total,
            &entries,
            now,
        );
        Some(match outcome {
            Outcome::Accepted(accepted) => {
                self.ack(accepted).await;
                (Verdict::Delivered, Exchange::Delivered)
            }
            Outcome::EntriesFailed {
                suspects,
                status,
                detail,
            } => {
                let positions = batch
                    .iter()
                    .enumerate()
                    .filter(|(_, r)| suspects.contains(&r.id))
                    .map(|(i, _)| i)
                    .collect();
                (
                    Verdict::EntriesFailed {
                        suspects: positions,
                        status,
                    },
                    Exchange::Rejected { status, detail },
                )
            }
            Outcome::Retry { after, reason } => {
                (Verdict::Retry { after }, Exchange::NotConfirmed(reason))
            }
            Outcome::Reject {
                status,
                operation_outcome,
            } => (
                Verdict::Rejected { status },
                Exchange::Rejected {
                    status,
                    detail: operation_outcome.unwrap_or_else(|| "no OperationOutcome".into()),
                },
            ),
            Outcome::Split => (
                Verdict::TooLarge,
                Exchange::Rejected {
                    status: 413,
                    detail: "payload too large".into(),
                },
            ),
            Outcome::Refused { status } => (Verdict::Refused { status }, Exchange::Refused),
            // SEAM(oauth): once the uplink has a token source, refresh the token here and
            // resend once before pausing (fhir-mapping.md §5.5: "401 that persists after a token
            // refresh" pauses). Today authentication is the client certificate only: pause.
            Outcome::Unauthorized => (Verdict::Refused { status: 401 }, Exchange::Refused),
        })
    }

    async fn ack(&self, accepted: Vec<outcome::Accepted>) {
        let ids: Vec<[u8; 32]> = accepted.iter().map(|a| *a.reading_id.as_bytes()).collect();
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
            telemetry::UplinkAccepted {
                reading_id: &a.reading_id,
                created: a.is_created(),
                location: a.location.as_deref(),
            }
            .emit();
        }
    }

    async fn carry_out(&self, effect: Option<Effect<Reading>>, exchange: &Exchange) {
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        match effect {
            None => {}
            Some(Effect::DeadLetter(reading)) => match exchange {
                Exchange::Rejected { status, detail } => {
                    let reason =
                        format!("FHIR server answered {status} to this reading alone: {detail}");
                    self.dead_letter(&reading, Some(*status), reason).await;
                }
                Exchange::Unmappable(e) => {
                    self.dead_letter(&reading, None, e.to_string()).await;
                }
                _ => tracing::error!(
                    "dead letter requested without a rejection; reading kept pending"
                ),
            },
            Some(Effect::RetryIn(delay)) => match exchange {
                Exchange::NoAnswer(error) => telemetry::UplinkSendFailed {
                    error,
                    retry_in_ms: ms(delay),
                }
                .emit(),
                Exchange::NotConfirmed(reason) => telemetry::UplinkRetry {
                    reason,
                    after_ms: ms(delay),
                }
                .emit(),
                _ => {}
            },
            Some(Effect::Paused {
                cause,
                next_probe_in,
            }) => telemetry::UplinkPaused {
                cause,
                next_probe_ms: ms(next_probe_in),
            }
            .emit(),
            Some(Effect::StillPaused {
                next_probe_in,
                probes,
            }) => match exchange {
                // A probe that got no answer at all still says why (a TLS failure needs a
                // technician as much as the pause does).
                Exchange::NoAnswer(error) => telemetry::UplinkSendFailed {
                    error,
                    retry_in_ms: ms(next_probe_in),
                }
                .emit(),
                _ => telemetry::UplinkProbeFailed {
                    probes,
                    next_probe_ms: ms(next_probe_in),
                }
                .emit(),
            },
            Some(Effect::Resumed {
                cause,
                paused_for,
                probes,
            }) => telemetry::UplinkResumed {
                cause,
                paused_for_ms: ms(paused_for),
                probes,
            }
            .emit(),
        }
    }

    async fn dead_letter(&self, r: &Reading, status: Option<u16>, reason: String) {
        let store = Arc::clone(&self.store);
        let id = *r.id.as_bytes();
        let stored = reason.clone();
        match tokio::task::spawn_blocking(move || store.dead_letter(&id, &stored)).await {
            Ok(Ok(())) => telemetry::UplinkDeadLettered {
                reading_id: &r.id,
                status,
                reason: &reason,
            }
            .emit(),
            Ok(Err(e)) => {
                tracing::error!(error = %e, "cannot move a rejected reading to the dead letters; it stays pending")
            }
            Err(e) => tracing::error!(error = %e, "dead-letter task failed"),
        }
    }
}
