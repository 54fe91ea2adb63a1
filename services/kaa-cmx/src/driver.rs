//! The task that owns the engine: bus messages in, outputs published, the
//! engine's timer, metrics, and the graceful drain.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures::{FutureExt, StreamExt};
use kaa_bus::{Bus, Message, Subscription};
use kaa_cmp::{Cmx, Input, Output};
use kaa_ism::UnixMillis;
use kaa_ism::common::CommonFields;
use tracing::{Instrument, Span};

use tokio::sync::mpsc;

use super::membership::Membership;
use super::metrics::{CmxMetrics, Gauges, MessageKind};
use super::{Health, RunError, RunReport, now};

/// At shutdown, the most `ClientData` already buffered in this process that is
/// still handled (a bound in case publishers keep the buffer full).
const MAX_DRAINED_CLIENT_DATA: usize = 10_000;

/// The engine's subscriptions, one per input.
#[derive(Debug)]
pub(crate) struct Inputs {
    /// `kaa.v1.service.<cmx>.esp.ClientData` in the queue group `<cmx>`.
    pub(crate) client_data: Subscription,
    /// `kaa.v1.replica.<replica>.esp.ClientData`.
    pub(crate) client_data_replica: Subscription,
    /// `kaa.v1.replica.<replica>.cdtp.response`.
    pub(crate) responses: Subscription,
    /// `kaa.v1.events.<provider>.endpoint.config.updated`.
    pub(crate) config_updated: Subscription,
    /// `kaa.v1.events.*.endpoint.connectivity.*`.
    pub(crate) connectivity: Subscription,
    /// `kaa.v1.events.*.endpoint.lifecycle.*`.
    pub(crate) lifecycle: Subscription,
    /// `kaa.v1.replica.<replica>.elce.SessionsResponse`: communication services'
    /// lists of their sessions ([`kaa_elce::SessionsResponse`]), asked for at start
    /// and after a reconnect.
    pub(crate) sessions: Subscription,
    /// `kaa.v1.events.<provider>.provider.started` ([`kaa_cdtp::ProviderStarted`]).
    pub(crate) provider_started: Subscription,
}

/// The one owner of the engine.
pub(crate) struct Driver {
    pub(crate) engine: Cmx,
    pub(crate) bus: Arc<dyn Bus>,
    pub(crate) metrics: CmxMetrics,
    pub(crate) health: Arc<Health>,
    pub(crate) shutdown_grace: Duration,
    /// When each CDTP request in flight was published, by the engine's number
    /// for it ([`Cmx::request_seq`]).
    sent: HashMap<u64, Instant, rustc_hash::FxBuildHasher>,
    /// Outputs drained from the engine, reused between messages.
    outbox: Vec<Output>,
    /// Where outputs are encoded: each datum is split off and frozen, so one
    /// allocation serves many messages (see [`ENCODE_CHUNK`]).
    encode_buf: BytesMut,
    wakeup: Wakeup,
    /// The bus's connection epoch last seen (a change means it reconnected).
    epoch: u64,
    /// `Stats::refusals_not_kept` last seen.
    refusals_not_kept: u64,
    /// Whether the engine's hand-over fence was up after the last input.
    fenced: bool,
    /// `Stats::handover_fences_timed_out` last seen.
    fence_timeouts: u64,
    /// This replica's membership of its instance's replicas (kaa-rs
    /// extension), if configured.
    pub(crate) membership: Option<Membership>,
}

/// The next change of the live members (every one, in order); never, without
/// membership.
async fn members_changed(rx: &mut Option<mpsc::UnboundedReceiver<Vec<String>>>) -> Vec<String> {
    match rx {
        Some(rx) => match rx.recv().await {
            Some(members) => members,
            // The membership task ended: no more changes.
            None => std::future::pending().await,
        },
        None => std::future::pending().await,
    }
}

/// The next confirmed view of another replica; never, without membership.
async fn view_confirmed(rx: &mut Option<mpsc::UnboundedReceiver<(String, u64)>>) -> (String, u64) {
    match rx {
        Some(rx) => match rx.recv().await {
            Some(view) => view,
            None => std::future::pending().await,
        },
        None => std::future::pending().await,
    }
}

/// The room the encode buffer takes at a time: outputs are encoded into it and
/// split off, so one allocation serves many messages instead of one each.
const ENCODE_CHUNK: usize = 64 * 1024;

/// The room left in the encode buffer below which it takes a new chunk before
/// an output is encoded (a usual answer, with a configuration of a few KiB,
/// fits without the buffer growing while it is written).
const ENCODE_ROOM: usize = 8 * 1024;

/// The most messages handled after one wake-up before the driver looks at its
/// timer, shutdown and events again.
const MAX_BATCH: usize = 64;

/// How often the driver looks whether the bus reconnected.
const RECONNECT_CHECK: Duration = Duration::from_millis(250);

/// The engine's timer: a tokio sleep re-armed only when the engine's deadline
/// moves earlier (a later deadline is found when the earlier one fires).
struct Wakeup {
    sleep: Pin<Box<tokio::time::Sleep>>,
    armed: Option<UnixMillis>,
}

impl Wakeup {
    fn new() -> Self {
        Wakeup {
            sleep: Box::pin(tokio::time::sleep(Duration::ZERO)),
            armed: None,
        }
    }

    fn arm(&mut self, deadline: Option<UnixMillis>, now: UnixMillis) {
        let Some(at) = deadline else { return };
        if self.armed.is_some_and(|armed| armed <= at) {
            return;
        }
        // One millisecond late rather than early: the engine works in whole ms.
        let wait = at.saturating_duration_since(now) + Duration::from_millis(1);
        self.sleep
            .as_mut()
            .reset(tokio::time::Instant::now() + wait);
        self.armed = Some(at);
    }

    async fn fired(&mut self) {
        if self.armed.is_none() {
            std::future::pending::<()>().await;
        }
        self.sleep.as_mut().await;
        self.armed = None;
    }
}

impl Driver {
    pub(crate) fn new(
        engine: Cmx,
        bus: Arc<dyn Bus>,
        metrics: CmxMetrics,
        health: Arc<Health>,
        shutdown_grace: Duration,
    ) -> Self {
        Driver {
            engine,
            bus,
            metrics,
            health,
            shutdown_grace,
            sent: HashMap::default(),
            outbox: Vec::new(),
            encode_buf: BytesMut::new(),
            wakeup: Wakeup::new(),
            epoch: 0,
            refusals_not_kept: 0,
            fenced: false,
            fence_timeouts: 0,
            membership: None,
        }
    }

    /// Serves until `shutdown` resolves, then drains: stops taking `ClientData` and
    /// events, waits up to the grace period for the CDTP answers still in flight,
    /// answers 504 to whoever still waits, and flushes the bus.
    pub(crate) async fn run(
        mut self,
        mut inputs: Inputs,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<RunReport, RunError> {
        let mut shutdown = std::pin::pin!(shutdown);
        self.health.set_running();
        tracing::info!(
            instance = %self.engine.config().instance_name,
            replica = %self.engine.config().replica_id,
            "CMX engine running"
        );
        // Replicas: the engine learns the live members before it adopts any
        // session, so it adopts only the ones it owns.
        let mut members_rx = self.membership.as_mut().and_then(Membership::take_changes);
        let mut views_rx = self.membership.as_mut().and_then(Membership::take_views);
        if let Some(rx) = members_rx.as_mut() {
            // The list read on joining and any change since.
            while let Ok(members) = rx.try_recv() {
                self.on_members(&members).await;
            }
        }
        // The subscriptions are in effect: the engine asks the communication
        // service for its sessions (a restarted CMX knows none).
        self.epoch = self.bus.connection_epoch();
        self.on_input(Input::BusConnected).await;
        let mut reconnect_check = tokio::time::interval(RECONNECT_CHECK);
        reconnect_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let served = {
            let Inputs {
                client_data,
                client_data_replica,
                responses,
                config_updated,
                connectivity,
                lifecycle,
                sessions,
                provider_started,
            } = &mut inputs;
            let mut devices = futures::stream::select(client_data, client_data_replica);
            // The five event subscriptions are quiet most of the time, and the
            // loop looks at them on every wake-up: a `SelectAll` polls only the
            // subscriptions that have woken it, where nested `select`s would
            // poll all five each time.
            let mut events = futures::stream::select_all([
                config_updated,
                provider_started,
                connectivity,
                lifecycle,
                sessions,
            ]);
            loop {
                let now = now();
                let deadline = self.engine.poll_timeout();
                self.wakeup.arm(deadline, now);
                // Answers first (they free engine slots and devices wait on them),
                // then timers, then events, then new device requests.
                let step = tokio::select! {
                    biased;
                    () = &mut shutdown => break Ok(()),
                    m = responses.next() => m,
                    () = self.wakeup.fired() => {
                        self.on_timer().await;
                        continue;
                    }
                    _ = reconnect_check.tick() => {
                        self.check_reconnect().await;
                        continue;
                    }
                    members = members_changed(&mut members_rx) => {
                        self.on_members(&members).await;
                        continue;
                    }
                    (replica, view) = view_confirmed(&mut views_rx) => {
                        self.on_input(Input::MemberView { replica: &replica, view }).await;
                        continue;
                    }
                    m = events.next() => m,
                    m = devices.next() => m,
                };
                let Some(message) = step else {
                    break Err(RunError::BusClosed);
                };
                // One clock reading for the whole batch (at most `MAX_BATCH`
                // messages already buffered, usually well under a millisecond
                // of work): the engine works in whole milliseconds, and what it
                // decides by the clock (expiry, deadlines) may only be late by
                // the batch's duration.
                let now = super::now();
                self.on_message(&message, now).await;
                // Take whatever else is already buffered before looking at the
                // timer again (cheaper than a full select per message): answers
                // first, then device requests.
                for _ in 0..MAX_BATCH {
                    let message = match responses.next().now_or_never() {
                        Some(Some(message)) => message,
                        _ => match devices.next().now_or_never() {
                            Some(Some(message)) => message,
                            _ => break,
                        },
                    };
                    self.on_message(&message, now).await;
                }
            }
        };
        self.health.set_draining();
        // Leave first: the other replicas take this one's endpoints over at
        // once. If there are others, the engine lets its endpoints go too (so
        // that two replicas never push to one device): devices still waiting
        // get a 503 and their retry reaches the new owner. The last replica
        // finishes what it has in flight, as a single CMX does.
        if let Some(membership) = self.membership.take() {
            let me = self.engine.config().replica_id.clone();
            let others: Vec<String> = membership
                .members()
                .into_iter()
                .filter(|m| *m != me)
                .collect();
            if let Err(e) = membership.leave().await {
                tracing::warn!(error = %e, "could not leave the CMX replicas (the key expires)");
            }
            if !others.is_empty() {
                self.on_members(&others).await;
            }
        }
        let report = self.drain(inputs).await;
        self.health.set_stopped();
        served.map(|()| report)
    }

    async fn drain(&mut self, inputs: Inputs) -> RunReport {
        let Inputs {
            mut client_data,
            mut client_data_replica,
            mut responses,
            mut config_updated,
            mut connectivity,
            mut lifecycle,
            mut sessions,
            mut provider_started,
        } = inputs;
        // Handle what has already been delivered to this replica, then leave the
        // queue group: new requests go to the other replicas.
        let mut taken = 0usize;
        for sub in [&mut client_data, &mut client_data_replica] {
            while taken < MAX_DRAINED_CLIENT_DATA
                && let Some(Some(message)) = sub.next().now_or_never()
            {
                taken += 1;
                self.on_message(&message, now()).await;
            }
        }
        for sub in [
            &mut client_data,
            &mut client_data_replica,
            &mut config_updated,
            &mut connectivity,
            &mut lifecycle,
            &mut sessions,
            &mut provider_started,
        ] {
            if let Err(e) = sub.unsubscribe().await {
                tracing::warn!(error = %e, filter = sub.subject_filter(), "unsubscribe failed");
            }
        }
        let pending_at_shutdown = self.engine.pending_requests();
        tracing::info!(
            pending = pending_at_shutdown,
            buffered_client_data = taken,
            grace_ms = self.shutdown_grace.as_millis() as u64,
            "CMX draining: waiting for CDTP answers in flight"
        );
        let grace_end = tokio::time::Instant::now() + self.shutdown_grace;
        let answers_before = self.engine.stats().cdtp_responses;
        while self.engine.pending_requests() > 0 {
            let now = now();
            let deadline = self.engine.poll_timeout();
            self.wakeup.arm(deadline, now);
            tokio::select! {
                biased;
                m = responses.next() => match m {
                    Some(m) => self.on_message(&m, super::now()).await,
                    None => break,
                },
                () = self.wakeup.fired() => self.on_timer().await,
                () = tokio::time::sleep_until(grace_end) => break,
            }
        }
        let abandoned = self.engine.pending_requests();
        if abandoned > 0 {
            // Every CDTP deadline lies within one CDTP timeout from now: fire them
            // all, so that devices still waiting get a 504 rather than silence.
            let later = now().saturating_add(self.engine.config().cdtp_timeout);
            self.engine.handle_input(Input::Timeout, later);
            self.publish_outputs(true).await;
            tracing::warn!(
                abandoned,
                "CMX drain grace over: 504 to the devices still waiting"
            );
        }
        if let Err(e) = responses.unsubscribe().await {
            tracing::warn!(error = %e, "unsubscribe failed");
        }
        if let Err(e) = self.bus.flush().await {
            tracing::warn!(error = %e, "final bus flush failed");
        }
        self.sync_metrics();
        let report = RunReport {
            pending_at_shutdown,
            answered_during_drain: self.engine.stats().cdtp_responses - answers_before,
            abandoned,
        };
        tracing::info!(?report, "CMX stopped");
        report
    }

    /// After a reconnect of the bus: once the subscriptions are back in effect,
    /// [`Input::BusConnected`] makes the engine re-synchronize
    /// ([`kaa_cmp::Cmx::resync`]) and ask the communication service for its
    /// sessions again.
    async fn check_reconnect(&mut self) {
        let epoch = self.bus.connection_epoch();
        if epoch == self.epoch {
            return;
        }
        self.epoch = epoch;
        match kaa_bus::subscription_barrier(self.bus.as_ref(), Duration::from_secs(5)).await {
            Ok(true) => {}
            Ok(false) | Err(_) => {
                // Down again already: the next reconnect comes back here.
                tracing::warn!("bus reconnected but did not confirm the subscriptions");
            }
        }
        tracing::info!(
            epoch,
            endpoints = self.engine.tracked_endpoints(),
            "bus reconnected: re-synchronizing configurations and sessions"
        );
        self.on_input(Input::BusConnected).await;
    }

    async fn on_timer(&mut self) {
        self.on_input(Input::Timeout).await;
        // CDTP requests that timed out leave their send time behind.
        let pending = self.engine.pending_requests();
        if self.sent.len() > pending {
            let horizon = self.engine.config().cdtp_timeout * 2;
            self.sent.retain(|_, at| at.elapsed() < horizon);
        }
    }

    /// The live members changed: endpoints move (kaa-rs extension). Once
    /// what the engine sent is at the server (a round trip through it), the
    /// new view is confirmed in this replica's key: a replica that joined
    /// delivers to the endpoints it took from this one only after that (the
    /// hand-over fence, see "Replicas" in [`kaa_cmp::engine`]). The others'
    /// confirmations known so far go to the engine again (it takes them from
    /// members only, and the list just changed).
    async fn on_members(&mut self, members: &[String]) {
        let ids: Vec<&str> = members.iter().map(String::as_str).collect();
        tracing::info!(members = ?ids, "CMX replicas: members changed");
        self.on_input(Input::Members(&ids)).await;
        let Some(membership) = &self.membership else {
            return;
        };
        let known = membership.known_views();
        match kaa_bus::subscription_barrier(self.bus.as_ref(), Duration::from_secs(5)).await {
            Ok(true) => {
                if let Some(membership) = &self.membership {
                    membership.confirm_view(self.engine.membership_view());
                }
            }
            Ok(false) | Err(_) => {
                // Not confirmed: a joining replica waits out its deadline
                // (`handover_delay`) instead; the next change confirms again.
                tracing::warn!(
                    "members changed but the bus did not confirm what was sent; view not confirmed"
                );
            }
        }
        for (replica, view) in known {
            self.on_input(Input::MemberView {
                replica: &replica,
                view,
            })
            .await;
        }
    }

    /// One of the driver's own inputs (no message behind it).
    async fn on_input(&mut self, input: Input<'_>) {
        self.engine.handle_input(input, now());
        self.sync_metrics();
        self.publish_outputs(false).await;
    }

    /// Decodes one bus message ([`kaa_cmp::Cmx::decode_input`], with the
    /// configuration's limits), hands it to the engine at `now` inside a span
    /// carrying its `correlationId`, and publishes what the engine asks for.
    async fn on_message(&mut self, message: &Message, now: UnixMillis) {
        if message.no_responders {
            // A NATS status, not a message: no provider (e.g. ECR restarting) or no
            // communication service subscribed. It names no request; the engine's
            // CDTP timeout answers the device and retries.
            if kaa_cdtp::subject::MessageType::of_subject(&message.subject)
                == Some(kaa_cdtp::subject::MessageType::ConfigResponse)
            {
                self.metrics.no_responders();
                tracing::debug!("6/CDTP request found no provider (NATS no responders)");
            }
            return;
        }
        let input = match self.engine.decode_input(
            &message.subject,
            message.reply_to.as_deref(),
            &message.payload,
        ) {
            Ok(input) => input,
            Err(e) if e.is_unused() => {
                tracing::debug!(subject = %message.subject, "9/ELCE event type not used by CMX");
                return;
            }
            Err(e) => {
                if let Some(kind) = e.kind().and_then(MessageKind::of_input) {
                    self.metrics.malformed(kind);
                }
                tracing::warn!(
                    subject = %message.subject,
                    reply_to = message.reply_to.as_deref(),
                    error = %e,
                    "undecodable message dropped (no request ID to answer)"
                );
                return;
            }
        };
        if let Input::ConfigResponse(msg) = &input
            && let Some(seq) = self.engine.request_seq(&msg.correlation_id)
            && let Some(sent) = self.sent.remove(&seq)
        {
            self.metrics.cdtp_latency(sent.elapsed());
        }
        let span = span_for(&input);
        span.in_scope(|| {
            match &input {
                Input::ClientData { reply_to, .. } => {
                    tracing::debug!(reply_to = reply_to.as_deref(), "ClientData");
                }
                Input::HandedOver { reply_to, .. } => {
                    tracing::debug!(reply_to = reply_to.as_deref(), "ClientData handed over");
                }
                Input::ProviderStarted(started) => tracing::info!(
                    replica = %started.originator_replica_id,
                    endpoints = self.engine.tracked_endpoints(),
                    "configuration provider started: re-synchronizing"
                ),
                Input::ConfigResponse(_) => tracing::debug!("ConfigResponse"),
                Input::ConfigUpdated(_) => tracing::debug!("ConfigUpdated"),
                Input::Event(_) => tracing::debug!("9/ELCE event"),
                Input::Sessions(_) => tracing::debug!("sessions of a communication service"),
                other => tracing::debug!(input = other.kind().as_str(), "input"),
            }
            self.engine.handle_input(input, now);
        });
        // Before publishing: whoever sees an answer sees the metrics that
        // count it.
        self.sync_metrics();
        if span.is_disabled() {
            // No subscriber wants the span (the usual case at full load).
            self.publish_outputs(false).await;
        } else {
            self.publish_outputs(false).instrument(span).await;
        }
    }

    /// Publishes every output the engine has queued. With `final_flush`, CDTP
    /// requests are dropped (nobody would wait for their answers).
    async fn publish_outputs(&mut self, final_flush: bool) {
        let mut outbox = std::mem::take(&mut self.outbox);
        outbox.extend(std::iter::from_fn(|| self.engine.poll_output()));
        for output in outbox.drain(..) {
            match &output {
                Output::ExtensionData(m) => {
                    if m.is_push() {
                        tracing::debug!(
                            deviceCorrelationId = %m.correlation_id,
                            endpointId = %m.endpoint_id.as_deref().unwrap_or(""),
                            resourcePath = %m.resource_path,
                            "push"
                        );
                    } else {
                        self.metrics.response(m.status_code);
                        if (200..300).contains(&m.status_code) {
                            tracing::debug!(
                                deviceCorrelationId = %m.correlation_id,
                                status = m.status_code,
                                "answered"
                            );
                        } else {
                            tracing::info!(
                                deviceCorrelationId = %m.correlation_id,
                                status = m.status_code,
                                reason = m.reason_phrase.as_deref().unwrap_or(""),
                                "answered with an error"
                            );
                        }
                    }
                }
                Output::ConfigRequest(m) => {
                    if final_flush {
                        continue;
                    }
                    if let Some(seq) = self.engine.request_seq(&m.correlation_id) {
                        self.sent.insert(seq, Instant::now());
                    }
                }
                Output::SessionsRequest(m) => {
                    tracing::debug!(
                        "correlationId" = %m.correlation_id,
                        subject = %m.subject,
                        "asking for the sessions"
                    );
                }
                Output::HandOver(m) => {
                    tracing::debug!(
                        deviceCorrelationId = %m.correlation_id,
                        endpointId = %m.endpoint_id,
                        owner = %m.owner,
                        "handed over to the owner"
                    );
                }
                Output::ConfigApplied(m) => {
                    self.metrics.applied(m.is_success());
                    tracing::debug!(
                        configId = %m.config_id,
                        status = m.status_code,
                        "endpoint.config.applied"
                    );
                }
                _ => {}
            }
            let datum = self.encode(&output);
            if let Err(e) = self
                .bus
                .publish_message(output.subject(), output.reply_to(), datum)
                .await
            {
                self.metrics.publish_error();
                tracing::warn!(subject = output.subject(), error = %e, "publish failed");
            }
        }
        self.outbox = outbox;
        self.log_refusals();
    }

    /// The Avro datum of `output`, split off the shared encode buffer.
    ///
    /// The buffer keeps room for a usual output without asking the output's
    /// length first (a second walk over it); a larger one makes the buffer grow
    /// while it is written.
    fn encode(&mut self, output: &Output) -> Bytes {
        if self.encode_buf.capacity() < ENCODE_ROOM {
            self.encode_buf.reserve(ENCODE_CHUNK);
        }
        output.encode(&mut self.encode_buf);
        self.encode_buf.split().freeze()
    }

    /// Logs the device requests the engine refused without an answer (no request
    /// ID: the device cannot be told). Never their payload. Counted in
    /// `cmx_refused_without_request_id_total` by [`Driver::sync_metrics`].
    fn log_refusals(&mut self) {
        while let Some(r) = self.engine.poll_refusal() {
            tracing::info!(
                "correlationId" = %r.correlation_id,
                endpointId = %r.endpoint_id.as_deref().unwrap_or(""),
                appVersionName = %r.app_version_name,
                resourcePath = %r.resource_path,
                status = r.status_code,
                reason = r.reason.as_str(),
                detail = %r.detail,
                "device request refused; no request ID, so the device is not told"
            );
        }
        let not_kept = self.engine.stats().refusals_not_kept;
        if not_kept > self.refusals_not_kept {
            tracing::warn!(
                count = not_kept - self.refusals_not_kept,
                "device requests refused without request ID and not logged (too many at once; counted in cmx_refused_without_request_id_total)"
            );
            self.refusals_not_kept = not_kept;
        }
    }

    /// Logs the hand-over fence going up and coming down (rare: a join).
    fn log_fence(&mut self) {
        let fenced = self.engine.handover_fenced();
        if fenced == self.fenced {
            return;
        }
        self.fenced = fenced;
        let stats = self.engine.stats();
        if fenced {
            tracing::info!(
                members = ?self.engine.members(),
                "hand-over fence up: joined live members, delivering nothing until they confirm the member list"
            );
        } else {
            let timed_out = stats.handover_fences_timed_out > self.fence_timeouts;
            self.fence_timeouts = stats.handover_fences_timed_out;
            let how = if timed_out {
                "at its deadline, without every confirmation"
            } else {
                "every member confirmed"
            };
            tracing::info!(
                held_answers = stats.handover_held_answers,
                "hand-over fence lifted: {how}"
            );
        }
    }

    fn sync_metrics(&mut self) {
        if self.membership.is_some() {
            self.log_fence();
        }
        let gauges = Gauges {
            tracked: self.engine.tracked_endpoints(),
            pending: self.engine.pending_requests(),
            delta_cache_bytes: self.engine.delta_cache_bytes(),
        };
        self.metrics.sync(self.engine.stats(), gauges);
    }
}

/// The span one input is handled in, with the fields that identify it.
fn span_for(input: &Input<'_>) -> Span {
    match input {
        Input::ClientData { message: msg, .. } | Input::HandedOver { message: msg, .. } => {
            tracing::info_span!(
                "client_data",
                "correlationId" = %msg.correlation_id,
                endpointId = %msg.endpoint_id.as_deref().unwrap_or(""),
                appVersionName = %msg.app_version_name,
                resourcePath = %msg.resource_path,
                requestId = msg.request_id,
            )
        }
        Input::ConfigResponse(msg) => tracing::info_span!(
            "cdtp_response",
            "correlationId" = %msg.correlation_id,
            endpointId = %msg.endpoint_id,
            statusCode = msg.status_code,
        ),
        Input::ConfigUpdated(msg) => tracing::info_span!(
            "config_updated",
            "correlationId" = %msg.correlation_id,
            endpointId = %msg.endpoint_id,
            configId = %msg.config_id,
        ),
        Input::Event(event) => tracing::info_span!(
            "elce_event",
            "correlationId" = %event.correlation_id(),
            event = event.kind().event_type(),
            originator = %event.originator_replica_id(),
        ),
        Input::Sessions(answer) => tracing::info_span!(
            "sessions",
            "correlationId" = %answer.correlation_id,
            replica = %answer.originator_replica_id,
            endpoints = answer.endpoint_count(),
        ),
        Input::ProviderStarted(started) => tracing::info_span!(
            "provider_started",
            "correlationId" = %started.correlation_id,
        ),
        _ => Span::none(),
    }
}
