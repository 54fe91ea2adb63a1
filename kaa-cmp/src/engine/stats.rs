//! What the engine counts ([`Stats`]) and the requests it refused without
//! telling the device ([`Refusal`], for the driver to log and count).

use std::borrow::Cow;
use std::sync::Arc;

/// Why the engine refused a device request. [`RefusalReason::as_str`] is the
/// label a driver's metrics use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RefusalReason {
    /// `no_endpoint`: the `ClientData` names no endpoint (400).
    NoEndpoint,
    /// `unknown_app_version`: not one of the configured app versions (404).
    UnknownAppVersion,
    /// `unknown_resource`: not a 7/CMP resource path (404).
    UnknownResource,
    /// `config_name_mismatch`: the 4/ESP `configName` names another
    /// configuration than the resource path (400).
    ConfigNameMismatch,
    /// `malformed_payload`: not a valid 7/CMP message (400).
    MalformedPayload,
    /// `config_id_too_long`: a `configId` over `max_config_id_len` (400).
    ConfigIdTooLong,
    /// `limit`: an engine limit was reached (503).
    Limit,
    /// `provider_timeout`: the provider did not answer in time (504).
    ProviderTimeout,
    /// `provider_error`: the provider answered with an error or something
    /// unusable (its 4xx/5xx, or 502).
    ProviderError,
    /// `endpoint_removed`: the endpoint was evicted, expired or unregistered
    /// while the request waited (503 or 404), or is served by another replica
    /// of this CMX instance (503: moved while the request waited, or handed
    /// over to a replica that no longer owns it; the retry reaches the owner).
    EndpointRemoved,
}

impl RefusalReason {
    /// Every reason.
    pub const ALL: [RefusalReason; 10] = [
        RefusalReason::NoEndpoint,
        RefusalReason::UnknownAppVersion,
        RefusalReason::UnknownResource,
        RefusalReason::ConfigNameMismatch,
        RefusalReason::MalformedPayload,
        RefusalReason::ConfigIdTooLong,
        RefusalReason::Limit,
        RefusalReason::ProviderTimeout,
        RefusalReason::ProviderError,
        RefusalReason::EndpointRemoved,
    ];

    /// The snake_case label, e.g. `malformed_payload`.
    pub fn as_str(self) -> &'static str {
        match self {
            RefusalReason::NoEndpoint => "no_endpoint",
            RefusalReason::UnknownAppVersion => "unknown_app_version",
            RefusalReason::UnknownResource => "unknown_resource",
            RefusalReason::ConfigNameMismatch => "config_name_mismatch",
            RefusalReason::MalformedPayload => "malformed_payload",
            RefusalReason::ConfigIdTooLong => "config_id_too_long",
            RefusalReason::Limit => "limit",
            RefusalReason::ProviderTimeout => "provider_timeout",
            RefusalReason::ProviderError => "provider_error",
            RefusalReason::EndpointRemoved => "endpoint_removed",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

impl std::fmt::Display for RefusalReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A device request the engine refused without telling the device: it had no
/// request ID, and 1/KP sends no response to such a request (not even on
/// `…/error`). From [`Cmx::poll_refusal`](super::Cmx::poll_refusal), for the
/// driver to log; it holds nothing of the request's payload.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Refusal {
    /// The request's `ClientData` correlation ID.
    pub correlation_id: String,
    /// The endpoint, when the request named one.
    pub endpoint_id: Option<Arc<str>>,
    /// The request's `appVersionName`.
    pub app_version_name: Arc<str>,
    /// The request's `resourcePath`.
    pub resource_path: Arc<str>,
    /// The status an answer would have had.
    pub status_code: i32,
    /// Why, as a metrics label.
    pub reason: RefusalReason,
    /// What went wrong, in words, without any text from the payload.
    pub detail: Cow<'static, str>,
}

/// Refusals of requests without a request ID, counted by [`RefusalReason`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RefusalCounts([u64; RefusalReason::ALL.len()]);

impl RefusalCounts {
    /// The count for `reason`.
    pub fn get(&self, reason: RefusalReason) -> u64 {
        self.0.get(reason.index()).copied().unwrap_or(0)
    }

    /// Every reason with its count.
    pub fn iter(&self) -> impl Iterator<Item = (RefusalReason, u64)> + '_ {
        RefusalReason::ALL.iter().map(|&r| (r, self.get(r)))
    }

    /// All reasons together.
    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }

    pub(super) fn add(&mut self, reason: RefusalReason) {
        if let Some(n) = self.0.get_mut(reason.index()) {
            *n = n.saturating_add(1);
        }
    }
}

/// Counters of what the engine did, for metrics and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// `ClientData` messages handled.
    pub client_data: u64,
    /// `ClientData` dropped because it had expired on arrival.
    pub client_data_expired: u64,
    /// Error responses not sent because the request had no request ID (1/KP:
    /// no request ID, no response); by reason in `refused_without_request_id`.
    pub errors_without_request_id: u64,
    /// The same refusals, by reason.
    pub refused_without_request_id: RefusalCounts,
    /// Refusals counted but not kept for [`Cmx::poll_refusal`](crate::Cmx::poll_refusal)
    /// because too many were waiting to be taken.
    pub refusals_not_kept: u64,
    /// CDTP requests sent.
    pub cdtp_requests: u64,
    /// CDTP responses matched to a request in flight.
    pub cdtp_responses: u64,
    /// CDTP responses with an unknown correlation ID (late, duplicated, foreign).
    pub cdtp_responses_unmatched: u64,
    /// CDTP responses discarded because a change arrived after the request was
    /// sent; the configuration was requested again.
    pub cdtp_responses_stale: u64,
    /// CDTP requests that got no answer in time.
    pub cdtp_timeouts: u64,
    /// CDTP responses that were errors or unusable.
    pub provider_errors: u64,
    /// Device requests refused with 503 (too many CDTP requests in flight, too
    /// many waiting on one, too many names).
    pub backpressure_rejections: u64,
    /// Configurations pushed.
    pub pushes: u64,
    /// Answers and pushes on the delta resource (kaa-rs extension) that
    /// carried an RFC 6902 patch.
    pub delta_patches: u64,
    /// Answers and pushes on the delta resource that carried the whole
    /// configuration (first request, base not cached, patch not clearly
    /// smaller, absent configuration).
    pub delta_whole: u64,
    /// Pushes not sent to a device watching parts of a configuration because
    /// none of its parts changed.
    pub delta_quiet: u64,
    /// Pushes abandoned after the configured retries.
    pub push_retries_exhausted: u64,
    /// `ConfigUpdated` broadcasts handled.
    pub config_updates: u64,
    /// `ConfigUpdated` broadcasts about endpoints, app versions or names the
    /// engine does not track.
    pub config_updates_ignored: u64,
    /// Endpoints forgotten because `max_endpoints` was reached.
    pub endpoints_evicted: u64,
    /// Endpoints forgotten after `endpoint_ttl`.
    pub endpoints_expired: u64,
    /// [`Cmx::resync`](crate::Cmx::resync) calls (bus reconnects, provider
    /// restarts).
    pub resyncs: u64,
    /// Sessions requests sent ([`Output::SessionsRequest`](super::Output::SessionsRequest)).
    pub sessions_requests: u64,
    /// Sessions lists handled ([`Input::Sessions`](super::Input::Sessions)).
    pub sessions_responses: u64,
    /// Replicas (kaa-rs extension): times the member list changed
    /// ([`Input::Members`](super::Input::Members)).
    pub membership_changes: u64,
    /// Replicas: hand-over fences raised (this replica joined live members;
    /// see [`Cmx::set_member_view`](crate::Cmx::set_member_view)).
    pub handover_fences: u64,
    /// Replicas: of those, lifted because every other member confirmed this
    /// replica's view.
    pub handover_fences_confirmed: u64,
    /// Replicas: of those, lifted at [`CmxConfig::handover_delay`](super::CmxConfig::handover_delay)
    /// without every confirmation (a member that does not confirm views, or
    /// whose confirmation was late).
    pub handover_fences_timed_out: u64,
    /// Replicas: 6/CDTP answers (and deadlines) held while a fence was up,
    /// handled when it was lifted.
    pub handover_held_answers: u64,
    /// Replicas: `ClientData` about endpoints another replica owns, handed
    /// over to it ([`Output::HandOver`](super::Output::HandOver)).
    pub handed_over: u64,
    /// Replicas: `ClientData` received on this replica's own subject
    /// ([`Input::HandedOver`](super::Input::HandedOver)).
    pub handed_over_received: u64,
    /// Replicas: of those, about endpoints this replica does not own in its
    /// view (the members' views differed for a moment): answered 503, or an
    /// applied report broadcast without bookkeeping.
    pub handed_over_not_owned: u64,
    /// Replicas: events, `ConfigUpdated` broadcasts and listed sessions about
    /// endpoints another replica owns, ignored (counted per endpoint).
    pub not_owned_ignored: u64,
    /// Endpoints of an app version not in [`CmxConfig::app_versions`](super::CmxConfig::app_versions)
    /// that events or listed sessions named, not tracked (counted per endpoint and
    /// message; their devices' own requests are refused with a 404 and counted
    /// among the refusals).
    pub unknown_app_version_ignored: u64,
    /// Replicas: endpoints forgotten because another replica owns them now.
    pub endpoints_moved: u64,
    /// Configuration requests whose `observe` was not taken because the
    /// engine had already seen a newer request (by `ClientData` timestamp) for
    /// the same configuration: with replicas, one handed over and one direct
    /// can arrive out of order.
    pub observe_out_of_order: u64,
    /// Applied reports (2xx) stamped after the engine's last delivery of that
    /// configuration that name another one than the engine last delivered or
    /// the device last reported (counted when a check is scheduled, not while
    /// one is pending): the report crossed the delivery,
    /// or the device received the engine's answers and pushes out of order and
    /// holds an older configuration. After a push retry delay each starts a
    /// fetch and a push of the current configuration unless the device has
    /// reported it applied by then.
    pub applied_behind_delivery: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_refusal_reason_has_its_own_count_and_label() {
        let mut counts = RefusalCounts::default();
        for (i, reason) in RefusalReason::ALL.iter().enumerate() {
            assert_eq!(reason.index(), i, "{reason}: ALL is in declaration order");
            for _ in 0..=i {
                counts.add(*reason);
            }
        }
        for (i, (reason, n)) in counts.iter().enumerate() {
            assert_eq!(n, i as u64 + 1, "{reason}");
        }
        assert_eq!(counts.total(), (1..=10).sum::<u64>());
        let labels: std::collections::HashSet<_> =
            RefusalReason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(labels.len(), RefusalReason::ALL.len());
    }
}
