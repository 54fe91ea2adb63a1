//! Bearer-token authentication for the services' REST APIs: the `auth` section of a
//! service configuration ([`AuthConfig`]) and the [`Authenticator`] that checks
//! `Authorization: Bearer <token>` on every request ([`authenticate`], an axum
//! middleware).
//!
//! GET and HEAD need a `read` or `read-write` token; every other method needs
//! `read-write`. A missing or unknown token gets 401 with `{"message"}` and
//! `WWW-Authenticate: Bearer realm="<realm>"`; a read-only token on a write gets
//! 403. Tokens are compared in constant time per token and never logged (only
//! their names are).
//!
//! ```
//! use axum::http::{HeaderMap, Method, StatusCode, header};
//! use kaa_service::auth::{Access, Authenticator};
//!
//! let auth = Authenticator::with_tokens([
//!     ("admin".to_owned(), "rw-token".to_owned(), Access::ReadWrite),
//!     ("viewer".to_owned(), "ro-token".to_owned(), Access::Read),
//! ]);
//! let mut headers = HeaderMap::new();
//! headers.insert(header::AUTHORIZATION, "Bearer ro-token".parse()?);
//! assert!(auth.check(&Method::GET, &headers).is_ok());
//! assert_eq!(auth.check(&Method::POST, &headers).unwrap_err().status(), StatusCode::FORBIDDEN);
//! assert_eq!(auth.check(&Method::GET, &HeaderMap::new()).unwrap_err().status(), StatusCode::UNAUTHORIZED);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::{ConfigError, Secret, json_error};

/// `auth`: bearer tokens for the REST API.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct AuthConfig {
    /// `auth.enabled`: must be said explicitly; `false` opens the API to anyone who
    /// can reach it (local use only).
    pub enabled: bool,
    /// `auth.tokens`.
    #[serde(default)]
    pub tokens: Vec<TokenConfig>,
}

/// One API token.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct TokenConfig {
    /// A name for logs (the token itself is never logged).
    pub name: String,
    /// The token, preferably `{ env: VAR }`.
    pub token: Secret,
    /// What it may do.
    pub access: Access,
}

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Access {
    /// GET only.
    Read,
    /// Everything.
    ReadWrite,
}

/// A refused request: 401 or 403 and a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthError {
    status: StatusCode,
    message: String,
    realm: &'static str,
}

impl AuthError {
    /// 401 or 403.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// What went wrong (never the token).
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl IntoResponse for AuthError {
    fn into_response(self) -> Response {
        let mut response = json_error(self.status, self.message);
        if self.status == StatusCode::UNAUTHORIZED
            && let Ok(v) = HeaderValue::from_str(&format!("Bearer realm=\"{}\"", self.realm))
        {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, v);
        }
        response
    }
}

/// Bearer-token authentication (see the module docs).
#[derive(Clone)]
pub struct Authenticator {
    enabled: bool,
    realm: &'static str,
    tokens: Arc<Vec<(String, Vec<u8>, Access)>>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("enabled", &self.enabled)
            .field(
                "tokens",
                &self.tokens.iter().map(|t| (&t.0, t.2)).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl Authenticator {
    /// No authentication (`auth.enabled: false`).
    pub fn disabled() -> Self {
        Self {
            enabled: false,
            realm: "kaa",
            tokens: Arc::new(Vec::new()),
        }
    }

    /// Tokens given directly: `(name, token, access)`.
    pub fn with_tokens(tokens: impl IntoIterator<Item = (String, String, Access)>) -> Self {
        Self {
            enabled: true,
            realm: "kaa",
            tokens: Arc::new(
                tokens
                    .into_iter()
                    .map(|(n, t, a)| (n, t.into_bytes(), a))
                    .collect(),
            ),
        }
    }

    /// From `auth`, resolving tokens given by environment variable.
    pub fn from_config(config: &AuthConfig) -> Result<Self, ConfigError> {
        if !config.enabled {
            return Ok(Self::disabled());
        }
        let mut tokens = Vec::new();
        for t in &config.tokens {
            let value = t
                .token
                .resolve()
                .map_err(|e| ConfigError::Invalid(format!("auth.tokens[{}].token: {e}", t.name)))?;
            tokens.push((t.name.clone(), value, t.access));
        }
        Ok(Self::with_tokens(tokens))
    }

    /// The realm named in `WWW-Authenticate` (default `kaa`; each service names
    /// itself, e.g. `ecr`).
    pub fn with_realm(mut self, realm: &'static str) -> Self {
        self.realm = realm;
        self
    }

    /// Whether authentication is on.
    pub fn is_enabled(&self) -> bool {
        self.enabled
    }

    fn lookup(&self, presented: &[u8]) -> Option<(&str, Access)> {
        // Compare against every token without stopping early (constant time per token).
        let mut found = None;
        for (name, token, access) in self.tokens.iter() {
            let same_len = token.len() == presented.len();
            let diff = token
                .iter()
                .zip(presented)
                .fold(0u8, |acc, (a, b)| acc | (a ^ b));
            if same_len && diff == 0 && found.is_none() {
                found = Some((name.as_str(), *access));
            }
        }
        found
    }

    fn refuse(&self, status: StatusCode, message: impl Into<String>) -> AuthError {
        AuthError {
            status,
            message: message.into(),
            realm: self.realm,
        }
    }

    /// Checks one request: `Ok` when it may proceed.
    pub fn check(&self, method: &Method, headers: &HeaderMap) -> Result<(), AuthError> {
        if !self.enabled {
            return Ok(());
        }
        let token = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                let (scheme, token) = v.split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
            })
            .ok_or_else(|| {
                self.refuse(
                    StatusCode::UNAUTHORIZED,
                    "missing bearer token (Authorization: Bearer <token>)",
                )
            })?;
        let (name, access) = self
            .lookup(token.as_bytes())
            .ok_or_else(|| self.refuse(StatusCode::UNAUTHORIZED, "unknown bearer token"))?;
        let write = !matches!(*method, Method::GET | Method::HEAD);
        if write && access == Access::Read {
            tracing::debug!(token = name, %method, "read-only token refused a write");
            return Err(self.refuse(
                StatusCode::FORBIDDEN,
                format!("token {name:?} is read-only; {method} needs read-write access"),
            ));
        }
        Ok(())
    }
}

/// The axum middleware: `route_layer(middleware::from_fn_with_state(auth, authenticate))`.
pub async fn authenticate(
    State(auth): State<Authenticator>,
    request: Request,
    next: Next,
) -> Response {
    match auth.check(request.method(), request.headers()) {
        Ok(()) => next.run(request).await,
        Err(e) => e.into_response(),
    }
}
