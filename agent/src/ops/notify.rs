//! The systemd notification protocol (sd_notify(3)): `READY=1`, `RELOADING=1`, `STOPPING=1`,
//! `WATCHDOG=1` as datagrams to the socket named by `NOTIFY_SOCKET`.
//!
//! Our own 40 lines rather than the `sd-notify` crate so the destination can be given
//! explicitly: tests bind a datagram socket of their own and record what the agent says,
//! without touching the process environment.

use std::io;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::path::PathBuf;
use std::time::Duration;

/// Where notifications go.
#[derive(Debug, Clone)]
pub struct Notifier {
    target: Target,
}

#[derive(Debug, Clone)]
enum Target {
    Path(PathBuf),
    Abstract(Vec<u8>),
}

impl Notifier {
    /// The service manager's socket (`NOTIFY_SOCKET`), if the agent runs under one.
    pub fn from_env() -> Option<Notifier> {
        let v = std::env::var_os("NOTIFY_SOCKET")?;
        let s = v.to_string_lossy();
        if s.is_empty() {
            return None;
        }
        Some(match s.strip_prefix('@') {
            Some(name) => Notifier {
                target: Target::Abstract(name.as_bytes().to_vec()),
            },
            None => Notifier::at(PathBuf::from(v)),
        })
    }

    /// A socket path (tests).
    pub fn at(path: PathBuf) -> Notifier {
        Notifier {
            target: Target::Path(path),
        }
    }

    /// Sends one notification, e.g. `"READY=1"`.
    ///
    /// # Errors
    ///
    /// The socket is gone or refuses the datagram.
    pub fn send(&self, state: &str) -> io::Result<()> {
        let sock = UnixDatagram::unbound()?;
        let addr = match &self.target {
            Target::Path(p) => SocketAddr::from_pathname(p)?,
            Target::Abstract(name) => {
                use std::os::linux::net::SocketAddrExt;
                SocketAddr::from_abstract_name(name)?
            }
        };
        sock.send_to_addr(state.as_bytes(), &addr).map(|_| ())
    }
}

/// The watchdog timeout systemd asked for (`WATCHDOG_USEC`, for this process if
/// `WATCHDOG_PID` names one), or `None` when no watchdog is configured.
pub fn watchdog_timeout_from_env() -> Option<Duration> {
    if let Some(pid) = std::env::var_os("WATCHDOG_PID") {
        if pid.to_string_lossy().trim() != std::process::id().to_string() {
            return None;
        }
    }
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.trim().parse().ok()?;
    (usec > 0).then(|| Duration::from_micros(usec))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datagrams_reach_a_path_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let rx = UnixDatagram::bind(&path).unwrap();
        Notifier::at(path).send("READY=1").unwrap();
        let mut buf = [0u8; 64];
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
    }
}
