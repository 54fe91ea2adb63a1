//! Helpers shared by the KPC tests: a KPC on an ephemeral port, a fake CMX that
//! answers 4/ESP ClientData with ExtensionData using the codecs, a 9/ELCE
//! listener, an MQTT client (rumqttc) and a raw MQTT client for protocol tests.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use kaa_bus::{Bus, Subscription};
use kaa_elce::{ConnectedEvent, DisconnectedEvent, ElceEvent, EventGroup};
use kaa_esp::{ClientData, ExtensionData};
use kaa_examples::kpc::config::{KpcConfig, TokenEntry};
use kaa_examples::kpc::{KpcHandle, KpcServer};
use kaa_ism::avro::{Decode, Encode};
use kaa_ism::subject::Token;
use rumqttc::mqttbytes::QoS;
use rumqttc::mqttbytes::v4::{Connect, Packet, Publish};
use rumqttc::{AsyncClient, ConnectionError, Event, MqttOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

/// How long tests wait for something that should happen.
pub const WAIT: Duration = Duration::from_secs(5);
/// How long tests wait to be sure something does not happen.
pub const QUIET: Duration = Duration::from_millis(300);

/// The app version of the test devices.
pub const APP: &str = "app-v1";

/// The default test configuration: tokens `tok-1`..`tok-3` → `ep-1`..`ep-3`,
/// `tok-v2` → `ep-v2` only for app version `app-v2`.
pub fn config() -> KpcConfig {
    let mut c = KpcConfig::new("127.0.0.1:0".parse().unwrap());
    for i in 1..=3 {
        c.kpc.endpoint_tokens.insert(
            format!("tok-{i}"),
            TokenEntry::EndpointId(format!("ep-{i}")),
        );
    }
    c.kpc.endpoint_tokens.insert(
        "tok-v2".into(),
        TokenEntry::Detailed {
            endpoint_id: "ep-v2".into(),
            app_version: Some("app-v2".into()),
        },
    );
    c
}

/// Binds a KPC with `config` on `bus` (its MQTT listener on the configured address,
/// normally `127.0.0.1:0`) and runs it in a task.
pub async fn start_kpc(config: &KpcConfig, bus: Arc<dyn Bus>) -> KpcHandle {
    KpcServer::bind(config, bus)
        .await
        .expect("KPC binds")
        .spawn()
}

/// What the fake CMX answers a ClientData with (`None`: nothing).
pub type Behavior = Arc<dyn Fn(&ClientData<'_>) -> Option<ExtensionData<'static>> + Send + Sync>;

/// The default behaviour: `/config/json[/<name>]` requests get
/// `{"configId":"c-<name>","config":{"name":"<name>"}}`; `/config/json/missing`
/// gets 404 "No such configuration"; `/config/json/down` gets 503 without a
/// reason; `/config/json/none` gets "no configuration" (`configId` "");
/// `/config/json/silent` and requests without an ID get nothing.
pub fn default_behavior() -> Behavior {
    Arc::new(|cd: &ClientData<'_>| {
        let request_id = cd.request_id?;
        let name = cd
            .resource_path
            .strip_prefix("/config/json")
            .map(|rest| rest.trim_start_matches('/'))
            .map(|n| if n.is_empty() { "default" } else { n })
            .unwrap_or("other")
            .to_owned();
        let (status, payload, reason): (i32, Option<Vec<u8>>, Option<&str>) = match name.as_str() {
            "missing" => (404, None, Some("No such configuration")),
            "down" => (503, None, None),
            "silent" => return None,
            "none" => (
                200,
                Some(br#"{"configId":"","config":null}"#.to_vec()),
                Some("OK"),
            ),
            _ => (
                200,
                Some(
                    format!(r#"{{"configId":"c-{name}","config":{{"name":"{name}"}}}}"#)
                        .into_bytes(),
                ),
                Some("OK"),
            ),
        };
        Some(answer(cd, request_id, status, payload, reason))
    })
}

/// An ExtensionData answering `cd`.
pub fn answer(
    cd: &ClientData<'_>,
    request_id: i32,
    status_code: i32,
    payload: Option<Vec<u8>>,
    reason: Option<&str>,
) -> ExtensionData<'static> {
    ExtensionData {
        correlation_id: cd.correlation_id.to_string().into(),
        timestamp: cd.timestamp,
        timeout: 0,
        app_version_name: Some(cd.app_version_name.to_string().into()),
        extension_instance_name: Some("cmx".into()),
        endpoint_id: cd.endpoint_id.as_ref().map(|e| e.to_string().into()),
        resource_path: cd.resource_path.to_string().into(),
        request_id: Some(request_id),
        payload: payload.map(Cow::Owned),
        status_code,
        reason_phrase: reason.map(|r| r.to_owned().into()),
    }
}

/// A ClientData the fake CMX received.
#[derive(Debug, Clone)]
pub struct Received {
    /// The subject it arrived on.
    pub subject: String,
    /// Where the answer goes.
    pub reply_to: Option<String>,
    /// The decoded 4/ESP ClientData.
    pub data: ClientData<'static>,
}

/// A fake CMX: subscribes to `kaa.v1.service.<instance>.esp.ClientData`, records
/// every ClientData and answers on its `replyTo` as the behaviour says.
pub struct FakeCmx {
    /// Every ClientData received, in order.
    pub received: mpsc::UnboundedReceiver<Received>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeCmx {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeCmx {
    /// Subscribes as extension instance `instance` and answers as `behavior` says.
    pub async fn start(bus: Arc<dyn Bus>, instance: &str, behavior: Behavior) -> Self {
        let subject = kaa_esp::subject::client_data_subject(instance)
            .unwrap()
            .to_string();
        let mut sub = bus.subscribe(&subject, Some(instance)).await.unwrap();
        bus.flush().await.unwrap();
        let (tx, received) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            while let Some(m) = sub.next().await {
                let cd = ClientData::decode(&m.payload).expect("KPC sends valid ClientData");
                if let (Some(answer), Some(reply_to)) = (behavior(&cd), m.reply_to.as_deref()) {
                    bus.publish(reply_to, Bytes::from(answer.to_vec()))
                        .await
                        .unwrap();
                }
                let _ = tx.send(Received {
                    subject: m.subject.to_string(),
                    reply_to: m.reply_to.as_deref().map(str::to_owned),
                    data: cd.into_owned(),
                });
            }
        });
        FakeCmx { received, task }
    }

    /// The next ClientData (fails the test after [`WAIT`]).
    pub async fn next(&mut self) -> Received {
        tokio::time::timeout(WAIT, self.received.recv())
            .await
            .expect("a ClientData in time")
            .expect("fake CMX running")
    }

    /// Fails the test if a ClientData arrives within `d`.
    pub async fn none_within(&mut self, d: Duration) {
        if let Ok(Some(r)) = tokio::time::timeout(d, self.received.recv()).await {
            panic!("unexpected ClientData: {r:?}");
        }
    }
}

/// A push (requestId null) from "cmx" to the KPC instance-wide subject.
pub async fn push(
    bus: &Arc<dyn Bus>,
    kpc_instance: &str,
    endpoint_id: &str,
    resource_path: &str,
    status_code: i32,
    payload: &[u8],
) {
    let data = ExtensionData {
        correlation_id: "push-1".into(),
        timestamp: 0,
        timeout: 0,
        app_version_name: Some(APP.into()),
        extension_instance_name: Some("cmx".into()),
        endpoint_id: Some(endpoint_id.into()),
        resource_path: resource_path.into(),
        request_id: None,
        payload: Some(payload.into()),
        status_code,
        reason_phrase: None,
    };
    let subject = kaa_esp::subject::extension_data_subject(kpc_instance)
        .unwrap()
        .to_string();
    bus.publish(&subject, Bytes::from(data.to_vec()))
        .await
        .unwrap();
}

/// A connectivity event as the tests compare them: endpoints sorted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Connectivity {
    /// `connected`: (endpoint ID, app version) pairs.
    Connected(Vec<(String, String)>),
    /// `disconnected`: (endpoint ID, app version) pairs.
    Disconnected(Vec<(String, String)>),
}

/// (endpoint ID, app version) pairs, sorted as [`Connectivity`] keeps them.
pub fn eps(list: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = list
        .iter()
        .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
        .collect();
    v.sort();
    v
}

/// Listens to `kaa.v1.events.<originator>.endpoint.connectivity.*`.
pub struct Events {
    sub: Subscription,
}

impl Events {
    /// Subscribes to `originator`'s connectivity events (in effect on the server
    /// before it returns: [`kaa_bus::subscription_barrier`]).
    pub async fn listen(bus: &Arc<dyn Bus>, originator: &str) -> Self {
        let filter = EventGroup::Connectivity
            .filter(Token::Name(originator))
            .unwrap();
        let sub = bus.subscribe(filter.as_str(), None).await.unwrap();
        assert!(
            kaa_bus::subscription_barrier(bus.as_ref(), WAIT)
                .await
                .unwrap(),
            "the events subscription in effect"
        );
        Events { sub }
    }

    /// The next connectivity event (fails the test after [`WAIT`]).
    pub async fn next(&mut self) -> Connectivity {
        let m = tokio::time::timeout(WAIT, self.sub.next())
            .await
            .expect("a connectivity event in time")
            .expect("subscription open");
        let sorted = |e: &kaa_elce::Map<'_, Cow<'_, str>>| {
            let mut v: Vec<(String, String)> = e
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect();
            v.sort();
            v
        };
        match ElceEvent::decode(&m.subject, &m.payload).expect("valid 9/ELCE event") {
            ElceEvent::Connected(ConnectedEvent {
                endpoints,
                originator_replica_id,
                ..
            }) => {
                assert!(!originator_replica_id.is_empty());
                Connectivity::Connected(sorted(&endpoints))
            }
            ElceEvent::Disconnected(DisconnectedEvent { endpoints, .. }) => {
                Connectivity::Disconnected(sorted(&endpoints))
            }
            other => panic!("unexpected event {other:?}"),
        }
    }

    /// Fails the test if an event arrives within `d`.
    pub async fn none_within(&mut self, d: Duration) {
        if let Ok(Some(m)) = tokio::time::timeout(d, self.sub.next()).await {
            panic!("unexpected event on {}", m.subject);
        }
    }
}

/// An MQTT client (rumqttc) whose event loop runs in a task; events go to a channel.
pub struct Client {
    /// The rumqttc client handle (publish, subscribe, disconnect).
    pub client: AsyncClient,
    events: mpsc::UnboundedReceiver<Result<Event, ConnectionError>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Client {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// MQTT options for `addr` with this client ID and a 30 s keep-alive.
pub fn options(addr: SocketAddr, client_id: &str) -> MqttOptions {
    let mut o = MqttOptions::new(client_id, addr.ip().to_string(), addr.port());
    o.set_keep_alive(Duration::from_secs(30));
    o
}

impl Client {
    /// Connects and waits for a successful CONNACK.
    pub async fn connect(addr: SocketAddr, client_id: &str) -> Self {
        Self::connect_with(options(addr, client_id)).await
    }

    /// Connects with these options and waits for a successful CONNACK.
    pub async fn connect_with(options: MqttOptions) -> Self {
        let mut c = Self::start(options);
        match c.next_event().await {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                assert_eq!(ack.code, rumqttc::ConnectReturnCode::Success);
            }
            other => panic!("expected CONNACK, got {other:?}"),
        }
        c
    }

    /// Starts the event loop without waiting.
    pub fn start(options: MqttOptions) -> Self {
        let (client, mut eventloop) = AsyncClient::new(options, 64);
        let (tx, events) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            loop {
                let e = eventloop.poll().await;
                let stop = e.is_err();
                if tx.send(e).is_err() || stop {
                    break;
                }
            }
        });
        Client {
            client,
            events,
            task,
        }
    }

    /// The next event, outgoing ones skipped.
    pub async fn next_event(&mut self) -> Result<Event, ConnectionError> {
        loop {
            let e = tokio::time::timeout(WAIT, self.events.recv())
                .await
                .expect("an MQTT event in time")
                .expect("event loop running");
            if !matches!(e, Ok(Event::Outgoing(_))) {
                return e;
            }
        }
    }

    /// Queues a PUBLISH on the client (not retained); the event loop sends it.
    pub async fn publish(&self, topic: &str, qos: QoS, payload: &[u8]) {
        self.client
            .publish(topic, qos, false, payload.to_vec())
            .await
            .unwrap();
    }

    /// The next PUBLISH received (PINGRESP, PUBACK and the like skipped).
    pub async fn recv(&mut self) -> Publish {
        loop {
            match self.next_event().await {
                Ok(Event::Incoming(Packet::Publish(p))) => return p,
                Ok(_) => {}
                Err(e) => panic!("connection failed: {e}"),
            }
        }
    }

    /// Waits for a PUBACK.
    pub async fn puback(&mut self) -> u16 {
        loop {
            match self.next_event().await {
                Ok(Event::Incoming(Packet::PubAck(a))) => return a.pkid,
                Ok(Event::Incoming(Packet::Publish(p))) => panic!("PUBLISH before PUBACK: {p:?}"),
                Ok(_) => {}
                Err(e) => panic!("connection failed: {e}"),
            }
        }
    }

    /// Asserts no PUBLISH arrives for `d`.
    pub async fn no_publish_within(&mut self, d: Duration) {
        let deadline = tokio::time::Instant::now() + d;
        loop {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Err(_) => return,
                Ok(Some(Ok(Event::Incoming(Packet::Publish(p))))) => {
                    panic!("unexpected PUBLISH {p:?}")
                }
                Ok(Some(_)) => {}
                Ok(None) => return,
            }
        }
    }

    /// Waits until the event loop reports an error (the connection ended).
    pub async fn closed(&mut self) -> ConnectionError {
        loop {
            if let Err(e) = self.next_event().await {
                return e;
            }
        }
    }

    /// Sends DISCONNECT and waits (up to 2 s) for the connection to close.
    pub async fn disconnect(self) {
        self.client.disconnect().await.unwrap();
        // Let the event loop send it.
        let mut me = self;
        let _ = tokio::time::timeout(Duration::from_secs(2), me.closed()).await;
    }
}

/// A raw MQTT connection, for protocol tests.
pub struct Raw {
    /// The TCP connection.
    pub stream: TcpStream,
    buf: BytesMut,
}

impl Raw {
    /// Opens a TCP connection (no MQTT packet sent).
    pub async fn connect(addr: SocketAddr) -> Self {
        Raw {
            stream: TcpStream::connect(addr).await.unwrap(),
            buf: BytesMut::new(),
        }
    }

    /// Connects and sends CONNECT with this keep-alive, expecting CONNACK 0.
    pub async fn connected(addr: SocketAddr, client_id: &str, keep_alive: u16) -> Self {
        let mut raw = Self::connect(addr).await;
        let mut c = Connect::new(client_id);
        c.keep_alive = keep_alive;
        raw.send(&Packet::Connect(c)).await;
        match raw.read().await {
            Some(Packet::ConnAck(ack)) => assert_eq!(ack.code, rumqttc::ConnectReturnCode::Success),
            other => panic!("expected CONNACK, got {other:?}"),
        }
        raw
    }

    /// Writes `packet`.
    pub async fn send(&mut self, packet: &Packet) {
        let mut b = BytesMut::new();
        packet.write(&mut b, usize::MAX).unwrap();
        self.send_bytes(&b).await;
    }

    /// Writes raw bytes (a write to a closed connection is ignored; reads tell).
    pub async fn send_bytes(&mut self, bytes: &[u8]) {
        // The server may have closed already; the test checks that on read.
        let _ = self.stream.write_all(bytes).await;
    }

    /// The next packet, or `None` once the server closed the connection.
    pub async fn read(&mut self) -> Option<Packet> {
        tokio::time::timeout(WAIT, async {
            loop {
                match Packet::read(&mut self.buf, 1 << 20) {
                    Ok(p) => return Some(p),
                    Err(rumqttc::mqttbytes::Error::InsufficientBytes(_)) => {}
                    Err(e) => panic!("server sent a malformed packet: {e}"),
                }
                match self.stream.read_buf(&mut self.buf).await {
                    Ok(0) | Err(_) => return None,
                    Ok(_) => {}
                }
            }
        })
        .await
        .expect("a packet or EOF in time")
    }

    /// Asserts the server closes the connection (packets before the close are
    /// returned).
    pub async fn expect_closed(&mut self) -> Vec<Packet> {
        let mut before = Vec::new();
        while let Some(p) = self.read().await {
            before.push(p);
        }
        before
    }

    /// Writes a PUBLISH with this packet ID.
    pub async fn publish(&mut self, topic: &str, qos: QoS, pkid: u16, payload: &[u8]) {
        let mut p = Publish::new(topic, qos, payload.to_vec());
        p.pkid = pkid;
        self.send(&Packet::Publish(p)).await;
    }
}

/// A request topic of the test app version and the `cmx` extension.
pub fn topic(token: &str, rest: &str) -> String {
    format!("kp1/{APP}/cmx/{token}/{rest}")
}
