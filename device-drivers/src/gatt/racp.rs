//! Record Access Control Point 0x2A52: codec and the sans-IO stored-record download.
//!
//! Layout (SIG GATT XML `record_access_control_point`, GLS 1.0 §3.5 / PLXS 1.0;
//! gatt-profiles.md §8): `[op code u8][operator u8][operand...]`.
//! - Op codes: 1 report stored records, 2 delete stored records, 3 abort (operator Null),
//!   4 report number of stored records, 5 number of stored records response (operator Null,
//!   operand u16), 6 response code (operator Null, operand = request op code u8 + response
//!   code u8). Any other op code is [`GattError::Invalid`], as is a non-Null operator on 3/5/6.
//! - Operators: 0 Null, 1 all, 2 ≤, 3 ≥, 4 within range (inclusive), 5 first, 6 last; 2-4
//!   carry a filter type (1 sequence number u16, 2 user facing time = Date Time) and one (2, 3)
//!   or two (4) values. Unknown operators and filter types decode as `"reserved"` (policy,
//!   section 0 "unknown values are named reserved"); the octets of a reserved filter's operand
//!   are listed raw, a reserved operator's operand is reported as `trailing_octets`.
//! - Response codes: 1 success, 2 op code not supported, 3 invalid operator, 4 operator not
//!   supported, 5 invalid operand, 6 no records found (normal), 7 abort unsuccessful,
//!   8 procedure not completed, 9 operand not supported.
//!
//! # Download state machine
//! [`Download`] drives "report stored records" without touching the radio: the transport
//! enables notifications on the measurement characteristic (0x2A18 / 0x2A5E) and indications
//! on 0x2A52 ([`super::cccd`]), then feeds events and performs the returned [`Action`]s:
//!
//! ```text
//! start(now)            -> Write(01 01 | 01 03 01 <seq>)
//! on_measurement(now,b) -> Store(StoredRecord)          (persist it)
//! on_racp(now, b)       -> Complete(CompletedDownload) | Aborted | Failed(..)
//! on_timeout(now)       -> Write(03 00) then, if still silent, Failed(Timeout)
//! ```
//!
//! Deleting records on the device is only reachable through
//! [`CompletedDownload::records_durable`], which consumes the completion receipt and the
//! caller's statement of how many records it made durable, and returns a [`DeleteAllowed`]
//! whose `request()` is the only public way to encode a delete (`02 ..`). The generic request
//! encoder [`RacpRequest`] has no delete variant. So "delete before durable" does not compile,
//! and a delete after an aborted, failed or partially decoded download is refused.
//! Policy (gatt-profiles.md §8 step 6): never delete unless an operator asked for it; the agent
//! decides that, this module only makes the order safe. Time is an explicit `now_ms` (any
//! monotonic millisecond counter); nothing here reads a clock.

use serde::Serialize;

use super::reader::Reader;
use super::{decode_measurement, glucose, uuid, GattError};
use crate::record::Record;
use crate::DeviceTime;

pub mod opcode {
    pub const REPORT_STORED_RECORDS: u8 = 1;
    pub const DELETE_STORED_RECORDS: u8 = 2;
    pub const ABORT_OPERATION: u8 = 3;
    pub const REPORT_NUMBER_OF_STORED_RECORDS: u8 = 4;
    pub const NUMBER_OF_STORED_RECORDS_RESPONSE: u8 = 5;
    pub const RESPONSE_CODE: u8 = 6;
}

pub mod response_code {
    pub const SUCCESS: u8 = 1;
    pub const OP_CODE_NOT_SUPPORTED: u8 = 2;
    pub const INVALID_OPERATOR: u8 = 3;
    pub const OPERATOR_NOT_SUPPORTED: u8 = 4;
    pub const INVALID_OPERAND: u8 = 5;
    pub const NO_RECORDS_FOUND: u8 = 6;
    pub const ABORT_UNSUCCESSFUL: u8 = 7;
    pub const PROCEDURE_NOT_COMPLETED: u8 = 8;
    pub const OPERAND_NOT_SUPPORTED: u8 = 9;
}

pub fn opcode_name(op: u8) -> &'static str {
    match op {
        1 => "report_stored_records",
        2 => "delete_stored_records",
        3 => "abort_operation",
        4 => "report_number_of_stored_records",
        5 => "number_of_stored_records_response",
        6 => "response_code",
        _ => "reserved",
    }
}

pub fn operator_name(op: u8) -> &'static str {
    match op {
        0 => "null",
        1 => "all_records",
        2 => "less_than_or_equal",
        3 => "greater_than_or_equal",
        4 => "within_range_inclusive",
        5 => "first_record",
        6 => "last_record",
        _ => "reserved",
    }
}

pub fn response_code_name(code: u8) -> &'static str {
    match code {
        1 => "success",
        2 => "op_code_not_supported",
        3 => "invalid_operator",
        4 => "operator_not_supported",
        5 => "invalid_operand",
        6 => "no_records_found",
        7 => "abort_unsuccessful",
        8 => "procedure_not_completed",
        9 => "operand_not_supported",
        _ => "reserved",
    }
}

pub fn filter_type_name(t: u8) -> &'static str {
    match t {
        1 => "sequence_number",
        2 => "user_facing_time",
        _ => "reserved",
    }
}

/// One operand value of a filter.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum OperandValue {
    /// Sequence number filter value.
    Sequence(u16),
    /// User facing time filter value (`null` if not a valid date).
    Time(Option<DeviceTime>),
    /// One raw octet of a reserved filter type's operand.
    Octet(u8),
}

/// Filter type + operand values (operators 2-4).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Filter {
    pub filter_type: u8,
    pub filter_type_name: &'static str,
    pub operand: Vec<OperandValue>,
}

/// The body of a RACP message after op code.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum RacpBody {
    Request {
        operator: u8,
        operator_name: &'static str,
        #[serde(flatten)]
        filter: Option<Filter>,
    },
    NumberOfRecords {
        number_of_records: u16,
    },
    Response {
        request_opcode: u8,
        request_opcode_name: &'static str,
        response_code: u8,
        response_code_name: &'static str,
    },
}

/// A decoded RACP value (request written by a client or response indicated by a server).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RacpMessage {
    pub opcode: u8,
    pub opcode_name: &'static str,
    #[serde(flatten)]
    pub body: RacpBody,
    #[serde(skip_serializing_if = "super::is_zero")]
    pub trailing_octets: usize,
}

impl RacpMessage {
    /// # Errors
    /// [`GattError::Truncated`]; [`GattError::Invalid`] for an unknown op code or a non-Null
    /// operator on abort / responses.
    pub fn decode(payload: &[u8]) -> Result<Self, GattError> {
        let mut r = Reader::new(payload);
        let op = r.u8()?;
        let operator = r.u8()?;
        let body = match op {
            opcode::NUMBER_OF_STORED_RECORDS_RESPONSE | opcode::RESPONSE_CODE if operator != 0 => {
                return Err(GattError::Invalid("RACP response with operator != Null"));
            }
            opcode::ABORT_OPERATION if operator != 0 => {
                return Err(GattError::Invalid("RACP abort with operator != Null"));
            }
            opcode::NUMBER_OF_STORED_RECORDS_RESPONSE => RacpBody::NumberOfRecords {
                number_of_records: r.u16()?,
            },
            opcode::RESPONSE_CODE => {
                let req = r.u8()?;
                let code = r.u8()?;
                RacpBody::Response {
                    request_opcode: req,
                    request_opcode_name: opcode_name(req),
                    response_code: code,
                    response_code_name: response_code_name(code),
                }
            }
            1..=4 => {
                let values = match operator {
                    2 | 3 => Some(1),
                    4 => Some(2),
                    _ => None,
                };
                let filter = match values {
                    None => None,
                    Some(n) => {
                        let ft = r.u8()?;
                        let mut operand = Vec::new();
                        match ft {
                            1 => {
                                for _ in 0..n {
                                    operand.push(OperandValue::Sequence(r.u16()?));
                                }
                            }
                            2 => {
                                for _ in 0..n {
                                    operand.push(OperandValue::Time(r.date_time()?.device_time()));
                                }
                            }
                            _ => {
                                while r.remaining() > 0 {
                                    operand.push(OperandValue::Octet(r.u8()?));
                                }
                            }
                        }
                        Some(Filter {
                            filter_type: ft,
                            filter_type_name: filter_type_name(ft),
                            operand,
                        })
                    }
                };
                RacpBody::Request {
                    operator,
                    operator_name: operator_name(operator),
                    filter,
                }
            }
            _ => return Err(GattError::Invalid("unknown RACP op code")),
        };
        Ok(Self {
            opcode: op,
            opcode_name: opcode_name(op),
            body,
            trailing_octets: r.remaining(),
        })
    }
}

/// Requests the agent may write. There is deliberately no delete variant: see
/// [`CompletedDownload::records_durable`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RacpRequest {
    /// `01 01`
    ReportAll,
    /// `01 03 01 <u16>`: records with sequence number ≥ n (incremental download).
    ReportFromSequence(u16),
    /// `01 05`
    ReportFirst,
    /// `01 06`
    ReportLast,
    /// `04 01`
    CountAll,
    /// `04 03 01 <u16>`
    CountFromSequence(u16),
    /// `03 00`
    Abort,
}

impl RacpRequest {
    pub fn encode(self) -> Vec<u8> {
        match self {
            Self::ReportAll => vec![1, 1],
            Self::ReportFromSequence(n) => {
                let [a, b] = n.to_le_bytes();
                vec![1, 3, 1, a, b]
            }
            Self::ReportFirst => vec![1, 5],
            Self::ReportLast => vec![1, 6],
            Self::CountAll => vec![4, 1],
            Self::CountFromSequence(n) => {
                let [a, b] = n.to_le_bytes();
                vec![4, 3, 1, a, b]
            }
            Self::Abort => vec![3, 0],
        }
    }
}

/// Emulated-server encoders (tests, fake meters).
pub fn encode_number_of_records(n: u16) -> [u8; 4] {
    let [a, b] = n.to_le_bytes();
    [opcode::NUMBER_OF_STORED_RECORDS_RESPONSE, 0, a, b]
}

/// `06 00 <request op code> <response code>`.
pub fn encode_response(request_opcode: u8, code: u8) -> [u8; 4] {
    [opcode::RESPONSE_CODE, 0, request_opcode, code]
}

/// Which service's stored records are downloaded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RacpProfile {
    /// Glucose: records on 0x2A18 (with sequence numbers), context on 0x2A34.
    Glucose,
    /// Pulse oximeter: stored spot-checks on 0x2A5E (no sequence numbers).
    PulseOximeter,
}

impl RacpProfile {
    pub fn measurement_characteristic(self) -> u16 {
        match self {
            Self::Glucose => uuid::GLUCOSE_MEASUREMENT,
            Self::PulseOximeter => uuid::PLX_SPOT_CHECK,
        }
    }
}

/// What to download.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DownloadFilter {
    All,
    /// Glucose only: sequence numbers ≥ n (last committed + 1).
    FromSequence(u16),
}

/// A stored record received during a download: persist it, then count it as durable.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredRecord {
    pub sequence_number: Option<u16>,
    pub record: Record,
}

/// Why a download failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DownloadFailure {
    #[error("device answered {request_opcode:#04x} with response code {code} ({})", response_code_name(*code))]
    ResponseCode { request_opcode: u8, code: u8 },
    #[error("no RACP response before the deadline, abort unanswered")]
    Timeout,
    #[error("malformed RACP indication: {0}")]
    Malformed(GattError),
}

/// What the transport must do after an event.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Write these octets to RACP 0x2A52 (with response).
    Write(Vec<u8>),
    /// Persist this record.
    Store(StoredRecord),
    /// Nothing to do; keep waiting (see [`Download::deadline`]).
    Wait,
    /// The device reported the end of the transfer. Commit `last_sequence` after the records
    /// are durable; deleting needs [`CompletedDownload::records_durable`].
    Complete(CompletedDownload),
    /// The transfer was aborted (timeout or [`Download::abort`]); stored records are valid but
    /// incomplete, nothing may be deleted.
    Aborted,
    Failed(DownloadFailure),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Idle,
    Requested,
    Aborting,
    Done,
}

/// The sans-IO stored-record download (see the module doc).
#[derive(Clone, Debug)]
pub struct Download {
    profile: RacpProfile,
    filter: DownloadFilter,
    timeout_ms: u64,
    deadline_ms: Option<u64>,
    state: State,
    received: u32,
    undecodable: u32,
    first_seq: Option<u16>,
    last_seq: Option<u16>,
    monotonic: bool,
}

impl Download {
    /// `timeout_ms` is the inactivity timeout: the time allowed between the request (or the
    /// last notification) and the next event.
    pub fn new(profile: RacpProfile, filter: DownloadFilter, timeout_ms: u64) -> Self {
        Self {
            profile,
            filter,
            timeout_ms,
            deadline_ms: None,
            state: State::Idle,
            received: 0,
            undecodable: 0,
            first_seq: None,
            last_seq: None,
            monotonic: true,
        }
    }

    /// The request to write. Call once, after the CCCDs are enabled.
    pub fn start(&mut self, now_ms: u64) -> Action {
        if self.state != State::Idle {
            return Action::Wait;
        }
        self.state = State::Requested;
        self.deadline_ms = Some(now_ms.saturating_add(self.timeout_ms));
        let req = match (self.profile, self.filter) {
            (RacpProfile::Glucose, DownloadFilter::FromSequence(n)) => {
                RacpRequest::ReportFromSequence(n)
            }
            _ => RacpRequest::ReportAll,
        };
        Action::Write(req.encode())
    }

    /// When the transport must call [`Download::on_timeout`] if nothing arrives.
    pub fn deadline(&self) -> Option<u64> {
        self.deadline_ms
    }

    pub fn records_received(&self) -> u32 {
        self.received
    }

    /// A notification on the profile's measurement characteristic.
    ///
    /// A payload that does not decode is counted (it makes any later delete impossible) and
    /// returned as `Err` for the caller to report; the download goes on.
    ///
    /// # Errors
    /// The decode error of the payload.
    pub fn on_measurement(&mut self, now_ms: u64, payload: &[u8]) -> Result<Action, GattError> {
        if !matches!(self.state, State::Requested | State::Aborting) {
            return Ok(Action::Wait);
        }
        self.deadline_ms = Some(now_ms.saturating_add(self.timeout_ms));
        let ch = self.profile.measurement_characteristic();
        let decoded = decode_measurement(ch, payload, None)
            .and_then(|r| r.ok_or(GattError::Invalid("not a measurement")));
        let record = match decoded {
            Ok(r) => r,
            Err(e) => {
                self.undecodable += 1;
                return Err(e);
            }
        };
        let sequence_number = match self.profile {
            RacpProfile::Glucose => glucose::GlucoseMeasurement::decode(payload)
                .ok()
                .map(|m| m.sequence_number),
            RacpProfile::PulseOximeter => None,
        };
        if let Some(s) = sequence_number {
            if let Some(last) = self.last_seq {
                if s <= last {
                    self.monotonic = false;
                }
            }
            self.first_seq.get_or_insert(s);
            self.last_seq = Some(s);
        }
        self.received += 1;
        Ok(Action::Store(StoredRecord {
            sequence_number,
            record,
        }))
    }

    /// An indication on RACP 0x2A52.
    pub fn on_racp(&mut self, now_ms: u64, payload: &[u8]) -> Action {
        if matches!(self.state, State::Idle | State::Done) {
            return Action::Wait;
        }
        let msg = match RacpMessage::decode(payload) {
            Ok(m) => m,
            Err(e) => return self.finish(Action::Failed(DownloadFailure::Malformed(e))),
        };
        let RacpBody::Response {
            request_opcode,
            response_code: code,
            ..
        } = msg.body
        else {
            // A count response or an echoed request is not ours to act on.
            self.deadline_ms = Some(now_ms.saturating_add(self.timeout_ms));
            return Action::Wait;
        };
        match (self.state, request_opcode, code) {
            (_, opcode::REPORT_STORED_RECORDS, response_code::SUCCESS)
            | (_, opcode::REPORT_STORED_RECORDS, response_code::NO_RECORDS_FOUND) => {
                let done = CompletedDownload {
                    profile: self.profile,
                    received: self.received,
                    undecodable: self.undecodable,
                    first_sequence: self.first_seq,
                    last_sequence: self.last_seq,
                    monotonic: self.monotonic,
                };
                self.finish(Action::Complete(done))
            }
            (State::Aborting, opcode::ABORT_OPERATION, response_code::SUCCESS) => {
                self.finish(Action::Aborted)
            }
            (_, req, code) => self.finish(Action::Failed(DownloadFailure::ResponseCode {
                request_opcode: req,
                code,
            })),
        }
    }

    /// Call when `now_ms` ≥ [`Download::deadline`]. First expiry writes an abort; a second
    /// one fails the download.
    pub fn on_timeout(&mut self, now_ms: u64) -> Action {
        match (self.state, self.deadline_ms) {
            (State::Requested, Some(d)) if now_ms >= d => self.abort(now_ms),
            (State::Aborting, Some(d)) if now_ms >= d => {
                self.finish(Action::Failed(DownloadFailure::Timeout))
            }
            _ => Action::Wait,
        }
    }

    /// Aborts a running download (`03 00`).
    pub fn abort(&mut self, now_ms: u64) -> Action {
        if self.state != State::Requested {
            return Action::Wait;
        }
        self.state = State::Aborting;
        self.deadline_ms = Some(now_ms.saturating_add(self.timeout_ms));
        Action::Write(RacpRequest::Abort.encode())
    }

    pub fn is_finished(&self) -> bool {
        self.state == State::Done
    }

    fn finish(&mut self, a: Action) -> Action {
        self.state = State::Done;
        self.deadline_ms = None;
        a
    }
}

/// Proof that the device reported the end of a download. Only [`Download`] creates it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompletedDownload {
    profile: RacpProfile,
    received: u32,
    undecodable: u32,
    first_sequence: Option<u16>,
    last_sequence: Option<u16>,
    monotonic: bool,
}

/// Why deleting is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DeleteRefused {
    #[error("nothing was downloaded")]
    NothingDownloaded,
    #[error("{durable} of {received} records are durable")]
    NotAllDurable { durable: u32, received: u32 },
    #[error("{0} notifications could not be decoded; their records would be lost")]
    UndecodableRecords(u32),
    #[error("sequence numbers were not increasing; a range delete could hit unseen records")]
    SequenceNotMonotonic,
}

impl CompletedDownload {
    pub fn records_received(&self) -> u32 {
        self.received
    }

    /// The highest sequence number received (commit it as `last_seq` once durable).
    pub fn last_sequence(&self) -> Option<u16> {
        self.last_sequence
    }

    pub fn first_sequence(&self) -> Option<u16> {
        self.first_sequence
    }

    /// Declares that `durable_records` of the received records are flushed to the store and
    /// returns the permission to delete exactly what was downloaded.
    ///
    /// # Errors
    /// [`DeleteRefused`] unless every received record is durable, every notification decoded,
    /// and (glucose) the sequence numbers were strictly increasing.
    pub fn records_durable(self, durable_records: u32) -> Result<DeleteAllowed, DeleteRefused> {
        if self.received == 0 {
            return Err(DeleteRefused::NothingDownloaded);
        }
        if self.undecodable > 0 {
            return Err(DeleteRefused::UndecodableRecords(self.undecodable));
        }
        if durable_records != self.received {
            return Err(DeleteRefused::NotAllDurable {
                durable: durable_records,
                received: self.received,
            });
        }
        let range = match (self.profile, self.first_sequence, self.last_sequence) {
            (RacpProfile::Glucose, Some(a), Some(b)) if self.monotonic && a <= b => Some((a, b)),
            (RacpProfile::Glucose, _, _) => return Err(DeleteRefused::SequenceNotMonotonic),
            (RacpProfile::PulseOximeter, _, _) => None,
        };
        Ok(DeleteAllowed { range })
    }
}

/// Permission to delete the records of one completed, durable download.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeleteAllowed {
    range: Option<(u16, u16)>,
}

impl DeleteAllowed {
    /// The delete request: glucose `02 04 01 <first> <last>` (exactly the downloaded sequence
    /// range), pulse oximeter `02 01` (all: PLXS records carry no sequence number).
    /// The device answers `06 00 02 01` on success.
    pub fn request(&self) -> Vec<u8> {
        match self.range {
            Some((a, b)) => {
                let [a0, a1] = a.to_le_bytes();
                let [b0, b1] = b.to_le_bytes();
                vec![2, 4, 1, a0, a1, b0, b1]
            }
            None => vec![2, 1],
        }
    }

    /// `true` if `payload` is the device's successful answer to the delete.
    pub fn is_success(payload: &[u8]) -> bool {
        payload == encode_response(opcode::DELETE_STORED_RECORDS, response_code::SUCCESS)
    }
}
