//! CMX replicas sharing the work by endpoint (kaa-rs extension): the owner
//! function, hand-overs, filtered events and membership changes, one engine at
//! a time. The model test with several engines is `tests/replicas_model.rs`.

mod support;

use std::borrow::Cow;
use std::collections::HashMap;

use kaa_cmp::engine::{Cmx, Input, InputKind, Output, rendezvous_owner, rendezvous_weight};
use kaa_elce::{EndpointSession, SessionsResponse};
use kaa_esp::ClientData;
use kaa_ism::avro::Decode;
use support::{AV, KPC_REPLICA, World, config_id};

const R3: [&str; 3] = ["cmx-1", "cmx-2", "cmx-3"];

/// The first endpoint ID `ep-<n>` that `owner` owns among `members`.
fn endpoint_of(owner: &str, members: &[&str]) -> String {
    (0..)
        .map(|i| format!("ep-{i}"))
        .find(|ep| rendezvous_owner(members, ep) == Some(owner))
        .unwrap()
}

/// An engine of replica `replica`, without the hand-over hold (these tests are
/// about ownership; `a_replica_joining_live_members_holds_its_pushes` is about
/// the hold).
fn engine(replica: &str) -> World {
    let mut c = support::config();
    c.replica_id = replica.into();
    c.handover_delay = std::time::Duration::ZERO;
    World::with(c)
}

fn outputs(cmx: &mut Cmx) -> Vec<Output> {
    std::iter::from_fn(|| cmx.poll_output()).collect()
}

#[test]
fn the_owner_is_stable_and_balanced_and_moves_little() {
    // Stable: the documented function, independent of the order of members.
    assert_eq!(rendezvous_weight("cmx-1", "ep-1"), 0x5418_0305_8bd3_ea38);
    let reversed = ["cmx-3", "cmx-2", "cmx-1"];
    let mut per_member: HashMap<&str, usize> = HashMap::new();
    let endpoints: Vec<String> = (0..10_000).map(|i| format!("endpoint-{i:05}")).collect();
    for ep in &endpoints {
        let owner = rendezvous_owner(&R3, ep).unwrap();
        assert_eq!(rendezvous_owner(&reversed, ep), Some(owner));
        *per_member.entry(owner).or_default() += 1;
    }
    // Balanced within reason: each of three gets a third, within 5 %.
    for (member, n) in &per_member {
        assert!((3_000..=3_666).contains(n), "{member}: {n} of 10,000");
    }
    // A member joins: only about a quarter move, all of them to the new one.
    let four = ["cmx-1", "cmx-2", "cmx-3", "cmx-4"];
    let mut moved = 0;
    for ep in &endpoints {
        let (before, after) = (
            rendezvous_owner(&R3, ep).unwrap(),
            rendezvous_owner(&four, ep).unwrap(),
        );
        if before != after {
            assert_eq!(after, "cmx-4", "{ep} moved between old members");
            moved += 1;
        }
    }
    assert!((2_200..=2_800).contains(&moved), "{moved} moved on a join");
    // A member leaves: only its endpoints move.
    let two = ["cmx-1", "cmx-3"];
    for ep in &endpoints {
        let before = rendezvous_owner(&R3, ep).unwrap();
        let after = rendezvous_owner(&two, ep).unwrap();
        if before != "cmx-2" {
            assert_eq!(before, after, "{ep} moved though its owner stayed");
        }
    }
    assert_eq!(rendezvous_owner::<&str>(&[], "ep"), None);
}

#[test]
fn without_members_or_alone_an_engine_serves_every_endpoint() {
    let mut w = World::new();
    assert!(w.cmx.members().is_empty());
    assert!(w.cmx.owns("anything"));
    assert_eq!(w.cmx.owner_of("anything"), "cmx-1");
    w.cmx.handle_input(Input::Members(&["cmx-1"]), w.now);
    assert_eq!(w.cmx.stats().membership_changes, 1);
    // Alone since the start: nothing to take over.
    assert!(w.cmx.poll_output().is_none());
    w.cmx.set_members(&["cmx-1", "cmx-1"], w.now);
    assert_eq!(w.cmx.stats().membership_changes, 1, "the same list");
    w.provider.set("ep-7", AV, None, "{}");
    w.send("ep-7", "/config/json", Some(1), "{}");
    assert_eq!(config_id(&w.take_one("ep-7")).as_deref(), Some("cfg-1"));
    assert_eq!(w.cmx.stats().handed_over, 0);
}

#[test]
fn client_data_about_another_replicas_endpoint_is_handed_over_as_is() {
    let mut w = engine("cmx-1");
    w.cmx.set_members(&R3, w.now);
    let theirs = endpoint_of("cmx-2", &R3);
    let cd = w.client_data(&theirs, "/config/json", Some(5), r#"{"observe":true}"#);
    w.cmx.handle_client_data(&cd, Some(KPC_REPLICA), w.now);
    let out = outputs(&mut w.cmx);
    let [Output::HandOver(h)] = out.as_slice() else {
        panic!("one hand-over: {out:?}")
    };
    assert_eq!(&*h.subject, "kaa.v1.replica.cmx-2.esp.ClientData");
    assert_eq!(h.reply_to.as_deref(), Some(KPC_REPLICA));
    assert_eq!((&*h.owner, &*h.endpoint_id), ("cmx-2", theirs.as_str()));
    let handed = &out[0];
    assert_eq!(handed.subject(), &*h.subject);
    assert_eq!(handed.reply_to(), Some(KPC_REPLICA));
    assert_eq!(ClientData::decode(&handed.to_datum()).unwrap(), cd);
    assert_eq!(handed.encoded_len(), h.datum.len());
    assert_eq!(w.cmx.stats().handed_over, 1);
    assert_eq!(w.cmx.stats().client_data, 0);
    assert_eq!(w.cmx.tracked_endpoints(), 0);

    // The owner decodes it from its replica subject and serves it, answering
    // the communication service's replica.
    let mut owner = engine("cmx-2");
    owner.cmx.set_members(&R3, owner.now);
    owner.provider.set(&theirs, AV, None, r#"{"a":1}"#);
    let datum = handed.to_datum();
    let input = owner
        .cmx
        .decode_input(handed.subject(), handed.reply_to(), &datum)
        .unwrap();
    assert!(matches!(input, Input::HandedOver { .. }));
    assert_eq!(input.kind(), InputKind::ClientData);
    owner.cmx.handle_input(input, owner.now);
    owner.drain();
    let answer = owner.take_one(&theirs);
    assert_eq!(&*answer.subject, KPC_REPLICA);
    assert_eq!((answer.request_id, answer.status_code), (Some(5), 200));
    assert_eq!(owner.cmx.stats().handed_over_received, 1);
    assert_eq!(owner.cmx.stats().handed_over_not_owned, 0);
    // On the instance-wide subject it is a plain ClientData.
    let input = owner
        .cmx
        .decode_input("kaa.v1.service.cmx.esp.ClientData", None, &datum)
        .unwrap();
    assert!(matches!(input, Input::ClientData { .. }));
}

#[test]
fn a_hand_over_is_never_handed_on() {
    // cmx-3 receives a hand-over about an endpoint cmx-2 owns in its view.
    let mut w = engine("cmx-3");
    w.cmx.set_members(&R3, w.now);
    let theirs = endpoint_of("cmx-2", &R3);
    let req = w.client_data(&theirs, "/config/json", Some(9), "{}");
    w.cmx.handle_handed_over(&req, Some(KPC_REPLICA), w.now);
    w.drain();
    let answer = w.take_one(&theirs);
    assert_eq!((answer.request_id, answer.status_code), (Some(9), 503));
    assert!(w.requests.is_empty(), "no CDTP request from a non-owner");
    // An applied report is broadcast and answered, without bookkeeping.
    let applied = w.client_data(
        &theirs,
        "/applied/json",
        Some(10),
        r#"{"configId":"cfg-1"}"#,
    );
    w.cmx.handle_handed_over(&applied, Some(KPC_REPLICA), w.now);
    w.drain();
    assert_eq!(w.take_one(&theirs).status_code, 200);
    assert_eq!(w.applied.len(), 1);
    assert_eq!(&*w.applied[0].config_id, "cfg-1");
    assert_eq!(w.cmx.tracked_endpoints(), 0);
    assert_eq!(w.cmx.stats().handed_over_not_owned, 2);
    assert_eq!(w.cmx.stats().handed_over, 0, "never handed on");
}

#[test]
fn events_and_updates_about_other_replicas_endpoints_are_ignored() {
    let mut w = engine("cmx-1");
    w.cmx.set_members(&R3, w.now);
    let mine = endpoint_of("cmx-1", &R3);
    let theirs = endpoint_of("cmx-2", &R3);
    w.provider.set(&mine, AV, None, "{}");
    w.provider.set(&theirs, AV, None, "{}");
    // One event lists both: filtered per endpoint.
    w.connect(&[&mine, &theirs]);
    assert!(w.cmx.endpoint(&mine).is_some());
    assert!(w.cmx.endpoint(&theirs).is_none());
    assert_eq!(w.take(&mine).len(), 1, "a push on connect");
    assert!(w.take(&theirs).is_empty());
    w.update(&theirs, None, r#"{"v":2}"#);
    assert!(w.take(&theirs).is_empty());
    w.update(&mine, None, r#"{"v":2}"#);
    assert_eq!(w.take(&mine).len(), 1);
    assert!(w.requests.iter().all(|r| *r.endpoint_id == *mine));
    assert_eq!(w.cmx.stats().not_owned_ignored, 2);
}

fn sessions(
    correlation_id: &str,
    endpoints: &[&str],
    paths: &[&'static str],
) -> SessionsResponse<'static> {
    SessionsResponse {
        correlation_id: correlation_id.to_owned().into(),
        timestamp: 0,
        timeout: 0,
        endpoints: endpoints
            .iter()
            .map(|e| EndpointSession {
                endpoint_id: e.to_string().into(),
                app_version_name: AV.into(),
                resource_paths: paths.iter().map(|p| Cow::Borrowed(*p)).collect(),
            })
            .collect(),
        originator_replica_id: "kpc-1".into(),
    }
}

#[test]
fn a_membership_change_moves_endpoints_and_the_new_owner_takes_them_over() {
    let two = ["cmx-1", "cmx-2"];
    let one = ["cmx-1"];
    // An endpoint cmx-2 owns among two, and one cmx-1 owns either way.
    let moving = endpoint_of("cmx-2", &two);
    let staying = endpoint_of("cmx-1", &two);
    let mut c2 = engine("cmx-2");
    c2.cmx.set_members(&two, c2.now);
    c2.auto_answer = false;
    c2.connect(&[&moving]);
    assert_eq!(c2.requests.len(), 1, "a fetch for the push on connect");
    // A device request waits on that fetch when cmx-2 learns it lost the
    // endpoint (e.g. cmx-1 was told to take everything).
    c2.send(&moving, "/config/json", Some(3), "{}");
    c2.cmx.handle_input(Input::Members(&one), c2.now);
    c2.drain();
    let answer = c2.take_one(&moving);
    assert_eq!((answer.request_id, answer.status_code), (Some(3), 503));
    assert!(c2.cmx.endpoint(&moving).is_none());
    assert_eq!(c2.cmx.pending_requests(), 0);
    assert_eq!(c2.cmx.stats().endpoints_moved, 1);
    // Its CDTP answer, when it comes, matches nothing.
    c2.answer_next();
    assert!(c2.take(&moving).is_empty());
    assert!(
        c2.sessions_requests.is_empty(),
        "losing endpoints is no take-over"
    );

    // cmx-1 serves `staying`, then cmx-2 leaves: cmx-1 asks for the sessions.
    let mut c1 = engine("cmx-1");
    c1.cmx.set_members(&two, c1.now);
    c1.provider.set(&staying, AV, None, "{}");
    c1.provider.set(&moving, AV, None, r#"{"m":1}"#);
    c1.connect(&[&staying]);
    c1.take(&staying);
    let before = c1.requests.len();
    c1.cmx.set_members(&one, c1.now);
    c1.drain();
    let [ask] = c1.sessions_requests.as_slice() else {
        panic!("one sessions request: {:?}", c1.sessions_requests)
    };
    assert!(ask.correlation_id.starts_with("cmx-1-takeover-"));
    assert_eq!(&*ask.reply_to, "kaa.v1.replica.cmx-1.elce.SessionsResponse");
    // The answer lists both: only the unknown one is taken over, with a fresh
    // fetch and a push.
    let answer = sessions(&ask.correlation_id, &[&staying, &moving], &["/config/json"]);
    c1.cmx.handle_input(Input::Sessions(answer), c1.now);
    c1.drain();
    assert_eq!(c1.requests.len(), before + 1);
    assert_eq!(&*c1.requests[before].endpoint_id, moving.as_str());
    assert!(
        c1.take(&staying).is_empty(),
        "served already: no push again"
    );
    let push = c1.take_one(&moving);
    assert!(push.is_push());
    assert_eq!(config_id(&push).as_deref(), Some("cfg-2"));
}

#[test]
fn a_bus_connect_adopts_only_owned_sessions() {
    let mut w = engine("cmx-1");
    w.cmx.set_members(&R3, w.now);
    let mine = endpoint_of("cmx-1", &R3);
    let theirs = endpoint_of("cmx-3", &R3);
    w.cmx.handle_input(Input::BusConnected, w.now);
    w.drain();
    let ask = w.sessions_requests.pop().unwrap();
    w.cmx.handle_input(
        Input::Sessions(sessions(&ask.correlation_id, &[&mine, &theirs], &[])),
        w.now,
    );
    w.drain();
    assert!(w.cmx.endpoint(&mine).is_some_and(|e| e.connected));
    assert!(w.cmx.endpoint(&theirs).is_none());
    assert_eq!(w.cmx.stats().not_owned_ignored, 1);
    // A member joins: cmx-1 may only lose endpoints, so it asks nothing.
    let four = ["cmx-1", "cmx-2", "cmx-3", "cmx-4"];
    w.cmx.set_members(&four, w.now);
    w.drain();
    assert!(w.sessions_requests.is_empty());
    assert_eq!(
        w.cmx.endpoint(&mine).is_some(),
        rendezvous_owner(&four, &mine) == Some("cmx-1")
    );
    // Invalid IDs are skipped.
    w.cmx.set_members(&["cmx-1", "not a token"], w.now);
    w.drain();
    assert_eq!(w.cmx.members(), ["cmx-1"]);
    assert!(w.cmx.owns(&theirs));
    assert_eq!(w.sessions_requests.len(), 1, "the others left");
    // From alone to off: nothing moves, nothing to ask.
    w.cmx.set_members::<&str>(&[], w.now);
    w.drain();
    assert_eq!(w.sessions_requests.len(), 1);
}

#[test]
fn endpoints_learned_just_after_a_change_take_updates_for_any_name() {
    // While the replicas' views differ, another replica may have served a
    // name of an endpoint this one owns; for `membership_settle` after a
    // change, endpoints it starts tracking get updates for any name.
    let mut w = engine("cmx-1");
    w.cmx.set_members(&R3, w.now);
    let (early, late) = {
        let mut mine = (0..)
            .map(|i| format!("ep-{i}"))
            .filter(|ep| rendezvous_owner(&R3, ep) == Some("cmx-1"));
        (mine.next().unwrap(), mine.next().unwrap())
    };
    w.connect(&[&early]);
    w.update(&early, Some("net"), r#"{"n":1}"#);
    assert!(
        w.requests
            .iter()
            .any(|r| r.config_name.as_deref() == Some("net")),
        "fetched for an unknown name just after the change"
    );
    assert!(
        w.take(&early)
            .iter()
            .any(|m| &*m.resource_path == "/config/json/net")
    );
    // Past the settle time, as before: names the device has not used are not
    // pushed.
    w.advance(11_000);
    w.connect(&[&late]);
    let before = w.requests.len();
    w.update(&late, Some("net"), r#"{"n":2}"#);
    assert!(
        w.requests[before..].iter().all(|r| r.config_name.is_none()),
        "no fetch for an unused name: {:?}",
        &w.requests[before..]
    );
}

/// An engine of `replica` with a hand-over fence of `fence_ms`.
fn fenced_engine(replica: &str, fence_ms: u64) -> World {
    let mut c = support::config();
    c.replica_id = replica.into();
    c.handover_delay = std::time::Duration::from_millis(fence_ms);
    World::with(c)
}

/// A replica joining live members delivers nothing to the endpoints it takes
/// over (no push, no answer) until the others confirm they applied the new
/// member list: the replica giving them up may have pushed a moment before it
/// saw the join, on another connection, and a newer delivery from the new
/// owner could overtake that push (`fault_replicas` cmx-kill under load: a
/// device got `seq` 41, 37, 41; with a fixed 1 s hold instead of the
/// confirmations, 39, 35, 43). Without every confirmation the fence lifts at
/// `handover_delay`: what was wanted meanwhile goes out then. Alone, or when
/// another member leaves, nothing is held (a replica that left pushes no
/// more).
#[test]
fn a_replica_joining_live_members_holds_its_deliveries_until_the_deadline() {
    let two = ["cmx-1", "cmx-2"];
    let mine = endpoint_of("cmx-1", &two);
    let mut w = fenced_engine("cmx-1", 1000);
    w.provider.set(&mine, AV, None, "{}");
    // cmx-1 (re)starts and joins cmx-2, which served `mine` meanwhile.
    w.cmx.set_members(&two, w.now);
    assert!(w.cmx.handover_fenced());
    w.connect(&[&mine]);
    assert!(w.take(&mine).is_empty(), "no push during the hand-over");
    assert!(w.requests.is_empty(), "nor a fetch for one");
    // The device asks: fetched, but not answered while the fence is up.
    w.send(&mine, "/config/json", Some(1), "{}");
    assert!(w.take(&mine).is_empty(), "no answer during the hand-over");
    // A newer configuration during the hold: delivered when it ends.
    w.update(&mine, None, r#"{"v":2}"#);
    w.advance(500);
    assert!(w.take(&mine).is_empty(), "still held");
    w.advance(600);
    assert!(!w.cmx.handover_fenced());
    let got = w.take(&mine);
    let answer = got
        .iter()
        .find(|m| m.request_id == Some(1))
        .expect("the request answered when the fence lifts");
    assert_eq!(answer.status_code, 200);
    assert_eq!(config_id(answer).as_deref(), Some("cfg-2"), "the newest");
    assert!(
        got.iter().all(|m| config_id(m).as_deref() == Some("cfg-2")),
        "nothing older delivered after the hold: {got:#?}"
    );
    assert_eq!(w.cmx.stats().handover_fences_timed_out, 1);
    assert_eq!(w.cmx.stats().handover_fences_confirmed, 0);
    // After the hold, pushes go out at once.
    w.update(&mine, None, r#"{"v":3}"#);
    assert_eq!(config_id(&w.take_one(&mine)).as_deref(), Some("cfg-3"));

    // Alone, or when the other member leaves: no hold.
    let mut alone = fenced_engine("cmx-1", 1000);
    alone.provider.set(&mine, AV, None, "{}");
    alone.cmx.set_members(&["cmx-1"], alone.now);
    assert!(!alone.cmx.handover_fenced());
    alone.connect(&[&mine]);
    assert_eq!(alone.take(&mine).len(), 1, "a push on connect at once");
    let mut left = fenced_engine("cmx-1", 1000);
    left.provider.set(&mine, AV, None, "{}");
    left.cmx.set_members(&["cmx-1"], left.now);
    left.cmx.set_members(&two, left.now);
    left.advance(1000);
    left.cmx.set_members(&["cmx-1"], left.now);
    assert!(!left.cmx.handover_fenced(), "another member left: no fence");
}

/// The fence lifts as soon as every other member has confirmed the view the
/// joining replica applied ([`Cmx::set_member_view`], which the driver feeds
/// from the members' keys): a confirmation of an older view, or by a replica
/// that is not a member, does not count; with three members both others must
/// confirm. Answers held meanwhile go out in request order, and an answer
/// that a newer `ConfigUpdated` overtook while held is fetched again first.
#[test]
fn a_replica_joining_live_members_delivers_once_the_others_confirm_its_view() {
    use kaa_cmp::engine::membership_view;
    let three = ["cmx-1", "cmx-2", "cmx-3"];
    let mine = endpoint_of("cmx-1", &three);
    let mut w = fenced_engine("cmx-1", 60_000);
    w.provider.set(&mine, AV, None, r#"{"v":1}"#);
    w.cmx.set_members(&three, w.now);
    let view = w.cmx.membership_view();
    assert_eq!(view, membership_view(&["cmx-3", "cmx-1", "cmx-2"]));
    assert_ne!(view, membership_view(&["cmx-2", "cmx-3"]));
    w.connect(&[&mine]);
    w.send(&mine, "/config/json", Some(7), "{}");
    assert!(w.take(&mine).is_empty(), "held");
    let fetches = w.requests.len();
    assert!(fetches >= 1, "the fetch goes on during the fence");
    // A newer configuration while the answer is held: the held answer is
    // stale when the fence lifts.
    let u = w.provider.set(&mine, AV, None, r#"{"v":2}"#);
    // cmx-2 confirms the list it had before cmx-1 joined: not enough.
    w.cmx
        .set_member_view("cmx-2", membership_view(&["cmx-2", "cmx-3"]), w.now);
    // A replica that is not a member: ignored.
    w.cmx.set_member_view("cmx-9", view, w.now);
    // cmx-2 confirms the new list; cmx-3 has not yet.
    w.cmx.set_member_view("cmx-2", view, w.now);
    w.drain();
    assert!(w.cmx.handover_fenced());
    assert!(w.take(&mine).is_empty(), "still held for cmx-3");
    w.cmx.handle_config_updated(&u, w.now);
    w.drain();
    assert!(w.take(&mine).is_empty(), "still held for cmx-3");
    w.cmx.set_member_view("cmx-3", view, w.now);
    w.drain();
    assert!(!w.cmx.handover_fenced());
    let got = w.take(&mine);
    let answer = got
        .iter()
        .find(|m| m.request_id == Some(7))
        .expect("answered once both confirmed");
    assert_eq!(
        config_id(answer).as_deref(),
        Some("cfg-2"),
        "the newest: {got:#?}"
    );
    assert!(
        got.iter().all(|m| config_id(m).as_deref() == Some("cfg-2")),
        "nothing older delivered: {got:#?}"
    );
    assert!(
        w.requests.len() > fetches,
        "the stale held answer was fetched again"
    );
    assert_eq!(w.cmx.stats().handover_fences_confirmed, 1);
    assert!(w.cmx.stats().handover_held_answers >= 1);
    // Pushes after the fence go out at once.
    w.update(&mine, None, r#"{"v":3}"#);
    assert_eq!(config_id(&w.take_one(&mine)).as_deref(), Some("cfg-3"));
}
