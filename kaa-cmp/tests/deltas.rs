//! The CMX engine serving configuration deltas (kaa-rs extension,
//! `kaa_cmp::delta`) on `/config/json-patch[/<name>]`, beside plain 7/CMP
//! devices that must see nothing change. Simulated time, fake provider.

mod support;

use kaa_cmp::delta::{self, DeltaResponse};
use kaa_cmp::engine::OutgoingExtensionData;
use serde_json::{Value, json};
use support::*;

const EP: &str = "ep-1";
const PLAIN: &str = "ep-plain";

/// A configuration big enough that one changed key is a clearly smaller patch.
fn config(changed: &[(&str, Value)]) -> String {
    let mut c: serde_json::Map<String, Value> = (0..32)
        .map(|i| (format!("key{i}"), json!(format!("value number {i}"))))
        .collect();
    for (k, v) in changed {
        c.insert((*k).to_owned(), v.clone());
    }
    Value::Object(c).to_string()
}

fn decode(m: &OutgoingExtensionData) -> DeltaResponse {
    DeltaResponse::from_json(m.payload.as_deref().expect("a payload")).expect("a delta answer")
}

/// What a device holding `held` has after `m`.
fn apply(held: &Value, m: &OutgoingExtensionData) -> Value {
    match decode(m) {
        DeltaResponse::Unchanged => held.clone(),
        DeltaResponse::Config { config, .. } => config,
        DeltaResponse::Patch { patch, .. } => {
            delta::apply(held, &patch).expect("the patch applies")
        }
    }
}

fn stored(w: &World, ep: &str, name: Option<&str>) -> Value {
    match w.provider.get(ep, AV, name) {
        kaa_cdtp::answer::Current::Config { content, .. } => {
            serde_json::from_slice(content).unwrap()
        }
        _ => panic!("no configuration"),
    }
}

fn content(w: &World, ep: &str) -> Value {
    stored(w, ep, None)
}

#[test]
fn the_first_answer_is_whole_and_7cmp_shaped_then_pushes_are_patches() {
    let mut w = World::new();
    w.provider.set(EP, AV, None, config(&[]));
    w.connect(&[EP]);
    w.take(EP);
    w.send(EP, "/config/json-patch", Some(7), r#"{"observe":true}"#);
    let m = w.take_one(EP);
    assert_eq!(
        (&*m.resource_path, m.request_id, m.status_code),
        ("/config/json-patch", Some(7), 200)
    );
    // Byte for byte the 7/CMP answer.
    let whole = kaa_cmp::message::ConfigResponse::encode_raw("cfg-1", config(&[]).as_bytes());
    assert_eq!(m.payload.as_deref(), Some(&whole[..]));
    let held = apply(&Value::Null, &m);

    w.update(EP, None, &config(&[("key3", json!(3))]));
    let push = w.take_one(EP);
    assert_eq!(
        (&*push.resource_path, push.request_id),
        ("/config/json-patch", None)
    );
    let DeltaResponse::Patch {
        config_id,
        base_config_id,
        view_id,
        patch,
    } = decode(&push)
    else {
        panic!("{push:?}")
    };
    assert_eq!(
        (config_id.as_str(), base_config_id.as_str(), view_id),
        ("cfg-2", "cfg-1", None)
    );
    assert_eq!(patch.len(), 1);
    assert_eq!(apply(&held, &push), content(&w, EP));
    assert_eq!(w.cmx.stats().delta_patches, 1);
}

#[test]
fn plain_and_delta_devices_side_by_side() {
    let mut w = World::new();
    for ep in [EP, PLAIN] {
        w.provider.set(ep, AV, None, config(&[]));
    }
    w.connect(&[EP, PLAIN]);
    w.sent.clear();
    w.send(EP, "/config/json-patch", Some(1), r#"{"observe":true}"#);
    w.send(PLAIN, "/config/json", Some(1), r#"{"observe":true}"#);
    let mut delta_held = apply(&Value::Null, &w.take_one(EP));
    let first = w.take_one(PLAIN);
    assert_eq!(config_id(&first).as_deref(), Some("cfg-2"));
    for (i, ep) in [(10, EP), (11, PLAIN), (12, EP), (13, PLAIN)] {
        let id = w.update(ep, None, &config(&[("key5", json!(i))]));
        let m = w.take_one(ep);
        if ep == EP {
            assert_eq!(&*m.resource_path, "/config/json-patch");
            assert!(matches!(decode(&m), DeltaResponse::Patch { .. }));
            delta_held = apply(&delta_held, &m);
            assert_eq!(delta_held, content(&w, EP));
        } else {
            // Exactly 7/CMP.
            assert_eq!(&*m.resource_path, "/config/json");
            let expected = kaa_cmp::message::ConfigResponse::encode_raw(
                &id,
                config(&[("key5", json!(i))]).as_bytes(),
            );
            assert_eq!(m.payload.as_deref(), Some(&expected[..]));
        }
    }
}

#[test]
fn a_request_naming_a_cached_base_gets_a_patch_and_an_unknown_base_the_whole() {
    let mut w = World::new();
    w.provider.set(EP, AV, None, config(&[]));
    w.send(EP, "/config/json-patch", Some(1), "{}");
    let held = apply(&Value::Null, &w.take_one(EP));
    w.provider
        .set(EP, AV, None, config(&[("key1", json!(false))]));
    w.send(EP, "/config/json-patch", Some(2), r#"{"configId":"cfg-1"}"#);
    let m = w.take_one(EP);
    assert!(matches!(decode(&m), DeltaResponse::Patch { .. }), "{m:?}");
    assert_eq!(apply(&held, &m), content(&w, EP));
    // A base the engine never delivered: the whole configuration.
    w.send(
        EP,
        "/config/json-patch",
        Some(3),
        r#"{"configId":"cfg-99"}"#,
    );
    assert!(matches!(
        decode(&w.take_one(EP)),
        DeltaResponse::Config { .. }
    ));
    // The current one: `{}`.
    w.send(EP, "/config/json-patch", Some(4), r#"{"configId":"cfg-2"}"#);
    assert_eq!(w.take_one(EP).payload.as_deref(), Some(&b"{}"[..]));
}

#[test]
fn without_a_base_cache_every_delta_answer_is_whole() {
    let mut c = support::config();
    c.delta_cache_bytes = 0;
    let mut w = World::with(c);
    w.provider.set(EP, AV, None, config(&[]));
    w.connect(&[EP]);
    w.take(EP);
    w.send(EP, "/config/json-patch", Some(1), "{}");
    w.take_one(EP);
    w.update(EP, None, &config(&[("key2", json!(2))]));
    assert!(matches!(
        decode(&w.take_one(EP)),
        DeltaResponse::Config { .. }
    ));
    assert_eq!(
        (w.cmx.stats().delta_patches, w.cmx.stats().delta_whole),
        (0, 2)
    );
    assert_eq!(w.cmx.delta_cache_bytes(), 0);
}

#[test]
fn pointers_get_their_view_and_pushes_only_when_a_watched_part_changed() {
    let mut w = World::new();
    w.provider.set(EP, AV, None, config(&[]));
    w.connect(&[EP]);
    w.take(EP);
    w.send(
        EP,
        "/config/json-patch",
        Some(1),
        r#"{"pointers":["/key1","/missing"]}"#,
    );
    let m = w.take_one(EP);
    let DeltaResponse::Config {
        config_id,
        view_id,
        config: view,
    } = decode(&m)
    else {
        panic!()
    };
    assert_eq!(config_id, "cfg-1", "the whole configuration's ID");
    assert_eq!(view, json!({"/key1": "value number 1"}));
    delta::verify(view_id.as_deref().unwrap(), &view).unwrap();
    // Another part changes: no push.
    w.update(EP, None, &config(&[("key2", json!(2))]));
    assert!(w.take(EP).is_empty());
    assert_eq!(w.cmx.stats().delta_quiet, 1);
    // The watched part changes: a push with the new view.
    w.update(EP, None, &config(&[("key2", json!(2)), ("key1", json!(1))]));
    let m = w.take_one(EP);
    assert_eq!(apply(&view, &m), json!({"/key1": 1}));
    assert_eq!(
        decode(&m).document_id().map(str::to_owned),
        Some(kaa_cmp::canonical::config_id_of(&json!({"/key1": 1})))
    );
}

#[test]
fn named_configurations_push_on_their_delta_resource() {
    let mut w = World::new();
    w.provider.set(EP, AV, Some("network"), config(&[]));
    w.connect(&[EP]);
    w.send(EP, "/config/json-patch/network", Some(1), "{}");
    let held = apply(&Value::Null, &w.take_one(EP));
    let u = w
        .provider
        .set(EP, AV, Some("network"), config(&[("key9", json!(9))]));
    w.cmx.handle_config_updated(&u, w.now);
    w.drain();
    let m = w.take_one(EP);
    assert_eq!(&*m.resource_path, "/config/json-patch/network");
    assert_eq!(apply(&held, &m), stored(&w, EP, Some("network")));
}

#[test]
fn a_plain_request_ends_deltas_for_that_name() {
    let mut w = World::new();
    w.provider.set(EP, AV, None, config(&[]));
    w.connect(&[EP]);
    w.take(EP);
    w.send(EP, "/config/json-patch", Some(1), "{}");
    w.send(EP, "/config/json", Some(2), r#"{"configId":"cfg-1"}"#);
    w.take(EP);
    w.update(EP, None, &config(&[("key0", json!(0))]));
    let m = w.take_one(EP);
    assert_eq!(&*m.resource_path, "/config/json");
    assert_eq!(config_id(&m).as_deref(), Some("cfg-2"));
}

#[test]
fn an_endpoint_back_online_gets_a_patch_from_what_it_reported_applied() {
    let mut w = World::new();
    w.provider.set(EP, AV, None, config(&[]));
    w.connect(&[EP]);
    w.take(EP);
    w.send(EP, "/config/json-patch", Some(1), r#"{"observe":true}"#);
    let held = apply(&Value::Null, &w.take_one(EP));
    w.send(EP, "/applied/json", None, r#"{"configId":"cfg-1"}"#);
    w.disconnect(&[EP]);
    for i in 0..3 {
        w.update(EP, None, &config(&[("key4", json!(i))]));
    }
    assert!(w.take(EP).is_empty(), "offline");
    w.connect(&[EP]);
    let m = w.take_one(EP);
    let DeltaResponse::Patch {
        base_config_id,
        config_id,
        ..
    } = decode(&m)
    else {
        panic!("{m:?}")
    };
    assert_eq!(
        (base_config_id.as_str(), config_id.as_str()),
        ("cfg-1", "cfg-4"),
        "latest only"
    );
    assert_eq!(apply(&held, &m), content(&w, EP));
}

#[test]
fn malformed_delta_requests_are_refused_like_7cmp_ones() {
    let mut w = World::new();
    for (payload, needle) in [
        (r#"{"pointers":["nope"]}"#, "JSON Pointer"),
        (r#"{"pointers":[]}"#, "empty"),
        (r#"{"delta":true}"#, "unknown field"),
    ] {
        w.send(EP, "/config/json-patch", Some(1), payload);
        let m = w.take_one(EP);
        assert_eq!(m.status_code, 400, "{payload}");
        assert!(
            m.reason_phrase
                .as_deref()
                .unwrap_or_default()
                .contains(needle),
            "{m:?}"
        );
    }
    w.send(EP, "/config/json-patch/a.b", Some(1), "{}");
    assert_eq!(w.take_one(EP).status_code, 404);
    w.send(EP, "/config/json-patches", Some(1), "{}");
    assert_eq!(w.take_one(EP).status_code, 404);
}

#[test]
fn an_adopted_session_that_used_the_delta_resource_gets_delta_pushes() {
    let mut w = World::new();
    w.provider.set(EP, AV, None, config(&[]));
    // A restarted CMX learns the session and the paths it used.
    w.cmx.adopt_session(EP, AV, &["/config/json-patch"], w.now);
    w.drain();
    let m = w.take_one(EP);
    assert_eq!(&*m.resource_path, "/config/json-patch");
    let held = apply(&Value::Null, &m);
    w.update(EP, None, &config(&[("key8", json!(8))]));
    let m = w.take_one(EP);
    assert!(matches!(decode(&m), DeltaResponse::Patch { .. }), "{m:?}");
    assert_eq!(apply(&held, &m), content(&w, EP));
}

// ---------------------------------------------------------------------------
// The device state machine against the engine, over a lossy push path.
// ---------------------------------------------------------------------------

mod convergence {
    use super::*;
    use kaa_cmp::canonical::config_id_of;
    use kaa_cmp::device::{Device, DeviceConfig};
    use kaa_ism::UnixMillis;
    use proptest::prelude::*;

    const TOKEN: &str = "tok";

    /// The device's publishes to the engine (as a communication service
    /// would forward them), and the engine's messages to the device, pushes
    /// dropped while `lose_pushes`.
    fn exchange(w: &mut World, d: &mut Device, lose_pushes: bool) {
        for _ in 0..32 {
            let mut moved = false;
            while let Some(p) = d.poll_publish() {
                moved = true;
                let t = kaa_kp::Topic::parse(&p.topic).unwrap();
                let cd = {
                    let mut cd =
                        w.client_data(EP, t.resource_path(), t.request_id().map(|r| r.get()), "");
                    cd.payload = p.payload.clone().into();
                    cd
                };
                w.send_msg(&cd, Some(KPC_REPLICA));
            }
            for m in w.take(EP) {
                moved = true;
                if m.request_id.is_none() && lose_pushes {
                    continue;
                }
                let request_id = m.request_id.map(|r| format!("/{r}")).unwrap_or_default();
                let (kind, payload) = if (200..300).contains(&m.status_code) {
                    ("status", m.payload.clone().unwrap_or_default().to_vec())
                } else {
                    let e = kaa_kp::ErrorResponse {
                        status_code: m.status_code,
                        reason_phrase: m.reason_phrase.as_deref().unwrap_or("x").to_owned(),
                    };
                    ("error", e.to_json())
                };
                let topic = format!("kp1/{AV}/cmx/{TOKEN}{}{request_id}/{kind}", m.resource_path);
                if m.resource_path.starts_with("/applied") {
                    continue;
                }
                d.handle_publish(&topic, &payload, UnixMillis(w.now.0))
                    .unwrap();
            }
            if !moved {
                return;
            }
        }
        panic!("the device and the engine keep talking");
    }

    #[derive(Debug, Clone)]
    enum Step {
        /// The configuration changes (one key), the push delivered or lost.
        Update {
            key: u8,
            value: i64,
            delivered: bool,
        },
        /// The device goes offline and comes back (its pushes while away are lost).
        Reconnect { updates_while_away: u8 },
    }

    fn steps() -> impl Strategy<Value = Vec<Step>> {
        proptest::collection::vec(
            prop_oneof![
                4 => (0u8..40, -2i64..2, proptest::bool::weighted(0.5))
                    .prop_map(|(key, value, delivered)| Step::Update { key, value, delivered }),
                1 => (0u8..3).prop_map(|updates_while_away| Step::Reconnect { updates_while_away }),
            ],
            0..16,
        )
    }

    fn set(w: &mut World, content: &Value) {
        let id = config_id_of(content);
        let u = w
            .provider
            .set_with_id(EP, AV, None, &id, content.to_string());
        w.cmx.handle_config_updated(&u, w.now);
        w.drain();
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        /// Issue #18: a device with deltas on that misses any number of
        /// pushes (and the app's offline periods) still converges to the
        /// latest configuration, checking every config ID on the way (the
        /// provider's IDs are content hashes, as ECR's), at once when a later
        /// push reaches it and at the latest on its next request.
        #[test]
        fn a_delta_device_missing_pushes_converges_through_the_engine(steps in steps(), small_cache in any::<bool>()) {
            let mut c = support::config();
            if small_cache {
                c.delta_cache_bytes = 2_500; // about two configurations
            }
            let mut w = World::with(c);
            let mut content: Value = serde_json::from_str(&config(&[])).unwrap();
            set(&mut w, &content);
            let mut dc = DeviceConfig::new(AV, "cmx", TOKEN);
            dc.deltas = true;
            dc.auto_report_applied = true;
            let mut d = Device::new(dc).unwrap();
            w.connect(&[EP]);
            w.take(EP);
            d.request_config(None, Some(true), UnixMillis(w.now.0)).unwrap();
            exchange(&mut w, &mut d, false);
            let converged = |d: &Device, content: &Value| {
                d.configuration(None).map(|c| (c.config_id.clone(), c.config.clone()))
                    == Some((config_id_of(content), content.clone()))
            };
            prop_assert!(converged(&d, &content));
            for step in steps {
                w.now = UnixMillis(w.now.0 + 1_000);
                match step {
                    Step::Update { key, value, delivered } => {
                        let before = content.clone();
                        content[format!("key{key}")] = json!(value);
                        if content == before {
                            // ECR stores identical content as no new version and
                            // broadcasts nothing.
                            continue;
                        }
                        set(&mut w, &content);
                        exchange(&mut w, &mut d, !delivered);
                        if delivered {
                            prop_assert!(converged(&d, &content), "{:?}", d.configuration(None));
                        }
                    }
                    Step::Reconnect { updates_while_away } => {
                        w.disconnect(&[EP]);
                        for _ in 0..updates_while_away {
                            let away = content.get("away").and_then(Value::as_i64).unwrap_or(0);
                            content["away"] = json!(away + 1);
                            set(&mut w, &content);
                        }
                        w.connect(&[EP]);
                        exchange(&mut w, &mut d, false);
                        prop_assert!(converged(&d, &content), "{:?}", d.configuration(None));
                    }
                }
            }
            // The next request (a reconnect of the device's own) brings it up to date.
            d.request_config(None, Some(true), UnixMillis(w.now.0)).unwrap();
            exchange(&mut w, &mut d, false);
            prop_assert!(converged(&d, &content), "{:?}", d.configuration(None));
        }
    }
}
