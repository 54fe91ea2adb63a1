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
//! Configuration deltas (kaa-rs extension, `kaa_cmp::delta`): `E2E_DELTAS=1` makes
//! every device a delta device (it requests `config/json-patch`, keeps its document,
//! applies each patch and checks the result's config ID, as `kaa_cmp::device` does);
//! `E2E_DELTAS=compare` runs the fan-out twice on the same stack, first to plain
//! 7/CMP devices, then to as many delta devices of another app version, and skips the
//! single-endpoint phase (`E2E_ROUNDS=n`: n such pairs). `E2E_CONFIG_BYTES=n` makes the configuration about `n`
//! bytes (string members `s0000`, `s0001`, … beside `round`; the fan-out changes only
//! `round`, one key); the default is `{"round":N}` alone. Push payload bytes are
//! reported per fan-out. For the figures in BENCHMARKS.md:
//!
//! ```sh
//! E2E_DELTAS=compare E2E_ROUNDS=3 E2E_CONFIG_BYTES=4096 cargo bench -p kaa-examples --bench e2e_fanout
//! ```
//!
//! Layered configurations (issue 20): `E2E_LAYERS=n` gives every device `n` layers
//! before the fleet starts (even ones target every endpoint, odd ones a group holding
//! every device, each sets a key of its own), so every answer and the fan-out compose
//! `n` merge patches per endpoint; after the fan-out it times `E2E_LAYERS_REQUESTS`
//! (default 20) explains of one device and as many dry runs of a layer change reaching
//! every device over REST (p50, max). For the figures in BENCHMARKS.md:
//!
//! ```sh
//! for n in 0 3 10; do E2E_LAYERS=$n E2E_UPDATES=50 cargo bench -p kaa-examples --bench e2e_fanout; done
//! ```
//!
//! `E2E_MQTT` may list several MQTT addresses (KPC replicas): device `i` connects to
//! address `i mod n`. A process here may hold at most 20,000 open files, so past
//! 15,000 devices (or with `E2E_PROCESSES=n`) the devices run in `n` child processes
//! of this bench (itself, re-run with `E2E_CHILD=k/n`), which report each answer
//! and push (with its wall-clock time) on their stdout; latencies are then
//! measured on the wall clock, which the processes of one machine share.
//!
//! `E2E_TIMELINE=nats://127.0.0.1:4222` (with an attached system on that NATS
//! server) also records every bus message during the default change's fan-out and
//! prints, per subject group, when the messages passed: which stage holds the
//! fan-out up.
#![allow(missing_docs)]

use std::io::BufRead;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, mpsc};

use kaa_testkit::bench::{env_or, percentile};
use kaa_testkit::mini_mqtt::{connect_packet, publish_packet, read_packet};

const PHASE_TIMEOUT: Duration = Duration::from_secs(120);

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
    /// Device `usize` got a push at this wall-clock time ([`wall_nanos`]),
    /// with a payload of this many bytes.
    Push(usize, u128, usize),
    Failed(usize, String),
}

impl Ev {
    /// One line on a child's stdout.
    fn line(&self) -> String {
        match self {
            Ev::Response => "R".to_owned(),
            Ev::Push(i, at, bytes) => format!("P {i} {at} {bytes}"),
            Ev::Failed(i, e) => format!("F {i} {}", e.replace('\n', " ")),
        }
    }

    /// The event a child's line stands for.
    fn parse(line: &str) -> Option<Ev> {
        let mut parts = line.splitn(3, ' ');
        match (parts.next()?, parts.next(), parts.next()) {
            ("R", None, None) => Some(Ev::Response),
            ("P", Some(i), Some(rest)) => {
                let (at, bytes) = rest.split_once(' ')?;
                Some(Ev::Push(
                    i.parse().ok()?,
                    at.parse().ok()?,
                    bytes.parse().ok()?,
                ))
            }
            ("F", Some(i), e) => Some(Ev::Failed(i.parse().ok()?, e.unwrap_or("").to_owned())),
            _ => None,
        }
    }
}

/// What a delta device holds: its configuration (whole), for the next patch.
#[derive(Default)]
struct Held {
    config: Option<serde_json::Value>,
}

impl Held {
    /// A plain 7/CMP answer (`{"configId", "config"}`) taken whole.
    fn take_plain(&mut self, payload: &[u8]) -> Result<String, String> {
        use kaa_cmp::message::ConfigResponse;
        match ConfigResponse::from_json(payload).map_err(|e| format!("7/CMP answer: {e}"))? {
            ConfigResponse::Config { config_id, config } => {
                self.config = Some(config);
                Ok(config_id)
            }
            ConfigResponse::Unchanged => Err("`{}` pushed".into()),
        }
    }

    /// The config ID to report applied for a delta answer, after applying it and
    /// checking the result as a device must; an error names what was wrong.
    fn take(&mut self, payload: &[u8]) -> Result<String, String> {
        use kaa_cmp::delta::{self, DeltaResponse};
        match DeltaResponse::from_json(payload).map_err(|e| format!("delta answer: {e}"))? {
            DeltaResponse::Unchanged => Err("`{}` where a configuration was due".into()),
            DeltaResponse::Config {
                config_id, config, ..
            } => {
                self.config = Some(config);
                Ok(config_id)
            }
            DeltaResponse::Patch {
                config_id, patch, ..
            } => {
                let base = self.config.as_ref().ok_or("a patch before any document")?;
                let doc = delta::apply(base, &patch).map_err(|e| format!("patch: {e}"))?;
                delta::verify(&config_id, &doc).map_err(|e| format!("patched: {e}"))?;
                self.config = Some(doc);
                Ok(config_id)
            }
        }
    }
}

/// One device: connect, request with observe, report applied, then report every
/// push applied and tell the collector about it. With `deltas`, it speaks the
/// delta resource (`config/json-patch`) and applies and checks what it gets.
async fn device(
    idx: usize,
    mqtt: SocketAddr,
    app: Arc<str>,
    token: String,
    deltas: bool,
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
    let resource = if deltas {
        "config/json-patch"
    } else {
        "config/json"
    };
    let request_topic = format!("{base}/{resource}/1");
    let response_topic = format!("{request_topic}/status");
    let push_topic = format!("{base}/{resource}/status");
    // A delta device may first get a plain 7/CMP push: CMX pushes a newly
    // connected endpoint its configuration when the `connected` event comes
    // before the device's first request (as Kaa's own clients expect). Taken as
    // a whole document, as `kaa_cmp::device` takes it.
    let plain_push_topic = format!("{base}/config/json/status");
    let applied_topic = format!("{base}/applied/json");
    let mut held = Held::default();
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
                let plain_push = deltas && topic == plain_push_topic.as_bytes();
                let config_id = if plain_push {
                    match held.take_plain(payload) {
                        Ok(id) => id,
                        Err(e) => {
                            let _ = tx.send(Ev::Failed(idx, e));
                            return;
                        }
                    }
                } else if deltas {
                    match held.take(payload) {
                        Ok(id) => id,
                        Err(e) => {
                            let _ = tx.send(Ev::Failed(idx, e));
                            return;
                        }
                    }
                } else {
                    #[derive(serde::Deserialize)]
                    struct Answer<'a> {
                        #[serde(rename = "configId", borrow)]
                        config_id: Option<std::borrow::Cow<'a, str>>,
                    }
                    serde_json::from_slice::<Answer<'_>>(payload)
                        .ok()
                        .and_then(|a| a.config_id)
                        .unwrap_or_default()
                        .into_owned()
                };
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
                } else if topic == push_topic.as_bytes() || plain_push {
                    let _ = tx.send(Ev::Push(idx, at, payload.len()));
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

/// The time from wall-clock `t0` to `at` (zero if `at` is earlier).
fn since(t0: u128, at: u128) -> Duration {
    Duration::from_nanos(u64::try_from(at.saturating_sub(t0)).unwrap_or(u64::MAX))
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

/// `E2E_LAYERS`, when set.
fn layers_wanted() -> Option<usize> {
    std::env::var("E2E_LAYERS")
        .ok()
        .map(|v| v.parse().expect("E2E_LAYERS=n"))
}

/// Gives every device of the fleet `n` layers: even ones target every endpoint,
/// odd ones the group `all`, which gets every device as a member.
async fn setup_layers(http: &reqwest::Client, base: &str, fleet: &Fleet<'_>, n: usize) {
    let app = format!("{base}/app-versions/{}", fleet.app);
    if n > 1 {
        let r = http
            .put(format!("{app}/groups/all"))
            .send()
            .await
            .expect("PUT group");
        assert!(r.status().is_success(), "PUT group: {}", r.status());
        let ids: Vec<String> = (0..fleet.devices)
            .map(|i| format!("{}-{i}", fleet.prefix))
            .collect();
        for chunk in ids.chunks(5_000) {
            let r = http
                .post(format!("{app}/groups/all/members"))
                .json(&serde_json::json!({ "add": chunk }))
                .send()
                .await
                .expect("POST members");
            assert!(r.status().is_success(), "POST members: {}", r.status());
        }
    }
    for k in 0..n {
        let group = if k % 2 == 1 { "\"all\"" } else { "null" };
        put(
            http,
            &format!("{app}/layers/layer{k:02}"),
            format!(r#"{{"priority":{k},"group":{group},"patch":{{"l{k:02}":{k}}}}}"#),
        )
        .await;
    }
    println!("{n} layers per endpoint");
}

/// Times explains of one device and dry runs of a layer change reaching every
/// device, over REST.
async fn time_explain_and_dry_run(
    fleet: &Fleet<'_>,
    http: &reqwest::Client,
    base: &str,
    layers: usize,
) {
    let requests = env_or("E2E_LAYERS_REQUESTS", 20).max(1);
    let app = format!("{base}/app-versions/{}", fleet.app);
    let explain = format!(
        "{base}/endpoints/{}-0/app-versions/{}/explain",
        fleet.prefix, fleet.app
    );
    let mut lat = Vec::with_capacity(requests);
    for _ in 0..requests {
        let t = Instant::now();
        let r = http.get(&explain).send().await.expect("GET explain");
        assert_eq!(r.status(), 200, "GET explain");
        let body: serde_json::Value = r.json().await.expect("explain JSON");
        lat.push(t.elapsed());
        assert_eq!(
            body["leaves"].as_array().map(Vec::len),
            Some(layers + 1),
            "{body}"
        );
    }
    lat.sort();
    println!(
        "explain over REST ({layers} layers, {requests} requests): p50 {} max {}",
        ms(percentile(&lat, 0.50)),
        ms(lat.last().copied().unwrap_or_default()),
    );
    let mut lat = Vec::with_capacity(requests);
    let mut changed = 0;
    for k in 0..requests {
        let t = Instant::now();
        let r = http
            .put(format!("{app}/layers/dry?dryRun=true"))
            .header("content-type", "application/json")
            .body(format!(r#"{{"priority":100,"patch":{{"dry":{k}}}}}"#))
            .send()
            .await
            .expect("PUT dry run");
        assert_eq!(r.status(), 200, "dry run");
        let body: serde_json::Value = r.json().await.expect("dry run JSON");
        lat.push(t.elapsed());
        changed = body["changed"].as_u64().unwrap_or(0);
    }
    lat.sort();
    println!(
        "dry run of a layer reaching every device over REST ({changed} endpoints would change, {requests} requests): p50 {} max {}",
        ms(percentile(&lat, 0.50)),
        ms(lat.last().copied().unwrap_or_default()),
    );
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
    let devices = env_or("E2E_DEVICES", if smoke { 50 } else { 10_000 });
    let updates = env_or("E2E_UPDATES", if smoke { 5 } else { 200 });
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
    let deltas = std::env::var("E2E_CHILD_DELTAS").is_ok_and(|v| v == "1");
    let (tx, mut rx) = mpsc::unbounded_channel();
    let gate = Arc::new(Semaphore::new(64));
    for i in (k..devices).step_by(n) {
        tokio::spawn(device(
            i,
            mqtt[i % mqtt.len()],
            Arc::clone(&app),
            format!("{prefix}-{i}"),
            deltas,
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

/// The devices of one fan-out: child processes (killed when dropped) or tasks of
/// this process (aborted when dropped, which closes their connections).
enum Devices {
    Children(Vec<Child>),
    Tasks(Vec<tokio::task::JoinHandle<()>>),
}

impl Drop for Devices {
    fn drop(&mut self) {
        match self {
            Devices::Children(children) => {
                for c in children {
                    let _ = c.kill();
                    let _ = c.wait();
                }
            }
            Devices::Tasks(tasks) => tasks.iter().for_each(|t| t.abort()),
        }
    }
}

/// One fan-out's devices and where they go.
struct Fleet<'a> {
    devices: usize,
    mqtt: &'a [SocketAddr],
    app: &'a str,
    prefix: &'a str,
    deltas: bool,
}

impl Fleet<'_> {
    /// Starts `processes` children of this bench (or, for 1, tasks here) for the
    /// devices; their events arrive on `tx`.
    fn start(&self, processes: usize, tx: &mpsc::UnboundedSender<Ev>) -> Devices {
        if processes <= 1 {
            let gate = Arc::new(Semaphore::new(64));
            let app: Arc<str> = self.app.into();
            return Devices::Tasks(
                (0..self.devices)
                    .map(|i| {
                        tokio::spawn(device(
                            i,
                            self.mqtt[i % self.mqtt.len()],
                            Arc::clone(&app),
                            format!("{}-{i}", self.prefix),
                            self.deltas,
                            Arc::clone(&gate),
                            tx.clone(),
                        ))
                    })
                    .collect(),
            );
        }
        let exe = std::env::current_exe().expect("the bench's own path");
        let list: Vec<String> = self.mqtt.iter().map(ToString::to_string).collect();
        let mut children = Vec::with_capacity(processes);
        for k in 0..processes {
            let mut child = Command::new(&exe)
                .arg("--bench")
                .env("E2E_CHILD", format!("{k}/{processes}"))
                .env("E2E_DEVICES", self.devices.to_string())
                .env("E2E_MQTT", list.join(","))
                .env("E2E_APP", self.app)
                .env("E2E_TOKEN_PREFIX", self.prefix)
                .env("E2E_CHILD_DELTAS", if self.deltas { "1" } else { "0" })
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
        Devices::Children(children)
    }
}

/// The configuration of round `round`: `{"round": round}` and, for `bytes` > 0,
/// string members `s0000`, `s0001`, … up to about `bytes` bytes in all, the same in
/// every round (so one round to the next changes one key).
fn config_doc(round: usize, bytes: usize) -> String {
    let mut doc = serde_json::Map::new();
    doc.insert("round".into(), round.into());
    let mut size = serde_json::Value::Object(doc.clone()).to_string().len();
    let mut i = 0;
    while size < bytes {
        let (key, value) = (
            format!("s{i:04}"),
            format!("setting {i}: sample every {} ms, then report", 100 + i),
        );
        size += key.len() + value.len() + 6;
        doc.insert(key, value.into());
        i += 1;
    }
    serde_json::Value::Object(doc).to_string()
}

/// Payload sizes: `n`, mean, min, max.
fn bytes_summary(sizes: &[usize]) -> String {
    let n = sizes.len().max(1);
    format!(
        "push payload {} B mean (min {}, max {})",
        sizes.iter().sum::<usize>() / n,
        sizes.iter().min().copied().unwrap_or(0),
        sizes.iter().max().copied().unwrap_or(0),
    )
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
    // Which devices: plain 7/CMP, delta devices, or one fan-out to each.
    let phases: &[bool] = match std::env::var("E2E_DELTAS").as_deref() {
        Ok("compare") => &[false, true],
        Ok("1") | Ok("true") => &[true],
        _ => &[false],
    };
    // With `compare`, E2E_ROUNDS pairs of fan-outs, alternating (load changes
    // between phases then shows as spread, not as a difference).
    let rounds = if phases.len() > 1 {
        env_or("E2E_ROUNDS", 1).max(1)
    } else {
        1
    };
    let config_bytes = env_or("E2E_CONFIG_BYTES", 0);
    let processes = env_or("E2E_PROCESSES", devices.div_ceil(15_000)).max(1);
    println!(
        "e2e_fanout: {devices} devices over {} MQTT address(es){}, {}, configuration of {} B, {what}",
        mqtt.len(),
        if processes > 1 {
            format!(" from {processes} device processes")
        } else {
            String::new()
        },
        if phases.len() > 1 {
            "one fan-out to plain devices, then one to delta devices".to_owned()
        } else {
            format!(
                "{} devices, {updates} single-endpoint updates",
                if phases[0] { "delta" } else { "plain" }
            )
        },
        config_doc(0, config_bytes).len(),
    );
    let base = format!("http://{http_addr}/api/v1");
    let http = reqwest::Client::new();
    for (round, &deltas) in (0..rounds).flat_map(|r| phases.iter().map(move |d| (r, d))) {
        let kind = if deltas { "delta" } else { "plain" };
        let app = format!("bench-{}-{kind}-{round}", std::process::id());
        let prefix = format!("b{}{}{round}", std::process::id(), &kind[..1]);
        let fleet = Fleet {
            devices,
            mqtt: &mqtt,
            app: &app,
            prefix: &prefix,
            deltas,
        };
        let (running, mut rx) = fan_out(&fleet, processes, &http, &base, config_bytes).await;
        if let Some(layers) = layers_wanted() {
            time_explain_and_dry_run(&fleet, &http, &base, layers).await;
        }
        if phases.len() == 1 {
            single_endpoint_updates(&fleet, updates, &http, &base, &mut rx).await;
        }
        // The next phase's devices start after these have gone.
        drop(running);
    }
}

/// Starts the fleet, waits until every device has its configuration, then times
/// one default change to every device. The devices stop when this returns.
async fn fan_out(
    fleet: &Fleet<'_>,
    processes: usize,
    http: &reqwest::Client,
    base: &str,
    config_bytes: usize,
) -> (Devices, mpsc::UnboundedReceiver<Ev>) {
    let (app, devices) = (fleet.app, fleet.devices);
    let kind = if fleet.deltas { "delta" } else { "plain" };
    put(
        http,
        &format!("{base}/app-versions/{app}"),
        config_doc(0, config_bytes),
    )
    .await;
    if let Some(layers) = layers_wanted() {
        setup_layers(http, base, fleet, layers).await;
    }
    let (tx, mut rx) = mpsc::unbounded_channel();
    let started = Instant::now();
    let running = fleet.start(processes, &tx);
    drop(tx);
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
        "connected, requested and answered: {devices} {kind} devices in {:.2} s",
        started.elapsed().as_secs_f64()
    );
    // Let the applied reports land before the fan-out.
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Fan-out of a default change.
    let timeline = BusTimeline::start().await;
    let t0 = Instant::now();
    let t0_wall = wall_nanos();
    put(
        http,
        &format!("{base}/app-versions/{app}"),
        config_doc(1, config_bytes),
    )
    .await;
    let put_done = t0.elapsed();
    let mut got = vec![None; devices];
    let mut sizes = Vec::with_capacity(devices);
    let mut count = 0;
    let deadline = tokio::time::Instant::now() + PHASE_TIMEOUT;
    while count < devices {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(Ev::Push(i, at, bytes))) => {
                if got[i].is_none() {
                    got[i] = Some(since(t0_wall, at));
                    sizes.push(bytes);
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
        "fan-out of one default change to {kind} devices: {count}/{devices} devices in {} (PUT answered after {}); per device p50 {} p99 {}; {}",
        ms(lat.last().copied().unwrap_or_default()),
        ms(put_done),
        ms(percentile(&lat, 0.50)),
        ms(percentile(&lat, 0.99)),
        bytes_summary(&sizes),
    );
    if let Some(timeline) = timeline {
        timeline.report(t0_wall).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    while rx.try_recv().is_ok() {}
    (running, rx)
}

/// `E2E_TIMELINE=<nats url>`: every message on that NATS server during the fan-out
/// (a `>` subscription), reported by subject after it as count and first / p50 /
/// p99 / last arrival after the PUT, so that the stage holding up the fan-out
/// (ECR's announcements, CMX's 6/CDTP requests, ECR's answers, CMX's pushes) shows.
/// Subjects are grouped with their endpoint- and inbox-specific tokens dropped.
struct BusTimeline {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Vec<(String, u128)>>,
}

impl BusTimeline {
    async fn start() -> Option<Self> {
        let url = std::env::var("E2E_TIMELINE").ok()?;
        let client = async_nats::connect(url.as_str())
            .await
            .expect("E2E_TIMELINE: connect to NATS");
        let mut sub = client.subscribe(">").await.expect("subscribe >");
        client.flush().await.expect("flush the subscription");
        let (stop, mut stopped) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            let _client = client;
            let mut seen = Vec::new();
            loop {
                tokio::select! {
                    m = futures::StreamExt::next(&mut sub) => match m {
                        Some(m) => seen.push((subject_group(&m.subject), wall_nanos())),
                        None => break,
                    },
                    _ = &mut stopped => break,
                }
            }
            seen
        });
        Some(Self { stop, task })
    }

    async fn report(self, t0_wall: u128) {
        let _ = self.stop.send(());
        let seen = self.task.await.expect("timeline task");
        let mut by: std::collections::BTreeMap<String, Vec<Duration>> = Default::default();
        for (group, at) in seen {
            by.entry(group).or_default().push(since(t0_wall, at));
        }
        println!(
            "bus timeline (E2E_TIMELINE), after the PUT: subject: count, first / p50 / p99 / last"
        );
        let mut rows: Vec<_> = by.into_iter().collect();
        rows.sort_by_key(|(_, t)| std::cmp::Reverse(t.len()));
        for (group, mut t) in rows {
            t.sort();
            println!(
                "  {group}: {}, {} / {} / {} / {}",
                t.len(),
                ms(t[0]),
                ms(percentile(&t, 0.50)),
                ms(percentile(&t, 0.99)),
                ms(t[t.len() - 1]),
            );
        }
    }
}

/// A subject with its per-request tokens dropped: `_INBOX.…` and `$JS.…`/`$KV.…` keep
/// their first token, 3/ISM subjects their first five (`kaa.v1.replica.cmx-2.cdtp`
/// and so on, which names the replica) plus the last two.
fn subject_group(subject: &str) -> String {
    let tokens: Vec<&str> = subject.split('.').collect();
    if tokens[0] != "kaa" || tokens.len() <= 6 {
        if tokens[0] == "kaa" {
            return subject.to_owned();
        }
        return tokens[0].to_owned();
    }
    format!(
        "{}.….{}",
        tokens[..4].join("."),
        tokens[tokens.len() - 2..].join(".")
    )
}

/// `updates` sequential PUTs of one endpoint's own configuration each (a different
/// endpoint each time), timed from just before the PUT until that device has the push.
async fn single_endpoint_updates(
    fleet: &Fleet<'_>,
    updates: usize,
    http: &reqwest::Client,
    base: &str,
    rx: &mut mpsc::UnboundedReceiver<Ev>,
) {
    let mut lat = Vec::with_capacity(updates);
    for k in 0..updates {
        let i = (k * 7919) % fleet.devices;
        let ep = format!("{}-{i}", fleet.prefix);
        let t0 = wall_nanos();
        put(
            http,
            &format!("{base}/endpoints/{ep}/app-versions/{}", fleet.app),
            format!(r#"{{"own":{k}}}"#),
        )
        .await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(Ev::Push(j, at, _))) if j == i => {
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
