//! The app's task set: spawn, watch, retire (reload) and drain the agent's tasks.
//!
//! Every task gets a child of the shutdown token, so a reload can stop one task (a source
//! whose device changed, the uploader to load new settings) without stopping the rest, and a
//! name for the line that reports it. A task may have a liveness allowance: it then runs
//! inside [`watchdog::monitored`] with a heartbeat (see [`crate::ops::watchdog`]).
//!
//! The rules (ARCHITECTURE.md, "Supervision"): a task that ends before shutdown was requested
//! is a failure if it is critical or panicked; a task retired by a reload ending is not.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use tokio::task::{Id, JoinError, JoinSet};
use tokio_util::sync::CancellationToken;

use crate::app::RunError;
use crate::ops::watchdog::{self, Liveness};
use crate::telemetry;

pub type TaskFuture = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

struct Meta {
    name: String,
    key: Option<String>,
    critical: bool,
    token: CancellationToken,
    abort: tokio::task::AbortHandle,
    retiring: bool,
}

pub struct Supervisor {
    tasks: JoinSet<()>,
    meta: HashMap<Id, Meta>,
    shutdown: CancellationToken,
    liveness: Liveness,
}

impl Supervisor {
    pub fn new(shutdown: CancellationToken, liveness: Liveness) -> Supervisor {
        Supervisor {
            tasks: JoinSet::new(),
            meta: HashMap::new(),
            shutdown,
            liveness,
        }
    }

    /// Spawns a task. `key` names what a reload may replace (`"mqtt"`, `"simulator:x"`,
    /// `"uploader"`...); `allowance` makes it watched by the watchdog.
    pub fn spawn(
        &mut self,
        name: &str,
        key: Option<&str>,
        critical: bool,
        allowance: Option<Duration>,
        make: impl FnOnce(CancellationToken) -> TaskFuture,
    ) {
        let token = self.shutdown.child_token();
        let fut = make(token.clone());
        let fut: TaskFuture = match allowance {
            Some(a) => Box::pin(watchdog::monitored(self.liveness.heartbeat(name, a), fut)),
            None => fut,
        };
        let handle = self.tasks.spawn(fut);
        let id = handle.id();
        self.meta.insert(
            id,
            Meta {
                name: name.to_string(),
                key: key.map(str::to_string),
                critical,
                token,
                abort: handle,
                retiring: false,
            },
        );
    }

    /// The keys of the running (not retiring) tasks.
    pub fn keys(&self) -> Vec<String> {
        self.meta
            .values()
            .filter(|m| !m.retiring)
            .filter_map(|m| m.key.clone())
            .collect()
    }

    /// Stops the tasks with these keys and waits for them, at most `grace` (then aborts
    /// them). Another task ending meanwhile is handled as usual; its failure is returned.
    pub async fn retire(&mut self, keys: &[String], grace: Duration) -> Option<RunError> {
        let mut waiting: Vec<Id> = Vec::new();
        for (id, m) in &mut self.meta {
            if m.key.as_ref().is_some_and(|k| keys.contains(k)) && !m.retiring {
                m.retiring = true;
                m.token.cancel();
                waiting.push(*id);
            }
        }
        let deadline = tokio::time::Instant::now() + grace;
        let mut failure = None;
        while waiting.iter().any(|id| self.meta.contains_key(id)) {
            match tokio::time::timeout_at(deadline, self.tasks.join_next_with_id()).await {
                Ok(Some(r)) => {
                    if let Some(e) = self.ended(r) {
                        failure.get_or_insert(e);
                    }
                }
                Ok(None) => break,
                Err(_) => {
                    tracing::warn!("a task replaced by the reload did not stop in time; aborted");
                    for (_, m) in self.meta.iter().filter(|(id, _)| waiting.contains(id)) {
                        m.abort.abort();
                    }
                    break;
                }
            }
        }
        failure
    }

    /// Waits for the next task to end; `Some(Some(e))` when that is a failure.
    pub async fn join_next(&mut self) -> Option<Option<RunError>> {
        let r = self.tasks.join_next_with_id().await?;
        Some(self.ended(r))
    }

    fn ended(&mut self, r: Result<(Id, ()), JoinError>) -> Option<RunError> {
        let (id, err) = match r {
            Ok((id, ())) => (id, None),
            Err(e) => (e.id(), Some(e)),
        };
        let m = self.meta.remove(&id)?;
        let panicked = err.as_ref().is_some_and(JoinError::is_panic);
        if m.retiring && !panicked {
            return None;
        }
        if self.shutdown.is_cancelled() && err.is_none() {
            return None;
        }
        if m.critical || panicked || (err.is_some() && !m.retiring) {
            return Some(task_ended(&m.name, err));
        }
        None
    }

    /// After shutdown: waits for every task, at most `grace`, then aborts the rest.
    pub async fn drain(mut self, grace: Duration) {
        let rest = async { while self.tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(grace, rest).await.is_err() {
            tracing::warn!("some tasks did not stop within the grace period; aborted");
            self.tasks.abort_all();
        }
    }
}

/// Logs the one line that names a task that ended too early, and the error for `run`.
pub fn task_ended(task: &str, err: Option<JoinError>) -> RunError {
    let why = match &err {
        Some(e) if e.is_panic() => "panicked".to_string(),
        Some(e) => e.to_string(),
        None => "returned".to_string(),
    };
    telemetry::TaskFailed { task, error: &why }.emit();
    RunError::TaskEnded {
        task: task.to_string(),
        why,
    }
}
