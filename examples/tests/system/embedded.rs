//! End-to-end tests of the whole system in one process: [`Stack`] (ECR + CMX + KPC
//! on the in-memory bus, SQLite in a temp dir) driven by real MQTT devices
//! (rumqttc, MQTT 3.1.1) and the REST API (reqwest). One stack per test; the
//! behaviours themselves live in `kaa_testkit::e2e` and also run against the separate
//! processes over NATS (`nats.rs`).

use std::time::Duration;

use kaa_examples::stack::{Stack, StackOptions};
use kaa_testkit::e2e::{Rest, System, unique};
use serde_json::json;

/// Starts a stack on ephemeral ports with its store in a fresh temp dir, runs
/// `behaviour` against it and shuts it down.
async fn with_stack<F, Fut>(behaviour: F)
where
    F: FnOnce(System) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let dir = tempfile::tempdir().expect("temp dir");
    let options = StackOptions {
        http_listen: "127.0.0.1:0".parse().expect("addr"),
        mqtt_listen: "127.0.0.1:0".parse().expect("addr"),
        store_url: format!("sqlite://{}", dir.path().join("ecr.db").display()),
        register_listen: "127.0.0.1:0".parse().unwrap(),
        register_store_url: format!("sqlite://{}", dir.path().join("epr.db").display()),
    };
    let stack = Stack::start(&options).await.expect("stack starts");
    let sys = System {
        http: stack.http_addr(),
        mqtt: stack.mqtt_addr(),
        cmx: kaa_examples::stack::CMX_INSTANCE,
    };
    behaviour(sys).await;
    stack.shutdown().await.expect("clean shutdown");
}

macro_rules! e2e {
    ($($name:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            with_stack(kaa_testkit::e2e::$name).await;
        }
    )*};
}

kaa_testkit::for_each_e2e_behaviour!(e2e);
e2e!(official_python_client);

/// The stack's endpoint register (issue #17): see
/// [`kaa_testkit::e2e::register_provisions_suspends_and_revokes`]; the same
/// behaviour runs on the separate processes (`nats.rs`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_provisions_suspends_and_revokes() {
    let dir = tempfile::tempdir().expect("temp dir");
    let options = StackOptions {
        http_listen: "127.0.0.1:0".parse().expect("addr"),
        mqtt_listen: "127.0.0.1:0".parse().expect("addr"),
        store_url: format!("sqlite://{}", dir.path().join("ecr.db").display()),
        register_listen: "127.0.0.1:0".parse().expect("addr"),
        register_store_url: format!("sqlite://{}", dir.path().join("epr.db").display()),
    };
    let stack = Stack::start(&options).await.expect("stack starts");
    let sys = System {
        http: stack.http_addr(),
        mqtt: stack.mqtt_addr(),
        cmx: kaa_examples::stack::CMX_INSTANCE,
    };
    kaa_testkit::e2e::register_provisions_suspends_and_revokes(sys, stack.register_addr()).await;
    stack.shutdown().await.expect("clean shutdown");
}

/// The device simulator provisions its devices in the stack's register
/// (`--register URL`): one with `run --provision`, twenty with `load --provision`
/// (one batch call); each then connects with its own token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_device_simulator_provisions_its_devices() {
    let dir = tempfile::tempdir().expect("temp dir");
    let options = StackOptions {
        http_listen: "127.0.0.1:0".parse().expect("addr"),
        mqtt_listen: "127.0.0.1:0".parse().expect("addr"),
        store_url: format!("sqlite://{}", dir.path().join("ecr.db").display()),
        register_listen: "127.0.0.1:0".parse().expect("addr"),
        register_store_url: format!("sqlite://{}", dir.path().join("epr.db").display()),
    };
    let stack = Stack::start(&options).await.expect("stack starts");
    let sys = System {
        http: stack.http_addr(),
        mqtt: stack.mqtt_addr(),
        cmx: kaa_examples::stack::CMX_INSTANCE,
    };
    let app = unique("meterV1");
    let config_id = Rest::new(sys)
        .put_default(&app, None, &json!({"period": 60}))
        .await;
    let (mqtt, register) = (
        stack.mqtt_addr().to_string(),
        format!("http://{}", stack.register_addr()),
    );
    let device = |args: Vec<String>| async move {
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_device"))
            .args(&args)
            .kill_on_drop(true)
            .output();
        let out = tokio::time::timeout(Duration::from_secs(60), out)
            .await
            .expect("the device CLI finishes")
            .expect("the device CLI runs");
        (
            out.status,
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let common = |more: &[&str]| -> Vec<String> {
        [
            "--mqtt",
            &mqtt,
            "--app-version",
            &app,
            "--register",
            &register,
        ]
        .iter()
        .chain(more)
        .map(|s| s.to_string())
        .collect()
    };
    let endpoint = unique("meter");
    let (status, stdout, stderr) = device(common(&[
        "run",
        "--provision",
        &endpoint,
        "--apply",
        "--once",
    ]))
    .await;
    assert!(status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains(&format!("provisioned endpoint {endpoint} (token ID ")),
        "{stdout}"
    );
    assert!(stdout.contains(&format!("id={config_id}")), "{stdout}");
    let pattern = format!("{}-{{}}", unique("fleet"));
    let (status, stdout, stderr) = device(common(&[
        "load",
        "--provision",
        "--devices",
        "20",
        "--tokens",
        &pattern,
        "--no-progress",
    ]))
    .await;
    assert!(status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("provisioned 20 endpoints"), "{stdout}");
    // Provisioning twice is refused by the register (409), and said so.
    let (status, _, stderr) = device(common(&["run", "--provision", &endpoint, "--once"])).await;
    assert!(!status.success());
    assert!(
        stderr.contains("endpoint register: POST /endpoints: 409"),
        "{stderr}"
    );
    stack.shutdown().await.expect("clean shutdown");
}

/// The device simulator with `--deltas` and `--pointer` (issue 18): it requests on
/// `…/config/json-patch` with its pointers and prints the view of the
/// configuration with the whole configuration's ID, then reports it applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_device_simulator_asks_for_deltas() {
    with_stack(|sys| async move {
        let app = unique("kettleV1");
        let config_id = Rest::new(sys)
            .put_default(&app, None, &json!({"rate": 5, "mode": "AP"}))
            .await;
        let token = unique("kettle");
        let mqtt = sys.mqtt.to_string();
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_device"))
            .args([
                "--mqtt", &mqtt, "--app-version", &app, "run", "--token", &token, "--apply",
                "--once", "--deltas", "--pointer", "/rate",
            ])
            .kill_on_drop(true)
            .output();
        let out = tokio::time::timeout(Duration::from_secs(60), out)
            .await
            .expect("the device CLI finishes")
            .expect("the device CLI runs");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            stdout.contains(&format!(
                "request kp1/{app}/{}/{token}/config/json-patch/1 {{\"observe\":true,\"pointers\":[\"/rate\"]}}",
                sys.cmx
            )),
            "{stdout}"
        );
        assert!(
            stdout.contains(&format!(
                "configuration default id={config_id} (response): {{\"/rate\":5}}"
            )),
            "{stdout}"
        );
        assert!(
            stdout.contains(&format!("applied default id={config_id}")),
            "{stdout}"
        );
    })
    .await;
}
