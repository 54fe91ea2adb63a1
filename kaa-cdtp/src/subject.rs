//! 6/CDTP NATS subjects, and the filters listeners subscribe with.
//!
//! | message | subject |
//! |---|---|
//! | [`ConfigRequest`](crate::ConfigRequest) | `kaa.v1.service.{provider}.cdtp.request` |
//! | [`ConfigResponse`](crate::ConfigResponse) | the request's `replyTo`, recommended `kaa.v1.replica.{consumer-replica}.cdtp.response` |
//! | [`ConfigUpdated`](crate::ConfigUpdated) | `kaa.v1.events.{provider}.endpoint.config.updated` |
//! | [`ConfigApplied`](crate::ConfigApplied) | `kaa.v1.events.{consumer}.endpoint.config.applied` |
//! | [`ProviderStarted`](crate::ProviderStarted) (kaa-rs extension, not in the RFC) | `kaa.v1.events.{provider}.provider.started` |
//!
//! A provider (e.g. ECR) subscribes to [`request_filter`] in a queue group named
//! after its instance; a consumer (e.g. CMX) subscribes to [`response_filter`] for
//! its replica and to [`config_updated_filter`] for the provider it uses (or any
//! provider, with [`Token::Any`]); a provider that keeps a status history
//! subscribes to [`config_applied_filter`].
//!
//! Every name is validated as a subject token: a name holding `.`, `*`, `>` or
//! whitespace is an error, never escaped.
//!
//! ```
//! use kaa_cdtp::subject::{self, MessageType};
//! use kaa_ism::subject::Token;
//!
//! assert_eq!(subject::request_subject("ecr")?.to_string(), "kaa.v1.service.ecr.cdtp.request");
//! assert_eq!(subject::response_subject("cmx-1")?.to_string(), "kaa.v1.replica.cmx-1.cdtp.response");
//! assert_eq!(
//!     subject::config_updated_subject("ecr")?.to_string(),
//!     "kaa.v1.events.ecr.endpoint.config.updated"
//! );
//!
//! // CMX listens to pushes from its provider only; ECR to applied reports from anyone.
//! let pushes = subject::config_updated_filter(Token::Name("ecr"))?;
//! assert!(pushes.matches("kaa.v1.events.ecr.endpoint.config.updated"));
//! assert!(!pushes.matches("kaa.v1.events.other-ecr.endpoint.config.updated"));
//! let applied = subject::config_applied_filter(Token::Any)?;
//! assert_eq!(applied.as_str(), "kaa.v1.events.*.endpoint.config.applied");
//!
//! assert_eq!(
//!     MessageType::of_subject("kaa.v1.events.cmx.endpoint.config.applied"),
//!     Some(MessageType::ConfigApplied)
//! );
//! # Ok::<(), kaa_ism::subject::SubjectError>(())
//! ```

use kaa_ism::subject::{
    EventSubject, ReplicaSubject, ServiceSubject, Subject, SubjectError, SubjectFilter, Token,
};

/// The 3/ISM protocol name of 6/CDTP, used in its targeted subjects.
pub const PROTOCOL: &str = "cdtp";
/// The message type token of a configuration request.
pub const REQUEST: &str = "request";
/// The message type token of a configuration response.
pub const RESPONSE: &str = "response";
/// The target entity type of the 6/CDTP broadcasts.
pub const ENTITY: &str = "endpoint";
/// The event group of the 6/CDTP broadcasts.
pub const EVENT_GROUP: &str = "config";
/// The event type of [`ConfigUpdated`](crate::ConfigUpdated).
pub const UPDATED: &str = "updated";
/// The event type of [`ConfigApplied`](crate::ConfigApplied).
pub const APPLIED: &str = "applied";

/// The four 6/CDTP messages, as told apart by their subjects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MessageType {
    /// `….cdtp.request`
    ConfigRequest,
    /// `….cdtp.response`
    ConfigResponse,
    /// `kaa.v1.events.{provider}.endpoint.config.updated`
    ConfigUpdated,
    /// `kaa.v1.events.{consumer}.endpoint.config.applied`
    ConfigApplied,
}

impl MessageType {
    /// The message a received subject carries; `None` for anything that is not a
    /// 6/CDTP subject (or not a valid 3/ISM subject). Targeted `request` and
    /// `response` are recognized on both instance-wide and replica subjects;
    /// broadcasts with extra tokens after the event type are not recognized.
    pub fn of_subject(subject: &str) -> Option<MessageType> {
        let (protocol, message_type) = match Subject::parse(subject).ok()? {
            Subject::Service(s) => (s.protocol(), s.message_type()),
            Subject::Replica(r) => (r.protocol(), r.message_type()),
            Subject::Event(e) => {
                if e.entity() != ENTITY || e.group() != EVENT_GROUP || e.extra().next().is_some() {
                    return None;
                }
                return match e.event_type() {
                    UPDATED => Some(MessageType::ConfigUpdated),
                    APPLIED => Some(MessageType::ConfigApplied),
                    _ => None,
                };
            }
        };
        match (protocol, message_type) {
            (PROTOCOL, REQUEST) => Some(MessageType::ConfigRequest),
            (PROTOCOL, RESPONSE) => Some(MessageType::ConfigResponse),
            _ => None,
        }
    }
}

/// `kaa.v1.service.{provider}.cdtp.request`: where a consumer sends a
/// [`ConfigRequest`](crate::ConfigRequest) (with a `replyTo`).
pub fn request_subject(provider: &str) -> Result<ServiceSubject<'_>, SubjectError> {
    ServiceSubject::new(provider, PROTOCOL, REQUEST)
}

/// `kaa.v1.replica.{consumer_replica}.cdtp.response`: the `replyTo` a consumer
/// replica sets on its requests, per 3/ISM session affinity; the provider publishes
/// the [`ConfigResponse`](crate::ConfigResponse) there.
pub fn response_subject(consumer_replica: &str) -> Result<ReplicaSubject<'_>, SubjectError> {
    ReplicaSubject::new(consumer_replica, PROTOCOL, RESPONSE)
}

/// `kaa.v1.events.{provider}.endpoint.config.updated`: where a provider broadcasts
/// [`ConfigUpdated`](crate::ConfigUpdated).
pub fn config_updated_subject(provider: &str) -> Result<EventSubject<'_>, SubjectError> {
    EventSubject::new(provider, ENTITY, EVENT_GROUP, UPDATED)
}

/// `kaa.v1.events.{consumer}.endpoint.config.applied`: where a consumer broadcasts
/// [`ConfigApplied`](crate::ConfigApplied).
pub fn config_applied_subject(consumer: &str) -> Result<EventSubject<'_>, SubjectError> {
    EventSubject::new(consumer, ENTITY, EVENT_GROUP, APPLIED)
}

/// The filter a provider instance subscribes to for requests (in a queue group
/// named `provider`): `kaa.v1.service.{provider}.cdtp.request`.
pub fn request_filter(provider: &str) -> Result<SubjectFilter, SubjectError> {
    SubjectFilter::parse(&request_subject(provider)?.to_string())
}

/// The filter a consumer replica subscribes to for responses:
/// `kaa.v1.replica.{consumer_replica}.cdtp.response`.
pub fn response_filter(consumer_replica: &str) -> Result<SubjectFilter, SubjectError> {
    SubjectFilter::parse(&response_subject(consumer_replica)?.to_string())
}

/// The filter for configuration pushes from one provider (`Token::Name`) or any
/// (`Token::Any`): `kaa.v1.events.{provider|*}.endpoint.config.updated`.
pub fn config_updated_filter(provider: Token<'_>) -> Result<SubjectFilter, SubjectError> {
    SubjectFilter::events(
        provider,
        Token::Name(ENTITY),
        Token::Name(EVENT_GROUP),
        Token::Name(UPDATED),
    )
}

/// The filter for applied reports from one consumer (`Token::Name`) or any
/// (`Token::Any`): `kaa.v1.events.{consumer|*}.endpoint.config.applied`.
pub fn config_applied_filter(consumer: Token<'_>) -> Result<SubjectFilter, SubjectError> {
    SubjectFilter::events(
        consumer,
        Token::Name(ENTITY),
        Token::Name(EVENT_GROUP),
        Token::Name(APPLIED),
    )
}

/// The target entity of [`ProviderStarted`](crate::ProviderStarted) broadcasts
/// (kaa-rs extension).
pub const PROVIDER_ENTITY: &str = "provider";
/// The event of [`ProviderStarted`](crate::ProviderStarted) broadcasts (kaa-rs
/// extension).
pub const STARTED: &str = "started";

/// `kaa.v1.events.{provider}.provider.started`: where every provider replica
/// broadcasts [`ProviderStarted`](crate::ProviderStarted) (kaa-rs extension). The
/// subject has no event group, so it is a string rather than an [`EventSubject`].
pub fn provider_started_subject(provider: &str) -> Result<String, SubjectError> {
    kaa_ism::subject::validate_token(provider, "originator service instance name")?;
    Ok(format!(
        "{}.events.{provider}.{PROVIDER_ENTITY}.{STARTED}",
        kaa_ism::subject::PREFIX
    ))
}

/// The filter for provider starts from one provider (`Token::Name`) or any
/// (`Token::Any`): `kaa.v1.events.{provider|*}.provider.started`.
pub fn provider_started_filter(provider: Token<'_>) -> Result<SubjectFilter, SubjectError> {
    match provider {
        Token::Name(name) => SubjectFilter::parse(&provider_started_subject(name)?),
        Token::Any => SubjectFilter::parse(&format!(
            "{}.events.*.{PROVIDER_ENTITY}.{STARTED}",
            kaa_ism::subject::PREFIX
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc_subjects() {
        assert_eq!(
            request_subject("ecr").unwrap().to_string(),
            "kaa.v1.service.ecr.cdtp.request"
        );
        assert_eq!(
            response_subject("cmx-replica-7").unwrap().to_string(),
            "kaa.v1.replica.cmx-replica-7.cdtp.response"
        );
        assert_eq!(
            config_updated_subject("ecr").unwrap().to_string(),
            "kaa.v1.events.ecr.endpoint.config.updated"
        );
        assert_eq!(
            config_applied_subject("cmx").unwrap().to_string(),
            "kaa.v1.events.cmx.endpoint.config.applied"
        );
    }

    #[test]
    fn invalid_names_are_rejected() {
        for name in ["", "a.b", "*", ">", "a b", "x\t"] {
            assert!(request_subject(name).is_err(), "{name:?}");
            assert!(response_subject(name).is_err(), "{name:?}");
            assert!(config_updated_subject(name).is_err(), "{name:?}");
            assert!(config_applied_subject(name).is_err(), "{name:?}");
            assert!(request_filter(name).is_err(), "{name:?}");
            assert!(response_filter(name).is_err(), "{name:?}");
            assert!(
                config_updated_filter(Token::Name(name)).is_err(),
                "{name:?}"
            );
            assert!(
                config_applied_filter(Token::Name(name)).is_err(),
                "{name:?}"
            );
        }
    }

    #[test]
    fn filters() {
        let any = config_updated_filter(Token::Any).unwrap();
        assert_eq!(any.as_str(), "kaa.v1.events.*.endpoint.config.updated");
        assert!(any.matches("kaa.v1.events.ecr.endpoint.config.updated"));
        assert!(any.matches("kaa.v1.events.ecr-2.endpoint.config.updated"));
        assert!(!any.matches("kaa.v1.events.ecr.endpoint.config.applied"));
        assert!(!any.matches("kaa.v1.events.ecr.endpoint.config.updated.extra"));

        let one = config_applied_filter(Token::Name("cmx")).unwrap();
        assert_eq!(one.as_str(), "kaa.v1.events.cmx.endpoint.config.applied");
        assert!(one.matches("kaa.v1.events.cmx.endpoint.config.applied"));
        assert!(!one.matches("kaa.v1.events.cmx2.endpoint.config.applied"));
        assert!(!one.matches("kaa.v1.events.cmx.endpoint.config.updated"));

        let req = request_filter("ecr").unwrap();
        assert!(req.matches("kaa.v1.service.ecr.cdtp.request"));
        assert!(!req.matches("kaa.v1.service.ecr.cdtp.response"));
        let resp = response_filter("cmx-1").unwrap();
        assert!(resp.matches("kaa.v1.replica.cmx-1.cdtp.response"));
        assert!(!resp.matches("kaa.v1.replica.cmx-2.cdtp.response"));
    }

    #[test]
    fn message_type_of_subject() {
        let cases = [
            (
                "kaa.v1.service.ecr.cdtp.request",
                Some(MessageType::ConfigRequest),
            ),
            (
                "kaa.v1.replica.cmx-1.cdtp.response",
                Some(MessageType::ConfigResponse),
            ),
            (
                "kaa.v1.service.cmx.cdtp.response",
                Some(MessageType::ConfigResponse),
            ),
            (
                "kaa.v1.events.ecr.endpoint.config.updated",
                Some(MessageType::ConfigUpdated),
            ),
            (
                "kaa.v1.events.cmx.endpoint.config.applied",
                Some(MessageType::ConfigApplied),
            ),
            ("kaa.v1.events.cmx.endpoint.config.applied.x", None),
            ("kaa.v1.events.cmx.endpoint.config.deleted", None),
            ("kaa.v1.events.cmx.endpoint.lifecycle.updated", None),
            ("kaa.v1.events.cmx.device.config.updated", None),
            ("kaa.v1.service.ecr.esp.request", None),
            ("kaa.v1.service.ecr.cdtp.other", None),
            ("kaa.v1.service.*.cdtp.request", None),
            ("", None),
        ];
        for (subject, expected) in cases {
            assert_eq!(MessageType::of_subject(subject), expected, "{subject}");
        }
    }
}
