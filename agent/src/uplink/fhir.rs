//! FHIR R4 mapping (pure): codes, units, the idempotency identifier and transaction Bundles.
//!
//! Follows fhir-mapping.md (HL7 PHD IG 2.0.0 + R4 vital-signs profiles):
//!
//! - every Observation carries MDC and LOINC codings, the `vital-signs` category when an R4
//!   vital-signs profile applies and always the `phd` category, the gatewayDevice extension, an
//!   identifier (§5.1) fixed at capture, `effectiveDateTime` with an offset, a `device`
//!   reference to its PHD Device, and `valueQuantity` (or components for the BP panel) with the
//!   device's exact decimal (never through `f64`: `36.50` stays `36.50`);
//!   a value the device sent as an IEEE 11073 special value (NaN, NRes, +/-INF) is a
//!   `dataAbsentReason` instead (§2), on the Observation or on the BP component, never a number;
//! - every entry is `POST` with `ifNoneExist = "identifier=<system>|<value>"` built from the
//!   same strings as the resource identifier, so a retried Bundle creates nothing twice;
//! - one Device entry per distinct device, the gateway Device once, at most 50 entries; a
//!   Device the server already confirmed ([`KnownDevices`]) is referenced as `Device/<id>`
//!   instead (§5.4);
//! - references inside the Bundle use `urn:uuid:` fullUrls derived deterministically from the
//!   resource identifier (the same Bundle on retry is byte-identical, and tests are stable); a
//!   conditional create nothing references goes without one (R4 allows it for a create; it
//!   saves a third of the bytes on the wire).
//!
//! Departures, deliberate: gateway-local devices (MQTT hubs, simulators, serial devices without
//! an EUI-64) are identified with `system = "urn:vitalgate:device"` and value
//! `<gateway id>/<device name>`; the gateway with `system = "urn:vitalgate:gateway"`. The PHD IG
//! expects SYSID/BTMAC identifiers, which these sources do not have. A missing manufacturer or
//! model is sent as `"unknown"` (PHD requires both).

use std::collections::BTreeMap;

use chrono::SecondsFormat;
use device_drivers::{
    AbsentReason, AbsentValue, BodySite, BpStatusBit, Decimal, MeasurementContext,
    MeasurementStatus, ReadingType, Specimen, Status, StatusClass,
};
use serde_json::Value;

use super::json_out::JsonOut;

use crate::reading::{DeviceClass, DeviceIdentifier, PatientRef, Reading, ReadingKind, Timing};

pub const MDC: &str = "urn:iso:std:iso:11073:10101";
pub const LOINC: &str = "http://loinc.org";
pub const UCUM: &str = "http://unitsofmeasure.org";
pub const DATA_ABSENT_REASON: &str = "http://terminology.hl7.org/CodeSystem/data-absent-reason";
pub const OBS_IDENTIFIER_SYSTEM: &str =
    "http://hl7.org/fhir/uv/phd/StructureDefinition/PhdBaseObservation";
pub const GATEWAY_EXTENSION: &str =
    "http://hl7.org/fhir/StructureDefinition/observation-gatewayDevice";
pub const SYSID_SYSTEM: &str = "urn:oid:1.2.840.10004.1.1.1.0.0.1.0.0.1.2680";
pub const BTMAC_SYSTEM: &str = "http://hl7.org/fhir/sid/eui-48/bluetooth";
pub const LOCAL_DEVICE_SYSTEM: &str = "urn:vitalgate:device";
pub const GATEWAY_SYSTEM: &str = "urn:vitalgate:gateway";
const CONTINUA_IDS: &str = "http://terminology.hl7.org/CodeSystem/ContinuaDeviceIdentifiers";
/// The extension by which a measurement the gateway re-timed references its Coincident
/// Timestamp Observation (fhir-mapping.md §3).
pub const CTS_EXTENSION: &str =
    "http://hl7.org/fhir/uv/phd/StructureDefinition/CoincidentTimeStampReference";
/// Identifier system of our Coincident Timestamp Observations. fhir-mapping.md §5.2 asks for
/// `https://<our-domain>/fhir/sid/phd-cts`; the project owns no domain and already names its own
/// identifier systems `urn:vitalgate:*` (`urn:vitalgate:device`, `urn:vitalgate:gateway`), so
/// this one is `urn:vitalgate:phd-cts`. (The PHD IG's own examples send CTS Observations without
/// an identifier, always created; we make them conditional creates like everything else, so a
/// resent Bundle creates none twice.)
pub const CTS_SYSTEM: &str = "urn:vitalgate:phd-cts";

/// At most this many entries per Bundle (§5.3).
pub const MAX_ENTRIES: usize = 50;

/// The identity of this gateway, for its Device resource, and how entries are written.
#[derive(Debug, Clone)]
pub struct GatewayInfo {
    pub id: String,
    pub software_version: String,
    pub write_mode: WriteMode,
}

impl GatewayInfo {
    pub fn new(id: &str, software_version: &str) -> Self {
        Self {
            id: id.to_string(),
            software_version: software_version.to_string(),
            write_mode: WriteMode::ConditionalCreate,
        }
    }

    pub fn with_write_mode(mut self, write_mode: WriteMode) -> Self {
        self.write_mode = write_mode;
        self
    }
}

/// How each Bundle entry asks the server to write its resource (`uplink.write_mode`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum WriteMode {
    /// `POST <Type>` with `ifNoneExist = identifier=<system>|<value>` (fhir-mapping.md §5.2):
    /// the server assigns the id; a resent entry finds the resource and creates nothing.
    #[default]
    ConditionalCreate,
    /// `PUT <Type>/<id>` (update as create) with a client-assigned id derived from the same
    /// identifier ([`put_id`]): for servers whose conditional create is unreliable (a search
    /// index that lags the write, so two resends inside the lag create two resources). A resent
    /// entry writes the same resource at the same id: idempotent without any search. Needs a
    /// server that allows update as create (`CapabilityStatement.rest.resource.updateCreate`).
    Put,
}

/// The client-assigned id of a resource in [`WriteMode::Put`]: the lowercase hex SHA-256 of
/// `<system>|<value>` of the identifier its conditional create would use (64 characters, the
/// longest FHIR id: `[A-Za-z0-9\-\.]{1,64}`). Stable for the life of the reading, so a resend
/// addresses the same resource.
pub fn put_id(system: &str, value: &str) -> String {
    hex::encode(ring::digest::digest(
        &ring::digest::SHA256,
        format!("{system}|{value}").as_bytes(),
    ))
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MappingError {
    #[error("reading has no component a {0} observation needs")]
    MissingComponent(&'static str),
    #[error("value {0} cannot be converted exactly")]
    Conversion(String),
    #[error("{0} readings need more than {MAX_ENTRIES} Bundle entries")]
    TooManyEntries(usize),
    #[error("no readings")]
    Empty,
    #[error("{0} has no sourced MDC or LOINC code")]
    NoCode(&'static str),
    /// Two readings with one Observation identifier and different content: the server would
    /// merge them. The store never lets this happen (see `crate::store`, invariant 3b); if it
    /// does, the reading is isolated and dead-lettered, never acked on the other's entry.
    #[error("identifier_collision: two different readings share one Observation identifier")]
    IdentifierCollision,
}

/// Maps an observation entry back to the readings it carries (a duplicate reading dropped from
/// the Bundle rides on the entry of the identical one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryRef {
    pub entry_index: usize,
    pub reading_ids: Vec<crate::identity::ReadingId>,
}

struct Code {
    /// MDC code (IEEE 11073-10101) and its reference id; `None` when no code was sourced.
    mdc: Option<(u32, &'static str)>,
    /// LOINC code and display; `None` when no code was sourced.
    loinc: Option<(&'static str, &'static str)>,
    text: &'static str,
    vital_profile: Option<&'static str>,
}

/// Codes per kind. Sources: fhir-mapping.md §1 (the PHD IG 2.0.0 and R4 vital-signs profiles)
/// unless a line says otherwise.
fn code(kind: ReadingKind, ctx: &MeasurementContext, unit: &str) -> Code {
    let c = |mdc: Option<(u32, &'static str)>, loinc, text, vital_profile| Code {
        mdc,
        loinc,
        text,
        vital_profile,
    };
    match kind {
        ReadingKind::BloodPressure => c(
            Some((150020, "MDC_PRESS_BLD_NONINV")),
            Some(("85354-9", "Blood pressure panel with all children optional")),
            "Blood pressure",
            Some("bp"),
        ),
        ReadingKind::PulseRateCuff => c(
            Some((149546, "MDC_PULS_RATE_NON_INV")),
            Some(("8867-4", "Heart rate")),
            "Pulse rate",
            Some("heartrate"),
        ),
        // An oximeter's pulse is a pulse rate, never an ECG heart rate.
        ReadingKind::PulseRateOximeter => c(
            Some((149530, "MDC_PULS_OXIM_PULS_RATE")),
            Some(("8867-4", "Heart rate")),
            "Pulse rate",
            Some("heartrate"),
        ),
        ReadingKind::HeartRate => c(
            Some((147842, "MDC_ECG_HEART_RATE")),
            Some(("8867-4", "Heart rate")),
            "Heart rate",
            Some("heartrate"),
        ),
        ReadingKind::OxygenSaturation => c(
            Some((150456, "MDC_PULS_OXIM_SAT_O2")),
            Some(("2708-6", "Oxygen saturation in Arterial blood")),
            "Oxygen saturation",
            Some("oxygensat"),
        ),
        ReadingKind::BodyWeight => c(
            Some((188736, "MDC_MASS_BODY_ACTUAL")),
            Some(("29463-7", "Body weight")),
            "Body weight",
            Some("bodyweight"),
        ),
        ReadingKind::BodyHeight => c(
            Some((188740, "MDC_LEN_BODY_ACTUAL")),
            Some(("8302-2", "Body height")),
            "Body height",
            Some("bodyheight"),
        ),
        ReadingKind::Bmi => c(
            Some((188752, "MDC_RATIO_MASS_BODY_LEN_SQ")),
            Some(("39156-5", "Body mass index (BMI) [Ratio]")),
            "Body mass index",
            Some("bmi"),
        ),
        // The site's MDC code replaces MDC_TEMP_BODY (fhir-mapping.md §1, "Temperature site");
        // LOINC stays 8310-5. Sites without an MDC code there keep 150364.
        ReadingKind::BodyTemperature => c(
            Some(match ctx.body_site {
                Some(BodySite::Axilla) => (188452, "MDC_TEMP_AXILLA"),
                Some(BodySite::Ear) => (188428, "MDC_TEMP_EAR"),
                Some(BodySite::Finger) => (188432, "MDC_TEMP_FINGER"),
                Some(BodySite::GastroIntestinalTract) => (188456, "MDC_TEMP_GIT"),
                Some(BodySite::Mouth) => (188424, "MDC_TEMP_ORAL"),
                Some(BodySite::Rectum) => (188420, "MDC_TEMP_RECT"),
                Some(BodySite::Toe) => (188448, "MDC_TEMP_TOE"),
                Some(BodySite::Tympanum) => (150392, "MDC_TEMP_TYMP"),
                _ => (150364, "MDC_TEMP_BODY"),
            }),
            Some(("8310-5", "Body temperature")),
            "Body temperature",
            Some("bodytemp"),
        ),
        ReadingKind::BloodGlucose => glucose_code(ctx.specimen, unit == "mmol/L"),
        // LOINC 9279-1: the R4 `resprate` profile's code. MDC_RESP_RATE 151562: ISO/IEEE
        // 11073-10101 (as in the HL7 PoCD IG examples); not re-checked against the standard here.
        ReadingKind::RespiratoryRate => c(
            Some((151562, "MDC_RESP_RATE")),
            Some(("9279-1", "Respiratory rate")),
            "Respiratory rate",
            Some("resprate"),
        ),
        // MDC_PULS_OXIM_PERF_REL 150448: ISO/IEEE 11073-10404 (pulse oximeter specialization).
        // No LOINC code sourced. Not a vital sign (no R4 profile).
        ReadingKind::PerfusionIndex => c(
            Some((150448, "MDC_PULS_OXIM_PERF_REL")),
            None,
            "Perfusion index",
            None,
        ),
        // MDC_BODY_FAT 188748: ISO/IEEE 11073-10420 (body composition analyzer); LOINC 41982-0
        // "Percentage of body fat Measured". Not a vital sign (no R4 profile).
        ReadingKind::BodyFatPercentage => c(
            Some((188748, "MDC_BODY_FAT")),
            Some(("41982-0", "Percentage of body fat Measured")),
            "Body fat",
            None,
        ),
    }
}

/// Glucose by its real specimen (fhir-mapping.md §1, "Other glucose"): MDC per specimen;
/// capillary → 41653-7 / 14743-9, other whole blood → 2339-0 / 15074-8, plasma and serum →
/// 2345-7 / 14749-6 (mass / molar). No MDC code is sourced for undetermined whole blood or
/// serum, no LOINC for interstitial fluid: those codings are left out, never guessed.
fn glucose_code(specimen: Option<Specimen>, molar: bool) -> Code {
    use Specimen::*;
    let specimen = specimen.unwrap_or(UndeterminedWholeBlood);
    let mdc = match specimen {
        CapillaryWholeBlood => Some((160184, "MDC_CONC_GLU_CAPILLARY_WHOLEBLOOD")),
        CapillaryPlasma => Some((160188, "MDC_CONC_GLU_CAPILLARY_PLASMA")),
        VenousWholeBlood => Some((160192, "MDC_CONC_GLU_VENOUS_WHOLEBLOOD")),
        VenousPlasma => Some((160196, "MDC_CONC_GLU_VENOUS_PLASMA")),
        ArterialWholeBlood => Some((160200, "MDC_CONC_GLU_ARTERIAL_WHOLEBLOOD")),
        ArterialPlasma => Some((160204, "MDC_CONC_GLU_ARTERIAL_PLASMA")),
        InterstitialFluid => Some((160212, "MDC_CONC_GLU_ISF")),
        UndeterminedPlasma => Some((160368, "MDC_CONC_GLU_UNDETERMINED_PLASMA")),
        UndeterminedWholeBlood | Serum | ControlSolution => None,
    };
    let loinc = match (specimen, molar) {
        (CapillaryWholeBlood | CapillaryPlasma, false) => Some((
            "41653-7",
            "Glucose [Mass/volume] in Capillary blood by Glucometer",
        )),
        (CapillaryWholeBlood | CapillaryPlasma, true) => Some((
            "14743-9",
            "Glucose [Moles/volume] in Capillary blood by Glucometer",
        )),
        (VenousWholeBlood | ArterialWholeBlood | UndeterminedWholeBlood, false) => {
            Some(("2339-0", "Glucose [Mass/volume] in Blood"))
        }
        (VenousWholeBlood | ArterialWholeBlood | UndeterminedWholeBlood, true) => {
            Some(("15074-8", "Glucose [Moles/volume] in Blood"))
        }
        (VenousPlasma | ArterialPlasma | UndeterminedPlasma | Serum, false) => {
            Some(("2345-7", "Glucose [Mass/volume] in Serum or Plasma"))
        }
        (VenousPlasma | ArterialPlasma | UndeterminedPlasma | Serum, true) => {
            Some(("14749-6", "Glucose [Moles/volume] in Serum or Plasma"))
        }
        (InterstitialFluid | ControlSolution, _) => None,
    };
    Code {
        mdc,
        loinc,
        text: "Glucose",
        vital_profile: None,
    }
}

/// The `<type>` of the identifier (§5.1): the observation's MDC code (the specimen's or the
/// site's code when there is one), `0` for the two glucose specimens without a sourced MDC code
/// (the identifier stays unique: a data point has one glucose value).
pub fn mdc_code(kind: ReadingKind, ctx: &MeasurementContext) -> u32 {
    code(kind, ctx, "").mdc.map_or(0, |(c, _)| c)
}

/// The display text of a UCUM code (fhir-mapping.md §2).
pub fn unit_display(ucum: &str) -> &str {
    match ucum {
        "mm[Hg]" => "mmHg",
        "[lb_av]" => "lb",
        "[oz_av]" => "oz",
        "[in_i]" => "in",
        "Cel" => "°C",
        "[degF]" => "°F",
        "/min" => "beats/minute",
        "L/min" => "L/min",
        other => other,
    }
}

/// kPa → mm[Hg] (×7.50062, rounded to 0.1): R4's `bp` profile accepts only mm[Hg].
fn to_mmhg(value: Decimal, unit: &str) -> Result<Decimal, MappingError> {
    match unit {
        "mm[Hg]" => Ok(value),
        "kPa" => value
            .checked_mul(Decimal::new(750_062, -5))
            .map(|v| v.round_to(1))
            .ok_or_else(|| MappingError::Conversion(value.to_string())),
        _ => Err(MappingError::Conversion(format!("{value} {unit}"))),
    }
}

/// A deterministic `urn:uuid:` for a resource identifier (RFC 4122 layout, version 4 bits set,
/// content from SHA-256 so it is stable across retries).
pub fn urn_uuid(seed: &str) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, seed.as_bytes());
    let mut b = [0u8; 16];
    b.copy_from_slice(&d.as_ref()[..16]);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!(
        "urn:uuid:{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

fn dashed(hex: &str) -> String {
    hex.as_bytes()
        .chunks(2)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect::<Vec<_>>()
        .join("-")
}

fn specialization(class: DeviceClass) -> (u32, &'static str) {
    match class {
        DeviceClass::BloodPressureCuff => (528391, "MDC_DEV_SPEC_PROFILE_BP"),
        DeviceClass::Scale => (528399, "MDC_DEV_SPEC_PROFILE_SCALE"),
        DeviceClass::Thermometer => (528392, "MDC_DEV_SPEC_PROFILE_TEMP"),
        DeviceClass::PulseOximeter => (528388, "MDC_DEV_SPEC_PROFILE_PULS_OXIM"),
        DeviceClass::GlucoseMeter => (528401, "MDC_DEV_SPEC_PROFILE_GLUCOSE"),
        DeviceClass::HeartRateSensor | DeviceClass::Generic => {
            (528457, "MDC_DEV_SPEC_PROFILE_GENERIC")
        }
    }
}

/// The `interpretation` codes of a reading: every status of class
/// [`StatusClass::Interpretation`] (the class and the PoCD code are decided in
/// `device_drivers::status`), each once.
fn interpretations(flags: &[Status]) -> Vec<MeasurementStatus> {
    let mut out = Vec::new();
    for f in flags {
        if let StatusClass::Interpretation(m) = f.class() {
            if !out.contains(&m) {
                out.push(m);
            }
        }
    }
    out
}

/// Every BP measurement-status bit, in component order (8410608.0 to .5).
const BP_STATUS_BITS: [BpStatusBit; 6] = [
    BpStatusBit::BodyMovement,
    BpStatusBit::CuffTooLoose,
    BpStatusBit::IrregularPulse,
    BpStatusBit::PulseOverRangeLimit,
    BpStatusBit::PulseUnderRangeLimit,
    BpStatusBit::ImproperBodyPosition,
];

fn bp_bits(flags: &[Status]) -> Vec<BpStatusBit> {
    flags
        .iter()
        .filter_map(|f| match f.class() {
            StatusClass::BpMeasurementStatus(b) => Some(b),
            _ => None,
        })
        .collect()
}

/// Does a BP reading carry measurement status bits (and so a 8410608 Observation)?
pub fn has_bp_status(r: &Reading) -> bool {
    r.kind == ReadingKind::BloodPressure && !bp_bits(&r.flags).is_empty()
}

/// The identifier of a BP reading's status Observation: the BP identifier with the status
/// code as §5.1's supplemental-code suffix, fixed by the BP identifier (never recomputed from
/// anything else).
pub fn bp_status_identifier(bp_identifier: &str) -> String {
    format!("{bp_identifier}-8410608")
}

/// R4's StatisticsCode code system (FHIR 4.0.1 `CodeSystem/observation-statistics`, the
/// `statistic` codes of the Observation `$stats` operation).
pub const OBSERVATION_STATISTICS: &str =
    "http://terminology.hl7.org/CodeSystem/observation-statistics";

/// The R4 StatisticsCode (code, display) of an Open mHealth `descriptive_statistic` (schema
/// `omh:descriptive-statistic:1.x` enum) whose value is in the unit of the measurement itself,
/// so it can be uploaded as that measurement's value over `effectivePeriod`. `None` for the
/// others: `count` (a number of measurements, not a value in the measurement's unit),
/// `variance` (the unit squared), and anything unknown. Codes from FHIR 4.0.1
/// `CodeSystem/observation-statistics` (average, maximum, minimum, median, std-dev, sum,
/// 20-percent, 80-percent, 4-lower, 4-upper, 4-dev, 5-1 .. 5-4).
pub fn statistic_code(omh_name: &str) -> Option<(&'static str, &'static str)> {
    Some(match omh_name {
        "average" => ("average", "Average"),
        "maximum" => ("maximum", "Maximum"),
        "minimum" => ("minimum", "Minimum"),
        "median" => ("median", "Median"),
        "standard deviation" => ("std-dev", "Standard Deviation"),
        "sum" => ("sum", "Sum"),
        "20th percentile" => ("20-percent", "20th Percentile"),
        "80th percentile" => ("80-percent", "80th Percentile"),
        "lower quartile" => ("4-lower", "Lower Quartile"),
        "upper quartile" => ("4-upper", "Upper Quartile"),
        "quartile deviation" => ("4-dev", "Quartile Deviation"),
        "1st quintile" => ("5-1", "1st Quintile"),
        "2nd quintile" => ("5-2", "2nd Quintile"),
        "3rd quintile" => ("5-3", "3rd Quintile"),
        "4th quintile" => ("5-4", "4th Quintile"),
        _ => return None,
    })
}

/// The identifier value of the Coincident Timestamp Observation a corrected reading references
/// (fhir-mapping.md §5.2): `<gateway>-<PHD>-<gateway time of the clock read, ms since the Unix
/// epoch>`. `<gateway>` is the configured gateway id (the gateway Device's identifier: we have
/// no EUI-64 for the gateway); `<PHD>` is the §5.1 device part (EUI-64, else Bluetooth address).
/// One per connection: every reading corrected against one clock read shares it. `None` for a
/// reading that was not corrected (or was stored before format 4 and does not carry its clock
/// read).
pub fn cts_identifier(gateway_id: &str, r: &Reading) -> Option<String> {
    let cts = r.time_quality.coincident_timestamp()?;
    Some(format!(
        "{gateway_id}-{}-{}",
        r.device.identifier.id_component(),
        cts.gateway_time.timestamp_millis()
    ))
}

/// Devices the server already holds: `<system>|<value>` of a Device's identifier → its literal
/// reference `Device/<id>` (fhir-mapping.md §5.4: "cache `response.location` of Devices and
/// reference `Device/<id>` afterwards").
///
/// Learnt only from a committed Bundle (every entry 200/201) whose Device entry came back with a
/// usable `response.location`; forgotten as a whole after any exchange that was not a commit
/// (the server may have lost or merged a Device: the next Bundle sends the conditional creates
/// again, which costs bytes, never a reading). In memory only: a restart re-learns from its first
/// Bundle. Bounded by [`MAX_KNOWN_DEVICES`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KnownDevices {
    refs: BTreeMap<String, String>,
}

/// Most Devices remembered; one more and the cache starts again (a gateway has a few dozen).
pub const MAX_KNOWN_DEVICES: usize = 4096;

impl KnownDevices {
    /// `Device/<id>` of the Device keyed `key` (see [`device_key`], [`gateway_key`]), if known.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.refs.get(key).map(String::as_str)
    }

    pub fn len(&self) -> usize {
        self.refs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.refs.is_empty()
    }

    pub fn forget_all(&mut self) {
        self.refs.clear();
    }

    /// Remembers the Device keyed `key` at `location` (a `response.location`); false, and
    /// nothing remembered, when the location names no Device id.
    pub fn learn(&mut self, key: &str, location: &str) -> bool {
        let Some(reference) = device_reference(location) else {
            return false;
        };
        if self.refs.len() >= MAX_KNOWN_DEVICES && !self.refs.contains_key(key) {
            self.refs.clear();
        }
        self.refs.insert(key.to_owned(), reference);
        true
    }

    /// Learns every Device entry's location from a committed `transaction-response` (`body`);
    /// `devices` are the Device entries of the Bundle sent ([`BuiltBundle::devices`]). Returns
    /// how many were learnt. Anything unexpected (not JSON, no location) teaches nothing.
    pub fn learn_from_response(&mut self, body: &[u8], devices: &[(usize, String)]) -> usize {
        if devices.is_empty() || body.len() > super::outcome::MAX_BODY {
            return 0;
        }
        let Ok(v) = serde_json::from_slice::<Value>(body) else {
            return 0;
        };
        let Some(entries) = v.get("entry").and_then(Value::as_array) else {
            return 0;
        };
        let mut learnt = 0;
        for (index, key) in devices {
            let location = entries
                .get(*index)
                .and_then(|e| e.pointer("/response/location"))
                .and_then(Value::as_str);
            if location.is_some_and(|l| self.learn(key, l)) {
                learnt += 1;
            }
        }
        learnt
    }
}

/// `Device/<id>` from a `response.location` (`Device/7/_history/1`, or an absolute URL ending
/// so); `None` when it names no Device with a valid FHIR id (`[A-Za-z0-9\-\.]{1,64}`).
pub fn device_reference(location: &str) -> Option<String> {
    let path = location.split(['?', '#']).next().unwrap_or("");
    let segments: Vec<&str> = path.split('/').collect();
    let at = segments
        .windows(2)
        .rposition(|w| w[0] == "Device" && valid_id(w[1]))?;
    Some(format!("Device/{}", segments[at + 1]))
}

fn valid_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

/// The [`KnownDevices`] key of a PHD (or local) device.
pub fn device_key(id: &DeviceIdentifier) -> String {
    let (system, value) = device_identity(id);
    format!("{system}|{value}")
}

/// The [`KnownDevices`] key of the gateway's own Device.
pub fn gateway_key(gw: &GatewayInfo) -> String {
    format!("{GATEWAY_SYSTEM}|{}", gw.id)
}

/// A transaction Bundle and what the uploader needs to read its answer.
#[derive(Debug, Clone)]
pub struct BuiltBundle {
    /// The Bundle as JSON: the request body, before compression.
    pub json: Vec<u8>,
    /// How many entries it has.
    pub entry_count: usize,
    /// Per Observation entry, the reading ids it carries.
    pub entries: Vec<EntryRef>,
    /// Per Device entry (the gateway's included): its position and [`KnownDevices`] key.
    pub devices: Vec<(usize, String)>,
}

impl BuiltBundle {
    /// The Bundle as a JSON value (for observers and tests; the uplink sends [`Self::json`]).
    pub fn value(&self) -> Value {
        serde_json::from_slice(&self.json).unwrap_or(Value::Null)
    }
}

/// How many of `readings` (taken in order) fit in one Bundle of at most [`MAX_ENTRIES`].
pub fn readings_that_fit(readings: &[Reading]) -> usize {
    // Borrowed keys: the uploader asks this twice per Bundle (to cut its batch, then in
    // `build_bundle`); it cloned two strings per reading each time.
    let mut devices: std::collections::HashSet<&DeviceIdentifier> =
        std::collections::HashSet::new();
    let mut identifiers: std::collections::HashSet<&str> = std::collections::HashSet::new();
    let mut clock_reads = std::collections::HashSet::new();
    let mut entries = 1; // the gateway
    for (i, r) in readings.iter().enumerate() {
        let new_device = !devices.contains(&r.device.identifier);
        let new_obs = !identifiers.contains(r.observation_identifier.as_str());
        // One Coincident Timestamp Observation per device and clock read (the gateway id is
        // the same for the whole Bundle).
        let cts = r
            .time_quality
            .coincident_timestamp()
            .filter(|_| new_obs)
            .map(|c| (&r.device.identifier, c.gateway_time));
        let new_cts = cts.as_ref().is_some_and(|c| !clock_reads.contains(c));
        let need = usize::from(new_device)
            + usize::from(new_obs) * (1 + usize::from(has_bp_status(r)))
            + usize::from(new_cts);
        if entries + need > MAX_ENTRIES {
            return i;
        }
        entries += need;
        devices.insert(&r.device.identifier);
        identifiers.insert(&r.observation_identifier);
        clock_reads.extend(cts);
    }
    readings.len()
}

/// The position of the first reading whose Observation identifier an earlier, different reading
/// of `readings` already holds: the later of two colliding readings (fhir-mapping.md §5.1), the
/// one [`build_transaction_bundle`] refuses with [`MappingError::IdentifierCollision`].
///
/// Bisecting cannot isolate a collision (each half maps fine on its own, and the second reading
/// would then be acked as "already there" under the first one's identifier), so the uploader
/// dead-letters exactly this reading.
pub fn first_identifier_collision(readings: &[Reading]) -> Option<usize> {
    let mut holders: BTreeMap<&str, &crate::identity::ReadingId> = BTreeMap::new();
    for (i, r) in readings.iter().enumerate() {
        match holders.get(r.observation_identifier.as_str()) {
            Some(id) if **id != r.id => return Some(i),
            Some(_) => {}
            None => {
                holders.insert(&r.observation_identifier, &r.id);
            }
        }
    }
    None
}

/// Builds one transaction Bundle for `readings` (all of them must fit: see
/// [`readings_that_fit`]). Returns the Bundle and, per Observation entry, the reading ids it
/// carries.
pub fn build_transaction_bundle(
    gateway: &GatewayInfo,
    readings: &[Reading],
) -> Result<(Value, Vec<EntryRef>), MappingError> {
    build_bundle(gateway, readings, &KnownDevices::default()).map(|b| (b.value(), b.entries))
}

// ---- The Bundle, written as JSON ----
//
// Every resource is written straight into the request body ([`JsonOut`]), with no
// `serde_json::Value` tree in between. The bytes are the ones the `Value` path gave (kept in
// test builds as `oracle`, the property test's reference): the members of each object are
// written in the order serde_json's sorted maps gave them, byte order of the key. Keep it so
// when adding a member (the property test fails otherwise).

/// `{"code":"<code>","display":<display>,"system":<MDC>}`.
fn write_mdc_coding(w: &mut JsonOut, code: u32, display: &str) {
    w.begin_object();
    w.field_fmt("code", format_args!("{code}"));
    w.field("display", display);
    w.field("system", MDC);
    w.end_object();
}

/// `{"code":..,"display":..,"system":..}`.
fn write_coding(w: &mut JsonOut, system: &str, code: &str, display: &str) {
    w.begin_object();
    w.field("code", code);
    w.field("display", display);
    w.field("system", system);
    w.end_object();
}

/// `{"coding":[<one coding>]}`.
fn write_concept(w: &mut JsonOut, system: &str, code: &str, display: &str) {
    w.begin_object();
    w.key("coding");
    w.begin_array();
    write_coding(w, system, code, display);
    w.end_array();
    w.end_object();
}

/// `{"coding":[<MDC coding>]}`.
fn write_mdc_concept(w: &mut JsonOut, code: u32, display: &str) {
    w.begin_object();
    w.key("coding");
    w.begin_array();
    write_mdc_coding(w, code, display);
    w.end_array();
    w.end_object();
}

/// `{"reference":<reference>}`.
fn write_reference(w: &mut JsonOut, reference: &str) {
    w.begin_object();
    w.field("reference", reference);
    w.end_object();
}

/// `{"profile":[<profile>...]}`.
fn write_meta(w: &mut JsonOut, profiles: &[&str]) {
    w.begin_object();
    w.key("profile");
    w.begin_array();
    for p in profiles {
        w.string(p);
    }
    w.end_array();
    w.end_object();
}

/// `[{"system":..,"value":..}]`.
fn write_identifiers(w: &mut JsonOut, system: &str, value: &str) {
    w.begin_array();
    w.begin_object();
    w.field("system", system);
    w.field("value", value);
    w.end_object();
    w.end_array();
}

/// An exact JSON number from a decimal (serde_json's `arbitrary_precision` keeps its text:
/// `36.50` stays `36.50`); `null` if its text is not a JSON number, as the `Value` path gave.
fn write_decimal(w: &mut JsonOut, d: Decimal) {
    match d.to_string().parse::<serde_json::Number>() {
        Ok(n) => w.number_text(&n.to_string()),
        Err(_) => w.null(),
    }
}

fn write_quantity(w: &mut JsonOut, value: Decimal, ucum: &str) {
    w.begin_object();
    w.field("code", ucum);
    w.field("system", UCUM);
    w.field("unit", unit_display(ucum));
    w.key("value");
    write_decimal(w, value);
    w.end_object();
}

/// `(system, value)` of a device's identifier.
fn device_identity(id: &DeviceIdentifier) -> (&'static str, String) {
    match id {
        DeviceIdentifier::Eui64(v) => (SYSID_SYSTEM, dashed(v)),
        DeviceIdentifier::Bluetooth(v) => (BTMAC_SYSTEM, dashed(v)),
        DeviceIdentifier::Local(v) => (LOCAL_DEVICE_SYSTEM, v.clone()),
    }
}

/// A device's `Identifier`.
fn write_device_identifier(w: &mut JsonOut, id: &DeviceIdentifier) {
    let (system, value) = device_identity(id);
    let typed = match id {
        DeviceIdentifier::Eui64(_) => Some(("SYSID", "IEEE 11073 System Identifier")),
        DeviceIdentifier::Bluetooth(_) => Some(("BTMAC", "Bluetooth MAC address")),
        DeviceIdentifier::Local(_) => None,
    };
    w.begin_object();
    w.field("system", system);
    if let Some((code, display)) = typed {
        w.key("type");
        write_concept(w, CONTINUA_IDS, code, display);
    }
    w.field("value", &value);
    w.end_object();
}

/// Writes the start of a Bundle entry, up to the `resource` key: its `fullUrl` (with `full_url`;
/// see [`entry_url`]) and its request. Returns the resource's client-assigned id in
/// [`WriteMode::Put`] (the resource then carries it); the caller writes the resource, then
/// [`JsonOut::end_object`].
///
/// Conditional create: `POST <Type>` with `ifNoneExist = identifier=<system>|<value>`. Put:
/// `PUT <Type>/<put_id>` (fhir-mapping.md §5.2, `uplink.write_mode`).
fn begin_entry(
    w: &mut JsonOut,
    mode: WriteMode,
    full_url: Option<&str>,
    resource_type: &str,
    system: &str,
    value: &str,
) -> Option<String> {
    w.begin_object();
    if let Some(url) = full_url {
        w.field("fullUrl", url);
    }
    w.key("request");
    w.begin_object();
    let id = match mode {
        WriteMode::ConditionalCreate => {
            w.field_fmt("ifNoneExist", format_args!("identifier={system}|{value}"));
            w.field("method", "POST");
            w.field("url", resource_type);
            None
        }
        WriteMode::Put => {
            let id = put_id(system, value);
            w.field("method", "PUT");
            w.field_fmt("url", format_args!("{resource_type}/{id}"));
            Some(id)
        }
    };
    w.end_object();
    w.key("resource");
    id
}

/// The `fullUrl` an entry carries: always when something in the Bundle references it, and for
/// every entry of an update (`uplink.write_mode = "put"`). A conditional create nothing
/// references goes without one: R4 lets a create go without (`Bundle.entry.fullUrl`: "SHALL
/// have a value except when invoking a create"), and each is a random-looking `urn:uuid` that
/// gzip cannot shrink: 72 -> 46 bytes on the wire per BP reading in Bundles of 48
/// (`uplink_drain` bench).
fn entry_url(referenced: bool, mode: WriteMode, seed: impl FnOnce() -> String) -> Option<String> {
    (referenced || mode == WriteMode::Put).then(|| urn_uuid(&seed()))
}

fn write_id(w: &mut JsonOut, id: Option<&str>) {
    if let Some(id) = id {
        w.field("id", id);
    }
}

fn write_gateway_entry(w: &mut JsonOut, gw: &GatewayInfo, full_url: &str) {
    let id = begin_entry(
        w,
        gw.write_mode,
        Some(full_url),
        "Device",
        GATEWAY_SYSTEM,
        &gw.id,
    );
    w.begin_object();
    write_id(w, id.as_deref());
    w.key("identifier");
    write_identifiers(w, GATEWAY_SYSTEM, &gw.id);
    w.field("manufacturer", "vitalgate project");
    w.key("meta");
    write_meta(
        w,
        &["http://hl7.org/fhir/uv/phd/StructureDefinition/PhgDevice"],
    );
    w.field("modelNumber", "vitalgate");
    w.key("property");
    w.begin_array();
    w.begin_object();
    w.key("type");
    write_mdc_concept(w, 68220, "MDC_TIME_SYNC_PROTOCOL");
    w.key("valueCode");
    w.begin_array();
    write_mdc_concept(w, 532226, "MDC_TIME_SYNC_NTPV4");
    w.end_array();
    w.end_object();
    w.end_array();
    w.field("resourceType", "Device");
    w.field("serialNumber", &gw.id);
    w.key("specialization");
    write_specialization(w, 528457, "MDC_DEV_SPEC_PROFILE_GENERIC");
    w.key("type");
    write_mdc_concept(w, 531981, "MDC_MOC_VMS_MDS_AHD");
    w.key("version");
    w.begin_array();
    write_version(w, 531975, "MDC_ID_PROD_SPEC_SW", &gw.software_version);
    w.end_array();
    w.end_object();
    w.end_object();
}

/// `[{"systemType":{"coding":[<MDC>]},"version":"1"}]`.
fn write_specialization(w: &mut JsonOut, code: u32, display: &str) {
    w.begin_array();
    w.begin_object();
    w.key("systemType");
    write_mdc_concept(w, code, display);
    w.field("version", "1");
    w.end_object();
    w.end_array();
}

/// `{"type":{"coding":[<MDC>]},"value":<value>}`.
fn write_version(w: &mut JsonOut, code: u32, display: &str, value: &str) {
    w.begin_object();
    w.key("type");
    write_mdc_concept(w, code, display);
    w.field("value", value);
    w.end_object();
}

fn write_device_entry(w: &mut JsonOut, r: &Reading, mode: WriteMode, full_url: &str) {
    let d = &r.device;
    let (system, value) = device_identity(&d.identifier);
    let id = begin_entry(w, mode, Some(full_url), "Device", system, &value);
    let (spec, spec_display) = specialization(d.class);
    w.begin_object();
    w.key("deviceName");
    w.begin_array();
    w.begin_object();
    w.field("name", &d.name);
    w.field("type", "user-friendly-name");
    w.end_object();
    w.end_array();
    write_id(w, id.as_deref());
    // The identifier the device is keyed by, then every other one it told us
    // (fhir-mapping.md §3).
    w.key("identifier");
    w.begin_array();
    write_device_identifier(w, &d.identifier);
    if let Some(v) = &d.system_id {
        let extra = DeviceIdentifier::Eui64(v.clone());
        if extra != d.identifier {
            write_device_identifier(w, &extra);
        }
    }
    if let Some(v) = &d.bluetooth_address {
        let extra = DeviceIdentifier::Bluetooth(v.clone());
        if extra != d.identifier {
            write_device_identifier(w, &extra);
        }
    }
    w.end_array();
    w.field(
        "manufacturer",
        d.manufacturer.as_deref().unwrap_or("unknown"),
    );
    w.key("meta");
    write_meta(
        w,
        &["http://hl7.org/fhir/uv/phd/StructureDefinition/PhdDevice"],
    );
    w.field("modelNumber", d.model.as_deref().unwrap_or("unknown"));
    w.field("resourceType", "Device");
    if let Some(serial) = &d.serial {
        w.field("serialNumber", serial);
    }
    w.key("specialization");
    write_specialization(w, spec, spec_display);
    w.key("type");
    write_mdc_concept(w, 65573, "MDC_MOC_VMS_MDS_SIMP");
    let versions = [
        (&d.hardware, 531974, "MDC_ID_PROD_SPEC_HW"),
        (&d.software, 531975, "MDC_ID_PROD_SPEC_SW"),
        (&d.firmware, 531976, "MDC_ID_PROD_SPEC_FW"),
    ];
    if versions.iter().any(|(v, _, _)| v.is_some()) {
        w.key("version");
        w.begin_array();
        for (v, code, display) in versions {
            if let Some(v) = v {
                write_version(w, code, display, v);
            }
        }
        w.end_array();
    }
    w.end_object();
    w.end_object();
}

fn write_subject(w: &mut JsonOut, p: &PatientRef) {
    w.begin_object();
    match p {
        PatientRef::Literal { id } => w.field_fmt("reference", format_args!("Patient/{id}")),
        PatientRef::Identifier { system, value } => w.field_fmt(
            "reference",
            format_args!("Patient?identifier={system}|{value}"),
        ),
    }
    w.end_object();
}

/// `dataAbsentReason` for a value the device sent as an IEEE 11073 special value
/// (fhir-mapping.md §2; R4 code system `data-absent-reason`).
fn write_data_absent_reason(w: &mut JsonOut, reason: AbsentReason) {
    write_concept(w, DATA_ABSENT_REASON, reason.code(), reason.display());
}

/// A BP component: the number in mm[Hg], or the special value as `dataAbsentReason`.
enum BpValue<'a> {
    Number(&'a device_drivers::Reading),
    Absent(&'a AbsentValue),
}

/// The MDC and LOINC codes of a BP component; `None` for a type that is not one.
fn bp_component_code(kind: ReadingType) -> Option<(u32, &'static str, &'static str, &'static str)> {
    Some(match kind {
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
        _ => return None,
    })
}

/// The BP panel's components: systolic, diastolic, mean, in that order, each a number (in
/// mm[Hg]) or a `dataAbsentReason`; the mean may be missing, the others may not.
fn bp_components(r: &Reading) -> Result<Vec<(BpValue<'_>, Option<Decimal>)>, MappingError> {
    let mut comps = Vec::with_capacity(3);
    for t in [
        ReadingType::SystolicPressure,
        ReadingType::DiastolicPressure,
        ReadingType::MeanArterialPressure,
    ] {
        match (
            r.component(t),
            r.context.absent.iter().find(|a| a.kind == t),
        ) {
            (Some(c), _) => {
                let mmhg = to_mmhg(c.value, &c.unit)?;
                comps.push((BpValue::Number(c), Some(mmhg)));
            }
            (None, Some(a)) => comps.push((BpValue::Absent(a), None)),
            (None, None) if t == ReadingType::MeanArterialPressure => {}
            (None, None) => return Err(MappingError::MissingComponent("blood pressure")),
        }
    }
    Ok(comps)
}

fn write_bp_component(w: &mut JsonOut, v: &BpValue<'_>, mmhg: Option<Decimal>) {
    let kind = match v {
        BpValue::Number(c) => c.kind,
        BpValue::Absent(a) => a.kind,
    };
    let Some((mdc, display, loinc, loinc_display)) = bp_component_code(kind) else {
        return;
    };
    w.begin_object();
    w.key("code");
    w.begin_object();
    w.key("coding");
    w.begin_array();
    write_mdc_coding(w, mdc, display);
    write_coding(w, LOINC, loinc, loinc_display);
    w.end_array();
    w.end_object();
    match (v, mmhg) {
        (BpValue::Number(_), Some(value)) => {
            w.key("valueQuantity");
            write_quantity(w, value, "mm[Hg]");
        }
        (BpValue::Absent(a), _) => {
            w.key("dataAbsentReason");
            write_data_absent_reason(w, a.reason);
        }
        (BpValue::Number(_), None) => {}
    }
    w.end_object();
}

/// `Observation.method` of a statistic the pipeline let through, always with `effectivePeriod`
/// (the serial stream reduction's window median, or an Open mHealth `descriptive_statistic` a
/// device's `upload_statistics` names): states that the value is that statistic over the
/// period, not one measurement, with the R4 StatisticsCode where there is one.
fn write_statistic_method(w: &mut JsonOut, r: &Reading, stat: &str) {
    w.begin_object();
    if let Some((code, display)) = statistic_code(stat) {
        w.key("coding");
        w.begin_array();
        write_coding(w, OBSERVATION_STATISTICS, code, display);
        w.end_array();
    }
    match r.source {
        crate::reading::Source::Serial { .. } => w.field_fmt(
            "text",
            format_args!(
                "{stat} of the values the device reported during effectivePeriod \
                 (gateway stream reduction); not a single measurement"
            ),
        ),
        _ => w.field_fmt(
            "text",
            format_args!(
                "{stat} of the measurements during effectivePeriod, as the source reported it \
                 (Open mHealth descriptive_statistic); not a single measurement"
            ),
        ),
    }
    w.end_object();
}

/// `effectiveDateTime` (an instant, or a date) or `effectivePeriod`.
fn write_effective(w: &mut JsonOut, r: &Reading) {
    let t =
        |d: &chrono::DateTime<chrono::FixedOffset>| d.to_rfc3339_opts(SecondsFormat::Secs, true);
    match r.timing {
        Timing::Instant => w.field("effectiveDateTime", &t(&r.effective)),
        Timing::Period { end } => {
            w.key("effectivePeriod");
            w.begin_object();
            w.field("end", &t(&end));
            w.field("start", &t(&r.effective));
            w.end_object();
        }
        Timing::Date => w.field_fmt(
            "effectiveDateTime",
            format_args!("{}", r.effective.format("%Y-%m-%d")),
        ),
    }
}

fn write_category(w: &mut JsonOut, vital: bool) {
    w.begin_array();
    if vital {
        write_concept(
            w,
            "http://terminology.hl7.org/CodeSystem/observation-category",
            "vital-signs",
            "Vital Signs",
        );
    }
    w.begin_object();
    w.key("coding");
    w.begin_array();
    w.begin_object();
    w.field("code", "phd");
    w.field(
        "system",
        "http://hl7.org/fhir/uv/phd/CodeSystem/PhdObservationCategories",
    );
    w.end_object();
    w.end_array();
    w.end_object();
    w.end_array();
}

/// `bodySite` of a temperature: SNOMED CT body structure where one is sourced, always text.
fn write_body_site(w: &mut JsonOut, site: BodySite) {
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
    w.begin_object();
    if let Some((code, display)) = sct {
        w.key("coding");
        w.begin_array();
        write_coding(w, "http://snomed.info/sct", code, display);
        w.end_array();
    }
    w.field("text", text);
    w.end_object();
}

fn write_codeable(w: &mut JsonOut, c: &Code) {
    w.begin_object();
    w.key("coding");
    w.begin_array();
    if let Some((m, d)) = c.mdc {
        write_mdc_coding(w, m, d);
    }
    if let Some((l, d)) = c.loinc {
        write_coding(w, LOINC, l, d);
    }
    w.end_array();
    w.field("text", c.text);
    w.end_object();
}

/// `extension`: the gateway device, and the Coincident Timestamp Observation of a re-timed
/// reading (fhir-mapping.md §3).
fn write_extensions(w: &mut JsonOut, gateway_ref: &str, cts_ref: Option<&str>) {
    w.begin_array();
    w.begin_object();
    w.field("url", GATEWAY_EXTENSION);
    w.key("valueReference");
    write_reference(w, gateway_ref);
    w.end_object();
    if let Some(cts_ref) = cts_ref {
        w.begin_object();
        w.field("url", CTS_EXTENSION);
        w.key("valueReference");
        write_reference(w, cts_ref);
        w.end_object();
    }
    w.end_array();
}

/// Where an Observation's entry points: its device, the gateway, the Coincident Timestamp
/// Observation if re-timed, and its client-assigned id in [`WriteMode::Put`].
struct ObsRefs<'a> {
    device: &'a str,
    gateway: &'a str,
    cts: Option<&'a str>,
    id: Option<&'a str>,
}

/// The Observation resource of one reading (pure).
///
/// # Errors
///
/// A [`MappingError`] when the reading has no code, lacks a value it needs, or has a value that
/// does not convert exactly.
pub fn observation(
    r: &Reading,
    device_ref: &str,
    gateway_ref: &str,
) -> Result<serde_json::Value, MappingError> {
    let mut w = JsonOut::with_capacity(2048);
    write_observation(
        &mut w,
        r,
        &ObsRefs {
            device: device_ref,
            gateway: gateway_ref,
            cts: None,
            id: None,
        },
    )?;
    Ok(serde_json::from_slice(&w.into_bytes()).unwrap_or(serde_json::Value::Null))
}

fn write_observation(w: &mut JsonOut, r: &Reading, refs: &ObsRefs<'_>) -> Result<(), MappingError> {
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
    let bp = r.kind == ReadingKind::BloodPressure;
    // The value (mapped first: the errors come before anything is written).
    let bp_comps = if bp { bp_components(r)? } else { Vec::new() };
    let single = if bp {
        None
    } else {
        match (r.components.first(), r.context.absent.first()) {
            (Some(comp), _) => Some(Ok(comp)),
            // The device sent NaN, NRes or +/-INF: no value, the reason instead; never a number.
            (None, Some(a)) => Some(Err(a)),
            (None, None) => return Err(MappingError::MissingComponent(c.text)),
        }
    };
    let interp = interpretations(&r.flags);
    // fhir-mapping.md §4: `preliminary` for early estimates (and a measurement still ongoing).
    let preliminary = interp.iter().any(|m| {
        matches!(
            m,
            MeasurementStatus::EarlyIndication | MeasurementStatus::MsmtOngoing
        )
    });
    // R4 pulse-oximetry profile: supplemental oxygen as component 3151-8 "Inhaled oxygen flow
    // rate" in L/min (0 = room air).
    let oxygen = match (r.kind, r.context.supplemental_oxygen_l_min) {
        (ReadingKind::OxygenSaturation, Some(flow)) => Some(flow),
        _ => None,
    };
    // Meal context (GATT 0x2A34, Open mHealth temporal_relationship_to_meal): no standard code
    // was sourced for the concept or its values, so it travels as text only (README "Limits").
    let meal = match (r.kind, r.context.meal.as_deref()) {
        (ReadingKind::BloodGlucose, Some(meal)) => Some(meal),
        _ => None,
    };

    w.begin_object();
    if let Some(site) = r
        .context
        .body_site
        .filter(|_| r.kind == ReadingKind::BodyTemperature)
    {
        w.key("bodySite");
        write_body_site(w, site);
    }
    w.key("category");
    write_category(w, c.vital_profile.is_some());
    w.key("code");
    write_codeable(w, &c);
    if bp {
        w.key("component");
        w.begin_array();
        for (v, mmhg) in &bp_comps {
            write_bp_component(w, v, *mmhg);
        }
        w.end_array();
    } else if oxygen.is_some() || meal.is_some() {
        w.key("component");
        w.begin_array();
        if let Some(flow) = oxygen {
            w.begin_object();
            w.key("code");
            w.begin_object();
            w.key("coding");
            w.begin_array();
            write_coding(w, LOINC, "3151-8", "Inhaled oxygen flow rate");
            w.end_array();
            w.field("text", "Supplemental oxygen flow rate");
            w.end_object();
            w.key("valueQuantity");
            write_quantity(w, flow, "L/min");
            w.end_object();
        }
        if let Some(meal) = meal {
            w.begin_object();
            w.key("code");
            w.begin_object();
            w.field("text", "Temporal relationship to meal");
            w.end_object();
            w.key("valueCodeableConcept");
            w.begin_object();
            w.field("text", meal);
            w.end_object();
            w.end_object();
        }
        w.end_array();
    }
    if let Some(Err(absent)) = single {
        w.key("dataAbsentReason");
        write_data_absent_reason(w, absent.reason);
    }
    w.key("device");
    write_reference(w, refs.device);
    write_effective(w, r);
    w.key("extension");
    write_extensions(w, refs.gateway, refs.cts);
    write_id(w, refs.id);
    w.key("identifier");
    write_identifiers(w, OBS_IDENTIFIER_SYSTEM, &r.observation_identifier);
    if !interp.is_empty() {
        w.key("interpretation");
        w.begin_array();
        for m in &interp {
            write_concept(w, MeasurementStatus::SYSTEM, m.code(), m.display());
        }
        w.end_array();
    }
    w.key("meta");
    let vital_profile = c
        .vital_profile
        .map(|p| format!("http://hl7.org/fhir/StructureDefinition/{p}"));
    let base_profile = if bp {
        "http://hl7.org/fhir/uv/phd/StructureDefinition/PhdCompoundNumericObservation"
    } else {
        "http://hl7.org/fhir/uv/phd/StructureDefinition/PhdNumericObservation"
    };
    match &vital_profile {
        Some(p) => write_meta(w, &[base_profile, p]),
        None => write_meta(w, &[base_profile]),
    }
    if let Some(stat) = r.context.statistic.as_deref() {
        w.key("method");
        write_statistic_method(w, r, stat);
    }
    w.field("resourceType", "Observation");
    w.field("status", if preliminary { "preliminary" } else { "final" });
    w.key("subject");
    write_subject(w, &r.patient);
    if let Some(Ok(comp)) = single {
        w.key("valueQuantity");
        write_quantity(w, comp.value, &comp.unit);
    }
    w.end_object();
    Ok(())
}

/// The 8410608 MDC_BLOOD_PRESSURE_MEASUREMENT_STATUS Observation of a BP reading: one
/// `valueBoolean` component per status bit, `derivedFrom` the BP Observation (pure).
fn write_bp_status_observation(w: &mut JsonOut, r: &Reading, bp_ref: &str, refs: &ObsRefs<'_>) {
    let set = bp_bits(&r.flags);
    w.begin_object();
    w.key("category");
    write_category(w, false);
    w.key("code");
    w.begin_object();
    w.key("coding");
    w.begin_array();
    write_mdc_coding(w, 8410608, "MDC_BLOOD_PRESSURE_MEASUREMENT_STATUS");
    w.end_array();
    w.field("text", "Blood pressure measurement status");
    w.end_object();
    w.key("component");
    w.begin_array();
    for bit in &BP_STATUS_BITS {
        w.begin_object();
        w.key("code");
        write_concept(w, BpStatusBit::SYSTEM, bit.code(), bit.display());
        w.key("valueBoolean");
        w.bool(set.contains(bit));
        w.end_object();
    }
    w.end_array();
    w.key("derivedFrom");
    w.begin_array();
    write_reference(w, bp_ref);
    w.end_array();
    w.key("device");
    write_reference(w, refs.device);
    write_effective(w, r);
    w.key("extension");
    write_extensions(w, refs.gateway, refs.cts);
    write_id(w, refs.id);
    w.key("identifier");
    w.begin_array();
    w.begin_object();
    w.field("system", OBS_IDENTIFIER_SYSTEM);
    w.field_fmt(
        "value",
        format_args!("{}", bp_status_identifier(&r.observation_identifier)),
    );
    w.end_object();
    w.end_array();
    w.key("meta");
    write_meta(
        w,
        &["http://hl7.org/fhir/uv/phd/StructureDefinition/PhdBitsEnumerationObservation"],
    );
    w.field("resourceType", "Observation");
    w.field("status", "final");
    w.key("subject");
    write_subject(w, &r.patient);
    w.end_object();
}

/// The PHD Coincident Timestamp Observation of a corrected reading (pure): the PHD's clock
/// (`valueDateTime`) at the gateway's time (`effectiveDateTime`), subject the PHD Device,
/// device the gateway (fhir-mapping.md §4). Nothing for a reading without a clock read.
///
/// Code 67975 MDC_ATTR_TIME_ABS "Absolute time": the PHD IG's PhdCoincidentTimeStampObservation
/// profile (HL7/phd `input/fsh/StructureDefinition.PhdCoincidentTimeStampObservation.fsh`,
/// `code.coding[MDCType]` comment: "The code for absolute time is 67975 with reference id
/// MDC_ATTR_TIME_ABS") and its example Observation `coin-1234`; a BLE Current Time clock is an
/// absolute (wall-clock) time.
fn write_cts_observation(w: &mut JsonOut, r: &Reading, identifier: &str, refs: &ObsRefs<'_>) {
    let Some(cts) = r.time_quality.coincident_timestamp() else {
        return;
    };
    // The gateway's time shown in the device's offset, as the IG example does, so the two read
    // side by side; the instant is the same.
    let gateway_time = cts
        .gateway_time
        .with_timezone(cts.device_time.offset())
        .to_rfc3339_opts(SecondsFormat::Millis, true);
    w.begin_object();
    w.key("code");
    w.begin_object();
    w.key("coding");
    w.begin_array();
    write_mdc_coding(w, 67975, "MDC_ATTR_TIME_ABS");
    w.end_array();
    w.field("text", "Absolute time");
    w.end_object();
    w.key("device");
    write_reference(w, refs.gateway);
    w.field("effectiveDateTime", &gateway_time);
    w.key("extension");
    write_extensions(w, refs.gateway, None);
    write_id(w, refs.id);
    w.key("identifier");
    write_identifiers(w, CTS_SYSTEM, identifier);
    w.key("meta");
    write_meta(
        w,
        &["http://hl7.org/fhir/uv/phd/StructureDefinition/PhdCoincidentTimeStampObservation"],
    );
    w.field("resourceType", "Observation");
    w.field("status", "final");
    w.key("subject");
    write_reference(w, refs.device);
    w.field(
        "valueDateTime",
        &cts.device_time.to_rfc3339_opts(SecondsFormat::Secs, true),
    );
    w.end_object();
}

/// [`build_transaction_bundle`], referencing the Devices in `known` as `Device/<id>` instead of
/// sending their conditional creates again. `readings` must fit as if no Device were known
/// ([`readings_that_fit`]): what fits never depends on the cache, so a batch stays buildable
/// after the cache is forgotten.
///
/// The Bundle is written as JSON bytes ([`BuiltBundle::json`]), the request body as it goes on
/// the wire (before compression).
pub fn build_bundle(
    gateway: &GatewayInfo,
    readings: &[Reading],
    known: &KnownDevices,
) -> Result<BuiltBundle, MappingError> {
    if readings.is_empty() {
        return Err(MappingError::Empty);
    }
    if readings_that_fit(readings) < readings.len() {
        return Err(MappingError::TooManyEntries(readings.len()));
    }
    let mode = gateway.write_mode;
    // About 1.9 kB of JSON per BP reading (1,856 bytes in the `uplink_stages` bench); the
    // buffer grows if a Bundle needs more.
    let mut w = JsonOut::with_capacity(4096 + 2048 * readings.len());
    w.begin_object();
    w.key("entry");
    w.begin_array();
    let mut entry_count = 0;
    let mut devices: Vec<(usize, String)> = Vec::new();
    let gw_key = gateway_key(gateway);
    let gw_url = match known.get(&gw_key) {
        Some(reference) => reference.to_owned(),
        None => {
            let url = urn_uuid(&gw_key);
            write_gateway_entry(&mut w, gateway, &url);
            devices.push((entry_count, gw_key));
            entry_count += 1;
            url
        }
    };
    // Per device of this Bundle, how its Observations reference it.
    let mut device_urls: Vec<(&DeviceIdentifier, String)> = Vec::new();
    // Per Observation identifier, its reading ids' position in `refs`.
    let mut obs_index: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    let mut cts_urls: std::collections::BTreeSet<String> = std::collections::BTreeSet::new();
    let mut refs: Vec<EntryRef> = Vec::with_capacity(readings.len());
    for r in readings {
        if let Some(&i) = obs_index.get(r.observation_identifier.as_str()) {
            // Same identity already in this Bundle: the same reading twice rides on one entry;
            // a different reading under the same identity is a collision, never merged.
            let same = refs.get(i).is_some_and(|e| e.reading_ids.contains(&r.id));
            if !same {
                return Err(MappingError::IdentifierCollision);
            }
            continue;
        }
        let dev_url = match device_urls
            .iter()
            .find(|(id, _)| **id == r.device.identifier)
        {
            Some((_, u)) => u.clone(),
            None => {
                let key = device_key(&r.device.identifier);
                let url = match known.get(&key) {
                    Some(reference) => reference.to_owned(),
                    None => {
                        let url = urn_uuid(&key);
                        write_device_entry(&mut w, r, mode, &url);
                        devices.push((entry_count, key));
                        entry_count += 1;
                        url
                    }
                };
                device_urls.push((&r.device.identifier, url.clone()));
                url
            }
        };
        // A reading the gateway re-timed: its Coincident Timestamp Observation (once per clock
        // read in this Bundle) and the extension that references it.
        let cts_url = match cts_identifier(&gateway.id, r) {
            Some(cts_id) => {
                let url = urn_uuid(&format!("{CTS_SYSTEM}|{cts_id}"));
                if !cts_urls.contains(&url) {
                    let id =
                        begin_entry(&mut w, mode, Some(&url), "Observation", CTS_SYSTEM, &cts_id);
                    let refs = ObsRefs {
                        device: &dev_url,
                        gateway: &gw_url,
                        cts: None,
                        id: id.as_deref(),
                    };
                    write_cts_observation(&mut w, r, &cts_id, &refs);
                    w.end_object();
                    entry_count += 1;
                    cts_urls.insert(url.clone());
                }
                Some(url)
            }
            None => None,
        };
        let bp_status = has_bp_status(r);
        // The BP Observation is referenced by its status Observation (`derivedFrom`).
        let full_url = entry_url(bp_status, mode, || {
            format!("{OBS_IDENTIFIER_SYSTEM}|{}", r.observation_identifier)
        });
        let id = begin_entry(
            &mut w,
            mode,
            full_url.as_deref(),
            "Observation",
            OBS_IDENTIFIER_SYSTEM,
            &r.observation_identifier,
        );
        let obs_refs = ObsRefs {
            device: &dev_url,
            gateway: &gw_url,
            cts: cts_url.as_deref(),
            id: id.as_deref(),
        };
        write_observation(&mut w, r, &obs_refs)?;
        w.end_object();
        obs_index.insert(r.observation_identifier.as_str(), refs.len());
        refs.push(EntryRef {
            entry_index: entry_count,
            reading_ids: vec![r.id],
        });
        entry_count += 1;
        if let (true, Some(bp_url)) = (bp_status, &full_url) {
            let status_id = bp_status_identifier(&r.observation_identifier);
            let url = entry_url(false, mode, || {
                format!("{OBS_IDENTIFIER_SYSTEM}|{status_id}")
            });
            let id = begin_entry(
                &mut w,
                mode,
                url.as_deref(),
                "Observation",
                OBS_IDENTIFIER_SYSTEM,
                &status_id,
            );
            let status_refs = ObsRefs {
                id: id.as_deref(),
                ..obs_refs
            };
            write_bp_status_observation(&mut w, r, bp_url, &status_refs);
            w.end_object();
            entry_count += 1;
        }
    }
    w.end_array();
    w.field("resourceType", "Bundle");
    w.field("type", "transaction");
    w.end_object();
    Ok(BuiltBundle {
        json: w.into_bytes(),
        entry_count,
        entries: refs,
        devices,
    })
}

#[cfg(test)]
#[path = "fhir_oracle.rs"]
mod oracle;

#[cfg(test)]
#[path = "fhir_bytes_tests.rs"]
mod bytes_tests;

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::reading::{DeviceInfo, Source, TimeQuality};
    use chrono::{FixedOffset, TimeZone, Utc};
    use device_drivers::DeviceTime;
    use serde_json::json;

    pub(crate) fn reading(
        kind: ReadingKind,
        comps: Vec<(ReadingType, Decimal, &str)>,
        n: i64,
    ) -> Reading {
        let t = DeviceTime::new(2025, 3, 14, 8, 15, 30).unwrap();
        let dev = DeviceIdentifier::Eui64("00091FFFFE801234".into());
        let patient = PatientRef::Identifier {
            system: "https://rpm.example.org/fhir/sid/patient-mrn".into(),
            value: "RPM-000123".into(),
        };
        let received = Utc.with_ymd_and_hms(2025, 3, 14, 7, 15, 31).unwrap();
        let oid = crate::identity::observation_identifier(
            dev.id_component(),
            &patient,
            mdc_code(kind, &MeasurementContext::default()),
            &crate::identity::IdTimestamp::Device {
                seconds_since_2000: t.seconds_since_2000(),
                fraction: None,
                utc_offset_minutes: None,
            },
        );
        Reading {
            id: test_id(n),
            observation_identifier: oid,
            kind,
            components: comps
                .into_iter()
                .map(|(k, v, u)| device_drivers::Reading::new(k, v, u))
                .collect(),
            device: DeviceInfo {
                name: "cuff".into(),
                class: DeviceClass::BloodPressureCuff,
                identifier: dev,
                manufacturer: Some("Example Medical Inc.".into()),
                model: Some("BP-100".into()),
                serial: Some("5A0012345".into()),
                firmware: Some("1.2.0".into()),
                system_id: Some("00091FFFFE801234".into()),
                bluetooth_address: Some("00091F801234".into()),
                hardware: Some("rev B".into()),
                software: Some("2.0.1".into()),
            },
            patient,
            device_time: Some(t),
            effective: FixedOffset::east_opt(3600)
                .unwrap()
                .with_ymd_and_hms(2025, 3, 14, 8, 15, 30)
                .unwrap(),
            time_quality: TimeQuality::DeviceTrusted,
            received_at: received,
            flags: vec![],
            source: Source::Ble {
                address: "00:09:1F:80:12:34".into(),
            },
            timing: crate::reading::Timing::Instant,
            context: MeasurementContext::default(),
        }
    }

    pub(crate) fn test_id(n: i64) -> crate::identity::ReadingId {
        let mut b = [0u8; 32];
        b[24..].copy_from_slice(&n.to_be_bytes());
        crate::identity::ReadingId::from_bytes(b)
    }

    pub(crate) fn bp() -> Reading {
        reading(
            ReadingKind::BloodPressure,
            vec![
                (
                    ReadingType::SystolicPressure,
                    Decimal::from_int(128),
                    "mm[Hg]",
                ),
                (
                    ReadingType::DiastolicPressure,
                    Decimal::from_int(82),
                    "mm[Hg]",
                ),
                (
                    ReadingType::MeanArterialPressure,
                    Decimal::from_int(97),
                    "mm[Hg]",
                ),
            ],
            1,
        )
    }

    #[test]
    fn identifier_reproduces_the_mapping_sheet_example() {
        assert_eq!(
            bp().observation_identifier,
            "00091FFFFE801234-RPM-000123-https://rpm.example.org/fhir/sid/patient-mrn-150020-795255330"
        );
    }

    #[test]
    fn bp_bundle_has_gateway_device_and_panel_with_exact_values() {
        let (b, refs) =
            build_transaction_bundle(&GatewayInfo::new("gw-1", "0.1.0"), &[bp()]).unwrap();
        let entries = b["entry"].as_array().unwrap();
        assert_eq!(entries.len(), 3);
        assert_eq!(
            refs,
            vec![EntryRef {
                entry_index: 2,
                reading_ids: vec![bp().id]
            }]
        );
        let obs = &entries[2]["resource"];
        assert_eq!(obs["code"]["coding"][0]["code"], "150020");
        assert_eq!(obs["component"][0]["valueQuantity"]["code"], "mm[Hg]");
        assert_eq!(
            obs["component"][0]["valueQuantity"]["value"].to_string(),
            "128"
        );
        assert_eq!(obs["effectiveDateTime"], "2025-03-14T08:15:30+01:00");
        assert_eq!(
            obs["subject"]["reference"],
            "Patient?identifier=https://rpm.example.org/fhir/sid/patient-mrn|RPM-000123"
        );
        assert_eq!(obs["device"]["reference"], entries[1]["fullUrl"]);
        assert_eq!(
            obs["extension"][0]["valueReference"]["reference"],
            entries[0]["fullUrl"]
        );
        assert_eq!(
            entries[2]["request"]["ifNoneExist"],
            format!(
                "identifier={OBS_IDENTIFIER_SYSTEM}|{}",
                bp().observation_identifier
            )
        );
        assert_eq!(
            entries[1]["request"]["ifNoneExist"],
            format!("identifier={SYSID_SYSTEM}|00-09-1F-FF-FE-80-12-34")
        );
    }

    #[test]
    fn put_mode_writes_each_entry_at_the_id_its_identifier_hashes_to() {
        let gw = GatewayInfo::new("gw-1", "0.1.0");
        let (post, post_refs) = build_transaction_bundle(&gw, &[bp()]).unwrap();
        let (put, put_refs) =
            build_transaction_bundle(&gw.with_write_mode(WriteMode::Put), &[bp()]).unwrap();
        assert_eq!(post_refs, put_refs);
        let (post, put) = (
            post["entry"].as_array().unwrap(),
            put["entry"].as_array().unwrap(),
        );
        assert_eq!(post.len(), put.len());
        for (p, q) in post.iter().zip(put) {
            let query = p["request"]["ifNoneExist"].as_str().unwrap();
            let (system, value) = query["identifier=".len()..].split_once('|').unwrap();
            let id = put_id(system, value);
            assert_eq!(id.len(), 64);
            assert!(id
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
            let ty = p["resource"]["resourceType"].as_str().unwrap();
            assert_eq!(
                q["request"],
                json!({"method": "PUT", "url": format!("{ty}/{id}")})
            );
            assert_eq!(q["resource"]["id"], id.as_str());
            // Same fullUrl where the create has one, so references inside the Bundle stay as
            // they were; an update always has one (R4: only a create may go without).
            if !p["fullUrl"].is_null() {
                assert_eq!(q["fullUrl"], p["fullUrl"]);
            }
            assert!(q["fullUrl"]
                .as_str()
                .is_some_and(|u| u.starts_with("urn:uuid:")));
            let mut without_id = q["resource"].clone();
            without_id.as_object_mut().unwrap().remove("id");
            assert_eq!(without_id, p["resource"]);
        }
        // The id is the identifier's: a resend of the reading addresses the same resource, and
        // another reading another one.
        let obs_id = |r: &Reading| {
            let gw = GatewayInfo::new("gw-1", "0.1.0").with_write_mode(WriteMode::Put);
            let (b, _) = build_transaction_bundle(&gw, std::slice::from_ref(r)).unwrap();
            b["entry"][2]["resource"]["id"].as_str().unwrap().to_owned()
        };
        let mut other = bp();
        other.observation_identifier.push('x');
        assert_eq!(obs_id(&bp()), obs_id(&bp()));
        assert_ne!(obs_id(&bp()), obs_id(&other));
        // SHA-256 of "urn:x|y", from sha256sum.
        assert_eq!(
            put_id("urn:x", "y"),
            "f3ea7a78f92d10b759bb744b6cbe0f1c703c45dbabc610be29c49ba2da0b1e39"
        );
    }

    #[test]
    fn decimals_keep_their_precision_on_the_wire() {
        let r = reading(
            ReadingKind::BodyTemperature,
            vec![(ReadingType::BodyTemperature, Decimal::new(3650, -2), "Cel")],
            2,
        );
        let (b, _) = build_transaction_bundle(&GatewayInfo::new("gw", "0"), &[r]).unwrap();
        let text = serde_json::to_string(&b).unwrap();
        assert!(text.contains("\"value\":36.50"), "{text}");
    }

    #[test]
    fn kpa_blood_pressure_is_converted_to_mmhg() {
        let r = reading(
            ReadingKind::BloodPressure,
            vec![
                (ReadingType::SystolicPressure, Decimal::new(160, -1), "kPa"),
                (ReadingType::DiastolicPressure, Decimal::new(107, -1), "kPa"),
            ],
            3,
        );
        let (b, _) = build_transaction_bundle(&GatewayInfo::new("gw", "0"), &[r]).unwrap();
        let c = &b["entry"][2]["resource"]["component"];
        assert_eq!(c[0]["valueQuantity"]["value"].to_string(), "120.0");
        assert_eq!(c[1]["valueQuantity"]["value"].to_string(), "80.3");
        assert_eq!(c[0]["valueQuantity"]["code"], "mm[Hg]");
    }

    #[test]
    fn glucose_in_mmol_uses_the_molar_loinc_and_no_vital_signs_category() {
        let mut r = reading(
            ReadingKind::BloodGlucose,
            vec![(ReadingType::BloodGlucose, Decimal::new(56, -1), "mmol/L")],
            4,
        );
        r.context.specimen = Some(Specimen::CapillaryWholeBlood);
        let (b, _) = build_transaction_bundle(&GatewayInfo::new("gw", "0"), &[r]).unwrap();
        let obs = &b["entry"][2]["resource"];
        assert_eq!(obs["code"]["coding"][1]["code"], "14743-9");
        assert_eq!(obs["category"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn duplicate_readings_share_one_entry_and_devices_appear_once() {
        let a = bp();
        let b = bp();
        let mut pulse = reading(
            ReadingKind::PulseRateCuff,
            vec![(ReadingType::PulseRate, Decimal::from_int(60), "/min")],
            5,
        );
        pulse.device = a.device.clone();
        let (bundle, refs) =
            build_transaction_bundle(&GatewayInfo::new("gw", "0"), &[a.clone(), b.clone(), pulse])
                .unwrap();
        assert_eq!(bundle["entry"].as_array().unwrap().len(), 4);
        assert_eq!(refs[0].reading_ids, vec![a.id]);
        assert_eq!(refs.len(), 2);
    }

    #[test]
    fn two_different_readings_under_one_identifier_are_never_merged() {
        let a = bp();
        let mut b = bp();
        b.id = test_id(9);
        b.components[0].value = Decimal::from_int(140);
        let pulse = reading(
            ReadingKind::PulseRateCuff,
            vec![(ReadingType::PulseRate, Decimal::from_int(60), "/min")],
            5,
        );
        let batch = [a.clone(), pulse, a, b];
        assert!(matches!(
            build_transaction_bundle(&GatewayInfo::new("gw", "0"), &batch),
            Err(MappingError::IdentifierCollision)
        ));
        assert_eq!(first_identifier_collision(&batch), Some(3), "the later one");
        assert_eq!(first_identifier_collision(&batch[..3]), None);
    }

    #[test]
    fn at_most_fifty_entries() {
        let mut many = Vec::new();
        for i in 0..60 {
            let mut r = bp();
            r.id = test_id(i);
            r.observation_identifier = format!("obs-{i}");
            r.device.identifier = DeviceIdentifier::Local(format!("gw/dev{i}"));
            many.push(r);
        }
        let n = readings_that_fit(&many);
        assert_eq!(n, 24, "1 gateway + 24 × (device + observation) = 49");
        assert!(build_transaction_bundle(&GatewayInfo::new("gw", "0"), &many).is_err());
        let (b, _) = build_transaction_bundle(&GatewayInfo::new("gw", "0"), &many[..n]).unwrap();
        assert!(b["entry"].as_array().unwrap().len() <= MAX_ENTRIES);
    }

    /// A BP reading (with status bits) and its pulse, corrected against one clock read.
    pub(crate) fn corrected(n: i64, kind: ReadingKind) -> Reading {
        let mut r = if kind == ReadingKind::BloodPressure {
            bp()
        } else {
            reading(
                kind,
                vec![(ReadingType::PulseRate, Decimal::from_int(61), "/min")],
                n,
            )
        };
        r.id = test_id(n);
        r.time_quality = TimeQuality::Corrected(crate::reading::CoincidentTimestamp {
            gateway_time: Utc.with_ymd_and_hms(2025, 3, 14, 7, 45, 0).unwrap(),
            device_time: FixedOffset::east_opt(3600)
                .unwrap()
                .with_ymd_and_hms(2023, 3, 15, 8, 45, 0)
                .unwrap(),
        });
        r
    }

    #[test]
    fn corrected_readings_bring_one_coincident_timestamp_observation_per_clock_read_and_reference_it(
    ) {
        let gw = GatewayInfo::new("gw-1", "0");
        let mut bp_r = corrected(1, ReadingKind::BloodPressure);
        bp_r.flags = vec![Status::IrregularPulse];
        let pulse = corrected(2, ReadingKind::PulseRateCuff);
        let (b, refs) = build_transaction_bundle(&gw, &[bp_r.clone(), pulse.clone()]).unwrap();
        let entries = b["entry"].as_array().unwrap();
        let cts: Vec<&Value> = entries
            .iter()
            .filter(|e| e["resource"]["identifier"][0]["system"] == CTS_SYSTEM)
            .collect();
        assert_eq!(cts.len(), 1, "one per clock read: {b:#}");
        let cts_entry = cts[0];
        let c = &cts_entry["resource"];
        let ms = Utc
            .with_ymd_and_hms(2025, 3, 14, 7, 45, 0)
            .unwrap()
            .timestamp_millis();
        let value = format!("gw-1-00091FFFFE801234-{ms}");
        assert_eq!(c["identifier"][0]["value"], value.as_str());
        assert_eq!(
            cts_entry["request"]["ifNoneExist"],
            format!("identifier={CTS_SYSTEM}|{value}")
        );
        assert_eq!(c["code"]["coding"][0]["code"], "67975");
        assert_eq!(c["code"]["coding"][0]["system"], MDC);
        assert_eq!(c["status"], "final");
        // Subject the PHD, device the gateway; gateway time and PHD time at that instant.
        assert_eq!(c["subject"]["reference"], entries[1]["fullUrl"]);
        assert_eq!(c["device"]["reference"], entries[0]["fullUrl"]);
        assert_eq!(c["effectiveDateTime"], "2025-03-14T08:45:00.000+01:00");
        assert_eq!(c["valueDateTime"], "2023-03-15T08:45:00+01:00");
        // Every Observation of the corrected readings references it, the 8410608 one too.
        let referencing: Vec<&Value> = entries
            .iter()
            .filter(|e| e["resource"]["resourceType"] == "Observation")
            .filter(|e| e["resource"]["identifier"][0]["system"] == OBS_IDENTIFIER_SYSTEM)
            .collect();
        assert_eq!(referencing.len(), 3);
        for e in referencing {
            let ext = &e["resource"]["extension"];
            assert!(
                ext.as_array()
                    .unwrap()
                    .iter()
                    .any(|x| x["url"] == CTS_EXTENSION
                        && x["valueReference"]["reference"] == cts_entry["fullUrl"]),
                "{e:#}"
            );
        }
        assert_eq!(refs.len(), 2);
        assert_eq!(readings_that_fit(&[bp_r.clone(), pulse]), 2);

        // A second connection's clock read: its own CTS Observation.
        let mut later = corrected(3, ReadingKind::PulseRateCuff);
        later.observation_identifier.push_str("-later");
        if let TimeQuality::Corrected(c) = &mut later.time_quality {
            c.gateway_time += chrono::Duration::hours(1);
        }
        let (b, _) = build_transaction_bundle(&gw, &[bp_r, later]).unwrap();
        let n = b["entry"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["resource"]["identifier"][0]["system"] == CTS_SYSTEM)
            .count();
        assert_eq!(n, 2);

        // A reading that was not corrected (or stored before format 4): neither.
        let mut old = bp();
        old.time_quality = TimeQuality::CorrectedForSkew;
        for r in [bp(), old] {
            let (b, _) = build_transaction_bundle(&gw, &[r]).unwrap();
            let text = b.to_string();
            assert!(!text.contains(CTS_SYSTEM) && !text.contains(CTS_EXTENSION));
        }
    }

    #[test]
    fn the_entry_limit_counts_coincident_timestamp_observations() {
        // Each reading from its own device and clock read: device + CTS + observation.
        let many: Vec<Reading> = (0..30)
            .map(|i| {
                let mut r = corrected(i, ReadingKind::PulseRateCuff);
                r.observation_identifier = format!("obs-{i}");
                r.device.identifier = DeviceIdentifier::Local(format!("gw/dev{i}"));
                r
            })
            .collect();
        let n = readings_that_fit(&many);
        assert_eq!(n, 16, "1 gateway + 16 × 3 = 49");
        let (b, _) = build_transaction_bundle(&GatewayInfo::new("gw", "0"), &many[..n]).unwrap();
        assert_eq!(b["entry"].as_array().unwrap().len(), 49);
    }

    #[test]
    fn urn_uuids_are_stable_and_well_formed() {
        let a = urn_uuid("x");
        assert_eq!(a, urn_uuid("x"));
        assert_ne!(a, urn_uuid("y"));
        let u = a.trim_start_matches("urn:uuid:");
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "4");
    }

    #[test]
    fn confirmed_devices_are_referenced_by_id_and_learnt_only_from_their_own_locations() {
        let gw = GatewayInfo::new("gw-1", "0.1.0");
        let first = build_bundle(&gw, &[bp()], &KnownDevices::default()).unwrap();
        let gw_key = gateway_key(&gw);
        let dev_key = device_key(&bp().device.identifier);
        assert_eq!(
            first.devices,
            vec![(0, gw_key.clone()), (1, dev_key.clone())]
        );
        // The server's transaction-response: locations absolute or relative, in entry order.
        let response = json!({"resourceType": "Bundle", "type": "transaction-response", "entry": [
            {"response": {"status": "201 Created", "location": "https://fhir.example/r4/Device/gw7/_history/1"}},
            {"response": {"status": "200 OK", "location": "Device/12/_history/3"}},
            {"response": {"status": "201 Created", "location": "Observation/99/_history/1"}},
        ]});
        let mut known = KnownDevices::default();
        let body = serde_json::to_vec(&response).unwrap();
        assert_eq!(known.learn_from_response(&body, &first.devices), 2);
        assert_eq!(known.get(&gw_key), Some("Device/gw7"));
        assert_eq!(known.get(&dev_key), Some("Device/12"));

        let next = build_bundle(&gw, &[bp()], &known).unwrap();
        let next_bundle = next.value();
        let entries = next_bundle["entry"].as_array().unwrap();
        assert_eq!(entries.len(), 1, "the Observation only");
        assert!(next.devices.is_empty());
        assert_eq!(next.entries[0].entry_index, 0);
        let obs = &entries[0]["resource"];
        assert_eq!(obs["device"]["reference"], "Device/12");
        assert_eq!(
            obs["extension"][0]["valueReference"]["reference"],
            "Device/gw7"
        );
        // The Bundle stays one a server accepts: validated in the devkit and e2e tests; here
        // its entry is the same Observation as before, but for the references.
        let mut before = first.value()["entry"][2]["resource"].clone();
        before["device"]["reference"] = json!("Device/12");
        before["extension"][0]["valueReference"]["reference"] = json!("Device/gw7");
        assert_eq!(&before, obs);

        // A known device that is not in this batch changes nothing; forgetting restores the
        // full Bundle, byte for byte.
        known.forget_all();
        let again = build_bundle(&gw, &[bp()], &known).unwrap();
        assert_eq!(again.json, first.json);
    }

    #[test]
    fn only_a_device_location_with_a_valid_id_teaches_anything() {
        assert_eq!(device_reference("Device/7"), Some("Device/7".into()));
        assert_eq!(
            device_reference("Device/a-b.c/_history/2?x=1"),
            Some("Device/a-b.c".into())
        );
        assert_eq!(
            device_reference("https://h/fhir/Device/5/_history/1"),
            Some("Device/5".into())
        );
        for bad in [
            "",
            "Device",
            "Device/",
            "Observation/7/_history/1",
            "Device/_history",
            "Device/a b",
            &format!("Device/{}", "x".repeat(65)),
        ] {
            assert_eq!(device_reference(bad), None, "{bad}");
        }
        let devices = vec![(0, "k".to_string())];
        let mut known = KnownDevices::default();
        for body in [
            &b"not json"[..],
            br#"{"entry": []}"#,
            br#"{"entry": [{"response": {"status": "201 Created"}}]}"#,
            br#"{"entry": [{"response": {"location": 7}}]}"#,
            br#"[1, 2]"#,
        ] {
            assert_eq!(known.learn_from_response(body, &devices), 0);
        }
        assert!(known.is_empty());
    }

    #[test]
    fn the_device_cache_is_bounded() {
        let mut known = KnownDevices::default();
        for i in 0..MAX_KNOWN_DEVICES {
            assert!(known.learn(&format!("k{i}"), &format!("Device/{i}")));
        }
        assert_eq!(known.len(), MAX_KNOWN_DEVICES);
        assert!(known.learn("k0", "Device/0"), "a known key does not reset");
        assert_eq!(known.len(), MAX_KNOWN_DEVICES);
        assert!(known.learn("one more", "Device/x"));
        assert_eq!(known.len(), 1, "starts again");
    }

    #[test]
    fn only_entries_something_references_carry_a_full_url() {
        let gw = GatewayInfo::new("gw-1", "0.1.0");
        let (b, _) = build_transaction_bundle(&gw, &[bp()]).unwrap();
        let e = b["entry"].as_array().unwrap();
        assert_eq!(e.len(), 3);
        // The gateway and the cuff are referenced by the Observation; the Observation by nothing.
        assert!(e[0]["fullUrl"].is_string() && e[1]["fullUrl"].is_string());
        assert!(e[2].get("fullUrl").is_none(), "{}", e[2]);
        assert_eq!(e[2]["request"]["method"], "POST");
        // A BP panel with status bits: its status Observation references the panel, which
        // keeps its fullUrl; the status Observation itself is referenced by nothing.
        let mut flagged = bp();
        flagged.flags.push(Status::IrregularPulse);
        let (b, _) = build_transaction_bundle(&gw, &[flagged]).unwrap();
        let e = b["entry"].as_array().unwrap();
        assert_eq!(e.len(), 4);
        assert_eq!(
            e[3]["resource"]["derivedFrom"][0]["reference"],
            e[2]["fullUrl"]
        );
        assert!(e[2]["fullUrl"].is_string());
        assert!(e[3].get("fullUrl").is_none(), "{}", e[3]);
    }
}
