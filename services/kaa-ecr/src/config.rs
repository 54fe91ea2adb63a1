//! The ECR service configuration (YAML).
//!
//! Kaa's keys where they exist, plus ECR's own (`ecr.…`, `auth.…`). Unknown keys
//! inside `ecr` and `auth` are errors (typos should not pass silently); other
//! top-level sections are ignored, so one file can configure several services.
//!
//! ```yaml
//! service:
//!   instance:
//!     name: ecr                  # NATS service instance name (queue group, subjects)
//!     replica:
//!       id: ecr-1                # originatorReplicaId of events
//! nats:
//!   urls: [nats://127.0.0.1:4222] # absent: the in-memory bus (one process, no server)
//! kaa:
//!   applications:
//!     smart-kettle:
//!       versions:
//!         smartKettleV1:
//!           schema:                # optional JSON Schema for this app version
//!             type: object
//!         smartKettleV2: {}
//! ecr:
//!   http:
//!     listen: 127.0.0.1:8080
//!     body-limit: 1008KiB        # the largest configuration (a PUT body), bytes or KiB/MiB; default 1 MiB − 16 KiB
//!   store:
//!     url: sqlite://ecr.db       # or postgres://user@host/db (no password here)
//!     # url-env: ECR_STORE_URL   # instead of url: the environment variable holding the URL
//!   cmx:
//!     service-instance-name: cmx # whose endpoint.config.applied events are recorded
//!   limits:
//!     max-endpoints-per-event: 10000 # a longer 9/ELCE event is ignored (and counted)
//! auth:
//!   enabled: true
//!   tokens:
//!     - name: admin
//!       token: { env: ECR_ADMIN_TOKEN }
//!       access: read-write
//! ```
//!
//! **Limits.** `ecr.http.body-limit` is the maximum configuration size of the
//! stack (see [`kaa_service::DEFAULT_MAX_CONFIG_SIZE`]): a larger body gets 413
//! `{"message"}` and nothing is stored. At start-up, body-limit + 16 KiB (the
//! 7/CMP wrapper and the 6/CDTP / 4/ESP envelopes) must fit the bus's
//! `max_payload` (NATS: the server's, 1 MiB by default), or ECR refuses to start
//! with a message naming the largest body-limit that fits.
//!
//! **Secrets** come from the environment only: `auth.tokens[].token` must be
//! `{ env: VAR }` (a token written into the file is a start-up error), and a
//! PostgreSQL URL with a password must be given by `ecr.store.url-env` (the name
//! of the environment variable holding the URL); `ecr.store.url` with a password
//! is refused.
//!
//! When `kaa.applications` lists app versions, ECR accepts only those (REST and
//! 6/CDTP); when it lists none, any valid app version name is accepted.

pub use kaa_service::{NatsSection, ReplicaSection};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

use kaa_service::ConfigError;

/// The default request body limit, which is the stack's maximum configuration size:
/// 1 MiB − 16 KiB ([`kaa_service::DEFAULT_MAX_CONFIG_SIZE`]), so that the
/// largest configuration still fits a default NATS message with its envelopes.
pub const DEFAULT_BODY_LIMIT: usize = kaa_service::DEFAULT_MAX_CONFIG_SIZE;

/// The default of `ecr.limits.max-endpoints-per-event`: the most endpoints one
/// 9/ELCE `connected` event may list for ECR to learn them (10,000, CMX's default
/// `cmx.limits.max-endpoints-per-event`; KPC lists at most
/// `max-endpoints-per-session`, default 1,000). A longer event is ignored and
/// counted in `ecr_events_handled_total{event="connectivity",result="ignored"}`.
pub const DEFAULT_MAX_ENDPOINTS_PER_EVENT: usize = 10_000;

/// Room the bus messages of a configuration need on top of it (7/CMP wrapper and
/// Avro envelope): `ecr.http.body-limit` + this must fit the bus's `max_payload`.
pub const CONFIG_MESSAGE_ROOM: usize =
    kaa_service::CMP_WRAPPER_ROOM + kaa_service::BUS_ENVELOPE_ROOM;

/// The whole ECR configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct EcrConfig {
    /// `service.instance.{name, replica.id}`.
    #[serde(default)]
    pub service: ServiceSection,
    /// `nats.urls`; absent: the in-memory bus.
    #[serde(default)]
    pub nats: Option<NatsSection>,
    /// `kaa.applications`.
    #[serde(default)]
    pub kaa: KaaSection,
    /// ECR's own keys.
    pub ecr: EcrSection,
    /// REST authentication.
    pub auth: AuthConfig,
}

/// The ECR service's [`ServiceKind`](kaa_service::ServiceKind):
/// `service.instance.name` defaults to `ecr`.
#[derive(Debug, Clone, Copy)]
pub enum EcrServiceKind {}

impl kaa_service::ServiceKind for EcrServiceKind {
    const DEFAULT_INSTANCE_NAME: &'static str = "ecr";
}

/// `service`: [`kaa_service::ServiceSection`] with `service.instance.name`
/// defaulting to `ecr`.
pub type ServiceSection = kaa_service::ServiceSection<EcrServiceKind>;

/// `service.instance`: the extension instance name (default `ecr`) and the
/// replica (default ID `<name>-1`).
pub type InstanceSection = kaa_service::InstanceSection<EcrServiceKind>;

/// `kaa`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct KaaSection {
    /// `kaa.applications.<app>`.
    #[serde(default)]
    pub applications: BTreeMap<String, ApplicationSection>,
}

/// `kaa.applications.<app>`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct ApplicationSection {
    /// `kaa.applications.<app>.versions.<version>`.
    #[serde(default)]
    pub versions: BTreeMap<String, AppVersionSection>,
}

/// `kaa.applications.<app>.versions.<version>`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct AppVersionSection {
    /// An inline JSON Schema every configuration of this app version must satisfy.
    #[serde(default)]
    pub schema: Option<serde_json::Value>,
    /// A JSON Schema file (JSON or YAML), instead of an inline `schema`.
    #[serde(default)]
    pub schema_file: Option<PathBuf>,
}

/// `ecr`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct EcrSection {
    /// `ecr.http`.
    pub http: HttpSection,
    /// `ecr.store`.
    pub store: StoreSection,
    /// `ecr.cmx`.
    #[serde(default)]
    pub cmx: CmxSection,
    /// `ecr.limits`.
    #[serde(default)]
    pub limits: LimitsSection,
}

/// `ecr.limits`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct LimitsSection {
    /// `ecr.limits.max-endpoints-per-event`: the most endpoints a 9/ELCE event may
    /// list (default [`DEFAULT_MAX_ENDPOINTS_PER_EVENT`]); keep it at least KPC's
    /// `max-endpoints-per-session`.
    #[serde(default = "default_max_endpoints_per_event")]
    pub max_endpoints_per_event: usize,
}

impl Default for LimitsSection {
    fn default() -> Self {
        Self {
            max_endpoints_per_event: DEFAULT_MAX_ENDPOINTS_PER_EVENT,
        }
    }
}

fn default_max_endpoints_per_event() -> usize {
    DEFAULT_MAX_ENDPOINTS_PER_EVENT
}

/// `ecr.http`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct HttpSection {
    /// `ecr.http.listen`: the REST API, `/health` and `/metrics` address.
    pub listen: SocketAddr,
    /// `ecr.http.body-limit`: the largest request body, and so the largest
    /// configuration; larger is 413.
    #[serde(default, deserialize_with = "de_opt_byte_size")]
    pub body_limit: Option<usize>,
}

/// `ecr.store`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct StoreSection {
    /// `ecr.store.url`: `sqlite://<path>` or `postgres://…` without a password.
    #[serde(default)]
    pub url: String,
    /// `ecr.store.url-env`: the environment variable holding the store URL (for a
    /// URL with a password); instead of `ecr.store.url`.
    #[serde(default)]
    pub url_env: Option<String>,
}

/// True when a PostgreSQL URL or key-value connection string holds a password.
fn has_password(url: &str) -> bool {
    if url.to_ascii_lowercase().contains("password=") {
        return true;
    }
    url.split_once("://")
        .and_then(|(_, rest)| rest.split(['/', '?']).next())
        .and_then(|authority| authority.rsplit_once('@'))
        .is_some_and(|(userinfo, _)| userinfo.contains(':'))
}

/// `ecr.cmx`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct CmxSection {
    /// `ecr.cmx.service-instance-name`: the CMX whose `endpoint.config.applied`
    /// events go into the status history (default `cmx`).
    #[serde(default = "default_cmx")]
    pub service_instance_name: String,
}

impl Default for CmxSection {
    fn default() -> Self {
        Self {
            service_instance_name: default_cmx(),
        }
    }
}

fn default_cmx() -> String {
    "cmx".to_owned()
}

pub use kaa_service::auth::{Access, AuthConfig, TokenConfig};

pub use kaa_service::{de_byte_size, de_opt_byte_size, parse_byte_size};

impl EcrConfig {
    /// The body limit in bytes.
    pub fn body_limit(&self) -> usize {
        self.ecr.http.body_limit.unwrap_or(DEFAULT_BODY_LIMIT)
    }

    /// The store URL: `ecr.store.url`, or the value of the environment variable
    /// `ecr.store.url-env` names.
    pub fn store_url(&self) -> Result<String, ConfigError> {
        self.store_url_with(|name| std::env::var(name).ok())
    }

    /// [`EcrConfig::store_url`] with a custom environment lookup (for tests).
    pub fn store_url_with(
        &self,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<String, ConfigError> {
        let store = &self.ecr.store;
        match (&store.url_env, store.url.is_empty()) {
            (Some(_), false) => Err(ConfigError::Invalid(
                "ecr.store: set url or url-env, not both".into(),
            )),
            (None, true) => Err(ConfigError::Invalid(
                "ecr.store.url is missing (or name the environment variable holding it with \
                 ecr.store.url-env)"
                    .into(),
            )),
            (None, false) if has_password(&store.url) => Err(ConfigError::Invalid(
                "ecr.store.url holds a password; secrets are not read from configuration \
                 files: put the URL in an environment variable and name it with \
                 ecr.store.url-env"
                    .into(),
            )),
            (None, false) => Ok(store.url.clone()),
            (Some(var), true) => lookup(var).filter(|v| !v.is_empty()).ok_or_else(|| {
                ConfigError::Invalid(format!(
                    "environment variable {var} (ecr.store.url-env) is not set"
                ))
            }),
        }
    }

    /// The replica ID (`service.instance.replica.id`, default `<name>-1`).
    pub fn replica_id(&self) -> String {
        self.service.instance.replica_id()
    }

    /// Checks what serde cannot: names that become subject tokens, a usable auth
    /// setup, a positive body limit.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let token = |name: &str, what: &'static str| {
            crate::model::validate_token_name(name, what)
                .map_err(|e| ConfigError::Invalid(e.to_string()))
        };
        token(&self.service.instance.name, "service.instance.name")?;
        token(&self.replica_id(), "service.instance.replica.id")?;
        token(
            &self.ecr.cmx.service_instance_name,
            "ecr.cmx.service-instance-name",
        )?;
        for app in self.kaa.applications.values() {
            for version in app.versions.keys() {
                token(version, "kaa.applications.<app>.versions.<version>")?;
            }
        }
        if self.body_limit() == 0 {
            return Err(ConfigError::Invalid(
                "ecr.http.body-limit must be > 0".into(),
            ));
        }
        if let Some(nats) = &self.nats
            && nats.urls.is_empty()
        {
            return Err(ConfigError::Invalid(
                "nats.urls is empty (remove the nats section for the in-memory bus)".into(),
            ));
        }
        // With url-env alone the variable is read when the store opens.
        if self.ecr.store.url_env.is_none() || !self.ecr.store.url.is_empty() {
            self.store_url()?;
        }
        if self.auth.enabled && self.auth.tokens.is_empty() {
            return Err(ConfigError::Invalid(
                "auth.enabled is true but auth.tokens is empty (nobody could use the API); \
                 add tokens or set auth.enabled: false for local use"
                    .into(),
            ));
        }
        Ok(())
    }
}

impl EcrConfig {
    /// The 9/ELCE decode limits (`ecr.limits.max-endpoints-per-event`).
    pub fn elce_decode_limits(&self) -> kaa_elce::DecodeLimits {
        kaa_elce::DecodeLimits::with_max_endpoints(self.ecr.limits.max_endpoints_per_event)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kaa_service::parse_yaml;

    #[test]
    fn endpoints_per_event_limit_is_configurable() {
        let c: EcrConfig = parse_yaml(MINIMAL, "t").unwrap();
        assert_eq!(
            c.elce_decode_limits(),
            kaa_elce::DecodeLimits::with_max_endpoints(DEFAULT_MAX_ENDPOINTS_PER_EVENT)
        );
        let yaml = MINIMAL.replace(
            "  store:",
            "  limits:\n    max-endpoints-per-event: 5\n  store:",
        );
        let c: EcrConfig = parse_yaml(&yaml, "t").unwrap();
        assert_eq!(
            c.elce_decode_limits(),
            kaa_elce::DecodeLimits::with_max_endpoints(5)
        );
        let typo = MINIMAL.replace("  store:", "  limits:\n    max-endpoint: 5\n  store:");
        assert!(parse_yaml::<EcrConfig>(&typo, "t").is_err());
    }

    const MINIMAL: &str = "ecr:\n  http:\n    listen: 127.0.0.1:0\n  store:\n    url: sqlite://x.db\nauth:\n  enabled: false\n";

    #[test]
    fn minimal_config_has_defaults() {
        let c: EcrConfig = parse_yaml(MINIMAL, "t").unwrap();
        c.validate().unwrap();
        assert_eq!(c.service.instance.name, "ecr");
        assert_eq!(c.replica_id(), "ecr-1");
        assert_eq!(c.body_limit(), DEFAULT_BODY_LIMIT);
        assert_eq!(c.ecr.cmx.service_instance_name, "cmx");
    }

    #[test]
    fn sample_config_is_valid() {
        let c: EcrConfig = parse_yaml(
            include_str!("../../../examples/config/ecr.yaml"),
            "ecr.yaml",
        )
        .unwrap();
        c.validate().unwrap();
        assert_eq!(c.replica_id(), "ecr-1");
        assert!(c.auth.enabled);
        assert_eq!(c.auth.tokens.len(), 2);
        let apps = crate::core::AppVersions::from_config(&c.kaa).unwrap();
        let v1 = crate::model::AppVersionName::new("smartKettleV1").unwrap();
        assert!(
            apps.validate(&v1, &serde_json::json!({"sampling": 0}))
                .is_err()
        );
        assert!(
            apps.validate(&v1, &serde_json::json!({"sampling": 10}))
                .is_ok()
        );
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_byte_size("1MiB"), Ok(1 << 20));
        assert_eq!(parse_byte_size("512 KiB"), Ok(512 << 10));
        assert_eq!(parse_byte_size("100"), Ok(100));
        assert!(parse_byte_size("1GB").is_err());
        assert!(parse_byte_size("lots").is_err());
    }

    #[test]
    fn invalid_configs_are_explained() {
        let no_auth = MINIMAL.replace("auth:\n  enabled: false\n", "");
        assert!(
            parse_yaml::<EcrConfig>(&no_auth, "t")
                .unwrap_err()
                .to_string()
                .contains("auth")
        );
        let typo = MINIMAL.replace("store:", "stor:");
        assert!(parse_yaml::<EcrConfig>(&typo, "t").is_err());
        let bad_name = format!("{MINIMAL}service:\n  instance:\n    name: e.c.r\n");
        let c: EcrConfig = parse_yaml(&bad_name, "t").unwrap();
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("service.instance.name")
        );
        let no_tokens = MINIMAL.replace("enabled: false", "enabled: true");
        let c: EcrConfig = parse_yaml(&no_tokens, "t").unwrap();
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("auth.tokens")
        );
    }

    #[test]
    fn secrets_are_never_read_from_the_file() {
        // An API token written into the file: refused, without echoing it.
        let inline = MINIMAL.replace(
            "auth:\n  enabled: false\n",
            "auth:\n  enabled: true\n  tokens:\n    - name: a\n      token: tok-s3cret\n      access: read\n",
        );
        let err = parse_yaml::<EcrConfig>(&inline, "ecr.yaml")
            .unwrap_err()
            .to_string();
        assert!(err.contains(kaa_service::INLINE_SECRET_REFUSED), "{err}");
        assert!(err.starts_with("ecr.yaml: line 10"), "{err}");
        assert!(!err.contains("tok-s3cret"), "{err}");
        // A PostgreSQL URL with a password: refused; the same URL from the environment: used.
        for url in [
            "postgres://kaa:pg-s3cret@db/ecr",
            "postgresql://kaa:pg-s3cret@db:5432/ecr?sslmode=require",
            "host=db user=kaa password=pg-s3cret",
        ] {
            let text = MINIMAL.replace("sqlite://x.db", &format!("\"{url}\""));
            let c: EcrConfig = parse_yaml(&text, "t").unwrap();
            let err = c.validate().unwrap_err().to_string();
            assert!(err.contains("ecr.store.url-env"), "{url}: {err}");
            assert!(!err.contains("pg-s3cret"), "{err}");
        }
        let from_env = MINIMAL.replace("url: sqlite://x.db", "url-env: ECR_TEST_STORE_URL");
        let c: EcrConfig = parse_yaml(&from_env, "t").unwrap();
        c.validate().unwrap();
        let url = "postgres://kaa:pg-s3cret@db/ecr";
        let lookup = |n: &str| (n == "ECR_TEST_STORE_URL").then(|| url.to_owned());
        assert_eq!(c.store_url_with(lookup).unwrap(), url);
        let err = c.store_url_with(|_| None).unwrap_err().to_string();
        assert!(err.contains("ECR_TEST_STORE_URL"), "{err}");
        let both = from_env.replace("url-env:", "url: sqlite://y.db\n    url-env:");
        let c: EcrConfig = parse_yaml(&both, "t").unwrap();
        assert!(c.validate().unwrap_err().to_string().contains("not both"));
        // A URL with a user and no password is fine.
        let c: EcrConfig = parse_yaml(
            &MINIMAL.replace("sqlite://x.db", "postgres://postgres@127.0.0.1:5432/ecr"),
            "t",
        )
        .unwrap();
        c.validate().unwrap();
    }
}
