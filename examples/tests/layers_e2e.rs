//! Layered configurations end to end over MQTT (issue 20): the whole stack in one
//! process (ECR, CMX, KPC on the in-memory bus, SQLite) and 1,000 simulated devices
//! (`kaa_examples::device::run_device`, observing the default, applying what they
//! get) in three endpoint groups, each with a layer of its own.
//!
//! Every device first runs its group's layered configuration; then the layer of one
//! group changes: exactly that group's devices are pushed to (the others' status
//! history does not move: no new dispatch), and each of them applies its new
//! effective configuration, which is the one explain rebuilds.
//!
//! Alone in its test binary (a flood of connections): `cargo test -p kaa-examples
//! --test layers_e2e -- --nocapture`. `KAA_LAYERS_DEVICES` changes the fleet size.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use kaa_testkit::fleet::{APP, Rest, embedded_stack, start_fleet, wait_until};

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
        kaa_examples::ecr::model::Content::from_value(&doc).config_id
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
    let mut before = Vec::with_capacity(devices);
    for i in 0..devices {
        before.push(statuses(&rest, i).await);
    }

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
    let mut moved_outside = 0;
    for (i, before) in before.iter().enumerate() {
        let now = statuses(&rest, i).await;
        if i % 3 == 1 {
            let running = now
                .as_array()
                .unwrap()
                .iter()
                .find(|r| r["status"] == "APPLIED")
                .unwrap();
            assert_eq!(running["configId"], new_id.as_str(), "dev-{i}: {now}");
        } else if &now != before {
            moved_outside += 1;
            println!("dev-{i} outside {changed_group}: {before} -> {now}");
        }
    }
    assert_eq!(moved_outside, 0, "devices outside the group were pushed to");
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

    fleet.abort_all();
    stack.shutdown().await.expect("clean shutdown");
}
