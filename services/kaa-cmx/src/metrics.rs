//! The CMX service's Prometheus metrics (names start with `cmx_`).
//!
//! | metric | type | what |
//! |---|---|---|
//! | `cmx_client_data_total` | counter | 4/ESP `ClientData` handled (configuration requests and applied reports) |
//! | `cmx_client_data_expired_total` | counter | `ClientData` dropped because it expired before it arrived |
//! | `cmx_responses_total{status}` | counter | `ExtensionData` answers to device requests, by status code |
//! | `cmx_pushes_total` | counter | configurations pushed (`ExtensionData` without request ID) |
//! | `cmx_config_applied_total{result}` | counter | `endpoint.config.applied` broadcasts, `result` = `applied` (2xx) or `rejected` |
//! | `cmx_cdtp_requests_total` | counter | 6/CDTP requests sent to the provider |
//! | `cmx_cdtp_timeouts_total` | counter | 6/CDTP requests that got no answer in time (devices got a 504) |
//! | `cmx_provider_errors_total` | counter | provider answers that were errors or unusable |
//! | `cmx_cdtp_latency_seconds` | histogram | from publishing a 6/CDTP request to handling its response |
//! | `cmx_backpressure_rejections_total` | counter | device requests refused with 503 by an engine limit |
//! | `cmx_refused_without_request_id_total{reason}` | counter | device requests refused without an answer because they had no request ID (e.g. a malformed applied report), by [`RefusalReason`](kaa_cmp::engine::RefusalReason) label; each is also logged at INFO with its correlation ID, endpoint and reason |
//! | `cmx_config_updates_total` | counter | `endpoint.config.updated` events handled |
//! | `cmx_endpoints_expired_total`, `cmx_endpoints_evicted_total` | counter | endpoints forgotten after the TTL / past `max-endpoints` |
//! | `cmx_malformed_messages_total{kind}` | counter | bus messages that could not be decoded (dropped) |
//! | `cmx_publish_errors_total` | counter | outputs the bus refused to publish |
//! | `cmx_handed_over_total`, `cmx_handed_over_received_total`, `cmx_handed_over_not_owned_total` | counter | replicas (kaa-rs extension): `ClientData` handed over to the owner replica, received handed over, and received about an endpoint this replica does not own |
//! | `cmx_endpoints_moved_total`, `cmx_membership_changes_total` | counter | replicas: endpoints forgotten because another replica owns them now; changes of the live members |
//! | `cmx_handover_fences_total`, `cmx_handover_fences_timed_out_total`, `cmx_handover_held_answers_total` | counter | replicas: hand-over fences raised on joining live members, those lifted at the deadline without every confirmation, and 6/CDTP answers held while one was up |
//! | `cmx_unknown_app_version_ignored_total` | counter | endpoints of an app version not in `kaa.applications` that 9/ELCE events or listed sessions named, not tracked ([`Stats::unknown_app_version_ignored`](kaa_cmp::engine::Stats::unknown_app_version_ignored)) |
//! | `cmx_applied_behind_delivery_total` | counter | applied reports naming an older configuration than the one last delivered (answers and pushes reached the device out of order); each makes CMX push the current one again ([`Stats::applied_behind_delivery`](kaa_cmp::engine::Stats::applied_behind_delivery)) |
//! | `cmx_no_responders_total` | counter | NATS "no responders" statuses on the 6/CDTP reply subject: a request found no provider subscribed (it then runs into its timeout) |
//! | `cmx_delta_patches_total` | counter | configuration deltas (kaa-rs extension, `/config/json-patch`): answers and pushes that carried an RFC 6902 patch ([`Stats::delta_patches`](kaa_cmp::engine::Stats::delta_patches)) |
//! | `cmx_delta_whole_total` | counter | deltas: answers and pushes on the delta resource that carried the whole configuration (first request, base not cached, patch not clearly smaller, absent configuration) ([`Stats::delta_whole`](kaa_cmp::engine::Stats::delta_whole)) |
//! | `cmx_delta_quiet_total` | counter | deltas: pushes not sent to a device watching parts of a configuration because none of its parts changed ([`Stats::delta_quiet`](kaa_cmp::engine::Stats::delta_quiet)) |
//! | `cmx_delta_cache_bytes` | gauge | deltas: bytes held in the cache of configurations patches start from (at most `cmx.limits.delta-cache-bytes`; [`Cmx::delta_cache_bytes`](kaa_cmp::engine::Cmx::delta_cache_bytes)) |
//! | `cmx_tracked_endpoints` | gauge | endpoints the engine tracks |
//! | `cmx_pending_cdtp_requests` | gauge | 6/CDTP requests in flight |

use std::time::Duration;

use kaa_cmp::engine::Stats;
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};

use kaa_service::Metrics;

/// `status` label of `cmx_responses_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabel {
    status: i32,
}

/// `reason` label of `cmx_refused_without_request_id_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

/// `result` label of `cmx_config_applied_total`.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
enum AppliedResult {
    applied,
    rejected,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: AppliedResult,
}

/// What kind of bus message could not be decoded.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub(crate) enum MessageKind {
    client_data,
    cdtp_response,
    config_updated,
    elce_event,
    /// A kaa-rs `SessionsResponse` (9/ELCE extension).
    sessions_response,
    /// A kaa-rs `ProviderStarted` (6/CDTP extension).
    provider_started,
}

impl MessageKind {
    /// The label of an engine input kind that comes from the bus.
    pub(crate) fn of_input(kind: kaa_cmp::engine::InputKind) -> Option<Self> {
        use kaa_cmp::engine::InputKind as K;
        Some(match kind {
            K::ClientData => MessageKind::client_data,
            K::ConfigResponse => MessageKind::cdtp_response,
            K::ConfigUpdated => MessageKind::config_updated,
            K::Event => MessageKind::elce_event,
            K::Sessions => MessageKind::sessions_response,
            K::ProviderStarted => MessageKind::provider_started,
            _ => return None,
        })
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: MessageKind,
}

/// The engine's sizes the gauges show, read at each [`CmxMetrics::sync`].
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Gauges {
    /// Endpoints the engine tracks.
    pub(crate) tracked: usize,
    /// 6/CDTP requests in flight.
    pub(crate) pending: usize,
    /// Bytes in the delta base cache.
    pub(crate) delta_cache_bytes: usize,
}

/// The service's metrics, registered in a [`Metrics`] registry.
#[derive(Clone, Debug)]
pub(crate) struct CmxMetrics {
    registry: Metrics,
    client_data: Counter,
    client_data_expired: Counter,
    responses: Family<StatusLabel, Counter>,
    /// `responses{status="200"}`, looked up once (the family's lock and hash are
    /// otherwise paid on every answer); created on the first 200, as the family
    /// would.
    responses_ok: std::sync::OnceLock<Counter>,
    pushes: Counter,
    applied: Family<ResultLabel, Counter>,
    cdtp_requests: Counter,
    cdtp_timeouts: Counter,
    provider_errors: Counter,
    cdtp_latency: Histogram,
    backpressure: Counter,
    refused: Family<ReasonLabel, Counter>,
    config_updates: Counter,
    endpoints_expired: Counter,
    endpoints_evicted: Counter,
    malformed: Family<KindLabel, Counter>,
    publish_errors: Counter,
    no_responders: Counter,
    handed_over: Counter,
    handed_over_received: Counter,
    handed_over_not_owned: Counter,
    endpoints_moved: Counter,
    membership_changes: Counter,
    handover_fences: Counter,
    handover_fences_timed_out: Counter,
    handover_held_answers: Counter,
    applied_behind_delivery: Counter,
    unknown_app_version_ignored: Counter,
    delta_patches: Counter,
    delta_whole: Counter,
    delta_quiet: Counter,
    delta_cache_bytes: Gauge,
    tracked_endpoints: Gauge,
    pending_requests: Gauge,
    /// The engine counters already added to the Prometheus counters.
    seen: Stats,
}

impl CmxMetrics {
    /// Registers every metric in a new `cmx_` registry.
    pub(crate) fn new() -> Self {
        let registry = Metrics::new("cmx");
        let m = CmxMetrics {
            registry,
            client_data: Counter::default(),
            client_data_expired: Counter::default(),
            responses: Family::default(),
            responses_ok: std::sync::OnceLock::new(),
            pushes: Counter::default(),
            applied: Family::default(),
            cdtp_requests: Counter::default(),
            cdtp_timeouts: Counter::default(),
            provider_errors: Counter::default(),
            cdtp_latency: Histogram::new(exponential_buckets(0.000_25, 2.0, 16)),
            backpressure: Counter::default(),
            refused: Family::default(),
            config_updates: Counter::default(),
            endpoints_expired: Counter::default(),
            endpoints_evicted: Counter::default(),
            malformed: Family::default(),
            publish_errors: Counter::default(),
            no_responders: Counter::default(),
            handed_over: Counter::default(),
            handed_over_received: Counter::default(),
            handed_over_not_owned: Counter::default(),
            endpoints_moved: Counter::default(),
            membership_changes: Counter::default(),
            handover_fences: Counter::default(),
            handover_fences_timed_out: Counter::default(),
            handover_held_answers: Counter::default(),
            applied_behind_delivery: Counter::default(),
            unknown_app_version_ignored: Counter::default(),
            delta_patches: Counter::default(),
            delta_whole: Counter::default(),
            delta_quiet: Counter::default(),
            delta_cache_bytes: Gauge::default(),
            tracked_endpoints: Gauge::default(),
            pending_requests: Gauge::default(),
            seen: Stats::default(),
        };
        let r = &m.registry;
        r.register(
            "client_data",
            "4/ESP ClientData handled (configuration requests and applied reports)",
            m.client_data.clone(),
        );
        r.register(
            "client_data_expired",
            "ClientData dropped because it had expired on arrival",
            m.client_data_expired.clone(),
        );
        r.register(
            "responses",
            "ExtensionData answers to device requests, by status code",
            m.responses.clone(),
        );
        r.register(
            "pushes",
            "Configurations pushed to devices",
            m.pushes.clone(),
        );
        r.register(
            "config_applied",
            "endpoint.config.applied broadcasts: applied (2xx) or rejected",
            m.applied.clone(),
        );
        r.register(
            "cdtp_requests",
            "6/CDTP requests sent to the configuration provider",
            m.cdtp_requests.clone(),
        );
        r.register(
            "cdtp_timeouts",
            "6/CDTP requests without an answer in time (devices got a 504)",
            m.cdtp_timeouts.clone(),
        );
        r.register(
            "provider_errors",
            "Configuration provider answers that were errors or unusable",
            m.provider_errors.clone(),
        );
        r.register(
            "cdtp_latency_seconds",
            "Time from publishing a 6/CDTP request to handling its response",
            m.cdtp_latency.clone(),
        );
        r.register(
            "backpressure_rejections",
            "Device requests refused with 503 by an engine limit",
            m.backpressure.clone(),
        );
        r.register(
            "refused_without_request_id",
            "Device requests refused without an answer because they had no request ID, by reason",
            m.refused.clone(),
        );
        r.register(
            "config_updates",
            "endpoint.config.updated events handled",
            m.config_updates.clone(),
        );
        r.register(
            "endpoints_expired",
            "Endpoints forgotten after the state TTL",
            m.endpoints_expired.clone(),
        );
        r.register(
            "endpoints_evicted",
            "Endpoints forgotten because max-endpoints was reached",
            m.endpoints_evicted.clone(),
        );
        r.register(
            "malformed_messages",
            "Bus messages that could not be decoded and were dropped",
            m.malformed.clone(),
        );
        r.register(
            "publish_errors",
            "Outputs the bus refused to publish",
            m.publish_errors.clone(),
        );
        r.register(
            "no_responders",
            "NATS no-responders statuses on the 6/CDTP reply subject",
            m.no_responders.clone(),
        );
        r.register(
            "handed_over",
            "Replicas: ClientData about endpoints another replica owns, handed over to it",
            m.handed_over.clone(),
        );
        r.register(
            "handed_over_received",
            "Replicas: ClientData received on this replica's own subject (handed over)",
            m.handed_over_received.clone(),
        );
        r.register(
            "handed_over_not_owned",
            "Replicas: handed-over ClientData about endpoints this replica does not own in its view (answered 503, or an applied report broadcast)",
            m.handed_over_not_owned.clone(),
        );
        r.register(
            "endpoints_moved",
            "Replicas: endpoints forgotten because another replica owns them now",
            m.endpoints_moved.clone(),
        );
        r.register(
            "membership_changes",
            "Replicas: changes of the live members of this CMX instance",
            m.membership_changes.clone(),
        );
        r.register(
            "handover_fences",
            "Replicas: hand-over fences raised (this replica joined live members and delivers nothing until they confirm the new member list)",
            m.handover_fences.clone(),
        );
        r.register(
            "handover_fences_timed_out",
            "Replicas: hand-over fences lifted at the deadline without every member's confirmation",
            m.handover_fences_timed_out.clone(),
        );
        r.register(
            "handover_held_answers",
            "Replicas: 6/CDTP answers held while a hand-over fence was up",
            m.handover_held_answers.clone(),
        );
        r.register(
            "applied_behind_delivery",
            "Applied reports naming an older configuration than the one last delivered (deliveries reordered); each makes CMX push the current one again",
            m.applied_behind_delivery.clone(),
        );
        r.register(
            "unknown_app_version_ignored",
            "Endpoints of an app version not in kaa.applications that events or listed sessions named, not tracked",
            m.unknown_app_version_ignored.clone(),
        );
        r.register(
            "delta_patches",
            "Configuration deltas (kaa-rs extension): answers and pushes that carried an RFC 6902 patch",
            m.delta_patches.clone(),
        );
        r.register(
            "delta_whole",
            "Configuration deltas: answers and pushes on the delta resource that carried the whole configuration",
            m.delta_whole.clone(),
        );
        r.register(
            "delta_quiet",
            "Configuration deltas: pushes not sent to a device watching parts because none of its parts changed",
            m.delta_quiet.clone(),
        );
        r.register(
            "delta_cache_bytes",
            "Configuration deltas: bytes held in the cache of configurations patches start from",
            m.delta_cache_bytes.clone(),
        );
        r.register(
            "tracked_endpoints",
            "Endpoints the engine tracks",
            m.tracked_endpoints.clone(),
        );
        r.register(
            "pending_cdtp_requests",
            "6/CDTP requests in flight",
            m.pending_requests.clone(),
        );
        m
    }

    /// The registry (for `/metrics`).
    pub(crate) fn registry(&self) -> &Metrics {
        &self.registry
    }

    /// Brings the counters and gauges up to date with the engine.
    pub(crate) fn sync(&mut self, stats: &Stats, gauges: Gauges) {
        fn add(counter: &Counter, now: u64, seen: &mut u64) {
            if now > *seen {
                counter.inc_by(now - *seen);
                *seen = now;
            }
        }
        let seen = &mut self.seen;
        add(&self.client_data, stats.client_data, &mut seen.client_data);
        add(&self.handed_over, stats.handed_over, &mut seen.handed_over);
        add(
            &self.handed_over_received,
            stats.handed_over_received,
            &mut seen.handed_over_received,
        );
        add(
            &self.handed_over_not_owned,
            stats.handed_over_not_owned,
            &mut seen.handed_over_not_owned,
        );
        add(
            &self.endpoints_moved,
            stats.endpoints_moved,
            &mut seen.endpoints_moved,
        );
        add(
            &self.membership_changes,
            stats.membership_changes,
            &mut seen.membership_changes,
        );
        add(
            &self.handover_fences,
            stats.handover_fences,
            &mut seen.handover_fences,
        );
        add(
            &self.handover_fences_timed_out,
            stats.handover_fences_timed_out,
            &mut seen.handover_fences_timed_out,
        );
        add(
            &self.handover_held_answers,
            stats.handover_held_answers,
            &mut seen.handover_held_answers,
        );
        add(
            &self.applied_behind_delivery,
            stats.applied_behind_delivery,
            &mut seen.applied_behind_delivery,
        );
        add(
            &self.unknown_app_version_ignored,
            stats.unknown_app_version_ignored,
            &mut seen.unknown_app_version_ignored,
        );
        add(
            &self.client_data_expired,
            stats.client_data_expired,
            &mut seen.client_data_expired,
        );
        add(&self.pushes, stats.pushes, &mut seen.pushes);
        add(
            &self.cdtp_requests,
            stats.cdtp_requests,
            &mut seen.cdtp_requests,
        );
        add(
            &self.cdtp_timeouts,
            stats.cdtp_timeouts,
            &mut seen.cdtp_timeouts,
        );
        add(
            &self.provider_errors,
            stats.provider_errors,
            &mut seen.provider_errors,
        );
        add(
            &self.backpressure,
            stats.backpressure_rejections,
            &mut seen.backpressure_rejections,
        );
        for (reason, now) in stats.refused_without_request_id.iter() {
            let before = seen.refused_without_request_id.get(reason);
            if now > before {
                self.refused
                    .get_or_create(&ReasonLabel {
                        reason: reason.as_str(),
                    })
                    .inc_by(now - before);
            }
        }
        seen.refused_without_request_id = stats.refused_without_request_id.clone();
        add(
            &self.config_updates,
            stats.config_updates,
            &mut seen.config_updates,
        );
        add(
            &self.endpoints_expired,
            stats.endpoints_expired,
            &mut seen.endpoints_expired,
        );
        add(
            &self.endpoints_evicted,
            stats.endpoints_evicted,
            &mut seen.endpoints_evicted,
        );
        add(
            &self.delta_patches,
            stats.delta_patches,
            &mut seen.delta_patches,
        );
        add(&self.delta_whole, stats.delta_whole, &mut seen.delta_whole);
        add(&self.delta_quiet, stats.delta_quiet, &mut seen.delta_quiet);
        let gauge = |g: &Gauge, v: usize| g.set(i64::try_from(v).unwrap_or(i64::MAX));
        gauge(&self.tracked_endpoints, gauges.tracked);
        gauge(&self.pending_requests, gauges.pending);
        gauge(&self.delta_cache_bytes, gauges.delta_cache_bytes);
    }

    /// A response to a device request was published.
    pub(crate) fn response(&self, status: i32) {
        if status == 200 {
            self.responses_ok
                .get_or_init(|| {
                    self.responses
                        .get_or_create(&StatusLabel { status })
                        .clone()
                })
                .inc();
        } else {
            self.responses.get_or_create(&StatusLabel { status }).inc();
        }
    }

    /// An `endpoint.config.applied` broadcast was published.
    pub(crate) fn applied(&self, success: bool) {
        let result = if success {
            AppliedResult::applied
        } else {
            AppliedResult::rejected
        };
        self.applied.get_or_create(&ResultLabel { result }).inc();
    }

    /// A CDTP answer arrived after `latency`.
    pub(crate) fn cdtp_latency(&self, latency: Duration) {
        self.cdtp_latency.observe(latency.as_secs_f64());
    }

    /// A message could not be decoded.
    pub(crate) fn malformed(&self, kind: MessageKind) {
        self.malformed.get_or_create(&KindLabel { kind }).inc();
    }

    /// The bus refused an output.
    pub(crate) fn publish_error(&self) {
        self.publish_errors.inc();
    }

    /// A NATS "no responders" status arrived on the 6/CDTP reply subject.
    pub(crate) fn no_responders(&self) {
        self.no_responders.inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The delta counters and the cache gauge follow the engine's `Stats` and
    /// `Cmx::delta_cache_bytes`, counters by increments as the others do.
    #[test]
    fn delta_metrics_follow_the_engine() {
        let mut m = CmxMetrics::new();
        let text = m.registry().render();
        for name in [
            "cmx_delta_patches_total 0",
            "cmx_delta_whole_total 0",
            "cmx_delta_quiet_total 0",
            "cmx_delta_cache_bytes 0",
        ] {
            assert!(text.contains(name), "{name} in {text}");
        }
        let mut stats = Stats::default();
        stats.delta_patches = 3;
        stats.delta_whole = 2;
        stats.delta_quiet = 1;
        let gauges = Gauges {
            tracked: 4,
            pending: 0,
            delta_cache_bytes: 1234,
        };
        m.sync(&stats, gauges);
        stats.delta_patches = 5;
        m.sync(
            &stats,
            Gauges {
                delta_cache_bytes: 999,
                ..gauges
            },
        );
        let text = m.registry().render();
        for sample in [
            "cmx_delta_patches_total 5",
            "cmx_delta_whole_total 2",
            "cmx_delta_quiet_total 1",
            "cmx_delta_cache_bytes 999",
            "cmx_tracked_endpoints 4",
        ] {
            assert!(text.contains(sample), "{sample} in {text}");
        }
    }
}
