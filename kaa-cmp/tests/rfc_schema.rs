//! Cross-check of the 7/CMP payload codec against the RFC JSON schemas in this
//! crate's `schemas/` (copies of kaa-rfcs `0007/`), validated with the `jsonschema`
//! crate:
//!
//! - everything we encode is valid under the RFC schema;
//! - for arbitrary JSON objects over the RFC's property names (plus an unknown
//!   one) and values of every JSON type, our decoder accepts exactly what the
//!   schema accepts, apart from the leniencies and strictnesses the
//!   [`kaa_cmp::message`] docs list (a `null` property is absent; a status code
//!   must be an integer in `i32` range; a response's `configId` and `config` come
//!   in a pair);
//! - the configuration delta extension (kaa-rs) against its own schemas,
//!   `schemas/kaa-rs-config-patch-*.schema.json`.

use std::borrow::Cow;

use jsonschema::Validator;
use kaa_cmp::message::{AppliedRequest, ConfigRequest, ConfigResponse};
use proptest::prelude::*;
use serde_json::{Map, Value, json};

fn rfc_schema(file: &str) -> Validator {
    let path = format!("{}/schemas/{file}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let mut schema: Value = serde_json::from_str(&text).expect("RFC schema is JSON");
    // The 7/CMP schemas say `"$schema": "http://json-schema.org/schema#"` ("the
    // latest draft"), which `jsonschema` cannot resolve offline; they only use
    // keywords that mean the same in every draft (`type`, `properties`,
    // `required`, `additionalProperties`), so that URI is dropped and the draft is
    // named here: 4, like 1/KP's schema.
    let meta = schema.as_object_mut().and_then(|o| o.remove("$schema"));
    assert_eq!(
        meta,
        Some(json!("http://json-schema.org/schema#")),
        "{path}"
    );
    jsonschema::options()
        .with_draft(jsonschema::Draft::Draft4)
        .build(&schema)
        .unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn config_request_schema() -> Validator {
    rfc_schema("0007-config-request.schema.json")
}

fn config_response_schema() -> Validator {
    rfc_schema("0007-config-response.schema.json")
}

fn applied_request_schema() -> Validator {
    rfc_schema("0007-applied-request.schema.json")
}

fn valid(schema: &Validator, payload: &[u8]) -> bool {
    let value: Value = serde_json::from_slice(payload).expect("we write JSON");
    schema.is_valid(&value)
}

/// Any JSON value, nested a little.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        (-1.0e12f64..1.0e12).prop_map(Value::from),
        // Integral floats (`200.0`) and status-code-like numbers.
        (100i32..600).prop_map(|n| json!(f64::from(n))),
        (100i32..600).prop_map(Value::from),
        ".{0,12}".prop_map(Value::from),
    ];
    leaf.prop_recursive(2, 8, 3, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..3).prop_map(Value::Array),
            prop::collection::vec(("[a-z]{1,4}", inner), 0..3)
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

/// A JSON object where each of `fields` is present or not, its value mostly of the
/// type the RFC asks for (the strategy given) and otherwise any JSON value; plus,
/// sometimes, a property the RFC does not know.
fn object_of(
    fields: Vec<(&'static str, BoxedStrategy<Value>)>,
) -> BoxedStrategy<Map<String, Value>> {
    let mut all: Vec<(&'static str, f64, BoxedStrategy<Value>)> = fields
        .into_iter()
        .map(|(k, typed)| (k, 0.5, prop_oneof![3 => typed, 1 => any_json()].boxed()))
        .collect();
    all.push(("other", 0.2, any_json().boxed()));
    all.into_iter()
        .map(|(k, p, v)| proptest::option::weighted(p, v).prop_map(move |v| v.map(|v| (k, v))))
        .collect::<Vec<_>>()
        .prop_map(|entries| {
            entries
                .into_iter()
                .flatten()
                .map(|(k, v)| (k.to_owned(), v))
                .collect()
        })
        .boxed()
}

/// A JSON number for `statusCode`: integers, integral floats, fractions, and
/// numbers beyond `i32`.
fn status_code() -> BoxedStrategy<Value> {
    prop_oneof![
        (100i32..600).prop_map(Value::from),
        any::<i32>().prop_map(Value::from),
        (100i32..600).prop_map(|n| json!(f64::from(n))),
        (100.0f64..600.0).prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        (-1.0e12f64..1.0e12).prop_map(Value::from),
    ]
    .boxed()
}

fn string() -> BoxedStrategy<Value> {
    ".{0,8}".prop_map(Value::from).boxed()
}

/// `object` without its `null` properties: what the lenient decoder reads.
fn without_nulls(object: &Map<String, Value>, keys: &[&str]) -> Value {
    Value::Object(
        object
            .iter()
            .filter(|(k, v)| !(v.is_null() && keys.contains(&k.as_str())))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    )
}

fn opt_str() -> impl Strategy<Value = Option<Cow<'static, str>>> {
    proptest::option::of(".{0,16}".prop_map(Cow::Owned))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn encoded_config_requests_are_valid(config_id in opt_str(), observe in any::<Option<bool>>()) {
        let request = ConfigRequest { config_id, observe };
        prop_assert!(valid(&config_request_schema(), &request.to_json()));
    }

    #[test]
    fn encoded_config_responses_are_valid(config_id in ".{0,16}", config in any_json(), unchanged in any::<bool>()) {
        let response = if unchanged {
            ConfigResponse::Unchanged
        } else {
            ConfigResponse::Config { config_id: config_id.clone(), config: config.clone() }
        };
        let schema = config_response_schema();
        prop_assert!(valid(&schema, &response.to_json()));
        let raw = ConfigResponse::encode_raw(&config_id, &serde_json::to_vec(&config).unwrap());
        prop_assert!(valid(&schema, &raw));
    }

    #[test]
    fn encoded_applied_requests_are_valid(config_id in ".{0,16}", status_code in any::<i32>(), reason in opt_str()) {
        let request = AppliedRequest { config_id: config_id.into(), status_code, reason_phrase: reason };
        prop_assert!(valid(&applied_request_schema(), &request.to_json()));
    }

    #[test]
    fn config_request_decoding_agrees_with_the_schema(object in object_of(vec![("configId", string()), ("observe", any::<bool>().prop_map(Value::from).boxed())])) {
        let payload = serde_json::to_vec(&object).unwrap();
        let ours = ConfigRequest::from_json(&payload).is_ok();
        // Lenient: a `null` property is the property absent.
        let schema = config_request_schema().is_valid(&without_nulls(&object, &["configId", "observe"]));
        prop_assert_eq!(ours, schema, "{}", String::from_utf8_lossy(&payload));
    }

    #[test]
    fn config_response_decoding_agrees_with_the_schema(object in object_of(vec![("configId", string()), ("config", any_json().boxed())])) {
        let payload = serde_json::to_vec(&object).unwrap();
        let ours = ConfigResponse::from_json(&payload).is_ok();
        let schema = config_response_schema().is_valid(&Value::Object(object.clone()));
        // Strict: `configId` and `config` both or neither.
        let paired = object.contains_key("configId") == object.contains_key("config");
        prop_assert_eq!(ours, schema && paired, "{}", String::from_utf8_lossy(&payload));
    }

    #[test]
    fn applied_request_decoding_agrees_with_the_schema(object in object_of(vec![
        ("configId", string()),
        ("statusCode", status_code()),
        ("reasonPhrase", string()),
    ])) {
        let payload = serde_json::to_vec(&object).unwrap();
        let ours = AppliedRequest::from_json(&payload).is_ok();
        // Lenient: `"reasonPhrase": null` is absent, and so is `"statusCode": null`
        // (Kaa's official Python client sends it with every success).
        let schema = applied_request_schema().is_valid(&without_nulls(&object, &["reasonPhrase", "statusCode"]));
        // Strict: the schema's `number` must be an integer in i32 range.
        let status_ok = object.get("statusCode").is_none_or(|v| {
            v.is_null() || v.as_f64().is_some_and(|f| f.fract() == 0.0 && f >= f64::from(i32::MIN) && f <= f64::from(i32::MAX))
        });
        prop_assert_eq!(ours, schema && status_ok, "{}", String::from_utf8_lossy(&payload));
    }
}

/// The schemas are the RFC's and they are strict: the checks above would pass
/// vacuously against an accept-everything schema.
#[test]
fn the_rfc_schemas_reject_what_7_cmp_forbids() {
    assert!(!config_request_schema().is_valid(&json!({"obsrve": true})));
    assert!(!config_request_schema().is_valid(&json!({"observe": "yes"})));
    assert!(!config_response_schema().is_valid(&json!({"configId": 1, "config": {}})));
    assert!(!applied_request_schema().is_valid(&json!({"statusCode": 200})));
    assert!(applied_request_schema().is_valid(&json!({"configId": "v1"})));
}

// ---------------------------------------------------------------------------
// The configuration delta extension (kaa-rs, `kaa_cmp::delta`): its own
// schemas, and 7/CMP's for the whole-configuration answer.
// ---------------------------------------------------------------------------

fn extension_schema(file: &str) -> Validator {
    let path = format!("{}/schemas/{file}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let mut schema: Value = serde_json::from_str(&text).expect("schema is JSON");
    let meta = schema.as_object_mut().and_then(|o| o.remove("$schema"));
    assert_eq!(meta, Some(json!("http://json-schema.org/draft-04/schema#")));
    jsonschema::options()
        .with_draft(jsonschema::Draft::Draft4)
        .build(&schema)
        .unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[test]
fn delta_payloads_follow_the_extension_schemas() {
    use kaa_cmp::delta::{self, DeltaRequest, DeltaResponse, parse_pointer};
    let request = extension_schema("kaa-rs-config-patch-request.schema.json");
    let response = extension_schema("kaa-rs-config-patch-response.schema.json");
    let plain_response = config_response_schema();

    for payload in [
        &br#"{}"#[..],
        br#"{"configId":"c1","observe":true}"#,
        br#"{"pointers":["","/a~1b/0"],"observe":null,"configId":null}"#,
    ] {
        assert!(DeltaRequest::from_json(payload).is_ok());
        assert!(valid(&request, payload), "{payload:?}");
        let r = DeltaRequest::from_json(payload).unwrap();
        assert!(valid(&request, &r.to_json()));
    }
    for payload in [
        &br#"{"pointers":[]}"#[..],
        br#"{"pointers":["/a","/a"]}"#,
        br#"{"delta":true}"#,
        br#"{"pointers":"/a"}"#,
    ] {
        assert!(DeltaRequest::from_json(payload).is_err(), "{payload:?}");
        assert!(!valid(&request, payload), "{payload:?}");
    }

    let base = json!({"a": 1, "b": [1, 2, 3], "c": {"d": "e"}});
    let new = json!({"a": 2, "b": [1, 3], "c": {"d": "e", "f": null}});
    let (base_id, new_id) = (
        kaa_cmp::canonical::config_id_of(&base),
        kaa_cmp::canonical::config_id_of(&new),
    );
    let pointers = [parse_pointer("/c").unwrap()];
    let answers = [
        DeltaResponse::Unchanged,
        DeltaResponse::Config {
            config_id: new_id.clone(),
            view_id: None,
            config: new.clone(),
        },
        DeltaResponse::Config {
            config_id: String::new(),
            view_id: None,
            config: Value::Null,
        },
        DeltaResponse::Patch {
            config_id: new_id.clone(),
            base_config_id: base_id.clone(),
            view_id: None,
            patch: delta::diff(&base, &new),
        },
        delta::answer(Some(&base_id), Some(&pointers), &new_id, &new, Some(&base)),
        delta::answer(None, Some(&pointers), &new_id, &new, None),
    ];
    for a in &answers {
        let payload = a.to_json();
        assert!(valid(&response, &payload), "{a:?}");
        // A whole configuration without a view is 7/CMP's answer.
        if matches!(
            a,
            DeltaResponse::Config { view_id: None, .. } | DeltaResponse::Unchanged
        ) {
            assert!(valid(&plain_response, &payload), "{a:?}");
        }
    }
    for payload in [
        &br#"{"configId":"c"}"#[..],
        br#"{"configId":"c","config":1,"patch":[]}"#,
        br#"{"configId":"c","patch":[]}"#,
        br#"{"configId":"c","baseConfigId":"b","patch":[{"op":"copy","from":"","path":"/a"}]}"#,
    ] {
        assert!(DeltaResponse::from_json(payload).is_err(), "{payload:?}");
        assert!(!valid(&response, payload), "{payload:?}");
    }
}
