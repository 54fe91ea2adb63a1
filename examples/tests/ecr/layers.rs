//! Endpoint groups and layers (#20): the store rules on SQLite and PostgreSQL
//! (groups, members, layers, effective answers composed, batched lookups), the
//! announcements of a layer change on PostgreSQL through the outbox, and the REST
//! routes (groups, members, layers, explain, dry runs).

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use kaa_examples::ecr::api::{self, Authenticator};
use kaa_examples::ecr::core::{AppVersions, Ecr, EffectiveChange, LayerChange};
use kaa_examples::ecr::layers::{GroupName, Layer, LayerTarget};
use kaa_examples::ecr::model::{Content, Source};
use kaa_examples::ecr::store::{
    self, AnnouncementSink, ConfigStore, EffectiveKey, Precondition, StoreError,
};
use kaa_examples::service::Metrics;
use kaa_ism::UnixMillis;
use kaa_testkit::ecr::{app, default_scope, ep, ep_scope, name};
use serde_json::{Value, json};
use tower::ServiceExt;

kaa_testkit::both_stores!(groups_and_layers_in_the_store);

fn group(s: &str) -> GroupName {
    GroupName::new(s).unwrap()
}

fn layer(a: &str, n: &str, l: &str, priority: i64, target: Option<&str>, patch: Value) -> Layer {
    Layer {
        app_version: a.into(),
        name: n.into(),
        layer_name: l.into(),
        priority,
        target: target.map_or(LayerTarget::All, |g| LayerTarget::Group(g.into())),
        patch,
        created: UnixMillis(10),
        updated: UnixMillis(10),
    }
}

fn key(e: &str, a: &str, n: &str) -> EffectiveKey {
    EffectiveKey {
        endpoint_id: ep(e),
        app_version: app(a),
        name: name(n),
    }
}

async fn content_of(s: &Arc<dyn ConfigStore>, e: &str) -> Option<Value> {
    s.effective(&ep(e), &app("v1"), &name("default"))
        .await
        .unwrap()
        .map(|(c, _)| serde_json::from_str(&c.content).unwrap())
}

async fn groups_and_layers_in_the_store(url: &str) {
    let s = store::open(url).await.unwrap();
    let (v1, n) = (app("v1"), name("default"));
    let t = UnixMillis(5);
    assert!(s.create_group(&v1, &group("g1"), t).await.unwrap());
    assert!(!s.create_group(&v1, &group("g1"), t).await.unwrap());
    assert!(s.create_group(&v1, &group("g2"), t).await.unwrap());
    // Members in batches, pages.
    let ids: Vec<_> = (0..25).map(|i| ep(&format!("e{i:02}"))).collect();
    let (added, removed) = s
        .change_members(&v1, &group("g1"), &ids, &[], &[], t)
        .await
        .unwrap();
    assert_eq!((added, removed), (25, 0));
    let (added, removed) = s
        .change_members(&v1, &group("g1"), &ids[..2], &ids[20..], &[], t)
        .await
        .unwrap();
    assert_eq!((added, removed), (0, 5));
    let page = s
        .group_members(&v1, &group("g1"), 1, 8)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(page.total_elements, 20);
    assert_eq!(
        page.content,
        ["e08", "e09", "e10", "e11", "e12", "e13", "e14", "e15"]
    );
    assert!(
        s.group_members(&v1, &group("nope"), 0, 8)
            .await
            .unwrap()
            .is_none()
    );
    assert!(matches!(
        s.change_members(&v1, &group("nope"), &ids, &[], &[], t)
            .await,
        Err(StoreError::NotFound(_))
    ));
    let groups = s.groups(&v1, 0, 10).await.unwrap();
    assert_eq!(groups.total_elements, 2);
    assert_eq!(groups.content[0].group, "g1");
    assert_eq!(groups.content[0].members, 20);
    assert_eq!(groups.content[1].members, 0);

    // Layers: default, then every endpoint (priority 1), then g1 (priority 5).
    s.put(
        &default_scope("v1"),
        &n,
        &Content::from_value(&json!({"a": 1, "b": {"c": 1, "d": 1}})),
        &Precondition::None,
        t,
    )
    .await
    .unwrap();
    assert!(matches!(
        s.put_layer(
            &layer("v1", "default", "x", 1, Some("nope"), json!({})),
            &[]
        )
        .await,
        Err(StoreError::NotFound(_))
    ));
    assert_eq!(
        s.put_layer(
            &layer("v1", "default", "all", 1, None, json!({"a": 2})),
            &[]
        )
        .await
        .unwrap(),
        None
    );
    s.put_layer(
        &layer(
            "v1",
            "default",
            "site",
            5,
            Some("g1"),
            json!({"b": {"c": null, "e": 3}}),
        ),
        &[],
    )
    .await
    .unwrap();
    // Equal priority: the layer name sorting last wins.
    s.put_layer(
        &layer("v1", "default", "all2", 1, None, json!({"a": 3})),
        &[],
    )
    .await
    .unwrap();
    let names: Vec<String> = s
        .layers(&v1, Some(&n))
        .await
        .unwrap()
        .into_iter()
        .map(|l| l.layer_name)
        .collect();
    assert_eq!(names, ["all", "all2", "site"]);
    assert_eq!(
        content_of(&s, "e01").await.unwrap(),
        json!({"a": 3, "b": {"d": 1, "e": 3}})
    );
    assert_eq!(
        content_of(&s, "x1").await.unwrap(),
        json!({"a": 3, "b": {"c": 1, "d": 1}})
    );
    // The own configuration wins whole.
    s.put(
        &ep_scope("e02", "v1"),
        &n,
        &Content::from_value(&json!({"own": true})),
        &Precondition::None,
        t,
    )
    .await
    .unwrap();
    assert_eq!(content_of(&s, "e02").await.unwrap(), json!({"own": true}));
    // The batched lookups agree with the single ones.
    let keys = [
        key("e01", "v1", "default"),
        key("x1", "v1", "default"),
        key("e02", "v1", "default"),
        key("e01", "v1", "other"),
    ];
    let many = s.effective_many(&keys).await.unwrap();
    for (k, found) in keys.iter().zip(&many) {
        let one = s
            .effective(&k.endpoint_id, &k.app_version, &k.name)
            .await
            .unwrap();
        assert_eq!(&one, found, "{k:?}");
    }
    assert_eq!(many[2].as_ref().unwrap().1, Source::Endpoint);
    assert_eq!(many[3], None);
    // Inputs: base unlayered, groups.
    let inputs = s.effective_inputs(&keys[..2]).await.unwrap();
    assert_eq!(inputs[0].groups, BTreeSet::from(["g1".to_owned()]));
    assert!(inputs[1].groups.is_empty());
    assert_eq!(
        inputs[0].base.as_ref().unwrap().0.content,
        r#"{"a":1,"b":{"c":1,"d":1}}"#
    );
    // A targeted group cannot be deleted; an untargeted one can.
    assert!(matches!(
        s.delete_group(&v1, &group("g1")).await,
        Err(StoreError::Conflict(_))
    ));
    assert!(s.delete_group(&v1, &group("g2")).await.unwrap());
    assert!(!s.delete_group(&v1, &group("g2")).await.unwrap());
    // Deleting a layer.
    let gone = s
        .delete_layer(&v1, &n, &group("site"), &[], t)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(gone.target, LayerTarget::Group("g1".into()));
    assert_eq!(
        content_of(&s, "e01").await.unwrap(),
        json!({"a": 3, "b": {"c": 1, "d": 1}})
    );
    assert!(s.delete_group(&v1, &group("g1")).await.unwrap());
    // Deleting an endpoint forgets its memberships.
    s.create_group(&v1, &group("g3"), t).await.unwrap();
    s.change_members(&v1, &group("g3"), &[ep("e05")], &[], &[], t)
        .await
        .unwrap();
    s.delete_endpoint(&ep("e05")).await.unwrap();
    assert_eq!(
        s.group_members(&v1, &group("g3"), 0, 10)
            .await
            .unwrap()
            .unwrap()
            .total_elements,
        0
    );
    // An own configuration stored as a merge patch: merged over the default and the
    // layers (`all`, `all2` now), and still a follower of the default.
    let patch = Content::from_value(&json!({"b": {"d": 9}, "p": 1}));
    let out = s
        .put_patch(&ep_scope("e03", "v1"), &n, &patch, &Precondition::None, t)
        .await
        .unwrap();
    assert!(out.changed && !out.previous_patch && out.previous.is_none());
    let patched = json!({"a": 3, "b": {"c": 1, "d": 9}, "p": 1});
    assert_eq!(content_of(&s, "e03").await.unwrap(), patched);
    let many = s
        .effective_many(&[key("e03", "v1", "default"), key("e02", "v1", "default")])
        .await
        .unwrap();
    let one = s.effective(&ep("e03"), &v1, &n).await.unwrap();
    assert_eq!(many[0], one);
    assert_eq!(one.unwrap().1, Source::Endpoint);
    assert_eq!(
        serde_json::from_str::<Value>(&many[1].as_ref().unwrap().0.content).unwrap(),
        json!({"own": true}),
        "a whole own configuration beside it stays whole"
    );
    let inputs = s
        .effective_inputs(&[key("e03", "v1", "default")])
        .await
        .unwrap();
    assert_eq!(inputs[0].own_patch.as_ref().unwrap().content, patch.json);
    assert_eq!(inputs[0].base.as_ref().unwrap().1, Source::Default);
    let followers = s.endpoints_following_default(&v1, &n).await.unwrap();
    assert!(followers.contains(&ep("e03")) && !followers.contains(&ep("e02")));
    assert_eq!(
        s.endpoints_with_own_patch(&v1, &n).await.unwrap(),
        [ep("e03")]
    );
    assert_eq!(
        s.own_patch_names(&ep("e03"), &v1).await.unwrap(),
        BTreeSet::from(["default".to_owned()])
    );
    // The same patch again: nothing; the same content whole: a change.
    let again = s
        .put_patch(&ep_scope("e03", "v1"), &n, &patch, &Precondition::None, t)
        .await
        .unwrap();
    assert!(!again.changed && again.previous_patch);
    let whole = s
        .put(&ep_scope("e03", "v1"), &n, &patch, &Precondition::None, t)
        .await
        .unwrap();
    assert!(whole.changed && whole.previous_patch);
    assert_eq!(
        content_of(&s, "e03").await.unwrap(),
        json!({"b": {"d": 9}, "p": 1})
    );
    assert!(s.own_patch_names(&ep("e03"), &v1).await.unwrap().is_empty());
    let back = s
        .put_patch(&ep_scope("e03", "v1"), &n, &patch, &Precondition::None, t)
        .await
        .unwrap();
    assert!(back.changed && !back.previous_patch);
    // A default cannot be a patch.
    assert!(matches!(
        s.put_patch(&default_scope("v1"), &n, &patch, &Precondition::None, t)
            .await,
        Err(StoreError::Conflict(_))
    ));
    // Deleting says what it deleted.
    let (gone, was_patch) = s
        .delete_own(&ep_scope("e03", "v1"), &n, &Precondition::None)
        .await
        .unwrap()
        .unwrap();
    assert!(was_patch);
    assert_eq!(gone.content, patch.json);
    s.put_patch(&ep_scope("e03", "v1"), &n, &patch, &Precondition::None, t)
        .await
        .unwrap();
    // Durable: a store opened again has them.
    drop(s);
    let s = store::open(url).await.unwrap();
    assert_eq!(s.layers(&v1, None).await.unwrap().len(), 2);
    assert_eq!(s.groups(&v1, 0, 10).await.unwrap().total_elements, 1);
    assert_eq!(content_of(&s, "e03").await.unwrap(), patched);
}

struct Collect(Mutex<Vec<EffectiveChange>>);

#[async_trait]
impl AnnouncementSink for Collect {
    async fn announce(&self, changes: &[EffectiveChange]) -> Result<(), String> {
        self.0.lock().unwrap().extend_from_slice(changes);
        Ok(())
    }
}

/// On PostgreSQL with durable announcements, a layer change and a membership
/// change are recorded in the outbox in their transactions, for exactly the
/// endpoints whose effective configuration changes, and the announcer announces
/// their layered configurations.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_layer_announcements_go_through_the_outbox() {
    let Some(db) = kaa_testkit::ecr::PgTestDb::create(
        "layers::postgres_layer_announcements_go_through_the_outbox",
    )
    .await
    else {
        return;
    };
    let s = store::open(&db.url).await.unwrap();
    assert!(s.enable_durable_announcements());
    let ecr = Ecr::new(Arc::clone(&s), AppVersions::open(), None);
    let (v1, n) = (app("v1"), name("default"));
    let now = UnixMillis(100);
    ecr.put(
        &default_scope("v1"),
        &n,
        &json!({"a": 1}),
        &Precondition::None,
        now,
    )
    .await
    .unwrap();
    let ids: Vec<_> = (0..30).map(|i| ep(&format!("e{i:02}"))).collect();
    for e in &ids {
        ecr.learn_endpoint(e, &v1).await.unwrap();
    }
    ecr.create_group(&v1, &group("g"), now).await.unwrap();
    ecr.change_members(&v1, &group("g"), &ids[..10], &[], false, now)
        .await
        .unwrap();
    let sink = Collect(Mutex::new(Vec::new()));
    while s.announce_pending(1000, &sink).await.unwrap() > 0 {}
    sink.0.lock().unwrap().clear();

    let (_, predicted) = ecr
        .write_layer(
            &v1,
            &n,
            LayerChange::Put(layer("v1", "default", "l", 1, Some("g"), json!({"b": 2}))),
            false,
            now,
        )
        .await
        .unwrap();
    assert_eq!(predicted.changes.len(), 10);
    while s.announce_pending(1000, &sink).await.unwrap() > 0 {}
    let got: BTreeSet<String> = sink
        .0
        .lock()
        .unwrap()
        .iter()
        .map(|c| {
            assert_eq!(c.config.as_ref().unwrap().content, r#"{"a":1,"b":2}"#);
            c.endpoint_id.to_string()
        })
        .collect();
    let expect: BTreeSet<String> = ids[..10].iter().map(ToString::to_string).collect();
    assert_eq!(got, expect);
    // Moving one endpoint into the group announces that one.
    sink.0.lock().unwrap().clear();
    ecr.change_members(&v1, &group("g"), &ids[20..21], &[], false, now)
        .await
        .unwrap();
    while s.announce_pending(1000, &sink).await.unwrap() > 0 {}
    let got: Vec<String> = sink
        .0
        .lock()
        .unwrap()
        .iter()
        .map(|c| c.endpoint_id.to_string())
        .collect();
    assert_eq!(got, ["e20"]);
}

/// Drains the outbox through `sink` and returns the endpoints announced (sorted)
/// with the content each was announced.
async fn drain_outbox(s: &Arc<dyn ConfigStore>, sink: &Collect) -> Vec<(String, Option<String>)> {
    while s.announce_pending(1000, sink).await.unwrap() > 0 {}
    let mut got: Vec<(String, Option<String>)> = sink
        .0
        .lock()
        .unwrap()
        .drain(..)
        .map(|c| (c.endpoint_id.to_string(), c.config.map(|c| c.content)))
        .collect();
    got.sort();
    got
}

/// On PostgreSQL with durable announcements, a default write announces exactly the
/// followers whose effective configuration it changes (those a layer hides the
/// changed value from are not announced), the endpoints its dry run names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_default_writes_announce_only_the_changed_followers() {
    let Some(db) = kaa_testkit::ecr::PgTestDb::create(
        "layers::postgres_default_writes_announce_only_the_changed_followers",
    )
    .await
    else {
        return;
    };
    let s = store::open(&db.url).await.unwrap();
    assert!(s.enable_durable_announcements());
    let ecr = Ecr::new(Arc::clone(&s), AppVersions::open(), None);
    let (v1, n) = (app("v1"), name("default"));
    let now = UnixMillis(100);
    let ids: Vec<_> = (0..30).map(|i| ep(&format!("e{i:02}"))).collect();
    for e in &ids {
        ecr.learn_endpoint(e, &v1).await.unwrap();
    }
    ecr.put(
        &default_scope("v1"),
        &n,
        &json!({"a": 1, "b": 1}),
        &Precondition::None,
        now,
    )
    .await
    .unwrap();
    ecr.create_group(&v1, &group("g"), now).await.unwrap();
    ecr.change_members(&v1, &group("g"), &ids[..10], &[], false, now)
        .await
        .unwrap();
    ecr.write_layer(
        &v1,
        &n,
        LayerChange::Put(layer("v1", "default", "l", 1, Some("g"), json!({"a": 5}))),
        false,
        now,
    )
    .await
    .unwrap();
    ecr.put(
        &ep_scope("e29", "v1"),
        &n,
        &json!({"own": 1}),
        &Precondition::None,
        now,
    )
    .await
    .unwrap();
    let sink = Collect(Mutex::new(Vec::new()));
    drain_outbox(&s, &sink).await;

    let writes = [
        // `a` changes: the group's layer hides it (e00-e09 unchanged).
        Some(json!({"a": 2, "b": 1})),
        // `b` changes: every follower.
        Some(json!({"a": 2, "b": 2})),
        // The same default again: nothing.
        Some(json!({"a": 2, "b": 2})),
        None,
        Some(json!({"a": 7})),
    ];
    // From none to `{"a": 7}`: the group keeps `{"a": 5}` (its layer over nothing).
    let expected_counts = [19, 29, 0, 29, 19];
    for (config, expected) in writes.iter().zip(expected_counts) {
        let predicted = ecr.predict_default(&v1, &n, config.as_ref()).await.unwrap();
        match config {
            Some(c) => {
                ecr.put(&default_scope("v1"), &n, c, &Precondition::None, now)
                    .await
                    .unwrap();
            }
            None => {
                ecr.delete(&default_scope("v1"), &n, &Precondition::None)
                    .await
                    .unwrap();
            }
        }
        let got = drain_outbox(&s, &sink).await;
        let predicted: Vec<String> = predicted
            .changes
            .iter()
            .map(|c| c.endpoint_id.to_string())
            .collect();
        let announced: Vec<String> = got.iter().map(|(e, _)| e.clone()).collect();
        assert_eq!(announced, predicted, "after {config:?}");
        assert_eq!(announced.len(), expected, "after {config:?}");
        for (e, content) in &got {
            let now = content_of(&s, e).await.map(|v| v.to_string());
            let content = content
                .as_deref()
                .map(|c| serde_json::from_str::<Value>(c).unwrap().to_string());
            assert_eq!(&content, &now, "{e} after {config:?}");
        }
    }
    // An own configuration stored as a merge patch follows the default, minus what
    // it decides itself.
    ecr.put_patch(
        &ep_scope("e27", "v1"),
        &n,
        &json!({"a": 1}),
        &Precondition::None,
        now,
    )
    .await
    .unwrap();
    assert_eq!(
        drain_outbox(&s, &sink).await,
        [("e27".to_owned(), Some(r#"{"a":1}"#.to_owned()))]
    );
    for (config, expected, e27) in [
        (json!({"a": 8, "c": 1}), 29, Some(r#"{"a":1,"c":1}"#)),
        (json!({"a": 9, "c": 1}), 18, None),
    ] {
        let predicted = ecr.predict_default(&v1, &n, Some(&config)).await.unwrap();
        ecr.put(&default_scope("v1"), &n, &config, &Precondition::None, now)
            .await
            .unwrap();
        let got = drain_outbox(&s, &sink).await;
        let announced: Vec<String> = got.iter().map(|(e, _)| e.clone()).collect();
        let predicted: Vec<String> = predicted
            .changes
            .iter()
            .map(|c| c.endpoint_id.to_string())
            .collect();
        assert_eq!(announced, predicted, "after {config}");
        assert_eq!(announced.len(), expected, "after {config}");
        assert_eq!(
            got.iter()
                .find(|(e, _)| e == "e27")
                .and_then(|(_, c)| c.as_deref()),
            e27,
            "after {config}"
        );
    }
}

// ------------------------------------------------------------------------ REST

async fn call(
    app: &axum::Router,
    method: Method,
    uri: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    call_as(app, method, uri, body, "application/json").await
}

async fn call_as(
    app: &axum::Router,
    method: Method,
    uri: &str,
    body: Option<Value>,
    content_type: &str,
) -> (StatusCode, Value) {
    let mut req = Request::builder().method(method).uri(uri);
    if body.is_some() {
        req = req.header(header::CONTENT_TYPE, content_type);
    }
    let req = req
        .body(body.map_or_else(Body::empty, |b| Body::from(b.to_string())))
        .unwrap();
    let response = app.clone().oneshot(req).await.unwrap();
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

#[tokio::test]
async fn rest_groups_layers_explain_and_dry_runs() {
    let db = kaa_testkit::ecr::SqliteTestDb::create();
    let store = store::open(&db.url).await.unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut apps = AppVersions::open();
    apps.add_schema(
        "kettle",
        &json!({"type": "object", "properties": {"rate": {"type": "integer", "maximum": 100}}}),
    )
    .unwrap();
    let ecr = Arc::new(Ecr::new(Arc::clone(&store), apps, Some(tx)));
    let app_ = api::app(
        Arc::clone(&ecr),
        Authenticator::disabled(),
        1 << 20,
        Metrics::new("ecr"),
    );
    let a = &app_;
    let base = "/api/v1/app-versions/kettle";
    let (s, _) = call(
        a,
        Method::PUT,
        base,
        Some(json!({"rate": 10, "mode": "eco"})),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    for i in 0..20 {
        ecr.learn_endpoint(&ep(&format!("k{i:02}")), &app("kettle"))
            .await
            .unwrap();
    }
    while rx.try_recv().is_ok() {}

    // Groups.
    let (s, _) = call(a, Method::PUT, &format!("{base}/groups/north"), None).await;
    assert_eq!(s, StatusCode::CREATED);
    let (s, _) = call(a, Method::PUT, &format!("{base}/groups/north"), None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let members: Vec<String> = (0..5).map(|i| format!("k{i:02}")).collect();
    let (s, body) = call(
        a,
        Method::POST,
        &format!("{base}/groups/north/members"),
        Some(json!({"add": members})),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(body["added"], 5);
    assert_eq!(body["changed"], 0, "no layer targets it yet");
    let (s, body) = call(a, Method::GET, &format!("{base}/groups?size=1"), None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(body["content"][0]["members"], 5);
    let (s, body) = call(
        a,
        Method::GET,
        &format!("{base}/groups/north/members?page=1&size=2"),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(body["content"], json!(["k02", "k03"]));
    assert_eq!(body["totalElements"], 5);
    let (s, _) = call(
        a,
        Method::GET,
        &format!("{base}/groups/south/members"),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    // A layer: dry run first (nothing stored, nothing announced), then for real.
    let layer_body = json!({"priority": 10, "group": "north", "patch": {"rate": 50}});
    let (s, dry) = call(
        a,
        Method::PUT,
        &format!("{base}/layers/cold?dryRun=true"),
        Some(layer_body.clone()),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{dry}");
    assert_eq!(dry["dryRun"], true);
    assert_eq!(dry["changed"], 5);
    assert_eq!(
        dry["examples"][0]["patch"],
        json!([{"op": "replace", "path": "/rate", "value": 50}])
    );
    assert_eq!(dry["schema"][0]["valid"], true);
    assert_eq!(dry["schema"][0]["endpoints"], 5);
    assert!(rx.try_recv().is_err(), "a dry run announces nothing");
    let (s, _) = call(a, Method::GET, &format!("{base}/layers/cold"), None).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "a dry run stores nothing");
    let (s, body) = call(
        a,
        Method::PUT,
        &format!("{base}/layers/cold"),
        Some(layer_body),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(body["group"], "north");
    let mut announced = BTreeSet::new();
    while let Ok(c) = rx.try_recv() {
        assert_eq!(c.config.unwrap().content, r#"{"mode":"eco","rate":50}"#);
        announced.insert(c.endpoint_id.to_string());
    }
    assert_eq!(announced, members.iter().cloned().collect());
    // Effective and explain.
    let (s, body) = call(
        a,
        Method::GET,
        "/api/v1/endpoints/k01/app-versions/kettle/effective",
        None,
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(body["config"], r#"{"mode":"eco","rate":50}"#);
    let (s, body) = call(
        a,
        Method::GET,
        "/api/v1/endpoints/k01/app-versions/kettle/explain",
        None,
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(
        body["leaves"],
        json!([
            {"pointer": "/mode", "value": "eco", "source": "default", "layer": null, "rolloutId": null, "step": null},
            {"pointer": "/rate", "value": 50, "source": "layer", "layer": "cold", "rolloutId": null, "step": null},
        ])
    );
    // A dry run of a would-be schema violation says so, and stores nothing.
    let (s, dry) = call(
        a,
        Method::PUT,
        &format!("{base}/layers/hot?dryRun=true"),
        Some(json!({"priority": 1, "patch": {"rate": 500}})),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(dry["changed"], 15, "the layer is under `cold` for north");
    assert_eq!(dry["schema"][0]["valid"], false);
    // Dry runs of the other writes.
    let (s, dry) = call(
        a,
        Method::PUT,
        &format!("{base}?dryRun=true"),
        Some(json!({"rate": 11, "mode": "eco"})),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(dry["changed"], 15, "north keeps rate 50");
    let (s, dry) = call(
        a,
        Method::POST,
        &format!("{base}/groups/north/members?dryRun=true"),
        Some(json!({"remove": ["k00"], "add": ["k10"]})),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(dry["changed"], 2);
    let (s, dry) = call(
        a,
        Method::DELETE,
        "/api/v1/endpoints/k01/app-versions/kettle?dryRun=true",
        None,
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(dry["changed"], 0, "k01 has no own configuration");
    let (s, dry) = call(
        a,
        Method::PUT,
        "/api/v1/endpoints/k01/app-versions/kettle?dryRun=true",
        Some(json!({"rate": 1})),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(dry["changed"], 1);
    // The batch PUT: k01 (north, rate 50 by `cold`) would change; k10 and k11
    // already have the payload as their effective configuration.
    let batch = json!({
        "configPayload": {"rate": 10, "mode": "eco"},
        "endpoints": {"kettle": ["k11", "k01", "k10"]},
    });
    let (s, dry) = call(
        a,
        Method::PUT,
        "/api/v1/endpoints/batch?dryRun=true",
        Some(batch.clone()),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{dry}");
    assert_eq!(dry["dryRun"], true);
    assert_eq!(dry["changed"], 1, "{dry}");
    assert_eq!(dry["examples"][0]["endpointId"], "k01");
    assert_eq!(
        dry["examples"][0]["patch"],
        json!([{"op": "replace", "path": "/rate", "value": 10}])
    );
    assert_eq!(
        dry["schema"],
        json!([{"configId": dry["examples"][0]["afterConfigId"], "endpoints": 1, "valid": true, "violation": null}])
    );
    let (s, _) = call(
        a,
        Method::GET,
        "/api/v1/endpoints/k01/app-versions/kettle",
        None,
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "a batch dry run stores nothing");
    // Refused as the write is: a schema violation, an app version listing nothing.
    let (s, body) = call(
        a,
        Method::PUT,
        "/api/v1/endpoints/batch?dryRun=true",
        Some(json!({"configPayload": {"rate": 500}, "endpoints": {"kettle": ["k01"]}})),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{body}");
    let (s, _) = call(
        a,
        Method::PUT,
        "/api/v1/endpoints/batch?dryRun=true",
        Some(json!({"configPayload": 1, "endpoints": {"kettle": []}})),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    // An own configuration stored as a merge patch (k15, outside north): merged over
    // the default, announced, explained as the endpoint's patch.
    let patch_uri = "/api/v1/endpoints/k15/app-versions/kettle";
    const MERGE_PATCH: &str = "application/merge-patch+json";
    let (s, dry) = call_as(
        a,
        Method::PUT,
        &format!("{patch_uri}?dryRun=true"),
        Some(json!({"mode": "turbo"})),
        MERGE_PATCH,
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{dry}");
    assert_eq!(dry["changed"], 1);
    assert_eq!(
        dry["examples"][0]["patch"],
        json!([{"op": "replace", "path": "/mode", "value": "turbo"}])
    );
    assert!(rx.try_recv().is_err(), "a dry run announces nothing");
    let (s, body) = call_as(
        a,
        Method::PUT,
        patch_uri,
        Some(json!({"mode": "turbo"})),
        MERGE_PATCH,
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(body["mergePatch"], true);
    assert_eq!(body["config"], r#"{"mode":"turbo"}"#);
    let c = rx.try_recv().expect("the patch is announced");
    assert_eq!(c.endpoint_id.as_str(), "k15");
    assert_eq!(c.config.unwrap().content, r#"{"mode":"turbo","rate":10}"#);
    assert!(rx.try_recv().is_err());
    let (s, body) = call(a, Method::GET, patch_uri, None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(body["mergePatch"], true);
    let (s, body) = call(a, Method::GET, &format!("{patch_uri}/configurations"), None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(body[0]["mergePatch"], true);
    let (_, body) = call(a, Method::GET, &format!("{patch_uri}/effective"), None).await;
    assert_eq!(body["config"], r#"{"mode":"turbo","rate":10}"#);
    let (s, body) = call(a, Method::GET, &format!("{patch_uri}/explain"), None).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(body["leaves"][0]["source"], "endpoint-patch");
    assert_eq!(body["leaves"][1]["source"], "default");
    // Refused: a would-be document the schema refuses (dry run or not), a patch that
    // is not an object, a default as a patch. Nothing changes.
    for uri in [format!("{patch_uri}?dryRun=true"), patch_uri.to_owned()] {
        let (s, body) = call_as(
            a,
            Method::PUT,
            &uri,
            Some(json!({"rate": 500})),
            MERGE_PATCH,
        )
        .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{body}");
        assert!(
            body["message"].as_str().unwrap().contains("JSON Schema"),
            "{body}"
        );
    }
    let (s, _) = call_as(a, Method::PUT, patch_uri, Some(json!([1])), MERGE_PATCH).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, _) = call_as(a, Method::PUT, base, Some(json!({"rate": 1})), MERGE_PATCH).await;
    assert_eq!(
        s,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "a default is never a patch"
    );
    assert!(rx.try_recv().is_err(), "refused writes announce nothing");
    // Plain JSON stores a whole document again.
    let (s, body) = call(a, Method::PUT, patch_uri, Some(json!({"mode": "turbo"}))).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(body.get("mergePatch"), None);
    let c = rx
        .try_recv()
        .expect("whole: the effective configuration changed");
    assert_eq!(c.config.unwrap().content, r#"{"mode":"turbo"}"#);
    let (s, _) = call(a, Method::DELETE, patch_uri, None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    while rx.try_recv().is_ok() {}
    let (s, dry) = call(
        a,
        Method::DELETE,
        &format!("{base}/layers/cold?dryRun=true"),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(dry["changed"], 5);
    assert!(rx.try_recv().is_err(), "dry runs announce nothing");
    // A targeted group cannot be deleted.
    let (s, body) = call(a, Method::DELETE, &format!("{base}/groups/north"), None).await;
    assert_eq!(s, StatusCode::CONFLICT, "{body}");
    let (s, body) = call(a, Method::GET, &format!("{base}/layers"), None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(body.as_array().unwrap().len(), 1);
    let (s, _) = call(a, Method::DELETE, &format!("{base}/layers/cold"), None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let mut n = 0;
    while let Ok(c) = rx.try_recv() {
        assert_eq!(c.config.unwrap().content, r#"{"mode":"eco","rate":10}"#);
        n += 1;
    }
    assert_eq!(n, 5);
    let (s, _) = call(a, Method::DELETE, &format!("{base}/groups/north"), None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    // The OpenAPI document says both: the merge-patch body, the batch's dry run.
    let doc = api::openapi_json();
    let own = &doc["paths"]["/api/v1/endpoints/{endpointId}/app-versions/{appVersionName}"]["put"];
    assert_eq!(
        own["requestBody"]["content"]["application/merge-patch+json"]["schema"]["$ref"],
        "#/components/schemas/MergePatchJson",
        "{own}"
    );
    assert_eq!(
        doc["components"]["schemas"]["MergePatchJson"]["type"],
        "object"
    );
    assert!(own["requestBody"]["content"]["application/json"].is_object());
    let batch = &doc["paths"]["/api/v1/endpoints/batch"]["put"];
    assert!(
        batch["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == "dryRun"),
        "{batch}"
    );
    let required = doc["components"]["schemas"]["ConfigurationDto"]["required"].to_string();
    assert!(!required.contains("mergePatch"), "{required}");
}

// ------------------------------------------------------------- PostgreSQL model

/// One write of [`postgres_dry_runs_predict_the_outbox_announcements`].
#[derive(Debug, Clone)]
enum PgOp {
    PutLayer(usize, i64, Option<usize>, Value),
    DeleteLayer(usize),
    Members(usize, Vec<usize>, Vec<usize>),
    Default(Option<Value>),
    Own(usize, Option<Value>),
    OwnPatch(usize, Value),
    Batch(Vec<usize>, Value),
}

const PG_ENDPOINTS: usize = 6;

fn pg_patch() -> impl proptest::strategy::Strategy<Value = Value> {
    use proptest::prelude::*;
    let small = prop_oneof![
        (0i64..3).prop_map(|n| json!(n)),
        Just(Value::Null),
        (0i64..3).prop_map(|n| json!({"x": n})),
        (0i64..2).prop_map(|n| json!({"y": n, "x": null})),
    ];
    prop::collection::btree_map(prop::sample::select(vec!["a", "b", "c"]), small, 0..3)
        .prop_map(|m| Value::Object(m.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()))
}

fn pg_op() -> impl proptest::strategy::Strategy<Value = PgOp> {
    use proptest::prelude::*;
    let e = 0..PG_ENDPOINTS;
    prop_oneof![
        3 => (0usize..3, 0i64..3, prop::option::of(0usize..2), pg_patch())
            .prop_map(|(l, p, t, v)| PgOp::PutLayer(l, p, t, v)),
        1 => (0usize..3).prop_map(PgOp::DeleteLayer),
        2 => (0usize..2, prop::collection::vec(e.clone(), 0..3), prop::collection::vec(e.clone(), 0..2))
            .prop_map(|(g, a, r)| PgOp::Members(g, a, r)),
        2 => prop::option::of(pg_patch()).prop_map(PgOp::Default),
        1 => (e.clone(), prop::option::of(pg_patch())).prop_map(|(i, d)| PgOp::Own(i, d)),
        2 => (e.clone(), pg_patch()).prop_map(|(i, p)| PgOp::OwnPatch(i, p)),
        1 => (prop::collection::vec(e, 1..3), pg_patch()).prop_map(|(es, d)| PgOp::Batch(es, d)),
    ]
}

/// One generated sequence on its own app version of the shared database: before
/// every write its dry run, then the write, then the outbox drained; the dry run
/// names exactly the endpoints whose served config ID changed, and the outbox
/// announces those (a layer, membership or default write: only those; an endpoint
/// write: also the written endpoints whose row changed).
async fn pg_sequence(
    s: &Arc<dyn ConfigStore>,
    case: usize,
    ops: Vec<PgOp>,
) -> Result<(), proptest::test_runner::TestCaseError> {
    use proptest::{prop_assert, prop_assert_eq};
    let ecr = Ecr::new(Arc::clone(s), AppVersions::open(), None);
    let a = format!("p{case}");
    let (v, n) = (app(&a), name("default"));
    let now = UnixMillis(1_000);
    let e = |i: usize| ep(&format!("e{i}"));
    for i in 0..PG_ENDPOINTS {
        ecr.learn_endpoint(&e(i), &v).await.unwrap();
    }
    for g in ["g0", "g1"] {
        ecr.create_group(&v, &group(g), now).await.unwrap();
    }
    let sink = Collect(Mutex::new(Vec::new()));
    let served = || async {
        let mut out = Vec::new();
        for i in 0..PG_ENDPOINTS {
            out.push(
                ecr.effective(&e(i), &v, &n)
                    .await
                    .unwrap()
                    .map(|(c, _)| c.config_id),
            );
        }
        out
    };
    for op in ops {
        drain_outbox(s, &sink).await;
        let before = served().await;
        let own = |i: usize| ep_scope(&format!("e{i}"), &a);
        let predicted = match &op {
            PgOp::PutLayer(l, priority, target, patch) => {
                let l = layer(
                    &a,
                    "default",
                    &format!("l{l}"),
                    *priority,
                    target.map(|g| ["g0", "g1"][g]),
                    patch.clone(),
                );
                let (_, p) = ecr
                    .write_layer(&v, &n, LayerChange::Put(l.clone()), true, now)
                    .await
                    .unwrap();
                ecr.write_layer(&v, &n, LayerChange::Put(l), false, now)
                    .await
                    .unwrap();
                p
            }
            PgOp::DeleteLayer(l) => {
                let l = group(&format!("l{l}"));
                let (_, p) = ecr
                    .write_layer(&v, &n, LayerChange::Delete(l.clone()), true, now)
                    .await
                    .unwrap();
                ecr.write_layer(&v, &n, LayerChange::Delete(l), false, now)
                    .await
                    .unwrap();
                p
            }
            PgOp::Members(g, add, remove) => {
                let g = group(["g0", "g1"][*g]);
                let add: Vec<_> = add.iter().map(|i| e(*i)).collect();
                let remove: Vec<_> = remove.iter().map(|i| e(*i)).collect();
                let (_, p) = ecr
                    .change_members(&v, &g, &add, &remove, true, now)
                    .await
                    .unwrap();
                ecr.change_members(&v, &g, &add, &remove, false, now)
                    .await
                    .unwrap();
                p
            }
            PgOp::Default(d) => {
                let p = ecr.predict_default(&v, &n, d.as_ref()).await.unwrap();
                match d {
                    Some(d) => drop(
                        ecr.put(&default_scope(&a), &n, d, &Precondition::None, now)
                            .await
                            .unwrap(),
                    ),
                    None => drop(
                        ecr.delete(&default_scope(&a), &n, &Precondition::None)
                            .await
                            .unwrap(),
                    ),
                }
                p
            }
            PgOp::Own(i, d) => {
                let p = ecr
                    .predict_endpoint(&e(*i), &v, &n, d.as_ref())
                    .await
                    .unwrap();
                match d {
                    Some(d) => drop(
                        ecr.put(&own(*i), &n, d, &Precondition::None, now)
                            .await
                            .unwrap(),
                    ),
                    None => drop(ecr.delete(&own(*i), &n, &Precondition::None).await.unwrap()),
                }
                p
            }
            PgOp::OwnPatch(i, patch) => {
                let p = ecr
                    .predict_endpoint_patch(&e(*i), &v, &n, patch)
                    .await
                    .unwrap();
                ecr.put_patch(&own(*i), &n, patch, &Precondition::None, now)
                    .await
                    .unwrap();
                p
            }
            PgOp::Batch(es, d) => {
                let map = std::collections::BTreeMap::from([(
                    a.clone(),
                    es.iter().map(|i| format!("e{i}")).collect::<Vec<_>>(),
                )]);
                let mut p = ecr.predict_batch(&map, &n, d).await.unwrap();
                ecr.put_batch(&map, &n, d, now).await.unwrap();
                p.pop().unwrap().1
            }
        };
        let announced: BTreeSet<String> = drain_outbox(s, &sink)
            .await
            .into_iter()
            .map(|(e, _)| e)
            .collect();
        let predicted: BTreeSet<String> = predicted
            .changes
            .iter()
            .map(|c| c.endpoint_id.to_string())
            .collect();
        let after = served().await;
        let changed: BTreeSet<String> = (0..PG_ENDPOINTS)
            .filter(|i| before[*i] != after[*i])
            .map(|i| format!("e{i}"))
            .collect();
        prop_assert_eq!(&predicted, &changed, "predicted vs changed after {:?}", op);
        // An endpoint write whose row changed is announced from the outbox even when
        // its effective configuration stays the same (one "unchanged" answer): the
        // written endpoints may be announced beyond the prediction, nothing else.
        let written: BTreeSet<String> = match &op {
            PgOp::Own(i, _) | PgOp::OwnPatch(i, _) => BTreeSet::from([format!("e{i}")]),
            PgOp::Batch(es, _) => es.iter().map(|i| format!("e{i}")).collect(),
            _ => BTreeSet::new(),
        };
        prop_assert!(
            predicted.is_subset(&announced),
            "after {:?}: {:?} not all announced",
            op,
            predicted
        );
        let extra: BTreeSet<&String> = announced.difference(&predicted).collect();
        prop_assert!(
            extra.iter().all(|e| written.contains(*e)),
            "after {:?}: announced {:?} beyond the prediction",
            op,
            extra
        );
    }
    Ok(())
}

/// On PostgreSQL with durable announcements: random sequences of layer, membership,
/// default, own (whole and merge patch) and batch writes; before each, its dry run
/// names exactly the endpoints whose served configuration the write changes, and
/// the outbox announces them (see [`pg_sequence`] for the one allowance).
#[test]
fn postgres_dry_runs_predict_the_outbox_announcements() {
    use proptest::test_runner::{Config, TestRunner};
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let Some(db) = rt.block_on(kaa_testkit::ecr::PgTestDb::create(
        "layers::postgres_dry_runs_predict_the_outbox_announcements",
    )) else {
        return;
    };
    let s = rt.block_on(store::open(&db.url)).unwrap();
    assert!(s.enable_durable_announcements());
    let case = std::sync::atomic::AtomicUsize::new(0);
    let mut runner = TestRunner::new(Config {
        cases: 24,
        ..Config::default()
    });
    let result = runner.run(&proptest::collection::vec(pg_op(), 1..8), |ops| {
        let n = case.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        rt.block_on(pg_sequence(&s, n, ops))
    });
    drop(s);
    rt.block_on(async move { drop(db) });
    if let Err(e) = result {
        panic!("{e}");
    }
}
