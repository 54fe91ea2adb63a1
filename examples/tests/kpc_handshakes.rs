//! KPC's handshake limits (issue 13, section 4): sockets that never send CONNECT
//! do not lock devices out.
//!
//! Connections that have not completed CONNECT and authentication count against
//! `kpc.mqtt.max-handshakes` and `max-handshakes-per-address`, with
//! `connect-timeout` as their deadline; established sessions have
//! `max-connections` to themselves. The tests use loopback source addresses
//! (127.0.0.2 for the sockets that never speak, 127.0.0.3 for devices; Linux
//! routes all of 127/8 to `lo`), so they only run on Linux.
//!
//! - `silent_sockets_from_one_address_do_not_lock_out_devices_from_another`: the
//!   issue's scenario on ECR + CMX + KPC (the all-in-one stack's modules on one
//!   in-memory bus, with `max-connections: 1000`): 3,000 silent sockets from
//!   127.0.0.2, reopened as KPC closes them, while 50 devices from 127.0.0.3
//!   connect and get their configuration; and the same with the sockets spread
//!   over 20 addresses, which fill the handshake pool and meet eviction.
//! - the limits one at a time, deterministically: per-address cap, eviction of
//!   the busiest address's oldest handshake, the deadline, CONNACK 0x03 when the
//!   last `max-connections` permit went while a CONNECT was on its way;
//! - the `kpc` binary under a low open-file limit: `accept` fails with EMFILE, and
//!   KPC neither spins nor stops listening.
#![cfg(target_os = "linux")]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use kaa_bus::{Bus, MemoryBus};
use kaa_examples::cmx::CmxService;
use kaa_examples::cmx::config::CmxServiceConfig;
use kaa_examples::ecr::EcrServer;
use kaa_examples::ecr::config::EcrConfig;
use kaa_examples::kpc::config::KpcConfig;
use kaa_examples::kpc::{KpcHandle, KpcServer};
use kaa_examples::service::parse_yaml;
use kaa_testkit::mini_mqtt::{connect_packet, publish_packet, read_packet};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};
use tokio::task::JoinSet;
use tokio::time::{Instant, timeout};

/// Where the sockets that never speak come from.
const SILENT: &str = "127.0.0.2";
/// Where the devices come from.
const DEVICES: &str = "127.0.0.3";
/// How long a test waits for something that should happen.
const WAIT: Duration = Duration::from_secs(5);

/// A TCP connection to `to` from `from` (a loopback address; port chosen by the
/// system).
async fn connect_from(from: &str, to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(from.parse().expect("an IPv4 address"), 0))?;
    socket.connect(to).await
}

/// Raises this process's soft open-file limit to at least `needed` (within the
/// hard limit); panics, naming the limit, when the hard limit is lower.
fn ensure_open_files(needed: u64) {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current.is_some_and(|soft| soft < needed) {
        assert!(
            limit.maximum.is_none_or(|hard| hard >= needed),
            "this test needs {needed} open files; the hard limit (ulimit -Hn) is {:?}",
            limit.maximum
        );
        setrlimit(
            Resource::Nofile,
            Rlimit {
                current: Some(needed),
                maximum: limit.maximum,
            },
        )
        .expect("raise RLIMIT_NOFILE");
    }
}

/// True when `s` is closed by the peer (EOF or reset) within `within`; false
/// when it is still open then. Never sends anything.
async fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 64];
    loop {
        match timeout(within, s.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

/// Connects from `from`, sends CONNECT and returns the CONNACK return code.
async fn mqtt_connect(from: &str, to: SocketAddr, client_id: &str) -> Result<TcpStream, String> {
    let mut s = connect_from(from, to)
        .await
        .map_err(|e| format!("TCP connect: {e}"))?;
    s.write_all(&connect_packet(client_id, 30))
        .await
        .map_err(|e| format!("write CONNECT: {e}"))?;
    let (first, body) = timeout(WAIT, read_packet(&mut s))
        .await
        .map_err(|_| "no CONNACK in time".to_owned())?
        .map_err(|e| format!("closed before CONNACK: {e}"))?;
    match (first, body.as_slice()) {
        (0x20, [_, 0]) => Ok(s),
        _ => Err(format!("CONNACK refused: {first:#04x} {body:?}")),
    }
}

/// Connects from `from`, sends CONNECT and returns the CONNACK return code, or
/// what went wrong.
async fn connack_code(s: &mut TcpStream, client_id: &str) -> Result<u8, String> {
    s.write_all(&connect_packet(client_id, 30))
        .await
        .map_err(|e| format!("write CONNECT: {e}"))?;
    let (first, body) = timeout(WAIT, read_packet(s))
        .await
        .map_err(|_| "no CONNACK in time".to_owned())?
        .map_err(|e| format!("closed before CONNACK: {e}"))?;
    match (first, body.as_slice()) {
        (0x20, [_, code]) => Ok(*code),
        _ => Err(format!("not a CONNACK: {first:#04x} {body:?}")),
    }
}

/// The metrics line `name` (with labels) as a number.
fn metric(kpc: &KpcHandle, name: &str) -> f64 {
    parse_metric(&kpc.metrics().registry().render(), name)
}

fn parse_metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .map_or(0.0, |v| v.trim().parse().expect("a number"))
}

/// Waits until `cond` holds, polling; panics with `what` after [`WAIT`].
async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// ECR (SQLite in a temporary directory), CMX and KPC on one in-memory bus, as
/// `kaa_examples::stack` composes them, with `kpc_extra` appended to KPC's
/// `kpc.mqtt` section.
struct System {
    http: SocketAddr,
    kpc: KpcHandle,
    stop: tokio::sync::watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl System {
    async fn start(kpc_extra: &str) -> System {
        let bus: Arc<dyn Bus> = Arc::new(MemoryBus::new());
        let dir = tempfile::tempdir().unwrap();
        let ecr: EcrConfig = parse_yaml(
            &format!(
                "service: {{ instance: {{ name: ecr, replica: {{ id: ecr-1 }} }} }}\n\
                 ecr:\n  http:\n    listen: 127.0.0.1:0\n  store:\n    url: \"sqlite://{db}\"\n  cmx:\n    service-instance-name: cmx\n\
                 auth:\n  enabled: false\n",
                db = dir.path().join("ecr.db").display()
            ),
            "ecr",
        )
        .unwrap();
        let cmx: CmxServiceConfig = parse_yaml(
            "service: { instance: { name: cmx, replica: { id: cmx-1 } } }\n\
             kaa:\n  cmx:\n    configuration-data-provider: { service-instance: { name: ecr } }\n\
             \x20   communication-service: { service-instance: { name: kpc } }\ncmx:\n  bus: memory\n",
            "cmx",
        )
        .unwrap();
        let kpc: KpcConfig = parse_yaml(
            &format!(
                "service: {{ instance: {{ name: kpc, replica: {{ id: kpc-1 }} }} }}\n\
                 kpc:\n  mqtt:\n    listen: 127.0.0.1:0\n    auth: {{ enabled: false }}\n{kpc_extra}  accept-any-token: true\n"
            ),
            "kpc",
        )
        .unwrap();
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|s| *s).await;
        };
        let ecr = EcrServer::bind(&ecr, Arc::clone(&bus)).await.unwrap();
        let http = ecr.local_addr();
        let cmx = CmxService::bind(&cmx, Arc::clone(&bus)).await.unwrap();
        let kpc = KpcServer::bind(&kpc, bus).await.unwrap().spawn();
        let ecr_stop = stopped(stop_rx.clone());
        let cmx_stop = stopped(stop_rx);
        let tasks = vec![
            tokio::spawn(async move { ecr.run(ecr_stop).await.unwrap() }),
            tokio::spawn(async move {
                cmx.run(cmx_stop).await.unwrap();
            }),
        ];
        System {
            http,
            kpc,
            stop,
            tasks,
            _dir: dir,
        }
    }

    async fn stop(self) {
        self.kpc.shutdown().await.unwrap();
        let _ = self.stop.send(true);
        for t in self.tasks {
            t.await.unwrap();
        }
    }
}

/// A device from [`DEVICES`]: CONNECT, a `config/json` request (QoS 0), and the
/// configuration on `…/status`; returns how long it took, or what went wrong. A
/// push of the configuration may come first (CMX pushes on `connected`); it must
/// carry the same configuration.
async fn device_gets_configuration(
    mqtt: SocketAddr,
    app: &str,
    token: &str,
    config_id: &str,
) -> Result<Duration, String> {
    let started = Instant::now();
    let s = mqtt_connect(DEVICES, mqtt, &format!("dev-{token}")).await?;
    let (r, mut w) = s.into_split();
    let mut r = BufReader::new(r);
    let topic = format!("kp1/{app}/cmx/{token}/config/json/1");
    w.write_all(&publish_packet(&topic, b"{}"))
        .await
        .map_err(|e| format!("write PUBLISH: {e}"))?;
    let status = format!("{topic}/status");
    let push = format!("kp1/{app}/cmx/{token}/config/json/status");
    loop {
        let (first, body) = timeout(WAIT, read_packet(&mut r))
            .await
            .map_err(|_| "no configuration in time".to_owned())?
            .map_err(|e| format!("closed before the configuration: {e}"))?;
        if first >> 4 != 3 || body.len() < 2 {
            continue;
        }
        let len = usize::from(u16::from_be_bytes([body[0], body[1]]));
        let (Some(t), Some(payload)) = (body.get(2..2 + len), body.get(2 + len..)) else {
            return Err("malformed PUBLISH".into());
        };
        if t != status.as_bytes() && t != push.as_bytes() {
            return Err(format!(
                "unexpected PUBLISH on {}",
                String::from_utf8_lossy(t)
            ));
        }
        let answer: Value = serde_json::from_slice(payload).map_err(|e| e.to_string())?;
        if answer["configId"] != config_id {
            return Err(format!("unexpected configuration {answer}"));
        }
        if t == status.as_bytes() {
            return Ok(started.elapsed());
        }
    }
}

/// What the silent sockets did.
#[derive(Default)]
struct AttackStats {
    /// Connection attempts made (each socket's first, and every reopening).
    attempts: AtomicU64,
    /// Attempts closed or reset by KPC (a reset can arrive before `connect`
    /// returns, when KPC closes the socket the moment it accepts it).
    closed_by_kpc: AtomicU64,
}

/// `sockets` tasks, each holding one TCP connection that never sends a byte,
/// from `sources` in turn, and reopening it `reopen_after` after KPC closes it.
/// Dropping the set ends them.
fn silent_sockets(
    to: SocketAddr,
    sources: &[&'static str],
    sockets: usize,
    reopen_after: Duration,
) -> (JoinSet<()>, Arc<AttackStats>) {
    let stats = Arc::new(AttackStats::default());
    let mut set = JoinSet::new();
    for i in 0..sockets {
        let stats = Arc::clone(&stats);
        let from = sources[i % sources.len()];
        set.spawn(async move {
            loop {
                let attempt = timeout(WAIT, connect_from(from, to)).await;
                stats.attempts.fetch_add(1, Ordering::Relaxed);
                let closed = match attempt {
                    Ok(Ok(mut s)) => {
                        let mut buf = [0u8; 16];
                        // KPC never sends to a socket that has not sent CONNECT.
                        let _ = s.read(&mut buf).await;
                        true
                    }
                    Ok(Err(e)) => e.kind() == std::io::ErrorKind::ConnectionReset,
                    Err(_) => false,
                };
                if closed {
                    stats.closed_by_kpc.fetch_add(1, Ordering::Relaxed);
                }
                tokio::time::sleep(reopen_after).await;
            }
        });
    }
    (set, stats)
}

/// One heavy test at a time: the lockout scenarios open thousands of sockets in
/// this process, and the descriptor test churns sockets against a KPC whose CPU
/// time it measures. Run side by side on two cores, a scenario's KPC could fall
/// behind its sockets' connect timeouts and never fill its handshake pool (seen
/// in CI: 934 held, 4,670 closed at the timeout, none evicted).
static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Silent sockets from the loopback addresses of source ends.
const SOCKETS: usize = 3_000;
/// `kpc.mqtt.max-connections` in the scenarios (the default is 10,000: 3,000 silent
/// sockets against 1,000 is the issue's 12,000 against 10,000, scaled to fit
/// this process's descriptors).
const MAX_CONNECTIONS: usize = 1_000;
/// Devices that must get their configuration meanwhile.
const DEVICE_COUNT: usize = 50;
/// One device arrives every this often: 50 over two seconds, four rounds of the
/// silent sockets reopening.
const DEVICE_INTERVAL: Duration = Duration::from_millis(40);

/// What a lockout scenario measured.
struct Outcome {
    /// Handshakes KPC held when the devices were done.
    held: i64,
    /// KPC's metrics then.
    metrics: String,
}

/// [`SOCKETS`] silent sockets from `sources`, reopened 500 ms after KPC closes
/// them, against ECR + CMX + KPC with `max-connections: 1000` and every other
/// limit at its default (max-handshakes 1,000, max-handshakes-per-address 256,
/// connect-timeout 5 s); meanwhile [`DEVICE_COUNT`] devices from [`DEVICES`]
/// must connect and get their configuration.
async fn lockout_scenario(label: &str, sources: &[&'static str]) -> Outcome {
    let _one_at_a_time = HEAVY.lock().await;
    // Two descriptors per socket at most (both ends live in this process), plus
    // the devices, KPC's own budget and room.
    ensure_open_files(2 * SOCKETS as u64 + 2 * MAX_CONNECTIONS as u64 + 1_024);
    let sys = System::start(&format!("    max-connections: {MAX_CONNECTIONS}\n")).await;
    let mqtt = sys.kpc.local_addr();
    let app = format!("{label}-app");
    let put = reqwest::Client::new()
        .put(format!("http://{}/api/v1/app-versions/{app}", sys.http))
        .header("content-type", "application/json")
        .body(r#"{"sampling":"1s"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 200);
    let put: Value = put.json().await.unwrap();
    let config_id = put["configId"].as_str().unwrap().to_owned();

    let started = Instant::now();
    let (attack, stats) = silent_sockets(mqtt, sources, SOCKETS, Duration::from_millis(500));
    let deadline = Instant::now() + Duration::from_secs(20);
    while stats.attempts.load(Ordering::Relaxed) < SOCKETS as u64 {
        assert!(
            Instant::now() < deadline,
            "the silent sockets did not connect"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let opened_in = started.elapsed();
    // The attack is on: the handshakes KPC allows are taken and KPC has begun
    // closing sockets past them (the address share, or a full pool evicting),
    // which the silent sockets answer by reconnecting. Waiting only for the
    // first 256 handshakes let the devices start (and finish) on a loaded
    // machine while KPC was still accepting the first 1,000 from its listen
    // queue, before any churn: the check below then saw no reconnections.
    // From several addresses, under their shares, the attack is on once the
    // pool is full and evicting: closures by the connect timeout alone (KPC
    // accepting slower than the sockets time out, seen in CI: 761 held, 632
    // timed out, none evicted) are not the scenario.
    let kpc = &sys.kpc;
    let pool_full = || sources.len() == 1 || kpc.metrics().handshakes_dropped_count("evicted") > 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    while kpc.metrics().handshakes() < 256
        || stats.closed_by_kpc.load(Ordering::Relaxed) == 0
        || !pool_full()
    {
        assert!(
            Instant::now() < deadline,
            "the silent sockets did not fill their handshakes ({} held, {} closed by KPC, {} evicted, accept errors: {} out of descriptors, {} other)",
            kpc.metrics().handshakes(),
            stats.closed_by_kpc.load(Ordering::Relaxed),
            kpc.metrics().handshakes_dropped_count("evicted"),
            kpc.metrics().accept_error_count("fd_exhausted"),
            kpc.metrics().accept_error_count("other"),
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let attempts_before = stats.attempts.load(Ordering::Relaxed);

    let devices_started = Instant::now();
    let mut devices = JoinSet::new();
    for i in 0..DEVICE_COUNT {
        let (app, config_id) = (app.clone(), config_id.clone());
        let token = format!("{label}-dev-{i}");
        let start = devices_started + DEVICE_INTERVAL * i as u32;
        devices.spawn(async move {
            tokio::time::sleep_until(start).await;
            device_gets_configuration(mqtt, &app, &token, &config_id).await
        });
    }
    let mut slowest = Duration::ZERO;
    let mut failures = Vec::new();
    while let Some(r) = devices.join_next().await {
        match r.unwrap() {
            Ok(took) => slowest = slowest.max(took),
            Err(e) => failures.push(e),
        }
    }
    let devices_took = devices_started.elapsed();
    let attempts_during = stats.attempts.load(Ordering::Relaxed) - attempts_before;
    let held = kpc.metrics().handshakes();
    let metrics = kpc.metrics().registry().render();
    drop(attack);
    eprintln!(
        "{label}: {SOCKETS} silent sockets from {} address(es) opened in {:.2} s; \
         {DEVICE_COUNT} devices from {DEVICES} got their configuration in {:.2} s (slowest \
         {:.2} s from its TCP connect), meanwhile the silent sockets made {attempts_during} \
         more connection attempts; KPC held {held} handshakes; dropped: address_limit {}, \
         evicted {}, timeout {}; {} of {} attempts closed by KPC",
        sources.len(),
        opened_in.as_secs_f64(),
        devices_took.as_secs_f64(),
        slowest.as_secs_f64(),
        parse_metric(
            &metrics,
            "kpc_handshakes_dropped_total{reason=\"address_limit\"}"
        ),
        parse_metric(&metrics, "kpc_handshakes_dropped_total{reason=\"evicted\"}"),
        parse_metric(&metrics, "kpc_handshakes_dropped_total{reason=\"timeout\"}"),
        stats.closed_by_kpc.load(Ordering::Relaxed),
        stats.attempts.load(Ordering::Relaxed),
    );
    assert!(
        failures.is_empty(),
        "{} of {DEVICE_COUNT} devices did not get their configuration: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(
        attempts_during >= 200,
        "the silent sockets kept reconnecting while the devices connected ({attempts_during})"
    );
    assert_eq!(
        parse_metric(&metrics, "kpc_connections_rejected_total"),
        0.0,
        "no device met max-connections"
    );
    sys.stop().await;
    Outcome { held, metrics }
}

/// The issue's scenario: thousands of silent sockets from one address
/// (reopened as KPC closes them) must not keep devices from another address
/// from connecting and getting their configuration. Before the handshake
/// limits, the silent sockets held every `max-connections` slot until the
/// connect timeout and every device got CONNACK 0x03 or a closed connection.
/// Here the address keeps its share of handshakes (256) and every socket past
/// it is closed at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_sockets_from_one_address_do_not_lock_out_devices_from_another() {
    let outcome = lockout_scenario("one-address", &[SILENT]).await;
    assert!(
        outcome.held <= 256 + DEVICE_COUNT as i64,
        "one address never holds more than its share of handshakes ({})",
        outcome.held
    );
    let address_limit = parse_metric(
        &outcome.metrics,
        "kpc_handshakes_dropped_total{reason=\"address_limit\"}",
    );
    assert!(address_limit > 0.0, "sockets past the share were closed");
}

/// The same from 20 addresses (150 sockets each, under the per-address share):
/// together they fill `max-handshakes`, and every newcomer evicts the oldest
/// handshake of the address holding the most. Devices, whose address holds
/// few, get in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_sockets_from_many_addresses_do_not_lock_out_devices_either() {
    const SOURCES: [&str; 20] = [
        "127.0.1.1",
        "127.0.1.2",
        "127.0.1.3",
        "127.0.1.4",
        "127.0.1.5",
        "127.0.1.6",
        "127.0.1.7",
        "127.0.1.8",
        "127.0.1.9",
        "127.0.1.10",
        "127.0.1.11",
        "127.0.1.12",
        "127.0.1.13",
        "127.0.1.14",
        "127.0.1.15",
        "127.0.1.16",
        "127.0.1.17",
        "127.0.1.18",
        "127.0.1.19",
        "127.0.1.20",
    ];
    let outcome = lockout_scenario("many-addresses", &SOURCES).await;
    let evicted = parse_metric(
        &outcome.metrics,
        "kpc_handshakes_dropped_total{reason=\"evicted\"}",
    );
    assert!(evicted > 0.0, "the full handshake pool evicted");
    assert!(outcome.held <= 1_000, "{}", outcome.held);
}

/// A KPC on the in-memory bus with no extension: CONNACKs only.
async fn bare_kpc(configure: impl FnOnce(&mut KpcConfig)) -> KpcHandle {
    let mut config = KpcConfig::new("127.0.0.1:0".parse().unwrap());
    configure(&mut config);
    KpcServer::bind(&config, Arc::new(MemoryBus::new()))
        .await
        .expect("KPC binds")
        .spawn()
}

/// `max-handshakes-per-address`: the socket past an address's share is closed at
/// once. `max-handshakes`: a newcomer when all are taken evicts the oldest
/// handshake of the address holding the most, and gets in.
#[tokio::test]
async fn an_address_past_its_share_is_closed_and_a_full_pool_evicts_the_busiest_address() {
    let kpc = bare_kpc(|c| {
        c.kpc.mqtt.max_connections = 10;
        c.kpc.mqtt.max_handshakes = Some(4);
        c.kpc.mqtt.max_handshakes_per_address = Some(3);
    })
    .await;
    let addr = kpc.local_addr();
    let mut silent = Vec::new();
    for _ in 0..3 {
        silent.push(connect_from(SILENT, addr).await.unwrap());
        let held = silent.len() as i64;
        wait_until("a handshake", || kpc.metrics().handshakes() == held).await;
    }
    // The fourth from the same address: closed at once, nothing read.
    let mut fourth = connect_from(SILENT, addr).await.unwrap();
    assert!(closed_within(&mut fourth, WAIT).await);
    assert_eq!(kpc.metrics().handshakes_dropped_count("address_limit"), 1);
    assert_eq!(kpc.metrics().handshakes(), 3);
    // Another address takes the last slot.
    let mut other = connect_from("127.0.0.4", addr).await.unwrap();
    wait_until("4 handshakes", || kpc.metrics().handshakes() == 4).await;
    // A device when all four are taken: 127.0.0.2's oldest goes, the device
    // gets in.
    let device = mqtt_connect(DEVICES, addr, "device").await.unwrap();
    assert!(
        closed_within(&mut silent[0], WAIT).await,
        "the oldest was evicted"
    );
    for s in &mut silent[1..] {
        assert!(!closed_within(s, Duration::from_millis(200)).await);
    }
    assert!(!closed_within(&mut other, Duration::from_millis(200)).await);
    assert_eq!(kpc.metrics().handshakes_dropped_count("evicted"), 1);
    wait_until("the evicted session to end", || {
        kpc.metrics().closed_count("evicted") == 1
    })
    .await;
    // The device is established: it no longer counts as a handshake.
    assert_eq!(kpc.metrics().handshakes(), 3);
    assert_eq!(kpc.metrics().open_connections(), 4);
    // Shutdown does not wait for handshakes to time out.
    let stopping = Instant::now();
    kpc.shutdown().await.unwrap();
    assert!(
        stopping.elapsed() < Duration::from_secs(2),
        "{:?}",
        stopping.elapsed()
    );
    for s in &mut silent[1..] {
        assert!(closed_within(s, WAIT).await);
    }
    drop(device);
}

/// `connect-timeout` is the handshake deadline: a socket that sends nothing is
/// closed after it, and counted.
#[tokio::test]
async fn a_socket_that_never_sends_connect_is_closed_at_the_deadline() {
    let kpc = bare_kpc(|c| c.kpc.mqtt.connect_timeout = Duration::from_millis(300)).await;
    let started = Instant::now();
    let mut s = connect_from(SILENT, kpc.local_addr()).await.unwrap();
    assert!(closed_within(&mut s, WAIT).await);
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(250), "closed after {took:?}");
    wait_until("the session to end", || {
        kpc.metrics().closed_count("connect_timeout") == 1
    })
    .await;
    assert_eq!(kpc.metrics().handshakes_dropped_count("timeout"), 1);
    assert_eq!(kpc.metrics().handshakes(), 0);
    kpc.shutdown().await.unwrap();
}

/// Handshakes do not hold `max-connections` permits: with `max-connections: 2`,
/// a connection that has not sent CONNECT yet does not keep two devices out, and
/// when it sends CONNECT after they took the last permit, it gets CONNACK 0x03
/// (server unavailable).
#[tokio::test]
async fn a_connect_that_completes_after_the_last_permit_went_gets_server_unavailable() {
    let kpc = bare_kpc(|c| c.kpc.mqtt.max_connections = 2).await;
    let addr = kpc.local_addr();
    let mut slow = connect_from(SILENT, addr).await.unwrap();
    wait_until("a handshake", || kpc.metrics().handshakes() == 1).await;
    let _one = mqtt_connect(DEVICES, addr, "one").await.unwrap();
    let _two = mqtt_connect(DEVICES, addr, "two").await.unwrap();
    assert_eq!(kpc.metrics().handshakes_dropped_count("evicted"), 0);
    assert_eq!(connack_code(&mut slow, "slow").await, Ok(3));
    assert!(closed_within(&mut slow, WAIT).await);
    assert_eq!(metric(&kpc, "kpc_connections_rejected_total"), 1.0);
    assert_eq!(kpc.metrics().closed_count("refused"), 1);
    kpc.shutdown().await.unwrap();
}

/// CPU time (user + system) of process `pid` so far.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which may hold spaces) in parentheses.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    // utime and stime are fields 14 and 15 of the whole line, in clock ticks
    // (USER_HZ, 100 on Linux).
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    Duration::from_millis(ticks * 10)
}

/// The `kpc` binary with 48 open files at most (soft and hard, so KPC cannot
/// raise it): silent sockets use up its descriptors and `accept` fails with
/// EMFILE. KPC evicts a handshake and pauses instead of spinning, the listener
/// stays up, and a device from another address still gets in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_file_descriptors_kpc_neither_spins_nor_stops_listening() {
    let _one_at_a_time = HEAVY.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kpc.yaml");
    // Handshake limits out of the way: only the descriptors run out.
    std::fs::write(
        &path,
        "kpc:\n  mqtt:\n    listen: 127.0.0.1:0\n    max-connections: 1000\n    max-handshakes: 1000\n\
         \x20   max-handshakes-per-address: 1000\n    connect-timeout: 60s\n\
         \x20 http:\n    listen: 127.0.0.1:0\n",
    )
    .unwrap();
    let mut child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg("ulimit -n 48 && exec \"$0\" \"$@\"")
        .arg(kaa_testkit::service_binary("kpc"))
        .arg(&path)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let pid = child.id().unwrap();
    let mut lines = tokio::io::AsyncBufReadExt::lines(BufReader::new(child.stdout.take().unwrap()));
    let mut banners = Vec::new();
    for _ in 0..2 {
        let line = timeout(WAIT, lines.next_line())
            .await
            .expect("kpc starts")
            .unwrap()
            .expect("a line");
        banners.push(line);
    }
    let mqtt: SocketAddr = banners[0]
        .strip_prefix("kpc listening on mqtt://")
        .expect("the MQTT banner")
        .parse()
        .unwrap();
    let ops = banners[1]
        .strip_prefix("kpc metrics on http://")
        .expect("the metrics banner")
        .trim_end_matches("/metrics")
        .to_owned();
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    assert!(
        limits
            .lines()
            .any(|l| l.starts_with("Max open files") && l.split_whitespace().nth(3) == Some("48")),
        "{limits}"
    );
    let in_use = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count();

    // Twice as many silent sockets as KPC has descriptors, reopened 50 ms after
    // KPC closes them: accept keeps failing while they last.
    let (attack, stats) = silent_sockets(mqtt, &[SILENT], 96, Duration::from_millis(50));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let cpu_before = cpu_time(pid);
    let window = Instant::now();
    let device = mqtt_connect(DEVICES, mqtt, "device").await;
    tokio::time::sleep(Duration::from_secs(1).saturating_sub(window.elapsed())).await;
    let cpu = cpu_time(pid) - cpu_before;
    let wall = window.elapsed();
    let closed_by_kpc = stats.closed_by_kpc.load(Ordering::Relaxed);
    let attempts = stats.attempts.load(Ordering::Relaxed);
    drop(attack);
    let device = device.expect("a device gets in while descriptors run out");
    drop(device);

    // Once the sockets are gone, KPC serves as before.
    let _after = mqtt_connect(DEVICES, mqtt, "after").await.unwrap();
    let text = reqwest::get(format!("http://{ops}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let fd_errors = parse_metric(&text, "kpc_accept_errors_total{kind=\"fd_exhausted\"}");
    let evicted = parse_metric(&text, "kpc_handshakes_dropped_total{reason=\"evicted\"}");
    eprintln!(
        "kpc with 48 descriptors ({in_use} in use at start), 96 silent sockets: {fd_errors} EMFILE \
         accepts, {evicted} handshakes evicted, {closed_by_kpc} of {attempts} silent connections closed by KPC; CPU {:?} in \
         {:?} while under attack",
        cpu, wall
    );
    assert!(fd_errors > 0.0, "accept ran out of descriptors");
    assert!(evicted > 0.0, "handshakes were evicted to free descriptors");
    assert!(
        cpu < wall / 2,
        "KPC spent {cpu:?} of CPU in {wall:?}: it spins on EMFILE"
    );
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("kpc stops after SIGTERM")
        .unwrap();
    assert!(status.success(), "{status:?}");
}
