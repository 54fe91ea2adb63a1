//! [`EcapMessage`]: any 16/ECAP record, decoded by its [`MessageKind`] or by the
//! subject it arrived on.

use bytes::BufMut;
use kaa_ism::avro::{Decode, DecodeError, Encode};
use kaa_ism::common::CommonFields;
use kaa_ism::subject::SubjectError;

use crate::{
    ClientCertificateValidationRequest, ClientCertificateValidationResponse,
    ClientCredentialRevokedEvent, ClientUsernamePasswordValidationRequest,
    ClientUsernamePasswordValidationResponse, EndpointTokenRevokedEvent,
    EndpointTokenStatusTransitionRequest, EndpointTokenStatusTransitionResponse,
    EndpointTokenValidationRequest, EndpointTokenValidationResponse, MessageKind,
};

/// Why a received message could not be turned into an [`EcapMessage`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MessageError {
    /// The subject is not a valid concrete 3/ISM subject.
    #[error("invalid subject: {0}")]
    Subject(#[from] SubjectError),
    /// A valid subject, but not one of the 16/ECAP subjects.
    #[error("{0:?} is not a 16/ECAP subject")]
    NotEcap(String),
    /// The subject is fine; the datum is not a valid record for it.
    #[error(transparent)]
    Decode(#[from] DecodeError),
}

/// Any 16/ECAP record.
///
/// ```
/// use kaa_ecap::subject::endpoint_token_revoked_subject;
/// use kaa_ecap::{EcapMessage, EndpointTokenRevokedEvent, MessageKind};
/// use kaa_ism::avro::Encode;
///
/// let event = EndpointTokenRevokedEvent {
///     correlation_id: "c-9".into(),
///     timestamp: 1_700_000_000_000,
///     app_name: "smart-kettle".into(),
///     endpoint_id: "ep-7".into(),
///     token_ids: vec!["token-1".into(), "token-2".into()],
///     originator_replica_id: "epts-1".into(),
///     ..Default::default()
/// };
/// let subject = endpoint_token_revoked_subject("epts")?.to_string();
/// let datum = event.to_vec();
///
/// // What a listener on several 16/ECAP subjects does with a message:
/// match EcapMessage::decode(&subject, &datum)? {
///     EcapMessage::EndpointTokenRevoked(e) => assert_eq!(e.token_ids.len(), 2),
///     other => panic!("unexpected {:?}", other.kind()),
/// }
/// // A consumer reading a reply on its `replyTo` knows what it asked for.
/// let decoded = EcapMessage::decode_kind(MessageKind::EndpointTokenRevoked, &datum)?;
/// assert_eq!(decoded, event.into());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum EcapMessage<'a> {
    /// An endpoint token validation request.
    EndpointTokenValidationRequest(EndpointTokenValidationRequest<'a>),
    /// An endpoint token validation response.
    EndpointTokenValidationResponse(EndpointTokenValidationResponse<'a>),
    /// An endpoint token status transition request.
    EndpointTokenStatusTransitionRequest(EndpointTokenStatusTransitionRequest<'a>),
    /// An endpoint token status transition response.
    EndpointTokenStatusTransitionResponse(EndpointTokenStatusTransitionResponse<'a>),
    /// An endpoint token revoked event.
    EndpointTokenRevoked(EndpointTokenRevokedEvent<'a>),
    /// A client username and password validation request.
    ClientUsernamePasswordValidationRequest(ClientUsernamePasswordValidationRequest<'a>),
    /// A client username and password validation response.
    ClientUsernamePasswordValidationResponse(ClientUsernamePasswordValidationResponse<'a>),
    /// A client certificate validation request.
    ClientCertificateValidationRequest(ClientCertificateValidationRequest<'a>),
    /// A client certificate validation response.
    ClientCertificateValidationResponse(ClientCertificateValidationResponse<'a>),
    /// A client credential revoked event.
    ClientCredentialRevoked(ClientCredentialRevokedEvent<'a>),
}

/// Calls `$body` with the inner record bound to `$m`, whatever the variant.
macro_rules! each_variant {
    ($self:expr, $m:ident => $body:expr) => {
        match $self {
            EcapMessage::EndpointTokenValidationRequest($m) => $body,
            EcapMessage::EndpointTokenValidationResponse($m) => $body,
            EcapMessage::EndpointTokenStatusTransitionRequest($m) => $body,
            EcapMessage::EndpointTokenStatusTransitionResponse($m) => $body,
            EcapMessage::EndpointTokenRevoked($m) => $body,
            EcapMessage::ClientUsernamePasswordValidationRequest($m) => $body,
            EcapMessage::ClientUsernamePasswordValidationResponse($m) => $body,
            EcapMessage::ClientCertificateValidationRequest($m) => $body,
            EcapMessage::ClientCertificateValidationResponse($m) => $body,
            EcapMessage::ClientCredentialRevoked($m) => $body,
        }
    };
}

/// For each record: its variant, and the `KIND` constant and `From` conversion.
macro_rules! message_kinds {
    ($($ty:ident => $variant:ident),+ $(,)?) => {
        impl<'a> EcapMessage<'a> {
            /// Decodes a datum of a known `kind`.
            pub fn decode_kind(kind: MessageKind, datum: &'a [u8]) -> Result<Self, DecodeError> {
                Ok(match kind {
                    $(MessageKind::$variant => EcapMessage::$variant($ty::decode(datum)?),)+
                })
            }

            /// Which record this is.
            pub fn kind(&self) -> MessageKind {
                match self {
                    $(EcapMessage::$variant(_) => MessageKind::$variant,)+
                }
            }

            /// Copies every borrowed string, detaching the message from the input
            /// buffer.
            pub fn into_owned(self) -> EcapMessage<'static> {
                match self {
                    $(EcapMessage::$variant(m) => EcapMessage::$variant(m.into_owned()),)+
                }
            }
        }

        $(
            impl $ty<'_> {
                /// Which record this is.
                pub const KIND: MessageKind = MessageKind::$variant;
            }

            impl<'a> From<$ty<'a>> for EcapMessage<'a> {
                fn from(message: $ty<'a>) -> Self {
                    EcapMessage::$variant(message)
                }
            }
        )+
    };
}

message_kinds!(
    EndpointTokenValidationRequest => EndpointTokenValidationRequest,
    EndpointTokenValidationResponse => EndpointTokenValidationResponse,
    EndpointTokenStatusTransitionRequest => EndpointTokenStatusTransitionRequest,
    EndpointTokenStatusTransitionResponse => EndpointTokenStatusTransitionResponse,
    EndpointTokenRevokedEvent => EndpointTokenRevoked,
    ClientUsernamePasswordValidationRequest => ClientUsernamePasswordValidationRequest,
    ClientUsernamePasswordValidationResponse => ClientUsernamePasswordValidationResponse,
    ClientCertificateValidationRequest => ClientCertificateValidationRequest,
    ClientCertificateValidationResponse => ClientCertificateValidationResponse,
    ClientCredentialRevokedEvent => ClientCredentialRevoked,
);

impl<'a> EcapMessage<'a> {
    /// Decodes a datum received on the concrete `subject`, choosing the record by the
    /// subject ([`MessageKind::of_subject`]).
    pub fn decode(subject: &str, datum: &'a [u8]) -> Result<Self, MessageError> {
        let Some(kind) = MessageKind::of_subject(subject) else {
            // Tell a malformed subject from a valid one of another protocol.
            kaa_ism::subject::Subject::parse(subject)?;
            return Err(MessageError::NotEcap(subject.to_owned()));
        };
        Ok(Self::decode_kind(kind, datum)?)
    }
}

impl Encode for EcapMessage<'_> {
    fn encoded_len(&self) -> usize {
        each_variant!(self, m => m.encoded_len())
    }

    fn encode<B: BufMut + ?Sized>(&self, buf: &mut B) {
        each_variant!(self, m => m.encode(buf))
    }
}

impl CommonFields for EcapMessage<'_> {
    fn correlation_id(&self) -> &str {
        each_variant!(self, m => m.correlation_id())
    }

    fn timestamp(&self) -> i64 {
        each_variant!(self, m => m.timestamp)
    }

    fn timeout(&self) -> i64 {
        each_variant!(self, m => m.timeout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Exchange;
    use crate::subject::{client_credential_revoked_subject, endpoint_token_revoked_subject};
    use kaa_ism::avro::DecodeErrorKind;

    fn samples() -> Vec<EcapMessage<'static>> {
        vec![
            EndpointTokenValidationRequest {
                app_name: "app".into(),
                token: "tok".into(),
                ..Default::default()
            }
            .into(),
            EndpointTokenValidationResponse {
                token_id: Some("t-1".into()),
                endpoint_id: Some("ep-1".into()),
                status_code: 200,
                ..Default::default()
            }
            .into(),
            EndpointTokenStatusTransitionRequest {
                target_status: "suspended".into(),
                ..Default::default()
            }
            .into(),
            EndpointTokenStatusTransitionResponse {
                status_code: 204,
                ..Default::default()
            }
            .into(),
            EndpointTokenRevokedEvent {
                token_ids: vec!["t-1".into()],
                originator_replica_id: "epts-1".into(),
                ..Default::default()
            }
            .into(),
            ClientUsernamePasswordValidationRequest {
                username: Some("u".into()),
                ..Default::default()
            }
            .into(),
            ClientUsernamePasswordValidationResponse {
                status_code: 401,
                reason_phrase: Some("Unauthorized".into()),
                ..Default::default()
            }
            .into(),
            ClientCertificateValidationRequest {
                issuer: "CN=ca".into(),
                serial_number: "12345".into(),
                ..Default::default()
            }
            .into(),
            ClientCertificateValidationResponse {
                credential_id: Some("c-1".into()),
                status_code: 200,
                timeout: 9,
                ..Default::default()
            }
            .into(),
            ClientCredentialRevokedEvent {
                credential_id: "c-1".into(),
                originator_replica_id: "epts-2".into(),
                ..Default::default()
            }
            .into(),
        ]
    }

    fn subject_of(kind: MessageKind) -> String {
        match kind.exchange() {
            Some(exchange) if exchange.request_kind() == kind => {
                exchange.request_subject("epts").unwrap().to_string()
            }
            Some(exchange) => exchange.response_subject("kpc-1").unwrap().to_string(),
            None if kind == MessageKind::EndpointTokenRevoked => {
                endpoint_token_revoked_subject("epts").unwrap().to_string()
            }
            None => client_credential_revoked_subject("epts")
                .unwrap()
                .to_string(),
        }
    }

    #[test]
    fn decode_by_kind_and_subject() {
        let samples = samples();
        assert_eq!(samples.len(), MessageKind::ALL.len());
        for (message, kind) in samples.iter().zip(MessageKind::ALL) {
            assert_eq!(message.kind(), kind);
            let datum = message.to_vec();
            assert_eq!(datum.len(), message.encoded_len());
            assert_eq!(&EcapMessage::decode_kind(kind, &datum).unwrap(), message);
            let subject = subject_of(kind);
            assert_eq!(&EcapMessage::decode(&subject, &datum).unwrap(), message);
            assert_eq!(&message.clone().into_owned(), message);
        }
        assert_eq!(samples[8].timeout(), 9);
        assert_eq!(
            EndpointTokenRevokedEvent::KIND,
            MessageKind::EndpointTokenRevoked
        );
        assert_eq!(
            Exchange::ClientCertificate.response_kind(),
            ClientCertificateValidationResponse::KIND
        );
    }

    #[test]
    fn a_datum_on_the_wrong_subject_is_a_decode_error() {
        // A validation request (5 fields) read as a status transition request (6):
        // targetStatus is missing.
        let datum = samples()[0].to_vec();
        let subject = Exchange::EndpointTokenStatusTransition
            .request_subject("epts")
            .unwrap()
            .to_string();
        let err = EcapMessage::decode(&subject, &datum).unwrap_err();
        let MessageError::Decode(e) = err else {
            panic!("{err:?}")
        };
        assert_eq!(
            (e.record, e.field),
            ("EndpointTokenStatusTransitionRequest", "targetStatus")
        );
        assert_eq!(e.kind, DecodeErrorKind::UnexpectedEnd);
    }

    #[test]
    fn subject_errors_come_before_decoding() {
        let datum = samples()[0].to_vec();
        assert!(matches!(
            EcapMessage::decode("kaa.v1.service.ecr.cdtp.request", &datum),
            Err(MessageError::NotEcap(s)) if s == "kaa.v1.service.ecr.cdtp.request"
        ));
        assert!(matches!(
            EcapMessage::decode("kaa.v1.service.*.ecap.ep-token-request", &datum),
            Err(MessageError::Subject(_))
        ));
        assert!(matches!(
            EcapMessage::decode("_INBOX.abc", &datum),
            Err(MessageError::Subject(_))
        ));
    }
}
