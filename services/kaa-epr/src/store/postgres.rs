//! The PostgreSQL store: tokio-postgres with a deadpool pool.

use std::str::FromStr;

use async_trait::async_trait;
use deadpool_postgres::{GenericClient, Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::{NoTls, Row};

use kaa_ism::UnixMillis;

use super::{EndpointStore, StoreError, TokenOwner, Transition, Unregistered};
use crate::model::{
    AppVersionName, Endpoint, EndpointId, Metadata, NewEndpoint, TokenRecord, TokenStatus,
};

const POOL_SIZE: usize = 16;

/// `pg_advisory_xact_lock` key that serialises schema creation of concurrent starts.
const SCHEMA_LOCK: i64 = 0x6570_725f_7363_6865; // "epr_sche"

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS epr_endpoints (
    endpoint_id TEXT PRIMARY KEY,
    app_version TEXT NOT NULL,
    metadata TEXT NOT NULL,
    created BIGINT NOT NULL,
    updated BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS epr_tokens (
    token_id TEXT PRIMARY KEY,
    endpoint_id TEXT NOT NULL,
    token_hash TEXT NOT NULL UNIQUE,
    status TEXT NOT NULL,
    created BIGINT NOT NULL,
    updated BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS epr_tokens_by_endpoint ON epr_tokens (endpoint_id, created);
";

const ENDPOINT_COLUMNS: &str = "endpoint_id, app_version, metadata, created, updated";
const TOKEN_COLUMNS: &str = "token_id, endpoint_id, status, created, updated";

/// The PostgreSQL store: a pool of 16 connections; tables `epr_endpoints` and
/// `epr_tokens` are created when the store connects. Several register replicas may
/// share one database (every write is one transaction; a token status change
/// locks its row). TLS is not configured (`NoTls`): run it on a trusted network or
/// a local socket.
#[derive(Clone)]
pub struct PostgresStore {
    pool: Pool,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore").finish_non_exhaustive()
    }
}

fn pg_err(e: impl std::fmt::Display) -> StoreError {
    StoreError::backend(e)
}

fn endpoint_from_row(row: &Row) -> Result<Endpoint, StoreError> {
    let id: String = row.try_get(0).map_err(pg_err)?;
    let app: String = row.try_get(1).map_err(pg_err)?;
    let metadata: String = row.try_get(2).map_err(pg_err)?;
    let metadata: Metadata = serde_json::from_str(&metadata)
        .map_err(|e| StoreError::Corrupt(format!("metadata of {id:?}: {e}")))?;
    Ok(Endpoint {
        endpoint_id: EndpointId::new(id).map_err(|e| StoreError::Corrupt(e.to_string()))?,
        app_version: AppVersionName::new(app).map_err(|e| StoreError::Corrupt(e.to_string()))?,
        metadata,
        created: UnixMillis(row.try_get(3).map_err(pg_err)?),
        updated: UnixMillis(row.try_get(4).map_err(pg_err)?),
    })
}

fn token_from_row(row: &Row) -> Result<TokenRecord, StoreError> {
    let token_id: String = row.try_get(0).map_err(pg_err)?;
    let endpoint_id: String = row.try_get(1).map_err(pg_err)?;
    let status: String = row.try_get(2).map_err(pg_err)?;
    Ok(TokenRecord {
        status: TokenStatus::parse(&status)
            .ok_or_else(|| StoreError::Corrupt(format!("token {token_id}: status {status:?}")))?,
        token_id,
        endpoint_id: EndpointId::new(endpoint_id)
            .map_err(|e| StoreError::Corrupt(e.to_string()))?,
        created: UnixMillis(row.try_get(3).map_err(pg_err)?),
        updated: UnixMillis(row.try_get(4).map_err(pg_err)?),
    })
}

async fn load_endpoint(
    client: &impl GenericClient,
    id: &str,
    lock: bool,
) -> Result<Option<Endpoint>, StoreError> {
    let lock = if lock { " FOR UPDATE" } else { "" };
    client
        .query_opt(
            &format!("SELECT {ENDPOINT_COLUMNS} FROM epr_endpoints WHERE endpoint_id = $1{lock}"),
            &[&id],
        )
        .await
        .map_err(pg_err)?
        .as_ref()
        .map(endpoint_from_row)
        .transpose()
}

async fn load_tokens(
    client: &impl GenericClient,
    endpoint_id: &str,
) -> Result<Vec<TokenRecord>, StoreError> {
    client
        .query(
            &format!(
                "SELECT {TOKEN_COLUMNS} FROM epr_tokens WHERE endpoint_id = $1 ORDER BY created, token_id"
            ),
            &[&endpoint_id],
        )
        .await
        .map_err(pg_err)?
        .iter()
        .map(token_from_row)
        .collect()
}

impl PostgresStore {
    /// Connects to the database at `url` (`postgres://…`) and creates the tables.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let config = tokio_postgres::Config::from_str(url)
            .map_err(|e| StoreError::Backend(format!("invalid PostgreSQL URL: {e}")))?;
        let manager = Manager::from_config(
            config,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .build()
            .map_err(pg_err)?;
        let store = Self { pool };
        let mut client = store.client().await?;
        let tx = client.transaction().await.map_err(pg_err)?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK])
            .await
            .map_err(pg_err)?;
        tx.batch_execute(SCHEMA).await.map_err(pg_err)?;
        tx.commit().await.map_err(pg_err)?;
        Ok(store)
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.pool.get().await.map_err(pg_err)
    }
}

#[async_trait]
impl EndpointStore for PostgresStore {
    async fn register(
        &self,
        endpoints: Vec<NewEndpoint>,
        tokens: Vec<(usize, String, String)>,
        now: UnixMillis,
    ) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_err)?;
        let ids: Vec<&str> = endpoints.iter().map(|e| e.endpoint_id.as_str()).collect();
        let apps: Vec<&str> = endpoints.iter().map(|e| e.app_version.as_str()).collect();
        let metadata = endpoints
            .iter()
            .map(|e| serde_json::to_string(&e.metadata).map_err(StoreError::backend))
            .collect::<Result<Vec<String>, _>>()?;
        let inserted = tx
            .query(
                "INSERT INTO epr_endpoints (endpoint_id, app_version, metadata, created, updated) \
                 SELECT id, app, meta, $4, $4 FROM unnest($1::text[], $2::text[], $3::text[]) AS t(id, app, meta) \
                 ON CONFLICT (endpoint_id) DO NOTHING RETURNING endpoint_id",
                &[&ids, &apps, &metadata, &now.0],
            )
            .await
            .map_err(pg_err)?;
        if inserted.len() != ids.len() {
            let new: std::collections::HashSet<String> = inserted
                .iter()
                .filter_map(|r| r.try_get::<_, String>(0).ok())
                .collect();
            let first = ids
                .iter()
                .find(|id| !new.contains(**id))
                .map_or_else(String::new, |id| (*id).to_owned());
            // Dropping the transaction rolls it back.
            return Err(StoreError::AlreadyRegistered(first));
        }
        if !tokens.is_empty() {
            let mut token_ids = Vec::with_capacity(tokens.len());
            let mut owners = Vec::with_capacity(tokens.len());
            let mut hashes = Vec::with_capacity(tokens.len());
            for (index, token_id, hash) in &tokens {
                let owner = ids
                    .get(*index)
                    .ok_or_else(|| StoreError::Backend("token for no endpoint".into()))?;
                token_ids.push(token_id.as_str());
                owners.push(*owner);
                hashes.push(hash.as_str());
            }
            tx.execute(
                "INSERT INTO epr_tokens (token_id, endpoint_id, token_hash, status, created, updated) \
                 SELECT t, e, h, 'active', $4, $4 FROM unnest($1::text[], $2::text[], $3::text[]) AS x(t, e, h)",
                &[&token_ids, &owners, &hashes, &now.0],
            )
            .await
            .map_err(pg_err)?;
        }
        tx.commit().await.map_err(pg_err)
    }

    async fn endpoint(&self, id: &EndpointId) -> Result<Option<Endpoint>, StoreError> {
        let client = self.client().await?;
        load_endpoint(&client, id.as_str(), false).await
    }

    async fn endpoints(&self, ids: &[EndpointId]) -> Result<Vec<Endpoint>, StoreError> {
        let ids: Vec<&str> = ids.iter().map(EndpointId::as_str).collect();
        let client = self.client().await?;
        client
            .query(
                &format!(
                    "SELECT {ENDPOINT_COLUMNS} FROM epr_endpoints WHERE endpoint_id = ANY($1)"
                ),
                &[&ids],
            )
            .await
            .map_err(pg_err)?
            .iter()
            .map(endpoint_from_row)
            .collect()
    }

    async fn unregister(&self, id: &EndpointId) -> Result<Option<Unregistered>, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_err)?;
        let Some(endpoint) = load_endpoint(&tx, id.as_str(), true).await? else {
            return Ok(None);
        };
        let live_token_ids = load_tokens(&tx, id.as_str())
            .await?
            .into_iter()
            .filter(|t| t.status != TokenStatus::Revoked)
            .map(|t| t.token_id)
            .collect();
        tx.execute(
            "DELETE FROM epr_tokens WHERE endpoint_id = $1",
            &[&id.as_str()],
        )
        .await
        .map_err(pg_err)?;
        tx.execute(
            "DELETE FROM epr_endpoints WHERE endpoint_id = $1",
            &[&id.as_str()],
        )
        .await
        .map_err(pg_err)?;
        tx.commit().await.map_err(pg_err)?;
        Ok(Some(Unregistered {
            endpoint,
            live_token_ids,
        }))
    }

    async fn set_app_version(
        &self,
        id: &EndpointId,
        app_version: &AppVersionName,
        now: UnixMillis,
    ) -> Result<Option<AppVersionName>, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_err)?;
        let Some(endpoint) = load_endpoint(&tx, id.as_str(), true).await? else {
            return Ok(None);
        };
        if &endpoint.app_version != app_version {
            tx.execute(
                "UPDATE epr_endpoints SET app_version = $2, updated = $3 WHERE endpoint_id = $1",
                &[&id.as_str(), &app_version.as_str(), &now.0],
            )
            .await
            .map_err(pg_err)?;
        }
        tx.commit().await.map_err(pg_err)?;
        Ok(Some(endpoint.app_version))
    }

    async fn set_metadata(
        &self,
        id: &EndpointId,
        metadata: &Metadata,
        now: UnixMillis,
    ) -> Result<bool, StoreError> {
        let metadata = serde_json::to_string(metadata).map_err(StoreError::backend)?;
        let client = self.client().await?;
        let n = client
            .execute(
                "UPDATE epr_endpoints SET metadata = $2, updated = $3 WHERE endpoint_id = $1",
                &[&id.as_str(), &metadata, &now.0],
            )
            .await
            .map_err(pg_err)?;
        Ok(n > 0)
    }

    async fn add_token(
        &self,
        id: &EndpointId,
        token_id: &str,
        hash: &str,
        now: UnixMillis,
    ) -> Result<Option<TokenRecord>, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_err)?;
        if load_endpoint(&tx, id.as_str(), true).await?.is_none() {
            return Ok(None);
        }
        let row = tx
            .query_one(
                &format!(
                    "INSERT INTO epr_tokens (token_id, endpoint_id, token_hash, status, created, updated) \
                     VALUES ($1, $2, $3, 'active', $4, $4) RETURNING {TOKEN_COLUMNS}"
                ),
                &[&token_id, &id.as_str(), &hash, &now.0],
            )
            .await
            .map_err(pg_err)?;
        let record = token_from_row(&row)?;
        tx.commit().await.map_err(pg_err)?;
        Ok(Some(record))
    }

    async fn tokens(&self, id: &EndpointId) -> Result<Option<Vec<TokenRecord>>, StoreError> {
        let client = self.client().await?;
        if load_endpoint(&client, id.as_str(), false).await?.is_none() {
            return Ok(None);
        }
        load_tokens(&client, id.as_str()).await.map(Some)
    }

    async fn set_token_status(
        &self,
        token_id: &str,
        target: TokenStatus,
        now: UnixMillis,
    ) -> Result<Option<Transition>, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_err)?;
        let Some(row) = tx
            .query_opt(
                &format!("SELECT {TOKEN_COLUMNS} FROM epr_tokens WHERE token_id = $1 FOR UPDATE"),
                &[&token_id],
            )
            .await
            .map_err(pg_err)?
        else {
            return Ok(None);
        };
        let mut token = token_from_row(&row)?;
        if !token.status.can_move_to(target) {
            return Ok(Some(Transition::Final(token)));
        }
        let endpoint = load_endpoint(&tx, token.endpoint_id.as_str(), false)
            .await?
            .ok_or_else(|| StoreError::Corrupt(format!("token {token_id} has no endpoint")))?;
        let changed = token.status != target;
        if changed {
            tx.execute(
                "UPDATE epr_tokens SET status = $2, updated = $3 WHERE token_id = $1",
                &[&token_id, &target.as_str(), &now.0],
            )
            .await
            .map_err(pg_err)?;
            token.status = target;
            token.updated = now;
        }
        tx.commit().await.map_err(pg_err)?;
        Ok(Some(Transition::Done {
            token,
            app_version: endpoint.app_version,
            changed,
        }))
    }

    async fn find_token(&self, hash: &str) -> Result<Option<TokenOwner>, StoreError> {
        let client = self.client().await?;
        let Some(row) = client
            .query_opt(
                "SELECT t.token_id, t.endpoint_id, t.status, t.created, t.updated, \
                 e.endpoint_id, e.app_version, e.metadata, e.created, e.updated \
                 FROM epr_tokens t JOIN epr_endpoints e ON e.endpoint_id = t.endpoint_id \
                 WHERE t.token_hash = $1",
                &[&hash],
            )
            .await
            .map_err(pg_err)?
        else {
            return Ok(None);
        };
        let token = token_from_row(&row)?;
        let id: String = row.try_get(5).map_err(pg_err)?;
        let app: String = row.try_get(6).map_err(pg_err)?;
        let metadata: String = row.try_get(7).map_err(pg_err)?;
        let endpoint = Endpoint {
            metadata: serde_json::from_str(&metadata)
                .map_err(|e| StoreError::Corrupt(format!("metadata of {id:?}: {e}")))?,
            endpoint_id: EndpointId::new(id).map_err(|e| StoreError::Corrupt(e.to_string()))?,
            app_version: AppVersionName::new(app)
                .map_err(|e| StoreError::Corrupt(e.to_string()))?,
            created: UnixMillis(row.try_get(8).map_err(pg_err)?),
            updated: UnixMillis(row.try_get(9).map_err(pg_err)?),
        };
        Ok(Some(TokenOwner { token, endpoint }))
    }
}
