//! Device status: the one vocabulary every decoder emits and the agent matches.
//!
//! A decoder reports what a device said about a measurement (sensor off, test data, irregular
//! pulse, clock not set...) as [`Status`] values in [`Record::flags`](crate::Record). The agent
//! never compares strings: it asks [`Status::class`] what a status *means* for the reading and
//! matches the [`StatusClass`]:
//!
//! | class | what the agent does (fhir-mapping.md §4) |
//! |---|---|
//! | [`StatusClass::Invalid`] | the value is not a valid measurement: no `final` Observation |
//! | [`StatusClass::NotForUpload`] | test / demonstration data, control solution: never uploaded |
//! | [`StatusClass::Interpretation`] | valid but qualified: `interpretation` with a [`MeasurementStatus`] code |
//! | [`StatusClass::BpMeasurementStatus`] | one `component` of the MDC 8410608 Observation ([`BpStatusBit`], fhir-mapping.md §1) |
//! | [`StatusClass::ClockUnreliable`] | the device's timestamp must not be used as is |
//! | [`StatusClass::FromMemory`] | the record was stored by the device and sent later |
//! | [`StatusClass::Informational`] | kept with the reading, changes nothing clinically |
//!
//! # Wire form
//! A status serialises, in every serde format (JSON for the vectors and `vitalgate decode`,
//! postcard in the agent's store), as exactly the snake_case string decoders emitted before this
//! type existed (`"sensor_off"`, `"implausible_spo2"`, `"quirk_beurer_bm85"`), and sorts by that
//! string, so the decoded JSON of every vector and the agent's content ids are unchanged. Parsing
//! ([`str::parse`], serde) accepts exactly the strings [`Status::as_str`] produces; anything else
//! is an [`UnknownStatus`] error.
//!
//! # Generic device files: only known statuses
//! The configurable line parser (`serial::generic`) lets a technician attach a flag to a rule.
//! That name must be a known status: the file is refused at load with `file:line:col` and the
//! list of known names (like an unknown unit or reading type). We chose this over a free-form
//! `Vendor(String)` variant because a free name would have to be classed `Informational`, so a
//! technician who writes `sensor_error` meaning "do not use this value" would get the value
//! uploaded as a `final` Observation, silently. With a closed vocabulary every status's clinical
//! meaning is decided once, here, with its source; a device needing a new status gets a new
//! variant and a row in the table below. The flags of the shipped device files and vectors
//! (`unstable`, `overload`, `count_mode`, `spo2_fast`, `event_marker`) are variants.
//!
//! # The table
//! Sources: GATT = Bluetooth SIG GATT Specification Supplement as summarised in gatt-profiles.md
//! (§4 BP, §5 weight / body composition, §7 PLX, §8 glucose, §9 heart rate); Nonin / Masimo =
//! serial-protocols.md §1, §2; PoCD = `http://hl7.org/fhir/uv/pocd/CodeSystem/measurement-status`
//! (7 codes: `questionable`, `calibration-ongoing`, `validated-data`, `early-indication`,
//! `msmt-ongoing`, `in-alarm`, `alarm-inhibited`; PoCD ballot 3 moves the same codes to
//! `http://terminology.hl7.org/CodeSystem/measurement-status`). "no code" = no PoCD code fits,
//! so the status is informational (the brief's rule) unless it blocks the value.
//!
//! | string | variant | class | PoCD code / BP bit | source, reason |
//! |---|---|---|---|---|
//! | `device_time_invalid` | `DeviceTimeInvalid` | ClockUnreliable | | GATT Date Time unknown / out of range |
//! | `unknown_user` | `UnknownUser` | Informational | | GATT user id 0xFF; attribution refuses it (no user index) |
//! | `trailing_octets` | `TrailingOctets` | Informational | | GATT octets after the announced fields |
//! | `body_movement` | `BodyMovement` | BpMeasurementStatus | 8410608.0 body-movement | GATT BP status bit 0 |
//! | `cuff_too_loose` | `CuffTooLoose` | BpMeasurementStatus | 8410608.1 cuff-too-loose | GATT BP status bit 1 |
//! | `irregular_pulse` | `IrregularPulse` | BpMeasurementStatus | 8410608.2 irregular-pulse | GATT BP status bit 2 |
//! | `pulse_rate_exceeds_upper_limit` | `PulseRateExceedsUpperLimit` | BpMeasurementStatus | 8410608.3 pulse-over-range-limit | GATT BP status bits 4..3 = 1 |
//! | `pulse_rate_below_lower_limit` | `PulseRateBelowLowerLimit` | BpMeasurementStatus | 8410608.4 pulse-under-range-limit | GATT BP status bits 4..3 = 2 |
//! | `improper_position` | `ImproperPosition` | BpMeasurementStatus | 8410608.5 improper-body-position | GATT BP status bit 5 |
//! | `pulse_rate_range_reserved` | `PulseRateRangeReserved` | Informational | | GATT BP status bits 4..3 = 3 (reserved value, no meaning) |
//! | `measurement_unsuccessful` | `MeasurementUnsuccessful` | Invalid | | GATT weight 0xFFFF / body fat 0xFFFF |
//! | `multiple_packet` | `MultiplePacket` | Informational | | GATT body composition flag bit 12 |
//! | `device_clock_not_set` | `DeviceClockNotSet` | ClockUnreliable | | GATT PLX spot-check flag bit 4 |
//! | `measurement_ongoing` | `MeasurementOngoing` | Interpretation | `msmt-ongoing` | GATT PLX measurement status bit 5 |
//! | `early_estimated_data` | `EarlyEstimatedData` | Interpretation | `early-indication` | PLX bit 6; fhir-mapping §4: `status` `preliminary` |
//! | `validated_data` | `ValidatedData` | Interpretation | `validated-data` | PLX bit 7 |
//! | `fully_qualified_data` | `FullyQualifiedData` | Informational | no code | PLX bit 8 |
//! | `data_from_measurement_storage` | `DataFromMeasurementStorage` | FromMemory | | PLX bit 9 |
//! | `data_for_demonstration` | `DataForDemonstration` | NotForUpload | | PLX bit 10; gatt-profiles §7 "do not upload" |
//! | `data_for_testing` | `DataForTesting` | NotForUpload | | PLX bit 11; fhir-mapping §4 "test data: do not upload" |
//! | `calibration_ongoing` | `CalibrationOngoing` | Interpretation | `calibration-ongoing` | PLX bit 12 |
//! | `measurement_unavailable` | `MeasurementUnavailable` | Invalid | | PLX bit 13; gatt-profiles §7 "do not upload" |
//! | `questionable_measurement_detected` | `QuestionableMeasurementDetected` | Interpretation | `questionable` | PLX bit 14; fhir-mapping §4 (gatt-profiles §7 is stricter: "do not upload") |
//! | `invalid_measurement_detected` | `InvalidMeasurementDetected` | Invalid | | PLX bit 15 |
//! | `extended_display_update_ongoing` | `ExtendedDisplayUpdateOngoing` | Informational | no code | PLX device & sensor status bit 0 (display refresh) |
//! | `equipment_malfunction_detected` | `EquipmentMalfunctionDetected` | Invalid | | PLX D&S bit 1 |
//! | `signal_processing_irregularity_detected` | `SignalProcessingIrregularityDetected` | Interpretation | `questionable` | PLX D&S bit 2 |
//! | `inadequate_signal_detected` | `InadequateSignalDetected` | Invalid | | PLX D&S bit 3: signal inadequate for a measurement |
//! | `poor_signal_detected` | `PoorSignalDetected` | Interpretation | `questionable` | PLX D&S bit 4 |
//! | `low_perfusion_detected` | `LowPerfusionDetected` | Interpretation | `questionable` | PLX D&S bit 5 |
//! | `erratic_signal_detected` | `ErraticSignalDetected` | Interpretation | `questionable` | PLX D&S bit 6 |
//! | `nonpulsatile_signal_detected` | `NonpulsatileSignalDetected` | Invalid | | PLX D&S bit 7: no pulse, so no SpO2 / pulse rate (like Masimo `pulse_search`) |
//! | `questionable_pulse_detected` | `QuestionablePulseDetected` | Interpretation | `questionable` | PLX D&S bit 8 |
//! | `signal_analysis_ongoing` | `SignalAnalysisOngoing` | Interpretation | `msmt-ongoing` | PLX D&S bit 9 |
//! | `sensor_interference_detected` | `SensorInterferenceDetected` | Interpretation | `questionable` | PLX D&S bit 10 |
//! | `sensor_unconnected_to_user` | `SensorUnconnectedToUser` | Invalid | | PLX D&S bit 11 |
//! | `unknown_sensor_connected` | `UnknownSensorConnected` | Invalid | | PLX D&S bit 12 (like Masimo `unrecognized_sensor`) |
//! | `sensor_displaced` | `SensorDisplaced` | Invalid | | PLX D&S bit 13 (like Masimo `sensor_off`) |
//! | `sensor_malfunctioning` | `SensorMalfunctioning` | Invalid | | PLX D&S bit 14 |
//! | `sensor_disconnected` | `SensorDisconnected` | Invalid | | PLX D&S bit 15 |
//! | `control_solution` | `ControlSolution` | NotForUpload | | GATT glucose type 10 / location 4; fhir-mapping §1 "do not upload" |
//! | `context_follows` | `ContextFollows` | Informational | | GATT glucose flag bit 4 |
//! | `device_battery_low` | `DeviceBatteryLow` | Informational | | GATT glucose annunciation bit 0 |
//! | `sensor_malfunction` | `SensorMalfunction` | Invalid | | glucose annunciation bit 1 |
//! | `sample_size_insufficient` | `SampleSizeInsufficient` | Invalid | | bit 2 |
//! | `strip_insertion_error` | `StripInsertionError` | Invalid | | bit 3 |
//! | `strip_type_incorrect` | `StripTypeIncorrect` | Invalid | | bit 4 |
//! | `result_higher_than_device_can_process` | `ResultHigherThanDeviceCanProcess` | Invalid | | bit 5 |
//! | `result_lower_than_device_can_process` | `ResultLowerThanDeviceCanProcess` | Invalid | | bit 6 |
//! | `sensor_temperature_too_high` | `SensorTemperatureTooHigh` | Invalid | | bit 7: outside the meter's operating conditions, accuracy not specified |
//! | `sensor_temperature_too_low` | `SensorTemperatureTooLow` | Invalid | | bit 8: as bit 7 |
//! | `sensor_read_interrupted` | `SensorReadInterrupted` | Invalid | | bit 9 (strip pulled) |
//! | `general_device_fault` | `GeneralDeviceFault` | Invalid | | bit 10 |
//! | `time_fault` | `TimeFault` | ClockUnreliable | | bit 11 |
//! | `sensor_contact_not_detected` | `SensorContactNotDetected` | Invalid | | GATT heart rate contact status 2: strap not on the skin |
//! | `sensor_disconnect` | `SensorDisconnect` | Invalid | | Nonin DF2/DF7 SNSD; serial-protocols §1.2 policy (a) |
//! | `artifact` | `Artifact` | Invalid | | Nonin DF2/DF7/DF8 ARTF |
//! | `out_of_track` | `OutOfTrack` | Invalid | | Nonin OOT: no consecutive good pulses |
//! | `sensor_alarm` | `SensorAlarm` | Invalid | | Nonin SNSA "unusable data"; §1.2 policy (a) |
//! | `low_perfusion` | `LowPerfusion` | Interpretation | `questionable` | Nonin DF8 LPRF, Masimo EXC 0x004 |
//! | `marginal_perfusion` | `MarginalPerfusion` | Interpretation | `questionable` | Nonin DF8 MPRF |
//! | `smartpoint` | `Smartpoint` | Informational | | Nonin SPA: a high-quality spot measurement |
//! | `low_battery` | `LowBattery` | Informational | | Nonin LOW BAT |
//! | `no_measurement` | `NoMeasurement` | Invalid | | Nonin DF13 NOMS |
//! | `from_memory` | `FromMemory` | FromMemory | | Nonin DF13 MEM |
//! | `no_sensor` | `NoSensor` | Invalid | | Masimo EXC 0x001; serial-protocols §2.5 policy |
//! | `defective_sensor` | `DefectiveSensor` | Invalid | | Masimo EXC 0x002; §2.5 |
//! | `pulse_search` | `PulseSearch` | Invalid | | Masimo EXC 0x008; §2.5 |
//! | `interference` | `Interference` | Interpretation | `questionable` | Masimo EXC 0x010 |
//! | `sensor_off` | `SensorOff` | Invalid | | Masimo EXC 0x020; §2.5 |
//! | `ambient_light` | `AmbientLight` | Interpretation | `questionable` | Masimo EXC 0x040 |
//! | `unrecognized_sensor` | `UnrecognizedSensor` | Invalid | | Masimo EXC 0x080; §2.5 |
//! | `low_signal_iq` | `LowSignalIq` | Interpretation | `questionable` | Masimo EXC 0x400: low confidence in the value |
//! | `masimo_set` | `MasimoSet` | Informational | | Masimo EXC 0x800: normal (full SET mode) |
//! | `exc_other` | `ExcOther` | Interpretation | `questionable` | Masimo undocumented EXC bits: an exception whose meaning is unknown |
//! | `unstable` | `Unstable` | Invalid | | generic device files (A&D `US`): the weight had not settled |
//! | `overload` | `Overload` | Invalid | | generic device files (A&D `OL`): above the scale's capacity |
//! | `count_mode` | `CountMode` | Invalid | | generic device files (A&D `QT`): a piece count, not a weight |
//! | `spo2_fast` | `Spo2Fast` | Informational | no code | generic device files (Nonin ASCII ` F`): fast-responding mode |
//! | `event_marker` | `EventMarker` | Informational | | generic device files (Nonin ASCII `*`): event button pressed |
//! | `implausible_<type>` | `Implausible(ReadingType)` | Interpretation | `questionable` | `gatt::plausibility`: outside the configured physiological range; kept, qualified |
//! | `quirk_<id>` | `Quirk(QuirkId)` | Informational | | `gatt::quirks`: decoded by a vendor-quirk decoder |

use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::gatt::quirks::QuirkId;
use crate::record::ReadingType;

/// Declares [`Status`] from one row per fixed-name status, so a variant and its string are
/// written once, and [`Status::FIXED`] lists them all (parsing walks that list).
macro_rules! statuses {
    ($( $(#[doc = $doc:literal])* $variant:ident = $name:literal, )*) => {
        /// One thing a device reported about a measurement. See the module doc for the table of
        /// strings, classes and sources.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum Status {
            $( $(#[doc = $doc])* $variant, )*
            /// `implausible_<reading type>`: outside the configured plausibility range
            /// (`gatt::plausibility`).
            Implausible(ReadingType),
            /// `quirk_<id>`: decoded by the vendor-quirk decoder of that profile (`gatt::quirks`).
            Quirk(QuirkId),
        }

        impl Status {
            /// Every status with a fixed name (all but [`Status::Implausible`] and
            /// [`Status::Quirk`]), in declaration order.
            pub const FIXED: &'static [Status] = &[ $( Status::$variant, )* ];

            /// The snake_case name: exactly the string decoders emitted before this type
            /// existed. It is the wire form (JSON, postcard), the [`Display`](fmt::Display) form
            /// and the sort key.
            pub fn as_str(self) -> &'static str {
                match self {
                    $( Status::$variant => $name, )*
                    Status::Implausible(t) => implausible_name(t),
                    Status::Quirk(q) => quirk_name(q),
                }
            }
        }
    };
}

statuses! {
    // ---- GATT, shared by several profiles
    /// Date Time field unknown (year/month/day 0) or out of range.
    DeviceTimeInvalid = "device_time_invalid",
    /// User ID 0xFF ("unknown user").
    UnknownUser = "unknown_user",
    /// Octets after the last field the flags announce.
    TrailingOctets = "trailing_octets",
    // ---- GATT Blood Pressure Measurement status
    /// BP status bit 0: body movement during measurement.
    BodyMovement = "body_movement",
    /// BP status bit 1: cuff fit too loose.
    CuffTooLoose = "cuff_too_loose",
    /// BP status bit 2: irregular pulse detected.
    IrregularPulse = "irregular_pulse",
    /// BP status bits 4..3 = 1: pulse rate exceeds the upper limit.
    PulseRateExceedsUpperLimit = "pulse_rate_exceeds_upper_limit",
    /// BP status bits 4..3 = 2: pulse rate below the lower limit.
    PulseRateBelowLowerLimit = "pulse_rate_below_lower_limit",
    /// BP status bits 4..3 = 3 (reserved value).
    PulseRateRangeReserved = "pulse_rate_range_reserved",
    /// BP status bit 5: improper measurement position.
    ImproperPosition = "improper_position",
    // ---- GATT Weight / Body Composition
    /// Weight or body fat 0xFFFF: "measurement unsuccessful".
    MeasurementUnsuccessful = "measurement_unsuccessful",
    /// Body composition flag bit 12: the measurement continues in another packet.
    MultiplePacket = "multiple_packet",
    // ---- GATT PLX flags and Measurement Status
    /// PLX spot-check flag bit 4: the device clock is not set.
    DeviceClockNotSet = "device_clock_not_set",
    /// PLX measurement status bit 5.
    MeasurementOngoing = "measurement_ongoing",
    /// PLX measurement status bit 6.
    EarlyEstimatedData = "early_estimated_data",
    /// PLX measurement status bit 7.
    ValidatedData = "validated_data",
    /// PLX measurement status bit 8.
    FullyQualifiedData = "fully_qualified_data",
    /// PLX measurement status bit 9.
    DataFromMeasurementStorage = "data_from_measurement_storage",
    /// PLX measurement status bit 10.
    DataForDemonstration = "data_for_demonstration",
    /// PLX measurement status bit 11.
    DataForTesting = "data_for_testing",
    /// PLX measurement status bit 12.
    CalibrationOngoing = "calibration_ongoing",
    /// PLX measurement status bit 13.
    MeasurementUnavailable = "measurement_unavailable",
    /// PLX measurement status bit 14.
    QuestionableMeasurementDetected = "questionable_measurement_detected",
    /// PLX measurement status bit 15.
    InvalidMeasurementDetected = "invalid_measurement_detected",
    // ---- GATT PLX Device and Sensor Status
    /// PLX device and sensor status bit 0.
    ExtendedDisplayUpdateOngoing = "extended_display_update_ongoing",
    /// PLX device and sensor status bit 1.
    EquipmentMalfunctionDetected = "equipment_malfunction_detected",
    /// PLX device and sensor status bit 2.
    SignalProcessingIrregularityDetected = "signal_processing_irregularity_detected",
    /// PLX device and sensor status bit 3.
    InadequateSignalDetected = "inadequate_signal_detected",
    /// PLX device and sensor status bit 4.
    PoorSignalDetected = "poor_signal_detected",
    /// PLX device and sensor status bit 5.
    LowPerfusionDetected = "low_perfusion_detected",
    /// PLX device and sensor status bit 6.
    ErraticSignalDetected = "erratic_signal_detected",
    /// PLX device and sensor status bit 7.
    NonpulsatileSignalDetected = "nonpulsatile_signal_detected",
    /// PLX device and sensor status bit 8.
    QuestionablePulseDetected = "questionable_pulse_detected",
    /// PLX device and sensor status bit 9.
    SignalAnalysisOngoing = "signal_analysis_ongoing",
    /// PLX device and sensor status bit 10.
    SensorInterferenceDetected = "sensor_interference_detected",
    /// PLX device and sensor status bit 11.
    SensorUnconnectedToUser = "sensor_unconnected_to_user",
    /// PLX device and sensor status bit 12.
    UnknownSensorConnected = "unknown_sensor_connected",
    /// PLX device and sensor status bit 13.
    SensorDisplaced = "sensor_displaced",
    /// PLX device and sensor status bit 14.
    SensorMalfunctioning = "sensor_malfunctioning",
    /// PLX device and sensor status bit 15.
    SensorDisconnected = "sensor_disconnected",
    // ---- GATT Glucose
    /// Sample type 10 or sample location 4: a control-solution test, not a patient.
    ControlSolution = "control_solution",
    /// Glucose flag bit 4: a Glucose Measurement Context follows.
    ContextFollows = "context_follows",
    /// Glucose sensor status annunciation bit 0.
    DeviceBatteryLow = "device_battery_low",
    /// Glucose sensor status annunciation bit 1.
    SensorMalfunction = "sensor_malfunction",
    /// Glucose sensor status annunciation bit 2.
    SampleSizeInsufficient = "sample_size_insufficient",
    /// Glucose sensor status annunciation bit 3.
    StripInsertionError = "strip_insertion_error",
    /// Glucose sensor status annunciation bit 4.
    StripTypeIncorrect = "strip_type_incorrect",
    /// Glucose sensor status annunciation bit 5.
    ResultHigherThanDeviceCanProcess = "result_higher_than_device_can_process",
    /// Glucose sensor status annunciation bit 6.
    ResultLowerThanDeviceCanProcess = "result_lower_than_device_can_process",
    /// Glucose sensor status annunciation bit 7.
    SensorTemperatureTooHigh = "sensor_temperature_too_high",
    /// Glucose sensor status annunciation bit 8.
    SensorTemperatureTooLow = "sensor_temperature_too_low",
    /// Glucose sensor status annunciation bit 9 (strip pulled too soon).
    SensorReadInterrupted = "sensor_read_interrupted",
    /// Glucose sensor status annunciation bit 10.
    GeneralDeviceFault = "general_device_fault",
    /// Glucose sensor status annunciation bit 11.
    TimeFault = "time_fault",
    // ---- GATT Heart Rate
    /// Heart rate sensor contact supported but not detected.
    SensorContactNotDetected = "sensor_contact_not_detected",
    // ---- Nonin (DF2, DF7, DF8, DF13)
    /// DF2/DF7 status bit 6 (SNSD, OEM III / Xpod).
    SensorDisconnect = "sensor_disconnect",
    /// DF2/DF7 status bit 5, DF8 byte 1 bit 2 (ARTF).
    Artifact = "artifact",
    /// DF2/DF7 status bit 4, DF8 byte 1 bit 5 (OOT).
    OutOfTrack = "out_of_track",
    /// DF2/DF7 status bit 3, DF8 STAT2 bit 3 (SNSA).
    SensorAlarm = "sensor_alarm",
    /// DF8 byte 1 bit 4 (LPRF); Masimo EXC 0x004.
    LowPerfusion = "low_perfusion",
    /// DF8 byte 1 bit 3 (MPRF).
    MarginalPerfusion = "marginal_perfusion",
    /// STAT2 / DF8 / DF13 SPA: high-quality SmartPoint measurement.
    Smartpoint = "smartpoint",
    /// STAT2 / DF8 / DF13 LOW BAT.
    LowBattery = "low_battery",
    /// DF13 NOMS.
    NoMeasurement = "no_measurement",
    /// DF13 MEM: a stored reading forwarded later.
    FromMemory = "from_memory",
    // ---- Masimo EXC bits
    /// EXC 0x001.
    NoSensor = "no_sensor",
    /// EXC 0x002.
    DefectiveSensor = "defective_sensor",
    /// EXC 0x008.
    PulseSearch = "pulse_search",
    /// EXC 0x010.
    Interference = "interference",
    /// EXC 0x020 (sensor off the patient).
    SensorOff = "sensor_off",
    /// EXC 0x040.
    AmbientLight = "ambient_light",
    /// EXC 0x080.
    UnrecognizedSensor = "unrecognized_sensor",
    /// EXC 0x400.
    LowSignalIq = "low_signal_iq",
    /// EXC 0x800: full SET mode (normal operation).
    MasimoSet = "masimo_set",
    /// Any EXC bit without a documented meaning.
    ExcOther = "exc_other",
    // ---- Flags of the shipped generic device files (config/devices, the vectors)
    /// A&D `US`: unstable weight.
    Unstable = "unstable",
    /// A&D `OL`: overload.
    Overload = "overload",
    /// A&D `QT`: piece-count mode.
    CountMode = "count_mode",
    /// Nonin real-time ASCII ` F`: fast-responding SpO2 mode.
    Spo2Fast = "spo2_fast",
    /// Nonin real-time ASCII `*`: event marker.
    EventMarker = "event_marker",
}

impl Status {
    /// Every status: the fixed ones, then `implausible_<type>` for every reading type, then
    /// `quirk_<id>` for every quirk profile.
    pub fn all() -> impl Iterator<Item = Status> {
        Self::FIXED
            .iter()
            .copied()
            .chain(ReadingType::ALL.into_iter().map(Status::Implausible))
            .chain(QuirkId::ALL.into_iter().map(Status::Quirk))
    }

    /// What the status means for the reading. The table and its sources are in the module doc.
    pub fn class(self) -> StatusClass {
        use MeasurementStatus as M;
        use Status::*;
        use StatusClass as C;
        match self {
            // The value is not a valid measurement.
            MeasurementUnsuccessful
            | MeasurementUnavailable
            | InvalidMeasurementDetected
            | EquipmentMalfunctionDetected
            | InadequateSignalDetected
            | NonpulsatileSignalDetected
            | SensorUnconnectedToUser
            | UnknownSensorConnected
            | SensorDisplaced
            | SensorMalfunctioning
            | SensorDisconnected
            | SensorMalfunction
            | SampleSizeInsufficient
            | StripInsertionError
            | StripTypeIncorrect
            | ResultHigherThanDeviceCanProcess
            | ResultLowerThanDeviceCanProcess
            | SensorTemperatureTooHigh
            | SensorTemperatureTooLow
            | SensorReadInterrupted
            | GeneralDeviceFault
            | SensorContactNotDetected
            | SensorDisconnect
            | Artifact
            | OutOfTrack
            | SensorAlarm
            | NoMeasurement
            | NoSensor
            | DefectiveSensor
            | PulseSearch
            | SensorOff
            | UnrecognizedSensor
            | Unstable
            | Overload
            | CountMode => C::Invalid,

            // Not patient data.
            DataForDemonstration | DataForTesting | ControlSolution => C::NotForUpload,

            // Valid but qualified: PoCD measurement-status interpretation.
            MeasurementOngoing | SignalAnalysisOngoing => C::Interpretation(M::MsmtOngoing),
            EarlyEstimatedData => C::Interpretation(M::EarlyIndication),
            ValidatedData => C::Interpretation(M::ValidatedData),
            CalibrationOngoing => C::Interpretation(M::CalibrationOngoing),
            QuestionableMeasurementDetected
            | SignalProcessingIrregularityDetected
            | PoorSignalDetected
            | LowPerfusionDetected
            | ErraticSignalDetected
            | QuestionablePulseDetected
            | SensorInterferenceDetected
            | LowPerfusion
            | MarginalPerfusion
            | Interference
            | AmbientLight
            | LowSignalIq
            | ExcOther
            | Implausible(_) => C::Interpretation(M::Questionable),

            // Components of the MDC 8410608 BP measurement-status Observation.
            BodyMovement => C::BpMeasurementStatus(BpStatusBit::BodyMovement),
            CuffTooLoose => C::BpMeasurementStatus(BpStatusBit::CuffTooLoose),
            IrregularPulse => C::BpMeasurementStatus(BpStatusBit::IrregularPulse),
            PulseRateExceedsUpperLimit => C::BpMeasurementStatus(BpStatusBit::PulseOverRangeLimit),
            PulseRateBelowLowerLimit => C::BpMeasurementStatus(BpStatusBit::PulseUnderRangeLimit),
            ImproperPosition => C::BpMeasurementStatus(BpStatusBit::ImproperBodyPosition),

            DeviceTimeInvalid | DeviceClockNotSet | TimeFault => C::ClockUnreliable,

            DataFromMeasurementStorage | FromMemory => C::FromMemory,

            UnknownUser
            | TrailingOctets
            | PulseRateRangeReserved
            | MultiplePacket
            | FullyQualifiedData
            | ExtendedDisplayUpdateOngoing
            | ContextFollows
            | DeviceBatteryLow
            | Smartpoint
            | LowBattery
            | MasimoSet
            | Spo2Fast
            | EventMarker
            | Quirk(_) => C::Informational,
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Sorted by name, so `Record::flags` keeps the order (and JSON) of the strings it replaced.
impl Ord for Status {
    fn cmp(&self, other: &Self) -> Ordering {
        self.as_str().cmp(other.as_str())
    }
}

impl PartialOrd for Status {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// A string that is not the name of any [`Status`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown status `{0}`")]
pub struct UnknownStatus(pub String);

impl FromStr for Status {
    type Err = UnknownStatus;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(st) = Self::FIXED.iter().find(|st| st.as_str() == s) {
            return Ok(*st);
        }
        if let Some(t) = s
            .strip_prefix("implausible_")
            .and_then(ReadingType::from_name)
        {
            return Ok(Status::Implausible(t));
        }
        if let Some(q) = s.strip_prefix("quirk_").and_then(QuirkId::from_name) {
            return Ok(Status::Quirk(q));
        }
        Err(UnknownStatus(s.to_string()))
    }
}

/// The name as a string in every format (JSON, postcard), never an enum index: stored readings
/// stay readable when variants are added or reordered.
impl Serialize for Status {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Status {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Status;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a device status name")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Status, E> {
                v.parse().map_err(E::custom)
            }
        }
        d.deserialize_str(Visitor)
    }
}

/// `implausible_<type>` as a `&'static str` (so [`Status::as_str`] borrows nothing). The match is
/// exhaustive: a new [`ReadingType`] does not compile until it has its name here, and
/// `implausible_and_quirk_names_are_prefix_and_id` checks every spelling.
fn implausible_name(t: ReadingType) -> &'static str {
    match t {
        ReadingType::SystolicPressure => "implausible_systolic_pressure",
        ReadingType::DiastolicPressure => "implausible_diastolic_pressure",
        ReadingType::MeanArterialPressure => "implausible_mean_arterial_pressure",
        ReadingType::PulseRate => "implausible_pulse_rate",
        ReadingType::HeartRate => "implausible_heart_rate",
        ReadingType::Spo2 => "implausible_spo2",
        ReadingType::PerfusionIndex => "implausible_perfusion_index",
        ReadingType::Spco => "implausible_spco",
        ReadingType::Spmet => "implausible_spmet",
        ReadingType::Sphb => "implausible_sphb",
        ReadingType::Pvi => "implausible_pvi",
        ReadingType::BodyWeight => "implausible_body_weight",
        ReadingType::BodyHeight => "implausible_body_height",
        ReadingType::Bmi => "implausible_bmi",
        ReadingType::BodyFatPercentage => "implausible_body_fat_percentage",
        ReadingType::BodyTemperature => "implausible_body_temperature",
        ReadingType::BloodGlucose => "implausible_blood_glucose",
        ReadingType::RespiratoryRate => "implausible_respiratory_rate",
    }
}

/// `quirk_<id>` as a `&'static str`; exhaustive like [`implausible_name`].
fn quirk_name(q: QuirkId) -> &'static str {
    match q {
        QuirkId::Standard => "quirk_standard",
        QuirkId::BeurerBm85 => "quirk_beurer_bm85",
        QuirkId::OmronBpm => "quirk_omron_bpm",
        QuirkId::AndMedical => "quirk_and_medical",
        QuirkId::XiaomiMibfs => "quirk_xiaomi_mibfs",
        QuirkId::AscensiaContour => "quirk_ascensia_contour",
    }
}

/// What a [`Status`] means for the reading it is attached to (see the module doc).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StatusClass {
    /// The value is not a valid measurement. Never a `final` Observation.
    Invalid,
    /// Not patient data (test / demonstration data, control solution). Never uploaded.
    NotForUpload,
    /// A valid value with a qualifier for `Observation.interpretation`.
    Interpretation(MeasurementStatus),
    /// A bit of the BP measurement status: a component of the MDC 8410608 Observation.
    BpMeasurementStatus(BpStatusBit),
    /// The device's clock or timestamp is not trustworthy.
    ClockUnreliable,
    /// The device stored the record and sent it later.
    FromMemory,
    /// Kept with the reading; no clinical consequence.
    Informational,
}

/// A code of the HL7 PoCD measurement-status code system (ISO/IEEE 11073-10201 DIM
/// MeasurementStatus), for `Observation.interpretation`. All seven codes of the code system.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MeasurementStatus {
    Questionable,
    CalibrationOngoing,
    ValidatedData,
    EarlyIndication,
    MsmtOngoing,
    InAlarm,
    AlarmInhibited,
}

impl MeasurementStatus {
    /// The code system (fhir-mapping.md §4).
    pub const SYSTEM: &'static str = "http://hl7.org/fhir/uv/pocd/CodeSystem/measurement-status";

    /// The code.
    pub fn code(self) -> &'static str {
        match self {
            Self::Questionable => "questionable",
            Self::CalibrationOngoing => "calibration-ongoing",
            Self::ValidatedData => "validated-data",
            Self::EarlyIndication => "early-indication",
            Self::MsmtOngoing => "msmt-ongoing",
            Self::InAlarm => "in-alarm",
            Self::AlarmInhibited => "alarm-inhibited",
        }
    }

    /// The code system's display.
    pub fn display(self) -> &'static str {
        match self {
            Self::Questionable => "Questionable",
            Self::CalibrationOngoing => "Calibration ongoing",
            Self::ValidatedData => "Validated data",
            Self::EarlyIndication => "Early indication",
            Self::MsmtOngoing => "Measurement ongoing",
            Self::InAlarm => "Measurement in alarm",
            Self::AlarmInhibited => "Measurement alarms inhibited",
        }
    }
}

/// A bit of MDC 8410608 MDC_BLOOD_PRESSURE_MEASUREMENT_STATUS (fhir-mapping.md §1): each set bit
/// is one `component` (`valueBoolean`) of the BP measurement-status Observation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum BpStatusBit {
    BodyMovement,
    CuffTooLoose,
    IrregularPulse,
    PulseOverRangeLimit,
    PulseUnderRangeLimit,
    ImproperBodyPosition,
}

impl BpStatusBit {
    /// The component code system.
    pub const SYSTEM: &'static str = "http://terminology.hl7.org/CodeSystem/ASN1ToHL7";

    /// The bit number (0..=5).
    pub fn bit(self) -> u8 {
        match self {
            Self::BodyMovement => 0,
            Self::CuffTooLoose => 1,
            Self::IrregularPulse => 2,
            Self::PulseOverRangeLimit => 3,
            Self::PulseUnderRangeLimit => 4,
            Self::ImproperBodyPosition => 5,
        }
    }

    /// The ASN1ToHL7 code, `8410608.<bit>`.
    pub fn code(self) -> &'static str {
        match self {
            Self::BodyMovement => "8410608.0",
            Self::CuffTooLoose => "8410608.1",
            Self::IrregularPulse => "8410608.2",
            Self::PulseOverRangeLimit => "8410608.3",
            Self::PulseUnderRangeLimit => "8410608.4",
            Self::ImproperBodyPosition => "8410608.5",
        }
    }

    /// The ASN1ToHL7 display.
    pub fn display(self) -> &'static str {
        match self {
            Self::BodyMovement => "body-movement",
            Self::CuffTooLoose => "cuff-too-loose",
            Self::IrregularPulse => "irregular-pulse",
            Self::PulseOverRangeLimit => "pulse-over-range-limit",
            Self::PulseUnderRangeLimit => "pulse-under-range-limit",
            Self::ImproperBodyPosition => "improper-body-position",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn every_status_round_trips_through_its_name() {
        let mut n = 0;
        for s in Status::all() {
            let name = s.as_str();
            assert_eq!(name, s.to_string());
            assert_eq!(name.parse::<Status>(), Ok(s), "{name}");
            let json = serde_json::to_string(&s).unwrap();
            assert_eq!(json, format!("\"{name}\""));
            assert_eq!(serde_json::from_str::<Status>(&json).unwrap(), s);
            n += 1;
        }
        assert_eq!(
            n,
            Status::FIXED.len() + ReadingType::ALL.len() + QuirkId::ALL.len()
        );
    }

    #[test]
    fn implausible_and_quirk_names_are_prefix_and_id() {
        for t in ReadingType::ALL {
            let s = Status::Implausible(t);
            assert_eq!(s.as_str(), format!("implausible_{}", t.as_str()));
        }
        for q in QuirkId::ALL {
            assert_eq!(Status::Quirk(q).as_str(), format!("quirk_{}", q.as_str()));
        }
    }

    #[test]
    fn names_are_unique_snake_case() {
        let names: BTreeSet<String> = Status::all().map(|s| s.to_string()).collect();
        assert_eq!(names.len(), Status::all().count());
        for n in &names {
            assert!(
                !n.is_empty()
                    && n.bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
                "{n}"
            );
        }
    }

    #[test]
    fn statuses_sort_like_their_names() {
        let mut by_status: Vec<Status> = Status::all().collect();
        by_status.sort();
        let mut by_name: Vec<String> = Status::all().map(|s| s.to_string()).collect();
        by_name.sort();
        let sorted: Vec<String> = by_status.iter().map(|s| s.to_string()).collect();
        assert_eq!(sorted, by_name);
    }

    #[test]
    fn unknown_names_are_refused() {
        for bad in [
            "",
            "sensor_error",
            "Sensor_Off",
            "sensor_off ",
            "implausible_",
            "implausible_weight",
            "quirk_",
            "quirk_acme",
        ] {
            assert_eq!(bad.parse::<Status>(), Err(UnknownStatus(bad.to_string())));
            let json = serde_json::to_string(bad).unwrap();
            let err = serde_json::from_str::<Status>(&json).unwrap_err();
            assert!(err.to_string().contains("unknown status"), "{err}");
        }
    }

    #[test]
    fn the_flags_uploaded_as_final_before_are_invalid_or_not_for_upload() {
        assert_eq!(Status::DataForTesting.class(), StatusClass::NotForUpload);
        for s in [
            "invalid_measurement_detected",
            "sensor_disconnected",
            "sensor_malfunction",
            "result_higher_than_device_can_process",
            "measurement_unsuccessful",
            "defective_sensor",
            "out_of_track",
            "artifact",
        ] {
            let st: Status = s.parse().unwrap();
            assert_eq!(st.class(), StatusClass::Invalid, "{s}");
        }
    }

    #[test]
    fn class_table() {
        use MeasurementStatus as M;
        use StatusClass::*;
        let expected: &[(&str, StatusClass)] = &[
            ("data_for_demonstration", NotForUpload),
            ("control_solution", NotForUpload),
            ("sensor_alarm", Invalid),
            ("sensor_disconnect", Invalid),
            ("sensor_off", Invalid),
            ("no_sensor", Invalid),
            ("no_measurement", Invalid),
            ("pulse_search", Invalid),
            ("unrecognized_sensor", Invalid),
            ("measurement_unavailable", Invalid),
            ("sensor_unconnected_to_user", Invalid),
            ("equipment_malfunction_detected", Invalid),
            ("strip_insertion_error", Invalid),
            ("sample_size_insufficient", Invalid),
            ("result_lower_than_device_can_process", Invalid),
            ("sensor_contact_not_detected", Invalid),
            ("unstable", Invalid),
            ("overload", Invalid),
            (
                "questionable_measurement_detected",
                Interpretation(M::Questionable),
            ),
            (
                "questionable_pulse_detected",
                Interpretation(M::Questionable),
            ),
            ("low_perfusion", Interpretation(M::Questionable)),
            ("low_perfusion_detected", Interpretation(M::Questionable)),
            ("implausible_spo2", Interpretation(M::Questionable)),
            ("calibration_ongoing", Interpretation(M::CalibrationOngoing)),
            ("early_estimated_data", Interpretation(M::EarlyIndication)),
            ("measurement_ongoing", Interpretation(M::MsmtOngoing)),
            ("validated_data", Interpretation(M::ValidatedData)),
            (
                "body_movement",
                BpMeasurementStatus(BpStatusBit::BodyMovement),
            ),
            (
                "cuff_too_loose",
                BpMeasurementStatus(BpStatusBit::CuffTooLoose),
            ),
            (
                "irregular_pulse",
                BpMeasurementStatus(BpStatusBit::IrregularPulse),
            ),
            (
                "pulse_rate_exceeds_upper_limit",
                BpMeasurementStatus(BpStatusBit::PulseOverRangeLimit),
            ),
            (
                "pulse_rate_below_lower_limit",
                BpMeasurementStatus(BpStatusBit::PulseUnderRangeLimit),
            ),
            (
                "improper_position",
                BpMeasurementStatus(BpStatusBit::ImproperBodyPosition),
            ),
            ("device_clock_not_set", ClockUnreliable),
            ("device_time_invalid", ClockUnreliable),
            ("time_fault", ClockUnreliable),
            ("from_memory", FromMemory),
            ("data_from_measurement_storage", FromMemory),
            ("low_battery", Informational),
            ("device_battery_low", Informational),
            ("multiple_packet", Informational),
            ("trailing_octets", Informational),
            ("smartpoint", Informational),
            ("context_follows", Informational),
            ("masimo_set", Informational),
            ("quirk_beurer_bm85", Informational),
            ("spo2_fast", Informational),
            ("event_marker", Informational),
        ];
        for (name, class) in expected {
            let st: Status = name.parse().unwrap();
            assert_eq!(st.class(), *class, "{name}");
        }
    }

    /// The table in the module doc is the reviewed decision: it must say what the code does.
    #[test]
    fn the_module_doc_table_matches_the_code() {
        let mut seen = BTreeSet::new();
        for row in include_str!("status.rs")
            .lines()
            .filter_map(|l| l.strip_prefix("//! | `"))
        {
            let cells: Vec<&str> = row.split('|').map(str::trim).collect();
            let name = cells[0].trim_end_matches('`');
            let status = match name {
                "implausible_<type>" => Status::Implausible(ReadingType::Spo2),
                "quirk_<id>" => Status::Quirk(QuirkId::BeurerBm85),
                _ => name.parse().unwrap_or_else(|e| panic!("{e}")),
            };
            let variant = format!("{status:?}");
            let documented_variant = cells[1].trim_matches('`');
            assert!(
                documented_variant.starts_with(variant.split('(').next().unwrap()),
                "{name}: {documented_variant} vs {variant}"
            );
            let (class, code) = match status.class() {
                StatusClass::Invalid => ("Invalid", String::new()),
                StatusClass::NotForUpload => ("NotForUpload", String::new()),
                StatusClass::Interpretation(m) => ("Interpretation", format!("`{}`", m.code())),
                StatusClass::BpMeasurementStatus(b) => (
                    "BpMeasurementStatus",
                    format!("{} {}", b.code(), b.display()),
                ),
                StatusClass::ClockUnreliable => ("ClockUnreliable", String::new()),
                StatusClass::FromMemory => ("FromMemory", String::new()),
                StatusClass::Informational => ("Informational", String::new()),
            };
            assert_eq!(cells[2], class, "{name}");
            let documented_code = cells[3].trim_start_matches("no code").trim();
            assert_eq!(documented_code, code, "{name}");
            assert!(seen.insert(name.to_string()), "{name} twice");
        }
        assert_eq!(seen.len(), Status::FIXED.len() + 2);
    }

    #[test]
    fn bp_status_bits_follow_mdc_8410608() {
        let bits = [
            BpStatusBit::BodyMovement,
            BpStatusBit::CuffTooLoose,
            BpStatusBit::IrregularPulse,
            BpStatusBit::PulseOverRangeLimit,
            BpStatusBit::PulseUnderRangeLimit,
            BpStatusBit::ImproperBodyPosition,
        ];
        for (i, b) in bits.into_iter().enumerate() {
            assert_eq!(usize::from(b.bit()), i);
            assert_eq!(b.code(), format!("8410608.{i}"));
        }
    }
}
