//! The register's bus side: the 16/ECAP endpoint token validation provider and the
//! publisher of its events.
//!
//! - Requests on `kaa.v1.service.<instance>.ecap.ep-token-request` (queue group
//!   `<instance>`, so replicas share them) are answered on their `replyTo` with an
//!   `EndpointTokenValidationResponse`: 200 with `tokenId` and `endpointId` for an
//!   active token valid for the request's `appName`; 404 (unknown token, no IDs),
//!   401 (revoked), 403 (suspended, or another application; see
//!   [`crate::core`] for the app version rule), each with a `reasonPhrase`; 400
//!   for a datum that does not decode (when it has a correlation ID to answer
//!   with, else it is dropped); 500 when the store fails. Expired requests
//!   (`timestamp + timeout` past) get no answer.
//! - Requests on `kaa.v1.service.<instance>.ecap.ep-token-status-transition-request`
//!   (queue group `<instance>`) move a token to the `targetStatus` they name
//!   (`active`, `suspended` or `revoked`, any case) and are answered with an
//!   `EndpointTokenStatusTransitionResponse`: 200 (also when the token already
//!   has that status), 400 (another target status), 404 (unknown token), 403 (a
//!   token of another application's endpoint), 409 (the token is revoked, which
//!   is final), 500 (store failure), each non-200 with a `reasonPhrase`. A
//!   revocation is announced as through REST. The RFC leaves the status names to
//!   the provider; these are the register's own (see [`crate::model::TokenStatus`]).
//! - Requests on `kaa.v1.service.<instance>.ecap.ep-metadata-request` (queue group
//!   `<instance>`; a **kaa-rs extension**, [`kaa_ecap::metadata`], not an RFC
//!   message) name up to 1000 endpoint IDs and are answered with an
//!   `EndpointMetadataResponse`: per ID, in request order, 200 with the app version
//!   and the metadata (JSON object text), 404 (not registered), 400 (not a valid
//!   endpoint ID) or 413 (metadata alone larger than an answer may be), each non-200
//!   with a `reasonPhrase`. The answer is at most the bus's `max_payload` less 8 KiB
//!   (headers, at least 4 KiB); when the endpoints do not all fit, it lists the first ones with
//!   status 206 and the requester asks again for the rest. A request for more than
//!   1000 IDs, or one that does not decode but has a readable `correlationId`, gets
//!   400; a store failure 500; both with no endpoints.
//!   [`kaa_service::endpoint_metadata::MetadataClient`] is the requesting side.
//! - Committed changes become 9/ELCE `kaa.v1.events.<instance>.endpoint.lifecycle.
//!   {registered, unregistered, appversion-updated}` and 16/ECAP
//!   `kaa.v1.events.<instance>.endpoint.token.revoked` (token IDs only).
//!
//! Tokens never reach a log line: requests are logged by correlation ID and
//! status only.

use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use kaa_bus::{Bus, BusError, Message};
use kaa_ism::avro::{Decode, Encode};
use kaa_ism::common::CommonFields;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::task::JoinSet;

use super::core::{Epr, EprError, Event, Validation};
use super::model::{EndpointId, now};
use kaa_service::Metrics;

/// The most 16/ECAP and metadata requests answered at once.
pub const MAX_CONCURRENT_REQUESTS: usize = 256;

/// What the bus side needs besides the register.
#[derive(Debug, Clone)]
pub struct BusSettings {
    /// `service.instance.name`: the 16/ECAP provider name, queue group and event
    /// originator.
    pub instance: String,
    /// `service.instance.replica.id`: `originatorReplicaId` of events.
    pub replica_id: String,
    /// Where the counters go.
    pub metrics: Metrics,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabel {
    status: i32,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EventLabel {
    event: &'static str,
}

/// The running loops; dropping them does not stop them, [`BusTasks::shutdown`] does.
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

/// Answers one encoded validation request: `None` when it is expired or cannot be
/// answered (no correlation ID).
pub async fn answer_validation(epr: &Epr, datum: &[u8]) -> Option<Vec<u8>> {
    let now = now();
    let request = match kaa_ecap::EndpointTokenValidationRequest::decode(datum) {
        Ok(r) => r,
        Err(e) => {
            tracing::debug!(error = %e, "undecodable 16/ECAP token validation request dropped");
            return None;
        }
    };
    if request.is_expired(now) {
        return None;
    }
    let mut response = kaa_ecap::EndpointTokenValidationResponse {
        correlation_id: request.correlation_id.clone(),
        timestamp: now.0,
        timeout: request.timeout,
        ..Default::default()
    };
    match epr.validate(&request.app_name, &request.token).await {
        Ok(validation) => {
            response.status_code = validation.status_code();
            response.reason_phrase = validation.reason().map(Into::into);
            match validation {
                Validation::Valid {
                    token_id,
                    endpoint_id,
                } => {
                    response.token_id = Some(token_id.into());
                    response.endpoint_id = Some(endpoint_id.into());
                }
                Validation::Unknown => {}
                Validation::Revoked { token_id }
                | Validation::Suspended { token_id }
                | Validation::OtherApplication { token_id } => {
                    response.token_id = Some(token_id.into());
                }
            }
        }
        Err(e) => {
            tracing::error!(error = %e, "token validation failed");
            response.status_code = 500;
            response.reason_phrase = Some("endpoint register unavailable".into());
        }
    }
    tracing::debug!(
        correlation_id = %request.correlation_id,
        status = response.status_code,
        "16/ECAP token validation answered"
    );
    Some(response.to_vec())
}

/// Answers one encoded 16/ECAP status transition request (see the module docs):
/// `None` when it is expired or does not decode.
pub async fn answer_status_transition(epr: &Epr, datum: &[u8]) -> Option<Vec<u8>> {
    let now = now();
    let request = match kaa_ecap::EndpointTokenStatusTransitionRequest::decode(datum) {
        Ok(r) => r,
        Err(e) => {
            tracing::debug!(error = %e, "undecodable 16/ECAP status transition request dropped");
            return None;
        }
    };
    if request.is_expired(now) {
        return None;
    }
    let target = crate::model::TokenStatus::parse(&request.target_status.to_ascii_lowercase());
    let (status_code, reason): (i32, Option<String>) = match target {
        None => (
            400,
            Some(format!(
                "unknown target status {:?}: one of active, suspended, revoked",
                request.target_status
            )),
        ),
        Some(target) => match epr
            .set_token_status_by_token(&request.app_name, &request.token, target, now)
            .await
        {
            Ok(_) => (200, None),
            Err(e) => {
                let status = match &e {
                    EprError::Invalid(_) => 400,
                    EprError::NotFound(_) => 404,
                    EprError::Forbidden(_) => 403,
                    EprError::Conflict(_) => 409,
                    _ => {
                        tracing::error!(error = %e, "token status transition failed");
                        500
                    }
                };
                let reason = if status == 500 {
                    "endpoint register unavailable".to_owned()
                } else {
                    e.to_string()
                };
                (status, Some(reason))
            }
        },
    };
    tracing::debug!(
        correlation_id = %request.correlation_id,
        status = status_code,
        "16/ECAP token status transition answered"
    );
    Some(
        kaa_ecap::EndpointTokenStatusTransitionResponse {
            correlation_id: request.correlation_id.clone(),
            timestamp: now.0,
            timeout: request.timeout,
            status_code,
            reason_phrase: reason.map(Into::into),
        }
        .to_vec(),
    )
}

/// The smallest answer budget, whatever the bus says: room for a few entries
/// without metadata (an ID and an app version are at most 256 bytes each), so that
/// an answer always makes progress.
const MIN_METADATA_ANSWER: usize = 4 * 1024;

/// The largest metadata answer on `bus`: its `max_payload` (1 MiB when it does not
/// say) less [`kaa_service::BUS_ENVELOPE_ROOM`] for headers, at least 4 KiB.
pub fn metadata_answer_budget(bus: &dyn Bus) -> usize {
    bus.max_payload()
        .unwrap_or(1024 * 1024)
        .saturating_sub(kaa_service::BUS_ENVELOPE_ROOM)
        .max(MIN_METADATA_ANSWER)
}

/// Answers one encoded endpoint metadata request (see the module docs) with an
/// answer of at most `max_len` bytes: `None` when it is expired, or does not decode
/// and has no readable correlation ID.
pub async fn answer_metadata(epr: &Epr, datum: &[u8], max_len: usize) -> Option<Vec<u8>> {
    use kaa_ecap::metadata::{
        EndpointMetadata, EndpointMetadataRequest, EndpointMetadataResponse, MAX_ENDPOINT_IDS,
    };
    let now = now();
    let refusal = |correlation_id: &str, timeout: i64, status_code: i32, reason: String| {
        EndpointMetadataResponse {
            correlation_id: correlation_id.into(),
            timestamp: now.0,
            timeout,
            endpoints: Vec::new(),
            status_code,
            reason_phrase: Some(reason.into()),
        }
        .to_vec()
    };
    let request = match EndpointMetadataRequest::decode(datum) {
        Ok(r) => r,
        Err(e) => {
            let Some(correlation_id) = EndpointMetadataRequest::correlation_id_of(datum) else {
                tracing::debug!(error = %e, "undecodable endpoint metadata request dropped");
                return None;
            };
            tracing::debug!(%correlation_id, error = %e, "undecodable endpoint metadata request refused");
            return Some(refusal(
                correlation_id,
                0,
                400,
                format!("undecodable request: {e}"),
            ));
        }
    };
    if request.is_expired(now) {
        return None;
    }
    let (correlation_id, timeout) = (request.correlation_id.as_ref(), request.timeout);
    if request.endpoint_ids.len() > MAX_ENDPOINT_IDS {
        return Some(refusal(
            correlation_id,
            timeout,
            400,
            format!(
                "{} endpoint IDs: at most {MAX_ENDPOINT_IDS} per request",
                request.endpoint_ids.len()
            ),
        ));
    }
    let ids: Vec<Result<EndpointId, String>> = request
        .endpoint_ids
        .iter()
        .map(|raw| EndpointId::new(raw.as_ref()).map_err(|e| e.to_string()))
        .collect();
    let valid: Vec<EndpointId> = ids
        .iter()
        .filter_map(|r| r.as_ref().ok().cloned())
        .collect();
    let found = match epr.endpoints(&valid).await {
        Ok(found) => found,
        Err(e) => {
            tracing::error!(error = %e, "endpoint metadata lookup failed");
            return Some(refusal(
                correlation_id,
                timeout,
                500,
                "endpoint register unavailable".to_owned(),
            ));
        }
    };
    let by_id: std::collections::HashMap<&str, &crate::model::Endpoint> =
        found.iter().map(|e| (e.endpoint_id.as_str(), e)).collect();
    let endpoints = request
        .endpoint_ids
        .iter()
        .zip(&ids)
        .map(|(raw, id)| match id {
            Err(why) => EndpointMetadata::refused(raw.as_ref(), 400, why.as_str()),
            Ok(id) => match by_id.get(id.as_str()) {
                None => EndpointMetadata::refused(raw.as_ref(), 404, "not registered"),
                Some(endpoint) => EndpointMetadata::found(
                    raw.as_ref(),
                    endpoint.app_version.as_str(),
                    serde_json::Value::Object(endpoint.metadata.clone()).to_string(),
                ),
            },
        })
        .collect();
    let mut response = EndpointMetadataResponse {
        correlation_id: correlation_id.into(),
        timestamp: now.0,
        timeout,
        endpoints,
        status_code: 200,
        reason_phrase: None,
    };
    let asked = request.endpoint_ids.len();
    let listed = response.fit(max_len);
    tracing::debug!(
        %correlation_id,
        asked,
        listed,
        found = found.len(),
        "endpoint metadata answered"
    );
    Some(response.to_vec())
}

fn event_datum(event: &Event, replica: &str) -> (&'static str, Vec<u8>) {
    let correlation_id = uuid::Uuid::new_v4().to_string();
    let timestamp = now().0;
    match event {
        Event::Registered {
            endpoint_id,
            app_version,
        } => (
            "registered",
            kaa_elce::RegisteredEvent {
                correlation_id: correlation_id.into(),
                timestamp,
                timeout: 0,
                app_version_name: app_version.as_str().into(),
                endpoint_id: endpoint_id.as_str().into(),
                originator_replica_id: replica.into(),
            }
            .to_vec(),
        ),
        Event::Unregistered {
            endpoint_id,
            app_version,
        } => (
            "unregistered",
            kaa_elce::UnregisteredEvent {
                correlation_id: correlation_id.into(),
                timestamp,
                timeout: 0,
                app_version_name: app_version.as_str().into(),
                endpoint_id: endpoint_id.as_str().into(),
                originator_replica_id: replica.into(),
            }
            .to_vec(),
        ),
        Event::AppVersionUpdated {
            endpoint_id,
            app_version,
            previous,
        } => (
            "appversion-updated",
            kaa_elce::AppVersionUpdatedEvent {
                correlation_id: correlation_id.into(),
                timestamp,
                timeout: 0,
                app_version_name: app_version.as_str().into(),
                previous_app_version_name: previous.as_str().into(),
                endpoint_id: endpoint_id.as_str().into(),
                originator_replica_id: replica.into(),
            }
            .to_vec(),
        ),
        Event::TokensRevoked {
            app_name,
            endpoint_id,
            token_ids,
        } => (
            "token-revoked",
            kaa_ecap::EndpointTokenRevokedEvent {
                correlation_id: correlation_id.into(),
                timestamp,
                timeout: 0,
                app_name: app_name.as_str().into(),
                endpoint_id: endpoint_id.as_str().into(),
                token_ids: token_ids.iter().map(|t| t.as_str().into()).collect(),
                originator_replica_id: replica.into(),
            }
            .to_vec(),
        ),
    }
}

/// Subscribes the validation provider (so on return it is in place) and spawns it
/// and the event publisher fed by `events`.
pub async fn start(
    epr: Arc<Epr>,
    bus: Arc<dyn Bus>,
    settings: BusSettings,
    mut events: UnboundedReceiver<Event>,
) -> Result<BusTasks, BusError> {
    let instance = settings.instance.as_str();
    let subject_err = |e: kaa_ism::subject::SubjectError| BusError::Config(e.to_string());
    let request_subject = kaa_ecap::Exchange::EndpointToken
        .request_subject(instance)
        .map_err(subject_err)?
        .to_string();
    let subjects = EventSubjects {
        registered: elce_subject(kaa_elce::EventKind::Registered, instance)?,
        unregistered: elce_subject(kaa_elce::EventKind::Unregistered, instance)?,
        appversion_updated: elce_subject(kaa_elce::EventKind::AppVersionUpdated, instance)?,
        token_revoked: kaa_ecap::subject::endpoint_token_revoked_subject(instance)
            .map_err(subject_err)?
            .to_string(),
    };
    let transition_subject = kaa_ecap::Exchange::EndpointTokenStatusTransition
        .request_subject(instance)
        .map_err(subject_err)?
        .to_string();
    let metadata_subject = kaa_ecap::metadata::metadata_request_subject(instance)
        .map_err(subject_err)?
        .to_string();
    let requests = bus.subscribe(&request_subject, Some(instance)).await?;
    let transitions = bus.subscribe(&transition_subject, Some(instance)).await?;
    let lookups = bus.subscribe(&metadata_subject, Some(instance)).await?;
    let mut requests = futures::stream::select(
        futures::stream::select(
            requests.map(|m| (Exchange::Validation, m)),
            transitions.map(|m| (Exchange::Transition, m)),
        ),
        lookups.map(|m| (Exchange::Metadata, m)),
    );
    let metadata_budget = metadata_answer_budget(bus.as_ref());
    if !kaa_bus::subscription_barrier(bus.as_ref(), std::time::Duration::from_secs(5)).await? {
        tracing::warn!("bus did not confirm the register's subscription within 5 s");
    }
    let answered: Family<StatusLabel, Counter> = Family::default();
    settings.metrics.register(
        "ecap_validations",
        "16/ECAP endpoint token validations answered, by status code",
        answered.clone(),
    );
    let transitioned: Family<StatusLabel, Counter> = Family::default();
    settings.metrics.register(
        "ecap_status_transitions",
        "16/ECAP endpoint token status transitions answered, by status code",
        transitioned.clone(),
    );
    let looked_up: Family<StatusLabel, Counter> = Family::default();
    settings.metrics.register(
        "metadata_lookups",
        "Endpoint metadata requests (kaa-rs extension) answered, by status code",
        looked_up.clone(),
    );
    let published: Family<EventLabel, Counter> = Family::default();
    settings.metrics.register(
        "events_published",
        "Events published, by type",
        published.clone(),
    );
    let mut tasks = JoinSet::new();
    {
        let (epr, bus) = (Arc::clone(&epr), Arc::clone(&bus));
        tasks.spawn(async move {
            let limit = Arc::new(tokio::sync::Semaphore::new(MAX_CONCURRENT_REQUESTS));
            while let Some((exchange, message)) = requests.next().await {
                let Message {
                    reply_to, payload, ..
                } = message;
                let Some(reply_to) = reply_to else {
                    tracing::debug!("16/ECAP request without replyTo dropped");
                    continue;
                };
                let Ok(permit) = Arc::clone(&limit).acquire_owned().await else {
                    break;
                };
                let (epr, bus) = (Arc::clone(&epr), Arc::clone(&bus));
                let (answered, transitioned, looked_up) =
                    (answered.clone(), transitioned.clone(), looked_up.clone());
                tokio::spawn(async move {
                    let response = match exchange {
                        Exchange::Validation => {
                            answer_validation(&epr, &payload).await.inspect(|r| {
                                let status = kaa_ecap::EndpointTokenValidationResponse::decode(r)
                                    .map_or(0, |r| r.status_code);
                                answered.get_or_create(&StatusLabel { status }).inc();
                            })
                        }
                        Exchange::Transition => {
                            answer_status_transition(&epr, &payload).await.inspect(|r| {
                                let status =
                                    kaa_ecap::EndpointTokenStatusTransitionResponse::decode(r)
                                        .map_or(0, |r| r.status_code);
                                transitioned.get_or_create(&StatusLabel { status }).inc();
                            })
                        }
                        Exchange::Metadata => answer_metadata(&epr, &payload, metadata_budget)
                            .await
                            .inspect(|r| {
                                let status =
                                    kaa_ecap::metadata::EndpointMetadataResponse::decode(r)
                                        .map_or(0, |r| r.status_code);
                                looked_up.get_or_create(&StatusLabel { status }).inc();
                            }),
                    };
                    if let Some(response) = response
                        && let Err(e) = bus.publish(&reply_to, Bytes::from(response)).await
                    {
                        tracing::warn!(error = %e, "could not publish the 16/ECAP response");
                    }
                    drop(permit);
                });
            }
        });
    }
    {
        let replica = settings.replica_id.clone();
        tasks.spawn(async move {
            while let Some(event) = events.recv().await {
                let (kind, datum) = event_datum(&event, &replica);
                let subject = match kind {
                    "registered" => &subjects.registered,
                    "unregistered" => &subjects.unregistered,
                    "appversion-updated" => &subjects.appversion_updated,
                    _ => &subjects.token_revoked,
                };
                match bus.publish(subject, Bytes::from(datum)).await {
                    Ok(()) => {
                        published.get_or_create(&EventLabel { event: kind }).inc();
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, event = kind, "could not publish an event")
                    }
                }
            }
        });
    }
    Ok(BusTasks { tasks })
}

/// Which 16/ECAP exchange a request belongs to.
#[derive(Debug, Clone, Copy)]
enum Exchange {
    Validation,
    Transition,
    /// The endpoint metadata lookup (kaa-rs extension).
    Metadata,
}

struct EventSubjects {
    registered: String,
    unregistered: String,
    appversion_updated: String,
    token_revoked: String,
}

fn elce_subject(kind: kaa_elce::EventKind, instance: &str) -> Result<String, BusError> {
    kind.subject(instance)
        .map(|s| s.to_string())
        .map_err(|e| BusError::Config(e.to_string()))
}
