//! The thin file-writing shell: one thread owns the current segment; [`AuditHandle`]s send it
//! events over a bounded channel and never block. See the module doc of [`crate::audit`] for
//! the format, the group sync and what a power loss costs.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;

use super::chain::{self, GENESIS};
use super::files::{self, Cut};
use super::{AuditEvent, Dropped, CHANNEL, SYNC_ENTRIES, SYNC_EVERY};
use crate::telemetry;

/// Where and how much.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditOptions {
    /// `<data_dir>/audit`.
    pub dir: PathBuf,
    /// Bound on all segments together (`[audit] max_bytes`).
    pub max_bytes: u64,
    /// A segment is closed once it would pass this (`[audit] segment_bytes`).
    pub segment_bytes: u64,
    /// Segments whose last write is older are deleted (`[audit] retention_days`).
    pub retention: Duration,
    /// How far back the ledger must answer (`[audit] ledger_days`): a segment this young
    /// deleted for `max_bytes` raises a warning.
    pub ledger: Duration,
}

/// Why the audit log cannot be opened. No PHI: paths and I/O errors.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// Another process (the running daemon) writes this audit log.
    #[error("audit log {path} is in use by another process (the running daemon)")]
    Locked { path: PathBuf },
    #[error("audit log {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

enum Msg {
    Event(DateTime<Utc>, AuditEvent),
    /// Write and sync everything before, then answer.
    Sync(mpsc::Sender<()>),
    /// Write and sync everything before, then end the thread (releasing the lock).
    Close,
}

/// A cheap, cloneable sender of events to the writer thread.
#[derive(Clone)]
pub struct AuditHandle {
    tx: SyncSender<Msg>,
    dropped: Dropped,
}

impl AuditHandle {
    /// Records `event` now. Never blocks: when the writer is behind by [`CHANNEL`] entries,
    /// the event is counted as dropped and the writer's next entry is a `gap`.
    pub fn record(&self, event: AuditEvent) {
        // The edge: an audit entry's time is when the event happened.
        #[allow(clippy::disallowed_methods)]
        let now = Utc::now();
        match self.tx.try_send(Msg::Event(now, event)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                let before = self.dropped.fetch_add(1, Ordering::Relaxed);
                telemetry::AuditEntryDropped { first: before == 0 }.emit();
            }
        }
    }

    /// Whether both handles lead to the same writer.
    pub fn same(&self, other: &AuditHandle) -> bool {
        Arc::ptr_eq(&self.dropped, &other.dropped)
    }

    /// Waits (at most `timeout`) until everything recorded before is written and synced.
    /// Returns whether it was.
    pub fn sync(&self, timeout: Duration) -> bool {
        let (tx, rx) = mpsc::channel();
        let deadline = Instant::now() + timeout;
        if !self.send_until(Msg::Sync(tx), deadline) {
            return false;
        }
        rx.recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .is_ok()
    }

    /// Sends a control message, waiting for room until `deadline`.
    fn send_until(&self, mut msg: Msg, deadline: Instant) -> bool {
        loop {
            match self.tx.try_send(msg) {
                Ok(()) => return true,
                Err(TrySendError::Full(m)) if Instant::now() < deadline => {
                    msg = m;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(_) => return false,
            }
        }
    }
}

/// The open audit log: its writer thread and a handle to it.
pub struct AuditLog {
    handle: AuditHandle,
    thread: Option<JoinHandle<()>>,
}

impl AuditLog {
    /// Opens (creating) the log in `opts.dir`: cuts a torn last line (and records it), applies
    /// retention, starts the writer thread.
    ///
    /// # Errors
    ///
    /// [`AuditError::Io`] when the directory or the current segment cannot be created, read
    /// or opened for writing.
    pub fn open(opts: AuditOptions) -> Result<AuditLog, AuditError> {
        Self::open_with_capacity(opts, CHANNEL)
    }

    /// As [`AuditLog::open`] with another channel capacity (tests of the `gap` entry).
    ///
    /// # Errors
    ///
    /// As [`AuditLog::open`].
    pub fn open_with_capacity(opts: AuditOptions, capacity: usize) -> Result<AuditLog, AuditError> {
        let dropped: Dropped = Arc::new(AtomicU64::new(0));
        let mut w = Writer::open(opts)?;
        let (tx, rx) = mpsc::sync_channel(capacity.max(1));
        let d = Arc::clone(&dropped);
        let thread = std::thread::Builder::new()
            .name("audit writer".into())
            .spawn(move || {
                w.run(&rx, &d);
            })
            .map_err(|e| AuditError::Io {
                path: PathBuf::from("(audit writer thread)"),
                source: e,
            })?;
        Ok(AuditLog {
            handle: AuditHandle { tx, dropped },
            thread: Some(thread),
        })
    }

    pub fn handle(&self) -> AuditHandle {
        self.handle.clone()
    }

    /// Writes and syncs what was recorded so far and stops the writer, releasing the log's
    /// lock (other handles' later events are dropped and counted). Waits at most `timeout`
    /// for room in the channel; then for the writer's last sync.
    pub fn close(mut self, timeout: Duration) {
        self.stop(timeout);
    }

    fn stop(&mut self, timeout: Duration) {
        let Some(t) = self.thread.take() else {
            return;
        };
        if self.handle.send_until(Msg::Close, Instant::now() + timeout) {
            let _ = t.join();
        }
    }
}

impl Drop for AuditLog {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(1));
    }
}

/// The canonical body of an entry: field order is the format.
#[derive(Serialize)]
struct Body<'a> {
    seq: u64,
    time: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    prev: Option<String>,
    #[serde(flatten)]
    event: &'a AuditEvent,
}

/// The writer thread's state.
struct Writer {
    opts: AuditOptions,
    /// `None` after an I/O error: reopened (as at start) before the next entry.
    file: Option<BufWriter<File>>,
    segment: String,
    segment_bytes: u64,
    next_seq: u64,
    prev: [u8; 32],
    /// The next entry is the first of its segment (carries `prev`).
    first: bool,
    unsynced: usize,
    /// Events lost to I/O errors, to be reported in a `gap` entry.
    lost: u64,
    /// Entries to write before the next event (recovery, retention).
    queued: Vec<AuditEvent>,
    /// `<dir>/.lock`, locked exclusively while this writer lives: one writer per log.
    _lock: File,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> AuditError + '_ {
    move |source| AuditError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn now() -> DateTime<Utc> {
    // The edge: entries the writer makes itself (gap, recovered, retention).
    #[allow(clippy::disallowed_methods)]
    Utc::now()
}

impl Writer {
    fn open(opts: AuditOptions) -> Result<Writer, AuditError> {
        std::fs::create_dir_all(&opts.dir).map_err(io(&opts.dir))?;
        let lock_path = opts.dir.join(".lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io(&lock_path))?;
        if fs2::FileExt::try_lock_exclusive(&lock).is_err() {
            return Err(AuditError::Locked { path: opts.dir });
        }
        let mut w = Writer {
            _lock: lock,
            opts,
            file: None,
            segment: String::new(),
            segment_bytes: 0,
            next_seq: 0,
            prev: GENESIS,
            first: true,
            unsynced: 0,
            lost: 0,
            queued: Vec::new(),
        };
        w.reopen()?;
        if let Some(seq) = w.next_seq.checked_sub(1) {
            super::publish_head(seq, &w.prev);
        }
        w.retention();
        Ok(w)
    }

    /// Finds the current segment and the chain's head; cuts a torn tail.
    fn reopen(&mut self) -> Result<(), AuditError> {
        let dir = self.opts.dir.clone();
        let segs = files::list(&dir).map_err(io(&dir))?;
        let Some(last) = segs.last() else {
            return self.start_segment(0, GENESIS);
        };
        let bytes = std::fs::read(&last.path).map_err(io(&last.path))?;
        match chain::last_entry(&bytes) {
            Ok((head, torn)) => {
                let keep = (bytes.len() - torn) as u64;
                let file = OpenOptions::new()
                    .write(true)
                    .open(&last.path)
                    .map_err(io(&last.path))?;
                if torn > 0 {
                    file.set_len(keep).map_err(io(&last.path))?;
                    file.sync_data().map_err(io(&last.path))?;
                    telemetry::AuditRecovered {
                        segment: &last.name,
                        truncated_bytes: torn as u64,
                    }
                    .emit();
                    self.queued.push(AuditEvent::Recovered {
                        segment: last.name.clone(),
                        reason: "torn_tail_truncated",
                        truncated_bytes: torn as u64,
                    });
                }
                let mut file = file;
                std::io::Seek::seek(&mut file, std::io::SeekFrom::End(0))
                    .map_err(io(&last.path))?;
                match head {
                    Some((seq, hash)) => {
                        self.next_seq = seq.saturating_add(1);
                        self.prev = hash;
                        self.first = false;
                    }
                    None => {
                        // An empty segment: its first entry carries the previous one's head.
                        self.next_seq = last.first_seq;
                        self.prev = match segs.len().checked_sub(2).and_then(|i| segs.get(i)) {
                            Some(p) => std::fs::read(&p.path)
                                .ok()
                                .and_then(|b| chain::last_entry(&b).ok())
                                .and_then(|(h, _)| h)
                                .map_or(GENESIS, |(_, h)| h),
                            None => GENESIS,
                        };
                        self.first = true;
                    }
                }
                self.segment = last.name.clone();
                self.segment_bytes = keep;
                self.file = Some(BufWriter::new(file));
                Ok(())
            }
            Err(_) => {
                // The last complete entry is unreadable: the chain cannot continue from it.
                // A new segment starts from GENESIS; `audit verify` will name the break.
                let lines = bytes.iter().filter(|&&b| b == b'\n').count() as u64;
                let next = last.first_seq.saturating_add(lines).saturating_add(1);
                self.queued.push(AuditEvent::Recovered {
                    segment: last.name.clone(),
                    reason: "unreadable_last_entry",
                    truncated_bytes: 0,
                });
                self.start_segment(next, GENESIS)
            }
        }
    }

    fn start_segment(&mut self, first_seq: u64, prev: [u8; 32]) -> Result<(), AuditError> {
        let name = files::segment_name(first_seq);
        let path = self.opts.dir.join(&name);
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io(&path))?;
        // The new name must survive a power loss too.
        if let Ok(d) = File::open(&self.opts.dir) {
            let _ = d.sync_all();
        }
        self.file = Some(BufWriter::new(file));
        self.segment = name;
        self.segment_bytes = 0;
        self.next_seq = first_seq;
        self.prev = prev;
        self.first = true;
        Ok(())
    }

    fn run(&mut self, rx: &mpsc::Receiver<Msg>, dropped: &AtomicU64) {
        let mut deadline: Option<Instant> = None;
        loop {
            let msg = match deadline {
                Some(d) => rx.recv_timeout(d.saturating_duration_since(Instant::now())),
                None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
            };
            match msg {
                Ok(Msg::Event(time, event)) => {
                    self.before_entry(dropped);
                    self.write(time, &event);
                    if self.unsynced >= SYNC_ENTRIES {
                        self.sync();
                        deadline = None;
                    } else if deadline.is_none() {
                        deadline = Some(Instant::now() + SYNC_EVERY);
                    }
                }
                Ok(Msg::Sync(ack)) => {
                    self.before_entry(dropped);
                    self.sync();
                    deadline = None;
                    let _ = ack.send(());
                }
                Ok(Msg::Close) | Err(RecvTimeoutError::Disconnected) => {
                    self.before_entry(dropped);
                    self.sync();
                    return;
                }
                Err(RecvTimeoutError::Timeout) => {
                    self.before_entry(dropped);
                    self.sync();
                    deadline = None;
                }
            }
        }
    }

    /// Writes what the log owes before the next event: its own entries and a `gap`.
    fn before_entry(&mut self, dropped: &AtomicU64) {
        let lost = dropped.swap(0, Ordering::Relaxed) + std::mem::take(&mut self.lost);
        let mut owed = std::mem::take(&mut self.queued);
        if lost > 0 {
            owed.push(AuditEvent::Gap { lost });
        }
        for e in owed {
            self.write(now(), &e);
        }
    }

    fn write(&mut self, time: DateTime<Utc>, event: &AuditEvent) {
        if let Err(e) = self.try_write(time, event) {
            telemetry::AuditWriteFailed { error: &e }.emit();
            // Counted in the next `gap`; the file is reopened (torn tail cut) next time.
            self.lost += 1;
            self.file = None;
        }
    }

    fn try_write(&mut self, time: DateTime<Utc>, event: &AuditEvent) -> Result<(), AuditError> {
        if self.file.is_none() {
            self.reopen()?;
        }
        let stamp = time.to_rfc3339_opts(SecondsFormat::Millis, true);
        let mut line = self.seal(&stamp, event)?;
        if !self.first && self.segment_bytes + line.0.len() as u64 > self.opts.segment_bytes {
            self.sync_file()?;
            let (seq, prev) = (self.next_seq, self.prev);
            self.start_segment(seq, prev)?;
            line = self.seal(&stamp, event)?;
            self.retention();
        }
        let path = self.opts.dir.join(&self.segment);
        let Some(f) = self.file.as_mut() else {
            return Ok(());
        };
        f.write_all(&line.0).map_err(io(&path))?;
        self.segment_bytes += line.0.len() as u64;
        self.prev = line.1;
        self.next_seq = self.next_seq.saturating_add(1);
        self.first = false;
        self.unsynced += 1;
        Ok(())
    }

    fn seal(&self, stamp: &str, event: &AuditEvent) -> Result<(Vec<u8>, [u8; 32]), AuditError> {
        let body = Body {
            seq: self.next_seq,
            time: stamp,
            prev: self.first.then(|| hex::encode(self.prev)),
            event,
        };
        let path = self.opts.dir.join(&self.segment);
        let canonical = serde_json::to_vec(&body)
            .map_err(|e| io(&path)(std::io::Error::other(e.to_string())))?;
        chain::seal(&self.prev, &canonical).map_err(|e| io(&path)(std::io::Error::other(e)))
    }

    fn sync_file(&mut self) -> Result<(), AuditError> {
        let path = self.opts.dir.join(&self.segment);
        if let Some(f) = self.file.as_mut() {
            f.flush().map_err(io(&path))?;
            f.get_ref().sync_data().map_err(io(&path))?;
        }
        self.unsynced = 0;
        if let Some(seq) = self.next_seq.checked_sub(1) {
            super::publish_head(seq, &self.prev);
        }
        Ok(())
    }

    fn sync(&mut self) {
        if self.unsynced == 0 {
            return;
        }
        if let Err(e) = self.sync_file() {
            telemetry::AuditWriteFailed { error: &e }.emit();
            // What was not synced may be lost; the next open cuts a torn tail.
            self.file = None;
        }
    }

    /// Deletes the oldest segments beyond the bounds; queues one entry per deletion.
    fn retention(&mut self) {
        let Ok(segs) = files::list(&self.opts.dir) else {
            return;
        };
        let now_sys = SystemTime::now();
        let ages: Vec<(u64, Duration)> = segs
            .iter()
            .map(|s| {
                let age = s
                    .modified
                    .and_then(|m| now_sys.duration_since(m).ok())
                    .unwrap_or_default();
                (s.bytes, age)
            })
            .collect();
        for (i, cut) in files::retention_plan(&ages, self.opts.max_bytes, self.opts.retention) {
            let (Some(s), Some(next)) = (segs.get(i), segs.get(i + 1)) else {
                continue;
            };
            if s.name == self.segment {
                continue;
            }
            match std::fs::remove_file(&s.path) {
                Ok(()) => {
                    let young = ages.get(i).is_some_and(|(_, age)| *age < self.opts.ledger);
                    if cut == Cut::Bytes && young {
                        telemetry::AuditRetentionShort {
                            segment: &s.name,
                            max_bytes: self.opts.max_bytes,
                            ledger_days: self.opts.ledger.as_secs() / 86_400,
                        }
                        .emit();
                    }
                    self.queued.push(AuditEvent::RetentionDeleted {
                        segment: s.name.clone(),
                        first_seq: s.first_seq,
                        last_seq: next.first_seq.saturating_sub(1),
                        why: cut.as_str(),
                    });
                }
                Err(e) => {
                    let e = io(&s.path)(e);
                    telemetry::AuditWriteFailed { error: &e }.emit();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{chain, files, Id};
    use crate::identity::ReadingId;

    fn opts(dir: &Path, segment_bytes: u64, max_bytes: u64) -> AuditOptions {
        AuditOptions {
            dir: dir.to_path_buf(),
            max_bytes,
            segment_bytes,
            retention: Duration::from_secs(90 * 86_400),
            ledger: Duration::from_secs(30 * 86_400),
        }
    }

    fn stored(i: u8) -> AuditEvent {
        AuditEvent::Stored {
            reading: Id(ReadingId::from_bytes([i; 32])),
            kind: "blood_pressure".into(),
            device: "hub-1".into(),
        }
    }

    fn verify_dir(dir: &Path) -> Result<chain::VerifyReport, chain::ChainError> {
        let segs = files::read_all(dir).unwrap();
        chain::verify(segs.iter().map(|(n, b)| (n.as_str(), b.as_slice())))
    }

    fn entries(dir: &Path) -> Vec<serde_json::Value> {
        files::read_all(dir)
            .unwrap()
            .iter()
            .flat_map(|(_, b)| {
                String::from_utf8_lossy(b)
                    .lines()
                    .map(|l| serde_json::from_str(l).unwrap())
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    #[test]
    fn entries_written_through_a_handle_verify_and_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::open(opts(dir.path(), 1 << 20, 1 << 30)).unwrap();
        let h = log.handle();
        for i in 0..10 {
            h.record(stored(i));
        }
        log.close(Duration::from_secs(5));
        let log = AuditLog::open(opts(dir.path(), 1 << 20, 1 << 30)).unwrap();
        log.handle().record(stored(99));
        log.close(Duration::from_secs(5));
        let r = verify_dir(dir.path()).unwrap();
        assert_eq!(
            (r.entries, r.first_seq, r.last_seq),
            (11, Some(0), Some(10))
        );
        assert_eq!(r.anchor, None);
    }

    #[test]
    fn rollover_keeps_the_chain_and_retention_leaves_an_anchored_chain() {
        let dir = tempfile::tempdir().unwrap();
        // ~230 B an entry: 4 per segment, 3 segments kept.
        let log = AuditLog::open(opts(dir.path(), 1000, 3000)).unwrap();
        let h = log.handle();
        for i in 0..40 {
            h.record(stored(i));
            // Let the writer keep up (the channel is large; this only spreads the rollovers).
        }
        log.close(Duration::from_secs(5));
        let segs = files::list(dir.path()).unwrap();
        assert!(segs.len() >= 2 && segs.len() <= 4, "{segs:?}");
        let total: u64 = segs.iter().map(|s| s.bytes).sum();
        assert!(total <= 3000 + 1000, "{total}");
        let r = verify_dir(dir.path()).unwrap();
        let (anchor_seq, _) = r.anchor.expect("older segments were deleted: anchored");
        assert_eq!(Some(anchor_seq), r.first_seq);
        let all = entries(dir.path());
        assert!(
            all.iter().any(|e| e["event"] == "retention_deleted"),
            "each deletion is recorded"
        );
    }

    #[test]
    fn a_torn_tail_is_cut_at_open_and_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::open(opts(dir.path(), 1 << 20, 1 << 30)).unwrap();
        for i in 0..3 {
            log.handle().record(stored(i));
        }
        log.close(Duration::from_secs(5));
        let seg = files::list(dir.path()).unwrap().remove(0);
        let mut f = OpenOptions::new().append(true).open(&seg.path).unwrap();
        let torn = b"{\"seq\":3,\"time\":\"2026-";
        f.write_all(torn).unwrap();
        drop(f);
        let r = verify_dir(dir.path()).unwrap();
        assert_eq!(r.torn_tail.map(|t| t.bytes), Some(torn.len()));

        let log = AuditLog::open(opts(dir.path(), 1 << 20, 1 << 30)).unwrap();
        log.handle().record(stored(3));
        log.close(Duration::from_secs(5));
        let r = verify_dir(dir.path()).unwrap();
        assert_eq!(r.torn_tail, None);
        let all = entries(dir.path());
        let rec = all.iter().find(|e| e["event"] == "recovered").unwrap();
        assert_eq!(rec["reason"], "torn_tail_truncated");
        assert_eq!(rec["truncated_bytes"].as_u64(), Some(torn.len() as u64));
        assert_eq!(all.last().unwrap()["event"], "stored");
    }

    #[test]
    fn a_full_channel_never_blocks_and_leaves_a_gap_entry() {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::open_with_capacity(opts(dir.path(), 1 << 20, 1 << 30), 1).unwrap();
        let h = log.handle();
        let t = Instant::now();
        for i in 0..=255 {
            h.record(stored(i));
        }
        assert!(t.elapsed() < Duration::from_secs(2), "record blocked");
        log.close(Duration::from_secs(5));
        let all = entries(dir.path());
        let stored_n = all.iter().filter(|e| e["event"] == "stored").count() as u64;
        let lost: u64 = all
            .iter()
            .filter(|e| e["event"] == "gap")
            .map(|e| e["lost"].as_u64().unwrap())
            .sum();
        assert!(lost > 0, "a channel of 1 cannot take 256 events at once");
        assert_eq!(stored_n + lost, 256, "every event is written or counted");
        verify_dir(dir.path()).unwrap();
    }
}
