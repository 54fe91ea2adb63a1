//! The ONE store test suite: every case runs against the embedded SQLite store and
//! against PostgreSQL (a fresh database per test; skipped when PostgreSQL is not
//! reachable, unless `KAA_REQUIRE_SERVICES=1`).

use std::sync::Arc;

use kaa_examples::ecr::model::{
    AppVersionName, ConfigName, Content, DeliveryStatus, Scope, Source, StatusEvent, StatusQuery,
};
use kaa_examples::ecr::store::{self, BatchTarget, ConfigStore, Precondition, StoreError};
use kaa_ism::UnixMillis;
use kaa_testkit::ecr::{app, default_scope, ep, ep_scope, name};
use serde_json::json;

kaa_testkit::both_stores!(
    put_get_and_identical_content,
    if_match_is_compare_and_set,
    concurrent_if_match_never_loses_an_update,
    effective_prefers_endpoint_over_default,
    names_and_scopes_are_separate,
    delete_with_precondition,
    batch_is_one_transaction,
    endpoints_following_default,
    delete_endpoint_removes_everything,
    status_history_pages_and_filters,
    data_survives_reopen,
);

async fn open(url: &str) -> Arc<dyn ConfigStore> {
    store::open(url).await.expect("open store")
}

fn content(v: serde_json::Value) -> Content {
    Content::from_value(&v)
}

async fn put_get_and_identical_content(url: &str) {
    let s = open(url).await;
    let scope = ep_scope("ep1", "v1");
    let n = ConfigName::default_name();
    assert_eq!(s.get(&scope, &n).await.unwrap(), None);

    let c1 = content(json!({"a": 1}));
    let first = s
        .put(&scope, &n, &c1, &Precondition::None, UnixMillis(1000))
        .await
        .unwrap();
    assert!(first.changed);
    assert_eq!(first.previous, None);
    assert_eq!(first.config.config_id, c1.config_id);
    assert_eq!(first.config.created, UnixMillis(1000));
    assert_eq!(first.config.updated, UnixMillis(1000));
    assert_eq!(s.get(&scope, &n).await.unwrap(), Some(first.config.clone()));

    // Identical content: no new version, nothing updated.
    let again = s
        .put(&scope, &n, &c1, &Precondition::None, UnixMillis(2000))
        .await
        .unwrap();
    assert!(!again.changed);
    assert_eq!(again.config, first.config);
    assert_eq!(
        s.get(&scope, &n).await.unwrap().unwrap().updated,
        UnixMillis(1000)
    );

    let c2 = content(json!({"a": 2}));
    let second = s
        .put(&scope, &n, &c2, &Precondition::None, UnixMillis(3000))
        .await
        .unwrap();
    assert!(second.changed);
    assert_eq!(second.previous.as_ref().unwrap().config_id, c1.config_id);
    let stored = s.get(&scope, &n).await.unwrap().unwrap();
    assert_eq!(stored.config_id, c2.config_id);
    assert_eq!(stored.content, r#"{"a":2}"#);
    assert_eq!(stored.created, UnixMillis(1000));
    assert_eq!(stored.updated, UnixMillis(3000));
}

async fn if_match_is_compare_and_set(url: &str) {
    let s = open(url).await;
    let scope = default_scope("v1");
    let n = ConfigName::default_name();
    let c1 = content(json!(1));
    let c2 = content(json!(2));

    // If-Match on an absent configuration fails, for an ID and for `*`.
    for p in [
        Precondition::Exists,
        Precondition::ConfigId(vec![c1.config_id.clone()]),
    ] {
        let err = s.put(&scope, &n, &c1, &p, UnixMillis(1)).await.unwrap_err();
        assert!(
            matches!(err, StoreError::PreconditionFailed { current: None }),
            "{err:?}"
        );
    }
    assert_eq!(s.get(&scope, &n).await.unwrap(), None);

    s.put(&scope, &n, &c1, &Precondition::None, UnixMillis(1))
        .await
        .unwrap();
    let err = s
        .put(
            &scope,
            &n,
            &c2,
            &Precondition::ConfigId(vec!["stale".into()]),
            UnixMillis(2),
        )
        .await
        .unwrap_err();
    match err {
        StoreError::PreconditionFailed { current } => {
            assert_eq!(current, Some(c1.config_id.clone()))
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        s.get(&scope, &n).await.unwrap().unwrap().config_id,
        c1.config_id
    );

    let ok = s
        .put(
            &scope,
            &n,
            &c2,
            &Precondition::ConfigId(vec![c1.config_id.clone()]),
            UnixMillis(3),
        )
        .await
        .unwrap();
    assert!(ok.changed);
    s.put(&scope, &n, &c1, &Precondition::Exists, UnixMillis(4))
        .await
        .unwrap();
    assert_eq!(
        s.get(&scope, &n).await.unwrap().unwrap().config_id,
        c1.config_id
    );
}

async fn concurrent_if_match_never_loses_an_update(url: &str) {
    let s = open(url).await;
    let scope = ep_scope("counter", "v1");
    let n = ConfigName::default_name();
    s.put(
        &scope,
        &n,
        &content(json!({"count": 0})),
        &Precondition::None,
        UnixMillis(1),
    )
    .await
    .unwrap();
    const WRITERS: usize = 8;
    const INCREMENTS: usize = 15;
    let mut tasks = Vec::new();
    for _ in 0..WRITERS {
        let s = Arc::clone(&s);
        let scope = scope.clone();
        let n = n.clone();
        tasks.push(tokio::spawn(async move {
            let mut conflicts = 0;
            for _ in 0..INCREMENTS {
                loop {
                    let cur = s.get(&scope, &n).await.unwrap().unwrap();
                    let v: serde_json::Value = serde_json::from_str(&cur.content).unwrap();
                    let next = content(json!({"count": v["count"].as_u64().unwrap() + 1}));
                    match s
                        .put(
                            &scope,
                            &n,
                            &next,
                            &Precondition::ConfigId(vec![cur.config_id]),
                            UnixMillis(2),
                        )
                        .await
                    {
                        Ok(_) => break,
                        Err(StoreError::PreconditionFailed { .. }) => conflicts += 1,
                        Err(e) => panic!("{e}"),
                    }
                }
            }
            conflicts
        }));
    }
    let mut conflicts = 0;
    for t in tasks {
        conflicts += t.await.unwrap();
    }
    let v: serde_json::Value =
        serde_json::from_str(&s.get(&scope, &n).await.unwrap().unwrap().content).unwrap();
    assert_eq!(
        v["count"],
        (WRITERS * INCREMENTS) as u64,
        "conflicts seen: {conflicts}"
    );
}

async fn effective_prefers_endpoint_over_default(url: &str) {
    let s = open(url).await;
    let n = ConfigName::default_name();
    assert_eq!(s.effective(&ep("e"), &app("v1"), &n).await.unwrap(), None);
    let d = content(json!({"d": true}));
    s.put(
        &default_scope("v1"),
        &n,
        &d,
        &Precondition::None,
        UnixMillis(1),
    )
    .await
    .unwrap();
    let (c, src) = s
        .effective(&ep("e"), &app("v1"), &n)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (c.config_id.as_str(), src),
        (d.config_id.as_str(), Source::Default)
    );
    // Other app versions do not see it.
    assert_eq!(s.effective(&ep("e"), &app("v2"), &n).await.unwrap(), None);

    let e = content(json!({"e": true}));
    s.put(
        &ep_scope("e", "v1"),
        &n,
        &e,
        &Precondition::None,
        UnixMillis(2),
    )
    .await
    .unwrap();
    let (c, src) = s
        .effective(&ep("e"), &app("v1"), &n)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (c.config_id.as_str(), src),
        (e.config_id.as_str(), Source::Endpoint)
    );
    // Another endpoint still follows the default.
    let (_, src) = s
        .effective(&ep("other"), &app("v1"), &n)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(src, Source::Default);

    s.delete(&ep_scope("e", "v1"), &n, &Precondition::None)
        .await
        .unwrap();
    let (c, src) = s
        .effective(&ep("e"), &app("v1"), &n)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (c.config_id.as_str(), src),
        (d.config_id.as_str(), Source::Default)
    );
}

async fn names_and_scopes_are_separate(url: &str) {
    let s = open(url).await;
    for (i, nm) in ["zeta", "alpha", "default"].iter().enumerate() {
        s.put(
            &ep_scope("e", "v1"),
            &name(nm),
            &content(json!(i)),
            &Precondition::None,
            UnixMillis(1),
        )
        .await
        .unwrap();
    }
    s.put(
        &default_scope("v1"),
        &name("net"),
        &content(json!("d")),
        &Precondition::None,
        UnixMillis(1),
    )
    .await
    .unwrap();
    let names: Vec<String> = s
        .list(&ep_scope("e", "v1"))
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.name.to_string())
        .collect();
    assert_eq!(names, ["alpha", "default", "zeta"]);
    let defaults = s.list(&default_scope("v1")).await.unwrap();
    assert_eq!(defaults.len(), 1);
    assert_eq!(defaults[0].name.as_str(), "net");
    assert!(s.list(&ep_scope("e", "v2")).await.unwrap().is_empty());
    assert!(s.list(&ep_scope("f", "v1")).await.unwrap().is_empty());
    // The named effective config falls back to the named default only.
    let (c, src) = s
        .effective(&ep("e"), &app("v1"), &name("net"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!((c.content.as_str(), src), ("\"d\"", Source::Default));
}

async fn delete_with_precondition(url: &str) {
    let s = open(url).await;
    let scope = ep_scope("e", "v1");
    let n = ConfigName::default_name();
    assert_eq!(
        s.delete(&scope, &n, &Precondition::None).await.unwrap(),
        None
    );
    let c = content(json!([1, 2]));
    s.put(&scope, &n, &c, &Precondition::None, UnixMillis(1))
        .await
        .unwrap();
    let err = s
        .delete(&scope, &n, &Precondition::ConfigId(vec!["other".into()]))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::PreconditionFailed { .. }));
    assert!(s.get(&scope, &n).await.unwrap().is_some());
    let deleted = s
        .delete(
            &scope,
            &n,
            &Precondition::ConfigId(vec![c.config_id.clone()]),
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(deleted.config_id, c.config_id);
    assert_eq!(s.get(&scope, &n).await.unwrap(), None);
}

async fn batch_is_one_transaction(url: &str) {
    let s = open(url).await;
    let n = name("net");
    let c = content(json!({"b": 1}));
    s.put(
        &ep_scope("e2", "v1"),
        &n,
        &c,
        &Precondition::None,
        UnixMillis(1),
    )
    .await
    .unwrap();
    let targets = vec![
        BatchTarget {
            app_version: app("v1"),
            endpoint_id: ep("e1"),
        },
        BatchTarget {
            app_version: app("v1"),
            endpoint_id: ep("e2"),
        },
        BatchTarget {
            app_version: app("v2"),
            endpoint_id: ep("e3"),
        },
    ];
    let outcomes = s.put_batch(&targets, &n, &c, UnixMillis(5)).await.unwrap();
    let changed: Vec<bool> = outcomes.iter().map(|o| o.changed).collect();
    assert_eq!(changed, [true, false, true]);
    for t in &targets {
        let got = s
            .get(
                &Scope::Endpoint {
                    endpoint_id: t.endpoint_id.clone(),
                    app_version: t.app_version.clone(),
                },
                &n,
            )
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got.config_id, c.config_id);
    }
    // Batch endpoints are known in their app versions.
    let known = s
        .endpoints_following_default(&app("v1"), &name("other"))
        .await
        .unwrap();
    assert_eq!(known, [ep("e1"), ep("e2")]);
}

async fn endpoints_following_default(url: &str) {
    let s = open(url).await;
    let n = ConfigName::default_name();
    assert!(s.remember_endpoint(&ep("a"), &app("v1")).await.unwrap());
    assert!(!s.remember_endpoint(&ep("a"), &app("v1")).await.unwrap());
    s.remember_endpoint(&ep("b"), &app("v1")).await.unwrap();
    s.remember_endpoint(&ep("c"), &app("v2")).await.unwrap();
    s.put(
        &ep_scope("b", "v1"),
        &n,
        &content(json!(1)),
        &Precondition::None,
        UnixMillis(1),
    )
    .await
    .unwrap();
    assert_eq!(
        s.endpoints_following_default(&app("v1"), &n).await.unwrap(),
        [ep("a")]
    );
    assert_eq!(
        s.endpoints_following_default(&app("v1"), &name("x"))
            .await
            .unwrap(),
        [ep("a"), ep("b")]
    );
    s.forget_endpoint(&ep("a"), &app("v1")).await.unwrap();
    assert!(
        s.endpoints_following_default(&app("v1"), &n)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        s.endpoints_following_default(&app("v2"), &n).await.unwrap(),
        [ep("c")]
    );
}

async fn delete_endpoint_removes_everything(url: &str) {
    let s = open(url).await;
    let n = ConfigName::default_name();
    for a in ["v1", "v2"] {
        s.put(
            &ep_scope("gone", a),
            &n,
            &content(json!(a)),
            &Precondition::None,
            UnixMillis(1),
        )
        .await
        .unwrap();
    }
    s.put(
        &ep_scope("kept", "v1"),
        &n,
        &content(json!(0)),
        &Precondition::None,
        UnixMillis(1),
    )
    .await
    .unwrap();
    s.put(
        &default_scope("v1"),
        &n,
        &content(json!("d")),
        &Precondition::None,
        UnixMillis(1),
    )
    .await
    .unwrap();
    s.record_status(
        &ep("gone"),
        &app("v1"),
        &n,
        "x",
        &StatusEvent::Dispatched,
        UnixMillis(2),
    )
    .await
    .unwrap();
    assert_eq!(s.delete_endpoint(&ep("gone")).await.unwrap(), 2);
    assert!(s.list(&ep_scope("gone", "v1")).await.unwrap().is_empty());
    assert!(s.list(&ep_scope("gone", "v2")).await.unwrap().is_empty());
    assert_eq!(s.list(&ep_scope("kept", "v1")).await.unwrap().len(), 1);
    assert_eq!(s.list(&default_scope("v1")).await.unwrap().len(), 1);
    let page = s
        .statuses(&StatusQuery {
            endpoint_id: ep("gone"),
            app_version: None,
            config_id: None,
            page: 0,
            size: 10,
        })
        .await
        .unwrap();
    assert_eq!(page.total_elements, 0);
    assert_eq!(
        s.endpoints_following_default(&app("v2"), &n).await.unwrap(),
        []
    );
}

async fn status_history_pages_and_filters(url: &str) {
    let s = open(url).await;
    let n = ConfigName::default_name();
    let e = ep("e");
    for i in 0..5 {
        s.record_status(
            &e,
            &app("v1"),
            &n,
            &format!("id{i}"),
            &StatusEvent::Dispatched,
            UnixMillis(100 + i),
        )
        .await
        .unwrap();
    }
    s.record_status(
        &e,
        &app("v2"),
        &n,
        "id0",
        &StatusEvent::Dispatched,
        UnixMillis(50),
    )
    .await
    .unwrap();
    s.record_status(
        &e,
        &app("v1"),
        &n,
        "id1",
        &StatusEvent::Confirmed {
            status_code: 200,
            reason_phrase: Some("Implicitly applied".into()),
        },
        UnixMillis(200),
    )
    .await
    .unwrap();
    s.record_status(
        &e,
        &app("v1"),
        &n,
        "id2",
        &StatusEvent::Confirmed {
            status_code: 400,
            reason_phrase: Some("bad".into()),
        },
        UnixMillis(150),
    )
    .await
    .unwrap();
    s.record_status(
        &ep("other"),
        &app("v1"),
        &n,
        "id9",
        &StatusEvent::Dispatched,
        UnixMillis(1),
    )
    .await
    .unwrap();

    let q = |app_version: Option<&str>, config_id: Option<&str>, page, size| StatusQuery {
        endpoint_id: e.clone(),
        app_version: app_version.map(|a| AppVersionName::new(a).unwrap()),
        config_id: config_id.map(str::to_owned),
        page,
        size,
    };
    let all = s.statuses(&q(None, None, 0, 100)).await.unwrap();
    assert_eq!(all.total_elements, 6);
    let ids: Vec<(&str, &str)> = all
        .content
        .iter()
        .map(|r| (r.app_version.as_str(), r.config_id.as_str()))
        .collect();
    assert_eq!(
        ids,
        [
            ("v1", "id1"),
            ("v1", "id2"),
            ("v1", "id4"),
            ("v1", "id3"),
            ("v1", "id0"),
            ("v2", "id0")
        ]
    );
    let first = &all.content[0];
    assert_eq!(first.status, DeliveryStatus::Applied);
    assert_eq!(first.status_code, Some(200));
    assert_eq!(first.reason_phrase.as_deref(), Some("Implicitly applied"));
    assert_eq!(first.last_dispatched, Some(UnixMillis(101)));
    assert_eq!(first.last_confirmed, Some(UnixMillis(200)));
    assert_eq!(all.content[1].status, DeliveryStatus::Rejected);
    assert_eq!(all.content[2].status, DeliveryStatus::Dispatched);
    assert_eq!(all.content[2].last_confirmed, None);

    let page1 = s.statuses(&q(None, None, 1, 4)).await.unwrap();
    assert_eq!(page1.total_elements, 6);
    assert_eq!(page1.content.len(), 2);
    assert_eq!(page1.content[0].config_id, "id0");
    assert!(
        s.statuses(&q(None, None, 5, 4))
            .await
            .unwrap()
            .content
            .is_empty()
    );

    let v2 = s.statuses(&q(Some("v2"), None, 0, 10)).await.unwrap();
    assert_eq!(v2.total_elements, 1);
    let id0 = s.statuses(&q(None, Some("id0"), 0, 10)).await.unwrap();
    assert_eq!(id0.total_elements, 2);
    let both = s
        .statuses(&q(Some("v1"), Some("id0"), 0, 10))
        .await
        .unwrap();
    assert_eq!(both.total_elements, 1);
}

async fn data_survives_reopen(url: &str) {
    let c = content(json!({"durable": true}));
    {
        let s = open(url).await;
        s.put(
            &ep_scope("e", "v1"),
            &ConfigName::default_name(),
            &c,
            &Precondition::None,
            UnixMillis(7),
        )
        .await
        .unwrap();
    }
    // Opening again runs the migration check on an existing schema.
    let s = open(url).await;
    let got = s
        .get(&ep_scope("e", "v1"), &ConfigName::default_name())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.config_id, c.config_id);
    assert_eq!(got.created, UnixMillis(7));
}
