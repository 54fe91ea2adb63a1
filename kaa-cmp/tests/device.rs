//! The device state machine against the CMX engine, through a minimal
//! communication service (1/KP topics ⇄ 4/ESP messages) and the fake provider,
//! on simulated time.

mod support;

use std::borrow::Cow;

use kaa_cmp::device::{Device, DeviceConfig, DeviceEvent, Publish};
use kaa_cmp::engine::OutgoingExtensionData;
use kaa_esp::ClientData;
use kaa_kp::{ErrorResponse, RequestId, ResponseKind, Topic};
use serde_json::json;
use support::*;

const TOKEN: &str = "JTjdbENzHh";
const EP: &str = "ep-JTjdbENzHh";

/// What a communication service does with a device's publish: 1/KP topic →
/// `ClientData` (token resolved to an endpoint ID).
fn client_data(p: &Publish, w: &World) -> ClientData<'static> {
    let t = Topic::parse_request(&p.topic).unwrap();
    ClientData {
        correlation_id: format!("kpc-{}", p.topic).into(),
        timestamp: w.now.0,
        timeout: 0,
        app_version_name: t.app_version_name().to_owned().into(),
        endpoint_id: Some(format!("ep-{}", t.endpoint_token()).into()),
        resource_path: t.resource_path().to_owned().into(),
        request_id: t.request_id().map(RequestId::get),
        payload: Cow::Owned(p.payload.clone()),
        config_name: None,
    }
}

/// And with `ExtensionData`: the response topic of the request, or the push
/// topic; errors as a 1/KP error payload.
fn mqtt(m: &OutgoingExtensionData) -> Option<(String, Vec<u8>)> {
    let kind = ResponseKind::for_status_code(m.status_code);
    let topic = match m.request_id.and_then(RequestId::new) {
        Some(id) => {
            let request = kaa_kp::request_topic(
                &m.app_version_name,
                &m.extension_instance_name,
                TOKEN,
                &m.resource_path,
                Some(id),
            )
            .unwrap();
            kaa_kp::response_topic(&request, kind)
        }
        None if kind == ResponseKind::Status => kaa_kp::push_topic(
            &m.app_version_name,
            &m.extension_instance_name,
            TOKEN,
            &m.resource_path,
        )
        .unwrap(),
        None => return None,
    };
    let payload = match kind {
        ResponseKind::Status => m.payload.as_deref().unwrap_or_default().to_vec(),
        ResponseKind::Error => ErrorResponse::new(
            m.status_code,
            m.reason_phrase.as_deref().unwrap_or_default(),
        )
        .to_json(),
    };
    Some((topic, payload))
}

struct Rig {
    w: World,
    device: Device,
    online: bool,
    events: Vec<DeviceEvent>,
}

impl Rig {
    fn new(auto_report_applied: bool) -> Self {
        let mut config = DeviceConfig::new(AV, "cmx", TOKEN);
        config.auto_report_applied = auto_report_applied;
        Rig {
            w: World::new(),
            device: Device::new(config).unwrap(),
            online: false,
            events: Vec::new(),
        }
    }

    fn connect(&mut self) {
        self.online = true;
        self.w.connect(&[EP]);
        self.pump();
    }

    fn disconnect(&mut self) {
        self.online = false;
        self.w.disconnect(&[EP]);
    }

    /// Moves messages both ways until nothing is left.
    fn pump(&mut self) {
        loop {
            let mut moved = false;
            while let Some(p) = self.device.poll_publish() {
                if self.online {
                    let cd = client_data(&p, &self.w);
                    self.w.send_msg(&cd, Some(KPC_REPLICA));
                }
                moved = true;
            }
            for m in self.w.take(EP) {
                if let (true, Some((topic, payload))) = (self.online, mqtt(&m)) {
                    self.device
                        .handle_publish(&topic, &payload, self.w.now)
                        .unwrap();
                }
                moved = true;
            }
            self.events
                .extend(std::iter::from_fn(|| self.device.poll_event()));
            if !moved {
                break;
            }
        }
    }

    fn configs(&mut self) -> Vec<(Option<String>, String, bool)> {
        std::mem::take(&mut self.events)
            .into_iter()
            .filter_map(|e| match e {
                DeviceEvent::Configuration {
                    name,
                    config_id,
                    pushed,
                    ..
                } => Some((name, config_id, pushed)),
                _ => None,
            })
            .collect()
    }
}

#[test]
fn device_and_engine_request_observe_and_push() {
    let mut r = Rig::new(true);
    r.w.provider.set(EP, AV, None, r#"{"rate":5}"#);
    r.w.provider
        .set(EP, AV, Some("network"), r#"{"ssid":"Office"}"#);
    r.connect();
    // The connect push brings the default configuration without a request.
    assert_eq!(r.configs(), [(None, "cfg-1".into(), true)]);
    r.device.request_config(None, Some(true), r.w.now).unwrap();
    r.device
        .request_config(Some("network"), Some(true), r.w.now)
        .unwrap();
    r.pump();
    assert_eq!(
        r.configs(),
        [(Some("network".into()), "cfg-2".into(), false)]
    );
    assert!(r.events.is_empty());
    // The default request named cfg-1, so it was answered `{}`.
    assert!(!r.device.is_waiting(None) && !r.device.is_waiting(Some("network")));
    // Auto-reported: the engine knows both are applied.
    let snap = r.w.cmx.endpoint(EP).unwrap();
    assert_eq!(snap.configurations[0].applied.as_deref(), Some("cfg-1"));
    assert_eq!(snap.configurations[1].applied.as_deref(), Some("cfg-2"));
    assert_eq!(r.w.applied.len(), 2);

    let id = r.w.update(EP, Some("network"), r#"{"ssid":"Home"}"#);
    r.pump();
    assert_eq!(r.configs(), [(Some("network".into()), id, true)]);
    assert_eq!(
        r.device.configuration(Some("network")).unwrap().config,
        json!({"ssid":"Home"})
    );
}

#[test]
fn device_offline_during_updates_gets_the_latest_once() {
    let mut r = Rig::new(true);
    r.w.provider.set(EP, AV, None, "1");
    r.connect();
    r.device.request_config(None, Some(true), r.w.now).unwrap();
    r.pump();
    r.configs();
    r.disconnect();
    let mut latest = String::new();
    for n in 2..10 {
        latest = r.w.update(EP, None, &n.to_string());
    }
    r.pump();
    assert!(r.configs().is_empty());
    r.connect();
    assert_eq!(r.configs(), [(None, latest, true)]);
    assert_eq!(r.device.configuration(None).unwrap().config, json!(9));
    // Reported applied: reconnecting again pushes nothing.
    r.disconnect();
    r.connect();
    assert!(r.configs().is_empty());
}

#[test]
fn device_retries_after_a_provider_timeout() {
    let mut r = Rig::new(false);
    r.w.provider.set(EP, AV, None, "1");
    r.online = true;
    r.w.auto_answer = false;
    r.device.request_config(None, None, r.w.now).unwrap();
    r.pump();
    r.w.held.clear(); // the provider never answers
    r.w.advance(5_000);
    r.pump();
    assert!(matches!(
        r.events.pop(),
        Some(DeviceEvent::Error {
            status_code: 504,
            retrying: true,
            ..
        })
    ));
    r.w.auto_answer = true;
    r.device.handle_timeout(r.w.now);
    r.pump();
    assert_eq!(r.configs(), [(None, "cfg-1".into(), false)]);
}

#[test]
fn device_rejection_is_recorded_and_not_pushed_again() {
    let mut r = Rig::new(false);
    r.w.provider.set(EP, AV, None, "1");
    r.connect();
    assert_eq!(r.configs().len(), 1);
    r.device
        .report_rejected(None, "cfg-1", 422, "bad rate", r.w.now)
        .unwrap();
    r.pump();
    let a = r.w.applied.pop().unwrap();
    assert_eq!(
        (a.status_code, a.reason_phrase.as_deref()),
        (422, Some("bad rate"))
    );
    r.disconnect();
    r.connect();
    assert!(r.configs().is_empty());
}

#[test]
fn device_request_for_an_invalid_resource_is_refused_locally() {
    let mut r = Rig::new(false);
    assert!(r.device.request_config(Some("a.b"), None, r.w.now).is_err());
}
