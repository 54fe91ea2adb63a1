//! Fault test: the NATS server under a running CMX is killed and restarted. The
//! server is a private `nats-server` on an ephemeral port (kaa-bus
//! `PrivateNatsServer`), never the machine's shared one; without the binary the
//! test is skipped visibly (failed under `KAA_REQUIRE_SERVICES=1`).

use std::sync::Arc;
use std::time::Duration;

use kaa_bus::test_support::PrivateNatsServer;
use kaa_bus::{Bus, NatsBus, NatsConfig};
use kaa_examples::cmx::CmxService;
use kaa_examples::cmx::config::CmxServiceConfig;
use kaa_testkit::cmx::{APP_V1, FakeKpc, FakeProvider, Names, RunningCmx};

async fn bus(url: &str) -> NatsBus {
    let config = NatsConfig::new([url]).with_reconnect_delay_max(Duration::from_millis(250));
    NatsBus::connect(&config).await.expect("NATS bus")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cmx_serves_again_after_the_nats_server_restarts() {
    let test = "cmx::fault::cmx_serves_again_after_the_nats_server_restarts";
    let Some(mut server) = PrivateNatsServer::start(test) else {
        return;
    };
    let url = server.url();
    let names = Names::unique(test);
    let cmx_nats = bus(&url).await;
    let fakes_nats = bus(&url).await;
    assert!(cmx_nats.wait_connected(Duration::from_secs(5)).await);
    assert!(fakes_nats.wait_connected(Duration::from_secs(5)).await);
    let fakes: Arc<dyn Bus> = Arc::new(fakes_nats.clone());
    let mut provider = FakeProvider::start(Arc::clone(&fakes), &names).await;
    let mut kpc = FakeKpc::start(fakes, &names).await;

    let config = CmxServiceConfig::parse(&names.config_yaml(Some(&url), ""), "test").unwrap();
    let probe_bus = cmx_nats.clone();
    let service = CmxService::bind(&config, Arc::new(cmx_nats.clone()))
        .await
        .unwrap()
        .with_bus_probe(Arc::new(move || probe_bus.is_connected()));
    let cmx = RunningCmx::spawn(service);
    cmx.wait_state("running").await;
    assert!(cmx.status.is_up());

    // Served before the fault.
    let ep = names.endpoint(1);
    kpc.send(&ep, APP_V1, "/config/json", Some(1), b"{}").await;
    let received = provider.next_request().await;
    provider.answer_config(&received, "c1", "{}").await;
    assert_eq!(kpc.next().await.message.status_code, 200);

    // The server dies: the CMX notices (health DOWN) and keeps running.
    server.kill();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while cmx.status.is_up() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "health never reported the bus down"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !cmx.task.is_finished(),
        "the CMX stopped without its server"
    );
    assert_eq!(cmx.status.state(), "running");

    // The server comes back on the same port; everyone reconnects by themselves.
    server.restart().expect("restart nats-server");
    assert!(cmx_nats.wait_connected(Duration::from_secs(15)).await);
    assert!(fakes_nats.wait_connected(Duration::from_secs(15)).await);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !cmx.status.is_up() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "health never came back up"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Served again with the subscriptions made before the fault. Subscriptions are
    // re-sent on reconnect asynchronously, so the first requests after it may find
    // nobody listening yet (NATS core: at most once); a device retries.
    let mut served = false;
    for attempt in 0..20 {
        let ep = names.endpoint(100 + attempt);
        kpc.send(&ep, APP_V1, "/config/json", Some(2), b"{}").await;
        let Ok(Some(received)) =
            tokio::time::timeout(Duration::from_millis(500), provider.next_request_raw()).await
        else {
            continue;
        };
        provider
            .answer_config(&received, "c2", r#"{"after":"restart"}"#)
            .await;
        let answer = kpc.next().await;
        assert_eq!(answer.message.status_code, 200);
        // The request answered may be an earlier attempt's, delivered late.
        assert_eq!(
            answer.message.endpoint_id.as_deref(),
            Some(&*received.request.endpoint_id)
        );
        assert!(received.request.endpoint_id.starts_with(&names.tag), "{ep}");
        assert_eq!(answer.json()["configId"], "c2");
        served = true;
        break;
    }
    assert!(served, "the CMX never served again after the restart");
    assert!(cmx.status.is_up());
    assert!(cmx_nats.disconnections() >= 1);
    assert!(cmx_nats.connections() >= 2);
    let report = cmx.stop().await;
    assert_eq!(report.abandoned, 0);
}
