//! 16/ECAP NATS subjects, and the filters providers and consumers subscribe with.
//!
//! | message | subject |
//! |---|---|
//! | [`EndpointTokenValidationRequest`](crate::EndpointTokenValidationRequest) | `kaa.v1.service.{provider}.ecap.ep-token-request` |
//! | [`EndpointTokenValidationResponse`](crate::EndpointTokenValidationResponse) | the request's `replyTo`, recommended `kaa.v1.replica.{consumer-replica}.ecap.ep-token-response` |
//! | [`EndpointTokenStatusTransitionRequest`](crate::EndpointTokenStatusTransitionRequest) | `kaa.v1.service.{provider}.ecap.ep-token-status-transition-request` |
//! | [`EndpointTokenStatusTransitionResponse`](crate::EndpointTokenStatusTransitionResponse) | the request's `replyTo`, recommended `kaa.v1.replica.{consumer-replica}.ecap.ep-token-status-transition-response` |
//! | [`ClientUsernamePasswordValidationRequest`](crate::ClientUsernamePasswordValidationRequest) | `kaa.v1.service.{provider}.ecap.client-username-password-request` |
//! | [`ClientUsernamePasswordValidationResponse`](crate::ClientUsernamePasswordValidationResponse) | the request's `replyTo`, recommended `kaa.v1.replica.{consumer-replica}.ecap.client-username-password-response` |
//! | [`ClientCertificateValidationRequest`](crate::ClientCertificateValidationRequest) | `kaa.v1.service.{provider}.ecap.client-certificate-request` |
//! | [`ClientCertificateValidationResponse`](crate::ClientCertificateValidationResponse) | the request's `replyTo`, recommended `kaa.v1.replica.{consumer-replica}.ecap.client-certificate-response` |
//! | [`EndpointTokenRevokedEvent`](crate::EndpointTokenRevokedEvent) | `kaa.v1.events.{provider}.endpoint.token.revoked` |
//! | [`ClientCredentialRevokedEvent`](crate::ClientCredentialRevokedEvent) | `kaa.v1.events.{provider}.client.credential.revoked` |
//!
//! A provider subscribes to each [`Exchange::request_filter`] it serves, in a queue
//! group named after its instance; a consumer replica sets
//! [`Exchange::response_subject`] as the `replyTo` of its requests and subscribes to
//! [`Exchange::response_filter`], and listens to [`endpoint_token_revoked_filter`] or
//! [`client_credential_revoked_filter`] for the provider it uses (or any provider,
//! with [`Token::Any`]).
//!
//! Every name is validated as a subject token: a name holding `.`, `*`, `>` or
//! whitespace is an error, never escaped.
//!
//! ```
//! use kaa_ecap::subject::{self, Exchange, MessageKind};
//! use kaa_ism::subject::Token;
//!
//! let request = Exchange::ClientCertificate.request_subject("auth")?;
//! assert_eq!(request.to_string(), "kaa.v1.service.auth.ecap.client-certificate-request");
//! let reply_to = Exchange::ClientCertificate.response_subject("kpc-2")?;
//! assert_eq!(reply_to.to_string(), "kaa.v1.replica.kpc-2.ecap.client-certificate-response");
//!
//! // KPC closes sessions when the provider revokes tokens.
//! let revoked = subject::endpoint_token_revoked_filter(Token::Name("auth"))?;
//! assert_eq!(revoked.as_str(), "kaa.v1.events.auth.endpoint.token.revoked");
//! let event = subject::endpoint_token_revoked_subject("auth")?.to_string();
//! assert!(revoked.matches(&event));
//! assert_eq!(MessageKind::of_subject(&event), Some(MessageKind::EndpointTokenRevoked));
//! # Ok::<(), kaa_ism::subject::SubjectError>(())
//! ```

use kaa_ism::subject::{
    EventSubject, ReplicaSubject, ServiceSubject, Subject, SubjectError, SubjectFilter, Token,
};

/// The 3/ISM protocol name of 16/ECAP, used in its targeted subjects.
pub const PROTOCOL: &str = "ecap";

/// The message type of an endpoint token validation request.
pub const EP_TOKEN_REQUEST: &str = "ep-token-request";
/// The message type of an endpoint token validation response.
pub const EP_TOKEN_RESPONSE: &str = "ep-token-response";
/// The message type of an endpoint token status transition request.
pub const EP_TOKEN_STATUS_TRANSITION_REQUEST: &str = "ep-token-status-transition-request";
/// The message type of an endpoint token status transition response.
pub const EP_TOKEN_STATUS_TRANSITION_RESPONSE: &str = "ep-token-status-transition-response";
/// The message type of a client username and password validation request.
pub const CLIENT_USERNAME_PASSWORD_REQUEST: &str = "client-username-password-request";
/// The message type of a client username and password validation response.
pub const CLIENT_USERNAME_PASSWORD_RESPONSE: &str = "client-username-password-response";
/// The message type of a client certificate validation request.
pub const CLIENT_CERTIFICATE_REQUEST: &str = "client-certificate-request";
/// The message type of a client certificate validation response.
pub const CLIENT_CERTIFICATE_RESPONSE: &str = "client-certificate-response";

/// The target entity type of [`EndpointTokenRevokedEvent`](crate::EndpointTokenRevokedEvent).
pub const ENDPOINT_ENTITY: &str = "endpoint";
/// The event group of [`EndpointTokenRevokedEvent`](crate::EndpointTokenRevokedEvent).
pub const TOKEN_GROUP: &str = "token";
/// The target entity type of [`ClientCredentialRevokedEvent`](crate::ClientCredentialRevokedEvent).
pub const CLIENT_ENTITY: &str = "client";
/// The event group of [`ClientCredentialRevokedEvent`](crate::ClientCredentialRevokedEvent).
pub const CREDENTIAL_GROUP: &str = "credential";
/// The event type of both revocation events.
pub const REVOKED: &str = "revoked";

/// A 16/ECAP request and its response: a consumer sends the request to a provider
/// service instance with a `replyTo`, and the provider answers there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Exchange {
    /// Endpoint token validation: [`EndpointTokenValidationRequest`](crate::EndpointTokenValidationRequest)
    /// → [`EndpointTokenValidationResponse`](crate::EndpointTokenValidationResponse).
    EndpointToken,
    /// Endpoint token status transition:
    /// [`EndpointTokenStatusTransitionRequest`](crate::EndpointTokenStatusTransitionRequest)
    /// → [`EndpointTokenStatusTransitionResponse`](crate::EndpointTokenStatusTransitionResponse).
    EndpointTokenStatusTransition,
    /// Client authentication by username and password:
    /// [`ClientUsernamePasswordValidationRequest`](crate::ClientUsernamePasswordValidationRequest)
    /// → [`ClientUsernamePasswordValidationResponse`](crate::ClientUsernamePasswordValidationResponse).
    ClientUsernamePassword,
    /// Client authentication by TLS certificate:
    /// [`ClientCertificateValidationRequest`](crate::ClientCertificateValidationRequest)
    /// → [`ClientCertificateValidationResponse`](crate::ClientCertificateValidationResponse).
    ClientCertificate,
}

impl Exchange {
    /// Every exchange this crate knows.
    pub const ALL: [Exchange; 4] = [
        Exchange::EndpointToken,
        Exchange::EndpointTokenStatusTransition,
        Exchange::ClientUsernamePassword,
        Exchange::ClientCertificate,
    ];

    /// The request's message type token, e.g. `ep-token-request`.
    pub const fn request_type(self) -> &'static str {
        match self {
            Exchange::EndpointToken => EP_TOKEN_REQUEST,
            Exchange::EndpointTokenStatusTransition => EP_TOKEN_STATUS_TRANSITION_REQUEST,
            Exchange::ClientUsernamePassword => CLIENT_USERNAME_PASSWORD_REQUEST,
            Exchange::ClientCertificate => CLIENT_CERTIFICATE_REQUEST,
        }
    }

    /// The response's message type token, e.g. `ep-token-response`.
    pub const fn response_type(self) -> &'static str {
        match self {
            Exchange::EndpointToken => EP_TOKEN_RESPONSE,
            Exchange::EndpointTokenStatusTransition => EP_TOKEN_STATUS_TRANSITION_RESPONSE,
            Exchange::ClientUsernamePassword => CLIENT_USERNAME_PASSWORD_RESPONSE,
            Exchange::ClientCertificate => CLIENT_CERTIFICATE_RESPONSE,
        }
    }

    /// The request's record.
    pub const fn request_kind(self) -> MessageKind {
        match self {
            Exchange::EndpointToken => MessageKind::EndpointTokenValidationRequest,
            Exchange::EndpointTokenStatusTransition => {
                MessageKind::EndpointTokenStatusTransitionRequest
            }
            Exchange::ClientUsernamePassword => {
                MessageKind::ClientUsernamePasswordValidationRequest
            }
            Exchange::ClientCertificate => MessageKind::ClientCertificateValidationRequest,
        }
    }

    /// The response's record.
    pub const fn response_kind(self) -> MessageKind {
        match self {
            Exchange::EndpointToken => MessageKind::EndpointTokenValidationResponse,
            Exchange::EndpointTokenStatusTransition => {
                MessageKind::EndpointTokenStatusTransitionResponse
            }
            Exchange::ClientUsernamePassword => {
                MessageKind::ClientUsernamePasswordValidationResponse
            }
            Exchange::ClientCertificate => MessageKind::ClientCertificateValidationResponse,
        }
    }

    /// `kaa.v1.service.{provider}.ecap.{request-type}`: where a consumer sends the
    /// request (with a `replyTo`).
    pub fn request_subject(self, provider: &str) -> Result<ServiceSubject<'_>, SubjectError> {
        ServiceSubject::new(provider, PROTOCOL, self.request_type())
    }

    /// `kaa.v1.replica.{consumer_replica}.ecap.{response-type}`: the `replyTo` the RFC
    /// recommends for a consumer replica's requests (3/ISM session affinity); the
    /// provider publishes the response on whatever `replyTo` the request had.
    pub fn response_subject(
        self,
        consumer_replica: &str,
    ) -> Result<ReplicaSubject<'_>, SubjectError> {
        ReplicaSubject::new(consumer_replica, PROTOCOL, self.response_type())
    }

    /// The filter a provider instance subscribes to for these requests (in a queue
    /// group named `provider`).
    pub fn request_filter(self, provider: &str) -> Result<SubjectFilter, SubjectError> {
        SubjectFilter::parse(&self.request_subject(provider)?.to_string())
    }

    /// The filter a consumer replica subscribes to for these responses, when it
    /// uses [`Exchange::response_subject`] as its `replyTo`.
    pub fn response_filter(self, consumer_replica: &str) -> Result<SubjectFilter, SubjectError> {
        SubjectFilter::parse(&self.response_subject(consumer_replica)?.to_string())
    }
}

/// `kaa.v1.events.{provider}.endpoint.token.revoked`: where a provider broadcasts
/// [`EndpointTokenRevokedEvent`](crate::EndpointTokenRevokedEvent).
pub fn endpoint_token_revoked_subject(provider: &str) -> Result<EventSubject<'_>, SubjectError> {
    EventSubject::new(provider, ENDPOINT_ENTITY, TOKEN_GROUP, REVOKED)
}

/// The filter for endpoint token revocations from one provider (`Token::Name`) or any
/// (`Token::Any`): `kaa.v1.events.{provider|*}.endpoint.token.revoked`.
pub fn endpoint_token_revoked_filter(provider: Token<'_>) -> Result<SubjectFilter, SubjectError> {
    SubjectFilter::events(
        provider,
        Token::Name(ENDPOINT_ENTITY),
        Token::Name(TOKEN_GROUP),
        Token::Name(REVOKED),
    )
}

/// `kaa.v1.events.{provider}.client.credential.revoked`: where a provider broadcasts
/// [`ClientCredentialRevokedEvent`](crate::ClientCredentialRevokedEvent).
pub fn client_credential_revoked_subject(provider: &str) -> Result<EventSubject<'_>, SubjectError> {
    EventSubject::new(provider, CLIENT_ENTITY, CREDENTIAL_GROUP, REVOKED)
}

/// The filter for client credential revocations from one provider (`Token::Name`) or
/// any (`Token::Any`): `kaa.v1.events.{provider|*}.client.credential.revoked`.
pub fn client_credential_revoked_filter(
    provider: Token<'_>,
) -> Result<SubjectFilter, SubjectError> {
    SubjectFilter::events(
        provider,
        Token::Name(CLIENT_ENTITY),
        Token::Name(CREDENTIAL_GROUP),
        Token::Name(REVOKED),
    )
}

/// One of the ten 16/ECAP records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum MessageKind {
    /// [`EndpointTokenValidationRequest`](crate::EndpointTokenValidationRequest).
    EndpointTokenValidationRequest,
    /// [`EndpointTokenValidationResponse`](crate::EndpointTokenValidationResponse).
    EndpointTokenValidationResponse,
    /// [`EndpointTokenStatusTransitionRequest`](crate::EndpointTokenStatusTransitionRequest).
    EndpointTokenStatusTransitionRequest,
    /// [`EndpointTokenStatusTransitionResponse`](crate::EndpointTokenStatusTransitionResponse).
    EndpointTokenStatusTransitionResponse,
    /// [`EndpointTokenRevokedEvent`](crate::EndpointTokenRevokedEvent).
    EndpointTokenRevoked,
    /// [`ClientUsernamePasswordValidationRequest`](crate::ClientUsernamePasswordValidationRequest).
    ClientUsernamePasswordValidationRequest,
    /// [`ClientUsernamePasswordValidationResponse`](crate::ClientUsernamePasswordValidationResponse).
    ClientUsernamePasswordValidationResponse,
    /// [`ClientCertificateValidationRequest`](crate::ClientCertificateValidationRequest).
    ClientCertificateValidationRequest,
    /// [`ClientCertificateValidationResponse`](crate::ClientCertificateValidationResponse).
    ClientCertificateValidationResponse,
    /// [`ClientCredentialRevokedEvent`](crate::ClientCredentialRevokedEvent).
    ClientCredentialRevoked,
}

impl MessageKind {
    /// Every record this crate knows, in the RFC's order.
    pub const ALL: [MessageKind; 10] = [
        MessageKind::EndpointTokenValidationRequest,
        MessageKind::EndpointTokenValidationResponse,
        MessageKind::EndpointTokenStatusTransitionRequest,
        MessageKind::EndpointTokenStatusTransitionResponse,
        MessageKind::EndpointTokenRevoked,
        MessageKind::ClientUsernamePasswordValidationRequest,
        MessageKind::ClientUsernamePasswordValidationResponse,
        MessageKind::ClientCertificateValidationRequest,
        MessageKind::ClientCertificateValidationResponse,
        MessageKind::ClientCredentialRevoked,
    ];

    /// The Avro record name of the message's datum, e.g. `EndpointTokenRevokedEvent`.
    pub const fn record_name(self) -> &'static str {
        match self {
            MessageKind::EndpointTokenValidationRequest => "EndpointTokenValidationRequest",
            MessageKind::EndpointTokenValidationResponse => "EndpointTokenValidationResponse",
            MessageKind::EndpointTokenStatusTransitionRequest => {
                "EndpointTokenStatusTransitionRequest"
            }
            MessageKind::EndpointTokenStatusTransitionResponse => {
                "EndpointTokenStatusTransitionResponse"
            }
            MessageKind::EndpointTokenRevoked => "EndpointTokenRevokedEvent",
            MessageKind::ClientUsernamePasswordValidationRequest => {
                "ClientUsernamePasswordValidationRequest"
            }
            MessageKind::ClientUsernamePasswordValidationResponse => {
                "ClientUsernamePasswordValidationResponse"
            }
            MessageKind::ClientCertificateValidationRequest => "ClientCertificateValidationRequest",
            MessageKind::ClientCertificateValidationResponse => {
                "ClientCertificateValidationResponse"
            }
            MessageKind::ClientCredentialRevoked => "ClientCredentialRevokedEvent",
        }
    }

    /// The kind whose Avro record name is `name`.
    pub fn from_record_name(name: &str) -> Option<Self> {
        MessageKind::ALL
            .into_iter()
            .find(|k| k.record_name() == name)
    }

    /// The exchange a request or response belongs to; `None` for the two events.
    pub fn exchange(self) -> Option<Exchange> {
        Exchange::ALL
            .into_iter()
            .find(|e| e.request_kind() == self || e.response_kind() == self)
    }

    /// The 3/ISM message type token of a request or response, e.g.
    /// `ep-token-request`; `None` for the two events.
    pub fn message_type(self) -> Option<&'static str> {
        let exchange = self.exchange()?;
        Some(if exchange.request_kind() == self {
            exchange.request_type()
        } else {
            exchange.response_type()
        })
    }

    /// The message a received subject carries; `None` for anything that is not a
    /// 16/ECAP subject (or not a valid 3/ISM subject).
    ///
    /// Requests and responses are recognized by their `ecap` message type on both
    /// instance-wide (`kaa.v1.service.…`) and replica (`kaa.v1.replica.…`) subjects.
    /// A response published on a `replyTo` that does not follow the RFC's
    /// recommendation (a NATS inbox) cannot be recognized by its subject: a consumer
    /// knows what it asked for and decodes with
    /// [`EcapMessage::decode_kind`](crate::EcapMessage::decode_kind). Events with extra
    /// tokens after the event type are recognized (3/ISM lets protocols append them,
    /// and 16/ECAP defines none).
    pub fn of_subject(subject: &str) -> Option<MessageKind> {
        let (protocol, message_type) = match Subject::parse(subject).ok()? {
            Subject::Service(s) => (s.protocol(), s.message_type()),
            Subject::Replica(r) => (r.protocol(), r.message_type()),
            Subject::Event(e) => {
                return match (e.entity(), e.group(), e.event_type()) {
                    (ENDPOINT_ENTITY, TOKEN_GROUP, REVOKED) => {
                        Some(MessageKind::EndpointTokenRevoked)
                    }
                    (CLIENT_ENTITY, CREDENTIAL_GROUP, REVOKED) => {
                        Some(MessageKind::ClientCredentialRevoked)
                    }
                    _ => None,
                };
            }
        };
        if protocol != PROTOCOL {
            return None;
        }
        MessageKind::ALL
            .into_iter()
            .find(|k| k.message_type() == Some(message_type))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc_subjects() {
        let expected = [
            (
                Exchange::EndpointToken,
                "kaa.v1.service.epts.ecap.ep-token-request",
                "kaa.v1.replica.kpc-1.ecap.ep-token-response",
            ),
            (
                Exchange::EndpointTokenStatusTransition,
                "kaa.v1.service.epts.ecap.ep-token-status-transition-request",
                "kaa.v1.replica.kpc-1.ecap.ep-token-status-transition-response",
            ),
            (
                Exchange::ClientUsernamePassword,
                "kaa.v1.service.epts.ecap.client-username-password-request",
                "kaa.v1.replica.kpc-1.ecap.client-username-password-response",
            ),
            (
                Exchange::ClientCertificate,
                "kaa.v1.service.epts.ecap.client-certificate-request",
                "kaa.v1.replica.kpc-1.ecap.client-certificate-response",
            ),
        ];
        assert_eq!(expected.len(), Exchange::ALL.len());
        for (exchange, request, response) in expected {
            assert_eq!(
                exchange.request_subject("epts").unwrap().to_string(),
                request
            );
            assert_eq!(
                exchange.response_subject("kpc-1").unwrap().to_string(),
                response
            );
            assert!(exchange.request_filter("epts").unwrap().matches(request));
            assert!(!exchange.request_filter("other").unwrap().matches(request));
            assert!(exchange.response_filter("kpc-1").unwrap().matches(response));
            assert!(!exchange.response_filter("kpc-2").unwrap().matches(response));
            assert_eq!(
                MessageKind::of_subject(request),
                Some(exchange.request_kind())
            );
            assert_eq!(
                MessageKind::of_subject(response),
                Some(exchange.response_kind())
            );
            assert_eq!(exchange.request_kind().exchange(), Some(exchange));
            assert_eq!(exchange.response_kind().exchange(), Some(exchange));
            for other in Exchange::ALL.into_iter().filter(|o| *o != exchange) {
                assert!(!other.request_filter("epts").unwrap().matches(request));
                assert!(!other.response_filter("kpc-1").unwrap().matches(response));
            }
        }

        let token = endpoint_token_revoked_subject("epts").unwrap().to_string();
        assert_eq!(token, "kaa.v1.events.epts.endpoint.token.revoked");
        let credential = client_credential_revoked_subject("epts")
            .unwrap()
            .to_string();
        assert_eq!(credential, "kaa.v1.events.epts.client.credential.revoked");
        assert_eq!(
            MessageKind::of_subject(&token),
            Some(MessageKind::EndpointTokenRevoked)
        );
        assert_eq!(
            MessageKind::of_subject(&credential),
            Some(MessageKind::ClientCredentialRevoked)
        );
        for provider in [Token::Any, Token::Name("epts")] {
            assert!(
                endpoint_token_revoked_filter(provider)
                    .unwrap()
                    .matches(&token)
            );
            assert!(
                !endpoint_token_revoked_filter(provider)
                    .unwrap()
                    .matches(&credential)
            );
            assert!(
                client_credential_revoked_filter(provider)
                    .unwrap()
                    .matches(&credential)
            );
            assert!(
                !client_credential_revoked_filter(provider)
                    .unwrap()
                    .matches(&token)
            );
        }
        assert!(
            !endpoint_token_revoked_filter(Token::Name("other"))
                .unwrap()
                .matches(&token)
        );
        assert_eq!(
            endpoint_token_revoked_filter(Token::Any).unwrap().as_str(),
            "kaa.v1.events.*.endpoint.token.revoked"
        );
        assert_eq!(
            client_credential_revoked_filter(Token::Any)
                .unwrap()
                .as_str(),
            "kaa.v1.events.*.client.credential.revoked"
        );
    }

    #[test]
    fn every_kind_has_one_place() {
        for kind in MessageKind::ALL {
            assert_eq!(
                MessageKind::from_record_name(kind.record_name()),
                Some(kind)
            );
            match kind {
                MessageKind::EndpointTokenRevoked | MessageKind::ClientCredentialRevoked => {
                    assert_eq!(kind.exchange(), None);
                    assert_eq!(kind.message_type(), None);
                }
                _ => {
                    let exchange = kind.exchange().expect("an exchange");
                    assert!(exchange.request_kind() == kind || exchange.response_kind() == kind);
                    assert!(kind.message_type().is_some());
                }
            }
        }
        assert_eq!(MessageKind::from_record_name("ConnectedEvent"), None);
    }

    #[test]
    fn invalid_names_are_rejected() {
        for name in ["", "a.b", "*", ">", "k pc", "kpc\n"] {
            for exchange in Exchange::ALL {
                assert!(exchange.request_subject(name).is_err(), "{name:?}");
                assert!(exchange.response_subject(name).is_err(), "{name:?}");
                assert!(exchange.request_filter(name).is_err(), "{name:?}");
                assert!(exchange.response_filter(name).is_err(), "{name:?}");
            }
            assert!(endpoint_token_revoked_subject(name).is_err());
            assert!(client_credential_revoked_subject(name).is_err());
            assert!(endpoint_token_revoked_filter(Token::Name(name)).is_err());
            assert!(client_credential_revoked_filter(Token::Name(name)).is_err());
        }
    }

    #[test]
    fn subjects_that_are_not_ecap() {
        for subject in [
            "",
            "kaa.v1.service.epts.cdtp.request",
            "kaa.v1.service.epts.ecap.ep-token",
            "kaa.v1.service.epts.esp.ep-token-request",
            "kaa.v1.replica.kpc-1.ecap.unknown-response",
            "kaa.v1.events.epts.endpoint.token.issued",
            "kaa.v1.events.epts.endpoint.credential.revoked",
            "kaa.v1.events.epts.client.token.revoked",
            "kaa.v1.events.kpc.endpoint.connectivity.connected",
            "kaa.v1.events.*.endpoint.token.revoked",
            "kaa.v1.service.*.ecap.ep-token-request",
            "_INBOX.abc.def",
        ] {
            assert_eq!(MessageKind::of_subject(subject), None, "{subject}");
        }
        // Extra tokens after an event type are accepted.
        assert_eq!(
            MessageKind::of_subject("kaa.v1.events.epts.endpoint.token.revoked.t1"),
            Some(MessageKind::EndpointTokenRevoked)
        );
        // A request type on a replica subject is still that request.
        assert_eq!(
            MessageKind::of_subject("kaa.v1.replica.epts-1.ecap.client-certificate-request"),
            Some(MessageKind::ClientCertificateValidationRequest)
        );
    }
}
