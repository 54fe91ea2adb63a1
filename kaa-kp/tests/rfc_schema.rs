//! Cross-check of the 1/KP error response codec against the RFC JSON schema in
//! this crate's `schemas/` (a copy of kaa-rfcs `0001/0001-error-response.schema.json`),
//! validated with the `jsonschema` crate: everything we encode is valid, and for
//! arbitrary JSON objects over the RFC's property names (plus an unknown one) our
//! decoder accepts exactly what the schema accepts, except that a `statusCode`
//! must also fit an `i32` (documented on [`kaa_kp::ErrorResponse`]).

use jsonschema::Validator;
use kaa_kp::ErrorResponse;
use proptest::prelude::*;
use serde_json::{Map, Value, json};

fn rfc_schema() -> Validator {
    let path = format!(
        "{}/schemas/0001-error-response.schema.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let schema: Value = serde_json::from_str(&text).expect("RFC schema is JSON");
    jsonschema::validator_for(&schema).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn any_json() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<i32>().prop_map(Value::from),
        (100i32..600).prop_map(|n| json!(f64::from(n))),
        (-1.0e12f64..1.0e12).prop_map(Value::from),
        ".{0,12}".prop_map(Value::from),
        Just(json!([])),
        Just(json!({})),
    ]
}

/// An object where each property is present or not, its value mostly of the
/// type the RFC asks for and otherwise any JSON value.
fn object() -> impl Strategy<Value = Map<String, Value>> {
    let status = prop_oneof![3 => any::<i32>().prop_map(Value::from), 1 => any_json()];
    let reason = prop_oneof![3 => ".{0,12}".prop_map(Value::from), 1 => any_json()];
    (
        proptest::option::of(status),
        proptest::option::of(reason),
        proptest::option::weighted(0.2, any_json()),
    )
        .prop_map(|(status, reason, other)| {
            [
                ("statusCode", status),
                ("reasonPhrase", reason),
                ("other", other),
            ]
            .into_iter()
            .filter_map(|(k, v)| Some((k.to_owned(), v?)))
            .collect()
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    #[test]
    fn encoded_error_responses_are_valid(status_code in any::<i32>(), reason in ".{0,32}") {
        let payload = ErrorResponse::new(status_code, reason).to_json();
        let value: Value = serde_json::from_slice(&payload).unwrap();
        prop_assert!(rfc_schema().is_valid(&value));
    }

    #[test]
    fn decoding_agrees_with_the_schema(object in object()) {
        let payload = serde_json::to_vec(&object).unwrap();
        let ours = ErrorResponse::from_json(&payload).is_ok();
        let schema = rfc_schema().is_valid(&Value::Object(object.clone()));
        let fits_i32 = object
            .get("statusCode")
            .and_then(Value::as_i64)
            .is_some_and(|n| i32::try_from(n).is_ok());
        prop_assert_eq!(ours, schema && fits_i32, "{}", String::from_utf8_lossy(&payload));
    }
}

/// The schema is the RFC's and it is strict, so the checks above cannot pass
/// against an accept-everything schema.
#[test]
fn the_rfc_schema_rejects_what_1_kp_forbids() {
    let schema = rfc_schema();
    assert!(schema.is_valid(&json!({"statusCode": 404, "reasonPhrase": "x"})));
    assert!(!schema.is_valid(&json!({"statusCode": 404})));
    assert!(!schema.is_valid(&json!({"statusCode": "404", "reasonPhrase": "x"})));
    assert!(!schema.is_valid(&json!({"statusCode": 404, "reasonPhrase": "x", "extra": 1})));
}
