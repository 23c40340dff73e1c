//! `vitalgate pair ADDRESS`: bond with a device once, through BlueZ's D-Bus API directly
//! (btleplug has no pairing API): discover it, `Device1.Pair` with our `Agent1` (NoInputNoOutput,
//! or KeyboardOnly with `--passkey`), mark it trusted, and print a config snippet.

use std::time::{Duration, Instant};

use super::bluez::{device_path, Bus};
use super::error::BleError;
use crate::config::BleProfile;

/// What `pair` learned about the device.
#[derive(Debug, Clone)]
pub struct Paired {
    pub address: String,
    pub profiles: Vec<BleProfile>,
}

/// Pairs and trusts the device at `address` on `adapter`.
///
/// # Errors
/// [`BleError::Timeout`] when the device is not seen within `discover_timeout` (is it
/// advertising, in pairing mode?), or BlueZ's refusal ([`BleError::Dbus`]).
pub async fn pair(
    adapter: &str,
    address: &str,
    passkey: Option<u32>,
    discover_timeout: Duration,
) -> Result<Paired, BleError> {
    let bus = Bus::connect()?;
    let path = device_path(adapter, address);
    if !bus.device_known(&path).await {
        bus.start_discovery(adapter).await?;
        let deadline = Instant::now() + discover_timeout;
        while !bus.device_known(&path).await {
            if Instant::now() > deadline {
                return Err(BleError::Timeout {
                    op: "discover the device",
                    after: discover_timeout,
                });
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    bus.pair(&path, passkey, Duration::from_secs(60)).await?;
    let uuids = bus.device_uuids(&path).await;
    let profiles = BleProfile::ALL
        .into_iter()
        .filter(|p| {
            let u = btleplug::api::bleuuid::uuid_from_u16(p.service_uuid16()).to_string();
            uuids.iter().any(|x| x.eq_ignore_ascii_case(&u))
        })
        .collect();
    Ok(Paired {
        address: address.to_ascii_uppercase(),
        profiles,
    })
}

/// The config snippet printed after pairing.
pub fn snippet(p: &Paired) -> String {
    let profile = match p.profiles.as_slice() {
        [] => "profile = \"<blood-pressure|weight-scale|...>\"".to_string(),
        [one] => format!("profile = \"{one}\""),
        many => {
            let list: Vec<String> = many.iter().map(|x| format!("\"{x}\"")).collect();
            format!("profiles = [{}]", list.join(", "))
        }
    };
    format!(
        "[[devices]]\nname = \"<name>\"\nkind = \"ble\"\naddress = \"{}\"\n{profile}\npair_if_bond_lost = true\npatient = \"Patient/<id>\"\n",
        p.address
    )
}
