//! Configuration deltas (issue #18): what a patch saves on the wire, and what a
//! diff costs.
//!
//! First, not timed, a table of MQTT payload bytes per update: the whole
//! document as 7/CMP sends it (`{"configId","config"}`) against the delta answer
//! (`{"configId","baseConfigId","patch"}`), for one changed key and for 10% of
//! the keys changed, in configurations of about 4 KiB and 64 KiB (the issue's
//! goal: one changed key costs at most 10% of the whole document). Then
//! criterion timings of [`kaa_cmp::delta::diff`] at about 1 KiB, 64 KiB and
//! 1 MiB with one key changed, each beside the baseline measured in the same
//! run: `serde_json::to_vec` of the same document (what sending it whole costs
//! at the least).
//!
//! Run: `cargo bench -p kaa-cmp --bench delta -- --warm-up-time 1 --measurement-time 3`
//!
//! The configurations are generated: groups of settings (numbers, booleans,
//! short strings, small arrays), as a device's configuration looks, sized by the
//! number of groups.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use kaa_cmp::canonical::config_id_of;
use kaa_cmp::delta::{DeltaResponse, diff};
use serde_json::{Value, json};

/// A configuration of `groups` groups of eight settings each (about 250 bytes a
/// group in canonical JSON).
fn configuration(groups: usize) -> Value {
    let mut root = serde_json::Map::new();
    for g in 0..groups {
        root.insert(
            format!("group{g:05}"),
            json!({
                "enabled": g % 3 != 0,
                "intervalMs": 1000 + g,
                "threshold": (g as f64) * 0.25,
                "mode": format!("mode-{}", g % 7),
                "retries": g % 5,
                "label": format!("sensor bank {g}"),
                "channels": [g % 4, (g + 1) % 4, (g + 2) % 4],
                "calibration": {"offset": g % 11, "scale": 1.5},
            }),
        );
    }
    Value::Object(root)
}

/// `config` with the `intervalMs` of every `step`-th group changed (starting at
/// group 0).
fn changed(config: &Value, step: usize) -> Value {
    let mut new = config.clone();
    if let Value::Object(groups) = &mut new {
        for (i, (_, group)) in groups.iter_mut().enumerate() {
            if i % step == 0 {
                group["intervalMs"] = json!(group["intervalMs"].as_u64().unwrap_or(0) + 7);
            }
        }
    }
    new
}

/// The groups that make about `bytes` of canonical JSON.
fn groups_for(bytes: usize) -> usize {
    let one = serde_json::to_vec(&configuration(1)).map_or(250, |v| v.len());
    (bytes / one).max(1)
}

fn whole(new: &Value) -> usize {
    DeltaResponse::Config {
        config_id: config_id_of(new),
        view_id: None,
        config: new.clone(),
    }
    .to_json()
    .len()
}

fn patch(base: &Value, new: &Value) -> usize {
    DeltaResponse::Patch {
        config_id: config_id_of(new),
        base_config_id: config_id_of(base),
        view_id: None,
        patch: diff(base, new),
    }
    .to_json()
    .len()
}

fn payload_table() {
    println!("MQTT payload bytes per update (whole 7/CMP answer vs delta answer):");
    println!("| configuration | change | whole | delta | delta / whole |");
    println!("|---|---|---|---|---|");
    for (label, bytes) in [("4 KiB", 4 * 1024), ("64 KiB", 64 * 1024)] {
        let groups = groups_for(bytes);
        let base = configuration(groups);
        let actual = serde_json::to_vec(&base).map_or(0, |v| v.len());
        // One key: the first group's `intervalMs`. 10% of the keys: every
        // setting of every 10th group.
        let one = changed(&base, usize::MAX);
        let tenth = ten_percent_of_keys(&base);
        for (change, new) in [("one key", one), ("10% of keys", tenth)] {
            let w = whole(&new);
            let d = patch(&base, &new);
            println!(
                "| {label} ({actual} B, {groups} groups) | {change} | {w} | {d} | {:.1}% |",
                100.0 * d as f64 / w as f64
            );
        }
    }
}

/// `config` with 10% of its leaf settings changed: every setting of every 10th
/// group that is a number or a string.
fn ten_percent_of_keys(config: &Value) -> Value {
    let mut new = config.clone();
    if let Value::Object(groups) = &mut new {
        for (i, (_, group)) in groups.iter_mut().enumerate() {
            if i % 10 != 0 {
                continue;
            }
            if let Value::Object(settings) = group {
                for (_, v) in settings.iter_mut() {
                    *v = match v {
                        Value::Bool(b) => Value::Bool(!*b),
                        Value::Number(n) => json!(n.as_f64().unwrap_or(0.0) + 1.0),
                        Value::String(s) => Value::String(format!("{s}*")),
                        Value::Array(a) => Value::Array(a.iter().rev().cloned().collect()),
                        Value::Object(o) => {
                            let mut o = o.clone();
                            o.insert("offset".into(), json!(99));
                            Value::Object(o)
                        }
                        Value::Null => Value::Null,
                    };
                }
            }
        }
    }
    new
}

fn diff_cost(c: &mut Criterion) {
    payload_table();
    let mut g = c.benchmark_group("delta");
    for (label, bytes) in [("1KiB", 1024), ("64KiB", 64 * 1024), ("1MiB", 1024 * 1024)] {
        let base = configuration(groups_for(bytes));
        let new = changed(&base, usize::MAX);
        let size = serde_json::to_vec(&new).map_or(0, |v| v.len());
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_with_input(BenchmarkId::new("diff_one_key", label), &(), |b, ()| {
            b.iter(|| black_box(diff(black_box(&base), black_box(&new))));
        });
        g.bench_with_input(
            BenchmarkId::new("baseline_serialize_whole", label),
            &(),
            |b, ()| b.iter(|| black_box(serde_json::to_vec(black_box(&new)))),
        );
    }
    g.finish();
}

criterion_group!(benches, diff_cost);
criterion_main!(benches);
