//! PLX Spot-check 0x2A5E, PLX Continuous 0x2A5F, PLX Features 0x2A60 (Pulse Oximeter Service).
//!
//! Layouts (SIG GATT XML `plx_spot_check_measurement`, `plx_continuous_measurement`,
//! `plx_features`, PLXS 1.0; gatt-profiles.md §7):
//! - **Spot-check**: flags (bit0 timestamp, bit1 measurement status, bit2 device and sensor
//!   status, bit3 pulse amplitude index, bit4 device clock not set, 5-7 RFU), SpO2 SFLOAT %,
//!   PR SFLOAT /min, [timestamp 7], [measurement status u16], [device & sensor status **u24**],
//!   [PAI SFLOAT %].
//! - **Continuous**: flags (bit0 SpO2PR-Fast, bit1 SpO2PR-Slow, bit2 measurement status, bit3
//!   device & sensor status, bit4 PAI), SpO2PR-Normal (2 SFLOAT), \[Fast\], \[Slow\], \[status\],
//!   [D&S status], \[PAI\]. No timestamp: the agent stamps it on receipt.
//! - **Features**: supported features u16, then measurement status support u16 if bit0, then
//!   D&S status support u24 if bit1.
//!
//! Status bit sets serialise as `{"raw", "flags"}` (RFU bits only in `raw`). Record mapping:
//! `spo2` `%`, `pulse_rate` `/min`, `perfusion_index` `%` (PAI); every named status bit becomes the
//! [`Status`] of the same name; `device_clock_not_set` drops the timestamp (flag kept). Clinical
//! gates (measurement unavailable / questionable / invalid, demonstration / testing data) are
//! flags for the pipeline, not decode errors.

use serde::Serialize;

use super::datetime::Timestamp;
use super::reader::Reader;
use super::sfloat::Float11073;
use super::{new_record, push_value, set_time, set_trailing, uuid, BitFlags, GattError};
use crate::record::{ReadingType, Record};
use crate::Status;

/// Measurement Status, Device and Sensor Status, Pulse Amplitude Index (each optional).
type StatusTail = (
    Option<BitFlags<Status>>,
    Option<BitFlags<Status>>,
    Option<Float11073>,
);

/// The optional fields both PLX measurements end with (Measurement Status, Device and Sensor
/// Status, Pulse Amplitude Index), each present when its flag bit (`bits`, in that order) is set.
fn read_status_tail(r: &mut Reader<'_>, flags: u8, bits: [u8; 3]) -> Result<StatusTail, GattError> {
    let [ms, ds, pai] = bits;
    let measurement_status = if flags & ms != 0 {
        Some(BitFlags::new(u32::from(r.u16()?), &MEASUREMENT_STATUS))
    } else {
        None
    };
    let device_and_sensor_status = if flags & ds != 0 {
        Some(BitFlags::new(r.u24()?, &DEVICE_SENSOR_STATUS))
    } else {
        None
    };
    let pulse_amplitude_index = if flags & pai != 0 {
        Some(r.sfloat()?)
    } else {
        None
    };
    Ok((
        measurement_status,
        device_and_sensor_status,
        pulse_amplitude_index,
    ))
}

/// Measurement Status bits (bits 0-4 RFU).
pub const MEASUREMENT_STATUS: [Option<Status>; 16] = [
    None,
    None,
    None,
    None,
    None,
    Some(Status::MeasurementOngoing),
    Some(Status::EarlyEstimatedData),
    Some(Status::ValidatedData),
    Some(Status::FullyQualifiedData),
    Some(Status::DataFromMeasurementStorage),
    Some(Status::DataForDemonstration),
    Some(Status::DataForTesting),
    Some(Status::CalibrationOngoing),
    Some(Status::MeasurementUnavailable),
    Some(Status::QuestionableMeasurementDetected),
    Some(Status::InvalidMeasurementDetected),
];

/// Device and Sensor Status bits (bits 16-23 RFU).
pub const DEVICE_SENSOR_STATUS: [Option<Status>; 16] = [
    Some(Status::ExtendedDisplayUpdateOngoing),
    Some(Status::EquipmentMalfunctionDetected),
    Some(Status::SignalProcessingIrregularityDetected),
    Some(Status::InadequateSignalDetected),
    Some(Status::PoorSignalDetected),
    Some(Status::LowPerfusionDetected),
    Some(Status::ErraticSignalDetected),
    Some(Status::NonpulsatileSignalDetected),
    Some(Status::QuestionablePulseDetected),
    Some(Status::SignalAnalysisOngoing),
    Some(Status::SensorInterferenceDetected),
    Some(Status::SensorUnconnectedToUser),
    Some(Status::UnknownSensorConnected),
    Some(Status::SensorDisplaced),
    Some(Status::SensorMalfunctioning),
    Some(Status::SensorDisconnected),
];

/// Supported Features bit names (bits 8-15 RFU in PLXS 1.0).
pub const SUPPORTED_FEATURE_NAMES: [Option<&str>; 8] = [
    Some("measurement_status_support"),
    Some("device_and_sensor_status_support"),
    Some("spot_check_measurement_storage"),
    Some("spot_check_timestamp"),
    Some("spo2pr_fast"),
    Some("spo2pr_slow"),
    Some("pulse_amplitude_index"),
    Some("multiple_bonds"),
];

/// PLX Spot-check Measurement 0x2A5E.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PlxSpotCheck {
    pub spo2: Float11073,
    pub pulse_rate: Float11073,
    pub device_clock_not_set: bool,
    #[serde(flatten)]
    pub timestamp: Option<Timestamp>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub measurement_status: Option<BitFlags<Status>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_and_sensor_status: Option<BitFlags<Status>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pulse_amplitude_index: Option<Float11073>,
    #[serde(skip_serializing_if = "super::is_zero")]
    pub trailing_octets: usize,
}

impl PlxSpotCheck {
    /// # Errors
    /// [`GattError::Truncated`].
    pub fn decode(payload: &[u8]) -> Result<Self, GattError> {
        let mut r = Reader::new(payload);
        let flags = r.u8()?;
        let spo2 = r.sfloat()?;
        let pulse_rate = r.sfloat()?;
        let timestamp = if flags & 0x01 != 0 {
            Some(Timestamp(r.date_time()?))
        } else {
            None
        };
        let (measurement_status, device_and_sensor_status, pulse_amplitude_index) =
            read_status_tail(&mut r, flags, [0x02, 0x04, 0x08])?;
        Ok(Self {
            spo2,
            pulse_rate,
            device_clock_not_set: flags & 0x10 != 0,
            timestamp,
            measurement_status,
            device_and_sensor_status,
            pulse_amplitude_index,
            trailing_octets: r.remaining(),
        })
    }

    /// The canonical record (see the module doc).
    pub fn to_record(&self) -> Record {
        let mut rec = new_record(uuid::PLX_SPOT_CHECK);
        push_value(&mut rec, ReadingType::Spo2, self.spo2, "%");
        push_value(&mut rec, ReadingType::PulseRate, self.pulse_rate, "/min");
        if let Some(p) = self.pulse_amplitude_index {
            push_value(&mut rec, ReadingType::PerfusionIndex, p, "%");
        }
        if self.device_clock_not_set {
            rec.add_flag(Status::DeviceClockNotSet);
            if let Some(Timestamp(dt)) = self.timestamp {
                rec.fields
                    .insert("timestamp_raw".into(), serde_json::json!(dt.raw()));
            }
        } else {
            set_time(&mut rec, self.timestamp.map(|t| t.0));
        }
        add_status_flags(
            &mut rec,
            &self.measurement_status,
            &self.device_and_sensor_status,
        );
        set_trailing(&mut rec, self.trailing_octets);
        rec
    }
}

/// PLX Continuous Measurement 0x2A5F.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PlxContinuous {
    pub spo2: Float11073,
    pub pulse_rate: Float11073,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub spo2_fast: Option<Float11073>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pulse_rate_fast: Option<Float11073>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub spo2_slow: Option<Float11073>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pulse_rate_slow: Option<Float11073>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub measurement_status: Option<BitFlags<Status>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_and_sensor_status: Option<BitFlags<Status>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pulse_amplitude_index: Option<Float11073>,
    #[serde(skip_serializing_if = "super::is_zero")]
    pub trailing_octets: usize,
}

impl PlxContinuous {
    /// # Errors
    /// [`GattError::Truncated`].
    pub fn decode(payload: &[u8]) -> Result<Self, GattError> {
        let mut r = Reader::new(payload);
        let flags = r.u8()?;
        let spo2 = r.sfloat()?;
        let pulse_rate = r.sfloat()?;
        let (spo2_fast, pulse_rate_fast) = if flags & 0x01 != 0 {
            (Some(r.sfloat()?), Some(r.sfloat()?))
        } else {
            (None, None)
        };
        let (spo2_slow, pulse_rate_slow) = if flags & 0x02 != 0 {
            (Some(r.sfloat()?), Some(r.sfloat()?))
        } else {
            (None, None)
        };
        let (measurement_status, device_and_sensor_status, pulse_amplitude_index) =
            read_status_tail(&mut r, flags, [0x04, 0x08, 0x10])?;
        Ok(Self {
            spo2,
            pulse_rate,
            spo2_fast,
            pulse_rate_fast,
            spo2_slow,
            pulse_rate_slow,
            measurement_status,
            device_and_sensor_status,
            pulse_amplitude_index,
            trailing_octets: r.remaining(),
        })
    }

    /// Encodes (emulated oximeters). `None` if a value is not exactly an SFLOAT.
    pub fn encode(&self) -> Option<Vec<u8>> {
        let mut flags = 0u8;
        let fast = self.spo2_fast.zip(self.pulse_rate_fast);
        let slow = self.spo2_slow.zip(self.pulse_rate_slow);
        if fast.is_some() {
            flags |= 0x01;
        }
        if slow.is_some() {
            flags |= 0x02;
        }
        if self.measurement_status.is_some() {
            flags |= 0x04;
        }
        if self.device_and_sensor_status.is_some() {
            flags |= 0x08;
        }
        if self.pulse_amplitude_index.is_some() {
            flags |= 0x10;
        }
        let mut out = vec![flags];
        let sf = |out: &mut Vec<u8>, v: Float11073| -> Option<()> {
            out.extend_from_slice(&v.to_sfloat()?.to_le_bytes());
            Some(())
        };
        sf(&mut out, self.spo2)?;
        sf(&mut out, self.pulse_rate)?;
        for (a, b) in [fast, slow].into_iter().flatten() {
            sf(&mut out, a)?;
            sf(&mut out, b)?;
        }
        if let Some(s) = &self.measurement_status {
            out.extend_from_slice(&u16::try_from(s.raw).ok()?.to_le_bytes());
        }
        if let Some(s) = &self.device_and_sensor_status {
            let b = s.raw.to_le_bytes();
            if b[3] != 0 {
                return None;
            }
            out.extend_from_slice(&b[..3]);
        }
        if let Some(p) = self.pulse_amplitude_index {
            sf(&mut out, p)?;
        }
        Some(out)
    }

    /// The canonical record (no device time: stamp on receipt).
    pub fn to_record(&self) -> Record {
        let mut rec = new_record(uuid::PLX_CONTINUOUS);
        push_value(&mut rec, ReadingType::Spo2, self.spo2, "%");
        push_value(&mut rec, ReadingType::PulseRate, self.pulse_rate, "/min");
        if let Some(p) = self.pulse_amplitude_index {
            push_value(&mut rec, ReadingType::PerfusionIndex, p, "%");
        }
        for (k, v) in [
            ("spo2_fast", self.spo2_fast),
            ("pulse_rate_fast", self.pulse_rate_fast),
            ("spo2_slow", self.spo2_slow),
            ("pulse_rate_slow", self.pulse_rate_slow),
        ] {
            if let Some(v) = v {
                rec.fields.insert(
                    k.into(),
                    serde_json::to_value(v).unwrap_or(serde_json::Value::Null),
                );
            }
        }
        add_status_flags(
            &mut rec,
            &self.measurement_status,
            &self.device_and_sensor_status,
        );
        set_trailing(&mut rec, self.trailing_octets);
        rec
    }
}

fn add_status_flags(
    rec: &mut Record,
    ms: &Option<BitFlags<Status>>,
    ds: &Option<BitFlags<Status>>,
) {
    for set in [ms, ds].into_iter().flatten() {
        for f in &set.flags {
            rec.add_flag(*f);
        }
    }
}

/// PLX Features 0x2A60.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PlxFeatures {
    pub supported_features: BitFlags,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub measurement_status_support: Option<BitFlags<Status>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_and_sensor_status_support: Option<BitFlags<Status>>,
    #[serde(skip_serializing_if = "super::is_zero")]
    pub trailing_octets: usize,
}

impl PlxFeatures {
    /// # Errors
    /// [`GattError::Truncated`].
    pub fn decode(payload: &[u8]) -> Result<Self, GattError> {
        let mut r = Reader::new(payload);
        let sf = r.u16()?;
        let measurement_status_support = if sf & 1 != 0 {
            Some(BitFlags::new(u32::from(r.u16()?), &MEASUREMENT_STATUS))
        } else {
            None
        };
        let device_and_sensor_status_support = if sf & 2 != 0 {
            Some(BitFlags::new(r.u24()?, &DEVICE_SENSOR_STATUS))
        } else {
            None
        };
        Ok(Self {
            supported_features: BitFlags::new(u32::from(sf), &SUPPORTED_FEATURE_NAMES),
            measurement_status_support,
            device_and_sensor_status_support,
            trailing_octets: r.remaining(),
        })
    }
}
