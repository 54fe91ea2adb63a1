//! Golden vectors written by Apache Avro (Python `avro` 1.12.2, see
//! `tests/golden/generate.py`) from the RFC schemas: our bytes must equal theirs, we
//! must decode theirs to the same value, and no prefix or corruption of a datum may
//! panic.

use std::borrow::Cow;

use kaa_ecap::metadata::{EndpointMetadata, EndpointMetadataRequest, EndpointMetadataResponse};
use kaa_ecap::subject::{client_credential_revoked_subject, endpoint_token_revoked_subject};
use kaa_ecap::{
    ClientCertificateValidationRequest, ClientCertificateValidationResponse,
    ClientCredentialRevokedEvent, ClientUsernamePasswordValidationRequest,
    ClientUsernamePasswordValidationResponse, EcapMessage, EndpointTokenRevokedEvent,
    EndpointTokenStatusTransitionRequest, EndpointTokenStatusTransitionResponse,
    EndpointTokenValidationRequest, EndpointTokenValidationResponse, MessageKind,
};
use kaa_ism::avro::{
    Decode, DecodeError, DecodeErrorKind, Encode, optional_len, put_long, put_string, string_len,
};
use serde_json::Value;

/// One golden vector: the record it is an instance of, its name, the value and the
/// bytes Apache Avro wrote for it.
struct Vector {
    kind: MessageKind,
    name: String,
    value: EcapMessage<'static>,
    datum: Vec<u8>,
    decode_only: bool,
}

impl Vector {
    fn label(&self) -> String {
        format!("{}/{}", self.kind.record_name(), self.name)
    }
}

/// The kaa-rs extension records (not RFC messages): their vectors are read by
/// [`metadata_vectors`].
const EXTENSION_MESSAGES: [&str; 2] = ["EndpointMetadataRequest", "EndpointMetadataResponse"];

/// The RFC records' vectors.
fn vectors() -> Vec<Vector> {
    let text = include_str!("golden/vectors.json");
    let list: Vec<Value> = serde_json::from_str(text).expect("vectors.json is JSON");
    list.iter()
        .filter(|v| !EXTENSION_MESSAGES.contains(&v["message"].as_str().expect("message")))
        .map(|v| {
            let message = v["message"].as_str().expect("message");
            let kind = MessageKind::from_record_name(message)
                .unwrap_or_else(|| panic!("unknown message {message}"));
            Vector {
                value: message_from_json(kind, &v["value"]),
                kind,
                name: v["name"].as_str().expect("name").to_owned(),
                datum: hex::decode(v["hex"].as_str().expect("hex")).expect("hex digits"),
                decode_only: v
                    .get("decode_only")
                    .and_then(Value::as_bool)
                    .unwrap_or(false),
            }
        })
        .collect()
}

/// Whether `e` says the input ended too early (what a cut datum must give).
fn is_truncation(e: &DecodeError) -> bool {
    matches!(
        e.kind,
        DecodeErrorKind::UnexpectedEnd | DecodeErrorKind::LengthPastEnd { .. }
    )
}

fn string(v: &Value, field: &str) -> Cow<'static, str> {
    Cow::Owned(
        v[field]
            .as_str()
            .unwrap_or_else(|| panic!("{field} is a string"))
            .to_owned(),
    )
}

/// A union with `null`: JSON null or a string.
fn opt_string(v: &Value, field: &str) -> Option<Cow<'static, str>> {
    match &v[field] {
        Value::Null => None,
        Value::String(s) => Some(Cow::Owned(s.clone())),
        other => panic!("{field} is a string or null: {other}"),
    }
}

fn long(v: &Value, field: &str) -> i64 {
    v[field]
        .as_i64()
        .unwrap_or_else(|| panic!("{field} is a long"))
}

fn int(v: &Value, field: &str) -> i32 {
    i32::try_from(long(v, field)).unwrap_or_else(|_| panic!("{field} is an int"))
}

fn message_from_json(kind: MessageKind, v: &Value) -> EcapMessage<'static> {
    let correlation_id = string(v, "correlationId");
    let timestamp = long(v, "timestamp");
    let timeout = long(v, "timeout");
    match kind {
        MessageKind::EndpointTokenValidationRequest => EndpointTokenValidationRequest {
            correlation_id,
            timestamp,
            timeout,
            app_name: string(v, "appName"),
            token: string(v, "token"),
        }
        .into(),
        MessageKind::EndpointTokenValidationResponse => EndpointTokenValidationResponse {
            correlation_id,
            timestamp,
            timeout,
            token_id: opt_string(v, "tokenId"),
            endpoint_id: opt_string(v, "endpointId"),
            status_code: int(v, "statusCode"),
            reason_phrase: opt_string(v, "reasonPhrase"),
        }
        .into(),
        MessageKind::EndpointTokenStatusTransitionRequest => EndpointTokenStatusTransitionRequest {
            correlation_id,
            timestamp,
            timeout,
            app_name: string(v, "appName"),
            token: string(v, "token"),
            target_status: string(v, "targetStatus"),
        }
        .into(),
        MessageKind::EndpointTokenStatusTransitionResponse => {
            EndpointTokenStatusTransitionResponse {
                correlation_id,
                timestamp,
                timeout,
                status_code: int(v, "statusCode"),
                reason_phrase: opt_string(v, "reasonPhrase"),
            }
            .into()
        }
        MessageKind::EndpointTokenRevoked => EndpointTokenRevokedEvent {
            correlation_id,
            timestamp,
            timeout,
            app_name: string(v, "appName"),
            endpoint_id: string(v, "endpointId"),
            token_ids: v["tokenIds"]
                .as_array()
                .expect("tokenIds is an array")
                .iter()
                .map(|t| Cow::Owned(t.as_str().expect("token ID").to_owned()))
                .collect(),
            originator_replica_id: string(v, "originatorReplicaId"),
        }
        .into(),
        MessageKind::ClientUsernamePasswordValidationRequest => {
            ClientUsernamePasswordValidationRequest {
                correlation_id,
                timestamp,
                timeout,
                username: opt_string(v, "username"),
                password: opt_string(v, "password"),
            }
            .into()
        }
        MessageKind::ClientUsernamePasswordValidationResponse => {
            ClientUsernamePasswordValidationResponse {
                correlation_id,
                timestamp,
                timeout,
                credential_id: opt_string(v, "credentialId"),
                client_id: opt_string(v, "clientId"),
                status_code: int(v, "statusCode"),
                reason_phrase: opt_string(v, "reasonPhrase"),
            }
            .into()
        }
        MessageKind::ClientCertificateValidationRequest => ClientCertificateValidationRequest {
            correlation_id,
            timestamp,
            timeout,
            issuer: string(v, "issuer"),
            serial_number: string(v, "serialNumber"),
        }
        .into(),
        MessageKind::ClientCertificateValidationResponse => ClientCertificateValidationResponse {
            correlation_id,
            timestamp,
            timeout,
            credential_id: opt_string(v, "credentialId"),
            client_id: opt_string(v, "clientId"),
            status_code: int(v, "statusCode"),
            reason_phrase: opt_string(v, "reasonPhrase"),
        }
        .into(),
        MessageKind::ClientCredentialRevoked => ClientCredentialRevokedEvent {
            correlation_id,
            timestamp,
            timeout,
            credential_id: string(v, "credentialId"),
            originator_replica_id: string(v, "originatorReplicaId"),
        }
        .into(),
        other => panic!("no golden conversion for {other:?}"),
    }
}

fn decode(kind: MessageKind, datum: &[u8]) -> Result<EcapMessage<'_>, DecodeError> {
    EcapMessage::decode_kind(kind, datum)
}

/// The subject a message of `kind` arrives on: the request subject, the recommended
/// `replyTo`, or the event subject.
fn subject_of(kind: MessageKind) -> String {
    match kind.exchange() {
        Some(exchange) if exchange.request_kind() == kind => {
            exchange.request_subject("golden").unwrap().to_string()
        }
        Some(exchange) => exchange.response_subject("golden-1").unwrap().to_string(),
        None if kind == MessageKind::EndpointTokenRevoked => {
            endpoint_token_revoked_subject("golden")
                .unwrap()
                .to_string()
        }
        None => client_credential_revoked_subject("golden")
            .unwrap()
            .to_string(),
    }
}

/// The records whose last field has a default: the four responses (`reasonPhrase`).
fn has_trailing_default(kind: MessageKind) -> bool {
    kind.exchange().is_some_and(|e| e.response_kind() == kind)
}

#[test]
fn every_message_has_vectors() {
    let vectors = vectors();
    for kind in MessageKind::ALL {
        let of =
            |f: &dyn Fn(&Vector) -> bool| vectors.iter().filter(|v| v.kind == kind && f(v)).count();
        let canonical = of(&|v| !v.decode_only);
        assert!(
            canonical >= 8,
            "{kind:?} has only {canonical} golden vectors"
        );
        assert_eq!(of(&|v| v.name.starts_with("newer writer")), 1, "{kind:?}");
        assert!(of(&|v| v.datum.len() > 64 * 1024) >= 1, "{kind:?}");
        assert_eq!(
            of(&|v| v.name == "older writer without reasonPhrase"),
            usize::from(has_trailing_default(kind)),
            "{kind:?}"
        );
    }
    // Both branches of every union: a response with and without each ID.
    assert!(vectors.iter().any(|v| matches!(
        &v.value,
        EcapMessage::EndpointTokenValidationResponse(r) if r.token_id.is_none() && r.endpoint_id.is_none()
    )));
    assert!(vectors.iter().any(|v| matches!(
        &v.value,
        EcapMessage::ClientUsernamePasswordValidationRequest(r) if r.username.is_some() && r.password.is_none()
    )));
}

#[test]
fn our_encoding_is_the_golden_bytes() {
    for v in vectors().iter().filter(|v| !v.decode_only) {
        assert_eq!(v.value.encoded_len(), v.datum.len(), "{}", v.label());
        assert_eq!(v.value.to_vec(), v.datum, "{}", v.label());
        // `encoded_len` is exact: a buffer of that size is filled completely.
        let mut fixed = vec![0xa5u8; v.datum.len()];
        let mut window: &mut [u8] = &mut fixed;
        v.value.encode(&mut window);
        assert!(window.is_empty(), "{}", v.label());
        assert_eq!(fixed, v.datum, "{}", v.label());
    }
}

#[test]
fn decoding_the_golden_bytes_gives_the_value() {
    for v in vectors() {
        let decoded = decode(v.kind, &v.datum).unwrap_or_else(|e| panic!("{}: {e}", v.label()));
        assert_eq!(decoded, v.value, "{}", v.label());
        assert_eq!(decoded.kind(), v.kind);
        // Through the subject, as a listener on several subjects decodes.
        let subject = subject_of(v.kind);
        assert_eq!(
            EcapMessage::decode(&subject, &v.datum).unwrap(),
            v.value,
            "{}",
            v.label()
        );
        // Owned copies are equal and outlive the input.
        let owned = {
            let datum = v.datum.clone();
            decode(v.kind, &datum).unwrap().into_owned()
        };
        assert_eq!(owned, v.value, "{}", v.label());
    }
}

/// The value a datum cut right before its trailing defaulted field decodes to, and
/// the bytes that field takes, if the record has one: `reasonPhrase` (default null)
/// in the four responses.
fn with_defaults(message: &EcapMessage<'static>) -> Option<(EcapMessage<'static>, usize)> {
    let reason_len = |r: &Option<Cow<'_, str>>| optional_len(r.as_deref(), string_len);
    Some(match message {
        EcapMessage::EndpointTokenValidationResponse(m) => (
            EndpointTokenValidationResponse {
                reason_phrase: None,
                ..m.clone()
            }
            .into(),
            reason_len(&m.reason_phrase),
        ),
        EcapMessage::EndpointTokenStatusTransitionResponse(m) => (
            EndpointTokenStatusTransitionResponse {
                reason_phrase: None,
                ..m.clone()
            }
            .into(),
            reason_len(&m.reason_phrase),
        ),
        EcapMessage::ClientUsernamePasswordValidationResponse(m) => (
            ClientUsernamePasswordValidationResponse {
                reason_phrase: None,
                ..m.clone()
            }
            .into(),
            reason_len(&m.reason_phrase),
        ),
        EcapMessage::ClientCertificateValidationResponse(m) => (
            ClientCertificateValidationResponse {
                reason_phrase: None,
                ..m.clone()
            }
            .into(),
            reason_len(&m.reason_phrase),
        ),
        _ => return None,
    })
}

/// Each proper prefix of each datum fails to decode with a typed truncation error
/// (no panic), except a datum cut right before a trailing defaulted field (the
/// defaulted value) and, for a newer writer's datum, any cut after the fields this
/// version knows (the value).
#[test]
fn every_prefix_is_an_error_or_the_defaulted_value() {
    let mut prefixes = 0;
    let mut defaulted_prefixes = 0;
    for v in vectors() {
        let canonical = v.value.to_vec();
        // Where the known fields end (a newer writer's datum goes on after that).
        let known_len = canonical.len();
        let extends_canonical = v.datum.starts_with(&canonical);
        assert!(extends_canonical || v.decode_only, "{}", v.label());
        let defaults = with_defaults(&v.value);
        assert_eq!(defaults.is_some(), has_trailing_default(v.kind));
        for cut in 0..v.datum.len() {
            prefixes += 1;
            let result = decode(v.kind, &v.datum[..cut]);
            let expected = match &defaults {
                Some((defaulted, trailing_len))
                    if extends_canonical && cut == known_len - trailing_len =>
                {
                    Some(defaulted.clone())
                }
                _ if extends_canonical && cut >= known_len => Some(v.value.clone()),
                _ => None,
            };
            match (result, expected) {
                (Ok(got), Some(want)) => {
                    defaulted_prefixes += 1;
                    assert_eq!(got, want, "{} cut at {cut}", v.label());
                }
                (Err(e), None) => {
                    assert!(is_truncation(&e), "{} cut at {cut}: {e}", v.label());
                    assert_eq!(e.record, v.kind.record_name(), "{} cut at {cut}", v.label());
                }
                (got, want) => panic!("{} cut at {cut}: got {got:?}, want {want:?}", v.label()),
            }
        }
    }
    assert!(prefixes > 600_000, "{prefixes}");
    // Every response vector (and the newer writers' extra fields) exercised it.
    assert!(defaulted_prefixes >= 60, "{defaulted_prefixes}");
}

#[test]
fn older_writer_without_trailing_reason_phrase() {
    let older: Vec<Vector> = vectors()
        .into_iter()
        .filter(|v| v.name == "older writer without reasonPhrase")
        .collect();
    assert_eq!(older.len(), 4);
    for v in older {
        let decoded = decode(v.kind, &v.datum).unwrap();
        assert_eq!(decoded, v.value, "{}", v.label());
        let reason = match &decoded {
            EcapMessage::EndpointTokenValidationResponse(m) => &m.reason_phrase,
            EcapMessage::EndpointTokenStatusTransitionResponse(m) => &m.reason_phrase,
            EcapMessage::ClientUsernamePasswordValidationResponse(m) => &m.reason_phrase,
            EcapMessage::ClientCertificateValidationResponse(m) => &m.reason_phrase,
            other => panic!("{other:?}"),
        };
        assert_eq!(reason, &None, "{}", v.label());
        // Our encoding of the same response is Apache Avro's plus the null branch.
        let mut expected = v.datum.clone();
        expected.push(0x00);
        assert_eq!(decoded.to_vec(), expected, "{}", v.label());
    }
}

#[test]
fn newer_writer_fields_are_ignored() {
    let vectors = vectors();
    for v in vectors
        .iter()
        .filter(|v| v.name.starts_with("newer writer"))
    {
        let canonical = v.value.to_vec();
        assert!(v.datum.len() > canonical.len(), "{}", v.label());
        assert!(v.datum.starts_with(&canonical), "{}", v.label());
        assert_eq!(decode(v.kind, &v.datum).unwrap(), v.value, "{}", v.label());
        // Whatever the trailing bytes are, even garbage, they are not read.
        let mut garbage = canonical.clone();
        garbage.extend_from_slice(&[0xff, 0xff, 0x80]);
        assert_eq!(decode(v.kind, &garbage).unwrap(), v.value, "{}", v.label());
    }
}

#[test]
fn large_strings_are_borrowed_from_the_input() {
    let mut seen = 0;
    for v in vectors().iter().filter(|v| v.datum.len() > 64 * 1024) {
        let message = decode(v.kind, &v.datum).unwrap();
        let large: &Cow<'_, str> = match &message {
            EcapMessage::EndpointTokenValidationRequest(m) => &m.token,
            EcapMessage::EndpointTokenStatusTransitionRequest(m) => &m.token,
            EcapMessage::EndpointTokenRevoked(m) if m.token_ids.len() == 2 => &m.token_ids[1],
            EcapMessage::EndpointTokenRevoked(m) => &m.originator_replica_id,
            EcapMessage::ClientUsernamePasswordValidationRequest(m) => {
                m.password.as_ref().expect("password")
            }
            EcapMessage::ClientCertificateValidationRequest(m) => &m.issuer,
            EcapMessage::ClientCredentialRevoked(m) => &m.credential_id,
            EcapMessage::EndpointTokenValidationResponse(m) => {
                m.reason_phrase.as_ref().expect("reason")
            }
            EcapMessage::EndpointTokenStatusTransitionResponse(m) => {
                m.reason_phrase.as_ref().expect("reason")
            }
            EcapMessage::ClientUsernamePasswordValidationResponse(m) => {
                m.reason_phrase.as_ref().expect("reason")
            }
            EcapMessage::ClientCertificateValidationResponse(m) => {
                m.reason_phrase.as_ref().expect("reason")
            }
            other => panic!("{other:?}"),
        };
        assert_eq!(large.len(), 64 * 1024, "{}", v.label());
        let Cow::Borrowed(s) = large else {
            panic!("{}: copied", v.label())
        };
        assert!(
            v.datum.as_ptr_range().contains(&s.as_ptr()),
            "{}",
            v.label()
        );
        seen += 1;
    }
    assert!(seen >= MessageKind::ALL.len(), "{seen}");
}

fn field_error(kind: MessageKind, datum: &[u8]) -> (String, DecodeErrorKind) {
    let e = decode(kind, datum).expect_err("must not decode");
    (format!("{}.{}", e.record, e.field), e.kind)
}

/// An EndpointTokenValidationRequest datum made by hand: `raw_correlation_id` is the
/// first field's raw bytes (any length prefix), then the longs 1 and 2 and two valid
/// strings.
fn token_request_with(raw_correlation_id: &[u8]) -> Vec<u8> {
    let mut d = raw_correlation_id.to_vec();
    put_long(&mut d, 1);
    put_long(&mut d, 2);
    for s in ["smart-kettle", "token-1"] {
        put_string(&mut d, s);
    }
    d
}

#[test]
fn bad_strings() {
    let cases: &[(&str, Vec<u8>, DecodeErrorKind)] = &[
        (
            "negative length",
            token_request_with(&[0x01]),
            DecodeErrorKind::NegativeLength(-1),
        ),
        (
            "length past the end",
            token_request_with(&[0xfe, 0xff, 0xff, 0xff, 0x0f]),
            DecodeErrorKind::LengthPastEnd {
                length: 2_147_483_647,
                remaining: 23,
            },
        ),
        (
            "invalid UTF-8",
            token_request_with(&[0x04, 0xc3, 0x28]),
            DecodeErrorKind::InvalidUtf8,
        ),
        (
            "overlong UTF-8",
            token_request_with(&[0x04, 0xc0, 0xaf]),
            DecodeErrorKind::InvalidUtf8,
        ),
        (
            "UTF-16 surrogate",
            token_request_with(&[0x06, 0xed, 0xa0, 0x80]),
            DecodeErrorKind::InvalidUtf8,
        ),
    ];
    for (name, datum, kind) in cases {
        let (field, got) = field_error(MessageKind::EndpointTokenValidationRequest, datum);
        assert_eq!(
            field, "EndpointTokenValidationRequest.correlationId",
            "{name}"
        );
        assert_eq!(&got, kind, "{name}");
    }
}

/// An EndpointTokenRevokedEvent datum whose `tokenIds` array is the raw bytes `array`.
fn revoked_with_array(array: &[u8]) -> Vec<u8> {
    let mut d = Vec::new();
    put_string(&mut d, "c");
    put_long(&mut d, 1);
    put_long(&mut d, 0);
    put_string(&mut d, "app");
    put_string(&mut d, "ep-1");
    d.extend_from_slice(array);
    put_string(&mut d, "epts-1");
    d
}

#[test]
fn bad_arrays() {
    let mut huge = Vec::new();
    put_long(&mut huge, i64::MAX);
    let mut min = Vec::new();
    put_long(&mut min, i64::MIN);
    let cases: &[(&str, Vec<u8>)] = &[
        (
            "count past the end",
            revoked_with_array(&[0x40, 2, b'a', 0]),
        ),
        ("huge count", revoked_with_array(&huge)),
        ("i64::MIN count", revoked_with_array(&min)),
        (
            "negative block size",
            revoked_with_array(&[3, 1, 2, b'a', 2, b'b', 0]),
        ),
        (
            "block size mismatch",
            revoked_with_array(&[3, 10, 2, b'a', 2, b'b', 0]),
        ),
        (
            "block size past the end",
            revoked_with_array(&[3, 0x7e, 2, b'a', 0]),
        ),
        ("invalid UTF-8 item", revoked_with_array(&[2, 2, 0xff, 0])),
        ("negative item length", revoked_with_array(&[2, 1, 0])),
        ("no terminator", {
            let mut d = revoked_with_array(&[0]);
            d.truncate(d.len() - string_len("epts-1") - 1);
            d.extend_from_slice(&[2, 2, b'a']);
            d
        }),
    ];
    for (name, datum) in cases {
        let (field, _) = field_error(MessageKind::EndpointTokenRevoked, datum);
        assert_eq!(field, "EndpointTokenRevokedEvent.tokenIds", "{name}");
    }
    // Every legal block form decodes to the same value.
    let expected = revoked_with_array(&[4, 2, b'a', 2, b'b', 0]);
    let expected = EndpointTokenRevokedEvent::decode(&expected).unwrap();
    assert_eq!(expected.token_ids, ["a", "b"]);
    for (name, array) in [
        ("two blocks", &[2, 2, b'a', 2, 2, b'b', 0][..]),
        ("sized block", &[3, 8, 2, b'a', 2, b'b', 0]),
        ("one-item sized blocks", &[1, 4, 2, b'a', 1, 4, 2, b'b', 0]),
    ] {
        let datum = revoked_with_array(array);
        assert_eq!(
            EndpointTokenRevokedEvent::decode(&datum).unwrap(),
            expected,
            "{name}"
        );
    }
}

#[test]
fn bad_unions() {
    // A validation response: "c", 1, 0, then tokenId's branch index.
    let head = |index: u8| {
        let mut d = Vec::new();
        put_string(&mut d, "c");
        put_long(&mut d, 1);
        put_long(&mut d, 0);
        d.push(index);
        d
    };
    for (index, value) in [(0x04u8, 2i64), (0x01, -1), (0x7f, -64)] {
        let mut d = head(index);
        d.extend_from_slice(&[2, 2, 0x90, 0x03, 0]);
        let (field, kind) = field_error(MessageKind::EndpointTokenValidationResponse, &d);
        assert_eq!(field, "EndpointTokenValidationResponse.tokenId");
        assert_eq!(
            kind,
            DecodeErrorKind::UnionIndex {
                index: value,
                branches: 2
            }
        );
    }
    // endpointId and reasonPhrase: an index past the union, and a string branch with a
    // bad string.
    let mut d = head(2);
    d.extend_from_slice(&[0x90, 0x03, 0x04]);
    let (field, _) = field_error(MessageKind::EndpointTokenValidationResponse, &d);
    assert_eq!(field, "EndpointTokenValidationResponse.endpointId");
    let mut d = head(2);
    d.extend_from_slice(&[2, 0x90, 0x03, 0x04]);
    let (field, kind) = field_error(MessageKind::EndpointTokenValidationResponse, &d);
    assert_eq!(field, "EndpointTokenValidationResponse.reasonPhrase");
    assert!(matches!(kind, DecodeErrorKind::UnionIndex { index: 2, .. }));
    let mut d = head(2);
    d.extend_from_slice(&[2, 0x90, 0x03, 0x02, 0x02, 0xff]);
    let (field, kind) = field_error(MessageKind::EndpointTokenValidationResponse, &d);
    assert_eq!(field, "EndpointTokenValidationResponse.reasonPhrase");
    assert_eq!(kind, DecodeErrorKind::InvalidUtf8);
}

#[test]
fn varints_that_lie() {
    // Overlong and overflowing varints in `timestamp`, and a statusCode outside i32.
    for (name, long, kind) in [
        (
            "overlong",
            &[0x80, 0x00][..],
            DecodeErrorKind::OverlongVarint,
        ),
        ("overflow", &[0xff; 10][..], DecodeErrorKind::VarintOverflow),
    ] {
        let mut d = Vec::new();
        put_string(&mut d, "c");
        d.extend_from_slice(long);
        d.push(0);
        put_string(&mut d, "credential-1");
        put_string(&mut d, "epts-1");
        let (field, got) = field_error(MessageKind::ClientCredentialRevoked, &d);
        assert_eq!(field, "ClientCredentialRevokedEvent.timestamp", "{name}");
        assert_eq!(got, kind, "{name}");
    }
    let mut d = Vec::new();
    put_string(&mut d, "c");
    put_long(&mut d, 1);
    put_long(&mut d, 0);
    put_long(&mut d, i64::from(i32::MIN) - 1);
    d.push(0);
    let (field, got) = field_error(MessageKind::EndpointTokenStatusTransitionResponse, &d);
    assert_eq!(field, "EndpointTokenStatusTransitionResponse.statusCode");
    assert_eq!(got, DecodeErrorKind::IntOutOfRange(i64::from(i32::MIN) - 1));
}

// ------------------------------------------------------------------------------
// kaa-rs extensions (not 16/ECAP RFC messages): the endpoint metadata request and
// response, with vectors written by Apache Avro from
// kaa-ecap/schemas/endpoint-metadata-*.avsc.

#[derive(Debug, Clone, PartialEq, Eq)]
enum Metadata<'a> {
    Request(EndpointMetadataRequest<'a>),
    Response(EndpointMetadataResponse<'a>),
}

impl Metadata<'_> {
    fn to_vec(&self) -> Vec<u8> {
        match self {
            Metadata::Request(m) => m.to_vec(),
            Metadata::Response(m) => m.to_vec(),
        }
    }

    fn encoded_len(&self) -> usize {
        match self {
            Metadata::Request(m) => m.encoded_len(),
            Metadata::Response(m) => m.encoded_len(),
        }
    }

    fn into_owned(self) -> Metadata<'static> {
        match self {
            Metadata::Request(m) => Metadata::Request(m.into_owned()),
            Metadata::Response(m) => Metadata::Response(m.into_owned()),
        }
    }
}

struct MetadataVector {
    message: String,
    name: String,
    value: Metadata<'static>,
    datum: Vec<u8>,
    decode_only: bool,
}

impl MetadataVector {
    fn label(&self) -> String {
        format!("{}/{}", self.message, self.name)
    }

    fn decode<'a>(&self, datum: &'a [u8]) -> Result<Metadata<'a>, DecodeError> {
        decode_metadata(&self.message, datum)
    }
}

fn decode_metadata<'a>(message: &str, datum: &'a [u8]) -> Result<Metadata<'a>, DecodeError> {
    match message {
        "EndpointMetadataRequest" => EndpointMetadataRequest::decode(datum).map(Metadata::Request),
        "EndpointMetadataResponse" => {
            EndpointMetadataResponse::decode(datum).map(Metadata::Response)
        }
        other => panic!("not an extension message: {other}"),
    }
}

fn metadata_vectors() -> Vec<MetadataVector> {
    let text = include_str!("golden/vectors.json");
    let list: Vec<Value> = serde_json::from_str(text).expect("vectors.json is JSON");
    list.iter()
        .filter(|v| EXTENSION_MESSAGES.contains(&v["message"].as_str().expect("message")))
        .map(|v| {
            let message = v["message"].as_str().expect("message").to_owned();
            let value = &v["value"];
            let correlation_id = string(value, "correlationId");
            let timestamp = long(value, "timestamp");
            let timeout = long(value, "timeout");
            let value = if message == "EndpointMetadataRequest" {
                Metadata::Request(EndpointMetadataRequest {
                    correlation_id,
                    timestamp,
                    timeout,
                    endpoint_ids: value["endpointIds"]
                        .as_array()
                        .expect("endpointIds")
                        .iter()
                        .map(|id| Cow::Owned(id.as_str().expect("an ID").to_owned()))
                        .collect(),
                })
            } else {
                Metadata::Response(EndpointMetadataResponse {
                    correlation_id,
                    timestamp,
                    timeout,
                    endpoints: value["endpoints"]
                        .as_array()
                        .expect("endpoints")
                        .iter()
                        .map(|e| EndpointMetadata {
                            endpoint_id: string(e, "endpointId"),
                            status_code: int(e, "statusCode"),
                            app_version_name: opt_string(e, "appVersionName"),
                            metadata: opt_string(e, "metadata"),
                            reason_phrase: opt_string(e, "reasonPhrase"),
                        })
                        .collect(),
                    status_code: int(value, "statusCode"),
                    reason_phrase: opt_string(value, "reasonPhrase"),
                })
            };
            MetadataVector {
                message,
                name: v["name"].as_str().expect("name").to_owned(),
                value,
                datum: hex::decode(v["hex"].as_str().expect("hex")).expect("hex digits"),
                decode_only: v
                    .get("decode_only")
                    .and_then(Value::as_bool)
                    .unwrap_or(false),
            }
        })
        .collect()
}

#[test]
fn metadata_messages_have_vectors() {
    let vectors = metadata_vectors();
    for message in EXTENSION_MESSAGES {
        let of = |f: &dyn Fn(&MetadataVector) -> bool| {
            vectors
                .iter()
                .filter(|v| v.message == message && f(v))
                .count()
        };
        assert!(of(&|v| !v.decode_only) >= 8, "{message}");
        assert_eq!(of(&|v| v.name.starts_with("newer writer")), 1, "{message}");
        assert!(of(&|v| v.datum.len() > 64 * 1024) >= 1, "{message}");
    }
    assert_eq!(
        vectors
            .iter()
            .filter(|v| v.name == "older writer without reasonPhrase")
            .count(),
        1
    );
    // Every entry status and both branches of every union.
    assert!(vectors.iter().any(|v| matches!(
        &v.value,
        Metadata::Response(r) if r.endpoints.iter().map(|e| e.status_code).collect::<Vec<_>>() == [200, 400, 404, 413]
    )));
}

#[test]
fn metadata_encoding_is_the_golden_bytes() {
    for v in metadata_vectors().iter().filter(|v| !v.decode_only) {
        assert_eq!(v.value.encoded_len(), v.datum.len(), "{}", v.label());
        assert_eq!(v.value.to_vec(), v.datum, "{}", v.label());
    }
}

#[test]
fn metadata_decoding_the_golden_bytes_gives_the_value() {
    for v in metadata_vectors() {
        let decoded = v
            .decode(&v.datum)
            .unwrap_or_else(|e| panic!("{}: {e}", v.label()));
        assert_eq!(decoded, v.value, "{}", v.label());
        let owned = {
            let datum = v.datum.clone();
            v.decode(&datum).unwrap().into_owned()
        };
        assert_eq!(owned, v.value, "{}", v.label());
    }
}

/// Each proper prefix of each datum is a typed truncation error naming one of the
/// records, except the response cut right before its trailing `reasonPhrase` (the
/// defaulted value) and, for a newer writer's datum, any cut after the known fields.
#[test]
fn metadata_every_prefix_is_an_error_or_the_defaulted_value() {
    let mut prefixes = 0;
    let mut defaulted = 0;
    for v in metadata_vectors() {
        let canonical = v.value.to_vec();
        let extends_canonical = v.datum.starts_with(&canonical);
        assert!(extends_canonical || v.decode_only, "{}", v.label());
        let before_reason = match &v.value {
            Metadata::Response(r) => Some((
                canonical.len() - optional_len(r.reason_phrase.as_deref(), string_len),
                Metadata::Response(EndpointMetadataResponse {
                    reason_phrase: None,
                    ..r.clone()
                }),
            )),
            Metadata::Request(_) => None,
        };
        for cut in 0..v.datum.len() {
            prefixes += 1;
            let expected = match &before_reason {
                Some((at, value)) if extends_canonical && cut == *at => Some(value.clone()),
                _ if extends_canonical && cut >= canonical.len() => Some(v.value.clone()),
                _ => None,
            };
            match (v.decode(&v.datum[..cut]), expected) {
                (Ok(got), Some(want)) => {
                    defaulted += 1;
                    assert_eq!(got, want, "{} cut at {cut}", v.label());
                }
                (Err(e), None) => {
                    assert!(is_truncation(&e), "{} cut at {cut}: {e}", v.label());
                    assert!(
                        [v.message.as_str(), "EndpointMetadata"].contains(&e.record),
                        "{} cut at {cut}: {e}",
                        v.label()
                    );
                }
                (got, want) => panic!("{} cut at {cut}: got {got:?}, want {want:?}", v.label()),
            }
        }
    }
    assert!(prefixes > 150_000, "{prefixes}");
    assert!(defaulted >= 10, "{defaulted}");
}

#[test]
fn metadata_large_strings_are_borrowed_from_the_input() {
    let mut seen = 0;
    for v in metadata_vectors()
        .iter()
        .filter(|v| v.datum.len() > 64 * 1024)
    {
        let decoded = v.decode(&v.datum).unwrap();
        let large: &Cow<'_, str> = match &decoded {
            Metadata::Request(m) => &m.endpoint_ids[1],
            Metadata::Response(m) => m.endpoints[0].metadata.as_ref().expect("metadata"),
        };
        assert!(large.len() >= 64 * 1024, "{}", v.label());
        let Cow::Borrowed(s) = large else {
            panic!("{}: copied", v.label())
        };
        assert!(
            v.datum.as_ptr_range().contains(&s.as_ptr()),
            "{}",
            v.label()
        );
        seen += 1;
    }
    assert!(seen >= 2, "{seen}");
}

#[test]
fn metadata_arrays_in_other_block_forms() {
    // Two IDs as two blocks, the second with a negative count and its byte size.
    let mut datum = Vec::new();
    put_string(&mut datum, "c");
    put_long(&mut datum, 1);
    put_long(&mut datum, 0);
    put_long(&mut datum, 1);
    put_string(&mut datum, "a");
    put_long(&mut datum, -1);
    put_long(&mut datum, 2);
    put_string(&mut datum, "b");
    put_long(&mut datum, 0);
    let decoded = EndpointMetadataRequest::decode(&datum).unwrap();
    assert_eq!(decoded.endpoint_ids, ["a", "b"]);
    // A byte size that lies is an error naming the array.
    let at = datum.len() - 4;
    datum[at] = 6;
    let e = EndpointMetadataRequest::decode(&datum).unwrap_err();
    assert_eq!(e.field, "endpointIds");
    // A count that cannot fit the remaining bytes is refused before allocating.
    let mut huge = Vec::new();
    put_string(&mut huge, "c");
    put_long(&mut huge, 1);
    put_long(&mut huge, 0);
    put_long(&mut huge, i64::MAX);
    let e = EndpointMetadataResponse::decode(&huge).unwrap_err();
    assert_eq!(
        (e.record, e.field),
        ("EndpointMetadataResponse", "endpoints")
    );
}
