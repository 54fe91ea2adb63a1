//! The NATS bus: the production engine, on async-nats.
//!
//! - Server URLs come from the configuration ([`NatsConfig::urls`], Kaa's
//!   `nats.urls`); the client picks among them and moves on to another when one fails.
//! - Credentials come **only from the environment**, never from the configuration
//!   file ([`NatsAuth::from_env`]):
//!
//!   | variable | meaning |
//!   | --- | --- |
//!   | `NATS_CREDS_FILE` | path of a `.creds` file (JWT and NKey seed) |
//!   | `NATS_TOKEN` | an authentication token |
//!   | `NATS_USER` and `NATS_PASSWORD` | user and password; one without the other is an error |
//!
//!   At most one of the three ways may be set (an empty variable counts as unset);
//!   none means no authentication.
//! - It reconnects by itself, with an exponential back-off capped at
//!   [`NatsConfig::reconnect_delay_max`], forever unless
//!   [`NatsConfig::max_reconnects`] says otherwise. With
//!   [`NatsConfig::retry_on_initial_connect`] (the default) even the first connection
//!   is made in the background: [`NatsBus::connect`] returns at once and publishes and
//!   subscriptions wait in the client until the server is there.
//! - Subscriptions survive a reconnect: async-nats re-sends every live subscription
//!   to the server it reconnects to (the crate's fault test kills and restarts a
//!   private `nats-server` to prove it). Messages published while no server is
//!   reachable may be lost, as with any NATS core client.
//! - Slow consumers: each subscription buffers up to
//!   [`NatsConfig::subscription_capacity`] messages; async-nats drops messages beyond
//!   that and reports a slow-consumer event, counted by
//!   [`NatsBus::slow_consumer_events`].

use std::{
    cell::RefCell,
    fmt,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use async_nats::{
    ConnectOptions, Event, PublishErrorKind, RequestErrorKind, ServerAddr, Subject,
    SubscribeErrorKind, connection::State,
};
use async_trait::async_trait;
use bytes::Bytes;

use crate::{
    Bus, BusError, Message, Subscription, validate_filter, validate_queue_group, validate_subject,
};

/// Environment variable holding the path of a NATS `.creds` file.
pub const ENV_CREDS_FILE: &str = "NATS_CREDS_FILE";
/// Environment variable holding a NATS authentication token.
pub const ENV_TOKEN: &str = "NATS_TOKEN";
/// Environment variable holding the NATS user name (with [`ENV_PASSWORD`]).
pub const ENV_USER: &str = "NATS_USER";
/// Environment variable holding the NATS password (with [`ENV_USER`]).
pub const ENV_PASSWORD: &str = "NATS_PASSWORD";

/// How to connect to NATS, as read from a service's configuration. Holds no
/// credentials; see [`NatsAuth`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct NatsConfig {
    /// Server URLs (`nats://host:port`, or `host:port`), Kaa's `nats.urls`.
    pub urls: Vec<String>,
    /// Connection name shown by the server's monitoring, e.g. the service replica ID.
    pub connection_name: Option<String>,
    /// Make the first connection in the background, retrying like a reconnect,
    /// instead of failing [`NatsBus::connect`] when no server answers. Default `true`.
    pub retry_on_initial_connect: bool,
    /// Consecutive reconnect attempts before the client gives up and the bus closes;
    /// `None` (the default) retries forever.
    pub max_reconnects: Option<usize>,
    /// The longest wait between two reconnect attempts (the back-off doubles up to
    /// it). Default 2 s.
    pub reconnect_delay_max: Duration,
    /// Timeout of one connection attempt, handshake included. Default 5 s.
    pub connection_timeout: Duration,
    /// Messages one subscription buffers before async-nats drops further ones.
    /// Default 65 536.
    pub subscription_capacity: usize,
}

impl NatsConfig {
    /// A configuration for the given server URLs, with the defaults above.
    pub fn new<I, S>(urls: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        NatsConfig {
            urls: urls.into_iter().map(Into::into).collect(),
            connection_name: None,
            retry_on_initial_connect: true,
            max_reconnects: None,
            reconnect_delay_max: Duration::from_secs(2),
            connection_timeout: Duration::from_secs(5),
            subscription_capacity: 64 * 1024,
        }
    }

    /// Sets [`NatsConfig::connection_name`].
    pub fn with_connection_name(mut self, name: impl Into<String>) -> Self {
        self.connection_name = Some(name.into());
        self
    }

    /// Sets [`NatsConfig::retry_on_initial_connect`].
    pub fn with_retry_on_initial_connect(mut self, retry: bool) -> Self {
        self.retry_on_initial_connect = retry;
        self
    }

    /// Sets [`NatsConfig::max_reconnects`].
    pub fn with_max_reconnects(mut self, max: Option<usize>) -> Self {
        self.max_reconnects = max;
        self
    }

    /// Sets [`NatsConfig::reconnect_delay_max`].
    pub fn with_reconnect_delay_max(mut self, delay: Duration) -> Self {
        self.reconnect_delay_max = delay;
        self
    }

    /// Sets [`NatsConfig::connection_timeout`].
    pub fn with_connection_timeout(mut self, timeout: Duration) -> Self {
        self.connection_timeout = timeout;
        self
    }

    /// Sets [`NatsConfig::subscription_capacity`] (at least 1).
    pub fn with_subscription_capacity(mut self, messages: usize) -> Self {
        self.subscription_capacity = messages.max(1);
        self
    }

    fn server_addrs(&self) -> Result<Vec<ServerAddr>, BusError> {
        if self.urls.is_empty() {
            return Err(BusError::Config("no NATS server URL (nats.urls)".into()));
        }
        self.urls
            .iter()
            .map(|url| {
                url.parse::<ServerAddr>()
                    .map_err(|e| BusError::Config(format!("NATS server URL {url:?}: {e}")))
            })
            .collect()
    }

    /// The reconnect back-off: immediately on the first attempt, then 100 ms doubling
    /// up to [`NatsConfig::reconnect_delay_max`].
    fn reconnect_delay(max: Duration, attempts: usize) -> Duration {
        if attempts <= 1 {
            return Duration::ZERO;
        }
        let exp = u32::try_from(attempts - 2).unwrap_or(u32::MAX).min(16);
        Duration::from_millis(100u64 << exp).min(max)
    }
}

/// NATS credentials, taken from the environment only.
///
/// `Debug` never shows a secret.
#[derive(Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum NatsAuth {
    /// No authentication.
    #[default]
    None,
    /// `NATS_USER` and `NATS_PASSWORD`.
    UserPassword {
        /// The user name.
        user: String,
        /// The password.
        password: String,
    },
    /// `NATS_TOKEN`.
    Token(String),
    /// `NATS_CREDS_FILE`: a `.creds` file with a user JWT and NKey seed.
    CredsFile(PathBuf),
}

impl fmt::Debug for NatsAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NatsAuth::None => f.write_str("None"),
            NatsAuth::UserPassword { user, .. } => f
                .debug_struct("UserPassword")
                .field("user", user)
                .field("password", &"<redacted>")
                .finish(),
            NatsAuth::Token(_) => f.write_str("Token(<redacted>)"),
            NatsAuth::CredsFile(path) => f.debug_tuple("CredsFile").field(path).finish(),
        }
    }
}

impl NatsAuth {
    /// Reads the credentials from the process environment: `NATS_CREDS_FILE`,
    /// `NATS_TOKEN`, or `NATS_USER` with `NATS_PASSWORD` (see the [module docs](self)).
    pub fn from_env() -> Result<Self, BusError> {
        NatsAuth::from_lookup(|name| std::env::var(name).ok())
    }

    /// Like [`NatsAuth::from_env`] but reads the variables through `lookup`, for tests
    /// and for embedders that keep their environment elsewhere.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, BusError> {
        let get = |name: &str| lookup(name).filter(|v| !v.is_empty());
        let creds = get(ENV_CREDS_FILE);
        let token = get(ENV_TOKEN);
        let user = get(ENV_USER);
        let password = get(ENV_PASSWORD);
        let ways = usize::from(creds.is_some())
            + usize::from(token.is_some())
            + usize::from(user.is_some() || password.is_some());
        if ways > 1 {
            return Err(BusError::Config(format!(
                "more than one of {ENV_CREDS_FILE}, {ENV_TOKEN}, {ENV_USER}/{ENV_PASSWORD} is set"
            )));
        }
        Ok(match (creds, token, user, password) {
            (Some(path), ..) => NatsAuth::CredsFile(PathBuf::from(path)),
            (_, Some(token), ..) => NatsAuth::Token(token),
            (_, _, Some(user), Some(password)) => NatsAuth::UserPassword { user, password },
            (_, _, Some(_), None) => {
                return Err(BusError::Config(format!(
                    "{ENV_USER} is set but {ENV_PASSWORD} is not"
                )));
            }
            (_, _, None, Some(_)) => {
                return Err(BusError::Config(format!(
                    "{ENV_PASSWORD} is set but {ENV_USER} is not"
                )));
            }
            (None, None, None, None) => NatsAuth::None,
        })
    }

    async fn apply(&self, options: ConnectOptions) -> Result<ConnectOptions, BusError> {
        Ok(match self {
            NatsAuth::None => options,
            NatsAuth::UserPassword { user, password } => {
                options.user_and_password(user.clone(), password.clone())
            }
            NatsAuth::Token(token) => options.token(token.clone()),
            NatsAuth::CredsFile(path) => options.credentials_file(path).await.map_err(|e| {
                BusError::Config(format!("{ENV_CREDS_FILE} {}: {e}", path.display()))
            })?,
        })
    }
}

#[derive(Debug, Default)]
struct Stats {
    connected: AtomicU64,
    disconnected: AtomicU64,
    slow_consumer: AtomicU64,
    closed: AtomicBool,
}

/// The NATS bus. Cheap to clone; clones share one connection.
///
/// See the [module docs](self) for configuration, credentials and reconnects.
#[derive(Clone)]
pub struct NatsBus {
    client: async_nats::Client,
    stats: Arc<Stats>,
    urls: String,
}

impl fmt::Debug for NatsBus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsBus")
            .field("urls", &self.urls)
            .field("state", &self.client.connection_state())
            .finish_non_exhaustive()
    }
}

impl NatsBus {
    /// Connects with `config` and the credentials from the environment
    /// ([`NatsAuth::from_env`]).
    ///
    /// With [`NatsConfig::retry_on_initial_connect`] this returns at once and the
    /// connection is made in the background; otherwise it fails with
    /// [`BusError::Connect`] when no server answers.
    pub async fn connect(config: &NatsConfig) -> Result<Self, BusError> {
        NatsBus::connect_with_auth(config, &NatsAuth::from_env()?).await
    }

    /// Connects with `config` and the given credentials.
    pub async fn connect_with_auth(config: &NatsConfig, auth: &NatsAuth) -> Result<Self, BusError> {
        let addrs = config.server_addrs()?;
        let urls = config.urls.join(",");
        let stats = Arc::new(Stats::default());
        let max_delay = config.reconnect_delay_max;
        let mut options = ConnectOptions::new()
            .connection_timeout(config.connection_timeout)
            .subscription_capacity(config.subscription_capacity.max(1))
            .max_reconnects(config.max_reconnects)
            .reconnect_delay_callback(move |attempts| {
                NatsConfig::reconnect_delay(max_delay, attempts)
            })
            .event_callback({
                let stats = Arc::clone(&stats);
                let urls = urls.clone();
                move |event| {
                    record_event(&stats, &urls, &event);
                    async {}
                }
            });
        if config.retry_on_initial_connect {
            options = options.retry_on_initial_connect();
        }
        if let Some(name) = &config.connection_name {
            options = options.name(name);
        }
        let options = auth.apply(options).await?;
        let client = options
            .connect(addrs)
            .await
            .map_err(|e| BusError::Connect {
                urls: urls.clone(),
                source: Box::new(e),
            })?;
        Ok(NatsBus {
            client,
            stats,
            urls,
        })
    }

    /// The async-nats client underneath, for what the [`Bus`] trait does not cover
    /// (JetStream, headers).
    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    /// True while a server connection is up.
    pub fn is_connected(&self) -> bool {
        self.client.connection_state() == State::Connected
    }

    /// Waits until a server connection is up, at most `timeout`; returns whether it is.
    pub async fn wait_connected(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if self.is_connected() {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// How many times a connection has been established (the first one included).
    pub fn connections(&self) -> u64 {
        self.stats.connected.load(Ordering::Relaxed)
    }

    /// How many times the connection has been lost.
    pub fn disconnections(&self) -> u64 {
        self.stats.disconnected.load(Ordering::Relaxed)
    }

    /// How many slow-consumer events async-nats reported (each means at least one
    /// message dropped for a subscription whose buffer was full).
    pub fn slow_consumer_events(&self) -> u64 {
        self.stats.slow_consumer.load(Ordering::Relaxed)
    }

    /// Flushes, unsubscribes everything and closes the connection.
    pub async fn drain(&self) -> Result<(), BusError> {
        self.client.drain().await.map_err(|e| BusError::Transport {
            operation: "drain",
            source: Box::new(e),
        })
    }

    fn send_error(&self, operation: &'static str, source: crate::BoxError) -> BusError {
        if self.stats.closed.load(Ordering::Relaxed) {
            BusError::Closed
        } else {
            BusError::Transport { operation, source }
        }
    }
}

fn record_event(stats: &Stats, urls: &str, event: &Event) {
    match event {
        Event::Connected => {
            stats.connected.fetch_add(1, Ordering::Relaxed);
            tracing::info!(urls, "NATS connected");
        }
        Event::Disconnected => {
            stats.disconnected.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(urls, "NATS disconnected; reconnecting");
        }
        Event::SlowConsumer(sid) => {
            stats.slow_consumer.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(urls, sid, "NATS slow consumer: messages dropped");
        }
        Event::ClientError(async_nats::ClientError::MaxReconnects) => {
            stats.closed.store(true, Ordering::Relaxed);
            tracing::error!(urls, "NATS reconnect attempts exhausted; the bus is closed");
        }
        Event::Closed => {
            stats.closed.store(true, Ordering::Relaxed);
            tracing::error!(urls, "NATS connection closed for good");
        }
        other => tracing::warn!(urls, event = %other, "NATS event"),
    }
}

/// How many subjects [`checked_subject`] remembers per thread.
const RECENT_SUBJECTS: usize = 8;

thread_local! {
    /// The subjects published last on this thread, checked and made into
    /// async-nats [`Subject`]s (see [`checked_subject`]).
    static RECENT: RefCell<RecentSubjects> = const {
        RefCell::new(RecentSubjects {
            slots: [const { None }; RECENT_SUBJECTS],
            next: 0,
        })
    };
}

/// A few subjects that passed [`validate_subject`], replaced in turn.
struct RecentSubjects {
    slots: [Option<Subject>; RECENT_SUBJECTS],
    next: usize,
}

impl RecentSubjects {
    fn get_or_check(&mut self, subject: &str) -> Result<Subject, BusError> {
        if let Some(known) = self.slots.iter().flatten().find(|s| s.as_str() == subject) {
            return Ok(known.clone());
        }
        validate_subject(subject)?;
        let checked = Subject::from(subject);
        if let Some(slot) = self.slots.get_mut(self.next) {
            *slot = Some(checked.clone());
        }
        self.next = (self.next + 1) % RECENT_SUBJECTS;
        Ok(checked)
    }
}

/// `subject` checked by [`validate_subject`], as an async-nats [`Subject`].
///
/// A service publishes to a handful of subjects over and over (CMX: its
/// provider's request subject, its own response subject, the `ExtensionData`
/// subject of each communication service replica), so the last few of each
/// thread are kept: one found costs a comparison and a reference count instead
/// of the check and a copy (about 900 instructions a subject, three a CMX
/// request). Only subjects that passed the check are kept, and one is found
/// only by equal content.
fn checked_subject(subject: &str) -> Result<Subject, BusError> {
    RECENT
        .try_with(|recent| recent.borrow_mut().get_or_check(subject))
        .unwrap_or_else(|_| {
            // The thread is exiting (its thread-locals are gone).
            validate_subject(subject)?;
            Ok(Subject::from(subject))
        })
}

/// Converts an async-nats message into a bus [`Message`].
pub(crate) fn message_from_nats(message: async_nats::Message) -> Message {
    Message {
        no_responders: message.status == Some(async_nats::StatusCode::NO_RESPONDERS),
        subject: message.subject.into(),
        reply_to: message.reply.map(Into::into),
        payload: message.payload,
    }
}

#[async_trait]
impl Bus for NatsBus {
    async fn publish_message(
        &self,
        subject: &str,
        reply_to: Option<&str>,
        payload: Bytes,
    ) -> Result<(), BusError> {
        let size = payload.len();
        let result = match reply_to {
            Some(reply_to) => {
                let (subject, reply_to) = (checked_subject(subject)?, checked_subject(reply_to)?);
                self.client
                    .publish_with_reply(subject, reply_to, payload)
                    .await
            }
            None => {
                self.client
                    .publish(checked_subject(subject)?, payload)
                    .await
            }
        };
        result.map_err(|e| match e.kind() {
            PublishErrorKind::MaxPayloadExceeded => BusError::PayloadTooLarge {
                size,
                max: self.client.max_payload(),
            },
            PublishErrorKind::InvalidSubject => BusError::InvalidSubject {
                subject: subject.to_owned(),
                reason: "rejected by async-nats",
            },
            _ => self.send_error("publish", Box::new(e)),
        })
    }

    async fn subscribe(
        &self,
        filter: &str,
        queue_group: Option<&str>,
    ) -> Result<Subscription, BusError> {
        validate_filter(filter)?;
        let result = match queue_group {
            Some(group) => {
                validate_queue_group(group)?;
                self.client
                    .queue_subscribe(filter.to_owned(), group.to_owned())
                    .await
            }
            None => self.client.subscribe(filter.to_owned()).await,
        };
        let subscriber = result.map_err(|e| match e.kind() {
            SubscribeErrorKind::InvalidSubject => BusError::InvalidFilter {
                filter: filter.to_owned(),
            },
            SubscribeErrorKind::InvalidQueueName => BusError::InvalidQueueGroup {
                queue_group: queue_group.unwrap_or_default().to_owned(),
            },
            _ => self.send_error("subscribe", Box::new(e)),
        })?;
        Ok(Subscription::nats(filter, queue_group, subscriber))
    }

    async fn request(
        &self,
        subject: &str,
        payload: Bytes,
        timeout: Duration,
    ) -> Result<Message, BusError> {
        validate_subject(subject)?;
        let size = payload.len();
        let request = async_nats::Request::new()
            .payload(payload)
            .timeout(Some(timeout));
        self.client
            .send_request(subject.to_owned(), request)
            .await
            .map(message_from_nats)
            .map_err(|e| match e.kind() {
                RequestErrorKind::TimedOut => BusError::Timeout {
                    subject: subject.to_owned(),
                    timeout,
                },
                RequestErrorKind::NoResponders => BusError::NoResponders {
                    subject: subject.to_owned(),
                },
                RequestErrorKind::MaxPayloadExceeded => BusError::PayloadTooLarge {
                    size,
                    max: self.client.max_payload(),
                },
                RequestErrorKind::InvalidSubject => BusError::InvalidSubject {
                    subject: subject.to_owned(),
                    reason: "rejected by async-nats",
                },
                _ => self.send_error("request", Box::new(e)),
            })
    }

    fn connection_epoch(&self) -> u64 {
        // async-nats reports `Connected` through the event callback, which runs
        // on a task of its own: right after `connect` returns (or a reconnect
        // succeeds) the state is already up while the event is not yet counted.
        // Counting the live connection closes that window, so the epoch a
        // service reads at start never changes later without a reconnect (a
        // CMX used to take its own first connection for a reconnect and
        // re-push configurations).
        let live = u64::from(self.is_connected());
        self.connections().max(live)
    }

    async fn flush(&self) -> Result<(), BusError> {
        self.client
            .flush()
            .await
            .map_err(|e| self.send_error("flush", Box::new(e)))
    }

    fn new_inbox(&self) -> String {
        self.client.new_inbox()
    }

    fn max_payload(&self) -> Option<usize> {
        // The server announces it in INFO; 0 until the first connection.
        Some(self.client.max_payload()).filter(|&n| n > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// The per-thread subject cache gives back exactly the subject asked for,
    /// and never lets through one the check refuses, however full it is.
    #[test]
    fn remembered_subjects_are_the_checked_ones() {
        let subjects: Vec<String> = (0..3 * RECENT_SUBJECTS)
            .map(|i| format!("kaa.v1.replica.kpc-{i}.esp.ExtensionData"))
            .collect();
        for round in 0..3 {
            for (i, subject) in subjects.iter().enumerate() {
                // Each one twice: once new (or evicted), then found.
                for _ in 0..2 {
                    let checked = checked_subject(subject).unwrap();
                    assert_eq!(checked.as_str(), subject, "round {round}, subject {i}");
                }
                for bad in ["", "kaa..v1", "kaa.v1.*", "kaa v1", "kaa.v1.", ".kaa"] {
                    assert!(
                        matches!(checked_subject(bad), Err(BusError::InvalidSubject { .. })),
                        "{bad:?} after {subject:?}"
                    );
                }
            }
        }
        // A subject that differs from a remembered one in its last byte.
        checked_subject("kaa.v1.service.cmx.cdtp.response").unwrap();
        assert_eq!(
            checked_subject("kaa.v1.service.cmx.cdtp.responsf")
                .unwrap()
                .as_str(),
            "kaa.v1.service.cmx.cdtp.responsf"
        );
    }

    fn lookup(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |name| map.get(name).cloned()
    }

    #[test]
    fn auth_from_environment() {
        assert_eq!(NatsAuth::from_lookup(lookup(&[])).unwrap(), NatsAuth::None);
        assert_eq!(
            NatsAuth::from_lookup(lookup(&[("NATS_TOKEN", "s3cret")])).unwrap(),
            NatsAuth::Token("s3cret".into())
        );
        assert_eq!(
            NatsAuth::from_lookup(lookup(&[("NATS_USER", "cmx"), ("NATS_PASSWORD", "pw")]))
                .unwrap(),
            NatsAuth::UserPassword {
                user: "cmx".into(),
                password: "pw".into()
            }
        );
        assert_eq!(
            NatsAuth::from_lookup(lookup(&[("NATS_CREDS_FILE", "/etc/kaa/cmx.creds")])).unwrap(),
            NatsAuth::CredsFile("/etc/kaa/cmx.creds".into())
        );
        // Empty counts as unset.
        assert_eq!(
            NatsAuth::from_lookup(lookup(&[("NATS_TOKEN", "")])).unwrap(),
            NatsAuth::None
        );
    }

    #[test]
    fn incomplete_or_ambiguous_credentials_are_errors() {
        for vars in [
            &[("NATS_USER", "cmx")][..],
            &[("NATS_PASSWORD", "pw")][..],
            &[
                ("NATS_TOKEN", "t"),
                ("NATS_USER", "u"),
                ("NATS_PASSWORD", "p"),
            ][..],
            &[("NATS_TOKEN", "t"), ("NATS_CREDS_FILE", "/x")][..],
        ] {
            let err = NatsAuth::from_lookup(lookup(vars)).unwrap_err();
            assert!(matches!(err, BusError::Config(_)), "{vars:?}: {err}");
        }
    }

    #[test]
    fn debug_hides_secrets() {
        let auth = NatsAuth::UserPassword {
            user: "cmx".into(),
            password: "hunter2".into(),
        };
        assert!(!format!("{auth:?}").contains("hunter2"));
        assert!(!format!("{:?}", NatsAuth::Token("tok-123".into())).contains("tok-123"));
    }

    #[test]
    fn server_urls_are_validated() {
        let empty: [&str; 0] = [];
        assert!(matches!(
            NatsConfig::new(empty).server_addrs(),
            Err(BusError::Config(_))
        ));
        assert!(matches!(
            NatsConfig::new(["nats://[::1"]).server_addrs(),
            Err(BusError::Config(_))
        ));
        let addrs = NatsConfig::new(["nats://127.0.0.1:4222", "127.0.0.1:4223"])
            .server_addrs()
            .unwrap();
        assert_eq!(addrs.len(), 2);
    }

    #[test]
    fn reconnect_backoff_is_capped() {
        let max = Duration::from_millis(500);
        assert_eq!(NatsConfig::reconnect_delay(max, 1), Duration::ZERO);
        assert_eq!(
            NatsConfig::reconnect_delay(max, 2),
            Duration::from_millis(100)
        );
        assert_eq!(
            NatsConfig::reconnect_delay(max, 3),
            Duration::from_millis(200)
        );
        assert_eq!(NatsConfig::reconnect_delay(max, 5), max);
        assert_eq!(NatsConfig::reconnect_delay(max, usize::MAX), max);
    }

    #[tokio::test]
    async fn connect_without_retry_fails_with_a_typed_error() {
        // Port 1 is never a NATS server.
        let config = NatsConfig::new(["nats://127.0.0.1:1"])
            .with_retry_on_initial_connect(false)
            .with_connection_timeout(Duration::from_secs(2));
        let err = NatsBus::connect_with_auth(&config, &NatsAuth::None)
            .await
            .unwrap_err();
        assert!(matches!(err, BusError::Connect { .. }), "{err}");
    }
}
