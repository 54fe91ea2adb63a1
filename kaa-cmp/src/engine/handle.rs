//! The engine's inputs: one `handle_*` method per message it subscribes to,
//! and the recovery calls (`resync`, `adopt_session`). `Cmx::handle_input`
//! dispatches to them.

use super::*;

impl Cmx {
    /// Decodes a message received on `subject` (one of [`Cmx::subscriptions`]) into
    /// an [`Input`], applying every decoding limit of the configuration
    /// (`max_endpoints_per_event` for 9/ELCE events and sessions lists). The input
    /// borrows from `datum`. Skip NATS no-responders statuses before calling it:
    /// they are not messages.
    pub fn decode_input<'a>(
        &self,
        subject: &str,
        reply_to: Option<&'a str>,
        datum: &'a [u8],
    ) -> Result<Input<'a>, InputError> {
        input::decode(
            &self.settings.subscriptions,
            self.settings.decode_limits,
            subject,
            reply_to,
            datum,
        )
    }

    /// The engine's one way in: handles an [`Input`] at `now`. Drain
    /// [`Cmx::poll_output`] afterwards and look at [`Cmx::poll_timeout`] again.
    pub fn handle_input(&mut self, input: Input<'_>, now: UnixMillis) {
        match input {
            Input::ClientData { message, reply_to } => {
                self.handle_client_data(&message, reply_to, now)
            }
            Input::HandedOver { message, reply_to } => {
                self.handle_handed_over(&message, reply_to, now)
            }
            Input::Members(replicas) => self.set_members(replicas, now),
            Input::MemberView { replica, view } => self.set_member_view(replica, view, now),
            Input::ConfigResponse(m) => self.handle_config_response(&m, now),
            Input::ConfigUpdated(m) => self.handle_config_updated(&m, now),
            Input::Event(e) => self.handle_elce_event(&e, now),
            Input::Sessions(m) => self.handle_sessions(&m, now),
            Input::ProviderStarted(_) => self.resync(now),
            Input::Timeout => self.handle_timeout(now),
            Input::BusConnected => self.handle_bus_connected(now),
        }
    }

    /// [`Cmx::decode_input`] and [`Cmx::handle_input`] in one call. An error is a
    /// message that could not be used (nothing was handled): log it and go on.
    pub fn handle_message(
        &mut self,
        subject: &str,
        reply_to: Option<&str>,
        datum: &[u8],
        now: UnixMillis,
    ) -> Result<(), InputError> {
        let input = self.decode_input(subject, reply_to, datum)?;
        self.handle_input(input, now);
        Ok(())
    }

    /// [`Input::BusConnected`]: asks the communication service for its sessions,
    /// and after a reconnect re-synchronizes ([`Cmx::resync`]) first.
    pub(super) fn handle_bus_connected(&mut self, now: UnixMillis) {
        self.bus_connections += 1;
        if self.bus_connections > 1 {
            self.resync(now);
        }
        self.send_sessions_request(SessionsPurpose::BusConnected, now);
    }

    /// Asks the communication service for its sessions: `<prefix>-sessions-<n>`
    /// after a bus connect, `<prefix>-takeover-<n>` after a membership change
    /// (the answers carry the request's correlation ID back).
    pub(super) fn send_sessions_request(&mut self, purpose: SessionsPurpose, now: UnixMillis) {
        self.stats.sessions_requests += 1;
        let correlation_id = match purpose {
            SessionsPurpose::BusConnected => {
                format!("{}-sessions-{}", self.settings.prefix, self.bus_connections)
            }
            // The number is the last endpoint incarnation before the request:
            // endpoints the engine learns after it are taken over too.
            SessionsPurpose::TakeOver => format!(
                "{}-takeover-{}",
                self.settings.prefix, self.next_incarnation
            ),
        };
        self.out
            .push_back(Output::SessionsRequest(OutgoingSessionsRequest {
                subject: Arc::clone(&self.settings.sessions_request_subject),
                reply_to: Arc::clone(&self.settings.sessions_response_subject),
                correlation_id,
                timestamp: now,
                extension_instance_name: Arc::clone(&self.settings.instance),
            }));
    }

    /// [`Input::Sessions`]: [`Cmx::adopt_session`] for every endpoint listed.
    /// With replicas, only the endpoints this replica owns are adopted, and an
    /// answer to a take-over request (after a membership change) adopts only
    /// the endpoints the engine did not know when it sent the request (it
    /// serves the others already); one it learned since (e.g. from a device
    /// request) is adopted, as its `connected` may have gone to the previous
    /// owner.
    pub(super) fn handle_sessions(&mut self, msg: &SessionsResponse<'_>, now: UnixMillis) {
        self.stats.sessions_responses += 1;
        // An answer to a take-over request: the endpoints known when it was
        // sent are served already.
        let known_before: Option<u32> = msg
            .correlation_id
            .strip_prefix(self.settings.prefix.as_str())
            .and_then(|rest| rest.strip_prefix("-takeover-"))
            .and_then(|n| n.parse().ok());
        let mut paths: Vec<&str> = Vec::new();
        for s in &msg.endpoints {
            if let Some(before) = known_before
                && self
                    .endpoints
                    .find(&s.endpoint_id)
                    .and_then(|slot| self.endpoints.get(slot))
                    .is_some_and(|e| e.incarnation <= before)
            {
                continue;
            }
            paths.clear();
            paths.extend(s.resource_paths.iter().map(|p| &**p));
            self.adopt_session_from(
                &s.endpoint_id,
                &s.app_version_name,
                &paths,
                Some(&msg.originator_replica_id),
                now,
            );
        }
    }

    /// Handles any 9/ELCE event (`registered` and traffic reports are ignored).
    pub fn handle_elce_event(&mut self, event: &ElceEvent<'_>, now: UnixMillis) {
        match event {
            ElceEvent::Connected(e) => self.handle_connected(e, now),
            ElceEvent::Disconnected(e) => self.handle_disconnected(e, now),
            ElceEvent::AppVersionUpdated(e) => self.handle_app_version_updated(e, now),
            ElceEvent::Unregistered(e) => self.handle_unregistered(e, now),
            _ => {}
        }
    }

    /// A device's message, forwarded by a communication service, with the NATS
    /// `replyTo` it came with (session affinity for the answer). With replicas
    /// (kaa-rs extension), a message about an endpoint another replica owns is
    /// handed over to it ([`Output::HandOver`]) and not counted in
    /// [`Stats::client_data`] here.
    pub fn handle_client_data(
        &mut self,
        msg: &ClientData<'_>,
        reply_to: Option<&str>,
        now: UnixMillis,
    ) {
        if let Some(id) = msg.endpoint_id.as_deref()
            && !id.is_empty()
            && !msg.is_expired(now)
            && self.hand_over(msg, reply_to, id, now)
        {
            return;
        }
        self.serve_client_data(msg, reply_to, now);
    }

    /// [`Cmx::handle_client_data`] on this replica.
    pub(super) fn serve_client_data(
        &mut self,
        msg: &ClientData<'_>,
        reply_to: Option<&str>,
        now: UnixMillis,
    ) {
        self.stats.client_data += 1;
        if msg.is_expired(now) {
            self.stats.client_data_expired += 1;
            return;
        }
        let subject = self.reply_subject(reply_to);
        let r = Reply {
            subject,
            timestamp: msg.timestamp,
            correlation_id: &msg.correlation_id,
            app_version: &msg.app_version_name,
            endpoint_id: msg.endpoint_id.as_deref(),
            resource_path: &msg.resource_path,
            request_id: msg.request_id,
        };
        let endpoint_id = match msg.endpoint_id.as_deref() {
            Some(id) if !id.is_empty() => id,
            _ => {
                return self.reply_error(
                    &r,
                    400,
                    RefusalReason::NoEndpoint,
                    "`endpointId` is required: 7/CMP configurations belong to endpoints",
                    now,
                );
            }
        };
        if let Some(known) = &self.settings.config.app_versions
            && !known.contains(&*msg.app_version_name)
        {
            let reason = format!("unknown application version {:?}", msg.app_version_name);
            return self.reply_error(&r, 404, RefusalReason::UnknownAppVersion, reason, now);
        }
        if msg.resource_path.starts_with(CONFIG_JSON_PATCH) {
            return self.serve_delta_request(&r, endpoint_id, msg, now);
        }
        let path = match ResourcePath::parse(&msg.resource_path) {
            Ok(p) => p,
            Err(e) => {
                return self.reply_error(
                    &r,
                    404,
                    RefusalReason::UnknownResource,
                    e.to_string(),
                    now,
                );
            }
        };
        let written = match resolve_name(path.name(), msg.config_name.as_deref()) {
            Ok(n) => n,
            Err(reason) => {
                return self.reply_error(&r, 400, RefusalReason::ConfigNameMismatch, reason, now);
            }
        };
        match path.kind() {
            ResourceKind::Config => {
                self.config_request(&r, endpoint_id, written, &msg.payload, now)
            }
            ResourceKind::Applied => {
                self.applied_request(&r, endpoint_id, written, &msg.payload, true, now)
            }
        }
    }

    /// A request on the delta resource `/config/json-patch[/<name>]` (kaa-rs
    /// extension): a configuration request that asks for patches.
    fn serve_delta_request(
        &mut self,
        r: &Reply<'_>,
        endpoint_id: &str,
        msg: &ClientData<'_>,
        now: UnixMillis,
    ) {
        let path = match DeltaPath::parse(&msg.resource_path) {
            Ok(p) => p,
            Err(e) => {
                return self.reply_error(
                    r,
                    404,
                    RefusalReason::UnknownResource,
                    e.to_string(),
                    now,
                );
            }
        };
        let written = match resolve_name(path.name(), msg.config_name.as_deref()) {
            Ok(n) => n,
            Err(reason) => {
                return self.reply_error(r, 400, RefusalReason::ConfigNameMismatch, reason, now);
            }
        };
        let request = match DeltaRequest::from_json(&msg.payload) {
            Ok(x) => x,
            Err(e) => return self.reply_malformed(r, &e, now),
        };
        let wants = DeltaWants {
            pointers: request.pointers.map(Arc::from),
        };
        self.config_request_with(
            r,
            endpoint_id,
            written,
            request.config_id.as_deref(),
            request.observe,
            Some(wants),
            now,
        );
    }

    /// The provider's answer to a CDTP request (on the `replyTo` the engine set).
    pub fn handle_config_response(&mut self, msg: &CdtpResponse<'_>, now: UnixMillis) {
        let Some(seq) = self
            .parse_seq(&msg.correlation_id)
            .filter(|s| self.pending.contains_key(s))
        else {
            self.stats.cdtp_responses_unmatched += 1;
            return;
        };
        self.stats.cdtp_responses += 1;
        let Some(p) = self.pending.get(&seq) else {
            return;
        };
        let fetched = if *p.endpoint_id != *msg.endpoint_id {
            Fetched::Failed {
                status: 502,
                reason: format!(
                    "the configuration provider answered for endpoint {:?}",
                    msg.endpoint_id
                ),
            }
        } else {
            interpret(msg, p.asked.as_deref(), &mut self.recent_configs)
        };
        if matches!(fetched, Fetched::Failed { .. }) {
            self.stats.provider_errors += 1;
        }
        self.complete(seq, fetched, now);
    }

    /// The provider's broadcast that an endpoint's configuration changed. It is a
    /// notification: the engine fetches the current configuration before pushing
    /// (see the module docs for why).
    pub fn handle_config_updated(&mut self, msg: &ConfigUpdated<'_>, now: UnixMillis) {
        self.stats.config_updates += 1;
        if !self.owns(&msg.endpoint_id) {
            self.stats.not_owned_ignored += 1;
            self.stats.config_updates_ignored += 1;
            return;
        }
        let same_version = |cmx: &Self, slot: u32| {
            cmx.endpoints.get(slot).is_some_and(|e| {
                cmx.app_versions
                    .get(e.app_version)
                    .is_some_and(|a| **a == *msg.app_version_name)
            })
        };
        let slot = self
            .endpoints
            .find(&msg.endpoint_id)
            .filter(|slot| same_version(self, *slot));
        let name = slot.and_then(|slot| {
            let e = self.endpoints.get(slot)?;
            match resource::canonical_config_name(msg.config_name.as_deref()) {
                None => Some(NONE),
                Some(n) => match self.names.find(n).filter(|h| e.name(*h).is_some()) {
                    Some(h) => Some(h),
                    // An adopted endpoint's names are unknown: the provider's word
                    // that this one changed for it is taken as a sign it is used.
                    None if e.adopted && e.connected => self.name_of(slot, Some(n), false),
                    None => None,
                },
            }
        });
        let (Some(slot), Some(name)) = (slot, name) else {
            self.stats.config_updates_ignored += 1;
            return;
        };
        if let Some(seq) = self.in_flight.get(&(slot, name))
            && let Some(p) = self.pending.get_mut(seq)
        {
            p.stale = true;
        }
        self.trigger_push(slot, name, PushMode::IfNotHeld, now);
    }

    /// Re-synchronizes after an outage of the bus: updates broadcast while this
    /// engine was cut off (`ConfigUpdated`, `connected`) may be lost for good, so
    /// the current configuration of every connected endpoint is fetched again, for
    /// every name it observes, and pushed unless the device already holds it.
    /// Answers in flight count as stale. The driver calls it once its
    /// subscriptions are back after a reconnect.
    pub fn resync(&mut self, now: UnixMillis) {
        self.stats.resyncs += 1;
        for p in self.pending.values_mut() {
            p.stale = true;
        }
        for slot in self.endpoints.connected_slots() {
            self.trigger_all(slot, PushMode::IfNotHeld, now);
        }
    }

    /// A communication service's list of the sessions it holds (a 9/ELCE
    /// `connected` event it sends on request, not a broadcast), e.g. to an engine
    /// that restarted while the sessions stayed up: [`Cmx::adopt_session`] for
    /// each endpoint, with no resource paths.
    pub fn adopt_sessions(&mut self, msg: &ConnectedEvent<'_>, now: UnixMillis) {
        for (endpoint_id, app_version) in &msg.endpoints {
            self.adopt_session_from(
                endpoint_id,
                app_version,
                &[],
                Some(&msg.originator_replica_id),
                now,
            );
        }
    }

    /// One endpoint a communication service holds a session for, with the
    /// resource paths the session has used with this extension (e.g.
    /// `/config/json`, `/config/json/network`, `/applied/json/network`: a
    /// configuration request or an applied report names a configuration the
    /// device uses; `/config/json-patch[/<name>]` also says it takes deltas),
    /// e.g. for an engine that restarted
    /// while the session stayed up. The endpoint counts as connected, as by
    /// [`Cmx::handle_connected`], and the configuration names in the paths count as
    /// used, so it gets every one of them it has not reported applied. One this
    /// engine did not know is *adopted*: which names its device observes may not
    /// all be listed, so a `ConfigUpdated` for any name is pushed to it (to other
    /// endpoints only for the names they used).
    pub fn adopt_session(
        &mut self,
        endpoint_id: &str,
        app_version: &str,
        resource_paths: &[&str],
        now: UnixMillis,
    ) {
        self.adopt_session_from(endpoint_id, app_version, resource_paths, None, now);
    }

    /// [`Cmx::adopt_session`] for a session communication service replica
    /// `replica` reported: when the endpoint's replica subject names that
    /// replica, it stays (see [`Cmx::handle_connected`]).
    fn adopt_session_from(
        &mut self,
        endpoint_id: &str,
        app_version: &str,
        resource_paths: &[&str],
        replica: Option<&str>,
        now: UnixMillis,
    ) {
        if endpoint_id.is_empty() {
            return;
        }
        if !self.owns(endpoint_id) {
            self.stats.not_owned_ignored += 1;
            return;
        }
        let new = self.endpoints.find(endpoint_id).is_none();
        let Some(slot) = self.track(endpoint_id, app_version, AppVersionStamp::event(now.0), now)
        else {
            return;
        };
        for path in resource_paths {
            // A configuration request or an applied report: either way the
            // device uses that configuration.
            if let Ok(r) = ResourcePath::parse(path) {
                let _ = self.name_of(slot, r.name(), r.kind() == ResourceKind::Config);
            } else if let Ok(d) = DeltaPath::parse(path)
                && let Some(name) = self.name_of(slot, d.name(), true)
                && let Some(incarnation) = self.endpoints.get(slot).map(|e| e.incarnation)
                && self.deltas.get(slot, incarnation, name).is_none()
            {
                // The delta resource (kaa-rs extension): pushes go there, for
                // the whole configuration (its pointers, if any, are unknown;
                // such a device asks again with them).
                self.deltas
                    .set(slot, incarnation, name, Some(DeltaWants::default()));
            }
        }
        // A session the engine did not see start: the affinity it knew is stale,
        // unless it names the replica that reported the session (dropping it
        // would let the next push overtake what is queued on it: seen in
        // `fault_replicas`, nats-node-kill, after CMX's re-synchronization).
        match replica {
            Some(r) if self.affinity_names(slot, r) => {}
            Some(r) => self.set_session_replica(slot, r),
            None => self.set_reply(slot, NONE),
        }
        self.endpoints.set_connected(slot, true, now);
        if new && let Some(e) = self.endpoints.get_mut(slot) {
            e.adopted = true;
        }
        self.trigger_all(slot, PushMode::IfNotApplied, now);
    }

    /// Endpoints opened a communication session: push what they have not applied.
    pub fn handle_connected(&mut self, msg: &ConnectedEvent<'_>, now: UnixMillis) {
        for (endpoint_id, app_version) in &msg.endpoints {
            if endpoint_id.is_empty() {
                continue;
            }
            if !self.owns(endpoint_id) {
                self.stats.not_owned_ignored += 1;
                continue;
            }
            let Some(slot) = self.track(
                endpoint_id,
                app_version,
                AppVersionStamp::event(msg.timestamp),
                now,
            ) else {
                continue;
            };
            // A new session: the affinity of the previous one is gone. Unless
            // the session is on the replica the affinity names, or the event is
            // older than the device message that set it: `connected` and the
            // device's first request take different paths (with replicas, the
            // request may be handed over first), so the request of this very
            // session can arrive first; dropping its replica subject then sends
            // the next push on the instance-wide subject, where it can overtake
            // the answer still queued on the replica subject (found by the
            // `fault_replicas` test, kpc-kill).
            let keep = self.affinity_names(slot, &msg.originator_replica_id)
                || self
                    .endpoints
                    .get(slot)
                    .is_some_and(|e| e.reply_to != NONE && msg.timestamp < e.reply_at);
            if !keep {
                self.set_session_replica(slot, &msg.originator_replica_id);
            }
            self.endpoints.set_connected(slot, true, now);
            self.trigger_all(slot, PushMode::IfNotApplied, now);
        }
    }

    /// A new session reported by communication service replica `replica`: its
    /// pushes go to that replica's subject
    /// (`kaa.v1.replica.<replica>.esp.ExtensionData`, 3/ISM's replica-specific
    /// subject, where the replica takes its answers), the same subject the
    /// answers to the session's requests take, so neither overtakes the other.
    /// On the instance-wide subject a push reaches any replica, and one that
    /// does not hold the session hands it over: one hop more than an answer
    /// sent after it (seen in `fault_replicas`, kpc-kill: a device got the
    /// newer configuration as an answer and then the older one, pushed on
    /// `connected`, by way of the other KPC replica). No replica ID, or one
    /// that is not a subject token: the instance-wide subject.
    fn set_session_replica(&mut self, slot: u32, replica: &str) {
        let reply = match kaa_esp::subject::extension_data_replica_subject(replica) {
            Ok(subject) => self.replies.acquire(&subject.to_string()),
            Err(_) => NONE,
        };
        self.set_reply(slot, reply);
        self.replies.release(reply);
    }

    /// Whether the endpoint's replica subject (session affinity) is communication
    /// service replica `replica`'s.
    fn affinity_names(&self, slot: u32, replica: &str) -> bool {
        self.endpoints.get(slot).is_some_and(|e| {
            e.reply_to != NONE
                && self.replies.get(e.reply_to).is_some_and(|s| {
                    matches!(Subject::parse(s), Ok(Subject::Replica(r)) if r.replica() == replica)
                })
        })
    }

    /// Endpoints' communication sessions ended.
    pub fn handle_disconnected(&mut self, msg: &DisconnectedEvent<'_>, now: UnixMillis) {
        for (endpoint_id, _) in &msg.endpoints {
            let Some(slot) = self.endpoints.find(endpoint_id) else {
                continue;
            };
            self.set_reply(slot, NONE);
            self.endpoints.set_connected(slot, false, now);
            if let Some(e) = self.endpoints.get_mut(slot) {
                for i in 0..=e.named_count() {
                    if let Some(n) = e.name_at(i).and_then(|h| e.name_mut(h)) {
                        n.push = PushMode::None;
                        n.attempts = 0;
                    }
                }
            }
        }
    }

    /// An endpoint moved to another application version: push its configurations
    /// for the new one.
    pub fn handle_app_version_updated(
        &mut self,
        msg: &AppVersionUpdatedEvent<'_>,
        now: UnixMillis,
    ) {
        let Some(slot) = self.endpoints.find(&msg.endpoint_id) else {
            return;
        };
        self.set_app_version(
            slot,
            &msg.app_version_name,
            AppVersionStamp::event(msg.timestamp),
        );
        // What was delivered under the previous app version may not have been
        // kept: compare with what the device reported applied.
        self.trigger_all(slot, PushMode::IfNotApplied, now);
    }

    /// An endpoint was unregistered: forget it.
    pub fn handle_unregistered(&mut self, msg: &UnregisteredEvent<'_>, now: UnixMillis) {
        if let Some(slot) = self.endpoints.find(&msg.endpoint_id) {
            self.remove_endpoint(slot, Removal::Unregistered, now);
        }
    }
}
