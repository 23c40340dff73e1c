//! Where log lines go: the systemd journal (structured fields) when stderr is the journal,
//! plain text on stderr otherwise.
//!
//! Under systemd, `JOURNAL_STREAM=<dev>:<inode>` names the journal stream connected to stdout
//! and stderr. When stderr is that stream (sd_journal_stream_fd(3): compare device and inode,
//! since a child may inherit the variable with stderr redirected elsewhere), events go to
//! journald through its native protocol with every field as a journal field
//! (`journalctl -u vitalgate ALARM=disk_full`, `journalctl -o verbose`), and the level as the
//! journal priority. Otherwise they are formatted text on stderr.
//!
//! The filter comes from `VITALGATE_LOG` (default `info`), with the syntax of
//! [`tracing_subscriber::filter::Targets`]: `debug`, or `info,vitalgate=debug,rumqttc=warn`.
//! An unparsable value falls back to `info` and says so once.
//!
//! sled logs through `log` (bridged here) and repeats itself in a failure: during a full-disk
//! episode it logs one ERROR per buffer it fails to write, besides our own one line per
//! episode. Its lines are limited to one per target and level every [`NOISY_EVERY`]; the rest
//! are counted (`log_lines_suppressed`).

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer};

use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// The environment variable holding the log filter.
pub const LOG_ENV: &str = "VITALGATE_LOG";

/// Where the process logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sink {
    Journal,
    Stderr,
}

/// Installs the process-wide subscriber (once; later calls do nothing) and returns where logs go.
pub fn init() -> Sink {
    let (filter, bad) = filter_from(std::env::var(LOG_ENV).ok().as_deref());
    let sink = if stderr_is_journal() {
        match tracing_journald::layer() {
            Ok(layer) => {
                // No `F_` prefix (tracing-journald's default): the documented queries use the
                // plain names (`ALARM=disk`, `DEVICE=...`). None of our field names is one
                // journald reserves (MESSAGE, PRIORITY, CODE_*, SYSLOG_*; `_*` are trusted).
                let layer = layer
                    .with_syslog_identifier("vitalgate".into())
                    .with_field_prefix(None);
                let _ = tracing_subscriber::registry()
                    .with(RateLimit::default())
                    .with(layer)
                    .with(filter)
                    .try_init();
                Sink::Journal
            }
            Err(_) => init_stderr(filter),
        }
    } else {
        init_stderr(filter)
    };
    if let Some(bad) = bad {
        tracing::warn!(value = %bad, "{LOG_ENV} is not a valid filter; logging at info");
    }
    sink
}

fn init_stderr(filter: Targets) -> Sink {
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(false);
    let _ = tracing_subscriber::registry()
        .with(RateLimit::default())
        .with(fmt)
        .with(filter)
        .try_init();
    Sink::Stderr
}

/// Targets whose repeated lines are limited (see the module doc).
const NOISY: &[&str] = &["sled"];

/// At most one line per noisy target and level this often.
pub const NOISY_EVERY: Duration = Duration::from_secs(60);

/// Drops a noisy dependency's event when the same target and level logged less than
/// [`NOISY_EVERY`] ago (for every layer: `event_enabled` is global).
#[derive(Default)]
pub struct RateLimit {
    last: Mutex<HashMap<(String, Level), Instant>>,
}

impl RateLimit {
    /// Whether an event of `target` at `level` at `now` is written.
    pub fn admit(&self, target: &str, level: Level, now: Instant) -> bool {
        if !NOISY.iter().any(|p| target.starts_with(p)) {
            return true;
        }
        let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        match last.get(&(target.to_owned(), level)) {
            Some(at) if now.duration_since(*at) < NOISY_EVERY => {
                crate::telemetry::LogLineSuppressed.emit();
                false
            }
            _ => {
                last.insert((target.to_owned(), level), now);
                true
            }
        }
    }
}

impl<S: Subscriber> Layer<S> for RateLimit {
    fn event_enabled(&self, event: &Event<'_>, _ctx: Context<'_, S>) -> bool {
        let m = event.metadata();
        self.admit(m.target(), *m.level(), Instant::now())
    }
}

/// Parses a `VITALGATE_LOG` value; on error returns `info` and the value that failed.
pub fn filter_from(value: Option<&str>) -> (Targets, Option<String>) {
    let info = || Targets::new().with_default(LevelFilter::INFO);
    match value.map(str::trim) {
        None | Some("") => (info(), None),
        Some(v) => match v.parse::<Targets>() {
            Ok(t) => (t, None),
            Err(_) => (info(), Some(v.to_string())),
        },
    }
}

/// Is stderr the journal stream systemd announced in `JOURNAL_STREAM`?
pub fn stderr_is_journal() -> bool {
    let Some(announced) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = parse_journal_stream(&announced.to_string_lossy()) else {
        return false;
    };
    // stat(2) through the fd's magic link works for sockets too.
    match std::fs::metadata("/proc/self/fd/2") {
        Ok(m) => m.dev() == dev && m.ino() == ino,
        Err(_) => false,
    }
}

/// `"<dev>:<inode>"`, both decimal.
pub fn parse_journal_stream(s: &str) -> Option<(u64, u64)> {
    let (d, i) = s.trim().split_once(':')?;
    Some((d.parse().ok()?, i.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing::Level;

    #[test]
    fn a_noisy_dependency_logs_once_a_minute_per_target_and_level_and_ours_always() {
        let r = RateLimit::default();
        let t0 = Instant::now();
        assert!(r.admit("sled::pagecache::iobuf", Level::ERROR, t0));
        assert!(!r.admit(
            "sled::pagecache::iobuf",
            Level::ERROR,
            t0 + Duration::from_secs(1)
        ));
        assert!(r.admit("sled::pagecache::iobuf", Level::WARN, t0));
        assert!(r.admit("sled::flusher", Level::ERROR, t0));
        assert!(r.admit("sled::pagecache::iobuf", Level::ERROR, t0 + NOISY_EVERY));
        for _ in 0..3 {
            assert!(r.admit("vitalgate::store", Level::ERROR, t0));
        }
    }

    #[test]
    fn journal_stream_values_parse_or_are_refused() {
        assert_eq!(parse_journal_stream("8:12345"), Some((8, 12345)));
        assert_eq!(parse_journal_stream("8-12345"), None);
        assert_eq!(parse_journal_stream("x:1"), None);
    }

    #[test]
    fn the_log_filter_accepts_levels_and_per_target_directives_and_falls_back_to_info() {
        let (t, bad) = filter_from(Some("warn,vitalgate=debug"));
        assert!(bad.is_none());
        assert!(t.would_enable("vitalgate::app", &Level::DEBUG));
        assert!(!t.would_enable("rumqttc", &Level::INFO));
        let (t, bad) = filter_from(Some("loud!!=yes=no"));
        assert_eq!(bad.as_deref(), Some("loud!!=yes=no"));
        assert!(t.would_enable("x", &Level::INFO) && !t.would_enable("x", &Level::DEBUG));
        let (t, bad) = filter_from(None);
        assert!(bad.is_none() && t.would_enable("x", &Level::INFO));
    }
}
