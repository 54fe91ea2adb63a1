//! Staged rollouts end to end over MQTT (issue 19): the whole stack in one process
//! (ECR with its rollout controller, CMX, KPC on the in-memory bus, SQLite) and
//! 1,000 simulated devices (`kaa_examples::device::run_device`, observing the
//! default, applying what they get; a tenth of them reject any configuration with
//! `/bad` = `true`, `--reject-if /bad=true`).
//!
//! 1. A healthy rollout (1/10/50/100 %, 2 s soak) completes through its steps and
//!    every device reports the new configuration applied.
//! 2. A bad one (10/50/100 %, 10 s soak, abort above 2 % of at least 10 reports,
//!    revert) aborts
//!    at its first step: no device outside the first step's cohort ever received it,
//!    and after the revert every device's last applied configuration is the previous
//!    one again.
//!
//! Alone in its test binary (a flood of connections): `cargo test -p kaa-examples
//! --test rollout_e2e -- --nocapture`. `KAA_ROLLOUT_DEVICES` changes the fleet size.

use std::time::{Duration, Instant};

use kaa_examples::device::{self, Connection, Decision, DeviceOptions, RejectIf, RejectRules};
use kaa_examples::stack::{Stack, StackOptions};
use serde_json::{Value, json};

const APP: &str = "rollout-e2e";

struct Rest {
    client: reqwest::Client,
    base: String,
}

impl Rest {
    async fn get(&self, path: &str) -> Value {
        let r = self
            .client
            .get(format!("{}/api/v1{path}", self.base))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "GET {path}: {}", r.status());
        r.json().await.unwrap()
    }

    async fn send(&self, method: reqwest::Method, path: &str, body: &Value) -> Value {
        let r = self
            .client
            .request(method, format!("{}/api/v1{path}", self.base))
            .json(body)
            .send()
            .await
            .unwrap();
        let status = r.status();
        let v: Value = r.json().await.unwrap_or(Value::Null);
        assert!(status.is_success(), "{path}: {status} {v}");
        v
    }

    /// Endpoints whose latest status for the default is `config_id` applied.
    async fn applied(&self, config_id: &str) -> u64 {
        let counts = self
            .get(&format!("/app-versions/{APP}/status-counts"))
            .await;
        counts
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["configId"] == config_id)
            .map_or(0, |c| c["applied"].as_u64().unwrap())
    }

    async fn wait_rollout(
        &self,
        id: &str,
        limit: Duration,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        let start = Instant::now();
        loop {
            let r = self.get(&format!("/rollouts/{id}")).await;
            if done(&r) {
                return r;
            }
            assert!(
                start.elapsed() < limit,
                "rollout not there in {limit:?}: {r}"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

async fn wait_until(what: &str, limit: Duration, mut check: impl AsyncFnMut() -> bool) {
    let start = Instant::now();
    while !check().await {
        assert!(start.elapsed() < limit, "not within {limit:?}: {what}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn rollout_body(config: Value, steps: &[f64], max_rejected: f64, soak: u64) -> Value {
    json!({
        "config": config,
        "steps": steps,
        "gate": {"minAppliedPercent": 90, "minApplied": 1, "soakSeconds": soak},
        "abort": {"maxRejectedPercent": max_rejected, "minSample": 10, "reportTimeoutSeconds": 60},
        "onAbort": "revert"
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollouts_over_mqtt_with_a_thousand_devices() {
    let devices: usize = std::env::var("KAA_ROLLOUT_DEVICES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let dir = tempfile::tempdir().unwrap();
    let options = StackOptions {
        http_listen: "127.0.0.1:0".parse().unwrap(),
        mqtt_listen: "127.0.0.1:0".parse().unwrap(),
        store_url: format!("sqlite://{}", dir.path().join("ecr.db").display()),
        register_listen: "127.0.0.1:0".parse().unwrap(),
        register_store_url: format!("sqlite://{}", dir.path().join("epr.db").display()),
    };
    let stack = Stack::start(&options).await.expect("stack starts");
    let rest = Rest {
        client: reqwest::Client::new(),
        base: format!("http://{}", stack.http_addr()),
    };
    let v1 = rest
        .send(
            reqwest::Method::PUT,
            &format!("/app-versions/{APP}"),
            &json!({"v": 1}),
        )
        .await["configId"]
        .as_str()
        .unwrap()
        .to_owned();

    // The fleet: every tenth device rejects configurations with /bad = true.
    let mqtt = stack.mqtt_addr();
    let bad_rule: RejectIf = "/bad=true".parse().unwrap();
    let mut fleet = tokio::task::JoinSet::new();
    let started = Instant::now();
    for i in 0..devices {
        let mut o = DeviceOptions::new(
            Connection::new(mqtt.ip().to_string(), mqtt.port()),
            APP,
            kaa_examples::stack::CMX_INSTANCE,
            format!("dev-{i}"),
        );
        o.decision = Decision::Apply;
        if i % 10 == 0 {
            let mut rules = RejectRules::default();
            rules.conditions = vec![bad_rule.clone()];
            o.reject = rules;
        }
        fleet.spawn(async move {
            // Runs until the test ends; a dropped connection is tried again.
            loop {
                let _ = device::run_device(&o, &mut std::io::sink()).await;
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        });
        if i % 50 == 49 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    wait_until(
        "every device applied the default",
        Duration::from_secs(120),
        async || rest.applied(&v1).await == devices as u64,
    )
    .await;
    println!(
        "{devices} devices on the default in {:?}",
        started.elapsed()
    );

    // 1. A healthy rollout completes through its steps.
    let t = Instant::now();
    let r = rest
        .send(
            reqwest::Method::POST,
            &format!("/app-versions/{APP}/rollouts"),
            &rollout_body(json!({"v": 2}), &[1.0, 10.0, 50.0, 100.0], 5.0, 2),
        )
        .await;
    let (id, v2) = (
        r["rolloutId"].as_str().unwrap().to_owned(),
        r["configId"].as_str().unwrap().to_owned(),
    );
    let done = rest
        .wait_rollout(&id, Duration::from_secs(180), |r| r["state"] != "running")
        .await;
    assert_eq!(done["state"], "completed", "{done}");
    for step in done["steps"].as_array().unwrap() {
        assert_eq!(step["state"], "passed", "{done}");
        assert_eq!(step["rejected"], 0, "{done}");
    }
    wait_until(
        "every device applied the rollout",
        Duration::from_secs(60),
        async || rest.applied(&v2).await == devices as u64,
    )
    .await;
    let default = rest.get(&format!("/app-versions/{APP}")).await;
    assert_eq!(default["configId"], v2.as_str());
    println!(
        "healthy rollout completed in {:?}: {}",
        t.elapsed(),
        done["steps"]
    );

    // 2. A bad one aborts at its first step and reverts.
    let t = Instant::now();
    let r = rest
        .send(
            reqwest::Method::POST,
            &format!("/app-versions/{APP}/rollouts"),
            &rollout_body(json!({"v": 3, "bad": true}), &[10.0, 50.0, 100.0], 2.0, 10),
        )
        .await;
    let (id, v3) = (
        r["rolloutId"].as_str().unwrap().to_owned(),
        r["configId"].as_str().unwrap().to_owned(),
    );
    let stopped = rest
        .wait_rollout(&id, Duration::from_secs(120), |r| r["state"] != "running")
        .await;
    assert_eq!(stopped["state"], "reverted", "{stopped}");
    assert_eq!(stopped["step"], 0, "{stopped}");
    let first = &stopped["steps"][0];
    assert_eq!(first["state"], "failed");
    assert!(first["rejected"].as_u64().unwrap() > 0, "{stopped}");
    let cohort = first["targeted"].as_u64().unwrap();
    println!(
        "bad rollout reverted in {:?}: {}",
        t.elapsed(),
        stopped["reason"]
    );

    // Who ever received the bad configuration: only the first step's cohort.
    let mut received;
    let mut last_applied_v2;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        received = 0;
        last_applied_v2 = 0;
        for i in 0..devices {
            let page = rest
                .get(&format!(
                    "/statuses?endpointId=dev-{i}&appVersionName={APP}&size=10"
                ))
                .await;
            let rows = page["content"].as_array().unwrap();
            if rows.iter().any(|r| r["configId"] == v3.as_str()) {
                received += 1;
            }
            // Rows are ordered by last activity: the first applied one is what the
            // device runs.
            let running = rows.iter().find(|r| r["status"] == "APPLIED");
            if running.is_some_and(|r| r["configId"] == v2.as_str()) {
                last_applied_v2 += 1;
            }
        }
        if last_applied_v2 == devices as u64 || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    println!(
        "bad configuration received by {received} devices (first step's cohort: {cohort}); {last_applied_v2} of {devices} run the previous one"
    );
    assert!(
        received <= cohort,
        "{received} devices got it, cohort {cohort}"
    );
    assert!(received > 0);
    assert_eq!(
        last_applied_v2, devices as u64,
        "after the revert every device runs the previous configuration"
    );
    let default = rest.get(&format!("/app-versions/{APP}")).await;
    assert_eq!(default["configId"], v2.as_str());

    fleet.abort_all();
    stack.shutdown().await.expect("clean shutdown");
}
