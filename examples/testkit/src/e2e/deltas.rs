//! Configuration deltas (issue 18, a kaa-rs extension of 7/CMP,
//! `kaa_cmp::delta`) end to end over MQTT: devices driven by `kaa-cmp`'s device
//! state machine ([`kaa_cmp::device::Device`]) over the real MQTT connections
//! of [`Device`], one asking for deltas on
//! `…/config/json-patch`, one speaking plain 7/CMP.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use kaa_cmp::delta::DeltaError;
use kaa_cmp::device::{Device as CmpStateMachine, DeviceConfig, DeviceEvent};
use kaa_ism::UnixMillis;
use serde_json::{Value, json};
use tokio::time::{Instant, timeout};

use super::{Device, Msg, Rest, System, WAIT, unique};

fn now() -> UnixMillis {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis();
    UnixMillis(i64::try_from(ms).unwrap_or(i64::MAX))
}

/// A device: `kaa-cmp`'s state machine (reporting every configuration
/// applied) over one MQTT connection at a time, with every message it
/// received on any of them.
struct CmpDevice {
    sys: System,
    token: String,
    deltas: bool,
    mqtt: Option<Device>,
    machine: CmpStateMachine,
    /// Every message received, in order, over every connection.
    received: Vec<Msg>,
    /// Every `DeltaRefused` the state machine told.
    refused: Vec<DeviceEvent>,
}

impl CmpDevice {
    async fn connect(sys: System, app: &str, token: &str, deltas: bool) -> CmpDevice {
        let mut config = DeviceConfig::new(app, sys.cmx, token);
        config.auto_report_applied = true;
        config.deltas = deltas;
        config.request_timeout = Duration::from_secs(2);
        let machine = CmpStateMachine::new(config).expect("valid device names");
        CmpDevice {
            sys,
            token: token.to_owned(),
            deltas,
            mqtt: Some(Device::connect(sys, app, token).await),
            machine,
            received: Vec::new(),
            refused: Vec::new(),
        }
    }

    /// Ends the MQTT connection; the state machine keeps what it holds.
    async fn disconnect(&mut self) {
        if let Some(mqtt) = self.mqtt.take() {
            mqtt.disconnect().await;
        }
    }

    /// A new MQTT connection (same app version) and a request saying what the
    /// device holds, as a device does after reconnecting.
    async fn reconnect(&mut self) {
        self.disconnect().await;
        let app = self.machine.config().app_version.clone();
        self.mqtt = Some(Device::connect(self.sys, &app, &self.token).await);
        self.request().await;
    }

    /// Moves to another app version: a new state machine (it holds nothing
    /// under the new version) on a new connection, and a first request.
    async fn change_app_version(&mut self, app: &str) {
        self.disconnect().await;
        let mut config = self.machine.config().clone();
        config.app_version = app.to_owned();
        self.machine = CmpStateMachine::new(config).expect("valid device names");
        self.mqtt = Some(Device::connect(self.sys, app, &self.token).await);
        self.request().await;
    }

    /// Watches only the parts of the default configuration that `pointers`
    /// name (from the next request on).
    fn watch(&mut self, pointers: &[&str]) {
        let pointers = pointers
            .iter()
            .map(|p| kaa_cmp::delta::parse_pointer(p).expect("a JSON Pointer"))
            .collect();
        self.machine
            .set_pointers(None, Some(pointers))
            .expect("valid name");
    }

    /// Feeds the state machine whatever arrives for `how_long`.
    async fn listen(&mut self, how_long: Duration) {
        let deadline = Instant::now() + how_long;
        let mqtt = self.mqtt.as_mut().expect("connected");
        while let Ok(Some(m)) = timeout(
            deadline.saturating_duration_since(Instant::now()),
            mqtt.connection.incoming.recv(),
        )
        .await
        {
            let payload = serde_json::to_vec(&m.json).expect("JSON");
            let _ = self.machine.handle_publish(&m.topic, &payload, now());
            self.received.push(m);
        }
    }

    /// Requests the default configuration, observing it.
    async fn request(&mut self) {
        self.machine
            .request_config(None, Some(true), now())
            .expect("request");
        self.flush().await;
    }

    /// Publishes what the state machine has to send.
    async fn flush(&mut self) {
        let mqtt = self.mqtt.as_ref().expect("connected");
        while let Some(p) = self.machine.poll_publish() {
            mqtt.publish_raw(&p.topic, p.payload).await;
        }
    }

    /// Runs the state machine over the connection until it holds the
    /// configuration `config_id` (within [`WAIT`]); returns what it holds.
    async fn until(&mut self, config_id: &str) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            while let Some(event) = self.machine.poll_event() {
                if matches!(event, DeviceEvent::DeltaRefused { .. }) {
                    self.refused.push(event);
                }
            }
            self.flush().await;
            if let Some(held) = self
                .machine
                .configuration(None)
                .filter(|c| c.config_id == config_id)
            {
                return held.config.clone();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "{} (deltas: {}) does not hold {config_id} within {WAIT:?}; holds {:?}; received {:?}",
                self.token,
                self.deltas,
                self.machine.configuration(None),
                self.received
            );
            let retry = self
                .machine
                .poll_timeout()
                .map_or(left, |at| at.saturating_duration_since(now()));
            let mqtt = self.mqtt.as_mut().expect("connected");
            match timeout(left.min(retry), mqtt.connection.incoming.recv()).await {
                Ok(Some(m)) => {
                    let payload = serde_json::to_vec(&m.json).expect("JSON");
                    // Applied reports get no answer; anything else is for the
                    // state machine, which ignores what is not for it.
                    let _ = self.machine.handle_publish(&m.topic, &payload, now());
                    self.received.push(m);
                }
                Ok(None) => panic!("{}: connection closed", self.token),
                Err(_) => self.machine.handle_timeout(now()),
            }
        }
    }
}

/// A configuration large enough that one changed key makes a patch far smaller
/// than the whole document.
fn kettle(mode: &str, rate: u32) -> Value {
    let schedule: Vec<String> = (6..22).map(|h| format!("{h:02}:30 boil 95°C")).collect();
    json!({"mode": mode, "rate": rate, "ssid": "Smart Teapot", "schedule": schedule})
}

/// Waits until ECR lists `config_id` as applied by each device (CMX handled
/// their applied reports).
async fn applied(rest: &Rest, devices: [&CmpDevice; 2], config_id: &str) {
    for d in devices {
        rest.wait_status(&d.token, |r| {
            r["configId"] == config_id && r["status"] == "APPLIED"
        })
        .await;
    }
}

fn is_patch(m: &Msg) -> bool {
    m.json.get("baseConfigId").is_some() && m.json.get("patch").is_some()
}

/// A delta device (`…/config/json-patch`) and a plain 7/CMP device side by side,
/// both following their app version's default configuration, both on `kaa-cmp`'s
/// device state machine: both converge through pushes, a reconnect (with a
/// change made while they were offline) and an app version change; the delta
/// device is pushed at least one RFC 6902 patch (`baseConfigId` and `patch`),
/// which its state machine applies and checks against the config ID (it refuses
/// none but patches from a base it does not hold, which it asks again for), and the
/// plain device sees only 7/CMP (its topics are `…/config/json…`, its payloads
/// have no delta member).
pub async fn delta_and_plain_devices_converge(sys: System) {
    let rest = Rest::new(sys);
    let v1 = unique("app-delta-v1");
    let v2 = unique("app-delta-v2");
    let mut delta = CmpDevice::connect(sys, &v1, &unique("ep-delta"), true).await;
    let mut plain = CmpDevice::connect(sys, &v1, &unique("ep-plain"), false).await;

    // First request: the whole configuration, on either resource.
    let c1 = rest.put_default(&v1, None, &kettle("AP", 5)).await;
    for d in [&mut delta, &mut plain] {
        d.request().await;
        assert_eq!(d.until(&c1).await, kettle("AP", 5));
    }

    // Pushes. CMX patches from the configuration it knows the device holds
    // (its applied report): wait until the reports reached ECR through CMX.
    applied(&rest, [&delta, &plain], &c1).await;
    let c2 = rest.put_default(&v1, None, &kettle("AP", 6)).await;
    for d in [&mut delta, &mut plain] {
        assert_eq!(d.until(&c2).await, kettle("AP", 6));
    }
    let pushed = delta
        .received
        .iter()
        .rev()
        .find(|m| m.topic.ends_with("/config/json-patch/status"));
    assert!(
        pushed.is_some_and(is_patch),
        "the push of one changed key is a patch: {:?}",
        delta.received
    );

    // A reconnect, with a change made while both were offline.
    for d in [&mut delta, &mut plain] {
        d.disconnect().await;
    }
    let c3 = rest.put_default(&v1, None, &kettle("AP", 7)).await;
    for d in [&mut delta, &mut plain] {
        d.reconnect().await;
        assert_eq!(d.until(&c3).await, kettle("AP", 7));
    }
    // Observed again after the reconnect: pushed.
    let c4 = rest.put_default(&v1, None, &kettle("AP", 8)).await;
    for d in [&mut delta, &mut plain] {
        assert_eq!(d.until(&c4).await, kettle("AP", 8));
    }

    // An app version change: the new version's configuration, then its pushes.
    let d1 = rest.put_default(&v2, None, &kettle("STA", 50)).await;
    for d in [&mut delta, &mut plain] {
        d.change_app_version(&v2).await;
        assert_eq!(d.until(&d1).await, kettle("STA", 50));
    }
    applied(&rest, [&delta, &plain], &d1).await;
    let d2 = rest.put_default(&v2, None, &kettle("STA", 51)).await;
    for d in [&mut delta, &mut plain] {
        assert_eq!(d.until(&d2).await, kettle("STA", 51));
    }
    // The applied reports (always the whole configuration's ID) reached ECR.
    applied(&rest, [&delta, &plain], &d2).await;

    // What each device received.
    let config: Vec<&Msg> = delta
        .received
        .iter()
        .filter(|m| m.topic.contains("/config/"))
        .collect();
    assert!(
        config
            .iter()
            .all(|m| m.topic.contains("/config/json-patch")),
        "the delta device is answered on the delta resource: {config:?}"
    );
    let patches = config
        .iter()
        .filter(|m| m.topic.ends_with("/config/json-patch/status") && is_patch(m))
        .count();
    assert!(
        patches >= 2,
        "pushes on both app versions are patches: {config:?}"
    );
    // A patch from another base than the one held is refused and the device
    // asks again with what it holds: that happens when the device left before
    // CMX handled its last applied report (CMX then patches from the one
    // before). A patch that does not apply or gives another config ID would be
    // a server bug.
    assert!(
        delta.refused.iter().all(|e| matches!(
            e,
            DeviceEvent::DeltaRefused {
                error: DeltaError::BaseMismatch { .. },
                ..
            }
        )),
        "{:?}",
        delta.refused
    );
    for m in &plain.received {
        assert!(!m.topic.contains("json-patch"), "{m:?}");
        if m.topic.contains("/config/json") {
            let object = m.json.as_object().expect("a 7/CMP answer is an object");
            assert!(
                object.keys().all(|k| k == "configId" || k == "config"),
                "plain 7/CMP only: {m:?}"
            );
        }
    }
    assert!(
        plain
            .received
            .iter()
            .any(|m| m.topic.ends_with("/config/json/status")),
        "the plain device got pushes: {:?}",
        plain.received
    );
    delta.disconnect().await;
    plain.disconnect().await;
}

/// Partial subscription: a delta device watching only `/rate` (an RFC 6901
/// pointer) beside a delta device watching the whole configuration, both on
/// `kaa-cmp`'s device state machine. The watcher holds the view
/// `{"/rate": …}` under the whole configuration's ID; a change of a part it
/// does not watch is pushed to the other device and not to it (nothing
/// carrying that config ID reaches it); a change of `/rate` is pushed to it as
/// a patch of its view with a `viewId`; its applied reports name whole
/// configurations, as ECR's statuses show.
pub async fn a_device_watching_parts_is_pushed_only_when_they_change(sys: System) {
    let rest = Rest::new(sys);
    let app = unique("app-parts");
    let mut watcher = CmpDevice::connect(sys, &app, &unique("ep-watch"), true).await;
    watcher.watch(&["/rate"]);
    let mut whole = CmpDevice::connect(sys, &app, &unique("ep-whole"), true).await;

    let c1 = rest.put_default(&app, None, &kettle("AP", 5)).await;
    for d in [&mut watcher, &mut whole] {
        d.request().await;
    }
    assert_eq!(watcher.until(&c1).await, json!({"/rate": 5}));
    assert_eq!(whole.until(&c1).await, kettle("AP", 5));
    applied(&rest, [&watcher, &whole], &c1).await;

    // `/mode` changes: the whole device is pushed, the watcher is not.
    let c2 = rest.put_default(&app, None, &kettle("STA", 5)).await;
    assert_eq!(whole.until(&c2).await, kettle("STA", 5));
    watcher.listen(Duration::from_millis(500)).await;

    // `/rate` changes: both are pushed; the watcher gets its view.
    let c3 = rest.put_default(&app, None, &kettle("STA", 6)).await;
    assert_eq!(whole.until(&c3).await, kettle("STA", 6));
    assert_eq!(watcher.until(&c3).await, json!({"/rate": 6}));
    watcher.listen(Duration::from_millis(300)).await;
    // The applied report names the whole configuration.
    applied(&rest, [&watcher, &whole], &c3).await;

    assert!(
        !watcher
            .received
            .iter()
            .any(|m| m.json.get("configId").and_then(Value::as_str) == Some(c2.as_str())),
        "no push for a change of parts the device does not watch: {:?}",
        watcher.received
    );
    let pushes: Vec<&Msg> = watcher
        .received
        .iter()
        .filter(|m| m.topic.ends_with("/config/json-patch/status"))
        .collect();
    assert_eq!(pushes.len(), 1, "one push, for c3: {:?}", watcher.received);
    assert_eq!(pushes[0].json["configId"], c3.as_str());
    assert!(
        pushes[0].json.get("viewId").is_some(),
        "a view carries its viewId: {pushes:?}"
    );
    assert!(
        watcher.refused.is_empty(),
        "the watcher refused nothing: {:?}",
        watcher.refused
    );
    watcher.disconnect().await;
    whole.disconnect().await;
}
