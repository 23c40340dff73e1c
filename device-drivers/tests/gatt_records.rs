//! Measurement → canonical `Record` conversion, quirks, plausibility and the RACP download.

mod support;

use device_drivers::gatt::quirks::QuirkId;
use device_drivers::gatt::racp::{
    encode_response, Action, DeleteAllowed, DeleteRefused, Download, DownloadFailure,
    DownloadFilter, RacpMessage, RacpProfile, RacpRequest,
};
use device_drivers::gatt::{
    decode, decode_measurement, decode_measurement_with, plausibility::PlausibilityRanges, quirks,
    uuid, Decoded, GattError,
};
use device_drivers::{Decimal, DeviceTime, ReadingType, Record, Status};
use support::hex;

fn rec(ch: u16, h: &str) -> Record {
    decode_measurement(ch, &hex(h), None)
        .expect("decodes")
        .expect("is a measurement")
}

fn value(r: &Record, kind: ReadingType) -> Option<(Decimal, &str)> {
    r.readings
        .iter()
        .find(|x| x.kind == kind)
        .map(|x| (x.value, x.unit.as_str()))
}

#[test]
fn bpm_record_has_ucum_units_flags_and_user() {
    let r = rec(0x2A35, "1e780050005d00e80703050e1e004800010400");
    assert_eq!(
        value(&r, ReadingType::SystolicPressure),
        Some((Decimal::new(120, 0), "mm[Hg]"))
    );
    assert_eq!(
        value(&r, ReadingType::PulseRate),
        Some((Decimal::new(72, 0), "/min"))
    );
    assert_eq!(r.user_index, Some(1));
    assert_eq!(r.flags, vec![Status::IrregularPulse]);
    assert_eq!(r.device_time, DeviceTime::new(2024, 3, 5, 14, 30, 0));
}

#[test]
fn bpm_nan_values_go_to_missing_never_2047() {
    let r = rec(0x2A35, "16ff07ff07ff07e80706170e230aff070000");
    assert!(r.readings.is_empty());
    assert_eq!(
        r.missing,
        vec![
            ReadingType::SystolicPressure,
            ReadingType::DiastolicPressure,
            ReadingType::MeanArterialPressure,
            ReadingType::PulseRate
        ]
    );
}

#[test]
fn special_values_are_absent_with_their_reason_and_unit_never_a_number() {
    use device_drivers::{AbsentReason as A, AbsentValue};
    let absent = |kind, unit: &str, reason| AbsentValue {
        kind,
        unit: unit.into(),
        reason,
    };
    // Systolic 120, diastolic NaN, MAP NRes, pulse +INF.
    let r = rec(0x2A35, "067800ff070008e80703050e1e00fe07");
    assert_eq!(
        value(&r, ReadingType::SystolicPressure),
        Some((Decimal::new(120, 0), "mm[Hg]"))
    );
    assert_eq!(r.readings.len(), 1);
    assert_eq!(
        r.context.absent,
        vec![
            absent(ReadingType::DiastolicPressure, "mm[Hg]", A::NotANumber),
            absent(ReadingType::MeanArterialPressure, "mm[Hg]", A::Error),
            absent(ReadingType::PulseRate, "/min", A::PositiveInfinity),
        ]
    );
    // A thermometer below its range: FLOAT -INF.
    let r = rec(0x2A1C, "0002008000");
    assert!(r.readings.is_empty());
    assert_eq!(
        r.context.absent,
        vec![absent(
            ReadingType::BodyTemperature,
            "Cel",
            A::NegativeInfinity
        )]
    );
    assert_eq!(A::NegativeInfinity.code(), "negative-infinity");
}

#[test]
fn unknown_user_is_not_a_patient_slot() {
    let r = rec(0x2A35, "09a0f06bf07df0ff");
    assert_eq!(r.user_index, None);
    assert!(r.flags.contains(&Status::UnknownUser));
    assert_eq!(
        value(&r, ReadingType::SystolicPressure),
        Some((Decimal::new(160, -1), "kPa"))
    );
}

#[test]
fn year_zero_timestamp_is_flagged_not_stored() {
    let r = rec(0x2A35, "1e8a00580078000000041114293b3c00012700");
    assert_eq!(r.device_time, None);
    assert!(r.flags.contains(&Status::DeviceTimeInvalid));
    for f in [
        Status::BodyMovement,
        Status::CuffTooLoose,
        Status::IrregularPulse,
        Status::ImproperPosition,
    ] {
        assert!(r.flags.contains(&f), "{f}");
    }
}

#[test]
fn intermediate_values_never_become_records() {
    let icp = hex("00a500ff07ff07");
    assert_eq!(decode_measurement(0x2A36, &icp, None), Ok(None));
    assert_eq!(
        decode_measurement(0x2A1E, &hex("00b00e00fe"), None),
        Ok(None)
    );
    assert_eq!(decode_measurement(0x2A49, &hex("2500"), None), Ok(None));
}

#[test]
fn weight_units_and_unsuccessful() {
    let r = rec(0x2A9D, "0f543de7070c190e1e2d03f500a802");
    assert_eq!(
        value(&r, ReadingType::BodyWeight),
        Some((Decimal::new(15700, -2), "[lb_av]"))
    );
    assert_eq!(
        value(&r, ReadingType::BodyHeight),
        Some((Decimal::new(680, -1), "[in_i]"))
    );
    let r = rec(0x2A9D, "0cb03605f500d606");
    let (h, u) = value(&r, ReadingType::BodyHeight).unwrap();
    assert_eq!((h.to_string().as_str(), u), ("175.0", "cm"));
    let r = rec(0x2A9D, "02ffffe8070b02071000");
    assert!(r.readings.is_empty());
    assert_eq!(r.missing, vec![ReadingType::BodyWeight]);
    assert!(r.flags.contains(&Status::MeasurementUnsuccessful));
}

#[test]
fn glucose_is_converted_exactly() {
    let r = rec(0x2A18, "030700e7070c1f1732000f005fb011");
    let (v, u) = value(&r, ReadingType::BloodGlucose).unwrap();
    assert_eq!((v.to_string().as_str(), u), ("95", "mg/dL"));
    assert_eq!(r.device_time, DeviceTime::new(2024, 1, 1, 0, 5, 0));
    let r = rec(0x2A18, "062a00e807010f072d0038c011");
    let (v, u) = value(&r, ReadingType::BloodGlucose).unwrap();
    assert_eq!((v.to_string().as_str(), u), ("5.6", "mmol/L"));
    let r = rec(0x2A18, "020300000000000000006eb011");
    assert_eq!(r.device_time, None);
    assert!(r.flags.contains(&Status::DeviceTimeInvalid));
}

#[test]
fn temperature_plx_and_heart_rate_records() {
    let r = rec(0x2A1C, "05da0300ff06");
    assert_eq!(
        value(&r, ReadingType::BodyTemperature),
        Some((Decimal::new(986, -1), "[degF]"))
    );
    let r = rec(0x2A5E, "0facf3bef5e8070b1d170839204022000066e3");
    assert!(r.flags.contains(&Status::QuestionableMeasurementDetected));
    assert!(r.flags.contains(&Status::LowPerfusionDetected));
    assert_eq!(
        value(&r, ReadingType::Spo2),
        Some((Decimal::new(940, -1), "%"))
    );
    let r = rec(0x2A37, "04ff");
    assert!(r.flags.contains(&Status::SensorContactNotDetected));
}

const BM85: &str = "566a0047000000ea07080b121f00003f000000";

#[test]
fn beurer_bm85_without_quirk_is_rejected_never_stored() {
    // The spec decode gives a pulse of -256000 bpm and one trailing octet.
    let Ok(Decoded::BloodPressure(m)) = decode(0x2A35, &hex(BM85)) else {
        panic!("spec decode")
    };
    assert_eq!(
        m.pulse_rate.and_then(|p| p.value()),
        Some(Decimal::new(-256, 3))
    );
    assert_eq!(m.trailing_octets, 1);
    assert_eq!(
        decode_measurement(0x2A35, &hex(BM85), None),
        Err(GattError::ImpossibleValue {
            reading: ReadingType::PulseRate
        })
    );
}

#[test]
fn beurer_bm85_with_quirk_decodes_pulse_63_user_0() {
    let q = quirks::lookup(Some("Beurer"), Some("BM85")).expect("quirk");
    let r = decode_measurement(0x2A35, &hex(BM85), Some(q))
        .unwrap()
        .unwrap();
    assert_eq!(
        value(&r, ReadingType::PulseRate),
        Some((Decimal::new(63, 0), "/min"))
    );
    assert_eq!(
        value(&r, ReadingType::SystolicPressure),
        Some((Decimal::new(106, 0), "mm[Hg]"))
    );
    assert_eq!(r.user_index, Some(0));
    assert!(r.missing.contains(&ReadingType::MeanArterialPressure));
    assert!(r.flags.contains(&Status::Quirk(QuirkId::BeurerBm85)));
    // A conforming payload from the same model still decodes by the spec.
    let ok = decode_measurement(
        0x2A35,
        &hex("1e780050005d00e80703050e1e004800010400"),
        Some(q),
    )
    .unwrap()
    .unwrap();
    assert!(!ok.flags.iter().any(|f| matches!(f, Status::Quirk(_))));
}

#[test]
fn quirk_lookup_by_device_information() {
    assert_eq!(
        quirks::lookup(Some("OMRON HEALTHCARE"), Some("BP5150")).map(|q| q.id),
        Some(QuirkId::OmronBpm)
    );
    assert_eq!(
        quirks::lookup(None, Some("HEM-7155T")).map(|q| q.id),
        Some(QuirkId::OmronBpm)
    );
    assert_eq!(
        quirks::lookup(Some("A&D Medical"), Some("UB-1100BLE")).map(|q| q.id),
        Some(QuirkId::AndMedical)
    );
    assert_eq!(
        quirks::lookup(Some("Example Medical"), Some("BP-100")),
        None
    );
    let mi = quirks::lookup(None, Some("MIBFS")).unwrap();
    assert!(matches!(
        decode_measurement(
            0x2A9C,
            &hex("0e06e100e8070b02070f1e024e1b9413a438"),
            Some(mi)
        ),
        Err(GattError::Invalid(_))
    ));
    assert_eq!(quirks::and_write_delay_ms("BLP008_d016"), 40);
    assert_eq!(quirks::and_write_delay_ms("X"), 100);
}

#[test]
fn implausible_values_are_flagged_and_ranges_configurable() {
    // Nordic's glucose test value 30 kg/L = 3 000 000 mg/dL is physically impossible.
    assert!(matches!(
        decode_measurement(0x2A18, &hex("1b0100e307021b0b0a1efbff1e00120501"), None),
        Err(GattError::ImpossibleValue { .. })
    ));
    // HR 255 /min is inside the default 20-300 range, outside a configured 20-200 one.
    let r = rec(0x2A37, "04ff");
    assert!(!r.flags.iter().any(|f| matches!(f, Status::Implausible(_))));
    let ranges: PlausibilityRanges =
        serde_json::from_str(r#"{"heart_rate_per_min": {"min": 20, "max": 200}}"#).unwrap();
    let r = decode_measurement_with(0x2A37, &hex("04ff"), None, &ranges)
        .unwrap()
        .unwrap();
    assert!(r
        .flags
        .contains(&Status::Implausible(ReadingType::HeartRate)));
    assert_eq!(r.readings.len(), 1, "an implausible value is kept, flagged");
    // 18.9 kPa systolic (141.8 mmHg) is plausible; 100 kPa (750 mmHg) is not.
    let r = rec(0x2A35, "01bdf00b009ff0");
    assert!(r.flags.is_empty(), "{:?}", r.flags);
    let r = rec(0x2A35, "0164000b009ff0");
    assert!(r
        .flags
        .contains(&Status::Implausible(ReadingType::SystolicPressure)));
    assert!(
        serde_json::from_str::<PlausibilityRanges>(r#"{"nope": {"min": 1, "max": 2}}"#).is_err()
    );
}

fn glucose_record(seq: u16) -> Vec<u8> {
    let mut v = vec![0x02];
    v.extend_from_slice(&seq.to_le_bytes());
    v.extend_from_slice(&hex("e807010f072d00 5fb0 11"));
    v
}

#[test]
fn racp_download_then_durable_then_delete_range() {
    let mut d = Download::new(
        RacpProfile::Glucose,
        DownloadFilter::FromSequence(5),
        10_000,
    );
    assert_eq!(d.start(0), Action::Write(vec![1, 3, 1, 5, 0]));
    assert_eq!(d.deadline(), Some(10_000));
    for (t, s) in [(100, 5u16), (200, 6), (300, 7)] {
        match d.on_measurement(t, &glucose_record(s)).unwrap() {
            Action::Store(r) => assert_eq!(r.sequence_number, Some(s)),
            other => panic!("{other:?}"),
        }
    }
    let Action::Complete(done) = d.on_racp(400, &encode_response(1, 1)) else {
        panic!("complete")
    };
    assert!(d.is_finished());
    assert_eq!(done.last_sequence(), Some(7));
    assert_eq!(
        done.clone().records_durable(2),
        Err(DeleteRefused::NotAllDurable {
            durable: 2,
            received: 3
        })
    );
    let del = done.records_durable(3).unwrap();
    assert_eq!(del.request(), vec![2, 4, 1, 5, 0, 7, 0]);
    assert!(DeleteAllowed::is_success(&[6, 0, 2, 1]));
    // The emitted delete decodes as a within-range request on the sequence number.
    let m = RacpMessage::decode(&del.request()).unwrap();
    assert_eq!(m.opcode_name, "delete_stored_records");
}

#[test]
fn racp_no_records_is_a_normal_completion_with_nothing_to_delete() {
    let mut d = Download::new(RacpProfile::Glucose, DownloadFilter::All, 1000);
    assert_eq!(d.start(0), Action::Write(vec![1, 1]));
    let Action::Complete(done) = d.on_racp(10, &hex("06000106")) else {
        panic!()
    };
    assert_eq!(done.records_received(), 0);
    assert_eq!(
        done.records_durable(0),
        Err(DeleteRefused::NothingDownloaded)
    );
}

#[test]
fn racp_timeout_aborts_then_fails() {
    let mut d = Download::new(RacpProfile::Glucose, DownloadFilter::All, 1000);
    d.start(0);
    assert_eq!(d.on_timeout(500), Action::Wait);
    assert_eq!(
        d.on_timeout(1000),
        Action::Write(RacpRequest::Abort.encode())
    );
    assert_eq!(d.on_racp(1100, &hex("06000301")), Action::Aborted);
    let mut d = Download::new(RacpProfile::Glucose, DownloadFilter::All, 1000);
    d.start(0);
    d.on_timeout(1000);
    assert_eq!(d.on_timeout(2000), Action::Failed(DownloadFailure::Timeout));
}

#[test]
fn racp_failure_codes_and_undecodable_records_block_delete() {
    let mut d = Download::new(RacpProfile::Glucose, DownloadFilter::All, 1000);
    d.start(0);
    assert_eq!(
        d.on_racp(5, &hex("06000108")),
        Action::Failed(DownloadFailure::ResponseCode {
            request_opcode: 1,
            code: 8
        })
    );
    let mut d = Download::new(RacpProfile::Glucose, DownloadFilter::All, 1000);
    d.start(0);
    d.on_measurement(1, &glucose_record(1)).unwrap();
    assert!(d.on_measurement(2, &hex("0201")).is_err());
    let Action::Complete(done) = d.on_racp(3, &hex("06000101")) else {
        panic!()
    };
    assert_eq!(
        done.records_durable(1),
        Err(DeleteRefused::UndecodableRecords(1))
    );
    // A malformed indication fails the download.
    let mut d = Download::new(RacpProfile::PulseOximeter, DownloadFilter::All, 1000);
    d.start(0);
    assert!(matches!(
        d.on_racp(1, &hex("06010101")),
        Action::Failed(DownloadFailure::Malformed(_))
    ));
}

#[test]
fn plx_download_deletes_all_only_after_everything_is_durable() {
    let mut d = Download::new(RacpProfile::PulseOximeter, DownloadFilter::All, 1000);
    d.start(0);
    assert!(matches!(
        d.on_measurement(1, &hex("0062005a00")).unwrap(),
        Action::Store(_)
    ));
    let Action::Complete(done) = d.on_racp(3, &hex("06000101")) else {
        panic!()
    };
    assert_eq!(done.records_durable(1).unwrap().request(), vec![2, 1]);
}

#[test]
fn characteristic_constants_match() {
    assert_eq!(uuid::BLOOD_PRESSURE_MEASUREMENT, 0x2A35);
    assert_eq!(device_drivers::gatt::cccd::Cccd::Indicate.encode(), [2, 0]);
    assert_eq!(device_drivers::gatt::cccd::Cccd::Notify.encode(), [1, 0]);
    assert_eq!(device_drivers::gatt::cccd::Cccd::Off.encode(), [0, 0]);
}
