//! Cross-check against Apache Avro's Rust implementation (`apache-avro` 0.22) with
//! the RFC schemas: it decodes what we encode, we decode what it encodes, and both
//! write the same bytes, for arbitrary messages (non-ASCII strings, every optional
//! field both ways, payloads of 0..4 KiB, extreme numbers).
//!
//! Uses apache-avro's schema-aware serde path (`GenericDatumWriter::write_ser`,
//! `GenericDatumReader::read_deser`) with mirror structs: its serde-to-`Value` path
//! (`to_value`) turns `None` into `Union(0, Null)`, i.e. assumes `null` is the first
//! branch, while 4/ESP's `["string","null"]` unions put it second.

use std::borrow::Cow;

use apache_avro::Schema;
use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::writer::datum::GenericDatumWriter;
use kaa_esp::{ClientData, ExtensionData};
use kaa_ism::avro::{Decode, Encode};
use proptest::prelude::*;
use serde::{Deserialize, Serialize};

fn rfc_schema(file: &str) -> Schema {
    let path = format!("{}/schemas/{file}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    Schema::parse_str(&text).expect("RFC schema parses")
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

fn cow(s: String) -> Cow<'static, str> {
    Cow::Owned(s)
}

impl ClientDataMirror {
    fn to_kaa(&self) -> ClientData<'static> {
        let m = self.clone();
        ClientData {
            correlation_id: cow(m.correlation_id),
            timestamp: m.timestamp,
            timeout: m.timeout,
            app_version_name: cow(m.app_version_name),
            endpoint_id: m.endpoint_id.map(cow),
            resource_path: cow(m.resource_path),
            request_id: m.request_id,
            payload: Cow::Owned(m.payload),
            config_name: m.config_name.map(cow),
        }
    }
}

impl ExtensionDataMirror {
    fn to_kaa(&self) -> ExtensionData<'static> {
        let m = self.clone();
        ExtensionData {
            correlation_id: cow(m.correlation_id),
            timestamp: m.timestamp,
            timeout: m.timeout,
            app_version_name: m.app_version_name.map(cow),
            extension_instance_name: m.extension_instance_name.map(cow),
            endpoint_id: m.endpoint_id.map(cow),
            resource_path: cow(m.resource_path),
            request_id: m.request_id,
            payload: m.payload.map(Cow::Owned),
            status_code: m.status_code,
            reason_phrase: m.reason_phrase.map(cow),
        }
    }
}

/// Any string, including non-ASCII and control characters.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![".{0,24}", "[a-z0-9-]{0,12}", Just(String::new())]
}

/// Longs weighted toward the varint length boundaries and extremes.
fn long() -> impl Strategy<Value = i64> {
    prop_oneof![
        any::<i64>(),
        -200i64..200,
        Just(i64::MIN),
        Just(i64::MAX),
        Just(-65),
        Just(64)
    ]
}

fn int() -> impl Strategy<Value = i32> {
    prop_oneof![any::<i32>(), -200i32..600, Just(i32::MIN), Just(i32::MAX)]
}

fn payload() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(any::<u8>(), 0..4096)
}

prop_compose! {
    fn client_data()(
        correlation_id in text(),
        timestamp in long(),
        timeout in long(),
        app_version_name in text(),
        endpoint_id in proptest::option::of(text()),
        resource_path in text(),
        request_id in proptest::option::of(int()),
        payload in payload(),
        config_name in proptest::option::of(text()),
    ) -> ClientDataMirror {
        ClientDataMirror {
            correlation_id, timestamp, timeout, app_version_name, endpoint_id,
            resource_path, request_id, payload, config_name,
        }
    }
}

prop_compose! {
    fn extension_data()(
        correlation_id in text(),
        timestamp in long(),
        timeout in long(),
        app_version_name in proptest::option::of(text()),
        extension_instance_name in proptest::option::of(text()),
        endpoint_id in proptest::option::of(text()),
        resource_path in text(),
        request_id in proptest::option::of(int()),
        payload in proptest::option::of(payload()),
        status_code in int(),
        reason_phrase in proptest::option::of(text()),
    ) -> ExtensionDataMirror {
        ExtensionDataMirror {
            correlation_id, timestamp, timeout, app_version_name, extension_instance_name,
            endpoint_id, resource_path, request_id, payload, status_code, reason_phrase,
        }
    }
}

/// Decodes `datum` with apache-avro, checking that it reads every byte.
fn apache_read<T: serde::de::DeserializeOwned>(schema: &Schema, datum: &[u8]) -> T {
    let reader = GenericDatumReader::builder(schema).build().expect("reader");
    let mut input = datum;
    let value = reader
        .read_deser(&mut input)
        .expect("apache-avro decodes our datum");
    assert!(input.is_empty(), "apache-avro left {} bytes", input.len());
    value
}

fn apache_write<T: Serialize>(schema: &Schema, value: &T) -> Vec<u8> {
    GenericDatumWriter::builder(schema)
        .build()
        .expect("writer")
        .write_ser_to_vec(value)
        .expect("apache-avro encodes")
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn client_data_agrees_with_apache_avro(mirror in client_data()) {
        let schema = rfc_schema("0004-client-data.avsc");
        let ours = mirror.to_kaa();

        let our_bytes = ours.to_vec();
        prop_assert_eq!(our_bytes.len(), ours.encoded_len());
        let theirs: ClientDataMirror = apache_read(&schema, &our_bytes);
        prop_assert_eq!(&theirs, &mirror);

        let their_bytes = apache_write(&schema, &mirror);
        prop_assert_eq!(&their_bytes, &our_bytes);
        prop_assert_eq!(ClientData::decode(&their_bytes), Ok(ours));
    }

    #[test]
    fn extension_data_agrees_with_apache_avro(mirror in extension_data()) {
        let schema = rfc_schema("0004-extension-data.avsc");
        let ours = mirror.to_kaa();

        let our_bytes = ours.to_vec();
        prop_assert_eq!(our_bytes.len(), ours.encoded_len());
        let theirs: ExtensionDataMirror = apache_read(&schema, &our_bytes);
        prop_assert_eq!(&theirs, &mirror);

        let their_bytes = apache_write(&schema, &mirror);
        prop_assert_eq!(&their_bytes, &our_bytes);
        prop_assert_eq!(ExtensionData::decode(&their_bytes), Ok(ours));
    }
}

/// apache-avro resolving an old ClientData datum (without `configName`) with the
/// RFC schema fills in the default, as we do.
#[test]
fn old_client_data_resolves_like_apache_avro() {
    let schema = rfc_schema("0004-client-data.avsc");
    let old_schema = Schema::parse_str(
        r#"{"type":"record","name":"ClientData","namespace":"org.kaaproject.ipc.esp.gen.v1",
            "fields":[{"name":"correlationId","type":"string"},{"name":"timestamp","type":"long"},
            {"name":"timeout","type":"long","default":0},{"name":"appVersionName","type":"string"},
            {"name":"endpointId","type":["string","null"]},{"name":"resourcePath","type":"string"},
            {"name":"requestId","type":["int","null"]},{"name":"payload","type":"bytes"}]}"#,
    )
    .unwrap();
    let mirror = ClientDataMirror {
        correlation_id: "c".into(),
        timestamp: 1,
        timeout: 2,
        app_version_name: "app".into(),
        endpoint_id: None,
        resource_path: "/json".into(),
        request_id: Some(7),
        payload: b"{}".to_vec(),
        config_name: None,
    };
    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Old<'a> {
        correlation_id: &'a str,
        timestamp: i64,
        timeout: i64,
        app_version_name: &'a str,
        endpoint_id: Option<&'a str>,
        resource_path: &'a str,
        request_id: Option<i32>,
        #[serde(with = "apache_avro::serde::bytes")]
        payload: &'a [u8],
    }
    let old_datum = apache_write(
        &old_schema,
        &Old {
            correlation_id: "c",
            timestamp: 1,
            timeout: 2,
            app_version_name: "app",
            endpoint_id: None,
            resource_path: "/json",
            request_id: Some(7),
            payload: b"{}",
        },
    );
    let resolved = GenericDatumReader::builder(&old_schema)
        .reader_schema(&schema)
        .build()
        .unwrap()
        .read_value(&mut &old_datum[..])
        .unwrap();
    let resolved_bytes = apache_write(&schema, &mirror);
    let ours = ClientData::decode(&old_datum).unwrap();
    assert_eq!(ours, mirror.to_kaa());
    assert_eq!(ours.to_vec(), resolved_bytes);
    // apache-avro's resolved value has configName null too.
    let apache_avro::types::Value::Record(fields) = resolved else {
        panic!("not a record: {resolved:?}")
    };
    let (_, config_name) = fields.iter().find(|(n, _)| n == "configName").unwrap();
    assert_eq!(
        config_name,
        &apache_avro::types::Value::Union(0, Box::new(apache_avro::types::Value::Null))
    );
}
