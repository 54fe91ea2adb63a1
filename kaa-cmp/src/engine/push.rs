//! Pushes: what triggers one, who gets it, retries.

use super::*;

impl Cmx {
    pub(super) fn trigger_all(&mut self, slot: u32, mode: PushMode, now: UnixMillis) {
        let mut i = 0;
        while let Some(name) = self.endpoints.get(slot).and_then(|e| e.name_at(i)) {
            self.trigger_push(slot, name, mode, now);
            i += 1;
        }
    }

    /// Wants a push of (`slot`, `name`) in `mode`: fetches the configuration
    /// unless a fetch is already in flight (its answer will be used).
    pub(super) fn trigger_push(&mut self, slot: u32, name: u32, mode: PushMode, now: UnixMillis) {
        let Some(e) = self.endpoints.get_mut(slot) else {
            return;
        };
        if !e.connected {
            return;
        }
        let Some(ns) = e.name_mut(name) else {
            return;
        };
        if ns.observe == Observe::Off {
            return;
        }
        ns.push = ns.push.max(mode);
        ns.attempts = 0;
        if self.in_flight.contains_key(&(slot, name)) {
            return;
        }
        // Just joined live members: the push waits for the hand-over fence.
        if let Some(fence) = self.membership.fence.as_mut() {
            fence.pushes.push((slot, e.incarnation, name));
            return;
        }
        if self
            .send_request(slot, name, false, Vec::new(), now)
            .is_err()
        {
            self.schedule_retry(slot, name, now);
        }
    }

    pub(super) fn push_wanted(&self, slot: u32, name: u32) -> bool {
        self.endpoints.get(slot).is_some_and(|e| {
            e.connected
                && e.name(name)
                    .is_some_and(|n| n.push != PushMode::None && n.observe != Observe::Off)
        })
    }

    pub(super) fn schedule_retry(&mut self, slot: u32, name: u32, now: UnixMillis) {
        let max = self.settings.config.push_retry_attempts;
        let base = self.settings.config.push_retry_delay;
        let Some(e) = self.endpoints.get_mut(slot) else {
            return;
        };
        let incarnation = e.incarnation;
        let Some(ns) = e.name_mut(name) else {
            return;
        };
        ns.attempts = ns.attempts.saturating_add(1);
        if ns.attempts > max {
            ns.push = PushMode::None;
            ns.attempts = 0;
            self.stats.push_retries_exhausted += 1;
            return;
        }
        let delay = base.saturating_mul(1 << u32::from(ns.attempts - 1).min(6));
        self.timers.push(Reverse((
            now.saturating_add(delay),
            Timer::Retry {
                slot,
                incarnation,
                name,
            },
        )));
    }

    /// Wants a push of (`slot`, `name`) unless the device reports the current
    /// configuration applied within a push retry delay (the first retry of
    /// [`PushMode::IfNotApplied`]); nothing when a push or a retry is already
    /// wanted. True if it scheduled the check.
    pub(super) fn verify_later(&mut self, slot: u32, name: u32, now: UnixMillis) -> bool {
        let Some(ns) = self
            .endpoints
            .get_mut(slot)
            .filter(|e| e.connected)
            .and_then(|e| e.name_mut(name))
        else {
            return false;
        };
        if ns.observe == Observe::Off || ns.push != PushMode::None {
            return false;
        }
        ns.push = PushMode::IfNotApplied;
        ns.attempts = 0;
        self.schedule_retry(slot, name, now);
        true
    }

    pub(super) fn retry_push(&mut self, slot: u32, incarnation: u32, name: u32, now: UnixMillis) {
        let current = self
            .endpoints
            .get(slot)
            .is_some_and(|e| e.incarnation == incarnation);
        if !current || !self.push_wanted(slot, name) || self.in_flight.contains_key(&(slot, name)) {
            return;
        }
        if self
            .send_request(slot, name, false, Vec::new(), now)
            .is_err()
        {
            self.schedule_retry(slot, name, now);
        }
    }

    /// Pushes `payload` to (`slot`, `name`), on the delta resource
    /// `/config/json-patch[/<name>]` when `delta` (kaa-rs extension), else on
    /// `/config/json[/<name>]`.
    pub(super) fn push(
        &mut self,
        slot: u32,
        name: u32,
        payload: Bytes,
        delta: bool,
        now: UnixMillis,
    ) {
        let Some(e) = self.endpoints.get(slot) else {
            return;
        };
        let subject = self
            .replies
            .get(e.reply_to)
            .cloned()
            .unwrap_or_else(|| self.settings.extension_data_subject.clone());
        let resource_path: Arc<str> = match (self.names.get(name), e.default.explicit_default) {
            (Some(n), _) => format!("{CONFIG_JSON}/{n}").into(),
            (None, true) => format!("{CONFIG_JSON}/{}", resource::DEFAULT_NAME).into(),
            (None, false) => self.settings.config_path.clone(),
        };
        let resource_path = if delta {
            let suffix = resource_path.strip_prefix(CONFIG_JSON).unwrap_or_default();
            format!("{CONFIG_JSON_PATCH}{suffix}").into()
        } else {
            resource_path
        };
        let app_version = self
            .app_versions
            .get(e.app_version)
            .cloned()
            .unwrap_or_else(|| Arc::from(""));
        let endpoint_id = e.id.clone();
        let (_, correlation_id) = self.next_correlation_id();
        self.stats.pushes += 1;
        self.emit(
            subject,
            correlation_id,
            app_version,
            Some(endpoint_id),
            resource_path,
            None,
            Some(payload),
            200,
            None,
            now,
        );
    }
}
