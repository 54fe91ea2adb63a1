//! Configuration deltas (kaa-rs extension, [`crate::delta`]): which devices
//! asked on `/config/json-patch[/<name>]` and with which pointers, and the
//! configurations their patches start from, in a cache bounded in bytes.
//!
//! Nothing here runs for a device that never used the delta resource: its
//! answers and pushes are the 7/CMP bytes the provider's answer became.

use std::collections::BTreeMap;

use super::*;

use crate::delta::{self, DeltaResponse, PointerBuf};

/// What a device asked for on the delta resource, for one configuration name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct DeltaWants {
    /// The watched parts; `None` for the whole configuration.
    pub(super) pointers: Option<Arc<[PointerBuf]>>,
}

struct Subscription {
    incarnation: u32,
    name: u32,
    wants: DeltaWants,
}

/// The delta subscriptions and the base cache.
pub(super) struct Deltas {
    /// By endpoint slot: the names its device requests on the delta resource.
    subscriptions: HashMap<u32, Vec<Subscription>, rustc_hash::FxBuildHasher>,
    cache: BaseCache,
    /// The last few patch answers for whole configurations, by (base, current):
    /// a fleet moving from one configuration to the next needs one diff.
    recent: Vec<(Arc<str>, Arc<str>, Bytes)>,
    next_recent: usize,
}

/// How many patch answers [`Deltas`] remembers.
const RECENT_PATCHES: usize = 8;

impl Deltas {
    pub(super) fn new(cache_bytes: usize) -> Self {
        Deltas {
            subscriptions: HashMap::default(),
            cache: BaseCache::new(cache_bytes),
            recent: Vec::new(),
            next_recent: 0,
        }
    }

    /// Records what the device's latest request for (`slot`, `name`) asked:
    /// deltas (`Some`) or plain 7/CMP (`None`).
    pub(super) fn set(
        &mut self,
        slot: u32,
        incarnation: u32,
        name: u32,
        wants: Option<DeltaWants>,
    ) {
        let subs = self.subscriptions.entry(slot).or_default();
        subs.retain(|s| s.incarnation == incarnation && s.name != name);
        if let Some(wants) = wants {
            subs.push(Subscription {
                incarnation,
                name,
                wants,
            });
        }
        if subs.is_empty() {
            self.subscriptions.remove(&slot);
        }
    }

    /// What (`slot`, `name`) asked for on the delta resource, if it did.
    pub(super) fn get(&self, slot: u32, incarnation: u32, name: u32) -> Option<&DeltaWants> {
        self.subscriptions
            .get(&slot)?
            .iter()
            .find(|s| s.incarnation == incarnation && s.name == name)
            .map(|s| &s.wants)
    }

    /// The endpoint in `slot` is gone.
    pub(super) fn forget(&mut self, slot: u32) {
        self.subscriptions.remove(&slot);
    }

    /// How many bytes of configurations the base cache holds.
    pub(super) fn cached_bytes(&self) -> usize {
        self.cache.bytes
    }

    /// The answer for a device on the delta resource that holds `held` and
    /// watches `wants`, the current configuration being `id` with the 7/CMP
    /// answer `payload`. `None`: a patch with no operation, for a push (none of
    /// the watched parts changed). The current configuration becomes a base
    /// for later patches.
    pub(super) fn answer(
        &mut self,
        held: Option<&str>,
        wants: &DeltaWants,
        id: &Arc<str>,
        payload: &Bytes,
        push: bool,
        stats: &mut Stats,
    ) -> Option<Bytes> {
        self.cache.insert(id, payload);
        let pointers = wants.pointers.as_deref();
        let base_payload = held.and_then(|h| self.cache.get(h));
        if pointers.is_none() && base_payload.is_none() {
            // The whole configuration: 7/CMP's answer as it is.
            stats.delta_whole += 1;
            return Some(payload.clone());
        }
        if pointers.is_none()
            && let Some(held) = held
            && let Some((_, _, hit)) = self
                .recent
                .iter()
                .find(|(b, c, _)| **b == *held && **c == **id)
        {
            stats.delta_patches += 1;
            return Some(hit.clone());
        }
        let (Some(current), base) = (config_of(payload), base_payload.and_then(|b| config_of(&b)))
        else {
            // Not a configuration answer (it always is: the engine built it).
            return Some(payload.clone());
        };
        let response = delta::answer(held, pointers, id, &current, base.as_ref());
        match &response {
            DeltaResponse::Patch { patch, .. } if patch.is_empty() && push => {
                stats.delta_quiet += 1;
                return None;
            }
            DeltaResponse::Patch { .. } => stats.delta_patches += 1,
            _ => stats.delta_whole += 1,
        }
        let bytes = Bytes::from(response.to_json());
        if pointers.is_none()
            && let (Some(held), DeltaResponse::Patch { .. }) = (held, &response)
        {
            let entry = (Arc::from(held), Arc::clone(id), bytes.clone());
            if self.recent.len() < RECENT_PATCHES {
                self.recent.push(entry);
            } else {
                self.recent[self.next_recent] = entry;
                self.next_recent = (self.next_recent + 1) % RECENT_PATCHES;
            }
        }
        Some(bytes)
    }
}

/// The configuration in a 7/CMP answer the engine built.
fn config_of(payload: &[u8]) -> Option<serde_json::Value> {
    match ConfigResponse::from_json(payload).ok()? {
        ConfigResponse::Config { config, .. } => Some(config),
        ConfigResponse::Unchanged => None,
    }
}

/// Configurations by config ID, as the 7/CMP answers the engine built from
/// the provider's content (shared with the answers, not copied), least
/// recently used out first once their bytes pass the bound. A configuration
/// larger than the bound is not kept.
struct BaseCache {
    max_bytes: usize,
    bytes: usize,
    entries: HashMap<Arc<str>, (Bytes, u64)>,
    order: BTreeMap<u64, Arc<str>>,
    next: u64,
}

impl BaseCache {
    fn new(max_bytes: usize) -> Self {
        BaseCache {
            max_bytes,
            bytes: 0,
            entries: HashMap::new(),
            order: BTreeMap::new(),
            next: 0,
        }
    }

    fn cost(id: &str, payload: &Bytes) -> usize {
        id.len() + payload.len()
    }

    fn insert(&mut self, id: &Arc<str>, payload: &Bytes) {
        if id.is_empty() {
            return; // the absent configuration is never a base
        }
        let stamp = self.next;
        self.next += 1;
        if let Some((_, old)) = self.entries.get_mut(&**id) {
            self.order.remove(old);
            *old = stamp;
            self.order.insert(stamp, Arc::clone(id));
            return;
        }
        let cost = Self::cost(id, payload);
        if cost > self.max_bytes {
            return;
        }
        while self.bytes + cost > self.max_bytes {
            let Some((_, victim)) = self.order.pop_first() else {
                break;
            };
            if let Some((p, _)) = self.entries.remove(&victim) {
                self.bytes -= Self::cost(&victim, &p);
            }
        }
        self.bytes += cost;
        self.entries
            .insert(Arc::clone(id), (payload.clone(), stamp));
        self.order.insert(stamp, Arc::clone(id));
    }

    fn get(&mut self, id: &str) -> Option<Bytes> {
        let stamp = self.next;
        let (payload, old) = self.entries.get_mut(id)?;
        self.next += 1;
        if let Some(key) = self.order.remove(old) {
            self.order.insert(stamp, key);
        }
        *old = stamp;
        Some(payload.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cache_is_bounded_in_bytes_and_least_recently_used_goes_first() {
        let payload = |n: usize| Bytes::from(vec![b' '; n]);
        let mut cache = BaseCache::new(100);
        let (a, b, c): (Arc<str>, Arc<str>, Arc<str>) = ("a".into(), "b".into(), "c".into());
        cache.insert(&a, &payload(39));
        cache.insert(&b, &payload(39));
        assert_eq!(cache.bytes, 80);
        assert!(cache.get("a").is_some()); // b is now the oldest
        cache.insert(&c, &payload(39));
        assert_eq!(cache.bytes, 80);
        assert!(cache.get("b").is_none());
        assert!(cache.get("a").is_some() && cache.get("c").is_some());
        // Larger than the bound: not kept, nothing evicted.
        cache.insert(&"d".into(), &payload(100));
        assert_eq!((cache.bytes, cache.entries.len()), (80, 2));
        cache.insert(&"".into(), &payload(1));
        assert!(cache.get("").is_none());
    }
}
