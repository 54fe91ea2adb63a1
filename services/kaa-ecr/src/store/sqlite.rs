//! The embedded store: SQLite (bundled) in one file.

use std::path::Path;

use async_trait::async_trait;
use kaa_service::sqlite::{SqliteDb, SqliteError};
use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior, params};

use kaa_ism::UnixMillis;

use super::{
    AppVersionSummary, Base, BatchTarget, ConfigStore, EffectiveKey, GroupSummary, LayerInputs,
    Overlay, Precondition, PutOutcome, StatusCount, StatusWrite, StoreError, apply_overlay, sql,
};
use crate::layers::{EffectiveInputs, GroupName, Layer};
use crate::model::{
    AppVersionName, ConfigName, Content, DeliveryStatus, EndpointId, Page, Scope, Source,
    StatusEvent, StatusQuery, StatusRecord, StoredConfig,
};
use crate::rollout::{Report, Rollout, RolloutState};

/// How many reads run at the same time, each on its own read-only connection (kept
/// open between reads). More concurrent reads wait for a connection rather than
/// opening new ones (opening one costs more than a point select).
const MAX_READERS: usize = 8;

/// The embedded store: one SQLite file in WAL mode with `synchronous=FULL`.
///
/// Writes go through one connection (SQLite has one writer at a time anyway) inside
/// `BEGIN IMMEDIATE` transactions; reads use a small pool of at most 8 read-only
/// connections so they run beside writes (WAL readers do not block the writer). Every
/// call runs on tokio's blocking pool. The file, its replica lock and the pool are
/// [`kaa_service::sqlite::SqliteDb`]'s, shared with the register's store.
#[derive(Clone)]
pub struct SqliteStore {
    db: SqliteDb,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.db.path())
            .finish_non_exhaustive()
    }
}

impl From<SqliteError> for StoreError {
    fn from(e: SqliteError) -> Self {
        match e {
            SqliteError::InUse { path, lock } => StoreError::InUse { path, lock },
            other => StoreError::backend(other),
        }
    }
}

fn sqlite_err(e: rusqlite::Error) -> StoreError {
    StoreError::backend(e)
}

/// The shared statement with its `$n` placeholders turned into SQLite's `?n`, once
/// per call site (the conversion is not repeated for every query).
macro_rules! q {
    ($statement:expr) => {{
        static CONVERTED: std::sync::LazyLock<String> =
            std::sync::LazyLock::new(|| $statement.replace('$', "?"));
        CONVERTED.as_str()
    }};
}

fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(sqlite_err)?;
    tx.execute_batch(sql::VERSION_TABLE).map_err(sqlite_err)?;
    let version: Option<i64> = tx
        .query_row("SELECT version FROM ecr_schema_version", [], |r| r.get(0))
        .optional()
        .map_err(sqlite_err)?;
    let current = usize::try_from(version.unwrap_or(0))
        .map_err(|_| StoreError::Corrupt("negative schema version".into()))?;
    if current > sql::MIGRATIONS.len() {
        return Err(StoreError::Corrupt(format!(
            "schema version {current} is newer than this ECR ({})",
            sql::MIGRATIONS.len()
        )));
    }
    for migration in &sql::MIGRATIONS[current..] {
        tx.execute_batch(migration).map_err(sqlite_err)?;
    }
    let latest = i64::try_from(sql::MIGRATIONS.len()).unwrap_or(i64::MAX);
    tx.execute("DELETE FROM ecr_schema_version", [])
        .map_err(sqlite_err)?;
    tx.execute(
        "INSERT INTO ecr_schema_version (version) VALUES (?1)",
        [latest],
    )
    .map_err(sqlite_err)?;
    tx.commit().map_err(sqlite_err)
}

fn row_to_config(row: &rusqlite::Row<'_>) -> rusqlite::Result<(String, String, String, i64, i64)> {
    Ok((
        row.get(0)?,
        row.get(1)?,
        row.get(2)?,
        row.get(3)?,
        row.get(4)?,
    ))
}

fn to_config(
    (name, config_id, content, created, updated): (String, String, String, i64, i64),
) -> Result<StoredConfig, StoreError> {
    Ok(StoredConfig {
        name: ConfigName::new(name).map_err(|e| StoreError::Corrupt(e.to_string()))?,
        config_id,
        content,
        created: UnixMillis(created),
        updated: UnixMillis(updated),
    })
}

fn select_one(
    conn: &Connection,
    endpoint_key: &str,
    app_version: &str,
    name: &str,
) -> Result<Option<StoredConfig>, StoreError> {
    let mut stmt = conn
        .prepare_cached(q!(sql::SELECT_ONE))
        .map_err(sqlite_err)?;
    stmt.query_row(params![endpoint_key, app_version, name], row_to_config)
        .optional()
        .map_err(sqlite_err)?
        .map(to_config)
        .transpose()
}

/// One configuration and whether it is stored as a merge patch.
fn select_own(
    conn: &Connection,
    endpoint_key: &str,
    app_version: &str,
    name: &str,
) -> Result<Option<(StoredConfig, bool)>, StoreError> {
    let mut stmt = conn
        .prepare_cached(q!(sql::SELECT_ONE))
        .map_err(sqlite_err)?;
    stmt.query_row(params![endpoint_key, app_version, name], |r| {
        Ok((row_to_config(r)?, r.get::<_, i64>(5)? != 0))
    })
    .optional()
    .map_err(sqlite_err)?
    .map(|(c, patch)| Ok((to_config(c)?, patch)))
    .transpose()
}

/// The active rollout of (`app_version`, `name`), as `effective` applies it.
fn overlay_of(
    conn: &Connection,
    app_version: &str,
    name: &str,
) -> Result<Option<Overlay>, StoreError> {
    let mut stmt = conn
        .prepare_cached(q!(sql::ROLLOUT_OVERLAY))
        .map_err(sqlite_err)?;
    let row = stmt
        .query_row(params![app_version, name], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, i64>(4)?,
                r.get::<_, i64>(5)?,
            ))
        })
        .optional()
        .map_err(sqlite_err)?;
    row.map(|(rollout_id, bp, config_id, content, created, updated)| {
        Ok(Overlay {
            rollout_id,
            served_bp: u32::try_from(bp).unwrap_or(0),
            config: to_config((name.to_owned(), config_id, content, created, updated))?,
        })
    })
    .transpose()
}

/// The layers of `app_version` (of `name`, or every name when `None`), in merge
/// order per name.
fn layers_of(
    conn: &Connection,
    app_version: &str,
    name: Option<&str>,
) -> Result<Vec<Layer>, StoreError> {
    let mut stmt = conn
        .prepare_cached(q!(sql::layers_of()))
        .map_err(sqlite_err)?;
    let rows = stmt
        .query_map(params![app_version, name], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, i64>(3)?,
                r.get::<_, String>(4)?,
                r.get::<_, String>(5)?,
                r.get::<_, i64>(6)?,
                r.get::<_, i64>(7)?,
            ))
        })
        .map_err(sqlite_err)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(sqlite_err)?;
    let mut layers = rows
        .into_iter()
        .map(|(a, n, l, p, t, patch, c, u)| super::layer_row(a, n, l, p, t, patch, c, u))
        .collect::<Result<Vec<_>, _>>()?;
    layers.sort_by(|a, b| a.name.cmp(&b.name));
    let mut out = Vec::with_capacity(layers.len());
    for chunk in layers.chunk_by_mut(|a, b| a.name == b.name) {
        crate::layers::order(chunk);
        out.extend(chunk.iter().cloned());
    }
    Ok(out)
}

/// The active layer rollouts of (`app_version`, `name`), as composition applies them.
fn rolling_of(
    conn: &Connection,
    app_version: &str,
    name: &str,
) -> Result<Vec<crate::layers::RollingLayer>, StoreError> {
    let docs = read_docs(conn, q!(sql::ROLLING_LAYERS_OF), params![app_version, name])?;
    Ok(super::rolling_layers(&docs))
}

/// The active rollout of layer `layer_name` of (`app_version`, `name`) (`""`: of
/// the default).
fn rollout_of_layer(
    conn: &Connection,
    app_version: &str,
    name: &str,
    layer_name: &str,
) -> Result<Option<String>, StoreError> {
    conn.prepare_cached(q!(sql::ROLLOUT_OF_LAYER))
        .and_then(|mut s| {
            s.query_row(params![app_version, name, layer_name], |r| r.get(0))
                .optional()
        })
        .map_err(sqlite_err)
}

/// The groups of `endpoint_id` in `app_version`.
fn groups_of(
    conn: &Connection,
    app_version: &str,
    endpoint_id: &str,
) -> Result<std::collections::BTreeSet<String>, StoreError> {
    let mut stmt = conn
        .prepare_cached(q!(sql::GROUPS_OF_ENDPOINT))
        .map_err(sqlite_err)?;
    stmt.query_map(params![app_version, endpoint_id], |r| r.get::<_, String>(0))
        .map_err(sqlite_err)?
        .collect::<Result<_, _>>()
        .map_err(sqlite_err)
}

/// The own whole configuration or the base (default as served) of one key, and
/// its own configuration stored as a merge patch.
fn base_of(
    conn: &Connection,
    endpoint_id: &str,
    app_version: &str,
    name: &str,
) -> Result<Base, StoreError> {
    let own_patch = match select_own(conn, endpoint_id, app_version, name)? {
        Some((c, false)) => return Ok((Some((c, Source::Endpoint)), None)),
        Some((c, true)) => Some(c),
        None => None,
    };
    let found = select_one(conn, "", app_version, name)?.map(|c| (c, Source::Default));
    let overlay = overlay_of(conn, app_version, name)?;
    Ok((
        apply_overlay(found, endpoint_id, overlay.as_ref()),
        own_patch,
    ))
}

/// The effective configuration of one key: its base with its layers composed.
fn effective_of(
    conn: &Connection,
    key: &EffectiveKey,
) -> Result<Option<(StoredConfig, Source)>, StoreError> {
    let (endpoint, app, name) = (
        key.endpoint_id.as_str(),
        key.app_version.as_str(),
        key.name.as_str(),
    );
    let (found, own_patch) = base_of(conn, endpoint, app, name)?;
    if matches!(found, Some((_, Source::Endpoint))) {
        return Ok(found);
    }
    let layers = layers_of(conn, app, Some(name))?;
    let rolling = rolling_of(conn, app, name)?;
    if layers.is_empty() && rolling.is_empty() && own_patch.is_none() {
        return Ok(found);
    }
    let mut inputs = LayerInputs {
        rolling,
        ..LayerInputs::default()
    };
    if layers
        .iter()
        .chain(inputs.rolling.iter().map(|r| &r.layer))
        .any(|l| l.target != crate::layers::LayerTarget::All)
    {
        inputs.groups.insert(
            (app.to_owned(), endpoint.to_owned()),
            groups_of(conn, app, endpoint)?,
        );
    }
    inputs
        .layers
        .insert((app.to_owned(), name.to_owned()), layers);
    Ok(inputs.compose(key, found, own_patch.as_ref()))
}

/// Whether the group exists.
fn group_exists(conn: &Connection, app_version: &str, group: &str) -> Result<bool, StoreError> {
    conn.prepare_cached(q!(sql::GROUP_EXISTS))
        .and_then(|mut s| s.exists(params![app_version, group]))
        .map_err(sqlite_err)
}

fn count(conn: &Connection, statement: &str, p: impl rusqlite::Params) -> Result<u64, StoreError> {
    conn.prepare_cached(statement)
        .and_then(|mut s| s.query_row(p, |r| r.get::<_, i64>(0)))
        .map(|n| u64::try_from(n).unwrap_or(0))
        .map_err(sqlite_err)
}

fn put_in(
    tx: &Transaction<'_>,
    scope: &Scope,
    name: &ConfigName,
    content: &Content,
    own_patch: bool,
    precondition: &Precondition,
    now: UnixMillis,
) -> Result<PutOutcome, StoreError> {
    let endpoint_key = scope.endpoint_key();
    let app_version = scope.app_version().as_str();
    if own_patch && scope.endpoint_id().is_none() {
        return Err(super::default_patch());
    }
    if scope.endpoint_id().is_none()
        && let Some(o) = overlay_of(tx, app_version, name.as_str())?
    {
        return Err(super::default_locked(
            app_version,
            name.as_str(),
            &o.rollout_id,
        ));
    }
    let (previous, previous_patch) = match select_own(tx, endpoint_key, app_version, name.as_str())?
    {
        Some((c, patch)) => (Some(c), patch),
        None => (None, false),
    };
    precondition.check(previous.as_ref().map(|p| p.config_id.as_str()))?;
    if let Some(endpoint_id) = scope.endpoint_id() {
        tx.prepare_cached(q!(sql::REMEMBER))
            .and_then(|mut s| s.execute(params![endpoint_id.as_str(), app_version]))
            .map_err(sqlite_err)?;
    }
    if let Some(prev) = &previous
        && prev.config_id == content.config_id
        && previous_patch == own_patch
    {
        return Ok(PutOutcome {
            config: prev.clone(),
            changed: false,
            previous,
            previous_patch,
        });
    }
    tx.prepare_cached(q!(sql::UPSERT_OWN))
        .and_then(|mut s| {
            s.execute(params![
                endpoint_key,
                app_version,
                name.as_str(),
                content.config_id,
                content.json,
                now.0,
                i64::from(own_patch)
            ])
        })
        .map_err(sqlite_err)?;
    let config = StoredConfig {
        name: name.clone(),
        config_id: content.config_id.clone(),
        content: content.json.clone(),
        created: previous.as_ref().map_or(now, |p| p.created),
        updated: now,
    };
    Ok(PutOutcome {
        config,
        changed: true,
        previous,
        previous_patch,
    })
}

impl SqliteStore {
    /// Opens (creating if needed) the database file at `path` and migrates its schema.
    ///
    /// The store serves one ECR: while it is open, opening the same file again (in
    /// another process or in this one) fails with [`StoreError::InUse`], after
    /// waiting up to 2 s for the other to close (a server dropped a moment ago in
    /// this process may still be letting go of it).
    pub async fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        let db = SqliteDb::open(path, MAX_READERS, migrate).await?;
        Ok(Self { db })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        self.db.path()
    }

    /// Runs `f` in a `BEGIN IMMEDIATE` transaction on the writer connection and commits
    /// (synced to disk) if it returns `Ok`.
    async fn write<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Transaction<'_>) -> Result<T, StoreError> + Send + 'static,
    {
        self.db.write(f).await
    }

    /// Runs `f` in a read transaction on a pooled read-only connection.
    async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Transaction<'_>) -> Result<T, StoreError> + Send + 'static,
    {
        self.db.read(f).await
    }
}

#[async_trait]
impl ConfigStore for SqliteStore {
    async fn put(
        &self,
        scope: &Scope,
        name: &ConfigName,
        content: &Content,
        precondition: &Precondition,
        now: UnixMillis,
    ) -> Result<PutOutcome, StoreError> {
        let (scope, name, content, precondition) = (
            scope.clone(),
            name.clone(),
            content.clone(),
            precondition.clone(),
        );
        self.write(move |tx| put_in(tx, &scope, &name, &content, false, &precondition, now))
            .await
    }

    async fn put_patch(
        &self,
        scope: &Scope,
        name: &ConfigName,
        content: &Content,
        precondition: &Precondition,
        now: UnixMillis,
    ) -> Result<PutOutcome, StoreError> {
        let (scope, name, content, precondition) = (
            scope.clone(),
            name.clone(),
            content.clone(),
            precondition.clone(),
        );
        self.write(move |tx| put_in(tx, &scope, &name, &content, true, &precondition, now))
            .await
    }

    async fn own_patch_names(
        &self,
        endpoint_id: &EndpointId,
        app_version: &AppVersionName,
    ) -> Result<std::collections::BTreeSet<String>, StoreError> {
        let (e, a) = (endpoint_id.to_string(), app_version.to_string());
        self.read(move |tx| {
            let mut stmt = tx
                .prepare_cached(q!(sql::OWN_PATCH_NAMES))
                .map_err(sqlite_err)?;
            stmt.query_map(params![e, a], |r| r.get::<_, String>(0))
                .map_err(sqlite_err)?
                .collect::<Result<_, _>>()
                .map_err(sqlite_err)
        })
        .await
    }

    async fn endpoints_with_own_patch(
        &self,
        app_version: &AppVersionName,
        name: &ConfigName,
    ) -> Result<Vec<EndpointId>, StoreError> {
        let (a, n) = (app_version.to_string(), name.to_string());
        self.read(move |tx| {
            let mut stmt = tx
                .prepare_cached(q!(sql::ENDPOINTS_WITH_OWN_PATCH))
                .map_err(sqlite_err)?;
            let ids: Vec<String> = stmt
                .query_map(params![a, n], |r| r.get::<_, String>(0))
                .map_err(sqlite_err)?
                .collect::<Result<_, _>>()
                .map_err(sqlite_err)?;
            ids.into_iter()
                .map(|e| EndpointId::new(e).map_err(|e| StoreError::Corrupt(e.to_string())))
                .collect()
        })
        .await
    }

    async fn get(
        &self,
        scope: &Scope,
        name: &ConfigName,
    ) -> Result<Option<StoredConfig>, StoreError> {
        let endpoint_key = scope.endpoint_key().to_owned();
        let app_version = scope.app_version().as_str().to_owned();
        let name = name.as_str().to_owned();
        self.read(move |tx| select_one(tx, &endpoint_key, &app_version, &name))
            .await
    }

    async fn list(&self, scope: &Scope) -> Result<Vec<StoredConfig>, StoreError> {
        let endpoint_key = scope.endpoint_key().to_owned();
        let app_version = scope.app_version().as_str().to_owned();
        self.read(move |tx| {
            let mut stmt = tx
                .prepare_cached(q!(sql::SELECT_SCOPE))
                .map_err(sqlite_err)?;
            let rows = stmt
                .query_map(params![endpoint_key, app_version], row_to_config)
                .map_err(sqlite_err)?;
            rows.map(|r| r.map_err(sqlite_err).and_then(to_config))
                .collect()
        })
        .await
    }

    async fn delete(
        &self,
        scope: &Scope,
        name: &ConfigName,
        precondition: &Precondition,
    ) -> Result<Option<StoredConfig>, StoreError> {
        Ok(self
            .delete_own(scope, name, precondition)
            .await?
            .map(|(c, _)| c))
    }

    async fn delete_own(
        &self,
        scope: &Scope,
        name: &ConfigName,
        precondition: &Precondition,
    ) -> Result<Option<(StoredConfig, bool)>, StoreError> {
        let endpoint_key = scope.endpoint_key().to_owned();
        let app_version = scope.app_version().as_str().to_owned();
        let name = name.as_str().to_owned();
        let precondition = precondition.clone();
        self.write(move |tx| {
            if endpoint_key.is_empty()
                && let Some(o) = overlay_of(tx, &app_version, &name)?
            {
                return Err(super::default_locked(&app_version, &name, &o.rollout_id));
            }
            let previous = select_own(tx, &endpoint_key, &app_version, &name)?;
            precondition.check(previous.as_ref().map(|(p, _)| p.config_id.as_str()))?;
            if previous.is_some() {
                tx.prepare_cached(q!(sql::DELETE_ONE))
                    .and_then(|mut s| s.execute(params![endpoint_key, app_version, name]))
                    .map_err(sqlite_err)?;
            }
            Ok(previous)
        })
        .await
    }

    async fn put_batch(
        &self,
        targets: &[BatchTarget],
        name: &ConfigName,
        content: &Content,
        now: UnixMillis,
    ) -> Result<Vec<PutOutcome>, StoreError> {
        let (targets, name, content) = (targets.to_vec(), name.clone(), content.clone());
        self.write(move |tx| {
            targets
                .into_iter()
                .map(|t| {
                    let scope = Scope::Endpoint {
                        endpoint_id: t.endpoint_id,
                        app_version: t.app_version,
                    };
                    put_in(tx, &scope, &name, &content, false, &Precondition::None, now)
                })
                .collect()
        })
        .await
    }

    async fn effective(
        &self,
        endpoint_id: &EndpointId,
        app_version: &AppVersionName,
        name: &ConfigName,
    ) -> Result<Option<(StoredConfig, Source)>, StoreError> {
        let key = EffectiveKey {
            endpoint_id: endpoint_id.clone(),
            app_version: app_version.clone(),
            name: name.clone(),
        };
        self.read(move |tx| effective_of(tx, &key)).await
    }

    async fn effective_many(
        &self,
        keys: &[EffectiveKey],
    ) -> Result<Vec<Option<(StoredConfig, Source)>>, StoreError> {
        let keys = keys.to_vec();
        // One read transaction (one snapshot) for every key.
        self.read(move |tx| keys.iter().map(|k| effective_of(tx, k)).collect())
            .await
    }

    async fn effective_inputs(
        &self,
        keys: &[EffectiveKey],
    ) -> Result<Vec<EffectiveInputs>, StoreError> {
        let keys = keys.to_vec();
        self.read(move |tx| {
            keys.iter()
                .map(|k| {
                    let (e, a, n) = (
                        k.endpoint_id.as_str(),
                        k.app_version.as_str(),
                        k.name.as_str(),
                    );
                    let (base, own_patch) = base_of(tx, e, a, n)?;
                    Ok(EffectiveInputs {
                        base,
                        groups: groups_of(tx, a, e)?,
                        own_patch,
                        rolling: crate::layers::rolling_for(&rolling_of(tx, a, n)?, a, n, e),
                    })
                })
                .collect()
        })
        .await
    }

    async fn create_group(
        &self,
        app_version: &AppVersionName,
        group: &GroupName,
        now: UnixMillis,
    ) -> Result<bool, StoreError> {
        let (app, group) = (app_version.to_string(), group.to_string());
        self.write(move |tx| {
            let n = tx
                .execute(q!(sql::GROUP_INSERT), params![app, group, now.0])
                .map_err(sqlite_err)?;
            Ok(n > 0)
        })
        .await
    }

    async fn delete_group(
        &self,
        app_version: &AppVersionName,
        group: &GroupName,
    ) -> Result<bool, StoreError> {
        let (app, group) = (app_version.to_string(), group.to_string());
        self.write(move |tx| {
            let targeted = tx
                .prepare_cached(q!(sql::GROUP_TARGETED))
                .and_then(|mut s| {
                    s.query_row(params![app, group], |r| {
                        Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
                    })
                    .optional()
                })
                .map_err(sqlite_err)?;
            if let Some((name, layer)) = targeted {
                return Err(super::group_targeted(&group, &name, &layer));
            }
            super::group_rolling_target(
                &read_docs(tx, q!(sql::ROLLING_LAYERS), params![])?,
                &app,
                &group,
            )?;
            tx.execute(q!(sql::GROUP_DELETE_MEMBERS), params![app, group])
                .map_err(sqlite_err)?;
            let n = tx
                .execute(q!(sql::GROUP_DELETE), params![app, group])
                .map_err(sqlite_err)?;
            Ok(n > 0)
        })
        .await
    }

    async fn change_members(
        &self,
        app_version: &AppVersionName,
        group: &GroupName,
        add: &[EndpointId],
        remove: &[EndpointId],
        _announce: &[(EndpointId, ConfigName)],
        _now: UnixMillis,
    ) -> Result<(u64, u64), StoreError> {
        let (app, group) = (app_version.to_string(), group.to_string());
        let add: Vec<String> = add.iter().map(ToString::to_string).collect();
        let remove: Vec<String> = remove.iter().map(ToString::to_string).collect();
        self.write(move |tx| {
            if !group_exists(tx, &app, &group)? {
                return Err(super::no_group(&app, &group));
            }
            let (mut added, mut removed) = (0u64, 0u64);
            let mut s = tx.prepare_cached(q!(sql::MEMBER_ADD)).map_err(sqlite_err)?;
            for e in &add {
                added += s.execute(params![app, group, e]).map_err(sqlite_err)? as u64;
            }
            let mut s = tx
                .prepare_cached(q!(sql::MEMBER_REMOVE))
                .map_err(sqlite_err)?;
            for e in &remove {
                let n = s.execute(params![app, group, e]).map_err(sqlite_err)? as u64;
                if add.contains(e) {
                    added = added.saturating_sub(n);
                } else {
                    removed += n;
                }
            }
            Ok((added, removed))
        })
        .await
    }

    async fn groups(
        &self,
        app_version: &AppVersionName,
        page: u32,
        size: u32,
    ) -> Result<Page<GroupSummary>, StoreError> {
        let app = app_version.to_string();
        self.read(move |tx| {
            let total = count(tx, q!(sql::GROUPS_COUNT), params![app])?;
            let size = i64::from(size.max(1));
            let mut stmt = tx
                .prepare_cached(q!(sql::GROUPS_PAGE))
                .map_err(sqlite_err)?;
            let content = stmt
                .query_map(params![app, size, i64::from(page) * size], |r| {
                    Ok(GroupSummary {
                        group: r.get(0)?,
                        created: UnixMillis(r.get(1)?),
                        members: u64::try_from(r.get::<_, i64>(2)?).unwrap_or(0),
                    })
                })
                .map_err(sqlite_err)?
                .collect::<Result<Vec<_>, _>>()
                .map_err(sqlite_err)?;
            Ok(Page {
                content,
                total_elements: total,
            })
        })
        .await
    }

    async fn group_members(
        &self,
        app_version: &AppVersionName,
        group: &GroupName,
        page: u32,
        size: u32,
    ) -> Result<Option<Page<String>>, StoreError> {
        let (app, group) = (app_version.to_string(), group.to_string());
        self.read(move |tx| {
            if !group_exists(tx, &app, &group)? {
                return Ok(None);
            }
            let total = count(tx, q!(sql::MEMBERS_COUNT), params![app, group])?;
            let size = i64::from(size.max(1));
            let mut stmt = tx
                .prepare_cached(q!(sql::MEMBERS_PAGE))
                .map_err(sqlite_err)?;
            let content = stmt
                .query_map(params![app, group, size, i64::from(page) * size], |r| {
                    r.get::<_, String>(0)
                })
                .map_err(sqlite_err)?
                .collect::<Result<Vec<_>, _>>()
                .map_err(sqlite_err)?;
            Ok(Some(Page {
                content,
                total_elements: total,
            }))
        })
        .await
    }

    async fn put_layer(
        &self,
        layer: &Layer,
        _announce: &[EndpointId],
    ) -> Result<Option<Layer>, StoreError> {
        let layer = layer.clone();
        self.write(move |tx| {
            if let Some(id) =
                rollout_of_layer(tx, &layer.app_version, &layer.name, &layer.layer_name)?
            {
                return Err(super::layer_locked(
                    &layer.app_version,
                    &layer.name,
                    &layer.layer_name,
                    &id,
                ));
            }
            if let crate::layers::LayerTarget::Group(g) = &layer.target
                && !group_exists(tx, &layer.app_version, g)?
            {
                return Err(super::no_group(&layer.app_version, g));
            }
            let previous = layers_of(tx, &layer.app_version, Some(&layer.name))?
                .into_iter()
                .find(|l| l.layer_name == layer.layer_name);
            tx.execute(
                q!(sql::LAYER_UPSERT),
                params![
                    layer.app_version,
                    layer.name,
                    layer.layer_name,
                    layer.priority,
                    layer.target.column(),
                    layer.patch.to_string(),
                    layer.updated.0
                ],
            )
            .map_err(sqlite_err)?;
            Ok(previous)
        })
        .await
    }

    async fn delete_layer(
        &self,
        app_version: &AppVersionName,
        name: &ConfigName,
        layer_name: &GroupName,
        _announce: &[EndpointId],
        _now: UnixMillis,
    ) -> Result<Option<Layer>, StoreError> {
        let (app, name, layer_name) = (
            app_version.to_string(),
            name.to_string(),
            layer_name.to_string(),
        );
        self.write(move |tx| {
            if let Some(id) = rollout_of_layer(tx, &app, &name, &layer_name)? {
                return Err(super::layer_locked(&app, &name, &layer_name, &id));
            }
            let previous = layers_of(tx, &app, Some(&name))?
                .into_iter()
                .find(|l| l.layer_name == layer_name);
            tx.execute(q!(sql::LAYER_DELETE), params![app, name, layer_name])
                .map_err(sqlite_err)?;
            Ok(previous)
        })
        .await
    }

    async fn layers(
        &self,
        app_version: &AppVersionName,
        name: Option<&ConfigName>,
    ) -> Result<Vec<Layer>, StoreError> {
        let app = app_version.to_string();
        let name = name.map(ToString::to_string);
        self.read(move |tx| layers_of(tx, &app, name.as_deref()))
            .await
    }

    async fn delete_endpoint(&self, endpoint_id: &EndpointId) -> Result<u64, StoreError> {
        let endpoint_id = endpoint_id.as_str().to_owned();
        self.write(move |tx| {
            let n = tx
                .execute(q!(sql::DELETE_ENDPOINT_CONFIGS), [&endpoint_id])
                .map_err(sqlite_err)?;
            tx.execute(q!(sql::DELETE_ENDPOINT_KNOWN), [&endpoint_id])
                .map_err(sqlite_err)?;
            tx.execute(q!(sql::DELETE_ENDPOINT_GROUPS), [&endpoint_id])
                .map_err(sqlite_err)?;
            tx.execute(q!(sql::DELETE_ENDPOINT_STATUSES), [&endpoint_id])
                .map_err(sqlite_err)?;
            Ok(n as u64)
        })
        .await
    }

    async fn remember_endpoint(
        &self,
        endpoint_id: &EndpointId,
        app_version: &AppVersionName,
    ) -> Result<bool, StoreError> {
        let endpoint_id = endpoint_id.as_str().to_owned();
        let app_version = app_version.as_str().to_owned();
        self.write(move |tx| {
            let n = tx
                .prepare_cached(q!(sql::REMEMBER))
                .and_then(|mut s| s.execute(params![endpoint_id, app_version]))
                .map_err(sqlite_err)?;
            Ok(n > 0)
        })
        .await
    }

    async fn forget_endpoint(
        &self,
        endpoint_id: &EndpointId,
        app_version: &AppVersionName,
    ) -> Result<(), StoreError> {
        let endpoint_id = endpoint_id.as_str().to_owned();
        let app_version = app_version.as_str().to_owned();
        self.write(move |tx| {
            tx.execute(q!(sql::FORGET), params![endpoint_id, app_version])
                .map_err(sqlite_err)?;
            Ok(())
        })
        .await
    }

    async fn endpoints_following_default(
        &self,
        app_version: &AppVersionName,
        name: &ConfigName,
    ) -> Result<Vec<EndpointId>, StoreError> {
        let app_version = app_version.as_str().to_owned();
        let name = name.as_str().to_owned();
        self.read(move |tx| {
            let mut stmt = tx
                .prepare_cached(q!(sql::FOLLOWING_DEFAULT))
                .map_err(sqlite_err)?;
            let rows = stmt
                .query_map(params![app_version, name], |r| r.get::<_, String>(0))
                .map_err(sqlite_err)?;
            rows.map(|r| {
                r.map_err(sqlite_err).and_then(|id| {
                    EndpointId::new(id).map_err(|e| StoreError::Corrupt(e.to_string()))
                })
            })
            .collect()
        })
        .await
    }

    async fn record_statuses(&self, writes: &[StatusWrite]) -> Result<(), StoreError> {
        if writes.is_empty() {
            return Ok(());
        }
        let writes = writes.to_vec();
        self.write(move |tx| {
            for w in &writes {
                let (e, a, n, c) = (
                    w.endpoint_id.as_str(),
                    w.app_version.as_str(),
                    w.name.as_str(),
                    w.config_id.as_str(),
                );
                match &w.event {
                    StatusEvent::Dispatched => tx
                        .prepare_cached(q!(sql::STATUS_DISPATCHED))
                        .and_then(|mut s| s.execute(params![e, a, n, c, w.at.0])),
                    StatusEvent::Confirmed {
                        status_code,
                        reason_phrase,
                    } => {
                        let status = confirmed_status(*status_code);
                        tx.prepare_cached(q!(sql::STATUS_CONFIRMED))
                            .and_then(|mut s| {
                                s.execute(params![
                                    e,
                                    a,
                                    n,
                                    c,
                                    status.as_str(),
                                    status_code,
                                    reason_phrase,
                                    w.at.0
                                ])
                            })
                    }
                }
                .map_err(sqlite_err)?;
            }
            Ok(())
        })
        .await
    }

    async fn create_rollout(
        &self,
        rollout: &Rollout,
        _announce: &[EndpointId],
    ) -> Result<Rollout, StoreError> {
        let mut rollout = rollout.clone();
        self.write(move |tx| {
            let (app, name) = (rollout.app_version.clone(), rollout.name.clone());
            if let Some(l) = rollout.layer.clone() {
                if let Some(id) = rollout_of_layer(tx, &app, &name, &l.layer_name)? {
                    return Err(super::layer_rollout_active(&app, &name, &l.layer_name, &id));
                }
                if let Some(g) = &l.group
                    && !group_exists(tx, &app, g)?
                {
                    return Err(super::no_group(&app, g));
                }
                let previous = layers_of(tx, &app, Some(&name))?
                    .into_iter()
                    .find(|p| p.layer_name == l.layer_name);
                super::prepare_layer_rollout(&mut rollout, previous.as_ref())?;
            } else {
                if let Some(o) = overlay_of(tx, &app, &name)? {
                    return Err(super::rollout_active(&app, &name, &o.rollout_id));
                }
                let previous = select_one(tx, "", &app, &name)?;
                if previous
                    .as_ref()
                    .is_some_and(|p| p.config_id == rollout.config_id)
                {
                    return Err(super::nothing_to_roll_out(&rollout.config_id));
                }
                rollout.previous_config_id = previous.map(|p| p.config_id);
            }
            tx.prepare_cached(q!(sql::ROLLOUT_INSERT))
                .and_then(|mut s| {
                    s.execute(params![
                        rollout.rollout_id,
                        app,
                        name,
                        i64::from(rollout.state.is_active()),
                        i64::from(rollout.served_bp()),
                        rollout.config_id,
                        rollout.content,
                        rollout.created_ms,
                        rollout.updated_ms,
                        i64::try_from(rollout.revision).unwrap_or(i64::MAX),
                        super::rollout_doc(&rollout),
                        rollout.layer_column(),
                    ])
                })
                .map_err(sqlite_err)?;
            Ok(rollout)
        })
        .await
    }

    async fn rollout(&self, rollout_id: &str) -> Result<Option<Rollout>, StoreError> {
        let id = rollout_id.to_owned();
        self.read(move |tx| {
            let doc: Option<String> = tx
                .prepare_cached(q!(sql::ROLLOUT_ONE))
                .and_then(|mut s| s.query_row([&id], |r| r.get(0)).optional())
                .map_err(sqlite_err)?;
            doc.as_deref().map(super::parse_rollout).transpose()
        })
        .await
    }

    async fn rollouts(
        &self,
        app_version: &AppVersionName,
        name: Option<&ConfigName>,
    ) -> Result<Vec<Rollout>, StoreError> {
        let app = app_version.as_str().to_owned();
        let name = name.map(|n| n.as_str().to_owned());
        self.read(move |tx| read_docs(tx, q!(sql::ROLLOUTS_OF), params![app, name]))
            .await
    }

    async fn active_rollouts(&self) -> Result<Vec<Rollout>, StoreError> {
        self.read(|tx| read_docs(tx, q!(sql::ROLLOUTS_ACTIVE), params![]))
            .await
    }

    async fn update_rollout(
        &self,
        rollout: &Rollout,
        _announce: &[EndpointId],
    ) -> Result<(), StoreError> {
        let rollout = rollout.clone();
        self.write(move |tx| {
            let current: Option<i64> = tx
                .prepare_cached(q!(sql::ROLLOUT_REVISION))
                .and_then(|mut s| s.query_row([&rollout.rollout_id], |r| r.get(0)).optional())
                .map_err(sqlite_err)?;
            let current = current.map_or(0, |c| u64::try_from(c).unwrap_or(0));
            if current + 1 != rollout.revision {
                return Err(StoreError::RolloutChanged { current });
            }
            tx.prepare_cached(q!(sql::ROLLOUT_UPDATE))
                .and_then(|mut s| {
                    s.execute(params![
                        rollout.rollout_id,
                        i64::from(rollout.state.is_active()),
                        i64::from(rollout.served_bp()),
                        rollout.updated_ms,
                        i64::try_from(rollout.revision).unwrap_or(i64::MAX),
                        super::rollout_doc(&rollout),
                    ])
                })
                .map_err(sqlite_err)?;
            if rollout.state == RolloutState::Completed
                && let Some(l) = &rollout.layer
            {
                tx.execute(
                    q!(sql::LAYER_UPSERT),
                    params![
                        rollout.app_version,
                        rollout.name,
                        l.layer_name,
                        l.priority,
                        l.group.as_deref().unwrap_or(""),
                        l.patch.to_string(),
                        rollout.updated_ms
                    ],
                )
                .map_err(sqlite_err)?;
            } else if rollout.state == RolloutState::Completed {
                tx.prepare_cached(q!(sql::UPSERT))
                    .and_then(|mut s| {
                        s.execute(params![
                            "",
                            rollout.app_version,
                            rollout.name,
                            rollout.config_id,
                            rollout.content,
                            rollout.updated_ms
                        ])
                    })
                    .map_err(sqlite_err)?;
            }
            Ok(())
        })
        .await
    }

    async fn rollout_reports(
        &self,
        app_version: &AppVersionName,
        name: &ConfigName,
        config_id: &str,
        since: UnixMillis,
    ) -> Result<Vec<(String, Report)>, StoreError> {
        let (app, name, config_id) = (
            app_version.as_str().to_owned(),
            name.as_str().to_owned(),
            config_id.to_owned(),
        );
        self.read(move |tx| {
            let mut stmt = tx
                .prepare_cached(q!(sql::rollout_reports()))
                .map_err(sqlite_err)?;
            let rows = stmt
                .query_map(params![app, name, config_id, since.0], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, Option<i64>>(2)?,
                    ))
                })
                .map_err(sqlite_err)?;
            rows.map(|r| {
                let (endpoint, status, dispatched_ms) = r.map_err(sqlite_err)?;
                let status = DeliveryStatus::parse(&status)
                    .ok_or_else(|| StoreError::Corrupt(format!("unknown status {status:?}")))?;
                Ok((
                    endpoint,
                    Report {
                        status,
                        dispatched_ms,
                    },
                ))
            })
            .collect()
        })
        .await
    }

    async fn status_counts(
        &self,
        app_version: &AppVersionName,
        name: &ConfigName,
    ) -> Result<Vec<StatusCount>, StoreError> {
        let (app, name) = (app_version.as_str().to_owned(), name.as_str().to_owned());
        self.read(move |tx| {
            let mut stmt = tx
                .prepare_cached(q!(sql::status_counts()))
                .map_err(sqlite_err)?;
            let rows = stmt
                .query_map(params![app, name], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, i64>(2)?,
                    ))
                })
                .map_err(sqlite_err)?;
            let mut counts = Vec::new();
            for row in rows {
                let (config_id, status, n) = row.map_err(sqlite_err)?;
                super::add_status_count(&mut counts, config_id, &status, n);
            }
            Ok(counts)
        })
        .await
    }

    async fn app_versions(&self) -> Result<Vec<AppVersionSummary>, StoreError> {
        self.read(|tx| {
            let versions = tx
                .prepare_cached(q!(sql::APP_VERSIONS))
                .and_then(|mut s| {
                    s.query_map([], |r| r.get::<_, String>(0))?
                        .collect::<Result<Vec<_>, _>>()
                })
                .map_err(sqlite_err)?;
            let defaults = tx
                .prepare_cached(q!(sql::ALL_DEFAULTS))
                .and_then(|mut s| {
                    s.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                        .collect::<Result<Vec<_>, _>>()
                })
                .map_err(sqlite_err)?;
            Ok(super::summarise_app_versions(versions, defaults))
        })
        .await
    }

    async fn statuses(&self, query: &StatusQuery) -> Result<Page<StatusRecord>, StoreError> {
        let query = query.clone();
        self.read(move |tx| {
            let endpoint = query.endpoint_id.as_str();
            let app = query.app_version.as_ref().map(AppVersionName::as_str);
            let config_id = query.config_id.as_deref();
            let total: i64 = tx
                .prepare_cached(q!(sql::status_count()))
                .and_then(|mut s| s.query_row(params![endpoint, app, config_id], |r| r.get(0)))
                .map_err(sqlite_err)?;
            let limit = i64::from(query.size);
            let offset = i64::from(query.page) * limit;
            let mut stmt = tx
                .prepare_cached(q!(sql::status_page()))
                .map_err(sqlite_err)?;
            let rows = stmt
                .query_map(params![endpoint, app, config_id, limit, offset], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, String>(3)?,
                        r.get::<_, String>(4)?,
                        r.get::<_, Option<i64>>(5)?,
                        r.get::<_, Option<i64>>(6)?,
                        r.get::<_, Option<i32>>(7)?,
                        r.get::<_, Option<String>>(8)?,
                    ))
                })
                .map_err(sqlite_err)?;
            let content = rows
                .map(|r| r.map_err(sqlite_err).and_then(status_record))
                .collect::<Result<_, _>>()?;
            Ok(Page {
                content,
                total_elements: u64::try_from(total).unwrap_or(0),
            })
        })
        .await
    }
}

/// The rollouts whose documents `statement` selects.
fn read_docs(
    tx: &Connection,
    statement: &str,
    params: impl rusqlite::Params,
) -> Result<Vec<Rollout>, StoreError> {
    let mut stmt = tx.prepare_cached(statement).map_err(sqlite_err)?;
    let docs = stmt
        .query_map(params, |r| r.get::<_, String>(0))
        .map_err(sqlite_err)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(sqlite_err)?;
    docs.iter().map(|d| super::parse_rollout(d)).collect()
}

/// The status a confirmation with `status_code` leads to.
pub(crate) fn confirmed_status(status_code: i32) -> DeliveryStatus {
    if (200..300).contains(&status_code) {
        DeliveryStatus::Applied
    } else {
        DeliveryStatus::Rejected
    }
}

/// A status row as the stores read it.
pub(crate) type StatusRow = (
    String,
    String,
    String,
    String,
    String,
    Option<i64>,
    Option<i64>,
    Option<i32>,
    Option<String>,
);

pub(crate) fn status_record(
    (endpoint_id, app_version, name, config_id, status, dispatched, confirmed, code, reason): StatusRow,
) -> Result<StatusRecord, StoreError> {
    Ok(StatusRecord {
        endpoint_id,
        app_version,
        name,
        config_id,
        status: DeliveryStatus::parse(&status)
            .ok_or_else(|| StoreError::Corrupt(format!("unknown status {status:?}")))?,
        last_dispatched: dispatched.map(UnixMillis),
        last_confirmed: confirmed.map(UnixMillis),
        status_code: code,
        reason_phrase: reason,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_second_store_on_the_same_file_is_refused_until_the_first_closes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ecr.db");
        let first = SqliteStore::open(&path).await.unwrap();
        let err = SqliteStore::open(&path).await.unwrap_err();
        match &err {
            StoreError::InUse { path: p, lock } => {
                assert_eq!(p, &path);
                assert_eq!(lock, &dir.path().join("ecr.db.lock"));
            }
            other => panic!("expected InUse, got {other:?}"),
        }
        let message = err.to_string();
        assert!(
            message.contains("in use by another ECR process"),
            "{message}"
        );
        assert!(
            message.contains("run ECR replicas on PostgreSQL"),
            "{message}"
        );
        // Another file is not affected.
        let other = SqliteStore::open(dir.path().join("other.db"))
            .await
            .unwrap();
        drop(other);
        drop(first);
        SqliteStore::open(&path).await.unwrap();
    }

    /// A database at schema version 5 with an active rollout of a default migrates
    /// to version 6: the rollout is a default's (no layer), still active, and still
    /// locks its default.
    #[tokio::test]
    async fn version_5_with_an_active_rollout_migrates_to_6() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ecr.db");
        let now = 1_000;
        let r = crate::rollout::new_rollout(
            "r1".into(),
            "kettle",
            "default",
            &crate::model::Content::from_value(&serde_json::json!({"sampling": 2})),
            &[10.0, 100.0],
            crate::rollout::Gate {
                min_applied_percent: 0.0,
                min_applied: 0,
                soak_seconds: 1,
            },
            crate::rollout::AbortCriteria {
                max_rejected_percent: 50.0,
                min_sample: 10,
                report_timeout_seconds: 60,
            },
            crate::rollout::OnAbort::Revert,
            now,
        )
        .unwrap();
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(sql::VERSION_TABLE).unwrap();
            for m in &sql::MIGRATIONS[..5] {
                conn.execute_batch(m).unwrap();
            }
            conn.execute("INSERT INTO ecr_schema_version (version) VALUES (5)", [])
                .unwrap();
            conn.execute(
                "INSERT INTO rollouts (rollout_id, app_version, name, active, served_bp, config_id, content, created_ms, updated_ms, revision, doc) \
                 VALUES (?1, 'kettle', 'default', 1, 1000, ?2, ?3, ?4, ?4, 1, ?5)",
                params![r.rollout_id, r.config_id, r.content, now, super::super::rollout_doc(&r)],
            )
            .unwrap();
        }
        let store = SqliteStore::open(&path).await.unwrap();
        let active = store.active_rollouts().await.unwrap();
        assert_eq!(active.len(), 1);
        assert_eq!(active[0].layer, None);
        let app = AppVersionName::new("kettle").unwrap();
        let err = store
            .put(
                &Scope::Default { app_version: app },
                &crate::model::ConfigName::default_name(),
                &crate::model::Content::from_value(&serde_json::json!(1)),
                &Precondition::None,
                UnixMillis(now),
            )
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
    }
}
