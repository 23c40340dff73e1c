//! `vitalgate scan`: what is advertising nearby, which health services it offers, whether it is
//! configured, and a ready `[[devices]]` snippet for each health device.

use std::collections::HashMap;
use std::time::Duration;

use btleplug::api::{Central as _, Manager as _, Peripheral as _, ScanFilter};
use btleplug::platform::Manager;

use super::error::{with_timeout, BleError};
use crate::config::BleProfile;

/// One device seen during a scan.
#[derive(Debug, Clone)]
pub struct Seen {
    pub address: String,
    pub address_type: &'static str,
    pub name: Option<String>,
    pub rssi: Option<i16>,
    /// Health profiles whose service the device advertises.
    pub profiles: Vec<BleProfile>,
    /// The configured device name at this address, if any.
    pub configured: Option<String>,
}

/// Scans for `seconds` on `adapter` (no service filter) and lists what was seen, health
/// devices first, then by signal strength.
///
/// # Errors
/// [`BleError`] when BlueZ or the adapter is unavailable.
pub async fn scan(
    adapter: &str,
    seconds: u64,
    configured: &HashMap<String, String>,
) -> Result<Vec<Seen>, BleError> {
    let op = Duration::from_secs(10);
    let manager = with_timeout("manager", op, Manager::new()).await?;
    let mut chosen = None;
    for a in with_timeout("adapters", op, manager.adapters()).await? {
        let info = with_timeout("adapter info", op, a.adapter_info()).await?;
        if info.split_whitespace().next() == Some(adapter) {
            chosen = Some(a);
        }
    }
    let central = chosen.ok_or_else(|| BleError::NoAdapter(adapter.to_string()))?;
    with_timeout("start scan", op, central.start_scan(ScanFilter::default())).await?;
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let peripherals = with_timeout("peripherals", op, central.peripherals()).await?;
    let _ = with_timeout("stop scan", op, central.stop_scan()).await;
    let mut out = Vec::new();
    for p in peripherals {
        let Ok(Some(props)) = with_timeout("properties", op, p.properties()).await else {
            continue;
        };
        let address = props.address.to_string().to_ascii_uppercase();
        let profiles = BleProfile::ALL
            .into_iter()
            .filter(|prof| {
                let u = btleplug::api::bleuuid::uuid_from_u16(prof.service_uuid16());
                props.services.contains(&u)
            })
            .collect();
        out.push(Seen {
            configured: configured.get(&address).cloned(),
            address,
            address_type: match props.address_type {
                Some(btleplug::api::AddressType::Random) => "random",
                _ => "public",
            },
            name: props.local_name,
            rssi: props.rssi,
            profiles,
        });
    }
    out.sort_by_key(|s| {
        (
            s.profiles.is_empty(),
            std::cmp::Reverse(s.rssi.unwrap_or(i16::MIN)),
        )
    });
    Ok(out)
}

/// The table `vitalgate scan` prints.
pub fn table(seen: &[Seen]) -> String {
    let mut s = format!(
        "{:<19} {:<7} {:>5}  {:<24} {:<32} {}\n",
        "ADDRESS", "TYPE", "RSSI", "NAME", "HEALTH SERVICES", "CONFIGURED"
    );
    for d in seen {
        let services: Vec<&str> = d.profiles.iter().map(|p| p.as_str()).collect();
        s.push_str(&format!(
            "{:<19} {:<7} {:>5}  {:<24} {:<32} {}\n",
            d.address,
            d.address_type,
            d.rssi.map_or("-".to_string(), |r| r.to_string()),
            d.name
                .as_deref()
                .unwrap_or("-")
                .chars()
                .take(24)
                .collect::<String>(),
            if services.is_empty() {
                "-".to_string()
            } else {
                services.join(",")
            },
            d.configured.as_deref().unwrap_or("no"),
        ));
    }
    s
}

/// A `[[devices]]` snippet for a health device (the technician fills in the patient).
pub fn snippet(d: &Seen) -> Option<String> {
    let first = d.profiles.first()?;
    let name: String = d
        .name
        .as_deref()
        .unwrap_or("ble-device")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .take(40)
        .collect();
    let profiles = if d.profiles.len() == 1 {
        format!("profile = \"{first}\"")
    } else {
        let list: Vec<String> = d.profiles.iter().map(|p| format!("\"{p}\"")).collect();
        format!("profiles = [{}]", list.join(", "))
    };
    Some(format!(
        "[[devices]]\nname = \"{name}\"\nkind = \"ble\"\naddress = \"{}\"\n{profiles}\npatient = \"Patient/<id>\"   # or patients = {{ 1 = \"...\", 2 = \"...\" }}\n",
        d.address
    ))
}
