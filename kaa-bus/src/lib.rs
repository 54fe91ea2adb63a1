//! # kaa-bus: the message bus edge for Kaa services
//!
//! Kaa services talk to each other over NATS subjects (3/ISM). This crate is the one
//! place that knows how: a small object-safe async trait, [`Bus`], that services hold
//! as `Arc<dyn Bus>`, and two implementations of it with the same semantics.
//!
//! - [`MemoryBus`]: the embedded default for a one-process stack. No server; follows
//!   NATS core semantics (wildcards, queue groups, reply inboxes, "no responders",
//!   slow-consumer drops with bounded buffers).
//! - [`NatsBus`]: the production engine on async-nats. Server URLs come from the
//!   configuration (Kaa's `nats.urls`), credentials only from the environment
//!   ([`nats::NatsAuth::from_env`]); it reconnects by itself and its subscriptions
//!   survive a reconnect.
//!
//! What the trait offers, in NATS terms:
//!
//! - [`Bus::publish`] / [`Bus::publish_with_reply`] / [`Bus::publish_message`]: publish a
//!   payload, optionally with a `replyTo` subject.
//! - [`Bus::subscribe`]: a filter with `*` (one token) and a final `>` (one or more
//!   tokens), optionally in a queue group. The returned [`Subscription`] is a
//!   [`Stream`] of [`Message`]s; dropping it (or
//!   [`Subscription::unsubscribe`]) ends the interest, and nothing is delivered to it
//!   afterwards. Every non-queue subscriber gets its own copy of a message; each queue
//!   group (by name) gets exactly one copy, delivered to one of its members.
//! - [`Bus::request`]: publish with a fresh reply inbox and wait for the first reply,
//!   or fail with [`BusError::Timeout`] (or [`BusError::NoResponders`] when nobody
//!   subscribes to the subject at all).
//! - [`Bus::flush`]: wait until everything published so far has left this process.
//!
//! Ordering: messages from one publisher on one subject reach each subscription in
//! publish order. A subscription made on a bus is in effect for every publish made
//! on that same bus afterwards. Across processes a `flush` is not enough (it only
//! empties this client's buffer; the server may still be reading the `SUB`s): wait
//! for [`subscription_barrier`] before telling anyone you are ready.
//!
//! ```
//! use std::{sync::Arc, time::Duration};
//! use bytes::Bytes;
//! use futures::StreamExt;
//! use kaa_bus::{Bus, MemoryBus};
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(async {
//! let bus: Arc<dyn Bus> = Arc::new(MemoryBus::new());
//!
//! // ECR replicas answer configuration requests in one queue group.
//! let mut requests = bus
//!     .subscribe("kaa.v1.service.ecr.cdtp.request", Some("ecr"))
//!     .await?;
//! let responder = {
//!     let bus = Arc::clone(&bus);
//!     tokio::spawn(async move {
//!         while let Some(request) = requests.next().await {
//!             if let Some(reply_to) = request.reply_to {
//!                 bus.publish(&reply_to, Bytes::from_static(b"config")).await?;
//!             }
//!         }
//!         Ok::<_, kaa_bus::BusError>(())
//!     })
//! };
//!
//! let reply = bus
//!     .request("kaa.v1.service.ecr.cdtp.request", Bytes::from_static(b"req"), Duration::from_secs(1))
//!     .await?;
//! assert_eq!(reply.payload, "config");
//!
//! // Listeners subscribe with wildcards.
//! let mut events = bus.subscribe("kaa.v1.events.*.endpoint.>", None).await?;
//! bus.publish("kaa.v1.events.kpc.endpoint.connectivity.connected", Bytes::from_static(b"ev")).await?;
//! let event = events.next().await.expect("one event");
//! assert_eq!(event.subject, "kaa.v1.events.kpc.endpoint.connectivity.connected");
//!
//! responder.abort();
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # })?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! With the `test-support` cargo feature the crate also exports `test_support`: the
//! workspace's rule for tests that need a live service (visible `SKIPPED:` lines, or a
//! failure under `KAA_REQUIRE_SERVICES=1`), a private `nats-server` for fault tests,
//! and the bus conformance suite every [`Bus`] implementation must pass.

use std::{
    fmt,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use async_trait::async_trait;
use bytes::Bytes;
use futures::Stream;
use kaa_ism::subject::{SubjectError, SubjectFilter, validate_token};

mod error;
pub mod memory;
pub mod nats;
#[cfg(feature = "test-support")]
pub mod test_support;

pub use error::{BoxError, BusError};
pub use memory::{MemoryBus, MemoryBusConfig};
pub use nats::{NatsBus, NatsConfig};

/// Waits until every subscription made through `bus` so far is in effect for
/// publishers on other connections, at most `timeout`; returns whether it is.
///
/// A NATS flush only writes the client's buffer to the socket; the server may still
/// be reading the `SUB`s when another connection publishes. A message this
/// connection publishes to an inbox of its own comes back only after the server has
/// processed everything the connection sent before it, subscriptions included. On a
/// [`MemoryBus`] subscriptions take effect at once and the round trip is immediate.
///
/// Services call this at the end of start-up, before they report ready.
pub async fn subscription_barrier(
    bus: &dyn Bus,
    timeout: std::time::Duration,
) -> Result<bool, BusError> {
    use futures::StreamExt;
    let inbox = bus.new_inbox();
    let mut echo = bus.subscribe(&inbox, None).await?;
    bus.publish(&inbox, bytes::Bytes::new()).await?;
    bus.flush().await?;
    let confirmed = matches!(
        tokio::time::timeout(timeout, echo.next()).await,
        Ok(Some(_))
    );
    let _ = echo.unsubscribe().await;
    Ok(confirmed)
}

/// A subject as a received [`Message`] carries it: a string (it derefs to
/// `str`) held in shared bytes, so that taking it from the NATS client and
/// cloning it copy nothing (a `String` per subject and `replyTo` was two
/// allocations per message on a service's hot path).
///
/// ```
/// use kaa_bus::MessageSubject;
///
/// let subject = MessageSubject::from("kaa.v1.service.cmx.esp.ClientData");
/// assert!(subject.ends_with(".ClientData"));
/// assert_eq!(subject, "kaa.v1.service.cmx.esp.ClientData");
/// let s: &str = &subject;
/// assert_eq!(s.len(), 33);
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct MessageSubject(async_nats::Subject);

// As `str` does (`Borrow<str>` requires it).
impl std::hash::Hash for MessageSubject {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

impl PartialOrd for MessageSubject {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for MessageSubject {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.as_str().cmp(other.as_str())
    }
}

impl MessageSubject {
    /// The subject as a string slice.
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }
}

impl std::ops::Deref for MessageSubject {
    type Target = str;

    fn deref(&self) -> &str {
        self.0.as_str()
    }
}

impl AsRef<str> for MessageSubject {
    fn as_ref(&self) -> &str {
        self.0.as_str()
    }
}

impl std::borrow::Borrow<str> for MessageSubject {
    fn borrow(&self) -> &str {
        self.0.as_str()
    }
}

impl std::fmt::Debug for MessageSubject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.0.as_str(), f)
    }
}

impl std::fmt::Display for MessageSubject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0.as_str())
    }
}

impl From<&str> for MessageSubject {
    fn from(subject: &str) -> Self {
        MessageSubject(async_nats::Subject::from(subject))
    }
}

impl From<String> for MessageSubject {
    fn from(subject: String) -> Self {
        MessageSubject(async_nats::Subject::from(subject))
    }
}

impl From<&String> for MessageSubject {
    fn from(subject: &String) -> Self {
        MessageSubject(async_nats::Subject::from(subject.as_str()))
    }
}

impl From<async_nats::Subject> for MessageSubject {
    fn from(subject: async_nats::Subject) -> Self {
        MessageSubject(subject)
    }
}

impl From<MessageSubject> for String {
    fn from(subject: MessageSubject) -> Self {
        subject.0.into_string()
    }
}

impl PartialEq<str> for MessageSubject {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for MessageSubject {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl PartialEq<String> for MessageSubject {
    fn eq(&self, other: &String) -> bool {
        self.as_str() == other.as_str()
    }
}

impl PartialEq<MessageSubject> for str {
    fn eq(&self, other: &MessageSubject) -> bool {
        self == other.as_str()
    }
}

impl PartialEq<MessageSubject> for &str {
    fn eq(&self, other: &MessageSubject) -> bool {
        *self == other.as_str()
    }
}

impl PartialEq<MessageSubject> for String {
    fn eq(&self, other: &MessageSubject) -> bool {
        self.as_str() == other.as_str()
    }
}

/// One message as a subscriber receives it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Message {
    /// The concrete subject the message was published to (never a wildcard).
    pub subject: MessageSubject,
    /// The subject to reply to, when the publisher set one (`replyTo` in NATS).
    pub reply_to: Option<MessageSubject>,
    /// The payload, shared and cheap to clone.
    pub payload: Bytes,
    /// True when this is the NATS server's "no responders" status (503) rather than a
    /// message anyone published: something was published with this subscription's
    /// subject as its `replyTo`, to a subject nobody subscribed to. The payload is
    /// empty. Services that collect replies on one subject (6/CDTP responses, 4/ESP
    /// ExtensionData) should count and skip these instead of reporting a malformed
    /// message; the request they belong to cannot be told (no correlation ID), so it
    /// runs into its own timeout. [`MemoryBus`] never produces them.
    pub no_responders: bool,
}

impl Message {
    /// A message, for [`Bus`] implementations and tests.
    pub fn new(
        subject: impl Into<MessageSubject>,
        reply_to: Option<impl Into<MessageSubject>>,
        payload: Bytes,
    ) -> Self {
        Message {
            subject: subject.into(),
            reply_to: reply_to.map(Into::into),
            payload,
            no_responders: false,
        }
    }
}

/// The message bus Kaa services talk through.
///
/// Object safe: services hold an `Arc<dyn Bus>` and do not care whether the bus is a
/// [`MemoryBus`] or a [`NatsBus`]. Both follow NATS core semantics; see the crate
/// docs.
#[async_trait]
pub trait Bus: Send + Sync + fmt::Debug {
    /// Publishes `payload` to the concrete `subject`, with `reply_to` as the NATS
    /// `replyTo` subject when given.
    ///
    /// Fails with [`BusError::InvalidSubject`] for a subject (or reply subject) that
    /// holds a wildcard, an empty token or whitespace, and with
    /// [`BusError::PayloadTooLarge`] above the maximum payload. Publishing to a subject
    /// nobody subscribes to is not an error: the message is gone, as in NATS.
    async fn publish_message(
        &self,
        subject: &str,
        reply_to: Option<&str>,
        payload: Bytes,
    ) -> Result<(), BusError>;

    /// Subscribes to `filter`, a subject that may hold `*` (exactly one token) and a
    /// final `>` (one or more tokens).
    ///
    /// With a `queue_group`, the subscription joins that group: each message is
    /// delivered to one member of the group only. Without one, the subscription gets
    /// its own copy of every matching message.
    async fn subscribe(
        &self,
        filter: &str,
        queue_group: Option<&str>,
    ) -> Result<Subscription, BusError>;

    /// Publishes `payload` to `subject` with a fresh reply inbox and returns the first
    /// reply.
    ///
    /// Fails with [`BusError::Timeout`] when no reply arrives within `timeout`, and
    /// with [`BusError::NoResponders`] when nobody subscribes to `subject` at all.
    async fn request(
        &self,
        subject: &str,
        payload: Bytes,
        timeout: Duration,
    ) -> Result<Message, BusError>;

    /// A number that grows each time the bus (re)connects to its server: for NATS,
    /// the connections established so far (0 before the first); an in-memory bus
    /// never reconnects (always 1). The client restores subscriptions by itself
    /// after a reconnect, but what was in flight during the outage may be lost, so
    /// services watch this to re-synchronize state with their peers.
    fn connection_epoch(&self) -> u64 {
        1
    }

    /// Waits until everything published through this bus so far has been handed to
    /// the server (NATS) or to the subscribers' buffers (in memory).
    async fn flush(&self) -> Result<(), BusError>;

    /// A fresh, unique inbox subject to use as a `replyTo` with a subscription of
    /// one's own (3/ISM session affinity uses replica subjects instead).
    fn new_inbox(&self) -> String;

    /// The largest payload one message may carry, when the bus knows it: the
    /// server's `max_payload` for NATS (`None` until the first connection), the
    /// configured maximum in memory. Services compare their own size limits with it
    /// at start-up.
    fn max_payload(&self) -> Option<usize> {
        None
    }

    /// Publishes `payload` to the concrete `subject` without a reply subject.
    async fn publish(&self, subject: &str, payload: Bytes) -> Result<(), BusError> {
        self.publish_message(subject, None, payload).await
    }

    /// Publishes `payload` to `subject` with `reply_to` as the NATS `replyTo`.
    async fn publish_with_reply(
        &self,
        subject: &str,
        reply_to: &str,
        payload: Bytes,
    ) -> Result<(), BusError> {
        self.publish_message(subject, Some(reply_to), payload).await
    }
}

/// Forwards to the bus inside. A method call on an `Arc<dyn Bus>` resolves to
/// this impl before it derefs to `dyn Bus`, so the hot method hands back the
/// inner bus's future itself instead of boxing a second future around it (an
/// `async fn` here cost one more allocation and poll layer per publish).
#[async_trait]
impl<T: Bus + ?Sized> Bus for Arc<T> {
    fn publish_message<'life0, 'life1, 'life2, 'async_trait>(
        &'life0 self,
        subject: &'life1 str,
        reply_to: Option<&'life2 str>,
        payload: Bytes,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<(), BusError>> + Send + 'async_trait>,
    >
    where
        'life0: 'async_trait,
        'life1: 'async_trait,
        'life2: 'async_trait,
        Self: 'async_trait,
    {
        (**self).publish_message(subject, reply_to, payload)
    }

    async fn subscribe(
        &self,
        filter: &str,
        queue_group: Option<&str>,
    ) -> Result<Subscription, BusError> {
        (**self).subscribe(filter, queue_group).await
    }

    async fn request(
        &self,
        subject: &str,
        payload: Bytes,
        timeout: Duration,
    ) -> Result<Message, BusError> {
        (**self).request(subject, payload, timeout).await
    }

    fn connection_epoch(&self) -> u64 {
        (**self).connection_epoch()
    }

    async fn flush(&self) -> Result<(), BusError> {
        (**self).flush().await
    }

    fn new_inbox(&self) -> String {
        (**self).new_inbox()
    }

    fn max_payload(&self) -> Option<usize> {
        (**self).max_payload()
    }
}

/// A live subscription: a [`Stream`] of [`Message`]s.
///
/// Dropping it unsubscribes; so does [`Subscription::unsubscribe`], after which the
/// stream ends. The stream also ends when the bus underneath is closed for good.
pub struct Subscription {
    filter: String,
    queue_group: Option<String>,
    inner: Option<Inner>,
}

enum Inner {
    Memory(memory::MemorySubscriber),
    Nats(async_nats::Subscriber),
    Stream(Pin<Box<dyn Stream<Item = Message> + Send>>),
}

impl Subscription {
    /// A subscription over any stream of messages, for [`Bus`] implementations other
    /// than the two in this crate. Dropping the stream must end the interest.
    pub fn from_stream(
        filter: impl Into<String>,
        queue_group: Option<String>,
        stream: impl Stream<Item = Message> + Send + 'static,
    ) -> Self {
        Subscription {
            filter: filter.into(),
            queue_group,
            inner: Some(Inner::Stream(Box::pin(stream))),
        }
    }

    pub(crate) fn memory(
        filter: &str,
        queue_group: Option<&str>,
        subscriber: memory::MemorySubscriber,
    ) -> Self {
        Subscription {
            filter: filter.to_owned(),
            queue_group: queue_group.map(str::to_owned),
            inner: Some(Inner::Memory(subscriber)),
        }
    }

    pub(crate) fn nats(
        filter: &str,
        queue_group: Option<&str>,
        subscriber: async_nats::Subscriber,
    ) -> Self {
        Subscription {
            filter: filter.to_owned(),
            queue_group: queue_group.map(str::to_owned),
            inner: Some(Inner::Nats(subscriber)),
        }
    }

    /// The filter this subscription was made with.
    pub fn subject_filter(&self) -> &str {
        &self.filter
    }

    /// The queue group this subscription belongs to, if any.
    pub fn queue_group(&self) -> Option<&str> {
        self.queue_group.as_deref()
    }

    /// How many messages were dropped for this subscription because its buffer was
    /// full (a slow consumer), where the bus counts them per subscription: `Some` for
    /// [`MemoryBus`]; `None` for [`NatsBus`], which counts slow-consumer events per
    /// connection ([`NatsBus::slow_consumer_events`]).
    pub fn dropped(&self) -> Option<u64> {
        match &self.inner {
            Some(Inner::Memory(s)) => Some(s.dropped()),
            _ => None,
        }
    }

    /// Ends the subscription. Nothing is delivered to it afterwards, including
    /// messages already buffered; the stream yields `None` from now on. Calling it
    /// again does nothing.
    pub async fn unsubscribe(&mut self) -> Result<(), BusError> {
        match self.inner.take() {
            Some(Inner::Nats(mut subscriber)) => {
                subscriber
                    .unsubscribe()
                    .await
                    .map_err(|e| BusError::Transport {
                        operation: "unsubscribe",
                        source: Box::new(e),
                    })
            }
            // Dropping removes the interest synchronously.
            Some(Inner::Memory(_)) | Some(Inner::Stream(_)) | None => Ok(()),
        }
    }
}

impl Stream for Subscription {
    type Item = Message;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Message>> {
        let this = self.get_mut();
        match &mut this.inner {
            None => Poll::Ready(None),
            Some(Inner::Memory(s)) => s.poll_recv(cx),
            Some(Inner::Nats(s)) => Pin::new(s)
                .poll_next(cx)
                .map(|m| m.map(nats::message_from_nats)),
            Some(Inner::Stream(s)) => s.as_mut().poll_next(cx),
        }
    }
}

impl fmt::Debug for Subscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let backend = match &self.inner {
            None => "unsubscribed",
            Some(Inner::Memory(_)) => "memory",
            Some(Inner::Nats(_)) => "nats",
            Some(Inner::Stream(_)) => "stream",
        };
        f.debug_struct("Subscription")
            .field("filter", &self.filter)
            .field("queue_group", &self.queue_group)
            .field("backend", &backend)
            .finish()
    }
}

/// Checks that `subject` is a concrete NATS subject one can publish to: non-empty
/// tokens separated by `.`, none holding `*`, `>`, whitespace or a control character
/// (3/ISM token rules, [`kaa_ism::subject::validate_token`]).
///
/// ```
/// use kaa_bus::validate_subject;
/// assert!(validate_subject("kaa.v1.service.ecr.cdtp.request").is_ok());
/// assert!(validate_subject("_INBOX.x9.1").is_ok());
/// assert!(validate_subject("kaa.v1.events.*.endpoint").is_err());
/// assert!(validate_subject("kaa..v1").is_err());
/// ```
pub fn validate_subject(subject: &str) -> Result<(), BusError> {
    // Every subject our services publish is printable ASCII: one pass over the
    // bytes decides it (this runs for every publish and its reply subject; the
    // token-by-token check below cost about 1,100 instructions a subject, a tenth of
    // what CMX's driver spends publishing a message). Anything else, valid or not,
    // takes the check below, which says what is wrong.
    if is_plain_subject(subject.as_bytes()) {
        return Ok(());
    }
    validate_subject_tokens(subject)
}

/// The class of each byte for [`is_plain_subject`]: [`PLAIN_OTHER`] for
/// anything the fast path does not take (controls, space, `*`, `>`, DEL,
/// non-ASCII), [`PLAIN_TOKEN`] for the printable ASCII of a token, [`PLAIN_DOT`]
/// for `.`.
const PLAIN_CLASS: [u8; 256] = {
    let mut class = [PLAIN_OTHER; 256];
    let mut b = b'!';
    while b <= b'~' {
        class[b as usize] = PLAIN_TOKEN;
        b += 1;
    }
    class[b'*' as usize] = PLAIN_OTHER;
    class[b'>' as usize] = PLAIN_OTHER;
    class[b'.' as usize] = PLAIN_DOT;
    class
};
const PLAIN_OTHER: u8 = 0;
const PLAIN_TOKEN: u8 = 1;
const PLAIN_DOT: u8 = 2;

/// Whether `subject` is non-empty tokens of printable ASCII other than `*` and `>`,
/// separated by single dots: valid by [`validate_subject_tokens`]'s rules (`false`
/// also for valid subjects with other characters).
///
/// One table lookup and a few bit operations a byte, without a branch per byte:
/// a refused byte, or a dot first, after a dot or last, sets `bad`.
fn is_plain_subject(subject: &[u8]) -> bool {
    let mut bad = subject.is_empty();
    // A dot "before" the first byte: a leading dot is an empty token.
    let mut after_dot = true;
    for &b in subject {
        let class = PLAIN_CLASS[usize::from(b)];
        let dot = class == PLAIN_DOT;
        bad |= (class == PLAIN_OTHER) | (dot & after_dot);
        after_dot = dot;
    }
    !bad && !after_dot
}

/// [`validate_subject`] token by token, with the reason of a refusal.
fn validate_subject_tokens(subject: &str) -> Result<(), BusError> {
    if subject.is_empty() {
        return Err(BusError::InvalidSubject {
            subject: String::new(),
            reason: "empty subject",
        });
    }
    for token in subject.split('.') {
        if let Err(e) = validate_token(token, "subject token") {
            return Err(BusError::InvalidSubject {
                subject: subject.to_owned(),
                reason: match e {
                    SubjectError::EmptyToken { .. } => "empty token",
                    _ => "a token holds a wildcard, whitespace or a control character",
                },
            });
        }
    }
    Ok(())
}

/// Checks that `filter` is a valid NATS subscription subject: like
/// [`validate_subject`], but a whole token may be `*` (any one token) and the last
/// token may be `>` (one or more tokens). Same rules as
/// [`kaa_ism::subject::SubjectFilter::parse`].
///
/// ```
/// use kaa_bus::validate_filter;
/// assert!(validate_filter("kaa.v1.events.*.endpoint.>").is_ok());
/// assert!(validate_filter(">").is_ok());
/// assert!(validate_filter("kaa.>.events").is_err());
/// assert!(validate_filter("kaa.v1*").is_err());
/// ```
pub fn validate_filter(filter: &str) -> Result<(), BusError> {
    SubjectFilter::parse(filter)
        .map(|_| ())
        .map_err(|_| BusError::InvalidFilter {
            filter: filter.to_owned(),
        })
}

/// Checks a queue group name: non-empty, no whitespace or control character.
pub fn validate_queue_group(queue_group: &str) -> Result<(), BusError> {
    if queue_group.is_empty()
        || queue_group
            .chars()
            .any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(BusError::InvalidQueueGroup {
            queue_group: queue_group.to_owned(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects() {
        for ok in [
            "a",
            "a.b.c",
            "_INBOX.abc.1",
            "kaa.v1.events.ecr.endpoint.config.updated",
            "a-b_c$d",
        ] {
            assert!(validate_subject(ok).is_ok(), "{ok}");
        }
        for bad in [
            "", ".", "a.", ".a", "a..b", "a.*", "a.>", "*", ">", "a b", "a.b\t", "a\n",
        ] {
            assert!(
                matches!(validate_subject(bad), Err(BusError::InvalidSubject { .. })),
                "{bad:?}"
            );
        }
        // NATS would take `b*c` as a literal token; 3/ISM token rules reject it.
        assert!(validate_subject("a.b*c").is_err());
        // Valid without the ASCII fast path: a non-ASCII token.
        assert!(validate_subject("kaa.v1.service.é").is_ok());
    }

    proptest::proptest! {
        /// The one-pass check never accepts what the token-by-token check refuses,
        /// and `validate_subject` decides as the token-by-token check does.
        #[test]
        fn the_fast_subject_check_agrees_with_the_token_check(
            subject in "[a-c.*> \t\u{7f}\u{e9}\u{2028}-]{0,12}"
        ) {
            let tokens = validate_subject_tokens(&subject).is_ok();
            if is_plain_subject(subject.as_bytes()) {
                proptest::prop_assert!(tokens, "{:?}", subject);
            }
            proptest::prop_assert_eq!(validate_subject(&subject).is_ok(), tokens);
        }
    }

    #[test]
    fn filters() {
        for ok in [
            "a",
            "*",
            ">",
            "a.*.c",
            "a.>",
            "*.*.>",
            "kaa.v1.events.*.endpoint.lifecycle.*",
        ] {
            assert!(validate_filter(ok).is_ok(), "{ok}");
        }
        for bad in [
            "", "a.", "a..b", ">.a", "a.>.b", "a*", "a.b>", "a b", "a.*x",
        ] {
            assert!(
                matches!(validate_filter(bad), Err(BusError::InvalidFilter { .. })),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn queue_groups() {
        assert!(validate_queue_group("ecr").is_ok());
        assert!(validate_queue_group("cmx.replicas").is_ok());
        assert!(validate_queue_group("").is_err());
        assert!(validate_queue_group("a b").is_err());
    }
}
