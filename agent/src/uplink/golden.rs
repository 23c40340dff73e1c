//! Golden Bundles: one transaction Bundle per measurement kind, checked in under
//! `agent/src/uplink/golden/<kind>.json`, compared byte for byte, validated against the official
//! FHIR R4 JSON schema (the devkit's validator) and against the required elements of the R4
//! vital-signs profiles. `.ci/run` also validates them with Medplum (`ci/medplum/`).
//!
//! Regenerate after a deliberate mapping change: `VITALGATE_UPDATE_GOLDEN=1 cargo test -p
//! vitalgate --lib golden`, then review the diff.

use chrono::{FixedOffset, TimeZone};
use device_drivers::{AbsentReason, AbsentValue, BodySite, Decimal, ReadingType, Specimen};
use serde_json::Value;

use super::fhir::tests::reading;
use super::fhir::{build_transaction_bundle, GatewayInfo, LOINC};
use crate::reading::{Reading, ReadingKind, Timing};

fn dec(m: i64, e: i16) -> Decimal {
    Decimal::new(m, e)
}

/// Every kind the agent can upload, in the richest form it takes.
pub(crate) fn cases() -> Vec<(&'static str, Reading)> {
    use ReadingType as T;
    let mut out = Vec::new();
    let mut bp = reading(
        ReadingKind::BloodPressure,
        vec![
            (T::SystolicPressure, dec(128, 0), "mm[Hg]"),
            (T::DiastolicPressure, dec(82, 0), "mm[Hg]"),
            (T::MeanArterialPressure, dec(97, 0), "mm[Hg]"),
        ],
        1,
    );
    bp.flags = vec![
        device_drivers::Status::IrregularPulse,
        device_drivers::Status::QuestionableMeasurementDetected,
    ];
    out.push(("blood_pressure", bp));
    let mut bp_day = reading(
        ReadingKind::BloodPressure,
        vec![
            (T::SystolicPressure, dec(160, 0), "mm[Hg]"),
            (T::DiastolicPressure, dec(60, 0), "mm[Hg]"),
        ],
        2,
    );
    bp_day.timing = Timing::Date;
    out.push(("blood_pressure_date_only", bp_day));
    out.push((
        "pulse_rate_cuff",
        reading(
            ReadingKind::PulseRateCuff,
            vec![(T::PulseRate, dec(61, 0), "/min")],
            3,
        ),
    ));
    out.push((
        "pulse_rate_oximeter",
        reading(
            ReadingKind::PulseRateOximeter,
            vec![(T::PulseRate, dec(72, 0), "/min")],
            4,
        ),
    ));
    out.push((
        "heart_rate",
        reading(
            ReadingKind::HeartRate,
            vec![(T::HeartRate, dec(675, -1), "/min")],
            5,
        ),
    ));
    let mut spo2 = reading(
        ReadingKind::OxygenSaturation,
        vec![(T::Spo2, dec(95, 0), "%")],
        6,
    );
    spo2.context.supplemental_oxygen_l_min = Some(dec(25, -1));
    out.push(("oxygen_saturation_with_supplemental_oxygen", spo2));
    let mut spo2e = reading(
        ReadingKind::OxygenSaturation,
        vec![(T::Spo2, dec(97, 0), "%")],
        7,
    );
    spo2e.flags = vec![device_drivers::Status::EarlyEstimatedData];
    out.push(("oxygen_saturation_early_estimate", spo2e));
    out.push((
        "perfusion_index",
        reading(
            ReadingKind::PerfusionIndex,
            vec![(T::PerfusionIndex, dec(42, -1), "%")],
            8,
        ),
    ));
    // The serial reducer's spot-check median: a statistic over its window (effectivePeriod,
    // method.text), never a spot reading (issue #8).
    let mut median = reading(
        ReadingKind::OxygenSaturation,
        vec![(T::Spo2, dec(96, 0), "%")],
        18,
    );
    median.context.statistic = Some(crate::pipeline::reduce::WINDOW_STATISTIC.into());
    median.source = crate::reading::Source::Serial {
        port: "/dev/serial/by-id/usb-nonin-if00".into(),
    };
    median.timing = Timing::Period {
        end: median.effective + chrono::Duration::seconds(30),
    };
    out.push(("oxygen_saturation_spot_check_median", median));
    let mut w = reading(
        ReadingKind::BodyWeight,
        vec![(T::BodyWeight, dec(7235, -2), "kg")],
        9,
    );
    w.timing = Timing::Period {
        end: FixedOffset::east_opt(3600)
            .unwrap()
            .with_ymd_and_hms(2025, 7, 14, 8, 15, 30)
            .unwrap(),
    };
    out.push(("body_weight_over_a_period", w));
    // An Open mHealth `descriptive_statistic` a hub's `upload_statistics` names: over its
    // period, `method` coded with the R4 StatisticsCode (issue #8).
    let mut wmin = reading(
        ReadingKind::BodyWeight,
        vec![(T::BodyWeight, dec(495, -1), "kg")],
        22,
    );
    wmin.context.statistic = Some("minimum".into());
    wmin.source = crate::reading::Source::Mqtt {
        topic: "vitalgate/ingest/hub-1".into(),
        source_id: "9f1c0000-0000-4000-8000-000000000001".into(),
    };
    wmin.device.class = crate::reading::DeviceClass::Generic;
    wmin.device.identifier = crate::reading::DeviceIdentifier::Local("gw-golden/hub-1".into());
    wmin.timing = Timing::Period {
        end: FixedOffset::east_opt(3600)
            .unwrap()
            .with_ymd_and_hms(2025, 4, 14, 8, 15, 30)
            .unwrap(),
    };
    // §5.1: the data point's uuid in place of the device, the period form of the timestamp.
    wmin.observation_identifier = crate::identity::observation_identifier_for_period(
        "9f1c0000-0000-4000-8000-000000000001",
        &wmin.patient,
        188736,
        &crate::identity::IdTimestamp::Device {
            seconds_since_2000: wmin.device_time.unwrap().seconds_since_2000(),
            fraction: None,
            utc_offset_minutes: Some(60),
        },
        Some(31 * 86_400),
    );
    out.push(("body_weight_minimum_over_a_period_omh", wmin));
    out.push((
        "body_height",
        reading(
            ReadingKind::BodyHeight,
            vec![(T::BodyHeight, dec(1805, -1), "cm")],
            10,
        ),
    ));
    out.push((
        "bmi",
        reading(ReadingKind::Bmi, vec![(T::Bmi, dec(221, -1), "kg/m2")], 11),
    ));
    out.push((
        "body_fat_percentage",
        reading(
            ReadingKind::BodyFatPercentage,
            vec![(T::BodyFatPercentage, dec(231, -1), "%")],
            12,
        ),
    ));
    let mut t = reading(
        ReadingKind::BodyTemperature,
        vec![(T::BodyTemperature, dec(3650, -2), "Cel")],
        13,
    );
    t.context.body_site = Some(BodySite::Tympanum);
    out.push(("body_temperature_tympanic", t));
    let mut g = reading(
        ReadingKind::BloodGlucose,
        vec![(T::BloodGlucose, dec(95, 0), "mg/dL")],
        14,
    );
    g.context.specimen = Some(Specimen::CapillaryWholeBlood);
    g.context.meal = Some("fasting".into());
    out.push(("blood_glucose_capillary_fasting", g));
    let mut gv = reading(
        ReadingKind::BloodGlucose,
        vec![(T::BloodGlucose, dec(54, -1), "mmol/L")],
        15,
    );
    gv.context.specimen = Some(Specimen::VenousPlasma);
    out.push(("blood_glucose_venous_plasma_mmol", gv));
    let mut gi = reading(
        ReadingKind::BloodGlucose,
        vec![(T::BloodGlucose, dec(110, 0), "mg/dL")],
        16,
    );
    gi.context.specimen = Some(Specimen::InterstitialFluid);
    out.push(("blood_glucose_interstitial_fluid", gi));
    // IEEE 11073 special values (fhir-mapping.md §2): `dataAbsentReason`, never a number.
    let absent = |kind, unit: &str, reason| AbsentValue {
        kind,
        unit: unit.into(),
        reason,
    };
    let mut bp_nan = reading(
        ReadingKind::BloodPressure,
        vec![
            (T::SystolicPressure, dec(128, 0), "mm[Hg]"),
            (T::DiastolicPressure, dec(82, 0), "mm[Hg]"),
        ],
        18,
    );
    bp_nan.context.absent = vec![absent(
        T::MeanArterialPressure,
        "mm[Hg]",
        AbsentReason::NotANumber,
    )];
    out.push(("blood_pressure_mean_not_a_number", bp_nan));
    let mut t_inf = reading(ReadingKind::BodyTemperature, vec![], 19);
    t_inf.context.absent = vec![absent(
        T::BodyTemperature,
        "Cel",
        AbsentReason::PositiveInfinity,
    )];
    out.push(("body_temperature_above_range", t_inf));
    let mut g_nres = reading(ReadingKind::BloodGlucose, vec![], 20);
    g_nres.context.specimen = Some(Specimen::CapillaryPlasma);
    g_nres.context.absent = vec![absent(T::BloodGlucose, "mmol/L", AbsentReason::Error)];
    out.push(("blood_glucose_nres_mmol", g_nres));
    // A cuff whose clock was two years behind, corrected by the gateway: the Coincident
    // Timestamp Observation and the extension on the BP and 8410608 Observations
    // (fhir-mapping.md §4). The identifier keeps the raw device time (§5.1).
    let mut bp_cts = super::fhir::tests::corrected(21, ReadingKind::BloodPressure);
    bp_cts.flags = vec![device_drivers::Status::IrregularPulse];
    let raw = device_drivers::DeviceTime::new(2023, 3, 15, 8, 15, 30).unwrap();
    bp_cts.device_time = Some(raw);
    bp_cts.observation_identifier = crate::identity::observation_identifier(
        bp_cts.device.identifier.id_component(),
        &bp_cts.patient,
        150020,
        &crate::identity::IdTimestamp::Device {
            seconds_since_2000: raw.seconds_since_2000(),
            fraction: None,
            utc_offset_minutes: None,
        },
    );
    out.push(("blood_pressure_corrected_clock", bp_cts));
    out.push((
        "respiratory_rate",
        reading(
            ReadingKind::RespiratoryRate,
            vec![(T::RespiratoryRate, dec(14, 0), "/min")],
            17,
        ),
    ));
    out
}

pub(crate) fn bundle(r: &Reading) -> Value {
    build_transaction_bundle(
        &GatewayInfo::new("gw-golden", "0.1.0"),
        std::slice::from_ref(r),
    )
    .unwrap()
    .0
}

/// The required elements of the R4 vital-signs profile (`vitalsigns` and its children) for an
/// Observation that claims one: category vital-signs, the profile's LOINC code, subject,
/// effective[x] (dateTime precise to the day, or Period), value or dataAbsentReason (or, for
/// BP, systolic and diastolic components in mm[Hg]), UCUM quantities.
pub(crate) fn vital_signs_errors(o: &Value) -> Vec<String> {
    let mut e = Vec::new();
    let profiles: Vec<&str> = o["meta"]["profile"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .filter_map(|p| p.strip_prefix("http://hl7.org/fhir/StructureDefinition/"))
        .collect();
    let Some(profile) = profiles.first() else {
        return e;
    };
    let expected = match *profile {
        "bp" => "85354-9",
        "heartrate" => "8867-4",
        "oxygensat" => "2708-6",
        "bodyweight" => "29463-7",
        "bodyheight" => "8302-2",
        "bmi" => "39156-5",
        "bodytemp" => "8310-5",
        "resprate" => "9279-1",
        other => {
            e.push(format!("unknown vital-signs profile {other}"));
            return e;
        }
    };
    let has_vs = o["category"].as_array().into_iter().flatten().any(|c| {
        c["coding"].as_array().into_iter().flatten().any(|x| {
            x["system"] == "http://terminology.hl7.org/CodeSystem/observation-category"
                && x["code"] == "vital-signs"
        })
    });
    if !has_vs {
        e.push("category vital-signs missing".into());
    }
    let loinc = |c: &Value, code: &str| {
        c["coding"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|x| x["system"] == LOINC && x["code"] == code)
    };
    if !loinc(&o["code"], expected) {
        e.push(format!("code lacks LOINC {expected}"));
    }
    if o["subject"]["reference"].as_str().is_none() {
        e.push("subject missing".into());
    }
    match (o.get("effectiveDateTime"), o.get("effectivePeriod")) {
        (Some(Value::String(d)), None) if d.len() >= 10 => {}
        (None, Some(p)) if p["start"].is_string() => {}
        _ => e.push("effective[x] missing or not precise to the day".into()),
    }
    let ucum = |q: &Value| {
        q["system"] == "http://unitsofmeasure.org"
            && q["code"].is_string()
            && q["value"].is_number()
    };
    if *profile == "bp" {
        for code in ["8480-6", "8462-4"] {
            let ok = o["component"].as_array().into_iter().flatten().any(|c| {
                loinc(&c["code"], code)
                    && (c.get("dataAbsentReason").is_some()
                        || (ucum(&c["valueQuantity"]) && c["valueQuantity"]["code"] == "mm[Hg]"))
            });
            if !ok {
                e.push(format!("BP component {code} missing or not mm[Hg]"));
            }
        }
    } else if o.get("dataAbsentReason").is_none() && !ucum(&o["valueQuantity"]) {
        e.push("valueQuantity (UCUM) or dataAbsentReason missing".into());
    }
    for c in o["component"].as_array().into_iter().flatten() {
        if c.get("valueQuantity").is_some() && !ucum(&c["valueQuantity"]) {
            e.push("component valueQuantity is not UCUM".into());
        }
    }
    e
}

#[test]
fn golden_bundles_match_and_validate_against_the_r4_schema_and_vital_signs_profiles() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/uplink/golden");
    let update = std::env::var_os("VITALGATE_UPDATE_GOLDEN").is_some();
    let mut names = Vec::new();
    for (name, r) in cases() {
        let b = bundle(&r);
        let text = serde_json::to_string_pretty(&b).unwrap() + "\n";
        let path = dir.join(format!("{name}.json"));
        if update {
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(&path, &text).unwrap();
        }
        let golden = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!(
                "{}: {e} (VITALGATE_UPDATE_GOLDEN=1 writes it)",
                path.display()
            )
        });
        assert_eq!(
            text, golden,
            "{name}: mapping changed; review and regenerate"
        );
        let errors = vitalgate_devkit::validate_resource(&b);
        assert!(errors.is_empty(), "{name}: {errors:?}");
        for e in b["entry"].as_array().unwrap() {
            let res = &e["resource"];
            if res["resourceType"] == "Observation" {
                let v = vital_signs_errors(res);
                assert!(v.is_empty(), "{name}: {v:?}");
            }
        }
        names.push(name);
    }
    // Every kind the agent can produce has at least one golden Bundle.
    let kinds: std::collections::BTreeSet<&str> =
        cases().iter().map(|(_, r)| r.kind.as_str()).collect();
    assert_eq!(kinds.len(), 13, "{kinds:?}");
}

#[test]
fn the_vital_signs_check_catches_what_it_claims_to() {
    let (_, r) = cases().remove(0);
    let b = bundle(&r);
    let mut o = b["entry"][2]["resource"].clone();
    assert!(vital_signs_errors(&o).is_empty());
    o["category"] = serde_json::json!([]);
    o.as_object_mut().unwrap().remove("effectiveDateTime");
    o["component"][0]["valueQuantity"]["code"] = "kPa".into();
    let e = vital_signs_errors(&o);
    assert_eq!(e.len(), 3, "{e:?}");
}

#[test]
fn a_bp_with_status_bits_gets_a_8410608_observation_derived_from_it() {
    let (_, r) = cases().remove(0);
    let b = bundle(&r);
    let entries = b["entry"].as_array().unwrap();
    assert_eq!(entries.len(), 4);
    let bp = &entries[2];
    let st = &entries[3]["resource"];
    assert_eq!(st["code"]["coding"][0]["code"], "8410608");
    assert_eq!(st["derivedFrom"][0]["reference"], bp["fullUrl"]);
    let irregular = st["component"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["code"]["coding"][0]["code"] == "8410608.2")
        .unwrap();
    assert_eq!(irregular["valueBoolean"], true);
    assert_eq!(
        bp["resource"]["interpretation"][0]["coding"][0]["code"],
        "questionable"
    );
    assert!(entries[3]["request"]["ifNoneExist"]
        .as_str()
        .unwrap()
        .ends_with("-8410608"));
}
