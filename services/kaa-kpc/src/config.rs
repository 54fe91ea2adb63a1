//! The KPC service configuration (YAML).
//!
//! Kaa's keys where they exist (`service.instance.…`, `nats.urls`), plus KPC's own
//! under `kpc`. Unknown keys inside `kpc` are errors (a typo must not silently
//! turn authentication off); other top-level sections are ignored, so one file
//! can configure several services.
//!
//! ```yaml
//! service:
//!   instance:
//!     name: kpc                   # NATS service instance name: ExtensionData subject, queue group, ELCE originator
//!     replica:
//!       id: kpc-1                 # replica subject (replyTo of ClientData), originatorReplicaId
//! nats:
//!   urls: [nats://127.0.0.1:4222] # absent: the in-memory bus
//! kpc:
//!   mqtt:
//!     listen: 0.0.0.0:1883
//!     auth:                       # absent: anonymous clients are accepted
//!       enabled: true
//!       users:
//!         - username: devices
//!           password: { env: KPC_MQTT_PASSWORD }
//!     max-connections: 10000      # established sessions; the next CONNECT gets CONNACK 0x03 (server unavailable)
//!     max-handshakes: 1000        # connections that have not completed CONNECT + auth (default 1000, at most max-connections)
//!     max-handshakes-per-address: 256  # of those, per source address (IPv6: per /64)
//!     max-inflight: 64            # per session: requests waiting for an extension, QoS 1 deliveries waiting for PUBACK
//!     max-endpoints-per-session: 1000  # endpoint tokens one session (a gateway) may use
//!     max-payload: 1016KiB        # PUBLISH payloads both ways (default 1 MiB − 8 KiB): see Limits below
//!     connect-timeout: 5s         # from TCP accept to CONNECT (the handshake deadline)
//!     request-timeout: 60s        # ClientData timeout; how long a request waits for its answer
//!     write-timeout: 10s          # a client that does not read for this long is disconnected
//!     park-idle-sessions: true    # idle sessions wait on shared reactors (less memory)
//!   http:
//!     listen: 127.0.0.1:8081      # /health and /metrics; absent: not served
//!   extension-instances: [cmx, cmx_ota]  # absent or empty: any valid name
//!   endpoint-tokens:
//!     JTjdbENzHh: 7ad263ec-3347-4c7d-af89-50c67061367a          # token: endpoint ID
//!     kettle-42:                                               # or with the app version it is valid for
//!       endpoint-id: 2f1c5a70-9b7e-4c4e-8c1a-0d4f3c1f0e42
//!       app-version: smart-kettle-v3
//!   accept-any-token: false       # true: an unknown token is its own endpoint ID (development, load tests; with token-validation: unknown to the provider)
//!   token-validation:             # tokens not in endpoint-tokens: ask a 16/ECAP provider (an endpoint register)
//!     provider: epr               # its service instance name
//!     timeout: 5s                 # no answer: 503 to the device
//!     app-names: {}               # app version -> 16/ECAP appName (default: the app version name)
//!     cache: { max-entries: 100000, ttl: 5m }  # valid answers; a revocation event drops them at once
//! ```
//!
//! # Limits
//!
//! - `max-payload` bounds PUBLISH payloads in both directions. A device's larger
//!   request gets a 1/KP 413 error (or the connection closes when the packet is
//!   larger than `max-payload` + 65,539 bytes). A larger ExtensionData payload
//!   (a configuration too big for the session) is not sent: the device gets a 413
//!   `{"statusCode", "reasonPhrase"}` on the response's `/error` topic instead, and
//!   `kpc_extension_data_total{outcome="too_large"}` counts it. The default,
//!   1 MiB − 8 KiB, carries the stack's maximum configuration size
//!   ([`kaa_service::DEFAULT_MAX_CONFIG_SIZE`]) with its 7/CMP wrapper; at
//!   start-up `max-payload` + 8 KiB (the 4/ESP envelope of the forwarded
//!   ClientData) must fit the bus's `max_payload` (NATS: the server's), or KPC
//!   refuses to start and names the largest value that fits.
//! - `max-connections` bounds **established** sessions: those that sent CONNECT
//!   and passed authentication. While it is reached, a new connection is read up
//!   to its CONNECT (within `connect-timeout`) and answered with CONNACK 0x03,
//!   server unavailable, then closed, as MQTT 3.1.1 (3.2.2.3) prescribes; at most
//!   64 such refusals run at once, beyond that connections are closed at once. A
//!   CONNECT that completes when the last permit was just taken also gets 0x03.
//!   All are counted in `kpc_connections_rejected_total`.
//! - **Handshakes** (accepted connections that have not completed CONNECT and
//!   authentication) have their own budget, so sockets that never speak cannot
//!   use up `max-connections` and lock devices out:
//!   - `max-handshakes` (default 1,000, or `max-connections` when lower; at most
//!     `max-connections`): when that many are running, the oldest handshake of
//!     the source address holding the most is closed to make room for the new
//!     connection (`kpc_handshakes_dropped_total{reason="evicted"}`); refusing
//!     instead would let sockets from a few dozen addresses lock everyone out
//!     again;
//!   - `max-handshakes-per-address` (default 256, or `max-handshakes` when lower):
//!     a connection from an address (an IPv6 /64) that has that many running is
//!     reset at once, nothing read (`reason="address_limit"`);
//!   - `connect-timeout` (default 5 s) is the handshake deadline: no complete
//!     CONNECT by then, the connection is closed (`reason="timeout"`).
//!
//!   KPC needs up to `max-connections` + `max-handshakes` + 64 sockets. At start
//!   it raises the process's soft open-file limit (`RLIMIT_NOFILE`) to that plus
//!   room for its own files, within the hard limit, and warns when the hard
//!   limit is lower. Out of file descriptors anyway (`EMFILE`), it evicts a
//!   handshake as above and pauses accepting (5 ms, doubling to 500 ms while it
//!   lasts) instead of spinning; the listener stays up.
//! - `max-inflight`: per session, a request beyond it gets a 1/KP 429 error; a
//!   QoS 1 delivery beyond it is dropped (counted as
//!   `kpc_extension_data_total{outcome="inflight_full"}`) until PUBACKs arrive.
//!
//! # Secrets
//!
//! MQTT passwords are `{ env: VAR }` only: a password written into the file is a
//! start-up error (see [`kaa_service::Secret`]). NATS credentials come from the
//! environment (`NATS_TOKEN`, `NATS_USER`/`NATS_PASSWORD`, `NATS_CREDS_FILE`).
//!
//! Durations are a number of seconds or a number with `ms`, `s`, `m` or `h`; sizes a
//! number of bytes or a number with `KiB` or `MiB`.

pub use kaa_service::{NatsSection, ReplicaSection};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;

use kaa_service::{ConfigError, Secret};

/// Default `kpc.mqtt.max-connections`.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
/// Default `kpc.mqtt.max-inflight`.
pub const DEFAULT_MAX_INFLIGHT: usize = 64;
/// Default `kpc.mqtt.max-endpoints-per-session`.
pub const DEFAULT_MAX_ENDPOINTS_PER_SESSION: usize = 1_000;
/// Default `kpc.mqtt.max-payload`: 1 MiB − 8 KiB, the stack's maximum configuration
/// size ([`kaa_service::DEFAULT_MAX_CONFIG_SIZE`]) plus its 7/CMP wrapper
/// ([`kaa_service::CMP_WRAPPER_ROOM`]).
pub const DEFAULT_MAX_PAYLOAD: usize =
    kaa_service::DEFAULT_MAX_CONFIG_SIZE + kaa_service::CMP_WRAPPER_ROOM;
/// Default `kpc.mqtt.max-handshakes` (or `max-connections` when that is lower).
pub const DEFAULT_MAX_HANDSHAKES: usize = 1_000;
/// Default `kpc.mqtt.max-handshakes-per-address` (or `max-handshakes` when that
/// is lower).
pub const DEFAULT_MAX_HANDSHAKES_PER_ADDRESS: usize = 256;
/// Default `kpc.mqtt.connect-timeout`.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Default `kpc.mqtt.request-timeout`.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Default `kpc.mqtt.write-timeout`.
pub const DEFAULT_WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// The longest timeout the configuration accepts.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

/// The whole KPC configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct KpcConfig {
    /// `service.instance.{name, replica.id}`.
    #[serde(default)]
    pub service: ServiceSection,
    /// `nats.urls`; absent: the in-memory bus.
    #[serde(default)]
    pub nats: Option<NatsSection>,
    /// KPC's own keys.
    pub kpc: KpcSection,
}

/// The KPC service's [`ServiceKind`](kaa_service::ServiceKind):
/// `service.instance.name` defaults to `kpc`.
#[derive(Debug, Clone, Copy)]
pub enum KpcServiceKind {}

impl kaa_service::ServiceKind for KpcServiceKind {
    const DEFAULT_INSTANCE_NAME: &'static str = "kpc";
}

/// `service`: [`kaa_service::ServiceSection`] with `service.instance.name`
/// defaulting to `kpc`.
pub type ServiceSection = kaa_service::ServiceSection<KpcServiceKind>;

/// `service.instance`: the extension instance name (default `kpc`) and the
/// replica (default ID `<name>-1`).
pub type InstanceSection = kaa_service::InstanceSection<KpcServiceKind>;

/// `kpc`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct KpcSection {
    /// `kpc.mqtt`: the MQTT listener.
    pub mqtt: MqttSection,
    /// `kpc.http`: `/health` and `/metrics`; absent: not served.
    #[serde(default)]
    pub http: Option<HttpSection>,
    /// `kpc.extension-instances`: the extension instance names devices may address;
    /// empty: any name that is a valid subject token.
    #[serde(default)]
    pub extension_instances: Vec<String>,
    /// `kpc.endpoint-tokens`: endpoint token → endpoint ID (and optionally the app
    /// version the token is valid for).
    #[serde(default)]
    pub endpoint_tokens: BTreeMap<String, TokenEntry>,
    /// `kpc.accept-any-token`: an unknown token resolves to an endpoint ID equal to
    /// the token. For development and load tests only. With
    /// `kpc.token-validation`, "unknown" means unknown to the provider (404):
    /// tokens it revoked or refuses stay refused (see
    /// [`crate::resolver`], *Development mode with a register*).
    #[serde(default)]
    pub accept_any_token: bool,
    /// `kpc.token-validation`: validate tokens that are not in
    /// `kpc.endpoint-tokens` with a 16/ECAP provider (an endpoint register);
    /// absent: the table only.
    #[serde(default)]
    pub token_validation: Option<TokenValidationSection>,
}

/// `kpc.token-validation`: the 16/ECAP provider that validates endpoint tokens
/// (see [`crate::resolver::EcapResolver`]).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct TokenValidationSection {
    /// `provider`: the provider's service instance name (e.g. `epr`).
    pub provider: String,
    /// `timeout`: how long a validation request waits (default 5 s); no answer
    /// is 503 for the device, which retries.
    #[serde(
        default = "default_validation_timeout",
        deserialize_with = "de_duration"
    )]
    pub timeout: Duration,
    /// `app-names`: app version name → application name sent as 16/ECAP
    /// `appName`; an app version not listed is sent as it is.
    #[serde(default)]
    pub app_names: BTreeMap<String, String>,
    /// `cache`: answers kept in memory.
    #[serde(default)]
    pub cache: ValidationCacheSection,
}

/// `kpc.token-validation.cache`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct ValidationCacheSection {
    /// `max-entries`: the most valid tokens remembered (default 100,000; 0: no
    /// cache). When full, the oldest answer goes.
    #[serde(default = "default_cache_entries")]
    pub max_entries: usize,
    /// `ttl`: how long a valid answer is reused (default 5 min). A revocation
    /// event drops it at once, whatever the TTL.
    #[serde(default = "default_cache_ttl", deserialize_with = "de_duration")]
    pub ttl: Duration,
}

impl Default for ValidationCacheSection {
    fn default() -> Self {
        Self {
            max_entries: default_cache_entries(),
            ttl: default_cache_ttl(),
        }
    }
}

fn default_validation_timeout() -> Duration {
    Duration::from_secs(5)
}

fn default_cache_entries() -> usize {
    100_000
}

fn default_cache_ttl() -> Duration {
    Duration::from_secs(300)
}

/// `kpc.mqtt`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct MqttSection {
    /// `kpc.mqtt.listen`: the MQTT address (port 0 picks a free port).
    pub listen: SocketAddr,
    /// `kpc.mqtt.auth`; absent: anonymous clients are accepted.
    #[serde(default)]
    pub auth: Option<MqttAuthSection>,
    /// `kpc.mqtt.max-connections`: established sessions (CONNECT accepted).
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// `kpc.mqtt.max-handshakes`: connections that have not completed CONNECT and
    /// authentication; absent: [`DEFAULT_MAX_HANDSHAKES`] or `max-connections`
    /// when lower ([`MqttSection::max_handshakes`]).
    #[serde(default)]
    pub max_handshakes: Option<usize>,
    /// `kpc.mqtt.max-handshakes-per-address`: of those, from one source address
    /// (IPv6: one /64); absent: [`DEFAULT_MAX_HANDSHAKES_PER_ADDRESS`] or
    /// `max-handshakes` when lower ([`MqttSection::max_handshakes_per_address`]).
    #[serde(default)]
    pub max_handshakes_per_address: Option<usize>,
    /// `kpc.mqtt.max-inflight`: per session, the most requests waiting for an
    /// extension's answer and the most QoS 1 deliveries waiting for PUBACK.
    #[serde(default = "default_max_inflight")]
    pub max_inflight: usize,
    /// `kpc.mqtt.max-endpoints-per-session`: the most endpoint tokens one session
    /// (e.g. a gateway) may use.
    #[serde(default = "default_max_endpoints_per_session")]
    pub max_endpoints_per_session: usize,
    /// `kpc.mqtt.max-payload`: the largest PUBLISH payload, in bytes, in both
    /// directions (see the module docs, *Limits*).
    #[serde(
        default = "default_max_payload",
        deserialize_with = "kaa_service::de_byte_size"
    )]
    pub max_payload: usize,
    /// `kpc.mqtt.connect-timeout`: from TCP accept to a complete CONNECT (the
    /// handshake deadline).
    #[serde(default = "default_connect_timeout", deserialize_with = "de_duration")]
    pub connect_timeout: Duration,
    /// `kpc.mqtt.request-timeout`: the 4/ESP `ClientData.timeout`, and how long
    /// the session remembers a request waiting for its answer.
    #[serde(default = "default_request_timeout", deserialize_with = "de_duration")]
    pub request_timeout: Duration,
    /// `kpc.mqtt.write-timeout`: a client that does not take what KPC writes for
    /// this long is disconnected.
    #[serde(default = "default_write_timeout", deserialize_with = "de_duration")]
    pub write_timeout: Duration,
    /// `kpc.mqtt.park-idle-sessions` (default `true`): an idle session gives
    /// up its task and waits on a shared idle reactor (about 1.3 KB per idle
    /// session instead of 2.8 KB; see the crate docs, *Idle sessions*). Each
    /// wake-up then spawns the session's task again, which costs a fan-out to a
    /// fleet of idle devices about a fifth more time (BENCHMARKS.md); `false`
    /// keeps every session on a task of its own.
    #[serde(default = "default_park_idle_sessions")]
    pub park_idle_sessions: bool,
}

impl MqttSection {
    /// The effective `max-handshakes`.
    pub fn max_handshakes(&self) -> usize {
        self.max_handshakes
            .unwrap_or_else(|| DEFAULT_MAX_HANDSHAKES.min(self.max_connections))
    }

    /// The effective `max-handshakes-per-address`.
    pub fn max_handshakes_per_address(&self) -> usize {
        self.max_handshakes_per_address
            .unwrap_or_else(|| DEFAULT_MAX_HANDSHAKES_PER_ADDRESS.min(self.max_handshakes()))
    }
}

fn default_max_connections() -> usize {
    DEFAULT_MAX_CONNECTIONS
}
fn default_max_inflight() -> usize {
    DEFAULT_MAX_INFLIGHT
}
fn default_max_endpoints_per_session() -> usize {
    DEFAULT_MAX_ENDPOINTS_PER_SESSION
}
fn default_max_payload() -> usize {
    DEFAULT_MAX_PAYLOAD
}
fn default_connect_timeout() -> Duration {
    DEFAULT_CONNECT_TIMEOUT
}
fn default_request_timeout() -> Duration {
    DEFAULT_REQUEST_TIMEOUT
}
fn default_write_timeout() -> Duration {
    DEFAULT_WRITE_TIMEOUT
}
fn default_park_idle_sessions() -> bool {
    true
}

/// `kpc.mqtt.auth`: MQTT CONNECT username and password.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct MqttAuthSection {
    /// `kpc.mqtt.auth.enabled`: must be said explicitly.
    pub enabled: bool,
    /// `kpc.mqtt.auth.users`.
    #[serde(default)]
    pub users: Vec<MqttUser>,
}

/// One MQTT user.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct MqttUser {
    /// The CONNECT username.
    pub username: String,
    /// The CONNECT password: `{ env: VAR }` (a value in the file is refused).
    pub password: Secret,
}

/// `kpc.http`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct HttpSection {
    /// `kpc.http.listen`: `/health` and `/metrics`.
    pub listen: SocketAddr,
}

/// One `kpc.endpoint-tokens` entry: an endpoint ID, or an endpoint ID with the
/// app version the token is valid for.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum TokenEntry {
    /// `token: <endpoint ID>`: valid for any app version.
    EndpointId(String),
    /// `token: { endpoint-id: …, app-version: … }`.
    Detailed {
        /// The endpoint ID.
        #[serde(rename = "endpoint-id")]
        endpoint_id: String,
        /// The only app version the token is valid for; absent: any.
        #[serde(rename = "app-version", default)]
        app_version: Option<String>,
    },
}

impl TokenEntry {
    /// The endpoint ID.
    pub fn endpoint_id(&self) -> &str {
        match self {
            TokenEntry::EndpointId(id)
            | TokenEntry::Detailed {
                endpoint_id: id, ..
            } => id,
        }
    }

    /// The app version the token is limited to, if any.
    pub fn app_version(&self) -> Option<&str> {
        match self {
            TokenEntry::EndpointId(_) => None,
            TokenEntry::Detailed { app_version, .. } => app_version.as_deref(),
        }
    }
}

/// Resolved MQTT credentials: `(username, password)` pairs; empty means anonymous.
#[derive(Clone, Default)]
pub struct Credentials {
    users: Vec<(String, String)>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.users.iter().map(|(u, _)| u.as_str()).collect();
        f.debug_struct("Credentials")
            .field("users", &names)
            .finish_non_exhaustive()
    }
}

impl Credentials {
    /// Anonymous access: every CONNECT is accepted.
    pub fn anonymous() -> Self {
        Self::default()
    }

    /// These users (a username may appear more than once, with different passwords).
    pub fn users(users: impl IntoIterator<Item = (String, String)>) -> Self {
        Self {
            users: users.into_iter().collect(),
        }
    }

    /// True when no credentials are required.
    pub fn is_anonymous(&self) -> bool {
        self.users.is_empty()
    }

    /// Checks a CONNECT's username and password (password compared in constant
    /// time for equal lengths).
    pub fn check(&self, username: &str, password: &str) -> bool {
        let mut ok = false;
        for (u, p) in &self.users {
            // Evaluate every entry so that timing does not tell which user matched.
            ok |= u == username && constant_time_eq(p.as_bytes(), password.as_bytes());
        }
        ok
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A duration written as seconds or as text ([`parse_duration`]), checked while the
/// value is read so that an error carries the key path and the value's position.
fn de_duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    struct DurationVisitor;
    impl serde::de::Visitor<'_> for DurationVisitor {
        type Value = Duration;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a duration (seconds, or e.g. 500ms, 10s, 2m, 1h)")
        }
        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Duration, E> {
            Ok(Duration::from_secs(v))
        }
        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Duration, E> {
            u64::try_from(v)
                .map(Duration::from_secs)
                .map_err(|_| E::custom(format!("invalid duration {v} (it cannot be negative)")))
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Duration, E> {
            parse_duration(v).map_err(E::custom)
        }
    }
    d.deserialize_any(DurationVisitor)
}

/// Parses `30` (seconds), `500ms`, `10s`, `2m`, `1h`.
///
/// ```
/// use std::time::Duration;
/// use kaa_kpc::config::parse_duration;
/// assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
/// assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
/// assert!(parse_duration("soon").is_err());
/// ```
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("invalid duration {text:?} (expected e.g. 30, 500ms, 10s, 2m)"))?;
    let ms_per_unit: u64 = match unit.trim() {
        "ms" => 1,
        "" | "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => {
            return Err(format!(
                "invalid duration unit in {text:?} (expected ms, s, m or h)"
            ));
        }
    };
    n.checked_mul(ms_per_unit)
        .map(Duration::from_millis)
        .ok_or_else(|| format!("duration {text:?} is too large"))
}

impl KpcConfig {
    /// A configuration for the MQTT address `listen` with every default: instance
    /// `kpc`, replica `kpc-1`, anonymous access, no tokens. For tests and embedding.
    pub fn new(listen: SocketAddr) -> Self {
        KpcConfig {
            service: ServiceSection::default(),
            nats: None,
            kpc: KpcSection {
                mqtt: MqttSection {
                    listen,
                    auth: None,
                    max_connections: DEFAULT_MAX_CONNECTIONS,
                    max_handshakes: None,
                    max_handshakes_per_address: None,
                    max_inflight: DEFAULT_MAX_INFLIGHT,
                    max_endpoints_per_session: DEFAULT_MAX_ENDPOINTS_PER_SESSION,
                    max_payload: DEFAULT_MAX_PAYLOAD,
                    connect_timeout: DEFAULT_CONNECT_TIMEOUT,
                    request_timeout: DEFAULT_REQUEST_TIMEOUT,
                    write_timeout: DEFAULT_WRITE_TIMEOUT,
                    park_idle_sessions: true,
                },
                http: None,
                extension_instances: Vec::new(),
                endpoint_tokens: BTreeMap::new(),
                accept_any_token: false,
                token_validation: None,
            },
        }
    }

    /// The instance name (`service.instance.name`).
    pub fn instance_name(&self) -> &str {
        &self.service.instance.name
    }

    /// The replica ID (`service.instance.replica.id`, default `<name>-1`).
    pub fn replica_id(&self) -> String {
        self.service.instance.replica_id()
    }

    /// Resolves the MQTT credentials (secrets from the environment).
    pub fn credentials(&self) -> Result<Credentials, ConfigError> {
        match &self.kpc.mqtt.auth {
            Some(auth) if auth.enabled => {
                let mut users = Vec::with_capacity(auth.users.len());
                for user in &auth.users {
                    users.push((user.username.clone(), user.password.resolve()?));
                }
                Ok(Credentials::users(users))
            }
            _ => Ok(Credentials::anonymous()),
        }
    }

    /// Checks what serde cannot: names that become subject tokens, positive
    /// limits, a usable auth setup.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let token = |name: &str, what: &str| {
            kaa_ism::subject::validate_token(name, "name").map_err(|e| {
                ConfigError::Invalid(format!("{what} {name:?} is not a valid subject token: {e}"))
            })
        };
        token(&self.service.instance.name, "service.instance.name")?;
        token(&self.replica_id(), "service.instance.replica.id")?;
        for ext in &self.kpc.extension_instances {
            token(ext, "kpc.extension-instances entry")?;
        }
        for (t, entry) in &self.kpc.endpoint_tokens {
            kaa_kp::validate_subject_token(t, "endpoint token")
                .and_then(|()| {
                    kaa_kp::request_topic("app", "ext", t, "", kaa_kp::RequestId::new(1))
                        .map(|_| ())
                })
                .map_err(|e| {
                    ConfigError::Invalid(format!("kpc.endpoint-tokens: token {t:?}: {e}"))
                })?;
            token(entry.endpoint_id(), "kpc.endpoint-tokens endpoint ID")?;
            if let Some(v) = entry.app_version() {
                token(v, "kpc.endpoint-tokens app version")?;
            }
        }
        if let Some(v) = &self.kpc.token_validation {
            token(&v.provider, "kpc.token-validation.provider")?;
            if v.timeout.is_zero() {
                return Err(ConfigError::Invalid(
                    "kpc.token-validation.timeout must be > 0".into(),
                ));
            }
        }
        let mqtt = &self.kpc.mqtt;
        if mqtt.max_connections == 0 {
            return Err(ConfigError::Invalid(
                "kpc.mqtt.max-connections must be > 0".into(),
            ));
        }
        if mqtt.max_handshakes() == 0 || mqtt.max_handshakes() > mqtt.max_connections {
            return Err(ConfigError::Invalid(
                "kpc.mqtt.max-handshakes must be between 1 and kpc.mqtt.max-connections".into(),
            ));
        }
        if mqtt.max_handshakes_per_address() == 0
            || mqtt.max_handshakes_per_address() > mqtt.max_handshakes()
        {
            return Err(ConfigError::Invalid(
                "kpc.mqtt.max-handshakes-per-address must be between 1 and kpc.mqtt.max-handshakes"
                    .into(),
            ));
        }
        if mqtt.max_inflight == 0 || mqtt.max_inflight > usize::from(u16::MAX) {
            return Err(ConfigError::Invalid(
                "kpc.mqtt.max-inflight must be between 1 and 65535".into(),
            ));
        }
        if mqtt.max_endpoints_per_session == 0 {
            return Err(ConfigError::Invalid(
                "kpc.mqtt.max-endpoints-per-session must be > 0".into(),
            ));
        }
        if mqtt.max_payload == 0 {
            return Err(ConfigError::Invalid(
                "kpc.mqtt.max-payload must be > 0".into(),
            ));
        }
        for (value, key) in [
            (mqtt.connect_timeout, "connect-timeout"),
            (mqtt.request_timeout, "request-timeout"),
            (mqtt.write_timeout, "write-timeout"),
        ] {
            if value.is_zero() || value > MAX_TIMEOUT {
                return Err(ConfigError::Invalid(format!(
                    "kpc.mqtt.{key} must be > 0 and at most 24h"
                )));
            }
        }
        if let Some(auth) = &mqtt.auth
            && auth.enabled
            && auth.users.is_empty()
        {
            return Err(ConfigError::Invalid(
                "kpc.mqtt.auth.enabled is true but kpc.mqtt.auth.users is empty (no client could \
                 connect); add users or set enabled: false"
                    .into(),
            ));
        }
        if let Some(nats) = &self.nats
            && nats.urls.is_empty()
        {
            return Err(ConfigError::Invalid(
                "nats.urls is empty (remove the nats section for the in-memory bus)".into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kaa_service::parse_yaml;

    const MINIMAL: &str = "kpc:\n  mqtt:\n    listen: 127.0.0.1:0\n";

    #[test]
    fn minimal_config_has_defaults() {
        let c: KpcConfig = parse_yaml(MINIMAL, "t").unwrap();
        c.validate().unwrap();
        assert_eq!(c.instance_name(), "kpc");
        assert_eq!(c.replica_id(), "kpc-1");
        assert_eq!(c.kpc.mqtt.max_payload, DEFAULT_MAX_PAYLOAD);
        assert_eq!(c.kpc.mqtt.request_timeout, DEFAULT_REQUEST_TIMEOUT);
        assert_eq!(c.kpc.mqtt.max_handshakes(), DEFAULT_MAX_HANDSHAKES);
        assert_eq!(
            c.kpc.mqtt.max_handshakes_per_address(),
            DEFAULT_MAX_HANDSHAKES_PER_ADDRESS
        );
        assert!(c.credentials().unwrap().is_anonymous());
    }

    #[test]
    fn handshake_limits_default_within_max_connections() {
        let small = format!("{MINIMAL}    max-connections: 100\n");
        let c: KpcConfig = parse_yaml(&small, "t").unwrap();
        c.validate().unwrap();
        assert_eq!(c.kpc.mqtt.max_handshakes(), 100);
        assert_eq!(c.kpc.mqtt.max_handshakes_per_address(), 100);
        let set = format!("{MINIMAL}    max-handshakes: 50\n    max-handshakes-per-address: 5\n");
        let c: KpcConfig = parse_yaml(&set, "t").unwrap();
        c.validate().unwrap();
        assert_eq!(c.kpc.mqtt.max_handshakes(), 50);
        assert_eq!(c.kpc.mqtt.max_handshakes_per_address(), 5);
        for (extra, key) in [
            ("    max-handshakes: 0\n", "max-handshakes must"),
            (
                "    max-connections: 10\n    max-handshakes: 11\n",
                "max-handshakes must",
            ),
            ("    max-handshakes-per-address: 0\n", "per-address"),
            (
                "    max-handshakes: 5\n    max-handshakes-per-address: 6\n",
                "per-address",
            ),
        ] {
            let c: KpcConfig = parse_yaml(&format!("{MINIMAL}{extra}"), "t").unwrap();
            let err = c.validate().unwrap_err().to_string();
            assert!(err.contains(key), "{err} (expected {key})");
        }
    }

    #[test]
    fn the_sample_configuration_is_valid() {
        let c: KpcConfig = parse_yaml(
            include_str!("../../../examples/config/kpc.yaml"),
            "kpc.yaml",
        )
        .unwrap();
        c.validate().unwrap();
        assert_eq!(c.kpc.extension_instances, ["cmx", "cmx_ota"]);
        assert!(c.nats.is_some());
        // The sample states the defaults of the handshake limits.
        let mqtt = &c.kpc.mqtt;
        assert_eq!(mqtt.max_handshakes, Some(DEFAULT_MAX_HANDSHAKES));
        assert_eq!(
            mqtt.max_handshakes_per_address,
            Some(DEFAULT_MAX_HANDSHAKES_PER_ADDRESS)
        );
        assert_eq!(mqtt.connect_timeout, DEFAULT_CONNECT_TIMEOUT);
        let auth = c.kpc.mqtt.auth.as_ref().unwrap();
        assert_eq!(
            auth.users[0].password.to_string(),
            "secret from $KPC_MQTT_PASSWORD"
        );
    }

    #[test]
    fn full_config() {
        let text = "
service: { instance: { name: kpc-eu, replica: { id: kpc-eu-7 } } }
kpc:
  mqtt:
    listen: 127.0.0.1:0
    auth: { enabled: true, users: [{ username: dev, password: { env: KPC_TEST_PASSWORD_UNSET } }] }
    max-payload: 1KiB
    request-timeout: 1500ms
    connect-timeout: 3
  extension-instances: [cmx]
  endpoint-tokens:
    tok1: ep-1
    tok2: { endpoint-id: ep-2, app-version: app-v2 }
";
        let c: KpcConfig = parse_yaml(text, "t").unwrap();
        c.validate().unwrap();
        assert_eq!(c.replica_id(), "kpc-eu-7");
        assert_eq!(c.kpc.mqtt.max_payload, 1024);
        assert_eq!(c.kpc.mqtt.request_timeout, Duration::from_millis(1500));
        assert_eq!(c.kpc.mqtt.connect_timeout, Duration::from_secs(3));
        assert_eq!(c.kpc.endpoint_tokens["tok1"].endpoint_id(), "ep-1");
        assert_eq!(c.kpc.endpoint_tokens["tok2"].app_version(), Some("app-v2"));
        let err = c.credentials().unwrap_err().to_string();
        assert!(err.contains("KPC_TEST_PASSWORD_UNSET is not set"), "{err}");
        let creds = Credentials::users([("dev".to_owned(), "s3cret".to_owned())]);
        assert!(creds.check("dev", "s3cret"));
        assert!(!creds.check("dev", "s3cres"));
        assert!(!creds.check("dev", ""));
        assert!(!creds.check("other", "s3cret"));
        assert!(!format!("{creds:?}").contains("s3cret"));
        // A password written into the file is refused, naming the way to do it.
        let inline = text.replace("{ env: KPC_TEST_PASSWORD_UNSET }", "s3cret");
        let err = parse_yaml::<KpcConfig>(&inline, "kpc.yaml")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("secrets are not read from configuration files"),
            "{err}"
        );
        assert!(!err.contains("s3cret"), "{err}");
    }

    #[test]
    fn invalid_configs_are_explained() {
        let typo = MINIMAL.replace("listen", "lisen");
        assert!(parse_yaml::<KpcConfig>(&typo, "t").is_err());
        let cases = [
            (
                "service: { instance: { name: k.p.c } }\n",
                "service.instance.name",
            ),
            ("  endpoint-tokens: { \"a/b\": ep }\n", "token \"a/b\""),
            ("  endpoint-tokens: { tok: \"ep 1\" }\n", "endpoint ID"),
            ("  extension-instances: [\"c*\"]\n", "extension-instances"),
        ];
        for (extra, expected) in cases {
            let text = if extra.starts_with("service") {
                format!("{extra}{MINIMAL}")
            } else {
                format!("{MINIMAL}{extra}")
            };
            let c: KpcConfig = parse_yaml(&text, "t").unwrap();
            let err = c.validate().unwrap_err().to_string();
            assert!(err.contains(expected), "{err} (expected {expected})");
        }
        let no_users = format!("{MINIMAL}    auth: {{ enabled: true }}\n");
        let c: KpcConfig = parse_yaml(&no_users, "t").unwrap();
        assert!(c.validate().unwrap_err().to_string().contains("users"));
        let zero = format!("{MINIMAL}    max-inflight: 0\n");
        let c: KpcConfig = parse_yaml(&zero, "t").unwrap();
        assert!(c.validate().is_err());
        let long = format!("{MINIMAL}    request-timeout: 25h\n");
        let c: KpcConfig = parse_yaml(&long, "t").unwrap();
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("request-timeout")
        );
        assert!(parse_duration("10x").is_err());
        assert!(
            parse_yaml::<KpcConfig>(&format!("{MINIMAL}    write-timeout: fast\n"), "t").is_err()
        );
    }
}
