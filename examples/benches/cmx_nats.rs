//! Load generator: configuration requests per second through the CMX service over
//! NATS, against a raw async-nats relay with the same hops and payload sizes as the
//! ceiling. Loopback only, bounded in time.
//!
//! ```text
//! cargo bench -p kaa-examples --bench cmx_nats
//! CMX_BENCH_SECONDS=5 CMX_BENCH_CONCURRENCY=1,16,64 cargo bench -p kaa-examples --bench cmx_nats
//! ```
//!
//! | variable | meaning | default |
//! |---|---|---|
//! | `CMX_BENCH_SECONDS` | measured seconds per run (after a 1 s warm-up) | 5 |
//! | `CMX_BENCH_CONCURRENCY` | requests in flight, comma-separated list | `1,16,64` |
//! | `CMX_BENCH_ENDPOINTS` | endpoints the requests go to in turn (keep it above the concurrency; fewer make a short profile see the steady state, where the engine knows every endpoint) | 10,000 |
//! | `CMX_BENCH_ROUNDS` | rounds per concurrency (a round: CMX and relay, see `CMX_BENCH_SLICE_MS`); the median ratio is reported | 1 |
//! | `CMX_BENCH_SLICE_MS` | interleaved rounds: both stacks up at once, taking the load by turns in slices this long until each has had `CMX_BENCH_SECONDS`; `0`: CMX's run, then the relay's (which goes first alternating between rounds) | 250 |
//! | `CMX_BENCH_NATS_URL` | an existing NATS server | a private `nats-server` on an ephemeral port |
//! | `CMX_BENCH_TRACING` | `1`: CMX runs with a `tracing` fmt subscriber at `info` (to a sink) | off |
//! | `CMX_BENCH_REPLICAS` | replicas mode: CMX replica counts to compare, e.g. `1,2,3` (no relay run) | off |
//!
//! **Replicas mode** (`CMX_BENCH_REPLICAS=1,2,3`, issue #15): the same CMX run with
//! that many replicas of the instance (`cmx.replicas` on, membership in the
//! private server's JetStream, each replica its own NATS connections), the load
//! unchanged; reported per replica count and concurrency: requests/s, p50/p99, and
//! the share of requests a replica handed over to the endpoint's owner (NATS's
//! queue group gives each replica any request; 1/N of them are its own). On one
//! machine the replicas share its cores, so the figures show the cost of sharing,
//! not capacity.
//!
//! `cargo bench -p kaa-examples --bench cmx_nats_allocs` runs the same bench with a
//! counting allocator and adds heap allocations per request (whole process) for
//! both runs; its throughput figures carry the counting's cost, so the ratio comes
//! from this binary.
//!
//! **CMX run** (4 NATS hops per request): the fake communication service
//! publishes `ClientData` (`{}` to `/config/json`, 10,000 endpoints in turn, so
//! requests do not coalesce; each endpoint's datum encoded once, the request's
//! number written into its correlation ID, so that the generator costs what the
//! relay run's does) with its replica `replyTo` and waits for the
//! `ExtensionData` (decoded, its status checked); CMX sends a `ConfigRequest` to the fake provider, which answers a
//! `ConfigResponse` from memory (Avro decode and encode; a 200-byte configuration);
//! CMX answers the device. Three NATS connections: generator, CMX, provider.
//!
//! **Ceiling** (the same 4 hops, the same payload sizes, subjects of the same shape
//! and length, the same three connections, the same concurrency): generator → relay →
//! provider → relay → generator with raw async-nats, **the same generator and
//! provider** (the same `ClientData`, the same provider decoding each
//! `ConfigRequest` and encoding its `ConfigResponse`, every answer decoded and
//! its status checked); the relay is one task that remembers where to send each
//! answer, as CMX does, reads each message's correlation ID (its first field) and
//! nothing else, and sends a `ConfigRequest` and an `ExtensionData` encoded once
//! with the numbers written in. Only the middle differs, so a CMX that cost
//! nothing would reach 100%. (Until 2026-12-06 the relay run's generator and
//! provider moved opaque bytes and skipped the Avro work the CMX run's did.)
//!
//! **Interleaved rounds** (`CMX_BENCH_SLICE_MS`, 250 by default): on a shared
//! machine the rates move by a fifth from one few-second run to the next, more
//! than CMX's cost moves them, so runs one after the other (`0`) need many
//! rounds to say anything. Instead both stacks are up at once (idle between
//! turns) and take the load by turns in short slices: each slice keeps the
//! concurrency in flight for its length, then sends nothing new until every
//! request is answered, and counts every answer over the time from its first
//! request to its last answer (the ramp up and down weigh on both alike). Which
//! side goes first alternates from pair to pair; a round ends when each side has
//! had `CMX_BENCH_SECONDS`. Besides the rounds' ratios, the summary gives the
//! spread of the slice pairs' ratios.
//!
//! Where `/proc` is there and the bench runs its own `nats-server`, each row also
//! gives the CPU time per request of this process and of `nats-server` in each
//! run: unlike the rates, those hardly move with other load on the machine.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use kaa_bus::Bus;
use kaa_bus::test_support::PrivateNatsServer;
use kaa_ism::avro::{Decode, Encode};
use kaa_testkit::bench::{env_or, percentile};

/// How many endpoints the requests go to in turn (`CMX_BENCH_ENDPOINTS`, default
/// 10,000): more than are ever in flight, so requests do not coalesce.
fn endpoints() -> u64 {
    static ENDPOINTS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *ENDPOINTS.get_or_init(|| env_or("CMX_BENCH_ENDPOINTS", 10_000u64).max(1))
}
const CONFIG: &str = r#"{"sampling":{"intervalMs":200,"batch":16},"thresholds":{"temperature":{"min":-20.5,"max":85.0},"humidity":{"min":10,"max":95}},"network":{"ssid":"kettle-lab","retry":3},"pad":"0123456789abcdef"}"#;
const APP: &str = "smartKettleV1";

#[derive(Debug, Default, Clone, Copy)]
struct Sizes {
    client_data: usize,
    config_request: usize,
    config_response: usize,
    extension_data: usize,
}

/// How hard and how long to push.
#[derive(Debug, Clone, Copy)]
struct Load {
    concurrency: usize,
    warmup: Duration,
    measure: Duration,
}

#[derive(Debug)]
struct Outcome {
    requests: u64,
    /// Every request sent, warm-up included.
    sent: u64,
    per_second: f64,
    p50: Duration,
    p99: Duration,
    /// Heap allocations in the whole process (generator, CMX or relay, provider)
    /// per measured request, when the allocator counts them (`cmx_nats_allocs`).
    allocs_per_request: Option<f64>,
    /// CPU time per measured request, in µs: this process (generator, CMX or
    /// relay, provider; user and system) and the private `nats-server`, from
    /// `/proc` (`None` elsewhere, or with `CMX_BENCH_NATS_URL`).
    cpu_per_request: Option<(f64, f64)>,
}

/// The private `nats-server`'s process ID, for its CPU time.
static NATS_PID: std::sync::OnceLock<u32> = std::sync::OnceLock::new();

/// CPU time so far (user + system, in clock ticks) of process `pid` (`self`
/// for this one), from `/proc/<pid>/stat`.
fn cpu_ticks(pid: &str) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the command name in parentheses: state is field 3, utime 14, stime 15.
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// This process's and the private `nats-server`'s CPU ticks.
fn cpu_now() -> Option<(u64, u64)> {
    let nats = NATS_PID.get()?;
    Some((cpu_ticks("self")?, cpu_ticks(&nats.to_string())?))
}

/// Clock ticks per second (`getconf CLK_TCK`; 100 on Linux).
const TICKS_PER_SECOND: f64 = 100.0;

/// The number of heap allocations made so far in this process, when the bench
/// binary installs a counting allocator (`benches/cmx_nats_allocs.rs`).
pub(crate) static ALLOCATIONS: std::sync::OnceLock<fn() -> u64> = std::sync::OnceLock::new();

fn allocations() -> Option<u64> {
    ALLOCATIONS.get().map(|count| count())
}

/// What the process spent since `start`: CPU ticks of this process and of
/// `nats-server`, and heap allocations (each `None` where not measured).
#[derive(Debug, Clone, Copy, Default)]
struct Spent {
    cpu: Option<(u64, u64)>,
    allocations: Option<u64>,
}

/// A reading to measure [`Spent`] from.
#[derive(Debug, Clone, Copy)]
struct Meter {
    cpu: Option<(u64, u64)>,
    allocations: Option<u64>,
}

impl Meter {
    fn start() -> Self {
        Meter {
            cpu: cpu_now(),
            allocations: allocations(),
        }
    }

    fn spent(self) -> Spent {
        Spent {
            cpu: self
                .cpu
                .zip(cpu_now())
                .map(|((p0, n0), (p1, n1))| (p1.saturating_sub(p0), n1.saturating_sub(n0))),
            allocations: self
                .allocations
                .zip(allocations())
                .map(|(start, end)| end - start),
        }
    }
}

impl Spent {
    /// CPU µs (process, `nats-server`) and allocations per request.
    fn per_request(self, requests: u64) -> (Option<(f64, f64)>, Option<f64>) {
        let requests = requests.max(1) as f64;
        let us = |ticks: u64| ticks as f64 / TICKS_PER_SECOND * 1e6 / requests;
        (
            self.cpu.map(|(p, n)| (us(p), us(n))),
            self.allocations.map(|a| a as f64 / requests),
        )
    }
}

/// The generator's side of one stack (the fake communication service): its
/// connection, the answers' subscription, where requests go, and the requests
/// in flight by number.
struct Generator {
    client: async_nats::Client,
    answers: async_nats::Subscriber,
    subject: String,
    reply: String,
    started: HashMap<u64, Instant>,
    next: u64,
}

impl Generator {
    fn new(
        client: async_nats::Client,
        answers: async_nats::Subscriber,
        subject: String,
        reply: String,
    ) -> Self {
        Generator {
            client,
            answers,
            subject,
            reply,
            started: HashMap::with_capacity(1024),
            next: 0,
        }
    }

    /// Publishes the next request (its endpoint's `ClientData` with the
    /// request's number in its correlation ID).
    async fn send(&mut self, templates: &ClientDataTemplates) {
        let seq = self.next;
        self.next += 1;
        self.started.insert(seq, Instant::now());
        self.client
            .publish_with_reply(
                self.subject.clone(),
                self.reply.clone(),
                templates.request(seq),
            )
            .await
            .expect("publish");
    }

    /// The next answer to a request in flight (decoded and checked by
    /// [`answer_seq`]), with when its request was sent.
    async fn answer(&mut self) -> (Instant, async_nats::Message) {
        loop {
            let Ok(Some(message)) =
                tokio::time::timeout(Duration::from_secs(10), self.answers.next()).await
            else {
                panic!("no answer within 10 s ({} in flight)", self.started.len());
            };
            let Some(seq) = answer_seq(&message) else {
                continue;
            };
            if let Some(at) = self.started.remove(&seq) {
                return (at, message);
            }
        }
    }
}

/// Keeps `concurrency` requests in flight for `warmup + measure` and measures
/// the requests sent after the warm-up and answered before the end.
async fn generate(
    generator: &mut Generator,
    templates: &ClientDataTemplates,
    Load {
        concurrency,
        warmup,
        measure,
    }: Load,
    mut on_answer: impl FnMut(&async_nats::Message),
) -> Outcome {
    let first = generator.next;
    for _ in 0..concurrency {
        generator.send(templates).await;
    }
    let begin = Instant::now();
    let measure_from = begin + warmup;
    let end = measure_from + measure;
    let mut latencies = Vec::with_capacity(1 << 20);
    let mut counted = 0u64;
    let mut meter = None;
    while Instant::now() < end {
        if meter.is_none() && Instant::now() >= measure_from {
            meter = Some(Meter::start());
        }
        let (at, message) = generator.answer().await;
        on_answer(&message);
        let now = Instant::now();
        if at >= measure_from {
            latencies.push(now - at);
            counted += 1;
        }
        generator.send(templates).await;
    }
    let (cpu_per_request, allocs_per_request) = meter
        .map(|m| m.spent().per_request(counted))
        .unwrap_or_default();
    let elapsed = measure.as_secs_f64();
    latencies.sort_unstable();
    Outcome {
        requests: counted,
        sent: generator.next - first,
        per_second: counted as f64 / elapsed,
        p50: percentile(&latencies, 0.50),
        p99: percentile(&latencies, 0.99),
        allocs_per_request,
        cpu_per_request,
    }
}

/// One slice of an interleaved run.
#[derive(Debug, Default)]
struct Slice {
    answered: u64,
    elapsed: Duration,
    latencies: Vec<Duration>,
    spent: Spent,
}

impl Slice {
    fn per_second(&self) -> f64 {
        self.answered as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// One side's outcome over all its slices.
fn outcome_of(slices: Vec<Slice>) -> Outcome {
    let answered: u64 = slices.iter().map(|s| s.answered).sum();
    let elapsed: Duration = slices.iter().map(|s| s.elapsed).sum();
    let spent = Spent {
        cpu: slices.iter().try_fold((0, 0), |(p, n), s| {
            s.spent.cpu.map(|(sp, sn)| (p + sp, n + sn))
        }),
        allocations: slices.iter().map(|s| s.spent.allocations).sum(),
    };
    let mut latencies: Vec<Duration> = slices.into_iter().flat_map(|s| s.latencies).collect();
    latencies.sort_unstable();
    let (cpu_per_request, allocs_per_request) = spent.per_request(answered);
    Outcome {
        requests: answered,
        sent: answered,
        per_second: answered as f64 / elapsed.as_secs_f64().max(1e-9),
        p50: percentile(&latencies, 0.50),
        p99: percentile(&latencies, 0.99),
        allocs_per_request,
        cpu_per_request,
    }
}

/// One slice of an interleaved run: `concurrency` requests kept in flight for
/// `duration`, then no new ones until every request sent is answered. Counts
/// every answer and the time from the first request to the last answer, so
/// that the ramp up and down weigh on both sides alike.
async fn slice(
    generator: &mut Generator,
    templates: &ClientDataTemplates,
    concurrency: usize,
    duration: Duration,
    mut on_answer: impl FnMut(&async_nats::Message),
) -> Slice {
    let meter = Meter::start();
    let begin = Instant::now();
    let end = begin + duration;
    for _ in 0..concurrency {
        generator.send(templates).await;
    }
    let mut slice = Slice::default();
    while !generator.started.is_empty() {
        let (at, message) = generator.answer().await;
        on_answer(&message);
        let now = Instant::now();
        slice.latencies.push(now - at);
        slice.answered += 1;
        if now < end {
            generator.send(templates).await;
        }
    }
    slice.elapsed = begin.elapsed();
    slice.spent = meter.spent();
    slice
}

/// Waits until the server has processed this client's subscriptions (a flush
/// only empties the client's buffer): its own message comes back.
async fn barrier(client: &async_nats::Client) {
    let inbox = client.new_inbox();
    let mut echo = client.subscribe(inbox.clone()).await.unwrap();
    client.publish(inbox, Bytes::new()).await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), echo.next())
        .await
        .expect("the server confirms the subscriptions");
}

async fn connect(url: &str) -> async_nats::Client {
    async_nats::connect(url).await.expect("connect to NATS")
}

/// Request `seq`'s `ClientData`, encoded: correlation ID `kpc-bench-<seq, 10
/// digits>`, the endpoint `seq % endpoints()`.
fn client_data(seq: u64) -> Vec<u8> {
    kaa_esp::ClientData {
        correlation_id: format!("kpc-bench-{seq:010}").into(),
        timestamp: kaa_examples::cmx::now().0,
        timeout: 0,
        app_version_name: APP.into(),
        endpoint_id: Some(format!("bench-endpoint-{:06}", seq % endpoints()).into()),
        resource_path: "/config/json".into(),
        request_id: Some((seq % i32::MAX as u64) as i32),
        payload: b"{}".as_slice().into(),
        config_name: None,
    }
    .to_vec()
}

/// The fake provider's answer to an encoded `ConfigRequest` (the same in both
/// runs): the configuration, from memory, as `kaa_cdtp` answers.
fn provide(request: &[u8]) -> Vec<u8> {
    let request = kaa_cdtp::ConfigRequest::decode(request).expect("ConfigRequest");
    let current = kaa_cdtp::Current::Config {
        config_id: "3f2a9c1e5b7d4e6f8a0b1c2d3e4f5a6b",
        content: CONFIG.as_bytes(),
    };
    let now = kaa_examples::cmx::now().0;
    kaa_cdtp::ConfigResponse::answer(&request, current, now).to_vec()
}

/// The request number of an answer to the generator (the same check in both
/// runs): the `ExtensionData` decoded, its status 200, its correlation ID
/// `kpc-bench-<number>`.
fn answer_seq(m: &async_nats::Message) -> Option<u64> {
    let e = kaa_esp::ExtensionData::decode(&m.payload).ok()?;
    assert_eq!(e.status_code, 200, "{:?}", e.reason_phrase);
    e.correlation_id.strip_prefix("kpc-bench-")?.parse().ok()
}

/// The first field of an Avro record that starts with a `string` (every
/// message's `correlationId`), read without decoding the rest: how the relay
/// finds what it needs in the messages it passes on.
fn first_string(datum: &[u8]) -> Option<&str> {
    kaa_ism::avro::Reader::new(datum, "any")
        .string("correlationId")
        .ok()
}

/// Where the digits of a correlation ID that starts with `marker` begin in an
/// encoded datum (a template's, built here: a missing marker is a bench bug).
fn digits_after(datum: &[u8], marker: &[u8]) -> usize {
    datum
        .windows(marker.len())
        .position(|w| w == marker)
        .expect("the correlation ID is in the datum")
        + marker.len()
}

/// Writes `n` as `digits.len()` decimal digits (zero-padded; the lowest ones
/// if it has more).
fn write_digits(digits: &mut [u8], mut n: u64) {
    for d in digits.iter_mut().rev() {
        *d = b'0' + (n % 10) as u8;
        n /= 10;
    }
}

/// What the relay sends in CMX's place, encoded once: a 6/CDTP `ConfigRequest`
/// to the provider (correlation ID `rly-bench-<20 digits>`, the relay's number
/// for the request) and a 4/ESP `ExtensionData` to the generator (correlation ID
/// `kpc-bench-<10 digits>`, copied from the device's `ClientData`), each written
/// into a copy as `opaque` payloads were. So the provider and the generator do
/// the same work in both runs (decode the request and encode the answer;
/// decode and check every answer) and only the middle differs: CMX decodes,
/// decides and encodes; the relay copies bytes.
struct RelayTemplates {
    config_request: Vec<u8>,
    request_digits_at: usize,
    extension_data: Vec<u8>,
    answer_digits_at: usize,
}

impl RelayTemplates {
    /// `extension_data_len`: the size CMX's answers had (the payload is padded
    /// to it).
    fn new(extension_data_len: usize) -> Self {
        let config_request = kaa_cdtp::ConfigRequest {
            correlation_id: "rly-bench-00000000000000000000".into(),
            timestamp: kaa_examples::cmx::now().0,
            timeout: 5_000,
            app_version_name: APP.into(),
            endpoint_id: "bench-endpoint-000000".into(),
            config_id: None,
            config_name: None,
        }
        .to_vec();
        let answer = |pad: usize| {
            kaa_esp::ExtensionData {
                correlation_id: "kpc-bench-0000000000".into(),
                timestamp: kaa_examples::cmx::now().0,
                timeout: 0,
                app_version_name: Some(APP.into()),
                extension_instance_name: Some("rly-bench".into()),
                endpoint_id: Some("bench-endpoint-000000".into()),
                resource_path: "/config/json".into(),
                request_id: Some(1),
                payload: Some(vec![b' '; pad].into()),
                status_code: 200,
                reason_phrase: None,
            }
            .to_vec()
        };
        let bare = answer(0).len();
        let mut pad = extension_data_len.saturating_sub(bare);
        // The payload's length prefix grows with it.
        while pad > 0 && answer(pad).len() > extension_data_len {
            pad -= 1;
        }
        let extension_data = answer(pad);
        RelayTemplates {
            request_digits_at: digits_after(&config_request, b"rly-bench-"),
            answer_digits_at: digits_after(&extension_data, b"kpc-bench-"),
            config_request,
            extension_data,
        }
    }

    fn config_request(&self, relay_seq: u64) -> Bytes {
        let mut datum = BytesMut::from(&self.config_request[..]);
        let at = self.request_digits_at;
        write_digits(&mut datum[at..at + 20], relay_seq);
        datum.freeze()
    }

    fn extension_data(&self, device_digits: &[u8; 10]) -> Bytes {
        let mut datum = BytesMut::from(&self.extension_data[..]);
        let at = self.answer_digits_at;
        datum[at..at + 10].copy_from_slice(device_digits);
        datum.freeze()
    }
}

/// Every endpoint's encoded `ClientData`, built once ([`client_data`]); request
/// `seq` is its endpoint's with `seq` written into the correlation ID's ten
/// digits. The generator thus spends on a request what the relay run's does (one
/// copy of a payload), not an Avro encode with formatted strings: the ratio is
/// about what lies between generator and provider. The request ID and timestamp
/// are the endpoint's own (timeout 0: never expired).
struct ClientDataTemplates {
    encoded: Vec<Bytes>,
    /// Where the correlation ID's digits start.
    digits_at: usize,
}

impl ClientDataTemplates {
    fn new() -> Self {
        let encoded: Vec<Bytes> = (0..endpoints()).map(|e| client_data(e).into()).collect();
        let digits_at = digits_after(&encoded[0], b"kpc-bench-");
        ClientDataTemplates { encoded, digits_at }
    }

    fn request(&self, seq: u64) -> Bytes {
        let template = &self.encoded[(seq % endpoints()) as usize];
        let mut datum = BytesMut::from(&template[..]);
        write_digits(&mut datum[self.digits_at..self.digits_at + 10], seq);
        datum.freeze()
    }
}

/// One CMX replica's status, its stop signal and its task.
type CmxReplica = (
    kaa_examples::cmx::CmxStatus,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<Result<kaa_examples::cmx::RunReport, kaa_examples::cmx::RunError>>,
);

/// A CMX stack ready for load: CMX (one replica, or `replicas` in a
/// membership), the fake provider and the generator.
struct CmxStack {
    /// Each replica's status, its stop signal and its task.
    cmxs: Vec<CmxReplica>,
    provider_task: tokio::task::JoinHandle<()>,
    /// The sizes the provider saw, and the generator's `ClientData`.
    sizes: Arc<std::sync::Mutex<Sizes>>,
    generator: Generator,
}

async fn start_cmx(
    url: &str,
    tag: &str,
    replicas: Option<usize>,
    templates: &ClientDataTemplates,
) -> CmxStack {
    let cmx_name = format!("cmx-{tag}");
    let provider_name = format!("ecr-{tag}");
    let kpc = format!("kpc-{tag}");
    let kpc_replica = format!("kpc-{tag}-r1");
    let mut cmxs = Vec::new();
    for r in 1..=replicas.unwrap_or(1) {
        let replica = format!("cmx-{tag}-r{r}");
        let membership = if replicas.is_some() {
            "  replicas:\n    enabled: true\n    heartbeat-ms: 200\n    expiry-ms: 1500\n"
        } else {
            ""
        };
        let yaml = format!(
            "service:\n  instance:\n    name: {cmx_name}\n    replica:\n      id: {replica}\n\
             nats:\n  urls: [{url}]\n\
             kaa:\n  cmx:\n    configuration-data-provider:\n      service-instance:\n        name: {provider_name}\n\
             \x20   communication-service:\n      service-instance:\n        name: {kpc}\n\
             cmx:\n  bus: nats\n{membership}"
        );
        let config =
            kaa_examples::cmx::config::CmxServiceConfig::parse(&yaml, "bench").expect("config");
        let bus: Arc<dyn Bus> = Arc::new(
            kaa_bus::NatsBus::connect(&config.nats_config())
                .await
                .expect("CMX bus"),
        );
        let mut service = kaa_examples::cmx::CmxService::bind(&config, bus)
            .await
            .expect("bind");
        if let Some(m) = kaa_examples::cmx::connect_membership(&config)
            .await
            .expect("join the replicas (JetStream)")
        {
            service = service.with_membership(m);
        }
        let status = service.status();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(service.run(async move {
            let _ = stopped.await;
        }));
        cmxs.push((status, stop, task));
    }
    if replicas.is_some() {
        // Every replica sees every other (heartbeats every 200 ms).
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }

    // The provider: answers from memory.
    let provider = connect(url).await;
    let mut requests = provider
        .queue_subscribe(
            format!("kaa.v1.service.{provider_name}.cdtp.request"),
            provider_name.clone(),
        )
        .await
        .unwrap();
    barrier(&provider).await;
    let sizes = Arc::new(std::sync::Mutex::new(Sizes::default()));
    let provider_task = {
        let sizes = Arc::clone(&sizes);
        tokio::spawn(async move {
            // The sizes of the first exchange (the relay's provider takes no
            // lock per request either).
            let mut recorded = false;
            while let Some(m) = requests.next().await {
                let response = provide(&m.payload);
                if !recorded && let Ok(mut s) = sizes.lock() {
                    s.config_request = m.payload.len();
                    s.config_response = response.len();
                    recorded = true;
                }
                if let Some(reply) = m.reply {
                    provider.publish(reply, response.into()).await.unwrap();
                }
            }
        })
    };

    // The communication service: ClientData out, ExtensionData in.
    let client = connect(url).await;
    let reply = format!("kaa.v1.replica.{kpc_replica}.esp.ExtensionData");
    let answers = client.subscribe(reply.clone()).await.unwrap();
    barrier(&client).await;
    let subject = format!("kaa.v1.service.{cmx_name}.esp.ClientData");
    let probe = templates.request(1_234_567);
    let decoded = kaa_esp::ClientData::decode(&probe).expect("a templated ClientData decodes");
    assert_eq!(&*decoded.correlation_id, "kpc-bench-0001234567");
    if let Ok(mut s) = sizes.lock() {
        s.client_data = probe.len();
    }
    CmxStack {
        cmxs,
        provider_task,
        sizes,
        generator: Generator::new(client, answers, subject, reply),
    }
}

impl CmxStack {
    /// Stops CMX and the provider; the sizes seen (without the answers'
    /// `ExtensionData`, which the caller saw) and how many requests the replicas
    /// handed over to one another.
    async fn stop(self) -> (Sizes, f64) {
        let handed_over: f64 = self
            .cmxs
            .iter()
            .map(|(status, _, _)| {
                kaa_testkit::cmx::metric_value(&status.metrics_text(), "cmx_handed_over_total")
            })
            .sum();
        for (_, stop, task) in self.cmxs {
            let _ = stop.send(());
            let _ = task.await;
        }
        self.provider_task.abort();
        let sizes = *self.sizes.lock().unwrap();
        (sizes, handed_over)
    }
}

/// The CMX run with one replica and no membership (`replicas` `None`), or with
/// `replicas` replicas in a membership; the outcome, the sizes and the share of
/// requests handed over between replicas.
async fn run_cmx(
    url: &str,
    load: Load,
    tag: &str,
    replicas: Option<usize>,
    templates: &ClientDataTemplates,
) -> (Outcome, Sizes, f64) {
    let mut stack = start_cmx(url, tag, replicas, templates).await;
    let mut extension_data = 0;
    let result = generate(&mut stack.generator, templates, load, |m| {
        extension_data = m.payload.len()
    })
    .await;
    let (mut sizes, handed_over) = stack.stop().await;
    sizes.extension_data = extension_data;
    let share = handed_over / result.sent.max(1) as f64;
    (result, sizes, share)
}

/// The ceiling's stack ready for load: the relay, the provider and the
/// generator.
struct RawStack {
    relay_task: tokio::task::JoinHandle<()>,
    provider_task: tokio::task::JoinHandle<()>,
    generator: Generator,
}

async fn start_raw(url: &str, sizes: Sizes, tag: &str) -> RawStack {
    // Subjects of the CMX run's shape and length (`cmx-`, `kpc-`, `ecr-` become
    // `rly-`, `gen-`, `prv-`): NATS parses and matches every subject, so shorter
    // ones would make the ceiling cheaper for reasons that are not CMX's work.
    let inbound = format!("kaa.v1.service.rly-{tag}.esp.ClientData");
    let to_provider = format!("kaa.v1.service.prv-{tag}.cdtp.request");
    let relay_replies = format!("kaa.v1.replica.rly-{tag}-r1.cdtp.response");
    let device_replies = format!("kaa.v1.replica.gen-{tag}-r1.esp.ExtensionData");
    let relayed = Arc::new(RelayTemplates::new(sizes.extension_data));

    // The provider: the same as in the CMX run.
    let provider = connect(url).await;
    let mut requests = provider
        .queue_subscribe(to_provider.clone(), "provider".to_owned())
        .await
        .unwrap();
    barrier(&provider).await;
    let provider_task = tokio::spawn(async move {
        while let Some(m) = requests.next().await {
            let response = provide(&m.payload);
            if let Some(reply) = m.reply {
                provider.publish(reply, response.into()).await.unwrap();
            }
        }
    });

    // The relay (in CMX's place): one task, a map from its request number to where
    // the device's answer goes; it reads each message's correlation ID and
    // nothing else.
    let relay = connect(url).await;
    let mut inbound_sub = relay
        .queue_subscribe(inbound.clone(), "relay".to_owned())
        .await
        .unwrap();
    let mut responses = relay.subscribe(relay_replies.clone()).await.unwrap();
    barrier(&relay).await;
    let relay_task = {
        let relay_replies = relay_replies.clone();
        let relayed = Arc::clone(&relayed);
        tokio::spawn(async move {
            let mut waiting: HashMap<u64, (async_nats::Subject, [u8; 10])> = HashMap::new();
            let mut next = 0u64;
            loop {
                tokio::select! {
                    biased;
                    Some(m) = responses.next() => {
                        let Some(id) = first_string(&m.payload)
                            .and_then(|c| c.strip_prefix("rly-bench-"))
                            .and_then(|n| n.parse().ok())
                        else {
                            continue;
                        };
                        if let Some((reply, device)) = waiting.remove(&id) {
                            relay.publish(reply, relayed.extension_data(&device)).await.unwrap();
                        }
                    }
                    Some(m) = inbound_sub.next() => {
                        let device = first_string(&m.payload)
                            .and_then(|c| c.strip_prefix("kpc-bench-"))
                            .and_then(|n| <[u8; 10]>::try_from(n.as_bytes()).ok());
                        let (Some(reply), Some(device)) = (m.reply, device) else { continue };
                        next += 1;
                        waiting.insert(next, (reply, device));
                        relay
                            .publish_with_reply(to_provider.clone(), relay_replies.clone(), relayed.config_request(next))
                            .await
                            .unwrap();
                    }
                    else => break,
                }
            }
        })
    };

    let client = connect(url).await;
    let answers = client.subscribe(device_replies.clone()).await.unwrap();
    barrier(&client).await;
    RawStack {
        relay_task,
        provider_task,
        generator: Generator::new(client, answers, inbound, device_replies),
    }
}

impl RawStack {
    fn stop(self) {
        self.relay_task.abort();
        self.provider_task.abort();
    }
}

async fn run_raw(
    url: &str,
    load: Load,
    sizes: Sizes,
    tag: &str,
    templates: &ClientDataTemplates,
) -> Outcome {
    let mut stack = start_raw(url, sizes, tag).await;
    let result = generate(&mut stack.generator, templates, load, |_| {}).await;
    stack.stop();
    result
}

/// An interleaved round: both stacks up at once, each warmed up for one
/// `load.warmup` slice, then slices of `slice` taken by turns (which side goes
/// first alternating from pair to pair) until each side has had `load.measure`.
/// The CMX and relay outcomes, the sizes, and each pair's CMX / relay ratio.
async fn run_interleaved(
    url: &str,
    load: Load,
    slice_length: Duration,
    tag: &str,
    templates: &ClientDataTemplates,
) -> (Outcome, Outcome, Sizes, Vec<f64>) {
    let c = load.concurrency;
    let mut cmx = start_cmx(url, tag, None, templates).await;
    let mut extension_data = 0;
    slice(&mut cmx.generator, templates, c, load.warmup, |m| {
        extension_data = m.payload.len()
    })
    .await;
    let mut sizes = *cmx.sizes.lock().unwrap();
    sizes.extension_data = extension_data;
    let mut raw = start_raw(url, sizes, tag).await;
    slice(&mut raw.generator, templates, c, load.warmup, |_| {}).await;
    let (mut cmx_slices, mut raw_slices) = (Vec::new(), Vec::new());
    let mut pairs = Vec::new();
    let mut cmx_elapsed = Duration::ZERO;
    while cmx_elapsed < load.measure {
        let (a, b) = if pairs.len() % 2 == 0 {
            let a = slice(&mut cmx.generator, templates, c, slice_length, |_| {}).await;
            let b = slice(&mut raw.generator, templates, c, slice_length, |_| {}).await;
            (a, b)
        } else {
            let b = slice(&mut raw.generator, templates, c, slice_length, |_| {}).await;
            let a = slice(&mut cmx.generator, templates, c, slice_length, |_| {}).await;
            (a, b)
        };
        pairs.push(100.0 * a.per_second() / b.per_second());
        cmx_elapsed += a.elapsed;
        cmx_slices.push(a);
        raw_slices.push(b);
    }
    raw.stop();
    let (mut seen, _) = cmx.stop().await;
    seen.extension_data = extension_data;
    (outcome_of(cmx_slices), outcome_of(raw_slices), seen, pairs)
}

pub(crate) fn main() {
    // `cargo bench` passes `--bench`; a filter argument is not supported.
    let seconds: u64 = env_or("CMX_BENCH_SECONDS", 5);
    // Alternating CMX and relay runs, each `seconds` long (the median ratio is
    // reported): on a shared machine the relay's own rate moves by a third
    // from one run to the next.
    let rounds: usize = env_or("CMX_BENCH_ROUNDS", 1usize).max(1);
    // Interleaved rounds (the default): both stacks up at once, taking the
    // load by turns in slices this long; 0 runs CMX, then the relay.
    let slice_ms: u64 = env_or("CMX_BENCH_SLICE_MS", 250);
    let concurrency: Vec<usize> = std::env::var("CMX_BENCH_CONCURRENCY")
        .unwrap_or_else(|_| "1,16,64".into())
        .split(',')
        .filter_map(|c| c.trim().parse().ok())
        .collect();
    if std::env::var("CMX_BENCH_TRACING").as_deref() == Ok("1") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("info"))
            .with_writer(std::io::sink)
            .try_init();
    }
    let replica_counts: Vec<usize> = std::env::var("CMX_BENCH_REPLICAS")
        .unwrap_or_default()
        .split(',')
        .filter_map(|c| c.trim().parse().ok())
        .filter(|&n| n > 0)
        .collect();
    let jetstream_dir = tempfile::tempdir().expect("temp dir");
    let store_dir = jetstream_dir.path().display().to_string();
    let server;
    let url = match std::env::var("CMX_BENCH_NATS_URL") {
        Ok(url) if !url.is_empty() => url,
        _ => {
            // JetStream only for the replicas' membership.
            let args: &[&str] = if replica_counts.is_empty() {
                &[]
            } else {
                &["-js", "--sd", store_dir.as_str()]
            };
            server = PrivateNatsServer::start_with_args("cmx_nats bench", args)
                .expect("nats-server binary");
            if let Some(pid) = server.pid() {
                let _ = NATS_PID.set(pid);
            }
            server.url()
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let templates = ClientDataTemplates::new();
    let warmup = Duration::from_secs(1);
    let measure = Duration::from_secs(seconds);
    let load = |concurrency| Load {
        concurrency,
        warmup,
        measure,
    };
    if !replica_counts.is_empty() {
        println!(
            "CMX replicas over NATS (4 hops per request, membership in JetStream), {seconds} s per run after 1 s warm-up, NATS at {url}"
        );
        println!();
        println!("| replicas | concurrency | req/s | p50 | p99 | handed over |");
        println!("|---:|---:|---:|---:|---:|---:|");
        runtime.block_on(async {
            for &c in &concurrency {
                for &n in &replica_counts {
                    let (o, _, share) =
                        run_cmx(&url, load(c), &format!("rep{n}c{c}"), Some(n), &templates).await;
                    println!(
                        "| {n} | {c} | {:.0} | {:.0} µs | {:.0} µs | {:.1}% |",
                        o.per_second,
                        o.p50.as_secs_f64() * 1e6,
                        o.p99.as_secs_f64() * 1e6,
                        100.0 * share
                    );
                }
            }
        });
        return;
    }
    if slice_ms > 0 {
        println!(
            "CMX over NATS vs a raw async-nats relay (4 hops each), {seconds} s each per round after 1 s warm-up each, interleaved in {slice_ms} ms slices, NATS at {url}"
        );
    } else {
        println!(
            "CMX over NATS vs a raw async-nats relay (4 hops each), {seconds} s per run after 1 s warm-up, NATS at {url}"
        );
    }
    let mut rows = Vec::new();
    let mut pairs: Vec<(usize, Vec<f64>)> = Vec::new();
    runtime.block_on(async {
        for (i, &c) in concurrency.iter().enumerate() {
            for round in 0..rounds {
                let tag = format!("bench{i}r{round}");
                // Alternate which run goes first, so that a machine slowing down
                // or speeding up over a round weighs on both alike.
                let (cmx, sizes, raw) = if slice_ms > 0 {
                    let (cmx, raw, sizes, ratios) = run_interleaved(
                        &url,
                        load(c),
                        Duration::from_millis(slice_ms),
                        &tag,
                        &templates,
                    )
                    .await;
                    pairs.push((c, ratios));
                    (cmx, sizes, raw)
                } else if round % 2 == 0 {
                    let (cmx, sizes, _) = run_cmx(&url, load(c), &tag, None, &templates).await;
                    let raw = run_raw(&url, load(c), sizes, &tag, &templates).await;
                    (cmx, sizes, raw)
                } else {
                    let sizes = rows
                        .last()
                        .map(|(_, _, _, sizes)| *sizes)
                        .unwrap_or_default();
                    let raw = run_raw(&url, load(c), sizes, &tag, &templates).await;
                    let (cmx, sizes, _) = run_cmx(&url, load(c), &tag, None, &templates).await;
                    (cmx, sizes, raw)
                };
                if i == 0 && round == 0 {
                    println!(
                        "payload sizes (bytes): ClientData {}, ConfigRequest {}, ConfigResponse {}, ExtensionData {}",
                        sizes.client_data, sizes.config_request, sizes.config_response, sizes.extension_data
                    );
                }
                rows.push((c, cmx, raw, sizes));
            }
        }
    });
    println!();
    let counted = rows
        .iter()
        .any(|(_, cmx, _, _)| cmx.allocs_per_request.is_some());
    let cpu = rows
        .iter()
        .any(|(_, cmx, raw, _)| cmx.cpu_per_request.is_some() && raw.cpu_per_request.is_some());
    println!(
        "| concurrency | CMX req/s | CMX p50 | CMX p99 | raw relay req/s | raw p50 | raw p99 | CMX / raw |{}{}",
        if cpu {
            " CPU µs/req CMX (process + nats-server) | CPU µs/req raw |"
        } else {
            ""
        },
        if counted {
            " allocs/req CMX | allocs/req raw |"
        } else {
            ""
        }
    );
    println!(
        "|---:|---:|---:|---:|---:|---:|---:|---:|{}{}",
        if cpu { "---:|---:|" } else { "" },
        if counted { "---:|---:|" } else { "" }
    );
    for (c, cmx, raw, _) in &rows {
        let cpu = match (cmx.cpu_per_request, raw.cpu_per_request) {
            (Some((ap, an)), Some((bp, bn))) => {
                format!(" {ap:.1} + {an:.1} | {bp:.1} + {bn:.1} |")
            }
            _ => String::new(),
        };
        let allocs = match (cmx.allocs_per_request, raw.allocs_per_request) {
            (Some(a), Some(b)) => format!(" {a:.1} | {b:.1} |"),
            _ => String::new(),
        };
        println!(
            "| {c} | {:.0} | {:.0} µs | {:.0} µs | {:.0} | {:.0} µs | {:.0} µs | {:.0}% |{cpu}{allocs}",
            cmx.per_second,
            cmx.p50.as_secs_f64() * 1e6,
            cmx.p99.as_secs_f64() * 1e6,
            raw.per_second,
            raw.p50.as_secs_f64() * 1e6,
            raw.p99.as_secs_f64() * 1e6,
            100.0 * cmx.per_second / raw.per_second
        );
        let _ = (cmx.requests, raw.requests);
    }
    if rounds > 1 {
        println!();
        for &c in &concurrency {
            let mut ratios: Vec<f64> = rows
                .iter()
                .filter(|(rc, _, _, _)| *rc == c)
                .map(|(_, cmx, raw, _)| 100.0 * cmx.per_second / raw.per_second)
                .collect();
            ratios.sort_by(f64::total_cmp);
            let (cmx_total, raw_total) = rows
                .iter()
                .filter(|(rc, _, _, _)| *rc == c)
                .fold((0.0, 0.0), |(a, b), (_, cmx, raw, _)| {
                    (a + cmx.per_second, b + raw.per_second)
                });
            println!(
                "{c} in flight, {rounds} rounds: CMX / raw median {:.0}% (rounds {}), all rounds together {:.0}%",
                ratios[ratios.len() / 2],
                ratios
                    .iter()
                    .map(|r| format!("{r:.0}%"))
                    .collect::<Vec<_>>()
                    .join(", "),
                100.0 * cmx_total / raw_total
            );
        }
    }
    if slice_ms > 0 {
        println!();
        for &c in &concurrency {
            let mut ratios: Vec<f64> = pairs
                .iter()
                .filter(|(pc, _)| *pc == c)
                .flat_map(|(_, r)| r.iter().copied())
                .collect();
            if ratios.is_empty() {
                continue;
            }
            ratios.sort_by(f64::total_cmp);
            let at = |q: f64| ratios[((ratios.len() - 1) as f64 * q).round() as usize];
            println!(
                "{c} in flight, {} slice pairs: CMX / raw per pair median {:.0}%, quartiles {:.0}–{:.0}%, range {:.0}–{:.0}%",
                ratios.len(),
                at(0.5),
                at(0.25),
                at(0.75),
                at(0.0),
                at(1.0)
            );
        }
    }
}
