//! KPC's Prometheus metrics (prefix `kpc_`), served on `/metrics` when
//! `kpc.http.listen` is set.
//!
//! | metric | labels | meaning |
//! | --- | --- | --- |
//! | `kpc_connections` | | open MQTT connections (gauge) |
//! | `kpc_connections_accepted_total` | | TCP connections accepted |
//! | `kpc_connections_closed_total` | `reason` | sessions ended: `disconnect`, `dropped`, `keep_alive`, `protocol_violation`, `taken_over`, `write_timeout`, `shutdown`, `refused`, `connect_timeout` (no CONNECT within `connect-timeout`), `evicted` (handshake evicted for a newcomer) |
//! | `kpc_connections_rejected_total` | | connections over `max-connections` (answered CONNACK 0x03, or closed at once when 64 refusals are already running) |
//! | `kpc_sessions_parked` | | established sessions with nothing to do, held by an idle reactor instead of a task of their own (gauge; see `kpc_sessions_resumed_total`) |
//! | `kpc_sessions_resumed_total` | | parked sessions given a task again (their socket became readable, their mailbox got a delivery or the close order, their keep-alive expired, or KPC stopped) |
//! | `kpc_handshakes` | | connections accepted that have not completed CONNECT and authentication (gauge) |
//! | `kpc_handshakes_dropped_total` | `reason` | handshakes ended by KPC's limits: `address_limit` (closed at accept: the source holds `max-handshakes-per-address`), `evicted` (the oldest of the source holding the most, closed for a newcomer when `max-handshakes` are running or file descriptors ran out), `timeout` (no CONNECT within `connect-timeout`) |
//! | `kpc_accept_errors_total` | `kind` | failed `accept` calls: `fd_exhausted` (out of file descriptors or socket memory: one handshake is evicted and accepting pauses), `other` |
//! | `kpc_messages_in_total` | `kind` | PUBLISH received: `request` (forwarded as ClientData), `rejected` (answered or dropped by KPC) |
//! | `kpc_messages_out_total` | `kind` | PUBLISH sent: `response`, `error`, `push` |
//! | `kpc_extension_data_total` | `outcome` | ExtensionData received on the instance-wide or the replica subject (and `delivered`: by a session, handed-over ones included): `delivered`, `no_session` (no session on this replica: handed over, see `kpc_handovers_total`), `unmatched`, `expired`, `malformed`, `no_responders` (a NATS "no responders" status: the ClientData found no extension instance subscribed), `queue_full`, `inflight_full`, `too_large` (payload over `max-payload`: a 413 went to the device instead) |
//! | `kpc_errors_total` | `kind` | `bad_topic`, `unknown_extension` (not in `kpc.extension-instances`), `unknown_token`, `token_resolution`, `too_large`, `too_many_requests`, `bus`, `auth` |
//! | `kpc_refused_without_request_id_total` | `reason` | requests KPC refused that had no request ID, so the device was not told (1/KP: no response); `reason` is the `kind` of `kpc_errors_total`. Each is also logged at INFO with its correlation ID and endpoint |
//! | `kpc_elce_events_total` | `event` | `connected`, `disconnected` published |
//! | `kpc_handovers_total` | `outcome` | ExtensionData this replica handed over to the other replicas of its instance because no session here owned the endpoint (also counted as `kpc_extension_data_total{outcome="no_session"}`): `taken` (a replica's session took it), `undeliverable` (no replica answered within 1 s: no session anywhere owns the endpoint, or its queue was full), `overflow` (1,024 handovers were already waiting: dropped without a handover), `failed` (the bus refused it). Each undeliverable one is logged at INFO with its endpoint |
//! | `kpc_handovers_received_total` | `outcome` | handed-over ExtensionData this replica received (its own included): `taken` (a session here owns the endpoint and took it), `no_session` (none here; another replica may hold it), `expired`, `malformed`, `queue_full` |
//! | `kpc_endpoints_moved_total` | | endpoints a session here lost to a newer session on another replica (9/ELCE `connected` from that replica) |
//! | `kpc_endpoints_reannounced_total` | | `connected` events published again because another replica reported `disconnected` for an endpoint a session here holds |

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

use kaa_service::Metrics;

/// A label with one value.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Reason {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Kind {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Outcome {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EventType {
    event: &'static str,
}

/// The KPC metrics, registered in a [`Metrics`] registry.
#[derive(Clone, Debug)]
pub struct KpcMetrics {
    registry: Metrics,
    connections: Gauge,
    accepted: Counter,
    closed: Family<Reason, Counter>,
    rejected: Counter,
    handshakes: Gauge,
    parked: Gauge,
    resumed: Counter,
    handshakes_dropped: Family<Reason, Counter>,
    accept_errors: Family<Kind, Counter>,
    messages_in: Family<Kind, Counter>,
    messages_out: Family<Kind, Counter>,
    extension_data: Family<Outcome, Counter>,
    errors: Family<Kind, Counter>,
    refused: Family<Reason, Counter>,
    events: Family<EventType, Counter>,
    handovers: Family<Outcome, Counter>,
    handovers_received: Family<Outcome, Counter>,
    endpoints_moved: Counter,
    endpoints_reannounced: Counter,
}

impl Default for KpcMetrics {
    fn default() -> Self {
        Self::new(Metrics::new("kpc"))
    }
}

impl KpcMetrics {
    /// Registers the KPC metrics in `registry`.
    pub fn new(registry: Metrics) -> Self {
        let m = KpcMetrics {
            registry,
            connections: Gauge::default(),
            accepted: Counter::default(),
            closed: Family::default(),
            rejected: Counter::default(),
            handshakes: Gauge::default(),
            parked: Gauge::default(),
            resumed: Counter::default(),
            handshakes_dropped: Family::default(),
            accept_errors: Family::default(),
            messages_in: Family::default(),
            messages_out: Family::default(),
            extension_data: Family::default(),
            errors: Family::default(),
            refused: Family::default(),
            events: Family::default(),
            handovers: Family::default(),
            handovers_received: Family::default(),
            endpoints_moved: Counter::default(),
            endpoints_reannounced: Counter::default(),
        };
        let r = &m.registry;
        r.register(
            "connections",
            "Open MQTT connections",
            m.connections.clone(),
        );
        r.register(
            "connections_accepted",
            "TCP connections accepted",
            m.accepted.clone(),
        );
        r.register(
            "connections_closed",
            "MQTT sessions ended, by reason",
            m.closed.clone(),
        );
        r.register(
            "connections_rejected",
            "Connections closed at once (over max-connections)",
            m.rejected.clone(),
        );
        r.register(
            "handshakes",
            "Connections that have not completed CONNECT and authentication",
            m.handshakes.clone(),
        );
        r.register(
            "sessions_parked",
            "Idle sessions held by an idle reactor instead of a task of their own",
            m.parked.clone(),
        );
        r.register(
            "sessions_resumed",
            "Parked sessions given a task again",
            m.resumed.clone(),
        );
        r.register(
            "handshakes_dropped",
            "Handshakes ended by KPC's limits, by reason",
            m.handshakes_dropped.clone(),
        );
        r.register(
            "accept_errors",
            "Failed accept calls, by kind",
            m.accept_errors.clone(),
        );
        r.register(
            "messages_in",
            "PUBLISH packets received",
            m.messages_in.clone(),
        );
        r.register(
            "messages_out",
            "PUBLISH packets sent",
            m.messages_out.clone(),
        );
        r.register(
            "extension_data",
            "4/ESP ExtensionData received, by outcome",
            m.extension_data.clone(),
        );
        r.register("errors", "Errors, by kind", m.errors.clone());
        r.register(
            "refused_without_request_id",
            "Requests refused without a response because they had no request ID, by reason",
            m.refused.clone(),
        );
        r.register("elce_events", "9/ELCE events published", m.events.clone());
        r.register(
            "handovers",
            "ExtensionData handed over to the other replicas (no session here), by outcome",
            m.handovers.clone(),
        );
        r.register(
            "handovers_received",
            "Handed-over ExtensionData received, by outcome",
            m.handovers_received.clone(),
        );
        r.register(
            "endpoints_moved",
            "Endpoints lost to a newer session on another replica",
            m.endpoints_moved.clone(),
        );
        r.register(
            "endpoints_reannounced",
            "connected events published again after another replica reported disconnected",
            m.endpoints_reannounced.clone(),
        );
        m
    }

    /// The registry (for `/metrics`).
    pub fn registry(&self) -> &Metrics {
        &self.registry
    }

    pub(crate) fn connection_opened(&self) {
        self.accepted.inc();
        self.connections.inc();
    }

    pub(crate) fn connection_closed(&self, reason: &'static str) {
        self.connections.dec();
        self.closed.get_or_create(&Reason { reason }).inc();
    }

    pub(crate) fn session_parked(&self) {
        self.parked.inc();
    }

    pub(crate) fn session_unparked(&self) {
        self.parked.dec();
        self.resumed.inc();
    }

    /// Current number of parked sessions (idle, held by an idle reactor).
    pub fn parked_sessions(&self) -> i64 {
        self.parked.get()
    }

    /// Parked sessions given a task again so far.
    pub fn resumed_count(&self) -> u64 {
        self.resumed.get()
    }

    pub(crate) fn connection_rejected(&self) {
        self.rejected.inc();
    }

    pub(crate) fn set_handshakes(&self, n: i64) {
        self.handshakes.set(n);
    }

    pub(crate) fn handshake_dropped(&self, reason: &'static str) {
        self.handshakes_dropped
            .get_or_create(&Reason { reason })
            .inc();
    }

    pub(crate) fn accept_error(&self, kind: &'static str) {
        self.accept_errors.get_or_create(&Kind { kind }).inc();
    }

    pub(crate) fn message_in(&self, kind: &'static str) {
        self.messages_in.get_or_create(&Kind { kind }).inc();
    }

    pub(crate) fn message_out(&self, kind: &'static str) {
        self.messages_out.get_or_create(&Kind { kind }).inc();
    }

    pub(crate) fn extension_data(&self, outcome: &'static str) {
        self.extension_data
            .get_or_create(&Outcome { outcome })
            .inc();
    }

    pub(crate) fn error(&self, kind: &'static str) {
        self.errors.get_or_create(&Kind { kind }).inc();
    }

    pub(crate) fn refused(&self, reason: &'static str) {
        self.refused.get_or_create(&Reason { reason }).inc();
    }

    /// One more of what a session counted.
    pub(crate) fn count(&self, count: crate::session::Count) {
        use crate::session::Count;
        match count {
            Count::MessageIn(kind) => self.message_in(kind),
            Count::MessageOut(kind) => self.message_out(kind),
            Count::ExtensionData(outcome) => self.extension_data(outcome),
            Count::Error(kind) => self.error(kind),
            Count::Refused(reason) => self.refused(reason),
        }
    }

    pub(crate) fn event(&self, event: &'static str) {
        self.events.get_or_create(&EventType { event }).inc();
    }

    pub(crate) fn handover(&self, outcome: &'static str) {
        self.handovers.get_or_create(&Outcome { outcome }).inc();
    }

    pub(crate) fn handover_received(&self, outcome: &'static str) {
        self.handovers_received
            .get_or_create(&Outcome { outcome })
            .inc();
    }

    pub(crate) fn endpoint_moved(&self) {
        self.endpoints_moved.inc();
    }

    /// ExtensionData handed over with this outcome so far (`taken`,
    /// `undeliverable`, `overflow`, `failed`).
    pub fn handover_count(&self, outcome: &'static str) -> u64 {
        self.handovers.get_or_create(&Outcome { outcome }).get()
    }

    /// Handed-over ExtensionData received with this outcome so far (`taken`,
    /// `no_session`, `expired`, `malformed`, `queue_full`).
    pub fn handover_received_count(&self, outcome: &'static str) -> u64 {
        self.handovers_received
            .get_or_create(&Outcome { outcome })
            .get()
    }

    pub(crate) fn endpoint_reannounced(&self) {
        self.endpoints_reannounced.inc();
    }

    /// `connected` events published again so far because another replica
    /// reported `disconnected` for an endpoint a session here holds.
    pub fn endpoints_reannounced_count(&self) -> u64 {
        self.endpoints_reannounced.get()
    }

    /// Endpoints lost to a newer session on another replica so far.
    pub fn endpoints_moved_count(&self) -> u64 {
        self.endpoints_moved.get()
    }

    /// Current number of open MQTT connections.
    pub fn open_connections(&self) -> i64 {
        self.connections.get()
    }

    /// Current number of connections that have not completed CONNECT and
    /// authentication.
    pub fn handshakes(&self) -> i64 {
        self.handshakes.get()
    }

    /// Handshakes ended for this reason so far (`address_limit`, `evicted`,
    /// `timeout`).
    pub fn handshakes_dropped_count(&self, reason: &'static str) -> u64 {
        self.handshakes_dropped
            .get_or_create(&Reason { reason })
            .get()
    }

    /// Failed `accept` calls of this kind so far (`fd_exhausted`, `other`).
    pub fn accept_error_count(&self, kind: &'static str) -> u64 {
        self.accept_errors.get_or_create(&Kind { kind }).get()
    }

    /// ExtensionData messages received with this outcome so far (see the table in
    /// the module docs).
    pub fn extension_data_count(&self, outcome: &'static str) -> u64 {
        self.extension_data
            .get_or_create(&Outcome { outcome })
            .get()
    }

    /// Errors of this kind so far.
    pub fn error_count(&self, kind: &'static str) -> u64 {
        self.errors.get_or_create(&Kind { kind }).get()
    }

    /// Requests refused without a request ID for this reason (a `kpc_errors_total`
    /// kind) so far.
    pub fn refused_count(&self, reason: &'static str) -> u64 {
        self.refused.get_or_create(&Reason { reason }).get()
    }

    /// Sessions ended for this reason so far.
    pub fn closed_count(&self, reason: &'static str) -> u64 {
        self.closed.get_or_create(&Reason { reason }).get()
    }
}
