//! `MemoryBus` behaviour beyond the shared conformance suite: the bounded buffers
//! and their drop policy, queue-group turn taking, and the lifetime of streams.

use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use kaa_bus::{Bus, BusError, MemoryBus, MemoryBusConfig, Subscription};

const WAIT: Duration = Duration::from_secs(2);

async fn next(sub: &mut Subscription) -> Bytes {
    tokio::time::timeout(WAIT, sub.next())
        .await
        .expect("a message within 2 s")
        .expect("the stream has not ended")
        .payload
}

async fn nothing_buffered(sub: &mut Subscription) {
    // Memory delivery is synchronous: what was published is already buffered.
    if let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(20), sub.next()).await {
        panic!("unexpected message {:?}", m.payload);
    }
}

fn n(i: u32) -> Bytes {
    Bytes::from(i.to_be_bytes().to_vec())
}

#[tokio::test]
async fn slow_consumer_loses_messages_beyond_its_capacity_and_they_are_counted() {
    let bus = MemoryBus::with_config(MemoryBusConfig::default().with_subscription_capacity(4));
    let mut slow = bus.subscribe("ev", None).await.unwrap();
    let mut other = bus.subscribe("ev", None).await.unwrap();
    for i in 0..10 {
        bus.publish("ev", n(i)).await.unwrap();
        // `other` keeps up.
        assert_eq!(next(&mut other).await, n(i));
    }
    assert_eq!(slow.dropped(), Some(6));
    assert_eq!(other.dropped(), Some(0));
    assert_eq!(bus.dropped_messages(), 6);
    // The oldest four were kept, in order; the newer ones were dropped.
    for i in 0..4 {
        assert_eq!(next(&mut slow).await, n(i));
    }
    nothing_buffered(&mut slow).await;
    // With room again, delivery resumes.
    bus.publish("ev", n(99)).await.unwrap();
    assert_eq!(next(&mut slow).await, n(99));
    assert_eq!(slow.dropped(), Some(6));
}

#[tokio::test]
async fn buffers_are_bounded_in_bytes_too() {
    let bus =
        MemoryBus::with_config(MemoryBusConfig::default().with_subscription_bytes_capacity(1000));
    let mut sub = bus.subscribe("big", None).await.unwrap();
    let chunk = Bytes::from(vec![7u8; 400]);
    for _ in 0..3 {
        bus.publish("big", chunk.clone()).await.unwrap();
    }
    // 400 + 400 fit in 1000 bytes, the third does not.
    assert_eq!(sub.dropped(), Some(1));
    assert_eq!(next(&mut sub).await.len(), 400);
    // Reading frees its bytes: another one fits now.
    bus.publish("big", chunk.clone()).await.unwrap();
    assert_eq!(sub.dropped(), Some(1));
    assert_eq!(next(&mut sub).await.len(), 400);
    assert_eq!(next(&mut sub).await.len(), 400);
    nothing_buffered(&mut sub).await;
}

#[tokio::test]
async fn payload_limit_is_enforced() {
    let bus = MemoryBus::with_config(MemoryBusConfig::default().with_max_payload(16));
    assert_eq!(bus.max_payload(), Some(16));
    let _sub = bus.subscribe("p", None).await.unwrap();
    bus.publish("p", Bytes::from(vec![0; 16])).await.unwrap();
    match bus.publish("p", Bytes::from(vec![0; 17])).await {
        Err(BusError::PayloadTooLarge { size: 17, max: 16 }) => {}
        other => panic!("{other:?}"),
    }
    match bus
        .request("p", Bytes::from(vec![0; 17]), Duration::from_millis(10))
        .await
    {
        Err(BusError::PayloadTooLarge { .. }) => {}
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn queue_group_members_take_turns() {
    let bus = MemoryBus::new();
    let mut members = Vec::new();
    for _ in 0..3 {
        members.push(bus.subscribe("job", Some("workers")).await.unwrap());
    }
    for i in 0..30 {
        bus.publish("job", n(i)).await.unwrap();
    }
    for member in &mut members {
        let mut got = 0;
        while let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(20), member.next()).await
        {
            got += 1;
        }
        assert_eq!(got, 10, "round robin gives each of 3 members 10 of 30");
    }
}

#[tokio::test]
async fn queue_group_skips_a_full_member_and_drops_only_when_all_are_full() {
    let bus = MemoryBus::with_config(MemoryBusConfig::default().with_subscription_capacity(1));
    let mut a = bus.subscribe("job", Some("g")).await.unwrap();
    let mut b = bus.subscribe("job", Some("g")).await.unwrap();
    // Turns go a, b, a, b, ...
    // 0 -> a; 1 -> b; 2 -> a's turn, a full, b full: dropped.
    for i in 0..3 {
        bus.publish("job", n(i)).await.unwrap();
    }
    assert_eq!(bus.dropped_messages(), 1);
    assert_eq!(next(&mut a).await, n(0));
    assert_eq!(next(&mut b).await, n(1));
    // 3 -> b; 4 -> a; 5 -> b's turn, both full: dropped.
    for i in 3..6 {
        bus.publish("job", n(i)).await.unwrap();
    }
    assert_eq!(bus.dropped_messages(), 2);
    assert_eq!(
        a.dropped(),
        Some(1),
        "counted on the member whose turn it was"
    );
    assert_eq!(b.dropped(), Some(1));
    assert_eq!(next(&mut a).await, n(4));
    assert_eq!(next(&mut b).await, n(3));
    // 6 -> a; 7 -> b; b reads; 8 -> a's turn, a full: skipped, b gets it.
    bus.publish("job", n(6)).await.unwrap();
    bus.publish("job", n(7)).await.unwrap();
    assert_eq!(next(&mut b).await, n(7));
    bus.publish("job", n(8)).await.unwrap();
    assert_eq!(bus.dropped_messages(), 2, "a free member was found");
    assert_eq!(next(&mut a).await, n(6));
    assert_eq!(next(&mut b).await, n(8));
    nothing_buffered(&mut a).await;
    nothing_buffered(&mut b).await;
}

#[tokio::test]
async fn queue_groups_are_grouped_by_name_across_filters() {
    // As in the NATS server: members of one queue name on different matching
    // filters still form one group.
    let bus = MemoryBus::new();
    let mut exact = bus.subscribe("a.b", Some("g")).await.unwrap();
    let mut wild = bus.subscribe("a.*", Some("g")).await.unwrap();
    let mut other_group = bus.subscribe("a.>", Some("h")).await.unwrap();
    for i in 0..10 {
        bus.publish("a.b", n(i)).await.unwrap();
    }
    let mut count = 0;
    for sub in [&mut exact, &mut wild] {
        while let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(20), sub.next()).await {
            count += 1;
        }
    }
    assert_eq!(count, 10, "group g gets each message once");
    for i in 0..10 {
        assert_eq!(next(&mut other_group).await, n(i));
    }
}

#[tokio::test]
async fn clones_share_subscriptions_and_dropping_unsubscribes() {
    let bus = MemoryBus::new();
    let clone = bus.clone();
    let mut sub = clone.subscribe("x.>", None).await.unwrap();
    assert_eq!(bus.subscription_count(), 1);
    bus.publish("x.y", Bytes::from_static(b"1")).await.unwrap();
    assert_eq!(next(&mut sub).await, "1");
    drop(sub);
    assert_eq!(bus.subscription_count(), 0);
    // Nobody listens: requests find no responders, publishes vanish.
    bus.publish("x.y", Bytes::from_static(b"2")).await.unwrap();
    assert!(
        bus.request("x.y", Bytes::new(), WAIT)
            .await
            .unwrap_err()
            .is_no_responders()
    );
}

#[tokio::test]
async fn streams_end_when_the_bus_is_gone() {
    let bus = MemoryBus::new();
    let mut sub = bus.subscribe("x", None).await.unwrap();
    bus.publish("x", Bytes::from_static(b"last")).await.unwrap();
    drop(bus);
    // What was buffered is still there, then the stream ends.
    assert_eq!(next(&mut sub).await, "last");
    assert!(sub.next().await.is_none());
}

#[tokio::test]
async fn each_publisher_keeps_its_order_under_concurrency() {
    let bus = MemoryBus::new();
    let mut sub = bus.subscribe("c.*", None).await.unwrap();
    let publishers: Vec<_> = (0..4u32)
        .map(|p| {
            let bus = bus.clone();
            tokio::spawn(async move {
                for i in 0..500u32 {
                    bus.publish(&format!("c.p{p}"), n(i)).await.unwrap();
                }
            })
        })
        .collect();
    for p in publishers {
        p.await.unwrap();
    }
    let mut next_expected = [0u32; 4];
    for _ in 0..2000 {
        let m = tokio::time::timeout(WAIT, sub.next())
            .await
            .unwrap()
            .unwrap();
        let p: usize = m.subject["c.p".len()..].parse().unwrap();
        assert_eq!(m.payload, n(next_expected[p]), "publisher {p} out of order");
        next_expected[p] += 1;
    }
    assert_eq!(next_expected, [500; 4]);
}

#[tokio::test]
async fn the_bus_is_usable_as_a_trait_object() {
    let bus: std::sync::Arc<dyn Bus> = std::sync::Arc::new(MemoryBus::new());
    let mut sub = bus.subscribe("t", None).await.unwrap();
    assert_eq!(sub.subject_filter(), "t");
    assert_eq!(sub.queue_group(), None);
    let inbox = bus.new_inbox();
    assert!(inbox.starts_with("_INBOX."));
    assert_ne!(inbox, bus.new_inbox());
    bus.publish_with_reply("t", &inbox, Bytes::from_static(b"q"))
        .await
        .unwrap();
    let m = next_message(&mut sub).await;
    assert_eq!(m.reply_to.as_deref(), Some(inbox.as_str()));
}

async fn next_message(sub: &mut Subscription) -> kaa_bus::Message {
    tokio::time::timeout(WAIT, sub.next())
        .await
        .unwrap()
        .unwrap()
}
