//! What btleplug cannot do, done on our own D-Bus connection to the system bus:
//! - watch `org.bluez` change owner (BlueZ restarted or gone: `NameOwnerChanged`);
//! - read and set the adapter's `Powered` / `Discovering` (power-cycle recovery);
//! - pair a device (`Device1.Pair`) with an `Agent1` that answers for NoInputNoOutput and
//!   passkey devices, and mark it trusted;
//! - ask systemd-timedated whether the gateway clock is NTP-synchronised.
//!
//! The bus is the one `DBUS_SYSTEM_BUS_ADDRESS` names (libdbus), like btleplug's.

use std::sync::Arc;
use std::time::Duration;

use dbus::arg::{RefArg, Variant};
use dbus::channel::MatchingReceiver;
use dbus::message::MatchRule;
use dbus::nonblock::stdintf::org_freedesktop_dbus::Properties;
use dbus::nonblock::{Proxy, SyncConnection};
use dbus::Message;
use futures::channel::mpsc::UnboundedReceiver;

use super::error::BleError;

const BLUEZ: &str = "org.bluez";
const AGENT_PATH: &str = "/org/vitalgate/agent";
/// The deadline of every D-Bus call this module makes.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// A D-Bus connection of our own, with its I/O task running on the current runtime.
pub struct Bus {
    pub conn: Arc<SyncConnection>,
    io: tokio::task::JoinHandle<()>,
}

impl Drop for Bus {
    fn drop(&mut self) {
        self.io.abort();
    }
}

impl Bus {
    /// Connects to the system bus.
    ///
    /// # Errors
    /// [`BleError::Dbus`] when the bus is unreachable.
    pub fn connect() -> Result<Bus, BleError> {
        let (resource, conn) = dbus_tokio::connection::new_system_sync()
            .map_err(|e| BleError::dbus("connect to the system bus", e))?;
        let io = tokio::spawn(async move {
            let _lost = resource.await;
        });
        Ok(Bus { conn, io })
    }

    /// Has the connection's I/O task ended (bus lost)?
    pub fn is_lost(&self) -> bool {
        self.io.is_finished()
    }

    fn proxy<'a>(
        &'a self,
        dest: &'a str,
        path: String,
        timeout: Duration,
    ) -> Proxy<'a, Arc<SyncConnection>> {
        Proxy::new(dest, path, timeout, Arc::clone(&self.conn))
    }

    /// The current unique name owning `org.bluez`, if any.
    pub async fn bluez_owner(&self) -> Option<String> {
        let p = self.proxy(
            "org.freedesktop.DBus",
            "/org/freedesktop/DBus".into(),
            CALL_TIMEOUT,
        );
        p.method_call::<(String,), _, _, _>("org.freedesktop.DBus", "GetNameOwner", (BLUEZ,))
            .await
            .ok()
            .map(|(o,)| o)
    }

    /// A stream of new owners of `org.bluez` (`""` when BlueZ went away).
    ///
    /// # Errors
    /// [`BleError::Dbus`] if the match rule cannot be added.
    pub async fn watch_bluez_owner(
        &self,
    ) -> Result<(dbus::nonblock::MsgMatch, UnboundedReceiver<String>), BleError> {
        let rule = MatchRule::new_signal("org.freedesktop.DBus", "NameOwnerChanged")
            .with_sender("org.freedesktop.DBus")
            .static_clone();
        let rule = {
            let mut r = rule;
            r.path = Some("/org/freedesktop/DBus".into());
            r
        };
        let m = self
            .conn
            .add_match(rule)
            .await
            .map_err(|e| BleError::dbus("watch org.bluez", e))?;
        let (tx, rx) = futures::channel::mpsc::unbounded();
        let m = m.cb(
            move |_msg: Message, (name, _old, new): (String, String, String)| {
                if name == BLUEZ {
                    let _ = tx.unbounded_send(new);
                }
                true
            },
        );
        Ok((m, rx))
    }

    /// `(Powered, Discovering)` of an adapter, or `None` if it does not exist.
    pub async fn adapter_state(&self, adapter: &str) -> Option<(bool, bool)> {
        let p = self.proxy(BLUEZ, format!("/org/bluez/{adapter}"), CALL_TIMEOUT);
        let powered: bool = p.get("org.bluez.Adapter1", "Powered").await.ok()?;
        let discovering: bool = p.get("org.bluez.Adapter1", "Discovering").await.ok()?;
        Some((powered, discovering))
    }

    /// Sets the adapter's `Powered` property.
    ///
    /// # Errors
    /// [`BleError::Dbus`].
    pub async fn set_powered(&self, adapter: &str, on: bool) -> Result<(), BleError> {
        let p = self.proxy(BLUEZ, format!("/org/bluez/{adapter}"), CALL_TIMEOUT);
        p.set("org.bluez.Adapter1", "Powered", on)
            .await
            .map_err(|e| BleError::dbus("set adapter Powered", e))
    }

    /// Is the gateway clock synchronised (systemd-timedated `NTPSynchronized`)? Falls back to
    /// systemd-timesyncd's flag file; `None` when neither can tell.
    pub async fn ntp_synchronized(&self) -> Option<bool> {
        let p = self.proxy(
            "org.freedesktop.timedate1",
            "/org/freedesktop/timedate1".into(),
            Duration::from_secs(3),
        );
        match p
            .get::<bool>("org.freedesktop.timedate1", "NTPSynchronized")
            .await
        {
            Ok(v) => Some(v),
            Err(_) => std::path::Path::new("/run/systemd/timesync/synchronized")
                .exists()
                .then_some(true),
        }
    }

    /// Pairs the device at `device_path` (`/org/bluez/hci0/dev_...`), answering the pairing
    /// agent's questions: a passkey device gets `passkey`, a Just Works device is confirmed.
    /// Then marks it trusted.
    ///
    /// # Errors
    /// [`BleError::Dbus`] when BlueZ refuses (wrong passkey, device not in pairing mode...).
    pub async fn pair(
        &self,
        device_path: &str,
        passkey: Option<u32>,
        timeout: Duration,
    ) -> Result<(), BleError> {
        let capability = if passkey.is_some() {
            "KeyboardOnly"
        } else {
            "NoInputNoOutput"
        };
        let token = self.conn.start_receive(
            MatchRule::new_method_call()
                .with_path(AGENT_PATH)
                .static_clone(),
            Box::new(move |msg: Message, conn: &SyncConnection| {
                answer_agent(&msg, conn, passkey);
                true
            }),
        );
        let result = async {
            let mgr = self.proxy(BLUEZ, "/org/bluez".into(), CALL_TIMEOUT);
            let agent = dbus::Path::from(AGENT_PATH);
            mgr.method_call::<(), _, _, _>(
                "org.bluez.AgentManager1",
                "RegisterAgent",
                (agent.clone(), capability),
            )
            .await
            .map_err(|e| BleError::dbus("RegisterAgent", e))?;
            let _ = mgr
                .method_call::<(), _, _, _>(
                    "org.bluez.AgentManager1",
                    "RequestDefaultAgent",
                    (agent.clone(),),
                )
                .await;
            let dev = self.proxy(BLUEZ, device_path.to_string(), timeout);
            let paired = dev
                .method_call::<(), _, _, _>("org.bluez.Device1", "Pair", ())
                .await;
            let _ = mgr
                .method_call::<(), _, _, _>("org.bluez.AgentManager1", "UnregisterAgent", (agent,))
                .await;
            match paired {
                Ok(()) => {}
                Err(e) if e.name() == Some("org.bluez.Error.AlreadyExists") => {}
                Err(e) => {
                    return Err(BleError::Dbus {
                        op: "Pair",
                        source: e,
                    })
                }
            }
            dev.set("org.bluez.Device1", "Trusted", true)
                .await
                .map_err(|e| BleError::dbus("set Trusted", e))
        }
        .await;
        self.conn.stop_receive(token);
        result
    }

    /// Starts discovery with no filter (for `vitalgate pair`, which needs BlueZ to know the
    /// device first).
    ///
    /// # Errors
    /// [`BleError::Dbus`].
    pub async fn start_discovery(&self, adapter: &str) -> Result<(), BleError> {
        let p = self.proxy(BLUEZ, format!("/org/bluez/{adapter}"), CALL_TIMEOUT);
        p.method_call::<(), _, _, _>("org.bluez.Adapter1", "StartDiscovery", ())
            .await
            .map_err(|e| BleError::dbus("StartDiscovery", e))
    }

    /// Does BlueZ have an object for this device path?
    pub async fn device_known(&self, device_path: &str) -> bool {
        let p = self.proxy(BLUEZ, device_path.to_string(), CALL_TIMEOUT);
        p.get::<String>("org.bluez.Device1", "Address")
            .await
            .is_ok()
    }

    /// The advertised service UUIDs of a device (lower-case strings).
    pub async fn device_uuids(&self, device_path: &str) -> Vec<String> {
        let p = self.proxy(BLUEZ, device_path.to_string(), CALL_TIMEOUT);
        p.get::<Vec<String>>("org.bluez.Device1", "UUIDs")
            .await
            .unwrap_or_default()
    }
}

/// The object path BlueZ gives a device: `/org/bluez/hci0/dev_AA_BB_CC_DD_EE_FF`.
pub fn device_path(adapter: &str, address: &str) -> String {
    format!(
        "/org/bluez/{adapter}/dev_{}",
        address.to_ascii_uppercase().replace(':', "_")
    )
}

/// Answers one `org.bluez.Agent1` call on our agent object.
fn answer_agent(msg: &Message, conn: &SyncConnection, passkey: Option<u32>) {
    use dbus::channel::Sender as _;
    let member = msg.member().map(|m| m.to_string()).unwrap_or_default();
    let reply = match (member.as_str(), passkey) {
        ("RequestPasskey", Some(pk)) => msg.method_return().append1(pk),
        ("RequestPasskey", None) | ("RequestPinCode", _) => {
            msg.error(&"org.bluez.Error.Rejected".into(), c"no passkey configured")
        }
        // Just Works / numeric comparison on a device without a display: accept.
        (
            "RequestConfirmation"
            | "RequestAuthorization"
            | "AuthorizeService"
            | "DisplayPasskey"
            | "DisplayPinCode"
            | "Release"
            | "Cancel",
            _,
        ) => msg.method_return(),
        ("Introspect", _) => msg.method_return().append1(AGENT_INTROSPECT),
        _ => msg.error(
            &"org.freedesktop.DBus.Error.UnknownMethod".into(),
            c"unknown method",
        ),
    };
    let _ = conn.send(reply);
}

const AGENT_INTROSPECT: &str = r#"<node><interface name="org.bluez.Agent1"><method name="Release"/><method name="RequestPinCode"><arg type="o" direction="in"/><arg type="s" direction="out"/></method><method name="DisplayPinCode"><arg type="o" direction="in"/><arg type="s" direction="in"/></method><method name="RequestPasskey"><arg type="o" direction="in"/><arg type="u" direction="out"/></method><method name="DisplayPasskey"><arg type="o" direction="in"/><arg type="u" direction="in"/><arg type="q" direction="in"/></method><method name="RequestConfirmation"><arg type="o" direction="in"/><arg type="u" direction="in"/></method><method name="RequestAuthorization"><arg type="o" direction="in"/></method><method name="AuthorizeService"><arg type="o" direction="in"/><arg type="s" direction="in"/></method><method name="Cancel"/></interface></node>"#;

#[allow(dead_code)]
fn _variant_is_refarg(v: Variant<Box<dyn RefArg>>) -> Variant<Box<dyn RefArg>> {
    v
}
