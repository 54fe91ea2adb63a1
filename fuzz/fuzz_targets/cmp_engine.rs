//! kaa-cmp: the 7/CMP decoders, resource paths, the device state machine and
//! the CMX engine driven by an arbitrary stream of operations. Nothing may
//! panic, and every `ExtensionData` the engine sends must have the shape
//! `kaa_cmp::test_support::check_response` checks (documented status, errors
//! with a reason, configuration responses of valid 7/CMP JSON).
#![no_main]

use std::borrow::Cow;
use std::collections::HashSet;
use std::time::Duration;

use kaa_cdtp::{ConfigResponse as CdtpResponse, ConfigUpdated};
use kaa_cmp::device::{Device, DeviceConfig};
use kaa_cmp::engine::{Cmx, CmxConfig, OutgoingConfigRequest, Output};
use kaa_cmp::message::{AppliedRequest, ConfigRequest, ConfigResponse};
use kaa_cmp::resource::ResourcePath;
use kaa_cmp::test_support::check_response;
use kaa_elce::{AppVersionUpdatedEvent, ConnectedEvent, DisconnectedEvent, UnregisteredEvent};
use kaa_esp::ClientData;
use kaa_ism::UnixMillis;
use libfuzzer_sys::fuzz_target;

const ENDPOINTS: [&str; 4] = ["ep-0", "ep-1", "ep-2", ""];
const VERSIONS: [&str; 2] = ["v1", "v2"];
const PATHS: [&str; 8] = [
    "/config/json",
    "/config/json/net",
    "/config/json/default",
    "/applied/json",
    "/applied/json/net",
    "/config/json/a.b",
    "/config/xml",
    "/applied/json/",
];
const REPLIES: [Option<&str>; 3] = [
    None,
    Some("kaa.v1.replica.kpc-1.esp.ExtensionData"),
    Some("not a subject"),
];

struct Input<'a>(&'a [u8]);

impl<'a> Input<'a> {
    fn byte(&mut self) -> u8 {
        let (&b, rest) = self.0.split_first().unwrap_or((&0, &[]));
        self.0 = rest;
        b
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.byte() as usize % items.len()]
    }

    fn bytes(&mut self) -> &'a [u8] {
        let n = (self.byte() as usize).min(self.0.len());
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        head
    }

    fn text(&mut self) -> Cow<'a, str> {
        String::from_utf8_lossy(self.bytes())
    }
}

/// Takes the engine's outputs; every `ExtensionData` must have the shape
/// `kaa_cmp::test_support::check_response` requires: a documented status (or
/// a 4xx/5xx the provider sent, `statuses`), errors with a reason and no
/// payload, a 200 configuration response with valid 7/CMP JSON.
fn drain(cmx: &mut Cmx, requests: &mut Vec<OutgoingConfigRequest>, statuses: &HashSet<i32>) {
    while let Some(out) = cmx.poll_output() {
        let _ = out.to_datum();
        match out {
            Output::ConfigRequest(r) => {
                if requests.len() < 64 {
                    requests.push(r);
                }
            }
            Output::ExtensionData(m) => {
                check_response(&m, |s| statuses.contains(&s)).unwrap_or_else(|v| panic!("{v}"));
            }
            _ => {}
        }
    }
}

fuzz_target!(|data: &[u8]| {
    // The stateless parsers, on the raw input.
    let _ = ConfigRequest::from_json(data);
    let _ = AppliedRequest::from_json(data);
    let _ = ConfigResponse::from_json(data);
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = ResourcePath::parse(s);
    }

    let mut input = Input(data);

    // The device, with a topic and payload from the input.
    if let Ok(mut device) = Device::new(DeviceConfig::new("v1", "cmx", "tok")) {
        let _ = device.request_config(None, Some(true), UnixMillis(0));
        let topic = format!("kp1/v1/cmx/tok{}", input.text());
        let payload = input.bytes();
        let _ = device.handle_publish(&topic, payload, UnixMillis(1));
        device.handle_timeout(UnixMillis(i64::MAX));
        while device.poll_publish().is_some() {}
    }

    // The engine, with small limits so that they are reached.
    let mut config = CmxConfig::new("cmx", "cmx-1", "ecr", "kpc");
    config.max_endpoints = 3;
    config.max_pending_requests = 4;
    config.max_names_per_endpoint = 1;
    config.max_waiters_per_request = 2;
    config.cdtp_timeout = Duration::from_millis(500);
    config.push_retry_delay = Duration::from_millis(100);
    config.endpoint_ttl = Duration::from_secs(2);
    let mut cmx = Cmx::new(config).expect("a valid configuration");
    let mut requests: Vec<OutgoingConfigRequest> = Vec::new();
    // Statuses of the provider answers fed in (passed on to devices).
    let mut statuses: HashSet<i32> = HashSet::new();
    let mut now = 1_000_000i64;

    while !input.0.is_empty() {
        let at = UnixMillis(now);
        match input.byte() % 10 {
            0 | 1 => {
                let request_id = match input.byte() {
                    0 => None,
                    b => Some(i32::from(b)),
                };
                let cd = ClientData {
                    correlation_id: "c".into(),
                    timestamp: now - i64::from(input.byte()),
                    timeout: i64::from(input.byte() % 3) * 100,
                    app_version_name: input.pick(&VERSIONS).into(),
                    endpoint_id: Some(input.pick(&ENDPOINTS).into()),
                    resource_path: input.pick(&PATHS).into(),
                    request_id,
                    payload: Cow::Borrowed(input.bytes()),
                    config_name: match input.byte() % 4 {
                        0 => Some("net".into()),
                        1 => Some("x y".into()),
                        _ => None,
                    },
                };
                let reply = input.pick(&REPLIES);
                cmx.handle_client_data(&cd, reply, at);
            }
            2 | 3 => {
                if !requests.is_empty() {
                    let i = input.byte() as usize % requests.len();
                    let r = if input.byte() % 2 == 0 {
                        requests.swap_remove(i)
                    } else {
                        requests[i].clone()
                    };
                    let status = match input.byte() % 6 {
                        0 => 404,
                        1 => 500,
                        2 => i32::from(input.byte()) * 3,
                        _ => 200,
                    };
                    let config_id = match input.byte() % 3 {
                        0 => None,
                        1 => r.config_id.as_deref().map(|c| Cow::Owned(c.to_owned())),
                        _ => Some(input.text()),
                    };
                    let content = match input.byte() % 3 {
                        0 => None,
                        1 => Some(Cow::Borrowed(&br#"{"a":1}"#[..])),
                        _ => Some(Cow::Borrowed(input.bytes())),
                    };
                    let resp = CdtpResponse {
                        correlation_id: r.correlation_id.clone().into(),
                        timestamp: now,
                        timeout: 0,
                        app_version_name: r.app_version_name.to_string().into(),
                        endpoint_id: if input.byte() == 7 {
                            "other".into()
                        } else {
                            r.endpoint_id.to_string().into()
                        },
                        config_id,
                        content_type: if input.byte() == 9 {
                            "text/plain".into()
                        } else {
                            "application/json".into()
                        },
                        content,
                        status_code: status,
                        reason_phrase: None,
                    };
                    statuses.insert(resp.status_code);
                    cmx.handle_config_response(&resp, at);
                }
            }
            4 => {
                let update = ConfigUpdated {
                    correlation_id: "u".into(),
                    timestamp: now,
                    app_version_name: input.pick(&VERSIONS).into(),
                    endpoint_id: input.pick(&ENDPOINTS).into(),
                    config_id: input.text(),
                    content: Cow::Borrowed(input.bytes()),
                    config_name: match input.byte() % 3 {
                        0 => Some("net".into()),
                        1 => Some("default".into()),
                        _ => None,
                    },
                    ..Default::default()
                };
                cmx.handle_config_updated(&update, at);
            }
            5 => {
                let endpoints = (0..input.byte() % 4)
                    .map(|_| {
                        (
                            Cow::Borrowed(input.pick(&ENDPOINTS)),
                            Cow::Borrowed(input.pick(&VERSIONS)),
                        )
                    })
                    .collect();
                let e = ConnectedEvent {
                    timestamp: now - i64::from(input.byte()),
                    endpoints,
                    ..Default::default()
                };
                cmx.handle_connected(&e, at);
            }
            6 => {
                let e = DisconnectedEvent {
                    endpoints: vec![(Cow::Borrowed(input.pick(&ENDPOINTS)), "v1".into())],
                    ..Default::default()
                };
                cmx.handle_disconnected(&e, at);
            }
            7 => {
                let e = AppVersionUpdatedEvent {
                    timestamp: now - i64::from(input.byte()),
                    app_version_name: input.pick(&VERSIONS).into(),
                    previous_app_version_name: "v1".into(),
                    endpoint_id: input.pick(&ENDPOINTS).into(),
                    ..Default::default()
                };
                cmx.handle_app_version_updated(&e, at);
            }
            8 => {
                let e = UnregisteredEvent {
                    endpoint_id: input.pick(&ENDPOINTS).into(),
                    ..Default::default()
                };
                cmx.handle_unregistered(&e, at);
            }
            _ => {
                now += i64::from(input.byte()) * 50;
                cmx.handle_timeout(UnixMillis(now));
                let _ = cmx.poll_timeout();
            }
        }
        drain(&mut cmx, &mut requests, &statuses);
        assert!(cmx.tracked_endpoints() <= 3);
        assert!(cmx.pending_requests() <= 4);
    }
    // With nobody answering, everything in flight ends: deadlines pass, push
    // retries run out.
    for _ in 0..16 {
        now += 1_000_000;
        cmx.handle_timeout(UnixMillis(now));
        drain(&mut cmx, &mut requests, &statuses);
    }
    assert_eq!(cmx.pending_requests(), 0);
    assert_eq!(cmx.poll_timeout(), None);
});
