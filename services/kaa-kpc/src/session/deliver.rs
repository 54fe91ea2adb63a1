//! The 1/KP routing of deliveries: a 4/ESP `ExtensionData` for an endpoint of
//! this session becomes a response to a waiting request or a push, or is
//! dropped and counted (`kpc_extension_data_total{outcome}`).
//!
//! - The endpoint must be one a token of this session stands for, else
//!   `no_session` (`unmatched` when the message names no endpoint).
//! - With a request ID: the waiting request it answers (see
//!   [`pending`](super::pending)), else `unmatched`; `expired` after
//!   `request-timeout`. The answer goes to the request topic + `/status` (2xx)
//!   or `/error`, at the request's QoS.
//! - Without: a push, which must name its extension instance (else
//!   `unmatched`), to `kp1/<app version>/<extension>/<token><resource path>`
//!   and `/status` or `/error`, with the token the session last used for the
//!   endpoint and the message's app version (else the token's); a resource path
//!   that makes no 1/KP topic is `unmatched`. QoS: see [`qos`](super::qos).
//! - A 2xx payload larger than `max-payload` becomes a 413 on the error topic
//!   (`too_large`); an error's payload is `{"statusCode", "reasonPhrase"}`, with
//!   the HTTP reason phrase when the message has none.
//! - Sent: `delivered`; a QoS 1 delivery with the in-flight window full:
//!   `inflight_full` (not sent).

use std::sync::Arc;

use kaa_esp::ExtensionData;
use kaa_kp::{ErrorResponse, ResponseKind};

use super::{Count, Now, SessionCore};

/// The reason phrase for an error status without one.
pub(super) fn default_reason(status_code: i32) -> String {
    u16::try_from(status_code)
        .ok()
        .and_then(|c| axum::http::StatusCode::from_u16(c).ok())
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Error")
        .to_owned()
}

impl SessionCore {
    /// The endpoint's tokens were revoked: forgets them and refuses the
    /// endpoint's waiting requests with 401.
    pub(super) fn endpoint_revoked(&mut self, endpoint_id: &str, now: Now) {
        let Some(x) = self.x.as_deref_mut() else {
            return;
        };
        x.tokens.forget_endpoint(endpoint_id);
        for pending in x.pending.take_endpoint(endpoint_id) {
            if pending.expires <= now.instant {
                continue;
            }
            let topic = kaa_kp::response_topic(&pending.topic, kaa_kp::ResponseKind::Error);
            let payload = ErrorResponse::new(401, "endpoint token revoked").to_json();
            self.send(topic, payload, pending.qos, "error");
        }
    }

    /// Delivers an ExtensionData for an endpoint of this session.
    pub(super) fn deliver(&mut self, data: &ExtensionData<'_>, now: Now) {
        let outcome = self.route_delivery(data, now);
        self.count(Count::ExtensionData(outcome));
    }

    /// Routes one delivery; the `kpc_extension_data_total` outcome.
    fn route_delivery(&mut self, data: &ExtensionData<'_>, now: Now) -> &'static str {
        let Some(endpoint_id) = data.endpoint_id.as_deref() else {
            return "unmatched";
        };
        let Some((token, endpoint)) = self
            .x
            .as_deref()
            .and_then(|x| x.tokens.for_endpoint(endpoint_id))
        else {
            return "no_session";
        };
        let (token, endpoint) = (token.to_owned(), endpoint.clone());
        let kind = ResponseKind::for_status_code(data.status_code);
        let ext = data.extension_instance_name.as_deref();
        let (topic, qos, out_kind) = match data.request_id {
            Some(request_id) => {
                let Some(pending) = self
                    .x()
                    .pending
                    .take(&endpoint.endpoint_id, ext, request_id)
                else {
                    tracing::debug!(
                        endpoint_id,
                        request_id,
                        "ExtensionData for no pending request"
                    );
                    return "unmatched";
                };
                if pending.expires <= now.instant {
                    return "expired";
                }
                let out_kind = if kind == ResponseKind::Status {
                    "response"
                } else {
                    "error"
                };
                (
                    kaa_kp::response_topic(&pending.topic, kind),
                    pending.qos,
                    out_kind,
                )
            }
            None => {
                let Some(ext) = ext else {
                    return "unmatched";
                };
                let app_version = data
                    .app_version_name
                    .as_deref()
                    .unwrap_or(&endpoint.app_version);
                let topic = match kaa_kp::request_topic(
                    app_version,
                    ext,
                    &token,
                    &data.resource_path,
                    None,
                ) {
                    Ok(t) => kaa_kp::response_topic(&t, kind),
                    Err(e) => {
                        tracing::debug!(error = %e, "push with a resource path that makes no topic");
                        return "unmatched";
                    }
                };
                let qos = self.x().push_qos.get(&(
                    Arc::clone(&endpoint.endpoint_id),
                    ext.to_owned(),
                    data.resource_path.to_string(),
                ));
                (topic, qos, "push")
            }
        };
        let max_payload = self.settings.max_payload;
        let size = data.payload.as_deref().map_or(0, <[u8]>::len);
        if kind == ResponseKind::Status && size > max_payload {
            // Too big for this session (kpc.mqtt.max-payload): the device gets a 413
            // on the error topic rather than a packet it may not be able to take.
            tracing::warn!(
                endpoint_id,
                size,
                max_payload,
                "ExtensionData payload exceeds kpc.mqtt.max-payload; 413 sent instead"
            );
            let topic = kaa_kp::response_topic(
                topic.strip_suffix("/status").unwrap_or(&topic),
                ResponseKind::Error,
            );
            let reason = format!(
                "payload of {size} bytes exceeds the MQTT payload limit of {max_payload} bytes"
            );
            let payload = ErrorResponse::new(413, reason).to_json();
            self.send(topic, payload, qos, "error");
            return "too_large";
        }
        let payload = match kind {
            ResponseKind::Status => data.payload.as_deref().unwrap_or_default().to_vec(),
            ResponseKind::Error => ErrorResponse::new(
                data.status_code,
                data.reason_phrase
                    .as_deref()
                    .map_or_else(|| default_reason(data.status_code), str::to_owned),
            )
            .to_json(),
        };
        if self.send(topic, payload, qos, out_kind) {
            "delivered"
        } else {
            "inflight_full"
        }
    }
}
