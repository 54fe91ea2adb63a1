//! Helpers of the rollout end-to-end tests (`rollout_e2e`, `rollout_fault`): the
//! REST calls they make, and the fleet of simulated devices.

// Each test binary uses part of it.
#![allow(dead_code)]

use std::time::{Duration, Instant};

use kaa_examples::device::{self, Connection, Decision, DeviceOptions, RejectIf, RejectRules};
use serde_json::{Value, json};

pub(crate) const APP: &str = "rollout-e2e";

pub(crate) struct Rest {
    pub(crate) client: reqwest::Client,
    pub(crate) base: String,
}

impl Rest {
    pub(crate) async fn get(&self, path: &str) -> Value {
        let r = self
            .client
            .get(format!("{}/api/v1{path}", self.base))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "GET {path}: {}", r.status());
        r.json().await.unwrap()
    }

    pub(crate) async fn send(&self, method: reqwest::Method, path: &str, body: &Value) -> Value {
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
    pub(crate) async fn applied(&self, config_id: &str) -> u64 {
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

    pub(crate) async fn wait_rollout(
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

pub(crate) async fn wait_until(what: &str, limit: Duration, mut check: impl AsyncFnMut() -> bool) {
    let start = Instant::now();
    while !check().await {
        assert!(start.elapsed() < limit, "not within {limit:?}: {what}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

pub(crate) fn rollout_body(config: Value, steps: &[f64], max_rejected: f64, soak: u64) -> Value {
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
pub(crate) async fn start_fleet(
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
