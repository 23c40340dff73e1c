//! The official Open mHealth test data (openmhealth/schemas `test-data/omh`, copied into
//! `testdata/omh/`), each body wrapped in an IEEE 1752.1 header, through [`omh::parse`]:
//! every `shouldFail` body is refused as schema-invalid; every `shouldPass` body is accepted by
//! its schema, and its value, time and statistic come out as the body says.

use std::path::{Path, PathBuf};

use device_drivers::omh::{self, OmhError};

fn cases() -> Vec<(String, String, bool, PathBuf)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/omh");
    let mut out = Vec::new();
    for schema in std::fs::read_dir(&root).unwrap() {
        let schema = schema.unwrap().path();
        for version in std::fs::read_dir(&schema).unwrap() {
            let version = version.unwrap().path();
            for (dir, pass) in [("shouldPass", true), ("shouldFail", false)] {
                let Ok(files) = std::fs::read_dir(version.join(dir)) else {
                    continue;
                };
                for f in files {
                    out.push((
                        schema.file_name().unwrap().to_string_lossy().into_owned(),
                        version.file_name().unwrap().to_string_lossy().into_owned(),
                        pass,
                        f.unwrap().path(),
                    ));
                }
            }
        }
    }
    out.sort();
    out
}

fn wrap(name: &str, version: &str, body: &str) -> String {
    format!(
        r#"{{"header":{{"uuid":"0b1d5f9e-7c1a-4e2b-9a3d-000000000001","schema_id":{{"namespace":"omh","name":"{name}","version":"{version}"}},"source_creation_date_time":"2026-11-01T08:00:00Z","modality":"sensed"}},"body":{body}}}"#
    )
}

#[test]
fn official_should_fail_bodies_are_refused_as_schema_invalid() {
    let mut n = 0;
    for (name, version, pass, path) in cases() {
        if pass {
            continue;
        }
        let body = std::fs::read_to_string(&path).unwrap();
        let r = omh::parse(wrap(&name, &version, &body).as_bytes());
        assert!(
            matches!(
                r,
                Err(OmhError::SchemaInvalid { .. }) | Err(OmhError::NotDataPoint)
            ),
            "{}: {r:?}",
            path.display()
        );
        n += 1;
    }
    assert_eq!(n, 91, "shouldFail files");
}

#[test]
fn official_should_pass_bodies_pass_their_schema_and_keep_value_time_and_statistic() {
    let mut n = 0;
    for (name, version, pass, path) in cases() {
        if !pass {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let body: serde_json::Value = serde_json::from_str(&text).unwrap();
        let r = omh::parse(wrap(&name, &version, &text).as_bytes());
        let dp = match r {
            Ok(dp) => dp,
            // Valid bodies we may refuse on purpose, never as schema-invalid: a specimen that
            // is not blood, a unit FHIR cannot take.
            Err(OmhError::UnsupportedSpecimen(_)) => {
                assert!(
                    text.contains("serum") || text.contains("tears"),
                    "{}",
                    path.display()
                );
                n += 1;
                continue;
            }
            Err(e) => panic!("{}: {e:?}", path.display()),
        };
        // The value, exactly.
        let field = match name.as_str() {
            "blood-pressure" => "systolic_blood_pressure",
            "body-mass-index" => "body_mass_index",
            other => &other.replace('-', "_"),
        };
        let first = body[field]["value"].to_string();
        assert_eq!(
            dp.record.readings[0].value.to_string(),
            first,
            "{}",
            path.display()
        );
        let etf = &body["effective_time_frame"];
        let c = &dp.record.context;
        assert_eq!(
            c.statistic.as_deref(),
            body["descriptive_statistic"].as_str(),
            "{}",
            path.display()
        );
        if etf.is_null() {
            assert!(dp.record.device_time.is_none());
        } else if etf.get("date_time").is_some() {
            assert!(
                c.effective_end.is_none() && !c.date_only,
                "{}",
                path.display()
            );
        } else if etf["time_interval"].get("date").is_some() {
            assert!(
                c.date_only && c.effective_end.is_none(),
                "{}",
                path.display()
            );
        } else {
            // An interval is never an instant: a period, or (a statistic whose interval ends
            // before it starts, as one official example does) no time at all.
            assert!(
                c.effective_end.is_some()
                    || (c.statistic.is_some() && dp.record.device_time.is_none()),
                "an interval is never an instant: {}",
                path.display()
            );
        }
        n += 1;
    }
    assert_eq!(n, 94, "shouldPass files");
}
