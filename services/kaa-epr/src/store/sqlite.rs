//! The embedded SQLite store.

use std::path::Path;

use async_trait::async_trait;
use kaa_service::sqlite::{SqliteDb, SqliteError};
use rusqlite::{Connection, OptionalExtension, Transaction, params};

use kaa_ism::UnixMillis;

use super::{EndpointStore, StoreError, TokenOwner, Transition, Unregistered};
use crate::model::{
    AppVersionName, Endpoint, EndpointId, Metadata, NewEndpoint, TokenRecord, TokenStatus,
};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS endpoints (
    endpoint_id TEXT PRIMARY KEY,
    app_version TEXT NOT NULL,
    metadata TEXT NOT NULL,
    created INTEGER NOT NULL,
    updated INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS tokens (
    token_id TEXT PRIMARY KEY,
    endpoint_id TEXT NOT NULL,
    token_hash TEXT NOT NULL UNIQUE,
    status TEXT NOT NULL,
    created INTEGER NOT NULL,
    updated INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS tokens_by_endpoint ON tokens (endpoint_id, created);
";

/// How many reads run at the same time, each on its own read-only connection (kept
/// open between reads); more wait for a connection.
const MAX_READERS: usize = 8;

/// The embedded store: one SQLite file in WAL mode with `synchronous=FULL` (see [the
/// module docs](super)). Writes go through one connection inside `BEGIN IMMEDIATE`
/// transactions; reads (token validation, endpoint and metadata lookups) use a pool
/// of at most 8 read-only connections, so they run beside writes and beside each
/// other (WAL readers do not block the writer). Every call runs on tokio's blocking
/// pool. The file, its replica lock and the pool are
/// [`kaa_service::sqlite::SqliteDb`]'s, shared with ECR's store.
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

impl SqliteStore {
    /// Opens (creating if needed) the database file at `path`. Fails with
    /// [`StoreError::InUse`] while another store holds it (after waiting up to 2 s).
    pub async fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        let db = SqliteDb::open(path, MAX_READERS, |conn: &mut Connection| {
            conn.execute_batch(SCHEMA).map_err(sqlite_err)
        })
        .await?;
        Ok(Self { db })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        self.db.path()
    }

    /// Runs `f` in a `BEGIN IMMEDIATE` transaction and commits when it returns `Ok`.
    async fn write<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Transaction<'_>) -> Result<T, StoreError> + Send + 'static,
    {
        self.db.write(f).await
    }

    /// Runs `f` in a read transaction (one snapshot) on a pooled read-only
    /// connection.
    async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Transaction<'_>) -> Result<T, StoreError> + Send + 'static,
    {
        self.db.read(f).await
    }
}

type EndpointRow = (String, String, String, i64, i64);

fn endpoint_from_row(row: EndpointRow) -> Result<Endpoint, StoreError> {
    let (id, app, metadata, created, updated) = row;
    let metadata: Metadata = serde_json::from_str(&metadata)
        .map_err(|e| StoreError::Corrupt(format!("metadata of {id:?}: {e}")))?;
    Ok(Endpoint {
        endpoint_id: EndpointId::new(id).map_err(|e| StoreError::Corrupt(e.to_string()))?,
        app_version: AppVersionName::new(app).map_err(|e| StoreError::Corrupt(e.to_string()))?,
        metadata,
        created: UnixMillis(created),
        updated: UnixMillis(updated),
    })
}

fn load_endpoint(conn: &Connection, id: &str) -> Result<Option<Endpoint>, StoreError> {
    conn.prepare_cached(
        "SELECT endpoint_id, app_version, metadata, created, updated FROM endpoints WHERE endpoint_id = ?1",
    )
    .map_err(sqlite_err)?
    .query_row([id], |r| {
        Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
    })
    .optional()
    .map_err(sqlite_err)?
    .map(endpoint_from_row)
    .transpose()
}

type TokenRow = (String, String, String, i64, i64);

fn token_from_row(row: TokenRow) -> Result<TokenRecord, StoreError> {
    let (token_id, endpoint_id, status, created, updated) = row;
    Ok(TokenRecord {
        status: TokenStatus::parse(&status)
            .ok_or_else(|| StoreError::Corrupt(format!("token {token_id}: status {status:?}")))?,
        token_id,
        endpoint_id: EndpointId::new(endpoint_id)
            .map_err(|e| StoreError::Corrupt(e.to_string()))?,
        created: UnixMillis(created),
        updated: UnixMillis(updated),
    })
}

const TOKEN_COLUMNS: &str = "token_id, endpoint_id, status, created, updated";

fn load_token(conn: &Connection, token_id: &str) -> Result<Option<TokenRecord>, StoreError> {
    conn.query_row(
        &format!("SELECT {TOKEN_COLUMNS} FROM tokens WHERE token_id = ?1"),
        [token_id],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
    )
    .optional()
    .map_err(sqlite_err)?
    .map(token_from_row)
    .transpose()
}

fn load_tokens(conn: &Connection, endpoint_id: &str) -> Result<Vec<TokenRecord>, StoreError> {
    let mut statement = conn
        .prepare_cached(&format!(
            "SELECT {TOKEN_COLUMNS} FROM tokens WHERE endpoint_id = ?1 ORDER BY created, token_id"
        ))
        .map_err(sqlite_err)?;
    let rows = statement
        .query_map([endpoint_id], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })
        .map_err(sqlite_err)?;
    rows.map(|r| r.map_err(sqlite_err).and_then(token_from_row))
        .collect()
}

#[async_trait]
impl EndpointStore for SqliteStore {
    async fn register(
        &self,
        endpoints: Vec<NewEndpoint>,
        tokens: Vec<(usize, String, String)>,
        now: UnixMillis,
    ) -> Result<(), StoreError> {
        self.write(move |tx| {
            {
                let mut insert = tx
                    .prepare_cached(
                        "INSERT INTO endpoints (endpoint_id, app_version, metadata, created, updated)
                         VALUES (?1, ?2, ?3, ?4, ?4) ON CONFLICT (endpoint_id) DO NOTHING",
                    )
                    .map_err(sqlite_err)?;
                for e in &endpoints {
                    let metadata = serde_json::to_string(&e.metadata).map_err(StoreError::backend)?;
                    let inserted = insert
                        .execute(params![
                            e.endpoint_id.as_str(),
                            e.app_version.as_str(),
                            metadata,
                            now.0
                        ])
                        .map_err(sqlite_err)?;
                    if inserted == 0 {
                        return Err(StoreError::AlreadyRegistered(e.endpoint_id.to_string()));
                    }
                }
            }
            let mut insert = tx
                .prepare_cached(
                    "INSERT INTO tokens (token_id, endpoint_id, token_hash, status, created, updated)
                     VALUES (?1, ?2, ?3, 'active', ?4, ?4)",
                )
                .map_err(sqlite_err)?;
            for (index, token_id, hash) in &tokens {
                let endpoint = endpoints
                    .get(*index)
                    .ok_or_else(|| StoreError::Backend("token for no endpoint".into()))?;
                insert
                    .execute(params![token_id, endpoint.endpoint_id.as_str(), hash, now.0])
                    .map_err(sqlite_err)?;
            }
            Ok(())
        })
        .await
    }

    async fn endpoint(&self, id: &EndpointId) -> Result<Option<Endpoint>, StoreError> {
        let id = id.to_string();
        self.read(move |conn| load_endpoint(conn, &id)).await
    }

    async fn endpoints(&self, ids: &[EndpointId]) -> Result<Vec<Endpoint>, StoreError> {
        let mut ids: Vec<String> = ids.iter().map(ToString::to_string).collect();
        ids.sort_unstable();
        ids.dedup();
        // One snapshot for all of them; point selects on the primary key with a
        // cached statement (SQLite has no array parameter).
        self.read(move |conn| {
            let mut found = Vec::with_capacity(ids.len());
            for id in &ids {
                if let Some(endpoint) = load_endpoint(conn, id)? {
                    found.push(endpoint);
                }
            }
            Ok(found)
        })
        .await
    }

    async fn unregister(&self, id: &EndpointId) -> Result<Option<Unregistered>, StoreError> {
        let id = id.to_string();
        self.write(move |tx| {
            let Some(endpoint) = load_endpoint(tx, &id)? else {
                return Ok(None);
            };
            let live_token_ids = load_tokens(tx, &id)?
                .into_iter()
                .filter(|t| t.status != TokenStatus::Revoked)
                .map(|t| t.token_id)
                .collect();
            tx.execute("DELETE FROM tokens WHERE endpoint_id = ?1", [&id])
                .map_err(sqlite_err)?;
            tx.execute("DELETE FROM endpoints WHERE endpoint_id = ?1", [&id])
                .map_err(sqlite_err)?;
            Ok(Some(Unregistered {
                endpoint,
                live_token_ids,
            }))
        })
        .await
    }

    async fn set_app_version(
        &self,
        id: &EndpointId,
        app_version: &AppVersionName,
        now: UnixMillis,
    ) -> Result<Option<AppVersionName>, StoreError> {
        let (id, app) = (id.to_string(), app_version.to_string());
        self.write(move |tx| {
            let Some(endpoint) = load_endpoint(tx, &id)? else {
                return Ok(None);
            };
            if endpoint.app_version.as_str() != app {
                tx.execute(
                    "UPDATE endpoints SET app_version = ?2, updated = ?3 WHERE endpoint_id = ?1",
                    params![id, app, now.0],
                )
                .map_err(sqlite_err)?;
            }
            Ok(Some(endpoint.app_version))
        })
        .await
    }

    async fn set_metadata(
        &self,
        id: &EndpointId,
        metadata: &Metadata,
        now: UnixMillis,
    ) -> Result<bool, StoreError> {
        let id = id.to_string();
        let metadata = serde_json::to_string(metadata).map_err(StoreError::backend)?;
        self.write(move |tx| {
            let n = tx
                .execute(
                    "UPDATE endpoints SET metadata = ?2, updated = ?3 WHERE endpoint_id = ?1",
                    params![id, metadata, now.0],
                )
                .map_err(sqlite_err)?;
            Ok(n > 0)
        })
        .await
    }

    async fn add_token(
        &self,
        id: &EndpointId,
        token_id: &str,
        hash: &str,
        now: UnixMillis,
    ) -> Result<Option<TokenRecord>, StoreError> {
        let (id, token_id, hash) = (id.to_string(), token_id.to_owned(), hash.to_owned());
        self.write(move |tx| {
            if load_endpoint(tx, &id)?.is_none() {
                return Ok(None);
            }
            tx.execute(
                "INSERT INTO tokens (token_id, endpoint_id, token_hash, status, created, updated)
                 VALUES (?1, ?2, ?3, 'active', ?4, ?4)",
                params![token_id, id, hash, now.0],
            )
            .map_err(sqlite_err)?;
            load_token(tx, &token_id)
        })
        .await
    }

    async fn tokens(&self, id: &EndpointId) -> Result<Option<Vec<TokenRecord>>, StoreError> {
        let id = id.to_string();
        self.read(move |conn| {
            if load_endpoint(conn, &id)?.is_none() {
                return Ok(None);
            }
            load_tokens(conn, &id).map(Some)
        })
        .await
    }

    async fn set_token_status(
        &self,
        token_id: &str,
        target: TokenStatus,
        now: UnixMillis,
    ) -> Result<Option<Transition>, StoreError> {
        let token_id = token_id.to_owned();
        self.write(move |tx| {
            let Some(mut token) = load_token(tx, &token_id)? else {
                return Ok(None);
            };
            if !token.status.can_move_to(target) {
                return Ok(Some(Transition::Final(token)));
            }
            let endpoint = load_endpoint(tx, token.endpoint_id.as_str())?
                .ok_or_else(|| StoreError::Corrupt(format!("token {token_id} has no endpoint")))?;
            let changed = token.status != target;
            if changed {
                tx.execute(
                    "UPDATE tokens SET status = ?2, updated = ?3 WHERE token_id = ?1",
                    params![token_id, target.as_str(), now.0],
                )
                .map_err(sqlite_err)?;
                token.status = target;
                token.updated = now;
            }
            Ok(Some(Transition::Done {
                token,
                app_version: endpoint.app_version,
                changed,
            }))
        })
        .await
    }

    async fn find_token(&self, hash: &str) -> Result<Option<TokenOwner>, StoreError> {
        let hash = hash.to_owned();
        self.read(move |conn| {
            let row: Option<TokenRow> = conn
                .prepare_cached(&format!(
                    "SELECT {TOKEN_COLUMNS} FROM tokens WHERE token_hash = ?1"
                ))
                .map_err(sqlite_err)?
                .query_row([&hash], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
                })
                .optional()
                .map_err(sqlite_err)?;
            let Some(token) = row.map(token_from_row).transpose()? else {
                return Ok(None);
            };
            let endpoint = load_endpoint(conn, token.endpoint_id.as_str())?.ok_or_else(|| {
                StoreError::Corrupt(format!("token {} has no endpoint", token.token_id))
            })?;
            Ok(Some(TokenOwner { token, endpoint }))
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    /// Long enough never to be reached when reads and writes run side by side.
    const GUARD: Duration = Duration::from_secs(30);

    fn endpoint(id: &str) -> NewEndpoint {
        NewEndpoint {
            endpoint_id: EndpointId::new(id).unwrap(),
            app_version: AppVersionName::new("v1").unwrap(),
            metadata: Metadata::new(),
        }
    }

    /// A read held open (as a slow validation would be) while the metadata of the
    /// endpoint it reads changes: the write commits during the read, the read keeps
    /// its snapshot, and the next read sees the change. With reads and writes on one
    /// connection the write would wait for the read, which waits for the write.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_long_read_does_not_block_a_write() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path().join("epr.db")).await.unwrap();
        let id = EndpointId::new("kettle").unwrap();
        store
            .register(vec![endpoint("kettle")], vec![], UnixMillis(1))
            .await
            .unwrap();
        let (reading_tx, reading) = mpsc::channel::<()>();
        let (written_tx, written) = mpsc::channel::<()>();
        let read = tokio::spawn({
            let (store, id) = (store.clone(), id.to_string());
            async move {
                store
                    .read(move |tx| {
                        let before = load_endpoint(tx, &id)?;
                        reading_tx.send(()).unwrap();
                        let released = written.recv_timeout(GUARD).is_ok();
                        Ok((before, released, load_endpoint(tx, &id)?))
                    })
                    .await
            }
        });
        tokio::task::spawn_blocking(move || reading.recv_timeout(GUARD))
            .await
            .unwrap()
            .expect("the read started");
        let room = serde_json::json!({"room": "kitchen"});
        let metadata = room.as_object().unwrap().clone();
        assert!(
            store
                .set_metadata(&id, &metadata, UnixMillis(2))
                .await
                .unwrap()
        );
        written_tx.send(()).unwrap();
        let (before, released, after) = read.await.unwrap().unwrap();
        assert!(released, "the write committed while the read was open");
        assert_eq!(before, after, "one snapshot for the whole read");
        assert!(before.unwrap().metadata.is_empty());
        let now = store.endpoint(&id).await.unwrap().unwrap();
        assert_eq!(now.metadata, metadata);
    }

    /// Several validations at once each get a connection: reads that each wait,
    /// inside their transaction, until all of them are inside theirs all finish.
    /// With fewer connections than reads the first ones would give up waiting.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reads_run_side_by_side() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path().join("epr.db")).await.unwrap();
        let n = 4;
        let inside =
            std::sync::Arc::new((std::sync::Mutex::new(0usize), std::sync::Condvar::new()));
        let reads: Vec<_> = (0..n)
            .map(|_| {
                let (store, inside) = (store.clone(), std::sync::Arc::clone(&inside));
                tokio::spawn(async move {
                    store
                        .read(move |tx| {
                            let found = load_endpoint(tx, "none")?;
                            let (count, all_in) = &*inside;
                            let mut count = count.lock().unwrap();
                            *count += 1;
                            all_in.notify_all();
                            let (_count, waited) =
                                all_in.wait_timeout_while(count, GUARD, |c| *c < n).unwrap();
                            Ok((found, !waited.timed_out()))
                        })
                        .await
                })
            })
            .collect();
        for read in reads {
            let (found, together) = read.await.unwrap().unwrap();
            assert_eq!(found, None);
            assert!(together, "every read was inside its transaction at once");
        }
    }
}
