//! REST API tests: every route, status code and header, bad input, authentication,
//! the OpenAPI document, and the effective-configuration changes behind the events.
//! The axum router is driven in-process (tower `oneshot`) over the SQLite store.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode, header};
use kaa_examples::ecr::api::{self, Authenticator};
use kaa_examples::ecr::config::Access;
use kaa_examples::ecr::core::{AppVersions, Ecr, EffectiveChange};
use kaa_examples::ecr::model::{AppVersionName, ConfigName, EndpointId, Scope, StatusEvent};
use kaa_examples::ecr::store::{self, ConfigStore};
use kaa_examples::service::Metrics;
use kaa_ism::UnixMillis;
use serde_json::{Value, json};
use tokio::sync::mpsc::UnboundedReceiver;
use tower::ServiceExt;

struct Harness {
    app: Router,
    ecr: Arc<Ecr>,
    store: Arc<dyn ConfigStore>,
    changes: UnboundedReceiver<EffectiveChange>,
    _db: kaa_testkit::ecr::SqliteTestDb,
}

async fn harness_with(auth: Authenticator, apps: AppVersions, body_limit: usize) -> Harness {
    let db = kaa_testkit::ecr::SqliteTestDb::create();
    let store = store::open(&db.url).await.unwrap();
    let (tx, changes) = tokio::sync::mpsc::unbounded_channel();
    let ecr = Arc::new(Ecr::new(Arc::clone(&store), apps, Some(tx)));
    let app = api::app(Arc::clone(&ecr), auth, body_limit, Metrics::new("ecr"));
    Harness {
        app,
        ecr,
        store,
        changes,
        _db: db,
    }
}

async fn harness() -> Harness {
    harness_with(Authenticator::disabled(), AppVersions::open(), 1024 * 1024).await
}

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Value,
    text: String,
}

impl Reply {
    fn etag(&self) -> Option<&str> {
        self.headers.get(header::ETAG).map(|v| v.to_str().unwrap())
    }
    /// Asserts the `{"message"}` error shape and returns the message.
    fn message(&self) -> &str {
        assert_eq!(
            self.headers
                .get(header::CONTENT_TYPE)
                .map(|v| v.to_str().unwrap()),
            Some("application/json"),
            "error without JSON content type: {} {}",
            self.status,
            self.text
        );
        let obj = self
            .body
            .as_object()
            .unwrap_or_else(|| panic!("not an object: {}", self.text));
        assert_eq!(obj.len(), 1, "error body has other fields: {}", self.text);
        let m = obj["message"].as_str().unwrap();
        assert!(!m.is_empty());
        m
    }
}

async fn call(
    app: &Router,
    method: Method,
    uri: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> Reply {
    let mut req = Request::builder().method(method).uri(uri);
    let mut has_ct = false;
    for (k, v) in headers {
        has_ct |= k.eq_ignore_ascii_case("content-type");
        req = req.header(*k, *v);
    }
    if body.is_some() && !has_ct {
        req = req.header(header::CONTENT_TYPE, "application/json");
    }
    let req = req
        .body(body.map_or_else(Body::empty, |b| Body::from(b.to_owned())))
        .unwrap();
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Reply {
        status,
        headers,
        body,
        text,
    }
}

async fn put(app: &Router, uri: &str, body: &str) -> Reply {
    call(app, Method::PUT, uri, &[], Some(body)).await
}
async fn get(app: &Router, uri: &str) -> Reply {
    call(app, Method::GET, uri, &[], None).await
}

const EP: &str = "/api/v1/endpoints/ep-1/app-versions/kettleV1";
const DEF: &str = "/api/v1/app-versions/kettleV1";

fn drain(rx: &mut UnboundedReceiver<EffectiveChange>) -> Vec<EffectiveChange> {
    let mut out = Vec::new();
    while let Ok(c) = rx.try_recv() {
        out.push(c);
    }
    out
}

async fn store_is_empty(h: &Harness) {
    for scope in [
        Scope::Endpoint {
            endpoint_id: EndpointId::new("ep-1").unwrap(),
            app_version: AppVersionName::new("kettleV1").unwrap(),
        },
        Scope::Default {
            app_version: AppVersionName::new("kettleV1").unwrap(),
        },
    ] {
        assert!(
            h.store.list(&scope).await.unwrap().is_empty(),
            "store changed: {scope:?}"
        );
    }
}

#[tokio::test]
async fn endpoint_configuration_put_get_delete() {
    let h = harness().await;
    let r = put(
        &h.app,
        EP,
        r#"{ "sampling": 200, "alarm": {"max": 90, "min": 5} }"#,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let id = r.body["configId"].as_str().unwrap().to_owned();
    assert_eq!(id.len(), 32);
    assert_eq!(r.etag(), Some(format!("\"{id}\"").as_str()));
    // `config` is the JSON as a string (canonical: sorted keys, no whitespace).
    assert_eq!(
        r.body["config"],
        r#"{"alarm":{"max":90,"min":5},"sampling":200}"#
    );
    assert_eq!(r.body["name"], "default");
    let created = r.body["createdDate"].as_str().unwrap().to_owned();
    assert!(created.ends_with('Z') && created.len() == 24, "{created}");
    assert_eq!(r.body["updatedDate"], created.as_str());
    let keys: Vec<&str> = r
        .body
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(keys.len(), 5, "{keys:?}");

    let g = get(&h.app, EP).await;
    assert_eq!(g.status, StatusCode::OK);
    assert_eq!(g.etag(), r.etag());
    assert_eq!(g.body, r.body);

    // Same content, other formatting: same ID, nothing updated.
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let again = put(&h.app, EP, r#"{"alarm":{"min":5,"max":90},"sampling":200}"#).await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(again.body, r.body);

    let d = call(&h.app, Method::DELETE, EP, &[], None).await;
    assert_eq!(d.status, StatusCode::NO_CONTENT);
    assert!(d.text.is_empty());
    let g = get(&h.app, EP).await;
    assert_eq!(g.status, StatusCode::NOT_FOUND);
    assert!(g.message().contains("ep-1"));
    let d = call(&h.app, Method::DELETE, EP, &[], None).await;
    assert_eq!(d.status, StatusCode::NOT_FOUND);
    d.message();
}

#[tokio::test]
async fn named_configurations_and_listings() {
    let h = harness().await;
    assert_eq!(
        put(&h.app, &format!("{EP}?name=network"), r#"{"wifi":"on"}"#)
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(put(&h.app, EP, "1").await.status, StatusCode::OK);
    // `?name=default` is the unnamed configuration.
    let r = get(&h.app, &format!("{EP}?name=default")).await;
    assert_eq!(
        (r.status, r.body["config"].as_str()),
        (StatusCode::OK, Some("1"))
    );
    let r = get(&h.app, &format!("{EP}?name=network")).await;
    assert_eq!(r.body["name"], "network");
    assert_eq!(
        get(&h.app, &format!("{EP}?name=other")).await.status,
        StatusCode::NOT_FOUND
    );

    let l = get(&h.app, &format!("{EP}/configurations")).await;
    assert_eq!(l.status, StatusCode::OK);
    let names: Vec<&str> = l
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["default", "network"]);
    let empty = get(
        &h.app,
        "/api/v1/endpoints/ep-2/app-versions/kettleV1/configurations",
    )
    .await;
    assert_eq!(empty.body, json!([]));

    assert_eq!(
        put(&h.app, &format!("{DEF}?name=network"), r#"{"wifi":"off"}"#)
            .await
            .status,
        StatusCode::OK
    );
    let l = get(&h.app, &format!("{DEF}/configurations")).await;
    assert_eq!(l.body.as_array().unwrap().len(), 1);
    assert_eq!(l.body[0]["config"], r#"{"wifi":"off"}"#);
}

#[tokio::test]
async fn default_configuration_put_get_delete() {
    let h = harness().await;
    assert_eq!(get(&h.app, DEF).await.status, StatusCode::NOT_FOUND);
    let r = put(&h.app, DEF, r#"{"sampling": 60}"#).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.etag().is_some());
    let g = get(&h.app, DEF).await;
    assert_eq!((g.status, g.etag()), (StatusCode::OK, r.etag()));
    // The endpoint configuration is separate.
    assert_eq!(get(&h.app, EP).await.status, StatusCode::NOT_FOUND);
    assert_eq!(
        call(&h.app, Method::DELETE, DEF, &[], None).await.status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(get(&h.app, DEF).await.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn if_match_gives_optimistic_locking() {
    let h = harness().await;
    // If-Match on nothing: 412, nothing stored.
    for tag in ["*", "\"abc\""] {
        let r = call(&h.app, Method::PUT, EP, &[("if-match", tag)], Some("1")).await;
        assert_eq!(r.status, StatusCode::PRECONDITION_FAILED);
        r.message();
    }
    store_is_empty(&h).await;

    let first = put(&h.app, EP, "1").await;
    let etag = first.etag().unwrap().to_owned();
    for tag in ["\"stale\"", "W/\"x\""] {
        let r = call(&h.app, Method::PUT, EP, &[("if-match", tag)], Some("2")).await;
        assert_eq!(r.status, StatusCode::PRECONDITION_FAILED);
        assert_eq!(
            r.etag(),
            Some(etag.as_str()),
            "412 carries the current ETag"
        );
        r.message();
    }
    let weak = call(
        &h.app,
        Method::PUT,
        EP,
        &[("if-match", &format!("W/{etag}"))],
        Some("2"),
    )
    .await;
    assert_eq!(
        weak.status,
        StatusCode::PRECONDITION_FAILED,
        "weak tags never match"
    );
    assert_eq!(get(&h.app, EP).await.body["config"], "1", "nothing changed");

    let ok = call(
        &h.app,
        Method::PUT,
        EP,
        &[("if-match", &format!("\"other\", {etag}"))],
        Some("2"),
    )
    .await;
    assert_eq!(ok.status, StatusCode::OK);
    let new_etag = ok.etag().unwrap().to_owned();
    assert_ne!(new_etag, etag);
    assert_eq!(
        call(&h.app, Method::PUT, EP, &[("if-match", "*")], Some("3"))
            .await
            .status,
        StatusCode::OK
    );

    // DELETE honours If-Match too.
    let d = call(&h.app, Method::DELETE, EP, &[("if-match", &new_etag)], None).await;
    assert_eq!(d.status, StatusCode::PRECONDITION_FAILED);
    assert_eq!(get(&h.app, EP).await.body["config"], "3");
    let cur = get(&h.app, EP).await.etag().unwrap().to_owned();
    let d = call(&h.app, Method::DELETE, EP, &[("if-match", &cur)], None).await;
    assert_eq!(d.status, StatusCode::NO_CONTENT);
}

#[tokio::test]
async fn batch_writes_every_endpoint() {
    let h = harness().await;
    put(
        &h.app,
        "/api/v1/endpoints/e2/app-versions/kettleV1?name=net",
        r#"{"x":1}"#,
    )
    .await;
    let body = r#"{"configPayload": {"x": 1}, "endpoints": {"kettleV1": ["e1", "e2", "e1"], "kettleV2": ["e3"]}}"#;
    let r = put(&h.app, "/api/v1/endpoints/batch?name=net", body).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["changed"], 2);
    assert_eq!(r.body["unchanged"], 1);
    assert_eq!(r.body["name"], "net");
    let id = r.body["configId"].as_str().unwrap();
    assert_eq!(r.etag(), Some(format!("\"{id}\"").as_str()));
    for (e, a) in [("e1", "kettleV1"), ("e2", "kettleV1"), ("e3", "kettleV2")] {
        let g = get(
            &h.app,
            &format!("/api/v1/endpoints/{e}/app-versions/{a}?name=net"),
        )
        .await;
        assert_eq!(g.body["configId"], id);
    }
    // One invalid endpoint ID or app version: 400 and nothing written.
    for bad in [
        r#"{"configPayload": 2, "endpoints": {"kettleV1": ["ok-1", "bad.id"]}}"#,
        r#"{"configPayload": 2, "endpoints": {"kettleV1": ["ok-1"], "bad/app": ["ok-2"]}}"#,
        r#"{"configPayload": 2, "endpoints": {}}"#,
        // An app version listing no endpoint, beside one that lists some.
        r#"{"configPayload": 2, "endpoints": {"kettleV1": ["ok-1"], "kettleV2": []}}"#,
        r#"{"endpoints": {"kettleV1": ["ok-1"]}}"#,
        r#"{"configPayload": 2, "endpoints": {"kettleV1": ["ok-1"]}, "extra": 1}"#,
        r#"{"configPayload": 2, "endpoints": ["ok-1"]}"#,
    ] {
        let r = put(&h.app, "/api/v1/endpoints/batch", bad).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad}: {}", r.text);
        r.message();
        let g = get(&h.app, "/api/v1/endpoints/ok-1/app-versions/kettleV1").await;
        assert_eq!(g.status, StatusCode::NOT_FOUND, "{bad} wrote something");
    }
    let r = put(
        &h.app,
        "/api/v1/endpoints/batch?name=bad.name",
        r#"{"configPayload": 2, "endpoints": {"kettleV1": ["ok-1"]}}"#,
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn statuses_are_paged_spring_style() {
    let h = harness().await;
    let e = EndpointId::new("ep-1").unwrap();
    let n = ConfigName::default_name();
    for (i, app) in ["kettleV1", "kettleV1", "kettleV1", "kettleV2"]
        .iter()
        .enumerate()
    {
        h.ecr
            .record_status(
                &e,
                &AppVersionName::new(*app).unwrap(),
                &n,
                &format!("id{i}"),
                &StatusEvent::Dispatched,
                UnixMillis(1000 + i as i64),
            )
            .await
            .unwrap();
    }
    h.ecr
        .record_status(
            &e,
            &AppVersionName::new("kettleV1").unwrap(),
            &n,
            "id0",
            &StatusEvent::Confirmed {
                status_code: 200,
                reason_phrase: Some("OK".into()),
            },
            UnixMillis(2000),
        )
        .await
        .unwrap();
    let r = get(&h.app, "/api/v1/statuses?endpointId=ep-1&size=3").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["totalElements"], 4);
    assert_eq!(r.body["totalPages"], 2);
    assert_eq!(r.body["number"], 0);
    assert_eq!(r.body["size"], 3);
    assert_eq!(r.body["first"], true);
    assert_eq!(r.body["last"], false);
    let first = &r.body["content"][0];
    assert_eq!(first["configId"], "id0");
    assert_eq!(first["status"], "APPLIED");
    assert_eq!(first["statusCode"], 200);
    assert_eq!(first["reasonPhrase"], "OK");
    assert_eq!(first["lastDispatchedDate"], "1970-01-01T00:00:01.000Z");
    assert_eq!(first["lastConfirmedDate"], "1970-01-01T00:00:02.000Z");
    assert_eq!(first["appVersionName"], "kettleV1");
    assert_eq!(first["endpointId"], "ep-1");

    let p2 = get(&h.app, "/api/v1/statuses?endpointId=ep-1&size=3&page=1").await;
    assert_eq!(p2.body["content"].as_array().unwrap().len(), 1);
    assert_eq!(p2.body["last"], true);
    let v2 = get(
        &h.app,
        "/api/v1/statuses?endpointId=ep-1&appVersionName=kettleV2",
    )
    .await;
    assert_eq!(v2.body["totalElements"], 1);
    assert_eq!(v2.body["size"], 20, "default page size");
    let one = get(&h.app, "/api/v1/statuses?endpointId=ep-1&configId=id2").await;
    assert_eq!(one.body["content"][0]["status"], "DISPATCHED");
    assert_eq!(one.body["content"][0]["lastConfirmedDate"], Value::Null);
    let none = get(&h.app, "/api/v1/statuses?endpointId=nobody").await;
    assert_eq!(
        (
            none.body["totalElements"].as_u64(),
            none.body["empty"].as_bool()
        ),
        (Some(0), Some(true))
    );

    for bad in [
        "/api/v1/statuses",
        "/api/v1/statuses?endpointId=ep-1&size=0",
        "/api/v1/statuses?endpointId=ep-1&size=1001",
        "/api/v1/statuses?endpointId=ep-1&page=-1",
        "/api/v1/statuses?endpointId=ep-1&page=x",
        "/api/v1/statuses?endpointId=a.b",
        "/api/v1/statuses?endpointId=ep-1&appVersionName=a%20b",
    ] {
        let r = get(&h.app, bad).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad}");
        r.message();
    }
}

#[tokio::test]
async fn json_schema_and_known_app_versions() {
    let mut apps = AppVersions::open();
    apps.add_schema(
        "kettleV1",
        &json!({"type": "object", "properties": {"sampling": {"type": "integer", "minimum": 1}}, "required": ["sampling"]}),
    )
    .unwrap();
    apps.add_version("kettleV2");
    let h = harness_with(Authenticator::disabled(), apps, 1 << 20).await;
    let r = put(&h.app, EP, r#"{"sampling": 0}"#).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let m = r.message();
    assert!(m.contains("/sampling") && m.contains("kettleV1"), "{m}");
    let r = put(&h.app, DEF, r#"{"other": 1}"#).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.message().contains("JSON path /"), "{}", r.text);
    store_is_empty(&h).await;
    assert_eq!(
        put(&h.app, EP, r#"{"sampling": 5}"#).await.status,
        StatusCode::OK
    );
    // No schema for kettleV2: anything goes. kettleV3 is not configured.
    assert_eq!(
        put(&h.app, "/api/v1/app-versions/kettleV2", "[1]")
            .await
            .status,
        StatusCode::OK
    );
    let r = put(&h.app, "/api/v1/app-versions/kettleV3", "1").await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.message().contains("kettleV3"));
    let r = get(&h.app, "/api/v1/app-versions/kettleV3").await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let r = put(
        &h.app,
        "/api/v1/endpoints/batch",
        r#"{"configPayload": {"sampling": -1}, "endpoints": {"kettleV1": ["x"]}}"#,
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.message().contains("/sampling"));
}

#[tokio::test]
async fn bad_input_is_a_clear_4xx_and_changes_nothing() {
    let h = harness_with(Authenticator::disabled(), AppVersions::open(), 64).await;
    // Malformed JSON.
    for body in ["{", "{\"a\":}", "", "nul"] {
        let r = put(&h.app, EP, body).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body:?}");
        assert!(r.message().contains("malformed JSON"));
    }
    // Wrong or missing content type.
    for ct in ["text/plain", "application/xml", "application/jsonx"] {
        let r = call(&h.app, Method::PUT, EP, &[("content-type", ct)], Some("1")).await;
        assert_eq!(r.status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{ct}");
        r.message();
    }
    let r = h
        .app
        .clone()
        .oneshot(Request::put(EP).body(Body::from("1")).unwrap())
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    // `application/json; charset=utf-8` and `+json` are fine.
    let ok = call(
        &h.app,
        Method::PUT,
        "/api/v1/app-versions/other",
        &[("content-type", "application/json; charset=utf-8")],
        Some("1"),
    )
    .await;
    assert_eq!(ok.status, StatusCode::OK);
    h.store
        .delete(
            &Scope::Default {
                app_version: AppVersionName::new("other").unwrap(),
            },
            &ConfigName::default_name(),
            &kaa_examples::ecr::store::Precondition::None,
        )
        .await
        .unwrap();
    // Oversized bodies (limit 64 bytes here).
    let big = format!("{{\"pad\": \"{}\"}}", "x".repeat(100));
    let r = put(&h.app, EP, &big).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    r.message();
    let r = put(&h.app, "/api/v1/endpoints/batch", &big).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    // Names that would break a NATS subject or an MQTT topic.
    for bad_ep in [
        "a.b", "a*", "a%3E", "a%2Fb", "a+b", "a%23b", "a%20b", "a%09b", "a%00b",
    ] {
        for uri in [
            format!("/api/v1/endpoints/{bad_ep}/app-versions/kettleV1"),
            format!("/api/v1/endpoints/ep-1/app-versions/{bad_ep}"),
            format!("/api/v1/app-versions/{bad_ep}"),
        ] {
            let r = put(&h.app, &uri, "1").await;
            assert_eq!(r.status, StatusCode::BAD_REQUEST, "{uri}: {}", r.text);
            r.message();
            assert_eq!(
                get(&h.app, &uri).await.status,
                StatusCode::BAD_REQUEST,
                "{uri}"
            );
            assert_eq!(
                call(&h.app, Method::DELETE, &uri, &[], None).await.status,
                StatusCode::BAD_REQUEST
            );
            assert_eq!(
                get(&h.app, &format!("{uri}/configurations")).await.status,
                StatusCode::BAD_REQUEST
            );
        }
    }
    for bad_name in ["a.b", "", "a%20b", "a%2Fb", "%C3%A4", "a+b", "a%23"] {
        let r = put(&h.app, &format!("{EP}?name={bad_name}"), "1").await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "name={bad_name}");
        r.message();
    }
    store_is_empty(&h).await;
    // Unknown routes and methods.
    for (m, uri, status) in [
        (Method::GET, "/api/v1/nothing", StatusCode::NOT_FOUND),
        (Method::GET, "/nothing", StatusCode::NOT_FOUND),
        (Method::GET, "/api/v2/app-versions/x", StatusCode::NOT_FOUND),
        (Method::PATCH, EP, StatusCode::METHOD_NOT_ALLOWED),
        (Method::POST, DEF, StatusCode::METHOD_NOT_ALLOWED),
        (
            Method::DELETE,
            "/api/v1/statuses",
            StatusCode::METHOD_NOT_ALLOWED,
        ),
        (
            Method::GET,
            "/api/v1/endpoints/batch",
            StatusCode::METHOD_NOT_ALLOWED,
        ),
    ] {
        let r = call(&h.app, m.clone(), uri, &[], None).await;
        assert_eq!(r.status, status, "{m} {uri}");
        let msg = r.message().to_owned();
        assert!(msg.contains(uri), "{msg}");
        if status == StatusCode::METHOD_NOT_ALLOWED {
            assert!(r.headers.get(header::ALLOW).is_some(), "405 keeps Allow");
        }
    }
}

fn auth() -> Authenticator {
    Authenticator::with_tokens([
        ("admin".to_owned(), "rw-token".to_owned(), Access::ReadWrite),
        ("viewer".to_owned(), "ro-token".to_owned(), Access::Read),
    ])
}

#[tokio::test]
async fn bearer_tokens_guard_the_api() {
    let h = harness_with(auth(), AppVersions::open(), 1 << 20).await;
    let rw = [("authorization", "Bearer rw-token")];
    let ro = [("authorization", "Bearer ro-token")];
    for headers in [
        &[][..],
        &[("authorization", "Bearer nope")][..],
        &[("authorization", "Basic cnctdG9rZW4=")][..],
        &[("authorization", "Bearer rw-token2")][..],
    ] {
        let r = call(&h.app, Method::GET, EP, headers, None).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{headers:?}");
        assert!(r.headers.get(header::WWW_AUTHENTICATE).is_some());
        r.message();
        let r = call(&h.app, Method::PUT, EP, headers, Some("1")).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    }
    store_is_empty(&h).await;
    // Read-only token: reads yes, writes 403.
    assert_eq!(
        call(&h.app, Method::GET, EP, &ro, None).await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        call(
            &h.app,
            Method::GET,
            "/api/v1/statuses?endpointId=x",
            &ro,
            None
        )
        .await
        .status,
        StatusCode::OK
    );
    for (m, uri) in [
        (Method::PUT, EP),
        (Method::DELETE, EP),
        (Method::PUT, DEF),
        (Method::PUT, "/api/v1/endpoints/batch"),
    ] {
        let body =
            (m == Method::PUT).then_some(r#"{"configPayload": 1, "endpoints": {"v": ["e"]}}"#);
        let r = call(&h.app, m.clone(), uri, &ro, body).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{m} {uri}");
        assert!(r.message().contains("read-only"));
    }
    store_is_empty(&h).await;
    assert_eq!(
        call(&h.app, Method::PUT, EP, &rw, Some("1")).await.status,
        StatusCode::OK
    );
    assert_eq!(
        call(&h.app, Method::GET, EP, &ro, None).await.status,
        StatusCode::OK
    );
    // Public: the OpenAPI document, health and metrics.
    for uri in ["/api/v1/openapi.json", "/health", "/metrics"] {
        assert_eq!(get(&h.app, uri).await.status, StatusCode::OK, "{uri}");
    }
}

#[tokio::test]
async fn openapi_document_lists_every_route() {
    let h = harness().await;
    let r = get(&h.app, "/api/v1/openapi.json").await;
    assert_eq!(r.status, StatusCode::OK);
    let doc = oas3::from_json(&r.text).expect("a valid OpenAPI 3.1 document");
    assert!(doc.openapi.starts_with("3."), "{}", doc.openapi);
    let expect = [
        (
            "/api/v1/endpoints/{endpointId}/app-versions/{appVersionName}",
            &["put", "get", "delete"][..],
        ),
        (
            "/api/v1/endpoints/{endpointId}/app-versions/{appVersionName}/configurations",
            &["get"][..],
        ),
        (
            "/api/v1/app-versions/{appVersionName}",
            &["put", "get", "delete"][..],
        ),
        (
            "/api/v1/app-versions/{appVersionName}/configurations",
            &["get"][..],
        ),
        ("/api/v1/endpoints/batch", &["put"][..]),
        ("/api/v1/statuses", &["get"][..]),
        (
            "/api/v1/endpoints/{endpointId}/app-versions/{appVersionName}/effective",
            &["get"][..],
        ),
        ("/api/v1/app-versions", &["get"][..]),
        (
            "/api/v1/app-versions/{appVersionName}/status-counts",
            &["get"][..],
        ),
        (
            "/api/v1/app-versions/{appVersionName}/rollouts",
            &["post", "get"][..],
        ),
        ("/api/v1/rollouts/{rolloutId}", &["get"][..]),
        ("/api/v1/rollouts/{rolloutId}/pause", &["post"][..]),
        ("/api/v1/rollouts/{rolloutId}/resume", &["post"][..]),
        ("/api/v1/rollouts/{rolloutId}/abort", &["post"][..]),
        ("/api/v1/rollouts/{rolloutId}/promote", &["post"][..]),
        ("/api/v1/app-versions/{appVersionName}/groups", &["get"][..]),
        (
            "/api/v1/app-versions/{appVersionName}/groups/{groupName}",
            &["put", "delete"][..],
        ),
        (
            "/api/v1/app-versions/{appVersionName}/groups/{groupName}/members",
            &["get", "post"][..],
        ),
        ("/api/v1/app-versions/{appVersionName}/layers", &["get"][..]),
        (
            "/api/v1/app-versions/{appVersionName}/layers/{layerName}",
            &["put", "get", "delete"][..],
        ),
        (
            "/api/v1/app-versions/{appVersionName}/layers/{layerName}/rollouts",
            &["post"][..],
        ),
        (
            "/api/v1/endpoints/{endpointId}/app-versions/{appVersionName}/explain",
            &["get"][..],
        ),
    ];
    let paths = doc.paths.as_ref().expect("paths");
    assert_eq!(paths.len(), expect.len());
    for (path, methods) in expect {
        let item = paths.get(path).unwrap_or_else(|| panic!("{path} missing"));
        let present = [
            ("put", item.put.is_some()),
            ("get", item.get.is_some()),
            ("delete", item.delete.is_some()),
            ("post", item.post.is_some()),
            ("patch", item.patch.is_some()),
        ];
        for (m, is_present) in present {
            assert_eq!(is_present, methods.contains(&m), "{m} {path}");
        }
    }
    let components = doc.components.unwrap();
    assert!(components.security_schemes.contains_key("bearer"));
    for schema in [
        "ConfigurationDto",
        "ErrorDto",
        "BatchRequest",
        "StatusPageDto",
        "RolloutRequest",
        "RolloutDto",
        "LayerRequest",
        "LayerDto",
        "GroupPageDto",
        "MembersRequest",
        "DryRunDto",
        "ExplainDto",
    ] {
        assert!(components.schemas.contains_key(schema), "{schema}");
    }
}

/// Every `pattern` in the OpenAPI document, with the JSON pointer of the object that
/// holds it.
fn patterns(value: &Value, at: &str, out: &mut Vec<(String, String)>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                if k == "pattern"
                    && let Value::String(p) = v
                {
                    out.push((at.to_owned(), p.clone()));
                }
                let key = k.replace('~', "~0").replace('/', "~1");
                patterns(v, &format!("{at}/{key}"), out);
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                patterns(v, &format!("{at}/{i}"), out);
            }
        }
        _ => {}
    }
}

/// The names the OpenAPI document declares valid are exactly those ECR accepts, so
/// REST fuzzers (`.ci/rest-fuzz.sh`) and generated clients agree with the server: every
/// name pattern in the document, read by a JSON Schema validator, against
/// `EndpointId::new` / `AppVersionName::new` / `ConfigName::new` on names chosen at the
/// edges of the rules (each forbidden character, every kind of whitespace and control
/// character, non-ASCII letters).
#[tokio::test]
async fn openapi_name_patterns_accept_exactly_what_ecr_accepts() {
    let h = harness().await;
    let doc: Value = serde_json::from_str(&get(&h.app, "/api/v1/openapi.json").await.text).unwrap();
    let mut found = Vec::new();
    patterns(&doc, "", &mut found);
    let (config_names, token_names): (Vec<_>, Vec<_>) = found.into_iter().partition(|(at, _)| {
        // Group and layer names follow the config name rule (crate::layers).
        (at.contains("/parameters/")
            && ["name", "groupName", "layerName"]
                .iter()
                .any(|n| doc_param_is_named(&doc, at, n)))
            || at == "/components/schemas/LayerRequest/properties/group"
            || at == "/components/schemas/LayerRolloutRequest/properties/group"
    });
    // Endpoint IDs and app version names: path parameters of 7 operations (2 each on
    // endpoint routes), /statuses' two, and the batch body's keys and items.
    assert!(token_names.len() >= 10, "{token_names:?}");
    assert!(!config_names.is_empty());

    let mut samples: Vec<String> = [
        "kettle-v1",
        "0",
        "a_b-C",
        "é",
        "Ünïcödé-ñame",
        "日本語",
        "emoji-🙂",
        "x:y",
        "a@b",
        "a%2e",
        "",
        ".",
        "a.b",
        "a*",
        "a>b",
        "a/b",
        "a+b",
        "a#b",
        "a b",
        "a\tb",
        "a\nb",
        "\u{0}",
        "a\u{1f}",
        "a\u{7f}",
        "a\u{85}",
        "a\u{9f}",
        "a\u{a0}",
        "a\u{1680}",
        "a\u{2000}",
        "a\u{200a}",
        "a\u{200b}",
        "a\u{2028}",
        "a\u{2029}",
        "a\u{202f}",
        "a\u{205f}",
        "a\u{3000}",
        "a\u{feff}",
        "a\u{180e}",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    samples.push("n".repeat(256));
    for c in '\u{0}'..='\u{3000}' {
        samples.push(format!("x{c}y"));
    }

    for (at, pattern) in &token_names {
        let schema = json!({"type": "string", "minLength": 1, "pattern": pattern});
        let validator = jsonschema::validator_for(&schema).unwrap();
        for name in &samples {
            assert_eq!(
                validator.is_valid(&json!(name)),
                EndpointId::new(name.as_str()).is_ok(),
                "{at}: {name:?}"
            );
            assert_eq!(
                EndpointId::new(name.as_str()).is_ok(),
                AppVersionName::new(name.as_str()).is_ok()
            );
        }
    }
    for (at, pattern) in &config_names {
        let schema = json!({"type": "string", "minLength": 1, "pattern": pattern});
        let validator = jsonschema::validator_for(&schema).unwrap();
        for name in &samples {
            assert_eq!(
                validator.is_valid(&json!(name)),
                ConfigName::new(name.as_str()).is_ok(),
                "{at}: {name:?}"
            );
        }
    }
}

/// Whether the parameter object that `at` (a JSON path to a `pattern`) lies in is named
/// `name`.
fn doc_param_is_named(doc: &Value, at: &str, name: &str) -> bool {
    let Some(i) = at.find("/parameters/") else {
        return false;
    };
    let rest = &at[i + "/parameters/".len()..];
    let index = rest.split('/').next().unwrap_or_default();
    let pointer = format!("{}/parameters/{index}/name", &at[..i]);
    doc.pointer(&pointer).and_then(Value::as_str) == Some(name)
}

#[tokio::test]
async fn effective_changes_drive_the_events() {
    let mut h = harness().await;
    let app = AppVersionName::new("kettleV1").unwrap();
    for e in ["a", "b", "c"] {
        h.ecr
            .learn_endpoint(&EndpointId::new(e).unwrap(), &app)
            .await
            .unwrap();
    }
    put(
        &h.app,
        "/api/v1/endpoints/c/app-versions/kettleV1",
        r#"{"own": true}"#,
    )
    .await;
    let c = drain(&mut h.changes);
    assert_eq!(c.len(), 1);
    assert_eq!(c[0].endpoint_id.as_str(), "c");

    // A default change fans out to the endpoints that follow the default (not c).
    let d = put(&h.app, DEF, r#"{"d": 1}"#).await;
    let c = drain(&mut h.changes);
    let eps: Vec<&str> = c.iter().map(|c| c.endpoint_id.as_str()).collect();
    assert_eq!(eps, ["a", "b"]);
    assert!(
        c.iter()
            .all(|c| c.config.as_ref().unwrap().config_id == d.body["configId"].as_str().unwrap())
    );

    // Identical content: nothing.
    put(&h.app, DEF, r#"{"d": 1}"#).await;
    put(
        &h.app,
        "/api/v1/endpoints/c/app-versions/kettleV1",
        r#"{"own": true}"#,
    )
    .await;
    assert!(drain(&mut h.changes).is_empty());

    // c drops its own configuration: it follows the default now.
    call(
        &h.app,
        Method::DELETE,
        "/api/v1/endpoints/c/app-versions/kettleV1",
        &[],
        None,
    )
    .await;
    let c = drain(&mut h.changes);
    assert_eq!(c.len(), 1);
    assert_eq!(c[0].config.as_ref().unwrap().content, r#"{"d":1}"#);

    // An endpoint set to exactly the default's content: effective ID unchanged, no event.
    put(
        &h.app,
        "/api/v1/endpoints/a/app-versions/kettleV1",
        r#"{"d": 1}"#,
    )
    .await;
    assert!(drain(&mut h.changes).is_empty());

    // Deleting the default: b and c have no configuration any more (a has its own).
    call(&h.app, Method::DELETE, DEF, &[], None).await;
    let c = drain(&mut h.changes);
    let eps: Vec<(&str, bool)> = c
        .iter()
        .map(|c| (c.endpoint_id.as_str(), c.config.is_none()))
        .collect();
    assert_eq!(eps, [("b", true), ("c", true)]);

    // Named: only that name's followers.
    put(&h.app, &format!("{DEF}?name=net"), "5").await;
    let c = drain(&mut h.changes);
    assert_eq!(c.len(), 3);
    assert!(c.iter().all(|c| c.name.as_str() == "net"));

    // Batch: one change per changed endpoint.
    put(
        &h.app,
        "/api/v1/endpoints/batch",
        r#"{"configPayload": 7, "endpoints": {"kettleV1": ["a", "b", "z"]}}"#,
    )
    .await;
    assert_eq!(drain(&mut h.changes).len(), 3);
}

#[tokio::test]
async fn metrics_count_requests_by_route() {
    let h = harness().await;
    put(&h.app, EP, "1").await;
    get(&h.app, EP).await;
    let m = get(&h.app, "/metrics").await;
    assert_eq!(m.status, StatusCode::OK);
    assert!(m.text.contains("ecr_http_requests_total{method=\"PUT\",route=\"/api/v1/endpoints/{endpointId}/app-versions/{appVersionName}\",status=\"200\"} 1"), "{}", m.text);
    let health = get(&h.app, "/health").await;
    assert_eq!(health.body, json!({"status": "UP"}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_if_match_puts_never_lose_an_update() {
    let h = harness().await;
    assert_eq!(
        put(&h.app, EP, r#"{"count": 0}"#).await.status,
        StatusCode::OK
    );
    const WRITERS: usize = 6;
    const INCREMENTS: usize = 10;
    let mut tasks = Vec::new();
    for _ in 0..WRITERS {
        let app = h.app.clone();
        tasks.push(tokio::spawn(async move {
            let mut conflicts = 0;
            for _ in 0..INCREMENTS {
                loop {
                    let cur = get(&app, EP).await;
                    let etag = cur.etag().unwrap().to_owned();
                    let v: Value =
                        serde_json::from_str(cur.body["config"].as_str().unwrap()).unwrap();
                    let next = json!({"count": v["count"].as_u64().unwrap() + 1}).to_string();
                    let r = call(&app, Method::PUT, EP, &[("if-match", &etag)], Some(&next)).await;
                    match r.status {
                        StatusCode::OK => break,
                        StatusCode::PRECONDITION_FAILED => conflicts += 1,
                        other => panic!("{other}: {}", r.text),
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
    let v: Value =
        serde_json::from_str(get(&h.app, EP).await.body["config"].as_str().unwrap()).unwrap();
    assert_eq!(
        v["count"],
        (WRITERS * INCREMENTS) as u64,
        "{conflicts} conflicts"
    );
}
