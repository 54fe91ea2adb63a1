//! The endpoint register (EPR): which endpoints exist, the app version each runs,
//! their metadata, and the endpoint tokens devices connect with. It provisions
//! endpoints over REST, answers 16/ECAP token validation for communication
//! services (KPC) and 16/ECAP token status transitions for any consumer, answers
//! other services' endpoint metadata lookups over the bus (a kaa-rs extension,
//! [`kaa_ecap::metadata`]), and announces changes with 9/ELCE lifecycle events
//! (`registered`, `unregistered`, `appversion-updated`) and 16/ECAP
//! `endpoint.token.revoked`.
//!
//! The pieces:
//!
//! - [`model`]: endpoints, tokens (256-bit random, stored as SHA-256, shown once),
//!   token statuses `active` / `suspended` / `revoked`.
//! - [`store`]: the [`store::EndpointStore`] trait, the embedded SQLite store (one
//!   writer connection, a pool of read-only readers) and a PostgreSQL store, chosen
//!   by URL.
//! - [`core`]: [`core::Epr`], the operations REST and the bus share, and the app
//!   version rule of token validation.
//! - [`api`]: the REST API under `/api/v1` with bearer-token auth, and its OpenAPI
//!   document ([`api::ApiDoc`], served at `/api/v1/openapi.json`).
//! - [`bus`]: the 16/ECAP provider (validation, status transitions), the endpoint
//!   metadata lookup (asked with
//!   [`kaa_service::endpoint_metadata::MetadataClient`]) and the event publisher.
//! - [`config`]: the YAML configuration; [`EprServer`] composes everything from it.
//!
//! ```
//! use kaa_epr::core::{Applications, Epr, Validation};
//! use kaa_epr::model::{AppVersionName, EndpointId, NewEndpoint, now};
//! use kaa_epr::store;
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(async {
//! let dir = tempfile::tempdir()?;
//! let store = store::open(&format!("sqlite://{}", dir.path().join("epr.db").display())).await?;
//! let epr = Epr::new(store, Applications::open(), None);
//!
//! let id = EndpointId::new("kettle-1")?;
//! let app = AppVersionName::new("smartKettleV1")?;
//! epr.register(NewEndpoint { endpoint_id: id.clone(), app_version: app, metadata: Default::default() }, false, now()).await?;
//! let (record, token) = epr.issue_token(&id, now()).await?;
//!
//! // The token is shown once; the register keeps its hash and answers 16/ECAP.
//! let valid = epr.validate("smartKettleV1", &token.token).await?;
//! assert_eq!(valid, Validation::Valid { token_id: record.token_id.clone(), endpoint_id: "kettle-1".into() });
//! assert_eq!(epr.validate("otherAppV1", &token.token).await?.status_code(), 403);
//! assert_eq!(epr.validate("smartKettleV1", "not-a-token").await?.status_code(), 404);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # })?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod api;
pub mod bus;
pub mod config;
pub mod core;
pub mod model;
pub mod store;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use kaa_bus::{Bus, BusError};

use self::core::Epr;
use config::EprConfig;
use kaa_service::{ConfigError, Metrics};

/// Why the register could not start or stopped with an error.
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

/// A bound, ready register: store open, 16/ECAP provider subscribed, HTTP bound.
pub struct EprServer {
    epr: Arc<Epr>,
    app: Router,
    listener: tokio::net::TcpListener,
    local_addr: SocketAddr,
    bus_tasks: bus::BusTasks,
}

impl std::fmt::Debug for EprServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EprServer")
            .field("local_addr", &self.local_addr)
            .finish_non_exhaustive()
    }
}

impl EprServer {
    /// Validates `config`, opens the store, starts the bus side on `bus` and binds
    /// the HTTP listener (`epr.http.listen`; port 0 picks a free port).
    pub async fn bind(config: &EprConfig, bus: Arc<dyn Bus>) -> Result<Self, StartError> {
        let auth = kaa_service::auth::Authenticator::from_config(&config.auth)?;
        Self::bind_with_auth(config, bus, auth).await
    }

    /// [`EprServer::bind`] with API tokens given directly instead of from `auth`
    /// (embedding, tests).
    pub async fn bind_with_auth(
        config: &EprConfig,
        bus: Arc<dyn Bus>,
        auth: kaa_service::auth::Authenticator,
    ) -> Result<Self, StartError> {
        config.validate()?;
        let store = store::open(&config.store_url()?).await?;
        let (events_tx, events_rx) = tokio::sync::mpsc::unbounded_channel();
        let epr = Arc::new(
            Epr::new(store, config.applications(), Some(events_tx))
                .with_max_batch(config.epr.limits.max_batch),
        );
        let metrics = Metrics::new("epr");
        let settings = bus::BusSettings {
            instance: config.service.instance.name.clone(),
            replica_id: config.replica_id(),
            metrics: metrics.clone(),
        };
        let bus_tasks = bus::start(Arc::clone(&epr), bus, settings, events_rx).await?;
        let app = api::app(Arc::clone(&epr), auth, config.body_limit(), metrics);
        let addr = config.epr.http.listen;
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| StartError::Http { addr, source })?;
        let local_addr = listener
            .local_addr()
            .map_err(|source| StartError::Http { addr, source })?;
        Ok(Self {
            epr,
            app,
            listener,
            local_addr,
            bus_tasks,
        })
    }

    /// The bound HTTP address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The register.
    pub fn epr(&self) -> &Arc<Epr> {
        &self.epr
    }

    /// Serves HTTP until `shutdown` resolves, then finishes in-flight requests and
    /// stops the bus side.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), StartError> {
        let addr = self.local_addr;
        let result = axum::serve(self.listener, self.app)
            .with_graceful_shutdown(shutdown)
            .await
            .map_err(|source| StartError::Http { addr, source });
        // Let the last events reach the bus before the publisher stops.
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        self.bus_tasks.shutdown();
        result
    }
}

/// The bus named by the configuration: NATS when `nats.urls` is set (credentials
/// from the environment, see `kaa_bus::nats`), else an in-memory bus.
pub async fn connect_bus(config: &EprConfig) -> Result<Arc<dyn Bus>, StartError> {
    match &config.nats {
        Some(nats) => {
            let nats_config = nats.nats_config(&config.replica_id());
            Ok(Arc::new(kaa_bus::NatsBus::connect(&nats_config).await?))
        }
        None => Ok(Arc::new(kaa_bus::MemoryBus::new())),
    }
}
