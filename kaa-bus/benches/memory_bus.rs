//! MemoryBus throughput: publish + receive with fan-out, queue groups among many
//! non-matching subscriptions, and a request/reply round trip.

use std::{hint::black_box, sync::Arc, time::Duration};

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use futures::{FutureExt, StreamExt};
use kaa_bus::{Bus, MemoryBus, Subscription};

fn drain(subs: &mut [Subscription]) -> usize {
    let mut n = 0;
    for sub in subs {
        while let Some(Some(m)) = sub.next().now_or_never() {
            black_box(m);
            n += 1;
        }
    }
    n
}

fn publish_receive(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let payload = Bytes::from(vec![0x5a; 256]);
    let mut group = c.benchmark_group("memory_bus/publish_receive");
    group.throughput(Throughput::Elements(1));
    for fanout in [1usize, 10] {
        let bus = MemoryBus::new();
        let mut subs: Vec<Subscription> = runtime.block_on(async {
            let mut subs = Vec::new();
            for _ in 0..fanout {
                subs.push(
                    bus.subscribe("kaa.v1.events.*.endpoint.>", None)
                        .await
                        .expect("subscribe"),
                );
            }
            subs
        });
        group.bench_function(format!("{fanout}_subscribers"), |b| {
            b.iter(|| {
                bus.publish(
                    "kaa.v1.events.kpc.endpoint.connectivity.connected",
                    payload.clone(),
                )
                .now_or_never()
                .expect("publish is immediate")
                .expect("publish");
                assert_eq!(drain(&mut subs), fanout);
            })
        });
    }

    // One queue group of 4 among 100 subscriptions that do not match.
    let bus = MemoryBus::new();
    let (mut members, _others) = runtime.block_on(async {
        let mut members = Vec::new();
        for _ in 0..4 {
            members.push(
                bus.subscribe("kaa.v1.service.ecr.cdtp.request", Some("ecr"))
                    .await
                    .expect("subscribe"),
            );
        }
        let mut others = Vec::new();
        for i in 0..100 {
            others.push(
                bus.subscribe(&format!("kaa.v1.service.svc{i}.esp.>"), None)
                    .await
                    .expect("subscribe"),
            );
        }
        (members, others)
    });
    group.bench_function("queue_group_of_4_among_100", |b| {
        b.iter(|| {
            bus.publish("kaa.v1.service.ecr.cdtp.request", payload.clone())
                .now_or_never()
                .expect("publish is immediate")
                .expect("publish");
            assert_eq!(drain(&mut members), 1);
        })
    });
    group.finish();
}

fn request_reply(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let bus: Arc<dyn Bus> = Arc::new(MemoryBus::new());
    runtime.block_on(async {
        let mut requests = bus
            .subscribe("kaa.v1.service.ecr.cdtp.request", Some("ecr"))
            .await
            .expect("subscribe");
        let responder = Arc::clone(&bus);
        tokio::spawn(async move {
            while let Some(request) = requests.next().await {
                if let Some(reply_to) = request.reply_to {
                    let _ = responder.publish(&reply_to, request.payload).await;
                }
            }
        });
    });
    let payload = Bytes::from(vec![0x5a; 256]);
    let mut group = c.benchmark_group("memory_bus");
    group.throughput(Throughput::Elements(1));
    group.bench_function("request_reply", |b| {
        b.iter(|| {
            runtime.block_on(async {
                let reply = bus
                    .request(
                        "kaa.v1.service.ecr.cdtp.request",
                        payload.clone(),
                        Duration::from_secs(1),
                    )
                    .await
                    .expect("reply");
                black_box(reply);
            })
        })
    });
    group.finish();
}

criterion_group!(benches, publish_receive, request_reply);
criterion_main!(benches);
