//! [`ElceEvent`]: any 9/ELCE event, decoded by the subject it arrived on, for
//! listeners subscribed with a wildcard filter.

use bytes::BufMut;
use kaa_ism::avro::{Decode, DecodeError, Encode};
use kaa_ism::common::CommonFields;
use kaa_ism::subject::{EventSubject, SubjectError, SubjectFilter, Token};

use crate::{
    AppVersionUpdatedEvent, ConnectedEvent, DecodeLimits, DisconnectedEvent, EventKind,
    RegisteredEvent, TrafficReportEvent, UnregisteredEvent,
};

/// Why a received 9/ELCE message could not be turned into an [`ElceEvent`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EventError {
    /// The subject is not a valid concrete 3/ISM subject.
    #[error("invalid subject: {0}")]
    Subject(#[from] SubjectError),
    /// A valid subject, but not a broadcast event about endpoints
    /// (`kaa.v1.events.{originator}.endpoint.…`).
    #[error("{0:?} is not an endpoint event subject (kaa.v1.events.{{originator}}.endpoint.…)")]
    NotEndpointEvent(String),
    /// An endpoint event this version does not know, e.g. 6/CDTP's
    /// `config.updated` or a future `connectivity.dormant`. Listeners on a wide
    /// filter usually skip these.
    #[error("unknown endpoint event {group}.{event_type}")]
    UnknownEvent {
        /// The `{event-group}` token.
        group: String,
        /// The `{event-type}` token.
        event_type: String,
    },
    /// The subject is fine; the datum is not a valid record for it.
    #[error(transparent)]
    Decode(#[from] DecodeError),
}

/// A 9/ELCE event record: its [`EventKind`], and through it its subject and filter.
pub trait EndpointEvent: Encode + CommonFields {
    /// Which event this record is.
    const KIND: EventKind;

    /// The subject an originator publishes this event on.
    ///
    /// ```
    /// use kaa_elce::{EndpointEvent, RegisteredEvent};
    /// assert_eq!(
    ///     RegisteredEvent::subject("epr")?.to_string(),
    ///     "kaa.v1.events.epr.endpoint.lifecycle.registered"
    /// );
    /// # Ok::<(), kaa_ism::subject::SubjectError>(())
    /// ```
    fn subject(originator: &str) -> Result<EventSubject<'_>, SubjectError> {
        Self::KIND.subject(originator)
    }

    /// The filter for this event from `originator`, or any originator with [`Token::Any`].
    fn filter(originator: Token<'_>) -> Result<SubjectFilter, SubjectError> {
        Self::KIND.filter(originator)
    }
}

/// Any 9/ELCE event, as a listener on a wildcard subject receives it.
///
/// ```
/// use kaa_elce::{ElceEvent, EndpointEvent, UnregisteredEvent};
/// use kaa_ism::avro::Encode;
///
/// let event = UnregisteredEvent {
///     correlation_id: "c-9".into(),
///     timestamp: 1_700_000_000_000,
///     app_version_name: "sensor-v2".into(),
///     endpoint_id: "ep-7".into(),
///     originator_replica_id: "epr-1".into(),
///     ..Default::default()
/// };
/// let subject = UnregisteredEvent::subject("epr")?.to_string();
/// let datum = event.to_vec();
///
/// // What a listener on `kaa.v1.events.*.endpoint.lifecycle.*` does with a message:
/// match ElceEvent::decode(&subject, &datum)? {
///     ElceEvent::Unregistered(e) => assert_eq!(e.endpoint_id, "ep-7"),
///     other => panic!("unexpected {:?}", other.kind()),
/// }
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ElceEvent<'a> {
    /// `connectivity.connected`.
    Connected(ConnectedEvent<'a>),
    /// `connectivity.disconnected`.
    Disconnected(DisconnectedEvent<'a>),
    /// `lifecycle.registered`.
    Registered(RegisteredEvent<'a>),
    /// `lifecycle.appversion-updated`.
    AppVersionUpdated(AppVersionUpdatedEvent<'a>),
    /// `lifecycle.unregistered`.
    Unregistered(UnregisteredEvent<'a>),
    /// `traffic-reporting.payload`.
    TrafficReport(TrafficReportEvent<'a>),
}

/// Calls `$body` with the inner event bound to `$e`, whatever the variant.
macro_rules! each_variant {
    ($self:expr, $e:ident => $body:expr) => {
        match $self {
            ElceEvent::Connected($e) => $body,
            ElceEvent::Disconnected($e) => $body,
            ElceEvent::Registered($e) => $body,
            ElceEvent::AppVersionUpdated($e) => $body,
            ElceEvent::Unregistered($e) => $body,
            ElceEvent::TrafficReport($e) => $body,
        }
    };
}

impl<'a> ElceEvent<'a> {
    /// Decodes a datum received on the concrete `subject`, choosing the record by the
    /// subject's event group and type. No endpoint limit; see
    /// [`ElceEvent::decode_with_limits`].
    pub fn decode(subject: &str, datum: &'a [u8]) -> Result<Self, EventError> {
        Self::decode_with_limits(subject, datum, DecodeLimits::UNLIMITED)
    }

    /// [`ElceEvent::decode`] with [`DecodeLimits`].
    pub fn decode_with_limits(
        subject: &str,
        datum: &'a [u8],
        limits: DecodeLimits,
    ) -> Result<Self, EventError> {
        let (kind, _) = EventKind::parse_subject(subject)?;
        Ok(Self::decode_kind(kind, datum, limits)?)
    }

    /// Decodes a datum of a known `kind`.
    pub fn decode_kind(
        kind: EventKind,
        datum: &'a [u8],
        limits: DecodeLimits,
    ) -> Result<Self, DecodeError> {
        Ok(match kind {
            EventKind::Connected => {
                ElceEvent::Connected(ConnectedEvent::decode_with_limits(datum, limits)?)
            }
            EventKind::Disconnected => {
                ElceEvent::Disconnected(DisconnectedEvent::decode_with_limits(datum, limits)?)
            }
            EventKind::Registered => ElceEvent::Registered(RegisteredEvent::decode(datum)?),
            EventKind::AppVersionUpdated => {
                ElceEvent::AppVersionUpdated(AppVersionUpdatedEvent::decode(datum)?)
            }
            EventKind::Unregistered => ElceEvent::Unregistered(UnregisteredEvent::decode(datum)?),
            EventKind::TrafficReport => {
                ElceEvent::TrafficReport(TrafficReportEvent::decode_with_limits(datum, limits)?)
            }
        })
    }

    /// Which event this is.
    pub fn kind(&self) -> EventKind {
        match self {
            ElceEvent::Connected(_) => EventKind::Connected,
            ElceEvent::Disconnected(_) => EventKind::Disconnected,
            ElceEvent::Registered(_) => EventKind::Registered,
            ElceEvent::AppVersionUpdated(_) => EventKind::AppVersionUpdated,
            ElceEvent::Unregistered(_) => EventKind::Unregistered,
            ElceEvent::TrafficReport(_) => EventKind::TrafficReport,
        }
    }

    /// The subject an originator publishes this event on.
    pub fn subject<'o>(&self, originator: &'o str) -> Result<EventSubject<'o>, SubjectError> {
        self.kind().subject(originator)
    }

    /// `originatorReplicaId`: the replica that published the event (3/ISM lets a
    /// service skip the events it published itself by this).
    pub fn originator_replica_id(&self) -> &str {
        each_variant!(self, e => &e.originator_replica_id)
    }

    /// Copies every borrowed string, detaching the event from the input buffer.
    pub fn into_owned(self) -> ElceEvent<'static> {
        match self {
            ElceEvent::Connected(e) => ElceEvent::Connected(e.into_owned()),
            ElceEvent::Disconnected(e) => ElceEvent::Disconnected(e.into_owned()),
            ElceEvent::Registered(e) => ElceEvent::Registered(e.into_owned()),
            ElceEvent::AppVersionUpdated(e) => ElceEvent::AppVersionUpdated(e.into_owned()),
            ElceEvent::Unregistered(e) => ElceEvent::Unregistered(e.into_owned()),
            ElceEvent::TrafficReport(e) => ElceEvent::TrafficReport(e.into_owned()),
        }
    }
}

impl Encode for ElceEvent<'_> {
    fn encoded_len(&self) -> usize {
        each_variant!(self, e => e.encoded_len())
    }

    fn encode<B: BufMut + ?Sized>(&self, buf: &mut B) {
        each_variant!(self, e => e.encode(buf))
    }
}

impl CommonFields for ElceEvent<'_> {
    fn correlation_id(&self) -> &str {
        each_variant!(self, e => e.correlation_id())
    }

    fn timestamp(&self) -> i64 {
        each_variant!(self, e => e.timestamp)
    }

    fn timeout(&self) -> i64 {
        each_variant!(self, e => e.timeout)
    }
}

macro_rules! endpoint_event {
    ($ty:ident, $variant:ident) => {
        impl EndpointEvent for $ty<'_> {
            const KIND: EventKind = EventKind::$variant;
        }

        impl<'a> From<$ty<'a>> for ElceEvent<'a> {
            fn from(event: $ty<'a>) -> Self {
                ElceEvent::$variant(event)
            }
        }
    };
}

endpoint_event!(ConnectedEvent, Connected);
endpoint_event!(DisconnectedEvent, Disconnected);
endpoint_event!(RegisteredEvent, Registered);
endpoint_event!(AppVersionUpdatedEvent, AppVersionUpdated);
endpoint_event!(UnregisteredEvent, Unregistered);
endpoint_event!(TrafficReportEvent, TrafficReport);

#[cfg(test)]
mod tests {
    use super::*;
    use kaa_ism::avro::DecodeErrorKind;

    fn samples() -> Vec<ElceEvent<'static>> {
        vec![
            ConnectedEvent {
                endpoints: vec![("ep-1".into(), "v1".into())],
                originator_replica_id: "kpc-1".into(),
                ..Default::default()
            }
            .into(),
            DisconnectedEvent {
                endpoints: vec![("ep-1".into(), "v1".into()), ("ep-2".into(), "v1".into())],
                originator_replica_id: "kpc-2".into(),
                ..Default::default()
            }
            .into(),
            RegisteredEvent {
                endpoint_id: "ep-1".into(),
                originator_replica_id: "epr-1".into(),
                ..Default::default()
            }
            .into(),
            AppVersionUpdatedEvent {
                app_version_name: "v2".into(),
                previous_app_version_name: "v1".into(),
                originator_replica_id: "epr-2".into(),
                ..Default::default()
            }
            .into(),
            UnregisteredEvent {
                endpoint_id: "ep-1".into(),
                originator_replica_id: "epr-3".into(),
                ..Default::default()
            }
            .into(),
            TrafficReportEvent {
                originator_replica_id: "kpc-3".into(),
                timeout: 9,
                ..Default::default()
            }
            .into(),
        ]
    }

    #[test]
    fn decode_by_subject() {
        let samples = samples();
        assert_eq!(samples.len(), EventKind::ALL.len());
        for (event, kind) in samples.iter().zip(EventKind::ALL) {
            assert_eq!(event.kind(), kind);
            let subject = event.subject("origin").unwrap().to_string();
            let datum = event.to_vec();
            assert_eq!(datum.len(), event.encoded_len());
            let decoded = ElceEvent::decode(&subject, &datum).unwrap();
            assert_eq!(&decoded, event);
            assert_eq!(
                decoded.originator_replica_id(),
                event.originator_replica_id()
            );
            assert_eq!(decoded.clone().into_owned(), decoded);
        }
        assert_eq!(samples[1].originator_replica_id(), "kpc-2");
        assert_eq!(samples[5].timeout(), 9);
    }

    #[test]
    fn a_datum_on_the_wrong_subject_is_a_decode_error() {
        // A RegisteredEvent datum (6 fields) read as an AppVersionUpdatedEvent (7):
        // the last string is missing.
        let registered = &samples()[2];
        let subject = EventKind::AppVersionUpdated
            .subject("epr")
            .unwrap()
            .to_string();
        let err = ElceEvent::decode(&subject, &registered.to_vec()).unwrap_err();
        let EventError::Decode(e) = err else {
            panic!("{err:?}")
        };
        assert_eq!(
            (e.record, e.field),
            ("AppVersionUpdatedEvent", "originatorReplicaId")
        );
        assert_eq!(e.kind, DecodeErrorKind::UnexpectedEnd);
    }

    #[test]
    fn subject_errors_come_before_decoding() {
        let datum = samples()[0].to_vec();
        assert!(matches!(
            ElceEvent::decode("kaa.v1.events.ecr.endpoint.config.updated", &datum),
            Err(EventError::UnknownEvent { group, event_type }) if group == "config" && event_type == "updated"
        ));
        assert!(matches!(
            ElceEvent::decode("kaa.v1.service.cmx.esp.ClientData", &datum),
            Err(EventError::NotEndpointEvent(_))
        ));
        assert!(matches!(
            ElceEvent::decode("kaa.v1.events.*.endpoint.connectivity.connected", &datum),
            Err(EventError::Subject(_))
        ));
    }

    #[test]
    fn limits_apply_through_the_enum() {
        let datum = samples()[1].to_vec();
        let subject = EventKind::Disconnected.subject("kpc").unwrap().to_string();
        let one = DecodeLimits::with_max_endpoints(1);
        assert!(matches!(
            ElceEvent::decode_with_limits(&subject, &datum, one),
            Err(EventError::Decode(e)) if e.field == "endpoints"
        ));
        let two = DecodeLimits::with_max_endpoints(2);
        assert!(ElceEvent::decode_with_limits(&subject, &datum, two).is_ok());
    }

    #[test]
    fn trait_subjects_match_the_kinds() {
        assert_eq!(
            ConnectedEvent::subject("kpc").unwrap().to_string(),
            "kaa.v1.events.kpc.endpoint.connectivity.connected"
        );
        assert_eq!(
            TrafficReportEvent::filter(Token::Any).unwrap().as_str(),
            "kaa.v1.events.*.endpoint.traffic-reporting.payload"
        );
        assert_eq!(
            <UnregisteredEvent<'_> as EndpointEvent>::KIND,
            EventKind::Unregistered
        );
    }
}
