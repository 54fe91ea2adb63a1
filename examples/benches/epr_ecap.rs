//! 16/ECAP endpoint token validations per second over NATS, against the same
//! request/reply exchange with no work (a responder that answers every request
//! with one pre-encoded 200 response), measured in the same run.
//!
//! ```sh
//! cargo bench -p kaa-examples --bench epr_ecap
//! # knobs: EPR_BENCH_REQUESTS (default 20000), EPR_BENCH_CONCURRENCY (default 64),
//! #        EPR_BENCH_ENDPOINTS (default 1000), EPR_BENCH_ROUNDS (default 3),
//! #        EPR_BENCH_STORE (default sqlite; or a postgres:// URL), KAA_TEST_NATS_URL
//! ```
//!
//! The register runs in this process with the SQLite store in a temp dir and
//! answers on NATS (`kaa.v1.service.<instance>.ecap.ep-token-request`); the
//! requesters are `concurrency` tasks sharing `requests` requests, each a real
//! `EndpointTokenValidationRequest` with one of the provisioned tokens (so every
//! validation is a SHA-256 and an indexed store read). The baseline responder
//! subscribes to another subject in the same process and answers at once. Phases
//! alternate (baseline, register) for `rounds` rounds; rates are requests over
//! wall time.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use kaa_bus::{Bus, NatsBus, NatsConfig};
use kaa_ecap::{EndpointTokenValidationRequest, EndpointTokenValidationResponse};
use kaa_examples::epr::EprServer;
use kaa_examples::epr::config::EprConfig;
use kaa_examples::service::auth::Authenticator;
use kaa_examples::service::parse_yaml;
use kaa_ism::avro::{Decode, Encode};
use kaa_testkit::bench::env_or;

async fn run_phase(
    bus: &Arc<dyn Bus>,
    subject: &str,
    tokens: &Arc<Vec<String>>,
    requests: usize,
    concurrency: usize,
) -> Duration {
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let (bus, subject, tokens, next) = (
            Arc::clone(bus),
            subject.to_owned(),
            Arc::clone(tokens),
            Arc::clone(&next),
        );
        tasks.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= requests {
                    break;
                }
                let request = EndpointTokenValidationRequest {
                    correlation_id: uuid::Uuid::new_v4().to_string().into(),
                    timestamp: kaa_examples::service::now().0,
                    timeout: 10_000,
                    app_name: "meterV1".into(),
                    token: tokens[i % tokens.len()].as_str().into(),
                };
                let reply = bus
                    .request(
                        &subject,
                        Bytes::from(request.to_vec()),
                        Duration::from_secs(10),
                    )
                    .await
                    .expect("an answer");
                let response =
                    EndpointTokenValidationResponse::decode(&reply.payload).expect("a response");
                assert_eq!(response.status_code, 200);
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.expect("requester");
    }
    started.elapsed()
}

#[tokio::main]
async fn main() {
    let requests = env_or("EPR_BENCH_REQUESTS", 20_000);
    let concurrency = env_or("EPR_BENCH_CONCURRENCY", 64);
    let endpoints = env_or("EPR_BENCH_ENDPOINTS", 1000);
    let rounds = env_or("EPR_BENCH_ROUNDS", 3);
    let url = kaa_bus::test_support::NATS.url();
    let Some(url) = kaa_bus::test_support::NATS
        .require("epr_ecap")
        .or(Some(url))
        .filter(|u| kaa_bus::test_support::is_reachable(u, Duration::from_secs(2)))
    else {
        eprintln!("epr_ecap: NATS not reachable; nothing measured");
        return;
    };
    let bus: Arc<dyn Bus> = Arc::new(NatsBus::connect(&NatsConfig::new([url])).await.unwrap());
    let dir = tempfile::tempdir().unwrap();
    let store = std::env::var("EPR_BENCH_STORE")
        .unwrap_or_else(|_| format!("sqlite://{}", dir.path().join("epr.db").display()));
    let instance = format!("eprbench{}", std::process::id());
    let config: EprConfig = parse_yaml(
        &format!(
            "service:\n  instance:\n    name: {instance}\nepr:\n  http:\n    listen: 127.0.0.1:0\n  store:\n    url: {store}\nauth:\n  enabled: false\n"
        ),
        "bench",
    )
    .unwrap();
    let server = EprServer::bind_with_auth(&config, Arc::clone(&bus), Authenticator::disabled())
        .await
        .unwrap();
    let batch = (0..endpoints)
        .map(|i| kaa_examples::epr::model::NewEndpoint {
            endpoint_id: kaa_examples::epr::model::EndpointId::new(format!("meter-{i}")).unwrap(),
            app_version: kaa_examples::epr::model::AppVersionName::new("meterV1").unwrap(),
            metadata: Default::default(),
        })
        .collect();
    let provisioned = server
        .epr()
        .register_batch(batch, true, kaa_examples::service::now())
        .await
        .unwrap();
    let tokens: Arc<Vec<String>> = Arc::new(
        provisioned
            .into_iter()
            .map(|p| p.token.unwrap().token)
            .collect(),
    );
    tokio::spawn(server.run(std::future::pending()));

    // The baseline: the same exchange, answered at once with a fixed response.
    let echo_subject = format!("kaa.v1.service.{instance}-echo.ecap.ep-token-request");
    let mut echo = bus.subscribe(&echo_subject, Some("echo")).await.unwrap();
    let canned = Bytes::from(
        EndpointTokenValidationResponse {
            correlation_id: uuid::Uuid::new_v4().to_string().into(),
            timestamp: 0,
            timeout: 10_000,
            token_id: Some(uuid::Uuid::new_v4().to_string().into()),
            endpoint_id: Some("meter-0".into()),
            status_code: 200,
            reason_phrase: None,
        }
        .to_vec(),
    );
    {
        let bus = Arc::clone(&bus);
        tokio::spawn(async move {
            while let Some(m) = echo.next().await {
                if let Some(reply) = m.reply_to {
                    let _ = bus.publish(reply.as_str(), canned.clone()).await;
                }
            }
        });
    }
    bus.flush().await.unwrap();
    let epr_subject = kaa_ecap::Exchange::EndpointToken
        .request_subject(&instance)
        .unwrap()
        .to_string();
    // Warm-up.
    run_phase(&bus, &echo_subject, &tokens, 1000, concurrency).await;
    run_phase(&bus, &epr_subject, &tokens, 1000, concurrency).await;
    let (mut base, mut epr) = (Duration::ZERO, Duration::ZERO);
    for _ in 0..rounds {
        base += run_phase(&bus, &echo_subject, &tokens, requests, concurrency).await;
        epr += run_phase(&bus, &epr_subject, &tokens, requests, concurrency).await;
    }
    let total = (requests * rounds) as f64;
    let base_rate = total / base.as_secs_f64();
    let epr_rate = total / epr.as_secs_f64();
    println!(
        "epr_ecap: {requests} requests x {rounds} rounds, {concurrency} concurrent, {endpoints} endpoints, store {}",
        store.split("://").next().unwrap_or("")
    );
    println!("  request/reply, no work:       {base_rate:>10.0} /s");
    println!("  16/ECAP token validation:     {epr_rate:>10.0} /s");
    println!(
        "  ratio validation / no work:   {:>10.2}",
        epr_rate / base_rate
    );
}
