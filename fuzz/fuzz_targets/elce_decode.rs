#![no_main]
//! 9/ELCE decoding: the first byte picks the event kind, the rest is the datum.
//!
//! Whatever decodes must re-encode to exactly `encoded_len` bytes and decode again to
//! an equal event (decode → encode → decode is stable). With a limit, decoding must
//! agree with the unlimited decoder whenever the event fits the limit.

use kaa_elce::{DecodeLimits, ElceEvent, EventKind};
use kaa_ism::avro::Encode;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, datum)) = data.split_first() else {
        return;
    };
    let kind = EventKind::ALL[usize::from(selector) % EventKind::ALL.len()];
    let Ok(event) = ElceEvent::decode_kind(kind, datum, DecodeLimits::UNLIMITED) else {
        return;
    };
    assert_eq!(event.kind(), kind);

    let encoded = event.to_vec();
    assert_eq!(encoded.len(), event.encoded_len());
    let again = ElceEvent::decode_kind(kind, &encoded, DecodeLimits::UNLIMITED)
        .expect("a re-encoded event decodes");
    assert_eq!(again, event);
    assert_eq!(again.to_vec(), encoded);

    // A limit of 3 endpoints: decodes the same event, or rejects one with more.
    let endpoints = match &event {
        ElceEvent::Connected(e) => e.endpoint_count(),
        ElceEvent::Disconnected(e) => e.endpoint_count(),
        ElceEvent::TrafficReport(e) => e.endpoint_count(),
        _ => 0,
    };
    let limited = ElceEvent::decode_kind(kind, datum, DecodeLimits::with_max_endpoints(3));
    assert_eq!(limited.is_ok(), endpoints <= 3);
    if let Ok(limited) = limited {
        assert_eq!(limited, event);
    }
});
