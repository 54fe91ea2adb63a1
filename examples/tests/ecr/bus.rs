//! ECR on the bus: the 6/CDTP provider, `endpoint.config.updated` events, and the
//! `endpoint.config.applied` / 9/ELCE listeners. Each scenario runs on the in-memory
//! bus and on NATS (127.0.0.1:4222; skipped when unreachable unless
//! `KAA_REQUIRE_SERVICES=1`).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use kaa_bus::{Bus, MemoryBus, NatsBus, NatsConfig, Subscription};
use kaa_cdtp::{ConfigApplied, ConfigRequest, ConfigResponse, ConfigUpdated};
use kaa_elce::{ConnectedEvent, EventKind, RegisteredEvent, UnregisteredEvent};
use kaa_examples::ecr::bus::{self, BusSettings, BusTasks};
use kaa_examples::ecr::core::{AppVersions, Ecr};
use kaa_examples::ecr::model::{ConfigName, Scope, StatusQuery, now};
use kaa_examples::ecr::store::{self, Precondition};
use kaa_examples::service::Metrics;
use kaa_ism::avro::{Decode, Encode};
use kaa_testkit::ecr::{app, default_scope, ep, ep_scope};
use serde_json::json;

struct Harness {
    ecr: Arc<Ecr>,
    bus: Arc<dyn Bus>,
    instance: String,
    metrics: Metrics,
    _tasks: BusTasks,
    _db: kaa_testkit::ecr::SqliteTestDb,
}

async fn harness(bus: Arc<dyn Bus>) -> Harness {
    let db = kaa_testkit::ecr::SqliteTestDb::create();
    let store = store::open(&db.url).await.unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let mut apps = AppVersions::open();
    apps.add_version("kettleV1");
    apps.add_version("kettleV2");
    let ecr = Arc::new(Ecr::new(store, apps, Some(tx)));
    let id = uuid::Uuid::new_v4().simple().to_string();
    let instance = format!("ecr-{}", &id[..8]);
    let metrics = Metrics::new("ecr");
    let settings = BusSettings {
        instance: instance.clone(),
        replica_id: format!("{instance}-1"),
        cmx_instance: format!("cmx-{}", &id[..8]),
        elce_limits: kaa_elce::DecodeLimits::default(),
        metrics: metrics.clone(),
    };
    let tasks = bus::start(Arc::clone(&ecr), Arc::clone(&bus), settings, rx)
        .await
        .unwrap();
    Harness {
        ecr,
        bus,
        instance,
        metrics,
        _tasks: tasks,
        _db: db,
    }
}

fn request(endpoint: &str, app: &str, config_id: Option<&str>, name: Option<&str>) -> Vec<u8> {
    ConfigRequest {
        correlation_id: "corr-1".into(),
        timestamp: now().0,
        timeout: 3000,
        app_version_name: app.into(),
        endpoint_id: endpoint.into(),
        config_id: config_id.map(Into::into),
        config_name: name.map(Into::into),
    }
    .to_vec()
}

impl Harness {
    async fn ask(&self, datum: Vec<u8>) -> ConfigResponse<'static> {
        let reply = self
            .bus
            .request(
                &format!("kaa.v1.service.{}.cdtp.request", self.instance),
                Bytes::from(datum),
                Duration::from_secs(5),
            )
            .await
            .expect("every request is answered");
        ConfigResponse::decode(&reply.payload)
            .expect("a valid ConfigResponse")
            .into_owned()
    }

    async fn put(&self, scope: Scope, name: &str, value: serde_json::Value) -> String {
        self.ecr
            .put(
                &scope,
                &ConfigName::new(name).unwrap(),
                &value,
                &Precondition::None,
                now(),
            )
            .await
            .unwrap()
            .config
            .config_id
    }

    async fn statuses(&self, endpoint: &str) -> Vec<(String, String, Option<i32>, Option<String>)> {
        let page = self
            .ecr
            .statuses(&StatusQuery {
                endpoint_id: ep(endpoint),
                app_version: None,
                config_id: None,
                page: 0,
                size: 100,
            })
            .await
            .unwrap();
        page.content
            .into_iter()
            .map(|r| {
                (
                    r.config_id,
                    r.status.as_str().to_owned(),
                    r.status_code,
                    r.reason_phrase,
                )
            })
            .collect()
    }
}

async fn next_updated(sub: &mut Subscription) -> ConfigUpdated<'static> {
    let m = tokio::time::timeout(Duration::from_secs(5), sub.next())
        .await
        .expect("an event in time")
        .expect("subscription open");
    ConfigUpdated::decode(&m.payload)
        .expect("a valid ConfigUpdated")
        .into_owned()
}

async fn assert_no_event(sub: &mut Subscription) {
    assert!(
        tokio::time::timeout(Duration::from_millis(200), sub.next())
            .await
            .is_err(),
        "unexpected event"
    );
}

/// Polls `check` until it holds (events are handled asynchronously).
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..100 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("never happened: {what}");
}

async fn cdtp_provider_answers_every_request(bus: Arc<dyn Bus>) {
    let h = harness(bus).await;
    // Nothing stored: the 7/CMP absent configuration.
    let r = h.ask(request("e1", "kettleV1", None, None)).await;
    assert_eq!((r.status_code, r.config_id.as_deref()), (200, Some("")));
    assert_eq!(r.content.as_deref(), Some(&b"null"[..]));
    assert_eq!(
        (
            r.correlation_id.as_ref(),
            r.endpoint_id.as_ref(),
            r.app_version_name.as_ref()
        ),
        ("corr-1", "e1", "kettleV1")
    );
    // ... and a consumer that knows "absent" gets "unchanged".
    let r = h.ask(request("e1", "kettleV1", Some(""), None)).await;
    assert_eq!(
        (r.status_code, r.config_id.as_deref(), r.content.as_deref()),
        (200, None, None)
    );

    // The default, then the endpoint's own configuration.
    let default_id = h
        .put(
            default_scope("kettleV1"),
            "default",
            json!({"sampling": 60}),
        )
        .await;
    let r = h.ask(request("e1", "kettleV1", None, None)).await;
    assert_eq!(
        (r.status_code, r.config_id.as_deref()),
        (200, Some(default_id.as_str()))
    );
    assert_eq!(r.content.as_deref(), Some(&br#"{"sampling":60}"#[..]));
    assert_eq!(r.content_type, "application/json");
    let own_id = h
        .put(
            ep_scope("e1", "kettleV1"),
            "default",
            json!({"sampling": 5}),
        )
        .await;
    let r = h
        .ask(request("e1", "kettleV1", Some(&default_id), None))
        .await;
    assert_eq!(r.config_id.as_deref(), Some(own_id.as_str()));
    assert_eq!(r.content.as_deref(), Some(&br#"{"sampling":5}"#[..]));

    // The current ID: unchanged, and recorded as implicitly applied.
    let r = h.ask(request("e1", "kettleV1", Some(&own_id), None)).await;
    assert_eq!(
        (r.status_code, r.config_id.as_deref(), r.content.as_deref()),
        (200, None, None)
    );
    let statuses = h.statuses("e1").await;
    assert!(
        statuses.contains(&(
            own_id.clone(),
            "APPLIED".into(),
            Some(200),
            Some("Implicitly applied".into())
        )),
        "{statuses:?}"
    );
    assert!(
        statuses
            .iter()
            .any(|s| s.0 == default_id && s.1 == "DISPATCHED"),
        "{statuses:?}"
    );

    // Named configurations: only the named default applies.
    let r = h
        .ask(request("e1", "kettleV1", None, Some("network")))
        .await;
    assert_eq!(r.config_id.as_deref(), Some(""));
    let net = h
        .put(default_scope("kettleV1"), "network", json!({"wifi": true}))
        .await;
    let r = h
        .ask(request("e1", "kettleV1", None, Some("network")))
        .await;
    assert_eq!(r.config_id.as_deref(), Some(net.as_str()));
    let r = h
        .ask(request("e1", "kettleV1", None, Some("default")))
        .await;
    assert_eq!(
        r.config_id.as_deref(),
        Some(own_id.as_str()),
        "configName \"default\" is the unnamed one"
    );

    // Bad requests get an answer too.
    let r = h.ask(b"\x02garbage".to_vec()).await;
    assert_eq!((r.status_code, r.config_id.as_deref()), (400, None));
    assert!(
        r.reason_phrase
            .as_deref()
            .unwrap()
            .contains("ConfigRequest"),
        "{:?}",
        r.reason_phrase
    );
    for bad in [
        request("a.b", "kettleV1", None, None),
        request("e1", "kettle/V1", None, None),
        request("e1", "kettleV1", None, Some("bad name")),
    ] {
        let r = h.ask(bad).await;
        assert_eq!(r.status_code, 400, "{:?}", r.reason_phrase);
        assert_eq!(r.correlation_id, "corr-1");
    }
    let r = h.ask(request("e1", "kettleV9", None, None)).await;
    assert_eq!(r.status_code, 404);
    assert!(r.reason_phrase.as_deref().unwrap().contains("kettleV9"));
    let text = h.metrics.render();
    assert!(
        text.contains("ecr_cdtp_requests_total{status=\"400\"} 4"),
        "{text}"
    );
    assert!(
        text.contains("ecr_cdtp_requests_total{status=\"404\"} 1"),
        "{text}"
    );
}

async fn config_updated_events(bus: Arc<dyn Bus>) {
    let h = harness(Arc::clone(&bus)).await;
    let mut sub = bus
        .subscribe(
            &format!("kaa.v1.events.{}.endpoint.config.updated", h.instance),
            None,
        )
        .await
        .unwrap();
    bus.flush().await.unwrap();

    let id = h
        .put(ep_scope("e1", "kettleV1"), "default", json!({"a": 1}))
        .await;
    let ev = next_updated(&mut sub).await;
    assert_eq!(
        (
            ev.endpoint_id.as_ref(),
            ev.app_version_name.as_ref(),
            ev.config_id.as_ref()
        ),
        ("e1", "kettleV1", id.as_str())
    );
    assert_eq!(ev.content.as_ref(), br#"{"a":1}"#);
    assert_eq!(ev.config_name, None);
    assert_eq!(
        ev.originator_replica_id.as_deref(),
        Some(format!("{}-1", h.instance).as_str())
    );

    h.put(ep_scope("e1", "kettleV1"), "default", json!({"a": 1}))
        .await;
    assert_no_event(&mut sub).await;

    let named = h
        .put(ep_scope("e1", "kettleV1"), "network", json!({"w": 1}))
        .await;
    let ev = next_updated(&mut sub).await;
    assert_eq!(
        (ev.config_id.as_ref(), ev.config_name.as_deref()),
        (named.as_str(), Some("network"))
    );

    // A default change reaches the endpoints ECR learned of (from a request here).
    h.ask(request("e2", "kettleV1", None, None)).await;
    let d = h
        .put(default_scope("kettleV1"), "default", json!({"d": 1}))
        .await;
    let ev = next_updated(&mut sub).await;
    assert_eq!(
        (ev.endpoint_id.as_ref(), ev.config_id.as_ref()),
        ("e2", d.as_str())
    );
    assert_no_event(&mut sub).await; // e1 has its own

    // Deleting e1's own configuration: it now follows the default.
    h.ecr
        .delete(
            &ep_scope("e1", "kettleV1"),
            &ConfigName::default_name(),
            &Precondition::None,
        )
        .await
        .unwrap();
    let ev = next_updated(&mut sub).await;
    assert_eq!(
        (ev.endpoint_id.as_ref(), ev.config_id.as_ref()),
        ("e1", d.as_str())
    );
}

async fn listeners_record_and_learn(bus: Arc<dyn Bus>) {
    // Lifecycle events are broadcasts every ECR on the bus handles (any originator), so on
    // a shared NATS the endpoint IDs here must not collide with other tests' (`u-` prefix).
    let h = harness(Arc::clone(&bus)).await;
    let cmx = h.instance.replace("ecr-", "cmx-");
    let id = h
        .put(ep_scope("u-e1", "kettleV1"), "default", json!(1))
        .await;

    // endpoint.config.applied from the configured CMX goes to the status history.
    let applied = |code: i32, reason: Option<&'static str>| ConfigApplied {
        correlation_id: "c".into(),
        timestamp: now().0,
        timeout: 0,
        app_version_name: "kettleV1".into(),
        endpoint_id: "u-e1".into(),
        config_id: id.clone().into(),
        originator_replica_id: None,
        status_code: code,
        reason_phrase: reason.map(std::borrow::Cow::Borrowed),
        config_name: None,
    };
    let subject = format!("kaa.v1.events.{cmx}.endpoint.config.applied");
    bus.publish(
        &subject,
        Bytes::from(applied(400, Some("bad value")).to_vec()),
    )
    .await
    .unwrap();
    eventually("rejection recorded", || async {
        h.statuses("u-e1")
            .await
            .iter()
            .any(|s| s.1 == "REJECTED" && s.3.as_deref() == Some("bad value"))
    })
    .await;
    bus.publish(&subject, Bytes::from(applied(200, None).to_vec()))
        .await
        .unwrap();
    eventually("application recorded", || async {
        h.statuses("u-e1")
            .await
            .iter()
            .any(|s| s.1 == "APPLIED" && s.2 == Some(200))
    })
    .await;
    // Another CMX's events are not ECR's business; garbage is ignored.
    bus.publish(
        "kaa.v1.events.other-cmx.endpoint.config.applied",
        Bytes::from(applied(500, None).to_vec()),
    )
    .await
    .unwrap();
    bus.publish(&subject, Bytes::from_static(b"\xff\xff"))
        .await
        .unwrap();

    // Lifecycle and connectivity events teach ECR its endpoints (any originator).
    let registered = RegisteredEvent {
        correlation_id: "c".into(),
        timestamp: now().0,
        timeout: 0,
        app_version_name: "kettleV2".into(),
        endpoint_id: "u-r1".into(),
        originator_replica_id: "epr-1".into(),
    };
    bus.publish(
        &EventKind::Registered.subject("epr").unwrap().to_string(),
        Bytes::from(registered.to_vec()),
    )
    .await
    .unwrap();
    let connected = ConnectedEvent {
        correlation_id: "c".into(),
        timestamp: now().0,
        timeout: 0,
        endpoints: vec![("u-c1".into(), "kettleV2".into())],
        originator_replica_id: "kpc-1".into(),
    };
    bus.publish(
        &EventKind::Connected.subject("kpc").unwrap().to_string(),
        Bytes::from(connected.to_vec()),
    )
    .await
    .unwrap();
    eventually("endpoints learned", || async {
        h.ecr
            .store()
            .endpoints_following_default(&app("kettleV2"), &ConfigName::default_name())
            .await
            .unwrap()
            == [ep("u-c1"), ep("u-r1")]
    })
    .await;

    // Unregistered (any originator): everything about the endpoint goes.
    h.put(ep_scope("u-e1", "kettleV2"), "network", json!(2))
        .await;
    let unregistered = UnregisteredEvent {
        correlation_id: "c".into(),
        timestamp: now().0,
        timeout: 0,
        app_version_name: "kettleV1".into(),
        endpoint_id: "u-e1".into(),
        originator_replica_id: "epr-1".into(),
    };
    bus.publish(
        &EventKind::Unregistered.subject("epr").unwrap().to_string(),
        Bytes::from(unregistered.to_vec()),
    )
    .await
    .unwrap();
    eventually("configurations deleted", || async {
        h.ecr
            .store()
            .list(&ep_scope("u-e1", "kettleV1"))
            .await
            .unwrap()
            .is_empty()
            && h.ecr
                .store()
                .list(&ep_scope("u-e1", "kettleV2"))
                .await
                .unwrap()
                .is_empty()
    })
    .await;
    assert!(h.statuses("u-e1").await.is_empty());
}

async fn nats() -> Option<Arc<dyn Bus>> {
    let url = kaa_bus::test_support::NATS.require("ecr::bus::nats")?;
    Some(Arc::new(
        NatsBus::connect(&NatsConfig::new([url]))
            .await
            .expect("connect to NATS"),
    ))
}

#[tokio::test]
async fn memory_cdtp_provider_answers_every_request() {
    cdtp_provider_answers_every_request(Arc::new(MemoryBus::new())).await;
}
#[tokio::test]
async fn memory_config_updated_events() {
    config_updated_events(Arc::new(MemoryBus::new())).await;
}
#[tokio::test]
async fn memory_listeners_record_and_learn() {
    listeners_record_and_learn(Arc::new(MemoryBus::new())).await;
}
#[tokio::test]
async fn nats_cdtp_provider_answers_every_request() {
    if let Some(bus) = nats().await {
        cdtp_provider_answers_every_request(bus).await;
    }
}
#[tokio::test]
async fn nats_config_updated_events() {
    if let Some(bus) = nats().await {
        config_updated_events(bus).await;
    }
}
#[tokio::test]
async fn nats_listeners_record_and_learn() {
    if let Some(bus) = nats().await {
        listeners_record_and_learn(bus).await;
    }
}
