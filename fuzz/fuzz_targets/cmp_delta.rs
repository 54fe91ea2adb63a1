//! kaa-cmp's configuration deltas (kaa-rs extension, `kaa_cmp::delta`): every
//! device-facing input of the extension. The first byte picks what the rest is:
//!
//! - a delta request payload (`DeltaRequest::from_json`): decoding never
//!   panics, and what decodes encodes and decodes to the same request;
//! - an answer payload (`DeltaResponse::from_json`): the same, and a patch that
//!   decodes applies (or fails) on a small document without panicking, the
//!   device state machine takes it as a response and as a push;
//! - a JSON Pointer: parsing never panics, what parses resolves in a view;
//! - two JSON documents: `apply(a, diff(a, b)) == b`, the config ID of the
//!   result is that of `b`, and `delta::answer` leads a device holding `a` to
//!   `b` (whole or patch);
//! - an operation stream to the CMX engine with devices on `/config/json-patch`
//!   (payloads from the input) beside 7/CMP ones: every delta answer decodes,
//!   every 7/CMP answer is valid 7/CMP JSON.
#![no_main]

use std::borrow::Cow;

use kaa_cmp::canonical::config_id_of;
use kaa_cmp::delta::{self, DeltaRequest, DeltaResponse, parse_pointer};
use kaa_cmp::device::{Device, DeviceConfig};
use kaa_cmp::engine::{Cmx, CmxConfig, Output};
use kaa_cmp::test_support::{FakeProvider, check_response};
use kaa_esp::ClientData;
use kaa_ism::UnixMillis;
use libfuzzer_sys::fuzz_target;
use serde_json::{Value, json};

const PATHS: [&str; 5] = [
    "/config/json-patch",
    "/config/json-patch/net",
    "/config/json",
    "/config/json-patch/",
    "/applied/json",
];

fn doc() -> Value {
    json!({"a": [1, {"b": "c"}], "d": {"e": null}, "f": 1.5})
}

fn device() -> Option<Device> {
    let mut config = DeviceConfig::new("v1", "cmx", "tok");
    config.deltas = true;
    Device::new(config).ok()
}

fn requests(data: &[u8]) {
    if let Ok(r) = DeltaRequest::from_json(data) {
        let again = r.to_json();
        assert_eq!(DeltaRequest::from_json(&again).expect("re-decodes"), r);
    }
}

fn answers(data: &[u8]) {
    let Ok(r) = DeltaResponse::from_json(data) else {
        return;
    };
    assert_eq!(
        DeltaResponse::from_json(&r.to_json()).expect("re-decodes"),
        r
    );
    if let DeltaResponse::Patch { patch, .. } = &r {
        let _ = delta::apply(&doc(), patch);
    }
    if let Some(mut d) = device() {
        let _ = d.request_config(None, Some(true), UnixMillis(0));
        let asked = d.poll_publish().map(|p| p.topic).unwrap_or_default();
        let _ = d.handle_publish(&format!("{asked}/status"), data, UnixMillis(1));
        let _ = d.handle_publish(
            "kp1/v1/cmx/tok/config/json-patch/status",
            data,
            UnixMillis(2),
        );
        while d.poll_publish().is_some() {}
        while d.poll_event().is_some() {}
    }
}

fn pointers(data: &[u8]) {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(p) = parse_pointer(s) {
        assert_eq!(p.as_str(), s);
        let _ = delta::view(&doc(), &[p]);
    }
}

fn diffs(data: &[u8]) {
    let Some(split) = data.iter().position(|&b| b == 0) else {
        return;
    };
    let (Ok(a), Ok(b)) = (
        serde_json::from_slice::<Value>(&data[..split]),
        serde_json::from_slice::<Value>(&data[split + 1..]),
    ) else {
        return;
    };
    let patched = delta::apply(&a, &delta::diff(&a, &b)).expect("a diff applies to its base");
    assert_eq!(patched, b);
    let (ida, idb) = (config_id_of(&a), config_id_of(&b));
    assert_eq!(config_id_of(&patched), idb);
    let reached = match delta::answer(Some(&ida), None, &idb, &b, Some(&a)) {
        DeltaResponse::Unchanged => a.clone(),
        DeltaResponse::Config { config, .. } => config,
        DeltaResponse::Patch { patch, .. } => delta::apply(&a, &patch).expect("applies"),
    };
    assert_eq!(config_id_of(&reached), idb);
}

fn engine(data: &[u8]) {
    let mut cmx = Cmx::new(CmxConfig::new("cmx", "cmx-1", "ecr", "kpc")).expect("valid");
    let mut provider = FakeProvider::new();
    let mut bytes = data.iter().copied();
    let mut next = move || bytes.next();
    let mut now = 1_000_000i64;
    let mut n = 0;
    while let Some(op) = next() {
        now += 10;
        let at = UnixMillis(now);
        match op % 3 {
            0 => {
                let path = PATHS[usize::from(next().unwrap_or(0)) % PATHS.len()];
                let len = usize::from(next().unwrap_or(0) % 64);
                let payload: Vec<u8> = (0..len).filter_map(|_| next()).collect();
                let cd = ClientData {
                    correlation_id: "c".into(),
                    timestamp: now,
                    app_version_name: "v1".into(),
                    endpoint_id: Some(if op & 8 == 0 { "ep-0" } else { "ep-1" }.into()),
                    resource_path: path.into(),
                    request_id: Some(1),
                    payload: Cow::Owned(payload),
                    ..Default::default()
                };
                cmx.handle_client_data(&cd, None, at);
            }
            1 => {
                n += 1;
                let key = next().unwrap_or(0) % 8;
                let content = json!({"k": key, "n": n, "keep": "a value long enough to make a patch pay off"});
                let name = (op & 8 != 0).then_some("net");
                let ep = if op & 16 == 0 { "ep-0" } else { "ep-1" };
                let u = provider.set(ep, "v1", name, content.to_string());
                cmx.handle_config_updated(&u, at);
            }
            _ => {
                let e = kaa_elce::ConnectedEvent {
                    correlation_id: "x".into(),
                    timestamp: now,
                    timeout: 0,
                    endpoints: vec![("ep-0".into(), "v1".into()), ("ep-1".into(), "v1".into())],
                    originator_replica_id: "kpc-1".into(),
                };
                cmx.handle_connected(&e, at);
            }
        }
        loop {
            let mut answered = false;
            while let Some(out) = cmx.poll_output() {
                match out {
                    Output::ConfigRequest(r) => {
                        let resp = provider.answer(&r.message(), at);
                        cmx.handle_config_response(&resp, at);
                        answered = true;
                    }
                    Output::ExtensionData(m)
                        if m.resource_path.starts_with("/config/json-patch") =>
                    {
                        if m.status_code == 200 {
                            let payload = m.payload.as_deref().expect("a 200 has a payload");
                            DeltaResponse::from_json(payload).expect("a delta answer decodes");
                        }
                    }
                    Output::ExtensionData(m) => {
                        check_response(&m, |_| false).unwrap_or_else(|v| panic!("{v}"));
                    }
                    _ => {}
                }
            }
            if !answered {
                break;
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    match selector % 5 {
        0 => requests(rest),
        1 => answers(rest),
        2 => pointers(rest),
        3 => diffs(rest),
        _ => engine(rest),
    }
});
