//! An endpoint's own configuration stored as a merge patch is checked against the
//! app version's JSON Schema as the document it composes into; a default write
//! committed between that check and the patch's write (another request, another
//! replica) must not leave a patch the schema refuses stored: ECR checks the
//! document again after its write and undoes it (400). The interleaving is made
//! deterministic by a store that commits the default write just before the patch.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use kaa_examples::ecr::core::{AppVersions, Ecr, EcrError};
use kaa_examples::ecr::layers::EffectiveInputs;
use kaa_examples::ecr::model::{
    AppVersionName, ConfigName, Content, EndpointId, Page, Scope, Source, StatusQuery,
    StatusRecord, StoredConfig, now,
};
use kaa_examples::ecr::rollout::Rollout;
use kaa_examples::ecr::store::{
    self, BatchTarget, ConfigStore, EffectiveKey, Precondition, PutOutcome, StatusWrite, StoreError,
};
use kaa_ism::UnixMillis;
use serde_json::json;

/// Forwards everything to `inner`; `put_patch` first commits `before_patch` (a
/// default write), when set.
struct DefaultWriteBeforePatch {
    inner: Arc<dyn ConfigStore>,
    before_patch: Mutex<Option<(Scope, ConfigName, Content)>>,
}

#[async_trait]
impl ConfigStore for DefaultWriteBeforePatch {
    async fn put(
        &self,
        scope: &Scope,
        name: &ConfigName,
        content: &Content,
        precondition: &Precondition,
        now: UnixMillis,
    ) -> Result<PutOutcome, StoreError> {
        self.inner
            .put(scope, name, content, precondition, now)
            .await
    }
    async fn get(
        &self,
        scope: &Scope,
        name: &ConfigName,
    ) -> Result<Option<StoredConfig>, StoreError> {
        self.inner.get(scope, name).await
    }
    async fn list(&self, scope: &Scope) -> Result<Vec<StoredConfig>, StoreError> {
        self.inner.list(scope).await
    }
    async fn delete(
        &self,
        scope: &Scope,
        name: &ConfigName,
        precondition: &Precondition,
    ) -> Result<Option<StoredConfig>, StoreError> {
        self.inner.delete(scope, name, precondition).await
    }
    async fn put_batch(
        &self,
        targets: &[BatchTarget],
        name: &ConfigName,
        content: &Content,
        now: UnixMillis,
    ) -> Result<Vec<PutOutcome>, StoreError> {
        self.inner.put_batch(targets, name, content, now).await
    }
    async fn effective(
        &self,
        endpoint_id: &EndpointId,
        app_version: &AppVersionName,
        name: &ConfigName,
    ) -> Result<Option<(StoredConfig, Source)>, StoreError> {
        self.inner.effective(endpoint_id, app_version, name).await
    }
    async fn effective_many(
        &self,
        keys: &[EffectiveKey],
    ) -> Result<Vec<Option<(StoredConfig, Source)>>, StoreError> {
        self.inner.effective_many(keys).await
    }
    async fn effective_inputs(
        &self,
        keys: &[EffectiveKey],
    ) -> Result<Vec<EffectiveInputs>, StoreError> {
        self.inner.effective_inputs(keys).await
    }
    async fn delete_endpoint(&self, endpoint_id: &EndpointId) -> Result<u64, StoreError> {
        self.inner.delete_endpoint(endpoint_id).await
    }
    async fn remember_endpoint(
        &self,
        endpoint_id: &EndpointId,
        app_version: &AppVersionName,
    ) -> Result<bool, StoreError> {
        self.inner.remember_endpoint(endpoint_id, app_version).await
    }
    async fn forget_endpoint(
        &self,
        endpoint_id: &EndpointId,
        app_version: &AppVersionName,
    ) -> Result<(), StoreError> {
        self.inner.forget_endpoint(endpoint_id, app_version).await
    }
    async fn endpoints_following_default(
        &self,
        app_version: &AppVersionName,
        name: &ConfigName,
    ) -> Result<Vec<EndpointId>, StoreError> {
        self.inner
            .endpoints_following_default(app_version, name)
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
        let before = self.before_patch.lock().unwrap().take();
        if let Some((s, n, c)) = before {
            self.inner.put(&s, &n, &c, &Precondition::None, now).await?;
        }
        self.inner
            .put_patch(scope, name, content, precondition, now)
            .await
    }
    async fn delete_own(
        &self,
        scope: &Scope,
        name: &ConfigName,
        precondition: &Precondition,
    ) -> Result<Option<(StoredConfig, bool)>, StoreError> {
        self.inner.delete_own(scope, name, precondition).await
    }
    async fn own_patch_names(
        &self,
        endpoint_id: &EndpointId,
        app_version: &AppVersionName,
    ) -> Result<std::collections::BTreeSet<String>, StoreError> {
        self.inner.own_patch_names(endpoint_id, app_version).await
    }
    async fn endpoints_with_own_patch(
        &self,
        app_version: &AppVersionName,
        name: &ConfigName,
    ) -> Result<Vec<EndpointId>, StoreError> {
        self.inner.endpoints_with_own_patch(app_version, name).await
    }
    async fn layers(
        &self,
        app_version: &AppVersionName,
        name: Option<&ConfigName>,
    ) -> Result<Vec<kaa_examples::ecr::layers::Layer>, StoreError> {
        self.inner.layers(app_version, name).await
    }
    async fn active_rollouts(&self) -> Result<Vec<Rollout>, StoreError> {
        self.inner.active_rollouts().await
    }
    async fn record_statuses(&self, writes: &[StatusWrite]) -> Result<(), StoreError> {
        self.inner.record_statuses(writes).await
    }
    async fn statuses(&self, query: &StatusQuery) -> Result<Page<StatusRecord>, StoreError> {
        self.inner.statuses(query).await
    }
}

#[tokio::test]
async fn a_patch_the_schema_refuses_after_a_concurrent_default_write_is_undone() {
    let db = kaa_testkit::ecr::SqliteTestDb::create();
    let store = Arc::new(DefaultWriteBeforePatch {
        inner: store::open(&db.url).await.unwrap(),
        before_patch: Mutex::new(None),
    });
    let mut apps = AppVersions::open();
    // `eco` and `turbo` never both.
    apps.add_schema(
        "kettle",
        &json!({"type": "object", "not": {"required": ["eco", "turbo"]}}),
    )
    .unwrap();
    let (tx, mut changes) = tokio::sync::mpsc::unbounded_channel();
    let ecr = Ecr::new(Arc::clone(&store) as Arc<dyn ConfigStore>, apps, Some(tx));
    let app = AppVersionName::new("kettle").unwrap();
    let name = ConfigName::default_name();
    let default = Scope::Default {
        app_version: app.clone(),
    };
    let e = EndpointId::new("e1").unwrap();
    let own = Scope::Endpoint {
        endpoint_id: e.clone(),
        app_version: app.clone(),
    };
    ecr.put(
        &default,
        &name,
        &json!({"sampling": 1}),
        &Precondition::None,
        now(),
    )
    .await
    .unwrap();
    // Without a concurrent write the patch is stored.
    ecr.put_patch(
        &own,
        &name,
        &json!({"eco": true}),
        &Precondition::None,
        now(),
    )
    .await
    .unwrap();
    // A second patch, checked against {"sampling": 1}; the default gains `turbo`
    // just before it is written: {"sampling": 1, "turbo": true, "eco": 1} is refused.
    *store.before_patch.lock().unwrap() = Some((
        default.clone(),
        name.clone(),
        Content::from_value(&json!({"sampling": 1, "turbo": true})),
    ));
    while changes.try_recv().is_ok() {}
    let err = ecr
        .put_patch(&own, &name, &json!({"eco": 1}), &Precondition::None, now())
        .await
        .unwrap_err();
    assert!(matches!(err, EcrError::SchemaViolation { .. }), "{err:?}");
    // The previous patch is back, and the endpoint was announced what it has.
    let (stored, patch) = {
        let names = store.own_patch_names(&e, &app).await.unwrap();
        (store.get(&own, &name).await.unwrap().unwrap(), names)
    };
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&stored.content).unwrap(),
        json!({"eco": true})
    );
    assert!(patch.contains("default"));
    let (effective, _) = ecr.effective(&e, &app, &name).await.unwrap().unwrap();
    let mut last = None;
    while let Ok(c) = changes.try_recv() {
        if c.endpoint_id == e {
            last = c.config.map(|c| c.config_id);
        }
    }
    assert_eq!(last, Some(effective.config_id));
    // With no previous own configuration, the refused patch is deleted.
    let e2 = EndpointId::new("e2").unwrap();
    let own2 = Scope::Endpoint {
        endpoint_id: e2.clone(),
        app_version: app.clone(),
    };
    *store.before_patch.lock().unwrap() = Some((
        default.clone(),
        name.clone(),
        Content::from_value(&json!({"sampling": 2, "turbo": true})),
    ));
    ecr.put(
        &default,
        &name,
        &json!({"sampling": 2}),
        &Precondition::None,
        now(),
    )
    .await
    .unwrap();
    let err = ecr
        .put_patch(&own2, &name, &json!({"eco": 1}), &Precondition::None, now())
        .await
        .unwrap_err();
    assert!(matches!(err, EcrError::SchemaViolation { .. }), "{err:?}");
    assert_eq!(store.get(&own2, &name).await.unwrap(), None);
}
