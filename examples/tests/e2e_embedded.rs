//! End-to-end tests of the whole system in one process: [`Stack`] (ECR + CMX + KPC
//! on the in-memory bus, SQLite in a temp dir) driven by real MQTT devices
//! (rumqttc, MQTT 3.1.1) and the REST API (reqwest). One stack per test; the
//! behaviours themselves live in `e2e_common` and also run against the separate
//! processes over NATS (`e2e_nats.rs`).

mod e2e_common;

use e2e_common::System;
use kaa_examples::stack::{Stack, StackOptions};

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
            with_stack(e2e_common::$name).await;
        }
    )*};
}

e2e!(
    default_delivered,
    override_wins,
    push_within_one_second,
    offline_gets_only_latest,
    named_independent,
    applied_and_rejected_in_statuses,
    app_version_change,
    garbage_gets_errors,
    no_subscribe_delivery,
    official_python_client,
);
