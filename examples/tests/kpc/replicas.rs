//! Two replicas of one KPC instance on the machine's NATS (`KAA_TEST_NATS_URL`),
//! each on a NATS connection of its own, with real MQTT clients: ExtensionData a
//! scripted extension sends to the instance-wide subject (which NATS hands to
//! either replica) reaches the session that holds the endpoint exactly once,
//! responses too; a device that reconnects to the other replica gets pushes there
//! only; a handed-over message nobody holds is counted undeliverable and not
//! forwarded again. (1) and (3) also run with the replicas on two nodes of a
//! private 3-node NATS cluster, and on one in-memory bus. Instance names are
//! unique per run. The NATS ones are skipped visibly (`SKIPPED: …`) when NATS (or
//! `nats-server`, for the cluster) is not available, failed instead under
//! `KAA_REQUIRE_SERVICES=1`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use kaa_bus::test_support::NATS;
use kaa_bus::{Bus, MemoryBus, NatsBus, NatsConfig};
use kaa_esp::{ClientData, ExtensionData};
use kaa_examples::kpc::KpcHandle;
use kaa_examples::kpc::config::InstanceSection;
use kaa_ism::avro::{Decode, Encode};
use kaa_testkit::kpc::*;
use rumqttc::mqttbytes::QoS;

/// How many pushes or requests each test sends: enough that NATS's queue group
/// hands some to the replica without the session (2^-40 that it never does).
const MANY: usize = 40;

async fn connect(url: &str) -> Arc<dyn Bus> {
    Arc::new(
        NatsBus::connect(&NatsConfig::new([url.to_owned()]))
            .await
            .expect("NATS connects"),
    )
}

/// Where a [`Pair`] runs.
#[derive(Clone, Copy)]
enum Net<'a> {
    /// NATS: each replica on a connection of its own, to `urls[i % len]`; the
    /// test's bus to `urls[0]`.
    Nats(&'a [String]),
    /// One in-memory bus for both replicas and the test.
    Memory,
}

/// Two replicas (`<kpc>-a`, `<kpc>-b`) of KPC instance `kpc` and a bus for the
/// test.
struct Pair {
    bus: Arc<dyn Bus>,
    kpc: String,
    /// A unique extension instance name nobody serves (requests still claim).
    ext: String,
    a: KpcHandle,
    b: KpcHandle,
}

impl Pair {
    async fn start(urls: &[String]) -> Pair {
        Self::start_on(Net::Nats(urls)).await
    }

    async fn start_on(net: Net<'_>) -> Pair {
        let memory: Arc<dyn Bus> = Arc::new(MemoryBus::new());
        let bus_for = |i: usize| {
            let memory = Arc::clone(&memory);
            async move {
                match net {
                    Net::Nats(urls) => connect(&urls[i % urls.len()]).await,
                    Net::Memory => memory,
                }
            }
        };
        let bus = bus_for(0).await;
        let id = uuid::Uuid::new_v4().simple().to_string();
        let kpc = format!("kpc-{}", &id[..12]);
        let ext = format!("ext-{}", &id[..12]);
        let replica = |r: &str| {
            let mut cfg = config();
            cfg.service.instance =
                InstanceSection::new(kpc.clone()).with_replica(format!("{kpc}-{r}"));
            cfg
        };
        let a = start_kpc(&replica("a"), bus_for(0).await).await;
        let b = start_kpc(&replica("b"), bus_for(1).await).await;
        if matches!(net, Net::Nats(urls) if urls.len() > 1) {
            // Each replica's subscriptions are confirmed by its own node; give the
            // routes a moment to carry them to the others.
            tokio::time::sleep(QUIET).await;
        }
        Pair {
            bus,
            kpc,
            ext,
            a,
            b,
        }
    }

    /// The instance-wide ExtensionData subject.
    fn instance_subject(&self) -> String {
        kaa_esp::subject::extension_data_subject(&self.kpc)
            .unwrap()
            .to_string()
    }

    /// Makes the session of `dev` the owner of `tok-1`'s endpoint (a request
    /// without ID to an extension nobody serves: claimed, then dropped by NATS).
    async fn claim(&self, dev: &Client) {
        dev.publish(
            &format!("kp1/{APP}/{}/tok-1/config/json", self.ext),
            QoS::AtMostOnce,
            b"{}",
        )
        .await;
    }

    /// `n` pushes for `ep-1` on `subject`, payloads `{"n":<i>}`.
    async fn pushes(&self, subject: &str, n: usize) {
        for i in 0..n {
            let data = ExtensionData {
                correlation_id: format!("push-{i}").into(),
                app_version_name: Some(APP.into()),
                extension_instance_name: Some("cmx".into()),
                endpoint_id: Some("ep-1".into()),
                resource_path: "/config/json".into(),
                payload: Some(format!(r#"{{"n":{i}}}"#).into_bytes().into()),
                status_code: 200,
                ..Default::default()
            };
            self.bus
                .publish(subject, Bytes::from(data.to_vec()))
                .await
                .unwrap();
        }
        self.bus.flush().await.unwrap();
    }

    async fn shutdown(self) {
        self.a.shutdown().await.unwrap();
        self.b.shutdown().await.unwrap();
    }
}

/// The payloads of `n` PUBLISHes `dev` receives on `topic`, sorted.
async fn receive(dev: &mut Client, topic: &str, n: usize) -> Vec<String> {
    let mut got = Vec::with_capacity(n);
    for _ in 0..n {
        let p = dev.recv().await;
        assert_eq!(p.topic, topic);
        got.push(String::from_utf8(p.payload.to_vec()).unwrap());
    }
    got.sort();
    got
}

fn expected(n: usize) -> Vec<String> {
    let mut v: Vec<String> = (0..n).map(|i| format!(r#"{{"n":{i}}}"#)).collect();
    v.sort();
    v
}

/// Polls `f` until it holds (fails the test after [`WAIT`]).
async fn until(what: &str, f: impl Fn() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

const PUSH_TOPIC: &str = "kp1/app-v1/cmx/tok-1/config/json/status";

/// (1) Pushes to the instance-wide subject reach the device on replica A exactly
/// once, whichever replica NATS hands each to.
async fn pushes_reach_the_holding_replica(net: Net<'_>) {
    let pair = Pair::start_on(net).await;
    let mut events = Events::listen(&pair.bus, &pair.kpc).await;
    let mut dev = Client::connect(pair.a.local_addr(), "dev").await;
    pair.claim(&dev).await;
    assert_eq!(
        events.next().await,
        Connectivity::Connected(eps(&[("ep-1", APP)]))
    );
    pair.pushes(&pair.instance_subject(), MANY).await;
    assert_eq!(receive(&mut dev, PUSH_TOPIC, MANY).await, expected(MANY));
    dev.no_publish_within(QUIET).await;
    // Some went to B and were handed over; every one was taken.
    let handed = pair.b.metrics().handover_count("taken");
    assert!(handed > 0, "NATS gave B none of {MANY} pushes");
    assert_eq!(pair.a.metrics().handover_received_count("taken"), handed);
    assert_eq!(pair.a.metrics().handover_count("undeliverable"), 0);
    assert_eq!(pair.b.metrics().handover_count("undeliverable"), 0);
    dev.disconnect().await;
    pair.shutdown().await;
}

#[tokio::test]
async fn pushes_to_the_instance_reach_the_replica_holding_the_session() {
    let Some(url) = NATS.require("kpc::replicas::pushes_to_the_instance_reach_the_replica") else {
        return;
    };
    pushes_reach_the_holding_replica(Net::Nats(&[url])).await;
}

/// (2) Responses an extension without session affinity sends to the
/// instance-wide subject reach the device, on either replica.
#[tokio::test]
async fn responses_to_the_instance_reach_the_device_on_either_replica() {
    let Some(url) =
        NATS.require("kpc::replicas::responses_to_the_instance_reach_the_device_on_either_replica")
    else {
        return;
    };
    let pair = Pair::start(&[url]).await;
    // The extension answers on the instance-wide subject, ignoring replyTo.
    let client_data = kaa_esp::subject::client_data_subject(&pair.ext)
        .unwrap()
        .to_string();
    let mut requests = pair
        .bus
        .subscribe(&client_data, Some(&pair.ext))
        .await
        .unwrap();
    let extension = {
        let bus = Arc::clone(&pair.bus);
        let subject = pair.instance_subject();
        let ext = pair.ext.clone();
        tokio::spawn(async move {
            while let Some(m) = requests.next().await {
                let cd = ClientData::decode(&m.payload).unwrap();
                let Some(id) = cd.request_id else { continue };
                let payload = format!(r#"{{"id":{id}}}"#).into_bytes();
                let mut data = answer(&cd, id, 200, Some(payload), Some("OK"));
                data.extension_instance_name = Some(ext.clone().into());
                bus.publish(&subject, Bytes::from(data.to_vec()))
                    .await
                    .unwrap();
            }
        })
    };
    kaa_testkit::cmx::barrier(pair.bus.as_ref()).await;
    for (kpc, name) in [(&pair.a, "dev-a"), (&pair.b, "dev-b")] {
        let mut dev = Client::connect(kpc.local_addr(), name).await;
        let token = if name == "dev-a" { "tok-1" } else { "tok-2" };
        let base = format!("kp1/{APP}/{}/{token}/config/json", pair.ext);
        for i in 1..=MANY {
            dev.publish(&format!("{base}/{i}"), QoS::AtMostOnce, b"{}")
                .await;
        }
        let mut got = Vec::new();
        for _ in 0..MANY {
            let p = dev.recv().await;
            got.push((p.topic, String::from_utf8(p.payload.to_vec()).unwrap()));
        }
        got.sort();
        let mut want: Vec<(String, String)> = (1..=MANY)
            .map(|i| (format!("{base}/{i}/status"), format!(r#"{{"id":{i}}}"#)))
            .collect();
        want.sort();
        assert_eq!(got, want, "{name}");
        dev.no_publish_within(QUIET).await;
        dev.disconnect().await;
    }
    assert!(pair.a.metrics().handover_count("taken") > 0);
    assert!(pair.b.metrics().handover_count("taken") > 0);
    extension.abort();
    pair.shutdown().await;
}

/// (3) The device reconnects to replica B while its old connection on A stays
/// open: pushes (to the instance, and to A's replica subject, which an extension
/// with stale affinity uses) go to the new session only; A publishes no
/// `disconnected` for the endpoint when the old connection ends.
async fn a_moved_device_gets_pushes_on_its_new_replica_only(net: Net<'_>) {
    let pair = Pair::start_on(net).await;
    let mut events = Events::listen(&pair.bus, &pair.kpc).await;
    let mut old = Client::connect(pair.a.local_addr(), "dev-old").await;
    pair.claim(&old).await;
    assert_eq!(
        events.next().await,
        Connectivity::Connected(eps(&[("ep-1", APP)]))
    );
    let mut new = Client::connect(pair.b.local_addr(), "dev-new").await;
    pair.claim(&new).await;
    assert_eq!(
        events.next().await,
        Connectivity::Connected(eps(&[("ep-1", APP)]))
    );
    let a = pair.a.metrics();
    until("A to drop ep-1", || a.endpoints_moved_count() == 1).await;
    assert_eq!(pair.b.metrics().endpoints_moved_count(), 0);

    pair.pushes(&pair.instance_subject(), MANY).await;
    assert_eq!(receive(&mut new, PUSH_TOPIC, MANY).await, expected(MANY));
    let a_replica = kaa_esp::subject::extension_data_replica_subject(&format!("{}-a", pair.kpc))
        .unwrap()
        .to_string();
    pair.pushes(&a_replica, 3).await;
    assert_eq!(receive(&mut new, PUSH_TOPIC, 3).await, expected(3));
    new.no_publish_within(QUIET).await;
    old.no_publish_within(Duration::ZERO).await;

    // The old connection ends: the endpoint is not its to release.
    old.disconnect().await;
    events.none_within(QUIET).await;
    new.disconnect().await;
    assert_eq!(
        events.next().await,
        Connectivity::Disconnected(eps(&[("ep-1", APP)]))
    );
    pair.shutdown().await;
}

#[tokio::test]
async fn a_device_that_moves_to_another_replica_gets_pushes_there_only() {
    let Some(url) = NATS.require("kpc::replicas::a_device_that_moves_to_another_replica") else {
        return;
    };
    a_moved_device_gets_pushes_on_its_new_replica_only(Net::Nats(&[url])).await;
}

/// An old session that uses its token again takes the endpoint back from the
/// other replica, as on one replica.
#[tokio::test]
async fn an_old_session_that_uses_its_token_again_takes_the_endpoint_back() {
    let Some(url) = NATS.require("kpc::replicas::an_old_session_that_uses_its_token_again") else {
        return;
    };
    let pair = Pair::start(&[url]).await;
    let mut events = Events::listen(&pair.bus, &pair.kpc).await;
    let mut old = Client::connect(pair.a.local_addr(), "dev-old").await;
    pair.claim(&old).await;
    events.next().await;
    let mut new = Client::connect(pair.b.local_addr(), "dev-new").await;
    pair.claim(&new).await;
    events.next().await;
    let (a, b) = (pair.a.metrics(), pair.b.metrics());
    until("A to drop ep-1", || a.endpoints_moved_count() == 1).await;
    pair.claim(&old).await;
    assert_eq!(
        events.next().await,
        Connectivity::Connected(eps(&[("ep-1", APP)]))
    );
    until("B to drop ep-1", || b.endpoints_moved_count() == 1).await;
    pair.pushes(&pair.instance_subject(), 10).await;
    assert_eq!(receive(&mut old, PUSH_TOPIC, 10).await, expected(10));
    new.no_publish_within(QUIET).await;
    old.disconnect().await;
    new.disconnect().await;
    pair.shutdown().await;
}

/// (4) A push for an endpoint no replica holds is handed over once, counted
/// undeliverable once, and never handed over again.
#[tokio::test]
async fn a_handover_nobody_takes_is_undeliverable_and_not_forwarded_again() {
    let Some(url) = NATS.require("kpc::replicas::a_handover_nobody_takes_is_undeliverable") else {
        return;
    };
    let pair = Pair::start(&[url]).await;
    let mut handovers = pair
        .bus
        .subscribe(&kaa_examples::kpc::handover_subject(&pair.kpc), None)
        .await
        .unwrap();
    kaa_testkit::cmx::barrier(pair.bus.as_ref()).await;
    pair.pushes(&pair.instance_subject(), 1).await;
    let (a, b) = (pair.a.metrics(), pair.b.metrics());
    until("the push to be counted undeliverable", || {
        a.handover_count("undeliverable") + b.handover_count("undeliverable") == 1
    })
    .await;
    // Handed over once; both replicas saw it, neither had a session, neither
    // forwarded it again.
    let first = tokio::time::timeout(WAIT, handovers.next()).await;
    assert!(matches!(first, Ok(Some(_))), "one handover on the bus");
    tokio::time::sleep(QUIET).await;
    let again = tokio::time::timeout(Duration::ZERO, handovers.next()).await;
    assert!(again.is_err(), "handed over again: {again:?}");
    assert_eq!(
        a.handover_received_count("no_session") + b.handover_received_count("no_session"),
        2
    );
    assert_eq!(
        a.extension_data_count("no_session") + b.extension_data_count("no_session"),
        1
    );
    for m in [&a, &b] {
        assert_eq!(m.handover_count("taken"), 0);
        assert_eq!(m.handover_received_count("taken"), 0);
    }
    pair.shutdown().await;
}

/// (1) on a private 3-node NATS cluster, the replicas on different nodes.
#[tokio::test]
async fn on_a_cluster_pushes_reach_the_replica_holding_the_session() {
    let Some(cluster) =
        kaa_bus::test_support::PrivateNatsCluster::start("kpc::replicas::on_a_cluster_pushes")
    else {
        return;
    };
    pushes_reach_the_holding_replica(Net::Nats(&cluster.urls()[..2])).await;
}

/// (3) on a private 3-node NATS cluster, the replicas on different nodes.
#[tokio::test]
async fn on_a_cluster_a_moved_device_gets_pushes_on_its_new_replica_only() {
    let Some(cluster) =
        kaa_bus::test_support::PrivateNatsCluster::start("kpc::replicas::on_a_cluster_a_moved")
    else {
        return;
    };
    a_moved_device_gets_pushes_on_its_new_replica_only(Net::Nats(&cluster.urls()[..2])).await;
}

/// (1) on one in-memory bus (no live service needed).
#[tokio::test]
async fn in_memory_pushes_reach_the_replica_holding_the_session() {
    pushes_reach_the_holding_replica(Net::Memory).await;
}

/// (3) on one in-memory bus (no live service needed).
#[tokio::test]
async fn in_memory_a_moved_device_gets_pushes_on_its_new_replica_only() {
    a_moved_device_gets_pushes_on_its_new_replica_only(Net::Memory).await;
}

/// The old replica's session ended before it learned of the new one, so its
/// `disconnected` lists the endpoint (a scripted one here): the replica holding
/// the endpoint publishes `connected` for it again, so that an extension that got
/// the `disconnected` last does not take the device for offline.
async fn a_stale_disconnected_is_answered_with_connected_again(net: Net<'_>) {
    let pair = Pair::start_on(net).await;
    let mut events = Events::listen(&pair.bus, &pair.kpc).await;
    let mut dev = Client::connect(pair.b.local_addr(), "dev").await;
    pair.claim(&dev).await;
    assert_eq!(
        events.next().await,
        Connectivity::Connected(eps(&[("ep-1", APP)]))
    );
    let stale = kaa_elce::DisconnectedEvent {
        correlation_id: "stale".into(),
        timestamp: 1,
        timeout: 0,
        endpoints: [("ep-1".into(), APP.into())].into_iter().collect(),
        originator_replica_id: format!("{}-a", pair.kpc).into(),
    };
    let subject = <kaa_elce::DisconnectedEvent as kaa_elce::EndpointEvent>::subject(&pair.kpc)
        .unwrap()
        .to_string();
    pair.bus
        .publish(&subject, Bytes::from(stale.to_vec()))
        .await
        .unwrap();
    assert_eq!(
        events.next().await,
        Connectivity::Disconnected(eps(&[("ep-1", APP)]))
    );
    assert_eq!(
        events.next().await,
        Connectivity::Connected(eps(&[("ep-1", APP)]))
    );
    events.none_within(QUIET).await;
    assert_eq!(pair.b.metrics().endpoints_reannounced_count(), 1);
    assert_eq!(pair.a.metrics().endpoints_reannounced_count(), 0);
    // B still delivers.
    pair.pushes(&pair.instance_subject(), 5).await;
    assert_eq!(receive(&mut dev, PUSH_TOPIC, 5).await, expected(5));
    dev.disconnect().await;
    pair.shutdown().await;
}

#[tokio::test]
async fn a_stale_disconnected_from_another_replica_is_answered_with_connected_again() {
    let Some(url) = NATS.require("kpc::replicas::a_stale_disconnected_from_another_replica") else {
        return;
    };
    a_stale_disconnected_is_answered_with_connected_again(Net::Nats(&[url])).await;
}

/// The same on one in-memory bus.
#[tokio::test]
async fn in_memory_a_stale_disconnected_is_answered_with_connected_again() {
    a_stale_disconnected_is_answered_with_connected_again(Net::Memory).await;
}
