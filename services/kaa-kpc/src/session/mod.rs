//! The KPC session: one device's MQTT connection after CONNECT, as a sans-IO
//! state machine, [`SessionCore`], and the tokio task that drives it over a
//! socket (private to this crate).
//!
//! [`SessionCore`] owns what a session knows: the endpoint tokens it has used
//! and the endpoints behind them, the 1/KP requests waiting for an extension's
//! answer, the QoS of pushes per resource, the packet identifiers of QoS 1
//! deliveries waiting for PUBACK and of QoS 2 requests waiting for PUBREL. It
//! turns device packets into 4/ESP `ClientData` and 4/ESP `ExtensionData` into
//! 1/KP responses and pushes for the device. It never reads a clock, never
//! touches a socket or the bus and never blocks; what MQTT and 1/KP behaviour
//! it implements is in the [crate docs](crate).
//!
//! # Contract
//!
//! A driver calls four kinds of methods, in this order, over and over:
//!
//! 1. **In**: [`SessionCore::handle_input`] with an [`Input`] and the current
//!    [`Now`]: each packet the device sent after CONNECT ([`Input::Packet`], as
//!    the codec decoded it), each `ExtensionData` the bus side routed to this
//!    session ([`Input::Deliver`]), [`Input::Timeout`] once
//!    [`SessionCore::poll_timeout`] has passed, and the answers to the
//!    session's own questions (below).
//! 2. **Out**: [`SessionCore::poll_output`] until `None`, after every input:
//!    - [`Output::Transmit`]: write the packet to the device, in order;
//!    - [`Output::Count`]: add one to the metric it names;
//!    - [`Output::Resolve`], [`Output::Claim`], [`Output::Forward`]: the three
//!      questions a device request asks of the world, one at a time: resolve
//!      the endpoint token, make this session the owner of the endpoint (and
//!      wait for its 9/ELCE `connected`), publish the `ClientData`. Answer each
//!      with [`Input::Resolved`], [`Input::Claimed`], [`Input::Forwarded`] or
//!      [`Input::ForwardFailed`]; handling an answer may ask the next question
//!      in the same drain. Until the request completes the session handles no
//!      further device packet: packets given meanwhile wait in the core, in
//!      order, and are handled once it completes (deliveries and timeouts are
//!      handled at once);
//!    - [`Output::NoteResource`]: tell the endpoint's owner record which
//!      resource path the session used (for a restarted CMX's sessions request);
//!    - [`Output::Close`]: the session is over. Write what was transmitted
//!      before it and close the connection; the core ignores every later input.
//! 3. **Timer**: [`SessionCore::poll_timeout`]: when to feed [`Input::Timeout`]
//!    (the keep-alive deadline); ask again after every input.
//! 4. **Look**: [`SessionCore::endpoint_ids`] (the endpoints to release when
//!    the session ends), [`SessionCore::pending_requests`],
//!    [`SessionCore::unacked`], [`SessionCore::request_topic`], at any time.
//!
//! Who owns an endpoint across sessions (the latest session that used its
//! token, on this replica or another one of the instance) is the driver's
//! shared state, asked through [`Output::Claim`]; a
//! session is only handed deliveries for endpoints it owns. The core checks
//! again: a delivery for an endpoint none of its tokens stands for never
//! reaches the device.
//!
//! ```
//! use std::sync::Arc;
//! use std::time::{Duration, Instant};
//! use kaa_kpc::session::{Input, Now, Output, SessionCore, SessionSettings};
//! use kaa_kpc::mqttbytes::QoS;
//! use kaa_kpc::mqttbytes::v4::{Packet, Publish};
//!
//! let t0 = Instant::now();
//! let now = Now { instant: t0, wall: kaa_ism::UnixMillis(1_700_000_000_000) };
//! let mut counter = 0;
//! let mut session = SessionCore::new(
//!     Arc::new(SessionSettings::default()),
//!     Some(Duration::from_secs(90)),
//!     t0,
//!     move || { counter += 1; format!("corr-{counter}") },
//! );
//! let topic = "kp1/v1/cmx/tok-1/config/json/7";
//! session.handle_input(Input::Packet(Packet::Publish(Publish::new(topic, QoS::AtMostOnce, "{}"))), now);
//! // The token is new to the session: it asks who it stands for.
//! assert!(matches!(session.poll_output(), Some(Output::Resolve { .. })));
//! ```

mod deliver;
pub(crate) mod driver;
mod pending;
mod qos;
mod request;
#[cfg(test)]
mod tests;
mod tokens;

use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use kaa_esp::ExtensionData;
use kaa_ism::UnixMillis;
use rumqttc::mqttbytes::QoS;
use rumqttc::mqttbytes::v4::{Packet, PubComp, Publish, SubAck, SubscribeReasonCode, UnsubAck};
use rumqttc::mqttbytes::valid_filter;

use crate::config::{
    DEFAULT_MAX_ENDPOINTS_PER_SESSION, DEFAULT_MAX_INFLIGHT, DEFAULT_MAX_PAYLOAD,
    DEFAULT_REQUEST_TIMEOUT,
};
use crate::resolver::{ResolveError, ResolvedEndpoint};
use crate::route::RouteLimits;

use pending::PendingRequests;
use qos::{Outgoing, PushQos, response_qos};
use request::{Request, Stage};
use tokens::Tokens;

/// The limits a session applies, from `kpc.extension-instances` and
/// `kpc.mqtt` (see [`config`](crate::config)); one value shared by every
/// session of a KPC.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SessionSettings {
    /// `kpc.extension-instances`: the extension instances requests may name;
    /// empty: any.
    pub extension_instances: Vec<String>,
    /// `kpc.mqtt.max-inflight`: the most requests waiting for an answer, the
    /// most QoS 1 deliveries waiting for PUBACK and the most QoS 2 requests
    /// waiting for PUBREL (each; packet identifiers cap the QoS 1 window at
    /// 65,535).
    pub max_inflight: usize,
    /// `kpc.mqtt.max-endpoints-per-session`: the most endpoint tokens a session
    /// may use.
    pub max_endpoints: usize,
    /// `kpc.mqtt.max-payload`: the largest request payload forwarded and the
    /// largest response payload delivered, in bytes.
    pub max_payload: usize,
    /// `kpc.mqtt.request-timeout`: how long a request waits for its answer (and
    /// the `timeout` of its `ClientData`).
    pub request_timeout: Duration,
}

impl Default for SessionSettings {
    /// The configuration's defaults, any extension instance.
    fn default() -> Self {
        SessionSettings {
            extension_instances: Vec::new(),
            max_inflight: DEFAULT_MAX_INFLIGHT,
            max_endpoints: DEFAULT_MAX_ENDPOINTS_PER_SESSION,
            max_payload: DEFAULT_MAX_PAYLOAD,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
        }
    }
}

impl SessionSettings {
    fn route_limits(&self) -> RouteLimits<'_> {
        RouteLimits {
            extension_instances: &self.extension_instances,
            max_payload: self.max_payload,
            max_endpoints: self.max_endpoints,
        }
    }
}

/// The time, as the driver reads it for each input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    /// A monotonic clock: the keep-alive and request deadlines.
    pub instant: Instant,
    /// The wall clock: the 3/ISM `timestamp` of the `ClientData` forwarded.
    pub wall: UnixMillis,
}

/// What goes into a session.
#[derive(Debug)]
#[non_exhaustive]
pub enum Input<'a> {
    /// A packet from the device, after CONNECT.
    Packet(Packet),
    /// An `ExtensionData` for an endpoint this session owns (the bus side has
    /// dropped expired ones).
    Deliver(ExtensionData<'a>),
    /// [`SessionCore::poll_timeout`] has passed.
    Timeout,
    /// The endpoint's tokens were revoked (16/ECAP): the session forgets the
    /// tokens it used for it, so the next request with one is resolved again
    /// (and refused), nothing more is pushed for it, and its requests still
    /// waiting for an extension's answer get a 401 on their `/error` topic (the
    /// answers could no longer be delivered).
    EndpointRevoked(&'a str),
    /// The answer to [`Output::Resolve`].
    Resolved(Result<ResolvedEndpoint, ResolveError>),
    /// The answer to [`Output::Claim`]: the session owns the endpoint, and its
    /// `connected` event is on the bus (or the driver gave up waiting).
    Claimed,
    /// The answer to [`Output::Forward`]: the `ClientData` is on the bus.
    Forwarded,
    /// The answer to [`Output::Forward`]: the bus refused the `ClientData`.
    ForwardFailed,
}

/// What comes out of a session.
#[derive(Debug)]
#[non_exhaustive]
pub enum Output {
    /// A packet for the device.
    Transmit(Packet),
    /// One more of a metric.
    Count(Count),
    /// Resolve `token`, used under `app_version`; answer with
    /// [`Input::Resolved`].
    Resolve {
        /// The app version name of the request topic.
        app_version: String,
        /// The endpoint token of the request topic.
        token: String,
    },
    /// Make this session the owner of `endpoint_id` (publishing `connected` when
    /// it was not) and answer with [`Input::Claimed`].
    Claim {
        /// The endpoint.
        endpoint_id: Arc<str>,
        /// The app version its token was resolved for.
        app_version: Arc<str>,
    },
    /// Publish a 4/ESP `ClientData` on `subject`, with this KPC replica's
    /// `ExtensionData` subject as `replyTo`; answer with [`Input::Forwarded`] or
    /// [`Input::ForwardFailed`].
    Forward {
        /// `kaa.v1.service.<extension instance>.esp.ClientData`.
        subject: String,
        /// The Avro datum.
        client_data: Bytes,
    },
    /// The session used `resource_path` with `extension` for `endpoint_id` for the
    /// first time (at most 1,024 per session).
    NoteResource {
        /// The endpoint.
        endpoint_id: Arc<str>,
        /// The extension instance.
        extension: String,
        /// The resource path, e.g. `/config/json`.
        resource_path: String,
    },
    /// The session is over.
    Close(Close),
}

/// A metric a session counts; the label values are those of
/// [`metrics`](crate::metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Count {
    /// `kpc_messages_in_total{kind}`: `request`, `rejected`.
    MessageIn(&'static str),
    /// `kpc_messages_out_total{kind}`: `response`, `error`, `push`.
    MessageOut(&'static str),
    /// `kpc_extension_data_total{outcome}`.
    ExtensionData(&'static str),
    /// `kpc_errors_total{kind}`.
    Error(&'static str),
    /// `kpc_refused_without_request_id_total{reason}`.
    Refused(&'static str),
}

/// Why a session closed itself.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Close {
    /// The device sent DISCONNECT.
    Disconnect,
    /// No packet within 1.5 × the device's keep-alive.
    KeepAlive,
    /// The device broke the MQTT protocol; the reason is for the log.
    Violation(String),
}

/// What a session has exchanged with the device: its tokens, requests waiting
/// for an answer, the QoS of pushes, packet identifiers in flight.
#[derive(Debug, Default)]
struct Exchanges {
    tokens: Tokens,
    pending: PendingRequests,
    push_qos: PushQos,
    outgoing: Outgoing,
    /// Packet identifiers of QoS 2 requests waiting for PUBREL.
    qos2_incoming: std::collections::HashSet<u16>,
}

/// One device's session; see the [module docs](self) for how to drive it.
pub struct SessionCore {
    settings: Arc<SessionSettings>,
    /// 1.5 × the device's keep-alive; `None`: no deadline.
    keep_alive: Option<Duration>,
    last_packet: Instant,
    /// What the session has exchanged with the device (boxed, made on first
    /// use: a session that never sent a request holds none).
    x: Option<Box<Exchanges>>,
    /// The device request waiting for an answer to one of its questions (boxed:
    /// an idle session holds none, and its memory is per connection).
    request: Option<Box<(Request, Stage)>>,
    /// Device packets given while `request` was in progress.
    waiting: VecDeque<Packet>,
    outputs: VecDeque<Output>,
    closed: bool,
    correlation_ids: Box<dyn FnMut() -> String + Send>,
}

impl fmt::Debug for SessionCore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionCore")
            .field(
                "endpoints",
                &self.x.as_deref().map_or(0, |x| x.tokens.len()),
            )
            .field("pending", &self.pending_requests())
            .field("unacked", &self.unacked().count())
            .field("request", &self.request.is_some())
            .field("closed", &self.closed)
            .finish_non_exhaustive()
    }
}

impl SessionCore {
    /// A session whose CONNECT was accepted at `connected_at`. `keep_alive` is
    /// the deadline between packets (KPC uses 1.5 × the device's keep-alive;
    /// `None` for none); `correlation_ids` gives the 3/ISM correlation ID of each
    /// device request (KPC uses random UUIDs).
    pub fn new(
        settings: Arc<SessionSettings>,
        keep_alive: Option<Duration>,
        connected_at: Instant,
        correlation_ids: impl FnMut() -> String + Send + 'static,
    ) -> Self {
        SessionCore {
            settings,
            keep_alive,
            last_packet: connected_at,
            x: None,
            request: None,
            waiting: VecDeque::new(),
            outputs: VecDeque::new(),
            closed: false,
            correlation_ids: Box::new(correlation_ids),
        }
    }

    /// Takes one input; drain [`SessionCore::poll_output`] afterwards.
    pub fn handle_input(&mut self, input: Input<'_>, now: Now) {
        if self.closed {
            return;
        }
        match input {
            Input::Packet(packet) => {
                self.last_packet = now.instant;
                if self.request.is_some() || !self.waiting.is_empty() {
                    self.waiting.push_back(packet);
                } else {
                    self.handle_packet(packet);
                }
            }
            Input::Deliver(data) => self.deliver(&data, now),
            Input::EndpointRevoked(endpoint_id) => self.endpoint_revoked(endpoint_id, now),
            Input::Timeout => {
                if self.poll_timeout().is_some_and(|t| t <= now.instant) {
                    self.close(Close::KeepAlive);
                }
            }
            Input::Resolved(result) => self.handle_resolved(result),
            Input::Claimed => self.handle_claimed(now),
            Input::Forwarded => self.handle_forwarded(true),
            Input::ForwardFailed => self.handle_forwarded(false),
        }
        while self.request.is_none() && !self.closed {
            let Some(packet) = self.waiting.pop_front() else {
                break;
            };
            self.handle_packet(packet);
        }
    }

    /// The next output, if any.
    #[must_use]
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// When to feed [`Input::Timeout`]: the keep-alive deadline; `None` when the
    /// device asked for no keep-alive or the session is closed.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.closed {
            return None;
        }
        self.keep_alive.map(|k| self.last_packet + k)
    }

    /// The endpoints behind the tokens this session has used (the driver
    /// releases those it still owns when the session ends).
    pub fn endpoint_ids(&self) -> impl Iterator<Item = &Arc<str>> {
        self.x.iter().flat_map(|x| x.tokens.endpoint_ids())
    }

    /// How many requests wait for an extension's answer (some may have expired).
    pub fn pending_requests(&self) -> usize {
        self.x.as_deref().map_or(0, |x| x.pending.len())
    }

    /// The packet identifiers of QoS 1 deliveries waiting for PUBACK.
    pub fn unacked(&self) -> impl Iterator<Item = u16> + '_ {
        self.x.iter().flat_map(|x| x.outgoing.unacked())
    }

    /// The topic of the device request whose question is outstanding, if any.
    pub fn request_topic(&self) -> Option<&str> {
        self.request.as_ref().map(|pair| pair.0.topic_str())
    }

    /// Whether the session is over ([`Output::Close`] was given).
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Gives back the room of what is empty (queues, tables), for a session
    /// about to wait idle: a parked session's memory is per connection.
    pub(crate) fn release_spare(&mut self) {
        if self.outputs.is_empty() {
            self.outputs = VecDeque::new();
        }
        if self.waiting.is_empty() {
            self.waiting = VecDeque::new();
        }
        if let Some(x) = self.x.as_deref_mut() {
            if x.tokens.len() == 0
                && x.pending.len() == 0
                && x.push_qos.is_empty()
                && x.outgoing.len() == 0
                && x.qos2_incoming.is_empty()
            {
                self.x = None;
            } else {
                if x.qos2_incoming.is_empty() {
                    x.qos2_incoming = Default::default();
                }
                x.pending.release_spare();
                x.outgoing.release_spare();
            }
        }
    }

    /// The exchanges, made on first use.
    fn x(&mut self) -> &mut Exchanges {
        self.x.get_or_insert_with(Box::default)
    }

    fn handle_packet(&mut self, packet: Packet) {
        match packet {
            Packet::Publish(publish) => self.handle_publish(publish),
            Packet::PubAck(ack) => self.x().outgoing.acked(ack.pkid),
            Packet::PubRel(rel) => {
                self.x().qos2_incoming.remove(&rel.pkid);
                self.transmit(Packet::PubComp(PubComp::new(rel.pkid)));
            }
            // KPC never sends QoS 2: nothing to do for these.
            Packet::PubRec(_) | Packet::PubComp(_) => {}
            Packet::Subscribe(subscribe) if subscribe.filters.is_empty() => {
                // MQTT 3.1.1, 3.8.3-3 (the codec refuses it too; SUBACK could not
                // carry an answer).
                self.close(Close::Violation("a SUBSCRIBE without topic filters".into()));
            }
            Packet::Subscribe(subscribe) => {
                // Accepted, but delivery does not depend on it: KPC delivers to
                // the session that owns the endpoint.
                let codes = subscribe
                    .filters
                    .iter()
                    .map(|f| {
                        if valid_filter(&f.path) && !f.path.contains('\0') {
                            SubscribeReasonCode::Success(response_qos(f.qos))
                        } else {
                            SubscribeReasonCode::Failure
                        }
                    })
                    .collect();
                self.transmit(Packet::SubAck(SubAck::new(subscribe.pkid, codes)));
            }
            Packet::Unsubscribe(unsubscribe) => {
                self.transmit(Packet::UnsubAck(UnsubAck::new(unsubscribe.pkid)));
            }
            Packet::PingReq => self.transmit(Packet::PingResp),
            Packet::Disconnect => self.close(Close::Disconnect),
            Packet::Connect(_) => self.close(Close::Violation("a second CONNECT".into())),
            Packet::ConnAck(_) | Packet::SubAck(_) | Packet::UnsubAck(_) | Packet::PingResp => {
                self.close(Close::Violation(
                    "a packet only a server may send (CONNACK, SUBACK, UNSUBACK or PINGRESP)"
                        .into(),
                ));
            }
        }
    }

    fn transmit(&mut self, packet: Packet) {
        self.outputs.push_back(Output::Transmit(packet));
    }

    fn count(&mut self, count: Count) {
        self.outputs.push_back(Output::Count(count));
    }

    fn close(&mut self, close: Close) {
        self.closed = true;
        self.request = None;
        self.waiting.clear();
        self.outputs.push_back(Output::Close(close));
    }

    /// Sends a PUBLISH to the device; false if a QoS 1 delivery finds the
    /// in-flight window full (nothing is sent).
    fn send(&mut self, topic: String, payload: Vec<u8>, qos: QoS, kind: &'static str) -> bool {
        let mut publish = Publish::new(topic, qos, payload);
        if qos != QoS::AtMostOnce {
            let max_inflight = self.settings.max_inflight;
            let Some(pkid) = self.x().outgoing.allocate(max_inflight) else {
                tracing::debug!("QoS 1 window full; delivery dropped");
                return false;
            };
            publish.pkid = pkid;
        }
        self.transmit(Packet::Publish(publish));
        self.count(Count::MessageOut(kind));
        true
    }
}
