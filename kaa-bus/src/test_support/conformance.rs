//! The bus conformance suite: one set of generic checks every [`Bus`] implementation
//! must pass, so that the in-memory bus and NATS behave the same.
//!
//! Each check takes an `Arc<dyn Bus>`, uses subjects unique to the call (so runs on
//! a shared NATS server do not see each other), and panics with a description of
//! what broke. Run them all with [`run_all`], or one by one from a test per check
//! (as this crate's `tests/conformance.rs` does for both buses):
//!
//! ```
//! use std::sync::Arc;
//! use kaa_bus::{Bus, MemoryBus, test_support::conformance};
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(async {
//! let bus: Arc<dyn Bus> = Arc::new(MemoryBus::new());
//! conformance::wildcards(bus.clone()).await;
//! conformance::queue_group_single_delivery(bus).await;
//! # });
//! # Ok::<(), std::io::Error>(())
//! ```

use std::{
    collections::HashSet,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use bytes::Bytes;
use futures::{StreamExt, stream::select_all};

use crate::{Bus, BusError, Message, Subscription};

/// How long a check waits for a message that must arrive.
pub const RECEIVE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a check watches for a message that must not arrive.
pub const QUIET_PERIOD: Duration = Duration::from_millis(150);

/// The names of the checks, in the order [`run_all`] runs them.
pub const CHECKS: &[&str] = &[
    "publish_subscribe",
    "wildcards",
    "queue_group_single_delivery",
    "no_delivery_after_unsubscribe",
    "request_reply",
    "request_timeout",
    "no_responders",
    "reply_to_carried",
    "large_payload",
    "ordering",
    "invalid_names",
];

/// Runs every check in turn.
pub async fn run_all(bus: Arc<dyn Bus>) {
    publish_subscribe(bus.clone()).await;
    wildcards(bus.clone()).await;
    queue_group_single_delivery(bus.clone()).await;
    no_delivery_after_unsubscribe(bus.clone()).await;
    request_reply(bus.clone()).await;
    request_timeout(bus.clone()).await;
    no_responders(bus.clone()).await;
    reply_to_carried(bus.clone()).await;
    large_payload(bus.clone()).await;
    ordering(bus.clone()).await;
    invalid_names(bus).await;
}

/// A subject prefix unique to this call: `kaa-bus-test.<pid>-<nanos>-<n>.<name>`.
pub fn unique_subject(name: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!(
        "kaa-bus-test.{}-{nanos}-{}.{name}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// The next message of `sub`, or a panic naming `what` after [`RECEIVE_TIMEOUT`].
pub async fn receive(sub: &mut Subscription, what: &str) -> Message {
    match tokio::time::timeout(RECEIVE_TIMEOUT, sub.next()).await {
        Ok(Some(message)) => message,
        Ok(None) => panic!("{what}: subscription {} ended", sub.subject_filter()),
        Err(_) => panic!(
            "{what}: nothing received on {} within {RECEIVE_TIMEOUT:?}",
            sub.subject_filter()
        ),
    }
}

/// Panics if `sub` yields a message within [`QUIET_PERIOD`].
pub async fn assert_quiet(sub: &mut Subscription, what: &str) {
    if let Ok(Some(message)) = tokio::time::timeout(QUIET_PERIOD, sub.next()).await {
        panic!(
            "{what}: unexpected message on {}: {:?}",
            sub.subject_filter(),
            message.subject
        );
    }
}

async fn subscribe(bus: &dyn Bus, filter: &str, queue_group: Option<&str>) -> Subscription {
    match bus.subscribe(filter, queue_group).await {
        Ok(sub) => sub,
        Err(e) => panic!("subscribe {filter:?} (queue {queue_group:?}): {e}"),
    }
}

async fn publish(bus: &dyn Bus, subject: &str, payload: impl Into<Bytes>) {
    if let Err(e) = bus.publish(subject, payload.into()).await {
        panic!("publish {subject:?}: {e}");
    }
}

async fn flush(bus: &dyn Bus) {
    if let Err(e) = bus.flush().await {
        panic!("flush: {e}");
    }
}

/// A responder task: answers every request on `subject` with `answer(request)`.
fn spawn_responder(
    bus: Arc<dyn Bus>,
    mut sub: Subscription,
    answer: impl Fn(&Message) -> Bytes + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while let Some(request) = sub.next().await {
            if let Some(reply_to) = &request.reply_to {
                // A reply that cannot be sent shows up as the requester's timeout.
                let _ = bus.publish(reply_to, answer(&request)).await;
            }
        }
    })
}

/// Publish/subscribe: every subscriber gets its own copy, with the subject and
/// payload as published and no reply subject; other subjects are not delivered.
pub async fn publish_subscribe(bus: Arc<dyn Bus>) {
    let base = unique_subject("pubsub");
    let subject = format!("{base}.a");
    let mut first = subscribe(&*bus, &subject, None).await;
    let mut second = subscribe(&*bus, &subject, None).await;
    flush(&*bus).await;

    publish(&*bus, &format!("{base}.b"), "other subject").await;
    publish(&*bus, &subject, "hello").await;
    flush(&*bus).await;

    for sub in [&mut first, &mut second] {
        let m = receive(sub, "publish_subscribe").await;
        assert_eq!(m.subject, subject, "publish_subscribe: subject");
        assert_eq!(m.payload, "hello", "publish_subscribe: payload");
        assert_eq!(m.reply_to, None, "publish_subscribe: reply_to");
        assert_quiet(sub, "publish_subscribe").await;
    }
}

/// Wildcards: `*` matches exactly one token, a final `>` one or more tokens.
pub async fn wildcards(bus: Arc<dyn Bus>) {
    let base = unique_subject("wild");
    let mut star = subscribe(&*bus, &format!("{base}.*.c"), None).await;
    let mut tail = subscribe(&*bus, &format!("{base}.x.>"), None).await;
    let mut both = subscribe(&*bus, &format!("{base}.*.>"), None).await;
    flush(&*bus).await;

    let published = [
        "x.c",     // star, tail, both
        "x.d",     // tail, both
        "y.c",     // star, both
        "x.c.d",   // tail, both (not star: one token too many)
        "c",       // nobody: `*` needs a token, `>` needs at least one
        "x",       // nobody: `x.>` needs a token after x
        "y.d.e.f", // both
    ];
    for suffix in published {
        publish(&*bus, &format!("{base}.{suffix}"), suffix.to_owned()).await;
    }
    flush(&*bus).await;

    for (sub, expected) in [
        (&mut star, &["x.c", "y.c"][..]),
        (&mut tail, &["x.c", "x.d", "x.c.d"][..]),
        (&mut both, &["x.c", "x.d", "y.c", "x.c.d", "y.d.e.f"][..]),
    ] {
        let what = format!("wildcards ({})", sub.subject_filter());
        for suffix in expected {
            let m = receive(sub, &what).await;
            assert_eq!(m.subject, format!("{base}.{suffix}"), "{what}");
        }
        assert_quiet(sub, &what).await;
    }
}

/// Queue groups: each message reaches exactly one member of each group (by name),
/// members share the load, and a subscriber outside the group gets every message.
pub async fn queue_group_single_delivery(bus: Arc<dyn Bus>) {
    const MEMBERS: usize = 4;
    const MESSAGES: usize = 200;
    let subject = unique_subject("queue");
    let mut workers = Vec::new();
    for _ in 0..MEMBERS {
        workers.push(subscribe(&*bus, &subject, Some("workers")).await);
    }
    let mut auditors = Vec::new();
    for _ in 0..2 {
        auditors.push(subscribe(&*bus, &subject, Some("auditors")).await);
    }
    let mut plain = subscribe(&*bus, &subject, None).await;
    flush(&*bus).await;

    for i in 0..MESSAGES {
        publish(
            &*bus,
            &subject,
            Bytes::from((i as u32).to_be_bytes().to_vec()),
        )
        .await;
    }
    flush(&*bus).await;

    for (group, members) in [("workers", workers), ("auditors", auditors)] {
        let count = members.len();
        let mut merged = select_all(
            members
                .into_iter()
                .enumerate()
                .map(|(i, s)| s.map(move |m| (i, m))),
        );
        let mut seen = HashSet::new();
        let mut per_member = vec![0usize; count];
        let deadline = Instant::now() + RECEIVE_TIMEOUT;
        while seen.len() < MESSAGES {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, merged.next()).await {
                Ok(Some((member, m))) => {
                    per_member[member] += 1;
                    assert!(
                        seen.insert(m.payload.clone()),
                        "queue group {group}: message {:?} delivered twice",
                        m.payload
                    );
                }
                _ => panic!(
                    "queue group {group}: {} of {MESSAGES} messages arrived",
                    seen.len()
                ),
            }
        }
        if let Ok(Some((member, m))) = tokio::time::timeout(QUIET_PERIOD, merged.next()).await {
            panic!(
                "queue group {group}: extra delivery to member {member}: {:?}",
                m.payload
            );
        }
        assert!(
            per_member.iter().all(|&n| n > 0),
            "queue group {group}: a member got nothing: {per_member:?}"
        );
    }

    for i in 0..MESSAGES {
        let m = receive(&mut plain, "queue group: plain subscriber").await;
        assert_eq!(
            m.payload,
            Bytes::from((i as u32).to_be_bytes().to_vec()),
            "queue group: plain subscriber gets every message in order"
        );
    }
    assert_quiet(&mut plain, "queue group: plain subscriber").await;
}

/// Unsubscribing, by drop or explicitly, ends the interest: nothing is delivered
/// afterwards (not even what was buffered), and a request to a subject whose only
/// subscriber is gone finds no responders.
pub async fn no_delivery_after_unsubscribe(bus: Arc<dyn Bus>) {
    let base = unique_subject("unsub");
    let dropped_subject = format!("{base}.dropped");
    let explicit_subject = format!("{base}.explicit");

    let dropped = subscribe(&*bus, &dropped_subject, None).await;
    let mut explicit = subscribe(&*bus, &explicit_subject, None).await;
    let mut control = subscribe(&*bus, &format!("{base}.*"), None).await;
    flush(&*bus).await;

    // Buffered but never read: gone with the unsubscribe.
    publish(&*bus, &explicit_subject, "buffered").await;
    flush(&*bus).await;
    assert_eq!(
        receive(&mut control, "unsubscribe: control").await.payload,
        "buffered"
    );

    drop(dropped);
    if let Err(e) = explicit.unsubscribe().await {
        panic!("unsubscribe: {e}");
    }
    // Unsubscribing twice is harmless.
    if let Err(e) = explicit.unsubscribe().await {
        panic!("second unsubscribe: {e}");
    }
    flush(&*bus).await;

    publish(&*bus, &explicit_subject, "after").await;
    publish(&*bus, &dropped_subject, "after").await;
    flush(&*bus).await;

    assert!(
        explicit.next().await.is_none(),
        "unsubscribe: the stream yields nothing after unsubscribe"
    );
    // The control subscription still works, so the publishes did go out.
    for subject in [&explicit_subject, &dropped_subject] {
        assert_eq!(
            &receive(&mut control, "unsubscribe: control").await.subject,
            subject
        );
    }
    // And the bus knows nobody listens any more.
    drop(control);
    flush(&*bus).await;
    for subject in [&explicit_subject, &dropped_subject] {
        match bus
            .request(subject, Bytes::new(), Duration::from_secs(2))
            .await
        {
            Err(BusError::NoResponders { .. }) => {}
            other => panic!("unsubscribe: request to {subject} after unsubscribe: {other:?}"),
        }
    }
}

/// Request/reply: the responder sees a fresh reply inbox per request, the requester
/// gets the reply sent to it.
pub async fn request_reply(bus: Arc<dyn Bus>) {
    let subject = unique_subject("request");
    let sub = subscribe(&*bus, &subject, Some("responders")).await;
    flush(&*bus).await;
    let responder = spawn_responder(bus.clone(), sub, |request| {
        let mut answer = b"re: ".to_vec();
        answer.extend_from_slice(&request.payload);
        answer.extend_from_slice(b" via ");
        answer.extend_from_slice(request.reply_to.as_deref().unwrap_or_default().as_bytes());
        Bytes::from(answer)
    });

    let mut inboxes = HashSet::new();
    for i in 0..3 {
        let reply = match bus
            .request(&subject, Bytes::from(format!("q{i}")), RECEIVE_TIMEOUT)
            .await
        {
            Ok(reply) => reply,
            Err(e) => panic!("request_reply: request {i}: {e}"),
        };
        let text = String::from_utf8_lossy(&reply.payload).into_owned();
        let Some(inbox) = text.strip_prefix(&format!("re: q{i} via ")) else {
            panic!("request_reply: unexpected reply {text:?}");
        };
        assert!(
            inbox.starts_with("_INBOX."),
            "request_reply: reply subject {inbox:?} is an inbox"
        );
        assert_eq!(
            reply.subject, inbox,
            "request_reply: the reply arrives on the inbox"
        );
        assert!(
            inboxes.insert(inbox.to_owned()),
            "request_reply: inbox {inbox} reused"
        );
    }
    responder.abort();
}

/// A request nobody answers fails with [`BusError::Timeout`] after its timeout.
pub async fn request_timeout(bus: Arc<dyn Bus>) {
    let subject = unique_subject("silent");
    let mut silent = subscribe(&*bus, &subject, None).await;
    flush(&*bus).await;
    let timeout = Duration::from_millis(300);
    let started = Instant::now();
    match bus
        .request(&subject, Bytes::from_static(b"?"), timeout)
        .await
    {
        Err(BusError::Timeout {
            subject: s,
            timeout: t,
        }) => {
            assert_eq!(s, subject);
            assert_eq!(t, timeout);
        }
        other => panic!("request_timeout: expected a timeout, got {other:?}"),
    }
    assert!(
        started.elapsed() >= timeout,
        "request_timeout: gave up before the timeout"
    );
    // The request did reach the silent subscriber, with a reply subject.
    let request = receive(&mut silent, "request_timeout").await;
    assert!(request.reply_to.is_some(), "request_timeout: reply_to set");
}

/// A request to a subject nobody subscribes to fails with
/// [`BusError::NoResponders`] at once.
pub async fn no_responders(bus: Arc<dyn Bus>) {
    let subject = unique_subject("nobody");
    match bus
        .request(&subject, Bytes::new(), Duration::from_secs(10))
        .await
    {
        Err(e @ BusError::NoResponders { .. }) => assert!(e.is_no_responders()),
        other => panic!("no_responders: expected NoResponders, got {other:?}"),
    }
}

/// The `replyTo` of a publish reaches the subscriber unchanged, and a reply to it
/// reaches a subscription on that subject (3/ISM session affinity: the reply
/// subject is the requesting replica's own subject).
pub async fn reply_to_carried(bus: Arc<dyn Bus>) {
    let base = unique_subject("replyto");
    let request_subject = format!("{base}.service.cdtp.request");
    let replica_subject = format!("{base}.replica.cmx-1.cdtp.response");
    let mut service = subscribe(&*bus, &request_subject, None).await;
    let mut replica = subscribe(&*bus, &replica_subject, None).await;
    flush(&*bus).await;

    if let Err(e) = bus
        .publish_with_reply(
            &request_subject,
            &replica_subject,
            Bytes::from_static(b"req"),
        )
        .await
    {
        panic!("reply_to_carried: publish_with_reply: {e}");
    }
    publish(&*bus, &request_subject, "no reply wanted").await;
    flush(&*bus).await;

    let with = receive(&mut service, "reply_to_carried").await;
    assert_eq!(with.reply_to.as_deref(), Some(replica_subject.as_str()));
    let without = receive(&mut service, "reply_to_carried").await;
    assert_eq!(without.reply_to, None);

    if let Some(reply_to) = &with.reply_to {
        publish(&*bus, reply_to, "resp").await;
    }
    flush(&*bus).await;
    let response = receive(&mut replica, "reply_to_carried: response").await;
    assert_eq!(response.subject, replica_subject);
    assert_eq!(response.payload, "resp");
}

/// A 1 MiB payload goes through publish/subscribe and request/reply intact; a
/// payload above any NATS limit (64 MiB + 1) is refused with
/// [`BusError::PayloadTooLarge`].
pub async fn large_payload(bus: Arc<dyn Bus>) {
    let subject = unique_subject("large");
    let payload: Bytes = (0..1024 * 1024).map(|i: u32| (i % 251) as u8).collect();
    let mut sub = subscribe(&*bus, &subject, None).await;
    flush(&*bus).await;
    publish(&*bus, &subject, payload.clone()).await;
    flush(&*bus).await;
    let m = receive(&mut sub, "large_payload").await;
    assert!(m.payload == payload, "large_payload: 1 MiB payload altered");
    drop(sub);

    let echo_subject = unique_subject("large-echo");
    let echo = subscribe(&*bus, &echo_subject, None).await;
    flush(&*bus).await;
    let responder = spawn_responder(bus.clone(), echo, |request| request.payload.clone());
    match bus
        .request(&echo_subject, payload.clone(), RECEIVE_TIMEOUT)
        .await
    {
        Ok(reply) => assert!(reply.payload == payload, "large_payload: echo altered"),
        Err(e) => panic!("large_payload: request: {e}"),
    }
    responder.abort();

    let too_large = Bytes::from(vec![0u8; 64 * 1024 * 1024 + 1]);
    match bus.publish(&subject, too_large).await {
        Err(BusError::PayloadTooLarge { size, max }) => {
            assert_eq!(size, 64 * 1024 * 1024 + 1);
            assert!(max < size);
        }
        other => panic!("large_payload: expected PayloadTooLarge, got {other:?}"),
    }
}

/// Messages from one publisher on one subject arrive in publish order.
pub async fn ordering(bus: Arc<dyn Bus>) {
    const MESSAGES: u32 = 2_000;
    let subject = unique_subject("order");
    let mut sub = subscribe(&*bus, &subject, None).await;
    flush(&*bus).await;
    for i in 0..MESSAGES {
        publish(&*bus, &subject, Bytes::from(i.to_be_bytes().to_vec())).await;
    }
    flush(&*bus).await;
    for i in 0..MESSAGES {
        let m = receive(&mut sub, "ordering").await;
        assert_eq!(
            m.payload,
            Bytes::from(i.to_be_bytes().to_vec()),
            "ordering: message {i} out of order"
        );
    }
    assert_quiet(&mut sub, "ordering").await;
}

/// Subjects, filters and queue group names that would change the shape of a
/// subject are refused with typed errors, before anything is sent.
pub async fn invalid_names(bus: Arc<dyn Bus>) {
    for subject in ["", "a..b", "a.*", "a.>", "a b", "a.b."] {
        match bus.publish(subject, Bytes::new()).await {
            Err(BusError::InvalidSubject { .. }) => {}
            other => panic!("invalid_names: publish {subject:?}: {other:?}"),
        }
        match bus.request(subject, Bytes::new(), QUIET_PERIOD).await {
            Err(BusError::InvalidSubject { .. }) => {}
            other => panic!("invalid_names: request {subject:?}: {other:?}"),
        }
    }
    match bus.publish_with_reply("a.b", "reply.*", Bytes::new()).await {
        Err(BusError::InvalidSubject { .. }) => {}
        other => panic!("invalid_names: wildcard reply subject: {other:?}"),
    }
    for filter in ["", "a..b", "a.>.b", "a*", "a b"] {
        match bus.subscribe(filter, None).await {
            Err(BusError::InvalidFilter { .. }) => {}
            other => panic!("invalid_names: subscribe {filter:?}: {other:?}"),
        }
    }
    for group in ["", "a b", "a\tb"] {
        match bus.subscribe("a.b", Some(group)).await {
            Err(BusError::InvalidQueueGroup { .. }) => {}
            other => panic!("invalid_names: queue group {group:?}: {other:?}"),
        }
    }
}
