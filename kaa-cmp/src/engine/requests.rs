//! Device requests: `/config/json[/<name>]` and `/applied/json[/<name>]`.

use super::*;

/// The configuration a `ClientData` addresses. The resource path is what the
/// device addressed (the 1/KP topic after the token), and the answer goes back
/// on that path, so it decides: no name in the path is the default
/// configuration. The 4/ESP `configName`, when present, must name the same
/// configuration (`default` and an absent name are the same one); any other
/// name is a 400, because serving it would put another configuration on the
/// path the device applies as this one.
pub(super) fn resolve_name<'a>(
    path: Option<&'a str>,
    esp: Option<&'a str>,
) -> Result<Option<&'a str>, String> {
    if let Some(e) = esp {
        resource::validate_config_name(e).map_err(|err| format!("`configName`: {err}"))?;
        if resource::canonical_config_name(path) != resource::canonical_config_name(Some(e)) {
            let p = path.unwrap_or(resource::DEFAULT_NAME);
            return Err(format!(
                "`configName` {e:?} does not match the configuration name {p:?} in the resource path"
            ));
        }
    }
    Ok(path)
}

impl Cmx {
    pub(super) fn config_request(
        &mut self,
        r: &Reply<'_>,
        endpoint_id: &str,
        written: Option<&str>,
        payload: &[u8],
        now: UnixMillis,
    ) {
        let request = match ConfigRequest::from_json(payload) {
            Ok(x) => x,
            Err(e) => return self.reply_malformed(r, &e, now),
        };
        self.config_request_with(
            r,
            endpoint_id,
            written,
            request.config_id.as_deref(),
            request.observe,
            None,
            now,
        );
    }

    /// A configuration request, decoded: 7/CMP's (`delta` `None`) or one on the
    /// delta resource (kaa-rs extension).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn config_request_with(
        &mut self,
        r: &Reply<'_>,
        endpoint_id: &str,
        written: Option<&str>,
        request_config_id: Option<&str>,
        request_observe: Option<bool>,
        delta: Option<DeltaWants>,
        now: UnixMillis,
    ) {
        if let Some(id) = request_config_id
            && id.len() > self.settings.config.max_config_id_len
        {
            let reason = format!(
                "`configId` is longer than {} bytes",
                self.settings.config.max_config_id_len
            );
            return self.reply_error(r, 400, RefusalReason::ConfigIdTooLong, reason, now);
        }
        let Some(slot) = self.track_session(endpoint_id, r, now) else {
            return self.reply_error(
                r,
                503,
                RefusalReason::Limit,
                "this CMX tracks no endpoints (max_endpoints is 0)",
                now,
            );
        };
        let Some(name) = self.name_of(slot, written, true) else {
            self.stats.backpressure_rejections += 1;
            let reason = format!(
                "the endpoint already uses {} named configurations",
                self.settings.config.max_names_per_endpoint
            );
            return self.reply_error(r, 503, RefusalReason::Limit, reason, now);
        };
        let shared = self.membership.members.len() > 1;
        let Self {
            endpoints: eps,
            config_ids,
            app_versions,
            deltas,
            ..
        } = self;
        let Some(e) = eps.get_mut(slot) else {
            return;
        };
        // The latest request decides: patches on the delta resource, 7/CMP on
        // `/config/json`.
        deltas.set(slot, e.incarnation, name, delta.clone());
        let app_version = app_versions
            .get(e.app_version)
            .cloned()
            .unwrap_or_else(|| r.app_version.into());
        let endpoint_id = e.id.clone();
        let Some(ns) = e.name_mut(name) else {
            return;
        };
        // The request's timestamp, low 32 bits (see `NameState::observe_at`).
        let at = r.timestamp as u32;
        let first = ns.observe == Observe::Absent && ns.observe_at == 0;
        // Only with several replicas can a device's requests arrive out of
        // order; a single CMX takes them as they come (as before).
        if !shared || first || at.wrapping_sub(ns.observe_at) as i32 >= 0 {
            ns.observe_at = at;
            ns.observe = match request_observe {
                None => Observe::Absent,
                Some(true) => Observe::On,
                Some(false) => Observe::Off,
            };
        } else {
            self.stats.observe_out_of_order += 1;
        }
        if ns.observe == Observe::Off {
            ns.push = PushMode::None;
        }
        let config_id = request_config_id.map(|id| {
            // Implicit application: the device says it holds this configuration.
            let h = config_ids.acquire(id);
            config_ids.set(&mut ns.confirmed, h);
            config_ids.set(&mut ns.holds, h);
            if ns.rejected == h {
                config_ids.set(&mut ns.rejected, NONE);
            }
            let arc = config_ids.get(h).cloned();
            config_ids.release(h);
            arc.unwrap_or_else(|| id.into())
        });
        let resource_path = if r.resource_path == CONFIG_JSON {
            self.settings.config_path.clone()
        } else {
            r.resource_path.into()
        };
        let waiter = Waiter {
            endpoint_id,
            request_id: r.request_id,
            correlation_id: r.correlation_id.into(),
            subject: r.subject.clone(),
            resource_path,
            app_version,
            config_id,
            delta,
        };
        self.enqueue(slot, name, waiter, now);
    }

    pub(super) fn applied_request(
        &mut self,
        r: &Reply<'_>,
        endpoint_id: &str,
        written: Option<&str>,
        payload: &[u8],
        bookkeeping: bool,
        now: UnixMillis,
    ) {
        let report = match AppliedRequest::from_json(payload) {
            Ok(x) => x,
            Err(e) => return self.reply_malformed(r, &e, now),
        };
        if report.config_id.len() > self.settings.config.max_config_id_len {
            let reason = format!(
                "`configId` is longer than {} bytes",
                self.settings.config.max_config_id_len
            );
            return self.reply_error(r, 400, RefusalReason::ConfigIdTooLong, reason, now);
        }
        let slot = if bookkeeping {
            self.track_session(endpoint_id, r, now)
        } else {
            None
        };
        // Bookkeeping, when the endpoint and name can be tracked.
        let mut behind = None;
        if let Some(slot) = slot
            && let Some(name) = self.name_of(slot, written, false)
        {
            let Self {
                endpoints: eps,
                config_ids,
                ..
            } = self;
            if let Some(ns) = eps.get_mut(slot).and_then(|e| e.name_mut(name)) {
                let h = config_ids.acquire(&report.config_id);
                if report.is_success() {
                    // Applied after the engine's last delivery, yet not what it
                    // delivered: either the report crossed the delivery (the
                    // device reports the delivered one next), or the deliveries
                    // were reordered on the way (an answer on the replica
                    // subject overtaken by a push on the instance-wide one) and
                    // the device ended on an older configuration. After a push
                    // retry delay, what is current is pushed unless reported
                    // applied by then.
                    let at = r.timestamp as u32;
                    if ns.holds != NONE
                        && ns.holds != h
                        && at.wrapping_sub(ns.delivered_at) as i32 > 0
                    {
                        behind = Some(name);
                    }
                    config_ids.set(&mut ns.confirmed, h);
                    config_ids.set(&mut ns.holds, h);
                    if ns.rejected == h {
                        config_ids.set(&mut ns.rejected, NONE);
                    }
                } else {
                    // The device keeps what it had before.
                    config_ids.set(&mut ns.rejected, h);
                    let confirmed = ns.confirmed;
                    config_ids.set(&mut ns.holds, confirmed);
                }
                config_ids.release(h);
            }
        }
        let config_name = resource::canonical_config_name(written).map(|n| {
            self.names
                .find(n)
                .and_then(|h| self.names.get(h))
                .cloned()
                .unwrap_or_else(|| n.into())
        });
        let app_version = slot
            .and_then(|s| self.endpoints.get(s))
            .and_then(|e| self.app_versions.get(e.app_version))
            .cloned()
            .unwrap_or_else(|| r.app_version.into());
        let endpoint: Arc<str> = slot
            .and_then(|s| self.endpoints.get(s))
            .map(|e| e.id.clone())
            .unwrap_or_else(|| endpoint_id.into());
        self.out
            .push_back(Output::ConfigApplied(OutgoingConfigApplied {
                subject: self.settings.applied_subject.clone(),
                correlation_id: r.correlation_id.to_owned(),
                timestamp: now,
                timeout: self.settings.message_timeout_ms,
                app_version_name: app_version.clone(),
                endpoint_id: endpoint.clone(),
                config_id: report.config_id.as_ref().into(),
                originator_replica_id: self.settings.replica.clone(),
                status_code: report.status_code,
                reason_phrase: report.reason_phrase.as_deref().map(Arc::from),
                config_name,
            }));
        if r.request_id.is_some() {
            self.emit(
                r.subject.clone(),
                r.correlation_id.to_owned(),
                app_version,
                Some(endpoint),
                r.resource_path.into(),
                r.request_id,
                None,
                200,
                None,
                now,
            );
        }
        if let (Some(slot), Some(name)) = (slot, behind)
            && self.verify_later(slot, name, now)
        {
            self.stats.applied_behind_delivery += 1;
        }
    }

    /// Adds a device request to the CDTP request in flight for its name, or
    /// sends one.
    pub(super) fn enqueue(&mut self, slot: u32, name: u32, waiter: Waiter, now: UnixMillis) {
        if let Some(seq) = self.in_flight.get(&(slot, name)).copied()
            && let Some(p) = self.pending.get_mut(&seq)
        {
            if p.waiters.len() < self.settings.config.max_waiters_per_request {
                p.waiters.push(waiter);
            } else {
                self.stats.backpressure_rejections += 1;
                self.answer_error(
                    &waiter,
                    503,
                    RefusalReason::Limit,
                    "too many requests for this configuration are waiting; retry later",
                    now,
                );
            }
            return;
        }
        if let Err(waiters) = self.send_request(slot, name, false, vec![waiter], now) {
            for w in &waiters {
                self.stats.backpressure_rejections += 1;
                self.answer_error(
                    w,
                    503,
                    RefusalReason::Limit,
                    "too many configuration requests in flight; retry later",
                    now,
                );
            }
        }
    }
}

impl Cmx {
    /// An applied report about an endpoint this replica does not own: the
    /// broadcast and the answer, without bookkeeping.
    pub(super) fn applied_report_only(
        &mut self,
        r: &Reply<'_>,
        endpoint_id: &str,
        written: Option<&str>,
        payload: &[u8],
        now: UnixMillis,
    ) {
        self.applied_request(r, endpoint_id, written, payload, false, now);
    }
}
