//! ECR, the Endpoint Configuration Repository: Kaa's REST API for endpoint and
//! default configurations, a durable store, the 6/CDTP provider and the
//! `endpoint.config.updated` events.
//!
//! The pieces, each usable on its own:
//!
//! - [`model`]: validated names (app version names, endpoint IDs, config names; the
//!   unnamed configuration is called `default`), content-derived config IDs
//!   (SHA-256 of canonical JSON, first 32 hex digits), stored records.
//! - [`store`]: the [`store::ConfigStore`] trait with an embedded SQLite store and a
//!   PostgreSQL store, chosen by URL.
//! - [`core`]: [`core::Ecr`], the operations REST and the bus share (app version and
//!   JSON Schema checks, effective-configuration changes).
//! - [`rollout`]: staged rollouts of a new default configuration gated on what
//!   devices report: the model, the cohorts (a stable hash, no table), the
//!   controller's pure decisions and state machine, and how ECR answers and announces
//!   while one is active (its module docs hold the behaviour); [`core::Ecr`] stores
//!   and drives them, [`core::run_rollout_controller`] is the loop [`EcrServer`] runs.
//! - [`layers`]: endpoint groups and layered configurations: the pure model (merge
//!   order, composition over the base, explain); [`core::Ecr`] stores them, predicts
//!   what a write changes (dry runs and announcements share it) and explains an
//!   endpoint's effective configuration. The effective configuration is the default
//!   (as a rollout serves it), then the layers reaching the endpoint by ascending
//!   priority (ties by layer name), then the endpoint's own configuration: a whole
//!   document replaces all of it, one stored as a merge patch is merged last.
//! - [`api`]: the axum REST API under `/api/v1`, its OpenAPI document, bearer tokens.
//! - [`bus`]: the 6/CDTP provider, event publisher and event listeners.
//! - [`ui`]: the rollout page at `/ui/` (plain HTML and JS over the REST API).
//! - [`config`]: the YAML configuration; [`EcrServer`] composes everything from it.
//!
//! ```
//! use std::sync::Arc;
//! use kaa_ecr::core::{AppVersions, Ecr};
//! use kaa_ecr::model::{AppVersionName, ConfigName, EndpointId, Scope, now};
//! use kaa_ecr::store::{self, Precondition};
//! use serde_json::json;
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(async {
//! let dir = tempfile::tempdir()?;
//! let store = store::open(&format!("sqlite://{}", dir.path().join("ecr.db").display())).await?;
//! let ecr = Ecr::new(store, AppVersions::open(), None);
//!
//! let app = AppVersionName::new("smartKettleV1")?;
//! let default = Scope::Default { app_version: app.clone() };
//! let name = ConfigName::default_name();
//! let stored = ecr.put(&default, &name, &json!({"sampling": 200}), &Precondition::None, now()).await?;
//! assert_eq!(stored.config.content, r#"{"sampling":200}"#);
//!
//! // An endpoint without its own configuration follows the default.
//! let endpoint = EndpointId::new("b197e391-1d13-403b-83f5-87bdd44888cf")?;
//! let (effective, _) = ecr.effective(&endpoint, &app, &name).await?.expect("the default");
//! assert_eq!(effective.config_id, stored.config.config_id);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # })?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod api;
pub mod bus;
pub mod config;
pub mod core;
pub mod layers;
pub mod model;
pub mod rollout;
pub mod store;
pub mod ui;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use kaa_bus::{Bus, BusError};

use self::core::Ecr;
use config::EcrConfig;
use kaa_service::{ConfigError, Metrics};

/// Why the ECR service could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The store could not be opened.
    #[error("store: {0}")]
    Store(#[from] store::StoreError),
    /// The bus failed.
    #[error("bus: {0}")]
    Bus(#[from] BusError),
    /// The HTTP listener failed.
    #[error("HTTP listener on {addr}: {source}")]
    Http {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// A bound, ready ECR service: store open, bus side running, HTTP listener bound.
pub struct EcrServer {
    ecr: Arc<Ecr>,
    app: Router,
    listener: tokio::net::TcpListener,
    local_addr: SocketAddr,
    bus_tasks: bus::BusTasks,
    controller: AbortOnDrop,
}

/// A task stopped when this is dropped (the rollout controller holds the engine,
/// and with it the store, which must close with the server).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl std::fmt::Debug for EcrServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EcrServer")
            .field("local_addr", &self.local_addr)
            .finish_non_exhaustive()
    }
}

impl EcrServer {
    /// Validates `config`, opens the store, starts the bus side on `bus` and binds the
    /// HTTP listener (`ecr.http.listen`; port 0 picks a free port).
    pub async fn bind(config: &EcrConfig, bus: Arc<dyn Bus>) -> Result<Self, StartError> {
        config.validate()?;
        let auth = api::Authenticator::from_config(&config.auth)?.with_realm("ecr");
        let apps = core::AppVersions::from_config(&config.kaa)?;
        kaa_service::check_fits_bus(
            "ecr.http.body-limit",
            config.body_limit(),
            config::CONFIG_MESSAGE_ROOM,
            bus.max_payload(),
        )?;
        let store = store::open(&config.store_url()?).await?;
        let (changes_tx, changes_rx) = tokio::sync::mpsc::unbounded_channel();
        // PostgreSQL: announcements go through the store's outbox (durable, ordered
        // across replicas; see `bus`), not the in-memory queue.
        let durable = store.enable_durable_announcements();
        let ecr = Arc::new(core::Ecr::new(
            store,
            apps,
            (!durable).then_some(changes_tx),
        ));
        let metrics = Metrics::new("ecr");
        metrics.register(
            "status_write_failures",
            "Status-history events lost because their batch could not be written",
            ecr.status_write_failures_metric(),
        );
        ecr.rollout_gauges().register(&metrics);
        let settings = bus::BusSettings {
            instance: config.service.instance.name.clone(),
            replica_id: config.replica_id(),
            cmx_instance: config.ecr.cmx.service_instance_name.clone(),
            elce_limits: config.elce_decode_limits(),
            metrics: metrics.clone(),
        };
        let bus_tasks = bus::start(Arc::clone(&ecr), bus, settings, changes_rx).await?;
        let app = api::app(Arc::clone(&ecr), auth, config.body_limit(), metrics);
        let addr = config.ecr.http.listen;
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| StartError::Http { addr, source })?;
        let local_addr = listener
            .local_addr()
            .map_err(|source| StartError::Http { addr, source })?;
        // Rollouts resume where the store has them (see `rollout`).
        let controller = AbortOnDrop(tokio::spawn(core::run_rollout_controller(
            Arc::clone(&ecr),
            rollout::CONTROLLER_TICK,
        )));
        Ok(Self {
            ecr,
            app,
            listener,
            local_addr,
            bus_tasks,
            controller,
        })
    }

    /// The bound HTTP address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The engine.
    pub fn ecr(&self) -> &Arc<Ecr> {
        &self.ecr
    }

    /// Serves HTTP until `shutdown` resolves, then finishes in-flight requests, stops
    /// the bus side and writes the queued status events.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), StartError> {
        let addr = self.local_addr;
        // Small request/response exchanges: no Nagle delay on accepted connections.
        let listener = axum::serve::ListenerExt::tap_io(self.listener, |tcp| {
            let _ = tcp.set_nodelay(true);
        });
        let result = axum::serve(listener, self.app)
            .with_graceful_shutdown(shutdown)
            .await
            .map_err(|source| StartError::Http { addr, source });
        drop(self.controller);
        self.bus_tasks.shutdown();
        // Status events still queued are written before the service stops.
        self.ecr.flush_statuses().await;
        result
    }
}

/// The bus named by the configuration: NATS when `nats.urls` is set (credentials from
/// the environment, see `kaa_bus::nats`), else an in-memory bus.
pub async fn connect_bus(config: &EcrConfig) -> Result<Arc<dyn Bus>, StartError> {
    match &config.nats {
        Some(nats) => {
            let nats_config = nats.nats_config(&config.replica_id());
            Ok(Arc::new(kaa_bus::NatsBus::connect(&nats_config).await?))
        }
        None => Ok(Arc::new(kaa_bus::MemoryBus::new())),
    }
}
