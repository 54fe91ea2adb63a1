//! The 3/ISM NATS subject grammar: targeted (instance-wide and replica) and
//! broadcast subjects, and the wildcard filters listeners subscribe with.
//!
//! Every name that becomes a subject token is validated: it must be non-empty and
//! hold no `.`, `*`, `>`, whitespace or control character. An invalid name is a
//! [`SubjectError`]; nothing is ever escaped.
//!
//! ```
//! use kaa_ism::subject::{EventSubject, ServiceSubject, Subject, SubjectFilter, Token};
//!
//! let s = ServiceSubject::new("cmx", "esp", "ClientData")?;
//! assert_eq!(s.to_string(), "kaa.v1.service.cmx.esp.ClientData");
//!
//! let event = EventSubject::new("ecr", "endpoint", "config", "updated")?;
//! assert_eq!(event.to_string(), "kaa.v1.events.ecr.endpoint.config.updated");
//!
//! match Subject::parse("kaa.v1.replica.cmx-1.cdtp.response")? {
//!     Subject::Replica(r) => assert_eq!(r.replica(), "cmx-1"),
//!     other => panic!("unexpected {other:?}"),
//! }
//!
//! // Every lifecycle event from any originator.
//! let filter = SubjectFilter::events(Token::Any, Token::Name("endpoint"), Token::Name("lifecycle"), Token::Any)?;
//! assert_eq!(filter.as_str(), "kaa.v1.events.*.endpoint.lifecycle.*");
//! assert!(filter.matches("kaa.v1.events.epr.endpoint.lifecycle.unregistered"));
//! # Ok::<(), kaa_ism::subject::SubjectError>(())
//! ```

use std::fmt;

/// The prefix of every 3/ISM subject.
pub const PREFIX: &str = "kaa.v1";

/// Why a name or subject was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SubjectError {
    /// A name that would become a subject token is empty.
    #[error("{what} is empty")]
    EmptyToken {
        /// Which name, e.g. `service instance name`.
        what: &'static str,
    },
    /// A name holds a character that would change the shape of the subject.
    #[error("{what} {name:?} contains {found:?}, which is not allowed in a NATS subject token")]
    InvalidCharacter {
        /// Which name.
        what: &'static str,
        /// The rejected name.
        name: String,
        /// The first offending character.
        found: char,
    },
    /// A subject does not start with `kaa.v1.service`, `kaa.v1.replica` or `kaa.v1.events`.
    #[error("{0:?} is not a 3/ISM subject (expected kaa.v1.service|replica|events.…)")]
    NotIsm(String),
    /// A subject has the wrong number of tokens for its kind.
    #[error("{subject:?} has {found} tokens; a {kind} subject has {expected}")]
    TokenCount {
        /// The subject.
        subject: String,
        /// The kind of subject.
        kind: &'static str,
        /// What the grammar expects, e.g. `6` or `at least 7`.
        expected: &'static str,
        /// How many tokens it has.
        found: usize,
    },
    /// A filter uses `>` anywhere but as its last token, or mixes wildcards into a token.
    #[error("invalid subject filter {0:?}")]
    InvalidFilter(String),
}

/// Checks that `name` can be used as one subject token.
///
/// `what` names the thing being checked in the error, e.g. `"endpoint ID"`.
///
/// ```
/// use kaa_ism::subject::validate_token;
/// assert!(validate_token("humidity-sensor-v3", "app version name").is_ok());
/// assert!(validate_token("a.b", "app version name").is_err());
/// assert!(validate_token("", "app version name").is_err());
/// ```
pub fn validate_token(name: &str, what: &'static str) -> Result<(), SubjectError> {
    if name.is_empty() {
        return Err(SubjectError::EmptyToken { what });
    }
    // Every token our services build is printable ASCII: one pass over the bytes
    // decides it (this runs for every subject published). Anything else takes the
    // character scan below, which names the offending character.
    if name.bytes().all(is_plain_token_byte) {
        return Ok(());
    }
    if let Some(found) = name.chars().find(|&c| !is_token_char(c)) {
        return Err(SubjectError::InvalidCharacter {
            what,
            name: name.to_owned(),
            found,
        });
    }
    Ok(())
}

/// A printable ASCII byte that is not `.`, `*` or `>`: allowed in a token, and
/// never part of a whitespace or control character.
#[inline]
fn is_plain_token_byte(b: u8) -> bool {
    matches!(b, b'!'..=b'~') && !matches!(b, b'.' | b'*' | b'>')
}

/// The rule for one character of a token: not `.`, `*`, `>`, whitespace or a
/// control character.
fn is_token_char(c: char) -> bool {
    !(matches!(c, '.' | '*' | '>') || c.is_whitespace() || c.is_control())
}

/// A targeted, service instance-wide subject:
/// `kaa.v1.service.{service-instance-name}.{protocol-name}.{message-type}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ServiceSubject<'a> {
    instance: &'a str,
    protocol: &'a str,
    message_type: &'a str,
}

impl<'a> ServiceSubject<'a> {
    /// Builds the subject, validating every token.
    pub fn new(
        instance: &'a str,
        protocol: &'a str,
        message_type: &'a str,
    ) -> Result<Self, SubjectError> {
        validate_token(instance, "service instance name")?;
        validate_token(protocol, "protocol name")?;
        validate_token(message_type, "message type")?;
        Ok(ServiceSubject {
            instance,
            protocol,
            message_type,
        })
    }

    /// The target service instance name.
    pub fn instance(&self) -> &'a str {
        self.instance
    }

    /// The protocol name, e.g. `esp`.
    pub fn protocol(&self) -> &'a str {
        self.protocol
    }

    /// The message type, e.g. `ClientData`.
    pub fn message_type(&self) -> &'a str {
        self.message_type
    }
}

impl fmt::Display for ServiceSubject<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{PREFIX}.service.{}.{}.{}",
            self.instance, self.protocol, self.message_type
        )
    }
}

/// A targeted, service replica-specific subject:
/// `kaa.v1.replica.{service-instance-replica-id}.{protocol-name}.{message-type}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ReplicaSubject<'a> {
    replica: &'a str,
    protocol: &'a str,
    message_type: &'a str,
}

impl<'a> ReplicaSubject<'a> {
    /// Builds the subject, validating every token.
    pub fn new(
        replica: &'a str,
        protocol: &'a str,
        message_type: &'a str,
    ) -> Result<Self, SubjectError> {
        validate_token(replica, "service replica ID")?;
        validate_token(protocol, "protocol name")?;
        validate_token(message_type, "message type")?;
        Ok(ReplicaSubject {
            replica,
            protocol,
            message_type,
        })
    }

    /// The target replica ID.
    pub fn replica(&self) -> &'a str {
        self.replica
    }

    /// The protocol name.
    pub fn protocol(&self) -> &'a str {
        self.protocol
    }

    /// The message type.
    pub fn message_type(&self) -> &'a str {
        self.message_type
    }

    /// The same subject with another message type, as 3/ISM's session affinity rules
    /// say a recipient does when it answers with a different message type.
    pub fn with_message_type(&self, message_type: &'a str) -> Result<Self, SubjectError> {
        ReplicaSubject::new(self.replica, self.protocol, message_type)
    }
}

impl fmt::Display for ReplicaSubject<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{PREFIX}.replica.{}.{}.{}",
            self.replica, self.protocol, self.message_type
        )
    }
}

/// A broadcast subject:
/// `kaa.v1.events.{originator}.{target-entity-type}.{event-group}.{event-type}[.extra…]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EventSubject<'a> {
    originator: &'a str,
    entity: &'a str,
    group: &'a str,
    event_type: &'a str,
    /// Extra tokens joined by `.`, empty when there are none.
    extra: &'a str,
}

impl<'a> EventSubject<'a> {
    /// Builds a broadcast subject without extra tokens, validating every token.
    pub fn new(
        originator: &'a str,
        entity: &'a str,
        group: &'a str,
        event_type: &'a str,
    ) -> Result<Self, SubjectError> {
        validate_token(originator, "originator service instance name")?;
        validate_token(entity, "target entity type")?;
        validate_token(group, "event group")?;
        validate_token(event_type, "event type")?;
        Ok(EventSubject {
            originator,
            entity,
            group,
            event_type,
            extra: "",
        })
    }

    /// Appends extra tokens, given as one string of `.`-separated tokens
    /// (e.g. `"tenant-1.app-2"`); each token is validated.
    pub fn with_extra(self, extra: &'a str) -> Result<Self, SubjectError> {
        if !extra.is_empty() {
            for token in extra.split('.') {
                validate_token(token, "extra subject token")?;
            }
        }
        Ok(EventSubject { extra, ..self })
    }

    /// The originator service instance name.
    pub fn originator(&self) -> &'a str {
        self.originator
    }

    /// The target entity type, e.g. `endpoint`.
    pub fn entity(&self) -> &'a str {
        self.entity
    }

    /// The event group, e.g. `config`.
    pub fn group(&self) -> &'a str {
        self.group
    }

    /// The event type, e.g. `updated`.
    pub fn event_type(&self) -> &'a str {
        self.event_type
    }

    /// The extra tokens after the event type.
    pub fn extra(&self) -> impl Iterator<Item = &'a str> + 'a {
        let extra = self.extra;
        extra.split('.').filter(move |_| !extra.is_empty())
    }
}

impl fmt::Display for EventSubject<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{PREFIX}.events.{}.{}.{}.{}",
            self.originator, self.entity, self.group, self.event_type
        )?;
        if !self.extra.is_empty() {
            write!(f, ".{}", self.extra)?;
        }
        Ok(())
    }
}

/// Any 3/ISM subject, as parsed from a received message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Subject<'a> {
    /// `kaa.v1.service.…`
    Service(ServiceSubject<'a>),
    /// `kaa.v1.replica.…`
    Replica(ReplicaSubject<'a>),
    /// `kaa.v1.events.…`
    Event(EventSubject<'a>),
}

impl<'a> Subject<'a> {
    /// Parses a concrete subject (no wildcards), borrowing its tokens.
    pub fn parse(subject: &'a str) -> Result<Self, SubjectError> {
        let not_ism = || SubjectError::NotIsm(subject.to_owned());
        let rest = subject
            .strip_prefix(PREFIX)
            .and_then(|r| r.strip_prefix('.'))
            .ok_or_else(not_ism)?;
        let (kind, rest) = rest.split_once('.').ok_or_else(not_ism)?;
        let count = |kind: &'static str, expected: &'static str| SubjectError::TokenCount {
            subject: subject.to_owned(),
            kind,
            expected,
            found: subject.split('.').count(),
        };
        match kind {
            "service" | "replica" => {
                let mut parts = rest.split('.');
                let (Some(a), Some(b), Some(c), None) =
                    (parts.next(), parts.next(), parts.next(), parts.next())
                else {
                    return Err(count(
                        if kind == "service" {
                            "service instance-wide"
                        } else {
                            "replica"
                        },
                        "6",
                    ));
                };
                if kind == "service" {
                    ServiceSubject::new(a, b, c).map(Subject::Service)
                } else {
                    ReplicaSubject::new(a, b, c).map(Subject::Replica)
                }
            }
            "events" => {
                let mut parts = rest.splitn(5, '.');
                let (Some(o), Some(e), Some(g), Some(t)) =
                    (parts.next(), parts.next(), parts.next(), parts.next())
                else {
                    return Err(count("broadcast", "at least 7"));
                };
                let extra = parts.next().unwrap_or("");
                if rest.ends_with('.') && extra.is_empty() {
                    // A trailing `.` leaves an empty extra token.
                    return Err(SubjectError::EmptyToken {
                        what: "extra subject token",
                    });
                }
                EventSubject::new(o, e, g, t)?
                    .with_extra(extra)
                    .map(Subject::Event)
            }
            _ => Err(not_ism()),
        }
    }
}

impl fmt::Display for Subject<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Subject::Service(s) => s.fmt(f),
            Subject::Replica(s) => s.fmt(f),
            Subject::Event(s) => s.fmt(f),
        }
    }
}

/// One position of a [`SubjectFilter`]: a name, or `*` for any single token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Token<'a> {
    /// A literal token, validated like any name.
    Name(&'a str),
    /// `*`: any one token.
    Any,
}

/// A NATS subscription subject that may hold `*` (any one token) and a final `>`
/// (one or more tokens), with NATS matching semantics.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SubjectFilter(String);

impl SubjectFilter {
    /// Validates any NATS subject or filter: non-empty tokens, `*` and `>` only as
    /// whole tokens, `>` only last, no whitespace or control characters.
    pub fn parse(filter: &str) -> Result<Self, SubjectError> {
        let bad = || SubjectError::InvalidFilter(filter.to_owned());
        let mut tokens = filter.split('.').peekable();
        while let Some(token) = tokens.next() {
            match token {
                "*" => {}
                ">" if tokens.peek().is_none() => {}
                _ => validate_token(token, "subject token").map_err(|_| bad())?,
            }
        }
        Ok(SubjectFilter(filter.to_owned()))
    }

    /// A filter for broadcast events: `kaa.v1.events.{originator}.{entity}.{group}.{type}`
    /// where any position may be `*`.
    pub fn events(
        originator: Token<'_>,
        entity: Token<'_>,
        group: Token<'_>,
        event_type: Token<'_>,
    ) -> Result<Self, SubjectError> {
        let mut s = format!("{PREFIX}.events");
        for (token, what) in [
            (originator, "originator service instance name"),
            (entity, "target entity type"),
            (group, "event group"),
            (event_type, "event type"),
        ] {
            push_token(&mut s, token, what)?;
        }
        Ok(SubjectFilter(s))
    }

    /// A filter for every broadcast event about `entity` from `originator`:
    /// `kaa.v1.events.{originator}.{entity}.>`.
    pub fn events_about(originator: Token<'_>, entity: Token<'_>) -> Result<Self, SubjectError> {
        let mut s = format!("{PREFIX}.events");
        push_token(&mut s, originator, "originator service instance name")?;
        push_token(&mut s, entity, "target entity type")?;
        s.push_str(".>");
        Ok(SubjectFilter(s))
    }

    /// The filter as a subject string, ready to subscribe with.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// True when a concrete `subject` matches this filter under NATS rules.
    pub fn matches(&self, subject: &str) -> bool {
        filter_matches(&self.0, subject)
    }
}

impl fmt::Display for SubjectFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn push_token(s: &mut String, token: Token<'_>, what: &'static str) -> Result<(), SubjectError> {
    s.push('.');
    match token {
        Token::Any => s.push('*'),
        Token::Name(name) => {
            validate_token(name, what)?;
            s.push_str(name);
        }
    }
    Ok(())
}

/// NATS subject matching: `*` matches exactly one token, a final `>` matches one or
/// more tokens, anything else matches itself.
///
/// ```
/// use kaa_ism::subject::filter_matches;
/// assert!(filter_matches("kaa.v1.events.*.endpoint.>", "kaa.v1.events.kpc.endpoint.connectivity.connected"));
/// assert!(!filter_matches("kaa.v1.events.*.endpoint.>", "kaa.v1.events.kpc.endpoint"));
/// assert!(!filter_matches("a.*", "a.b.c"));
/// ```
pub fn filter_matches(filter: &str, subject: &str) -> bool {
    let mut f = filter.split('.');
    let mut s = subject.split('.');
    loop {
        match (f.next(), s.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn rfc_examples() {
        // 4/ESP
        assert_eq!(
            ServiceSubject::new("humidity-sensor-cmx-1", "esp", "ClientData")
                .unwrap()
                .to_string(),
            "kaa.v1.service.humidity-sensor-cmx-1.esp.ClientData"
        );
        // 6/CDTP
        assert_eq!(
            ReplicaSubject::new("cmx-replica-7", "cdtp", "response")
                .unwrap()
                .to_string(),
            "kaa.v1.replica.cmx-replica-7.cdtp.response"
        );
        // 9/ELCE
        assert_eq!(
            EventSubject::new("kpc", "endpoint", "connectivity", "connected")
                .unwrap()
                .to_string(),
            "kaa.v1.events.kpc.endpoint.connectivity.connected"
        );
        // 3/ISM listener examples
        let f = SubjectFilter::events(
            Token::Any,
            Token::Name("endpoint"),
            Token::Name("lifecycle"),
            Token::Any,
        )
        .unwrap();
        assert_eq!(f.as_str(), "kaa.v1.events.*.endpoint.lifecycle.*");
        let f = SubjectFilter::events_about(
            Token::Name("service-instance-name"),
            Token::Name("endpoint"),
        )
        .unwrap();
        assert_eq!(f.as_str(), "kaa.v1.events.service-instance-name.endpoint.>");
        assert!(f.matches("kaa.v1.events.service-instance-name.endpoint.config.updated"));
        assert!(!f.matches("kaa.v1.events.other.endpoint.config.updated"));
    }

    #[test]
    fn affinity_substitutes_message_type() {
        let Subject::Replica(r) = Subject::parse("kaa.v1.replica.kpc-1.esp.ClientData").unwrap()
        else {
            panic!("not a replica subject")
        };
        assert_eq!(
            r.with_message_type("ExtensionData").unwrap().to_string(),
            "kaa.v1.replica.kpc-1.esp.ExtensionData"
        );
    }

    #[test]
    fn parse_with_extra_tokens() {
        let Subject::Event(e) =
            Subject::parse("kaa.v1.events.ecr.endpoint.config.updated.t1.a2").unwrap()
        else {
            panic!("not an event subject")
        };
        assert_eq!(e.extra().collect::<Vec<_>>(), ["t1", "a2"]);
        assert_eq!(
            e.to_string(),
            "kaa.v1.events.ecr.endpoint.config.updated.t1.a2"
        );
        let Subject::Event(e) =
            Subject::parse("kaa.v1.events.ecr.endpoint.config.updated").unwrap()
        else {
            panic!("not an event subject")
        };
        assert_eq!(e.extra().count(), 0);
    }

    #[test]
    fn bad_names_and_subjects() {
        for name in [
            "", "a.b", "a*", ">", "a b", "a\tb", "a\nb", "\u{0}", "x\u{a0}y",
        ] {
            assert!(
                ServiceSubject::new(name, "esp", "ClientData").is_err(),
                "{name:?} accepted"
            );
            assert!(
                EventSubject::new("ecr", "endpoint", "config", name).is_err(),
                "{name:?} accepted"
            );
        }
        for subject in [
            "",
            "kaa",
            "kaa.v1",
            "kaa.v2.service.a.b.c",
            "kaa.v1.other.a.b.c",
            "kaa.v1.service.a.b",
            "kaa.v1.service.a.b.c.d",
            "kaa.v1.service..b.c",
            "kaa.v1.service.*.b.c",
            "kaa.v1.replica.a.b",
            "kaa.v1.events.a.b.c",
            "kaa.v1.events.a.b.c.d.",
            "kaa.v1.events.a.b.c.d..e",
            "kaa.v1.events.a.b.c.>",
            "xkaa.v1.service.a.b.c",
        ] {
            assert!(Subject::parse(subject).is_err(), "{subject:?} accepted");
        }
        for filter in ["", "a..b", "a.>.b", "a.b*", "a.>>", "a b"] {
            assert!(SubjectFilter::parse(filter).is_err(), "{filter:?} accepted");
        }
        assert!(SubjectFilter::parse("a.*.>").is_ok());
    }

    #[test]
    fn wildcard_matching() {
        let cases = [
            ("a.b", "a.b", true),
            ("a.b", "a.c", false),
            ("a.*", "a.b", true),
            ("a.*", "a", false),
            ("a.*", "a.b.c", false),
            ("a.>", "a.b", true),
            ("a.>", "a.b.c", true),
            ("a.>", "a", false),
            (">", "a", true),
            ("*.*", "a.b", true),
            ("a.*.c", "a.b.c", true),
            ("a.*.c", "a.b.d", false),
        ];
        for (filter, subject, expected) in cases {
            assert_eq!(
                filter_matches(filter, subject),
                expected,
                "{filter} ~ {subject}"
            );
        }
    }

    const TOKEN: &str = "[a-zA-Z0-9_\\-]{1,12}";

    proptest! {
        #[test]
        fn service_round_trip(a in TOKEN, b in TOKEN, c in TOKEN) {
            let built = ServiceSubject::new(&a, &b, &c).unwrap().to_string();
            prop_assert_eq!(Subject::parse(&built).unwrap(), Subject::Service(ServiceSubject::new(&a, &b, &c).unwrap()));
            prop_assert!(SubjectFilter::parse(&built).unwrap().matches(&built));
        }

        #[test]
        fn replica_round_trip(a in TOKEN, b in TOKEN, c in TOKEN) {
            let built = ReplicaSubject::new(&a, &b, &c).unwrap().to_string();
            prop_assert_eq!(Subject::parse(&built).unwrap(), Subject::Replica(ReplicaSubject::new(&a, &b, &c).unwrap()));
        }

        #[test]
        fn event_round_trip(o in TOKEN, e in TOKEN, g in TOKEN, t in TOKEN, extra in proptest::collection::vec(TOKEN, 0..3)) {
            let extra = extra.join(".");
            let subject = EventSubject::new(&o, &e, &g, &t).unwrap().with_extra(&extra).unwrap();
            let built = subject.to_string();
            prop_assert_eq!(Subject::parse(&built).unwrap(), Subject::Event(subject));
            let any = SubjectFilter::events(Token::Any, Token::Name(&e), Token::Any, Token::Name(&t)).unwrap();
            prop_assert_eq!(any.matches(&built), extra.is_empty());
            let about = SubjectFilter::events_about(Token::Name(&o), Token::Any).unwrap();
            prop_assert!(about.matches(&built));
        }

        /// The ASCII fast path of `validate_token` decides exactly as the rule
        /// applied character by character.
        #[test]
        fn validate_token_fast_path_agrees_with_the_rule(s in "(\\PC|[ \t\n\r\u{7f}\u{85}\u{a0}\u{2028}.*>]){0,12}|[!-~]{0,12}") {
            let by_rule = !s.is_empty() && s.chars().all(is_token_char);
            prop_assert_eq!(validate_token(&s, "token").is_ok(), by_rule);
        }

        #[test]
        fn parse_never_panics(s in "[a-z.*> ]{0,40}") {
            let _ = Subject::parse(&s);
            let _ = SubjectFilter::parse(&s);
        }
    }
}
