//! Pending readings → the Bundles of an export file (pure). The Bundles are built by
//! [`crate::uplink::fhir::build_bundle`], the uploader's own mapping, with no Device assumed
//! known: the same conditional creates and identifiers as a normal upload, so a reading
//! delivered by an import and again by the uploader is one Observation on the server.

use crate::reading::Reading;
use crate::uplink::fhir::{self, GatewayInfo, KnownDevices, MappingError};

use super::format::BundleChunk;

/// The export's Bundles, and the readings left out (they stay pending for the uploader, which
/// dead-letters what cannot be mapped, with its reason).
#[derive(Debug, Default)]
pub struct Plan {
    pub chunks: Vec<BundleChunk>,
    pub readings: usize,
    pub left_out: usize,
}

/// Groups `readings` (in outbox order) into Bundles of at most `batch_size` readings and
/// [`fhir::MAX_ENTRIES`] entries. `progress` is called with the number of readings planned so
/// far.
pub fn plan(
    gateway: &GatewayInfo,
    readings: &[Reading],
    batch_size: usize,
    mut progress: impl FnMut(usize),
) -> Plan {
    let mut out = Plan::default();
    let mut i = 0;
    let batch_size = batch_size.max(1);
    while i < readings.len() {
        let end = (i + batch_size).min(readings.len());
        let fit = fhir::readings_that_fit(&readings[i..end]).max(1);
        let mut batch: Vec<Reading> = readings[i..i + fit].to_vec();
        i += fit;
        loop {
            if batch.is_empty() {
                break;
            }
            match fhir::build_bundle(gateway, &batch, &KnownDevices::default()) {
                Ok(built) => {
                    out.readings += batch.len();
                    out.chunks.push(chunk(&built));
                    break;
                }
                Err(MappingError::IdentifierCollision) => {
                    // The later of two readings under one identifier: left for the uploader
                    // (it dead-letters exactly this one).
                    let culprit = fhir::first_identifier_collision(&batch).unwrap_or(0);
                    batch.remove(culprit);
                    out.left_out += 1;
                }
                Err(_) => {
                    // Keep the readings that map alone; leave the others out.
                    let before = batch.len();
                    batch.retain(|r| {
                        fhir::build_bundle(
                            gateway,
                            std::slice::from_ref(r),
                            &KnownDevices::default(),
                        )
                        .is_ok()
                    });
                    out.left_out += before - batch.len();
                    if batch.len() == before {
                        // Each maps alone but not together: one Bundle each.
                        for r in batch.drain(..) {
                            let one = std::slice::from_ref(&r);
                            match fhir::build_bundle(gateway, one, &KnownDevices::default()) {
                                Ok(built) => {
                                    out.readings += 1;
                                    out.chunks.push(chunk(&built));
                                }
                                Err(_) => out.left_out += 1,
                            }
                        }
                    }
                }
            }
        }
        progress(i);
    }
    out
}

fn chunk(built: &fhir::BuiltBundle) -> BundleChunk {
    BundleChunk {
        entries: built
            .entries
            .iter()
            .map(|e| {
                (
                    u32::try_from(e.entry_index).unwrap_or(u32::MAX),
                    e.reading_ids.iter().map(|id| *id.as_bytes()).collect(),
                )
            })
            .collect(),
        bundle: built.json.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reading::ReadingKind;
    use crate::uplink::fhir::tests::reading;
    use device_drivers::{Decimal, ReadingType};

    fn weight(n: i64) -> Reading {
        let mut r = reading(
            ReadingKind::BodyWeight,
            vec![(ReadingType::BodyWeight, Decimal::new(7235, -2), "kg")],
            n,
        );
        r.observation_identifier = format!("{}-{n}", r.observation_identifier);
        r
    }

    #[test]
    fn the_later_of_two_readings_under_one_identifier_is_left_out() {
        let gw = GatewayInfo::new("gw", "0");
        let mut twin = weight(2);
        twin.observation_identifier = weight(1).observation_identifier;
        let p = plan(&gw, &[weight(1), twin, weight(3)], 50, |_| {});
        assert_eq!((p.readings, p.left_out, p.chunks.len()), (2, 1, 1));
    }

    #[test]
    fn readings_are_planned_in_bundles_the_uploader_would_build() {
        let gw = GatewayInfo::new("gw", "0");
        let readings: Vec<Reading> = (0..7).map(weight).collect();
        let mut seen = Vec::new();
        let p = plan(&gw, &readings, 3, |n| seen.push(n));
        assert_eq!(p.chunks.len(), 3);
        assert_eq!(p.readings, 7);
        assert_eq!(p.left_out, 0);
        assert_eq!(seen, vec![3, 6, 7]);
        // Byte for byte the Bundle the uploader builds for the same readings.
        let (bundle, entries) = fhir::build_transaction_bundle(&gw, &readings[0..3]).unwrap();
        assert_eq!(p.chunks[0].bundle, serde_json::to_vec(&bundle).unwrap());
        assert_eq!(p.chunks[0].entries.len(), entries.len());
    }
}
