//! KPC end to end on the in-memory bus: real MQTT clients (rumqttc, and a raw
//! client for protocol violations) against KPC on 127.0.0.1:0, with a fake CMX
//! answering 4/ESP ClientData.

use std::sync::Arc;
use std::time::{Duration, Instant};

use kaa_bus::{Bus, MemoryBus};
use kaa_examples::kpc::config::MqttAuthSection;
use kaa_examples::kpc::config::MqttUser;
use kaa_examples::service::Secret;
use kaa_kp::ErrorResponse;
use kaa_testkit::kpc::*;
use kaa_testkit::log_capture::Captured;
use rumqttc::mqttbytes::QoS;
use rumqttc::mqttbytes::v4::{Packet, PubRel, Subscribe, SubscribeFilter, Unsubscribe};
use rumqttc::{ConnectReturnCode, ConnectionError, SubscribeReasonCode};

fn memory_bus() -> Arc<dyn Bus> {
    Arc::new(MemoryBus::new())
}

struct Stack {
    bus: Arc<dyn Bus>,
    kpc: kaa_examples::kpc::KpcHandle,
    cmx: FakeCmx,
    events: Events,
}

async fn stack_with(config: kaa_examples::kpc::config::KpcConfig, behavior: Behavior) -> Stack {
    let bus = memory_bus();
    let cmx = FakeCmx::start(Arc::clone(&bus), "cmx", behavior).await;
    let events = Events::listen(&bus, "kpc").await;
    let kpc = start_kpc(&config, Arc::clone(&bus)).await;
    Stack {
        bus,
        kpc,
        cmx,
        events,
    }
}

async fn stack() -> Stack {
    stack_with(config(), default_behavior()).await
}

fn error_payload(p: &rumqttc::Publish) -> ErrorResponse {
    ErrorResponse::from_json(&p.payload).expect("a 1/KP error response")
}

#[tokio::test]
async fn request_gets_status_response_at_qos_0_with_the_client_data_kaa_expects() {
    let mut s = stack().await;
    let mut dev = Client::connect(s.kpc.local_addr(), "dev-1").await;
    let request = topic("tok-1", "config/json/1");
    dev.publish(&request, QoS::AtMostOnce, br#"{"observe":true}"#)
        .await;

    let r = dev.recv().await;
    assert_eq!(r.topic, format!("{request}/status"));
    assert_eq!(r.qos, QoS::AtMostOnce);
    assert_eq!(
        &r.payload[..],
        br#"{"configId":"c-default","config":{"name":"default"}}"#
    );

    let got = s.cmx.next().await;
    assert_eq!(got.subject, "kaa.v1.service.cmx.esp.ClientData");
    assert_eq!(
        got.reply_to.as_deref(),
        Some("kaa.v1.replica.kpc-1.esp.ExtensionData")
    );
    let cd = got.data;
    assert_eq!(cd.app_version_name, APP);
    assert_eq!(cd.endpoint_id.as_deref(), Some("ep-1"));
    assert_eq!(cd.resource_path, "/config/json");
    assert_eq!(cd.request_id, Some(1));
    assert_eq!(&cd.payload[..], br#"{"observe":true}"#);
    assert_eq!(cd.config_name, None);
    assert!(cd.timeout > 0 && cd.timestamp > 0 && !cd.correlation_id.is_empty());

    // A named configuration: resource path with the name, no request ID in it.
    let request = topic("tok-1", "config/json/network/2");
    dev.publish(&request, QoS::AtMostOnce, b"{}").await;
    let r = dev.recv().await;
    assert_eq!(r.topic, format!("{request}/status"));
    assert_eq!(
        s.cmx.next().await.data.resource_path,
        "/config/json/network"
    );
    let _ = s.events.next().await;
    s.kpc.shutdown().await.unwrap();
}

#[tokio::test]
async fn request_at_qos_1_is_acked_and_answered_at_qos_1() {
    let s = stack().await;
    let mut dev = Client::connect(s.kpc.local_addr(), "dev-1").await;
    let request = topic("tok-1", "config/json/7");
    dev.publish(&request, QoS::AtLeastOnce, b"{}").await;
    dev.puback().await;
    let r = dev.recv().await;
    assert_eq!(r.topic, format!("{request}/status"));
    assert_eq!(r.qos, QoS::AtLeastOnce);
    assert!(r.pkid != 0);
    // QoS 2 requests are answered at QoS 1 (KPC never sends QoS 2).
    let request = topic("tok-1", "config/json/8");
    dev.publish(&request, QoS::ExactlyOnce, b"{}").await;
    let r = dev.recv().await;
    assert_eq!(
        (r.topic.as_str(), r.qos),
        (format!("{request}/status").as_str(), QoS::AtLeastOnce)
    );
}

#[tokio::test]
async fn a_client_that_never_subscribes_receives_responses_and_pushes() {
    let s = stack().await;
    let mut dev = Client::connect(s.kpc.local_addr(), "dev-1").await;
    // Ask at QoS 1: later pushes to the same resource come at QoS 1.
    dev.publish(&topic("tok-1", "config/json/1"), QoS::AtLeastOnce, b"{}")
        .await;
    assert!(dev.recv().await.topic.ends_with("/1/status"));

    push(
        &s.bus,
        "kpc",
        "ep-1",
        "/config/json",
        200,
        br#"{"configId":"c2","config":2}"#,
    )
    .await;
    let p = dev.recv().await;
    assert_eq!(p.topic, topic("tok-1", "config/json/status"));
    assert_eq!(&p.payload[..], br#"{"configId":"c2","config":2}"#);
    assert_eq!(p.qos, QoS::AtLeastOnce);

    // A named configuration never requested in this session: its push topic, QoS 0.
    push(
        &s.bus,
        "kpc",
        "ep-1",
        "/config/json/network",
        200,
        br#"{"configId":"n1","config":{}}"#,
    )
    .await;
    let p = dev.recv().await;
    assert_eq!(p.topic, topic("tok-1", "config/json/network/status"));
    assert_eq!(p.qos, QoS::AtMostOnce);

    // A push for an endpoint without a session goes nowhere.
    push(&s.bus, "kpc", "ep-2", "/config/json", 200, b"{}").await;
    dev.no_publish_within(QUIET).await;
    assert_eq!(s.kpc.metrics().extension_data_count("no_session"), 1);
}

#[tokio::test]
async fn non_2xx_extension_data_becomes_an_error_response() {
    let s = stack().await;
    let mut dev = Client::connect(s.kpc.local_addr(), "dev-1").await;
    let request = topic("tok-1", "config/json/missing/5");
    dev.publish(&request, QoS::AtLeastOnce, b"{}").await;
    let r = dev.recv().await;
    assert_eq!(r.topic, format!("{request}/error"));
    assert_eq!(r.qos, QoS::AtLeastOnce);
    assert_eq!(
        error_payload(&r),
        ErrorResponse::new(404, "No such configuration")
    );
    // No reason phrase: the HTTP reason of the status.
    let request = topic("tok-1", "config/json/down/6");
    dev.publish(&request, QoS::AtMostOnce, b"{}").await;
    let r = dev.recv().await;
    assert_eq!(r.topic, format!("{request}/error"));
    assert_eq!(
        error_payload(&r),
        ErrorResponse::new(503, "Service Unavailable")
    );
    // A non-2xx push goes to .../error.
    push(&s.bus, "kpc", "ep-1", "/config/json", 500, b"").await;
    let r = dev.recv().await;
    assert_eq!(r.topic, topic("tok-1", "config/json/error"));
    assert_eq!(error_payload(&r).status_code, 500);
}

#[tokio::test]
async fn unknown_token_gets_a_1kp_error_and_no_client_data() {
    let mut s = stack().await;
    let mut dev = Client::connect(s.kpc.local_addr(), "dev-1").await;
    let request = topic("nobody", "config/json/3");
    dev.publish(&request, QoS::AtLeastOnce, b"{}").await;
    dev.puback().await;
    let r = dev.recv().await;
    assert_eq!(r.topic, format!("{request}/error"));
    assert_eq!(error_payload(&r).status_code, 401);
    // A token limited to another app version: 403.
    let request = topic("tok-v2", "config/json/4");
    dev.publish(&request, QoS::AtMostOnce, b"{}").await;
    let r = dev.recv().await;
    assert_eq!(r.topic, format!("{request}/error"));
    assert_eq!(error_payload(&r).status_code, 403);
    // Without a request ID: nothing comes back.
    dev.publish(&topic("nobody", "applied/json"), QoS::AtMostOnce, b"{}")
        .await;
    dev.no_publish_within(QUIET).await;
    // No ClientData and no connected event for any of them: the next ClientData
    // is for the valid request that follows.
    s.cmx.none_within(QUIET).await;
    s.events.none_within(Duration::from_millis(10)).await;
    dev.publish(&topic("tok-1", "config/json/9"), QoS::AtMostOnce, b"{}")
        .await;
    assert_eq!(s.cmx.next().await.data.request_id, Some(9));
    assert_eq!(s.kpc.metrics().error_count("unknown_token"), 3);
}

#[tokio::test]
async fn malformed_topics_get_400_where_a_request_id_allows_it() {
    let mut cfg = config();
    cfg.kpc.extension_instances = vec!["cmx".into()];
    let mut s = stack_with(cfg, default_behavior()).await;
    let mut dev = Client::connect(s.kpc.local_addr(), "dev-1").await;
    for (t, status) in [
        (format!("kp1/{APP}//tok-1/config/json/4"), 400), // empty level
        (format!("kp1/{APP}/cmx/5"), 400),                // no token
        ("kp2/a/b/c/6".to_owned(), 400),                  // not 1/KP
        (format!("kp1/{APP}/cmx/tok.1/config/json/7"), 400), // not a subject token
        (format!("kp1/{APP}/other/tok-1/config/json/8"), 404), // unknown extension instance
    ] {
        dev.publish(&t, QoS::AtMostOnce, b"{}").await;
        let r = dev.recv().await;
        assert_eq!(r.topic, format!("{t}/error"), "{t}");
        assert_eq!(error_payload(&r).status_code, status, "{t}");
    }
    // No request ID (or an invalid one): dropped, and the session goes on.
    for t in [
        format!("kp1/{APP}"),
        topic("tok-1", "config/json/007"),
        "kp1".to_owned(),
    ] {
        dev.publish(&t, QoS::AtLeastOnce, b"{}").await;
        dev.puback().await;
    }
    dev.no_publish_within(QUIET).await;
    s.cmx.none_within(Duration::from_millis(10)).await;
    dev.publish(&topic("tok-1", "config/json/9"), QoS::AtMostOnce, b"{}")
        .await;
    assert!(dev.recv().await.topic.ends_with("/9/status"));
}

/// Kaa's official Python client (kaaproject/mqtt-client-python,
/// `kaa_mqtt_client/kaa_mqtt_client.py`, `connect`) first publishes to the
/// binary-data extension, `kp1/<appVersion>/bcx/<token>/token` with no payload
/// and no request ID. A KPC that serves only `cmx` must still connect the
/// endpoint (or CMX never pushes it its configuration), then refuse the request:
/// counted and logged, since the device cannot be told.
#[tokio::test]
async fn unknown_extension_connects_the_endpoint_before_it_is_refused() {
    // A current-thread runtime: the sessions run on this thread, under this
    // thread's default subscriber.
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("kaa_kpc=info"))
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let mut cfg = config();
    cfg.kpc.extension_instances = vec!["cmx".into()];
    let mut s = stack_with(cfg, default_behavior()).await;
    let mut dev = Client::connect(s.kpc.local_addr(), "dev-1").await;
    dev.publish(&format!("kp1/{APP}/bcx/tok-1/token"), QoS::AtMostOnce, b"")
        .await;
    assert_eq!(
        s.events.next().await,
        Connectivity::Connected(eps(&[("ep-1", APP)]))
    );
    dev.no_publish_within(QUIET).await;
    s.cmx.none_within(Duration::from_millis(10)).await;
    let metrics = s.kpc.metrics();
    assert_eq!(metrics.refused_count("unknown_extension"), 1);
    assert_eq!(metrics.error_count("unknown_extension"), 1);
    // The session owns the endpoint: CMX's push on connect reaches it.
    push(
        &s.bus,
        "kpc",
        "ep-1",
        "/config/json",
        200,
        br#"{"configId":"c1","config":1}"#,
    )
    .await;
    let p = dev.recv().await;
    assert_eq!(p.topic, topic("tok-1", "config/json/status"));
    assert_eq!(&p.payload[..], br#"{"configId":"c1","config":1}"#);
    // With a request ID the device is told, and it is no silent refusal.
    let request = format!("kp1/{APP}/bcx/tok-1/token/5");
    dev.publish(&request, QoS::AtMostOnce, b"").await;
    let r = dev.recv().await;
    assert_eq!(r.topic, format!("{request}/error"));
    assert_eq!(error_payload(&r).status_code, 404);
    assert_eq!(metrics.refused_count("unknown_extension"), 1);
    assert_eq!(metrics.error_count("unknown_extension"), 2);
    // An unknown token connects nothing, extension or not.
    dev.publish(&format!("kp1/{APP}/bcx/nobody/token"), QoS::AtMostOnce, b"")
        .await;
    dev.no_publish_within(QUIET).await;
    s.events.none_within(Duration::from_millis(10)).await;
    assert_eq!(metrics.refused_count("unknown_token"), 1);
    // No second `connected` for the same endpoint.
    dev.publish(&topic("tok-1", "config/json/9"), QoS::AtMostOnce, b"{}")
        .await;
    assert_eq!(s.cmx.next().await.data.request_id, Some(9));
    assert!(dev.recv().await.topic.ends_with("/9/status"));
    s.events.none_within(QUIET).await;
    // examples/simple_client reports its software version to `cmx_ota`.
    dev.publish(
        &format!("kp1/{APP}/cmx_ota/tok-1/applied/json"),
        QoS::AtMostOnce,
        br#"{"configId": "s3cr3t"}"#,
    )
    .await;
    dev.no_publish_within(QUIET).await;
    assert_eq!(metrics.refused_count("unknown_extension"), 2);

    let text = captured.text();
    let refusals: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("device request refused"))
        .collect();
    assert_eq!(refusals.len(), 3, "{text}");
    for (line, needles) in refusals.iter().zip([
        [
            "endpointId=ep-1 ",
            "reason=\"unknown_extension\"",
            "\\\"bcx\\\"",
        ],
        ["endpointId= ", "reason=\"unknown_token\"", "status=401"],
        [
            "endpointId=ep-1 ",
            "reason=\"unknown_extension\"",
            "\\\"cmx_ota\\\"",
        ],
    ]) {
        for needle in needles {
            assert!(line.contains(needle), "{needle} missing: {line}");
        }
        let id = line
            .split("correlationId=")
            .nth(1)
            .and_then(|rest| rest.split(' ').next())
            .unwrap_or_default();
        assert_eq!(id.len(), 36, "a correlation ID (UUID): {line}");
    }
    assert!(
        !text.contains("s3cr3t"),
        "the payload is never logged:\n{text}"
    );
}

#[tokio::test]
async fn connected_on_first_use_and_one_disconnected_listing_every_endpoint() {
    let mut s = stack().await;
    let mut dev = Client::connect(s.kpc.local_addr(), "gateway").await;
    // Connecting alone says nothing about endpoints.
    s.events.none_within(QUIET).await;
    dev.publish(&topic("tok-1", "config/json/1"), QoS::AtMostOnce, b"{}")
        .await;
    assert_eq!(
        s.events.next().await,
        Connectivity::Connected(eps(&[("ep-1", APP)]))
    );
    dev.recv().await;
    // Second use of the same token: no event.
    dev.publish(&topic("tok-1", "config/json/2"), QoS::AtMostOnce, b"{}")
        .await;
    dev.recv().await;
    s.events.none_within(QUIET).await;
    // A second endpoint behind the same client (a gateway).
    dev.publish(
        &topic("tok-2", "applied/json"),
        QoS::AtMostOnce,
        br#"{"configId":"c"}"#,
    )
    .await;
    assert_eq!(
        s.events.next().await,
        Connectivity::Connected(eps(&[("ep-2", APP)]))
    );
    // The connected event is on the bus before the ClientData.
    for _ in 0..3 {
        s.cmx.next().await;
    }
    dev.disconnect().await;
    assert_eq!(
        s.events.next().await,
        Connectivity::Disconnected(eps(&[("ep-1", APP), ("ep-2", APP)]))
    );
    s.events.none_within(QUIET).await;
    assert_eq!(s.kpc.metrics().closed_count("disconnect"), 1);
}

#[tokio::test]
async fn dropped_tcp_connection_publishes_disconnected() {
    let mut s = stack().await;
    let mut raw = Raw::connected(s.kpc.local_addr(), "raw-1", 60).await;
    raw.publish(&topic("tok-1", "config/json/1"), QoS::AtMostOnce, 0, b"{}")
        .await;
    raw.publish(&topic("tok-3", "config/json/1"), QoS::AtMostOnce, 0, b"{}")
        .await;
    assert!(matches!(s.events.next().await, Connectivity::Connected(_)));
    assert!(matches!(s.events.next().await, Connectivity::Connected(_)));
    drop(raw);
    assert_eq!(
        s.events.next().await,
        Connectivity::Disconnected(eps(&[("ep-1", APP), ("ep-3", APP)]))
    );
    assert_eq!(s.kpc.metrics().closed_count("dropped"), 1);
}

#[tokio::test]
async fn keep_alive_expiry_closes_the_session_after_one_and_a_half_periods() {
    let mut s = stack().await;
    let mut raw = Raw::connected(s.kpc.local_addr(), "sleepy", 1).await;
    raw.publish(&topic("tok-1", "config/json/1"), QoS::AtMostOnce, 0, b"{}")
        .await;
    let started = Instant::now();
    assert!(matches!(s.events.next().await, Connectivity::Connected(_)));
    // The response arrives; then silence.
    assert!(matches!(raw.read().await, Some(Packet::Publish(_))));
    assert_eq!(
        s.events.next().await,
        Connectivity::Disconnected(eps(&[("ep-1", APP)]))
    );
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(1400),
        "closed after {waited:?}"
    );
    assert!(
        waited < Duration::from_millis(5000),
        "closed after {waited:?}"
    );
    assert!(raw.expect_closed().await.is_empty());
    assert_eq!(s.kpc.metrics().closed_count("keep_alive"), 1);

    // PINGREQ keeps a session alive past its keep-alive.
    let mut raw = Raw::connected(s.kpc.local_addr(), "pinger", 1).await;
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(600)).await;
        raw.send(&Packet::PingReq).await;
        assert_eq!(raw.read().await, Some(Packet::PingResp));
    }
}

#[tokio::test]
async fn wrong_mqtt_password_gets_connack_refused() {
    let mut cfg = config();
    cfg.kpc.mqtt.auth = Some(MqttAuthSection {
        enabled: true,
        users: vec![MqttUser {
            username: "devices".into(),
            password: Secret::Value("s3cret".into()),
        }],
    });
    let s = stack_with(cfg, default_behavior()).await;
    let addr = s.kpc.local_addr();
    let refused = |e: Result<rumqttc::Event, ConnectionError>| match e {
        Err(ConnectionError::ConnectionRefused(code)) => code,
        other => panic!("expected a refused CONNACK, got {other:?}"),
    };
    let mut o = options(addr, "bad");
    o.set_credentials("devices", "wrong");
    let mut c = Client::start(o);
    assert_eq!(
        refused(c.next_event().await),
        ConnectReturnCode::BadUserNamePassword
    );
    let mut c = Client::start(options(addr, "anonymous"));
    assert_eq!(
        refused(c.next_event().await),
        ConnectReturnCode::NotAuthorized
    );
    let mut o = options(addr, "good");
    o.set_credentials("devices", "s3cret");
    let mut good = Client::connect_with(o).await;
    good.publish(&topic("tok-1", "config/json/1"), QoS::AtMostOnce, b"{}")
        .await;
    assert!(good.recv().await.topic.ends_with("/status"));
    assert_eq!(s.kpc.metrics().error_count("auth"), 2);
}

#[tokio::test]
async fn protocol_violations_close_the_connection() {
    let mut s = stack().await;
    let addr = s.kpc.local_addr();

    // The first packet is not CONNECT: closed without CONNACK.
    let mut raw = Raw::connect(addr).await;
    raw.send(&Packet::PingReq).await;
    assert!(raw.expect_closed().await.is_empty());

    // MQTT 5: CONNACK 0x01, then closed.
    let mut raw = Raw::connect(addr).await;
    let mut c = rumqttc::mqttbytes::v4::Connect::new("v5");
    c.protocol = rumqttc::mqttbytes::Protocol::V5;
    raw.send(&Packet::Connect(c)).await;
    match raw.expect_closed().await.as_slice() {
        [Packet::ConnAck(ack)] => assert_eq!(ack.code, ConnectReturnCode::RefusedProtocolVersion),
        other => panic!("{other:?}"),
    }

    // A second CONNECT, after a request: closed, and the endpoint disconnected.
    let mut raw = Raw::connected(addr, "twice", 60).await;
    raw.publish(&topic("tok-1", "config/json/1"), QoS::AtMostOnce, 0, b"{}")
        .await;
    assert!(matches!(s.events.next().await, Connectivity::Connected(_)));
    raw.send(&Packet::Connect(rumqttc::mqttbytes::v4::Connect::new(
        "twice",
    )))
    .await;
    let before = raw.expect_closed().await;
    assert!(
        before.iter().all(|p| matches!(p, Packet::Publish(_))),
        "{before:?}"
    );
    assert_eq!(
        s.events.next().await,
        Connectivity::Disconnected(eps(&[("ep-1", APP)]))
    );

    // SUBSCRIBE with reserved flags 0 instead of 0b0010.
    let mut raw = Raw::connected(addr, "flags", 60).await;
    raw.send_bytes(&[0x80, 0x06, 0x00, 0x01, 0x00, 0x01, b'a', 0x00])
        .await;
    assert!(raw.expect_closed().await.is_empty());

    // PUBLISH to a topic with a wildcard.
    let mut raw = Raw::connected(addr, "wild", 60).await;
    raw.publish("kp1/+/cmx/tok-1/config/json/1", QoS::AtMostOnce, 0, b"{}")
        .await;
    assert!(raw.expect_closed().await.is_empty());

    // A packet only a server sends.
    let mut raw = Raw::connected(addr, "pingresp", 60).await;
    raw.send(&Packet::PingResp).await;
    assert!(raw.expect_closed().await.is_empty());

    // CONNECT with the reserved flag set.
    let mut raw = Raw::connect(addr).await;
    let mut bytes = bytes::BytesMut::new();
    Packet::Connect(rumqttc::mqttbytes::v4::Connect::new("r"))
        .write(&mut bytes, usize::MAX)
        .unwrap();
    bytes[9] |= 0x01;
    raw.send_bytes(&bytes).await;
    assert!(raw.expect_closed().await.is_empty());

    // A packet larger than max-payload + room for the topic.
    let mut raw = Raw::connected(addr, "huge", 60).await;
    raw.send_bytes(&[0x30, 0xff, 0xff, 0xff, 0x7f]).await;
    assert!(raw.expect_closed().await.is_empty());

    assert!(s.kpc.metrics().closed_count("protocol_violation") >= 6);
    s.cmx.next().await;
}

#[tokio::test]
async fn garbage_on_one_session_does_not_affect_another() {
    let s = stack().await;
    let addr = s.kpc.local_addr();
    let mut good = Client::connect(addr, "good").await;
    good.publish(&topic("tok-1", "config/json/1"), QoS::AtLeastOnce, b"{}")
        .await;
    assert!(good.recv().await.topic.ends_with("/1/status"));

    let mut bad = Raw::connected(addr, "bad", 60).await;
    bad.publish(&topic("tok-2", "config/json/1"), QoS::AtMostOnce, 0, b"{}")
        .await;
    bad.send_bytes(&[0xff; 64]).await;
    bad.expect_closed().await;
    let mut garbage_first = Raw::connect(addr).await;
    garbage_first
        .send_bytes(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    assert!(garbage_first.expect_closed().await.is_empty());

    // The good session still works: requests and pushes.
    good.publish(&topic("tok-1", "config/json/2"), QoS::AtLeastOnce, b"{}")
        .await;
    assert!(good.recv().await.topic.ends_with("/2/status"));
    push(&s.bus, "kpc", "ep-1", "/config/json", 200, b"{}").await;
    assert_eq!(
        good.recv().await.topic,
        topic("tok-1", "config/json/status")
    );
}

#[tokio::test]
async fn a_second_session_using_a_token_takes_the_endpoint_over() {
    let mut s = stack().await;
    let addr = s.kpc.local_addr();
    let mut a = Client::connect(addr, "a").await;
    a.publish(&topic("tok-1", "config/json/1"), QoS::AtMostOnce, b"{}")
        .await;
    a.recv().await;
    assert_eq!(
        s.events.next().await,
        Connectivity::Connected(eps(&[("ep-1", APP)]))
    );

    let mut b = Client::connect(addr, "b").await;
    b.publish(&topic("tok-1", "config/json/1"), QoS::AtMostOnce, b"{}")
        .await;
    assert!(b.recv().await.topic.ends_with("/1/status"));
    assert_eq!(
        s.events.next().await,
        Connectivity::Connected(eps(&[("ep-1", APP)]))
    );
    push(&s.bus, "kpc", "ep-1", "/config/json", 200, b"{}").await;
    assert!(b.recv().await.topic.ends_with("config/json/status"));
    a.no_publish_within(QUIET).await;

    // A ends: it no longer owns ep-1, so no event.
    a.disconnect().await;
    s.events.none_within(QUIET).await;
    b.disconnect().await;
    assert_eq!(
        s.events.next().await,
        Connectivity::Disconnected(eps(&[("ep-1", APP)]))
    );
}

#[tokio::test]
async fn a_second_connection_with_the_same_client_id_closes_the_first() {
    let mut s = stack().await;
    let addr = s.kpc.local_addr();
    let mut first = Raw::connected(addr, "same-id", 60).await;
    first
        .publish(&topic("tok-1", "config/json/1"), QoS::AtMostOnce, 0, b"{}")
        .await;
    assert!(matches!(s.events.next().await, Connectivity::Connected(_)));
    let _second = Raw::connected(addr, "same-id", 60).await;
    first.expect_closed().await;
    assert_eq!(
        s.events.next().await,
        Connectivity::Disconnected(eps(&[("ep-1", APP)]))
    );
    assert_eq!(s.kpc.metrics().closed_count("taken_over"), 1);
}

#[tokio::test]
async fn qos_2_subscribe_unsubscribe_and_ping() {
    let mut s = stack().await;
    let mut raw = Raw::connected(s.kpc.local_addr(), "raw", 60).await;
    let t = topic("tok-1", "config/json/1");
    raw.publish(&t, QoS::ExactlyOnce, 11, b"{}").await;
    // A retransmission before PUBREL is not forwarded again.
    raw.publish(&t, QoS::ExactlyOnce, 11, b"{}").await;
    let mut got = Vec::new();
    while got
        .iter()
        .filter(|p| matches!(p, Packet::PubRec(_)))
        .count()
        < 2
    {
        got.push(raw.read().await.expect("open"));
    }
    let response = got.iter().find_map(|p| match p {
        Packet::Publish(p) => Some(p.clone()),
        _ => None,
    });
    let response = match response {
        Some(r) => r,
        None => match raw.read().await {
            Some(Packet::Publish(p)) => p,
            other => panic!("{other:?}"),
        },
    };
    assert_eq!(response.topic, format!("{t}/status"));
    assert_eq!(response.qos, QoS::AtLeastOnce);
    raw.send(&Packet::PubAck(rumqttc::mqttbytes::v4::PubAck::new(
        response.pkid,
    )))
    .await;
    raw.send(&Packet::PubRel(PubRel::new(11))).await;
    assert_eq!(
        raw.read().await,
        Some(Packet::PubComp(rumqttc::mqttbytes::v4::PubComp::new(11)))
    );
    s.cmx.next().await;
    s.cmx.none_within(QUIET).await;

    let mut sub = Subscribe::new_many([
        SubscribeFilter::new("kp1/app-v1/cmx/tok-1/#".into(), QoS::ExactlyOnce),
        SubscribeFilter::new("a/#/b".into(), QoS::AtMostOnce),
    ]);
    sub.pkid = 5;
    raw.send(&Packet::Subscribe(sub)).await;
    match raw.read().await {
        Some(Packet::SubAck(ack)) => {
            assert_eq!(ack.pkid, 5);
            assert_eq!(
                ack.return_codes,
                [
                    SubscribeReasonCode::Success(QoS::AtLeastOnce),
                    SubscribeReasonCode::Failure
                ]
            );
        }
        other => panic!("{other:?}"),
    }
    let mut unsub = Unsubscribe::new("kp1/app-v1/cmx/tok-1/#");
    unsub.pkid = 6;
    raw.send(&Packet::Unsubscribe(unsub)).await;
    assert!(matches!(raw.read().await, Some(Packet::UnsubAck(a)) if a.pkid == 6));
    raw.send(&Packet::PingReq).await;
    assert_eq!(raw.read().await, Some(Packet::PingResp));
}

#[tokio::test]
async fn limits_payload_inflight_and_connections() {
    let mut cfg = config();
    cfg.kpc.mqtt.max_payload = 64;
    cfg.kpc.mqtt.max_inflight = 2;
    cfg.kpc.mqtt.max_connections = 2;
    cfg.kpc.mqtt.max_endpoints_per_session = 1;
    let mut s = stack_with(cfg, default_behavior()).await;
    let addr = s.kpc.local_addr();
    let mut dev = Client::connect(addr, "dev").await;

    let request = topic("tok-1", "config/json/1");
    dev.publish(&request, QoS::AtMostOnce, &[b' '; 65]).await;
    let r = dev.recv().await;
    assert_eq!(r.topic, format!("{request}/error"));
    assert_eq!(error_payload(&r).status_code, 413);

    // Two requests nobody answers fill the window; the third is refused.
    dev.publish(
        &topic("tok-1", "config/json/silent/2"),
        QoS::AtMostOnce,
        b"{}",
    )
    .await;
    dev.publish(
        &topic("tok-1", "config/json/silent/3"),
        QoS::AtMostOnce,
        b"{}",
    )
    .await;
    let request = topic("tok-1", "config/json/4");
    dev.publish(&request, QoS::AtMostOnce, b"{}").await;
    let r = dev.recv().await;
    assert_eq!(r.topic, format!("{request}/error"));
    assert_eq!(error_payload(&r).status_code, 429);
    assert_eq!(s.cmx.next().await.data.request_id, Some(2));
    assert_eq!(s.cmx.next().await.data.request_id, Some(3));
    s.cmx.none_within(QUIET).await;

    // One endpoint per session: a second token is refused, the first still works.
    let request = topic("tok-2", "config/json/5");
    dev.publish(&request, QoS::AtMostOnce, b"{}").await;
    let r = dev.recv().await;
    assert_eq!(r.topic, format!("{request}/error"));
    assert_eq!(error_payload(&r).status_code, 429);
    s.cmx.none_within(QUIET).await;

    // Two connections at most: the third gets CONNACK 0x03 (server unavailable)
    // and is closed (more in limits::the_connection_past_max_connections_…).
    let _second = Raw::connected(addr, "second", 60).await;
    let mut third = Raw::connect(addr).await;
    third
        .send(&Packet::Connect(rumqttc::mqttbytes::v4::Connect::new(
            "third",
        )))
        .await;
    assert_eq!(
        third.expect_closed().await,
        [Packet::ConnAck(rumqttc::mqttbytes::v4::ConnAck::new(
            rumqttc::mqttbytes::v4::ConnectReturnCode::ServiceUnavailable,
            false
        ))]
    );
}

#[tokio::test]
async fn an_answer_arrives_once_and_not_after_the_request_timeout() {
    let mut cfg = config();
    cfg.kpc.mqtt.request_timeout = Duration::from_millis(300);
    let bus = memory_bus();
    let kpc = start_kpc(&cfg, Arc::clone(&bus)).await;
    let mut cmx = FakeCmx::start(
        Arc::clone(&bus),
        "cmx",
        Arc::new(|_: &kaa_esp::ClientData<'_>| None),
    )
    .await;
    let mut dev = Client::connect(kpc.local_addr(), "dev").await;
    dev.publish(&topic("tok-1", "config/json/1"), QoS::AtMostOnce, b"{}")
        .await;
    let request = cmx.next().await;
    assert_eq!(request.data.timeout, 300);
    let reply_to = request.reply_to.clone().unwrap();
    let first = answer(&request.data, 1, 200, Some(b"{}".to_vec()), None);
    let datum = bytes::Bytes::from(kaa_ism::avro::Encode::to_vec(&first));
    bus.publish(&reply_to, datum.clone()).await.unwrap();
    assert!(dev.recv().await.topic.ends_with("/1/status"));
    // The same answer again: no pending request any more.
    bus.publish(&reply_to, datum).await.unwrap();
    dev.no_publish_within(QUIET).await;
    assert_eq!(kpc.metrics().extension_data_count("unmatched"), 1);

    dev.publish(&topic("tok-1", "config/json/2"), QoS::AtMostOnce, b"{}")
        .await;
    let request = cmx.next().await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    let late = answer(&request.data, 2, 200, Some(b"{}".to_vec()), None);
    bus.publish(
        &reply_to,
        bytes::Bytes::from(kaa_ism::avro::Encode::to_vec(&late)),
    )
    .await
    .unwrap();
    dev.no_publish_within(QUIET).await;
    assert_eq!(kpc.metrics().extension_data_count("expired"), 1);
    // Garbage on the ExtensionData subject is counted and skipped.
    bus.publish(&reply_to, bytes::Bytes::from_static(b"\xff\xff"))
        .await
        .unwrap();
    dev.publish(&topic("tok-1", "config/json/3"), QoS::AtMostOnce, b"{}")
        .await;
    let request = cmx.next().await;
    let ok = answer(&request.data, 3, 200, Some(b"{}".to_vec()), None);
    bus.publish(
        &reply_to,
        bytes::Bytes::from(kaa_ism::avro::Encode::to_vec(&ok)),
    )
    .await
    .unwrap();
    assert!(dev.recv().await.topic.ends_with("/3/status"));
    assert_eq!(kpc.metrics().extension_data_count("malformed"), 1);
}

#[tokio::test]
async fn shutdown_disconnects_every_session_and_metrics_are_served() {
    let mut cfg = config();
    cfg.kpc.http = Some(kaa_examples::kpc::config::HttpSection {
        listen: "127.0.0.1:0".parse().unwrap(),
    });
    let mut s = stack_with(cfg, default_behavior()).await;
    let mut dev = Client::connect(s.kpc.local_addr(), "dev").await;
    dev.publish(&topic("tok-2", "config/json/1"), QoS::AtMostOnce, b"{}")
        .await;
    dev.recv().await;
    assert!(matches!(s.events.next().await, Connectivity::Connected(_)));

    let ops = s.kpc.ops_addr().unwrap();
    let metrics = reqwest::get(format!("http://{ops}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("kpc_connections 1"), "{metrics}");
    assert!(
        metrics.contains("kpc_messages_in_total{kind=\"request\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("kpc_elce_events_total{event=\"connected\"} 1"),
        "{metrics}"
    );
    let health = reqwest::get(format!("http://{ops}/health")).await.unwrap();
    assert_eq!(health.status(), 200);

    s.kpc.shutdown().await.unwrap();
    assert_eq!(
        s.events.next().await,
        Connectivity::Disconnected(eps(&[("ep-2", APP)]))
    );
    dev.closed().await;
}

/// A small deterministic PRNG (xorshift64*), so that a failure can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[tokio::test]
async fn random_and_mutated_packets_never_take_kpc_down() {
    let s = stack().await;
    let addr = s.kpc.local_addr();
    let mut valid = Vec::new();
    for p in [
        Packet::Publish({
            let mut p = rumqttc::Publish::new(
                topic("tok-1", "config/json/3"),
                QoS::AtLeastOnce,
                b"{}".to_vec(),
            );
            p.pkid = 3;
            p
        }),
        Packet::Subscribe(Subscribe::new("kp1/#", QoS::AtLeastOnce)),
        Packet::Unsubscribe(Unsubscribe::new("kp1/#")),
        Packet::PubRel(PubRel::new(9)),
        Packet::PingReq,
    ] {
        let mut b = bytes::BytesMut::new();
        let mut p = p;
        if let Packet::Subscribe(s) = &mut p {
            s.pkid = 4;
        }
        if let Packet::Unsubscribe(u) = &mut p {
            u.pkid = 5;
        }
        p.write(&mut b, usize::MAX).unwrap();
        valid.push(b.to_vec());
    }
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    for round in 0..300 {
        let mut bytes = valid[rng.below(valid.len())].clone();
        match round % 3 {
            // Flip a few bytes of a valid packet.
            0 => {
                for _ in 0..=rng.below(3) {
                    let i = rng.below(bytes.len());
                    bytes[i] ^= 1 << rng.below(8);
                }
            }
            // Cut it short, then add noise.
            1 => {
                bytes.truncate(rng.below(bytes.len()) + 1);
                bytes.extend((0..rng.below(16)).map(|_| rng.next() as u8));
            }
            // Pure noise.
            _ => bytes = (0..rng.below(64) + 1).map(|_| rng.next() as u8).collect(),
        }
        // Half the time after a valid CONNECT, half the time instead of it.
        let mut raw = if round % 2 == 0 {
            Raw::connected(addr, &format!("fuzz-{round}"), 60).await
        } else {
            Raw::connect(addr).await
        };
        raw.send_bytes(&bytes).await;
        drop(raw);
    }
    // Every session ended (a panicking session task would never count itself
    // closed), and a well-behaved client is served.
    let deadline = Instant::now() + WAIT;
    while s.kpc.metrics().open_connections() != 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(s.kpc.metrics().open_connections(), 0);
    let mut good = Client::connect(addr, "good").await;
    good.publish(&topic("tok-2", "config/json/1"), QoS::AtLeastOnce, b"{}")
        .await;
    assert!(good.recv().await.topic.ends_with("/1/status"));
}

#[tokio::test]
async fn connected_is_on_the_bus_before_the_first_client_data() {
    use futures::StreamExt;
    let s = stack().await;
    let mut everything = s.bus.subscribe("kaa.v1.>", None).await.unwrap();
    let dev = Client::connect(s.kpc.local_addr(), "dev").await;
    dev.publish(&topic("tok-1", "config/json/1"), QoS::AtMostOnce, b"{}")
        .await;
    let mut subjects = Vec::new();
    while subjects.len() < 3 {
        let m = tokio::time::timeout(WAIT, everything.next())
            .await
            .unwrap()
            .unwrap();
        subjects.push(m.subject);
    }
    assert_eq!(
        subjects,
        [
            "kaa.v1.events.kpc.endpoint.connectivity.connected",
            "kaa.v1.service.cmx.esp.ClientData",
            "kaa.v1.replica.kpc-1.esp.ExtensionData",
        ]
    );
}

// Parked sessions: an established session with nothing to do has no task of its
// own; an idle reactor holds it (`kpc_sessions_parked`) and gives it a task again
// when something happens (`kpc_sessions_resumed_total`). Each test waits until
// the session is parked before it acts, and checks it was resumed.

/// Waits until `n` sessions are parked.
async fn until_parked(kpc: &kaa_examples::kpc::KpcHandle, n: i64) {
    let start = Instant::now();
    while kpc.metrics().parked_sessions() != n {
        assert!(
            start.elapsed() < WAIT,
            "{} sessions parked, expected {n}",
            kpc.metrics().parked_sessions()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A raw session of `client_id` (keep-alive 60 s) that made one QoS 1
/// configuration request as `tok-1` and got its PUBACK and answer; its
/// `connected` event is taken.
async fn requested(s: &mut Stack, client_id: &str) -> Raw {
    let mut raw = Raw::connected(s.kpc.local_addr(), client_id, 60).await;
    raw.publish(&topic("tok-1", "config/json/1"), QoS::AtLeastOnce, 7, b"{}")
        .await;
    assert!(matches!(raw.read().await, Some(Packet::PubAck(_))));
    assert!(matches!(raw.read().await, Some(Packet::Publish(_))));
    assert!(matches!(s.events.next().await, Connectivity::Connected(_)));
    raw
}

/// With `kpc.mqtt.park-idle-sessions: false` an idle session keeps its task:
/// nothing is parked, and a push reaches it all the same.
#[tokio::test]
async fn with_parking_off_idle_sessions_keep_their_tasks() {
    let mut c = config();
    c.kpc.mqtt.park_idle_sessions = false;
    let mut s = stack_with(c, default_behavior()).await;
    let mut raw = requested(&mut s, "unparked").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(s.kpc.metrics().parked_sessions(), 0, "nothing parked");
    push(
        &s.bus,
        "kpc",
        "ep-1",
        "/config/json",
        200,
        br#"{"configId":"c2"}"#,
    )
    .await;
    let Some(Packet::Publish(p)) = raw.read().await else {
        panic!("the push");
    };
    assert_eq!(&p.payload[..], br#"{"configId":"c2"}"#);
    assert_eq!(s.kpc.metrics().parked_sessions(), 0);
    assert_eq!(s.kpc.metrics().resumed_count(), 0);
}

#[tokio::test]
async fn a_push_to_a_parked_session_is_delivered() {
    let mut s = stack().await;
    let mut raw = requested(&mut s, "parked-push").await;
    until_parked(&s.kpc, 1).await;
    let resumed = s.kpc.metrics().resumed_count();

    let started = Instant::now();
    push(
        &s.bus,
        "kpc",
        "ep-1",
        "/config/json",
        200,
        br#"{"configId":"c2"}"#,
    )
    .await;
    let Some(Packet::Publish(p)) = raw.read().await else {
        panic!("the push");
    };
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "a push to a parked session took {:?}",
        started.elapsed()
    );
    assert_eq!(p.topic, topic("tok-1", "config/json/status"));
    assert_eq!(&p.payload[..], br#"{"configId":"c2"}"#);
    assert_eq!(p.qos, QoS::AtLeastOnce);
    assert!(s.kpc.metrics().resumed_count() > resumed);
    // Acknowledged; the session parks again and takes the next push the same way.
    raw.send(&Packet::PubAck(rumqttc::mqttbytes::v4::PubAck::new(p.pkid)))
        .await;
    until_parked(&s.kpc, 1).await;
    push(
        &s.bus,
        "kpc",
        "ep-1",
        "/config/json",
        200,
        br#"{"configId":"c3"}"#,
    )
    .await;
    let Some(Packet::Publish(p)) = raw.read().await else {
        panic!("the second push");
    };
    assert_eq!(&p.payload[..], br#"{"configId":"c3"}"#);
}

#[tokio::test]
async fn a_parked_sessions_keep_alive_still_closes_it() {
    let mut s = stack().await;
    let mut raw = Raw::connected(s.kpc.local_addr(), "parked-sleepy", 1).await;
    raw.publish(&topic("tok-1", "config/json/1"), QoS::AtMostOnce, 0, b"{}")
        .await;
    let started = Instant::now();
    assert!(matches!(raw.read().await, Some(Packet::Publish(_))));
    assert!(matches!(s.events.next().await, Connectivity::Connected(_)));
    until_parked(&s.kpc, 1).await;
    // 1.5 × 1 s after the last packet.
    assert_eq!(
        s.events.next().await,
        Connectivity::Disconnected(eps(&[("ep-1", APP)]))
    );
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(1400) && waited < Duration::from_millis(3000),
        "closed after {waited:?}"
    );
    assert!(raw.expect_closed().await.is_empty());
    assert_eq!(s.kpc.metrics().closed_count("keep_alive"), 1);
    assert_eq!(s.kpc.metrics().parked_sessions(), 0);

    // A PINGREQ wakes a parked session and resets its keep-alive.
    let mut raw = Raw::connected(s.kpc.local_addr(), "parked-pinger", 1).await;
    for _ in 0..4 {
        until_parked(&s.kpc, 1).await;
        tokio::time::sleep(Duration::from_millis(600)).await;
        raw.send(&Packet::PingReq).await;
        assert_eq!(raw.read().await, Some(Packet::PingResp));
    }
    assert_eq!(s.kpc.metrics().closed_count("keep_alive"), 1);
}

#[tokio::test]
async fn a_parked_session_that_gets_a_publish_resumes() {
    let mut s = stack().await;
    let mut raw = Raw::connected(s.kpc.local_addr(), "parked-publisher", 60).await;
    until_parked(&s.kpc, 1).await;
    let resumed = s.kpc.metrics().resumed_count();
    raw.publish(&topic("tok-1", "config/json/5"), QoS::AtLeastOnce, 9, b"{}")
        .await;
    assert_eq!(
        raw.read().await,
        Some(Packet::PubAck(rumqttc::mqttbytes::v4::PubAck::new(9)))
    );
    let Some(Packet::Publish(p)) = raw.read().await else {
        panic!("the response");
    };
    assert_eq!(
        p.topic,
        format!("{}/status", topic("tok-1", "config/json/5"))
    );
    assert!(matches!(s.events.next().await, Connectivity::Connected(_)));
    let got = s.cmx.next().await;
    assert_eq!(got.data.endpoint_id.as_deref(), Some("ep-1"));
    assert!(s.kpc.metrics().resumed_count() > resumed);
    // A DISCONNECT to a parked session ends it.
    until_parked(&s.kpc, 1).await;
    raw.send(&Packet::Disconnect).await;
    assert!(raw.expect_closed().await.is_empty());
    assert_eq!(
        s.events.next().await,
        Connectivity::Disconnected(eps(&[("ep-1", APP)]))
    );
    assert_eq!(s.kpc.metrics().closed_count("disconnect"), 1);
}

#[tokio::test]
async fn a_parked_session_is_closed_by_a_takeover_and_by_a_dropped_connection() {
    let mut s = stack().await;
    let addr = s.kpc.local_addr();
    let mut first = Raw::connected(addr, "parked-same-id", 60).await;
    first
        .publish(&topic("tok-1", "config/json/1"), QoS::AtMostOnce, 0, b"{}")
        .await;
    assert!(matches!(first.read().await, Some(Packet::Publish(_))));
    assert!(matches!(s.events.next().await, Connectivity::Connected(_)));
    until_parked(&s.kpc, 1).await;
    let second = Raw::connected(addr, "parked-same-id", 60).await;
    first.expect_closed().await;
    assert_eq!(
        s.events.next().await,
        Connectivity::Disconnected(eps(&[("ep-1", APP)]))
    );
    assert_eq!(s.kpc.metrics().closed_count("taken_over"), 1);
    until_parked(&s.kpc, 1).await;
    drop(second);
    until_parked(&s.kpc, 0).await;
    let start = Instant::now();
    while s.kpc.metrics().closed_count("dropped") != 1 {
        assert!(start.elapsed() < WAIT, "the dropped session was not closed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(s.kpc.metrics().open_connections(), 0);
}

#[tokio::test]
async fn shutdown_closes_parked_sessions() {
    let mut s = stack().await;
    let addr = s.kpc.local_addr();
    let mut devices = Vec::new();
    for (i, token) in ["tok-1", "tok-2", "tok-3"].into_iter().enumerate() {
        let mut raw = Raw::connected(addr, &format!("parked-{i}"), 60).await;
        raw.publish(&topic(token, "config/json/1"), QoS::AtMostOnce, 0, b"{}")
            .await;
        assert!(matches!(raw.read().await, Some(Packet::Publish(_))));
        assert!(matches!(s.events.next().await, Connectivity::Connected(_)));
        devices.push(raw);
    }
    // Two more that never published: no endpoint, no event.
    for i in 3..5 {
        devices.push(Raw::connected(addr, &format!("parked-{i}"), 60).await);
    }
    until_parked(&s.kpc, 5).await;
    let metrics = s.kpc.metrics().clone();
    s.kpc.shutdown().await.unwrap();
    let mut released = Vec::new();
    for _ in 0..3 {
        match s.events.next().await {
            Connectivity::Disconnected(eps) => released.extend(eps),
            other => panic!("expected disconnected, got {other:?}"),
        }
    }
    released.sort();
    assert_eq!(
        released,
        eps(&[("ep-1", APP), ("ep-2", APP), ("ep-3", APP)])
    );
    for mut raw in devices {
        assert!(raw.expect_closed().await.is_empty());
    }
    assert_eq!(metrics.closed_count("shutdown"), 5);
    assert_eq!(metrics.parked_sessions(), 0);
    assert_eq!(metrics.open_connections(), 0);
}
