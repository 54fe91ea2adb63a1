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
    test_support::{NATS, PrivateNatsServer, conformance::unique_subject},
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
