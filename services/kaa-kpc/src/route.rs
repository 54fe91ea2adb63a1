//! The pure part of routing a device's PUBLISH: topic and payload in, a 4/ESP
//! `ClientData` (and the subject to publish it on) or a [`Rejection`] out.
//!
//! A session runs [`check_request`] on the PUBLISH, resolves the endpoint token
//! (asynchronously, through its [`EndpointTokenResolver`](super::resolver::EndpointTokenResolver)),
//! which connects the endpoint, runs [`check_extension`], then builds the message
//! with [`client_data`]. The extension is checked after the token on purpose: a
//! token a session has used is connected whatever extension the request named
//! (Kaa's official Python client's first PUBLISH goes to the `bcx` extension; a
//! KPC serving only `cmx` must still tell CMX the endpoint is there). Nothing here does I/O, reads a
//! clock or keeps state, so the fuzz target `kpc_route` drives exactly the code a
//! session runs; the session around it is [`SessionCore`](crate::session::SessionCore)
//! (fuzz target `kpc_session`).

use kaa_esp::ClientData;
use kaa_kp::{ErrorResponse, RequestId, ResponseKind, Topic};

/// The limits that apply to one PUBLISH, from the KPC configuration.
#[derive(Debug, Clone, Copy)]
pub struct RouteLimits<'a> {
    /// The extension instances requests may name; empty: any.
    pub extension_instances: &'a [String],
    /// The largest payload forwarded, in bytes.
    pub max_payload: usize,
    /// The most endpoints (tokens) one session may use.
    pub max_endpoints: usize,
}

/// A request KPC does not forward: answered on the request's `/error` topic
/// when the topic carries a request ID, otherwise counted and logged but not
/// answered (1/KP: no request ID, no response).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// The 1/KP error status code.
    pub status_code: i32,
    /// The reason phrase sent to the device.
    pub reason: String,
    /// The metrics label (`bad_topic`, `unknown_extension`, `too_large`,
    /// `too_many_requests`, …).
    pub kind: &'static str,
}

impl Rejection {
    /// A rejection with its status, reason and metrics label.
    pub fn new(status_code: i32, reason: impl Into<String>, kind: &'static str) -> Self {
        Rejection {
            status_code,
            reason: reason.into(),
            kind,
        }
    }

    /// The 1/KP error response for a request published on `raw_topic`: the
    /// `…/error` topic and the `{"statusCode", "reasonPhrase"}` payload; `None`
    /// when the topic carries no request ID (the request is dropped).
    pub fn response(&self, raw_topic: &str) -> Option<(String, Vec<u8>)> {
        trailing_request_id(raw_topic)?;
        Some((
            kaa_kp::response_topic(raw_topic, ResponseKind::Error),
            ErrorResponse::new(self.status_code, self.reason.as_str()).to_json(),
        ))
    }
}

/// The request ID a topic ends with, read the 1/KP way, even when the rest of
/// the topic is not a valid 1/KP topic.
pub fn trailing_request_id(topic: &str) -> Option<RequestId> {
    let last = topic.rsplit('/').next()?;
    RequestId::parse_canonical(last).ok()
}

/// Checks a PUBLISH before its endpoint token is resolved: a valid 1/KP request
/// topic whose names can be NATS subject tokens, a payload within `max_payload`,
/// and room for the token in the session (`known_token`: the session already
/// uses it; `session_endpoints`: how many tokens it uses). The extension instance
/// is checked after the token resolved, by [`check_extension`].
pub fn check_request<'t>(
    raw_topic: &'t str,
    payload_len: usize,
    limits: &RouteLimits<'_>,
    known_token: impl FnOnce(&str) -> bool,
    session_endpoints: usize,
) -> Result<Topic<'t>, Rejection> {
    let bad_topic = |e: &dyn std::fmt::Display| {
        Rejection::new(400, format!("invalid 1/KP topic: {e}"), "bad_topic")
    };
    let topic = Topic::parse_request(raw_topic).map_err(|e| bad_topic(&e))?;
    topic.validate_subject_tokens().map_err(|e| bad_topic(&e))?;
    if payload_len > limits.max_payload {
        let reason = format!(
            "payload of {payload_len} bytes exceeds the limit of {} bytes",
            limits.max_payload
        );
        return Err(Rejection::new(413, reason, "too_large"));
    }
    if session_endpoints >= limits.max_endpoints && !known_token(topic.endpoint_token()) {
        let reason = format!(
            "too many endpoints in one session (limit {})",
            limits.max_endpoints
        );
        return Err(Rejection::new(429, reason, "too_many_requests"));
    }
    Ok(topic)
}

/// Checks that a request's extension instance is one KPC serves
/// (`kpc.extension-instances`; empty: any). Runs after the token resolved and the
/// endpoint is connected.
pub fn check_extension(topic: &Topic<'_>, limits: &RouteLimits<'_>) -> Result<(), Rejection> {
    let ext = topic.extension_instance_name();
    let allowed = limits.extension_instances;
    if !allowed.is_empty() && !allowed.iter().any(|a| a == ext) {
        let reason = format!("unknown extension instance {ext:?}");
        return Err(Rejection::new(404, reason, "unknown_extension"));
    }
    Ok(())
}

/// The `ClientData` for a checked request from endpoint `endpoint_id` (what the
/// resolver gave for the topic's token), and the subject to publish it on:
/// `appVersionName`, `resourcePath` and `requestId` from the topic, the payload
/// as received, `configName` null (KPC does not read extension payloads).
pub fn client_data<'a>(
    topic: &Topic<'a>,
    endpoint_id: &'a str,
    payload: &'a [u8],
    correlation_id: String,
    timestamp: i64,
    timeout_ms: i64,
) -> Result<(String, ClientData<'a>), Rejection> {
    let subject = kaa_esp::subject::client_data_subject(topic.extension_instance_name())
        .map_err(|e| Rejection::new(400, format!("invalid 1/KP topic: {e}"), "bad_topic"))?
        .to_string();
    let data = ClientData {
        correlation_id: correlation_id.into(),
        timestamp,
        timeout: timeout_ms,
        app_version_name: topic.app_version_name().into(),
        endpoint_id: Some(endpoint_id.into()),
        resource_path: topic.resource_path().into(),
        request_id: topic.request_id().map(RequestId::get),
        payload: payload.into(),
        config_name: None,
    };
    Ok((subject, data))
}
