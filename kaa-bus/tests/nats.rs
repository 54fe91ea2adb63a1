//! `NatsBus` behaviour beyond the conformance suite.
//!
//! The fault tests run a private `nats-server` (`/usr/sbin/nats-server`, or
//! `KAA_TEST_NATS_SERVER`) on an ephemeral port and kill and restart it; they never
//! touch the machine's shared NATS. They skip visibly when the binary is missing,
//! unless `KAA_REQUIRE_SERVICES=1`. The slow-consumer test uses the shared NATS at
//! `KAA_TEST_NATS_URL` under the same rule.

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use kaa_bus::{
    Bus, BusError, Message, NatsBus, NatsConfig, Subscription,
    nats::NatsAuth,
    test_support::{NATS, PrivateNatsCluster, PrivateNatsServer, conformance::unique_subject},
};

/// Fast reconnects for tests.
fn config(url: &str) -> NatsConfig {
    NatsConfig::new([url])
        .with_reconnect_delay_max(Duration::from_millis(200))
        .with_connection_timeout(Duration::from_secs(2))
}

async fn connect(url: &str) -> NatsBus {
    NatsBus::connect_with_auth(&config(url), &NatsAuth::None)
        .await
        .expect("connect")
}

/// Publishes `payload` to `subject` every 100 ms until `sub` receives it, for at
/// most `within`. A server that just came back may still be receiving the client's
/// re-sent subscriptions, so the first publishes may find nobody.
async fn publish_until_received(
    bus: &NatsBus,
    sub: &mut Subscription,
    subject: &str,
    payload: &'static str,
    within: Duration,
) -> Message {
    let deadline = Instant::now() + within;
    loop {
        // Errors while the connection is (re)established are expected here.
        let _ = bus
            .publish(subject, Bytes::from_static(payload.as_bytes()))
            .await;
        if let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(100), sub.next()).await
            && m.payload == payload
        {
            return m;
        }
        assert!(
            Instant::now() < deadline,
            "{payload:?} not received on {subject} within {within:?}"
        );
    }
}

/// Requests until a reply comes, for at most `within`.
async fn request_until_answered(bus: &NatsBus, subject: &str, within: Duration) -> Message {
    let deadline = Instant::now() + within;
    loop {
        match bus
            .request(
                subject,
                Bytes::from_static(b"ping"),
                Duration::from_millis(300),
            )
            .await
        {
            Ok(reply) => return reply,
            Err(e) => assert!(
                Instant::now() < deadline,
                "no reply on {subject} within {within:?}: {e}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn spawn_echo(bus: NatsBus, mut sub: Subscription) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while let Some(request) = sub.next().await {
            if let Some(reply_to) = request.reply_to {
                let _ = bus.publish(&reply_to, request.payload).await;
            }
        }
    })
}

#[tokio::test]
async fn subscriptions_and_request_reply_survive_a_server_restart() {
    let test = "kaa-bus nats::subscriptions_and_request_reply_survive_a_server_restart";
    let Some(mut server) = PrivateNatsServer::start(test) else {
        return;
    };
    let bus = connect(&server.url()).await;
    assert!(bus.wait_connected(Duration::from_secs(5)).await);

    let events = unique_subject("fault.events");
    let service = unique_subject("fault.service");
    let mut sub = bus.subscribe(&events, None).await.unwrap();
    let echo = spawn_echo(
        bus.clone(),
        bus.subscribe(&service, Some("svc")).await.unwrap(),
    );
    bus.flush().await.unwrap();
    publish_until_received(&bus, &mut sub, &events, "before", Duration::from_secs(5)).await;
    assert_eq!(
        request_until_answered(&bus, &service, Duration::from_secs(5))
            .await
            .payload,
        "ping"
    );
    assert_eq!(bus.connections(), 1);

    // Kill the server: no goodbye to the client.
    server.kill();
    let deadline = Instant::now() + Duration::from_secs(10);
    while bus.is_connected() {
        assert!(
            Instant::now() < deadline,
            "the client never noticed the kill"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // While it is down, operations fail or wait, but never panic.
    let _ = bus.publish(&events, Bytes::from_static(b"lost")).await;
    match bus
        .request(
            &service,
            Bytes::from_static(b"?"),
            Duration::from_millis(300),
        )
        .await
    {
        Err(e) => eprintln!("request while the server is down: {e}"),
        Ok(reply) => panic!("a reply with the server down: {reply:?}"),
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Same port, new process, no state: the client must re-subscribe by itself.
    server.restart().expect("restart nats-server");
    assert!(
        bus.wait_connected(Duration::from_secs(10)).await,
        "no reconnect within 10 s"
    );
    assert!(bus.connections() >= 2, "connections: {}", bus.connections());
    assert!(bus.disconnections() >= 1);

    // The subscription made before the restart receives again, without a new
    // subscribe; so does the responder, and request/reply works again.
    publish_until_received(&bus, &mut sub, &events, "after", Duration::from_secs(10)).await;
    assert_eq!(
        request_until_answered(&bus, &service, Duration::from_secs(10))
            .await
            .payload,
        "ping"
    );
    // New subscriptions work too.
    let mut fresh = bus.subscribe(&format!("{events}.new"), None).await.unwrap();
    publish_until_received(
        &bus,
        &mut fresh,
        &format!("{events}.new"),
        "fresh",
        Duration::from_secs(5),
    )
    .await;
    echo.abort();
}

/// The epoch a service reads right after connecting is the one it keeps until a
/// reconnect: async-nats counts the first `Connected` event on a task of its own,
/// and a CMX that read 0 there took its own first connection for a reconnect and
/// re-pushed configurations (seen in CI as duplicate pushes).
#[tokio::test]
async fn the_first_connection_epoch_is_stable() {
    let test = "kaa-bus nats::the_first_connection_epoch_is_stable";
    let Some(server) = PrivateNatsServer::start(test) else {
        return;
    };
    let config = config(&server.url()).with_retry_on_initial_connect(false);
    for _ in 0..20 {
        let bus = NatsBus::connect_with_auth(&config, &NatsAuth::None)
            .await
            .expect("connect");
        let at_start = bus.connection_epoch();
        assert_eq!(at_start, 1, "a connected bus is in its first epoch");
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(bus.connection_epoch(), at_start, "no reconnect happened");
        assert_eq!(bus.connections(), 1);
    }
}

#[tokio::test]
async fn first_connection_is_retried_until_the_server_comes_up() {
    let test = "kaa-bus nats::first_connection_is_retried_until_the_server_comes_up";
    let Some(mut server) = PrivateNatsServer::start(test) else {
        return;
    };
    server.kill();

    // Nothing listens on the port: connect still returns (retrying in the
    // background), and subscribing works before the server is there.
    let bus = tokio::time::timeout(Duration::from_secs(5), connect(&server.url()))
        .await
        .expect("connect returns at once with retry_on_initial_connect");
    assert!(!bus.is_connected());
    let subject = unique_subject("late");
    let mut sub = bus.subscribe(&subject, None).await.unwrap();

    tokio::time::sleep(Duration::from_millis(500)).await;
    server.restart().expect("start nats-server");
    assert!(bus.wait_connected(Duration::from_secs(10)).await);
    publish_until_received(&bus, &mut sub, &subject, "hello", Duration::from_secs(10)).await;
}

#[tokio::test]
async fn the_bus_closes_after_max_reconnects() {
    let test = "kaa-bus nats::the_bus_closes_after_max_reconnects";
    let Some(mut server) = PrivateNatsServer::start(test) else {
        return;
    };
    let config = config(&server.url()).with_max_reconnects(Some(2));
    let bus = NatsBus::connect_with_auth(&config, &NatsAuth::None)
        .await
        .unwrap();
    assert!(bus.wait_connected(Duration::from_secs(5)).await);
    let mut sub = bus
        .subscribe(&unique_subject("closing"), None)
        .await
        .unwrap();
    server.kill();

    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match bus.publish("kaa-bus-test.closing", Bytes::new()).await {
            Err(BusError::Closed) => break,
            other => assert!(
                Instant::now() < deadline,
                "still not closed after 15 s: {other:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The subscription stream ends instead of hanging forever.
    let end = tokio::time::timeout(Duration::from_secs(5), sub.next()).await;
    assert!(matches!(end, Ok(None)), "{end:?}");
}

#[tokio::test]
async fn credentials_from_the_environment_are_used() {
    let test = "kaa-bus nats::credentials_from_the_environment_are_used";
    let Some(server) =
        PrivateNatsServer::start_with_args(test, &["--user", "cmx", "--pass", "s3cret"])
    else {
        return;
    };
    let config = config(&server.url()).with_retry_on_initial_connect(false);

    // As the variables would be set in the service's environment.
    let env = |vars: &'static [(&'static str, &'static str)]| {
        NatsAuth::from_lookup(move |name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v).to_owned())
        })
        .unwrap()
    };

    let bus = NatsBus::connect_with_auth(
        &config,
        &env(&[("NATS_USER", "cmx"), ("NATS_PASSWORD", "s3cret")]),
    )
    .await
    .expect("right credentials connect");
    let subject = unique_subject("auth");
    let mut sub = bus.subscribe(&subject, None).await.unwrap();
    bus.publish(&subject, Bytes::from_static(b"in"))
        .await
        .unwrap();
    assert_eq!(sub.next().await.unwrap().payload, "in");

    for auth in [
        NatsAuth::None,
        env(&[("NATS_USER", "cmx"), ("NATS_PASSWORD", "wrong")]),
    ] {
        match NatsBus::connect_with_auth(&config, &auth).await {
            Err(BusError::Connect { .. }) => {}
            other => panic!("{auth:?}: expected a connect error, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn slow_consumers_are_counted() {
    let test = "kaa-bus nats::slow_consumers_are_counted";
    let Some(url) = NATS.require(test) else {
        return;
    };
    let config = config(&url)
        .with_retry_on_initial_connect(false)
        .with_subscription_capacity(8);
    let bus = NatsBus::connect_with_auth(&config, &NatsAuth::None)
        .await
        .unwrap();
    // The server's INFO max_payload (1 MiB unless the server is configured otherwise).
    assert!(
        bus.max_payload().is_some_and(|n| n >= 1024),
        "{:?}",
        bus.max_payload()
    );
    let subject = unique_subject("slow");
    let mut sub = bus.subscribe(&subject, None).await.unwrap();
    for i in 0..200u32 {
        bus.publish(&subject, Bytes::from(i.to_be_bytes().to_vec()))
            .await
            .unwrap();
    }
    bus.flush().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while bus.slow_consumer_events() == 0 {
        assert!(Instant::now() < deadline, "no slow-consumer event");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(sub.dropped(), None, "NATS counts drops per connection");
    // What was kept is the oldest messages, in order.
    for i in 0..8u32 {
        let m = sub.next().await.unwrap();
        assert_eq!(m.payload, Bytes::from(i.to_be_bytes().to_vec()));
    }
}

/// A message published with a `replyTo` to a subject nobody subscribed to brings
/// the server's "no responders" status to the `replyTo` subscriber, flagged as such;
/// an ordinary reply is not flagged.
#[tokio::test]
async fn no_responders_statuses_are_flagged() {
    let test = "kaa-bus nats::no_responders_statuses_are_flagged";
    let Some(url) = NATS.require(test) else {
        return;
    };
    let bus = connect(&url).await;
    let inbox = bus.new_inbox();
    let mut replies = bus.subscribe(&inbox, None).await.unwrap();
    let nobody = unique_subject("nobody");
    bus.publish_message(&nobody, Some(&inbox), Bytes::from_static(b"request"))
        .await
        .unwrap();
    let status = tokio::time::timeout(Duration::from_secs(5), replies.next())
        .await
        .expect("the server answers")
        .expect("subscription open");
    assert!(status.no_responders, "{status:?}");
    assert!(status.payload.is_empty());

    let service = unique_subject("service");
    let mut requests = bus.subscribe(&service, None).await.unwrap();
    bus.flush().await.unwrap();
    bus.publish_message(&service, Some(&inbox), Bytes::from_static(b"request"))
        .await
        .unwrap();
    let request = requests.next().await.unwrap();
    assert!(!request.no_responders);
    bus.publish(
        request.reply_to.as_deref().unwrap(),
        Bytes::from_static(b"reply"),
    )
    .await
    .unwrap();
    let reply = tokio::time::timeout(Duration::from_secs(5), replies.next())
        .await
        .expect("the reply")
        .unwrap();
    assert!(!reply.no_responders);
    assert_eq!(reply.payload, "reply");
}

/// Several server URLs (Kaa's `nats.urls`) and a cluster: when the node a bus is
/// connected to dies (SIGKILL), the bus moves to another node by itself, its
/// subscriptions (plain and queue group) receive again through it without a new
/// subscribe, and request/reply works again, within a few seconds.
#[tokio::test]
async fn a_bus_fails_over_to_another_cluster_node_without_resubscribing() {
    let test = "kaa-bus nats::a_bus_fails_over_to_another_cluster_node_without_resubscribing";
    let Some(mut cluster) = PrivateNatsCluster::start(test) else {
        return;
    };
    let urls = cluster.urls();
    let cluster_config = || {
        NatsConfig::new(urls.clone())
            .with_reconnect_delay_max(Duration::from_millis(200))
            .with_connection_timeout(Duration::from_secs(2))
    };
    let bus = NatsBus::connect_with_auth(&cluster_config(), &NatsAuth::None)
        .await
        .expect("connect");
    let other = NatsBus::connect_with_auth(&cluster_config(), &NatsAuth::None)
        .await
        .expect("connect");
    assert!(bus.wait_connected(Duration::from_secs(5)).await);
    assert!(other.wait_connected(Duration::from_secs(5)).await);

    let events = unique_subject("cluster.events");
    let service = unique_subject("cluster.service");
    let mut plain = bus.subscribe(&events, None).await.unwrap();
    let mut queued = bus
        .subscribe(&format!("{events}.q"), Some("grp"))
        .await
        .unwrap();
    let echo = spawn_echo(
        bus.clone(),
        bus.subscribe(&service, Some("svc")).await.unwrap(),
    );
    bus.flush().await.unwrap();
    publish_until_received(
        &other,
        &mut plain,
        &events,
        "before",
        Duration::from_secs(5),
    )
    .await;
    publish_until_received(
        &other,
        &mut queued,
        &format!("{events}.q"),
        "before",
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(
        request_until_answered(&other, &service, Duration::from_secs(5))
            .await
            .payload,
        "ping"
    );

    // Kill the node the subscribing bus is on.
    let server = bus.client().server_info();
    let node = cluster
        .node_named(&server.server_name)
        .unwrap_or_else(|| panic!("connected to an unknown server {server:?}"));
    eprintln!("the bus is on {}; killing it", server.server_name);
    let killed_at = Instant::now();
    cluster.kill(node);

    // Back on another node within a few seconds, same subscriptions.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now_on = bus.client().server_info().server_name;
        if bus.is_connected() && bus.disconnections() >= 1 && now_on != server.server_name {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no fail-over within 10 s (connected: {}, on {now_on})",
            bus.is_connected()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let within = Duration::from_secs(5);
    publish_until_received(&other, &mut plain, &events, "after", within).await;
    publish_until_received(&other, &mut queued, &format!("{events}.q"), "after", within).await;
    assert_eq!(
        request_until_answered(&other, &service, within)
            .await
            .payload,
        "ping"
    );
    eprintln!(
        "fail-over from {} to {} and traffic again after {:?}",
        server.server_name,
        bus.client().server_info().server_name,
        killed_at.elapsed()
    );

    // The killed node comes back into the cluster.
    cluster.restart(node).expect("restart the node");
    publish_until_received(&other, &mut plain, &events, "rejoined", within).await;
    echo.abort();
}

/// The private cluster runs JetStream: a key-value bucket replicated on the three
/// nodes keeps its data and takes writes while one node is down.
#[tokio::test]
async fn the_private_cluster_runs_replicated_jetstream() {
    let test = "kaa-bus nats::the_private_cluster_runs_replicated_jetstream";
    let Some(mut cluster) = PrivateNatsCluster::start(test) else {
        return;
    };
    assert_eq!(cluster.len(), PrivateNatsCluster::DEFAULT_SIZE);
    // Connect through node 0 only, then kill node 2.
    let client = async_nats::connect(cluster.url(0)).await.expect("connect");
    let js = async_nats::jetstream::new(client);
    // async-nats 0.51's `create_key_value` cannot read the account info of
    // nats-server 2.9 (Debian's): create the bucket's stream as it would, then open
    // the bucket.
    js.create_stream(async_nats::jetstream::stream::Config {
        name: "KV_kaa_test".into(),
        subjects: vec!["$KV.kaa_test.>".into()],
        max_messages_per_subject: 1,
        num_replicas: 3,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        discard: async_nats::jetstream::stream::DiscardPolicy::New,
        ..Default::default()
    })
    .await
    .expect("create a replicated KV stream");
    let kv = js.get_key_value("kaa_test").await.expect("open the bucket");
    kv.put("a", "1".into()).await.expect("put");
    cluster.kill(2);
    // A write while one node of three is down still has a quorum (retried while
    // the stream's leadership moves).
    let deadline = Instant::now() + Duration::from_secs(15);
    while let Err(e) = kv.put("b", "2".into()).await {
        assert!(Instant::now() < deadline, "no write with 2 of 3 nodes: {e}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    cluster.restart(2).expect("restart node 2");
    let direct = async_nats::connect(cluster.url(2))
        .await
        .expect("connect to n2");
    let kv2 = async_nats::jetstream::new(direct)
        .get_key_value("kaa_test")
        .await
        .expect("the bucket");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let a = kv2.get("a").await.ok().flatten();
        let b = kv2.get("b").await.ok().flatten();
        if a.as_deref() == Some(b"1".as_slice()) && b.as_deref() == Some(b"2".as_slice()) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "n2 does not serve the bucket: {a:?} {b:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
