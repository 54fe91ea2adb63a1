//! CMX engine throughput on one core, with an in-memory provider. Avro encoding
//! and decoding are not included (they are the codecs' benchmarks): inputs are
//! decoded structs, outputs are drained structs.
//!
//! - `request_answered`: a device request (`ClientData`) → CDTP request → the
//!   provider's answer → `ExtensionData`. Two engine steps (two `handle_*`
//!   calls) per iteration; throughput is reported in steps.
//! - `applied_report`: an applied report → `ConfigApplied` + empty response.
//!   One step.
//! - `push_fan_out_100k`: a configuration update for each of 100,000 connected,
//!   observing endpoints → a CDTP request each → the answers → 100,000 pushes.
//!   Two steps per push; throughput is reported in steps.
//!
//! Run: `cargo bench -p kaa-cmp --bench engine -- --warm-up-time 1 --measurement-time 3`

#[path = "support/mod.rs"]
mod common;

use std::borrow::Cow;
use std::hint::black_box;

use common::*;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use kaa_cdtp::ConfigUpdated;
use kaa_cmp::engine::Cmx;
use kaa_ism::UnixMillis;

const NOW: UnixMillis = UnixMillis(1_000_000);

fn request_answered(c: &mut Criterion) {
    let provider = Provider {
        id: "6046b576591c75fd68ab67f7e4475311".into(),
        per_endpoint: false,
    };
    check_answers(&provider);
    let endpoints: Vec<String> = (0..10_000).map(endpoint_id).collect();
    let requests: Vec<_> = endpoints
        .iter()
        .map(|ep| client_data(ep, "/config/json", br#"{"observe":true}"#))
        .collect();
    let applied: Vec<_> = endpoints
        .iter()
        .map(|ep| {
            client_data(
                ep,
                "/applied/json",
                br#"{"configId":"6046b576591c75fd68ab67f7e4475311"}"#,
            )
        })
        .collect();
    let mut cmx = Cmx::new(config()).unwrap();

    let mut group = c.benchmark_group("engine");
    group.throughput(Throughput::Elements(2));
    let mut i = 0;
    group.bench_function("request_answered", |b| {
        b.iter(|| {
            let cd = &requests[i % requests.len()];
            i += 1;
            cmx.handle_client_data(cd, Some(REPLY_TO), NOW);
            black_box(drain(&mut cmx, &provider, NOW))
        })
    });
    group.throughput(Throughput::Elements(1));
    group.bench_function("applied_report", |b| {
        b.iter(|| {
            let cd = &applied[i % applied.len()];
            i += 1;
            cmx.handle_client_data(cd, Some(REPLY_TO), NOW);
            black_box(drain(&mut cmx, &provider, NOW))
        })
    });
    group.finish();
}

fn push_fan_out(c: &mut Criterion) {
    const N: usize = 100_000;
    let mut provider = Provider {
        id: "v0".into(),
        per_endpoint: false,
    };
    check_answers(&provider);
    let endpoints: Vec<String> = (0..N).map(endpoint_id).collect();
    let mut cmx = Cmx::new(config()).unwrap();
    for ep in &endpoints {
        cmx.handle_client_data(
            &client_data(ep, "/config/json", br#"{"observe":true}"#),
            Some(REPLY_TO),
            NOW,
        );
        drain(&mut cmx, &provider, NOW);
    }
    let mut version = 0u64;
    let mut group = c.benchmark_group("engine");
    group.sample_size(10);
    group.throughput(Throughput::Elements(2 * N as u64));
    group.bench_function("push_fan_out_100k", |b| {
        b.iter(|| {
            version += 1;
            provider.id = format!("v{version}");
            let mut pushed = 0;
            for ep in &endpoints {
                let update = ConfigUpdated {
                    correlation_id: Cow::Borrowed("upd"),
                    timestamp: NOW.0,
                    timeout: 0,
                    app_version_name: Cow::Borrowed(AV),
                    endpoint_id: Cow::Borrowed(ep),
                    config_id: Cow::Borrowed(&provider.id),
                    content_type: Cow::Borrowed(kaa_cdtp::APPLICATION_JSON),
                    content: Cow::Borrowed(CONFIG),
                    originator_replica_id: None,
                    config_name: None,
                };
                cmx.handle_config_updated(&update, NOW);
                pushed += drain(&mut cmx, &provider, NOW);
            }
            assert_eq!(pushed, N);
        })
    });
    group.finish();
}

criterion_group!(benches, request_answered, push_fan_out);
criterion_main!(benches);
