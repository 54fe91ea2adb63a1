//! The state KPC's sessions share: who owns which endpoint, which session has
//! which MQTT client ID, and the ordered queue of 9/ELCE connectivity events.
//!
//! Every change of ownership happens under one lock, and the event it causes is
//! queued under that same lock, so the events leave KPC in the order the
//! ownership changed (a `disconnected` of a session that lost an endpoint can never
//! overtake the `connected` of the session that took it).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use kaa_esp::ExtensionData;
use tokio::sync::{mpsc, oneshot};

use crate::mailbox::Mailbox;

/// An endpoint ID → app version pair as 9/ELCE events carry it.
pub(crate) type EndpointEntry = (Arc<str>, Arc<str>);

/// What the bus side sends to a session.
#[derive(Debug)]
pub(crate) enum Command {
    /// An ExtensionData for an endpoint this session owns (boxed: a queued
    /// command is as large as the largest variant).
    Deliver(Box<ExtensionData<'static>>),
    /// The endpoint's tokens were revoked: forget them (the next use is
    /// resolved again, and refused).
    Revoke(Arc<str>),
}

/// How to reach a session.
#[derive(Debug, Clone)]
pub(crate) struct SessionHandle {
    /// Unique per process.
    pub(crate) id: u64,
    /// Deliveries, revocations and the order to close (its MQTT client ID was
    /// taken over).
    pub(crate) tx: Mailbox,
}

/// A 9/ELCE connectivity event to publish.
#[derive(Debug)]
pub(crate) enum EventOut {
    /// `connected`; `done` fires once it is published (or failed).
    Connected {
        endpoints: Vec<EndpointEntry>,
        /// When the session took the endpoints (Unix ms): the event's
        /// `timestamp`, which other replicas compare with their own sessions
        /// (see [`Hub::yield_to`]).
        timestamp: i64,
        done: oneshot::Sender<()>,
    },
    /// `disconnected`.
    Disconnected { endpoints: Vec<EndpointEntry> },
    /// Not an event: fires once everything queued before it is published.
    Flush(oneshot::Sender<()>),
}

#[derive(Debug)]
struct Owner {
    session: SessionHandle,
    app_version: Arc<str>,
    /// When the session took the endpoint (Unix ms; the `timestamp` of its
    /// `connected` event).
    since: i64,
    /// (extension instance, resource path) the owning session has used, for a
    /// CMX's sessions request; at most [`MAX_RESOURCES_PER_ENDPOINT`].
    resources: Vec<(Box<str>, Box<str>)>,
}

/// The most (extension, resource path) pairs remembered per endpoint.
pub(crate) const MAX_RESOURCES_PER_ENDPOINT: usize = 64;

#[derive(Debug, Default)]
struct State {
    owners: HashMap<Arc<str>, Owner>,
    clients: HashMap<String, SessionHandle>,
}

/// The shared state.
#[derive(Debug)]
pub(crate) struct Hub {
    state: Mutex<State>,
    events: mpsc::UnboundedSender<EventOut>,
    next_session: AtomicU64,
}

/// The result of [`Hub::claim`].
#[derive(Debug)]
pub(crate) enum Claim {
    /// The session already owned the endpoint.
    Owned,
    /// The session now owns it; a `connected` event is queued, and the receiver
    /// fires once it is published.
    New(oneshot::Receiver<()>),
}

impl Hub {
    pub(crate) fn new(events: mpsc::UnboundedSender<EventOut>) -> Self {
        Hub {
            state: Mutex::new(State::default()),
            events,
            next_session: AtomicU64::new(1),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the maps half-updated in a
        // way that matters more than losing the whole service; keep going.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn next_session_id(&self) -> u64 {
        self.next_session.fetch_add(1, Ordering::Relaxed)
    }

    /// Registers `session` under its MQTT client ID; a previous session with the
    /// same client ID is told to close (MQTT 3.1.1, 3.1.4-2).
    pub(crate) fn register_client(&self, client_id: &str, session: &SessionHandle) {
        let previous = self
            .lock()
            .clients
            .insert(client_id.to_owned(), session.clone());
        if let Some(previous) = previous
            && previous.id != session.id
        {
            previous.tx.kill();
        }
    }

    /// Makes `session` the owner of `endpoint_id`. A session that owned it before
    /// loses it silently (its `disconnected` event will not list it).
    pub(crate) fn claim(
        &self,
        endpoint_id: &Arc<str>,
        app_version: &Arc<str>,
        session: &SessionHandle,
    ) -> Claim {
        let mut state = self.lock();
        if state
            .owners
            .get(endpoint_id)
            .is_some_and(|o| o.session.id == session.id)
        {
            return Claim::Owned;
        }
        let since = kaa_service::now().0;
        state.owners.insert(
            Arc::clone(endpoint_id),
            Owner {
                session: session.clone(),
                app_version: Arc::clone(app_version),
                since,
                resources: Vec::new(),
            },
        );
        let (done, rx) = oneshot::channel();
        // Queued under the lock: ordered with every other ownership change.
        let _ = self.events.send(EventOut::Connected {
            endpoints: vec![(Arc::clone(endpoint_id), Arc::clone(app_version))],
            timestamp: since,
            done,
        });
        Claim::New(rx)
    }

    /// Ends a session: releases the endpoints among `endpoints` it still owns
    /// (queuing one `disconnected` event listing them) and its client ID.
    /// Returns the endpoints released.
    pub(crate) fn end_session<'a>(
        &self,
        session_id: u64,
        client_id: &str,
        endpoints: impl IntoIterator<Item = &'a Arc<str>>,
    ) -> Vec<EndpointEntry> {
        let mut state = self.lock();
        let mut released = Vec::new();
        for endpoint_id in endpoints {
            if state
                .owners
                .get(endpoint_id)
                .is_some_and(|o| o.session.id == session_id)
                && let Some(owner) = state.owners.remove(endpoint_id)
            {
                released.push((Arc::clone(endpoint_id), owner.app_version));
            }
        }
        if state
            .clients
            .get(client_id)
            .is_some_and(|s| s.id == session_id)
        {
            state.clients.remove(client_id);
        }
        if !released.is_empty() {
            let _ = self.events.send(EventOut::Disconnected {
                endpoints: released.clone(),
            });
        }
        released
    }

    /// Another replica of this KPC instance, `replica`, reports (9/ELCE
    /// `connected` with `timestamp`) that a session of its own took
    /// `endpoint_id`. When that session is newer than the local owner's, the
    /// local session loses the endpoint silently, as to a newer session of this
    /// replica ([`Hub::claim`]): no event (the other replica has published
    /// `connected`), and the local session's `disconnected` will not list it.
    ///
    /// Newer means a greater (`timestamp`, replica ID) pair, the local one being
    /// (the local claim's time, `local_replica`): every replica compares the same
    /// pairs, so exactly one session wins, whatever order the events arrive in.
    /// Returns whether the local session lost the endpoint.
    pub(crate) fn yield_to(
        &self,
        endpoint_id: &str,
        timestamp: i64,
        replica: &str,
        local_replica: &str,
    ) -> bool {
        let mut state = self.lock();
        let newer = state
            .owners
            .get(endpoint_id)
            .is_some_and(|o| (timestamp, replica) > (o.since, local_replica));
        if newer {
            state.owners.remove(endpoint_id);
        }
        newer
    }

    /// Another replica of this KPC instance published `disconnected` listing
    /// `endpoint_id` while a session here owns it: that replica's session ended
    /// before it learned of ours, and an extension that receives its
    /// `disconnected` after our `connected` would take the device for offline.
    /// Queues our `connected` again, with the timestamp of the original claim (so
    /// that other replicas compare the same session). Returns whether it did.
    pub(crate) fn reannounce(&self, endpoint_id: &str) -> bool {
        let state = self.lock();
        let Some((id, owner)) = state.owners.get_key_value(endpoint_id) else {
            return false;
        };
        let (done, _) = oneshot::channel();
        // Queued under the lock: ordered with every other ownership change.
        let _ = self.events.send(EventOut::Connected {
            endpoints: vec![(Arc::clone(id), Arc::clone(&owner.app_version))],
            timestamp: owner.since,
            done,
        });
        true
    }

    /// This replica's bus connection came back after an outage: whatever the
    /// extensions sent its sessions meanwhile was lost (NATS drops messages for a
    /// subscriber that is not connected), and an extension whose own connection
    /// stayed up does not know. Queues `connected` again for every endpoint a
    /// session here owns, each with the timestamp of its claim (as
    /// [`Hub::reannounce`]), so that CMX pushes what its devices have not
    /// reported applied. Returns how many.
    pub(crate) fn reannounce_all(&self) -> usize {
        let state = self.lock();
        for (id, owner) in &state.owners {
            let (done, _) = oneshot::channel();
            // Queued under the lock: ordered with every other ownership change.
            let _ = self.events.send(EventOut::Connected {
                endpoints: vec![(Arc::clone(id), Arc::clone(&owner.app_version))],
                timestamp: owner.since,
                done,
            });
        }
        state.owners.len()
    }

    /// The endpoint's tokens were revoked: no session of this replica owns it any
    /// more (a `disconnected` event is queued when one did). Returns the session
    /// that owned it, to be told to forget the endpoint's tokens.
    pub(crate) fn revoke(&self, endpoint_id: &str) -> Option<SessionHandle> {
        let mut state = self.lock();
        let (id, owner) = state.owners.remove_entry(endpoint_id)?;
        let _ = self.events.send(EventOut::Disconnected {
            endpoints: vec![(id, owner.app_version)],
        });
        Some(owner.session)
    }

    /// The session that owns `endpoint_id`, if any.
    pub(crate) fn route(&self, endpoint_id: &str) -> Option<SessionHandle> {
        self.lock()
            .owners
            .get(endpoint_id)
            .map(|o| o.session.clone())
    }

    /// Remembers that session `session_id`, owner of `endpoint_id`, used
    /// `resource_path` with extension `ext` (called once per new triple).
    pub(crate) fn note_resource(
        &self,
        endpoint_id: &str,
        session_id: u64,
        ext: &str,
        resource_path: &str,
    ) {
        let mut state = self.lock();
        let Some(owner) = state
            .owners
            .get_mut(endpoint_id)
            .filter(|o| o.session.id == session_id)
        else {
            return;
        };
        let known = owner
            .resources
            .iter()
            .any(|(e, p)| &**e == ext && &**p == resource_path);
        if !known && owner.resources.len() < MAX_RESOURCES_PER_ENDPOINT {
            owner.resources.push((ext.into(), resource_path.into()));
        }
    }

    /// Every endpoint owned by some session, with its app version and the
    /// resource paths its session used with extension `ext` (for a CMX's sessions
    /// request).
    pub(crate) fn sessions_for(&self, ext: &str) -> Vec<(EndpointEntry, Vec<String>)> {
        self.lock()
            .owners
            .iter()
            .map(|(id, o)| {
                let paths = o
                    .resources
                    .iter()
                    .filter(|(e, _)| &**e == ext)
                    .map(|(_, p)| p.to_string())
                    .collect();
                ((Arc::clone(id), Arc::clone(&o.app_version)), paths)
            })
            .collect()
    }

    /// How many endpoints are owned by some session.
    #[cfg(test)]
    pub(crate) fn endpoint_count(&self) -> usize {
        self.lock().owners.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handle(hub: &Hub) -> (SessionHandle, crate::mailbox::Inbox) {
        let (tx, rx) = crate::mailbox::mailbox();
        (
            SessionHandle {
                id: hub.next_session_id(),
                tx,
            },
            rx,
        )
    }

    #[test]
    fn takeover_and_release_keep_events_consistent() {
        let (etx, mut erx) = mpsc::unbounded_channel();
        let hub = Hub::new(etx);
        let (a, _ra) = handle(&hub);
        let (b, _rb) = handle(&hub);
        let ep1: Arc<str> = "ep-1".into();
        let ep2: Arc<str> = "ep-2".into();
        let v: Arc<str> = "v1".into();
        assert!(matches!(hub.claim(&ep1, &v, &a), Claim::New(_)));
        assert!(matches!(hub.claim(&ep1, &v, &a), Claim::Owned));
        assert!(matches!(hub.claim(&ep2, &v, &a), Claim::New(_)));
        // B takes ep-1 over.
        assert!(matches!(hub.claim(&ep1, &v, &b), Claim::New(_)));
        assert_eq!(hub.route("ep-1").unwrap().id, b.id);
        // A ends: only ep-2 is released.
        let released = hub.end_session(a.id, "a", [&ep1, &ep2]);
        assert_eq!(released, vec![(ep2.clone(), v.clone())]);
        let kinds: Vec<String> = std::iter::from_fn(|| erx.try_recv().ok())
            .map(|e| match e {
                EventOut::Connected { endpoints, .. } => format!("+{}", endpoints[0].0),
                EventOut::Disconnected { endpoints } => format!(
                    "-{}",
                    endpoints
                        .iter()
                        .map(|e| e.0.to_string())
                        .collect::<Vec<_>>()
                        .join(",")
                ),
                EventOut::Flush(_) => "flush".to_owned(),
            })
            .collect();
        assert_eq!(kinds, ["+ep-1", "+ep-2", "+ep-1", "-ep-2"]);
        assert_eq!(hub.endpoint_count(), 1);
        // Ending B releases ep-1; ending it again releases nothing.
        assert_eq!(hub.end_session(b.id, "b", [&ep1]).len(), 1);
        assert!(hub.end_session(b.id, "b", [&ep1]).is_empty());
        assert!(hub.route("ep-1").is_none());
    }

    #[test]
    fn a_newer_session_on_another_replica_takes_the_endpoint() {
        let (etx, mut erx) = mpsc::unbounded_channel();
        let hub = Hub::new(etx);
        let (a, _ra) = handle(&hub);
        let ep: Arc<str> = "ep-1".into();
        let v: Arc<str> = "v1".into();
        assert!(matches!(hub.claim(&ep, &v, &a), Claim::New(_)));
        let Some(EventOut::Connected { timestamp, .. }) = erx.try_recv().ok() else {
            panic!("a connected event");
        };
        // An older session elsewhere (or the same time, a smaller replica ID):
        // ours stays.
        assert!(!hub.yield_to("ep-1", timestamp - 1, "r-b", "r-a"));
        assert!(!hub.yield_to("ep-1", timestamp, "r-0", "r-a"));
        assert!(!hub.yield_to("ep-other", timestamp + 1, "r-b", "r-a"));
        assert_eq!(hub.route("ep-1").unwrap().id, a.id);
        // A newer one: ours loses the endpoint, silently.
        assert!(hub.yield_to("ep-1", timestamp, "r-b", "r-a"));
        assert!(hub.route("ep-1").is_none());
        assert!(hub.end_session(a.id, "a", [&ep]).is_empty());
        assert!(erx.try_recv().is_err(), "no disconnected event");
        // Using the token again takes it back.
        assert!(matches!(hub.claim(&ep, &v, &a), Claim::New(_)));
        let Some(EventOut::Connected {
            timestamp: claimed, ..
        }) = erx.try_recv().ok()
        else {
            panic!("a connected event");
        };
        // Another replica's `disconnected` for it: `connected` again, same claim.
        assert!(!hub.reannounce("ep-other"));
        assert!(hub.reannounce("ep-1"));
        match erx.try_recv() {
            Ok(EventOut::Connected {
                endpoints,
                timestamp,
                ..
            }) => {
                assert_eq!(endpoints, vec![(ep.clone(), v.clone())]);
                assert_eq!(timestamp, claimed);
            }
            other => panic!("expected connected, got {other:?}"),
        }
    }

    #[test]
    fn after_a_bus_outage_every_owned_endpoint_is_announced_again() {
        let (etx, mut erx) = mpsc::unbounded_channel();
        let hub = Hub::new(etx);
        let (a, _ra) = handle(&hub);
        let v: Arc<str> = "v1".into();
        let mut claimed = std::collections::BTreeMap::new();
        for ep in ["ep-1", "ep-2"] {
            let ep: Arc<str> = ep.into();
            assert!(matches!(hub.claim(&ep, &v, &a), Claim::New(_)));
            let Some(EventOut::Connected { timestamp, .. }) = erx.try_recv().ok() else {
                panic!("a connected event");
            };
            claimed.insert(ep, timestamp);
        }
        assert_eq!(hub.reannounce_all(), 2);
        let mut again = std::collections::BTreeMap::new();
        while let Ok(EventOut::Connected {
            endpoints,
            timestamp,
            ..
        }) = erx.try_recv()
        {
            assert_eq!(endpoints.len(), 1);
            assert_eq!(endpoints[0].1, v);
            again.insert(endpoints[0].0.clone(), timestamp);
        }
        assert_eq!(
            again, claimed,
            "each endpoint once, with its claim's timestamp"
        );
    }

    #[tokio::test]
    async fn a_second_client_id_kills_the_first() {
        let (etx, _erx) = mpsc::unbounded_channel();
        let hub = Hub::new(etx);
        let (a, mut ra) = handle(&hub);
        let (b, mut rb) = handle(&hub);
        hub.register_client("dev", &a);
        hub.register_client("dev", &b);
        // The order is kept: A's next wait returns at once.
        let killed = tokio::time::timeout(std::time::Duration::from_secs(1), ra.recv())
            .await
            .unwrap();
        assert!(matches!(killed, crate::mailbox::Received::Kill));
        assert!(rb.try_recv().is_none(), "B is not told to close");
        // A ending does not unregister B.
        hub.end_session(a.id, "dev", []);
        hub.register_client("dev", &a);
        let killed = tokio::time::timeout(std::time::Duration::from_secs(1), rb.recv())
            .await
            .unwrap();
        assert!(matches!(killed, crate::mailbox::Received::Kill));
    }
}
