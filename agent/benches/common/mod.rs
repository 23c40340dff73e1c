//! Fixtures shared by the benches: one blood-pressure cuff bound to one patient, and its
//! readings (each its own identifier).
#![allow(dead_code)] // each bench uses the part it needs

use std::sync::Arc;

use chrono::{TimeZone, Utc};
use device_drivers::{Decimal, ReadingType, Record};
use vitalgate::config::Attribution;
use vitalgate::pipeline::DeviceContext;
use vitalgate::reading::{DeviceClass, DeviceIdentifier};

pub fn device() -> Arc<DeviceContext> {
    Arc::new(DeviceContext {
        name: "cuff".into(),
        class: DeviceClass::BloodPressureCuff,
        identifier: DeviceIdentifier::Bluetooth("00091FAABBCC".into()),
        attribution: Attribution::Single("Patient/p1".parse().expect("patient")),
        utc_offset: chrono::FixedOffset::east_opt(3600).expect("offset"),
        clock_is_provenance_only: false,
        reported: Default::default(),
        upload_statistics: Vec::new(),
    })
}

/// Reading `n`: a BP record received `n` seconds after a fixed time (its own identifier).
pub fn bp(n: u64) -> (Record, chrono::DateTime<Utc>) {
    let record = Record {
        readings: vec![
            device_drivers::Reading::new(
                ReadingType::SystolicPressure,
                Decimal::from_int(100 + (n % 60) as i64),
                "mm[Hg]",
            ),
            device_drivers::Reading::new(
                ReadingType::DiastolicPressure,
                Decimal::from_int(60 + (n % 30) as i64),
                "mm[Hg]",
            ),
        ],
        ..Record::default()
    };
    let at =
        Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap() + chrono::Duration::seconds(n as i64);
    (record, at)
}

/// `count` blood-pressure readings of [`device`] over BLE, as the pipeline makes them.
pub fn readings(count: u64) -> Vec<vitalgate::reading::Reading> {
    let dev = device();
    (0..count)
        .flat_map(|n| {
            let (record, at) = bp(n);
            vitalgate::pipeline::readings_from_record(
                &dev,
                &record,
                &vitalgate::reading::Source::Ble {
                    address: "00:09:1F:AA:BB:CC".into(),
                },
                &vitalgate::pipeline::CaptureClock::default(),
                at,
            )
            .expect("reading")
        })
        .collect()
}
