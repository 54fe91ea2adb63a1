//! Validated names shared by the services: application version names and endpoint
//! IDs become NATS subject tokens (3/ISM) and MQTT topic levels (1/KP), so they are
//! checked where they enter a service and never stored when invalid: 1 to
//! [`MAX_NAME_LEN`] bytes, no `.`, `*`, `>` (NATS), no `/`, `+`, `#` (MQTT), no
//! whitespace or control character.
//!
//! ```
//! use kaa_service::names::{AppVersionName, EndpointId};
//!
//! assert!(AppVersionName::new("smartKettleV1").is_ok());
//! assert!(EndpointId::new("kettle.1").is_err());
//! ```

use std::fmt;

use kaa_ism::UnixMillis;

/// The longest accepted app version name, endpoint ID or config name, in bytes.
pub const MAX_NAME_LEN: usize = 256;

/// A name that was rejected at the boundary.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NameError {
    /// The name is empty.
    #[error("{what} is empty")]
    Empty {
        /// Which kind of name, e.g. `endpoint ID`.
        what: &'static str,
    },
    /// The name is longer than [`MAX_NAME_LEN`] bytes.
    #[error("{what} is longer than {max} bytes")]
    TooLong {
        /// Which kind of name.
        what: &'static str,
        /// The limit.
        max: usize,
    },
    /// The name holds a character that would change a NATS subject or MQTT topic.
    #[error("{what} {name:?} contains {found:?}, which is not allowed ({rule})")]
    InvalidCharacter {
        /// Which kind of name.
        what: &'static str,
        /// The rejected name.
        name: String,
        /// The first offending character.
        found: char,
        /// The rule that applies.
        rule: &'static str,
    },
}

const TOKEN_RULE: &str = "no '.', '*', '>', '/', '+', '#', whitespace or control characters";

/// Checks that a name is 1 to [`MAX_NAME_LEN`] bytes long.
pub fn check_len(name: &str, what: &'static str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty { what });
    }
    if name.len() > MAX_NAME_LEN {
        return Err(NameError::TooLong {
            what,
            max: MAX_NAME_LEN,
        });
    }
    Ok(())
}

/// [`validate_token_name`]'s character rule as an ECMA-262 / JSON Schema regular
/// expression, for OpenAPI documents: no `.`, `*`, `>`, `/`, `+`, `#`, whitespace
/// (`char::is_whitespace`) or control character (`char::is_control`), spelled out
/// as ranges because `\s` means different sets in the ECMA, Python and Rust
/// dialects that read the documents. The byte-length limit ([`MAX_NAME_LEN`]) is not
/// expressible in JSON Schema (`maxLength` counts characters). ECR's and the
/// register's documents carry it; ECR's tests check it accepts exactly what
/// [`validate_token_name`] accepts.
pub const TOKEN_NAME_PATTERN: &str =
    r"^[^.*>/+#\x00-\x20\x7f-\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]+$";

/// Validates a name that becomes a NATS subject token and an MQTT topic level.
pub fn validate_token_name(name: &str, what: &'static str) -> Result<(), NameError> {
    check_len(name, what)?;
    if let Some(found) = name.chars().find(|c| {
        matches!(c, '.' | '*' | '>' | '/' | '+' | '#') || c.is_whitespace() || c.is_control()
    }) {
        return Err(NameError::InvalidCharacter {
            what,
            name: name.to_owned(),
            found,
            rule: TOKEN_RULE,
        });
    }
    Ok(())
}

macro_rules! token_name {
    ($(#[$doc:meta])* $ty:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $ty(String);

        impl $ty {
            /// Validates `name`.
            pub fn new(name: impl Into<String>) -> Result<Self, NameError> {
                let name = name.into();
                validate_token_name(&name, $what)?;
                Ok(Self(name))
            }

            /// The name.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $ty {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}

token_name!(
    /// A validated application version name (e.g. `smartKettleV1`).
    AppVersionName,
    "application version name"
);
token_name!(
    /// A validated endpoint ID.
    EndpointId,
    "endpoint ID"
);

/// Formats Unix milliseconds as ISO-8601 UTC with milliseconds,
/// e.g. `2017-03-23T21:09:02.158Z`.
pub fn format_iso8601(t: UnixMillis) -> String {
    let ms = t.0;
    let secs = ms.div_euclid(1000);
    let millis = ms.rem_euclid(1000);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        sod / 3600,
        (sod % 3600) / 60,
        sod % 60
    )
}
