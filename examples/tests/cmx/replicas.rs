//! Two CMX replicas of one instance on the shared NATS (kaa-rs extension,
//! `cmx.replicas`): the issue's workload is served once, not twice, and when a
//! replica stops (gracefully, or by crashing) the other takes its endpoints
//! over through the sessions exchange and a fresh fetch. Skips visibly without
//! NATS unless `KAA_REQUIRE_SERVICES=1`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kaa_bus::test_support::NATS;
use kaa_cmp::engine::rendezvous_owner;
use kaa_examples::cmx::config::CmxServiceConfig;
use kaa_examples::cmx::{CmxService, connect_membership};
use kaa_testkit::cmx::{
    APP_V1, Delivered, FakeKpc, FakeProvider, Names, QUIET, Received, RunningCmx, Session, nats,
};

const REPLICAS: &str =
    "  replicas:\n    enabled: true\n    heartbeat-ms: 200\n    expiry-ms: 1500\n";

/// A CMX replica `replica` of the test's instance, with membership.
async fn replica(names: &Names, url: &str, replica: &str) -> RunningCmx {
    let mut n = names.clone();
    n.replica = replica.to_owned();
    let config = CmxServiceConfig::parse(&n.config_yaml(Some(url), REPLICAS), "test").unwrap();
    let service = CmxService::bind(&config, nats(url).await).await.unwrap();
    let service = match connect_membership(&config)
        .await
        .expect("join the replicas")
    {
        Some(m) => service.with_membership(m),
        None => service,
    };
    let running = RunningCmx::spawn(service);
    running.wait_state("running").await;
    running
}

/// Waits until `cmx` has seen `changes` membership changes.
async fn members_seen(cmx: &RunningCmx, changes: f64) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while cmx.metric("cmx_membership_changes_total") < changes {
        assert!(Instant::now() < deadline, "membership changes not seen");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Answers every configuration request until none comes for a while, each with
/// the endpoint's current configuration; returns them.
async fn serve(
    provider: &mut FakeProvider,
    configs: &HashMap<String, (String, String)>,
) -> Vec<Received> {
    let mut served = Vec::new();
    while let Ok(Some(r)) = tokio::time::timeout(QUIET, provider.next_request_raw()).await {
        let (id, content) = &configs[&*r.request.endpoint_id];
        provider.answer_config(&r, id, content).await;
        served.push(r);
    }
    served
}

/// Everything delivered to the communication service until quiet.
async fn delivered(kpc: &mut FakeKpc) -> Vec<Delivered> {
    let mut all = Vec::new();
    while let Some(d) = kpc.next_within(QUIET).await {
        all.push(d);
    }
    all
}

fn endpoints_of(requests: &[Received]) -> Vec<String> {
    let mut eps: Vec<String> = requests
        .iter()
        .map(|r| r.request.endpoint_id.to_string())
        .collect();
    eps.sort();
    eps
}

fn pushed_to(ds: &[Delivered]) -> Vec<String> {
    let mut eps: Vec<String> = ds
        .iter()
        .filter(|d| d.message.request_id.is_none())
        .map(|d| d.message.endpoint_id.as_deref().unwrap_or("").to_owned())
        .collect();
    eps.sort();
    eps
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_serve_each_endpoint_once_and_take_over() {
    let test = "kaa-examples cmx::replicas::two_replicas_serve_each_endpoint_once_and_take_over";
    let Some(url) = NATS.require(test) else {
        return;
    };
    let names = Names::unique("replicas");
    let (r1, r2) = (format!("{}-r1", names.cmx), format!("{}-r2", names.cmx));
    let fakes = nats(&url).await;
    let mut provider = FakeProvider::start(Arc::clone(&fakes), &names).await;
    let mut kpc = FakeKpc::start(Arc::clone(&fakes), &names).await;
    let sessions: Arc<Mutex<Vec<Session>>> = Arc::default();
    kpc.serve_sessions(Arc::clone(&sessions)).await;

    // Two endpoints each replica owns.
    let members = [r1.as_str(), r2.as_str()];
    let mut mine: HashMap<&str, Vec<String>> = HashMap::new();
    for n in 0.. {
        let ep = names.endpoint(n);
        let owner = rendezvous_owner(&members, &ep).unwrap();
        let list = mine.entry(owner).or_default();
        if list.len() < 2 {
            list.push(ep);
        }
        if mine.values().map(Vec::len).sum::<usize>() == 4 {
            break;
        }
    }
    let (of_r1, of_r2) = (mine[r1.as_str()].clone(), mine[r2.as_str()].clone());
    let mut all: Vec<String> = of_r1.iter().chain(&of_r2).cloned().collect();
    all.sort();
    let mut configs: HashMap<String, (String, String)> = all
        .iter()
        .map(|e| (e.clone(), (format!("{e}-v1"), r#"{"v":1}"#.to_owned())))
        .collect();

    let a = replica(&names, &url, &r1).await;
    let mut b = replica(&names, &url, &r2).await;
    members_seen(&a, 2.0).await; // [r1], then [r1, r2]
    members_seen(&b, 1.0).await;
    // r2 joined a live r1: it delivers nothing until r1 confirms the new
    // member list (the hand-over fence, at most `CmxConfig::handover_delay`;
    // kaa-cmp's `replicas` tests check it). Normally milliseconds.
    tokio::time::sleep(Duration::from_millis(1100)).await;

    // The issue's workload. Connect: one fetch and one push per endpoint.
    let pairs: Vec<(&str, &str)> = all.iter().map(|e| (e.as_str(), APP_V1)).collect();
    kpc.connected(&pairs).await;
    *sessions.lock().unwrap() = all
        .iter()
        .map(|e| {
            (
                e.clone(),
                APP_V1.to_owned(),
                vec!["/config/json".to_owned()],
            )
        })
        .collect();
    assert_eq!(
        endpoints_of(&serve(&mut provider, &configs).await),
        all,
        "one fetch per endpoint"
    );
    assert_eq!(
        pushed_to(&delivered(&mut kpc).await),
        all,
        "one push per endpoint"
    );

    // An update of each: one fetch and one push each.
    for e in &all {
        configs.insert(e.clone(), (format!("{e}-v2"), r#"{"v":2}"#.to_owned()));
        provider
            .config_updated(e, APP_V1, &format!("{e}-v2"), r#"{"v":2}"#, None)
            .await;
    }
    assert_eq!(endpoints_of(&serve(&mut provider, &configs).await), all);
    assert_eq!(pushed_to(&delivered(&mut kpc).await), all);

    // Device requests reach either replica (queue group): each is answered
    // once, by the owner, with one fetch.
    let mut sent = Vec::new();
    let mut answers = Vec::new();
    for round in 0..4 {
        for (i, e) in all.iter().enumerate() {
            let request_id = (round * 10 + i) as i32;
            let payload = format!(r#"{{"configId":"{e}-v2","observe":true}}"#);
            kpc.send(
                e,
                APP_V1,
                "/config/json",
                Some(request_id),
                payload.as_bytes(),
            )
            .await;
            sent.push((e.clone(), request_id));
        }
        let fetched = serve(&mut provider, &configs).await;
        assert_eq!(
            endpoints_of(&fetched),
            all,
            "one fetch per endpoint and round"
        );
        answers.extend(delivered(&mut kpc).await);
    }
    let mut answered: Vec<(String, i32)> = answers
        .iter()
        .map(|d| {
            assert_eq!(
                d.subject,
                names.kpc_reply_subject(),
                "straight to the KPC replica"
            );
            assert_eq!(d.message.status_code, 200);
            (
                d.message.endpoint_id.as_deref().unwrap().to_owned(),
                d.message.request_id.unwrap(),
            )
        })
        .collect();
    answered.sort();
    sent.sort();
    assert_eq!(answered, sent, "each request answered exactly once");
    let handed = a.metric("cmx_handed_over_total") + b.metric("cmx_handed_over_total");
    let received =
        a.metric("cmx_handed_over_received_total") + b.metric("cmx_handed_over_received_total");
    assert!(handed >= 1.0, "some requests reached the other replica");
    assert_eq!(handed, received);

    // r2 stops gracefully: its key is deleted and r1 takes its endpoints over
    // at once (sessions exchange, fresh fetch, push).
    let started = Instant::now();
    b.signal_stop();
    let taken = serve(&mut provider, &configs).await;
    assert_eq!(
        endpoints_of(&taken),
        of_r2_sorted(&of_r2),
        "r1 fetches r2's endpoints"
    );
    assert_eq!(pushed_to(&delivered(&mut kpc).await), of_r2_sorted(&of_r2));
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "take-over took {:?}",
        started.elapsed()
    );
    let _ = tokio::time::timeout(Duration::from_secs(10), &mut b.task).await;
    // A request for one of them is served by r1 (the only replica).
    kpc.send(&of_r2[0], APP_V1, "/config/json", Some(99), br#"{}"#)
        .await;
    assert_eq!(serve(&mut provider, &configs).await.len(), 1);
    let d = delivered(&mut kpc).await;
    assert_eq!((d.len(), d[0].message.request_id), (1, Some(99)));

    // r2 comes back, then crashes: its key expires and r1 takes over again.
    let b2 = replica(&names, &url, &r2).await;
    members_seen(&b2, 1.0).await;
    // r2 adopts its sessions once its hand-over hold (1 s) has passed.
    let joined = Instant::now();
    let back = loop {
        let r = serve(&mut provider, &configs).await;
        if !r.is_empty() || joined.elapsed() > Duration::from_secs(4) {
            break r;
        }
    };
    assert_eq!(endpoints_of(&back), of_r2_sorted(&of_r2));
    delivered(&mut kpc).await;
    let crashed = Instant::now();
    b2.task.abort();
    let taken = loop {
        let r = serve(&mut provider, &configs).await;
        if !r.is_empty() || crashed.elapsed() > Duration::from_secs(6) {
            break r;
        }
    };
    assert_eq!(
        endpoints_of(&taken),
        of_r2_sorted(&of_r2),
        "after the expiry"
    );
    assert_eq!(pushed_to(&delivered(&mut kpc).await), of_r2_sorted(&of_r2));
    let took = crashed.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(6),
        "{took:?}"
    );

    a.stop().await;
    let client = async_nats::connect(&url).await.unwrap();
    let _ = async_nats::jetstream::new(client)
        .delete_stream(format!("KV_kaa_cmx_{}", names.cmx))
        .await;
}

fn of_r2_sorted(eps: &[String]) -> Vec<String> {
    let mut v = eps.to_vec();
    v.sort();
    v
}
