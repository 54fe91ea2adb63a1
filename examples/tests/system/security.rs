//! Security properties, each tested end to end:
//!
//! - token binding in KPC: what a session does with endpoint token A only ever
//!   reaches CMX/ECR as endpoint A, whatever the payload says; session A never
//!   receives what is meant for endpoint B; unknown tokens and tokens used with
//!   another app version are refused with the 1/KP error;
//! - secrets are read from the environment only (a secret written into a
//!   configuration file stops the binary with a clear message);
//! - info-level logs of the real binary never hold configuration bodies, endpoint
//!   tokens or reported reasons.
//!
//! ECR's REST authentication (401 without a token, 403 for a read-only token on a
//! write, store unchanged) is `ecr_api::bearer_tokens_guard_the_api`.

use std::io::Write;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use kaa_bus::{Bus, MemoryBus};
use kaa_examples::cmx::CmxService;
use kaa_examples::cmx::config::CmxServiceConfig;
use kaa_examples::ecr::EcrServer;
use kaa_examples::ecr::config::EcrConfig;
use kaa_examples::kpc::KpcServer;
use kaa_examples::kpc::config::KpcConfig;
use kaa_examples::service::parse_yaml;
use kaa_testkit::e2e::{Device, QUIET, Rest, System, WAIT};
use serde_json::{Value, json};

const APP: &str = "app-sec";

/// ECR + CMX + KPC on one in-memory bus, with a KPC token table in which tokens
/// are not endpoint IDs: `tok-a` → `ep-a` (any app version), `tok-b` → `ep-b`
/// (only for `app-sec`).
async fn with_token_table<F, Fut>(behaviour: F)
where
    F: FnOnce(System) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let bus: Arc<dyn Bus> = Arc::new(MemoryBus::new());
    let dir = tempfile::tempdir().unwrap();
    let ecr: EcrConfig = parse_yaml(
        &format!(
            "ecr:\n  http:\n    listen: 127.0.0.1:0\n  store:\n    url: \"sqlite://{}\"\nauth:\n  enabled: false\n",
            dir.path().join("ecr.db").display()
        ),
        "ecr",
    )
    .unwrap();
    let cmx = CmxServiceConfig::parse("cmx:\n  bus: memory\n", "cmx").unwrap();
    let kpc: KpcConfig = parse_yaml(
        &format!(
            "kpc:\n  mqtt:\n    listen: 127.0.0.1:0\n  endpoint-tokens:\n    tok-a: ep-a\n    tok-b: {{ endpoint-id: ep-b, app-version: {APP} }}\n"
        ),
        "kpc",
    )
    .unwrap();
    let ecr = EcrServer::bind(&ecr, Arc::clone(&bus)).await.unwrap();
    let http = ecr.local_addr();
    let (stop, _) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let ecr_task = tokio::spawn(ecr.run(stopped(stop.subscribe())));
    let cmx = CmxService::bind(&cmx, Arc::clone(&bus)).await.unwrap();
    let cmx_stop = stopped(stop.subscribe());
    let cmx_task = tokio::spawn(async move { cmx.run(cmx_stop).await.map(drop) });
    let kpc = KpcServer::bind(&kpc, bus).await.unwrap().spawn();
    behaviour(System {
        http,
        mqtt: kpc.local_addr(),
        cmx: "cmx",
    })
    .await;
    kpc.shutdown().await.unwrap();
    let _ = stop.send(true);
    cmx_task.await.unwrap().unwrap();
    ecr_task.await.unwrap().unwrap();
}

/// The `/status` or `/error` answer to the request on `topic`.
async fn answer_to(device: &mut Device, topic: &str) -> kaa_testkit::e2e::Msg {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        for m in device.drain(left.min(Duration::from_millis(100))).await {
            if m.topic == format!("{topic}/status") || m.topic == format!("{topic}/error") {
                return m;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no answer to {topic}"
        );
    }
}

fn config_id(v: &Value) -> String {
    v["configId"].as_str().expect("configId").to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_token_only_ever_acts_for_its_own_endpoint() {
    with_token_table(|sys| async move {
        let rest = Rest::new(sys);
        rest.put_endpoint("ep-a", APP, None, &json!({"owner": "a"}))
            .await;
        let b_id = rest
            .put_endpoint("ep-b", APP, None, &json!({"owner": "b"}))
            .await;

        // B gets its own configuration and reports it applied.
        let mut b = Device::connect(sys, APP, "tok-b").await;
        let got = b.fetch(None, json!({"observe": true})).await;
        assert_eq!(got["config"], json!({"owner": "b"}));
        b.report(None, json!({"configId": b_id})).await;
        rest.wait_status("ep-b", |r| {
            r["configId"] == b_id.as_str() && r["status"] == "APPLIED"
        })
        .await;
        let b_before = rest.statuses("ep-b").await;

        // A asks with payloads naming B: it gets A's configuration, or a 7/CMP
        // error for fields a request does not have; never B's.
        let mut a = Device::connect(sys, APP, "tok-a").await;
        for body in [
            json!({"observe": true}),
            json!({"endpointId": "ep-b", "endpoint_id": "ep-b", "token": "tok-b"}),
            json!({"configId": b_id, "endpointId": "ep-b"}),
        ] {
            let topic = a.request(None, body.clone()).await;
            let answer = answer_to(&mut a, &topic).await;
            if answer.topic.ends_with("/status") {
                assert_eq!(answer.json["config"], json!({"owner": "a"}), "{body}");
            } else {
                assert_eq!(answer.json["statusCode"], 400, "{body}: {}", answer.json);
            }
        }
        // A reports B's configuration rejected, also naming B in every way a payload
        // can (CMX refuses fields a report does not have), then plainly.
        let forged = json!({
            "configId": b_id, "statusCode": 400, "reasonPhrase": "forged by A",
            "endpointId": "ep-b", "endpoint_id": "ep-b", "appVersionName": APP,
        });
        a.report(None, forged.clone()).await;
        a.report(
            None,
            json!({"configId": b_id, "statusCode": 400, "reasonPhrase": "forged by A"}),
        )
        .await;
        // It lands on A (the only endpoint A's token resolves to), never on B.
        rest.wait_status("ep-a", |r| r["reasonPhrase"] == "forged by A")
            .await;
        // Topics with B's endpoint ID in place of a token are unknown tokens: 401.
        for resource in ["config/json/41", "applied/json/42"] {
            let topic = format!("kp1/{APP}/cmx/ep-b/{resource}");
            a.publish_raw(&topic, forged.to_string()).await;
            let error = a.expect(&format!("{topic}/error")).await;
            assert_eq!(error.json["statusCode"], 401, "{}", error.json);
        }
        // B's token with another app version than the one it is limited to: 403.
        let topic = "kp1/other-app/cmx/tok-b/config/json/43".to_owned();
        a.publish_raw(&topic, "{}").await;
        assert_eq!(
            a.expect(&format!("{topic}/error")).await.json["statusCode"],
            403
        );

        // B's status history holds only what B itself reported.
        tokio::time::sleep(QUIET).await;
        assert_eq!(rest.statuses("ep-b").await, b_before);

        // A change to B's configuration is pushed to B only.
        let b_new = rest
            .put_endpoint("ep-b", APP, None, &json!({"owner": "b", "v": 2}))
            .await;
        let push = b.expect(&b.push_topic(None)).await;
        assert_eq!(config_id(&push.json), b_new);
        let seen_by_a = a.drain(QUIET).await;
        assert!(
            seen_by_a.iter().all(|m| !m.topic.contains("tok-b")
                && m.json.get("config") != Some(&json!({"owner": "b", "v": 2}))),
            "A saw B's data: {seen_by_a:?}"
        );

        b.disconnect().await;
        a.disconnect().await;
    })
    .await;
}

/// Runs `bin config-file` with a configuration holding a secret and returns the
/// exit code and stderr.
async fn run_with_config(bin: std::path::PathBuf, yaml: &str) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.yaml");
    std::fs::File::create(&path)
        .and_then(|mut f| f.write_all(yaml.as_bytes()))
        .unwrap();
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::process::Command::new(bin)
            .arg(&path)
            .current_dir(dir.path())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the binary exits")
    .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn the_binaries_refuse_secrets_written_into_their_configuration() {
    let refused = "secrets are not read from configuration files";
    let (code, err) = run_with_config(
        kaa_testkit::service_binary("ecr"),
        "ecr:\n  http:\n    listen: 127.0.0.1:0\n  store:\n    url: sqlite://x.db\n\
         auth:\n  enabled: true\n  tokens:\n    - name: admin\n      token: Adm1n-S3cret\n      access: read-write\n",
    )
    .await;
    assert_ne!(code, Some(0));
    assert!(err.contains(refused) && err.contains("line 10"), "{err}");
    assert!(!err.contains("Adm1n-S3cret"), "{err}");

    let (code, err) = run_with_config(
        kaa_testkit::service_binary("ecr"),
        "ecr:\n  http:\n    listen: 127.0.0.1:0\n  store:\n    url: postgres://kaa:Pg-S3cret@127.0.0.1/ecr\n\
         auth:\n  enabled: false\n",
    )
    .await;
    assert_ne!(code, Some(0));
    assert!(err.contains("ecr.store.url-env"), "{err}");
    assert!(!err.contains("Pg-S3cret"), "{err}");

    let (code, err) = run_with_config(
        kaa_testkit::service_binary("kpc"),
        "kpc:\n  mqtt:\n    listen: 127.0.0.1:0\n    auth:\n      enabled: true\n      users:\n\
         \x20       - username: devices\n          password: Mqtt-S3cret\n",
    )
    .await;
    assert_ne!(code, Some(0));
    assert!(err.contains(refused), "{err}");
    assert!(!err.contains("Mqtt-S3cret"), "{err}");
}

/// The lines of `path` once one starts with `prefix`, within [`WAIT`].
async fn wait_for_line(path: &std::path::Path, prefix: &str) -> String {
    let deadline = tokio::time::Instant::now() + WAIT * 6;
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if let Some(line) = text.lines().find(|l| l.trim_start().starts_with(prefix)) {
            return line.to_owned();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no {prefix:?} in {text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn info_logs_never_hold_configurations_tokens_or_reasons() {
    let dir = tempfile::tempdir().unwrap();
    let (out_path, err_path) = (dir.path().join("stdout"), dir.path().join("stderr"));
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_kaa-stack"))
        .args([
            "--http-listen",
            "127.0.0.1:0",
            "--mqtt-listen",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(dir.path().join("data"))
        .env("RUST_LOG", "info")
        .stdout(Stdio::from(std::fs::File::create(&out_path).unwrap()))
        .stderr(Stdio::from(std::fs::File::create(&err_path).unwrap()))
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let http_line = wait_for_line(&out_path, "REST API (ECR)").await;
    let mqtt_line = wait_for_line(&out_path, "MQTT (KPC)").await;
    let word = |line: &str, n: usize| line.split_whitespace().nth(n).unwrap().to_owned();
    let http: std::net::SocketAddr = word(&http_line, 3)
        .trim_start_matches("http://")
        .trim_end_matches("/api/v1")
        .parse()
        .unwrap();
    let mqtt: std::net::SocketAddr = word(&mqtt_line, 2).parse().unwrap();
    let sys = System {
        http,
        mqtt,
        cmx: kaa_examples::stack::CMX_INSTANCE,
    };

    // Markers: a configuration body, an endpoint token, a reported reason.
    let (body, token, reason) = ("CfgBodyMarker7731", "TokMarker4412", "ReasonMarker9923");
    let rest = Rest::new(sys);
    let first = rest
        .put_default("app-logs", None, &json!({"secret": body}))
        .await;
    let mut dev = Device::connect(sys, "app-logs", token).await;
    let got = dev.fetch(None, json!({"observe": true})).await;
    assert_eq!(got["config"]["secret"], body);
    dev.report(
        None,
        json!({"configId": first, "statusCode": 400, "reasonPhrase": reason}),
    )
    .await;
    rest.wait_status(token, |r| r["reasonPhrase"] == reason)
        .await;
    // A push and a refused request (unknown app version is fine: any is served).
    let second = rest
        .put_default("app-logs", None, &json!({"secret": body, "v": 2}))
        .await;
    assert_eq!(
        config_id(&dev.expect(&dev.push_topic(None)).await.json),
        second
    );
    dev.publish_raw(&format!("kp1/app-logs/nope/{token}/config/json/9"), "{}")
        .await;
    dev.disconnect().await;

    let pid = child.id().expect("running");
    // SIGTERM: the shutdown path logs too.
    let _ = std::process::Command::new("kill")
        .arg(pid.to_string())
        .status();
    let _ = tokio::time::timeout(Duration::from_secs(20), child.wait()).await;
    let logs = format!(
        "{}\n{}",
        std::fs::read_to_string(&out_path).unwrap(),
        std::fs::read_to_string(&err_path).unwrap()
    );
    assert!(logs.contains("INFO"), "info logs were written: {logs}");
    for marker in [body, token, reason] {
        let leaks: Vec<&str> = logs.lines().filter(|l| l.contains(marker)).collect();
        assert!(leaks.is_empty(), "{marker} in the logs: {leaks:#?}");
    }
}

/// The ECR binary reads its API tokens and its store URL from the environment
/// variables its configuration names: without a token a write is 401, with the
/// read-write token from the environment it is 200.
#[tokio::test]
async fn the_ecr_binary_takes_tokens_and_the_store_url_from_the_environment() {
    use tokio::io::AsyncBufReadExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ecr.yaml");
    std::fs::write(
        &path,
        "ecr:\n  http:\n    listen: 127.0.0.1:0\n  store:\n    url-env: SEC_TEST_STORE_URL\n\
         auth:\n  enabled: true\n  tokens:\n    - name: admin\n      token: { env: SEC_TEST_ADMIN_TOKEN }\n      access: read-write\n",
    )
    .unwrap();
    let mut child = tokio::process::Command::new(kaa_testkit::service_binary("ecr"))
        .arg(&path)
        .env("SEC_TEST_ADMIN_TOKEN", "Adm1n-From-Env")
        .env(
            "SEC_TEST_STORE_URL",
            format!("sqlite://{}", dir.path().join("ecr.db").display()),
        )
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .expect("ecr starts")
        .unwrap()
        .expect("a start-up line");
    let base = line
        .strip_prefix("ecr listening on ")
        .unwrap_or_else(|| panic!("{line}"))
        .to_owned();
    let url = format!("{base}/api/v1/app-versions/app-env");
    let http = reqwest::Client::new();
    let put = |token: Option<&'static str>| {
        let mut r = http
            .put(&url)
            .header("content-type", "application/json")
            .body("{\"a\":1}");
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        r.send()
    };
    assert_eq!(put(None).await.unwrap().status(), 401);
    assert_eq!(put(Some("wrong")).await.unwrap().status(), 401);
    assert_eq!(put(Some("Adm1n-From-Env")).await.unwrap().status(), 200);
    assert!(
        dir.path().join("ecr.db").exists(),
        "the store URL came from the environment"
    );
    child.kill().await.unwrap();
}

/// Starts `bin <dir>/<name>.yaml` with `env`, stdout and stderr into
/// `<dir>/<name>.out` / `.log`; returns the child and the stdout line starting
/// with `banner`.
async fn spawn_service(
    bin: std::path::PathBuf,
    name: &str,
    dir: &std::path::Path,
    yaml: &str,
    env: &[(&str, &str)],
    banner: &str,
) -> (tokio::process::Child, String) {
    let config = dir.join(format!("{name}.yaml"));
    std::fs::write(&config, yaml).unwrap();
    let out = dir.join(format!("{name}.out"));
    let mut command = tokio::process::Command::new(bin);
    command
        .arg(&config)
        .env("RUST_LOG", "info")
        .stdout(Stdio::from(std::fs::File::create(&out).unwrap()))
        .stderr(Stdio::from(
            std::fs::File::create(dir.join(format!("{name}.log"))).unwrap(),
        ))
        .kill_on_drop(true);
    for (k, v) in env {
        command.env(k, v);
    }
    let child = command.spawn().unwrap();
    let line = wait_for_line(&out, banner).await;
    (child, line)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn info_logs_of_the_separate_services_never_hold_secrets_or_configurations() {
    let test =
        "system::security::info_logs_of_the_separate_services_never_hold_secrets_or_configurations";
    let Some(nats) = kaa_bus::test_support::NATS.require(test) else {
        return;
    };
    let tag = kaa_testkit::e2e::unique("seclog");
    let (ecr, cmx, kpc) = (
        format!("{tag}-ecr"),
        format!("{tag}-cmx"),
        format!("{tag}-kpc"),
    );
    let (app, ep) = (format!("{tag}-app"), format!("{tag}-ep"));
    // Markers: a configuration body, an endpoint token, a reported reason, the REST
    // API token, a wrong API token, the MQTT password, a wrong MQTT password.
    let body = "CfgBodyMarker5521";
    let token = "TokMarker6632";
    let reason = "ReasonMarker7743";
    let api_token = "ApiTokMarker8854";
    let wrong_api_token = "WrongApiTokMarker9965";
    let password = "MqttPwMarker1076";
    let wrong_password = "WrongMqttPwMarker2187";
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (mut ecr_child, line) = spawn_service(
        kaa_testkit::service_binary("ecr"),
        "ecr",
        d,
        &format!(
            "service: {{ instance: {{ name: {ecr} }} }}\nnats:\n  urls: [\"{nats}\"]\n\
             ecr:\n  http:\n    listen: 127.0.0.1:0\n  store:\n    url: \"sqlite://{db}\"\n  cmx:\n    service-instance-name: {cmx}\n\
             auth:\n  enabled: true\n  tokens:\n    - name: admin\n      token: {{ env: SEC_API_TOKEN }}\n      access: read-write\n",
            db = d.join("ecr.db").display()
        ),
        &[("SEC_API_TOKEN", api_token)],
        "ecr listening on",
    )
    .await;
    let base = line.trim_start_matches("ecr listening on ").to_owned();
    let (mut cmx_child, _) = spawn_service(
        kaa_testkit::service_binary("cmx"),
        "cmx",
        d,
        &format!(
            "service: {{ instance: {{ name: {cmx} }} }}\nnats:\n  urls: [\"{nats}\"]\n\
             kaa:\n  cmx:\n    configuration-data-provider: {{ service-instance: {{ name: {ecr} }} }}\n\
             \x20   communication-service: {{ service-instance: {{ name: {kpc} }} }}\ncmx:\n  bus: nats\n"
        ),
        &[],
        "cmx running",
    )
    .await;
    let (mut kpc_child, line) = spawn_service(
        kaa_testkit::service_binary("kpc"),
        "kpc",
        d,
        &format!(
            "service: {{ instance: {{ name: {kpc} }} }}\nnats:\n  urls: [\"{nats}\"]\n\
             kpc:\n  mqtt:\n    listen: 127.0.0.1:0\n    auth:\n      enabled: true\n      users:\n\
             \x20       - username: devices\n          password: {{ env: SEC_MQTT_PASSWORD }}\n\
             \x20 extension-instances: [{cmx}]\n  endpoint-tokens:\n    {token}: {ep}\n"
        ),
        &[("SEC_MQTT_PASSWORD", password)],
        "kpc listening on",
    )
    .await;
    let mqtt: std::net::SocketAddr = line
        .trim_start_matches("kpc listening on mqtt://")
        .parse()
        .unwrap();

    let http = reqwest::Client::new();
    let url = format!("{base}/api/v1/endpoints/{ep}/app-versions/{app}");
    let put = |bearer: &str| {
        http.put(&url)
            .bearer_auth(bearer)
            .header("content-type", "application/json")
            .body(json!({"secret": body}).to_string())
            .send()
    };
    assert_eq!(put(wrong_api_token).await.unwrap().status(), 401);
    let r = put(api_token).await.unwrap();
    assert_eq!(r.status(), 200);
    let config_id = config_id(&r.json::<Value>().await.unwrap());

    // A wrong MQTT password is refused; the right one (from the environment) works.
    let mqtt_client = |pw: &str, id: &str| {
        let mut o = rumqttc::MqttOptions::new(id, mqtt.ip().to_string(), mqtt.port());
        o.set_credentials("devices", pw);
        rumqttc::AsyncClient::new(o, 16)
    };
    let (_bad, mut bad_loop) = mqtt_client(wrong_password, "bad");
    match tokio::time::timeout(WAIT, bad_loop.poll()).await.unwrap() {
        Err(rumqttc::ConnectionError::ConnectionRefused(code)) => {
            assert_eq!(code, rumqttc::ConnectReturnCode::BadUserNamePassword)
        }
        other => panic!("{other:?}"),
    }
    let (client, mut events) = mqtt_client(password, "good");
    let request = format!("kp1/{app}/{cmx}/{token}/config/json/1");
    client
        .publish(&request, rumqttc::QoS::AtMostOnce, false, b"{}".to_vec())
        .await
        .unwrap();
    let answer = tokio::time::timeout(WAIT, async {
        loop {
            if let rumqttc::Event::Incoming(rumqttc::Packet::Publish(p)) =
                events.poll().await.unwrap()
            {
                return p;
            }
        }
    })
    .await
    .expect("an answer");
    assert_eq!(answer.topic, format!("{request}/status"));
    let got: Value = serde_json::from_slice(&answer.payload).unwrap();
    assert_eq!(got["config"]["secret"], body);
    let report = json!({"configId": config_id, "statusCode": 400, "reasonPhrase": reason});
    client
        .publish(
            format!("kp1/{app}/{cmx}/{token}/applied/json"),
            rumqttc::QoS::AtMostOnce,
            false,
            report.to_string().into_bytes(),
        )
        .await
        .unwrap();
    let statuses = format!("{base}/api/v1/statuses?endpointId={ep}");
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let _ = tokio::time::timeout(Duration::from_millis(50), events.poll()).await;
        let rows: Value = http
            .get(&statuses)
            .bearer_auth(api_token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if rows["content"]
            .as_array()
            .is_some_and(|r| r.iter().any(|r| r["reasonPhrase"] == reason))
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no rejected status: {rows}"
        );
    }
    let _ = client.disconnect().await;
    let _ = tokio::time::timeout(Duration::from_millis(200), events.poll()).await;

    for child in [&mut kpc_child, &mut cmx_child, &mut ecr_child] {
        let pid = child.id().expect("running");
        let _ = std::process::Command::new("kill")
            .arg(pid.to_string())
            .status();
        let _ = tokio::time::timeout(Duration::from_secs(20), child.wait()).await;
    }
    let mut logs = String::new();
    for name in ["ecr", "cmx", "kpc"] {
        for ext in ["out", "log"] {
            logs.push_str(&std::fs::read_to_string(d.join(format!("{name}.{ext}"))).unwrap());
        }
    }
    assert!(logs.contains("INFO"), "info logs were written: {logs}");
    for marker in [
        body,
        token,
        reason,
        api_token,
        wrong_api_token,
        password,
        wrong_password,
    ] {
        let leaks: Vec<&str> = logs.lines().filter(|l| l.contains(marker)).collect();
        assert!(leaks.is_empty(), "{marker} in the logs: {leaks:#?}");
    }
}
