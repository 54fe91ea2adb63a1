//! # kaa-ecap: Kaa 16/ECAP (Endpoint and Client Authentication Protocol), sans-IO
//!
//! Kaa services that face devices do not decide themselves who may connect: they ask
//! an authentication *provider* service with 16/ECAP. A communication service such as
//! KPC (the *consumer*) sends an endpoint token validation request when a device
//! presents a token, and the provider answers with the endpoint ID the token stands
//! for; MQTT clients are authenticated by username and password or by their TLS
//! certificate the same way. When a token or a client credential stops being valid,
//! the provider broadcasts a revocation event, and consumers close the sessions that
//! used it.
//!
//! This crate is the wire side of that, with no I/O:
//!
//! - the ten 16/ECAP records with an Avro binary codec byte-exact with Apache Avro for
//!   the RFC schemas (`schemas/0016-*.avsc` in this crate, copies of the kaa-rfcs
//!   files; [`Encode`](kaa_ism::avro::Encode) / [`Decode`](kaa_ism::avro::Decode) from
//!   `kaa-ism`), decoding borrowed from the datum:
//!   - endpoint token validation: [`EndpointTokenValidationRequest`],
//!     [`EndpointTokenValidationResponse`];
//!   - endpoint token status transition: [`EndpointTokenStatusTransitionRequest`],
//!     [`EndpointTokenStatusTransitionResponse`];
//!   - client authentication: [`ClientUsernamePasswordValidationRequest`],
//!     [`ClientUsernamePasswordValidationResponse`],
//!     [`ClientCertificateValidationRequest`], [`ClientCertificateValidationResponse`];
//!   - revocation broadcasts: [`EndpointTokenRevokedEvent`],
//!     [`ClientCredentialRevokedEvent`];
//! - their NATS subjects ([`subject`]): the four request/response [`Exchange`]s
//!   (`kaa.v1.service.{provider}.ecap.{request-type}`, answered on the request's
//!   `replyTo`, recommended `kaa.v1.replica.{consumer-replica}.ecap.{response-type}`)
//!   and the two revocation events (`kaa.v1.events.{provider}.endpoint.token.revoked`,
//!   `kaa.v1.events.{provider}.client.credential.revoked`);
//! - [`EcapMessage`], any of the ten records, decoded by its [`MessageKind`] or by the
//!   subject it arrived on.
//! - **kaa-rs extension, not in the 16/ECAP RFC:** the endpoint [`metadata`] lookup.
//!   [`EndpointMetadataRequest`](metadata::EndpointMetadataRequest) goes to
//!   `kaa.v1.service.{register}.ecap.ep-metadata-request` and names up to 1000
//!   endpoint IDs; the endpoint register answers on the request's `replyTo`
//!   (recommended `kaa.v1.replica.{requester-replica}.ecap.ep-metadata-response`)
//!   with an [`EndpointMetadataResponse`](metadata::EndpointMetadataResponse): each
//!   endpoint's app version and metadata (a JSON object as text), or a status and
//!   reason. Their Avro schemas are this crate's
//!   `schemas/endpoint-metadata-request.avsc` and
//!   `schemas/endpoint-metadata-response.avsc` (namespace `kaa_rs.ecap.v1`); golden
//!   vectors from Apache Avro cover them like the RFC records. They are not
//!   [`MessageKind`]s: [`MessageKind`] and [`EcapMessage`] are the RFC's records.
//!
//! ```
//! use kaa_ecap::{EndpointTokenValidationRequest, EndpointTokenValidationResponse, Exchange};
//! use kaa_ism::avro::{Decode, Encode};
//! use kaa_ism::common::CommonFields;
//! use kaa_ism::UnixMillis;
//!
//! // KPC replica kpc-1: a device presented a token; ask the provider "epts".
//! let request = EndpointTokenValidationRequest {
//!     correlation_id: "5c0ffee0-0000-4000-8000-000000000001".into(),
//!     timestamp: 1_700_000_000_000,
//!     timeout: 5_000,
//!     app_name: "smart-kettle".into(),
//!     token: "kettle-token-42".into(),
//! };
//! let subject = Exchange::EndpointToken.request_subject("epts")?.to_string();
//! assert_eq!(subject, "kaa.v1.service.epts.ecap.ep-token-request");
//! let reply_to = Exchange::EndpointToken.response_subject("kpc-1")?.to_string();
//! assert_eq!(reply_to, "kaa.v1.replica.kpc-1.ecap.ep-token-response");
//! let datum = request.to_vec();
//! assert_eq!(datum.len(), request.encoded_len());
//!
//! // The provider decodes the request, borrowing from the datum, and answers.
//! let received = EndpointTokenValidationRequest::decode(&datum)?;
//! assert_eq!(received, request);
//! assert!(!received.is_expired(UnixMillis(1_700_000_004_000)));
//! let response = EndpointTokenValidationResponse {
//!     correlation_id: received.correlation_id.clone(),
//!     timestamp: 1_700_000_000_012,
//!     timeout: 5_000,
//!     token_id: Some("token-7".into()),
//!     endpoint_id: Some("ep-0001".into()),
//!     status_code: 200,
//!     reason_phrase: None,
//! };
//! let answer = response.to_vec();
//!
//! // KPC reads the answer on its replyTo subject.
//! let decoded = EndpointTokenValidationResponse::decode(&answer)?;
//! assert_eq!(decoded, response);
//! assert!(decoded.is_success());
//! assert_eq!(decoded.endpoint_id.as_deref(), Some("ep-0001"));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Wire policy
//!
//! - **Byte-exact with Apache Avro.** Records are their fields in schema order. The
//!   optional IDs (`tokenId`, `endpointId`, `credentialId`, `clientId`, `username`,
//!   `password`) are `["string", "null"]` unions (string first), `reasonPhrase` is
//!   `["null", "string"]` (null first): the codec writes each union with the branch
//!   order of its schema. `tokenIds` is written as Apache Avro writes arrays: one
//!   block with a positive count, omitted for an empty array, then the zero count.
//! - **Optional is not empty.** `None` and `Some("")` are different values on the wire
//!   and stay different after a round trip; the codec does not guess which one a
//!   service meant.
//! - **Schema evolution.** A datum that ends right before trailing fields that have
//!   defaults decodes with the defaults (the datum of an older writer). In 16/ECAP
//!   that is `reasonPhrase` (default `null`), the last field of every response. The
//!   `timeout` field has a default too, but required fields follow it, so a datum can
//!   never omit it. Requests and events end with required fields. Bytes after the last
//!   field this version knows are ignored: a newer writer appended fields with
//!   defaults.
//! - **Arrays keep wire order.** [`EndpointTokenRevokedEvent::token_ids`] keeps the
//!   order and any duplicates. Decoding accepts every legal block form (several
//!   blocks, negative counts with byte sizes), so the bytes of a re-encoded event can
//!   differ from a writer that split its array into blocks; the value never does.
//! - **Limits.** Every length and count is checked against the remaining input before
//!   anything is allocated, so memory is bounded by the datum's size (a token ID takes
//!   at least one byte).
//! - **Never panics on input**: every failure is a typed
//!   [`DecodeError`](kaa_ism::avro::DecodeError) naming record and field, e.g.
//!   `EndpointTokenValidationResponse.statusCode: …`.
//! - **Secrets.** [`ClientUsernamePasswordValidationRequest`] carries a password and
//!   the token requests carry endpoint tokens; their `Debug` output shows them as
//!   `<redacted>` so that logging a request does not leak them. Equality and the codec
//!   see the real values.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

use std::borrow::Cow;
use std::fmt;

mod codec;
mod message;
pub mod metadata;
pub mod subject;

pub use message::{EcapMessage, MessageError};
pub use subject::{Exchange, MessageKind};

/// `kaa.v1.service.{provider}.ecap.ep-token-request`: a consumer asks whether an
/// endpoint may connect with a token, and which endpoint the token identifies.
/// Avro record `org.kaaproject.ipc.ecap.gen.v1.EndpointTokenValidationRequest`.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct EndpointTokenValidationRequest<'a> {
    /// `correlationId`; the response carries the same one.
    pub correlation_id: Cow<'a, str>,
    /// `timestamp`, Unix milliseconds.
    pub timestamp: i64,
    /// `timeout`, milliseconds; 0 = never.
    pub timeout: i64,
    /// `appName`: the application of the endpoint.
    pub app_name: Cow<'a, str>,
    /// `token`: the endpoint token to validate (a secret: `Debug` redacts it).
    pub token: Cow<'a, str>,
}

/// The answer to an [`EndpointTokenValidationRequest`], on the request's `replyTo`.
/// Avro record `org.kaaproject.ipc.ecap.gen.v1.EndpointTokenValidationResponse`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EndpointTokenValidationResponse<'a> {
    /// `correlationId`: the request's.
    pub correlation_id: Cow<'a, str>,
    /// `timestamp`, Unix milliseconds.
    pub timestamp: i64,
    /// `timeout`, milliseconds; 0 = never.
    pub timeout: i64,
    /// `tokenId`: the ID of the resolved token; `None` when the token is not found.
    pub token_id: Option<Cow<'a, str>>,
    /// `endpointId`: the endpoint the token identifies; `None` when the token is not
    /// found.
    pub endpoint_id: Option<Cow<'a, str>>,
    /// `statusCode`: the HTTP status code of the request's processing.
    pub status_code: i32,
    /// `reasonPhrase` (default `null`): a human-readable status reason.
    pub reason_phrase: Option<Cow<'a, str>>,
}

/// `kaa.v1.service.{provider}.ecap.ep-token-status-transition-request`: a consumer
/// asks the provider to move an endpoint token to another status.
/// Avro record `org.kaaproject.ipc.ecap.gen.v1.EndpointTokenStatusTransitionRequest`.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct EndpointTokenStatusTransitionRequest<'a> {
    /// `correlationId`; the response carries the same one.
    pub correlation_id: Cow<'a, str>,
    /// `timestamp`, Unix milliseconds.
    pub timestamp: i64,
    /// `timeout`, milliseconds; 0 = never.
    pub timeout: i64,
    /// `appName`: the application of the endpoint.
    pub app_name: Cow<'a, str>,
    /// `token`: the endpoint token whose status to change (a secret: `Debug` redacts
    /// it).
    pub token: Cow<'a, str>,
    /// `targetStatus`: the status to move the token to. The RFC does not list the
    /// statuses; the provider decides which names it accepts.
    pub target_status: Cow<'a, str>,
}

/// The answer to an [`EndpointTokenStatusTransitionRequest`], on the request's
/// `replyTo`.
/// Avro record `org.kaaproject.ipc.ecap.gen.v1.EndpointTokenStatusTransitionResponse`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EndpointTokenStatusTransitionResponse<'a> {
    /// `correlationId`: the request's.
    pub correlation_id: Cow<'a, str>,
    /// `timestamp`, Unix milliseconds.
    pub timestamp: i64,
    /// `timeout`, milliseconds; 0 = never.
    pub timeout: i64,
    /// `statusCode`: the HTTP status code of the request's processing.
    pub status_code: i32,
    /// `reasonPhrase` (default `null`): a human-readable status reason.
    pub reason_phrase: Option<Cow<'a, str>>,
}

/// `kaa.v1.events.{provider}.endpoint.token.revoked`: one or more tokens of an
/// endpoint can no longer identify it; consumers close the sessions that used them.
/// Avro record `org.kaaproject.ipc.ecap.gen.v1.EndpointTokenRevokedEvent`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EndpointTokenRevokedEvent<'a> {
    /// `correlationId`.
    pub correlation_id: Cow<'a, str>,
    /// `timestamp`, Unix milliseconds.
    pub timestamp: i64,
    /// `timeout`, milliseconds; 0 = never.
    pub timeout: i64,
    /// `appName`: the application of the endpoint.
    pub app_name: Cow<'a, str>,
    /// `endpointId`: the endpoint whose tokens are revoked.
    pub endpoint_id: Cow<'a, str>,
    /// `tokenIds`: the revoked token IDs (not the tokens), in wire order.
    pub token_ids: Vec<Cow<'a, str>>,
    /// `originatorReplicaId`: the provider replica that published the event.
    pub originator_replica_id: Cow<'a, str>,
}

/// `kaa.v1.service.{provider}.ecap.client-username-password-request`: a consumer asks
/// whether a client may connect with a username and password, and which client and
/// credential they identify.
/// Avro record `org.kaaproject.ipc.ecap.gen.v1.ClientUsernamePasswordValidationRequest`.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct ClientUsernamePasswordValidationRequest<'a> {
    /// `correlationId`; the response carries the same one.
    pub correlation_id: Cow<'a, str>,
    /// `timestamp`, Unix milliseconds.
    pub timestamp: i64,
    /// `timeout`, milliseconds; 0 = never.
    pub timeout: i64,
    /// `username`; `None` when the client sent none.
    pub username: Option<Cow<'a, str>>,
    /// `password`; `None` when the client sent none (a secret: `Debug` redacts it).
    pub password: Option<Cow<'a, str>>,
}

/// The answer to a [`ClientUsernamePasswordValidationRequest`], on the request's
/// `replyTo`.
/// Avro record `org.kaaproject.ipc.ecap.gen.v1.ClientUsernamePasswordValidationResponse`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ClientUsernamePasswordValidationResponse<'a> {
    /// `correlationId`: the request's.
    pub correlation_id: Cow<'a, str>,
    /// `timestamp`, Unix milliseconds.
    pub timestamp: i64,
    /// `timeout`, milliseconds; 0 = never.
    pub timeout: i64,
    /// `credentialId`: the credential the username and password resolve to; `None`
    /// when the combination is not found.
    pub credential_id: Option<Cow<'a, str>>,
    /// `clientId`: the client the credential belongs to; `None` when the combination
    /// is not found or the provider knows no client ID for it.
    pub client_id: Option<Cow<'a, str>>,
    /// `statusCode`: the HTTP status code of the request's processing.
    pub status_code: i32,
    /// `reasonPhrase` (default `null`): a human-readable status reason.
    pub reason_phrase: Option<Cow<'a, str>>,
}

/// `kaa.v1.service.{provider}.ecap.client-certificate-request`: a consumer that has
/// already verified a client's TLS certificate (signature, authority, expiry: the
/// provider does not) asks whether the client may connect with it, and which client
/// and credential it identifies.
/// Avro record `org.kaaproject.ipc.ecap.gen.v1.ClientCertificateValidationRequest`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ClientCertificateValidationRequest<'a> {
    /// `correlationId`; the response carries the same one.
    pub correlation_id: Cow<'a, str>,
    /// `timestamp`, Unix milliseconds.
    pub timestamp: i64,
    /// `timeout`, milliseconds; 0 = never.
    pub timeout: i64,
    /// `issuer`: the certificate's issuer field.
    pub issuer: Cow<'a, str>,
    /// `serialNumber`: the certificate's serial number, in base 10.
    pub serial_number: Cow<'a, str>,
}

/// The answer to a [`ClientCertificateValidationRequest`], on the request's
/// `replyTo`.
/// Avro record `org.kaaproject.ipc.ecap.gen.v1.ClientCertificateValidationResponse`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ClientCertificateValidationResponse<'a> {
    /// `correlationId`: the request's.
    pub correlation_id: Cow<'a, str>,
    /// `timestamp`, Unix milliseconds.
    pub timestamp: i64,
    /// `timeout`, milliseconds; 0 = never.
    pub timeout: i64,
    /// `credentialId`: the credential the certificate resolves to; `None` when the
    /// certificate is not found.
    pub credential_id: Option<Cow<'a, str>>,
    /// `clientId`: the client the credential belongs to; `None` when the certificate
    /// is not found or the provider knows no client ID for it.
    pub client_id: Option<Cow<'a, str>>,
    /// `statusCode`: the HTTP status code of the request's processing.
    pub status_code: i32,
    /// `reasonPhrase` (default `null`): a human-readable status reason.
    pub reason_phrase: Option<Cow<'a, str>>,
}

/// `kaa.v1.events.{provider}.client.credential.revoked`: a client credential can no
/// longer authenticate a client; consumers close the sessions of that client.
/// Avro record `org.kaaproject.ipc.ecap.gen.v1.ClientCredentialRevokedEvent`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ClientCredentialRevokedEvent<'a> {
    /// `correlationId`.
    pub correlation_id: Cow<'a, str>,
    /// `timestamp`, Unix milliseconds.
    pub timestamp: i64,
    /// `timeout`, milliseconds; 0 = never.
    pub timeout: i64,
    /// `credentialId`: the revoked credential.
    pub credential_id: Cow<'a, str>,
    /// `originatorReplicaId`: the provider replica that published the event.
    pub originator_replica_id: Cow<'a, str>,
}

/// What `Debug` shows instead of a secret.
struct Redacted;

impl fmt::Debug for Redacted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Debug for EndpointTokenValidationRequest<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EndpointTokenValidationRequest")
            .field("correlation_id", &self.correlation_id)
            .field("timestamp", &self.timestamp)
            .field("timeout", &self.timeout)
            .field("app_name", &self.app_name)
            .field("token", &Redacted)
            .finish()
    }
}

impl fmt::Debug for EndpointTokenStatusTransitionRequest<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EndpointTokenStatusTransitionRequest")
            .field("correlation_id", &self.correlation_id)
            .field("timestamp", &self.timestamp)
            .field("timeout", &self.timeout)
            .field("app_name", &self.app_name)
            .field("token", &Redacted)
            .field("target_status", &self.target_status)
            .finish()
    }
}

impl fmt::Debug for ClientUsernamePasswordValidationRequest<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientUsernamePasswordValidationRequest")
            .field("correlation_id", &self.correlation_id)
            .field("timestamp", &self.timestamp)
            .field("timeout", &self.timeout)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| Redacted))
            .finish()
    }
}

/// Whether an HTTP status code is a success (2xx).
const fn is_2xx(status_code: i32) -> bool {
    200 <= status_code && status_code < 300
}

macro_rules! status_helpers {
    ($($ty:ident),+) => {$(
        impl $ty<'_> {
            /// True when `statusCode` is a success (2xx). What a success means for the
            /// other fields is the provider's to document; a consumer should still
            /// check that the IDs it needs are present.
            pub const fn is_success(&self) -> bool {
                is_2xx(self.status_code)
            }
        }
    )+};
}

status_helpers!(
    EndpointTokenValidationResponse,
    EndpointTokenStatusTransitionResponse,
    ClientUsernamePasswordValidationResponse,
    ClientCertificateValidationResponse
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_redacts_secrets() {
        let request = ClientUsernamePasswordValidationRequest {
            username: Some("alice".into()),
            password: Some("hunter2".into()),
            ..Default::default()
        };
        let shown = format!("{request:?}");
        assert!(shown.contains("alice"), "{shown}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("Some(<redacted>)"), "{shown}");
        let no_password = ClientUsernamePasswordValidationRequest::default();
        assert!(format!("{no_password:?}").contains("password: None"));

        let token = EndpointTokenValidationRequest {
            app_name: "kettle".into(),
            token: "s3cret-token".into(),
            ..Default::default()
        };
        let shown = format!("{token:?}");
        assert!(
            shown.contains("kettle") && !shown.contains("s3cret"),
            "{shown}"
        );
        let transition = EndpointTokenStatusTransitionRequest {
            token: "s3cret-token".into(),
            target_status: "suspended".into(),
            ..Default::default()
        };
        let shown = format!("{transition:?}");
        assert!(
            shown.contains("suspended") && !shown.contains("s3cret"),
            "{shown}"
        );
    }

    #[test]
    fn success_is_2xx() {
        for (code, success) in [
            (199, false),
            (200, true),
            (204, true),
            (299, true),
            (300, false),
            (401, false),
            (-200, false),
        ] {
            let response = EndpointTokenValidationResponse {
                status_code: code,
                ..Default::default()
            };
            assert_eq!(response.is_success(), success, "{code}");
        }
    }
}
