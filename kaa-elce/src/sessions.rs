//! The sessions request and response: a **kaa-rs extension** to 9/ELCE, not an RFC
//! message.
//!
//! 9/ELCE connectivity events are broadcasts, delivered at most once, and a listener
//! that was not running when a session opened never learns of it. A listener that
//! keeps per-endpoint state in memory (CMX) therefore asks the communication service
//! (KPC) after it (re)starts, or after its bus reconnected, which endpoints hold a
//! session:
//!
//! - [`SessionsRequest`] goes to `kaa.v1.service.{communication-service}.elce.SessionsRequest`
//!   ([`sessions_request_subject`]), with no queue group (every replica answers for its
//!   own sessions), a 3/ISM `replyTo` of
//!   `kaa.v1.replica.{requester-replica}.elce.SessionsResponse`
//!   ([`sessions_response_subject`]), and the requesting extension's instance name,
//!   whose resource paths the answer lists.
//! - Each replica of the communication service answers with zero or more
//!   [`SessionsResponse`]s, each listing some of the endpoints it holds sessions for
//!   ([`EndpointSession`]: endpoint ID, application version, and the resource paths
//!   the session used with the requesting extension instance). A replica with no
//!   sessions sends nothing; a requester cannot know how many replicas there are, so
//!   it adopts whatever arrives.
//!
//! The schemas are `kaa-elce/schemas/sessions-request.avsc` and
//! `sessions-response.avsc`; the codec is byte-exact with Apache Avro for them (arrays
//! written as one block with a positive count, omitted when empty, then the zero
//! count). A communication service that does not know this extension simply does not
//! answer.
//!
//! ```
//! use kaa_elce::{EndpointSession, SessionsRequest, SessionsResponse, DecodeLimits};
//! use kaa_elce::{sessions_request_subject, sessions_response_subject};
//! use kaa_ism::avro::{Decode, Encode};
//!
//! // CMX replica cmx-1 asks KPC which endpoints have sessions.
//! let request = SessionsRequest {
//!     correlation_id: "c-1".into(),
//!     timestamp: 1_700_000_000_000,
//!     timeout: 5_000,
//!     extension_instance_name: "cmx".into(),
//! };
//! assert_eq!(
//!     sessions_request_subject("kpc")?.to_string(),
//!     "kaa.v1.service.kpc.elce.SessionsRequest"
//! );
//! assert_eq!(
//!     sessions_response_subject("cmx-1")?.to_string(),
//!     "kaa.v1.replica.cmx-1.elce.SessionsResponse"
//! );
//! let datum = request.to_vec();
//! assert_eq!(SessionsRequest::decode(&datum)?, request);
//!
//! // One KPC replica answers.
//! let response = SessionsResponse {
//!     correlation_id: request.correlation_id.clone(),
//!     timestamp: 1_700_000_000_010,
//!     timeout: 5_000,
//!     endpoints: vec![EndpointSession {
//!         endpoint_id: "ep-1".into(),
//!         app_version_name: "sensor-v1".into(),
//!         resource_paths: vec!["config/default".into()],
//!     }],
//!     originator_replica_id: "kpc-1".into(),
//! };
//! let datum = response.to_vec();
//! assert_eq!(datum.len(), response.encoded_len());
//! let decoded = SessionsResponse::decode_with_limits(&datum, DecodeLimits::with_max_endpoints(100))?;
//! assert_eq!(decoded, response);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::borrow::Cow;

use bytes::BufMut;
use kaa_ism::avro::{
    Decode, DecodeError, Encode, Reader, array_len, long_len, put_array, put_long, put_string,
    string_len, to_static,
};
use kaa_ism::subject::{ReplicaSubject, ServiceSubject, SubjectError, SubjectFilter};

use crate::{DecodeLimits, TOO_MANY_ENDPOINTS};

/// The protocol token of the sessions subjects.
pub const PROTOCOL: &str = "elce";
/// The message type of a [`SessionsRequest`] (the record name).
pub const SESSIONS_REQUEST: &str = "SessionsRequest";
/// The message type of a [`SessionsResponse`] (the record name).
pub const SESSIONS_RESPONSE: &str = "SessionsResponse";

/// `kaa.v1.service.{communication_service}.elce.SessionsRequest`: where a service
/// asks every replica of a communication service for its sessions (subscribe with
/// no queue group).
pub fn sessions_request_subject(
    communication_service: &str,
) -> Result<ServiceSubject<'_>, SubjectError> {
    ServiceSubject::new(communication_service, PROTOCOL, SESSIONS_REQUEST)
}

/// `kaa.v1.replica.{requester_replica}.elce.SessionsResponse`: the `replyTo` of a
/// [`SessionsRequest`], where the [`SessionsResponse`]s arrive.
pub fn sessions_response_subject(
    requester_replica: &str,
) -> Result<ReplicaSubject<'_>, SubjectError> {
    ReplicaSubject::new(requester_replica, PROTOCOL, SESSIONS_RESPONSE)
}

/// The filter a communication service instance subscribes to for sessions requests.
pub fn sessions_request_filter(communication_service: &str) -> Result<SubjectFilter, SubjectError> {
    SubjectFilter::parse(&sessions_request_subject(communication_service)?.to_string())
}

/// The filter a requester replica subscribes to for the answers.
pub fn sessions_response_filter(requester_replica: &str) -> Result<SubjectFilter, SubjectError> {
    SubjectFilter::parse(&sessions_response_subject(requester_replica)?.to_string())
}

/// kaa-rs extension (not in 9/ELCE): asks a communication service which endpoints
/// hold a session. Avro record `kaa_rs.elce.v1.SessionsRequest`
/// (`schemas/sessions-request.avsc`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SessionsRequest<'a> {
    /// `correlationId`; the responses carry the same one.
    pub correlation_id: Cow<'a, str>,
    /// `timestamp`, Unix milliseconds.
    pub timestamp: i64,
    /// `timeout`, milliseconds; 0 = never.
    pub timeout: i64,
    /// `extensionInstanceName`: the requesting extension service instance, whose
    /// resource paths the responses list.
    pub extension_instance_name: Cow<'a, str>,
}

/// One endpoint with a session: Avro record `kaa_rs.elce.v1.EndpointSession`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EndpointSession<'a> {
    /// `endpointId`.
    pub endpoint_id: Cow<'a, str>,
    /// `appVersionName`.
    pub app_version_name: Cow<'a, str>,
    /// `resourcePaths`: the resource paths the session used with the requesting
    /// extension instance, in wire order.
    pub resource_paths: Vec<Cow<'a, str>>,
}

/// kaa-rs extension (not in 9/ELCE): some of the endpoints one replica of a
/// communication service holds sessions for. Avro record
/// `kaa_rs.elce.v1.SessionsResponse` (`schemas/sessions-response.avsc`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SessionsResponse<'a> {
    /// `correlationId`: the request's.
    pub correlation_id: Cow<'a, str>,
    /// `timestamp`, Unix milliseconds.
    pub timestamp: i64,
    /// `timeout`, milliseconds; 0 = never.
    pub timeout: i64,
    /// `endpoints`.
    pub endpoints: Vec<EndpointSession<'a>>,
    /// `originatorReplicaId`: the answering replica.
    pub originator_replica_id: Cow<'a, str>,
}

const REQUEST_RECORD: &str = "SessionsRequest";
const RESPONSE_RECORD: &str = "SessionsResponse";
const SESSION_RECORD: &str = "EndpointSession";

impl Encode for SessionsRequest<'_> {
    fn encoded_len(&self) -> usize {
        string_len(&self.correlation_id)
            + long_len(self.timestamp)
            + long_len(self.timeout)
            + string_len(&self.extension_instance_name)
    }

    fn encode<B: BufMut + ?Sized>(&self, buf: &mut B) {
        put_string(buf, &self.correlation_id);
        put_long(buf, self.timestamp);
        put_long(buf, self.timeout);
        put_string(buf, &self.extension_instance_name);
    }
}

impl<'a> Decode<'a> for SessionsRequest<'a> {
    /// Decodes a `SessionsRequest` datum, borrowing every string. Bytes after
    /// `extensionInstanceName` are ignored.
    fn decode(input: &'a [u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(input, REQUEST_RECORD);
        Ok(SessionsRequest {
            correlation_id: Cow::Borrowed(r.string("correlationId")?),
            timestamp: r.long("timestamp")?,
            timeout: r.long("timeout")?,
            extension_instance_name: Cow::Borrowed(r.string("extensionInstanceName")?),
        })
    }
}

impl SessionsRequest<'_> {
    /// Copies every borrowed string, detaching the request from the input buffer.
    pub fn into_owned(self) -> SessionsRequest<'static> {
        SessionsRequest {
            correlation_id: to_static(self.correlation_id),
            timestamp: self.timestamp,
            timeout: self.timeout,
            extension_instance_name: to_static(self.extension_instance_name),
        }
    }
}

impl EndpointSession<'_> {
    fn encoded_len(&self) -> usize {
        string_len(&self.endpoint_id)
            + string_len(&self.app_version_name)
            + array_len(
                self.resource_paths.len(),
                self.resource_paths.iter().map(|p| string_len(p)).sum(),
            )
    }

    fn encode<B: BufMut + ?Sized>(&self, buf: &mut B) {
        put_string(buf, &self.endpoint_id);
        put_string(buf, &self.app_version_name);
        put_array(buf, &self.resource_paths, |b, p| put_string(b, p));
    }

    /// Copies every borrowed string.
    pub fn into_owned(self) -> EndpointSession<'static> {
        EndpointSession {
            endpoint_id: to_static(self.endpoint_id),
            app_version_name: to_static(self.app_version_name),
            resource_paths: self.resource_paths.into_iter().map(to_static).collect(),
        }
    }
}

/// Reads one `EndpointSession` record (the reader's record name is switched for
/// errors, e.g. `EndpointSession.resourcePaths: …`).
fn read_session<'a>(r: &mut Reader<'a>) -> Result<EndpointSession<'a>, DecodeError> {
    r.set_record(SESSION_RECORD);
    let endpoint_id = Cow::Borrowed(r.string("endpointId")?);
    let app_version_name = Cow::Borrowed(r.string("appVersionName")?);
    // A path takes at least one byte (an empty string).
    let resource_paths = r.array("resourcePaths", 1, |r| {
        Ok(Cow::Borrowed(r.string("resourcePaths")?))
    })?;
    r.set_record(RESPONSE_RECORD);
    Ok(EndpointSession {
        endpoint_id,
        app_version_name,
        resource_paths,
    })
}

impl Encode for SessionsResponse<'_> {
    fn encoded_len(&self) -> usize {
        string_len(&self.correlation_id)
            + long_len(self.timestamp)
            + long_len(self.timeout)
            + array_len(
                self.endpoints.len(),
                self.endpoints
                    .iter()
                    .map(EndpointSession::encoded_len)
                    .sum(),
            )
            + string_len(&self.originator_replica_id)
    }

    fn encode<B: BufMut + ?Sized>(&self, buf: &mut B) {
        put_string(buf, &self.correlation_id);
        put_long(buf, self.timestamp);
        put_long(buf, self.timeout);
        put_array(buf, &self.endpoints, |b, s| s.encode(b));
        put_string(buf, &self.originator_replica_id);
    }
}

impl<'a> Decode<'a> for SessionsResponse<'a> {
    fn decode(input: &'a [u8]) -> Result<Self, DecodeError> {
        Self::decode_with_limits(input, DecodeLimits::UNLIMITED)
    }
}

impl<'a> SessionsResponse<'a> {
    /// Decodes a `SessionsResponse` datum as [`Decode::decode`] does, and rejects
    /// one listing more endpoints than `limits` allow (error
    /// `SessionsResponse.endpoints`, [`TOO_MANY_ENDPOINTS`]).
    ///
    /// Memory is bounded by the input without a limit: an endpoint takes at least 3
    /// bytes and a resource path at least 1, and no count is reserved that the
    /// remaining bytes could not hold. Bytes after `originatorReplicaId` are ignored.
    pub fn decode_with_limits(input: &'a [u8], limits: DecodeLimits) -> Result<Self, DecodeError> {
        let mut r = Reader::new(input, RESPONSE_RECORD);
        let correlation_id = Cow::Borrowed(r.string("correlationId")?);
        let timestamp = r.long("timestamp")?;
        let timeout = r.long("timeout")?;
        let mut left = limits.max_endpoints;
        // An endpoint takes at least 3 bytes: two empty strings and an empty array.
        let endpoints = r.array("endpoints", 3, |r| {
            left = match left.checked_sub(1) {
                Some(left) => left,
                None => return Err(r.invalid("endpoints", TOO_MANY_ENDPOINTS)),
            };
            read_session(r)
        })?;
        Ok(SessionsResponse {
            correlation_id,
            timestamp,
            timeout,
            endpoints,
            originator_replica_id: Cow::Borrowed(r.string("originatorReplicaId")?),
        })
    }

    /// Copies every borrowed string, detaching the response from the input buffer.
    pub fn into_owned(self) -> SessionsResponse<'static> {
        SessionsResponse {
            correlation_id: to_static(self.correlation_id),
            timestamp: self.timestamp,
            timeout: self.timeout,
            endpoints: self
                .endpoints
                .into_iter()
                .map(EndpointSession::into_owned)
                .collect(),
            originator_replica_id: to_static(self.originator_replica_id),
        }
    }

    /// The number of endpoints the response lists.
    pub fn endpoint_count(&self) -> usize {
        self.endpoints.len()
    }
}

kaa_ism::impl_common_fields!(SessionsRequest, SessionsResponse);

#[cfg(test)]
mod tests {
    use super::*;
    use kaa_ism::avro::DecodeErrorKind;
    use kaa_ism::common::CommonFields;

    fn response(n: usize) -> SessionsResponse<'static> {
        SessionsResponse {
            correlation_id: "c".into(),
            timestamp: 1,
            timeout: 2,
            endpoints: (0..n)
                .map(|i| EndpointSession {
                    endpoint_id: format!("ep-{i}").into(),
                    app_version_name: "v1".into(),
                    resource_paths: vec!["config".into(), format!("p-{i}").into()],
                })
                .collect(),
            originator_replica_id: "kpc-1".into(),
        }
    }

    #[test]
    fn field_order_is_the_schema_order() {
        let request = SessionsRequest {
            correlation_id: "c".into(),
            timestamp: 1,
            timeout: 2,
            extension_instance_name: "x".into(),
        };
        assert_eq!(request.to_vec(), [2, b'c', 2, 4, 2, b'x']);
        let empty = SessionsResponse::default();
        assert_eq!(empty.to_vec(), [0, 0, 0, 0, 0]);
        let one = SessionsResponse {
            endpoints: vec![EndpointSession {
                endpoint_id: "e".into(),
                app_version_name: "a".into(),
                resource_paths: vec!["p".into()],
            }],
            ..Default::default()
        };
        assert_eq!(
            one.to_vec(),
            [0, 0, 0, 2, 2, b'e', 2, b'a', 2, 2, b'p', 0, 0, 0]
        );
    }

    #[test]
    fn endpoint_limit() {
        let event = response(3);
        let datum = event.to_vec();
        assert_eq!(datum.len(), event.encoded_len());
        for max in [3, 4, usize::MAX] {
            let limits = DecodeLimits::with_max_endpoints(max);
            assert_eq!(
                SessionsResponse::decode_with_limits(&datum, limits).unwrap(),
                event
            );
        }
        let err = SessionsResponse::decode_with_limits(&datum, DecodeLimits::with_max_endpoints(2))
            .unwrap_err();
        assert_eq!((err.record, err.field), ("SessionsResponse", "endpoints"));
        assert_eq!(err.kind, DecodeErrorKind::Invalid(TOO_MANY_ENDPOINTS));
    }

    #[test]
    fn errors_name_the_nested_record() {
        let mut datum = response(1).to_vec();
        // Cut inside the resource paths of the first endpoint.
        datum.truncate(datum.len() - 9);
        let err = SessionsResponse::decode(&datum).unwrap_err();
        assert_eq!(err.record, "EndpointSession");
        assert_eq!(err.field, "resourcePaths");
    }

    #[test]
    fn into_owned_detaches_from_the_input() {
        let event = response(2);
        let owned = {
            let datum = event.to_vec();
            let decoded = SessionsResponse::decode(&datum).unwrap();
            assert!(matches!(
                decoded.endpoints[1].resource_paths[1],
                Cow::Borrowed(_)
            ));
            decoded.into_owned()
        };
        assert_eq!(owned, event);
        let request = SessionsRequest {
            extension_instance_name: "cmx".into(),
            ..Default::default()
        };
        let owned = {
            let datum = request.to_vec();
            SessionsRequest::decode(&datum).unwrap().into_owned()
        };
        assert_eq!(owned, request);
        assert_eq!(owned.expires_at(), None);
    }

    #[test]
    fn subjects() {
        assert_eq!(
            sessions_request_filter("kpc").unwrap().as_str(),
            "kaa.v1.service.kpc.elce.SessionsRequest"
        );
        assert_eq!(
            sessions_response_filter("cmx-1").unwrap().as_str(),
            "kaa.v1.replica.cmx-1.elce.SessionsResponse"
        );
        assert!(sessions_request_subject("a.b").is_err());
        assert!(sessions_response_subject("").is_err());
    }
}
