//! Bytes of heap per tracked idle endpoint at 1,000,000 endpoints, measured with
//! a counting global allocator (requested bytes: the allocator's own per-block
//! overhead is not included).
//!
//! Each endpoint has a 36-byte UUID-shaped ID, has requested its default
//! configuration with `observe: true`, received it, reported it applied, and is
//! idle (nothing in flight). Two cases:
//!
//! - **shared**: the endpoints follow their app version's default configuration,
//!   so they hold the same config ID (the common case);
//! - **endpoint-specific**: every endpoint has its own configuration, so its own
//!   config ID (~70 bytes), which the engine must store per endpoint.
//!
//! Run: `cargo bench -p kaa-cmp --bench memory` (Criterion arguments are ignored).

#[path = "support/mod.rs"]
#[allow(dead_code)]
mod common;

use std::alloc::System;

use common::*;
use kaa_cmp::engine::Cmx;
use kaa_ism::UnixMillis;
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

const N: usize = 1_000_000;

fn live_bytes(region: &Region<'_, System>) -> i64 {
    // `realloc` growth and shrinkage are already counted in these two.
    let s = region.change();
    s.bytes_allocated as i64 - s.bytes_deallocated as i64
}

fn measure(per_endpoint: bool) -> (i64, usize) {
    let provider = Provider {
        id: "6046b576591c75fd68ab67f7e4475311".into(),
        per_endpoint,
    };
    check_answers(&provider);
    // IDs are built outside the measured region, as a bus would hand them in.
    let endpoints: Vec<String> = (0..N).map(endpoint_id).collect();
    let now = UnixMillis(1_000_000);
    let region = Region::new(GLOBAL);
    let mut cmx = Cmx::new(config()).unwrap();
    for ep in &endpoints {
        cmx.handle_client_data(
            &client_data(ep, "/config/json", br#"{"observe":true}"#),
            Some(REPLY_TO),
            now,
        );
        drain(&mut cmx, &provider, now);
        let applied = format!(r#"{{"configId":"{}"}}"#, provider.config_id(ep));
        cmx.handle_client_data(
            &client_data(ep, "/applied/json", applied.as_bytes()),
            Some(REPLY_TO),
            now,
        );
        drain(&mut cmx, &provider, now);
    }
    let _ = cmx.poll_timeout();
    let bytes = live_bytes(&region);
    let tracked = cmx.tracked_endpoints();
    assert_eq!(cmx.pending_requests(), 0);
    drop(cmx);
    (bytes, tracked)
}

fn main() {
    for (label, per_endpoint) in [
        ("shared config ID", false),
        ("endpoint-specific config IDs", true),
    ] {
        let (bytes, tracked) = measure(per_endpoint);
        println!(
            "memory/idle_endpoint ({label}): {tracked} endpoints, {bytes} bytes live, {:.1} bytes per endpoint",
            bytes as f64 / tracked as f64
        );
    }
}
