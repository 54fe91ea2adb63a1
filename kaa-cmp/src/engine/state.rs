//! Per-endpoint state of the CMX engine, laid out for a small idle footprint:
//! a slab of [`Endpoint`]s indexed by endpoint ID, with the strings many endpoints
//! share interned elsewhere, and two intrusive lists (connected and idle) in
//! order of last activity, for TTL expiry and eviction in O(1).

use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;

use hashbrown::HashTable;

use kaa_ism::UnixMillis;

use crate::intern::NONE;

/// The "no slot" link.
pub(crate) const NIL: u32 = u32::MAX;

/// What the device asked for with `observe` in its latest request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Observe {
    /// No request yet, or `observe` absent: the server may push (CMX does).
    Absent,
    /// `observe: true`.
    On,
    /// `observe: false`: no pushes until the next request.
    Off,
}

/// Why the engine wants to push a configuration once it has fetched it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum PushMode {
    /// Nothing to push.
    None,
    /// After a change (ConfigUpdated, app version change): push unless the device
    /// already holds (or rejected) the current configuration.
    IfNotHeld,
    /// After a connect: push unless the device has *reported* the current
    /// configuration applied (or rejected it); a push sent while it was away may
    /// have been lost.
    IfNotApplied,
}

/// The state of one configuration name of one endpoint. Config IDs are handles
/// into the engine's config ID table ([`NONE`]: unknown).
#[derive(Debug, Clone, Copy)]
pub(crate) struct NameState {
    /// Handle into the name table; [`NONE`] for the default configuration.
    pub(crate) name: u32,
    /// The configuration the device holds, as far as the engine knows: the last
    /// one delivered to it, or the last one it reported.
    pub(crate) holds: u32,
    /// The last configuration the device reported as applied (applied resource
    /// with 2xx, or `configId` in a request).
    pub(crate) confirmed: u32,
    /// The last configuration the device rejected (applied resource, non-2xx).
    pub(crate) rejected: u32,
    pub(crate) observe: Observe,
    /// The low 32 bits of the `ClientData` timestamp (ms) of the request that
    /// set `observe`: with several replicas, a device's requests can reach the
    /// owner out of order (one directly, one handed over), so an older request
    /// does not overwrite a newer one's `observe` (a single CMX takes requests
    /// in the order they come). Compared wrapping (good for ±24
    /// days); 32 bits keep the idle footprint.
    pub(crate) observe_at: u32,
    /// The low 32 bits of the engine's clock (ms) when it last delivered a
    /// configuration of this name (an answer or a push that set `holds`): an
    /// applied report stamped later that names another configuration means the
    /// deliveries reached the device out of order (see `applied_request`).
    pub(crate) delivered_at: u32,
    pub(crate) push: PushMode,
    /// The device addresses the default configuration as `…/json/default`.
    pub(crate) explicit_default: bool,
    /// Failed push attempts since the last trigger.
    pub(crate) attempts: u8,
}

impl NameState {
    pub(crate) fn new(name: u32) -> Self {
        NameState {
            name,
            holds: NONE,
            confirmed: NONE,
            rejected: NONE,
            observe: Observe::Absent,
            observe_at: 0,
            delivered_at: 0,
            push: PushMode::None,
            explicit_default: false,
            attempts: 0,
        }
    }
}

/// One tracked endpoint.
pub(crate) struct Endpoint {
    pub(crate) id: Arc<str>,
    /// The default configuration; always present.
    pub(crate) default: NameState,
    /// Named configurations the device has used, if any.
    pub(crate) named: Option<Box<[NameState]>>,
    pub(crate) last_active: UnixMillis,
    /// The timestamp of the message that set `app_version`: information about
    /// an endpoint's app version comes from several services and may arrive out
    /// of order, so the newest by message timestamp wins.
    pub(crate) app_version_at: i64,
    /// `app_version` came from an event (not a device message).
    pub(crate) app_version_from_event: bool,
    /// Handle into the app version table.
    pub(crate) app_version: u32,
    /// Handle into the reply subject table ([`NONE`]: instance-wide subject).
    pub(crate) reply_to: u32,
    /// The timestamp of the device message that set `reply_to` (`i64::MIN`:
    /// none): a `connected` event stamped before it is of that session or an
    /// older one and leaves the affinity alone.
    pub(crate) reply_at: i64,
    prev: u32,
    next: u32,
    /// Distinguishes this endpoint from a later one in the same slot.
    pub(crate) incarnation: u32,
    pub(crate) connected: bool,
    /// Learned from a communication service's list of its sessions
    /// ([`Cmx::adopt_sessions`](crate::Cmx::adopt_sessions)) rather than from
    /// the session's start: which named configurations it observes is unknown.
    pub(crate) adopted: bool,
}

impl Endpoint {
    pub(crate) fn new(id: Arc<str>, app_version: u32, incarnation: u32, now: UnixMillis) -> Self {
        Endpoint {
            id,
            default: NameState::new(NONE),
            named: None,
            last_active: now,
            app_version_at: i64::MIN,
            app_version_from_event: false,
            app_version,
            reply_to: NONE,
            reply_at: i64::MIN,
            prev: NIL,
            next: NIL,
            incarnation,
            connected: false,
            adopted: false,
        }
    }

    pub(crate) fn name(&self, name: u32) -> Option<&NameState> {
        if name == NONE {
            return Some(&self.default);
        }
        self.named.as_deref()?.iter().find(|n| n.name == name)
    }

    pub(crate) fn name_mut(&mut self, name: u32) -> Option<&mut NameState> {
        if name == NONE {
            return Some(&mut self.default);
        }
        self.named
            .as_deref_mut()?
            .iter_mut()
            .find(|n| n.name == name)
    }

    /// How many named (non-default) configurations are tracked.
    pub(crate) fn named_count(&self) -> usize {
        self.named.as_deref().map_or(0, <[NameState]>::len)
    }

    /// The name handle at `index`: 0 is the default, then the named ones.
    pub(crate) fn name_at(&self, index: usize) -> Option<u32> {
        match index {
            0 => Some(NONE),
            i => self.named.as_deref()?.get(i - 1).map(|n| n.name),
        }
    }

    pub(crate) fn add_name(&mut self, state: NameState) {
        let mut names = self.named.take().map(Vec::from).unwrap_or_default();
        names.push(state);
        self.named = Some(names.into_boxed_slice());
    }

    /// Every name state, default first.
    pub(crate) fn names(&self) -> impl Iterator<Item = &NameState> {
        std::iter::once(&self.default).chain(self.named.as_deref().unwrap_or_default())
    }
}

#[derive(Debug, Clone, Copy)]
struct List {
    head: u32,
    tail: u32,
}

impl List {
    const EMPTY: List = List {
        head: NIL,
        tail: NIL,
    };
}

/// The ID of the endpoint in `slot` (`None`: an empty or unknown slot).
fn id_at(slots: &[Option<Endpoint>], slot: u32) -> Option<&str> {
    Some(&*slots.get(slot as usize)?.as_ref()?.id)
}

/// The slab of endpoints with its index and activity lists.
pub(crate) struct Endpoints {
    slots: Vec<Option<Endpoint>>,
    free: Vec<u32>,
    /// The slot of each endpoint, found by its ID's hash and compared with the
    /// slot's [`Endpoint::id`]. A bucket is the slot number alone (4 bytes,
    /// where a map from `Arc<str>` takes 24): with many endpoints the index stays
    /// in cache, and a lookup's cache misses are the endpoint and its ID, which
    /// the engine reads next anyway.
    index: HashTable<u32>,
    /// SipHash with a random key, as std's `HashMap`: endpoint IDs come from
    /// other services' messages (HashDoS).
    hasher: RandomState,
    connected: List,
    idle: List,
}

impl Endpoints {
    pub(crate) fn new() -> Self {
        Endpoints {
            slots: Vec::new(),
            free: Vec::new(),
            index: HashTable::new(),
            hasher: RandomState::new(),
            connected: List::EMPTY,
            idle: List::EMPTY,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.index.len()
    }

    pub(crate) fn find(&self, id: &str) -> Option<u32> {
        let slots = &self.slots;
        self.index
            .find(self.hasher.hash_one(id), |&slot| {
                id_at(slots, slot) == Some(id)
            })
            .copied()
    }

    pub(crate) fn get(&self, slot: u32) -> Option<&Endpoint> {
        self.slots.get(slot as usize)?.as_ref()
    }

    pub(crate) fn get_mut(&mut self, slot: u32) -> Option<&mut Endpoint> {
        self.slots.get_mut(slot as usize)?.as_mut()
    }

    /// Every tracked endpoint with its slot, in slot order.
    pub(crate) fn slots(&self) -> impl Iterator<Item = (u32, &Endpoint)> {
        self.slots.iter().enumerate().filter_map(|(i, e)| {
            let e = e.as_ref()?;
            Some((u32::try_from(i).ok()?, e))
        })
    }

    /// The endpoints of the connected or the idle list, least recently active
    /// first.
    pub(crate) fn least_recent(&self, connected: bool) -> impl Iterator<Item = u32> + '_ {
        let mut slot = if connected {
            self.connected.head
        } else {
            self.idle.head
        };
        std::iter::from_fn(move || {
            let e = self.get(slot)?;
            let this = slot;
            slot = e.next;
            Some(this)
        })
    }

    /// The least recently active disconnected endpoint.
    pub(crate) fn oldest_idle(&self) -> Option<u32> {
        (self.idle.head != NIL).then_some(self.idle.head)
    }

    /// Every connected endpoint, least recently active first.
    pub(crate) fn connected_slots(&self) -> Vec<u32> {
        let mut out = Vec::new();
        let mut slot = self.connected.head;
        while let Some(e) = self.get(slot) {
            out.push(slot);
            slot = e.next;
        }
        out
    }

    /// The least recently active connected endpoint.
    pub(crate) fn oldest_connected(&self) -> Option<u32> {
        (self.connected.head != NIL).then_some(self.connected.head)
    }

    /// Adds an endpoint at the tail of its list.
    pub(crate) fn insert(&mut self, endpoint: Endpoint) -> u32 {
        let hash = self.hasher.hash_one(&*endpoint.id);
        let slot = match self.free.pop() {
            Some(slot) => {
                if let Some(s) = self.slots.get_mut(slot as usize) {
                    *s = Some(endpoint);
                }
                slot
            }
            None => {
                self.slots.push(Some(endpoint));
                u32::try_from(self.slots.len() - 1).unwrap_or(NIL)
            }
        };
        let (slots, hasher) = (&self.slots, &self.hasher);
        self.index.insert_unique(hash, slot, |&other| {
            hasher.hash_one(id_at(slots, other).unwrap_or_default())
        });
        self.link_tail(slot);
        slot
    }

    pub(crate) fn remove(&mut self, slot: u32) -> Option<Endpoint> {
        self.unlink(slot);
        let endpoint = self.slots.get_mut(slot as usize)?.take()?;
        if let Ok(entry) = self
            .index
            .find_entry(self.hasher.hash_one(&*endpoint.id), |&s| s == slot)
        {
            entry.remove();
        }
        self.free.push(slot);
        Some(endpoint)
    }

    /// Records activity: `last_active = now`, and to the tail of its list.
    pub(crate) fn touch(&mut self, slot: u32, now: UnixMillis) {
        self.unlink(slot);
        if let Some(e) = self.get_mut(slot) {
            e.last_active = now;
        }
        self.link_tail(slot);
    }

    /// Moves an endpoint between the connected and idle lists (and touches it).
    pub(crate) fn set_connected(&mut self, slot: u32, connected: bool, now: UnixMillis) {
        self.unlink(slot);
        if let Some(e) = self.get_mut(slot) {
            e.connected = connected;
            e.last_active = now;
        }
        self.link_tail(slot);
    }

    fn list_of(&mut self, connected: bool) -> &mut List {
        if connected {
            &mut self.connected
        } else {
            &mut self.idle
        }
    }

    fn link_tail(&mut self, slot: u32) {
        let Some(connected) = self.get(slot).map(|e| e.connected) else {
            return;
        };
        let tail = self.list_of(connected).tail;
        if let Some(e) = self.get_mut(slot) {
            e.prev = tail;
            e.next = NIL;
        }
        match self.get_mut(tail) {
            Some(t) => t.next = slot,
            None => self.list_of(connected).head = slot,
        }
        self.list_of(connected).tail = slot;
    }

    fn unlink(&mut self, slot: u32) {
        let Some((prev, next, connected)) = self.get(slot).map(|e| (e.prev, e.next, e.connected))
        else {
            return;
        };
        match self.get_mut(prev) {
            Some(p) => p.next = next,
            None => self.list_of(connected).head = next,
        }
        match self.get_mut(next) {
            Some(n) => n.prev = prev,
            None => self.list_of(connected).tail = prev,
        }
        if let Some(e) = self.get_mut(slot) {
            e.prev = NIL;
            e.next = NIL;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(eps: &Endpoints, connected: bool) -> Vec<String> {
        let mut out = Vec::new();
        let mut cur = if connected {
            eps.connected.head
        } else {
            eps.idle.head
        };
        while let Some(e) = eps.get(cur) {
            out.push(e.id.to_string());
            cur = e.next;
        }
        out
    }

    #[test]
    fn lists_keep_activity_order() {
        let mut eps = Endpoints::new();
        let a = eps.insert(Endpoint::new("a".into(), 1, 1, UnixMillis(1)));
        let b = eps.insert(Endpoint::new("b".into(), 1, 2, UnixMillis(2)));
        let c = eps.insert(Endpoint::new("c".into(), 1, 3, UnixMillis(3)));
        assert_eq!(ids(&eps, false), ["a", "b", "c"]);
        eps.touch(a, UnixMillis(4));
        assert_eq!(ids(&eps, false), ["b", "c", "a"]);
        eps.set_connected(c, true, UnixMillis(5));
        assert_eq!(ids(&eps, false), ["b", "a"]);
        assert_eq!(ids(&eps, true), ["c"]);
        assert_eq!(eps.oldest_idle(), Some(b));
        assert_eq!(eps.oldest_connected(), Some(c));
        let removed = eps.remove(b).unwrap();
        assert_eq!(&*removed.id, "b");
        assert_eq!(eps.find("b"), None);
        assert_eq!(ids(&eps, false), ["a"]);
        let d = eps.insert(Endpoint::new("d".into(), 1, 4, UnixMillis(6)));
        assert_eq!(d, b, "slot reused");
        assert_eq!(ids(&eps, false), ["a", "d"]);
        eps.remove(a);
        eps.remove(d);
        eps.remove(c);
        assert_eq!(eps.len(), 0);
        assert_eq!(eps.oldest_idle(), None);
        assert_eq!(eps.oldest_connected(), None);
    }

    /// The index finds every endpoint by its ID through the table's growth
    /// (rehashing reads IDs back from the slots), removal and slot reuse, and
    /// finds none of the removed ones.
    #[test]
    fn index_finds_endpoints_through_growth_removal_and_reuse() {
        let mut eps = Endpoints::new();
        let id = |n: u32| format!("endpoint-{n}");
        let mut slot_of = std::collections::HashMap::new();
        for n in 0..5_000u32 {
            let slot = eps.insert(Endpoint::new(id(n).into(), 1, n, UnixMillis(0)));
            slot_of.insert(n, slot);
        }
        for n in (0..5_000u32).filter(|n| n % 3 == 0) {
            let removed = eps.remove(slot_of[&n]).expect("tracked");
            assert_eq!(*removed.id, id(n));
        }
        // The freed slots are taken again by new IDs.
        for n in 5_000..7_000u32 {
            let slot = eps.insert(Endpoint::new(id(n).into(), 1, n, UnixMillis(0)));
            slot_of.insert(n, slot);
        }
        for n in 0..7_000u32 {
            let expected = (n >= 5_000 || n % 3 != 0).then(|| slot_of[&n]);
            assert_eq!(eps.find(&id(n)), expected, "{}", id(n));
        }
        assert_eq!(eps.find("endpoint-"), None);
        assert_eq!(eps.len(), 7_000 - 5_000_usize.div_ceil(3));
    }

    #[test]
    fn names() {
        let mut e = Endpoint::new("a".into(), 1, 1, UnixMillis(0));
        assert_eq!(e.named_count(), 0);
        e.add_name(NameState::new(7));
        e.add_name(NameState::new(9));
        assert_eq!(e.named_count(), 2);
        assert_eq!(e.name_at(0), Some(NONE));
        assert_eq!(e.name_at(2), Some(9));
        assert_eq!(e.name_at(3), None);
        e.name_mut(9).unwrap().observe = Observe::Off;
        assert_eq!(e.name(9).unwrap().observe, Observe::Off);
        assert!(e.name(8).is_none());
        assert_eq!(e.names().count(), 3);
    }
}
