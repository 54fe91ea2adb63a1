//! CMX replicas' membership on a live NATS with JetStream (the shared server,
//! `KAA_TEST_NATS_URL`): joining, leaving (the key deleted: seen at once) and
//! crashing (the key expires). Skips visibly without NATS unless
//! `KAA_REQUIRE_SERVICES=1`.

use std::time::{Duration, Instant};

use kaa_bus::test_support::NATS;
use kaa_cmx::membership::{Membership, MembershipConfig};
use tokio::sync::watch;

fn config(bucket: &str) -> MembershipConfig {
    let mut c = MembershipConfig::new("cmx");
    c.bucket = bucket.to_owned();
    c.heartbeat = Duration::from_millis(100);
    c.expiry = Duration::from_millis(600);
    c
}

/// Waits until `rx` shows `want`; returns how long it took.
async fn until(rx: &mut watch::Receiver<Vec<String>>, want: &[&str], within: Duration) -> Duration {
    let start = Instant::now();
    loop {
        if rx
            .borrow_and_update()
            .iter()
            .map(String::as_str)
            .eq(want.iter().copied())
        {
            return start.elapsed();
        }
        let left = within.saturating_sub(start.elapsed());
        assert!(
            tokio::time::timeout(left, rx.changed()).await.is_ok(),
            "members {:?}, want {want:?} within {within:?}",
            rx.borrow().as_slice()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_join_leave_and_expire() {
    let test = "kaa-cmx membership::replicas_join_leave_and_expire";
    let Some(url) = NATS.require(test) else {
        return;
    };
    let client = async_nats::connect(&url).await.expect("connect");
    let bucket = format!("kaa_cmx_test_{}", std::process::id());
    let c = config(&bucket);

    let mut a = Membership::join(client.clone(), "cmx-a", &c)
        .await
        .expect("a joins");
    assert_eq!(a.members(), ["cmx-a"]);
    let mut changes = a.take_changes().expect("the changes");
    assert!(a.take_changes().is_none(), "taken once");
    let mut seen_by_a = a.subscribe();
    let b = Membership::join(client.clone(), "cmx-b", &c)
        .await
        .expect("b joins");
    assert_eq!(
        b.members(),
        ["cmx-a", "cmx-b"],
        "b reads the bucket on joining"
    );
    until(&mut seen_by_a, &["cmx-a", "cmx-b"], Duration::from_secs(2)).await;

    // A graceful stop deletes the key: seen at once, not after the expiry.
    b.leave().await.expect("b leaves");
    let took = until(&mut seen_by_a, &["cmx-a"], Duration::from_secs(2)).await;
    assert!(took < Duration::from_millis(500), "leave took {took:?}");

    // A crash leaves the key to expire.
    let c2 = Membership::join(client.clone(), "cmx-c", &c)
        .await
        .expect("c joins");
    until(&mut seen_by_a, &["cmx-a", "cmx-c"], Duration::from_secs(2)).await;
    c2.abandon().await;
    let took = until(&mut seen_by_a, &["cmx-a"], Duration::from_secs(3)).await;
    assert!(
        took >= Duration::from_millis(300),
        "expired too soon: {took:?}"
    );

    // The engine's feed: the list read on joining, then every change in
    // order, none skipped.
    let mut feed = Vec::new();
    while let Ok(m) = changes.try_recv() {
        feed.push(m.join(","));
    }
    assert_eq!(
        feed,
        ["cmx-a", "cmx-a,cmx-b", "cmx-a", "cmx-a,cmx-c", "cmx-a"],
        "every change"
    );
    a.leave().await.expect("a leaves");
    let js = async_nats::jetstream::new(client);
    let _ = js.delete_stream(format!("KV_{bucket}")).await;
}

/// The hand-over fence's confirmations travel in the keys' values: a view one
/// replica confirms reaches the other's feed ([`Membership::take_views`]) and
/// its snapshot ([`Membership::known_views`]), survives the heartbeats (which
/// put it again), and goes when the replica leaves. A replica's own
/// confirmation is not reported to itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirmed_views_reach_the_other_replicas() {
    let test = "kaa-cmx membership::confirmed_views_reach_the_other_replicas";
    let Some(url) = NATS.require(test) else {
        return;
    };
    let client = async_nats::connect(&url).await.expect("connect");
    let bucket = format!("kaa_cmx_views_{}", std::process::id());
    let c = config(&bucket);
    let mut a = Membership::join(client.clone(), "cmx-a", &c)
        .await
        .expect("a joins");
    let mut views = a.take_views().expect("the views");
    assert!(a.take_views().is_none(), "taken once");
    let b = Membership::join(client.clone(), "cmx-b", &c)
        .await
        .expect("b joins");
    assert!(a.known_views().is_empty(), "b has confirmed nothing yet");
    let view = kaa_cmp::engine::membership_view(&["cmx-a", "cmx-b"]);
    b.confirm_view(view);
    a.confirm_view(view);
    let got = tokio::time::timeout(Duration::from_secs(2), views.recv())
        .await
        .expect("b's confirmation within 2 s")
        .expect("the feed is open");
    assert_eq!(got, ("cmx-b".to_owned(), view));
    // Heartbeats put the same value again: no new report, still known.
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert!(
        views.try_recv().is_err(),
        "reported once, not per heartbeat"
    );
    assert_eq!(a.known_views(), [("cmx-b".to_owned(), view)]);
    // A newer view is reported.
    b.confirm_view(view ^ 1);
    let got = tokio::time::timeout(Duration::from_secs(2), views.recv())
        .await
        .expect("the newer confirmation within 2 s");
    assert_eq!(got, Some(("cmx-b".to_owned(), view ^ 1)));
    b.leave().await.expect("b leaves");
    let deadline = Instant::now() + Duration::from_secs(2);
    while !a.known_views().is_empty() {
        assert!(Instant::now() < deadline, "b's view forgotten when it left");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    a.leave().await.expect("a leaves");
    let js = async_nats::jetstream::new(client);
    let _ = js.delete_stream(format!("KV_{bucket}")).await;
}

/// A replica whose runtime is not driven at all for three expiries (here: a
/// single-threaded runtime nobody runs, as a runtime starved by its own work
/// would be) stays a member when it joined on a thread of its own
/// (`join_on_own_thread`, what the `cmx` service does); the control, joined on
/// that runtime, is taken for dead by the others, so the stall was real.
#[test]
fn heartbeats_on_their_own_thread_outlive_a_stalled_runtime() {
    let test = "kaa-cmx membership::heartbeats_on_their_own_thread_outlive_a_stalled_runtime";
    let Some(url) = NATS.require(test) else {
        return;
    };
    let bucket = format!("kaa_cmx_test_stall_{}", std::process::id());
    let c = config(&bucket);
    // The observer, on a runtime whose worker runs whatever the test does.
    let observer_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let (observer, mut changes, client) = observer_rt.block_on(async {
        let client = async_nats::connect(&url).await.expect("connect");
        let mut a = Membership::join(client.clone(), "cmx-a", &c)
            .await
            .expect("a joins");
        let changes = a.take_changes().expect("the changes");
        (a, changes, client)
    });
    // The replica's runtime: driven only inside `block_on`.
    let stalled_rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (own, shared) = stalled_rt.block_on(async {
        let own_url = url.clone();
        let own = Membership::join_on_own_thread(
            move || async move {
                async_nats::connect(own_url)
                    .await
                    .map_err(|e| e.to_string())
            },
            "cmx-own",
            &c,
        )
        .await
        .expect("own thread joins");
        let client = async_nats::connect(&url).await.expect("connect");
        let shared = Membership::join(client, "cmx-shared", &c)
            .await
            .expect("shared joins");
        (own, shared)
    });
    let mut seen = observer.subscribe();
    observer_rt.block_on(until(
        &mut seen,
        &["cmx-a", "cmx-own", "cmx-shared"],
        Duration::from_secs(3),
    ));
    // Nobody drives `stalled_rt` now: three expiries.
    std::thread::sleep(c.expiry * 3);
    assert_eq!(
        observer.members(),
        ["cmx-a", "cmx-own"],
        "the control expired, the replica on its own thread did not"
    );
    let mut feed = Vec::new();
    while let Ok(m) = changes.try_recv() {
        feed.push(m);
    }
    let joined = feed
        .iter()
        .position(|m| m.iter().any(|r| r == "cmx-own"))
        .expect("cmx-own seen");
    assert!(
        feed[joined..]
            .iter()
            .all(|m| m.iter().any(|r| r == "cmx-own")),
        "cmx-own was never dropped: {feed:?}"
    );
    stalled_rt.block_on(async {
        own.leave().await.expect("own leaves");
        shared.abandon().await;
    });
    observer_rt.block_on(async {
        until(&mut seen, &["cmx-a"], Duration::from_secs(3)).await;
        observer.leave().await.expect("a leaves");
        let js = async_nats::jetstream::new(client);
        let _ = js.delete_stream(format!("KV_{bucket}")).await;
    });
}
