//! The CMX service configuration (YAML).
//!
//! Kaa's keys where Kaa has them, plus the service's own under `cmx`:
//!
//! ```yaml
//! service:
//!   instance:
//!     name: cmx                   # the extension instance name devices use; queue group
//!     replica:
//!       id: cmx-1                 # CDTP responses come back on kaa.v1.replica.cmx-1.cdtp.response
//! nats:
//!   urls: [nats://127.0.0.1:4222] # credentials only from the environment (NATS_TOKEN, ...)
//! kaa:
//!   cmx:
//!     configuration-data-provider:
//!       service-instance:
//!         name: ecr
//!     communication-service:
//!       service-instance:
//!         name: kpc
//!     endpoint-state-persistence:
//!       ttl: 86400                # seconds a disconnected endpoint's state is kept
//!   applications:                 # known app versions; absent or empty: serve any
//!     smart-kettle:
//!       versions:
//!         smartKettleV1: {}
//! cmx:
//!   bus: nats                     # nats | memory (default: nats when `nats` is present)
//!   http:
//!     listen: 127.0.0.1:8081      # /health and /metrics; absent: no HTTP listener
//!   cdtp-timeout-ms: 5000
//!   message-timeout-ms: 0
//!   shutdown-grace-ms: 10000      # how long SIGTERM waits for CDTP answers in flight
//!   broadcast-implicit-applied: false
//!   push-retry:
//!     delay-ms: 1000
//!     attempts: 5
//!   limits:
//!     max-endpoints: 1000000
//!     max-pending-requests: 65536
//!     max-names-per-endpoint: 32
//!     max-waiters-per-request: 16
//!     max-config-id-len: 256
//!     max-endpoints-per-event: 10000  # 9/ELCE connected/disconnected events listing more are dropped
//!     max-config-size: 1032192    # the stack's maximum configuration size (1 MiB − 16 KiB)
//!     delta-cache-bytes: 16MiB    # configurations patches start from (kaa-rs deltas); 0: patches off
//!   replicas:                     # kaa-rs extension, NATS only: replicas share the endpoints
//!     enabled: false
//!     bucket: kaa_cmx_cmx         # JetStream key-value bucket (default kaa_cmx_<instance>)
//!     heartbeat-ms: 1000
//!     expiry-ms: 5000             # a crashed replica's endpoints move after at most this
//!     stream-replicas: 1
//! ```
//!
//! **Limits.** `cmx.limits.max-pending-requests` bounds the CDTP requests in
//! flight: a device request past it gets a 503 `ExtensionData` with a reason
//! and `cmx_backpressure_rejections_total` counts it; `cmx_pending_cdtp_requests` never exceeds the limit.
//! A 9/ELCE event listing more than `max-endpoints-per-event` endpoints is dropped
//! and counted in `cmx_malformed_messages_total{kind="elce_event"}`; keep it at least KPC's
//! `max-endpoints-per-session`. `max-config-size` is the stack's maximum
//! configuration size ([`kaa_service::DEFAULT_MAX_CONFIG_SIZE`]): at start-up,
//! it plus 16 KiB (7/CMP wrapper and 4/ESP envelope) must fit the bus's
//! `max_payload` (NATS: the server's), or CMX refuses to start and names the
//! largest value that fits. `delta-cache-bytes` (a byte size, default 16 MiB)
//! bounds the cache of configurations that configuration deltas start from
//! (kaa-rs extension, [`kaa_cmp::delta`]; `kaa_cmp::CmxConfig::delta_cache_bytes`): a
//! device on `/config/json-patch` whose base is not in it gets the whole
//! configuration; `0` turns patches off (every delta answer is whole), and is
//! the one limit that may be 0. CMX holds no secrets; NATS credentials come from the
//! environment only.
//!
//! Kaa (a Spring Boot application) also accepts its keys written flat, and so does
//! this service: `kaa.cmx.endpoint-state-persistence.ttl: 3600` at the top level is
//! the same as the nested form. Every key except the `cmx`, `service` and `kaa.cmx`
//! names has a default; unknown keys inside `service`, `nats`, `kaa.cmx` and `cmx`
//! are errors (a typo must not pass silently); other top-level sections are ignored,
//! so one file can configure several services. The value under an app version
//! (`{}` above) is not read by CMX (ECR keeps a JSON Schema there).

pub use kaa_service::{NatsSection, ReplicaSection};
use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use kaa_cmp::CmxConfig;
use serde::Deserialize;
use serde::de::IgnoredAny;

use kaa_service::ConfigError;

/// The default CDTP timeout: 5 s.
pub const DEFAULT_CDTP_TIMEOUT_MS: u64 = 5_000;
/// The default state TTL of a disconnected endpoint: 24 h.
pub const DEFAULT_ENDPOINT_TTL_SECS: u64 = 24 * 3600;

/// The whole CMX service configuration file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub struct CmxServiceConfig {
    /// `service.instance.{name, replica.id}`.
    #[serde(default)]
    pub service: ServiceSection,
    /// `nats.urls`.
    #[serde(default)]
    pub nats: Option<NatsSection>,
    /// `kaa.cmx.…` and `kaa.applications`.
    #[serde(default)]
    pub kaa: KaaSection,
    /// The service's own keys.
    #[serde(default)]
    pub cmx: CmxSection,
}

/// The CMX service's [`ServiceKind`](kaa_service::ServiceKind):
/// `service.instance.name` defaults to `cmx`.
#[derive(Debug, Clone, Copy)]
pub enum CmxServiceKind {}

impl kaa_service::ServiceKind for CmxServiceKind {
    const DEFAULT_INSTANCE_NAME: &'static str = "cmx";
}

/// `service`: [`kaa_service::ServiceSection`] with `service.instance.name`
/// defaulting to `cmx`.
pub type ServiceSection = kaa_service::ServiceSection<CmxServiceKind>;

/// `service.instance`: the extension instance name (default `cmx`: in device
/// topics, the `ClientData` subject and queue group, the originator of
/// `endpoint.config.applied`) and the replica (default ID `<name>-1`).
pub type InstanceSection = kaa_service::InstanceSection<CmxServiceKind>;

/// `kaa`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub struct KaaSection {
    /// `kaa.cmx`.
    #[serde(default)]
    pub cmx: KaaCmxSection,
    /// `kaa.applications.<app>`.
    #[serde(default)]
    pub applications: BTreeMap<String, ApplicationSection>,
}

/// `kaa.applications.<app>`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub struct ApplicationSection {
    /// `kaa.applications.<app>.versions.<version>`: the app version names (their
    /// values belong to other services).
    #[serde(default)]
    pub versions: BTreeMap<String, IgnoredAny>,
}

/// `kaa.cmx`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
#[non_exhaustive]
pub struct KaaCmxSection {
    /// `kaa.cmx.configuration-data-provider.service-instance.name`, default `ecr`.
    #[serde(default)]
    pub configuration_data_provider: Option<ServiceReference>,
    /// `kaa.cmx.communication-service.service-instance.name`, default `kpc`.
    #[serde(default)]
    pub communication_service: Option<ServiceReference>,
    /// `kaa.cmx.endpoint-state-persistence.ttl`.
    #[serde(default)]
    pub endpoint_state_persistence: Option<PersistenceSection>,
}

/// `…service-instance.name`: another service, by instance name.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
#[non_exhaustive]
pub struct ServiceReference {
    /// `service-instance`.
    pub service_instance: ServiceInstanceName,
}

/// `service-instance`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
#[non_exhaustive]
pub struct ServiceInstanceName {
    /// `service-instance.name`.
    pub name: String,
}

/// `kaa.cmx.endpoint-state-persistence`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
#[non_exhaustive]
pub struct PersistenceSection {
    /// `ttl`, seconds: how long a disconnected endpoint's state is kept after its
    /// last activity.
    pub ttl: u64,
}

/// Which message bus the service runs on (`cmx.bus`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum BusKind {
    /// NATS at `nats.urls`.
    Nats,
    /// An in-memory bus: only useful when the process hosts the other services too
    /// (the all-in-one binary passes its own bus instead).
    Memory,
}

/// `cmx`: the service's own keys.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
#[non_exhaustive]
pub struct CmxSection {
    /// `cmx.bus`; default: `nats` when the `nats` section is present, else `memory`.
    #[serde(default)]
    pub bus: Option<BusKind>,
    /// `cmx.http`: `/health` and `/metrics`.
    #[serde(default)]
    pub http: Option<HttpSection>,
    /// `cmx.cdtp-timeout-ms`: how long to wait for the provider (default 5000); a
    /// device still waiting then gets a 504.
    #[serde(default)]
    pub cdtp_timeout_ms: Option<u64>,
    /// `cmx.message-timeout-ms`: the `timeout` of published `ExtensionData` and
    /// `ConfigApplied` (default 0: none).
    #[serde(default)]
    pub message_timeout_ms: Option<u64>,
    /// `cmx.shutdown-grace-ms`: on SIGTERM, how long to wait for CDTP answers still
    /// in flight (default: the CDTP timeout plus one second). Devices still waiting
    /// after it get a 504.
    #[serde(default)]
    pub shutdown_grace_ms: Option<u64>,
    /// `cmx.broadcast-implicit-applied` (default false): broadcast
    /// `endpoint.config.applied` when a request names the current configuration.
    #[serde(default)]
    pub broadcast_implicit_applied: Option<bool>,
    /// `cmx.push-retry`.
    #[serde(default)]
    pub push_retry: Option<PushRetrySection>,
    /// `cmx.limits`.
    #[serde(default)]
    pub limits: Option<LimitsSection>,
    /// `cmx.replicas`: replicas of this instance sharing the endpoints (kaa-rs
    /// extension; NATS bus only). Off by default.
    #[serde(default)]
    pub replicas: Option<ReplicasSection>,
}

/// `cmx.replicas`: the membership of this instance's replicas in a NATS
/// JetStream key-value bucket (see [`crate::membership`]). With it, any number
/// of replicas of one instance behave as one CMX: each endpoint is served by
/// one live replica. Without it, run one replica per instance.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
#[non_exhaustive]
pub struct ReplicasSection {
    /// `enabled` (default false).
    #[serde(default)]
    pub enabled: Option<bool>,
    /// `bucket`: the key-value bucket (default `kaa_cmx_<instance>`).
    #[serde(default)]
    pub bucket: Option<String>,
    /// `heartbeat-ms`: how often a replica renews its key (default 1000).
    #[serde(default)]
    pub heartbeat_ms: Option<u64>,
    /// `expiry-ms`: how long a key lives without renewal (default 5000; at
    /// least twice the heartbeat): a crashed replica's endpoints move after
    /// at most this.
    #[serde(default)]
    pub expiry_ms: Option<u64>,
    /// `stream-replicas`: copies of the bucket's stream in a NATS cluster
    /// (default 1).
    #[serde(default)]
    pub stream_replicas: Option<usize>,
}

/// `cmx.http`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
#[non_exhaustive]
pub struct HttpSection {
    /// `cmx.http.listen`: address of `/health` and `/metrics` (port 0: any free port).
    pub listen: SocketAddr,
}

/// `cmx.push-retry`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
#[non_exhaustive]
pub struct PushRetrySection {
    /// `delay-ms`: the first delay before a failed push is retried (doubles per
    /// attempt). Default 1000.
    #[serde(default)]
    pub delay_ms: Option<u64>,
    /// `attempts`: retries before waiting for the next trigger. Default 5.
    #[serde(default)]
    pub attempts: Option<u8>,
}

/// `cmx.limits`: the engine limits that bound memory (see `kaa_cmp::CmxConfig`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
#[non_exhaustive]
pub struct LimitsSection {
    /// Endpoints tracked at once (default 1,000,000).
    #[serde(default)]
    pub max_endpoints: Option<usize>,
    /// CDTP requests in flight (default 65,536); past it devices get a 503.
    #[serde(default)]
    pub max_pending_requests: Option<usize>,
    /// Named configurations per endpoint (default 32).
    #[serde(default)]
    pub max_names_per_endpoint: Option<usize>,
    /// Device requests waiting on one CDTP request (default 16).
    #[serde(default)]
    pub max_waiters_per_request: Option<usize>,
    /// Endpoints one 9/ELCE connected/disconnected event may list (default 10,000).
    #[serde(default)]
    pub max_endpoints_per_event: Option<usize>,
    /// The largest configuration CMX carries, in bytes (default 1 MiB − 16 KiB):
    /// checked against the bus's `max_payload` at start-up.
    #[serde(default, deserialize_with = "kaa_service::de_opt_byte_size")]
    pub max_config_size: Option<usize>,
    /// The longest `configId` accepted from a device, bytes (default 256).
    #[serde(default)]
    pub max_config_id_len: Option<usize>,
    /// The bound, in bytes, of the cache of configurations that configuration
    /// deltas start from (kaa-rs extension; default 16 MiB, 0: patches off).
    #[serde(default, deserialize_with = "kaa_service::de_opt_byte_size")]
    pub delta_cache_bytes: Option<usize>,
}

impl CmxServiceConfig {
    /// A configuration with the given names and every default, as if read from a
    /// file with just those keys (no `nats` section: the in-memory bus).
    pub fn new(
        instance_name: &str,
        replica_id: &str,
        provider: &str,
        communication_service: &str,
    ) -> Self {
        let reference = |name: &str| {
            Some(ServiceReference {
                service_instance: ServiceInstanceName {
                    name: name.to_owned(),
                },
            })
        };
        CmxServiceConfig {
            service: ServiceSection::new(
                InstanceSection::new(instance_name).with_replica(replica_id),
            ),
            kaa: KaaSection {
                cmx: KaaCmxSection {
                    configuration_data_provider: reference(provider),
                    communication_service: reference(communication_service),
                    endpoint_state_persistence: None,
                },
                applications: BTreeMap::new(),
            },
            ..CmxServiceConfig::default()
        }
    }

    /// Reads and validates the YAML file at `path`.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, ConfigError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parses and validates YAML `text`; `origin` (e.g. the file name) prefixes
    /// error messages.
    pub fn parse(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let config: CmxServiceConfig = parse_kaa_yaml(text, origin)?;
        config.validate().map_err(|e| match e {
            ConfigError::Invalid(message) => ConfigError::Invalid(format!("{origin}: {message}")),
            other => other,
        })?;
        Ok(config)
    }

    /// `service.instance.name`.
    pub fn instance_name(&self) -> &str {
        &self.service.instance.name
    }

    /// `service.instance.replica.id`, default `<name>-1`.
    pub fn replica_id(&self) -> String {
        self.service.instance.replica_id()
    }

    /// `kaa.cmx.configuration-data-provider.service-instance.name`, default `ecr`.
    pub fn provider(&self) -> &str {
        self.kaa
            .cmx
            .configuration_data_provider
            .as_ref()
            .map_or("ecr", |r| &r.service_instance.name)
    }

    /// `kaa.cmx.communication-service.service-instance.name`, default `kpc`.
    pub fn communication_service(&self) -> &str {
        self.kaa
            .cmx
            .communication_service
            .as_ref()
            .map_or("kpc", |r| &r.service_instance.name)
    }

    /// `kaa.cmx.endpoint-state-persistence.ttl`, default 24 h.
    pub fn endpoint_ttl(&self) -> Duration {
        Duration::from_secs(
            self.kaa
                .cmx
                .endpoint_state_persistence
                .as_ref()
                .map_or(DEFAULT_ENDPOINT_TTL_SECS, |p| p.ttl),
        )
    }

    /// The known app versions from `kaa.applications`; `None` (serve any) when none
    /// are listed.
    pub fn app_versions(&self) -> Option<HashSet<String>> {
        let versions: HashSet<String> = self
            .kaa
            .applications
            .values()
            .flat_map(|app| app.versions.keys().cloned())
            .collect();
        (!versions.is_empty()).then_some(versions)
    }

    /// The bus to run on: `cmx.bus`, else NATS when `nats` is present, else memory.
    pub fn bus_kind(&self) -> BusKind {
        self.cmx.bus.unwrap_or(if self.nats.is_some() {
            BusKind::Nats
        } else {
            BusKind::Memory
        })
    }

    /// The CDTP timeout (`cmx.cdtp-timeout-ms`).
    pub fn cdtp_timeout(&self) -> Duration {
        Duration::from_millis(self.cmx.cdtp_timeout_ms.unwrap_or(DEFAULT_CDTP_TIMEOUT_MS))
    }

    /// How long a shutdown waits for CDTP answers in flight (`cmx.shutdown-grace-ms`,
    /// default the CDTP timeout plus one second).
    pub fn shutdown_grace(&self) -> Duration {
        self.cmx.shutdown_grace_ms.map_or_else(
            || self.cdtp_timeout() + Duration::from_secs(1),
            Duration::from_millis,
        )
    }

    /// The `cmx.http.listen` address, if any.
    pub fn http_listen(&self) -> Option<SocketAddr> {
        self.cmx.http.as_ref().map(|h| h.listen)
    }

    /// The NATS client configuration (`nats.urls`, connection name = replica ID).
    /// Credentials are not here: `kaa_bus::NatsBus::connect` reads the environment.
    pub fn nats_config(&self) -> kaa_bus::NatsConfig {
        self.nats
            .clone()
            .unwrap_or_else(|| NatsSection::new(Vec::<String>::new()))
            .nats_config(&self.replica_id())
    }

    /// `cmx.limits.max-config-size`, default
    /// [`kaa_service::DEFAULT_MAX_CONFIG_SIZE`].
    pub fn max_config_size(&self) -> usize {
        self.cmx
            .limits
            .as_ref()
            .and_then(|l| l.max_config_size)
            .unwrap_or(kaa_service::DEFAULT_MAX_CONFIG_SIZE)
    }

    /// The engine configuration. The correlation prefix is `<replica>-<8 hex>`,
    /// new for every call, so that late CDTP answers to a previous run of this
    /// replica match nothing.
    pub fn engine_config(&self) -> CmxConfig {
        let mut c = CmxConfig::new(
            self.instance_name(),
            self.replica_id(),
            self.provider(),
            self.communication_service(),
        );
        c.cdtp_timeout = self.cdtp_timeout();
        c.endpoint_ttl = self.endpoint_ttl();
        if let Some(ms) = self.cmx.message_timeout_ms {
            c.message_timeout = Duration::from_millis(ms);
        }
        if let Some(b) = self.cmx.broadcast_implicit_applied {
            c.broadcast_implicit_applied = b;
        }
        if let Some(r) = &self.cmx.push_retry {
            if let Some(ms) = r.delay_ms {
                c.push_retry_delay = Duration::from_millis(ms);
            }
            if let Some(n) = r.attempts {
                c.push_retry_attempts = n;
            }
        }
        if let Some(l) = &self.cmx.limits {
            let set = |field: &mut usize, value: Option<usize>| {
                if let Some(v) = value {
                    *field = v;
                }
            };
            set(&mut c.max_endpoints, l.max_endpoints);
            set(&mut c.max_pending_requests, l.max_pending_requests);
            set(&mut c.max_names_per_endpoint, l.max_names_per_endpoint);
            set(&mut c.max_waiters_per_request, l.max_waiters_per_request);
            set(&mut c.max_config_id_len, l.max_config_id_len);
            set(&mut c.max_endpoints_per_event, l.max_endpoints_per_event);
            set(&mut c.delta_cache_bytes, l.delta_cache_bytes);
        }
        c.app_versions = self.app_versions();
        let run = uuid::Uuid::new_v4().simple().to_string();
        c.correlation_prefix = Some(format!("{}-{}", self.replica_id(), &run[..8]));
        c
    }

    /// The replicas' membership settings when `cmx.replicas.enabled` is true.
    pub fn membership(&self) -> Option<crate::membership::MembershipConfig> {
        let r = self.cmx.replicas.as_ref()?;
        if r.enabled != Some(true) {
            return None;
        }
        let mut m = crate::membership::MembershipConfig::new(self.instance_name());
        if let Some(bucket) = &r.bucket {
            m.bucket = bucket.clone();
        }
        if let Some(ms) = r.heartbeat_ms {
            m.heartbeat = Duration::from_millis(ms);
        }
        if let Some(ms) = r.expiry_ms {
            m.expiry = Duration::from_millis(ms);
        }
        if let Some(n) = r.stream_replicas {
            m.stream_replicas = n;
        }
        Some(m)
    }

    /// Checks what serde cannot, naming the Kaa key of every problem: names that
    /// become NATS subject tokens, positive durations and limits, a bus that can be
    /// built.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |message: String| Err(ConfigError::Invalid(message));
        let token = |key: &str, value: &str| {
            kaa_ism::subject::validate_token(value, "name").map_err(|e| {
                ConfigError::Invalid(format!(
                    "{key}: {value:?} cannot be a NATS subject token ({e})"
                ))
            })
        };
        token("service.instance.name", self.instance_name())?;
        token("service.instance.replica.id", &self.replica_id())?;
        token(
            "kaa.cmx.configuration-data-provider.service-instance.name",
            self.provider(),
        )?;
        token(
            "kaa.cmx.communication-service.service-instance.name",
            self.communication_service(),
        )?;
        for (app, section) in &self.kaa.applications {
            for version in section.versions.keys() {
                token(&format!("kaa.applications.{app}.versions"), version)?;
            }
        }
        if self.endpoint_ttl().is_zero() {
            return invalid(
                "kaa.cmx.endpoint-state-persistence.ttl must be at least 1 (seconds)".into(),
            );
        }
        if self.cdtp_timeout().is_zero() {
            return invalid("cmx.cdtp-timeout-ms must be greater than 0".into());
        }
        if let Some(r) = &self.cmx.push_retry
            && r.delay_ms == Some(0)
        {
            return invalid("cmx.push-retry.delay-ms must be greater than 0".into());
        }
        if let Some(l) = &self.cmx.limits {
            for (key, value) in [
                ("max-endpoints", l.max_endpoints),
                ("max-pending-requests", l.max_pending_requests),
                ("max-names-per-endpoint", l.max_names_per_endpoint),
                ("max-waiters-per-request", l.max_waiters_per_request),
                ("max-config-id-len", l.max_config_id_len),
                ("max-endpoints-per-event", l.max_endpoints_per_event),
                ("max-config-size", l.max_config_size),
            ] {
                if value == Some(0) {
                    return invalid(format!("cmx.limits.{key} must be greater than 0"));
                }
            }
        }
        match (self.bus_kind(), &self.nats) {
            (BusKind::Nats, None) => {
                return invalid(
                    "cmx.bus is nats but there is no nats section (nats.urls: [nats://host:4222])"
                        .into(),
                );
            }
            (BusKind::Nats, Some(n)) if n.urls.is_empty() => {
                return invalid("nats.urls is empty".into());
            }
            (BusKind::Nats, Some(n)) => {
                for url in &n.urls {
                    if url.trim().is_empty() || url.contains(char::is_whitespace) {
                        return invalid(format!("nats.urls: {url:?} is not a server URL"));
                    }
                }
            }
            (BusKind::Memory, _) => {}
        }
        if let Some(m) = self.membership() {
            if self.bus_kind() != BusKind::Nats {
                return invalid(
                    "cmx.replicas needs the NATS bus (JetStream key-value); the in-memory bus runs one replica"
                        .into(),
                );
            }
            if !crate::membership::is_valid_bucket(&m.bucket) {
                return invalid(format!(
                    "cmx.replicas.bucket: {:?} is not a key-value bucket name ([A-Za-z0-9_-]+)",
                    m.bucket
                ));
            }
            if m.heartbeat.is_zero() {
                return invalid("cmx.replicas.heartbeat-ms must be greater than 0".into());
            }
            if m.expiry < m.heartbeat * 2 {
                return invalid(
                    "cmx.replicas.expiry-ms must be at least twice cmx.replicas.heartbeat-ms"
                        .into(),
                );
            }
            if m.stream_replicas == 0 {
                return invalid("cmx.replicas.stream-replicas must be greater than 0".into());
            }
        }
        // The engine's own checks, as a backstop.
        kaa_cmp::Cmx::new(self.engine_config())
            .map(drop)
            .map_err(|e| ConfigError::Invalid(format!("engine configuration: {e}")))
    }
}

/// Parses YAML into `T`, first expanding Spring-style flat keys
/// (`kaa.cmx.endpoint-state-persistence.ttl: 60`) into nested mappings.
///
/// Without flat keys the text is parsed directly, so errors carry the key path, the
/// line and the column. With them, the expanded tree has no positions: an error
/// names the key path and the line where that key is written (found in the text,
/// flat or nested under a flat prefix), without the column.
pub fn parse_kaa_yaml<T: serde::de::DeserializeOwned>(
    text: &str,
    origin: &str,
) -> Result<T, ConfigError> {
    let value: serde_norway::Value = kaa_service::parse_yaml(text, origin)?;
    if !has_dotted_keys(&value) {
        return kaa_service::parse_yaml(text, origin);
    }
    let expanded = expand_dotted_keys(value).map_err(|message| ConfigError::Parse {
        origin: origin.to_owned(),
        message,
    })?;
    serde_path_to_error::deserialize(expanded).map_err(|e| {
        let path = e.path().to_string();
        let message = match line_of_key(text, &path) {
            Some(line) => format!("line {line}: {path}: {}", e.inner()),
            None => format!("{path}: {}", e.inner()),
        };
        ConfigError::Parse {
            origin: origin.to_owned(),
            message,
        }
    })
}

/// The line (1-based) where the key `path` (`a.b.c`) is written in block-style
/// YAML `text`: as one flat key (`a.b.c:`), or nested under a flat or plain prefix
/// (`a.b:` then `c:` on a later, more indented line). `None` when it is not found
/// that way (e.g. flow style).
fn line_of_key(text: &str, path: &str) -> Option<usize> {
    let parts: Vec<&str> = path.split('.').collect();
    let lines: Vec<&str> = text.lines().collect();
    // (line index, indentation) of the key found so far, and how many parts it covers.
    let mut found: Option<(usize, usize)> = None;
    let mut covered = 0;
    while covered < parts.len() {
        let (start, min_indent) = match found {
            Some((at, indent)) => (at + 1, indent + 1),
            None => (0, 0),
        };
        // The longest run of the remaining parts written as one key.
        let next = (covered + 1..=parts.len()).rev().find_map(|end| {
            let key = parts[covered..end].join(".");
            lines
                .iter()
                .enumerate()
                .skip(start)
                .take_while(|(i, l)| {
                    // Stay inside the block of the key found so far.
                    *i == start || found.is_none() || l.trim().is_empty() || indent(l) >= min_indent
                })
                .find(|(_, l)| {
                    indent(l) >= min_indent
                        && l.trim_start()
                            .strip_prefix(key.as_str())
                            .is_some_and(|rest| rest.trim_start().starts_with(':'))
                })
                .map(|(i, l)| (end, i, indent(l)))
        });
        let (end, at, ind) = next?;
        found = Some((at, ind));
        covered = end;
    }
    found.map(|(at, _)| at + 1)
}

fn indent(line: &str) -> usize {
    line.len() - line.trim_start_matches(' ').len()
}

fn has_dotted_keys(value: &serde_norway::Value) -> bool {
    match value {
        serde_norway::Value::Mapping(m) => m
            .iter()
            .any(|(k, v)| k.as_str().is_some_and(|k| k.contains('.')) || has_dotted_keys(v)),
        _ => false,
    }
}

fn expand_dotted_keys(value: serde_norway::Value) -> Result<serde_norway::Value, String> {
    use serde_norway::{Mapping, Value};
    let Value::Mapping(map) = value else {
        return Ok(value);
    };
    let mut out = Mapping::new();
    for (key, v) in map {
        let v = expand_dotted_keys(v)?;
        let Some(text) = key.as_str().filter(|k| k.contains('.')) else {
            merge(&mut out, key, v)?;
            continue;
        };
        let parts: Vec<&str> = text.split('.').collect();
        if parts.iter().any(|p| p.is_empty()) {
            return Err(format!("key {text:?} has an empty part"));
        }
        let nested = parts.iter().skip(1).rev().fold(v, |inner, part| {
            let mut m = Mapping::new();
            m.insert(Value::String((*part).to_owned()), inner);
            Value::Mapping(m)
        });
        merge(&mut out, Value::String(parts[0].to_owned()), nested)?;
    }
    Ok(Value::Mapping(out))
}

fn merge(
    into: &mut serde_norway::Mapping,
    key: serde_norway::Value,
    value: serde_norway::Value,
) -> Result<(), String> {
    use serde_norway::Value;
    match (into.get_mut(&key), value) {
        (None, value) => {
            into.insert(key, value);
            Ok(())
        }
        (Some(Value::Mapping(existing)), Value::Mapping(more)) => {
            for (k, v) in more {
                merge(existing, k, v)?;
            }
            Ok(())
        }
        (Some(_), _) => Err(format!(
            "key {} is given twice",
            key.as_str().unwrap_or("(non-string key)")
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FULL: &str = include_str!("../../../examples/config/cmx.yaml");

    #[test]
    fn sample_file_parses_with_kaa_keys() {
        let c = CmxServiceConfig::parse(FULL, "cmx.yaml").unwrap();
        assert_eq!(c.instance_name(), "cmx");
        assert_eq!(c.replica_id(), "cmx-1");
        assert_eq!(c.provider(), "ecr");
        assert_eq!(c.communication_service(), "kpc");
        assert_eq!(c.endpoint_ttl(), Duration::from_secs(86_400));
        assert_eq!(c.bus_kind(), BusKind::Nats);
        let versions = c.app_versions().unwrap();
        assert!(versions.contains("smartKettleV1") && versions.contains("smartKettleV2"));
        let e = c.engine_config();
        assert_eq!(e.cdtp_timeout, Duration::from_secs(5));
        assert_eq!(e.app_versions, Some(versions));
        assert!(e.correlation_prefix.unwrap().starts_with("cmx-1-"));
        assert_eq!(e.delta_cache_bytes, 16 * 1024 * 1024);
    }

    /// `cmx.limits.delta-cache-bytes`: a byte size into
    /// `CmxConfig::delta_cache_bytes`, the engine's default when absent, 0
    /// accepted (patches off), and a value that is no size refused naming the key.
    #[test]
    fn delta_cache_bytes_is_a_byte_size() {
        let default = CmxConfig::new("cmx", "r", "ecr", "kpc").delta_cache_bytes;
        let c = CmxServiceConfig::parse("{}", "t").unwrap();
        assert_eq!(c.engine_config().delta_cache_bytes, default);
        for (value, bytes) in [("4MiB", 4 << 20), ("65536", 65_536), ("0", 0)] {
            let text = format!("cmx:\n  bus: memory\n  limits:\n    delta-cache-bytes: {value}\n");
            let c = CmxServiceConfig::parse(&text, "cmx.yaml").unwrap();
            c.validate().unwrap();
            assert_eq!(c.engine_config().delta_cache_bytes, bytes, "{value}");
        }
        let flat = "cmx.limits.delta-cache-bytes: 2KiB\n";
        let c = CmxServiceConfig::parse(flat, "cmx.yaml").unwrap();
        assert_eq!(c.engine_config().delta_cache_bytes, 2048);

        let text = "cmx:\n  limits:\n    delta-cache-bytes: plenty\n";
        let err = CmxServiceConfig::parse(text, "cmx.yaml")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(
                "cmx.yaml: line 3 column 24: cmx.limits.delta-cache-bytes: invalid size \"plenty\""
            ),
            "{err}"
        );
        let text = "cmx:\n  limits:\n    delta-cache-bytes: -1\n";
        let err = CmxServiceConfig::parse(text, "cmx.yaml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("cmx.limits.delta-cache-bytes: "), "{err}");
    }

    #[test]
    fn minimal_file_has_defaults() {
        let c = CmxServiceConfig::parse("{}", "t").unwrap();
        assert_eq!(
            (
                c.instance_name(),
                c.replica_id(),
                c.provider(),
                c.communication_service()
            ),
            ("cmx", "cmx-1".to_owned(), "ecr", "kpc")
        );
        assert_eq!(c.bus_kind(), BusKind::Memory);
        assert_eq!(c.app_versions(), None);
        assert_eq!(c.shutdown_grace(), Duration::from_secs(6));
        assert_eq!(c.http_listen(), None);
    }

    #[test]
    fn flat_spring_keys_are_the_nested_keys() {
        let text = "kaa.cmx.endpoint-state-persistence.ttl: 60\n\
                    kaa.cmx.configuration-data-provider.service-instance.name: ecr2\n\
                    kaa:\n  applications:\n    app:\n      versions:\n        v1: {}\n\
                    service.instance.name: cmx_ota\n\
                    cmx.limits.max-endpoints: 10\n";
        let c = CmxServiceConfig::parse(text, "t").unwrap();
        assert_eq!(c.endpoint_ttl(), Duration::from_secs(60));
        assert_eq!(c.provider(), "ecr2");
        assert_eq!(c.instance_name(), "cmx_ota");
        assert_eq!(c.replica_id(), "cmx_ota-1");
        assert_eq!(c.engine_config().max_endpoints, 10);
        assert!(c.app_versions().unwrap().contains("v1"));
        let twice = "service.instance.name: a\nservice:\n  instance:\n    name: b\n";
        let err = CmxServiceConfig::parse(twice, "t").unwrap_err().to_string();
        assert!(err.contains("given twice"), "{err}");
    }

    #[test]
    fn replicas_are_off_by_default_and_read_when_enabled() {
        let off = CmxServiceConfig::parse("nats:\n  urls: [nats://h:4222]\n", "f.yaml").unwrap();
        assert!(off.membership().is_none());
        let on = CmxServiceConfig::parse(
            "service:\n  instance:\n    name: cfg\nnats:\n  urls: [nats://h:4222]\ncmx:\n  replicas:\n    enabled: true\n    heartbeat-ms: 200\n    expiry-ms: 1000\n",
            "f.yaml",
        )
        .unwrap();
        let m = on.membership().unwrap();
        assert_eq!(m.bucket, "kaa_cmx_cfg");
        assert_eq!(m.heartbeat, Duration::from_millis(200));
        assert_eq!(m.expiry, Duration::from_secs(1));
        assert_eq!(m.stream_replicas, 1);
    }

    #[test]
    fn invalid_configs_name_the_key() {
        let cases = [
            (
                "service:\n  instance:\n    name: c.m.x\n",
                "service.instance.name",
            ),
            (
                "kaa:\n  cmx:\n    communication-service:\n      service-instance:\n        name: 'k pc'\n",
                "kaa.cmx.communication-service.service-instance.name",
            ),
            (
                "kaa:\n  cmx:\n    endpoint-state-persistence:\n      ttl: 0\n",
                "kaa.cmx.endpoint-state-persistence.ttl",
            ),
            (
                "kaa:\n  applications:\n    app:\n      versions:\n        'v>1': {}\n",
                "kaa.applications.app.versions",
            ),
            ("cmx:\n  cdtp-timeout-ms: 0\n", "cmx.cdtp-timeout-ms"),
            (
                "cmx:\n  limits:\n    max-endpoints: 0\n",
                "cmx.limits.max-endpoints",
            ),
            ("cmx:\n  bus: nats\n", "nats section"),
            ("nats:\n  urls: []\n", "nats.urls"),
            (
                "cmx:\n  replicas:\n    enabled: true\n",
                "cmx.replicas needs the NATS bus",
            ),
            (
                "nats:\n  urls: [nats://h:4222]\ncmx:\n  replicas:\n    enabled: true\n    bucket: a.b\n",
                "cmx.replicas.bucket",
            ),
            (
                "nats:\n  urls: [nats://h:4222]\ncmx:\n  replicas:\n    enabled: true\n    heartbeat-ms: 1000\n    expiry-ms: 1500\n",
                "cmx.replicas.expiry-ms",
            ),
        ];
        for (text, needle) in cases {
            let err = CmxServiceConfig::parse(text, "f.yaml")
                .unwrap_err()
                .to_string();
            assert!(err.contains(needle), "{text:?}: {err}");
            assert!(err.contains("f.yaml"), "{err}");
        }
        // serde errors carry the position.
        let err = CmxServiceConfig::parse("cmx:\n  cdtp-timeout: 5\n", "f.yaml")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("f.yaml: line 2"), "{err}");
        assert!(err.contains("cdtp-timeout"), "{err}");
        let err = CmxServiceConfig::parse("cmx:\n  bus: kafka\n", "f.yaml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("kafka"), "{err}");
        let err = CmxServiceConfig::parse(
            "kaa:\n  cmx:\n    endpoint-state-persistence:\n      ttl: -5\n",
            "f.yaml",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("line 4"), "{err}");
    }

    /// A mistyped or unknown value of a nested key: the error names the file, the
    /// line and column, the key path and what is wrong — nested or flat keys alike.
    #[test]
    fn nested_key_errors_name_the_key_path_and_the_line() {
        let text =
            "cmx:\n  bus: memory\n  limits:\n    max-endpoints: 10\n    max-config-size: lots\n";
        let err = CmxServiceConfig::parse(text, "cmx.yaml")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("cmx.yaml: line 5 column 22: cmx.limits.max-config-size: "),
            "{err}"
        );
        assert!(err.contains("\"lots\""), "{err}");

        let text = "cmx:\n  limits:\n    max-endpoints: many\n";
        let err = CmxServiceConfig::parse(text, "cmx.yaml")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("cmx.yaml: line 3 column 20: cmx.limits.max-endpoints: invalid type: string \"many\""),
            "{err}"
        );

        let text = "cmx:\n  limits:\n    max-endpointz: 10\n";
        let err = CmxServiceConfig::parse(text, "cmx.yaml")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("cmx.yaml: line 3 column 5: cmx.limits: unknown field `max-endpointz`"),
            "{err}"
        );

        // Spring-style flat keys: the same key path and line.
        let text = "kaa.cmx.endpoint-state-persistence.ttl: 60\ncmx.limits.max-endpoints: many\n";
        let err = CmxServiceConfig::parse(text, "cmx.yaml")
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "cmx.yaml: line 2: cmx.limits.max-endpoints: invalid type: string \"many\", expected usize"
        );
        let text = "kaa.cmx.endpoint-state-persistence.ttl: 60\ncmx.limits:\n  max-endpoints: 5\n  max-config-size: 1MiB\n  max-pending-requests: -3\n";
        let err = CmxServiceConfig::parse(text, "cmx.yaml")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(
                "cmx.yaml: line 5: cmx.limits.max-pending-requests: invalid value: integer `-3`"
            ),
            "{err}"
        );
        let text =
            "kaa.cmx.endpoint-state-persistence.ttl: 60\ncmx:\n  limits.max-config-size: lots\n";
        let err = CmxServiceConfig::parse(text, "cmx.yaml")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("cmx.yaml: line 3: cmx.limits.max-config-size: invalid size \"lots\""),
            "{err}"
        );
    }

    #[test]
    fn other_services_sections_are_ignored() {
        let text = "ecr:\n  http:\n    listen: 127.0.0.1:0\nauth:\n  enabled: false\n\
                    kaa:\n  ecr: {}\n  applications:\n    a:\n      versions:\n        v1:\n          schema: {type: object}\n";
        let c = CmxServiceConfig::parse(text, "t").unwrap();
        assert!(c.app_versions().unwrap().contains("v1"));
    }
}
