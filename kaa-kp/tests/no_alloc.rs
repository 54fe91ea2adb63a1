//! The parse path allocates nothing: a counting global allocator watches
//! `Topic::parse`, `Topic::parse_request` and every accessor.
//!
//! The counter is process-wide, so this file holds a single test: no other test
//! thread can allocate while it measures. The harness's main thread can, though:
//! right after it starts the test's thread it does some bookkeeping of its own
//! (a few allocations, seen in about half the runs on a busy machine). So the
//! measurement is taken a few times and the cleanest run counts; a parse path that
//! allocates allocates in every run.

use std::alloc::System;
use std::hint::black_box;

use kaa_kp::{RequestId, Topic};
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

const TOPICS: &[&str] = &[
    "kp1/smart-kettle-v3/cmx/JTjdbENzHh/config/json",
    "kp1/smart-kettle-v3/cmx/JTjdbENzHh/config/json/42",
    "kp1/smart-kettle-v3/cmx/JTjdbENzHh/config/json/network/42/status",
    "kp1/smart-kettle-v3/cmx/JTjdbENzHh/config/json/2147483647/error",
    "kp1/smart-kettle-v3/cmx/JTjdbENzHh/config/json/status",
    "kp1/v1/epr/json",
    "kp1/v1/cmx/tok",
];

/// Parses and reads every part; returns something derived from all of it so the
/// optimiser keeps the work.
fn parse_all(topic: &str) -> usize {
    let mut sum = 0;
    for parsed in [Topic::parse(topic), Topic::parse_request(topic)] {
        let t = parsed.unwrap();
        sum += t.app_version_name().len()
            + t.extension_instance_name().len()
            + t.endpoint_token().len()
            + t.resource_path().len()
            + t.extension_path().len()
            + t.request_topic().len()
            + t.as_str().len()
            + t.request_id().map_or(0, |id| id.get() as usize)
            + usize::from(t.response().is_some());
    }
    sum
}

#[test]
fn parse_does_not_allocate() {
    // Inputs built (and allocated) before measuring.
    let long = format!("kp1/v1/cmx/tok/{}/7", "segment/".repeat(4000) + "end");
    let mut inputs: Vec<&str> = TOPICS.to_vec();
    inputs.push(&long);
    let request_id_texts = ["1", "42", "2147483647"];

    // The counter sees an allocation: without this the test could not fail.
    let region = Region::new(GLOBAL);
    black_box(vec![0_u8; 16]);
    assert!(
        region.change().allocations >= 1,
        "the counting allocator is not installed"
    );

    let measure = || {
        let region = Region::new(GLOBAL);
        let mut total = 0;
        for _ in 0..100 {
            for topic in &inputs {
                total += parse_all(black_box(topic));
            }
            for text in request_id_texts {
                total += black_box(text).parse::<RequestId>().unwrap().get() as usize;
            }
        }
        let stats = region.change();
        assert!(total > 0);
        stats
    };
    let runs: Vec<_> = (0..5).map(|_| measure()).collect();
    let cleanest = runs
        .iter()
        .min_by_key(|s| (s.allocations, s.reallocations))
        .expect("five runs");
    assert_eq!(cleanest.allocations, 0, "parse path allocated: {runs:?}");
    assert_eq!(
        cleanest.reallocations, 0,
        "parse path reallocated: {runs:?}"
    );
}
