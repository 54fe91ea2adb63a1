//! The kit's KPC mode against our own KPC (`kaa-kpc`, `accept-any-token`), in
//! this process with its MQTT listener on an ephemeral port: on the in-memory bus
//! (always; anonymous, and with MQTT credentials required), and on the machine's
//! NATS (skipped visibly when NATS is not reachable, mandatory with
//! `KAA_REQUIRE_SERVICES=1`). And against our KPC behind a bus that loses some of
//! what it publishes, behind an MQTT proxy that breaks QoS (a lost PUBCOMP, a
//! retransmission forwarded again, answers downgraded to QoS 0, QoS 2 answers
//! without PUBREL), given wrong credentials or none, or taking any password while
//! the kit was told it requires one: the kit must name the cases that catch it.
//! Through a proxy that answers QoS 2 requests at QoS 2 (what 1/KP recommends and
//! our KPC does not do), every case passes.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use kaa_bus::test_support::NATS;
use kaa_bus::{Bus, BusError, Message, Subscription};
use kaa_conformance::cmx::SuiteOptions;
use kaa_conformance::kpc::{CASES, KpcTarget, run_kpc_suite};
use kaa_conformance::{Outcome, Report};
use kaa_kpc::KpcServer;
use kaa_kpc::config::{KpcConfig, MqttAuthSection, MqttUser};
use kaa_service::Secret;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn options() -> SuiteOptions {
    SuiteOptions {
        wait: Duration::from_secs(5),
        quiet: Duration::from_millis(300),
        ..SuiteOptions::default()
    }
}

/// MQTT credentials: what our KPC requires, and what the kit is given.
#[derive(Debug, Clone, Copy, Default)]
struct Credentials {
    /// Our KPC requires this username and password (`kpc.mqtt.auth`); `None`:
    /// anonymous devices are accepted.
    kpc: Option<(&'static str, &'static str)>,
    /// The kit connects with these (`--username`, `--password`).
    kit: Option<(&'static str, &'static str)>,
}

const DEVICES: (&str, &str) = ("devices", "s3cret-kpc");

/// Our KPC requires credentials and the kit has the right ones.
const RIGHT: Credentials = Credentials {
    kpc: Some(DEVICES),
    kit: Some(DEVICES),
};

/// Runs the suite against our KPC, which publishes through `kpc_bus` (the kit
/// uses `kit_bus`, the same bus or what it wraps).
async fn run_against_our_kpc(
    kit_bus: Arc<dyn Bus>,
    kpc_bus: Arc<dyn Bus>,
    tag: &str,
    options: &SuiteOptions,
    credentials: Credentials,
) -> Report {
    run_through(kit_bus, kpc_bus, tag, options, credentials, None).await
}

/// [`run_against_our_kpc`], the kit's devices reaching our KPC through a proxy
/// with `flaw` when there is one.
async fn run_through(
    kit_bus: Arc<dyn Bus>,
    kpc_bus: Arc<dyn Bus>,
    tag: &str,
    options: &SuiteOptions,
    credentials: Credentials,
    flaw: Option<MqttFlaw>,
) -> Report {
    let instance = format!("kpc-{tag}");
    let mut config = KpcConfig::new("127.0.0.1:0".parse().unwrap());
    config.service.instance.name = instance.clone();
    config.kpc.accept_any_token = true;
    if let Some((username, password)) = credentials.kpc {
        config.kpc.mqtt.auth = Some(MqttAuthSection {
            enabled: true,
            users: vec![MqttUser {
                username: username.into(),
                password: Secret::Value(password.into()),
            }],
        });
    }
    let kpc = KpcServer::bind(&config, kpc_bus)
        .await
        .expect("bind KPC")
        .spawn();
    let mqtt = match flaw {
        Some(flaw) => flawed_proxy(kpc.local_addr(), flaw).await.to_string(),
        None => kpc.local_addr().to_string(),
    };
    let mut target = KpcTarget::new(&instance, mqtt, format!("cmx-{tag}"));
    if let Some((username, password)) = credentials.kit {
        target = target.with_credentials(username, password);
    }
    let report = run_kpc_suite(kit_bus, &target, options, |_| {})
        .await
        .expect("suite");
    let _ = kpc.shutdown().await;
    report
}

fn assert_all_passed(report: &Report) {
    println!("{}", report.to_table());
    assert_eq!(report.results.len(), CASES.len());
    assert_eq!(
        report.passed(),
        CASES.len(),
        "every case, extensions too:\n{}",
        report.to_table()
    );
    assert!(report.conformant());
}

/// Every case passed but `KP-AUTH-1`, skipped: the kit was given no
/// credentials.
fn assert_all_passed_anonymously(report: &Report) {
    println!("{}", report.to_table());
    assert_eq!(report.results.len(), CASES.len());
    for r in &report.results {
        match (&r.outcome, r.case.id) {
            (Outcome::Skipped(why), "KP-AUTH-1") => {
                assert!(why.contains("no credentials given"), "{why}");
            }
            (Outcome::Passed, id) if id != "KP-AUTH-1" => {}
            (other, id) => panic!("{id}: {other:?}\n{}", report.to_table()),
        }
    }
    assert!(report.conformant());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_kpc_passes_every_case_on_the_memory_bus() {
    let bus: Arc<dyn Bus> = Arc::new(kaa_bus::MemoryBus::new());
    let tag = format!("mem{}", std::process::id());
    let report = run_against_our_kpc(
        Arc::clone(&bus),
        bus,
        &tag,
        &options(),
        Credentials::default(),
    )
    .await;
    assert_all_passed_anonymously(&report);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_kpc_with_credentials_passes_every_case_on_the_memory_bus() {
    let bus: Arc<dyn Bus> = Arc::new(kaa_bus::MemoryBus::new());
    let tag = format!("memauth{}", std::process::id());
    let report = run_against_our_kpc(Arc::clone(&bus), bus, &tag, &options(), RIGHT).await;
    assert_all_passed(&report);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_wrong_password_every_case_fails_saying_the_kpc_refused() {
    let bus: Arc<dyn Bus> = Arc::new(kaa_bus::MemoryBus::new());
    let tag = format!("memwrong{}", std::process::id());
    let credentials = Credentials {
        kpc: Some(DEVICES),
        kit: Some(("devices", "not-it")),
    };
    let report = run_against_our_kpc(Arc::clone(&bus), bus, &tag, &options(), credentials).await;
    println!("{}", report.to_table());
    assert!(!report.conformant());
    for r in &report.results {
        match &r.outcome {
            Outcome::Failed(why) => assert!(
                why.contains(
                    "refused the connection: CONNACK return code 4 (bad user name or password)"
                ),
                "{}: {why}",
                r.case.id
            ),
            other => panic!("{}: {other:?} with a wrong password", r.case.id),
        }
    }
    let auth = report
        .results
        .iter()
        .find(|r| r.case.id == "KP-AUTH-1")
        .expect("KP-AUTH-1");
    assert!(
        matches!(&auth.outcome, Outcome::Failed(why) if why.starts_with("the given credentials")),
        "{:?}",
        auth.outcome
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_credentials_every_case_fails_saying_the_kpc_wants_them() {
    let bus: Arc<dyn Bus> = Arc::new(kaa_bus::MemoryBus::new());
    let tag = format!("memanon{}", std::process::id());
    let credentials = Credentials {
        kpc: Some(DEVICES),
        kit: None,
    };
    let report = run_against_our_kpc(Arc::clone(&bus), bus, &tag, &options(), credentials).await;
    println!("{}", report.to_table());
    assert!(!report.conformant());
    for r in &report.results {
        match (&r.outcome, r.case.id) {
            (Outcome::Skipped(_), "KP-AUTH-1") => {}
            (Outcome::Failed(why), _) => assert!(
                why.contains("CONNACK return code 5 (not authorized)")
                    && why.contains("give them with --username and --password"),
                "{}: {why}",
                r.case.id
            ),
            (other, id) => panic!("{id}: {other:?} without credentials"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kpc_that_takes_any_password_is_caught() {
    // The kit is told the KPC requires credentials; ours is left anonymous.
    let bus: Arc<dyn Bus> = Arc::new(kaa_bus::MemoryBus::new());
    let tag = format!("memopen{}", std::process::id());
    let credentials = Credentials {
        kpc: None,
        kit: Some(DEVICES),
    };
    let options = SuiteOptions {
        wait: Duration::from_secs(1),
        ..options()
    };
    let report = run_against_our_kpc(Arc::clone(&bus), bus, &tag, &options, credentials).await;
    println!("{}", report.to_table());
    let failed: BTreeSet<&str> = report
        .results
        .iter()
        .filter(|r| matches!(r.outcome, Outcome::Failed(_)))
        .map(|r| r.case.id)
        .collect();
    assert_eq!(failed, BTreeSet::from(["KP-AUTH-1"]));
    let auth = &report.results[0];
    assert!(
        matches!(&auth.outcome, Outcome::Failed(why)
            if why.contains("a wrong password: CONNACK return code 0 (connection accepted)")),
        "{:?}",
        auth.outcome
    );
    assert!(!report.conformant());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_kpc_passes_every_case_on_nats() {
    let Some(url) = NATS.require("kaa-conformance our_kpc_passes_every_case_on_nats") else {
        return;
    };
    let config = kaa_bus::NatsConfig::new([url.as_str()]).with_retry_on_initial_connect(false);
    let kit: Arc<dyn Bus> = Arc::new(kaa_bus::NatsBus::connect(&config).await.expect("NATS"));
    let kpc: Arc<dyn Bus> = Arc::new(kaa_bus::NatsBus::connect(&config).await.expect("NATS"));
    let tag = format!("nats{}", std::process::id());
    let report = run_against_our_kpc(kit, kpc, &tag, &options(), RIGHT).await;
    assert_all_passed(&report);
}

#[tokio::test]
async fn with_no_kpc_the_cases_fail_with_a_reason() {
    let bus: Arc<dyn Bus> = Arc::new(kaa_bus::MemoryBus::new());
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let target = KpcTarget::new("kpc-absent", format!("127.0.0.1:{port}"), "cmx-absent");
    let options = SuiteOptions {
        wait: Duration::from_millis(100),
        quiet: Duration::from_millis(10),
        ..SuiteOptions::default()
    };
    let report = run_kpc_suite(bus, &target, &options, |_| {})
        .await
        .expect("suite");
    assert!(!report.conformant());
    for r in &report.results {
        match (&r.outcome, r.case.id) {
            (Outcome::Failed(why), _) => assert!(why.contains("MQTT connect"), "{why}"),
            // No credentials given: the one case that needs them does not run.
            (Outcome::Skipped(_), "KP-AUTH-1") => {}
            (other, id) => panic!("{id}: {other:?} with no KPC"),
        }
    }
}

// ---------------------------------------------------------------------------
// Our KPC behind a bus that gets something wrong.

/// What the bus under our KPC loses or changes of what the KPC publishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flaw {
    /// `disconnected` events are lost.
    DropsDisconnected,
    /// `connected` events are lost.
    DropsConnected,
    /// ClientData reaches the extension with the request ID left in its
    /// resource path (`/config/json/7`).
    RequestIdInResourcePath,
}

#[derive(Debug)]
struct FlawedBus {
    inner: Arc<dyn Bus>,
    flaw: Flaw,
}

#[async_trait::async_trait]
impl Bus for FlawedBus {
    async fn publish_message(
        &self,
        subject: &str,
        reply_to: Option<&str>,
        payload: Bytes,
    ) -> Result<(), BusError> {
        use kaa_ism::avro::{Decode, Encode};
        let payload = match self.flaw {
            Flaw::DropsDisconnected if subject.ends_with(".connectivity.disconnected") => {
                return Ok(());
            }
            Flaw::DropsConnected if subject.ends_with(".connectivity.connected") => {
                return Ok(());
            }
            Flaw::RequestIdInResourcePath if subject.ends_with(".esp.ClientData") => {
                let mut data = kaa_esp::ClientData::decode(&payload).expect("ClientData");
                if let Some(id) = data.request_id {
                    data.resource_path = format!("{}/{id}", data.resource_path).into();
                }
                Bytes::from(data.to_vec())
            }
            _ => payload,
        };
        self.inner.publish_message(subject, reply_to, payload).await
    }

    async fn subscribe(
        &self,
        filter: &str,
        queue_group: Option<&str>,
    ) -> Result<Subscription, BusError> {
        self.inner.subscribe(filter, queue_group).await
    }

    async fn request(
        &self,
        subject: &str,
        payload: Bytes,
        timeout: Duration,
    ) -> Result<Message, BusError> {
        self.inner.request(subject, payload, timeout).await
    }

    async fn flush(&self) -> Result<(), BusError> {
        self.inner.flush().await
    }

    fn new_inbox(&self) -> String {
        self.inner.new_inbox()
    }
}

async fn failing_with(flaw: Flaw) -> BTreeSet<&'static str> {
    let bus: Arc<dyn Bus> = Arc::new(kaa_bus::MemoryBus::new());
    let flawed: Arc<dyn Bus> = Arc::new(FlawedBus {
        inner: Arc::clone(&bus),
        flaw,
    });
    let tag = format!("{flaw:?}").to_lowercase();
    let options = SuiteOptions {
        wait: Duration::from_secs(1),
        ..options()
    };
    let report = run_against_our_kpc(bus, flawed, &tag, &options, Credentials::default()).await;
    println!("{flaw:?}:\n{}", report.to_table());
    report
        .results
        .iter()
        .filter(|r| matches!(r.outcome, Outcome::Failed(_)))
        .map(|r| r.case.id)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_disconnected_events_are_caught() {
    assert_eq!(
        failing_with(Flaw::DropsDisconnected).await,
        BTreeSet::from(["ELCE-DIS-1", "ELCE-DIS-2"])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_connected_events_are_caught() {
    assert_eq!(
        failing_with(Flaw::DropsConnected).await,
        BTreeSet::from(["ELCE-CON-1"])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_id_left_in_the_resource_path_is_caught() {
    assert_eq!(
        failing_with(Flaw::RequestIdInResourcePath).await,
        BTreeSet::from(["KP-REQ-1"])
    );
}

// ---------------------------------------------------------------------------
// Our KPC behind an MQTT proxy that gets something wrong.

/// What the proxy between the kit's devices and our KPC changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MqttFlaw {
    /// PUBCOMP from KPC is lost: a QoS 2 request's handshake never completes.
    DropsPubcomp,
    /// A QoS 2 PUBLISH retransmitted with DUP reaches KPC with another packet
    /// identifier (and its PUBREC comes back with the device's), so KPC takes it
    /// for a new message and forwards it again: a server that delivers
    /// duplicates onward.
    ForwardsRetransmissions,
    /// KPC's QoS 1 and 2 PUBLISHes reach the device at QoS 0.
    AnswersAtQos0,
    /// Not a flaw: answers to QoS 2 requests reach the device at QoS 2, as 1/KP
    /// recommends (the proxy plays the sender's side: PUBREL for the device's
    /// PUBREC, and PUBACK to KPC), so the kit's QoS 2 receiving side runs.
    AnswersAtQos2,
    /// Answers to QoS 2 requests reach the device at QoS 2, but its PUBREC never
    /// gets a PUBREL.
    AnswersAtQos2WithoutPubrel,
}

/// The high bit marks the packet identifiers the proxy made up.
const MADE_UP: u16 = 0x8000;

/// PUBLISH, PUBACK, PUBREC, PUBREL and PUBCOMP.
const PUBLISH: u8 = 3;
const PUBACK: u8 = 4;
const PUBREC: u8 = 5;
const PUBREL: u8 = 6;
const PUBCOMP: u8 = 7;

async fn read_packet(r: &mut (impl AsyncRead + Unpin)) -> std::io::Result<(u8, Vec<u8>)> {
    let first = r.read_u8().await?;
    let (mut len, mut shift) = (0usize, 0);
    loop {
        let b = r.read_u8().await?;
        len |= usize::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            break;
        }
        shift += 7;
    }
    let mut body = vec![0; len];
    r.read_exact(&mut body).await?;
    Ok((first, body))
}

fn write_packet(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    let mut n = body.len();
    loop {
        let b = (n % 128) as u8;
        n /= 128;
        out.push(if n > 0 { b | 0x80 } else { b });
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(body);
    out
}

/// A PUBLISH's topic and where its packet identifier is in its body.
fn publish_topic(body: &[u8]) -> (String, usize) {
    let len = usize::from(u16::from_be_bytes([body[0], body[1]]));
    (
        String::from_utf8_lossy(&body[2..2 + len]).into_owned(),
        2 + len,
    )
}

fn packet_id(body: &[u8]) -> u16 {
    u16::from_be_bytes([body[0], body[1]])
}

/// Which way a packet goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Way {
    ToKpc,
    ToDevice,
}

/// What one proxied connection remembers.
#[derive(Debug, Default)]
struct Connection {
    /// Topics of the device's QoS 2 requests.
    qos2_requests: BTreeSet<String>,
    /// Packet identifiers of KPC's QoS 1 answers the proxy sent on at QoS 2.
    upgraded: BTreeSet<u16>,
}

/// A packet going `way` (fixed header's first byte, body), as `flaw` changes
/// it: the packets to send instead, each with its way.
fn change(
    flaw: MqttFlaw,
    c: &mut Connection,
    way: Way,
    first: u8,
    mut body: Vec<u8>,
) -> Vec<(Way, u8, Vec<u8>)> {
    use MqttFlaw::*;
    let (kind, qos, dup) = (first >> 4, (first >> 1) & 3, first & 0x08 != 0);
    let qos2_answers = matches!(flaw, AnswersAtQos2 | AnswersAtQos2WithoutPubrel);
    match (way, kind) {
        (Way::ToKpc, PUBLISH) if flaw == ForwardsRetransmissions && qos == 2 && dup => {
            let (_, at) = publish_topic(&body);
            body[at] |= (MADE_UP >> 8) as u8;
            vec![(way, first & !0x08, body)]
        }
        (Way::ToKpc, PUBLISH) if qos2_answers && qos == 2 => {
            c.qos2_requests.insert(publish_topic(&body).0);
            vec![(way, first, body)]
        }
        (Way::ToKpc, PUBREC) if c.upgraded.contains(&packet_id(&body)) => {
            // KPC sent it at QoS 1: its PUBACK; the device's PUBREL (or not).
            let mut out = vec![(Way::ToKpc, PUBACK << 4, body.clone())];
            if flaw == AnswersAtQos2 {
                out.push((Way::ToDevice, (PUBREL << 4) | 0x02, body));
            }
            out
        }
        (Way::ToKpc, PUBCOMP) if c.upgraded.remove(&packet_id(&body)) => Vec::new(),
        (Way::ToDevice, PUBCOMP) if flaw == DropsPubcomp => Vec::new(),
        (Way::ToDevice, PUBREC) if flaw == ForwardsRetransmissions => {
            body[0] &= !((MADE_UP >> 8) as u8);
            vec![(way, first, body)]
        }
        (Way::ToDevice, PUBLISH) if flaw == AnswersAtQos0 && qos > 0 => {
            let (_, at) = publish_topic(&body);
            body.drain(at..at + 2);
            vec![(way, first & 0xf9, body)]
        }
        (Way::ToDevice, PUBLISH) if qos2_answers && qos == 1 => {
            let (topic, at) = publish_topic(&body);
            let request = topic
                .strip_suffix("/status")
                .or_else(|| topic.strip_suffix("/error"));
            if request.is_some_and(|r| c.qos2_requests.contains(r)) {
                c.upgraded.insert(packet_id(&body[at..]));
                vec![(way, (first & 0xf9) | 0x04, body)]
            } else {
                vec![(way, first, body)]
            }
        }
        _ => vec![(way, first, body)],
    }
}

type Writer = Arc<tokio::sync::Mutex<tokio::net::tcp::OwnedWriteHalf>>;

/// Copies packets read from one side going `way`, changed by `flaw`, until
/// either side closes.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    way: Way,
    kpc: Writer,
    device: Writer,
    flaw: MqttFlaw,
    connection: Arc<std::sync::Mutex<Connection>>,
) {
    while let Ok((first, body)) = read_packet(&mut from).await {
        let out = {
            let mut c = connection.lock().expect("connection state");
            change(flaw, &mut c, way, first, body)
        };
        for (way, first, body) in out {
            let to = if way == Way::ToKpc { &kpc } else { &device };
            if to
                .lock()
                .await
                .write_all(&write_packet(first, &body))
                .await
                .is_err()
            {
                return;
            }
        }
    }
    let to = if way == Way::ToKpc { &kpc } else { &device };
    let _ = to.lock().await.shutdown().await;
}

/// A proxy to `kpc` with `flaw`: its address.
async fn flawed_proxy(kpc: std::net::SocketAddr, flaw: MqttFlaw) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("proxy");
    let addr = listener.local_addr().expect("proxy address");
    tokio::spawn(async move {
        while let Ok((device, _)) = listener.accept().await {
            let Ok(upstream) = TcpStream::connect(kpc).await else {
                continue;
            };
            let (device_read, device_write) = device.into_split();
            let (kpc_read, kpc_write) = upstream.into_split();
            let kpc_write: Writer = Arc::new(tokio::sync::Mutex::new(kpc_write));
            let device_write: Writer = Arc::new(tokio::sync::Mutex::new(device_write));
            let connection = Arc::default();
            tokio::spawn(pump(
                device_read,
                Way::ToKpc,
                Arc::clone(&kpc_write),
                Arc::clone(&device_write),
                flaw,
                Arc::clone(&connection),
            ));
            tokio::spawn(pump(
                kpc_read,
                Way::ToDevice,
                kpc_write,
                device_write,
                flaw,
                connection,
            ));
        }
    });
    addr
}

async fn failing_through(flaw: MqttFlaw) -> BTreeSet<&'static str> {
    let bus: Arc<dyn Bus> = Arc::new(kaa_bus::MemoryBus::new());
    let tag = format!("{flaw:?}").to_lowercase();
    let options = SuiteOptions {
        wait: Duration::from_secs(1),
        ..options()
    };
    let report = run_through(
        Arc::clone(&bus),
        bus,
        &tag,
        &options,
        Credentials::default(),
        Some(flaw),
    )
    .await;
    println!("{flaw:?}:\n{}", report.to_table());
    report
        .results
        .iter()
        .filter(|r| matches!(r.outcome, Outcome::Failed(_)))
        .map(|r| r.case.id)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retransmission_forwarded_again_is_caught() {
    // Only KP-QOS-3 retransmits: every other case also shows that the proxy
    // changes nothing it is not told to.
    assert_eq!(
        failing_through(MqttFlaw::ForwardsRetransmissions).await,
        BTreeSet::from(["KP-QOS-3"])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_pubcomp_is_caught() {
    assert_eq!(
        failing_through(MqttFlaw::DropsPubcomp).await,
        BTreeSet::from(["KP-QOS-2", "KP-QOS-3"])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_downgraded_to_qos_0_are_caught() {
    assert_eq!(
        failing_through(MqttFlaw::AnswersAtQos0).await,
        BTreeSet::from(["KP-QOS-1", "KP-QOS-2"])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_at_qos_2_pass_and_without_pubrel_are_caught() {
    assert_eq!(
        failing_through(MqttFlaw::AnswersAtQos2).await,
        BTreeSet::new()
    );
    assert_eq!(
        failing_through(MqttFlaw::AnswersAtQos2WithoutPubrel).await,
        BTreeSet::from(["KP-QOS-2"])
    );
}
