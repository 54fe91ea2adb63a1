//! 7/CMP resource paths: `/config/json[/<name>]` and `/applied/json[/<name>]`.
//!
//! The resource path is what 4/ESP `ClientData.resourcePath` carries: the part of
//! the 1/KP topic after the endpoint token, with a leading `/` and without the
//! request ID.
//!
//! # Configuration names
//!
//! A name matches `^[a-zA-Z0-9_-]+$` (7/CMP) and is at most [`MAX_NAME_LEN`]
//! bytes (a limit of this crate, which keeps per-endpoint memory bounded; 7/CMP
//! sets none).
//!
//! **No name means the default configuration, and the default configuration is
//! the one named `default`** (Kaa: "no name means the name default"). So
//! `/config/json` and `/config/json/default` address the same configuration:
//! [`ResourcePath::config_name`] returns `None` for both, and that is what goes
//! into 6/CDTP `configName` (whose RFC default, null, means `default`). The
//! spelling a device used is kept ([`ResourcePath::name`]) so that answers and
//! pushes go back to the topic the device listens on.
//!
//! ```
//! use kaa_cmp::resource::{ResourceKind, ResourcePath};
//!
//! let path = ResourcePath::parse("/config/json/network")?;
//! assert_eq!(path.kind(), ResourceKind::Config);
//! assert_eq!(path.config_name(), Some("network"));
//!
//! // The default configuration, spelled two ways.
//! assert_eq!(ResourcePath::parse("/config/json")?.config_name(), None);
//! assert_eq!(ResourcePath::parse("/config/json/default")?.config_name(), None);
//!
//! let applied = ResourcePath::applied(Some("display"))?;
//! assert_eq!(applied.to_string(), "/applied/json/display");
//!
//! assert!(ResourcePath::parse("/config/xml").is_err());
//! assert!(ResourcePath::parse("/config/json/a.b").is_err());
//! # Ok::<(), kaa_cmp::resource::ResourceError>(())
//! ```

use std::fmt;

/// The configuration resource, default configuration.
pub const CONFIG_JSON: &str = "/config/json";
/// The applied-configuration resource, default configuration.
pub const APPLIED_JSON: &str = "/applied/json";
/// The name of the default configuration (Kaa: "no name means the name default").
pub const DEFAULT_NAME: &str = "default";
/// The longest configuration name this crate accepts, in bytes.
pub const MAX_NAME_LEN: usize = 128;

/// Why a resource path or configuration name was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ResourceError {
    /// The path is not a 7/CMP resource.
    #[error(
        "unknown resource path {path:?} (7/CMP resources: /config/json[/<name>], /applied/json[/<name>])"
    )]
    UnknownResource {
        /// The rejected path.
        path: String,
    },
    /// The configuration name does not match `^[a-zA-Z0-9_-]+$` or is too long.
    #[error("invalid configuration name {name:?}: {reason}")]
    InvalidName {
        /// The rejected name.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
}

/// Checks a configuration name: non-empty, `[a-zA-Z0-9_-]` only, at most
/// [`MAX_NAME_LEN`] bytes.
///
/// ```
/// use kaa_cmp::resource::validate_config_name;
/// assert!(validate_config_name("display_settings").is_ok());
/// assert!(validate_config_name("wi fi").is_err());
/// assert!(validate_config_name("").is_err());
/// ```
pub fn validate_config_name(name: &str) -> Result<(), ResourceError> {
    let invalid = |reason| ResourceError::InvalidName {
        name: name.to_owned(),
        reason,
    };
    if name.is_empty() {
        return Err(invalid("it is empty"));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(invalid("it is longer than 128 bytes"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err(invalid("only a-z, A-Z, 0-9, '_' and '-' are allowed"));
    }
    Ok(())
}

/// The canonical form of an optional configuration name: `None` for the default
/// configuration, whether it was given as no name or as `default`.
///
/// ```
/// use kaa_cmp::resource::canonical_config_name;
/// assert_eq!(canonical_config_name(Some("default")), None);
/// assert_eq!(canonical_config_name(None), None);
/// assert_eq!(canonical_config_name(Some("network")), Some("network"));
/// ```
pub fn canonical_config_name(name: Option<&str>) -> Option<&str> {
    name.filter(|n| *n != DEFAULT_NAME)
}

/// Which 7/CMP resource a path addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ResourceKind {
    /// `/config/json[/<name>]`: request (and observe) a configuration.
    Config,
    /// `/applied/json[/<name>]`: report a configuration applied or rejected.
    Applied,
}

impl ResourceKind {
    /// The path of this resource for the default configuration.
    pub fn base_path(self) -> &'static str {
        match self {
            ResourceKind::Config => CONFIG_JSON,
            ResourceKind::Applied => APPLIED_JSON,
        }
    }
}

/// A parsed 7/CMP resource path, borrowing its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ResourcePath<'a> {
    kind: ResourceKind,
    name: Option<&'a str>,
}

impl<'a> ResourcePath<'a> {
    /// Parses `/config/json[/<name>]` or `/applied/json[/<name>]`.
    ///
    /// Strict: no trailing `/`, no extra levels, a valid name.
    pub fn parse(path: &'a str) -> Result<Self, ResourceError> {
        let (kind, rest) = if let Some(rest) = path.strip_prefix(CONFIG_JSON) {
            (ResourceKind::Config, rest)
        } else if let Some(rest) = path.strip_prefix(APPLIED_JSON) {
            (ResourceKind::Applied, rest)
        } else {
            return Err(ResourceError::UnknownResource {
                path: path.to_owned(),
            });
        };
        if rest.is_empty() {
            return Ok(ResourcePath { kind, name: None });
        }
        let Some(name) = rest.strip_prefix('/') else {
            return Err(ResourceError::UnknownResource {
                path: path.to_owned(),
            });
        };
        if name.is_empty() || name.contains('/') {
            return Err(ResourceError::UnknownResource {
                path: path.to_owned(),
            });
        }
        validate_config_name(name)?;
        Ok(ResourcePath {
            kind,
            name: Some(name),
        })
    }

    /// The configuration resource for `name` (`None`: the default configuration).
    pub fn config(name: Option<&'a str>) -> Result<Self, ResourceError> {
        Self::new(ResourceKind::Config, name)
    }

    /// The applied resource for `name` (`None`: the default configuration).
    pub fn applied(name: Option<&'a str>) -> Result<Self, ResourceError> {
        Self::new(ResourceKind::Applied, name)
    }

    /// A resource of `kind` for `name`, validating the name.
    pub fn new(kind: ResourceKind, name: Option<&'a str>) -> Result<Self, ResourceError> {
        if let Some(name) = name {
            validate_config_name(name)?;
        }
        Ok(ResourcePath { kind, name })
    }

    /// Which resource this is.
    pub fn kind(&self) -> ResourceKind {
        self.kind
    }

    /// The name as written in the path (`Some("default")` for `…/json/default`).
    pub fn name(&self) -> Option<&'a str> {
        self.name
    }

    /// The canonical configuration name: `None` for the default configuration
    /// (no name, or `default`). This is the 6/CDTP `configName`.
    pub fn config_name(&self) -> Option<&'a str> {
        canonical_config_name(self.name)
    }
}

impl fmt::Display for ResourcePath<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.kind.base_path())?;
        if let Some(name) = self.name {
            write!(f, "/{name}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_rfc_paths() {
        for (path, kind, name, canonical) in [
            ("/config/json", ResourceKind::Config, None, None),
            (
                "/config/json/network",
                ResourceKind::Config,
                Some("network"),
                Some("network"),
            ),
            (
                "/config/json/display_settings",
                ResourceKind::Config,
                Some("display_settings"),
                Some("display_settings"),
            ),
            (
                "/config/json/default",
                ResourceKind::Config,
                Some("default"),
                None,
            ),
            ("/applied/json", ResourceKind::Applied, None, None),
            (
                "/applied/json/net-2",
                ResourceKind::Applied,
                Some("net-2"),
                Some("net-2"),
            ),
            // 7/CMP allows a configuration called `status` or a number.
            (
                "/config/json/status",
                ResourceKind::Config,
                Some("status"),
                Some("status"),
            ),
            (
                "/config/json/42",
                ResourceKind::Config,
                Some("42"),
                Some("42"),
            ),
        ] {
            let p = ResourcePath::parse(path).unwrap();
            assert_eq!(p.kind(), kind, "{path}");
            assert_eq!(p.name(), name, "{path}");
            assert_eq!(p.config_name(), canonical, "{path}");
            assert_eq!(p.to_string(), path);
        }
    }

    #[test]
    fn rejects_other_paths() {
        for path in [
            "",
            "/",
            "/config",
            "/config/",
            "/config/json/",
            "/config/jsonx",
            "/config/json//a",
            "/config/json/a/b",
            "/config/xml",
            "config/json",
            "/applied",
            "/applied/json/",
            "/CONFIG/JSON",
            "/json",
        ] {
            assert!(
                matches!(
                    ResourcePath::parse(path),
                    Err(ResourceError::UnknownResource { .. })
                ),
                "{path:?} accepted"
            );
        }
        for path in [
            "/config/json/a.b",
            "/config/json/a b",
            "/config/json/+",
            "/config/json/é",
            "/applied/json/*",
        ] {
            assert!(
                matches!(
                    ResourcePath::parse(path),
                    Err(ResourceError::InvalidName { .. })
                ),
                "{path:?} accepted"
            );
        }
        let long = format!("/config/json/{}", "a".repeat(MAX_NAME_LEN + 1));
        assert!(ResourcePath::parse(&long).is_err());
        let longest = format!("/config/json/{}", "a".repeat(MAX_NAME_LEN));
        assert!(ResourcePath::parse(&longest).is_ok());
    }

    #[test]
    fn error_messages_name_the_problem() {
        let e = ResourcePath::parse("/config/json/a.b")
            .unwrap_err()
            .to_string();
        assert!(e.contains("\"a.b\"") && e.contains("only a-z"), "{e}");
        let e = ResourcePath::parse("/telemetry").unwrap_err().to_string();
        assert!(
            e.contains("/telemetry") && e.contains("/config/json"),
            "{e}"
        );
    }

    proptest! {
        #[test]
        fn round_trip(name in proptest::option::of("[a-zA-Z0-9_-]{1,20}"), applied: bool) {
            let p = if applied { ResourcePath::applied(name.as_deref()) } else { ResourcePath::config(name.as_deref()) }.unwrap();
            let s = p.to_string();
            prop_assert_eq!(ResourcePath::parse(&s).unwrap(), p);
        }

        #[test]
        fn parse_never_panics(s in "\\PC{0,40}") {
            let _ = ResourcePath::parse(&s);
        }
    }
}
