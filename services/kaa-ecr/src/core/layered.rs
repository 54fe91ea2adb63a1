//! The engine's side of endpoint groups and layers ([`crate::layers`]): their
//! writes, the prediction of what a write changes (dry runs and announcements share
//! it), and explain.
//!
//! # Announcements
//!
//! A layer write, a layer deletion and a membership change are predicted before
//! they are stored: the known endpoints of the (app version, name) concerned that
//! follow the default (an endpoint with its own whole configuration is not
//! layered; one whose own configuration is a merge patch is) are read with their
//! bases, groups and own patches ([`ConfigStore::effective_inputs`], batched), and
//! their effective configurations composed with the layers before and after the
//! write. Exactly the endpoints whose config ID differs are announced: on
//! PostgreSQL with durable announcements through the outbox, in the write's
//! transaction; otherwise after the commit, with their effective configuration read
//! again then. A dry run is the same prediction without the write, so it names the
//! endpoints the write would announce. A write committed by another replica between
//! the prediction and the commit is not in the prediction (each write's own
//! announcements still cover what it changed).
//!
//! Default writes, endpoint writes (whole, merge patch, deletion) and batch writes
//! are predicted the same way for their dry runs ([`Ecr::predict_default`],
//! [`Ecr::predict_endpoint`], [`Ecr::predict_endpoint_patch`],
//! [`Ecr::predict_batch`]); what they announce is decided after the commit (the
//! in-memory publisher) or by the outbox's announcer (PostgreSQL: for a default,
//! each follower's layers composed over the replaced default and over the current
//! one), with the same rule: exactly the endpoints whose effective config ID
//! changed.

use std::collections::{BTreeSet, HashSet};

use serde_json::Value;

use kaa_ism::UnixMillis;

use super::{Ecr, EcrError, EffectiveChange, LOOKUP_BATCH};
use crate::layers::{self, Decider, EffectiveInputs, Explained, GroupName, Layer, LayerTarget};
use crate::model::{
    AppVersionName, ConfigName, Content, EndpointId, Page, Scope, Source, StoredConfig,
};
use crate::store::{EffectiveKey, GroupSummary, Precondition, PutOutcome, StoreError};

/// How many changed endpoints a dry run shows with their JSON Patch.
pub const DRY_RUN_EXAMPLES: usize = 5;

/// One endpoint whose effective configuration a write changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PredictedChange {
    /// The endpoint.
    pub endpoint_id: EndpointId,
    /// The configuration name.
    pub name: ConfigName,
    /// Its effective configuration now.
    pub before: Option<StoredConfig>,
    /// After the write.
    pub after: Option<StoredConfig>,
}

/// The JSON Schema verdict on one would-be document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaVerdict {
    /// The would-be document's config ID.
    pub config_id: String,
    /// How many of the changed endpoints would get it.
    pub endpoints: u64,
    /// `None`: valid (or no schema); else the first violation.
    pub violation: Option<String>,
}

/// What a write would change (a dry run's answer; a real write's announcements).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Prediction {
    /// Every endpoint whose effective configuration changes, ordered by endpoint ID
    /// and name.
    pub changes: Vec<PredictedChange>,
}

impl Prediction {
    /// The endpoints concerned, for one name.
    fn endpoints_of(&self, name: &ConfigName) -> Vec<EndpointId> {
        self.changes
            .iter()
            .filter(|c| &c.name == name)
            .map(|c| c.endpoint_id.clone())
            .collect()
    }

    /// The verdicts of `app_version`'s schema on each distinct would-be document.
    pub fn verdicts(&self, ecr: &Ecr, app_version: &AppVersionName) -> Vec<SchemaVerdict> {
        let mut out: Vec<SchemaVerdict> = Vec::new();
        for c in &self.changes {
            let Some(after) = &c.after else { continue };
            if let Some(v) = out.iter_mut().find(|v| v.config_id == after.config_id) {
                v.endpoints += 1;
                continue;
            }
            let doc: Value = serde_json::from_str(&after.content).unwrap_or(Value::Null);
            out.push(SchemaVerdict {
                config_id: after.config_id.clone(),
                endpoints: 1,
                violation: ecr
                    .apps
                    .validate(app_version, &doc)
                    .err()
                    .map(|e| e.to_string()),
            });
        }
        out
    }
}

/// An explanation of an endpoint's effective configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Explanation {
    /// The effective configuration (`None`: there is none).
    pub effective: Option<StoredConfig>,
    /// Every leaf with its value and decider ([`layers::explain`]).
    pub leaves: Vec<Explained>,
}

/// What a layer write or deletion asks for.
#[derive(Debug, Clone)]
pub enum LayerChange {
    /// Create or replace this layer.
    Put(Layer),
    /// Delete the layer of this name.
    Delete(GroupName),
}

fn keys_of(app: &AppVersionName, name: &ConfigName, endpoints: &[EndpointId]) -> Vec<EffectiveKey> {
    endpoints
        .iter()
        .map(|e| EffectiveKey {
            endpoint_id: e.clone(),
            app_version: app.clone(),
            name: name.clone(),
        })
        .collect()
}

fn differs(a: &Option<(StoredConfig, Source)>, b: &Option<(StoredConfig, Source)>) -> bool {
    a.as_ref().map(|(c, _)| &c.config_id) != b.as_ref().map(|(c, _)| &c.config_id)
}

impl Ecr {
    /// The bases and groups of `endpoints`, read in batches.
    pub(super) async fn inputs_of(
        &self,
        app: &AppVersionName,
        name: &ConfigName,
        endpoints: &[EndpointId],
    ) -> Result<Vec<EffectiveInputs>, StoreError> {
        let mut out = Vec::with_capacity(endpoints.len());
        for chunk in endpoints.chunks(LOOKUP_BATCH * 2) {
            out.extend(
                self.store
                    .effective_inputs(&keys_of(app, name, chunk))
                    .await?,
            );
        }
        Ok(out)
    }

    /// Predicts, for the known endpoints of (`app`, `name`) in `candidates` (all
    /// followers of the default when `None`), the change from composing with
    /// `before` to composing with `after` (layers in merge order), `groups` and
    /// `base` optionally rewriting an endpoint's inputs after the write.
    #[allow(clippy::too_many_arguments)]
    async fn predict(
        &self,
        app: &AppVersionName,
        name: &ConfigName,
        candidates: Option<&HashSet<EndpointId>>,
        before: &[Layer],
        after: &[Layer],
        after_groups: &(dyn Fn(&EndpointId, &BTreeSet<String>) -> BTreeSet<String> + Sync),
        after_base: Option<&Option<StoredConfig>>,
        out: &mut Prediction,
    ) -> Result<(), EcrError> {
        let mut endpoints = self.store.endpoints_following_default(app, name).await?;
        if let Some(c) = candidates {
            endpoints.retain(|e| c.contains(e));
        }
        if endpoints.is_empty() {
            return Ok(());
        }
        let active = match after_base {
            Some(_) => self.store.active_rollouts().await?.into_iter().find(|r| {
                r.layer.is_none() && r.app_version == app.as_str() && r.name == name.as_str()
            }),
            None => None,
        };
        if let Some(r) = active {
            return Err(EcrError::Store(crate::store::default_locked(
                app.as_str(),
                name.as_str(),
                &r.rollout_id,
            )));
        }
        let inputs = self.inputs_of(app, name, &endpoints).await?;
        for (endpoint_id, inputs) in endpoints.into_iter().zip(inputs) {
            let was = layers::compose(name, &inputs, before);
            let mut next = EffectiveInputs {
                base: inputs.base.clone(),
                groups: after_groups(&endpoint_id, &inputs.groups),
                own_patch: inputs.own_patch.clone(),
                rolling: inputs.rolling.clone(),
            };
            if let Some(base) = after_base
                && !matches!(next.base, Some((_, Source::Endpoint)))
            {
                next.base = base.clone().map(|c| (c, Source::Default));
            }
            let will = layers::compose(name, &next, after);
            if differs(&was, &will) {
                out.changes.push(PredictedChange {
                    endpoint_id,
                    name: name.clone(),
                    before: was.map(|(c, _)| c),
                    after: will.map(|(c, _)| c),
                });
            }
        }
        Ok(())
    }

    /// Announces (in-memory publisher) the current effective configuration `name`
    /// of each of `endpoints`, read now, in batches. With durable announcements the
    /// store recorded them in the write's transaction instead.
    pub(super) async fn emit_current(
        &self,
        app: &AppVersionName,
        name: &ConfigName,
        endpoints: &[EndpointId],
    ) -> Result<(), EcrError> {
        if self.changes.is_none() || endpoints.is_empty() {
            return Ok(());
        }
        for chunk in endpoints.chunks(LOOKUP_BATCH) {
            let keys = keys_of(app, name, chunk);
            let found = self.retry_read(|| self.store.effective_many(&keys)).await?;
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

    async fn retry_read<T, F, Fut>(&self, mut f: F) -> Result<T, EcrError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, StoreError>>,
    {
        let deadline = tokio::time::Instant::now() + Self::ANNOUNCE_RETRY;
        let mut delay = std::time::Duration::from_millis(50);
        loop {
            match f().await {
                Ok(v) => return Ok(v),
                Err(StoreError::Backend(e)) if tokio::time::Instant::now() + delay < deadline => {
                    tracing::warn!(error = %e, "announcing a committed write failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(std::time::Duration::from_secs(1));
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    fn check_group_target(&self, target: &LayerTarget) -> Result<(), EcrError> {
        if let LayerTarget::Group(g) = target {
            GroupName::new(g.as_str())?;
        }
        Ok(())
    }

    /// Creates or replaces (`LayerChange::Put`) or deletes a layer of
    /// (`app`, `name`), or with `dry_run` only predicts it. Returns the layer before
    /// the write and the prediction (the endpoints announced).
    pub async fn write_layer(
        &self,
        app: &AppVersionName,
        name: &ConfigName,
        change: LayerChange,
        dry_run: bool,
        now: UnixMillis,
    ) -> Result<(Option<Layer>, Prediction), EcrError> {
        self.apps.check(app)?;
        let current = self.store.layers(app, Some(name)).await?;
        let layer_name = match &change {
            LayerChange::Put(l) => l.layer_name.clone(),
            LayerChange::Delete(n) => n.to_string(),
        };
        if let Some(r) = self.layer_rollout_of(app, name, &layer_name).await? {
            return Err(EcrError::Store(crate::store::layer_locked(
                app.as_str(),
                name.as_str(),
                &layer_name,
                &r.rollout_id,
            )));
        }
        let previous = current.iter().find(|l| l.layer_name == layer_name).cloned();
        let mut next: Vec<Layer> = current
            .iter()
            .filter(|l| l.layer_name != layer_name)
            .cloned()
            .collect();
        if let LayerChange::Put(layer) = &change {
            self.check_group_target(&layer.target)?;
            if !layer.patch.is_object() {
                return Err(EcrError::BadRequest(
                    "a layer's patch is a JSON Merge Patch object".into(),
                ));
            }
            if let LayerTarget::Group(g) = &layer.target
                && self
                    .store
                    .group_members(app, &GroupName::new(g.as_str())?, 0, 1)
                    .await?
                    .is_none()
            {
                return Err(EcrError::Store(StoreError::NotFound(format!(
                    "no endpoint group {g} in application version {app}"
                ))));
            }
            let mut layer = layer.clone();
            if let Some(p) = &previous {
                layer.created = p.created;
            }
            next.push(layer);
            layers::order(&mut next);
        } else if previous.is_none() {
            return Ok((None, Prediction::default()));
        }
        // Only endpoints an old or new version of the layer reaches can change.
        let targets: Vec<&LayerTarget> = previous
            .iter()
            .map(|l| &l.target)
            .chain(match &change {
                LayerChange::Put(l) => Some(&l.target),
                LayerChange::Delete(_) => None,
            })
            .collect();
        let mut candidates: Option<HashSet<EndpointId>> = None;
        if targets.iter().all(|t| matches!(t, LayerTarget::Group(_))) {
            let mut set = HashSet::new();
            for t in targets {
                if let LayerTarget::Group(g) = t {
                    set.extend(self.all_members(app, &GroupName::new(g.as_str())?).await?);
                }
            }
            candidates = Some(set);
        }
        let mut prediction = Prediction::default();
        self.predict(
            app,
            name,
            candidates.as_ref(),
            &current,
            &next,
            &|_, g| g.clone(),
            None,
            &mut prediction,
        )
        .await?;
        if dry_run {
            return Ok((previous, prediction));
        }
        let announce = prediction.endpoints_of(name);
        let stored = match change {
            LayerChange::Put(layer) => self.store.put_layer(&layer, &announce).await?,
            LayerChange::Delete(n) => {
                self.store
                    .delete_layer(app, name, &n, &announce, now)
                    .await?
            }
        };
        self.emit_current(app, name, &announce).await?;
        Ok((stored.or(previous), prediction))
    }

    /// Stores `patch` (a JSON object) as the own configuration `name` of the
    /// endpoint of `scope`, as a JSON Merge Patch applied over its default and
    /// layers (`If-Match` as `precondition`), and announces the endpoint when its
    /// effective configuration changed. Refused (400) for a default's scope, for a
    /// patch that is not an object, and when the would-be effective configuration
    /// violates the app version's schema (checked against the state read before the
    /// write).
    pub async fn put_patch(
        &self,
        scope: &Scope,
        name: &ConfigName,
        patch: &Value,
        precondition: &Precondition,
        now: UnixMillis,
    ) -> Result<PutOutcome, EcrError> {
        let Scope::Endpoint {
            endpoint_id,
            app_version,
        } = scope
        else {
            return Err(EcrError::BadRequest(
                "only an endpoint's own configuration can be stored as a merge patch".into(),
            ));
        };
        // Checks the patch and the would-be document.
        self.predict_endpoint_patch(endpoint_id, app_version, name, patch)
            .await?;
        let content = Content::from_value(patch);
        let outcome = self
            .store
            .put_patch(scope, name, &content, precondition, now)
            .await?;
        if outcome.changed {
            self.recheck_patch(scope, endpoint_id, app_version, name, &outcome, now)
                .await?;
            self.announce(
                scope,
                name,
                outcome
                    .previous
                    .as_ref()
                    .map(|p| (p, outcome.previous_patch)),
                Some((outcome.config.clone(), true)),
                None,
            )
            .await?;
        }
        Ok(outcome)
    }

    /// The would-be document of a patch write was checked against the default and
    /// layers read before the write; a default, layer or membership write committed
    /// meanwhile (by another request or replica) may compose the stored patch into a
    /// document the schema refuses. So the document as stored now is checked again:
    /// refused, the write is undone (only while the slot still holds it: a write of
    /// the same slot meanwhile is left alone) and the answer is the schema's 400.
    /// A write that changes the default or layers after this check is theirs to
    /// answer for, as with any patch stored before it.
    async fn recheck_patch(
        &self,
        scope: &Scope,
        endpoint_id: &EndpointId,
        app: &AppVersionName,
        name: &ConfigName,
        outcome: &crate::store::PutOutcome,
        now: UnixMillis,
    ) -> Result<(), EcrError> {
        let Some((stored, Source::Endpoint)) = self.store.effective(endpoint_id, app, name).await?
        else {
            return Ok(());
        };
        let doc: Value = serde_json::from_str(&stored.content).unwrap_or(Value::Null);
        let Err(refused) = self.apps.validate(app, &doc) else {
            return Ok(());
        };
        let ours = crate::store::Precondition::ConfigId(vec![outcome.config.config_id.clone()]);
        let undo = match &outcome.previous {
            Some(p) => {
                let value: Value = serde_json::from_str(&p.content).unwrap_or(Value::Null);
                let previous = Content::from_value(&value);
                if outcome.previous_patch {
                    self.store
                        .put_patch(scope, name, &previous, &ours, now)
                        .await
                        .map(|_| ())
                } else {
                    self.store
                        .put(scope, name, &previous, &ours, now)
                        .await
                        .map(|_| ())
                }
            }
            None => self.store.delete_own(scope, name, &ours).await.map(|_| ()),
        };
        match undo {
            // A default or layer write committed meanwhile may have announced the
            // patch's document: the endpoint is announced what it has again.
            Ok(()) => {
                self.emit_current(app, name, std::slice::from_ref(endpoint_id))
                    .await?
            }
            Err(StoreError::PreconditionFailed { .. }) => {}
            Err(e) => {
                tracing::warn!(endpoint_id = %endpoint_id, app_version = %app, name = %name, error = %e, "could not undo a patch write the schema refuses");
            }
        }
        Err(refused)
    }

    /// The names of the own configurations of the endpoint of `scope` stored as
    /// merge patches (none for a default's scope).
    pub async fn own_patch_names(&self, scope: &Scope) -> Result<BTreeSet<String>, EcrError> {
        self.apps.check(scope.app_version())?;
        match scope {
            Scope::Endpoint {
                endpoint_id,
                app_version,
            } => Ok(self.store.own_patch_names(endpoint_id, app_version).await?),
            Scope::Default { .. } => Ok(BTreeSet::new()),
        }
    }

    /// Every member of a group (empty when it does not exist).
    async fn all_members(
        &self,
        app: &AppVersionName,
        group: &GroupName,
    ) -> Result<Vec<EndpointId>, EcrError> {
        let mut out = Vec::new();
        let size = 10_000;
        for page in 0.. {
            let Some(p) = self.store.group_members(app, group, page, size).await? else {
                break;
            };
            let n = p.content.len();
            for e in p.content {
                out.push(EndpointId::new(e)?);
            }
            if n < size as usize {
                break;
            }
        }
        Ok(out)
    }

    /// The layers of `app` (of `name`, or every name).
    pub async fn layers(
        &self,
        app: &AppVersionName,
        name: Option<&ConfigName>,
    ) -> Result<Vec<Layer>, EcrError> {
        self.apps.check(app)?;
        Ok(self.store.layers(app, name).await?)
    }

    /// Creates a group; `false` when it existed.
    pub async fn create_group(
        &self,
        app: &AppVersionName,
        group: &GroupName,
        now: UnixMillis,
    ) -> Result<bool, EcrError> {
        self.apps.check(app)?;
        Ok(self.store.create_group(app, group, now).await?)
    }

    /// Deletes a group (refused while a layer targets it); `false` when there was none.
    pub async fn delete_group(
        &self,
        app: &AppVersionName,
        group: &GroupName,
    ) -> Result<bool, EcrError> {
        self.apps.check(app)?;
        Ok(self.store.delete_group(app, group).await?)
    }

    /// One page of the groups of `app`.
    pub async fn groups(
        &self,
        app: &AppVersionName,
        page: u32,
        size: u32,
    ) -> Result<Page<GroupSummary>, EcrError> {
        self.apps.check(app)?;
        Ok(self.store.groups(app, page, size).await?)
    }

    /// One page of a group's members; `None`: no such group.
    pub async fn group_members(
        &self,
        app: &AppVersionName,
        group: &GroupName,
        page: u32,
        size: u32,
    ) -> Result<Option<Page<String>>, EcrError> {
        self.apps.check(app)?;
        Ok(self.store.group_members(app, group, page, size).await?)
    }

    /// Adds and removes members of a group (an endpoint in both lists ends up
    /// removed), or with `dry_run` only predicts it. Returns (added, removed) and the
    /// prediction (the endpoints announced, for every configuration name a layer
    /// targeting the group has).
    pub async fn change_members(
        &self,
        app: &AppVersionName,
        group: &GroupName,
        add: &[EndpointId],
        remove: &[EndpointId],
        dry_run: bool,
        now: UnixMillis,
    ) -> Result<((u64, u64), Prediction), EcrError> {
        self.apps.check(app)?;
        if add.len() + remove.len() > super::MAX_BATCH_ENDPOINTS {
            return Err(EcrError::BadRequest(format!(
                "a batch may name at most {} endpoints",
                super::MAX_BATCH_ENDPOINTS
            )));
        }
        if self.store.group_members(app, group, 0, 1).await?.is_none() {
            return Err(EcrError::Store(StoreError::NotFound(format!(
                "no endpoint group {group} in application version {app}"
            ))));
        }
        let all = self.store.layers(app, None).await?;
        let names: BTreeSet<String> = all
            .iter()
            .filter(|l| l.target == LayerTarget::Group(group.to_string()))
            .map(|l| l.name.clone())
            .collect();
        let removing: HashSet<EndpointId> = remove.iter().cloned().collect();
        let adding: HashSet<EndpointId> = add
            .iter()
            .filter(|e| !removing.contains(*e))
            .cloned()
            .collect();
        let candidates: HashSet<EndpointId> = adding.union(&removing).cloned().collect();
        let g = group.to_string();
        let after_groups = |e: &EndpointId, groups: &BTreeSet<String>| {
            let mut groups = groups.clone();
            if removing.contains(e) {
                groups.remove(&g);
            } else if adding.contains(e) {
                groups.insert(g.clone());
            }
            groups
        };
        let mut prediction = Prediction::default();
        for name in &names {
            let name = ConfigName::new(name.as_str())?;
            let layers: Vec<Layer> = all
                .iter()
                .filter(|l| l.name == name.as_str())
                .cloned()
                .collect();
            self.predict(
                app,
                &name,
                Some(&candidates),
                &layers,
                &layers,
                &after_groups,
                None,
                &mut prediction,
            )
            .await?;
        }
        if dry_run {
            return Ok(((0, 0), prediction));
        }
        let announce: Vec<(EndpointId, ConfigName)> = prediction
            .changes
            .iter()
            .map(|c| (c.endpoint_id.clone(), c.name.clone()))
            .collect();
        let counts = self
            .store
            .change_members(app, group, add, remove, &announce, now)
            .await?;
        for name in &names {
            let name = ConfigName::new(name.as_str())?;
            self.emit_current(app, &name, &prediction.endpoints_of(&name))
                .await?;
        }
        Ok((counts, prediction))
    }

    /// Predicts a write of the default `name` of `app` (`config`: the new default;
    /// `None`: deleted): the followers whose effective configuration it changes.
    /// Refused like the write while a rollout of that default is active.
    pub async fn predict_default(
        &self,
        app: &AppVersionName,
        name: &ConfigName,
        config: Option<&Value>,
    ) -> Result<Prediction, EcrError> {
        self.apps.check(app)?;
        let after = match config {
            Some(v) => {
                let content = self.prepare(app, v)?;
                let current = self
                    .store
                    .get(
                        &Scope::Default {
                            app_version: app.clone(),
                        },
                        name,
                    )
                    .await?;
                let t = crate::model::now();
                Some(StoredConfig {
                    name: name.clone(),
                    config_id: content.config_id,
                    content: content.json,
                    created: current.as_ref().map_or(t, |c| c.created),
                    updated: t,
                })
            }
            None => None,
        };
        let layers = self.store.layers(app, Some(name)).await?;
        let mut prediction = Prediction::default();
        self.predict(
            app,
            name,
            None,
            &layers,
            &layers,
            &|_, g| g.clone(),
            Some(&after),
            &mut prediction,
        )
        .await?;
        Ok(prediction)
    }

    /// Predicts a write of an endpoint's own configuration (`config`, a whole
    /// document; `None`: deleted, the endpoint follows the default and its layers
    /// again).
    pub async fn predict_endpoint(
        &self,
        endpoint_id: &EndpointId,
        app: &AppVersionName,
        name: &ConfigName,
        config: Option<&Value>,
    ) -> Result<Prediction, EcrError> {
        self.predict_own(endpoint_id, app, name, config.map(|c| (c, false)))
            .await
    }

    /// Predicts a write of an endpoint's own configuration stored as a merge patch
    /// (`patch`, an object), refused as the write is: a patch that is not an object,
    /// or a would-be effective configuration the app version's schema refuses.
    pub async fn predict_endpoint_patch(
        &self,
        endpoint_id: &EndpointId,
        app: &AppVersionName,
        name: &ConfigName,
        patch: &Value,
    ) -> Result<Prediction, EcrError> {
        self.predict_own(endpoint_id, app, name, Some((patch, true)))
            .await
    }

    /// [`Ecr::predict_endpoint`] (`own`: the document and whether it is a patch).
    async fn predict_own(
        &self,
        endpoint_id: &EndpointId,
        app: &AppVersionName,
        name: &ConfigName,
        own: Option<(&Value, bool)>,
    ) -> Result<Prediction, EcrError> {
        self.apps.check(app)?;
        if let Some((p, true)) = own
            && !p.is_object()
        {
            return Err(EcrError::BadRequest(
                "an own configuration stored as a merge patch is a JSON object".into(),
            ));
        }
        let key = keys_of(app, name, std::slice::from_ref(endpoint_id));
        let (inputs, layers, served) = tokio::join!(
            self.store.effective_inputs(&key),
            self.store.layers(app, Some(name)),
            self.default_as_served(endpoint_id, app, name)
        );
        let inputs = inputs?.pop().unwrap_or_default();
        let layers = layers?;
        let was = layers::compose(name, &inputs, &layers);
        let will = match own {
            Some((v, true)) => {
                let content = Content::from_value(v);
                let t = crate::model::now();
                let will = layers::compose(
                    name,
                    &EffectiveInputs {
                        base: served?.map(|c| (c, Source::Default)),
                        groups: inputs.groups.clone(),
                        own_patch: Some(StoredConfig {
                            name: name.clone(),
                            config_id: content.config_id,
                            content: content.json,
                            created: t,
                            updated: t,
                        }),
                        rolling: inputs.rolling.clone(),
                    },
                    &layers,
                );
                if let Some((c, _)) = &will {
                    let doc: Value = serde_json::from_str(&c.content).unwrap_or(Value::Null);
                    self.apps.validate(app, &doc)?;
                }
                will
            }
            Some((v, false)) => {
                let content = self.prepare(app, v)?;
                let t = crate::model::now();
                Some((
                    StoredConfig {
                        name: name.clone(),
                        config_id: content.config_id,
                        content: content.json,
                        created: t,
                        updated: t,
                    },
                    Source::Endpoint,
                ))
            }
            None => layers::compose(
                name,
                &EffectiveInputs {
                    base: served?.map(|c| (c, Source::Default)),
                    groups: inputs.groups.clone(),
                    own_patch: None,
                    rolling: inputs.rolling.clone(),
                },
                &layers,
            ),
        };
        let mut prediction = Prediction::default();
        if differs(&was, &will) {
            prediction.changes.push(PredictedChange {
                endpoint_id: endpoint_id.clone(),
                name: name.clone(),
                before: was.map(|(c, _)| c),
                after: will.map(|(c, _)| c),
            });
        }
        Ok(prediction)
    }

    /// Predicts a batch write ([`Ecr::put_batch`]): the listed endpoints whose
    /// effective configuration `name` the payload, as their own whole
    /// configuration, changes. Checked and refused as the write is (names, app
    /// versions, schemas, size). One prediction per app version, in app version
    /// order, each ordered by endpoint ID.
    pub async fn predict_batch(
        &self,
        endpoints: &std::collections::BTreeMap<String, Vec<String>>,
        name: &ConfigName,
        config: &Value,
    ) -> Result<Vec<(AppVersionName, Prediction)>, EcrError> {
        let (targets, content) = self.batch_targets(endpoints, config)?;
        let mut by_app: std::collections::BTreeMap<AppVersionName, Vec<EndpointId>> =
            Default::default();
        for t in targets {
            by_app.entry(t.app_version).or_default().push(t.endpoint_id);
        }
        let t = crate::model::now();
        let will = Some((
            StoredConfig {
                name: name.clone(),
                config_id: content.config_id,
                content: content.json,
                created: t,
                updated: t,
            },
            Source::Endpoint,
        ));
        let mut out = Vec::with_capacity(by_app.len());
        for (app, mut endpoints) in by_app {
            endpoints.sort();
            let (inputs, layers) = tokio::join!(
                self.inputs_of(&app, name, &endpoints),
                self.store.layers(&app, Some(name))
            );
            let (inputs, layers) = (inputs?, layers?);
            let mut prediction = Prediction::default();
            for (endpoint_id, inputs) in endpoints.into_iter().zip(inputs) {
                let was = layers::compose(name, &inputs, &layers);
                if differs(&was, &will) {
                    prediction.changes.push(PredictedChange {
                        endpoint_id,
                        name: name.clone(),
                        before: was.map(|(c, _)| c),
                        after: will.clone().map(|(c, _)| c),
                    });
                }
            }
            out.push((app, prediction));
        }
        Ok(out)
    }

    /// `default` (the default as served to `endpoint_id`) with the layers that
    /// reach the endpoint composed: what the endpoint gets when it has no own
    /// configuration.
    pub(super) async fn layered_default(
        &self,
        endpoint_id: &EndpointId,
        app: &AppVersionName,
        name: &ConfigName,
        default: Option<StoredConfig>,
    ) -> Result<Option<StoredConfig>, StoreError> {
        let (layers, active) = tokio::join!(
            self.store.layers(app, Some(name)),
            self.store.active_rollouts()
        );
        let (layers, active) = (layers?, active?);
        // The new versions of layers that layer rollouts serve this endpoint.
        let rolling = layers::rolling_for(
            &crate::store::rolling_layers(&active),
            app.as_str(),
            name.as_str(),
            endpoint_id.as_str(),
        );
        if layers.is_empty() && rolling.is_empty() {
            return Ok(default);
        }
        let groups = if layers
            .iter()
            .chain(&rolling)
            .all(|l| l.target == LayerTarget::All)
        {
            BTreeSet::new()
        } else {
            let key = keys_of(app, name, std::slice::from_ref(endpoint_id));
            self.store
                .effective_inputs(&key)
                .await?
                .pop()
                .unwrap_or_default()
                .groups
        };
        Ok(layers::compose(
            name,
            &EffectiveInputs {
                base: default.map(|c| (c, Source::Default)),
                groups,
                own_patch: None,
                rolling,
            },
            &layers,
        )
        .map(|(c, _)| c))
    }

    /// The effective configuration `name` of `endpoint_id` and, for every leaf, who
    /// decided it: the default (or the rollout step that served this endpoint), a
    /// layer, or the endpoint's own configuration.
    pub async fn explain(
        &self,
        endpoint_id: &EndpointId,
        app: &AppVersionName,
        name: &ConfigName,
    ) -> Result<Explanation, EcrError> {
        self.apps.check(app)?;
        let key = keys_of(app, name, std::slice::from_ref(endpoint_id));
        let (inputs, layers, active) = tokio::join!(
            self.store.effective_inputs(&key),
            self.store.layers(app, Some(name)),
            self.store.active_rollouts()
        );
        let inputs = inputs?.pop().unwrap_or_default();
        let layers = layers?;
        let active = active?;
        let effective = layers::compose(name, &inputs, &layers);
        let Some((config, _)) = &effective else {
            return Ok(Explanation {
                effective: None,
                leaves: Vec::new(),
            });
        };
        let doc: Value = serde_json::from_str(&config.content).unwrap_or(Value::Null);
        let mut contributions = Vec::new();
        match &inputs.base {
            Some((own, Source::Endpoint)) => {
                contributions.push((
                    Decider::Endpoint,
                    serde_json::from_str(&own.content).unwrap_or(Value::Null),
                ));
            }
            base => {
                if let Some((b, _)) = base {
                    let rollout = active.iter().find(|r| {
                        r.layer.is_none()
                            && r.app_version == app.as_str()
                            && r.name == name.as_str()
                            && r.config_id == b.config_id
                            && crate::rollout::served_bucket_limit(
                                &r.rollout_id,
                                r.served_bp(),
                                endpoint_id.as_str(),
                            )
                    });
                    let decider = match rollout {
                        Some(r) => Decider::Rollout {
                            rollout_id: r.rollout_id.clone(),
                            step: r.step,
                        },
                        None => Decider::Default,
                    };
                    contributions.push((
                        decider,
                        serde_json::from_str(&b.content).unwrap_or(Value::Null),
                    ));
                }
                let composed = layers::with_rolling(&layers, &inputs.rolling);
                for l in composed.iter().filter(|l| l.target.applies(&inputs.groups)) {
                    // A layer's new version served by its rollout names the rollout
                    // and its step.
                    let rolling = inputs
                        .rolling
                        .iter()
                        .any(|r| r.layer_name == l.layer_name)
                        .then(|| {
                            active.iter().find(|r| {
                                r.app_version == app.as_str()
                                    && r.name == name.as_str()
                                    && r.layer
                                        .as_ref()
                                        .is_some_and(|x| x.layer_name == l.layer_name)
                            })
                        })
                        .flatten();
                    let decider = match rolling {
                        Some(r) => Decider::RollingLayer {
                            layer_name: l.layer_name.clone(),
                            rollout_id: r.rollout_id.clone(),
                            step: r.step,
                        },
                        None => Decider::Layer(l.layer_name.clone()),
                    };
                    contributions.push((decider, l.patch.clone()));
                }
                if let Some(p) = &inputs.own_patch {
                    contributions.push((Decider::EndpointPatch, layers::patch_value(p)));
                }
            }
        }
        Ok(Explanation {
            leaves: layers::explain(&doc, &contributions),
            effective: effective.map(|(c, _)| c),
        })
    }
}
