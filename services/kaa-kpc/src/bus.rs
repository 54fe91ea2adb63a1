//! KPC on the message bus: the 4/ESP `ExtensionData` listener and the 9/ELCE
//! connectivity event publisher.
//!
//! - `ExtensionData` arrives on the instance-wide subject
//!   `kaa.v1.service.<instance>.esp.ExtensionData` (queue group `<instance>`, so
//!   that one replica takes each) and on the replica subject
//!   `kaa.v1.replica.<replica>.esp.ExtensionData` (the `replyTo` of every
//!   `ClientData` this replica forwards). Each is decoded and handed to the session
//!   that owns its endpoint; see the [module docs](super) for what happens when
//!   none does.
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
use kaa_bus::Message;
use kaa_elce::{
    ConnectedEvent, DisconnectedEvent, EndpointEvent, EndpointSession, SessionsRequest,
    SessionsResponse,
};
use kaa_esp::ExtensionData;
use kaa_esp::subject::{ListenerFilters, MessageType};
use kaa_ism::avro::{Decode, Encode};
use kaa_ism::common::CommonFields;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::Shared;
use super::hub::{Command, EndpointEntry, EventOut};

use kaa_service::now;

/// The most endpoints one answer to a sessions request lists.
pub(crate) const SESSIONS_PER_ANSWER: usize = 500;

/// The bus-side tasks of a running KPC.
#[derive(Debug)]
pub(crate) struct BusTasks {
    listener: JoinHandle<()>,
    sessions: JoinHandle<()>,
    publisher: JoinHandle<()>,
    events: mpsc::UnboundedSender<EventOut>,
}

impl BusTasks {
    /// Waits until every event queued so far is published, then stops both tasks.
    pub(crate) async fn shutdown(self) {
        self.listener.abort();
        self.sessions.abort();
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
            let mut messages = futures::stream::select(wide, replica);
            while let Some(message) = messages.next().await {
                route_extension_data(&shared, &message);
            }
            tracing::warn!("ExtensionData subscriptions ended");
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
    let publisher = tokio::spawn(publish_events(shared, events_rx));
    Ok(BusTasks {
        listener,
        sessions,
        publisher,
        events: events_tx,
    })
}

/// Decodes one ExtensionData and hands it to the session that owns its endpoint.
fn route_extension_data(shared: &Shared, message: &Message) {
    let metrics = &shared.metrics;
    if message.no_responders {
        // A ClientData found no extension instance subscribed (unknown instance name,
        // or it is restarting). The status names no request; nothing to deliver.
        tracing::debug!("ClientData found no extension instance (NATS no responders)");
        metrics.extension_data("no_responders");
        return;
    }
    let data = match ExtensionData::decode(&message.payload) {
        Ok(d) => d,
        Err(e) => {
            tracing::warn!(subject = %message.subject, error = %e, "malformed ExtensionData");
            metrics.extension_data("malformed");
            return;
        }
    };
    if data.is_expired(now()) {
        metrics.extension_data("expired");
        return;
    }
    let Some(endpoint_id) = data.endpoint_id.as_deref() else {
        // Endpoint-unaware extensions have no session to go to.
        metrics.extension_data("unmatched");
        return;
    };
    let Some(session) = shared.hub.route(endpoint_id) else {
        tracing::debug!(
            endpoint_id,
            "ExtensionData for an endpoint with no session here"
        );
        metrics.extension_data("no_session");
        return;
    };
    match session.tx.try_send(Command::Deliver(data.into_owned())) {
        Ok(()) => {}
        Err(mpsc::error::TrySendError::Full(_)) => {
            tracing::warn!(
                session = session.id,
                "session queue full; ExtensionData dropped"
            );
            metrics.extension_data("queue_full");
        }
        Err(mpsc::error::TrySendError::Closed(_)) => metrics.extension_data("no_session"),
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
            EventOut::Connected { endpoints, done } => {
                let event = ConnectedEvent {
                    correlation_id: correlation_id.into(),
                    timestamp: now().0,
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
