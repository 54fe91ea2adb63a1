//! Limits, each configurable, documented and tested here end to end:
//!
//! - the one maximum configuration size (`kaa_examples::service::DEFAULT_MAX_CONFIG_SIZE`):
//!   a configuration of exactly that size reaches a real MQTT device through the
//!   embedded stack and over NATS; one byte more is a 413 `{"message"}` and nothing
//!   is stored; services refuse to start when their limit does not fit the bus;
//!   a delivery too big for the session's MQTT limit becomes a 1/KP 413;
//! - endpoints per 9/ELCE event (`cmx.limits.max-endpoints-per-event`);
//! - CDTP requests in flight in CMX (`cmx.limits.max-pending-requests`);
//! - KPC's `max-connections` (CONNACK 0x03) and `max-inflight` (QoS 1 deliveries).
//!
//! NATS tests skip visibly without a server unless `KAA_REQUIRE_SERVICES=1`.

use std::sync::Arc;
use std::time::Duration;

use kaa_bus::test_support::NATS;
use kaa_bus::{Bus, MemoryBus, NatsBus, NatsConfig};
use kaa_examples::cmx::CmxService;
use kaa_examples::cmx::config::CmxServiceConfig;
use kaa_examples::ecr::EcrServer;
use kaa_examples::ecr::config::EcrConfig;
use kaa_examples::kpc::KpcServer;
use kaa_examples::kpc::config::KpcConfig;
use kaa_examples::service::{DEFAULT_MAX_CONFIG_SIZE, parse_yaml};
use kaa_examples::stack::{CMX_INSTANCE, Stack, StackOptions};
use kaa_testkit::mqtt_device::MqttConnection;
use rumqttc::MqttOptions;
use rumqttc::mqttbytes::QoS;
use rumqttc::mqttbytes::v4::{ConnAck, Connect, ConnectReturnCode, Packet};
use serde_json::Value;
use tokio::time::timeout;

const WAIT: Duration = Duration::from_secs(10);

/// A JSON configuration of exactly `size` bytes.
fn config_of_size(size: usize) -> String {
    let overhead = r#"{"blob":""}"#.len();
    let text = format!(r#"{{"blob":"{}"}}"#, "x".repeat(size - overhead));
    assert_eq!(text.len(), size);
    text
}

/// A real MQTT device (rumqttc) that takes packets up to 2 MiB: the limit under
/// test is the stack's, not the client library's (10 KiB by default).
struct BigDevice(MqttConnection<rumqttc::Publish>);

impl BigDevice {
    async fn connect(mqtt: std::net::SocketAddr, client_id: &str) -> Self {
        let mut o = MqttOptions::new(client_id, mqtt.ip().to_string(), mqtt.port());
        o.set_keep_alive(Duration::from_secs(30));
        o.set_max_packet_size(2 << 20, 2 << 20);
        BigDevice(MqttConnection::open(o, 16, WAIT, |p| p).await)
    }

    async fn request(&mut self, topic: &str) -> rumqttc::Publish {
        self.0
            .client
            .publish(topic, QoS::AtMostOnce, false, b"{}".to_vec())
            .await
            .unwrap();
        timeout(WAIT, self.0.incoming.recv())
            .await
            .expect("an answer in time")
            .expect("device running")
    }
}

/// PUTs the maximum-size configuration (200), checks a device receives it whole
/// over MQTT, then PUTs one byte more (413 `{"message"}`) and checks nothing was
/// stored and the device still gets the first one.
async fn maximum_configuration_flow(
    http: std::net::SocketAddr,
    mqtt: std::net::SocketAddr,
    cmx: &str,
    app: &str,
) {
    let rest = reqwest::Client::new();
    let url = format!("http://{http}/api/v1/app-versions/{app}");
    let body = config_of_size(DEFAULT_MAX_CONFIG_SIZE);
    let r = rest
        .put(&url)
        .header("content-type", "application/json")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let put: Value = r.json().await.unwrap();
    let config_id = put["configId"].as_str().unwrap().to_owned();

    let mut device = BigDevice::connect(mqtt, &format!("{app}-dev")).await;
    let topic = format!("kp1/{app}/{cmx}/{app}-ep/config/json/1");
    let answer = device.request(&topic).await;
    assert_eq!(answer.topic, format!("{topic}/status"));
    let received: Value = serde_json::from_slice(&answer.payload).unwrap();
    assert_eq!(received["configId"], config_id.as_str());
    assert_eq!(
        received["config"].to_string(),
        body,
        "the configuration arrives whole"
    );

    let r = rest
        .put(&url)
        .header("content-type", "application/json")
        .body(config_of_size(DEFAULT_MAX_CONFIG_SIZE + 1))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    let refused: Value = r.json().await.unwrap();
    assert!(
        refused["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{refused}"
    );
    let stored: Value = rest.get(&url).send().await.unwrap().json().await.unwrap();
    assert_eq!(stored["configId"], config_id.as_str(), "nothing stored");
    let answer = device
        .request(&format!("kp1/{app}/{cmx}/{app}-ep/config/json/2"))
        .await;
    let received: Value = serde_json::from_slice(&answer.payload).unwrap();
    assert_eq!(received["configId"], config_id.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maximum_configuration_size_end_to_end_on_the_embedded_stack() {
    let dir = tempfile::tempdir().unwrap();
    let stack = Stack::start(&StackOptions {
        http_listen: "127.0.0.1:0".parse().unwrap(),
        mqtt_listen: "127.0.0.1:0".parse().unwrap(),
        store_url: format!("sqlite://{}", dir.path().join("ecr.db").display()),
        register_listen: "127.0.0.1:0".parse().unwrap(),
        register_store_url: format!("sqlite://{}", dir.path().join("epr.db").display()),
    })
    .await
    .expect("the stack starts with its defaults");
    maximum_configuration_flow(
        stack.http_addr(),
        stack.mqtt_addr(),
        CMX_INSTANCE,
        "limits-max",
    )
    .await;
    stack.shutdown().await.unwrap();
}

/// ECR, CMX and KPC in this process, each on its own connection to the shared
/// NATS server, with names unique to this run and every size limit at its default.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maximum_configuration_size_end_to_end_over_nats() {
    let test = "system::limits::maximum_configuration_size_end_to_end_over_nats";
    let Some(url) = NATS.require(test) else {
        return;
    };
    let tag = format!("lim{}", std::process::id());
    let (ecr, cmx, kpc) = (
        format!("{tag}-ecr"),
        format!("{tag}-cmx"),
        format!("{tag}-kpc"),
    );
    let connect = || async {
        let bus: Arc<dyn Bus> = Arc::new(
            NatsBus::connect(&NatsConfig::new([url.as_str()]).with_retry_on_initial_connect(false))
                .await
                .expect("NATS"),
        );
        bus
    };
    let dir = tempfile::tempdir().unwrap();
    let ecr_config: EcrConfig = parse_yaml(
        &format!(
            "service: {{ instance: {{ name: {ecr} }} }}\n\
             ecr:\n  http:\n    listen: 127.0.0.1:0\n  store:\n    url: \"sqlite://{db}\"\n  cmx:\n    service-instance-name: {cmx}\n\
             auth:\n  enabled: false\n",
            db = dir.path().join("ecr.db").display()
        ),
        "ecr",
    )
    .unwrap();
    let cmx_config = CmxServiceConfig::parse(
        &format!(
            "service: {{ instance: {{ name: {cmx} }} }}\nnats:\n  urls: [{url}]\n\
             kaa:\n  cmx:\n    configuration-data-provider: {{ service-instance: {{ name: {ecr} }} }}\n\
             \x20   communication-service: {{ service-instance: {{ name: {kpc} }} }}\ncmx:\n  bus: nats\n"
        ),
        "cmx",
    )
    .unwrap();
    let kpc_config: KpcConfig = parse_yaml(
        &format!(
            "service: {{ instance: {{ name: {kpc} }} }}\n\
             kpc:\n  mqtt:\n    listen: 127.0.0.1:0\n  accept-any-token: true\n"
        ),
        "kpc",
    )
    .unwrap();
    let ecr_bus = connect().await;
    assert_eq!(
        ecr_bus.max_payload(),
        Some(1 << 20),
        "the NATS server's default max_payload"
    );
    let ecr_server = EcrServer::bind(&ecr_config, ecr_bus)
        .await
        .expect("ECR fits NATS");
    let http = ecr_server.local_addr();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let ecr_task = tokio::spawn(ecr_server.run(stopped(stop_rx.clone())));
    let cmx_service = CmxService::bind(&cmx_config, connect().await)
        .await
        .expect("CMX fits NATS");
    let cmx_stop = stopped(stop_rx.clone());
    let cmx_task = tokio::spawn(async move { cmx_service.run(cmx_stop).await.map(drop) });
    let kpc_handle = KpcServer::bind(&kpc_config, connect().await)
        .await
        .expect("KPC fits NATS")
        .spawn();
    maximum_configuration_flow(http, kpc_handle.local_addr(), &cmx, &format!("{tag}-app")).await;
    kpc_handle.shutdown().await.unwrap();
    let _ = stop_tx.send(true);
    cmx_task.await.unwrap().unwrap();
    ecr_task.await.unwrap().unwrap();
}

/// Every service refuses to start when its size limit plus the room its messages
/// need does not fit the bus (the in-memory bus carries 1 MiB, as NATS by default),
/// naming the key and the largest value that fits.
#[tokio::test]
async fn services_refuse_size_limits_the_bus_cannot_carry() {
    let memory: Arc<dyn Bus> = Arc::new(MemoryBus::new());
    let dir = tempfile::tempdir().unwrap();
    let ecr_yaml = |limit: &str| {
        format!(
            "ecr:\n  http:\n    listen: 127.0.0.1:0\n    body-limit: {limit}\n  store:\n    url: \"sqlite://{}\"\nauth:\n  enabled: false\n",
            dir.path().join("ecr.db").display()
        )
    };
    let too_big: EcrConfig = parse_yaml(&ecr_yaml("1MiB"), "ecr").unwrap();
    let err = EcrServer::bind(&too_big, Arc::clone(&memory))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("ecr.http.body-limit is 1048576 bytes"),
        "{err}"
    );
    assert!(
        err.contains("set ecr.http.body-limit to at most 1032192"),
        "{err}"
    );
    let fits: EcrConfig = parse_yaml(&ecr_yaml("1008KiB"), "ecr").unwrap();
    let _ = EcrServer::bind(&fits, Arc::clone(&memory))
        .await
        .expect("1008 KiB fits");

    let cmx = |limit: &str| {
        CmxServiceConfig::parse(
            &format!("cmx:\n  bus: memory\n  limits:\n    max-config-size: {limit}\n"),
            "cmx",
        )
        .unwrap()
    };
    let err = CmxService::bind(&cmx("1MiB"), Arc::clone(&memory))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("cmx.limits.max-config-size"), "{err}");
    assert!(err.contains("at most 1032192"), "{err}");
    let _ = CmxService::bind(&cmx("1008KiB"), Arc::clone(&memory))
        .await
        .expect("fits");

    let mut kpc = KpcConfig::new("127.0.0.1:0".parse().unwrap());
    kpc.kpc.mqtt.max_payload = 1 << 20;
    let err = KpcServer::bind(&kpc, Arc::clone(&memory))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("kpc.mqtt.max-payload"), "{err}");
    assert!(err.contains("at most 1040384"), "{err}");
    kpc.kpc.mqtt.max_payload = 1040384;
    let _ = KpcServer::bind(&kpc, memory).await.expect("fits");
}

/// The same check against a real NATS server's announced `max_payload`.
#[tokio::test]
async fn ecr_refuses_a_body_limit_larger_than_the_nats_server_carries() {
    let Some(url) = NATS
        .require("system::limits::ecr_refuses_a_body_limit_larger_than_the_nats_server_carries")
    else {
        return;
    };
    let bus: Arc<dyn Bus> = Arc::new(
        NatsBus::connect(&NatsConfig::new([url.as_str()]).with_retry_on_initial_connect(false))
            .await
            .unwrap(),
    );
    let max = bus.max_payload().expect("the server announced max_payload");
    let dir = tempfile::tempdir().unwrap();
    let config: EcrConfig = parse_yaml(
        &format!(
            "ecr:\n  http:\n    listen: 127.0.0.1:0\n    body-limit: {max}\n  store:\n    url: \"sqlite://{}\"\nauth:\n  enabled: false\n",
            dir.path().join("ecr.db").display()
        ),
        "ecr",
    )
    .unwrap();
    let err = EcrServer::bind(&config, bus).await.unwrap_err().to_string();
    assert!(
        err.contains(&format!("at most {max} bytes per message")),
        "{err}"
    );
    assert!(err.contains("max_payload"), "{err}");
}

/// A configuration larger than the session's MQTT payload limit is not sent: the
/// device gets a 1/KP 413 on the response's error topic, for answers and pushes
/// alike, and the session goes on.
#[tokio::test]
async fn a_delivery_over_the_mqtt_limit_becomes_a_413_for_the_device() {
    use kaa_testkit::kpc::{Client, FakeCmx, QUIET, answer, push, topic};
    let mut cfg = kaa_testkit::kpc::config();
    cfg.kpc.mqtt.max_payload = 1024;
    let bus: Arc<dyn Bus> = Arc::new(MemoryBus::new());
    let kpc = kaa_testkit::kpc::start_kpc(&cfg, Arc::clone(&bus)).await;
    let _cmx = FakeCmx::start(
        Arc::clone(&bus),
        "cmx",
        Arc::new(|cd: &kaa_esp::ClientData<'_>| {
            let size = if cd.resource_path.ends_with("/big") {
                1025
            } else {
                1024
            };
            let wrapper = r#"{"configId":"c","config":""}"#.len();
            let payload = format!(
                r#"{{"configId":"c","config":"{}"}}"#,
                "x".repeat(size - wrapper)
            );
            assert_eq!(payload.len(), size);
            Some(answer(
                cd,
                cd.request_id?,
                200,
                Some(payload.into_bytes()),
                Some("OK"),
            ))
        }),
    )
    .await;
    let mut dev = Client::connect(kpc.local_addr(), "dev").await;
    let request = topic("tok-1", "config/json/big/1");
    dev.publish(&request, QoS::AtMostOnce, b"{}").await;
    let r = dev.recv().await;
    assert_eq!(r.topic, format!("{request}/error"));
    let error: Value = serde_json::from_slice(&r.payload).unwrap();
    assert_eq!(error["statusCode"], 413);
    let reason = error["reasonPhrase"].as_str().unwrap();
    assert!(
        reason.contains("1025 bytes") && reason.contains("1024 bytes"),
        "{reason}"
    );
    // Exactly the limit is delivered.
    let request = topic("tok-1", "config/json/2");
    dev.publish(&request, QoS::AtMostOnce, b"{}").await;
    let r = dev.recv().await;
    assert_eq!(r.topic, format!("{request}/status"));
    assert_eq!(r.payload.len(), 1024);
    // A push over the limit: 413 on the push's error topic.
    push(&bus, "kpc", "ep-1", "/config/json", 200, &[b'x'; 1025]).await;
    let r = dev.recv().await;
    assert_eq!(r.topic, topic("tok-1", "config/json/error"));
    assert_eq!(
        serde_json::from_slice::<Value>(&r.payload).unwrap()["statusCode"],
        413
    );
    dev.no_publish_within(QUIET).await;
    assert_eq!(kpc.metrics().extension_data_count("too_large"), 2);
}

/// A 9/ELCE event listing more endpoints than `cmx.limits.max-endpoints-per-event`
/// is dropped and counted; CMX keeps serving.
#[tokio::test]
async fn an_oversized_elce_event_is_dropped_counted_and_cmx_serves_on() {
    use kaa_testkit::cmx::{
        FakeKpc, FakeProvider, Names, RunningCmx, oversized_elce_event_is_dropped,
    };
    let names = Names::unique("system::limits::oversized_elce");
    let bus: Arc<dyn Bus> = Arc::new(MemoryBus::new());
    let cmx = RunningCmx::start(
        &names.config_yaml(None, "  limits:\n    max-endpoints-per-event: 3\n"),
        Arc::clone(&bus),
    )
    .await;
    let mut provider = FakeProvider::start(Arc::clone(&bus), &names).await;
    let mut kpc = FakeKpc::start(Arc::clone(&bus), &names).await;
    let malformed = r#"cmx_malformed_messages_total{kind="elce_event"}"#;
    oversized_elce_event_is_dropped(&names, &mut provider, &mut kpc, || {
        assert_eq!(cmx.metric(malformed), 1.0);
    })
    .await;
    cmx.stop().await;
}

/// Past `cmx.limits.max-pending-requests` CDTP requests in flight (a provider that
/// never answers), a device request gets a 503 ExtensionData with a reason at once;
/// the pending count stays at the limit.
#[tokio::test]
async fn pending_cdtp_requests_are_bounded_and_the_next_device_gets_503() {
    use kaa_testkit::cmx::{APP_V1, FakeKpc, FakeProvider, Names, RunningCmx};
    let names = Names::unique("system::limits::pending");
    let bus: Arc<dyn Bus> = Arc::new(MemoryBus::new());
    let cmx = RunningCmx::start(
        &names.config_yaml(
            None,
            "  cdtp-timeout-ms: 60000\n  shutdown-grace-ms: 100\n  limits:\n    max-pending-requests: 2\n",
        ),
        Arc::clone(&bus),
    )
    .await;
    let mut provider = FakeProvider::start(Arc::clone(&bus), &names).await;
    let mut kpc = FakeKpc::start(Arc::clone(&bus), &names).await;
    for n in 1..=2 {
        kpc.send(&names.endpoint(n), APP_V1, "/config/json", Some(1), b"{}")
            .await;
        provider.next_request().await; // never answered
    }
    for n in 3..=5 {
        kpc.send(&names.endpoint(n), APP_V1, "/config/json", Some(1), b"{}")
            .await;
        let refused = kpc.next().await;
        assert_eq!(refused.message.status_code, 503);
        assert_eq!(
            refused.message.endpoint_id.as_deref(),
            Some(names.endpoint(n).as_str())
        );
        let reason = refused.message.reason_phrase.as_deref().unwrap_or_default();
        assert!(!reason.is_empty(), "503 without a reason");
    }
    provider.expect_no_request().await;
    assert_eq!(cmx.metric("cmx_pending_cdtp_requests"), 2.0);
    assert_eq!(cmx.metric("cmx_backpressure_rejections_total"), 3.0);
    cmx.stop().await;
}

/// The N+1th MQTT connection gets CONNACK 0x03 (server unavailable) and is closed;
/// once a session ends, a new one is accepted.
#[tokio::test]
async fn the_connection_past_max_connections_gets_connack_server_unavailable() {
    use kaa_testkit::kpc::{Client, Raw};
    let mut cfg = kaa_testkit::kpc::config();
    cfg.kpc.mqtt.max_connections = 2;
    let kpc = kaa_testkit::kpc::start_kpc(&cfg, Arc::new(MemoryBus::new())).await;
    let addr = kpc.local_addr();
    let first = Client::connect(addr, "one").await;
    let _second = Client::connect(addr, "two").await;
    let mut third = Raw::connect(addr).await;
    third.send(&Packet::Connect(Connect::new("three"))).await;
    assert_eq!(
        third.expect_closed().await,
        [Packet::ConnAck(ConnAck::new(
            ConnectReturnCode::ServiceUnavailable,
            false
        ))]
    );
    // Garbage instead of a CONNECT: closed without an answer.
    let mut fourth = Raw::connect(addr).await;
    fourth.send_bytes(b"\x30\x02ab").await;
    assert!(fourth.expect_closed().await.is_empty());
    let rejected = kpc.metrics().registry().render();
    assert!(
        rejected.contains("kpc_connections_rejected_total 2"),
        "{rejected}"
    );
    first.disconnect().await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while kpc.metrics().open_connections() > 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the first session did not end"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _again = Client::connect(addr, "three").await;
}

/// At most `max-inflight` QoS 1 deliveries wait for PUBACK per session; further
/// ones are dropped and counted until PUBACKs arrive. (Requests past the window
/// get a 429: `kpc_mqtt::limits_payload_inflight_and_connections`.)
#[tokio::test]
async fn qos1_deliveries_past_max_inflight_wait_for_pubacks() {
    use kaa_testkit::kpc::{FakeCmx, Raw, default_behavior, push, topic};
    let mut cfg = kaa_testkit::kpc::config();
    cfg.kpc.mqtt.max_inflight = 2;
    let bus: Arc<dyn Bus> = Arc::new(MemoryBus::new());
    let kpc = kaa_testkit::kpc::start_kpc(&cfg, Arc::clone(&bus)).await;
    let _cmx = FakeCmx::start(Arc::clone(&bus), "cmx", default_behavior()).await;
    let mut dev = Raw::connected(kpc.local_addr(), "dev", 60).await;
    // A QoS 1 request makes pushes to that resource QoS 1; its answer takes one slot.
    dev.publish(&topic("tok-1", "config/json/1"), QoS::AtLeastOnce, 1, b"{}")
        .await;
    let mut unacked = Vec::new();
    while unacked.is_empty() {
        match dev.read().await {
            Some(Packet::Publish(p)) if p.qos == QoS::AtLeastOnce => unacked.push(p.pkid),
            Some(Packet::PubAck(_)) => {}
            other => panic!("{other:?}"),
        }
    }
    for n in 0..3 {
        push(
            &bus,
            "kpc",
            "ep-1",
            "/config/json",
            200,
            format!("{{\"n\":{n}}}").as_bytes(),
        )
        .await;
    }
    // One more fits the window of 2; the other two are dropped.
    match dev.read().await {
        Some(Packet::Publish(p)) => {
            assert_eq!(p.payload.as_ref(), b"{\"n\":0}");
            unacked.push(p.pkid);
        }
        other => panic!("{other:?}"),
    }
    let deadline = tokio::time::Instant::now() + WAIT;
    while kpc.metrics().extension_data_count("inflight_full") < 2 {
        assert!(tokio::time::Instant::now() < deadline, "drops not counted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // PUBACKs free the window: the next push is delivered.
    for pkid in unacked {
        dev.send(&Packet::PubAck(rumqttc::mqttbytes::v4::PubAck::new(pkid)))
            .await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    push(&bus, "kpc", "ep-1", "/config/json", 200, b"{\"n\":3}").await;
    match dev.read().await {
        Some(Packet::Publish(p)) => assert_eq!(p.payload.as_ref(), b"{\"n\":3}"),
        other => panic!("{other:?}"),
    }
}

/// ECR, which learns endpoints from 9/ELCE `connected` events, ignores (and counts)
/// one listing more than 10,000 endpoints, and goes on learning from the others.
#[tokio::test]
async fn ecr_ignores_an_oversized_connected_event_and_counts_it() {
    use kaa_ism::avro::Encode;
    let bus: Arc<dyn Bus> = Arc::new(MemoryBus::new());
    let dir = tempfile::tempdir().unwrap();
    let config: EcrConfig = parse_yaml(
        &format!(
            "ecr:\n  http:\n    listen: 127.0.0.1:0\n  store:\n    url: \"sqlite://{}\"\nauth:\n  enabled: false\n",
            dir.path().join("ecr.db").display()
        ),
        "ecr",
    )
    .unwrap();
    let server = EcrServer::bind(&config, Arc::clone(&bus)).await.unwrap();
    let http = server.local_addr();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server.run(async move {
        let _ = stopped.await;
    }));
    let event = |n: usize| {
        kaa_elce::ConnectedEvent {
            correlation_id: format!("conn-{n}").into(),
            timestamp: 0,
            timeout: 0,
            endpoints: (0..n)
                .map(|i| (format!("ep-{i}").into(), "app-v1".into()))
                .collect(),
            originator_replica_id: "kpc-1".into(),
        }
        .to_vec()
    };
    let subject = kaa_elce::EventKind::Connected
        .subject("kpc")
        .unwrap()
        .to_string();
    bus.publish(&subject, event(10_001).into()).await.unwrap();
    bus.publish(&subject, event(2).into()).await.unwrap();
    let metric = |result: &str| {
        format!(r#"ecr_events_handled_total{{event="connectivity",result="{result}"}} 1"#)
    };
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let text = reqwest::get(format!("http://{http}/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if text.contains(&metric("ignored")) && text.contains(&metric("ok")) {
            // Registered with the rest: no status batch failed.
            assert!(text.contains("ecr_status_write_failures_total 0"), "{text}");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = stop.send(());
    task.await.unwrap().unwrap();
}
