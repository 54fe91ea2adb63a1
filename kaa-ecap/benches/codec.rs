//! Encode and decode speed of the 16/ECAP codec against Apache Avro 0.22 (schema-aware
//! serde writer and reader, its fastest path) and serde_json (a serde mirror of the
//! same data; decoding borrows its strings).
//!
//! The endpoint token validation request and response: what a communication service
//! sends for every device that connects with a token, and what it gets back (UUID
//! correlation, token and endpoint IDs, status 200, no reason phrase). `kaa` decode
//! borrows its strings; `kaa_owned` (decode + `into_owned()`) allocates them, as the
//! two baselines do.
//!
//! Run: `cargo bench -p kaa-ecap --bench codec`.

#[path = "../tests/mirror/mod.rs"]
#[allow(
    dead_code,
    reason = "the bench uses only the endpoint token validation mirrors"
)]
mod mirror;

use std::hint::black_box;

use apache_avro::Schema;
use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::writer::datum::GenericDatumWriter;
use criterion::{Criterion, criterion_group, criterion_main};
use kaa_ecap::{EndpointTokenValidationRequest, EndpointTokenValidationResponse};
use kaa_ism::avro::{Decode, Encode};
use mirror::{EndpointTokenValidationRequestMirror, EndpointTokenValidationResponseMirror};
use serde::Serialize;
use serde::de::DeserializeOwned;

fn request() -> EndpointTokenValidationRequest<'static> {
    EndpointTokenValidationRequest {
        correlation_id: "7d0b1f4c-2a5e-4c8b-9f3d-6e1a2b3c4d5e".into(),
        timestamp: 1_700_000_000_000,
        timeout: 5_000,
        app_name: "smart-kettle".into(),
        token: "kettle-7f3a9c2e-51b4-4d0a-8c6e-2b9d4f1a7e30".into(),
    }
}

fn response() -> EndpointTokenValidationResponse<'static> {
    EndpointTokenValidationResponse {
        correlation_id: "7d0b1f4c-2a5e-4c8b-9f3d-6e1a2b3c4d5e".into(),
        timestamp: 1_700_000_000_012,
        timeout: 5_000,
        token_id: Some("0b7e4d2c-9a51-4e38-8f06-1d2c3b4a5968".into()),
        endpoint_id: Some("6f1c0a52-3b9e-4f7d-a1e0-2c4b8d9e7f10".into()),
        status_code: 200,
        reason_phrase: None,
    }
}

fn request_mirror<'a>(
    m: &'a EndpointTokenValidationRequest<'_>,
) -> EndpointTokenValidationRequestMirror<&'a str> {
    EndpointTokenValidationRequestMirror {
        correlation_id: &m.correlation_id,
        timestamp: m.timestamp,
        timeout: m.timeout,
        app_name: &m.app_name,
        token: &m.token,
    }
}

fn response_mirror<'a>(
    m: &'a EndpointTokenValidationResponse<'_>,
) -> EndpointTokenValidationResponseMirror<&'a str> {
    EndpointTokenValidationResponseMirror {
        correlation_id: &m.correlation_id,
        timestamp: m.timestamp,
        timeout: m.timeout,
        token_id: m.token_id.as_deref(),
        endpoint_id: m.endpoint_id.as_deref(),
        status_code: m.status_code,
        reason_phrase: m.reason_phrase.as_deref(),
    }
}

/// The seven measurements of one message: encode and decode, ours against the two
/// baselines. `Owned` is the mirror Apache Avro reads into; `mirror` (borrowing the
/// message's strings) is what Apache Avro and serde_json write from. Every encoder
/// returns a new vector. The decoders return a length from the decoded value so that
/// the decoding cannot be optimised away; `decode` must give back `message` (checked
/// by the caller).
#[allow(
    clippy::too_many_arguments,
    reason = "each message brings its own three decoders"
)]
fn compare<T, Borrowed, Owned>(
    c: &mut Criterion,
    name: &str,
    schema_file: &str,
    message: &T,
    mirror: Borrowed,
    decode: impl Fn(&[u8]) -> usize,
    decode_owned: impl Fn(&[u8]) -> usize,
    decode_json: impl Fn(&[u8]) -> usize,
) where
    T: Encode,
    Borrowed: Serialize,
    Owned: DeserializeOwned,
{
    let path = format!("{}/schemas/{schema_file}", env!("CARGO_MANIFEST_DIR"));
    let schema_text = std::fs::read_to_string(&path).expect("RFC schema");
    let schema = Schema::parse_str(&schema_text).expect("schema parses");
    let writer = GenericDatumWriter::builder(&schema)
        .build()
        .expect("writer");
    let reader = GenericDatumReader::builder(&schema)
        .build()
        .expect("reader");

    let datum = message.to_vec();
    assert_eq!(
        writer.write_ser_to_vec(&mirror).expect("apache-avro"),
        datum
    );
    assert_eq!(decode(&datum), decode_owned(&datum));
    let json = serde_json::to_vec(&mirror).expect("json");
    assert_eq!(decode_json(&json), decode(&datum));

    let mut group = c.benchmark_group(format!("{name}/encode"));
    group.bench_function("kaa", |b| b.iter(|| black_box(message).to_vec()));
    group.bench_function("apache_avro", |b| {
        b.iter(|| {
            writer
                .write_ser_to_vec(black_box(&mirror))
                .expect("apache-avro")
        })
    });
    group.bench_function("serde_json", |b| {
        b.iter(|| serde_json::to_vec(black_box(&mirror)).expect("json"))
    });
    group.finish();

    let mut group = c.benchmark_group(format!("{name}/decode"));
    group.bench_function("kaa", |b| b.iter(|| decode(black_box(&datum))));
    group.bench_function("kaa_owned", |b| b.iter(|| decode_owned(black_box(&datum))));
    group.bench_function("apache_avro", |b| {
        b.iter(|| {
            let mut input = black_box(&datum[..]);
            reader.read_deser::<Owned>(&mut input).expect("apache-avro")
        })
    });
    group.bench_function("serde_json", |b| b.iter(|| decode_json(black_box(&json))));
    group.finish();
}

/// What the request decoders return: the lengths of its strings.
fn decoded_len(m: &EndpointTokenValidationRequest<'_>) -> usize {
    m.correlation_id.len() + m.app_name.len() + m.token.len()
}

/// What the response decoders return: the lengths of its strings.
fn response_len(m: &EndpointTokenValidationResponse<'_>) -> usize {
    m.correlation_id.len()
        + m.token_id.as_deref().map_or(0, str::len)
        + m.endpoint_id.as_deref().map_or(0, str::len)
}

fn endpoint_token_validation(c: &mut Criterion) {
    let request = request();
    let datum = request.to_vec();
    assert_eq!(
        EndpointTokenValidationRequest::decode(&datum).expect("decode"),
        request
    );
    compare::<_, _, EndpointTokenValidationRequestMirror<String>>(
        c,
        "EndpointTokenValidationRequest",
        "0016-endpoint-token-validation-request.avsc",
        &request,
        request_mirror(&request),
        |d| decoded_len(&EndpointTokenValidationRequest::decode(d).expect("decode")),
        |d| {
            let owned = EndpointTokenValidationRequest::decode(d)
                .expect("decode")
                .into_owned();
            decoded_len(&owned)
        },
        |j| {
            let m: EndpointTokenValidationRequestMirror<&str> =
                serde_json::from_slice(j).expect("json");
            m.correlation_id.len() + m.app_name.len() + m.token.len()
        },
    );

    let response = response();
    let datum = response.to_vec();
    assert_eq!(
        EndpointTokenValidationResponse::decode(&datum).expect("decode"),
        response
    );
    compare::<_, _, EndpointTokenValidationResponseMirror<String>>(
        c,
        "EndpointTokenValidationResponse",
        "0016-endpoint-token-validation-response.avsc",
        &response,
        response_mirror(&response),
        |d| response_len(&EndpointTokenValidationResponse::decode(d).expect("decode")),
        |d| {
            let owned = EndpointTokenValidationResponse::decode(d)
                .expect("decode")
                .into_owned();
            response_len(&owned)
        },
        |j| {
            let m: EndpointTokenValidationResponseMirror<&str> =
                serde_json::from_slice(j).expect("json");
            m.correlation_id.len()
                + m.token_id.map_or(0, str::len)
                + m.endpoint_id.map_or(0, str::len)
        },
    );
}

criterion_group!(benches, endpoint_token_validation);
criterion_main!(benches);
