//! Timers: CDTP deadlines, push retries and endpoint expiry, one heap.

use super::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Timer {
    /// A CDTP request's deadline.
    Deadline(u64),
    /// The hand-over fence's deadline ([`Cmx::set_member_view`]).
    FenceDeadline,
    /// Retry a failed push.
    Retry {
        slot: u32,
        incarnation: u32,
        name: u32,
    },
}

impl Cmx {
    /// Runs what is due at `now`: CDTP deadlines (504 to waiting devices), push
    /// retries, and TTL expiry.
    pub fn handle_timeout(&mut self, now: UnixMillis) {
        while let Some(Reverse((at, timer))) = self.timers.peek().copied() {
            if at > now {
                break;
            }
            self.timers.pop();
            match timer {
                Timer::Deadline(seq) => {
                    if self.pending.contains_key(&seq) {
                        self.stats.cdtp_timeouts += 1;
                        let reason = format!(
                            "the configuration provider did not answer within {} ms",
                            self.settings.cdtp_timeout_ms
                        );
                        self.complete(seq, Fetched::TimedOut { reason }, now);
                    }
                }
                Timer::Retry {
                    slot,
                    incarnation,
                    name,
                } => self.retry_push(slot, incarnation, name, now),
                Timer::FenceDeadline => self.check_fence(now),
            }
        }
        let ttl = self.settings.config.endpoint_ttl;
        while let Some(slot) = self.endpoints.oldest_idle() {
            let due = self
                .endpoints
                .get(slot)
                .is_some_and(|e| e.last_active.saturating_add(ttl) <= now);
            if !due {
                break;
            }
            self.remove_endpoint(slot, Removal::Expired, now);
        }
    }

    /// Drops timers at the top of the heap that no longer matter, so the heap
    /// does not grow with answered requests.
    pub(super) fn prune_timers(&mut self) {
        while let Some(Reverse((_, timer))) = self.timers.peek() {
            let live = match *timer {
                Timer::Deadline(seq) => self.pending.contains_key(&seq),
                Timer::FenceDeadline => self.membership.fence.is_some(),
                Timer::Retry {
                    slot,
                    incarnation,
                    name,
                } => {
                    self.endpoints
                        .get(slot)
                        .is_some_and(|e| e.incarnation == incarnation)
                        && self.push_wanted(slot, name)
                }
            };
            if live {
                break;
            }
            self.timers.pop();
        }
    }
}
