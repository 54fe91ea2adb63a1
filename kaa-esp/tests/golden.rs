//! Golden vectors written by Apache Avro's Python implementation
//! (`tests/golden/generate.py`, RFC schemas from `schemas/0004-*.avsc`): our
//! encoding is byte-identical, our decoding gives the same values, every prefix of
//! every datum is a typed error or (only right before trailing defaulted fields) the
//! defaulted value, and malformed input is rejected with the right error.

use std::borrow::Cow;

use kaa_esp::{ClientData, ExtensionData};
use kaa_ism::avro::{
    Decode, DecodeError, DecodeErrorKind, Encode, long_len, put_bytes, put_int, put_long,
    put_string, put_union_index,
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

fn long(value: &Value, name: &str) -> i64 {
    field(value, name).as_i64().expect("a long")
}

fn int(value: &Value, name: &str) -> i32 {
    i32::try_from(long(value, name)).expect("an int")
}

fn opt_int(value: &Value, name: &str) -> Option<i32> {
    let v = field(value, name);
    (!v.is_null()).then(|| int(value, name))
}

fn bytes(value: &Value, name: &str) -> Cow<'static, [u8]> {
    Cow::Owned(hex::decode(field(value, name).as_str().expect("hex bytes")).expect("hex"))
}

fn opt_bytes(value: &Value, name: &str) -> Option<Cow<'static, [u8]>> {
    let v = field(value, name);
    (!v.is_null()).then(|| bytes(value, name))
}

fn client_data(v: &Value) -> ClientData<'static> {
    ClientData {
        correlation_id: string(v, "correlationId"),
        timestamp: long(v, "timestamp"),
        timeout: long(v, "timeout"),
        app_version_name: string(v, "appVersionName"),
        endpoint_id: opt_string(v, "endpointId"),
        resource_path: string(v, "resourcePath"),
        request_id: opt_int(v, "requestId"),
        payload: bytes(v, "payload"),
        config_name: opt_string(v, "configName"),
    }
}

fn extension_data(v: &Value) -> ExtensionData<'static> {
    ExtensionData {
        correlation_id: string(v, "correlationId"),
        timestamp: long(v, "timestamp"),
        timeout: long(v, "timeout"),
        app_version_name: opt_string(v, "appVersionName"),
        extension_instance_name: opt_string(v, "extensionInstanceName"),
        endpoint_id: opt_string(v, "endpointId"),
        resource_path: string(v, "resourcePath"),
        request_id: opt_int(v, "requestId"),
        payload: opt_bytes(v, "payload"),
        status_code: int(v, "statusCode"),
        reason_phrase: opt_string(v, "reasonPhrase"),
    }
}

fn opt_str_len(s: Option<&str>) -> usize {
    1 + s.map_or(0, |s| long_len(s.len() as i64) + s.len())
}

/// The prefixes of a ClientData datum that must decode, with what they decode to:
/// the whole datum, and the datum without its trailing defaulted `configName`.
fn client_data_cuts(v: &ClientData<'static>) -> Vec<(usize, ClientData<'static>)> {
    let full = v.encoded_len();
    let name = opt_str_len(v.config_name.as_deref());
    vec![
        (full, v.clone()),
        (
            full - name,
            ClientData {
                config_name: None,
                ..v.clone()
            },
        ),
    ]
}

fn extension_data_cuts(v: &ExtensionData<'static>) -> Vec<(usize, ExtensionData<'static>)> {
    let full = v.encoded_len();
    let reason = opt_str_len(v.reason_phrase.as_deref());
    vec![
        (full, v.clone()),
        (
            full - reason,
            ExtensionData {
                reason_phrase: None,
                ..v.clone()
            },
        ),
    ]
}

/// Checks one message type against one golden vector.
///
/// `decode` decodes and detaches (`into_owned`), so that it can be applied to
/// datums that do not outlive this function.
fn check<M>(
    vector: &Vector,
    expected: M,
    cuts: Vec<(usize, M)>,
    decode: impl Fn(&[u8]) -> Result<M, DecodeError>,
) where
    M: Encode + PartialEq + std::fmt::Debug,
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

    // Every prefix: a typed error, or the defaulted value at a trailing-field cut.
    for len in 0..vector.datum.len() {
        let prefix = &vector.datum[..len];
        let result = decode(prefix);
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

    // A newer writer's appended fields are ignored.
    let mut longer = vector.datum.clone();
    longer.extend_from_slice(&[0x02, 0x06, b'n', b'e', b'w', 0xff]);
    assert_eq!(
        decode(&longer).as_ref(),
        Ok(&expected),
        "{name}: trailing bytes"
    );
}

#[test]
fn golden_vectors() {
    let vectors = vectors();
    let mut counts = [0usize; 2];
    for vector in &vectors {
        match vector.message.as_str() {
            "ClientData" => {
                let v = client_data(&vector.value);
                let cuts = client_data_cuts(&v);
                check(vector, v, cuts, |b| {
                    ClientData::decode(b).map(ClientData::into_owned)
                });
                counts[0] += 1;
            }
            "ExtensionData" => {
                let v = extension_data(&vector.value);
                let cuts = extension_data_cuts(&v);
                check(vector, v, cuts, |b| {
                    ExtensionData::decode(b).map(ExtensionData::into_owned)
                });
                counts[1] += 1;
            }
            other => panic!("unknown message {other} in vectors.json"),
        }
    }
    assert!(
        counts.iter().all(|&c| c >= 8),
        "too few vectors: {counts:?}"
    );
}

fn find(message: &str, name: &str) -> Vector {
    vectors()
        .into_iter()
        .find(|v| v.message == message && v.name == name)
        .unwrap_or_else(|| panic!("no vector {message} {name}"))
}

#[test]
fn large_payloads_are_borrowed_not_copied() {
    let v = find("ClientData", "large_payload_64k");
    let decoded = ClientData::decode(&v.datum).unwrap();
    assert_eq!(decoded.payload.len(), 64 * 1024);
    let Cow::Borrowed(payload) = decoded.payload else {
        panic!("payload copied")
    };
    assert!(v.datum.as_ptr_range().contains(&payload.as_ptr()));
    assert!(std::ptr::eq(
        payload.as_ptr(),
        v.datum[v.datum.len() - 1 - 64 * 1024..].as_ptr()
    ));

    let v = find("ExtensionData", "large_payload_64k");
    let decoded = ExtensionData::decode(&v.datum).unwrap();
    let Some(Cow::Borrowed(payload)) = decoded.payload else {
        panic!("payload copied")
    };
    assert_eq!(payload.len(), 64 * 1024);
    assert!(v.datum.as_ptr_range().contains(&payload.as_ptr()));
    let Cow::Borrowed(resource) = decoded.resource_path else {
        panic!("string copied")
    };
    assert!(v.datum.as_ptr_range().contains(&resource.as_ptr()));
}

#[test]
fn datum_from_before_config_name_takes_the_default() {
    // The RFC example without its configName: what a writer with the older schema sends.
    let v = find("ClientData", "rfc_example");
    let old = &v.datum[..v.datum.len() - 1 - 1 - "network".len()];
    let decoded = ClientData::decode(old).unwrap();
    assert_eq!(decoded.config_name, None);
    assert_eq!(decoded.request_id, Some(42));
    assert_eq!(&*decoded.payload, b"[\r\n  { \"humidity\": 88 }\r\n]");
    // And we write it back in the current schema, with an explicit null.
    let mut current = old.to_vec();
    current.push(0x00);
    assert_eq!(decoded.to_vec(), current);
}

/// A ClientData datum assembled by hand, so that any field can be made malformed.
struct ClientDataParts {
    endpoint_union: i64,
    resource_path: Vec<u8>,
    request_union: i64,
    request_id: i64,
    payload_len: i64,
    config_union: i64,
}

impl Default for ClientDataParts {
    fn default() -> Self {
        ClientDataParts {
            endpoint_union: 0,
            resource_path: b"/json".to_vec(),
            request_union: 0,
            request_id: 7,
            payload_len: 3,
            config_union: 1,
        }
    }
}

impl ClientDataParts {
    fn datum(&self) -> Vec<u8> {
        let mut b = Vec::new();
        put_string(&mut b, "corr");
        put_long(&mut b, 1);
        put_long(&mut b, 2);
        put_string(&mut b, "app");
        put_long(&mut b, self.endpoint_union);
        if self.endpoint_union == 0 {
            put_string(&mut b, "ep");
        }
        put_bytes(&mut b, &self.resource_path);
        put_long(&mut b, self.request_union);
        if self.request_union == 0 {
            put_long(&mut b, self.request_id);
        }
        put_long(&mut b, self.payload_len);
        b.extend_from_slice(b"abc");
        put_long(&mut b, self.config_union);
        if self.config_union == 1 {
            put_string(&mut b, "name");
        }
        b
    }
}

fn client_data_error(parts: ClientDataParts) -> DecodeError {
    ClientData::decode(&parts.datum()).expect_err("malformed datum decoded")
}

#[test]
fn malformed_client_data() {
    // The well-formed base decodes.
    let base = ClientDataParts::default().datum();
    let ok = ClientData::decode(&base).unwrap();
    assert_eq!(ok.config_name.as_deref(), Some("name"));
    assert_eq!(ok.request_id, Some(7));

    let cases: Vec<(&str, ClientDataParts, &str, DecodeErrorKind)> = vec![
        (
            "endpointId union index 2",
            ClientDataParts {
                endpoint_union: 2,
                ..Default::default()
            },
            "endpointId",
            DecodeErrorKind::UnionIndex {
                index: 2,
                branches: 2,
            },
        ),
        (
            "endpointId union index -1",
            ClientDataParts {
                endpoint_union: -1,
                ..Default::default()
            },
            "endpointId",
            DecodeErrorKind::UnionIndex {
                index: -1,
                branches: 2,
            },
        ),
        (
            "requestId union index 5",
            ClientDataParts {
                request_union: 5,
                ..Default::default()
            },
            "requestId",
            DecodeErrorKind::UnionIndex {
                index: 5,
                branches: 2,
            },
        ),
        (
            "configName union index 2",
            ClientDataParts {
                config_union: 2,
                ..Default::default()
            },
            "configName",
            DecodeErrorKind::UnionIndex {
                index: 2,
                branches: 2,
            },
        ),
        (
            "requestId past 32 bits",
            ClientDataParts {
                request_id: i64::from(i32::MAX) + 1,
                ..Default::default()
            },
            "requestId",
            DecodeErrorKind::IntOutOfRange(i64::from(i32::MAX) + 1),
        ),
        (
            "negative payload length",
            ClientDataParts {
                payload_len: -3,
                ..Default::default()
            },
            "payload",
            DecodeErrorKind::NegativeLength(-3),
        ),
        (
            "payload length past the end",
            ClientDataParts {
                payload_len: 1 << 40,
                ..Default::default()
            },
            "payload",
            DecodeErrorKind::LengthPastEnd {
                length: 1 << 40,
                remaining: 9,
            },
        ),
        (
            "invalid UTF-8 in resourcePath",
            ClientDataParts {
                resource_path: vec![b'/', 0xc3, 0x28],
                ..Default::default()
            },
            "resourcePath",
            DecodeErrorKind::InvalidUtf8,
        ),
        (
            "lone continuation byte in resourcePath",
            ClientDataParts {
                resource_path: vec![0x80],
                ..Default::default()
            },
            "resourcePath",
            DecodeErrorKind::InvalidUtf8,
        ),
    ];
    for (name, parts, field, kind) in cases {
        let err = client_data_error(parts);
        assert_eq!(err.record, "ClientData", "{name}");
        assert_eq!(err.field, field, "{name}: {err}");
        assert_eq!(err.kind, kind, "{name}: {err}");
    }
}

#[test]
fn malformed_extension_data() {
    let v = find("ExtensionData", "rfc_example");
    let good = extension_data(&v.value);

    // Build the datum up to `payload`, then put malformed bytes there.
    let mut head = Vec::new();
    put_string(&mut head, &good.correlation_id);
    put_long(&mut head, good.timestamp);
    put_long(&mut head, good.timeout);
    for s in [
        &good.app_version_name,
        &good.extension_instance_name,
        &good.endpoint_id,
    ] {
        put_union_index(&mut head, 0);
        put_string(&mut head, s.as_deref().unwrap());
    }
    put_string(&mut head, &good.resource_path);
    put_union_index(&mut head, 0);
    put_int(&mut head, 42);
    let mut tail = Vec::new();
    put_int(&mut tail, 200);
    put_union_index(&mut tail, 1);
    put_string(&mut tail, "OK");

    let with = |middle: &[u8]| [&head[..], middle, &tail[..]].concat();
    let mut well_formed = Vec::new();
    put_union_index(&mut well_formed, 0);
    put_bytes(&mut well_formed, good.payload.as_deref().unwrap());
    assert_eq!(
        with(&well_formed),
        v.datum,
        "hand-built datum matches the golden one"
    );

    type Case = (
        &'static str,
        Vec<u8>,
        &'static str,
        fn(&DecodeErrorKind) -> bool,
    );
    let cases: Vec<Case> = vec![
        ("payload union index 2", vec![0x04], "payload", |k| {
            matches!(
                k,
                DecodeErrorKind::UnionIndex {
                    index: 2,
                    branches: 2
                }
            )
        }),
        (
            "payload negative length",
            vec![0x00, 0x01],
            "payload",
            |k| matches!(k, DecodeErrorKind::NegativeLength(-1)),
        ),
        (
            "payload length past end",
            vec![0x00, 0x7e],
            "payload",
            |k| matches!(k, DecodeErrorKind::LengthPastEnd { length: 63, .. }),
        ),
        ("overlong varint", vec![0x80, 0x00], "payload", |k| {
            matches!(k, DecodeErrorKind::OverlongVarint)
        }),
    ];
    for (name, middle, field, kind) in cases {
        let err = ExtensionData::decode(&with(&middle)).expect_err(name);
        assert_eq!(
            (err.record, err.field),
            ("ExtensionData", field),
            "{name}: {err}"
        );
        assert!(kind(&err.kind), "{name}: {err}");
    }

    // statusCode out of the int range.
    let mut datum = head.clone();
    datum.extend_from_slice(&well_formed);
    put_long(&mut datum, i64::from(i32::MIN) - 1);
    let err = ExtensionData::decode(&datum).unwrap_err();
    assert_eq!(err.field, "statusCode");
    assert_eq!(
        err.kind,
        DecodeErrorKind::IntOutOfRange(i64::from(i32::MIN) - 1)
    );

    // Invalid UTF-8 in reasonPhrase.
    let mut datum = head.clone();
    datum.extend_from_slice(&well_formed);
    put_int(&mut datum, 200);
    put_union_index(&mut datum, 1);
    put_bytes(&mut datum, &[0xff, 0xfe]);
    let err = ExtensionData::decode(&datum).unwrap_err();
    assert_eq!(
        (err.field, err.kind),
        ("reasonPhrase", DecodeErrorKind::InvalidUtf8)
    );
}
