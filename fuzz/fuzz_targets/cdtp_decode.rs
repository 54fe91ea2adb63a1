#![no_main]
//! 6/CDTP decoding: the first byte picks the message type (the four RFC messages and
//! the kaa-rs extension `ProviderStarted`), the rest is decoded. No
//! input may panic, and whatever decodes must survive decode → encode → decode
//! unchanged, with `encoded_len` exact.

use kaa_cdtp::{ConfigApplied, ConfigRequest, ConfigResponse, ConfigUpdated, ProviderStarted};
use kaa_ism::avro::{Decode, Encode};
use libfuzzer_sys::fuzz_target;

macro_rules! stable {
    ($ty:ident, $input:expr) => {{
        if let Ok(first) = $ty::decode($input) {
            let bytes = first.to_vec();
            assert_eq!(bytes.len(), first.encoded_len(), "encoded_len is exact");
            let second = $ty::decode(&bytes).expect("re-encoded datum decodes");
            assert_eq!(first, second, "decode → encode → decode changed the value");
            // A canonical datum re-encodes to itself.
            assert_eq!(second.to_vec(), bytes, "encoding is canonical");
        }
    }};
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    match selector % 5 {
        0 => stable!(ConfigRequest, body),
        1 => stable!(ConfigResponse, body),
        2 => stable!(ConfigUpdated, body),
        3 => stable!(ConfigApplied, body),
        _ => stable!(ProviderStarted, body),
    }
});
