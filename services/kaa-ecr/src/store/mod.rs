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
//! the status history (dispatched / applied / rejected), and the rollouts
//! ([`crate::rollout`]): one row each (the rollout as a JSON document, plus the
//! columns `effective` reads), at most one active per (app version, name) by a
//! partial unique index. While one is active, `effective` and `effective_many`
//! answer its served cohort its configuration (the endpoints' own whole
//! configurations still win; one stored as a merge patch is merged over it), and a write or delete of that default is refused
//! ([`StoreError::Conflict`]); a rollout's changes are compare-and-set on its
//! revision ([`StoreError::RolloutChanged`]), and its completion writes the default
//! in the same transaction.

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
use crate::layers::{EffectiveInputs, GroupName, Layer};
use crate::rollout::{Report, Rollout};

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
    /// The write conflicts with the state (409): a rollout of that (app version,
    /// name) is active, so its default cannot be written and no other rollout begun.
    #[error("{0}")]
    Conflict(String),
    /// A rollout changed since it was read (its revision is not the one expected);
    /// nothing was written.
    #[error("the rollout changed meanwhile (revision {current})")]
    RolloutChanged {
        /// The revision stored now.
        current: u64,
    },
    /// The named thing (an endpoint group) does not exist; nothing was changed.
    #[error("{0}")]
    NotFound(String),
    /// The store does not keep groups and layers.
    #[error("this store does not keep endpoint groups and layers")]
    NoLayers,
    /// The store does not keep rollouts.
    #[error("this store does not keep rollouts")]
    NoRollouts,
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
    /// Whether `previous` was an endpoint's own configuration stored as a merge
    /// patch ([`ConfigStore::put_patch`]).
    pub previous_patch: bool,
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

    /// The effective configuration: the endpoint's own whole configuration, else the
    /// app version's default (as an active rollout serves it) with the layers that
    /// reach the endpoint and its own configuration stored as a merge patch merged
    /// over it ([`crate::layers::compose`]), read in one transaction.
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
    /// version, its known-endpoint records, its group memberships, its status
    /// history); returns how many
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

    /// Known endpoints of `app_version` that follow the default `name`: those with
    /// no endpoint-specific configuration `name`, or with one stored as a merge patch
    /// (their effective configuration is built on the default); ordered by endpoint
    /// ID.
    async fn endpoints_following_default(
        &self,
        app_version: &AppVersionName,
        name: &ConfigName,
    ) -> Result<Vec<EndpointId>, StoreError>;

    /// Upserts the endpoint-specific configuration `name` of `scope` (an endpoint's)
    /// as a JSON Merge Patch (RFC 7396) applied over its default and layers (see
    /// [`crate::layers`]), as [`ConfigStore::put`] does a whole one: the same
    /// content stored whole before is a change. [`ConfigStore::put`] stores a whole
    /// document again. The default: [`StoreError::NoLayers`].
    async fn put_patch(
        &self,
        scope: &Scope,
        name: &ConfigName,
        content: &Content,
        precondition: &Precondition,
        now: UnixMillis,
    ) -> Result<PutOutcome, StoreError> {
        let _ = (scope, name, content, precondition, now);
        Err(StoreError::NoLayers)
    }

    /// [`ConfigStore::delete`], also saying whether what was deleted was stored as a
    /// merge patch. The default: [`ConfigStore::delete`] (whole).
    async fn delete_own(
        &self,
        scope: &Scope,
        name: &ConfigName,
        precondition: &Precondition,
    ) -> Result<Option<(StoredConfig, bool)>, StoreError> {
        Ok(self
            .delete(scope, name, precondition)
            .await?
            .map(|c| (c, false)))
    }

    /// The names of `endpoint_id`'s own configurations in `app_version` that are
    /// stored as merge patches. The default: none.
    async fn own_patch_names(
        &self,
        endpoint_id: &EndpointId,
        app_version: &AppVersionName,
    ) -> Result<std::collections::BTreeSet<String>, StoreError> {
        let _ = (endpoint_id, app_version);
        Ok(Default::default())
    }

    /// The endpoints of `app_version` whose own configuration `name` is stored as a
    /// merge patch, ordered by endpoint ID. The default: none.
    async fn endpoints_with_own_patch(
        &self,
        app_version: &AppVersionName,
        name: &ConfigName,
    ) -> Result<Vec<EndpointId>, StoreError> {
        let _ = (app_version, name);
        Ok(Vec::new())
    }

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
    /// concerned (the endpoint of an endpoint write; for a default write, every
    /// endpoint following the default whose effective configuration, composed with
    /// its layers as they are now, differs from the one composed over the default the
    /// write replaced), read after taking a lock per (app version,
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

    /// Stores a new rollout (see [`crate::rollout`]) in one transaction: refused with
    /// [`StoreError::Conflict`] when a rollout of its (app version, name) is active or
    /// when its configuration is the default already; `previous_config_id` is set to
    /// the default's config ID read in that transaction. `announce` lists the
    /// endpoints its first step reaches: a store with durable announcements records
    /// them as due in the same transaction. Returns the rollout as stored.
    /// A layer rollout ([`crate::rollout::LayerRollout`]) is refused when a rollout of
    /// its layer is active, its new version is the stored layer, or its group does
    /// not exist; its `previous_config_id` and `previous_group` are filled in from
    /// the stored layer.
    /// The default: [`StoreError::NoRollouts`].
    async fn create_rollout(
        &self,
        rollout: &Rollout,
        announce: &[EndpointId],
    ) -> Result<Rollout, StoreError> {
        let _ = (rollout, announce);
        Err(StoreError::NoRollouts)
    }

    /// The rollout `rollout_id`. The default: none.
    async fn rollout(&self, rollout_id: &str) -> Result<Option<Rollout>, StoreError> {
        let _ = rollout_id;
        Ok(None)
    }

    /// The rollouts of `app_version` (of configuration `name`, or of every name),
    /// newest first. The default: none.
    async fn rollouts(
        &self,
        app_version: &AppVersionName,
        name: Option<&ConfigName>,
    ) -> Result<Vec<Rollout>, StoreError> {
        let _ = (app_version, name);
        Ok(Vec::new())
    }

    /// Every active rollout (running, paused or halted), oldest first. The default:
    /// none.
    async fn active_rollouts(&self) -> Result<Vec<Rollout>, StoreError> {
        Ok(Vec::new())
    }

    /// Writes `rollout` (a change computed from revision `rollout.revision - 1`) in
    /// one transaction, only over that revision (else [`StoreError::RolloutChanged`],
    /// nothing written). A completed rollout also becomes the default of its (app
    /// version, name) in that transaction. `announce` as in
    /// [`ConfigStore::create_rollout`]. A completed layer rollout writes its new
    /// version as the layer instead of the default.
    /// The default: [`StoreError::NoRollouts`].
    async fn update_rollout(
        &self,
        rollout: &Rollout,
        announce: &[EndpointId],
    ) -> Result<(), StoreError> {
        let _ = (rollout, announce);
        Err(StoreError::NoRollouts)
    }

    /// Every endpoint's status for `config_id` of (`app_version`, `name`) with
    /// activity since `since` (Unix ms): the reports a rollout counts. The default:
    /// none.
    async fn rollout_reports(
        &self,
        app_version: &AppVersionName,
        name: &ConfigName,
        config_id: &str,
        since: UnixMillis,
    ) -> Result<Vec<(String, Report)>, StoreError> {
        let _ = (app_version, name, config_id, since);
        Ok(Vec::new())
    }

    /// Per config ID, how many endpoints' LATEST status for (`app_version`, `name`)
    /// is that config ID applied, rejected or dispatched, ordered by config ID. A
    /// confirmed configuration counts as its last confirmation (applied: 2xx,
    /// else rejected) even when it was dispatched again after it. The default: none.
    async fn status_counts(
        &self,
        app_version: &AppVersionName,
        name: &ConfigName,
    ) -> Result<Vec<StatusCount>, StoreError> {
        let _ = (app_version, name);
        Ok(Vec::new())
    }

    /// The app versions the store knows (known endpoints, defaults, rollouts), ordered
    /// by name, each with its defaults. The default: none.
    async fn app_versions(&self) -> Result<Vec<AppVersionSummary>, StoreError> {
        Ok(Vec::new())
    }

    /// Whether this replica may drive the rollouts now: at most one replica of
    /// those sharing the store gets `true` at a time. The SQLite store serves one
    /// replica (always `true`); the PostgreSQL store holds a session advisory lock on
    /// a dedicated connection while it drives. The default: `true`.
    async fn lead_rollouts(&self) -> Result<bool, StoreError> {
        Ok(true)
    }

    /// Creates the endpoint group `group` of `app_version`; `false` when it existed
    /// (nothing changed). The default: [`StoreError::NoLayers`].
    async fn create_group(
        &self,
        app_version: &AppVersionName,
        group: &GroupName,
        now: UnixMillis,
    ) -> Result<bool, StoreError> {
        let _ = (app_version, group, now);
        Err(StoreError::NoLayers)
    }

    /// Deletes the group and its memberships; `false` when there was none. Refused
    /// ([`StoreError::Conflict`]) while a layer targets it, so deleting a group
    /// never changes an effective configuration. The default:
    /// [`StoreError::NoLayers`].
    async fn delete_group(
        &self,
        app_version: &AppVersionName,
        group: &GroupName,
    ) -> Result<bool, StoreError> {
        let _ = (app_version, group);
        Err(StoreError::NoLayers)
    }

    /// Adds `add` to and removes `remove` from the group, in one transaction;
    /// returns how many memberships were (added, removed). An endpoint in both
    /// lists ends up removed. [`StoreError::NotFound`] when the group does not
    /// exist. `announce`: the (endpoint, configuration name) pairs whose effective
    /// configuration the change switches; a store with durable announcements records
    /// them as due in the same transaction. The default: [`StoreError::NoLayers`].
    async fn change_members(
        &self,
        app_version: &AppVersionName,
        group: &GroupName,
        add: &[EndpointId],
        remove: &[EndpointId],
        announce: &[(EndpointId, ConfigName)],
        now: UnixMillis,
    ) -> Result<(u64, u64), StoreError> {
        let _ = (app_version, group, add, remove, announce, now);
        Err(StoreError::NoLayers)
    }

    /// One page of the groups of `app_version`, ordered by name. The default: none.
    async fn groups(
        &self,
        app_version: &AppVersionName,
        page: u32,
        size: u32,
    ) -> Result<Page<GroupSummary>, StoreError> {
        let _ = (app_version, page, size);
        Ok(Page {
            content: Vec::new(),
            total_elements: 0,
        })
    }

    /// One page of the members of a group, ordered by endpoint ID; `None` when the
    /// group does not exist. The default: none.
    async fn group_members(
        &self,
        app_version: &AppVersionName,
        group: &GroupName,
        page: u32,
        size: u32,
    ) -> Result<Option<Page<String>>, StoreError> {
        let _ = (app_version, group, page, size);
        Ok(None)
    }

    /// Creates or replaces the layer (its `created` is kept on a replace); returns
    /// the layer before, if any. [`StoreError::NotFound`] when it targets a group
    /// that does not exist. `announce`: the endpoints of its (app version, name)
    /// whose effective configuration the write switches (durable announcements, as
    /// in [`ConfigStore::change_members`]). The default: [`StoreError::NoLayers`].
    async fn put_layer(
        &self,
        layer: &Layer,
        announce: &[EndpointId],
    ) -> Result<Option<Layer>, StoreError> {
        let _ = (layer, announce);
        Err(StoreError::NoLayers)
    }

    /// Deletes a layer; returns it (`None`: there was none). `announce` as in
    /// [`ConfigStore::put_layer`]. The default: [`StoreError::NoLayers`].
    async fn delete_layer(
        &self,
        app_version: &AppVersionName,
        name: &ConfigName,
        layer_name: &GroupName,
        announce: &[EndpointId],
        now: UnixMillis,
    ) -> Result<Option<Layer>, StoreError> {
        let _ = (app_version, name, layer_name, announce, now);
        Err(StoreError::NoLayers)
    }

    /// The layers of `app_version` (of configuration `name`, or of every name), in
    /// merge order per name ([`crate::layers::order`]). The default: none.
    async fn layers(
        &self,
        app_version: &AppVersionName,
        name: Option<&ConfigName>,
    ) -> Result<Vec<Layer>, StoreError> {
        let _ = (app_version, name);
        Ok(Vec::new())
    }

    /// What the effective configuration of each key is made of besides its layers:
    /// the own whole configuration or the base (the default as served, rollout
    /// applied), the own configuration stored as a merge patch, and the endpoint's
    /// groups; in key order. [`crate::core::Ecr`] composes these
    /// with [`ConfigStore::layers`] to predict a write (dry run, announcements) and
    /// to explain. The default: the base from [`ConfigStore::effective_many`] (right
    /// for a store without layers) and no groups.
    async fn effective_inputs(
        &self,
        keys: &[EffectiveKey],
    ) -> Result<Vec<EffectiveInputs>, StoreError> {
        Ok(self
            .effective_many(keys)
            .await?
            .into_iter()
            .map(|base| EffectiveInputs {
                base,
                ..Default::default()
            })
            .collect())
    }
}

/// One row of [`ConfigStore::groups`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupSummary {
    /// The group's name.
    pub group: String,
    /// How many members it has.
    pub members: u64,
    /// When it was created.
    pub created: UnixMillis,
}

/// The layers read for a set of keys, and the groups of their endpoints: what the
/// stores compose their `effective` answers from.
#[derive(Debug, Default)]
pub(crate) struct LayerInputs {
    /// (app version, name) → layers in merge order.
    pub(crate) layers: std::collections::HashMap<(String, String), Vec<Layer>>,
    /// (app version, endpoint) → groups.
    pub(crate) groups:
        std::collections::HashMap<(String, String), std::collections::BTreeSet<String>>,
    /// The active layer rollouts (of any pair; [`crate::layers::layers_for`] picks).
    pub(crate) rolling: Vec<crate::layers::RollingLayer>,
}

impl LayerInputs {
    /// Whether any layer targets a group (else the groups need not be read).
    pub(crate) fn any_grouped(&self) -> bool {
        self.layers
            .values()
            .flatten()
            .chain(self.rolling.iter().map(|r| &r.layer))
            .any(|l| l.target != crate::layers::LayerTarget::All)
    }

    /// `found` (own whole configuration or base) of `key`, with its layers and
    /// its own patch (`own_patch`) composed.
    pub(crate) fn compose(
        &self,
        key: &EffectiveKey,
        found: Option<(StoredConfig, Source)>,
        own_patch: Option<&StoredConfig>,
    ) -> Option<(StoredConfig, Source)> {
        if matches!(found, Some((_, Source::Endpoint))) {
            return found;
        }
        let layers = self
            .layers
            .get(&(key.app_version.to_string(), key.name.to_string()));
        let rolling = crate::layers::rolling_for(
            &self.rolling,
            key.app_version.as_str(),
            key.name.as_str(),
            key.endpoint_id.as_str(),
        );
        if layers.is_none_or(Vec::is_empty) && rolling.is_empty() && own_patch.is_none() {
            return found;
        }
        let inputs = EffectiveInputs {
            base: found,
            groups: self
                .groups
                .get(&(key.app_version.to_string(), key.endpoint_id.to_string()))
                .cloned()
                .unwrap_or_default(),
            own_patch: own_patch.cloned(),
            rolling,
        };
        crate::layers::compose(&key.name, &inputs, layers.map_or(&[], Vec::as_slice))
    }
}

/// What the stores read of one key besides layers and groups: the own whole
/// configuration or the base (rollout applied), and the own configuration stored as
/// a merge patch.
pub(crate) type Base = (Option<(StoredConfig, Source)>, Option<StoredConfig>);

/// A stored layer row: the columns of `sql::LAYER_COLUMNS`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn layer_row(
    app_version: String,
    name: String,
    layer_name: String,
    priority: i64,
    target_group: String,
    patch: String,
    created_ms: i64,
    updated_ms: i64,
) -> Result<Layer, StoreError> {
    Ok(Layer {
        app_version,
        name,
        layer_name,
        priority,
        target: crate::layers::LayerTarget::from_column(target_group),
        patch: serde_json::from_str(&patch)
            .map_err(|e| StoreError::Corrupt(format!("layer patch: {e}")))?,
        created: UnixMillis(created_ms),
        updated: UnixMillis(updated_ms),
    })
}

/// The conflict of deleting a group a layer targets.
pub(crate) fn group_targeted(group: &str, name: &str, layer_name: &str) -> StoreError {
    StoreError::Conflict(format!(
        "group {group} is the target of layer {layer_name} of configuration {name}: delete or retarget the layer first"
    ))
}

/// The conflict of deleting a group an active layer rollout's new version
/// targets, among `rollouts` (the active layer rollouts).
pub(crate) fn group_rolling_target(
    rollouts: &[Rollout],
    app_version: &str,
    group: &str,
) -> Result<(), StoreError> {
    match rollouts.iter().find(|r| {
        r.app_version == app_version
            && r.layer
                .as_ref()
                .is_some_and(|l| l.group.as_deref() == Some(group))
    }) {
        Some(r) => Err(StoreError::Conflict(format!(
            "group {group} is the target of rollout {} of layer {} of configuration {}: abort it or let it complete first",
            r.rollout_id,
            r.layer_column(),
            r.name
        ))),
        None => Ok(()),
    }
}

/// The group a write names does not exist.
pub(crate) fn no_group(app_version: &str, group: &str) -> StoreError {
    StoreError::NotFound(format!(
        "no endpoint group {group} in application version {app_version}"
    ))
}

/// One row of [`ConfigStore::status_counts`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatusCount {
    /// The config ID.
    pub config_id: String,
    /// Endpoints whose latest status is this config ID, applied.
    pub applied: u64,
    /// … rejected.
    pub rejected: u64,
    /// … dispatched, not confirmed yet.
    pub dispatched: u64,
}

/// One app version of [`ConfigStore::app_versions`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppVersionSummary {
    /// The app version.
    pub app_version: String,
    /// Its defaults: (configuration name, config ID), ordered by name.
    pub defaults: Vec<(String, String)>,
}

/// What an active rollout serves, as `effective` applies it.
#[derive(Debug, Clone)]
pub(crate) struct Overlay {
    pub(crate) rollout_id: String,
    pub(crate) served_bp: u32,
    pub(crate) config: StoredConfig,
}

/// `found` (an effective configuration as the tables say) with the active
/// rollout's `overlay` applied: an endpoint following the default (or with nothing)
/// inside the served cohort gets the rollout's configuration.
pub(crate) fn apply_overlay(
    found: Option<(StoredConfig, Source)>,
    endpoint_id: &str,
    overlay: Option<&Overlay>,
) -> Option<(StoredConfig, Source)> {
    match (&found, overlay) {
        (Some((_, Source::Endpoint)), _) | (_, None) => found,
        (_, Some(o))
            if crate::rollout::served_bucket_limit(&o.rollout_id, o.served_bp, endpoint_id) =>
        {
            Some((o.config.clone(), Source::Default))
        }
        _ => found,
    }
}

/// Adds a status row to `counts` (ordered by config ID).
pub(crate) fn add_status_count(
    counts: &mut Vec<StatusCount>,
    config_id: String,
    status: &str,
    n: i64,
) {
    let n = u64::try_from(n).unwrap_or(0);
    if counts.last().is_none_or(|c| c.config_id != config_id) {
        counts.push(StatusCount {
            config_id,
            ..StatusCount::default()
        });
    }
    if let Some(c) = counts.last_mut() {
        match status {
            "APPLIED" => c.applied += n,
            "REJECTED" => c.rejected += n,
            _ => c.dispatched += n,
        }
    }
}

/// The conflict of a default write during a rollout.
pub(crate) fn default_locked(app_version: &str, name: &str, rollout_id: &str) -> StoreError {
    StoreError::Conflict(format!(
        "rollout {rollout_id} of configuration {name} of app version {app_version} is active: its default cannot be written until the rollout completes or is aborted"
    ))
}

/// A default cannot be stored as a merge patch.
pub(crate) fn default_patch() -> StoreError {
    StoreError::Conflict(
        "only an endpoint's own configuration can be stored as a merge patch".into(),
    )
}

/// The conflict of a layer write during that layer's rollout.
pub(crate) fn layer_locked(
    app_version: &str,
    name: &str,
    layer_name: &str,
    rollout_id: &str,
) -> StoreError {
    StoreError::Conflict(format!(
        "rollout {rollout_id} of layer {layer_name} of configuration {name} of app version {app_version} is active: the layer cannot be written until the rollout completes or is aborted"
    ))
}

/// The conflict of a second rollout of a layer.
pub(crate) fn layer_rollout_active(
    app_version: &str,
    name: &str,
    layer_name: &str,
    rollout_id: &str,
) -> StoreError {
    StoreError::Conflict(format!(
        "rollout {rollout_id} of layer {layer_name} of configuration {name} of app version {app_version} is active already"
    ))
}

/// The active layer rollouts among stored rollout documents, as composition
/// applies them.
pub(crate) fn rolling_layers(rollouts: &[Rollout]) -> Vec<crate::layers::RollingLayer> {
    rollouts
        .iter()
        .filter_map(crate::layers::RollingLayer::of)
        .collect()
}

/// Fills in a new layer rollout from its layer as stored (`previous`, read in the
/// creation's transaction): the previous version's config ID and target; refused
/// when the new version is the stored one (nothing to roll out).
pub(crate) fn prepare_layer_rollout(
    rollout: &mut Rollout,
    previous: Option<&Layer>,
) -> Result<(), StoreError> {
    let Some(l) = rollout.layer.as_mut() else {
        return Ok(());
    };
    if let Some(p) = previous {
        let group = match &p.target {
            crate::layers::LayerTarget::All => None,
            crate::layers::LayerTarget::Group(g) => Some(g.clone()),
        };
        if p.priority == l.priority && group == l.group && p.patch == l.patch {
            return Err(StoreError::Conflict(format!(
                "layer {} is this version already: nothing to roll out",
                l.layer_name
            )));
        }
        l.previous_group = Some(group);
        rollout.previous_config_id = Some(crate::model::Content::from_value(&p.patch).config_id);
    } else {
        l.previous_group = None;
        rollout.previous_config_id = None;
    }
    Ok(())
}

/// The conflict of a second rollout.
pub(crate) fn rollout_active(app_version: &str, name: &str, rollout_id: &str) -> StoreError {
    StoreError::Conflict(format!(
        "rollout {rollout_id} of configuration {name} of app version {app_version} is active already"
    ))
}

/// The conflict of a rollout of the default itself.
pub(crate) fn nothing_to_roll_out(config_id: &str) -> StoreError {
    StoreError::Conflict(format!(
        "configuration {config_id} is the default already: nothing to roll out"
    ))
}

/// The answer of [`ConfigStore::app_versions`] from its two queries: the app
/// versions, and every default as (app version, name, config ID), both ordered.
pub(crate) fn summarise_app_versions(
    versions: Vec<String>,
    defaults: Vec<(String, String, String)>,
) -> Vec<AppVersionSummary> {
    let mut by_version: std::collections::BTreeMap<String, Vec<(String, String)>> =
        versions.into_iter().map(|v| (v, Vec::new())).collect();
    for (app_version, name, config_id) in defaults {
        by_version
            .entry(app_version)
            .or_default()
            .push((name, config_id));
    }
    by_version
        .into_iter()
        .map(|(app_version, defaults)| AppVersionSummary {
            app_version,
            defaults,
        })
        .collect()
}

/// A stored rollout document.
pub(crate) fn parse_rollout(doc: &str) -> Result<Rollout, StoreError> {
    serde_json::from_str(doc).map_err(|e| StoreError::Corrupt(format!("rollout document: {e}")))
}

/// A rollout as its stored document.
pub(crate) fn rollout_doc(rollout: &Rollout) -> String {
    serde_json::to_string(rollout).unwrap_or_default()
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
    /// Version 3 adds the rollouts (see [`crate::rollout`]): one row each, the
    /// rollout as a JSON document (`doc`) beside the columns `effective` and the
    /// controller query; at most one active rollout per (app version, name), by a
    /// partial unique index.
    /// Version 4 adds endpoint groups, their members and the layers (see
    /// [`crate::layers`]); a layer's `target_group` is `''` for every endpoint.
    /// The members' primary key leads with (app version, endpoint), the lookup every
    /// effective answer makes: SQLite's planner (without statistics) took a covering
    /// (app version, group, endpoint) key over a two-column index and scanned the
    /// whole group per lookup (found by the 10,000-device fan-out with layers).
    /// Version 5 (issue 20, helper/layers: precise default announcements) records in
    /// an outbox row of a default's change the default it replaced
    /// (`before_known` 1, `before_content` NULL when there was none), so that the
    /// announcer announces only the followers whose effective configuration changed;
    /// and marks an endpoint's own configuration stored as a merge patch
    /// (`configs.own_patch` 1; see [`super::ConfigStore::put_patch`]).
    /// Version 6 (issue 20: layer rollouts, [`crate::rollout::LayerRollout`]) names
    /// a layer rollout's layer in `rollouts.layer_name` (`''`: a rollout of the
    /// default); one active rollout per (app version, name, layer name), so a
    /// default and each of its layers may roll out at once.
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
        "\
        CREATE TABLE rollouts (
            rollout_id TEXT NOT NULL PRIMARY KEY,
            app_version TEXT NOT NULL,
            name TEXT NOT NULL,
            active INTEGER NOT NULL,
            served_bp INTEGER NOT NULL,
            config_id TEXT NOT NULL,
            content TEXT NOT NULL,
            created_ms BIGINT NOT NULL,
            updated_ms BIGINT NOT NULL,
            revision BIGINT NOT NULL,
            doc TEXT NOT NULL
        );
        CREATE UNIQUE INDEX rollouts_one_active ON rollouts (app_version, name) WHERE active = 1;
        CREATE INDEX rollouts_by_app_version ON rollouts (app_version, created_ms);
        CREATE INDEX statuses_by_config ON statuses (app_version, name, config_id);
    ",
        "\
        CREATE TABLE endpoint_groups (
            app_version TEXT NOT NULL,
            group_name TEXT NOT NULL,
            created_ms BIGINT NOT NULL,
            PRIMARY KEY (app_version, group_name)
        );
        CREATE TABLE group_members (
            app_version TEXT NOT NULL,
            group_name TEXT NOT NULL,
            endpoint_id TEXT NOT NULL,
            PRIMARY KEY (app_version, endpoint_id, group_name)
        );
        CREATE INDEX group_members_by_group ON group_members (app_version, group_name, endpoint_id);
        CREATE TABLE layers (
            app_version TEXT NOT NULL,
            name TEXT NOT NULL,
            layer_name TEXT NOT NULL,
            priority BIGINT NOT NULL,
            target_group TEXT NOT NULL,
            patch TEXT NOT NULL,
            created_ms BIGINT NOT NULL,
            updated_ms BIGINT NOT NULL,
            PRIMARY KEY (app_version, name, layer_name)
        );
        CREATE INDEX layers_by_group ON layers (app_version, target_group);
    ",
        // Issue 20 (helper/layers): the default a default's change replaced.
        "\
        ALTER TABLE announce_outbox ADD COLUMN before_known INTEGER NOT NULL DEFAULT 0;
        ALTER TABLE announce_outbox ADD COLUMN before_content TEXT;
        ALTER TABLE configs ADD COLUMN own_patch INTEGER NOT NULL DEFAULT 0;
    ",
        // Issue 20: layer rollouts.
        "\
        ALTER TABLE rollouts ADD COLUMN layer_name TEXT NOT NULL DEFAULT '';
        DROP INDEX rollouts_one_active;
        CREATE UNIQUE INDEX rollouts_one_active ON rollouts (app_version, name, layer_name) WHERE active = 1;
    ",
    ];
    pub(crate) const GROUP_INSERT: &str = "INSERT INTO endpoint_groups (app_version, group_name, created_ms) VALUES ($1, $2, $3) \
         ON CONFLICT (app_version, group_name) DO NOTHING";
    pub(crate) const GROUP_EXISTS: &str =
        "SELECT 1 FROM endpoint_groups WHERE app_version = $1 AND group_name = $2";
    pub(crate) const GROUP_DELETE: &str =
        "DELETE FROM endpoint_groups WHERE app_version = $1 AND group_name = $2";
    pub(crate) const GROUP_DELETE_MEMBERS: &str =
        "DELETE FROM group_members WHERE app_version = $1 AND group_name = $2";
    pub(crate) const GROUP_TARGETED: &str = "SELECT name, layer_name FROM layers WHERE app_version = $1 AND target_group = $2 \
         ORDER BY name, layer_name LIMIT 1";
    pub(crate) const MEMBER_ADD: &str = "INSERT INTO group_members (app_version, group_name, endpoint_id) VALUES ($1, $2, $3) \
         ON CONFLICT (app_version, endpoint_id, group_name) DO NOTHING";
    pub(crate) const MEMBER_REMOVE: &str =
        "DELETE FROM group_members WHERE app_version = $1 AND group_name = $2 AND endpoint_id = $3";
    pub(crate) const GROUPS_COUNT: &str =
        "SELECT COUNT(*) FROM endpoint_groups WHERE app_version = $1";
    pub(crate) const GROUPS_PAGE: &str = "SELECT g.group_name, g.created_ms, \
         (SELECT COUNT(*) FROM group_members m WHERE m.app_version = g.app_version AND m.group_name = g.group_name) \
         FROM endpoint_groups g WHERE g.app_version = $1 ORDER BY g.group_name LIMIT $2 OFFSET $3";
    pub(crate) const MEMBERS_COUNT: &str =
        "SELECT COUNT(*) FROM group_members WHERE app_version = $1 AND group_name = $2";
    pub(crate) const MEMBERS_PAGE: &str = "SELECT endpoint_id FROM group_members WHERE app_version = $1 AND group_name = $2 \
         ORDER BY endpoint_id LIMIT $3 OFFSET $4";
    /// The groups of one endpoint in one app version.
    pub(crate) const GROUPS_OF_ENDPOINT: &str =
        "SELECT group_name FROM group_members WHERE app_version = $1 AND endpoint_id = $2";
    pub(crate) const LAYER_COLUMNS: &str =
        "app_version, name, layer_name, priority, target_group, patch, created_ms, updated_ms";
    pub(crate) const LAYER_UPSERT: &str = "INSERT INTO layers (app_version, name, layer_name, priority, target_group, patch, created_ms, updated_ms) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $7) ON CONFLICT (app_version, name, layer_name) DO UPDATE SET \
         priority = excluded.priority, target_group = excluded.target_group, patch = excluded.patch, updated_ms = excluded.updated_ms";
    pub(crate) const LAYER_DELETE: &str =
        "DELETE FROM layers WHERE app_version = $1 AND name = $2 AND layer_name = $3";
    /// The layers of `$1` (of name `$2`, or every name when NULL).
    pub(crate) fn layers_of() -> String {
        format!(
            "SELECT {LAYER_COLUMNS} FROM layers WHERE app_version = $1 AND (CAST($2 AS TEXT) IS NULL OR name = $2)"
        )
    }
    /// The table holding the schema version (one row).
    pub(crate) const VERSION_TABLE: &str =
        "CREATE TABLE IF NOT EXISTS ecr_schema_version (version INTEGER NOT NULL)";
    /// One configuration (its 6th column: stored as a merge patch).
    pub(crate) const SELECT_ONE: &str = "SELECT name, config_id, content, created_ms, updated_ms, own_patch FROM configs \
         WHERE endpoint_id = $1 AND app_version = $2 AND name = $3";
    pub(crate) const OWN_PATCH_NAMES: &str = "SELECT name FROM configs \
         WHERE endpoint_id = $1 AND app_version = $2 AND own_patch = 1 ORDER BY name";
    pub(crate) const ENDPOINTS_WITH_OWN_PATCH: &str = "SELECT endpoint_id FROM configs \
         WHERE app_version = $1 AND name = $2 AND endpoint_id <> '' AND own_patch = 1 ORDER BY endpoint_id";
    pub(crate) const SELECT_SCOPE: &str = "SELECT name, config_id, content, created_ms, updated_ms FROM configs \
         WHERE endpoint_id = $1 AND app_version = $2 ORDER BY name";
    pub(crate) const UPSERT: &str = "INSERT INTO configs (endpoint_id, app_version, name, config_id, content, created_ms, updated_ms) \
         VALUES ($1, $2, $3, $4, $5, $6, $6) \
         ON CONFLICT (endpoint_id, app_version, name) DO UPDATE SET \
         config_id = excluded.config_id, content = excluded.content, updated_ms = excluded.updated_ms";
    /// [`UPSERT`] saying whether it is an own configuration stored as a merge patch
    /// (`$7`: 1) or a whole document (0).
    pub(crate) const UPSERT_OWN: &str = "INSERT INTO configs (endpoint_id, app_version, name, config_id, content, created_ms, updated_ms, own_patch) \
         VALUES ($1, $2, $3, $4, $5, $6, $6, $7) \
         ON CONFLICT (endpoint_id, app_version, name) DO UPDATE SET \
         config_id = excluded.config_id, content = excluded.content, updated_ms = excluded.updated_ms, \
         own_patch = excluded.own_patch";
    pub(crate) const DELETE_ONE: &str =
        "DELETE FROM configs WHERE endpoint_id = $1 AND app_version = $2 AND name = $3";
    pub(crate) const REMEMBER: &str = "INSERT INTO known_endpoints (endpoint_id, app_version) VALUES ($1, $2) \
         ON CONFLICT (endpoint_id, app_version) DO NOTHING";
    pub(crate) const FORGET: &str =
        "DELETE FROM known_endpoints WHERE endpoint_id = $1 AND app_version = $2";
    pub(crate) const FOLLOWING_DEFAULT: &str = "SELECT k.endpoint_id FROM known_endpoints k WHERE k.app_version = $1 \
         AND NOT EXISTS (SELECT 1 FROM configs c WHERE c.endpoint_id = k.endpoint_id \
         AND c.app_version = k.app_version AND c.name = $2 AND c.own_patch = 0) ORDER BY k.endpoint_id";
    pub(crate) const DELETE_ENDPOINT_CONFIGS: &str = "DELETE FROM configs WHERE endpoint_id = $1";
    pub(crate) const DELETE_ENDPOINT_KNOWN: &str =
        "DELETE FROM known_endpoints WHERE endpoint_id = $1";
    pub(crate) const DELETE_ENDPOINT_GROUPS: &str =
        "DELETE FROM group_members WHERE endpoint_id = $1";
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
    pub(crate) const ROLLOUT_INSERT: &str = "INSERT INTO rollouts (rollout_id, app_version, name, active, served_bp, config_id, content, created_ms, updated_ms, revision, doc, layer_name) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)";
    /// The active rollout of layer `$3` of (`$1`, `$2`) (`$3` `''`: of the default).
    pub(crate) const ROLLOUT_OF_LAYER: &str = "SELECT rollout_id FROM rollouts \
         WHERE app_version = $1 AND name = $2 AND layer_name = $3 AND active = 1";
    /// The active layer rollouts of (`$1`, `$2`).
    pub(crate) const ROLLING_LAYERS_OF: &str = "SELECT doc FROM rollouts \
         WHERE app_version = $1 AND name = $2 AND active = 1 AND layer_name <> '' ORDER BY created_ms, rollout_id";
    /// Every active layer rollout.
    pub(crate) const ROLLING_LAYERS: &str = "SELECT doc FROM rollouts \
         WHERE active = 1 AND layer_name <> '' ORDER BY created_ms, rollout_id";
    pub(crate) const ROLLOUT_UPDATE: &str = "UPDATE rollouts SET active = $2, served_bp = $3, updated_ms = $4, revision = $5, doc = $6 \
         WHERE rollout_id = $1";
    pub(crate) const ROLLOUT_REVISION: &str = "SELECT revision FROM rollouts WHERE rollout_id = $1";
    pub(crate) const ROLLOUT_ONE: &str = "SELECT doc FROM rollouts WHERE rollout_id = $1";
    pub(crate) const ROLLOUTS_OF: &str = "SELECT doc FROM rollouts WHERE app_version = $1 \
         AND (CAST($2 AS TEXT) IS NULL OR name = $2) ORDER BY created_ms DESC, rollout_id";
    pub(crate) const ROLLOUTS_ACTIVE: &str =
        "SELECT doc FROM rollouts WHERE active = 1 ORDER BY created_ms, rollout_id";
    /// The active rollout of (`$1`, `$2`), as `effective` applies it.
    pub(crate) const ROLLOUT_OVERLAY: &str = "SELECT rollout_id, served_bp, config_id, content, created_ms, updated_ms \
         FROM rollouts WHERE app_version = $1 AND name = $2 AND active = 1 AND layer_name = ''";
    /// Every active rollout, as `effective_many` applies them.
    pub(crate) const ROLLOUT_OVERLAYS: &str = "SELECT rollout_id, served_bp, config_id, content, created_ms, updated_ms, app_version, name \
         FROM rollouts WHERE active = 1 AND layer_name = ''";
    /// The outcome of a status row: its last confirmation when it has one (a
    /// dispatch of a configuration the endpoint had confirmed already, e.g. a CMX
    /// fetching again on a reconnect, does not undo the confirmation), else
    /// dispatched.
    const OUTCOME: &str = "CASE WHEN confirmed_ms IS NULL THEN 'DISPATCHED' \
         WHEN status_code >= 200 AND status_code < 300 THEN 'APPLIED' ELSE 'REJECTED' END";
    pub(crate) fn rollout_reports() -> String {
        format!(
            "SELECT endpoint_id, {OUTCOME}, dispatched_ms FROM statuses \
             WHERE app_version = $1 AND name = $2 AND config_id = $3 AND activity_ms >= $4"
        )
    }
    /// Per (config ID, outcome), the endpoints whose latest status of (`$1`, `$2`) it is.
    pub(crate) fn status_counts() -> String {
        format!(
            "SELECT config_id, outcome, COUNT(*) FROM (\
             SELECT config_id, {OUTCOME} AS outcome, ROW_NUMBER() OVER (PARTITION BY endpoint_id ORDER BY activity_ms DESC, config_id) AS rn \
             FROM statuses WHERE app_version = $1 AND name = $2) latest \
             WHERE rn = 1 GROUP BY config_id, outcome ORDER BY config_id, outcome"
        )
    }
    pub(crate) const APP_VERSIONS: &str = "SELECT app_version FROM known_endpoints \
         UNION SELECT app_version FROM configs WHERE endpoint_id = '' \
         UNION SELECT app_version FROM rollouts ORDER BY 1";
    pub(crate) const ALL_DEFAULTS: &str = "SELECT app_version, name, config_id FROM configs WHERE endpoint_id = '' ORDER BY app_version, name";
    /// The WHERE clause of the status queries; `$2`/`$3` are NULL when not filtered.
    const STATUS_WHERE: &str = "WHERE endpoint_id = $1 AND (CAST($2 AS TEXT) IS NULL OR app_version = $2) AND (CAST($3 AS TEXT) IS NULL OR config_id = $3)";
    pub(crate) fn status_count() -> String {
        format!("SELECT COUNT(*) FROM statuses {STATUS_WHERE}")
    }
    /// A row's status is its [`OUTCOME`]: a configuration sent again after the
    /// endpoint confirmed it stays applied (or rejected), as rollouts count it.
    pub(crate) fn status_page() -> String {
        format!(
            "SELECT endpoint_id, app_version, name, config_id, {OUTCOME}, dispatched_ms, confirmed_ms, status_code, reason_phrase \
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
