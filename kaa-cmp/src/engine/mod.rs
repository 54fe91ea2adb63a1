//! The CMX engine: the server side of 7/CMP, sans-IO.
//!
//! [`Cmx`] is a state machine in the shape quinn-proto and str0m use. The engine
//! never reads a clock, never touches a socket and never blocks; see the
//! [crate docs](crate) for a whole driver loop.
//!
//! # Contract
//!
//! A driver calls four kinds of methods, in this order, over and over:
//!
//! 1. **In**: [`Cmx::decode_input`] turns a bus message (subject, NATS
//!    `replyTo`, Avro datum) into an [`Input`], applying every limit of the
//!    [`CmxConfig`]; [`Cmx::handle_input`] takes it with the current time. The
//!    driver's own events are inputs too: [`Input::Timeout`] when the deadline
//!    passed, [`Input::BusConnected`] once the subscriptions are in effect, at
//!    start and after every reconnect. ([`Cmx::handle_message`] is decode and
//!    handle in one call.)
//! 2. **Out**: [`Cmx::poll_output`] until `None`; publish each [`Output`] on its
//!    subject with its `replyTo` ([`Output::encode`] writes the datum into the
//!    caller's buffer). Outputs must be drained after every input. Then
//!    [`Cmx::poll_refusal`] until `None`: device requests refused without an
//!    answer (no request ID), to log; the engine keeps the latest 1,024.
//! 3. **Timer**: [`Cmx::poll_timeout`] says when to feed [`Input::Timeout`]
//!    next; ask again after every input.
//! 4. **Look**: [`Cmx::stats`], [`Cmx::endpoint`], [`Cmx::tracked_endpoints`],
//!    [`Cmx::pending_requests`] for metrics and tests, at any time.
//!
//! What to subscribe to is [`Cmx::subscriptions`]: every subject an input
//! comes from, with its queue group. The `handle_*` methods named in the table
//! below are what [`Cmx::handle_input`] calls for each input; they are public
//! for callers that decode messages themselves.
//!
//! # Inputs
//!
//! | input | subject | from | handled by |
//! |---|---|---|---|
//! | 4/ESP `ClientData` (+ NATS `replyTo`) | `kaa.v1.service.<cmx>.esp.ClientData` (queue group `<cmx>`), `kaa.v1.replica.<replica>.esp.ClientData` | communication service (KPC) | [`Cmx::handle_client_data`] |
//! | 6/CDTP `ConfigResponse` | `kaa.v1.replica.<replica>.cdtp.response` | provider (ECR), on the request's `replyTo` | [`Cmx::handle_config_response`] |
//! | 6/CDTP `ConfigUpdated` | `kaa.v1.events.<provider>.endpoint.config.updated` | provider broadcast | [`Cmx::handle_config_updated`] |
//! | 9/ELCE `connected`, `disconnected` | `kaa.v1.events.*.endpoint.connectivity.*` | communication service broadcast | [`Cmx::handle_connected`], [`Cmx::handle_disconnected`] |
//! | 9/ELCE `appversion-updated`, `unregistered` | `kaa.v1.events.*.endpoint.lifecycle.*` | endpoint register broadcast | [`Cmx::handle_app_version_updated`], [`Cmx::handle_unregistered`] |
//! | kaa-rs `SessionsResponse` | `kaa.v1.replica.<replica>.elce.SessionsResponse` | communication service replicas, answering [`Output::SessionsRequest`] | [`Cmx::adopt_session`] per endpoint |
//! | kaa-rs `ProviderStarted` | `kaa.v1.events.<provider>.provider.started` | provider broadcast | [`Cmx::resync`] |
//! | [`Input::Timeout`] | — | the driver's timer at [`Cmx::poll_timeout`] | [`Cmx::handle_timeout`] |
//! | [`Input::BusConnected`] | — | the driver: subscriptions in effect (start, reconnect) | [`Output::SessionsRequest`]; [`Cmx::resync`] after a reconnect |
//!
//! 9/ELCE `registered` and traffic reports decode and are ignored; endpoint
//! event types this version does not know are [`InputError::UnusedEvent`].
//!
//! # Outputs
//!
//! - [`Output::ExtensionData`]: responses and pushes for devices. Subject: the
//!   communication service replica named by the `ClientData`'s `replyTo` (3/ISM
//!   session affinity, message type replaced by `ExtensionData`), else
//!   `kaa.v1.service.<kpc>.esp.ExtensionData`.
//! - [`Output::ConfigRequest`]: to `kaa.v1.service.<provider>.cdtp.request` with
//!   `replyTo` `kaa.v1.replica.<replica>.cdtp.response` and a correlation ID
//!   `<prefix>-<n>` (deterministic: a prefix from the configuration and a counter).
//! - [`Output::ConfigApplied`]: broadcast on
//!   `kaa.v1.events.<cmx instance>.endpoint.config.applied`.
//! - [`Output::SessionsRequest`] (kaa-rs extension): published to
//!   `kaa.v1.service.<kpc>.elce.SessionsRequest` with `replyTo`
//!   `kaa.v1.replica.<replica>.elce.SessionsResponse`.
//!
//! # Behaviour
//!
//! **Requests.** A request to `/config/json[/<name>]` becomes a CDTP request
//! carrying the `configId` the device reported; the provider's answer becomes an
//! `ExtensionData` with `{"configId", "config"}`, or `{}` when the device already
//! has the current configuration. No configuration at all (the provider answers
//! 404, or `configId` `""`) is `{"configId": "", "config": null}`. A request
//! without a request ID gets its configuration as a push, and no error response
//! (1/KP: no request ID, no response).
//!
//! **Observe.** The latest request's `observe` counts, per configuration name:
//! `false` stops pushes until the next request; `true` or absent allows them
//! (7/CMP: the server MAY push when `observe` is absent, and a Kaa CMX does).
//!
//! **Pushes** (`requestId` null, `resourcePath` `/config/json[/<name>]`) go only
//! to connected endpoints that have not opted out, for the default configuration
//! and the named ones the endpoint has used, on:
//! - `ConfigUpdated`: unless the device already holds the new configuration;
//! - `connected`: unless the device has *reported* the current configuration
//!   applied (a push sent while it was away may be lost). An endpoint that was
//!   offline during any number of updates gets the latest, once;
//! - `appversion-updated`: the new app version may mean another configuration;
//!   pushed unless the device has reported it applied, as on connect.
//!
//! A configuration the device rejected is not pushed again.
//!
//! **Recovery.** Broadcasts lost while the driver's bus was down leave devices
//! stale; after a reconnect ([`Input::BusConnected`] the second time and later)
//! and when the provider announces a restart ([`Input::ProviderStarted`]) the
//! engine re-synchronizes, [`Cmx::resync`]: every connected endpoint's
//! configurations are fetched again (answers in flight count as stale) and
//! pushed unless the device holds them. An engine that starts while sessions
//! are already up (a restarted CMX) learns them from the communication
//! service's list of its sessions and the resource paths each used: on every
//! [`Input::BusConnected`] it sends an [`Output::SessionsRequest`], and each
//! endpoint of the answers ([`Input::Sessions`]) goes through
//! [`Cmx::adopt_session`]: such *adopted* endpoints count as connected, the names
//! in the paths count as used, and they get what they have not reported applied;
//! in case the list is incomplete, a `ConfigUpdated` for any name is pushed to
//! them (to other endpoints only for the names they used).
//!
//! **Never older after newer.** Config IDs are opaque, and on NATS a
//! `ConfigUpdated` broadcast, a CDTP response, a redelivery and a late answer
//! can arrive in any order. So the engine does not push the content of a
//! `ConfigUpdated`: it treats it as a notification and fetches the current
//! configuration from the provider, and it keeps **at most one CDTP request in
//! flight per endpoint and name**. Every answer it delivers therefore comes from
//! a request sent after the previous delivered answer was received, and the
//! provider's store only moves forward. A response to a request sent before the
//! latest `ConfigUpdated` (or app version change) is not delivered: the
//! configuration is requested again and the device gets the newer answer. A
//! response that comes after its deadline, or twice, matches nothing and is
//! dropped. (This assumes one CMX replica serves a given endpoint at a time, as
//! session affinity arranges.)
//!
//! **App versions.** An endpoint's app version comes from its requests
//! (`ClientData.appVersionName`), `connected` and `appversion-updated`. These
//! travel through different services and can arrive out of order, so the newest
//! by message timestamp wins (an event wins a tie). A change, from an event or
//! from a request, pushes every configuration the device has not reported
//! applied. Answers are labelled with the app version they were fetched for.
//!
//! **Applied reports** to `/applied/json[/<name>]` become a `ConfigApplied`
//! broadcast (2xx applied, anything else rejected, the reason kept) and an empty
//! 200 response. A `configId` in a configuration request counts as applied for the
//! engine's bookkeeping (implicit application); broadcasting it is optional
//! ([`CmxConfig::broadcast_implicit_applied`]).
//!
//! **Which configuration.** The resource path names it: the 1/KP topic after
//! the token, so it is what the device addressed, and the answer goes back on
//! it. No name in the path is the default configuration. The 4/ESP
//! `configName`, when present, must name the same configuration (`default` and
//! no name are one); any other name is a 400 with a reason, never a winner: a
//! request on `/config/json` served from another configuration would be applied
//! by the device as its default.
//!
//! **Errors** go back as `ExtensionData` with a status and a reason phrase: 400
//! for a malformed payload (the reason names the problem), 404 for an unknown
//! resource or app version, 503 when a limit is reached, 504 when the provider
//! did not answer by the deadline, the provider's 4xx/5xx otherwise (502 for an
//! unusable answer). Nothing panics on any input.
//!
//! **Refusals without a request ID** (an applied report, a fire-and-forget
//! configuration request) get no answer: 1/KP says a request without a request
//! ID gets no response, and an error response is a response (its topic,
//! `<request topic>/error`, exists only for requests; 7/CMP's applied resource
//! has an empty response). The device cannot be told, so the operator is: each
//! one is counted by [`RefusalReason`] in [`Stats::refused_without_request_id`]
//! and kept as a [`Refusal`] (correlation ID, endpoint, resource path, status,
//! reason; nothing of the payload) for the driver to take with
//! [`Cmx::poll_refusal`] and log.
//!
//! **Memory** is bounded: at most `max_endpoints` endpoints (the least recently
//! active is forgotten first, disconnected ones before connected ones), a
//! disconnected endpoint is forgotten `endpoint_ttl` after its last activity, at
//! most `max_pending_requests` CDTP requests are in flight (past that, devices
//! get a 503 and pushes are retried), and per endpoint at most
//! `max_names_per_endpoint` names; 9/ELCE events and sessions lists with more
//! than `max_endpoints_per_event` endpoints are refused when decoded. App
//! version names, config IDs, configuration names and reply subjects are
//! interned; an endpoint holds small handles (bytes per idle endpoint:
//! `benches/memory.rs`).

mod config;
mod input;
mod output;
mod state;

pub use config::{CmxConfig, ConfigError};
pub use input::{Input, InputError, InputKind};
pub use output::{
    OutgoingConfigApplied, OutgoingConfigRequest, OutgoingExtensionData, OutgoingSessionsRequest,
    Output, Refusal, RefusalCounts, RefusalReason, Stats,
};

use std::borrow::Cow;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use kaa_cdtp::{ConfigAnswer, ConfigResponse as CdtpResponse, ConfigUpdated, InvalidAnswer};
use kaa_elce::{
    AppVersionUpdatedEvent, ConnectedEvent, DecodeLimits, DisconnectedEvent, ElceEvent, EventGroup,
    SessionsResponse, UnregisteredEvent,
};
use kaa_esp::ClientData;
use kaa_esp::subject::ListenerFilters;
use kaa_ism::UnixMillis;
use kaa_ism::common::CommonFields;
use kaa_ism::subject::{ServiceSubject, Subject, SubjectFilter, Token};

use crate::intern::{Interner, NONE};
use crate::message::{AppliedRequest, ConfigRequest, ConfigResponse, PayloadError, UNCHANGED_JSON};
use crate::resource::{self, CONFIG_JSON, ResourceKind, ResourcePath};
use state::{Endpoint, Endpoints, NameState, Observe, PushMode};

const EXTENSION_DATA: &str = "ExtensionData";
/// The most refusals kept for [`Cmx::poll_refusal`] until the driver takes them.
const MAX_KEPT_REFUSALS: usize = 1024;
const ABSENT_JSON: &[u8] = br#"{"configId":"","config":null}"#;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    /// A CDTP request's deadline.
    Deadline(u64),
    /// Retry a failed push.
    Retry {
        slot: u32,
        incarnation: u32,
        name: u32,
    },
}

/// A device request waiting for a CDTP answer.
struct Waiter {
    endpoint_id: Arc<str>,
    request_id: Option<i32>,
    correlation_id: Box<str>,
    subject: Arc<str>,
    resource_path: Arc<str>,
    app_version: Arc<str>,
    /// The `configId` the device sent.
    config_id: Option<Arc<str>>,
}

/// A CDTP request in flight.
struct Pending {
    slot: u32,
    name: u32,
    endpoint_id: Arc<str>,
    app_version: Arc<str>,
    /// The `configId` sent.
    asked: Option<Arc<str>>,
    /// A change arrived after the request was sent: the answer may be older.
    stale: bool,
    waiters: Vec<Waiter>,
}

/// What a CDTP answer (or its absence) comes to.
enum Fetched {
    /// The current configuration; `payload` is the 7/CMP response JSON.
    Config { id: Box<str>, payload: Bytes },
    /// The configuration asked about is current.
    Unchanged,
    /// No usable answer.
    Failed { status: i32, reason: String },
}

/// Where and when app version information about an endpoint came from.
#[derive(Debug, Clone, Copy)]
struct AppVersionStamp {
    timestamp: i64,
    from_event: bool,
}

impl AppVersionStamp {
    fn event(timestamp: i64) -> Self {
        AppVersionStamp {
            timestamp,
            from_event: true,
        }
    }

    fn device(timestamp: i64) -> Self {
        AppVersionStamp {
            timestamp,
            from_event: false,
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Removal {
    Evicted,
    Expired,
    Unregistered,
}

/// Where to send a response to one `ClientData`.
struct Reply<'m> {
    subject: Arc<str>,
    /// The `ClientData` timestamp.
    timestamp: i64,
    correlation_id: &'m str,
    app_version: &'m str,
    endpoint_id: Option<&'m str>,
    resource_path: &'m str,
    request_id: Option<i32>,
}

struct Settings {
    config: CmxConfig,
    instance: Arc<str>,
    replica: Arc<str>,
    prefix: String,
    extension_data_subject: Arc<str>,
    request_subject: Arc<str>,
    response_subject: Arc<str>,
    applied_subject: Arc<str>,
    config_path: Arc<str>,
    sessions_request_subject: Arc<str>,
    sessions_response_subject: Arc<str>,
    decode_limits: DecodeLimits,
    subscriptions: Subscriptions,
    cdtp_timeout_ms: i64,
    message_timeout_ms: i64,
}

/// The subjects a CMX replica subscribes to, from [`Cmx::subscriptions`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Subscriptions {
    /// `ClientData`: the instance-wide subject (in the queue group) and the
    /// replica subject.
    pub client_data: ListenerFilters,
    /// `kaa.v1.replica.<replica>.cdtp.response`: CDTP responses (no queue group).
    pub cdtp_responses: SubjectFilter,
    /// `kaa.v1.events.<provider>.endpoint.config.updated`.
    pub config_updated: SubjectFilter,
    /// `kaa.v1.events.*.endpoint.connectivity.*`.
    pub connectivity: SubjectFilter,
    /// `kaa.v1.events.*.endpoint.lifecycle.*`.
    pub lifecycle: SubjectFilter,
    /// `kaa.v1.replica.<replica>.elce.SessionsResponse`: communication services'
    /// lists of their sessions, the answers to [`Output::SessionsRequest`]
    /// (kaa-rs extension).
    pub sessions_responses: SubjectFilter,
    /// `kaa.v1.events.<provider>.provider.started`: the provider (re)started
    /// (kaa-rs extension, [`kaa_cdtp::ProviderStarted`]).
    pub provider_started: SubjectFilter,
}

impl Subscriptions {
    /// Every filter, with the queue group to use (`None`: every replica gets
    /// every message).
    ///
    /// Broadcasts are subscribed without a queue group: each replica keeps state
    /// for the endpoints it serves and must see every event.
    pub fn all(&self) -> Vec<(&SubjectFilter, Option<&str>)> {
        vec![
            (
                &self.client_data.instance_wide,
                Some(self.client_data.queue_group.as_str()),
            ),
            (&self.client_data.replica, None),
            (&self.cdtp_responses, None),
            (&self.config_updated, None),
            (&self.connectivity, None),
            (&self.lifecycle, None),
            (&self.sessions_responses, None),
            (&self.provider_started, None),
        ]
    }
}

/// What the engine knows about one endpoint, from [`Cmx::endpoint`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct EndpointSnapshot {
    /// Whether the endpoint has a communication session.
    pub connected: bool,
    /// Its application version.
    pub app_version_name: String,
    /// The default configuration first, then the named ones.
    pub configurations: Vec<ConfigurationSnapshot>,
}

/// What the engine knows about one configuration name of an endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConfigurationSnapshot {
    /// `None` for the default configuration.
    pub name: Option<String>,
    /// The configuration the device holds, as far as the engine knows.
    pub holds: Option<String>,
    /// The last configuration the device reported applied.
    pub applied: Option<String>,
    /// The last configuration the device rejected.
    pub rejected: Option<String>,
    /// The `observe` of the device's latest request.
    pub observe: Option<bool>,
}

/// The CMX engine. See the [module docs](self).
pub struct Cmx {
    s: Settings,
    eps: Endpoints,
    app_versions: Interner,
    names: Interner,
    config_ids: Interner,
    replies: Interner,
    pending: HashMap<u64, Pending>,
    in_flight: HashMap<(u32, u32), u64>,
    timers: BinaryHeap<Reverse<(UnixMillis, Timer)>>,
    out: VecDeque<Output>,
    refusals: VecDeque<Refusal>,
    next_seq: u64,
    next_incarnation: u32,
    /// How many times the bus connected ([`Input::BusConnected`]).
    bus_connections: u64,
    stats: Stats,
}

impl std::fmt::Debug for Cmx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cmx")
            .field("instance", &self.s.instance)
            .field("replica", &self.s.replica)
            .field("tracked_endpoints", &self.eps.len())
            .field("pending_requests", &self.pending.len())
            .field("queued_outputs", &self.out.len())
            .finish_non_exhaustive()
    }
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl Cmx {
    /// A new engine with no endpoints.
    pub fn new(config: CmxConfig) -> Result<Self, ConfigError> {
        config.validate()?;
        let name = |field: &'static str| move |source| ConfigError::Name { field, source };
        let extension_data_subject =
            kaa_esp::subject::extension_data_subject(&config.communication_service)
                .map_err(name("communication_service"))?
                .to_string();
        let request_subject = kaa_cdtp::subject::request_subject(&config.provider)
            .map_err(name("provider"))?
            .to_string();
        let response_subject = kaa_cdtp::subject::response_subject(&config.replica_id)
            .map_err(name("replica_id"))?
            .to_string();
        let applied_subject = kaa_cdtp::subject::config_applied_subject(&config.instance_name)
            .map_err(name("instance_name"))?
            .to_string();
        let subscriptions = Subscriptions {
            client_data: ListenerFilters::new(
                &config.instance_name,
                &config.replica_id,
                kaa_esp::subject::MessageType::ClientData,
            )
            .map_err(name("instance_name"))?,
            cdtp_responses: kaa_cdtp::subject::response_filter(&config.replica_id)
                .map_err(name("replica_id"))?,
            config_updated: kaa_cdtp::subject::config_updated_filter(Token::Name(&config.provider))
                .map_err(name("provider"))?,
            connectivity: EventGroup::Connectivity
                .filter(Token::Any)
                .map_err(name("connectivity"))?,
            lifecycle: EventGroup::Lifecycle
                .filter(Token::Any)
                .map_err(name("lifecycle"))?,
            sessions_responses: kaa_elce::sessions::sessions_response_filter(&config.replica_id)
                .map_err(name("replica_id"))?,
            provider_started: kaa_cdtp::subject::provider_started_filter(Token::Name(
                &config.provider,
            ))
            .map_err(name("provider"))?,
        };
        let sessions_request_subject =
            kaa_elce::sessions_request_subject(&config.communication_service)
                .map_err(name("communication_service"))?
                .to_string();
        let sessions_response_subject = kaa_elce::sessions_response_subject(&config.replica_id)
            .map_err(name("replica_id"))?
            .to_string();
        let s = Settings {
            instance: config.instance_name.as_str().into(),
            replica: config.replica_id.as_str().into(),
            prefix: config
                .correlation_prefix
                .clone()
                .unwrap_or_else(|| config.replica_id.clone()),
            extension_data_subject: extension_data_subject.into(),
            request_subject: request_subject.into(),
            response_subject: response_subject.into(),
            applied_subject: applied_subject.into(),
            config_path: CONFIG_JSON.into(),
            sessions_request_subject: sessions_request_subject.into(),
            sessions_response_subject: sessions_response_subject.into(),
            decode_limits: DecodeLimits::with_max_endpoints(config.max_endpoints_per_event),
            subscriptions,
            cdtp_timeout_ms: millis(config.cdtp_timeout),
            message_timeout_ms: millis(config.message_timeout),
            config,
        };
        Ok(Cmx {
            s,
            eps: Endpoints::new(),
            app_versions: Interner::new(),
            names: Interner::new(),
            config_ids: Interner::new(),
            replies: Interner::new(),
            pending: HashMap::new(),
            in_flight: HashMap::new(),
            timers: BinaryHeap::new(),
            out: VecDeque::new(),
            refusals: VecDeque::new(),
            next_seq: 1,
            next_incarnation: 0,
            bus_connections: 0,
            stats: Stats::default(),
        })
    }

    /// The configuration the engine runs with.
    pub fn config(&self) -> &CmxConfig {
        &self.s.config
    }

    /// What to subscribe to.
    pub fn subscriptions(&self) -> &Subscriptions {
        &self.s.subscriptions
    }

    /// The next message to publish, if any. Drain it after every `handle_*` call.
    #[must_use]
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// The next device request the engine refused without an answer because it
    /// had no request ID, if any: for the driver to log (1/KP sends such a device
    /// nothing, not even on `…/error`). Counted by reason in
    /// [`Stats::refused_without_request_id`] whether or not it is taken; the
    /// engine keeps the latest 1,024 that were not taken.
    pub fn poll_refusal(&mut self) -> Option<Refusal> {
        self.refusals.pop_front()
    }

    /// When [`Cmx::handle_timeout`] should next be called; `None` when nothing is
    /// scheduled.
    #[must_use]
    pub fn poll_timeout(&mut self) -> Option<UnixMillis> {
        self.prune_timers();
        let timer = self.timers.peek().map(|Reverse((at, _))| *at);
        let ttl = self
            .eps
            .oldest_idle()
            .and_then(|slot| self.eps.get(slot))
            .map(|e| e.last_active.saturating_add(self.s.config.endpoint_ttl));
        match (timer, ttl) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Counters of what the engine did.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// How many endpoints are tracked.
    pub fn tracked_endpoints(&self) -> usize {
        self.eps.len()
    }

    /// How many CDTP requests are in flight.
    pub fn pending_requests(&self) -> usize {
        self.pending.len()
    }

    /// What the engine knows about an endpoint, if it tracks it.
    pub fn endpoint(&self, endpoint_id: &str) -> Option<EndpointSnapshot> {
        let e = self.eps.get(self.eps.find(endpoint_id)?)?;
        let id = |h: u32| self.config_ids.get(h).map(|s| s.to_string());
        Some(EndpointSnapshot {
            connected: e.connected,
            app_version_name: self
                .app_versions
                .get(e.app_version)
                .map(|s| s.to_string())
                .unwrap_or_default(),
            configurations: e
                .names()
                .map(|n| ConfigurationSnapshot {
                    name: self.names.get(n.name).map(|s| s.to_string()),
                    holds: id(n.holds),
                    applied: id(n.confirmed),
                    rejected: id(n.rejected),
                    observe: match n.observe {
                        Observe::Absent => None,
                        Observe::On => Some(true),
                        Observe::Off => Some(false),
                    },
                })
                .collect(),
        })
    }

    // -----------------------------------------------------------------------
    // Inputs
    // -----------------------------------------------------------------------

    /// Decodes a message received on `subject` (one of [`Cmx::subscriptions`]) into
    /// an [`Input`], applying every decoding limit of the configuration
    /// (`max_endpoints_per_event` for 9/ELCE events and sessions lists). The input
    /// borrows from `datum`. Skip NATS no-responders statuses before calling it:
    /// they are not messages.
    pub fn decode_input<'a>(
        &self,
        subject: &str,
        reply_to: Option<&'a str>,
        datum: &'a [u8],
    ) -> Result<Input<'a>, InputError> {
        input::decode(
            &self.s.subscriptions,
            self.s.decode_limits,
            subject,
            reply_to,
            datum,
        )
    }

    /// The engine's one way in: handles an [`Input`] at `now`. Drain
    /// [`Cmx::poll_output`] afterwards and look at [`Cmx::poll_timeout`] again.
    pub fn handle_input(&mut self, input: Input<'_>, now: UnixMillis) {
        match input {
            Input::ClientData { message, reply_to } => {
                self.handle_client_data(&message, reply_to, now)
            }
            Input::ConfigResponse(m) => self.handle_config_response(&m, now),
            Input::ConfigUpdated(m) => self.handle_config_updated(&m, now),
            Input::Event(e) => self.handle_elce_event(&e, now),
            Input::Sessions(m) => self.handle_sessions(&m, now),
            Input::ProviderStarted(_) => self.resync(now),
            Input::Timeout => self.handle_timeout(now),
            Input::BusConnected => self.handle_bus_connected(now),
        }
    }

    /// [`Cmx::decode_input`] and [`Cmx::handle_input`] in one call. An error is a
    /// message that could not be used (nothing was handled): log it and go on.
    pub fn handle_message(
        &mut self,
        subject: &str,
        reply_to: Option<&str>,
        datum: &[u8],
        now: UnixMillis,
    ) -> Result<(), InputError> {
        let input = self.decode_input(subject, reply_to, datum)?;
        self.handle_input(input, now);
        Ok(())
    }

    /// [`Input::BusConnected`]: asks the communication service for its sessions,
    /// and after a reconnect re-synchronizes ([`Cmx::resync`]) first.
    fn handle_bus_connected(&mut self, now: UnixMillis) {
        self.bus_connections += 1;
        if self.bus_connections > 1 {
            self.resync(now);
        }
        self.stats.sessions_requests += 1;
        let correlation_id = format!("{}-sessions-{}", self.s.prefix, self.bus_connections);
        self.out
            .push_back(Output::SessionsRequest(OutgoingSessionsRequest {
                subject: Arc::clone(&self.s.sessions_request_subject),
                reply_to: Arc::clone(&self.s.sessions_response_subject),
                correlation_id,
                timestamp: now,
                extension_instance_name: Arc::clone(&self.s.instance),
            }));
    }

    /// [`Input::Sessions`]: [`Cmx::adopt_session`] for every endpoint listed.
    fn handle_sessions(&mut self, msg: &SessionsResponse<'_>, now: UnixMillis) {
        self.stats.sessions_responses += 1;
        let mut paths: Vec<&str> = Vec::new();
        for s in &msg.endpoints {
            paths.clear();
            paths.extend(s.resource_paths.iter().map(|p| &**p));
            self.adopt_session(&s.endpoint_id, &s.app_version_name, &paths, now);
        }
    }

    /// Handles any 9/ELCE event (`registered` and traffic reports are ignored).
    pub fn handle_elce_event(&mut self, event: &ElceEvent<'_>, now: UnixMillis) {
        match event {
            ElceEvent::Connected(e) => self.handle_connected(e, now),
            ElceEvent::Disconnected(e) => self.handle_disconnected(e, now),
            ElceEvent::AppVersionUpdated(e) => self.handle_app_version_updated(e, now),
            ElceEvent::Unregistered(e) => self.handle_unregistered(e, now),
            _ => {}
        }
    }

    /// A device's message, forwarded by a communication service, with the NATS
    /// `replyTo` it came with (session affinity for the answer).
    pub fn handle_client_data(
        &mut self,
        msg: &ClientData<'_>,
        reply_to: Option<&str>,
        now: UnixMillis,
    ) {
        self.stats.client_data += 1;
        if msg.is_expired(now) {
            self.stats.client_data_expired += 1;
            return;
        }
        let subject = self.reply_subject(reply_to);
        let r = Reply {
            subject,
            timestamp: msg.timestamp,
            correlation_id: &msg.correlation_id,
            app_version: &msg.app_version_name,
            endpoint_id: msg.endpoint_id.as_deref(),
            resource_path: &msg.resource_path,
            request_id: msg.request_id,
        };
        let endpoint_id = match msg.endpoint_id.as_deref() {
            Some(id) if !id.is_empty() => id,
            _ => {
                return self.reply_error(
                    &r,
                    400,
                    RefusalReason::NoEndpoint,
                    "`endpointId` is required: 7/CMP configurations belong to endpoints",
                    now,
                );
            }
        };
        if let Some(known) = &self.s.config.app_versions
            && !known.contains(&*msg.app_version_name)
        {
            let reason = format!("unknown application version {:?}", msg.app_version_name);
            return self.reply_error(&r, 404, RefusalReason::UnknownAppVersion, reason, now);
        }
        let path = match ResourcePath::parse(&msg.resource_path) {
            Ok(p) => p,
            Err(e) => {
                return self.reply_error(
                    &r,
                    404,
                    RefusalReason::UnknownResource,
                    e.to_string(),
                    now,
                );
            }
        };
        let written = match resolve_name(path.name(), msg.config_name.as_deref()) {
            Ok(n) => n,
            Err(reason) => {
                return self.reply_error(&r, 400, RefusalReason::ConfigNameMismatch, reason, now);
            }
        };
        match path.kind() {
            ResourceKind::Config => {
                self.config_request(&r, endpoint_id, written, &msg.payload, now)
            }
            ResourceKind::Applied => {
                self.applied_request(&r, endpoint_id, written, &msg.payload, now)
            }
        }
    }

    /// The provider's answer to a CDTP request (on the `replyTo` the engine set).
    pub fn handle_config_response(&mut self, msg: &CdtpResponse<'_>, now: UnixMillis) {
        let Some(seq) = self
            .parse_seq(&msg.correlation_id)
            .filter(|s| self.pending.contains_key(s))
        else {
            self.stats.cdtp_responses_unmatched += 1;
            return;
        };
        self.stats.cdtp_responses += 1;
        let Some(p) = self.pending.get(&seq) else {
            return;
        };
        let fetched = if *p.endpoint_id != *msg.endpoint_id {
            Fetched::Failed {
                status: 502,
                reason: format!(
                    "the configuration provider answered for endpoint {:?}",
                    msg.endpoint_id
                ),
            }
        } else {
            interpret(msg, p.asked.as_deref())
        };
        if matches!(fetched, Fetched::Failed { .. }) {
            self.stats.provider_errors += 1;
        }
        self.complete(seq, fetched, now);
    }

    /// The provider's broadcast that an endpoint's configuration changed. It is a
    /// notification: the engine fetches the current configuration before pushing
    /// (see the module docs for why).
    pub fn handle_config_updated(&mut self, msg: &ConfigUpdated<'_>, now: UnixMillis) {
        self.stats.config_updates += 1;
        let same_version = |cmx: &Self, slot: u32| {
            cmx.eps.get(slot).is_some_and(|e| {
                cmx.app_versions
                    .get(e.app_version)
                    .is_some_and(|a| **a == *msg.app_version_name)
            })
        };
        let slot = self
            .eps
            .find(&msg.endpoint_id)
            .filter(|slot| same_version(self, *slot));
        let name = slot.and_then(|slot| {
            let e = self.eps.get(slot)?;
            match resource::canonical_config_name(msg.config_name.as_deref()) {
                None => Some(NONE),
                Some(n) => match self.names.find(n).filter(|h| e.name(*h).is_some()) {
                    Some(h) => Some(h),
                    // An adopted endpoint's names are unknown: the provider's word
                    // that this one changed for it is taken as a sign it is used.
                    None if e.adopted && e.connected => self.name_of(slot, Some(n), false),
                    None => None,
                },
            }
        });
        let (Some(slot), Some(name)) = (slot, name) else {
            self.stats.config_updates_ignored += 1;
            return;
        };
        if let Some(seq) = self.in_flight.get(&(slot, name))
            && let Some(p) = self.pending.get_mut(seq)
        {
            p.stale = true;
        }
        self.trigger_push(slot, name, PushMode::IfNotHeld, now);
    }

    /// Re-synchronizes after an outage of the bus: updates broadcast while this
    /// engine was cut off (`ConfigUpdated`, `connected`) may be lost for good, so
    /// the current configuration of every connected endpoint is fetched again, for
    /// every name it observes, and pushed unless the device already holds it.
    /// Answers in flight count as stale. The driver calls it once its
    /// subscriptions are back after a reconnect.
    pub fn resync(&mut self, now: UnixMillis) {
        self.stats.resyncs += 1;
        for p in self.pending.values_mut() {
            p.stale = true;
        }
        for slot in self.eps.connected_slots() {
            self.trigger_all(slot, PushMode::IfNotHeld, now);
        }
    }

    /// A communication service's list of the sessions it holds (a 9/ELCE
    /// `connected` event it sends on request, not a broadcast), e.g. to an engine
    /// that restarted while the sessions stayed up: [`Cmx::adopt_session`] for
    /// each endpoint, with no resource paths.
    pub fn adopt_sessions(&mut self, msg: &ConnectedEvent<'_>, now: UnixMillis) {
        for (endpoint_id, app_version) in &msg.endpoints {
            self.adopt_session(endpoint_id, app_version, &[], now);
        }
    }

    /// One endpoint a communication service holds a session for, with the
    /// resource paths the session has used with this extension (e.g.
    /// `/config/json`, `/config/json/network`), e.g. for an engine that restarted
    /// while the session stayed up. The endpoint counts as connected, as by
    /// [`Cmx::handle_connected`], and the configuration names in the paths count as
    /// used, so it gets every one of them it has not reported applied. One this
    /// engine did not know is *adopted*: which names its device observes may not
    /// all be listed, so a `ConfigUpdated` for any name is pushed to it (to other
    /// endpoints only for the names they used).
    pub fn adopt_session(
        &mut self,
        endpoint_id: &str,
        app_version: &str,
        resource_paths: &[&str],
        now: UnixMillis,
    ) {
        if endpoint_id.is_empty() {
            return;
        }
        let new = self.eps.find(endpoint_id).is_none();
        let Some(slot) = self.track(endpoint_id, app_version, AppVersionStamp::event(now.0), now)
        else {
            return;
        };
        for path in resource_paths {
            if let Ok(r) = ResourcePath::parse(path)
                && r.kind() == ResourceKind::Config
            {
                let _ = self.name_of(slot, r.name(), true);
            }
        }
        // A session the engine did not see start: the affinity it knew is stale.
        self.set_reply(slot, NONE);
        self.eps.set_connected(slot, true, now);
        if new && let Some(e) = self.eps.get_mut(slot) {
            e.adopted = true;
        }
        self.trigger_all(slot, PushMode::IfNotApplied, now);
    }

    /// Endpoints opened a communication session: push what they have not applied.
    pub fn handle_connected(&mut self, msg: &ConnectedEvent<'_>, now: UnixMillis) {
        for (endpoint_id, app_version) in &msg.endpoints {
            if endpoint_id.is_empty() {
                continue;
            }
            let Some(slot) = self.track(
                endpoint_id,
                app_version,
                AppVersionStamp::event(msg.timestamp),
                now,
            ) else {
                continue;
            };
            // A new session: the affinity of the previous one is gone.
            self.set_reply(slot, NONE);
            self.eps.set_connected(slot, true, now);
            self.trigger_all(slot, PushMode::IfNotApplied, now);
        }
    }

    /// Endpoints' communication sessions ended.
    pub fn handle_disconnected(&mut self, msg: &DisconnectedEvent<'_>, now: UnixMillis) {
        for (endpoint_id, _) in &msg.endpoints {
            let Some(slot) = self.eps.find(endpoint_id) else {
                continue;
            };
            self.set_reply(slot, NONE);
            self.eps.set_connected(slot, false, now);
            if let Some(e) = self.eps.get_mut(slot) {
                for i in 0..=e.named_count() {
                    if let Some(n) = e.name_at(i).and_then(|h| e.name_mut(h)) {
                        n.push = PushMode::None;
                        n.attempts = 0;
                    }
                }
            }
        }
    }

    /// An endpoint moved to another application version: push its configurations
    /// for the new one.
    pub fn handle_app_version_updated(
        &mut self,
        msg: &AppVersionUpdatedEvent<'_>,
        now: UnixMillis,
    ) {
        let Some(slot) = self.eps.find(&msg.endpoint_id) else {
            return;
        };
        self.set_app_version(
            slot,
            &msg.app_version_name,
            AppVersionStamp::event(msg.timestamp),
        );
        // What was delivered under the previous app version may not have been
        // kept: compare with what the device reported applied.
        self.trigger_all(slot, PushMode::IfNotApplied, now);
    }

    /// An endpoint was unregistered: forget it.
    pub fn handle_unregistered(&mut self, msg: &UnregisteredEvent<'_>, now: UnixMillis) {
        if let Some(slot) = self.eps.find(&msg.endpoint_id) {
            self.remove_endpoint(slot, Removal::Unregistered, now);
        }
    }

    /// Runs what is due at `now`: CDTP deadlines (504 to waiting devices), push
    /// retries, and TTL expiry.
    pub fn handle_timeout(&mut self, now: UnixMillis) {
        while let Some(Reverse((at, timer))) = self.timers.peek().copied() {
            if at > now {
                break;
            }
            self.timers.pop();
            match timer {
                Timer::Deadline(seq) => {
                    if self.pending.contains_key(&seq) {
                        self.stats.cdtp_timeouts += 1;
                        let reason = format!(
                            "the configuration provider did not answer within {} ms",
                            self.s.cdtp_timeout_ms
                        );
                        self.complete(
                            seq,
                            Fetched::Failed {
                                status: 504,
                                reason,
                            },
                            now,
                        );
                    }
                }
                Timer::Retry {
                    slot,
                    incarnation,
                    name,
                } => self.retry_push(slot, incarnation, name, now),
            }
        }
        let ttl = self.s.config.endpoint_ttl;
        while let Some(slot) = self.eps.oldest_idle() {
            let due = self
                .eps
                .get(slot)
                .is_some_and(|e| e.last_active.saturating_add(ttl) <= now);
            if !due {
                break;
            }
            self.remove_endpoint(slot, Removal::Expired, now);
        }
    }

    // -----------------------------------------------------------------------
    // Device requests
    // -----------------------------------------------------------------------

    fn config_request(
        &mut self,
        r: &Reply<'_>,
        endpoint_id: &str,
        written: Option<&str>,
        payload: &[u8],
        now: UnixMillis,
    ) {
        let request = match ConfigRequest::from_json(payload) {
            Ok(x) => x,
            Err(e) => return self.reply_malformed(r, &e, now),
        };
        if let Some(id) = &request.config_id
            && id.len() > self.s.config.max_config_id_len
        {
            let reason = format!(
                "`configId` is longer than {} bytes",
                self.s.config.max_config_id_len
            );
            return self.reply_error(r, 400, RefusalReason::ConfigIdTooLong, reason, now);
        }
        let Some(slot) = self.track_session(endpoint_id, r, now) else {
            return self.reply_error(
                r,
                503,
                RefusalReason::Limit,
                "this CMX tracks no endpoints (max_endpoints is 0)",
                now,
            );
        };
        let Some(name) = self.name_of(slot, written, true) else {
            self.stats.backpressure_rejections += 1;
            let reason = format!(
                "the endpoint already uses {} named configurations",
                self.s.config.max_names_per_endpoint
            );
            return self.reply_error(r, 503, RefusalReason::Limit, reason, now);
        };
        let Self {
            eps,
            config_ids,
            app_versions,
            ..
        } = self;
        let Some(e) = eps.get_mut(slot) else {
            return;
        };
        let app_version = app_versions
            .get(e.app_version)
            .cloned()
            .unwrap_or_else(|| r.app_version.into());
        let endpoint_id = e.id.clone();
        let Some(ns) = e.name_mut(name) else {
            return;
        };
        ns.observe = match request.observe {
            None => Observe::Absent,
            Some(true) => Observe::On,
            Some(false) => Observe::Off,
        };
        if ns.observe == Observe::Off {
            ns.push = PushMode::None;
        }
        let config_id = request.config_id.as_deref().map(|id| {
            // Implicit application: the device says it holds this configuration.
            let h = config_ids.acquire(id);
            config_ids.set(&mut ns.confirmed, h);
            config_ids.set(&mut ns.holds, h);
            if ns.rejected == h {
                config_ids.set(&mut ns.rejected, NONE);
            }
            let arc = config_ids.get(h).cloned();
            config_ids.release(h);
            arc.unwrap_or_else(|| id.into())
        });
        let resource_path = if r.resource_path == CONFIG_JSON {
            self.s.config_path.clone()
        } else {
            r.resource_path.into()
        };
        let waiter = Waiter {
            endpoint_id,
            request_id: r.request_id,
            correlation_id: r.correlation_id.into(),
            subject: r.subject.clone(),
            resource_path,
            app_version,
            config_id,
        };
        self.enqueue(slot, name, waiter, now);
    }

    fn applied_request(
        &mut self,
        r: &Reply<'_>,
        endpoint_id: &str,
        written: Option<&str>,
        payload: &[u8],
        now: UnixMillis,
    ) {
        let report = match AppliedRequest::from_json(payload) {
            Ok(x) => x,
            Err(e) => return self.reply_malformed(r, &e, now),
        };
        if report.config_id.len() > self.s.config.max_config_id_len {
            let reason = format!(
                "`configId` is longer than {} bytes",
                self.s.config.max_config_id_len
            );
            return self.reply_error(r, 400, RefusalReason::ConfigIdTooLong, reason, now);
        }
        let slot = self.track_session(endpoint_id, r, now);
        // Bookkeeping, when the endpoint and name can be tracked.
        if let Some(slot) = slot
            && let Some(name) = self.name_of(slot, written, false)
        {
            let Self {
                eps, config_ids, ..
            } = self;
            if let Some(ns) = eps.get_mut(slot).and_then(|e| e.name_mut(name)) {
                let h = config_ids.acquire(&report.config_id);
                if report.is_success() {
                    config_ids.set(&mut ns.confirmed, h);
                    config_ids.set(&mut ns.holds, h);
                    if ns.rejected == h {
                        config_ids.set(&mut ns.rejected, NONE);
                    }
                } else {
                    // The device keeps what it had before.
                    config_ids.set(&mut ns.rejected, h);
                    let confirmed = ns.confirmed;
                    config_ids.set(&mut ns.holds, confirmed);
                }
                config_ids.release(h);
            }
        }
        let config_name = resource::canonical_config_name(written).map(|n| {
            self.names
                .find(n)
                .and_then(|h| self.names.get(h))
                .cloned()
                .unwrap_or_else(|| n.into())
        });
        let app_version = slot
            .and_then(|s| self.eps.get(s))
            .and_then(|e| self.app_versions.get(e.app_version))
            .cloned()
            .unwrap_or_else(|| r.app_version.into());
        let endpoint: Arc<str> = slot
            .and_then(|s| self.eps.get(s))
            .map(|e| e.id.clone())
            .unwrap_or_else(|| endpoint_id.into());
        self.out
            .push_back(Output::ConfigApplied(OutgoingConfigApplied {
                subject: self.s.applied_subject.clone(),
                correlation_id: r.correlation_id.to_owned(),
                timestamp: now,
                timeout: self.s.message_timeout_ms,
                app_version_name: app_version.clone(),
                endpoint_id: endpoint.clone(),
                config_id: report.config_id.as_ref().into(),
                originator_replica_id: self.s.replica.clone(),
                status_code: report.status_code,
                reason_phrase: report.reason_phrase.as_deref().map(Arc::from),
                config_name,
            }));
        if r.request_id.is_some() {
            self.emit(
                r.subject.clone(),
                r.correlation_id.to_owned(),
                app_version,
                Some(endpoint),
                r.resource_path.into(),
                r.request_id,
                None,
                200,
                None,
                now,
            );
        }
    }

    /// Adds a device request to the CDTP request in flight for its name, or
    /// sends one.
    fn enqueue(&mut self, slot: u32, name: u32, waiter: Waiter, now: UnixMillis) {
        if let Some(seq) = self.in_flight.get(&(slot, name)).copied()
            && let Some(p) = self.pending.get_mut(&seq)
        {
            if p.waiters.len() < self.s.config.max_waiters_per_request {
                p.waiters.push(waiter);
            } else {
                self.stats.backpressure_rejections += 1;
                self.answer_error(
                    &waiter,
                    503,
                    RefusalReason::Limit,
                    "too many requests for this configuration are waiting; retry later",
                    now,
                );
            }
            return;
        }
        if let Err(waiters) = self.send_request(slot, name, false, vec![waiter], now) {
            for w in &waiters {
                self.stats.backpressure_rejections += 1;
                self.answer_error(
                    w,
                    503,
                    RefusalReason::Limit,
                    "too many configuration requests in flight; retry later",
                    now,
                );
            }
        }
    }

    // -----------------------------------------------------------------------
    // CDTP
    // -----------------------------------------------------------------------

    /// Sends a CDTP request for (`slot`, `name`) with `waiters`; `full` asks for
    /// the content whatever the device holds. Gives the waiters back when
    /// `max_pending_requests` is reached.
    fn send_request(
        &mut self,
        slot: u32,
        name: u32,
        full: bool,
        waiters: Vec<Waiter>,
        now: UnixMillis,
    ) -> Result<(), Vec<Waiter>> {
        if self.pending.len() >= self.s.config.max_pending_requests {
            return Err(waiters);
        }
        let Some(e) = self.eps.get(slot) else {
            return Err(waiters);
        };
        let Some(ns) = e.name(name) else {
            return Err(waiters);
        };
        let asked = if full {
            None
        } else {
            self.config_ids.get(ns.confirmed).cloned()
        };
        let app_version = self
            .app_versions
            .get(e.app_version)
            .cloned()
            .unwrap_or_else(|| Arc::from(""));
        let config_name = self.names.get(name).cloned();
        let endpoint_id = e.id.clone();
        let (seq, correlation_id) = self.next_correlation_id();
        let deadline = now.saturating_add(self.s.config.cdtp_timeout);
        self.out
            .push_back(Output::ConfigRequest(OutgoingConfigRequest {
                subject: self.s.request_subject.clone(),
                reply_to: self.s.response_subject.clone(),
                correlation_id,
                timestamp: now,
                timeout: self.s.cdtp_timeout_ms,
                app_version_name: app_version.clone(),
                endpoint_id: endpoint_id.clone(),
                config_id: asked.clone(),
                config_name,
                deadline,
            }));
        self.pending.insert(
            seq,
            Pending {
                slot,
                name,
                endpoint_id,
                app_version,
                asked,
                stale: false,
                waiters,
            },
        );
        self.in_flight.insert((slot, name), seq);
        self.prune_timers();
        self.timers.push(Reverse((deadline, Timer::Deadline(seq))));
        self.stats.cdtp_requests += 1;
        Ok(())
    }

    /// Sends a CDTP request again for `waiters` and any push wanted; on
    /// backpressure the waiters get a 503 and the push is retried later.
    fn refetch(&mut self, slot: u32, name: u32, full: bool, waiters: Vec<Waiter>, now: UnixMillis) {
        if let Err(waiters) = self.send_request(slot, name, full, waiters, now) {
            for w in &waiters {
                self.stats.backpressure_rejections += 1;
                self.answer_error(
                    w,
                    503,
                    RefusalReason::Limit,
                    "too many configuration requests in flight; retry later",
                    now,
                );
            }
            if self.push_wanted(slot, name) {
                self.schedule_retry(slot, name, now);
            }
        }
    }

    /// Ends the CDTP request `seq` with `fetched`.
    fn complete(&mut self, seq: u64, fetched: Fetched, now: UnixMillis) {
        let Some(mut p) = self.pending.remove(&seq) else {
            return;
        };
        if self.in_flight.get(&(p.slot, p.name)) == Some(&seq) {
            self.in_flight.remove(&(p.slot, p.name));
        }
        let current_version = self
            .eps
            .get(p.slot)
            .and_then(|e| self.app_versions.get(e.app_version));
        if p.stale || current_version.is_none_or(|a| **a != *p.app_version) {
            // The answer may predate a change the engine has heard of: ask again.
            self.stats.cdtp_responses_stale += 1;
            let waiters = std::mem::take(&mut p.waiters);
            self.refetch(p.slot, p.name, false, waiters, now);
            return;
        }
        match fetched {
            Fetched::Failed { status, reason } => self.fetch_failed(p, status, &reason, now),
            Fetched::Unchanged => match p.asked.clone() {
                Some(asked) => self.deliver(p, &asked, None, now),
                None => self.fetch_failed(
                    p,
                    502,
                    "the configuration provider answered \"unchanged\" to a request without configId",
                    now,
                ),
            },
            Fetched::Config { id, payload } => self.deliver(p, &id, Some(payload), now),
        }
    }

    fn fetch_failed(&mut self, p: Pending, status: i32, reason: &str, now: UnixMillis) {
        let why = if status == 504 {
            RefusalReason::ProviderTimeout
        } else {
            RefusalReason::ProviderError
        };
        for w in &p.waiters {
            self.answer_error(w, status, why, reason.to_owned(), now);
        }
        if self.push_wanted(p.slot, p.name) {
            self.schedule_retry(p.slot, p.name, now);
        }
    }

    /// Delivers the current configuration `id` (with its 7/CMP response
    /// `payload`, or `None` when the provider said "unchanged") to the waiting
    /// devices and, if wanted, as a push.
    fn deliver(&mut self, p: Pending, id: &str, payload: Option<Bytes>, now: UnixMillis) {
        let mut need_content = Vec::new();
        let mut device_has_it = false;
        let mut implicit: Option<(Box<str>, Arc<str>)> = None;
        for mut w in p.waiters {
            // The configuration is the one of the app version it was fetched for.
            w.app_version = p.app_version.clone();
            if w.config_id.as_deref() == Some(id) {
                device_has_it = true;
                if self.s.config.broadcast_implicit_applied && implicit.is_none() {
                    implicit = Some((w.correlation_id.clone(), w.app_version.clone()));
                }
                if w.request_id.is_some() {
                    self.answer(&w, 200, None, Some(Bytes::from_static(UNCHANGED_JSON)), now);
                }
            } else if let Some(payload) = &payload {
                device_has_it = true;
                // Without a request ID this goes out as a push.
                self.answer(&w, 200, None, Some(payload.clone()), now);
            } else {
                need_content.push(w);
            }
        }
        let Self {
            eps, config_ids, ..
        } = self;
        let Some(e) = eps.get_mut(p.slot) else {
            return;
        };
        let connected = e.connected;
        let Some(ns) = e.name_mut(p.name) else {
            return;
        };
        let h = config_ids.acquire(id);
        if device_has_it {
            config_ids.set(&mut ns.holds, h);
        }
        let absent = id.is_empty();
        let want_push = connected
            && ns.observe != Observe::Off
            && !device_has_it
            && match ns.push {
                PushMode::None => false,
                PushMode::IfNotHeld => {
                    h != ns.holds && h != ns.rejected && !(absent && ns.holds == NONE)
                }
                PushMode::IfNotApplied => {
                    h != ns.confirmed && h != ns.rejected && !(absent && ns.confirmed == NONE)
                }
            };
        if !need_content.is_empty() || (want_push && payload.is_none()) {
            // Someone needs the content the provider left out: ask for it.
            config_ids.release(h);
            self.refetch(p.slot, p.name, true, need_content, now);
            return;
        }
        ns.push = PushMode::None;
        ns.attempts = 0;
        if want_push {
            config_ids.set(&mut ns.holds, h);
        }
        config_ids.release(h);
        if want_push && let Some(payload) = payload {
            self.push(p.slot, p.name, payload, now);
        }
        if let Some((correlation_id, app_version)) = implicit {
            let config_name = self.names.get(p.name).cloned();
            self.out
                .push_back(Output::ConfigApplied(OutgoingConfigApplied {
                    subject: self.s.applied_subject.clone(),
                    correlation_id: correlation_id.into(),
                    timestamp: now,
                    timeout: self.s.message_timeout_ms,
                    app_version_name: app_version,
                    endpoint_id: p.endpoint_id.clone(),
                    config_id: id.into(),
                    originator_replica_id: self.s.replica.clone(),
                    status_code: 200,
                    reason_phrase: Some("Implicitly applied".into()),
                    config_name,
                }));
        }
    }

    // -----------------------------------------------------------------------
    // Pushes
    // -----------------------------------------------------------------------

    fn trigger_all(&mut self, slot: u32, mode: PushMode, now: UnixMillis) {
        let mut i = 0;
        while let Some(name) = self.eps.get(slot).and_then(|e| e.name_at(i)) {
            self.trigger_push(slot, name, mode, now);
            i += 1;
        }
    }

    /// Wants a push of (`slot`, `name`) in `mode`: fetches the configuration
    /// unless a fetch is already in flight (its answer will be used).
    fn trigger_push(&mut self, slot: u32, name: u32, mode: PushMode, now: UnixMillis) {
        let Some(e) = self.eps.get_mut(slot) else {
            return;
        };
        if !e.connected {
            return;
        }
        let Some(ns) = e.name_mut(name) else {
            return;
        };
        if ns.observe == Observe::Off {
            return;
        }
        ns.push = ns.push.max(mode);
        ns.attempts = 0;
        if self.in_flight.contains_key(&(slot, name)) {
            return;
        }
        if self
            .send_request(slot, name, false, Vec::new(), now)
            .is_err()
        {
            self.schedule_retry(slot, name, now);
        }
    }

    fn push_wanted(&self, slot: u32, name: u32) -> bool {
        self.eps.get(slot).is_some_and(|e| {
            e.connected
                && e.name(name)
                    .is_some_and(|n| n.push != PushMode::None && n.observe != Observe::Off)
        })
    }

    fn schedule_retry(&mut self, slot: u32, name: u32, now: UnixMillis) {
        let max = self.s.config.push_retry_attempts;
        let base = self.s.config.push_retry_delay;
        let Some(e) = self.eps.get_mut(slot) else {
            return;
        };
        let incarnation = e.incarnation;
        let Some(ns) = e.name_mut(name) else {
            return;
        };
        ns.attempts = ns.attempts.saturating_add(1);
        if ns.attempts > max {
            ns.push = PushMode::None;
            ns.attempts = 0;
            self.stats.push_retries_exhausted += 1;
            return;
        }
        let delay = base.saturating_mul(1 << u32::from(ns.attempts - 1).min(6));
        self.timers.push(Reverse((
            now.saturating_add(delay),
            Timer::Retry {
                slot,
                incarnation,
                name,
            },
        )));
    }

    fn retry_push(&mut self, slot: u32, incarnation: u32, name: u32, now: UnixMillis) {
        let current = self
            .eps
            .get(slot)
            .is_some_and(|e| e.incarnation == incarnation);
        if !current || !self.push_wanted(slot, name) || self.in_flight.contains_key(&(slot, name)) {
            return;
        }
        if self
            .send_request(slot, name, false, Vec::new(), now)
            .is_err()
        {
            self.schedule_retry(slot, name, now);
        }
    }

    fn push(&mut self, slot: u32, name: u32, payload: Bytes, now: UnixMillis) {
        let Some(e) = self.eps.get(slot) else {
            return;
        };
        let subject = self
            .replies
            .get(e.reply_to)
            .cloned()
            .unwrap_or_else(|| self.s.extension_data_subject.clone());
        let resource_path: Arc<str> = match (self.names.get(name), e.default.explicit_default) {
            (Some(n), _) => format!("{CONFIG_JSON}/{n}").into(),
            (None, true) => format!("{CONFIG_JSON}/{}", resource::DEFAULT_NAME).into(),
            (None, false) => self.s.config_path.clone(),
        };
        let app_version = self
            .app_versions
            .get(e.app_version)
            .cloned()
            .unwrap_or_else(|| Arc::from(""));
        let endpoint_id = e.id.clone();
        let (_, correlation_id) = self.next_correlation_id();
        self.stats.pushes += 1;
        self.emit(
            subject,
            correlation_id,
            app_version,
            Some(endpoint_id),
            resource_path,
            None,
            Some(payload),
            200,
            None,
            now,
        );
    }

    // -----------------------------------------------------------------------
    // Endpoint bookkeeping
    // -----------------------------------------------------------------------

    /// The slot of an endpoint, tracking it if new (evicting the least recently
    /// active one at `max_endpoints`); updates its app version and activity.
    fn track(
        &mut self,
        endpoint_id: &str,
        app_version: &str,
        at: AppVersionStamp,
        now: UnixMillis,
    ) -> Option<u32> {
        self.track_changed(endpoint_id, app_version, at, now)
            .map(|(slot, _)| slot)
    }

    /// [`Cmx::track`], also telling whether a known endpoint's app version changed.
    fn track_changed(
        &mut self,
        endpoint_id: &str,
        app_version: &str,
        at: AppVersionStamp,
        now: UnixMillis,
    ) -> Option<(u32, bool)> {
        if let Some(slot) = self.eps.find(endpoint_id) {
            let changed = self.set_app_version(slot, app_version, at);
            self.eps.touch(slot, now);
            return Some((slot, changed));
        }
        if self.s.config.max_endpoints == 0 {
            return None;
        }
        while self.eps.len() >= self.s.config.max_endpoints {
            let Some(victim) = self
                .eps
                .oldest_idle()
                .or_else(|| self.eps.oldest_connected())
            else {
                break;
            };
            self.remove_endpoint(victim, Removal::Evicted, now);
        }
        let av = self.app_versions.acquire(app_version);
        self.next_incarnation = self.next_incarnation.wrapping_add(1);
        let mut endpoint = Endpoint::new(endpoint_id.into(), av, self.next_incarnation, now);
        endpoint.app_version_at = at.timestamp;
        endpoint.app_version_from_event = at.from_event;
        let slot = self.eps.insert(endpoint);
        Some((slot, false))
    }

    /// [`Cmx::track`] for a device message: the endpoint is connected, and its
    /// session answers on `subject`.
    fn track_session(&mut self, endpoint_id: &str, r: &Reply<'_>, now: UnixMillis) -> Option<u32> {
        let (slot, version_changed) = self.track_changed(
            endpoint_id,
            r.app_version,
            AppVersionStamp::device(r.timestamp),
            now,
        )?;
        let reply = if Arc::ptr_eq(&r.subject, &self.s.extension_data_subject) {
            NONE
        } else {
            self.replies.acquire(&r.subject)
        };
        self.set_reply(slot, reply);
        self.replies.release(reply);
        if self.eps.get(slot).is_some_and(|e| !e.connected) {
            self.eps.set_connected(slot, true, now);
        }
        if version_changed {
            // The device itself now speaks another app version: as for an
            // `appversion-updated` event.
            self.trigger_all(slot, PushMode::IfNotApplied, now);
        }
        Some(slot)
    }

    fn set_reply(&mut self, slot: u32, reply: u32) {
        if let Some(e) = self.eps.get_mut(slot) {
            self.replies.set(&mut e.reply_to, reply);
        }
    }

    /// Sets an endpoint's app version from a message stamped `at`, unless the
    /// engine has newer information; true if it changed.
    ///
    /// App version information comes from the device (`ClientData`) and from
    /// events (`connected`, `appversion-updated`), through different services,
    /// so it can arrive out of order: the newest by message timestamp wins, and
    /// on a tie an event wins over a device message (the endpoint register is
    /// the authority on app versions).
    fn set_app_version(&mut self, slot: u32, app_version: &str, at: AppVersionStamp) -> bool {
        let Self {
            eps, app_versions, ..
        } = self;
        let Some(e) = eps.get_mut(slot) else {
            return false;
        };
        let current = (e.app_version_at, e.app_version_from_event);
        if (at.timestamp, at.from_event) < current {
            return false;
        }
        e.app_version_at = at.timestamp;
        e.app_version_from_event = at.from_event;
        if app_versions
            .get(e.app_version)
            .is_some_and(|a| **a == *app_version)
        {
            return false;
        }
        let h = app_versions.acquire(app_version);
        app_versions.release(e.app_version);
        e.app_version = h;
        // Answers in flight were fetched for the previous app version: stale,
        // even if the endpoint comes back to that version before they arrive
        // (updates for it were ignored meanwhile).
        for n in e.names() {
            if let Some(p) = self
                .in_flight
                .get(&(slot, n.name))
                .and_then(|seq| self.pending.get_mut(seq))
            {
                p.stale = true;
            }
        }
        true
    }

    /// The name handle for a configuration name as written (`None`: default),
    /// adding it to the endpoint if new; `None` past `max_names_per_endpoint`.
    fn name_of(&mut self, slot: u32, written: Option<&str>, config_request: bool) -> Option<u32> {
        let max = self.s.config.max_names_per_endpoint;
        let Self { eps, names, .. } = self;
        let e = eps.get_mut(slot)?;
        match resource::canonical_config_name(written) {
            None => {
                if config_request {
                    e.default.explicit_default = written.is_some();
                }
                Some(NONE)
            }
            Some(n) => {
                if let Some(h) = names.find(n)
                    && e.name(h).is_some()
                {
                    return Some(h);
                }
                if e.named_count() >= max {
                    return None;
                }
                let h = names.acquire(n);
                e.add_name(NameState::new(h));
                Some(h)
            }
        }
    }

    fn remove_endpoint(&mut self, slot: u32, why: Removal, now: UnixMillis) {
        let Some(e) = self.eps.remove(slot) else {
            return;
        };
        let (status, reason) = match why {
            Removal::Evicted => {
                self.stats.endpoints_evicted += 1;
                (
                    503,
                    "the endpoint's state was evicted (max_endpoints); retry",
                )
            }
            Removal::Expired => {
                self.stats.endpoints_expired += 1;
                (503, "the endpoint's state expired; retry")
            }
            Removal::Unregistered => (404, "the endpoint was unregistered"),
        };
        for ns in e.names() {
            if let Some(seq) = self.in_flight.remove(&(slot, ns.name))
                && let Some(p) = self.pending.remove(&seq)
            {
                for w in &p.waiters {
                    self.answer_error(w, status, RefusalReason::EndpointRemoved, reason, now);
                }
            }
            self.names.release(ns.name);
            self.config_ids.release(ns.holds);
            self.config_ids.release(ns.confirmed);
            self.config_ids.release(ns.rejected);
        }
        self.app_versions.release(e.app_version);
        self.replies.release(e.reply_to);
    }

    // -----------------------------------------------------------------------
    // Output helpers
    // -----------------------------------------------------------------------

    /// The `ExtensionData` subject for a `ClientData` `replyTo`: the same replica
    /// (or instance) with message type `ExtensionData`; the communication
    /// service's instance-wide subject when there is none or it is not a 3/ISM
    /// targeted subject.
    fn reply_subject(&self, reply_to: Option<&str>) -> Arc<str> {
        let normalized: Option<Cow<'_, str>> = reply_to.and_then(|raw| match Subject::parse(raw) {
            Ok(Subject::Replica(r)) if r.message_type() == EXTENSION_DATA => {
                Some(Cow::Borrowed(raw))
            }
            Ok(Subject::Replica(r)) => r
                .with_message_type(EXTENSION_DATA)
                .ok()
                .map(|s| Cow::Owned(s.to_string())),
            Ok(Subject::Service(s)) if s.message_type() == EXTENSION_DATA => {
                Some(Cow::Borrowed(raw))
            }
            Ok(Subject::Service(s)) => {
                ServiceSubject::new(s.instance(), s.protocol(), EXTENSION_DATA)
                    .ok()
                    .map(|s| Cow::Owned(s.to_string()))
            }
            _ => None,
        });
        match normalized {
            None => self.s.extension_data_subject.clone(),
            Some(s) if *s == *self.s.extension_data_subject => {
                self.s.extension_data_subject.clone()
            }
            Some(s) => self
                .replies
                .find(&s)
                .and_then(|h| self.replies.get(h))
                .cloned()
                .unwrap_or_else(|| Arc::from(&*s)),
        }
    }

    /// Answers `r` with an error; without a request ID, records a [`Refusal`]
    /// instead. `reason` must hold nothing of the payload (it may be logged).
    fn reply_error(
        &mut self,
        r: &Reply<'_>,
        status: i32,
        why: RefusalReason,
        reason: impl Into<Cow<'static, str>>,
        now: UnixMillis,
    ) {
        if r.request_id.is_none() {
            self.refuse(Refusal {
                correlation_id: r.correlation_id.to_owned(),
                endpoint_id: r.endpoint_id.map(Arc::from),
                app_version_name: r.app_version.into(),
                resource_path: r.resource_path.into(),
                status_code: status,
                reason: why,
                detail: reason.into(),
            });
            return;
        }
        self.emit(
            r.subject.clone(),
            r.correlation_id.to_owned(),
            r.app_version.into(),
            r.endpoint_id.map(Arc::from),
            r.resource_path.into(),
            r.request_id,
            None,
            status,
            Some(reason.into()),
            now,
        );
    }

    fn answer(
        &mut self,
        w: &Waiter,
        status: i32,
        reason: Option<Cow<'static, str>>,
        payload: Option<Bytes>,
        now: UnixMillis,
    ) {
        self.emit(
            w.subject.clone(),
            w.correlation_id.to_string(),
            w.app_version.clone(),
            Some(w.endpoint_id.clone()),
            w.resource_path.clone(),
            w.request_id,
            payload,
            status,
            reason,
            now,
        );
    }

    /// A malformed payload: the device is told what is wrong (the error may
    /// quote its payload); a refusal records only [`PayloadError::summary`].
    fn reply_malformed(&mut self, r: &Reply<'_>, e: &PayloadError, now: UnixMillis) {
        let reason = if r.request_id.is_some() {
            e.to_string()
        } else {
            e.summary()
        };
        self.reply_error(r, 400, RefusalReason::MalformedPayload, reason, now);
    }

    /// Like [`Cmx::reply_error`], for a request that waited for the provider.
    fn answer_error(
        &mut self,
        w: &Waiter,
        status: i32,
        why: RefusalReason,
        reason: impl Into<Cow<'static, str>>,
        now: UnixMillis,
    ) {
        if w.request_id.is_none() {
            self.refuse(Refusal {
                correlation_id: w.correlation_id.to_string(),
                endpoint_id: Some(w.endpoint_id.clone()),
                app_version_name: w.app_version.clone(),
                resource_path: w.resource_path.clone(),
                status_code: status,
                reason: why,
                detail: reason.into(),
            });
            return;
        }
        self.answer(w, status, Some(reason.into()), None, now);
    }

    /// Counts a refusal and keeps it for [`Cmx::poll_refusal`].
    fn refuse(&mut self, refusal: Refusal) {
        self.stats.errors_without_request_id += 1;
        self.stats.refused_without_request_id.add(refusal.reason);
        if self.refusals.len() >= MAX_KEPT_REFUSALS {
            self.refusals.pop_front();
            self.stats.refusals_not_kept += 1;
        }
        self.refusals.push_back(refusal);
    }

    #[allow(clippy::too_many_arguments)]
    fn emit(
        &mut self,
        subject: Arc<str>,
        correlation_id: String,
        app_version_name: Arc<str>,
        endpoint_id: Option<Arc<str>>,
        resource_path: Arc<str>,
        request_id: Option<i32>,
        payload: Option<Bytes>,
        status_code: i32,
        reason_phrase: Option<Cow<'static, str>>,
        now: UnixMillis,
    ) {
        self.out
            .push_back(Output::ExtensionData(OutgoingExtensionData {
                subject,
                correlation_id,
                timestamp: now,
                timeout: self.s.message_timeout_ms,
                app_version_name,
                extension_instance_name: self.s.instance.clone(),
                endpoint_id,
                resource_path,
                request_id,
                payload,
                status_code,
                reason_phrase,
            }));
    }

    fn next_correlation_id(&mut self) -> (u64, String) {
        let seq = self.next_seq;
        self.next_seq += 1;
        (seq, format!("{}-{seq}", self.s.prefix))
    }

    fn parse_seq(&self, correlation_id: &str) -> Option<u64> {
        let digits = correlation_id
            .strip_prefix(self.s.prefix.as_str())?
            .strip_prefix('-')?;
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        digits.parse().ok()
    }

    /// Drops timers at the top of the heap that no longer matter, so the heap
    /// does not grow with answered requests.
    fn prune_timers(&mut self) {
        while let Some(Reverse((_, timer))) = self.timers.peek() {
            let live = match *timer {
                Timer::Deadline(seq) => self.pending.contains_key(&seq),
                Timer::Retry {
                    slot,
                    incarnation,
                    name,
                } => {
                    self.eps
                        .get(slot)
                        .is_some_and(|e| e.incarnation == incarnation)
                        && self.push_wanted(slot, name)
                }
            };
            if live {
                break;
            }
            self.timers.pop();
        }
    }
}

/// The configuration a `ClientData` addresses. The resource path is what the
/// device addressed (the 1/KP topic after the token), and the answer goes back
/// on that path, so it decides: no name in the path is the default
/// configuration. The 4/ESP `configName`, when present, must name the same
/// configuration (`default` and an absent name are the same one); any other
/// name is a 400, because serving it would put another configuration on the
/// path the device applies as this one.
fn resolve_name<'a>(
    path: Option<&'a str>,
    esp: Option<&'a str>,
) -> Result<Option<&'a str>, String> {
    if let Some(e) = esp {
        resource::validate_config_name(e).map_err(|err| format!("`configName`: {err}"))?;
        if resource::canonical_config_name(path) != resource::canonical_config_name(Some(e)) {
            let p = path.unwrap_or(resource::DEFAULT_NAME);
            return Err(format!(
                "`configName` {e:?} does not match the configuration name {p:?} in the resource path"
            ));
        }
    }
    Ok(path)
}

fn absent() -> Fetched {
    Fetched::Config {
        id: "".into(),
        payload: Bytes::from_static(ABSENT_JSON),
    }
}

fn bad_answer(reason: impl Into<String>) -> Fetched {
    Fetched::Failed {
        status: 502,
        reason: reason.into(),
    }
}

/// What a CDTP response means for a request that asked about `asked` (the
/// 6/CDTP rules are `kaa_cdtp`'s [`CdtpResponse::read`]; 7/CMP adds that the
/// content must be JSON).
fn interpret(msg: &CdtpResponse<'_>, asked: Option<&str>) -> Fetched {
    match msg.read(asked) {
        ConfigAnswer::Unchanged => Fetched::Unchanged,
        // The provider has no configuration for the endpoint: 7/CMP's absent
        // configuration.
        ConfigAnswer::Absent => absent(),
        ConfigAnswer::Error {
            status_code,
            reason,
        } => {
            let reason = match reason {
                Some(r) => format!("configuration provider: {r}"),
                None => format!("the configuration provider answered {status_code}"),
            };
            let status = if (400..600).contains(&status_code) {
                status_code
            } else {
                502
            };
            Fetched::Failed { status, reason }
        }
        ConfigAnswer::Invalid(InvalidAnswer::ContentType) => bad_answer(format!(
            "unsupported configuration content type {:?}",
            msg.content_type
        )),
        ConfigAnswer::Invalid(e) => bad_answer(e.to_string()),
        ConfigAnswer::Config { config_id, content } => {
            if serde_json::from_slice::<JsonCheck>(content).is_err() {
                return bad_answer("the configuration provider sent content that is not JSON");
            }
            Fetched::Config {
                id: config_id.into(),
                payload: Bytes::from(ConfigResponse::encode_raw(config_id, content)),
            }
        }
        _ => bad_answer("the configuration provider's answer is not understood"),
    }
}

/// Checks that a configuration is JSON a 7/CMP decoder accepts, without building
/// it: every value goes through `deserialize_any`, as it does when decoding into
/// `serde_json::Value` (so a number out of `f64` range is refused here too).
struct JsonCheck;

impl<'de> serde::Deserialize<'de> for JsonCheck {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(JsonCheck)
    }
}

impl<'de> serde::de::Visitor<'de> for JsonCheck {
    type Value = JsonCheck;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<Self, E> {
        Ok(JsonCheck)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Self, E> {
        Ok(JsonCheck)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Self, E> {
        Ok(JsonCheck)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Self, E> {
        Ok(JsonCheck)
    }
    fn visit_str<E>(self, _: &str) -> Result<Self, E> {
        Ok(JsonCheck)
    }
    fn visit_unit<E>(self) -> Result<Self, E> {
        Ok(JsonCheck)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self, A::Error> {
        while seq.next_element::<JsonCheck>()?.is_some() {}
        Ok(JsonCheck)
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self, A::Error> {
        while map.next_key::<JsonCheck>()?.is_some() {
            map.next_value::<JsonCheck>()?;
        }
        Ok(JsonCheck)
    }
}
