//! ECR load generator: PUT and GET throughput and latency over HTTP on loopback,
//! against the raw upsert/select rate of the same store without HTTP, measured in
//! the same run, for the embedded SQLite store and PostgreSQL.
//!
//! ```sh
//! cargo bench -p kaa-examples --bench ecr_load
//! # knobs: ECR_BENCH_REQUESTS (default 4000), ECR_BENCH_CONCURRENCY (default 32),
//! #        ECR_BENCH_STORES (default "sqlite,postgres"), KAA_TEST_POSTGRES_URL,
//! #        ECR_BENCH_CLIENT_THREAD (default 1; 0 runs the load generator's tasks on
//! #        the server's runtime), ECR_BENCH_SERVER_WORKERS (unset: the services'
//! #        multi-threaded runtime, one worker per CPU; 0: a current-thread runtime;
//! #        n: n workers), ECR_BENCH_ROUNDS (default 4),
//! #        ECR_BENCH_PROFILE=get-raw|get-http|health|none (profiling: repeats that
//! #        GET phase 30 more times per round, outside the figures; `none` repeats
//! #        nothing, the base to subtract)
//! ```
//!
//! Besides rate and latency, each row shows the CPU time and the number of times a
//! thread was put on a CPU, per request, summed over this process's threads
//! (`/proc/self/task/*/schedstat`; "n/a" elsewhere; PostgreSQL's own processes are
//! not counted). A third GET row, `GET /health` through the same client and server,
//! measures the HTTP exchange without the store; from it and the raw select rate the
//! bench prints the best rate a GET could reach if the two costs just added up
//! (`1 / (1/raw + 1/health)`), and how much of that bound the GET over HTTP reached.
//!
//! Raw and HTTP phases alternate in rounds (raw PUT, HTTP PUT, raw GET, HTTP GET,
//! repeated `ECR_BENCH_ROUNDS` times, default 4) so that load from other processes on
//! a shared machine weighs on both alike; rates are requests over busy time.
//!
//! Every PUT writes new content (a fresh endpoint slot), so every request is a durable
//! write (SQLite: one fsync'ed WAL commit; PostgreSQL: one committed transaction).
//! GETs read the slots the PUT phase wrote. The HTTP server runs in this process on
//! 127.0.0.1:0 (the in-memory bus, no auth); the load generator is a minimal
//! keep-alive HTTP/1.1 client (one connection per worker, `concurrency` workers sharing
//! `requests` requests), so that its own CPU cost stays small on a small machine. It
//! runs on a runtime of its own, one thread with one event loop, as `wrk` runs one
//! event loop per thread: on the server's multi-threaded runtime its tasks and the
//! server's would wake each other across the two workers (futex wake-ups per request,
//! charged to HTTP). The server keeps the runtime the services run on.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use kaa_examples::ecr::EcrServer;
use kaa_examples::ecr::config::EcrConfig;
use kaa_examples::ecr::model::{AppVersionName, ConfigName, Content, EndpointId, Scope};
use kaa_examples::ecr::store::{self, ConfigStore, Precondition};
use kaa_examples::service::parse_yaml;
use kaa_ism::UnixMillis;

/// Latencies and busy time, accumulated over rounds.
#[derive(Default)]
struct Stats {
    latencies: Vec<Duration>,
    elapsed: Duration,
    /// CPU time and times scheduled in, summed over this process's threads (Linux).
    sched: Option<Sched>,
}

/// What the kernel's scheduler accounted to this process's threads: CPU time and the
/// number of times a thread was put on a CPU (each one follows a wake-up or a
/// preemption), from `/proc/self/task/*/schedstat`. `None` where that is unavailable.
#[derive(Clone, Copy, Default)]
struct Sched {
    cpu: Duration,
    runs: u64,
}

impl Sched {
    fn now() -> Option<Self> {
        let mut total = Sched::default();
        for task in std::fs::read_dir("/proc/self/task").ok()? {
            let path = task.ok()?.path().join("schedstat");
            let Ok(text) = std::fs::read_to_string(path) else {
                continue; // the thread exited meanwhile
            };
            let mut fields = text.split_whitespace().map(|f| f.parse::<u64>().ok());
            let cpu = fields.next()??;
            let _waiting = fields.next()??;
            let runs = fields.next()??;
            total.cpu += Duration::from_nanos(cpu);
            total.runs += runs;
        }
        Some(total)
    }

    fn add_delta(acc: &mut Option<Sched>, before: Option<Sched>, after: Option<Sched>) {
        if let (Some(b), Some(a)) = (before, after) {
            let sum = acc.get_or_insert_with(Sched::default);
            sum.cpu += a.cpu.saturating_sub(b.cpu);
            sum.runs += a.runs.saturating_sub(b.runs);
        }
    }
}

impl Stats {
    /// CPU microseconds and scheduler runs per request, or "n/a".
    fn per_request(&self) -> (String, String) {
        match self.sched {
            Some(s) if !self.latencies.is_empty() => {
                let n = self.latencies.len() as f64;
                (
                    format!("{:.1}", s.cpu.as_secs_f64() * 1e6 / n),
                    format!("{:.1}", s.runs as f64 / n),
                )
            }
            _ => ("n/a".into(), "n/a".into()),
        }
    }

    fn rate(&self) -> f64 {
        self.latencies.len() as f64 / self.elapsed.as_secs_f64()
    }

    fn percentile(&self, p: f64) -> Duration {
        let mut all = self.latencies.clone();
        all.sort();
        let i = ((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1));
        all.get(i).copied().unwrap_or_default()
    }
}

/// Runs `op(i)` for every i in `range` on `concurrency` workers spawned on `runtime`,
/// each worker owning a context from `contexts` (a connection, or nothing); adds to
/// `stats`.
async fn drive<C, F, Fut>(
    runtime: &tokio::runtime::Handle,
    stats: &mut Stats,
    range: std::ops::Range<usize>,
    contexts: Vec<C>,
    op: F,
) -> Vec<C>
where
    C: Send + 'static,
    F: Fn(usize, C) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = C> + Send + 'static,
{
    let op = Arc::new(op);
    let end = range.end;
    let next = Arc::new(AtomicUsize::new(range.start));
    let sched_before = Sched::now();
    let started = Instant::now();
    let mut workers = Vec::new();
    for context in contexts {
        let (op, next) = (Arc::clone(&op), Arc::clone(&next));
        workers.push(runtime.spawn(async move {
            let mut context = context;
            let mut latencies = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= end {
                    break;
                }
                let t = Instant::now();
                context = op(i, context).await;
                latencies.push(t.elapsed());
            }
            (latencies, context)
        }));
    }
    let mut contexts = Vec::new();
    for w in workers {
        let (latencies, context) = w.await.expect("worker");
        stats.latencies.extend(latencies);
        contexts.push(context);
    }
    stats.elapsed += started.elapsed();
    Sched::add_delta(&mut stats.sched, sched_before, Sched::now());
    contexts
}

/// One keep-alive HTTP/1.1 connection: writes a request, reads the response head
/// and a `Content-Length` body, checks for 200. A deliberately tiny client, so the
/// load generator's own cost stays small next to the server's.
struct Connection {
    stream: tokio::net::TcpStream,
    buf: Vec<u8>,
}

impl Connection {
    async fn open(addr: std::net::SocketAddr) -> Self {
        let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        stream.set_nodelay(true).expect("nodelay");
        Self {
            stream,
            buf: Vec::with_capacity(4096),
        }
    }

    async fn exchange(&mut self, request: &[u8]) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        self.stream.write_all(request).await.expect("write");
        self.buf.clear();
        loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = std::str::from_utf8(&self.buf[..end]).expect("ascii head");
                assert!(
                    head.starts_with("HTTP/1.1 200"),
                    "unexpected response: {head}"
                );
                let length: usize = head
                    .lines()
                    .find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case("content-length")
                            .then(|| v.trim().parse().ok())?
                    })
                    .expect("content-length");
                let total = end + 4 + length;
                while self.buf.len() < total {
                    let mut chunk = [0u8; 4096];
                    let n = self.stream.read(&mut chunk).await.expect("read");
                    assert!(n > 0, "connection closed");
                    self.buf.extend_from_slice(&chunk[..n]);
                }
                return;
            }
            let mut chunk = [0u8; 4096];
            let n = self.stream.read(&mut chunk).await.expect("read");
            assert!(n > 0, "connection closed");
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

fn scope(prefix: &str, i: usize) -> Scope {
    Scope::Endpoint {
        endpoint_id: EndpointId::new(format!("{prefix}-{i}")).expect("valid"),
        app_version: AppVersionName::new("benchV1").expect("valid"),
    }
}

fn body(i: usize) -> String {
    format!("{{\"sampling\":{i},\"thresholds\":{{\"min\":5,\"max\":90}},\"name\":\"kettle-{i}\"}}")
}

fn put_request(i: usize) -> String {
    let body = body(i);
    format!(
        "PUT /api/v1/endpoints/http-{i}/app-versions/benchV1 HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// `GET /health`: served by the same server and client, without touching the store.
const HEALTH_REQUEST: &[u8] = b"GET /health HTTP/1.1\r\nHost: bench\r\n\r\n";

fn get_request(i: usize) -> String {
    format!("GET /api/v1/endpoints/http-{i}/app-versions/benchV1 HTTP/1.1\r\nHost: bench\r\n\r\n")
}

async fn raw_put(store: Arc<dyn ConfigStore>, prefix: &'static str, i: usize) {
    let value: serde_json::Value = serde_json::from_str(&body(i)).expect("json");
    let content = Content::from_value(&value);
    store
        .put(
            &scope(prefix, i),
            &ConfigName::default_name(),
            &content,
            &Precondition::None,
            UnixMillis(i as i64),
        )
        .await
        .expect("put");
}

async fn raw_get(store: Arc<dyn ConfigStore>, prefix: &'static str, i: usize) {
    store
        .get(&scope(prefix, i), &ConfigName::default_name())
        .await
        .expect("get")
        .expect("present");
}

/// One timed phase of a round.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Store upserts through the `ConfigStore` trait, no HTTP.
    PutRaw,
    /// `PUT /api/v1/endpoints/{id}/app-versions/benchV1`.
    PutHttp,
    /// Store selects through the `ConfigStore` trait, no HTTP.
    GetRaw,
    /// `GET /api/v1/endpoints/{id}/app-versions/benchV1`.
    GetHttp,
    /// `GET /health`: the HTTP exchange without the store.
    Health,
}

impl Phase {
    /// The phase `ECR_BENCH_PROFILE` names (`none` or anything else: no phase).
    fn profiled(name: &str) -> Option<Self> {
        match name {
            "get-raw" => Some(Phase::GetRaw),
            "get-http" => Some(Phase::GetHttp),
            "health" => Some(Phase::Health),
            _ => None,
        }
    }
}

/// What the phases run on: the server's runtime and the store (raw phases), the
/// load generator's runtime (HTTP phases, over the connections passed in).
struct Phases {
    here: tokio::runtime::Handle,
    client: tokio::runtime::Handle,
    store: Arc<dyn ConfigStore>,
    concurrency: usize,
}

impl Phases {
    /// Runs `phase` for the requests in `range`; adds to `stats`; hands the
    /// connections back.
    async fn run(
        &self,
        phase: Phase,
        stats: &mut Stats,
        range: std::ops::Range<usize>,
        connections: Vec<Connection>,
    ) -> Vec<Connection> {
        match phase {
            Phase::PutRaw | Phase::GetRaw => {
                let store = Arc::clone(&self.store);
                let units = vec![(); self.concurrency];
                drive(&self.here, stats, range, units, move |i, ()| {
                    let store = Arc::clone(&store);
                    async move {
                        if phase == Phase::PutRaw {
                            raw_put(store, "raw", i).await
                        } else {
                            raw_get(store, "raw", i).await
                        }
                    }
                })
                .await;
                connections
            }
            Phase::PutHttp | Phase::GetHttp | Phase::Health => {
                drive(
                    &self.client,
                    stats,
                    range,
                    connections,
                    move |i, mut c: Connection| async move {
                        match phase {
                            Phase::PutHttp => c.exchange(put_request(i).as_bytes()).await,
                            Phase::GetHttp => c.exchange(get_request(i).as_bytes()).await,
                            _ => c.exchange(HEALTH_REQUEST).await,
                        }
                        c
                    },
                )
                .await
            }
        }
    }
}

async fn bench_store(
    label: &str,
    url: &str,
    requests: usize,
    concurrency: usize,
    rounds: usize,
    client: &tokio::runtime::Handle,
) -> Vec<Vec<(String, Stats)>> {
    let here = tokio::runtime::Handle::current();
    let store: Arc<dyn ConfigStore> = store::open(url).await.expect("open store");
    let yaml = format!(
        "ecr:\n  http:\n    listen: 127.0.0.1:0\n  store:\n    url: {url}\nauth:\n  enabled: false\n"
    );
    let config: EcrConfig = parse_yaml(&yaml, "bench").expect("config");
    let server = EcrServer::bind(&config, Arc::new(kaa_bus::MemoryBus::new()))
        .await
        .expect("bind");
    let addr = server.local_addr();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(server.run(async move {
        let _ = stop_rx.await;
    }));
    let mut connections = Vec::new();
    for _ in 0..concurrency {
        // Opened on the client runtime, whose reactor then drives them.
        connections.push(client.spawn(Connection::open(addr)).await.expect("open"));
    }
    let units = || vec![(); concurrency];

    // Warm-up (untimed): file growth, pools, statement caches, connections.
    let mut warm = Stats::default();
    let s = Arc::clone(&store);
    drive(
        &here,
        &mut warm,
        0..requests.min(500),
        units(),
        move |i, ()| {
            let s = Arc::clone(&s);
            async move {
                raw_put(Arc::clone(&s), "warm", i).await;
                raw_get(s, "warm", i).await;
            }
        },
    )
    .await;
    connections = drive(
        client,
        &mut warm,
        1_000_000..1_000_000 + requests.min(500),
        connections,
        |i, mut c: Connection| async move {
            c.exchange(put_request(i).as_bytes()).await;
            c.exchange(get_request(i).as_bytes()).await;
            c
        },
    )
    .await;

    let phases = Phases {
        here: here.clone(),
        client: client.clone(),
        store: Arc::clone(&store),
        concurrency,
    };
    let (mut put_raw, mut put_http, mut get_raw, mut get_http, mut health) = (
        Stats::default(),
        Stats::default(),
        Stats::default(),
        Stats::default(),
        Stats::default(),
    );
    let per_round = requests.div_ceil(rounds);
    // Profiling aid: ECR_BENCH_PROFILE=<phase> repeats one GET phase 30 more times per
    // round (figures not kept), so that `perf record` of the run, against one with
    // `none`, shows that phase's cost per symbol (scripts/ecr-get-profile.sh).
    let profile = std::env::var("ECR_BENCH_PROFILE")
        .ok()
        .and_then(|name| Phase::profiled(&name));
    for round in 0..rounds {
        let range = round * per_round..((round + 1) * per_round).min(requests);
        connections = phases
            .run(Phase::PutRaw, &mut put_raw, range.clone(), connections)
            .await;
        connections = phases
            .run(Phase::PutHttp, &mut put_http, range.clone(), connections)
            .await;
        connections = phases
            .run(Phase::GetRaw, &mut get_raw, range.clone(), connections)
            .await;
        connections = phases
            .run(Phase::GetHttp, &mut get_http, range.clone(), connections)
            .await;
        if let Some(phase) = profile {
            let mut discarded = Stats::default();
            for _ in 0..30 {
                connections = phases
                    .run(phase, &mut discarded, range.clone(), connections)
                    .await;
            }
        }
        // The HTTP floor: the same client and server, a route that does no store work.
        connections = phases
            .run(Phase::Health, &mut health, range, connections)
            .await;
    }
    drop(connections);
    let _ = stop_tx.send(());
    let _ = serving.await;
    vec![
        vec![
            (format!("{label} PUT raw upsert"), put_raw),
            (format!("{label} PUT HTTP"), put_http),
        ],
        vec![
            (format!("{label} GET raw select"), get_raw),
            (format!("{label} GET HTTP"), get_http),
            (format!("{label} GET /health HTTP (no store)"), health),
        ],
    ]
}

async fn pg_database() -> Option<(String, String, tokio_postgres::Client)> {
    let admin = std::env::var("KAA_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let (client, conn) = tokio_postgres::connect(&admin, tokio_postgres::NoTls)
        .await
        .ok()?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let name = format!("ecr_bench_{}", uuid::Uuid::new_v4().simple());
    client
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .ok()?;
    let (base, _) = admin.rsplit_once('/')?;
    Some((format!("{base}/{name}"), name, client))
}

fn main() {
    let env = |k: &str, d: usize| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let requests = env("ECR_BENCH_REQUESTS", 4000);
    let concurrency = env("ECR_BENCH_CONCURRENCY", 32);
    let rounds = env("ECR_BENCH_ROUNDS", 4).max(1);
    let stores = std::env::var("ECR_BENCH_STORES").unwrap_or_else(|_| "sqlite,postgres".into());
    // `cargo bench` passes `--bench`; nothing else to parse.
    // The server's (and the raw phase's) runtime: ECR_BENCH_SERVER_WORKERS=0 is a
    // current-thread runtime, n > 0 a multi-threaded one with n workers; default: the
    // multi-threaded runtime the services run on (one worker per CPU).
    let rt = match std::env::var("ECR_BENCH_SERVER_WORKERS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
    {
        Some(0) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        Some(n) => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n)
            .enable_all()
            .build(),
        None => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build(),
    }
    .expect("runtime");
    // The HTTP load generator's own runtime: one thread with its own event loop (as
    // wrk runs one per thread), unless ECR_BENCH_CLIENT_THREAD=0 puts its tasks on the
    // server's runtime, where every wake-up may hand work between the two workers.
    let (client, _client_thread) = if env("ECR_BENCH_CLIENT_THREAD", 1) == 0 {
        (rt.handle().clone(), None)
    } else {
        let client_rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("client runtime");
        let handle = client_rt.handle().clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("load-generator".into())
            .spawn(move || {
                let _ = client_rt.block_on(stopped);
            })
            .expect("client thread");
        (handle, Some((stop, thread)))
    };
    let client = &client;
    rt.block_on(async {
        let mut rows = Vec::new();
        if stores.contains("sqlite") {
            let dir = tempfile::tempdir().expect("tempdir");
            let url = format!("sqlite://{}", dir.path().join("bench.db").display());
            rows.extend(bench_store("SQLite", &url, requests, concurrency, rounds, client).await);
        }
        if stores.contains("postgres") {
            match pg_database().await {
                Some((url, name, admin)) => {
                    rows.extend(bench_store("PostgreSQL", &url, requests, concurrency, rounds, client).await);
                    let _ = admin.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).await;
                }
                None => eprintln!("SKIPPED: ecr_load postgres: PostgreSQL not reachable"),
            }
        }
        println!("\nECR load: {requests} requests per row in {rounds} interleaved rounds, {concurrency} concurrent clients, loopback HTTP/1.1\n");
        println!("| store / operation | req/s | p50 | p99 | HTTP / raw | CPU µs/req | runs/req |");
        println!("|---|---:|---:|---:|---:|---:|---:|");
        for group in &rows {
            let raw_rate = group[0].1.rate();
            for (name, s) in group {
                let ratio = if name.contains("HTTP") { format!("{:.0}%", 100.0 * s.rate() / raw_rate) } else { "—".into() };
                let (cpu, runs) = s.per_request();
                println!(
                    "| {name} | {:.0} | {:.2} ms | {:.2} ms | {ratio} | {cpu} | {runs} |",
                    s.rate(),
                    s.percentile(0.50).as_secs_f64() * 1e3,
                    s.percentile(0.99).as_secs_f64() * 1e3
                );
            }
        }
        // A GET over HTTP does the store's work and the HTTP exchange's: with both
        // measured alone, their costs add up to the best rate a GET can reach.
        println!();
        for group in rows.iter().filter(|g| g.len() == 3) {
            let (raw, health) = (group[0].1.rate(), group[2].1.rate());
            let bound = 1.0 / (1.0 / raw + 1.0 / health);
            println!(
                "{}: store alone {raw:.0}/s + HTTP alone {health:.0}/s -> at best {bound:.0} GETs/s = {:.0}% of raw; measured {:.0}% of that bound",
                group[0].0.trim_end_matches(" GET raw select"),
                100.0 * bound / raw,
                100.0 * group[1].1.rate() / bound,
            );
        }
    });
}
