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
