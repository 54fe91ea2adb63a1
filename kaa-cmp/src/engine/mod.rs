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
//! | 4/ESP `ClientData` (+ NATS `replyTo`) | `kaa.v1.service.<cmx>.esp.ClientData` (queue group `<cmx>`) | communication service (KPC) | [`Cmx::handle_client_data`] |
//! | 6/CDTP `ConfigResponse` | `kaa.v1.replica.<replica>.cdtp.response` | provider (ECR), on the request's `replyTo` | [`Cmx::handle_config_response`] |
//! | 6/CDTP `ConfigUpdated` | `kaa.v1.events.<provider>.endpoint.config.updated` | provider broadcast | [`Cmx::handle_config_updated`] |
//! | 9/ELCE `connected`, `disconnected` | `kaa.v1.events.*.endpoint.connectivity.*` | communication service broadcast | [`Cmx::handle_connected`], [`Cmx::handle_disconnected`] |
//! | 9/ELCE `appversion-updated`, `unregistered` | `kaa.v1.events.*.endpoint.lifecycle.*` | endpoint register broadcast | [`Cmx::handle_app_version_updated`], [`Cmx::handle_unregistered`] |
//! | kaa-rs `SessionsResponse` | `kaa.v1.replica.<replica>.elce.SessionsResponse` | communication service replicas, answering [`Output::SessionsRequest`] | [`Cmx::adopt_session`] per endpoint |
//! | kaa-rs `ProviderStarted` | `kaa.v1.events.<provider>.provider.started` | provider broadcast | [`Cmx::resync`] |
//! | [`Input::Timeout`] | — | the driver's timer at [`Cmx::poll_timeout`] | [`Cmx::handle_timeout`] |
//! | [`Input::BusConnected`] | — | the driver: subscriptions in effect (start, reconnect) | [`Output::SessionsRequest`]; [`Cmx::resync`] after a reconnect |
//! | [`Input::HandedOver`]: 4/ESP `ClientData` (+ NATS `replyTo`) | `kaa.v1.replica.<replica>.esp.ClientData` | another replica of this CMX instance handing over (kaa-rs), or a communication service addressing this replica | [`Cmx::handle_handed_over`]: served here, never handed on (without members, exactly as [`Cmx::handle_client_data`]) |
//! | [`Input::Members`] (kaa-rs) | — | the driver: the live replicas of this instance changed | [`Cmx::set_members`] |
//! | [`Input::MemberView`] (kaa-rs) | — | the driver: another replica confirmed the member list it applied | [`Cmx::set_member_view`] |
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
//! - [`Output::HandOver`] (kaa-rs extension): a device's `ClientData` as it
//!   came, to `kaa.v1.replica.<owner>.esp.ClientData` with the `replyTo` it
//!   came with.
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
//! them (to other endpoints only for the names they used). The sessions answer
//! after a reconnect lists endpoints the engine already knows, too: they are
//! pushed again what they have not reported applied (a push sent around the
//! outage may be lost), so a real reconnect may repeat a push; a driver must
//! not signal a reconnect that did not happen.
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
//! dropped. This needs one CMX replica serving a given endpoint at a time:
//! with several replicas, membership arranges it (next section).
//!
//! **Replicas** (kaa-rs extension). A communication service as Kaa ships it
//! publishes every `ClientData` on the instance-wide subject, and the NATS
//! queue group hands it to any replica; broadcasts reach every replica. Each
//! replica keeping its own endpoint state would break every guarantee above,
//! so replicas of one instance share the work *by endpoint*: each endpoint is
//! served by exactly one live replica at a time, its **owner**.
//!
//! - *Members.* The driver tells the engine the live replicas of its instance
//!   ([`Input::Members`], [`Cmx::set_members`]) whenever they change; the
//!   engine keeps no clock and no consensus of its own (kaa-cmx keeps the
//!   members in a NATS JetStream key-value bucket with heartbeats and expiry).
//!   No members (the default) or an empty list: this replica serves every
//!   endpoint, exactly as a single CMX.
//! - *Owner.* Rendezvous (highest-random-weight) hashing: the owner of an
//!   endpoint is the member with the highest
//!   `w(replica, endpoint) = splitmix64_finalize(fnv1a_64(replica ‖ 0xFF ‖ endpoint))`
//!   over the UTF-8 bytes of the IDs (ties: the greater replica ID);
//!   [`rendezvous_weight`] and [`rendezvous_owner`] are that function. Every
//!   replica with the same member list computes the same owner; when a member
//!   joins only the endpoints it now owns move (to it), when one leaves only
//!   its endpoints move.
//! - *Hand-over.* `ClientData` about an endpoint another replica owns is not
//!   served: it becomes an [`Output::HandOver`], the same datum to the owner's
//!   replica subject with the communication service's `replyTo`, so the
//!   owner's answer goes straight to the communication service replica.
//!   `ClientData` on a replica's own subject ([`Input::HandedOver`]) is never
//!   handed over again (no forwarding loops): the owner serves it; a replica
//!   that does not own the endpoint in its view (the members' views differ for
//!   a moment) does not take the endpoint's state, which would put two
//!   replicas' CDTP requests in flight for it: it answers a configuration
//!   request 503 (the device retries and reaches the owner) and broadcasts an
//!   applied report without bookkeeping ([`Stats::handed_over_not_owned`]).
//! - *Filters.* `connected` events (per endpoint listed), `ConfigUpdated` and
//!   sessions answers about endpoints another replica owns are ignored
//!   ([`Stats::not_owned_ignored`]); the other events only concern endpoints
//!   the engine tracks, which it owns.
//! - *Membership changes.* Endpoints another replica owns now are forgotten:
//!   devices still waiting on them get a 503 (their retry reaches the new
//!   owner) and CDTP answers still to come for them match nothing. If the
//!   replica may have gained endpoints (a member left, it joined, or
//!   membership turned off) it asks the communication service for its
//!   sessions ([`Output::SessionsRequest`], correlation ID
//!   `<prefix>-takeover-<n>`) and adopts the sessions it owns that it did not
//!   know when it asked ([`Cmx::adopt_session`]): a fresh fetch, and a push of
//!   what the device has not reported applied. The new owner knows what a
//!   restarted CMX knows: the sessions and the paths they used, not what each
//!   device reported applied (so a device may get a configuration it holds
//!   once more; counted by the model test), nor a configuration it rejected,
//!   nor an earlier `observe: false` (so such a device may get one push after
//!   a move, as after a restart).
//! - *While views differ.* Replicas learn a membership change at about the
//!   same time, not at the same instant; for that moment two replicas may
//!   both act on an endpoint (a duplicate fetch or push), which the model's
//!   lagging-views property counts; once they agree the guarantees hold again.
//!   A replica that was behind may have served names of an endpoint it then
//!   lets go, so for [`CmxConfig::membership_settle`] after a change the
//!   endpoints an engine starts tracking count as adopted (a `ConfigUpdated`
//!   for any name is pushed to them).
//! - *Hand-over fence.* A replica joining live members delivers nothing (no
//!   push, no answer; its 6/CDTP fetches go on) until every other member has
//!   confirmed that it applied the new member list ([`Input::MemberView`],
//!   [`Cmx::set_member_view`]), or for at most [`CmxConfig::handover_delay`]
//!   (5 s): the replica giving an endpoint up may have pushed to it just
//!   before it saw the join, on another connection, and a newer delivery from
//!   here could overtake that push and leave the older last. The driver's
//!   part: after each member list it applies, once what the engine queued
//!   before has reached the bus (a flush and a round trip to the server), it
//!   publishes [`Cmx::membership_view`] (kaa-cmx puts it in its key's value),
//!   and it passes the other members' confirmations on. Answers held
//!   meanwhile are handled when the fence lifts, in request order (one that
//!   a `ConfigUpdated` made stale is fetched again), then the pushes wanted.
//!   A member whose process is starved but whose key lives on (its
//!   heartbeats run apart) delays joins by up to the deadline; a member the
//!   others took for dead is not fenced. The driver must hand over every
//!   membership change, in order: a replica that joined and left in between
//!   may have served endpoints, and seeing it leave is what makes the others
//!   take them over.
//! - *Order of a device's requests.* A device's requests may reach the owner
//!   out of order (one handed over, the next direct): with more than one
//!   member, `observe` is taken from the newest request by `ClientData`
//!   timestamp (the communication service's clock; KPC replicas' clocks should
//!   agree within the time between a device's requests),
//!   [`Stats::observe_out_of_order`].
//!
//! With these, the guarantees above hold across replicas between membership
//! changes (the model test `tests/replicas_model.rs` checks them with two and
//! three engines, a router playing NATS and replicas stopping, crashing and
//! starting at arbitrary points, each replica publishing on a connection of
//! its own): at most one CDTP request in flight per endpoint and name over all
//! replicas, never an older configuration after a newer one to a device (as
//! sent, and as received), pushes only from the owner; across a join, with
//! the fence.
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
//! **Deliveries overtaking each other.** An answer goes to the replica that
//! forwarded the request, a push to the replica the engine last heard from or,
//! after a new session, to the replica that reported it (its 3/ISM
//! replica-specific subject `kaa.v1.replica.<replica>.esp.ExtensionData`, where
//! that session's answers go too: on the instance-wide subject another replica
//! could take the push and hand it over, one hop more than an answer sent
//! after it, and the older configuration arrived last; found by
//! `fault_replicas`, kpc-kill); without a usable replica ID, to the
//! communication service's instance-wide subject;
//! the two can reach the device in the other order (seen after a KPC restart:
//! the answer with the older configuration arrived after the push of the newer
//! one). A 2xx applied report stamped (`ClientData` timestamp) after the engine's
//! last delivery of that configuration, naming another configuration than the
//! one delivered, may show it, or may merely have crossed the delivery on its
//! way: after a push retry delay ([`CmxConfig::push_retry_delay`]) the engine
//! fetches the current configuration and pushes it unless the device has
//! reported it applied by then ([`Stats::applied_behind_delivery`]). The stamp is the communication
//! service's clock against the engine's; with clocks apart by more than the
//! reordering, a reordered delivery is not noticed this way (and a report
//! that crossed a delivery costs one redundant fetch).
//! A `connected` event from the replica the endpoint's replica subject names,
//! or stamped before the device message that set that subject (the session's
//! own request, handed over or simply faster than the event), leaves that
//! subject in place, so the pushes that follow take the same subject as the
//! answer and cannot overtake it (seen with two KPC replicas when one was
//! killed and its devices moved to the other:
//! `examples/tests/fault_replicas.rs`); a `connected` event from another
//! replica, stamped at or after that message, still resets it. Sessions a
//! replica lists again ([`Cmx::adopt_sessions`], a sessions response) keep the
//! subject when it names that replica.
//!
//! **Deltas** (kaa-rs extension, [`crate::delta`]). A request on
//! `/config/json-patch[/<name>]` is a configuration request like the others
//! (same CDTP fetch, `observe`, implicit application, errors), and the latest
//! request per name decides how that name is served: on the delta resource
//! after a delta request, on `/config/json` after a 7/CMP one. Answers and
//! pushes for a delta device follow [`delta::answer`](crate::delta::answer)
//! from the configuration it holds (for a request, its `configId`; for a push,
//! what the engine last delivered to it, or after a connect or an app version
//! change what it reported applied): a patch when the engine still has that
//! base and the patch is clearly smaller, else the whole configuration, in
//! 7/CMP's shape and bytes. A device watching parts (`pointers`) gets their
//! view, and no push when none of its parts changed ([`Stats::delta_quiet`];
//! the engine then still counts the device as holding what it held). Bases
//! come from a cache of the configurations delivered to delta devices, keyed
//! by config ID and bounded in bytes ([`CmxConfig::delta_cache_bytes`]; the
//! provider is never asked for an old configuration, which 6/CDTP cannot
//! express); one diff serves a fleet moving between the same two
//! configurations. Devices that never use the delta resource cost nothing
//! here and see every byte as before.
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
//! `benches/memory.rs`). The delta base cache holds at most
//! `delta_cache_bytes`, and a delta device's pointers at most
//! [`MAX_POINTERS`](crate::delta::MAX_POINTERS) of
//! [`MAX_POINTER_LEN`](crate::delta::MAX_POINTER_LEN) bytes per name.

mod config;
mod deltas;
mod fetch;
mod handle;
mod input;
mod members;
mod output;
mod push;
mod reply;
mod requests;
mod state;
mod stats;
mod timers;
mod tracking;

pub use config::{CmxConfig, ConfigError};
pub use input::{Input, InputError, InputKind};
pub use members::{membership_view, rendezvous_owner, rendezvous_weight};
pub use output::{
    OutgoingConfigApplied, OutgoingConfigRequest, OutgoingExtensionData, OutgoingHandOver,
    OutgoingSessionsRequest, Output,
};
pub use stats::{Refusal, RefusalCounts, RefusalReason, Stats};

use std::borrow::Cow;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, VecDeque};
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
use rustc_hash::FxBuildHasher;

use crate::delta::{CONFIG_JSON_PATCH, DeltaPath, DeltaRequest};
use crate::intern::{Interner, NONE};
use crate::message::{AppliedRequest, ConfigRequest, ConfigResponse, PayloadError, UNCHANGED_JSON};
use crate::resource::{self, CONFIG_JSON, ResourceKind, ResourcePath};
use deltas::{DeltaWants, Deltas};
use fetch::{Fetched, Pending, RecentConfigs, Waiter, interpret};
use members::{Membership, SessionsPurpose};
use reply::Reply;
use requests::resolve_name;
use state::{Endpoint, Endpoints, NameState, Observe, PushMode};
use timers::Timer;
use tracking::{AppVersionStamp, Removal};

const EXTENSION_DATA: &str = "ExtensionData";
/// The most refusals kept for [`Cmx::poll_refusal`] until the driver takes them.
const MAX_KEPT_REFUSALS: usize = 1024;
const ABSENT_JSON: &[u8] = br#"{"configId":"","config":null}"#;

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
    settings: Settings,
    endpoints: Endpoints,
    app_versions: Interner,
    names: Interner,
    config_ids: Interner,
    replies: Interner,
    pending: HashMap<u64, Pending, FxBuildHasher>,
    in_flight: HashMap<(u32, u32), u64, FxBuildHasher>,
    timers: BinaryHeap<Reverse<(UnixMillis, Timer)>>,
    out: VecDeque<Output>,
    refusals: VecDeque<Refusal>,
    next_seq: u64,
    next_incarnation: u32,
    /// How many times the bus connected ([`Input::BusConnected`]).
    bus_connections: u64,
    /// Configurations checked and built into 7/CMP answers a moment ago.
    recent_configs: RecentConfigs,
    /// The live replicas of this instance (kaa-rs extension).
    membership: Membership,
    /// Delta subscriptions and bases (kaa-rs extension).
    deltas: Deltas,
    stats: Stats,
}

impl std::fmt::Debug for Cmx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cmx")
            .field("instance", &self.settings.instance)
            .field("replica", &self.settings.replica)
            .field("tracked_endpoints", &self.endpoints.len())
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
        let settings = Settings {
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
        let deltas = Deltas::new(settings.config.delta_cache_bytes);
        Ok(Cmx {
            settings,
            endpoints: Endpoints::new(),
            app_versions: Interner::new(),
            names: Interner::new(),
            config_ids: Interner::new(),
            replies: Interner::new(),
            pending: HashMap::default(),
            in_flight: HashMap::default(),
            timers: BinaryHeap::new(),
            out: VecDeque::new(),
            refusals: VecDeque::new(),
            next_seq: 1,
            next_incarnation: 0,
            bus_connections: 0,
            recent_configs: RecentConfigs::default(),
            membership: Membership::default(),
            deltas,
            stats: Stats::default(),
        })
    }

    /// The configuration the engine runs with.
    pub fn config(&self) -> &CmxConfig {
        &self.settings.config
    }

    /// What to subscribe to.
    pub fn subscriptions(&self) -> &Subscriptions {
        &self.settings.subscriptions
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
            .endpoints
            .oldest_idle()
            .and_then(|slot| self.endpoints.get(slot))
            .map(|e| {
                e.last_active
                    .saturating_add(self.settings.config.endpoint_ttl)
            });
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
        self.endpoints.len()
    }

    /// How many CDTP requests are in flight.
    pub fn pending_requests(&self) -> usize {
        self.pending.len()
    }

    /// How many bytes the cache of delta bases holds (kaa-rs extension; at
    /// most [`CmxConfig::delta_cache_bytes`]).
    pub fn delta_cache_bytes(&self) -> usize {
        self.deltas.cached_bytes()
    }

    /// What the engine knows about an endpoint, if it tracks it.
    pub fn endpoint(&self, endpoint_id: &str) -> Option<EndpointSnapshot> {
        let e = self.endpoints.get(self.endpoints.find(endpoint_id)?)?;
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
}
