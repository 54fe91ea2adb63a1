//! KPC on the message bus: the 4/ESP `ExtensionData` listener and the 9/ELCE
//! connectivity event publisher.
//!
//! - `ExtensionData` arrives on the instance-wide subject
//!   `kaa.v1.service.<instance>.esp.ExtensionData` (queue group `<instance>`, so
//!   that one replica takes each) and on the replica subject
//!   `kaa.v1.replica.<replica>.esp.ExtensionData` (the `replyTo` of every
//!   `ClientData` this replica forwards). Each is decoded and handed to the session
//!   that owns its endpoint. When none does, it is handed over on
//!   `kaa.v1.service.<instance>.kpc.handover` (every replica subscribes, no queue
//!   group), where the replica holding the endpoint delivers it and answers; see
//!   *Several replicas* in the [crate docs](super).
//! - 9/ELCE connectivity events of this instance from other replicas
//!   (`kaa.v1.events.<instance>.endpoint.connectivity.*`, no queue group): a
//!   session here loses an endpoint a newer session there took (`connected`,
//!   `Hub::yield_to`), and publishes `connected` again for an endpoint it holds
//!   that another replica reports `disconnected` (`Hub::reannounce`).
//! - **Bus reconnects**: when this replica's NATS connection comes back (its
//!   node died, the others stayed up), what the extensions sent its sessions
//!   meanwhile is lost and extensions whose connections stayed up do not know;
//!   it publishes `connected` again for every endpoint it holds, with the
//!   claim's timestamp (`Hub::reannounce_all`), and CMX pushes what the devices
//!   have not reported applied (found by `fault_replicas`, nats-node-kill).
//! - **Sessions requests** ([`kaa_elce::SessionsRequest`] on
//!   `kaa.v1.service.<instance>.elce.SessionsRequest`, no queue group: every
//!   replica answers for its own sessions; see [`kaa_elce::sessions`], a kaa-rs
//!   extension to 9/ELCE): a CMX that restarted, or whose bus reconnected, asks which
//!   endpoints have sessions, naming its extension instance. The answer goes to the
//!   request's `replyTo` as [`kaa_elce::SessionsResponse`]s of at most
//!   [`SESSIONS_PER_ANSWER`] endpoints each (none when there are no sessions), with
//!   the request's `correlationId` and `timeout`, this replica as
//!   `originatorReplicaId`, and per endpoint the resource paths the session used
//!   with that extension instance. An expired or undecodable request is dropped.
//! - `connected` / `disconnected` go out on
//!   `kaa.v1.events.<instance>.endpoint.connectivity.{connected,disconnected}`, in
//!   the order the sessions' ownership changes happened, with `originatorReplicaId`
//!   = the replica ID, a fresh UUID as `correlationId` and `timeout` 0.

use std::borrow::Cow;
use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use kaa_bus::{BusError, Message};
use kaa_elce::{
    ConnectedEvent, DisconnectedEvent, ElceEvent, EndpointEvent, EndpointSession, EventGroup,
    SessionsRequest, SessionsResponse,
};
use kaa_esp::ExtensionData;
use kaa_esp::subject::{ListenerFilters, MessageType};
use kaa_ism::avro::{Decode, Encode};
use kaa_ism::common::CommonFields;
use kaa_ism::subject::Token;
use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::mailbox::SendError;
use tokio::task::{JoinHandle, JoinSet};

use super::Shared;
use super::hub::{Command, EndpointEntry, EventOut};

use kaa_service::now;

/// How long a replica waits for another to take an ExtensionData it handed over.
pub(crate) const HANDOVER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

/// The most handovers waiting for an answer at once.
pub(crate) const MAX_HANDOVERS: usize = 1024;

/// The most endpoints one answer to a sessions request lists.
pub(crate) const SESSIONS_PER_ANSWER: usize = 500;

/// The bus-side tasks of a running KPC.
#[derive(Debug)]
pub(crate) struct BusTasks {
    listener: JoinHandle<()>,
    other_replicas: JoinHandle<()>,
    sessions: JoinHandle<()>,
    reconnects: JoinHandle<()>,
    publisher: JoinHandle<()>,
    events: mpsc::UnboundedSender<EventOut>,
}

impl BusTasks {
    /// Waits until every event queued so far is published, then stops both tasks.
    pub(crate) async fn shutdown(self) {
        self.listener.abort();
        self.other_replicas.abort();
        self.sessions.abort();
        self.reconnects.abort();
        let (done, flushed) = oneshot::channel();
        if self.events.send(EventOut::Flush(done)).is_ok() {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), flushed).await;
        }
        self.publisher.abort();
    }
}

/// Subscribes to ExtensionData and starts the listener and the event publisher.
pub(crate) async fn start(
    shared: Arc<Shared>,
    events_tx: mpsc::UnboundedSender<EventOut>,
    events_rx: mpsc::UnboundedReceiver<EventOut>,
) -> Result<BusTasks, super::StartError> {
    let settings = &shared.settings;
    let filters = ListenerFilters::new(
        &settings.instance,
        &settings.replica_id,
        MessageType::ExtensionData,
    )
    .map_err(|e| {
        super::StartError::Config(kaa_service::ConfigError::Invalid(format!(
            "instance or replica name: {e}"
        )))
    })?;
    let wide = shared
        .bus
        .subscribe(filters.instance_wide.as_str(), Some(&filters.queue_group))
        .await?;
    let replica = shared.bus.subscribe(filters.replica.as_str(), None).await?;
    // Every replica of the instance, no queue group: see `hand_over`.
    let handovers = shared
        .bus
        .subscribe(&settings.handover_subject, None)
        .await?;
    let connectivity = EventGroup::Connectivity
        .filter(Token::Name(&settings.instance))
        .map_err(|e| {
            super::StartError::Config(kaa_service::ConfigError::Invalid(format!(
                "instance name: {e}"
            )))
        })?;
    let mut connectivity = shared.bus.subscribe(connectivity.as_str(), None).await?;
    let sessions_filter =
        kaa_elce::sessions::sessions_request_filter(&settings.instance).map_err(|e| {
            super::StartError::Config(kaa_service::ConfigError::Invalid(format!(
                "instance name: {e}"
            )))
        })?;
    let mut sessions_requests = shared.bus.subscribe(sessions_filter.as_str(), None).await?;
    // In effect on the server before KPC accepts devices (a flush alone is not).
    if !kaa_bus::subscription_barrier(shared.bus.as_ref(), std::time::Duration::from_secs(5))
        .await?
    {
        tracing::warn!("bus did not confirm KPC's subscriptions within 5 s");
    }
    let listener = {
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            let mut messages = futures::stream::select(
                futures::stream::select(wide, replica).map(|m| (Via::Direct, m)),
                handovers.map(|m| (Via::Handover, m)),
            );
            let permits = Arc::new(Semaphore::new(MAX_HANDOVERS));
            let mut waiting = JoinSet::new();
            loop {
                tokio::select! {
                    message = messages.next() => match message {
                        Some((Via::Direct, message)) => {
                            if let Some(endpoint_id) = route_extension_data(&shared, &message) {
                                hand_over(&shared, &message, &endpoint_id, &permits, &mut waiting);
                            }
                        }
                        Some((Via::Handover, message)) => take_over(&shared, &message).await,
                        None => break,
                    },
                    Some(_) = waiting.join_next(), if !waiting.is_empty() => {}
                }
            }
            tracing::warn!("ExtensionData subscriptions ended");
        })
    };
    let other_replicas = {
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            while let Some(message) = connectivity.next().await {
                other_replicas_event(&shared, &message);
            }
        })
    };
    let sessions = {
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            while let Some(message) = sessions_requests.next().await {
                let Some(reply_to) = message.reply_to.as_deref() else {
                    tracing::debug!("sessions request without replyTo dropped");
                    continue;
                };
                match SessionsRequest::decode(&message.payload) {
                    Ok(request) if request.is_expired(now()) => {
                        tracing::debug!(
                            "correlationId" = %request.correlation_id,
                            "expired sessions request dropped"
                        );
                    }
                    Ok(request) => answer_sessions_request(&shared, &request, reply_to).await,
                    Err(e) => {
                        tracing::warn!(subject = %message.subject, error = %e, "malformed sessions request dropped");
                    }
                }
            }
        })
    };
    // After a reconnect of this replica's bus (e.g. its NATS node died while the
    // CMX replicas' connections stayed up): `connected` again for every session,
    // so that the pushes lost meanwhile are sent again (`Hub::reannounce_all`).
    let reconnects = {
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            let mut epoch = shared.bus.connection_epoch();
            let mut tick = tokio::time::interval(std::time::Duration::from_millis(250));
            loop {
                tick.tick().await;
                let now = shared.bus.connection_epoch();
                if now != epoch {
                    epoch = now;
                    let n = shared.hub.reannounce_all();
                    tracing::info!(
                        epoch,
                        endpoints = n,
                        "bus reconnected: announcing every session again"
                    );
                }
            }
        })
    };
    let publisher = tokio::spawn(publish_events(shared, events_rx));
    Ok(BusTasks {
        listener,
        other_replicas,
        sessions,
        reconnects,
        publisher,
        events: events_tx,
    })
}

/// How an ExtensionData reached this replica.
#[derive(Debug, Clone, Copy)]
enum Via {
    /// On the instance-wide or the replica subject.
    Direct,
    /// Handed over by a replica with no session for its endpoint.
    Handover,
}

/// Decodes one ExtensionData that arrived on the instance-wide or the replica
/// subject and hands it to the session that owns its endpoint. Returns the
/// endpoint ID when no session here owns it (the message is then handed over to
/// the other replicas).
fn route_extension_data(shared: &Shared, message: &Message) -> Option<String> {
    let metrics = &shared.metrics;
    if message.no_responders {
        // A ClientData found no extension instance subscribed (unknown instance name,
        // or it is restarting). The status names no request; nothing to deliver.
        tracing::debug!("ClientData found no extension instance (NATS no responders)");
        metrics.extension_data("no_responders");
        return None;
    }
    let data = match ExtensionData::decode(&message.payload) {
        Ok(d) => d,
        Err(e) => {
            tracing::warn!(subject = %message.subject, error = %e, "malformed ExtensionData");
            metrics.extension_data("malformed");
            return None;
        }
    };
    if data.is_expired(now()) {
        metrics.extension_data("expired");
        return None;
    }
    let Some(endpoint_id) = data.endpoint_id.as_deref() else {
        // Endpoint-unaware extensions have no session to go to.
        metrics.extension_data("unmatched");
        return None;
    };
    let Some(session) = shared.hub.route(endpoint_id) else {
        tracing::debug!(
            endpoint_id,
            "ExtensionData for an endpoint with no session here; handing it over"
        );
        metrics.extension_data("no_session");
        return Some(endpoint_id.to_owned());
    };
    match session
        .tx
        .try_send(Command::Deliver(Box::new(data.into_owned())))
    {
        Ok(()) => None,
        Err(SendError::Full) => {
            tracing::warn!(
                session = session.id,
                "session queue full; ExtensionData dropped"
            );
            metrics.extension_data("queue_full");
            None
        }
        Err(SendError::Closed(Command::Deliver(data))) => {
            // The session ended since the lookup: its device may be elsewhere.
            metrics.extension_data("no_session");
            data.endpoint_id.map(|e| e.into_owned())
        }
        Err(SendError::Closed(Command::Revoke(_))) => None,
    }
}

/// Hands an ExtensionData for an endpoint with no session here to every replica
/// of the instance (the handover subject, no queue group), as a request: the
/// replica whose session owns the endpoint answers once the session has it.
/// No answer within [`HANDOVER_TIMEOUT`]: no replica holds the endpoint, and the
/// message is counted and logged as undeliverable. At most [`MAX_HANDOVERS`]
/// wait at once; beyond that the message is dropped (`overflow`).
fn hand_over(
    shared: &Arc<Shared>,
    message: &Message,
    endpoint_id: &str,
    permits: &Arc<Semaphore>,
    waiting: &mut JoinSet<()>,
) {
    let Ok(permit) = Arc::clone(permits).try_acquire_owned() else {
        tracing::debug!(
            endpoint_id,
            "{MAX_HANDOVERS} handovers waiting; ExtensionData dropped"
        );
        shared.metrics.handover("overflow");
        return;
    };
    let shared = Arc::clone(shared);
    let payload = message.payload.clone();
    let endpoint_id = endpoint_id.to_owned();
    waiting.spawn(async move {
        let subject = &shared.settings.handover_subject;
        match shared.bus.request(subject, payload, HANDOVER_TIMEOUT).await {
            Ok(_) => shared.metrics.handover("taken"),
            Err(BusError::Timeout { .. } | BusError::NoResponders { .. }) => {
                shared.metrics.handover("undeliverable");
                tracing::info!(
                    endpoint_id,
                    "ExtensionData undeliverable: no replica of this KPC has a session for the endpoint"
                );
            }
            Err(e) => {
                shared.metrics.handover("failed");
                tracing::warn!(endpoint_id, error = %e, "could not hand an ExtensionData over");
            }
        }
        drop(permit);
    });
}

/// An ExtensionData another replica (or this one) handed over: delivered when a
/// session here owns the endpoint, and the handover answered; otherwise ignored
/// (another replica may hold it). Never handed over again.
async fn take_over(shared: &Shared, message: &Message) {
    let metrics = &shared.metrics;
    let data = match ExtensionData::decode(&message.payload) {
        Ok(d) => d,
        Err(e) => {
            tracing::warn!(subject = %message.subject, error = %e, "malformed handed-over ExtensionData");
            metrics.handover_received("malformed");
            return;
        }
    };
    let Some(session) = data
        .endpoint_id
        .as_deref()
        .and_then(|e| shared.hub.route(e))
    else {
        metrics.handover_received("no_session");
        return;
    };
    if data.is_expired(now()) {
        metrics.handover_received("expired");
        return;
    }
    match session
        .tx
        .try_send(Command::Deliver(Box::new(data.into_owned())))
    {
        Ok(()) => {
            metrics.handover_received("taken");
            if let Some(reply_to) = message.reply_to.as_deref()
                && let Err(e) = shared
                    .bus
                    .publish(reply_to, Bytes::from_static(b"taken"))
                    .await
            {
                tracing::debug!(error = %e, "could not answer a handover");
            }
        }
        Err(SendError::Full) => {
            tracing::warn!(
                session = session.id,
                "session queue full; handed-over ExtensionData dropped"
            );
            metrics.handover_received("queue_full");
        }
        Err(SendError::Closed(_)) => metrics.handover_received("no_session"),
    }
}

/// A 9/ELCE connectivity event of this KPC instance; those other replicas
/// published matter:
///
/// - `connected`: each endpoint it lists that a session here owns with an older
///   claim is dropped from that session (`Hub::yield_to`);
/// - `disconnected`: each endpoint it lists that a session here owns gets its
///   `connected` again (`Hub::reannounce`): the other replica's session ended
///   before it learned of ours, and an extension may have received its
///   `disconnected` after our `connected`.
fn other_replicas_event(shared: &Shared, message: &Message) {
    let event = match ElceEvent::decode(&message.subject, &message.payload) {
        Ok(e) => e,
        Err(e) => {
            tracing::debug!(subject = %message.subject, error = %e, "undecodable connectivity event ignored");
            return;
        }
    };
    let local = &*shared.settings.replica_id;
    match event {
        ElceEvent::Connected(event) if *event.originator_replica_id != *local => {
            let other = &*event.originator_replica_id;
            for (endpoint_id, _) in &event.endpoints {
                if shared
                    .hub
                    .yield_to(endpoint_id, event.timestamp, other, local)
                {
                    shared.metrics.endpoint_moved();
                    tracing::info!(
                        endpoint_id = &**endpoint_id,
                        replica = other,
                        "endpoint taken by a newer session on another replica"
                    );
                }
            }
        }
        ElceEvent::Disconnected(event) if *event.originator_replica_id != *local => {
            for (endpoint_id, _) in &event.endpoints {
                if shared.hub.reannounce(endpoint_id) {
                    shared.metrics.endpoint_reannounced();
                    tracing::info!(
                        endpoint_id = &**endpoint_id,
                        replica = &*event.originator_replica_id,
                        "another replica reported the endpoint disconnected while a session here holds it; connected published again"
                    );
                }
            }
        }
        _ => {}
    }
}

/// Lists this replica's sessions to `reply_to` for the requesting extension
/// instance, in [`SessionsResponse`]s of at most [`SESSIONS_PER_ANSWER`] endpoints.
async fn answer_sessions_request(shared: &Shared, request: &SessionsRequest<'_>, reply_to: &str) {
    let ext = &*request.extension_instance_name;
    let sessions = shared.hub.sessions_for(ext);
    tracing::info!(
        "correlationId" = %request.correlation_id,
        endpoints = sessions.len(),
        ext,
        reply_to,
        "sessions request: listing the endpoints with a session"
    );
    for chunk in sessions.chunks(SESSIONS_PER_ANSWER) {
        let response = SessionsResponse {
            correlation_id: Cow::Borrowed(&request.correlation_id),
            timestamp: now().0,
            timeout: request.timeout,
            endpoints: chunk
                .iter()
                .map(|((id, version), paths)| EndpointSession {
                    endpoint_id: Cow::Borrowed(&**id),
                    app_version_name: Cow::Borrowed(&**version),
                    resource_paths: paths.iter().map(|p| Cow::Borrowed(p.as_str())).collect(),
                })
                .collect(),
            originator_replica_id: Cow::Borrowed(&shared.settings.replica_id),
        };
        let datum = Bytes::from(response.to_vec());
        if let Err(e) = shared.bus.publish(reply_to, datum).await {
            tracing::warn!(error = %e, reply_to, "could not answer a sessions request");
            return;
        }
    }
}

fn map_of(endpoints: &[EndpointEntry]) -> kaa_elce::Map<'_, Cow<'_, str>> {
    endpoints
        .iter()
        .map(|(id, version)| (Cow::Borrowed(&**id), Cow::Borrowed(&**version)))
        .collect()
}

async fn publish_event<E: EndpointEvent>(shared: &Shared, event: &E, name: &'static str) {
    let subject = match E::subject(&shared.settings.instance) {
        Ok(s) => s.to_string(),
        Err(e) => {
            tracing::error!(error = %e, "invalid event subject");
            return;
        }
    };
    match shared
        .bus
        .publish(&subject, Bytes::from(event.to_vec()))
        .await
    {
        Ok(()) => shared.metrics.event(name),
        Err(e) => {
            shared.metrics.error("bus");
            tracing::warn!(error = %e, subject, "could not publish a connectivity event");
        }
    }
}

/// Publishes the queued connectivity events, one at a time, in queue order.
async fn publish_events(shared: Arc<Shared>, mut rx: mpsc::UnboundedReceiver<EventOut>) {
    let replica = shared.settings.replica_id.clone();
    while let Some(event) = rx.recv().await {
        let correlation_id = uuid::Uuid::new_v4().to_string();
        match event {
            EventOut::Connected {
                endpoints,
                timestamp,
                done,
            } => {
                let event = ConnectedEvent {
                    correlation_id: correlation_id.into(),
                    timestamp,
                    timeout: 0,
                    endpoints: map_of(&endpoints),
                    originator_replica_id: replica.as_str().into(),
                };
                publish_event(&shared, &event, "connected").await;
                let _ = done.send(());
            }
            EventOut::Disconnected { endpoints } => {
                let event = DisconnectedEvent {
                    correlation_id: correlation_id.into(),
                    timestamp: now().0,
                    timeout: 0,
                    endpoints: map_of(&endpoints),
                    originator_replica_id: replica.as_str().into(),
                };
                publish_event(&shared, &event, "disconnected").await;
            }
            EventOut::Flush(done) => {
                if let Err(e) = shared.bus.flush().await {
                    tracing::warn!(error = %e, "bus flush failed");
                }
                let _ = done.send(());
            }
        }
    }
}

/// Takes revoked endpoints from their sessions: for each 16/ECAP
/// `endpoint.token.revoked` event, the resolver forgets the endpoint's answers,
/// the hub releases it (`disconnected`), and the session that owned it forgets
/// its tokens.
pub(crate) async fn revocations(
    shared: Arc<Shared>,
    resolver: Arc<crate::resolver::EcapResolver>,
    mut events: kaa_bus::Subscription,
) {
    while let Some(message) = events.next().await {
        let event = match kaa_ecap::EndpointTokenRevokedEvent::decode(&message.payload) {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(error = %e, subject = %message.subject, "undecodable endpoint.token.revoked event ignored");
                continue;
            }
        };
        let endpoint_id = event.endpoint_id.as_ref();
        resolver.endpoint_revoked(endpoint_id);
        let owner = shared.hub.revoke(endpoint_id);
        tracing::info!(
            endpoint_id,
            tokens = event.token_ids.len(),
            connected = owner.is_some(),
            "endpoint tokens revoked"
        );
        if let Some(session) = owner {
            let _ = session.tx.try_send(Command::Revoke(endpoint_id.into()));
        }
    }
}
