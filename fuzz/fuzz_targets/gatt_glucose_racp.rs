//! 0x2A18 / 0x2A34 / 0x2A52 and the RACP download state machine: no panic, and the machine
//! never emits a delete on its own.
#![no_main]

use device_drivers::gatt::racp::{Action, Download, DownloadFilter, RacpProfile};
use device_drivers::gatt::{decode_measurement, decode_to_json};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for ch in [0x2A18u16, 0x2A34, 0x2A52] {
        let _ = decode_to_json(ch, data);
        let _ = decode_measurement(ch, data, None);
    }
    // Drive a download with the input split into events: [kind, len, bytes...].
    let mut d = Download::new(RacpProfile::Glucose, DownloadFilter::All, 1000);
    let _ = d.start(0);
    let mut rest = data;
    let mut now = 0u64;
    while let [kind, len, tail @ ..] = rest {
        let n = usize::from(*len).min(tail.len());
        let (ev, next) = tail.split_at(n);
        now += u64::from(*len) * 10;
        let a = match kind % 4 {
            0 => d.on_measurement(now, ev).unwrap_or(Action::Wait),
            1 => d.on_racp(now, ev),
            2 => d.on_timeout(now),
            _ => d.abort(now),
        };
        if let Action::Write(w) = a {
            assert_ne!(w.first(), Some(&2), "the download never writes a delete");
        }
        rest = next;
    }
});
