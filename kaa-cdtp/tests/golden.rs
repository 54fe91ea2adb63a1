//! Golden vectors written by Apache Avro's Python implementation
//! (`tests/golden/generate.py`; RFC schemas from `schemas/0006-*.avsc`, named
//! `ConfigUpdated`/`ConfigApplied` from `schemas/config-*-ext.avsc`): our encoding
//! is byte-identical, our decoding gives the same values, every prefix of every
//! datum is a typed error or (only right before trailing defaulted fields) the
//! defaulted value, and every field rejects malformed bytes with the right error.

use std::borrow::Cow;

use kaa_cdtp::{ConfigApplied, ConfigRequest, ConfigResponse, ConfigUpdated, ProviderStarted};
use kaa_ism::avro::{
    Decode, DecodeError, DecodeErrorKind, Encode, put_bytes, put_int, put_long, put_string,
};
use serde_json::Value;

struct Vector {
    message: String,
    name: String,
    value: Value,
    datum: Vec<u8>,
}

fn vectors() -> Vec<Vector> {
    let text = include_str!("golden/vectors.json");
    let json: Vec<Value> = serde_json::from_str(text).expect("vectors.json parses");
    json.into_iter()
        .map(|v| Vector {
            message: v["message"].as_str().expect("message").to_owned(),
            name: v["name"].as_str().expect("name").to_owned(),
            datum: hex::decode(v["hex"].as_str().expect("hex")).expect("hex decodes"),
            value: v["value"].clone(),
        })
        .collect()
}

fn find(message: &str, name: &str) -> Vector {
    vectors()
        .into_iter()
        .find(|v| v.message == message && v.name == name)
        .unwrap_or_else(|| panic!("no vector {message} {name}"))
}

fn field<'v>(value: &'v Value, name: &str) -> &'v Value {
    value
        .get(name)
        .unwrap_or_else(|| panic!("field {name} missing in {value}"))
}

fn string(value: &Value, name: &str) -> Cow<'static, str> {
    Cow::Owned(field(value, name).as_str().expect("a string").to_owned())
}

fn opt_string(value: &Value, name: &str) -> Option<Cow<'static, str>> {
    let v = field(value, name);
    (!v.is_null()).then(|| Cow::Owned(v.as_str().expect("a string or null").to_owned()))
}

/// `configName` of the extended records: absent from unnamed vectors (written with
/// the RFC schema), where it means null.
fn ext_string(value: &Value, name: &str) -> Option<Cow<'static, str>> {
    value.get(name).and_then(|_| opt_string(value, name))
}

fn long(value: &Value, name: &str) -> i64 {
    field(value, name).as_i64().expect("a long")
}

fn int(value: &Value, name: &str) -> i32 {
    i32::try_from(long(value, name)).expect("an int")
}

fn bytes(value: &Value, name: &str) -> Cow<'static, [u8]> {
    Cow::Owned(hex::decode(field(value, name).as_str().expect("hex bytes")).expect("hex"))
}

fn opt_bytes(value: &Value, name: &str) -> Option<Cow<'static, [u8]>> {
    let v = field(value, name);
    (!v.is_null()).then(|| bytes(value, name))
}

fn config_request(v: &Value) -> ConfigRequest<'static> {
    ConfigRequest {
        correlation_id: string(v, "correlationId"),
        timestamp: long(v, "timestamp"),
        timeout: long(v, "timeout"),
        app_version_name: string(v, "appVersionName"),
        endpoint_id: string(v, "endpointId"),
        config_id: opt_string(v, "configId"),
        config_name: opt_string(v, "configName"),
    }
}

fn config_response(v: &Value) -> ConfigResponse<'static> {
    ConfigResponse {
        correlation_id: string(v, "correlationId"),
        timestamp: long(v, "timestamp"),
        timeout: long(v, "timeout"),
        app_version_name: string(v, "appVersionName"),
        endpoint_id: string(v, "endpointId"),
        config_id: opt_string(v, "configId"),
        content_type: string(v, "contentType"),
        content: opt_bytes(v, "content"),
        status_code: int(v, "statusCode"),
        reason_phrase: opt_string(v, "reasonPhrase"),
    }
}

fn config_updated(v: &Value) -> ConfigUpdated<'static> {
    ConfigUpdated {
        correlation_id: string(v, "correlationId"),
        timestamp: long(v, "timestamp"),
        timeout: long(v, "timeout"),
        app_version_name: string(v, "appVersionName"),
        endpoint_id: string(v, "endpointId"),
        config_id: string(v, "configId"),
        content_type: string(v, "contentType"),
        content: bytes(v, "content"),
        originator_replica_id: opt_string(v, "originatorReplicaId"),
        config_name: ext_string(v, "configName"),
    }
}

fn config_applied(v: &Value) -> ConfigApplied<'static> {
    ConfigApplied {
        correlation_id: string(v, "correlationId"),
        timestamp: long(v, "timestamp"),
        timeout: long(v, "timeout"),
        app_version_name: string(v, "appVersionName"),
        endpoint_id: string(v, "endpointId"),
        config_id: string(v, "configId"),
        originator_replica_id: opt_string(v, "originatorReplicaId"),
        status_code: int(v, "statusCode"),
        reason_phrase: opt_string(v, "reasonPhrase"),
        config_name: ext_string(v, "configName"),
    }
}

// ------------------------------------------------------------------ field parts

fn provider_started(v: &Value) -> ProviderStarted<'static> {
    ProviderStarted {
        correlation_id: string(v, "correlationId"),
        timestamp: long(v, "timestamp"),
        timeout: long(v, "timeout"),
        originator_replica_id: string(v, "originatorReplicaId"),
    }
}

/// The Avro type of one field, for building malformed variants of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Str,
    Long,
    Int,
    Bytes,
    /// `["null", string]`
    OptStr,
    /// `["null", bytes]`
    OptBytes,
}

/// One field of a datum: its Avro name, type and encoded bytes.
type Part = (&'static str, Kind, Vec<u8>);

fn str_part(name: &'static str, s: &str) -> Part {
    let mut b = Vec::new();
    put_string(&mut b, s);
    (name, Kind::Str, b)
}

fn long_part(name: &'static str, v: i64) -> Part {
    let mut b = Vec::new();
    put_long(&mut b, v);
    (name, Kind::Long, b)
}

fn int_part(name: &'static str, v: i32) -> Part {
    let mut b = Vec::new();
    put_int(&mut b, v);
    (name, Kind::Int, b)
}

fn bytes_part(name: &'static str, v: &[u8]) -> Part {
    let mut b = Vec::new();
    put_bytes(&mut b, v);
    (name, Kind::Bytes, b)
}

fn opt_str_part(name: &'static str, s: Option<&str>) -> Part {
    let mut b = Vec::new();
    match s {
        None => put_long(&mut b, 0),
        Some(s) => {
            put_long(&mut b, 1);
            put_string(&mut b, s);
        }
    }
    (name, Kind::OptStr, b)
}

fn opt_bytes_part(name: &'static str, v: Option<&[u8]>) -> Part {
    let mut b = Vec::new();
    match v {
        None => put_long(&mut b, 0),
        Some(v) => {
            put_long(&mut b, 1);
            put_bytes(&mut b, v);
        }
    }
    (name, Kind::OptBytes, b)
}

fn common_parts(correlation_id: &str, timestamp: i64, timeout: i64) -> Vec<Part> {
    vec![
        str_part("correlationId", correlation_id),
        long_part("timestamp", timestamp),
        long_part("timeout", timeout),
    ]
}

fn request_parts(v: &ConfigRequest<'_>) -> Vec<Part> {
    let mut p = common_parts(&v.correlation_id, v.timestamp, v.timeout);
    p.extend([
        str_part("appVersionName", &v.app_version_name),
        str_part("endpointId", &v.endpoint_id),
        opt_str_part("configId", v.config_id.as_deref()),
        opt_str_part("configName", v.config_name.as_deref()),
    ]);
    p
}

fn response_parts(v: &ConfigResponse<'_>) -> Vec<Part> {
    let mut p = common_parts(&v.correlation_id, v.timestamp, v.timeout);
    p.extend([
        str_part("appVersionName", &v.app_version_name),
        str_part("endpointId", &v.endpoint_id),
        opt_str_part("configId", v.config_id.as_deref()),
        str_part("contentType", &v.content_type),
        opt_bytes_part("content", v.content.as_deref()),
        int_part("statusCode", v.status_code),
        opt_str_part("reasonPhrase", v.reason_phrase.as_deref()),
    ]);
    p
}

fn updated_parts(v: &ConfigUpdated<'_>) -> Vec<Part> {
    let mut p = common_parts(&v.correlation_id, v.timestamp, v.timeout);
    p.extend([
        str_part("appVersionName", &v.app_version_name),
        str_part("endpointId", &v.endpoint_id),
        str_part("configId", &v.config_id),
        str_part("contentType", &v.content_type),
        bytes_part("content", &v.content),
        opt_str_part("originatorReplicaId", v.originator_replica_id.as_deref()),
    ]);
    if let Some(name) = v.config_name.as_deref() {
        p.push(opt_str_part("configName", Some(name)));
    }
    p
}

fn applied_parts(v: &ConfigApplied<'_>) -> Vec<Part> {
    let mut p = common_parts(&v.correlation_id, v.timestamp, v.timeout);
    p.extend([
        str_part("appVersionName", &v.app_version_name),
        str_part("endpointId", &v.endpoint_id),
        str_part("configId", &v.config_id),
        opt_str_part("originatorReplicaId", v.originator_replica_id.as_deref()),
        int_part("statusCode", v.status_code),
        opt_str_part("reasonPhrase", v.reason_phrase.as_deref()),
    ]);
    if let Some(name) = v.config_name.as_deref() {
        p.push(opt_str_part("configName", Some(name)));
    }
    p
}

fn started_parts(v: &ProviderStarted<'_>) -> Vec<Part> {
    let mut p = common_parts(&v.correlation_id, v.timestamp, v.timeout);
    p.push(str_part("originatorReplicaId", &v.originator_replica_id));
    p
}

/// The fields that may be left out at the end of a datum, taking their defaults.
fn trailing_defaulted(message: &str) -> &'static [&'static str] {
    match message {
        "ConfigRequest" => &["configId", "configName"],
        "ConfigResponse" => &["reasonPhrase"],
        "ConfigUpdated" => &["originatorReplicaId", "configName"],
        "ConfigApplied" => &[
            "originatorReplicaId",
            "statusCode",
            "reasonPhrase",
            "configName",
        ],
        // kaa-rs extension: every field is required but `timeout`, which is not last.
        "ProviderStarted" => &[],
        other => panic!("unknown message {other}"),
    }
}

/// A malformed encoding of a field: what is wrong, the bytes, and a check of the
/// error they must give.
type Malformed = (&'static str, Vec<u8>, fn(&DecodeErrorKind) -> bool);

/// Malformed encodings of a field of `kind`, with a check of the error they give.
fn malformed(kind: Kind) -> Vec<Malformed> {
    let huge = {
        let mut b = Vec::new();
        put_long(&mut b, 1 << 40);
        b
    };
    let length_cases = |prefix: &[u8]| -> Vec<Malformed> {
        vec![
            ("negative length", [prefix, &[0x03]].concat(), |k| {
                matches!(k, DecodeErrorKind::NegativeLength(-2))
            }),
            (
                "length past the end",
                [prefix, &huge].concat(),
                |k| matches!(k, DecodeErrorKind::LengthPastEnd { length, .. } if *length == 1 << 40),
            ),
        ]
    };
    let utf8_cases = |prefix: &[u8]| -> Vec<Malformed> {
        vec![
            (
                "invalid UTF-8",
                [prefix, &[0x04, 0xc3, 0x28]].concat(),
                |k| matches!(k, DecodeErrorKind::InvalidUtf8),
            ),
            (
                "UTF-16 surrogate in UTF-8",
                [prefix, &[0x06, 0xed, 0xa0, 0x80]].concat(),
                |k| matches!(k, DecodeErrorKind::InvalidUtf8),
            ),
        ]
    };
    let union_cases = || -> Vec<Malformed> {
        vec![
            ("union index 2", vec![0x04], |k| {
                matches!(
                    k,
                    DecodeErrorKind::UnionIndex {
                        index: 2,
                        branches: 2
                    }
                )
            }),
            ("union index -1", vec![0x01], |k| {
                matches!(
                    k,
                    DecodeErrorKind::UnionIndex {
                        index: -1,
                        branches: 2
                    }
                )
            }),
        ]
    };
    let varint_cases = || -> Vec<Malformed> {
        vec![
            ("overlong varint", vec![0x80, 0x00], |k| {
                matches!(k, DecodeErrorKind::OverlongVarint)
            }),
            ("varint past 64 bits", vec![0xff; 11], |k| {
                matches!(k, DecodeErrorKind::VarintOverflow)
            }),
        ]
    };
    match kind {
        Kind::Str => [length_cases(&[]), utf8_cases(&[])].concat(),
        Kind::Bytes => length_cases(&[]),
        Kind::OptStr => [union_cases(), length_cases(&[0x02]), utf8_cases(&[0x02])].concat(),
        Kind::OptBytes => [union_cases(), length_cases(&[0x02])].concat(),
        Kind::Long => varint_cases(),
        Kind::Int => {
            let mut cases = varint_cases();
            cases.push((
                "int past 32 bits",
                vec![0x80, 0x80, 0x80, 0x80, 0x10],
                |k| matches!(k, DecodeErrorKind::IntOutOfRange(v) if *v == 1 << 31),
            ));
            cases
        }
    }
}

// ----------------------------------------------------------------------- checks

/// Checks one decoded type against one golden vector.
///
/// `decode` decodes and detaches (`into_owned`), so that it can be applied to
/// datums that do not outlive this function; `parts` splits a value into fields;
/// `default` sets one trailing field to its default.
fn check<M>(
    vector: &Vector,
    expected: M,
    decode: impl Fn(&[u8]) -> Result<M, DecodeError>,
    parts: impl Fn(&M) -> Vec<Part>,
    default: impl Fn(&mut M, &str),
) where
    M: Encode + PartialEq + Clone + std::fmt::Debug,
{
    let name = format!("{} {}", vector.message, vector.name);
    assert_eq!(
        expected.encoded_len(),
        vector.datum.len(),
        "{name}: encoded_len"
    );
    assert_eq!(
        hex::encode(expected.to_vec()),
        hex::encode(&vector.datum),
        "{name}: encoding"
    );
    assert_eq!(
        decode(&vector.datum).as_ref(),
        Ok(&expected),
        "{name}: decoding"
    );

    let fields = parts(&expected);
    assert_eq!(
        fields
            .iter()
            .flat_map(|(_, _, b)| b.clone())
            .collect::<Vec<_>>(),
        vector.datum,
        "{name}: field split"
    );

    // The prefixes that must decode: the datum cut right before each trailing
    // defaulted field, giving the value with that field and all after it defaulted.
    let trailing = trailing_defaulted(&vector.message);
    let mut cuts = vec![(vector.datum.len(), expected.clone())];
    let mut len = vector.datum.len();
    let mut defaulted = expected.clone();
    for (field, _, bytes) in fields.iter().rev() {
        if !trailing.contains(field) {
            break;
        }
        len -= bytes.len();
        default(&mut defaulted, field);
        cuts.push((len, defaulted.clone()));
    }
    assert!(
        cuts.len() > 1 || trailing.is_empty(),
        "{name}: no trailing defaulted field"
    );

    for len in 0..vector.datum.len() {
        let result = decode(&vector.datum[..len]);
        match cuts.iter().find(|(cut, _)| *cut == len) {
            Some((_, defaulted)) => {
                assert_eq!(
                    result.as_ref(),
                    Ok(defaulted),
                    "{name}: prefix of {len} bytes"
                )
            }
            None => {
                let err = result.expect_err(&format!("{name}: prefix of {len} bytes decoded"));
                assert_eq!(err.record, vector.message, "{name}: record in error");
                assert!(
                    matches!(
                        err.kind,
                        DecodeErrorKind::UnexpectedEnd | DecodeErrorKind::LengthPastEnd { .. }
                    ),
                    "{name}: prefix of {len} bytes: {err}"
                );
            }
        }
    }

    // A newer writer's appended fields are ignored. For the extended records an
    // unnamed datum's next field is read as configName, so append a valid one there.
    let mut longer = vector.datum.clone();
    let mut expected_longer = expected.clone();
    if matches!(vector.message.as_str(), "ConfigUpdated" | "ConfigApplied")
        && !fields.iter().any(|(f, _, _)| *f == "configName")
    {
        longer.extend_from_slice(&[0x02, 0x02, b'x']);
        let with_name = [vector.datum.clone(), vec![0x02, 0x02, b'x']].concat();
        expected_longer = decode(&with_name).expect("named datum decodes");
    }
    longer.extend_from_slice(&[0x02, 0x06, b'n', b'e', b'w', 0xff]);
    assert_eq!(
        decode(&longer).as_ref(),
        Ok(&expected_longer),
        "{name}: trailing bytes"
    );

    // Every field, replaced by malformed bytes, gives that field's error.
    for (i, (field, kind, _)) in fields.iter().enumerate() {
        for (what, bad, check_kind) in malformed(*kind) {
            let datum: Vec<u8> = fields
                .iter()
                .enumerate()
                .flat_map(|(j, (_, _, b))| if i == j { bad.clone() } else { b.clone() })
                .collect();
            let err = decode(&datum).expect_err(&format!("{name}: {field} {what} decoded"));
            assert_eq!(
                (err.record, err.field),
                (vector.message.as_str(), *field),
                "{name}: {field} {what}: {err}"
            );
            assert!(check_kind(&err.kind), "{name}: {field} {what}: {err}");
        }
    }
}

#[test]
fn golden_vectors() {
    let mut counts = std::collections::BTreeMap::new();
    for vector in vectors() {
        match vector.message.as_str() {
            "ConfigRequest" => check(
                &vector,
                config_request(&vector.value),
                |b| ConfigRequest::decode(b).map(ConfigRequest::into_owned),
                request_parts,
                |m, f| match f {
                    "configId" => m.config_id = None,
                    "configName" => m.config_name = None,
                    other => panic!("{other} has no default"),
                },
            ),
            "ConfigResponse" => {
                // The spliced encoding is the same datum, in three chunks.
                let spliced = config_response(&vector.value).encode_spliced().to_vec();
                assert_eq!(
                    hex::encode(spliced),
                    hex::encode(&vector.datum),
                    "ConfigResponse {}: spliced encoding",
                    vector.name
                );
                check(
                    &vector,
                    config_response(&vector.value),
                    |b| ConfigResponse::decode(b).map(ConfigResponse::into_owned),
                    response_parts,
                    |m, f| match f {
                        "reasonPhrase" => m.reason_phrase = None,
                        other => panic!("{other} has no default"),
                    },
                )
            }
            "ConfigUpdated" => check(
                &vector,
                config_updated(&vector.value),
                |b| ConfigUpdated::decode(b).map(ConfigUpdated::into_owned),
                updated_parts,
                |m, f| match f {
                    "originatorReplicaId" => m.originator_replica_id = None,
                    "configName" => m.config_name = None,
                    other => panic!("{other} has no default"),
                },
            ),
            "ConfigApplied" => check(
                &vector,
                config_applied(&vector.value),
                |b| ConfigApplied::decode(b).map(ConfigApplied::into_owned),
                applied_parts,
                |m, f| match f {
                    "originatorReplicaId" => m.originator_replica_id = None,
                    "statusCode" => m.status_code = 200,
                    "reasonPhrase" => m.reason_phrase = None,
                    "configName" => m.config_name = None,
                    other => panic!("{other} has no default"),
                },
            ),
            "ProviderStarted" => check(
                &vector,
                provider_started(&vector.value),
                |b| ProviderStarted::decode(b).map(ProviderStarted::into_owned),
                started_parts,
                |_, f| panic!("{f} has no default"),
            ),
            other => panic!("unknown message {other} in vectors.json"),
        }
        *counts.entry(vector.message).or_insert(0) += 1;
    }
    assert_eq!(counts.len(), 5, "{counts:?}");
    assert!(
        counts.values().all(|&c| c >= 8),
        "too few vectors: {counts:?}"
    );
}

#[test]
fn large_content_is_borrowed_not_copied() {
    let v = find("ConfigResponse", "large_content_64k");
    let decoded = ConfigResponse::decode(&v.datum).unwrap();
    let Some(Cow::Borrowed(content)) = decoded.content else {
        panic!("content copied")
    };
    assert_eq!(content.len(), 64 * 1024);
    assert!(v.datum.as_ptr_range().contains(&content.as_ptr()));

    for name in ["large_content_64k", "named_large_content_64k"] {
        let v = find("ConfigUpdated", name);
        let decoded = ConfigUpdated::decode(&v.datum).unwrap();
        let Cow::Borrowed(content) = decoded.content else {
            panic!("content copied")
        };
        assert_eq!(content.len(), 64 * 1024);
        assert!(v.datum.as_ptr_range().contains(&content.as_ptr()));
        let Cow::Borrowed(config_id) = decoded.config_id else {
            panic!("string copied")
        };
        assert!(v.datum.as_ptr_range().contains(&config_id.as_ptr()));
    }
}

#[test]
fn named_events_extend_rfc_events() {
    // A named datum is the unnamed (RFC) datum plus the trailing union.
    for message in ["ConfigUpdated", "ConfigApplied"] {
        let named = find(message, "named");
        let bytes = match message {
            "ConfigUpdated" => {
                let mut m = config_updated(&named.value);
                assert_eq!(m.config_name.as_deref(), Some("network"));
                m.config_name = None;
                m.to_vec()
            }
            _ => {
                let mut m = config_applied(&named.value);
                assert_eq!(m.config_name.as_deref(), Some("network"));
                m.config_name = None;
                m.to_vec()
            }
        };
        assert_eq!(&named.datum[..bytes.len()], &bytes[..], "{message}");
        assert_eq!(&named.datum[bytes.len()..], b"\x02\x0enetwork", "{message}");
    }
}

#[test]
fn request_from_before_config_name_takes_the_default() {
    // The RFC's first example as a writer with the pre-configName schema sends it:
    // the datum ends after configId.
    let v = find("ConfigRequest", "rfc_example");
    let old = &v.datum[..v.datum.len() - 1];
    let decoded = ConfigRequest::decode(old).unwrap();
    assert_eq!(decoded, config_request(&v.value));
    assert_eq!(decoded.config_name, None);
    assert_eq!(
        decoded.config_id.as_deref(),
        Some("6046b576591c75fd68ab67f7e4475311")
    );
}
