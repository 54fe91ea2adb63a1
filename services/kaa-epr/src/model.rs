//! The register's data model: endpoints (ID, app version, metadata), endpoint
//! tokens (ID, status, hash) and how tokens are made.
//!
//! # Tokens
//!
//! An endpoint token is 256 bits from the operating system's random generator
//! (`getrandom`), written as 64 lowercase hex digits: a valid MQTT topic level and
//! NATS subject token, so a device can put it in its 1/KP topics as it is. The
//! register keeps only its SHA-256 (hex) and a token ID (a UUID v4); the token
//! itself is returned once, when it is issued, and never stored, listed or logged.
//! A plain hash (no salt, no stretching) is enough because the token has 256 bits
//! of entropy: there is nothing to guess from a list of likely tokens.
//!
//! # Token statuses
//!
//! `active` → `suspended` → `active` (reactivate) any number of times; `active` or
//! `suspended` → `revoked`, which is final. Only an active token identifies its
//! endpoint.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

pub use kaa_ism::UnixMillis;

pub use kaa_service::names::{AppVersionName, EndpointId, NameError, format_iso8601};
pub use kaa_service::now;

/// The length of an endpoint token: 32 random bytes as hex.
pub const TOKEN_HEX_LEN: usize = 64;

/// A token's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum TokenStatus {
    /// Identifies its endpoint.
    Active,
    /// Temporarily refused; can be reactivated.
    Suspended,
    /// Refused for good.
    Revoked,
}

impl TokenStatus {
    /// `active`, `suspended` or `revoked`.
    pub fn as_str(self) -> &'static str {
        match self {
            TokenStatus::Active => "active",
            TokenStatus::Suspended => "suspended",
            TokenStatus::Revoked => "revoked",
        }
    }

    /// The status named `s`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "active" => Some(TokenStatus::Active),
            "suspended" => Some(TokenStatus::Suspended),
            "revoked" => Some(TokenStatus::Revoked),
            _ => None,
        }
    }

    /// Whether a token may move from `self` to `target` (see the module docs).
    /// Moving to the status it has is allowed (and changes nothing).
    pub fn can_move_to(self, target: TokenStatus) -> bool {
        self == target || self != TokenStatus::Revoked
    }
}

impl fmt::Display for TokenStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An endpoint's metadata: a JSON object.
pub type Metadata = Map<String, Value>;

/// A registered endpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct Endpoint {
    /// The endpoint ID.
    pub endpoint_id: EndpointId,
    /// The app version it runs.
    pub app_version: AppVersionName,
    /// Its metadata.
    pub metadata: Metadata,
    /// When it was registered.
    pub created: UnixMillis,
    /// When its app version or metadata last changed.
    pub updated: UnixMillis,
}

/// An endpoint to register.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEndpoint {
    /// The endpoint ID.
    pub endpoint_id: EndpointId,
    /// The app version it runs.
    pub app_version: AppVersionName,
    /// Its metadata.
    pub metadata: Metadata,
}

/// A token as the register keeps it: never the token itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRecord {
    /// The token ID (UUID v4).
    pub token_id: String,
    /// The endpoint it identifies.
    pub endpoint_id: EndpointId,
    /// Its status.
    pub status: TokenStatus,
    /// When it was issued.
    pub created: UnixMillis,
    /// When its status last changed.
    pub updated: UnixMillis,
}

/// A freshly made token: the secret (to hand out once) and what is stored.
#[derive(Clone)]
pub struct NewToken {
    /// The token ID (UUID v4).
    pub token_id: String,
    /// The token (64 hex digits): shown once, never stored.
    pub token: String,
    /// Its SHA-256, hex: what the store keeps.
    pub hash: String,
}

impl fmt::Debug for NewToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NewToken")
            .field("token_id", &self.token_id)
            .field("token", &"<redacted>")
            .finish_non_exhaustive()
    }
}

/// The operating system's random generator failed.
#[derive(Debug, Clone, thiserror::Error)]
#[error("no randomness for a token: {0}")]
pub struct RandomError(String);

impl NewToken {
    /// A new random token with a new token ID.
    pub fn generate() -> Result<Self, RandomError> {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes).map_err(|e| RandomError(e.to_string()))?;
        let token = hex::encode(bytes);
        let hash = token_hash(&token);
        Ok(Self {
            token_id: uuid::Uuid::new_v4().to_string(),
            token,
            hash,
        })
    }
}

/// The SHA-256 of a token, lowercase hex: the key the store looks tokens up by.
pub fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_256_bit_hex_and_hashed() {
        let a = NewToken::generate().unwrap();
        let b = NewToken::generate().unwrap();
        assert_eq!(a.token.len(), TOKEN_HEX_LEN);
        assert!(a.token.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a.token, b.token);
        assert_ne!(a.token_id, b.token_id);
        assert_eq!(a.hash, token_hash(&a.token));
        assert_ne!(a.hash, a.token);
        assert!(
            EndpointId::new(a.token.clone()).is_ok(),
            "a valid topic level"
        );
        assert!(!format!("{a:?}").contains(&a.token));
    }

    #[test]
    fn status_transitions() {
        use TokenStatus::*;
        assert!(Active.can_move_to(Suspended));
        assert!(Suspended.can_move_to(Active));
        assert!(Suspended.can_move_to(Revoked));
        assert!(!Revoked.can_move_to(Active));
        assert!(Revoked.can_move_to(Revoked));
        assert_eq!(TokenStatus::parse("revoked"), Some(Revoked));
    }
}
