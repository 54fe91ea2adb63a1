//! Shared by the benchmarks: an in-memory provider, endpoint IDs, and a driver
//! that runs a request through the engine and the provider.

use std::borrow::Cow;

use kaa_cdtp::ConfigResponse;
use kaa_cmp::engine::{Cmx, CmxConfig, OutgoingConfigRequest, Output};
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
/// `per_endpoint` is set (then `<id>-<endpoint>`).
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

    pub(crate) fn answer<'a>(&'a self, req: &'a OutgoingConfigRequest) -> ConfigResponse<'a> {
        let id = self.config_id(&req.endpoint_id);
        let unchanged = req.config_id.as_deref() == Some(&*id);
        ConfigResponse {
            correlation_id: Cow::Borrowed(&req.correlation_id),
            timestamp: req.timestamp.0,
            timeout: 0,
            app_version_name: Cow::Borrowed(&req.app_version_name),
            endpoint_id: Cow::Borrowed(&req.endpoint_id),
            config_id: (!unchanged).then_some(id),
            content_type: Cow::Borrowed(kaa_cdtp::APPLICATION_JSON),
            content: (!unchanged).then_some(Cow::Borrowed(CONFIG)),
            status_code: 200,
            reason_phrase: None,
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
    let mut sent = 0;
    while let Some(out) = cmx.poll_output() {
        match out {
            Output::ConfigRequest(req) => {
                let resp = provider.answer(&req);
                cmx.handle_config_response(&resp, now);
            }
            Output::ExtensionData(m) => {
                std::hint::black_box(&m);
                sent += 1;
            }
            other => {
                std::hint::black_box(&other);
            }
        }
    }
    sent
}
