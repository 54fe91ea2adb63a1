//! Connection admission: the accounting of connections that have not completed
//! CONNECT ("handshakes") and the `max-connections` budget of those that have.
//!
//! Every accepted socket first takes a handshake slot ([`Handshakes::admit`]):
//!
//! - a source (an IPv4 address, or an IPv6 /64: one host usually holds a whole
//!   /64) that already holds `max-handshakes-per-address` slots gets nothing, and
//!   the socket is closed at once;
//! - when all `max-handshakes` slots are taken, the **oldest handshake of the
//!   source holding the most** (among equals, the one whose oldest is oldest) is
//!   evicted to make room: its connection is closed and the new one proceeds.
//!
//! Why evict rather than refuse when the pool is full: refusing would hand the
//! pool to whoever fills it first, so sockets from a few dozen addresses that
//! never speak would lock every device out again, only at a lower number. With
//! eviction, a newcomer always gets a slot and the cost falls on the source that
//! holds the most slots; its oldest handshake is the one most likely never to
//! speak (a device sends CONNECT one round trip after connecting) and the closest
//! to its `connect-timeout` anyway. A source can never hold more than its
//! per-address share, so a single busy address cannot evict everyone else.
//!
//! A connection keeps its slot until it has sent CONNECT and passed
//! authentication ([`Admission::establish`]); it then trades the slot for one of
//! the `max-connections` permits of established sessions, which handshakes never
//! touch: room stays for devices that complete CONNECT. No permit left: CONNACK
//! 0x03.
//!
//! The table is plain data behind a mutex held for a few map operations; nothing
//! in it awaits.

use std::cmp::Reverse;
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::future::Future;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};

use super::metrics::KpcMetrics;

/// The source a handshake is counted against: the IPv4 address (also for an
/// IPv4-mapped IPv6 address), or the /64 prefix of an IPv6 address.
pub(crate) fn source_of(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(Ipv6Addr::from(prefix))
            }
        },
    }
}

/// One handshake in the table: its number (in order of admission) and the way to
/// tell its connection it was evicted.
#[derive(Debug)]
struct Entry {
    id: u64,
    evict: oneshot::Sender<()>,
}

/// What [`Table::admit`] decided.
#[derive(Debug)]
pub(crate) enum Admitted {
    /// A slot: `(source, id)` to release it, the receiver that fires on eviction,
    /// and whether another handshake was evicted to make room.
    Slot {
        source: IpAddr,
        id: u64,
        evicted: oneshot::Receiver<()>,
        displaced: bool,
    },
    /// The source holds `max-handshakes-per-address` slots already.
    SourceFull,
}

/// The handshake table (no locking, no I/O: see [`Handshakes`]).
#[derive(Debug)]
pub(crate) struct Table {
    max_total: usize,
    max_per_source: usize,
    next_id: u64,
    total: usize,
    by_source: HashMap<IpAddr, VecDeque<Entry>>,
    /// `(slots held, Reverse(id of the oldest), source)` for every source holding
    /// one: the last is the source to evict from.
    ranking: BTreeSet<(usize, Reverse<u64>, IpAddr)>,
}

impl Table {
    /// An empty table; both limits are at least 1.
    pub(crate) fn new(max_total: usize, max_per_source: usize) -> Self {
        Table {
            max_total: max_total.max(1),
            max_per_source: max_per_source.max(1),
            next_id: 0,
            total: 0,
            by_source: HashMap::new(),
            ranking: BTreeSet::new(),
        }
    }

    /// Handshakes in the table.
    pub(crate) fn len(&self) -> usize {
        self.total
    }

    /// Slots `source` holds.
    #[cfg(test)]
    fn held_by(&self, source: IpAddr) -> usize {
        self.by_source.get(&source).map_or(0, VecDeque::len)
    }

    fn rank_key(source: IpAddr, queue: &VecDeque<Entry>) -> Option<(usize, Reverse<u64>, IpAddr)> {
        queue
            .front()
            .map(|oldest| (queue.len(), Reverse(oldest.id), source))
    }

    /// Applies `change` to `source`'s queue, keeping the ranking and the total in
    /// step; drops the queue when it becomes empty.
    fn update<R>(&mut self, source: IpAddr, change: impl FnOnce(&mut VecDeque<Entry>) -> R) -> R {
        let queue = self.by_source.entry(source).or_default();
        if let Some(key) = Self::rank_key(source, queue) {
            self.ranking.remove(&key);
        }
        let before = queue.len();
        let result = change(queue);
        let after = queue.len();
        match Self::rank_key(source, queue) {
            Some(key) => {
                self.ranking.insert(key);
            }
            None => {
                self.by_source.remove(&source);
            }
        }
        self.total = self.total + after - before;
        result
    }

    /// Takes a slot for a connection from `ip` (see the [module docs](self)).
    pub(crate) fn admit(&mut self, ip: IpAddr) -> Admitted {
        let source = source_of(ip);
        if self
            .by_source
            .get(&source)
            .is_some_and(|q| q.len() >= self.max_per_source)
        {
            return Admitted::SourceFull;
        }
        let displaced = self.total >= self.max_total && self.evict_one();
        let id = self.next_id;
        self.next_id += 1;
        let (evict, evicted) = oneshot::channel();
        self.update(source, |q| q.push_back(Entry { id, evict }));
        Admitted::Slot {
            source,
            id,
            evicted,
            displaced,
        }
    }

    /// Evicts the oldest handshake of the source holding the most; false when
    /// the table is empty.
    pub(crate) fn evict_one(&mut self) -> bool {
        let Some(&(_, _, source)) = self.ranking.last() else {
            return false;
        };
        match self.update(source, VecDeque::pop_front) {
            Some(entry) => {
                // The connection may be gone already; then there is nothing to close.
                let _ = entry.evict.send(());
                true
            }
            None => false,
        }
    }

    /// Releases the slot `(source, id)`; nothing when it was evicted already.
    pub(crate) fn remove(&mut self, source: IpAddr, id: u64) {
        if !self.by_source.contains_key(&source) {
            return;
        }
        self.update(source, |q| {
            if let Ok(i) = q.binary_search_by_key(&id, |e| e.id) {
                q.remove(i);
            }
        });
    }
}

/// The handshake table shared by the accept loop and the connections, with its
/// metrics (`kpc_handshakes`, `kpc_handshakes_dropped_total`).
#[derive(Debug)]
pub(crate) struct Handshakes {
    table: Mutex<Table>,
    metrics: KpcMetrics,
}

impl Handshakes {
    pub(crate) fn new(max_total: usize, max_per_source: usize, metrics: KpcMetrics) -> Self {
        Handshakes {
            table: Mutex::new(Table::new(max_total, max_per_source)),
            metrics,
        }
    }

    fn with<R>(&self, f: impl FnOnce(&mut Table) -> R) -> R {
        // A panic while holding the lock cannot leave the table half-updated in a
        // way that matters more than refusing every connection would.
        let mut table = self.table.lock().unwrap_or_else(PoisonError::into_inner);
        let r = f(&mut table);
        self.metrics
            .set_handshakes(i64::try_from(table.len()).unwrap_or(i64::MAX));
        r
    }

    /// A slot for a connection from `ip`, and whether another handshake was
    /// evicted to make room (counted `evicted`); `None` when its source holds its
    /// share already (counted `address_limit`). The connection's [`Admission`]
    /// trades the slot for one of `permits` once CONNECT is accepted.
    pub(crate) fn admit(
        self: &Arc<Self>,
        ip: IpAddr,
        permits: &Arc<Semaphore>,
    ) -> Option<(Admission, bool)> {
        match self.with(|t| t.admit(ip)) {
            Admitted::SourceFull => {
                self.metrics.handshake_dropped("address_limit");
                None
            }
            Admitted::Slot {
                source,
                id,
                evicted,
                displaced,
            } => {
                if displaced {
                    self.metrics.handshake_dropped("evicted");
                }
                let admission = Admission {
                    handshakes: Arc::clone(self),
                    slot: Some((source, id)),
                    evicted: Some(evicted),
                    permits: Arc::clone(permits),
                    permit: None,
                };
                Some((admission, displaced))
            }
        }
    }

    /// Evicts one handshake (the oldest of the source holding the most), to free
    /// a file descriptor; false when there is none.
    pub(crate) fn evict_one(&self) -> bool {
        let evicted = self.with(Table::evict_one);
        if evicted {
            self.metrics.handshake_dropped("evicted");
        }
        evicted
    }
}

/// One connection's place: a handshake slot until CONNECT is accepted, then a
/// `max-connections` permit until the connection ends (dropping it releases
/// whichever it holds).
#[derive(Debug)]
pub(crate) struct Admission {
    handshakes: Arc<Handshakes>,
    slot: Option<(IpAddr, u64)>,
    evicted: Option<oneshot::Receiver<()>>,
    permits: Arc<Semaphore>,
    permit: Option<OwnedSemaphorePermit>,
}

impl Admission {
    /// Resolves when the handshake is evicted (never after [`Admission::establish`]);
    /// may be taken once.
    pub(crate) fn eviction(&mut self) -> impl Future<Output = ()> + Send + 'static {
        let evicted = self.evicted.take();
        async move {
            // The sender only goes away without sending when the slot is released,
            // after which nobody waits for this.
            let fired = match evicted {
                Some(rx) => rx.await.is_ok(),
                None => false,
            };
            if !fired {
                std::future::pending::<()>().await;
            }
        }
    }

    /// CONNECT (and authentication) done: releases the handshake slot and takes a
    /// `max-connections` permit; false when none is left.
    pub(crate) fn establish(&mut self) -> bool {
        self.release_slot();
        match Arc::clone(&self.permits).try_acquire_owned() {
            Ok(permit) => {
                self.permit = Some(permit);
                true
            }
            Err(_) => false,
        }
    }

    fn release_slot(&mut self) {
        if let Some((source, id)) = self.slot.take() {
            self.handshakes.with(|t| t.remove(source, id));
        }
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.release_slot();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn slot(a: Admitted) -> (IpAddr, u64, oneshot::Receiver<()>, bool) {
        match a {
            Admitted::Slot {
                source,
                id,
                evicted,
                displaced,
            } => (source, id, evicted, displaced),
            Admitted::SourceFull => panic!("source full"),
        }
    }

    #[test]
    fn sources_are_ipv4_addresses_and_ipv6_slash_64s() {
        assert_eq!(source_of(ip("192.0.2.7")), ip("192.0.2.7"));
        assert_eq!(source_of(ip("::ffff:192.0.2.7")), ip("192.0.2.7"));
        assert_eq!(source_of(ip("2001:db8:1:2:aaaa::1")), ip("2001:db8:1:2::"));
        assert_eq!(
            source_of(ip("2001:db8:1:2:ffff:ffff:ffff:ffff")),
            ip("2001:db8:1:2::")
        );
        assert_ne!(source_of(ip("2001:db8:1:3::1")), ip("2001:db8:1:2::"));
    }

    #[test]
    fn a_source_at_its_share_is_refused_and_others_still_get_in() {
        let mut t = Table::new(10, 2);
        let _a1 = slot(t.admit(ip("127.0.0.2")));
        let _a2 = slot(t.admit(ip("127.0.0.2")));
        assert!(matches!(t.admit(ip("127.0.0.2")), Admitted::SourceFull));
        let (_, _, _, displaced) = slot(t.admit(ip("127.0.0.3")));
        assert!(!displaced);
        assert_eq!(t.len(), 3);
        // Two IPv6 addresses of one /64 share a share.
        let _b1 = slot(t.admit(ip("2001:db8::1")));
        let _b2 = slot(t.admit(ip("2001:db8::2")));
        assert!(matches!(t.admit(ip("2001:db8::3")), Admitted::SourceFull));
    }

    #[test]
    fn a_full_table_evicts_the_oldest_of_the_busiest_source() {
        let mut t = Table::new(4, 3);
        let (_, _, mut a1, _) = slot(t.admit(ip("10.0.0.1")));
        let (_, _, mut b1, _) = slot(t.admit(ip("10.0.0.2")));
        let (_, _, mut a2, _) = slot(t.admit(ip("10.0.0.1")));
        let (_, _, mut a3, _) = slot(t.admit(ip("10.0.0.1")));
        // Full: the newcomer evicts 10.0.0.1's oldest, not 10.0.0.2's (older, but
        // its source holds one slot).
        let (_, _, mut c1, displaced) = slot(t.admit(ip("10.0.0.3")));
        assert!(displaced);
        assert_eq!(a1.try_recv(), Ok(()));
        assert!(b1.try_recv().is_err() && a2.try_recv().is_err());
        assert_eq!(t.len(), 4);
        assert_eq!(t.held_by(ip("10.0.0.1")), 2);
        // Now 10.0.0.1 holds 2, the others 1: 10.0.0.1 again.
        let _ = slot(t.admit(ip("10.0.0.4")));
        assert_eq!(a2.try_recv(), Ok(()));
        // Every source holds 1: the one whose oldest is oldest (10.0.0.2).
        let _ = slot(t.admit(ip("10.0.0.5")));
        assert_eq!(b1.try_recv(), Ok(()));
        assert!(a3.try_recv().is_err() && c1.try_recv().is_err());
        assert_eq!(t.len(), 4);
    }

    #[test]
    fn released_and_evicted_slots_are_counted_once() {
        let mut t = Table::new(2, 2);
        let (s1, id1, _r1, _) = slot(t.admit(ip("10.0.0.1")));
        let (s2, id2, _r2, _) = slot(t.admit(ip("10.0.0.1")));
        t.remove(s1, id1);
        assert_eq!(t.len(), 1);
        t.remove(s1, id1);
        assert_eq!(t.len(), 1);
        assert!(t.evict_one());
        assert_eq!(t.len(), 0);
        // Released after its eviction: nothing more.
        t.remove(s2, id2);
        assert_eq!(t.len(), 0);
        assert!(!t.evict_one());
        assert!(t.ranking.is_empty() && t.by_source.is_empty());
    }

    #[test]
    fn admission_trades_its_slot_for_a_permit() {
        let handshakes = Arc::new(Handshakes::new(2, 2, KpcMetrics::default()));
        let permits = Arc::new(Semaphore::new(1));
        let (mut a, _) = handshakes.admit(ip("10.0.0.1"), &permits).unwrap();
        let (mut b, _) = handshakes.admit(ip("10.0.0.1"), &permits).unwrap();
        assert!(handshakes.admit(ip("10.0.0.1"), &permits).is_none());
        assert!(a.establish());
        assert_eq!(permits.available_permits(), 0);
        // `b` completes CONNECT with no permit left: refused, its slot released.
        assert!(!b.establish());
        assert_eq!(handshakes.with(|t| t.len()), 0);
        drop(b);
        drop(a);
        assert_eq!(permits.available_permits(), 1);
        let metrics = &handshakes.metrics;
        assert_eq!(metrics.handshakes(), 0);
        assert_eq!(metrics.handshakes_dropped_count("address_limit"), 1);
    }
}
