//! The register's configuration (YAML): Kaa's keys where they exist, plus its own
//! under `epr` and `auth`. Unknown keys inside `epr` and `auth` are errors; other
//! top-level sections are ignored, so one file can configure several services.
//!
//! ```yaml
//! service:
//!   instance:
//!     name: epr                  # 16/ECAP provider name, queue group, event originator
//!     replica:
//!       id: epr-1
//! nats:
//!   urls: [nats://127.0.0.1:4222] # absent: the in-memory bus
//! kaa:
//!   applications:                # app version → application (16/ECAP appName); absent: each app version is its own
//!     smart-kettle:
//!       versions:
//!         smartKettleV1: {}
//!         smartKettleV2: {}
//! epr:
//!   http:
//!     listen: 127.0.0.1:8082
//!     body-limit: 16MiB          # default 16 MiB (a batch of 10,000 endpoints)
//!   store:
//!     url: sqlite://epr.db       # or postgres://user@host/db (no password here), or url-env: EPR_STORE_URL
//!   limits:
//!     max-batch: 10000           # endpoints in one POST /endpoints/batch
//! auth:
//!   enabled: true
//!   tokens:
//!     - name: provisioning
//!       token: { env: EPR_ADMIN_TOKEN }
//!       access: read-write
//! ```
//!
//! Secrets come from the environment only: `auth.tokens[].token` is `{ env: VAR }`,
//! and a PostgreSQL URL with a password is given by `epr.store.url-env` (the name
//! of the variable holding it); `epr.store.url` with a password is refused.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde::Deserialize;

use kaa_service::ConfigError;
pub use kaa_service::auth::{Access, AuthConfig, TokenConfig};
pub use kaa_service::{NatsSection, ReplicaSection};

use super::core::{Applications, DEFAULT_MAX_BATCH};

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct EprConfig {
    /// `service.instance.{name, replica.id}`.
    #[serde(default)]
    pub service: ServiceSection,
    /// `nats.urls`; absent: the in-memory bus.
    #[serde(default)]
    pub nats: Option<NatsSection>,
    /// `kaa.applications`.
    #[serde(default)]
    pub kaa: KaaSection,
    /// The register's own keys.
    pub epr: EprSection,
    /// REST authentication.
    pub auth: AuthConfig,
}

/// The register's [`ServiceKind`](kaa_service::ServiceKind): the instance name
/// defaults to `epr`.
#[derive(Debug, Clone, Copy)]
pub enum EprServiceKind {}

impl kaa_service::ServiceKind for EprServiceKind {
    const DEFAULT_INSTANCE_NAME: &'static str = "epr";
}

/// `service`, with the instance name defaulting to `epr`.
pub type ServiceSection = kaa_service::ServiceSection<EprServiceKind>;

/// `kaa`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct KaaSection {
    /// `kaa.applications.<app>`.
    #[serde(default)]
    pub applications: BTreeMap<String, ApplicationSection>,
}

/// `kaa.applications.<app>`: only the version names are read here (ECR reads the
/// same section for its schemas).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct ApplicationSection {
    /// `kaa.applications.<app>.versions.<version>`.
    #[serde(default)]
    pub versions: BTreeMap<String, serde_json::Value>,
}

/// `epr`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct EprSection {
    /// `epr.http`.
    pub http: HttpSection,
    /// `epr.store`.
    pub store: StoreSection,
    /// `epr.limits`.
    #[serde(default)]
    pub limits: LimitsSection,
}

/// `epr.http`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct HttpSection {
    /// `epr.http.listen`: the REST API, `/health` and `/metrics`.
    pub listen: SocketAddr,
    /// `epr.http.body-limit` (default [`crate::api::DEFAULT_BODY_LIMIT`]).
    #[serde(default, deserialize_with = "kaa_service::de_opt_byte_size")]
    pub body_limit: Option<usize>,
}

/// `epr.store`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct StoreSection {
    /// `epr.store.url`: `sqlite://<path>` or `postgres://…` without a password.
    #[serde(default)]
    pub url: String,
    /// `epr.store.url-env`: the environment variable holding the URL instead.
    #[serde(default)]
    pub url_env: Option<String>,
}

/// `epr.limits`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct LimitsSection {
    /// `epr.limits.max-batch`: endpoints in one batch (default 10,000).
    #[serde(default = "default_max_batch")]
    pub max_batch: usize,
}

impl Default for LimitsSection {
    fn default() -> Self {
        Self {
            max_batch: DEFAULT_MAX_BATCH,
        }
    }
}

fn default_max_batch() -> usize {
    DEFAULT_MAX_BATCH
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

impl EprConfig {
    /// The body limit in bytes.
    pub fn body_limit(&self) -> usize {
        self.epr
            .http
            .body_limit
            .unwrap_or(crate::api::DEFAULT_BODY_LIMIT)
    }

    /// The replica ID (`service.instance.replica.id`, default `<name>-1`).
    pub fn replica_id(&self) -> String {
        self.service.instance.replica_id()
    }

    /// The store URL: `epr.store.url`, or the variable `epr.store.url-env` names.
    pub fn store_url(&self) -> Result<String, ConfigError> {
        let store = &self.epr.store;
        match (&store.url_env, store.url.is_empty()) {
            (Some(_), false) => Err(ConfigError::Invalid(
                "epr.store: set url or url-env, not both".into(),
            )),
            (None, true) => Err(ConfigError::Invalid("epr.store.url is missing".into())),
            (None, false) if has_password(&store.url) => Err(ConfigError::Invalid(
                "epr.store.url holds a password; secrets are not read from configuration \
                 files: put the URL in an environment variable and name it with \
                 epr.store.url-env"
                    .into(),
            )),
            (None, false) => Ok(store.url.clone()),
            (Some(var), true) => std::env::var(var)
                .ok()
                .filter(|v| !v.is_empty())
                .ok_or_else(|| {
                    ConfigError::Invalid(format!(
                        "environment variable {var} (epr.store.url-env) is not set"
                    ))
                }),
        }
    }

    /// The app version → application map of `kaa.applications`.
    pub fn applications(&self) -> Applications {
        Applications::new(
            &self
                .kaa
                .applications
                .iter()
                .map(|(app, s)| (app.clone(), s.versions.keys().cloned().collect()))
                .collect(),
        )
    }

    /// Checks what serde cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let name = &self.service.instance.name;
        kaa_service::names::validate_token_name(name, "service.instance.name")
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        for (app, section) in &self.kaa.applications {
            for version in section.versions.keys() {
                kaa_service::names::validate_token_name(version, "app version name")
                    .map_err(|e| ConfigError::Invalid(format!("kaa.applications.{app}: {e}")))?;
            }
        }
        if self.epr.limits.max_batch == 0 {
            return Err(ConfigError::Invalid(
                "epr.limits.max-batch must be at least 1".into(),
            ));
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

#[cfg(test)]
mod tests {
    use super::*;
    use kaa_service::parse_yaml;

    const MINIMAL: &str = "epr:\n  http:\n    listen: 127.0.0.1:0\n  store:\n    url: sqlite://x.db\nauth:\n  enabled: false\n";

    #[test]
    fn minimal_config_has_defaults() {
        let c: EprConfig = parse_yaml(MINIMAL, "t").unwrap();
        c.validate().unwrap();
        assert_eq!(c.service.instance.name, "epr");
        assert_eq!(c.replica_id(), "epr-1");
        assert_eq!(c.epr.limits.max_batch, DEFAULT_MAX_BATCH);
        assert_eq!(c.applications().application_of("v1"), "v1");
    }

    #[test]
    fn sample_config_is_valid() {
        let c: EprConfig = parse_yaml(
            include_str!("../../../examples/config/epr.yaml"),
            "epr.yaml",
        )
        .unwrap();
        c.validate().unwrap();
        assert!(c.auth.enabled);
    }

    #[test]
    fn store_url_with_a_password_is_refused() {
        let yaml = MINIMAL.replace("sqlite://x.db", "postgres://u:pw@h/db");
        let c: EprConfig = parse_yaml(&yaml, "t").unwrap();
        let err = c.store_url().unwrap_err().to_string();
        assert!(err.contains("url-env") && !err.contains("pw"), "{err}");
        let yaml = MINIMAL.replace("sqlite://x.db", "postgres://u@h/db");
        let c: EprConfig = parse_yaml(&yaml, "t").unwrap();
        assert_eq!(c.store_url().unwrap(), "postgres://u@h/db");
    }

    #[test]
    fn typos_and_inline_tokens_are_refused() {
        let typo = MINIMAL.replace("  store:", "  limit:\n    max-batch: 5\n  store:");
        assert!(parse_yaml::<EprConfig>(&typo, "t").is_err());
        let inline = "epr:\n  http:\n    listen: 127.0.0.1:0\n  store:\n    url: sqlite://x.db\nauth:\n  enabled: true\n  tokens:\n    - name: a\n      token: secret\n      access: read\n";
        assert!(parse_yaml::<EprConfig>(inline, "t").is_err());
    }
}
