//! The register's durable store behind one async trait, [`EndpointStore`].
//!
//! `postgres://…` (or `postgresql://…`) opens [`PostgresStore`] (tokio-postgres, a
//! deadpool pool of 16; replicas may share it). `sqlite://<path>` opens
//! [`SqliteStore`], the embedded store: one SQLite file
//! (rusqlite, bundled library), WAL journal, `synchronous=FULL` (a commit is on
//! disk before it returns), one writer connection and a pool of up to 8 read-only
//! reader connections (reads run beside writes and beside each other), blocking
//! calls on tokio's blocking pool, and an
//! exclusive `flock` on `<database>.lock` so that a second register on the same file
//! refuses to start (the embedded store serves one replica). Every write is one
//! transaction: a batch registration stores every endpoint and token or none.
//!
//! Tokens are stored as their SHA-256 only (see [`crate::model`]).

mod postgres;
mod sqlite;

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;

use kaa_ism::UnixMillis;

use super::model::{
    AppVersionName, Endpoint, EndpointId, Metadata, NewEndpoint, TokenRecord, TokenStatus,
};

pub use postgres::PostgresStore;
pub use sqlite::SqliteStore;

/// A store operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// An endpoint with this ID is already registered; nothing was stored.
    #[error("endpoint {0:?} is already registered")]
    AlreadyRegistered(String),
    /// The store URL is not `sqlite://…`, `postgres://…` or `postgresql://…`.
    /// The scheme given (never the rest of the URL, which may hold a password).
    #[error("unsupported store URL scheme {0:?} (expected sqlite://<path> or postgres://…)")]
    UnsupportedUrl(String),
    /// The database failed (I/O, SQL).
    #[error("store backend error: {0}")]
    Backend(String),
    /// The database holds something this version cannot read.
    #[error("store data is corrupt: {0}")]
    Corrupt(String),
    /// The SQLite database is already open in another register.
    #[error(
        "the SQLite store {} is in use by another register (it holds {}); the embedded store serves one replica",
        path.display(),
        lock.display()
    )]
    InUse {
        /// The database file.
        path: PathBuf,
        /// The lock file another process holds.
        lock: PathBuf,
    },
}

impl StoreError {
    pub(crate) fn backend(e: impl std::fmt::Display) -> Self {
        StoreError::Backend(e.to_string())
    }
}

/// A token with the endpoint it identifies, as validation needs them.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenOwner {
    /// The token.
    pub token: TokenRecord,
    /// Its endpoint.
    pub endpoint: Endpoint,
}

/// What unregistering removed.
#[derive(Debug, Clone, PartialEq)]
pub struct Unregistered {
    /// The endpoint as it was.
    pub endpoint: Endpoint,
    /// Its tokens that were active or suspended (now gone).
    pub live_token_ids: Vec<String>,
}

/// The result of a token status change.
#[derive(Debug, Clone, PartialEq)]
pub enum Transition {
    /// Changed (or already had that status: `changed` false).
    Done {
        /// The token after the change.
        token: TokenRecord,
        /// Its endpoint's app version.
        app_version: AppVersionName,
        /// Whether the status changed.
        changed: bool,
    },
    /// The token is revoked, which is final.
    Final(TokenRecord),
}

/// The register's storage.
#[async_trait]
pub trait EndpointStore: Send + Sync + std::fmt::Debug {
    /// Registers `endpoints` with their tokens' `(endpoint index, token ID, hash)`,
    /// all in one transaction: [`StoreError::AlreadyRegistered`] (naming the first
    /// one) and nothing stored when any endpoint exists.
    async fn register(
        &self,
        endpoints: Vec<NewEndpoint>,
        tokens: Vec<(usize, String, String)>,
        now: UnixMillis,
    ) -> Result<(), StoreError>;

    /// The endpoint with this ID.
    async fn endpoint(&self, id: &EndpointId) -> Result<Option<Endpoint>, StoreError>;

    /// The endpoints with these IDs that are registered, in any order, each once
    /// (the bus's metadata lookup). The default asks [`EndpointStore::endpoint`]
    /// for each; the stores read them all in one read.
    async fn endpoints(&self, ids: &[EndpointId]) -> Result<Vec<Endpoint>, StoreError> {
        let mut found = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(endpoint) = self.endpoint(id).await?
                && !found
                    .iter()
                    .any(|e: &Endpoint| e.endpoint_id == endpoint.endpoint_id)
            {
                found.push(endpoint);
            }
        }
        Ok(found)
    }

    /// Removes the endpoint and its tokens.
    async fn unregister(&self, id: &EndpointId) -> Result<Option<Unregistered>, StoreError>;

    /// Moves the endpoint to `app_version`; the previous app version, `None` when
    /// there is no such endpoint.
    async fn set_app_version(
        &self,
        id: &EndpointId,
        app_version: &AppVersionName,
        now: UnixMillis,
    ) -> Result<Option<AppVersionName>, StoreError>;

    /// Replaces the endpoint's metadata; `false` when there is no such endpoint.
    async fn set_metadata(
        &self,
        id: &EndpointId,
        metadata: &Metadata,
        now: UnixMillis,
    ) -> Result<bool, StoreError>;

    /// Stores a new active token for the endpoint; `None` when there is no such
    /// endpoint.
    async fn add_token(
        &self,
        id: &EndpointId,
        token_id: &str,
        hash: &str,
        now: UnixMillis,
    ) -> Result<Option<TokenRecord>, StoreError>;

    /// The endpoint's tokens, oldest first; `None` when there is no such endpoint.
    async fn tokens(&self, id: &EndpointId) -> Result<Option<Vec<TokenRecord>>, StoreError>;

    /// Moves a token to `target`; `None` when there is no such token.
    async fn set_token_status(
        &self,
        token_id: &str,
        target: TokenStatus,
        now: UnixMillis,
    ) -> Result<Option<Transition>, StoreError>;

    /// The token with this hash and its endpoint.
    async fn find_token(&self, hash: &str) -> Result<Option<TokenOwner>, StoreError>;
}

/// Opens the store a URL names: `sqlite://<path>` or `postgres://…` /
/// `postgresql://…`.
pub async fn open(url: &str) -> Result<Arc<dyn EndpointStore>, StoreError> {
    match url.strip_prefix("sqlite://") {
        Some(path) if !path.is_empty() => Ok(Arc::new(SqliteStore::open(path).await?)),
        Some(_) => Err(StoreError::UnsupportedUrl("sqlite (no path)".into())),
        None if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
            Ok(Arc::new(PostgresStore::connect(url).await?))
        }
        None => Err(StoreError::UnsupportedUrl(
            url.split_once("://")
                .map_or("", |(scheme, _)| scheme)
                .to_owned(),
        )),
    }
}
