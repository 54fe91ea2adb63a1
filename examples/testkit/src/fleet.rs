//! What the fleet-scale end-to-end tests share (`rollout_e2e`, `rollout_fault`,
//! `layers_e2e`): the REST calls they make, the whole stack in one process, and a
//! fleet of simulated devices (`kaa_examples::device`) of which every tenth
//! rejects configurations with `/bad` = `true`.

use std::time::{Duration, Instant};

use kaa_examples::device::{self, Connection, Decision, DeviceOptions, RejectIf, RejectRules};
use kaa_examples::stack::{Stack, StackOptions};
use serde_json::{Value, json};

/// The app version the fleet and the tests use.
pub const APP: &str = "rollout-e2e";

/// The REST API of a running ECR (`base`: `http://host:port`), asserting success.
pub struct Rest {
    /// The HTTP client.
    pub client: reqwest::Client,
    /// `http://host:port`.
    pub base: String,
}

impl Rest {
    /// `GET /api/v1<path>`: the JSON answer (a 2xx asserted).
    pub async fn get(&self, path: &str) -> Value {
        let r = self
            .client
            .get(format!("{}/api/v1{path}", self.base))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "GET {path}: {}", r.status());
        r.json().await.unwrap()
    }

    /// `<method> /api/v1<path>` with a JSON body: the JSON answer (a 2xx asserted).
    pub async fn send(&self, method: reqwest::Method, path: &str, body: &Value) -> Value {
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

    /// `PUT /app-versions/<APP>` with `body` as the default configuration: its
    /// config ID (a 2xx asserted).
    pub async fn put_default(&self, body: &Value) -> String {
        let r = self
            .send(reqwest::Method::PUT, &format!("/app-versions/{APP}"), body)
            .await;
        r["configId"]
            .as_str()
            .unwrap_or_else(|| panic!("no configId in {r}"))
            .to_owned()
    }

    /// `POST /app-versions/<APP>/rollouts` with `body` (see [`rollout_body`]):
    /// the rollout's ID and the config ID it rolls out (a 2xx asserted).
    pub async fn begin_rollout(&self, body: &Value) -> (String, String) {
        let r = self
            .send(
                reqwest::Method::POST,
                &format!("/app-versions/{APP}/rollouts"),
                body,
            )
            .await;
        let field = |name: &str| {
            r[name]
                .as_str()
                .unwrap_or_else(|| panic!("no {name} in {r}"))
                .to_owned()
        };
        (field("rolloutId"), field("configId"))
    }

    /// Endpoints whose latest status for the default is `config_id` applied.
    pub async fn applied(&self, config_id: &str) -> u64 {
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

    /// Polls `GET /rollouts/<id>` until `done` holds for it (within `limit`).
    pub async fn wait_rollout(
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

/// Asserts that a rollout, as [`Rest::wait_rollout`] returned it, completed
/// with every step passed and nothing rejected.
pub fn assert_completed_cleanly(done: &Value) {
    assert_eq!(done["state"], "completed", "{done}");
    for step in done["steps"].as_array().unwrap() {
        assert_eq!(step["state"], "passed", "{done}");
        assert_eq!(step["rejected"], 0, "{done}");
    }
}

/// What [`bad_rollout_reverts`] saw.
#[derive(Debug, Clone)]
pub struct BadRollout {
    /// The rollout as it stopped.
    pub stopped: Value,
    /// How many endpoints the first step's cohort held.
    pub cohort: u64,
    /// How many devices ever had a status for the bad configuration.
    pub received: u64,
    /// How long from the rollout's creation to its revert.
    pub reverted_in: Duration,
}

/// Begins a rollout of a bad configuration (`/bad` = `true`, which every tenth
/// device of [`start_fleet`] rejects) in steps of 10/50/100 %, aborting above 2 %
/// of at least 10 reports, reverting, 10 s soak; asserts that it is reverted at its
/// first step with rejections, that no device outside the first step's cohort ever
/// had a status for it, and that afterwards all `devices` report `previous` (the
/// default's config ID) as the configuration they last applied, and the default
/// is still `previous`.
pub async fn bad_rollout_reverts(rest: &Rest, devices: usize, previous: &str) -> BadRollout {
    let t = Instant::now();
    let (id, bad) = rest
        .begin_rollout(&rollout_body(
            json!({"v": 3, "bad": true}),
            &[10.0, 50.0, 100.0],
            2.0,
            10,
        ))
        .await;
    let stopped = rest
        .wait_rollout(&id, Duration::from_secs(120), |r| r["state"] != "running")
        .await;
    let reverted_in = t.elapsed();
    assert_eq!(stopped["state"], "reverted", "{stopped}");
    assert_eq!(stopped["step"], 0, "{stopped}");
    let first = &stopped["steps"][0];
    assert_eq!(first["state"], "failed");
    assert!(first["rejected"].as_u64().unwrap() > 0, "{stopped}");
    let cohort = first["targeted"].as_u64().unwrap();

    // Who ever received the bad configuration: only the first step's cohort.
    let mut received;
    let mut last_applied_previous;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        received = 0;
        last_applied_previous = 0;
        for i in 0..devices {
            let page = rest
                .get(&format!(
                    "/statuses?endpointId=dev-{i}&appVersionName={APP}&size=10"
                ))
                .await;
            let rows = page["content"].as_array().unwrap();
            if rows.iter().any(|r| r["configId"] == bad.as_str()) {
                received += 1;
            }
            // Rows are ordered by last activity: the first applied one is what the
            // device runs.
            let running = rows.iter().find(|r| r["status"] == "APPLIED");
            if running.is_some_and(|r| r["configId"] == previous) {
                last_applied_previous += 1;
            }
        }
        if last_applied_previous == devices as u64 || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    println!(
        "bad rollout reverted in {reverted_in:?} ({}): received by {received} devices (first step's cohort: {cohort}); {last_applied_previous} of {devices} run the previous one",
        stopped["reason"]
    );
    assert!(
        received <= cohort,
        "{received} devices got it, cohort {cohort}"
    );
    assert!(received > 0);
    assert_eq!(
        last_applied_previous, devices as u64,
        "after the revert every device runs the previous configuration"
    );
    let default = rest.get(&format!("/app-versions/{APP}")).await;
    assert_eq!(default["configId"], previous);
    BadRollout {
        stopped,
        cohort,
        received,
        reverted_in,
    }
}

/// Polls `check` every 250 ms until it holds; fails after `limit`, naming `what`.
pub async fn wait_until(what: &str, limit: Duration, mut check: impl AsyncFnMut() -> bool) {
    let start = Instant::now();
    while !check().await {
        assert!(start.elapsed() < limit, "not within {limit:?}: {what}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// A rollout request body: `config` in `steps` (percent), a 90% gate with a
/// `soak` in seconds, aborting past `max_rejected` percent of at least 10 reports,
/// reverting on abort.
pub fn rollout_body(config: Value, steps: &[f64], max_rejected: f64, soak: u64) -> Value {
    json!({
        "config": config,
        "steps": steps,
        "gate": {"minAppliedPercent": 90, "minApplied": 1, "soakSeconds": soak},
        "abort": {"maxRejectedPercent": max_rejected, "minSample": 10, "reportTimeoutSeconds": 60},
        "onAbort": "revert"
    })
}

/// Starts `devices` simulated devices (`dev-0`…) against `mqtt`, observing the
/// default of [`APP`] and applying what they get; every tenth rejects
/// configurations with `/bad` = `true`. Each reconnects when its connection drops.
pub async fn start_fleet(
    devices: usize,
    mqtt: std::net::SocketAddr,
    extension: &str,
) -> tokio::task::JoinSet<()> {
    let bad_rule: RejectIf = "/bad=true".parse().unwrap();
    let mut fleet = tokio::task::JoinSet::new();
    for i in 0..devices {
        let mut o = DeviceOptions::new(
            Connection::new(mqtt.ip().to_string(), mqtt.port()),
            APP,
            extension,
            format!("dev-{i}"),
        );
        o.decision = Decision::Apply;
        if i % 10 == 0 {
            let mut rules = RejectRules::default();
            rules.conditions = vec![bad_rule.clone()];
            o.reject = rules;
        }
        fleet.spawn(async move {
            loop {
                let _ = device::run_device(&o, &mut std::io::sink()).await;
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        });
        if i % 50 == 49 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    fleet
}

/// Starts `n` devices (`silent-0`…) against `mqtt` that observe the default of
/// [`APP`] and never report anything (`Decision::Ignore`): connected, pushed to,
/// silent. Each reconnects when its connection drops.
pub async fn start_silent_devices(
    n: usize,
    mqtt: std::net::SocketAddr,
    extension: &str,
) -> tokio::task::JoinSet<()> {
    let mut devices = tokio::task::JoinSet::new();
    for i in 0..n {
        let mut o = DeviceOptions::new(
            Connection::new(mqtt.ip().to_string(), mqtt.port()),
            APP,
            extension,
            format!("silent-{i}"),
        );
        o.decision = Decision::Ignore;
        devices.spawn(async move {
            loop {
                let _ = device::run_device(&o, &mut std::io::sink()).await;
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        });
    }
    devices
}

/// With `silent` devices of [`start_silent_devices`] connected (and known to ECR)
/// besides the `devices` of [`start_fleet`] on the default `previous`: a rollout
/// (50/100 %, 10 s soak, report timeout 3 s, abort above 5 % of at least 10
/// reports, revert) aborts at its first step on the silent devices of its cohort
/// timing out after the step's push, before the gate would have passed on the
/// others' reports. Returns the rollout as it stopped.
pub async fn silent_devices_abort_a_rollout(rest: &Rest, silent: usize, previous: &str) -> Value {
    let mut body = rollout_body(json!({"v": 4}), &[50.0, 100.0], 5.0, 10);
    body["abort"]["reportTimeoutSeconds"] = json!(3);
    let t = Instant::now();
    let (id, _) = rest.begin_rollout(&body).await;
    let stopped = rest
        .wait_rollout(&id, Duration::from_secs(120), |r| r["state"] != "running")
        .await;
    println!(
        "with {silent} silent devices the rollout stopped after {:?}: {} ({})",
        t.elapsed(),
        stopped["state"],
        stopped["reason"]
    );
    assert_eq!(stopped["state"], "reverted", "{stopped}");
    assert_eq!(stopped["step"], 0, "{stopped}");
    let first = &stopped["steps"][0];
    assert_eq!(first["state"], "failed", "{stopped}");
    assert!(first["timedOut"].as_u64().unwrap() > 0, "{stopped}");
    assert_eq!(first["rejected"], 0, "{stopped}");
    let default = rest.get(&format!("/app-versions/{APP}")).await;
    assert_eq!(default["configId"], previous);
    stopped
}

/// The whole stack in this process (ECR, CMX, KPC on the in-memory bus, SQLite
/// files in `dir`) on ephemeral ports, and its REST API.
pub async fn embedded_stack(dir: &std::path::Path) -> (Stack, Rest) {
    let options = StackOptions {
        http_listen: "127.0.0.1:0".parse().expect("address"),
        mqtt_listen: "127.0.0.1:0".parse().expect("address"),
        store_url: format!("sqlite://{}", dir.join("ecr.db").display()),
        register_listen: "127.0.0.1:0".parse().expect("address"),
        register_store_url: format!("sqlite://{}", dir.join("epr.db").display()),
    };
    let stack = Stack::start(&options).await.expect("stack starts");
    let rest = Rest {
        client: reqwest::Client::new(),
        base: format!("http://{}", stack.http_addr()),
    };
    (stack, rest)
}
