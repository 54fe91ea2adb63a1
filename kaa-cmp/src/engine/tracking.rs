//! Endpoint bookkeeping: tracking endpoints, their app versions, reply
//! subjects and configuration names, and forgetting them.

use super::*;

/// Where and when app version information about an endpoint came from.
#[derive(Debug, Clone, Copy)]
pub(super) struct AppVersionStamp {
    pub(super) timestamp: i64,
    pub(super) from_event: bool,
}

impl AppVersionStamp {
    pub(super) fn event(timestamp: i64) -> Self {
        AppVersionStamp {
            timestamp,
            from_event: true,
        }
    }

    pub(super) fn device(timestamp: i64) -> Self {
        AppVersionStamp {
            timestamp,
            from_event: false,
        }
    }
}

/// How many endpoints of each list [`Cmx::eviction_victim`] looks at first for
/// one that can be evicted without breaking a rule.
const EVICTION_SCAN: usize = 64;

#[derive(Debug, Clone, Copy)]
pub(super) enum Removal {
    Evicted,
    Expired,
    Unregistered,
    /// Another replica owns it now ([`Cmx::set_members`]).
    Moved,
}

impl Cmx {
    /// The slot of an endpoint, tracking it if new (evicting the least recently
    /// active one at `max_endpoints`); updates its app version and activity.
    pub(super) fn track(
        &mut self,
        endpoint_id: &str,
        app_version: &str,
        at: AppVersionStamp,
        now: UnixMillis,
    ) -> Option<u32> {
        self.track_changed(endpoint_id, app_version, at, now)
            .map(|(slot, _)| slot)
    }

    /// The endpoint to evict at `max_endpoints`: the least recently active
    /// disconnected one, else the least recently active connected one, passing
    /// over endpoints whose state cannot be lost without breaking a rule:
    /// - a 6/CDTP request in flight: its next message tracked it anew and asked
    ///   the provider again while the first request was still there (one request
    ///   in flight per endpoint and name);
    /// - a name the device asked `observe: false` for: the next `connected` event
    ///   tracked it anew and pushed to it (7/CMP: MUST NOT).
    ///
    /// Both were found by `kaa-conformance cmx-fuzz`, whose endpoints filled a
    /// CMX's million: a device disconnected a moment ago was the oldest idle
    /// endpoint.
    ///
    /// 1. Among the first [`EVICTION_SCAN`] of each list (idle first), the first
    ///    endpoint without either. Each one passed over is moved to the tail of
    ///    its list (it counts as active now; for an idle one, its TTL restarts):
    ///    left at the head, such endpoints piled up there as the others were
    ///    evicted around them, until every scan met only them (the kit's third
    ///    finding: with the first 64 of both lists taken, the oldest idle
    ///    endpoint was evicted with its request in flight).
    /// 2. Else the least recently active endpoint without a request in flight
    ///    (there are at most `max_pending_requests` with one): a device that
    ///    opted out then loses its state, the rule holding only as far as memory
    ///    allows.
    /// 3. Else (every endpoint waits for the provider) the least recently active.
    fn eviction_victim(&mut self, now: UnixMillis) -> Option<u32> {
        let opted_out = |cmx: &Self, slot: u32| {
            cmx.endpoints
                .get(slot)
                .is_some_and(|e| e.names().any(|n| n.observe == Observe::Off))
        };
        let in_flight = |cmx: &Self, slot: u32| {
            cmx.endpoints.get(slot).is_some_and(|e| {
                e.names()
                    .any(|n| cmx.in_flight.contains_key(&(slot, n.name)))
            })
        };
        for connected in [false, true] {
            let mut passed_over = Vec::new();
            let mut found = None;
            for slot in self.endpoints.least_recent(connected).take(EVICTION_SCAN) {
                if opted_out(self, slot) || in_flight(self, slot) {
                    passed_over.push(slot);
                } else {
                    found = Some(slot);
                    break;
                }
            }
            for slot in passed_over {
                self.endpoints.touch(slot, now);
            }
            if found.is_some() {
                return found;
            }
        }
        [false, true]
            .into_iter()
            .find_map(|connected| {
                self.endpoints
                    .least_recent(connected)
                    .find(|slot| !in_flight(self, *slot))
            })
            .or_else(|| {
                self.endpoints
                    .oldest_idle()
                    .or_else(|| self.endpoints.oldest_connected())
            })
    }

    /// [`Cmx::track`], also telling whether a known endpoint's app version changed.
    pub(super) fn track_changed(
        &mut self,
        endpoint_id: &str,
        app_version: &str,
        at: AppVersionStamp,
        now: UnixMillis,
    ) -> Option<(u32, bool)> {
        if let Some(slot) = self.endpoints.find(endpoint_id) {
            let changed = self.set_app_version(slot, app_version, at);
            self.endpoints.touch(slot, now);
            return Some((slot, changed));
        }
        if self.settings.config.max_endpoints == 0 {
            return None;
        }
        // An endpoint of an app version this CMX does not serve (its device's
        // requests get a 404) is not tracked from events or listed sessions
        // either: 9/ELCE events of every communication service reach every CMX,
        // and tracking them would fetch configurations nobody can receive.
        if let Some(known) = &self.settings.config.app_versions
            && !known.contains(app_version)
        {
            self.stats.unknown_app_version_ignored += 1;
            return None;
        }
        while self.endpoints.len() >= self.settings.config.max_endpoints {
            let Some(victim) = self.eviction_victim(now) else {
                break;
            };
            self.remove_endpoint(victim, Removal::Evicted, now);
        }
        let av = self.app_versions.acquire(app_version);
        self.next_incarnation = self.next_incarnation.wrapping_add(1);
        let mut endpoint = Endpoint::new(endpoint_id.into(), av, self.next_incarnation, now);
        endpoint.app_version_at = at.timestamp;
        endpoint.app_version_from_event = at.from_event;
        // Replicas: just after a membership change another replica may have
        // served names of this endpoint (see `CmxConfig::membership_settle`).
        endpoint.adopted = self
            .membership
            .unsettled(now, self.settings.config.membership_settle);
        let slot = self.endpoints.insert(endpoint);
        Some((slot, false))
    }

    /// [`Cmx::track`] for a device message: the endpoint is connected, and its
    /// session answers on `subject`.
    pub(super) fn track_session(
        &mut self,
        endpoint_id: &str,
        r: &Reply<'_>,
        now: UnixMillis,
    ) -> Option<u32> {
        let (slot, version_changed) = self.track_changed(
            endpoint_id,
            r.app_version,
            AppVersionStamp::device(r.timestamp),
            now,
        )?;
        let default = Arc::ptr_eq(&r.subject, &self.settings.extension_data_subject);
        // Most messages answer where the endpoint's last one did: nothing to
        // change then (acquiring the same handle and releasing it again would
        // hash the subject for nothing).
        let same = !default
            && self
                .endpoints
                .get(slot)
                .is_some_and(|e| self.replies.holds(e.reply_to, &r.subject));
        if !same {
            let reply = if default {
                NONE
            } else {
                self.replies.acquire(&r.subject)
            };
            self.set_reply(slot, reply);
            self.replies.release(reply);
        }
        if let Some(e) = self.endpoints.get_mut(slot) {
            e.reply_at = r.timestamp;
        }
        if self.endpoints.get(slot).is_some_and(|e| !e.connected) {
            self.endpoints.set_connected(slot, true, now);
        }
        if version_changed {
            // The device itself now speaks another app version: as for an
            // `appversion-updated` event.
            self.trigger_all(slot, PushMode::IfNotApplied, now);
        }
        Some(slot)
    }

    pub(super) fn set_reply(&mut self, slot: u32, reply: u32) {
        if let Some(e) = self.endpoints.get_mut(slot) {
            self.replies.set(&mut e.reply_to, reply);
        }
    }

    /// Sets an endpoint's app version from a message stamped `at`, unless the
    /// engine has newer information; true if it changed.
    ///
    /// App version information comes from the device (`ClientData`) and from
    /// events (`connected`, `appversion-updated`), through different services,
    /// so it can arrive out of order: the newest by message timestamp wins, and
    /// on a tie an event wins over a device message (the endpoint register is
    /// the authority on app versions).
    pub(super) fn set_app_version(
        &mut self,
        slot: u32,
        app_version: &str,
        at: AppVersionStamp,
    ) -> bool {
        let Self {
            endpoints: eps,
            app_versions,
            ..
        } = self;
        let Some(e) = eps.get_mut(slot) else {
            return false;
        };
        let current = (e.app_version_at, e.app_version_from_event);
        if (at.timestamp, at.from_event) < current {
            return false;
        }
        e.app_version_at = at.timestamp;
        e.app_version_from_event = at.from_event;
        if app_versions
            .get(e.app_version)
            .is_some_and(|a| **a == *app_version)
        {
            return false;
        }
        let h = app_versions.acquire(app_version);
        app_versions.release(e.app_version);
        e.app_version = h;
        // Answers in flight were fetched for the previous app version: stale,
        // even if the endpoint comes back to that version before they arrive
        // (updates for it were ignored meanwhile).
        for n in e.names() {
            if let Some(p) = self
                .in_flight
                .get(&(slot, n.name))
                .and_then(|seq| self.pending.get_mut(seq))
            {
                p.stale = true;
            }
        }
        true
    }

    /// The name handle for a configuration name as written (`None`: default),
    /// adding it to the endpoint if new; `None` past `max_names_per_endpoint`.
    pub(super) fn name_of(
        &mut self,
        slot: u32,
        written: Option<&str>,
        config_request: bool,
    ) -> Option<u32> {
        let max = self.settings.config.max_names_per_endpoint;
        let Self {
            endpoints: eps,
            names,
            ..
        } = self;
        let e = eps.get_mut(slot)?;
        match resource::canonical_config_name(written) {
            None => {
                if config_request {
                    e.default.explicit_default = written.is_some();
                }
                Some(NONE)
            }
            Some(n) => {
                if let Some(h) = names.find(n)
                    && e.name(h).is_some()
                {
                    return Some(h);
                }
                if e.named_count() >= max {
                    return None;
                }
                let h = names.acquire(n);
                e.add_name(NameState::new(h));
                Some(h)
            }
        }
    }

    pub(super) fn remove_endpoint(&mut self, slot: u32, why: Removal, now: UnixMillis) {
        let Some(e) = self.endpoints.remove(slot) else {
            return;
        };
        self.deltas.forget(slot);
        let (status, reason) = match why {
            Removal::Evicted => {
                self.stats.endpoints_evicted += 1;
                (
                    503,
                    "the endpoint's state was evicted (max_endpoints); retry",
                )
            }
            Removal::Expired => {
                self.stats.endpoints_expired += 1;
                (503, "the endpoint's state expired; retry")
            }
            Removal::Unregistered => (404, "the endpoint was unregistered"),
            Removal::Moved => {
                self.stats.endpoints_moved += 1;
                (
                    503,
                    "the endpoint moved to another CMX replica while the request waited; retry",
                )
            }
        };
        for ns in e.names() {
            if let Some(seq) = self.in_flight.remove(&(slot, ns.name))
                && let Some(p) = self.pending.remove(&seq)
            {
                for w in &p.waiters {
                    self.answer_error(w, status, RefusalReason::EndpointRemoved, reason, now);
                }
            }
            self.names.release(ns.name);
            self.config_ids.release(ns.holds);
            self.config_ids.release(ns.confirmed);
            self.config_ids.release(ns.rejected);
        }
        self.app_versions.release(e.app_version);
        self.replies.release(e.reply_to);
    }
}
