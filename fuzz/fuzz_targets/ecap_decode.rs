#![no_main]
//! 16/ECAP decoding: the first byte picks the record (`MessageKind::ALL`, then the
//! kaa-rs extension's `EndpointMetadataRequest` and `EndpointMetadataResponse`), the
//! rest is the datum.
//!
//! Decoding never panics. Whatever decodes must re-encode to exactly `encoded_len`
//! bytes and decode again to an equal message (decode → encode → decode is stable),
//! and its owned copy must be equal too. A decoded metadata response also goes
//! through `fit` with a budget taken from the datum: what it keeps is a prefix of
//! the entries, within the budget, and re-encodes and decodes like the rest.

use kaa_ecap::metadata::{EndpointMetadataRequest, EndpointMetadataResponse};
use kaa_ecap::{EcapMessage, MessageKind};
use kaa_ism::avro::{Decode, Encode};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, datum)) = data.split_first() else {
        return;
    };
    let choices = MessageKind::ALL.len() + 2;
    match usize::from(selector) % choices {
        i if i < MessageKind::ALL.len() => rfc_record(MessageKind::ALL[i], datum),
        i if i == MessageKind::ALL.len() => metadata_request(datum),
        _ => metadata_response(datum),
    }
});

fn rfc_record(kind: MessageKind, datum: &[u8]) {
    let Ok(message) = EcapMessage::decode_kind(kind, datum) else {
        return;
    };
    assert_eq!(message.kind(), kind);

    let encoded = message.to_vec();
    assert_eq!(encoded.len(), message.encoded_len());
    let again = EcapMessage::decode_kind(kind, &encoded).expect("a re-encoded message decodes");
    assert_eq!(again, message);
    assert_eq!(again.to_vec(), encoded);
    assert_eq!(again.into_owned(), message);
}

fn metadata_request(datum: &[u8]) {
    let Ok(message) = EndpointMetadataRequest::decode(datum) else {
        return;
    };
    let encoded = message.to_vec();
    assert_eq!(encoded.len(), message.encoded_len());
    let again = EndpointMetadataRequest::decode(&encoded).expect("a re-encoded request decodes");
    assert_eq!(again, message);
    assert_eq!(again.to_vec(), encoded);
    assert_eq!(again.into_owned(), message);
    assert_eq!(
        EndpointMetadataRequest::correlation_id_of(datum),
        Some(&*message.correlation_id)
    );
}

fn metadata_response(datum: &[u8]) {
    let Ok(message) = EndpointMetadataResponse::decode(datum) else {
        return;
    };
    let encoded = message.to_vec();
    assert_eq!(encoded.len(), message.encoded_len());
    let again = EndpointMetadataResponse::decode(&encoded).expect("a re-encoded response decodes");
    assert_eq!(again, message);
    assert_eq!(again.to_vec(), encoded);
    assert_eq!(again.clone().into_owned(), message);

    let budget = datum.len() / 2;
    let mut fitted = message.clone().into_owned();
    let kept = fitted.fit(budget);
    assert_eq!(fitted.endpoints.len(), kept);
    for (after, before) in fitted.endpoints.iter().zip(&message.endpoints) {
        assert_eq!(after.endpoint_id, before.endpoint_id);
    }
    if kept > 0 {
        assert!(fitted.encoded_len() <= budget);
    }
    let encoded = fitted.to_vec();
    assert_eq!(
        EndpointMetadataResponse::decode(&encoded).expect("a fitted response decodes"),
        fitted
    );
}
