//! Provisioning end to end (issue #17): ECR, CMX, the endpoint register and a KPC
//! that validates tokens over 16/ECAP, on one in-memory bus, driven by real MQTT
//! devices and the two REST APIs. Endpoints and tokens come from the register's
//! REST API; a revoked token cuts its device off within a second; an app version
//! changed in the register reaches the device through CMX (`appversion-updated`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use kaa_bus::{Bus, MemoryBus};
use kaa_examples::cmx::CmxService;
use kaa_examples::cmx::config::CmxServiceConfig;
use kaa_examples::ecr::EcrServer;
use kaa_examples::ecr::config::EcrConfig;
use kaa_examples::epr::EprServer;
use kaa_examples::epr::config::EprConfig;
use kaa_examples::kpc::KpcServer;
use kaa_examples::kpc::config::KpcConfig;
use kaa_examples::service::auth::{Access, Authenticator};
use kaa_examples::service::parse_yaml;
use kaa_testkit::e2e::{Device, Rest, System, unique};
use serde_json::{Value, json};

const ADMIN: &str = "provisioning-admin-token";

/// The four services on one memory bus; dropped with the test's runtime.
struct Provisioned {
    sys: System,
    epr: String,
    client: reqwest::Client,
    _dir: tempfile::TempDir,
    _kpc: kaa_examples::kpc::KpcHandle,
}

async fn start() -> Provisioned {
    let dir = tempfile::tempdir().unwrap();
    let bus: Arc<dyn Bus> = Arc::new(MemoryBus::new());
    let ecr: EcrConfig = parse_yaml(
        &format!(
            "ecr:\n  http:\n    listen: 127.0.0.1:0\n  store:\n    url: sqlite://{}\nauth:\n  enabled: false\n",
            dir.path().join("ecr.db").display()
        ),
        "ecr",
    )
    .unwrap();
    let ecr = EcrServer::bind(&ecr, Arc::clone(&bus)).await.unwrap();
    let http = ecr.local_addr();
    tokio::spawn(ecr.run(std::future::pending()));

    let cmx: CmxServiceConfig = parse_yaml(
        "service:\n  instance:\n    name: cmx\nkaa:\n  cmx:\n    configuration-data-provider:\n      service-instance:\n        name: ecr\n    communication-service:\n      service-instance:\n        name: kpc\ncmx:\n  bus: memory\n",
        "cmx",
    )
    .unwrap();
    let cmx = CmxService::bind(&cmx, Arc::clone(&bus)).await.unwrap();
    tokio::spawn(async move {
        let _ = cmx.run(std::future::pending()).await;
    });

    let epr: EprConfig = parse_yaml(
        &format!(
            "epr:\n  http:\n    listen: 127.0.0.1:0\n  store:\n    url: sqlite://{}\nauth:\n  enabled: false\n",
            dir.path().join("epr.db").display()
        ),
        "epr",
    )
    .unwrap();
    let auth =
        Authenticator::with_tokens([("admin".to_owned(), ADMIN.to_owned(), Access::ReadWrite)]);
    let epr = EprServer::bind_with_auth(&epr, Arc::clone(&bus), auth)
        .await
        .unwrap();
    let epr_base = format!("http://{}/api/v1", epr.local_addr());
    tokio::spawn(epr.run(std::future::pending()));

    let kpc: KpcConfig = parse_yaml(
        "service:\n  instance:\n    name: kpc\nkpc:\n  mqtt:\n    listen: 127.0.0.1:0\n    auth:\n      enabled: false\n  token-validation:\n    provider: epr\n    timeout: 2s\n",
        "kpc",
    )
    .unwrap();
    let kpc = KpcServer::bind(&kpc, Arc::clone(&bus))
        .await
        .unwrap()
        .spawn();
    Provisioned {
        sys: System {
            http,
            mqtt: kpc.local_addr(),
            cmx: "cmx",
        },
        epr: epr_base,
        client: reqwest::Client::new(),
        _dir: dir,
        _kpc: kpc,
    }
}

impl Provisioned {
    async fn call(&self, method: reqwest::Method, path: &str, body: Value) -> Value {
        let resp = self
            .client
            .request(method, format!("{}{path}", self.epr))
            .bearer_auth(ADMIN)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = resp.status();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        assert!(status.is_success(), "{path}: {status} {body}");
        body
    }

    /// Registers `endpoint` under `app` with a token; returns the token and its ID.
    async fn provision(&self, endpoint: &str, app: &str) -> (String, String) {
        let body = self
            .call(
                reqwest::Method::POST,
                "/endpoints",
                json!({"endpointId": endpoint, "appVersionName": app, "issueToken": true}),
            )
            .await;
        (
            body["token"]["token"].as_str().unwrap().to_owned(),
            body["token"]["tokenId"].as_str().unwrap().to_owned(),
        )
    }
}

/// The `statusCode` of the 1/KP error a request with the device's token gets.
async fn refused(dev: &mut Device) -> i64 {
    let topic = dev.request(None, json!({})).await;
    let err = dev.expect(&format!("{topic}/error")).await.json;
    err["statusCode"].as_i64().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provisioned_device_gets_configuration_and_revocation_cuts_it_off() {
    let p = start().await;
    let rest = Rest::new(p.sys);
    let v1 = unique("kettleV1");
    let v2 = unique("kettleV2");
    let id1 = rest.put_default(&v1, None, &json!({"fw": 1})).await;
    let id2 = rest.put_default(&v2, None, &json!({"fw": 2})).await;
    let endpoint = unique("kettle");
    let (token, token_id) = p.provision(&endpoint, &v1).await;

    // Unknown token and the right token under another app version: refused.
    let mut stranger = Device::connect(p.sys, &v1, &"f".repeat(64)).await;
    assert_eq!(refused(&mut stranger).await, 401);
    let mut wrong_app = Device::connect(p.sys, &v2, &token).await;
    assert_eq!(refused(&mut wrong_app).await, 403);

    // The provisioned device gets its configuration.
    let mut dev = Device::connect(p.sys, &v1, &token).await;
    let answer = dev.fetch(None, json!({"observe": true})).await;
    assert_eq!(answer, json!({"configId": id1, "config": {"fw": 1}}));
    dev.report(None, json!({"configId": id1})).await;

    // The register moves it to v2: CMX pushes v2's configuration, on v2's topic
    // (KPC pushes under the message's app version), and the device speaks v2 on.
    p.call(
        reqwest::Method::PUT,
        &format!("/endpoints/{endpoint}/app-version"),
        json!({"appVersionName": v2}),
    )
    .await;
    dev.app = v2.clone();
    let push = dev.expect(&dev.push_topic(None)).await;
    assert_eq!(push.json, json!({"configId": id2, "config": {"fw": 2}}));
    dev.report(None, json!({"configId": id2})).await;

    // Revoked: cut off within a second, no more pushes, reconnecting is refused.
    p.call(
        reqwest::Method::POST,
        &format!("/tokens/{token_id}/revoke"),
        json!({}),
    )
    .await;
    let revoked_at = Instant::now();
    rest.put_default(&v2, None, &json!({"fw": 3})).await;
    let status = refused(&mut dev).await;
    assert_eq!(status, 401);
    assert!(
        revoked_at.elapsed() < Duration::from_secs(1),
        "cut off after {:?}",
        revoked_at.elapsed()
    );
    let late = dev.drain(Duration::from_millis(700)).await;
    assert!(
        late.iter()
            .all(|m| !m.topic.ends_with("config/json/status")),
        "pushed after revocation: {late:?}"
    );
    dev.disconnect().await;
    let mut again = Device::connect(p.sys, &v2, &token).await;
    assert_eq!(refused(&mut again).await, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suspended_token_is_refused_until_reactivated() {
    let p = start().await;
    let rest = Rest::new(p.sys);
    let app = unique("lampV1");
    let id = rest.put_default(&app, None, &json!({"on": true})).await;
    let (token, token_id) = p.provision(&unique("lamp"), &app).await;
    p.call(
        reqwest::Method::POST,
        &format!("/tokens/{token_id}/suspend"),
        json!({}),
    )
    .await;
    let mut dev = Device::connect(p.sys, &app, &token).await;
    assert_eq!(refused(&mut dev).await, 403);
    p.call(
        reqwest::Method::POST,
        &format!("/tokens/{token_id}/reactivate"),
        json!({}),
    )
    .await;
    let answer = dev.fetch(None, json!({})).await;
    assert_eq!(answer["configId"], id.as_str());
}

/// 1,000 endpoints provisioned in one batch call connect with their tokens and
/// get their configuration.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_endpoints_from_one_batch() {
    let p = start().await;
    let rest = Rest::new(p.sys);
    let app = unique("meterV1");
    let id = rest.put_default(&app, None, &json!({"period": 60})).await;
    let endpoints: Vec<Value> = (0..1000)
        .map(|i| json!({"endpointId": format!("meter-{i:04}"), "appVersionName": app}))
        .collect();
    let body = p
        .call(
            reqwest::Method::POST,
            "/endpoints/batch",
            json!({"endpoints": endpoints, "issueTokens": true}),
        )
        .await;
    let tokens: Vec<String> = body["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["token"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(tokens.len(), 1000);
    let sys = p.sys;
    let mut tasks = tokio::task::JoinSet::new();
    let limit = Arc::new(tokio::sync::Semaphore::new(100));
    for token in tokens {
        let (app, id, limit) = (app.clone(), id.clone(), Arc::clone(&limit));
        tasks.spawn(async move {
            let _permit = limit.acquire_owned().await.unwrap();
            let mut dev = Device::connect(sys, &app, &token).await;
            let answer = dev.fetch(None, json!({})).await;
            assert_eq!(answer["configId"], id.as_str());
            dev.disconnect().await;
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
}

/// The `epr` binary: API tokens from the environment, the README's one-call
/// provisioning, and no endpoint token or API token in its logs (`RUST_LOG=debug`).
#[tokio::test]
async fn the_epr_binary_provisions_with_one_call_and_logs_no_token() {
    use std::process::Stdio;
    use tokio::io::AsyncBufReadExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("epr.yaml");
    std::fs::write(
        &path,
        format!(
            "epr:\n  http:\n    listen: 127.0.0.1:0\n  store:\n    url: sqlite://{}\n\
             auth:\n  enabled: true\n  tokens:\n    - name: admin\n      token: {{ env: EPR_TEST_ADMIN }}\n      access: read-write\n\
             \x20   - name: dashboard\n      token: {{ env: EPR_TEST_READ }}\n      access: read\n",
            dir.path().join("epr.db").display()
        ),
    )
    .unwrap();
    let log = dir.path().join("epr.log");
    let mut child = tokio::process::Command::new(kaa_testkit::service_binary("epr"))
        .arg(&path)
        .env("EPR_TEST_ADMIN", "Adm1n-From-Env")
        .env("EPR_TEST_READ", "R3ad-From-Env")
        .env("RUST_LOG", "debug")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
        .await
        .expect("epr starts")
        .unwrap()
        .expect("a start-up line");
    let base = line
        .strip_prefix("epr listening on ")
        .unwrap_or_else(|| panic!("{line}"))
        .to_owned();
    let http = reqwest::Client::new();
    let register = |token: Option<&'static str>| {
        let mut r = http
            .post(format!("{base}/api/v1/endpoints"))
            .header("content-type", "application/json")
            .body(r#"{"endpointId":"kettle-1","appVersionName":"smartKettleV1","metadata":{"room":"kitchen"},"issueToken":true}"#);
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        r.send()
    };
    assert_eq!(register(None).await.unwrap().status(), 401);
    assert_eq!(register(Some("R3ad-From-Env")).await.unwrap().status(), 403);
    let created = register(Some("Adm1n-From-Env")).await.unwrap();
    assert_eq!(created.status(), 201);
    let body: Value = created.json().await.unwrap();
    let token = body["token"]["token"].as_str().unwrap().to_owned();
    let read: Value = http
        .get(format!("{base}/api/v1/endpoints/kettle-1"))
        .bearer_auth("R3ad-From-Env")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(read["metadata"], json!({"room": "kitchen"}));
    child.kill().await.unwrap();
    let logs = std::fs::read_to_string(&log).unwrap();
    assert!(logs.contains("endpoints registered"), "{logs}");
    for secret in [token.as_str(), "Adm1n-From-Env", "R3ad-From-Env"] {
        assert!(!logs.contains(secret), "a secret in the logs");
    }
}
