//! The `custom_cmx` binary's CMX (the `kaa-cmp` engine driven only through its
//! documented inputs, `src/bin/custom_cmx.rs`) passes the recovery and limit
//! scenarios the example CMX service passes: sessions learnt after a restart, a
//! provider restart, a NATS server restart, and an oversized 9/ELCE event.

#[allow(dead_code, unreachable_pub)]
#[path = "../../src/bin/custom_cmx.rs"]
mod custom_cmx;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use kaa_bus::test_support::PrivateNatsServer;
use kaa_bus::{Bus, MemoryBus, NatsBus, NatsConfig};
use kaa_cmp::{Cmx, CmxConfig};
use kaa_ism::avro::{Decode, Encode};
use kaa_testkit::cmx::{
    APP_V1, FakeKpc, FakeProvider, Names, WAIT, barrier, oversized_elce_event_is_dropped,
};
use tokio::task::JoinHandle;

/// The custom CMX, running on a bus.
struct RunningCustom {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: JoinHandle<Result<Cmx, kaa_bus::BusError>>,
}

impl RunningCustom {
    async fn start(names: &Names, bus: Arc<dyn Bus>, tune: impl FnOnce(&mut CmxConfig)) -> Self {
        let mut config = CmxConfig::new(&names.cmx, &names.replica, &names.provider, &names.kpc);
        tune(&mut config);
        let cmx = Cmx::new(config).expect("valid engine configuration");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(custom_cmx::serve(cmx, Arc::clone(&bus), async {
            let _ = stopped.await;
        }));
        // Its subscriptions are in effect once it asked for the sessions; give
        // the task that long.
        tokio::time::sleep(Duration::from_millis(100)).await;
        barrier(bus.as_ref()).await;
        RunningCustom {
            stop: Some(stop),
            task,
        }
    }

    async fn stop(mut self) -> Cmx {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(WAIT, self.task)
            .await
            .expect("the custom CMX stops")
            .expect("task")
            .expect("served")
    }
}

#[tokio::test]
async fn a_restarted_custom_cmx_learns_the_sessions_and_catches_devices_up() {
    let names = Names::unique("cmx::custom::sessions");
    let bus: Arc<dyn Bus> = Arc::new(MemoryBus::new());
    let mut provider = FakeProvider::start(Arc::clone(&bus), &names).await;
    let mut kpc = FakeKpc::start(Arc::clone(&bus), &names).await;
    let ep = names.endpoint(1);
    // A communication service replica that holds one session, answering the
    // sessions request the engine sends when its subscriptions are in effect.
    let mut asks = bus
        .subscribe(
            &kaa_elce::sessions_request_subject(&names.kpc)
                .unwrap()
                .to_string(),
            None,
        )
        .await
        .unwrap();
    barrier(bus.as_ref()).await;
    let cmx = RunningCustom::start(&names, Arc::clone(&bus), |_| {}).await;
    let ask = tokio::time::timeout(WAIT, asks.next())
        .await
        .expect("the engine asks for the sessions")
        .unwrap();
    let request = kaa_elce::SessionsRequest::decode(&ask.payload).unwrap();
    assert_eq!(request.extension_instance_name, names.cmx);
    let answer = kaa_elce::SessionsResponse {
        correlation_id: request.correlation_id.clone(),
        timestamp: kaa_examples::cmx::now().0,
        timeout: 0,
        endpoints: vec![kaa_elce::EndpointSession {
            endpoint_id: ep.clone().into(),
            app_version_name: APP_V1.into(),
            resource_paths: vec!["/config/json".into()],
        }],
        originator_replica_id: names.kpc_replica.clone().into(),
    };
    bus.publish(
        ask.reply_to.as_deref().expect("a replyTo"),
        Bytes::from(answer.to_vec()),
    )
    .await
    .unwrap();
    let r = provider.next_request().await;
    assert_eq!(r.request.endpoint_id, ep);
    provider.answer_config(&r, "c1", r#"{"a":1}"#).await;
    let pushed = kpc.next().await;
    assert_eq!(pushed.message.request_id, None, "a push");
    assert_eq!(pushed.json()["configId"], "c1");
    let cmx = cmx.stop().await;
    assert_eq!(cmx.stats().sessions_responses, 1);
}

#[tokio::test]
async fn a_provider_restart_resyncs_the_custom_cmx() {
    let names = Names::unique("cmx::custom::provider_started");
    let bus: Arc<dyn Bus> = Arc::new(MemoryBus::new());
    let mut provider = FakeProvider::start(Arc::clone(&bus), &names).await;
    let mut kpc = FakeKpc::start(Arc::clone(&bus), &names).await;
    let cmx = RunningCustom::start(&names, Arc::clone(&bus), |_| {}).await;
    let ep = names.endpoint(1);
    kpc.connected(&[(&ep, APP_V1)]).await;
    let r = provider.next_request().await;
    provider.answer_config(&r, "c1", "1").await;
    assert_eq!(kpc.next().await.json()["configId"], "c1");
    // The provider restarted and lost the ConfigUpdated of a change.
    let started = kaa_cdtp::ProviderStarted {
        correlation_id: "restart".into(),
        timestamp: kaa_examples::cmx::now().0,
        timeout: 0,
        originator_replica_id: format!("{}-r1", names.provider).into(),
    };
    let subject = kaa_cdtp::subject::provider_started_subject(&names.provider).unwrap();
    bus.publish(&subject, Bytes::from(started.to_vec()))
        .await
        .unwrap();
    let r = provider.next_request().await;
    provider.answer_config(&r, "c2", "2").await;
    assert_eq!(kpc.next().await.json()["configId"], "c2");
    assert_eq!(cmx.stop().await.stats().resyncs, 1);
}

#[tokio::test]
async fn the_custom_cmx_drops_an_oversized_elce_event_and_serves_on() {
    let names = Names::unique("cmx::custom::oversized_elce");
    let bus: Arc<dyn Bus> = Arc::new(MemoryBus::new());
    let mut provider = FakeProvider::start(Arc::clone(&bus), &names).await;
    let mut kpc = FakeKpc::start(Arc::clone(&bus), &names).await;
    let cmx = RunningCustom::start(&names, Arc::clone(&bus), |c| {
        c.max_endpoints_per_event = 3;
    })
    .await;
    oversized_elce_event_is_dropped(&names, &mut provider, &mut kpc, || {}).await;
    assert_eq!(cmx.stop().await.tracked_endpoints(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_custom_cmx_resyncs_after_the_nats_server_restarts() {
    let test = "cmx::custom::the_custom_cmx_resyncs_after_the_nats_server_restarts";
    let Some(mut server) = PrivateNatsServer::start(test) else {
        return;
    };
    let url = server.url();
    let names = Names::unique(test);
    let connect = |url: String| async move {
        let config = NatsConfig::new([url]).with_reconnect_delay_max(Duration::from_millis(250));
        NatsBus::connect(&config).await.expect("NATS bus")
    };
    let cmx_nats = connect(url.clone()).await;
    let fakes_nats = connect(url).await;
    assert!(cmx_nats.wait_connected(Duration::from_secs(5)).await);
    assert!(fakes_nats.wait_connected(Duration::from_secs(5)).await);
    let fakes: Arc<dyn Bus> = Arc::new(fakes_nats.clone());
    let mut provider = FakeProvider::start(Arc::clone(&fakes), &names).await;
    let mut kpc = FakeKpc::start(fakes, &names).await;
    let cmx = RunningCustom::start(&names, Arc::new(cmx_nats.clone()), |_| {}).await;
    let ep = names.endpoint(1);
    kpc.connected(&[(&ep, APP_V1)]).await;
    let r = provider.next_request().await;
    provider.answer_config(&r, "c1", "1").await;
    assert_eq!(kpc.next().await.json()["configId"], "c1");

    // The server dies and comes back; a change made meanwhile was never
    // announced. After the reconnect the engine fetches again and pushes it.
    server.kill();
    tokio::time::sleep(Duration::from_millis(500)).await;
    server.restart().expect("restart nats-server");
    assert!(cmx_nats.wait_connected(Duration::from_secs(15)).await);
    assert!(fakes_nats.wait_connected(Duration::from_secs(15)).await);
    let r = provider.next_request().await;
    assert_eq!(r.request.endpoint_id, ep);
    provider.answer_config(&r, "c2", "2").await;
    assert_eq!(kpc.next().await.json()["configId"], "c2");
    let cmx = cmx.stop().await;
    assert!(cmx.stats().resyncs >= 1);
    assert!(
        cmx.stats().sessions_requests >= 2,
        "asked again after the reconnect"
    );
}
