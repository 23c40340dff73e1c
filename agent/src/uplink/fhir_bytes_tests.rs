//! The Bundle written as JSON bytes (`build_bundle`) is, byte for byte, the one the
//! `serde_json::Value` path gave (`oracle::build_bundle`, serialized by `serde_json::to_vec`),
//! for generated readings of every kind: unicode and escapes in every string the mapping
//! copies, every decimal, flags, timings, contexts, Coincident Timestamp Observations, duplicate
//! and colliding identifiers, the first Bundle with its Devices and the later ones that
//! reference them, conditional create and update-as-create (`WriteMode::Put`); errors too.

use super::oracle;
use super::tests::{corrected, test_id};
use super::*;
use crate::reading::{CoincidentTimestamp, DeviceInfo, Source, TimeQuality};
use chrono::{FixedOffset, TimeZone, Utc};
use proptest::prelude::*;
use proptest::sample::{select, subsequence};

/// Both paths on one input: the same bytes, the same value, the same entry maps; or the same
/// error.
fn same_both_ways(
    gw: &GatewayInfo,
    batch: &[Reading],
    known: &KnownDevices,
) -> Result<Option<BuiltBundle>, TestCaseError> {
    match (
        build_bundle(gw, batch, known),
        oracle::build_bundle(gw, batch, known),
    ) {
        (Ok(new), Ok(old)) => {
            let old_bytes = serde_json::to_vec(&old.bundle).unwrap();
            if new.json != old_bytes {
                return Err(TestCaseError::fail(format!(
                    "bytes differ:\nnew {}\nold {}",
                    String::from_utf8_lossy(&new.json),
                    String::from_utf8_lossy(&old_bytes)
                )));
            }
            prop_assert_eq!(new.value(), old.bundle.clone());
            prop_assert_eq!(
                new.entry_count,
                old.bundle["entry"].as_array().map_or(0, Vec::len)
            );
            prop_assert_eq!(&new.entries, &old.entries);
            prop_assert_eq!(&new.devices, &old.devices);
            Ok(Some(new))
        }
        (Err(a), Err(b)) => {
            prop_assert_eq!(a, b);
            Ok(None)
        }
        (new, old) => Err(TestCaseError::fail(format!(
            "one way failed: new {:?}, old {:?}",
            new.map(|b| b.entry_count),
            old.map(|b| b.entries.len())
        ))),
    }
}

/// Every kind, in the forms the golden Bundles cover, and re-timed readings.
fn pool() -> Vec<Reading> {
    let mut out: Vec<Reading> = super::super::golden::cases()
        .into_iter()
        .map(|(_, r)| r)
        .collect();
    out.push(corrected(1, ReadingKind::BloodPressure));
    out.push(corrected(2, ReadingKind::PulseRateCuff));
    out
}

/// Plain text, text full of what JSON escapes (quotes, backslashes, control characters), and
/// any unicode at all.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => "[a-zA-Z0-9 ./:|-]{1,12}",
        3 => "[a-z\"\\\\/\\x00-\\x1f\\x7f é°µ€😀|?&=]{0,10}",
        1 => any::<String>(),
    ]
}

fn decimal() -> impl Strategy<Value = Decimal> {
    (
        prop_oneof![3 => -100_000i64..100_000, 1 => any::<i64>()],
        -8i16..8,
    )
        .prop_map(|(mantissa, exponent)| Decimal { mantissa, exponent })
}

fn unit() -> impl Strategy<Value = String> {
    prop_oneof![
        select(vec![
            "mm[Hg]", "kPa", "mmol/L", "mg/dL", "Cel", "[degF]", "/min", "%", "kg", "[lb_av]",
            "cm", "[in_i]", "kg/m2", "L/min",
        ])
        .prop_map(str::to_owned),
        text(),
    ]
}

fn device() -> impl Strategy<Value = DeviceInfo> {
    let identifier = prop_oneof![
        "[0-9A-F]{16}".prop_map(DeviceIdentifier::Eui64),
        "[0-9A-F]{12}".prop_map(DeviceIdentifier::Bluetooth),
        text().prop_map(DeviceIdentifier::Local),
        text().prop_map(DeviceIdentifier::Eui64),
    ];
    let class = select(vec![
        DeviceClass::BloodPressureCuff,
        DeviceClass::Scale,
        DeviceClass::Thermometer,
        DeviceClass::PulseOximeter,
        DeviceClass::GlucoseMeter,
        DeviceClass::HeartRateSensor,
        DeviceClass::Generic,
    ]);
    let o = || proptest::option::of(text());
    let ids = || proptest::option::of(prop_oneof!["[0-9A-F]{16}", "[0-9A-F]{12}", text()]);
    (
        identifier,
        text(),
        class,
        (o(), o(), o(), o()),
        (ids(), ids()),
        (o(), o()),
    )
        .prop_map(
            |(
                identifier,
                name,
                class,
                (manufacturer, model, serial, firmware),
                (system_id, bluetooth_address),
                (hardware, software),
            )| DeviceInfo {
                name,
                class,
                identifier,
                manufacturer,
                model,
                serial,
                firmware,
                system_id,
                bluetooth_address,
                hardware,
                software,
            },
        )
}

fn patient() -> impl Strategy<Value = PatientRef> {
    prop_oneof![
        text().prop_map(|id| PatientRef::Literal { id }),
        (text(), text()).prop_map(|(system, value)| PatientRef::Identifier { system, value }),
    ]
}

/// What one generated reading changes in its pool reading.
#[derive(Debug, Clone)]
struct Edit {
    base: usize,
    /// Index into the case's devices.
    device: usize,
    /// Another text in the identifier (each reading's own otherwise).
    identifier: Option<String>,
    /// A copy of an earlier reading of the batch (a duplicate: `true`), or a reading with an
    /// earlier one's identifier (a collision: `false`).
    relation: Option<(bool, usize)>,
    kind: Option<usize>,
    unit: Option<String>,
    values: Vec<Decimal>,
    flags: Vec<Status>,
    /// 0 the pool's, 1 instant, 2 date, 3 period.
    timing: u8,
    statistic: Option<String>,
    meal: Option<String>,
    site: Option<BodySite>,
    specimen: Option<Specimen>,
    oxygen: Option<Decimal>,
    patient: Option<PatientRef>,
    /// Index into the case's clock reads: re-timed against it.
    clock_read: Option<usize>,
    serial_source: bool,
}

fn edit(pool_len: usize) -> impl Strategy<Value = Edit> {
    let flags = subsequence(Status::all().collect::<Vec<_>>(), 0..4);
    let site = select(vec![
        BodySite::Axilla,
        BodySite::Body,
        BodySite::Ear,
        BodySite::Finger,
        BodySite::GastroIntestinalTract,
        BodySite::Mouth,
        BodySite::Rectum,
        BodySite::Toe,
        BodySite::Tympanum,
        BodySite::Forehead,
        BodySite::TemporalArtery,
        BodySite::Wrist,
        BodySite::Vagina,
    ]);
    let specimen = select(vec![
        Specimen::CapillaryWholeBlood,
        Specimen::CapillaryPlasma,
        Specimen::VenousWholeBlood,
        Specimen::VenousPlasma,
        Specimen::ArterialWholeBlood,
        Specimen::ArterialPlasma,
        Specimen::UndeterminedWholeBlood,
        Specimen::UndeterminedPlasma,
        Specimen::Serum,
        Specimen::InterstitialFluid,
        Specimen::ControlSolution,
    ]);
    let statistic = prop_oneof![
        select(vec![
            "median",
            "average",
            "count",
            "variance",
            "4th quintile"
        ])
        .prop_map(str::to_owned),
        text(),
    ];
    (
        (
            0..pool_len,
            0usize..3,
            proptest::option::weighted(0.08, (any::<bool>(), 0usize..10)),
        ),
        (
            proptest::option::weighted(0.5, text()),
            proptest::option::weighted(0.04, 0..pool_len),
            proptest::option::weighted(0.15, unit()),
            proptest::collection::vec(decimal(), 0..4),
        ),
        (flags, 0u8..4),
        (
            proptest::option::weighted(0.3, statistic),
            proptest::option::weighted(0.3, text()),
            proptest::option::weighted(0.3, site),
            proptest::option::weighted(0.3, specimen),
            proptest::option::weighted(0.3, decimal()),
        ),
        (
            proptest::option::weighted(0.3, patient()),
            proptest::option::weighted(0.3, 0usize..2),
            any::<bool>(),
        ),
    )
        .prop_map(
            |(
                (base, device, relation),
                (identifier, kind, unit, values),
                (flags, timing),
                (statistic, meal, site, specimen, oxygen),
                (patient, clock_read, serial_source),
            )| Edit {
                base,
                device,
                identifier,
                relation,
                kind,
                unit,
                values,
                flags,
                timing,
                statistic,
                meal,
                site,
                specimen,
                oxygen,
                patient,
                clock_read,
                serial_source,
            },
        )
}

/// The batch: each reading its pool reading with its edit applied, its own id and identifier
/// unless it is related to an earlier one.
fn batch(pool: &[Reading], devices: &[DeviceInfo], edits: &[Edit]) -> Vec<Reading> {
    let mut out: Vec<Reading> = Vec::with_capacity(edits.len());
    for (i, e) in edits.iter().enumerate() {
        let mut r = apply(pool, devices, e);
        r.id = test_id(i64::try_from(i).unwrap());
        r.observation_identifier = match &e.identifier {
            Some(text) => format!("{i}-{text}"),
            None => format!("{}-{i}", r.observation_identifier),
        };
        match e.relation {
            Some((true, j)) if i > 0 => r = out[j % i].clone(),
            Some((false, j)) if i > 0 => {
                r.observation_identifier
                    .clone_from(&out[j % i].observation_identifier);
            }
            _ => {}
        }
        out.push(r);
    }
    out
}

fn apply(pool: &[Reading], devices: &[DeviceInfo], e: &Edit) -> Reading {
    let mut r = pool[e.base].clone();
    if let Some(k) = e.kind {
        r.kind = pool[k].kind;
    }
    r.device = devices[e.device % devices.len()].clone();
    for (c, v) in r.components.iter_mut().zip(&e.values) {
        c.value = *v;
    }
    if let Some(unit) = &e.unit {
        for c in &mut r.components {
            c.unit.clone_from(unit);
        }
        for a in &mut r.context.absent {
            a.unit.clone_from(unit);
        }
    }
    if !e.flags.is_empty() {
        r.flags.clone_from(&e.flags);
    }
    let offset = FixedOffset::west_opt(5 * 3600 + 30 * 60).unwrap();
    match e.timing {
        1 => r.timing = Timing::Instant,
        2 => r.timing = Timing::Date,
        3 => {
            r.timing = Timing::Period {
                end: offset.with_ymd_and_hms(2025, 3, 14, 9, 0, 0).unwrap(),
            }
        }
        _ => {}
    }
    if e.statistic.is_some() {
        r.context.statistic.clone_from(&e.statistic);
    }
    if e.meal.is_some() {
        r.context.meal.clone_from(&e.meal);
    }
    if e.site.is_some() {
        r.context.body_site = e.site;
    }
    if e.specimen.is_some() {
        r.context.specimen = e.specimen;
    }
    if e.oxygen.is_some() {
        r.context.supplemental_oxygen_l_min = e.oxygen;
    }
    if let Some(p) = &e.patient {
        r.patient = p.clone();
    }
    if let Some(i) = e.clock_read {
        r.time_quality = TimeQuality::Corrected(CoincidentTimestamp {
            gateway_time: Utc
                .with_ymd_and_hms(2025, 3, 14, 7, 45, 0)
                .unwrap()
                .checked_add_signed(chrono::TimeDelta::minutes(i64::try_from(i).unwrap()))
                .unwrap(),
            device_time: offset.with_ymd_and_hms(2023, 3, 15, 8, 45, 0).unwrap(),
        });
    }
    if e.serial_source {
        r.source = Source::Serial {
            port: "/dev/ttyUSB0".into(),
        };
    }
    r
}

fn gateway() -> impl Strategy<Value = GatewayInfo> {
    (text(), text(), any::<bool>()).prop_map(|(id, sw, put)| {
        GatewayInfo::new(&id, &sw).with_write_mode(if put {
            WriteMode::Put
        } else {
            WriteMode::ConditionalCreate
        })
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn bundles_written_as_bytes_are_the_value_path_s_byte_for_byte(
        gw in gateway(),
        devices in proptest::collection::vec(device(), 1..4),
        edits in proptest::collection::vec(edit(pool().len()), 1..10),
        partly_known in proptest::collection::vec(any::<bool>(), 4),
    ) {
        let pool = pool();
        let batch = batch(&pool, &devices, &edits);
        // The first Bundle: every Device created.
        let first = same_both_ways(&gw, &batch, &KnownDevices::default())?;
        let Some(first) = first else { return Ok(()) };
        // The next ones: the Devices its answer taught referenced as `Device/<id>`, all of them
        // or some (the gateway's included).
        let mut all = KnownDevices::default();
        let mut some = KnownDevices::default();
        for (n, (_, key)) in first.devices.iter().enumerate() {
            let location = format!("Device/{n}/_history/1");
            prop_assert!(all.learn(key, &location));
            if partly_known[n % partly_known.len()] {
                prop_assert!(some.learn(key, &location));
            }
        }
        let later = same_both_ways(&gw, &batch, &all)?;
        prop_assert!(later.is_some());
        same_both_ways(&gw, &batch, &some)?;
    }
}

/// The golden Bundles are the bytes `build_bundle` writes (their files are pretty-printed:
/// compared as the compact JSON of the same value), in both write modes through the oracle.
#[test]
fn golden_bundles_are_the_bytes_written() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/uplink/golden");
    let gw = GatewayInfo::new("gw-golden", "0.1.0");
    for (name, r) in super::super::golden::cases() {
        let built = build_bundle(&gw, std::slice::from_ref(&r), &KnownDevices::default()).unwrap();
        let text = std::fs::read_to_string(dir.join(format!("{name}.json"))).unwrap();
        let golden: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            built.json,
            serde_json::to_vec(&golden).unwrap(),
            "{name}: the bytes differ from the golden Bundle"
        );
        for mode in [WriteMode::ConditionalCreate, WriteMode::Put] {
            let gw = gw.clone().with_write_mode(mode);
            same_both_ways(&gw, std::slice::from_ref(&r), &KnownDevices::default())
                .unwrap_or_else(|e| panic!("{name} {mode:?}: {e}"));
        }
    }
}

/// A 48-reading Bundle of the benches' BP readings, as the uploader sends after the first:
/// the same bytes both ways.
#[test]
fn a_full_bundle_of_bp_readings_is_the_same_both_ways() {
    let mut batch = Vec::new();
    for n in 0..60 {
        let mut r = super::tests::bp();
        r.id = test_id(n);
        r.observation_identifier = format!("obs-{n}");
        r.components[0].value = Decimal::new(1200 + n, -1);
        batch.push(r);
    }
    let gw = GatewayInfo::new("gw", "0");
    batch.truncate(readings_that_fit(&batch));
    let first = same_both_ways(&gw, &batch, &KnownDevices::default())
        .unwrap()
        .unwrap();
    let mut known = KnownDevices::default();
    for (_, key) in &first.devices {
        known.learn(key, "Device/1");
    }
    let later = same_both_ways(&gw, &batch, &known).unwrap().unwrap();
    assert_eq!(later.entry_count, batch.len());
}
