//! Config → the runtime device table: what each source needs to know about a device, resolved
//! once at start-up (class, identity, patient binding, clock zone).

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{FixedOffset, Utc};
use device_drivers::{ReadingType, Record};

use crate::config::{
    Attribution, Config, DeviceConfig, DeviceKind, SerialDevice, SerialProtocol, SimulatorConfig,
    SimulatorKind,
};
use crate::reading::{DeviceClass, DeviceIdentifier, DeviceInfo};

/// What a source knows about a device, resolved once from config.
#[derive(Debug, Clone)]
pub struct DeviceContext {
    pub name: String,
    pub class: DeviceClass,
    pub identifier: DeviceIdentifier,
    pub attribution: Attribution,
    /// Zone of the device's wall clock when the protocol does not carry one.
    pub utc_offset: FixedOffset,
    /// Serial protocols: the device clock is provenance only, the gateway time is used.
    pub clock_is_provenance_only: bool,
    /// What the device reported about itself (BLE Device Information), when a source read it.
    pub reported: ReportedInfo,
    /// MQTT hubs: the Open mHealth statistics that may be uploaded (config `upload_statistics`).
    pub upload_statistics: Vec<String>,
}

/// Device Information a source read from the device (BLE DIS 0x180A). Not PHI.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReportedInfo {
    pub manufacturer: Option<String>,
    pub model: Option<String>,
    pub serial: Option<String>,
    pub firmware: Option<String>,
    pub hardware: Option<String>,
    pub software: Option<String>,
    /// System ID as EUI-64, 16 upper-case hex digits.
    pub system_id: Option<String>,
}

impl DeviceContext {
    pub fn from_device(gateway_id: &str, default_offset: FixedOffset, d: &DeviceConfig) -> Self {
        let (class, identifier, provenance_only) = match &d.kind {
            DeviceKind::Mqtt { .. } => (
                DeviceClass::Generic,
                DeviceIdentifier::Local(format!("{gateway_id}/{}", d.name)),
                false,
            ),
            DeviceKind::Ble(b) => (
                b.class(),
                // fhir-mapping.md §5.1: the PHD EUI-64 (System ID) when known, else the
                // Bluetooth identity address. The transport refines this from what the device
                // reports (and remembers it), so the identifier does not change between
                // connections.
                match (&b.identity.system_id, &b.address) {
                    (Some(sysid), _) => DeviceIdentifier::Eui64(sysid.clone()),
                    (None, Some(a)) => {
                        DeviceIdentifier::Bluetooth(a.replace(':', "").to_ascii_uppercase())
                    }
                    (None, None) => DeviceIdentifier::Local(format!("{gateway_id}/{}", d.name)),
                },
                false,
            ),
            DeviceKind::Serial(s) => (
                serial_class(&s.protocol),
                DeviceIdentifier::Local(format!("{gateway_id}/{}", d.name)),
                true,
            ),
        };
        Self {
            name: d.name.clone(),
            class,
            identifier,
            attribution: d.attribution.clone(),
            utc_offset: d.utc_offset.unwrap_or(default_offset),
            clock_is_provenance_only: provenance_only,
            reported: ReportedInfo::default(),
            upload_statistics: match &d.kind {
                DeviceKind::Mqtt {
                    upload_statistics, ..
                } => upload_statistics.clone(),
                _ => Vec::new(),
            },
        }
    }

    pub fn from_simulator(gateway_id: &str, s: &SimulatorConfig) -> Self {
        Self {
            name: s.name.clone(),
            class: match s.kind {
                SimulatorKind::BloodPressure => DeviceClass::BloodPressureCuff,
                SimulatorKind::Scale => DeviceClass::Scale,
            },
            identifier: DeviceIdentifier::Local(format!("{gateway_id}/{}", s.name)),
            attribution: Attribution::Single(s.patient.clone()),
            utc_offset: chrono::Offset::fix(&Utc),
            clock_is_provenance_only: false,
            reported: ReportedInfo::default(),
            upload_statistics: Vec::new(),
        }
    }

    /// The device as the uplink describes it, with what this record adds (model, serial).
    pub fn info(&self, record: &Record) -> DeviceInfo {
        DeviceInfo {
            name: self.name.clone(),
            class: self.class,
            identifier: self.identifier.clone(),
            manufacturer: self.reported.manufacturer.clone(),
            model: record
                .device_model
                .clone()
                .or_else(|| self.reported.model.clone()),
            serial: record
                .device_id
                .clone()
                .or_else(|| self.reported.serial.clone()),
            firmware: self.reported.firmware.clone(),
            system_id: match &self.identifier {
                DeviceIdentifier::Eui64(v) => Some(v.clone()),
                _ => self.reported.system_id.clone(),
            },
            bluetooth_address: match &self.identifier {
                DeviceIdentifier::Bluetooth(v) => Some(v.clone()),
                _ => None,
            },
            hardware: self.reported.hardware.clone(),
            software: self.reported.software.clone(),
        }
    }
}

/// What kind of device a serial protocol speaks for. A device file is classed by what it
/// measures: an SpO2 reading makes it an oximeter (so its pulse rate is an oximeter's), a body
/// weight a scale.
fn serial_class(protocol: &SerialProtocol) -> DeviceClass {
    match protocol {
        SerialProtocol::Builtin(name) if name.starts_with("tanita") => DeviceClass::Scale,
        SerialProtocol::Builtin(name)
            if name.starts_with("nonin") || name.starts_with("masimo") =>
        {
            DeviceClass::PulseOximeter
        }
        SerialProtocol::Builtin(_) => DeviceClass::Generic,
        SerialProtocol::DeviceFile { config, .. } => {
            let types = config.reading_types();
            if types.contains(&ReadingType::Spo2) {
                DeviceClass::PulseOximeter
            } else if types.contains(&ReadingType::BodyWeight) {
                DeviceClass::Scale
            } else {
                DeviceClass::Generic
            }
        }
    }
}

/// Every configured device and simulator, by kind, ready for the sources.
#[derive(Debug, Clone, Default)]
pub struct DeviceTable {
    pub by_name: HashMap<String, Arc<DeviceContext>>,
    /// MQTT topic filter → device, in config order.
    pub mqtt: Vec<(String, Arc<DeviceContext>)>,
    /// BLE devices (their transport comes in a later release).
    pub ble: Vec<Arc<DeviceContext>>,
    /// Serial devices with their port, protocol and reduction.
    pub serial: Vec<(SerialDevice, Arc<DeviceContext>)>,
    pub simulators: Vec<(SimulatorConfig, Arc<DeviceContext>)>,
}

impl DeviceTable {
    pub fn from_config(cfg: &Config) -> Self {
        let gw = &cfg.gateway;
        let mut t = DeviceTable::default();
        for d in &cfg.devices {
            let ctx = Arc::new(DeviceContext::from_device(&gw.id, gw.device_utc_offset, d));
            t.by_name.insert(d.name.clone(), Arc::clone(&ctx));
            match &d.kind {
                DeviceKind::Mqtt { topic, .. } => t.mqtt.push((topic.clone(), ctx)),
                DeviceKind::Ble { .. } => t.ble.push(ctx),
                DeviceKind::Serial(s) => t.serial.push((s.clone(), ctx)),
            }
        }
        for s in &cfg.simulators {
            let ctx = Arc::new(DeviceContext::from_simulator(&gw.id, s));
            t.by_name.insert(s.name.clone(), Arc::clone(&ctx));
            t.simulators.push((s.clone(), ctx));
        }
        t
    }
}
