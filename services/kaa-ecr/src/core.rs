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
use super::rollout::{self, Action, Event, Rollout, StepCounts};
use super::store::{
    BatchTarget, ConfigStore, EffectiveKey, Precondition, PutOutcome, StatusWrite, StoreError,
};
use kaa_service::ConfigError;

mod layer_rollout;
mod layered;
pub use layer_rollout::LayerVersion;
pub use layered::{
    DRY_RUN_EXAMPLES, Explanation, LayerChange, PredictedChange, Prediction, SchemaVerdict,
};

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
    /// There is no rollout with this ID.
    #[error("no rollout {0}")]
    RolloutNotFound(String),
    /// The rollout's state does not allow the action (409).
    #[error("{0}")]
    Conflict(String),
    /// `If-Match` does not name the rollout's current ETag (412).
    #[error("If-Match does not match the rollout's current ETag {etag}")]
    RolloutPrecondition {
        /// The current ETag, quoted.
        etag: String,
    },
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

    /// The listed app versions, sorted (empty: every valid name is accepted).
    pub fn listed(&self) -> Vec<String> {
        let mut v: Vec<String> = self.known.iter().cloned().collect();
        v.sort();
        v
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
    rollout_gauges: RolloutGauges,
    online: Mutex<HashSet<String>>,
}

/// The most endpoints ECR keeps as online ([`Ecr::endpoints_connected`]); past
/// it, further endpoints are not kept (they count as offline, see
/// [`crate::rollout`]: never against a rollout).
pub const ONLINE_CAPACITY: usize = 1_000_000;

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
            rollout_gauges: RolloutGauges::default(),
            online: Mutex::new(HashSet::new()),
        }
    }

    /// Records that endpoints are online: named by a 9/ELCE `connected` event (any
    /// originator, seen by every replica), or asking for their configuration over
    /// 6/CDTP (a CMX asks for its connected endpoints, and again for all of them
    /// when ECR starts). A rollout step's announcement to an online endpoint counts
    /// as its dispatch (see [`crate::rollout`]). At most [`ONLINE_CAPACITY`] are
    /// kept.
    pub fn endpoints_connected<'a>(&self, endpoint_ids: impl IntoIterator<Item = &'a str>) {
        if let Ok(mut online) = self.online.lock() {
            for e in endpoint_ids {
                // No allocation for an endpoint known online (every 6/CDTP request).
                if !online.contains(e) && online.len() < ONLINE_CAPACITY {
                    online.insert(e.to_owned());
                }
            }
        }
    }

    /// Records that endpoints went offline (a 9/ELCE `disconnected` event).
    pub fn endpoints_disconnected<'a>(&self, endpoint_ids: impl IntoIterator<Item = &'a str>) {
        if let Ok(mut online) = self.online.lock() {
            for e in endpoint_ids {
                online.remove(e);
            }
        }
    }

    /// Whether ECR takes `endpoint_id` for online ([`Ecr::endpoints_connected`]).
    pub fn is_online(&self, endpoint_id: &str) -> bool {
        self.online.lock().is_ok_and(|o| o.contains(endpoint_id))
    }

    /// How many endpoints ECR takes for online.
    pub fn online_count(&self) -> usize {
        self.online.lock().map_or(0, |o| o.len())
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
    ///
    /// `before` and `after` are the own configurations with whether each is stored
    /// as a merge patch (then the effective configuration is the patch merged over
    /// the default and its layers).
    async fn endpoint_changed(
        &self,
        endpoint_id: &EndpointId,
        app_version: &AppVersionName,
        name: &ConfigName,
        before: Option<(&StoredConfig, bool)>,
        after: Option<(StoredConfig, bool)>,
        prefetched_default: Option<Option<StoredConfig>>,
    ) -> Result<(), EcrError> {
        let needs_default = !matches!((before, &after), (Some((_, false)), Some((_, false))));
        let read_default = || self.default_as_served(endpoint_id, app_version, name);
        let effective =
            |own: Option<(&StoredConfig, bool)>, default: &Option<StoredConfig>| match own {
                Some((c, false)) => Some(c.clone()),
                Some((p, true)) => crate::layers::compose(
                    name,
                    &crate::layers::EffectiveInputs {
                        base: default.clone().map(|c| (c, Source::Default)),
                        own_patch: Some(p.clone()),
                        ..Default::default()
                    },
                    &[],
                )
                .map(|(c, _)| c),
                None => default.clone(),
            };
        let same_id = |default: &Option<StoredConfig>| {
            let before_id = effective(before, default).map(|c| c.config_id);
            let after_id =
                effective(after.as_ref().map(|(c, p)| (c, *p)), default).map(|c| c.config_id);
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
            // What the endpoint follows is the default with its layers.
            default = self
                .layered_default(endpoint_id, app_version, name, default)
                .await?;
        }
        if !same_id(&default) {
            self.emit(EffectiveChange {
                endpoint_id: endpoint_id.clone(),
                app_version: app_version.clone(),
                name: name.clone(),
                config: effective(after.as_ref().map(|(c, p)| (c, *p)), &default),
            });
        }
        Ok(())
    }

    /// The default configuration `name` of `app_version` as ECR serves it to
    /// `endpoint_id` when the endpoint follows it: the active rollout's
    /// configuration when the endpoint is in its served cohort, else the default.
    async fn default_as_served(
        &self,
        endpoint_id: &EndpointId,
        app_version: &AppVersionName,
        name: &ConfigName,
    ) -> Result<Option<StoredConfig>, StoreError> {
        let scope = Scope::Default {
            app_version: app_version.clone(),
        };
        let (default, active) =
            tokio::join!(self.store.get(&scope, name), self.store.active_rollouts());
        let served = active?.into_iter().find(|r| {
            r.layer.is_none()
                && r.app_version == app_version.as_str()
                && r.name == name.as_str()
                && rollout::served_bucket_limit(&r.rollout_id, r.served_bp(), endpoint_id.as_str())
        });
        Ok(match served {
            Some(r) => Some(StoredConfig {
                name: name.clone(),
                config_id: r.config_id,
                content: r.content,
                created: UnixMillis(r.created_ms),
                updated: UnixMillis(r.updated_ms),
            }),
            None => default?,
        })
    }

    /// Emits a default change to every known endpoint that follows the default.
    ///
    /// With layers on (`app_version`, `name`), only the followers whose effective
    /// configuration (default and layers) changed are announced, each its own: the
    /// followers' bases and groups are read after the commit and composed with the
    /// layers over `before` and over what they are served now.
    async fn default_changed(
        &self,
        app_version: &AppVersionName,
        name: &ConfigName,
        before: Option<&StoredConfig>,
        after: Option<StoredConfig>,
    ) -> Result<(), EcrError> {
        if self.changes.is_none() {
            return Ok(());
        }
        let layers = self.store.layers(app_version, Some(name)).await?;
        // A layer rollout's new version counts as a layer (it may be a new one).
        let layered = !layers.is_empty() || self.any_layer_rollout(app_version, name).await?;
        // Followers with an own patch are composed too (without layers, only they).
        let patched: HashSet<EndpointId> = if !layered {
            self.store
                .endpoints_with_own_patch(app_version, name)
                .await?
                .into_iter()
                .collect()
        } else {
            HashSet::new()
        };
        if layered || !patched.is_empty() {
            let (followers, plain): (Vec<EndpointId>, Vec<EndpointId>) = self
                .store
                .endpoints_following_default(app_version, name)
                .await?
                .into_iter()
                .partition(|e| layered || patched.contains(e));
            for endpoint_id in plain {
                self.emit(EffectiveChange {
                    endpoint_id,
                    app_version: app_version.clone(),
                    name: name.clone(),
                    config: after.clone(),
                });
            }
            let inputs = self.inputs_of(app_version, name, &followers).await?;
            for (endpoint_id, inputs) in followers.into_iter().zip(inputs) {
                let will = crate::layers::compose(name, &inputs, &layers);
                let was = crate::layers::compose(
                    name,
                    &crate::layers::EffectiveInputs {
                        base: before.cloned().map(|c| (c, Source::Default)),
                        groups: inputs.groups,
                        own_patch: inputs.own_patch,
                        rolling: inputs.rolling,
                    },
                    &layers,
                );
                if was.as_ref().map(|(c, _)| &c.config_id)
                    != will.as_ref().map(|(c, _)| &c.config_id)
                {
                    self.emit(EffectiveChange {
                        endpoint_id,
                        app_version: app_version.clone(),
                        name: name.clone(),
                        config: will.map(|(c, _)| c),
                    });
                }
            }
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
                outcome
                    .previous
                    .as_ref()
                    .map(|p| (p, outcome.previous_patch)),
                Some((outcome.config.clone(), false)),
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
    /// `scope`, each with whether it is an own configuration stored as a merge
    /// patch), retried as [`Ecr::retry_announce`] says.
    async fn announce(
        &self,
        scope: &Scope,
        name: &ConfigName,
        before: Option<(&StoredConfig, bool)>,
        after: Option<(StoredConfig, bool)>,
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
                    self.default_changed(
                        app_version,
                        name,
                        before.map(|(c, _)| c),
                        after.clone().map(|(c, _)| c),
                    )
                    .await
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
        let deleted = self.store.delete_own(scope, name, precondition).await?;
        if let Some((previous, patch)) = &deleted {
            self.announce(scope, name, Some((previous, *patch)), None, None)
                .await?;
        }
        Ok(deleted.map(|(c, _)| c))
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

    /// The deduplicated targets of a batch (in request order) and its content,
    /// checked as [`Ecr::put_batch`] checks them (names, app versions, schemas, size).
    fn batch_targets(
        &self,
        endpoints: &BTreeMap<String, Vec<String>>,
        config: &Value,
    ) -> Result<(Vec<BatchTarget>, Content), EcrError> {
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
        Ok((targets, content))
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
        let (targets, content) = self.batch_targets(endpoints, config)?;
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
                        outcome
                            .previous
                            .as_ref()
                            .map(|p| (p, outcome.previous_patch)),
                        Some((outcome.config.clone(), false)),
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

/// The body of a rollout creation (see [`crate::rollout`]).
#[derive(Debug, Clone)]
pub struct RolloutSpec {
    /// The new configuration.
    pub config: Value,
    /// The cumulative percentages.
    pub steps: Vec<f64>,
    /// The gate of every step.
    pub gate: rollout::Gate,
    /// The abort criteria.
    pub abort: rollout::AbortCriteria,
    /// What an abort does.
    pub on_abort: rollout::OnAbort,
}

/// How many times an action retries when the rollout changed under it (the
/// controller advanced it meanwhile) and no `If-Match` was given.
const ACTION_ATTEMPTS: usize = 5;

impl Ecr {
    /// Begins a rollout of `spec.config` as configuration `name` of `app_version`
    /// (app version and JSON Schema checked as for a PUT): its first step's cohort
    /// is announced the new configuration. Refused (409) when a rollout of that pair
    /// is active or the configuration is the default already.
    pub async fn create_rollout(
        &self,
        app_version: &AppVersionName,
        name: &ConfigName,
        spec: &RolloutSpec,
        now: UnixMillis,
    ) -> Result<Rollout, EcrError> {
        let content = self.prepare(app_version, &spec.config)?;
        let r = rollout::new_rollout(
            uuid::Uuid::new_v4().to_string(),
            app_version.as_str(),
            name.as_str(),
            &content,
            &spec.steps,
            spec.gate.clone(),
            spec.abort.clone(),
            spec.on_abort,
            now.0,
        )
        .map_err(|e| EcrError::BadRequest(e.0))?;
        let announce = self.rollout_announcements(None, &r).await?;
        let stored = self.store.create_rollout(&r, &announce).await?;
        tracing::info!(rollout_id = %stored.rollout_id, app_version = %app_version, name = %name, config_id = %stored.config_id, endpoints = announce.len(), "rollout begun");
        self.record_rollout_dispatches(None, &stored, &announce)
            .await;
        self.emit_rollout(&stored, &announce).await?;
        Ok(stored)
    }

    /// The rollout `rollout_id` with the live counts of its current step (active
    /// rollouts; `None` for the others, whose counts are frozen in their steps).
    pub async fn rollout(
        &self,
        rollout_id: &str,
        now: UnixMillis,
    ) -> Result<(Rollout, Option<StepCounts>), EcrError> {
        let r = self
            .store
            .rollout(rollout_id)
            .await?
            .ok_or_else(|| EcrError::RolloutNotFound(rollout_id.to_owned()))?;
        let counts = self.live_counts(&r, now).await?;
        Ok((r, counts))
    }

    /// The rollouts of `app_version` (of `name`, or all), newest first, with live
    /// counts as [`Ecr::rollout`].
    pub async fn rollouts(
        &self,
        app_version: &AppVersionName,
        name: Option<&ConfigName>,
        now: UnixMillis,
    ) -> Result<Vec<(Rollout, Option<StepCounts>)>, EcrError> {
        self.apps.check(app_version)?;
        let mut out = Vec::new();
        for r in self.store.rollouts(app_version, name).await? {
            let counts = self.live_counts(&r, now).await?;
            out.push((r, counts));
        }
        Ok(out)
    }

    async fn live_counts(
        &self,
        r: &Rollout,
        now: UnixMillis,
    ) -> Result<Option<StepCounts>, EcrError> {
        if r.state.is_active() {
            Ok(Some(self.rollout_counts(r, now).await?))
        } else {
            Ok(None)
        }
    }

    /// The counts of the current step of `r` (its cumulative cohort) at `now` (see
    /// [`crate::rollout`] for what they count).
    pub async fn rollout_counts(
        &self,
        r: &Rollout,
        now: UnixMillis,
    ) -> Result<StepCounts, EcrError> {
        if r.layer.is_some() {
            return self.layer_rollout_counts(r, now).await;
        }
        let app = AppVersionName::new(r.app_version.as_str())?;
        let name = ConfigName::new(r.name.as_str())?;
        let followers = self.store.endpoints_following_default(&app, &name).await?;
        let reports: HashMap<String, rollout::Report> = self
            .store
            .rollout_reports(&app, &name, &r.config_id, UnixMillis(r.created_ms))
            .await?
            .into_iter()
            .collect();
        Ok(rollout::count(
            &r.rollout_id,
            rollout::basis_points(r.steps[r.step].percent),
            followers.iter().map(EndpointId::as_str),
            |e| reports.get(e).copied(),
            r.abort.report_timeout_seconds,
            now.0,
        ))
    }

    /// Pauses, resumes, aborts or promotes rollout `rollout_id` (see
    /// [`crate::rollout`]); `if_match` as for configurations, against the rollout's
    /// ETag. Without `If-Match`, a change of the rollout meanwhile (the controller
    /// advancing it) is retried on the new state.
    pub async fn act_on_rollout(
        &self,
        rollout_id: &str,
        action: Action,
        if_match: &Precondition,
        now: UnixMillis,
    ) -> Result<Rollout, EcrError> {
        let mut attempts = 0;
        loop {
            attempts += 1;
            let r = self
                .store
                .rollout(rollout_id)
                .await?
                .ok_or_else(|| EcrError::RolloutNotFound(rollout_id.to_owned()))?;
            let tag = format!("{}-{}", r.rollout_id, r.revision);
            if if_match.check(Some(&tag)).is_err() {
                return Err(EcrError::RolloutPrecondition { etag: r.etag() });
            }
            let counts = self.live_counts(&r, now).await?.unwrap_or_default();
            let Some(next) = rollout::transition(&r, &Event::Acted(action), &counts, now.0)
                .map_err(EcrError::Conflict)?
            else {
                return Ok(r);
            };
            match self.commit_rollout(&r, &next).await {
                Ok(()) => {
                    tracing::info!(
                        rollout_id,
                        action = action.as_str(),
                        state = rollout::state_name(next.state),
                        "rollout action"
                    );
                    return Ok(next);
                }
                Err(EcrError::Store(StoreError::RolloutChanged { .. }))
                    if *if_match == Precondition::None && attempts < ACTION_ATTEMPTS => {}
                Err(EcrError::Store(StoreError::RolloutChanged { current })) => {
                    return Err(EcrError::RolloutPrecondition {
                        etag: format!("\"{}-{current}\"", r.rollout_id),
                    });
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// One pass of the rollout controller at `now`: for every active rollout, reads
    /// the current step's counts, decides ([`rollout::decide`]) and commits the
    /// transition with its announcements. Idempotent: a pass over a state already
    /// advanced (by another replica, or an action) changes nothing, and the store
    /// writes a transition only over the revision it was computed from. Updates the
    /// per-rollout gauges. Returns the rollouts looked at, as they are now, with the
    /// counts they were decided on; a rollout that could not be counted or
    /// advanced is logged and left to the next pass (the error is the listing's).
    pub async fn drive_rollouts(
        &self,
        now: UnixMillis,
    ) -> Result<Vec<(Rollout, StepCounts)>, EcrError> {
        // Reports queued in this replica count.
        self.flush_statuses().await;
        let mut out = Vec::new();
        let mut gauges = Vec::new();
        for r in self.store.active_rollouts().await? {
            // One rollout failing (e.g. a corrupt name) does not stop the others.
            let counts = match self.rollout_counts(&r, now).await {
                Ok(counts) => counts,
                Err(e) => {
                    tracing::warn!(rollout_id = %r.rollout_id, error = %e, "could not count a rollout's reports");
                    continue;
                }
            };
            gauges.push((r.clone(), r.step, counts));
            let decision = rollout::decide(&r, &counts, now.0);
            let next = rollout::transition(&r, &Event::Decided(decision), &counts, now.0)
                .ok()
                .flatten();
            let r = match next {
                Some(next) => match self.commit_rollout(&r, &next).await {
                    Ok(()) => {
                        tracing::info!(
                            rollout_id = %next.rollout_id,
                            step = next.step,
                            state = rollout::state_name(next.state),
                            reason = next.reason.as_deref().unwrap_or(""),
                            applied = counts.applied,
                            rejected = counts.rejected,
                            "rollout advanced"
                        );
                        next
                    }
                    // Changed meanwhile: decided again on the next pass.
                    Err(EcrError::Store(StoreError::RolloutChanged { .. })) => r,
                    Err(e) => {
                        tracing::warn!(rollout_id = %r.rollout_id, error = %e, "could not advance a rollout");
                        r
                    }
                },
                None => r,
            };
            out.push((r, counts));
        }
        self.rollout_gauges.set(&gauges);
        Ok(out)
    }

    /// The per-rollout gauges ([`RolloutGauges::register`]).
    pub fn rollout_gauges(&self) -> &RolloutGauges {
        &self.rollout_gauges
    }

    /// The endpoints following the default whose effective configuration the change
    /// `before` → `after` switches.
    async fn rollout_announcements(
        &self,
        before: Option<&Rollout>,
        after: &Rollout,
    ) -> Result<Vec<EndpointId>, EcrError> {
        let range = rollout::announced_buckets(before, after);
        if range.is_empty() {
            return Ok(Vec::new());
        }
        let app = AppVersionName::new(after.app_version.as_str())?;
        let name = ConfigName::new(after.name.as_str())?;
        Ok(self
            .store
            .endpoints_following_default(&app, &name)
            .await?
            .into_iter()
            .filter(|e| range.contains(&rollout::cohort_bucket(&after.rollout_id, e.as_str())))
            .collect())
    }

    async fn commit_rollout(&self, before: &Rollout, after: &Rollout) -> Result<(), EcrError> {
        if after.layer.is_some() {
            return self.commit_layer_rollout(before, after).await;
        }
        let announce = self.rollout_announcements(Some(before), after).await?;
        self.store.update_rollout(after, &announce).await?;
        self.record_rollout_dispatches(Some(before), after, &announce)
            .await;
        self.emit_rollout(after, &announce).await
    }

    /// When the change `before` → `after` announces the new configuration to
    /// `announced` (a step begins, or the rollout completes), records it as
    /// dispatched, at `after.updated_ms`, for those of them that are online
    /// ([`Ecr::is_online`]): the CMX pushes an announced configuration to a
    /// connected endpoint, so one that reports nothing within the report timeout
    /// counts as timed out. Through the status queue, before the announcements are
    /// published, so it is ordered before their confirmations.
    async fn record_rollout_dispatches(
        &self,
        before: Option<&Rollout>,
        after: &Rollout,
        announced: &[EndpointId],
    ) {
        if after.new_config_bp() <= before.map_or(0, Rollout::new_config_bp) {
            return;
        }
        let (Ok(app), Ok(name)) = (
            AppVersionName::new(after.app_version.as_str()),
            ConfigName::new(after.name.as_str()),
        ) else {
            return;
        };
        let mut recorded = 0usize;
        for e in announced.iter().filter(|e| self.is_online(e.as_str())) {
            let at = UnixMillis(after.updated_ms);
            match self
                .record_status(
                    e,
                    &app,
                    &name,
                    &after.config_id,
                    &StatusEvent::Dispatched,
                    at,
                )
                .await
            {
                Ok(()) => recorded += 1,
                Err(e) => {
                    tracing::warn!(rollout_id = %after.rollout_id, error = %e, "could not record a rollout step's dispatches");
                    return;
                }
            }
        }
        tracing::debug!(rollout_id = %after.rollout_id, step = after.step, announced = announced.len(), online = recorded, "rollout step dispatches recorded");
    }

    /// Announces (in-memory publisher) the current effective configuration of each
    /// of `endpoints`, read after the rollout's commit. With durable announcements
    /// the store recorded them in that commit instead.
    async fn emit_rollout(&self, r: &Rollout, endpoints: &[EndpointId]) -> Result<(), EcrError> {
        if self.changes.is_none() || endpoints.is_empty() {
            return Ok(());
        }
        let app = AppVersionName::new(r.app_version.as_str())?;
        let name = ConfigName::new(r.name.as_str())?;
        for chunk in endpoints.chunks(LOOKUP_BATCH) {
            let keys: Vec<EffectiveKey> = chunk
                .iter()
                .map(|e| EffectiveKey {
                    endpoint_id: e.clone(),
                    app_version: app.clone(),
                    name: name.clone(),
                })
                .collect();
            // Committed already: read with the same retry as announcing a put.
            let deadline = tokio::time::Instant::now() + Self::ANNOUNCE_RETRY;
            let mut delay = std::time::Duration::from_millis(50);
            let found = loop {
                match self.store.effective_many(&keys).await {
                    Ok(found) => break found,
                    Err(StoreError::Backend(e))
                        if tokio::time::Instant::now() + delay < deadline =>
                    {
                        tracing::warn!(error = %e, "announcing a rollout step failed; retrying");
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(std::time::Duration::from_secs(1));
                    }
                    Err(e) => return Err(e.into()),
                }
            };
            for (key, current) in keys.into_iter().zip(found) {
                self.emit(EffectiveChange {
                    endpoint_id: key.endpoint_id,
                    app_version: key.app_version,
                    name: key.name,
                    config: current.map(|(c, _)| c),
                });
            }
        }
        Ok(())
    }
}

/// Runs the rollout controller until the task is dropped: every `tick`, if this
/// replica leads ([`ConfigStore::lead_rollouts`]), one [`Ecr::drive_rollouts`] pass at
/// the current time. Errors are logged and the next tick tries again.
pub async fn run_rollout_controller(ecr: Arc<Ecr>, tick: std::time::Duration) {
    let mut leading = false;
    loop {
        match ecr.store.lead_rollouts().await {
            Ok(true) => {
                if !leading {
                    tracing::info!("this replica drives the rollouts");
                    leading = true;
                }
                if let Err(e) = ecr.drive_rollouts(super::model::now()).await {
                    tracing::warn!(error = %e, "rollout controller pass failed");
                }
            }
            Ok(false) => {
                if leading {
                    tracing::info!("another replica drives the rollouts");
                    leading = false;
                    ecr.rollout_gauges.set(&[]);
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not tell which replica drives the rollouts")
            }
        }
        tokio::time::sleep(tick).await;
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct RolloutLabels {
    rollout_id: String,
    app_version: String,
    name: String,
}

type GaugeFamily = prometheus_client::metrics::family::Family<
    RolloutLabels,
    prometheus_client::metrics::gauge::Gauge,
>;

/// Per-rollout gauges (labels `rollout_id`, `app_version`, `name`), set by the
/// replica that drives the rollouts on every pass, for the rollouts active at the
/// pass: the counts the pass decided on and the step they are of (a step the pass
/// passed shows until the next pass).
#[derive(Debug, Clone, Default)]
pub struct RolloutGauges {
    targeted: GaugeFamily,
    delivered: GaugeFamily,
    applied: GaugeFamily,
    rejected: GaugeFamily,
    step: GaugeFamily,
}

impl RolloutGauges {
    /// Registers them as `<prefix>_rollout_{targeted,delivered,applied,rejected,step}`.
    pub fn register(&self, metrics: &kaa_service::Metrics) {
        metrics.register(
            "rollout_targeted",
            "Endpoints in the current step's cohort of a rollout",
            self.targeted.clone(),
        );
        metrics.register(
            "rollout_delivered",
            "Endpoints of the current step's cohort seen reached (dispatched, applied or rejected)",
            self.delivered.clone(),
        );
        metrics.register(
            "rollout_applied",
            "Endpoints of the current step's cohort that applied the rollout's configuration",
            self.applied.clone(),
        );
        metrics.register(
            "rollout_rejected",
            "Endpoints of the current step's cohort that rejected the rollout's configuration",
            self.rejected.clone(),
        );
        metrics.register(
            "rollout_step",
            "The index of a rollout's current step",
            self.step.clone(),
        );
    }

    /// Sets them to `rows`: each rollout with the step its counts are of.
    fn set(&self, rows: &[(Rollout, usize, StepCounts)]) {
        for f in [
            &self.targeted,
            &self.delivered,
            &self.applied,
            &self.rejected,
            &self.step,
        ] {
            f.clear();
        }
        let n = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        for (r, step, c) in rows {
            let labels = RolloutLabels {
                rollout_id: r.rollout_id.clone(),
                app_version: r.app_version.clone(),
                name: r.name.clone(),
            };
            self.targeted.get_or_create(&labels).set(n(c.targeted));
            self.delivered.get_or_create(&labels).set(n(c.delivered));
            self.applied.get_or_create(&labels).set(n(c.applied));
            self.rejected.get_or_create(&labels).set(n(c.rejected));
            self.step
                .get_or_create(&labels)
                .set(i64::try_from(*step).unwrap_or(0));
        }
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
