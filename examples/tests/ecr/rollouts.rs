//! Staged rollouts (#19): the store rules on SQLite and PostgreSQL, the controller
//! with ECR on the in-memory bus playing the CMX (a healthy rollout completes through
//! its steps; one with rejections aborts at the first gate and reverts, with the
//! announcements checked), and the REST routes.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use bytes::Bytes;
use futures::StreamExt;
use kaa_bus::{Bus, MemoryBus};
use kaa_cdtp::{ConfigApplied, ConfigUpdated};
use kaa_examples::ecr::api::{self, Authenticator};
use kaa_examples::ecr::bus::{self, BusSettings, BusTasks};
use kaa_examples::ecr::core::{AppVersions, Ecr, RolloutSpec};
use kaa_examples::ecr::model::{Content, DeliveryStatus, Source, StatusEvent};
use kaa_examples::ecr::rollout::{
    self, AbortCriteria, Gate, OnAbort, Rollout, RolloutState, StepState, cohort_bucket,
};
use kaa_examples::ecr::store::{self, EffectiveKey, Precondition, StoreError};
use kaa_examples::service::Metrics;
use kaa_ism::UnixMillis;
use kaa_ism::avro::{Decode, Encode};
use kaa_testkit::ecr::{app, default_scope, ep, ep_scope, name};
use serde_json::{Value, json};
use tower::ServiceExt;

kaa_testkit::both_stores!(rollouts_in_the_store, status_counts_and_app_versions);

fn gate(percent: f64, min: u64, soak: u64) -> Gate {
    Gate {
        min_applied_percent: percent,
        min_applied: min,
        soak_seconds: soak,
    }
}

fn abort(percent: f64, sample: u64, timeout: u64) -> AbortCriteria {
    AbortCriteria {
        max_rejected_percent: percent,
        min_sample: sample,
        report_timeout_seconds: timeout,
    }
}

fn new(id: &str, a: &str, v: Value, steps: &[f64]) -> Rollout {
    rollout::new_rollout(
        id.into(),
        a,
        "default",
        &Content::from_value(&v),
        steps,
        gate(90.0, 1, 0),
        abort(10.0, 5, 60),
        OnAbort::Revert,
        1_000,
    )
    .unwrap()
}

fn endpoints(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("ep-{i}")).collect()
}

/// Creation, one active rollout per (app version, name), the default locked, the
/// answers by cohort (own configuration still wins), compare-and-set updates, the
/// completion writing the default, and all of it surviving a reopen.
async fn rollouts_in_the_store(url: &str) {
    let s = store::open(url).await.unwrap();
    let n = name("default");
    let old = s
        .put(
            &default_scope("v1"),
            &n,
            &Content::from_value(&json!({"v": 1})),
            &Precondition::None,
            UnixMillis(1),
        )
        .await
        .unwrap()
        .config;
    let ids = endpoints(200);
    for e in &ids {
        s.remember_endpoint(&ep(e), &app("v1")).await.unwrap();
    }
    // ep-0 has its own configuration: it wins over any rollout.
    s.put(
        &ep_scope("ep-0", "v1"),
        &n,
        &Content::from_value(&json!("own")),
        &Precondition::None,
        UnixMillis(1),
    )
    .await
    .unwrap();

    // The default itself is not a rollout.
    let same = new("r-same", "v1", json!({"v": 1}), &[50.0]);
    assert!(matches!(
        s.create_rollout(&same, &[]).await,
        Err(StoreError::Conflict(_))
    ));
    let r = new("r-1", "v1", json!({"v": 2}), &[10.0, 100.0]);
    let stored = s.create_rollout(&r, &[]).await.unwrap();
    assert_eq!(
        stored.previous_config_id.as_deref(),
        Some(old.config_id.as_str())
    );
    // One active rollout per (app version, name); another name is free.
    let second = new("r-2", "v1", json!({"v": 3}), &[10.0]);
    let err = s.create_rollout(&second, &[]).await.unwrap_err();
    assert!(
        matches!(&err, StoreError::Conflict(m) if m.contains("r-1")),
        "{err}"
    );
    // The default cannot be written or deleted meanwhile; endpoint configurations can.
    let err = s
        .put(
            &default_scope("v1"),
            &n,
            &Content::from_value(&json!({"v": 9})),
            &Precondition::None,
            UnixMillis(2),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err}");
    assert!(matches!(
        s.delete(&default_scope("v1"), &n, &Precondition::None)
            .await
            .unwrap_err(),
        StoreError::Conflict(_)
    ));
    s.put(
        &default_scope("v1"),
        &name("other"),
        &Content::from_value(&json!(1)),
        &Precondition::None,
        UnixMillis(2),
    )
    .await
    .unwrap();

    // Answers by cohort, one by one and in a batch.
    let in_cohort = |e: &str, bp: u32| cohort_bucket("r-1", e) < bp;
    let keys: Vec<EffectiveKey> = ids
        .iter()
        .map(|e| EffectiveKey {
            endpoint_id: ep(e),
            app_version: app("v1"),
            name: n.clone(),
        })
        .collect();
    let check = |bp: u32, expect_new_id: String| {
        let s = Arc::clone(&s);
        let (ids, keys) = (ids.clone(), keys.clone());
        let old_id = old.config_id.clone();
        let n = n.clone();
        async move {
            let many = s.effective_many(&keys).await.unwrap();
            for (e, batch) in ids.iter().zip(many) {
                let (one, source) = s.effective(&ep(e), &app("v1"), &n).await.unwrap().unwrap();
                assert_eq!(
                    batch.as_ref().map(|(c, _)| &c.config_id),
                    Some(&one.config_id)
                );
                if e == "ep-0" {
                    assert_eq!(
                        (one.content.as_str(), source),
                        ("\"own\"", Source::Endpoint)
                    );
                } else if in_cohort(e, bp) {
                    assert_eq!(one.config_id, expect_new_id, "{e}");
                    assert_eq!(one.content, r#"{"v":2}"#);
                } else {
                    assert_eq!(one.config_id, old_id, "{e}");
                }
            }
        }
    };
    check(1000, stored.config_id.clone()).await;
    let served = ids[1..].iter().filter(|e| in_cohort(e, 1000)).count();
    assert!(
        (5..=40).contains(&served),
        "{served} of 199 in a 10% cohort"
    );

    // Compare-and-set on the revision.
    let mut next = stored.clone();
    next.revision += 2;
    assert!(matches!(
        s.update_rollout(&next, &[]).await,
        Err(StoreError::RolloutChanged { current: 1 })
    ));
    let ev = rollout::Event::Decided(rollout::Decision::Advance);
    let advanced = rollout::transition(&stored, &ev, &Default::default(), 5_000)
        .unwrap()
        .unwrap();
    s.update_rollout(&advanced, &[]).await.unwrap();
    assert!(
        s.update_rollout(&advanced, &[]).await.is_err(),
        "applied twice"
    );
    check(10_000, stored.config_id.clone()).await;
    assert_eq!(s.active_rollouts().await.unwrap(), vec![advanced.clone()]);
    assert_eq!(s.rollout("r-1").await.unwrap(), Some(advanced.clone()));
    assert_eq!(s.rollout("nope").await.unwrap(), None);

    // Completion: the default is the new configuration, in the same transaction.
    let ev = rollout::Event::Decided(rollout::Decision::Complete);
    let done = rollout::transition(&advanced, &ev, &Default::default(), 9_000)
        .unwrap()
        .unwrap();
    assert_eq!(done.state, RolloutState::Completed);
    s.update_rollout(&done, &[]).await.unwrap();
    let default = s.get(&default_scope("v1"), &n).await.unwrap().unwrap();
    assert_eq!(default.config_id, done.config_id);
    assert!(s.active_rollouts().await.unwrap().is_empty());
    // The pair is free again: a new rollout, newest first in the list.
    let third = new("r-3", "v1", json!({"v": 3}), &[50.0]);
    let mut third = third;
    third.created_ms = 2_000;
    s.create_rollout(&third, &[]).await.unwrap();
    let listed: Vec<String> = s
        .rollouts(&app("v1"), None)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.rollout_id)
        .collect();
    assert_eq!(listed, ["r-3", "r-1"]);
    assert!(
        s.rollouts(&app("v1"), Some(&name("other")))
            .await
            .unwrap()
            .is_empty()
    );

    // Durable: everything is there after a reopen.
    drop(s);
    let s = store::open(url).await.unwrap();
    assert_eq!(s.rollout("r-1").await.unwrap(), Some(done));
    assert_eq!(s.active_rollouts().await.unwrap().len(), 1);
}

/// The latest status per endpoint, counted per config ID; the reports a rollout
/// counts; the app versions with their defaults.
async fn status_counts_and_app_versions(url: &str) {
    let s = store::open(url).await.unwrap();
    let n = name("default");
    let write = |e: &str, id: &str, event: StatusEvent, at: i64| {
        store::StatusWrite::new(&ep(e), &app("v1"), &n, id, &event, UnixMillis(at))
    };
    let ok = StatusEvent::Confirmed {
        status_code: 200,
        reason_phrase: None,
    };
    let bad = StatusEvent::Confirmed {
        status_code: 400,
        reason_phrase: Some("no".into()),
    };
    s.record_statuses(&[
        write("a", "old", ok.clone(), 1),
        write("a", "new", ok.clone(), 5),
        write("b", "old", ok.clone(), 1),
        write("b", "new", bad.clone(), 6),
        write("c", "old", ok.clone(), 1),
        write("d", "new", StatusEvent::Dispatched, 7),
        // e went to new and back to old: its latest is old.
        write("e", "new", ok.clone(), 2),
        write("e", "old", ok.clone(), 8),
        // f applied it and was sent it again (a CMX fetching on a reconnect): still
        // applied.
        write("f", "new", ok.clone(), 4),
        write("f", "new", StatusEvent::Dispatched, 9),
    ])
    .await
    .unwrap();
    let counts = s.status_counts(&app("v1"), &n).await.unwrap();
    let table: Vec<(String, u64, u64, u64)> = counts
        .into_iter()
        .map(|c| (c.config_id, c.applied, c.rejected, c.dispatched))
        .collect();
    assert_eq!(table, [("new".into(), 2, 1, 1), ("old".into(), 2, 0, 0)]);
    let mut reports = s
        .rollout_reports(&app("v1"), &n, "new", UnixMillis(3))
        .await
        .unwrap();
    reports.sort_by(|a, b| a.0.cmp(&b.0));
    let reports: Vec<(String, DeliveryStatus)> =
        reports.into_iter().map(|(e, r)| (e, r.status)).collect();
    assert_eq!(
        reports,
        [
            ("a".into(), DeliveryStatus::Applied),
            ("b".into(), DeliveryStatus::Rejected),
            ("d".into(), DeliveryStatus::Dispatched),
            ("f".into(), DeliveryStatus::Applied)
        ]
    );
    // An endpoint's status history says the same: sent again after it applied
    // it, in one batch (f) or in a later one (g), the configuration is still
    // applied (seen once as DISPATCHED in a system test: the device's report and a
    // second fetch's dispatch in the same millisecond).
    s.record_statuses(&[write("g", "new", ok.clone(), 4)])
        .await
        .unwrap();
    s.record_statuses(&[write("g", "new", StatusEvent::Dispatched, 9)])
        .await
        .unwrap();
    for e in ["f", "g"] {
        let page = s
            .statuses(&kaa_examples::ecr::model::StatusQuery {
                endpoint_id: ep(e),
                app_version: Some(app("v1")),
                config_id: Some("new".into()),
                page: 0,
                size: 10,
            })
            .await
            .unwrap();
        assert_eq!(page.content.len(), 1, "{e}: {page:?}");
        assert_eq!(
            page.content[0].status,
            DeliveryStatus::Applied,
            "{e}: {page:?}"
        );
        assert_eq!(page.content[0].last_dispatched, Some(UnixMillis(9)), "{e}");
    }

    s.put(
        &default_scope("v2"),
        &n,
        &Content::from_value(&json!(2)),
        &Precondition::None,
        UnixMillis(1),
    )
    .await
    .unwrap();
    s.remember_endpoint(&ep("x"), &app("v1")).await.unwrap();
    let versions = s.app_versions().await.unwrap();
    let names: Vec<&str> = versions.iter().map(|v| v.app_version.as_str()).collect();
    assert_eq!(names, ["v1", "v2"]);
    assert!(versions[0].defaults.is_empty());
    assert_eq!(versions[1].defaults.len(), 1);
    assert_eq!(versions[1].defaults[0].0, "default");
}

/// With several replicas on one PostgreSQL database exactly one drives the
/// rollouts, and another takes over when its connection goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_one_replica_leads_the_rollouts() {
    let Some(db) =
        kaa_testkit::ecr::PgTestDb::create("postgres_one_replica_leads_the_rollouts").await
    else {
        return;
    };
    let first = store::open(&db.url).await.unwrap();
    let second = store::open(&db.url).await.unwrap();
    assert!(first.lead_rollouts().await.unwrap());
    assert!(first.lead_rollouts().await.unwrap(), "it keeps leading");
    assert!(!second.lead_rollouts().await.unwrap());
    drop(first);
    let mut took_over = false;
    for _ in 0..50 {
        if second.lead_rollouts().await.unwrap() {
            took_over = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(took_over, "the second replica never took over");
}

// ------------------------------------------------------------ on the memory bus

struct BusHarness {
    ecr: Arc<Ecr>,
    bus: Arc<dyn Bus>,
    instance: String,
    cmx: String,
    _tasks: BusTasks,
    _db: Box<dyn std::any::Any + Send + Sync>,
}

async fn bus_harness() -> BusHarness {
    let db = kaa_testkit::ecr::SqliteTestDb::create();
    let url = db.url.clone();
    bus_harness_on(&url, Box::new(db)).await
}

/// [`bus_harness`] on a fresh PostgreSQL database (`None`: skipped, see
/// `PgTestDb::create`).
async fn pg_bus_harness(test: &str) -> Option<BusHarness> {
    let db = kaa_testkit::ecr::PgTestDb::create(test).await?;
    let url = db.url.clone();
    Some(bus_harness_on(&url, Box::new(db)).await)
}

/// ECR on the store at `url`; with a store that has them (PostgreSQL), durable
/// announcements on, as the ECR service runs it.
async fn bus_harness_on(url: &str, db: Box<dyn std::any::Any + Send + Sync>) -> BusHarness {
    let store = store::open(url).await.unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let durable = store.enable_durable_announcements();
    let ecr = Arc::new(Ecr::new(
        store,
        AppVersions::open(),
        (!durable).then_some(tx),
    ));
    let bus: Arc<dyn Bus> = Arc::new(MemoryBus::new());
    let id = uuid::Uuid::new_v4().simple().to_string();
    let instance = format!("ecr-{}", &id[..8]);
    let cmx = format!("cmx-{}", &id[..8]);
    let settings = BusSettings {
        instance: instance.clone(),
        replica_id: format!("{instance}-1"),
        cmx_instance: cmx.clone(),
        elce_limits: kaa_elce::DecodeLimits::default(),
        metrics: Metrics::new("ecr"),
    };
    let tasks = bus::start(Arc::clone(&ecr), Arc::clone(&bus), settings, rx)
        .await
        .unwrap();
    BusHarness {
        ecr,
        bus,
        instance,
        cmx,
        _tasks: tasks,
        _db: db,
    }
}

/// On PostgreSQL the announcements of a rollout go through the outbox, in the
/// rollout's transaction, and the announcer applies the cohort: the first step's
/// endpoints are announced the new configuration, the revert the previous one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_rollout_announcements_go_through_the_outbox() {
    let Some(h) =
        pg_bus_harness("rollouts::postgres_rollout_announcements_go_through_the_outbox").await
    else {
        return;
    };
    let (ids, old) = setup_fleet(&h, 200).await;
    let seen = play_cmx(&h, BTreeSet::new(), String::new()).await;
    // Whatever the default's own write left to announce is announced first.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    seen.lock().unwrap().clear();
    let t0 = kaa_examples::ecr::model::now();
    let r = begin_rollout(&h, &[20.0, 100.0], t0).await;
    let first = cohort(&ids, &r.rollout_id, 2_000);
    wait_announced(&seen, first.len()).await;
    let got = announced(&seen);
    assert_eq!(got.keys().cloned().collect::<BTreeSet<_>>(), first);
    assert!(
        got.values().all(|v| v == &vec![r.config_id.clone()]),
        "{got:?}"
    );
    seen.lock().unwrap().clear();
    let reverted = h
        .ecr
        .act_on_rollout(
            &r.rollout_id,
            rollout::Action::Abort,
            &Precondition::None,
            t0,
        )
        .await
        .unwrap();
    assert_eq!(reverted.state, RolloutState::Reverted);
    wait_announced(&seen, first.len()).await;
    let got = announced(&seen);
    assert_eq!(got.keys().cloned().collect::<BTreeSet<_>>(), first);
    assert!(got.values().all(|v| v == &vec![old.clone()]), "{got:?}");
}

async fn wait_announced(seen: &std::sync::Mutex<HashMap<String, Vec<String>>>, n: usize) {
    for _ in 0..300 {
        if seen.lock().unwrap().len() >= n {
            // And nothing more is coming.
            tokio::time::sleep(Duration::from_millis(300)).await;
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!(
        "only {} of {n} endpoints announced",
        seen.lock().unwrap().len()
    );
}

/// Plays the CMX and its devices: every `endpoint.config.updated` is "pushed" and
/// reported back as `endpoint.config.applied` (rejected, status 400, by the
/// endpoints `rejects` names, for any configuration but `good`). Returns what each
/// endpoint was announced, in order.
async fn play_cmx(
    h: &BusHarness,
    rejects: BTreeSet<String>,
    good: String,
) -> Arc<std::sync::Mutex<HashMap<String, Vec<String>>>> {
    play_cmx_with_silent(h, rejects, good, BTreeSet::new()).await
}

/// As [`play_cmx`], but the endpoints `silent` names never report anything (the
/// configuration was pushed, the device went quiet).
async fn play_cmx_with_silent(
    h: &BusHarness,
    rejects: BTreeSet<String>,
    good: String,
    silent: BTreeSet<String>,
) -> Arc<std::sync::Mutex<HashMap<String, Vec<String>>>> {
    let seen: Arc<std::sync::Mutex<HashMap<String, Vec<String>>>> = Default::default();
    let (bus, instance, cmx, seen2) = (
        Arc::clone(&h.bus),
        h.instance.clone(),
        h.cmx.clone(),
        Arc::clone(&seen),
    );
    let ready = tokio::sync::oneshot::channel::<()>();
    let (ready_tx, ready_rx) = ready;
    tokio::spawn(async move {
        let mut sub = bus
            .subscribe(
                &format!("kaa.v1.events.{instance}.endpoint.config.updated"),
                None,
            )
            .await
            .unwrap();
        let _ = ready_tx.send(());
        while let Some(m) = sub.next().await {
            let u = ConfigUpdated::decode(&m.payload).unwrap().into_owned();
            let endpoint = u.endpoint_id.to_string();
            seen2
                .lock()
                .unwrap()
                .entry(endpoint.clone())
                .or_default()
                .push(u.config_id.to_string());
            if silent.contains(&endpoint) {
                continue;
            }
            let reject = rejects.contains(&endpoint) && u.config_id.as_ref() != good;
            let applied = ConfigApplied {
                correlation_id: "c".into(),
                timestamp: kaa_examples::ecr::model::now().0,
                timeout: 0,
                app_version_name: u.app_version_name.clone(),
                endpoint_id: u.endpoint_id.clone(),
                config_id: u.config_id.clone(),
                originator_replica_id: None,
                status_code: if reject { 400 } else { 200 },
                reason_phrase: reject.then(|| "bad configuration".into()),
                config_name: None,
            };
            bus.publish(
                &format!("kaa.v1.events.{cmx}.endpoint.config.applied"),
                Bytes::from(applied.to_vec()),
            )
            .await
            .unwrap();
        }
    });
    // Subscribed before the test goes on.
    let _ = ready_rx.await;
    seen
}

async fn setup_fleet(h: &BusHarness, n: usize) -> (Vec<String>, String) {
    let old = h
        .ecr
        .put(
            &default_scope("kettle"),
            &name("default"),
            &json!({"sampling": 1}),
            &Precondition::None,
            kaa_examples::ecr::model::now(),
        )
        .await
        .unwrap()
        .config
        .config_id;
    let ids = endpoints(n);
    for e in &ids {
        h.ecr.learn_endpoint(&ep(e), &app("kettle")).await.unwrap();
    }
    (ids, old)
}

fn spec(steps: &[f64], on_abort: OnAbort) -> RolloutSpec {
    RolloutSpec {
        config: json!({"sampling": 2}),
        steps: steps.to_vec(),
        gate: gate(90.0, 1, 10),
        abort: abort(10.0, 5, 60),
        on_abort,
    }
}

/// Begins a rollout of [`spec`] (reverting on abort) in `steps` over the default
/// of `kettle`, at `at`.
async fn begin_rollout(h: &BusHarness, steps: &[f64], at: UnixMillis) -> Rollout {
    h.ecr
        .create_rollout(
            &app("kettle"),
            &name("default"),
            &spec(steps, OnAbort::Revert),
            at,
        )
        .await
        .unwrap()
}

/// Those of `ids` in the cohort of rollout `rollout_id` up to bucket `bp` (basis
/// points: 2 000 is the first 20 %).
fn cohort(ids: &[String], rollout_id: &str, bp: u32) -> BTreeSet<String> {
    ids.iter()
        .filter(|e| cohort_bucket(rollout_id, e) < bp)
        .cloned()
        .collect()
}

/// Once every endpoint of the current step's cohort reported, drives the
/// controller at `at` and returns the rollout as it is then.
async fn drive_settled(h: &BusHarness, id: &str, at: UnixMillis) -> Rollout {
    for _ in 0..250 {
        h.ecr.flush_statuses().await;
        let (_, counts) = h.ecr.rollout(id, at).await.unwrap();
        match counts {
            Some(c) if c.delivered < c.targeted => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            _ => break,
        }
    }
    h.ecr.drive_rollouts(at).await.unwrap();
    h.ecr.rollout(id, at).await.unwrap().0
}

fn announced(
    seen: &std::sync::Mutex<HashMap<String, Vec<String>>>,
) -> HashMap<String, Vec<String>> {
    seen.lock().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_rollout_completes_through_its_steps() {
    let h = bus_harness().await;
    let (ids, _old) = setup_fleet(&h, 300).await;
    let seen = play_cmx(&h, BTreeSet::new(), String::new()).await;
    let t0 = kaa_examples::ecr::model::now();
    let r = begin_rollout(&h, &[5.0, 25.0, 100.0], t0).await;
    let new_id = r.config_id.clone();
    let metrics = Metrics::new("ecr");
    h.ecr.rollout_gauges().register(&metrics);
    let mut expected_steps = Vec::new();
    for (i, bp) in [500u32, 2_500, 10_000].into_iter().enumerate() {
        // The step's cohort, and nobody else, was announced the new configuration.
        let want = cohort(&ids, &r.rollout_id, bp);
        let mut got = BTreeSet::new();
        for _ in 0..200 {
            got = announced(&seen)
                .into_iter()
                .filter(|(_, ids)| ids.contains(&new_id))
                .map(|(e, _)| e)
                .collect();
            if got == want {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(got, want, "step {i}");
        // Within the soak time nothing moves, however good the reports.
        let soaking = t0.0 + (i as i64) * 10_000 + 5_000;
        let r = drive_settled(&h, &r.rollout_id, UnixMillis(soaking)).await;
        assert_eq!((r.state, r.step), (RolloutState::Running, i), "soaking");
        // After it, the gate passes.
        let after = UnixMillis(t0.0 + (i as i64 + 1) * 10_000 + 1);
        let r = drive_settled(&h, &r.rollout_id, after).await;
        assert_eq!(r.steps[i].state, StepState::Passed);
        assert_eq!(r.steps[i].counts.applied as usize, want.len(), "step {i}");
        if i == 0 {
            // The gauges of the pass that decided it.
            let text = metrics.render();
            let line = |g: &str| {
                text.lines()
                    .find(|l| {
                        l.starts_with(&format!("ecr_rollout_{g}{{")) && l.contains(&r.rollout_id)
                    })
                    .unwrap_or_else(|| panic!("no {g} gauge in {text}"))
                    .rsplit(' ')
                    .next()
                    .unwrap()
                    .to_owned()
            };
            assert_eq!(line("applied"), want.len().to_string());
            assert_eq!(line("targeted"), want.len().to_string());
            assert_eq!(line("rejected"), "0");
            assert_eq!(line("step"), "0");
        }
        expected_steps.push(want.len());
    }
    let (done, _) = h.ecr.rollout(&r.rollout_id, t0).await.unwrap();
    assert_eq!(done.state, RolloutState::Completed);
    // The default is the new configuration; every endpoint was announced it once.
    let default = h
        .ecr
        .get(&default_scope("kettle"), &name("default"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(default.config_id, new_id);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let all = announced(&seen);
    assert_eq!(all.len(), ids.len());
    for (e, got) in &all {
        assert_eq!(got, &vec![new_id.clone()], "{e}");
    }
    assert!(expected_steps[0] < expected_steps[1] && expected_steps[2] == ids.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_with_rejections_aborts_at_the_first_gate_and_reverts() {
    let h = bus_harness().await;
    let (ids, old) = setup_fleet(&h, 400).await;
    let t0 = kaa_examples::ecr::model::now();
    // The rollout ID decides the cohorts; a third of the fleet rejects.
    let rejects: BTreeSet<String> = ids.iter().step_by(3).cloned().collect();
    let seen = play_cmx(&h, rejects.clone(), old.clone()).await;
    let r = begin_rollout(&h, &[10.0, 50.0, 100.0], t0).await;
    let first = cohort(&ids, &r.rollout_id, 1_000);
    assert!(first.iter().any(|e| rejects.contains(e)));
    // Aborts as soon as the sample is there, soak time or not.
    let r = drive_settled(&h, &r.rollout_id, UnixMillis(t0.0 + 1_000)).await;
    assert_eq!(r.state, RolloutState::Reverted, "{:?}", r.reason);
    assert_eq!(r.step, 0);
    assert_eq!(r.steps[0].state, StepState::Failed);
    assert!(r.steps[0].counts.rejected > 0);
    assert!(r.reason.as_deref().unwrap().contains("rejected"));
    // Only the first cohort ever had the new configuration, and it was announced the
    // previous one after it; nobody else heard anything.
    let mut all = HashMap::new();
    for _ in 0..200 {
        all = announced(&seen);
        if all.values().all(|v| v.len() == 2) && all.len() == first.len() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(all.keys().cloned().collect::<BTreeSet<_>>(), first);
    for (e, got) in &all {
        assert_eq!(got, &vec![r.config_id.clone(), old.clone()], "{e}");
    }
    // Everyone is answered the previous configuration, and the default is unchanged.
    for e in &ids {
        let (c, _) = h
            .ecr
            .effective(&ep(e), &app("kettle"), &name("default"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(c.config_id, old, "{e}");
    }
    // A stopped rollout stays stopped; the default can be written again.
    let later = drive_settled(&h, &r.rollout_id, UnixMillis(t0.0 + 1_000_000)).await;
    assert_eq!(later, r);
    h.ecr
        .put(
            &default_scope("kettle"),
            &name("default"),
            &json!({"sampling": 3}),
            &Precondition::None,
            kaa_examples::ecr::model::now(),
        )
        .await
        .unwrap();
}

/// Publishes a 9/ELCE connectivity event (as a KPC would) for `endpoints` of
/// app version `kettle`: `connected`, or `disconnected`.
async fn connectivity(h: &BusHarness, endpoints: &[String], connected: bool) {
    let list: Vec<_> = endpoints
        .iter()
        .map(|e| (e.clone().into(), "kettle".into()))
        .collect();
    let (subject, datum) = if connected {
        let e = kaa_elce::ConnectedEvent {
            correlation_id: "c".into(),
            timestamp: kaa_examples::ecr::model::now().0,
            timeout: 0,
            endpoints: list,
            originator_replica_id: "kpc-1".into(),
        };
        (
            <kaa_elce::ConnectedEvent as kaa_elce::EndpointEvent>::subject("kpc")
                .unwrap()
                .to_string(),
            e.to_vec(),
        )
    } else {
        let e = kaa_elce::DisconnectedEvent {
            correlation_id: "c".into(),
            timestamp: kaa_examples::ecr::model::now().0,
            timeout: 0,
            endpoints: list,
            originator_replica_id: "kpc-1".into(),
        };
        (
            <kaa_elce::DisconnectedEvent as kaa_elce::EndpointEvent>::subject("kpc")
                .unwrap()
                .to_string(),
            e.to_vec(),
        )
    };
    h.bus.publish(&subject, Bytes::from(datum)).await.unwrap();
}

/// Devices that get a step's push (the announcement, over their connection) and
/// then never report count as timed out once the report timeout is over, and the
/// rollout aborts on them; an endpoint that was offline when its step began is
/// not counted at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_endpoints_after_a_push_time_out_and_abort_the_rollout() {
    let h = bus_harness().await;
    let (ids, old) = setup_fleet(&h, 400).await;
    // Every endpoint connects (KPC's broadcast); every fifth of them then goes
    // away again, and a quarter of the fleet stays silent whatever it is pushed.
    connectivity(&h, &ids, true).await;
    let gone: Vec<String> = ids.iter().step_by(5).cloned().collect();
    connectivity(&h, &gone, false).await;
    for _ in 0..250 {
        if h.ecr.online_count() == ids.len() - gone.len() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(h.ecr.online_count(), ids.len() - gone.len());
    assert!(!h.ecr.is_online(&gone[0]) && h.ecr.is_online(&ids[1]));
    let silent: BTreeSet<String> = ids.iter().skip(1).step_by(4).cloned().collect();
    // The CMX pushes nothing to the offline ones: they report nothing either.
    let quiet_ones = silent.iter().chain(&gone).cloned().collect();
    let seen = play_cmx_with_silent(&h, BTreeSet::new(), old.clone(), quiet_ones).await;
    let t0 = kaa_examples::ecr::model::now();
    let r = begin_rollout(&h, &[20.0, 100.0], t0).await;
    let first = cohort(&ids, &r.rollout_id, 2_000);
    let gone: BTreeSet<String> = gone.into_iter().collect();
    let reached: BTreeSet<String> = first.difference(&gone).cloned().collect();
    let quiet = reached.intersection(&silent).count() as u64;
    assert!(
        quiet * 100 > 10 * reached.len() as u64,
        "{quiet} of {reached:?}"
    );
    // Every reached endpoint of the cohort is delivered from the push on: the
    // silent ones too, the offline ones not; the rest applied.
    wait_announced(&seen, first.len()).await;
    let mut counts = None;
    for _ in 0..250 {
        h.ecr.flush_statuses().await;
        let c = h.ecr.rollout(&r.rollout_id, t0).await.unwrap().1.unwrap();
        counts = Some(c);
        if c.applied == reached.len() as u64 - quiet {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let c = counts.unwrap();
    assert_eq!(c.targeted, first.len() as u64, "{c:?}");
    assert_eq!(c.delivered, reached.len() as u64, "{c:?}");
    assert_eq!(c.applied, reached.len() as u64 - quiet, "{c:?}");
    assert_eq!((c.rejected, c.timed_out), (0, 0), "{c:?}");
    // Within the report timeout (60 s) the silent ones are not failures yet; the
    // soak time (10 s) is not over either: nothing moves.
    let r1 = drive_settled(&h, &r.rollout_id, UnixMillis(t0.0 + 5_000)).await;
    assert_eq!((r1.state, r1.step), (RolloutState::Running, 0));
    // Past it, they are timed out and the rollout aborts on them (without the
    // push counting as a dispatch, the gate would pass on the applied ones).
    let r2 = drive_settled(&h, &r.rollout_id, UnixMillis(t0.0 + 61_000)).await;
    assert_eq!(r2.state, RolloutState::Reverted, "{:?}", r2.reason);
    assert_eq!(r2.step, 0);
    assert_eq!(r2.steps[0].state, StepState::Failed);
    assert_eq!(r2.steps[0].counts.timed_out, quiet, "{:?}", r2.steps[0]);
    assert_eq!(r2.steps[0].counts.rejected, 0);
    assert!(
        r2.reason.as_deref().unwrap().contains("timed out"),
        "{:?}",
        r2.reason
    );
    println!(
        "silent endpoints: cohort {} ({} offline, {quiet} silent): {c:?} within the timeout, then {:?}",
        first.len(),
        first.len() - reached.len(),
        r2.reason
    );
}

/// What ECR takes for online: named by a `connected` broadcast, or asking over
/// 6/CDTP (how a restarted ECR learns the connected endpoints again: the CMX asks
/// for all of them on `provider.started`); a `disconnected` broadcast ends it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn online_endpoints_from_connectivity_broadcasts_and_cdtp_requests() {
    let h = bus_harness().await;
    let (ids, _) = setup_fleet(&h, 4).await;
    assert_eq!(h.ecr.online_count(), 0);
    let request = kaa_cdtp::ConfigRequest {
        correlation_id: "c".into(),
        timestamp: kaa_examples::ecr::model::now().0,
        timeout: 3000,
        app_version_name: "kettle".into(),
        endpoint_id: ids[0].as_str().into(),
        config_id: None,
        config_name: None,
    }
    .to_vec();
    let answer = bus::answer_request(&h.ecr, &request, kaa_examples::ecr::model::now())
        .await
        .unwrap();
    assert_eq!(answer.status_code, 200);
    assert!(h.ecr.is_online(&ids[0]));
    connectivity(&h, &ids[1..3], true).await;
    for _ in 0..250 {
        if h.ecr.online_count() == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(h.ecr.is_online(&ids[1]) && h.ecr.is_online(&ids[2]));
    assert!(!h.ecr.is_online(&ids[3]));
    connectivity(&h, &ids[..2], false).await;
    for _ in 0..250 {
        if h.ecr.online_count() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(h.ecr.online_count(), 1);
    assert!(h.ecr.is_online(&ids[2]));
}

/// An endpoint of the served cohort that gives up its own configuration is
/// announced the rollout's configuration, not the stored default.
#[tokio::test]
async fn an_endpoint_leaving_its_own_configuration_is_announced_what_its_cohort_gets() {
    let db = kaa_testkit::ecr::SqliteTestDb::create();
    let store = store::open(&db.url).await.unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let ecr = Ecr::new(store, AppVersions::open(), Some(tx));
    let now = kaa_examples::ecr::model::now();
    let n = name("default");
    ecr.put(
        &default_scope("v1"),
        &n,
        &json!(1),
        &Precondition::None,
        now,
    )
    .await
    .unwrap();
    ecr.put(
        &ep_scope("e1", "v1"),
        &n,
        &json!("own"),
        &Precondition::None,
        now,
    )
    .await
    .unwrap();
    let r = ecr
        .create_rollout(&app("v1"), &n, &spec(&[100.0], OnAbort::Revert), now)
        .await
        .unwrap();
    while rx.try_recv().is_ok() {}
    ecr.delete(&ep_scope("e1", "v1"), &n, &Precondition::None)
        .await
        .unwrap();
    let change = rx.try_recv().expect("announced");
    assert_eq!(change.config.unwrap().config_id, r.config_id);
}

// ------------------------------------------------------------------------ REST

struct Reply {
    status: StatusCode,
    etag: Option<String>,
    body: Value,
}

async fn call(
    app: &axum::Router,
    method: Method,
    uri: &str,
    body: Option<Value>,
    if_match: Option<&str>,
) -> Reply {
    let mut req = Request::builder().method(method).uri(uri);
    if body.is_some() {
        req = req.header(header::CONTENT_TYPE, "application/json");
    }
    if let Some(tag) = if_match {
        req = req.header(header::IF_MATCH, tag);
    }
    let req = req
        .body(body.map_or_else(Body::empty, |b| Body::from(b.to_string())))
        .unwrap();
    let response = app.clone().oneshot(req).await.unwrap();
    let status = response.status();
    let etag = response
        .headers()
        .get(header::ETAG)
        .map(|v| v.to_str().unwrap().to_owned());
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Reply { status, etag, body }
}

fn assert_message(r: &Reply, status: StatusCode) {
    assert_eq!(r.status, status, "{}", r.body);
    let obj = r.body.as_object().expect("an object");
    assert_eq!(obj.len(), 1, "{}", r.body);
    assert!(!obj["message"].as_str().unwrap().is_empty());
}

#[tokio::test]
async fn rest_routes_create_read_act_and_refuse() {
    let db = kaa_testkit::ecr::SqliteTestDb::create();
    let store = store::open(&db.url).await.unwrap();
    let ecr = Arc::new(Ecr::new(Arc::clone(&store), AppVersions::open(), None));
    let app = api::app(
        Arc::clone(&ecr),
        Authenticator::disabled(),
        1 << 20,
        Metrics::new("ecr"),
    );
    let body = json!({
        "config": {"sampling": 2},
        "steps": [50, 1, 10],
        "gate": {"minAppliedPercent": 90, "minApplied": 1, "soakSeconds": 30},
        "abort": {"maxRejectedPercent": 5, "minSample": 10, "reportTimeoutSeconds": 120},
        "onAbort": "halt"
    });
    let r = call(
        &app,
        Method::PUT,
        "/api/v1/app-versions/kettle",
        Some(json!({"sampling": 1})),
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    let old_id = r.body["configId"].as_str().unwrap().to_owned();
    for e in endpoints(50) {
        ecr.learn_endpoint(&ep(&e), &kaa_testkit::ecr::app("kettle"))
            .await
            .unwrap();
    }

    let created = call(
        &app,
        Method::POST,
        "/api/v1/app-versions/kettle/rollouts",
        Some(body.clone()),
        None,
    )
    .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    let id = created.body["rolloutId"].as_str().unwrap().to_owned();
    assert_eq!(
        created.etag.as_deref(),
        Some(format!("\"{id}-1\"").as_str())
    );
    let b = &created.body;
    assert_eq!(b["state"], "running");
    assert_eq!(b["name"], "default");
    assert_eq!(b["appVersionName"], "kettle");
    assert_eq!(b["previousConfigId"], old_id.as_str());
    assert_eq!(b["config"], r#"{"sampling":2}"#);
    assert_eq!(b["reason"], Value::Null);
    let percents: Vec<f64> = b["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["percent"].as_f64().unwrap())
        .collect();
    assert_eq!(percents, [1.0, 10.0, 50.0]);
    assert_eq!(b["steps"][0]["state"], "soaking");
    assert_eq!(b["steps"][1]["state"], "pending");
    assert!(b["steps"][0]["soakUntil"].as_str().unwrap().ends_with('Z'));
    assert_eq!(b["steps"][0]["delivered"], 0);
    assert_eq!(b["onAbort"], "halt");

    // A second rollout, and writes of the default, are conflicts.
    assert_message(
        &call(
            &app,
            Method::POST,
            "/api/v1/app-versions/kettle/rollouts",
            Some(body.clone()),
            None,
        )
        .await,
        StatusCode::CONFLICT,
    );
    assert_message(
        &call(
            &app,
            Method::PUT,
            "/api/v1/app-versions/kettle",
            Some(json!(5)),
            None,
        )
        .await,
        StatusCode::CONFLICT,
    );
    assert_message(
        &call(
            &app,
            Method::DELETE,
            "/api/v1/app-versions/kettle",
            None,
            None,
        )
        .await,
        StatusCode::CONFLICT,
    );
    // Bad bodies.
    for bad in [
        json!({"config": 1, "steps": [], "gate": body["gate"], "abort": body["abort"], "onAbort": "revert"}),
        json!({"config": 1, "steps": [0], "gate": body["gate"], "abort": body["abort"], "onAbort": "revert"}),
        json!({"config": 1, "steps": [10], "gate": body["gate"], "abort": body["abort"], "onAbort": "later"}),
        json!({"steps": [10], "gate": body["gate"], "abort": body["abort"], "onAbort": "revert"}),
        json!({"config": 1, "steps": [10], "gate": body["gate"], "abort": body["abort"], "onAbort": "revert", "x": 1}),
    ] {
        assert_message(
            &call(
                &app,
                Method::POST,
                "/api/v1/app-versions/other/rollouts",
                Some(bad),
                None,
            )
            .await,
            StatusCode::BAD_REQUEST,
        );
    }

    // Reads.
    let one = call(
        &app,
        Method::GET,
        &format!("/api/v1/rollouts/{id}"),
        None,
        None,
    )
    .await;
    assert_eq!(one.status, StatusCode::OK);
    assert_eq!(one.etag, created.etag);
    assert_eq!(
        one.body["steps"][0]["targeted"].as_u64().unwrap() as usize,
        cohort(&endpoints(50), &id, 100).len()
    );
    assert_message(
        &call(&app, Method::GET, "/api/v1/rollouts/nope", None, None).await,
        StatusCode::NOT_FOUND,
    );
    let list = call(
        &app,
        Method::GET,
        "/api/v1/app-versions/kettle/rollouts",
        None,
        None,
    )
    .await;
    assert_eq!(list.body.as_array().unwrap().len(), 1);
    let list = call(
        &app,
        Method::GET,
        "/api/v1/app-versions/kettle/rollouts?name=other",
        None,
        None,
    )
    .await;
    assert_eq!(list.body, json!([]));

    // Actions, with and without If-Match.
    let tag1 = created.etag.clone().unwrap();
    let paused = call(
        &app,
        Method::POST,
        &format!("/api/v1/rollouts/{id}/pause"),
        None,
        Some(&tag1),
    )
    .await;
    assert_eq!(
        (paused.status, paused.body["state"].as_str()),
        (StatusCode::OK, Some("paused"))
    );
    let tag2 = paused.etag.clone().unwrap();
    assert_ne!(tag1, tag2);
    assert_message(
        &call(
            &app,
            Method::POST,
            &format!("/api/v1/rollouts/{id}/pause"),
            None,
            None,
        )
        .await,
        StatusCode::CONFLICT,
    );
    let stale = call(
        &app,
        Method::POST,
        &format!("/api/v1/rollouts/{id}/resume"),
        None,
        Some(&tag1),
    )
    .await;
    assert_message(&stale, StatusCode::PRECONDITION_FAILED);
    assert_eq!(stale.etag.as_deref(), Some(tag2.as_str()));
    let resumed = call(
        &app,
        Method::POST,
        &format!("/api/v1/rollouts/{id}/resume"),
        None,
        Some(&tag2),
    )
    .await;
    assert_eq!(resumed.body["state"], "running");
    let promoted = call(
        &app,
        Method::POST,
        &format!("/api/v1/rollouts/{id}/promote"),
        None,
        None,
    )
    .await;
    assert_eq!(
        (
            promoted.body["step"].as_u64(),
            promoted.body["steps"][0]["state"].as_str()
        ),
        (Some(1), Some("passed"))
    );
    // Halt (onAbort), then abort again: reverted.
    let halted = call(
        &app,
        Method::POST,
        &format!("/api/v1/rollouts/{id}/abort"),
        None,
        Some("*"),
    )
    .await;
    assert_eq!(halted.body["state"], "halted");
    assert_eq!(halted.body["reason"], "aborted by hand");
    let reverted = call(
        &app,
        Method::POST,
        &format!("/api/v1/rollouts/{id}/abort"),
        None,
        None,
    )
    .await;
    assert_eq!(reverted.body["state"], "reverted");
    for action in ["pause", "resume", "abort", "promote"] {
        assert_message(
            &call(
                &app,
                Method::POST,
                &format!("/api/v1/rollouts/{id}/{action}"),
                None,
                None,
            )
            .await,
            StatusCode::CONFLICT,
        );
    }
    assert_message(
        &call(
            &app,
            Method::POST,
            "/api/v1/rollouts/nope/pause",
            None,
            None,
        )
        .await,
        StatusCode::NOT_FOUND,
    );

    // The app versions, status counts and the effective configuration.
    let versions = call(&app, Method::GET, "/api/v1/app-versions", None, None).await;
    assert_eq!(
        versions.body,
        json!([{"appVersionName": "kettle", "configurations": [{"name": "default", "configId": old_id}]}])
    );
    ecr.record_status(
        &ep("ep-1"),
        &kaa_testkit::ecr::app("kettle"),
        &name("default"),
        &old_id,
        &StatusEvent::Confirmed {
            status_code: 200,
            reason_phrase: None,
        },
        kaa_examples::ecr::model::now(),
    )
    .await
    .unwrap();
    let counts = call(
        &app,
        Method::GET,
        "/api/v1/app-versions/kettle/status-counts",
        None,
        None,
    )
    .await;
    assert_eq!(
        counts.body,
        json!([{"configId": old_id, "applied": 1, "rejected": 0, "dispatched": 0}])
    );
    let effective = call(
        &app,
        Method::GET,
        "/api/v1/endpoints/ep-1/app-versions/kettle/effective",
        None,
        None,
    )
    .await;
    assert_eq!(effective.body["configId"], old_id.as_str());
    assert_message(
        &call(
            &app,
            Method::GET,
            "/api/v1/endpoints/ep-1/app-versions/none/effective",
            None,
            None,
        )
        .await,
        StatusCode::NOT_FOUND,
    );

    // A new rollout: the effective configuration follows the cohort.
    let mut full = body.clone();
    full["steps"] = json!([100]);
    let created = call(
        &app,
        Method::POST,
        "/api/v1/app-versions/kettle/rollouts",
        Some(full),
        None,
    )
    .await;
    assert_eq!(created.status, StatusCode::CREATED);
    let effective = call(
        &app,
        Method::GET,
        "/api/v1/endpoints/ep-1/app-versions/kettle/effective",
        None,
        None,
    )
    .await;
    assert_eq!(effective.body["configId"], created.body["configId"]);
    let _ = store;
}

// ---------------------------------------------------------------------------
// Layer rollouts (issue 20): a new version of a layer through the same gated steps.

/// The group-targeted layer `wifi` (priority 10, `{"wifi": "old"}`) over the
/// members (every other endpoint of `ids`) of group `site`, and `led` on every
/// endpoint (priority 0): the fleet of a layer rollout. Returns the members.
async fn setup_layers(ecr: &Ecr, ids: &[String]) -> Vec<String> {
    use kaa_examples::ecr::core::LayerChange;
    use kaa_examples::ecr::layers::{GroupName, Layer, LayerTarget};
    let now = kaa_examples::ecr::model::now();
    let site = GroupName::new("site").unwrap();
    ecr.create_group(&app("kettle"), &site, now).await.unwrap();
    let members: Vec<String> = ids.iter().step_by(2).cloned().collect();
    let add: Vec<_> = members.iter().map(|e| ep(e)).collect();
    ecr.change_members(&app("kettle"), &site, &add, &[], false, now)
        .await
        .unwrap();
    for (l, priority, target, patch) in [
        ("led", 0, LayerTarget::All, json!({"led": 1})),
        (
            "wifi",
            10,
            LayerTarget::Group("site".into()),
            json!({"wifi": "old"}),
        ),
    ] {
        let layer = Layer {
            app_version: "kettle".into(),
            name: "default".into(),
            layer_name: l.into(),
            priority,
            target,
            patch,
            created: now,
            updated: now,
        };
        ecr.write_layer(
            &app("kettle"),
            &name("default"),
            LayerChange::Put(layer),
            false,
            now,
        )
        .await
        .unwrap();
    }
    members
}

fn layer_version() -> kaa_examples::ecr::core::LayerVersion {
    use kaa_examples::ecr::layers::GroupName;
    kaa_examples::ecr::core::LayerVersion {
        layer_name: GroupName::new("wifi").unwrap(),
        priority: 10,
        group: Some(GroupName::new("site").unwrap()),
    }
}

fn layer_spec(steps: &[f64], on_abort: OnAbort) -> RolloutSpec {
    RolloutSpec {
        config: json!({"wifi": "new"}),
        ..spec(steps, on_abort)
    }
}

fn id_of(v: Value) -> String {
    Content::from_value(&v).config_id
}

/// The endpoints announced `config_id` (at any time).
fn announced_with(
    seen: &std::sync::Mutex<HashMap<String, Vec<String>>>,
    config_id: &str,
) -> BTreeSet<String> {
    announced(seen)
        .into_iter()
        .filter(|(_, ids)| ids.iter().any(|i| i == config_id))
        .map(|(e, _)| e)
        .collect()
}

async fn wait_for_set(
    seen: &std::sync::Mutex<HashMap<String, Vec<String>>>,
    config_id: &str,
    want: &BTreeSet<String>,
) {
    let mut got = BTreeSet::new();
    for _ in 0..300 {
        got = announced_with(seen, config_id);
        if &got == want {
            // And nothing more is coming.
            tokio::time::sleep(Duration::from_millis(300)).await;
            got = announced_with(seen, config_id);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(&got, want);
}

/// A layer rollout of `wifi` in two steps over the group's members: each step's
/// cohort of members, and nobody else, is announced its own composed
/// configuration; the cohort is served the new version and the rest of the group
/// the stored one; the layer cannot be written meanwhile; explain names the
/// rollout and step; the gate counts the members on their composed config IDs;
/// completing it stores the new version.
async fn layer_rollout_steps(h: &BusHarness) {
    use kaa_examples::ecr::core::LayerChange;
    use kaa_examples::ecr::layers::{Decider, GroupName};
    let (ids, _old) = setup_fleet(h, 200).await;
    let members = setup_layers(&h.ecr, &ids).await;
    let seen = play_cmx(h, BTreeSet::new(), String::new()).await;
    // Whatever the layer writes left to announce is announced first.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    seen.lock().unwrap().clear();
    let member_new = id_of(json!({"sampling": 1, "led": 1, "wifi": "new"}));
    let member_old = id_of(json!({"sampling": 1, "led": 1, "wifi": "old"}));
    let other = id_of(json!({"sampling": 1, "led": 1}));
    let t0 = kaa_examples::ecr::model::now();
    let r = h
        .ecr
        .create_layer_rollout(
            &app("kettle"),
            &name("default"),
            &layer_version(),
            &layer_spec(&[20.0, 100.0], OnAbort::Revert),
            t0,
        )
        .await
        .unwrap();
    assert_eq!(r.previous_config_id, Some(id_of(json!({"wifi": "old"}))));
    let first = cohort(&members, &r.rollout_id, 2_000);
    assert!(!first.is_empty() && first.len() < members.len());
    wait_for_set(&seen, &member_new, &first).await;
    assert_eq!(
        announced(&seen).len(),
        first.len(),
        "only the first cohort's members are announced"
    );
    // Served: the cohort the new version, the other members the stored one,
    // non-members no wifi at all.
    let outside = members.iter().find(|e| !first.contains(*e)).unwrap();
    let inside = first.iter().next().unwrap();
    let non_member = &ids[1];
    for (e, want) in [
        (inside, &member_new),
        (outside, &member_old),
        (non_member, &other),
    ] {
        let (c, _) = h
            .ecr
            .effective(&ep(e), &app("kettle"), &name("default"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&c.config_id, want, "{e}");
    }
    // Explain names the rollout and its step for the cohort's leaf.
    let x = h
        .ecr
        .explain(&ep(inside), &app("kettle"), &name("default"))
        .await
        .unwrap();
    let wifi = x.leaves.iter().find(|l| l.pointer == "/wifi").unwrap();
    assert_eq!(wifi.value, json!("new"));
    assert_eq!(
        wifi.decider,
        Decider::RollingLayer {
            layer_name: "wifi".into(),
            rollout_id: r.rollout_id.clone(),
            step: 0
        }
    );
    let x = h
        .ecr
        .explain(&ep(outside), &app("kettle"), &name("default"))
        .await
        .unwrap();
    let wifi = x.leaves.iter().find(|l| l.pointer == "/wifi").unwrap();
    assert_eq!(
        (&wifi.value, &wifi.decider),
        (&json!("old"), &Decider::Layer("wifi".into()))
    );
    // The layer cannot be written while it rolls out.
    let err = h
        .ecr
        .write_layer(
            &app("kettle"),
            &name("default"),
            LayerChange::Delete(GroupName::new("wifi").unwrap()),
            false,
            t0,
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            kaa_examples::ecr::core::EcrError::Store(StoreError::Conflict(_))
        ),
        "{err:?}"
    );
    // Soaking, then the gate passes on the members' own composed config IDs.
    let r1 = drive_settled(h, &r.rollout_id, UnixMillis(t0.0 + 5_000)).await;
    assert_eq!((r1.state, r1.step), (RolloutState::Running, 0));
    let r1 = drive_settled(h, &r.rollout_id, UnixMillis(t0.0 + 10_001)).await;
    assert_eq!((r1.state, r1.step), (RolloutState::Running, 1));
    assert_eq!(r1.steps[0].counts.targeted as usize, first.len());
    assert_eq!(r1.steps[0].counts.applied as usize, first.len());
    let all: BTreeSet<String> = members.iter().cloned().collect();
    wait_for_set(&seen, &member_new, &all).await;
    let r2 = drive_settled(h, &r.rollout_id, UnixMillis(t0.0 + 20_002)).await;
    assert_eq!(r2.state, RolloutState::Completed);
    assert_eq!(r2.steps[1].counts.applied as usize, members.len());
    // The stored layer is the new version; every member was announced it once,
    // nobody else anything.
    let layers = h
        .ecr
        .layers(&app("kettle"), Some(&name("default")))
        .await
        .unwrap();
    let wifi = layers.iter().find(|l| l.layer_name == "wifi").unwrap();
    assert_eq!(wifi.patch, json!({"wifi": "new"}));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let got = announced(&seen);
    assert_eq!(got.keys().cloned().collect::<BTreeSet<_>>(), all);
    for (e, v) in &got {
        assert_eq!(v, &vec![member_new.clone()], "{e}");
    }
    // Written again now it is over.
    let (c, _) = h
        .ecr
        .effective(&ep(outside), &app("kettle"), &name("default"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(c.config_id, member_new);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_layer_rollout_steps_through_its_groups_endpoints() {
    layer_rollout_steps(&bus_harness().await).await;
}

/// The same on PostgreSQL: the announcements go through the outbox.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_layer_rollout_steps_through_the_outbox() {
    let Some(h) = pg_bus_harness("rollouts::postgres_layer_rollout_steps_through_the_outbox").await
    else {
        return;
    };
    layer_rollout_steps(&h).await;
}

/// A layer rollout whose first step's members reject it aborts and reverts: the
/// cohort is announced back its previous composed configuration and the stored
/// layer is unchanged.
async fn layer_rollout_reverts(h: &BusHarness) {
    let (ids, _old) = setup_fleet(h, 200).await;
    let members = setup_layers(&h.ecr, &ids).await;
    let member_new = id_of(json!({"sampling": 1, "led": 1, "wifi": "new"}));
    let member_old = id_of(json!({"sampling": 1, "led": 1, "wifi": "old"}));
    let rejects: BTreeSet<String> = members.iter().step_by(3).cloned().collect();
    let seen = play_cmx(h, rejects, member_old.clone()).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    seen.lock().unwrap().clear();
    let t0 = kaa_examples::ecr::model::now();
    let r = h
        .ecr
        .create_layer_rollout(
            &app("kettle"),
            &name("default"),
            &layer_version(),
            &layer_spec(&[50.0, 100.0], OnAbort::Revert),
            t0,
        )
        .await
        .unwrap();
    let first = cohort(&members, &r.rollout_id, 5_000);
    wait_for_set(&seen, &member_new, &first).await;
    let r1 = drive_settled(h, &r.rollout_id, UnixMillis(t0.0 + 1_000)).await;
    assert_eq!(r1.state, RolloutState::Reverted, "{:?}", r1.reason);
    assert!(r1.steps[0].counts.rejected > 0);
    wait_for_set(&seen, &member_old, &first).await;
    for (e, v) in announced(&seen) {
        assert_eq!(v, vec![member_new.clone(), member_old.clone()], "{e}");
    }
    let layers = h
        .ecr
        .layers(&app("kettle"), Some(&name("default")))
        .await
        .unwrap();
    let wifi = layers.iter().find(|l| l.layer_name == "wifi").unwrap();
    assert_eq!(wifi.patch, json!({"wifi": "old"}));
    let (c, _) = h
        .ecr
        .effective(
            &ep(first.iter().next().unwrap()),
            &app("kettle"),
            &name("default"),
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(c.config_id, member_old);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_layer_rollout_with_rejections_reverts() {
    layer_rollout_reverts(&bus_harness().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_layer_rollout_with_rejections_reverts() {
    let Some(h) = pg_bus_harness("rollouts::postgres_layer_rollout_with_rejections_reverts").await
    else {
        return;
    };
    layer_rollout_reverts(&h).await;
}

/// The REST route of a layer rollout, its refusals, the layer's 409, explain over
/// REST, and that the default stays writable (a default rollout may run beside it).
#[tokio::test]
async fn rest_layer_rollouts() {
    let db = kaa_testkit::ecr::SqliteTestDb::create();
    let store = store::open(&db.url).await.unwrap();
    let ecr = Arc::new(Ecr::new(Arc::clone(&store), AppVersions::open(), None));
    let app = api::app(
        Arc::clone(&ecr),
        Authenticator::disabled(),
        1 << 20,
        Metrics::new("ecr"),
    );
    let av = "/api/v1/app-versions/kettle";
    let r = call(&app, Method::PUT, av, Some(json!({"sampling": 1})), None).await;
    assert_eq!(r.status, StatusCode::OK);
    let ids = endpoints(60);
    for e in &ids {
        ecr.learn_endpoint(&ep(e), &kaa_testkit::ecr::app("kettle"))
            .await
            .unwrap();
    }
    let r = call(&app, Method::PUT, &format!("{av}/groups/site"), None, None).await;
    assert_eq!(r.status, StatusCode::CREATED);
    let r = call(
        &app,
        Method::POST,
        &format!("{av}/groups/site/members"),
        Some(json!({"add": ids})),
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let layer = format!("{av}/layers/wifi");
    let r = call(
        &app,
        Method::PUT,
        &layer,
        Some(json!({"priority": 10, "group": "site", "patch": {"wifi": "old"}})),
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let body = json!({
        "priority": 10, "group": "site", "patch": {"wifi": "new"},
        "steps": [50, 100],
        "gate": {"minAppliedPercent": 90, "minApplied": 1, "soakSeconds": 30},
        "abort": {"maxRejectedPercent": 5, "minSample": 10, "reportTimeoutSeconds": 120},
        "onAbort": "revert"
    });
    // Refusals: no such group (404), a patch that is not an object (400), the
    // stored version (409).
    let mut bad = body.clone();
    bad["group"] = json!("nowhere");
    assert_message(
        &call(
            &app,
            Method::POST,
            &format!("{layer}/rollouts"),
            Some(bad),
            None,
        )
        .await,
        StatusCode::NOT_FOUND,
    );
    let mut bad = body.clone();
    bad["patch"] = json!(3);
    assert_message(
        &call(
            &app,
            Method::POST,
            &format!("{layer}/rollouts"),
            Some(bad),
            None,
        )
        .await,
        StatusCode::BAD_REQUEST,
    );
    let mut same = body.clone();
    same["patch"] = json!({"wifi": "old"});
    assert_message(
        &call(
            &app,
            Method::POST,
            &format!("{layer}/rollouts"),
            Some(same),
            None,
        )
        .await,
        StatusCode::CONFLICT,
    );
    let created = call(
        &app,
        Method::POST,
        &format!("{layer}/rollouts"),
        Some(body.clone()),
        None,
    )
    .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    let id = created.body["rolloutId"].as_str().unwrap().to_owned();
    assert_eq!(created.body["layer"]["layerName"], "wifi");
    assert_eq!(created.body["layer"]["group"], "site");
    assert_eq!(created.body["layer"]["patch"], json!({"wifi": "new"}));
    assert_eq!(created.body["state"], "running");
    assert_eq!(
        created.body["previousConfigId"],
        id_of(json!({"wifi": "old"})).as_str()
    );
    // The layer is locked; a second rollout of it is refused.
    for (method, b) in [
        (Method::PUT, Some(json!({"priority": 1, "patch": {}}))),
        (Method::DELETE, None),
    ] {
        assert_message(
            &call(&app, method, &layer, b, None).await,
            StatusCode::CONFLICT,
        );
    }
    assert_message(
        &call(
            &app,
            Method::POST,
            &format!("{layer}/rollouts"),
            Some(body.clone()),
            None,
        )
        .await,
        StatusCode::CONFLICT,
    );
    // The default is not locked by a layer rollout, and a default rollout may run
    // beside it.
    let r = call(&app, Method::PUT, av, Some(json!({"sampling": 3})), None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let d = call(
        &app,
        Method::POST,
        &format!("{av}/rollouts"),
        Some(json!({
            "config": {"sampling": 4}, "steps": [10],
            "gate": body["gate"], "abort": body["abort"], "onAbort": "revert"
        })),
        None,
    )
    .await;
    assert_eq!(d.status, StatusCode::CREATED, "{}", d.body);
    assert!(d.body.get("layer").is_none());
    // A new layer rolled out to a group of its own: no previous version, and the
    // group cannot be deleted meanwhile.
    let r = call(&app, Method::PUT, &format!("{av}/groups/other"), None, None).await;
    assert_eq!(r.status, StatusCode::CREATED);
    let mut fresh = body.clone();
    fresh["group"] = json!("other");
    fresh["patch"] = json!({"fresh": true});
    let f = call(
        &app,
        Method::POST,
        &format!("{av}/layers/fresh/rollouts"),
        Some(fresh),
        None,
    )
    .await;
    assert_eq!(f.status, StatusCode::CREATED, "{}", f.body);
    assert_eq!(f.body["previousConfigId"], Value::Null);
    assert_message(
        &call(
            &app,
            Method::DELETE,
            &format!("{av}/groups/other"),
            None,
            None,
        )
        .await,
        StatusCode::CONFLICT,
    );
    // Explain over REST names the rollout and step for a cohort member.
    let inside = ids.iter().find(|e| cohort_bucket(&id, e) < 5_000).unwrap();
    let x = call(
        &app,
        Method::GET,
        &format!("/api/v1/endpoints/{inside}/app-versions/kettle/explain"),
        None,
        None,
    )
    .await;
    assert_eq!(x.status, StatusCode::OK, "{}", x.body);
    let leaf = x.body["leaves"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["pointer"] == "/wifi")
        .unwrap()
        .clone();
    assert_eq!(leaf["value"], "new");
    assert_eq!(leaf["source"], "layer");
    assert_eq!(leaf["layer"], "wifi");
    assert_eq!(leaf["rolloutId"], id.as_str());
    assert_eq!(leaf["step"], 0);
    // Listed with the app version's rollouts; aborted by hand, the layer is
    // writable again and as stored.
    let list = call(&app, Method::GET, &format!("{av}/rollouts"), None, None).await;
    assert_eq!(list.body.as_array().unwrap().len(), 3);
    let aborted = call(
        &app,
        Method::POST,
        &format!("/api/v1/rollouts/{id}/abort"),
        None,
        None,
    )
    .await;
    assert_eq!(aborted.status, StatusCode::OK, "{}", aborted.body);
    assert_eq!(aborted.body["state"], "reverted");
    let got = call(&app, Method::GET, &layer, None, None).await;
    assert_eq!(got.body["patch"], json!({"wifi": "old"}));
    let r = call(
        &app,
        Method::PUT,
        &layer,
        Some(json!({"priority": 10, "group": "site", "patch": {"wifi": "x"}})),
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    // The OpenAPI document covers the route.
    let doc = api::openapi_json();
    assert!(
        doc["paths"]["/api/v1/app-versions/{appVersionName}/layers/{layerName}/rollouts"]["post"]
            .is_object()
    );
    assert!(doc["components"]["schemas"]["LayerRolloutRequest"].is_object());
}

/// Group membership changes during a layer rollout: an endpoint added to the group
/// inside the cohort gets the new version (announced so), one added outside it the
/// stored version, one removed loses the layer; the step counts follow membership.
#[tokio::test]
async fn membership_changes_during_a_layer_rollout() {
    use kaa_examples::ecr::layers::GroupName;
    let db = kaa_testkit::ecr::SqliteTestDb::create();
    let store = store::open(&db.url).await.unwrap();
    let (tx, mut changes) = tokio::sync::mpsc::unbounded_channel();
    let ecr = Arc::new(Ecr::new(Arc::clone(&store), AppVersions::open(), Some(tx)));
    ecr.put(
        &default_scope("kettle"),
        &name("default"),
        &json!({"sampling": 1}),
        &Precondition::None,
        kaa_examples::ecr::model::now(),
    )
    .await
    .unwrap();
    let ids = endpoints(100);
    for e in &ids {
        ecr.learn_endpoint(&ep(e), &app("kettle")).await.unwrap();
    }
    let members = setup_layers(&ecr, &ids).await;
    let t0 = kaa_examples::ecr::model::now();
    let r = ecr
        .create_layer_rollout(
            &app("kettle"),
            &name("default"),
            &layer_version(),
            &layer_spec(&[50.0, 100.0], OnAbort::Revert),
            t0,
        )
        .await
        .unwrap();
    let inside = |e: &String| cohort_bucket(&r.rollout_id, e) < 5_000;
    let non_members: Vec<&String> = ids.iter().filter(|e| !members.contains(e)).collect();
    let added_in = (*non_members.iter().find(|e| inside(e)).unwrap()).clone();
    let added_out = (*non_members.iter().find(|e| !inside(e)).unwrap()).clone();
    let removed = members.iter().find(|e| inside(e)).unwrap().clone();
    let before = ecr.rollout_counts(&r, t0).await.unwrap();
    assert_eq!(
        before.targeted as usize,
        members.iter().filter(|e| inside(e)).count()
    );
    while changes.try_recv().is_ok() {}
    ecr.change_members(
        &app("kettle"),
        &GroupName::new("site").unwrap(),
        &[ep(&added_in), ep(&added_out)],
        &[ep(&removed)],
        false,
        t0,
    )
    .await
    .unwrap();
    let mut got = HashMap::new();
    while let Ok(c) = changes.try_recv() {
        got.insert(
            c.endpoint_id.to_string(),
            c.config.map(|c| c.config_id).unwrap(),
        );
    }
    let want: HashMap<String, String> = [
        (
            added_in.clone(),
            id_of(json!({"sampling": 1, "led": 1, "wifi": "new"})),
        ),
        (
            added_out.clone(),
            id_of(json!({"sampling": 1, "led": 1, "wifi": "old"})),
        ),
        (removed.clone(), id_of(json!({"sampling": 1, "led": 1}))),
    ]
    .into_iter()
    .collect();
    assert_eq!(got, want);
    for (e, id) in &want {
        let (c, _) = ecr
            .effective(&ep(e), &app("kettle"), &name("default"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&c.config_id, id, "{e}");
    }
    let after = ecr.rollout_counts(&r, t0).await.unwrap();
    assert_eq!(after.targeted, before.targeted, "one in, one out");
}
