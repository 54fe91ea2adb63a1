//! What the engine asks its driver to publish, and its counters.

use std::borrow::Cow;
use std::sync::Arc;

use bytes::{BufMut, Bytes};
use kaa_ism::UnixMillis;
use kaa_ism::avro::Encode;

/// One message for the driver to encode and publish, from
/// [`Cmx::poll_output`](super::Cmx::poll_output).
///
/// Each variant carries its subject and can lend itself as the wire struct of its
/// protocol crate (`message()`), ready for [`kaa_ism::avro::Encode`]; strings and
/// payloads shared between many outputs (app version names, a pushed
/// configuration) are reference-counted, not copied.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Output {
    /// 4/ESP `ExtensionData` to a communication service: a response to a device
    /// request, or a push.
    ExtensionData(OutgoingExtensionData),
    /// 6/CDTP `ConfigRequest` to the provider, to publish with its `reply_to`.
    ConfigRequest(OutgoingConfigRequest),
    /// 6/CDTP `ConfigApplied` broadcast.
    ConfigApplied(OutgoingConfigApplied),
    /// A request to every replica of the communication service for the sessions
    /// it holds (kaa-rs extension, [`kaa_elce::SessionsRequest`]), sent on
    /// [`Input::BusConnected`](super::Input::BusConnected); to publish with its
    /// `reply_to`. The answers come back as
    /// [`Input::Sessions`](super::Input::Sessions).
    SessionsRequest(OutgoingSessionsRequest),
}

impl Output {
    /// The subject to publish on.
    pub fn subject(&self) -> &str {
        match self {
            Output::ExtensionData(m) => &m.subject,
            Output::ConfigRequest(m) => &m.subject,
            Output::ConfigApplied(m) => &m.subject,
            Output::SessionsRequest(m) => &m.subject,
        }
    }

    /// The NATS `replyTo` to publish with (CDTP and sessions requests have one).
    pub fn reply_to(&self) -> Option<&str> {
        match self {
            Output::ConfigRequest(m) => Some(&m.reply_to),
            Output::SessionsRequest(m) => Some(&m.reply_to),
            _ => None,
        }
    }

    /// The exact length of the Avro binary datum [`Output::encode`] writes.
    pub fn encoded_len(&self) -> usize {
        match self {
            Output::ExtensionData(m) => m.message().encoded_len(),
            Output::ConfigRequest(m) => m.message().encoded_len(),
            Output::ConfigApplied(m) => m.message().encoded_len(),
            Output::SessionsRequest(m) => m.message().encoded_len(),
        }
    }

    /// Appends the Avro binary datum to publish to the caller's buffer (e.g. a
    /// reused `BytesMut`), with no allocation of its own. A fixed-size buffer
    /// needs [`Output::encoded_len`] bytes of room.
    pub fn encode<B: BufMut + ?Sized>(&self, buf: &mut B) {
        match self {
            Output::ExtensionData(m) => m.message().encode(buf),
            Output::ConfigRequest(m) => m.message().encode(buf),
            Output::ConfigApplied(m) => m.message().encode(buf),
            Output::SessionsRequest(m) => m.message().encode(buf),
        }
    }

    /// The Avro binary datum to publish, in a new vector of exactly its size.
    pub fn to_datum(&self) -> Vec<u8> {
        let mut buf = Vec::with_capacity(self.encoded_len());
        self.encode(&mut buf);
        buf
    }
}

/// A 4/ESP `ExtensionData` the engine wants published.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct OutgoingExtensionData {
    /// The communication service replica from the device request's `replyTo`
    /// (message type `ExtensionData`), else `kaa.v1.service.<kpc>.esp.ExtensionData`.
    pub subject: Arc<str>,
    /// The device request's correlation ID for a response; a new one for a push.
    pub correlation_id: String,
    /// When the engine produced it.
    pub timestamp: UnixMillis,
    /// `timeout`, milliseconds (0: none).
    pub timeout: i64,
    /// `appVersionName`.
    pub app_version_name: Arc<str>,
    /// `extensionInstanceName`: this CMX's instance name.
    pub extension_instance_name: Arc<str>,
    /// `endpointId` (`None` only when answering a request that had none).
    pub endpoint_id: Option<Arc<str>>,
    /// `resourcePath`: the request's for a response, `/config/json[/<name>]` for a push.
    pub resource_path: Arc<str>,
    /// `requestId`: the request's, `None` for a push.
    pub request_id: Option<i32>,
    /// `payload`: a 7/CMP configuration response, or `None` (applied response, errors).
    pub payload: Option<Bytes>,
    /// `statusCode`.
    pub status_code: i32,
    /// `reasonPhrase`: set for errors.
    pub reason_phrase: Option<Cow<'static, str>>,
}

impl OutgoingExtensionData {
    /// True for a push (no request ID).
    pub fn is_push(&self) -> bool {
        self.request_id.is_none()
    }

    /// The message as the 4/ESP wire struct, borrowing from `self`.
    pub fn message(&self) -> kaa_esp::ExtensionData<'_> {
        kaa_esp::ExtensionData {
            correlation_id: Cow::Borrowed(&self.correlation_id),
            timestamp: self.timestamp.0,
            timeout: self.timeout,
            app_version_name: Some(Cow::Borrowed(&self.app_version_name)),
            extension_instance_name: Some(Cow::Borrowed(&self.extension_instance_name)),
            endpoint_id: self.endpoint_id.as_deref().map(Cow::Borrowed),
            resource_path: Cow::Borrowed(&self.resource_path),
            request_id: self.request_id,
            payload: self.payload.as_deref().map(Cow::Borrowed),
            status_code: self.status_code,
            reason_phrase: self.reason_phrase.as_deref().map(Cow::Borrowed),
        }
    }
}

/// A 6/CDTP `ConfigRequest` the engine wants published.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct OutgoingConfigRequest {
    /// `kaa.v1.service.<provider>.cdtp.request`.
    pub subject: Arc<str>,
    /// `kaa.v1.replica.<cmx replica>.cdtp.response`: publish with this `replyTo`.
    pub reply_to: Arc<str>,
    /// `correlationId`, `<prefix>-<n>`: the response must carry it back.
    pub correlation_id: String,
    /// When the engine produced it.
    pub timestamp: UnixMillis,
    /// `timeout`: the engine's CDTP timeout, milliseconds.
    pub timeout: i64,
    /// `appVersionName`.
    pub app_version_name: Arc<str>,
    /// `endpointId`.
    pub endpoint_id: Arc<str>,
    /// `configId`: the configuration the device reported, if any.
    pub config_id: Option<Arc<str>>,
    /// `configName`: `None` for the default configuration.
    pub config_name: Option<Arc<str>>,
    /// When the engine gives up waiting (`timestamp + timeout`).
    pub deadline: UnixMillis,
}

impl OutgoingConfigRequest {
    /// The message as the 6/CDTP wire struct, borrowing from `self`.
    pub fn message(&self) -> kaa_cdtp::ConfigRequest<'_> {
        kaa_cdtp::ConfigRequest {
            correlation_id: Cow::Borrowed(&self.correlation_id),
            timestamp: self.timestamp.0,
            timeout: self.timeout,
            app_version_name: Cow::Borrowed(&self.app_version_name),
            endpoint_id: Cow::Borrowed(&self.endpoint_id),
            config_id: self.config_id.as_deref().map(Cow::Borrowed),
            config_name: self.config_name.as_deref().map(Cow::Borrowed),
        }
    }
}

/// A 6/CDTP `ConfigApplied` broadcast the engine wants published.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct OutgoingConfigApplied {
    /// `kaa.v1.events.<cmx instance>.endpoint.config.applied`.
    pub subject: Arc<str>,
    /// `correlationId`: the device request's.
    pub correlation_id: String,
    /// When the engine produced it.
    pub timestamp: UnixMillis,
    /// `timeout`, milliseconds (0: none).
    pub timeout: i64,
    /// `appVersionName`.
    pub app_version_name: Arc<str>,
    /// `endpointId`.
    pub endpoint_id: Arc<str>,
    /// `configId`.
    pub config_id: Arc<str>,
    /// `originatorReplicaId`: this replica.
    pub originator_replica_id: Arc<str>,
    /// `statusCode`: 2xx applied, anything else rejected.
    pub status_code: i32,
    /// `reasonPhrase`, as the device sent it.
    pub reason_phrase: Option<Arc<str>>,
    /// `configName`: `None` for the default configuration.
    pub config_name: Option<Arc<str>>,
}

impl OutgoingConfigApplied {
    /// True when the device applied the configuration (2xx).
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status_code)
    }

    /// The message as the 6/CDTP wire struct, borrowing from `self`.
    pub fn message(&self) -> kaa_cdtp::ConfigApplied<'_> {
        kaa_cdtp::ConfigApplied {
            correlation_id: Cow::Borrowed(&self.correlation_id),
            timestamp: self.timestamp.0,
            timeout: self.timeout,
            app_version_name: Cow::Borrowed(&self.app_version_name),
            endpoint_id: Cow::Borrowed(&self.endpoint_id),
            config_id: Cow::Borrowed(&self.config_id),
            originator_replica_id: Some(Cow::Borrowed(&self.originator_replica_id)),
            status_code: self.status_code,
            reason_phrase: self.reason_phrase.as_deref().map(Cow::Borrowed),
            config_name: self.config_name.as_deref().map(Cow::Borrowed),
        }
    }
}

/// A kaa-rs sessions request the engine wants published (see
/// [`Output::SessionsRequest`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct OutgoingSessionsRequest {
    /// `kaa.v1.service.<communication service>.elce.SessionsRequest`.
    pub subject: Arc<str>,
    /// `kaa.v1.replica.<cmx replica>.elce.SessionsResponse`: publish with this
    /// `replyTo`.
    pub reply_to: Arc<str>,
    /// `correlationId`, `<prefix>-sessions-<n>`.
    pub correlation_id: String,
    /// When the engine produced it.
    pub timestamp: UnixMillis,
    /// `extensionInstanceName`: this CMX's instance name (the answers list the
    /// resource paths each session used with it).
    pub extension_instance_name: Arc<str>,
}

impl OutgoingSessionsRequest {
    /// The message as the kaa-rs wire struct, borrowing from `self`. Its
    /// `timeout` is 0: an answer is useful however late it comes.
    pub fn message(&self) -> kaa_elce::SessionsRequest<'_> {
        kaa_elce::SessionsRequest {
            correlation_id: Cow::Borrowed(&self.correlation_id),
            timestamp: self.timestamp.0,
            timeout: 0,
            extension_instance_name: Cow::Borrowed(&self.extension_instance_name),
        }
    }
}

/// Why the engine refused a device request. [`RefusalReason::as_str`] is the
/// label a driver's metrics use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RefusalReason {
    /// `no_endpoint`: the `ClientData` names no endpoint (400).
    NoEndpoint,
    /// `unknown_app_version`: not one of the configured app versions (404).
    UnknownAppVersion,
    /// `unknown_resource`: not a 7/CMP resource path (404).
    UnknownResource,
    /// `config_name_mismatch`: the 4/ESP `configName` names another
    /// configuration than the resource path (400).
    ConfigNameMismatch,
    /// `malformed_payload`: not a valid 7/CMP message (400).
    MalformedPayload,
    /// `config_id_too_long`: a `configId` over `max_config_id_len` (400).
    ConfigIdTooLong,
    /// `limit`: an engine limit was reached (503).
    Limit,
    /// `provider_timeout`: the provider did not answer in time (504).
    ProviderTimeout,
    /// `provider_error`: the provider answered with an error or something
    /// unusable (its 4xx/5xx, or 502).
    ProviderError,
    /// `endpoint_removed`: the endpoint was evicted, expired or unregistered
    /// while the request waited (503 or 404).
    EndpointRemoved,
}

impl RefusalReason {
    /// Every reason.
    pub const ALL: [RefusalReason; 10] = [
        RefusalReason::NoEndpoint,
        RefusalReason::UnknownAppVersion,
        RefusalReason::UnknownResource,
        RefusalReason::ConfigNameMismatch,
        RefusalReason::MalformedPayload,
        RefusalReason::ConfigIdTooLong,
        RefusalReason::Limit,
        RefusalReason::ProviderTimeout,
        RefusalReason::ProviderError,
        RefusalReason::EndpointRemoved,
    ];

    /// The snake_case label, e.g. `malformed_payload`.
    pub fn as_str(self) -> &'static str {
        match self {
            RefusalReason::NoEndpoint => "no_endpoint",
            RefusalReason::UnknownAppVersion => "unknown_app_version",
            RefusalReason::UnknownResource => "unknown_resource",
            RefusalReason::ConfigNameMismatch => "config_name_mismatch",
            RefusalReason::MalformedPayload => "malformed_payload",
            RefusalReason::ConfigIdTooLong => "config_id_too_long",
            RefusalReason::Limit => "limit",
            RefusalReason::ProviderTimeout => "provider_timeout",
            RefusalReason::ProviderError => "provider_error",
            RefusalReason::EndpointRemoved => "endpoint_removed",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

impl std::fmt::Display for RefusalReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A device request the engine refused without telling the device: it had no
/// request ID, and 1/KP sends no response to such a request (not even on
/// `…/error`). From [`Cmx::poll_refusal`](super::Cmx::poll_refusal), for the
/// driver to log; it holds nothing of the request's payload.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Refusal {
    /// The request's `ClientData` correlation ID.
    pub correlation_id: String,
    /// The endpoint, when the request named one.
    pub endpoint_id: Option<Arc<str>>,
    /// The request's `appVersionName`.
    pub app_version_name: Arc<str>,
    /// The request's `resourcePath`.
    pub resource_path: Arc<str>,
    /// The status an answer would have had.
    pub status_code: i32,
    /// Why, as a metrics label.
    pub reason: RefusalReason,
    /// What went wrong, in words, without any text from the payload.
    pub detail: Cow<'static, str>,
}

/// Refusals of requests without a request ID, counted by [`RefusalReason`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RefusalCounts([u64; RefusalReason::ALL.len()]);

impl RefusalCounts {
    /// The count for `reason`.
    pub fn get(&self, reason: RefusalReason) -> u64 {
        self.0.get(reason.index()).copied().unwrap_or(0)
    }

    /// Every reason with its count.
    pub fn iter(&self) -> impl Iterator<Item = (RefusalReason, u64)> + '_ {
        RefusalReason::ALL.iter().map(|&r| (r, self.get(r)))
    }

    /// All reasons together.
    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }

    pub(super) fn add(&mut self, reason: RefusalReason) {
        if let Some(n) = self.0.get_mut(reason.index()) {
            *n = n.saturating_add(1);
        }
    }
}

/// Counters of what the engine did, for metrics and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// `ClientData` messages handled.
    pub client_data: u64,
    /// `ClientData` dropped because it had expired on arrival.
    pub client_data_expired: u64,
    /// Error responses not sent because the request had no request ID (1/KP:
    /// no request ID, no response); by reason in `refused_without_request_id`.
    pub errors_without_request_id: u64,
    /// The same refusals, by reason.
    pub refused_without_request_id: RefusalCounts,
    /// Refusals counted but not kept for [`Cmx::poll_refusal`](crate::Cmx::poll_refusal)
    /// because too many were waiting to be taken.
    pub refusals_not_kept: u64,
    /// CDTP requests sent.
    pub cdtp_requests: u64,
    /// CDTP responses matched to a request in flight.
    pub cdtp_responses: u64,
    /// CDTP responses with an unknown correlation ID (late, duplicated, foreign).
    pub cdtp_responses_unmatched: u64,
    /// CDTP responses discarded because a change arrived after the request was
    /// sent; the configuration was requested again.
    pub cdtp_responses_stale: u64,
    /// CDTP requests that got no answer in time.
    pub cdtp_timeouts: u64,
    /// CDTP responses that were errors or unusable.
    pub provider_errors: u64,
    /// Device requests refused with 503 (too many CDTP requests in flight, too
    /// many waiting on one, too many names).
    pub backpressure_rejections: u64,
    /// Configurations pushed.
    pub pushes: u64,
    /// Pushes abandoned after the configured retries.
    pub push_retries_exhausted: u64,
    /// `ConfigUpdated` broadcasts handled.
    pub config_updates: u64,
    /// `ConfigUpdated` broadcasts about endpoints, app versions or names the
    /// engine does not track.
    pub config_updates_ignored: u64,
    /// Endpoints forgotten because `max_endpoints` was reached.
    pub endpoints_evicted: u64,
    /// Endpoints forgotten after `endpoint_ttl`.
    pub endpoints_expired: u64,
    /// [`Cmx::resync`](crate::Cmx::resync) calls (bus reconnects, provider
    /// restarts).
    pub resyncs: u64,
    /// Sessions requests sent ([`Output::SessionsRequest`]).
    pub sessions_requests: u64,
    /// Sessions lists handled ([`Input::Sessions`](super::Input::Sessions)).
    pub sessions_responses: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_refusal_reason_has_its_own_count_and_label() {
        let mut counts = RefusalCounts::default();
        for (i, reason) in RefusalReason::ALL.iter().enumerate() {
            assert_eq!(reason.index(), i, "{reason}: ALL is in declaration order");
            for _ in 0..=i {
                counts.add(*reason);
            }
        }
        for (i, (reason, n)) in counts.iter().enumerate() {
            assert_eq!(n, i as u64 + 1, "{reason}");
        }
        assert_eq!(counts.total(), (1..=10).sum::<u64>());
        let labels: std::collections::HashSet<_> =
            RefusalReason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(labels.len(), RefusalReason::ALL.len());
    }
}
