//! Encode and decode speed of the 4/ESP messages: ours vs apache-avro 0.22 (its
//! schema-aware serde path, the fastest it has) vs serde_json, each on the same
//! data (a 200-byte payload).
//!
//! `kaa` decoding borrows strings and the payload from the input; `kaa_owned`
//! decodes and then calls `into_owned`, the fair comparison with the two others,
//! which allocate every string and the payload.
//!
//! Where the time goes (callgrind, instructions per decode): a `ClientData` decode
//! is about 1,350 instructions, of which about 530 are `std::str::from_utf8` on the
//! five borrowed strings (inputs this short get no SIMD speed-up: `simdutf8` itself
//! hands inputs under 64 bytes to std, and `bstr`'s validator measured no fewer
//! instructions), and most of the rest reading fields one `Result` at a time.
//!
//! Run: `cargo bench -p kaa-esp --bench codec`.

use std::borrow::Cow;
use std::hint::black_box;

use apache_avro::Schema;
use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::writer::datum::GenericDatumWriter;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use kaa_esp::{ClientData, ExtensionData};
use kaa_ism::avro::{Decode, Encode};
use serde::{Deserialize, Serialize};

fn rfc_schema(file: &str) -> Schema {
    let path = format!("{}/schemas/{file}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    Schema::parse_str(&text).expect("RFC schema parses")
}

/// A 200-byte JSON-ish payload.
fn payload() -> Vec<u8> {
    let mut p = br#"{"humidity":88,"temperature":21.5,"battery":97,"samples":["#.to_vec();
    while p.len() < 198 {
        p.extend_from_slice(b"1,");
    }
    p.truncate(198);
    p.extend_from_slice(b"]}");
    assert_eq!(p.len(), 200);
    p
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
// apache-avro checks the struct name against the record name.
#[serde(rename = "ClientData", rename_all = "camelCase")]
struct ClientDataMirror {
    correlation_id: String,
    timestamp: i64,
    timeout: i64,
    app_version_name: String,
    endpoint_id: Option<String>,
    resource_path: String,
    request_id: Option<i32>,
    #[serde(with = "apache_avro::serde::bytes")]
    payload: Vec<u8>,
    config_name: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
// apache-avro checks the struct name against the record name.
#[serde(rename = "ExtensionData", rename_all = "camelCase")]
struct ExtensionDataMirror {
    correlation_id: String,
    timestamp: i64,
    timeout: i64,
    app_version_name: Option<String>,
    extension_instance_name: Option<String>,
    endpoint_id: Option<String>,
    resource_path: String,
    request_id: Option<i32>,
    #[serde(with = "apache_avro::serde::bytes_opt")]
    payload: Option<Vec<u8>>,
    status_code: i32,
    reason_phrase: Option<String>,
}

fn bench_client_data(c: &mut Criterion) {
    let schema = rfc_schema("0004-client-data.avsc");
    let mirror = ClientDataMirror {
        correlation_id: "07d78e95-2c4d-4899-957c-b9e5a3701fbb".into(),
        timestamp: 1_490_262_793_349,
        timeout: 3_600_000,
        app_version_name: "humidity-sensor-v3".into(),
        endpoint_id: Some("7ad263ec-3347-4c7d-af89-50c67061367a".into()),
        resource_path: "/config/json".into(),
        request_id: Some(42),
        payload: payload(),
        config_name: Some("network".into()),
    };
    let ours = ClientData {
        correlation_id: Cow::Borrowed(&mirror.correlation_id),
        timestamp: mirror.timestamp,
        timeout: mirror.timeout,
        app_version_name: Cow::Borrowed(&mirror.app_version_name),
        endpoint_id: mirror.endpoint_id.as_deref().map(Cow::Borrowed),
        resource_path: Cow::Borrowed(&mirror.resource_path),
        request_id: mirror.request_id,
        payload: Cow::Borrowed(&mirror.payload),
        config_name: mirror.config_name.as_deref().map(Cow::Borrowed),
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

    let mut group = c.benchmark_group("ClientData/encode");
    group.throughput(Throughput::Elements(1));
    group.bench_function("kaa", |b| b.iter(|| black_box(&ours).to_vec()));
    group.bench_function("apache_avro", |b| {
        b.iter(|| writer.write_ser_to_vec(black_box(&mirror)).expect("encode"))
    });
    group.bench_function("serde_json", |b| {
        b.iter(|| serde_json::to_vec(black_box(&mirror)).expect("encode"))
    });
    group.finish();

    let mut group = c.benchmark_group("ClientData/decode");
    group.throughput(Throughput::Elements(1));
    group.bench_function("kaa", |b| {
        b.iter(|| ClientData::decode(black_box(&datum)).expect("decode"))
    });
    group.bench_function("kaa_owned", |b| {
        b.iter(|| {
            ClientData::decode(black_box(&datum))
                .expect("decode")
                .into_owned()
        })
    });
    group.bench_function("apache_avro", |b| {
        b.iter(|| {
            reader
                .read_deser::<ClientDataMirror>(&mut black_box(&datum[..]))
                .expect("decode")
        })
    });
    group.bench_function("serde_json", |b| {
        b.iter(|| serde_json::from_slice::<ClientDataMirror>(black_box(&json)).expect("decode"))
    });
    group.finish();
}

fn bench_extension_data(c: &mut Criterion) {
    let schema = rfc_schema("0004-extension-data.avsc");
    let mirror = ExtensionDataMirror {
        correlation_id: "07d78e95-2c4d-4899-957c-b9e5a3701fbb".into(),
        timestamp: 1_490_262_793_349,
        timeout: 3_600_000,
        app_version_name: Some("humidity-sensor-v3".into()),
        extension_instance_name: Some("cmx".into()),
        endpoint_id: Some("7ad263ec-3347-4c7d-af89-50c67061367a".into()),
        resource_path: "/config/json".into(),
        request_id: Some(42),
        payload: Some(payload()),
        status_code: 200,
        reason_phrase: Some("OK".into()),
    };
    let ours = ExtensionData {
        correlation_id: Cow::Borrowed(&mirror.correlation_id),
        timestamp: mirror.timestamp,
        timeout: mirror.timeout,
        app_version_name: mirror.app_version_name.as_deref().map(Cow::Borrowed),
        extension_instance_name: mirror.extension_instance_name.as_deref().map(Cow::Borrowed),
        endpoint_id: mirror.endpoint_id.as_deref().map(Cow::Borrowed),
        resource_path: Cow::Borrowed(&mirror.resource_path),
        request_id: mirror.request_id,
        payload: mirror.payload.as_deref().map(Cow::Borrowed),
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

    let mut group = c.benchmark_group("ExtensionData/encode");
    group.throughput(Throughput::Elements(1));
    group.bench_function("kaa", |b| b.iter(|| black_box(&ours).to_vec()));
    group.bench_function("apache_avro", |b| {
        b.iter(|| writer.write_ser_to_vec(black_box(&mirror)).expect("encode"))
    });
    group.bench_function("serde_json", |b| {
        b.iter(|| serde_json::to_vec(black_box(&mirror)).expect("encode"))
    });
    group.finish();

    let mut group = c.benchmark_group("ExtensionData/decode");
    group.throughput(Throughput::Elements(1));
    group.bench_function("kaa", |b| {
        b.iter(|| ExtensionData::decode(black_box(&datum)).expect("decode"))
    });
    group.bench_function("kaa_owned", |b| {
        b.iter(|| {
            ExtensionData::decode(black_box(&datum))
                .expect("decode")
                .into_owned()
        })
    });
    group.bench_function("apache_avro", |b| {
        b.iter(|| {
            reader
                .read_deser::<ExtensionDataMirror>(&mut black_box(&datum[..]))
                .expect("decode")
        })
    });
    group.bench_function("serde_json", |b| {
        b.iter(|| serde_json::from_slice::<ExtensionDataMirror>(black_box(&json)).expect("decode"))
    });
    group.finish();
}

criterion_group!(benches, bench_client_data, bench_extension_data);
criterion_main!(benches);
