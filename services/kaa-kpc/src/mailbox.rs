//! A session's mailbox: what the bus side sends to one MQTT session (deliveries,
//! revocations) and the order to close it (its client ID was taken over).
//!
//! Hand-written rather than a tokio `mpsc` channel plus a `Notify`, for memory:
//! every connected device has one, idle or not, and a bounded tokio channel
//! allocates its cache-padded shared state and its first block of 32 slots when it
//! is made (over a kilobyte per session). A mailbox is a mutex over an empty
//! `VecDeque` (which allocates nothing until a command arrives) and the waker of
//! whoever waits: the session's task while it runs, the idle reactor's slot while
//! the session is parked (see the `idle` module), so that a command wakes a parked
//! session. One receiver (the session), any number of senders (the hub's handles).

use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use crate::hub::Command;

/// The most deliveries a session may have queued; past it a delivery is refused
/// with [`SendError::Full`] (revocations and the close order always get in).
pub(crate) const CAPACITY: usize = 256;

#[derive(Debug, Default)]
struct State {
    commands: VecDeque<Command>,
    /// The session was told to close.
    killed: bool,
    /// The session ended: its receiver is gone.
    closed: bool,
    /// Woken (and taken) on the next command or close order: registered under
    /// the same lock that senders take, so no wake-up is lost.
    waiter: Option<Waker>,
}

impl State {
    /// Whether the receiver has something to take.
    fn ready(&self) -> bool {
        self.killed || !self.commands.is_empty()
    }
}

#[derive(Debug, Default)]
struct Shared {
    state: Mutex<State>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing here panics while holding the lock; keep going if something did.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Why a command was not queued.
#[derive(Debug)]
pub(crate) enum SendError {
    /// [`CAPACITY`] deliveries are queued already (the delivery is dropped).
    Full,
    /// The session has ended; the command comes back (a delivery may be handed
    /// over to another replica).
    Closed(Command),
}

/// The sending side, held by the hub (cheap to clone).
#[derive(Debug, Clone)]
pub(crate) struct Mailbox(Arc<Shared>);

/// What the session receives.
#[derive(Debug)]
pub(crate) enum Received {
    /// A command, in the order sent.
    Command(Command),
    /// Close: another session took the client ID over.
    Kill,
}

/// The receiving side, held by the session; dropping it closes the mailbox.
#[derive(Debug)]
pub(crate) struct Inbox(Arc<Shared>);

/// A new mailbox and its inbox.
pub(crate) fn mailbox() -> (Mailbox, Inbox) {
    let shared = Arc::new(Shared::default());
    (Mailbox(Arc::clone(&shared)), Inbox(shared))
}

impl Mailbox {
    /// Queues a command without waiting: a delivery is refused when
    /// [`CAPACITY`] are queued; a revocation always gets in.
    pub(crate) fn try_send(&self, command: Command) -> Result<(), SendError> {
        let mut state = self.0.lock();
        if state.closed {
            return Err(SendError::Closed(command));
        }
        if matches!(command, Command::Deliver(_)) && state.commands.len() >= CAPACITY {
            return Err(SendError::Full);
        }
        state.commands.push_back(command);
        let waiter = state.waiter.take();
        drop(state);
        if let Some(waiter) = waiter {
            waiter.wake();
        }
        Ok(())
    }

    /// Tells the session to close (it sees [`Received::Kill`] before any command
    /// still queued).
    pub(crate) fn kill(&self) {
        let mut state = self.0.lock();
        state.killed = true;
        let waiter = state.waiter.take();
        drop(state);
        if let Some(waiter) = waiter {
            waiter.wake();
        }
    }
}

impl Inbox {
    /// The close order, else the next command, without waiting.
    pub(crate) fn try_recv(&mut self) -> Option<Received> {
        let mut state = self.0.lock();
        if state.killed {
            return Some(Received::Kill);
        }
        state.commands.pop_front().map(Received::Command)
    }

    /// The close order, else the next command; `Pending` (and `cx`'s waker is
    /// woken on the next) when there is none.
    pub(crate) fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Received> {
        let mut state = self.0.lock();
        if state.killed {
            return Poll::Ready(Received::Kill);
        }
        if let Some(command) = state.commands.pop_front() {
            return Poll::Ready(Received::Command(command));
        }
        match &mut state.waiter {
            Some(w) if w.will_wake(cx.waker()) => {}
            waiter => *waiter = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    /// The close order, else the next command; waits for one.
    pub(crate) async fn recv(&mut self) -> Received {
        poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// Whether a command or the close order is waiting.
    pub(crate) fn is_ready(&self) -> bool {
        self.0.lock().ready()
    }

    /// Makes `waker` the one woken by the next command or close order (replacing
    /// whatever waited before: a parked session's task is gone). Returns true,
    /// registering nothing, when one is already waiting.
    pub(crate) fn register(&self, waker: &Waker) -> bool {
        let mut state = self.0.lock();
        if state.ready() {
            return true;
        }
        state.waiter = Some(waker.clone());
        false
    }
}

impl Drop for Inbox {
    fn drop(&mut self) {
        let mut state = self.0.lock();
        state.closed = true;
        // Queued deliveries are dropped with the session, as a channel's are.
        state.commands = VecDeque::new();
        state.waiter = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn revoke(id: &str) -> Command {
        Command::Revoke(id.into())
    }

    fn id_of(r: Received) -> String {
        match r {
            Received::Command(Command::Revoke(id)) => id.to_string(),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn commands_arrive_in_order_and_wake_a_waiting_session() {
        let (tx, mut rx) = mailbox();
        let waiting = tokio::spawn(async move {
            let first = id_of(rx.recv().await);
            let second = id_of(rx.recv().await);
            (first, second, rx)
        });
        tokio::task::yield_now().await;
        tx.try_send(revoke("a")).unwrap();
        tx.try_send(revoke("b")).unwrap();
        let (first, second, mut rx) = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .unwrap()
            .unwrap();
        assert_eq!((first.as_str(), second.as_str()), ("a", "b"));
        assert!(rx.try_recv().is_none());
    }

    #[tokio::test]
    async fn a_kill_comes_before_queued_commands_and_is_kept() {
        let (tx, mut rx) = mailbox();
        tx.try_send(revoke("a")).unwrap();
        tx.kill();
        assert!(matches!(rx.recv().await, Received::Kill));
        assert!(matches!(rx.try_recv(), Some(Received::Kill)));
    }

    #[test]
    fn deliveries_past_the_capacity_are_refused_revocations_are_not() {
        let (tx, _rx) = mailbox();
        let deliver = || {
            Command::Deliver(Box::new(kaa_esp::ExtensionData {
                correlation_id: "c".into(),
                timestamp: 0,
                timeout: 0,
                app_version_name: None,
                extension_instance_name: None,
                endpoint_id: Some("ep".into()),
                resource_path: "/config/json".into(),
                request_id: None,
                payload: None,
                status_code: 200,
                reason_phrase: None,
            }))
        };
        for _ in 0..CAPACITY {
            tx.try_send(deliver()).unwrap();
        }
        assert!(matches!(tx.try_send(deliver()), Err(SendError::Full)));
        tx.try_send(revoke("a")).unwrap();
    }

    #[test]
    fn a_closed_mailbox_gives_the_command_back() {
        let (tx, rx) = mailbox();
        drop(rx);
        assert!(matches!(
            tx.try_send(revoke("a")),
            Err(SendError::Closed(Command::Revoke(_)))
        ));
    }
}
