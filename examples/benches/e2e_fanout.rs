//! End-to-end load benchmark: N simulated devices (default 10,000, one MQTT 3.1.1
//! connection each) against the embedded stack (`kaa-stack`, a separate process so
//! each side has its own file descriptors), loopback only.
//!
//! 1. Every device connects, requests `config/json` with `{"observe":true}` and
//!    reports the answer applied.
//! 2. **Fan-out**: one PUT of the app version's default; measured from just before
//!    the PUT until every device has received the push (and each device's own
//!    latency, p50/p99).
//! 3. **Single-endpoint updates**: U sequential PUTs of one endpoint's own
//!    configuration each (a different endpoint each time); latency from just before
//!    the PUT until that device has the push, p50/p99/max.
//!
//! The devices are a minimal MQTT client (CONNECT, PUBLISH QoS 0, PUBACK for QoS 1
//! deliveries) so the generator's CPU cost stays small on the same machine. Bounded:
//! every phase has a timeout. Run:
//!
//! ```sh
//! cargo bench -p kaa-examples --bench e2e_fanout              # 10,000 devices, 200 updates
//! E2E_DEVICES=1000 E2E_UPDATES=50 cargo bench -p kaa-examples --bench e2e_fanout
//! # against the separate processes on NATS and PostgreSQL (scripts/stack-nats.sh):
//! E2E_HTTP=127.0.0.1:8080 E2E_MQTT=127.0.0.1:1884 cargo bench -p kaa-examples --bench e2e_fanout
//! # 50,000 devices over three KPC replicas (KAA_REPLICAS=3 scripts/stack-nats.sh start,
//! # with KAA_KPC_MAX_CONNECTIONS=17000):
//! E2E_DEVICES=50000 E2E_HTTP=127.0.0.1:8080 E2E_MQTT=127.0.0.1:1884,127.0.0.1:1885,127.0.0.1:1886 \
//!     cargo bench -p kaa-examples --bench e2e_fanout
//! ```
//!
//! `E2E_MQTT` may list several MQTT addresses (KPC replicas): device `i` connects to
//! address `i mod n`. A process here may hold at most 20,000 open files, so past
//! 15,000 devices (or with `E2E_PROCESSES=n`) the devices run in `n` child processes
//! of this bench (itself, re-run with `E2E_CHILD=k/n`), which report each answer
//! and push (with its wall-clock time) on their stdout; latencies are then
//! measured on the wall clock, which the processes of one machine share.
#![allow(missing_docs)]

use std::io::BufRead;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, mpsc};

use kaa_testkit::mini_mqtt::{connect_packet, publish_packet, read_packet};

const PHASE_TIMEOUT: Duration = Duration::from_secs(120);

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct StackProcess(Child);

impl Drop for StackProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr")
}

fn start_stack(dir: &std::path::Path) -> (StackProcess, SocketAddr, SocketAddr) {
    let (http, mqtt) = (free_addr(), free_addr());
    let mut child = Command::new(env!("CARGO_BIN_EXE_kaa-stack"))
        .args(["--http-listen", &http.to_string()])
        .args(["--mqtt-listen", &mqtt.to_string()])
        .arg("--data-dir")
        .arg(dir)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("kaa-stack starts");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if line.starts_with("kaa-stack is running") {
                let _ = tx.send(());
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(30))
        .expect("kaa-stack banner within 30 s");
    (StackProcess(child), http, mqtt)
}

/// Nanoseconds since the Unix epoch: the clock every process of the bench shares.
fn wall_nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos()
}

#[derive(Debug)]
enum Ev {
    Response,
    /// Device `usize` got a push at this wall-clock time ([`wall_nanos`]).
    Push(usize, u128),
    Failed(usize, String),
}

impl Ev {
    /// One line on a child's stdout.
    fn line(&self) -> String {
        match self {
            Ev::Response => "R".to_owned(),
            Ev::Push(i, at) => format!("P {i} {at}"),
            Ev::Failed(i, e) => format!("F {i} {}", e.replace('\n', " ")),
        }
    }

    /// The event a child's line stands for.
    fn parse(line: &str) -> Option<Ev> {
        let mut parts = line.splitn(3, ' ');
        match (parts.next()?, parts.next(), parts.next()) {
            ("R", None, None) => Some(Ev::Response),
            ("P", Some(i), Some(at)) => Some(Ev::Push(i.parse().ok()?, at.parse().ok()?)),
            ("F", Some(i), e) => Some(Ev::Failed(i.parse().ok()?, e.unwrap_or("").to_owned())),
            _ => None,
        }
    }
}

/// One device: connect, request with observe, report applied, then report every
/// push applied and tell the collector about it.
async fn device(
    idx: usize,
    mqtt: SocketAddr,
    app: Arc<str>,
    token: String,
    gate: Arc<Semaphore>,
    tx: mpsc::UnboundedSender<Ev>,
) {
    let permit = gate.acquire_owned().await;
    let s = match TcpStream::connect(mqtt).await {
        Ok(s) => s,
        Err(e) => {
            let _ = tx.send(Ev::Failed(idx, format!("connect: {e}")));
            return;
        }
    };
    let _ = s.set_nodelay(true);
    let (r, mut s) = s.into_split();
    let mut r = BufReader::with_capacity(1024, r);
    let base = format!("kp1/{app}/cmx/{token}");
    let request_topic = format!("{base}/config/json/1");
    let response_topic = format!("{request_topic}/status");
    let push_topic = format!("{base}/config/json/status");
    let applied_topic = format!("{base}/applied/json");
    let mut out = connect_packet(&format!("bench-{token}"), 600);
    out.extend(publish_packet(&request_topic, br#"{"observe":true}"#));
    if let Err(e) = s.write_all(&out).await {
        let _ = tx.send(Ev::Failed(idx, format!("write: {e}")));
        return;
    }
    let mut permit = Some(permit);
    loop {
        let (first, body) = match read_packet(&mut r).await {
            Ok(p) => p,
            Err(e) => {
                let _ = tx.send(Ev::Failed(idx, format!("read: {e}")));
                return;
            }
        };
        match first >> 4 {
            2 if body.get(1) != Some(&0) => {
                let _ = tx.send(Ev::Failed(idx, format!("CONNACK {body:?}")));
                return;
            }
            3 => {
                let at = wall_nanos();
                let qos = (first >> 1) & 3;
                let tlen = u16::from_be_bytes([body[0], body[1]]) as usize;
                let topic = &body[2..2 + tlen];
                let mut rest = 2 + tlen;
                // The PUBACK (QoS 1) and the applied report in one write.
                let mut reply = Vec::with_capacity(128);
                if qos > 0 {
                    reply.extend_from_slice(&[0x40, 2, body[rest], body[rest + 1]]);
                    rest += 2;
                }
                let payload = &body[rest..];
                #[derive(serde::Deserialize)]
                struct Answer<'a> {
                    #[serde(rename = "configId", borrow)]
                    config_id: Option<std::borrow::Cow<'a, str>>,
                }
                let config_id = serde_json::from_slice::<Answer<'_>>(payload)
                    .ok()
                    .and_then(|a| a.config_id)
                    .unwrap_or_default();
                reply.extend(publish_packet(
                    &applied_topic,
                    serde_json::json!({ "configId": config_id })
                        .to_string()
                        .as_bytes(),
                ));
                let _ = s.write_all(&reply).await;
                if topic == response_topic.as_bytes() {
                    drop(permit.take());
                    let _ = tx.send(Ev::Response);
                } else if topic == push_topic.as_bytes() {
                    let _ = tx.send(Ev::Push(idx, at));
                } else {
                    let _ = tx.send(Ev::Failed(
                        idx,
                        format!("unexpected {}", String::from_utf8_lossy(topic)),
                    ));
                }
            }
            _ => {}
        }
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

/// The time from wall-clock `t0` to `at` (zero if `at` is earlier).
fn since(t0: u128, at: u128) -> Duration {
    Duration::from_nanos(u64::try_from(at.saturating_sub(t0)).unwrap_or(u64::MAX))
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

async fn put(http: &reqwest::Client, url: &str, body: String) {
    let r = http
        .put(url)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("PUT sent");
    assert_eq!(r.status(), 200, "PUT {url}");
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` runs it with
    // few devices as a smoke test.
    let smoke = !std::env::args().any(|a| a == "--bench");
    let devices = env_usize("E2E_DEVICES", if smoke { 50 } else { 10_000 });
    let updates = env_usize("E2E_UPDATES", if smoke { 5 } else { 200 });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    if let Ok(child) = std::env::var("E2E_CHILD") {
        rt.block_on(run_child(&child, devices));
        return;
    }
    rt.block_on(run(devices, updates));
}

/// The MQTT addresses of `E2E_MQTT` (comma-separated).
fn mqtt_addresses(list: &str) -> Vec<SocketAddr> {
    list.split(',')
        .map(|a| a.trim().parse().expect("E2E_MQTT: host:port[,host:port…]"))
        .collect()
}

/// A child process's part: devices `i` with `i mod n == k`, their events as lines
/// on stdout; runs until the parent kills it.
async fn run_child(spec: &str, devices: usize) {
    let (k, n) = spec
        .split_once('/')
        .and_then(|(k, n)| Some((k.parse::<usize>().ok()?, n.parse::<usize>().ok()?)))
        .expect("E2E_CHILD=k/n");
    let mqtt = mqtt_addresses(&std::env::var("E2E_MQTT").expect("E2E_MQTT"));
    let app: Arc<str> = std::env::var("E2E_APP").expect("E2E_APP").into();
    let prefix = std::env::var("E2E_TOKEN_PREFIX").expect("E2E_TOKEN_PREFIX");
    let (tx, mut rx) = mpsc::unbounded_channel();
    let gate = Arc::new(Semaphore::new(64));
    for i in (k..devices).step_by(n) {
        tokio::spawn(device(
            i,
            mqtt[i % mqtt.len()],
            Arc::clone(&app),
            format!("{prefix}-{i}"),
            Arc::clone(&gate),
            tx.clone(),
        ));
    }
    drop(tx);
    // Plain blocking writes: one short line per event, to a pipe the parent reads.
    let mut out = std::io::stdout().lock();
    while let Some(ev) = rx.recv().await {
        use std::io::Write as _;
        if writeln!(out, "{}", ev.line())
            .and_then(|()| out.flush())
            .is_err()
        {
            return;
        }
    }
}

/// Child processes running the devices, killed when dropped.
struct Children(Vec<Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Starts `n` children of this bench for `devices` devices; their events arrive on `tx`.
fn spawn_children(
    n: usize,
    devices: usize,
    mqtt: &[SocketAddr],
    app: &str,
    prefix: &str,
    tx: &mpsc::UnboundedSender<Ev>,
) -> Children {
    let exe = std::env::current_exe().expect("the bench's own path");
    let list: Vec<String> = mqtt.iter().map(ToString::to_string).collect();
    let mut children = Vec::with_capacity(n);
    for k in 0..n {
        let mut child = Command::new(&exe)
            .arg("--bench")
            .env("E2E_CHILD", format!("{k}/{n}"))
            .env("E2E_DEVICES", devices.to_string())
            .env("E2E_MQTT", list.join(","))
            .env("E2E_APP", app)
            .env("E2E_TOKEN_PREFIX", prefix)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("a device process starts");
        let stdout = child.stdout.take().expect("stdout");
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if let Some(ev) = Ev::parse(&line) {
                    let _ = tx.send(ev);
                }
            }
        });
        children.push(child);
    }
    Children(children)
}

async fn run(devices: usize, updates: usize) {
    let dir = tempfile::tempdir().expect("temp dir");
    // E2E_HTTP and E2E_MQTT: a system already running (e.g. scripts/stack-nats.sh),
    // with the extension instance `cmx` and any token accepted.
    let attached = std::env::var("E2E_HTTP")
        .ok()
        .zip(std::env::var("E2E_MQTT").ok());
    let (_stack, http_addr, mqtt, what) = match attached {
        Some((h, m)) => (
            None,
            h.parse::<SocketAddr>().expect("E2E_HTTP host:port"),
            mqtt_addresses(&m),
            format!("the running system at http://{h} and mqtt://{m}"),
        ),
        None => {
            let (p, h, m) = start_stack(dir.path());
            (
                Some(p),
                h,
                vec![m],
                "kaa-stack (in-memory bus, SQLite)".to_owned(),
            )
        }
    };
    let app: Arc<str> = format!("bench-{}", std::process::id()).into();
    let base = format!("http://{http_addr}/api/v1");
    let http = reqwest::Client::new();
    put(
        &http,
        &format!("{base}/app-versions/{app}"),
        r#"{"round":0}"#.into(),
    )
    .await;

    let processes = env_usize("E2E_PROCESSES", devices.div_ceil(15_000)).max(1);
    println!(
        "e2e_fanout: {devices} devices over {} MQTT address(es){}, {updates} single-endpoint updates, {what}",
        mqtt.len(),
        if processes > 1 {
            format!(" from {processes} device processes")
        } else {
            String::new()
        }
    );
    let (tx, mut rx) = mpsc::unbounded_channel();
    let prefix = format!("b{}", std::process::id());
    let started = Instant::now();
    let _children = if processes > 1 {
        Some(spawn_children(
            processes, devices, &mqtt, &app, &prefix, &tx,
        ))
    } else {
        let gate = Arc::new(Semaphore::new(64));
        for i in 0..devices {
            tokio::spawn(device(
                i,
                mqtt[i % mqtt.len()],
                Arc::clone(&app),
                format!("{prefix}-{i}"),
                Arc::clone(&gate),
                tx.clone(),
            ));
        }
        None
    };
    let deadline = tokio::time::Instant::now() + PHASE_TIMEOUT;
    let mut ready = 0;
    while ready < devices {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(Ev::Response)) => ready += 1,
            Ok(Some(Ev::Failed(i, e))) => panic!("device {i}: {e}"),
            Ok(Some(Ev::Push(..))) => {}
            Ok(None) | Err(_) => {
                panic!("only {ready}/{devices} devices ready in {PHASE_TIMEOUT:?}")
            }
        }
    }
    println!(
        "connected, requested and answered: {devices} devices in {:.2} s",
        started.elapsed().as_secs_f64()
    );
    // Let the applied reports land before the fan-out.
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Fan-out of a default change.
    let t0 = Instant::now();
    let t0_wall = wall_nanos();
    put(
        &http,
        &format!("{base}/app-versions/{app}"),
        r#"{"round":1}"#.into(),
    )
    .await;
    let put_done = t0.elapsed();
    let mut got = vec![None; devices];
    let mut count = 0;
    let deadline = tokio::time::Instant::now() + PHASE_TIMEOUT;
    while count < devices {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(Ev::Push(i, at))) => {
                if got[i].is_none() {
                    got[i] = Some(since(t0_wall, at));
                    count += 1;
                }
            }
            Ok(Some(Ev::Failed(i, e))) => panic!("device {i}: {e}"),
            Ok(Some(Ev::Response)) => {}
            Ok(None) | Err(_) => {
                println!(
                    "FAN-OUT INCOMPLETE: {count}/{devices} devices got the push in {PHASE_TIMEOUT:?}"
                );
                break;
            }
        }
    }
    let mut lat: Vec<Duration> = got.iter().flatten().copied().collect();
    lat.sort();
    println!(
        "fan-out of one default change: {count}/{devices} devices in {} (PUT answered after {}); per device p50 {} p99 {}",
        ms(lat.last().copied().unwrap_or_default()),
        ms(put_done),
        ms(percentile(&lat, 0.50)),
        ms(percentile(&lat, 0.99)),
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    while rx.try_recv().is_ok() {}

    // Sequential single-endpoint updates.
    let mut lat = Vec::with_capacity(updates);
    for k in 0..updates {
        let i = (k * 7919) % devices;
        let ep = format!("{prefix}-{i}");
        let t0 = wall_nanos();
        put(
            &http,
            &format!("{base}/endpoints/{ep}/app-versions/{app}"),
            format!(r#"{{"own":{k}}}"#),
        )
        .await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(Ev::Push(j, at))) if j == i => {
                    lat.push(since(t0, at));
                    break;
                }
                Ok(Some(Ev::Failed(j, e))) => panic!("device {j}: {e}"),
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => panic!("update {k}: device {i} got no push within 10 s"),
            }
        }
    }
    lat.sort();
    println!(
        "single-endpoint update, PUT → push on the device ({} updates): p50 {} p99 {} max {}",
        lat.len(),
        ms(percentile(&lat, 0.50)),
        ms(percentile(&lat, 0.99)),
        ms(lat.last().copied().unwrap_or_default()),
    );
}
