//! Layer rollouts (issue 20): a new version of one layer rolled out through the
//! same gated steps as a new default ([`crate::rollout::LayerRollout`]).
//!
//! - **Who gets it**: an endpoint following the default (its own configuration,
//!   if any, is a merge patch) whose cohort bucket is below the current step's
//!   share gets the new version of the layer in place of the stored one (or in
//!   addition, for a new layer); the others keep the layer as stored. Completing
//!   the rollout writes the new version as the layer (same transaction);
//!   reverting it leaves the stored layer, so every endpoint is back on it.
//! - **Who counts**: the known endpoints following the default in the step's
//!   cohort whose effective configuration the new version changes (so only the
//!   layer's own endpoints, new or previous target: a group's members, or every
//!   endpoint; an endpoint where a higher-priority layer hides the change does
//!   not count). Each is counted on its **own expected config ID** (the layers
//!   composed with the new version, over its base, under its own patch): the
//!   statuses of that ID since the rollout began. Membership is read on every
//!   count: an endpoint added to the layer's group during the rollout is served
//!   and announced like any membership change (the new version inside the
//!   cohort) and counts from then on; one removed stops counting.
//! - **Who is announced**: at each change of the served share (a step begins,
//!   completion, revert), the endpoints of the buckets that switch whose
//!   effective configuration changes, each its own (on PostgreSQL through the
//!   durable outbox, in the rollout's transaction).
//! - While a layer rollout is active, a PUT or DELETE of that layer is 409; the
//!   default, other layers and memberships can still be written (a default
//!   rollout of the same configuration may run beside it).

use std::collections::HashMap;

use kaa_ism::UnixMillis;

use super::{Ecr, EcrError, RolloutSpec};
use crate::layers::{self, EffectiveInputs, GroupName, Layer, RollingLayer};
use crate::model::{AppVersionName, ConfigName, Content, EndpointId, StatusEvent, StoredConfig};
use crate::rollout::{self, LayerRollout, Rollout, StepCounts};
use crate::store::StoreError;

/// The new version of a layer, as a layer rollout's creation gives it.
#[derive(Debug, Clone)]
pub struct LayerVersion {
    /// The layer's name.
    pub layer_name: GroupName,
    /// Its priority.
    pub priority: i64,
    /// Its target group (`None`: every endpoint).
    pub group: Option<GroupName>,
}

/// One endpoint of a layer rollout's candidates: its effective configuration
/// with the layer rollout serving the first and the second share given to
/// [`Ecr::compose_layer_rollout`] (before and after a transition, or nobody and
/// everybody).
struct Composed {
    endpoint_id: EndpointId,
    at_first: Option<StoredConfig>,
    at_second: Option<StoredConfig>,
}

/// The effective configuration from `inputs` with layer rollout `r` serving the
/// buckets below `bp` (its other rolling layers as `inputs` has them).
fn compose_at(
    name: &ConfigName,
    endpoint_id: &str,
    inputs: &EffectiveInputs,
    layers: &[Layer],
    r: &Rollout,
    bp: u32,
) -> Option<StoredConfig> {
    let mut inputs = inputs.clone();
    if let Some(rolling) = RollingLayer::at(r, bp) {
        inputs
            .rolling
            .retain(|l| l.layer_name != rolling.layer.layer_name);
        if rolling.serves(endpoint_id) {
            inputs.rolling.push(rolling.layer);
        }
    }
    layers::compose(name, &inputs, layers).map(|(c, _)| c)
}

impl Ecr {
    /// Begins a rollout of a new version of layer `version.layer_name` of (`app`,
    /// `name`): `spec.config` is its merge patch (an object), rolled out in
    /// `spec`'s steps, gate and abort criteria like a default's. Refused with 409
    /// when a rollout of that layer is active or the layer is this version
    /// already, 404 when the group does not exist.
    pub async fn create_layer_rollout(
        &self,
        app: &AppVersionName,
        name: &ConfigName,
        version: &LayerVersion,
        spec: &RolloutSpec,
        now: UnixMillis,
    ) -> Result<Rollout, EcrError> {
        self.apps.check(app)?;
        if !spec.config.is_object() {
            return Err(EcrError::BadRequest(
                "a layer's patch is a JSON Merge Patch object".into(),
            ));
        }
        let content = Content::from_value(&spec.config);
        let mut r = rollout::new_rollout(
            uuid::Uuid::new_v4().to_string(),
            app.as_str(),
            name.as_str(),
            &content,
            &spec.steps,
            spec.gate.clone(),
            spec.abort.clone(),
            spec.on_abort,
            now.0,
        )
        .map_err(|e| EcrError::BadRequest(e.0))?;
        r.layer = Some(LayerRollout {
            layer_name: version.layer_name.to_string(),
            priority: version.priority,
            group: version.group.as_ref().map(ToString::to_string),
            patch: spec.config.clone(),
            previous_group: None,
        });
        let changes = self.layer_rollout_changes(None, &r).await?;
        let announce: Vec<EndpointId> = changes.iter().map(|c| c.endpoint_id.clone()).collect();
        let stored = self.store.create_rollout(&r, &announce).await?;
        tracing::info!(rollout_id = %stored.rollout_id, app_version = %app, name = %name, layer = %version.layer_name, endpoints = announce.len(), "layer rollout begun");
        self.record_layer_dispatches(None, &stored, &changes).await;
        self.emit_rollout(&stored, &announce).await?;
        Ok(stored)
    }

    /// The candidates of layer rollout `after` whose effective configuration the
    /// change `before` → `after` (`None`: the creation) switches, composed both ways.
    async fn layer_rollout_changes(
        &self,
        before: Option<&Rollout>,
        after: &Rollout,
    ) -> Result<Vec<Composed>, EcrError> {
        let range = rollout::announced_buckets(before, after);
        if range.is_empty() {
            return Ok(Vec::new());
        }
        let (b, a) = (
            before.map_or(0, Rollout::new_config_bp),
            after.new_config_bp(),
        );
        let app = AppVersionName::new(after.app_version.as_str())?;
        let name = ConfigName::new(after.name.as_str())?;
        let endpoints: Vec<EndpointId> = self
            .store
            .endpoints_following_default(&app, &name)
            .await?
            .into_iter()
            .filter(|e| range.contains(&rollout::cohort_bucket(&after.rollout_id, e.as_str())))
            .collect();
        let mut out = self
            .compose_layer_rollout(&app, &name, after, &endpoints, b, a)
            .await?;
        out.retain(|c| {
            c.at_first.as_ref().map(|c| &c.config_id) != c.at_second.as_ref().map(|c| &c.config_id)
        });
        Ok(out)
    }

    /// `endpoints` composed with layer rollout `r` serving the buckets below
    /// `first_bp` and below `second_bp` (read in batches).
    async fn compose_layer_rollout(
        &self,
        app: &AppVersionName,
        name: &ConfigName,
        r: &Rollout,
        endpoints: &[EndpointId],
        first_bp: u32,
        second_bp: u32,
    ) -> Result<Vec<Composed>, EcrError> {
        if endpoints.is_empty() {
            return Ok(Vec::new());
        }
        let (inputs, stored) = tokio::join!(
            self.inputs_of(app, name, endpoints),
            self.store.layers(app, Some(name))
        );
        let (inputs, stored) = (inputs?, stored?);
        Ok(endpoints
            .iter()
            .zip(inputs)
            .map(|(e, i)| Composed {
                endpoint_id: e.clone(),
                at_first: compose_at(name, e.as_str(), &i, &stored, r, first_bp),
                at_second: compose_at(name, e.as_str(), &i, &stored, r, second_bp),
            })
            .collect())
    }

    /// The counts of the current step of layer rollout `r` at `now` (see the
    /// module docs): the cohort's endpoints whose effective configuration the new
    /// version changes, each on its own expected config ID.
    pub(super) async fn layer_rollout_counts(
        &self,
        r: &Rollout,
        now: UnixMillis,
    ) -> Result<StepCounts, EcrError> {
        let app = AppVersionName::new(r.app_version.as_str())?;
        let name = ConfigName::new(r.name.as_str())?;
        let bp = rollout::basis_points(r.steps[r.step].percent);
        let cohort: Vec<EndpointId> = self
            .store
            .endpoints_following_default(&app, &name)
            .await?
            .into_iter()
            .filter(|e| rollout::cohort_bucket(&r.rollout_id, e.as_str()) < bp)
            .collect();
        // Everyone in the cohort with the previous version (bp 0) and the new one.
        let composed = self
            .compose_layer_rollout(&app, &name, r, &cohort, 0, rollout::COHORT_BUCKETS)
            .await?;
        let mut expected: HashMap<String, String> = HashMap::new();
        for c in &composed {
            let new = c.at_second.as_ref().map(|c| &c.config_id);
            if c.at_first.as_ref().map(|c| &c.config_id) != new
                && let Some(id) = new
            {
                expected.insert(c.endpoint_id.to_string(), id.clone());
            }
        }
        let mut ids: Vec<&String> = expected.values().collect();
        ids.sort();
        ids.dedup();
        let mut reports: HashMap<(String, String), rollout::Report> = HashMap::new();
        for id in ids {
            for (e, report) in self
                .store
                .rollout_reports(&app, &name, id, UnixMillis(r.created_ms))
                .await?
            {
                reports.insert((e, id.clone()), report);
            }
        }
        let counted: Vec<&str> = composed
            .iter()
            .map(|c| c.endpoint_id.as_str())
            .filter(|e| expected.contains_key(*e))
            .collect();
        Ok(rollout::count(
            &r.rollout_id,
            bp,
            counted,
            |e| {
                let id = expected.get(e)?;
                reports.get(&(e.to_owned(), id.clone())).copied()
            },
            r.abort.report_timeout_seconds,
            now.0,
        ))
    }

    /// Commits the change `before` → `after` of a layer rollout with its
    /// announcements (see [`Ecr::commit_rollout`]).
    pub(super) async fn commit_layer_rollout(
        &self,
        before: &Rollout,
        after: &Rollout,
    ) -> Result<(), EcrError> {
        let changes = self.layer_rollout_changes(Some(before), after).await?;
        let announce: Vec<EndpointId> = changes.iter().map(|c| c.endpoint_id.clone()).collect();
        self.store.update_rollout(after, &announce).await?;
        self.record_layer_dispatches(Some(before), after, &changes)
            .await;
        self.emit_rollout(after, &announce).await
    }

    /// As [`Ecr::record_rollout_dispatches`], each endpoint on its own new config ID.
    async fn record_layer_dispatches(
        &self,
        before: Option<&Rollout>,
        after: &Rollout,
        changes: &[Composed],
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
        for c in changes
            .iter()
            .filter(|c| self.is_online(c.endpoint_id.as_str()))
        {
            let Some(config) = &c.at_second else {
                continue;
            };
            if let Err(e) = self
                .record_status(
                    &c.endpoint_id,
                    &app,
                    &name,
                    &config.config_id,
                    &StatusEvent::Dispatched,
                    UnixMillis(after.updated_ms),
                )
                .await
            {
                tracing::warn!(rollout_id = %after.rollout_id, error = %e, "could not record a layer rollout step's dispatches");
                return;
            }
        }
    }

    /// The active rollout of layer `layer_name` of (`app`, `name`), if any.
    pub(super) async fn layer_rollout_of(
        &self,
        app: &AppVersionName,
        name: &ConfigName,
        layer_name: &str,
    ) -> Result<Option<Rollout>, StoreError> {
        Ok(self.store.active_rollouts().await?.into_iter().find(|r| {
            r.app_version == app.as_str()
                && r.name == name.as_str()
                && r.layer.as_ref().is_some_and(|l| l.layer_name == layer_name)
        }))
    }

    /// Whether a layer rollout of (`app`, `name`) is active.
    pub(super) async fn any_layer_rollout(
        &self,
        app: &AppVersionName,
        name: &ConfigName,
    ) -> Result<bool, StoreError> {
        Ok(self
            .store
            .active_rollouts()
            .await?
            .iter()
            .any(|r| r.layer.is_some() && r.app_version == app.as_str() && r.name == name.as_str()))
    }
}
