//! CDTP fetch bookkeeping: one request in flight per endpoint and name, the
//! devices waiting on it, and what its answer comes to.

use super::*;

/// A device request waiting for a CDTP answer.
pub(super) struct Waiter {
    pub(super) endpoint_id: Arc<str>,
    pub(super) request_id: Option<i32>,
    pub(super) correlation_id: Box<str>,
    pub(super) subject: Arc<str>,
    pub(super) resource_path: Arc<str>,
    pub(super) app_version: Arc<str>,
    /// The `configId` the device sent.
    pub(super) config_id: Option<Arc<str>>,
    /// Asked on the delta resource (kaa-rs extension): answered with a patch
    /// when one is clearly smaller.
    pub(super) delta: Option<DeltaWants>,
}

/// A CDTP request in flight.
pub(super) struct Pending {
    pub(super) slot: u32,
    pub(super) name: u32,
    pub(super) endpoint_id: Arc<str>,
    pub(super) app_version: Arc<str>,
    /// The `configId` sent.
    pub(super) asked: Option<Arc<str>>,
    /// A change arrived after the request was sent: the answer may be older.
    pub(super) stale: bool,
    pub(super) waiters: Vec<Waiter>,
}

/// What a CDTP answer (or its absence) comes to.
pub(super) enum Fetched {
    /// The current configuration; `payload` is the 7/CMP response JSON.
    Config { id: Arc<str>, payload: Bytes },
    /// The configuration asked about is current.
    Unchanged,
    /// No usable answer.
    Failed { status: i32, reason: String },
    /// No answer within the CDTP timeout (a 504 to whoever waits).
    TimedOut { reason: String },
}

impl Cmx {
    /// Sends a CDTP request for (`slot`, `name`) with `waiters`; `full` asks for
    /// the content whatever the device holds. Gives the waiters back when
    /// `max_pending_requests` is reached.
    pub(super) fn send_request(
        &mut self,
        slot: u32,
        name: u32,
        full: bool,
        waiters: Vec<Waiter>,
        now: UnixMillis,
    ) -> Result<(), Vec<Waiter>> {
        if self.pending.len() >= self.settings.config.max_pending_requests {
            return Err(waiters);
        }
        let Some(e) = self.endpoints.get(slot) else {
            return Err(waiters);
        };
        let Some(ns) = e.name(name) else {
            return Err(waiters);
        };
        let asked = if full {
            None
        } else {
            self.config_ids.get(ns.confirmed).cloned()
        };
        let app_version = self
            .app_versions
            .get(e.app_version)
            .cloned()
            .unwrap_or_else(|| Arc::from(""));
        let config_name = self.names.get(name).cloned();
        let endpoint_id = e.id.clone();
        let (seq, correlation_id) = self.next_correlation_id();
        let deadline = now.saturating_add(self.settings.config.cdtp_timeout);
        self.out
            .push_back(Output::ConfigRequest(OutgoingConfigRequest {
                subject: self.settings.request_subject.clone(),
                reply_to: self.settings.response_subject.clone(),
                correlation_id,
                timestamp: now,
                timeout: self.settings.cdtp_timeout_ms,
                app_version_name: app_version.clone(),
                endpoint_id: endpoint_id.clone(),
                config_id: asked.clone(),
                config_name,
                deadline,
            }));
        self.pending.insert(
            seq,
            Pending {
                slot,
                name,
                endpoint_id,
                app_version,
                asked,
                stale: false,
                waiters,
            },
        );
        self.in_flight.insert((slot, name), seq);
        self.prune_timers();
        self.timers.push(Reverse((deadline, Timer::Deadline(seq))));
        self.stats.cdtp_requests += 1;
        Ok(())
    }

    /// Sends a CDTP request again for `waiters` and any push wanted; on
    /// backpressure the waiters get a 503 and the push is retried later.
    pub(super) fn refetch(
        &mut self,
        slot: u32,
        name: u32,
        full: bool,
        waiters: Vec<Waiter>,
        now: UnixMillis,
    ) {
        if let Err(waiters) = self.send_request(slot, name, full, waiters, now) {
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
            if self.push_wanted(slot, name) {
                self.schedule_retry(slot, name, now);
            }
        }
    }

    /// Ends the CDTP request `seq` with `fetched`; while the hand-over fence
    /// is up, keeps it (the request stays pending) until it is lifted.
    pub(super) fn complete(&mut self, seq: u64, fetched: Fetched, now: UnixMillis) {
        if let Some(fence) = self.membership.fence.as_mut() {
            if self.pending.contains_key(&seq)
                && let std::collections::btree_map::Entry::Vacant(v) = fence.answers.entry(seq)
            {
                v.insert(fetched);
                self.stats.handover_held_answers += 1;
            }
            return;
        }
        let Some(mut p) = self.pending.remove(&seq) else {
            return;
        };
        if self.in_flight.get(&(p.slot, p.name)) == Some(&seq) {
            self.in_flight.remove(&(p.slot, p.name));
        }
        let current_version = self
            .endpoints
            .get(p.slot)
            .and_then(|e| self.app_versions.get(e.app_version));
        // A timeout is never asked again for staleness: there is no answer that
        // could predate a change, and the devices waiting were promised an answer
        // within the CDTP timeout (a `ConfigUpdated` during every wait would
        // otherwise keep them waiting for ever). A wanted push is retried.
        let timed_out = matches!(fetched, Fetched::TimedOut { .. });
        if !timed_out && (p.stale || current_version.is_none_or(|a| **a != *p.app_version)) {
            // The answer may predate a change the engine has heard of: ask again.
            self.stats.cdtp_responses_stale += 1;
            let waiters = std::mem::take(&mut p.waiters);
            self.refetch(p.slot, p.name, false, waiters, now);
            return;
        }
        match fetched {
            Fetched::Failed { status, reason } => self.fetch_failed(p, status, &reason, now),
            Fetched::TimedOut { reason } => self.fetch_failed(p, 504, &reason, now),
            Fetched::Unchanged => match p.asked.clone() {
                Some(asked) => self.deliver(p, &asked, None, now),
                None => self.fetch_failed(
                    p,
                    502,
                    "the configuration provider answered \"unchanged\" to a request without configId",
                    now,
                ),
            },
            Fetched::Config { id, payload } => self.deliver(p, &id, Some(payload), now),
        }
    }

    pub(super) fn fetch_failed(&mut self, p: Pending, status: i32, reason: &str, now: UnixMillis) {
        let why = if status == 504 {
            RefusalReason::ProviderTimeout
        } else {
            RefusalReason::ProviderError
        };
        for w in &p.waiters {
            self.answer_error(w, status, why, reason.to_owned(), now);
        }
        if self.push_wanted(p.slot, p.name) {
            self.schedule_retry(p.slot, p.name, now);
        }
    }

    /// Delivers the current configuration `id` (with its 7/CMP response
    /// `payload`, or `None` when the provider said "unchanged") to the waiting
    /// devices and, if wanted, as a push.
    pub(super) fn deliver(
        &mut self,
        p: Pending,
        id: &str,
        payload: Option<Bytes>,
        now: UnixMillis,
    ) {
        let mut need_content = Vec::new();
        let mut device_has_it = false;
        let mut implicit: Option<(Box<str>, Arc<str>)> = None;
        for mut w in p.waiters {
            // The configuration is the one of the app version it was fetched for.
            w.app_version = p.app_version.clone();
            if w.config_id.as_deref() == Some(id) {
                device_has_it = true;
                if self.settings.config.broadcast_implicit_applied && implicit.is_none() {
                    implicit = Some((w.correlation_id.clone(), w.app_version.clone()));
                }
                if w.request_id.is_some() {
                    self.answer(w, 200, None, Some(Bytes::from_static(UNCHANGED_JSON)), now);
                }
            } else if let Some(payload) = &payload {
                device_has_it = true;
                let body = match &w.delta {
                    None => payload.clone(),
                    Some(wants) => {
                        let id: Arc<str> = id.into();
                        self.deltas
                            .answer(
                                w.config_id.as_deref(),
                                wants,
                                &id,
                                payload,
                                false,
                                &mut self.stats,
                            )
                            .unwrap_or_else(|| payload.clone())
                    }
                };
                // Without a request ID this goes out as a push.
                self.answer(w, 200, None, Some(body), now);
            } else {
                need_content.push(w);
            }
        }
        let Self {
            endpoints: eps,
            config_ids,
            deltas,
            stats,
            ..
        } = self;
        let Some(e) = eps.get_mut(p.slot) else {
            return;
        };
        let connected = e.connected;
        let incarnation = e.incarnation;
        let Some(ns) = e.name_mut(p.name) else {
            return;
        };
        let h = config_ids.acquire(id);
        if device_has_it {
            config_ids.set(&mut ns.holds, h);
            ns.delivered_at = now.0 as u32;
        }
        let absent = id.is_empty();
        let want_push = connected
            && ns.observe != Observe::Off
            && !device_has_it
            && match ns.push {
                PushMode::None => false,
                PushMode::IfNotHeld => {
                    h != ns.holds && h != ns.rejected && !(absent && ns.holds == NONE)
                }
                PushMode::IfNotApplied => {
                    h != ns.confirmed && h != ns.rejected && !(absent && ns.confirmed == NONE)
                }
            };
        if !need_content.is_empty() || (want_push && payload.is_none()) {
            // Someone needs the content the provider left out: ask for it.
            config_ids.release(h);
            self.refetch(p.slot, p.name, true, need_content, now);
            return;
        }
        // What a push to a device on the delta resource starts from: what it
        // holds, or after a connect what it reported applied (a push sent
        // while it was away may be lost).
        let base = match ns.push {
            PushMode::IfNotApplied => ns.confirmed,
            _ => ns.holds,
        };
        ns.push = PushMode::None;
        ns.attempts = 0;
        let mut push = None;
        if want_push && let Some(payload) = &payload {
            push = match deltas.get(p.slot, incarnation, p.name).cloned() {
                None => Some((payload.clone(), false)),
                Some(wants) => {
                    let id = config_ids.get(h).cloned().unwrap_or_else(|| id.into());
                    let base = config_ids.get(base).cloned();
                    // `None`: none of the watched parts changed; no push, and
                    // the device still holds what it held.
                    deltas
                        .answer(base.as_deref(), &wants, &id, payload, true, stats)
                        .map(|body| (body, true))
                }
            };
        }
        if push.is_some() {
            config_ids.set(&mut ns.holds, h);
            ns.delivered_at = now.0 as u32;
        }
        config_ids.release(h);
        if let Some((body, delta)) = push {
            self.push(p.slot, p.name, body, delta, now);
        }
        if let Some((correlation_id, app_version)) = implicit {
            let config_name = self.names.get(p.name).cloned();
            self.out
                .push_back(Output::ConfigApplied(OutgoingConfigApplied {
                    subject: self.settings.applied_subject.clone(),
                    correlation_id: correlation_id.into(),
                    timestamp: now,
                    timeout: self.settings.message_timeout_ms,
                    app_version_name: app_version,
                    endpoint_id: p.endpoint_id.clone(),
                    config_id: id.into(),
                    originator_replica_id: self.settings.replica.clone(),
                    status_code: 200,
                    reason_phrase: Some("Implicitly applied".into()),
                    config_name,
                }));
        }
    }
}

pub(super) fn absent() -> Fetched {
    Fetched::Config {
        id: "".into(),
        payload: Bytes::from_static(ABSENT_JSON),
    }
}

pub(super) fn bad_answer(reason: impl Into<String>) -> Fetched {
    Fetched::Failed {
        status: 502,
        reason: reason.into(),
    }
}

/// What a CDTP response means for a request that asked about `asked` (the
/// 6/CDTP rules are `kaa_cdtp`'s [`CdtpResponse::read`]; 7/CMP adds that the
/// content must be JSON). `recent` spares the JSON check and the building of the
/// 7/CMP answer when the same configuration came a moment ago.
pub(super) fn interpret(
    msg: &CdtpResponse<'_>,
    asked: Option<&str>,
    recent: &mut RecentConfigs,
) -> Fetched {
    match msg.read(asked) {
        ConfigAnswer::Unchanged => Fetched::Unchanged,
        // The provider has no configuration for the endpoint: 7/CMP's absent
        // configuration.
        ConfigAnswer::Absent => absent(),
        ConfigAnswer::Error {
            status_code,
            reason,
        } => {
            let reason = match reason {
                Some(r) => format!("configuration provider: {r}"),
                None => format!("the configuration provider answered {status_code}"),
            };
            let status = if (400..600).contains(&status_code) {
                status_code
            } else {
                502
            };
            Fetched::Failed { status, reason }
        }
        ConfigAnswer::Invalid(InvalidAnswer::ContentType) => bad_answer(format!(
            "unsupported configuration content type {:?}",
            msg.content_type
        )),
        ConfigAnswer::Invalid(e) => bad_answer(e.to_string()),
        ConfigAnswer::Config { config_id, content } => {
            if let Some(hit) = recent.get(config_id, content) {
                return hit;
            }
            if serde_json::from_slice::<JsonCheck>(content).is_err() {
                return bad_answer("the configuration provider sent content that is not JSON");
            }
            let id: Arc<str> = config_id.into();
            let payload = Bytes::from(ConfigResponse::encode_raw(config_id, content));
            recent.insert(&id, &payload, content.len());
            Fetched::Config { id, payload }
        }
        _ => bad_answer("the configuration provider's answer is not understood"),
    }
}

/// The last few configurations the provider sent, checked and built into 7/CMP
/// answers: most endpoints of a fleet hold the same few configurations (their
/// app version's default), so most answers are a configuration checked a moment
/// ago. A hit needs the same config ID *and* byte-for-byte the same content (the
/// content is compared, not trusted by its ID), and gives the same answer the
/// check and the build would: the JSON check and the answer's allocation are
/// skipped. Bounded: [`RECENT_CONFIGS`] entries of at most
/// [`RECENT_CONFIG_MAX_BYTES`] content each, replaced round-robin.
#[derive(Default)]
pub(super) struct RecentConfigs {
    entries: Vec<RecentConfig>,
    next: usize,
}

struct RecentConfig {
    id: Arc<str>,
    /// The 7/CMP answer; the content is its `content` range.
    payload: Bytes,
    content: std::ops::Range<usize>,
}

/// How many configurations [`RecentConfigs`] keeps.
pub(super) const RECENT_CONFIGS: usize = 16;
/// The largest configuration [`RecentConfigs`] keeps (larger ones are checked
/// every time; comparing them would cost about as much).
pub(super) const RECENT_CONFIG_MAX_BYTES: usize = 64 * 1024;

impl RecentConfigs {
    fn get(&self, id: &str, content: &[u8]) -> Option<Fetched> {
        if content.len() > RECENT_CONFIG_MAX_BYTES {
            return None;
        }
        self.entries
            .iter()
            .find(|e| *e.id == *id && e.payload.get(e.content.clone()) == Some(content))
            .map(|e| Fetched::Config {
                id: Arc::clone(&e.id),
                payload: e.payload.clone(),
            })
    }

    fn insert(&mut self, id: &Arc<str>, payload: &Bytes, content_len: usize) {
        if content_len > RECENT_CONFIG_MAX_BYTES {
            return;
        }
        // `encode_raw` ends the answer with the content and one `}`.
        let end = payload.len() - 1;
        let entry = RecentConfig {
            id: Arc::clone(id),
            payload: payload.clone(),
            content: end - content_len..end,
        };
        if self.entries.len() < RECENT_CONFIGS {
            self.entries.push(entry);
        } else {
            self.entries[self.next] = entry;
            self.next = (self.next + 1) % RECENT_CONFIGS;
        }
    }
}

/// Checks that a configuration is JSON a 7/CMP decoder accepts, without building
/// it: every value goes through `deserialize_any`, as it does when decoding into
/// `serde_json::Value` (so a number out of `f64` range is refused here too).
struct JsonCheck;

impl<'de> serde::Deserialize<'de> for JsonCheck {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(JsonCheck)
    }
}

impl<'de> serde::de::Visitor<'de> for JsonCheck {
    type Value = JsonCheck;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<Self, E> {
        Ok(JsonCheck)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Self, E> {
        Ok(JsonCheck)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Self, E> {
        Ok(JsonCheck)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Self, E> {
        Ok(JsonCheck)
    }
    fn visit_str<E>(self, _: &str) -> Result<Self, E> {
        Ok(JsonCheck)
    }
    fn visit_unit<E>(self) -> Result<Self, E> {
        Ok(JsonCheck)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self, A::Error> {
        while seq.next_element::<JsonCheck>()?.is_some() {}
        Ok(JsonCheck)
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self, A::Error> {
        while map.next_key::<JsonCheck>()?.is_some() {
            map.next_value::<JsonCheck>()?;
        }
        Ok(JsonCheck)
    }
}
