//! Shared checks of the serial fuzz targets (included with `mod serial_common;`).

use device_drivers::serial::{Decoder, Event};

/// Feeds `data` whole to `whole` and cut into data-derived chunk sizes to `chunked`; asserts the
/// buffer cap after every feed and that the events and counters do not depend on the chunking.
pub fn check_decoder(mut whole: Box<dyn Decoder>, mut chunked: Box<dyn Decoder>, data: &[u8]) {
    let reference: Vec<Event> = whole.feed(data);
    let s = whole.stats();
    assert!(s.buffered <= s.buffer_cap, "buffered {} > cap {}", s.buffered, s.buffer_cap);
    assert_eq!(s.bytes_in, data.len() as u64);

    let mut events = Vec::new();
    let mut pos = 0;
    while pos < data.len() {
        // The byte at the cut point picks the next read size (1..=32): data-derived chunking
        // without consuming input bytes, so seeds from the vectors stay valid messages.
        let n = 1 + usize::from(data[pos] % 32);
        let end = (pos + n).min(data.len());
        events.extend(chunked.feed(&data[pos..end]));
        let s = chunked.stats();
        assert!(s.buffered <= s.buffer_cap, "buffered {} > cap {}", s.buffered, s.buffer_cap);
        pos = end;
    }
    assert_eq!(events, reference, "output depends on chunking");
    assert_eq!(chunked.stats(), whole.stats(), "counters depend on chunking");
    for e in &events {
        if let Event::Record(r) = e {
            // Flags stay sorted and unique (Record::add_flag).
            assert!(r.flags.windows(2).all(|w| w[0] < w[1]));
        }
    }
    // Every record serialises to the vectors' JSON form.
    let json = device_drivers::serial::events_to_json(&events, &chunked.stats());
    assert!(json["records"].as_array().is_some_and(|a| a.iter().all(|r| !r.is_null())));
}
