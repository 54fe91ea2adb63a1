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
//! requests do not coalesce) with its replica `replyTo` and waits for the
//! `ExtensionData`; CMX sends a `ConfigRequest` to the fake provider, which answers a
//! `ConfigResponse` from memory (Avro decode and encode; a 200-byte configuration);
//! CMX answers the device. Three NATS connections: generator, CMX, provider.
//!
//! **Ceiling** (the same 4 hops, the same payload sizes, subjects of the same shape
//! and length, the same three connections, the same concurrency): generator → relay → provider → relay →
//! generator with raw async-nats and opaque payloads of the sizes measured in the
//! CMX run; the relay is one task that remembers where to send each answer, as CMX
//! does, but decodes and encodes nothing.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use futures::StreamExt;
use kaa_bus::Bus;
use kaa_bus::test_support::PrivateNatsServer;
use kaa_ism::avro::{Decode, Encode};
use kaa_testkit::bench::{env_or, percentile};

const ENDPOINTS: u64 = 10_000;
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
}

/// The number of heap allocations made so far in this process, when the bench
/// binary installs a counting allocator (`benches/cmx_nats_allocs.rs`).
pub(crate) static ALLOCATIONS: std::sync::OnceLock<fn() -> u64> = std::sync::OnceLock::new();

fn allocations() -> Option<u64> {
    ALLOCATIONS.get().map(|count| count())
}

/// Keeps `concurrency` requests in flight for `warmup + measure`; `send(seq)`
/// publishes request `seq`, `key_of` extracts the sequence number from an answer.
async fn generate(
    client: async_nats::Client,
    mut answers: async_nats::Subscriber,
    Load {
        concurrency,
        warmup,
        measure,
    }: Load,
    send: impl Fn(u64) -> (String, String, Bytes),
    key_of: impl Fn(&async_nats::Message) -> Option<u64>,
    mut on_answer: impl FnMut(&async_nats::Message),
) -> Outcome {
    let mut started: HashMap<u64, Instant> = HashMap::with_capacity(concurrency * 2);
    let mut next = 0u64;
    let publish = |seq: u64| {
        let (subject, reply, payload) = send(seq);
        let client = client.clone();
        async move {
            client
                .publish_with_reply(subject, reply, payload)
                .await
                .expect("publish");
        }
    };
    for _ in 0..concurrency {
        started.insert(next, Instant::now());
        publish(next).await;
        next += 1;
    }
    let begin = Instant::now();
    let measure_from = begin + warmup;
    let end = measure_from + measure;
    let mut latencies = Vec::with_capacity(1 << 20);
    let mut counted = 0u64;
    let mut allocs_at_start = None;
    while Instant::now() < end {
        if allocs_at_start.is_none() && Instant::now() >= measure_from {
            allocs_at_start = allocations();
        }
        let Ok(Some(message)) = tokio::time::timeout(Duration::from_secs(10), answers.next()).await
        else {
            panic!("no answer within 10 s ({} in flight)", started.len());
        };
        let Some(seq) = key_of(&message) else {
            continue;
        };
        let Some(at) = started.remove(&seq) else {
            continue;
        };
        on_answer(&message);
        let now = Instant::now();
        if at >= measure_from {
            latencies.push(now - at);
            counted += 1;
        }
        started.insert(next, Instant::now());
        publish(next).await;
        next += 1;
    }
    // Measured: requests sent after the warm-up and answered before the end.
    let allocs_per_request = allocs_at_start
        .zip(allocations())
        .map(|(start, end)| (end - start) as f64 / counted.max(1) as f64);
    let elapsed = measure.as_secs_f64();
    latencies.sort_unstable();
    Outcome {
        requests: counted,
        sent: next,
        per_second: counted as f64 / elapsed,
        p50: percentile(&latencies, 0.50),
        p99: percentile(&latencies, 0.99),
        allocs_per_request,
    }
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

fn client_data(seq: u64) -> Vec<u8> {
    kaa_esp::ClientData {
        correlation_id: format!("kpc-bench-{seq:010}").into(),
        timestamp: kaa_examples::cmx::now().0,
        timeout: 0,
        app_version_name: APP.into(),
        endpoint_id: Some(format!("bench-endpoint-{:06}", seq % ENDPOINTS).into()),
        resource_path: "/config/json".into(),
        request_id: Some((seq % i32::MAX as u64) as i32),
        payload: b"{}".as_slice().into(),
        config_name: None,
    }
    .to_vec()
}

/// The CMX run with one replica and no membership (`replicas` `None`), or with
/// `replicas` replicas in a membership; the outcome, the sizes and the share of
/// requests handed over between replicas.
async fn run_cmx(
    url: &str,
    load: Load,
    tag: &str,
    replicas: Option<usize>,
) -> (Outcome, Sizes, f64) {
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
            while let Some(m) = requests.next().await {
                let request = kaa_cdtp::ConfigRequest::decode(&m.payload).expect("ConfigRequest");
                let current = kaa_cdtp::Current::Config {
                    config_id: "3f2a9c1e5b7d4e6f8a0b1c2d3e4f5a6b",
                    content: CONFIG.as_bytes(),
                };
                let now = kaa_examples::cmx::now().0;
                let response = kaa_cdtp::ConfigResponse::answer(&request, current, now).to_vec();
                if let Ok(mut s) = sizes.lock() {
                    s.config_request = m.payload.len();
                    s.config_response = response.len();
                }
                if let Some(reply) = m.reply {
                    provider.publish(reply, response.into()).await.unwrap();
                }
            }
        })
    };

    // The communication service: ClientData out, ExtensionData in.
    let generator = connect(url).await;
    let reply = format!("kaa.v1.replica.{kpc_replica}.esp.ExtensionData");
    let answers = generator.subscribe(reply.clone()).await.unwrap();
    barrier(&generator).await;
    let subject = format!("kaa.v1.service.{cmx_name}.esp.ClientData");
    let sample = client_data(0).len();
    let mut extension_data = 0;
    let result = generate(
        generator,
        answers,
        load,
        |seq| (subject.clone(), reply.clone(), client_data(seq).into()),
        |m| {
            let e = kaa_esp::ExtensionData::decode(&m.payload).ok()?;
            assert_eq!(e.status_code, 200, "{:?}", e.reason_phrase);
            e.correlation_id.strip_prefix("kpc-bench-")?.parse().ok()
        },
        |m| extension_data = m.payload.len(),
    )
    .await;
    let handed_over: f64 = cmxs
        .iter()
        .map(|(status, _, _)| {
            kaa_testkit::cmx::metric_value(&status.metrics_text(), "cmx_handed_over_total")
        })
        .sum();
    for (_, stop, task) in cmxs {
        let _ = stop.send(());
        let _ = task.await;
    }
    provider_task.abort();
    let mut sizes = *sizes.lock().unwrap();
    sizes.client_data = sample;
    sizes.extension_data = extension_data;
    let share = handed_over / result.sent.max(1) as f64;
    (result, sizes, share)
}

fn opaque(seq: u64, size: usize) -> Bytes {
    let mut b = BytesMut::with_capacity(size.max(8));
    b.put_u64(seq);
    b.resize(size.max(8), 0xa5);
    b.freeze()
}

fn seq_of(payload: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(payload.get(..8)?.try_into().ok()?))
}

async fn run_raw(url: &str, load: Load, sizes: Sizes, tag: &str) -> Outcome {
    // Subjects of the CMX run's shape and length (`cmx-`, `kpc-`, `ecr-` become
    // `rly-`, `gen-`, `prv-`): NATS parses and matches every subject, so shorter
    // ones would make the ceiling cheaper for reasons that are not CMX's work.
    let inbound = format!("kaa.v1.service.rly-{tag}.esp.ClientData");
    let to_provider = format!("kaa.v1.service.prv-{tag}.cdtp.request");
    let relay_replies = format!("kaa.v1.replica.rly-{tag}-r1.cdtp.response");
    let device_replies = format!("kaa.v1.replica.gen-{tag}-r1.esp.ExtensionData");

    // The provider: echo the sequence number in a ConfigResponse-sized payload.
    let provider = connect(url).await;
    let mut requests = provider
        .queue_subscribe(to_provider.clone(), "provider".to_owned())
        .await
        .unwrap();
    barrier(&provider).await;
    let provider_task = tokio::spawn(async move {
        while let Some(m) = requests.next().await {
            let seq = seq_of(&m.payload).unwrap_or(0);
            if let Some(reply) = m.reply {
                provider
                    .publish(reply, opaque(seq, sizes.config_response))
                    .await
                    .unwrap();
            }
        }
    });

    // The relay (in CMX's place): one task, a map from its request number to where
    // the device's answer goes.
    let relay = connect(url).await;
    let mut inbound_sub = relay
        .queue_subscribe(inbound.clone(), "relay".to_owned())
        .await
        .unwrap();
    let mut responses = relay.subscribe(relay_replies.clone()).await.unwrap();
    barrier(&relay).await;
    let relay_task = {
        let relay_replies = relay_replies.clone();
        tokio::spawn(async move {
            let mut waiting: HashMap<u64, (async_nats::Subject, u64)> = HashMap::new();
            let mut next = 0u64;
            loop {
                tokio::select! {
                    biased;
                    Some(m) = responses.next() => {
                        let Some(id) = seq_of(&m.payload) else { continue };
                        if let Some((reply, seq)) = waiting.remove(&id) {
                            relay.publish(reply, opaque(seq, sizes.extension_data)).await.unwrap();
                        }
                    }
                    Some(m) = inbound_sub.next() => {
                        let (Some(reply), Some(seq)) = (m.reply, seq_of(&m.payload)) else { continue };
                        next += 1;
                        waiting.insert(next, (reply, seq));
                        relay
                            .publish_with_reply(to_provider.clone(), relay_replies.clone(), opaque(next, sizes.config_request))
                            .await
                            .unwrap();
                    }
                    else => break,
                }
            }
        })
    };

    let generator = connect(url).await;
    let answers = generator.subscribe(device_replies.clone()).await.unwrap();
    barrier(&generator).await;
    let result = generate(
        generator,
        answers,
        load,
        |seq| {
            (
                inbound.clone(),
                device_replies.clone(),
                opaque(seq, sizes.client_data),
            )
        },
        |m| seq_of(&m.payload),
        |_| {},
    )
    .await;
    relay_task.abort();
    provider_task.abort();
    result
}

/// The whole bench (also the entry point of `cmx_nats_allocs`, which installs a
/// counting allocator first).
pub(crate) fn main() {
    // `cargo bench` passes `--bench`; a filter argument is not supported.
    let seconds: u64 = env_or("CMX_BENCH_SECONDS", 5);
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
            server.url()
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
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
                        run_cmx(&url, load(c), &format!("rep{n}c{c}"), Some(n)).await;
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
    println!(
        "CMX over NATS vs a raw async-nats relay (4 hops each), {seconds} s per run after 1 s warm-up, NATS at {url}"
    );
    let mut rows = Vec::new();
    runtime.block_on(async {
        for (i, &c) in concurrency.iter().enumerate() {
            let (cmx, sizes, _) = run_cmx(&url, load(c), &format!("bench{i}"), None).await;
            let raw = run_raw(&url, load(c), sizes, &format!("bench{i}")).await;
            if i == 0 {
                println!(
                    "payload sizes (bytes): ClientData {}, ConfigRequest {}, ConfigResponse {}, ExtensionData {}",
                    sizes.client_data, sizes.config_request, sizes.config_response, sizes.extension_data
                );
            }
            rows.push((c, cmx, raw));
        }
    });
    println!();
    let counted = rows
        .iter()
        .any(|(_, cmx, _)| cmx.allocs_per_request.is_some());
    println!(
        "| concurrency | CMX req/s | CMX p50 | CMX p99 | raw relay req/s | raw p50 | raw p99 | CMX / raw |{}",
        if counted {
            " allocs/req CMX | allocs/req raw |"
        } else {
            ""
        }
    );
    println!(
        "|---:|---:|---:|---:|---:|---:|---:|---:|{}",
        if counted { "---:|---:|" } else { "" }
    );
    for (c, cmx, raw) in &rows {
        let allocs = match (cmx.allocs_per_request, raw.allocs_per_request) {
            (Some(a), Some(b)) => format!(" {a:.1} | {b:.1} |"),
            _ => String::new(),
        };
        println!(
            "| {c} | {:.0} | {:.0} µs | {:.0} µs | {:.0} | {:.0} µs | {:.0} µs | {:.0}% |{allocs}",
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
}
