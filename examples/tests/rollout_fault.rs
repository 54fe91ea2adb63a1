//! A staged rollout through SIGKILL of ECR, end to end (issue 19): the real `ecr`,
//! `cmx` and `kpc` binaries on a private `nats-server` and a private PostgreSQL
//! cluster (ephemeral ports, never the machine's shared servers) and 1,000
//! simulated devices (`KAA_ROLLOUT_DEVICES`) over MQTT. ECR is killed with SIGKILL
//! once the rollout reached its second step, started again 1 s later, and the
//! rollout must go on from where it was (never from the beginning) to completion,
//! every device then reporting the new configuration applied. Then a bad
//! rollout (every tenth device rejects it) aborts at its first gate and reverts:
//! only the first step's cohort ever received it, and every device runs the
//! previous configuration again ([`kaa_testkit::fleet::bad_rollout_reverts`], as
//! in `rollout_e2e`).
//!
//! Without `nats-server` or the PostgreSQL server binaries the test prints
//! `SKIPPED: …` and passes, unless `KAA_REQUIRE_SERVICES=1`. Alone in its test
//! binary: `cargo test -p kaa-examples --test rollout_fault -- --nocapture`.

use std::time::{Duration, Instant};

use kaa_bus::test_support::{PrivateNatsServer, free_port};
use kaa_testkit::fault::{PrivatePostgres, ServiceProcess, ThreeServices};
use serde_json::json;

use kaa_testkit::fleet::{APP, Rest, bad_rollout_reverts, rollout_body, start_fleet, wait_until};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_resumes_after_sigkill_of_ecr_with_a_thousand_devices() {
    let test = "rollout_fault::a_rollout_resumes_after_sigkill_of_ecr_with_a_thousand_devices";
    let Some(nats) = PrivateNatsServer::start(test) else {
        return;
    };
    let Some(pg) = tokio::task::block_in_place(|| PrivatePostgres::start(test)) else {
        return;
    };
    let devices: usize = std::env::var("KAA_ROLLOUT_DEVICES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let dir = tempfile::tempdir().expect("temp dir");
    let url = nats.url();
    let (http_port, mqtt_port) = (free_port().unwrap(), free_port().unwrap());
    let ThreeServices {
        cmx_name,
        ecr_yaml,
        cmx_yaml,
        kpc_yaml,
        ..
    } = ThreeServices::new(
        &format!("rollout{}", std::process::id()),
        &url,
        &pg.url(),
        http_port,
        mqtt_port,
    );
    let (mut ecr, cmx, kpc) = tokio::task::block_in_place(|| {
        let ecr = ServiceProcess::start("ecr", dir.path(), &ecr_yaml, "ecr listening on");
        let cmx = ServiceProcess::start("cmx", dir.path(), &cmx_yaml, "cmx running");
        let kpc = ServiceProcess::start("kpc", dir.path(), &kpc_yaml, "kpc listening on");
        (ecr, cmx, kpc)
    });
    let dump = |ecr: &ServiceProcess| {
        for s in [ecr, &cmx, &kpc] {
            eprintln!("--- {}.log (last lines) ---\n{}", s.name, s.log_tail(30));
        }
    };

    let rest = Rest {
        client: reqwest::Client::new(),
        base: format!("http://127.0.0.1:{http_port}"),
    };
    let v1 = rest.put_default(&json!({"v": 1})).await;
    let started = Instant::now();
    let mut fleet = start_fleet(devices, ([127, 0, 0, 1], mqtt_port).into(), &cmx_name).await;
    let mut last = 0;
    loop {
        let applied = rest.applied(&v1).await;
        if applied == devices as u64 {
            break;
        }
        if started.elapsed() > Duration::from_secs(180) {
            dump(&ecr);
            panic!(
                "only {applied} of {devices} devices applied the default: {}",
                rest.get(&format!("/app-versions/{APP}/status-counts"))
                    .await
            );
        }
        if applied != last {
            println!(
                "{applied} devices applied the default after {:?}",
                started.elapsed()
            );
            last = applied;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    println!(
        "{devices} devices on the default in {:?}",
        started.elapsed()
    );

    let (id, v2) = rest
        .begin_rollout(&rollout_body(
            json!({"v": 2}),
            &[1.0, 10.0, 50.0, 100.0],
            5.0,
            3,
        ))
        .await;
    let before = rest
        .wait_rollout(&id, Duration::from_secs(60), |r| {
            r["step"].as_u64() >= Some(1)
        })
        .await;
    assert_eq!(before["state"], "running", "{before}");
    tokio::task::block_in_place(|| ecr.stop("KILL"));
    let killed = Instant::now();
    tokio::time::sleep(Duration::from_secs(1)).await;
    tokio::task::block_in_place(|| ecr.spawn());
    let after = rest.get(&format!("/rollouts/{id}")).await;
    println!(
        "ECR killed at step {} and back in {:?}: the rollout is at step {} ({})",
        before["step"],
        killed.elapsed(),
        after["step"],
        after["state"]
    );
    assert!(
        after["step"].as_u64() >= before["step"].as_u64(),
        "{before} then {after}"
    );
    assert_eq!(
        after["steps"][0]["startedDate"],
        before["steps"][0]["startedDate"]
    );
    let done = rest
        .wait_rollout(&id, Duration::from_secs(180), |r| r["state"] != "running")
        .await;
    if done["state"] != "completed" {
        dump(&ecr);
    }
    assert_eq!(done["state"], "completed", "{done}");
    for step in done["steps"].as_array().unwrap() {
        assert_eq!(step["state"], "passed", "{done}");
    }
    wait_until(
        "every device applied the rollout",
        Duration::from_secs(60),
        async || rest.applied(&v2).await == devices as u64,
    )
    .await;
    println!(
        "rollout completed {:?} after the kill: {}",
        killed.elapsed(),
        done["steps"]
    );

    // A bad one (a tenth of the devices reject it) aborts at its first gate and
    // reverts, on the separate processes as in one.
    bad_rollout_reverts(&rest, devices, &v2).await;
    fleet.abort_all();
    drop(nats);
    drop(pg);
}
