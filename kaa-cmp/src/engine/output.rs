//! What the engine asks its driver to publish.

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
    /// A device's `ClientData` about an endpoint another replica of this CMX
    /// instance owns, handed over to that replica's subject with the same
    /// datum and the communication service's `replyTo` (kaa-rs extension, see
    /// "Replicas" in the [engine docs](super)).
    HandOver(OutgoingHandOver),
}

impl Output {
    /// The subject to publish on.
    pub fn subject(&self) -> &str {
        match self {
            Output::ExtensionData(m) => &m.subject,
            Output::ConfigRequest(m) => &m.subject,
            Output::ConfigApplied(m) => &m.subject,
            Output::SessionsRequest(m) => &m.subject,
            Output::HandOver(m) => &m.subject,
        }
    }

    /// The NATS `replyTo` to publish with (CDTP and sessions requests have
    /// one; a hand-over carries the device request's).
    pub fn reply_to(&self) -> Option<&str> {
        match self {
            Output::ConfigRequest(m) => Some(&m.reply_to),
            Output::SessionsRequest(m) => Some(&m.reply_to),
            Output::HandOver(m) => m.reply_to.as_deref(),
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
            Output::HandOver(m) => m.datum.len(),
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
            Output::HandOver(m) => buf.put_slice(&m.datum),
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

/// A device's `ClientData` handed over to the replica that owns its endpoint
/// (see [`Output::HandOver`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct OutgoingHandOver {
    /// `kaa.v1.replica.<owner>.esp.ClientData`.
    pub subject: Arc<str>,
    /// The `replyTo` the `ClientData` came with: the owner answers the
    /// communication service replica directly.
    pub reply_to: Option<Arc<str>>,
    /// The owner's replica ID.
    pub owner: Arc<str>,
    /// The endpoint.
    pub endpoint_id: Arc<str>,
    /// The `ClientData`'s correlation ID (for logs).
    pub correlation_id: String,
    /// When the engine handed it over.
    pub timestamp: UnixMillis,
    /// The `ClientData` Avro datum, to publish as is.
    pub datum: Bytes,
}
