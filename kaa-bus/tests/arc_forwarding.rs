//! A method call on an `Arc<dyn Bus>` resolves to the `Arc` impl of [`Bus`]
//! before it derefs to `dyn Bus`; services hold their bus that way. That impl
//! must hand back the inner bus's future, not box another one around it: the
//! hot path (a CMX publishes twice per device request) paid one more
//! allocation per publish. Counted with a counting global allocator, in a test
//! binary of its own.

use std::sync::Arc;

use bytes::Bytes;
use kaa_bus::{Bus, MemoryBus};
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};

#[global_allocator]
static GLOBAL: &StatsAlloc<std::alloc::System> = &INSTRUMENTED_SYSTEM;

/// Allocations made by `n` publishes through `publish`.
async fn allocations_of(n: u64, publish: impl AsyncFn(Bytes)) -> u64 {
    let payload = Bytes::from_static(b"x");
    // Warm up (lazily created state) before counting.
    publish(payload.clone()).await;
    let region = Region::new(GLOBAL);
    for _ in 0..n {
        publish(payload.clone()).await;
    }
    region.change().allocations as u64
}

#[test]
fn publishing_through_an_arc_dyn_bus_costs_what_the_bus_costs() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let bus = MemoryBus::new();
        let shared: Arc<dyn Bus> = Arc::new(bus.clone());
        let direct = allocations_of(100, async |p| {
            let inner: &dyn Bus = &*shared;
            inner.publish_message("a.b", None, p).await.unwrap();
        })
        .await;
        let through_arc = allocations_of(100, async |p| {
            shared.publish_message("a.b", None, p).await.unwrap();
        })
        .await;
        assert_eq!(
            through_arc, direct,
            "Arc<dyn Bus> adds allocations: {through_arc} vs {direct} for 100 publishes"
        );
    });
}
