#![no_main]
//! 9/ELCE decoding: the first byte picks the event kind (or one of the kaa-rs
//! sessions messages), the rest is the datum.
//!
//! Whatever decodes must re-encode to exactly `encoded_len` bytes and decode again to
//! an equal event (decode → encode → decode is stable). With a limit, decoding must
//! agree with the unlimited decoder whenever the event fits the limit.

use kaa_elce::{DecodeLimits, ElceEvent, EventKind, SessionsRequest, SessionsResponse};
use kaa_ism::avro::{Decode, Encode};
use libfuzzer_sys::fuzz_target;

/// The selectors after the event kinds: the sessions request and response.
const SESSIONS_SELECTORS: usize = 2;

fn sessions_request(datum: &[u8]) {
    let Ok(request) = SessionsRequest::decode(datum) else {
        return;
    };
    let encoded = request.to_vec();
    assert_eq!(encoded.len(), request.encoded_len());
    let again = SessionsRequest::decode(&encoded).expect("a re-encoded request decodes");
    assert_eq!(again, request);
    assert_eq!(again.to_vec(), encoded);
}

fn sessions_response(datum: &[u8]) {
    let Ok(response) = SessionsResponse::decode(datum) else {
        return;
    };
    let encoded = response.to_vec();
    assert_eq!(encoded.len(), response.encoded_len());
    let again = SessionsResponse::decode(&encoded).expect("a re-encoded response decodes");
    assert_eq!(again, response);
    assert_eq!(again.to_vec(), encoded);
    assert_eq!(again.clone().into_owned(), response);

    let limited = SessionsResponse::decode_with_limits(datum, DecodeLimits::with_max_endpoints(3));
    assert_eq!(limited.is_ok(), response.endpoint_count() <= 3);
    if let Ok(limited) = limited {
        assert_eq!(limited, response);
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, datum)) = data.split_first() else {
        return;
    };
    let selector = usize::from(selector) % (EventKind::ALL.len() + SESSIONS_SELECTORS);
    let Some(&kind) = EventKind::ALL.get(selector) else {
        if selector == EventKind::ALL.len() {
            sessions_request(datum);
        } else {
            sessions_response(datum);
        }
        return;
    };
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
