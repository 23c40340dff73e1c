//! The watchdog: `WATCHDOG=1` goes to systemd only while every monitored task makes progress.
//!
//! A liveness check, not a timer. Each long-running task (the pipeline, the uploader, every
//! source) runs inside [`monitored`] with a [`Heartbeat`]. It calls [`beat`] each time round
//! its loop, and wraps the waits that may legitimately last long (an empty input channel, a
//! backoff sleep, the MQTT event loop's poll) in [`idle`], which beats while the task is parked
//! there. Work is never wrapped: a store write stuck in fsync, a deadlock on a channel or a
//! lock, a task awaiting something that cannot happen, all stop the beats.
//!
//! The watchdog task checks every heartbeat at half systemd's `WatchdogSec`. If each one beat
//! within its allowance ([`Liveness::check`], pure in `now`) it sends `WATCHDOG=1`; otherwise it
//! logs once which task is stalled and sends nothing, so systemd kills the agent (SIGABRT)
//! after `WatchdogSec` and restarts it (`Restart=on-failure`). Nothing is lost: nothing was
//! acknowledged upstream that is not durable.
//!
//! A heartbeat is unregistered when its task ends (it is dropped with the task's future), so
//! a simulator that finished its count or a source retired by a reload is not "stalled".

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::notify::Notifier;
use crate::telemetry;

/// How often a task parked in [`idle`] beats.
pub const IDLE_BEAT: Duration = Duration::from_secs(1);

/// Settings of the watchdog task.
#[derive(Debug, Clone)]
pub struct WatchdogSettings {
    /// Where `WATCHDOG=1` goes (`None`: check and log only).
    pub notifier: Option<Notifier>,
    /// How often the check runs (half of `WatchdogSec`).
    pub check_every: Duration,
    /// How long a task may go without a beat (its own allowance may add to this).
    pub max_silence: Duration,
}

impl WatchdogSettings {
    /// From systemd's environment: `WatchdogSec=W` gives a check every W/2 and a silence
    /// allowance of W. Without a watchdog: checks every 10 s, 60 s allowance, nothing sent.
    pub fn from_env(notifier: Option<Notifier>) -> WatchdogSettings {
        match super::notify::watchdog_timeout_from_env() {
            Some(w) => WatchdogSettings {
                notifier,
                check_every: (w / 2).max(Duration::from_millis(100)),
                max_silence: w,
            },
            None => WatchdogSettings {
                notifier: None,
                check_every: Duration::from_secs(10),
                max_silence: Duration::from_secs(60),
            },
        }
    }
}

struct Beat {
    name: String,
    max_silence: Duration,
    last_ms: AtomicU64,
    epoch: Instant,
}

/// A task's heartbeat. Cheap to clone; dropping every clone unregisters it.
#[derive(Clone)]
pub struct Heartbeat(Arc<Beat>);

impl Heartbeat {
    pub fn beat(&self) {
        let ms = u64::try_from(self.0.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.0.last_ms.store(ms, Ordering::Relaxed);
    }
}

/// The registry of heartbeats.
#[derive(Clone)]
pub struct Liveness {
    beats: Arc<Mutex<Vec<Weak<Beat>>>>,
    epoch: Instant,
}

impl Default for Liveness {
    fn default() -> Self {
        Liveness {
            beats: Arc::new(Mutex::new(Vec::new())),
            epoch: Instant::now(),
        }
    }
}

/// One task as the check saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskLiveness {
    pub task: String,
    /// Milliseconds since its last beat.
    pub silent_ms: u64,
    pub live: bool,
}

impl Liveness {
    /// Registers a task that may stay silent for `max_silence` (it beats now).
    pub fn heartbeat(&self, name: &str, max_silence: Duration) -> Heartbeat {
        let b = Arc::new(Beat {
            name: name.to_string(),
            max_silence,
            last_ms: AtomicU64::new(0),
            epoch: self.epoch,
        });
        let hb = Heartbeat(b);
        hb.beat();
        let mut v = self.beats.lock().unwrap_or_else(PoisonError::into_inner);
        v.retain(|w| w.strong_count() > 0);
        v.push(Arc::downgrade(&hb.0));
        hb
    }

    /// Every registered task at `now`, in registration order.
    pub fn check(&self, now: Instant) -> Vec<TaskLiveness> {
        let now_ms = u64::try_from(now.saturating_duration_since(self.epoch).as_millis())
            .unwrap_or(u64::MAX);
        let mut v = self.beats.lock().unwrap_or_else(PoisonError::into_inner);
        v.retain(|w| w.strong_count() > 0);
        v.iter()
            .filter_map(Weak::upgrade)
            .map(|b| {
                let silent = now_ms.saturating_sub(b.last_ms.load(Ordering::Relaxed));
                TaskLiveness {
                    task: b.name.clone(),
                    silent_ms: silent,
                    live: u128::from(silent) <= b.max_silence.as_millis(),
                }
            })
            .collect()
    }
}

tokio::task_local! {
    static CURRENT: Heartbeat;
}

/// Runs `fut` as the task owning `hb`: [`beat`] and [`idle`] inside it act on `hb`.
pub async fn monitored<F: Future>(hb: Heartbeat, fut: F) -> F::Output {
    CURRENT.scope(hb, fut).await
}

/// The heartbeat of the current task, to hand to work that runs elsewhere on its behalf (a
/// thread with its own runtime, such as the BLE transport's, which then runs its loop inside
/// [`monitored`] with it). `None` outside [`monitored`].
pub fn current() -> Option<Heartbeat> {
    CURRENT.try_with(Heartbeat::clone).ok()
}

/// The current task made progress. Does nothing outside [`monitored`].
pub fn beat() {
    let _ = CURRENT.try_with(Heartbeat::beat);
}

/// Awaits a wait that may legitimately last long (no input, a backoff), beating meanwhile.
/// Never wrap work in this: a stuck write would look alive.
pub async fn idle<F: Future>(fut: F) -> F::Output {
    let Ok(hb) = CURRENT.try_with(Heartbeat::clone) else {
        return fut.await;
    };
    tokio::pin!(fut);
    loop {
        hb.beat();
        tokio::select! {
            out = &mut fut => {
                hb.beat();
                return out;
            }
            _ = tokio::time::sleep(IDLE_BEAT) => {}
        }
    }
}

/// The watchdog task: runs until `shutdown`.
pub async fn run(liveness: Liveness, settings: WatchdogSettings, shutdown: CancellationToken) {
    let mut stalled: Vec<String> = Vec::new();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(settings.check_every) => {}
            _ = shutdown.cancelled() => return,
        }
        let report = liveness.check(Instant::now());
        let now_stalled: Vec<&TaskLiveness> = report.iter().filter(|t| !t.live).collect();
        for t in &now_stalled {
            if !stalled.contains(&t.task) {
                telemetry::TaskStalled {
                    task: &t.task,
                    silent_ms: t.silent_ms,
                    watchdog: settings.notifier.is_some(),
                }
                .emit();
            }
        }
        for name in &stalled {
            if !now_stalled.iter().any(|t| &t.task == name) {
                telemetry::TaskRecovered { task: name }.emit();
            }
        }
        stalled = now_stalled.iter().map(|t| t.task.clone()).collect();
        if stalled.is_empty() {
            if let Some(n) = &settings.notifier {
                if let Err(e) = n.send("WATCHDOG=1") {
                    tracing::debug!(error = %e, "sd_notify WATCHDOG failed");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_task_is_live_while_it_beats_within_its_allowance_and_forgotten_when_dropped() {
        let l = Liveness::default();
        let a = l.heartbeat("pipeline", Duration::from_secs(10));
        let b = l.heartbeat("uploader", Duration::from_secs(40));
        let t0 = Instant::now();
        let r = l.check(t0 + Duration::from_secs(20));
        assert_eq!(
            r.iter()
                .map(|t| (t.task.as_str(), t.live))
                .collect::<Vec<_>>(),
            vec![("pipeline", false), ("uploader", true)]
        );
        a.beat();
        assert!(l.check(Instant::now()).iter().all(|t| t.live));
        drop(b);
        assert_eq!(l.check(Instant::now()).len(), 1);
        drop(a);
        assert!(l.check(Instant::now()).is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn idle_keeps_a_parked_task_live_and_a_plain_await_does_not() {
        // Real time: heartbeats use the monotonic clock, not tokio's.
        let l = Liveness::default();
        let hb = l.heartbeat("t", Duration::from_secs(3));
        let task = tokio::spawn(monitored(hb, async {
            idle(tokio::time::sleep(Duration::from_secs(5))).await;
            tokio::time::sleep(Duration::from_secs(5)).await;
        }));
        tokio::time::sleep(Duration::from_secs(4)).await;
        assert!(l.check(Instant::now())[0].live, "parked in idle: live");
        tokio::time::sleep(Duration::from_millis(5500)).await;
        let r = l.check(Instant::now());
        assert!(
            !r[0].live,
            "a plain await for longer than the allowance: {r:?}"
        );
        task.await.unwrap();
    }

    #[test]
    fn a_task_that_stops_beating_is_reported_stalled() {
        let l = Liveness::default();
        let _hb = l.heartbeat("store", Duration::from_millis(1));
        std::thread::sleep(Duration::from_millis(20));
        let r = l.check(Instant::now());
        assert!(!r[0].live && r[0].silent_ms >= 20, "{r:?}");
    }
}
