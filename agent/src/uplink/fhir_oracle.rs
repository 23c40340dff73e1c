//! The `serde_json::Value` path that built every Bundle before they were written straight as
//! JSON bytes (`super::build_bundle`), kept as it was as the tests' oracle: the property test in
//! `super::tests` checks that both give the same Bundle, byte for byte, for generated readings.
//! Test builds only.
#![allow(clippy::pedantic)]

use super::*;
use serde_json::{json, Map, Number, Value};

/// What [`build_bundle`] gives: the Bundle as a `Value`.
#[derive(Debug, Clone)]
pub(crate) struct ValueBundle {
    pub bundle: Value,
    pub entries: Vec<EntryRef>,
    pub devices: Vec<(usize, String)>,
}

/// An exact JSON number from a decimal (needs serde_json's `arbitrary_precision`).
pub(crate) fn json_decimal(d: Decimal) -> Value {
    d.to_string()
        .parse::<Number>()
        .map(Value::Number)
        .unwrap_or(Value::Null)
}

/// Rewrites a conditional-create entry ([`entry`]) as `PUT <Type>/<put_id>` with the id in the
/// resource. `fullUrl` stays the entry's `urn:uuid:`: references inside the Bundle keep
/// pointing at it, and the server resolves them to `<Type>/<id>` (FHIR R4 RESTful API, transaction processing rules).
fn as_put(entry: &mut Value) {
    let Some(identity) = entry["request"]["ifNoneExist"]
        .as_str()
        .and_then(|q| q.strip_prefix("identifier="))
        .and_then(|q| q.split_once('|'))
        .map(|(s, v)| put_id(s, v))
    else {
        return;
    };
    let Some(resource_type) = entry["resource"]["resourceType"]
        .as_str()
        .map(str::to_owned)
    else {
        return;
    };
    if let Some(resource) = entry["resource"].as_object_mut() {
        resource.insert("id".into(), Value::String(identity.clone()));
    }
    entry["request"] = json!({"method": "PUT", "url": format!("{resource_type}/{identity}")});
}

/// A JSON object of `members`. Unlike `json!`, which serializes an interpolated `Value` into
/// a new one (a deep copy, then a drop of the original), this moves each value in. Keys are
/// kept sorted either way (serde_json without `preserve_order`), so the JSON is the same.
fn object<const N: usize>(members: [(&str, Value); N]) -> Value {
    Value::Object(
        members
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect(),
    )
}

fn quantity(value: Decimal, ucum: &str) -> Value {
    object([
        ("value", json_decimal(value)),
        ("unit", unit_display(ucum).into()),
        ("system", UCUM.into()),
        ("code", ucum.into()),
    ])
}

fn mdc_coding(code: u32, display: &str) -> Value {
    json!({"system": MDC, "code": code.to_string(), "display": display})
}

/// `(system, value, identifier JSON)` of a device.
fn device_identifier(id: &DeviceIdentifier) -> (String, String, Value) {
    match id {
        DeviceIdentifier::Eui64(v) => {
            let value = dashed(v);
            (
                SYSID_SYSTEM.into(),
                value.clone(),
                json!({"type": {"coding": [{"system": CONTINUA_IDS, "code": "SYSID", "display": "IEEE 11073 System Identifier"}]}, "system": SYSID_SYSTEM, "value": value}),
            )
        }
        DeviceIdentifier::Bluetooth(v) => {
            let value = dashed(v);
            (
                BTMAC_SYSTEM.into(),
                value.clone(),
                json!({"type": {"coding": [{"system": CONTINUA_IDS, "code": "BTMAC", "display": "Bluetooth MAC address"}]}, "system": BTMAC_SYSTEM, "value": value}),
            )
        }
        DeviceIdentifier::Local(v) => (
            LOCAL_DEVICE_SYSTEM.into(),
            v.clone(),
            json!({"system": LOCAL_DEVICE_SYSTEM, "value": v}),
        ),
    }
}

fn entry(full_url: &str, resource: Value, url: &str, system: &str, value: &str) -> Value {
    // Built by hand, not with `json!`: the macro serializes an interpolated `Value` into a new
    // one (a deep copy of the whole resource, then a drop of the original).
    let mut e = Map::new();
    e.insert("fullUrl".into(), Value::String(full_url.to_owned()));
    e.insert("resource".into(), resource);
    e.insert(
        "request".into(),
        json!({
            "method": "POST",
            "url": url,
            "ifNoneExist": format!("identifier={system}|{value}"),
        }),
    );
    Value::Object(e)
}

/// Drops the `fullUrl` of a conditional-create entry nothing in the Bundle references: R4 lets
/// a create go without one (`Bundle.entry.fullUrl`: "SHALL have a value except when invoking a
/// create"), and each is a random-looking `urn:uuid` that gzip cannot shrink: 72 -> 46 bytes
/// on the wire per BP reading in Bundles of 48 (`uplink_drain` bench). An update
/// (`uplink.write_mode = "put"`) keeps it.
fn unreferenced(entry: &mut Value, write_mode: WriteMode) {
    if write_mode == WriteMode::ConditionalCreate {
        if let Some(e) = entry.as_object_mut() {
            e.remove("fullUrl");
        }
    }
}

fn gateway_entry(gw: &GatewayInfo) -> (String, Value) {
    let full_url = urn_uuid(&format!("{GATEWAY_SYSTEM}|{}", gw.id));
    let resource = json!({
        "resourceType": "Device",
        "meta": {"profile": ["http://hl7.org/fhir/uv/phd/StructureDefinition/PhgDevice"]},
        "identifier": [{"system": GATEWAY_SYSTEM, "value": gw.id}],
        "manufacturer": "vitalgate project",
        "modelNumber": "vitalgate",
        "serialNumber": gw.id,
        "type": {"coding": [mdc_coding(531981, "MDC_MOC_VMS_MDS_AHD")]},
        "specialization": [{"systemType": {"coding": [mdc_coding(528457, "MDC_DEV_SPEC_PROFILE_GENERIC")]}, "version": "1"}],
        "version": [{"type": {"coding": [mdc_coding(531975, "MDC_ID_PROD_SPEC_SW")]}, "value": gw.software_version}],
        "property": [{
            "type": {"coding": [mdc_coding(68220, "MDC_TIME_SYNC_PROTOCOL")]},
            "valueCode": [{"coding": [mdc_coding(532226, "MDC_TIME_SYNC_NTPV4")]}]
        }]
    });
    let e = entry(&full_url, resource, "Device", GATEWAY_SYSTEM, &gw.id);
    (full_url, e)
}

fn device_entry(r: &Reading) -> (String, Value) {
    let d = &r.device;
    let (system, value, ident) = device_identifier(&d.identifier);
    let full_url = urn_uuid(&format!("{system}|{value}"));
    let (spec, spec_display) = specialization(d.class);
    let mut res = json!({
        "resourceType": "Device",
        "meta": {"profile": ["http://hl7.org/fhir/uv/phd/StructureDefinition/PhdDevice"]},
        "identifier": [ident],
        "manufacturer": d.manufacturer.clone().unwrap_or_else(|| "unknown".into()),
        "modelNumber": d.model.clone().unwrap_or_else(|| "unknown".into()),
        "deviceName": [{"name": d.name, "type": "user-friendly-name"}],
        "type": {"coding": [mdc_coding(65573, "MDC_MOC_VMS_MDS_SIMP")]},
        "specialization": [{"systemType": {"coding": [mdc_coding(spec, spec_display)]}, "version": "1"}],
    });
    if let (Some(serial), Some(obj)) = (&d.serial, res.as_object_mut()) {
        obj.insert("serialNumber".into(), Value::String(serial.clone()));
    }
    // Every identifier the device told us, beyond the one it is keyed by (fhir-mapping.md §3).
    let mut idents = vec![ident];
    let extra = [
        d.system_id.clone().map(DeviceIdentifier::Eui64),
        d.bluetooth_address.clone().map(DeviceIdentifier::Bluetooth),
    ];
    for id in extra.into_iter().flatten() {
        if id != d.identifier {
            idents.push(device_identifier(&id).2);
        }
    }
    let versions: Vec<Value> = [
        (&d.hardware, 531974, "MDC_ID_PROD_SPEC_HW"),
        (&d.software, 531975, "MDC_ID_PROD_SPEC_SW"),
        (&d.firmware, 531976, "MDC_ID_PROD_SPEC_FW"),
    ]
    .into_iter()
    .filter_map(|(v, code, disp)| {
        v.as_ref()
            .map(|v| json!({"type": {"coding": [mdc_coding(code, disp)]}, "value": v}))
    })
    .collect();
    if let Some(obj) = res.as_object_mut() {
        obj.insert("identifier".into(), Value::Array(idents));
        if !versions.is_empty() {
            obj.insert("version".into(), Value::Array(versions));
        }
    }
    let e = entry(&full_url, res, "Device", &system, &value);
    (full_url, e)
}

fn subject(p: &PatientRef) -> Value {
    match p {
        PatientRef::Literal { id } => json!({"reference": format!("Patient/{id}")}),
        PatientRef::Identifier { system, value } => {
            json!({"reference": format!("Patient?identifier={system}|{value}")})
        }
    }
}

/// `dataAbsentReason` for a value the device sent as an IEEE 11073 special value
/// (fhir-mapping.md §2; R4 code system `data-absent-reason`).
fn data_absent_reason(reason: AbsentReason) -> Value {
    json!({"coding": [{"system": DATA_ABSENT_REASON, "code": reason.code(), "display": reason.display()}]})
}

/// A BP component: the number in mm[Hg], or the special value as `dataAbsentReason`.
enum BpValue<'a> {
    Number(&'a device_drivers::Reading),
    Absent(&'a AbsentValue),
}

fn bp_component(v: BpValue<'_>) -> Result<Option<Value>, MappingError> {
    let kind = match v {
        BpValue::Number(c) => c.kind,
        BpValue::Absent(a) => a.kind,
    };
    let (mdc, disp, loinc, ldisp) = match kind {
        ReadingType::SystolicPressure => (
            150021,
            "MDC_PRESS_BLD_NONINV_SYS",
            "8480-6",
            "Systolic blood pressure",
        ),
        ReadingType::DiastolicPressure => (
            150022,
            "MDC_PRESS_BLD_NONINV_DIA",
            "8462-4",
            "Diastolic blood pressure",
        ),
        ReadingType::MeanArterialPressure => (
            150023,
            "MDC_PRESS_BLD_NONINV_MEAN",
            "8478-0",
            "Mean blood pressure",
        ),
        _ => return Ok(None),
    };
    let code = object([(
        "coding",
        Value::Array(vec![
            mdc_coding(mdc, disp),
            json!({"system": LOINC, "code": loinc, "display": ldisp}),
        ]),
    )]);
    Ok(Some(match v {
        BpValue::Number(c) => object([
            ("code", code),
            (
                "valueQuantity",
                quantity(to_mmhg(c.value, &c.unit)?, "mm[Hg]"),
            ),
        ]),
        BpValue::Absent(a) => object([
            ("code", code),
            ("dataAbsentReason", data_absent_reason(a.reason)),
        ]),
    }))
}

/// `Observation.method` of a statistic the pipeline let through, always with `effectivePeriod`
/// (the serial stream reduction's window median, or an Open mHealth `descriptive_statistic` a
/// device's `upload_statistics` names): states that the value is that statistic over the
/// period, not one measurement, with the R4 StatisticsCode where there is one.
fn statistic_method(r: &Reading) -> Option<Value> {
    let stat = r.context.statistic.as_deref()?;
    let text = match r.source {
        crate::reading::Source::Serial { .. } => format!(
            "{stat} of the values the device reported during effectivePeriod \
             (gateway stream reduction); not a single measurement"
        ),
        _ => format!(
            "{stat} of the measurements during effectivePeriod, as the source reported it \
             (Open mHealth descriptive_statistic); not a single measurement"
        ),
    };
    Some(match statistic_code(stat) {
        Some((code, display)) => json!({
            "coding": [{"system": OBSERVATION_STATISTICS, "code": code, "display": display}],
            "text": text,
        }),
        None => json!({"text": text}),
    })
}

fn effective(r: &Reading, obs: &mut Map<String, Value>) {
    let t =
        |d: &chrono::DateTime<chrono::FixedOffset>| d.to_rfc3339_opts(SecondsFormat::Secs, true);
    match r.timing {
        Timing::Instant => {
            obs.insert("effectiveDateTime".into(), json!(t(&r.effective)));
        }
        Timing::Period { end } => {
            obs.insert(
                "effectivePeriod".into(),
                json!({"start": t(&r.effective), "end": t(&end)}),
            );
        }
        Timing::Date => {
            obs.insert(
                "effectiveDateTime".into(),
                json!(r.effective.format("%Y-%m-%d").to_string()),
            );
        }
    }
}

fn category(vital: bool) -> Value {
    let mut categories = Vec::new();
    if vital {
        categories.push(json!({"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs", "display": "Vital Signs"}]}));
    }
    categories.push(json!({"coding": [{"system": "http://hl7.org/fhir/uv/phd/CodeSystem/PhdObservationCategories", "code": "phd"}]}));
    Value::Array(categories)
}

/// `bodySite` of a temperature: SNOMED CT body structure where one is sourced, always text.
fn body_site(site: BodySite) -> Value {
    // SNOMED CT body structure concepts (http://snomed.info/sct).
    let (sct, text) = match site {
        BodySite::Axilla => (Some(("91470000", "Axillary region structure")), "axilla"),
        BodySite::Ear => (Some(("117590005", "Ear structure")), "ear"),
        BodySite::Finger => (Some(("7569003", "Finger structure")), "finger"),
        BodySite::Mouth => (Some(("123851003", "Mouth region structure")), "mouth"),
        BodySite::Rectum => (Some(("34402009", "Rectum structure")), "rectum"),
        BodySite::Toe => (Some(("29707007", "Toe structure")), "toe"),
        BodySite::Tympanum => (
            Some(("42859004", "Tympanic membrane structure")),
            "tympanum",
        ),
        BodySite::Body => (None, "body (general)"),
        BodySite::GastroIntestinalTract => (None, "gastro-intestinal tract"),
        BodySite::Forehead => (None, "forehead"),
        BodySite::TemporalArtery => (None, "temporal artery"),
        BodySite::Wrist => (None, "wrist"),
        BodySite::Vagina => (None, "vagina"),
    };
    match sct {
        Some((code, display)) => {
            json!({"coding": [{"system": "http://snomed.info/sct", "code": code, "display": display}], "text": text})
        }
        None => json!({"text": text}),
    }
}

fn codeable(c: &Code) -> Value {
    let mut coding = Vec::new();
    if let Some((m, d)) = c.mdc {
        coding.push(mdc_coding(m, d));
    }
    if let Some((l, d)) = c.loinc {
        coding.push(json!({"system": LOINC, "code": l, "display": d}));
    }
    object([("coding", Value::Array(coding)), ("text", c.text.into())])
}

/// The Observation resource of one reading (pure).
pub(crate) fn observation(
    r: &Reading,
    device_ref: &str,
    gateway_ref: &str,
) -> Result<Value, MappingError> {
    let unit = r
        .components
        .first()
        .map(|c| c.unit.as_str())
        .or_else(|| r.context.absent.first().map(|a| a.unit.as_str()))
        .unwrap_or("");
    let c = code(r.kind, &r.context, unit);
    if c.mdc.is_none() && c.loinc.is_none() {
        return Err(MappingError::NoCode(r.kind.as_str()));
    }
    let mut profiles = vec![Value::String(
        if r.kind == ReadingKind::BloodPressure {
            "http://hl7.org/fhir/uv/phd/StructureDefinition/PhdCompoundNumericObservation"
        } else {
            "http://hl7.org/fhir/uv/phd/StructureDefinition/PhdNumericObservation"
        }
        .into(),
    )];
    if let Some(p) = c.vital_profile {
        profiles.push(Value::String(format!(
            "http://hl7.org/fhir/StructureDefinition/{p}"
        )));
    }
    let interp = interpretations(&r.flags);
    // fhir-mapping.md §4: `preliminary` for early estimates (and a measurement still ongoing).
    let preliminary = interp.iter().any(|m| {
        matches!(
            m,
            MeasurementStatus::EarlyIndication | MeasurementStatus::MsmtOngoing
        )
    });

    let mut obs = Map::new();
    obs.insert("resourceType".into(), json!("Observation"));
    obs.insert("meta".into(), object([("profile", Value::Array(profiles))]));
    obs.insert(
        "extension".into(),
        json!([{"url": GATEWAY_EXTENSION, "valueReference": {"reference": gateway_ref}}]),
    );
    obs.insert(
        "identifier".into(),
        json!([{"system": OBS_IDENTIFIER_SYSTEM, "value": r.observation_identifier}]),
    );
    obs.insert(
        "status".into(),
        json!(if preliminary { "preliminary" } else { "final" }),
    );
    obs.insert("category".into(), category(c.vital_profile.is_some()));
    obs.insert("code".into(), codeable(&c));
    obs.insert("subject".into(), subject(&r.patient));
    effective(r, &mut obs);
    if let Some(method) = statistic_method(r) {
        obs.insert("method".into(), method);
    }
    obs.insert("device".into(), json!({"reference": device_ref}));

    if r.kind == ReadingKind::BloodPressure {
        // Systolic, diastolic, mean, in that order; each a number or a dataAbsentReason.
        let mut comps = Vec::new();
        for t in [
            ReadingType::SystolicPressure,
            ReadingType::DiastolicPressure,
            ReadingType::MeanArterialPressure,
        ] {
            let v = match (
                r.component(t),
                r.context.absent.iter().find(|a| a.kind == t),
            ) {
                (Some(c), _) => BpValue::Number(c),
                (None, Some(a)) => BpValue::Absent(a),
                (None, None) if t == ReadingType::MeanArterialPressure => continue,
                (None, None) => return Err(MappingError::MissingComponent("blood pressure")),
            };
            if let Some(v) = bp_component(v)? {
                comps.push(v);
            }
        }
        obs.insert("component".into(), Value::Array(comps));
    } else {
        match (r.components.first(), r.context.absent.first()) {
            (Some(comp), _) => {
                obs.insert("valueQuantity".into(), quantity(comp.value, &comp.unit));
            }
            // The device sent NaN, NRes or +/-INF: no value, the reason instead; never a number.
            (None, Some(a)) => {
                obs.insert("dataAbsentReason".into(), data_absent_reason(a.reason));
            }
            (None, None) => return Err(MappingError::MissingComponent(c.text)),
        }
    }
    if !interp.is_empty() {
        obs.insert(
            "interpretation".into(),
            Value::Array(
                interp
                    .iter()
                    .map(|m| json!({"coding": [{"system": MeasurementStatus::SYSTEM, "code": m.code(), "display": m.display()}]}))
                    .collect(),
            ),
        );
    }
    if let Some(site) = r
        .context
        .body_site
        .filter(|_| r.kind == ReadingKind::BodyTemperature)
    {
        obs.insert("bodySite".into(), body_site(site));
    }
    let mut extra = Vec::new();
    // R4 pulse-oximetry profile: supplemental oxygen as component 3151-8 "Inhaled oxygen flow
    // rate" in L/min (0 = room air).
    if let (ReadingKind::OxygenSaturation, Some(flow)) =
        (r.kind, r.context.supplemental_oxygen_l_min)
    {
        extra.push(object([
            (
                "code",
                json!({"coding": [{"system": LOINC, "code": "3151-8", "display": "Inhaled oxygen flow rate"}], "text": "Supplemental oxygen flow rate"}),
            ),
            ("valueQuantity", quantity(flow, "L/min")),
        ]));
    }
    // Meal context (GATT 0x2A34, Open mHealth temporal_relationship_to_meal): no standard code
    // was sourced for the concept or its values, so it travels as text only (README "Limits").
    if let (ReadingKind::BloodGlucose, Some(meal)) = (r.kind, r.context.meal.as_deref()) {
        extra.push(json!({
            "code": {"text": "Temporal relationship to meal"},
            "valueCodeableConcept": {"text": meal},
        }));
    }
    if !extra.is_empty() {
        obs.insert("component".into(), Value::Array(extra));
    }
    Ok(Value::Object(obs))
}

/// The 8410608 MDC_BLOOD_PRESSURE_MEASUREMENT_STATUS Observation of a BP reading: one
/// `valueBoolean` component per status bit, `derivedFrom` the BP Observation (pure).
pub(crate) fn bp_status_observation(
    r: &Reading,
    bp_ref: &str,
    device_ref: &str,
    gateway_ref: &str,
) -> Value {
    let mut obs = Map::new();
    obs.insert("resourceType".into(), json!("Observation"));
    obs.insert(
        "meta".into(),
        json!({"profile": ["http://hl7.org/fhir/uv/phd/StructureDefinition/PhdBitsEnumerationObservation"]}),
    );
    obs.insert(
        "extension".into(),
        json!([{"url": GATEWAY_EXTENSION, "valueReference": {"reference": gateway_ref}}]),
    );
    obs.insert(
        "identifier".into(),
        json!([{"system": OBS_IDENTIFIER_SYSTEM, "value": bp_status_identifier(&r.observation_identifier)}]),
    );
    obs.insert("status".into(), json!("final"));
    obs.insert("category".into(), category(false));
    obs.insert(
        "code".into(),
        json!({"coding": [mdc_coding(8410608, "MDC_BLOOD_PRESSURE_MEASUREMENT_STATUS")], "text": "Blood pressure measurement status"}),
    );
    obs.insert("subject".into(), subject(&r.patient));
    effective(r, &mut obs);
    obs.insert("device".into(), json!({"reference": device_ref}));
    obs.insert("derivedFrom".into(), json!([{"reference": bp_ref}]));
    let set = bp_bits(&r.flags);
    let comps: Vec<Value> = BP_STATUS_BITS
        .iter()
        .map(|bit| {
            json!({
                "code": {"coding": [{"system": BpStatusBit::SYSTEM, "code": bit.code(), "display": bit.display()}]},
                "valueBoolean": set.contains(bit),
            })
        })
        .collect();
    obs.insert("component".into(), Value::Array(comps));
    Value::Object(obs)
}

/// The PHD Coincident Timestamp Observation of a corrected reading (pure): the PHD's clock
/// (`valueDateTime`) at the gateway's time (`effectiveDateTime`), subject the PHD Device,
/// device the gateway (fhir-mapping.md §4). `None` for a reading without a clock read.
///
/// Code 67975 MDC_ATTR_TIME_ABS "Absolute time": the PHD IG's PhdCoincidentTimeStampObservation
/// profile (HL7/phd `input/fsh/StructureDefinition.PhdCoincidentTimeStampObservation.fsh`,
/// `code.coding[MDCType]` comment: "The code for absolute time is 67975 with reference id
/// MDC_ATTR_TIME_ABS") and its example Observation `coin-1234`; a BLE Current Time clock is an
/// absolute (wall-clock) time.
pub(crate) fn cts_observation(
    gateway_id: &str,
    r: &Reading,
    device_ref: &str,
    gateway_ref: &str,
) -> Option<Value> {
    let cts = r.time_quality.coincident_timestamp()?;
    let identifier = cts_identifier(gateway_id, r)?;
    // The gateway's time shown in the device's offset, as the IG example does, so the two read
    // side by side; the instant is the same.
    let gateway_time = cts
        .gateway_time
        .with_timezone(cts.device_time.offset())
        .to_rfc3339_opts(SecondsFormat::Millis, true);
    Some(json!({
        "resourceType": "Observation",
        "meta": {"profile": ["http://hl7.org/fhir/uv/phd/StructureDefinition/PhdCoincidentTimeStampObservation"]},
        "extension": [{"url": GATEWAY_EXTENSION, "valueReference": {"reference": gateway_ref}}],
        "identifier": [{"system": CTS_SYSTEM, "value": identifier}],
        "status": "final",
        "code": {"coding": [mdc_coding(67975, "MDC_ATTR_TIME_ABS")], "text": "Absolute time"},
        "subject": {"reference": device_ref},
        "effectiveDateTime": gateway_time,
        "valueDateTime": cts.device_time.to_rfc3339_opts(SecondsFormat::Secs, true),
        "device": {"reference": gateway_ref},
    }))
}

/// Adds the CoincidentTimeStampReference extension to an Observation built by this module.
fn reference_cts(obs: &mut Value, cts_ref: &str) {
    if let Some(ext) = obs.get_mut("extension").and_then(Value::as_array_mut) {
        ext.push(json!({"url": CTS_EXTENSION, "valueReference": {"reference": cts_ref}}));
    }
}

/// [`build_transaction_bundle`], referencing the Devices in `known` as `Device/<id>` instead of
/// sending their conditional creates again. `readings` must fit as if no Device were known
/// ([`readings_that_fit`]): what fits never depends on the cache, so a batch stays buildable
/// after the cache is forgotten.
pub(crate) fn build_bundle(
    gateway: &GatewayInfo,
    readings: &[Reading],
    known: &KnownDevices,
) -> Result<ValueBundle, MappingError> {
    if readings.is_empty() {
        return Err(MappingError::Empty);
    }
    if readings_that_fit(readings) < readings.len() {
        return Err(MappingError::TooManyEntries(readings.len()));
    }
    let mut entries = Vec::new();
    let mut devices: Vec<(usize, String)> = Vec::new();
    let gw_key = gateway_key(gateway);
    let gw_url = match known.get(&gw_key) {
        Some(reference) => reference.to_owned(),
        None => {
            let (url, e) = gateway_entry(gateway);
            devices.push((entries.len(), gw_key));
            entries.push(e);
            url
        }
    };
    let mut device_urls: BTreeMap<String, String> = BTreeMap::new();
    let mut obs_index: BTreeMap<&str, usize> = BTreeMap::new();
    let mut cts_urls: std::collections::BTreeSet<String> = std::collections::BTreeSet::new();
    let mut refs: Vec<EntryRef> = Vec::new();
    for r in readings {
        if let Some(&i) = obs_index.get(r.observation_identifier.as_str()) {
            // Same identity already in this Bundle: the same reading twice rides on one entry;
            // a different reading under the same identity is a collision, never merged.
            let er = refs
                .iter_mut()
                .find(|e| e.entry_index == i)
                .ok_or(MappingError::IdentifierCollision)?;
            if !er.reading_ids.contains(&r.id) {
                return Err(MappingError::IdentifierCollision);
            }
            continue;
        }
        let dev_key = format!("{:?}", r.device.identifier);
        let dev_url = match device_urls.get(&dev_key) {
            Some(u) => u.clone(),
            None => {
                let key = device_key(&r.device.identifier);
                let url = match known.get(&key) {
                    Some(reference) => reference.to_owned(),
                    None => {
                        let (url, e) = device_entry(r);
                        devices.push((entries.len(), key));
                        entries.push(e);
                        url
                    }
                };
                device_urls.insert(dev_key, url.clone());
                url
            }
        };
        let mut obs = observation(r, &dev_url, &gw_url)?;
        // A reading the gateway re-timed: its Coincident Timestamp Observation (once per clock
        // read in this Bundle) and the extension that references it.
        let cts_url = match (
            cts_identifier(&gateway.id, r),
            cts_observation(&gateway.id, r, &dev_url, &gw_url),
        ) {
            (Some(cts_id), Some(cts_obs)) => {
                let url = urn_uuid(&format!("{CTS_SYSTEM}|{cts_id}"));
                if cts_urls.insert(url.clone()) {
                    entries.push(entry(&url, cts_obs, "Observation", CTS_SYSTEM, &cts_id));
                }
                reference_cts(&mut obs, &url);
                Some(url)
            }
            _ => None,
        };
        let full_url = urn_uuid(&format!(
            "{OBS_IDENTIFIER_SYSTEM}|{}",
            r.observation_identifier
        ));
        let mut obs_entry = entry(
            &full_url,
            obs,
            "Observation",
            OBS_IDENTIFIER_SYSTEM,
            &r.observation_identifier,
        );
        if !has_bp_status(r) {
            unreferenced(&mut obs_entry, gateway.write_mode);
        }
        entries.push(obs_entry);
        let obs_entry = entries.len() - 1;
        obs_index.insert(r.observation_identifier.as_str(), obs_entry);
        refs.push(EntryRef {
            entry_index: obs_entry,
            reading_ids: vec![r.id],
        });
        if has_bp_status(r) {
            let status_id = bp_status_identifier(&r.observation_identifier);
            let url = urn_uuid(&format!("{OBS_IDENTIFIER_SYSTEM}|{status_id}"));
            let mut status_obs = bp_status_observation(r, &full_url, &dev_url, &gw_url);
            if let Some(cts_url) = &cts_url {
                reference_cts(&mut status_obs, cts_url);
            }
            let mut status_entry = entry(
                &url,
                status_obs,
                "Observation",
                OBS_IDENTIFIER_SYSTEM,
                &status_id,
            );
            unreferenced(&mut status_entry, gateway.write_mode);
            entries.push(status_entry);
        }
    }
    if gateway.write_mode == WriteMode::Put {
        entries.iter_mut().for_each(as_put);
    }
    let mut bundle = Map::new();
    bundle.insert("resourceType".into(), Value::String("Bundle".into()));
    bundle.insert("type".into(), Value::String("transaction".into()));
    bundle.insert("entry".into(), Value::Array(entries));
    let bundle = Value::Object(bundle);
    Ok(ValueBundle {
        bundle,
        entries: refs,
        devices,
    })
}
