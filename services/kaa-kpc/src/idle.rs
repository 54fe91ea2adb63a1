//! Idle sessions without a task: the idle reactors, and the tasks of the sessions
//! that have something to do.
//!
//! A task per connection costs its future (the session's state plus the largest
//! state of its loop: socket readiness, mailbox, shutdown watch, keep-alive timer)
//! and tokio's task cell, whether the device is doing anything or not, and most
//! devices of a fleet are idle most of the time. So an established session that
//! has nothing to do ends its task and is *parked* (see the session driver): the
//! session, one heap allocation ([`Established`]), goes to one of a few idle
//! reactors, each one task holding many sessions, as an event loop does:
//!
//! - the reactor registers a waker of the session's slot (a small `Arc`) with the
//!   socket's readiness (`TcpStream::poll_read_ready`, the one waker slot tokio
//!   keeps per direction, nothing allocated per wait) and with the session's
//!   mailbox;
//! - the keep-alive deadlines of its sessions are one binary heap and one timer;
//! - when a socket becomes readable (data, EOF or an error), the mailbox gets a
//!   delivery, a revocation or the close order (client ID taken over), the
//!   keep-alive expires, or KPC stops, the reactor spawns a task for the session
//!   again ([`Tasks::spawn`]), which handles what woke it exactly as a session
//!   that was never parked would, and parks it again once it is idle.
//!
//! On shutdown a reactor stops taking sessions (a session that tries to park then
//! closes in its own task) and spawns a task for every session it holds: each sees
//! the shutdown and closes, publishing its `disconnected`, as an active one does.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::future::{Future, poll_fn};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Wake, Waker};

use futures::task::AtomicWaker;
use tokio::sync::{Notify, mpsc, watch};
use tokio::time::Instant;

use crate::Shared;
use crate::session::driver::Established;

/// How many idle reactors a KPC runs: one per worker thread, at most this.
const MAX_REACTORS: usize = 4;

/// The sessions' side of the idle reactors: where to park a session.
#[derive(Debug)]
pub(crate) struct Idle {
    reactors: Vec<mpsc::UnboundedSender<Box<Established>>>,
    /// Taken by [`Idle::start`].
    inboxes: Mutex<Vec<mpsc::UnboundedReceiver<Box<Established>>>>,
}

impl std::fmt::Debug for Established {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Established")
            .field("id", &self.id())
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing here panics while holding a lock; keep going if something did.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Idle {
    /// Channels for `n` reactors (at least one).
    pub(crate) fn new(n: usize) -> Self {
        let (reactors, inboxes) = (0..n.max(1)).map(|_| mpsc::unbounded_channel()).unzip();
        Idle {
            reactors,
            inboxes: Mutex::new(inboxes),
        }
    }

    /// As many reactors as worker threads, at most [`MAX_REACTORS`].
    pub(crate) fn for_this_machine() -> Self {
        let threads = std::thread::available_parallelism().map_or(1, usize::from);
        Self::new(threads.min(MAX_REACTORS))
    }

    /// Hands an idle session to its reactor; gives it back when the reactors
    /// have stopped (KPC is shutting down) or were never started.
    pub(crate) fn park(&self, session: Box<Established>) -> Result<(), Box<Established>> {
        let n = self.reactors.len() as u64;
        let i = usize::try_from(session.id() % n).unwrap_or(0);
        match self.reactors.get(i) {
            Some(reactor) => reactor.send(session).map_err(|e| e.0),
            None => Err(session),
        }
    }

    /// The reactors' futures (run each in a task), until `shutdown` turns true;
    /// empty when they were started already.
    pub(crate) fn start(
        &self,
        shared: &Arc<Shared>,
        shutdown: &watch::Receiver<bool>,
    ) -> Vec<impl Future<Output = ()> + Send + 'static + use<>> {
        std::mem::take(&mut *lock(&self.inboxes))
            .into_iter()
            .map(|incoming| {
                Reactor {
                    shared: Arc::clone(shared),
                    shutdown: shutdown.clone(),
                    incoming,
                    ready: Arc::new(ReadyQueue::default()),
                    parked: HashMap::new(),
                    deadlines: BinaryHeap::new(),
                    next_key: 0,
                }
                .run()
            })
            .collect()
    }
}

/// The slots of parked sessions that were woken, and the reactor's waker.
#[derive(Debug, Default)]
struct ReadyQueue {
    keys: Mutex<Vec<u64>>,
    reactor: AtomicWaker,
}

impl ReadyQueue {
    fn poll_take(&self, cx: &mut Context<'_>) -> Poll<Vec<u64>> {
        self.reactor.register(cx.waker());
        let keys = std::mem::take(&mut *lock(&self.keys));
        if keys.is_empty() {
            Poll::Pending
        } else {
            Poll::Ready(keys)
        }
    }
}

/// The waker of one parked session: the socket's readiness and the mailbox wake
/// it, and it queues the session's slot for the reactor.
struct SlotWaker {
    ready: Arc<ReadyQueue>,
    key: u64,
}

impl Wake for SlotWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        lock(&self.ready.keys).push(self.key);
        self.ready.reactor.wake();
    }
}

/// One idle reactor: a task holding parked sessions.
struct Reactor {
    shared: Arc<Shared>,
    shutdown: watch::Receiver<bool>,
    incoming: mpsc::UnboundedReceiver<Box<Established>>,
    ready: Arc<ReadyQueue>,
    /// Parked sessions by slot key (a key is never reused: a stale wake-up finds
    /// nothing).
    parked: HashMap<u64, Box<Established>>,
    /// Keep-alive deadlines, soonest first; entries of sessions no longer parked
    /// are skipped, and swept when they outnumber the parked sessions.
    deadlines: BinaryHeap<Reverse<(Instant, u64)>>,
    next_key: u64,
}

impl Reactor {
    async fn run(mut self) {
        loop {
            let next = self.deadlines.peek().map(|Reverse((at, _))| *at);
            let ready = Arc::clone(&self.ready);
            tokio::select! {
                biased;
                changed = self.shutdown.changed() => {
                    if changed.is_err() || *self.shutdown.borrow() {
                        break;
                    }
                }
                keys = poll_fn(|cx| ready.poll_take(cx)) => {
                    for key in keys {
                        self.wake(key);
                    }
                }
                session = self.incoming.recv() => match session {
                    Some(session) => self.park(session),
                    None => break,
                },
                () = tokio::time::sleep_until(next.unwrap_or_else(Instant::now)), if next.is_some() => {
                    self.expire();
                }
            }
        }
        // Stopping: no more sessions are taken; every one held or on its way
        // closes in a task of its own.
        self.incoming.close();
        while let Ok(session) = self.incoming.try_recv() {
            self.spawn(session);
        }
        for (_, session) in std::mem::take(&mut self.parked) {
            self.shared.metrics.session_unparked();
            self.spawn(session);
        }
    }

    fn spawn(&self, session: Box<Established>) {
        self.shared.tasks.spawn(session.resume());
    }

    /// Parks `session`, unless it has something to do already.
    fn park(&mut self, session: Box<Established>) {
        let key = self.next_key;
        self.next_key += 1;
        let waker = Waker::from(Arc::new(SlotWaker {
            ready: Arc::clone(&self.ready),
            key,
        }));
        let deadline = session.deadline();
        let wake_now = session.register_mailbox(&waker)
            || session.poll_readable(&mut Context::from_waker(&waker))
            || deadline.is_some_and(|d| d <= Instant::now());
        if wake_now {
            self.spawn(session);
            return;
        }
        if let Some(at) = deadline {
            self.deadlines.push(Reverse((at, key)));
        }
        self.parked.insert(key, session);
        self.shared.metrics.session_parked();
    }

    /// Slot `key` was woken: its session (if still parked) gets a task.
    fn wake(&mut self, key: u64) {
        if let Some(session) = self.parked.remove(&key) {
            self.shared.metrics.session_unparked();
            self.spawn(session);
            self.sweep();
        }
    }

    /// Every session whose keep-alive has expired gets a task (which closes it).
    fn expire(&mut self) {
        let now = Instant::now();
        while let Some(&Reverse((at, key))) = self.deadlines.peek() {
            if at > now {
                break;
            }
            self.deadlines.pop();
            self.wake(key);
        }
    }

    /// Drops the deadlines of sessions no longer parked once they are most of
    /// the heap.
    fn sweep(&mut self) {
        if self.deadlines.len() > 2 * self.parked.len() + 1024 {
            let parked = &self.parked;
            self.deadlines
                .retain(|Reverse((_, key))| parked.contains_key(key));
        }
    }
}

/// The tasks of sessions: counted, so that shutdown can wait for them wherever
/// they were spawned (the accept loop, an idle reactor), and aborted together
/// when they do not end in time.
#[derive(Debug)]
pub(crate) struct Tasks {
    live: AtomicUsize,
    ended: Notify,
    abort: watch::Sender<bool>,
}

impl Default for Tasks {
    fn default() -> Self {
        Tasks {
            live: AtomicUsize::new(0),
            ended: Notify::new(),
            abort: watch::channel(false).0,
        }
    }
}

/// Counts a task out when dropped.
struct Live(Arc<Tasks>);

impl Drop for Live {
    fn drop(&mut self) {
        if self.0.live.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.ended.notify_waiters();
        }
    }
}

impl Tasks {
    /// Runs `task` in a tokio task of its own, counted until it ends.
    pub(crate) fn spawn(self: &Arc<Self>, task: impl Future<Output = ()> + Send + 'static) {
        self.live.fetch_add(1, Ordering::AcqRel);
        let live = Live(Arc::clone(self));
        let mut abort = self.abort.subscribe();
        tokio::spawn(async move {
            let _live = live;
            tokio::select! {
                biased;
                () = task => {}
                _ = abort.wait_for(|a| *a) => {}
            }
        });
    }

    /// How many tasks are running.
    pub(crate) fn live(&self) -> usize {
        self.live.load(Ordering::Acquire)
    }

    /// Waits until no task runs.
    pub(crate) async fn wait(&self) {
        loop {
            let ended = self.ended.notified();
            tokio::pin!(ended);
            ended.as_mut().enable();
            if self.live() == 0 {
                return;
            }
            ended.await;
        }
    }

    /// Ends every task at its next poll.
    pub(crate) fn abort_all(&self) {
        self.abort.send_replace(true);
    }
}
