#![no_main]
//! 16/ECAP decoding: the first byte picks the record (`MessageKind::ALL`), the rest is
//! the datum.
//!
//! Decoding never panics. Whatever decodes must re-encode to exactly `encoded_len`
//! bytes and decode again to an equal message (decode → encode → decode is stable),
//! and its owned copy must be equal too.

use kaa_ecap::{EcapMessage, MessageKind};
use kaa_ism::avro::Encode;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, datum)) = data.split_first() else {
        return;
    };
    let kind = MessageKind::ALL[usize::from(selector) % MessageKind::ALL.len()];
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
});
