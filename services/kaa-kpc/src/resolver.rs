//! Endpoint token resolution: from the token a device puts in its topics to the
//! endpoint ID that extensions (CMX) and repositories (ECR) know it by.
//!
//! KPC asks an [`EndpointTokenResolver`] once per session and token (the first
//! time a session uses a token) and keeps the answer for the session's lifetime.
//! [`TokenTable`], a table from the configuration (`kpc.endpoint-tokens`), is the
//! implementation this crate ships.
//!
//! # Plugging in a 16/ECAP provider
//!
//! In Kaa, tokens are validated by an authentication provider over 16/ECAP: the
//! consumer sends `EndpointTokenValidationRequest { correlationId, timestamp,
//! timeout, appName, token }` to `kaa.v1.service.<provider>.ecap.ep-token-request`
//! with `replyTo` `kaa.v1.replica.<kpc replica>.ecap.ep-token-response`, and the
//! provider answers `EndpointTokenValidationResponse { tokenId?, endpointId?,
//! statusCode, reasonPhrase? }`. A resolver for that is a struct holding an
//! `Arc<dyn kaa_bus::Bus>`, the provider's instance name, a request timeout and a
//! map from app version name to application name (16/ECAP validates per
//! application); its `resolve` encodes the request (Avro, schema in
//! `0016-endpoint-token-validation-request.avsc`), calls
//! [`kaa_bus::Bus::request`] and maps the answer:
//!
//! | 16/ECAP answer | [`ResolveError`] / result |
//! | --- | --- |
//! | `statusCode` 2xx with an `endpointId` | `Ok(ResolvedEndpoint)` |
//! | 404 or 401, or no `endpointId` | [`ResolveError::UnknownToken`] |
//! | 403 | [`ResolveError::WrongAppVersion`] |
//! | timeout, no responders, 5xx | [`ResolveError::Unavailable`] (KPC answers 503; the device retries) |
//!
//! KPC takes any `Arc<dyn EndpointTokenResolver>`
//! ([`KpcServer::bind_with_resolver`](super::KpcServer::bind_with_resolver)); nothing
//! else changes. (This crate has no 16/ECAP codec yet, so the table is the only
//! implementation.)

use std::collections::HashMap;
use std::fmt;

use async_trait::async_trait;

use super::config::TokenEntry;

/// What a token resolves to.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ResolvedEndpoint {
    /// The endpoint ID (a valid 3/ISM subject token).
    pub endpoint_id: String,
}

impl ResolvedEndpoint {
    /// An endpoint ID.
    pub fn new(endpoint_id: impl Into<String>) -> Self {
        Self {
            endpoint_id: endpoint_id.into(),
        }
    }
}

/// Why a token did not resolve. Each case maps to the 1/KP status code the
/// device gets ([`ResolveError::status_code`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ResolveError {
    /// No endpoint has this token: 401.
    #[error("unknown endpoint token")]
    UnknownToken,
    /// The token exists but is not valid for the app version in the topic: 403.
    #[error("the endpoint token is not valid for app version {app_version:?}")]
    WrongAppVersion {
        /// The app version in the topic.
        app_version: String,
    },
    /// The resolver cannot answer now (provider down, timeout): 503.
    #[error("endpoint token resolution is unavailable: {0}")]
    Unavailable(String),
}

impl ResolveError {
    /// The 1/KP status code for the device: 401, 403 or 503.
    pub fn status_code(&self) -> i32 {
        match self {
            ResolveError::UnknownToken => 401,
            ResolveError::WrongAppVersion { .. } => 403,
            ResolveError::Unavailable(_) => 503,
        }
    }
}

/// Resolves endpoint tokens to endpoint IDs (16/ECAP in Kaa; see the
/// [module docs](self) for how a provider plugs in).
#[async_trait]
pub trait EndpointTokenResolver: Send + Sync + fmt::Debug {
    /// The endpoint that `endpoint_token` identifies, for a device that uses it
    /// under `app_version_name`.
    async fn resolve(
        &self,
        app_version_name: &str,
        endpoint_token: &str,
    ) -> Result<ResolvedEndpoint, ResolveError>;
}

/// The token table from the configuration (`kpc.endpoint-tokens`), optionally
/// accepting any token as its own endpoint ID (`kpc.accept-any-token`).
///
/// ```
/// use kaa_kpc::config::TokenEntry;
/// use kaa_kpc::resolver::{EndpointTokenResolver, ResolveError, TokenTable};
///
/// # tokio::runtime::Builder::new_current_thread().build()?.block_on(async {
/// let table = TokenTable::new(
///     [
///         ("tok-1".to_owned(), TokenEntry::EndpointId("ep-1".into())),
///         ("tok-2".to_owned(), TokenEntry::Detailed { endpoint_id: "ep-2".into(), app_version: Some("v2".into()) }),
///     ],
///     false,
/// );
/// assert_eq!(table.resolve("v1", "tok-1").await?.endpoint_id, "ep-1");
/// assert_eq!(table.resolve("v1", "tok-2").await.unwrap_err().status_code(), 403);
/// assert_eq!(table.resolve("v1", "nobody").await, Err(ResolveError::UnknownToken));
/// # Ok::<(), ResolveError>(())
/// # })?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Default)]
pub struct TokenTable {
    entries: HashMap<String, TokenEntry>,
    accept_any: bool,
}

impl fmt::Debug for TokenTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Tokens are credentials of a kind: never print them.
        f.debug_struct("TokenTable")
            .field("tokens", &self.entries.len())
            .field("accept_any", &self.accept_any)
            .finish()
    }
}

impl TokenTable {
    /// A table of `(token, entry)` pairs; `accept_any`: unknown tokens resolve to
    /// themselves.
    pub fn new(entries: impl IntoIterator<Item = (String, TokenEntry)>, accept_any: bool) -> Self {
        Self {
            entries: entries.into_iter().collect(),
            accept_any,
        }
    }

    /// How many tokens the table holds.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when the table holds no token.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[async_trait]
impl EndpointTokenResolver for TokenTable {
    async fn resolve(
        &self,
        app_version_name: &str,
        endpoint_token: &str,
    ) -> Result<ResolvedEndpoint, ResolveError> {
        match self.entries.get(endpoint_token) {
            Some(entry) => match entry.app_version() {
                Some(v) if v != app_version_name => Err(ResolveError::WrongAppVersion {
                    app_version: app_version_name.to_owned(),
                }),
                _ => Ok(ResolvedEndpoint::new(entry.endpoint_id())),
            },
            None if self.accept_any => Ok(ResolvedEndpoint::new(endpoint_token)),
            None => Err(ResolveError::UnknownToken),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn accept_any_and_debug_hides_tokens() {
        let t = TokenTable::new(
            [("secret-tok".to_owned(), TokenEntry::EndpointId("ep".into()))],
            true,
        );
        assert_eq!(t.resolve("v", "other").await.unwrap().endpoint_id, "other");
        assert_eq!(
            t.resolve("v", "secret-tok").await.unwrap().endpoint_id,
            "ep"
        );
        assert!(!format!("{t:?}").contains("secret-tok"));
        assert_eq!(ResolveError::Unavailable("x".into()).status_code(), 503);
        assert_eq!(ResolveError::UnknownToken.status_code(), 401);
    }
}
