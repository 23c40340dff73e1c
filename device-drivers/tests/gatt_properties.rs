//! Property tests: exhaustive SFLOAT, random FLOAT, encode/decode round trips for every
//! characteristic the crate encodes, arbitrary bytes never panic, every vector prefix.

mod support;

use device_drivers::gatt::datetime::{encode_current_time, AdjustReason, CurrentTime};
use device_drivers::gatt::racp::{
    Action, Download, DownloadFilter, RacpMessage, RacpProfile, RacpRequest,
};
use device_drivers::gatt::sfloat::{encode_float_rounded, encode_sfloat_rounded, Float11073};
use device_drivers::gatt::{
    blood_pressure::BloodPressureMeasurement, cccd::Cccd, decode, decode_measurement,
    decode_to_json, glucose::GlucoseMeasurement, heart_rate::HeartRateMeasurement,
    plx::PlxContinuous, quirks, thermometer::TemperatureMeasurement, weight::WeightMeasurement,
    GattError, SUPPORTED_CHARACTERISTICS,
};
use device_drivers::{Decimal, DeviceTime};
use proptest::prelude::*;
use support::{characteristic, hex, numbers_match, vectors};

const SFLOAT_SPECIALS: [u16; 5] = [0x07FF, 0x0800, 0x07FE, 0x0802, 0x0801];
const FLOAT_SPECIALS: [u32; 5] = [
    0x007F_FFFF,
    0x0080_0000,
    0x007F_FFFE,
    0x0080_0002,
    0x0080_0001,
];

#[test]
fn sfloat_all_65536_words() {
    let mut specials = 0;
    for w in 0..=u16::MAX {
        let v = Float11073::from_sfloat(w);
        let json = serde_json::to_value(v).unwrap();
        if SFLOAT_SPECIALS.contains(&w) {
            specials += 1;
            assert!(v.is_special(), "{w:#06x}");
            assert!(json.is_string(), "{w:#06x} must be a JSON string");
        } else {
            let Float11073::Value(d) = v else {
                panic!("{w:#06x} decoded as special")
            };
            // Independent arithmetic on the raw bits.
            let e = i64::from((w >> 12) as i16) - if w >> 15 == 1 { 16 } else { 0 };
            let m = i64::from(w & 0x0FFF) - if w & 0x0800 != 0 { 4096 } else { 0 };
            assert_eq!((d.mantissa, i64::from(d.exponent)), (m, e), "{w:#06x}");
            assert!((-2048..=2047).contains(&d.mantissa) && (-8..=7).contains(&d.exponent));
            let expect = format!("{m}e{e}").parse::<f64>().unwrap();
            assert!(numbers_match(expect, json.as_f64().unwrap()), "{w:#06x}");
        }
        assert_eq!(v.to_sfloat(), Some(w), "round trip {w:#06x}");
    }
    assert_eq!(specials, 5);
    assert_eq!(
        Float11073::from_sfloat(0xF7FF).value(),
        Some(Decimal::new(2047, -1))
    );
}

#[test]
fn every_vector_prefix_is_truncated_or_decodes() {
    for v in vectors() {
        let ch = characteristic(v["characteristic"].as_str().unwrap());
        let full = hex(v["hex"].as_str().unwrap());
        for n in 0..full.len() {
            match decode(ch, &full[..n]) {
                Ok(_) | Err(GattError::Truncated { .. }) | Err(GattError::Invalid(_)) => {}
                Err(e) => panic!("{}: prefix {n}: {e}", v["id"]),
            }
        }
    }
}

#[test]
fn all_one_and_two_octet_payloads_never_panic() {
    for ch in SUPPORTED_CHARACTERISTICS {
        let _ = decode(ch, &[]);
        for w in 0..=u16::MAX {
            let [a, b] = w.to_le_bytes();
            let _ = decode(ch, &[a]);
            let _ = decode(ch, &[a, b]);
        }
    }
}

fn dt_bytes() -> impl Strategy<Value = [u8; 7]> {
    prop::array::uniform7(any::<u8>())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases_or(2000)))]

    #[test]
    fn float_random_words(w in any::<u32>()) {
        let v = Float11073::from_float(w);
        prop_assert_eq!(v.is_special(), FLOAT_SPECIALS.contains(&w));
        if let Float11073::Value(d) = v {
            let e = i64::from((w >> 24) as u8 as i8);
            let m = i64::from(w & 0x00FF_FFFF) - if w & 0x0080_0000 != 0 { 1 << 24 } else { 0 };
            prop_assert_eq!((d.mantissa, i64::from(d.exponent)), (m, e));
        }
        prop_assert_eq!(v.to_float(), Some(w));
    }

    #[test]
    fn rounded_sfloat_encoder_fits_2045_and_is_close(m in -10_000_000i64..10_000_000, e in -10i16..4) {
        let d = Decimal::new(m, e);
        if let Some(w) = encode_sfloat_rounded(d) {
            let Float11073::Value(out) = Float11073::from_sfloat(w) else {
                return Err(TestCaseError::fail("rounded encoder produced a special value"));
            };
            prop_assert!(out.mantissa.abs() <= 2045);
            let step = 10f64.powi(i32::from(out.exponent));
            prop_assert!((out.to_f64() - d.to_f64()).abs() <= step / 2.0 + 1e-12 * d.to_f64().abs());
        } else {
            // Only values too large for exponent 7 are refused.
            prop_assert!(d.to_f64().abs() > 2045e7 * 0.99);
        }
        if let Some(w) = encode_float_rounded(d) {
            let out = Float11073::from_float(w).value().unwrap();
            prop_assert!(out.mantissa.abs() <= 8_388_605);
            if d.mantissa.abs() <= 8_388_605 {
                prop_assert_eq!(out.cmp_value(d), std::cmp::Ordering::Equal);
            }
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(ch_i in 0usize..SUPPORTED_CHARACTERISTICS.len(), bytes in prop::collection::vec(any::<u8>(), 0..48)) {
        let ch = SUPPORTED_CHARACTERISTICS[ch_i];
        let json = decode_to_json(ch, &bytes).expect("supported");
        prop_assert!(json.is_object());
        let _ = decode_measurement(ch, &bytes, None);
        for q in quirks::ALL {
            let _ = decode_measurement(ch, &bytes, Some(q));
        }
    }

    #[test]
    fn bpm_round_trip(flags in 0u8..0x20, vals in prop::array::uniform4(any::<u16>()), dt in dt_bytes(), user in any::<u8>(), status in any::<u16>()) {
        let mut p = vec![flags];
        for v in &vals[..3] { p.extend_from_slice(&v.to_le_bytes()); }
        if flags & 2 != 0 { p.extend_from_slice(&dt); }
        if flags & 4 != 0 { p.extend_from_slice(&vals[3].to_le_bytes()); }
        if flags & 8 != 0 { p.push(user); }
        if flags & 16 != 0 { p.extend_from_slice(&status.to_le_bytes()); }
        let m = BloodPressureMeasurement::decode(&p).unwrap();
        prop_assert_eq!(m.trailing_octets, 0);
        prop_assert_eq!(m.encode(), Some(p));
    }

    #[test]
    fn weight_round_trip(flags in 0u8..0x10, w in any::<u16>(), dt in dt_bytes(), user in any::<u8>(), bmi in any::<u16>(), h in any::<u16>()) {
        let mut p = vec![flags];
        p.extend_from_slice(&w.to_le_bytes());
        if flags & 2 != 0 { p.extend_from_slice(&dt); }
        if flags & 4 != 0 { p.push(user); }
        if flags & 8 != 0 { p.extend_from_slice(&bmi.to_le_bytes()); p.extend_from_slice(&h.to_le_bytes()); }
        let m = WeightMeasurement::decode(&p).unwrap();
        prop_assert_eq!(m.encode(), Some(p));
    }

    #[test]
    fn temperature_round_trip(flags in 0u8..0x08, t in any::<u32>(), dt in dt_bytes(), ty in any::<u8>()) {
        let mut p = vec![flags];
        p.extend_from_slice(&t.to_le_bytes());
        if flags & 2 != 0 { p.extend_from_slice(&dt); }
        if flags & 4 != 0 { p.push(ty); }
        let m = TemperatureMeasurement::decode(&p).unwrap();
        prop_assert_eq!(m.encode(), Some(p));
    }

    #[test]
    fn plx_continuous_round_trip(flags in 0u8..0x20, v in prop::array::uniform7(any::<u16>()), ms in any::<u16>(), ds in 0u32..0x100_0000) {
        let mut p = vec![flags];
        for x in &v[..2] { p.extend_from_slice(&x.to_le_bytes()); }
        if flags & 1 != 0 { for x in &v[2..4] { p.extend_from_slice(&x.to_le_bytes()); } }
        if flags & 2 != 0 { for x in &v[4..6] { p.extend_from_slice(&x.to_le_bytes()); } }
        if flags & 4 != 0 { p.extend_from_slice(&ms.to_le_bytes()); }
        if flags & 8 != 0 { p.extend_from_slice(&ds.to_le_bytes()[..3]); }
        if flags & 16 != 0 { p.extend_from_slice(&v[6].to_le_bytes()); }
        let m = PlxContinuous::decode(&p).unwrap();
        prop_assert_eq!(m.encode(), Some(p));
    }

    #[test]
    fn glucose_round_trip(flags in 0u8..0x20, seq in any::<u16>(), dt in dt_bytes(), off in any::<i16>(), c in any::<u16>(), ts in any::<u8>(), st in any::<u16>()) {
        let mut p = vec![flags];
        p.extend_from_slice(&seq.to_le_bytes());
        p.extend_from_slice(&dt);
        if flags & 1 != 0 { p.extend_from_slice(&off.to_le_bytes()); }
        if flags & 2 != 0 { p.extend_from_slice(&c.to_le_bytes()); p.push(ts); }
        if flags & 8 != 0 { p.extend_from_slice(&st.to_le_bytes()); }
        let m = GlucoseMeasurement::decode(&p).unwrap();
        // The unit bit only exists together with a concentration.
        let mut expect = p.clone();
        if flags & 2 == 0 { expect[0] &= !0x04; }
        prop_assert_eq!(m.encode(), Some(expect));
    }

    #[test]
    fn heart_rate_round_trip(flags in 0u8..0x20, hr in any::<u16>(), e in any::<u16>(), rr in prop::collection::vec(any::<u16>(), 1..8)) {
        let mut p = vec![flags];
        if flags & 1 != 0 { p.extend_from_slice(&hr.to_le_bytes()); } else { p.push(hr as u8); }
        if flags & 8 != 0 { p.extend_from_slice(&e.to_le_bytes()); }
        if flags & 16 != 0 { for x in &rr { p.extend_from_slice(&x.to_le_bytes()); } }
        let m = HeartRateMeasurement::decode(&p).unwrap();
        let mut expect = p.clone();
        // Contact value 1 ("not supported") re-encodes as 0.
        if (flags >> 1) & 3 == 1 { expect[0] &= !0x02; }
        prop_assert_eq!(m.encode(), expect);
    }

    #[test]
    fn current_time_round_trip(p in prop::array::uniform10(any::<u8>())) {
        let m = CurrentTime::decode(&p).unwrap();
        prop_assert_eq!(m.encode(), p);
    }

    #[test]
    fn current_time_encoder_from_device_time(secs in 946_684_800i64..4_102_444_800, reason in 0u8..16) {
        let t = DeviceTime::from_naive_unix_seconds(secs).unwrap();
        let b = encode_current_time(t, AdjustReason::from_raw(reason));
        let m = CurrentTime::decode(&b).unwrap();
        prop_assert_eq!(m.timestamp.0.device_time(), Some(t));
        prop_assert_eq!(m.adjust_reason.raw, reason);
        prop_assert!((1..=7).contains(&m.day_of_week));
    }

    #[test]
    fn racp_requests_round_trip(n in any::<u16>(), which in 0usize..7) {
        let req = [RacpRequest::ReportAll, RacpRequest::ReportFromSequence(n), RacpRequest::ReportFirst,
                   RacpRequest::ReportLast, RacpRequest::CountAll, RacpRequest::CountFromSequence(n),
                   RacpRequest::Abort][which];
        let b = req.encode();
        let m = RacpMessage::decode(&b).unwrap();
        prop_assert_eq!(m.opcode, b[0]);
        prop_assert_eq!(m.trailing_octets, 0);
        let json = serde_json::to_value(&m).unwrap();
        prop_assert_eq!(json["operator"].as_u64(), Some(u64::from(b[1])));
        if b.len() == 5 {
            prop_assert_eq!(json["operand"][0].as_u64(), Some(u64::from(n)));
        }
    }

    #[test]
    fn racp_download_survives_any_event_sequence(events in prop::collection::vec((0u8..4, prop::collection::vec(any::<u8>(), 0..20), 0u64..5000), 0..30)) {
        let mut d = Download::new(RacpProfile::Glucose, DownloadFilter::All, 1000);
        let _ = d.start(0);
        let mut now = 0;
        for (kind, bytes, dt) in events {
            now += dt;
            let a = match kind {
                0 => d.on_measurement(now, &bytes).unwrap_or(Action::Wait),
                1 => d.on_racp(now, &bytes),
                2 => d.on_timeout(now),
                _ => d.abort(now),
            };
            if let Action::Write(w) = a {
                // The machine itself never writes a delete.
                prop_assert_ne!(w.first(), Some(&2));
            }
        }
    }
}

#[test]
fn cccd_round_trip() {
    for c in [Cccd::Off, Cccd::Notify, Cccd::Indicate] {
        assert_eq!(Cccd::decode(&c.encode()), Some(c));
    }
    assert_eq!(Cccd::decode(&[3, 0]), None);
}

/// Case count: `PROPTEST_CASES` when set (cross/test.sh lowers it under qemu), else the default.
fn cases_or(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}
