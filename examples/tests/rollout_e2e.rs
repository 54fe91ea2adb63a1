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

use serde_json::json;

use kaa_testkit::fleet::{APP, embedded_stack, rollout_body, start_fleet, wait_until};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollouts_over_mqtt_with_a_thousand_devices() {
    let devices: usize = std::env::var("KAA_ROLLOUT_DEVICES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let dir = tempfile::tempdir().unwrap();
    let (stack, rest) = embedded_stack(dir.path()).await;
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
    let started = Instant::now();
    let mut fleet = start_fleet(
        devices,
        stack.mqtt_addr(),
        kaa_examples::stack::CMX_INSTANCE,
    )
    .await;
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
