//! ECR on the message bus: the 6/CDTP provider, the `endpoint.config.updated`
//! publisher and the listeners for `endpoint.config.applied` and 9/ELCE events.
//!
//! # 6/CDTP provider
//!
//! Subscribes to `kaa.v1.service.<instance>.cdtp.request` in the queue group
//! `<instance>` (so replicas share the load) and answers EVERY request that has a
//! `replyTo` and has not expired with a `ConfigResponse` (`correlationId`, `appVersionName`, `endpointId`
//! copied from the request; `timeout` 0; `contentType` `application/json`):
//!
//! | case | `statusCode` | `configId` | `content` | `reasonPhrase` |
//! | --- | --- | --- | --- | --- |
//! | the effective configuration (endpoint's own, else the app version's default; while a rollout of it is active, the rollout's configuration for endpoints of its served cohort, see [`crate::rollout`]) | 200 | its ID | its canonical JSON | `OK` |
//! | no configuration at all (7/CMP "absent") | 200 | `""` | `null` | `No configuration` |
//! | the request's `configId` is the current one ("unchanged") | 200 | null | null | `Not Modified` |
//! | malformed Avro, invalid name | 400 | null | null | what is wrong |
//! | app version not in `kaa.applications` | 404 | null | null | what is wrong |
//! | store failure | 500 | null | null | `store failure` |
//!
//! A request whose deadline (3/ISM `timestamp` + `timeout`, `timeout` > 0) has passed
//! when ECR takes it up is dropped unanswered (the requester has given up on it) and
//! counted in `<prefix>_cdtp_requests_expired_total`.
//!
//! A 400 for an undecodable datum has empty `correlationId`, `appVersionName` and
//! `endpointId` (they could not be read). On "unchanged" ECR records the current
//! config ID as applied (status 200, reason "Implicitly applied"); a full answer is
//! recorded as dispatched. Both go through ECR's status queue (group commit, see
//! [`Ecr::record_status`]): the record is queued before the response is sent, so it
//! keeps its order with the confirmation that follows, but the response does not wait
//! for the disk. The configuration name is the request's `configName`
//! (null = `default`).
//!
//! # Learning endpoints
//!
//! The fan-out of a default change needs the endpoints of an app version that follow
//! the default. ECR learns them from 6/CDTP requests (endpoint + app version), from
//! endpoint-specific writes (REST, batch), from `endpoint.connectivity.connected`
//! (any originator) and from `endpoint.lifecycle.registered` /
//! `appversion-updated` (any originator; the latter moves the endpoint);
//! `endpoint.lifecycle.unregistered` (any originator) deletes everything ECR holds
//! about the endpoint. An endpoint ECR never heard of gets no push for a default
//! change; it receives the new default on its next request.
//!
//! # Events
//!
//! Every change of an endpoint's effective configuration is broadcast on
//! `kaa.v1.events.<instance>.endpoint.config.updated` (`ConfigUpdated`, with
//! `originatorReplicaId` = the replica ID and `configName` set for names other than
//! `default`). When the effective configuration disappears the event carries
//! `configId` `""` and content `null`, the absent configuration of the table above.
//! With the SQLite store events are queued in memory after the write commits, so a
//! replica killed with events still queued never announces those changes (the
//! PostgreSQL store keeps them in an outbox instead, see below); to repair that, every replica
//! publishes a [`kaa_cdtp::ProviderStarted`] (`originatorReplicaId` = its replica
//! ID) on `kaa.v1.events.<instance>.provider.started`
//! ([`kaa_cdtp::subject::provider_started_subject`], a kaa-rs extension to 6/CDTP)
//! once its subscriptions are in place, and a CMX re-fetches the configurations of
//! its connected endpoints on it.
//!
//! ## Replicas on PostgreSQL: durable, ordered announcements
//!
//! With a store that has durable announcements (PostgreSQL; the ECR service turns
//! them on, see [`ConfigStore::enable_durable_announcements`](crate::store::ConfigStore::enable_durable_announcements))
//! events do not come from the in-memory queue above but from the store: every write
//! that changes a configuration records, in its own transaction, that an
//! announcement is due, and each replica runs an announcer that takes due
//! announcements (its own at once, woken by its writes; any replica's within
//! [`ANNOUNCE_POLL`]), publishes the **current** effective configuration of every
//! endpoint concerned, flushes, and only then removes them
//! ([`ConfigStore::announce_pending`](crate::store::ConfigStore::announce_pending)
//! has the locking). So, for ECR replicas sharing one database:
//!
//! - every committed write is announced at least once, even when the replica that
//!   committed it dies before announcing it (another replica announces it within
//!   about [`ANNOUNCE_POLL`]), or NATS is down for a while (retried);
//! - per endpoint, an older configuration is never announced after a newer one:
//!   announcements of one (app version, configuration name) are made by one replica
//!   at a time, each with the state read after the previous one was flushed to the
//!   server. A configuration overwritten before it was announced may be skipped; one
//!   may be announced twice. The order is the order in which the NATS server(s)
//!   received the events: with one server, subscribers receive them in that order;
//!   on a cluster whose nodes the replicas reach through different nodes, NATS does
//!   not order messages of different connections, and an event may in a rare race
//!   overtake one flushed just before it on another node;
//! - the announcer does not compare with what the endpoint had before: a write that
//!   leaves an endpoint's effective config ID as it was (e.g. an endpoint given its
//!   default's content) is announced too; an extra event costs the CMX one
//!   "unchanged" exchange.
//!
//! ## Rollouts
//!
//! A rollout ([`crate::rollout`]) announces, when it begins and each time a step
//! begins, the current effective configuration to exactly the endpoints following
//! the default that the step adds to the cohort; on a revert, to the endpoints that
//! had the new configuration (they get the previous one, or the absent one); on
//! completion, to the endpoints following the default outside the last cohort (none
//! when the last step is 100%). The same paths as above carry them: the in-memory
//! queue after the rollout's commit (SQLite; a replica killed in between leaves them
//! to the `provider.started` re-synchronization of its restart), or outbox rows in
//! the rollout's transaction (PostgreSQL), announced with the cohort applied.
//!
//! An announcement of a step's new configuration to an endpoint that is online
//! is recorded as its dispatch (see [`crate::rollout`]): every replica follows the
//! 9/ELCE connectivity events (`connected` and `disconnected`, any originator,
//! **no** queue group) for the set of online endpoints, and takes an endpoint that
//! asks over 6/CDTP for online too.
//!
//! `endpoint.config.applied` from the configured CMX instance goes into the status
//! history (the reports rollouts count). Event listeners use the queue group `<instance>` too: replicas share one
//! store, so each event is handled once (the connectivity subscription for the
//! online set above aside).

use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::task::JoinSet;

use kaa_bus::{Bus, BusError, Message};
use kaa_cdtp::{
    APPLICATION_JSON, ConfigApplied, ConfigRequest, ConfigResponse, ConfigUpdated, Current,
};
use kaa_elce::{ElceEvent, EventKind};
use kaa_ism::UnixMillis;
use kaa_ism::avro::{Decode, Encode};
use kaa_ism::common::CommonFields;
use kaa_ism::subject::Token;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

use super::core::{Ecr, EcrError, EffectiveChange};
use super::model::{self, AppVersionName, ConfigName, EndpointId, StatusEvent};
use kaa_service::Metrics;

/// The content sent for "no configuration" (7/CMP: `config: null`).
pub use kaa_cdtp::answer::ABSENT_CONTENT;
/// The reason phrase of an implicit confirmation.
pub const IMPLICITLY_APPLIED: &str = "Implicitly applied";
/// How many 6/CDTP requests one replica handles at the same time.
pub const MAX_CONCURRENT_REQUESTS: usize = 256;
/// The most due announcements the durable announcer takes at a time
/// ([`ConfigStore::announce_pending`](crate::store::ConfigStore::announce_pending)).
pub const ANNOUNCE_BATCH: usize = 256;
/// How often the durable announcer looks for due announcements it was not woken
/// for: those of other replicas (e.g. one that died between its commit and its
/// announcement) and its own that failed. This bounds how late such an announcement
/// comes.
pub const ANNOUNCE_POLL: std::time::Duration = std::time::Duration::from_secs(1);
/// How long the durable announcer waits for the bus to take (publish and flush) one
/// batch before it gives up and leaves the batch due. Events of a batch given up may
/// still reach the server later (the client re-sends what it buffered when it
/// reconnects), possibly after newer ones another replica announced meanwhile: the
/// ordering guarantee holds while the replicas' NATS connections work.
pub const ANNOUNCE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Names on the bus.
#[derive(Debug, Clone)]
pub struct BusSettings {
    /// `service.instance.name`: subjects and queue group.
    pub instance: String,
    /// `service.instance.replica.id`: `originatorReplicaId`.
    pub replica_id: String,
    /// The CMX whose `endpoint.config.applied` events are recorded.
    pub cmx_instance: String,
    /// The 9/ELCE decode limits (`ecr.limits.max-endpoints-per-event`).
    pub elce_limits: kaa_elce::DecodeLimits,
    /// Where the bus counters are registered (`<prefix>_cdtp_requests_total{status}`,
    /// `<prefix>_cdtp_requests_expired_total`,
    /// `<prefix>_config_updated_published_total`, `<prefix>_events_handled_total{event,result}`).
    pub metrics: Metrics,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabel {
    status: i32,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EventLabel {
    event: &'static str,
    result: &'static str,
}

#[derive(Clone)]
struct BusMetrics {
    cdtp: Family<StatusLabel, Counter>,
    expired: Counter,
    published: Counter,
    handled: Family<EventLabel, Counter>,
}

impl BusMetrics {
    fn register(metrics: &Metrics) -> Self {
        let m = Self {
            cdtp: Family::default(),
            expired: Counter::default(),
            published: Counter::default(),
            handled: Family::default(),
        };
        metrics.register(
            "cdtp_requests",
            "6/CDTP requests answered, by response status code",
            m.cdtp.clone(),
        );
        metrics.register(
            "cdtp_requests_expired",
            "6/CDTP requests dropped unanswered because their deadline (timestamp + timeout) had passed",
            m.expired.clone(),
        );
        metrics.register(
            "config_updated_published",
            "endpoint.config.updated events published",
            m.published.clone(),
        );
        metrics.register(
            "events_handled",
            "endpoint.config.applied and 9/ELCE events handled, by event and result",
            m.handled.clone(),
        );
        m
    }

    fn handled(&self, event: &'static str, ok: bool) {
        let result = if ok { "ok" } else { "ignored" };
        self.handled
            .get_or_create(&EventLabel { event, result })
            .inc();
    }
}

fn error_response(
    request: Option<&ConfigRequest<'_>>,
    status_code: i32,
    reason: String,
    now: UnixMillis,
) -> ConfigResponse<'static> {
    ConfigResponse::error(request, status_code, reason, now.0).into_owned()
}

/// Answers one 6/CDTP request datum (see the module docs for every case); `None`
/// when the request has expired (its 3/ISM `timestamp` + `timeout` lies before `now`):
/// nobody waits for the answer any more, so it is dropped unanswered.
pub async fn answer_request(
    ecr: &Ecr,
    datum: &[u8],
    now: UnixMillis,
) -> Option<ConfigResponse<'static>> {
    let request = match ConfigRequest::decode(datum) {
        Ok(r) => r,
        Err(e) => {
            return Some(error_response(
                None,
                400,
                format!("malformed ConfigRequest: {e}"),
                now,
            ));
        }
    };
    if request.is_expired(now) {
        return None;
    }
    Some(answer_decoded(ecr, &request, now).await)
}

async fn answer_decoded(
    ecr: &Ecr,
    request: &ConfigRequest<'_>,
    now: UnixMillis,
) -> ConfigResponse<'static> {
    let names = (|| {
        Ok::<_, model::NameError>((
            EndpointId::new(request.endpoint_id.as_ref())?,
            AppVersionName::new(request.app_version_name.as_ref())?,
            ConfigName::from_optional(request.config_name.as_deref())?,
        ))
    })();
    let (endpoint_id, app_version, name) = match names {
        Ok(n) => n,
        Err(e) => return error_response(Some(request), 400, e.to_string(), now),
    };
    if let Err(e) = ecr.apps().check(&app_version) {
        return error_response(Some(request), 404, e.to_string(), now);
    }
    if let Err(e) = ecr.learn_endpoint(&endpoint_id, &app_version).await {
        tracing::warn!(error = %e, "could not record the endpoint");
    }
    ecr.endpoints_connected([endpoint_id.as_str()]);
    let effective = match ecr.effective(&endpoint_id, &app_version, &name).await {
        Ok(e) => e,
        Err(e) => {
            tracing::error!(error = %e, correlation_id = %request.correlation_id, "6/CDTP request failed");
            let code = if matches!(e, EcrError::Store(_)) {
                500
            } else {
                400
            };
            let reason = if code == 500 {
                "store failure".to_owned()
            } else {
                e.to_string()
            };
            return error_response(Some(request), code, reason, now);
        }
    };
    let current = match &effective {
        Some((config, _)) => Current::Config {
            config_id: config.config_id.as_str(),
            content: config.content.as_bytes(),
        },
        None => Current::Absent,
    };
    let (current_id, _) = current.id_and_content();
    let response = ConfigResponse::answer(request, current, now.0).into_owned();
    if response.config_id.is_none() {
        // "Not Modified": the endpoint holds the current configuration.
        if !current_id.is_empty() {
            let event = StatusEvent::Confirmed {
                status_code: 200,
                reason_phrase: Some(IMPLICITLY_APPLIED.to_owned()),
            };
            if let Err(e) = ecr
                .record_status(&endpoint_id, &app_version, &name, current_id, &event, now)
                .await
            {
                tracing::warn!(error = %e, "could not record the implicit confirmation");
            }
        }
    } else if !current_id.is_empty()
        && let Err(e) = ecr
            .record_status(
                &endpoint_id,
                &app_version,
                &name,
                current_id,
                &StatusEvent::Dispatched,
                now,
            )
            .await
    {
        tracing::warn!(error = %e, "could not record the dispatch");
    }
    response
}

/// The `ConfigUpdated` event for a change.
pub fn config_updated(
    change: &EffectiveChange,
    replica_id: &str,
    now: UnixMillis,
) -> ConfigUpdated<'static> {
    let (config_id, content) = match &change.config {
        Some(c) => (c.config_id.clone(), c.content.clone().into_bytes()),
        None => (String::new(), ABSENT_CONTENT.to_vec()),
    };
    ConfigUpdated {
        correlation_id: uuid::Uuid::new_v4().to_string().into(),
        timestamp: now.0,
        timeout: 0,
        app_version_name: change.app_version.to_string().into(),
        endpoint_id: change.endpoint_id.to_string().into(),
        config_id: config_id.into(),
        content_type: APPLICATION_JSON.into(),
        content: content.into(),
        originator_replica_id: Some(replica_id.to_owned().into()),
        config_name: (!change.name.is_default()).then(|| change.name.to_string().into()),
    }
}

/// Records an `endpoint.config.applied` datum in the status history.
pub async fn handle_applied(ecr: &Ecr, datum: &[u8], now: UnixMillis) -> Result<(), String> {
    let applied =
        ConfigApplied::decode(datum).map_err(|e| format!("malformed ConfigApplied: {e}"))?;
    let endpoint_id = EndpointId::new(applied.endpoint_id.as_ref()).map_err(|e| e.to_string())?;
    let app_version =
        AppVersionName::new(applied.app_version_name.as_ref()).map_err(|e| e.to_string())?;
    let name =
        ConfigName::from_optional(applied.config_name.as_deref()).map_err(|e| e.to_string())?;
    if applied.config_id.is_empty() {
        return Ok(());
    }
    let event = StatusEvent::Confirmed {
        status_code: applied.status_code,
        reason_phrase: applied.reason_phrase.as_deref().map(str::to_owned),
    };
    ecr.record_status(
        &endpoint_id,
        &app_version,
        &name,
        &applied.config_id,
        &event,
        now,
    )
    .await
    .map_err(|e| e.to_string())
}

/// Handles a 9/ELCE event datum received on `subject`.
/// A longer event than `limits` allow is refused as malformed.
pub async fn handle_elce(
    ecr: &Ecr,
    subject: &str,
    datum: &[u8],
    limits: kaa_elce::DecodeLimits,
) -> Result<(), String> {
    let event = ElceEvent::decode_with_limits(subject, datum, limits)
        .map_err(|e| format!("malformed 9/ELCE event: {e}"))?;
    let ep = |id: &str| EndpointId::new(id).map_err(|e| e.to_string());
    let app = |v: &str| AppVersionName::new(v).map_err(|e| e.to_string());
    match event {
        ElceEvent::Connected(e) => {
            for (endpoint_id, app_version) in &e.endpoints {
                ecr.learn_endpoint(&ep(endpoint_id)?, &app(app_version)?)
                    .await
                    .map_err(|e| e.to_string())?;
            }
        }
        ElceEvent::Registered(e) => ecr
            .learn_endpoint(&ep(&e.endpoint_id)?, &app(&e.app_version_name)?)
            .await
            .map_err(|e| e.to_string())?,
        ElceEvent::AppVersionUpdated(e) => ecr
            .endpoint_moved(
                &ep(&e.endpoint_id)?,
                &app(&e.previous_app_version_name)?,
                &app(&e.app_version_name)?,
            )
            .await
            .map_err(|e| e.to_string())?,
        ElceEvent::Unregistered(e) => {
            let n = ecr
                .endpoint_unregistered(&ep(&e.endpoint_id)?)
                .await
                .map_err(|e| e.to_string())?;
            tracing::info!(endpoint_id = %e.endpoint_id, configurations = n, "endpoint unregistered: configurations deleted");
        }
        _ => {}
    }
    Ok(())
}

/// Handles a 9/ELCE connectivity event datum received on `subject` for the set of
/// online endpoints ([`Ecr::endpoints_connected`], [`Ecr::endpoints_disconnected`]):
/// every replica handles every one (no queue group), since whichever replica
/// drives the rollouts needs them. Other events are ignored.
pub fn handle_connectivity(
    ecr: &Ecr,
    subject: &str,
    datum: &[u8],
    limits: kaa_elce::DecodeLimits,
) -> Result<(), String> {
    match ElceEvent::decode_with_limits(subject, datum, limits)
        .map_err(|e| format!("malformed 9/ELCE event: {e}"))?
    {
        ElceEvent::Connected(e) => {
            ecr.endpoints_connected(e.endpoints.iter().map(|(id, _)| id.as_ref()))
        }
        ElceEvent::Disconnected(e) => {
            ecr.endpoints_disconnected(e.endpoints.iter().map(|(id, _)| id.as_ref()))
        }
        _ => {}
    }
    Ok(())
}

/// Publishes the announcements of the durable announcer as `endpoint.config.updated`
/// and flushes them before the store releases its locks.
struct BusSink {
    bus: Arc<dyn Bus>,
    subject: String,
    replica_id: String,
    published: Counter,
}

#[async_trait::async_trait]
impl crate::store::AnnouncementSink for BusSink {
    async fn announce(&self, changes: &[EffectiveChange]) -> Result<(), String> {
        // The store holds its locks meanwhile: a bus that does not take the events
        // (e.g. NATS unreachable) must not stall the other replicas' announcers.
        tokio::time::timeout(ANNOUNCE_TIMEOUT, self.publish_all(changes))
            .await
            .map_err(|_| {
                format!("endpoint.config.updated not flushed within {ANNOUNCE_TIMEOUT:?}")
            })?
    }
}

impl BusSink {
    async fn publish_all(&self, changes: &[EffectiveChange]) -> Result<(), String> {
        for change in changes {
            let event = config_updated(change, &self.replica_id, model::now());
            self.bus
                .publish(&self.subject, Bytes::from(event.to_vec()))
                .await
                .map_err(|e| format!("publishing endpoint.config.updated: {e}"))?;
        }
        // On the server before the next replica may announce the same endpoints. A
        // flush only hands the bytes to the socket; another replica's connection
        // could still be read by the server first (seen as a rare inversion in
        // `replicas_announce_every_write_in_commit_order`). A round trip through
        // the server proves it processed them, in order, before the lock goes.
        self.bus
            .flush()
            .await
            .map_err(|e| format!("flushing endpoint.config.updated: {e}"))?;
        match kaa_bus::subscription_barrier(self.bus.as_ref(), ANNOUNCE_TIMEOUT).await {
            Ok(true) => {}
            Ok(false) => {
                return Err("endpoint.config.updated not confirmed by the server".into());
            }
            Err(e) => return Err(format!("confirming endpoint.config.updated: {e}")),
        }
        self.published.inc_by(changes.len() as u64);
        Ok(())
    }
}

/// The durable announcer: announces what the store holds as due
/// ([`ConfigStore::announce_pending`](crate::store::ConfigStore::announce_pending)),
/// woken by this replica's writes and every [`ANNOUNCE_POLL`].
async fn durable_announcer(ecr: Arc<Ecr>, sink: BusSink) {
    let store = Arc::clone(ecr.store());
    let mut failures = 0u32;
    loop {
        match store.announce_pending(ANNOUNCE_BATCH, &sink).await {
            // A full batch: there may be more.
            Ok(n) if n >= ANNOUNCE_BATCH => continue,
            Ok(_) => failures = 0,
            Err(e) => {
                failures += 1;
                tracing::warn!(error = %e, failures, "announcing committed writes failed; retrying");
            }
        }
        let wait = if failures == 0 {
            ANNOUNCE_POLL
        } else {
            (ANNOUNCE_POLL / 4 * failures.min(8)).min(std::time::Duration::from_secs(2))
        };
        tokio::select! {
            () = store.announcements_written(), if failures == 0 => {}
            () = tokio::time::sleep(wait) => {}
        }
    }
}

/// The running bus side of ECR; dropping it stops every task.
#[derive(Debug)]
pub struct BusTasks {
    tasks: JoinSet<()>,
}

impl BusTasks {
    /// Stops every task.
    pub fn shutdown(mut self) {
        self.tasks.abort_all();
    }
}

async fn reply(bus: &Arc<dyn Bus>, reply_to: &str, response: &ConfigResponse<'_>) {
    if let Err(e) = bus.publish(reply_to, Bytes::from(response.to_vec())).await {
        tracing::warn!(error = %e, reply_to, "could not publish the 6/CDTP response");
    }
}

/// Subscribes everything (so on return the provider and listeners are in place) and
/// spawns the loops: the 6/CDTP provider, the event publisher fed by `changes`, and
/// the listeners.
pub async fn start(
    ecr: Arc<Ecr>,
    bus: Arc<dyn Bus>,
    settings: BusSettings,
    mut changes: UnboundedReceiver<EffectiveChange>,
) -> Result<BusTasks, BusError> {
    let group = settings.instance.as_str();
    let subject_err = |e: kaa_ism::subject::SubjectError| BusError::Config(e.to_string());
    let request_subject = kaa_cdtp::subject::request_subject(group)
        .map_err(subject_err)?
        .to_string();
    let updated_subject = kaa_cdtp::subject::config_updated_subject(group)
        .map_err(subject_err)?
        .to_string();
    let applied_filter =
        kaa_cdtp::subject::config_applied_filter(Token::Name(&settings.cmx_instance))
            .map_err(subject_err)?;
    let lifecycle = kaa_elce::EventGroup::Lifecycle
        .filter(Token::Any)
        .map_err(subject_err)?;
    let connected = EventKind::Connected
        .filter(Token::Any)
        .map_err(subject_err)?;
    let connectivity = kaa_elce::EventGroup::Connectivity
        .filter(Token::Any)
        .map_err(subject_err)?;

    let mut requests = bus.subscribe(&request_subject, Some(group)).await?;
    let mut applied = bus.subscribe(applied_filter.as_str(), Some(group)).await?;
    let mut elce = futures::stream::select(
        bus.subscribe(lifecycle.as_str(), Some(group)).await?,
        bus.subscribe(connected.as_str(), Some(group)).await?,
    );
    // Every replica: which endpoints are online (rollout dispatches).
    let mut online = bus.subscribe(connectivity.as_str(), None).await?;
    // In effect on the server before ECR reports ready (a flush alone is not).
    if !kaa_bus::subscription_barrier(bus.as_ref(), std::time::Duration::from_secs(5)).await? {
        tracing::warn!("bus did not confirm ECR's subscriptions within 5 s");
    }
    // A provider that died may have taken ConfigUpdated events of acknowledged
    // writes with it (they are published after the commit): CMXs re-synchronize
    // when a provider (re)starts.
    let started = kaa_cdtp::subject::provider_started_subject(group).map_err(subject_err)?;
    let announcement = kaa_cdtp::ProviderStarted {
        correlation_id: uuid::Uuid::new_v4().to_string().into(),
        timestamp: model::now().0,
        timeout: 0,
        originator_replica_id: settings.replica_id.as_str().into(),
    };
    if let Err(e) = bus
        .publish(&started, Bytes::from(announcement.to_vec()))
        .await
    {
        tracing::warn!(error = %e, "could not announce the provider start");
    }

    let metrics = BusMetrics::register(&settings.metrics);
    let mut tasks = JoinSet::new();
    if ecr.store().durable_announcements() {
        let sink = BusSink {
            bus: Arc::clone(&bus),
            subject: updated_subject.clone(),
            replica_id: settings.replica_id.clone(),
            published: metrics.published.clone(),
        };
        tasks.spawn(durable_announcer(Arc::clone(&ecr), sink));
    }
    {
        let (ecr, bus, metrics) = (Arc::clone(&ecr), Arc::clone(&bus), metrics.clone());
        tasks.spawn(async move {
            let limit = Arc::new(tokio::sync::Semaphore::new(MAX_CONCURRENT_REQUESTS));
            while let Some(message) = requests.next().await {
                let Message {
                    reply_to, payload, ..
                } = message;
                let Some(reply_to) = reply_to else {
                    tracing::warn!("6/CDTP request without replyTo dropped");
                    continue;
                };
                let Ok(permit) = Arc::clone(&limit).acquire_owned().await else {
                    break;
                };
                let (ecr, bus, metrics) = (Arc::clone(&ecr), Arc::clone(&bus), metrics.clone());
                tokio::spawn(async move {
                    let Some(response) = answer_request(&ecr, &payload, model::now()).await else {
                        metrics.expired.inc();
                        tracing::debug!("expired 6/CDTP request dropped");
                        return;
                    };
                    metrics
                        .cdtp
                        .get_or_create(&StatusLabel {
                            status: response.status_code,
                        })
                        .inc();
                    reply(&bus, &reply_to, &response).await;
                    drop(permit);
                });
            }
        });
    }
    {
        let bus = Arc::clone(&bus);
        let replica = settings.replica_id.clone();
        let metrics = metrics.clone();
        tasks.spawn(async move {
            while let Some(change) = changes.recv().await {
                let event = config_updated(&change, &replica, model::now());
                match bus
                    .publish(&updated_subject, Bytes::from(event.to_vec()))
                    .await
                {
                    Ok(()) => metrics.published.inc(),
                    Err(e) => {
                        tracing::warn!(error = %e, "could not publish endpoint.config.updated");
                        0
                    }
                };
            }
        });
    }
    {
        let (ecr, metrics) = (Arc::clone(&ecr), metrics.clone());
        tasks.spawn(async move {
            while let Some(message) = applied.next().await {
                let result = handle_applied(&ecr, &message.payload, model::now()).await;
                metrics.handled("config.applied", result.is_ok());
                if let Err(e) = result {
                    tracing::warn!(error = %e, subject = %message.subject, "endpoint.config.applied ignored");
                }
            }
        });
    }
    {
        let (ecr, elce_limits) = (Arc::clone(&ecr), settings.elce_limits);
        tasks.spawn(async move {
            while let Some(message) = online.next().await {
                if let Err(e) =
                    handle_connectivity(&ecr, &message.subject, &message.payload, elce_limits)
                {
                    tracing::debug!(error = %e, subject = %message.subject, "9/ELCE connectivity event ignored");
                }
            }
        });
    }
    {
        let (ecr, elce_limits) = (Arc::clone(&ecr), settings.elce_limits);
        tasks.spawn(async move {
            while let Some(message) = elce.next().await {
                let result =
                    handle_elce(&ecr, &message.subject, &message.payload, elce_limits).await;
                let event = if message.subject.ends_with(".connected") {
                    "connectivity"
                } else {
                    "lifecycle"
                };
                metrics.handled(event, result.is_ok());
                if let Err(e) = result {
                    tracing::warn!(error = %e, subject = %message.subject, "9/ELCE event ignored");
                }
            }
        });
    }
    Ok(BusTasks { tasks })
}
