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
//! 3. With a hundred more devices that never report, a rollout (50/100 %, report
//!    timeout 3 s, 10 s soak) aborts at its first step on their timeouts (the
//!    step's push to a connected device counts as its dispatch; `cmx` fetches
//!    over 6/CDTP before it pushes, which records the dispatch too, so this phase
//!    shows the behaviour end to end, and `ecr rollouts::silent_…`, with a CMX
//!    pushing the announced content as it is, is the test of the step's record).
//!
//! Alone in its test binary (a flood of connections): `cargo test -p kaa-examples
//! --test rollout_e2e -- --nocapture`. `KAA_ROLLOUT_DEVICES` changes the fleet size.

use std::time::{Duration, Instant};

use serde_json::json;

use kaa_testkit::fleet::{
    APP, assert_completed_cleanly, bad_rollout_reverts, embedded_stack, rollout_body,
    silent_devices_abort_a_rollout, start_fleet, start_silent_devices, wait_until,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollouts_over_mqtt_with_a_thousand_devices() {
    let devices: usize = std::env::var("KAA_ROLLOUT_DEVICES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let dir = tempfile::tempdir().unwrap();
    let (stack, rest) = embedded_stack(dir.path()).await;
    let v1 = rest.put_default(&json!({"v": 1})).await;

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
    let (id, v2) = rest
        .begin_rollout(&rollout_body(
            json!({"v": 2}),
            &[1.0, 10.0, 50.0, 100.0],
            5.0,
            2,
        ))
        .await;
    let done = rest
        .wait_rollout(&id, Duration::from_secs(180), |r| r["state"] != "running")
        .await;
    assert_completed_cleanly(&done);
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
    bad_rollout_reverts(&rest, devices, &v2).await;

    // 3. Devices that stay silent after a step's push time out: the rollout
    // aborts on them.
    let silent = devices / 10;
    let mut quiet =
        start_silent_devices(silent, stack.mqtt_addr(), kaa_examples::stack::CMX_INSTANCE).await;
    wait_until(
        "every silent device was dispatched the default",
        Duration::from_secs(60),
        async || {
            let counts = rest
                .get(&format!("/app-versions/{APP}/status-counts"))
                .await;
            counts.as_array().unwrap().iter().any(|c| {
                c["configId"] == v2.as_str() && c["dispatched"].as_u64() >= Some(silent as u64)
            })
        },
    )
    .await;
    silent_devices_abort_a_rollout(&rest, silent, &v2).await;
    quiet.abort_all();

    fleet.abort_all();
    stack.shutdown().await.expect("clean shutdown");
}
