//! The small toolkit the kaa-rs services (`kaa-cmx`, `kaa-ecr`, `kaa-epr`, `kaa-kpc`) and their
//! binaries share.
//!
//! - Configuration: [`load_yaml`] / [`parse_yaml`] read a YAML file into a typed serde
//!   struct and turn every problem into a [`ConfigError`] that names the file, the
//!   line and column, and what was expected; [`Secret`] names the environment
//!   variable a secret is read from (a secret written into a file is refused), and
//!   never prints it.
//! - Limits: [`DEFAULT_MAX_CONFIG_SIZE`], the one maximum configuration size of the
//!   stack, and [`check_fits_bus`], the start-up check that a service's size limit
//!   fits the bus's `max_payload` (the table of limits is in [`DEFAULT_MAX_CONFIG_SIZE`]'s docs).
//! - Logs: [`init_tracing`] installs a `tracing` subscriber filtered by `RUST_LOG`
//!   (or a default directive).
//! - Operations endpoints: [`Metrics`] (a Prometheus registry) and [`ops_router`]
//!   (`GET /health` and `GET /metrics` in the Prometheus/OpenMetrics text format), plus
//!   [`http_metrics`], a middleware that counts HTTP requests by method, route and
//!   status and times them.
//! - Shutdown: [`shutdown_signal`] resolves on SIGTERM or ctrl-c.
//! - Command line: [`ServiceArgs`], the one argument every service binary takes
//!   (`<config.yaml>` or `--config <config.yaml>`), parsed by clap.
//! - What every service's configuration shares: [`ServiceSection`] /
//!   [`InstanceSection`] (named by a [`ServiceKind`]), [`ReplicaSection`] and
//!   [`NatsSection`] (with [`NatsSection::nats_config`]), and the wall clock [`now`].
//! - Byte sizes in configuration files (`1048576`, `"512KiB"`, `"1MiB"`):
//!   [`parse_byte_size`], and [`de_byte_size`] / [`de_opt_byte_size`] for serde.
//!
//! - REST authentication: [`auth`] (bearer tokens with read or read-write access).
//! - Names: [`names`] (validated app version names and endpoint IDs).
//! - Endpoints from the register over the bus: [`endpoint_metadata`] (app versions
//!   and metadata, the requesting side of the register's metadata lookup).
//! - Embedded stores (feature `sqlite`): `sqlite`, the SQLite file ECR's and the
//!   register's stores share the plumbing of (replica lock, one writer connection, a
//!   pool of read-only readers).
//!
//! ```
//! use kaa_service::{Metrics, ops_router, parse_yaml};
//!
//! #[derive(Debug, serde::Deserialize)]
//! #[serde(rename_all = "kebab-case", deny_unknown_fields)]
//! struct Config {
//!     listen: std::net::SocketAddr,
//! }
//!
//! let config: Config = parse_yaml("listen: 127.0.0.1:0\n", "inline")?;
//! assert_eq!(config.listen.ip().to_string(), "127.0.0.1");
//!
//! let err = parse_yaml::<Config>("listen: nowhere\n", "inline").unwrap_err();
//! assert!(err.to_string().starts_with("inline: line 1"), "{err}");
//!
//! let metrics = Metrics::new("demo");
//! let router: axum::Router = ops_router(metrics); // serve next to your API
//! # let _ = router;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod auth;
pub mod endpoint_metadata;
pub mod names;
#[cfg(feature = "sqlite")]
pub mod sqlite;

use std::fmt;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use serde::Deserialize;
use serde::de::DeserializeOwned;

/// A configuration problem found at start-up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read configuration file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The YAML is malformed or does not fit the expected structure.
    #[error("{origin}: {message}")]
    Parse {
        /// The file (or other origin) of the text.
        origin: String,
        /// What is wrong and where (`line L column C: …`).
        message: String,
    },
    /// The values parse but make no sense together.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// Reads the YAML file at `path` into `T`.
pub fn load_yaml<T: DeserializeOwned>(path: impl AsRef<Path>) -> Result<T, ConfigError> {
    let path = path.as_ref();
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.display().to_string(),
        source,
    })?;
    parse_yaml(&text, &path.display().to_string())
}

/// Parses YAML `text` into `T`; `origin` (e.g. the file name) prefixes error messages.
///
/// An error names the origin, the line and column, the key path and what is wrong:
/// `cmx.yaml: line 12 column 22: cmx.limits.max-config-size: invalid size "lots" …`.
///
/// # Which YAML crate, and why
///
/// `serde_yaml` 0.9 is archived upstream (March 2024). The candidates compared on
/// crates.io, for what the services need (maintenance, soundness, a `Value` tree
/// for the flat-key expansion of `kaa_cmx::config::parse_kaa_yaml`, errors
/// with key path and position, MSRV 1.88):
///
/// | crate | maintenance | soundness | `Value` | errors | note |
/// |---|---|---|---|---|---|
/// | `serde_norway` 0.9.42 (chosen) | fork of serde_yaml 0.9 with its own libyaml fork (`unsafe-libyaml-norway`); releases through 0.9.42 (Dec 2024), packaged by Fedora | c2rust-translated libyaml (unsafe code, as in serde_yaml), no advisory | yes | key path, line, column | drop-in: same YAML 1.2 scalars, same messages; MIT OR Apache-2.0 |
/// | `serde_yaml_ng` 0.10 | fork of serde_yaml, commits in 2025 | built on `unsafe-libyaml`, archived and flagged unmaintained (RUSTSEC-2024-0449) | yes | key path, line, column | MIT only |
/// | `serde-saphyr` | pure Rust, very active | `forbid(unsafe_code)` | no (by design; `serde_json::Value` only) | line and column, but no key path (`invalid u64`) | 2.x needs Rust 1.89; YAML 1.1 booleans (`no` → false) into `bool` fields, type-driven scalars: accepted files would change meaning |
/// | `serde_yml` | deprecated shim to `noyalib` | RUSTSEC-2025-0068 (unsound, unmaintained) | — | — | excluded |
///
/// `serde_norway` keeps every sample configuration and every error message as it
/// was; `serde-saphyr` is the way to unsafe-free parsing once the project can take
/// Rust 1.89 and the behaviour changes above.
pub fn parse_yaml<T: DeserializeOwned>(text: &str, origin: &str) -> Result<T, ConfigError> {
    serde_norway::from_str(text).map_err(|e| {
        let message = match e.location() {
            Some(loc) => {
                let detail = e.to_string();
                // serde_norway appends " at line L column C"; keep the position in front.
                let detail = detail
                    .rsplit_once(" at line ")
                    .map_or(detail.as_str(), |(head, _)| head)
                    .to_owned();
                format!("line {} column {}: {detail}", loc.line(), loc.column())
            }
            None => e.to_string(),
        };
        ConfigError::Parse {
            origin: origin.to_owned(),
            message,
        }
    })
}

/// A secret named in a configuration file: the name of the environment variable
/// that holds it. Secrets themselves are never read from configuration files.
///
/// ```yaml
/// token: { env: ECR_TOKEN }   # read from $ECR_TOKEN at start-up
/// token: s3cr3t               # refused: "… secrets are not read from configuration files …"
/// ```
///
/// [`Secret::Value`] exists for code that builds a configuration itself (tests,
/// embedding); YAML cannot produce it. `Debug` and `Display` never show the value.
#[derive(Clone)]
pub enum Secret {
    /// The value itself (from code only, never from a file).
    Value(String),
    /// The name of the environment variable holding the value.
    Env {
        /// The variable name.
        env: String,
    },
}

/// The message of the error a secret written into a configuration file gets.
pub const INLINE_SECRET_REFUSED: &str = "secrets are not read from configuration files: write `{ env: VARIABLE }` and put the value in that environment variable";

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct SecretVisitor;
        impl<'de> serde::de::Visitor<'de> for SecretVisitor {
            type Value = Secret;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("`{ env: VARIABLE }`")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Secret, A::Error> {
                let mut env: Option<String> = None;
                while let Some(key) = map.next_key::<String>()? {
                    if key != "env" || env.is_some() {
                        return Err(serde::de::Error::custom(INLINE_SECRET_REFUSED));
                    }
                    env = Some(map.next_value()?);
                }
                match env {
                    Some(env) if !env.is_empty() => Ok(Secret::Env { env }),
                    Some(_) => Err(serde::de::Error::custom(
                        "the environment variable name of a secret is empty",
                    )),
                    None => Err(serde::de::Error::custom(INLINE_SECRET_REFUSED)),
                }
            }
            fn visit_str<E: serde::de::Error>(self, _: &str) -> Result<Secret, E> {
                Err(E::custom(INLINE_SECRET_REFUSED))
            }
            fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<Secret, E> {
                Err(E::custom(INLINE_SECRET_REFUSED))
            }
            fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<Secret, E> {
                Err(E::custom(INLINE_SECRET_REFUSED))
            }
            fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<Secret, E> {
                Err(E::custom(INLINE_SECRET_REFUSED))
            }
            fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<Secret, E> {
                Err(E::custom(INLINE_SECRET_REFUSED))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, _: A) -> Result<Secret, A::Error> {
                Err(serde::de::Error::custom(INLINE_SECRET_REFUSED))
            }
        }
        d.deserialize_any(SecretVisitor)
    }
}

impl Secret {
    /// The secret's value; an unset or empty environment variable is an error.
    pub fn resolve(&self) -> Result<String, ConfigError> {
        self.resolve_with(|name| std::env::var(name).ok())
    }

    /// [`Secret::resolve`] with a custom environment lookup (for tests).
    pub fn resolve_with(
        &self,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<String, ConfigError> {
        let value = match self {
            Secret::Value(v) => v.clone(),
            Secret::Env { env } => lookup(env).ok_or_else(|| {
                ConfigError::Invalid(format!("environment variable {env} is not set"))
            })?,
        };
        if value.is_empty() {
            return Err(ConfigError::Invalid(format!("{self} is empty")));
        }
        Ok(value)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Secret::Value(_) => f.write_str("secret (inline value, redacted)"),
            Secret::Env { env } => write!(f, "secret from ${env}"),
        }
    }
}

/// Room reserved, in every bus message that carries a configuration, for the Avro
/// fields around it (6/CDTP `ConfigResponse`, 4/ESP `ExtensionData`: IDs, names,
/// resource path, reason phrase): 8 KiB.
pub const BUS_ENVELOPE_ROOM: usize = 8 * 1024;

/// Room reserved, in a device payload that carries a configuration, for the 7/CMP
/// JSON around it (`{"configId": …, "config": …}`): 8 KiB.
pub const CMP_WRAPPER_ROOM: usize = 8 * 1024;

/// The default maximum configuration size, 1 MiB − 16 KiB = 1,032,192 bytes: the
/// largest configuration whose messages fit a NATS server's default `max_payload`
/// (1 MiB) with [`CMP_WRAPPER_ROOM`] and [`BUS_ENVELOPE_ROOM`].
///
/// # Limits
///
/// One maximum configuration size (the JSON bytes of one configuration) holds for
/// the whole stack; every service refuses to start when its own limit does not
/// fit what the bus carries ([`check_fits_bus`]), with a message naming both:
///
/// | service | key | default | start-up check |
/// | --- | --- | --- | --- |
/// | ECR | `ecr.http.body-limit` (a PUT body is the configuration) | this | limit + 16 KiB ≤ bus `max_payload` |
/// | CMX | `cmx.limits.max-config-size` | this | limit + 16 KiB ≤ bus `max_payload` |
/// | KPC | `kpc.mqtt.max-payload` (PUBLISH payloads, both directions) | this + 8 KiB | limit + 8 KiB ≤ bus `max_payload` |
///
/// At run time ECR answers a larger body with 413 `{"message"}` and stores
/// nothing, and KPC answers a delivery larger than `max-payload` (which the device
/// could not be expected to take) with a 1/KP 413 error on the response's `/error`
/// topic instead of the payload.
pub const DEFAULT_MAX_CONFIG_SIZE: usize = 1024 * 1024 - CMP_WRAPPER_ROOM - BUS_ENVELOPE_ROOM;

/// Checks at start-up that a size limit plus the `room` its messages add fits the
/// bus's `max_payload` (when the bus knows it); the error names the key, both
/// sizes and what to change.
///
/// ```
/// use kaa_service::{check_fits_bus, DEFAULT_MAX_CONFIG_SIZE};
/// assert!(check_fits_bus("ecr.http.body-limit", DEFAULT_MAX_CONFIG_SIZE, 16 * 1024, Some(1 << 20)).is_ok());
/// let err = check_fits_bus("ecr.http.body-limit", 1 << 20, 16 * 1024, Some(1 << 20)).unwrap_err();
/// assert!(err.to_string().contains("at most 1032192"), "{err}");
/// ```
pub fn check_fits_bus(
    key: &str,
    limit: usize,
    room: usize,
    bus_max_payload: Option<usize>,
) -> Result<(), ConfigError> {
    let Some(bus_max) = bus_max_payload else {
        return Ok(());
    };
    if limit.saturating_add(room) <= bus_max {
        return Ok(());
    }
    Err(ConfigError::Invalid(format!(
        "{key} is {limit} bytes, but its messages need {room} bytes more and the bus carries at \
         most {bus_max} bytes per message (NATS: the server's max_payload); set {key} to at most \
         {} or raise max_payload in the NATS server configuration",
        bus_max.saturating_sub(room)
    )))
}

/// Installs a `tracing` subscriber writing to stderr, filtered by `RUST_LOG` or else
/// by `default_directive` (e.g. `"info"`). Calling it twice is harmless.
pub fn init_tracing(default_directive: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_directive));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Labels of the HTTP request metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HttpLabels {
    method: String,
    route: String,
    status: u16,
}

/// A service's Prometheus registry (metric names are prefixed with the service name)
/// with the HTTP request metrics [`http_metrics`] records.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Mutex<Registry>>,
    http_requests: Family<HttpLabels, Counter>,
    http_duration: Family<HttpLabels, Histogram>,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

fn duration_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.000_1, 2.0, 16))
}

impl Metrics {
    /// A registry whose metric names start with `<prefix>_`.
    pub fn new(prefix: &str) -> Self {
        let mut registry = Registry::with_prefix(prefix);
        let http_requests = Family::<HttpLabels, Counter>::default();
        let http_duration =
            Family::<HttpLabels, Histogram>::new_with_constructor(duration_histogram as fn() -> _);
        registry.register(
            "http_requests",
            "HTTP requests by method, route and status",
            http_requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "HTTP request handling time",
            http_duration.clone(),
        );
        Self {
            registry: Arc::new(Mutex::new(registry)),
            http_requests,
            http_duration,
        }
    }

    /// Registers a metric (see `prometheus_client::registry::Registry::register`).
    pub fn register(
        &self,
        name: &str,
        help: &str,
        metric: impl prometheus_client::registry::Metric,
    ) {
        if let Ok(mut registry) = self.registry.lock() {
            registry.register(name, help, metric);
        }
    }

    /// The registry in the OpenMetrics text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if let Ok(registry) = self.registry.lock() {
            let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
        }
        out
    }
}

/// The operations router: `GET /health` (`{"status":"UP"}`) and `GET /metrics`.
pub fn ops_router<S: Clone + Send + Sync + 'static>(metrics: Metrics) -> Router<S> {
    Router::new()
        .route(
            "/health",
            get(|| async { Json(serde_json::json!({"status": "UP"})) }),
        )
        .route(
            "/metrics",
            get(|State(metrics): State<Metrics>| async move {
                (
                    [(
                        header::CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    metrics.render(),
                )
            }),
        )
        .with_state(metrics)
}

/// Middleware recording `<prefix>_http_requests_total` and
/// `<prefix>_http_request_duration_seconds` by method, matched route (the route
/// pattern, not the concrete path, so IDs do not explode the label set) and status.
/// Install it with `Router::route_layer(axum::middleware::from_fn_with_state(metrics,
/// http_metrics))`: the route pattern is only known to route layers.
pub async fn http_metrics(
    State(metrics): State<Metrics>,
    request: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let method = request.method().as_str().to_owned();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let response = next.run(request).await;
    let labels = HttpLabels {
        method,
        route,
        status: response.status().as_u16(),
    };
    metrics.http_requests.get_or_create(&labels).inc();
    metrics
        .http_duration
        .get_or_create(&labels)
        .observe(started.elapsed().as_secs_f64());
    response
}

/// Resolves when the process receives SIGTERM (Unix) or ctrl-c.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("ctrl-c received, shutting down"),
        () = term => tracing::info!("SIGTERM received, shutting down"),
    }
}

/// A `{"message": …}` JSON error response, the error shape of every example service.
pub fn json_error(status: StatusCode, message: impl Into<String>) -> Response {
    (
        status,
        Json(serde_json::json!({ "message": message.into() })),
    )
        .into_response()
}

// ------------------------------------------------------- shared config sections

/// What tells one service's `service` section from another's: the default instance
/// name. Each service crate has a kind (`kaa_cmx::config::CmxServiceKind`, …) and
/// names [`ServiceSection`] and [`InstanceSection`] of it.
pub trait ServiceKind {
    /// `service.instance.name` when the file gives none (`cmx`, `ecr`, `kpc`).
    const DEFAULT_INSTANCE_NAME: &'static str;
}

/// `service` of every service's configuration.
///
/// ```
/// use kaa_service::{ServiceKind, ServiceSection, parse_yaml};
///
/// struct Demo;
/// impl ServiceKind for Demo {
///     const DEFAULT_INSTANCE_NAME: &'static str = "demo";
/// }
///
/// #[derive(serde::Deserialize)]
/// struct Config {
///     #[serde(default)]
///     service: ServiceSection<Demo>,
/// }
///
/// let c: Config = parse_yaml("{}", "inline")?;
/// assert_eq!(c.service.instance.name, "demo");
/// assert_eq!(c.service.instance.replica_id(), "demo-1");
/// let c: Config = parse_yaml("service: { instance: { name: d2, replica: { id: d2-eu } } }", "inline")?;
/// assert_eq!(c.service.instance.replica_id(), "d2-eu");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, bound = "")]
#[non_exhaustive]
pub struct ServiceSection<K: ServiceKind> {
    /// `service.instance`.
    #[serde(default)]
    pub instance: InstanceSection<K>,
}

impl<K: ServiceKind> ServiceSection<K> {
    /// `service.instance: <instance>`.
    pub fn new(instance: InstanceSection<K>) -> Self {
        ServiceSection { instance }
    }
}

impl<K: ServiceKind> Default for ServiceSection<K> {
    fn default() -> Self {
        ServiceSection {
            instance: InstanceSection::default(),
        }
    }
}

impl<K: ServiceKind> Clone for ServiceSection<K> {
    fn clone(&self) -> Self {
        ServiceSection {
            instance: self.instance.clone(),
        }
    }
}

impl<K: ServiceKind> fmt::Debug for ServiceSection<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceSection")
            .field("instance", &self.instance)
            .finish()
    }
}

/// `service.instance` of every service's configuration: the extension instance name
/// (in device topics and subjects) and this process's replica.
#[derive(Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, bound = "")]
#[non_exhaustive]
pub struct InstanceSection<K: ServiceKind> {
    /// `service.instance.name`, default [`ServiceKind::DEFAULT_INSTANCE_NAME`].
    #[serde(default = "default_instance_name::<K>")]
    pub name: String,
    /// `service.instance.replica`; default ID `<name>-1`.
    #[serde(default)]
    pub replica: Option<ReplicaSection>,
    #[serde(skip)]
    kind: std::marker::PhantomData<fn() -> K>,
}

fn default_instance_name<K: ServiceKind>() -> String {
    K::DEFAULT_INSTANCE_NAME.to_owned()
}

impl<K: ServiceKind> InstanceSection<K> {
    /// `service.instance.name: <name>`, no replica section.
    pub fn new(name: impl Into<String>) -> Self {
        InstanceSection {
            name: name.into(),
            replica: None,
            kind: std::marker::PhantomData,
        }
    }

    /// The same with `service.instance.replica.id: <id>`.
    pub fn with_replica(mut self, id: impl Into<String>) -> Self {
        self.replica = Some(ReplicaSection::new(id));
        self
    }

    /// `service.instance.replica.id`, default `<name>-1`.
    pub fn replica_id(&self) -> String {
        self.replica
            .as_ref()
            .map_or_else(|| format!("{}-1", self.name), |r| r.id.clone())
    }
}

impl<K: ServiceKind> Default for InstanceSection<K> {
    fn default() -> Self {
        InstanceSection::new(K::DEFAULT_INSTANCE_NAME)
    }
}

impl<K: ServiceKind> Clone for InstanceSection<K> {
    fn clone(&self) -> Self {
        InstanceSection {
            name: self.name.clone(),
            replica: self.replica.clone(),
            kind: std::marker::PhantomData,
        }
    }
}

impl<K: ServiceKind> fmt::Debug for InstanceSection<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InstanceSection")
            .field("name", &self.name)
            .field("replica", &self.replica)
            .finish()
    }
}

/// `service.instance.replica` of every service's configuration.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
#[non_exhaustive]
pub struct ReplicaSection {
    /// `service.instance.replica.id`.
    pub id: String,
}

/// `nats` of every service's configuration.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
#[non_exhaustive]
pub struct NatsSection {
    /// `nats.urls`. Credentials come from the environment only (see `kaa_bus::nats`).
    pub urls: Vec<String>,
}

impl ReplicaSection {
    /// `service.instance.replica.id: <id>`.
    pub fn new(id: impl Into<String>) -> Self {
        ReplicaSection { id: id.into() }
    }
}

impl NatsSection {
    /// `nats.urls: [<urls>]`.
    pub fn new<I: IntoIterator<Item = S>, S: Into<String>>(urls: I) -> Self {
        NatsSection {
            urls: urls.into_iter().map(Into::into).collect(),
        }
    }

    /// The NATS client configuration for these URLs, with the service replica as
    /// the connection name (shown by the server's monitoring).
    pub fn nats_config(&self, replica_id: &str) -> kaa_bus::NatsConfig {
        kaa_bus::NatsConfig::new(self.urls.iter().cloned()).with_connection_name(replica_id)
    }
}

/// The command line of a service binary (`cmx`, `ecr`, `kpc`): the path of its YAML
/// configuration file, given as the one positional argument or as `--config`/`-c`.
///
/// A missing or doubled path is a usage error: clap prints the usage on stderr and
/// the process exits with status 2, as it does for an invalid configuration.
///
/// ```
/// use clap::Parser;
/// use kaa_service::ServiceArgs;
///
/// let args = ServiceArgs::try_parse_from(["cmx", "cmx.yaml"])?;
/// assert_eq!(args.config_path(), std::path::Path::new("cmx.yaml"));
/// let args = ServiceArgs::try_parse_from(["cmx", "--config", "other.yaml"])?;
/// assert_eq!(args.config_path(), std::path::Path::new("other.yaml"));
/// assert!(ServiceArgs::try_parse_from(["cmx"]).is_err());
/// assert!(ServiceArgs::try_parse_from(["cmx", "a.yaml", "--config", "b.yaml"]).is_err());
/// # Ok::<(), clap::Error>(())
/// ```
#[derive(Debug, Clone, clap::Parser)]
#[command(
    version,
    about = "A kaa-rs service: reads its YAML configuration and runs until SIGTERM or ctrl-c"
)]
#[group(id = "configuration", required = true, multiple = false, args = ["path", "config"])]
pub struct ServiceArgs {
    /// The YAML configuration file.
    #[arg(value_name = "CONFIG")]
    path: Option<std::path::PathBuf>,
    /// The YAML configuration file (the same as the positional argument).
    #[arg(short, long, value_name = "CONFIG")]
    config: Option<std::path::PathBuf>,
}

impl ServiceArgs {
    /// The configuration file named on the command line.
    pub fn config_path(&self) -> &Path {
        self.config
            .as_deref()
            .or(self.path.as_deref())
            .expect("clap requires one of the two arguments")
    }
}

/// The wall clock as [`UnixMillis`](kaa_ism::UnixMillis): services read the clock,
/// the protocol crates take the time as an argument.
pub fn now() -> kaa_ism::UnixMillis {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    kaa_ism::UnixMillis(ms)
}

// ------------------------------------------------------------------ byte sizes

/// Deserializes an optional byte size written as a number or as text
/// ([`parse_byte_size`]), e.g. with `#[serde(deserialize_with = …)]`; shared by the
/// ECR, CMX and KPC configurations.
pub fn de_opt_byte_size<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<usize>, D::Error> {
    Ok(Option::<ByteSize>::deserialize(d)?.map(|size| size.0))
}

/// Deserializes a required byte size written as a number or as text.
pub fn de_byte_size<'de, D: serde::Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    Ok(ByteSize::deserialize(d)?.0)
}

/// A byte size as written in YAML: `1048576` or `"1MiB"`.
///
/// Checked while the value is read, not after: an error then carries the key path
/// and the position of the value (`cmx.limits.max-config-size: invalid size "lots" …
/// at line 12 column 22`), which an error raised once the field is done would not.
struct ByteSize(usize);

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct SizeVisitor;
        impl serde::de::Visitor<'_> for SizeVisitor {
            type Value = ByteSize;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a byte size (e.g. 1048576, 512KiB, 1MiB)")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<ByteSize, E> {
                usize::try_from(v)
                    .map(ByteSize)
                    .map_err(|_| E::custom(format!("size {v} is too large")))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<ByteSize, E> {
                u64::try_from(v)
                    .map_err(|_| E::custom(format!("invalid size {v} (a size cannot be negative)")))
                    .and_then(|v| self.visit_u64(v))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<ByteSize, E> {
                parse_byte_size(v).map(ByteSize).map_err(E::custom)
            }
        }
        d.deserialize_any(SizeVisitor)
    }
}

/// Parses `1048576`, `512KiB`, `1MiB`, `2 MiB`.
pub fn parse_byte_size(text: &str) -> Result<usize, String> {
    let t = text.trim();
    let (digits, unit) = t.split_at(t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len()));
    let n: usize = digits
        .parse()
        .map_err(|_| format!("invalid size {text:?} (expected e.g. 1048576, 512KiB, 1MiB)"))?;
    let factor = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1024,
        "MiB" => 1024 * 1024,
        _ => {
            return Err(format!(
                "invalid size unit in {text:?} (expected B, KiB or MiB)"
            ));
        }
    };
    n.checked_mul(factor)
        .ok_or_else(|| format!("size {text:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(rename_all = "kebab-case", deny_unknown_fields)]
    struct Demo {
        body_limit: u64,
        token: Option<Secret>,
    }

    #[test]
    fn yaml_errors_name_origin_and_position() {
        let err = parse_yaml::<Demo>("body-limit: 1\nbogus: 2\n", "demo.yaml").unwrap_err();
        let text = err.to_string();
        assert!(text.starts_with("demo.yaml: line 2 column 1: "), "{text}");
        assert!(text.contains("bogus"), "{text}");
    }

    #[test]
    fn secrets_come_from_the_environment_and_never_print() {
        // A secret written into the file is refused, whatever its form.
        for inline in [
            "token: hunter2\n",
            "token: 12345\n",
            "token: [hunter2]\n",
            "token: { value: hunter2 }\n",
        ] {
            let err = parse_yaml::<Demo>(&format!("body-limit: 1\n{inline}"), "x.yaml")
                .unwrap_err()
                .to_string();
            assert!(err.contains(INLINE_SECRET_REFUSED), "{inline}: {err}");
            assert!(err.starts_with("x.yaml: line 2"), "{err}");
            assert!(!err.contains("hunter2"), "{err}");
        }
        let err = parse_yaml::<Demo>("body-limit: 1\ntoken: {env: ''}\n", "x")
            .unwrap_err()
            .to_string();
        assert!(err.contains("empty"), "{err}");
        let d: Demo = parse_yaml("body-limit: 1\ntoken: {env: SOME_VAR}\n", "x").unwrap();
        assert_eq!(d.body_limit, 1);
        let t = d.token.unwrap();
        let lookup = |n: &str| (n == "SOME_VAR").then(|| "v4lue".to_owned());
        assert_eq!(t.resolve_with(lookup).unwrap(), "v4lue");
        let unset = t.resolve_with(|_| None).unwrap_err().to_string();
        assert!(unset.contains("SOME_VAR is not set"), "{unset}");
        let empty = t.resolve_with(|_| Some(String::new())).unwrap_err();
        assert!(empty.to_string().contains("empty"), "{empty}");
        assert_eq!(t.to_string(), "secret from $SOME_VAR");
        assert_eq!(format!("{t:?}"), "secret from $SOME_VAR");
        // A value set from code resolves but never prints, in any format.
        let t = Secret::Value("hunter2".into());
        assert_eq!(t.resolve().unwrap(), "hunter2");
        for shown in [
            format!("{t}"),
            format!("{t:?}"),
            format!("{t:#?}"),
            format!("{:?}", Some(&t)),
        ] {
            assert!(!shown.contains("hunter2"), "{shown}");
        }
    }

    #[test]
    fn size_limits_are_checked_against_the_bus() {
        let room = CMP_WRAPPER_ROOM + BUS_ENVELOPE_ROOM;
        check_fits_bus("k", DEFAULT_MAX_CONFIG_SIZE, room, Some(1 << 20)).unwrap();
        check_fits_bus("k", usize::MAX, room, None).unwrap();
        let err = check_fits_bus(
            "ecr.http.body-limit",
            DEFAULT_MAX_CONFIG_SIZE + 1,
            room,
            Some(1 << 20),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("ecr.http.body-limit is 1032193 bytes"),
            "{err}"
        );
        assert!(err.contains("at most 1048576 bytes per message"), "{err}");
        assert!(
            err.contains("set ecr.http.body-limit to at most 1032192"),
            "{err}"
        );
    }

    #[test]
    fn metrics_render_registered_counters() {
        let m = Metrics::new("svc");
        let c = Counter::<u64>::default();
        m.register("things", "Things", c.clone());
        c.inc();
        let text = m.render();
        assert!(text.contains("svc_things_total 1"), "{text}");
    }
}
