//! [`CmxConfig`]: names, timeouts and limits of a CMX engine.

use std::collections::HashSet;
use std::time::Duration;

use kaa_ism::subject::{SubjectError, validate_token};

/// The configuration of a [`Cmx`](super::Cmx) engine.
///
/// Build one with [`CmxConfig::new`] and adjust fields; [`Cmx::new`](super::Cmx::new)
/// validates it. The names correspond to the Kaa CMX service keys:
///
/// | field | Kaa key |
/// |---|---|
/// | `instance_name` | `service.instance.name` |
/// | `replica_id` | `service.instance.replica.id` |
/// | `provider` | `kaa.cmx.configuration-data-provider.service-instance.name` |
/// | `communication_service` | `kaa.cmx.communication-service.service-instance.name` |
/// | `endpoint_ttl` | `kaa.cmx.endpoint-state-persistence.ttl` |
/// | `app_versions` | `kaa.applications.<app>.versions.<ver>` |
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct CmxConfig {
    /// This CMX's service instance name, e.g. `cmx`: the extension instance name
    /// devices use in their topics, `ExtensionData.extensionInstanceName`, and the
    /// originator of `endpoint.config.applied` broadcasts.
    pub instance_name: String,
    /// This replica's ID, e.g. `cmx-1`: CDTP responses come back on
    /// `kaa.v1.replica.<replica_id>.cdtp.response`.
    pub replica_id: String,
    /// The configuration data provider's service instance name, e.g. `ecr`.
    pub provider: String,
    /// The communication service's instance name, e.g. `kpc`: `ExtensionData`
    /// without session affinity goes to `kaa.v1.service.<kpc>.esp.ExtensionData`.
    pub communication_service: String,
    /// How long to wait for a CDTP response. A device request still waiting then
    /// gets a 504. Also the `timeout` of the CDTP request. Default 5 s.
    pub cdtp_timeout: Duration,
    /// The `timeout` field of `ExtensionData` and `ConfigApplied` (0: none). Default 0.
    pub message_timeout: Duration,
    /// How long a disconnected endpoint's state is kept after its last activity.
    /// Connected endpoints are kept while connected. Default 24 h.
    pub endpoint_ttl: Duration,
    /// The most endpoints tracked at once; past it the least recently active one
    /// (disconnected first) is forgotten. Default 1,000,000.
    pub max_endpoints: usize,
    /// The most CDTP requests in flight; past it device requests get a 503 and
    /// pushes are retried later. Default 65,536.
    pub max_pending_requests: usize,
    /// The most named configurations tracked per endpoint (the default one is
    /// not counted); a request for one more gets a 503. Default 32.
    pub max_names_per_endpoint: usize,
    /// The most device requests waiting on one CDTP request; one more gets a 503.
    /// Default 16.
    pub max_waiters_per_request: usize,
    /// The longest `configId` accepted from a device, in bytes (a longer one is a
    /// 400). Default 256.
    pub max_config_id_len: usize,
    /// The most endpoints one 9/ELCE `connected` / `disconnected` event may list
    /// (`kaa_elce::DecodeLimits`); a longer event is dropped as malformed. Keep it
    /// at least the communication service's endpoints per session (KPC:
    /// `max-endpoints-per-session`, default 1,000). Default 10,000.
    pub max_endpoints_per_event: usize,
    /// The first delay before a failed push is retried; it doubles with every
    /// attempt, up to 64 times this. Default 1 s.
    pub push_retry_delay: Duration,
    /// How many times a failed push is retried before the engine waits for the
    /// next trigger. Default 5.
    pub push_retry_attempts: u8,
    /// The prefix of the correlation IDs the engine generates (`<prefix>-<n>`);
    /// `None` uses `replica_id`. IDs are deterministic: no clock, no randomness.
    /// Give each run of a replica its own prefix if late responses to a previous
    /// run could arrive.
    pub correlation_prefix: Option<String>,
    /// Broadcast `endpoint.config.applied` (status 200, "Implicitly applied") when
    /// a device's request names the current configuration. Off by default: Kaa's
    /// ECR records that itself when it answers "unchanged".
    pub broadcast_implicit_applied: bool,
    /// The application versions served; `None` serves any. A request for another
    /// app version is answered 404.
    pub app_versions: Option<HashSet<String>>,
    /// Replicas (kaa-rs extension): for this long after a membership change,
    /// endpoints the engine starts tracking count as *adopted* (a
    /// `ConfigUpdated` for any name is pushed to them), because while the
    /// replicas' views differ another replica may have served names of theirs
    /// it then let go. Should exceed how long replicas' views of a change can
    /// differ. Default 10 s.
    pub membership_settle: Duration,
    /// Replicas (kaa-rs extension): when this replica joins members that are
    /// alive, it delivers nothing (no push, no answer; the 6/CDTP fetches go
    /// on) until every other member has confirmed it applied the new member
    /// list ([`Cmx::set_member_view`](super::Cmx::set_member_view)), and at
    /// most this long. The replica giving an endpoint up may have pushed it a
    /// moment before it saw the join, on another connection; delivering at
    /// once could overtake that push with a newer configuration and let the
    /// older arrive last (seen in `fault_replicas` cmx-kill under load: `seq`
    /// 41, 37, 41, and again with a fixed 1 s hold: 39, 35, 43). Default 5 s
    /// (normally cut short by the confirmations, within milliseconds); zero: no
    /// fence.
    pub handover_delay: Duration,
    /// Configuration deltas (kaa-rs extension, [`crate::delta`]): the bound, in
    /// bytes, of the cache of configurations that patches start from (config ID
    /// plus the configuration's 7/CMP answer, least recently used out first).
    /// A device whose base is not in it gets the whole configuration. Only
    /// configurations delivered to devices on the delta resource enter it.
    /// Default 16 MiB; 0 turns patches off (every delta answer is whole).
    pub delta_cache_bytes: usize,
}

impl CmxConfig {
    /// A configuration with the given names and the default limits.
    pub fn new(
        instance_name: impl Into<String>,
        replica_id: impl Into<String>,
        provider: impl Into<String>,
        communication_service: impl Into<String>,
    ) -> Self {
        CmxConfig {
            instance_name: instance_name.into(),
            replica_id: replica_id.into(),
            provider: provider.into(),
            communication_service: communication_service.into(),
            cdtp_timeout: Duration::from_secs(5),
            message_timeout: Duration::ZERO,
            endpoint_ttl: Duration::from_secs(24 * 3600),
            max_endpoints: 1_000_000,
            max_pending_requests: 65_536,
            max_names_per_endpoint: 32,
            max_waiters_per_request: 16,
            max_config_id_len: 256,
            max_endpoints_per_event: 10_000,
            push_retry_delay: Duration::from_secs(1),
            push_retry_attempts: 5,
            correlation_prefix: None,
            broadcast_implicit_applied: false,
            app_versions: None,
            membership_settle: Duration::from_secs(10),
            handover_delay: Duration::from_secs(5),
            delta_cache_bytes: 16 * 1024 * 1024,
        }
    }

    /// Checks names (they become subject tokens) and limits.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let name = |field: &'static str, value: &str| {
            validate_token(value, field).map_err(|source| ConfigError::Name { field, source })
        };
        name("instance_name", &self.instance_name)?;
        name("replica_id", &self.replica_id)?;
        name("provider", &self.provider)?;
        name("communication_service", &self.communication_service)?;
        if self.correlation_prefix.as_deref() == Some("") {
            return Err(ConfigError::Invalid {
                field: "correlation_prefix",
                requirement: "non-empty",
            });
        }
        let positive = |field: &'static str, ok: bool| {
            if ok {
                Ok(())
            } else {
                Err(ConfigError::Invalid {
                    field,
                    requirement: "greater than zero",
                })
            }
        };
        positive("cdtp_timeout", !self.cdtp_timeout.is_zero())?;
        positive("endpoint_ttl", !self.endpoint_ttl.is_zero())?;
        positive("max_pending_requests", self.max_pending_requests > 0)?;
        positive("max_waiters_per_request", self.max_waiters_per_request > 0)?;
        positive("max_config_id_len", self.max_config_id_len > 0)?;
        positive("max_endpoints_per_event", self.max_endpoints_per_event > 0)?;
        positive("push_retry_delay", !self.push_retry_delay.is_zero())?;
        Ok(())
    }
}

/// A [`CmxConfig`] that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A name is not a valid NATS subject token.
    #[error("{field}: {source}")]
    Name {
        /// The field.
        field: &'static str,
        /// Why the name is invalid.
        source: SubjectError,
    },
    /// A limit or duration is out of range.
    #[error("{field} must be {requirement}")]
    Invalid {
        /// The field.
        field: &'static str,
        /// What it must be.
        requirement: &'static str,
    },
}
