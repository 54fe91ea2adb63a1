//! The kit's KPC mode against our own KPC (`kaa-kpc`, `accept-any-token`), in
//! this process with its MQTT listener on an ephemeral port: on the in-memory bus
//! (always; anonymous, and with MQTT credentials required), and on the machine's
//! NATS (skipped visibly when NATS is not reachable, mandatory with
//! `KAA_REQUIRE_SERVICES=1`). And against our KPC behind a bus that loses some of
//! what it publishes, behind an MQTT proxy that breaks QoS (a lost PUBCOMP, a
//! retransmission forwarded again, answers downgraded to QoS 0), given wrong
//! credentials or none, or taking any password while the kit was told it
//! requires one: the kit must name the cases that catch it.

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

/// What the proxy between the kit's devices and our KPC gets wrong.
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
}

/// The high bit marks the packet identifiers the proxy made up.
const MADE_UP: u16 = 0x8000;

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

/// Where a PUBLISH's packet identifier is in its body (QoS 1 and 2).
fn packet_id_at(body: &[u8]) -> usize {
    2 + usize::from(u16::from_be_bytes([body[0], body[1]]))
}

/// A packet from the device on its way to KPC, as `flaw` changes it.
fn to_kpc(flaw: MqttFlaw, first: u8, mut body: Vec<u8>) -> Option<(u8, Vec<u8>)> {
    let (kind, qos, dup) = (first >> 4, (first >> 1) & 3, first & 0x08 != 0);
    if flaw == MqttFlaw::ForwardsRetransmissions && kind == 3 && qos == 2 && dup {
        let at = packet_id_at(&body);
        body[at] |= (MADE_UP >> 8) as u8;
        return Some((first & !0x08, body));
    }
    Some((first, body))
}

/// A packet from KPC on its way to the device, as `flaw` changes it.
fn to_device(flaw: MqttFlaw, first: u8, mut body: Vec<u8>) -> Option<(u8, Vec<u8>)> {
    let (kind, qos) = (first >> 4, (first >> 1) & 3);
    match flaw {
        MqttFlaw::DropsPubcomp if kind == 7 => None,
        MqttFlaw::ForwardsRetransmissions if kind == 5 => {
            body[0] &= !((MADE_UP >> 8) as u8);
            Some((first, body))
        }
        MqttFlaw::AnswersAtQos0 if kind == 3 && qos > 0 => {
            let at = packet_id_at(&body);
            body.drain(at..at + 2);
            Some((first & 0xf9, body))
        }
        _ => Some((first, body)),
    }
}

/// How a flaw changes a packet (first byte, body) on its way; `None` drops it.
type Change = fn(MqttFlaw, u8, Vec<u8>) -> Option<(u8, Vec<u8>)>;

/// Copies packets from `from` to `to`, changed by `change`, until either side
/// closes.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    flaw: MqttFlaw,
    change: Change,
) {
    while let Ok((first, body)) = read_packet(&mut from).await {
        if let Some((first, body)) = change(flaw, first, body)
            && to.write_all(&write_packet(first, &body)).await.is_err()
        {
            break;
        }
    }
    let _ = to.shutdown().await;
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
            tokio::spawn(pump(device_read, kpc_write, flaw, to_kpc));
            tokio::spawn(pump(kpc_read, device_write, flaw, to_device));
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
