//! Encode and decode speed of the 9/ELCE codec against Apache Avro 0.22 (schema-aware
//! serde writer and reader, its fastest path) and serde_json (a serde mirror of the
//! same data; decoding borrows its strings).
//!
//! `ConnectedEvent` with 1,000 endpoints: UUID endpoint IDs, short app version names,
//! what a communication service publishes when a gateway session with many endpoints
//! opens.
//!
//! `kaa` decoding reads the endpoint map with `Reader::string_map`: one SIMD UTF-8
//! check (`simdutf8`) over the whole block instead of 2,000 short `from_utf8` calls,
//! and entries with short keys and values split straight off the checked text.
//!
//! Run: `cargo bench -p kaa-elce --bench codec`.

#[path = "../tests/mirror/mod.rs"]
#[allow(dead_code, reason = "the bench uses only the ConnectedEvent mirror")]
mod mirror;

use std::borrow::Cow;
use std::hint::black_box;

use apache_avro::Schema;
use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::writer::datum::GenericDatumWriter;
use criterion::{Criterion, criterion_group, criterion_main};
use kaa_elce::ConnectedEvent;
use kaa_ism::avro::{Decode, Encode};
use mirror::{ConnectedMirror, OrderedMap};

const ENDPOINTS: usize = 1_000;

fn uuid(i: usize) -> String {
    format!(
        "{:08x}-{:04x}-4{:03x}-9{:03x}-{:012x}",
        i.wrapping_mul(2_654_435_761) as u32,
        i & 0xffff,
        i & 0xfff,
        (i * 7) & 0xfff,
        i * 1_000_003
    )
}

fn connected_event() -> ConnectedEvent<'static> {
    ConnectedEvent {
        correlation_id: Cow::Borrowed("7d0b1f4c-2a5e-4c8b-9f3d-6e1a2b3c4d5e"),
        timestamp: 1_700_000_000_000,
        timeout: 60_000,
        endpoints: (0..ENDPOINTS)
            .map(|i| {
                (
                    Cow::Owned(uuid(i)),
                    Cow::Owned(format!("sensor-v{}", i % 4)),
                )
            })
            .collect(),
        originator_replica_id: Cow::Borrowed("kpc-replica-1"),
    }
}

fn mirror_of<'a>(e: &'a ConnectedEvent<'_>) -> ConnectedMirror<&'a str> {
    ConnectedMirror {
        correlation_id: &e.correlation_id,
        timestamp: e.timestamp,
        timeout: e.timeout,
        endpoints: OrderedMap(e.endpoints.iter().map(|(k, v)| (&**k, &**v)).collect()),
        originator_replica_id: &e.originator_replica_id,
    }
}

fn connected(c: &mut Criterion) {
    let schema_path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/schemas/0009-ep-connected.avsc"
    );
    let schema_text = std::fs::read_to_string(schema_path).expect("RFC schema");
    let schema = Schema::parse_str(&schema_text).expect("schema parses");
    let writer = GenericDatumWriter::builder(&schema)
        .build()
        .expect("writer");
    let reader = GenericDatumReader::builder(&schema)
        .build()
        .expect("reader");

    let event = connected_event();
    let mirror = mirror_of(&event);
    let datum = event.to_vec();
    assert_eq!(
        writer.write_ser_to_vec(&mirror).expect("apache-avro"),
        datum
    );
    let json = serde_json::to_vec(&mirror).expect("json");
    assert_eq!(ConnectedEvent::decode(&datum).expect("decode"), event);

    let mut group = c.benchmark_group("ConnectedEvent/encode");
    let mut buf = Vec::with_capacity(json.len().max(datum.len()));
    group.bench_function("kaa", |b| {
        b.iter(|| {
            buf.clear();
            black_box(&event).encode(&mut buf);
            black_box(buf.len())
        })
    });
    group.bench_function("apache_avro", |b| {
        b.iter(|| {
            buf.clear();
            writer
                .write_ser(&mut buf, black_box(&mirror))
                .expect("apache-avro");
            black_box(buf.len())
        })
    });
    group.bench_function("serde_json", |b| {
        b.iter(|| {
            buf.clear();
            serde_json::to_writer(&mut buf, black_box(&mirror)).expect("json");
            black_box(buf.len())
        })
    });
    group.finish();

    let mut group = c.benchmark_group("ConnectedEvent/decode");
    group.bench_function("kaa", |b| {
        b.iter(|| ConnectedEvent::decode(black_box(&datum)).expect("decode"))
    });
    group.bench_function("apache_avro", |b| {
        b.iter(|| {
            let mut input = black_box(&datum[..]);
            reader
                .read_deser::<ConnectedMirror<String>>(&mut input)
                .expect("apache-avro")
        })
    });
    group.bench_function("serde_json", |b| {
        b.iter(|| serde_json::from_slice::<ConnectedMirror<&str>>(black_box(&json)).expect("json"))
    });
    group.finish();
}

criterion_group!(benches, connected);
criterion_main!(benches);
