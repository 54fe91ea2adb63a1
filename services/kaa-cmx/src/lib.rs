//! CMX, the Configuration Management Extension, as a service on the Kaa transport:
//! [`kaa_cmp::Cmx`] driven over a [`kaa_bus::Bus`] (NATS, or in memory).
//!
//! The engine does the protocol (7/CMP over 4/ESP, 6/CDTP, 9/ELCE); this crate is
//! the driver around it, feeding the engine only through its documented inputs
//! ([`kaa_cmp::Cmx::decode_input`], [`kaa_cmp::Cmx::handle_input`]):
//!
//! - **Inputs.** [`CmxService::bind`] subscribes to `ClientData` on
//!   `kaa.v1.service.<cmx>.esp.ClientData` (queue group `<cmx>`, so replicas share
//!   the devices) and on the replica subject `kaa.v1.replica.<replica>.esp.ClientData`,
//!   to CDTP responses on `kaa.v1.replica.<replica>.cdtp.response`, to
//!   `kaa.v1.events.<provider>.endpoint.config.updated`, and to every 9/ELCE
//!   connectivity and lifecycle event (`kaa.v1.events.*.endpoint.connectivity.*`,
//!   `…lifecycle.*`), and waits for the bus to confirm them (a round trip through
//!   the server, see [`subscription_barrier`]), so they are in place on return.
//! - **One task owns the engine.** [`CmxService::run`] is a `select!` loop over the
//!   subscriptions and the engine's timer ([`kaa_cmp::Cmx::poll_timeout`]); every
//!   message is decoded, handled with the wall clock as `now`, and the outputs are
//!   published in order. CDTP answers are taken before new device requests.
//! - **Logs.** `tracing`: one span per handled message carrying its `correlationId`
//!   (and endpoint, resource path, request ID where the message has them); what
//!   the engine publishes is logged inside that span with the device's
//!   `deviceCorrelationId` (a CDTP answer's span carries the CDTP correlation ID).
//!   Errors answered to devices are logged at `info`, undecodable messages at
//!   `warn`, everything else at `debug`.
//! - **HTTP.** `GET /health` (`{"status":"UP"}`, or 503 `{"status":"DOWN"}` while
//!   starting, draining, stopped, or when the bus probe says the bus is down) and
//!   `GET /metrics` (Prometheus text, see [`metrics`]).
//! - **Shutdown.** When the future given to [`CmxService::run`] resolves (the binary
//!   passes SIGTERM/ctrl-c), the service stops taking `ClientData` and events
//!   (leaving the queue group, so other replicas take over), keeps handling CDTP
//!   answers for up to `cmx.shutdown-grace-ms`, answers 504 to any device still
//!   waiting after that, flushes the bus, and returns a [`RunReport`].
//!
//! - **Recovery.** The engine's state (who is connected, what each device holds
//!   and observes) lives in memory, and NATS core delivers at most once, so two
//!   things are repaired explicitly:
//!   - *a bus outage* (the NATS server restarted, or the connection dropped):
//!     `ConfigUpdated` and `connected` broadcasts sent meanwhile are gone. The
//!     driver watches the bus's connection epoch ([`Bus::connection_epoch`]); after
//!     a reconnect it waits until its subscriptions are back
//!     ([`subscription_barrier`]), then feeds [`kaa_cmp::Input::BusConnected`]: the
//!     engine re-synchronizes ([`kaa_cmp::Cmx::resync`]: every connected
//!     endpoint's configurations are fetched again and pushed unless the device
//!     holds them) and asks for the sessions (below). A fetch that finds the
//!     provider still reconnecting times out and is retried by the engine.
//!   - *a restart of the CMX itself* while devices stay connected to KPC: at start
//!     (and after every reconnect, both [`kaa_cmp::Input::BusConnected`]) the
//!     engine asks the driver to publish a
//!     [`kaa_elce::SessionsRequest`] (naming its instance) to
//!     `kaa.v1.service.<communication service>.elce.SessionsRequest`
//!     ([`kaa_elce::sessions_request_subject`]; every replica answers) with
//!     `replyTo` `kaa.v1.replica.<cmx replica>.elce.SessionsResponse`
//!     ([`kaa_elce::sessions_response_subject`]); each KPC replica answers with
//!     [`kaa_elce::SessionsResponse`]s listing the endpoints it holds sessions for
//!     and the resource paths each session used with this CMX instance, and the
//!     engine adopts them
//!     ([`kaa_cmp::Cmx::adopt_session`]): they count as connected, the names in
//!     the paths count as used, and every configuration they have not reported
//!     applied is pushed (with the old process gone, that is all of them).
//!   - *a restart of the provider*: ECR publishes `ConfigUpdated` after the write
//!     commits, so one killed with events still queued never announces those
//!     writes. Each provider replica announces its start with a
//!     [`kaa_cdtp::ProviderStarted`] on `kaa.v1.events.<provider>.provider.started`
//!     ([`kaa_cdtp::subject::provider_started_subject`]); the CMX then calls
//!     [`kaa_cmp::Cmx::resync`] as after a reconnect.
//!
//!   *Replicas* (kaa-rs extension, `cmx.replicas.enabled`, NATS only): any number
//!   of replicas of one instance behave as one CMX. Each keeps a heartbeat key in
//!   a JetStream key-value bucket and watches it ([`membership`]); the live
//!   members go to the engine ([`kaa_cmp::Input::Members`]), which serves only the
//!   endpoints it owns by rendezvous hashing and hands `ClientData` about the
//!   others to their owner's replica subject with KPC's `replyTo`
//!   ([`kaa_cmp::Output::HandOver`]); KPC is unchanged. A replica that stops
//!   deletes its key before draining, so its endpoints move at once (it lets them
//!   go too, answering 503 to devices still waiting, unless it is the last
//!   replica, which drains as a single CMX does); a crashed
//!   one's key expires (`cmx.replicas.expiry-ms`). The new owner takes the
//!   endpoints over by the sessions exchange below and a fresh fetch. A replica
//!   that joins live members delivers nothing until each of them has confirmed,
//!   in its key's value, that it applied the new member list after a round trip
//!   through its NATS server (the hand-over fence: what the replica giving an
//!   endpoint up pushed before cannot arrive after the new owner's newer push;
//!   [`kaa_cmp::Cmx::set_member_view`]). Without
//!   membership (the default, and always on the in-memory bus) run one replica
//!   per instance. See "Replicas" in the [`kaa_cmp::engine`] docs.
//!
//!   The sessions request and response and the provider's start announcement are
//!   this project's additions to the Kaa protocols (kaa-rs extensions, not RFC
//!   messages), with Avro schemas in `kaa-elce/schemas/` and `kaa-cdtp/schemas/` so
//!   that other implementations can take part; a communication service without
//!   them simply does not answer, and its devices are learned again from their next
//!   request or session.
//!
//! Undecodable messages never stop the service: they are counted
//! (`cmx_malformed_messages_total`), logged and dropped. A `ClientData` that decodes
//! but carries a malformed 7/CMP payload is answered 400 by the engine.
//!
//! The service composes with others in one process: give [`CmxService::bind`] the
//! same `Arc<dyn Bus>` (e.g. one [`kaa_bus::MemoryBus`]) as ECR and KPC.
//!
//! ```
//! use std::sync::Arc;
//! use kaa_bus::{Bus, MemoryBus};
//! use kaa_cmx::{CmxService, config::CmxServiceConfig};
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(async {
//! let bus: Arc<dyn Bus> = Arc::new(MemoryBus::new());
//! let config = CmxServiceConfig::parse(
//!     "kaa:\n  cmx:\n    configuration-data-provider:\n      service-instance:\n        name: ecr\n",
//!     "inline",
//! )?;
//! let service = CmxService::bind(&config, Arc::clone(&bus)).await?;
//! let status = service.status();
//! let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
//! let task = tokio::spawn(service.run(async move { let _ = stopped.await; }));
//! // ... ECR and KPC on the same bus ...
//! let _ = stop.send(());
//! let report = task.await??;
//! assert_eq!(report.abandoned, 0);
//! assert!(!status.is_up());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # })?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod config;
mod driver;
pub mod membership;
pub mod metrics;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use kaa_bus::{Bus, BusError};
use kaa_cmp::Cmx;

use config::{BusKind, CmxServiceConfig};
use driver::{Driver, Inputs};
use kaa_service::ConfigError;
use membership::{Membership, MembershipError};
use metrics::CmxMetrics;

/// Why the CMX service could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The engine refused its configuration.
    #[error("engine configuration: {0}")]
    Engine(#[from] kaa_cmp::engine::ConfigError),
    /// Subscribing or connecting failed.
    #[error("bus: {0}")]
    Bus(#[from] BusError),
    /// Replicas' membership could not be set up (JetStream key-value).
    #[error("replicas: {0}")]
    Membership(#[from] MembershipError),
    /// The HTTP listener could not be bound.
    #[error("HTTP listener on {addr}: {source}")]
    Http {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// Why a running CMX service stopped other than by its shutdown signal.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunError {
    /// The bus closed for good (its subscriptions ended), e.g. NATS gave up
    /// reconnecting after `max_reconnects`.
    #[error("the message bus closed")]
    BusClosed,
}

/// What a graceful shutdown did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct RunReport {
    /// CDTP requests in flight when the service stopped taking requests.
    pub pending_at_shutdown: usize,
    /// CDTP answers handled while draining.
    pub answered_during_drain: u64,
    /// CDTP requests still unanswered when the grace period ended (their devices
    /// got a 504).
    pub abandoned: usize,
}

/// Tells whether the bus is connected, for `/health` (e.g. `NatsBus::is_connected`).
pub type BusProbe = Arc<dyn Fn() -> bool + Send + Sync>;

const STARTING: u8 = 0;
const RUNNING: u8 = 1;
const DRAINING: u8 = 2;
const STOPPED: u8 = 3;

/// The service state `/health` reports.
pub(crate) struct Health {
    state: AtomicU8,
    probe: std::sync::RwLock<Option<BusProbe>>,
}

impl std::fmt::Debug for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Health")
            .field("state", &self.state_name())
            .finish_non_exhaustive()
    }
}

impl Health {
    fn new() -> Self {
        Health {
            state: AtomicU8::new(STARTING),
            probe: std::sync::RwLock::new(None),
        }
    }

    pub(crate) fn set_running(&self) {
        self.state.store(RUNNING, Ordering::Release);
    }

    pub(crate) fn set_draining(&self) {
        self.state.store(DRAINING, Ordering::Release);
    }

    pub(crate) fn set_stopped(&self) {
        self.state.store(STOPPED, Ordering::Release);
    }

    fn state_name(&self) -> &'static str {
        match self.state.load(Ordering::Acquire) {
            STARTING => "starting",
            RUNNING => "running",
            DRAINING => "draining",
            _ => "stopped",
        }
    }

    fn bus_up(&self) -> bool {
        self.probe
            .read()
            .ok()
            .and_then(|p| p.as_ref().map(|probe| probe()))
            .unwrap_or(true)
    }

    fn is_up(&self) -> bool {
        self.state.load(Ordering::Acquire) == RUNNING && self.bus_up()
    }
}

/// A cheap, cloneable view of a running service: its health and metrics.
#[derive(Clone, Debug)]
pub struct CmxStatus {
    health: Arc<Health>,
    metrics: kaa_service::Metrics,
}

impl CmxStatus {
    /// True while the engine loop runs and the bus (per the probe, if any) is up.
    pub fn is_up(&self) -> bool {
        self.health.is_up()
    }

    /// `starting`, `running`, `draining` or `stopped`.
    pub fn state(&self) -> &'static str {
        self.health.state_name()
    }

    /// The metrics in the Prometheus/OpenMetrics text format (what `/metrics` serves).
    pub fn metrics_text(&self) -> String {
        self.metrics.render()
    }

    /// The `/health` and `/metrics` router, to serve on a listener of one's own
    /// (e.g. an all-in-one binary mounting several services).
    pub fn router(&self) -> Router {
        let health = Arc::clone(&self.health);
        let metrics = self.metrics.clone();
        Router::new()
            .route(
                "/health",
                get(move || {
                    let health = Arc::clone(&health);
                    async move {
                        let body = |status: &str| {
                            axum::Json(serde_json::json!({
                                "status": status,
                                "engine": health.state_name(),
                                "bus": if health.bus_up() { "UP" } else { "DOWN" },
                            }))
                        };
                        if health.is_up() {
                            (StatusCode::OK, body("UP"))
                        } else {
                            (StatusCode::SERVICE_UNAVAILABLE, body("DOWN"))
                        }
                    }
                }),
            )
            .route(
                "/metrics",
                get(move || {
                    let text = metrics.render();
                    async move {
                        (
                            [(
                                header::CONTENT_TYPE,
                                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                            )],
                            text,
                        )
                            .into_response()
                    }
                }),
            )
    }
}

/// A bound CMX service: subscriptions in place, HTTP listener bound, engine ready.
/// [`CmxService::run`] serves.
pub struct CmxService {
    driver: Driver,
    inputs: Inputs,
    listener: Option<(tokio::net::TcpListener, SocketAddr)>,
    status: CmxStatus,
}

impl std::fmt::Debug for CmxService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CmxService")
            .field("engine", &self.driver.engine)
            .field("http", &self.listener.as_ref().map(|(_, a)| a))
            .finish_non_exhaustive()
    }
}

pub use kaa_service::now;

impl CmxService {
    /// Validates `config`, builds the engine, subscribes on `bus` and binds the HTTP
    /// listener (`cmx.http.listen`, if set).
    pub async fn bind(config: &CmxServiceConfig, bus: Arc<dyn Bus>) -> Result<Self, StartError> {
        config.validate()?;
        kaa_service::check_fits_bus(
            "cmx.limits.max-config-size",
            config.max_config_size(),
            kaa_service::CMP_WRAPPER_ROOM + kaa_service::BUS_ENVELOPE_ROOM,
            bus.max_payload(),
        )?;
        let engine = Cmx::new(config.engine_config())?;
        CmxService::bind_engine(engine, bus, config.http_listen(), config.shutdown_grace()).await
    }

    /// Like [`CmxService::bind`] with an engine built by the caller (any
    /// [`kaa_cmp::CmxConfig`]), an optional HTTP address and the shutdown grace.
    pub async fn bind_engine(
        engine: Cmx,
        bus: Arc<dyn Bus>,
        http_listen: Option<SocketAddr>,
        shutdown_grace: Duration,
    ) -> Result<Self, StartError> {
        let subs = engine.subscriptions().clone();
        let sub = |filter: &kaa_ism::subject::SubjectFilter, queue: Option<&str>| {
            let bus = Arc::clone(&bus);
            let filter = filter.as_str().to_owned();
            let queue = queue.map(str::to_owned);
            async move { bus.subscribe(&filter, queue.as_deref()).await }
        };
        let inputs = Inputs {
            client_data: sub(
                &subs.client_data.instance_wide,
                Some(&subs.client_data.queue_group),
            )
            .await?,
            client_data_replica: sub(&subs.client_data.replica, None).await?,
            responses: sub(&subs.cdtp_responses, None).await?,
            config_updated: sub(&subs.config_updated, None).await?,
            connectivity: sub(&subs.connectivity, None).await?,
            lifecycle: sub(&subs.lifecycle, None).await?,
            sessions: sub(&subs.sessions_responses, None).await?,
            provider_started: sub(&subs.provider_started, None).await?,
        };
        if !subscription_barrier(bus.as_ref(), BARRIER_TIMEOUT).await? {
            tracing::warn!(
                "the bus did not confirm the subscriptions within {BARRIER_TIMEOUT:?} \
                 (not connected yet?); they take effect when it does"
            );
        }
        let listener = match http_listen {
            None => None,
            Some(addr) => {
                let listener = tokio::net::TcpListener::bind(addr)
                    .await
                    .map_err(|source| StartError::Http { addr, source })?;
                let local = listener
                    .local_addr()
                    .map_err(|source| StartError::Http { addr, source })?;
                Some((listener, local))
            }
        };
        let metrics = CmxMetrics::new();
        let health = Arc::new(Health::new());
        let status = CmxStatus {
            health: Arc::clone(&health),
            metrics: metrics.registry().clone(),
        };
        Ok(CmxService {
            driver: Driver::new(engine, bus, metrics, health, shutdown_grace),
            inputs,
            listener,
            status,
        })
    }

    /// Shares the endpoints with the other replicas of this CMX instance
    /// (kaa-rs extension, see [`membership`]): the engine learns the live
    /// members before it starts and on every change, and on shutdown the
    /// replica leaves first (its key is deleted, so its endpoints move at
    /// once).
    pub fn with_membership(mut self, membership: Membership) -> Self {
        self.driver.membership = Some(membership);
        self
    }

    /// Makes `/health` report DOWN whenever `probe` returns false (e.g. NATS
    /// disconnected).
    pub fn with_bus_probe(self, probe: BusProbe) -> Self {
        if let Ok(mut p) = self.status.health.probe.write() {
            *p = Some(probe);
        }
        self
    }

    /// The bound HTTP address (`/health`, `/metrics`), if `cmx.http.listen` was set.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.as_ref().map(|(_, a)| *a)
    }

    /// A view of the service's health and metrics that outlives [`CmxService::run`].
    pub fn status(&self) -> CmxStatus {
        self.status.clone()
    }

    /// The engine, before it runs (e.g. to read its subscriptions).
    pub fn engine(&self) -> &Cmx {
        &self.driver.engine
    }

    /// Serves until `shutdown` resolves, then drains gracefully (see the module
    /// docs). Fails only when the bus closes for good.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<RunReport, RunError> {
        let CmxService {
            driver,
            inputs,
            listener,
            status,
        } = self;
        // Running before `/health` answers anyone: a caller that saw the start
        // banner must not find the engine still "starting" (the engine loop is
        // polled right after the HTTP task is spawned, but on a busy machine
        // the HTTP task may answer first).
        status.health.set_running();
        let (http_stop, http_stopped) = tokio::sync::oneshot::channel::<()>();
        let http = listener.map(|(listener, addr)| {
            let app = status.router();
            tokio::spawn(async move {
                let serve = axum::serve(listener, app).with_graceful_shutdown(async move {
                    let _ = http_stopped.await;
                });
                if let Err(e) = serve.await {
                    tracing::error!(%addr, error = %e, "HTTP server failed");
                }
            })
        });
        let result = driver.run(inputs, shutdown).await;
        let _ = http_stop.send(());
        if let Some(task) = http {
            // Health checks and scrapes finish quickly; do not hang on a stuck client.
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        }
        result
    }
}

/// How long [`CmxService::bind`] waits for the bus to confirm its subscriptions.
const BARRIER_TIMEOUT: Duration = Duration::from_secs(5);

pub use kaa_bus::subscription_barrier;

/// The bus the configuration names: NATS (`nats.urls`, credentials from the
/// environment, reconnecting forever) with a probe for `/health`, or a fresh
/// in-memory bus.
pub async fn connect_bus(
    config: &CmxServiceConfig,
) -> Result<(Arc<dyn Bus>, Option<BusProbe>), StartError> {
    match config.bus_kind() {
        BusKind::Nats => {
            let nats = kaa_bus::NatsBus::connect(&config.nats_config()).await?;
            let probe_bus = nats.clone();
            let probe: BusProbe = Arc::new(move || probe_bus.is_connected());
            Ok((Arc::new(nats), Some(probe)))
        }
        BusKind::Memory => Ok((Arc::new(kaa_bus::MemoryBus::new()), None)),
    }
}

/// Joins the replicas of this CMX instance when `cmx.replicas.enabled` is set
/// (kaa-rs extension, NATS bus only): a NATS connection of its own on a thread
/// of its own ([`Membership::join_on_own_thread`]: heartbeats queue neither
/// behind device traffic nor behind the driver's work), the bucket, this
/// replica's key. `None` when replicas are off. Give it to
/// [`CmxService::with_membership`].
pub async fn connect_membership(
    config: &CmxServiceConfig,
) -> Result<Option<Membership>, StartError> {
    let Some(members) = config.membership() else {
        return Ok(None);
    };
    let nats = config
        .nats_config()
        .with_connection_name(format!("{}-membership", config.replica_id()));
    let connect = move || async move {
        kaa_bus::NatsBus::connect(&nats)
            .await
            .map(|bus| bus.client().clone())
            .map_err(|e| e.to_string())
    };
    let membership =
        Membership::join_on_own_thread(connect, &config.replica_id(), &members).await?;
    Ok(Some(membership))
}
