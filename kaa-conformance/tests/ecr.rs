//! The kit's ECR mode against our own ECR (`kaa-ecr`), in this process with an
//! SQLite store: on the in-memory bus (always), and on the machine's NATS
//! (skipped visibly when NATS is not reachable, mandatory with
//! `KAA_REQUIRE_SERVICES=1`). And against a small provider of this file that
//! gets one thing wrong at a time: the kit must name the case that catches it.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use futures::StreamExt;
use kaa_bus::Bus;
use kaa_bus::test_support::NATS;
use kaa_cdtp::{ConfigRequest, ConfigResponse, ConfigUpdated, Current};
use kaa_conformance::cmx::SuiteOptions;
use kaa_conformance::ecr::{CASES, EcrTarget, run_ecr_suite};
use kaa_conformance::{Outcome, Report};
use kaa_ecr::EcrServer;
use kaa_ecr::config::EcrConfig;
use kaa_ism::avro::{Decode, Encode};
use serde_json::{Value, json};

const APP: &str = "conformance-v1";

fn options() -> SuiteOptions {
    SuiteOptions {
        wait: Duration::from_secs(5),
        quiet: Duration::from_millis(300),
        ..SuiteOptions::default()
    }
}

/// Our ECR on `bus`, serving HTTP on an ephemeral port, until the sender is used
/// or dropped.
async fn start_our_ecr(
    bus: &Arc<dyn Bus>,
    tag: &str,
    dir: &std::path::Path,
) -> (
    EcrTarget,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
) {
    let provider = format!("ecr-{tag}");
    let cmx = format!("cmx-{tag}");
    let yaml = format!(
        "service:\n  instance:\n    name: {provider}\n\
         kaa:\n  applications:\n    conformance:\n      versions:\n        {APP}: {{}}\n\
         ecr:\n  http:\n    listen: 127.0.0.1:0\n  store:\n    url: sqlite://{db}\n\
         \x20 cmx:\n    service-instance-name: {cmx}\n\
         auth:\n  enabled: false\n",
        db = dir.join("ecr.db").display(),
    );
    let config: EcrConfig = kaa_service::parse_yaml(&yaml, "ecr test config").expect("config");
    let server = EcrServer::bind(&config, Arc::clone(bus))
        .await
        .expect("bind ECR");
    let target = EcrTarget {
        cmx: Some(cmx),
        consumer_replica: format!("{provider}-kit"),
        ..EcrTarget::new(&provider, format!("http://{}", server.local_addr()))
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let _ = server
            .run(async move {
                let _ = stopped.await;
            })
            .await;
    });
    (target, stop, task)
}

async fn run_against_our_ecr(bus: Arc<dyn Bus>, tag: &str) -> Report {
    let dir = tempfile::tempdir().expect("tempdir");
    let (target, stop, task) = start_our_ecr(&bus, tag, dir.path()).await;
    let report = run_ecr_suite(bus, &target, &options(), |_| {})
        .await
        .expect("suite");
    let _ = stop.send(());
    let _ = task.await;
    report
}

fn assert_all_passed(report: &Report) {
    println!("{}", report.to_table());
    assert_eq!(report.results.len(), CASES.len());
    assert_eq!(
        report.passed(),
        CASES.len(),
        "every case, extensions too:\n{}",
        report.to_table()
    );
    assert!(report.conformant());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_ecr_passes_every_case_on_the_memory_bus() {
    let bus: Arc<dyn Bus> = Arc::new(kaa_bus::MemoryBus::new());
    let report = run_against_our_ecr(bus, &format!("mem{}", std::process::id())).await;
    assert_all_passed(&report);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_ecr_passes_every_case_on_nats() {
    let Some(url) = NATS.require("kaa-conformance our_ecr_passes_every_case_on_nats") else {
        return;
    };
    let config = kaa_bus::NatsConfig::new([url.as_str()]).with_retry_on_initial_connect(false);
    let bus: Arc<dyn Bus> = Arc::new(kaa_bus::NatsBus::connect(&config).await.expect("NATS"));
    let report = run_against_our_ecr(bus, &format!("nats{}", std::process::id())).await;
    assert_all_passed(&report);
    let xml = report.to_junit();
    assert!(
        xml.contains(&format!("tests=\"{}\" failures=\"0\"", CASES.len())),
        "{xml}"
    );
}

#[tokio::test]
async fn with_no_provider_the_cases_fail_with_a_reason() {
    let bus: Arc<dyn Bus> = Arc::new(kaa_bus::MemoryBus::new());
    // Nothing listens on this port: it was bound and dropped.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let target = EcrTarget::new("ecr-absent", format!("http://127.0.0.1:{port}"));
    let options = SuiteOptions {
        wait: Duration::from_millis(100),
        quiet: Duration::from_millis(10),
        ..SuiteOptions::default()
    };
    let report = run_ecr_suite(bus, &target, &options, |_| {})
        .await
        .expect("suite");
    assert!(!report.conformant());
    for r in &report.results {
        match &r.outcome {
            Outcome::Failed(why) => assert!(!why.is_empty()),
            Outcome::Skipped(why) => assert_eq!(r.case.id, "ECR-STAT-1", "{why}"),
            Outcome::Passed => panic!("{} passed with no provider", r.case.id),
        }
    }
    let table = report.to_table();
    assert!(table.contains("CDTP-REQ-1 FAILED"), "{table}");
}

// ---------------------------------------------------------------------------
// A provider with one flaw at a time.

/// What the provider gets wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flaw {
    /// Nothing: the baseline, which must pass.
    None,
    /// 6/CDTP answers with the configuration before the current one.
    StaleAnswers,
    /// PUT ignores `If-Match`.
    IgnoresIfMatch,
    /// After announcing a write, announces the configuration it replaced again.
    AnnouncesOlderAfterNewer,
    /// Announces a write before it is stored (and so before 6/CDTP can answer it).
    AnnouncesBeforeVisible,
}

type Key = (String, String, String);
/// A configuration: its ID and content.
type Held = (String, Value);

struct Fake {
    flaw: Flaw,
    bus: Arc<dyn Bus>,
    provider: String,
    /// Every configuration a slot held, the current one last (`None`: deleted).
    slots: Mutex<HashMap<Key, Vec<Option<Held>>>>,
}

impl Fake {
    fn current(&self, key: &Key) -> Option<Held> {
        let slots = self.slots.lock().unwrap();
        slots.get(key).and_then(|h| h.last().cloned()).flatten()
    }

    /// What 6/CDTP answers: the current configuration, or (flawed) the one before.
    fn answered(&self, key: &Key) -> Option<Held> {
        let slots = self.slots.lock().unwrap();
        let history = slots.get(key)?;
        let back = if self.flaw == Flaw::StaleAnswers && history.len() >= 2 {
            2
        } else {
            1
        };
        history[history.len() - back].clone()
    }

    fn store(&self, key: &Key, value: Option<Held>) {
        self.slots
            .lock()
            .unwrap()
            .entry(key.clone())
            .or_default()
            .push(value);
    }

    async fn announce(&self, key: &Key, value: Option<&Held>) {
        let (id, content) = value.map_or((String::new(), Value::Null), |(i, c)| {
            (i.clone(), c.clone())
        });
        let event = ConfigUpdated {
            correlation_id: format!("fake-{id}").into(),
            timestamp: 0,
            timeout: 0,
            app_version_name: key.1.clone().into(),
            endpoint_id: key.0.clone().into(),
            config_id: id.into(),
            content_type: kaa_cdtp::APPLICATION_JSON.into(),
            content: content.to_string().into_bytes().into(),
            originator_replica_id: Some("fake-1".into()),
            config_name: (key.2 != "default").then(|| key.2.clone().into()),
        };
        let subject = kaa_cdtp::subject::config_updated_subject(&self.provider)
            .unwrap()
            .to_string();
        self.bus
            .publish(&subject, Bytes::from(event.to_vec()))
            .await
            .unwrap();
    }
}

fn config_id_of(content: &Value) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    content.to_string().hash(&mut h);
    format!("{:016x}", h.finish())
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, axum::Json(json!({ "message": message }))).into_response()
}

fn config_body(key: &Key, id: &str, content: &Value) -> Response {
    let mut response = axum::Json(json!({
        "configId": id, "config": content.to_string(), "name": key.2,
    }))
    .into_response();
    response
        .headers_mut()
        .insert(header::ETAG, format!("\"{id}\"").parse().unwrap());
    response
}

fn key_of(path: (String, String), query: &HashMap<String, String>) -> Key {
    let name = query
        .get("name")
        .cloned()
        .unwrap_or_else(|| "default".into());
    (path.0, path.1, name)
}

async fn rest_get(
    State(fake): State<Arc<Fake>>,
    Path(path): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let key = key_of(path, &query);
    match fake.current(&key) {
        Some((id, content)) => config_body(&key, &id, &content),
        None => error(StatusCode::NOT_FOUND, "no such configuration"),
    }
}

async fn rest_put(
    State(fake): State<Arc<Fake>>,
    Path(path): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let key = key_of(path, &query);
    let Ok(content) = serde_json::from_slice::<Value>(&body) else {
        return error(StatusCode::BAD_REQUEST, "malformed JSON body");
    };
    let current = fake.current(&key);
    if let Some(tag) = headers.get(header::IF_MATCH).and_then(|v| v.to_str().ok())
        && fake.flaw != Flaw::IgnoresIfMatch
        && current
            .as_ref()
            .map(|(id, _)| format!("\"{id}\""))
            .as_deref()
            != Some(tag)
    {
        return error(StatusCode::PRECONDITION_FAILED, "If-Match does not match");
    }
    let id = config_id_of(&content);
    let value = (id.clone(), content.clone());
    if current.as_ref().map(|(i, _)| i) != Some(&id) {
        if fake.flaw == Flaw::AnnouncesBeforeVisible {
            fake.announce(&key, Some(&value)).await;
            // Long enough for the kit to ask in between, even on a loaded machine.
            tokio::time::sleep(Duration::from_secs(1)).await;
            fake.store(&key, Some(value));
        } else {
            fake.store(&key, Some(value.clone()));
            fake.announce(&key, Some(&value)).await;
            if fake.flaw == Flaw::AnnouncesOlderAfterNewer
                && let Some(older) = &current
            {
                fake.announce(&key, Some(older)).await;
            }
        }
    }
    config_body(&key, &id, &content)
}

async fn rest_delete(
    State(fake): State<Arc<Fake>>,
    Path(path): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let key = key_of(path, &query);
    if fake.current(&key).is_none() {
        return error(StatusCode::NOT_FOUND, "no such configuration");
    }
    fake.store(&key, None);
    fake.announce(&key, None).await;
    StatusCode::NO_CONTENT.into_response()
}

/// Starts the provider on `bus` with an HTTP listener on an ephemeral port.
async fn start_fake(bus: Arc<dyn Bus>, provider: &str, flaw: Flaw) -> String {
    let fake = Arc::new(Fake {
        flaw,
        bus: Arc::clone(&bus),
        provider: provider.to_owned(),
        slots: Mutex::default(),
    });
    let subject = kaa_cdtp::subject::request_subject(provider)
        .unwrap()
        .to_string();
    let mut requests = bus.subscribe(&subject, Some(provider)).await.unwrap();
    let answering = Arc::clone(&fake);
    tokio::spawn(async move {
        while let Some(m) = requests.next().await {
            // An undecodable datum is dropped (6/CDTP allows that).
            let (Some(reply_to), Ok(request)) = (m.reply_to, ConfigRequest::decode(&m.payload))
            else {
                continue;
            };
            let key = (
                request.endpoint_id.to_string(),
                request.app_version_name.to_string(),
                request
                    .config_name
                    .as_deref()
                    .unwrap_or("default")
                    .to_owned(),
            );
            let held = answering.answered(&key);
            let text = held.as_ref().map(|(_, content)| content.to_string());
            let current = match (&held, &text) {
                (Some((id, _)), Some(text)) => Current::Config {
                    config_id: id,
                    content: text.as_bytes(),
                },
                _ => Current::Absent,
            };
            let response = ConfigResponse::answer(&request, current, 0).to_vec();
            let _ = answering
                .bus
                .publish(&reply_to, Bytes::from(response))
                .await;
        }
    });
    kaa_bus::subscription_barrier(bus.as_ref(), Duration::from_secs(5))
        .await
        .unwrap();
    let app = Router::new()
        .route(
            "/api/v1/endpoints/{endpoint}/app-versions/{app}",
            get(rest_get).put(rest_put).delete(rest_delete),
        )
        .with_state(fake);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    format!("http://{addr}")
}

/// The IDs of the cases that failed when the suite ran against the provider with
/// `flaw`.
async fn failing_with(flaw: Flaw) -> BTreeSet<&'static str> {
    let bus: Arc<dyn Bus> = Arc::new(kaa_bus::MemoryBus::new());
    let provider = format!("fake-{flaw:?}").to_lowercase();
    let http = start_fake(Arc::clone(&bus), &provider, flaw).await;
    let target = EcrTarget::new(&provider, http);
    let options = SuiteOptions {
        wait: Duration::from_secs(2),
        ..options()
    };
    let report = run_ecr_suite(bus, &target, &options, |_| {})
        .await
        .expect("suite");
    println!("{flaw:?}:\n{}", report.to_table());
    // Without --cmx the status-history case is skipped; nothing else is.
    assert_eq!(report.skipped(), 1, "{}", report.to_table());
    report
        .results
        .iter()
        .filter(|r| matches!(r.outcome, Outcome::Failed(_)))
        .map(|r| r.case.id)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_without_flaws_passes() {
    assert_eq!(failing_with(Flaw::None).await, BTreeSet::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_answers_are_caught() {
    assert_eq!(
        failing_with(Flaw::StaleAnswers).await,
        BTreeSet::from([
            "ECR-REST-IFM-1",
            "ECR-REST-DEL-1",
            "CDTP-REQ-1",
            "CDTP-REQ-3",
            "CDTP-UPD-2"
        ])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ignored_if_match_is_caught() {
    assert_eq!(
        failing_with(Flaw::IgnoresIfMatch).await,
        BTreeSet::from(["ECR-REST-IFM-1"])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_configuration_announced_after_a_newer_is_caught() {
    assert_eq!(
        failing_with(Flaw::AnnouncesOlderAfterNewer).await,
        BTreeSet::from(["CDTP-UPD-3"])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_announcement_before_the_write_is_visible_is_caught() {
    assert_eq!(
        failing_with(Flaw::AnnouncesBeforeVisible).await,
        BTreeSet::from(["CDTP-UPD-2"])
    );
}
