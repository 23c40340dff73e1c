//! The simulator source: virtual devices that produce realistic readings at a configured rate,
//! for the demo and tests. It goes through the same pipeline as a real device; only the bytes
//! are made up. Values are drawn from a seeded PRNG so a run is reproducible.

use std::sync::Arc;

use chrono::{Datelike, Timelike, Utc};
use device_drivers::{Decimal, DeviceTime, Reading, ReadingType, Record};
use rand::{Rng, SeedableRng};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::{SimulatorConfig, SimulatorKind};
use crate::pipeline::{CaptureClock, DeviceContext, Ingest};
use crate::reading::Source;

/// One simulated measurement.
pub fn simulate(kind: SimulatorKind, rng: &mut impl Rng, base_weight_centi_kg: i64) -> Record {
    let mut rec = Record::default();
    match kind {
        SimulatorKind::BloodPressure => {
            let sys: i64 = rng.random_range(108..=146);
            let dia: i64 = rng.random_range(64..=(sys - 30).min(94));
            let map = dia + (sys - dia + 1) / 3;
            let pulse: i64 = rng.random_range(54..=96);
            rec.readings = vec![
                Reading::new(
                    ReadingType::SystolicPressure,
                    Decimal::from_int(sys),
                    "mm[Hg]",
                ),
                Reading::new(
                    ReadingType::DiastolicPressure,
                    Decimal::from_int(dia),
                    "mm[Hg]",
                ),
                Reading::new(
                    ReadingType::MeanArterialPressure,
                    Decimal::from_int(map),
                    "mm[Hg]",
                ),
                Reading::new(ReadingType::PulseRate, Decimal::from_int(pulse), "/min"),
            ];
        }
        SimulatorKind::Scale => {
            // A Weight Scale Service resolution of 0.05 kg: hundredths in steps of 5.
            let drift: i64 = rng.random_range(-6..=6) * 5;
            let w = base_weight_centi_kg + drift;
            rec.readings = vec![Reading::new(
                ReadingType::BodyWeight,
                Decimal::new(w, -2),
                "kg",
            )];
        }
    }
    rec
}

fn now_device_time() -> Option<DeviceTime> {
    // A simulated device reads its own clock.
    #[allow(clippy::disallowed_methods)]
    let n = Utc::now();
    DeviceTime::new(
        u16::try_from(n.year()).ok()?,
        u8::try_from(n.month()).ok()?,
        u8::try_from(n.day()).ok()?,
        u8::try_from(n.hour()).ok()?,
        u8::try_from(n.minute()).ok()?,
        u8::try_from(n.second()).ok()?,
    )
}

/// Runs one simulated device until `count` readings were produced or shutdown.
pub async fn run(
    cfg: SimulatorConfig,
    device: Arc<DeviceContext>,
    tx: mpsc::Sender<Ingest>,
    shutdown: CancellationToken,
) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(cfg.seed);
    let base_weight = rng.random_range(5500..=9500) / 5 * 5;
    let mut produced = 0u64;
    let mut tick = tokio::time::interval(cfg.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tracing::info!(simulator = %cfg.name, interval_ms = cfg.interval.as_millis() as u64, "simulator started");
    loop {
        crate::ops::watchdog::beat();
        let stop = crate::ops::watchdog::idle(async {
            tokio::select! {
                _ = tick.tick() => false,
                _ = shutdown.cancelled() => true,
            }
        })
        .await;
        if stop {
            break;
        }
        let mut record = simulate(cfg.kind, &mut rng, base_weight);
        record.device_time = now_device_time();
        let msg = Ingest::Record {
            device: Arc::clone(&device),
            record,
            source: Source::Simulator {
                name: cfg.name.clone(),
            },
            clock: CaptureClock {
                utc_offset_minutes: Some(0),
                fraction: None,
                ..CaptureClock::default()
            },
            #[allow(clippy::disallowed_methods)] // the edge: the reading arrives now
            received_at: Utc::now(),
            delivery: None,
            done: None,
        };
        if tx.send(msg).await.is_err() {
            break;
        }
        produced += 1;
        if cfg.count.is_some_and(|c| produced >= c) {
            tracing::info!(simulator = %cfg.name, produced, "simulator finished its configured count");
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn simulated_blood_pressure_is_physiological() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for _ in 0..1000 {
            let r = simulate(SimulatorKind::BloodPressure, &mut rng, 7000);
            let v = |t| {
                r.readings
                    .iter()
                    .find(|x| x.kind == t)
                    .unwrap()
                    .value
                    .mantissa
            };
            let (s, d, m) = (
                v(ReadingType::SystolicPressure),
                v(ReadingType::DiastolicPressure),
                v(ReadingType::MeanArterialPressure),
            );
            assert!(s > d && m > d && m < s, "{s}/{d} map {m}");
            assert!(s - d >= 30);
        }
    }

    #[test]
    fn simulated_weight_keeps_the_scale_resolution() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let r = simulate(SimulatorKind::Scale, &mut rng, 7235);
        assert_eq!(r.readings[0].value.exponent, -2);
        assert_eq!(r.readings[0].value.mantissa % 5, 0);
    }
}
