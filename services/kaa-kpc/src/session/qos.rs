//! QoS: the packet identifiers of QoS 1 deliveries waiting for PUBACK, and the
//! QoS of pushes per resource.
//!
//! - Responses go out at the request's QoS capped at 1: KPC never sends QoS 2.
//! - Packet identifiers count up from 1, wrap from 65,535 to 1 and skip those
//!   still waiting for PUBACK; 0 is never used (MQTT 3.1.1, 2.3.1). At most
//!   `max-inflight` (and never more than 65,535) deliveries wait; further QoS 1
//!   deliveries are refused until PUBACKs arrive. Nothing is retransmitted: no
//!   session is resumed.
//! - A push goes out at the QoS of the session's last request for its (endpoint,
//!   extension, resource path), 0 if it never asked; at most
//!   [`MAX_REMEMBERED_RESOURCES`] are remembered per session, further ones push
//!   at QoS 0.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use rumqttc::mqttbytes::QoS;

/// The most resources per session whose last request QoS is remembered for pushes.
pub(super) const MAX_REMEMBERED_RESOURCES: usize = 1024;

/// Packet identifiers there are (1 to 65,535).
const PACKET_IDS: usize = u16::MAX as usize;

/// Responses go out at the request's QoS; KPC does not send QoS 2.
pub(super) fn response_qos(qos: QoS) -> QoS {
    match qos {
        QoS::AtMostOnce => QoS::AtMostOnce,
        QoS::AtLeastOnce | QoS::ExactlyOnce => QoS::AtLeastOnce,
    }
}

/// QoS 1 deliveries waiting for PUBACK.
#[derive(Debug, Default)]
pub(super) struct Outgoing {
    /// The last identifier given out.
    last: u16,
    unacked: HashSet<u16>,
}

impl Outgoing {
    /// A packet identifier for a QoS 1 delivery, unless `window` of them (or
    /// every identifier) are waiting for PUBACK.
    pub(super) fn allocate(&mut self, window: usize) -> Option<u16> {
        if self.unacked.len() >= window.min(PACKET_IDS) {
            return None;
        }
        // Ends: fewer than 65,535 identifiers are taken.
        loop {
            self.last = self.last.checked_add(1).unwrap_or(1);
            if !self.unacked.contains(&self.last) {
                break;
            }
        }
        self.unacked.insert(self.last);
        Some(self.last)
    }

    /// PUBACK: the identifier is free again (an unknown one is ignored).
    pub(super) fn acked(&mut self, pkid: u16) {
        self.unacked.remove(&pkid);
    }

    pub(super) fn len(&self) -> usize {
        self.unacked.len()
    }

    /// Frees the set's room when it is empty.
    pub(super) fn release_spare(&mut self) {
        if self.unacked.is_empty() {
            self.unacked = HashSet::new();
        }
    }

    pub(super) fn unacked(&self) -> impl Iterator<Item = u16> + '_ {
        self.unacked.iter().copied()
    }
}

/// `(endpoint, extension, resource path)`.
type Resource = (Arc<str>, String, String);

/// The QoS of pushes per resource: that of the session's last request for it.
#[derive(Debug, Default)]
pub(super) struct PushQos {
    last: HashMap<Resource, QoS>,
}

impl PushQos {
    /// Whether no resource is remembered.
    pub(super) fn is_empty(&self) -> bool {
        self.last.is_empty()
    }

    /// Remembers the QoS of a request for `resource`; true when the resource
    /// was not remembered before and now is.
    pub(super) fn remember(&mut self, resource: Resource, qos: QoS) -> bool {
        if let Some(q) = self.last.get_mut(&resource) {
            *q = qos;
            return false;
        }
        if self.last.len() >= MAX_REMEMBERED_RESOURCES {
            return false;
        }
        self.last.insert(resource, qos);
        true
    }

    /// The QoS of a push to `resource`.
    pub(super) fn get(&self, resource: &Resource) -> QoS {
        self.last.get(resource).copied().unwrap_or(QoS::AtMostOnce)
    }
}
