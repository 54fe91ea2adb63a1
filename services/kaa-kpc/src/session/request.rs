//! A device's PUBLISH, from the packet to a 4/ESP `ClientData` on the bus or a
//! refusal.
//!
//! The steps, each after the driver answered the previous question:
//! 1. the MQTT checks (a topic without wildcards or NUL, the QoS 2 window and
//!    retransmissions), then [`route::check_request`] (topic, payload size,
//!    tokens per session); a token the session resolved for this app version is
//!    not resolved again, others are ([`Output::Resolve`]);
//! 2. the endpoint is claimed ([`Output::Claim`]);
//! 3. [`route::check_extension`], room among the pending requests, then the
//!    `ClientData` ([`Output::Forward`]);
//! 4. once it is on the bus, the request waits for its answer (when it has a
//!    request ID) and its resource's push QoS is remembered.
//!
//! The acknowledgement (PUBACK, PUBREC) goes out when the request completes:
//! after the `ClientData` is on the bus, and before any error response the
//! session sends for it.

use std::sync::Arc;

use kaa_ism::avro::Encode;
use kaa_kp::Topic;
use rumqttc::mqttbytes::QoS;
use rumqttc::mqttbytes::v4::{Packet, PubAck, PubRec, Publish};

use super::pending::Pending;
use super::qos::response_qos;
use super::tokens::SessionEndpoint;
use super::{Close, Count, Now, Output, SessionCore};
use crate::resolver::{ResolveError, ResolvedEndpoint};
use crate::route::{self, Rejection};

/// A device request waiting for the answer to one of its questions.
#[derive(Debug)]
pub(super) struct Request {
    publish: Publish,
    /// The QoS to answer with.
    qos: QoS,
    /// The `ClientData`'s, and the refusal's in the log when there is none.
    correlation_id: String,
}

/// The question a [`Request`] waits for the answer to.
#[derive(Debug)]
pub(super) enum Stage {
    /// Waiting for [`Input::Resolved`](super::Input::Resolved).
    Resolving,
    /// Waiting for [`Input::Claimed`](super::Input::Claimed).
    Claiming(SessionEndpoint),
    /// Waiting for [`Input::Forwarded`](super::Input::Forwarded).
    Forwarding(SessionEndpoint, Pending),
}

impl Request {
    /// The topic as the device sent it.
    pub(super) fn topic_str(&self) -> &str {
        &self.publish.topic
    }

    /// The request topic, checked by [`route::check_request`] when the request
    /// began (so this does not fail; if it did, the request is refused as a bad
    /// topic).
    fn topic(&self) -> Result<Topic<'_>, Rejection> {
        Topic::parse_request(&self.publish.topic)
            .map_err(|e| Rejection::new(400, format!("invalid 1/KP topic: {e}"), "bad_topic"))
    }
}

impl SessionCore {
    pub(super) fn handle_publish(&mut self, publish: Publish) {
        let topic = &publish.topic;
        if topic.is_empty() || topic.contains(['+', '#', '\0']) {
            return self.close(Close::Violation(format!(
                "PUBLISH topic {:?} is empty or holds a wildcard or NUL",
                topic.chars().take(64).collect::<String>()
            )));
        }
        if publish.qos == QoS::ExactlyOnce {
            if self.x().qos2_incoming.contains(&publish.pkid) {
                // A retransmission before PUBREL: already handled.
                return self.transmit(Packet::PubRec(PubRec::new(publish.pkid)));
            }
            if self.x().qos2_incoming.len() >= self.settings.max_inflight {
                return self.close(Close::Violation(
                    "too many QoS 2 messages waiting for PUBREL".into(),
                ));
            }
            self.x().qos2_incoming.insert(publish.pkid);
        }
        let request = Request {
            qos: response_qos(publish.qos),
            correlation_id: (self.correlation_ids)(),
            publish,
        };
        let limits = self.settings.route_limits();
        let checked = route::check_request(
            &request.publish.topic,
            request.publish.payload.len(),
            &limits,
            |token| self.x.as_deref().is_some_and(|x| x.tokens.contains(token)),
            self.x.as_deref().map_or(0, |x| x.tokens.len()),
        );
        let (app_version, token) = match checked {
            Ok(t) => (t.app_version_name(), t.endpoint_token()),
            Err(r) => return self.complete(request, Some((r, None))),
        };
        let (ask, stage) = match self.x().tokens.cached(token, app_version) {
            Some(endpoint) => (
                Output::Claim {
                    endpoint_id: Arc::clone(&endpoint.endpoint_id),
                    app_version: Arc::clone(&endpoint.app_version),
                },
                Stage::Claiming(endpoint),
            ),
            None => (
                Output::Resolve {
                    app_version: app_version.to_owned(),
                    token: token.to_owned(),
                },
                Stage::Resolving,
            ),
        };
        self.outputs.push_back(ask);
        self.request = Some(Box::new((request, stage)));
    }

    pub(super) fn handle_resolved(&mut self, result: Result<ResolvedEndpoint, ResolveError>) {
        let Some((request, Stage::Resolving)) = self
            .request
            .take_if(|pair| matches!(pair.1, Stage::Resolving))
            .map(|pair| *pair)
        else {
            tracing::debug!("token resolution for no request ignored");
            return;
        };
        let topic = match request.topic() {
            Ok(t) => t,
            Err(r) => return self.complete(request, Some((r, None))),
        };
        let endpoint = match result {
            Ok(resolved) => self.x().tokens.insert(
                topic.endpoint_token(),
                topic.app_version_name(),
                &resolved.endpoint_id,
            ),
            Err(e) => {
                let kind = if e.status_code() == 503 {
                    "token_resolution"
                } else {
                    "unknown_token"
                };
                let r = Rejection::new(e.status_code(), e.to_string(), kind);
                return self.complete(request, Some((r, None)));
            }
        };
        self.outputs.push_back(Output::Claim {
            endpoint_id: Arc::clone(&endpoint.endpoint_id),
            app_version: Arc::clone(&endpoint.app_version),
        });
        self.request = Some(Box::new((request, Stage::Claiming(endpoint))));
    }

    pub(super) fn handle_claimed(&mut self, now: Now) {
        let Some((request, Stage::Claiming(endpoint))) = self
            .request
            .take_if(|pair| matches!(pair.1, Stage::Claiming(_)))
            .map(|pair| *pair)
        else {
            tracing::debug!("claim for no request ignored");
            return;
        };
        let forward = self.forward(&request, &endpoint, now);
        match forward {
            Ok((subject, client_data, pending)) => {
                self.outputs.push_back(Output::Forward {
                    subject,
                    client_data,
                });
                self.request = Some(Box::new((request, Stage::Forwarding(endpoint, pending))));
            }
            Err(r) => self.complete(request, Some((r, Some(endpoint.endpoint_id)))),
        }
    }

    /// The checks after the claim, and the `ClientData` with its subject.
    fn forward(
        &mut self,
        request: &Request,
        endpoint: &SessionEndpoint,
        now: Now,
    ) -> Result<(String, bytes::Bytes, Pending), Rejection> {
        let topic = request.topic()?;
        // After the token: a token the session used is connected, whatever
        // extension the request named.
        route::check_extension(&topic, &self.settings.route_limits())?;
        let max_inflight = self.settings.max_inflight;
        if topic.request_id().is_some() && !self.x().pending.has_room(max_inflight, now.instant) {
            let reason = format!("too many requests in flight (limit {max_inflight})");
            return Err(Rejection::new(429, reason, "too_many_requests"));
        }
        let timeout = self.settings.request_timeout;
        let (subject, data) = route::client_data(
            &topic,
            &endpoint.endpoint_id,
            &request.publish.payload,
            request.correlation_id.clone(),
            now.wall.0,
            i64::try_from(timeout.as_millis()).unwrap_or(i64::MAX),
        )?;
        let pending = Pending {
            topic: request.publish.topic.clone(),
            qos: request.qos,
            expires: now.instant + timeout,
        };
        Ok((subject, bytes::Bytes::from(data.to_vec()), pending))
    }

    pub(super) fn handle_forwarded(&mut self, on_the_bus: bool) {
        let Some((request, Stage::Forwarding(endpoint, pending))) = self
            .request
            .take_if(|pair| matches!(pair.1, Stage::Forwarding(..)))
            .map(|pair| *pair)
        else {
            tracing::debug!("forward result for no request ignored");
            return;
        };
        let endpoint_id = endpoint.endpoint_id;
        if !on_the_bus {
            let r = Rejection::new(503, "the extension service is unreachable", "bus");
            return self.complete(request, Some((r, Some(endpoint_id))));
        }
        self.count(Count::MessageIn("request"));
        let topic = match request.topic() {
            Ok(t) => t,
            Err(r) => return self.complete(request, Some((r, Some(endpoint_id)))),
        };
        let ext = topic.extension_instance_name().to_owned();
        let resource_path = topic.resource_path().to_owned();
        if let Some(id) = topic.request_id() {
            self.x()
                .pending
                .insert((Arc::clone(&endpoint_id), ext.clone(), id.get()), pending);
        }
        let resource = (endpoint_id, ext, resource_path);
        if self.x().push_qos.remember(resource.clone(), request.qos) {
            // For a CMX that restarts while this session stays up.
            let (endpoint_id, extension, resource_path) = resource;
            self.outputs.push_back(Output::NoteResource {
                endpoint_id,
                extension,
                resource_path,
            });
        }
        self.complete(request, None);
    }

    /// Ends a request: its acknowledgement, then its refusal, if any.
    fn complete(&mut self, request: Request, refusal: Option<(Rejection, Option<Arc<str>>)>) {
        let publish = &request.publish;
        match publish.qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => self.transmit(Packet::PubAck(PubAck::new(publish.pkid))),
            QoS::ExactlyOnce => self.transmit(Packet::PubRec(PubRec::new(publish.pkid))),
        }
        if let Some((rejection, endpoint_id)) = refusal {
            self.reject(&request, &rejection, endpoint_id.as_deref());
        }
    }

    /// Answers a request KPC rejects itself, when its topic carries a request ID.
    /// Without one the device cannot be told (1/KP: no response): the refusal is
    /// counted in `kpc_refused_without_request_id_total` and logged with the
    /// request's correlation ID and endpoint (when the token resolved), never the
    /// payload.
    fn reject(&mut self, request: &Request, rejection: &Rejection, endpoint_id: Option<&str>) {
        self.count(Count::MessageIn("rejected"));
        self.count(Count::Error(rejection.kind));
        let topic = request.publish.topic.as_str();
        let (status_code, reason) = (rejection.status_code, rejection.reason.as_str());
        let Some((response, payload)) = rejection.response(topic) else {
            self.count(Count::Refused(rejection.kind));
            tracing::info!(
                "correlationId" = %request.correlation_id,
                endpointId = %endpoint_id.unwrap_or(""),
                status = status_code,
                reason = rejection.kind,
                detail = reason,
                "device request refused; no request ID, so the device is not told"
            );
            return;
        };
        tracing::debug!(topic, status_code, reason, "request rejected");
        self.send(response, payload, request.qos, "error");
    }
}
