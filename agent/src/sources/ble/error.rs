//! The transport's error type: btleplug's catch-all errors mapped to what the transport acts on.
//!
//! btleplug reports most BlueZ failures as `Error::Other(Box<BluetoothError>)` wrapping a
//! `dbus::Error`. We classify by walking `source()` to the `dbus::Error` and reading its D-Bus
//! error *name* (`org.bluez.Error.NotPermitted`, ...), a protocol identifier, never by matching
//! message text.

use std::time::Duration;

/// What went wrong talking to a device or the adapter. Carries no PHI.
#[derive(Debug, thiserror::Error)]
pub enum BleError {
    #[error("{op} timed out after {after:?}")]
    Timeout { op: &'static str, after: Duration },
    #[error("{op}: the device requires a bond (pairing) and none is present")]
    AuthenticationRequired { op: &'static str },
    #[error("{op}: {source}")]
    Btle {
        op: &'static str,
        #[source]
        source: btleplug::Error,
    },
    #[error("{op}: {source}")]
    Dbus {
        op: &'static str,
        #[source]
        source: dbus::Error,
    },
    #[error("characteristic {0:#06x} is missing")]
    MissingCharacteristic(u16),
    #[error("the device disconnected")]
    Disconnected,
    #[error("no Bluetooth adapter {0}")]
    NoAdapter(String),
    #[error("the device's Device Information does not match the configuration ({field})")]
    IdentityMismatch { field: &'static str },
    #[error("the pipeline is gone (shutdown)")]
    PipelineClosed,
}

impl BleError {
    /// Wraps a btleplug error, recognising an authentication refusal by its D-Bus error name.
    pub fn btle(op: &'static str, e: btleplug::Error) -> Self {
        if dbus_error_name(&e).is_some_and(is_auth_error_name) {
            return Self::AuthenticationRequired { op };
        }
        Self::Btle { op, source: e }
    }

    pub fn dbus(op: &'static str, e: dbus::Error) -> Self {
        if e.name().is_some_and(is_auth_error_name) {
            return Self::AuthenticationRequired { op };
        }
        Self::Dbus { op, source: e }
    }

    /// A short label for logs and counters.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Timeout { .. } => "timeout",
            Self::AuthenticationRequired { .. } => "authentication_required",
            Self::Btle { .. } | Self::Dbus { .. } => "bluez",
            Self::MissingCharacteristic(_) => "missing_characteristic",
            Self::Disconnected => "disconnected",
            Self::NoAdapter(_) => "no_adapter",
            Self::IdentityMismatch { .. } => "identity_mismatch",
            Self::PipelineClosed => "shutdown",
        }
    }
}

/// The D-Bus error name inside a btleplug error, if any.
pub fn dbus_error_name(e: &btleplug::Error) -> Option<&str> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = match e {
        btleplug::Error::Other(inner) => Some(inner.as_ref()),
        _ => None,
    };
    while let Some(err) = cur {
        if let Some(d) = err.downcast_ref::<dbus::Error>() {
            return d.name();
        }
        // bluez-async's DbusError is `#[error(transparent)]`: source() skips the dbus::Error.
        if let Some(bluez_async::BluetoothError::DbusError(d)) =
            err.downcast_ref::<bluez_async::BluetoothError>()
        {
            return d.name();
        }
        cur = err.source();
    }
    None
}

/// BlueZ's names for "this needs a bond / encryption" (GATT Insufficient Authentication or
/// Encryption surface as `NotPermitted` / `NotAuthorized` / `AuthenticationFailed`).
fn is_auth_error_name(name: &str) -> bool {
    matches!(
        name,
        "org.bluez.Error.NotPermitted"
            | "org.bluez.Error.NotAuthorized"
            | "org.bluez.Error.AuthenticationFailed"
            | "org.bluez.Error.AuthenticationRejected"
    )
}

/// Runs a BLE operation with a deadline.
///
/// # Errors
/// [`BleError::Timeout`], or the operation's own error mapped by [`BleError::btle`].
pub async fn with_timeout<T>(
    op: &'static str,
    after: Duration,
    fut: impl std::future::Future<Output = Result<T, btleplug::Error>>,
) -> Result<T, BleError> {
    match tokio::time::timeout(after, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(BleError::btle(op, e)),
        Err(_) => Err(BleError::Timeout { op, after }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_not_permitted_dbus_error_inside_btleplug_is_an_authentication_refusal() {
        // What bluez-async produces: Error::Other(Box<BluetoothError::DbusError(dbus::Error)>);
        // any boxed error chain ending in a dbus::Error is classified the same way.
        let d = dbus::Error::new_custom(
            "org.bluez.Error.NotPermitted",
            "Insufficient Authentication (0x05)",
        );
        let e = btleplug::Error::Other(Box::new(bluez_async::BluetoothError::DbusError(d)));
        assert!(matches!(
            BleError::btle("subscribe", e),
            BleError::AuthenticationRequired { op: "subscribe" }
        ));
        let other = btleplug::Error::Other(Box::new(dbus::Error::new_custom(
            "org.bluez.Error.Failed",
            "Not connected",
        )));
        assert_eq!(BleError::btle("read", other).kind(), "bluez");
    }
}
