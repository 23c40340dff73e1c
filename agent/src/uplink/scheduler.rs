//! The uploader's decisions as a state machine (pure: no I/O, no clock, randomness seeded).
//!
//! The upload task asks [`UploadScheduler::next`] what to do at `now`, does it (reads the
//! outbox, sends a Bundle, sleeps), and reports what the server said as a [`Verdict`] to
//! [`UploadScheduler::on_verdict`], which returns the one [`Effect`] the task must carry out
//! (dead-letter a reading, log a pause...). Everything that decides (the bisect queue, the
//! backoff attempt counter, the count of consecutive single-reading rejections, pause episodes
//! and their probe schedule) lives here and is tested without a network or a timer.
//!
//! | verdict | not paused | paused |
//! |---|---|---|
//! | `Delivered` | pop the batch; reset the backoff and the rejection streak | the same, and end the episode: `Resumed` (status, how long, how many probes) |
//! | `Retry` (408, 409, 429, 5xx, network, unconfirmed 2xx) | same batch after exponential backoff with jitter, `Retry-After` as a floor: `RetryIn` | same batch at the next probe |
//! | `Refused` (401, 403, 404, 405, 406, 415), `TokenRefused` (the OAuth token endpoint refuses the credentials) | keep every reading; start an episode: `Paused` (the one alarm), first probe after `pause.initial` | next probe, exponential up to `pause.max` |
//! | `Rejected` (400, 412, 422, other 4xx), `TooLarge` (413) on several readings | bisect: both halves go to the front of the queue | bisect; next probe later |
//! | `Rejected` on one reading | `DeadLetter` it, count it in the streak; the `rejection_streak_limit`-th in a row starts an episode instead (`Paused`, nothing dead-lettered) | set it aside for this episode (never dead-lettered); next probe later |
//! | `EntriesFailed` (a 200 naming failed entries) | the suspects and the others go to the front as two batches, the others first | the same; next probe later |
//! | `Unmappable` (the Bundle cannot be built) | the culprit, if named (an identifier collision), or else a single reading after bisection, is `DeadLetter`ed; local, not the server's fault: no streak, no wait | the same |
//!
//! A pause ends only when a Bundle is `Delivered`. While paused, one Bundle goes out per probe
//! slot and nothing is dead-lettered. A reading rejected alone during an episode is set aside so
//! that the next probe tries other readings: one bad reading at the head of the outbox cannot
//! keep a working server paused. Once uploads resume, the readings set aside are fetched again
//! and judged normally.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::SeedableRng;

use super::backoff::Backoff;

/// fhir-mapping.md §5.5: "If 10 single-entry Bundles in a row are all rejected, stop
/// bisecting: treat it as server-wide."
pub const REJECTION_STREAK_LIMIT: u32 = 10;

/// The longest pause between probes the config may ask for (fhir-mapping.md §5.5).
pub const MAX_PAUSE: Duration = Duration::from_secs(300);

#[derive(Debug, Clone, Copy)]
pub struct SchedulerConfig {
    /// Transient failures: exponential with jitter.
    pub retry: Backoff,
    /// Probes while paused: exponential with jitter, capped (at most [`MAX_PAUSE`]).
    pub pause: Backoff,
    /// Consecutive single-reading rejections that make a pause.
    pub rejection_streak_limit: u32,
}

/// What the task should do now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next<T> {
    /// The queue is empty: read a fresh batch from the outbox and [`UploadScheduler::load`] it
    /// (or wait for new readings if there are none).
    Fetch,
    /// Send these readings as one Bundle, then report with [`UploadScheduler::on_verdict`].
    Send(Vec<T>),
    /// Send nothing before `until` (a backoff or the next probe).
    Wait { until: Instant },
}

/// What became of the Bundle last returned by [`Next::Send`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// HTTP 200, every entry confirmed; the task has acked the readings.
    Delivered,
    /// Transient or unconfirmed: send the same readings again later.
    Retry { after: Option<Duration> },
    /// Server-wide refusal: the gateway is not authorised or misconfigured.
    Refused { status: u16 },
    /// No access token: the OAuth token endpoint refused the gateway's credentials (or
    /// answered nonsense). Nothing reached the FHIR server; handled like `Refused`.
    TokenRefused,
    /// Reading-level refusal of the whole Bundle.
    Rejected { status: u16 },
    /// A 200 naming failed entries; `suspects` are positions in the batch.
    EntriesFailed { suspects: Vec<usize>, status: u16 },
    /// 413.
    TooLarge,
    /// The Bundle could not be built (a mapping error); nothing was sent. `culprit`: the
    /// position of the reading at fault when the mapping can tell (an identifier collision,
    /// which bisection cannot isolate); otherwise the batch is bisected.
    Unmappable { culprit: Option<usize> },
}

/// Why uploads are paused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PauseCause {
    /// 401, 403, 404, 405, 406 or 415.
    Refused { status: u16 },
    /// `rejections` single-reading Bundles in a row were rejected, the last with `last_status`.
    RejectionStreak { rejections: u32, last_status: u16 },
    /// The OAuth token endpoint refuses the gateway's credentials (`[uplink.oauth2]`).
    TokenRefused,
}

impl PauseCause {
    /// The HTTP status that started the episode.
    pub fn status(&self) -> u16 {
        match self {
            PauseCause::Refused { status } => *status,
            PauseCause::RejectionStreak { last_status, .. } => *last_status,
            // Not authenticated: what the FHIR server would say without a token.
            PauseCause::TokenRefused => 401,
        }
    }
}

/// What the task must do after a verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect<T> {
    /// This reading was rejected alone: move it to the dead letters (the reason is the
    /// verdict's).
    DeadLetter(T),
    /// Transient failure: nothing goes out for `0`.
    RetryIn(Duration),
    /// A pause episode begins (alarm once).
    Paused {
        cause: PauseCause,
        next_probe_in: Duration,
    },
    /// A probe failed; still paused. `probes` failed so far in this episode.
    StillPaused {
        next_probe_in: Duration,
        probes: u32,
    },
    /// The episode is over: a Bundle was delivered. `probes` counts every Bundle sent during
    /// the episode, the successful one included.
    Resumed {
        cause: PauseCause,
        paused_for: Duration,
        probes: u32,
    },
}

#[derive(Debug, Clone)]
struct Pause {
    cause: PauseCause,
    since: Instant,
    probes: u32,
    /// Readings rejected alone during this episode: not sent again before it ends.
    set_aside: Vec<Vec<u8>>,
}

/// The state machine. `T` is what a Bundle carries (a reading in the agent, small integers in
/// tests); `key` gives the identity of a `T` for setting it aside.
pub struct UploadScheduler<T> {
    cfg: SchedulerConfig,
    rng: StdRng,
    key: fn(&T) -> Vec<u8>,
    queue: VecDeque<Vec<T>>,
    not_before: Option<Instant>,
    retry_attempt: u32,
    streak: u32,
    pause: Option<Pause>,
}

impl<T: Clone> UploadScheduler<T> {
    /// A scheduler with an empty queue; `seed` seeds the jitter.
    pub fn new(cfg: SchedulerConfig, seed: u64, key: fn(&T) -> Vec<u8>) -> Self {
        UploadScheduler {
            cfg,
            rng: StdRng::seed_from_u64(seed),
            key,
            queue: VecDeque::new(),
            not_before: None,
            retry_attempt: 0,
            streak: 0,
            pause: None,
        }
    }

    /// What to do at `now`.
    pub fn next(&self, now: Instant) -> Next<T> {
        if let Some(until) = self.not_before {
            if now < until {
                return Next::Wait { until };
            }
        }
        match self.queue.front() {
            Some(batch) => Next::Send(batch.clone()),
            None => Next::Fetch,
        }
    }

    /// Queues a batch read from the outbox (after [`Next::Fetch`]). During a pause, readings
    /// set aside in this episode are left out, unless nothing else is left.
    pub fn load(&mut self, batch: Vec<T>) {
        let batch = match &self.pause {
            Some(p) if !p.set_aside.is_empty() => {
                let key = self.key;
                let fresh: Vec<T> = batch
                    .iter()
                    .filter(|t| !p.set_aside.contains(&key(t)))
                    .cloned()
                    .collect();
                if fresh.is_empty() {
                    batch
                } else {
                    fresh
                }
            }
            _ => batch,
        };
        if !batch.is_empty() {
            self.queue.push_back(batch);
        }
    }

    /// Applies what became of the Bundle last returned by [`Next::Send`] (the front of the
    /// queue). A verdict with nothing queued is ignored.
    pub fn on_verdict(&mut self, verdict: Verdict, now: Instant) -> Option<Effect<T>> {
        let front = self.queue.pop_front()?;
        match verdict {
            Verdict::Delivered => {
                self.retry_attempt = 0;
                self.streak = 0;
                self.not_before = None;
                self.pause.take().map(|p| Effect::Resumed {
                    cause: p.cause,
                    paused_for: now.saturating_duration_since(p.since),
                    probes: p.probes + 1,
                })
            }
            Verdict::Retry { after } => {
                self.queue.push_front(front);
                if self.pause.is_some() {
                    return self.probe_later(now, after);
                }
                let delay = self
                    .cfg
                    .retry
                    .delay(self.retry_attempt, after, &mut self.rng);
                self.retry_attempt = self.retry_attempt.saturating_add(1);
                self.not_before = Some(now + delay);
                Some(Effect::RetryIn(delay))
            }
            Verdict::Refused { status } => {
                self.queue.push_front(front);
                self.retry_attempt = 0;
                self.pause_or_probe(now, PauseCause::Refused { status })
            }
            Verdict::TokenRefused => {
                self.queue.push_front(front);
                self.retry_attempt = 0;
                self.pause_or_probe(now, PauseCause::TokenRefused)
            }
            Verdict::Rejected { status } => self.rejected(front, status, now),
            Verdict::TooLarge => self.rejected(front, 413, now),
            Verdict::EntriesFailed { suspects, status } => {
                let mut bad = Vec::new();
                let mut good = Vec::new();
                for (i, t) in front.iter().enumerate() {
                    if suspects.contains(&i) {
                        bad.push(t.clone());
                    } else {
                        good.push(t.clone());
                    }
                }
                if bad.is_empty() || good.is_empty() {
                    // Cannot narrow it down: a rejection of the whole Bundle.
                    return self.rejected(front, status, now);
                }
                self.retry_attempt = 0;
                self.queue.push_front(bad);
                self.queue.push_front(good);
                self.probe_later(now, None)
            }
            Verdict::Unmappable { culprit: Some(i) } if i < front.len() => {
                let mut rest = front;
                let bad = rest.remove(i);
                if !rest.is_empty() {
                    self.queue.push_front(rest);
                }
                Some(Effect::DeadLetter(bad))
            }
            Verdict::Unmappable { .. } => {
                if front.len() > 1 {
                    self.bisect(front);
                    None
                } else {
                    front.into_iter().next().map(Effect::DeadLetter)
                }
            }
        }
    }

    /// Drops queued readings for which `keep` is false (consent withdrawn while they were in
    /// the bisect queue) and returns them; they stay pending in the outbox. Call it only
    /// between a verdict and the next [`UploadScheduler::next`], never while a Bundle is out.
    pub fn retain(&mut self, mut keep: impl FnMut(&T) -> bool) -> Vec<T> {
        let mut dropped = Vec::new();
        for batch in &mut self.queue {
            let (kept, gone): (Vec<T>, Vec<T>) =
                std::mem::take(batch).into_iter().partition(|t| keep(t));
            *batch = kept;
            dropped.extend(gone);
        }
        self.queue.retain(|b| !b.is_empty());
        dropped
    }

    /// True during a pause episode.
    pub fn is_paused(&self) -> bool {
        self.pause.is_some()
    }

    /// Single-reading Bundles rejected in a row.
    pub fn rejection_streak(&self) -> u32 {
        self.streak
    }

    /// Readings queued (in the bisect queue, not yet delivered or dead-lettered).
    pub fn queued(&self) -> usize {
        self.queue.iter().map(Vec::len).sum()
    }

    fn rejected(&mut self, front: Vec<T>, status: u16, now: Instant) -> Option<Effect<T>> {
        self.retry_attempt = 0;
        if front.len() > 1 {
            self.bisect(front);
            return self.probe_later(now, None);
        }
        self.streak = self.streak.saturating_add(1);
        if let Some(p) = self.pause.as_mut() {
            // Never dead-letter during a pause; try other readings at the next probe.
            // It leaves the queue (it stays pending in the outbox); `load` skips it while
            // anything else is pending.
            let key = self.key;
            p.set_aside.extend(front.iter().map(key));
            return self.probe_later(now, None);
        }
        if self.streak >= self.cfg.rejection_streak_limit {
            self.queue.push_front(front);
            return self.pause_or_probe(
                now,
                PauseCause::RejectionStreak {
                    rejections: self.streak,
                    last_status: status,
                },
            );
        }
        front.into_iter().next().map(Effect::DeadLetter)
    }

    /// Splits the batch at the front of the queue into batches of at most `max` readings, in
    /// order (after a timeout, so the resend fits; conditional create makes a resend of readings
    /// the server did commit harmless).
    pub fn split_front(&mut self, max: usize) {
        let max = max.max(1);
        let Some(front) = self.queue.pop_front() else {
            return;
        };
        let mut chunks: Vec<Vec<T>> = front.chunks(max).map(<[T]>::to_vec).collect();
        while let Some(c) = chunks.pop() {
            self.queue.push_front(c);
        }
    }

    fn bisect(&mut self, mut batch: Vec<T>) {
        let right = batch.split_off(batch.len() / 2);
        self.queue.push_front(right);
        self.queue.push_front(batch);
    }

    fn pause_or_probe(&mut self, now: Instant, cause: PauseCause) -> Option<Effect<T>> {
        if self.pause.is_some() {
            return self.probe_later(now, None);
        }
        let delay = self.cfg.pause.delay(0, None, &mut self.rng);
        self.pause = Some(Pause {
            cause,
            since: now,
            probes: 0,
            set_aside: Vec::new(),
        });
        self.not_before = Some(now + delay);
        Some(Effect::Paused {
            cause,
            next_probe_in: delay,
        })
    }

    /// During a pause: the next probe after the pause schedule (`None` when not paused).
    fn probe_later(&mut self, now: Instant, floor: Option<Duration>) -> Option<Effect<T>> {
        let p = self.pause.as_mut()?;
        p.probes = p.probes.saturating_add(1);
        let probes = p.probes;
        let delay = self.cfg.pause.delay(probes, floor, &mut self.rng);
        self.not_before = Some(now + delay);
        Some(Effect::StillPaused {
            next_probe_in: delay,
            probes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    fn config() -> SchedulerConfig {
        SchedulerConfig {
            retry: Backoff::new(Duration::from_millis(100), Duration::from_secs(5)),
            pause: Backoff::new(Duration::from_secs(10), Duration::from_secs(300)),
            rejection_streak_limit: REJECTION_STREAK_LIMIT,
        }
    }

    fn scheduler() -> UploadScheduler<u32> {
        UploadScheduler::new(config(), 7, |n| n.to_be_bytes().to_vec())
    }

    #[test]
    fn retain_drops_held_readings_from_every_queued_batch_and_empty_batches() {
        let mut s = scheduler();
        let t0 = Instant::now();
        s.load(vec![1, 2, 3, 4]);
        // A whole-Bundle rejection bisects: [1, 2] and [3, 4] are queued.
        assert!(s
            .on_verdict(Verdict::Rejected { status: 422 }, t0)
            .is_none());
        assert_eq!(s.queued(), 4);
        let dropped = s.retain(|n| *n != 2 && *n != 1);
        assert_eq!(dropped, vec![1, 2]);
        assert_eq!(s.queued(), 2);
        // The empty batch is gone: the next Bundle is [3, 4], not an empty one.
        assert_eq!(s.next(t0), Next::Send(vec![3, 4]));
    }

    /// A model of the task around the scheduler: an outbox (FIFO of reading numbers), a
    /// scripted server, and a clock that jumps to each `Wait`.
    struct Sim {
        s: UploadScheduler<u32>,
        start: Instant,
        now: Instant,
        outbox: Vec<u32>,
        batch_size: usize,
        sends: Vec<(Duration, Vec<u32>)>,
        effects: Vec<Effect<u32>>,
        delivered: Vec<u32>,
        dead: Vec<u32>,
    }

    impl Sim {
        fn new(readings: std::ops::Range<u32>, batch_size: usize) -> Sim {
            let now = Instant::now();
            Sim {
                s: scheduler(),
                start: now,
                now,
                outbox: readings.collect(),
                batch_size,
                sends: Vec::new(),
                effects: Vec::new(),
                delivered: Vec::new(),
                dead: Vec::new(),
            }
        }

        fn elapsed(&self) -> Duration {
            self.now - self.start
        }

        /// Runs until the outbox is empty or `limit` of simulated time has passed.
        fn run(&mut self, limit: Duration, server: &mut dyn FnMut(&[u32], Duration) -> Verdict) {
            while self.elapsed() < limit {
                match self.s.next(self.now) {
                    Next::Wait { until } => {
                        assert!(until > self.now);
                        self.now = until;
                    }
                    Next::Fetch => {
                        let batch: Vec<u32> =
                            self.outbox.iter().take(self.batch_size).copied().collect();
                        if batch.is_empty() {
                            return;
                        }
                        self.s.load(batch);
                    }
                    Next::Send(batch) => {
                        let verdict = server(&batch, self.elapsed());
                        self.sends.push((self.elapsed(), batch.clone()));
                        if verdict == Verdict::Delivered {
                            self.outbox.retain(|r| !batch.contains(r));
                            self.delivered.extend(&batch);
                        }
                        if let Some(e) = self.s.on_verdict(verdict, self.now) {
                            if let Effect::DeadLetter(r) = &e {
                                self.outbox.retain(|x| x != r);
                                self.dead.push(*r);
                            }
                            self.effects.push(e);
                        }
                        // The task takes a few milliseconds per exchange.
                        self.now += Duration::from_millis(5);
                    }
                }
            }
        }

        fn count(&self, f: impl Fn(&Effect<u32>) -> bool) -> usize {
            self.effects.iter().filter(|e| f(e)).count()
        }
    }

    #[test]
    fn a_delivered_batch_leaves_the_queue_and_the_next_step_is_a_fetch() {
        let mut s = scheduler();
        let now = Instant::now();
        assert_eq!(s.next(now), Next::Fetch);
        s.load(vec![1, 2, 3]);
        assert_eq!(s.next(now), Next::Send(vec![1, 2, 3]));
        assert_eq!(s.on_verdict(Verdict::Delivered, now), None);
        assert_eq!(s.next(now), Next::Fetch);
        assert_eq!(s.queued(), 0);
    }

    #[test]
    fn transient_failures_resend_the_same_batch_after_a_growing_backoff_with_retry_after_as_floor()
    {
        let mut s = scheduler();
        let mut now = Instant::now();
        s.load(vec![1, 2]);
        let mut delays = Vec::new();
        for _ in 0..8 {
            let Some(Effect::RetryIn(d)) = s.on_verdict(Verdict::Retry { after: None }, now) else {
                panic!("expected a backoff");
            };
            assert_eq!(s.next(now), Next::Wait { until: now + d });
            now += d;
            assert_eq!(
                s.next(now),
                Next::Send(vec![1, 2]),
                "the same readings again"
            );
            delays.push(d);
        }
        for (attempt, d) in delays.iter().enumerate() {
            let ceiling = config().retry.ceiling(attempt as u32);
            assert!(*d >= ceiling / 2 && *d <= ceiling, "{attempt}: {d:?}");
        }
        let floor = Duration::from_secs(42);
        assert!(matches!(
            s.on_verdict(Verdict::Retry { after: Some(floor) }, now),
            Some(Effect::RetryIn(d)) if d >= floor
        ));
        // A success resets the backoff.
        now += Duration::from_secs(60);
        s.on_verdict(Verdict::Delivered, now);
        s.load(vec![3]);
        let Some(Effect::RetryIn(d)) = s.on_verdict(Verdict::Retry { after: None }, now) else {
            panic!()
        };
        assert!(d <= config().retry.ceiling(0));
    }

    #[test]
    fn a_server_wide_refusal_for_an_hour_keeps_everything_pauses_once_and_probes_on_the_capped_schedule(
    ) {
        let mut sim = Sim::new(0..30, 10);
        let mut server = |_: &[u32], t: Duration| {
            if t < HOUR {
                Verdict::Refused { status: 403 }
            } else {
                Verdict::Delivered
            }
        };
        sim.run(HOUR + Duration::from_secs(600), &mut server);
        assert_eq!(sim.dead, Vec::<u32>::new(), "never dead-letter for a 403");
        assert_eq!(
            sim.count(|e| matches!(e, Effect::Paused { .. })),
            1,
            "one alarm per episode"
        );
        let resumed: Vec<_> = sim
            .effects
            .iter()
            .filter_map(|e| match e {
                Effect::Resumed {
                    cause,
                    paused_for,
                    probes,
                } => Some((*cause, *paused_for, *probes)),
                _ => None,
            })
            .collect();
        assert_eq!(resumed.len(), 1);
        let (cause, paused_for, probes) = resumed[0];
        assert_eq!(cause, PauseCause::Refused { status: 403 });
        assert!(
            paused_for >= HOUR && paused_for <= HOUR + MAX_PAUSE,
            "{paused_for:?}"
        );
        // Probes: 10 s, then doubling (with jitter in [d/2, d]) up to 300 s.
        // The sends of the episode: every refused one and the first delivered one.
        let first_ok = sim.sends.iter().position(|(t, _)| *t >= HOUR).unwrap();
        let during: Vec<Duration> = sim.sends[..=first_ok].iter().map(|(t, _)| *t).collect();
        let gaps: Vec<Duration> = during.windows(2).map(|w| w[1] - w[0]).collect();
        for (i, g) in gaps.iter().enumerate() {
            let ceiling = config().pause.ceiling(i as u32) + Duration::from_millis(5);
            assert!(*g <= ceiling, "gap {i} {g:?} above {ceiling:?}");
            assert!(*g >= config().pause.ceiling(i as u32) / 2, "gap {i} {g:?}");
        }
        assert!(gaps.iter().skip(6).all(|g| *g >= MAX_PAUSE / 2));
        // 3600 s at one probe per 150-300 s after a ~10 min ramp: 12 to 26 sends.
        assert!((12..=26).contains(&during.len()), "{}", during.len());
        assert_eq!(
            probes as usize,
            during.len() - 1,
            "the first send started the pause"
        );
        // Every reading delivered exactly once, in order.
        assert_eq!(sim.delivered, (0..30).collect::<Vec<_>>());
        assert!(sim.outbox.is_empty());
    }

    #[test]
    fn bisection_isolates_the_one_rejected_reading_and_delivers_the_others() {
        let mut sim = Sim::new(0..16, 16);
        let mut server = |b: &[u32], _: Duration| {
            if b.contains(&11) {
                Verdict::Rejected { status: 422 }
            } else {
                Verdict::Delivered
            }
        };
        sim.run(HOUR, &mut server);
        assert_eq!(sim.dead, vec![11]);
        let mut delivered = sim.delivered.clone();
        delivered.sort_unstable();
        assert_eq!(delivered, (0..16).filter(|&n| n != 11).collect::<Vec<_>>());
        assert_eq!(sim.count(|e| matches!(e, Effect::Paused { .. })), 0);
        // log2(16) + 1 rejected Bundles, and each good half delivered once.
        assert!(sim.sends.len() <= 10, "{:?}", sim.sends);
        assert!(sim
            .effects
            .iter()
            .all(|e| matches!(e, Effect::DeadLetter(11))));
    }

    #[test]
    fn ten_single_rejections_in_a_row_become_a_pause_and_no_more_dead_letters() {
        let mut sim = Sim::new(0..40, 20);
        let mut server = |_: &[u32], t: Duration| {
            if t < HOUR {
                Verdict::Rejected { status: 422 }
            } else {
                Verdict::Delivered
            }
        };
        sim.run(2 * HOUR, &mut server);
        assert_eq!(
            sim.dead.len(),
            (REJECTION_STREAK_LIMIT - 1) as usize,
            "nine dead letters, then the tenth rejection is taken as server-wide: {:?}",
            sim.dead
        );
        let paused: Vec<_> = sim
            .effects
            .iter()
            .filter_map(|e| match e {
                Effect::Paused { cause, .. } => Some(*cause),
                _ => None,
            })
            .collect();
        assert_eq!(
            paused,
            vec![PauseCause::RejectionStreak {
                rejections: 10,
                last_status: 422
            }]
        );
        assert_eq!(sim.count(|e| matches!(e, Effect::Resumed { .. })), 1);
        assert_eq!(sim.delivered.len() + sim.dead.len(), 40);
        assert!(sim.outbox.is_empty());
    }

    #[test]
    fn a_streak_pause_ends_as_soon_as_the_server_accepts_other_readings() {
        // Reading 0 is really bad; the server also rejects everything for ten minutes. The
        // pause must not stick on reading 0 once the others are accepted again.
        let mut sim = Sim::new(0..12, 4);
        let mut server = |b: &[u32], t: Duration| {
            if b.contains(&0) || t < Duration::from_secs(600) {
                Verdict::Rejected { status: 400 }
            } else {
                Verdict::Delivered
            }
        };
        sim.run(HOUR, &mut server);
        assert_eq!(sim.count(|e| matches!(e, Effect::Paused { .. })), 1);
        assert_eq!(sim.count(|e| matches!(e, Effect::Resumed { .. })), 1);
        let mut delivered = sim.delivered.clone();
        delivered.sort_unstable();
        assert!(
            (1..12).all(|r| delivered.contains(&r) || sim.dead.contains(&r)),
            "{delivered:?} {:?}",
            sim.dead
        );
        assert!(
            sim.dead.contains(&0),
            "after the pause, reading 0 is judged alone"
        );
        assert!(sim.outbox.is_empty());
        let resumed_at = sim
            .sends
            .iter()
            .find(|(t, _)| *t >= Duration::from_secs(600))
            .map(|(t, _)| *t)
            .unwrap();
        assert!(resumed_at < Duration::from_secs(600) + 2 * MAX_PAUSE);
    }

    #[test]
    fn a_200_with_one_failed_entry_isolates_that_reading_and_resends_the_others_first() {
        let mut s = scheduler();
        let now = Instant::now();
        s.load(vec![10, 11, 12, 13]);
        assert_eq!(
            s.on_verdict(
                Verdict::EntriesFailed {
                    suspects: vec![2],
                    status: 422
                },
                now
            ),
            None
        );
        assert_eq!(
            s.next(now),
            Next::Send(vec![10, 11, 13]),
            "no wait, others first"
        );
        s.on_verdict(Verdict::Delivered, now);
        assert_eq!(s.next(now), Next::Send(vec![12]));
        assert_eq!(
            s.on_verdict(
                Verdict::EntriesFailed {
                    suspects: vec![0],
                    status: 422
                },
                now
            ),
            Some(Effect::DeadLetter(12))
        );
        assert_eq!(s.rejection_streak(), 1);
        assert_eq!(s.next(now), Next::Fetch);
    }

    #[test]
    fn the_same_failed_entries_are_never_retried_forever() {
        // A server that always fails entry 0 of every Bundle: each reading ends up alone,
        // nothing is ever acked on a failed answer, and the streak limit stops it.
        let mut sim = Sim::new(0..30, 10);
        let mut server = |_: &[u32], _: Duration| Verdict::EntriesFailed {
            suspects: vec![0],
            status: 400,
        };
        sim.run(HOUR, &mut server);
        assert!(sim.delivered.is_empty());
        assert_eq!(sim.dead.len(), 9);
        assert_eq!(sim.count(|e| matches!(e, Effect::Paused { .. })), 1);
        // Slow probes only, not a hot loop.
        assert!(sim.sends.len() < 60, "{}", sim.sends.len());
    }

    #[test]
    fn an_unmappable_reading_is_dead_lettered_alone_without_waiting_or_counting() {
        let mut sim = Sim::new(0..8, 8);
        let mut server = |b: &[u32], _: Duration| {
            if b.contains(&3) {
                Verdict::Unmappable { culprit: None }
            } else {
                Verdict::Delivered
            }
        };
        sim.run(HOUR, &mut server);
        assert_eq!(sim.dead, vec![3]);
        assert_eq!(sim.s.rejection_streak(), 0);
        assert!(
            sim.elapsed() < Duration::from_secs(1),
            "no backoff for a local error"
        );
    }

    #[test]
    fn a_named_culprit_is_dead_lettered_at_once_and_the_others_sent() {
        let mut s = scheduler();
        let now = Instant::now();
        s.load(vec![1, 2, 3, 4]);
        assert_eq!(
            s.on_verdict(Verdict::Unmappable { culprit: Some(2) }, now),
            Some(Effect::DeadLetter(3))
        );
        assert_eq!(s.next(now), Next::Send(vec![1, 2, 4]));
        s.on_verdict(Verdict::Delivered, now);
        s.load(vec![5]);
        assert_eq!(
            s.on_verdict(Verdict::Unmappable { culprit: Some(0) }, now),
            Some(Effect::DeadLetter(5))
        );
        assert_eq!(s.next(now), Next::Fetch);
    }

    #[test]
    fn payload_too_large_splits_and_a_single_too_large_reading_is_dead_lettered() {
        let mut s = scheduler();
        let now = Instant::now();
        s.load(vec![1, 2, 3, 4]);
        assert_eq!(s.on_verdict(Verdict::TooLarge, now), None);
        assert_eq!(s.next(now), Next::Send(vec![1, 2]));
        s.on_verdict(Verdict::Delivered, now);
        assert_eq!(s.next(now), Next::Send(vec![3, 4]));
        s.on_verdict(Verdict::TooLarge, now);
        assert_eq!(s.next(now), Next::Send(vec![3]));
        assert_eq!(
            s.on_verdict(Verdict::TooLarge, now),
            Some(Effect::DeadLetter(3))
        );
        assert_eq!(s.next(now), Next::Send(vec![4]));
    }

    #[test]
    fn a_transient_error_during_a_pause_waits_for_the_next_probe() {
        let mut s = scheduler();
        let now = Instant::now();
        s.load(vec![1]);
        assert!(matches!(
            s.on_verdict(Verdict::Refused { status: 401 }, now),
            Some(Effect::Paused {
                cause: PauseCause::Refused { status: 401 },
                ..
            })
        ));
        let Next::Wait { until } = s.next(now) else {
            panic!()
        };
        let Some(Effect::StillPaused { next_probe_in, .. }) =
            s.on_verdict(Verdict::Retry { after: None }, until)
        else {
            panic!("a 503 during a pause is a failed probe")
        };
        assert!(next_probe_in >= config().pause.ceiling(1) / 2);
        assert!(s.is_paused());
        assert_eq!(
            s.next(until),
            Next::Wait {
                until: until + next_probe_in
            }
        );
    }

    #[test]
    fn split_front_cuts_the_front_batch_in_order_and_leaves_the_rest() {
        let mut s = scheduler();
        let now = Instant::now();
        s.load(vec![1, 2, 3, 4, 5]);
        s.load(vec![6]);
        s.split_front(2);
        let mut sent = Vec::new();
        while let Next::Send(b) = s.next(now) {
            sent.push(b);
            s.on_verdict(Verdict::Delivered, now);
        }
        assert_eq!(sent, vec![vec![1, 2], vec![3, 4], vec![5], vec![6]]);
        s.split_front(3); // nothing queued: no effect
        assert_eq!(s.queued(), 0);
    }

    #[test]
    fn a_verdict_without_a_send_is_ignored() {
        let mut s = scheduler();
        assert_eq!(s.on_verdict(Verdict::Delivered, Instant::now()), None);
        assert_eq!(
            s.on_verdict(Verdict::Refused { status: 403 }, Instant::now()),
            None
        );
        assert!(!s.is_paused());
    }
}
