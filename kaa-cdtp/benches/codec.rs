//! Encode and decode speed of a 6/CDTP `ConfigResponse` with 4 KiB of content: ours
//! vs apache-avro 0.22 (its schema-aware serde path, the fastest it has) vs
//! serde_json, each on the same data.
//!
//! `kaa` decoding borrows strings and the content from the input; `kaa_owned`
//! decodes and then calls `into_owned`, the fair comparison with the two others,
//! which allocate every string and the content.
//!
//! Where the time goes (perf, on the 2-core dev machine): `kaa` encoding is bound by
//! copying the 4 KiB of content into the new buffer (about 70% of its time is
//! `memmove`), which every encoder must do, so its lead over apache-avro here is
//! smaller than for small messages; `kaa` decoding is mostly UTF-8 validation of
//! the borrowed strings and the field-by-field `Result` plumbing.
//!
//! `kaa_spliced` (encode) is `ConfigResponse::encode_spliced`: the same datum as a
//! `SplicedDatum` of three chunks whose middle one borrows the content, for callers
//! that write vectored; it is not contiguous, so it is reported beside the `kaa`
//! row (`to_vec`, the like-for-like comparison), not instead of it.
//!
//! The `*_reused_buf` encode rows write into one buffer the caller keeps and clears
//! (the `Encode::encode` API, into any `BufMut`), for all three encoders alike; the
//! other rows return a fresh vector each time.
//!
//! Run: `cargo bench -p kaa-cdtp --bench codec`.

use std::borrow::Cow;
use std::hint::black_box;

use apache_avro::Schema;
use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::writer::datum::GenericDatumWriter;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use kaa_cdtp::ConfigResponse;
use kaa_ism::avro::{Decode, Encode};
use serde::{Deserialize, Serialize};

fn rfc_schema(file: &str) -> Schema {
    let path = format!("{}/schemas/{file}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    Schema::parse_str(&text).expect("RFC schema parses")
}

/// 4 KiB of JSON configuration.
fn content() -> Vec<u8> {
    let mut c = b"{\"settings\":[".to_vec();
    let mut i = 0;
    while c.len() < 4096 - 40 {
        c.extend_from_slice(format!("{{\"key\":\"k{i}\",\"value\":{i}}},").as_bytes());
        i += 1;
    }
    c.extend_from_slice(b"{}],\"pad\":\"");
    while c.len() < 4096 - 2 {
        c.push(b'x');
    }
    c.extend_from_slice(b"\"}");
    assert_eq!(c.len(), 4096);
    c
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
// apache-avro checks the struct name against the record name.
#[serde(rename = "ConfigResponse", rename_all = "camelCase")]
struct ConfigResponseMirror {
    correlation_id: String,
    timestamp: i64,
    timeout: i64,
    app_version_name: String,
    endpoint_id: String,
    config_id: Option<String>,
    content_type: String,
    #[serde(with = "apache_avro::serde::bytes_opt")]
    content: Option<Vec<u8>>,
    status_code: i32,
    reason_phrase: Option<String>,
}

fn bench_config_response(c: &mut Criterion) {
    let schema = rfc_schema("0006-config-response.avsc");
    let mirror = ConfigResponseMirror {
        correlation_id: "07d78e95-2c4d-4899-957c-b9e5a3701fbb".into(),
        timestamp: 1_490_303_342_158,
        timeout: 3_000,
        app_version_name: "smartKettleV1".into(),
        endpoint_id: "b197e391-1d13-403b-83f5-87bdd44888cf".into(),
        config_id: Some("6046b576591c75fd68ab67f7e4475311".into()),
        content_type: "application/json".into(),
        content: Some(content()),
        status_code: 200,
        reason_phrase: Some("OK".into()),
    };
    let ours = ConfigResponse {
        correlation_id: Cow::Borrowed(&mirror.correlation_id),
        timestamp: mirror.timestamp,
        timeout: mirror.timeout,
        app_version_name: Cow::Borrowed(&mirror.app_version_name),
        endpoint_id: Cow::Borrowed(&mirror.endpoint_id),
        config_id: mirror.config_id.as_deref().map(Cow::Borrowed),
        content_type: Cow::Borrowed(&mirror.content_type),
        content: mirror.content.as_deref().map(Cow::Borrowed),
        status_code: mirror.status_code,
        reason_phrase: mirror.reason_phrase.as_deref().map(Cow::Borrowed),
    };
    let writer = GenericDatumWriter::builder(&schema)
        .build()
        .expect("writer");
    let reader = GenericDatumReader::builder(&schema)
        .build()
        .expect("reader");
    let datum = ours.to_vec();
    assert_eq!(writer.write_ser_to_vec(&mirror).expect("apache"), datum);
    let json = serde_json::to_vec(&mirror).expect("json");

    let mut group = c.benchmark_group("ConfigResponse/encode");
    group.throughput(Throughput::Elements(1));
    group.bench_function("kaa", |b| b.iter(|| black_box(&ours).to_vec()));
    // A different result from the other rows: the datum as three chunks with the
    // content borrowed (for vectored writes), not one contiguous vector.
    assert_eq!(ours.encode_spliced().to_vec(), datum);
    group.bench_function("kaa_spliced", |b| {
        b.iter(|| black_box(&ours).encode_spliced())
    });
    group.bench_function("apache_avro", |b| {
        b.iter(|| writer.write_ser_to_vec(black_box(&mirror)).expect("encode"))
    });
    group.bench_function("serde_json", |b| {
        b.iter(|| serde_json::to_vec(black_box(&mirror)).expect("encode"))
    });
    // The same three into one buffer the caller reuses (cleared each time), as a
    // service encoding message after message does: no allocation, no growth.
    let mut buf = Vec::with_capacity(json.len().max(datum.len()));
    group.bench_function("kaa_reused_buf", |b| {
        b.iter(|| {
            buf.clear();
            black_box(&ours).encode(&mut buf);
            black_box(buf.len())
        })
    });
    group.bench_function("apache_avro_reused_buf", |b| {
        b.iter(|| {
            buf.clear();
            writer
                .write_ser(&mut buf, black_box(&mirror))
                .expect("encode");
            black_box(buf.len())
        })
    });
    group.bench_function("serde_json_reused_buf", |b| {
        b.iter(|| {
            buf.clear();
            serde_json::to_writer(&mut buf, black_box(&mirror)).expect("encode");
            black_box(buf.len())
        })
    });
    group.finish();

    let mut group = c.benchmark_group("ConfigResponse/decode");
    group.throughput(Throughput::Elements(1));
    group.bench_function("kaa", |b| {
        b.iter(|| ConfigResponse::decode(black_box(&datum)).expect("decode"))
    });
    group.bench_function("kaa_owned", |b| {
        b.iter(|| {
            ConfigResponse::decode(black_box(&datum))
                .expect("decode")
                .into_owned()
        })
    });
    group.bench_function("apache_avro", |b| {
        b.iter(|| {
            reader
                .read_deser::<ConfigResponseMirror>(&mut black_box(&datum[..]))
                .expect("decode")
        })
    });
    group.bench_function("serde_json", |b| {
        b.iter(|| serde_json::from_slice::<ConfigResponseMirror>(black_box(&json)).expect("decode"))
    });
    group.finish();
}

criterion_group!(benches, bench_config_response);
criterion_main!(benches);
