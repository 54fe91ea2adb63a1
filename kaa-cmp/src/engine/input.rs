//! The engine's one way in: every message it subscribes to, decoded with the
//! configuration's limits, plus the events of its driver (a deadline passed, the
//! bus (re)connected).

use kaa_cdtp::{ConfigResponse, ConfigUpdated, ProviderStarted};
use kaa_elce::{DecodeLimits, ElceEvent, EventError, SessionsResponse};
use kaa_esp::ClientData;
use kaa_ism::avro::{Decode, DecodeError};
use kaa_ism::common::CommonFields;

/// One input to [`Cmx::handle_input`](super::Cmx::handle_input).
///
/// Messages from the bus come from [`Cmx::decode_input`](super::Cmx::decode_input),
/// which picks the variant by subject and applies every decoding limit of the
/// [`CmxConfig`](super::CmxConfig); [`Input::Timeout`] and
/// [`Input::BusConnected`] come from the driver itself.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Input<'a> {
    /// 4/ESP `ClientData` from a communication service, with the NATS `replyTo`
    /// it came with (session affinity for the answer).
    ClientData {
        /// The message.
        message: ClientData<'a>,
        /// The NATS `replyTo`.
        reply_to: Option<&'a str>,
    },
    /// 4/ESP `ClientData` on this replica's own subject
    /// (`kaa.v1.replica.<replica>.esp.ClientData`): handed over by another
    /// replica of this CMX instance that does not own the endpoint (kaa-rs
    /// extension, see "Replicas" in the [engine docs](super)), with the
    /// communication service's original `replyTo`. Served here and never
    /// handed over again ([`Cmx::handle_handed_over`](super::Cmx::handle_handed_over)).
    /// Its [`Input::kind`] is [`InputKind::ClientData`].
    HandedOver {
        /// The message.
        message: ClientData<'a>,
        /// The NATS `replyTo` (the communication service's, carried over).
        reply_to: Option<&'a str>,
    },
    /// 6/CDTP `ConfigResponse` on this replica's response subject.
    ConfigResponse(ConfigResponse<'a>),
    /// 6/CDTP `ConfigUpdated` broadcast by the provider.
    ConfigUpdated(ConfigUpdated<'a>),
    /// A 9/ELCE connectivity or lifecycle event (`registered` and traffic reports
    /// are accepted and ignored).
    Event(ElceEvent<'a>),
    /// A communication service's list of its sessions, the answer to the
    /// [`Output::SessionsRequest`](super::Output::SessionsRequest) the engine
    /// sends when the bus connects (kaa-rs extension, see [`kaa_elce::sessions`]).
    Sessions(SessionsResponse<'a>),
    /// The provider (re)started and may have lost `ConfigUpdated` broadcasts
    /// (kaa-rs extension, [`kaa_cdtp::ProviderStarted`]).
    ProviderStarted(ProviderStarted<'a>),
    /// The live replicas of this CMX instance changed (kaa-rs extension, from
    /// the driver: e.g. a JetStream key-value bucket of heartbeats); see
    /// [`Cmx::set_members`](super::Cmx::set_members). Replica IDs; an empty
    /// list turns membership off (this replica serves every endpoint).
    Members(&'a [&'a str]),
    /// Another replica of this CMX instance confirmed the member list it
    /// applied (kaa-rs extension, from the driver: e.g. the value of that
    /// replica's key in the membership bucket); see
    /// [`Cmx::set_member_view`](super::Cmx::set_member_view).
    MemberView {
        /// The replica ID.
        replica: &'a str,
        /// The [`membership_view`](super::membership_view) it applied.
        view: u64,
    },
    /// The engine's deadline ([`Cmx::poll_timeout`](super::Cmx::poll_timeout))
    /// passed.
    Timeout,
    /// The bus connected and every subscription in
    /// [`Cmx::subscriptions`](super::Cmx::subscriptions) is in effect: once at
    /// start, and again after every reconnect. The engine asks the communication
    /// service for its sessions each time, and after a reconnect re-synchronizes
    /// every connected endpoint (broadcasts sent while it was cut off are lost).
    BusConnected,
}

impl Input<'_> {
    /// Which kind of input this is.
    pub fn kind(&self) -> InputKind {
        match self {
            Input::ClientData { .. } | Input::HandedOver { .. } => InputKind::ClientData,
            Input::ConfigResponse(_) => InputKind::ConfigResponse,
            Input::ConfigUpdated(_) => InputKind::ConfigUpdated,
            Input::Event(_) => InputKind::Event,
            Input::Sessions(_) => InputKind::Sessions,
            Input::ProviderStarted(_) => InputKind::ProviderStarted,
            Input::Members(_) => InputKind::Members,
            Input::MemberView { .. } => InputKind::MemberView,
            Input::Timeout => InputKind::Timeout,
            Input::BusConnected => InputKind::BusConnected,
        }
    }

    /// The message's `correlationId`, for logs (`None` for the driver's own
    /// inputs).
    pub fn correlation_id(&self) -> Option<&str> {
        match self {
            Input::ClientData { message, .. } | Input::HandedOver { message, .. } => {
                Some(&message.correlation_id)
            }
            Input::ConfigResponse(m) => Some(&m.correlation_id),
            Input::ConfigUpdated(m) => Some(&m.correlation_id),
            Input::Event(e) => Some(e.correlation_id()),
            Input::Sessions(m) => Some(&m.correlation_id),
            Input::ProviderStarted(m) => Some(&m.correlation_id),
            Input::Members(_) | Input::MemberView { .. } | Input::Timeout | Input::BusConnected => {
                None
            }
        }
    }
}

/// The kinds of [`Input`], e.g. to label metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum InputKind {
    /// [`Input::ClientData`].
    ClientData,
    /// [`Input::ConfigResponse`].
    ConfigResponse,
    /// [`Input::ConfigUpdated`].
    ConfigUpdated,
    /// [`Input::Event`].
    Event,
    /// [`Input::Sessions`].
    Sessions,
    /// [`Input::ProviderStarted`].
    ProviderStarted,
    /// [`Input::Members`].
    Members,
    /// [`Input::MemberView`].
    MemberView,
    /// [`Input::Timeout`].
    Timeout,
    /// [`Input::BusConnected`].
    BusConnected,
}

impl InputKind {
    /// A short lowercase name (`client_data`, `cdtp_response`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            InputKind::ClientData => "client_data",
            InputKind::ConfigResponse => "cdtp_response",
            InputKind::ConfigUpdated => "config_updated",
            InputKind::Event => "elce_event",
            InputKind::Sessions => "sessions_response",
            InputKind::ProviderStarted => "provider_started",
            InputKind::Members => "members",
            InputKind::MemberView => "member_view",
            InputKind::Timeout => "timeout",
            InputKind::BusConnected => "bus_connected",
        }
    }
}

/// A bus message [`Cmx::decode_input`](super::Cmx::decode_input) could not turn
/// into an [`Input`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InputError {
    /// The subject is not one of [`Cmx::subscriptions`](super::Cmx::subscriptions).
    #[error("a CMX does not handle messages on {0:?}")]
    UnexpectedSubject(String),
    /// A 9/ELCE endpoint event this CMX does not use (a type this version does
    /// not know, e.g. a future `connectivity.dormant`): skip it.
    #[error("9/ELCE event {0:?} is not used by CMX")]
    UnusedEvent(String),
    /// The datum is not a valid record for its subject, or passes a limit of the
    /// configuration (e.g. more endpoints than `max_endpoints_per_event`).
    #[error("malformed {kind}: {source}", kind = .kind.as_str())]
    Malformed {
        /// What the subject said the message was.
        kind: InputKind,
        /// What is wrong with it.
        #[source]
        source: DecodeError,
    },
}

impl InputError {
    /// Whether this is a message to skip quietly rather than a malformed one
    /// ([`InputError::UnusedEvent`]).
    pub fn is_unused(&self) -> bool {
        matches!(self, InputError::UnusedEvent(_))
    }

    /// The kind of input the subject named, when it named one.
    pub fn kind(&self) -> Option<InputKind> {
        match self {
            InputError::Malformed { kind, .. } => Some(*kind),
            InputError::UnusedEvent(_) => Some(InputKind::Event),
            InputError::UnexpectedSubject(_) => None,
        }
    }
}

/// Decodes `datum` received on `subject`; `subs` says which subjects are this
/// engine's, `limits` bounds endpoint lists.
pub(super) fn decode<'a>(
    subs: &super::Subscriptions,
    limits: DecodeLimits,
    subject: &str,
    reply_to: Option<&'a str>,
    datum: &'a [u8],
) -> Result<Input<'a>, InputError> {
    use kaa_cdtp::subject::MessageType as Cdtp;
    use kaa_esp::subject::MessageType as Esp;
    let malformed = |kind| move |source| InputError::Malformed { kind, source };
    // The hot subjects first, by exact comparison with this engine's own
    // (literal) subjects: one comparison instead of parsing the subject up to
    // four times. Any other subject takes the general path below, which
    // classifies these the same way.
    if subject == subs.cdtp_responses.as_str() {
        return ConfigResponse::decode(datum)
            .map(Input::ConfigResponse)
            .map_err(malformed(InputKind::ConfigResponse));
    }
    if subject == subs.client_data.instance_wide.as_str() {
        let message = ClientData::decode(datum).map_err(malformed(InputKind::ClientData))?;
        return Ok(Input::ClientData { message, reply_to });
    }
    if subject == subs.client_data.replica.as_str() {
        let message = ClientData::decode(datum).map_err(malformed(InputKind::ClientData))?;
        return Ok(Input::HandedOver { message, reply_to });
    }
    if Esp::of_subject(subject) == Some(Esp::ClientData) {
        let message = ClientData::decode(datum).map_err(malformed(InputKind::ClientData))?;
        return Ok(Input::ClientData { message, reply_to });
    }
    if subs.sessions_responses.matches(subject) {
        return SessionsResponse::decode_with_limits(datum, limits)
            .map(Input::Sessions)
            .map_err(malformed(InputKind::Sessions));
    }
    if subs.provider_started.matches(subject) {
        return ProviderStarted::decode(datum)
            .map(Input::ProviderStarted)
            .map_err(malformed(InputKind::ProviderStarted));
    }
    match Cdtp::of_subject(subject) {
        Some(Cdtp::ConfigResponse) => {
            return ConfigResponse::decode(datum)
                .map(Input::ConfigResponse)
                .map_err(malformed(InputKind::ConfigResponse));
        }
        Some(Cdtp::ConfigUpdated) => {
            return ConfigUpdated::decode(datum)
                .map(Input::ConfigUpdated)
                .map_err(malformed(InputKind::ConfigUpdated));
        }
        Some(_) => return Err(InputError::UnexpectedSubject(subject.to_owned())),
        None => {}
    }
    match ElceEvent::decode_with_limits(subject, datum, limits) {
        Ok(event) => Ok(Input::Event(event)),
        Err(EventError::UnknownEvent { group, event_type }) => {
            Err(InputError::UnusedEvent(format!("{group}.{event_type}")))
        }
        Err(EventError::Decode(source)) => Err(InputError::Malformed {
            kind: InputKind::Event,
            source,
        }),
        Err(_) => Err(InputError::UnexpectedSubject(subject.to_owned())),
    }
}
