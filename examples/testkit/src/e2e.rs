//! Helpers and the behaviours shared by the end-to-end tests: real MQTT devices
//! (rumqttc, MQTT 3.1.1) and the ECR REST API (reqwest) against a running system,
//! whichever way it runs (the embedded [`kaa_examples::stack::Stack`] or the three
//! binaries over NATS). Each behaviour is one `async fn` taking a [`System`]; the
//! test files start a system and call them, so both deployments are held to the
//! same behaviour.
//!
//! Every device's token is its endpoint ID (KPC runs with `accept-any-token`), and
//! every behaviour uses its own app version names, so tests may share one system.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

pub mod deltas;
pub mod official_python;

pub use deltas::{
    a_device_watching_parts_is_pushed_only_when_they_change, delta_and_plain_devices_converge,
};

use crate::mqtt_device::MqttConnection;

use rumqttc::MqttOptions;
use rumqttc::mqttbytes::QoS;
use serde_json::{Value, json};
use tokio::time::{Instant, timeout};

/// How long a test waits for something that should happen.
pub const WAIT: Duration = Duration::from_secs(5);
/// How long a test waits to be sure something does not happen.
pub const QUIET: Duration = Duration::from_millis(500);
/// The push deadline after a PUT.
pub const PUSH_DEADLINE: Duration = Duration::from_secs(1);

/// Where a running system listens.
#[derive(Debug, Clone, Copy)]
pub struct System {
    /// ECR's REST API.
    pub http: SocketAddr,
    /// KPC's MQTT listener.
    pub mqtt: SocketAddr,
    /// CMX's instance name: the extension instance name devices put in topics.
    pub cmx: &'static str,
}

/// A name unique to this process and call (app versions, endpoint IDs).
pub fn unique(prefix: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// A message a device received.
#[derive(Debug, Clone)]
pub struct Msg {
    /// The topic.
    pub topic: String,
    /// The payload as JSON (`Value::Null` when it is not JSON).
    pub json: Value,
}

/// A real MQTT device: a rumqttc client that never subscribes (KPC delivers to the
/// session that owns the token without a SUBSCRIBE) unless asked to.
pub struct Device {
    connection: MqttConnection<Msg>,
    /// The app version this device uses in its topics.
    pub app: String,
    /// The endpoint token (= endpoint ID).
    pub token: String,
    /// The extension instance name.
    pub cmx: &'static str,
    next_request: u32,
}

impl Device {
    /// Connects (clean session) and waits for CONNACK.
    pub async fn connect(sys: System, app: &str, token: &str) -> Device {
        let client_id = unique("dev");
        let mut o = MqttOptions::new(client_id, sys.mqtt.ip().to_string(), sys.mqtt.port());
        o.set_keep_alive(Duration::from_secs(30));
        o.set_clean_session(true);
        let connection = MqttConnection::open(o, 256, WAIT, |p| Msg {
            json: serde_json::from_slice(&p.payload).unwrap_or(Value::Null),
            topic: p.topic,
        })
        .await;
        Device {
            connection,
            app: app.to_owned(),
            token: token.to_owned(),
            cmx: sys.cmx,
            next_request: 1,
        }
    }

    /// `kp1/<app>/<cmx>/<token>/<resource>`.
    pub fn topic(&self, resource: &str) -> String {
        format!("kp1/{}/{}/{}/{resource}", self.app, self.cmx, self.token)
    }

    /// Publishes `payload` at QoS 1 on `topic`.
    pub async fn publish_raw(&self, topic: &str, payload: impl Into<Vec<u8>>) {
        self.connection
            .client
            .publish(topic, QoS::AtLeastOnce, false, payload.into())
            .await
            .expect("publish queued");
    }

    /// Requests `config/json[/<name>]` with `body`; returns the request topic.
    pub async fn request(&mut self, name: Option<&str>, body: Value) -> String {
        let id = self.next_request;
        self.next_request += 1;
        let resource = match name {
            Some(n) => format!("config/json/{n}/{id}"),
            None => format!("config/json/{id}"),
        };
        let topic = self.topic(&resource);
        self.publish_raw(&topic, body.to_string()).await;
        topic
    }

    /// Requests and waits for the `…/status` response.
    pub async fn fetch(&mut self, name: Option<&str>, body: Value) -> Value {
        let topic = self.request(name, body).await;
        self.expect(&format!("{topic}/status")).await.json
    }

    /// Sends an applied report (`applied/json[/<name>]`, no request ID).
    pub async fn report(&self, name: Option<&str>, body: Value) {
        let resource = match name {
            Some(n) => format!("applied/json/{n}"),
            None => "applied/json".to_owned(),
        };
        self.publish_raw(&self.topic(&resource), body.to_string())
            .await;
    }

    /// The push topic of `config/json[/<name>]`.
    pub fn push_topic(&self, name: Option<&str>) -> String {
        match name {
            Some(n) => self.topic(&format!("config/json/{n}/status")),
            None => self.topic("config/json/status"),
        }
    }

    /// The next message on `topic` within [`WAIT`]; others received meanwhile are
    /// dropped.
    pub async fn expect(&mut self, topic: &str) -> Msg {
        self.expect_within(topic, WAIT).await
    }

    /// The next message on `topic` within `limit`.
    pub async fn expect_within(&mut self, topic: &str, limit: Duration) -> Msg {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match timeout(left, self.connection.incoming.recv()).await {
                Ok(Some(m)) if m.topic == topic => return m,
                Ok(Some(_)) => continue,
                Ok(None) => panic!("connection closed while waiting on {topic}"),
                Err(_) => panic!("nothing on {topic} within {limit:?}"),
            }
        }
    }

    /// Everything received within `window`.
    pub async fn drain(&mut self, window: Duration) -> Vec<Msg> {
        let deadline = Instant::now() + window;
        let mut out = Vec::new();
        while let Ok(Some(m)) =
            tokio::time::timeout_at(deadline, self.connection.incoming.recv()).await
        {
            out.push(m);
        }
        out
    }

    /// Disconnects cleanly.
    pub async fn disconnect(self) {
        let _ = self.connection.client.disconnect().await;
        // Let the DISCONNECT leave before the event loop is aborted.
        let _ = timeout(Duration::from_secs(2), async {
            while !self.connection.is_finished() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
    }
}

/// The ECR REST API.
pub struct Rest {
    base: String,
    http: reqwest::Client,
}

impl Rest {
    /// The API of `sys`.
    pub fn new(sys: System) -> Rest {
        Rest {
            base: format!("http://{}/api/v1", sys.http),
            http: reqwest::Client::new(),
        }
    }

    async fn put(&self, url: String, config: &Value) -> String {
        let r = self
            .http
            .put(&url)
            .header("content-type", "application/json")
            .body(config.to_string())
            .send()
            .await
            .expect("PUT sent");
        let status = r.status();
        let body: Value = r.json().await.expect("PUT answer is JSON");
        assert_eq!(status, 200, "PUT {url}: {body}");
        body["configId"].as_str().expect("configId").to_owned()
    }

    fn name_query(name: Option<&str>) -> String {
        name.map(|n| format!("?name={n}")).unwrap_or_default()
    }

    /// PUTs an app version's default configuration; returns its config ID.
    pub async fn put_default(&self, app: &str, name: Option<&str>, config: &Value) -> String {
        let url = format!("{}/app-versions/{app}{}", self.base, Self::name_query(name));
        self.put(url, config).await
    }

    /// PUTs an endpoint's own configuration; returns its config ID.
    pub async fn put_endpoint(
        &self,
        endpoint: &str,
        app: &str,
        name: Option<&str>,
        config: &Value,
    ) -> String {
        let url = format!(
            "{}/endpoints/{endpoint}/app-versions/{app}{}",
            self.base,
            Self::name_query(name)
        );
        self.put(url, config).await
    }

    /// `GET /statuses?endpointId=…` content rows.
    pub async fn statuses(&self, endpoint: &str) -> Vec<Value> {
        let url = format!("{}/statuses?endpointId={endpoint}&size=100", self.base);
        let r = self.http.get(&url).send().await.expect("GET sent");
        assert_eq!(r.status(), 200, "GET {url}");
        let body: Value = r.json().await.expect("JSON");
        body["content"].as_array().cloned().unwrap_or_default()
    }

    /// Polls `/statuses` until a row satisfies `pred`, within [`WAIT`].
    pub async fn wait_status(&self, endpoint: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            let rows = self.statuses(endpoint).await;
            if let Some(r) = rows.iter().find(|r| pred(r)) {
                return r.clone();
            }
            assert!(
                Instant::now() < deadline,
                "no matching status for {endpoint} within {WAIT:?}: {rows:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn config_id(v: &Value) -> &str {
    v["configId"].as_str().unwrap_or_default()
}

// ---------------------------------------------------------------------------
// The behaviours.
// ---------------------------------------------------------------------------

/// A device that requests `config/json` gets the app version's default.
pub async fn default_delivered(sys: System) {
    let rest = Rest::new(sys);
    let app = unique("app-default");
    let id = rest.put_default(&app, None, &json!({"interval": 10})).await;
    let mut dev = Device::connect(sys, &app, &unique("ep")).await;
    let answer = dev.fetch(None, json!({})).await;
    assert_eq!(answer, json!({"configId": id, "config": {"interval": 10}}));
}

/// An endpoint's own configuration wins over the default; other endpoints still
/// get the default.
pub async fn override_wins(sys: System) {
    let rest = Rest::new(sys);
    let app = unique("app-override");
    let ep = unique("ep");
    let default_id = rest
        .put_default(&app, None, &json!({"mode": "default"}))
        .await;
    let own_id = rest
        .put_endpoint(&ep, &app, None, &json!({"mode": "own"}))
        .await;
    assert_ne!(default_id, own_id);
    let mut dev = Device::connect(sys, &app, &ep).await;
    let answer = dev.fetch(None, json!({})).await;
    assert_eq!(
        answer,
        json!({"configId": own_id, "config": {"mode": "own"}})
    );
    let mut other = Device::connect(sys, &app, &unique("ep")).await;
    let answer = other.fetch(None, json!({})).await;
    assert_eq!(
        answer,
        json!({"configId": default_id, "config": {"mode": "default"}})
    );
}

/// An observing device gets a push on `…/config/json/status` within 1 s of a PUT,
/// for its own configuration and for a change of the default it follows.
pub async fn push_within_one_second(sys: System) {
    let rest = Rest::new(sys);
    let app = unique("app-push");
    let ep = unique("ep");
    rest.put_default(&app, None, &json!({"v": 0})).await;
    let mut dev = Device::connect(sys, &app, &ep).await;
    let first = dev.fetch(None, json!({"observe": true})).await;
    dev.report(None, json!({"configId": config_id(&first)}))
        .await;

    let started = Instant::now();
    let id = rest.put_endpoint(&ep, &app, None, &json!({"v": 1})).await;
    let push = dev
        .expect_within(&dev.push_topic(None), PUSH_DEADLINE)
        .await;
    let elapsed = started.elapsed();
    assert!(elapsed <= PUSH_DEADLINE, "push after {elapsed:?}");
    assert_eq!(push.json, json!({"configId": id, "config": {"v": 1}}));

    // A default change does not reach an endpoint with its own configuration...
    let mut follower = Device::connect(sys, &app, &unique("ep")).await;
    let f = follower.fetch(None, json!({"observe": true})).await;
    follower
        .report(None, json!({"configId": config_id(&f)}))
        .await;
    let started = Instant::now();
    let id2 = rest.put_default(&app, None, &json!({"v": 2})).await;
    // ...but reaches one that follows the default.
    let push = follower
        .expect_within(&follower.push_topic(None), PUSH_DEADLINE)
        .await;
    assert!(started.elapsed() <= PUSH_DEADLINE);
    assert_eq!(push.json, json!({"configId": id2, "config": {"v": 2}}));
    let extra = dev.drain(QUIET).await;
    assert!(
        extra.is_empty(),
        "endpoint with its own config got {extra:?}"
    );
}

/// A device offline during three updates gets exactly one push on its next
/// session: the latest configuration.
pub async fn offline_gets_only_latest(sys: System) {
    let rest = Rest::new(sys);
    let app = unique("app-offline");
    let ep = unique("ep");
    rest.put_default(&app, None, &json!({"n": 0})).await;
    let mut dev = Device::connect(sys, &app, &ep).await;
    let first = dev.fetch(None, json!({"observe": true})).await;
    let held = config_id(&first).to_owned();
    dev.report(None, json!({"configId": held})).await;
    // The applied report is handled before the session ends.
    rest.wait_status(&ep, |r| {
        r["configId"] == held.as_str() && r["status"] == "APPLIED"
    })
    .await;
    dev.disconnect().await;

    let mut ids = Vec::new();
    for n in 1..=3 {
        ids.push(rest.put_endpoint(&ep, &app, None, &json!({"n": n})).await);
    }
    let latest = ids[2].clone();

    // The next session: the device says again what it holds (an applied report
    // gets no response), which opens the session for its token.
    let mut dev = Device::connect(sys, &app, &ep).await;
    dev.report(None, json!({"configId": held})).await;
    let push = dev.expect(&dev.push_topic(None)).await;
    assert_eq!(push.json, json!({"configId": latest, "config": {"n": 3}}));
    let rest_msgs = dev.drain(QUIET * 2).await;
    assert!(rest_msgs.is_empty(), "more than one message: {rest_msgs:?}");
}

/// Named configurations are independent: updating `network` pushes only
/// `network`, updating the default pushes only the default.
pub async fn named_independent(sys: System) {
    let rest = Rest::new(sys);
    let app = unique("app-named");
    let ep = unique("ep");
    let d0 = rest.put_default(&app, None, &json!({"kind": "main"})).await;
    let n0 = rest
        .put_default(&app, Some("network"), &json!({"wifi": "a"}))
        .await;
    let mut dev = Device::connect(sys, &app, &ep).await;
    let main = dev.fetch(None, json!({"observe": true})).await;
    assert_eq!(main, json!({"configId": d0, "config": {"kind": "main"}}));
    let net = dev.fetch(Some("network"), json!({"observe": true})).await;
    assert_eq!(net, json!({"configId": n0, "config": {"wifi": "a"}}));
    dev.report(None, json!({"configId": d0})).await;
    dev.report(Some("network"), json!({"configId": n0})).await;

    let n1 = rest
        .put_endpoint(&ep, &app, Some("network"), &json!({"wifi": "b"}))
        .await;
    let push = dev.expect(&dev.push_topic(Some("network"))).await;
    assert_eq!(push.json, json!({"configId": n1, "config": {"wifi": "b"}}));
    let extra = dev.drain(QUIET).await;
    assert!(extra.is_empty(), "only network was pushed: {extra:?}");
    dev.report(Some("network"), json!({"configId": n1})).await;

    let d1 = rest
        .put_endpoint(&ep, &app, None, &json!({"kind": "own"}))
        .await;
    let push = dev.expect(&dev.push_topic(None)).await;
    assert_eq!(
        push.json,
        json!({"configId": d1, "config": {"kind": "own"}})
    );
    let extra = dev.drain(QUIET).await;
    assert!(extra.is_empty(), "only the default was pushed: {extra:?}");
}

/// Applied and rejected reports appear in `GET /statuses?endpointId=…`.
pub async fn applied_and_rejected_in_statuses(sys: System) {
    let rest = Rest::new(sys);
    let app = unique("app-status");
    let ep = unique("ep");
    rest.put_default(&app, None, &json!({"a": 1})).await;
    let mut dev = Device::connect(sys, &app, &ep).await;
    let first = dev.fetch(None, json!({"observe": true})).await;
    let good = config_id(&first).to_owned();
    dev.report(None, json!({"configId": good})).await;
    let row = rest
        .wait_status(&ep, |r| {
            r["configId"] == good.as_str() && r["status"] == "APPLIED"
        })
        .await;
    assert_eq!(row["appVersionName"], app.as_str());
    assert_eq!(row["statusCode"], 200);

    let bad = rest.put_endpoint(&ep, &app, None, &json!({"a": -1})).await;
    let push = dev.expect(&dev.push_topic(None)).await;
    assert_eq!(config_id(&push.json), bad);
    dev.report(
        None,
        json!({"configId": bad, "statusCode": 400, "reasonPhrase": "a must be positive"}),
    )
    .await;
    let row = rest
        .wait_status(&ep, |r| {
            r["configId"] == bad.as_str() && r["status"] == "REJECTED"
        })
        .await;
    assert_eq!(row["statusCode"], 400);
    assert_eq!(row["reasonPhrase"], "a must be positive");
    // The applied one is still there.
    let rows = rest.statuses(&ep).await;
    assert!(
        rows.iter()
            .any(|r| r["configId"] == good.as_str() && r["status"] == "APPLIED"),
        "{rows:?}"
    );
}

/// A device moving to another app version gets that version's configuration,
/// both when it requests under the new version and as a push when it reconnects
/// under it.
pub async fn app_version_change(sys: System) {
    let rest = Rest::new(sys);
    let v1 = unique("app-v1");
    let v2 = unique("app-v2");
    let ep = unique("ep");
    let id1 = rest.put_default(&v1, None, &json!({"fw": 1})).await;
    let id2 = rest.put_default(&v2, None, &json!({"fw": 2})).await;
    let mut dev = Device::connect(sys, &v1, &ep).await;
    let a = dev.fetch(None, json!({"observe": true})).await;
    assert_eq!(a, json!({"configId": id1, "config": {"fw": 1}}));
    dev.report(None, json!({"configId": id1})).await;
    dev.disconnect().await;

    let mut dev = Device::connect(sys, &v2, &ep).await;
    let b = dev
        .fetch(None, json!({"configId": id1, "observe": true}))
        .await;
    assert_eq!(b, json!({"configId": id2, "config": {"fw": 2}}));
    // Observing under v2: a v2 default change is pushed, a v1 change is not.
    dev.report(None, json!({"configId": id2})).await;
    rest.put_default(&v1, None, &json!({"fw": 11})).await;
    let id22 = rest.put_default(&v2, None, &json!({"fw": 22})).await;
    let push = dev.expect(&dev.push_topic(None)).await;
    assert_eq!(push.json, json!({"configId": id22, "config": {"fw": 22}}));
    let extra = dev.drain(QUIET).await;
    assert!(extra.is_empty(), "{extra:?}");
}

/// Garbage gets a 1/KP error `{"statusCode","reasonPhrase"}` on `…/error`, and
/// another device is unaffected.
pub async fn garbage_gets_errors(sys: System) {
    let rest = Rest::new(sys);
    let app = unique("app-garbage");
    let id = rest.put_default(&app, None, &json!({"ok": true})).await;
    let mut bad = Device::connect(sys, &app, &unique("ep")).await;
    let mut good = Device::connect(sys, &app, &unique("ep")).await;

    let cases = [
        ("config/json/7", "{not json".to_owned()),
        ("config/json/8", r#"{"observe":"yes"}"#.to_owned()),
        ("nonsense/resource/9", "{}".to_owned()),
        ("config/xml/10", "{}".to_owned()),
    ];
    for (resource, payload) in &cases {
        let topic = bad.topic(resource);
        bad.publish_raw(&topic, payload.as_bytes()).await;
        let err = bad.expect(&format!("{topic}/error")).await.json;
        let code = err["statusCode"].as_i64().unwrap_or_default();
        assert!(
            (400..500).contains(&code),
            "{resource} {payload}: status {err}"
        );
        assert!(
            err["reasonPhrase"].as_str().is_some_and(|r| !r.is_empty()),
            "{resource}: {err}"
        );
    }
    // A topic that is not 1/KP at all, with a request ID.
    let topic = format!("kp1/{app}/{}/{}/11", sys.cmx, bad.token);
    bad.publish_raw(&topic, "{}").await;
    let err = bad.expect(&format!("{topic}/error")).await.json;
    assert!(
        err["statusCode"].as_i64().is_some_and(|c| c >= 400),
        "{err}"
    );

    // The other device is unaffected, and so is the bad one's next good request.
    let answer = good.fetch(None, json!({})).await;
    assert_eq!(answer, json!({"configId": id, "config": {"ok": true}}));
    let answer = bad.fetch(None, json!({})).await;
    assert_eq!(answer["configId"], id.as_str());
}

/// A device that never subscribes receives its response and its pushes.
pub async fn no_subscribe_delivery(sys: System) {
    // `Device` never sends SUBSCRIBE; this behaviour checks it explicitly with
    // both a response and a push.
    let rest = Rest::new(sys);
    let app = unique("app-nosub");
    let ep = unique("ep");
    let id = rest.put_default(&app, None, &json!({"x": 1})).await;
    let mut dev = Device::connect(sys, &app, &ep).await;
    let answer = dev.fetch(None, json!({"observe": true})).await;
    assert_eq!(answer, json!({"configId": id, "config": {"x": 1}}));
    dev.report(None, json!({"configId": id})).await;
    let id2 = rest.put_endpoint(&ep, &app, None, &json!({"x": 2})).await;
    let push = dev.expect(&dev.push_topic(None)).await;
    assert_eq!(push.json, json!({"configId": id2, "config": {"x": 2}}));
}

/// A device built on Kaa's official Python MQTT client (kaaproject/mqtt-client-python),
/// with exactly its topics and payloads (see `official_python`): it never
/// subscribes and never requests, so it gets its configuration as the push on
/// connect, and answers every push on `…/applied/json` without a request ID,
/// `"statusCode": null` for a success and 500 with the exception text for a
/// failure. Both answers must reach `/statuses`.
///
/// The client's topics name the extension instance `cmx` literally, so the system
/// must run its CMX under that name.
pub async fn official_python_client(sys: System) {
    use official_python::*;
    assert_eq!(sys.cmx, "cmx", "the official client's topics say `cmx`");
    let rest = Rest::new(sys);
    let app = unique("app-official");
    let token = unique("ep");
    let first = rest
        .put_default(&app, None, &json!({"default_increment": 2}))
        .await;

    // KaaMqttClient.connect(): CONNECT, then the binary-data token request.
    let mut dev = OfficialClient::connect(sys).await;
    dev.publish(&binary_token_topic(&app, &token), b"").await;
    // examples/simple_client/main.py reports its software version to `cmx_ota`.
    dev.publish(
        &ota_configuration_status_reply_topic(&app, &token),
        OTA_REPORT.as_bytes(),
    )
    .await;

    // The push on connect, on the one topic `configuration_handler` listens on.
    let push = dev.expect(&configuration_status_topic(&app, &token)).await;
    let push: Value = serde_json::from_slice(&push.payload).expect("JSON push");
    assert_eq!(
        push,
        json!({"configId": first, "config": {"default_increment": 2}})
    );
    dev.publish(
        &configuration_status_reply_topic(&app, &token),
        applied_default(&first).as_bytes(),
    )
    .await;
    let row = rest
        .wait_status(&token, |r| {
            r["configId"] == first.as_str() && r["status"] == "APPLIED"
        })
        .await;
    assert_eq!(row["statusCode"], 200, "{row}");
    assert_eq!(row["appVersionName"], app.as_str(), "{row}");

    // A change is pushed; the device's handler raises and the library reports 500.
    let second = rest
        .put_endpoint(&token, &app, None, &json!({"default_increment": "fast"}))
        .await;
    let push = dev.expect(&configuration_status_topic(&app, &token)).await;
    let push: Value = serde_json::from_slice(&push.payload).expect("JSON push");
    assert_eq!(
        push,
        json!({"configId": second, "config": {"default_increment": "fast"}})
    );
    let exception = "invalid literal for int() with base 10: 'fast'";
    dev.publish(
        &configuration_status_reply_topic(&app, &token),
        applied_failed(&second, exception).as_bytes(),
    )
    .await;
    let row = rest
        .wait_status(&token, |r| {
            r["configId"] == second.as_str() && r["status"] == "REJECTED"
        })
        .await;
    assert_eq!(row["statusCode"], 500, "{row}");
    assert_eq!(row["reasonPhrase"], exception, "{row}");
    // The success is still on record, and nothing else was pushed (a rejected
    // configuration is not pushed again).
    let rows = rest.statuses(&token).await;
    assert!(
        rows.iter()
            .any(|r| r["configId"] == first.as_str() && r["status"] == "APPLIED"),
        "{rows:?}"
    );
    let extra: Vec<_> = dev
        .drain(QUIET)
        .await
        .into_iter()
        .filter(|m| m.topic == configuration_status_topic(&app, &token))
        .collect();
    assert!(extra.is_empty(), "{extra:?}");
}

/// The register of a stack that runs one (issue #17; `register` is its REST
/// address, no authentication): a device provisioned through it (with the
/// device simulator's register client) connects with its token and gets its
/// configuration; a suspended token is refused (403); a revoked one cuts the
/// device off within a second and is refused on reconnect (401); a token the
/// register does not know still connects as its own endpoint ID (development
/// mode, `kaa_kpc::resolver`: KPC with `accept-any-token` beside
/// `token-validation`).
pub async fn register_provisions_suspends_and_revokes(sys: System, register: SocketAddr) {
    use kaa_examples::device::provision::Register;
    let client = reqwest::Client::new();
    let token_action = |token_id: String, action: &'static str| {
        let url = format!("http://{register}/api/v1/tokens/{token_id}/{action}");
        let client = client.clone();
        async move {
            let status = client.post(url).send().await.unwrap().status();
            assert!(status.is_success(), "{action}: {status}");
        }
    };
    let provisioner = Register::new(&format!("http://{register}"), None).unwrap();
    let rest = Rest::new(sys);
    let app = unique("kettleV1");
    let config_id = rest.put_default(&app, None, &json!({"fw": 1})).await;

    // Provisioned: connects with its token, gets its configuration.
    let endpoint = unique("kettle");
    let provisioned = provisioner.provision(&endpoint, &app).await.unwrap();
    assert_eq!(provisioned.endpoint_id, endpoint);
    let mut dev = Device::connect(sys, &app, &provisioned.token).await;
    let answer = dev.fetch(None, json!({"observe": true})).await;
    assert_eq!(answer, json!({"configId": config_id, "config": {"fw": 1}}));

    // Development mode: a token the register does not know is its own endpoint ID.
    let stranger = unique("dev");
    let mut dev2 = Device::connect(sys, &app, &stranger).await;
    assert_eq!(
        dev2.fetch(None, json!({})).await["configId"],
        config_id.as_str()
    );
    dev2.disconnect().await;

    // Suspended: refused with 403, even in development mode.
    let other = provisioner.provision(&unique("lamp"), &app).await.unwrap();
    token_action(other.token_id.clone(), "suspend").await;
    let mut suspended = Device::connect(sys, &app, &other.token).await;
    assert_eq!(refused_status(&mut suspended).await, 403);
    suspended.disconnect().await;

    // Revoked: cut off within a second, refused on reconnect.
    token_action(provisioned.token_id.clone(), "revoke").await;
    let revoked_at = Instant::now();
    assert_eq!(refused_status(&mut dev).await, 401);
    assert!(
        revoked_at.elapsed() < Duration::from_secs(1),
        "cut off after {:?}",
        revoked_at.elapsed()
    );
    dev.disconnect().await;
    let mut again = Device::connect(sys, &app, &provisioned.token).await;
    assert_eq!(refused_status(&mut again).await, 401);
    again.disconnect().await;
}

/// The `statusCode` of the 1/KP error a request with the device's token gets.
pub async fn refused_status(dev: &mut Device) -> i64 {
    let topic = dev.request(None, json!({})).await;
    let err = dev.expect(&format!("{topic}/error")).await.json;
    err["statusCode"].as_i64().unwrap_or_default()
}

/// Calls the macro `$test` with the names of every end-to-end behaviour in this
/// module that both deployments run (the official Python client's needs the CMX
/// named `cmx`, so each deployment runs it with its own setup). The embedded and
/// the NATS test files pass their own test-generating macro, so a behaviour added
/// here runs on both stacks.
#[macro_export]
macro_rules! for_each_e2e_behaviour {
    ($test:ident) => {
        $test!(
            default_delivered,
            override_wins,
            push_within_one_second,
            offline_gets_only_latest,
            named_independent,
            applied_and_rejected_in_statuses,
            app_version_change,
            garbage_gets_errors,
            no_subscribe_delivery,
            delta_and_plain_devices_converge,
            a_device_watching_parts_is_pushed_only_when_they_change,
        );
    };
}
