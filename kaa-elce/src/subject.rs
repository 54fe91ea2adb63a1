//! 9/ELCE subjects: `kaa.v1.events.{originator}.endpoint.{event-group}.{event-type}`,
//! and the wildcard filters listeners subscribe with.
//!
//! Subjects are built with [`kaa_ism::subject`], so the originator name is validated
//! (no `.`, `*`, `>`, whitespace or control characters) and never escaped.

use kaa_ism::subject::{EventSubject, Subject, SubjectError, SubjectFilter, Token};

use crate::EventError;

/// The target entity type of every 9/ELCE event.
pub const ENTITY: &str = "endpoint";

/// A 9/ELCE event group: the `{event-group}` subject token.
///
/// Listeners subscribe by group, by kind, or to everything about endpoints:
///
/// ```
/// use kaa_elce::{EventGroup, EventKind, endpoint_events_filter};
/// use kaa_ism::subject::Token;
///
/// let subject = EventKind::AppVersionUpdated.subject("epr")?;
/// assert_eq!(subject.to_string(), "kaa.v1.events.epr.endpoint.lifecycle.appversion-updated");
///
/// // Every lifecycle event, from any originator.
/// let lifecycle = EventGroup::Lifecycle.filter(Token::Any)?;
/// assert_eq!(lifecycle.as_str(), "kaa.v1.events.*.endpoint.lifecycle.*");
/// assert!(lifecycle.matches(&subject.to_string()));
///
/// // Connectivity events from one communication service only.
/// let from_kpc = EventGroup::Connectivity.filter(Token::Name("kpc"))?;
/// assert_eq!(from_kpc.as_str(), "kaa.v1.events.kpc.endpoint.connectivity.*");
///
/// // One event type from any originator.
/// let unregistered = EventKind::Unregistered.filter(Token::Any)?;
/// assert_eq!(unregistered.as_str(), "kaa.v1.events.*.endpoint.lifecycle.unregistered");
///
/// // Everything about endpoints (this also matches events of other protocols,
/// // e.g. 6/CDTP `endpoint.config.updated`).
/// let all = endpoint_events_filter(Token::Any)?;
/// assert_eq!(all.as_str(), "kaa.v1.events.*.endpoint.>");
/// # Ok::<(), kaa_ism::subject::SubjectError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum EventGroup {
    /// `connectivity`: communication sessions opened and closed.
    Connectivity,
    /// `lifecycle`: endpoints registered, moved to another app version, unregistered.
    Lifecycle,
    /// `traffic-reporting`: periodic traffic statistics.
    TrafficReporting,
}

impl EventGroup {
    /// Every group this crate knows.
    pub const ALL: [EventGroup; 3] = [
        EventGroup::Connectivity,
        EventGroup::Lifecycle,
        EventGroup::TrafficReporting,
    ];

    /// The subject token, e.g. `connectivity`.
    pub const fn name(self) -> &'static str {
        match self {
            EventGroup::Connectivity => "connectivity",
            EventGroup::Lifecycle => "lifecycle",
            EventGroup::TrafficReporting => "traffic-reporting",
        }
    }

    /// The group whose subject token is `name`.
    pub fn from_name(name: &str) -> Option<Self> {
        EventGroup::ALL.into_iter().find(|g| g.name() == name)
    }

    /// The event kinds of this group.
    pub const fn kinds(self) -> &'static [EventKind] {
        match self {
            EventGroup::Connectivity => &[EventKind::Connected, EventKind::Disconnected],
            EventGroup::Lifecycle => &[
                EventKind::Registered,
                EventKind::AppVersionUpdated,
                EventKind::Unregistered,
            ],
            EventGroup::TrafficReporting => &[EventKind::TrafficReport],
        }
    }

    /// The filter for every event of this group from `originator` (or any
    /// originator with [`Token::Any`]): `kaa.v1.events.{originator}.endpoint.{group}.*`.
    pub fn filter(self, originator: Token<'_>) -> Result<SubjectFilter, SubjectError> {
        SubjectFilter::events(
            originator,
            Token::Name(ENTITY),
            Token::Name(self.name()),
            Token::Any,
        )
    }
}

/// A 9/ELCE event type: which record a subject carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum EventKind {
    /// `connectivity.connected`: [`ConnectedEvent`](crate::ConnectedEvent).
    Connected,
    /// `connectivity.disconnected`: [`DisconnectedEvent`](crate::DisconnectedEvent).
    Disconnected,
    /// `lifecycle.registered`: [`RegisteredEvent`](crate::RegisteredEvent).
    Registered,
    /// `lifecycle.appversion-updated`: [`AppVersionUpdatedEvent`](crate::AppVersionUpdatedEvent).
    AppVersionUpdated,
    /// `lifecycle.unregistered`: [`UnregisteredEvent`](crate::UnregisteredEvent).
    Unregistered,
    /// `traffic-reporting.payload`: [`TrafficReportEvent`](crate::TrafficReportEvent).
    TrafficReport,
}

impl EventKind {
    /// Every event kind this crate knows.
    pub const ALL: [EventKind; 6] = [
        EventKind::Connected,
        EventKind::Disconnected,
        EventKind::Registered,
        EventKind::AppVersionUpdated,
        EventKind::Unregistered,
        EventKind::TrafficReport,
    ];

    /// The event group.
    pub const fn group(self) -> EventGroup {
        match self {
            EventKind::Connected | EventKind::Disconnected => EventGroup::Connectivity,
            EventKind::Registered | EventKind::AppVersionUpdated | EventKind::Unregistered => {
                EventGroup::Lifecycle
            }
            EventKind::TrafficReport => EventGroup::TrafficReporting,
        }
    }

    /// The `{event-type}` subject token, e.g. `appversion-updated`.
    pub const fn event_type(self) -> &'static str {
        match self {
            EventKind::Connected => "connected",
            EventKind::Disconnected => "disconnected",
            EventKind::Registered => "registered",
            EventKind::AppVersionUpdated => "appversion-updated",
            EventKind::Unregistered => "unregistered",
            EventKind::TrafficReport => "payload",
        }
    }

    /// The Avro record name of the event's datum, e.g. `ConnectedEvent`.
    pub const fn record_name(self) -> &'static str {
        match self {
            EventKind::Connected => "ConnectedEvent",
            EventKind::Disconnected => "DisconnectedEvent",
            EventKind::Registered => "RegisteredEvent",
            EventKind::AppVersionUpdated => "AppVersionUpdatedEvent",
            EventKind::Unregistered => "UnregisteredEvent",
            EventKind::TrafficReport => "TrafficReportEvent",
        }
    }

    /// The kind whose subject tokens are `group` and `event_type`.
    pub fn from_tokens(group: &str, event_type: &str) -> Option<Self> {
        EventKind::ALL
            .into_iter()
            .find(|k| k.group().name() == group && k.event_type() == event_type)
    }

    /// The subject an originator publishes this event on:
    /// `kaa.v1.events.{originator}.endpoint.{group}.{type}`.
    pub fn subject(self, originator: &str) -> Result<EventSubject<'_>, SubjectError> {
        EventSubject::new(originator, ENTITY, self.group().name(), self.event_type())
    }

    /// The filter for this event from `originator`, or from any originator with
    /// [`Token::Any`].
    pub fn filter(self, originator: Token<'_>) -> Result<SubjectFilter, SubjectError> {
        SubjectFilter::events(
            originator,
            Token::Name(ENTITY),
            Token::Name(self.group().name()),
            Token::Name(self.event_type()),
        )
    }

    /// Which event a concrete subject carries, and the parsed subject (for its
    /// originator).
    ///
    /// Extra tokens after the event type are accepted and left in the returned
    /// subject: 3/ISM lets protocols append them, and 9/ELCE defines none, so they
    /// cannot change which record the datum is.
    ///
    /// ```
    /// use kaa_elce::{EventError, EventKind};
    ///
    /// let (kind, subject) = EventKind::parse_subject("kaa.v1.events.kpc.endpoint.connectivity.disconnected")?;
    /// assert_eq!(kind, EventKind::Disconnected);
    /// assert_eq!(subject.originator(), "kpc");
    ///
    /// // A connectivity event type this version does not know.
    /// let err = EventKind::parse_subject("kaa.v1.events.kpc.endpoint.connectivity.dormant").unwrap_err();
    /// assert!(matches!(err, EventError::UnknownEvent { .. }));
    /// # Ok::<(), EventError>(())
    /// ```
    pub fn parse_subject(subject: &str) -> Result<(EventKind, EventSubject<'_>), EventError> {
        let Subject::Event(event) = Subject::parse(subject)? else {
            return Err(EventError::NotEndpointEvent(subject.to_owned()));
        };
        if event.entity() != ENTITY {
            return Err(EventError::NotEndpointEvent(subject.to_owned()));
        }
        match EventKind::from_tokens(event.group(), event.event_type()) {
            Some(kind) => Ok((kind, event)),
            None => Err(EventError::UnknownEvent {
                group: event.group().to_owned(),
                event_type: event.event_type().to_owned(),
            }),
        }
    }
}

/// The filter for every event about endpoints from `originator` (or any originator
/// with [`Token::Any`]): `kaa.v1.events.{originator}.endpoint.>`.
///
/// Other protocols publish endpoint events too (6/CDTP `endpoint.config.updated`), so
/// a listener on this filter meets subjects for which [`EventKind::parse_subject`]
/// returns [`EventError::UnknownEvent`].
pub fn endpoint_events_filter(originator: Token<'_>) -> Result<SubjectFilter, SubjectError> {
    SubjectFilter::events_about(originator, Token::Name(ENTITY))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc_subjects() {
        let expected = [
            (
                EventKind::Connected,
                "kaa.v1.events.kpc.endpoint.connectivity.connected",
            ),
            (
                EventKind::Disconnected,
                "kaa.v1.events.kpc.endpoint.connectivity.disconnected",
            ),
            (
                EventKind::Registered,
                "kaa.v1.events.kpc.endpoint.lifecycle.registered",
            ),
            (
                EventKind::AppVersionUpdated,
                "kaa.v1.events.kpc.endpoint.lifecycle.appversion-updated",
            ),
            (
                EventKind::Unregistered,
                "kaa.v1.events.kpc.endpoint.lifecycle.unregistered",
            ),
            (
                EventKind::TrafficReport,
                "kaa.v1.events.kpc.endpoint.traffic-reporting.payload",
            ),
        ];
        assert_eq!(expected.len(), EventKind::ALL.len());
        for (kind, subject) in expected {
            assert_eq!(kind.subject("kpc").unwrap().to_string(), subject);
            let (parsed, event) = EventKind::parse_subject(subject).unwrap();
            assert_eq!(parsed, kind);
            assert_eq!(event.originator(), "kpc");
            // Listeners: the kind, its group and all endpoint events, from any
            // originator or from kpc; not from another originator.
            for filter in [
                kind.filter(Token::Any).unwrap(),
                kind.filter(Token::Name("kpc")).unwrap(),
                kind.group().filter(Token::Any).unwrap(),
                kind.group().filter(Token::Name("kpc")).unwrap(),
                endpoint_events_filter(Token::Any).unwrap(),
            ] {
                assert!(filter.matches(subject), "{filter} ~ {subject}");
            }
            assert!(!kind.filter(Token::Name("epr")).unwrap().matches(subject));
            assert!(kind.group().kinds().contains(&kind));
            // No other kind's filter or other group's filter matches.
            for other in EventKind::ALL.into_iter().filter(|o| *o != kind) {
                assert!(!other.filter(Token::Any).unwrap().matches(subject));
            }
            for other in EventGroup::ALL.into_iter().filter(|g| *g != kind.group()) {
                assert!(!other.filter(Token::Any).unwrap().matches(subject));
                assert!(!other.kinds().contains(&kind));
            }
        }
    }

    #[test]
    fn listener_filters() {
        let cases = [
            (
                EventGroup::Connectivity.filter(Token::Any),
                "kaa.v1.events.*.endpoint.connectivity.*",
            ),
            (
                EventGroup::Lifecycle.filter(Token::Any),
                "kaa.v1.events.*.endpoint.lifecycle.*",
            ),
            (
                EventGroup::TrafficReporting.filter(Token::Name("kpc")),
                "kaa.v1.events.kpc.endpoint.traffic-reporting.*",
            ),
            (
                EventKind::Connected.filter(Token::Name("kpc-1")),
                "kaa.v1.events.kpc-1.endpoint.connectivity.connected",
            ),
            (
                endpoint_events_filter(Token::Name("epr")),
                "kaa.v1.events.epr.endpoint.>",
            ),
        ];
        for (filter, expected) in cases {
            assert_eq!(filter.unwrap().as_str(), expected);
        }
    }

    #[test]
    fn invalid_originators_are_rejected() {
        for originator in ["", "a.b", "*", ">", "k pc", "kpc\n"] {
            for kind in EventKind::ALL {
                assert!(kind.subject(originator).is_err(), "{originator:?}");
                assert!(
                    kind.filter(Token::Name(originator)).is_err(),
                    "{originator:?}"
                );
            }
            assert!(
                EventGroup::Lifecycle
                    .filter(Token::Name(originator))
                    .is_err()
            );
            assert!(endpoint_events_filter(Token::Name(originator)).is_err());
        }
    }

    #[test]
    fn subjects_that_are_not_elce_events() {
        for subject in [
            "kaa.v1.service.cmx.esp.ClientData",
            "kaa.v1.replica.cmx-1.cdtp.response",
            "kaa.v1.events.kpc.client.connectivity.connected",
        ] {
            assert!(
                matches!(EventKind::parse_subject(subject), Err(EventError::NotEndpointEvent(s)) if s == subject),
                "{subject}"
            );
        }
        for subject in [
            "kaa.v1.events.ecr.endpoint.config.updated",
            "kaa.v1.events.kpc.endpoint.connectivity.dormant",
            "kaa.v1.events.kpc.endpoint.lifecycle.connected",
            "kaa.v1.events.kpc.endpoint.traffic-reporting.connected",
        ] {
            assert!(
                matches!(
                    EventKind::parse_subject(subject),
                    Err(EventError::UnknownEvent { .. })
                ),
                "{subject}"
            );
        }
        for subject in [
            "",
            "kaa.v1.events.kpc.endpoint.connectivity",
            "kaa.v1.events.*.endpoint.connectivity.connected",
            "kaa.v1.events..endpoint.connectivity.connected",
        ] {
            assert!(
                matches!(
                    EventKind::parse_subject(subject),
                    Err(EventError::Subject(_))
                ),
                "{subject}"
            );
        }
    }

    #[test]
    fn extra_tokens_are_accepted() {
        let (kind, subject) =
            EventKind::parse_subject("kaa.v1.events.kpc.endpoint.connectivity.connected.t1")
                .unwrap();
        assert_eq!(kind, EventKind::Connected);
        assert_eq!(subject.extra().collect::<Vec<_>>(), ["t1"]);
    }

    #[test]
    fn names_round_trip() {
        for group in EventGroup::ALL {
            assert_eq!(EventGroup::from_name(group.name()), Some(group));
        }
        assert_eq!(EventGroup::from_name("config"), None);
        for kind in EventKind::ALL {
            assert_eq!(
                EventKind::from_tokens(kind.group().name(), kind.event_type()),
                Some(kind)
            );
        }
    }
}
