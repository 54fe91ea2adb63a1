//! ECR's REST API (`kaa_ecr::api::app`, the axum router the `ecr`
//! binary serves) driven in-process with `tower::ServiceExt::oneshot`: arbitrary
//! sequences of requests (method, route, path segments, `?name=`, body,
//! `Content-Type`, `If-Match`, token) against an embedded (SQLite) store in a
//! temporary directory, with authentication on.
//!
//! Checks: no panic; no 5xx; every 4xx is `{"message": "<non-empty>"}` as JSON;
//! a 4xx leaves the store as it was (a snapshot of every configuration, default
//! and endpoint-specific, of the endpoints and app versions the requests use,
//! read through the API before and after).
#![no_main]

use std::sync::{Arc, OnceLock};

use arbitrary::Arbitrary;
use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use kaa_ecr::api::{self, Authenticator};
use kaa_ecr::config::Access;
use kaa_ecr::core::{AppVersions, Ecr};
use kaa_ecr::store;
use kaa_service::Metrics;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use tower::ServiceExt;

const ENDPOINTS: [&str; 2] = ["ep-1", "ep-2"];
const VERSIONS: [&str; 2] = ["v1", "v2"];
const NAMES: [&str; 3] = ["default", "net", "a.b"];
const RW: &str = "rw-token";
const RO: &str = "ro-token";

struct Env {
    rt: tokio::runtime::Runtime,
    app: Router,
    _dir: tempfile::TempDir,
}

fn env() -> &'static Env {
    static ENV: OnceLock<Env> = OnceLock::new();
    ENV.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        let dir = tempfile::tempdir().expect("a temporary directory");
        let url = format!("sqlite://{}", dir.path().join("ecr.db").display());
        let app = rt.block_on(async {
            let store = store::open(&url).await.expect("the embedded store");
            let ecr = Arc::new(Ecr::new(store, AppVersions::open(), None));
            let auth = Authenticator::with_tokens([
                ("rw".to_owned(), RW.to_owned(), Access::ReadWrite),
                ("ro".to_owned(), RO.to_owned(), Access::Read),
            ]);
            api::app(ecr, auth, 4096, Metrics::new("ecr"))
        });
        Env { rt, app, _dir: dir }
    })
}

#[derive(Arbitrary, Debug)]
enum Seg {
    Known(u8),
    Raw(String),
}

impl Seg {
    fn get(&self, known: &[&str]) -> String {
        match self {
            Seg::Known(i) => known[usize::from(*i) % known.len()].to_owned(),
            Seg::Raw(s) => encode(s),
        }
    }
}

/// Percent-encodes everything but unreserved characters.
fn encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[derive(Arbitrary, Debug)]
enum Route {
    Endpoint {
        ep: Seg,
        av: Seg,
    },
    EndpointList {
        ep: Seg,
        av: Seg,
    },
    Default {
        av: Seg,
    },
    DefaultList {
        av: Seg,
    },
    Batch,
    Statuses {
        ep: Option<Seg>,
        av: Option<Seg>,
        page: Option<i64>,
        size: Option<i64>,
    },
    OpenApi,
    Raw(String),
}

#[derive(Arbitrary, Debug)]
enum Method {
    Get,
    Put,
    Delete,
    Post,
    Patch,
    Head,
    Options,
}

#[derive(Arbitrary, Debug)]
enum Json {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Arr(Vec<Json>),
    Obj(Vec<(String, Json)>),
}

impl Json {
    fn value(&self) -> Value {
        match self {
            Json::Null => Value::Null,
            Json::Bool(b) => Value::Bool(*b),
            Json::Int(i) => Value::from(*i),
            Json::Float(f) => serde_json::Number::from_f64(*f).map_or(Value::Null, Value::Number),
            Json::Str(s) => Value::String(s.clone()),
            Json::Arr(a) => Value::Array(a.iter().map(Json::value).collect()),
            Json::Obj(o) => Value::Object(o.iter().map(|(k, v)| (k.clone(), v.value())).collect()),
        }
    }
}

#[derive(Arbitrary, Debug)]
enum BodyInput {
    None,
    Json(Json),
    Batch {
        payload: Json,
        endpoints: Vec<(Seg, Vec<Seg>)>,
        extra: bool,
    },
    Raw(Vec<u8>),
}

#[derive(Arbitrary, Debug)]
enum ContentType {
    Json,
    PlusJson,
    Text,
    Absent,
    Raw(String),
}

#[derive(Arbitrary, Debug)]
enum IfMatch {
    /// The ETag of the last successful answer.
    Last,
    Star,
    Weak,
    List,
    Raw(String),
}

#[derive(Arbitrary, Debug)]
enum Token {
    ReadWrite,
    Read,
    Absent,
    Wrong(String),
}

#[derive(Arbitrary, Debug)]
struct Call {
    method: Method,
    route: Route,
    name: Option<Seg>,
    body: BodyInput,
    content_type: ContentType,
    if_match: Option<IfMatch>,
    token: Token,
}

async fn send(app: &Router, req: Request<Body>) -> (StatusCode, Option<String>, Vec<u8>) {
    let resp = app.clone().oneshot(req).await.expect("infallible");
    let status = resp.status();
    let etag = resp
        .headers()
        .get(header::ETAG)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let ct = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .expect("a body")
        .to_vec();
    if status.is_client_error() || status.is_server_error() {
        assert_eq!(ct.as_deref(), Some("application/json"), "{status}");
    }
    (status, etag, body)
}

/// Every configuration of the endpoints and app versions the requests use.
async fn snapshot(app: &Router) -> Vec<(String, StatusCode, Vec<u8>)> {
    let mut uris = Vec::new();
    for av in VERSIONS {
        uris.push(format!("/api/v1/app-versions/{av}/configurations"));
        for ep in ENDPOINTS {
            uris.push(format!(
                "/api/v1/endpoints/{ep}/app-versions/{av}/configurations"
            ));
        }
    }
    let mut out = Vec::new();
    for uri in uris {
        let req = Request::get(&uri)
            .header(header::AUTHORIZATION, format!("Bearer {RO}"))
            .body(Body::empty())
            .expect("a request");
        let (status, _, body) = send(app, req).await;
        out.push((uri, status, body));
    }
    out
}

fn build(call: &Call, last_etag: Option<&str>) -> Option<Request<Body>> {
    let path = match &call.route {
        Route::Endpoint { ep, av } => format!(
            "/api/v1/endpoints/{}/app-versions/{}",
            ep.get(&ENDPOINTS),
            av.get(&VERSIONS)
        ),
        Route::EndpointList { ep, av } => format!(
            "/api/v1/endpoints/{}/app-versions/{}/configurations",
            ep.get(&ENDPOINTS),
            av.get(&VERSIONS)
        ),
        Route::Default { av } => format!("/api/v1/app-versions/{}", av.get(&VERSIONS)),
        Route::DefaultList { av } => {
            format!("/api/v1/app-versions/{}/configurations", av.get(&VERSIONS))
        }
        Route::Batch => "/api/v1/endpoints/batch".to_owned(),
        Route::Statuses { ep, av, page, size } => {
            let mut q = Vec::new();
            if let Some(ep) = ep {
                q.push(format!("endpointId={}", ep.get(&ENDPOINTS)));
            }
            if let Some(av) = av {
                q.push(format!("appVersionName={}", av.get(&VERSIONS)));
            }
            if let Some(p) = page {
                q.push(format!("page={p}"));
            }
            if let Some(s) = size {
                q.push(format!("size={s}"));
            }
            format!("/api/v1/statuses?{}", q.join("&"))
        }
        Route::OpenApi => "/api/v1/openapi.json".to_owned(),
        Route::Raw(s) => format!("/api/v1/{s}"),
    };
    let mut uri = path;
    if let Some(name) = &call.name {
        uri.push(if uri.contains('?') { '&' } else { '?' });
        uri.push_str("name=");
        uri.push_str(&name.get(&NAMES));
    }
    let method = match call.method {
        Method::Get => "GET",
        Method::Put => "PUT",
        Method::Delete => "DELETE",
        Method::Post => "POST",
        Method::Patch => "PATCH",
        Method::Head => "HEAD",
        Method::Options => "OPTIONS",
    };
    let mut req = Request::builder().method(method).uri(&uri);
    match &call.token {
        Token::ReadWrite => req = req.header(header::AUTHORIZATION, format!("Bearer {RW}")),
        Token::Read => req = req.header(header::AUTHORIZATION, format!("Bearer {RO}")),
        Token::Absent => {}
        Token::Wrong(t) => req = req.header(header::AUTHORIZATION, t.as_str()),
    }
    match &call.content_type {
        ContentType::Json => req = req.header(header::CONTENT_TYPE, "application/json"),
        ContentType::PlusJson => {
            req = req.header(header::CONTENT_TYPE, "application/merge-patch+json")
        }
        ContentType::Text => req = req.header(header::CONTENT_TYPE, "text/plain"),
        ContentType::Absent => {}
        ContentType::Raw(s) => req = req.header(header::CONTENT_TYPE, s.as_str()),
    }
    match &call.if_match {
        None => {}
        Some(IfMatch::Last) => {
            req = req.header(header::IF_MATCH, last_etag.unwrap_or("\"none\""));
        }
        Some(IfMatch::Star) => req = req.header(header::IF_MATCH, "*"),
        Some(IfMatch::Weak) => {
            let tag = format!("W/{}", last_etag.unwrap_or("\"none\""));
            req = req.header(header::IF_MATCH, tag);
        }
        Some(IfMatch::List) => {
            let tag = format!("\"x\", {}", last_etag.unwrap_or("\"none\""));
            req = req.header(header::IF_MATCH, tag);
        }
        Some(IfMatch::Raw(s)) => req = req.header(header::IF_MATCH, s.as_str()),
    }
    let body = match &call.body {
        BodyInput::None => Vec::new(),
        BodyInput::Json(j) => serde_json::to_vec(&j.value()).ok()?,
        BodyInput::Batch {
            payload,
            endpoints,
            extra,
        } => {
            let mut map = serde_json::Map::new();
            for (av, eps) in endpoints.iter().take(4) {
                let eps: Vec<Value> = eps
                    .iter()
                    .take(4)
                    .map(|e| Value::String(decode_known(e, &ENDPOINTS)))
                    .collect();
                map.insert(decode_known(av, &VERSIONS), Value::Array(eps));
            }
            let mut body = serde_json::json!({
                "configPayload": payload.value(),
                "endpoints": map,
            });
            if *extra {
                body["extra"] = Value::Bool(true);
            }
            serde_json::to_vec(&body).ok()?
        }
        BodyInput::Raw(b) => b.clone(),
    };
    // Header values the HTTP library refuses never reach a server.
    req.body(Body::from(body)).ok()
}

fn decode_known(s: &Seg, known: &[&str]) -> String {
    match s {
        Seg::Known(i) => known[usize::from(*i) % known.len()].to_owned(),
        Seg::Raw(s) => s.clone(),
    }
}

fuzz_target!(|calls: Vec<Call>| {
    let env = env();
    env.rt.block_on(async {
        let mut last_etag: Option<String> = None;
        for call in calls.iter().take(8) {
            let Some(req) = build(call, last_etag.as_deref()) else {
                continue;
            };
            let before = snapshot(&env.app).await;
            let (status, etag, body) = send(&env.app, req).await;
            assert!(
                !status.is_server_error(),
                "{status} for {call:?}: {}",
                String::from_utf8_lossy(&body)
            );
            // HEAD answers carry no body (RFC 9110), errors included.
            let head = matches!(call.method, Method::Head);
            if status.is_client_error() && !head {
                let v: Value = serde_json::from_slice(&body).expect("a JSON error body");
                let message = v.get("message").and_then(Value::as_str);
                assert!(
                    message.is_some_and(|m| !m.is_empty()),
                    "{status} without a message: {v}"
                );
            }
            if status.is_client_error() {
                let after = snapshot(&env.app).await;
                assert!(before == after, "{status} for {call:?} changed the store");
            } else if let Some(e) = etag {
                last_etag = Some(e);
            }
        }
    });
});
