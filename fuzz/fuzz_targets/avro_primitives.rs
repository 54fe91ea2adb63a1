#![no_main]
//! Reads arbitrary bytes as a sequence of Avro primitives chosen by the input itself:
//! no read may panic, and whatever decodes re-encodes to the bytes it came from.

use kaa_ism::avro::{Reader, put_bytes, put_long};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let mut reader = Reader::new(body, "Fuzz");
    for step in 0..64u32 {
        let before = reader.position();
        let op = (selector.rotate_left(step % 8)) % 6;
        let ok = match op {
            0 => reader.long("long").map(|v| {
                let mut out = Vec::new();
                put_long(&mut out, v);
                assert_eq!(&body[before..reader.position()], &out[..], "long re-encodes");
            }),
            1 => reader.int("int").map(drop),
            2 => reader.bytes("bytes").map(|b| {
                let mut out = Vec::new();
                put_bytes(&mut out, b);
                assert_eq!(&body[before..reader.position()], &out[..], "bytes re-encode");
            }),
            3 => reader.string("string").map(drop),
            4 => reader.union_index("union", 2).map(drop),
            _ => reader.map("map", 2, |r, _| r.string("map")).map(drop),
        };
        if ok.is_err() || reader.is_empty() {
            break;
        }
    }
});
