//! Durable configuration stores behind one async trait, [`ConfigStore`].
//!
//! Two implementations, chosen by a URL ([`open`]):
//!
//! - `sqlite://<path>` — [`SqliteStore`], the embedded default: one file, SQLite through
//!   rusqlite with the bundled library, WAL journal, `synchronous=FULL` (a commit is on
//!   disk before it returns), blocking calls on `spawn_blocking`. SQLite rather than
//!   redb because it has the same relational model and SQL as PostgreSQL (the two
//!   stores share their schema and nearly all statements, and one test suite runs
//!   against both), and its crash safety is mature and well documented.
//! - `postgres://…` / `postgresql://…` — [`PostgresStore`], tokio-postgres with a
//!   deadpool pool, for deployments that outgrow one machine. The schema is created or
//!   migrated on start (a version table, under an advisory lock).
//!
//! Every write is one transaction, committed (and, for SQLite, synced) before the
//! method returns, so a REST 200 is only sent for data that survives a crash. The one
//! exception is the status history on PostgreSQL (not an acknowledged write; see
//! [`ConfigStore::record_statuses`]).
//! Optimistic locking (`If-Match`) is a compare-and-set inside that transaction: the
//! row is read (PostgreSQL: `SELECT … FOR UPDATE`; SQLite: under `BEGIN IMMEDIATE`,
//! which serialises writers), compared, then written, so concurrent conditional writes
//! never lose an update.
//!
//! Besides configurations the store keeps the endpoints ECR has learned of (see
//! [the crate docs](crate) for where they come from), used for the fan-out of default changes,
//! and the status history (dispatched / applied / rejected).

mod postgres;
mod sqlite;

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;

use kaa_ism::UnixMillis;

use super::model::{
    AppVersionName, ConfigName, Content, EndpointId, Page, Scope, Source, StatusEvent, StatusQuery,
    StatusRecord, StoredConfig,
};

pub use postgres::PostgresStore;
pub use sqlite::SqliteStore;

/// A store operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// An `If-Match` precondition did not hold; nothing was changed.
    #[error("precondition failed: the current config ID is {}", current.as_deref().unwrap_or("(none)"))]
    PreconditionFailed {
        /// The config ID currently stored, if any.
        current: Option<String>,
    },
    /// The store URL is not `sqlite://…`, `postgres://…` or `postgresql://…`.
    #[error("unsupported store URL {0:?} (expected sqlite://<path> or postgres://…)")]
    UnsupportedUrl(String),
    /// The database failed (I/O, connection, SQL).
    #[error("store backend error: {0}")]
    Backend(String),
    /// The database holds something this version cannot read.
    #[error("store data is corrupt: {0}")]
    Corrupt(String),
    /// The SQLite database is already open in another ECR (or another store in this
    /// process): the embedded store serves one replica.
    #[error(
        "the SQLite store {} is in use by another ECR process (it holds {}); the embedded store serves one replica: run ECR replicas on PostgreSQL",
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

/// The result of a write that may have changed nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PutOutcome {
    /// The configuration as stored now.
    pub config: StoredConfig,
    /// Whether the content changed (a new slot, or a new config ID). Storing identical
    /// content again is `false` and touches nothing, not even `updated`.
    pub changed: bool,
    /// The configuration before the write, if the slot existed.
    pub previous: Option<StoredConfig>,
}

/// What `If-Match` requires of the current configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Precondition {
    /// No precondition.
    None,
    /// `If-Match: *`: a configuration must exist.
    Exists,
    /// `If-Match: "<configId>"`: the current config ID must be one of these.
    ConfigId(Vec<String>),
}

impl Precondition {
    /// Checks the precondition against the current config ID.
    pub fn check(&self, current: Option<&str>) -> Result<(), StoreError> {
        let ok = match self {
            Precondition::None => true,
            Precondition::Exists => current.is_some(),
            Precondition::ConfigId(ids) => current.is_some_and(|c| ids.iter().any(|i| i == c)),
        };
        if ok {
            Ok(())
        } else {
            Err(StoreError::PreconditionFailed {
                current: current.map(str::to_owned),
            })
        }
    }
}

/// One endpoint slot written by a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchTarget {
    /// The application version.
    pub app_version: AppVersionName,
    /// The endpoint.
    pub endpoint_id: EndpointId,
}

/// One status-history event for [`ConfigStore::record_statuses`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusWrite {
    /// The endpoint.
    pub endpoint_id: EndpointId,
    /// Its application version.
    pub app_version: AppVersionName,
    /// The configuration name.
    pub name: ConfigName,
    /// The config ID the event is about.
    pub config_id: String,
    /// What happened.
    pub event: StatusEvent,
    /// When.
    pub at: UnixMillis,
}

impl StatusWrite {
    /// One event about `config_id` of `name` for `endpoint_id` at `at`.
    pub fn new(
        endpoint_id: &EndpointId,
        app_version: &AppVersionName,
        name: &ConfigName,
        config_id: &str,
        event: &StatusEvent,
        at: UnixMillis,
    ) -> Self {
        Self {
            endpoint_id: endpoint_id.clone(),
            app_version: app_version.clone(),
            name: name.clone(),
            config_id: config_id.to_owned(),
            event: event.clone(),
            at,
        }
    }
}

/// One key of [`ConfigStore::effective_many`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EffectiveKey {
    /// The endpoint.
    pub endpoint_id: EndpointId,
    /// Its app version.
    pub app_version: AppVersionName,
    /// The configuration name.
    pub name: ConfigName,
}

/// The durable state of ECR. See the module docs for the guarantees.
#[async_trait]
pub trait ConfigStore: Send + Sync + 'static {
    /// Upserts the configuration `name` in `scope` if `precondition` holds. Identical
    /// content is a no-op (`changed: false`). An endpoint-specific write also records
    /// the endpoint as known in its application version.
    async fn put(
        &self,
        scope: &Scope,
        name: &ConfigName,
        content: &Content,
        precondition: &Precondition,
        now: UnixMillis,
    ) -> Result<PutOutcome, StoreError>;

    /// The configuration `name` in `scope`.
    async fn get(
        &self,
        scope: &Scope,
        name: &ConfigName,
    ) -> Result<Option<StoredConfig>, StoreError>;

    /// Every configuration in `scope`, ordered by name.
    async fn list(&self, scope: &Scope) -> Result<Vec<StoredConfig>, StoreError>;

    /// Deletes the configuration `name` in `scope` if `precondition` holds; returns what
    /// was deleted (`None`: there was nothing).
    async fn delete(
        &self,
        scope: &Scope,
        name: &ConfigName,
        precondition: &Precondition,
    ) -> Result<Option<StoredConfig>, StoreError>;

    /// Writes the same content as the endpoint-specific configuration `name` of every
    /// target, in ONE transaction (all or nothing). Outcomes are in target order.
    async fn put_batch(
        &self,
        targets: &[BatchTarget],
        name: &ConfigName,
        content: &Content,
        now: UnixMillis,
    ) -> Result<Vec<PutOutcome>, StoreError>;

    /// The effective configuration: the endpoint's own, else the app version's default,
    /// read in one transaction.
    async fn effective(
        &self,
        endpoint_id: &EndpointId,
        app_version: &AppVersionName,
        name: &ConfigName,
    ) -> Result<Option<(StoredConfig, Source)>, StoreError>;

    /// Whether [`ConfigStore::effective_many`] is cheaper than one
    /// [`ConfigStore::effective`] per key, so that ECR should batch concurrent
    /// 6/CDTP lookups. Default `false`.
    fn batches_lookups(&self) -> bool {
        false
    }

    /// The effective configurations of several (endpoint, app version, name) keys, in
    /// the order given, each as [`ConfigStore::effective`] answers it. ECR's 6/CDTP
    /// provider batches concurrent requests through this (see
    /// [`crate::core::Ecr::effective`]). The default asks
    /// [`ConfigStore::effective`] for every key, concurrently; the PostgreSQL store
    /// reads all keys with one statement (one snapshot, one round trip).
    async fn effective_many(
        &self,
        keys: &[EffectiveKey],
    ) -> Result<Vec<Option<(StoredConfig, Source)>>, StoreError> {
        futures::future::try_join_all(
            keys.iter()
                .map(|k| self.effective(&k.endpoint_id, &k.app_version, &k.name)),
        )
        .await
    }

    /// Deletes everything about an endpoint (all its configurations in every app
    /// version, its known-endpoint records, its status history); returns how many
    /// configurations were deleted.
    async fn delete_endpoint(&self, endpoint_id: &EndpointId) -> Result<u64, StoreError>;

    /// Records that `endpoint_id` exists in `app_version`; `true` if it was new.
    async fn remember_endpoint(
        &self,
        endpoint_id: &EndpointId,
        app_version: &AppVersionName,
    ) -> Result<bool, StoreError>;

    /// Forgets that `endpoint_id` is in `app_version` (it moved to another version).
    async fn forget_endpoint(
        &self,
        endpoint_id: &EndpointId,
        app_version: &AppVersionName,
    ) -> Result<(), StoreError>;

    /// Known endpoints of `app_version` that have no endpoint-specific configuration
    /// `name`, i.e. that follow the default; ordered by endpoint ID.
    async fn endpoints_following_default(
        &self,
        app_version: &AppVersionName,
        name: &ConfigName,
    ) -> Result<Vec<EndpointId>, StoreError>;

    /// Adds an event to the status history of (endpoint, app version, name, config ID).
    async fn record_status(
        &self,
        endpoint_id: &EndpointId,
        app_version: &AppVersionName,
        name: &ConfigName,
        config_id: &str,
        event: &StatusEvent,
        now: UnixMillis,
    ) -> Result<(), StoreError> {
        let write = StatusWrite::new(endpoint_id, app_version, name, config_id, event, now);
        self.record_statuses(std::slice::from_ref(&write)).await
    }

    /// Adds events to the status history, in order, in ONE transaction (all or
    /// nothing; for SQLite one sync to disk). ECR's status queue uses this for group
    /// commit (see [`crate::core::Ecr::record_status`]). The history is not an
    /// acknowledged write, so PostgreSQL commits it without waiting for the WAL flush
    /// (`synchronous_commit = off` for that transaction only).
    async fn record_statuses(&self, writes: &[StatusWrite]) -> Result<(), StoreError>;

    /// One page of an endpoint's status history, most recent activity first.
    async fn statuses(&self, query: &StatusQuery) -> Result<Page<StatusRecord>, StoreError>;

    /// Turns on durable announcements (see [`ConfigStore::announce_pending`]) and
    /// returns whether the store has them: from now on every write that changes a
    /// configuration also records, in the same transaction, that the change is due
    /// to be announced. The PostgreSQL store has them; the default (and the SQLite
    /// store, which serves one replica) returns `false` and changes nothing.
    fn enable_durable_announcements(&self) -> bool {
        false
    }

    /// Whether durable announcements are on ([`ConfigStore::enable_durable_announcements`]).
    fn durable_announcements(&self) -> bool {
        false
    }

    /// Resolves when a write of this store object recorded a due announcement since
    /// the last call (a wake-up for the announcer; announcements recorded by other
    /// replicas are found by polling [`ConfigStore::announce_pending`]). The default
    /// never resolves.
    async fn announcements_written(&self) {
        std::future::pending::<()>().await
    }

    /// Announces due announcements, at most `limit` of them, oldest first, through
    /// `sink`, and returns how many were taken (0: none was due). Each is removed only
    /// after `sink` accepted it, so one that fails, or whose replica dies first, stays
    /// due and is taken again (by any replica): every committed change is announced
    /// at least once.
    ///
    /// What is announced is the current effective configuration of each endpoint
    /// concerned (the endpoint of an endpoint write; every endpoint following the
    /// default for a default write), read after taking a lock per (app version,
    /// configuration name) that every replica's announcer takes, and released only
    /// after `sink` returned. Announcements of one endpoint are therefore made one
    /// at a time across replicas, each with a state no older than the one before:
    /// an older configuration is never announced after a newer one (one may be
    /// skipped, when a newer one was committed before it was announced, or repeated).
    ///
    /// The default takes nothing.
    async fn announce_pending(
        &self,
        limit: usize,
        sink: &dyn AnnouncementSink,
    ) -> Result<usize, StoreError> {
        let _ = (limit, sink);
        Ok(0)
    }
}

/// Where [`ConfigStore::announce_pending`] hands the announcements: ECR's bus side
/// publishes them as `endpoint.config.updated` and returns once the bus has them
/// (flushed to the server).
#[async_trait]
pub trait AnnouncementSink: Send + Sync {
    /// Publishes `changes`, in order; an error leaves them due.
    async fn announce(&self, changes: &[crate::core::EffectiveChange]) -> Result<(), String>;
}

/// Opens the store named by `url`: `sqlite://<path>` (relative or, with a third slash,
/// absolute: `sqlite:///var/lib/ecr.db`) or `postgres://…`/`postgresql://…`. Creates or
/// migrates the schema.
pub async fn open(url: &str) -> Result<Arc<dyn ConfigStore>, StoreError> {
    if let Some(path) = url.strip_prefix("sqlite://") {
        if path.is_empty() {
            return Err(StoreError::UnsupportedUrl(url.to_owned()));
        }
        Ok(Arc::new(SqliteStore::open(path).await?))
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Arc::new(PostgresStore::connect(url).await?))
    } else {
        Err(StoreError::UnsupportedUrl(url.to_owned()))
    }
}

/// A store URL with any password replaced by `***`, for logs.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (authority, tail) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}{tail}"),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

/// The SQL shared by both stores, with PostgreSQL `$n` placeholders (the SQLite store
/// turns them into `?n`).
pub(crate) mod sql {
    /// Schema migrations, in order; migration `i` brings the schema to version `i + 1`.
    /// Each is a batch of statements that both SQLite and PostgreSQL accept.
    /// Version 2 adds the announcement outbox of the PostgreSQL store (see
    /// [`super::ConfigStore::announce_pending`]); the SQLite store leaves it empty.
    pub(crate) const MIGRATIONS: &[&str] = &[
        "\
        CREATE TABLE configs (
            endpoint_id TEXT NOT NULL,
            app_version TEXT NOT NULL,
            name TEXT NOT NULL,
            config_id TEXT NOT NULL,
            content TEXT NOT NULL,
            created_ms BIGINT NOT NULL,
            updated_ms BIGINT NOT NULL,
            PRIMARY KEY (endpoint_id, app_version, name)
        );
        CREATE INDEX configs_by_app_version ON configs (app_version, name, endpoint_id);
        CREATE TABLE known_endpoints (
            endpoint_id TEXT NOT NULL,
            app_version TEXT NOT NULL,
            PRIMARY KEY (endpoint_id, app_version)
        );
        CREATE INDEX known_endpoints_by_app_version ON known_endpoints (app_version, endpoint_id);
        CREATE TABLE statuses (
            endpoint_id TEXT NOT NULL,
            app_version TEXT NOT NULL,
            name TEXT NOT NULL,
            config_id TEXT NOT NULL,
            status TEXT NOT NULL,
            status_code INTEGER,
            reason_phrase TEXT,
            dispatched_ms BIGINT,
            confirmed_ms BIGINT,
            activity_ms BIGINT NOT NULL,
            PRIMARY KEY (endpoint_id, app_version, name, config_id)
        );
        CREATE INDEX statuses_by_activity ON statuses (endpoint_id, activity_ms);
    ",
        "\
        CREATE TABLE announce_outbox (
            seq BIGSERIAL PRIMARY KEY,
            endpoint_id TEXT NOT NULL,
            app_version TEXT NOT NULL,
            name TEXT NOT NULL,
            created_ms BIGINT NOT NULL
        );
    ",
    ];
    /// The table holding the schema version (one row).
    pub(crate) const VERSION_TABLE: &str =
        "CREATE TABLE IF NOT EXISTS ecr_schema_version (version INTEGER NOT NULL)";
    pub(crate) const SELECT_ONE: &str = "SELECT name, config_id, content, created_ms, updated_ms FROM configs \
         WHERE endpoint_id = $1 AND app_version = $2 AND name = $3";
    pub(crate) const SELECT_SCOPE: &str = "SELECT name, config_id, content, created_ms, updated_ms FROM configs \
         WHERE endpoint_id = $1 AND app_version = $2 ORDER BY name";
    pub(crate) const UPSERT: &str = "INSERT INTO configs (endpoint_id, app_version, name, config_id, content, created_ms, updated_ms) \
         VALUES ($1, $2, $3, $4, $5, $6, $6) \
         ON CONFLICT (endpoint_id, app_version, name) DO UPDATE SET \
         config_id = excluded.config_id, content = excluded.content, updated_ms = excluded.updated_ms";
    pub(crate) const DELETE_ONE: &str =
        "DELETE FROM configs WHERE endpoint_id = $1 AND app_version = $2 AND name = $3";
    pub(crate) const REMEMBER: &str = "INSERT INTO known_endpoints (endpoint_id, app_version) VALUES ($1, $2) \
         ON CONFLICT (endpoint_id, app_version) DO NOTHING";
    pub(crate) const FORGET: &str =
        "DELETE FROM known_endpoints WHERE endpoint_id = $1 AND app_version = $2";
    pub(crate) const FOLLOWING_DEFAULT: &str = "SELECT k.endpoint_id FROM known_endpoints k WHERE k.app_version = $1 \
         AND NOT EXISTS (SELECT 1 FROM configs c WHERE c.endpoint_id = k.endpoint_id \
         AND c.app_version = k.app_version AND c.name = $2) ORDER BY k.endpoint_id";
    pub(crate) const DELETE_ENDPOINT_CONFIGS: &str = "DELETE FROM configs WHERE endpoint_id = $1";
    pub(crate) const DELETE_ENDPOINT_KNOWN: &str =
        "DELETE FROM known_endpoints WHERE endpoint_id = $1";
    pub(crate) const DELETE_ENDPOINT_STATUSES: &str = "DELETE FROM statuses WHERE endpoint_id = $1";
    pub(crate) const STATUS_DISPATCHED: &str = "INSERT INTO statuses (endpoint_id, app_version, name, config_id, status, dispatched_ms, activity_ms) \
         VALUES ($1, $2, $3, $4, 'DISPATCHED', $5, $5) \
         ON CONFLICT (endpoint_id, app_version, name, config_id) DO UPDATE SET \
         status = 'DISPATCHED', dispatched_ms = excluded.dispatched_ms, activity_ms = excluded.activity_ms";
    pub(crate) const STATUS_CONFIRMED: &str = "INSERT INTO statuses (endpoint_id, app_version, name, config_id, status, status_code, reason_phrase, confirmed_ms, activity_ms) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8) \
         ON CONFLICT (endpoint_id, app_version, name, config_id) DO UPDATE SET \
         status = excluded.status, status_code = excluded.status_code, reason_phrase = excluded.reason_phrase, \
         confirmed_ms = excluded.confirmed_ms, activity_ms = excluded.activity_ms";
    /// The WHERE clause of the status queries; `$2`/`$3` are NULL when not filtered.
    const STATUS_WHERE: &str = "WHERE endpoint_id = $1 AND (CAST($2 AS TEXT) IS NULL OR app_version = $2) AND (CAST($3 AS TEXT) IS NULL OR config_id = $3)";
    pub(crate) fn status_count() -> String {
        format!("SELECT COUNT(*) FROM statuses {STATUS_WHERE}")
    }
    pub(crate) fn status_page() -> String {
        format!(
            "SELECT endpoint_id, app_version, name, config_id, status, dispatched_ms, confirmed_ms, status_code, reason_phrase \
             FROM statuses {STATUS_WHERE} ORDER BY activity_ms DESC, app_version, name, config_id LIMIT $4 OFFSET $5"
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords() {
        assert_eq!(
            redact_url("postgres://u:secret@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(redact_url("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact_url("sqlite://x.db"), "sqlite://x.db");
    }

    #[test]
    fn preconditions() {
        assert!(Precondition::None.check(None).is_ok());
        assert!(Precondition::Exists.check(None).is_err());
        assert!(Precondition::Exists.check(Some("a")).is_ok());
        let p = Precondition::ConfigId(vec!["a".into(), "b".into()]);
        assert!(p.check(Some("b")).is_ok());
        assert!(p.check(Some("c")).is_err());
        assert!(p.check(None).is_err());
    }
}
