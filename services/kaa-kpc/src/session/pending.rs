//! The 1/KP requests waiting for an extension's answer, keyed by (endpoint,
//! extension instance, request ID).
//!
//! At most `max-inflight` wait; when the table is full, expired entries are
//! dropped before a new request is refused. An answer takes its entry; one that
//! finds it expired is dropped. A request reusing a waiting key replaces it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use rumqttc::mqttbytes::QoS;

/// `(endpoint ID, extension instance, request ID)`.
pub(super) type PendingKey = (Arc<str>, String, i32);

/// A request waiting for its ExtensionData.
#[derive(Debug)]
pub(super) struct Pending {
    /// The request topic as the device sent it.
    pub(super) topic: String,
    /// The QoS to answer with.
    pub(super) qos: QoS,
    /// After this, the answer is no longer delivered.
    pub(super) expires: Instant,
}

#[derive(Debug, Default)]
pub(super) struct PendingRequests {
    waiting: HashMap<PendingKey, Pending>,
}

impl PendingRequests {
    pub(super) fn len(&self) -> usize {
        self.waiting.len()
    }

    /// Frees the table's room when it is empty.
    pub(super) fn release_spare(&mut self) {
        if self.waiting.is_empty() {
            self.waiting = HashMap::new();
        }
    }

    /// Whether one more request may wait, under `limit`; drops expired ones
    /// when the table is full.
    pub(super) fn has_room(&mut self, limit: usize, now: Instant) -> bool {
        if self.waiting.len() >= limit {
            self.waiting.retain(|_, p| p.expires > now);
        }
        self.waiting.len() < limit
    }

    /// Takes every request waiting for `endpoint_id`'s answers.
    pub(super) fn take_endpoint(&mut self, endpoint_id: &str) -> Vec<Pending> {
        let keys: Vec<PendingKey> = self
            .waiting
            .keys()
            .filter(|k| &*k.0 == endpoint_id)
            .cloned()
            .collect();
        keys.into_iter()
            .filter_map(|k| self.waiting.remove(&k))
            .collect()
    }

    pub(super) fn insert(&mut self, key: PendingKey, pending: Pending) {
        self.waiting.insert(key, pending);
    }

    /// Takes the request an answer is for. An extension that does not name
    /// itself (`extension` `None`) matches on endpoint and request ID alone.
    pub(super) fn take(
        &mut self,
        endpoint_id: &Arc<str>,
        extension: Option<&str>,
        request_id: i32,
    ) -> Option<Pending> {
        match extension {
            Some(ext) => {
                self.waiting
                    .remove(&(Arc::clone(endpoint_id), ext.to_owned(), request_id))
            }
            None => {
                let key = self
                    .waiting
                    .keys()
                    .find(|(e, _, r)| e == endpoint_id && *r == request_id)
                    .cloned()?;
                self.waiting.remove(&key)
            }
        }
    }
}
