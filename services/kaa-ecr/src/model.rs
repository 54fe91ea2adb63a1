//! The ECR data model: validated names, content-derived config IDs, stored
//! configurations and status records.
//!
//! # Names
//!
//! Application version names and endpoint IDs become NATS subject tokens (3/ISM) and
//! MQTT topic levels (1/KP), and config names become a 1/KP topic level
//! (`config/json/<name>`). They are validated where they enter ECR (REST path or
//! query, CDTP request, bus event) and never stored when invalid:
//!
//! - [`AppVersionName`] and [`EndpointId`]: 1 to [`MAX_NAME_LEN`] bytes, no `.`, `*`,
//!   `>` (NATS), no `/`, `+`, `#` (MQTT), no whitespace or control character.
//! - [`ConfigName`]: 7/CMP `^[a-zA-Z0-9_-]+$`, 1 to [`MAX_NAME_LEN`] bytes.
//!
//! # The default name
//!
//! A configuration requested or stored without a name is the configuration named
//! [`DEFAULT_CONFIG_NAME`] (`default`): REST without `?name=` and REST with
//! `?name=default` address the same configuration; a 6/CDTP request with `configName`
//! null or `"default"` asks for it; a 7/CMP device reaches it on `config/json` (no name
//! level). Responses always carry the name, so `"name": "default"` for it, and a
//! `ConfigUpdated` event carries `configName` only for other names.
//!
//! # Config IDs
//!
//! A config ID is derived from the content: the SHA-256 of the content's canonical JSON
//! serialisation ([`canonical_json`]: object keys sorted by their UTF-8 bytes, no
//! insignificant whitespace, strings escaped as `serde_json` escapes them, numbers as
//! `serde_json` prints them), as lowercase hex, truncated to the first 32 hex digits
//! (128 bits). Storing identical content again therefore keeps the ID, creates no new
//! version and emits no event. The ID is opaque to 7/CMP clients; the canonical form
//! and the hash are kaa-cmp's ([`kaa_cmp::canonical`], where they are documented as
//! protocol), so a device taking configuration deltas can verify a patched document.

use std::fmt;

use serde_json::Value;

use kaa_ism::UnixMillis;

/// The name of the configuration that is addressed without a name.
pub const DEFAULT_CONFIG_NAME: &str = "default";

pub use kaa_service::names::{
    AppVersionName, EndpointId, MAX_NAME_LEN, NameError, check_len, validate_token_name,
};

/// How many hex digits of the SHA-256 make a config ID.
pub use kaa_cmp::canonical::CONFIG_ID_HEX_LEN;

const CONFIG_NAME_RULE: &str = "config names match ^[a-zA-Z0-9_-]+$";

/// A validated configuration name; see the module docs for the `default` name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConfigName(String);

impl ConfigName {
    /// Validates `name` against 7/CMP `^[a-zA-Z0-9_-]+$`.
    pub fn new(name: impl Into<String>) -> Result<Self, NameError> {
        let name = name.into();
        check_len(&name, "config name")?;
        if let Some(found) = name
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-'))
        {
            return Err(NameError::InvalidCharacter {
                what: "config name",
                name,
                found,
                rule: CONFIG_NAME_RULE,
            });
        }
        Ok(Self(name))
    }

    /// The name `default`.
    pub fn default_name() -> Self {
        Self(DEFAULT_CONFIG_NAME.to_owned())
    }

    /// `None` (no name given) is the `default` name; anything else is validated.
    pub fn from_optional(name: Option<&str>) -> Result<Self, NameError> {
        match name {
            None => Ok(Self::default_name()),
            Some(name) => Self::new(name),
        }
    }

    /// Whether this is the `default` name.
    pub fn is_default(&self) -> bool {
        self.0 == DEFAULT_CONFIG_NAME
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for ConfigName {
    fn default() -> Self {
        Self::default_name()
    }
}

impl fmt::Display for ConfigName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Which configuration slot: the app version's default, or one endpoint's own.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Scope {
    /// The default configuration of an application version.
    Default {
        /// The application version.
        app_version: AppVersionName,
    },
    /// The endpoint-specific configuration of an endpoint in an application version.
    Endpoint {
        /// The endpoint.
        endpoint_id: EndpointId,
        /// The application version.
        app_version: AppVersionName,
    },
}

impl Scope {
    /// The application version of this slot.
    pub fn app_version(&self) -> &AppVersionName {
        match self {
            Scope::Default { app_version } | Scope::Endpoint { app_version, .. } => app_version,
        }
    }

    /// The endpoint, for an endpoint-specific slot.
    pub fn endpoint_id(&self) -> Option<&EndpointId> {
        match self {
            Scope::Default { .. } => None,
            Scope::Endpoint { endpoint_id, .. } => Some(endpoint_id),
        }
    }

    /// The endpoint column value the stores use: `""` for the default slot (endpoint
    /// IDs are never empty, so this cannot collide).
    pub fn endpoint_key(&self) -> &str {
        self.endpoint_id().map_or("", EndpointId::as_str)
    }
}

/// Configuration content ready to store: canonical JSON text and its config ID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Content {
    /// The canonical JSON serialisation ([`canonical_json`]).
    pub json: String,
    /// The content-derived config ID ([`config_id`]).
    pub config_id: String,
}

impl Content {
    /// Canonicalises `value` and derives its config ID.
    pub fn from_value(value: &Value) -> Self {
        let json = canonical_json(value);
        let config_id = config_id(&json);
        Self { json, config_id }
    }
}

/// The canonical JSON serialisation used for config IDs and storage, and the config
/// ID of canonical JSON text: kaa-cmp's definitions, which are part of the protocol for
/// devices that take configuration deltas ([`kaa_cmp::canonical`]). ECR has no copy of
/// its own, so the IDs it stores are the IDs a device verifies.
pub use kaa_cmp::canonical::{canonical_json, config_id};

/// A stored configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredConfig {
    /// The configuration's name (`default` for the unnamed one).
    pub name: ConfigName,
    /// The content-derived config ID.
    pub config_id: String,
    /// The canonical JSON text.
    pub content: String,
    /// When this slot was first written.
    pub created: UnixMillis,
    /// When the content last changed.
    pub updated: UnixMillis,
}

/// Where an effective configuration came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The endpoint's own configuration.
    Endpoint,
    /// The application version's default.
    Default,
}

/// The state of one (endpoint, app version, name, config ID) in the status history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryStatus {
    /// Sent to the endpoint's CMX, no confirmation yet.
    Dispatched,
    /// The endpoint reported a 2xx status.
    Applied,
    /// The endpoint reported a non-2xx status.
    Rejected,
}

impl DeliveryStatus {
    /// The name used in storage and the REST API.
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Dispatched => "DISPATCHED",
            DeliveryStatus::Applied => "APPLIED",
            DeliveryStatus::Rejected => "REJECTED",
        }
    }

    /// Parses [`DeliveryStatus::as_str`] output.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "DISPATCHED" => Some(DeliveryStatus::Dispatched),
            "APPLIED" => Some(DeliveryStatus::Applied),
            "REJECTED" => Some(DeliveryStatus::Rejected),
            _ => None,
        }
    }
}

/// What happened to a configuration on its way to an endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StatusEvent {
    /// ECR sent this configuration in a 6/CDTP response, or a rollout step
    /// announced it to an online endpoint (see [`crate::rollout`]).
    Dispatched,
    /// The endpoint confirmed it (`endpoint.config.applied`, or a 6/CDTP request that
    /// carried the current config ID: "Implicitly applied").
    Confirmed {
        /// The status code the endpoint reported (2xx = applied).
        status_code: i32,
        /// The reason phrase, if any.
        reason_phrase: Option<String>,
    },
}

/// One row of the status history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusRecord {
    /// The endpoint.
    pub endpoint_id: String,
    /// The application version.
    pub app_version: String,
    /// The configuration name.
    pub name: String,
    /// The configuration ID.
    pub config_id: String,
    /// The latest state.
    pub status: DeliveryStatus,
    /// When ECR last dispatched it.
    pub last_dispatched: Option<UnixMillis>,
    /// When the endpoint last confirmed or rejected it.
    pub last_confirmed: Option<UnixMillis>,
    /// The last confirmation's status code.
    pub status_code: Option<i32>,
    /// The last confirmation's reason phrase.
    pub reason_phrase: Option<String>,
}

/// A filter and page of the status history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusQuery {
    /// Required: the endpoint.
    pub endpoint_id: EndpointId,
    /// Optional: only this application version.
    pub app_version: Option<AppVersionName>,
    /// Optional: only this config ID.
    pub config_id: Option<String>,
    /// Zero-based page number.
    pub page: u32,
    /// Page size (at least 1).
    pub size: u32,
}

/// One page of results with the total count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page<T> {
    /// The items of this page.
    pub content: Vec<T>,
    /// How many items match in total.
    pub total_elements: u64,
}

pub use kaa_service::names::format_iso8601;

pub use kaa_service::now;

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn token_names_reject_subject_and_topic_characters() {
        for bad in [
            "a.b", "a*", "a>", "a/b", "a+", "a#", "a b", "a\tb", "a\u{0}", "",
        ] {
            assert!(EndpointId::new(bad).is_err(), "{bad:?} accepted");
            assert!(AppVersionName::new(bad).is_err(), "{bad:?} accepted");
        }
        assert!(AppVersionName::new("smartKettleV1").is_ok());
        assert!(EndpointId::new("b197e391-1d13-403b-83f5-87bdd44888cf").is_ok());
        assert!(EndpointId::new("x".repeat(MAX_NAME_LEN + 1)).is_err());
    }

    #[test]
    fn config_names_follow_cmp() {
        assert!(ConfigName::new("net_work-2").is_ok());
        for bad in ["a.b", "a b", "ä", "", "a/b"] {
            assert!(ConfigName::new(bad).is_err(), "{bad:?} accepted");
        }
        assert!(ConfigName::from_optional(None).unwrap().is_default());
    }

    #[test]
    fn config_id_ignores_key_order_and_whitespace() {
        let a: Value = serde_json::from_str(r#"{"b": 1, "a": [1, {"d": 2, "c": 3}]}"#).unwrap();
        let b: Value = serde_json::from_str(r#"{"a":[1,{"c":3,"d":2}],"b":1}"#).unwrap();
        let ca = Content::from_value(&a);
        assert_eq!(ca, Content::from_value(&b));
        assert_eq!(ca.json, r#"{"a":[1,{"c":3,"d":2}],"b":1}"#);
        assert_eq!(ca.config_id.len(), CONFIG_ID_HEX_LEN);
        assert_ne!(
            ca.config_id,
            Content::from_value(&json!({"b": 2})).config_id
        );
        // SHA-256("null") starts with 74234e98afe7498fb5daf1f36ac2d78a.
        assert_eq!(config_id("null"), "74234e98afe7498fb5daf1f36ac2d78a");
    }

    /// IDs already stored must never change: this one was computed independently
    /// (Python's `hashlib.sha256` over the canonical text, first 32 hex digits).
    #[test]
    fn stored_config_ids_are_pinned() {
        let content = Content::from_value(&json!({"b": 1, "a": [1, {"d": 2, "c": 3}]}));
        assert_eq!(content.json, r#"{"a":[1,{"c":3,"d":2}],"b":1}"#);
        assert_eq!(content.config_id, "e23f8d4197e06fb14090fd7ae275b6f9");
        let teapot = json!({"ssid": "Smart Teapot", "mode": "AP", "rate": 1.5, "tags": ["a", "b"]});
        assert_eq!(
            Content::from_value(&teapot).config_id,
            "bd075b2e150a9987b4152cfaafc7230d"
        );
    }

    #[test]
    fn iso8601() {
        assert_eq!(format_iso8601(UnixMillis(0)), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            format_iso8601(UnixMillis(1_490_303_342_158)),
            "2017-03-23T21:09:02.158Z"
        );
        assert_eq!(
            format_iso8601(UnixMillis(951_782_400_001)),
            "2000-02-29T00:00:00.001Z"
        );
    }
}
