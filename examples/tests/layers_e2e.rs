//! Layered configurations end to end over MQTT (issue 20): the whole stack in one
//! process (ECR, CMX, KPC on the in-memory bus, SQLite) and 1,000 simulated devices
//! (`kaa_examples::device::run_device`, observing the default, applying what they
//! get) in three endpoint groups, each with a layer of its own.
//!
//! Every device first runs its group's layered configuration; then the layer of one
//! group changes: exactly that group's devices are pushed to (the others' status
//! history does not move: no new dispatch), and each of them applies its new
//! effective configuration, which is the one explain rebuilds. Last, a staged
//! rollout of a third group's layer (10/50/100 %, `POST …/layers/{layer}/rollouts`)
//! completes through its steps: that group's devices apply the new layered
//! configuration, the stored layer becomes the new one, and no other device is
//! pushed to.
//!
//! Alone in its test binary (a flood of connections): `cargo test -p kaa-examples
//! --test layers_e2e -- --nocapture`. `KAA_LAYERS_DEVICES` changes the fleet size.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use kaa_examples::ecr::model::Content;
use kaa_testkit::fleet::{
    APP, Rest, assert_completed_cleanly, embedded_stack, start_fleet, wait_until,
};

const GROUPS: [&str; 3] = ["north", "south", "west"];

/// Per config ID, how many endpoints' latest status is it, applied.
async fn applied_counts(rest: &Rest) -> HashMap<String, u64> {
    rest.get(&format!("/app-versions/{APP}/status-counts"))
        .await
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["configId"].as_str().unwrap().to_owned(),
                c["applied"].as_u64().unwrap(),
            )
        })
        .collect()
}

async fn statuses(rest: &Rest, device: usize) -> Value {
    rest.get(&format!(
        "/statuses?endpointId=dev-{device}&appVersionName={APP}&size=50"
    ))
    .await["content"]
        .clone()
}

/// Every device's status history, `dev-0` first.
async fn snapshot(rest: &Rest, devices: usize) -> Vec<Value> {
    let mut all = Vec::with_capacity(devices);
    for i in 0..devices {
        all.push(statuses(rest, i).await);
    }
    all
}

/// After a change meant for group `GROUPS[group]` (the devices `i % 3 == group`):
/// each of its devices runs `config_id` applied, and no other device's status
/// history moved from `before` (no dispatch: nothing was pushed to it).
async fn only_the_group_moved(rest: &Rest, before: &[Value], group: usize, config_id: &str) {
    let mut moved_outside = 0;
    for (i, before) in before.iter().enumerate() {
        let now = statuses(rest, i).await;
        if i % 3 == group {
            let running = now
                .as_array()
                .unwrap()
                .iter()
                .find(|r| r["status"] == "APPLIED")
                .unwrap();
            assert_eq!(running["configId"], config_id, "dev-{i}: {now}");
        } else if &now != before {
            moved_outside += 1;
            println!("dev-{i} outside {}: {before} -> {now}", GROUPS[group]);
        }
    }
    assert_eq!(
        moved_outside, 0,
        "devices outside {} were pushed to",
        GROUPS[group]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_layer_change_reaches_exactly_its_group() {
    let devices: usize = std::env::var("KAA_LAYERS_DEVICES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let dir = tempfile::tempdir().unwrap();
    let (stack, rest) = embedded_stack(dir.path()).await;
    let base = format!("/app-versions/{APP}");
    rest.send(
        reqwest::Method::PUT,
        &base,
        &json!({"rate": 10, "mode": "eco"}),
    )
    .await;
    // Three groups, device i in GROUPS[i % 3], each with its layer.
    for (g, group) in GROUPS.iter().enumerate() {
        rest.send(
            reqwest::Method::PUT,
            &format!("{base}/groups/{group}"),
            &Value::Null,
        )
        .await;
        let members: Vec<String> = (0..devices)
            .filter(|i| i % 3 == g)
            .map(|i| format!("dev-{i}"))
            .collect();
        let r = rest
            .send(
                reqwest::Method::POST,
                &format!("{base}/groups/{group}/members"),
                &json!({ "add": members }),
            )
            .await;
        assert_eq!(r["added"].as_u64().unwrap(), members.len() as u64);
        rest.send(
            reqwest::Method::PUT,
            &format!("{base}/layers/site-{group}"),
            &json!({"priority": 10, "group": group, "patch": {"site": group}}),
        )
        .await;
    }
    let layered_id = |group: &str, rate: u64| {
        let doc = json!({"rate": rate, "mode": "eco", "site": group});
        Content::from_value(&doc).config_id
    };
    let layered_id_with = |group: &str, extra: Value| {
        let mut doc = json!({"rate": 10, "mode": "eco", "site": group});
        for (k, v) in extra.as_object().unwrap() {
            doc[k] = v.clone();
        }
        Content::from_value(&doc).config_id
    };
    let ids: Vec<String> = GROUPS.iter().map(|g| layered_id(g, 10)).collect();

    let started = Instant::now();
    let mut fleet = start_fleet(
        devices,
        stack.mqtt_addr(),
        kaa_examples::stack::CMX_INSTANCE,
    )
    .await;
    wait_until(
        "every device applied its group's layered configuration",
        Duration::from_secs(180),
        async || {
            let counts = applied_counts(&rest).await;
            ids.iter()
                .map(|id| counts.get(id).copied().unwrap_or(0))
                .sum::<u64>()
                == devices as u64
        },
    )
    .await;
    println!(
        "{devices} devices on their layered configurations in {:?}",
        started.elapsed()
    );
    // Settle: late reconnect fetches land before the snapshot.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = snapshot(&rest, devices).await;

    // The layer of one group changes: a dry run first says who.
    let changed_group = GROUPS[1];
    let layer = json!({"priority": 10, "group": changed_group, "patch": {"site": changed_group, "rate": 99}});
    let dry = rest
        .send(
            reqwest::Method::PUT,
            &format!("{base}/layers/site-{changed_group}?dryRun=true"),
            &layer,
        )
        .await;
    let in_group = (0..devices).filter(|i| i % 3 == 1).count() as u64;
    assert_eq!(dry["changed"].as_u64().unwrap(), in_group, "{dry}");
    let t = Instant::now();
    rest.send(
        reqwest::Method::PUT,
        &format!("{base}/layers/site-{changed_group}"),
        &layer,
    )
    .await;
    let new_id = layered_id(changed_group, 99);
    wait_until(
        "every device of the group applied the new layered configuration",
        Duration::from_secs(120),
        async || {
            applied_counts(&rest)
                .await
                .get(&new_id)
                .copied()
                .unwrap_or(0)
                == in_group
        },
    )
    .await;
    println!(
        "{in_group} devices of {changed_group} applied the changed layer in {:?}",
        t.elapsed()
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    only_the_group_moved(&rest, &before, 1, &new_id).await;
    // Explain names the layer for the changed value.
    let explained = rest
        .get(&format!("/endpoints/dev-1/app-versions/{APP}/explain"))
        .await;
    let rate = explained["leaves"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["pointer"] == "/rate")
        .unwrap();
    assert_eq!(rate["layer"], format!("site-{changed_group}"));
    assert_eq!(explained["configuration"]["configId"], new_id.as_str());

    // A staged rollout of another group's layer (10/50/100 %, 2 s soak): it
    // completes through its steps, every device of that group applies the new
    // layered configuration, the stored layer is the new one, and no device
    // outside the group is pushed to.
    let rolled_group = GROUPS[2];
    let rolled_id = layered_id_with(rolled_group, json!({"fan": "quiet"}));
    let before = snapshot(&rest, devices).await;
    let t = Instant::now();
    let created = rest
        .send(
            reqwest::Method::POST,
            &format!("{base}/layers/site-{rolled_group}/rollouts"),
            &json!({
                "priority": 10, "group": rolled_group,
                "patch": {"site": rolled_group, "fan": "quiet"},
                "steps": [10, 50, 100],
                "gate": {"minAppliedPercent": 90, "minApplied": 1, "soakSeconds": 2},
                "abort": {"maxRejectedPercent": 5, "minSample": 10, "reportTimeoutSeconds": 60},
                "onAbort": "revert"
            }),
        )
        .await;
    assert_eq!(created["state"], "running", "{created}");
    assert_eq!(
        created["previousConfigId"],
        Content::from_value(&json!({"site": rolled_group}))
            .config_id
            .as_str(),
        "{created}"
    );
    let id = created["rolloutId"].as_str().unwrap().to_owned();
    let done = rest
        .wait_rollout(&id, Duration::from_secs(180), |r| r["state"] != "running")
        .await;
    assert_completed_cleanly(&done);
    let in_rolled = (0..devices).filter(|i| i % 3 == 2).count() as u64;
    wait_until(
        "every device of the group applied the rolled-out layer",
        Duration::from_secs(60),
        async || {
            applied_counts(&rest)
                .await
                .get(&rolled_id)
                .copied()
                .unwrap_or(0)
                == in_rolled
        },
    )
    .await;
    println!(
        "layer rollout of {rolled_group} ({in_rolled} devices) completed in {:?}: {}",
        t.elapsed(),
        done["steps"]
    );
    let layer = rest
        .get(&format!("{base}/layers/site-{rolled_group}"))
        .await;
    assert_eq!(
        layer["patch"],
        json!({"site": rolled_group, "fan": "quiet"}),
        "{layer}"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    only_the_group_moved(&rest, &before, 2, &rolled_id).await;

    fleet.abort_all();
    stack.shutdown().await.expect("clean shutdown");
}
