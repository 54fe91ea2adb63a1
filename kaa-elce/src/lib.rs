//! # kaa-elce: Kaa 9/ELCE (Endpoint Lifecycle and Connectivity Events), sans-IO
//!
//! Kaa services tell each other what happens to endpoints with 9/ELCE broadcast
//! events: the communication service (KPC) publishes `connected` and `disconnected`
//! when a device session opens and ends, the endpoint registry publishes
//! `registered`, `appversion-updated` and `unregistered`, and communication services
//! publish periodic traffic reports. CMX listens to connectivity and lifecycle events
//! to know when to push a configuration; ECR listens to `unregistered` to delete an
//! endpoint's configurations.
//!
//! This crate is the wire side of that, with no I/O:
//!
//! - the six event records ([`ConnectedEvent`], [`DisconnectedEvent`],
//!   [`RegisteredEvent`], [`AppVersionUpdatedEvent`], [`UnregisteredEvent`],
//!   [`TrafficReportEvent`]) with an Avro binary codec byte-exact with Apache Avro for
//!   the RFC schemas (`schemas/0009-*.avsc` in this crate, copies of the kaa-rfcs
//!   files; [`Encode`](kaa_ism::avro::Encode) /
//!   [`Decode`](kaa_ism::avro::Decode) from `kaa-ism`);
//! - their subjects `kaa.v1.events.{originator}.endpoint.{group}.{type}` and the
//!   wildcard filters listeners subscribe with ([`EventKind`], [`EventGroup`],
//!   [`endpoint_events_filter`]);
//! - [`ElceEvent`], which decodes a datum by the concrete subject it arrived on, for a
//!   listener subscribed to a wildcard.
//! - **kaa-rs extension, not in the 9/ELCE RFC:** the [`sessions`] request and
//!   response. [`SessionsRequest`] goes to
//!   `kaa.v1.service.{communication-service}.elce.SessionsRequest`, sent by a listener
//!   such as CMX after it (re)started or its bus reconnected; each replica of the
//!   communication service (e.g. KPC) answers with [`SessionsResponse`]s on the
//!   request's `replyTo`, `kaa.v1.replica.{requester-replica}.elce.SessionsResponse`,
//!   listing the endpoints that hold a session. Their Avro schemas are this crate's
//!   `schemas/sessions-request.avsc` and `schemas/sessions-response.avsc`; golden
//!   vectors from Apache Avro cover them like the RFC records.
//!
//! ```
//! use kaa_elce::{ConnectedEvent, ElceEvent, EndpointEvent, EventGroup};
//! use kaa_ism::avro::{Decode, Encode};
//! use kaa_ism::common::CommonFields;
//! use kaa_ism::subject::Token;
//! use kaa_ism::UnixMillis;
//!
//! // KPC: a device session opened with two endpoints.
//! let event = ConnectedEvent {
//!     correlation_id: "5c0ffee0-0000-4000-8000-000000000001".into(),
//!     timestamp: 1_700_000_000_000,
//!     timeout: 60_000,
//!     endpoints: vec![
//!         ("ep-0001".into(), "humidity-sensor-v3".into()),
//!         ("ep-0002".into(), "humidity-sensor-v3".into()),
//!     ],
//!     originator_replica_id: "kpc-1".into(),
//! };
//! let subject = ConnectedEvent::subject("kpc")?.to_string();
//! assert_eq!(subject, "kaa.v1.events.kpc.endpoint.connectivity.connected");
//! let datum = event.to_vec();
//! assert_eq!(datum.len(), event.encoded_len());
//!
//! // Decoding borrows from the datum.
//! let decoded = ConnectedEvent::decode(&datum)?;
//! assert_eq!(decoded, event);
//! assert!(!decoded.is_expired(UnixMillis(1_700_000_030_000)));
//!
//! // CMX: one subscription for every connectivity event, from any originator.
//! let filter = EventGroup::Connectivity.filter(Token::Any)?;
//! assert_eq!(filter.as_str(), "kaa.v1.events.*.endpoint.connectivity.*");
//! assert!(filter.matches(&subject));
//! match ElceEvent::decode(&subject, &datum)? {
//!     ElceEvent::Connected(e) => assert_eq!(e.endpoints.len(), 2),
//!     ElceEvent::Disconnected(e) => unreachable!("{e:?}"),
//!     other => unreachable!("{other:?}"),
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Wire policy
//!
//! - **Byte-exact with Apache Avro.** Records are their fields in schema order
//!   (`TrafficReportEvent` starts with `tenantTrafficStats` and ends with `timestamp`,
//!   `timeout`; the codec follows the schema, not the other records). Maps are
//!   written as Apache Avro writes them: one block with a positive count, omitted for
//!   an empty map, then the zero count.
//! - **Maps keep wire order.** A [`Map`] is a list of pairs: decoding keeps the order
//!   and any duplicate keys, so re-encoding a decoded event reproduces its entries
//!   exactly. Decoding accepts every legal block form (several blocks, negative
//!   counts with byte sizes), so the bytes of a re-encoded event can differ from a
//!   writer that split its maps into blocks; the value never does. Whether a duplicate
//!   endpoint ID is meaningful is for the service to decide; the codec does not
//!   guess.
//! - **Schema evolution.** A datum that ends right before trailing fields that have
//!   defaults decodes with the defaults (the datum of an older writer). Only the
//!   fields after the last required field qualify, and in 9/ELCE that is exactly one:
//!   `TrafficReportEvent.timeout` (default 0). Every other record ends with
//!   `originatorReplicaId`, a required `string` in the 9/ELCE schemas (3/ISM calls it
//!   optional, but these schemas give it no default, so Apache Avro itself rejects a
//!   datum without it; so does this crate). Bytes after the last field this version
//!   knows are ignored: a newer writer appended fields with defaults.
//! - **Extensions.** The 9/ELCE schemas have no unions and no open-ended fields.
//!   Event types this version does not know (the RFC names `dormant` and `awake` as
//!   possible connectivity events) are [`EventError::UnknownEvent`], which a listener
//!   on a wide filter skips.
//! - **Limits.** Every length and count is checked against the remaining input
//!   before anything is allocated, so memory is bounded by the datum's size. A cap on
//!   the endpoints in one event is a decoder option ([`DecodeLimits`]), or a check a
//!   service applies after decoding (`endpoint_count()`).
//! - **Never panics on input**: every failure is a typed
//!   [`DecodeError`](kaa_ism::avro::DecodeError) naming record and field, e.g.
//!   `ConnectedEvent.endpoints: …` or `trafficStat.totalSentPayload: …`.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

use std::borrow::Cow;

mod codec;
mod event;
pub mod sessions;
mod subject;

pub use codec::{DecodeLimits, TOO_MANY_ENDPOINTS};
pub use event::{ElceEvent, EndpointEvent, EventError};
pub use sessions::{
    EndpointSession, SessionsRequest, SessionsResponse, sessions_request_subject,
    sessions_response_subject,
};
pub use subject::{ENTITY, EventGroup, EventKind, endpoint_events_filter};

/// An Avro `map`, kept in wire order as key/value pairs (so that encoding a decoded
/// map reproduces the same bytes). Keys are not deduplicated.
pub type Map<'a, V> = Vec<(Cow<'a, str>, V)>;

/// `kaa.v1.events.{originator}.endpoint.connectivity.connected`:
/// Avro record `org.kaaproject.ipc.event.gen.v1.endpoint.connectivity.ConnectedEvent`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ConnectedEvent<'a> {
    /// `correlationId`.
    pub correlation_id: Cow<'a, str>,
    /// `timestamp`, Unix milliseconds.
    pub timestamp: i64,
    /// `timeout`, milliseconds; 0 = never.
    pub timeout: i64,
    /// `endpoints`: endpoint ID → application version name.
    pub endpoints: Map<'a, Cow<'a, str>>,
    /// `originatorReplicaId`.
    pub originator_replica_id: Cow<'a, str>,
}

/// `kaa.v1.events.{originator}.endpoint.connectivity.disconnected`:
/// Avro record `org.kaaproject.ipc.event.gen.v1.endpoint.connectivity.DisconnectedEvent`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DisconnectedEvent<'a> {
    /// `correlationId`.
    pub correlation_id: Cow<'a, str>,
    /// `timestamp`, Unix milliseconds.
    pub timestamp: i64,
    /// `timeout`, milliseconds; 0 = never.
    pub timeout: i64,
    /// `endpoints`: endpoint ID → application version name.
    pub endpoints: Map<'a, Cow<'a, str>>,
    /// `originatorReplicaId`.
    pub originator_replica_id: Cow<'a, str>,
}

/// `kaa.v1.events.{originator}.endpoint.lifecycle.registered`:
/// Avro record `org.kaaproject.ipc.event.gen.v1.endpoint.lifecycle.RegisteredEvent`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RegisteredEvent<'a> {
    /// `correlationId`.
    pub correlation_id: Cow<'a, str>,
    /// `timestamp`, Unix milliseconds.
    pub timestamp: i64,
    /// `timeout`, milliseconds; 0 = never.
    pub timeout: i64,
    /// `appVersionName`.
    pub app_version_name: Cow<'a, str>,
    /// `endpointId`.
    pub endpoint_id: Cow<'a, str>,
    /// `originatorReplicaId`.
    pub originator_replica_id: Cow<'a, str>,
}

/// `kaa.v1.events.{originator}.endpoint.lifecycle.appversion-updated`:
/// Avro record `org.kaaproject.ipc.event.gen.v1.endpoint.lifecycle.AppVersionUpdatedEvent`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AppVersionUpdatedEvent<'a> {
    /// `correlationId`.
    pub correlation_id: Cow<'a, str>,
    /// `timestamp`, Unix milliseconds.
    pub timestamp: i64,
    /// `timeout`, milliseconds; 0 = never.
    pub timeout: i64,
    /// `appVersionName`: the version the endpoint moved to.
    pub app_version_name: Cow<'a, str>,
    /// `previousAppVersionName`.
    pub previous_app_version_name: Cow<'a, str>,
    /// `endpointId`.
    pub endpoint_id: Cow<'a, str>,
    /// `originatorReplicaId`.
    pub originator_replica_id: Cow<'a, str>,
}

/// `kaa.v1.events.{originator}.endpoint.lifecycle.unregistered`:
/// Avro record `org.kaaproject.ipc.event.gen.v1.endpoint.lifecycle.UnregisteredEvent`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UnregisteredEvent<'a> {
    /// `correlationId`.
    pub correlation_id: Cow<'a, str>,
    /// `timestamp`, Unix milliseconds.
    pub timestamp: i64,
    /// `timeout`, milliseconds; 0 = never.
    pub timeout: i64,
    /// `appVersionName`.
    pub app_version_name: Cow<'a, str>,
    /// `endpointId`.
    pub endpoint_id: Cow<'a, str>,
    /// `originatorReplicaId`.
    pub originator_replica_id: Cow<'a, str>,
}

/// One endpoint's traffic over a reporting period: Avro record `trafficStat`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TrafficStat {
    /// `totalReceivedPayload` (default 0): payload bytes received from the endpoint.
    pub total_received_payload: i64,
    /// `totalSentPayload` (default 0): payload bytes sent to the endpoint.
    pub total_sent_payload: i64,
    /// `totalReceivedMessageCount` (default 0).
    pub total_received_message_count: i64,
    /// `totalSentMessageCount` (default 0).
    pub total_sent_message_count: i64,
}

/// `kaa.v1.events.{originator}.endpoint.traffic-reporting.payload`:
/// Avro record `org.kaaproject.ipc.event.gen.v1.endpoint.traffic.reporting.TrafficReportEvent`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TrafficReportEvent<'a> {
    /// `tenantTrafficStats`: tenant ID → application name → endpoint ID → stats.
    pub tenant_traffic_stats: Map<'a, Map<'a, Map<'a, TrafficStat>>>,
    /// `timeFrom`: report start, Unix nanoseconds.
    pub time_from: i64,
    /// `timeTo`: report end, Unix nanoseconds.
    pub time_to: i64,
    /// `correlationId`.
    pub correlation_id: Cow<'a, str>,
    /// `originatorReplicaId`.
    pub originator_replica_id: Cow<'a, str>,
    /// `timestamp`, Unix milliseconds.
    pub timestamp: i64,
    /// `timeout`, milliseconds; 0 = never.
    pub timeout: i64,
}
