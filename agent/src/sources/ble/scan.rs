//! `vitalgate scan`: what is advertising nearby, which health services it offers, whether it is
//! configured, and a ready `[[devices]]` snippet for each health device.
//!
//! A device configured by address is recognised from its advertisement. One configured by
//! Device Information only (manufacturer / model / serial / System ID, no `address`) cannot
//! be: its advertisement carries none of that. For those, and only while some are configured,
//! the scan connects briefly to each health advertiser offering one of their services, reads
//! Device Information and disconnects (the daemon's probe: nothing subscribed, written or
//! ingested), then applies the daemon's rule: exactly one configured device must match.

use std::collections::HashMap;
use std::time::Duration;

use btleplug::api::{Central as _, Manager as _, Peripheral as _, ScanFilter};
use btleplug::platform::Manager;

use super::error::{with_timeout, BleError};
use crate::config::{BleConfig, BleProfile, DisIdentity};
use crate::pipeline::ReportedInfo;

/// At most this many advertisers are probed for Device Information in one scan (the strongest
/// first): each costs a connection bounded by the connect and operation timeouts.
pub const MAX_PROBES: usize = 32;

/// The configured BLE devices, as `scan` recognises them.
#[derive(Debug, Clone, Default)]
pub struct Configured {
    /// Address -> configured device name.
    pub by_address: HashMap<String, String>,
    /// Devices configured by Device Information only (no `address`).
    pub by_identity: Vec<IdentityOnly>,
}

/// A device configured by Device Information only.
#[derive(Debug, Clone)]
pub struct IdentityOnly {
    pub name: String,
    pub identity: DisIdentity,
    pub profiles: Vec<BleProfile>,
}

impl Configured {
    /// The `kind = "ble"` devices of a config.
    pub fn from_config(cfg: &crate::config::Config) -> Configured {
        let mut c = Configured::default();
        for d in &cfg.devices {
            let crate::config::DeviceKind::Ble(b) = &d.kind else {
                continue;
            };
            match &b.address {
                Some(a) => {
                    c.by_address.insert(a.clone(), d.name.clone());
                }
                None => c.by_identity.push(IdentityOnly {
                    name: d.name.clone(),
                    identity: b.identity.clone(),
                    profiles: b.profiles.clone(),
                }),
            }
        }
        c
    }

    /// What the CONFIGURED column says for a device that reported `reported`: the one
    /// identity-only device it matches (`"name (Device Information)"`), or, if several match,
    /// that the config is ambiguous (the daemon binds none of them then). Pure.
    pub fn by_reported(&self, reported: &ReportedInfo) -> Option<String> {
        let names: Vec<&str> = self
            .by_identity
            .iter()
            .filter(|d| super::session::identifies(&d.identity, reported))
            .map(|d| d.name.as_str())
            .collect();
        match names.as_slice() {
            [] => None,
            [one] => Some(format!("{one} (Device Information)")),
            several => Some(format!(
                "ambiguous: {} (Device Information matches several)",
                several.join(", ")
            )),
        }
    }

    /// Whether a device advertising these profiles may be one configured by Device
    /// Information only (and so is worth a probe).
    fn may_be_identity_only(&self, profiles: &[BleProfile]) -> bool {
        self.by_identity
            .iter()
            .any(|d| d.profiles.iter().any(|p| profiles.contains(p)))
    }
}

/// One device seen during a scan.
#[derive(Debug, Clone)]
pub struct Seen {
    pub address: String,
    pub address_type: &'static str,
    pub name: Option<String>,
    pub rssi: Option<i16>,
    /// Health profiles whose service the device advertises.
    pub profiles: Vec<BleProfile>,
    /// The configured device at this address or with this Device Information, if any.
    pub configured: Option<String>,
}

/// Scans for `seconds` on `cfg.adapter` (no service filter) and lists what was seen, health
/// devices first, then by signal strength. Devices configured by Device Information only are
/// recognised by probing (see the module docs), with `cfg`'s connect and operation timeouts.
///
/// # Errors
/// [`BleError`] when BlueZ or the adapter is unavailable. A probe that fails only leaves its
/// device unmarked.
pub async fn scan(
    cfg: &BleConfig,
    seconds: u64,
    configured: &Configured,
) -> Result<Vec<Seen>, BleError> {
    let adapter = cfg.adapter.as_str();
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
    let mut by_address = HashMap::new();
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
        by_address.insert(address.clone(), p);
        out.push(Seen {
            configured: configured.by_address.get(&address).cloned(),
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
    let mut probes = 0;
    for seen in &mut out {
        if seen.configured.is_some() || !configured.may_be_identity_only(&seen.profiles) {
            continue;
        }
        if probes == MAX_PROBES {
            eprintln!("vitalgate scan: probed {MAX_PROBES} devices for Device Information; the rest are not marked");
            break;
        }
        let Some(p) = by_address.remove(&seen.address) else {
            continue;
        };
        probes += 1;
        match super::session::probe(p, cfg).await {
            Ok(reported) => seen.configured = configured.by_reported(&reported),
            Err(e) => eprintln!(
                "vitalgate scan: {}: cannot read its Device Information ({e})",
                seen.address
            ),
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reported_identity_marks_the_one_matching_device_and_names_an_ambiguous_config() {
        let only = |name: &str, serial: Option<&str>, model: Option<&str>| IdentityOnly {
            name: name.into(),
            identity: DisIdentity {
                serial: serial.map(Into::into),
                model: model.map(Into::into),
                ..DisIdentity::default()
            },
            profiles: vec![BleProfile::WeightScale],
        };
        let got = ReportedInfo {
            model: Some("EM-1".into()),
            serial: Some("SC-9".into()),
            ..ReportedInfo::default()
        };
        let mut c = Configured {
            by_address: HashMap::new(),
            by_identity: vec![
                only("scale", Some("SC-9"), None),
                only("other", Some("SC-8"), None),
            ],
        };
        assert_eq!(
            c.by_reported(&got).as_deref(),
            Some("scale (Device Information)")
        );
        // A second device the same report matches: the daemon binds neither; say so.
        c.by_identity.push(only("by-model", None, Some("EM-1")));
        assert_eq!(
            c.by_reported(&got).as_deref(),
            Some("ambiguous: scale, by-model (Device Information matches several)")
        );
        let stranger = ReportedInfo {
            serial: Some("X".into()),
            ..ReportedInfo::default()
        };
        assert_eq!(c.by_reported(&stranger), None);
        assert!(c.may_be_identity_only(&[BleProfile::WeightScale]));
        assert!(!c.may_be_identity_only(&[BleProfile::BloodPressure]));
    }
}
