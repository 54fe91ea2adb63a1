//! The in-memory bus: the embedded default for a one-process Kaa stack.
//!
//! [`MemoryBus`] follows NATS core semantics without a server:
//!
//! - Filters match with NATS rules (`*` one token, final `>` one or more tokens;
//!   [`kaa_ism::subject::filter_matches`]).
//! - Every matching subscription without a queue group gets its own copy of a
//!   message. Matching subscriptions with a queue group are grouped by the group name
//!   (across filters, as the NATS server does) and each group gets exactly one copy,
//!   handed to its members in turn (round robin).
//! - Dropping a [`Subscription`] (or [`Subscription::unsubscribe`]) removes it before
//!   the next publish; nothing is delivered to it afterwards.
//! - [`Bus::request`] subscribes a fresh `_INBOX.…` subject, publishes with it as the
//!   `replyTo`, and returns the first reply. A request to a subject with no matching
//!   subscription fails at once with [`BusError::NoResponders`], as NATS does.
//! - Publishing never waits for subscribers. Messages from one publisher on one
//!   subject arrive at each subscription in order.
//!
//! ## Overflow policy: slow consumers lose messages
//!
//! Each subscription has a bounded buffer, limited both in messages
//! ([`MemoryBusConfig::subscription_capacity`]) and in payload bytes
//! ([`MemoryBusConfig::subscription_bytes_capacity`]). When a message does not fit,
//! it is **dropped for that subscription** (NATS drops messages for slow consumers
//! too) and counted: per subscription ([`Subscription::dropped`]) and for the whole
//! bus ([`MemoryBus::dropped_messages`]); the first drop on a subscription is logged
//! as a warning. For a queue group, a member whose buffer is full is skipped and the
//! next member in turn gets the message; only when every member is full is the
//! message dropped (and counted on the member whose turn it was). Memory use is thus
//! bounded by the subscriptions' capacities, never by how fast publishers are.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{
        Arc, Mutex, MutexGuard, PoisonError, Weak,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use async_trait::async_trait;
use bytes::Bytes;
use kaa_ism::subject::filter_matches;
use tokio::sync::mpsc;

use crate::{
    Bus, BusError, Message, Subscription, validate_filter, validate_queue_group, validate_subject,
};

/// Limits of a [`MemoryBus`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct MemoryBusConfig {
    /// Messages one subscription buffers before further messages are dropped for it.
    /// Default 65 536 (async-nats's default subscription capacity).
    pub subscription_capacity: usize,
    /// Payload bytes one subscription buffers before further messages are dropped
    /// for it. Default 64 MiB (the NATS Go client's pending-bytes limit).
    pub subscription_bytes_capacity: usize,
    /// The largest payload accepted by publish. Default 1 MiB (the NATS server's
    /// default `max_payload`).
    pub max_payload: usize,
}

impl Default for MemoryBusConfig {
    fn default() -> Self {
        MemoryBusConfig {
            subscription_capacity: 64 * 1024,
            subscription_bytes_capacity: 64 * 1024 * 1024,
            max_payload: 1024 * 1024,
        }
    }
}

impl MemoryBusConfig {
    /// Sets [`MemoryBusConfig::subscription_capacity`] (at least 1).
    pub fn with_subscription_capacity(mut self, messages: usize) -> Self {
        self.subscription_capacity = messages.max(1);
        self
    }

    /// Sets [`MemoryBusConfig::subscription_bytes_capacity`].
    pub fn with_subscription_bytes_capacity(mut self, bytes: usize) -> Self {
        self.subscription_bytes_capacity = bytes;
        self
    }

    /// Sets [`MemoryBusConfig::max_payload`].
    pub fn with_max_payload(mut self, bytes: usize) -> Self {
        self.max_payload = bytes;
        self
    }
}

/// The in-memory bus. Cheap to clone; clones share the same subscriptions.
///
/// See the [module docs](self) for its semantics and overflow policy.
#[derive(Debug, Clone)]
pub struct MemoryBus {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    config: MemoryBusConfig,
    state: Mutex<State>,
    /// Distinguishes this bus's inboxes from another bus's in the same process.
    inbox_prefix: String,
    next_inbox: AtomicU64,
    dropped: AtomicU64,
}

#[derive(Debug, Default)]
struct State {
    next_id: u64,
    /// By subscription ID, so that queue-group turns follow subscription order.
    subscriptions: BTreeMap<u64, Entry>,
    /// Round-robin position of each queue group.
    queue_turns: HashMap<String, usize>,
}

#[derive(Debug)]
struct Entry {
    filter: String,
    queue_group: Option<String>,
    sender: mpsc::Sender<Message>,
    counters: Arc<Counters>,
    /// Inbox subscriptions of `request` take only the first reply; extra replies are
    /// not slow-consumer drops.
    count_drops: bool,
}

#[derive(Debug, Default)]
struct Counters {
    pending_bytes: AtomicUsize,
    dropped: AtomicU64,
}

/// What one publish did.
#[derive(Debug, Default, Clone, Copy)]
struct Outcome {
    /// Subscriptions whose filter matched (interest, as NATS counts it).
    matched: usize,
}

impl Default for MemoryBus {
    fn default() -> Self {
        MemoryBus::new()
    }
}

static NEXT_BUS: AtomicU64 = AtomicU64::new(1);

impl MemoryBus {
    /// A bus with the default limits.
    pub fn new() -> Self {
        MemoryBus::with_config(MemoryBusConfig::default())
    }

    /// A bus with the given limits.
    pub fn with_config(config: MemoryBusConfig) -> Self {
        let bus = NEXT_BUS.fetch_add(1, Ordering::Relaxed);
        MemoryBus {
            shared: Arc::new(Shared {
                config,
                state: Mutex::new(State::default()),
                inbox_prefix: format!("_INBOX.mem{}-{bus}", std::process::id()),
                next_inbox: AtomicU64::new(1),
                dropped: AtomicU64::new(0),
            }),
        }
    }

    /// The limits this bus was built with.
    pub fn config(&self) -> &MemoryBusConfig {
        &self.shared.config
    }

    /// Messages dropped so far on this bus because a subscription's buffer was full.
    pub fn dropped_messages(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    /// Live subscriptions on this bus, including `request`'s temporary inboxes.
    pub fn subscription_count(&self) -> usize {
        self.shared.lock().subscriptions.len()
    }

    fn subscribe_entry(
        &self,
        filter: &str,
        queue_group: Option<&str>,
        capacity: usize,
        count_drops: bool,
    ) -> MemorySubscriber {
        let (sender, receiver) = mpsc::channel(capacity.max(1));
        let counters = Arc::new(Counters::default());
        let mut state = self.shared.lock();
        let id = state.next_id;
        state.next_id += 1;
        state.subscriptions.insert(
            id,
            Entry {
                filter: filter.to_owned(),
                queue_group: queue_group.map(str::to_owned),
                sender,
                counters: Arc::clone(&counters),
                count_drops,
            },
        );
        MemorySubscriber {
            _guard: Guard {
                shared: Arc::downgrade(&self.shared),
                id,
            },
            receiver,
            counters,
        }
    }

    fn publish_inner(
        &self,
        subject: &str,
        reply_to: Option<&str>,
        payload: Bytes,
    ) -> Result<Outcome, BusError> {
        validate_subject(subject)?;
        if let Some(reply_to) = reply_to {
            validate_subject(reply_to)?;
        }
        let max = self.shared.config.max_payload;
        if payload.len() > max {
            return Err(BusError::PayloadTooLarge {
                size: payload.len(),
                max,
            });
        }
        let message = Message {
            subject: subject.into(),
            reply_to: reply_to.map(Into::into),
            payload,
            no_responders: false,
        };
        let bytes_capacity = self.shared.config.subscription_bytes_capacity;

        let mut state = self.shared.lock();
        let State {
            subscriptions,
            queue_turns,
            ..
        } = &mut *state;
        let mut outcome = Outcome::default();
        // Queue group name -> matching members, in subscription order.
        let mut groups: Vec<(&str, Vec<&Entry>)> = Vec::new();
        for entry in subscriptions
            .values()
            .filter(|e| filter_matches(&e.filter, subject))
        {
            outcome.matched += 1;
            match &entry.queue_group {
                None => {
                    if !entry.offer(&message, bytes_capacity) {
                        self.shared.count_drop(entry, subject);
                    }
                }
                Some(group) => match groups.iter_mut().find(|(g, _)| *g == group.as_str()) {
                    Some((_, members)) => members.push(entry),
                    None => groups.push((group.as_str(), vec![entry])),
                },
            }
        }
        for (group, members) in groups {
            let first = match queue_turns.get_mut(group) {
                Some(turn) => {
                    let first = *turn % members.len();
                    *turn = turn.wrapping_add(1);
                    first
                }
                None => {
                    queue_turns.insert(group.to_owned(), 1);
                    0
                }
            };
            let delivered = (0..members.len())
                .map(|i| members[(first + i) % members.len()])
                .any(|member| member.offer(&message, bytes_capacity));
            if !delivered {
                self.shared.count_drop(members[first], subject);
            }
        }
        Ok(outcome)
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing panics while holding the lock; if something ever did, the state is
        // still consistent (every update is a single insert or remove).
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn count_drop(&self, entry: &Entry, subject: &str) {
        if !entry.count_drops {
            return;
        }
        let before = entry.counters.dropped.fetch_add(1, Ordering::Relaxed);
        self.dropped.fetch_add(1, Ordering::Relaxed);
        if before == 0 {
            tracing::warn!(
                filter = %entry.filter,
                queue_group = ?entry.queue_group,
                subject,
                "slow consumer: subscription buffer full, dropping messages"
            );
        }
    }
}

impl Entry {
    /// Puts a copy of `message` into this subscription's buffer if it fits.
    fn offer(&self, message: &Message, bytes_capacity: usize) -> bool {
        let len = message.payload.len();
        let pending = self.counters.pending_bytes.load(Ordering::Acquire);
        if pending.saturating_add(len) > bytes_capacity {
            return false;
        }
        // Publishers hold the state lock, so only receivers change the count meanwhile,
        // and they only lower it.
        self.counters.pending_bytes.fetch_add(len, Ordering::AcqRel);
        match self.sender.try_send(message.clone()) {
            Ok(()) => true,
            Err(_) => {
                self.counters.pending_bytes.fetch_sub(len, Ordering::AcqRel);
                false
            }
        }
    }
}

/// The receiving half of a [`MemoryBus`] subscription.
pub(crate) struct MemorySubscriber {
    // Declared first so that the interest is removed before the buffer goes.
    _guard: Guard,
    receiver: mpsc::Receiver<Message>,
    counters: Arc<Counters>,
}

impl MemorySubscriber {
    pub(crate) fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<Message>> {
        let polled = self.receiver.poll_recv(cx);
        if let Poll::Ready(Some(message)) = &polled {
            self.counters
                .pending_bytes
                .fetch_sub(message.payload.len(), Ordering::AcqRel);
        }
        polled
    }

    pub(crate) fn dropped(&self) -> u64 {
        self.counters.dropped.load(Ordering::Relaxed)
    }

    async fn recv(&mut self) -> Option<Message> {
        futures::future::poll_fn(|cx| self.poll_recv(cx)).await
    }
}

struct Guard {
    shared: Weak<Shared>,
    id: u64,
}

impl Drop for Guard {
    fn drop(&mut self) {
        let Some(shared) = self.shared.upgrade() else {
            return;
        };
        let mut state = shared.lock();
        let Some(entry) = state.subscriptions.remove(&self.id) else {
            return;
        };
        // Forget the round-robin position of a queue group with no members left.
        if let Some(group) = entry.queue_group
            && !state
                .subscriptions
                .values()
                .any(|e| e.queue_group.as_deref() == Some(group.as_str()))
        {
            state.queue_turns.remove(&group);
        }
    }
}

#[async_trait]
impl Bus for MemoryBus {
    async fn publish_message(
        &self,
        subject: &str,
        reply_to: Option<&str>,
        payload: Bytes,
    ) -> Result<(), BusError> {
        self.publish_inner(subject, reply_to, payload).map(|_| ())
    }

    async fn subscribe(
        &self,
        filter: &str,
        queue_group: Option<&str>,
    ) -> Result<Subscription, BusError> {
        validate_filter(filter)?;
        if let Some(group) = queue_group {
            validate_queue_group(group)?;
        }
        let subscriber = self.subscribe_entry(
            filter,
            queue_group,
            self.shared.config.subscription_capacity,
            true,
        );
        Ok(Subscription::memory(filter, queue_group, subscriber))
    }

    async fn request(
        &self,
        subject: &str,
        payload: Bytes,
        timeout: Duration,
    ) -> Result<Message, BusError> {
        validate_subject(subject)?;
        let inbox = self.new_inbox();
        // The first reply is all a request takes.
        let mut replies = self.subscribe_entry(&inbox, None, 1, false);
        let outcome = self.publish_inner(subject, Some(&inbox), payload)?;
        if outcome.matched == 0 {
            return Err(BusError::NoResponders {
                subject: subject.to_owned(),
            });
        }
        match tokio::time::timeout(timeout, replies.recv()).await {
            Ok(Some(reply)) => Ok(reply),
            // The inbox sender lives in the bus state until `replies` is dropped.
            Ok(None) => Err(BusError::Closed),
            Err(_) => Err(BusError::Timeout {
                subject: subject.to_owned(),
                timeout,
            }),
        }
    }

    async fn flush(&self) -> Result<(), BusError> {
        // Publish hands messages to the subscribers' buffers before it returns.
        Ok(())
    }

    fn new_inbox(&self) -> String {
        let n = self.shared.next_inbox.fetch_add(1, Ordering::Relaxed);
        format!("{}.{n}", self.shared.inbox_prefix)
    }

    fn max_payload(&self) -> Option<usize> {
        Some(self.shared.config.max_payload)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn unsubscribe_removes_state_and_queue_turns() {
        block_on(async {
            let bus = MemoryBus::new();
            let a = bus.subscribe("a.b", Some("g")).await.unwrap();
            let b = bus.subscribe("a.*", Some("g")).await.unwrap();
            bus.publish("a.b", Bytes::new()).await.unwrap();
            assert_eq!(bus.subscription_count(), 2);
            assert_eq!(bus.shared.lock().queue_turns.len(), 1);
            drop(a);
            assert_eq!(bus.shared.lock().queue_turns.len(), 1);
            drop(b);
            assert_eq!(bus.subscription_count(), 0);
            assert!(bus.shared.lock().queue_turns.is_empty());
        });
    }

    #[test]
    fn request_inbox_is_removed_after_the_reply_and_after_a_timeout() {
        block_on(async {
            let bus = MemoryBus::new();
            let mut sub = bus.subscribe("svc", None).await.unwrap();
            let err = bus
                .request("svc", Bytes::new(), Duration::from_millis(10))
                .await
                .unwrap_err();
            assert!(err.is_timeout(), "{err}");
            // Only `sub` remains.
            assert_eq!(bus.subscription_count(), 1);
            let request = sub.next().await.unwrap();
            assert!(request.reply_to.unwrap().starts_with("_INBOX.mem"));
        });
    }

    #[test]
    fn pending_bytes_go_back_down_when_received() {
        block_on(async {
            let bus = MemoryBus::with_config(
                MemoryBusConfig::default().with_subscription_bytes_capacity(10),
            );
            let mut sub = bus.subscribe("s", None).await.unwrap();
            for _ in 0..10 {
                bus.publish("s", Bytes::from_static(b"12345678"))
                    .await
                    .unwrap();
                assert_eq!(sub.next().await.unwrap().payload.len(), 8);
            }
            assert_eq!(sub.dropped(), Some(0));
        });
    }

    #[test]
    fn extra_replies_are_not_counted_as_drops() {
        block_on(async {
            let bus = MemoryBus::new();
            let mut svc_a = bus.subscribe("svc", None).await.unwrap();
            let mut svc_b = bus.subscribe("svc", None).await.unwrap();
            let requester = {
                let bus = bus.clone();
                tokio::spawn(async move {
                    bus.request("svc", Bytes::new(), Duration::from_secs(5))
                        .await
                })
            };
            let ra = svc_a.next().await.unwrap();
            let rb = svc_b.next().await.unwrap();
            for (r, body) in [(ra, "a"), (rb, "b")] {
                bus.publish(r.reply_to.as_deref().unwrap(), Bytes::from(body))
                    .await
                    .unwrap();
            }
            let reply = requester.await.unwrap().unwrap();
            assert_eq!(reply.payload, "a");
            assert_eq!(bus.dropped_messages(), 0);
        });
    }
}
