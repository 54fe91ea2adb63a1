//! The `cmx_nats` bench with a counting global allocator: the same runs, plus heap
//! allocations per request (the whole process: generator, CMX or relay, provider)
//! for the CMX run and the raw relay. Counting costs an atomic add per allocation,
//! so take throughput and its ratio from `cmx_nats`.
//!
//! ```text
//! CMX_BENCH_SECONDS=3 CMX_BENCH_CONCURRENCY=64 cargo bench -p kaa-examples --bench cmx_nats_allocs
//! ```

use std::alloc::System;

use stats_alloc::{INSTRUMENTED_SYSTEM, StatsAlloc};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

#[path = "cmx_nats.rs"]
mod cmx_nats;

fn main() {
    let _ = cmx_nats::ALLOCATIONS.set(|| GLOBAL.stats().allocations as u64);
    cmx_nats::main();
}
