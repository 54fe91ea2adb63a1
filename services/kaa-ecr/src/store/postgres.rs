//! The PostgreSQL store: tokio-postgres with a deadpool pool.

use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use deadpool_postgres::{GenericClient, Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::{NoTls, Row};

use kaa_ism::UnixMillis;

use super::sqlite::{StatusRow, confirmed_status, status_record};
use super::{
    AnnouncementSink, AppVersionSummary, Base, BatchTarget, ConfigStore, EffectiveKey,
    GroupSummary, LayerInputs, Overlay, Precondition, PutOutcome, StatusCount, StatusWrite,
    StoreError, apply_overlay, sql,
};
use crate::core::EffectiveChange;
use crate::layers::{EffectiveInputs, GroupName, Layer, LayerTarget};
use crate::model::{
    AppVersionName, ConfigName, Content, DeliveryStatus, EndpointId, Page, Scope, Source,
    StatusEvent, StatusQuery, StatusRecord, StoredConfig,
};
use crate::rollout::{Report, Rollout, RolloutState};

/// The default pool size.
const POOL_SIZE: usize = 16;

/// `pg_advisory_xact_lock` key that serialises schema migrations of concurrent starts.
const MIGRATION_LOCK: i64 = 0x6563_725f_7363_6865; // "ecr_sche"

/// The PostgreSQL store. Connections come from a pool of 16; the schema is created or
/// migrated when the store connects. TLS is not configured (`NoTls`): run it on a
/// trusted network or a local socket.
///
/// # Replicas
///
/// Several ECR replicas may share one database. With durable announcements on
/// ([`ConfigStore::enable_durable_announcements`]; the ECR service turns them on)
/// every write that changes a configuration inserts a row into `announce_outbox` in
/// its own transaction: (endpoint ID, or `''` for a default, app version, name). The
/// announcer of every replica ([`ConfigStore::announce_pending`]) takes the oldest
/// rows with `FOR UPDATE SKIP LOCKED` (so each row is taken by one replica at a
/// time), then a transaction-scoped advisory lock per (app version, name) of those
/// rows, in ascending order (no deadlock between replicas), reads the current
/// effective configurations concerned, hands them to the sink (which publishes and
/// flushes them), deletes the rows and commits, releasing the locks. A replica that
/// dies before the commit leaves its rows (its transaction is rolled back when its
/// connection drops), and another replica's announcer takes them on its next poll.
#[derive(Clone)]
pub struct PostgresStore {
    pool: Pool,
    outbox: Arc<AtomicBool>,
    written: Arc<tokio::sync::Notify>,
    config: tokio_postgres::Config,
    /// The dedicated connection holding [`ROLLOUT_LEADER_LOCK`] while this replica
    /// drives the rollouts.
    leader: Arc<tokio::sync::Mutex<Option<tokio_postgres::Client>>>,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore").finish_non_exhaustive()
    }
}

fn pg_err(e: impl std::fmt::Display + 'static) -> StoreError {
    // tokio-postgres shows a server error as "db error"; the server's words (and
    // its SQLSTATE) are what an operator needs in the log.
    match (&e as &dyn std::any::Any).downcast_ref::<tokio_postgres::Error>() {
        Some(pg) => match pg.as_db_error() {
            Some(db) => StoreError::Backend(format!(
                "{pg}: {} (SQLSTATE {})",
                db.message(),
                db.code().code()
            )),
            None => StoreError::backend(pg),
        },
        None => StoreError::backend(e),
    }
}

/// Whether `e` is a transaction PostgreSQL rolled back so that another could go on
/// (a deadlock or a serialization failure): running it again may succeed.
fn retryable(e: &tokio_postgres::Error) -> bool {
    use tokio_postgres::error::SqlState;
    matches!(
        e.code(),
        Some(c) if *c == SqlState::T_R_DEADLOCK_DETECTED || *c == SqlState::T_R_SERIALIZATION_FAILURE
    )
}

/// How many times a status batch is written again after PostgreSQL rolled it back
/// as a deadlock victim or serialization failure.
const STATUS_BATCH_RETRIES: usize = 3;

const FOR_UPDATE: &str = " FOR UPDATE";
const FOR_SHARE: &str = " FOR SHARE";

/// The status events of one batch in ONE statement (one executor start and one
/// round trip instead of one per event). Each row is the combined effect of every
/// event of the batch about its (endpoint, app version, name, config ID), in order
/// ([`merge_statuses`]): NULL `dispatched_ms` / `confirmed_ms` keep what the row had,
/// as the single-event statements in `sql` do.
const STATUS_UPSERT_MANY: &str = "INSERT INTO statuses (endpoint_id, app_version, name, config_id, \
     status, status_code, reason_phrase, dispatched_ms, confirmed_ms, activity_ms) \
     SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], \
     $6::int4[], $7::text[], $8::int8[], $9::int8[], $10::int8[]) \
     ON CONFLICT (endpoint_id, app_version, name, config_id) DO UPDATE SET \
     status = excluded.status, \
     status_code = CASE WHEN excluded.confirmed_ms IS NULL THEN statuses.status_code ELSE excluded.status_code END, \
     reason_phrase = CASE WHEN excluded.confirmed_ms IS NULL THEN statuses.reason_phrase ELSE excluded.reason_phrase END, \
     dispatched_ms = COALESCE(excluded.dispatched_ms, statuses.dispatched_ms), \
     confirmed_ms = COALESCE(excluded.confirmed_ms, statuses.confirmed_ms), \
     activity_ms = excluded.activity_ms";

/// The combined effect of a batch's status events about one key.
struct MergedStatus<'a> {
    key: (&'a str, &'a str, &'a str, &'a str),
    status: &'static str,
    status_code: Option<i32>,
    reason_phrase: Option<&'a str>,
    dispatched_ms: Option<i64>,
    confirmed_ms: Option<i64>,
    activity_ms: i64,
}

/// Folds `writes` (in order) into one row per (endpoint, app version, name, config
/// ID), first-seen order: a dispatch sets the status, `dispatched_ms` and the
/// activity; a confirmation sets the status, code, reason, `confirmed_ms` and the
/// activity; the last event's status and time win. One upsert of the result leaves
/// the table as upserting the events one by one would (and an upsert cannot touch
/// the same row twice). The rows come out sorted by key: every batch, of every
/// replica, then locks the rows it upserts in the same order, so two batches with
/// keys in common wait for each other instead of deadlocking (a CDTP answer's
/// dispatch and the device's applied report about one key are often written by
/// two replicas at the same time).
fn merge_statuses(writes: &[StatusWrite]) -> Vec<MergedStatus<'_>> {
    let mut rows: Vec<MergedStatus<'_>> = Vec::with_capacity(writes.len());
    let mut index = std::collections::HashMap::with_capacity(writes.len());
    for w in writes {
        let key = (
            w.endpoint_id.as_str(),
            w.app_version.as_str(),
            w.name.as_str(),
            w.config_id.as_str(),
        );
        let i = *index.entry(key).or_insert_with(|| {
            rows.push(MergedStatus {
                key,
                status: "",
                status_code: None,
                reason_phrase: None,
                dispatched_ms: None,
                confirmed_ms: None,
                activity_ms: w.at.0,
            });
            rows.len() - 1
        });
        let row = &mut rows[i];
        row.activity_ms = w.at.0;
        match &w.event {
            StatusEvent::Dispatched => {
                row.status = "DISPATCHED";
                row.dispatched_ms = Some(w.at.0);
            }
            StatusEvent::Confirmed {
                status_code,
                reason_phrase,
            } => {
                row.status = confirmed_status(*status_code).as_str();
                row.status_code = Some(*status_code);
                row.reason_phrase = reason_phrase.as_deref();
                row.confirmed_ms = Some(w.at.0);
            }
        }
    }
    rows.sort_unstable_by(|a, b| a.key.cmp(&b.key));
    rows
}

/// One transaction upserting the merged rows of a status batch.
async fn upsert_statuses(
    client: &mut deadpool_postgres::Object,
    rows: &[MergedStatus<'_>],
) -> Result<(), tokio_postgres::Error> {
    let tx = client.transaction().await?;
    // The status history is not an acknowledged write (events still queued when
    // ECR dies are lost anyway), so its commits do not wait for the WAL flush:
    // they no longer queue behind, or add to, the fsyncs of the REST writes,
    // whose commits stay synchronous (and flush any status commit before them).
    // A PostgreSQL crash may lose the last few hundred milliseconds of history.
    tx.batch_execute("SET LOCAL synchronous_commit = off")
        .await?;
    let endpoints: Vec<&str> = rows.iter().map(|r| r.key.0).collect();
    let versions: Vec<&str> = rows.iter().map(|r| r.key.1).collect();
    let names: Vec<&str> = rows.iter().map(|r| r.key.2).collect();
    let config_ids: Vec<&str> = rows.iter().map(|r| r.key.3).collect();
    let statuses: Vec<&str> = rows.iter().map(|r| r.status).collect();
    let codes: Vec<Option<i32>> = rows.iter().map(|r| r.status_code).collect();
    let reasons: Vec<Option<&str>> = rows.iter().map(|r| r.reason_phrase).collect();
    let dispatched: Vec<Option<i64>> = rows.iter().map(|r| r.dispatched_ms).collect();
    let confirmed: Vec<Option<i64>> = rows.iter().map(|r| r.confirmed_ms).collect();
    let activity: Vec<i64> = rows.iter().map(|r| r.activity_ms).collect();
    let s = tx.prepare_cached(STATUS_UPSERT_MANY).await?;
    tx.execute(
        &s,
        &[
            &endpoints,
            &versions,
            &names,
            &config_ids,
            &statuses,
            &codes,
            &reasons,
            &dispatched,
            &confirmed,
            &activity,
        ],
    )
    .await?;
    tx.commit().await
}

/// [`ConfigStore::effective_many`] in one statement (one snapshot): for each key
/// (`$1`, `$2`, `$3` are parallel arrays; `i` is its 1-based position) the endpoint's
/// own row and the default (the default is not used when the own row is a whole
/// document). The content is sent only on the first row of each config ID (NULL on
/// the others): a default fanned out to thousands of endpoints crosses the socket
/// once per batch, not once per endpoint.
const EFFECTIVE_MANY: &str = "SELECT q.i, c.name, c.config_id, \
     CASE WHEN row_number() OVER (PARTITION BY c.config_id ORDER BY q.i, c.endpoint_id) = 1 THEN c.content END, \
     c.created_ms, c.updated_ms, c.endpoint_id, c.own_patch \
     FROM unnest($1::text[], $2::text[], $3::text[]) WITH ORDINALITY AS q(ep, av, nm, i) \
     CROSS JOIN LATERAL (SELECT name, config_id, content, created_ms, updated_ms, endpoint_id, own_patch \
     FROM configs WHERE endpoint_id IN (q.ep, '') AND app_version = q.av AND name = q.nm \
     ORDER BY endpoint_id DESC LIMIT 2) c";

/// `pg_try_advisory_lock` key (session-scoped, on the leader connection) held by
/// the replica that drives the rollouts.
const ROLLOUT_LEADER_LOCK: i64 = 0x6563_725f_726f_6c6c; // "ecr_roll"

/// How long the rollout leader's connection may take to connect, take the lock or
/// show it is alive.
const LEADER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// The transaction-scoped advisory lock of the default of (app version, name): taken
/// by default writes and by the creation of a rollout, so that one never slips
/// between the other's check and write.
fn default_lock(app_version: &str, name: &str) -> i64 {
    use sha2::Digest;
    let digest = sha2::Sha256::new()
        .chain_update(b"kaa-ecr default\0")
        .chain_update(app_version.as_bytes())
        .chain_update(b"\0")
        .chain_update(name.as_bytes())
        .finalize();
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&digest[..8]);
    i64::from_be_bytes(bytes)
}

/// Takes the transaction-scoped advisory lock of layer `layer_name` of
/// (`app_version`, `name`) in `tx` (taken by the layer's writes and by the creation
/// of its rollout, so that neither slips between the other's check and write), then
/// answers the layer's active rollout, if any.
async fn lock_layer(
    tx: &impl GenericClient,
    app_version: &str,
    name: &str,
    layer_name: &str,
) -> Result<Option<String>, StoreError> {
    tx.execute(
        "SELECT pg_advisory_xact_lock($1)",
        &[&default_lock(
            app_version,
            &format!("{name}\0layer\0{layer_name}"),
        )],
    )
    .await
    .map_err(pg_err)?;
    let s = tx
        .prepare_cached(sql::ROLLOUT_OF_LAYER)
        .await
        .map_err(pg_err)?;
    tx.query_opt(&s, &[&app_version, &name, &layer_name])
        .await
        .map_err(pg_err)?
        .map(|row| row.try_get(0).map_err(pg_err))
        .transpose()
}

/// Takes [`default_lock`] in `tx`, then refuses when a rollout of (app version,
/// name) is active.
async fn lock_default(
    tx: &impl GenericClient,
    app_version: &str,
    name: &str,
) -> Result<Option<Overlay>, StoreError> {
    tx.execute(
        "SELECT pg_advisory_xact_lock($1)",
        &[&default_lock(app_version, name)],
    )
    .await
    .map_err(pg_err)?;
    overlay_of(tx, app_version, name).await
}

fn row_overlay(row: &Row, name: &str) -> Result<Overlay, StoreError> {
    let bp: i32 = row.try_get(1).map_err(pg_err)?;
    Ok(Overlay {
        rollout_id: row.try_get(0).map_err(pg_err)?,
        served_bp: u32::try_from(bp).unwrap_or(0),
        config: StoredConfig {
            name: ConfigName::new(name).map_err(|e| StoreError::Corrupt(e.to_string()))?,
            config_id: row.try_get(2).map_err(pg_err)?,
            content: row.try_get(3).map_err(pg_err)?,
            created: UnixMillis(row.try_get(4).map_err(pg_err)?),
            updated: UnixMillis(row.try_get(5).map_err(pg_err)?),
        },
    })
}

/// The active rollout of (`app_version`, `name`), as `effective` applies it.
async fn overlay_of(
    client: &impl GenericClient,
    app_version: &str,
    name: &str,
) -> Result<Option<Overlay>, StoreError> {
    let s = client
        .prepare_cached(sql::ROLLOUT_OVERLAY)
        .await
        .map_err(pg_err)?;
    client
        .query_opt(&s, &[&app_version, &name])
        .await
        .map_err(pg_err)?
        .map(|row| row_overlay(&row, name))
        .transpose()
}

/// Every active rollout by (app version, name), as `effective_many` applies them.
async fn overlays(
    client: &impl GenericClient,
) -> Result<std::collections::HashMap<(String, String), Overlay>, StoreError> {
    let s = client
        .prepare_cached(sql::ROLLOUT_OVERLAYS)
        .await
        .map_err(pg_err)?;
    let mut out = std::collections::HashMap::new();
    for row in client.query(&s, &[]).await.map_err(pg_err)? {
        let app_version: String = row.try_get(6).map_err(pg_err)?;
        let name: String = row.try_get(7).map_err(pg_err)?;
        let overlay = row_overlay(&row, &name)?;
        out.insert((app_version, name), overlay);
    }
    Ok(out)
}

async fn read_docs(
    client: &impl GenericClient,
    statement: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Result<Vec<Rollout>, StoreError> {
    let s = client.prepare_cached(statement).await.map_err(pg_err)?;
    client
        .query(&s, params)
        .await
        .map_err(pg_err)?
        .iter()
        .map(|row| super::parse_rollout(&row.try_get::<_, String>(0).map_err(pg_err)?))
        .collect()
}

/// The layers of the keys' (app version, name) pairs, and, when one of them
/// targets a group (or `groups` asks for them anyway), the groups of the keys'
/// endpoints: two statements for any number of keys (the first reads the active
/// layer rollouts too).
async fn layer_inputs_on(
    client: &impl GenericClient,
    keys: &[EffectiveKey],
    groups: bool,
) -> Result<LayerInputs, StoreError> {
    let mut inputs = LayerInputs::default();
    let mut versions: Vec<&str> = keys.iter().map(|k| k.app_version.as_str()).collect();
    versions.sort_unstable();
    versions.dedup();
    let pairs: std::collections::HashSet<(&str, &str)> = keys
        .iter()
        .map(|k| (k.app_version.as_str(), k.name.as_str()))
        .collect();
    // The layers, and in the same statement the active layer rollouts (a 9th
    // column, their document; NULL on the layers' rows).
    let s = client
        .prepare_cached(&format!(
            "SELECT {}, CAST(NULL AS TEXT) FROM layers WHERE app_version = ANY($1) \
             UNION ALL SELECT app_version, name, layer_name, 0, '', '', 0, 0, doc FROM rollouts \
             WHERE app_version = ANY($1) AND active = 1 AND layer_name <> ''",
            sql::LAYER_COLUMNS
        ))
        .await
        .map_err(pg_err)?;
    let mut rolling = Vec::new();
    for row in client.query(&s, &[&versions]).await.map_err(pg_err)? {
        if let Some(doc) = row.try_get::<_, Option<String>>(8).map_err(pg_err)? {
            rolling.push(super::parse_rollout(&doc)?);
            continue;
        }
        let layer = layer_from_row(&row)?;
        if pairs.contains(&(layer.app_version.as_str(), layer.name.as_str())) {
            inputs
                .layers
                .entry((layer.app_version.clone(), layer.name.clone()))
                .or_default()
                .push(layer);
        }
    }
    for layers in inputs.layers.values_mut() {
        crate::layers::order(layers);
    }
    inputs.rolling = super::rolling_layers(&rolling)
        .into_iter()
        .filter(|r| pairs.contains(&(r.layer.app_version.as_str(), r.layer.name.as_str())))
        .collect();
    if groups || inputs.any_grouped() {
        let mut endpoints: Vec<&str> = keys.iter().map(|k| k.endpoint_id.as_str()).collect();
        endpoints.sort_unstable();
        endpoints.dedup();
        let s = client
            .prepare_cached(
                "SELECT app_version, endpoint_id, group_name FROM group_members WHERE endpoint_id = ANY($1)",
            )
            .await
            .map_err(pg_err)?;
        for row in client.query(&s, &[&endpoints]).await.map_err(pg_err)? {
            let app: String = row.try_get(0).map_err(pg_err)?;
            let endpoint: String = row.try_get(1).map_err(pg_err)?;
            inputs
                .groups
                .entry((app, endpoint))
                .or_default()
                .insert(row.try_get(2).map_err(pg_err)?);
        }
    }
    Ok(inputs)
}

fn layer_from_row(row: &Row) -> Result<Layer, StoreError> {
    super::layer_row(
        row.try_get(0).map_err(pg_err)?,
        row.try_get(1).map_err(pg_err)?,
        row.try_get(2).map_err(pg_err)?,
        row.try_get(3).map_err(pg_err)?,
        row.try_get(4).map_err(pg_err)?,
        row.try_get(5).map_err(pg_err)?,
        row.try_get(6).map_err(pg_err)?,
        row.try_get(7).map_err(pg_err)?,
    )
}

/// [`ConfigStore::effective_many`] on `client` (a pooled connection, or the
/// announcer's transaction): the bases (own configuration or default as served,
/// one statement) with their layers composed ([`layer_inputs_on`], at most two
/// statements more, whatever the number of keys or layers).
async fn effective_many_on(
    client: &impl GenericClient,
    keys: &[EffectiveKey],
) -> Result<Vec<Option<(StoredConfig, Source)>>, StoreError> {
    let bases = base_many_on(client, keys).await?;
    let inputs = layer_inputs_on(client, keys, false).await?;
    if inputs.layers.is_empty()
        && inputs.rolling.is_empty()
        && bases.iter().all(|(_, patch)| patch.is_none())
    {
        return Ok(bases.into_iter().map(|(base, _)| base).collect());
    }
    Ok(keys
        .iter()
        .zip(bases)
        .map(|(k, (base, patch))| inputs.compose(k, base, patch.as_ref()))
        .collect())
}

/// The own whole configurations or bases of `keys` (no layers), each with the own
/// configuration stored as a merge patch.
async fn base_many_on(
    client: &impl GenericClient,
    keys: &[EffectiveKey],
) -> Result<Vec<Base>, StoreError> {
    let s = client
        .prepare_cached(EFFECTIVE_MANY)
        .await
        .map_err(pg_err)?;
    // The rollouts first: a rollout completing meanwhile has written the default by
    // the time the configurations are read.
    let active = overlays(client).await?;
    let column = |f: fn(&EffectiveKey) -> &str| keys.iter().map(f).collect::<Vec<_>>();
    let endpoints = column(|k| k.endpoint_id.as_str());
    let versions = column(|k| k.app_version.as_str());
    let names = column(|k| k.name.as_str());
    let rows = client
        .query(&s, &[&endpoints, &versions, &names])
        .await
        .map_err(pg_err)?;
    // The content of a config ID comes once per batch (it is derived from the
    // content, so every row with that ID has the same).
    let mut contents: std::collections::HashMap<String, String> = std::collections::HashMap::new();
    let mut found = Vec::with_capacity(rows.len());
    for row in &rows {
        let i: i64 = row.try_get(0).map_err(pg_err)?;
        let name: String = row.try_get(1).map_err(pg_err)?;
        let config_id: String = row.try_get(2).map_err(pg_err)?;
        if let Some(content) = row.try_get::<_, Option<String>>(3).map_err(pg_err)? {
            contents.insert(config_id.clone(), content);
        }
        let endpoint: String = row.try_get(6).map_err(pg_err)?;
        let own_patch: i32 = row.try_get(7).map_err(pg_err)?;
        let config = StoredConfig {
            name: ConfigName::new(name).map_err(|e| StoreError::Corrupt(e.to_string()))?,
            config_id,
            content: String::new(),
            created: UnixMillis(row.try_get(4).map_err(pg_err)?),
            updated: UnixMillis(row.try_get(5).map_err(pg_err)?),
        };
        // 0: the default; 1: an own whole configuration; 2: an own patch.
        let kind = match (endpoint.is_empty(), own_patch != 0) {
            (true, _) => 0,
            (false, false) => 1,
            (false, true) => 2,
        };
        found.push((i, config, kind));
    }
    // Per key: (default, own whole, own patch).
    type Rows = (
        Option<StoredConfig>,
        Option<StoredConfig>,
        Option<StoredConfig>,
    );
    let mut rows_of: Vec<Rows> = keys.iter().map(|_| (None, None, None)).collect();
    for (i, mut config, kind) in found {
        let slot = usize::try_from(i - 1)
            .ok()
            .and_then(|i| rows_of.get_mut(i))
            .ok_or_else(|| StoreError::Corrupt(format!("row {i} of {} keys", keys.len())))?;
        config.content = contents
            .get(&config.config_id)
            .cloned()
            .ok_or_else(|| StoreError::Corrupt("content missing from the batch".into()))?;
        match kind {
            0 => slot.0 = Some(config),
            1 => slot.1 = Some(config),
            _ => slot.2 = Some(config),
        }
    }
    Ok(keys
        .iter()
        .zip(rows_of)
        .map(|(key, (default, whole, patch))| match whole {
            Some(own) => (Some((own, Source::Endpoint)), None),
            None => {
                let overlay = active.get(&(key.app_version.to_string(), key.name.to_string()));
                (
                    apply_overlay(
                        default.map(|c| (c, Source::Default)),
                        key.endpoint_id.as_str(),
                        overlay,
                    ),
                    patch,
                )
            }
        })
        .collect())
}

/// One configuration, locked for the write when `for_update`, and whether it is
/// stored as a merge patch.
async fn select_own(
    client: &impl GenericClient,
    endpoint_key: &str,
    app_version: &str,
    name: &str,
    for_update: bool,
) -> Result<Option<(StoredConfig, bool)>, StoreError> {
    let statement = if for_update {
        client
            .prepare_cached(&format!("{}{FOR_UPDATE}", sql::SELECT_ONE))
            .await
    } else {
        client.prepare_cached(sql::SELECT_ONE).await
    }
    .map_err(pg_err)?;
    client
        .query_opt(&statement, &[&endpoint_key, &app_version, &name])
        .await
        .map_err(pg_err)?
        .as_ref()
        .map(|row| {
            Ok((
                to_config(row)?,
                row.try_get::<_, i32>(5).map_err(pg_err)? != 0,
            ))
        })
        .transpose()
}

fn to_config(row: &Row) -> Result<StoredConfig, StoreError> {
    let name: String = row.try_get(0).map_err(pg_err)?;
    Ok(StoredConfig {
        name: ConfigName::new(name).map_err(|e| StoreError::Corrupt(e.to_string()))?,
        config_id: row.try_get(1).map_err(pg_err)?,
        content: row.try_get(2).map_err(pg_err)?,
        created: UnixMillis(row.try_get(3).map_err(pg_err)?),
        updated: UnixMillis(row.try_get(4).map_err(pg_err)?),
    })
}

async fn select_one(
    client: &impl GenericClient,
    endpoint_key: &str,
    app_version: &str,
    name: &str,
    for_update: bool,
) -> Result<Option<StoredConfig>, StoreError> {
    let statement = if for_update {
        client
            .prepare_cached(&format!("{}{FOR_UPDATE}", sql::SELECT_ONE))
            .await
    } else {
        client.prepare_cached(sql::SELECT_ONE).await
    }
    .map_err(pg_err)?;
    client
        .query_opt(&statement, &[&endpoint_key, &app_version, &name])
        .await
        .map_err(pg_err)?
        .as_ref()
        .map(to_config)
        .transpose()
}

/// Records in `tx` that the change of (`endpoint_key`, `app_version`, `name`) is due
/// to be announced. A default's change (`endpoint_key` empty) records the default
/// it replaced (`previous`: its content; `None`: there was none), so that the
/// announcer announces only the followers whose effective configuration it changed.
async fn outbox_insert(
    tx: &impl GenericClient,
    endpoint_key: &str,
    app_version: &str,
    name: &str,
    previous: Option<&StoredConfig>,
    now: UnixMillis,
) -> Result<(), StoreError> {
    let s = tx.prepare_cached(OUTBOX_INSERT).await.map_err(pg_err)?;
    let before_known: i32 = endpoint_key.is_empty().into();
    let before_content = previous
        .filter(|_| endpoint_key.is_empty())
        .map(|p| p.content.as_str());
    tx.execute(
        &s,
        &[
            &endpoint_key,
            &app_version,
            &name,
            &now.0,
            &before_known,
            &before_content,
        ],
    )
    .await
    .map_err(pg_err)?;
    Ok(())
}

const OUTBOX_INSERT: &str = "INSERT INTO announce_outbox (endpoint_id, app_version, name, created_ms, before_known, before_content) \
     VALUES ($1, $2, $3, $4, $5, $6)";

/// The oldest due announcements, each taken by one replica at a time.
const OUTBOX_TAKE: &str = "SELECT seq, endpoint_id, app_version, name, before_known, before_content FROM announce_outbox \
     ORDER BY seq LIMIT $1 FOR UPDATE SKIP LOCKED";

/// Every known endpoint of `$1` following the default `$2` (no own configuration, or
/// one stored as a merge patch), with that default (NULL columns when there is none)
/// and its own patch (NULL columns when none): one statement, one snapshot.
const FOLLOWERS_WITH_DEFAULT: &str = "SELECT k.endpoint_id, d.name, d.config_id, d.content, d.created_ms, d.updated_ms, \
     o.config_id, o.content, o.created_ms, o.updated_ms \
     FROM known_endpoints k LEFT JOIN configs d ON d.endpoint_id = '' AND d.app_version = k.app_version AND d.name = $2 \
     LEFT JOIN configs o ON o.endpoint_id = k.endpoint_id AND o.app_version = k.app_version AND o.name = $2 \
     WHERE k.app_version = $1 AND (o.endpoint_id IS NULL OR o.own_patch = 1) ORDER BY k.endpoint_id";

/// The advisory lock key of the announcements of (app version, name): the first 8
/// bytes of SHA-256 over both, the same in every replica.
fn announce_lock(app_version: &str, name: &str) -> i64 {
    use sha2::Digest;
    let digest = sha2::Sha256::new()
        .chain_update(b"kaa-ecr announce\0")
        .chain_update(app_version.as_bytes())
        .chain_update(b"\0")
        .chain_update(name.as_bytes())
        .finalize();
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&digest[..8]);
    i64::from_be_bytes(bytes)
}

#[allow(clippy::too_many_arguments)]
async fn put_in(
    tx: &impl GenericClient,
    scope: &Scope,
    name: &ConfigName,
    content: &Content,
    own_patch: bool,
    precondition: &Precondition,
    now: UnixMillis,
    outbox: bool,
) -> Result<PutOutcome, StoreError> {
    let endpoint_key = scope.endpoint_key();
    let app_version = scope.app_version().as_str();
    if own_patch && scope.endpoint_id().is_none() {
        return Err(super::default_patch());
    }
    if scope.endpoint_id().is_none()
        && let Some(o) = lock_default(tx, app_version, name.as_str()).await?
    {
        return Err(super::default_locked(
            app_version,
            name.as_str(),
            &o.rollout_id,
        ));
    }
    let remember = async {
        if let Some(endpoint_id) = scope.endpoint_id() {
            let s = tx.prepare_cached(sql::REMEMBER).await.map_err(pg_err)?;
            tx.execute(&s, &[&endpoint_id.as_str(), &app_version])
                .await
                .map_err(pg_err)?;
        }
        Ok::<_, StoreError>(())
    };
    // Pipelined on the one connection (one round trip for both). A failed
    // precondition rolls the known-endpoint insert back with the transaction.
    let (previous, remembered) = futures::join!(
        select_own(tx, endpoint_key, app_version, name.as_str(), true),
        remember
    );
    let (previous, previous_patch) = match previous? {
        Some((c, patch)) => (Some(c), patch),
        None => (None, false),
    };
    remembered?;
    precondition.check(previous.as_ref().map(|p| p.config_id.as_str()))?;
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
    let s = tx.prepare_cached(sql::UPSERT_OWN).await.map_err(pg_err)?;
    tx.execute(
        &s,
        &[
            &endpoint_key,
            &app_version,
            &name.as_str(),
            &content.config_id,
            &content.json,
            &now.0,
            &i32::from(own_patch),
        ],
    )
    .await
    .map_err(pg_err)?;
    if outbox {
        outbox_insert(
            tx,
            endpoint_key,
            app_version,
            name.as_str(),
            previous.as_ref(),
            now,
        )
        .await?;
    }
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

impl PostgresStore {
    /// Connects to `url` (a libpq-style `postgres://user[:password]@host[:port]/db`),
    /// builds the pool and creates or migrates the schema.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let config = tokio_postgres::Config::from_str(url)
            .map_err(|e| StoreError::Backend(format!("invalid PostgreSQL URL: {e}")))?;
        let manager = Manager::from_config(
            config.clone(),
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .build()
            .map_err(pg_err)?;
        let store = Self {
            pool,
            outbox: Arc::new(AtomicBool::new(false)),
            written: Arc::new(tokio::sync::Notify::new()),
            config,
            leader: Arc::new(tokio::sync::Mutex::new(None)),
        };
        store.migrate().await?;
        Ok(store)
    }

    /// With durable announcements on, records in `tx` that the endpoints of
    /// `announce` are due to be announced (their effective configuration is read when
    /// announced, rollout applied); returns whether it did.
    async fn outbox_announce(
        &self,
        tx: &impl GenericClient,
        rollout: &Rollout,
        announce: &[EndpointId],
    ) -> Result<bool, StoreError> {
        if !self.outbox.load(Ordering::Relaxed) || announce.is_empty() {
            return Ok(false);
        }
        let now = UnixMillis(rollout.updated_ms);
        for chunk in announce.chunks(1000) {
            let endpoints: Vec<&str> = chunk.iter().map(EndpointId::as_str).collect();
            tx.execute(
                "INSERT INTO announce_outbox (endpoint_id, app_version, name, created_ms) \
                 SELECT e, $2, $3, $4 FROM unnest($1::text[]) AS e",
                &[&endpoints, &rollout.app_version, &rollout.name, &now.0],
            )
            .await
            .map_err(pg_err)?;
        }
        Ok(true)
    }

    /// With durable announcements on, records in `tx` that `endpoints` are due to be
    /// announced their configuration `name` of `app_version`; returns whether it did.
    async fn outbox_endpoints(
        &self,
        tx: &impl GenericClient,
        app_version: &str,
        name: &str,
        endpoints: &[EndpointId],
        now: UnixMillis,
    ) -> Result<bool, StoreError> {
        if !self.outbox.load(Ordering::Relaxed) || endpoints.is_empty() {
            return Ok(false);
        }
        for chunk in endpoints.chunks(1000) {
            let endpoints: Vec<&str> = chunk.iter().map(EndpointId::as_str).collect();
            tx.execute(
                "INSERT INTO announce_outbox (endpoint_id, app_version, name, created_ms) \
                 SELECT e, $2, $3, $4 FROM unnest($1::text[]) AS e",
                &[&endpoints, &app_version, &name, &now.0],
            )
            .await
            .map_err(pg_err)?;
        }
        Ok(true)
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.pool.get().await.map_err(pg_err)
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_err)?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .await
            .map_err(pg_err)?;
        tx.batch_execute(sql::VERSION_TABLE).await.map_err(pg_err)?;
        let version: i32 = tx
            .query_opt("SELECT version FROM ecr_schema_version", &[])
            .await
            .map_err(pg_err)?
            .map(|r| r.try_get(0))
            .transpose()
            .map_err(pg_err)?
            .unwrap_or(0);
        let current = usize::try_from(version)
            .map_err(|_| StoreError::Corrupt("negative schema version".into()))?;
        if current > sql::MIGRATIONS.len() {
            return Err(StoreError::Corrupt(format!(
                "schema version {current} is newer than this ECR ({})",
                sql::MIGRATIONS.len()
            )));
        }
        for migration in &sql::MIGRATIONS[current..] {
            tx.batch_execute(migration).await.map_err(pg_err)?;
        }
        let latest = i32::try_from(sql::MIGRATIONS.len()).unwrap_or(i32::MAX);
        tx.execute("DELETE FROM ecr_schema_version", &[])
            .await
            .map_err(pg_err)?;
        tx.execute(
            "INSERT INTO ecr_schema_version (version) VALUES ($1)",
            &[&latest],
        )
        .await
        .map_err(pg_err)?;
        tx.commit().await.map_err(pg_err)
    }
}

#[async_trait]
impl ConfigStore for PostgresStore {
    async fn put(
        &self,
        scope: &Scope,
        name: &ConfigName,
        content: &Content,
        precondition: &Precondition,
        now: UnixMillis,
    ) -> Result<PutOutcome, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_err)?;
        let outbox = self.outbox.load(Ordering::Relaxed);
        let outcome = put_in(&tx, scope, name, content, false, precondition, now, outbox).await?;
        if outcome.changed || scope.endpoint_id().is_some() {
            tx.commit().await.map_err(pg_err)?;
        }
        if outbox && outcome.changed {
            self.written.notify_one();
        }
        Ok(outcome)
    }

    async fn put_patch(
        &self,
        scope: &Scope,
        name: &ConfigName,
        content: &Content,
        precondition: &Precondition,
        now: UnixMillis,
    ) -> Result<PutOutcome, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_err)?;
        let outbox = self.outbox.load(Ordering::Relaxed);
        let outcome = put_in(&tx, scope, name, content, true, precondition, now, outbox).await?;
        tx.commit().await.map_err(pg_err)?;
        if outbox && outcome.changed {
            self.written.notify_one();
        }
        Ok(outcome)
    }

    async fn own_patch_names(
        &self,
        endpoint_id: &EndpointId,
        app_version: &AppVersionName,
    ) -> Result<std::collections::BTreeSet<String>, StoreError> {
        let client = self.client().await?;
        let s = client
            .prepare_cached(sql::OWN_PATCH_NAMES)
            .await
            .map_err(pg_err)?;
        client
            .query(&s, &[&endpoint_id.as_str(), &app_version.as_str()])
            .await
            .map_err(pg_err)?
            .iter()
            .map(|r| r.try_get::<_, String>(0).map_err(pg_err))
            .collect()
    }

    async fn endpoints_with_own_patch(
        &self,
        app_version: &AppVersionName,
        name: &ConfigName,
    ) -> Result<Vec<EndpointId>, StoreError> {
        let client = self.client().await?;
        let s = client
            .prepare_cached(sql::ENDPOINTS_WITH_OWN_PATCH)
            .await
            .map_err(pg_err)?;
        client
            .query(&s, &[&app_version.as_str(), &name.as_str()])
            .await
            .map_err(pg_err)?
            .iter()
            .map(|r| {
                EndpointId::new(r.try_get::<_, String>(0).map_err(pg_err)?)
                    .map_err(|e| StoreError::Corrupt(e.to_string()))
            })
            .collect()
    }

    async fn get(
        &self,
        scope: &Scope,
        name: &ConfigName,
    ) -> Result<Option<StoredConfig>, StoreError> {
        let client = self.client().await?;
        select_one(
            &client,
            scope.endpoint_key(),
            scope.app_version().as_str(),
            name.as_str(),
            false,
        )
        .await
    }

    async fn list(&self, scope: &Scope) -> Result<Vec<StoredConfig>, StoreError> {
        let client = self.client().await?;
        let s = client
            .prepare_cached(sql::SELECT_SCOPE)
            .await
            .map_err(pg_err)?;
        client
            .query(&s, &[&scope.endpoint_key(), &scope.app_version().as_str()])
            .await
            .map_err(pg_err)?
            .iter()
            .map(to_config)
            .collect()
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
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_err)?;
        let (endpoint_key, app_version) = (scope.endpoint_key(), scope.app_version().as_str());
        if endpoint_key.is_empty()
            && let Some(o) = lock_default(&tx, app_version, name.as_str()).await?
        {
            return Err(super::default_locked(
                app_version,
                name.as_str(),
                &o.rollout_id,
            ));
        }
        let own = select_own(&tx, endpoint_key, app_version, name.as_str(), true).await?;
        precondition.check(own.as_ref().map(|(p, _)| p.config_id.as_str()))?;
        let previous = own.as_ref().map(|(p, _)| p.clone());
        if previous.is_some() {
            let s = tx.prepare_cached(sql::DELETE_ONE).await.map_err(pg_err)?;
            tx.execute(&s, &[&endpoint_key, &app_version, &name.as_str()])
                .await
                .map_err(pg_err)?;
            let outbox = self.outbox.load(Ordering::Relaxed);
            if outbox {
                let now = crate::model::now();
                outbox_insert(
                    &tx,
                    endpoint_key,
                    app_version,
                    name.as_str(),
                    previous.as_ref(),
                    now,
                )
                .await?;
            }
            tx.commit().await.map_err(pg_err)?;
            if outbox {
                self.written.notify_one();
            }
        }
        Ok(own)
    }

    async fn put_batch(
        &self,
        targets: &[BatchTarget],
        name: &ConfigName,
        content: &Content,
        now: UnixMillis,
    ) -> Result<Vec<PutOutcome>, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_err)?;
        let mut outcomes = Vec::with_capacity(targets.len());
        let outbox = self.outbox.load(Ordering::Relaxed);
        for t in targets {
            let scope = Scope::Endpoint {
                endpoint_id: t.endpoint_id.clone(),
                app_version: t.app_version.clone(),
            };
            outcomes.push(
                put_in(
                    &tx,
                    &scope,
                    name,
                    content,
                    false,
                    &Precondition::None,
                    now,
                    outbox,
                )
                .await?,
            );
        }
        tx.commit().await.map_err(pg_err)?;
        if outbox && outcomes.iter().any(|o| o.changed) {
            self.written.notify_one();
        }
        Ok(outcomes)
    }

    async fn effective(
        &self,
        endpoint_id: &EndpointId,
        app_version: &AppVersionName,
        name: &ConfigName,
    ) -> Result<Option<(StoredConfig, Source)>, StoreError> {
        let client = self.client().await?;
        let key = EffectiveKey {
            endpoint_id: endpoint_id.clone(),
            app_version: app_version.clone(),
            name: name.clone(),
        };
        Ok(effective_many_on(&client, std::slice::from_ref(&key))
            .await?
            .pop()
            .flatten())
    }

    fn batches_lookups(&self) -> bool {
        true
    }

    async fn effective_many(
        &self,
        keys: &[EffectiveKey],
    ) -> Result<Vec<Option<(StoredConfig, Source)>>, StoreError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let client = self.client().await?;
        effective_many_on(&client, keys).await
    }

    async fn delete_endpoint(&self, endpoint_id: &EndpointId) -> Result<u64, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_err)?;
        let id = endpoint_id.as_str();
        let n = tx
            .execute(sql::DELETE_ENDPOINT_CONFIGS, &[&id])
            .await
            .map_err(pg_err)?;
        tx.execute(sql::DELETE_ENDPOINT_KNOWN, &[&id])
            .await
            .map_err(pg_err)?;
        tx.execute(sql::DELETE_ENDPOINT_GROUPS, &[&id])
            .await
            .map_err(pg_err)?;
        tx.execute(sql::DELETE_ENDPOINT_STATUSES, &[&id])
            .await
            .map_err(pg_err)?;
        tx.commit().await.map_err(pg_err)?;
        Ok(n)
    }

    async fn remember_endpoint(
        &self,
        endpoint_id: &EndpointId,
        app_version: &AppVersionName,
    ) -> Result<bool, StoreError> {
        let client = self.client().await?;
        let s = client.prepare_cached(sql::REMEMBER).await.map_err(pg_err)?;
        let n = client
            .execute(&s, &[&endpoint_id.as_str(), &app_version.as_str()])
            .await
            .map_err(pg_err)?;
        Ok(n > 0)
    }

    async fn forget_endpoint(
        &self,
        endpoint_id: &EndpointId,
        app_version: &AppVersionName,
    ) -> Result<(), StoreError> {
        let client = self.client().await?;
        client
            .execute(sql::FORGET, &[&endpoint_id.as_str(), &app_version.as_str()])
            .await
            .map_err(pg_err)?;
        Ok(())
    }

    async fn endpoints_following_default(
        &self,
        app_version: &AppVersionName,
        name: &ConfigName,
    ) -> Result<Vec<EndpointId>, StoreError> {
        let client = self.client().await?;
        let s = client
            .prepare_cached(sql::FOLLOWING_DEFAULT)
            .await
            .map_err(pg_err)?;
        client
            .query(&s, &[&app_version.as_str(), &name.as_str()])
            .await
            .map_err(pg_err)?
            .iter()
            .map(|r| {
                let id: String = r.try_get(0).map_err(pg_err)?;
                EndpointId::new(id).map_err(|e| StoreError::Corrupt(e.to_string()))
            })
            .collect()
    }

    async fn record_statuses(&self, writes: &[StatusWrite]) -> Result<(), StoreError> {
        if writes.is_empty() {
            return Ok(());
        }
        let rows = merge_statuses(writes);
        let mut client = self.client().await?;
        let mut attempt = 0;
        loop {
            match upsert_statuses(&mut client, &rows).await {
                Err(e) if attempt < STATUS_BATCH_RETRIES && retryable(&e) => {
                    attempt += 1;
                    tracing::debug!(error = %e, attempt, "status batch rolled back by PostgreSQL; writing it again");
                }
                result => return result.map_err(pg_err),
            }
        }
    }

    fn enable_durable_announcements(&self) -> bool {
        self.outbox.store(true, Ordering::Relaxed);
        true
    }

    fn durable_announcements(&self) -> bool {
        self.outbox.load(Ordering::Relaxed)
    }

    async fn announcements_written(&self) {
        self.written.notified().await;
    }

    async fn announce_pending(
        &self,
        limit: usize,
        sink: &dyn AnnouncementSink,
    ) -> Result<usize, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_err)?;
        let limit = i64::try_from(limit.max(1)).unwrap_or(i64::MAX);
        let s = tx.prepare_cached(OUTBOX_TAKE).await.map_err(pg_err)?;
        let rows = tx.query(&s, &[&limit]).await.map_err(pg_err)?;
        if rows.is_empty() {
            return Ok(0);
        }
        let mut seqs = Vec::with_capacity(rows.len());
        let mut endpoint_keys: Vec<EffectiveKey> = Vec::new();
        // Per default changed: the defaults it replaced (`None`: not recorded, by
        // an older ECR; every follower is announced).
        let mut defaults: std::collections::BTreeMap<
            (String, String),
            Vec<Option<Option<String>>>,
        > = Default::default();
        let mut locks = std::collections::BTreeSet::new();
        for row in &rows {
            seqs.push(row.try_get::<_, i64>(0).map_err(pg_err)?);
            let endpoint: String = row.try_get(1).map_err(pg_err)?;
            let app_version: String = row.try_get(2).map_err(pg_err)?;
            let name: String = row.try_get(3).map_err(pg_err)?;
            locks.insert(announce_lock(&app_version, &name));
            let corrupt = |e: crate::model::NameError| StoreError::Corrupt(e.to_string());
            if endpoint.is_empty() {
                let known: i32 = row.try_get(4).map_err(pg_err)?;
                let before: Option<String> = row.try_get(5).map_err(pg_err)?;
                defaults
                    .entry((app_version, name))
                    .or_default()
                    .push((known != 0).then_some(before));
            } else {
                let key = EffectiveKey {
                    endpoint_id: EndpointId::new(endpoint).map_err(corrupt)?,
                    app_version: AppVersionName::new(app_version).map_err(corrupt)?,
                    name: ConfigName::new(name).map_err(corrupt)?,
                };
                if !endpoint_keys.contains(&key) {
                    endpoint_keys.push(key);
                }
            }
        }
        // One announcer per (app version, name) at a time, across replicas; taken in
        // ascending order so that two announcers never wait for each other in a ring.
        for lock in &locks {
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[lock])
                .await
                .map_err(pg_err)?;
        }
        // The current states, read after the locks: no older than what the previous
        // holder announced. A later read of an endpoint replaces an earlier one.
        let mut changes: Vec<EffectiveChange> = Vec::new();
        let mut index: std::collections::HashMap<(String, String, String), usize> =
            Default::default();
        let mut add = |change: EffectiveChange| {
            let key = (
                change.endpoint_id.to_string(),
                change.app_version.to_string(),
                change.name.to_string(),
            );
            match index.get(&key) {
                Some(&i) => changes[i] = change,
                None => {
                    index.insert(key, changes.len());
                    changes.push(change);
                }
            }
        };
        let current = effective_many_on(&tx, &endpoint_keys).await?;
        for (key, found) in endpoint_keys.into_iter().zip(current) {
            add(EffectiveChange {
                endpoint_id: key.endpoint_id,
                app_version: key.app_version,
                name: key.name,
                config: found.map(|(config, _)| config),
            });
        }
        let s = tx
            .prepare_cached(FOLLOWERS_WITH_DEFAULT)
            .await
            .map_err(pg_err)?;
        // A rollout's cohort is announced what it is served (a default change
        // committed before the rollout began and announced after it).
        let active = if defaults.is_empty() {
            Default::default()
        } else {
            overlays(&tx).await?
        };
        for ((app_version, name), befores) in &defaults {
            let overlay = active.get(&(app_version.clone(), name.clone()));
            let corrupt = |e: crate::model::NameError| StoreError::Corrupt(e.to_string());
            let app = AppVersionName::new(app_version.as_str()).map_err(corrupt)?;
            let config_name = ConfigName::new(name.as_str()).map_err(corrupt)?;
            let mut followers: Vec<(EffectiveKey, Option<StoredConfig>, Option<StoredConfig>)> =
                Vec::new();
            for row in tx.query(&s, &[app_version, name]).await.map_err(pg_err)? {
                let endpoint: String = row.try_get(0).map_err(pg_err)?;
                let config = match row.try_get::<_, Option<String>>(2).map_err(pg_err)? {
                    Some(config_id) => Some(StoredConfig {
                        name: config_name.clone(),
                        config_id,
                        content: row.try_get(3).map_err(pg_err)?,
                        created: UnixMillis(row.try_get(4).map_err(pg_err)?),
                        updated: UnixMillis(row.try_get(5).map_err(pg_err)?),
                    }),
                    None => None,
                };
                let config =
                    apply_overlay(config.map(|c| (c, Source::Default)), &endpoint, overlay)
                        .map(|(c, _)| c);
                let own_patch = match row.try_get::<_, Option<String>>(6).map_err(pg_err)? {
                    Some(config_id) => Some(StoredConfig {
                        name: config_name.clone(),
                        config_id,
                        content: row.try_get(7).map_err(pg_err)?,
                        created: UnixMillis(row.try_get(8).map_err(pg_err)?),
                        updated: UnixMillis(row.try_get(9).map_err(pg_err)?),
                    }),
                    None => None,
                };
                followers.push((
                    EffectiveKey {
                        endpoint_id: EndpointId::new(endpoint).map_err(corrupt)?,
                        app_version: app.clone(),
                        name: config_name.clone(),
                    },
                    config,
                    own_patch,
                ));
            }
            // Their layers composed over what they are served; announced when that
            // differs from the layers composed over a default the changes replaced
            // (a layer hiding the changed value keeps the follower unchanged).
            let keys: Vec<EffectiveKey> = followers.iter().map(|(k, _, _)| k.clone()).collect();
            let inputs = layer_inputs_on(&tx, &keys, false).await?;
            let befores: Option<Vec<Option<StoredConfig>>> = befores
                .iter()
                .map(|b| {
                    b.as_ref().map(|content| {
                        content.as_ref().map(|content| StoredConfig {
                            name: config_name.clone(),
                            config_id: crate::model::config_id(content),
                            content: content.clone(),
                            created: UnixMillis(0),
                            updated: UnixMillis(0),
                        })
                    })
                })
                .collect();
            for (key, config, own_patch) in followers {
                let config = inputs
                    .compose(
                        &key,
                        config.map(|c| (c, Source::Default)),
                        own_patch.as_ref(),
                    )
                    .map(|(c, _)| c);
                if let Some(befores) = &befores {
                    let now = config.as_ref().map(|c| c.config_id.as_str());
                    let changed = befores.iter().any(|b| {
                        inputs
                            .compose(
                                &key,
                                b.clone().map(|c| (c, Source::Default)),
                                own_patch.as_ref(),
                            )
                            .as_ref()
                            .map(|(c, _)| c.config_id.as_str())
                            != now
                    });
                    if !changed {
                        continue;
                    }
                }
                add(EffectiveChange {
                    endpoint_id: key.endpoint_id,
                    app_version: key.app_version,
                    name: key.name,
                    config,
                });
            }
        }
        // Published (and flushed) while the locks are held; on failure the rows stay.
        sink.announce(&changes).await.map_err(StoreError::Backend)?;
        tx.execute("DELETE FROM announce_outbox WHERE seq = ANY($1)", &[&seqs])
            .await
            .map_err(pg_err)?;
        tx.commit().await.map_err(pg_err)?;
        Ok(rows.len())
    }

    async fn create_rollout(
        &self,
        rollout: &Rollout,
        announce: &[EndpointId],
    ) -> Result<Rollout, StoreError> {
        let mut rollout = rollout.clone();
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_err)?;
        let (app, name) = (rollout.app_version.clone(), rollout.name.clone());
        if let Some(l) = rollout.layer.clone() {
            if let Some(id) = lock_layer(&tx, &app, &name, &l.layer_name).await? {
                return Err(super::layer_rollout_active(&app, &name, &l.layer_name, &id));
            }
            if let Some(g) = &l.group
                && tx
                    .query_opt(&format!("{}{FOR_SHARE}", sql::GROUP_EXISTS), &[&app, g])
                    .await
                    .map_err(pg_err)?
                    .is_none()
            {
                return Err(super::no_group(&app, g));
            }
            let previous = tx
                .query_opt(
                    &format!(
                        "SELECT {} FROM layers WHERE app_version = $1 AND name = $2 AND layer_name = $3{FOR_UPDATE}",
                        sql::LAYER_COLUMNS
                    ),
                    &[&app, &name, &l.layer_name],
                )
                .await
                .map_err(pg_err)?
                .as_ref()
                .map(layer_from_row)
                .transpose()?;
            super::prepare_layer_rollout(&mut rollout, previous.as_ref())?;
        } else {
            if let Some(o) = lock_default(&tx, &app, &name).await? {
                return Err(super::rollout_active(&app, &name, &o.rollout_id));
            }
            let previous = select_one(&tx, "", &app, &name, true).await?;
            if previous
                .as_ref()
                .is_some_and(|p| p.config_id == rollout.config_id)
            {
                return Err(super::nothing_to_roll_out(&rollout.config_id));
            }
            rollout.previous_config_id = previous.map(|p| p.config_id);
        }
        let s = tx
            .prepare_cached(sql::ROLLOUT_INSERT)
            .await
            .map_err(pg_err)?;
        let doc = super::rollout_doc(&rollout);
        tx.execute(
            &s,
            &[
                &rollout.rollout_id,
                &app,
                &name,
                &i32::from(rollout.state.is_active()),
                &i32::try_from(rollout.served_bp()).unwrap_or(0),
                &rollout.config_id,
                &rollout.content,
                &rollout.created_ms,
                &rollout.updated_ms,
                &i64::try_from(rollout.revision).unwrap_or(i64::MAX),
                &doc,
                &rollout.layer_column(),
            ],
        )
        .await
        .map_err(|e| {
            // Two creations racing past the check: the unique index refuses one.
            if e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION) {
                StoreError::Conflict(format!(
                    "a rollout of configuration {name} of app version {app} is active already"
                ))
            } else {
                pg_err(e)
            }
        })?;
        let outbox = self.outbox_announce(&tx, &rollout, announce).await?;
        tx.commit().await.map_err(pg_err)?;
        if outbox {
            self.written.notify_one();
        }
        Ok(rollout)
    }

    async fn rollout(&self, rollout_id: &str) -> Result<Option<Rollout>, StoreError> {
        let client = self.client().await?;
        Ok(read_docs(&client, sql::ROLLOUT_ONE, &[&rollout_id])
            .await?
            .into_iter()
            .next())
    }

    async fn rollouts(
        &self,
        app_version: &AppVersionName,
        name: Option<&ConfigName>,
    ) -> Result<Vec<Rollout>, StoreError> {
        let client = self.client().await?;
        let name = name.map(ConfigName::as_str);
        read_docs(&client, sql::ROLLOUTS_OF, &[&app_version.as_str(), &name]).await
    }

    async fn active_rollouts(&self) -> Result<Vec<Rollout>, StoreError> {
        let client = self.client().await?;
        read_docs(&client, sql::ROLLOUTS_ACTIVE, &[]).await
    }

    async fn update_rollout(
        &self,
        rollout: &Rollout,
        announce: &[EndpointId],
    ) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_err)?;
        let current: Option<i64> = tx
            .query_opt(
                &format!("{}{FOR_UPDATE}", sql::ROLLOUT_REVISION),
                &[&rollout.rollout_id],
            )
            .await
            .map_err(pg_err)?
            .map(|r| r.try_get(0))
            .transpose()
            .map_err(pg_err)?;
        let current = current.map_or(0, |c| u64::try_from(c).unwrap_or(0));
        if current + 1 != rollout.revision {
            return Err(StoreError::RolloutChanged { current });
        }
        let doc = super::rollout_doc(rollout);
        tx.execute(
            sql::ROLLOUT_UPDATE,
            &[
                &rollout.rollout_id,
                &i32::from(rollout.state.is_active()),
                &i32::try_from(rollout.served_bp()).unwrap_or(0),
                &rollout.updated_ms,
                &i64::try_from(rollout.revision).unwrap_or(i64::MAX),
                &doc,
            ],
        )
        .await
        .map_err(pg_err)?;
        if rollout.state == RolloutState::Completed
            && let Some(l) = &rollout.layer
        {
            tx.execute(
                sql::LAYER_UPSERT,
                &[
                    &rollout.app_version,
                    &rollout.name,
                    &l.layer_name,
                    &l.priority,
                    &l.group.as_deref().unwrap_or(""),
                    &l.patch.to_string(),
                    &rollout.updated_ms,
                ],
            )
            .await
            .map_err(pg_err)?;
        } else if rollout.state == RolloutState::Completed {
            tx.execute(
                sql::UPSERT,
                &[
                    &"",
                    &rollout.app_version,
                    &rollout.name,
                    &rollout.config_id,
                    &rollout.content,
                    &rollout.updated_ms,
                ],
            )
            .await
            .map_err(pg_err)?;
        }
        let outbox = self.outbox_announce(&tx, rollout, announce).await?;
        tx.commit().await.map_err(pg_err)?;
        if outbox {
            self.written.notify_one();
        }
        Ok(())
    }

    async fn rollout_reports(
        &self,
        app_version: &AppVersionName,
        name: &ConfigName,
        config_id: &str,
        since: UnixMillis,
    ) -> Result<Vec<(String, Report)>, StoreError> {
        let client = self.client().await?;
        let s = client
            .prepare_cached(&sql::rollout_reports())
            .await
            .map_err(pg_err)?;
        let rows = client
            .query(
                &s,
                &[&app_version.as_str(), &name.as_str(), &config_id, &since.0],
            )
            .await
            .map_err(pg_err)?;
        rows.iter()
            .map(|row| {
                let status: String = row.try_get(1).map_err(pg_err)?;
                let status = DeliveryStatus::parse(&status)
                    .ok_or_else(|| StoreError::Corrupt(format!("unknown status {status:?}")))?;
                Ok((
                    row.try_get(0).map_err(pg_err)?,
                    Report {
                        status,
                        dispatched_ms: row.try_get(2).map_err(pg_err)?,
                    },
                ))
            })
            .collect()
    }

    async fn status_counts(
        &self,
        app_version: &AppVersionName,
        name: &ConfigName,
    ) -> Result<Vec<StatusCount>, StoreError> {
        let client = self.client().await?;
        let s = client
            .prepare_cached(&sql::status_counts())
            .await
            .map_err(pg_err)?;
        let mut counts = Vec::new();
        for row in client
            .query(&s, &[&app_version.as_str(), &name.as_str()])
            .await
            .map_err(pg_err)?
        {
            let status: String = row.try_get(1).map_err(pg_err)?;
            super::add_status_count(
                &mut counts,
                row.try_get(0).map_err(pg_err)?,
                &status,
                row.try_get(2).map_err(pg_err)?,
            );
        }
        Ok(counts)
    }

    async fn app_versions(&self) -> Result<Vec<AppVersionSummary>, StoreError> {
        let client = self.client().await?;
        let versions = client
            .query(sql::APP_VERSIONS, &[])
            .await
            .map_err(pg_err)?
            .iter()
            .map(|r| r.try_get(0))
            .collect::<Result<Vec<String>, _>>()
            .map_err(pg_err)?;
        let defaults = client
            .query(sql::ALL_DEFAULTS, &[])
            .await
            .map_err(pg_err)?
            .iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)))
            .collect::<Result<Vec<_>, tokio_postgres::Error>>()
            .map_err(pg_err)?;
        Ok(super::summarise_app_versions(versions, defaults))
    }

    async fn effective_inputs(
        &self,
        keys: &[EffectiveKey],
    ) -> Result<Vec<EffectiveInputs>, StoreError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let client = self.client().await?;
        let bases = base_many_on(&client, keys).await?;
        let inputs = layer_inputs_on(&client, keys, true).await?;
        Ok(keys
            .iter()
            .zip(bases)
            .map(|(k, (base, own_patch))| EffectiveInputs {
                base,
                groups: inputs
                    .groups
                    .get(&(k.app_version.to_string(), k.endpoint_id.to_string()))
                    .cloned()
                    .unwrap_or_default(),
                own_patch,
                rolling: crate::layers::rolling_for(
                    &inputs.rolling,
                    k.app_version.as_str(),
                    k.name.as_str(),
                    k.endpoint_id.as_str(),
                ),
            })
            .collect())
    }

    async fn create_group(
        &self,
        app_version: &AppVersionName,
        group: &GroupName,
        now: UnixMillis,
    ) -> Result<bool, StoreError> {
        let client = self.client().await?;
        let n = client
            .execute(
                sql::GROUP_INSERT,
                &[&app_version.as_str(), &group.as_str(), &now.0],
            )
            .await
            .map_err(pg_err)?;
        Ok(n > 0)
    }

    async fn delete_group(
        &self,
        app_version: &AppVersionName,
        group: &GroupName,
    ) -> Result<bool, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_err)?;
        let (app, g) = (app_version.as_str(), group.as_str());
        // The group row first, locked: a layer write targeting it waits for this.
        let exists = tx
            .query_opt(&format!("{}{FOR_UPDATE}", sql::GROUP_EXISTS), &[&app, &g])
            .await
            .map_err(pg_err)?
            .is_some();
        if let Some(row) = tx
            .query_opt(sql::GROUP_TARGETED, &[&app, &g])
            .await
            .map_err(pg_err)?
        {
            let (name, layer): (String, String) = (
                row.try_get(0).map_err(pg_err)?,
                row.try_get(1).map_err(pg_err)?,
            );
            return Err(super::group_targeted(g, &name, &layer));
        }
        super::group_rolling_target(&read_docs(&tx, sql::ROLLING_LAYERS, &[]).await?, app, g)?;
        tx.execute(sql::GROUP_DELETE_MEMBERS, &[&app, &g])
            .await
            .map_err(pg_err)?;
        tx.execute(sql::GROUP_DELETE, &[&app, &g])
            .await
            .map_err(pg_err)?;
        tx.commit().await.map_err(pg_err)?;
        Ok(exists)
    }

    async fn change_members(
        &self,
        app_version: &AppVersionName,
        group: &GroupName,
        add: &[EndpointId],
        remove: &[EndpointId],
        announce: &[(EndpointId, ConfigName)],
        now: UnixMillis,
    ) -> Result<(u64, u64), StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_err)?;
        let (app, g) = (app_version.as_str(), group.as_str());
        if tx
            .query_opt(&format!("{}{FOR_SHARE}", sql::GROUP_EXISTS), &[&app, &g])
            .await
            .map_err(pg_err)?
            .is_none()
        {
            return Err(super::no_group(app, g));
        }
        let add: Vec<&str> = add.iter().map(EndpointId::as_str).collect();
        let remove: Vec<&str> = remove.iter().map(EndpointId::as_str).collect();
        let added = tx
            .execute(
                "INSERT INTO group_members (app_version, group_name, endpoint_id) \
                 SELECT $1, $2, e FROM unnest($3::text[]) AS e WHERE NOT (e = ANY($4)) \
                 ON CONFLICT (app_version, endpoint_id, group_name) DO NOTHING",
                &[&app, &g, &add, &remove],
            )
            .await
            .map_err(pg_err)?;
        let removed = tx
            .execute(
                "DELETE FROM group_members WHERE app_version = $1 AND group_name = $2 \
                 AND endpoint_id = ANY($3)",
                &[&app, &g, &remove],
            )
            .await
            .map_err(pg_err)?;
        let outbox = self.outbox.load(Ordering::Relaxed) && !announce.is_empty();
        if outbox {
            let endpoints: Vec<&str> = announce.iter().map(|(e, _)| e.as_str()).collect();
            let names: Vec<&str> = announce.iter().map(|(_, n)| n.as_str()).collect();
            tx.execute(
                "INSERT INTO announce_outbox (endpoint_id, app_version, name, created_ms) \
                 SELECT e, $2, n, $4 FROM unnest($1::text[], $3::text[]) AS t(e, n)",
                &[&endpoints, &app, &names, &now.0],
            )
            .await
            .map_err(pg_err)?;
        }
        tx.commit().await.map_err(pg_err)?;
        if outbox {
            self.written.notify_one();
        }
        Ok((added, removed))
    }

    async fn groups(
        &self,
        app_version: &AppVersionName,
        page: u32,
        size: u32,
    ) -> Result<Page<GroupSummary>, StoreError> {
        let client = self.client().await?;
        let app = app_version.as_str();
        let total: i64 = client
            .query_one(sql::GROUPS_COUNT, &[&app])
            .await
            .map_err(pg_err)?
            .try_get(0)
            .map_err(pg_err)?;
        let size = i64::from(size.max(1));
        let content = client
            .query(sql::GROUPS_PAGE, &[&app, &size, &(i64::from(page) * size)])
            .await
            .map_err(pg_err)?
            .iter()
            .map(|r| {
                Ok(GroupSummary {
                    group: r.try_get(0).map_err(pg_err)?,
                    created: UnixMillis(r.try_get(1).map_err(pg_err)?),
                    members: u64::try_from(r.try_get::<_, i64>(2).map_err(pg_err)?).unwrap_or(0),
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        Ok(Page {
            content,
            total_elements: u64::try_from(total).unwrap_or(0),
        })
    }

    async fn group_members(
        &self,
        app_version: &AppVersionName,
        group: &GroupName,
        page: u32,
        size: u32,
    ) -> Result<Option<Page<String>>, StoreError> {
        let client = self.client().await?;
        let (app, g) = (app_version.as_str(), group.as_str());
        if client
            .query_opt(sql::GROUP_EXISTS, &[&app, &g])
            .await
            .map_err(pg_err)?
            .is_none()
        {
            return Ok(None);
        }
        let total: i64 = client
            .query_one(sql::MEMBERS_COUNT, &[&app, &g])
            .await
            .map_err(pg_err)?
            .try_get(0)
            .map_err(pg_err)?;
        let size = i64::from(size.max(1));
        let content = client
            .query(
                sql::MEMBERS_PAGE,
                &[&app, &g, &size, &(i64::from(page) * size)],
            )
            .await
            .map_err(pg_err)?
            .iter()
            .map(|r| r.try_get::<_, String>(0).map_err(pg_err))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Some(Page {
            content,
            total_elements: u64::try_from(total).unwrap_or(0),
        }))
    }

    async fn put_layer(
        &self,
        layer: &Layer,
        announce: &[EndpointId],
    ) -> Result<Option<Layer>, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_err)?;
        let (app, name) = (layer.app_version.as_str(), layer.name.as_str());
        if let Some(id) = lock_layer(&tx, app, name, &layer.layer_name).await? {
            return Err(super::layer_locked(app, name, &layer.layer_name, &id));
        }
        if let LayerTarget::Group(g) = &layer.target
            && tx
                .query_opt(&format!("{}{FOR_SHARE}", sql::GROUP_EXISTS), &[&app, g])
                .await
                .map_err(pg_err)?
                .is_none()
        {
            return Err(super::no_group(app, g));
        }
        let previous = tx
            .query_opt(
                &format!(
                    "SELECT {} FROM layers WHERE app_version = $1 AND name = $2 AND layer_name = $3{FOR_UPDATE}",
                    sql::LAYER_COLUMNS
                ),
                &[&app, &name, &layer.layer_name],
            )
            .await
            .map_err(pg_err)?
            .as_ref()
            .map(layer_from_row)
            .transpose()?;
        tx.execute(
            sql::LAYER_UPSERT,
            &[
                &app,
                &name,
                &layer.layer_name,
                &layer.priority,
                &layer.target.column(),
                &layer.patch.to_string(),
                &layer.updated.0,
            ],
        )
        .await
        .map_err(pg_err)?;
        let outbox = self
            .outbox_endpoints(&tx, app, name, announce, layer.updated)
            .await?;
        tx.commit().await.map_err(pg_err)?;
        if outbox {
            self.written.notify_one();
        }
        Ok(previous)
    }

    async fn delete_layer(
        &self,
        app_version: &AppVersionName,
        name: &ConfigName,
        layer_name: &GroupName,
        announce: &[EndpointId],
        now: UnixMillis,
    ) -> Result<Option<Layer>, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_err)?;
        let (app, n, l) = (app_version.as_str(), name.as_str(), layer_name.as_str());
        if let Some(id) = lock_layer(&tx, app, n, l).await? {
            return Err(super::layer_locked(app, n, l, &id));
        }
        let previous = tx
            .query_opt(
                &format!(
                    "DELETE FROM layers WHERE app_version = $1 AND name = $2 AND layer_name = $3 RETURNING {}",
                    sql::LAYER_COLUMNS
                ),
                &[&app, &n, &l],
            )
            .await
            .map_err(pg_err)?
            .as_ref()
            .map(layer_from_row)
            .transpose()?;
        let outbox =
            previous.is_some() && self.outbox_endpoints(&tx, app, n, announce, now).await?;
        tx.commit().await.map_err(pg_err)?;
        if outbox {
            self.written.notify_one();
        }
        Ok(previous)
    }

    async fn layers(
        &self,
        app_version: &AppVersionName,
        name: Option<&ConfigName>,
    ) -> Result<Vec<Layer>, StoreError> {
        let client = self.client().await?;
        let name = name.map(ConfigName::as_str);
        let mut layers = client
            .query(&sql::layers_of(), &[&app_version.as_str(), &name])
            .await
            .map_err(pg_err)?
            .iter()
            .map(layer_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        layers.sort_by(|a, b| a.name.cmp(&b.name));
        let mut out = Vec::with_capacity(layers.len());
        for chunk in layers.chunk_by_mut(|a, b| a.name == b.name) {
            crate::layers::order(chunk);
            out.extend(chunk.iter().cloned());
        }
        Ok(out)
    }

    async fn lead_rollouts(&self) -> Result<bool, StoreError> {
        // A connection that hangs (a network partition) must not stall the
        // controller: every exchange is bounded, and a leader that cannot show its
        // connection alive stops leading (the server releases the lock when it
        // drops the session).
        let bounded = |what: &'static str| {
            move |_| StoreError::Backend(format!("rollout leader connection: {what} timed out"))
        };
        let mut leader = self.leader.lock().await;
        if let Some(client) = leader.as_ref() {
            // Still connected: the session lock is still ours.
            let alive = tokio::time::timeout(LEADER_TIMEOUT, client.simple_query("SELECT 1")).await;
            if matches!(alive, Ok(Ok(_))) {
                return Ok(true);
            }
            *leader = None;
        }
        let (client, connection) = tokio::time::timeout(LEADER_TIMEOUT, self.config.connect(NoTls))
            .await
            .map_err(bounded("connecting"))?
            .map_err(pg_err)?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        let got: bool = tokio::time::timeout(
            LEADER_TIMEOUT,
            client.query_one("SELECT pg_try_advisory_lock($1)", &[&ROLLOUT_LEADER_LOCK]),
        )
        .await
        .map_err(bounded("taking the lock"))?
        .map_err(pg_err)?
        .try_get(0)
        .map_err(pg_err)?;
        if got {
            *leader = Some(client);
        }
        Ok(got)
    }

    async fn statuses(&self, query: &StatusQuery) -> Result<Page<StatusRecord>, StoreError> {
        let mut client = self.client().await?;
        // Repeatable read: the count and the page see the same snapshot.
        let tx = client
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await
            .map_err(pg_err)?;
        let endpoint = query.endpoint_id.as_str();
        let app = query.app_version.as_ref().map(AppVersionName::as_str);
        let config_id = query.config_id.as_deref();
        let count = tx
            .prepare_cached(&sql::status_count())
            .await
            .map_err(pg_err)?;
        let total: i64 = tx
            .query_one(&count, &[&endpoint, &app, &config_id])
            .await
            .map_err(pg_err)?
            .try_get(0)
            .map_err(pg_err)?;
        let limit = i64::from(query.size);
        let offset = i64::from(query.page) * limit;
        let page = tx
            .prepare_cached(&sql::status_page())
            .await
            .map_err(pg_err)?;
        let rows = tx
            .query(&page, &[&endpoint, &app, &config_id, &limit, &offset])
            .await
            .map_err(pg_err)?;
        let content = rows
            .iter()
            .map(|r| {
                let row: StatusRow = (
                    r.try_get(0).map_err(pg_err)?,
                    r.try_get(1).map_err(pg_err)?,
                    r.try_get(2).map_err(pg_err)?,
                    r.try_get(3).map_err(pg_err)?,
                    r.try_get(4).map_err(pg_err)?,
                    r.try_get(5).map_err(pg_err)?,
                    r.try_get(6).map_err(pg_err)?,
                    r.try_get(7).map_err(pg_err)?,
                    r.try_get(8).map_err(pg_err)?,
                );
                status_record(row)
            })
            .collect::<Result<_, _>>()?;
        tx.commit().await.map_err(pg_err)?;
        Ok(Page {
            content,
            total_elements: u64::try_from(total).unwrap_or(0),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merged_statuses_keep_the_last_event_and_both_times() {
        let (a, b) = (EndpointId::new("a").unwrap(), EndpointId::new("b").unwrap());
        let v = AppVersionName::new("v1").unwrap();
        let n = ConfigName::default();
        let confirmed = |code| StatusEvent::Confirmed {
            status_code: code,
            reason_phrase: Some("why".into()),
        };
        let writes = [
            StatusWrite::new(&a, &v, &n, "c1", &StatusEvent::Dispatched, UnixMillis(1)),
            StatusWrite::new(&b, &v, &n, "c1", &confirmed(400), UnixMillis(2)),
            StatusWrite::new(&a, &v, &n, "c1", &confirmed(200), UnixMillis(3)),
            StatusWrite::new(&a, &v, &n, "c2", &StatusEvent::Dispatched, UnixMillis(4)),
            StatusWrite::new(&b, &v, &n, "c1", &StatusEvent::Dispatched, UnixMillis(5)),
        ];
        // One row per key, sorted by key (the lock order every replica's batches
        // share).
        let rows = merge_statuses(&writes);
        let summary: Vec<_> = rows
            .iter()
            .map(|r| {
                (
                    r.key.0,
                    r.key.3,
                    r.status,
                    r.status_code,
                    r.reason_phrase,
                    r.dispatched_ms,
                    r.confirmed_ms,
                    r.activity_ms,
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                (
                    "a",
                    "c1",
                    "APPLIED",
                    Some(200),
                    Some("why"),
                    Some(1),
                    Some(3),
                    3
                ),
                ("a", "c2", "DISPATCHED", None, None, Some(4), None, 4),
                (
                    "b",
                    "c1",
                    "DISPATCHED",
                    Some(400),
                    Some("why"),
                    Some(5),
                    Some(2),
                    5
                ),
            ]
        );
    }
}
