//! Deterministic tests of the CMX engine against a fake provider, on simulated
//! time: one test per rule of the engine's behaviour.

mod support;

use std::time::Duration;

use kaa_cmp::engine::{Cmx, Output, RefusalReason};
use kaa_ism::UnixMillis;
use serde_json::json;
use support::*;

const EP: &str = "ep-1";

// ---------------------------------------------------------------------------
// Request / response
// ---------------------------------------------------------------------------

#[test]
fn request_is_answered_with_the_current_configuration() {
    let mut w = World::new();
    w.provider.set(EP, AV, None, r#"{"rate":5}"#);
    w.send(EP, "/config/json", Some(42), r#"{"observe":true}"#);

    // One CDTP request, as 6/CDTP says.
    assert_eq!(w.requests.len(), 1);
    let req = &w.requests[0];
    assert_eq!(&*req.subject, "kaa.v1.service.ecr.cdtp.request");
    assert_eq!(&*req.reply_to, "kaa.v1.replica.cmx-1.cdtp.response");
    assert_eq!(req.correlation_id, "cmx-1-1");
    assert_eq!(&*req.endpoint_id, EP);
    assert_eq!(&*req.app_version_name, AV);
    assert_eq!(req.config_id, None);
    assert_eq!(req.config_name, None);
    assert_eq!(req.timeout, 5_000);
    assert_eq!(req.deadline, UnixMillis(w.now.0 + 5_000));

    let m = w.take_one(EP);
    assert_eq!(&*m.subject, KPC_REPLICA, "session affinity");
    assert_eq!(m.correlation_id, "kpc-1", "the request's correlation ID");
    assert_eq!(m.request_id, Some(42));
    assert_eq!(&*m.resource_path, "/config/json");
    assert_eq!(&*m.app_version_name, AV);
    assert_eq!(&*m.extension_instance_name, "cmx");
    assert_eq!(m.status_code, 200);
    assert_eq!(
        json(&m),
        json!({"configId": "cfg-1", "config": {"rate": 5}})
    );
}

#[test]
fn request_naming_the_current_configuration_is_answered_unchanged() {
    let mut w = World::new();
    let id = w.provider.set(EP, AV, None, "1").config_id.to_string();
    w.send(
        EP,
        "/config/json",
        Some(1),
        &format!(r#"{{"configId":"{id}"}}"#),
    );
    assert_eq!(w.requests[0].config_id.as_deref(), Some(id.as_str()));
    let m = w.take_one(EP);
    assert_eq!(m.payload.as_deref(), Some(&b"{}"[..]));
    assert_eq!(m.status_code, 200);

    // An older ID gets the new configuration.
    let new = w.provider.set(EP, AV, None, "2").config_id.to_string();
    w.send(
        EP,
        "/config/json",
        Some(2),
        &format!(r#"{{"configId":"{id}"}}"#),
    );
    let m = w.take_one(EP);
    assert_eq!(config_id(&m), Some(new));
    assert_eq!(json(&m)["config"], json!(2));
}

#[test]
fn absent_configuration_is_empty_id_and_null() {
    let mut w = World::new();
    w.send(EP, "/config/json", Some(1), "{}");
    let m = w.take_one(EP);
    assert_eq!(m.status_code, 200);
    assert_eq!(json(&m), json!({"configId": "", "config": null}));
    // A device that knows it has none is told "unchanged".
    w.send(EP, "/config/json", Some(2), r#"{"configId":""}"#);
    assert_eq!(w.take_one(EP).payload.as_deref(), Some(&b"{}"[..]));
}

#[test]
fn requests_waiting_on_one_fetch_share_it() {
    let mut w = World::new();
    w.auto_answer = false;
    w.provider.set(EP, AV, None, "1");
    w.send(EP, "/config/json", Some(1), "{}");
    w.send(EP, "/config/json", Some(2), r#"{"configId":"cfg-1"}"#);
    assert_eq!(w.requests.len(), 1, "one CDTP request in flight per name");
    w.answer_next();
    let out = w.take(EP);
    assert_eq!(out.len(), 2);
    assert_eq!(
        (out[0].request_id, config_id(&out[0])),
        (Some(1), Some("cfg-1".into()))
    );
    assert_eq!(out[1].request_id, Some(2));
    assert_eq!(out[1].payload.as_deref(), Some(&b"{}"[..]));
}

#[test]
fn replies_follow_session_affinity_else_the_instance_subject() {
    let mut w = World::new();
    w.provider.set(EP, AV, None, "1");
    // replyTo with the ClientData message type: the type is substituted.
    let cd = w.client_data(EP, "/config/json", Some(1), "{}");
    w.send_msg(&cd, Some("kaa.v1.replica.kpc-7.esp.ClientData"));
    assert_eq!(
        &*w.take_one(EP).subject,
        "kaa.v1.replica.kpc-7.esp.ExtensionData"
    );
    // No replyTo, or something that is not a targeted subject: instance-wide.
    let cd = w.client_data(EP, "/config/json", Some(2), "{}");
    w.send_msg(&cd, None);
    assert_eq!(&*w.take_one(EP).subject, KPC_INSTANCE);
    let cd = w.client_data(EP, "/config/json", Some(3), "{}");
    w.send_msg(&cd, Some("_INBOX.abc"));
    assert_eq!(&*w.take_one(EP).subject, KPC_INSTANCE);
    // Pushes use the affinity of the latest request...
    w.send(EP, "/config/json", Some(4), "{}");
    w.take(EP);
    w.update(EP, None, "2");
    assert_eq!(&*w.take_one(EP).subject, KPC_REPLICA);
    // ...until a new session starts on another replica (the connect push re-sends
    // cfg-2: the device never reported it applied): then that replica's
    // subject, where the session's answers go too.
    w.cmx
        .handle_connected(&connected_from(EP, "kpc-2", w.now), w.now);
    w.drain();
    assert_eq!(&*w.take_one(EP).subject, KPC2_REPLICA);
    w.update(EP, None, "3");
    assert_eq!(&*w.take_one(EP).subject, KPC2_REPLICA);
    // A session from a replica ID that is no subject token: instance-wide.
    for odd in ["", "kpc.3", "kpc 3"] {
        w.advance(5);
        w.cmx
            .handle_connected(&connected_from(EP, odd, w.now), w.now);
        w.drain();
        w.take(EP);
        w.update(EP, None, "4");
        assert_eq!(&*w.take_one(EP).subject, KPC_INSTANCE, "{odd:?}");
    }
}

/// `kaa.v1.replica.kpc-2.esp.ExtensionData`.
const KPC2_REPLICA: &str = "kaa.v1.replica.kpc-2.esp.ExtensionData";

/// Found by `fault_replicas` (kpc-kill, with the CMX hand-over fenced): a device
/// moved to KPC replica 2; the `connected` event of its new session made CMX
/// push the configuration the device had not reported applied, on the
/// instance-wide subject, where KPC replica 1 took it and handed it over to
/// replica 2; meanwhile the session's request was answered with a newer
/// configuration on replica 2's subject, and the older push arrived last. A new
/// session's pushes go to the reporting replica's subject, as the answers do.
#[test]
fn a_new_sessions_pushes_take_its_replicas_subject_like_its_answers() {
    let mut w = World::new();
    w.provider.set(EP, AV, None, "1");
    w.send(EP, "/config/json", Some(1), r#"{"observe":true}"#);
    assert_eq!(&*w.take_one(EP).subject, KPC_REPLICA);
    // The device moves to kpc-2: `connected`, then its first request there.
    w.advance(5);
    w.cmx
        .handle_connected(&connected_from(EP, "kpc-2", w.now), w.now);
    w.drain();
    let push = w.take_one(EP);
    assert!(push.is_push());
    assert_eq!(&*push.subject, KPC2_REPLICA);
    let cd = w.client_data(EP, "/config/json", Some(2), r#"{"observe":true}"#);
    w.send_msg(&cd, Some(KPC2_REPLICA));
    assert_eq!(&*w.take_one(EP).subject, KPC2_REPLICA);
    // Sessions listed by kpc-2 likewise.
    w.advance(5);
    w.cmx
        .adopt_sessions(&connected_from(EP, "kpc-3", w.now), w.now);
    w.drain();
    for m in w.take(EP) {
        assert_eq!(&*m.subject, "kaa.v1.replica.kpc-3.esp.ExtensionData");
    }
}

/// A device's requests name the replica that answers it (`replyTo`), and its
/// pushes follow the last one, with no event in between: a request through
/// another replica moves the pushes there, one through the first moves them
/// back, and a request through the instance-wide subject sends them there.
#[test]
fn pushes_follow_the_replica_of_the_devices_last_request() {
    let mut w = World::new();
    w.provider.set(EP, AV, None, "1");
    w.send(EP, "/config/json", Some(1), r#"{"observe":true}"#);
    assert_eq!(&*w.take_one(EP).subject, KPC_REPLICA);
    // Request n (from 2 on) is answered, then configuration n is pushed.
    for (n, via) in (2..).zip([
        KPC2_REPLICA,
        KPC2_REPLICA,
        KPC_REPLICA,
        KPC_INSTANCE,
        KPC2_REPLICA,
    ]) {
        w.advance(5);
        let cd = w.client_data(EP, "/config/json", Some(n), r#"{"observe":true}"#);
        w.send_msg(&cd, Some(via));
        assert_eq!(&*w.take_one(EP).subject, via, "the answer");
        w.update(EP, None, &n.to_string());
        let push = w.take_one(EP);
        assert!(push.is_push());
        assert_eq!(
            &*push.subject, via,
            "the push after a request through {via}"
        );
    }
}

/// Found by the fault test (`kpc-kill`): the `connected` event of a new session
/// can reach CMX after the session's first request. The request's replica stays
/// the push subject: a push on the instance-wide subject can overtake an answer
/// on the replica subject.
#[test]
fn a_connected_event_older_than_the_sessions_request_keeps_its_replica() {
    let mut w = World::new();
    w.provider.set(EP, AV, None, "1");
    let stamp = w.now.0;
    w.advance(5);
    w.send(EP, "/config/json", Some(1), r#"{"observe":true}"#);
    assert_eq!(&*w.take_one(EP).subject, KPC_REPLICA);
    let late = kaa_elce::ConnectedEvent {
        correlation_id: "conn".into(),
        timestamp: stamp,
        timeout: 0,
        endpoints: vec![(EP.into(), AV.into())],
        originator_replica_id: "kpc-1".into(),
    };
    w.cmx.handle_connected(&late, w.now);
    w.drain();
    // Answered and not reported applied: the connect push goes out, to the replica.
    assert_eq!(&*w.take_one(EP).subject, KPC_REPLICA);
    w.update(EP, None, "2");
    assert_eq!(&*w.take_one(EP).subject, KPC_REPLICA);
}

fn connected_from(ep: &str, replica: &str, at: UnixMillis) -> kaa_elce::ConnectedEvent<'static> {
    kaa_elce::ConnectedEvent {
        correlation_id: "conn".into(),
        timestamp: at.0,
        timeout: 0,
        endpoints: vec![(ep.to_owned().into(), AV.into())],
        originator_replica_id: replica.to_owned().into(),
    }
}

/// A `connected` event that arrives after the session's first request, from the
/// replica the request came through, or from another one but stamped before the
/// request (it took another path: with CMX replicas the request may be handed over
/// to the owner first), keeps the request's replica subject: a push on the
/// instance-wide subject could overtake the answer still queued on the replica's
/// (seen in `fault_replicas`, kpc-kill: a device got the newer configuration by
/// push, then the older one as the answer).
#[test]
fn a_connected_event_of_the_requests_session_keeps_its_affinity() {
    let mut w = World::new();
    w.provider.set(EP, AV, None, "1");
    let connected_at = w.now;
    w.advance(5);
    w.send(EP, "/config/json", Some(1), "{}");
    let answer = w.take_one(EP);
    assert_eq!(&*answer.subject, KPC_REPLICA);
    assert_eq!(config_id(&answer).as_deref(), Some("cfg-1"));
    // From the request's replica (`kpc-1`), stamped in the same millisecond as
    // the request or before it.
    for at in [w.now, connected_at] {
        w.cmx
            .handle_connected(&connected_from(EP, "kpc-1", at), w.now);
        w.drain();
        // The connect push (cfg-1 not yet reported applied) keeps the subject.
        for m in w.take(EP) {
            assert_eq!(&*m.subject, KPC_REPLICA, "{m:?}");
        }
    }
    // From another replica, stamped before the request.
    w.cmx
        .handle_connected(&connected_from(EP, "kpc-2", connected_at), w.now);
    w.drain();
    for m in w.take(EP) {
        assert_eq!(&*m.subject, KPC_REPLICA, "{m:?}");
    }
    w.update(EP, None, "2");
    assert_eq!(&*w.take_one(EP).subject, KPC_REPLICA);
    // A later session on another replica still resets it, to that replica's.
    w.advance(5);
    w.cmx
        .handle_connected(&connected_from(EP, "kpc-2", w.now), w.now);
    w.drain();
    assert_eq!(&*w.take_one(EP).subject, KPC2_REPLICA);
}

/// The same for sessions a communication service replica lists again (CMX asks
/// after its bus reconnected; seen in `fault_replicas`, nats-node-kill: the reset
/// let a push overtake the one queued on the replica subject).
#[test]
fn sessions_listed_by_the_requests_replica_keep_its_affinity() {
    let mut w = World::new();
    w.provider.set(EP, AV, None, "1");
    w.send(EP, "/config/json", Some(1), "{}");
    assert_eq!(&*w.take_one(EP).subject, KPC_REPLICA);
    w.advance(5);
    w.cmx
        .adopt_sessions(&connected_from(EP, "kpc-1", w.now), w.now);
    w.drain();
    for m in w.take(EP) {
        assert_eq!(&*m.subject, KPC_REPLICA, "{m:?}");
    }
    w.update(EP, None, "2");
    assert_eq!(&*w.take_one(EP).subject, KPC_REPLICA);
    // Listed by another replica: that session's, the subject is stale; the
    // listing replica's is used.
    w.cmx
        .adopt_sessions(&connected_from(EP, "kpc-2", w.now), w.now);
    w.drain();
    assert_eq!(&*w.take_one(EP).subject, KPC2_REPLICA);
}

#[test]
fn request_without_request_id_gets_a_push_and_no_error() {
    let mut w = World::new();
    w.provider.set(EP, AV, None, "1");
    w.send(EP, "/config/json", None, "{}");
    let m = w.take_one(EP);
    assert!(m.is_push());
    assert_eq!(config_id(&m).as_deref(), Some("cfg-1"));
    // Unchanged: nothing to say.
    w.send(EP, "/config/json", None, r#"{"configId":"cfg-1"}"#);
    assert!(w.take(EP).is_empty());
    // An error without a request ID is not published (1/KP).
    w.send(EP, "/config/json", None, "not json");
    assert!(w.take(EP).is_empty());
    assert_eq!(w.cmx.stats().errors_without_request_id, 1);
}

#[test]
fn refused_requests_without_request_id_are_counted_by_reason_and_kept() {
    let mut w = World::new();
    w.auto_answer = false;
    // An applied report that cannot be recorded (which configuration?), as Kaa's
    // official client would send it for a push without `configId`.
    w.send(
        EP,
        "/applied/json",
        None,
        r#"{"configId": null, "statusCode": 500, "reasonPhrase": "s3cr3t"}"#,
    );
    assert!(w.applied.is_empty() && w.take(EP).is_empty());
    let r = w.cmx.poll_refusal().expect("a refusal");
    assert_eq!(r.reason, RefusalReason::MalformedPayload);
    assert_eq!(r.status_code, 400);
    assert_eq!(r.correlation_id, "kpc-1", "the ClientData's");
    assert_eq!(r.endpoint_id.as_deref(), Some(EP));
    assert_eq!(
        (&*r.app_version_name, &*r.resource_path),
        (AV, "/applied/json")
    );
    assert!(
        r.detail.starts_with("invalid 7/CMP applied request") && !r.detail.contains("s3cr3t"),
        "nothing of the payload: {}",
        r.detail
    );
    assert_eq!(w.cmx.poll_refusal(), None);
    // Not a 7/CMP resource.
    w.send(EP, "/applied/xml", None, "{}");
    assert_eq!(
        w.cmx.poll_refusal().map(|r| (r.reason, r.status_code)),
        Some((RefusalReason::UnknownResource, 404))
    );
    // A configuration request the provider never answers: no 504 to send.
    w.send(EP, "/config/json", None, "{}");
    w.advance(5_001);
    assert!(w.take(EP).is_empty());
    let r = w.cmx.poll_refusal().expect("a refusal");
    assert_eq!(
        (r.reason, r.status_code),
        (RefusalReason::ProviderTimeout, 504)
    );
    assert_eq!(r.correlation_id, "kpc-3");
    // With a request ID the device is answered instead: no refusal.
    w.send(EP, "/applied/json", Some(4), "{}");
    assert_eq!(w.take_one(EP).status_code, 400);
    assert_eq!(w.cmx.poll_refusal(), None);

    let stats = w.cmx.stats();
    let counts = &stats.refused_without_request_id;
    assert_eq!(counts.get(RefusalReason::MalformedPayload), 1);
    assert_eq!(counts.get(RefusalReason::UnknownResource), 1);
    assert_eq!(counts.get(RefusalReason::ProviderTimeout), 1);
    assert_eq!(counts.total(), 3);
    assert_eq!(stats.errors_without_request_id, 3);
    assert_eq!(stats.refusals_not_kept, 0);
}

#[test]
fn refusals_not_taken_are_bounded() {
    let mut w = World::new();
    for _ in 0..1100 {
        w.send(EP, "/applied/json", None, "not json");
    }
    let stats = w.cmx.stats().clone();
    assert_eq!(
        stats
            .refused_without_request_id
            .get(RefusalReason::MalformedPayload),
        1100,
        "every refusal is counted"
    );
    assert_eq!(stats.refusals_not_kept, 1100 - 1024);
    let kept: Vec<_> = std::iter::from_fn(|| w.cmx.poll_refusal()).collect();
    assert_eq!(kept.len(), 1024);
    assert_eq!(kept[0].correlation_id, "kpc-77", "the latest are kept");
    assert_eq!(kept[1023].correlation_id, "kpc-1100");
}

// ---------------------------------------------------------------------------
// Observe and pushes
// ---------------------------------------------------------------------------

fn observing(observe: &str) -> World {
    let mut w = World::new();
    w.provider.set(EP, AV, None, "1");
    w.send(EP, "/config/json", Some(1), observe);
    assert_eq!(w.take(EP).len(), 1);
    w
}

#[test]
fn observe_true_pushes_every_change() {
    let mut w = observing(r#"{"observe":true}"#);
    for n in 2..5 {
        let id = w.update(EP, None, &n.to_string());
        let m = w.take_one(EP);
        assert!(m.is_push());
        assert_eq!(&*m.resource_path, "/config/json");
        assert_eq!(m.status_code, 200);
        assert_eq!(json(&m), json!({"configId": id, "config": n}));
    }
}

#[test]
fn observe_absent_pushes_too() {
    let mut w = observing("{}");
    let id = w.update(EP, None, "2");
    assert_eq!(config_id(&w.take_one(EP)), Some(id));
}

#[test]
fn observe_false_stops_pushes_until_the_next_request() {
    let mut w = observing(r#"{"observe":false}"#);
    w.update(EP, None, "2");
    assert!(w.take(EP).is_empty());
    assert!(
        w.requests.len() == 1,
        "no fetch for an endpoint that opted out"
    );
    // Connect does not push either.
    w.disconnect(&[EP]);
    w.connect(&[EP]);
    assert!(w.take(EP).is_empty());
    // The next request (observe absent) turns pushes back on.
    w.send(EP, "/config/json", Some(2), r#"{"configId":"cfg-1"}"#);
    assert_eq!(config_id(&w.take_one(EP)).as_deref(), Some("cfg-2"));
    let id = w.update(EP, None, "3");
    assert_eq!(config_id(&w.take_one(EP)), Some(id));
}

#[test]
fn pushes_go_only_to_connected_endpoints() {
    let mut w = observing(r#"{"observe":true}"#);
    let before = w.requests.len();
    w.disconnect(&[EP]);
    w.update(EP, None, "2");
    assert!(w.take(EP).is_empty());
    assert_eq!(
        w.requests.len(),
        before,
        "nothing fetched for an offline endpoint"
    );
    // An endpoint the engine has never seen is not pushed to either.
    w.update("stranger", None, "1");
    assert!(w.take("stranger").is_empty());
    assert_eq!(w.cmx.stats().config_updates_ignored, 1);
}

#[test]
fn offline_endpoint_gets_only_the_latest_once_on_connect() {
    let mut w = observing(r#"{"observe":true}"#);
    w.send(EP, "/applied/json", None, r#"{"configId":"cfg-1"}"#);
    w.disconnect(&[EP]);
    let mut latest = String::new();
    for n in 2..=6 {
        latest = w.update(EP, None, &n.to_string());
    }
    assert!(w.take(EP).is_empty());
    w.connect(&[EP]);
    let m = w.take_one(EP);
    assert!(m.is_push());
    assert_eq!(json(&m), json!({"configId": latest, "config": 6}));
    // Applied: a later reconnect pushes nothing.
    w.send(
        EP,
        "/applied/json",
        None,
        &format!(r#"{{"configId":"{latest}"}}"#),
    );
    w.disconnect(&[EP]);
    w.connect(&[EP]);
    assert!(w.take(EP).is_empty());
}

#[test]
fn connect_pushes_what_was_delivered_but_not_applied() {
    // The push sent just before the device went away may have been lost.
    let mut w = observing(r#"{"observe":true}"#);
    w.disconnect(&[EP]);
    w.connect(&[EP]);
    assert_eq!(config_id(&w.take_one(EP)).as_deref(), Some("cfg-1"));
}

#[test]
fn connect_pushes_the_default_configuration_to_a_new_endpoint() {
    let mut w = World::new();
    w.provider.set(EP, AV, None, r#"{"a":1}"#);
    w.connect(&[EP, "ep-without-config"]);
    let m = w.take_one(EP);
    assert_eq!(&*m.resource_path, "/config/json");
    assert_eq!(json(&m)["config"], json!({"a":1}));
    // Nothing to push where there is no configuration.
    assert!(w.take("ep-without-config").is_empty());
}

#[test]
fn app_version_change_pushes_the_new_versions_configuration() {
    let mut w = observing(r#"{"observe":true}"#);
    w.provider.set(EP, AV2, None, r#"{"v":2}"#);
    w.app_version_updated(EP, AV, AV2);
    let m = w.take_one(EP);
    assert!(m.is_push());
    assert_eq!(&*m.app_version_name, AV2);
    assert_eq!(json(&m)["config"], json!({"v":2}));
    assert_eq!(&*w.requests.last().unwrap().app_version_name, AV2);
    // Updates for the old app version are no longer relevant.
    w.update_av(EP, AV, None, "old");
    assert!(w.take(EP).is_empty());
}

#[test]
fn app_version_follows_the_newest_information() {
    let mut w = observing(r#"{"observe":true}"#);
    w.provider.set(EP, AV2, None, r#""v2""#);
    // A device message stamped before the event, delivered after it.
    let late = w.client_data(EP, "/applied/json", None, r#"{"configId":"cfg-1"}"#);
    w.advance(10);
    w.app_version_updated(EP, AV, AV2);
    assert_eq!(json(&w.take_one(EP))["config"], json!("v2"));
    w.send_msg(&late, Some(KPC_REPLICA));
    assert_eq!(w.cmx.endpoint(EP).unwrap().app_version_name, AV2);
    assert!(w.take(EP).is_empty());
    // A newer device message under the old app version wins: the device speaks it.
    w.advance(10);
    w.send(EP, "/applied/json", None, r#"{"configId":"cfg-1"}"#);
    assert_eq!(w.cmx.endpoint(EP).unwrap().app_version_name, AV);
}

#[test]
fn a_request_under_a_new_app_version_pushes_the_other_names() {
    let mut w = World::new();
    w.provider.set(EP, AV, None, "1");
    w.provider.set(EP, AV, Some("net"), "1");
    w.send(EP, "/config/json", Some(1), "{}");
    w.send(EP, "/config/json/net", Some(2), "{}");
    assert_eq!(w.take(EP).len(), 2);
    w.provider.set(EP, AV2, None, r#""d2""#);
    w.provider.set(EP, AV2, Some("net"), r#""n2""#);
    w.advance(1);
    let mut cd = w.client_data(EP, "/config/json/net", Some(3), "{}");
    cd.app_version_name = AV2.into();
    w.send_msg(&cd, Some(KPC_REPLICA));
    let out = w.take(EP);
    assert_eq!(out.len(), 2, "{out:#?}");
    let default = out.iter().find(|m| m.is_push()).unwrap();
    assert_eq!(
        (&*default.resource_path, &*default.app_version_name),
        ("/config/json", AV2)
    );
    assert_eq!(json(default)["config"], json!("d2"));
    let answer = out.iter().find(|m| !m.is_push()).unwrap();
    assert_eq!(json(answer)["config"], json!("n2"));
}

// ---------------------------------------------------------------------------
// Never an older configuration after a newer one
// ---------------------------------------------------------------------------

#[test]
fn response_issued_before_an_update_but_arriving_after_it_is_not_delivered() {
    let mut w = World::new();
    w.auto_answer = false;
    w.provider.set(EP, AV, None, "1");
    w.send(EP, "/config/json", Some(1), r#"{"observe":true}"#);
    // The provider answers with cfg-1...
    let req = w.held.pop_front().unwrap();
    let stale = w.provider.answer(&req.message(), w.now);
    // ...then the configuration changes and the broadcast overtakes the answer.
    w.update(EP, None, "2");
    assert!(w.take(EP).is_empty(), "nothing delivered before the fetch");
    w.cmx.handle_config_response(&stale, w.now);
    w.drain();
    assert!(w.take(EP).is_empty(), "the stale answer is not delivered");
    assert_eq!(w.cmx.stats().cdtp_responses_stale, 1);
    // The engine asked again; the device gets cfg-2 only.
    w.answer_next();
    let out = w.take(EP);
    assert_eq!(out.len(), 1, "{out:#?}");
    assert_eq!(out[0].request_id, Some(1));
    assert_eq!(config_id(&out[0]).as_deref(), Some("cfg-2"));
    assert!(w.held.is_empty());
}

#[test]
fn reordered_and_duplicated_updates_never_push_an_older_configuration() {
    let mut w = observing(r#"{"observe":true}"#);
    let u2 = w.provider.set(EP, AV, None, "2");
    let u3 = w.provider.set(EP, AV, None, "3");
    // The newer broadcast arrives first, then the older one, then it again.
    for u in [&u3, &u2, &u2] {
        w.cmx.handle_config_updated(u, w.now);
        w.drain();
    }
    let ids: Vec<_> = w.take(EP).iter().map(|m| config_id(m).unwrap()).collect();
    assert_eq!(ids, ["cfg-3"], "only the latest, once");
}

#[test]
fn late_and_duplicated_responses_are_ignored() {
    let mut w = World::new();
    w.auto_answer = false;
    w.provider.set(EP, AV, None, "1");
    w.send(EP, "/config/json", Some(1), "{}");
    let req = w.held.pop_front().unwrap();
    let resp = w.provider.answer(&req.message(), w.now);
    w.cmx.handle_config_response(&resp, w.now);
    w.cmx.handle_config_response(&resp, w.now);
    w.drain();
    assert_eq!(w.take(EP).len(), 1);
    assert_eq!(w.cmx.stats().cdtp_responses_unmatched, 1);
    // A response after its deadline matches nothing.
    w.send(EP, "/config/json", Some(2), "{}");
    let req = w.held.pop_front().unwrap();
    w.advance(5_001);
    let m = w.take_one(EP);
    assert_eq!((m.request_id, m.status_code), (Some(2), 504));
    let late = w.provider.answer(&req.message(), w.now);
    w.cmx.handle_config_response(&late, w.now);
    w.drain();
    assert!(w.take(EP).is_empty());
    // Foreign correlation IDs too.
    let mut foreign = late.clone();
    foreign.correlation_id = "other-1".into();
    w.cmx.handle_config_response(&foreign, w.now);
    assert_eq!(w.cmx.stats().cdtp_responses_unmatched, 3);
}

#[test]
fn a_slow_provider_is_504_then_its_late_answer_reaches_nobody() {
    let mut w = World::new();
    w.provider.set(EP, AV, None, "1");
    w.provider.delay(Duration::from_millis(6_000));
    w.send(EP, "/config/json", Some(1), "{}");
    assert_eq!(w.provider.held(), 1);
    w.advance(5_000);
    let m = w.take_one(EP);
    assert_eq!((m.request_id, m.status_code), (Some(1), 504));
    w.advance(1_000);
    assert_eq!((w.provider.held(), w.provider.answered()), (0, 1));
    assert!(w.take(EP).is_empty(), "the late answer reaches nobody");
    assert_eq!(w.cmx.stats().cdtp_responses_unmatched, 1);
    // Within the timeout a slow answer is an answer.
    w.provider.delay(Duration::from_millis(4_999));
    w.send(EP, "/config/json", Some(2), "{}");
    w.advance(4_999);
    assert_eq!(config_id(&w.take_one(EP)).as_deref(), Some("cfg-1"));
}

// ---------------------------------------------------------------------------
// Applied reports
// ---------------------------------------------------------------------------

/// Found by the fault test (`kpc-kill`): after a KPC restart a device's answer
/// (on the replica subject) reached it after a push of a newer configuration
/// (on the instance-wide subject); the device reported the newer one applied,
/// then the older one, and kept it. The report shows the device is behind.
#[test]
fn a_device_that_applied_an_older_configuration_after_a_newer_one_gets_the_current_pushed() {
    let mut w = observing(r#"{"observe":true}"#);
    w.update(EP, None, "2");
    assert_eq!(config_id(&w.take_one(EP)).as_deref(), Some("cfg-2"));
    w.advance(10);
    // The answer (cfg-1) arrived after the push (cfg-2).
    w.send(EP, "/applied/json", None, r#"{"configId":"cfg-2"}"#);
    assert!(w.take(EP).is_empty());
    w.send(EP, "/applied/json", None, r#"{"configId":"cfg-1"}"#);
    assert_eq!(w.cmx.stats().applied_behind_delivery, 1);
    // It may have crossed the push: the engine waits a push retry delay.
    w.advance(999);
    assert!(w.take(EP).is_empty());
    w.advance(1);
    let m = w.take_one(EP);
    assert!(m.is_push(), "{m:?}");
    assert_eq!(config_id(&m).as_deref(), Some("cfg-2"));
    // Reported applied: nothing more.
    w.advance(10);
    w.send(EP, "/applied/json", None, r#"{"configId":"cfg-2"}"#);
    assert!(w.take(EP).is_empty());
    assert_eq!(w.cmx.stats().applied_behind_delivery, 1);
}

/// Found by the e2e test `named_independent`: the device's report of the
/// configuration it had crossed the push of the next one on its way (stamped by
/// KPC after the push), then the device reported the pushed one.
#[test]
fn a_report_that_crossed_a_push_does_not_push_again() {
    let mut w = observing(r#"{"observe":true}"#);
    w.update(EP, None, "2");
    assert_eq!(config_id(&w.take_one(EP)).as_deref(), Some("cfg-2"));
    w.advance(5);
    w.send(EP, "/applied/json", None, r#"{"configId":"cfg-1"}"#);
    w.advance(5);
    w.send(EP, "/applied/json", None, r#"{"configId":"cfg-2"}"#);
    w.advance(10_000);
    assert!(w.take(EP).is_empty());
    assert_eq!(w.cmx.stats().applied_behind_delivery, 1);
    assert_eq!(w.cmx.stats().pushes, 1);
}

#[test]
fn a_late_report_of_an_older_configuration_does_not_push_again() {
    let mut w = observing(r#"{"observe":true}"#);
    // Stamped before the push, arriving after it.
    let late = w.client_data(EP, "/applied/json", None, r#"{"configId":"cfg-1"}"#);
    w.advance(10);
    w.update(EP, None, "2");
    assert_eq!(config_id(&w.take_one(EP)).as_deref(), Some("cfg-2"));
    w.send_msg(&late, Some(KPC_REPLICA));
    assert!(w.take(EP).is_empty());
    assert_eq!(w.cmx.stats().applied_behind_delivery, 0);
    // Nor does a rejection of the newer one: the device keeps the older.
    w.advance(10);
    w.send(
        EP,
        "/applied/json",
        None,
        r#"{"configId":"cfg-2","statusCode":400,"reasonPhrase":"no"}"#,
    );
    assert!(w.take(EP).is_empty());
    assert_eq!(w.cmx.stats().applied_behind_delivery, 0);
}

/// Kaa's official Python client (kaaproject/mqtt-client-python,
/// `kaa_mqtt_client/configuration.py`, `ConfigurationResponse.to_json`) reports a
/// success with both optional properties `null`, and without a request ID.
#[test]
fn official_python_client_success_report_is_applied() {
    let mut w = World::new();
    w.send(
        EP,
        "/applied/json",
        None,
        r#"{"configId": "cfg-1", "statusCode": null, "reasonPhrase": null}"#,
    );
    let a = w.applied.pop().expect("a ConfigApplied broadcast");
    assert_eq!(
        (&*a.config_id, a.status_code, a.reason_phrase.as_deref()),
        ("cfg-1", 200, None)
    );
    assert!(w.take(EP).is_empty(), "no request ID, no response");
    assert_eq!(w.cmx.poll_refusal(), None);
    assert_eq!(w.cmx.stats().errors_without_request_id, 0);
    // Its failure report: 500 and the exception text.
    w.send(
        EP,
        "/applied/json",
        None,
        r#"{"configId": "cfg-2", "statusCode": 500, "reasonPhrase": "'interval'"}"#,
    );
    let a = w.applied.pop().expect("a ConfigApplied broadcast");
    assert_eq!(
        (&*a.config_id, a.status_code, a.reason_phrase.as_deref()),
        ("cfg-2", 500, Some("'interval'"))
    );
    assert!(!a.is_success());
}

#[test]
fn applied_report_is_broadcast_and_answered_empty() {
    let mut w = World::new();
    w.send(EP, "/applied/json", Some(7), r#"{"configId":"cfg-1"}"#);
    let a = w.applied.pop().unwrap();
    assert_eq!(&*a.subject, "kaa.v1.events.cmx.endpoint.config.applied");
    assert_eq!(
        (&*a.endpoint_id, &*a.config_id, &*a.app_version_name),
        (EP, "cfg-1", AV)
    );
    assert_eq!((a.status_code, a.reason_phrase.as_deref()), (200, None));
    assert!(a.is_success());
    assert_eq!(a.config_name, None);
    assert_eq!(a.originator_replica_id.as_ref(), "cmx-1");
    let m = w.take_one(EP);
    assert_eq!(
        (m.request_id, m.status_code, m.payload.clone()),
        (Some(7), 200, None)
    );
    assert_eq!(&*m.resource_path, "/applied/json");
    assert_eq!(
        w.cmx.endpoint(EP).unwrap().configurations[0]
            .applied
            .as_deref(),
        Some("cfg-1")
    );

    // A rejection keeps its status and reason; without a request ID, no response.
    w.send(
        EP,
        "/applied/json/network",
        None,
        r#"{"configId":"net-1","statusCode":400,"reasonPhrase":"WPA2 is not supported"}"#,
    );
    let a = w.applied.pop().unwrap();
    assert_eq!(
        (
            a.status_code,
            a.reason_phrase.as_deref(),
            a.config_name.as_deref()
        ),
        (400, Some("WPA2 is not supported"), Some("network"))
    );
    assert!(!a.is_success());
    assert!(w.take(EP).is_empty());
}

#[test]
fn rejected_configuration_is_not_pushed_again() {
    let mut w = observing(r#"{"observe":true}"#);
    w.send(EP, "/applied/json", None, r#"{"configId":"cfg-1"}"#);
    let id = w.update(EP, None, "2");
    assert_eq!(config_id(&w.take_one(EP)), Some(id.clone()));
    w.send(
        EP,
        "/applied/json",
        None,
        &format!(r#"{{"configId":"{id}","statusCode":500,"reasonPhrase":"no"}}"#),
    );
    let snap = w.cmx.endpoint(EP).unwrap();
    assert_eq!(
        snap.configurations[0].rejected.as_deref(),
        Some(id.as_str())
    );
    assert_eq!(snap.configurations[0].holds.as_deref(), Some("cfg-1"));
    w.disconnect(&[EP]);
    w.connect(&[EP]);
    assert!(
        w.take(EP).is_empty(),
        "the rejected configuration is not pushed on connect"
    );
    let newer = w.update(EP, None, "3");
    assert_eq!(config_id(&w.take_one(EP)), Some(newer));
}

#[test]
fn config_id_in_a_request_counts_as_applied() {
    let mut w = World::new();
    let id = w.provider.set(EP, AV, None, "1").config_id.to_string();
    w.send(
        EP,
        "/config/json",
        Some(1),
        &format!(r#"{{"configId":"{id}"}}"#),
    );
    w.take(EP);
    assert_eq!(
        w.cmx.endpoint(EP).unwrap().configurations[0]
            .applied
            .as_deref(),
        Some(id.as_str())
    );
    assert!(
        w.applied.is_empty(),
        "no broadcast by default: ECR records it"
    );
    w.disconnect(&[EP]);
    w.connect(&[EP]);
    assert!(w.take(EP).is_empty(), "applied implicitly: nothing to push");

    let mut config = config();
    config.broadcast_implicit_applied = true;
    let mut w = World::with(config);
    w.provider.set(EP, AV, None, "1");
    w.send(
        EP,
        "/config/json",
        Some(1),
        &format!(r#"{{"configId":"{id}"}}"#),
    );
    let a = w.applied.pop().unwrap();
    assert_eq!((&*a.config_id, a.status_code), (id.as_str(), 200));
    assert_eq!(a.reason_phrase.as_deref(), Some("Implicitly applied"));
}

// ---------------------------------------------------------------------------
// Named configurations
// ---------------------------------------------------------------------------

#[test]
fn named_configurations_are_independent() {
    let mut w = World::new();
    w.provider.set(EP, AV, None, r#""default""#);
    w.provider
        .set(EP, AV, Some("network"), r#"{"ssid":"Office"}"#);
    w.provider
        .set(EP, AV, Some("display"), r#"{"brightness":80}"#);
    w.send(EP, "/config/json/network", Some(1), r#"{"observe":true}"#);
    w.send(EP, "/config/json/display", Some(2), r#"{"observe":false}"#);
    w.send(EP, "/config/json", Some(3), r#"{"observe":true}"#);
    let out = w.take(EP);
    assert_eq!(out.len(), 3);
    assert_eq!(json(&out[0])["config"], json!({"ssid":"Office"}));
    assert_eq!(&*out[0].resource_path, "/config/json/network");
    assert_eq!(json(&out[1])["config"], json!({"brightness":80}));
    assert_eq!(json(&out[2])["config"], json!("default"));
    let names: Vec<_> = w
        .requests
        .iter()
        .map(|r| r.config_name.as_deref().map(str::to_owned))
        .collect();
    assert_eq!(
        names,
        [Some("network".to_owned()), Some("display".to_owned()), None]
    );

    // An update of one name pushes that name only, on its own path.
    let id = w.update(EP, Some("network"), r#"{"ssid":"Home"}"#);
    let m = w.take_one(EP);
    assert_eq!(&*m.resource_path, "/config/json/network");
    assert_eq!(config_id(&m), Some(id));
    // "display" opted out; the others did not.
    w.update(EP, Some("display"), r#"{"brightness":10}"#);
    assert!(w.take(EP).is_empty());
    w.update(EP, None, r#""default-2""#);
    assert_eq!(&*w.take_one(EP).resource_path, "/config/json");
    // Applied reports are per name.
    w.send(EP, "/applied/json/network", None, r#"{"configId":"cfg-4"}"#);
    let snap = w.cmx.endpoint(EP).unwrap();
    let network = snap
        .configurations
        .iter()
        .find(|c| c.name.as_deref() == Some("network"))
        .unwrap();
    assert_eq!(network.applied.as_deref(), Some("cfg-4"));
    assert_eq!(snap.configurations[0].applied, None);
    // A name the endpoint never used is not pushed.
    w.update(EP, Some("sensors"), "1");
    assert!(w.take(EP).is_empty());
}

#[test]
fn default_is_the_same_configuration_under_both_spellings() {
    let mut w = World::new();
    w.provider.set(EP, AV, None, "1");
    w.send(EP, "/config/json/default", Some(1), r#"{"observe":true}"#);
    assert_eq!(
        w.requests[0].config_name, None,
        "CDTP configName null means default"
    );
    let m = w.take_one(EP);
    assert_eq!(&*m.resource_path, "/config/json/default");
    // Pushes go to the spelling the device used.
    w.update(EP, None, "2");
    assert_eq!(&*w.take_one(EP).resource_path, "/config/json/default");
    // configName "default" in 4/ESP is the default too.
    let mut cd = w.client_data(EP, "/config/json", Some(2), "{}");
    cd.config_name = Some("default".into());
    w.send_msg(&cd, Some(KPC_REPLICA));
    assert_eq!(config_id(&w.take_one(EP)).as_deref(), Some("cfg-2"));
    assert_eq!(w.cmx.endpoint(EP).unwrap().configurations.len(), 1);
}

#[test]
fn esp_config_name_and_path_name() {
    let mut w = World::new();
    w.provider.set(EP, AV, None, "0");
    w.provider.set(EP, AV, Some("network"), "1");
    // The same name in both: served.
    let mut cd = w.client_data(EP, "/config/json/network", Some(1), "{}");
    cd.config_name = Some("network".into());
    w.send_msg(&cd, None);
    assert_eq!(json(&w.take_one(EP))["config"], json!(1));
    // The name in the path alone (a KPC that leaves `configName` out): served.
    w.send(EP, "/config/json/network", Some(2), "{}");
    assert_eq!(json(&w.take_one(EP))["config"], json!(1));
    // Both, disagreeing: 400, and nothing is fetched.
    let fetched = w.requests.len();
    let mut cd = w.client_data(EP, "/config/json/display", Some(3), "{}");
    cd.config_name = Some("network".into());
    w.send_msg(&cd, None);
    let m = w.take_one(EP);
    assert_eq!(m.status_code, 400);
    assert!(
        m.reason_phrase
            .as_deref()
            .unwrap()
            .contains("does not match")
    );
    assert_eq!(w.requests.len(), fetched);
}

/// The resource path decides which configuration a request addresses: the
/// answer goes back on that path and the device applies it as that
/// configuration. A path without a name is the default configuration, so a
/// `configName` naming another one disagrees with it (issue 21).
#[test]
fn a_named_config_name_on_the_default_path_is_refused() {
    let mut w = World::new();
    w.provider.set(EP, AV, None, "1");
    w.provider.set(EP, AV, Some("network"), "2");
    for path in ["/config/json", "/applied/json"] {
        let mut cd = w.client_data(EP, path, Some(7), r#"{"configId":"cfg-1"}"#);
        cd.config_name = Some("network".into());
        w.send_msg(&cd, Some(KPC_REPLICA));
        let m = w.take_one(EP);
        assert_eq!(m.status_code, 400, "{path}");
        assert_eq!(&*m.resource_path, path);
        let reason = m.reason_phrase.as_deref().unwrap();
        assert!(
            reason.contains(
                r#"`configName` "network" does not match the configuration name "default""#
            ),
            "{reason}"
        );
    }
    assert!(
        w.requests.is_empty(),
        "nothing fetched for a refused request"
    );
    assert!(
        w.applied.is_empty(),
        "nothing recorded for a refused report"
    );
}

/// The `cmx_sequence` fuzz finding of issue 21, step by step: a device pushed
/// `cfg-1` for its default configuration asks on `/config/json` with a
/// `configName` naming a configuration the provider does not have. Before the
/// fix the engine fetched that other configuration and answered on the
/// default's path with an empty config ID: "no configuration" after it had one.
#[test]
fn a_default_path_request_never_answers_with_another_configurations_absence() {
    let mut w = World::new();
    w.provider.set(EP, AV, None, "1");
    w.connect(&[EP]);
    let pushed = w.take_one(EP);
    assert!(pushed.is_push());
    assert_eq!(&*pushed.resource_path, "/config/json");
    assert_eq!(config_id(&pushed).as_deref(), Some("cfg-1"));

    let mut cd = w.client_data(EP, "/config/json", Some(22359), "{}");
    cd.config_name = Some("other".into());
    w.send_msg(&cd, Some(KPC_REPLICA));
    let m = w.take_one(EP);
    assert_eq!(
        (m.status_code, m.payload.is_none()),
        (400, true),
        "the default path was answered with another configuration: {m:#?}"
    );
    // The default configuration is still served on its path.
    w.send(EP, "/config/json", Some(1), "{}");
    assert_eq!(config_id(&w.take_one(EP)).as_deref(), Some("cfg-1"));
}

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

fn error_for(w: &mut World, path: &str, payload: &str) -> (i32, String) {
    w.send(EP, path, Some(9), payload);
    let m = w.take_one(EP);
    assert_eq!(m.payload, None);
    (m.status_code, m.reason_phrase.unwrap().into_owned())
}

#[test]
fn malformed_payloads_are_400_with_a_reason() {
    let mut w = World::new();
    for (path, payload, needle) in [
        (
            "/config/json",
            r#"{"observe":"yes"}"#,
            "`observe` as a boolean",
        ),
        (
            "/config/json",
            r#"{"configId":"a","extra":1}"#,
            "unknown field `extra`",
        ),
        ("/config/json", "[]", "JSON object"),
        ("/config/json", "{", "EOF"),
        ("/applied/json", "{}", "missing field `configId`"),
        (
            "/applied/json",
            r#"{"configId":"a","statusCode":"x"}"#,
            "`statusCode`",
        ),
    ] {
        let (status, reason) = error_for(&mut w, path, payload);
        assert_eq!(status, 400, "{payload}");
        assert!(reason.contains(needle), "{payload}: {reason}");
    }
    let long = format!(r#"{{"configId":"{}"}}"#, "x".repeat(300));
    let (status, reason) = error_for(&mut w, "/config/json", &long);
    assert_eq!(status, 400);
    assert!(reason.contains("longer than 256"), "{reason}");
    assert!(w.applied.is_empty());
    assert!(w.requests.is_empty(), "nothing reaches the provider");
}

#[test]
fn unknown_resources_are_404() {
    let mut w = World::new();
    for path in [
        "/config/xml",
        "/config/json/a.b",
        "/config/json/",
        "/json",
        "/applied/json/x/y",
    ] {
        let (status, reason) = error_for(&mut w, path, "{}");
        assert_eq!(status, 404, "{path}");
        assert!(
            reason.contains(path.trim_end_matches('/')) || reason.contains("a.b"),
            "{reason}"
        );
    }
}

#[test]
fn requests_need_an_endpoint_and_a_served_app_version() {
    let mut config = config();
    config.app_versions = Some([AV.to_owned()].into());
    let mut w = World::with(config);
    let mut cd = w.client_data(EP, "/config/json", Some(1), "{}");
    cd.endpoint_id = None;
    w.send_msg(&cd, None);
    let m = w.sent.pop().unwrap();
    assert_eq!((m.status_code, m.endpoint_id.clone()), (400, None));
    let mut cd = w.client_data(EP, "/config/json", Some(2), "{}");
    cd.app_version_name = "other-v1".into();
    w.send_msg(&cd, None);
    let m = w.take_one(EP);
    assert_eq!(m.status_code, 404);
    assert!(m.reason_phrase.unwrap().contains("other-v1"));
    assert_eq!(w.cmx.tracked_endpoints(), 0);
}

/// 9/ELCE events of every communication service reach every CMX. With
/// `app_versions` set, a `connected` event naming another app version is not
/// tracked, so nothing is fetched for it (found when a conformance campaign on a
/// shared NATS server made a test's CMX, serving other app versions, fetch the
/// configurations of 909 of the campaign's endpoints).
#[test]
fn events_for_an_app_version_not_served_are_not_tracked() {
    let mut config = config();
    config.app_versions = Some([AV.to_owned()].into());
    let mut w = World::with(config);
    w.auto_answer = false;
    w.connect_av(&["ep-other-1", "ep-other-2"], "other-v1");
    assert_eq!(w.cmx.tracked_endpoints(), 0);
    assert_eq!(w.cmx.pending_requests(), 0);
    assert_eq!(w.cmx.stats().unknown_app_version_ignored, 2);
    // The app version it serves still is tracked.
    w.connect(&[EP]);
    assert_eq!(w.cmx.tracked_endpoints(), 1);
    assert_eq!(w.cmx.stats().unknown_app_version_ignored, 2);
}

#[test]
fn provider_timeout_is_504() {
    let mut w = World::new();
    w.auto_answer = false;
    w.send(EP, "/config/json", Some(1), "{}");
    assert_eq!(w.cmx.poll_timeout(), Some(UnixMillis(w.now.0 + 5_000)));
    w.advance(4_999);
    assert!(w.take(EP).is_empty());
    w.advance(1);
    let m = w.take_one(EP);
    assert_eq!(m.status_code, 504);
    assert!(m.reason_phrase.unwrap().contains("5000 ms"));
    assert_eq!(w.cmx.pending_requests(), 0);
    assert_eq!(w.cmx.stats().cdtp_timeouts, 1);
}

/// Found by `kaa-conformance cmx-fuzz` (seed 20261206): a `ConfigUpdated` that
/// arrived while the provider stayed silent made the timed-out request count as
/// stale and be asked again, so the device waited two CDTP timeouts (and one more
/// for every further update). A timeout is answered when it falls due.
#[test]
fn a_silent_provider_is_a_504_after_one_timeout_even_when_updates_arrive() {
    let mut w = World::new();
    w.auto_answer = false;
    w.provider.set(EP, AV, None, "1");
    w.connect(&[EP]);
    w.held.clear();
    w.sent.clear();
    w.send(EP, "/config/json", Some(1), "{}");
    let asked = w.requests.len();
    w.advance(1_000);
    // Changes announced while the provider does not answer.
    w.update(EP, None, "2");
    w.advance(2_000);
    w.update(EP, None, "3");
    w.advance(1_999);
    assert!(w.take(EP).is_empty());
    w.advance(1);
    let m = w.take_one(EP);
    assert_eq!(m.request_id, Some(1));
    assert_eq!(m.status_code, 504);
    assert_eq!(w.requests.len(), asked, "not asked again for the device");
    // The push the updates want is retried later, and the device gets it.
    w.auto_answer = true;
    w.held.clear();
    w.advance(60_000);
    let pushed: Vec<_> = w.take(EP).iter().map(config_id).collect();
    assert_eq!(
        pushed.last().cloned().flatten().as_deref(),
        Some("cfg-3"),
        "{pushed:?}"
    );
}

#[test]
fn provider_errors_are_passed_on() {
    let mut w = World::new();
    w.auto_answer = false;
    for (status, reason, content, expect) in [
        (500, Some("database down"), None, 500),
        (403, None, None, 403),
        (700, None, None, 502),
        (200, None, Some(&b"not json"[..]), 502),
        // Valid JSON grammar, but no decoder represents it: refused, not forwarded.
        (200, None, Some(&b"1E400"[..]), 502),
    ] {
        w.send(EP, "/config/json", Some(1), "{}");
        let req = w.held.pop_front().unwrap();
        let mut resp = w.provider.answer(&req.message(), w.now);
        resp.status_code = status;
        resp.reason_phrase = reason.map(Into::into);
        if let Some(c) = content {
            resp.config_id = Some("x".into());
            resp.content = Some(c.into());
        }
        w.cmx.handle_config_response(&resp, w.now);
        w.drain();
        let m = w.take_one(EP);
        assert_eq!(m.status_code, expect, "{status}");
        if let Some(r) = reason {
            assert!(m.reason_phrase.unwrap().contains(r));
        }
    }
    assert_eq!(w.cmx.stats().provider_errors, 5);
}

#[test]
fn provider_answer_for_another_content_type_or_endpoint_is_502() {
    let mut w = World::new();
    w.auto_answer = false;
    w.provider.set(EP, AV, None, "1");
    w.send(EP, "/config/json", Some(1), "{}");
    let req = w.held.pop_front().unwrap();
    let mut resp = w.provider.answer(&req.message(), w.now);
    resp.content_type = "application/x-protobuf".into();
    w.cmx.handle_config_response(&resp, w.now);
    w.drain();
    let m = w.take_one(EP);
    assert_eq!(m.status_code, 502);
    assert!(m.reason_phrase.unwrap().contains("x-protobuf"));

    w.send(EP, "/config/json", Some(2), "{}");
    let req = w.held.pop_front().unwrap();
    let mut resp = w.provider.answer(&req.message(), w.now);
    resp.endpoint_id = "someone-else".into();
    w.cmx.handle_config_response(&resp, w.now);
    w.drain();
    assert_eq!(w.take_one(EP).status_code, 502);
}

/// The engine keeps the last configurations it checked (most of a fleet holds
/// the same few): a repeat is answered from them only when the config ID *and*
/// the content are the same. A provider that reuses an ID for other content,
/// or for content that is not JSON, is not covered up by the earlier answer.
#[test]
fn a_config_id_seen_before_does_not_vouch_for_other_content() {
    let mut w = World::new();
    w.auto_answer = false;
    w.provider.set(EP, AV, None, r#"{"v":1}"#);
    let answer = |w: &mut World, request_id: i32, content: &[u8]| {
        w.send(EP, "/config/json", Some(request_id), "{}");
        let req = w.held.pop_front().unwrap();
        let mut resp = w.provider.answer(&req.message(), w.now);
        resp.config_id = Some("same-id".into());
        resp.content = Some(content.to_vec().into());
        w.cmx.handle_config_response(&resp, w.now);
        w.drain();
        w.take_one(EP)
    };
    let first = answer(&mut w, 1, br#"{"v":1}"#);
    assert_eq!(
        json(&first),
        serde_json::json!({"configId": "same-id", "config": {"v": 1}})
    );
    // The same ID and content again: the same answer.
    let again = answer(&mut w, 2, br#"{"v":1}"#);
    assert_eq!(again.payload, first.payload);
    // The same ID with other content: that content.
    let other = answer(&mut w, 3, br#"{"v":2}"#);
    assert_eq!(
        json(&other),
        serde_json::json!({"configId": "same-id", "config": {"v": 2}})
    );
    // The same ID with content that is not JSON: refused, as the first time.
    let bad = answer(&mut w, 4, br#"{"v":1"#);
    assert_eq!(bad.status_code, 502);
    assert!(bad.reason_phrase.unwrap().contains("not JSON"));
    // More configurations than the engine keeps: each still answered right.
    for n in 0..40 {
        let content = format!(r#"{{"n":{n}}}"#);
        let m = answer(&mut w, 10 + n, content.as_bytes());
        assert_eq!(json(&m)["config"]["n"], n);
    }
    let bad = answer(&mut w, 99, b"not json");
    assert_eq!(bad.status_code, 502);
}

#[test]
fn expired_client_data_is_dropped() {
    let mut w = World::new();
    let mut cd = w.client_data(EP, "/config/json", Some(1), "{}");
    cd.timestamp = w.now.0 - 10_000;
    cd.timeout = 1_000;
    w.send_msg(&cd, None);
    assert!(w.sent.is_empty() && w.requests.is_empty());
    assert_eq!(w.cmx.stats().client_data_expired, 1);
}

// ---------------------------------------------------------------------------
// Bounded state
// ---------------------------------------------------------------------------

#[test]
fn disconnected_endpoint_state_expires_after_the_ttl() {
    let mut config = config();
    config.endpoint_ttl = Duration::from_secs(60);
    let mut w = World::with(config);
    w.send("idle", "/config/json", Some(1), "{}");
    w.send("online", "/config/json", Some(1), "{}");
    w.disconnect(&["idle"]);
    let disconnected_at = w.now;
    assert_eq!(
        w.cmx.poll_timeout(),
        Some(UnixMillis(disconnected_at.0 + 60_000))
    );
    w.advance(59_999);
    assert_eq!(w.cmx.tracked_endpoints(), 2);
    w.advance(1);
    assert!(w.cmx.endpoint("idle").is_none());
    assert!(
        w.cmx.endpoint("online").is_some(),
        "connected endpoints are kept"
    );
    assert_eq!(w.cmx.stats().endpoints_expired, 1);
    assert_eq!(w.cmx.poll_timeout(), None);
}

#[test]
fn max_endpoints_evicts_the_least_recently_active() {
    let mut config = config();
    config.max_endpoints = 3;
    let mut w = World::with(config);
    for ep in ["a", "b", "c"] {
        w.send(ep, "/config/json", Some(1), "{}");
        w.advance(1);
    }
    w.disconnect(&["b"]);
    w.send("d", "/config/json", Some(1), "{}");
    assert!(w.cmx.endpoint("b").is_none(), "disconnected ones go first");
    w.send("a", "/config/json", Some(2), "{}");
    w.send("e", "/config/json", Some(1), "{}");
    assert!(
        w.cmx.endpoint("c").is_none(),
        "then the least recently active"
    );
    assert_eq!(w.cmx.tracked_endpoints(), 3);
    assert_eq!(w.cmx.stats().endpoints_evicted, 2);
}

/// At `max_endpoints`, an endpoint whose 6/CDTP request is still with the
/// provider is not evicted while another can be: evicting it broke the rule of
/// one request in flight per endpoint and name, since its next message tracked it
/// anew and asked again (`kaa-conformance cmx-fuzz`, seed 20261206, invariant 6:
/// a device disconnected a moment before was the oldest idle endpoint of a CMX
/// holding a million).
#[test]
fn max_endpoints_passes_over_endpoints_with_a_request_in_flight() {
    let mut config = config();
    config.max_endpoints = 3;
    let mut w = World::with(config);
    w.auto_answer = false;
    for ep in ["b", "c"] {
        w.send(ep, "/config/json", Some(1), "{}");
        w.answer_next();
        w.take_one(ep);
        w.advance(1);
    }
    // "a" asks; the provider has not answered when its session ends.
    w.send("a", "/config/json", Some(1), "{}");
    assert_eq!(w.held.len(), 1);
    w.disconnect(&["a"]);
    w.advance(1);
    // A fourth endpoint: "a" is the only idle one, but waits for its answer.
    w.send("d", "/config/json", Some(1), "{}");
    assert!(
        w.cmx.endpoint("a").is_some(),
        "kept: its request is in flight"
    );
    assert!(w.cmx.endpoint("b").is_none(), "the oldest without one goes");
    assert_eq!(w.cmx.stats().endpoints_evicted, 1);
    // "a" asks again: still one request in flight for it.
    w.send("a", "/config/json", Some(2), "{}");
    let for_a = w
        .requests
        .iter()
        .filter(|r| &*r.message().endpoint_id == "a")
        .count();
    assert_eq!(for_a, 1, "one 6/CDTP request for a, not two");
    // When every endpoint waits, the oldest is evicted all the same.
    w.send("e", "/config/json", Some(1), "{}");
    assert_eq!(w.cmx.tracked_endpoints(), 3);
    assert_eq!(w.cmx.stats().endpoints_evicted, 2);
}

/// At `max_endpoints`, a device that asked `observe: false` keeps its state
/// while another endpoint can go: evicted, its next `connected` event tracked it
/// anew and pushed to it (`kaa-conformance cmx-fuzz`, seed 20261206, invariant 5:
/// a push after `observe: false`, 7/CMP MUST NOT).
#[test]
fn max_endpoints_passes_over_endpoints_that_opted_out_of_pushes() {
    let mut config = config();
    config.max_endpoints = 3;
    let mut w = World::with(config);
    for ep in ["b", "c"] {
        w.send(ep, "/config/json", Some(1), "{}");
        w.take_one(ep);
        w.advance(1);
    }
    w.send("a", "/config/json", Some(1), r#"{"observe":false}"#);
    w.take_one("a");
    w.disconnect(&["a"]);
    w.advance(1);
    // A fourth endpoint: "a" is the only idle one, but opted out.
    w.send("d", "/config/json", Some(1), "{}");
    w.take_one("d");
    assert!(w.cmx.endpoint("a").is_some(), "kept: it opted out");
    assert!(
        w.cmx.endpoint("b").is_none(),
        "the oldest without a reason goes"
    );
    // A new configuration, and "a" comes back: no push.
    w.update("a", None, r#"{"v":2}"#);
    w.connect(&["a"]);
    assert!(w.take("a").is_empty(), "no push after observe: false");
}

/// At `max_endpoints`, endpoints passed over for eviction do not pile up at the
/// head of the lists: with the 64 least recently active connected endpoints all
/// opted out and the only idle one waiting for the provider, a connected
/// endpoint further back goes, not the one waiting (`kaa-conformance cmx-fuzz`,
/// seed 20261206, the third finding, invariant 6 again: after hundreds of
/// thousands of evictions the heads of both lists held only endpoints that
/// could not go, and the oldest idle one was evicted with its request in flight).
#[test]
fn max_endpoints_passes_over_more_than_a_scan_of_endpoints_that_cannot_go() {
    let mut config = config();
    config.max_endpoints = 67;
    let mut w = World::with(config);
    let opted_out: Vec<String> = (0..64).map(|i| format!("o{i}")).collect();
    for ep in opted_out.iter().map(String::as_str).chain(["n1", "n2"]) {
        w.connect(&[ep]);
        let payload = if ep.starts_with('o') {
            r#"{"observe":false}"#
        } else {
            "{}"
        };
        w.send(ep, "/config/json", Some(1), payload);
        w.take(ep);
        w.advance(1);
    }
    // "x" asks; the provider has not answered when its session ends.
    w.auto_answer = false;
    w.send("x", "/config/json", Some(1), "{}");
    w.disconnect(&["x"]);
    w.advance(1);
    assert_eq!(w.cmx.tracked_endpoints(), 67);
    w.send("d", "/config/json", Some(1), "{}");
    assert!(
        w.cmx.endpoint("x").is_some(),
        "kept: its request is in flight"
    );
    assert!(
        w.cmx.endpoint("n1").is_none(),
        "the oldest that can go goes"
    );
    assert!(
        opted_out.iter().all(|ep| w.cmx.endpoint(ep).is_some()),
        "the devices that opted out keep their state"
    );
    // The ones passed over went to the back: the next eviction finds n2 at once.
    w.advance(1);
    w.send("e", "/config/json", Some(1), "{}");
    assert!(w.cmx.endpoint("n2").is_none());
    assert!(w.cmx.endpoint("x").is_some());
    assert_eq!(w.cmx.stats().endpoints_evicted, 2);
    // "x" asks again: still one request in flight for it.
    w.send("x", "/config/json", Some(2), "{}");
    let for_x = w
        .requests
        .iter()
        .filter(|r| &*r.message().endpoint_id == "x")
        .count();
    assert_eq!(for_x, 1, "one 6/CDTP request for x, not two");
}

#[test]
fn too_many_pending_requests_is_503_and_pushes_are_retried() {
    let mut config = config();
    config.max_pending_requests = 2;
    let mut w = World::with(config);
    w.auto_answer = false;
    for ep in ["a", "b", "c"] {
        w.provider.set(ep, AV, None, "1");
        w.send(ep, "/config/json", Some(1), "{}");
    }
    let m = w.take_one("c");
    assert_eq!(m.status_code, 503);
    assert!(m.reason_phrase.unwrap().contains("retry"));
    assert_eq!(w.cmx.pending_requests(), 2);
    assert_eq!(w.cmx.stats().backpressure_rejections, 1);
    // A push that cannot be fetched now is retried after push_retry_delay.
    w.connect(&["c"]);
    assert_eq!(w.requests.len(), 2);
    w.answer_next();
    w.answer_next();
    w.take("a");
    w.take("b");
    w.auto_answer = true;
    w.advance(1_000);
    assert_eq!(config_id(&w.take_one("c")).as_deref(), Some("cfg-3"));
}

#[test]
fn push_is_retried_after_a_provider_timeout() {
    let mut w = observing(r#"{"observe":true}"#);
    w.auto_answer = false;
    let id = w.update(EP, None, "2");
    w.held.clear(); // the request is lost
    w.advance(5_000);
    assert!(w.take(EP).is_empty());
    w.auto_answer = true;
    w.advance(1_000);
    assert_eq!(config_id(&w.take_one(EP)), Some(id));
}

#[test]
fn too_many_names_is_503() {
    let mut config = config();
    config.max_names_per_endpoint = 2;
    let mut w = World::with(config);
    for (i, name) in ["a", "b", "c"].iter().enumerate() {
        w.send(
            EP,
            &format!("/config/json/{name}"),
            Some(i as i32 + 1),
            "{}",
        );
    }
    let out = w.take(EP);
    assert_eq!(
        out.iter().map(|m| m.status_code).collect::<Vec<_>>(),
        [200, 200, 503]
    );
    // The default configuration does not count.
    w.send(EP, "/config/json", Some(9), "{}");
    assert_eq!(w.take_one(EP).status_code, 200);
}

#[test]
fn unregistered_endpoint_is_forgotten() {
    let mut w = World::new();
    w.auto_answer = false;
    w.send(EP, "/config/json", Some(1), "{}");
    w.unregister(EP);
    assert!(w.cmx.endpoint(EP).is_none());
    let m = w.take_one(EP);
    assert_eq!(m.status_code, 404, "the waiting request is answered");
    w.answer_next();
    assert!(w.take(EP).is_empty());
}

// ---------------------------------------------------------------------------
// Determinism and raw input
// ---------------------------------------------------------------------------

fn scripted(w: &mut World) -> Vec<Output> {
    w.provider.set(EP, AV, None, "1");
    w.send(EP, "/config/json", Some(1), r#"{"observe":true}"#);
    w.update(EP, None, "2");
    w.send(EP, "/applied/json", Some(2), r#"{"configId":"cfg-2"}"#);
    w.advance(10);
    w.sent
        .drain(..)
        .map(Output::ExtensionData)
        .chain(w.requests.drain(..).map(Output::ConfigRequest))
        .chain(w.applied.drain(..).map(Output::ConfigApplied))
        .collect()
}

#[test]
fn outputs_are_deterministic() {
    let a = scripted(&mut World::new());
    let b = scripted(&mut World::new());
    assert_eq!(a, b);
    assert!(a.len() >= 6);
}

#[test]
fn handle_message_decodes_by_subject() {
    use kaa_ism::avro::Encode;
    let mut w = World::new();
    w.auto_answer = false;
    let cd = w.client_data(EP, "/config/json", Some(3), "{}");
    w.cmx
        .handle_message(
            "kaa.v1.service.cmx.esp.ClientData",
            Some(KPC_REPLICA),
            &cd.to_vec(),
            w.now,
        )
        .unwrap();
    w.drain();
    let req = w.held.pop_front().unwrap();
    let out = Output::ConfigRequest(req.clone());
    assert_eq!(out.subject(), "kaa.v1.service.ecr.cdtp.request");
    assert_eq!(out.reply_to(), Some("kaa.v1.replica.cmx-1.cdtp.response"));
    let datum = out.to_datum();
    let decoded = <kaa_cdtp::ConfigRequest as kaa_ism::avro::Decode>::decode(&datum).unwrap();
    assert_eq!(decoded, req.message());
    let resp = w.provider.answer(&decoded, w.now);
    w.cmx
        .handle_message(
            "kaa.v1.replica.cmx-1.cdtp.response",
            None,
            &resp.to_vec(),
            w.now,
        )
        .unwrap();
    w.drain();
    assert_eq!(w.take_one(EP).status_code, 200);
    assert!(
        w.cmx
            .handle_message("kaa.v1.service.cmx.esp.ClientData", None, b"\xff", w.now)
            .is_err()
    );
    assert!(
        w.cmx
            .handle_message("kaa.v1.service.other.x.y", None, b"", w.now)
            .is_err()
    );
}

/// `decode_input` compares the engine's own subjects exactly before parsing
/// any subject: both ways must name the same kind of input, and a subject of the
/// same shape that is not the engine's own still decodes by its shape.
#[test]
fn decode_input_classifies_own_and_foreign_subjects_alike() {
    use kaa_cmp::engine::InputKind;
    use kaa_ism::avro::Encode;
    let mut w = World::new();
    let cd = w.client_data(EP, "/config/json", Some(3), "{}").to_vec();
    let resp = w
        .provider
        .answer(
            &kaa_cdtp::ConfigRequest {
                correlation_id: "c".into(),
                timestamp: 1,
                timeout: 0,
                app_version_name: AV.into(),
                endpoint_id: EP.into(),
                config_id: None,
                config_name: None,
            },
            w.now,
        )
        .to_vec();
    for (subject, datum, kind) in [
        (
            "kaa.v1.service.cmx.esp.ClientData",
            &cd,
            InputKind::ClientData,
        ),
        (
            "kaa.v1.replica.cmx-1.esp.ClientData",
            &cd,
            InputKind::ClientData,
        ),
        (
            "kaa.v1.replica.cmx-2.esp.ClientData",
            &cd,
            InputKind::ClientData,
        ),
        (
            "kaa.v1.replica.cmx-1.cdtp.response",
            &resp,
            InputKind::ConfigResponse,
        ),
        (
            "kaa.v1.replica.cmx-2.cdtp.response",
            &resp,
            InputKind::ConfigResponse,
        ),
    ] {
        let input = w.cmx.decode_input(subject, None, datum).unwrap();
        assert_eq!(input.kind(), kind, "{subject}");
        // A datum of the wrong kind on the subject is malformed as that kind.
        let wrong = if kind == InputKind::ClientData {
            &resp
        } else {
            &cd
        };
        let err = w.cmx.decode_input(subject, None, &wrong[..1]).unwrap_err();
        assert_eq!(err.kind(), Some(kind), "{subject}");
    }
}

#[test]
fn subscriptions_cover_every_input() {
    let cmx = Cmx::new(config()).unwrap();
    let s = cmx.subscriptions();
    for subject in [
        "kaa.v1.service.cmx.esp.ClientData",
        "kaa.v1.replica.cmx-1.esp.ClientData",
        "kaa.v1.replica.cmx-1.cdtp.response",
        "kaa.v1.events.ecr.endpoint.config.updated",
        "kaa.v1.events.kpc.endpoint.connectivity.connected",
        "kaa.v1.events.epr.endpoint.lifecycle.unregistered",
        "kaa.v1.replica.cmx-1.elce.SessionsResponse",
        "kaa.v1.events.ecr.provider.started",
    ] {
        assert!(s.all().iter().any(|(f, _)| f.matches(subject)), "{subject}");
    }
    assert!(
        !s.all()
            .iter()
            .any(|(f, _)| f.matches("kaa.v1.events.other-ecr.endpoint.config.updated"))
    );
    assert!(
        !s.all()
            .iter()
            .any(|(f, _)| f.matches("kaa.v1.events.other-ecr.provider.started"))
    );
    assert_eq!(s.client_data.queue_group, "cmx");
}

#[test]
fn invalid_configuration_is_rejected() {
    let mut c = config();
    c.provider = "e.cr".into();
    assert!(Cmx::new(c).unwrap_err().to_string().contains("provider"));
    let mut c = config();
    c.cdtp_timeout = Duration::ZERO;
    assert!(
        Cmx::new(c)
            .unwrap_err()
            .to_string()
            .contains("cdtp_timeout")
    );
}

#[test]
fn engine_and_device_can_move_between_threads() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Cmx>();
    send_sync::<Output>();
    send_sync::<kaa_cmp::device::Device>();
}

// ---------------------------------------------------------------------------
// Recovery after a bus outage or a restart
// ---------------------------------------------------------------------------

#[test]
fn resync_pushes_what_an_outage_swallowed() {
    let mut w = World::new();
    w.provider.set(EP, AV, None, "1");
    w.provider.set(EP, AV, Some("network"), r#""a""#);
    w.provider.set("ep-2", AV, None, "1");
    w.provider.set("ep-3", AV, None, "1");
    w.connect(&[EP, "ep-2", "ep-3"]);
    w.sent.clear();
    for ep in [EP, "ep-2", "ep-3"] {
        w.send(ep, "/config/json", Some(1), r#"{"observe":true}"#);
    }
    w.send(EP, "/config/json/network", Some(2), r#"{"observe":true}"#);
    w.sent.clear();
    w.disconnect(&["ep-3"]);

    // Updates whose ConfigUpdated broadcasts were lost while the bus was down.
    let default_id = w.provider.set(EP, AV, None, "2").config_id.to_string();
    let network_id = w
        .provider
        .set(EP, AV, Some("network"), r#""b""#)
        .config_id
        .to_string();
    w.provider.set("ep-3", AV, None, "2");
    assert!(w.sent.is_empty());

    let asked = w.requests.len();
    w.cmx.resync(w.now);
    w.drain();
    assert_eq!(w.cmx.stats().resyncs, 1);
    // Every name of every connected endpoint was asked for again...
    assert_eq!(w.requests.len() - asked, 3);
    // ...and what changed is pushed; ep-2 holds the current one, ep-3 is offline.
    let mut pushed: Vec<(String, Option<String>)> = w
        .take(EP)
        .iter()
        .map(|m| (m.resource_path.to_string(), config_id(m)))
        .collect();
    pushed.sort();
    assert_eq!(
        pushed,
        [
            ("/config/json".to_owned(), Some(default_id)),
            ("/config/json/network".to_owned(), Some(network_id)),
        ]
    );
    assert!(w.take("ep-2").is_empty());
    assert!(w.take("ep-3").is_empty());

    // A second resync with nothing new pushes nothing.
    w.cmx.resync(w.now);
    w.drain();
    assert!(w.sent.is_empty(), "{:?}", w.sent);
}

#[test]
fn resync_treats_answers_in_flight_as_stale() {
    let mut w = World::new();
    w.provider.set(EP, AV, None, "1");
    w.connect(&[EP]);
    w.send(EP, "/config/json", Some(1), r#"{"observe":true}"#);
    w.sent.clear();
    w.auto_answer = false;
    // A fetch in flight when the bus went down; its answer may predate an update
    // that was lost.
    w.cmx
        .handle_config_updated(&w.provider.set(EP, AV, None, "2"), w.now);
    w.drain();
    let stale = w.held.pop_front().unwrap();
    let old = w.provider.answer(&stale.message(), w.now);
    let latest = w.provider.set(EP, AV, None, "3").config_id.to_string();
    w.cmx.resync(w.now);
    w.cmx.handle_config_response(&old, w.now);
    w.drain();
    assert!(w.sent.is_empty(), "the stale answer was not delivered");
    w.answer_next();
    assert_eq!(config_id(&w.take_one(EP)), Some(latest));
}

#[test]
fn adopted_sessions_get_updates_for_any_name() {
    // A CMX that restarted while the device's session stayed up learns of it
    // from the communication service's list of sessions.
    let mut w = World::new();
    let current = w.provider.set(EP, AV, None, "1").config_id.to_string();
    w.provider.set("ep-known", AV, None, "1");
    w.connect(&["ep-known"]);
    w.sent.clear();
    let sessions = kaa_elce::ConnectedEvent {
        correlation_id: "resync".into(),
        timestamp: w.now.0,
        timeout: 0,
        endpoints: [EP, "ep-known"]
            .iter()
            .map(|e| ((*e).into(), AV.into()))
            .collect(),
        originator_replica_id: "kpc-1".into(),
    };
    w.cmx.adopt_sessions(&sessions, w.now);
    w.drain();
    // Nothing was reported applied to this engine: the current one is pushed.
    assert_eq!(config_id(&w.take_one(EP)), Some(current));
    w.sent.clear();
    assert!(w.cmx.endpoint(EP).unwrap().connected);

    // Which names the device observes is unknown: a named update is pushed...
    let id = w.update(EP, Some("network"), r#""wifi""#);
    let m = w.take_one(EP);
    assert_eq!(&*m.resource_path, "/config/json/network");
    assert_eq!(config_id(&m), Some(id));
    // ...but not to an endpoint this engine knew before (it never used the name).
    w.update("ep-known", Some("network"), r#""wifi""#);
    assert!(w.take("ep-known").is_empty());
}

#[test]
fn an_adopted_session_gets_the_names_it_used() {
    // The CMX restarted; meanwhile the `network` configuration changed, and its
    // ConfigUpdated went nowhere. KPC lists the resource paths the session used.
    let mut w = World::new();
    w.provider.set(EP, AV, None, "1");
    let network = w
        .provider
        .set(EP, AV, Some("network"), r#""changed""#)
        .config_id
        .to_string();
    w.cmx.adopt_session(
        EP,
        AV,
        &["/config/json", "/config/json/network", "/applied/json"],
        w.now,
    );
    w.drain();
    let mut pushed: Vec<(String, Option<String>)> = w
        .take(EP)
        .iter()
        .map(|m| (m.resource_path.to_string(), config_id(m)))
        .collect();
    pushed.sort();
    assert_eq!(pushed.len(), 2, "{pushed:?}");
    assert_eq!(
        pushed[1],
        ("/config/json/network".to_owned(), Some(network))
    );
    // Reported applied: a second listing pushes nothing.
    w.send(EP, "/applied/json", None, r#"{"configId":"cfg-1"}"#);
    w.send(EP, "/applied/json/network", None, r#"{"configId":"cfg-2"}"#);
    w.sent.clear();
    w.cmx.adopt_session(EP, AV, &["/config/json"], w.now);
    w.drain();
    assert!(w.sent.is_empty(), "{:?}", w.sent);
}

/// Found by the `cmx_sequence` fuzz target's scenario space: an answer fetched
/// before the endpoint left an app version and came back to it may predate an
/// update the engine ignored while the endpoint was on the other version. The
/// app version changed after the request was sent, so the answer is stale: the
/// engine fetches again and pushes the newest configuration, not the old one.
#[test]
fn an_answer_fetched_across_an_app_version_round_trip_is_fetched_again() {
    let mut w = World::new();
    w.provider.set(EP, AV, None, "1");
    w.connect(&[EP]);
    assert_eq!(config_id(&w.take_one(EP)).as_deref(), Some("cfg-1"));
    w.auto_answer = false;
    w.update(EP, None, "2");
    let request = w.held.pop_front().expect("a CDTP request for cfg-2");
    let answer = w.provider.answer(&request.message(), w.now);
    w.advance(1);
    w.app_version_updated(EP, AV, AV2);
    // Ignored: the endpoint is on AV2 now.
    w.update_av(EP, AV, None, "3");
    w.advance(1);
    w.app_version_updated(EP, AV2, AV);
    w.cmx.handle_config_response(&answer, w.now);
    w.drain();
    while !w.held.is_empty() {
        w.answer_next();
    }
    let pushed: Vec<_> = w.take(EP).iter().filter_map(config_id).collect();
    assert_eq!(
        pushed,
        ["cfg-3"],
        "the device must end on the newest configuration"
    );
}

// ---------------------------------------------------------------------------
// One way in: every input through `decode_input` / `handle_input`
// ---------------------------------------------------------------------------

const SESSIONS_SUBJECT: &str = "kaa.v1.replica.cmx-1.elce.SessionsResponse";

fn sessions_datum(endpoints: &[(&str, &[&str])]) -> Vec<u8> {
    use kaa_ism::avro::Encode;
    kaa_elce::SessionsResponse {
        correlation_id: "cmx-1-sessions-1".into(),
        timestamp: 1,
        timeout: 0,
        endpoints: endpoints
            .iter()
            .map(|(ep, paths)| kaa_elce::EndpointSession {
                endpoint_id: (*ep).into(),
                app_version_name: AV.into(),
                resource_paths: paths.iter().map(|p| (*p).into()).collect(),
            })
            .collect(),
        originator_replica_id: "kpc-1".into(),
    }
    .to_vec()
}

fn connected_datum(endpoints: &[&str]) -> Vec<u8> {
    use kaa_ism::avro::Encode;
    kaa_elce::ConnectedEvent {
        correlation_id: "conn".into(),
        timestamp: 1,
        timeout: 0,
        endpoints: endpoints.iter().map(|e| ((*e).into(), AV.into())).collect(),
        originator_replica_id: "kpc-1".into(),
    }
    .to_vec()
}

#[test]
fn bus_connected_asks_for_sessions_and_a_reconnect_resyncs() {
    use kaa_cmp::Input;
    use kaa_ism::avro::Decode;
    let mut w = World::new();
    w.cmx.handle_input(Input::BusConnected, w.now);
    w.drain();
    assert_eq!(w.sessions_requests.len(), 1);
    let ask = Output::SessionsRequest(w.sessions_requests[0].clone());
    assert_eq!(ask.subject(), "kaa.v1.service.kpc.elce.SessionsRequest");
    assert_eq!(ask.reply_to(), Some(SESSIONS_SUBJECT));
    let datum = ask.to_datum();
    assert_eq!(datum.len(), ask.encoded_len());
    let wire = kaa_elce::SessionsRequest::decode(&datum).unwrap();
    assert_eq!(wire.extension_instance_name, "cmx");
    assert_eq!(wire.correlation_id, "cmx-1-sessions-1");
    assert_eq!(wire.timeout, 0, "an answer is useful however late");
    assert_eq!(
        w.cmx.stats().resyncs,
        0,
        "nothing to re-synchronize at start"
    );

    w.provider.set(EP, AV, None, "1");
    w.connect(&[EP]);
    assert_eq!(config_id(&w.take_one(EP)).as_deref(), Some("cfg-1"));
    // An update whose ConfigUpdated was lost while the bus was down.
    let latest = w.provider.set(EP, AV, None, "2").config_id.to_string();
    w.cmx.handle_input(Input::BusConnected, w.now);
    w.drain();
    assert_eq!(w.cmx.stats().resyncs, 1);
    assert_eq!(config_id(&w.take_one(EP)), Some(latest));
    assert_eq!(w.sessions_requests.len(), 2);
    assert_eq!(w.sessions_requests[1].correlation_id, "cmx-1-sessions-2");
    assert_eq!(w.cmx.stats().sessions_requests, 2);
}

#[test]
fn sessions_answers_through_handle_message_adopt_endpoints() {
    let mut w = World::new();
    w.provider.set(EP, AV, None, "1");
    w.provider.set(EP, AV, Some("network"), r#""a""#);
    w.cmx
        .handle_message(
            SESSIONS_SUBJECT,
            None,
            &sessions_datum(&[(EP, &["/config/json", "/config/json/network"])]),
            w.now,
        )
        .unwrap();
    w.drain();
    let mut pushed: Vec<String> = w
        .take(EP)
        .iter()
        .map(|m| m.resource_path.to_string())
        .collect();
    pushed.sort();
    assert_eq!(pushed, ["/config/json", "/config/json/network"]);
    assert!(w.cmx.endpoint(EP).unwrap().connected);
    assert_eq!(w.cmx.stats().sessions_responses, 1);
}

#[test]
fn provider_started_through_handle_message_resyncs() {
    use kaa_ism::avro::Encode;
    let mut w = World::new();
    w.provider.set(EP, AV, None, "1");
    w.connect(&[EP]);
    w.sent.clear();
    let latest = w.provider.set(EP, AV, None, "2").config_id.to_string();
    let started = kaa_cdtp::ProviderStarted {
        correlation_id: "ecr-start".into(),
        timestamp: w.now.0,
        timeout: 0,
        originator_replica_id: "ecr-1".into(),
    }
    .to_vec();
    w.cmx
        .handle_message("kaa.v1.events.ecr.provider.started", None, &started, w.now)
        .unwrap();
    w.drain();
    assert_eq!(w.cmx.stats().resyncs, 1);
    assert_eq!(config_id(&w.take_one(EP)), Some(latest));
    // Another provider's start is not this engine's input.
    let err = w
        .cmx
        .handle_message(
            "kaa.v1.events.other.provider.started",
            None,
            &started,
            w.now,
        )
        .unwrap_err();
    assert!(
        matches!(err, kaa_cmp::InputError::UnexpectedSubject(_)),
        "{err}"
    );
    assert_eq!(w.cmx.stats().resyncs, 1);
}

#[test]
fn decoding_applies_the_endpoints_per_event_limit() {
    use kaa_cmp::engine::InputKind;
    let mut c = config();
    c.max_endpoints_per_event = 2;
    let mut w = World::with(c);
    let connected = "kaa.v1.events.kpc.endpoint.connectivity.connected";
    let err = w
        .cmx
        .handle_message(connected, None, &connected_datum(&["a", "b", "c"]), w.now)
        .unwrap_err();
    assert_eq!(err.kind(), Some(InputKind::Event), "{err}");
    assert!(!err.is_unused());
    assert_eq!(
        w.cmx.tracked_endpoints(),
        0,
        "nothing of a refused event is used"
    );
    let err = w
        .cmx
        .handle_message(
            SESSIONS_SUBJECT,
            None,
            &sessions_datum(&[("a", &[]), ("b", &[]), ("c", &[])]),
            w.now,
        )
        .unwrap_err();
    assert_eq!(err.kind(), Some(InputKind::Sessions), "{err}");
    assert_eq!(w.cmx.tracked_endpoints(), 0);
    // At the limit: handled.
    w.cmx
        .handle_message(connected, None, &connected_datum(&["a", "b"]), w.now)
        .unwrap();
    w.drain();
    assert_eq!(w.cmx.tracked_endpoints(), 2);
}

#[test]
fn unknown_endpoint_event_types_are_unused_not_malformed() {
    let mut w = World::new();
    let err = w
        .cmx
        .handle_message(
            "kaa.v1.events.kpc.endpoint.connectivity.dormant",
            None,
            b"",
            w.now,
        )
        .unwrap_err();
    assert!(err.is_unused(), "{err}");
    let err = w
        .cmx
        .handle_message(
            "kaa.v1.events.kpc.endpoint.connectivity.connected",
            None,
            b"\xff",
            w.now,
        )
        .unwrap_err();
    assert!(!err.is_unused(), "{err}");
}

#[test]
fn timeout_input_fires_the_deadlines() {
    use kaa_cmp::Input;
    let mut w = World::new();
    w.auto_answer = false;
    w.send(EP, "/config/json", Some(5), "{}");
    let deadline = w.cmx.poll_timeout().expect("a CDTP deadline");
    w.cmx.handle_input(Input::Timeout, deadline);
    w.drain();
    let m = w.take_one(EP);
    assert_eq!((m.request_id, m.status_code), (Some(5), 504));
}
