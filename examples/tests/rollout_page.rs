//! ECR's rollout page (`/ui/`, `kaa_ecr::ui`) in a real headless browser:
//! Debian's `chromium` driven through `chromedriver` over WebDriver.
//!
//! `rollout_page_on_ecr`: an in-process ECR (SQLite store, in-memory bus,
//! bearer tokens, the rollout controller) with a running rollout. The page
//! loads, asks for the API token after a 401, shows the rollout's current step
//! whose applied count moves as `endpoint.config.applied` reports arrive on the
//! bus, and its Pause and Resume buttons pause and resume the rollout (checked
//! through the REST API); a Pause with a stale ETag (the rollout changed
//! behind the page) is refused and ECR's `{"message"}` shown.
//!
//! `rollout_page_on_a_fake_of_the_contract`: the same page against a small
//! fake of the REST contract, for what a real ECR does not show: the exact
//! `If-Match` the page sends with each action.
//!
//! Skip rule: when `chromium` or `chromedriver` is not on `PATH` (override
//! with `KAA_TEST_CHROMIUM` / `KAA_TEST_CHROMEDRIVER`) the tests print
//! `SKIPPED: <test>: …` and pass, unless `KAA_REQUIRE_SERVICES=1` (CI, which
//! installs both with `.ci/browser.sh`), where they fail. With
//! `KAA_UI_SCREENSHOT=<path>`, `rollout_page_on_ecr` also writes a PNG
//! screenshot of the page with its running rollout there; `docs/rollout-page.png`
//! is one:
//!
//! ```sh
//! KAA_UI_SCREENSHOT=$PWD/docs/rollout-page.png cargo test -p kaa-examples --test rollout_page rollout_page_on_ecr
//! ```
//!
//! The WebDriver client is [`fantoccini`]: maintained (Jon Gjengset's, releases
//! through 2025), async on tokio like the rest of the workspace, speaks W3C
//! WebDriver to any driver, and with default features off needs no TLS stack
//! for a driver on localhost (hyper and hyper-util are already in the tree).
//! Compared: `thirtyfour` is also maintained and higher level (query/wait
//! helpers, component model) but pulls in reqwest with TLS and more, for
//! nothing this test needs; `headless_chrome` and `chromiumoxide` speak the
//! Chrome DevTools Protocol instead of WebDriver (a browser-specific,
//! unversioned protocol; chromiumoxide's generated bindings are slow to
//! compile); Python's selenium would add a second toolchain to CI.
//!

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use fantoccini::{ClientBuilder, Locator};
use kaa_bus::test_support::skip;
use serde_json::{Value, json};

const TOKEN: &str = "page-test-token";
const APP: &str = "kettleV1";
const OLD: &str = "0ld0ld0ld0ld0ld0ld0ld0ld0ld0ld00";
const NEW: &str = "5ee1e5ee1e5ee1e5ee1e5ee1e5ee1e00";
const ROLLOUT: &str = "r-7f3a";

// ------------------------------------------------------------------ the fake

// A small fake of the rollout routes of the REST contract (same paths, bodies,
// `ETag`/`If-Match`, 409 and 412, `{"message"}` errors, bearer token), serving
// the real page from `kaa_ecr::ui::router()`.

/// The rollout routes' state: one rollout of `NEW` over `OLD`, first step
/// soaking.
struct Fake {
    state: String,
    revision: u64,
    applied: u64,
    rejected: u64,
    /// `If-Match` of every action, as sent.
    if_match: Vec<Option<String>>,
}

type Shared = Arc<Mutex<Fake>>;

fn rollout(f: &Fake) -> Value {
    let step = |percent: u64, targeted: u64, state: &str, delivered, applied, rejected| {
        json!({"percent": percent, "state": state, "targeted": targeted, "delivered": delivered,
               "applied": applied, "rejected": rejected, "timedOut": 0,
               "startedDate": "2026-12-06T10:00:00Z", "soakUntil": "2026-12-06T10:00:30Z"})
    };
    json!({
        "rolloutId": ROLLOUT, "appVersionName": APP, "name": "default",
        "configId": NEW, "previousConfigId": OLD, "config": "{\"rate\":6}",
        "state": f.state, "reason": null, "step": 1,
        "steps": [
            step(5, 5, "passed", 5, 5, 0),
            step(25, 25, "soaking", 25, f.applied, f.rejected),
            step(60, 60, "pending", 0, 0, 0),
            step(100, 100, "pending", 0, 0, 0),
        ],
        "gate": {"minAppliedPercent": 90, "minApplied": 1, "soakSeconds": 30},
        "abort": {"maxRejectedPercent": 10, "minSample": 10, "reportTimeoutSeconds": 120},
        "onAbort": "revert",
        "createdDate": "2026-12-06T09:59:00Z", "updatedDate": "2026-12-06T10:00:00Z"
    })
}

fn etag(f: &Fake) -> String {
    format!("\"{ROLLOUT}-{}\"", f.revision)
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, axum::Json(json!({ "message": message }))).into_response()
}

async fn bearer(request: Request, next: Next) -> Response {
    let expected = format!("Bearer {TOKEN}");
    match request.headers().get(header::AUTHORIZATION) {
        Some(v) if v.as_bytes() == expected.as_bytes() => next.run(request).await,
        _ => error(StatusCode::UNAUTHORIZED, "missing or unknown bearer token"),
    }
}

async fn act(
    State(fake): State<Shared>,
    Path((id, action)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let mut f = fake.lock().unwrap();
    if id != ROLLOUT {
        return error(StatusCode::NOT_FOUND, "no such rollout");
    }
    let if_match = headers
        .get(header::IF_MATCH)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    f.if_match.push(if_match.clone());
    if if_match.is_some_and(|m| m != etag(&f)) {
        return error(StatusCode::PRECONDITION_FAILED, "If-Match does not match");
    }
    let next = match (action.as_str(), f.state.as_str()) {
        ("pause", "running") => "paused",
        ("resume", "paused") => "running",
        ("abort", "running" | "paused") => "reverted",
        _ => {
            return error(
                StatusCode::CONFLICT,
                &format!("cannot {action} a {} rollout", f.state),
            );
        }
    };
    f.state = next.into();
    f.revision += 1;
    ([(header::ETAG, etag(&f))], axum::Json(rollout(&f))).into_response()
}

fn fake_api(fake: Shared) -> Router {
    let api = Router::new()
        .route(
            "/app-versions",
            get(|| async {
                axum::Json(json!([{"appVersionName": APP,
                    "configurations": [{"name": "default", "configId": OLD}]}]))
            }),
        )
        .route(
            "/app-versions/{app}/status-counts",
            get(|State(fake): State<Shared>| async move {
                let f = fake.lock().unwrap();
                axum::Json(json!([
                    {"configId": OLD, "applied": 70, "rejected": 0, "dispatched": 0},
                    {"configId": NEW, "applied": 5 + f.applied, "rejected": f.rejected,
                     "dispatched": 25 - f.applied - f.rejected},
                ]))
            }),
        )
        .route(
            "/app-versions/{app}/rollouts",
            get(|State(fake): State<Shared>| async move {
                axum::Json(json!([rollout(&fake.lock().unwrap())]))
            }),
        )
        .route(
            "/rollouts/{id}",
            get(|State(fake): State<Shared>| async move {
                let f = fake.lock().unwrap();
                ([(header::ETAG, etag(&f))], axum::Json(rollout(&f)))
            }),
        )
        .route("/rollouts/{id}/{action}", post(act))
        .layer(middleware::from_fn(bearer))
        .with_state(fake);
    Router::new()
        .nest("/api/v1", api)
        .merge(kaa_examples::ecr::ui::router())
}

async fn serve(app: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

// ------------------------------------------------------------------ the browser

fn which(names: &[&str], env: &str) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(env) {
        return Some(PathBuf::from(p)).filter(|p| p.is_file());
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .flat_map(|dir| names.iter().map(move |n| dir.join(n)))
        .find(|p| p.is_file())
}

/// A chromedriver child process (killed on drop) and a headless chromium
/// session through it.
struct Browser {
    client: fantoccini::Client,
    _driver: tokio::process::Child,
}

/// Starts chromedriver and a headless chromium session, or applies the skip
/// rule and returns `None`.
async fn browser(test: &str) -> Option<Browser> {
    let Some(chromium) = which(
        &["chromium", "chromium-browser", "google-chrome"],
        "KAA_TEST_CHROMIUM",
    ) else {
        skip(
            test,
            "chromium not found (apt-get install chromium chromium-driver)",
        );
        return None;
    };
    let Some(chromedriver) = which(&["chromedriver"], "KAA_TEST_CHROMEDRIVER") else {
        skip(
            test,
            "chromedriver not found (apt-get install chromium-driver)",
        );
        return None;
    };
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let driver = tokio::process::Command::new(&chromedriver)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("{}: {e}", chromedriver.display()));
    let url = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let mut ready = false;
    for _ in 0..100 {
        if http
            .get(format!("{url}/status"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ready, "chromedriver did not answer on {url}");
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": chromium,
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                     "--disable-dev-shm-usage", "--window-size=1200,860",
                     "--force-device-scale-factor=1"],
        }),
    );
    let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&url)
        .await
        .expect("a chromium session through chromedriver");
    Some(Browser {
        client,
        _driver: driver,
    })
}

impl Browser {
    /// Waits (10 s at most) until `script` (a JS function body) returns
    /// something truthy; returns it.
    async fn until(&self, what: &str, script: &str) -> Value {
        for _ in 0..100 {
            let v = self.client.execute(script, vec![]).await.unwrap();
            if !matches!(&v, Value::Null | Value::Bool(false)) && v != json!("") && v != json!(0) {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let text = self
            .client
            .execute("return document.body.innerText", vec![])
            .await
            .unwrap();
        panic!("timed out waiting for {what}; the page shows:\n{text}");
    }

    /// Finds the element at `locator` and clicks it.
    async fn click(&self, locator: Locator<'_>) {
        self.client
            .find(locator)
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
    }

    /// Waits for the token form, enters [`TOKEN`] and submits it.
    async fn sign_in(&self) {
        let input = self
            .client
            .wait()
            .for_element(Locator::Id("token"))
            .await
            .unwrap();
        self.until(
            "the token form",
            "return !document.getElementById('token-form').hidden",
        )
        .await;
        input.send_keys(TOKEN).await.unwrap();
        self.click(Locator::Css("#token-form button[type=submit]"))
            .await;
    }

    /// Waits (`what`) until the page shows a rollout in `state`.
    async fn until_state(&self, what: &str, state: &str) {
        self.until(
            what,
            &format!("return document.querySelector('article.rollout[data-state={state}]')"),
        )
        .await;
    }

    /// Waits until the current step's applied count reads `n`.
    async fn until_applied(&self, n: u64) {
        self.until(
            &format!("{n} applied"),
            &format!(
                "const el = document.querySelector(\
                 'article.rollout li[aria-current=step] [data-count=applied] .num');\
                 return el && el.textContent.startsWith('{n} ');"
            ),
        )
        .await;
    }

    /// Clicks the rollout's `action` button (`pause`, `resume`).
    async fn act(&self, action: &str) {
        self.click(Locator::Css(&format!(
            "article.rollout button[data-action={action}]"
        )))
        .await;
    }

    /// Turns live refresh off (the `#live` toggle), then waits 1.5 s so that
    /// the page reads nothing that changes after it.
    async fn live_off(&self) {
        self.click(Locator::Id("live")).await;
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }

    /// Waits for the rollout card's error message; returns it.
    async fn card_error(&self, what: &str) -> String {
        let shown = self
            .until(
                what,
                "const el = document.querySelector('article.rollout .card-error');\
                 return el && !el.hidden && el.textContent;",
            )
            .await;
        shown
            .as_str()
            .unwrap_or_else(|| panic!("{what}: {shown}"))
            .to_owned()
    }

    /// The number in the current step's `kind` bar (`applied`, …).
    async fn current(&self, kind: &str) -> u64 {
        let v = self
            .until(
                kind,
                &format!(
                    "const el = document.querySelector(\
                     'article.rollout li[aria-current=step] [data-count={kind}] .num');\
                     return el ? el.textContent : null;"
                ),
            )
            .await;
        v.as_str()
            .and_then(|t| t.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{kind}: {v}"))
    }
}

#[tokio::test]
async fn rollout_page_on_a_fake_of_the_contract() {
    let test = "rollout_page_on_a_fake_of_the_contract";
    let Some(b) = browser(test).await else {
        return;
    };
    let fake = Arc::new(Mutex::new(Fake {
        state: "running".into(),
        revision: 1,
        applied: 3,
        rejected: 0,
        if_match: Vec::new(),
    }));
    let addr = serve(fake_api(Arc::clone(&fake))).await;
    let c = &b.client;

    // It loads, and asks for the token (the fake answers 401 without it).
    c.goto(&format!("http://{addr}/ui")).await.unwrap();
    assert_eq!(c.current_url().await.unwrap().path(), "/ui/");
    let h1 = c
        .find(Locator::Css("h1"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(h1.contains("rollouts"), "{h1}");
    b.sign_in().await;

    // The running rollout, its current step and counts.
    b.until_state("a running rollout", "running").await;
    assert_eq!(b.current("targeted").await, 25);
    assert_eq!(b.current("applied").await, 3);
    // Applied reports arrive: the counts move.
    for n in [9, 17] {
        {
            let mut f = fake.lock().unwrap();
            f.applied = n;
            f.rejected = 1;
        }
        b.until_applied(n).await;
    }
    assert_eq!(b.current("rejected").await, 1);
    let text = c
        .execute("return document.body.innerText", vec![])
        .await
        .unwrap();
    let text = text.as_str().unwrap();
    assert!(text.contains("current step"), "{text}");
    assert!(
        text.contains("22") && text.contains("70"),
        "status counts: {text}"
    );

    // Pause: the button, then the REST API says paused; the page follows.
    b.act("pause").await;
    b.until_state("the page to show paused", "paused").await;
    assert_eq!(fake.lock().unwrap().state, "paused");
    let resume = c
        .find(Locator::Css("article.rollout button[data-action=resume]"))
        .await
        .unwrap();
    assert!(resume.is_enabled().await.unwrap());
    resume.click().await.unwrap();
    b.until_state("the page to show running again", "running")
        .await;
    {
        let f = fake.lock().unwrap();
        assert_eq!(f.state, "running");
        // Each action carried the ETag of the version the page showed.
        assert_eq!(
            f.if_match,
            [
                Some(format!("\"{ROLLOUT}-1\"")),
                Some(format!("\"{ROLLOUT}-2\""))
            ]
        );
    }

    // An error is shown from {"message"}: a stale ETag gives 412 (live
    // refresh off first, so the page cannot have read the new one).
    b.live_off().await;
    fake.lock().unwrap().revision += 10;
    b.act("pause").await;
    let shown = b.card_error("the 412 message").await;
    assert!(shown.contains("If-Match does not match"), "{shown}");
    {
        let f = fake.lock().unwrap();
        assert_eq!(f.state, "running");
        assert_eq!(f.if_match.last(), Some(&Some(format!("\"{ROLLOUT}-3\""))));
    }
    c.clone().close().await.unwrap();
}

// ------------------------------------------------------------------ a real ECR

/// An in-process ECR: SQLite store, in-memory bus (6/CDTP provider and the
/// applied-report listener), the REST API with a bearer token, the rollout
/// controller.
struct Ecr {
    http: String,
    bus: Arc<dyn kaa_bus::Bus>,
    rest: reqwest::Client,
    controller: tokio::task::JoinHandle<()>,
    _tasks: kaa_examples::ecr::bus::BusTasks,
    _db: kaa_testkit::ecr::SqliteTestDb,
}

const ECR_INSTANCE: &str = "ecr-ui";
const CMX_INSTANCE: &str = "cmx-ui";

impl Drop for Ecr {
    fn drop(&mut self) {
        self.controller.abort();
    }
}

impl Ecr {
    async fn start() -> Self {
        use kaa_examples::ecr::{api, bus, config::Access, core, store};
        let db = kaa_testkit::ecr::SqliteTestDb::create();
        let store = store::open(&db.url).await.unwrap();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let ecr = Arc::new(core::Ecr::new(store, core::AppVersions::open(), Some(tx)));
        let bus: Arc<dyn kaa_bus::Bus> = Arc::new(kaa_bus::MemoryBus::new());
        let metrics = kaa_examples::service::Metrics::new("ecr");
        let settings = bus::BusSettings {
            instance: ECR_INSTANCE.into(),
            replica_id: format!("{ECR_INSTANCE}-1"),
            cmx_instance: CMX_INSTANCE.into(),
            elce_limits: kaa_elce::DecodeLimits::default(),
            metrics: metrics.clone(),
        };
        let tasks = bus::start(Arc::clone(&ecr), Arc::clone(&bus), settings, rx)
            .await
            .unwrap();
        let auth = api::Authenticator::with_tokens([(
            "operator".to_owned(),
            TOKEN.to_owned(),
            Access::ReadWrite,
        )]);
        let app = api::app(Arc::clone(&ecr), auth, 1 << 20, metrics);
        let addr = serve(app).await;
        let controller = tokio::spawn(core::run_rollout_controller(
            ecr,
            Duration::from_millis(250),
        ));
        Ecr {
            http: format!("http://{addr}"),
            bus,
            rest: reqwest::Client::new(),
            controller,
            _tasks: tasks,
            _db: db,
        }
    }

    /// A REST call with the token; the status and the JSON body.
    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut request = self
            .rest
            .request(method, format!("{}/api/v1{path}", self.http))
            .bearer_auth(TOKEN);
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body.to_string());
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// Asks for `endpoint`'s default configuration over 6/CDTP, as a CMX
    /// would (ECR then knows the endpoint, and records the dispatch); the
    /// config ID answered.
    async fn ask(&self, endpoint: &str) -> String {
        use kaa_ism::avro::{Decode, Encode};
        let request = kaa_cdtp::ConfigRequest {
            correlation_id: format!("ui-{endpoint}").into(),
            timestamp: kaa_examples::ecr::model::now().0,
            timeout: 3000,
            app_version_name: APP.into(),
            endpoint_id: endpoint.to_owned().into(),
            config_id: None,
            config_name: None,
        };
        let reply = self
            .bus
            .request(
                &format!("kaa.v1.service.{ECR_INSTANCE}.cdtp.request"),
                bytes::Bytes::from(request.to_vec()),
                Duration::from_secs(5),
            )
            .await
            .expect("ECR answers 6/CDTP requests");
        let response = kaa_cdtp::ConfigResponse::decode(&reply.payload).unwrap();
        response
            .config_id
            .map(|c| c.into_owned())
            .unwrap_or_default()
    }

    /// Publishes an applied report of `endpoint` for `config_id`, as the CMX
    /// does when a device reports.
    async fn applied(&self, endpoint: &str, config_id: &str) {
        self.report(endpoint, config_id, 200).await;
    }

    /// Publishes a report of `endpoint` for `config_id` with `status_code`
    /// (2xx: applied, else rejected).
    async fn report(&self, endpoint: &str, config_id: &str, status_code: i32) {
        use kaa_ism::avro::Encode;
        let report = kaa_cdtp::ConfigApplied {
            correlation_id: format!("ui-{endpoint}").into(),
            timestamp: kaa_examples::ecr::model::now().0,
            timeout: 0,
            app_version_name: APP.into(),
            endpoint_id: endpoint.to_owned().into(),
            config_id: config_id.to_owned().into(),
            originator_replica_id: None,
            status_code,
            reason_phrase: (status_code >= 300).then(|| "reject-rate 0.1".into()),
            config_name: None,
        };
        self.bus
            .publish(
                &format!("kaa.v1.events.{CMX_INSTANCE}.endpoint.config.applied"),
                bytes::Bytes::from(report.to_vec()),
            )
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollout_page_on_ecr() {
    use reqwest::Method;
    let test = "rollout_page_on_ecr";
    let Some(b) = browser(test).await else {
        return;
    };
    let ecr = Ecr::start().await;

    // The fleet: 40 endpoints on the previous configuration, all applied.
    let (status, old) = ecr
        .call(
            Method::PUT,
            &format!("/app-versions/{APP}"),
            Some(json!({"rate": 5})),
        )
        .await;
    assert_eq!(status, 200, "{old}");
    let old = old["configId"].as_str().unwrap().to_owned();
    let endpoints: Vec<String> = (1..=40).map(|i| format!("ui-e{i}")).collect();
    for e in &endpoints {
        assert_eq!(ecr.ask(e).await, old);
        ecr.applied(e, &old).await;
    }

    // The rollout: steps 25 / 50 / 100 %, a long soak so it stays on its
    // first step while the page is watched.
    let (status, rollout) = ecr
        .call(
            Method::POST,
            &format!("/app-versions/{APP}/rollouts"),
            Some(json!({
                "config": {"rate": 6},
                "steps": [25, 50, 100],
                "gate": {"minAppliedPercent": 90, "minApplied": 1, "soakSeconds": 3600},
                "abort": {"maxRejectedPercent": 50, "minSample": 1000, "reportTimeoutSeconds": 3600},
                "onAbort": "revert"
            })),
        )
        .await;
    assert_eq!(status, 201, "{rollout}");
    let id = rollout["rolloutId"].as_str().unwrap().to_owned();
    let new = rollout["configId"].as_str().unwrap().to_owned();
    // The first step's cohort: the endpoints now answered the new configuration.
    let mut cohort = Vec::new();
    for e in &endpoints {
        if ecr.ask(e).await == new {
            cohort.push(e.clone());
        } else {
            ecr.applied(e, &old).await;
        }
    }
    assert!(cohort.len() >= 4, "a cohort of {} endpoints", cohort.len());
    // One of them rejects it.
    let rejecting = cohort.pop().unwrap();
    ecr.report(&rejecting, &new, 400).await;
    ecr.applied(&cohort[0], &new).await;

    // The page loads and asks for the token.
    let c = &b.client;
    c.goto(&format!("{}/ui/", ecr.http)).await.unwrap();
    b.sign_in().await;
    b.until_state("the running rollout", "running").await;
    assert_eq!(b.current("targeted").await, cohort.len() as u64 + 1);
    assert_eq!(b.current("rejected").await, 1);

    // Applied reports arrive: the count moves.
    b.until_applied(1).await;
    let half = cohort.len().div_ceil(2);
    for e in &cohort[1..half] {
        ecr.applied(e, &new).await;
    }
    b.until_applied(half as u64).await;
    if let Some(path) = std::env::var_os("KAA_UI_SCREENSHOT") {
        let png = c.screenshot().await.unwrap();
        std::fs::write(&path, png).unwrap();
    }
    for e in &cohort[half..] {
        ecr.applied(e, &new).await;
    }
    b.until_applied(cohort.len() as u64).await;

    // Pause and resume with the buttons; the REST API agrees.
    let state = || async {
        let (status, r) = ecr
            .call(Method::GET, &format!("/rollouts/{id}"), None)
            .await;
        assert_eq!(status, 200, "{r}");
        r["state"].as_str().unwrap().to_owned()
    };
    b.act("pause").await;
    b.until_state("the page to show paused", "paused").await;
    assert_eq!(state().await, "paused");
    b.act("resume").await;
    b.until_state("the page to show running again", "running")
        .await;
    assert_eq!(state().await, "running");

    // Someone else pauses and resumes it meanwhile (live refresh off, so the
    // page still holds the old ETag): its Pause is refused with 412, and the
    // page shows ECR's message.
    b.live_off().await;
    for action in ["pause", "resume"] {
        let (status, r) = ecr
            .call(Method::POST, &format!("/rollouts/{id}/{action}"), None)
            .await;
        assert_eq!(status, 200, "{r}");
    }
    b.act("pause").await;
    let shown = b.card_error("the 412 message").await;
    assert!(shown.contains("(412): If-Match"), "{shown}");
    assert_eq!(state().await, "running");
    c.clone().close().await.unwrap();
}
