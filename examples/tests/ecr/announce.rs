//! Announcing committed writes, with a store that scripts its default reads:
//!
//! - a committed write is announced even when the store reads that announcing it
//!   takes fail for a while (e.g. PostgreSQL restarting between the commit and them):
//!   ECR retries them (`Ecr::retry_announce`), for a single PUT and for a batch PUT
//!   alike. `fault_stack` shows the same against a real PostgreSQL restart; this is
//!   the deterministic version;
//! - a default read that predates a concurrent default change never suppresses an
//!   endpoint's event (the interleaving `Ecr::put` guards against by reading the
//!   default again after its commit).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use async_trait::async_trait;
use kaa_examples::ecr::core::{AppVersions, Ecr, EcrError, EffectiveChange};
use kaa_examples::ecr::model::{
    AppVersionName, ConfigName, Content, EndpointId, Page, Scope, Source, StatusQuery,
    StatusRecord, StoredConfig, now,
};
use kaa_examples::ecr::store::{
    self, BatchTarget, ConfigStore, EffectiveKey, Precondition, PutOutcome, StatusWrite, StoreError,
};
use kaa_ism::UnixMillis;
use serde_json::json;
use tokio::sync::mpsc::UnboundedReceiver;

/// A store whose next `failing` reads of a default configuration fail with a backend
/// error, and whose next default read answers `stale` instead when one is set;
/// everything else goes to the wrapped store.
struct FlakyDefaultReads {
    inner: Arc<dyn ConfigStore>,
    failing: AtomicUsize,
    failed: AtomicUsize,
    stale: std::sync::Mutex<Option<Option<StoredConfig>>>,
}

impl FlakyDefaultReads {
    fn fail_next(&self, n: usize) {
        self.failing.store(n, Ordering::SeqCst);
    }
}

#[async_trait]
impl ConfigStore for FlakyDefaultReads {
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
        if matches!(scope, Scope::Default { .. })
            && self
                .failing
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
        {
            self.failed.fetch_add(1, Ordering::SeqCst);
            return Err(StoreError::Backend("injected: connection reset".into()));
        }
        if matches!(scope, Scope::Default { .. })
            && let Some(stale) = self.stale.lock().unwrap().take()
        {
            return Ok(stale);
        }
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

    async fn record_statuses(&self, writes: &[StatusWrite]) -> Result<(), StoreError> {
        self.inner.record_statuses(writes).await
    }

    async fn statuses(&self, query: &StatusQuery) -> Result<Page<StatusRecord>, StoreError> {
        self.inner.statuses(query).await
    }
}

struct Harness {
    ecr: Ecr,
    store: Arc<FlakyDefaultReads>,
    changes: UnboundedReceiver<EffectiveChange>,
    _db: kaa_testkit::ecr::SqliteTestDb,
}

async fn harness() -> Harness {
    let db = kaa_testkit::ecr::SqliteTestDb::create();
    let store = Arc::new(FlakyDefaultReads {
        inner: store::open(&db.url).await.unwrap(),
        failing: AtomicUsize::new(0),
        failed: AtomicUsize::new(0),
        stale: std::sync::Mutex::new(None),
    });
    let (tx, changes) = tokio::sync::mpsc::unbounded_channel();
    let mut apps = AppVersions::open();
    apps.add_version("kettleV1");
    let ecr = Ecr::new(Arc::clone(&store) as Arc<dyn ConfigStore>, apps, Some(tx));
    Harness {
        ecr,
        store,
        changes,
        _db: db,
    }
}

fn endpoint_scope(id: &str) -> Scope {
    Scope::Endpoint {
        endpoint_id: EndpointId::new(id).unwrap(),
        app_version: AppVersionName::new("kettleV1").unwrap(),
    }
}

fn drain(changes: &mut UnboundedReceiver<EffectiveChange>) -> Vec<String> {
    let mut ids = Vec::new();
    while let Ok(change) = changes.try_recv() {
        assert!(change.config.is_some(), "{change:?}");
        ids.push(change.endpoint_id.as_str().to_owned());
    }
    ids.sort();
    ids
}

#[tokio::test]
async fn a_single_put_is_announced_after_its_default_reads_failed() {
    let mut h = harness().await;
    // The read beside the write fails (ECR then reads the default again after the
    // commit), and so do the first two reads after it.
    h.store.fail_next(3);
    let outcome = h
        .ecr
        .put(
            &endpoint_scope("kettle-1"),
            &ConfigName::default_name(),
            &json!({"sampling": 5}),
            &Precondition::None,
            now(),
        )
        .await
        .expect("committed and announced");
    assert!(outcome.changed);
    assert_eq!(h.store.failed.load(Ordering::SeqCst), 3);
    assert_eq!(drain(&mut h.changes), ["kettle-1"]);
}

#[tokio::test]
async fn a_batch_put_is_announced_after_its_default_reads_failed() {
    let mut h = harness().await;
    let endpoints = BTreeMap::from([(
        "kettleV1".to_owned(),
        vec!["kettle-1".to_owned(), "kettle-2".to_owned()],
    )]);
    h.store.fail_next(3);
    let outcome = h
        .ecr
        .put_batch(
            &endpoints,
            &ConfigName::default_name(),
            &json!({"sampling": 7}),
            now(),
        )
        .await
        .expect("committed and announced");
    assert_eq!(outcome.changed, 2);
    assert_eq!(h.store.failed.load(Ordering::SeqCst), 3);
    assert_eq!(drain(&mut h.changes), ["kettle-1", "kettle-2"]);
}

/// When the reads keep failing, ECR gives up after its retry window (10 s; the
/// clock is paused, so tokio skips the back-off sleeps) and reports the store error;
/// the write itself stays committed.
#[tokio::test(start_paused = true)]
async fn a_put_whose_default_reads_keep_failing_is_reported_and_stays_committed() {
    let mut h = harness().await;
    h.store.fail_next(usize::MAX);
    let started = tokio::time::Instant::now();
    let scope = endpoint_scope("kettle-3");
    let result = h
        .ecr
        .put(
            &scope,
            &ConfigName::default_name(),
            &json!({"sampling": 9}),
            &Precondition::None,
            now(),
        )
        .await;
    assert!(
        matches!(result, Err(EcrError::Store(StoreError::Backend(_)))),
        "{result:?}"
    );
    let waited = started.elapsed();
    assert!(
        waited >= std::time::Duration::from_secs(8) && waited <= std::time::Duration::from_secs(11),
        "gave up after {waited:?}"
    );
    assert!(h.store.failed.load(Ordering::SeqCst) > 3);
    assert!(drain(&mut h.changes).is_empty());
    h.store.fail_next(0);
    let stored = h
        .store
        .get(&scope, &ConfigName::default_name())
        .await
        .unwrap()
        .expect("the write stayed committed");
    assert_eq!(stored.content, r#"{"sampling":9}"#);
}

/// The interleaving: endpoint `kettle-1` follows the default X; the default changes to
/// Y and the fan-out sends Y to the endpoint; then the endpoint is given X as its own
/// configuration, with the default read beside that write answering X (it ran before
/// the default change committed). Judged by that read the endpoint's effective
/// configuration did not change (X before, X after), but its device holds Y: ECR must
/// read the default again after its commit and announce X.
#[tokio::test]
async fn a_default_read_that_predates_a_default_change_does_not_suppress_the_event() {
    let mut h = harness().await;
    let name = ConfigName::default_name();
    let app_version = AppVersionName::new("kettleV1").unwrap();
    let default_scope = Scope::Default {
        app_version: app_version.clone(),
    };
    let endpoint = EndpointId::new("kettle-1").unwrap();
    h.store
        .remember_endpoint(&endpoint, &app_version)
        .await
        .unwrap();
    let x = json!({"sampling": 1});
    h.ecr
        .put(&default_scope, &name, &x, &Precondition::None, now())
        .await
        .unwrap();
    let default_x = h.store.get(&default_scope, &name).await.unwrap();
    h.ecr
        .put(
            &default_scope,
            &name,
            &json!({"sampling": 2}),
            &Precondition::None,
            now(),
        )
        .await
        .unwrap();
    let fanned_out: Vec<_> = std::iter::from_fn(|| h.changes.try_recv().ok()).collect();
    let last = fanned_out
        .last()
        .expect("the default changes were fanned out");
    assert_eq!(last.endpoint_id, endpoint);
    assert_eq!(
        last.config.as_ref().map(|c| c.content.as_str()),
        Some(r#"{"sampling":2}"#)
    );

    *h.store.stale.lock().unwrap() = Some(default_x);
    h.ecr
        .put(
            &endpoint_scope("kettle-1"),
            &name,
            &x,
            &Precondition::None,
            now(),
        )
        .await
        .unwrap();
    assert!(
        h.store.stale.lock().unwrap().is_none(),
        "the stale read was used"
    );
    let change = h
        .changes
        .try_recv()
        .expect("the endpoint's change is announced");
    assert_eq!(change.endpoint_id, endpoint);
    assert_eq!(
        change.config.as_ref().map(|c| c.content.as_str()),
        Some(r#"{"sampling":1}"#)
    );
}
