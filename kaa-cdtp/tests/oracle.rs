//! Cross-check against Apache Avro's Rust implementation (`apache-avro` 0.22) with
//! the RFC schemas (and, for the `configName` extension, the extended schemas in
//! `schemas/`): it decodes what we encode, we decode what it encodes, and both write
//! the same bytes, for arbitrary messages (non-ASCII strings, every optional field
//! both ways, content of 0..4 KiB, extreme numbers).
//!
//! Uses apache-avro's schema-aware serde path (`GenericDatumWriter::write_ser`,
//! `GenericDatumReader::read_deser`) with mirror structs.

use std::borrow::Cow;

use apache_avro::Schema;
use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::writer::datum::GenericDatumWriter;
use kaa_cdtp::{ConfigApplied, ConfigRequest, ConfigResponse, ConfigUpdated, ProviderStarted};
use kaa_ism::avro::{Decode, Encode, put_long, put_string};
use proptest::prelude::*;
use serde::{Deserialize, Serialize};

fn rfc_schema(file: &str) -> Schema {
    let path = format!("{}/schemas/{file}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    Schema::parse_str(&text).expect("RFC schema parses")
}

fn ext_schema(file: &str) -> Schema {
    let path = format!("{}/schemas/{file}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    Schema::parse_str(&text).expect("extended schema parses")
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
// apache-avro checks the struct name against the record name.
#[serde(rename = "ConfigRequest", rename_all = "camelCase")]
struct RequestMirror {
    correlation_id: String,
    timestamp: i64,
    timeout: i64,
    app_version_name: String,
    endpoint_id: String,
    config_id: Option<String>,
    config_name: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
// apache-avro checks the struct name against the record name.
#[serde(rename = "ConfigResponse", rename_all = "camelCase")]
struct ResponseMirror {
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

/// `ConfigUpdated` with the extended schema (`configName` last).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
// apache-avro checks the struct name against the record name.
#[serde(rename = "ConfigUpdated", rename_all = "camelCase")]
struct UpdatedMirror {
    correlation_id: String,
    timestamp: i64,
    timeout: i64,
    app_version_name: String,
    endpoint_id: String,
    config_id: String,
    content_type: String,
    #[serde(with = "apache_avro::serde::bytes")]
    content: Vec<u8>,
    originator_replica_id: Option<String>,
    config_name: Option<String>,
}

/// `ConfigUpdated` with the RFC schema: apache-avro rejects a struct field that the
/// schema lacks, even a skipped one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename = "ConfigUpdated", rename_all = "camelCase")]
struct UpdatedRfcMirror {
    correlation_id: String,
    timestamp: i64,
    timeout: i64,
    app_version_name: String,
    endpoint_id: String,
    config_id: String,
    content_type: String,
    #[serde(with = "apache_avro::serde::bytes")]
    content: Vec<u8>,
    originator_replica_id: Option<String>,
}

/// `ConfigApplied` with the extended schema (`configName` last).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename = "ConfigApplied", rename_all = "camelCase")]
struct AppliedMirror {
    correlation_id: String,
    timestamp: i64,
    timeout: i64,
    app_version_name: String,
    endpoint_id: String,
    config_id: String,
    originator_replica_id: Option<String>,
    status_code: i32,
    reason_phrase: Option<String>,
    config_name: Option<String>,
}

/// `ConfigApplied` with the RFC schema.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename = "ConfigApplied", rename_all = "camelCase")]
struct AppliedRfcMirror {
    correlation_id: String,
    timestamp: i64,
    timeout: i64,
    app_version_name: String,
    endpoint_id: String,
    config_id: String,
    originator_replica_id: Option<String>,
    status_code: i32,
    reason_phrase: Option<String>,
}

fn cow(s: String) -> Cow<'static, str> {
    Cow::Owned(s)
}

impl RequestMirror {
    fn to_kaa(&self) -> ConfigRequest<'static> {
        let m = self.clone();
        ConfigRequest {
            correlation_id: cow(m.correlation_id),
            timestamp: m.timestamp,
            timeout: m.timeout,
            app_version_name: cow(m.app_version_name),
            endpoint_id: cow(m.endpoint_id),
            config_id: m.config_id.map(cow),
            config_name: m.config_name.map(cow),
        }
    }
}

impl ResponseMirror {
    fn to_kaa(&self) -> ConfigResponse<'static> {
        let m = self.clone();
        ConfigResponse {
            correlation_id: cow(m.correlation_id),
            timestamp: m.timestamp,
            timeout: m.timeout,
            app_version_name: cow(m.app_version_name),
            endpoint_id: cow(m.endpoint_id),
            config_id: m.config_id.map(cow),
            content_type: cow(m.content_type),
            content: m.content.map(Cow::Owned),
            status_code: m.status_code,
            reason_phrase: m.reason_phrase.map(cow),
        }
    }
}

impl UpdatedMirror {
    fn rfc(&self) -> UpdatedRfcMirror {
        let m = self.clone();
        UpdatedRfcMirror {
            correlation_id: m.correlation_id,
            timestamp: m.timestamp,
            timeout: m.timeout,
            app_version_name: m.app_version_name,
            endpoint_id: m.endpoint_id,
            config_id: m.config_id,
            content_type: m.content_type,
            content: m.content,
            originator_replica_id: m.originator_replica_id,
        }
    }

    fn to_kaa(&self) -> ConfigUpdated<'static> {
        let m = self.clone();
        ConfigUpdated {
            correlation_id: cow(m.correlation_id),
            timestamp: m.timestamp,
            timeout: m.timeout,
            app_version_name: cow(m.app_version_name),
            endpoint_id: cow(m.endpoint_id),
            config_id: cow(m.config_id),
            content_type: cow(m.content_type),
            content: Cow::Owned(m.content),
            originator_replica_id: m.originator_replica_id.map(cow),
            config_name: m.config_name.map(cow),
        }
    }
}

impl AppliedMirror {
    fn rfc(&self) -> AppliedRfcMirror {
        let m = self.clone();
        AppliedRfcMirror {
            correlation_id: m.correlation_id,
            timestamp: m.timestamp,
            timeout: m.timeout,
            app_version_name: m.app_version_name,
            endpoint_id: m.endpoint_id,
            config_id: m.config_id,
            originator_replica_id: m.originator_replica_id,
            status_code: m.status_code,
            reason_phrase: m.reason_phrase,
        }
    }

    fn to_kaa(&self) -> ConfigApplied<'static> {
        let m = self.clone();
        ConfigApplied {
            correlation_id: cow(m.correlation_id),
            timestamp: m.timestamp,
            timeout: m.timeout,
            app_version_name: cow(m.app_version_name),
            endpoint_id: cow(m.endpoint_id),
            config_id: cow(m.config_id),
            originator_replica_id: m.originator_replica_id.map(cow),
            status_code: m.status_code,
            reason_phrase: m.reason_phrase.map(cow),
            config_name: m.config_name.map(cow),
        }
    }
}

/// `ProviderStarted` (kaa-rs extension, `schemas/provider-started.avsc`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename = "ProviderStarted", rename_all = "camelCase")]
struct StartedMirror {
    correlation_id: String,
    timestamp: i64,
    timeout: i64,
    originator_replica_id: String,
}

impl StartedMirror {
    fn to_kaa(&self) -> ProviderStarted<'static> {
        ProviderStarted {
            correlation_id: cow(self.correlation_id.clone()),
            timestamp: self.timestamp,
            timeout: self.timeout,
            originator_replica_id: cow(self.originator_replica_id.clone()),
        }
    }
}

prop_compose! {
    fn started()(
        correlation_id in text(), timestamp in long(), timeout in long(),
        originator_replica_id in text(),
    ) -> StartedMirror {
        StartedMirror { correlation_id, timestamp, timeout, originator_replica_id }
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

fn content() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(any::<u8>(), 0..4096)
}

prop_compose! {
    fn request()(
        correlation_id in text(), timestamp in long(), timeout in long(),
        app_version_name in text(), endpoint_id in text(),
        config_id in proptest::option::of(text()), config_name in proptest::option::of(text()),
    ) -> RequestMirror {
        RequestMirror {
            correlation_id, timestamp, timeout, app_version_name, endpoint_id, config_id,
            config_name,
        }
    }
}

prop_compose! {
    fn response()(
        correlation_id in text(), timestamp in long(), timeout in long(),
        app_version_name in text(), endpoint_id in text(),
        config_id in proptest::option::of(text()), content_type in text(),
        content in proptest::option::of(content()), status_code in int(),
        reason_phrase in proptest::option::of(text()),
    ) -> ResponseMirror {
        ResponseMirror {
            correlation_id, timestamp, timeout, app_version_name, endpoint_id, config_id,
            content_type, content, status_code, reason_phrase,
        }
    }
}

prop_compose! {
    fn updated()(
        correlation_id in text(), timestamp in long(), timeout in long(),
        app_version_name in text(), endpoint_id in text(), config_id in text(),
        content_type in text(), content in content(),
        originator_replica_id in proptest::option::of(text()),
        config_name in proptest::option::of(text()),
    ) -> UpdatedMirror {
        UpdatedMirror {
            correlation_id, timestamp, timeout, app_version_name, endpoint_id, config_id,
            content_type, content, originator_replica_id, config_name,
        }
    }
}

prop_compose! {
    fn applied()(
        correlation_id in text(), timestamp in long(), timeout in long(),
        app_version_name in text(), endpoint_id in text(), config_id in text(),
        originator_replica_id in proptest::option::of(text()), status_code in int(),
        reason_phrase in proptest::option::of(text()),
        config_name in proptest::option::of(text()),
    ) -> AppliedMirror {
        AppliedMirror {
            correlation_id, timestamp, timeout, app_version_name, endpoint_id, config_id,
            originator_replica_id, status_code, reason_phrase, config_name,
        }
    }
}

/// Decodes `datum` with apache-avro; returns the value and the bytes it left unread.
fn apache_read<'d, T: serde::de::DeserializeOwned>(
    schema: &Schema,
    datum: &'d [u8],
) -> (T, &'d [u8]) {
    let reader = GenericDatumReader::builder(schema).build().expect("reader");
    let mut input = datum;
    let value = reader
        .read_deser(&mut input)
        .expect("apache-avro decodes our datum");
    (value, input)
}

fn apache_write<T: Serialize>(schema: &Schema, value: &T) -> Vec<u8> {
    GenericDatumWriter::builder(schema)
        .build()
        .expect("writer")
        .write_ser_to_vec(value)
        .expect("apache-avro encodes")
}

/// The trailing bytes our encoder appends for a `configName` extension value.
fn name_tail(name: Option<&str>) -> Vec<u8> {
    let mut tail = Vec::new();
    if let Some(name) = name {
        put_long(&mut tail, 1);
        put_string(&mut tail, name);
    }
    tail
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(384))]

    #[test]
    fn provider_started_agrees_with_apache_avro(mirror in started()) {
        let schema = ext_schema("provider-started.avsc");
        let ours = mirror.to_kaa();
        let our_bytes = ours.to_vec();
        prop_assert_eq!(our_bytes.len(), ours.encoded_len());
        let (theirs, rest) = apache_read::<StartedMirror>(&schema, &our_bytes);
        prop_assert_eq!(&theirs, &mirror);
        prop_assert!(rest.is_empty());

        let their_bytes = apache_write(&schema, &mirror);
        prop_assert_eq!(&their_bytes, &our_bytes);
        prop_assert_eq!(ProviderStarted::decode(&their_bytes), Ok(ours));
    }

    #[test]
    fn config_request_agrees_with_apache_avro(mirror in request()) {
        let schema = rfc_schema("0006-config-request.avsc");
        let ours = mirror.to_kaa();
        let our_bytes = ours.to_vec();
        prop_assert_eq!(our_bytes.len(), ours.encoded_len());
        let (theirs, rest) = apache_read::<RequestMirror>(&schema, &our_bytes);
        prop_assert_eq!(&theirs, &mirror);
        prop_assert!(rest.is_empty());

        let their_bytes = apache_write(&schema, &mirror);
        prop_assert_eq!(&their_bytes, &our_bytes);
        prop_assert_eq!(ConfigRequest::decode(&their_bytes), Ok(ours));
    }

    #[test]
    fn config_response_agrees_with_apache_avro(mirror in response()) {
        let schema = rfc_schema("0006-config-response.avsc");
        let ours = mirror.to_kaa();
        let our_bytes = ours.to_vec();
        prop_assert_eq!(our_bytes.len(), ours.encoded_len());
        let (theirs, rest) = apache_read::<ResponseMirror>(&schema, &our_bytes);
        prop_assert_eq!(&theirs, &mirror);
        prop_assert!(rest.is_empty());

        let their_bytes = apache_write(&schema, &mirror);
        prop_assert_eq!(&their_bytes, &our_bytes);
        prop_assert_eq!(ConfigResponse::decode(&their_bytes), Ok(ours));
    }

    #[test]
    fn config_updated_agrees_with_apache_avro(mirror in updated()) {
        let rfc = rfc_schema("0006-config-updated.avsc");
        let ext = ext_schema("config-updated-ext.avsc");
        let ours = mirror.to_kaa();
        let our_bytes = ours.to_vec();
        prop_assert_eq!(our_bytes.len(), ours.encoded_len());

        // An RFC-schema reader reads the RFC fields and leaves our name unread.
        let (theirs, rest) = apache_read::<UpdatedRfcMirror>(&rfc, &our_bytes);
        prop_assert_eq!(&theirs, &mirror.rfc());
        prop_assert_eq!(rest, &name_tail(mirror.config_name.as_deref())[..]);
        // An extended-schema reader reads a named datum whole.
        if mirror.config_name.is_some() {
            let (theirs, rest) = apache_read::<UpdatedMirror>(&ext, &our_bytes);
            prop_assert_eq!(&theirs, &mirror);
            prop_assert!(rest.is_empty());
        }

        // Apache Avro writing the RFC schema (no name) and the extended schema
        // (explicit null when unnamed): we decode both.
        if mirror.config_name.is_none() {
            let their_bytes = apache_write(&rfc, &mirror.rfc());
            prop_assert_eq!(&their_bytes, &our_bytes);
            prop_assert_eq!(ConfigUpdated::decode(&their_bytes), Ok(ours.clone()));
        }
        let their_bytes = apache_write(&ext, &mirror);
        prop_assert_eq!(ConfigUpdated::decode(&their_bytes), Ok(ours));
        if mirror.config_name.is_some() {
            prop_assert_eq!(&their_bytes, &our_bytes);
        } else {
            prop_assert_eq!(&their_bytes, &[&our_bytes[..], &[0x00]].concat());
        }
    }

    #[test]
    fn config_applied_agrees_with_apache_avro(mirror in applied()) {
        let rfc = rfc_schema("0006-config-applied.avsc");
        let ext = ext_schema("config-applied-ext.avsc");
        let ours = mirror.to_kaa();
        let our_bytes = ours.to_vec();
        prop_assert_eq!(our_bytes.len(), ours.encoded_len());

        let (theirs, rest) = apache_read::<AppliedRfcMirror>(&rfc, &our_bytes);
        prop_assert_eq!(&theirs, &mirror.rfc());
        prop_assert_eq!(rest, &name_tail(mirror.config_name.as_deref())[..]);
        if mirror.config_name.is_some() {
            let (theirs, rest) = apache_read::<AppliedMirror>(&ext, &our_bytes);
            prop_assert_eq!(&theirs, &mirror);
            prop_assert!(rest.is_empty());
        }

        if mirror.config_name.is_none() {
            let their_bytes = apache_write(&rfc, &mirror.rfc());
            prop_assert_eq!(&their_bytes, &our_bytes);
            prop_assert_eq!(ConfigApplied::decode(&their_bytes), Ok(ours.clone()));
        }
        let their_bytes = apache_write(&ext, &mirror);
        prop_assert_eq!(ConfigApplied::decode(&their_bytes), Ok(ours));
        if mirror.config_name.is_some() {
            prop_assert_eq!(&their_bytes, &our_bytes);
        } else {
            prop_assert_eq!(&their_bytes, &[&our_bytes[..], &[0x00]].concat());
        }
    }
}
