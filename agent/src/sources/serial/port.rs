//! Opening a serial port with tokio-serial, and what a failure means for the technician. The
//! only file that names tokio-serial types.

use std::fmt;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use device_drivers::serial::{FlowControl, Parity, PortSettings};
use tokio_serial::{SerialPortBuilderExt, SerialStream};

/// Why a port could not be opened, classified by error type (never by message text).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    /// The path does not exist: the device is unplugged (a `/dev/serial/by-id/` link disappears
    /// with it), not yet enumerated, or the path is wrong.
    #[error("{} does not exist (device unplugged or not yet detected?)", .0.display())]
    NotFound(PathBuf),
    /// The agent's user may not open the port.
    #[error("{}", permission_message(.port, .owner.as_ref(), *.uid))]
    PermissionDenied {
        port: PathBuf,
        /// The device node's group and mode, if they could be read.
        owner: Option<NodeOwner>,
        uid: Option<u32>,
    },
    /// Another program holds the port (vitalgate opens ports exclusively).
    #[error("{} is in use by another program (only one program can read a serial port; stop the other one, e.g. a `cat` or a terminal emulator)", .0.display())]
    Busy(PathBuf),
    /// The port settings are not supported by the device or its driver.
    #[error("{} refused the port settings {settings}: {description}", .port.display())]
    Settings {
        port: PathBuf,
        settings: String,
        description: String,
    },
    #[error("{}: {description}", .port.display())]
    Other { port: PathBuf, description: String },
}

impl OpenError {
    pub fn is_permission(&self) -> bool {
        matches!(self, OpenError::PermissionDenied { .. })
    }
}

/// Who may open a device node besides its owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeOwner {
    /// The group's name, or its number if `/etc/group` does not list it.
    pub group: String,
    pub gid: u32,
    /// Permission bits (e.g. 0o660).
    pub mode: u32,
}

fn permission_message(port: &Path, owner: Option<&NodeOwner>, uid: Option<u32>) -> String {
    let user = uid.map_or_else(String::new, |u| format!(" (uid {u})"));
    let head = format!(
        "permission denied opening serial port {}: the user running vitalgate{user} may not read it",
        port.display()
    );
    match owner {
        // A group with read/write access: join it.
        Some(o) if o.gid != 0 && o.mode & 0o060 == 0o060 => format!(
            "{head}. Fix: add that user to the port's group `{g}` (sudo usermod -aG {g} vitalgate; for the service, the unit's SupplementaryGroups={g}) and restart the service",
            g = o.group
        ),
        // Owned by root, or no group access: no group to join; the node must change.
        Some(o) => format!(
            "{head}. The port is group `{}` with mode {:04o}: no group gives access. Fix: a udev rule giving the device GROUP=\"dialout\", MODE=\"0660\" (example: config/udev/99-vitalgate-serial.rules), with the vitalgate user in `dialout` (sudo usermod -aG dialout vitalgate), then replug the device",
            o.group, o.mode & 0o7777
        ),
        None => format!(
            "{head}. Fix: add that user to the port's group, usually `dialout` (sudo usermod -aG dialout vitalgate), and restart the service"
        ),
    }
}

/// Opens `port` with `settings`, exclusively (TIOCEXCL + flock: a second reader would steal
/// bytes from the decoder).
///
/// # Errors
///
/// An [`OpenError`] saying what the technician can do.
pub fn open(port: &Path, settings: &PortSettings) -> Result<SerialStream, OpenError> {
    let path = port.to_string_lossy();
    let builder = tokio_serial::new(path, settings.baud)
        .data_bits(match settings.data_bits {
            5 => tokio_serial::DataBits::Five,
            6 => tokio_serial::DataBits::Six,
            7 => tokio_serial::DataBits::Seven,
            _ => tokio_serial::DataBits::Eight,
        })
        .parity(match settings.parity {
            Parity::None => tokio_serial::Parity::None,
            Parity::Even => tokio_serial::Parity::Even,
            Parity::Odd => tokio_serial::Parity::Odd,
        })
        .stop_bits(match settings.stop_bits {
            2 => tokio_serial::StopBits::Two,
            _ => tokio_serial::StopBits::One,
        })
        .flow_control(match settings.flow_control {
            FlowControl::None => tokio_serial::FlowControl::None,
            FlowControl::Rtscts => tokio_serial::FlowControl::Hardware,
            FlowControl::Xonxoff => tokio_serial::FlowControl::Software,
        })
        .exclusive(true);
    builder
        .open_native_async()
        .map_err(|e| classify(port, settings, &e))
}

fn classify(port: &Path, settings: &PortSettings, e: &tokio_serial::Error) -> OpenError {
    use tokio_serial::ErrorKind as K;
    match e.kind {
        K::Io(io::ErrorKind::NotFound) => OpenError::NotFound(port.to_path_buf()),
        K::Io(io::ErrorKind::PermissionDenied) => OpenError::PermissionDenied {
            port: port.to_path_buf(),
            owner: std::fs::metadata(port).ok().map(|m| NodeOwner {
                group: group_name(m.gid()).unwrap_or_else(|| m.gid().to_string()),
                gid: m.gid(),
                mode: m.mode(),
            }),
            uid: std::fs::metadata("/proc/self").ok().map(|m| m.uid()),
        },
        // serialport reports EBUSY (TIOCEXCL) and a held flock as NoDevice.
        K::NoDevice => OpenError::Busy(port.to_path_buf()),
        K::InvalidInput => OpenError::Settings {
            port: port.to_path_buf(),
            settings: settings.to_string(),
            description: e.description.clone(),
        },
        K::Io(_) | K::Unknown => OpenError::Other {
            port: port.to_path_buf(),
            description: e.description.clone(),
        },
    }
}

/// The name of group `gid` from `/etc/group`, if listed.
fn group_name(gid: u32) -> Option<String> {
    let text = std::fs::read_to_string("/etc/group").ok()?;
    group_name_in(&text, gid)
}

fn group_name_in(etc_group: &str, gid: u32) -> Option<String> {
    etc_group.lines().find_map(|l| {
        let mut f = l.split(':');
        let name = f.next()?;
        let _password = f.next()?;
        (f.next()?.parse::<u32>().ok()? == gid).then(|| name.to_string())
    })
}

/// Why an open port was given up.
#[derive(Debug)]
pub enum Lost {
    /// `read` returned 0 bytes: the other end hung up.
    EndOfFile,
    Io(io::Error),
}

impl fmt::Display for Lost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Lost::EndOfFile => f.write_str("end of file (hang-up)"),
            Lost::Io(e) => write!(f, "{e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_names_come_from_etc_group() {
        let text = "root:x:0:\ndialout:x:20:pi,vitalgate\ntty:x:5:\n";
        assert_eq!(group_name_in(text, 20).as_deref(), Some("dialout"));
        assert_eq!(group_name_in(text, 5).as_deref(), Some("tty"));
        assert_eq!(group_name_in(text, 99), None);
    }

    #[test]
    fn the_permission_message_names_the_group_and_the_fix() {
        let e = OpenError::PermissionDenied {
            port: "/dev/ttyUSB0".into(),
            owner: Some(NodeOwner {
                group: "dialout".into(),
                gid: 20,
                mode: 0o20660,
            }),
            uid: Some(998),
        };
        let m = e.to_string();
        assert!(m.contains("/dev/ttyUSB0"), "{m}");
        assert!(m.contains("usermod -aG dialout vitalgate"), "{m}");
        assert!(m.contains("uid 998"), "{m}");
        assert!(e.is_permission());
    }

    #[test]
    fn a_port_no_group_can_open_needs_a_udev_rule_not_a_group() {
        let e = OpenError::PermissionDenied {
            port: "/dev/ttyS1".into(),
            owner: Some(NodeOwner {
                group: "root".into(),
                gid: 0,
                mode: 0o20600,
            }),
            uid: None,
        };
        let m = e.to_string();
        assert!(m.contains("udev rule"), "{m}");
        assert!(m.contains("0600"), "{m}");
        assert!(!m.contains("usermod -aG root"), "{m}");
    }

    #[tokio::test]
    async fn a_missing_port_is_not_found() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("no-such-port");
        let e = open(&p, &PortSettings::n81(9600)).unwrap_err();
        assert_eq!(e, OpenError::NotFound(p));
    }
}
