//! KPC, the Kaa communication service for MQTT: an MQTT 3.1.1 server that is
//! **not a broker**. Devices publish 1/KP requests; KPC forwards each as a 4/ESP
//! `ClientData` to the extension named in the topic (CMX for configuration) and
//! delivers the extension's `ExtensionData` back to the MQTT session that owns the
//! endpoint, whether or not the client subscribed to anything (Kaa's official
//! client never does). It tells the platform when endpoints come and go with 9/ELCE
//! `connected` / `disconnected` events.
//!
//! The pieces:
//!
//! - [`config`]: the YAML configuration ([`config::KpcConfig`]).
//! - [`resolver`]: endpoint token → endpoint ID ([`resolver::EndpointTokenResolver`],
//!   with the configuration's token table as the implementation, and how a 16/ECAP
//!   provider plugs in).
//! - [`metrics`]: the Prometheus metrics.
//! - [`route`] and [`session`]: what a session does, sans-IO: the checks and
//!   4/ESP `ClientData` of a device request, and [`session::SessionCore`], the
//!   state machine of one MQTT session (token ownership, pending requests, QoS,
//!   packet identifiers, the routing of deliveries), which the crate drives over
//!   a socket.
//! - [`KpcServer`]: binds the listener, subscribes on the bus and runs; the `kpc`
//!   binary, the all-in-one binary and the tests compose it.
//!
//! ```
//! use std::sync::Arc;
//! use kaa_bus::{Bus, MemoryBus};
//! use kaa_kpc::{KpcServer, config::{KpcConfig, TokenEntry}};
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(async {
//! let mut config = KpcConfig::new("127.0.0.1:0".parse()?);
//! config.kpc.endpoint_tokens.insert("JTjdbENzHh".into(), TokenEntry::EndpointId("ep-1".into()));
//! let bus: Arc<dyn Bus> = Arc::new(MemoryBus::new());
//! let kpc = KpcServer::bind(&config, bus).await?.spawn();
//! println!("MQTT on {}", kpc.local_addr());
//! kpc.shutdown().await?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # })?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # MQTT
//!
//! MQTT 3.1.1 (protocol level 4) over TCP. Packets are framed and parsed by the
//! `mqttbytes` module of [`rumqttc`] (default features off, so no TLS stack): it is
//! the packet codec of the most used Rust MQTT client, maintained with it, checks
//! every length against the bytes that remain and the declared packet size against
//! a limit before buffering a packet, and returns errors instead of panicking. KPC
//! adds the checks a server owes that a client codec leaves out (see below).
//!
//! - **CONNECT** must be the first packet, complete within `connect-timeout`;
//!   anything else closes the connection. Protocol levels other than 4 (MQTT 3.1
//!   `MQIsdp`, MQTT 5) get CONNACK 0x01. With `kpc.mqtt.auth.enabled`, a CONNECT
//!   without credentials gets 0x05 (not authorized), wrong ones 0x04 (bad user name
//!   or password). An empty client ID with clean session is assigned one; without
//!   clean session it gets 0x02. A second connection with the same client ID closes
//!   the first (MQTT 3.1.4-2). Sessions are never persisted: clean session 0 is
//!   accepted and CONNACK always says session present 0. A Will message is accepted
//!   and ignored (KPC is not a broker: there is nobody to publish it to). Until
//!   its CONNECT is accepted, a connection counts against the handshake limits,
//!   not `max-connections` (see *Limits and observability*).
//! - **Keep-alive**: no packet for 1.5 × the client's keep-alive ends the session;
//!   keep-alive 0 disables the check, as MQTT says.
//! - **PUBLISH** at QoS 0, 1 (PUBACK after the ClientData is on the bus) and 2
//!   (PUBREC, then PUBCOMP on PUBREL; a retransmission before PUBREL is not
//!   forwarded again). Responses go out at the request's QoS, capped at 1 (KPC
//!   never sends QoS 2). RETAIN is ignored: nothing is stored.
//! - **SUBSCRIBE** is answered with SUBACK (granted QoS = requested, capped at 1;
//!   0x80 for an invalid filter), **UNSUBSCRIBE** with UNSUBACK, **PINGREQ** with
//!   PINGRESP. Delivery never depends on subscriptions.
//! - **Protocol violations close the connection** without an answer: wrong reserved
//!   fixed-header flags, a CONNECT with the reserved flag set or a password without
//!   a user name, a second CONNECT, packets only a server sends (CONNACK, SUBACK,
//!   UNSUBACK, PINGRESP), a PUBLISH topic that is empty or holds `+`, `#` or NUL,
//!   malformed packets, and packets larger than `max-payload` + 65,539 bytes (room
//!   for the longest topic). Only that connection is affected.
//!
//! # Routing device requests (4/ESP ClientData)
//!
//! A PUBLISH to `kp1/<appVersionName>/<extensionInstanceName>/<endpointToken>/<resource…>[/<requestId>]`
//! becomes a `ClientData` on `kaa.v1.service.<extensionInstanceName>.esp.ClientData`
//! with `replyTo` = `kaa.v1.replica.<kpc replica>.esp.ExtensionData` (3/ISM session
//! affinity: the extension answers this replica, which holds the session):
//! `appVersionName` from the topic, `endpointId` resolved from the token,
//! `resourcePath` = the part after the token with its leading `/`, without the
//! request ID (e.g. `/config/json/network`), `requestId` from the topic, `payload`
//! as received, a fresh UUID as `correlationId`, `timeout` = `request-timeout`.
//! `configName` stays null: KPC is extension-agnostic and does not read 7/CMP's
//! paths; the configuration name is in `resourcePath`, where CMX reads it (4/ESP
//! makes `configName` optional).
//!
//! Requests KPC refuses itself get a 1/KP error response on `<topic>/error`,
//! `{"statusCode", "reasonPhrase"}`, when the topic ends in a request ID; without
//! one the device is not told (1/KP: no response), so the refusal is counted in
//! `kpc_refused_without_request_id_total{reason}` and logged at INFO with its
//! correlation ID and endpoint (never the payload). No ClientData is published
//! for them:
//!
//! | case | status |
//! | --- | --- |
//! | not a 1/KP topic (not `kp1`, empty level, no token, invalid request ID…), or a name that cannot be a NATS subject token (`.`, `*`, `>`, whitespace) | 400 |
//! | unknown endpoint token | 401 |
//! | token not valid for the topic's app version | 403 |
//! | extension instance not in `kpc.extension-instances` (when that list is set); checked after the token, so the endpoint is connected first | 404 |
//! | payload larger than `max-payload` | 413 |
//! | more than `max-inflight` requests of the session waiting for an answer, or a token beyond `max-endpoints-per-session` | 429 |
//! | token resolver unavailable, or the bus refuses the ClientData | 503 |
//!
//! # Delivering extension data (4/ESP ExtensionData)
//!
//! KPC listens on `kaa.v1.service.<instance>.esp.ExtensionData` (queue group
//! `<instance>`) and `kaa.v1.replica.<replica>.esp.ExtensionData`, and hands each
//! message to the session that owns its `endpointId`:
//!
//! - **Response** (`requestId` set): each session remembers, per pending
//!   (endpoint, extension instance, request ID), the request topic and QoS. The
//!   answer goes to `<request topic>/status` for 2xx (payload as sent) or
//!   `<request topic>/error` otherwise (payload `{"statusCode", "reasonPhrase"}`
//!   with the ESP `reasonPhrase`, or the HTTP reason for the status when it is
//!   null), at the request's QoS. One answer per request; an answer for no pending
//!   request, or after `request-timeout`, is dropped.
//! - **Push** (`requestId` null): to `kp1/<appVersionName>/<extensionInstanceName>/<token><resourcePath>/status`
//!   (or `/error` for a non-2xx push), with the token the session last used for the
//!   endpoint and the app version from the message (else the session's). **QoS of
//!   pushes**: the QoS of the session's last request for that (endpoint, extension,
//!   resource path), so a device that asks for its configuration at QoS 1 gets the
//!   updates at QoS 1; 0 if it never asked.
//! - QoS 1 deliveries are sent once (no session is resumed, so nothing is
//!   retransmitted); at most `max-inflight` may wait for PUBACK, further QoS 1
//!   deliveries are dropped (counted) until PUBACKs arrive.
//! - Dropped and counted in `kpc_extension_data_total{outcome}`: undecodable
//!   datums, expired ones (3/ISM `timestamp` + `timeout`) and endpoint-unaware ones
//!   (`endpointId` null). One for an endpoint with no session on this replica is
//!   counted `no_session` and handed over to the other replicas of the instance
//!   (see *Several replicas*); when no replica holds the endpoint (the device is
//!   offline: CMX pushes again on the next `connected`) it is dropped there and
//!   counted undeliverable.
//!
//! # Endpoints, sessions and 9/ELCE events
//!
//! - Tokens resolve through the configuration's table, or with
//!   `kpc.token-validation` through a 16/ECAP provider (an endpoint register,
//!   [`resolver::EcapResolver`]). When the provider revokes an endpoint's tokens
//!   (`kaa.v1.events.<provider>.endpoint.token.revoked`, heard by every replica),
//!   KPC drops its cached answers, releases the endpoint (`disconnected`) and the
//!   session that used it forgets its tokens: nothing more is pushed for it, and
//!   the next request with a revoked token is resolved again and refused (401).
//! - A session's first use of a token resolves it ([`resolver`]) and makes the
//!   session the owner of the endpoint: KPC publishes `connected` (one endpoint)
//!   and waits for it to be on the bus before forwarding the request, so that
//!   extensions see the session before its first request. This holds whatever
//!   extension the request names: a request to an extension instance KPC does not
//!   serve connects the endpoint and is then refused (Kaa's official Python
//!   client's first PUBLISH goes to `bcx`; CMX must still learn of the device).
//! - **One owner per endpoint; the latest session wins.** When a second session
//!   uses a token of an endpoint another session owns, it takes the endpoint over
//!   (a device that reconnects after a half-open TCP connection must not be locked
//!   out until the old one's keep-alive expires). The old session keeps its
//!   connection but loses the endpoint silently: its pending answers and later
//!   pushes go to the new owner's session, and its `disconnected` event will not
//!   list the endpoint. The new session publishes `connected`. If the old session
//!   uses the token again it takes the endpoint back, the same way.
//! - When a session ends (DISCONNECT, dropped TCP connection, keep-alive expiry,
//!   protocol violation, client ID takeover, shutdown), KPC publishes **one**
//!   `disconnected` event listing every endpoint the session still owns (none: no
//!   event).
//! - Ownership changes and their events are serialized by one lock and published
//!   by one task, so they reach the bus in the order they happened.
//!
//! # Several replicas
//!
//! Replicas of one KPC instance (same `service.instance.name`, different
//! `service.instance.replica.id`) on one NATS (a server or a cluster) behave as
//! one KPC: a device may connect to any of them (and reconnect to another), and an
//! extension may send to the instance-wide subject, to the replica subject of the
//! replica the device last spoke through, or to a stale one. What kaa-rs adds for
//! this goes beyond the RFCs (1/KP, 3/ISM, 4/ESP and 9/ELCE say nothing about
//! several replicas of a communication service sharing devices) and needs nothing
//! of the extensions: CMX, or any 4/ESP extension, works as with one replica.
//!
//! - **Handover (kaa-rs extension).** Every replica also subscribes, without a
//!   queue group, to [`handover_subject`] `kaa.v1.service.<instance>.kpc.handover`.
//!   An `ExtensionData` that arrives on the instance-wide or the replica subject
//!   for an endpoint with no session on this replica is published there unchanged
//!   (the same Avro datum), as a NATS request. Each replica that receives it
//!   delivers it when a session of its own owns the endpoint, exactly as a direct
//!   one, and answers the request; the others ignore it. A handed-over message is
//!   never handed over again, so nothing loops. No answer within 1 s means no
//!   replica holds the endpoint: the message is dropped, counted
//!   (`kpc_handovers_total{outcome="undeliverable"}`) and logged at INFO with its
//!   endpoint. At most 1,024 handovers wait for their answer at once; beyond that
//!   a message is dropped and counted `overflow`. A message for an endpoint whose
//!   session is on this replica never takes this path: it costs nothing when
//!   extensions follow session affinity, and only the misrouted messages cross the
//!   bus twice. With one replica the outcome is the same as before (the message is
//!   dropped), one second later in `kpc_handovers_total`.
//! - **Latest session wins across replicas (kaa-rs extension).** Every replica
//!   listens to its own instance's 9/ELCE connectivity events
//!   (`kaa.v1.events.<instance>.endpoint.connectivity.*`, no queue group). The `timestamp` of a
//!   `connected` KPC publishes is the moment its session took the endpoint. When
//!   one from another replica (`originatorReplicaId`) lists an endpoint a session
//!   here owns, the newer session keeps it: the one with the greater
//!   (`timestamp`, replica ID) pair, the replica ID breaking a tie of the same
//!   millisecond. Every replica compares the same pairs, so exactly one session
//!   wins whatever order the events arrive in, and an event about a session older
//!   than the local one (late, or from a replica whose device came back here)
//!   changes nothing. A session that loses the endpoint loses it as to a newer
//!   session on the same replica (above): silently, its connection stays open, no
//!   event is published (the winner published `connected`), its `disconnected`
//!   will not list the endpoint, its later pushes and answers are handed over to
//!   the winner, and using the token again takes the endpoint back (publishing
//!   `connected`, which the other replica yields to in turn). Counted in
//!   `kpc_endpoints_moved_total`. The rule assumes the replicas' clocks agree to
//!   well within the time a device takes to reconnect (NTP does); with a larger
//!   skew two sessions may both keep an endpoint until one of them uses it again.
//! - **No false `disconnected` (kaa-rs extension).** If the old session ends
//!   before its replica saw the new session's `connected`, its `disconnected`
//!   lists the endpoint, and an extension that receives it after the new
//!   `connected` (events of two replicas have no order between them) would take
//!   the device for offline (kaa-cmp would push nothing until the device's next
//!   request). So a replica whose session holds an endpoint that another replica
//!   reports `disconnected` publishes `connected` for it again, with the
//!   timestamp of its original claim (so the rule above compares the same
//!   session); counted in `kpc_endpoints_reannounced_total`. Extensions see one
//!   more `connected` (kaa-cmp: it drops its reply-subject affinity and pushes
//!   what the endpoint has not applied), only in this race.
//! - **Limits.** Until the other replica's `connected` reaches the old one (the
//!   bus's latency), both sessions hold the endpoint, and a message may go to
//!   either; if that `connected` is lost (a bus outage), until the old session
//!   ends or uses the token again. A handed-over message takes one more hop than
//!   a direct one, so two messages for one endpoint that took different paths may
//!   reach the device in the other order.
//!
//! # Limits and observability
//!
//! `max-connections` (the next CONNECT gets CONNACK 0x03, server unavailable),
//! `max-handshakes`, `max-handshakes-per-address`,
//! `max-inflight`,
//! `max-endpoints-per-session`, `max-payload`, `connect-timeout`, `request-timeout`, `write-timeout`: see
//! [`config`]. Established sessions and connections that have not completed
//! CONNECT (handshakes) are accounted separately, so sockets that never speak
//! cannot take the room of devices that do: handshakes have their own cap, a
//! per-address cap and the `connect-timeout` deadline, and a full handshake pool
//! evicts the oldest handshake of the busiest address rather than refusing the
//! newcomer. The accept loop never waits on a connection; out of file
//! descriptors, it evicts a handshake and pauses briefly instead of spinning.
//! Every session runs in a tracing span `mqtt_session` with its
//! number, peer address and client ID (also when it runs again after being
//! parked, below); [`metrics`] lists the counters served on
//! `/metrics` (with `/health`) when `kpc.http.listen` is set.
//!
//! # Idle sessions
//!
//! A session runs in a tokio task of its own only while it has something to do.
//! Once it is idle (nothing half-read from the socket, nothing to write, nothing
//! in its mailbox, no request being driven), its task ends and the session is
//! *parked* on one of a few idle reactors (one per worker thread, at most 4),
//! each a task that holds many parked sessions, as an event loop does: it waits
//! for their sockets' readiness and their mailboxes, and keeps their keep-alive
//! deadlines in one timer. A parked session is given a task again at once when
//! its socket becomes readable (a packet, EOF or an error), a delivery,
//! revocation or client-ID takeover reaches its mailbox, its keep-alive expires,
//! or KPC stops; the task handles that exactly as a session that never parked
//! would, so every rule above holds for parked sessions alike. What an idle
//! session costs is then its state alone (socket, session state, mailbox, the
//! hub's entries), not a task and its future (`kpc_idle_memory` in the
//! workspace's BENCHMARKS.md). `kpc_sessions_parked` and
//! `kpc_sessions_resumed_total` ([`metrics`]) count them.

pub mod config;
pub mod metrics;
pub mod resolver;
pub mod route;
pub mod session;

/// The MQTT 3.1.1 packet codec of [`rumqttc`] (default features off), whose
/// packets a [`session::SessionCore`] takes and gives.
pub use rumqttc::mqttbytes;

mod admission;
mod bus;
mod hub;
mod idle;
mod mailbox;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use kaa_bus::{Bus, BusError};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc, oneshot, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;
use tracing::Instrument;

use config::{Credentials, KpcConfig};
use kaa_service::{ConfigError, Metrics, ops_router};
use metrics::KpcMetrics;
use resolver::{EndpointTokenResolver, TokenTable};

/// The most connections past `max-connections` being answered CONNACK 0x03 at
/// once; beyond it they are closed at once.
const MAX_CONCURRENT_REFUSALS: usize = 64;

/// How long shutdown waits for sessions to end and their events to be published.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// The first pause after a failed `accept`; it doubles while failures go on.
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(5);
/// The longest pause after failed `accept`s.
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_millis(500);
/// At most one warning per this interval for connections KPC drops under load
/// (the rest are counted, and logged at debug level).
const LOAD_WARNING_INTERVAL: Duration = Duration::from_secs(10);
/// File descriptors KPC keeps for itself on top of its connection limits (bus,
/// listeners, logs) when it raises `RLIMIT_NOFILE`.
const FD_ROOM: u64 = 256;

/// Why KPC could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The bus failed.
    #[error("bus: {0}")]
    Bus(#[from] BusError),
    /// A listener could not be bound or failed.
    #[error("listener on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// What sessions need to know, fixed at start.
#[derive(Debug)]
pub(crate) struct Settings {
    pub(crate) instance: String,
    pub(crate) replica_id: String,
    /// `kaa.v1.replica.<replica>.esp.ExtensionData`.
    pub(crate) reply_to: String,
    /// [`handover_subject`] of the instance.
    pub(crate) handover_subject: String,
    pub(crate) credentials: Credentials,
    /// What every session applies.
    pub(crate) session: Arc<session::SessionSettings>,
    pub(crate) connect_timeout: Duration,
    pub(crate) write_timeout: Duration,
    /// `kpc.mqtt.park-idle-sessions`.
    pub(crate) park_idle: bool,
}

/// The state every session and the bus side share.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) settings: Settings,
    pub(crate) hub: hub::Hub,
    pub(crate) bus: Arc<dyn Bus>,
    pub(crate) resolver: Arc<dyn EndpointTokenResolver>,
    pub(crate) metrics: KpcMetrics,
    /// Where idle sessions are parked.
    pub(crate) idle: idle::Idle,
    /// The sessions' tasks.
    pub(crate) tasks: Arc<idle::Tasks>,
}

/// A bound, ready KPC: MQTT listener bound, ExtensionData subscriptions in place.
pub struct KpcServer {
    shared: Arc<Shared>,
    listener: TcpListener,
    local_addr: SocketAddr,
    max_connections: usize,
    max_handshakes: usize,
    max_handshakes_per_address: usize,
    ops: Option<(TcpListener, SocketAddr)>,
    bus_tasks: bus::BusTasks,
    /// The 16/ECAP revocation listener, with `kpc.token-validation`.
    revocations: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for KpcServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KpcServer")
            .field("local_addr", &self.local_addr)
            .field("ops_addr", &self.ops_addr())
            .finish_non_exhaustive()
    }
}

impl KpcServer {
    /// Validates `config`, resolves its credentials, subscribes on `bus` and binds
    /// the MQTT listener (`kpc.mqtt.listen`; port 0 picks a free port) and, when
    /// configured, the `/health` + `/metrics` listener. Tokens resolve through the
    /// configuration's table ([`TokenTable`]).
    ///
    /// With `kpc.token-validation`, tokens not in the table are validated by the
    /// 16/ECAP provider it names ([`resolver::EcapResolver`]), and the provider's
    /// `endpoint.token.revoked` events take the endpoint from the session using
    /// it at once: its cached answers are dropped, it is released (`disconnected`),
    /// nothing more is pushed for it, and the session's next request with a
    /// revoked token is resolved again and refused (401).
    pub async fn bind(config: &KpcConfig, bus: Arc<dyn Bus>) -> Result<Self, StartError> {
        let table = TokenTable::new(
            config
                .kpc
                .endpoint_tokens
                .iter()
                .map(|(t, e)| (t.clone(), e.clone())),
            config.kpc.accept_any_token,
        );
        let Some(validation) = &config.kpc.token_validation else {
            return Self::bind_with_resolver(config, bus, Arc::new(table)).await;
        };
        config.validate()?;
        let ecap = Arc::new(resolver::EcapResolver::from_config(
            Arc::clone(&bus),
            validation,
            table,
            config.kpc.accept_any_token,
        ));
        // Subscribed before devices are accepted: no revocation can slip by.
        let filter = kaa_ecap::subject::endpoint_token_revoked_filter(
            kaa_ism::subject::Token::Name(&validation.provider),
        )
        .map_err(|e| ConfigError::Invalid(format!("kpc.token-validation.provider: {e}")))?;
        let revocations = bus.subscribe(filter.as_str(), None).await?;
        let mut server = Self::bind_with_resolver(
            config,
            bus,
            Arc::clone(&ecap) as Arc<dyn EndpointTokenResolver>,
        )
        .await?;
        server.revocations = Some(tokio::spawn(bus::revocations(
            Arc::clone(&server.shared),
            ecap,
            revocations,
        )));
        Ok(server)
    }

    /// [`KpcServer::bind`] with another token resolver (e.g. a 16/ECAP client);
    /// `kpc.endpoint-tokens` is then ignored.
    pub async fn bind_with_resolver(
        config: &KpcConfig,
        bus: Arc<dyn Bus>,
        resolver: Arc<dyn EndpointTokenResolver>,
    ) -> Result<Self, StartError> {
        config.validate()?;
        kaa_service::check_fits_bus(
            "kpc.mqtt.max-payload",
            config.kpc.mqtt.max_payload,
            kaa_service::BUS_ENVELOPE_ROOM,
            bus.max_payload(),
        )?;
        let credentials = config.credentials()?;
        if credentials.is_anonymous() {
            tracing::warn!("kpc.mqtt.auth is not enabled: any MQTT client may connect");
        }
        let replica_id = config.replica_id();
        let reply_to = kaa_esp::subject::extension_data_replica_subject(&replica_id)
            .map_err(|e| ConfigError::Invalid(format!("service.instance.replica.id: {e}")))?
            .to_string();
        let mqtt = &config.kpc.mqtt;
        let handover_subject = handover_subject(config.instance_name());
        kaa_bus::validate_subject(&handover_subject)
            .map_err(|e| ConfigError::Invalid(format!("service.instance.name: {e}")))?;
        let settings = Settings {
            instance: config.instance_name().to_owned(),
            replica_id,
            reply_to,
            handover_subject,
            credentials,
            session: Arc::new(session::SessionSettings {
                extension_instances: config.kpc.extension_instances.clone(),
                max_inflight: mqtt.max_inflight,
                max_endpoints: mqtt.max_endpoints_per_session,
                max_payload: mqtt.max_payload,
                request_timeout: mqtt.request_timeout,
            }),
            connect_timeout: mqtt.connect_timeout,
            write_timeout: mqtt.write_timeout,
            park_idle: mqtt.park_idle_sessions,
        };
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            settings,
            hub: hub::Hub::new(events_tx.clone()),
            bus,
            resolver,
            metrics: KpcMetrics::new(Metrics::new("kpc")),
            idle: idle::Idle::for_this_machine(),
            tasks: Arc::new(idle::Tasks::default()),
        });
        let addr = mqtt.listen;
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| StartError::Listen { addr, source })?;
        let local_addr = listener
            .local_addr()
            .map_err(|source| StartError::Listen { addr, source })?;
        let ops = match &config.kpc.http {
            Some(http) => {
                let addr = http.listen;
                let l = TcpListener::bind(addr)
                    .await
                    .map_err(|source| StartError::Listen { addr, source })?;
                let a = l
                    .local_addr()
                    .map_err(|source| StartError::Listen { addr, source })?;
                Some((l, a))
            }
            None => None,
        };
        let bus_tasks = bus::start(Arc::clone(&shared), events_tx, events_rx).await?;
        let sockets = mqtt.max_connections + mqtt.max_handshakes() + MAX_CONCURRENT_REFUSALS;
        raise_open_file_limit(u64::try_from(sockets).unwrap_or(u64::MAX));
        Ok(KpcServer {
            shared,
            listener,
            local_addr,
            max_connections: mqtt.max_connections,
            max_handshakes: mqtt.max_handshakes(),
            max_handshakes_per_address: mqtt.max_handshakes_per_address(),
            ops,
            bus_tasks,
            revocations: None,
        })
    }

    /// The bound MQTT address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The bound `/health` + `/metrics` address, if configured.
    pub fn ops_addr(&self) -> Option<SocketAddr> {
        self.ops.as_ref().map(|(_, a)| *a)
    }

    /// The metrics.
    pub fn metrics(&self) -> KpcMetrics {
        self.shared.metrics.clone()
    }

    /// Accepts MQTT connections until `shutdown` resolves; then closes every
    /// session (each publishing its `disconnected` event), waits for the events to
    /// be on the bus and stops.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), StartError> {
        let KpcServer {
            shared,
            listener,
            local_addr,
            max_connections,
            max_handshakes,
            max_handshakes_per_address,
            ops,
            bus_tasks,
            revocations,
        } = self;
        let (stop_tx, stop_rx) = watch::channel(false);
        let ops_task = ops.map(|(l, _)| {
            let router = ops_router::<()>(shared.metrics.registry().clone());
            let mut stop = stop_rx.clone();
            tokio::spawn(async move {
                let _ = axum::serve(l, router)
                    .with_graceful_shutdown(async move {
                        let _ = stop.changed().await;
                    })
                    .await;
            })
        });
        let permits = Arc::new(Semaphore::new(max_connections));
        let refusals = Arc::new(Semaphore::new(MAX_CONCURRENT_REFUSALS));
        let handshakes = Arc::new(admission::Handshakes::new(
            max_handshakes,
            max_handshakes_per_address,
            shared.metrics.clone(),
        ));
        // The idle reactors and the refusals; sessions run in `shared.tasks`.
        let mut sessions = JoinSet::new();
        for reactor in shared.idle.start(&shared, &stop_rx) {
            sessions.spawn(reactor);
        }
        // After a failed accept: no accepting until then, and the next pause.
        let mut paused_until: Option<Instant> = None;
        let mut backoff = ACCEPT_BACKOFF_MIN;
        let mut warnings = LoadWarnings::default();
        tokio::pin!(shutdown);
        // Polled once before anything else: a signal-based `shutdown` installs its
        // handlers on its first poll, and a select may pick a waiting connection
        // first (a SIGTERM right after start then killed the process).
        let stopped_early = futures::FutureExt::now_or_never(&mut shutdown).is_some();
        let result = loop {
            if stopped_early {
                break Ok(());
            }
            tokio::select! {
                () = &mut shutdown => break Ok(()),
                Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
                () = tokio::time::sleep_until(paused_until.unwrap_or_else(Instant::now)),
                    if paused_until.is_some() => paused_until = None,
                accepted = listener.accept(), if paused_until.is_none() => match accepted {
                    Ok((stream, peer)) => {
                        backoff = ACCEPT_BACKOFF_MIN;
                        // Nothing here waits on the connection: the accept loop
                        // only does bookkeeping and spawns.
                        let Some((mut admission, displaced)) = handshakes.admit(peer.ip(), &permits)
                        else {
                            // Its address holds its share of handshakes: closed at
                            // once (reset, so no TIME_WAIT piles up here).
                            let _ = stream.set_zero_linger();
                            drop(stream);
                            warnings.note(&peer, "address_limit");
                            continue;
                        };
                        if displaced {
                            warnings.note(&peer, "evicted");
                        }
                        if permits.available_permits() == 0 {
                            shared.metrics.connection_rejected();
                            warnings.note(&peer, "max_connections");
                            // Read the CONNECT and answer CONNACK 0x03 (server
                            // unavailable), a bounded number at a time; the
                            // connection still counts as a handshake.
                            if let Ok(refusal) = Arc::clone(&refusals).try_acquire_owned() {
                                let timeout = shared.settings.connect_timeout;
                                let mut stop = stop_rx.clone();
                                sessions.spawn(async move {
                                    let evicted = admission.eviction();
                                    tokio::select! {
                                        () = session::driver::refuse_unavailable(stream, timeout) => {}
                                        () = evicted => {}
                                        _ = stop.changed() => {}
                                    }
                                    drop(admission);
                                    drop(refusal);
                                });
                            }
                            continue;
                        }
                        let span = tracing::info_span!(
                            "mqtt_session",
                            session = tracing::field::Empty,
                            %peer,
                            client_id = tracing::field::Empty,
                        );
                        let stop = stop_rx.clone();
                        shared.tasks.spawn(
                            session::driver::serve(Arc::clone(&shared), stream, peer, stop, admission)
                                .instrument(span),
                        );
                    }
                    Err(e) => {
                        // Out of file descriptors (or socket memory): the listener
                        // stays readable, so retrying at once would spin. Free a
                        // descriptor by evicting a handshake, and pause.
                        let exhausted = is_resource_exhaustion(&e);
                        let evicted = exhausted && handshakes.evict_one();
                        shared
                            .metrics
                            .accept_error(if exhausted { "fd_exhausted" } else { "other" });
                        if let Some(suppressed) = warnings.ready("accept") {
                            tracing::warn!(
                                error = %e,
                                addr = %local_addr,
                                evicted_a_handshake = evicted,
                                pause_ms = backoff.as_millis(),
                                suppressed,
                                "accept failed; pausing"
                            );
                        }
                        paused_until = Some(Instant::now() + backoff);
                        backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
                    }
                },
            }
        };
        drop(listener);
        let _ = stop_tx.send(true);
        // The reactors first: they give every parked session a task (which sees
        // the shutdown) before they end.
        let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
            while sessions.join_next().await.is_some() {}
            shared.tasks.wait().await;
        })
        .await;
        if drained.is_err() {
            tracing::warn!("sessions did not end in time; aborting them");
            sessions.abort_all();
            shared.tasks.abort_all();
            let _ = tokio::time::timeout(SHUTDOWN_GRACE, shared.tasks.wait()).await;
        }
        bus_tasks.shutdown().await;
        if let Some(t) = revocations {
            t.abort();
        }
        if let Some(t) = ops_task {
            let _ = t.await;
        }
        result
    }

    /// Runs the server in a task of its own; the handle stops it.
    pub fn spawn(self) -> KpcHandle {
        let local_addr = self.local_addr;
        let ops_addr = self.ops_addr();
        let metrics = self.metrics();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(self.run(async move {
            let _ = stopped.await;
        }));
        KpcHandle {
            local_addr,
            ops_addr,
            metrics,
            stop,
            task,
        }
    }
}

/// `accept` failed for want of file descriptors or kernel memory (as opposed to a
/// connection that failed before it was accepted).
fn is_resource_exhaustion(e: &std::io::Error) -> bool {
    #[cfg(unix)]
    {
        use rustix::io::Errno;
        if let Some(errno) = Errno::from_io_error(e) {
            return [Errno::MFILE, Errno::NFILE, Errno::NOBUFS, Errno::NOMEM].contains(&errno);
        }
    }
    e.kind() == std::io::ErrorKind::OutOfMemory
}

/// Warnings for connections dropped under load, at most one per
/// [`LOAD_WARNING_INTERVAL`] per kind; each says how many went unlogged since.
#[derive(Debug, Default)]
struct LoadWarnings {
    last: std::collections::HashMap<&'static str, (Instant, u64)>,
}

impl LoadWarnings {
    /// `Some(suppressed since the last warning)` when a warning of `kind` is due.
    fn ready(&mut self, kind: &'static str) -> Option<u64> {
        let now = Instant::now();
        match self.last.get_mut(kind) {
            Some((at, suppressed)) if now.duration_since(*at) < LOAD_WARNING_INTERVAL => {
                *suppressed += 1;
                None
            }
            Some((at, suppressed)) => {
                *at = now;
                Some(std::mem::take(suppressed))
            }
            None => {
                self.last.insert(kind, (now, 0));
                Some(0)
            }
        }
    }

    /// A connection from `peer` dropped or refused for `kind`.
    fn note(&mut self, peer: &SocketAddr, kind: &'static str) {
        let what = match kind {
            "address_limit" => {
                "connection closed: its address holds kpc.mqtt.max-handshakes-per-address handshakes"
            }
            "evicted" => {
                "kpc.mqtt.max-handshakes reached: the oldest handshake of the busiest address was closed"
            }
            _ => "kpc.mqtt.max-connections reached; CONNECT refused",
        };
        match self.ready(kind) {
            Some(suppressed) => tracing::warn!(%peer, suppressed, "{what}"),
            None => tracing::debug!(%peer, "{what}"),
        }
    }
}

/// Raises the soft `RLIMIT_NOFILE` to `sockets` plus [`FD_ROOM`] when it is lower,
/// within the hard limit; warns when the hard limit does not allow it.
#[cfg(unix)]
fn raise_open_file_limit(sockets: u64) {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let want = sockets.saturating_add(FD_ROOM);
    let limit = getrlimit(Resource::Nofile);
    let soft = limit.current.unwrap_or(u64::MAX);
    if soft >= want {
        return;
    }
    let hard = limit.maximum.unwrap_or(u64::MAX);
    let new = want.min(hard);
    if new > soft {
        let raised = Rlimit {
            current: Some(new),
            maximum: limit.maximum,
        };
        match setrlimit(Resource::Nofile, raised) {
            Ok(()) => tracing::info!(
                from = soft,
                to = new,
                "raised the open-file limit (RLIMIT_NOFILE)"
            ),
            Err(e) => tracing::warn!(error = %e, "could not raise the open-file limit"),
        }
    }
    if new < want {
        tracing::warn!(
            limit = new,
            needed = want,
            "the open-file limit is below what kpc.mqtt.max-connections + max-handshakes need; \
             connections past it wait in the listen queue (KPC evicts handshakes and pauses accepting)"
        );
    }
}

#[cfg(not(unix))]
fn raise_open_file_limit(_sockets: u64) {}

/// A KPC running in the background ([`KpcServer::spawn`]).
#[derive(Debug)]
pub struct KpcHandle {
    local_addr: SocketAddr,
    ops_addr: Option<SocketAddr>,
    metrics: KpcMetrics,
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<(), StartError>>,
}

impl KpcHandle {
    /// The MQTT address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The `/health` + `/metrics` address, if configured.
    pub fn ops_addr(&self) -> Option<SocketAddr> {
        self.ops_addr
    }

    /// The metrics.
    pub fn metrics(&self) -> &KpcMetrics {
        &self.metrics
    }

    /// Stops the server (sessions end, `disconnected` events are published) and
    /// waits for it.
    pub async fn shutdown(self) -> Result<(), StartError> {
        let _ = self.stop.send(());
        match self.task.await {
            Ok(r) => r,
            Err(e) => Err(StartError::Listen {
                addr: self.local_addr,
                source: std::io::Error::other(e),
            }),
        }
    }
}

/// `kaa.v1.service.<instance>.kpc.handover`: where a replica of KPC instance
/// `instance` hands over an ExtensionData for an endpoint it holds no session for,
/// to every replica of the instance (a kaa-rs extension; see *Several replicas* in
/// the [crate docs](crate)).
pub fn handover_subject(instance: &str) -> String {
    format!("kaa.v1.service.{instance}.kpc.handover")
}

/// The bus named by the configuration: NATS when `nats.urls` is set (credentials
/// from the environment, see `kaa_bus::nats`), else an in-memory bus.
pub async fn connect_bus(config: &KpcConfig) -> Result<Arc<dyn Bus>, StartError> {
    match &config.nats {
        Some(nats) => {
            let nats_config = nats.nats_config(&config.replica_id());
            Ok(Arc::new(kaa_bus::NatsBus::connect(&nats_config).await?))
        }
        None => Ok(Arc::new(kaa_bus::MemoryBus::new())),
    }
}
