//! The ECR engine: the operations the REST API and the bus share, on top of a
//! [`ConfigStore`], with app version checks, JSON Schema validation and the
//! effective-configuration changes that become `endpoint.config.updated` events.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, OnceLock};

use serde_json::Value;
use tokio::sync::mpsc::{self, UnboundedSender};
use tokio::sync::oneshot;

use kaa_ism::UnixMillis;

use super::config::KaaSection;
use super::model::{
    AppVersionName, ConfigName, Content, EndpointId, NameError, Page, Scope, Source, StatusEvent,
    StatusQuery, StatusRecord, StoredConfig,
};
use super::store::{
    BatchTarget, ConfigStore, EffectiveKey, Precondition, PutOutcome, StatusWrite, StoreError,
};
use kaa_service::ConfigError;

/// Why an ECR operation was refused or failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EcrError {
    /// A name is not valid (see [`crate::model`]).
    #[error(transparent)]
    InvalidName(#[from] NameError),
    /// `kaa.applications` lists app versions and this is not one of them.
    #[error("application version {0:?} is not configured in kaa.applications")]
    UnknownAppVersion(String),
    /// The configuration violates the app version's JSON Schema.
    #[error(
        "configuration violates the JSON Schema of application version {app_version:?} at JSON path {path}: {message}"
    )]
    SchemaViolation {
        /// The app version.
        app_version: String,
        /// The JSON pointer of the failing value (`/` for the root).
        path: String,
        /// What the schema says.
        message: String,
    },
    /// Some other invalid input.
    #[error("{0}")]
    BadRequest(String),
    /// The store refused (precondition) or failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The app versions ECR knows, with their optional JSON Schemas.
#[derive(Default)]
pub struct AppVersions {
    /// Empty: every valid name is accepted.
    known: HashSet<String>,
    schemas: HashMap<String, Arc<jsonschema::Validator>>,
}

impl std::fmt::Debug for AppVersions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppVersions")
            .field("known", &self.known)
            .field("with_schema", &self.schemas.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl AppVersions {
    /// Accepts every valid app version name, validates against no schema.
    pub fn open() -> Self {
        Self::default()
    }

    /// From `kaa.applications`: the listed app versions, each schema compiled (a schema
    /// that does not compile is a configuration error).
    pub fn from_config(kaa: &KaaSection) -> Result<Self, ConfigError> {
        let mut versions = Self::default();
        for (app, section) in &kaa.applications {
            for (version, v) in &section.versions {
                versions.known.insert(version.clone());
                let schema = match (&v.schema, &v.schema_file) {
                    (Some(_), Some(_)) => {
                        return Err(ConfigError::Invalid(format!(
                            "kaa.applications.{app}.versions.{version}: give schema or schema-file, not both"
                        )));
                    }
                    (Some(s), None) => Some(s.clone()),
                    (None, Some(file)) => Some(kaa_service::load_yaml::<Value>(file)?),
                    (None, None) => None,
                };
                if let Some(schema) = schema {
                    versions.add_schema(version, &schema).map_err(|e| {
                        ConfigError::Invalid(format!(
                            "kaa.applications.{app}.versions.{version}.schema: {e}"
                        ))
                    })?;
                }
            }
        }
        Ok(versions)
    }

    /// Adds (or replaces) the JSON Schema of `version` and lists it as known.
    pub fn add_schema(&mut self, version: &str, schema: &Value) -> Result<(), String> {
        let validator = jsonschema::validator_for(schema).map_err(|e| e.to_string())?;
        self.known.insert(version.to_owned());
        self.schemas.insert(version.to_owned(), Arc::new(validator));
        Ok(())
    }

    /// Lists `version` as known (restricting ECR to the listed versions).
    pub fn add_version(&mut self, version: &str) {
        self.known.insert(version.to_owned());
    }

    /// Checks that `version` may be used.
    pub fn check(&self, version: &AppVersionName) -> Result<(), EcrError> {
        if self.known.is_empty() || self.known.contains(version.as_str()) {
            Ok(())
        } else {
            Err(EcrError::UnknownAppVersion(version.to_string()))
        }
    }

    /// Checks `config` against the schema of `version`, if it has one; the error names
    /// the first failing JSON path.
    pub fn validate(&self, version: &AppVersionName, config: &Value) -> Result<(), EcrError> {
        let Some(validator) = self.schemas.get(version.as_str()) else {
            return Ok(());
        };
        if let Some(err) = validator.iter_errors(config).next() {
            let pointer = err.instance_path.to_string();
            return Err(EcrError::SchemaViolation {
                app_version: version.to_string(),
                path: if pointer.is_empty() {
                    "/".into()
                } else {
                    pointer
                },
                message: err.to_string(),
            });
        }
        Ok(())
    }
}

/// An endpoint's effective configuration changed; published as
/// `endpoint.config.updated`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EffectiveChange {
    /// The endpoint.
    pub endpoint_id: EndpointId,
    /// Its app version.
    pub app_version: AppVersionName,
    /// The configuration name.
    pub name: ConfigName,
    /// The new effective configuration; `None` when there is none any more.
    pub config: Option<StoredConfig>,
}

/// The result of a batch write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchOutcome {
    /// The content's config ID.
    pub config_id: String,
    /// The canonical content.
    pub content: String,
    /// Endpoint configurations created or changed.
    pub changed: usize,
    /// Endpoint configurations that already had this content.
    pub unchanged: usize,
}

/// The most endpoints one batch request may name.
pub const MAX_BATCH_ENDPOINTS: usize = 10_000;

/// The ECR engine. Cheap to share (`Arc<Ecr>`).
pub struct Ecr {
    store: Arc<dyn ConfigStore>,
    apps: AppVersions,
    changes: Option<UnboundedSender<EffectiveChange>>,
    known: Mutex<HashSet<(String, String)>>,
    status_queue: OnceLock<mpsc::Sender<StatusJob>>,
    status_failures: prometheus_client::metrics::counter::Counter,
    lookups: OnceLock<mpsc::Sender<Lookup>>,
}

impl std::fmt::Debug for Ecr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ecr")
            .field("apps", &self.apps)
            .finish_non_exhaustive()
    }
}

impl Ecr {
    /// An engine over `store`. Effective-configuration changes are sent to `changes`
    /// (the event publisher) when given.
    pub fn new(
        store: Arc<dyn ConfigStore>,
        apps: AppVersions,
        changes: Option<UnboundedSender<EffectiveChange>>,
    ) -> Self {
        Self {
            store,
            apps,
            changes,
            known: Mutex::new(HashSet::new()),
            status_queue: OnceLock::new(),
            status_failures: Default::default(),
            lookups: OnceLock::new(),
        }
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn ConfigStore> {
        &self.store
    }

    /// The app versions.
    pub fn apps(&self) -> &AppVersions {
        &self.apps
    }

    fn emit(&self, change: EffectiveChange) {
        if let Some(tx) = &self.changes {
            let _ = tx.send(change);
        }
    }

    /// Checks the app version and the schema, canonicalises.
    fn prepare(&self, app_version: &AppVersionName, config: &Value) -> Result<Content, EcrError> {
        self.apps.check(app_version)?;
        self.apps.validate(app_version, config)?;
        Ok(Content::from_value(config))
    }

    /// Emits the change of an endpoint's own configuration, unless the effective
    /// config ID stays the same (e.g. the endpoint now has what the default had).
    ///
    /// `prefetched_default` is the default as read alongside the write (by
    /// [`Ecr::put`]), which may predate a default change committed meanwhile. It is
    /// trusted only to decide that an event is due (an event too many costs the CMX one
    /// "unchanged" 6/CDTP answer); before deciding that none is, the default is read
    /// again, after the commit, so a device never misses a change.
    async fn endpoint_changed(
        &self,
        endpoint_id: &EndpointId,
        app_version: &AppVersionName,
        name: &ConfigName,
        before: Option<&StoredConfig>,
        after: Option<StoredConfig>,
        prefetched_default: Option<Option<StoredConfig>>,
    ) -> Result<(), EcrError> {
        let needs_default = before.is_none() || after.is_none();
        let read_default = || {
            let scope = Scope::Default {
                app_version: app_version.clone(),
            };
            async move { self.store.get(&scope, name).await }
        };
        let same_id = |default: &Option<StoredConfig>| {
            let before_id = before.or(default.as_ref()).map(|c| c.config_id.as_str());
            let after_id = after
                .as_ref()
                .or(default.as_ref())
                .map(|c| c.config_id.as_str());
            before_id == after_id
        };
        let mut default = None;
        if needs_default {
            let prefetched = prefetched_default.is_some();
            default = match prefetched_default {
                Some(default) => default,
                None => read_default().await?,
            };
            if prefetched && same_id(&default) {
                default = read_default().await?;
            }
        }
        if !same_id(&default) {
            self.emit(EffectiveChange {
                endpoint_id: endpoint_id.clone(),
                app_version: app_version.clone(),
                name: name.clone(),
                config: after.or(default),
            });
        }
        Ok(())
    }

    /// Emits a default change to every known endpoint that follows the default.
    async fn default_changed(
        &self,
        app_version: &AppVersionName,
        name: &ConfigName,
        after: Option<StoredConfig>,
    ) -> Result<(), EcrError> {
        if self.changes.is_none() {
            return Ok(());
        }
        for endpoint_id in self
            .store
            .endpoints_following_default(app_version, name)
            .await?
        {
            self.emit(EffectiveChange {
                endpoint_id,
                app_version: app_version.clone(),
                name: name.clone(),
                config: after.clone(),
            });
        }
        Ok(())
    }

    /// Stores `config` as configuration `name` in `scope` (upsert, `If-Match` as
    /// `precondition`) and emits the resulting effective changes.
    pub async fn put(
        &self,
        scope: &Scope,
        name: &ConfigName,
        config: &Value,
        precondition: &Precondition,
        now: UnixMillis,
    ) -> Result<PutOutcome, EcrError> {
        let content = self.prepare(scope.app_version(), config)?;
        // An endpoint's first configuration of its own is announced unless the
        // default it followed has the same config ID: the default is read alongside
        // the write (one round trip less before the event), and read again after the
        // commit when that read failed or would suppress the event (it may predate a
        // default change; see `endpoint_changed`).
        let default_scope = match scope {
            Scope::Endpoint { app_version, .. } if self.changes.is_some() => Some(Scope::Default {
                app_version: app_version.clone(),
            }),
            _ => None,
        };
        let (outcome, default) = tokio::join!(
            self.store.put(scope, name, &content, precondition, now),
            async {
                match &default_scope {
                    Some(d) => self.store.get(d, name).await.ok(),
                    None => None,
                }
            }
        );
        let outcome = outcome?;
        if outcome.changed {
            self.announce(
                scope,
                name,
                outcome.previous.as_ref(),
                Some(outcome.config.clone()),
                default,
            )
            .await?;
        }
        Ok(outcome)
    }

    /// How long [`Ecr::put`], [`Ecr::delete`] and [`Ecr::put_batch`] retry announcing a
    /// committed write.
    const ANNOUNCE_RETRY: std::time::Duration = std::time::Duration::from_secs(10);

    /// Emits the effective changes of a committed write (`before` → `after` in
    /// `scope`), retried as [`Ecr::retry_announce`] says.
    async fn announce(
        &self,
        scope: &Scope,
        name: &ConfigName,
        before: Option<&StoredConfig>,
        after: Option<StoredConfig>,
        prefetched_default: Option<Option<StoredConfig>>,
    ) -> Result<(), EcrError> {
        if self.changes.is_none() {
            return Ok(());
        }
        self.retry_announce(|| async {
            match scope {
                Scope::Endpoint {
                    endpoint_id,
                    app_version,
                } => {
                    self.endpoint_changed(
                        endpoint_id,
                        app_version,
                        name,
                        before,
                        after.clone(),
                        prefetched_default.clone(),
                    )
                    .await
                }
                Scope::Default { app_version } => {
                    self.default_changed(app_version, name, after.clone()).await
                }
            }
        })
        .await
    }

    /// Runs `attempt` (announcing a committed write) until it succeeds or fails with
    /// anything but a store backend error. The write is durable already, and a write
    /// that is never announced leaves observing devices stale, so a store failure of
    /// the reads announcing takes (e.g. PostgreSQL restarting between the commit and
    /// them) is retried, backing off from 50 ms to 1 s, for up to `ANNOUNCE_RETRY`
    /// (10 s) before it is reported.
    async fn retry_announce<F, Fut>(&self, mut attempt: F) -> Result<(), EcrError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<(), EcrError>>,
    {
        let deadline = tokio::time::Instant::now() + Self::ANNOUNCE_RETRY;
        let mut delay = std::time::Duration::from_millis(50);
        loop {
            match attempt().await {
                Err(EcrError::Store(StoreError::Backend(e)))
                    if tokio::time::Instant::now() + delay < deadline =>
                {
                    tracing::warn!(error = %e, "announcing a committed write failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(std::time::Duration::from_secs(1));
                }
                other => return other,
            }
        }
    }

    /// Deletes configuration `name` in `scope`; `Ok(None)` when there was none.
    pub async fn delete(
        &self,
        scope: &Scope,
        name: &ConfigName,
        precondition: &Precondition,
    ) -> Result<Option<StoredConfig>, EcrError> {
        self.apps.check(scope.app_version())?;
        let deleted = self.store.delete(scope, name, precondition).await?;
        if let Some(previous) = &deleted {
            self.announce(scope, name, Some(previous), None, None)
                .await?;
        }
        Ok(deleted)
    }

    /// The configuration `name` in `scope`.
    pub async fn get(
        &self,
        scope: &Scope,
        name: &ConfigName,
    ) -> Result<Option<StoredConfig>, EcrError> {
        self.apps.check(scope.app_version())?;
        Ok(self.store.get(scope, name).await?)
    }

    /// Every configuration in `scope`.
    pub async fn list(&self, scope: &Scope) -> Result<Vec<StoredConfig>, EcrError> {
        self.apps.check(scope.app_version())?;
        Ok(self.store.list(scope).await?)
    }

    /// Writes `config` as the endpoint configuration `name` of every listed endpoint,
    /// atomically (all or nothing), then emits the changes.
    pub async fn put_batch(
        &self,
        endpoints: &BTreeMap<String, Vec<String>>,
        name: &ConfigName,
        config: &Value,
        now: UnixMillis,
    ) -> Result<BatchOutcome, EcrError> {
        let mut targets = Vec::new();
        let mut seen = HashSet::new();
        let content = Content::from_value(config);
        for (app_version, ids) in endpoints {
            let app_version = AppVersionName::new(app_version.as_str())?;
            self.apps.check(&app_version)?;
            self.apps.validate(&app_version, config)?;
            for id in ids {
                let endpoint_id = EndpointId::new(id.as_str())?;
                if seen.insert((app_version.clone(), endpoint_id.clone())) {
                    targets.push(BatchTarget {
                        app_version: app_version.clone(),
                        endpoint_id,
                    });
                }
            }
        }
        if targets.is_empty() {
            return Err(EcrError::BadRequest("endpoints names no endpoint".into()));
        }
        if targets.len() > MAX_BATCH_ENDPOINTS {
            return Err(EcrError::BadRequest(format!(
                "a batch may name at most {MAX_BATCH_ENDPOINTS} endpoints ({} given)",
                targets.len()
            )));
        }
        let outcomes = self.store.put_batch(&targets, name, &content, now).await?;
        let mut changed = 0;
        for (target, outcome) in targets.iter().zip(&outcomes) {
            if outcome.changed {
                changed += 1;
                if self.changes.is_none() {
                    continue;
                }
                // Committed already: announced with the same retry as a single put.
                self.retry_announce(|| {
                    self.endpoint_changed(
                        &target.endpoint_id,
                        &target.app_version,
                        name,
                        outcome.previous.as_ref(),
                        Some(outcome.config.clone()),
                        None,
                    )
                })
                .await?;
            }
        }
        Ok(BatchOutcome {
            config_id: content.config_id,
            content: content.json,
            changed,
            unchanged: outcomes.len() - changed,
        })
    }

    /// One page of an endpoint's status history.
    pub async fn statuses(&self, query: &StatusQuery) -> Result<Page<StatusRecord>, EcrError> {
        self.flush_statuses().await;
        Ok(self.store.statuses(query).await?)
    }

    /// The effective configuration (6/CDTP).
    ///
    /// With a store that [batches lookups](ConfigStore::batches_lookups) (PostgreSQL)
    /// the lookup joins whatever other lookups are waiting and the batch is read in
    /// one statement ([`ConfigStore::effective_many`]): at most
    /// [`LOOKUP_BATCHES_IN_FLIGHT`] batches run at once, and lookups that arrive
    /// meanwhile form the next batch, so a lone request costs one query as before
    /// while the 10,000 requests of a fan-out cost a few dozen. The store is read
    /// after the lookup was asked for, so an answer never predates a write that was
    /// committed before the request arrived.
    pub async fn effective(
        &self,
        endpoint_id: &EndpointId,
        app_version: &AppVersionName,
        name: &ConfigName,
    ) -> Result<Option<(StoredConfig, Source)>, EcrError> {
        self.apps.check(app_version)?;
        if !self.store.batches_lookups() {
            return Ok(self.store.effective(endpoint_id, app_version, name).await?);
        }
        let (reply, answer) = oneshot::channel();
        let lookup = Lookup {
            key: EffectiveKey {
                endpoint_id: endpoint_id.clone(),
                app_version: app_version.clone(),
                name: name.clone(),
            },
            reply,
        };
        let stopped = || EcrError::Store(StoreError::Backend("lookup batcher stopped".into()));
        self.lookups().send(lookup).await.map_err(|_| stopped())?;
        Ok(answer.await.map_err(|_| stopped())??)
    }

    /// The lookup queue, its batcher task started on first use (on the caller's
    /// runtime; the task ends when the engine is dropped).
    fn lookups(&self) -> &mpsc::Sender<Lookup> {
        self.lookups.get_or_init(|| {
            let (tx, rx) = mpsc::channel(LOOKUP_QUEUE_CAPACITY);
            tokio::spawn(lookup_batcher(Arc::clone(&self.store), rx));
            tx
        })
    }

    /// Records that an endpoint exists in an app version (learned from 6/CDTP
    /// requests and 9/ELCE events). The store keeps the known endpoints (that is what
    /// the fan-out of a default change reads); a process-local cache of at most
    /// [`KNOWN_CACHE_CAPACITY`] sightings only keeps repeated ones from writing to the
    /// store again. When it is full it is emptied: memory stays bounded, and an
    /// endpoint seen again after that costs one more idempotent store write.
    pub async fn learn_endpoint(
        &self,
        endpoint_id: &EndpointId,
        app_version: &AppVersionName,
    ) -> Result<(), EcrError> {
        let key = (endpoint_id.to_string(), app_version.to_string());
        if self.known.lock().is_ok_and(|k| k.contains(&key)) {
            return Ok(());
        }
        self.store
            .remember_endpoint(endpoint_id, app_version)
            .await?;
        if let Ok(mut known) = self.known.lock() {
            if known.len() >= KNOWN_CACHE_CAPACITY {
                known.clear();
            }
            known.insert(key);
        }
        Ok(())
    }

    /// An endpoint moved from `previous` to `app_version`.
    pub async fn endpoint_moved(
        &self,
        endpoint_id: &EndpointId,
        previous: &AppVersionName,
        app_version: &AppVersionName,
    ) -> Result<(), EcrError> {
        self.store.forget_endpoint(endpoint_id, previous).await?;
        if let Ok(mut known) = self.known.lock() {
            known.remove(&(endpoint_id.to_string(), previous.to_string()));
        }
        self.learn_endpoint(endpoint_id, app_version).await
    }

    /// An endpoint was unregistered: every configuration, status and known-endpoint
    /// record of it is deleted. Returns how many configurations were deleted.
    pub async fn endpoint_unregistered(&self, endpoint_id: &EndpointId) -> Result<u64, EcrError> {
        // Nothing queued for the endpoint may land after its history is deleted.
        self.flush_statuses().await;
        let n = self.store.delete_endpoint(endpoint_id).await?;
        if let Ok(mut known) = self.known.lock() {
            known.retain(|(e, _)| e != endpoint_id.as_str());
        }
        Ok(n)
    }

    /// Adds to the status history: the event is queued (waiting only while the queue
    /// is full) and written shortly after by the status writer, which commits whatever
    /// has queued up meanwhile in one transaction (group commit; one sync for SQLite).
    ///
    /// Events go through one FIFO queue, so the history of an endpoint keeps the order
    /// in which ECR saw them: a dispatch queued before its 6/CDTP response was sent
    /// is written before the `endpoint.config.applied` that follows it. Reads of the
    /// history ([`Ecr::statuses`]) and [`Ecr::endpoint_unregistered`] first wait for
    /// what is queued, so they see every event recorded before them. The history is
    /// not an acknowledged write: events still queued when the process dies are lost
    /// (a graceful stop flushes them, see [`Ecr::flush_statuses`]); a failed batch is
    /// logged and counted in [`Ecr::status_write_failures`].
    pub async fn record_status(
        &self,
        endpoint_id: &EndpointId,
        app_version: &AppVersionName,
        name: &ConfigName,
        config_id: &str,
        event: &StatusEvent,
        now: UnixMillis,
    ) -> Result<(), EcrError> {
        let write = StatusWrite::new(endpoint_id, app_version, name, config_id, event, now);
        self.status_queue()
            .send(StatusJob::Write(write))
            .await
            .map_err(|_| EcrError::Store(StoreError::Backend("status writer stopped".into())))
    }

    /// Waits until every status event queued before this call is committed (or its
    /// batch failed).
    pub async fn flush_statuses(&self) {
        let (done, wait) = oneshot::channel();
        if self
            .status_queue()
            .send(StatusJob::Flush(done))
            .await
            .is_ok()
        {
            let _ = wait.await;
        }
    }

    /// Status events lost because their batch could not be written.
    pub fn status_write_failures(&self) -> u64 {
        self.status_failures.get()
    }

    /// The counter behind [`Ecr::status_write_failures`], for a metrics registry (the
    /// ECR service registers it as `ecr_status_write_failures_total`).
    pub fn status_write_failures_metric(&self) -> prometheus_client::metrics::counter::Counter {
        self.status_failures.clone()
    }

    /// The status queue, its writer task started on first use (on the caller's
    /// runtime; the task ends when the engine is dropped).
    fn status_queue(&self) -> &mpsc::Sender<StatusJob> {
        self.status_queue.get_or_init(|| {
            let (tx, rx) = mpsc::channel(STATUS_QUEUE_CAPACITY);
            tokio::spawn(status_writer(
                Arc::clone(&self.store),
                rx,
                self.status_failures.clone(),
            ));
            tx
        })
    }
}

/// The most (endpoint, app version) sightings [`Ecr::learn_endpoint`] remembers in
/// memory.
pub const KNOWN_CACHE_CAPACITY: usize = 200_000;

/// How many status events may wait for the status writer.
pub const STATUS_QUEUE_CAPACITY: usize = 16_384;
/// The most status events written in one transaction.
pub const STATUS_BATCH: usize = 2_048;

/// The most lookups [`Ecr::effective`] reads in one statement.
pub const LOOKUP_BATCH: usize = 512;
/// How many lookup batches run at the same time (each holds one store connection).
pub const LOOKUP_BATCHES_IN_FLIGHT: usize = 4;
/// How many lookups may wait for the batcher.
const LOOKUP_QUEUE_CAPACITY: usize = 4_096;

type LookupResult = Result<Option<(StoredConfig, Source)>, StoreError>;

struct Lookup {
    key: EffectiveKey,
    reply: oneshot::Sender<LookupResult>,
}

/// Reads queued lookups in batches: waits for a free batch slot, takes whatever
/// has queued up (at most [`LOOKUP_BATCH`]) and reads it with one
/// [`ConfigStore::effective_many`] in a task of its own.
async fn lookup_batcher(store: Arc<dyn ConfigStore>, mut rx: mpsc::Receiver<Lookup>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(LOOKUP_BATCHES_IN_FLIGHT));
    loop {
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        let mut batch = Vec::with_capacity(LOOKUP_BATCH);
        if rx.recv_many(&mut batch, LOOKUP_BATCH).await == 0 {
            return;
        }
        let store = Arc::clone(&store);
        tokio::spawn(async move {
            let (keys, replies): (Vec<EffectiveKey>, Vec<_>) =
                batch.into_iter().map(|l| (l.key, l.reply)).unzip();
            match store.effective_many(&keys).await {
                Ok(found) if found.len() == replies.len() => {
                    for (reply, answer) in replies.into_iter().zip(found) {
                        let _ = reply.send(Ok(answer));
                    }
                }
                Ok(found) => {
                    let e = format!("{} answers for {} lookups", found.len(), replies.len());
                    for reply in replies {
                        let _ = reply.send(Err(StoreError::Corrupt(e.clone())));
                    }
                }
                Err(e) => {
                    for reply in replies {
                        let _ = reply.send(Err(StoreError::Backend(e.to_string())));
                    }
                }
            }
            drop(slot);
        });
    }
}

enum StatusJob {
    Write(StatusWrite),
    Flush(oneshot::Sender<()>),
}

/// Writes queued status events: every round takes whatever has queued up (at most
/// [`STATUS_BATCH`]) and commits it in one transaction, then answers the flushes that
/// were queued among them.
async fn status_writer(
    store: Arc<dyn ConfigStore>,
    mut rx: mpsc::Receiver<StatusJob>,
    failures: prometheus_client::metrics::counter::Counter,
) {
    let mut jobs = Vec::with_capacity(STATUS_BATCH);
    let mut writes = Vec::with_capacity(STATUS_BATCH);
    let mut flushes = Vec::new();
    while rx.recv_many(&mut jobs, STATUS_BATCH).await > 0 {
        for job in jobs.drain(..) {
            match job {
                StatusJob::Write(w) => writes.push(w),
                StatusJob::Flush(done) => flushes.push(done),
            }
        }
        if !writes.is_empty()
            && let Err(e) = store.record_statuses(&writes).await
        {
            failures.inc_by(writes.len() as u64);
            tracing::warn!(error = %e, events = writes.len(), "could not record status events");
        }
        writes.clear();
        for done in flushes.drain(..) {
            let _ = done.send(());
        }
    }
}
