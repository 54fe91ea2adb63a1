//! The 1/KP error response payload, published to `…/error` topics.

use serde::{Deserialize, Serialize};

/// The 1/KP error response: a UTF-8 JSON object with exactly the fields
/// `statusCode` (an integer, HTTP-style) and `reasonPhrase` (a string), both
/// required, nothing else (the RFC's `schemas/0001-error-response.schema.json`).
///
/// ```
/// use kaa_kp::ErrorResponse;
///
/// let e = ErrorResponse::from_json(br#"{"statusCode":404,"reasonPhrase":"No such configuration"}"#)?;
/// assert_eq!(e, ErrorResponse::new(404, "No such configuration"));
/// assert_eq!(ErrorResponse::from_json(&e.to_json())?, e);
/// assert!(ErrorResponse::from_json(br#"{"statusCode":404}"#).is_err());
/// # Ok::<(), kaa_kp::PayloadError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ErrorResponse {
    /// `statusCode`: the HTTP status code of the request processing.
    pub status_code: i32,
    /// `reasonPhrase`: a human-readable reason.
    pub reason_phrase: String,
}

/// Why a payload is not a valid 1/KP error response.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PayloadError {
    /// Not JSON, not UTF-8, a missing or unknown field, a duplicated field, a
    /// `statusCode` that is not an integer in `i32` range, or trailing data.
    #[error("invalid 1/KP error response: {0}")]
    Json(#[from] serde_json::Error),
}

impl ErrorResponse {
    /// An error response with this status code and reason phrase.
    pub fn new(status_code: i32, reason_phrase: impl Into<String>) -> Self {
        ErrorResponse {
            status_code,
            reason_phrase: reason_phrase.into(),
        }
    }

    /// The JSON payload, `{"statusCode":…,"reasonPhrase":"…"}`, UTF-8.
    pub fn to_json(&self) -> Vec<u8> {
        // `Value::String`'s Display writes a correctly escaped JSON string; done by
        // hand so that encoding is infallible (`serde_json::to_vec` returns a Result).
        format!(
            "{{\"statusCode\":{},\"reasonPhrase\":{}}}",
            self.status_code,
            serde_json::Value::String(self.reason_phrase.clone())
        )
        .into_bytes()
    }

    /// Parses a JSON payload strictly against the 1/KP error response schema.
    pub fn from_json(payload: &[u8]) -> Result<Self, PayloadError> {
        Ok(serde_json::from_slice(payload)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn accepts_the_schema() {
        let e = ErrorResponse::from_json(
            br#" { "reasonPhrase" : "WPA2 is not supported", "statusCode" : 400 } "#,
        )
        .unwrap();
        assert_eq!(e.status_code, 400);
        assert_eq!(e.reason_phrase, "WPA2 is not supported");
        let e = ErrorResponse::from_json(br#"{"statusCode":-1,"reasonPhrase":""}"#).unwrap();
        assert_eq!(e, ErrorResponse::new(-1, ""));
    }

    #[test]
    fn exact_encoding() {
        let e = ErrorResponse::new(500, "quote \" backslash \\ newline \n é");
        assert_eq!(
            String::from_utf8(e.to_json()).unwrap(),
            r#"{"statusCode":500,"reasonPhrase":"quote \" backslash \\ newline \n é"}"#
        );
        // The derived Serialize agrees with the hand-written encoder.
        assert_eq!(serde_json::to_vec(&e).unwrap(), e.to_json());
    }

    #[test]
    fn rejects_what_the_schema_rejects() {
        let bad: &[&[u8]] = &[
            b"",
            b"null",
            b"[]",
            b"{}",
            br#"{"statusCode":400}"#,
            br#"{"reasonPhrase":"x"}"#,
            br#"{"statusCode":400,"reasonPhrase":"x","extra":1}"#,
            br#"{"statusCode":400,"reasonPhrase":"x","statusCode":401}"#,
            br#"{"statusCode":400.0,"reasonPhrase":"x"}"#,
            br#"{"statusCode":4e2,"reasonPhrase":"x"}"#,
            br#"{"statusCode":"400","reasonPhrase":"x"}"#,
            br#"{"statusCode":null,"reasonPhrase":"x"}"#,
            br#"{"statusCode":400,"reasonPhrase":null}"#,
            br#"{"statusCode":400,"reasonPhrase":7}"#,
            br#"{"statusCode":2147483648,"reasonPhrase":"x"}"#,
            br#"{"statusCode":400,"reasonPhrase":"x"} trailing"#,
            b"{\"statusCode\":400,\"reasonPhrase\":\"\xff\"}",
            br#"{"status_code":400,"reason_phrase":"x"}"#,
        ];
        for payload in bad {
            let r = ErrorResponse::from_json(payload);
            assert!(
                matches!(r, Err(PayloadError::Json(_))),
                "{:?} gave {r:?}",
                String::from_utf8_lossy(payload)
            );
        }
    }

    proptest! {
        #[test]
        fn json_round_trip(status_code in any::<i32>(), reason_phrase in any::<String>()) {
            let e = ErrorResponse::new(status_code, reason_phrase);
            let json = e.to_json();
            prop_assert_eq!(ErrorResponse::from_json(&json).unwrap(), e);
        }
    }
}
