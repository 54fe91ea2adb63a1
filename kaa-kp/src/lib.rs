//! # kaa-kp: the Kaa 1/KP protocol over MQTT, sans-IO
//!
//! Devices talk to a Kaa communication service (KPC) over MQTT. This crate is the
//! 1/KP part of that conversation, for both sides:
//!
//! - [`Topic`]: parses a topic `kp1/<appVersionName>/<extensionInstanceName>/…`
//!   into borrowed parts without allocating: app version name, extension instance
//!   name, endpoint token, resource path (what 4/ESP `ClientData.resourcePath`
//!   carries), request ID and response suffix.
//! - [`request_topic`], [`extension_request_topic`], [`response_topic`] and
//!   [`push_topic`]: build topics from validated names.
//! - [`RequestId`]: the request ID, a positive `i32`.
//! - [`ErrorResponse`]: the `{"statusCode", "reasonPhrase"}` payload of `…/error`.
//!
//! No I/O, no MQTT client, no clock.
//!
//! ```
//! use kaa_kp::{request_topic, ErrorResponse, RequestId, ResponseKind, Topic};
//!
//! // Device: request the named configuration "network", request ID 42.
//! let request = request_topic("smart-kettle-v3", "cmx", "JTjdbENzHh", "/config/json/network", RequestId::new(42))?;
//! assert_eq!(request, "kp1/smart-kettle-v3/cmx/JTjdbENzHh/config/json/network/42");
//!
//! // KPC: route it.
//! let t = Topic::parse_request(&request)?;
//! assert_eq!(t.extension_instance_name(), "cmx");
//! assert_eq!(t.endpoint_token(), "JTjdbENzHh");
//! assert_eq!(t.resource_path(), "/config/json/network");
//! assert_eq!(t.request_id(), RequestId::new(42));
//!
//! // KPC: the extension answered 404.
//! let kind = ResponseKind::for_status_code(404);
//! let response = t.response_topic(kind);
//! let payload = ErrorResponse::new(404, "No such configuration").to_json();
//!
//! // Device: classify what arrived.
//! let r = Topic::parse(&response)?;
//! assert_eq!(r.response(), Some(ResponseKind::Error));
//! assert_eq!(r.request_topic(), request);
//! assert_eq!(ErrorResponse::from_json(&payload)?.status_code, 404);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! ## Topic grammar
//!
//! ```text
//! kp1/<appVersionName>/<extensionInstanceName>/<endpointToken>[/<resource>…][/<requestId>][/status|/error]
//! ```
//!
//! - The first level is exactly `kp1` (`kp2/…` is [`TopicError::NotKp1`]).
//! - Every level is non-empty (so no leading, trailing or doubled `/`) and holds
//!   no MQTT wildcard (`+`, `#`) and no NUL. A topic is at most 65,535 bytes
//!   ([`MAX_TOPIC_LEN`]).
//! - At least one level follows the extension instance name: the endpoint token
//!   for endpoint-aware extensions; for endpoint-unaware extensions the first
//!   level of their path. The parser cannot know which kind an extension is, so
//!   [`Topic`] offers both views: [`Topic::endpoint_token`] +
//!   [`Topic::resource_path`] (`/config/json`), and [`Topic::extension_path`]
//!   (`/<token>/config/json`).
//! - **Response suffix.** [`Topic::parse`] reads a last level `status` or `error`
//!   as the response suffix ([`Topic::response`]); only one level is stripped.
//!   That is how a device classifies what it receives: `…/json/42/status` is the
//!   response to request 42, `…/config/json/status` is a push. A server that
//!   receives *requests* uses [`Topic::parse_request`], which strips no suffix:
//!   7/CMP allows a named configuration called `status`, and
//!   `…/config/json/status` from a device is a request for it.
//!
//! ## Request IDs
//!
//! 1/KP: "In case the last topic level in an MQTT topic is a positive integer
//! number, it MUST be interpreted as a Request ID." This crate reads that as
//! follows, on both the parse and the build side:
//!
//! - The last level (before any response suffix) is a request ID when it is a
//!   canonical positive decimal integer, `[1-9][0-9]*`, that fits 4/ESP's Avro
//!   `int`: `1..=i32::MAX`. [`RequestId`] is a validated newtype over such an
//!   `i32`.
//! - A last level made only of ASCII digits that is **not** a valid request ID
//!   (`0`, leading zeros such as `007`, values past `i32::MAX`) is an error,
//!   [`TopicError::InvalidRequestId`], never part of the resource path. This is
//!   deliberately strict: reading `config/json/0` as the named configuration `"0"`
//!   would apply a configuration the device did not ask for.
//! - Anything else is an ordinary level: `-5` (not all digits) is a resource
//!   level; `+5` holds a wildcard and is invalid. Digit-only levels elsewhere in
//!   the topic (e.g. a numeric endpoint token followed by a resource) are ordinary.
//! - Builders refuse to produce a topic without a request ID whose last level is
//!   all digits ([`TopicError::NumericLastLevel`]): it would not read back as
//!   built.
//! - A topic with a request ID is at most [`MAX_REQUEST_TOPIC_LEN`] bytes without
//!   its suffix, so that its `…/status` response still fits in MQTT's limit.
//!
//! ## Names and NATS
//!
//! MQTT allows `.`, `*`, `>` and spaces in a topic level; 3/ISM NATS subjects do
//! not. Services that put an app version name, an extension instance name or an
//! endpoint token into a subject check it with [`Topic::validate_subject_tokens`]
//! or [`validate_subject_token`]; nothing is escaped.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

mod error_response;
mod request_id;
mod topic;

pub use error_response::{ErrorResponse, PayloadError};
pub use request_id::{RequestId, RequestIdError};
pub use topic::{
    MAX_REQUEST_TOPIC_LEN, MAX_TOPIC_LEN, PREFIX, ResponseKind, Topic, TopicError,
    extension_request_topic, push_topic, request_topic, response_topic, validate_subject_token,
};
