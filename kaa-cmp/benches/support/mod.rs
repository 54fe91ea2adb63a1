//! Shared by the benchmarks: an in-memory provider, endpoint IDs, and a driver
//! that runs a request through the engine and the provider (which answers by
//! kaa-cdtp's rules, `ConfigResponse::answer`), checked once before measuring
//! with the engine's invariants from `kaa_cmp::test_support`.

use std::borrow::Cow;

use kaa_cdtp::{ConfigResponse, Current};
use kaa_cmp::engine::{Cmx, CmxConfig, OutgoingExtensionData, Output};
use kaa_cmp::message::ConfigResponse as CmpResponse;
use kaa_cmp::test_support::check_response;
use kaa_esp::ClientData;
use kaa_ism::UnixMillis;

pub(crate) const AV: &str = "smart-kettle-v3";
pub(crate) const REPLY_TO: &str = "kaa.v1.replica.kpc-1.esp.ExtensionData";
pub(crate) const CONFIG: &[u8] =
    br#"{"mode":"AP","ssid":"Smart Teapot","password":"acupofteaplease","security":"WPA2_PSK","sampling":{"period":200,"batch":16}}"#;

pub(crate) fn config() -> CmxConfig {
    let mut c = CmxConfig::new("cmx", "cmx-1", "ecr", "kpc");
    c.max_endpoints = 2_000_000;
    c
}

/// A UUID-shaped endpoint ID (36 bytes), as Kaa uses.
pub(crate) fn endpoint_id(i: usize) -> String {
    format!("{:08x}-7c4d-4f89-a0b1-{:012x}", i as u32, i)
}

/// The provider: one configuration per endpoint, `id` for all of them unless
/// `per_endpoint` is set (then `<id>-<endpoint>`). Computed, not stored (a store
/// would count in the memory benchmark's figure); the answer borrows, so the
/// driver allocates nothing for it.
pub(crate) struct Provider {
    pub(crate) id: String,
    pub(crate) per_endpoint: bool,
}

impl Provider {
    pub(crate) fn config_id(&self, endpoint: &str) -> Cow<'_, str> {
        if self.per_endpoint {
            Cow::Owned(format!("{}-{endpoint}", self.id))
        } else {
            Cow::Borrowed(&self.id)
        }
    }
}

pub(crate) fn client_data<'a>(
    endpoint: &'a str,
    resource_path: &'a str,
    payload: &'a [u8],
) -> ClientData<'a> {
    ClientData {
        correlation_id: Cow::Borrowed("07d78e95-2c4d-4899-957c-b9e5a3701fbb"),
        timestamp: 1_000_000,
        timeout: 0,
        app_version_name: Cow::Borrowed(AV),
        endpoint_id: Some(Cow::Borrowed(endpoint)),
        resource_path: Cow::Borrowed(resource_path),
        request_id: Some(42),
        payload: Cow::Borrowed(payload),
        config_name: None,
    }
}

/// Drains the engine, answering CDTP requests from `provider`; returns how
/// many `ExtensionData` came out.
pub(crate) fn drain(cmx: &mut Cmx, provider: &Provider, now: UnixMillis) -> usize {
    drain_with(cmx, provider, now, |m| {
        std::hint::black_box(m);
    })
}

fn drain_with(
    cmx: &mut Cmx,
    provider: &Provider,
    now: UnixMillis,
    mut on_data: impl FnMut(&OutgoingExtensionData),
) -> usize {
    let mut sent = 0;
    while let Some(out) = cmx.poll_output() {
        match out {
            Output::ConfigRequest(req) => {
                let id = provider.config_id(&req.endpoint_id);
                let current = Current::Config {
                    config_id: &id,
                    content: CONFIG,
                };
                let resp = ConfigResponse::answer(&req.message(), current, req.timestamp.0);
                cmx.handle_config_response(&resp, now);
            }
            Output::ExtensionData(m) => {
                on_data(&m);
                sent += 1;
            }
            other => {
                std::hint::black_box(&other);
            }
        }
    }
    sent
}

/// Before measuring: a device request through a fresh engine and `provider`
/// gets one response, of the shape the engine's invariants require, carrying
/// the provider's configuration (a benchmark of an engine that answers errors
/// would measure nothing).
pub(crate) fn check_answers(provider: &Provider) {
    let now = UnixMillis(1_000_000);
    let mut cmx = Cmx::new(config()).expect("a valid configuration");
    let ep = endpoint_id(0);
    let cd = client_data(&ep, "/config/json", br#"{"observe":true}"#);
    cmx.handle_client_data(&cd, Some(REPLY_TO), now);
    let sent = drain_with(&mut cmx, provider, now, |m| {
        let config = check_response(m, |_| false).unwrap_or_else(|v| panic!("{v}"));
        assert!(
            matches!(&config, Some(CmpResponse::Config { config_id, .. }) if *config_id == provider.config_id(&ep)),
            "not the provider's configuration: {m:?}"
        );
    });
    assert_eq!(sent, 1, "one response to one request");
}
