//! Replies: where an answer goes, error answers and refusals, and the
//! correlation IDs of what the engine sends.

use super::*;

/// Where to send a response to one `ClientData`.
pub(super) struct Reply<'m> {
    pub(super) subject: Arc<str>,
    /// The `ClientData` timestamp.
    pub(super) timestamp: i64,
    pub(super) correlation_id: &'m str,
    pub(super) app_version: &'m str,
    pub(super) endpoint_id: Option<&'m str>,
    pub(super) resource_path: &'m str,
    pub(super) request_id: Option<i32>,
}

impl Cmx {
    /// The `ExtensionData` subject for a `ClientData` `replyTo`: the same replica
    /// (or instance) with message type `ExtensionData`; the communication
    /// service's instance-wide subject when there is none or it is not a 3/ISM
    /// targeted subject.
    pub(super) fn reply_subject(&self, reply_to: Option<&str>) -> Arc<str> {
        // A subject the engine already holds is one this method returned before:
        // a 3/ISM targeted `ExtensionData` subject, which normalizes to itself.
        // Found, it needs no parse (a device's every request comes with the same
        // `replyTo`).
        if let Some(raw) = reply_to {
            if *raw == *self.settings.extension_data_subject {
                return self.settings.extension_data_subject.clone();
            }
            if let Some(known) = self.replies.find(raw).and_then(|h| self.replies.get(h)) {
                return known.clone();
            }
        }
        self.parse_reply_subject(reply_to)
    }

    /// [`Cmx::reply_subject`] by parsing `reply_to`.
    fn parse_reply_subject(&self, reply_to: Option<&str>) -> Arc<str> {
        let normalized: Option<Cow<'_, str>> = reply_to.and_then(|raw| match Subject::parse(raw) {
            Ok(Subject::Replica(r)) if r.message_type() == EXTENSION_DATA => {
                Some(Cow::Borrowed(raw))
            }
            Ok(Subject::Replica(r)) => r
                .with_message_type(EXTENSION_DATA)
                .ok()
                .map(|s| Cow::Owned(s.to_string())),
            Ok(Subject::Service(s)) if s.message_type() == EXTENSION_DATA => {
                Some(Cow::Borrowed(raw))
            }
            Ok(Subject::Service(s)) => {
                ServiceSubject::new(s.instance(), s.protocol(), EXTENSION_DATA)
                    .ok()
                    .map(|s| Cow::Owned(s.to_string()))
            }
            _ => None,
        });
        match normalized {
            None => self.settings.extension_data_subject.clone(),
            Some(s) if *s == *self.settings.extension_data_subject => {
                self.settings.extension_data_subject.clone()
            }
            Some(s) => self
                .replies
                .find(&s)
                .and_then(|h| self.replies.get(h))
                .cloned()
                .unwrap_or_else(|| Arc::from(&*s)),
        }
    }

    /// Answers `r` with an error; without a request ID, records a [`Refusal`]
    /// instead. `reason` must hold nothing of the payload (it may be logged).
    pub(super) fn reply_error(
        &mut self,
        r: &Reply<'_>,
        status: i32,
        why: RefusalReason,
        reason: impl Into<Cow<'static, str>>,
        now: UnixMillis,
    ) {
        if r.request_id.is_none() {
            self.refuse(Refusal {
                correlation_id: r.correlation_id.to_owned(),
                endpoint_id: r.endpoint_id.map(Arc::from),
                app_version_name: r.app_version.into(),
                resource_path: r.resource_path.into(),
                status_code: status,
                reason: why,
                detail: reason.into(),
            });
            return;
        }
        self.emit(
            r.subject.clone(),
            r.correlation_id.to_owned(),
            r.app_version.into(),
            r.endpoint_id.map(Arc::from),
            r.resource_path.into(),
            r.request_id,
            None,
            status,
            Some(reason.into()),
            now,
        );
    }

    /// Answers a waiting device request, taking the waiter (its strings move
    /// into the answer).
    pub(super) fn answer(
        &mut self,
        w: Waiter,
        status: i32,
        reason: Option<Cow<'static, str>>,
        payload: Option<Bytes>,
        now: UnixMillis,
    ) {
        self.emit(
            w.subject,
            w.correlation_id.into_string(),
            w.app_version,
            Some(w.endpoint_id),
            w.resource_path,
            w.request_id,
            payload,
            status,
            reason,
            now,
        );
    }

    /// A malformed payload: the device is told what is wrong (the error may
    /// quote its payload); a refusal records only [`PayloadError::summary`].
    pub(super) fn reply_malformed(&mut self, r: &Reply<'_>, e: &PayloadError, now: UnixMillis) {
        let reason = if r.request_id.is_some() {
            e.to_string()
        } else {
            e.summary()
        };
        self.reply_error(r, 400, RefusalReason::MalformedPayload, reason, now);
    }

    /// Like [`Cmx::reply_error`], for a request that waited for the provider.
    pub(super) fn answer_error(
        &mut self,
        w: &Waiter,
        status: i32,
        why: RefusalReason,
        reason: impl Into<Cow<'static, str>>,
        now: UnixMillis,
    ) {
        if w.request_id.is_none() {
            self.refuse(Refusal {
                correlation_id: w.correlation_id.to_string(),
                endpoint_id: Some(w.endpoint_id.clone()),
                app_version_name: w.app_version.clone(),
                resource_path: w.resource_path.clone(),
                status_code: status,
                reason: why,
                detail: reason.into(),
            });
            return;
        }
        self.emit(
            w.subject.clone(),
            w.correlation_id.to_string(),
            w.app_version.clone(),
            Some(w.endpoint_id.clone()),
            w.resource_path.clone(),
            w.request_id,
            None,
            status,
            Some(reason.into()),
            now,
        );
    }

    /// Counts a refusal and keeps it for [`Cmx::poll_refusal`].
    pub(super) fn refuse(&mut self, refusal: Refusal) {
        self.stats.errors_without_request_id += 1;
        self.stats.refused_without_request_id.add(refusal.reason);
        if self.refusals.len() >= MAX_KEPT_REFUSALS {
            self.refusals.pop_front();
            self.stats.refusals_not_kept += 1;
        }
        self.refusals.push_back(refusal);
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn emit(
        &mut self,
        subject: Arc<str>,
        correlation_id: String,
        app_version_name: Arc<str>,
        endpoint_id: Option<Arc<str>>,
        resource_path: Arc<str>,
        request_id: Option<i32>,
        payload: Option<Bytes>,
        status_code: i32,
        reason_phrase: Option<Cow<'static, str>>,
        now: UnixMillis,
    ) {
        self.out
            .push_back(Output::ExtensionData(OutgoingExtensionData {
                subject,
                correlation_id,
                timestamp: now,
                timeout: self.settings.message_timeout_ms,
                app_version_name,
                extension_instance_name: self.settings.instance.clone(),
                endpoint_id,
                resource_path,
                request_id,
                payload,
                status_code,
                reason_phrase,
            }));
    }

    pub(super) fn next_correlation_id(&mut self) -> (u64, String) {
        let seq = self.next_seq;
        self.next_seq += 1;
        // Sized once, and the digits without `core::fmt` (a request's hot path).
        let mut digits = itoa::Buffer::new();
        let digits = digits.format(seq);
        let mut id = String::with_capacity(self.settings.prefix.len() + 1 + digits.len());
        id.push_str(&self.settings.prefix);
        id.push('-');
        id.push_str(digits);
        (seq, id)
    }

    /// The engine's number for a 6/CDTP request it sent, read from the
    /// correlation ID of the request ([`Output::ConfigRequest`]) or of its
    /// answer; `None` for a correlation ID the engine did not make. Numbers are
    /// unique for the engine's life, so a driver can key what it keeps per
    /// request (e.g. the send time, for a latency histogram) by this number
    /// instead of copying the correlation ID.
    pub fn request_seq(&self, correlation_id: &str) -> Option<u64> {
        self.parse_seq(correlation_id)
    }

    pub(super) fn parse_seq(&self, correlation_id: &str) -> Option<u64> {
        let digits = correlation_id
            .strip_prefix(self.settings.prefix.as_str())?
            .strip_prefix('-')?;
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        digits.parse().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `replyTo` the engine holds takes the lookup instead of the parse: both
    /// must give the same subject, for every shape of `replyTo`.
    #[test]
    fn a_known_reply_subject_is_what_parsing_gives() {
        let mut cmx = Cmx::new(CmxConfig::new("cmx", "cmx-1", "ecr", "kpc")).unwrap();
        let shapes = [
            "kaa.v1.replica.kpc-2.esp.ExtensionData",
            "kaa.v1.replica.kpc-3.esp.ClientData",
            "kaa.v1.service.kpc.esp.ExtensionData",
            "kaa.v1.service.kpc.esp.ClientData",
            "kaa.v1.service.other.esp.ClientData",
            "kaa.v1.service.kpc.cdtp.request",
            "_INBOX.abc.1",
            "not a subject",
            "",
        ];
        for raw in shapes {
            let parsed = cmx.parse_reply_subject(Some(raw));
            // Held by the engine, as tracking a session does.
            let held = cmx.replies.acquire(&parsed);
            assert_eq!(cmx.reply_subject(Some(raw)), parsed, "{raw:?}");
            assert_eq!(cmx.reply_subject(Some(&parsed)), parsed, "{raw:?}");
            cmx.replies.release(held);
        }
        assert_eq!(
            cmx.reply_subject(None),
            cmx.settings.extension_data_subject.clone()
        );
    }

    /// The engine's correlation IDs are `<prefix>-<seq>` in decimal, and
    /// [`Cmx::request_seq`] reads every one back (the driver keys its send
    /// times by it).
    #[test]
    fn correlation_ids_read_back_to_their_number() {
        let mut cmx = Cmx::new(CmxConfig::new("cmx", "cmx-1", "ecr", "kpc")).unwrap();
        for start in [0, 1, 9, 10, 99, 12_345, u64::MAX / 10, u64::MAX - 2] {
            cmx.next_seq = start;
            let (seq, id) = cmx.next_correlation_id();
            assert_eq!(seq, start);
            assert_eq!(id, format!("{}-{start}", cmx.settings.prefix));
            assert_eq!(cmx.request_seq(&id), Some(start));
        }
    }
}
