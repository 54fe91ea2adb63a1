//! CMX replicas' membership (kaa-rs extension): who is alive, kept in a NATS
//! JetStream key-value bucket, for the engine to share endpoints by
//! ([`kaa_cmp::Input::Members`]).
//!
//! - **Bucket.** One per CMX instance (default `kaa_cmx_<instance>`), a key per
//!   replica (its replica ID). The bucket's stream (`KV_<bucket>`, subjects
//!   `$KV.<bucket>.>`, one value per key, rollups allowed, deletes denied,
//!   `max_age` the expiry) is created the way `async-nats`'s
//!   `create_key_value` would, by hand: async-nats 0.51 cannot read the
//!   account information of nats-server 2.9.
//! - **Heartbeat.** Each replica puts its key every `heartbeat`.
//! - **Watch.** Each replica watches the whole bucket. A key is live while
//!   puts of it keep arriving: one not refreshed for `expiry` is dead (a
//!   crashed replica; measured against this replica's own puts as the watch
//!   delivers them, so a stalled stream expires nobody, and a crashed
//!   replica's endpoints move after `expiry` plus up to one heartbeat), a
//!   deleted key is gone at once (a replica that stopped
//!   gracefully deletes its key first, so its endpoints move at once). The
//!   stream's `max_age` (the same `expiry`) only keeps the bucket small.
//!   Every change of the live set goes to the engine.
//! - **Confirmed views** (the hand-over fence, see "Replicas" in
//!   [`kaa_cmp::engine`]). A key's value is `<replica> view=<16 hex digits>`:
//!   the [`kaa_cmp::engine::membership_view`] of the member list that replica
//!   last applied, put again at once when it changes
//!   ([`Membership::confirm_view`], which the driver calls once what the
//!   engine sent before is at the server) and with every heartbeat. The
//!   others' confirmations go to the engine ([`Membership::take_views`]), so a
//!   replica joining live members delivers as soon as they have all applied
//!   its join. A value without ` view=` (a replica of an earlier version, or
//!   one that has not applied a list yet) confirms nothing.
//! - **Consistency.** Replicas see puts and deletes at about the same time but
//!   not at the same instant; for that moment two replicas may disagree about
//!   an endpoint's owner. The engine copes (a hand-over to a replica that does
//!   not own the endpoint is answered 503, never handed on). No consensus is
//!   written here: the bucket's revisions and expiry are the only shared
//!   state.
//!
//! Membership needs JetStream, so the NATS bus: the in-memory bus has no
//! key-value store (a single replica needs no membership).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use async_nats::jetstream;
use async_nats::jetstream::kv::{Operation, Store};
use futures::StreamExt;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// How replicas find each other: the bucket, the heartbeat and the expiry.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct MembershipConfig {
    /// The JetStream key-value bucket (default `kaa_cmx_<instance>`).
    pub bucket: String,
    /// How often a replica puts its key (default 1 s).
    pub heartbeat: Duration,
    /// How long a key lives without a heartbeat (default 5 s): a crashed
    /// replica's endpoints move after at most this.
    pub expiry: Duration,
    /// Replicas of the bucket's stream in a NATS cluster (default 1).
    pub stream_replicas: usize,
}

impl MembershipConfig {
    /// The defaults for CMX instance `instance`.
    pub fn new(instance: &str) -> Self {
        MembershipConfig {
            bucket: default_bucket(instance),
            heartbeat: Duration::from_secs(1),
            expiry: Duration::from_secs(5),
            stream_replicas: 1,
        }
    }
}

/// `kaa_cmx_<instance>`, with characters a bucket name cannot hold as `_`.
pub fn default_bucket(instance: &str) -> String {
    let name: String = instance
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("kaa_cmx_{name}")
}

/// Whether `bucket` is a valid key-value bucket name (`[A-Za-z0-9_-]+`).
pub fn is_valid_bucket(bucket: &str) -> bool {
    !bucket.is_empty()
        && bucket
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// Membership could not be set up or left.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MembershipError {
    /// The bucket (its stream) could not be created or opened.
    #[error("membership bucket {bucket}: {message}")]
    Bucket {
        /// The bucket.
        bucket: String,
        /// What went wrong.
        message: String,
    },
    /// The membership's own NATS connection could not be made, or its thread
    /// could not be started.
    #[error("membership connection: {message}")]
    Connect {
        /// What went wrong.
        message: String,
    },
    /// Putting or deleting this replica's key failed.
    #[error("membership key {key}: {message}")]
    Key {
        /// The key (the replica ID).
        key: String,
        /// What went wrong.
        message: String,
    },
}

/// This replica's membership: its key kept alive in the bucket, and the live
/// members as the bucket says, kept up to date by a background task.
#[derive(Debug)]
pub struct Membership {
    members: watch::Receiver<Vec<String>>,
    /// Every change, in order, for the engine (see [`Membership::take_changes`]).
    changes: Option<mpsc::UnboundedReceiver<Vec<String>>>,
    /// The other replicas' confirmed views as they change (see
    /// [`Membership::take_views`]).
    views: Option<mpsc::UnboundedReceiver<(String, u64)>>,
    /// The latest confirmed view of every other replica.
    known_views: std::sync::Arc<std::sync::Mutex<BTreeMap<String, u64>>>,
    /// This replica's confirmations, to its task.
    confirm: mpsc::UnboundedSender<u64>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
    kv: Store,
    key: String,
    /// With [`Membership::join_on_own_thread`]: dropping it ends that thread
    /// (its runtime, and the connection made there).
    thread: Option<oneshot::Sender<()>>,
}

impl Membership {
    /// As [`Membership::join`], on a thread of its own: `connect` makes a NATS
    /// connection there, on a single-threaded runtime that runs only the
    /// heartbeats and the watch (and that connection), so they keep their
    /// rhythm however busy the caller's runtime is. On a loaded machine a
    /// replica's heartbeats had queued behind its device traffic for longer
    /// than the expiry: the others took it for dead and served its endpoints
    /// while it still did (ROBUSTNESS.md, known gaps). The thread ends when the
    /// membership is left or dropped.
    pub async fn join_on_own_thread<C, F>(
        connect: C,
        replica_id: &str,
        config: &MembershipConfig,
    ) -> Result<Self, MembershipError>
    where
        C: FnOnce() -> F + Send + 'static,
        F: std::future::Future<Output = Result<async_nats::Client, String>>,
    {
        let (joined_tx, joined) = oneshot::channel();
        let (guard, ended) = oneshot::channel::<()>();
        let replica_id = replica_id.to_owned();
        let config = config.clone();
        let connect_error = |message: String| MembershipError::Connect { message };
        std::thread::Builder::new()
            .name(format!("membership-{replica_id}"))
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = joined_tx.send(Err(connect_error(e.to_string())));
                        return;
                    }
                };
                runtime.block_on(async move {
                    let joined = match connect().await {
                        Ok(client) => Membership::join(client, &replica_id, &config).await,
                        Err(message) => Err(connect_error(message)),
                    };
                    let ok = joined.is_ok();
                    if joined_tx.send(joined).is_ok() && ok {
                        // Run the heartbeats and the connection until the
                        // membership is left or dropped.
                        let _ = ended.await;
                    }
                });
            })
            .map_err(|e| connect_error(e.to_string()))?;
        let mut membership = joined
            .await
            .map_err(|_| connect_error("the membership thread ended".into()))??;
        membership.thread = Some(guard);
        Ok(membership)
    }

    /// Creates the bucket if needed, puts this replica's key, reads the live
    /// members and starts heartbeats and the watch. `client` is a NATS
    /// connection with JetStream (e.g. `kaa_bus::NatsBus::client`).
    pub async fn join(
        client: async_nats::Client,
        replica_id: &str,
        config: &MembershipConfig,
    ) -> Result<Self, MembershipError> {
        let bucket_error = |message: String| MembershipError::Bucket {
            bucket: config.bucket.clone(),
            message,
        };
        let js = jetstream::new(client);
        js.get_or_create_stream(stream_config(config))
            .await
            .map_err(|e| bucket_error(e.to_string()))?;
        let kv = js
            .get_key_value(config.bucket.as_str())
            .await
            .map_err(|e| bucket_error(e.to_string()))?;
        let key = replica_id.to_owned();
        let key_error = |e: &dyn std::fmt::Display| MembershipError::Key {
            key: key.clone(),
            message: e.to_string(),
        };
        kv.put(&key, key_value(&key, None).into())
            .await
            .map_err(|e| key_error(&e))?;
        let mut watch_stream = kv.watch_all().await.map_err(|e| key_error(&e))?;
        // The current keys: everything up to the latest (delta 0), or what
        // came within the expiry. The wait ends as soon as the watch reaches
        // our own put (it always comes), so it is short unless the stream is
        // slow; a joiner that stopped early would take itself for the only
        // member and serve every endpoint until the others' keys arrived (found
        // by `fault_replicas` cmx-kill in CI: a restarted replica saw itself
        // alone for 0.7 s, both pushed, devices got older configurations).
        let mut seen: BTreeMap<String, Instant> = BTreeMap::new();
        let known_views = std::sync::Arc::new(std::sync::Mutex::new(BTreeMap::new()));
        let (views_tx, views) = mpsc::unbounded_channel();
        let initial_deadline = Instant::now() + config.expiry.max(Duration::from_millis(500));
        loop {
            let next = tokio::time::timeout_at(initial_deadline, watch_stream.next()).await;
            let Ok(Some(Ok(entry))) = next else { break };
            apply(&mut seen, &entry.key, entry.operation);
            note_view(&known_views, &views_tx, &key, &entry);
            if entry.delta == 0 {
                break;
            }
        }
        // Our own put is live, whether or not the watch has shown it yet.
        seen.insert(key.clone(), Instant::now());
        let (tx, rx) = watch::channel(live(&seen));
        let (changes_tx, changes) = mpsc::unbounded_channel();
        // The first "change" is the list read on joining.
        let _ = changes_tx.send(live(&seen));
        let (stop, stopped) = oneshot::channel();
        let (confirm, confirmed) = mpsc::unbounded_channel();
        let task = tokio::spawn(run(
            kv.clone(),
            key.clone(),
            config.clone(),
            seen,
            watch_stream,
            Reports {
                members: tx,
                changes: changes_tx,
                views: views_tx,
                known_views: known_views.clone(),
            },
            Commands { confirmed, stopped },
        ));
        tracing::info!(
            bucket = %config.bucket,
            replica = %key,
            members = ?rx.borrow().as_slice(),
            "joined the CMX replicas"
        );
        Ok(Membership {
            members: rx,
            changes: Some(changes),
            views: Some(views),
            known_views,
            confirm,
            stop: Some(stop),
            task: Some(task),
            kv,
            key,
            thread: None,
        })
    }

    /// The live members now (sorted replica IDs).
    pub fn members(&self) -> Vec<String> {
        self.members.borrow().clone()
    }

    /// A receiver of the latest live members (intermediate lists may be
    /// skipped: for observers).
    pub fn subscribe(&self) -> watch::Receiver<Vec<String>> {
        self.members.clone()
    }

    /// The live members read on joining, then every change, in order, none
    /// skipped (once; `None` after the first call). The engine
    /// needs each one: a replica that joined and died in between may have
    /// served endpoints, and seeing it leave is what makes the others take
    /// them over.
    pub fn take_changes(&mut self) -> Option<mpsc::UnboundedReceiver<Vec<String>>> {
        self.changes.take()
    }

    /// The other replicas' confirmed views (replica ID and the
    /// [`kaa_cmp::engine::membership_view`] it applied) as their keys change
    /// (once; `None` after the first call), for [`kaa_cmp::Input::MemberView`].
    pub fn take_views(&mut self) -> Option<mpsc::UnboundedReceiver<(String, u64)>> {
        self.views.take()
    }

    /// The latest confirmed view of every other replica whose key has one.
    /// A driver passes them all to the engine after each member list it
    /// applies (the engine takes confirmations from members only).
    pub fn known_views(&self) -> Vec<(String, u64)> {
        match self.known_views.lock() {
            Ok(views) => views.iter().map(|(k, v)| (k.clone(), *v)).collect(),
            Err(_) => Vec::new(),
        }
    }

    /// Confirms that this replica applied the member list whose view is
    /// `view` and that what it sent before is at the server: its key is put
    /// at once with the view in its value (and every heartbeat keeps it).
    pub fn confirm_view(&self, view: u64) {
        let _ = self.confirm.send(view);
    }

    /// Leaves: stops the heartbeats and deletes this replica's key, so that the
    /// other replicas take its endpoints over at once.
    pub async fn leave(mut self) -> Result<(), MembershipError> {
        self.stop_task().await;
        self.kv
            .delete(&self.key)
            .await
            .map_err(|e| MembershipError::Key {
                key: self.key.clone(),
                message: e.to_string(),
            })?;
        tracing::info!(replica = %self.key, "left the CMX replicas");
        Ok(())
    }

    /// Stops the heartbeats without deleting the key, as a crash would: the
    /// other replicas take over once it expires. For tests.
    pub async fn abandon(mut self) {
        self.stop_task().await;
    }

    async fn stop_task(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// The bucket's stream, as `async-nats`'s `create_key_value` configures it
/// (history 1, rollups, no deletes, direct gets, discard new, a duplicate
/// window no longer than the expiry).
fn stream_config(config: &MembershipConfig) -> jetstream::stream::Config {
    jetstream::stream::Config {
        name: format!("KV_{}", config.bucket),
        subjects: vec![format!("$KV.{}.>", config.bucket)],
        max_messages_per_subject: 1,
        max_age: config.expiry,
        duplicate_window: config.expiry.min(Duration::from_secs(120)),
        num_replicas: config.stream_replicas.max(1),
        storage: jetstream::stream::StorageType::Memory,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        discard: jetstream::stream::DiscardPolicy::New,
        ..Default::default()
    }
}

/// A key's value: `<replica>`, and ` view=<16 hex digits>` once it applied a
/// member list.
fn key_value(replica: &str, view: Option<u64>) -> String {
    match view {
        Some(view) => format!("{replica} view={view:016x}"),
        None => replica.to_owned(),
    }
}

/// The view a key's value confirms, if any.
fn parse_view(value: &[u8]) -> Option<u64> {
    let value = std::str::from_utf8(value).ok()?;
    let (_, hex) = value.rsplit_once(" view=")?;
    if hex.len() != 16 {
        return None;
    }
    u64::from_str_radix(hex, 16).ok()
}

/// Records another replica's confirmed view from a watched entry and reports
/// it when it changed.
fn note_view(
    known: &std::sync::Mutex<BTreeMap<String, u64>>,
    report: &mpsc::UnboundedSender<(String, u64)>,
    own: &str,
    entry: &jetstream::kv::Entry,
) {
    if entry.key == own {
        return;
    }
    let Ok(mut known) = known.lock() else {
        return;
    };
    match (entry.operation, parse_view(&entry.value)) {
        (Operation::Put, Some(view)) => {
            if known.insert(entry.key.clone(), view) != Some(view) {
                let _ = report.send((entry.key.clone(), view));
            }
        }
        (Operation::Put, None) => {
            known.remove(&entry.key);
        }
        (Operation::Delete | Operation::Purge, _) => {
            known.remove(&entry.key);
        }
    }
}

/// What the task is told: views to confirm, and to stop.
struct Commands {
    confirmed: mpsc::UnboundedReceiver<u64>,
    stopped: oneshot::Receiver<()>,
}

/// Where the task reports what it sees.
struct Reports {
    members: watch::Sender<Vec<String>>,
    changes: mpsc::UnboundedSender<Vec<String>>,
    views: mpsc::UnboundedSender<(String, u64)>,
    known_views: std::sync::Arc<std::sync::Mutex<BTreeMap<String, u64>>>,
}

fn apply(seen: &mut BTreeMap<String, Instant>, key: &str, op: Operation) {
    match op {
        Operation::Put => {
            seen.insert(key.to_owned(), Instant::now());
        }
        Operation::Delete | Operation::Purge => {
            seen.remove(key);
        }
    }
}

/// Removes the members whose last put came `expiry` or more before this
/// replica's own last put as the watch delivered it (`own`'s entry; `now` when
/// it has none), and returns them. This replica never expires itself.
///
/// Measured against its own put, not the clock: when the bucket's stream stalls
/// (e.g. its leader's node was killed and the cluster elects another; seen for
/// 8 s in `fault_replicas`, nats-node-kill) no put reaches any watcher, and an
/// expiry by the clock made every replica drop every member at once: with no
/// members each one served every endpoint and they pushed over each other
/// (devices got older configurations after newer ones). A replica that cannot
/// see its own heartbeats cannot tell a dead member from a stalled watch, so
/// it keeps the members it had until its own puts come through again.
fn expire(
    seen: &mut BTreeMap<String, Instant>,
    own: &str,
    expiry: Duration,
    now: Instant,
) -> Vec<String> {
    let reference = seen.get(own).copied().unwrap_or(now);
    let mut expired = Vec::new();
    seen.retain(|k, at| {
        let alive = k == own || reference.saturating_duration_since(*at) < expiry;
        if !alive {
            expired.push(k.clone());
        }
        alive
    });
    expired
}

fn live(seen: &BTreeMap<String, Instant>) -> Vec<String> {
    seen.keys().cloned().collect()
}

/// Heartbeats, the watch and expiry, until told to stop.
async fn run(
    kv: Store,
    key: String,
    config: MembershipConfig,
    mut seen: BTreeMap<String, Instant>,
    mut watch_stream: jetstream::kv::Watch,
    reports: Reports,
    commands: Commands,
) {
    let Commands {
        mut confirmed,
        mut stopped,
    } = commands;
    let Reports {
        members: tx,
        changes,
        views,
        known_views,
    } = reports;
    let mut view: Option<u64> = None;
    let mut heartbeat = tokio::time::interval(config.heartbeat);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut prune = tokio::time::interval((config.heartbeat / 2).max(Duration::from_millis(50)));
    prune.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = &mut stopped => break,
            _ = heartbeat.tick() => {
                if let Err(e) = kv.put(&key, key_value(&key, view).into()).await {
                    tracing::warn!(replica = %key, error = %e, "membership heartbeat failed");
                }
            }
            Some(applied) = confirmed.recv() => {
                // The newest confirmation wins (several may be queued).
                let mut latest = applied;
                while let Ok(next) = confirmed.try_recv() {
                    latest = next;
                }
                view = Some(latest);
                if let Err(e) = kv.put(&key, key_value(&key, view).into()).await {
                    tracing::warn!(replica = %key, error = %e, "membership view confirmation failed");
                }
            }
            entry = watch_stream.next() => match entry {
                Some(Ok(entry)) => {
                    apply(&mut seen, &entry.key, entry.operation);
                    note_view(&known_views, &views, &key, &entry);
                }
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "membership watch error");
                }
                None => {
                    // The watch ended (e.g. the connection was lost): watch again.
                    tokio::time::sleep(config.heartbeat).await;
                    match kv.watch_all().await {
                        Ok(w) => watch_stream = w,
                        Err(e) => tracing::warn!(error = %e, "membership watch failed"),
                    }
                }
            },
            _ = prune.tick() => {
                for k in expire(&mut seen, &key, config.expiry, Instant::now()) {
                    tracing::info!(replica = %k, "CMX replica expired");
                    if let Ok(mut known) = known_views.lock() {
                        known.remove(&k);
                    }
                }
            }
        }
        let members = live(&seen);
        let before = tx.borrow().clone();
        if before != members {
            let left: BTreeSet<&String> = before.iter().filter(|m| !members.contains(m)).collect();
            tracing::info!(?members, ?left, "CMX replicas changed");
            let _ = changes.send(members.clone());
            let _ = tx.send(members);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_expire_against_this_replicas_own_heartbeat() {
        let expiry = Duration::from_secs(5);
        let t0 = Instant::now();
        let mut seen: BTreeMap<String, Instant> = [("a", t0), ("b", t0), ("c", t0)]
            .into_iter()
            .map(|(k, t)| (k.to_owned(), t))
            .collect();
        // The watch stalls: nobody's put arrives, ours neither. Nobody expires,
        // however long it lasts.
        assert!(expire(&mut seen, "a", expiry, t0 + Duration::from_secs(60)).is_empty());
        assert_eq!(live(&seen), ["a", "b", "c"]);
        // Our puts come through again, b's too; c stays silent: c expires once
        // our own put is `expiry` past its last one.
        let t1 = t0 + Duration::from_secs(61);
        seen.insert("a".into(), t1);
        seen.insert("b".into(), t1);
        assert_eq!(expire(&mut seen, "a", expiry, t1), ["c"]);
        assert_eq!(live(&seen), ["a", "b"]);
        // Ours missing (deleted): measured against the clock.
        seen.remove("a");
        assert_eq!(expire(&mut seen, "a", expiry, t1 + expiry), ["b"]);
    }

    #[test]
    fn a_keys_value_carries_the_confirmed_view() {
        assert_eq!(key_value("cmx-1", None), "cmx-1");
        let v = key_value("cmx-1", Some(0x0123_4567_89ab_cdef));
        assert_eq!(v, "cmx-1 view=0123456789abcdef");
        assert_eq!(parse_view(v.as_bytes()), Some(0x0123_4567_89ab_cdef));
        // An earlier version's value, or garbage: no confirmation.
        assert_eq!(parse_view(b"cmx-1"), None);
        assert_eq!(parse_view(b"cmx-1 view=12"), None);
        assert_eq!(parse_view(b"cmx-1 view=zzzzzzzzzzzzzzzz"), None);
        assert_eq!(parse_view(&[0xff, 0xfe]), None);
    }

    #[test]
    fn bucket_names() {
        assert_eq!(default_bucket("cmx"), "kaa_cmx_cmx");
        assert_eq!(default_bucket("a~b"), "kaa_cmx_a_b");
        assert!(is_valid_bucket("kaa_cmx_cmx-2"));
        assert!(!is_valid_bucket("a.b"));
        assert!(!is_valid_bucket(""));
        let c = MembershipConfig::new("cmx");
        let s = stream_config(&c);
        assert_eq!(s.name, "KV_kaa_cmx_cmx");
        assert_eq!(s.subjects, ["$KV.kaa_cmx_cmx.>"]);
        assert_eq!(s.max_age, c.expiry);
        assert!(s.duplicate_window <= s.max_age);
    }
}
