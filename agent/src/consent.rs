//! Consent per patient: which pending readings may leave the gateway (pure).
//!
//! A clinic withdraws a patient's consent in one of two ways (config `[consent]`):
//!
//! - `withdrawn = ["<patient reference>", ...]` in the config (the same reference strings as a
//!   device's `patient`);
//! - `file = "<path>"`: a file a clinic system writes, one patient reference per line whose
//!   consent is withdrawn (`#` starts a comment, blank lines ignored). The uploader re-reads it
//!   whenever its modification time or size changes, before every batch, so a withdrawal takes
//!   effect without a restart and before anything else is sent.
//!
//! Readings of a withdrawn patient are never uploaded. They stay in the outbox (`hold`), counted
//! in `vitalgate status`; each is audited once per process (`telemetry::ConsentWithheld`, no
//! patient identifier). If the file is configured but missing or unreadable or has a bad line,
//! the gate **fails closed**: nothing is uploaded until it is fixed (an error is logged).
//!
//! Architecture invariant: this module decides only; the uploader asks [`Consent::may_leave`]
//! for every reading it is about to put in a Bundle.

use std::collections::HashSet;

use crate::reading::{PatientRef, Reading};

/// Why a consent file is not usable. Carries a line number, never a patient reference.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConsentError {
    #[error("consent file line {line}: not a patient reference (\"Patient/<id>\" or \"<system>|<value>\")")]
    BadLine { line: usize },
    #[error("consent file cannot be read: {0}")]
    Unreadable(String),
}

/// The consent state the uploader applies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Consent {
    /// Everything may leave except readings of these patients.
    Withdrawn(HashSet<PatientRef>),
    /// The consent source is broken: nothing may leave (fail closed).
    Unknown(ConsentError),
}

impl Consent {
    /// May this reading be uploaded now?
    pub fn may_leave(&self, r: &Reading) -> bool {
        match self {
            Consent::Withdrawn(set) => !set.contains(&r.patient),
            Consent::Unknown(_) => false,
        }
    }

    /// Number of patients whose consent is withdrawn (for `vitalgate status`).
    pub fn withdrawn_count(&self) -> Option<usize> {
        match self {
            Consent::Withdrawn(s) => Some(s.len()),
            Consent::Unknown(_) => None,
        }
    }
}

/// The consent from the config's static list and, if configured, the file's text (`Err` when
/// the file could not be read).
pub fn consent(configured: &[PatientRef], file: Option<Result<&str, ConsentError>>) -> Consent {
    let mut set: HashSet<PatientRef> = configured.iter().cloned().collect();
    match file {
        None => {}
        Some(Err(e)) => return Consent::Unknown(e),
        Some(Ok(text)) => match parse_file(text) {
            Ok(more) => set.extend(more),
            Err(e) => return Consent::Unknown(e),
        },
    }
    Consent::Withdrawn(set)
}

/// Parses a consent file: one patient reference per line, `#` comments.
pub fn parse_file(text: &str) -> Result<Vec<PatientRef>, ConsentError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        out.push(
            line.parse::<PatientRef>()
                .map_err(|_| ConsentError::BadLine { line: i + 1 })?,
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(patient: &str) -> Reading {
        let mut r = crate::uplink::fhir::tests::bp();
        r.patient = patient.parse().unwrap();
        r
    }

    #[test]
    fn a_withdrawn_patient_never_leaves_the_others_do() {
        let c = consent(
            &["urn:oid:1.2|MRN-1".parse().unwrap()],
            Some(Ok(
                "# clinic export\nPatient/p7  # withdrawn 2026-11-30\n\n",
            )),
        );
        assert!(!c.may_leave(&r("urn:oid:1.2|MRN-1")));
        assert!(!c.may_leave(&r("Patient/p7")));
        assert!(c.may_leave(&r("urn:oid:1.2|MRN-2")));
        assert_eq!(c.withdrawn_count(), Some(2));
    }

    #[test]
    fn a_broken_or_missing_consent_file_fails_closed() {
        let bad = consent(&[], Some(Ok("Patient/ok\nMRN without system\n")));
        assert_eq!(bad, Consent::Unknown(ConsentError::BadLine { line: 2 }));
        assert!(!bad.may_leave(&r("Patient/ok")));
        let missing = consent(&[], Some(Err(ConsentError::Unreadable("not found".into()))));
        assert!(!missing.may_leave(&r("Patient/anyone")));
        // The error never echoes the file's content (patient identifiers).
        assert!(bad.withdrawn_count().is_none());
        assert!(!format!("{bad:?}").contains("MRN without"));
    }

    #[test]
    fn no_consent_configuration_lets_everything_leave() {
        assert!(consent(&[], None).may_leave(&r("Patient/x")));
    }
}
