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
//! Optionally (`[consent] purge_after_days = N`), held readings are **purged**: a periodic task
//! (`crate::consent_purge`) removes from the outbox every pending reading of a withdrawn patient
//! that was stored more than N days ago ([`purge_due`]), one audit event each
//! (`telemetry::ConsentPurged`, counter `consent_purged`, no patient identifier); the store
//! counts them for good (`vitalgate status`: `purged_readings`). Without the setting, held
//! readings are kept for ever. A consent source that is unusable purges nothing: deleting
//! health data cannot be undone, so it needs a withdrawal we know of.
//!
//! Architecture invariant: this module decides only; the uploader asks [`Consent::may_leave`]
//! for every reading it is about to put in a Bundle, the purge task asks [`purge_due`] for
//! every pending reading.

use std::collections::HashSet;
use std::time::{Duration, SystemTime};

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

/// Is this pending reading due to be purged? Its patient's consent is withdrawn (a known
/// withdrawal: never while the consent source is unusable) and it was stored at least
/// `purge_after` before `now`. Pure: `now` is an argument.
pub fn purge_due(
    consent: &Consent,
    purge_after: Duration,
    r: &Reading,
    stored_at: SystemTime,
    now: SystemTime,
) -> bool {
    match consent {
        Consent::Withdrawn(set) => {
            set.contains(&r.patient)
                && now
                    .duration_since(stored_at)
                    .is_ok_and(|age| age >= purge_after)
        }
        Consent::Unknown(_) => false,
    }
}

/// How often the purge task looks: a quarter of the purge age, at least every second and at
/// most every hour (a reading is purged at most an hour after it became due).
pub fn purge_interval(purge_after: Duration) -> Duration {
    (purge_after / 4).clamp(Duration::from_secs(1), Duration::from_secs(3600))
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
    fn only_a_withdrawn_patients_readings_older_than_the_purge_age_are_due() {
        let day = Duration::from_secs(86_400);
        let now = SystemTime::UNIX_EPOCH + 1000 * day;
        let c = consent(&["Patient/gone".parse().unwrap()], None);
        let gone = r("Patient/gone");
        let staying = r("Patient/here");
        let purge_after = 30 * day;
        // By the time it was stored: 30 days and more is due, less is not.
        assert!(purge_due(&c, purge_after, &gone, now - 30 * day, now));
        assert!(purge_due(&c, purge_after, &gone, now - 400 * day, now));
        assert!(!purge_due(
            &c,
            purge_after,
            &gone,
            now - 30 * day + Duration::from_secs(1),
            now
        ));
        // A stored time in the future (clock stepped back) is not due.
        assert!(!purge_due(&c, purge_after, &gone, now + day, now));
        // Another patient's reading, however old, never.
        assert!(!purge_due(&c, purge_after, &staying, now - 400 * day, now));
        // An unusable consent source purges nothing (it holds everything, it deletes nothing).
        let broken = consent(&[], Some(Err(ConsentError::Unreadable("gone".into()))));
        assert!(!purge_due(
            &broken,
            purge_after,
            &gone,
            now - 400 * day,
            now
        ));
        // Consent restored: no longer due.
        assert!(!purge_due(
            &consent(&[], None),
            purge_after,
            &gone,
            now - 400 * day,
            now
        ));
    }

    #[test]
    fn the_purge_task_looks_at_least_hourly_and_at_most_every_second() {
        assert_eq!(
            purge_interval(Duration::from_secs(30 * 86_400)),
            Duration::from_secs(3600)
        );
        assert_eq!(
            purge_interval(Duration::from_secs(8)),
            Duration::from_secs(2)
        );
        assert_eq!(
            purge_interval(Duration::from_secs(1)),
            Duration::from_secs(1)
        );
    }

    #[test]
    fn no_consent_configuration_lets_everything_leave() {
        assert!(consent(&[], None).may_leave(&r("Patient/x")));
    }
}
