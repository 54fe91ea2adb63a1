//! Cross-check against Apache Avro 0.22 (Rust) with the RFC schemas: for arbitrary
//! messages (any Unicode, every optional field both ways, extreme numbers), its
//! schema-aware writer produces exactly our bytes, its readers (serde and generic
//! `Value`) read our bytes back to the same message, and we read what it writes,
//! including arrays it splits into blocks with negative counts and byte sizes.
//!
//! Uses apache-avro's schema-aware serde path (`GenericDatumWriter::write_ser`,
//! `GenericDatumReader::read_deser`) with the mirror structs of `tests/mirror`: its
//! serde-to-`Value` path (`to_value`) turns `None` into `Union(0, Null)`, i.e. assumes
//! `null` is the first branch, while 16/ECAP's ID unions are `["string","null"]`.

mod mirror;

use std::borrow::Cow;
use std::fmt::Debug;
use std::sync::OnceLock;

use apache_avro::Schema;
use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::writer::datum::GenericDatumWriter;
use kaa_ecap::{
    ClientCertificateValidationRequest, ClientCertificateValidationResponse,
    ClientCredentialRevokedEvent, ClientUsernamePasswordValidationRequest,
    ClientUsernamePasswordValidationResponse, EcapMessage, EndpointTokenRevokedEvent,
    EndpointTokenStatusTransitionRequest, EndpointTokenStatusTransitionResponse,
    EndpointTokenValidationRequest, EndpointTokenValidationResponse, MessageKind,
};
use kaa_ism::avro::Encode;
use mirror::*;
use proptest::prelude::*;
use serde::Serialize;
use serde::de::DeserializeOwned;

fn schema_file(kind: MessageKind) -> &'static str {
    match kind {
        MessageKind::EndpointTokenValidationRequest => {
            "0016-endpoint-token-validation-request.avsc"
        }
        MessageKind::EndpointTokenValidationResponse => {
            "0016-endpoint-token-validation-response.avsc"
        }
        MessageKind::EndpointTokenStatusTransitionRequest => {
            "0016-endpoint-token-status-transition-request.avsc"
        }
        MessageKind::EndpointTokenStatusTransitionResponse => {
            "0016-endpoint-token-status-transition-response.avsc"
        }
        MessageKind::EndpointTokenRevoked => "0016-endpoint-token-revoked.avsc",
        MessageKind::ClientUsernamePasswordValidationRequest => {
            "0016-client-username-password-validation-request.avsc"
        }
        MessageKind::ClientUsernamePasswordValidationResponse => {
            "0016-client-username-password-validation-response.avsc"
        }
        MessageKind::ClientCertificateValidationRequest => {
            "0016-client-certificate-validation-request.avsc"
        }
        MessageKind::ClientCertificateValidationResponse => {
            "0016-client-certificate-validation-response.avsc"
        }
        MessageKind::ClientCredentialRevoked => "0016-client-credential-revoked.avsc",
        other => panic!("no schema for {other:?}"),
    }
}

/// The RFC schemas, from this crate's `schemas/` (copies of kaa-rfcs `0016/`).
fn schema(kind: MessageKind) -> &'static Schema {
    static SCHEMAS: OnceLock<Vec<(MessageKind, Schema)>> = OnceLock::new();
    let schemas = SCHEMAS.get_or_init(|| {
        MessageKind::ALL
            .into_iter()
            .map(|kind| {
                let path = format!(
                    "{}/schemas/{}",
                    env!("CARGO_MANIFEST_DIR"),
                    schema_file(kind)
                );
                let text = std::fs::read_to_string(&path)
                    .unwrap_or_else(|e| panic!("cannot read the RFC schema {path}: {e}"));
                let schema = Schema::parse_str(&text).expect("RFC schema parses");
                (kind, schema)
            })
            .collect()
    });
    &schemas.iter().find(|(k, _)| *k == kind).expect("schema").1
}

/// The whole cross-check for one message and its serde mirror.
fn cross_check<M>(message: EcapMessage<'static>, mirror: M) -> Result<(), TestCaseError>
where
    M: Serialize + DeserializeOwned + PartialEq + Debug,
{
    let kind = message.kind();
    let schema = schema(kind);
    let ours = message.to_vec();
    prop_assert_eq!(ours.len(), message.encoded_len());

    // Apache Avro writes exactly our bytes.
    let writer = GenericDatumWriter::builder(schema).build().expect("writer");
    let theirs = writer
        .write_ser_to_vec(&mirror)
        .expect("apache-avro writes");
    prop_assert_eq!(&ours, &theirs);

    // Apache Avro reads our bytes: with serde to the same value, and with its generic
    // decoder (which validates every value against the schema), consuming all of them.
    let reader = GenericDatumReader::builder(schema).build().expect("reader");
    let mut rest = &ours[..];
    let read: M = reader
        .read_deser(&mut rest)
        .expect("apache-avro reads ours (serde)");
    prop_assert!(
        read == mirror,
        "apache-avro read {read:?}, expected {mirror:?}"
    );
    prop_assert!(rest.is_empty());
    let mut rest = &ours[..];
    reader
        .read_value(&mut rest)
        .expect("apache-avro reads ours (Value)");
    prop_assert!(rest.is_empty());

    // We read what Apache Avro writes, also when it splits arrays into small blocks
    // with negative counts and byte sizes.
    let decoded = EcapMessage::decode_kind(kind, &theirs);
    prop_assert_eq!(decoded.as_ref(), Ok(&message));
    let blocked = GenericDatumWriter::builder(schema)
        .target_block_size(16)
        .build()
        .expect("writer")
        .write_ser_to_vec(&mirror)
        .expect("apache-avro writes blocks");
    let decoded = EcapMessage::decode_kind(kind, &blocked);
    prop_assert_eq!(decoded.as_ref(), Ok(&message));
    Ok(())
}

/// Any Unicode, short: control characters, non-ASCII, astral planes.
fn text() -> impl Strategy<Value = Cow<'static, str>> {
    any::<String>().prop_map(Cow::Owned)
}

/// Sometimes up to 4 KiB of characters (up to 16 KiB of UTF-8).
fn text_up_to_4k() -> impl Strategy<Value = Cow<'static, str>> {
    prop_oneof![
        3 => text(),
        1 => proptest::collection::vec(any::<char>(), 0..4096)
            .prop_map(|c| Cow::Owned(String::from_iter(c))),
    ]
}

fn opt_text() -> impl Strategy<Value = Option<Cow<'static, str>>> {
    proptest::option::of(text())
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

prop_compose! {
    fn token_request()(
        correlation_id in text(), timestamp in long(), timeout in long(),
        app_name in text(), token in text_up_to_4k(), target_status in text(),
    ) -> (EndpointTokenValidationRequest<'static>, Cow<'static, str>) {
        (
            EndpointTokenValidationRequest { correlation_id, timestamp, timeout, app_name, token },
            target_status,
        )
    }
}

prop_compose! {
    /// The shape all four responses share: two optional IDs (unused by the status
    /// transition response), the status and the reason.
    fn response()(
        correlation_id in text(), timestamp in long(), timeout in long(),
        first in opt_text(), second in opt_text(), status_code in int(),
        reason_phrase in proptest::option::of(text_up_to_4k()),
    ) -> EndpointTokenValidationResponse<'static> {
        EndpointTokenValidationResponse {
            correlation_id, timestamp, timeout, token_id: first, endpoint_id: second,
            status_code, reason_phrase,
        }
    }
}

prop_compose! {
    fn token_revoked()(
        correlation_id in text(), timestamp in long(), timeout in long(),
        app_name in text(), endpoint_id in text(),
        token_ids in proptest::collection::vec(text(), 0..30),
        originator_replica_id in text_up_to_4k(),
    ) -> EndpointTokenRevokedEvent<'static> {
        EndpointTokenRevokedEvent {
            correlation_id, timestamp, timeout, app_name, endpoint_id, token_ids,
            originator_replica_id,
        }
    }
}

prop_compose! {
    fn password_request()(
        correlation_id in text(), timestamp in long(), timeout in long(),
        username in opt_text(), password in proptest::option::of(text_up_to_4k()),
    ) -> ClientUsernamePasswordValidationRequest<'static> {
        ClientUsernamePasswordValidationRequest { correlation_id, timestamp, timeout, username, password }
    }
}

prop_compose! {
    fn certificate_request()(
        correlation_id in text(), timestamp in long(), timeout in long(),
        issuer in text_up_to_4k(), serial_number in text(),
    ) -> ClientCertificateValidationRequest<'static> {
        ClientCertificateValidationRequest { correlation_id, timestamp, timeout, issuer, serial_number }
    }
}

proptest! {
    #[test]
    fn endpoint_token_validation_request((m, _) in token_request()) {
        let mirror = EndpointTokenValidationRequestMirror::from(&m);
        cross_check(m.into(), mirror)?;
    }

    #[test]
    fn endpoint_token_validation_response(m in response()) {
        let mirror = EndpointTokenValidationResponseMirror::from(&m);
        cross_check(m.into(), mirror)?;
    }

    #[test]
    fn endpoint_token_status_transition_request((m, target_status) in token_request()) {
        let m = EndpointTokenStatusTransitionRequest {
            correlation_id: m.correlation_id,
            timestamp: m.timestamp,
            timeout: m.timeout,
            app_name: m.app_name,
            token: m.token,
            target_status,
        };
        let mirror = EndpointTokenStatusTransitionRequestMirror::from(&m);
        cross_check(m.into(), mirror)?;
    }

    #[test]
    fn endpoint_token_status_transition_response(m in response()) {
        let m = EndpointTokenStatusTransitionResponse {
            correlation_id: m.correlation_id,
            timestamp: m.timestamp,
            timeout: m.timeout,
            status_code: m.status_code,
            reason_phrase: m.reason_phrase,
        };
        let mirror = EndpointTokenStatusTransitionResponseMirror::from(&m);
        cross_check(m.into(), mirror)?;
    }

    #[test]
    fn endpoint_token_revoked(m in token_revoked()) {
        let mirror = EndpointTokenRevokedMirror::from(&m);
        cross_check(m.into(), mirror)?;
    }

    #[test]
    fn client_username_password_validation_request(m in password_request()) {
        let mirror = ClientUsernamePasswordValidationRequestMirror::from(&m);
        cross_check(m.into(), mirror)?;
    }

    #[test]
    fn client_username_password_validation_response(m in response()) {
        let m = ClientUsernamePasswordValidationResponse {
            correlation_id: m.correlation_id,
            timestamp: m.timestamp,
            timeout: m.timeout,
            credential_id: m.token_id,
            client_id: m.endpoint_id,
            status_code: m.status_code,
            reason_phrase: m.reason_phrase,
        };
        let mirror = ClientUsernamePasswordValidationResponseMirror::from(&m);
        cross_check(m.into(), mirror)?;
    }

    #[test]
    fn client_certificate_validation_request(m in certificate_request()) {
        let mirror = ClientCertificateValidationRequestMirror::from(&m);
        cross_check(m.into(), mirror)?;
    }

    #[test]
    fn client_certificate_validation_response(m in response()) {
        let m = ClientCertificateValidationResponse {
            correlation_id: m.correlation_id,
            timestamp: m.timestamp,
            timeout: m.timeout,
            credential_id: m.token_id,
            client_id: m.endpoint_id,
            status_code: m.status_code,
            reason_phrase: m.reason_phrase,
        };
        let mirror = ClientCertificateValidationResponseMirror::from(&m);
        cross_check(m.into(), mirror)?;
    }

    #[test]
    fn client_credential_revoked(m in certificate_request()) {
        let m = ClientCredentialRevokedEvent {
            correlation_id: m.correlation_id,
            timestamp: m.timestamp,
            timeout: m.timeout,
            credential_id: m.serial_number,
            originator_replica_id: m.issuer,
        };
        let mirror = ClientCredentialRevokedMirror::from(&m);
        cross_check(m.into(), mirror)?;
    }
}

/// The oracle itself must be able to disagree: a mirror with one field changed is
/// written to different bytes than ours, and so is a `None` turned into `Some("")`.
#[test]
fn the_oracle_sees_a_difference() {
    let response = EndpointTokenValidationResponse {
        correlation_id: "c".into(),
        endpoint_id: Some("ep-1".into()),
        status_code: 200,
        ..Default::default()
    };
    let schema = schema(MessageKind::EndpointTokenValidationResponse);
    let writer = GenericDatumWriter::builder(schema).build().unwrap();
    let mut mirror = EndpointTokenValidationResponseMirror::from(&response);
    assert_eq!(writer.write_ser_to_vec(&mirror).unwrap(), response.to_vec());
    mirror.endpoint_id = Some("ep-2".into());
    assert_ne!(writer.write_ser_to_vec(&mirror).unwrap(), response.to_vec());
    let mut mirror = EndpointTokenValidationResponseMirror::from(&response);
    mirror.token_id = Some(String::new());
    assert_ne!(writer.write_ser_to_vec(&mirror).unwrap(), response.to_vec());
}

/// Apache Avro's blocked writer really does write negative block counts with byte
/// sizes, several blocks per array, and we read them.
#[test]
fn apache_blocked_arrays_are_read() {
    let event = EndpointTokenRevokedEvent {
        token_ids: (0..6).map(|i| format!("token-id-{i}").into()).collect(),
        originator_replica_id: "epts-1".into(),
        ..Default::default()
    };
    let schema = schema(MessageKind::EndpointTokenRevoked);
    let blocked = GenericDatumWriter::builder(schema)
        .target_block_size(16)
        .build()
        .unwrap()
        .write_ser_to_vec(&EndpointTokenRevokedMirror::from(&event))
        .unwrap();
    let ours = event.to_vec();
    assert_ne!(blocked, ours);
    // The array starts after correlationId "", two longs, appName "" and endpointId "".
    assert_eq!(blocked[5] & 1, 1, "block count is negative");
    assert!(blocked.len() > ours.len() + 2, "more than one block");
    assert_eq!(kaa_ism::avro::Decode::decode(&blocked), Ok(event));
}

// ------------------------------------------------------------------------------
// kaa-rs extensions (not 16/ECAP RFC messages): the endpoint metadata request and
// response, against Apache Avro with this crate's schemas/endpoint-metadata-*.avsc.

mod metadata {
    use super::*;
    use kaa_ecap::metadata::{EndpointMetadata, EndpointMetadataRequest, EndpointMetadataResponse};
    use kaa_ism::avro::{Decode, DecodeError};
    use serde::Deserialize;

    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(rename = "EndpointMetadataRequest", rename_all = "camelCase")]
    struct RequestMirror {
        correlation_id: String,
        timestamp: i64,
        timeout: i64,
        endpoint_ids: Vec<String>,
    }

    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(rename = "EndpointMetadata", rename_all = "camelCase")]
    struct EntryMirror {
        endpoint_id: String,
        status_code: i32,
        app_version_name: Option<String>,
        metadata: Option<String>,
        reason_phrase: Option<String>,
    }

    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(rename = "EndpointMetadataResponse", rename_all = "camelCase")]
    struct ResponseMirror {
        correlation_id: String,
        timestamp: i64,
        timeout: i64,
        endpoints: Vec<EntryMirror>,
        status_code: i32,
        reason_phrase: Option<String>,
    }

    fn s(c: impl AsRef<str>) -> String {
        c.as_ref().to_owned()
    }

    fn request_mirror(m: &EndpointMetadataRequest<'_>) -> RequestMirror {
        RequestMirror {
            correlation_id: s(&m.correlation_id),
            timestamp: m.timestamp,
            timeout: m.timeout,
            endpoint_ids: m.endpoint_ids.iter().map(s).collect(),
        }
    }

    fn response_mirror(m: &EndpointMetadataResponse<'_>) -> ResponseMirror {
        ResponseMirror {
            correlation_id: s(&m.correlation_id),
            timestamp: m.timestamp,
            timeout: m.timeout,
            endpoints: m
                .endpoints
                .iter()
                .map(|e| EntryMirror {
                    endpoint_id: s(&e.endpoint_id),
                    status_code: e.status_code,
                    app_version_name: e.app_version_name.as_ref().map(s),
                    metadata: e.metadata.as_ref().map(s),
                    reason_phrase: e.reason_phrase.as_ref().map(s),
                })
                .collect(),
            status_code: m.status_code,
            reason_phrase: m.reason_phrase.as_ref().map(s),
        }
    }

    fn schema(file: &str) -> Schema {
        let path = format!("{}/schemas/{file}", env!("CARGO_MANIFEST_DIR"));
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("cannot read the schema {path}: {e}"));
        Schema::parse_str(&text).expect("extension schema parses")
    }

    fn request_schema() -> &'static Schema {
        static SCHEMA: OnceLock<Schema> = OnceLock::new();
        SCHEMA.get_or_init(|| schema("endpoint-metadata-request.avsc"))
    }

    fn response_schema() -> &'static Schema {
        static SCHEMA: OnceLock<Schema> = OnceLock::new();
        SCHEMA.get_or_init(|| schema("endpoint-metadata-response.avsc"))
    }

    /// Apache Avro writes our bytes, reads them back (serde and generic `Value`,
    /// consuming all of them), and we read what it writes, also in small blocks;
    /// decoding our bytes round-trips.
    fn cross_check<T, M>(
        value: &T,
        ours: Vec<u8>,
        schema: &Schema,
        mirror: M,
        decode: impl Fn(&[u8]) -> Result<T, DecodeError>,
    ) -> Result<(), TestCaseError>
    where
        T: PartialEq + Debug,
        M: Serialize + DeserializeOwned + PartialEq + Debug,
    {
        let writer = GenericDatumWriter::builder(schema).build().expect("writer");
        let theirs = writer
            .write_ser_to_vec(&mirror)
            .expect("apache-avro writes");
        prop_assert_eq!(&ours, &theirs);
        let reader = GenericDatumReader::builder(schema).build().expect("reader");
        let mut rest = &ours[..];
        let read: M = reader
            .read_deser(&mut rest)
            .expect("apache-avro reads ours");
        prop_assert!(
            read == mirror,
            "apache-avro read {read:?}, expected {mirror:?}"
        );
        prop_assert!(rest.is_empty());
        let mut rest = &ours[..];
        reader
            .read_value(&mut rest)
            .expect("apache-avro reads ours (Value)");
        prop_assert!(rest.is_empty());
        let decoded = decode(&theirs);
        prop_assert_eq!(decoded.as_ref(), Ok(value));
        let blocked = GenericDatumWriter::builder(schema)
            .target_block_size(16)
            .build()
            .expect("writer")
            .write_ser_to_vec(&mirror)
            .expect("apache-avro writes blocks");
        let decoded = decode(&blocked);
        prop_assert_eq!(decoded.as_ref(), Ok(value));
        Ok(())
    }

    prop_compose! {
        fn request()(
            correlation_id in text(), timestamp in long(), timeout in long(),
            endpoint_ids in proptest::collection::vec(text(), 0..40),
        ) -> EndpointMetadataRequest<'static> {
            EndpointMetadataRequest { correlation_id, timestamp, timeout, endpoint_ids }
        }
    }

    prop_compose! {
        fn entry()(
            endpoint_id in text(), status_code in int(), app_version_name in opt_text(),
            metadata in proptest::option::of(text_up_to_4k()), reason_phrase in opt_text(),
        ) -> EndpointMetadata<'static> {
            EndpointMetadata { endpoint_id, status_code, app_version_name, metadata, reason_phrase }
        }
    }

    prop_compose! {
        fn response()(
            correlation_id in text(), timestamp in long(), timeout in long(),
            endpoints in proptest::collection::vec(entry(), 0..12),
            status_code in int(), reason_phrase in opt_text(),
        ) -> EndpointMetadataResponse<'static> {
            EndpointMetadataResponse { correlation_id, timestamp, timeout, endpoints, status_code, reason_phrase }
        }
    }

    proptest! {
        #[test]
        fn endpoint_metadata_request(m in request()) {
            let ours = m.to_vec();
            prop_assert_eq!(ours.len(), m.encoded_len());
            cross_check(&m, ours, request_schema(), request_mirror(&m), |d| {
                EndpointMetadataRequest::decode(d).map(EndpointMetadataRequest::into_owned)
            })?;
        }

        #[test]
        fn endpoint_metadata_response(m in response()) {
            let ours = m.to_vec();
            prop_assert_eq!(ours.len(), m.encoded_len());
            cross_check(&m, ours, response_schema(), response_mirror(&m), |d| {
                EndpointMetadataResponse::decode(d).map(EndpointMetadataResponse::into_owned)
            })?;
        }

        /// Whatever `fit` keeps is a prefix of what was asked, within the budget,
        /// and still round-trips.
        #[test]
        fn fit_keeps_a_prefix_within_the_budget(m in response(), budget in 0usize..20_000) {
            let mut fitted = m.clone();
            let kept = fitted.fit(budget);
            prop_assert_eq!(fitted.endpoints.len(), kept);
            for (after, before) in fitted.endpoints.iter().zip(&m.endpoints) {
                prop_assert_eq!(&after.endpoint_id, &before.endpoint_id);
            }
            if kept > 0 {
                prop_assert!(fitted.to_vec().len() <= budget);
            }
            if kept < m.endpoints.len() {
                prop_assert_eq!(fitted.status_code, kaa_ecap::metadata::PARTIAL);
            }
            let datum = fitted.to_vec();
            prop_assert_eq!(EndpointMetadataResponse::decode(&datum).map(|r| r.into_owned()), Ok(fitted));
        }
    }
}
